/*
 * What the reconciler's files share: reconcile.c (the round: steps 1 and 3 to 5), incoming.c + incoming_settle.c
 * (step 2, the pass over what exists under incoming/) and edge_index.c (what fm-edge reads from Redis, rebuilt when
 * lost). Private to them; control.h holds the reconciler's face to the rest of fm-control. Everything here lives on
 * the reconciler's event-loop thread (thread 0).
 */
#ifndef FM_RECONCILE_INTERNAL_H
#define FM_RECONCILE_INTERNAL_H

#include "control.h"

#define BATCH 50 /* rows per step and round (steps 1, 3's multipart uploads, 4, 5) */

typedef struct {
    char id[40], key[64], method[24], s3_upload_id[FM_S3_UPLOAD_ID_MAX];
    long long size;
    int done_ok, kept;
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
    enum { STEP_JOBS, STEP_INCOMING, STEP_EXPIRE, STEP_SWEEP, STEP_TRASH } step;
    /* Unix time since which every object under incoming/ has been seen and settled (the start of the last clean
     * listing cycle, incoming.c); 0 = unknown: then no single-PUT upload expires (step 3). */
    long long covered;
    int expire_statements; /* step 3's statements this round */
    struct incoming *incoming; /* step 2's page and state */
    char quota_after[37];      /* the quota recount's place (quota.c): the last owner done, "" = from the first */
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
/** Drops the cached row of GET /v1/files/{id} (files.c), stale once the reconciler changed the file. */
void fm_reconcile_forget_file(reconcile_t *rc, const char *file_id);

/** Rebuilds fm:public and the revocation marks from PostgreSQL when Redis lost them (edge_index.c). */
void fm_edge_index_check(reconcile_t *rc);

/** Step 2's page and state for `rc` (incoming.c), or NULL without memory; freed with fm_incoming_free(). */
struct incoming *fm_incoming_new(reconcile_t *rc);
void fm_incoming_free(struct incoming *in);
/** Step 2: lists the next pages of incoming/ and settles each key; goes on with fm_reconcile_step_next() or ends
 *  the round. Sets rc->covered. */
void fm_incoming_start(reconcile_t *rc);

#endif
