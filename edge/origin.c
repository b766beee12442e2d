/*
 * Origin fills with request coalescing, streamed to the clients while they are written. A miss looks the key up in
 * a process-wide table of fills in flight: the first request starts a fill on the offload pool (blocking libcurl
 * calls to S3, the body written to a temp file in the cache folder), later ones for the same key only join its
 * waiter list. When the object is complete the fill publishes it into the cache, takes itself out of the table (a
 * request arriving after that is a cache hit) and tells every waiter, through a message to the waiter's loop thread.
 *
 * Streaming (docs/downloads.md "Misses and coalescing"). The fill GETs the object into the temp file; common/s3
 * tells it the answer's headers (size, ETag, type) before the first body byte. A waiter that can take the object as
 * it comes (serve.c passes a stream callback: a plain GET or HEAD, no Range, no condition) answers its headers as
 * soon as they are known, then sends the body by pread from its
 * own fd on the temp file, up to what the fill has written; caught up, it parks until the fill reports progress (a
 * message at the first bytes, every PROGRESS_STEP and at the end). The last byte waits for the fill's verdict (GET
 * complete, its size the Content-Length announced): a failed fill ends every stream with an error (a cut response),
 * never with a complete-looking short or mixed body. Other waiters (Range, conditional, a variant's original) are
 * served from the published file once it is complete, as before.
 *
 * Lifetimes. A fill is shared by its work (until fill_done) and its waiters (each holds a reference until it is
 * freed); all the shared fields are under `lock`. A waiter belongs to its loop thread; it is freed when its request
 * is answered, or its stream ended (FINAL, ERROR, or h2o's stop when the client went away), and no message for it
 * is still queued. Every waiter of a thread counts in its edge_thread_t's `waiting`, which thread_dispose waits for.
 *
 * A variant render is the same kind of fill, keyed by the variant's cache key: its work renders from the cached
 * original (already open, handed over by serve.c) instead of fetching, so N concurrent requests for one variant
 * make one render. Its waiters never stream. Renders run on a pool of their own (the server's second pool,
 * FM_EDGE_RENDER_THREADS), so a burst of renders never delays the fills of other objects, and are admitted only
 * within FM_EDGE_RENDERS_MAX in flight and FM_EDGE_RENDERS_PER_CLIENT per client (429/503 with Retry-After beyond).
 *
 * A fill nobody waits for any more (every client went away: a stream stopped, a waiting request's pool disposed, a
 * HEAD answered from the headers) goes on only while it is nearly done (what is left is at most
 * FM_EDGE_ABANDONED_FILL_FINISH_BYTES or at most what it already fetched); otherwise it stops, publishes nothing and
 * counts in fm_edge_fills_abandoned_total. One still queued when the last client left never starts.
 *
 * An object larger than the cache keeps (fm_edge_cache_object_max) is not filled: the fill stops at the origin's
 * headers and each waiter that answers a client is streamed from the origin by ranged GETs (miss.c, "pass-through");
 * a variant's original of that size is refused.
 */
#include <arpa/inet.h>
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
#include "origin_internal.h"

#define STREAM_CHUNK (256 * 1024) /* a stream preads at most this much per h2o_send */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static fill_t *fills;
static atomic_size_t fills_inflight;
/* Render admission, under lock: renders queued or running, and per client. A client has an entry only while it has
 * a render in flight, so there are at most FM_EDGE_RENDERS_MAX entries. */
typedef struct {
    char client[64];
    size_t renders;
} render_client_t;
static size_t renders_inflight;
static render_client_t *render_clients;
static pthread_key_t s3_key; /* per offload thread: its S3 client */
static pthread_once_t s3_key_once = PTHREAD_ONCE_INIT;
static pthread_once_t metrics_once = PTHREAD_ONCE_INIT;
static atomic_uint tmp_counter;

static void free_s3(void *s3)
{
    fm_s3_free(s3);
}

static void make_s3_keys(void)
{
    pthread_key_create(&s3_key, free_s3);
}

/* fm_s3_t is not thread-safe: one per offload thread, freed when the thread ends. */
fm_s3_t *fm_edge_thread_s3(char *err, size_t err_size)
{
    pthread_once(&s3_key_once, make_s3_keys);
    fm_s3_t *s3 = pthread_getspecific(s3_key);
    if (s3 == NULL && (s3 = fm_s3_new(&fm_edge.s3, err, err_size)) != NULL)
        pthread_setspecific(s3_key, s3);
    return s3;
}

