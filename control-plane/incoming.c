/*
 * Step 2 of the reconciler (reconcile.c): what exists under incoming/, the only prefix a presigned URL ever names.
 * Its cost follows the objects in the bucket, never the presigns handed out (issue 10: a few million abandoned
 * presigns must not hide the uploads that did arrive).
 *
 * Each round lists up to PAGES_PER_ROUND pages of 1,000 keys (ListObjectsV2) after a cursor kept in Redis
 * (fm:reconcile:incoming, so the next round, on any instance, goes on where this one stopped; once through, the next
 * cycle starts from the beginning), and settles every key of a page with one PostgreSQL query
 * (schema/009_reconcile.sql fm_incoming_classify):
 *   - PENDING upload: its object came, but neither `complete` nor the event did. Objects at least MIN_AGE_S old
 *     (younger ones are left to a `complete` or event on their way) are HEADed, newest first, and their uploads marked
 *     UPLOADED with the size and ETag of the HEAD, all of a page in one statement (fm_uploads_found), each job then
 *     put on the stream: a size that is not the one announced fails the upload, and its object goes;
 *   - finished upload (COMPLETED, ABORTED, EXPIRED, FAILED): the object is a PUT that came after the fact with a URL
 *     still valid (or a leftover); it is deleted -- never verified, served or counted;
 *   - no uploads row: a record still only in Redis (written behind, records.c) is looked at again next round, when
 *     the flusher has written it; an object no record names, in Redis nor PostgreSQL, older than
 *     FM_UPLOAD_EXPIRY_S is an orphan (Redis lost the record, issue 3), deleted. Redis is asked before PostgreSQL
 *     confirms, because the flusher commits the rows before it deletes the record;
 *   - UPLOADED (its job needs the object), a blob's storage key, a hold (checked_at in the future), or a key that is
 *     not incoming/{uuid} (logged once at warn): left alone.
 * A cycle that went through every key and settled each one (no HEAD or mark failed) records its start as `covered`:
 * every object that existed then has been seen, so step 3 may expire a single-PUT upload whose URL had run out by
 * then without looking for its object (reconcile.c, fm_uploads_expire).
 *
 * This file holds the cycle, the listing, the classification and the stages of a page; incoming_settle.c what the
 * stages do.
 *
 * Cost per round: at most PAGES_PER_ROUND LIST calls (one per 1,000 keys), one classify query per page, one Redis
 * EXISTS per key without an uploads row, one HEAD per object of a PENDING upload (at most HEADS_PER_ROUND, then the
 * round ends after that page), one mark statement and one XADD per upload found, one DELETE per object deleted.
 * Every S3 call runs on the offload pool, a few at a time (HEADS_PER_CALL, DELETES_PER_CALL), so requests' S3 calls
 * are not queued behind a whole page.
 */
#include <stdlib.h>

#include "hash.h"
#include "incoming_internal.h"
#include "log.h"
#include "metrics.h"
#include "uuid.h"

static void list_next(incoming_t *in);

int fm_incoming_stopping(incoming_t *in)
{
    if (!in->rc->thread->shutting_down)
        return 0;
    fm_reconcile_round_end(in->rc);
    return 1;
}

/* incoming/{uuid}, the uuid as PostgreSQL prints it (lower-case: uuid.h's one case rule). */
static int upload_key(const char *key)
{
    return fm_incoming_key_id(key, strlen(key)) != NULL;
}

/* Someone else's object under incoming/ (a key we never make): never ours to delete; said once per key. */
static void foreign_key(incoming_t *in, const char *key)
{
    uint64_t hash = fm_fnv1a(key, strlen(key), 0);
    for (size_t i = 0; i < in->foreign_count; ++i)
        if (in->foreign_seen[i] == hash)
            return;
    if (in->foreign_count == FOREIGN_SEEN)
        return;
    in->foreign_seen[in->foreign_count++] = hash;
    char shown[FM_S3_KEY_MAX];
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)key; *p != '\0' && n < sizeof(shown) - 1; ++p)
        shown[n++] = *p < 0x20 || *p == 0x7f ? '?' : (char)*p; /* a key may hold a newline: one log line stays one */
    shown[n] = '\0';
    fm_warn("reconcile: object %s under incoming/ is not incoming/{upload id}: left alone%s", shown,
            in->foreign_count == FOREIGN_SEEN ? " (further such keys are not logged)" : "");
}

