/*
 * What a miss of an original costs the origin (docs/downloads.md "What a miss costs the origin"). Anybody holding a
 * URL -- and for /p/ anybody at all -- decides what the edge fetches, so a request must never make it fetch much more
 * than it answers:
 *
 *   - a plain GET fills the object (origin.c: one coalesced GET, streamed while it is written, then cached);
 *   - a HEAD, a Range or a conditional request of an object not cached joins a fill already in flight, or else asks
 *     the origin's HEAD first (fm_edge_origin_heads_total): a HEAD, a 304 or a 416 is answered from it alone, a Range
 *     of at most FM_EDGE_COLD_RANGE_MAX_BYTES of a larger object is passed through (the bytes asked, nothing more, and
 *     nothing cached: `Range: bytes=0-0` of a 21 MB object costs one byte of it), anything else fills the object;
 *   - an object larger than the cache keeps is passed through whatever the request (fills stop at its headers).
 *
 * Pass-through: the answer's body is fetched by ranged GETs of CHUNK bytes, If-Match the ETag the answer announces (a
 * changed object cuts the stream rather than mixing two versions), at most AHEAD of them in flight ahead of what the
 * client took, each a short job on the offload pool, so a slow client holds CHUNK x (AHEAD + 1) bytes of memory and no
 * thread or origin connection; a client gone stops the GETs. At most FM_EDGE_PASSTHROUGH_MAX answers at a time.
 *
 * Threads: everything here runs on the request's loop thread but chunk_work (offload), which touches its chunk only.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "edge.h"
#include "log.h"
#include "metrics.h"

#define CHUNK (1024 * 1024) /* bytes per ranged origin GET of a pass-through */
#define AHEAD 2             /* ranged GETs fetched or in flight beyond the piece the client is being sent */

static atomic_size_t passthroughs; /* answers in flight (FM_EDGE_PASSTHROUGH_MAX) */

void fm_edge_miss_metrics(void)
{
    fm_metrics_describe("fm_edge_origin_heads_total", FM_METRIC_COUNTER,
                        "HEAD requests to the origin (a HEAD, Range or conditional request of an uncached object)");
    fm_metrics_describe("fm_edge_origin_ranges_total", FM_METRIC_COUNTER,
                        "Ranged GETs to the origin (pass-through answers, 1 MiB each)");
    fm_metrics_describe("fm_edge_passthrough_total", FM_METRIC_COUNTER,
                        "Answers streamed straight from the origin, not cached (small ranges, objects too large)");
    fm_metrics_describe("fm_edge_passthrough_busy_total", FM_METRIC_COUNTER,
                        "Pass-through answers refused with 503: FM_EDGE_PASSTHROUGH_MAX were in flight");
    const char *counters[] = {"fm_edge_origin_heads_total", "fm_edge_origin_ranges_total", "fm_edge_passthrough_total",
                              "fm_edge_passthrough_busy_total"};
    for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); ++i)
        fm_metrics_counter_add(counters[i], NULL, 0);
}

static int is_head(fm_req_t *r)
{
    return h2o_memis(r->req->method.base, r->req->method.len, H2O_STRLIT("HEAD"));
}

/* An origin failure before anything was answered. */
static void reply_origin_error(fm_req_t *r, long status, const char *code)
{
    if (status == 404 || strcmp(code, "NoSuchKey") == 0 || strcmp(code, "NotFound") == 0) {
        fm_reply_error(r, 404, "not_found", "no such object");
        return;
    }
    fm_metrics_counter_add("fm_edge_origin_errors_total", NULL, 1);
    fm_reply_error(r, 502, "origin_error", "the origin failed, try again");
}

/* ---- pass-through ---- */

typedef struct relay relay_t;

typedef struct chunk {
    relay_t *relay;
    struct chunk *next;
    uint64_t offset, length, got;
    char *data;
    int done, failed;
    long status; /* the origin's, when failed */
    char code[64];
} chunk_t;

struct relay {
    fm_req_t *r;    /* held (fm_req_hold) until the answer starts */
    h2o_req_t *req; /* once started, until its pool goes */
    fm_thread_t *thread;
    h2o_generator_t gen;
    fm_edge_meta_t meta;
    uint64_t next_fetch, end; /* the body is [first, end): next_fetch is where the next GET starts */
    chunk_t *head, *tail;     /* fetched or being fetched, in offset order; head is the next to send */
    size_t queued;            /* chunks in that list */
    chunk_t *sending;         /* handed to h2o_send: kept until h2o asks for more or the request goes */
    int outstanding;          /* chunk jobs on the offload pool */
    int held, started, wants, finished, gone;
};

