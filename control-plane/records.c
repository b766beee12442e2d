/*
 * Write-behind of new file records (docs/decisions.md "Records written behind"). POST /v1/uploads for a single PUT,
 * and a dedupe hit, write their new `files` (+ `uploads`) rows to Redis in one atomic script and answer; flushers on
 * every event-loop thread of every instance move them into PostgreSQL in batches. Anything that needs the row before
 * a flusher came (complete, parts, events, GET /v1/files) inserts that one record first (fm_records_ensure): the
 * PostgreSQL insert is idempotent, so a flusher and a reader may both do it.
 *
 * The backlog (records only in Redis) is bounded, DESIGN.md §6 rule 2: the script that stores a record first checks
 * that the backlog holds fewer than FM_RECORD_BACKLOG_MAX records and that its oldest is younger than
 * FM_RECORD_BACKLOG_MS (Redis's clock); past either bound it stores nothing and the caller writes the record through
 * to PostgreSQL (fm_records_through), or answers 503 + Retry-After when PostgreSQL is behind as well.
 *
 * Redis layout (AOF on, DESIGN.md §5):
 *   fm:rec:{id}       hash: the record (id = upload id, or the file id of a dedupe), expires after the URL TTL + 1 day
 *   fm:recf:{file}    the record id of a file, for GET /v1/files/{id}
 *   fm:rec:pending    sorted set of record ids no flusher has taken yet, by creation time (ms, Redis's clock)
 *   fm:rec:flushing   sorted set of record ids a flusher took (its batch is on its way to PostgreSQL), by creation
 *   fm:rec:lease      the same ids by the end of their batch's lease (ms): past it, any flusher takes them again
 * The backlog is pending + flushing; a record leaves it once its batch committed. A batch is taken atomically
 * (ZPOPMIN), so flushers of several threads and instances never share records and need no lock; the lease brings
 * back the records of a flusher that died with its batch in flight. These keys are built inside the scripts too,
 * so the layout needs one Redis (or one Cluster slot for all of it), as the request script already did.
 *
 * With FM_RECORD_FLUSH_MS=0 nothing is written behind: the rows go to PostgreSQL before the answer (uploads_create.c).
 *
 * This file is the request side: the scripts that store a record (with the bound), the write-through accounting,
 * fm_records_ensure / fm_records_retry_file, and the record as the insert's JSON (records_internal.h, shared with the
 * flushers). The flushers are records_flush.c. Everything here runs on the calling request's event-loop thread, on
 * that thread's Redis and PostgreSQL pools; the only state shared between threads is the scripts' SHA-1s, written
 * once by fm_records_init before the threads start.
 */
#include <openssl/sha.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "b64.h"
#include "control.h"
#include "log.h"
#include "metrics.h"
#include "quota.h"
#include "records_internal.h"

/* Past the bound, PostgreSQL is "behind too" once this thread has this many queries per connection waiting for
 * one: the record is then refused (503) rather than queued behind them. */
#define THROUGH_QUEUE_PER_CONNECTION 8
static const char *const record_fields[] = {RECORD_FIELDS};
#define RECORD_FIELD_COUNT (sizeof(record_fields) / sizeof(record_fields[0]))
#define FILE_ID_FIELD 2
#define OWNER_FIELD 3
#define SIZE_FIELD 5

/* The bound, shared by both request scripts: `now` (ms, Redis's clock) and full(pending, flushing, max, age_ms),
 * true when the backlog already holds `max` records or its oldest is `age_ms` old. */
#define BOUND_LUA                                                                                                      \
    "local t = redis.call('TIME')\n"                                                                                   \
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"                                         \
    "local function full(pending, flushing, max, age)\n"                                                               \
    "  if redis.call('ZCARD', pending) + redis.call('ZCARD', flushing) >= tonumber(max) then return true end\n"       \
    "  for _, key in ipairs({pending, flushing}) do\n"                                                                 \
    "    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]\n"                                            \
    "    if oldest and now - tonumber(oldest) >= tonumber(age) then return true end\n"                                 \
    "  end\n"                                                                                                          \
    "  return false\n"                                                                                                 \
    "end\n"