/* ---- the end of a page, of a round, of a cycle ------------------------------------------------------------------- */

static void save_state(incoming_t *in)
{
    char started[24], dirty[4], covered[24];
    snprintf(started, sizeof(started), "%lld", in->started);
    snprintf(dirty, sizeof(dirty), "%d", in->dirty);
    snprintf(covered, sizeof(covered), "%lld", in->covered);
    const char *argv[] = {"HSET",  STATE_KEY, "cursor", in->cursor, "started",
                          started, "dirty",   dirty,    "covered",  covered};
    fm_redis_commandargv(ct(in->rc)->redis, fm_reconcile_ignore_reply, NULL, 10, argv, NULL);
}

static void page_done(incoming_t *in)
{
    if (fm_incoming_stopping(in))
        return;
    if (in->recheck_page) {
        in->recheck_page = 0;
        list_next(in);
        return;
    }
    if (in->truncated) {
        snprintf(in->cursor, sizeof(in->cursor), "%s", in->objects[in->count - 1].key);
    } else {
        /* Through: every object that existed when the cycle began was seen (an object then younger than MIN_AGE_S
         * was left for later: the margin keeps those out of what is covered). */
        if (!in->dirty) {
            in->covered = in->started - MIN_AGE_S - 2;
            in->rc->covered = in->covered;
        } else {
            fm_info("reconcile: a listing of incoming/ left something unsettled: expiry waits for the next one");
        }
        in->cursor[0] = '\0';
        in->started = 0;
        in->dirty = 0;
    }
    save_state(in);
    if (in->truncated)
        list_next(in);
    else
        fm_reconcile_step_next(in->rc);
}

/* ---- the stages of a page ---------------------------------------------------------------------------------------- */

void fm_incoming_stage_next(incoming_t *in)
{
    for (;;) {
        if (fm_incoming_stopping(in))
            return;
        switch (in->stage) {
        case STAGE_RECORDS:
            if (count_todo(in, TODO_RECORD) > 0) {
                fm_incoming_ask_records(in);
                return;
            }
            break;
        case STAGE_ORPHANS:
            if (count_todo(in, TODO_ORPHAN) > 0) {
                fm_incoming_confirm_orphans(in);
                return;
            }
            break;
        case STAGE_HEADS:
            if (in->head_pos < in->order_count) {
                fm_incoming_head_some(in);
                return;
            }
            break;
        case STAGE_MARK:
            if (count_todo(in, TODO_MARK) > 0) {
                fm_incoming_mark_found(in);
                return;
            }
            break;
        case STAGE_ENQUEUE:
            if (count_todo(in, TODO_ENQUEUE) > 0) {
                fm_incoming_enqueue_jobs(in);
                return;
            }
            break;
        case STAGE_DELETE:
            if (fm_incoming_delete_some(in))
                return;
            break;
        case STAGE_DONE:
            page_done(in);
            return;
        }
        in->stage++;
    }
}

/* ---- a page: listed, then classified ----------------------------------------------------------------------------- */

