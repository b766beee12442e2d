/*
 * On-the-fly image variants (docs/downloads.md "Image variants"): `w`, `h`, `fit`, `format`, `q` on a signed /f/
 * URL. parse (bounded, normalised, Accept negotiation) happens on the loop; render runs on the offload pool from
 * the cached original, with libvips 8.14 as the worker uses it (lambda-workers/variants.c): vips_thumbnail
 * (shrink-on-load), 8-bit sRGB, every metadata field removed before saving.
 *
 * Hostile input: only the raster loaders below may read the bytes (untrusted loaders are blocked at start), and the
 * header's width × page height is checked against FM_EDGE_MAX_INPUT_PIXELS before any pixel is decoded, so a
 * decompression bomb costs a header read. Output is bounded by FM_EDGE_MAX_DIMENSION².
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <vips/vips.h>

#include "edge.h"
#include "log.h"
#include "qs.h"

/* ---- parse ---- */

/* Strict decimal 1..max: digits only, no sign, no leading zero, at most 6 digits. */
static int parse_bounded(h2o_iovec_t value, int max, int *out)
{
    if (value.len == 0 || value.len > 6 || value.base[0] == '0')
        return -1;
    int n = 0;
    for (size_t i = 0; i < value.len; ++i) {
        if (value.base[i] < '0' || value.base[i] > '9')
            return -1;
        n = n * 10 + (value.base[i] - '0');
    }
    if (n < 1 || n > max)
        return -1;
    *out = n;
    return 0;
}

/* Accept lists image/webp without q=0 (wildcards do not count). A token scan, enough for browsers. */
static int accepts_webp(h2o_iovec_t accept)
{
    const char *p = accept.base, *end = accept.base + accept.len;
    while (p != NULL && p < end) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
            ++p;
        const char *item_end = memchr(p, ',', (size_t)(end - p));
        if (item_end == NULL)
            item_end = end;
        const char *semi = memchr(p, ';', (size_t)(item_end - p));
        const char *type_end = semi ? semi : item_end;
        while (type_end > p && (type_end[-1] == ' ' || type_end[-1] == '\t'))
            --type_end;
        size_t type_len = (size_t)(type_end - p);
        int match = (type_len == 10 && strncasecmp(p, "image/webp", 10) == 0);
        if (match) {
            double weight = 1.0;
            char params[64];
            if (semi != NULL && (size_t)(item_end - semi) < sizeof(params)) {
                memcpy(params, semi, (size_t)(item_end - semi));
                params[item_end - semi] = '\0';
                char *q = strstr(params, "q=");
                if (q != NULL)
                    weight = strtod(q + 2, NULL);
            }
            if (weight > 0)
                return 1;
        }
        p = item_end;
    }
    return 0;
}

