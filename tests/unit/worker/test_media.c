/*
 * Tests of the worker's media steps: lambda-workers/sniff.c, describe.c, variants.c, text.c (and media.c).
 *
 * Every fixture is made at test time in a temporary folder, with libvips (JPEG, PNG, GIF) or from literal bytes
 * (a two-page PDF, scripts, HTML, text): the repository holds no binary image. The variants are checked by
 * decoding what `put` received, never by trusting the step's own JSON alone.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "media.h"

#define SHA "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static char tmp_dir[] = "/tmp/fm-test-media-XXXXXX";

static const fm_worker_limits_t limits = {
    .max_pixels = 100000000, .text_max_bytes = 1 << 20, .thumb_px = 256, .preview_px = 1024};

/* ---- fixtures ---------------------------------------------------------------------------------------------- */

static void fixture_path(const char *name, char *path, size_t size)
{
    snprintf(path, size, "%s/%s", tmp_dir, name);
}

static void write_bytes(const char *name, const void *data, size_t len)
{
    char path[PATH_MAX];
    fixture_path(name, path, sizeof(path));
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static void check_vips(int rc)
{
    if (rc != 0)
        fail_msg("libvips: %s", vips_error_buffer());
}

/* A width×height sRGB image of noise (photo-like: it does not compress to nothing). */
static VipsImage *noise_rgb(int width, int height)
{
    VipsImage *noise, *grey, *rgb[3], *joined, *out;
    check_vips(vips_gaussnoise(&noise, width, height, "mean", 128.0, "sigma", 40.0, NULL));
    check_vips(vips_cast_uchar(noise, &grey, NULL));
    g_object_unref(noise);
    double gain[3] = {1.0, 0.8, 0.6};
    for (int i = 0; i < 3; i++) {
        VipsImage *scaled;
        check_vips(vips_linear1(grey, &scaled, gain[i], 0.0, NULL));
        check_vips(vips_cast_uchar(scaled, &rgb[i], NULL));
        g_object_unref(scaled);
    }
    g_object_unref(grey);
    check_vips(vips_bandjoin(rgb, &joined, 3, NULL));
    for (int i = 0; i < 3; i++)
        g_object_unref(rgb[i]);
    check_vips(vips_copy(joined, &out, "interpretation", VIPS_INTERPRETATION_sRGB, NULL));
    g_object_unref(joined);
    return out;
}

/* A solid width×height sRGB(A) image. */
static VipsImage *solid(int width, int height, const double *pixel, int bands)
{
    VipsImage *black, *filled, *out;
    check_vips(vips_black(&black, width, height, "bands", bands, NULL));
    double zero[4] = {1, 1, 1, 1};
    check_vips(vips_linear(black, &filled, zero, (double *)pixel, bands, "uchar", TRUE, NULL));
    g_object_unref(black);
    check_vips(vips_copy(filled, &out, "interpretation", VIPS_INTERPRETATION_sRGB, NULL));
    g_object_unref(filled);
    return out;
}

static void save_jpeg(VipsImage *image, const char *name)
{
    char path[PATH_MAX];
    fixture_path(name, path, sizeof(path));
    check_vips(vips_jpegsave(image, path, "Q", 90, NULL));
}

/* A two-page PDF with one line of text per page; the xref offsets are computed, as a PDF writer would. */
static void write_pdf(const char *name)
{
    static const char *const objects[] = {
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R 5 0 R] /Count 2 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 7 0 R >> >> >>",
        NULL, /* stream 4 */
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 6 0 R "
        "/Resources << /Font << /F1 7 0 R >> >> >>",
        NULL, /* stream 6 */
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    };
    static const char *const streams[] = {"BT /F1 24 Tf 72 700 Td (hello world) Tj ET",
                                          "BT /F1 24 Tf 72 700 Td (second page) Tj ET"};
    char pdf[4096];
    size_t len = (size_t)snprintf(pdf, sizeof(pdf), "%%PDF-1.4\n");
    size_t offsets[7];
    for (int i = 0; i < 7; i++) {
        offsets[i] = len;
        if (objects[i] != NULL) {
            len += (size_t)snprintf(pdf + len, sizeof(pdf) - len, "%d 0 obj\n%s\nendobj\n", i + 1, objects[i]);
        } else {
            const char *stream = streams[i == 3 ? 0 : 1];
            len += (size_t)snprintf(pdf + len, sizeof(pdf) - len,
                                    "%d 0 obj\n<< /Length %zu >>\nstream\n%s\nendstream\nendobj\n", i + 1,
                                    strlen(stream), stream);
        }
    }
    size_t xref = len;
    len += (size_t)snprintf(pdf + len, sizeof(pdf) - len, "xref\n0 8\n0000000000 65535 f \n");
    for (int i = 0; i < 7; i++)
        len += (size_t)snprintf(pdf + len, sizeof(pdf) - len, "%010zu 00000 n \n", offsets[i]);
    len += (size_t)snprintf(pdf + len, sizeof(pdf) - len,
                            "trailer\n<< /Size 8 /Root 1 0 R >>\nstartxref\n%zu\n%%%%EOF\n", xref);
    assert_true(len < sizeof(pdf));
    write_bytes(name, pdf, len);
}