static void on_classified(PGresult *res, const char *errstr, void *data)
{
    incoming_t *in = data;
    if (fm_incoming_stopping(in))
        return;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        /* the cursor stays: the next round lists this page again */
        fm_warn("reconcile: classifying incoming/ keys failed: %s", res ? PQresultErrorMessage(res) : errstr);
        fm_reconcile_step_next(in->rc);
        return;
    }
    static const char *const kinds[] = {"", "blob", "unrecorded", "pending", "held", "processing", "finished"};
    long long young = fm_incoming_now() - MIN_AGE_S;
    for (int row = 0; row < PQntuples(res); ++row) {
        long n = strtol(PQgetvalue(res, row, 0), NULL, 10);
        if (n < 1 || n > (long)in->count || in->param_index[n - 1] < 0)
            continue;
        size_t i = (size_t)in->param_index[n - 1];
        item_t *it = &in->items[i];
        const char *kind = PQgetvalue(res, row, 1);
        for (size_t k = 1; k < sizeof(kinds) / sizeof(kinds[0]); ++k)
            if (strcmp(kind, kinds[k]) == 0)
                it->kind = (unsigned char)k;
        int old_enough = in->objects[i].last_modified <= young;
        if (it->kind == KIND_PENDING && old_enough) {
            it->todo = TODO_HEAD;
            in->order[in->order_count++] = i;
        } else if (it->kind == KIND_UNRECORDED && old_enough) {
            it->todo = TODO_RECORD;
        } else if (it->kind == KIND_FINISHED && old_enough) {
            it->todo = TODO_DELETE;
            it->why = WHY_FINISHED;
        }
    }
    qsort_r(in->order, in->order_count, sizeof(in->order[0]), fm_incoming_newer_first, in);
    in->stage = STAGE_RECORDS;
    fm_incoming_stage_next(in);
}

/* The page in->objects[0..count) is read: each key of ours is classified in one query. */
static void page_start(incoming_t *in)
{
    memset(in->items, 0, sizeof(in->items[0]) * in->count);
    in->order_count = in->head_pos = in->del_pos = 0;
    param_reset(in);
    int keys = 0;
    for (size_t i = 0; i < in->count; ++i) {
        in->items[i].in = in;
        in->param_index[i] = -1;
        if (!upload_key(in->objects[i].key)) {
            foreign_key(in, in->objects[i].key);
            continue;
        }
        in->param_index[keys++] = (int)i;
        param_add(in, in->objects[i].key);
    }
    if (keys == 0) {
        in->stage = STAGE_DONE;
        fm_incoming_stage_next(in);
        return;
    }
    const char *params[] = {param_end(in)};
    fm_pg_query(ct(in->rc)->pg, on_classified, in, "SELECT out_n, out_class FROM fm_incoming_classify($1::text[])", 1,
                params);
}

static void list_work(void *data)
{
    incoming_t *in = ((reconcile_t *)data)->incoming;
    fm_s3_t *s3 = fm_offload_s3();
    memset(&in->res, 0, sizeof(in->res));
    if (s3 == NULL) {
        in->list_ok = 0;
        snprintf(in->res.code, sizeof(in->res.code), "NoClient");
        snprintf(in->res.message, sizeof(in->res.message), "no S3 client on the offload thread");
        return;
    }
    in->list_ok =
        fm_s3_list_objects(s3, PREFIX, in->cursor, PAGE, in->objects, PAGE, &in->count, &in->truncated, &in->res) == 0;
}

static void on_listed(void *data)
{
    reconcile_t *rc = data;
    incoming_t *in = rc->incoming;
    rc->offload_pending = 0;
    if (fm_incoming_stopping(in))
        return;
    if (!in->list_ok) {
        fm_warn("reconcile: listing incoming/ after '%s' failed: %s: %s", in->cursor, in->res.code, in->res.message);
        fm_reconcile_step_next(rc);
        return;
    }
    fm_metrics_counter_add("fm_reconcile_incoming_listed_total", NULL, (double)in->count);
    if (in->count == 0) { /* an empty prefix: a cycle through at once */
        in->truncated = 0;
        in->stage = STAGE_DONE;
        fm_incoming_stage_next(in);
        return;
    }
    page_start(in);
}

/* The next page of the listing, unless this round has done its share. */
static void list_next(incoming_t *in)
{
    if (fm_incoming_stopping(in))
        return;
    if (in->pages >= PAGES_PER_ROUND || in->heads >= HEADS_PER_ROUND) {
        fm_reconcile_step_next(in->rc);
        return;
    }
    in->pages++;
    if (in->cursor[0] == '\0') { /* a new cycle: what exists from now on is what it covers */
        in->started = fm_incoming_now() - 1;
        in->dirty = 0;
    }
    in->count = 0;
    if (fm_offload_run(in->rc->thread->offload, list_work, on_listed, in->rc) == 0)
        in->rc->offload_pending = 1;
    else
        fm_reconcile_round_end(in->rc);
}

