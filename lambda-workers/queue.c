/*
 * queue: the worker threads reading the `jobs` stream and the housekeeper beside them (queue.h, docs/workers.md).
 * Everything here is blocking on purpose: a worker thread does one job at a time with its own connections.
 */
#include "queue.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "log.h"
#include "metrics.h"
#include "process.h"
#include "rekey.h"

#define RECLAIM_INTERVAL_MS 5000 /* XAUTOCLAIM of dead consumers' entries */
#define MOVE_INTERVAL_MS 500     /* due retries back onto the stream */
#define GAUGE_INTERVAL_MS 2000   /* queue depth gauges */
#define WORKER_KEY_TTL_S "30"    /* fm:worker:{consumer} */
#define RECONNECT_PAUSE_MS 1000

struct fm_queue {
    const fm_config_t *cfg;
    size_t count;
    fm_worker_t **workers;
    pthread_t *threads;
    int *running; /* per thread: 1 until its loop returned */
    fm_worker_t *keeper;
    pthread_t keeper_thread;
    int keeper_started;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int stopping;        /* no new jobs */
    int keeper_stop;     /* the workers are gone: the housekeeper ends */
    uint64_t abandon_at; /* fm_mono_ms deadline of in-flight jobs once stopping */
};

/* Lua: refresh / release a lock only while it is still ours (another consumer may hold it after expiry). A lock that
 * expired while Redis was down (its PX runs on in the append-only file) is taken back: the job is still in our hands,
 * and without it another worker would start the job again when Redis returns and count our run as a dead one. */
static const char LOCK_REFRESH_LUA[] =
    "local v = redis.call('GET', KEYS[1]) "
    "if v == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end "
    "if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end return 0";
static const char LOCK_RELEASE_LUA[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";


uint64_t fm_queue_abandon_at(fm_queue_t *q)
{
    pthread_mutex_lock(&q->lock);
    uint64_t at = q->stopping ? q->abandon_at : 0;
    pthread_mutex_unlock(&q->lock);
    return at;
}

static int stopping(fm_queue_t *q)
{
    pthread_mutex_lock(&q->lock);
    int s = q->stopping;
    pthread_mutex_unlock(&q->lock);
    return s;
}

/* Sleeps up to ms, waking at once when the queue stops. */
static void nap(fm_queue_t *q, uint64_t ms, int *flag)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)(ms / 1000);
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&q->lock);
    while (!*flag && pthread_cond_timedwait(&q->wake, &q->lock, &until) != ETIMEDOUT)
        ;
    pthread_mutex_unlock(&q->lock);
}

static int ensure_group(fm_worker_t *w)
{
    const char *argv[] = {"XGROUP", "CREATE", FM_QUEUE_STREAM, FM_QUEUE_GROUP, "0", "MKSTREAM"};
    redisReply *reply = fm_worker_cmd(w, 6, argv);
    if (reply == NULL)
        return -1;
    int ok = reply->type != REDIS_REPLY_ERROR || strncmp(reply->str, "BUSYGROUP", 9) == 0;
    if (!ok)
        fm_warn("redis: XGROUP CREATE: %s", reply->str);
    freeReplyObject(reply);
    return ok ? 0 : -1;
}

/* A bulk string that is exactly `name` (no NUL inside: "job_id\0x" is another field). */
static int field_is(const redisReply *k, const char *name)
{
    return k->type == REDIS_REPLY_STRING && k->len == strlen(name) && memcmp(k->str, name, k->len) == 0;
}

/* Copies a bulk string value when it fits with its NUL and holds none; else leaves `out` as it was. */
static void field_copy(const redisReply *v, char *out, size_t out_size)
{
    if (v->type != REDIS_REPLY_STRING || v->len >= out_size || memchr(v->str, '\0', v->len) != NULL)
        return;
    memcpy(out, v->str, v->len);
    out[v->len] = '\0';
}

