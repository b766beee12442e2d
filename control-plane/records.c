/*
 * Write-behind of new file records (docs/decisions.md "Uploads: records written behind"). POST /v1/uploads for a
 * single PUT, and a dedupe hit, write their new `files` (+ `uploads`) rows to Redis in one atomic script and answer;
 * a flusher on thread 0 of each instance moves them into PostgreSQL in batches, within FM_RECORD_FLUSH_MS. Anything
 * that needs the row before the flusher came (complete, parts, events, GET /v1/files) inserts that one record first
 * (fm_records_ensure): the PostgreSQL insert is idempotent, so the flusher and a reader may both do it.
 *
 * Redis layout (AOF on, DESIGN.md §5):
 *   fm:rec:{id}       hash: the record (id = upload id, or the file id of a dedupe), expires after the URL TTL + 1 day
 *   fm:recf:{file}    the record id of a file, for GET /v1/files/{id}
 *   fm:rec:pending    sorted set of record ids by creation time (ms): the flusher's work list
 *   fm:lock:records   one flusher at a time across instances
 *
 * With FM_RECORD_FLUSH_MS=0 nothing is written behind: the rows go to PostgreSQL before the answer (uploads.c).
 */
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "b64.h"
#include "control.h"
#include "log.h"
#include "metrics.h"

#define FLUSH_BATCH 200 /* rows per statement: short enough to stay far below FM_PG_TIMEOUT_MS under load */
#define PENDING_KEY "fm:rec:pending"

/* KEYS: record hash, file → record key, pending set. ARGV: ttl s, score ms, record id, field/value pairs… */
static const char put_script[] = "redis.call('HSET', KEYS[1], unpack(ARGV, 4))\n"
                                 "redis.call('EXPIRE', KEYS[1], ARGV[1])\n"
                                 "redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[1])\n"
                                 "redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])\n"
                                 "return 1\n";
static char put_script_sha[41];

/* POST /v1/uploads in one round trip: the owner's dedupe index is asked and the record written in the same script.
 * KEYS: dedupe index, upload record, dedupe record, file → record key, pending set. ARGV: ttl s, score ms, upload
 * id, file id, sha256, size, n, then n field/value items common to both kinds, then the upload's own. A hash in the
 * index with this size stores a dedupe record ('dedupe'); with another size nothing ('other': PostgreSQL decides);
 * an index not built yet nothing ('unbuilt'); otherwise the upload record ('upload'). */
static const char probe_script[] = "local h = redis.call('HMGET', KEYS[1], ARGV[5], '_built')\n"
                                   "local rec, id, kind, last\n"
                                   "if h[1] then\n"
                                   "  if h[1] ~= ARGV[6] then return 'other' end\n"
                                   "  rec, id, kind, last = KEYS[3], ARGV[4], 'dedupe', 7 + tonumber(ARGV[7])\n"
                                   "elseif not h[2] then return 'unbuilt'\n"
                                   "else rec, id, kind, last = KEYS[2], ARGV[3], 'upload', #ARGV end\n"
                                   "redis.call('HSET', rec, 'kind', kind, unpack(ARGV, 8, last))\n"
                                   "redis.call('EXPIRE', rec, ARGV[1])\n"
                                   "redis.call('SET', KEYS[4], id, 'EX', ARGV[1])\n"
                                   "redis.call('ZADD', KEYS[5], ARGV[2], id)\n"
                                   "return kind\n";
static char probe_script_sha[41];

/* One statement inserts a batch, given as a JSON array of records. A record whose owner is gone is dropped; a dedupe
 * whose blob the owner no longer holds becomes a FAILED file (the Redis index was stale) rather than a lost one. */
