/*
 * POST /v1/events/s3: S3 event notifications (DESIGN.md §4 "S3 events → jobs"). Ceph RGW's push endpoint, an SNS
 * subscription or a Lambda forwarder posts {"Records":[…]}; each ObjectCreated record for one of our upload keys
 * (`incoming/{upload_id}`) marks that upload UPLOADED and makes its one job, exactly as `complete` would
 * (fm_upload_mark). Delivery is at least once: duplicates and a `complete` racing the event end in "already".
 *
 * Authenticated by FM_EVENTS_SECRET, in the query (`?secret=`, since RGW's push endpoint cannot add headers) or the
 * `X-FM-Events-Secret` header, compared in constant time. Answered 200 for anything parsed, even records we ignore,
 * so the store does not retry them forever; 4xx only for requests that are not events at all.
 */
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"
#include "log.h"
#include "s3event.h"

#define MAX_RECORDS 100

typedef struct {
    fm_s3event_record_t *records;
    size_t count, next;
    int enqueued, duplicates, ignored, failed;
} events_state_t;

static void events_state_free(void *p)
{
    events_state_t *s = p;
    free(s->records);
}

static void next_record(fm_req_t *r);

/* An object of another size than announced: the upload and file are FAILED, and the object goes. */
static void delete_object_work(void *data)
{
    fm_req_t *r = data;
    events_state_t *s = r->state;
    const fm_s3event_record_t *record = &s->records[s->next - 1];
    fm_s3_t *s3 = fm_offload_s3();
    fm_s3_result_t res;
    if (s3 == NULL || (fm_s3_delete_object(s3, record->key, &res) != 0 && res.status != 404))
        fm_warn("events: could not delete %s (the reconciler sweeps it)", record->key);
}

static void on_object_deleted(void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    next_record(r);
}

static void on_record_marked(fm_req_t *r, const char *outcome, const char *job_id, const char *file_id)
{
    events_state_t *s = r->state;
    if (strcmp(outcome, "uploaded") == 0) {
        s->enqueued++;
    } else if (strcmp(outcome, "already") == 0) {
        s->duplicates++;
    } else if (strcmp(outcome, "size_mismatch") == 0) {
        s->failed++;
        fm_offload_call(r, delete_object_work, on_object_deleted, "the object store");
        return;
    } else {
        s->ignored++;
    }
    next_record(r);
}

/* Our keys are `incoming/` + a lowercase UUID; anything else in the bucket is not an upload of ours. */
static int upload_id_of(const char *key, char out[37])
{
    static const char prefix[] = "incoming/";
    if (strncmp(key, prefix, sizeof(prefix) - 1) != 0 || strlen(key) != sizeof(prefix) - 1 + 36)
        return 0;
    const char *id = key + sizeof(prefix) - 1;
    if (!fm_uuid_valid(id, 36))
        return 0;
    for (int i = 0; i < 36; ++i) /* keys are case-sensitive and ours are lowercase: "incoming/ABC…" is another object */
        if (id[i] >= 'A' && id[i] <= 'F')
            return 0;
    memcpy(out, id, 36);
    out[36] = '\0';
    return 1;
}

/* The record s->next - 1 names one of our uploads (checked by next_record). */
static void mark_record(fm_req_t *r, void *arg)
{
    events_state_t *s = r->state;
    const fm_s3event_record_t *record = &s->records[s->next - 1];
    char upload_id[37];
    upload_id_of(record->key, upload_id);
    fm_upload_mark(r, upload_id, record->size, record->etag, "event", on_record_marked);
}

static void next_record(fm_req_t *r)
{
    events_state_t *s = r->state;
    while (s->next < s->count) {
        const fm_s3event_record_t *record = &s->records[s->next++];
        char upload_id[37];
        if (record->kind != FM_S3EVENT_CREATED || strcmp(record->bucket, fm_control->config.s3_bucket) != 0 ||
            !upload_id_of(record->key, upload_id)) {
            s->ignored++;
            continue;
        }
        /* The upload may still be a record in Redis (records.c): bring it into PostgreSQL first. */
        fm_records_ensure(r, upload_id, mark_record, NULL);
        return;
    }
    cJSON *body = cJSON_CreateObject();
    cJSON_AddNumberToObject(body, "records", (double)s->count);
    cJSON_AddNumberToObject(body, "enqueued", s->enqueued);
    cJSON_AddNumberToObject(body, "duplicates", s->duplicates);
    cJSON_AddNumberToObject(body, "failed", s->failed);
    cJSON_AddNumberToObject(body, "ignored", s->ignored);
    fm_reply_json(r, 200, body);
}

/* The `secret` query parameter, or the header. */
static h2o_iovec_t presented_secret(fm_req_t *r)
{
    h2o_iovec_t header = fm_req_header(r, "x-fm-events-secret");
    if (header.base != NULL)
        return header;
    h2o_req_t *req = r->req;
    if (req->query_at == SIZE_MAX)
        return h2o_iovec_init(NULL, 0);
    const char *p = req->path.base + req->query_at + 1, *end = req->path.base + req->path.len;
    while (p < end) {
        const char *amp = memchr(p, '&', end - p);
        const char *item_end = amp ? amp : end;
        if (item_end - p > 7 && memcmp(p, "secret=", 7) == 0)
            return h2o_iovec_init(p + 7, item_end - p - 7);
        p = item_end + 1;
    }
    return h2o_iovec_init(NULL, 0);
}

void handle_events_s3(fm_req_t *r)
{
    const char *secret = fm_control->config.events_secret;
    if (secret[0] == '\0') {
        fm_reply_error(r, 403, "events_disabled", "S3 events are not configured here (FM_EVENTS_SECRET)");
        return;
    }
    h2o_iovec_t given = presented_secret(r);
    size_t len = strlen(secret);
    if (given.base == NULL || given.len != len || CRYPTO_memcmp(given.base, secret, len) != 0) {
        fm_reply_error(r, 401, "invalid_secret", "the events secret is missing or wrong");
        return;
    }
    events_state_t *s = fm_req_state(r, sizeof(events_state_t));
    r->state_free = events_state_free;
    if ((s->records = calloc(MAX_RECORDS, sizeof(fm_s3event_record_t))) == NULL)
        h2o_fatal("out of memory");
    h2o_iovec_t body = r->req->entity;
    char err[160];
    int parsed = body.base == NULL ? -1
                                   : fm_s3event_parse(body.base, body.len, s->records, MAX_RECORDS, &s->count, err,
                                                      sizeof(err));
    if (parsed < 0) {
        fm_reply_error(r, 400, "invalid_event", "not an S3 event notification: %s", body.base ? err : "empty body");
        return;
    }
    if (parsed == 1) /* s3:TestEvent, sent when a notification is configured */
        fm_log(FM_LOG_INFO, r->request_id, "events: s3:TestEvent received");
    next_record(r);
}
