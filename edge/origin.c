/*
 * Origin fills with request coalescing. A miss looks the key up in a process-wide table of fills in flight: the
 * first request starts a fill on the offload pool (blocking libcurl GET from S3, written to a temp file in the
 * cache folder), later ones for the same key only join its waiter list. When the object is complete the fill
 * publishes it into the cache, takes itself out of the table (a request arriving after that is a cache hit), and
 * hands every waiter its own fd on the cached file through a message to the waiter's loop thread. Waiters are
 * served only once the whole object is on disk (no streaming while filling: docs/downloads.md says why).
 *
 * A variant render is the same kind of fill, keyed by the variant's cache key: its work renders from the cached
 * original (already open, handed over by serve.c) instead of fetching, so N concurrent requests for one variant
 * make one render.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "edge.h"
#include "log.h"
#include "metrics.h"

typedef struct edge_thread {
    h2o_multithread_receiver_t receiver;
    fm_thread_t *thread;
    size_t waiting; /* waiters of this thread not yet delivered */
} edge_thread_t;

typedef struct waiter {
    h2o_multithread_message_t message; /* first: the receiver hands it back by this link */
    struct waiter *next;
    fm_req_t *r;
    fm_edge_fill_cb cb;
    edge_thread_t *et;
    fm_edge_fill_result_t result;
} waiter_t;

typedef struct fill {
    struct fill *next;
    char hex[FM_EDGE_HEX_LEN + 1];
    char key[FM_EDGE_CACHE_KEY_MAX + 1];
    waiter_t *waiters;
    int purged;
    /* renders only */
    int is_render;
    fm_edge_variant_t variant;
    int src_fd;
    char src_etag[256];
} fill_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static fill_t *fills;
static atomic_size_t fills_inflight;
static pthread_key_t s3_key;
static pthread_once_t s3_key_once = PTHREAD_ONCE_INIT;
static atomic_uint tmp_counter;

static void free_s3(void *s3)
{
    fm_s3_free(s3);
}

static void make_s3_key(void)
{
    pthread_key_create(&s3_key, free_s3);
}

/* fm_s3_t is not thread-safe: one per offload thread, freed when the thread ends. */
static fm_s3_t *thread_s3(char *err, size_t err_size)
{
    pthread_once(&s3_key_once, make_s3_key);
    fm_s3_t *s3 = pthread_getspecific(s3_key);
    if (s3 == NULL && (s3 = fm_s3_new(&fm_edge.s3, err, err_size)) != NULL)
        pthread_setspecific(s3_key, s3);
    return s3;
}

static void on_fill_message(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    edge_thread_t *et = H2O_STRUCT_FROM_MEMBER(edge_thread_t, receiver, receiver);
    while (!h2o_linklist_is_empty(messages)) {
        waiter_t *w = H2O_STRUCT_FROM_MEMBER(waiter_t, message.link, messages->next);
        h2o_linklist_unlink(&w->message.link);
        et->waiting--;
        if (fm_req_resume(w->r) != 0) { /* the client went away while waiting */
            if (w->result.fd != -1)
                close(w->result.fd);
        } else {
            w->cb(w->r, &w->result);
        }
        free(w);
    }
}

int fm_edge_origin_thread_init(fm_thread_t *thread)
{
    edge_thread_t *et = calloc(1, sizeof(*et));
    if (et == NULL)
        return -1;
    et->thread = thread;
    h2o_multithread_register_receiver(thread->queue, &et->receiver, on_fill_message);
    thread->data = et;
    return 0;
}

void fm_edge_origin_thread_dispose(fm_thread_t *thread)
{
    edge_thread_t *et = thread->data;
    if (et == NULL)
        return;
    /* A fill started by another thread may still owe this one a message: wait for it before the receiver goes. */
    uint64_t deadline = fm_now_ns() + 60ull * 1000000000u;
    while (et->waiting > 0 && fm_now_ns() < deadline)
        h2o_evloop_run(thread->loop, 10);
    if (et->waiting > 0)
        fm_warn("edge: %zu requests still wait for an origin fill at shutdown", et->waiting);
    h2o_multithread_unregister_receiver(thread->queue, &et->receiver);
    free(et);
    thread->data = NULL;
}

size_t fm_edge_origin_inflight(void)
{
    return atomic_load(&fills_inflight);
}

typedef struct {
    int fd;
    uint64_t written;
    int failed;
} sink_t;

static int write_to_file(void *ud, const void *data, size_t len)
{
    sink_t *sink = ud;
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(sink->fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            sink->failed = errno ? errno : EIO;
            return 1;
        }
        p += n;
        len -= (size_t)n;
        sink->written += (uint64_t)n;
    }
    return 0;
}

