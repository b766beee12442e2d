/*
 * Access events (docs/downloads.md "Access events"): every answer served from the cache (200, 206, 304) becomes one
 * entry of the Redis Stream FM_EDGE_EVENTS_STREAM — key, variant, cache outcome, status, bytes, client address,
 * time — for download counts. Each loop thread buffers its events and sends them every second (thread_tick) or at
 * 100, one XADD … MAXLEN ~ 1000000 each over the thread's own Redis connection (common/redis.h, pipelined by
 * hiredis). Best effort: when Redis is down or slow the events are dropped and counted
 * (fm_edge_events_dropped_total); a download never waits for Redis.
 *
 * The thread's connection is also the one /p/ asks whether a key is public (public.c, fm_edge_redis): it is made
 * even with FM_EDGE_EVENTS=0, which only turns the events off.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "edge.h"
#include "log.h"
#include "metrics.h"
#include "redis.h"

#define EVENTS_BATCH 100
#define STREAM_MAXLEN "1000000"

typedef struct {
    char key[FM_EDGE_KEY_MAX + 1];
    char file[37]; /* the file the URL was for (its cache partition), "" when none */
    char variant[128];
    char outcome[16];
    char ip[64];
    int status;
    uint64_t bytes;
    long long time_ms;
} event_t;

typedef struct {
    fm_redis_t *redis;
    h2o_evloop_t *loop;
    int enabled; /* FM_EDGE_EVENTS */
    size_t count;
    size_t pending; /* XADDs sent, not yet answered */
    event_t items[EVENTS_BATCH];
} events_t;

static __thread events_t *events;

int fm_edge_events_thread_init(fm_thread_t *thread)
{
    const fm_config_t *cfg = fm_edge.cfg;
    char host[256], password[256];
    int port, db;
    if (fm_redis_url_parse(cfg->redis_url, host, sizeof(host), &port, password, sizeof(password), &db) != 0) {
        fm_error("edge events: cannot parse FM_REDIS_URL");
        return -1;
    }
    events_t *ev = calloc(1, sizeof(*ev));
    if (ev == NULL)
        return -1;
    ev->loop = thread->loop;
    ev->enabled = (int)cfg->edge_events;
    ev->redis = fm_redis_create(thread->loop, host, port, password[0] ? password : NULL, db, 1,
                                (uint64_t)cfg->redis_timeout_ms);
    memset(password, 0, sizeof(password));
    if (ev->redis == NULL) {
        free(ev);
        fm_error("edge: cannot create the Redis connection");
        return -1;
    }
    /* A moment to connect, so the first downloads' events are not dropped; the edge serves without Redis too. */
    for (uint64_t deadline = fm_now_ns() + 1000000000u; fm_redis_connected(ev->redis) == 0 && fm_now_ns() < deadline;)
        h2o_evloop_run(thread->loop, 10);
    events = ev;
    return 0;
}

fm_redis_t *fm_edge_redis(void)
{
    return events != NULL ? events->redis : NULL;
}

static void on_xadd(redisReply *reply, const char *errstr, void *data)
{
    events_t *ev = data;
    ev->pending--;
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        fm_metrics_counter_add("fm_edge_events_dropped_total", NULL, 1);
        fm_debug("edge events: XADD failed: %s", reply != NULL ? reply->str : errstr);
    } else {
        fm_metrics_counter_add("fm_edge_events_total", NULL, 1);
    }
}

static void flush(events_t *ev)
{
    const char *stream = fm_edge.cfg->edge_events_stream;
    for (size_t i = 0; i < ev->count; ++i) {
        event_t *e = &ev->items[i];
        char status[16], bytes[32], time_ms[32];
        snprintf(status, sizeof(status), "%d", e->status);
        snprintf(bytes, sizeof(bytes), "%llu", (unsigned long long)e->bytes);
        snprintf(time_ms, sizeof(time_ms), "%lld", e->time_ms);
        const char *argv[] = {"XADD",    stream,     "MAXLEN", "~",       STREAM_MAXLEN, "*",     "key",
                              e->key,    "file",     e->file,  "variant", e->variant,    "cache", e->outcome,
                              "status",  status,     "bytes",  bytes,     "ip",          e->ip,   "t",
                              time_ms};
        if (fm_redis_commandargv(ev->redis, on_xadd, ev, (int)(sizeof(argv) / sizeof(argv[0])), argv, NULL) == 0)
            ev->pending++;
        else
            fm_metrics_counter_add("fm_edge_events_dropped_total", NULL, 1);
    }
    ev->count = 0;
}

/* Copies at most size - 1 of the `len` bytes at `src` and a NUL (what snprintf("%.*s") would, four times per answer). */
static void copy_field(char *dst, size_t size, const char *src, size_t len)
{
    if (len >= size)
        len = size - 1;
    memcpy(dst, src, len);
    dst[len] = '\0';
}

void fm_edge_event(const char *cache_key, const char *outcome, int status, uint64_t bytes, const char *ip)
{
    events_t *ev = events;
    if (ev == NULL || !ev->enabled)
        return;
    event_t *e = &ev->items[ev->count++];
    const char *sep = strchr(cache_key, FM_EDGE_VARIANT_SEP);
    size_t key_len = sep != NULL ? (size_t)(sep - cache_key) : strlen(cache_key);
    copy_field(e->key, sizeof(e->key), cache_key, key_len);
    /* "key" SEP "f=" file [SEP variant parameters] (edge.h FM_EDGE_PARTITION) */
    const size_t partition_len = sizeof(FM_EDGE_PARTITION) - 1;
    e->file[0] = '\0';
    if (sep != NULL && strncmp(sep + 1, FM_EDGE_PARTITION, partition_len) == 0) {
        const char *file = sep + 1 + partition_len, *after = strchr(file, FM_EDGE_VARIANT_SEP);
        copy_field(e->file, sizeof(e->file), file, after != NULL ? (size_t)(after - file) : strlen(file));
        sep = after;
    }
    copy_field(e->variant, sizeof(e->variant), sep != NULL ? sep + 1 : "", sep != NULL ? strlen(sep + 1) : 0);
    copy_field(e->outcome, sizeof(e->outcome), outcome, strlen(outcome));
    copy_field(e->ip, sizeof(e->ip), ip, strlen(ip));
    e->status = status;
    e->bytes = bytes;
    struct timeval now;
    gettimeofday(&now, NULL);
    e->time_ms = (long long)now.tv_sec * 1000 + now.tv_usec / 1000;
    if (ev->count == EVENTS_BATCH)
        flush(ev);
}

void fm_edge_events_tick(void)
{
    if (events != NULL && events->count > 0)
        flush(events);
}

void fm_edge_events_thread_dispose(fm_thread_t *thread)
{
    events_t *ev = events;
    if (ev == NULL)
        return;
    flush(ev);
    /* Bounded wait for Redis to take the last batch: fm_redis_destroy would fail what is still in flight. */
    for (uint64_t deadline = fm_now_ns() + 2000000000u; ev->pending > 0 && fm_now_ns() < deadline;)
        h2o_evloop_run(thread->loop, 10);
    fm_redis_destroy(ev->redis);
    free(ev);
    events = NULL;
}