int fm_edge_variant_parse(h2o_iovec_t query, h2o_iovec_t accept, fm_edge_variant_t *v, char *reason, size_t reason_size)
{
    const int max_dim = (int)fm_edge.cfg->edge_max_dimension;
    static const char *const names[] = {"w", "h", "fit", "format", "q"};
    h2o_iovec_t values[5];
    int present = 0;
    for (size_t i = 0; i < 5; ++i) {
        int count;
        values[i] = fm_qs_raw(query, names[i], FM_QS_BARE, &count); /* a repeat is ambiguous: refused */
        if (count > 1) {
            snprintf(reason, reason_size, "%s is given more than once", names[i]);
            return -1;
        }
        present |= count;
    }
    if (!present)
        return 0;
    *v = (fm_edge_variant_t){.fit = FM_EDGE_FIT_INSIDE, .quality = 80};
    if (values[0].base != NULL && parse_bounded(values[0], max_dim, &v->width) != 0) {
        snprintf(reason, reason_size, "w must be an integer in 1..%d", max_dim);
        return -1;
    }
    if (values[1].base != NULL && parse_bounded(values[1], max_dim, &v->height) != 0) {
        snprintf(reason, reason_size, "h must be an integer in 1..%d", max_dim);
        return -1;
    }
    h2o_iovec_t fit = values[2], format = values[3];
    if (fit.base != NULL) {
        if (h2o_memis(fit.base, fit.len, H2O_STRLIT("cover")))
            v->fit = FM_EDGE_FIT_COVER;
        else if (h2o_memis(fit.base, fit.len, H2O_STRLIT("contain")))
            v->fit = FM_EDGE_FIT_CONTAIN;
        else if (!h2o_memis(fit.base, fit.len, H2O_STRLIT("inside"))) {
            snprintf(reason, reason_size, "fit must be cover, contain or inside");
            return -1;
        }
    }
    if (values[4].base != NULL && parse_bounded(values[4], 100, &v->quality) != 0) {
        snprintf(reason, reason_size, "q must be an integer in 1..100");
        return -1;
    }
    if (format.base == NULL || h2o_memis(format.base, format.len, H2O_STRLIT("auto"))) {
        v->negotiated = 1;
        v->format = accepts_webp(accept) ? "webp" : "jpeg";
    } else if (h2o_memis(format.base, format.len, H2O_STRLIT("webp"))) {
        v->format = "webp";
    } else if (h2o_memis(format.base, format.len, H2O_STRLIT("jpeg")) ||
               h2o_memis(format.base, format.len, H2O_STRLIT("jpg"))) {
        v->format = "jpeg";
    } else if (h2o_memis(format.base, format.len, H2O_STRLIT("png"))) {
        v->format = "png";
    } else if (h2o_memis(format.base, format.len, H2O_STRLIT("avif"))) {
        if (!fm_edge.avif_ok) {
            snprintf(reason, reason_size, "avif is not available on this edge (libvips has no AV1 encoder)");
            return -1;
        }
        v->format = "avif";
    } else {
        snprintf(reason, reason_size, "format must be webp, jpeg, png, avif or auto");
        return -1;
    }
    /* Normalised, so equivalent URLs share one cache entry. */
    if (v->width == 0 || v->height == 0)
        v->fit = FM_EDGE_FIT_INSIDE;
    if (strcmp(v->format, "png") == 0)
        v->quality = 0;
    return 1;
}

void fm_edge_variant_cache_key(const char *key, size_t key_len, const fm_edge_variant_t *v, char *out, size_t size)
{
    static const char *const fits[] = {"inside", "contain", "cover"};
    snprintf(out, size, "%.*s%cw=%d&h=%d&fit=%s&format=%s&q=%d", (int)key_len, key, FM_EDGE_VARIANT_SEP, v->width,
             v->height, fits[v->fit], v->format, v->quality);
}

/* ---- libvips ---- */

static void drop_vips_warning(const char *domain, GLogLevelFlags level, const char *message, void *ud) {}

static pthread_key_t vips_thread_key;

/* libvips keeps per-thread buffers; an offload thread that rendered releases them when it ends. */
static void end_vips_thread(void *unused)
{
    vips_thread_shutdown();
}

static int probe_avif(void)
{
    VipsImage *black = NULL;
    void *buf = NULL;
    size_t len = 0;
    int ok = vips_black(&black, 16, 16, "bands", 3, NULL) == 0 &&
             vips_heifsave_buffer(black, &buf, &len, "compression", VIPS_FOREIGN_HEIF_COMPRESSION_AV1, NULL) == 0 &&
             len > 0;
    if (black != NULL)
        g_object_unref(black);
    g_free(buf);
    vips_error_clear();
    return ok;
}

int fm_edge_variant_init(const char *argv0)
{
    if (VIPS_INIT(argv0) != 0) {
        fm_error("libvips cannot start: %s", vips_error_buffer());
        return -1;
    }
    vips_cache_set_max(0);
    vips_concurrency_set(1);
    vips_block_untrusted_set(TRUE);
    g_log_set_handler("VIPS", G_LOG_LEVEL_WARNING, drop_vips_warning, NULL);
    pthread_key_create(&vips_thread_key, end_vips_thread);
    fm_edge.avif_ok = probe_avif();
    if (!fm_edge.avif_ok)
        fm_warn("this libvips cannot save AV1 HEIF: format=avif is refused with 400");
    return 0;
}

void fm_edge_variant_shutdown(void)
{
    vips_shutdown();
}

