/*
 * purge: tells every fm-edge to drop cached copies of a blob (DESIGN.md §4 "Delete": "async cleanup purges edge
 * caches"; docs/workers.md "Edge purge"). A purge_edge job (schema/006_trash.sql fm_purge_job) carries the keys and
 * key prefixes; the worker POSTs {"keys":[…],"prefixes":[…]} with X-FM-Edge-Secret (FM_EDGE_PURGE_SECRET) to
 * {base}/_edge/purge for each base URL of FM_EDGE_PURGE_URLS (edge/purge.c answers it). The control plane makes one
 * when a file is trashed and no live file uses its blob any more; a cleanup_blob job makes one after it deleted the
 * blob's objects.
 */
#ifndef FM_PURGE_H
#define FM_PURGE_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "handle.h"

/* Per edge: connecting, and the whole request. A purge is small; an edge that takes longer is treated as down. */
#define FM_PURGE_CONNECT_TIMEOUT_MS 2000
#define FM_PURGE_TIMEOUT_MS 10000

/** What a purge_edge job did. */
typedef enum {
    FM_PURGE_DONE,     /* every edge answered 2xx: job DONE (payload.result "purged", payload.edges) */
    FM_PURGE_NO_EDGES, /* FM_EDGE_PURGE_URLS is empty, or nothing to purge: job DONE (result "no_edges"/"nothing") */
    FM_PURGE_RETRY,    /* an edge refused or could not be reached: `reason` says which (the caller retries the job) */
    FM_PURGE_LEFT,     /* PostgreSQL failed: the entry stays pending */
    FM_PURGE_FAIL,     /* an edge refused the request itself (a 4xx other than 401/403/408/429): the same body would
                        * be refused again, so the attempt counts toward FM_JOB_MAX_ATTEMPTS (`reason` says which) */
} fm_purge_rc;

/**
 * POSTs {"keys": keys, "prefixes": prefixes} (JSON arrays of strings, borrowed) to {base}/_edge/purge of every base
 * URL in `urls` (FM_EDGE_PURGE_URLS syntax) with X-FM-Edge-Secret: `secret`. Blocking, bounded by the timeouts above.
 * Returns the number of edges that answered 2xx (0 when `urls` lists none), or, at the first edge that did not, with
 * `reason` naming it and what happened (HTTP status or connection error; the secret never appears): -1 when the edge
 * was unavailable (no connection, a timeout, 5xx) or refused our credentials or pace (401, 403, 408, 429: an
 * operator's or a moment's matter), -2 when it refused the request itself (any other status).
 */
int fm_edge_purge(const char *urls, const char *secret, const cJSON *keys, const cJSON *prefixes, char *reason,
                  size_t reason_size);

/**
 * Runs the purge_edge job `job_id`, which the caller has locked and marked RUNNING: reads its payload, purges every
 * edge of the worker's configuration and marks the job DONE. On FM_PURGE_RETRY `reason` holds why.
 */
fm_purge_rc fm_purge_job(fm_worker_t *w, const char *job_id, char *reason, size_t reason_size);

#endif /* FM_PURGE_H */
