/*
 * The HTTP server shared by fm-control, fm-edge and fm-worker's health port: one h2o event loop per thread
 * (SO_REUSEPORT listeners spread connections), HTTP/1.1 + h2c on the plain port, TLS with ALPN h2 on the TLS
 * port, one catch-all h2o handler that dispatches through the router, /healthz and /metrics for every service,
 * and graceful shutdown on SIGTERM/SIGINT (stop accepting, finish in-flight requests, exit 0).
 */
#ifndef FM_SERVER_H
#define FM_SERVER_H

#include <h2o.h>
#include <pthread.h>

#include "offload.h"
#include "router.h"

typedef struct fm_thread fm_thread_t;
struct fm_req;

/** What a service gives the server. Borrowed for the life of fm_server_run(). */
typedef struct fm_server_spec {
    const char *service; /* "fm-control" … (logs, metrics) */
    const fm_route_t *routes;
    size_t route_count;
    const char *bind;
    int http_port;  /* required */
    int https_port; /* 0 = no TLS listener */
    const char *tls_cert, *tls_key;
    size_t threads;
    size_t offload_threads;
    /** Threads of a second pool for password hashing (fm_thread_t.hash); 0 = none, hashes go to the offload pool. */
    size_t hash_threads;
    /** Hashes that may wait for a hashing thread; a job beyond is refused at once (503). 0 = 1024. */
    size_t hash_queue_max;
    size_t max_body_bytes;
    uint64_t graceful_timeout_ms;
    /** Answers GET/HEAD requests that match no route (static files); NULL = 404. */
    void (*fallback)(struct fm_req *r);
    /** Per-thread set-up and tear-down (on the thread, around its loop); may be NULL. Nonzero = fail start. */
    int (*thread_init)(fm_thread_t *thread);
    void (*thread_dispose)(fm_thread_t *thread);
    /** Called on each thread once a second (pool gauges for /metrics …); may be NULL. */
    void (*thread_tick)(fm_thread_t *thread);
    void *app; /* the service's process-wide state */
} fm_server_spec_t;

/** One event-loop thread. Owned by the server; services keep their per-thread state in `data`. */
struct fm_thread {
    size_t index;
    pthread_t tid;
    const fm_server_spec_t *spec;
    h2o_evloop_t *loop;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_plain, accept_tls;
    h2o_socket_t *listeners[2];
    h2o_multithread_queue_t *queue;
    h2o_multithread_receiver_t shutdown_receiver;
    h2o_timeout_t tick_timeout;
    h2o_timeout_entry_t tick_entry;
    fm_offload_port_t *offload;
    fm_offload_port_t *hash; /* NULL without spec->hash_threads */
    size_t inflight; /* requests dispatched and not yet freed by h2o */
    int shutting_down;
    int init_status;
    void *data;
};

/**
 * Blocks SIGTERM and SIGINT in the calling thread, and so in every thread it starts afterwards. A service's main()
 * calls it before any library that starts threads (libvips' workers, …): a stop signal sent before fm_server_run
 * reaches its sigwait() then waits for it, instead of being delivered to such a thread and killing the process
 * without a graceful stop.
 */
void fm_server_block_stop_signals(void);

/**
 * Whether the password hashing pool's queue is full (spec->hash_queue_max hashes waiting), so that a login can be
 * answered 503 before its attempt is counted; a submission can still be refused if the queue fills meanwhile.
 * 0 without a hashing pool. Any thread, while fm_server_run runs.
 */
int fm_server_hash_full(void);

/** Runs the service until SIGTERM/SIGINT; returns the process exit status (0 after a graceful stop). */
int fm_server_run(const fm_server_spec_t *spec);

/** Monotonic clock in nanoseconds. */
uint64_t fm_now_ns(void);

#endif