/* The loaders allowed to read an original (class-name prefixes), the worker's list (lambda-workers/media.c). */
static int loader_allowed(const char *loader)
{
    static const char *const allowed[] = {"VipsForeignLoadJpeg", "VipsForeignLoadPng",  "VipsForeignLoadNsgif",
                                          "VipsForeignLoadWebp", "VipsForeignLoadTiff", "VipsForeignLoadHeif"};
    for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); ++i)
        if (strncmp(loader, allowed[i], strlen(allowed[i])) == 0)
            return 1;
    return 0;
}

static int fail(fm_edge_fill_result_t *res, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(fm_edge_fill_result_t *res, int status, const char *code, const char *fmt, ...)
{
    res->status = status;
    res->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res->message, sizeof(res->message), fmt, ap);
    va_end(ap);
    return -1;
}

/* libvips's reason, one line, without the /proc path of the cached file. */
static int fail_vips(fm_edge_fill_result_t *res, int status, const char *code, const char *what)
{
    char *error = vips_error_buffer_copy();
    for (char *c = error; *c != '\0'; ++c)
        if (*c == '\n' || (unsigned char)*c < 0x20)
            *c = ' ';
    char *proc = strstr(error, "/proc/self/fd/");
    if (proc != NULL) /* loaders name the file: the edge's descriptor is nobody's business */
        *proc = '\0';
    fail(res, status, code, "%s: %.150s", what, error[0] ? error : "libvips failed");
    g_free(error);
    return -1;
}

/* 8-bit sRGB, whatever the source (CMYK, grey, 16-bit). Takes `in`. */
static int to_srgb8(VipsImage *in, VipsImage **out)
{
    VipsImage *srgb;
    int rc = vips_colourspace(in, &srgb, VIPS_INTERPRETATION_sRGB, NULL);
    g_object_unref(in);
    if (rc != 0)
        return -1;
    if (vips_image_get_format(srgb) == VIPS_FORMAT_UCHAR) {
        *out = srgb;
        return 0;
    }
    rc = vips_cast_uchar(srgb, out, NULL);
    g_object_unref(srgb);
    return rc;
}

/* `contain`: the inside-fit image centred on a w×h canvas, white (transparent where there is alpha). Takes `in`. */
static int pad_to_box(VipsImage *in, int width, int height, VipsImage **out)
{
    int has_alpha = vips_image_hasalpha(in);
    VipsArrayDouble *background = has_alpha ? vips_array_double_newv(4, 255.0, 255.0, 255.0, 0.0)
                                            : vips_array_double_newv(3, 255.0, 255.0, 255.0);
    int rc = vips_gravity(in, out, VIPS_COMPASS_DIRECTION_CENTRE, width, height, "extend", VIPS_EXTEND_BACKGROUND,
                          "background", background, NULL);
    vips_area_unref(VIPS_AREA(background));
    g_object_unref(in);
    return rc;
}

/*
 * Every metadata field (EXIF, XMP, IPTC, ICC) removed: "strip" alone is not enough, libvips 8.14's webpsave
 * rebuilds an EXIF block from the image's fields (lambda-workers/variants.c). A copy, so the loader's image keeps
 * its fields for the pipeline behind it.
 */
static int without_metadata(VipsImage *in, VipsImage **out)
{
    int rc = vips_copy(in, out, NULL);
    g_object_unref(in);
    if (rc != 0)
        return -1;
    char **fields = vips_image_get_fields(*out);
    for (int i = 0; fields[i] != NULL; ++i)
        vips_image_remove(*out, fields[i]);
    g_strfreev(fields);
    return 0;
}

