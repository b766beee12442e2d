/*
 * The flushers of the records written behind (records.c has the request side: the scripts that store a record, the
 * one record a request needs now, and the record's JSON shape for the insert). Every event-loop thread runs one
 * flusher on its own Redis and PostgreSQL pools, started and stopped with the thread (main.c); all of its state is
 * that thread's, so nothing here locks. A flusher takes a batch of the backlog in one Redis script (ZPOPMIN: the
 * flushers of all threads and instances never share a record), inserts it into PostgreSQL in one statement, then
 * forgets it in Redis; a batch PostgreSQL refuses is retried record by record, and a record refused on its own is
 * set aside. The Redis layout and the bound on the backlog: records.c's header, docs/decisions.md "Records written
 * behind".
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"
#include "log.h"
#include "metrics.h"
#include "quota.h"
#include "records_internal.h"

/* Records per batch, at most: a take script of this size keeps Redis busy ~1 ms and its insert far below
 * FM_PG_TIMEOUT_MS (docs/benchmarks.md "Records written behind"). A batch takes the whole backlog up to this. */
#define FLUSH_BATCH_MAX 1000
/* Batches in flight per event-loop thread: a second one starts while the backlog fills whole batches. */
#define FLUSH_SLOTS 2
/* After a batch PostgreSQL did not take, the next try waits this much longer, doubling up to FLUSH_BACKOFF_MAX_MS. */
#define FLUSH_BACKOFF_MAX_MS 1000
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

/* One record id of a batch. Every id is forgotten once the batch is in PostgreSQL (a record found gone was brought
 * in by fm_records_ensure, or expired). */
typedef struct {
    char *id, *file_id, *json; /* file_id and json NULL: the record was gone */
    char *owner_id;            /* for fm_tree_changed once the record is in PostgreSQL; NULL when gone */
    long long size;            /* for the owner's quota copy (quota.h) */
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
        free(b->recs[i].owner_id);
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
    /* The records' hashes go with the quota accounting (quota.c fm_quota_landed: deletes those that landed, and
     * moves their bytes from "written behind" to "in PostgreSQL" on their owners' copies exactly once). */
    fm_quota_landing_t *landings = calloc(b->count, sizeof(*landings));
    char (*rec_keys)[64] = calloc(b->count, 64);
    if (landings == NULL || rec_keys == NULL)
        h2o_fatal("out of memory");
    for (size_t i = 0; i < b->count; ++i) {
        batch_record_t *rec = &b->recs[i];
        zrem[nzrem++] = rec->id;
        snprintf(rec_keys[i], 64, "fm:rec:{%s}", rec->id);
        landings[i] = (fm_quota_landing_t){rec_keys[i], rec->owner_id, rec->size, !rec->aside};
        if (rec->file_id != NULL && asprintf(&keys[nkeys++], "fm:recf:{%s}", rec->file_id) < 0)
            h2o_fatal("out of memory");
    }
    for (int i = 0; i < nkeys; ++i)
        del[ndel++] = keys[i];
    /* New files in PostgreSQL: their owners' listings show them now (fm_tree_changed: one INCR per owner of the
     * batch; a batch is usually one or a few owners, so consecutive repeats are skipped). */
    const char *last_owner = NULL;
    for (size_t i = 0; i < b->count; ++i) {
        const char *owner = b->recs[i].owner_id;
        if (owner != NULL && !b->recs[i].aside && (last_owner == NULL || strcmp(owner, last_owner) != 0))
            fm_tree_changed((fm_control_thread_t *)b->f->thread->data, owner);
        if (owner != NULL)
            last_owner = owner;
    }
    fm_redis_t *redis = flusher_redis(b->f);
    fm_quota_landed(redis, b->count, landings);
    free(landings);
    free(rec_keys);
    if (ndel > 1)
        fm_redis_commandargv(redis, fm_records_ignore_reply, NULL, ndel, del, NULL);
    fm_redis_commandargv(redis, fm_records_ignore_reply, NULL, nzrem, zrem, NULL);
    zrem[1] = LEASE_KEY;
    fm_redis_commandargv(redis, fm_records_ignore_reply, NULL, nzrem, zrem, NULL);
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
    fm_redis_commandargv(flusher_redis(f), fm_records_ignore_reply, NULL, argc, argv, NULL);
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
    forget_batch(b); /* which also drops the owners' listings (fm_tree_changed) */
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
        FM_METRICS_COUNT("fm_records_flushed_total", NULL, 1); /* its listing: once the batch is forgotten */
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
        fm_redis_commandargv(flusher_redis(b->f), fm_records_ignore_reply, NULL, 3, argv, NULL);
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
    fm_records_text_t json = {0};
    fm_records_text_add(&json, "[", 1);
    fm_records_text_add(&json, b->recs[b->alone].json, strlen(b->recs[b->alone].json));
    fm_records_text_add(&json, "]", 1);
    const char *params[] = {json.base};
    int rc = fm_pg_query_prepared(flusher_pg(b->f), on_alone_inserted, b, fm_records_insert_sql, 1, params);
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
    fm_records_text_t json = {0};
    fm_records_text_add(&json, "[", 1);
    for (size_t i = 0; i < ids->elements; ++i) {
        if (ids->element[i]->type != REDIS_REPLY_STRING)
            continue;
        batch_record_t *rec = &b->recs[b->count++];
        size_t at = json.len + (b->read > 0); /* after the comma */
        if (fm_records_json_add(&json, records->element[i])) {
            const char *file_id = fm_records_file_id(records->element[i]);
            const char *owner_id = fm_records_owner_id(records->element[i]);
            rec->size = fm_records_size(records->element[i]);
            if ((rec->json = strndup(json.base + at, json.len - at)) == NULL ||
                (file_id != NULL && (rec->file_id = strdup(file_id)) == NULL) ||
                (owner_id != NULL && (rec->owner_id = strdup(owner_id)) == NULL))
                h2o_fatal("out of memory");
            b->read++;
        }
        if ((rec->id = strdup(ids->element[i]->str)) == NULL)
            h2o_fatal("out of memory");
    }
    fm_records_text_add(&json, "]", 1);
    if (b->count == FLUSH_BATCH_MAX) /* the backlog fills whole batches: another one in parallel */
        batch_start(f);
    if (b->read == 0) { /* every record was gone already */
        forget_batch(b);
        batch_end(b);
        free(json.base);
        return;
    }
    const char *params[] = {json.base};
    int rc = fm_pg_query_prepared(flusher_pg(f), on_batch_inserted, b, fm_records_insert_sql, 1, params);
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