int fm_job_entry_parse(const redisReply *item, fm_entry_t *e)
{
    memset(e, 0, sizeof(*e));
    if (item == NULL || item->type != REDIS_REPLY_ARRAY || item->elements != 2)
        return -1;
    const redisReply *id = item->element[0], *fields = item->element[1];
    if (id->type != REDIS_REPLY_STRING || id->len == 0 || id->len >= sizeof(e->id) ||
        memchr(id->str, '\0', id->len) != NULL || fields->type != REDIS_REPLY_ARRAY)
        return -1;
    memcpy(e->id, id->str, id->len);
    for (size_t i = 0; i + 1 < fields->elements; i += 2) {
        const redisReply *k = fields->element[i], *v = fields->element[i + 1];
        if (field_is(k, "job_id"))
            field_copy(v, e->job_id, sizeof(e->job_id));
        else if (field_is(k, "request_id"))
            field_copy(v, e->request_id, sizeof(e->request_id));
    }
    return 0;
}

static void entry_drop(fm_worker_t *w, const char *id)
{
    const char *ack[] = {"XACK", FM_QUEUE_STREAM, FM_QUEUE_GROUP, id};
    const char *del[] = {"XDEL", FM_QUEUE_STREAM, id};
    freeReplyObject(fm_worker_cmd(w, 4, ack));
    freeReplyObject(fm_worker_cmd(w, 3, del));
}

/* Processes the entries of an XREADGROUP stream list or an XAUTOCLAIM entry list. */
static void process_entries(fm_worker_t *w, const redisReply *entries, int reclaimed)
{
    for (size_t i = 0; i < entries->elements && !stopping(w->queue); i++) {
        fm_entry_t e;
        if (fm_job_entry_parse(entries->element[i], &e) != 0)
            continue; /* deleted meanwhile (XAUTOCLAIM answers nil for it) */
        e.reclaimed = reclaimed;
        if (!fm_uuid_text_valid(e.job_id)) {
            fm_warn("jobs: entry %s has no valid job_id; dropped", e.id);
            entry_drop(w, e.id);
            continue;
        }
        fm_worker_process(w, &e);
    }
}

/* XAUTOCLAIM: entries idle longer than the visibility timeout belong to a dead consumer; take them over. */
static void reclaim(fm_worker_t *w)
{
    char idle[24];
    snprintf(idle, sizeof(idle), "%lld", (long long)w->cfg->job_visibility_ms);
    const char *argv[] = {"XAUTOCLAIM", FM_QUEUE_STREAM, FM_QUEUE_GROUP, w->consumer, idle, "0-0", "COUNT", "10"};
    redisReply *reply = fm_worker_cmd(w, 8, argv);
    if (reply == NULL)
        return;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements >= 2 && reply->element[1]->type == REDIS_REPLY_ARRAY) {
        if (reply->element[1]->elements > 0)
            fm_info("jobs: %s reclaimed %zu entries of dead consumers", w->consumer, reply->element[1]->elements);
        process_entries(w, reply->element[1], 1);
    } else if (reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "NOGROUP", 7) == 0) {
        ensure_group(w);
    } else if (reply->type == REDIS_REPLY_ERROR) {
        fm_warn("redis: XAUTOCLAIM: %s", reply->str);
    }
    freeReplyObject(reply);
}

/* XREADGROUP … BLOCK: one new entry, or nothing after FM_QUEUE_READ_BLOCK_MS. Returns -1 when Redis failed. */
static int read_new(fm_worker_t *w)
{
    char block[16];
    snprintf(block, sizeof(block), "%d", FM_QUEUE_READ_BLOCK_MS);
    const char *argv[] = {"XREADGROUP", "GROUP", FM_QUEUE_GROUP, w->consumer,     "COUNT", "1",
                          "BLOCK",      block,   "STREAMS",      FM_QUEUE_STREAM, ">"};
    redisReply *reply = fm_worker_cmd(w, 11, argv);
    if (reply == NULL)
        return -1;
    int rc = 0;
    if (reply->type == REDIS_REPLY_ARRAY) {
        for (size_t s = 0; s < reply->elements; s++) {
            const redisReply *stream = reply->element[s];
            if (stream->type == REDIS_REPLY_ARRAY && stream->elements == 2 &&
                stream->element[1]->type == REDIS_REPLY_ARRAY)
                process_entries(w, stream->element[1], 0);
        }
    } else if (reply->type == REDIS_REPLY_ERROR) {
        if (strncmp(reply->str, "NOGROUP", 7) != 0)
            fm_warn("redis: XREADGROUP: %s", reply->str);
        rc = ensure_group(w);
    }
    freeReplyObject(reply);
    return rc;
}