static const char insert_sql[] =
    "WITH r AS ("
    "  SELECT t.* FROM json_to_recordset($1::json) AS t(kind text, upload_id uuid, file_id uuid, owner uuid,"
    "    name text, size bigint, type text, sha256 text, key text, expires bigint, created bigint)"
    "  WHERE EXISTS (SELECT 1 FROM users u WHERE u.id = t.owner)), "
    /* which (owner, blob) pairs of the batch's dedupes still hold: once per pair, not once per row */
    "held AS ("
    "  SELECT DISTINCT r.owner, b.sha256, b.size FROM r JOIN blobs b ON b.sha256 = decode(r.sha256, 'hex') AND b.size = r.size"
    "  WHERE r.kind = 'dedupe' AND EXISTS (SELECT 1 FROM files o WHERE o.owner_id = r.owner"
    "    AND o.blob_sha256 = b.sha256 AND o.status = 'READY' AND o.deleted_at IS NULL)), "
    "f AS ("
    "  INSERT INTO files (id, owner_id, name, size, content_type, claimed_sha256, blob_sha256, status,"
    "                     status_reason, created_at, updated_at)"
    "  SELECT r.file_id, r.owner, r.name, r.size, r.type, decode(r.sha256, 'hex'), b.sha256,"
    "    (CASE WHEN r.kind = 'upload' THEN 'PENDING_UPLOAD' WHEN b.sha256 IS NOT NULL THEN 'READY'"
    "          ELSE 'FAILED' END)::file_status,"
    "    CASE WHEN r.kind = 'dedupe' AND b.sha256 IS NULL THEN 'the deduplicated content is no longer stored' END,"
    "    to_timestamp(r.created / 1000.0), to_timestamp(r.created / 1000.0)"
    "  FROM r LEFT JOIN held b ON r.kind = 'dedupe' AND b.owner = r.owner AND b.sha256 = decode(r.sha256, 'hex')"
    "    AND b.size = r.size"
    "  ON CONFLICT (id) DO NOTHING RETURNING id), "
    "u AS ("
    "  INSERT INTO uploads (id, file_id, owner_id, object_key, size, content_type, claimed_sha256, method,"
    "                       expires_at, created_at)"
    "  SELECT r.upload_id, r.file_id, r.owner, r.key, r.size, r.type, decode(r.sha256, 'hex'), 'PUT',"
    "    to_timestamp(r.expires), to_timestamp(r.created / 1000.0)"
    "  FROM r WHERE r.kind = 'upload' ON CONFLICT (id) DO NOTHING RETURNING id) "
    "SELECT (SELECT count(*) FROM f), (SELECT count(*) FROM u)";

static void ignore_reply(redisReply *reply, const char *errstr, void *data)
{
}

static void script_sha(const char *script, char sha[41])
{
    unsigned char digest[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)script, strlen(script), digest);
    fm_hex_encode(digest, SHA_DIGEST_LENGTH, sha, 41);
}

int fm_records_init(void)
{
    script_sha(put_script, put_script_sha);
    script_sha(probe_script, probe_script_sha);
    fm_metrics_describe("fm_records_flushed_total", FM_METRIC_COUNTER, "File records moved from Redis into PostgreSQL");
    fm_metrics_describe("fm_records_flush_errors_total", FM_METRIC_COUNTER, "Batches of records PostgreSQL did not take");
    return 0;
}

/* ---- writing a record (the request path) ---------------------------------------------------------------------- */

typedef struct {
    fm_req_t *r;
    fm_records_done_fn done;
    fm_records_probe_fn probe_done; /* fm_records_put_or_dedupe */
    const char *script;
    const char *argv[48];
    int argc;
    char id[40], rec_key[64], dedupe_rec_key[64], file_key[64], index_key[80], ttl[24], score[24], size[24], expires[24],
        created[24], common[8];
    int retried;
} put_t;

