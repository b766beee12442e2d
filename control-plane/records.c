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
 * With FM_RECORD_FLUSH_MS=0 nothing is written behind: the rows go to PostgreSQL before the answer (uploads.c).
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

/* Records per batch, at most: a take script of this size keeps Redis busy ~1 ms and its insert far below
 * FM_PG_TIMEOUT_MS (docs/benchmarks.md "Records written behind"). A batch takes the whole backlog up to this. */
#define FLUSH_BATCH_MAX 1000
/* Batches in flight per event-loop thread: a second one starts while the backlog fills whole batches. */
#define FLUSH_SLOTS 2
/* After a batch PostgreSQL did not take, the next try waits this much longer, doubling up to FLUSH_BACKOFF_MAX_MS. */
#define FLUSH_BACKOFF_MAX_MS 1000
/* Past the bound, PostgreSQL is "behind too" once this thread has this many queries per connection waiting for
 * one: the record is then refused (503) rather than queued behind them. */
#define THROUGH_QUEUE_PER_CONNECTION 8
/* A record's fields, as the insert reads them (HMGET in this order: a dedupe has no upload_id, key, expires). */
#define RECORD_FIELDS "kind", "upload_id", "file_id", "owner", "name", "size", "type", "sha256", "key", "expires", "created"
static const char *const record_fields[] = {RECORD_FIELDS};
#define RECORD_FIELD_COUNT (sizeof(record_fields) / sizeof(record_fields[0]))
#define FILE_ID_FIELD 2
#define PENDING_KEY "fm:rec:pending"
#define FLUSHING_KEY "fm:rec:flushing"
#define LEASE_KEY "fm:rec:lease"

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

/* KEYS: record hash, file → record key, pending, flushing. ARGV: ttl s, backlog max, backlog ms, record id, kind,
 * field/value pairs… Answers the kind stored, or 'full_' .. kind when the backlog is at its bound (nothing stored). */
static const char put_script[] = BOUND_LUA "if full(KEYS[3], KEYS[4], ARGV[2], ARGV[3]) then return 'full_' .. ARGV[5] end\n"
                                           "redis.call('HSET', KEYS[1], 'kind', unpack(ARGV, 5))\n"
                                           "redis.call('EXPIRE', KEYS[1], ARGV[1])\n"
                                           "redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[1])\n"
                                           "redis.call('ZADD', KEYS[3], now, ARGV[4])\n"
                                           "return ARGV[5]\n";
static char put_script_sha[41];

/* POST /v1/uploads in one round trip: the owner's dedupe index is asked and the record written in the same script.
 * KEYS: dedupe index, upload record, dedupe record, file → record key, pending, flushing. ARGV: ttl s, backlog max,
 * backlog ms, upload id, file id, sha256, size, n, then n field/value items common to both kinds, then the upload's
 * own. A hash in the index with this size stores a dedupe record ('dedupe'); with another size nothing ('other':
 * PostgreSQL decides); an index not built yet nothing ('unbuilt'); otherwise the upload record ('upload'). At the
 * backlog's bound nothing is stored: 'full_dedupe' or 'full_upload'. */
static const char probe_script[] = BOUND_LUA "local h = redis.call('HMGET', KEYS[1], ARGV[6], '_built')\n"
                                             "local rec, id, kind, last\n"
                                             "if h[1] then\n"
                                             "  if h[1] ~= ARGV[7] then return 'other' end\n"
                                             "  rec, id, kind, last = KEYS[3], ARGV[5], 'dedupe', 8 + tonumber(ARGV[8])\n"
                                             "elseif not h[2] then return 'unbuilt'\n"
                                             "else rec, id, kind, last = KEYS[2], ARGV[4], 'upload', #ARGV end\n"
                                             "if full(KEYS[5], KEYS[6], ARGV[2], ARGV[3]) then return 'full_' .. kind end\n"
                                             "redis.call('HSET', rec, 'kind', kind, unpack(ARGV, 9, last))\n"
                                             "redis.call('EXPIRE', rec, ARGV[1])\n"
                                             "redis.call('SET', KEYS[4], id, 'EX', ARGV[1])\n"
                                             "redis.call('ZADD', KEYS[5], now, id)\n"
                                             "return kind\n";
static char probe_script_sha[41];

