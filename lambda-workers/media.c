/*
 * libvips start-up for the worker and the helpers the media steps share (media.h).
 *
 * libvips is tuned for a server that runs several jobs at once, one per worker thread: one vips thread per
 * pipeline (the parallelism is across jobs), no operation cache (it would keep decoded images of past jobs
 * alive), and "untrusted" loaders blocked (magickload, svgload, pdfload, matload, …: large parsers that are not
 * fuzzed for hostile input). PDFs are therefore rendered with poppler-glib directly (variants.c).
 */
#include "media.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

/* libvips warns once per damaged tile on stderr, where the worker writes JSON log lines; the error that matters
 * reaches job->reason through the vips error buffer. */
static void drop_vips_warning(const char *domain, GLogLevelFlags level, const char *message, void *ud) {}

/* A mutex rather than pthread_once: the first caller's argv0 has to reach VIPS_INIT. */
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static int init_done;
static int init_rc = -1;

int fm_media_init(const char *argv0)
{
    pthread_mutex_lock(&init_lock);
    if (!init_done) {
        init_done = 1;
        if (VIPS_INIT(argv0 != NULL ? argv0 : "fm-worker") == 0) {
            vips_cache_set_max(0);
            vips_concurrency_set(1);
            vips_block_untrusted_set(TRUE); /* libvips 8.13+ */
            g_log_set_handler("VIPS", G_LOG_LEVEL_WARNING, drop_vips_warning, NULL);
            init_rc = 0;
        }
    }
    int rc = init_rc;
    pthread_mutex_unlock(&init_lock);
    return rc;
}

/* Raster types and the libvips loader class (by prefix) that must be the one reading their bytes. */
static const struct {
    const char *type;
    const char *loader;
} raster_types[] = {
    {"image/jpeg", "VipsForeignLoadJpeg"}, {"image/png", "VipsForeignLoadPng"},   {"image/gif", "VipsForeignLoadNsgif"},
    {"image/webp", "VipsForeignLoadWebp"}, {"image/tiff", "VipsForeignLoadTiff"}, {"image/heic", "VipsForeignLoadHeif"},
    {"image/heif", "VipsForeignLoadHeif"}, {"image/avif", "VipsForeignLoadHeif"},
};

static const char *raster_loader(const char *real_type)
{
    for (size_t i = 0; i < sizeof(raster_types) / sizeof(raster_types[0]); i++)
        if (strcmp(real_type, raster_types[i].type) == 0)
            return raster_types[i].loader;
    return NULL;
}

fm_media_kind_t fm_media_kind(const char *real_type)
{
    if (raster_loader(real_type) != NULL)
        return FM_MEDIA_RASTER;
    if (strcmp(real_type, "application/pdf") == 0)
        return FM_MEDIA_PDF;
    return FM_MEDIA_OTHER;
}

void fm_media_vips_reason(fm_job_t *job, const char *what)
{
    const char *error = vips_error_buffer();
    snprintf(job->reason, sizeof(job->reason), "%s: %s", what, error[0] != '\0' ? error : "unknown libvips error");
    for (char *c = job->reason; *c != '\0'; c++) /* the buffer is one line per error */
        if (*c == '\n')
            *c = c[1] != '\0' ? ' ' : '\0';
    /* the owner sees the reason: loaders name the file, and the worker's temporary path is none of their business */
    static const char name[] = "the file";
    size_t path_len = strlen(job->path);
    char *found;
    while (path_len > sizeof(name) - 1 && (found = strstr(job->reason, job->path)) != NULL) { /* shrinks */
        memmove(found + sizeof(name) - 1, found + path_len, strlen(found + path_len) + 1);
        memcpy(found, name, sizeof(name) - 1);
    }
    vips_error_clear();
}

VipsImage *fm_media_open_header(fm_job_t *job)
{
    const char *expected = raster_loader(job->real_type);
    const char *loader = vips_foreign_find_load(job->path);
    if (expected == NULL || loader == NULL) {
        fm_media_vips_reason(job, "unreadable image");
        return NULL;
    }
    if (strncmp(loader, expected, strlen(expected)) != 0) {
        snprintf(job->reason, sizeof(job->reason), "the bytes of this %s are read by %s, not by the %s loader",
                 job->real_type, loader, expected);
        return NULL;
    }
    /* Sequential access: opening reads the header only; pixels are decoded when a sink pulls them. */
    VipsImage *image = vips_image_new_from_file(job->path, "access", VIPS_ACCESS_SEQUENTIAL, NULL);
    if (image == NULL)
        fm_media_vips_reason(job, "corrupt image");
    return image;
}

int fm_media_check_pixels(fm_job_t *job, const fm_worker_limits_t *limits, long long width, long long height)
{
    if (limits->max_pixels > 0 && width * height > limits->max_pixels) {
        snprintf(job->reason, sizeof(job->reason), "image of %lld×%lld pixels is over the limit of %lld", width, height,
                 limits->max_pixels);
        return -1;
    }
    return 0;
}

PopplerDocument *fm_media_open_pdf(fm_job_t *job, int *encrypted)
{
    *encrypted = 0;
    GError *error = NULL;
    char *uri = g_filename_to_uri(job->path, NULL, &error);
    PopplerDocument *document = uri != NULL ? poppler_document_new_from_file(uri, NULL, &error) : NULL;
    g_free(uri);
    if (document == NULL) {
        if (error != NULL && error->domain == POPPLER_ERROR && error->code == POPPLER_ERROR_ENCRYPTED)
            *encrypted = 1;
        snprintf(job->reason, sizeof(job->reason), "corrupt PDF: %s",
                 error != NULL ? error->message : "poppler could not open it");
        g_clear_error(&error);
    }
    return document;
}