static int setup_fixtures(void **state)
{
    (void)state;
    if (fm_media_init("test_media") != 0 || mkdtemp(tmp_dir) == NULL)
        return -1;

    VipsImage *big = noise_rgb(4000, 3000);
    save_jpeg(big, "big.jpg");
    g_object_unref(big);

    /* stored 400 wide × 300 high, to be shown turned 90° clockwise (EXIF orientation 6): a 300×400 portrait */
    VipsImage *turned = noise_rgb(400, 300);
    vips_image_set_int(turned, VIPS_META_ORIENTATION, 6);
    vips_image_set_string(turned, "exif-ifd0-Make", "TestCam");
    vips_image_set_string(turned, "exif-ifd0-Model", "TC-1");
    vips_image_set_string(turned, "exif-ifd2-DateTimeOriginal", "2024:05:06 07:08:09");
    vips_image_set_string(turned, "exif-ifd3-GPSLatitudeRef", "S");
    vips_image_set_string(turned, "exif-ifd3-GPSLatitude", "33/1 51/1 3600/100");
    vips_image_set_string(turned, "exif-ifd3-GPSLongitudeRef", "E");
    vips_image_set_string(turned, "exif-ifd3-GPSLongitude", "151/1 12/1 0/1");
    save_jpeg(turned, "rotated.jpg");
    g_object_unref(turned);

    /* RGBA: left half opaque red, right half fully transparent */
    double red[4] = {255, 0, 0, 255}, clear[4] = {0, 0, 0, 0};
    VipsImage *left = solid(300, 200, red, 4), *right = solid(300, 200, clear, 4), *alpha;
    check_vips(vips_join(left, right, &alpha, VIPS_DIRECTION_HORIZONTAL, NULL));
    char path[PATH_MAX];
    fixture_path("alpha.png", path, sizeof(path));
    check_vips(vips_pngsave(alpha, path, NULL));
    g_object_unref(left);
    g_object_unref(right);
    g_object_unref(alpha);

    /* two frames of 300×200 stacked vertically, "page-height" makes them an animation: red, then blue */
    double blue[3] = {0, 0, 255}, red3[3] = {255, 0, 0};
    VipsImage *first = solid(300, 200, red3, 3), *second = solid(300, 200, blue, 3), *frames;
    check_vips(vips_join(first, second, &frames, VIPS_DIRECTION_VERTICAL, NULL));
    vips_image_set_int(frames, VIPS_META_PAGE_HEIGHT, 200);
    int delays[2] = {100, 100};
    vips_image_set_array_int(frames, "delay", delays, 2);
    fixture_path("animated.gif", path, sizeof(path));
    check_vips(vips_gifsave(frames, path, NULL));
    g_object_unref(first);
    g_object_unref(second);
    g_object_unref(frames);

    /* decompression bomb: 2.5 gigapixels of 1-bit black, a few hundred KiB of PNG */
    VipsImage *bomb;
    check_vips(vips_black(&bomb, 50000, 50000, NULL));
    fixture_path("bomb.png", path, sizeof(path));
    check_vips(vips_pngsave(bomb, path, "bitdepth", 1, "compression", 9, NULL));
    g_object_unref(bomb);

    write_pdf("doc.pdf");
    return 0;
}

static int teardown_fixtures(void **state)
{
    (void)state;
    char command[PATH_MAX + 16];
    snprintf(command, sizeof(command), "rm -rf '%s'", tmp_dir);
    return system(command) == 0 ? 0 : -1;
}

/* ---- jobs and the put callback ------------------------------------------------------------------------------ */