static void describe_metrics(void)
{
    fm_metrics_describe("fm_edge_streamed_total", FM_METRIC_COUNTER,
                        "Cold-miss GETs whose body was streamed while the object was being fetched");
    fm_metrics_describe("fm_edge_stream_errors_total", FM_METRIC_COUNTER,
                        "Streamed answers cut because the fill failed or the edge stopped");
    fm_metrics_describe("fm_edge_fills_abandoned_total", FM_METRIC_COUNTER,
                        "Origin fills (and renders) stopped or never started because every client went away");
    fm_metrics_describe("fm_edge_renders_limited_total", FM_METRIC_COUNTER,
                        "Variant renders refused with 429: the client has FM_EDGE_RENDERS_PER_CLIENT in flight");
    fm_metrics_describe("fm_edge_renders_busy_total", FM_METRIC_COUNTER,
                        "Variant renders refused with 503: FM_EDGE_RENDERS_MAX are in flight");
    fm_metrics_describe("fm_edge_renders_inflight", FM_METRIC_GAUGE, "Variant renders queued or running");
    fm_metrics_describe("fm_edge_too_large_total", FM_METRIC_COUNTER,
                        "Fills stopped at the origin's headers: the object is larger than the cache keeps");
    const char *counters[] = {"fm_edge_streamed_total",        "fm_edge_stream_errors_total",
                              "fm_edge_fills_abandoned_total", "fm_edge_renders_limited_total",
                              "fm_edge_renders_busy_total",    "fm_edge_too_large_total"};
    for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); ++i)
        fm_metrics_counter_add(counters[i], NULL, 0);
    fm_metrics_gauge_set("fm_edge_renders_inflight", NULL, 0);
    fm_edge_miss_metrics();
}

static void fill_free(fill_t *fill)
{
    if (fill->read_fd != -1)
        close(fill->read_fd);
    if (fill->result.fd != -1)
        close(fill->result.fd);
    if (fill->src_fd != -1)
        close(fill->src_fd);
    free(fill);
}

/* Under lock: queues w's message unless it is already queued. */
static void kick(waiter_t *w)
{
    if (w->queued)
        return;
    w->queued = 1;
    h2o_multithread_send_message(&w->et->receiver, &w->message);
}

/* Frees w once nothing can reach it any more: out of its fill's list, and no message queued (else on_message frees
 * it when that arrives). Drops w's reference on the fill. */
/* Under lock: w's client no longer waits for the fill. */
static void unlive(waiter_t *w)
{
    if (!w->live)
        return;
    w->live = 0;
    atomic_fetch_sub(&w->fill->live, 1);
}

/* The request of a waiter that still waits was freed (its client went away): it no longer counts as live. The waiter
 * itself stays listed until the fill ends, which resumes (and so frees) its fm_req_t. */
static void on_waiter_request_gone(void *p)
{
    waiter_t *w = *(waiter_t **)p;
    if (w == NULL)
        return;
    w->slot = NULL;
    pthread_mutex_lock(&lock);
    unlive(w);
    pthread_mutex_unlock(&lock);
}

static void waiter_release(waiter_t *w)
{
    w->state = WAITER_FINISHED;
    fill_t *fill = w->fill;
    if (w->slot != NULL) {
        *w->slot = NULL;
        w->slot = NULL;
    }
    pthread_mutex_lock(&lock);
    unlive(w);
    if (w->listed) {
        for (waiter_t **p = &fill->waiters; *p != NULL; p = &(*p)->next) {
            if (*p == w) {
                *p = w->next;
                break;
            }
        }
        w->listed = 0;
    }
    if (w->queued) {
        pthread_mutex_unlock(&lock);
        return;
    }
    int last = --fill->refs == 0;
    pthread_mutex_unlock(&lock);
    if (last)
        fill_free(fill);
    if (w->fd != -1)
        close(w->fd);
    w->et->waiting--;
    free(w);
}

/* ---- streams (loop thread) ---- */