/* KEYS: record hash, file → record key, pending, flushing, the owner's quota copy (quota.h). ARGV: ttl s, backlog max,
 * backlog ms, record id, kind, field/value pairs…, then the record's size. Answers the kind stored, 'full_' .. kind
 * when the backlog is at its bound, 'quota_' .. kind when the quota copy is missing or says the size does not fit
 * (nothing stored: PostgreSQL decides). */
static const char put_script[] = BOUND_LUA QUOTA_LUA
                                 "if full(KEYS[3], KEYS[4], ARGV[2], ARGV[3]) then return 'full_' .. ARGV[5] end\n"
                                 "if quota_take(KEYS[5], ARGV[#ARGV]) then return 'quota_' .. ARGV[5] end\n"
                                 "redis.call('HSET', KEYS[1], 'kind', unpack(ARGV, 5, #ARGV - 1))\n"
                                 "redis.call('EXPIRE', KEYS[1], ARGV[1])\n"
                                 "redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[1])\n"
                                 "redis.call('ZADD', KEYS[3], now, ARGV[4])\n"
                                 QUOTA_RESERVE_LUA("KEYS[5]", "ARGV[#ARGV]")
                                 "return ARGV[5]\n";
static char put_script_sha[41];

/* POST /v1/uploads in one round trip: the owner's dedupe index is asked and the record written in the same script.
 * KEYS: dedupe index, upload record, dedupe record, file → record key, pending, flushing. ARGV: ttl s, backlog max,
 * backlog ms, upload id, file id, sha256, size, n, then n field/value items common to both kinds, then the upload's
 * own. A hash in the index with this size stores a dedupe record ('dedupe'); with another size nothing ('other':
 * PostgreSQL decides); an index not built yet nothing ('unbuilt'); otherwise the upload record ('upload'). At the
 * backlog's bound nothing is stored: 'full_dedupe' or 'full_upload'; past the owner's quota copy (KEYS[7], quota.h)
 * nothing either: 'quota_dedupe' or 'quota_upload'. */
static const char probe_script[] = BOUND_LUA QUOTA_LUA
                                   "local h = redis.call('HMGET', KEYS[1], ARGV[6], '_built')\n"
                                   "local rec, id, kind, last\n"
                                   "if h[1] then\n"
                                   "  if h[1] ~= ARGV[7] then return 'other' end\n"
                                   "  rec, id, kind, last = KEYS[3], ARGV[5], 'dedupe', 8 + tonumber(ARGV[8])\n"
                                   "elseif not h[2] then return 'unbuilt'\n"
                                   "else rec, id, kind, last = KEYS[2], ARGV[4], 'upload', #ARGV end\n"
                                   "if full(KEYS[5], KEYS[6], ARGV[2], ARGV[3]) then return 'full_' .. kind end\n"
                                   "if quota_take(KEYS[7], ARGV[7]) then return 'quota_' .. kind end\n"
                                   "redis.call('HSET', rec, 'kind', kind, unpack(ARGV, 9, last))\n"
                                   "redis.call('EXPIRE', rec, ARGV[1])\n"
                                   "redis.call('SET', KEYS[4], id, 'EX', ARGV[1])\n"
                                   "redis.call('ZADD', KEYS[5], now, id)\n"
                                   QUOTA_RESERVE_LUA("KEYS[7]", "ARGV[7]")
                                   "return kind\n";
static char probe_script_sha[41];

/* One statement inserts a batch, given as a JSON array of records (every value a JSON string): schema/015_names.sql.
 * A record whose owner is gone is dropped; a dedupe whose blob the owner no longer holds becomes a FAILED file (the
 * Redis index was stale) rather than a lost one; a name already taken (only on_conflict=rename records are written
 * behind) takes fm_free_name's, so a name never fails a batch. */
const char fm_records_insert_sql[] = "SELECT files_inserted, uploads_inserted FROM fm_records_insert($1::json)";