/* A flusher's batch in one round trip. KEYS: pending, flushing, lease. ARGV: most records, lease ms, the record
 * fields. Takes first the records whose lease ended (a flusher died, or its batch failed), then the oldest pending
 * ones (moved to flushing with their creation time), leases them all, and answers {ids, their fields (all nil when
 * gone), the backlog left, its oldest record's age in ms}. ZADD takes at most 4,000 arguments at once (Lua's stack
 * is 8,000). */
static const char take_script[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local max, lease = tonumber(ARGV[1]), now + tonumber(ARGV[2])\n"
    "local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, max)\n"
    "if #ids < max then\n"
    "  local popped, moved = redis.call('ZPOPMIN', KEYS[1], max - #ids), {}\n"
    "  for i = 1, #popped, 2 do\n"
    "    ids[#ids + 1] = popped[i]\n"
    "    moved[#moved + 1] = popped[i + 1]\n"
    "    moved[#moved + 1] = popped[i]\n"
    "    if #moved == 4000 or i + 1 == #popped then redis.call('ZADD', KEYS[2], unpack(moved)); moved = {} end\n"
    "  end\n"
    "end\n"
    "local records, leased = {}, {}\n"
    "for i, id in ipairs(ids) do\n"
    "  records[i] = redis.call('HMGET', 'fm:rec:{' .. id .. '}', unpack(ARGV, 3))\n"
    "  leased[#leased + 1] = lease\n"
    "  leased[#leased + 1] = id\n"
    "  if #leased == 4000 or i == #ids then redis.call('ZADD', KEYS[3], unpack(leased)); leased = {} end\n"
    "end\n"
    "local age = 0\n"
    "for _, key in ipairs({KEYS[1], KEYS[2]}) do\n"
    "  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]\n"
    "  if oldest and now - tonumber(oldest) > age then age = now - tonumber(oldest) end\n"
    "end\n"
    "return {ids, records, redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2]), age}\n";

/* One statement inserts a batch, given as a JSON array of records (every value a JSON string). A record whose owner
 * is gone is dropped; a dedupe whose blob the owner no longer holds becomes a FAILED file (the Redis index was stale)
 * rather than a lost one. */
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
    char id[40], rec_key[64], dedupe_rec_key[64], file_key[64], index_key[80], ttl[24], backlog_max[24],
        backlog_ms[24], size[24], expires[24], created[24], common[8];
    int retried;
} put_t;

/* What the scripts answer, in the order of fm_record_outcome_t. */
static const char *const outcomes[] = {"upload", "dedupe", "other", "unbuilt", "full_upload", "full_dedupe"};

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
    fm_req_hold(r);
    if (fm_redis_commandargv(fm_control_thread(r)->redis, on_put, p, p->argc, p->argv, NULL) != 0) {
        fm_req_resume(r);
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
    const char *head[] = {"EVALSHA",      put_script_sha, "4",           p->rec_key,     p->file_key,
                          PENDING_KEY,    FLUSHING_KEY,   p->ttl,        p->backlog_max, p->backlog_ms,
                          p->id,          dedupe ? "dedupe" : "upload"};
    for (size_t i = 0; i < sizeof(head) / sizeof(head[0]); ++i)
        p->argv[p->argc++] = head[i];
    put_fields(p, rec, dedupe);
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
    const char *head[] = {"EVALSHA",         probe_script_sha, "6",            p->index_key,   p->rec_key,
                          p->dedupe_rec_key, p->file_key,      PENDING_KEY,    FLUSHING_KEY,   p->ttl,
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

typedef struct {
    char *base;
    size_t len, cap;
} text_t;

static void text_add(text_t *t, const char *s, size_t len)
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
static void text_json_string(text_t *t, const char *s, size_t len)
{
    text_add(t, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < len; ++i) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        text_add(t, s + run, i - run);
        char esc[8];
        int n = c == '"' || c == '\\' ? snprintf(esc, sizeof(esc), "\\%c", c) : snprintf(esc, sizeof(esc), "\\u%04x", c);
        text_add(t, esc, (size_t)n);
        run = i + 1;
    }
    text_add(t, s + run, len - run);
    text_add(t, "\"", 1);
}

/* Adds the record of an HMGET reply (record_fields) to the JSON array being written in `t` (opened by the caller
 * with "[") as one object of strings, the missing fields left out; 0 if the reply holds none (the record is gone). */
static int add_record(text_t *t, const redisReply *reply)
{
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements != RECORD_FIELD_COUNT ||
        reply->element[FILE_ID_FIELD]->type != REDIS_REPLY_STRING)
        return 0;
    text_add(t, t->len > 1 ? ",{" : "{", t->len > 1 ? 2 : 1);
    int first = 1;
    for (size_t i = 0; i < RECORD_FIELD_COUNT; ++i) {
        const redisReply *v = reply->element[i];
        if (v->type != REDIS_REPLY_STRING)
            continue;
        if (!first)
            text_add(t, ",", 1);
        first = 0;
        text_json_string(t, record_fields[i], strlen(record_fields[i]));
        text_add(t, ":", 1);
        text_json_string(t, v->str, v->len);
    }
    text_add(t, "}", 1);
    return 1;
}