typedef struct {
    fm_queue_t *q;
    size_t slot;
} thread_arg_t;

/* The housekeeper's heartbeat period: visibility/3, so two beats can be missed; at most 10 s, so fm:worker keys
 * (EX 30) stay. */
static uint64_t keeper_beat_ms(const fm_config_t *cfg)
{
    uint64_t beat_ms = (uint64_t)cfg->job_visibility_ms / 3;
    return beat_ms > 10000 ? 10000 : beat_ms;
}

static void *worker_main(void *arg)
{
    thread_arg_t *ta = arg;
    fm_queue_t *q = ta->q;
    fm_worker_t *w = q->workers[ta->slot];
    uint64_t next_reclaim = fm_mono_ms() + 1000;
    int group_ready = 0, was_down = 0;
    while (!stopping(q)) {
        if (fm_worker_redis(w) != 0 || (!group_ready && ensure_group(w) != 0)) {
            was_down = 1;
            nap(q, RECONNECT_PAUSE_MS, &q->stopping);
            continue;
        }
        if (was_down) {
            /* Redis is back after an outage in which no heartbeat went through: every in-flight entry looks idle
             * and its lock may have expired. Reclaim only once the live workers' housekeepers have beaten again
             * (XCLAIM, lock taken back), so that a job still being worked on is not started a second time and
             * its run counted as a dead worker's. */
            was_down = 0;
            next_reclaim = fm_mono_ms() + keeper_beat_ms(w->cfg) + 2000;
        }
        group_ready = 1;
        if (fm_mono_ms() >= next_reclaim) {
            next_reclaim = fm_mono_ms() + RECLAIM_INTERVAL_MS;
            reclaim(w);
            continue;
        }
        if (read_new(w) != 0) {
            was_down = 1;
            nap(q, RECONNECT_PAUSE_MS, &q->stopping);
        }
    }
    pthread_mutex_lock(&q->lock);
    q->running[ta->slot] = 0;
    pthread_cond_broadcast(&q->wake);
    pthread_mutex_unlock(&q->lock);
    free(ta);
    return NULL;
}

/* ---- the housekeeper: heartbeat, live workers, due retries, gauges, cleanup scan --------------------------------- */

static void heartbeat_one(fm_worker_t *keeper, fm_worker_t *w, const char *host)
{
    char job[40], entry[64];
    uint64_t since;
    unsigned long long done;
    /* Held across the refresh: the worker clears its in-flight job (set_inflight) before it releases the lock, so a
     * lock this beat takes back is always released by the worker afterwards, never left behind a finished job (where
     * it would make the job's next retry look like a duplicate delivery). */
    pthread_mutex_lock(&w->inflight_lock);
    memcpy(job, w->inflight_job, sizeof(job));
    memcpy(entry, w->inflight_entry, sizeof(entry));
    since = w->inflight_since_ms;
    done = w->jobs_done;
    if (job[0] != '\0' && !fm_worker_must_abandon(w)) {
        char visibility[24], lock_key[64];
        snprintf(visibility, sizeof(visibility), "%lld", (long long)w->cfg->job_visibility_ms);
        snprintf(lock_key, sizeof(lock_key), "fm:joblock:{%s}", job);
        if (entry[0] != '\0') { /* resets the entry's idle time, so XAUTOCLAIM leaves it to us */
            const char *claim[] = {"XCLAIM", FM_QUEUE_STREAM, FM_QUEUE_GROUP, w->consumer, "0", entry, "JUSTID"};
            freeReplyObject(fm_worker_cmd(keeper, 7, claim));
        }
        const char *refresh[] = {"EVAL", LOCK_REFRESH_LUA, "1", lock_key, w->consumer, visibility};
        redisReply *r = fm_worker_cmd(keeper, 6, refresh);
        if (r != NULL && r->type == REDIS_REPLY_INTEGER && r->integer == 2)
            fm_info("jobs: lock of %s had expired (Redis was away); taken back by %s", job, w->consumer);
        freeReplyObject(r);
    }
    pthread_mutex_unlock(&w->inflight_lock);
    cJSON *doc = cJSON_CreateObject();
    cJSON_AddStringToObject(doc, "host", host);
    cJSON_AddNumberToObject(doc, "pid", (double)getpid());
    cJSON_AddNumberToObject(doc, "thread", w->index);
    cJSON_AddStringToObject(doc, "job_id", job);
    cJSON_AddStringToObject(doc, "entry_id", entry);
    cJSON_AddNumberToObject(doc, "since_ms", job[0] ? (double)since : 0);
    cJSON_AddNumberToObject(doc, "jobs", (double)done);
    cJSON_AddNumberToObject(doc, "seen_ms", (double)fm_wall_ms());
    char *json = cJSON_PrintUnformatted(doc);
    cJSON_Delete(doc);
    char key[200];
    snprintf(key, sizeof(key), "fm:worker:{%s}", w->consumer);
    const char *set[] = {"SET", key, json ? json : "{}", "EX", WORKER_KEY_TTL_S};
    freeReplyObject(fm_worker_cmd(keeper, 5, set));
    free(json);
}