static void job_for(fm_job_t *job, const char *name, const char *declared)
{
    memset(job, 0, sizeof(*job));
    fixture_path(name, job->path, sizeof(job->path));
    struct stat st;
    assert_int_equal(stat(job->path, &st), 0);
    job->size = st.st_size;
    snprintf(job->sha256, sizeof(job->sha256), "%s", SHA);
    snprintf(job->declared_type, sizeof(job->declared_type), "%s", declared);
}

/* The steps' memory, but not the fixture (fm_job_clear() would remove it). */
static void job_free(fm_job_t *job)
{
    cJSON_Delete(job->meta);
    cJSON_Delete(job->variants);
    free(job->text);
}

typedef struct {
    char key[256], content_type[64];
    void *data;
    size_t len;
} stored_t;

typedef struct {
    stored_t items[8];
    int count;
    int refuse; /* put fails: the store is down */
} store_t;

static int put_memory(void *ud, const char *key, const char *content_type, const void *data, size_t len)
{
    store_t *store = ud;
    if (store->refuse || store->count == 8)
        return -1;
    stored_t *item = &store->items[store->count++];
    snprintf(item->key, sizeof(item->key), "%s", key);
    snprintf(item->content_type, sizeof(item->content_type), "%s", content_type);
    item->data = malloc(len);
    memcpy(item->data, data, len);
    item->len = len;
    return 0;
}

static void store_free(store_t *store)
{
    for (int i = 0; i < store->count; i++)
        free(store->items[i].data);
}

static double meta_number(const fm_job_t *job, const char *name)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(job->meta, name);
    if (!cJSON_IsNumber(item))
        fail_msg("meta has no number \"%s\"", name);
    return item->valuedouble;
}

static const char *json_string(const cJSON *object, const char *name)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, name);
    if (!cJSON_IsString(item))
        fail_msg("no string \"%s\"", name);
    return item->valuestring;
}

/* Runs sniff (expected OK), describe and variants (expected OK) on a fixture. */
static void run_media(fm_job_t *job, store_t *store, const char *name, const char *declared)
{
    job_for(job, name, declared);
    assert_int_equal(step_sniff(job), FM_STEP_OK);
    if (step_describe(job, &limits) != FM_STEP_OK)
        fail_msg("describe: %s", job->reason);
    if (step_variants(job, &limits, put_memory, store) != FM_STEP_OK)
        fail_msg("variants: %s", job->reason);
}

/*
 * Checks the four variants `put` received against the JSON and by decoding them again: keys, content types,
 * formats, sizes (thumb_w×thumb_h, preview_w×preview_h). Returns the decoded thumb JPEG (caller unrefs) when
 * `thumb_jpeg` is set.
 */
static void check_variants(const fm_job_t *job, const store_t *store, int thumb_w, int thumb_h, int preview_w,
                           int preview_h, VipsImage **thumb_jpeg, VipsImage **thumb_webp)
{
    static const char *const names[] = {"thumb", "thumb", "preview", "preview"};
    static const char *const formats[] = {"jpeg", "webp", "jpeg", "webp"};
    static const char *const exts[] = {"jpg", "webp", "jpg", "webp"};
    assert_int_equal(store->count, 4);
    assert_int_equal(cJSON_GetArraySize(job->variants), 4);
    for (int i = 0; i < 4; i++) {
        const stored_t *item = &store->items[i];
        const cJSON *variant = cJSON_GetArrayItem(job->variants, i);
        char key[256];
        snprintf(key, sizeof(key), "variants/%s/%s.%s", SHA, names[i], exts[i]);
        assert_string_equal(item->key, key);
        assert_string_equal(json_string(variant, "key"), key);
        assert_string_equal(json_string(variant, "name"), names[i]);
        assert_string_equal(json_string(variant, "format"), formats[i]);
        assert_string_equal(item->content_type, i % 2 == 0 ? "image/jpeg" : "image/webp");

        const char *loader = vips_foreign_find_load_buffer(item->data, item->len);
        assert_non_null(loader);
        assert_string_equal(loader, i % 2 == 0 ? "VipsForeignLoadJpegBuffer" : "VipsForeignLoadWebpBuffer");
        VipsImage *decoded = vips_image_new_from_buffer(item->data, item->len, "", NULL);
        check_vips(decoded == NULL);
        int width = i < 2 ? thumb_w : preview_w, height = i < 2 ? thumb_h : preview_h;
        assert_int_equal(vips_image_get_width(decoded), width);
        assert_int_equal(vips_image_get_height(decoded), height);
        assert_int_equal(cJSON_GetObjectItem(variant, "width")->valueint, width);
        assert_int_equal(cJSON_GetObjectItem(variant, "height")->valueint, height);
        assert_int_equal((size_t)cJSON_GetObjectItem(variant, "bytes")->valuedouble, item->len);
        /* metadata stripped: nothing of the source's EXIF (the GPS position, the camera) reaches a variant */
        assert_int_equal(vips_image_get_typeof(decoded, "exif-ifd0-Make"), 0);
        assert_int_equal(vips_image_get_typeof(decoded, "exif-ifd3-GPSLatitude"), 0);
        if (i % 2 == 0) /* JPEG: no EXIF block at all (libvips 8.14's WebP writer always adds a minimal one) */
            assert_int_equal(vips_image_get_typeof(decoded, VIPS_META_EXIF_NAME), 0);
        if (i == 0 && thumb_jpeg != NULL)
            *thumb_jpeg = decoded;
        else if (i == 1 && thumb_webp != NULL)
            *thumb_webp = decoded;
        else
            g_object_unref(decoded);
    }
}

