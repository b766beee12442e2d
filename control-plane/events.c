/*
 * POST /v1/events/s3: S3 event notifications (DESIGN.md §4 "S3 events → jobs"). Ceph RGW's push endpoint, an SNS
 * subscription or a Lambda forwarder posts {"Records":[…]}; each ObjectCreated record for one of our upload keys
 * (`incoming/{upload_id}`) is checked against the object itself and then:
 *   - a PENDING upload becomes UPLOADED and gets its one job, exactly as `complete` would; duplicates and a
 *     `complete` racing the event end in "already" (delivery is at least once);
 *   - an object of another size than announced fails the upload, and the object goes;
 *   - an object that landed after its upload was finished (processed, quarantined, aborted, expired, failed) is
 *     deleted: a presigned URL stays valid for a while, and such bytes are never verified, served or counted.
 * The event is a hint, never the truth (issue 10, finding 14): the object is HEADed first, an event for an object
 * that does not exist is ignored, and the size and ETag recorded are HEAD's, not the event's.
 *
 * Authenticated by FM_EVENTS_SECRET, in the query (`?secret=`, since RGW's push endpoint cannot add headers) or the
 * `X-FM-Events-Secret` header, compared in constant time. Answered 200 for anything parsed, even records we ignore,
 * so the store does not retry them; 4xx only for requests that are not events at all; 503 only when a record cannot
 * be settled now (PostgreSQL away, the object store not answering the HEAD, or an upload whose record is still only
 * in Redis while Redis is away): the bucket's topic is persistent (infra/lib/s3_prepare.py), so the store delivers
 * the message again until it is taken. An upload already in PostgreSQL is marked while Redis is away: its job's
 * stream entry follows from the reconciler (step 1) once Redis is back.
 */
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"
#include "log.h"
#include "qs.h"
#include "s3event.h"
#include "uuid.h"

#define MAX_RECORDS 100

typedef struct {
    fm_s3event_record_t *records;
    size_t count, next;
    int enqueued, duplicates, ignored, failed, deleted;
    /* the record being settled (s->next - 1) */
    char upload_id[37];
    int head_ok, head_missing, ensured, delete_ok;
    fm_s3_result_t head;
    char etag[sizeof(((fm_s3_result_t *)0)->etag)], job_id[40], file_id[40];
} events_state_t;

static void events_state_free(void *p)
{
    events_state_t *s = p;
    free(s->records);
}

static void next_record(fm_req_t *r);
static void mark_record(fm_req_t *r, void *arg);

static const fm_s3event_record_t *current(events_state_t *s)
{
    return &s->records[s->next - 1];
}

/* ---- deleting an object nobody may keep ---------------------------------------------------------------------- */

static void delete_object_work(void *data)
{
    fm_req_t *r = data;
    events_state_t *s = r->state;
    fm_s3_t *s3 = fm_offload_s3();
    fm_s3_result_t res;
    s->delete_ok = s3 != NULL && (fm_s3_delete_object(s3, current(s)->key, &res) == 0 || res.status == 404);
}

static void on_object_deleted(void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    events_state_t *s = r->state;
    if (!s->delete_ok) /* the reconciler's listing of incoming/ deletes it later */
        fm_log(FM_LOG_WARN, r->request_id, "events: could not delete %s (the reconciler will)", current(s)->key);
    next_record(r);
}

/* ---- the upload's new state ---------------------------------------------------------------------------------- */

static void ignore_reply(redisReply *reply, const char *errstr, void *data) {}

static void on_job_enqueued(fm_req_t *r, void *arg)
{
    next_record(r);
}

static void on_observed(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_pg_failed(r, res, errstr)) /* 503: the store delivers the message again */
        return;
    events_state_t *s = r->state;
    const char *outcome = PQgetvalue(res, 0, 0);
    snprintf(s->job_id, sizeof(s->job_id), "%s", PQgetvalue(res, 0, 1));
    snprintf(s->file_id, sizeof(s->file_id), "%s", PQgetvalue(res, 0, 2));
    if (strcmp(outcome, "unknown") == 0 && !s->ensured && fm_control->config.record_flush_ms != 0) {
        /* Perhaps a record still only in Redis (records.c): bring it into PostgreSQL and look again. With Redis
         * away that answers 503 -- the one case where an event for a live upload cannot be taken now. */
        s->ensured = 1;
        fm_records_ensure(r, s->upload_id, mark_record, NULL);
        return;
    }
    if (s->file_id[0] != '\0') /* the cached file row (files.c) is stale now; lost with Redis away, as it is */
        fm_redis_command(fm_control_thread(r)->redis, ignore_reply, NULL, "DEL fm:file:{%s}", s->file_id);
    if (PQgetlength(res, 0, 3) == 36 && strcmp(outcome, "already") != 0) /* a status the listings show */
        fm_tree_changed(fm_control_thread(r), PQgetvalue(res, 0, 3));
    if (strcmp(outcome, "uploaded") == 0) {
        s->enqueued++;
        fm_job_ref_t job = {
            .job_id = s->job_id, .type = "process_upload", .file_id = s->file_id, .upload_id = s->upload_id};
        fm_jobs_enqueue(r, &job, on_job_enqueued, NULL); /* an XADD that fails is the reconciler's (step 1) */
        return;
    }
    if (strcmp(outcome, "already") == 0) {
        s->duplicates++;
    } else if (strcmp(outcome, "size_mismatch") == 0 || strcmp(outcome, "finished") == 0) {
        /* size_mismatch: the upload and its file are FAILED now; finished: bytes that came after the fact */
        if (outcome[0] == 's')
            s->failed++;
        else
            s->deleted++;
        fm_log(FM_LOG_INFO, r->request_id, "events: deleting %s (%lld bytes): %s", current(s)->key,
               s->head.content_length,
               outcome[0] == 's' ? "not the size announced, upload failed" : "its upload was finished before it came");
        fm_offload_call(r, delete_object_work, on_object_deleted, "the object store");
        return;
    } else {
        s->ignored++; /* no such upload */
    }
    next_record(r);
}