/* The file id of a record read by add_record (which checked it is there), or NULL. */
static const char *record_file_id(const redisReply *reply)
{
    return reply->element[FILE_ID_FIELD]->len <= 36 ? reply->element[FILE_ID_FIELD]->str : NULL;
}

/* ---- fm_records_ensure: the one record a request needs, now ---------------------------------------------------- */

typedef struct {
    fm_req_t *r;
    fm_records_next_fn next;
    void *arg;
    char key[64], file_key[64];
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
    const char *argv[] = {"DEL", e->key, e->file_key};
    fm_redis_commandargv(fm_control_thread(e->r)->redis, ignore_reply, NULL, e->file_key[0] ? 3 : 2, argv, NULL);
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
    text_t json = {0};
    text_add(&json, "[", 1);
    if (!add_record(&json, reply)) {
        free(json.base);
        ensure_finish(e);
        return;
    }
    text_add(&json, "]", 1);
    if (record_file_id(reply) != NULL)
        snprintf(e->file_key, sizeof(e->file_key), "fm:recf:{%s}", record_file_id(reply));
    const char *params[] = {json.base};
    fm_req_hold(e->r);
    int rc = fm_pg_query(fm_control_thread(e->r)->pg, on_ensure_inserted, e, insert_sql, 1, params);
    free(json.base);
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
    const char *argv[2 + RECORD_FIELD_COUNT] = {"HMGET", e->key, RECORD_FIELDS};
    fm_req_hold(r);
    if (fm_redis_commandargv(fm_control_thread(r)->redis, on_ensure_read, e, 2 + RECORD_FIELD_COUNT, argv, NULL) != 0) {
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

/* One record id of a batch. Every id is forgotten once the batch is in PostgreSQL (a record found gone was brought
 * in by fm_records_ensure, or expired). */
typedef struct {
    char *id, *file_id, *json; /* file_id and json NULL: the record was gone */
    int aside;                 /* PostgreSQL refused it on its own: kept as fm:rec:refused:{id} */
} batch_record_t;

typedef struct {
    struct records_flusher *f;
    int busy;
    batch_record_t *recs;
    size_t count, read;
    size_t alone; /* after PostgreSQL refused the batch: the record being inserted on its own, else SIZE_MAX */
} batch_t;

/* Every event-loop thread runs one: its own Redis and PostgreSQL pools, FLUSH_SLOTS batches at most in flight. */
typedef struct records_flusher {
    fm_thread_t *thread;
    h2o_timeout_t interval;
    h2o_timeout_entry_t entry;
    int logged_failure;
    uint64_t failures, retry_at_ns; /* batches PostgreSQL could not take in a row; no new batch before retry_at_ns */
    batch_t batches[FLUSH_SLOTS];
} records_flusher_t;

static void batch_start(records_flusher_t *f);
static void insert_alone(batch_t *b);

static fm_redis_t *flusher_redis(records_flusher_t *f)
{
    return ((fm_control_thread_t *)f->thread->data)->redis;
}

static fm_pg_t *flusher_pg(records_flusher_t *f)
{
    return ((fm_control_thread_t *)f->thread->data)->pg;
}

static void batch_end(batch_t *b)
{
    for (size_t i = 0; i < b->count; ++i) {
        free(b->recs[i].id);
        free(b->recs[i].file_id);
        free(b->recs[i].json);
    }
    free(b->recs);
    b->recs = NULL;
    b->count = b->read = 0;
    b->alone = SIZE_MAX;
    b->busy = 0;
}

/* While the service stops, the pools are being destroyed: a callback must not issue new commands. What a batch
 * did not finish stays in Redis, leased: the next flusher takes it once the lease ended. */
static int stopping(batch_t *b)
{
    if (!b->f->thread->shutting_down)
        return 0;
    batch_end(b);
    return 1;
}

/* The batch is in PostgreSQL: drop its records (and their file → record keys) from Redis, and their places in the
 * backlog. Ids added meanwhile are not in the lists and stay. In whichever order the three commands run, a record
 * is at every moment in PostgreSQL and, until DEL ran, in Redis as well. */
static void forget_batch(batch_t *b)
{
    const char **del = calloc(1 + 2 * b->count, sizeof(char *)), **zrem = calloc(2 + b->count, sizeof(char *));
    char **keys = calloc(2 * b->count, sizeof(char *));
    if (del == NULL || zrem == NULL || keys == NULL)
        h2o_fatal("out of memory");
    int ndel = 0, nzrem = 0, nkeys = 0;
    del[ndel++] = "DEL";
    zrem[nzrem++] = "ZREM";
    zrem[nzrem++] = FLUSHING_KEY;
    for (size_t i = 0; i < b->count; ++i) {
        batch_record_t *rec = &b->recs[i];
        zrem[nzrem++] = rec->id;
        if (!rec->aside && asprintf(&keys[nkeys++], "fm:rec:{%s}", rec->id) < 0)
            h2o_fatal("out of memory");
        if (rec->file_id != NULL && asprintf(&keys[nkeys++], "fm:recf:{%s}", rec->file_id) < 0)
            h2o_fatal("out of memory");
    }
    for (int i = 0; i < nkeys; ++i)
        del[ndel++] = keys[i];
    fm_redis_t *redis = flusher_redis(b->f);
    if (ndel > 1)
        fm_redis_commandargv(redis, ignore_reply, NULL, ndel, del, NULL);
    fm_redis_commandargv(redis, ignore_reply, NULL, nzrem, zrem, NULL);
    zrem[1] = LEASE_KEY;
    fm_redis_commandargv(redis, ignore_reply, NULL, nzrem, zrem, NULL);
    for (int i = 0; i < nkeys; ++i)
        free(keys[i]);
    free(keys);
    free(del);
    free(zrem);
}

/* PostgreSQL could not take the batch: end its lease now, so that the next batch (of any flusher) takes it first,
 * and back off (doubling from FM_RECORD_FLUSH_MS up to FLUSH_BACKOFF_MAX_MS) while PostgreSQL is away. */
static void release_batch(batch_t *b, const char *why)
{
    records_flusher_t *f = b->f;
    fm_metrics_counter_add("fm_records_flush_errors_total", NULL, 1);
    if (!f->logged_failure) /* once, then quietly retried */
        fm_warn("records: %zu records not written to PostgreSQL yet: %s", b->read, why);
    f->logged_failure = 1;
    uint64_t backoff_ms = (uint64_t)fm_control->config.record_flush_ms << (f->failures < 10 ? f->failures : 10);
    f->failures++;
    f->retry_at_ns = fm_now_ns() + 1000000ull * (backoff_ms < FLUSH_BACKOFF_MAX_MS ? backoff_ms : FLUSH_BACKOFF_MAX_MS);
    const char **argv = calloc(3 + 2 * b->count, sizeof(char *));
    if (argv == NULL)
        h2o_fatal("out of memory");
    int argc = 0;
    argv[argc++] = "ZADD";
    argv[argc++] = LEASE_KEY;
    argv[argc++] = "XX"; /* only ids still leased: another flusher may have taken and forgotten them meanwhile */
    for (size_t i = 0; i < b->count; ++i) {
        argv[argc++] = "0";
        argv[argc++] = b->recs[i].id;
    }
    fm_redis_commandargv(flusher_redis(f), ignore_reply, NULL, argc, argv, NULL);
    free(argv);
    batch_end(b);
}

/* An error PostgreSQL may not give again (connection, timeout, lock, resources, shutdown: SQLSTATE classes 08, 40,
 * 53, 55, 57, 58), as opposed to one about the records (bad data, a constraint): only the latter are looked for
 * record by record. */
static int transient(PGresult *res)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (state == NULL || strlen(state) != 5)
        return 1;
    static const char *const classes[] = {"08", "40", "53", "55", "57", "58"};
    for (size_t i = 0; i < sizeof(classes) / sizeof(classes[0]); ++i)
        if (strncmp(state, classes[i], 2) == 0)
            return 1;
    return 0;
}

static void on_batch_inserted(PGresult *res, const char *errstr, void *data)
{
    batch_t *b = data;
    records_flusher_t *f = b->f;
    if (stopping(b))
        return;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        if (transient(res)) {
            release_batch(b, res ? PQresultErrorMessage(res) : errstr);
            return;
        }
        /* One bad record must not hold back the others for good: each goes in on its own, and one PostgreSQL still
         * refuses is set aside. */
        fm_warn("records: PostgreSQL refused a batch of %zu records (%s): inserting them one by one", b->read,
                PQresultErrorMessage(res));
        b->alone = 0;
        insert_alone(b);
        return;
    }
    f->logged_failure = 0;
    f->failures = 0;
    FM_METRICS_COUNT("fm_records_flushed_total", NULL, (double)b->read);
    FM_METRICS_COUNT("fm_records_flush_batches_total", NULL, 1);
    forget_batch(b);
    int again = b->count == FLUSH_BATCH_MAX; /* a full batch: the backlog may hold more, go on now */
    batch_end(b);
    if (again)
        batch_start(f);
}