/* Does this JPEG hold a progressive frame (SOF2)? */
static int jpeg_is_progressive(const stored_t *item)
{
    const unsigned char *p = item->data;
    for (size_t i = 2; i + 1 < item->len; i++)
        if (p[i] == 0xFF && p[i + 1] == 0xC2)
            return 1;
    return 0;
}

static void pixel_at(VipsImage *image, int x, int y, double *out, int bands)
{
    double *values;
    int count;
    check_vips(vips_getpoint(image, &values, &count, x, y, NULL));
    assert_int_equal(count, bands);
    memcpy(out, values, sizeof(double) * (size_t)count);
    g_free(values);
}

/* ---- describe + variants -------------------------------------------------------------------------------------- */

static void test_large_jpeg(void **state)
{
    (void)state;
    fm_job_t job;
    store_t store = {0};
    run_media(&job, &store, "big.jpg", "image/jpg"); /* a common alias of image/jpeg */
    assert_string_equal(job.real_type, "image/jpeg");
    assert_int_equal((long long)meta_number(&job, "size"), job.size);
    assert_string_equal(json_string(job.meta, "type"), "image/jpeg");
    assert_int_equal(meta_number(&job, "width"), 4000);
    assert_int_equal(meta_number(&job, "height"), 3000);
    assert_int_equal(meta_number(&job, "orientation"), 1);
    assert_int_equal(meta_number(&job, "pages"), 1);
    assert_null(cJSON_GetObjectItem(job.meta, "exif"));
    assert_null(cJSON_GetObjectItem(job.meta, "gps"));
    /* the longest edge is exactly the size */
    check_variants(&job, &store, 256, 192, 1024, 768, NULL, NULL);
    assert_false(jpeg_is_progressive(&store.items[0]));
    assert_true(jpeg_is_progressive(&store.items[2]));
    store_free(&store);
    job_free(&job);
}

static void test_exif_orientation(void **state)
{
    (void)state;
    fm_job_t job;
    store_t store = {0};
    run_media(&job, &store, "rotated.jpg", "image/jpeg");
    /* display orientation: the stored 400×300 turned a quarter */
    assert_int_equal(meta_number(&job, "width"), 300);
    assert_int_equal(meta_number(&job, "height"), 400);
    assert_int_equal(meta_number(&job, "orientation"), 6);
    const cJSON *exif = cJSON_GetObjectItem(job.meta, "exif");
    assert_non_null(exif);
    assert_string_equal(json_string(exif, "make"), "TestCam");
    assert_string_equal(json_string(exif, "model"), "TC-1");
    assert_string_equal(json_string(exif, "datetime"), "2024:05:06 07:08:09");
    const cJSON *gps = cJSON_GetObjectItem(job.meta, "gps");
    assert_non_null(gps);
    /* 33° 51' 36" S, 151° 12' 0" E */
    assert_float_equal(cJSON_GetObjectItem(gps, "lat")->valuedouble, -(33 + 51 / 60.0 + 36 / 3600.0), 1e-6);
    assert_float_equal(cJSON_GetObjectItem(gps, "lon")->valuedouble, 151.2, 1e-6);
    /* a small image is never enlarged: the preview keeps 300×400, upright */
    check_variants(&job, &store, 192, 256, 300, 400, NULL, NULL);
    store_free(&store);
    job_free(&job);
}