/* Ends w's response: FINAL after the last bytes, or ERROR (HTTP/1 closes the connection, HTTP/2 resets the stream). */
static void stream_end(waiter_t *w, h2o_iovec_t *vec, size_t count, h2o_send_state_t state)
{
    h2o_req_t *req = w->req;
    w->req = NULL;
    h2o_linklist_unlink(&w->stream_link);
    if (w->cut == 2)
        w->et->cut_pending--;
    if (state == H2O_SEND_STATE_ERROR) {
        req->http1_is_persistent = 0;
        fm_metrics_counter_add("fm_edge_stream_errors_total", NULL, 1);
    }
    h2o_send(req, vec, count, state); /* h2o forgets the generator here: w can go */
    waiter_release(w);
}

/* Sends the next piece of w's body: when h2o asks (proceed), or when the fill moved while w was parked. */
static void stream_send(waiter_t *w)
{
    fill_t *fill = w->fill;
    pthread_mutex_lock(&lock);
    int done = fill->done, ok = fill->stream_ok;
    uint64_t written = fill->written;
    /* The last byte waits for the verdict: a client never holds a complete body the fill did not confirm. */
    uint64_t limit = done && ok ? w->size : written < w->size ? written : w->size > 0 ? w->size - 1 : 0;
    int idle = !w->cut && !done && w->offset >= limit && w->headers_sent;
    if (idle)
        w->parked = 1;
    pthread_mutex_unlock(&lock);
    if (idle)
        return;
    if (w->cut || (done && !ok)) {
        stream_end(w, NULL, 0, H2O_SEND_STATE_ERROR);
        return;
    }
    if (w->offset >= limit) {
        if (done) { /* everything was sent but the last piece's verdict */
            stream_end(w, NULL, 0, H2O_SEND_STATE_FINAL);
        } else { /* nothing written yet: the headers go out alone, at once */
            w->headers_sent = 1;
            h2o_send(w->req, NULL, 0, H2O_SEND_STATE_IN_PROGRESS);
        }
        return;
    }
    size_t want = limit - w->offset > STREAM_CHUNK ? STREAM_CHUNK : (size_t)(limit - w->offset);
    ssize_t n;
    while ((n = pread(w->fd, w->buf, want, (off_t)w->offset)) == -1 && errno == EINTR)
        ;
    if (n <= 0) {
        fm_error("edge: read of a file being filled failed: %s", n == 0 ? "unexpected end" : strerror(errno));
        stream_end(w, NULL, 0, H2O_SEND_STATE_ERROR);
        return;
    }
    w->offset += (uint64_t)n;
    w->headers_sent = 1;
    h2o_iovec_t vec = h2o_iovec_init(w->buf, (size_t)n);
    if (done && w->offset == w->size)
        stream_end(w, &vec, 1, H2O_SEND_STATE_FINAL);
    else
        h2o_send(w->req, &vec, 1, H2O_SEND_STATE_IN_PROGRESS);
}

static void on_stream_proceed(h2o_generator_t *gen, h2o_req_t *req)
{
    (void)req;
    stream_send(H2O_STRUCT_FROM_MEMBER(waiter_t, gen, gen));
}

/* h2o ends the request before its body was sent (the client went away): the fill and other streams go on. */
static void on_stream_stop(h2o_generator_t *gen, h2o_req_t *req)
{
    (void)req;
    waiter_t *w = H2O_STRUCT_FROM_MEMBER(waiter_t, gen, gen);
    w->req = NULL;
    h2o_linklist_unlink(&w->stream_link);
    if (w->cut == 2)
        w->et->cut_pending--;
    waiter_release(w);
}

/* The origin's headers are known: answer them (serve.c) and stream the body from the temp file. */
static void stream_start(waiter_t *w)
{
    fill_t *fill = w->fill;
    int fd = dup(fill->read_fd); /* read_fd is immutable once the headers are known */
    if (fd == -1) {
        w->stream_cb = NULL; /* served from the cache when complete, as a Range request would be */
        return;
    }
    fm_req_t *r = w->r;
    if (fm_req_resume(r) != 0 || !w->stream_cb(r, &fill->head)) { /* the client went away, or answered already */
        close(fd);
        waiter_release(w);
        return;
    }
    fm_metrics_counter_add("fm_edge_streamed_total", NULL, 1);
    w->state = WAITER_STREAMING;
    w->fd = fd;
    w->size = fill->head.size;
    w->req = r->req;
    w->buf = h2o_mem_alloc_pool(&w->req->pool, w->size < STREAM_CHUNK ? (size_t)w->size : STREAM_CHUNK);
    w->gen = (h2o_generator_t){on_stream_proceed, on_stream_stop};
    h2o_linklist_insert(&w->et->streams, &w->stream_link);
    h2o_start_response(w->req, &w->gen);
    stream_send(w);
}