static void on_alone_inserted(PGresult *res, const char *errstr, void *data)
{
    batch_t *b = data;
    if (stopping(b))
        return;
    size_t i = b->alone;
    if (res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK) {
        FM_METRICS_COUNT("fm_records_flushed_total", NULL, 1);
    } else if (transient(res)) {
        release_batch(b, res ? PQresultErrorMessage(res) : errstr); /* those already in go in again: a no-op */
        return;
    } else {
        /* Kept aside for a person to look at (until the record would have expired), out of the backlog. */
        const char *id = b->recs[i].id;
        fm_error("records: PostgreSQL refuses record %s, set aside as fm:rec:refused:{%s}: %s", id, id,
                 PQresultErrorMessage(res));
        FM_METRICS_COUNT("fm_records_set_aside_total", NULL, 1);
        b->recs[i].aside = 1;
        char from[64], to[80];
        snprintf(from, sizeof(from), "fm:rec:{%s}", id);
        snprintf(to, sizeof(to), "fm:rec:refused:{%s}", id);
        const char *argv[] = {"RENAME", from, to};
        fm_redis_commandargv(flusher_redis(b->f), ignore_reply, NULL, 3, argv, NULL);
    }
    b->alone = i + 1;
    insert_alone(b);
}

/* Inserts the batch's next record on its own; once through, forgets the batch. */
static void insert_alone(batch_t *b)
{
    while (b->alone < b->count && b->recs[b->alone].json == NULL)
        b->alone++;
    if (b->alone == b->count) {
        b->f->logged_failure = 0;
        b->f->failures = 0;
        FM_METRICS_COUNT("fm_records_flush_batches_total", NULL, 1);
        forget_batch(b);
        batch_end(b);
        return;
    }
    text_t json = {0};
    text_add(&json, "[", 1);
    text_add(&json, b->recs[b->alone].json, strlen(b->recs[b->alone].json));
    text_add(&json, "]", 1);
    const char *params[] = {json.base};
    int rc = fm_pg_query(flusher_pg(b->f), on_alone_inserted, b, insert_sql, 1, params);
    free(json.base);
    if (rc != 0)
        release_batch(b, "pg shutting down");
}