static void test_png_alpha(void **state)
{
    (void)state;
    fm_job_t job;
    store_t store = {0};
    VipsImage *jpeg, *webp;
    run_media(&job, &store, "alpha.png", "image/png");
    assert_int_equal(meta_number(&job, "width"), 600);
    assert_int_equal(meta_number(&job, "height"), 200);
    check_variants(&job, &store, 256, 85, 600, 200, &jpeg, &webp);
    /* JPEG: alpha flattened onto white; WebP keeps it */
    double pixel[4];
    assert_int_equal(vips_image_get_bands(jpeg), 3);
    pixel_at(jpeg, 200, 40, pixel, 3);
    assert_true(pixel[0] > 245 && pixel[1] > 245 && pixel[2] > 245);
    pixel_at(jpeg, 50, 40, pixel, 3);
    assert_true(pixel[0] > 230 && pixel[1] < 25 && pixel[2] < 25);
    assert_int_equal(vips_image_get_bands(webp), 4);
    pixel_at(webp, 200, 40, pixel, 4);
    assert_true(pixel[3] < 10);
    g_object_unref(jpeg);
    g_object_unref(webp);
    store_free(&store);
    job_free(&job);
}

static void test_animated_gif_first_frame(void **state)
{
    (void)state;
    fm_job_t job;
    store_t store = {0};
    VipsImage *jpeg;
    run_media(&job, &store, "animated.gif", "image/gif");
    assert_int_equal(meta_number(&job, "pages"), 2);
    assert_int_equal(meta_number(&job, "width"), 300);
    assert_int_equal(meta_number(&job, "height"), 200); /* one frame */
    check_variants(&job, &store, 256, 171, 300, 200, &jpeg, NULL);
    double pixel[3]; /* red: the first frame, not the blue second one nor both stacked */
    pixel_at(jpeg, 128, 85, pixel, 3);
    assert_true(pixel[0] > 230 && pixel[2] < 25);
    g_object_unref(jpeg);
    store_free(&store);
    job_free(&job);
}

static void test_decompression_bomb(void **state)
{
    (void)state;
    fm_job_t job;
    store_t store = {0};
    job_for(&job, "bomb.png", "image/png");
    assert_true(job.size < 1 << 20);
    assert_int_equal(step_sniff(&job), FM_STEP_OK);
    assert_int_equal(step_describe(&job, &limits), FM_STEP_QUARANTINE);
    assert_string_equal(job.reason, "image of 50000×50000 pixels is over the limit of 100000000");
    /* the same guard in variants, for a job that skipped describe; nothing rendered */
    job.reason[0] = '\0';
    assert_int_equal(step_variants(&job, &limits, put_memory, &store), FM_STEP_QUARANTINE);
    assert_string_equal(job.reason, "image of 50000×50000 pixels is over the limit of 100000000");
    assert_int_equal(store.count, 0);
    job_free(&job);
}

static void test_corrupt_jpeg(void **state)
{
    (void)state;
    char path[PATH_MAX];
    fixture_path("rotated.jpg", path, sizeof(path));
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static unsigned char data[1 << 20];
    size_t len = fread(data, 1, sizeof(data), f);
    fclose(f);
    assert_true(len > 4096 && len < sizeof(data));

    /* cut in the middle of the entropy-coded data: the header reads, the pixels do not */
    write_bytes("truncated.jpg", data, len / 2);
    fm_job_t job;
    store_t store = {0};
    job_for(&job, "truncated.jpg", "image/jpeg");
    assert_int_equal(step_sniff(&job), FM_STEP_OK);
    assert_int_equal(step_describe(&job, &limits), FM_STEP_OK);
    assert_int_equal(step_variants(&job, &limits, put_memory, &store), FM_STEP_FAIL);
    assert_non_null(strstr(job.reason, "corrupt image: "));
    assert_true(strlen(job.reason) > strlen("corrupt image: ") + 5); /* the libvips message follows */
    assert_int_equal(store.count, 0);
    assert_null(strstr(job.reason, tmp_dir));
    assert_string_equal(vips_error_buffer(), ""); /* cleared for the next job */
    job_free(&job);

    /* the JPEG signature followed by garbage: no header */
    memset(data + 4, 0x5A, 2000);
    write_bytes("garbled.jpg", data, 2004);
    job_for(&job, "garbled.jpg", "image/jpeg");
    assert_int_equal(step_sniff(&job), FM_STEP_OK);
    assert_string_equal(job.real_type, "image/jpeg");
    assert_int_equal(step_describe(&job, &limits), FM_STEP_FAIL);
    assert_non_null(strstr(job.reason, "corrupt image: "));
    assert_null(strstr(job.reason, tmp_dir)); /* the owner reads it: no server path */
    job_free(&job);
}