void fm_records_ignore_reply(redisReply *reply, const char *errstr, void *data)
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
    fm_metrics_describe("fm_records_flush_batches_total", FM_METRIC_COUNTER,
                        "Batches of file records inserted into PostgreSQL (the flushers' rounds)");
    fm_metrics_describe("fm_records_flush_errors_total", FM_METRIC_COUNTER, "Batches of records PostgreSQL did not take");
    fm_metrics_describe("fm_records_written_through_total", FM_METRIC_COUNTER,
                        "New file records written to PostgreSQL before the answer because the Redis backlog was at its bound");
    fm_metrics_describe("fm_records_refused_total", FM_METRIC_COUNTER,
                        "New file records refused (503) because the backlog was at its bound and PostgreSQL behind too");
    fm_metrics_describe("fm_records_set_aside_total", FM_METRIC_COUNTER,
                        "Records PostgreSQL refused on their own, kept as fm:rec:refused:{id} and out of the backlog");
    fm_metrics_describe("fm_records_backlog", FM_METRIC_GAUGE,
                        "Records only in Redis (all instances), as this instance's flushers last saw it");
    fm_metrics_describe("fm_records_backlog_age_seconds", FM_METRIC_GAUGE,
                        "Age of the oldest record only in Redis, as this instance's flushers last saw it");
    return 0;
}

/* ---- writing a record (the request path) ---------------------------------------------------------------------- */

typedef struct {
    fm_req_t *r;
    fm_records_done_fn done;
    const char *script;
    const char *argv[48];
    int argc;
    char id[40], rec_key[64], dedupe_rec_key[64], file_key[64], index_key[80], quota_key[64], ttl[24], backlog_max[24],
        backlog_ms[24], size[24], expires[24], created[24], common[8];
    int retried;
} put_t;

/* What the scripts answer, in the order of fm_record_outcome_t. */
static const char *const outcomes[] = {"upload",      "dedupe",      "other",        "unbuilt",
                                       "full_upload", "full_dedupe", "quota_upload", "quota_dedupe"};

static void put_send(put_t *p);

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
        put_send(p);
        return;
    }
    fm_records_done_fn done = p->done;
    free(p);
    if (fm_redis_failed(r, reply, errstr))
        return;
    for (size_t i = 0; i < sizeof(outcomes) / sizeof(outcomes[0]); ++i)
        if (reply->type == REDIS_REPLY_STRING && strcmp(reply->str, outcomes[i]) == 0) {
            done(r, (fm_record_outcome_t)i);
            return;
        }
    fm_log(FM_LOG_ERROR, r->request_id, "redis: the record script answered %.64s", reply->type == REDIS_REPLY_ERROR ? reply->str : "?");
    fm_reply_error(r, 500, "internal_error", "the request could not be completed");
}

static void put_send(put_t *p)
{
    fm_req_t *r = p->r;
    if (fm_redis_call_with(r, p, on_put, p->argc, p->argv) != 0) {
        free(p);
        fm_reply_unavailable(r, "the session store");
    }
}

/* The head of the script's arguments is the caller's; then the fields, those of every record first (`common` tells
 * how many items they are), the upload's own after them unless `rec` is a dedupe. */
static void put_fields(put_t *p, const fm_record_t *rec, int dedupe)
{
    long long now_ms = (long long)time(NULL) * 1000; /* whole seconds: the rows' timestamps need no better */
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) == 0)
        now_ms = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    snprintf(p->size, sizeof(p->size), "%lld", rec->size);
    snprintf(p->expires, sizeof(p->expires), "%lld", rec->expires_at);
    snprintf(p->created, sizeof(p->created), "%lld", now_ms);
    int first = p->argc;