static void on_batch_taken(redisReply *reply, const char *errstr, void *data)
{
    batch_t *b = data;
    records_flusher_t *f = b->f;
    if (stopping(b))
        return;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements != 4 ||
        reply->element[0]->type != REDIS_REPLY_ARRAY || reply->element[1]->type != REDIS_REPLY_ARRAY ||
        reply->element[0]->elements != reply->element[1]->elements) {
        if (reply != NULL && reply->type == REDIS_REPLY_ERROR)
            fm_warn("records: redis refused the batch script: %.200s", reply->str);
        batch_end(b); /* nothing taken, or leased and taken again when the lease ends */
        return;
    }
    if (reply->element[2]->type == REDIS_REPLY_INTEGER && reply->element[3]->type == REDIS_REPLY_INTEGER) {
        fm_metrics_gauge_set("fm_records_backlog", NULL, (double)reply->element[2]->integer);
        fm_metrics_gauge_set("fm_records_backlog_age_seconds", NULL, (double)reply->element[3]->integer / 1000.0);
    }
    const redisReply *ids = reply->element[0], *records = reply->element[1];
    if (ids->elements == 0) {
        batch_end(b);
        return;
    }
    if ((b->recs = calloc(ids->elements, sizeof(batch_record_t))) == NULL)
        h2o_fatal("out of memory");
    text_t json = {0};
    text_add(&json, "[", 1);
    for (size_t i = 0; i < ids->elements; ++i) {
        if (ids->element[i]->type != REDIS_REPLY_STRING)
            continue;
        batch_record_t *rec = &b->recs[b->count++];
        size_t at = json.len + (b->read > 0); /* after the comma */
        if (add_record(&json, records->element[i])) {
            const char *file_id = record_file_id(records->element[i]);
            if ((rec->json = strndup(json.base + at, json.len - at)) == NULL ||
                (file_id != NULL && (rec->file_id = strdup(file_id)) == NULL))
                h2o_fatal("out of memory");
            b->read++;
        }
        if ((rec->id = strdup(ids->element[i]->str)) == NULL)
            h2o_fatal("out of memory");
    }
    text_add(&json, "]", 1);
    if (b->count == FLUSH_BATCH_MAX) /* the backlog fills whole batches: another one in parallel */
        batch_start(f);
    if (b->read == 0) { /* every record was gone already */
        forget_batch(b);
        batch_end(b);
        free(json.base);
        return;
    }
    const char *params[] = {json.base};
    int rc = fm_pg_query(flusher_pg(f), on_batch_inserted, b, insert_sql, 1, params);
    free(json.base);
    if (rc != 0)
        release_batch(b, "pg shutting down");
}