static void test_pdf(void **state)
{
    (void)state;
    fm_job_t job;
    store_t store = {0};
    VipsImage *thumb;
    run_media(&job, &store, "doc.pdf", "application/pdf");
    assert_string_equal(job.real_type, "application/pdf");
    assert_int_equal(meta_number(&job, "pages"), 2);
    assert_int_equal(meta_number(&job, "width"), 612); /* US Letter, in points */
    assert_int_equal(meta_number(&job, "height"), 792);
    /* the first page drawn at the variant's size: 612/792 × 256 = 197.8 */
    check_variants(&job, &store, 198, 256, 791, 1024, &thumb, NULL);
    double pixel[3]; /* a white page with black text near the top left */
    pixel_at(thumb, 180, 200, pixel, 3);
    assert_true(pixel[0] > 245 && pixel[1] > 245 && pixel[2] > 245);
    VipsImage *grey;
    double darkest;
    check_vips(vips_extract_area(thumb, &grey, 0, 0, 198, 60, NULL));
    check_vips(vips_min(grey, &darkest, NULL));
    assert_true(darkest < 128);
    g_object_unref(grey);
    g_object_unref(thumb);

    assert_int_equal(step_text(&job, &limits), FM_STEP_OK);
    assert_non_null(job.text);
    assert_int_equal(strlen(job.text), job.text_len);
    const char *hello = strstr(job.text, "hello world"), *second = strstr(job.text, "second page");
    assert_non_null(hello);
    assert_non_null(second);
    assert_true(hello < second);
    assert_non_null(memchr(hello, '\n', (size_t)(second - hello)));
    store_free(&store);
    job_free(&job);
}

static void test_other_types_have_no_variants(void **state)
{
    (void)state;
    static const char csv[] = "name,size\na,1\nb,2\n";
    write_bytes("data.csv", csv, sizeof(csv) - 1);
    fm_job_t job;
    store_t store = {0};
    run_media(&job, &store, "data.csv", "text/csv");
    assert_string_equal(job.real_type, "text/csv");
    assert_int_equal(cJSON_GetArraySize(job.meta), 2); /* size and type only */
    assert_int_equal(meta_number(&job, "size"), sizeof(csv) - 1);
    assert_true(cJSON_IsArray(job.variants));
    assert_int_equal(cJSON_GetArraySize(job.variants), 0);
    assert_int_equal(store.count, 0);
    job_free(&job);
}

static void test_store_failure_is_retried(void **state)
{
    (void)state;
    fm_job_t job;
    store_t store = {.refuse = 1};
    job_for(&job, "alpha.png", "image/png");
    assert_int_equal(step_sniff(&job), FM_STEP_OK);
    assert_int_equal(step_variants(&job, &limits, put_memory, &store), FM_STEP_RETRY);
    assert_string_equal(job.reason, "the store refused variants/" SHA "/thumb.jpg");
    job_free(&job);
}

/* ---- sniff ------------------------------------------------------------------------------------------------------ */

/* Writes `data` as `name`, sniffs it as `declared`; checks the decision, the real type and the reason. */
static void expect_sniff(const char *name, const void *data, size_t len, const char *declared, fm_step_rc expected,
                         const char *real_type, const char *reason)
{
    fm_job_t job;
    if (data != NULL)
        write_bytes(name, data, len);
    job_for(&job, name, declared);
    fm_step_rc rc = step_sniff(&job);
    if (rc != expected)
        fail_msg("%s declared %s: rc %d, expected %d (real %s, reason \"%s\")", name, declared, rc, expected,
                 job.real_type, job.reason);
    assert_string_equal(job.real_type, real_type);
    if (reason != NULL)
        assert_string_equal(job.reason, reason);
}