/* The fill is complete (or failed): the answer from the published file, or the error. */
static void deliver(waiter_t *w)
{
    fill_t *fill = w->fill;
    if (fill->result.too_large) { /* never cached: its client gets it straight from the origin (miss.c) */
        if (fm_req_resume(w->r) == 0) {
            if (w->direct)
                fm_edge_passthrough(w->r, &fill->result.meta);
            else
                fm_reply_error(w->r, 422, "image_too_large",
                               "the original is %llu bytes, more than this edge caches: no variant is rendered from it",
                               (unsigned long long)fill->result.meta.size);
        }
        waiter_release(w);
        return;
    }
    fm_edge_fill_result_t result = fill->result; /* final once done */
    result.fd = -1;
    if (fill->result.fd != -1 && (result.fd = dup(fill->result.fd)) == -1)
        result.status = 503, result.code = "cache_unavailable";
    if (fm_req_resume(w->r) != 0) { /* the client went away while waiting */
        if (result.fd != -1)
            close(result.fd);
    } else {
        w->cb(w->r, &result);
    }
    waiter_release(w);
}

static void on_fill_message(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    (void)receiver;
    while (!h2o_linklist_is_empty(messages)) {
        waiter_t *w = H2O_STRUCT_FROM_MEMBER(waiter_t, message.link, messages->next);
        h2o_linklist_unlink(&w->message.link);
        pthread_mutex_lock(&lock);
        w->queued = 0;
        int parked = w->parked, headers_known = w->fill->headers_known, done = w->fill->done;
        w->parked = 0;
        pthread_mutex_unlock(&lock);
        switch (w->state) {
        case WAITER_WAITING:
            /* A fill that ended before this waiter started streaming serves it from the cache (or fails it). */
            if (done)
                deliver(w);
            else if (w->stream_cb != NULL && headers_known)
                stream_start(w);
            break;
        case WAITER_STREAMING:
            if (parked)
                stream_send(w);
            break;
        case WAITER_FINISHED: /* ended while this message was queued */
            waiter_release(w);
            break;
        }
    }
}

int fm_edge_origin_thread_init(fm_thread_t *thread)
{
    pthread_once(&metrics_once, describe_metrics);
    edge_thread_t *et = calloc(1, sizeof(*et));
    if (et == NULL)
        return -1;
    et->thread = thread;
    h2o_linklist_init_anchor(&et->streams);
    h2o_multithread_register_receiver(thread->queue, &et->receiver, on_fill_message);
    thread->data = et;
    return 0;
}

void fm_edge_origin_thread_dispose(fm_thread_t *thread)
{
    edge_thread_t *et = thread->data;
    if (et == NULL)
        return;
    /* Streams still running outlived the graceful period: cut them (an error, never a complete-looking body). The
     * ones whose turn it is send the error now; the others when h2o next asks for data. */
    for (h2o_linklist_t *link = et->streams.next, *next; link != &et->streams; link = next) {
        next = link->next;
        waiter_t *w = H2O_STRUCT_FROM_MEMBER(waiter_t, stream_link, link);
        pthread_mutex_lock(&lock);
        int parked = w->parked;
        w->parked = 0;
        pthread_mutex_unlock(&lock);
        w->cut = parked ? 1 : 2;
        if (parked)
            stream_send(w);
        else
            et->cut_pending++;
    }
    /* A fill started by another thread may still owe this one a message: wait for it before the receiver goes. */
    uint64_t deadline = fm_now_ns() + 60ull * 1000000000u;
    while (et->waiting > et->cut_pending && fm_now_ns() < deadline)
        h2o_evloop_run(thread->loop, 10);
    if (et->waiting > 0) {
        /* Kept registered and reachable: a fill or h2o may still call them. The process is ending anyway. */
        fm_warn("edge: %zu requests still wait for an origin fill or a client at shutdown", et->waiting);
        return;
    }
    h2o_multithread_unregister_receiver(thread->queue, &et->receiver);
    free(et);
    thread->data = NULL;
}

size_t fm_edge_origin_inflight(void)
{
    return atomic_load(&fills_inflight);
}

/* ---- the fill (offload thread; its fetch and render are fill.c's) ---- */