static void on_put(redisReply *reply, const char *errstr, void *data)
{
    put_t *p = data;
    fm_req_t *r = p->r;
    if (fm_req_resume(r) != 0) {
        free(p);
        return;
    }
    if (!p->retried && reply != NULL && reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "NOSCRIPT", 8) == 0) {
        /* First use on this Redis (or after a restart): send the script itself, which also caches it. */
        p->retried = 1;
        p->argv[0] = "EVAL";
        p->argv[1] = p->script;
        fm_req_hold(r);
        if (fm_redis_commandargv(fm_control_thread(r)->redis, on_put, p, p->argc, p->argv, NULL) != 0) {
            fm_req_resume(r);
            free(p);
            fm_reply_unavailable(r, "the session store");
        }
        return;
    }
    fm_records_done_fn done = p->done;
    fm_records_probe_fn probe_done = p->probe_done;
    free(p);
    if (fm_redis_failed(r, reply, errstr))
        return;
    if (probe_done == NULL) {
        done(r);
        return;
    }
    static const char *const outcomes[] = {"upload", "dedupe", "other", "unbuilt"};
    for (size_t i = 0; i < sizeof(outcomes) / sizeof(outcomes[0]); ++i)
        if (reply->type == REDIS_REPLY_STRING && strcmp(reply->str, outcomes[i]) == 0) {
            probe_done(r, (fm_record_outcome_t)i);
            return;
        }
    fm_log(FM_LOG_ERROR, r->request_id, "redis: the record script answered %.64s", reply->type == REDIS_REPLY_ERROR ? reply->str : "?");
    fm_reply_error(r, 500, "internal_error", "the request could not be completed");
}

static void put_send(put_t *p)
{
    fm_req_t *r = p->r;
    fm_req_hold(r);
    if (fm_redis_commandargv(fm_control_thread(r)->redis, on_put, p, p->argc, p->argv, NULL) != 0) {
        fm_req_resume(r);
        free(p);
        fm_reply_unavailable(r, "the session store");
    }
}

/* The head of the script's arguments is the caller's; then the fields, those of every record first (`common` tells
 * how many items they are), the upload's own after them unless `rec` is a dedupe. */
static void put_fields(put_t *p, const fm_record_t *rec, int dedupe, int with_kind)
{
    long long now_ms = (long long)time(NULL) * 1000; /* whole seconds: the rows' timestamps need no better */
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) == 0)
        now_ms = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    snprintf(p->score, sizeof(p->score), "%lld", now_ms);
    snprintf(p->size, sizeof(p->size), "%lld", rec->size);
    snprintf(p->expires, sizeof(p->expires), "%lld", rec->expires_at);
    snprintf(p->created, sizeof(p->created), "%lld", now_ms);
    int first = p->argc;
#define FIELD(k, v)                                                                                                   \
    do {                                                                                                              \
        p->argv[p->argc++] = (k);                                                                                     \
        p->argv[p->argc++] = (v);                                                                                     \
    } while (0)
    if (with_kind)
        FIELD("kind", dedupe ? "dedupe" : "upload");
    FIELD("file_id", rec->file_id);
    FIELD("owner", rec->owner_id);
    FIELD("name", rec->name);
    FIELD("size", p->size);
    FIELD("type", rec->content_type);
    FIELD("sha256", rec->sha256);
    FIELD("created", p->created);
    snprintf(p->common, sizeof(p->common), "%d", p->argc - first);
    if (!dedupe) {
        FIELD("upload_id", rec->upload_id);
        FIELD("key", rec->object_key);
        FIELD("expires", p->expires);
    }
#undef FIELD
}

static put_t *put_new(fm_req_t *r, const char *script)
{
    put_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        h2o_fatal("out of memory");
    p->r = r;
    p->script = script;
    snprintf(p->ttl, sizeof(p->ttl), "%lld", (long long)fm_control->config.upload_url_ttl_s + 86400);
    return p;
}

void fm_records_put(fm_req_t *r, const fm_record_t *rec, fm_records_done_fn done)
{
    put_t *p = put_new(r, put_script);
    p->done = done;
    int dedupe = rec->upload_id == NULL;
    snprintf(p->id, sizeof(p->id), "%s", dedupe ? rec->file_id : rec->upload_id);
    snprintf(p->rec_key, sizeof(p->rec_key), "fm:rec:{%s}", p->id);
    snprintf(p->file_key, sizeof(p->file_key), "fm:recf:{%s}", rec->file_id);
    const char *head[] = {"EVALSHA", put_script_sha, "3", p->rec_key, p->file_key, PENDING_KEY, p->ttl, p->score, p->id};
    for (size_t i = 0; i < sizeof(head) / sizeof(head[0]); ++i)
        p->argv[p->argc++] = head[i];
    put_fields(p, rec, dedupe, 1);
    put_send(p);
}

