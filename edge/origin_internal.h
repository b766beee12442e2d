/*
 * What edge/origin.c (the table of fills in flight, the waiters, the streams on the loop threads) and edge/fill.c
 * (a fill's blocking work on an offload thread: the origin GET into a temp file, or a variant's render) share. Not
 * part of the edge's interface (edge.h); the comment at the top of origin.c tells the lifetimes and the locking.
 * Fields marked "under lock" are origin.c's mutex's: fill.c reaches them only through the fm_edge_fill_* calls
 * below, which take it.
 */
#ifndef FM_EDGE_ORIGIN_INTERNAL_H
#define FM_EDGE_ORIGIN_INTERNAL_H

#include <stdatomic.h>
#include <stdint.h>

#include "edge.h"

typedef struct edge_thread {
    h2o_multithread_receiver_t receiver;
    fm_thread_t *thread;
    size_t waiting;         /* waiters of this thread not yet freed (they may still get a message) */
    size_t cut_pending;     /* streams cut at shutdown whose next proceed (h2o's turn) has not come */
    h2o_linklist_t streams; /* waiters of this thread whose body is being streamed */
} edge_thread_t;

typedef struct fill fill_t;

typedef enum { WAITER_WAITING, WAITER_STREAMING, WAITER_FINISHED } waiter_state_t;

typedef struct waiter {
    h2o_multithread_message_t message; /* first: the receiver hands it back by this link */
    struct waiter *next;               /* in fill->waiters (under lock) */
    fill_t *fill;                      /* a reference */
    fm_req_t *r;
    fm_edge_fill_cb cb;
    fm_edge_stream_cb stream_cb; /* NULL: waits for the complete object */
    edge_thread_t *et;
    /* under lock */
    int queued; /* the message is in et's queue */
    int parked; /* a stream that caught up (and holds the turn to send): wake it at the next progress */
    int listed; /* in fill->waiters */
    /* on the loop thread only */
    waiter_state_t state;
    h2o_generator_t gen; /* while STREAMING */
    h2o_req_t *req;      /* while STREAMING */
    h2o_linklist_t stream_link;
    int fd;
    uint64_t offset, size;
    char *buf; /* STREAM_CHUNK bytes from the request's pool */
    int headers_sent;
    int cut;              /* shutdown: end with an error at the next turn */
    int direct;           /* answers its client with the object (fm_edge_origin_miss): passed through when too large */
    int live;             /* under lock: its client still waits (counts in fill->live) */
    struct waiter **slot; /* in the request's pool: cleared by whichever of the two goes first */
} waiter_t;

struct fill {
    struct fill *next; /* in the table of fills in flight */
    char hex[FM_EDGE_HEX_LEN + 1];
    char key[FM_EDGE_CACHE_KEY_MAX + 1];
    /* under lock */
    waiter_t *waiters;
    int purged;
    int refs;                     /* the work until fill_done, and one per waiter */
    int headers_known;            /* `head` is set: streams may start */
    fm_edge_meta_t head;          /* the origin's object, as the streams announce it (immutable once known) */
    int read_fd;                  /* read-only on the temp file; streams dup it (set with headers_known) */
    uint64_t written;             /* bytes in the temp file, as last reported */
    int done;                     /* the work finished: `result` and `stream_ok` are final */
    int stream_ok;                /* the streamed bytes are the whole object `head` announced */
    fm_edge_fill_result_t result; /* for waiters served from the cache; result.fd is the fill's, waiters dup it */
    int stopping;                 /* abandoned: no waiter may join it any more */
    atomic_int live;              /* waiters whose client still waits (changed under lock, read by the work) */
    /* renders only */
    int is_render;
    fm_edge_variant_t variant;
    int src_fd;
    char src_etag[256];
    char client[64]; /* who started it: counted against FM_EDGE_RENDERS_PER_CLIENT until fill_done */
};

/* origin.c, called by the fill's work (offload thread; each takes the lock) */

/** Whether a fill nobody waits for should stop (docs/downloads.md "Abandoned fills"): 1 marks it stopping. */
int fm_edge_fill_should_stop(fill_t *fill, uint64_t written, long long size);
/** Wakes the fill's parked streams: `written` bytes are in the temp file. */
void fm_edge_fill_report_progress(fill_t *fill, uint64_t written);
/** The origin's answer is known: the streaming waiters may answer their headers, reading from `read_fd`. */
void fm_edge_fill_announce_headers(fill_t *fill, const fm_edge_meta_t *head, int read_fd);

/* fill.c, on an offload thread */

/** The origin GET of fill->key into `tmp_path`, published into the cache (result->fd) or the reason in `result`;
 * streamed meanwhile to the waiters that can take it. Returns whether the bytes streamed are the whole object. */
int fm_edge_fill_fetch(fill_t *fill, const char *tmp_path, fm_edge_fill_result_t *result);
/** The variant fill->variant rendered from the original open on fill->src_fd (closed here), published likewise. */
void fm_edge_fill_render(fill_t *fill, const char *tmp_path, fm_edge_fill_result_t *result);

#endif
