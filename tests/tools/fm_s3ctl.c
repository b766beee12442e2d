/*
 * fm_s3ctl: drives the multipart calls of common/s3.c against a real store, so integration tests check the client
 * the control plane uses (tests/integration/test_s3_client.py). One JSON line per call on stdout.
 *
 *   fm_s3ctl create KEY [CONTENT-TYPE]        {"ok":true,"status":200,"upload_id":"…"}
 *   fm_s3ctl presign-part KEY UPLOADID N      {"ok":true,"url":"…"}  (UploadPart URL, 300 s)
 *   fm_s3ctl list KEY UPLOADID                {"ok":true,"status":200,"parts":[{"part_number","etag","size"}…]}
 *   fm_s3ctl complete KEY UPLOADID N:ETAG...  {"ok":true,"status":200,"etag":"…"}
 *   fm_s3ctl abort KEY UPLOADID               {"ok":true,"status":204}
 *   fm_s3ctl head KEY                         {"ok":true,"status":200,"etag":"…","size":N,"content_type":"…"}
 *   fm_s3ctl get KEY                          the object's bytes on stdout (streamed); the JSON line, with
 *                                             "etag", "size" and "bytes" (how many were written), on stderr
 *   fm_s3ctl copy SRC-KEY DST-KEY [TYPE|- [PART-BYTES]]
 *                                             {"ok":true,"status":200,"etag":"…","size":N} (TYPE replaces the
 *                                             Content-Type; PART-BYTES the largest single copy, parts above)
 *
 * A failed call prints {"ok":false,"status","code","message"} and exits 1; a usage error exits 2. Settings from
 * FM_S3_ENDPOINT, FM_S3_BUCKET, FM_S3_ACCESS_KEY, FM_S3_SECRET_KEY, FM_S3_SESSION_TOKEN (optional) and
 * FM_S3_REGION (default us-east-1); path-style addressing.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "s3.h"
#include "sigv4.h"

static const char *env_or(const char *name, const char *fallback)
{
    const char *v = getenv(name);
    return v != NULL && *v != '\0' ? v : fallback;
}

static int usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s create KEY [CONTENT-TYPE] | presign-part KEY UPLOADID N | list KEY UPLOADID |\n"
            "       complete KEY UPLOADID N:ETAG... | abort KEY UPLOADID | head KEY | get KEY |\n"
            "       copy SRC-KEY DST-KEY [CONTENT-TYPE|- [PART-BYTES]]\n",
            argv0);
    return 2;
}

/* Where the JSON lines go: stdout, but stderr for `get`, whose stdout is the object. */
static FILE *json_out;

/* Prints `obj` as one line and frees it. */
static void print_line(cJSON *obj)
{
    char *text = cJSON_PrintUnformatted(obj);
    if (text == NULL)
        abort();
    fprintf(json_out, "%s\n", text);
    free(text);
    cJSON_Delete(obj);
}

/* The outcome of one call: {"ok":true,"status"} to add fields to, or the failure printed (returns NULL). */
static cJSON *outcome(int rc, const fm_s3_result_t *res)
{
    cJSON *obj = cJSON_CreateObject();
    cJSON_AddBoolToObject(obj, "ok", rc == 0);
    cJSON_AddNumberToObject(obj, "status", (double)res->status);
    if (rc == 0)
        return obj;
    cJSON_AddStringToObject(obj, "code", res->code);
    cJSON_AddStringToObject(obj, "message", res->message);
    cJSON_AddStringToObject(obj, "request_id", res->request_id);
    print_line(obj);
    return NULL;
}

