/*
 * step_describe: what the owner and the search index learn about a file without opening it → job->meta.
 *
 *   {"size", "type"}                                                       every file
 *   + {"width", "height", "orientation", "pages", "exif", "gps"}          raster images (libvips, header only)
 *   + {"pages", "width", "height"} or {"encrypted": true}                  PDFs (poppler-glib; page 1 in points)
 *
 * Image width and height are in display orientation: as the image looks once EXIF orientation is applied (the
 * stored pixel grid turned for orientations 5–8), which is also how the variants come out. "pages" is the frame
 * count of animated GIF/WebP and the page count of multi-page TIFF/HEIF (1 otherwise). "exif" holds the camera's
 * make, model and capture time when present; "gps" the position in decimal degrees (the API hides it unless the
 * owner asks). The decompression-bomb guard runs here on the header, before any pixel is decoded.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "media.h"

/*
 * A libvips EXIF string field without its libexif description: "Canon (Canon, ASCII, 6 components, 6 bytes)" →
 * "Canon". 0 when the field is absent or empty.
 */
static int exif_value(VipsImage *image, const char *field, char *out, size_t out_size)
{
    const char *text;
    if (vips_image_get_typeof(image, field) == 0 || vips_image_get_string(image, field, &text) != 0) {
        vips_error_clear();
        return 0;
    }
    const char *end = strstr(text, " (");
    size_t len = end != NULL ? (size_t)(end - text) : strlen(text);
    while (len > 0 && text[len - 1] == ' ')
        len--;
    if (len == 0)
        return 0;
    if (len >= out_size)
        len = out_size - 1;
    memcpy(out, text, len);
    out[len] = '\0';
    return 1;
}

/*
 * GPSLatitude/GPSLongitude as decimal degrees. libvips writes the three EXIF rationals (degrees, minutes,
 * seconds) as "51/1 30/1 4567/100 (…)"; the reference tag ("N"/"S", "E"/"W") gives the sign.
 */
static int gps_degrees(VipsImage *image, const char *field, const char *ref_field, char negative, double *degrees)
{
    char value[256], ref[16];
    if (!exif_value(image, field, value, sizeof(value)))
        return 0;
    double parts[3] = {0, 0, 0};
    const char *p = value;
    for (int i = 0; i < 3; i++) {
        char *end;
        double num = strtod(p, &end);
        if (end == p || *end != '/')
            return 0;
        p = end + 1;
        double den = strtod(p, &end);
        if (end == p || den == 0)
            return 0;
        parts[i] = num / den;
        p = end;
        while (*p == ' ')
            p++;
    }
    *degrees = parts[0] + parts[1] / 60 + parts[2] / 3600;
    if (exif_value(image, ref_field, ref, sizeof(ref)) && ref[0] == negative)
        *degrees = -*degrees;
    return 1;
}

static void describe_exif(VipsImage *image, cJSON *meta)
{
    char value[256];
    cJSON *exif = cJSON_CreateObject();
    if (exif_value(image, "exif-ifd0-Make", value, sizeof(value)))
        cJSON_AddStringToObject(exif, "make", value);
    if (exif_value(image, "exif-ifd0-Model", value, sizeof(value)))
        cJSON_AddStringToObject(exif, "model", value);
    /* the capture time; DateTime is the last edit */
    if (exif_value(image, "exif-ifd2-DateTimeOriginal", value, sizeof(value)) ||
        exif_value(image, "exif-ifd0-DateTime", value, sizeof(value)))
        cJSON_AddStringToObject(exif, "datetime", value);
    if (cJSON_GetArraySize(exif) > 0)
        cJSON_AddItemToObject(meta, "exif", exif);
    else
        cJSON_Delete(exif);

    double lat, lon;
    if (gps_degrees(image, "exif-ifd3-GPSLatitude", "exif-ifd3-GPSLatitudeRef", 'S', &lat) &&
        gps_degrees(image, "exif-ifd3-GPSLongitude", "exif-ifd3-GPSLongitudeRef", 'W', &lon) && lat >= -90 &&
        lat <= 90 && lon >= -180 && lon <= 180) {
        cJSON *gps = cJSON_AddObjectToObject(meta, "gps");
        cJSON_AddNumberToObject(gps, "lat", lat);
        cJSON_AddNumberToObject(gps, "lon", lon);
    }
}

static fm_step_rc describe_raster(fm_job_t *job, const fm_worker_limits_t *limits)
{
    VipsImage *image = fm_media_open_header(job);
    if (image == NULL)
        return FM_STEP_FAIL;
    /* one page/frame: what the variants decode */
    long long width = vips_image_get_width(image), height = vips_image_get_page_height(image);
    if (fm_media_check_pixels(job, limits, width, height) != 0) {
        g_object_unref(image);
        return FM_STEP_QUARANTINE;
    }
    int orientation = 1;
    if (vips_image_get_typeof(image, VIPS_META_ORIENTATION) != 0 &&
        (vips_image_get_int(image, VIPS_META_ORIENTATION, &orientation) != 0 || orientation < 1 || orientation > 8))
        orientation = 1;
    vips_error_clear();
    int turned = orientation >= 5; /* 5–8: the stored grid is transposed */
    cJSON_AddNumberToObject(job->meta, "width", (double)(turned ? height : width));
    cJSON_AddNumberToObject(job->meta, "height", (double)(turned ? width : height));
    cJSON_AddNumberToObject(job->meta, "orientation", orientation);
    cJSON_AddNumberToObject(job->meta, "pages", vips_image_get_n_pages(image));
    describe_exif(image, job->meta);
    g_object_unref(image);
    return FM_STEP_OK;
}

static fm_step_rc describe_pdf(fm_job_t *job)
{
    int encrypted;
    PopplerDocument *document = fm_media_open_pdf(job, &encrypted);
    if (document == NULL) {
        if (!encrypted)
            return FM_STEP_FAIL;
        /* a password-protected PDF is a valid file we cannot look into */
        job->reason[0] = '\0';
        cJSON_AddBoolToObject(job->meta, "encrypted", 1);
        return FM_STEP_OK;
    }
    int pages = poppler_document_get_n_pages(document);
    PopplerPage *first = pages > 0 ? poppler_document_get_page(document, 0) : NULL;
    if (first == NULL) {
        snprintf(job->reason, sizeof(job->reason), "corrupt PDF: no readable page");
        g_object_unref(document);
        return FM_STEP_FAIL;
    }
    double width, height;
    poppler_page_get_size(first, &width, &height);
    cJSON_AddNumberToObject(job->meta, "pages", pages);
    cJSON_AddNumberToObject(job->meta, "width", width);
    cJSON_AddNumberToObject(job->meta, "height", height);
    g_object_unref(first);
    g_object_unref(document);
    return FM_STEP_OK;
}

fm_step_rc step_describe(fm_job_t *job, const fm_worker_limits_t *limits)
{
    if (fm_media_init(NULL) != 0) {
        snprintf(job->reason, sizeof(job->reason), "libvips cannot start");
        return FM_STEP_RETRY; /* the worker's, not the content's */
    }
    cJSON_Delete(job->meta); /* a retried job describes again */
    job->meta = cJSON_CreateObject();
    cJSON_AddNumberToObject(job->meta, "size", (double)job->size);
    cJSON_AddStringToObject(job->meta, "type", job->real_type);
    switch (fm_media_kind(job->real_type)) {
    case FM_MEDIA_RASTER:
        return describe_raster(job, limits);
    case FM_MEDIA_PDF:
        return describe_pdf(job);
    default:
        return FM_STEP_OK;
    }
}