/* Starts a batch in a free slot, unless none is free, PostgreSQL is down or the backoff after a failed batch runs. */
static void batch_start(records_flusher_t *f)
{
    if (f->thread->shutting_down || fm_now_ns() < f->retry_at_ns || fm_pg_connected(flusher_pg(f)) == 0)
        return;
    batch_t *b = NULL;
    for (size_t i = 0; i < FLUSH_SLOTS && b == NULL; ++i)
        if (!f->batches[i].busy)
            b = &f->batches[i];
    if (b == NULL)
        return;
    b->busy = 1;
    char max[16], lease[24];
    snprintf(max, sizeof(max), "%d", FLUSH_BATCH_MAX);
    /* A batch's insert ends within FM_PG_TIMEOUT_MS (then it fails and is released at once): the lease only matters
     * when the instance died with the batch in flight. */
    snprintf(lease, sizeof(lease), "%lld", (long long)fm_control->config.pg_timeout_ms + 5000);
    const char *argv[] = {"EVAL", take_script, "3", PENDING_KEY, FLUSHING_KEY, LEASE_KEY, max, lease, RECORD_FIELDS};
    if (fm_redis_commandargv(flusher_redis(f), on_batch_taken, b, (int)(sizeof(argv) / sizeof(argv[0])), argv, NULL) != 0)
        b->busy = 0;
}

static void on_flush_tick(h2o_timeout_entry_t *entry)
{
    records_flusher_t *f = H2O_STRUCT_FROM_MEMBER(records_flusher_t, entry, entry);
    h2o_timeout_link(f->thread->ctx.loop, &f->interval, &f->entry);
    batch_start(f);
}

records_flusher_t *fm_records_flusher_start(fm_thread_t *thread)
{
    records_flusher_t *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return NULL;
    f->thread = thread;
    for (size_t i = 0; i < FLUSH_SLOTS; ++i) {
        f->batches[i].f = f;
        f->batches[i].alone = SIZE_MAX;
    }
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
    for (size_t i = 0; i < FLUSH_SLOTS; ++i)
        batch_end(&f->batches[i]);
    free(f);
}