static void test_sniff_refuses_disguised_content(void **state)
{
    (void)state;
    static const char script[] = "#!/bin/sh\nrm -rf \"$HOME\"\n";
    static const char html[] = "<!DOCTYPE html>\n<html><body><script>alert(document.cookie)</script></body></html>\n";
    static const char python[] = "#!/usr/bin/env python3\nimport os\nos.system('id')\n";
    expect_sniff("script.png", script, sizeof(script) - 1, "image/png", FM_STEP_QUARANTINE, "text/x-shellscript",
                 "declared image/png but the bytes are text/x-shellscript");
    expect_sniff("page.jpg", html, sizeof(html) - 1, "image/jpeg", FM_STEP_QUARANTINE, "text/html",
                 "declared image/jpeg but the bytes are text/html");
    expect_sniff("page.bin", html, sizeof(html) - 1, "application/octet-stream", FM_STEP_QUARANTINE, "text/html", NULL);
    /* HTML only declared as text (then served as the text/html it is): never as itself, parameters or not */
    expect_sniff("page.html", html, sizeof(html) - 1, "text/html; charset=utf-8", FM_STEP_QUARANTINE, "text/html", NULL);
    expect_sniff("page.png", html, sizeof(html) - 1, "image/png;charset=utf-8", FM_STEP_QUARANTINE, "text/html", NULL);
    expect_sniff("tool.pdf", python, sizeof(python) - 1, "application/pdf", FM_STEP_QUARANTINE, "text/x-script.python",
                 "declared application/pdf but the bytes are text/x-script.python");
    /* source code kept as text is text */
    expect_sniff("script.txt", script, sizeof(script) - 1, "text/plain", FM_STEP_OK, "text/x-shellscript", NULL);

    /* an executable, whatever it claims (this test program itself) */
    FILE *self = fopen("/proc/self/exe", "rb");
    assert_non_null(self);
    static unsigned char elf[65536];
    size_t len = fread(elf, 1, sizeof(elf), self);
    fclose(self);
    write_bytes("program", elf, len);
    fm_job_t job;
    job_for(&job, "program", "application/octet-stream");
    assert_int_equal(step_sniff(&job), FM_STEP_QUARANTINE);
    assert_non_null(strstr(job.real_type, "application/x-"));
    assert_non_null(strstr(job.reason, "declared application/octet-stream but the bytes are application/x-"));
    job_for(&job, "program", "text/plain");
    assert_int_equal(step_sniff(&job), FM_STEP_QUARANTINE);

    /* an image of another format than declared */
    expect_sniff("alpha.png", NULL, 0, "image/jpeg", FM_STEP_QUARANTINE, "image/png",
                 "declared image/jpeg but the bytes are image/png");
}

static void test_sniff_accepts_matching_content(void **state)
{
    (void)state;
    static const char text[] = "Meeting notes\n\n- one\n- two\n";
    static const char json[] = "{\"name\": \"report\", \"pages\": [1, 2, 3]}\n";
    static const char csv[] = "a,b,c\n1,2,3\n4,5,6\n";
    expect_sniff("big.jpg", NULL, 0, "image/jpeg", FM_STEP_OK, "image/jpeg", NULL);
    expect_sniff("big.jpg", NULL, 0, "IMAGE/JPEG", FM_STEP_OK, "image/jpeg", NULL);
    expect_sniff("alpha.png", NULL, 0, "image/png", FM_STEP_OK, "image/png", NULL);
    expect_sniff("animated.gif", NULL, 0, "image/gif", FM_STEP_OK, "image/gif", NULL);
    expect_sniff("doc.pdf", NULL, 0, "application/pdf", FM_STEP_OK, "application/pdf", NULL);
    expect_sniff("doc.pdf", NULL, 0, "application/octet-stream", FM_STEP_OK, "application/pdf", NULL);
    expect_sniff("doc.pdf", NULL, 0, "", FM_STEP_OK, "application/pdf", NULL);
    expect_sniff("notes.txt", text, sizeof(text) - 1, "text/plain; charset=utf-8", FM_STEP_OK, "text/plain", NULL);
    expect_sniff("notes.txt", NULL, 0, "text/markdown", FM_STEP_OK, "text/plain", NULL);
    /* parameters never change the family: the declared type/subtype is compared (issue 11 item 8) */
    expect_sniff("notes.txt", NULL, 0, "TEXT/Plain ;charset=\"utf-8\"; format=flowed", FM_STEP_OK, "text/plain", NULL);
    expect_sniff("big.jpg", NULL, 0, "Image/JPEG; q=1", FM_STEP_OK, "image/jpeg", NULL);
    expect_sniff("notes.txt", NULL, 0, "application/pdf; charset=utf-8", FM_STEP_QUARANTINE, "text/plain",
                 "declared application/pdf but the bytes are text/plain");
    expect_sniff("data.json", json, sizeof(json) - 1, "application/json", FM_STEP_OK, "application/json", NULL);
    expect_sniff("data.json", NULL, 0, "text/plain", FM_STEP_OK, "application/json", NULL);
    expect_sniff("table.csv", csv, sizeof(csv) - 1, "text/csv", FM_STEP_OK, "text/csv", NULL);
    expect_sniff("notes.txt", NULL, 0, "application/pdf", FM_STEP_QUARANTINE, "text/plain",
                 "declared application/pdf but the bytes are text/plain");

    /* empty: only as text or as opaque bytes */
    expect_sniff("empty", "", 0, "text/plain", FM_STEP_OK, "application/x-empty", NULL);
    expect_sniff("empty", NULL, 0, "application/octet-stream", FM_STEP_OK, "application/x-empty", NULL);
    expect_sniff("empty", NULL, 0, "image/png", FM_STEP_QUARANTINE, "application/x-empty",
                 "declared image/png but the bytes are application/x-empty");
}