/* Under no lock: whether a fill nobody waits for should stop (docs/downloads.md "Abandoned fills"). It goes on when
 * what is left is small or at most what it already has: stopping would throw away more than finishing costs. */
int fm_edge_fill_should_stop(fill_t *fill, uint64_t written, long long size)
{
    if (atomic_load(&fill->live) > 0)
        return 0;
    uint64_t finish = (uint64_t)fm_edge.cfg->edge_abandoned_fill_finish_bytes;
    if (size >= 0 && (uint64_t)size >= written) {
        uint64_t left = (uint64_t)size - written;
        if (left <= finish || left <= written)
            return 0;
    }
    /* Decided under the lock, so no request joins a fill that is stopping (it starts a new one instead). */
    pthread_mutex_lock(&lock);
    int stop = atomic_load(&fill->live) == 0;
    if (stop)
        fill->stopping = 1;
    pthread_mutex_unlock(&lock);
    return stop;
}

/* Tells the fill's parked streams that more is written. */
void fm_edge_fill_report_progress(fill_t *fill, uint64_t written)
{
    pthread_mutex_lock(&lock);
    fill->written = written;
    for (waiter_t *w = fill->waiters; w != NULL; w = w->next)
        if (w->parked)
            kick(w);
    pthread_mutex_unlock(&lock);
}

/* The origin's answer is known: the streaming waiters may answer their headers. */
void fm_edge_fill_announce_headers(fill_t *fill, const fm_edge_meta_t *head, int read_fd)
{
    pthread_mutex_lock(&lock);
    fill->head = *head;
    fill->read_fd = read_fd;
    fill->headers_known = 1;
    for (waiter_t *w = fill->waiters; w != NULL; w = w->next)
        if (w->stream_cb != NULL)
            kick(w);
    pthread_mutex_unlock(&lock);
}

/* The blocking part, on an offload thread: fetch or render into a temp file (fill.c), publish, then wake every
 * waiter. */
static void fill_work(void *data)
{
    fill_t *fill = data;
    fm_edge_fill_result_t result = {.fd = -1};
    char tmp_path[640], suffix[64];
    snprintf(suffix, sizeof(suffix), ".%ld.%u.tmp", (long)getpid(), atomic_fetch_add(&tmp_counter, 1));
    fm_edge_cache_path(fill->hex, suffix, tmp_path, sizeof(tmp_path));
    int stream_ok = 0;
    /* every client left while it was queued: nothing to fetch or render for */
    if (fm_edge_fill_should_stop(fill, 0, -1)) {
        result.status = 503, result.code = "abandoned";
        fm_metrics_counter_add("fm_edge_fills_abandoned_total", NULL, 1);
    } else if (fill->is_render) {
        fm_edge_fill_render(fill, tmp_path, &result);
    } else {
        stream_ok = fm_edge_fill_fetch(fill, tmp_path, &result);
    }

    /* Out of the table first: from here on a new request finds the published object (or misses afresh). Every
     * waiter hears of the end: streams send their last bytes or their error, the others are answered. */
    pthread_mutex_lock(&lock);
    for (fill_t **p = &fills; *p != NULL; p = &(*p)->next) {
        if (*p == fill) {
            *p = fill->next;
            break;
        }
    }
    int purged = fill->purged;
    fill->result = result;
    fill->stream_ok = stream_ok;
    if (stream_ok)
        fill->written = fill->head.size;
    fill->done = 1;
    for (waiter_t *w = fill->waiters; w != NULL; w = w->next) {
        w->listed = 0;
        kick(w);
    }
    fill->waiters = NULL;
    pthread_mutex_unlock(&lock);
    if (purged && result.status == 0) /* purged while filling: served to those waiting, not kept */
        fm_edge_cache_purge_key(fill->key, strlen(fill->key));
}

/* Back on the loop that started the fill: the work's reference goes. */
/* Under lock: the render `fill` no longer counts against its client and the total. */
static void render_release(const fill_t *fill)
{
    renders_inflight--;
    for (size_t i = 0; i < (size_t)fm_edge.cfg->edge_renders_max; ++i) {
        render_client_t *c = &render_clients[i];
        if (c->renders > 0 && strcmp(c->client, fill->client) == 0) {
            c->renders--;
            break;
        }
    }
}