void fm_records_put_or_dedupe(fm_req_t *r, const fm_record_t *upload, const char *index_key, fm_records_probe_fn done)
{
    put_t *p = put_new(r, probe_script);
    p->probe_done = done;
    snprintf(p->index_key, sizeof(p->index_key), "%s", index_key); /* a NOSCRIPT retry sends it again, later */
    snprintf(p->rec_key, sizeof(p->rec_key), "fm:rec:{%s}", upload->upload_id);
    snprintf(p->dedupe_rec_key, sizeof(p->dedupe_rec_key), "fm:rec:{%s}", upload->file_id);
    snprintf(p->file_key, sizeof(p->file_key), "fm:recf:{%s}", upload->file_id);
    const char *head[] = {"EVALSHA",       probe_script_sha, "5",         p->index_key,      p->rec_key,
                          p->dedupe_rec_key, p->file_key,     PENDING_KEY, p->ttl,            p->score,
                          upload->upload_id, upload->file_id,  upload->sha256, p->size,       p->common};
    for (size_t i = 0; i < sizeof(head) / sizeof(head[0]); ++i)
        p->argv[p->argc++] = head[i];
    put_fields(p, upload, 0, 0);
    put_send(p);
}

/* ---- records into PostgreSQL ---------------------------------------------------------------------------------- */

/* Adds the record of an HGETALL reply to `array` as one JSON object; 0 if the reply holds none. */
static int add_record(cJSON *array, const redisReply *reply)
{
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements < 2)
        return 0;
    cJSON *o = cJSON_CreateObject();
    for (size_t i = 0; i + 1 < reply->elements; i += 2) {
        const redisReply *k = reply->element[i], *v = reply->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        if (strcmp(k->str, "size") == 0 || strcmp(k->str, "expires") == 0 || strcmp(k->str, "created") == 0)
            cJSON_AddNumberToObject(o, k->str, strtod(v->str, NULL));
        else
            cJSON_AddStringToObject(o, k->str, v->str);
    }
    cJSON_AddItemToArray(array, o);
    return 1;
}

/* ---- fm_records_ensure: the one record a request needs, now ---------------------------------------------------- */

typedef struct {
    fm_req_t *r;
    fm_records_next_fn next;
    void *arg;
    char key[64];
} ensure_t;

static int ensure_resume(ensure_t *e)
{
    if (fm_req_resume(e->r) != 0) {
        free(e->arg);
        free(e);
        return -1;
    }
    return 0;
}

static void ensure_finish(ensure_t *e)
{
    fm_req_t *r = e->r;
    fm_records_next_fn next = e->next;
    void *arg = e->arg;
    free(e);
    next(r, arg);
}

static void ensure_fail(ensure_t *e)
{
    free(e->arg);
    free(e);
}

static void on_ensure_inserted(PGresult *res, const char *errstr, void *data)
{
    ensure_t *e = data;
    if (ensure_resume(e) != 0)
        return;
    if (fm_pg_failed(e->r, res, errstr)) {
        ensure_fail(e);
        return;
    }
    /* In PostgreSQL now: later reads need not insert it again (the flusher just finds it gone). */
    const char *argv[] = {"DEL", e->key};
    fm_redis_commandargv(fm_control_thread(e->r)->redis, ignore_reply, NULL, 2, argv, NULL);
    ensure_finish(e);
}

