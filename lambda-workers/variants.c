/*
 * step_variants: the thumbnail and the preview of images and PDFs (first page), each as JPEG and WebP, handed
 * one at a time to `put` (an S3 PUT in production) under variants/{sha256}/{thumb|preview}.{jpg|webp}.
 *
 * Memory stays bounded by the output size, not the input: vips_thumbnail streams the file and shrinks while
 * loading (JPEG DCT scaling, WebP/HEIF/TIFF/PDF reduced loads), and a PDF page is drawn at the variant's size.
 * A variant is never larger than its source (VIPS_SIZE_DOWN) except a PDF page, which is vector.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cairo.h>

#include "media.h"

#define QUALITY 80

/* The first page drawn at `scale` on white (PDF pages are transparent) and copied into an sRGB vips image. */
static int render_pdf_page(PopplerPage *page, double scale, int width, int height, VipsImage **out)
{
    cairo_surface_t *surface = cairo_image_surface_create(CAIRO_FORMAT_RGB24, width, height);
    cairo_t *cr = cairo_create(surface);
    cairo_set_source_rgb(cr, 1, 1, 1);
    cairo_paint(cr);
    cairo_scale(cr, scale, scale);
    poppler_page_render(page, cr);
    cairo_status_t status = cairo_status(cr);
    cairo_destroy(cr);
    cairo_surface_flush(surface);
    if (status != CAIRO_STATUS_SUCCESS || cairo_surface_status(surface) != CAIRO_STATUS_SUCCESS) {
        vips_error("pdf", "cairo: %s",
                   cairo_status_to_string(status != CAIRO_STATUS_SUCCESS ? status : cairo_surface_status(surface)));
        cairo_surface_destroy(surface);
        return -1;
    }
    /* RGB24 is one native-endian 32-bit word per pixel, 0x00RRGGBB */
    const unsigned char *data = cairo_image_surface_get_data(surface);
    int stride = cairo_image_surface_get_stride(surface);
    size_t rgb_len = (size_t)width * (size_t)height * 3;
    unsigned char *rgb = g_malloc(rgb_len);
    for (int y = 0; y < height; y++) {
        const uint32_t *row = (const uint32_t *)(const void *)(data + (size_t)y * (size_t)stride);
        unsigned char *dst = rgb + (size_t)y * (size_t)width * 3;
        for (int x = 0; x < width; x++) {
            dst[3 * x] = (unsigned char)(row[x] >> 16);
            dst[3 * x + 1] = (unsigned char)(row[x] >> 8);
            dst[3 * x + 2] = (unsigned char)row[x];
        }
    }
    cairo_surface_destroy(surface);
    VipsImage *raw = vips_image_new_from_memory_copy(rgb, rgb_len, width, height, 3, VIPS_FORMAT_UCHAR);
    g_free(rgb);
    if (raw == NULL)
        return -1;
    int rc = vips_copy(raw, out, "interpretation", VIPS_INTERPRETATION_sRGB, NULL);
    g_object_unref(raw);
    return rc;
}

static fm_step_rc render_pdf(fm_job_t *job, int size, VipsImage **out)
{
    int encrypted;
    PopplerDocument *document = fm_media_open_pdf(job, &encrypted);
    if (document == NULL)
        return FM_STEP_FAIL;
    PopplerPage *page = poppler_document_get_n_pages(document) > 0 ? poppler_document_get_page(document, 0) : NULL;
    if (page == NULL) {
        snprintf(job->reason, sizeof(job->reason), "corrupt PDF: no readable page");
        g_object_unref(document);
        return FM_STEP_FAIL;
    }
    double page_width, page_height;
    poppler_page_get_size(page, &page_width, &page_height);
    fm_step_rc rc = FM_STEP_OK;
    if (!(page_width >= 1 && page_height >= 1 && page_width < 1e6 && page_height < 1e6)) {
        snprintf(job->reason, sizeof(job->reason), "corrupt PDF: page 1 is %g×%g points", page_width, page_height);
        rc = FM_STEP_FAIL;
    } else {
        double scale = size / fmax(page_width, page_height);
        int width = (int)fmax(1, lround(page_width * scale)), height = (int)fmax(1, lround(page_height * scale));
        if (render_pdf_page(page, scale, width, height, out) != 0) {
            fm_media_vips_reason(job, "cannot render the PDF");
            rc = FM_STEP_FAIL;
        }
    }
    g_object_unref(page);
    g_object_unref(document);
    return rc;
}