static void fill_done(void *data)
{
    fill_t *fill = data;
    pthread_mutex_lock(&lock);
    if (fill->is_render)
        render_release(fill);
    size_t renders = renders_inflight;
    int last = --fill->refs == 0;
    pthread_mutex_unlock(&lock);
    if (fill->is_render)
        fm_metrics_gauge_set("fm_edge_renders_inflight", NULL, (double)renders);
    if (last)
        fill_free(fill);
    atomic_fetch_sub(&fills_inflight, 1);
}

/* join_or_start's outcomes besides 0 (joined or started). */
enum { NOT_IN_FLIGHT = 1, QUEUE_FULL = -1, RENDERS_BUSY = -2, RENDERS_LIMITED = -3 };

/* Under lock: admits a render started by `client` within FM_EDGE_RENDERS_MAX and FM_EDGE_RENDERS_PER_CLIENT. */
static int render_admit(const char *client)
{
    size_t max = (size_t)fm_edge.cfg->edge_renders_max;
    if (render_clients == NULL && (render_clients = calloc(max, sizeof(*render_clients))) == NULL)
        h2o_fatal("out of memory");
    if (renders_inflight >= max)
        return RENDERS_BUSY;
    render_client_t *mine = NULL, *free_slot = NULL;
    for (size_t i = 0; i < max && mine == NULL; ++i) {
        render_client_t *c = &render_clients[i];
        if (c->renders == 0)
            free_slot = free_slot != NULL ? free_slot : c;
        else if (strcmp(c->client, client) == 0)
            mine = c;
    }
    if (mine != NULL && mine->renders >= (size_t)fm_edge.cfg->edge_renders_per_client)
        return RENDERS_LIMITED;
    if (mine == NULL) { /* fewer than `max` clients have renders in flight, so a slot is free */
        mine = free_slot;
        snprintf(mine->client, sizeof(mine->client), "%s", client);
    }
    mine->renders++;
    renders_inflight++;
    return 0;
}

/* Who a render is counted against: the client's IPv4 address, or its IPv6 /64 (one subscriber's usual allocation, so
 * rotating addresses inside it does not multiply the limit). */
static void client_of(fm_req_t *r, char *out, size_t size)
{
    char peer[64];
    fm_req_peer(r, peer, sizeof(peer));
    struct in6_addr a6;
    if (strchr(peer, ':') == NULL || inet_pton(AF_INET6, peer, &a6) != 1) {
        snprintf(out, size, "%s", peer);
        return;
    }
    if (IN6_IS_ADDR_V4MAPPED(&a6)) {
        inet_ntop(AF_INET, &a6.s6_addr[12], out, (socklen_t)size);
        return;
    }
    memset(&a6.s6_addr[8], 0, 8);
    inet_ntop(AF_INET6, &a6, out, (socklen_t)size);
}

/*
 * Joins the fill in flight for `hex`, or (proto != NULL) starts `proto` (heap, taken in every case) on the offload
 * pool, or the render pool for a render (admitted first). `direct`: the waiter answers its client with the object, so
 * an object too large to cache is passed through to it. Returns 0, NOT_IN_FLIGHT (proto NULL and no fill in flight),
 * QUEUE_FULL, RENDERS_BUSY or RENDERS_LIMITED; nothing is pending unless 0.
 */