/* Due retries back onto the stream, under a short lock so one process moves them at a time. The entry is added
 * before the id leaves the sorted set: a crash in between makes a duplicate delivery (harmless), never a loss. */
static void move_due(fm_worker_t *keeper)
{
    const char *lock[] = {"SET", "fm:jobs:mover", keeper->consumer, "NX", "PX", "5000"};
    redisReply *got = fm_worker_cmd(keeper, 6, lock);
    int mine = got != NULL && got->type == REDIS_REPLY_STATUS;
    freeReplyObject(got);
    if (!mine)
        return;
    char now[24];
    snprintf(now, sizeof(now), "%llu", (unsigned long long)fm_wall_ms());
    const char *range[] = {"ZRANGEBYSCORE", FM_QUEUE_DELAYED, "-inf", now, "LIMIT", "0", "50"};
    redisReply *due = fm_worker_cmd(keeper, 7, range);
    for (size_t i = 0; due != NULL && due->type == REDIS_REPLY_ARRAY && i < due->elements; i++) {
        const char *job_id = due->element[i]->type == REDIS_REPLY_STRING ? due->element[i]->str : "";
        int drop = !fm_uuid_text_valid(job_id);
        if (!drop) {
            const char *params[] = {job_id};
            PGresult *res = fm_worker_sql(keeper,
                                          "SELECT type, coalesce(file_id::text, ''), coalesce(upload_id::text, ''),"
                                          " status = 'RETRY', coalesce(traceparent, '') FROM jobs WHERE id = $1::uuid",
                                          1, params);
            if (res == NULL)
                break; /* PostgreSQL down: the ids stay due */
            drop = PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 3), "t") != 0;
            if (!drop) {
                const char *xadd[] = {"XADD",        FM_QUEUE_STREAM,
                                      "MAXLEN",      "~",
                                      "1000000",     "*",
                                      "job_id",      job_id,
                                      "type",        PQgetvalue(res, 0, 0),
                                      "file_id",     PQgetvalue(res, 0, 1),
                                      "upload_id",   PQgetvalue(res, 0, 2),
                                      "request_id",  "",
                                      "traceparent", PQgetvalue(res, 0, 4)};
                redisReply *added = fm_worker_cmd(keeper, 18, xadd);
                int ok = added != NULL && added->type == REDIS_REPLY_STRING;
                freeReplyObject(added);
                if (!ok) {
                    PQclear(res);
                    break;
                }
                fm_info("jobs: retry of %s is due, back on the stream", job_id);
            }
            PQclear(res);
        }
        const char *rem[] = {"ZREM", FM_QUEUE_DELAYED, job_id};
        freeReplyObject(fm_worker_cmd(keeper, 3, rem));
    }
    freeReplyObject(due);
    const char *unlock[] = {"EVAL", LOCK_RELEASE_LUA, "1", "fm:jobs:mover", keeper->consumer};
    freeReplyObject(fm_worker_cmd(keeper, 5, unlock));
}

static long long reply_integer(fm_worker_t *keeper, int argc, const char **argv, int pending_summary)
{
    redisReply *r = fm_worker_cmd(keeper, argc, argv);
    long long v = -1;
    if (r != NULL && r->type == REDIS_REPLY_INTEGER)
        v = r->integer;
    else if (pending_summary && r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
             r->element[0]->type == REDIS_REPLY_INTEGER)
        v = r->element[0]->integer; /* XPENDING summary: [count, min, max, consumers] */
    freeReplyObject(r);
    return v;
}