static int parse_int(const char *text, long min, long max, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static int presign_part(const char *key, const char *upload_id, const char *number)
{
    long part_number;
    if (parse_int(number, 1, FM_S3_MAX_PARTS, &part_number) != 0)
        return 2;
    fm_sigv4_t *signer = fm_sigv4_new(getenv("FM_S3_ACCESS_KEY"), getenv("FM_S3_SECRET_KEY"),
                                      getenv("FM_S3_SESSION_TOKEN"), env_or("FM_S3_REGION", "us-east-1"), "s3");
    if (signer == NULL) {
        fprintf(stderr, "fm_s3ctl: %s\n", fm_sigv4_last_error());
        return 1;
    }
    fm_sigv4_param_t params[2] = {{"partNumber", number}, {"uploadId", upload_id}};
    fm_sigv4_request_t req = {.method = "PUT",
                              .endpoint = getenv("FM_S3_ENDPOINT"),
                              .bucket = getenv("FM_S3_BUCKET"),
                              .key = key,
                              .params = params,
                              .param_count = 2};
    char *url = NULL;
    int rc = fm_sigv4_presign(signer, &req, 300, time(NULL), &url);
    cJSON *obj = cJSON_CreateObject();
    cJSON_AddBoolToObject(obj, "ok", rc == 0);
    if (rc == 0)
        cJSON_AddStringToObject(obj, "url", url);
    else
        cJSON_AddStringToObject(obj, "message", fm_sigv4_last_error());
    print_line(obj);
    free(url);
    fm_sigv4_free(signer);
    return rc == 0 ? 0 : 1;
}

static int list(fm_s3_t *s3, const char *key, const char *upload_id)
{
    fm_s3_part_t *parts = calloc(FM_S3_MAX_PARTS, sizeof(*parts));
    if (parts == NULL)
        abort();
    size_t count = 0;
    fm_s3_result_t res;
    int rc = fm_s3_list_parts(s3, key, upload_id, parts, FM_S3_MAX_PARTS, &count, &res);
    cJSON *obj = outcome(rc, &res);
    if (obj != NULL) {
        cJSON *array = cJSON_AddArrayToObject(obj, "parts");
        for (size_t i = 0; i < count; i++) {
            cJSON *part = cJSON_CreateObject();
            cJSON_AddNumberToObject(part, "part_number", parts[i].part_number);
            cJSON_AddStringToObject(part, "etag", parts[i].etag);
            cJSON_AddNumberToObject(part, "size", (double)parts[i].size);
            cJSON_AddItemToArray(array, part);
        }
        print_line(obj);
    }
    free(parts);
    return rc == 0 ? 0 : 1;
}

static int complete(fm_s3_t *s3, const char *key, const char *upload_id, char **specs, int spec_count)
{
    if (spec_count < 1 || spec_count > FM_S3_MAX_PARTS)
        return 2;
    fm_s3_part_t *parts = calloc((size_t)spec_count, sizeof(*parts));
    if (parts == NULL)
        abort();
    for (int i = 0; i < spec_count; i++) {
        /* N:ETAG, split at the first ':' (an ETag may hold one; a part number cannot). */
        char *colon = strchr(specs[i], ':');
        long number;
        if (colon == NULL || strlen(colon + 1) >= sizeof(parts[i].etag)) {
            free(parts);
            return 2;
        }
        *colon = '\0';
        /* Out-of-range numbers are passed on: refusing them is the library's job, and the test checks it. */
        if (parse_int(specs[i], -1000000, 1000000, &number) != 0) {
            free(parts);
            return 2;
        }
        parts[i].part_number = (int)number;
        strcpy(parts[i].etag, colon + 1);
    }
    fm_s3_result_t res;
    int rc = fm_s3_complete_multipart(s3, key, upload_id, parts, (size_t)spec_count, &res);
    free(parts);
    cJSON *obj = outcome(rc, &res);
    if (obj != NULL) {
        cJSON_AddStringToObject(obj, "etag", res.etag);
        print_line(obj);
    }
    return rc == 0 ? 0 : 1;
}

typedef struct {
    FILE *out;
    long long bytes;
} sink_t;

static int write_out(void *ud, const void *data, size_t len)
{
    sink_t *sink = ud;
    if (fwrite(data, 1, len, sink->out) != len)
        return -1;
    sink->bytes += (long long)len;
    return 0;
}

static int get(fm_s3_t *s3, const char *key)
{
    sink_t sink = {.out = stdout};
    fm_s3_result_t res;
    int rc = fm_s3_get_object(s3, key, write_out, &sink, &res) == 0 ? 0 : 1;
    if (fflush(stdout) != 0 && rc == 0) {
        rc = 1;
        snprintf(res.code, sizeof(res.code), "WriteFailed");
        snprintf(res.message, sizeof(res.message), "stdout: %s", strerror(errno));
    }
    cJSON *obj = outcome(rc, &res);
    if (obj != NULL) {
        cJSON_AddStringToObject(obj, "etag", res.etag);
        cJSON_AddNumberToObject(obj, "size", (double)res.content_length);
        cJSON_AddNumberToObject(obj, "bytes", (double)sink.bytes);
        print_line(obj);
    }
    return rc;
}

int main(int argc, char **argv)
{
    json_out = stdout;
    if (argc < 3)
        return usage(argv[0]);
    const char *cmd = argv[1], *key = argv[2];
    if (getenv("FM_S3_ENDPOINT") == NULL || getenv("FM_S3_BUCKET") == NULL || getenv("FM_S3_ACCESS_KEY") == NULL ||
        getenv("FM_S3_SECRET_KEY") == NULL) {
        fprintf(stderr, "%s: FM_S3_ENDPOINT, FM_S3_BUCKET, FM_S3_ACCESS_KEY and FM_S3_SECRET_KEY must be set\n",
                argv[0]);
        return 2;
    }
    if (strcmp(cmd, "presign-part") == 0) {
        int rc = argc == 5 ? presign_part(key, argv[3], argv[4]) : 2;
        return rc == 2 ? usage(argv[0]) : rc;
    }
    fm_s3_config_t cfg = {.endpoint = getenv("FM_S3_ENDPOINT"),
                          .region = env_or("FM_S3_REGION", "us-east-1"),
                          .bucket = getenv("FM_S3_BUCKET"),
                          .access_key = getenv("FM_S3_ACCESS_KEY"),
                          .secret_key = getenv("FM_S3_SECRET_KEY"),
                          .session_token = getenv("FM_S3_SESSION_TOKEN")};
    char err[256];
    fm_s3_t *s3 = fm_s3_new(&cfg, err, sizeof(err));
    if (s3 == NULL) {
        fprintf(stderr, "%s: %s\n", argv[0], err);
        return 1;
    }
    fm_s3_result_t res;
    cJSON *obj;
    int rc = 2;
    if (strcmp(cmd, "get") == 0)
        json_out = stderr;
    if (strcmp(cmd, "create") == 0 && (argc == 3 || argc == 4)) {
        rc = fm_s3_create_multipart(s3, key, argc == 4 ? argv[3] : NULL, &res) == 0 ? 0 : 1;
        if ((obj = outcome(rc, &res)) != NULL) {
            cJSON_AddStringToObject(obj, "upload_id", res.upload_id);
            print_line(obj);
        }
    } else if (strcmp(cmd, "list") == 0 && argc == 4) {
        rc = list(s3, key, argv[3]);
    } else if (strcmp(cmd, "complete") == 0 && argc >= 5) {
        rc = complete(s3, key, argv[3], argv + 4, argc - 4);
    } else if (strcmp(cmd, "abort") == 0 && argc == 4) {
        rc = fm_s3_abort_multipart(s3, key, argv[3], &res) == 0 ? 0 : 1;
        if ((obj = outcome(rc, &res)) != NULL)
            print_line(obj);
    } else if (strcmp(cmd, "head") == 0 && argc == 3) {
        rc = fm_s3_head_object(s3, key, &res) == 0 ? 0 : 1;
        if ((obj = outcome(rc, &res)) != NULL) {
            cJSON_AddStringToObject(obj, "etag", res.etag);
            cJSON_AddNumberToObject(obj, "size", (double)res.content_length);
            cJSON_AddStringToObject(obj, "content_type", res.content_type);
            print_line(obj);
        }
    } else if (strcmp(cmd, "get") == 0 && argc == 3) {
        rc = get(s3, key);
    } else if (strcmp(cmd, "copy") == 0 && argc >= 4 && argc <= 6) {
        fm_s3_copy_opts_t opts = {.content_type = argc >= 5 && strcmp(argv[4], "-") != 0 ? argv[4] : NULL,
                                  .part_bytes = argc == 6 ? atoll(argv[5]) : 0};
        rc = (argc == 4 ? fm_s3_copy_object(s3, key, argv[3], &res) : fm_s3_copy(s3, key, argv[3], &opts, &res)) == 0
                 ? 0
                 : 1;
        if ((obj = outcome(rc, &res)) != NULL) {
            cJSON_AddStringToObject(obj, "etag", res.etag);
            cJSON_AddNumberToObject(obj, "size", (double)res.content_length);
            print_line(obj);
        }
    }
    fm_s3_free(s3);
    return rc == 2 ? usage(argv[0]) : rc;
}