/* ---- text ------------------------------------------------------------------------------------------------------- */

static void expect_text(const void *data, size_t len, long long cap, const char *expected)
{
    write_bytes("text.txt", data, len);
    fm_job_t job;
    job_for(&job, "text.txt", "text/plain");
    snprintf(job.real_type, sizeof(job.real_type), "text/plain");
    fm_worker_limits_t capped = limits;
    capped.text_max_bytes = cap;
    assert_int_equal(step_text(&job, &capped), FM_STEP_OK);
    assert_non_null(job.text);
    assert_int_equal(job.text_len, strlen(expected));
    assert_memory_equal(job.text, expected, job.text_len);
    assert_int_equal(job.text[job.text_len], '\0');
    job_free(&job);
}

static void test_text(void **state)
{
    (void)state;
    expect_text("hello, world\n", 13, 1 << 20, "hello, world\n");
    /* invalid sequences → U+FFFD: a lone Latin-1 é, 0xFF, an overlong '/', a UTF-16 surrogate; NULs removed */
    static const char bad[] = "caf\xC3\xA9 caf\xE9 \xFF \xC0\xAF \xED\xA0\x80!\0end";
    expect_text(bad, sizeof(bad) - 1, 1 << 20,
                "café caf\xEF\xBF\xBD \xEF\xBF\xBD \xEF\xBF\xBD\xEF\xBF\xBD "
                "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD!end");
    /* the cap cuts at the last whole character: 5 bytes of "ééé" is "éé" */
    expect_text("\xC3\xA9\xC3\xA9\xC3\xA9", 6, 5, "\xC3\xA9\xC3\xA9");
    /* a 4-byte character (U+1F600) is kept whole */
    expect_text("a\xF0\x9F\x98\x80", 5, 5, "a\xF0\x9F\x98\x80");

    /* images have no text */
    fm_job_t job;
    job_for(&job, "big.jpg", "image/jpeg");
    snprintf(job.real_type, sizeof(job.real_type), "image/jpeg");
    assert_int_equal(step_text(&job, &limits), FM_STEP_OK);
    assert_null(job.text);
    assert_int_equal(job.text_len, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_large_jpeg),
        cmocka_unit_test(test_exif_orientation),
        cmocka_unit_test(test_png_alpha),
        cmocka_unit_test(test_animated_gif_first_frame),
        cmocka_unit_test(test_decompression_bomb),
        cmocka_unit_test(test_corrupt_jpeg),
        cmocka_unit_test(test_pdf),
        cmocka_unit_test(test_other_types_have_no_variants),
        cmocka_unit_test(test_store_failure_is_retried),
        cmocka_unit_test(test_sniff_refuses_disguised_content),
        cmocka_unit_test(test_sniff_accepts_matching_content),
        cmocka_unit_test(test_text),
    };
    int failed = cmocka_run_group_tests(tests, setup_fixtures, teardown_fixtures);
    vips_shutdown();
    return failed;
}