/* The origin GET into a temp file, published into the cache. */
static void fetch_original(fill_t *fill, const char *tmp_path, fm_edge_fill_result_t *result)
{
    char err[256] = "";
    fm_s3_t *s3 = thread_s3(err, sizeof(err));
    sink_t sink = {.fd = -1};
    if (s3 == NULL) {
        fm_error("edge: S3 client: %s", err);
        result->status = 503, result->code = "origin_unavailable";
    } else if ((sink.fd = open(tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) == -1) {
        fm_error("edge: cannot create %s: %s", tmp_path, strerror(errno));
        result->status = 503, result->code = "cache_unavailable";
    } else {
        fm_s3_result_t res;
        uint64_t started = fm_now_ns();
        int rc = fm_s3_get_object(s3, fill->key, write_to_file, &sink, &res);
        fm_metrics_observe("fm_edge_origin_seconds", NULL, (double)(fm_now_ns() - started) / 1e9);
        int synced = rc == 0 && fdatasync(sink.fd) == 0;
        close(sink.fd);
        if (rc == 0 && synced && (res.content_length < 0 || (uint64_t)res.content_length == sink.written)) {
            fm_edge_meta_t *meta = &result->meta;
            snprintf(meta->key, sizeof(meta->key), "%s", fill->key);
            meta->size = sink.written;
            snprintf(meta->etag, sizeof(meta->etag), "%s", res.etag);
            snprintf(meta->content_type, sizeof(meta->content_type), "%s", res.content_type);
            meta->stored_at = time(NULL);
            if ((result->fd = fm_edge_cache_publish(fill->hex, tmp_path, meta)) == -1)
                result->status = 503, result->code = "cache_unavailable";
            fm_metrics_counter_add("fm_edge_origin_bytes_total", NULL, (double)sink.written);
        } else {
            unlink(tmp_path);
            if (rc != 0 && (res.status == 404 || strcmp(res.code, "NoSuchKey") == 0))
                result->status = 404, result->code = "not_found";
            else if (sink.failed)
                result->status = 503, result->code = "cache_unavailable";
            else
                result->status = 502, result->code = "origin_error";
            if (result->status != 404)
                fm_warn("edge: origin fill of %s failed: %s %s (%ld) %s", fill->key, res.code, res.message, res.status,
                        sink.failed ? strerror(sink.failed) : "");
            fm_metrics_counter_add("fm_edge_origin_errors_total", NULL, 1);
        }
    }
}

/* A variant rendered from the original open on fill->src_fd, published into the cache. Its ETag is derived from
 * the original's and the parameters, so it changes when the original is replaced. */
static void render_variant(fill_t *fill, const char *tmp_path, fm_edge_fill_result_t *result)
{
    uint64_t started = fm_now_ns(), size = 0;
    const char *content_type = NULL;
    int rc = fm_edge_variant_render(&fill->variant, fill->src_fd, tmp_path, &size, &content_type, result);
    close(fill->src_fd);
    fill->src_fd = -1;
    fm_metrics_observe("fm_edge_variant_seconds", NULL, (double)(fm_now_ns() - started) / 1e9);
    if (rc != 0) {
        unlink(tmp_path);
        fm_metrics_counter_add("fm_edge_variant_errors_total", NULL, 1);
        return;
    }
    fm_edge_meta_t *meta = &result->meta;
    snprintf(meta->key, sizeof(meta->key), "%s", fill->key);
    meta->size = size;
    char tag_source[sizeof(fill->src_etag) + sizeof(fill->key)], tag_hex[FM_EDGE_HEX_LEN + 1];
    int tag_len = snprintf(tag_source, sizeof(tag_source), "%s%s", fill->src_etag, fill->key);
    fm_edge_cache_name(tag_source, (size_t)tag_len, tag_hex);
    snprintf(meta->etag, sizeof(meta->etag), "\"v-%.32s\"", tag_hex);
    snprintf(meta->content_type, sizeof(meta->content_type), "%s", content_type);
    meta->stored_at = time(NULL);
    if ((result->fd = fm_edge_cache_publish(fill->hex, tmp_path, meta)) == -1)
        result->status = 503, result->code = "cache_unavailable";
}

/* The blocking part, on an offload thread: fetch or render into a temp file, publish, then wake every waiter. */
static void fill_work(void *data)
{
    fill_t *fill = data;
    fm_edge_fill_result_t result = {.fd = -1};
    char tmp_path[640], suffix[64];
    snprintf(suffix, sizeof(suffix), ".%ld.%u.tmp", (long)getpid(), atomic_fetch_add(&tmp_counter, 1));
    fm_edge_cache_path(fill->hex, suffix, tmp_path, sizeof(tmp_path));
    if (fill->is_render)
        render_variant(fill, tmp_path, &result);
    else
        fetch_original(fill, tmp_path, &result);

    /* Out of the table first: from here on a new request finds the published object (or misses afresh). */
    pthread_mutex_lock(&lock);
    for (fill_t **p = &fills; *p != NULL; p = &(*p)->next) {
        if (*p == fill) {
            *p = fill->next;
            break;
        }
    }
    int purged = fill->purged;
    waiter_t *waiters = fill->waiters;
    fill->waiters = NULL;
    pthread_mutex_unlock(&lock);

    for (waiter_t *w = waiters, *next; w != NULL; w = next) {
        next = w->next;
        w->result = result;
        if (result.fd != -1 && (w->result.fd = dup(result.fd)) == -1)
            w->result.status = 503, w->result.code = "cache_unavailable";
        h2o_multithread_send_message(&w->et->receiver, &w->message);
    }
    if (result.fd != -1)
        close(result.fd);
    if (purged && result.status == 0) /* purged while filling: served to those waiting, not kept */
        fm_edge_cache_purge_key(fill->key, strlen(fill->key));
}

static void fill_done(void *data)
{
    free(data);
    atomic_fetch_sub(&fills_inflight, 1);
}

/* Joins the fill in flight for `proto->hex`, or starts `proto` (heap, taken) on the offload pool. */
static int join_or_start(fm_req_t *r, fill_t *proto, fm_edge_fill_cb cb)
{
    waiter_t *w = calloc(1, sizeof(*w));
    if (w == NULL)
        h2o_fatal("out of memory");
    w->r = r;
    w->cb = cb;
    w->et = r->thread->data;
    int is_render = proto->is_render;

    pthread_mutex_lock(&lock);
    fill_t *fill = fills;
    while (fill != NULL && memcmp(fill->hex, proto->hex, FM_EDGE_HEX_LEN) != 0)
        fill = fill->next;
    if (fill != NULL) {
        w->next = fill->waiters;
        fill->waiters = w;
        pthread_mutex_unlock(&lock);
        if (proto->is_render && proto->src_fd != -1)
            close(proto->src_fd);
        free(proto);
        fm_metrics_counter_add(is_render ? "fm_edge_variant_coalesced_total" : "fm_edge_coalesced_total", NULL, 1);
    } else {
        fill = proto;
        fill->waiters = w;
        /* Submitted under the lock, so nobody can join a fill that then fails to start. */
        if (fm_offload_run(r->thread->offload, fill_work, fill_done, fill) != 0) {
            pthread_mutex_unlock(&lock);
            if (fill->is_render && fill->src_fd != -1)
                close(fill->src_fd);
            free(fill);
            free(w);
            return -1;
        }
        atomic_fetch_add(&fills_inflight, 1);
        fill->next = fills;
        fills = fill;
        pthread_mutex_unlock(&lock);
        fm_metrics_counter_add(is_render ? "fm_edge_variant_renders_total" : "fm_edge_misses_total", NULL, 1);
    }
    w->et->waiting++;
    fm_req_hold(r);
    return 0;
}

int fm_edge_origin_fill(fm_req_t *r, const char *key, const char *hex, fm_edge_fill_cb cb)
{
    fill_t *fill = calloc(1, sizeof(*fill));
    if (fill == NULL)
        h2o_fatal("out of memory");
    memcpy(fill->hex, hex, FM_EDGE_HEX_LEN);
    snprintf(fill->key, sizeof(fill->key), "%s", key);
    fill->src_fd = -1;
    return join_or_start(r, fill, cb);
}

int fm_edge_origin_render(fm_req_t *r, const char *vkey, const char *vhex, const fm_edge_variant_t *v, int src_fd,
                          const fm_edge_meta_t *src, fm_edge_fill_cb cb)
{
    fill_t *fill = calloc(1, sizeof(*fill));
    if (fill == NULL)
        h2o_fatal("out of memory");
    memcpy(fill->hex, vhex, FM_EDGE_HEX_LEN);
    snprintf(fill->key, sizeof(fill->key), "%s", vkey);
    fill->is_render = 1;
    fill->variant = *v;
    fill->src_fd = src_fd;
    snprintf(fill->src_etag, sizeof(fill->src_etag), "%s", src->etag);
    return join_or_start(r, fill, cb);
}

void fm_edge_origin_purge(const char *key, size_t key_len, int is_prefix)
{
    pthread_mutex_lock(&lock);
    for (fill_t *fill = fills; fill != NULL; fill = fill->next) {
        size_t len = strlen(fill->key);
        int same_object = len >= key_len && memcmp(fill->key, key, key_len) == 0 &&
                          (len == key_len || fill->key[key_len] == FM_EDGE_VARIANT_SEP);
        if (is_prefix ? strncmp(fill->key, key, key_len) == 0 : same_object)
            fill->purged = 1;
    }
    pthread_mutex_unlock(&lock);
}
