/*
 * fm_scan: runs the worker's first steps against the real stack, so integration tests check the code the worker
 * runs (tests/integration/test_worker_steps.py). One JSON line on stdout.
 *
 *   fm_scan FILE
 *       step_scan on FILE (clamd INSTREAM)          {"step":"scan","rc":"OK|QUARANTINE|RETRY|FAIL","reason":"…"}
 *   fm_scan --fetch KEY CLAIMED_SHA256 DECLARED_SIZE
 *       step_fetch, then step_verify if it passed   {"step":"fetch|verify","rc","reason","sha256","size",
 *                                                    "path","mode"}  (temp file's path and octal mode, "" when
 *                                                    the step left none; the file is removed before exit)
 *
 * Exits 0 whatever the step decided, 1 when the tool could not run it, 2 on a usage error. Settings: FM_CLAMD_HOST
 * (default 127.0.0.1), FM_CLAMD_PORT, FM_CLAMD_TIMEOUT_MS and FM_CLAMD_CHUNK_BYTES (optional); FM_S3_ENDPOINT,
 * FM_S3_BUCKET, FM_S3_ACCESS_KEY, FM_S3_SECRET_KEY, FM_S3_SESSION_TOKEN, FM_S3_REGION as for fm_s3ctl; FM_TMP_DIR
 * (default /tmp) for the temp copy.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "s3.h"
#include "worker.h"

static const char *env_or(const char *name, const char *fallback)
{
    const char *v = getenv(name);
    return v != NULL && *v != '\0' ? v : fallback;
}

static int usage(const char *argv0)
{
    fprintf(stderr, "usage: %s FILE | --fetch KEY CLAIMED_SHA256 DECLARED_SIZE\n", argv0);
    return 2;
}

static const char *rc_name(fm_step_rc rc)
{
    switch (rc) {
    case FM_STEP_OK:
        return "OK";
    case FM_STEP_QUARANTINE:
        return "QUARANTINE";
    case FM_STEP_RETRY:
        return "RETRY";
    case FM_STEP_FAIL:
        return "FAIL";
    }
    return "?";
}

static long long parse_ll(const char *text, long long min, long long max, int *ok)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    *ok = errno == 0 && end != text && *end == '\0' && v >= min && v <= max;
    return v;
}

/* Prints `obj` as one line and frees it. */
static void print_line(cJSON *obj)
{
    char *text = cJSON_PrintUnformatted(obj);
    if (text == NULL)
        abort();
    printf("%s\n", text);
    free(text);
    cJSON_Delete(obj);
}

static cJSON *step_line(const char *step, fm_step_rc rc, const fm_job_t *job)
{
    cJSON *obj = cJSON_CreateObject();
    cJSON_AddStringToObject(obj, "step", step);
    cJSON_AddStringToObject(obj, "rc", rc_name(rc));
    cJSON_AddStringToObject(obj, "reason", job->reason);
    return obj;
}

static int scan(const char *path)
{
    int ok = 1;
    long long port = parse_ll(env_or("FM_CLAMD_PORT", ""), 0, 65535, &ok);
    if (!ok) {
        fprintf(stderr, "fm_scan: FM_CLAMD_PORT must be a port number\n");
        return 2;
    }
    int timeout_ok = 1, chunk_ok = 1;
    fm_worker_limits_t limits = {
        .clamd_host = env_or("FM_CLAMD_HOST", "127.0.0.1"),
        .clamd_port = (int)port,
        .clamd_timeout_ms = (int)parse_ll(env_or("FM_CLAMD_TIMEOUT_MS", "0"), 0, 3600000, &timeout_ok),
        .clamd_chunk_bytes = parse_ll(env_or("FM_CLAMD_CHUNK_BYTES", "0"), 0, 1LL << 30, &chunk_ok),
    };
    if (!timeout_ok || !chunk_ok) {
        fprintf(stderr, "fm_scan: FM_CLAMD_TIMEOUT_MS or FM_CLAMD_CHUNK_BYTES is not a number in range\n");
        return 2;
    }
    static fm_job_t job; /* ~6 KiB: off the stack */
    if (strlen(path) >= sizeof(job.path))
        return 2;
    strcpy(job.path, path);
    fm_step_rc rc = step_scan(&job, &limits);
    print_line(step_line("scan", rc, &job));
    /* Not fm_job_clear(): it would delete the caller's file. */
    return 0;
}

static int fetch(const char *key, const char *claimed, const char *declared)
{
    int ok = 1;
    static fm_job_t job;
    job.declared_size = parse_ll(declared, -1, 1LL << 50, &ok);
    if (!ok || strlen(key) >= sizeof(job.object_key) || strlen(claimed) >= sizeof(job.claimed_sha256))
        return 2;
    strcpy(job.object_key, key);
    strcpy(job.claimed_sha256, claimed);
    fm_s3_config_t cfg = {.endpoint = getenv("FM_S3_ENDPOINT"),
                          .region = env_or("FM_S3_REGION", "us-east-1"),
                          .bucket = getenv("FM_S3_BUCKET"),
                          .access_key = getenv("FM_S3_ACCESS_KEY"),
                          .secret_key = getenv("FM_S3_SECRET_KEY"),
                          .session_token = getenv("FM_S3_SESSION_TOKEN")};
    char err[256];
    fm_s3_t *s3 = fm_s3_new(&cfg, err, sizeof(err));
    if (s3 == NULL) {
        fprintf(stderr, "fm_scan: %s\n", err);
        return 1;
    }
    fm_worker_limits_t limits = {.tmp_dir = env_or("FM_TMP_DIR", "/tmp")};
    const char *step = "fetch";
    fm_step_rc rc = step_fetch(&job, s3, &limits);
    if (rc == FM_STEP_OK) {
        step = "verify";
        rc = step_verify(&job);
    }
    cJSON *obj = step_line(step, rc, &job);
    cJSON_AddStringToObject(obj, "sha256", job.sha256);
    cJSON_AddNumberToObject(obj, "size", (double)job.size);
    cJSON_AddStringToObject(obj, "path", job.path);
    struct stat st;
    char mode[8] = "";
    if (job.path[0] != '\0' && stat(job.path, &st) == 0)
        snprintf(mode, sizeof(mode), "%04o", (unsigned)(st.st_mode & 07777));
    cJSON_AddStringToObject(obj, "mode", mode);
    print_line(obj);
    fm_job_clear(&job);
    fm_s3_free(s3);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && argv[1][0] != '-')
        return scan(argv[1]) == 2 ? usage(argv[0]) : 0;
    if (argc == 5 && strcmp(argv[1], "--fetch") == 0) {
        if (getenv("FM_S3_ENDPOINT") == NULL || getenv("FM_S3_BUCKET") == NULL || getenv("FM_S3_ACCESS_KEY") == NULL ||
            getenv("FM_S3_SECRET_KEY") == NULL) {
            fprintf(stderr, "%s: FM_S3_ENDPOINT, FM_S3_BUCKET, FM_S3_ACCESS_KEY and FM_S3_SECRET_KEY must be set\n",
                    argv[0]);
            return 2;
        }
        int rc = fetch(argv[2], argv[3], argv[4]);
        return rc == 2 ? usage(argv[0]) : rc;
    }
    return usage(argv[0]);
}