#define FIELD(k, v)                                                                                                   \
    do {                                                                                                              \
        p->argv[p->argc++] = (k);                                                                                     \
        p->argv[p->argc++] = (v);                                                                                     \
    } while (0)
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
    snprintf(p->backlog_max, sizeof(p->backlog_max), "%lld", (long long)fm_control->config.record_backlog_max);
    snprintf(p->backlog_ms, sizeof(p->backlog_ms), "%lld", (long long)fm_control->config.record_backlog_ms);
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
    fm_quota_key(p->quota_key, sizeof(p->quota_key), rec->owner_id);
    const char *head[] = {"EVALSHA",    put_script_sha, "5",     p->rec_key,     p->file_key,   PENDING_KEY,
                          FLUSHING_KEY, p->quota_key,   p->ttl,  p->backlog_max, p->backlog_ms, p->id,
                          dedupe ? "dedupe" : "upload"};
    for (size_t i = 0; i < sizeof(head) / sizeof(head[0]); ++i)
        p->argv[p->argc++] = head[i];
    put_fields(p, rec, dedupe);
    p->argv[p->argc++] = p->size; /* the script's last argument: what the quota copy reserves */
    put_send(p);
}

void fm_records_put_or_dedupe(fm_req_t *r, const fm_record_t *upload, const char *index_key, fm_records_done_fn done)
{
    put_t *p = put_new(r, probe_script);
    p->done = done;
    snprintf(p->index_key, sizeof(p->index_key), "%s", index_key); /* a NOSCRIPT retry sends it again, later */
    snprintf(p->rec_key, sizeof(p->rec_key), "fm:rec:{%s}", upload->upload_id);
    snprintf(p->dedupe_rec_key, sizeof(p->dedupe_rec_key), "fm:rec:{%s}", upload->file_id);
    snprintf(p->file_key, sizeof(p->file_key), "fm:recf:{%s}", upload->file_id);
    fm_quota_key(p->quota_key, sizeof(p->quota_key), upload->owner_id);
    const char *head[] = {"EVALSHA",         probe_script_sha, "7",            p->index_key,   p->rec_key,
                          p->dedupe_rec_key, p->file_key,      PENDING_KEY,    FLUSHING_KEY,   p->quota_key, p->ttl,
                          p->backlog_max,    p->backlog_ms,    upload->upload_id, upload->file_id, upload->sha256,
                          p->size,           p->common};
    for (size_t i = 0; i < sizeof(head) / sizeof(head[0]); ++i)
        p->argv[p->argc++] = head[i];
    put_fields(p, upload, 0);
    put_send(p);
}

int fm_records_through(fm_req_t *r)
{
    fm_pg_t *pg = fm_control_thread(r)->pg;
    if (fm_pg_queued(pg) >= (size_t)fm_control->config.pg_pool_size * THROUGH_QUEUE_PER_CONNECTION) {
        FM_METRICS_COUNT("fm_records_refused_total", NULL, 1);
        fm_req_add_header(r, "retry-after", "1");
        fm_reply_error(r, 503, "unavailable", "too many new files at once, try again shortly");
        return 0;
    }
    FM_METRICS_COUNT("fm_records_written_through_total", NULL, 1);
    return 1;
}

/* ---- records as the insert's JSON ------------------------------------------------------------------------------ */

void fm_records_text_add(fm_records_text_t *t, const char *s, size_t len)
{
    if (t->len + len + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 4096;
        while (cap < t->len + len + 1)
            cap *= 2;
        if ((t->base = realloc(t->base, cap)) == NULL)
            h2o_fatal("out of memory");
        t->cap = cap;
    }
    memcpy(t->base + t->len, s, len);
    t->len += len;
    t->base[t->len] = '\0';
}

/* A JSON string (RFC 8259 §7): quote, backslash and control characters escaped, other bytes as they are. */
static void text_json_string(fm_records_text_t *t, const char *s, size_t len)
{
    fm_records_text_add(t, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < len; ++i) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        fm_records_text_add(t, s + run, i - run);
        char esc[8];
        int n = c == '"' || c == '\\' ? snprintf(esc, sizeof(esc), "\\%c", c) : snprintf(esc, sizeof(esc), "\\u%04x", c);
        fm_records_text_add(t, esc, (size_t)n);
        run = i + 1;
    }
    fm_records_text_add(t, s + run, len - run);
    fm_records_text_add(t, "\"", 1);
}