static void chunk_free(chunk_t *chunk)
{
    if (chunk != NULL) {
        free(chunk->data);
        free(chunk);
    }
}

/* The relay goes once its request is gone (h2o holds the last buffer sent until then) and no job can still report. */
static void relay_free_if_idle(relay_t *relay)
{
    if (!relay->gone || relay->outstanding > 0)
        return;
    if (relay->held) { /* the client left before the answer started: r goes with this last resume */
        relay->held = 0;
        fm_req_resume(relay->r);
    }
    for (chunk_t *c = relay->head, *next; c != NULL; c = next) {
        next = c->next;
        chunk_free(c);
    }
    chunk_free(relay->sending);
    free(relay);
    atomic_fetch_sub(&passthroughs, 1);
}

static int write_chunk(void *ud, const void *data, size_t len)
{
    chunk_t *chunk = ud;
    if (len > chunk->length - chunk->got)
        return 1; /* more than asked: fm_s3_get_object_range checked the length, so never */
    memcpy(chunk->data + chunk->got, data, len);
    chunk->got += len;
    return 0;
}

/* On an offload thread: one ranged GET into the chunk's buffer. */
static void chunk_work(void *data)
{
    chunk_t *chunk = data;
    relay_t *relay = chunk->relay; /* read-only here: key, ETag */
    char err[256] = "";
    fm_s3_t *s3 = fm_edge_thread_s3(err, sizeof(err));
    fm_s3_result_t res = {0};
    int rc = -1;
    if (s3 == NULL) {
        fm_error("edge: S3 client: %s", err);
        snprintf(chunk->code, sizeof(chunk->code), "NoClient");
    } else if ((chunk->data = malloc(chunk->length)) != NULL) {
        char object_key[FM_EDGE_KEY_MAX + 1];
        fm_edge_object_key(relay->meta.key, object_key, sizeof(object_key)); /* meta.key is a cache key */
        rc = fm_s3_get_object_range(s3, object_key, chunk->offset, chunk->offset + chunk->length - 1,
                                    relay->meta.etag, write_chunk, chunk, &res);
        snprintf(chunk->code, sizeof(chunk->code), "%s", res.code);
    }
    fm_metrics_counter_add("fm_edge_origin_ranges_total", NULL, 1);
    chunk->failed = rc != 0 || chunk->got != chunk->length;
    chunk->status = res.status;
    if (chunk->failed && res.status != 404)
        fm_warn("edge: ranged origin GET of %s (%llu+%llu) failed: %s %s (%ld)", relay->meta.key,
                (unsigned long long)chunk->offset, (unsigned long long)chunk->length, res.code, res.message,
                res.status);
}

static void pump(relay_t *relay);

static void chunk_done(void *data)
{
    chunk_t *chunk = data;
    relay_t *relay = chunk->relay;
    relay->outstanding--;
    chunk->done = 1;
    if (relay->gone) {
        relay_free_if_idle(relay);
        return;
    }
    pump(relay);
}

/* Keeps AHEAD ranged GETs fetched or in flight beyond the piece being sent. */
static void fetch_more(relay_t *relay)
{
    while (!relay->gone && !relay->finished && relay->next_fetch < relay->end && relay->queued < AHEAD) {
        chunk_t *chunk = calloc(1, sizeof(*chunk));
        if (chunk == NULL)
            h2o_fatal("out of memory");
        chunk->relay = relay;
        chunk->offset = relay->next_fetch;
        chunk->length = relay->end - relay->next_fetch < CHUNK ? relay->end - relay->next_fetch : CHUNK;
        relay->next_fetch += chunk->length;
        if (relay->tail != NULL)
            relay->tail->next = chunk;
        else
            relay->head = chunk;
        relay->tail = chunk;
        relay->queued++;
        if (fm_offload_run(relay->thread->offload, chunk_work, chunk_done, chunk) != 0) {
            chunk->done = chunk->failed = 1; /* the queue is full: the answer fails at this piece */
            chunk->status = 503;
            snprintf(chunk->code, sizeof(chunk->code), "QueueFull");
            break;
        }
        relay->outstanding++;
    }
}