static void on_ensure_read(redisReply *reply, const char *errstr, void *data)
{
    ensure_t *e = data;
    if (ensure_resume(e) != 0)
        return;
    if (fm_redis_failed(e->r, reply, errstr)) { /* the record may be there: do not answer "not found" */
        ensure_fail(e);
        return;
    }
    cJSON *array = cJSON_CreateArray();
    if (!add_record(array, reply)) {
        cJSON_Delete(array);
        ensure_finish(e);
        return;
    }
    char *json = cJSON_PrintUnformatted(array);
    cJSON_Delete(array);
    const char *params[] = {json};
    fm_req_hold(e->r);
    int rc = fm_pg_query(fm_control_thread(e->r)->pg, on_ensure_inserted, e, insert_sql, 1, params);
    free(json);
    if (rc != 0) {
        fm_req_resume(e->r);
        fm_reply_unavailable(e->r, "the database");
        ensure_fail(e);
    }
}

void fm_records_ensure(fm_req_t *r, const char *record_id, fm_records_next_fn next, void *arg)
{
    if (fm_control->config.record_flush_ms == 0) { /* nothing is written behind */
        next(r, arg);
        return;
    }
    ensure_t *e = calloc(1, sizeof(*e));
    if (e == NULL)
        h2o_fatal("out of memory");
    e->r = r;
    e->next = next;
    e->arg = arg;
    snprintf(e->key, sizeof(e->key), "fm:rec:{%s}", record_id);
    const char *argv[] = {"HGETALL", e->key};
    fm_req_hold(r);
    if (fm_redis_commandargv(fm_control_thread(r)->redis, on_ensure_read, e, 2, argv, NULL) != 0) {
        fm_req_resume(r);
        fm_reply_unavailable(r, "the session store");
        ensure_fail(e);
    }
}

typedef struct {
    fm_req_t *r;
    fm_records_next_fn next;
} file_lookup_t;

static void on_file_record(redisReply *reply, const char *errstr, void *data)
{
    file_lookup_t *l = data;
    fm_req_t *r = l->r;
    fm_records_next_fn next = l->next;
    free(l);
    if (fm_req_resume(r) != 0)
        return;
    if (fm_redis_failed(r, reply, errstr))
        return;
    if (reply->type != REDIS_REPLY_STRING || reply->len > 36) {
        fm_reply_error(r, 404, "not_found", "no such file");
        return;
    }
    fm_records_ensure(r, reply->str, next, NULL);
}

int fm_records_retry_file(fm_req_t *r, const char *file_id, int *checked, fm_records_next_fn next)
{
    if (*checked || fm_control->config.record_flush_ms == 0)
        return 0;
    *checked = 1;
    file_lookup_t *l = malloc(sizeof(*l));
    if (l == NULL)
        h2o_fatal("out of memory");
    *l = (file_lookup_t){.r = r, .next = next};
    char key[64];
    snprintf(key, sizeof(key), "fm:recf:{%s}", file_id);
    const char *argv[] = {"GET", key};
    fm_req_hold(r);
    if (fm_redis_commandargv(fm_control_thread(r)->redis, on_file_record, l, 2, argv, NULL) != 0) {
        fm_req_resume(r);
        free(l);
        fm_reply_unavailable(r, "the session store");
    }
    return 1;
}

/* ---- the flusher ---------------------------------------------------------------------------------------------- */

/* One record id of a batch, and what HGETALL said of it. Only records read (or found gone) are forgotten after the
 * batch committed: one whose read failed (a Redis timeout under load) stays for the next batch. */
typedef struct {
    struct records_flusher *f;
    char *id, *file_id;
    enum { SLOT_WAITING, SLOT_READ, SLOT_GONE, SLOT_FAILED } state;
} slot_t;

typedef struct records_flusher {
    fm_thread_t *thread;
    h2o_timeout_t interval;
    h2o_timeout_entry_t entry;
    int running, logged_failure;
    char lock_owner[32];
    slot_t *slots;
    size_t count, sent, replies, read;
    cJSON *records; /* what HGETALL returned, as the insert's JSON */
} records_flusher_t;

static fm_redis_t *flusher_redis(records_flusher_t *f)
{
    return ((fm_control_thread_t *)f->thread->data)->redis;
}