/* Adds the record of an HMGET reply (record_fields) to the JSON array being written in `t` (opened by the caller
 * with "[") as one object of strings, the missing fields left out; 0 if the reply holds none (the record is gone). */
int fm_records_json_add(fm_records_text_t *t, const redisReply *reply)
{
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements != RECORD_FIELD_COUNT ||
        reply->element[FILE_ID_FIELD]->type != REDIS_REPLY_STRING)
        return 0;
    fm_records_text_add(t, t->len > 1 ? ",{" : "{", t->len > 1 ? 2 : 1);
    int first = 1;
    for (size_t i = 0; i < RECORD_FIELD_COUNT; ++i) {
        const redisReply *v = reply->element[i];
        if (v->type != REDIS_REPLY_STRING)
            continue;
        if (!first)
            fm_records_text_add(t, ",", 1);
        first = 0;
        text_json_string(t, record_fields[i], strlen(record_fields[i]));
        fm_records_text_add(t, ":", 1);
        text_json_string(t, v->str, v->len);
    }
    fm_records_text_add(t, "}", 1);
    return 1;
}

/* The file id of a record read by fm_records_json_add (which checked it is there), or NULL. */
const char *fm_records_file_id(const redisReply *reply)
{
    return reply->element[FILE_ID_FIELD]->len <= 36 ? reply->element[FILE_ID_FIELD]->str : NULL;
}

const char *fm_records_owner_id(const redisReply *reply)
{
    const redisReply *owner = reply->element[OWNER_FIELD];
    return owner->type == REDIS_REPLY_STRING && owner->len <= 36 ? owner->str : NULL;
}

long long fm_records_size(const redisReply *reply)
{
    const redisReply *size = reply->element[SIZE_FIELD];
    return size->type == REDIS_REPLY_STRING ? strtoll(size->str, NULL, 10) : 0;
}

/* ---- fm_records_ensure: the one record a request needs, now ---------------------------------------------------- */

typedef struct {
    fm_req_t *r;
    fm_records_next_fn next;
    void *arg;
    char key[64], file_key[64], owner[37];
    long long size;
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
    /* In PostgreSQL now: later reads need not insert it again (a flusher that takes its id finds it gone and drops
     * the id from the backlog). */
    fm_redis_t *redis = fm_control_thread(e->r)->redis;
    if (e->file_key[0] != '\0') {
        const char *argv[] = {"DEL", e->file_key};
        fm_redis_commandargv(redis, fm_records_ignore_reply, NULL, 2, argv, NULL);
    }
    fm_quota_landed(redis, 1, &(fm_quota_landing_t){e->key, e->owner, e->size, 1});
    if (e->owner[0] != '\0') /* a new file in PostgreSQL: the owner's listings show it now */
        fm_tree_changed(fm_control_thread(e->r), e->owner);
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
    fm_records_text_t json = {0};
    fm_records_text_add(&json, "[", 1);
    if (!fm_records_json_add(&json, reply)) {
        free(json.base);
        ensure_finish(e);
        return;
    }
    fm_records_text_add(&json, "]", 1);
    if (fm_records_file_id(reply) != NULL)
        snprintf(e->file_key, sizeof(e->file_key), "fm:recf:{%s}", fm_records_file_id(reply));
    if (fm_records_owner_id(reply) != NULL)
        snprintf(e->owner, sizeof(e->owner), "%s", fm_records_owner_id(reply));
    e->size = fm_records_size(reply);
    const char *params[] = {json.base};
    int rc = fm_pg_call_prepared_with(e->r, e, on_ensure_inserted, fm_records_insert_sql, 1, params);
    free(json.base);
    if (rc != 0) {
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
    const char *argv[2 + RECORD_FIELD_COUNT] = {"HMGET", e->key, RECORD_FIELDS};
    if (fm_redis_call_with(r, e, on_ensure_read, 2 + RECORD_FIELD_COUNT, argv) != 0) {
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
    if (fm_redis_call_with(r, l, on_file_record, 2, argv) != 0) {
        free(l);
        fm_reply_unavailable(r, "the session store");
    }
    return 1;
}