static void relay_proceed(h2o_generator_t *gen, h2o_req_t *req)
{
    (void)req;
    relay_t *relay = H2O_STRUCT_FROM_MEMBER(relay_t, gen, gen);
    chunk_free(relay->sending); /* h2o is done with it */
    relay->sending = NULL;
    relay->wants = 1;
    fetch_more(relay);
    pump(relay);
}

/* The client went away mid-body: no more GETs; the relay goes with the request's pool. */
static void relay_stop(h2o_generator_t *gen, h2o_req_t *req)
{
    (void)req;
    relay_t *relay = H2O_STRUCT_FROM_MEMBER(relay_t, gen, gen);
    relay->finished = 1;
}

/* Starts the answer at the first piece, then sends each piece in order as h2o asks for it. */
static void pump(relay_t *relay)
{
    chunk_t *chunk = relay->head;
    if (!relay->started) {
        if (chunk == NULL || !chunk->done)
            return;
        fm_req_t *r = relay->r;
        relay->held = 0;
        if (fm_req_resume(r) != 0) { /* the client went away (the pool's callback has set `gone`) */
            relay->gone = 1;
            relay_free_if_idle(relay);
            return;
        }
        relay->started = 1;
        if (chunk->failed) {
            relay->finished = 1;
            if (chunk->status == 503)
                fm_reply_unavailable(r, "the edge's origin queue");
            else
                reply_origin_error(r, chunk->status, chunk->code);
            return;
        }
        uint64_t first, length;
        if (!fm_edge_answer_headers(r, &relay->meta, "passthrough", &first, &length)) {
            relay->finished = 1; /* answered entirely (cannot happen: fm_edge_answer_plan said a body) */
            return;
        }
        relay->req = r->req;
        relay->wants = 1;
        relay->gen = (h2o_generator_t){relay_proceed, relay_stop};
        h2o_start_response(relay->req, &relay->gen);
    }
    if (!relay->wants || relay->finished || chunk == NULL || !chunk->done)
        return; /* chunk_done or relay_proceed comes back here */
    h2o_req_t *req = relay->req;
    relay->head = chunk->next;
    if (relay->head == NULL)
        relay->tail = NULL;
    relay->queued--;
    relay->wants = 0;
    if (chunk->failed) { /* after the headers: cut (HTTP/1 closes, HTTP/2 resets), never a short "complete" body */
        chunk_free(chunk);
        relay->finished = 1;
        req->http1_is_persistent = 0;
        fm_metrics_counter_add("fm_edge_stream_errors_total", NULL, 1);
        h2o_send(req, NULL, 0, H2O_SEND_STATE_ERROR);
        return;
    }
    relay->sending = chunk;
    int final = chunk->offset + chunk->length == relay->end;
    if (final)
        relay->finished = 1;
    else
        fetch_more(relay);
    h2o_iovec_t vec = h2o_iovec_init(chunk->data, (size_t)chunk->length);
    h2o_send(req, &vec, 1, final ? H2O_SEND_STATE_FINAL : H2O_SEND_STATE_IN_PROGRESS);
}

/* The request's pool goes (the answer is complete, or the client went away): h2o holds no buffer of ours any more. */
static void on_relay_request_gone(void *p)
{
    relay_t *relay = *(relay_t **)p;
    relay->gone = 1;
    relay->finished = 1;
    relay->req = NULL;
    relay_free_if_idle(relay);
}

void fm_edge_passthrough(fm_req_t *r, const fm_edge_meta_t *meta)
{
    uint64_t first, length;
    if (!fm_edge_answer_plan(r, meta, &first, &length)) { /* HEAD, 304, 416, 400, empty: no GET needed */
        fm_edge_answer_headers(r, meta, "passthrough", &first, &length);
        return;
    }
    if (atomic_fetch_add(&passthroughs, 1) >= (size_t)fm_edge.cfg->edge_passthrough_max) {
        atomic_fetch_sub(&passthroughs, 1);
        fm_metrics_counter_add("fm_edge_passthrough_busy_total", NULL, 1);
        fm_req_add_header(r, "retry-after", "1");
        fm_reply_error(r, 503, "passthrough_busy", "the edge streams as many uncached answers as it may, try again");
        return;
    }
    relay_t *relay = calloc(1, sizeof(*relay));
    if (relay == NULL)
        h2o_fatal("out of memory");
    relay->r = r;
    relay->thread = r->thread;
    relay->meta = *meta;
    relay->next_fetch = first;
    relay->end = first + length;
    relay_t **slot = h2o_mem_alloc_shared(&r->req->pool, sizeof(*slot), on_relay_request_gone);
    *slot = relay;
    fm_req_hold(r);
    relay->held = 1;
    fm_metrics_counter_add("fm_edge_passthrough_total", NULL, 1);
    fetch_more(relay);
    if (relay->outstanding == 0) { /* not even the first GET could be queued: the relay goes with the request */
        relay->held = 0;
        relay->started = relay->finished = 1;
        fm_req_resume(r);
        fm_reply_unavailable(r, "the edge's origin queue");
    }
}