static void batch_end(records_flusher_t *f)
{
    for (size_t i = 0; i < f->count; ++i) {
        free(f->slots[i].id);
        free(f->slots[i].file_id);
    }
    free(f->slots);
    f->slots = NULL;
    f->count = f->sent = f->replies = f->read = 0;
    cJSON_Delete(f->records);
    f->records = NULL;
    f->running = 0;
}

static void unlock(records_flusher_t *f)
{
    /* Only our own lock: compare and delete in one step. */
    fm_redis_command(flusher_redis(f), ignore_reply, NULL, "EVAL %s 1 fm:lock:records %s",
                     "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
                     f->lock_owner);
}

/* The batch is in PostgreSQL: drop its records from Redis (ids added meanwhile are not in this list and stay). */
static void forget_batch(records_flusher_t *f)
{
    const char **zrem = calloc(f->count + 2, sizeof(char *)), **del = calloc(2 * f->count + 1, sizeof(char *));
    char **keys = calloc(2 * f->count, sizeof(char *));
    if (zrem == NULL || del == NULL || keys == NULL)
        h2o_fatal("out of memory");
    size_t z = 0, k = 0;
    zrem[z++] = "ZREM";
    zrem[z++] = PENDING_KEY;
    for (size_t i = 0; i < f->count; ++i) {
        slot_t *slot = &f->slots[i];
        if (slot->state != SLOT_READ && slot->state != SLOT_GONE)
            continue;
        zrem[z++] = slot->id;
        if (asprintf(&keys[k++], "fm:rec:{%s}", slot->id) < 0 ||
            (slot->file_id != NULL && asprintf(&keys[k++], "fm:recf:{%s}", slot->file_id) < 0))
            h2o_fatal("out of memory");
    }
    del[0] = "DEL";
    for (size_t i = 0; i < k; ++i)
        del[i + 1] = keys[i];
    if (z > 2)
        fm_redis_commandargv(flusher_redis(f), ignore_reply, NULL, (int)z, zrem, NULL);
    if (k > 0)
        fm_redis_commandargv(flusher_redis(f), ignore_reply, NULL, (int)k + 1, del, NULL);
    for (size_t i = 0; i < k; ++i)
        free(keys[i]);
    free(keys);
    free(del);
    free(zrem);
}

/* While the service stops, the pools are being destroyed: a callback must not issue new commands. What a batch
 * did not finish stays in Redis for the next flusher (the lock expires by itself). */
static int stopping(records_flusher_t *f)
{
    if (!f->thread->shutting_down)
        return 0;
    batch_end(f);
    return 1;
}

static void on_batch_inserted(PGresult *res, const char *errstr, void *data)
{
    records_flusher_t *f = data;
    if (stopping(f))
        return;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        fm_metrics_counter_add("fm_records_flush_errors_total", NULL, 1);
        if (!f->logged_failure) /* PostgreSQL down: once, then quietly retried every tick */
            fm_warn("records: %zu records not written to PostgreSQL yet: %s", f->read,
                    res ? PQresultErrorMessage(res) : errstr);
        f->logged_failure = 1;
    } else {
        f->logged_failure = 0;
        fm_metrics_counter_add("fm_records_flushed_total", NULL, (double)f->read);
        forget_batch(f);
    }
    unlock(f);
    batch_end(f);
}

static void on_record_read(redisReply *reply, const char *errstr, void *data)
{
    slot_t *slot = data;
    records_flusher_t *f = slot->f;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        slot->state = SLOT_FAILED;
    } else if (add_record(f->records, reply)) {
        slot->state = SLOT_READ;
        f->read++;
        for (size_t i = 0; i + 1 < reply->elements; i += 2)
            if (reply->element[i]->type == REDIS_REPLY_STRING && strcmp(reply->element[i]->str, "file_id") == 0 &&
                reply->element[i + 1]->type == REDIS_REPLY_STRING && slot->file_id == NULL &&
                (slot->file_id = strdup(reply->element[i + 1]->str)) == NULL)
                h2o_fatal("out of memory");
    } else {
        slot->state = SLOT_GONE; /* brought in and dropped by fm_records_ensure, or expired */
    }
    if (++f->replies < f->sent)
        return;
    /* Every reply is in (also while stopping: the pools answer what they still held with errors). */
    if (stopping(f))
        return;
    char *json = cJSON_PrintUnformatted(f->records);
    const char *params[] = {json};
    int rc = fm_pg_query(((fm_control_thread_t *)f->thread->data)->pg, on_batch_inserted, f, insert_sql, 1, params);
    free(json);
    if (rc != 0) {
        unlock(f);
        batch_end(f);
    }
}