/* 8-bit sRGB, whatever the source's colour space and depth (CMYK, grey, 16-bit PNG, …). */
static int to_srgb8(VipsImage *in, VipsImage **out)
{
    VipsImage *srgb;
    if (vips_colourspace(in, &srgb, VIPS_INTERPRETATION_sRGB, NULL) != 0)
        return -1;
    if (vips_image_get_format(srgb) == VIPS_FORMAT_UCHAR) {
        *out = srgb;
        return 0;
    }
    int rc = vips_cast_uchar(srgb, out, NULL);
    g_object_unref(srgb);
    return rc;
}

/*
 * Drops every metadata field (EXIF, XMP, IPTC, ICC, …) of a rendered variant. "strip" alone is not enough:
 * libvips 8.14's webpsave rebuilds an EXIF block from the image's fields even when stripping, and the source's
 * EXIF (camera serial, GPS position) must never reach a public variant.
 */
static void drop_metadata(VipsImage *image)
{
    char **fields = vips_image_get_fields(image);
    for (int i = 0; fields[i] != NULL; i++)
        vips_image_remove(image, fields[i]); /* a no-op for the core header fields */
    g_strfreev(fields);
}

fm_step_rc fm_media_render(fm_job_t *job, int size, VipsImage **out)
{
    *out = NULL;
    VipsImage *rendered = NULL;
    if (fm_media_kind(job->real_type) == FM_MEDIA_PDF) {
        fm_step_rc rc = render_pdf(job, size, &rendered);
        if (rc != FM_STEP_OK)
            return rc;
    } else if (vips_thumbnail(job->path, &rendered, size, "height", size, "size", VIPS_SIZE_DOWN, "fail_on",
                              VIPS_FAIL_ON_TRUNCATED, NULL) != 0) {
        fm_media_vips_reason(job, "corrupt image");
        return FM_STEP_FAIL;
    }
    /* vips_thumbnail has already turned an embedded ICC profile into sRGB; this covers images without one */
    VipsImage *srgb = NULL;
    if (to_srgb8(rendered, &srgb) == 0)
        /* decoded once here (size² pixels at most), then encoded twice without reading the file again */
        *out = vips_image_copy_memory(srgb);
    g_object_unref(rendered);
    if (srgb != NULL)
        g_object_unref(srgb);
    if (*out == NULL) {
        fm_media_vips_reason(job, "corrupt image");
        return FM_STEP_FAIL;
    }
    drop_metadata(*out);
    return FM_STEP_OK;
}

int fm_media_encode(VipsImage *image, const char *format, int progressive, void **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    if (strcmp(format, "webp") == 0)
        return vips_webpsave_buffer(image, data, len, "Q", QUALITY, "strip", TRUE, NULL);

    VipsImage *opaque = image;
    if (vips_image_hasalpha(image)) {
        VipsArrayDouble *white = vips_array_double_newv(3, 255.0, 255.0, 255.0);
        VipsImage *flat;
        int rc = vips_flatten(image, &flat, "background", white, NULL);
        vips_area_unref(VIPS_AREA(white));
        if (rc != 0)
            return -1;
        rc = vips_cast_uchar(flat, &opaque, NULL);
        g_object_unref(flat);
        if (rc != 0)
            return -1;
    }
    int rc = vips_jpegsave_buffer(opaque, data, len, "Q", QUALITY, "strip", TRUE, "optimize_coding", TRUE, "interlace",
                                  progressive ? TRUE : FALSE, NULL);
    if (opaque != image)
        g_object_unref(opaque);
    return rc;
}