static void sample_gauges(fm_worker_t *keeper)
{
    const char *xlen[] = {"XLEN", FM_QUEUE_STREAM};
    const char *pending[] = {"XPENDING", FM_QUEUE_STREAM, FM_QUEUE_GROUP};
    const char *delayed[] = {"ZCARD", FM_QUEUE_DELAYED};
    const char *dead[] = {"XLEN", FM_QUEUE_DEAD};
    long long v;
    if ((v = reply_integer(keeper, 2, xlen, 0)) >= 0)
        fm_metrics_gauge_set("fm_worker_queue_depth", "queue=\"stream\"", (double)v);
    if ((v = reply_integer(keeper, 3, pending, 1)) >= 0)
        fm_metrics_gauge_set("fm_worker_queue_depth", "queue=\"pending\"", (double)v);
    if ((v = reply_integer(keeper, 2, delayed, 0)) >= 0)
        fm_metrics_gauge_set("fm_worker_queue_depth", "queue=\"delayed\"", (double)v);
    if ((v = reply_integer(keeper, 2, dead, 0)) >= 0)
        fm_metrics_gauge_set("fm_worker_queue_depth", "queue=\"dead\"", (double)v);
}

static void *keeper_main(void *arg)
{
    fm_queue_t *q = arg;
    fm_worker_t *keeper = q->keeper;
    char host[128] = "";
    gethostname(host, sizeof(host) - 1);
    uint64_t beat_ms = keeper_beat_ms(q->cfg);
    uint64_t next_beat = 0, next_move = 0, next_gauge = 0, next_cleanup = fm_mono_ms() + 1000;
    for (;;) {
        pthread_mutex_lock(&q->lock);
        int done = q->keeper_stop, quiet = q->stopping;
        pthread_mutex_unlock(&q->lock);
        if (done)
            break;
        uint64_t now = fm_mono_ms();
        if (fm_worker_redis(keeper) == 0) {
            if (now >= next_beat) {
                next_beat = now + beat_ms;
                for (size_t i = 0; i < q->count; i++)
                    heartbeat_one(keeper, q->workers[i], host);
            }
            if (!quiet && now >= next_move) {
                next_move = now + MOVE_INTERVAL_MS;
                move_due(keeper);
            }
            if (now >= next_gauge) {
                next_gauge = now + GAUGE_INTERVAL_MS;
                sample_gauges(keeper);
            }
            if (!quiet && now >= next_cleanup) { /* tries every interval; the lock makes it one process per round */
                next_cleanup = now + (uint64_t)q->cfg->cleanup_interval_s * 1000u;
                fm_cleanup_scan(keeper);
                fm_rekey_scan(keeper);
            }
        }
        nap(q, 100, &q->keeper_stop);
    }
    for (size_t i = 0; i < q->count; i++) { /* gone: no longer a live worker */
        char key[200];
        snprintf(key, sizeof(key), "fm:worker:{%s}", q->workers[i]->consumer);
        const char *del[] = {"DEL", key};
        freeReplyObject(fm_worker_cmd(keeper, 2, del));
    }
    return NULL;
}

/* ---- start and stop --------------------------------------------------------------------------------------------- */

static void describe_metrics(void)
{
    fm_metrics_describe("fm_worker_jobs_total", FM_METRIC_COUNTER, "Jobs handled, by type and outcome");
    fm_metrics_describe("fm_worker_step_seconds", FM_METRIC_HISTOGRAM, "Duration of each processing step");
    fm_metrics_describe("fm_worker_queue_depth", FM_METRIC_GAUGE,
                        "Entries in the job stream, pending in the group, delayed retries, dead letters");
    fm_metrics_describe(
        "fm_worker_retries_total", FM_METRIC_COUNTER,
        "Failed attempts put back for a retry, by cause (dependency: S3, clamd, PostgreSQL, an edge, "
        "the temp disk, a stop -- no attempt used; content: counts toward FM_JOB_MAX_ATTEMPTS) and step");
    fm_metrics_describe("fm_worker_postgresql_waits_total", FM_METRIC_COUNTER,
                        "Started jobs that waited for PostgreSQL to come back rather than be run again");
    fm_metrics_describe("fm_worker_dead_letters_total", FM_METRIC_COUNTER, "Jobs FAILED for good (jobs:dead)");
    fm_metrics_describe("fm_worker_scans_total", FM_METRIC_COUNTER,
                        "Housekeeping scans this worker ran (it held the scan's lock), by the type of job they make");
}