static void on_locked(redisReply *reply, const char *errstr, void *data)
{
    records_flusher_t *f = data;
    if (stopping(f))
        return;
    if (reply == NULL || reply->type != REDIS_REPLY_STATUS) { /* another instance is flushing */
        batch_end(f);
        return;
    }
    f->records = cJSON_CreateArray();
    /* Count what was sent first: no reply can come before this function returns to the loop. */
    for (size_t i = 0; i < f->count; ++i) {
        char key[64];
        snprintf(key, sizeof(key), "fm:rec:{%s}", f->slots[i].id);
        const char *argv[] = {"HGETALL", key};
        if (fm_redis_commandargv(flusher_redis(f), on_record_read, &f->slots[i], 2, argv, NULL) != 0)
            break; /* shutting down: the rest stays in Redis for the next flusher */
        f->sent++;
    }
    if (f->sent == 0) {
        unlock(f);
        batch_end(f);
    }
}

static void on_pending(redisReply *reply, const char *errstr, void *data)
{
    records_flusher_t *f = data;
    if (f->thread->shutting_down || reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements == 0) {
        f->running = 0;
        return;
    }
    if ((f->slots = calloc(reply->elements, sizeof(slot_t))) == NULL)
        h2o_fatal("out of memory");
    for (size_t i = 0; i < reply->elements; ++i) {
        if (reply->element[i]->type != REDIS_REPLY_STRING)
            continue;
        slot_t *slot = &f->slots[f->count++];
        slot->f = f;
        if ((slot->id = strdup(reply->element[i]->str)) == NULL)
            h2o_fatal("out of memory");
    }
    char ttl[24];
    snprintf(ttl, sizeof(ttl), "%lld", (long long)fm_control->config.pg_timeout_ms + 5000);
    const char *argv[] = {"SET", "fm:lock:records", f->lock_owner, "NX", "PX", ttl};
    if (fm_redis_commandargv(flusher_redis(f), on_locked, f, 6, argv, NULL) != 0)
        batch_end(f);
}

static void on_flush_tick(h2o_timeout_entry_t *entry)
{
    records_flusher_t *f = H2O_STRUCT_FROM_MEMBER(records_flusher_t, entry, entry);
    h2o_timeout_link(f->thread->ctx.loop, &f->interval, &f->entry);
    if (f->running || f->thread->shutting_down)
        return;
    f->running = 1;
    if (fm_redis_command(flusher_redis(f), on_pending, f, "ZRANGE %s 0 %d", PENDING_KEY, FLUSH_BATCH - 1) != 0)
        f->running = 0;
}

records_flusher_t *fm_records_flusher_start(fm_thread_t *thread)
{
    records_flusher_t *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return NULL;
    f->thread = thread;
    snprintf(f->lock_owner, sizeof(f->lock_owner), "%ld", (long)getpid());
    h2o_timeout_init(thread->ctx.loop, &f->interval, (uint64_t)fm_control->config.record_flush_ms);
    f->entry.cb = on_flush_tick;
    h2o_timeout_link(thread->ctx.loop, &f->interval, &f->entry);
    return f;
}

void fm_records_flusher_stop(records_flusher_t *f)
{
    if (f == NULL)
        return;
    if (h2o_timeout_is_linked(&f->entry))
        h2o_timeout_unlink(&f->entry);
    h2o_timeout_dispose(f->thread->ctx.loop, &f->interval);
    /* Called after the pools were destroyed, so no callback can still reach f. */
    batch_end(f);
    free(f);
}