/* Encodes one variant, hands it to `put`, records it in job->variants. */
static fm_step_rc emit_variant(fm_job_t *job, VipsImage *image, const char *name, const char *format,
                               fm_variant_put_fn put, void *ud)
{
    int is_webp = strcmp(format, "webp") == 0;
    void *data;
    size_t len;
    if (fm_media_encode(image, format, strcmp(name, "preview") == 0, &data, &len) != 0) {
        fm_media_vips_reason(job, is_webp ? "cannot encode WebP" : "cannot encode JPEG");
        return FM_STEP_FAIL;
    }
    char key[256];
    snprintf(key, sizeof(key), "variants/%.64s/%s.%s", job->sha256, name, is_webp ? "webp" : "jpg");
    int stored = put(ud, key, is_webp ? "image/webp" : "image/jpeg", data, len);
    g_free(data);
    if (stored != 0) {
        snprintf(job->reason, sizeof(job->reason), "the store refused %.200s", key);
        return FM_STEP_RETRY;
    }
    cJSON *variant = cJSON_CreateObject();
    cJSON_AddStringToObject(variant, "name", name);
    cJSON_AddStringToObject(variant, "format", format);
    cJSON_AddStringToObject(variant, "key", key);
    cJSON_AddNumberToObject(variant, "width", vips_image_get_width(image));
    cJSON_AddNumberToObject(variant, "height", vips_image_get_height(image));
    cJSON_AddNumberToObject(variant, "bytes", (double)len);
    cJSON_AddItemToArray(job->variants, variant);
    return FM_STEP_OK;
}

/* Header-only guard, again: step_describe may have been skipped (a retried job resumes after it). */
static fm_step_rc check_raster(fm_job_t *job, const fm_worker_limits_t *limits)
{
    VipsImage *header = fm_media_open_header(job);
    if (header == NULL)
        return FM_STEP_FAIL;
    int over = fm_media_check_pixels(job, limits, vips_image_get_width(header), vips_image_get_page_height(header));
    g_object_unref(header);
    return over ? FM_STEP_QUARANTINE : FM_STEP_OK;
}

fm_step_rc step_variants(fm_job_t *job, const fm_worker_limits_t *limits, fm_variant_put_fn put, void *ud)
{
    cJSON_Delete(job->variants);
    job->variants = cJSON_CreateArray();
    fm_media_kind_t kind = fm_media_kind(job->real_type);
    if (kind == FM_MEDIA_OTHER)
        return FM_STEP_OK;
    if (fm_media_init(NULL) != 0) {
        snprintf(job->reason, sizeof(job->reason), "libvips cannot start");
        return FM_STEP_RETRY; /* the worker's, not the content's */
    }
    if (kind == FM_MEDIA_RASTER) {
        fm_step_rc rc = check_raster(job, limits);
        if (rc != FM_STEP_OK)
            return rc;
    } else if (kind == FM_MEDIA_PDF) {
        int encrypted;
        PopplerDocument *document = fm_media_open_pdf(job, &encrypted);
        if (document == NULL) {
            if (!encrypted)
                return FM_STEP_FAIL;
            job->reason[0] = '\0'; /* nothing to draw without the password: no variants */
            return FM_STEP_OK;
        }
        g_object_unref(document);
    }

    const struct {
        const char *name;
        int size;
    } sizes[] = {{"thumb", limits->thumb_px}, {"preview", limits->preview_px}};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        if (sizes[i].size <= 0)
            continue;
        VipsImage *image;
        fm_step_rc rc = fm_media_render(job, sizes[i].size, &image);
        if (rc == FM_STEP_OK)
            rc = emit_variant(job, image, sizes[i].name, "jpeg", put, ud);
        if (rc == FM_STEP_OK)
            rc = emit_variant(job, image, sizes[i].name, "webp", put, ud);
        if (image != NULL)
            g_object_unref(image);
        if (rc != FM_STEP_OK)
            return rc;
    }
    return FM_STEP_OK;
}

/* worker.h; what outcome_ready (process.c) records as blobs.variants. */
char *fm_variants_json(const cJSON *list)
{
    cJSON *out = cJSON_CreateObject();
    const cJSON *v;
    cJSON_ArrayForEach(v, list)
    {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(v, "name");
        const cJSON *format = cJSON_GetObjectItemCaseSensitive(v, "format");
        if (!cJSON_IsString(name) || !cJSON_IsString(format))
            continue;
        cJSON *by_name = cJSON_GetObjectItemCaseSensitive(out, name->valuestring);
        if (by_name == NULL)
            by_name = cJSON_AddObjectToObject(out, name->valuestring);
        cJSON *entry = cJSON_Duplicate(v, 1);
        cJSON_DeleteItemFromObjectCaseSensitive(entry, "name");
        cJSON_DeleteItemFromObjectCaseSensitive(entry, "format");
        cJSON_DeleteItemFromObjectCaseSensitive(by_name, format->valuestring);
        cJSON_AddItemToObject(by_name, format->valuestring, entry);
    }
    char *json = cJSON_PrintUnformatted(out);
    cJSON_Delete(out);
    return json;
}
