/*
 * Private helpers shared by the media steps (describe.c, variants.c, text.c); not part of the worker's interface.
 * Implemented in media.c.
 */
#ifndef FM_MEDIA_H
#define FM_MEDIA_H

#include <poppler.h>
#include <vips/vips.h>

#include "worker.h"

/* How the media steps treat a real (sniffed) type. */
typedef enum {
    FM_MEDIA_OTHER = 0, /* size and type only, no variants, no text */
    FM_MEDIA_RASTER,    /* decoded by a libvips loader: dimensions, EXIF, variants */
    FM_MEDIA_PDF,       /* poppler-glib: pages, page size, first-page variants, text */
} fm_media_kind_t;

/** The kind of `real_type` (a libmagic MIME type). SVG is FM_MEDIA_OTHER: libvips' svgload is untrusted. */
fm_media_kind_t fm_media_kind(const char *real_type);

/**
 * Opens the header of the raster image at job->path (no pixels decoded) after checking that the loader libvips
 * picks by the bytes is the one of job->real_type, so a polyglot cannot reach another decoder. NULL with
 * job->reason set on failure (the caller returns FM_STEP_FAIL). The caller unrefs the image.
 */
VipsImage *fm_media_open_header(fm_job_t *job);

/** Decompression-bomb guard: -1 with job->reason set when width × height is over limits->max_pixels. */
int fm_media_check_pixels(fm_job_t *job, const fm_worker_limits_t *limits, long long width, long long height);

/** Copies "what: <vips error buffer>" into job->reason (one line) and clears the vips error buffer. */
void fm_media_vips_reason(fm_job_t *job, const char *what);

/**
 * Opens the PDF at job->path with poppler-glib. NULL on failure, with *encrypted set when the document needs a
 * password and job->reason set otherwise. The caller unrefs the document.
 */
PopplerDocument *fm_media_open_pdf(fm_job_t *job, int *encrypted);

/**
 * Renders the file at job->path fitted inside size×size (variants.c): a raster image through vips_thumbnail
 * (shrink-on-load, EXIF auto-rotation, first page/frame, never enlarged), a PDF's first page through poppler-glib
 * and cairo (vector, so drawn at exactly that size). The result is 8-bit sRGB, with alpha if the source had one.
 * FM_STEP_FAIL with job->reason set on a decoding error. The caller unrefs *out.
 */
fm_step_rc fm_media_render(fm_job_t *job, int size, VipsImage **out);

/**
 * Encodes `image` (from fm_media_render) in memory: format "jpeg" (alpha flattened onto white, progressive when
 * asked) or "webp"; quality 80, metadata stripped. -1 with the vips error buffer set. The caller g_free()s *data.
 */
int fm_media_encode(VipsImage *image, const char *format, int progressive, void **data, size_t *len);

#endif
