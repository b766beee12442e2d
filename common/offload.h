/*
 * A small pool of threads for blocking work (argon2id hashing, S3 calls over libcurl, SMTP): DESIGN.md §3 keeps
 * event-loop threads free of blocking calls. A job runs `work` on a pool thread, then `done` back on the loop
 * that submitted it, through h2o's multithread queue.
 */
#ifndef FM_OFFLOAD_H
#define FM_OFFLOAD_H

#include <h2o.h>
#include <stddef.h>

typedef struct fm_offload fm_offload_t;           /* process-wide; owned by main */
typedef struct fm_offload_port fm_offload_port_t; /* one per event loop; owned by that loop's thread */

/** Starts `threads` workers and bounds the waiting jobs to `max_queued` (submissions beyond fail). */
fm_offload_t *fm_offload_create(size_t threads, size_t max_queued);

/** Stops the workers after the queued jobs ran (their `done` callbacks are delivered if the ports still exist). */
void fm_offload_destroy(fm_offload_t *pool);

/** Creates the reply port of one event loop (call on that loop's thread). */
fm_offload_port_t *fm_offload_port_create(fm_offload_t *pool, h2o_loop_t *loop);

/** Destroys a port; call after every job it submitted has completed. */
void fm_offload_port_destroy(fm_offload_port_t *port);

/**
 * Runs work(data) on a pool thread and then done(data) on the port's loop. Returns 0, or -1 when the queue is
 * full (the caller answers 503). `data` must stay alive until `done` runs.
 */
int fm_offload_run(fm_offload_port_t *port, void (*work)(void *data), void (*done)(void *data), void *data);

/** Jobs this port submitted whose `done` has not run yet (a loop waits for zero before it ends). */
size_t fm_offload_port_outstanding(fm_offload_port_t *port);

/** Jobs waiting for a thread (for /metrics). */
size_t fm_offload_queued(fm_offload_t *pool);

#endif