/* ---- the origin's HEAD ---- */

typedef struct {
    fm_req_t *r;
    char key[FM_EDGE_CACHE_KEY_MAX + 1]; /* a cache key: the object key, and the file's partition */
    char hex[FM_EDGE_HEX_LEN + 1];
    fm_edge_fill_cb cb;
    int rc;
    fm_s3_result_t res;
    time_t at;
} head_job_t;

static void head_work(void *data)
{
    head_job_t *job = data;
    char err[256] = "";
    fm_s3_t *s3 = fm_edge_thread_s3(err, sizeof(err));
    job->at = time(NULL);
    if (s3 == NULL) {
        fm_error("edge: S3 client: %s", err);
        job->rc = -1;
        snprintf(job->res.code, sizeof(job->res.code), "NoClient");
        return;
    }
    char object_key[FM_EDGE_KEY_MAX + 1];
    fm_edge_object_key(job->key, object_key, sizeof(object_key)); /* job->key is a cache key */
    job->rc = fm_s3_head_object(s3, object_key, &job->res);
    fm_metrics_counter_add("fm_edge_origin_heads_total", NULL, 1);
}

/* Back on the loop with the object's size, ETag and type: answer from them alone, pass through, or fill. */
static void head_done(void *data)
{
    head_job_t *job = data;
    fm_req_t *r = job->r;
    if (fm_req_resume(r) != 0)
        goto done;
    if (job->rc != 0 || job->res.content_length < 0) {
        reply_origin_error(r, job->res.status, job->res.code);
        goto done;
    }
    fm_edge_meta_t meta = {.size = (uint64_t)job->res.content_length, .stored_at = job->at};
    snprintf(meta.key, sizeof(meta.key), "%s", job->key);
    snprintf(meta.etag, sizeof(meta.etag), "%s", job->res.etag);
    snprintf(meta.content_type, sizeof(meta.content_type), "%s", job->res.content_type);
    uint64_t first, length;
    if (!fm_edge_answer_plan(r, &meta, &first, &length)) { /* HEAD, 304, 416, 400: the headers are all it takes */
        fm_edge_answer_headers(r, &meta, "miss", &first, &length);
        goto done;
    }
    uint64_t range_max = (uint64_t)fm_edge.cfg->edge_cold_range_max_bytes;
    if (meta.size > fm_edge_cache_object_max() || (length <= range_max && meta.size > range_max)) {
        fm_edge_passthrough(r, &meta);
        goto done;
    }
    /* A large part of a cacheable object: worth filling whole (a video's "bytes=0-", a download manager's parts). */
    if (fm_edge_origin_fill_object(r, job->key, job->hex, job->cb, NULL) != 0)
        fm_reply_unavailable(r, "the edge's origin queue");
done:
    free(job);
}

int fm_edge_origin_miss(fm_req_t *r, const char *key, const char *hex, fm_edge_fill_cb cb, fm_edge_stream_cb stream_cb)
{
    int needs_body = !is_head(r) && fm_req_header(r, "range").base == NULL &&
                     fm_req_header(r, "if-none-match").base == NULL &&
                     fm_req_header(r, "if-modified-since").base == NULL;
    if (needs_body) /* a plain GET: the whole object, worth caching (or passed through when too large) */
        return fm_edge_origin_fill_object(r, key, hex, cb, stream_cb);
    if (fm_edge_origin_join(r, hex, cb, stream_cb)) /* a fill in flight answers it as before, at no extra cost */
        return 0;
    head_job_t *job = calloc(1, sizeof(*job));
    if (job == NULL)
        h2o_fatal("out of memory");
    job->r = r;
    job->cb = cb;
    snprintf(job->key, sizeof(job->key), "%s", key);
    memcpy(job->hex, hex, FM_EDGE_HEX_LEN);
    fm_req_hold(r);
    if (fm_offload_run(r->thread->offload, head_work, head_done, job) != 0) {
        fm_req_resume(r);
        free(job);
        return -1;
    }
    return 0;
}
