/*
 * fm_thumb FILE OUTDIR [declared-type]: runs the worker's media steps on a local file, as fm-worker would after
 * fetching it: step_sniff, step_describe, step_variants (the variants are written to OUTDIR/{thumb|preview}.
 * {jpg|webp}) and step_text; prints {"steps", "real_type", "meta", "variants", "text" (first 200 bytes),
 * "reason"} as JSON. Exit status 0 when every step said OK.
 *
 * fm_thumb --thumb-only [--repeat N] FILE OUTDIR: only the 256 px JPEG thumbnail (the code path of
 * step_variants), written to OUTDIR/thumb.jpg, N times in the same process (default 1); prints the milliseconds of
 * each, one a line (tests/bench/bench_thumbnail.py). The first pays libvips' one-time set-up (operation classes,
 * loader modules); the next ones are what a long-running worker pays per job.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/evp.h>

#include "media.h"

static int sha256_file(const char *path, char hex[65])
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return -1;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    unsigned char chunk[65536], digest[32];
    size_t got;
    while ((got = fread(chunk, 1, sizeof(chunk), f)) > 0)
        EVP_DigestUpdate(ctx, chunk, got);
    EVP_DigestFinal_ex(ctx, digest, NULL);
    EVP_MD_CTX_free(ctx);
    fclose(f);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", digest[i]);
    return 0;
}

/* put: OUTDIR/{name}.{ext}, the last part of the key. */
static int put_file(void *ud, const char *key, const char *content_type, const void *data, size_t len)
{
    const char *name = strrchr(key, '/');
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", (const char *)ud, name != NULL ? name + 1 : key);
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        return -1;
    size_t written = fwrite(data, 1, len, f);
    return fclose(f) != 0 || written != len ? -1 : 0;
}

static const char *rc_name(fm_step_rc rc)
{
    static const char *const names[] = {"ok", "quarantine", "retry", "fail"};
    return (unsigned)rc < 4 ? names[rc] : "?";
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* One 256 px JPEG thumbnail into OUTDIR/thumb.jpg; its milliseconds on stdout. */
static int thumb_once(fm_job_t *job, const char *out_dir)
{
    double start = now_ms();
    VipsImage *image;
    void *data = NULL;
    size_t len = 0;
    if (fm_media_render(job, 256, &image) != FM_STEP_OK) {
        fprintf(stderr, "fm_thumb: %s\n", job->reason);
        return 1;
    }
    int rc = fm_media_encode(image, "jpeg", 0, &data, &len);
    g_object_unref(image);
    if (rc != 0 || put_file((void *)out_dir, "thumb.jpg", "image/jpeg", data, len) != 0) {
        fprintf(stderr, "fm_thumb: cannot make %s/thumb.jpg: %s\n", out_dir, vips_error_buffer());
        g_free(data);
        return 1;
    }
    g_free(data);
    printf("%.3f\n", now_ms() - start);
    return 0;
}

static int thumb_only(fm_job_t *job, const char *out_dir, int repeat)
{
    if (step_sniff(job) != FM_STEP_OK) {
        fprintf(stderr, "fm_thumb: %s\n", job->reason);
        return 1;
    }
    for (int i = 0; i < repeat; i++)
        if (thumb_once(job, out_dir) != 0)
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    int only_thumb = argc > 1 && strcmp(argv[1], "--thumb-only") == 0, repeat = 1;
    if (only_thumb && argc > 3 && strcmp(argv[2], "--repeat") == 0) {
        repeat = atoi(argv[3]);
        argv += 2;
        argc -= 2;
    }
    char **args = argv + only_thumb;
    int nargs = argc - only_thumb;
    if (nargs < 3 || nargs > 4 || repeat < 1) {
        fprintf(stderr, "usage: fm_thumb [--thumb-only [--repeat N]] FILE OUTDIR [declared-type]\n");
        return 2;
    }
    if (fm_media_init(argv[0]) != 0) {
        fprintf(stderr, "fm_thumb: libvips cannot start\n");
        return 1;
    }
    fm_job_t job = {0};
    struct stat st;
    if (stat(args[1], &st) != 0 || snprintf(job.path, sizeof(job.path), "%s", args[1]) >= (int)sizeof(job.path) ||
        sha256_file(args[1], job.sha256) != 0) {
        fprintf(stderr, "fm_thumb: cannot read %s\n", args[1]);
        return 1;
    }
    job.size = st.st_size;
    snprintf(job.declared_type, sizeof(job.declared_type), "%s", nargs == 4 ? args[3] : "application/octet-stream");
    if (only_thumb)
        return thumb_only(&job, args[2], repeat);

    fm_worker_limits_t limits = {
        .max_pixels = 100000000, .text_max_bytes = 1 << 20, .thumb_px = 256, .preview_px = 1024};
    cJSON *result = cJSON_CreateObject();
    cJSON *steps = cJSON_AddObjectToObject(result, "steps");
    fm_step_rc rc = step_sniff(&job);
    cJSON_AddStringToObject(steps, "sniff", rc_name(rc));
    if (rc == FM_STEP_OK) {
        rc = step_describe(&job, &limits);
        cJSON_AddStringToObject(steps, "describe", rc_name(rc));
    }
    if (rc == FM_STEP_OK) {
        rc = step_variants(&job, &limits, put_file, args[2]);
        cJSON_AddStringToObject(steps, "variants", rc_name(rc));
    }
    if (rc == FM_STEP_OK) {
        rc = step_text(&job, &limits);
        cJSON_AddStringToObject(steps, "text", rc_name(rc));
    }
    cJSON_AddStringToObject(result, "real_type", job.real_type);
    if (job.meta != NULL)
        cJSON_AddItemReferenceToObject(result, "meta", job.meta);
    if (job.variants != NULL)
        cJSON_AddItemReferenceToObject(result, "variants", job.variants);
    if (job.text != NULL) {
        size_t shown = job.text_len < 200 ? job.text_len : 200;
        while (shown > 0 && shown < job.text_len && ((unsigned char)job.text[shown] & 0xC0) == 0x80)
            shown--; /* not in the middle of a character */
        char *head = strndup(job.text, shown);
        cJSON_AddStringToObject(result, "text", head);
        cJSON_AddNumberToObject(result, "text_len", (double)job.text_len);
        free(head);
    }
    if (rc != FM_STEP_OK)
        cJSON_AddStringToObject(result, "reason", job.reason);
    char *json = cJSON_Print(result);
    puts(json);
    free(json);
    cJSON_Delete(result);
    /* not fm_job_clear(): it removes job.path, which is the caller's file here */
    cJSON_Delete(job.meta);
    cJSON_Delete(job.variants);
    free(job.text);
    return rc == FM_STEP_OK ? 0 : 1;
}