static int join_or_start(fm_req_t *r, const char *hex, fill_t *proto, fm_edge_fill_cb cb, fm_edge_stream_cb stream_cb,
                         int direct)
{
    waiter_t *w = calloc(1, sizeof(*w));
    if (w == NULL)
        h2o_fatal("out of memory");
    w->r = r;
    w->cb = cb;
    w->stream_cb = stream_cb;
    w->et = r->thread->data;
    w->fd = -1;
    w->listed = 1;
    w->direct = direct;
    w->live = 1;
    int is_render = proto != NULL && proto->is_render;

    pthread_mutex_lock(&lock);
    fill_t *fill = fills;
    while (fill != NULL && (fill->stopping || memcmp(fill->hex, hex, FM_EDGE_HEX_LEN) != 0))
        fill = fill->next;
    if (fill != NULL) {
        w->fill = fill;
        w->next = fill->waiters;
        fill->waiters = w;
        fill->refs++;
        atomic_fetch_add(&fill->live, 1);
        if (stream_cb != NULL && fill->headers_known) /* late joiner: it streams from where the fill is */
            kick(w);
        pthread_mutex_unlock(&lock);
        if (proto != NULL)
            fill_free(proto);
        fm_metrics_counter_add(
            is_render || fill->is_render ? "fm_edge_variant_coalesced_total" : "fm_edge_coalesced_total", NULL, 1);
    } else {
        int refused = proto == NULL ? NOT_IN_FLIGHT : is_render ? render_admit(proto->client) : 0;
        fm_offload_port_t *port = is_render && r->thread->hash != NULL ? r->thread->hash : r->thread->offload;
        if (refused == 0) {
            fill = proto;
            w->fill = fill;
            fill->waiters = w;
            fill->refs = 2; /* the work and w */
            atomic_store(&fill->live, 1);
            /* Submitted under the lock, so nobody can join a fill that then fails to start. */
            if (fm_offload_run(port, fill_work, fill_done, fill) != 0) {
                if (is_render)
                    render_release(fill);
                refused = QUEUE_FULL;
            }
        }
        if (refused != 0) {
            pthread_mutex_unlock(&lock);
            if (proto != NULL)
                fill_free(proto);
            free(w);
            return refused;
        }
        atomic_fetch_add(&fills_inflight, 1);
        fill->next = fills;
        fills = fill;
        size_t renders = renders_inflight;
        pthread_mutex_unlock(&lock);
        fm_metrics_counter_add(is_render ? "fm_edge_variant_renders_total" : "fm_edge_misses_total", NULL, 1);
        if (is_render)
            fm_metrics_gauge_set("fm_edge_renders_inflight", NULL, (double)renders);
    }
    /* Told when the request is freed while it waits (its client went away), so the fill knows who still waits. No
     * message for w can arrive before this: they come through this very loop. */
    waiter_t **slot = h2o_mem_alloc_shared(&r->req->pool, sizeof(*slot), on_waiter_request_gone);
    *slot = w;
    w->slot = slot;
    w->et->waiting++;
    fm_req_hold(r);
    return 0;
}

static fill_t *new_fill(const char *key, const char *hex)
{
    fill_t *fill = calloc(1, sizeof(*fill));
    if (fill == NULL)
        h2o_fatal("out of memory");
    memcpy(fill->hex, hex, FM_EDGE_HEX_LEN);
    snprintf(fill->key, sizeof(fill->key), "%s", key);
    fill->src_fd = fill->read_fd = fill->result.fd = -1;
    return fill;
}

int fm_edge_origin_fill(fm_req_t *r, const char *key, const char *hex, fm_edge_fill_cb cb, fm_edge_stream_cb stream_cb)
{
    return join_or_start(r, hex, new_fill(key, hex), cb, stream_cb, 0);
}

int fm_edge_origin_fill_object(fm_req_t *r, const char *key, const char *hex, fm_edge_fill_cb cb,
                               fm_edge_stream_cb stream_cb)
{
    return join_or_start(r, hex, new_fill(key, hex), cb, stream_cb, 1);
}

int fm_edge_origin_join(fm_req_t *r, const char *hex, fm_edge_fill_cb cb, fm_edge_stream_cb stream_cb)
{
    return join_or_start(r, hex, NULL, cb, stream_cb, 1) == 0;
}

int fm_edge_origin_render(fm_req_t *r, const char *vkey, const char *vhex, const fm_edge_variant_t *v, int src_fd,
                          const fm_edge_meta_t *src, fm_edge_fill_cb cb)
{
    fill_t *fill = new_fill(vkey, vhex);
    fill->is_render = 1;
    fill->variant = *v;
    fill->src_fd = src_fd;
    snprintf(fill->src_etag, sizeof(fill->src_etag), "%s", src->etag);
    client_of(r, fill->client, sizeof(fill->client));
    switch (join_or_start(r, vhex, fill, cb, NULL, 0)) {
    case 0:
        return 0;
    case RENDERS_LIMITED:
        fm_metrics_counter_add("fm_edge_renders_limited_total", NULL, 1);
        fm_req_add_header(r, "retry-after", "1");
        fm_reply_error(r, 429, "too_many_renders", "this client already has %lld variant renders in flight, try again",
                       (long long)fm_edge.cfg->edge_renders_per_client);
        return 0;
    case RENDERS_BUSY:
        fm_metrics_counter_add("fm_edge_renders_busy_total", NULL, 1);
        fm_req_add_header(r, "retry-after", "1");
        fm_reply_error(r, 503, "renders_busy", "the edge is rendering as many variants as it may, try again shortly");
        return 0;
    default:
        return -1;
    }
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
