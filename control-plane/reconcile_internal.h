/*
 * What the reconciler's files share: reconcile.c (the round, steps 1 to 5), orphans.c (step 6, the orphan sweep) and
 * edge_index.c (what fm-edge reads from Redis, rebuilt when lost). Private to them; control.h holds the reconciler's face to the rest of fm-control.
 */
#ifndef FM_RECONCILE_INTERNAL_H
#define FM_RECONCILE_INTERNAL_H

#include "control.h"

#define BATCH 50 /* rows per step and round */

typedef struct {
    char id[40], key[64], method[24], s3_upload_id[FM_S3_UPLOAD_ID_MAX], etag[256];
    long long size, found_size;
    int found, done_ok;
} row_t;

typedef struct reconcile {
    fm_thread_t *thread;
    h2o_timeout_t interval;
    h2o_timeout_entry_t entry;
    int running;
    int offload_pending; /* an S3 call on the offload pool still refers to this */
    int public_running;  /* a rebuild of fm:public is in flight (edge_index.c) */
    int marks_running;   /* a rebuild of the revocation marks is in flight (edge_index.c) */
    row_t rows[BATCH];
    int row_count, next_row;
    enum { STEP_JOBS, STEP_PROBE, STEP_EXPIRE, STEP_SWEEP, STEP_TRASH, STEP_ORPHANS } step;
    struct orphans *orphans; /* step 6's page and state */
} reconcile_t;

/* The connections of the reconciler's thread. */
static inline fm_control_thread_t *ct(reconcile_t *rc)
{
    return rc->thread->data;
}

/** Ends the round: the next tick may start one. */
void fm_reconcile_round_end(reconcile_t *rc);
/** Goes on with the step after rc->step, or ends the round after the last one. */
void fm_reconcile_step_next(reconcile_t *rc);
/** A Redis callback for commands whose answer does not matter. */
void fm_reconcile_ignore_reply(redisReply *reply, const char *errstr, void *data);

/** Rebuilds fm:public and the revocation marks from PostgreSQL when Redis lost them (edge_index.c). */
void fm_edge_index_check(reconcile_t *rc);

/** Step 6's page and state for `rc` (orphans.c), or NULL without memory; owned by rc, freed with free(). */
struct orphans *fm_orphans_new(reconcile_t *rc);
/** Step 6: a pass of the orphan sweep when one is due; goes on with fm_reconcile_step_next() or ends the round. */
void fm_orphans_start(reconcile_t *rc);

#endif