/* Last round's objects of records that were still only in Redis, as a page of their own. */
static void recheck_page(incoming_t *in)
{
    size_t n = in->recheck_count;
    memcpy(in->rechecking, in->recheck, n * sizeof(in->recheck[0]));
    in->recheck_count = 0;
    for (size_t i = 0; i < n; ++i) {
        memcpy(in->objects[i].key, in->rechecking[i].key, KEY_LEN + 1);
        in->objects[i].size = in->rechecking[i].size;
        in->objects[i].last_modified = in->rechecking[i].last_modified;
    }
    in->count = n;
    in->recheck_page = 1;
    page_start(in);
}

static long long field_number(const redisReply *reply, size_t i)
{
    if (reply->type != REDIS_REPLY_ARRAY || i >= reply->elements || reply->element[i]->type != REDIS_REPLY_STRING)
        return 0;
    return strtoll(reply->element[i]->str, NULL, 10);
}

static void on_state(redisReply *reply, const char *errstr, void *data)
{
    incoming_t *in = data;
    if (fm_incoming_stopping(in))
        return;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements != 4) {
        fm_warn("reconcile: reading %s failed: %s", STATE_KEY, reply == NULL ? errstr : "not an array");
        fm_reconcile_step_next(in->rc);
        return;
    }
    /* the cursor: one we wrote (under incoming/, no NUL, not too long), else the listing starts again */
    const redisReply *cursor = reply->element[0];
    in->cursor[0] = '\0';
    if (cursor->type == REDIS_REPLY_STRING && cursor->len < FM_S3_KEY_MAX && cursor->len > PREFIX_LEN &&
        memchr(cursor->str, '\0', cursor->len) == NULL && memcmp(cursor->str, PREFIX, PREFIX_LEN) == 0) {
        memcpy(in->cursor, cursor->str, cursor->len);
        in->cursor[cursor->len] = '\0';
    }
    in->started = field_number(reply, 1);
    in->dirty = field_number(reply, 2) != 0;
    in->covered = field_number(reply, 3);
    in->rc->covered = in->covered;
    if (in->cursor[0] != '\0' && in->started <= 0) { /* a cycle of unknown start covers nothing */
        in->started = 0;
        in->dirty = 1;
    }
    in->pages = in->heads = 0;
    if (in->recheck_count > 0)
        recheck_page(in);
    else
        list_next(in);
}

void fm_incoming_start(reconcile_t *rc)
{
    incoming_t *in = rc->incoming;
    const char *argv[] = {"HMGET", STATE_KEY, "cursor", "started", "dirty", "covered"};
    if (fm_redis_commandargv(ct(rc)->redis, on_state, in, 6, argv, NULL) != 0)
        fm_reconcile_round_end(rc);
}

struct incoming *fm_incoming_new(reconcile_t *rc)
{
    incoming_t *in = calloc(1, sizeof(*in));
    if (in == NULL)
        return NULL;
    in->rc = rc;
    in->param_size =
        (size_t)PAGE * (sizeof(in->items[0].etag) + 4) + 4; /* the longest array: a page of quoted ETags or keys */
    if ((in->param = malloc(in->param_size)) == NULL) {
        free(in);
        return NULL;
    }
    fm_metrics_describe("fm_reconcile_incoming_listed_total", FM_METRIC_COUNTER,
                        "Keys under incoming/ listed by the reconciler (step 2)");
    fm_metrics_describe("fm_reconcile_uploads_found_total", FM_METRIC_COUNTER,
                        "Uploads marked UPLOADED because the reconciler found their object (no complete, no event)");
    fm_metrics_describe("fm_reconcile_orphans_deleted_total", FM_METRIC_COUNTER,
                        "Objects under incoming/ deleted because no upload record, in Redis or PostgreSQL, names them");
    fm_metrics_describe("fm_reconcile_late_objects_deleted_total", FM_METRIC_COUNTER,
                        "Objects under incoming/ deleted because their upload was finished (or failed on its size) "
                        "before they came");
    return in;
}

void fm_incoming_free(struct incoming *in)
{
    if (in != NULL)
        free(in->param);
    free(in);
}