static void mark_record(fm_req_t *r, void *arg)
{
    events_state_t *s = r->state;
    char size[24];
    snprintf(size, sizeof(size), "%lld", s->head.content_length);
    const char *params[] = {s->upload_id, size, s->etag, fm_control->config.s3_bucket};
    fm_pg_call(r, on_observed,
               "SELECT o.outcome, coalesce(o.job_id::text, ''), coalesce(o.file_id::text, ''),"
               " coalesce(f.owner_id::text, '') "
               "FROM fm_upload_observed($1::uuid, $2::bigint, $3, 'event', $4) o LEFT JOIN files f ON f.id = o.file_id",
               4, params);
}

/* ---- the object itself --------------------------------------------------------------------------------------- */

static void head_work(void *data)
{
    fm_req_t *r = data;
    events_state_t *s = r->state;
    fm_s3_t *s3 = fm_offload_s3();
    memset(&s->head, 0, sizeof(s->head));
    s->head_ok = s3 != NULL && fm_s3_head_object(s3, current(s)->key, &s->head) == 0;
    s->head_missing = !s->head_ok && s3 != NULL && s->head.status == 404;
}

static void on_head(void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    events_state_t *s = r->state;
    if (s->head_missing) { /* nothing there (any more): a forged or stale event changes nothing */
        s->ignored++;
        next_record(r);
        return;
    }
    if (!s->head_ok) {
        fm_log(FM_LOG_WARN, r->request_id, "events: HEAD %s: %ld %s", current(s)->key, s->head.status,
               s->head.code[0] != '\0' ? s->head.code : "no S3 client");
        fm_reply_unavailable(r, "the object store");
        return;
    }
    size_t len = strlen(s->head.etag);
    if (len >= 2 && s->head.etag[0] == '"' && s->head.etag[len - 1] == '"')
        snprintf(s->etag, sizeof(s->etag), "%.*s", (int)(len - 2), s->head.etag + 1);
    else
        snprintf(s->etag, sizeof(s->etag), "%s", s->head.etag);
    s->ensured = 0;
    mark_record(r, NULL);
}

/* Our keys are `incoming/` + a lowercase UUID; anything else in the bucket is not an upload of ours. */
static int upload_id_of(const char *key, char out[37])
{
    const char *id = fm_incoming_key_id(key, strlen(key));
    if (id == NULL)
        return 0;
    memcpy(out, id, 36);
    out[36] = '\0';
    return 1;
}

static void next_record(fm_req_t *r)
{
    events_state_t *s = r->state;
    while (s->next < s->count) {
        const fm_s3event_record_t *record = &s->records[s->next++];
        if (record->kind != FM_S3EVENT_CREATED || strcmp(record->bucket, fm_control->config.s3_bucket) != 0 ||
            !upload_id_of(record->key, s->upload_id)) {
            s->ignored++;
            continue;
        }
        /* Without PostgreSQL nothing can be recorded: say so before asking the object store anything (the store
         * retries a refused delivery at once, again and again: notes/local-s3-store.md). */
        if (fm_pg_connected(fm_control_thread(r)->pg) == 0) {
            fm_reply_unavailable(r, "the database");
            return;
        }
        fm_offload_call(r, head_work, on_head, "the object store");
        return;
    }
    cJSON *body = cJSON_CreateObject();
    cJSON_AddNumberToObject(body, "records", (double)s->count);
    cJSON_AddNumberToObject(body, "enqueued", s->enqueued);
    cJSON_AddNumberToObject(body, "duplicates", s->duplicates);
    cJSON_AddNumberToObject(body, "failed", s->failed);
    cJSON_AddNumberToObject(body, "deleted", s->deleted);
    cJSON_AddNumberToObject(body, "ignored", s->ignored);
    fm_reply_json(r, 200, body);
}

/* The `secret` query parameter, or the header. */
static h2o_iovec_t presented_secret(fm_req_t *r)
{
    h2o_iovec_t header = fm_req_header(r, "x-fm-events-secret");
    if (header.base != NULL)
        return header;
    /* An empty ?secret= is passed over, as if absent: a later non-empty one counts. */
    return fm_qs_raw(fm_req_query(r), "secret", FM_QS_SKIP_EMPTY, NULL);
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
    int parsed = body.base == NULL
                     ? -1
                     : fm_s3event_parse(body.base, body.len, s->records, MAX_RECORDS, &s->count, err, sizeof(err));
    if (parsed < 0) {
        fm_reply_error(r, 400, "invalid_event", "not an S3 event notification: %s", body.base ? err : "empty body");
        return;
    }
    if (parsed == 1) /* s3:TestEvent, sent when a notification is configured */
        fm_log(FM_LOG_INFO, r->request_id, "events: s3:TestEvent received");
    next_record(r);
}