static int encode(VipsImage *image, const fm_edge_variant_t *v, void **data, size_t *len, const char **content_type)
{
    if (strcmp(v->format, "webp") == 0) {
        *content_type = "image/webp";
        return vips_webpsave_buffer(image, data, len, "Q", v->quality, "strip", TRUE, NULL);
    }
    if (strcmp(v->format, "png") == 0) {
        *content_type = "image/png";
        return vips_pngsave_buffer(image, data, len, "compression", 6, "strip", TRUE, NULL);
    }
    if (strcmp(v->format, "avif") == 0) {
        *content_type = "image/avif";
        return vips_heifsave_buffer(image, data, len, "Q", v->quality, "compression", VIPS_FOREIGN_HEIF_COMPRESSION_AV1,
                                    "effort", 2, "strip", TRUE, NULL);
    }
    *content_type = "image/jpeg";
    VipsImage *opaque = image;
    if (vips_image_hasalpha(image)) { /* JPEG has no alpha: flatten on white, as the worker does */
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
    int rc = vips_jpegsave_buffer(opaque, data, len, "Q", v->quality, "strip", TRUE, "optimize_coding", TRUE, NULL);
    if (opaque != image)
        g_object_unref(opaque);
    return rc;
}

static int write_file(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd == -1)
        return -1;
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            close(fd);
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    int rc = fdatasync(fd);
    return close(fd) == 0 && rc == 0 ? 0 : -1;
}

int fm_edge_variant_render(const fm_edge_variant_t *v, int src_fd, const char *tmp_path, uint64_t *size,
                           const char **content_type, fm_edge_fill_result_t *res)
{
    if (pthread_getspecific(vips_thread_key) == NULL)
        pthread_setspecific(vips_thread_key, (void *)1);
    /* The cached original by its descriptor: still readable if a purge or an eviction unlinked it meanwhile. */
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", src_fd);
    const char *loader = vips_foreign_find_load(path);
    if (loader == NULL || !loader_allowed(loader)) {
        vips_error_clear();
        return fail(
            res, 415, "not_an_image",
            "w/h/fit/format/q apply to JPEG, PNG, WebP, GIF, TIFF and HEIF/AVIF images; this object is not one");
    }
    /* Header only (sequential access decodes nothing yet): refuse bombs before any pixel is decoded. */
    VipsImage *header = vips_image_new_from_file(path, "access", VIPS_ACCESS_SEQUENTIAL, NULL);
    if (header == NULL)
        return fail_vips(res, 422, "corrupt_image", "unreadable image");
    long long width = vips_image_get_width(header), height = vips_image_get_page_height(header);
    g_object_unref(header);
    if (width * height > fm_edge.cfg->edge_max_input_pixels)
        return fail(res, 422, "image_too_large", "the image is %lld×%lld pixels, over the limit of %lld", width, height,
                    (long long)fm_edge.cfg->edge_max_input_pixels);

    const int max_dim = (int)fm_edge.cfg->edge_max_dimension;
    int box_width = v->width ? v->width : max_dim, box_height = v->height ? v->height : max_dim;
    VipsImage *image = NULL;
    int rc;
    if (v->fit == FM_EDGE_FIT_COVER) /* fills the box exactly: scaled (up if need be) then centre-cropped */
        rc = vips_thumbnail(path, &image, box_width, "height", box_height, "crop", VIPS_INTERESTING_CENTRE, "fail_on",
                            VIPS_FAIL_ON_TRUNCATED, NULL);
    else /* inside and contain never enlarge */
        rc = vips_thumbnail(path, &image, box_width, "height", box_height, "size", VIPS_SIZE_DOWN, "fail_on",
                            VIPS_FAIL_ON_TRUNCATED, NULL);
    if (rc != 0)
        return fail_vips(res, 422, "corrupt_image", "cannot decode the image");
    if (to_srgb8(image, &image) != 0)
        return fail_vips(res, 422, "corrupt_image", "cannot convert to sRGB");
    if (v->fit == FM_EDGE_FIT_CONTAIN && pad_to_box(image, box_width, box_height, &image) != 0)
        return fail_vips(res, 422, "corrupt_image", "cannot pad the image");
    if (without_metadata(image, &image) != 0)
        return fail_vips(res, 422, "corrupt_image", "cannot copy the image");
    void *data = NULL;
    size_t len = 0;
    rc = encode(image, v, &data, &len, content_type);
    g_object_unref(image);
    if (rc != 0) {
        g_free(data);
        return fail_vips(res, 422, "corrupt_image", "cannot encode the variant");
    }
    rc = write_file(tmp_path, data, len);
    g_free(data);
    if (rc != 0) {
        fm_error("edge: cannot write %s: %s", tmp_path, strerror(errno));
        return fail(res, 503, "cache_unavailable", "the edge cannot store the variant, try again");
    }
    *size = len;
    return 0;
}
