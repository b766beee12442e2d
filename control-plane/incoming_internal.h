/*
 * What the two files of the reconciler's step 2 share: incoming.c (the pass over incoming/: the cycle and its cursor,
 * listing a page, classifying its keys, the stages of a page) and incoming_settle.c (what a page does with its keys:
 * records in Redis, orphans, HEADs, marks, jobs, deletions). Private to them; everything runs on the reconciler's
 * event-loop thread, except the *_work functions, which run on the offload pool while the loop waits for them.
 */
#ifndef FM_INCOMING_INTERNAL_H
#define FM_INCOMING_INTERNAL_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "reconcile_internal.h"

#define PREFIX "incoming/"
#define PREFIX_LEN (sizeof(PREFIX) - 1)
#define KEY_LEN (PREFIX_LEN + 36)
#define PAGE FM_S3_LIST_MAX_KEYS /* keys per listing call: S3's most */
#define PAGES_PER_ROUND 10
#define HEADS_PER_ROUND 1000
#define HEADS_PER_CALL 8
#define DELETES_PER_CALL 16
#define MIN_AGE_S 2       /* an object younger than this (whole seconds) is left to `complete` and its event */
#define RECHECK_MAX 1000  /* objects of records still only in Redis, looked at again next round */
#define FOREIGN_SEEN 1024 /* foreign keys remembered, so that each is logged once per process */
#define STATE_KEY "fm:reconcile:incoming"

/* What a listed key is (fm_incoming_classify), and what the page does with it. */
enum { KIND_FOREIGN, KIND_BLOB, KIND_UNRECORDED, KIND_PENDING, KIND_HELD, KIND_PROCESSING, KIND_FINISHED };
enum { TODO_NONE, TODO_RECORD, TODO_ORPHAN, TODO_HEAD, TODO_MARK, TODO_ENQUEUE, TODO_DELETE };
enum { WHY_ORPHAN = 1, WHY_FINISHED, WHY_MISMATCH };

typedef struct item {
    struct incoming *in;
    unsigned char kind, todo, why, done;
    long long head_size;
    char etag[sizeof(((fm_s3_result_t *)0)->etag)], job_id[40], file_id[40];
} item_t;

typedef struct {
    char key[KEY_LEN + 1];
    long long size, last_modified;
} recheck_t;

typedef enum {
    STAGE_RECORDS, /* Redis: records of keys without an uploads row */
    STAGE_ORPHANS, /* PostgreSQL: confirm the orphans */
    STAGE_HEADS,   /* S3: HEAD the objects of PENDING uploads */
    STAGE_MARK,    /* PostgreSQL: mark them UPLOADED */
    STAGE_ENQUEUE, /* Redis: their jobs on the stream, then enqueued_at */
    STAGE_DELETE,  /* S3: objects nobody may keep */
    STAGE_DONE
} stage_t;

typedef struct incoming {
    reconcile_t *rc;
    /* the cycle (saved in Redis after each page) */
    char cursor[FM_S3_KEY_MAX];
    long long started, covered;
    int dirty;
    /* the round */
    int pages, heads;
    /* the page */
    int recheck_page; /* the page is last round's rechecks, not a listing */
    fm_s3_object_t objects[PAGE];
    item_t items[PAGE];
    size_t order[PAGE]; /* items to HEAD, newest first */
    size_t deleting[DELETES_PER_CALL];
    size_t count, order_count, head_pos, chunk, del_pos, del_count;
    int truncated, list_ok, replies_due;
    stage_t stage;
    fm_s3_result_t res;
    char *param; /* an array literal for PostgreSQL, being built */
    size_t param_size, param_len;
    int param_index[PAGE]; /* classify's ordinality - 1 -> item */
    recheck_t recheck[RECHECK_MAX], rechecking[RECHECK_MAX];
    size_t recheck_count;
    uint64_t foreign_seen[FOREIGN_SEEN];
    size_t foreign_count;
} incoming_t;

/* The round ends here when the thread is stopping (the pools are going away: no new calls). */
int fm_incoming_stopping(incoming_t *in);
/** Runs the current stage of the page, or the first one after it that has work (incoming.c). A callback that ends its
 *  stage increments in->stage first, one that did a part of it (a chunk of HEADs or DELETEs) does not. */
void fm_incoming_stage_next(incoming_t *in);

/* The stages (incoming_settle.c); each calls fm_incoming_stage_next() when it is done. */
void fm_incoming_ask_records(incoming_t *in);
void fm_incoming_confirm_orphans(incoming_t *in);
/** HEADs the next chunk of in->order (the page's PENDING uploads, newest first). */
void fm_incoming_head_some(incoming_t *in);
void fm_incoming_mark_found(incoming_t *in);
void fm_incoming_enqueue_jobs(incoming_t *in);
/** Deletes the next few objects marked TODO_DELETE; 0 when none is left. */
int fm_incoming_delete_some(incoming_t *in);
/** qsort_r order of item indexes: the newest object first. */
int fm_incoming_newer_first(const void *a, const void *b, void *arg);

static inline long long fm_incoming_now(void)
{
    return (long long)time(NULL);
}

/* ---- array parameters for PostgreSQL ----------------------------------------------------------------------------- */

static inline void param_reset(incoming_t *in)
{
    in->param[0] = '\0';
    in->param_len = 0;
}

/* Appends `value` to the array literal being built, quoted (keys and ETags that reach here hold no '"' or '\\'). */
static inline void param_add(incoming_t *in, const char *value)
{
    int n = snprintf(in->param + in->param_len, in->param_size - in->param_len, "%s\"%s\"",
                     in->param_len == 0 ? "{" : ",", value);
    if (n > 0 && (size_t)n < in->param_size - in->param_len)
        in->param_len += (size_t)n;
}

static inline const char *param_end(incoming_t *in)
{
    snprintf(in->param + in->param_len, in->param_size - in->param_len, "%s}", in->param_len == 0 ? "{" : "");
    return in->param;
}

static inline size_t count_todo(incoming_t *in, int todo)
{
    size_t n = 0;
    for (size_t i = 0; i < in->count; ++i)
        n += in->items[i].todo == todo;
    return n;
}

#endif