static void queue_free(fm_queue_t *q)
{
    for (size_t i = 0; i < q->count; i++)
        fm_worker_free(q->workers[i]);
    fm_worker_free(q->keeper);
    free(q->workers);
    free(q->threads);
    free(q->running);
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->wake);
    free(q);
}

fm_queue_t *fm_queue_start(const fm_config_t *cfg)
{
    describe_metrics();
    fm_queue_t *q = calloc(1, sizeof(*q));
    if (q == NULL)
        abort();
    q->cfg = cfg;
    q->count = (size_t)cfg->worker_threads;
    q->workers = calloc(q->count, sizeof(*q->workers));
    q->threads = calloc(q->count, sizeof(*q->threads));
    q->running = calloc(q->count, sizeof(*q->running));
    if (q->workers == NULL || q->threads == NULL || q->running == NULL)
        abort();
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->wake, NULL);
    char host[128] = "", consumer[160], err[256] = "";
    gethostname(host, sizeof(host) - 1);
    for (size_t i = 0; i <= q->count; i++) {
        int keeper = i == q->count;
        if (keeper)
            snprintf(consumer, sizeof(consumer), "%.100s-%d-keeper", host, (int)getpid());
        else
            snprintf(consumer, sizeof(consumer), "%.100s-%d-%zu", host, (int)getpid(), i);
        fm_worker_t *w = fm_worker_new(cfg, consumer, keeper ? -1 : (int)i, err, sizeof(err));
        if (w == NULL) {
            fm_error("worker: cannot make the S3 client: %s", err);
            q->count = i;
            queue_free(q);
            return NULL;
        }
        w->queue = q;
        w->abandon_at = fm_queue_abandon_at;
        if (keeper)
            q->keeper = w;
        else
            q->workers[i] = w;
    }
    for (size_t i = 0; i < q->count; i++) {
        thread_arg_t *ta = malloc(sizeof(*ta));
        if (ta == NULL)
            abort();
        *ta = (thread_arg_t){q, i};
        q->running[i] = 1;
        if (pthread_create(&q->threads[i], NULL, worker_main, ta) != 0)
            abort(); /* thread creation fails only when the process is out of resources */
    }
    if (pthread_create(&q->keeper_thread, NULL, keeper_main, q) != 0)
        abort();
    q->keeper_started = 1;
    fm_info("worker: %zu job threads on stream %s, group %s", q->count, FM_QUEUE_STREAM, FM_QUEUE_GROUP);
    return q;
}

int fm_queue_stop(fm_queue_t *q, uint64_t graceful_ms)
{
    pthread_mutex_lock(&q->lock);
    q->stopping = 1;
    q->abandon_at = fm_mono_ms() + graceful_ms;
    pthread_cond_broadcast(&q->wake);
    /* The worker threads end after their current job; past the graceful delay a job stops at the next step
     * boundary. A step itself cannot be cut short: give it a moment more, then report the threads stuck. */
    uint64_t give_up = q->abandon_at + 2000;
    size_t alive;
    for (;;) {
        alive = 0;
        for (size_t i = 0; i < q->count; i++)
            alive += (size_t)q->running[i];
        if (alive == 0 || fm_mono_ms() >= give_up)
            break;
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 100 * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&q->wake, &q->lock, &until);
    }
    pthread_mutex_unlock(&q->lock);
    if (alive != 0) {
        fm_warn("worker: %zu job threads still inside a step after the graceful delay; their jobs stay pending "
                "and are reclaimed after FM_JOB_VISIBILITY_MS",
                alive);
        return -1; /* the threads use the state: it is not freed */
    }
    for (size_t i = 0; i < q->count; i++)
        pthread_join(q->threads[i], NULL);
    pthread_mutex_lock(&q->lock);
    q->keeper_stop = 1;
    pthread_cond_broadcast(&q->wake);
    pthread_mutex_unlock(&q->lock);
    if (q->keeper_started)
        pthread_join(q->keeper_thread, NULL);
    queue_free(q);
    return 0;
}
