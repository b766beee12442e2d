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
 * Cost per round: at most PAGES_PER_ROUND LIST calls (one per 1,000 keys), one classify query per page, one Redis
 * EXISTS per key without an uploads row, one HEAD per object of a PENDING upload (at most HEADS_PER_ROUND, then the
 * round ends after that page), one mark statement and one XADD per upload found, one DELETE per object deleted.
 * Every S3 call runs on the offload pool, a few at a time (HEADS_PER_CALL, DELETES_PER_CALL), so requests' S3 calls
 * are not queued behind a whole page.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hash.h"
#include "log.h"
#include "metrics.h"
#include "reconcile_internal.h"

#define PREFIX "incoming/"
#define PREFIX_LEN (sizeof(PREFIX) - 1)
#define KEY_LEN (PREFIX_LEN + 36)
#define PAGE FM_S3_LIST_MAX_KEYS /* keys per listing call: S3's most */
#define PAGES_PER_ROUND 10
#define HEADS_PER_ROUND 1000
#define HEADS_PER_CALL 8
#define DELETES_PER_CALL 16
#define MIN_AGE_S 2        /* an object younger than this (whole seconds) is left to `complete` and its event */
#define RECHECK_MAX 1000   /* objects of records still only in Redis, looked at again next round */
#define FOREIGN_SEEN 1024  /* foreign keys remembered, so that each is logged once per process */
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

static void stage_next(incoming_t *in);
static void list_next(incoming_t *in);

static long long now_s(void)
{
    return (long long)time(NULL);
}

/* The round ends here when the thread is stopping (the pools are going away: no new calls). */
static int stopping(incoming_t *in)
{
    if (!in->rc->thread->shutting_down)
        return 0;
    fm_reconcile_round_end(in->rc);
    return 1;
}

/* incoming/{uuid}, the uuid as PostgreSQL prints it (lower-case, 8-4-4-4-12). */
static int upload_key(const char *key)
{
    if (strncmp(key, PREFIX, PREFIX_LEN) != 0 || strlen(key) != KEY_LEN)
        return 0;
    const char *id = key + PREFIX_LEN;
    for (int i = 0; i < 36; ++i) {
        int dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? id[i] != '-' : !((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
            return 0;
    }
    return 1;
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

/* ---- array parameters ---------------------------------------------------------------------------------------- */

static void param_reset(incoming_t *in)
{
    in->param[0] = '\0';
    in->param_len = 0;
}

/* Appends `value` to the array literal being built, quoted (keys and ETags that reach here hold no '"' or '\\'). */
static void param_add(incoming_t *in, const char *value)
{
    int n = snprintf(in->param + in->param_len, in->param_size - in->param_len, "%s\"%s\"",
                     in->param_len == 0 ? "{" : ",", value);
    if (n > 0 && (size_t)n < in->param_size - in->param_len)
        in->param_len += (size_t)n;
}

static const char *param_end(incoming_t *in)
{
    snprintf(in->param + in->param_len, in->param_size - in->param_len, "%s}", in->param_len == 0 ? "{" : "");
    return in->param;
}

static size_t count_todo(incoming_t *in, int todo)
{
    size_t n = 0;
    for (size_t i = 0; i < in->count; ++i)
        n += in->items[i].todo == todo;
    return n;
}

/* ---- the end of a page, of a round, of a cycle ----------------------------------------------------------------- */

static void save_state(incoming_t *in)
{
    char started[24], dirty[4], covered[24];
    snprintf(started, sizeof(started), "%lld", in->started);
    snprintf(dirty, sizeof(dirty), "%d", in->dirty);
    snprintf(covered, sizeof(covered), "%lld", in->covered);
    const char *argv[] = {"HSET", STATE_KEY, "cursor", in->cursor, "started", started,
                          "dirty", dirty,    "covered", covered};
    fm_redis_commandargv(ct(in->rc)->redis, fm_reconcile_ignore_reply, NULL, 10, argv, NULL);
}

static void page_done(incoming_t *in)
{
    if (stopping(in))
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

/* ---- deleting what nobody may keep --------------------------------------------------------------------------- */

static void delete_work(void *data)
{
    incoming_t *in = ((reconcile_t *)data)->incoming;
    fm_s3_t *s3 = fm_offload_s3();
    fm_s3_result_t res;
    for (size_t n = 0; n < in->del_count && s3 != NULL; ++n) {
        size_t i = in->deleting[n];
        if (fm_s3_delete_object(s3, in->objects[i].key, &res) == 0 || res.status == 404) {
            in->items[i].done = 1;
            continue;
        }
        if (in->res.code[0] == '\0')
            in->res = res;
        if (res.status == 0)
            return; /* the store is away: the rest waits for the next listing rather than each for its timeout */
    }
}

static void on_deleted(void *data)
{
    reconcile_t *rc = data;
    incoming_t *in = rc->incoming;
    rc->offload_pending = 0;
    long long now = now_s();
    int failed = 0;
    for (size_t n = 0; n < in->del_count; ++n) {
        const item_t *it = &in->items[in->deleting[n]];
        const fm_s3_object_t *o = &in->objects[in->deleting[n]];
        if (!it->done) {
            failed++;
        } else if (it->why == WHY_ORPHAN) {
            fm_info("reconcile: deleted orphan object %s (%lld bytes, %lld s old): no upload record in Redis or "
                    "PostgreSQL, no blob",
                    o->key, o->size, now - o->last_modified);
            fm_metrics_counter_add("fm_reconcile_orphans_deleted_total", NULL, 1);
        } else {
            fm_info("reconcile: deleted %s (%lld bytes): %s", o->key, o->size,
                    it->why == WHY_FINISHED ? "its upload was finished before it came (a late PUT)"
                                            : "not the size announced, its upload failed");
            fm_metrics_counter_add("fm_reconcile_late_objects_deleted_total", NULL, 1);
        }
    }
    if (failed > 0) {
        fm_warn("reconcile: %d object(s) under incoming/ not deleted (%s); the next listing tries again", failed,
                in->res.code[0] != '\0' ? in->res.code : "S3 unreachable");
        if (in->res.status == 0)
            in->stage = STAGE_DONE;
    }
    stage_next(in);
}

/* The next few objects to delete, on the offload pool; 0 when none is left. */
static int delete_some(incoming_t *in)
{
    in->del_count = 0;
    for (; in->del_pos < in->count && in->del_count < DELETES_PER_CALL; ++in->del_pos)
        if (in->items[in->del_pos].todo == TODO_DELETE) {
            in->items[in->del_pos].done = 0;
            in->deleting[in->del_count++] = in->del_pos;
        }
    if (in->del_count == 0)
        return 0;
    memset(&in->res, 0, sizeof(in->res));
    if (fm_offload_run(in->rc->thread->offload, delete_work, on_deleted, in->rc) == 0)
        in->rc->offload_pending = 1;
    else
        fm_reconcile_round_end(in->rc);
    return 1;
}

/* ---- the jobs of the uploads found ------------------------------------------------------------------------------ */

static void on_enqueued_recorded(PGresult *res, const char *errstr, void *data)
{
    incoming_t *in = data;
    if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK) /* step 1 puts them on the stream once more */
        fm_warn("reconcile: recording enqueued jobs failed: %s", res ? PQresultErrorMessage(res) : errstr);
    in->stage++;
    stage_next(in);
}

static void enqueue_done(incoming_t *in)
{
    if (--in->replies_due > 0 || stopping(in))
        return;
    param_reset(in);
    int any = 0;
    for (size_t i = 0; i < in->count; ++i)
        if (in->items[i].todo == TODO_ENQUEUE && in->items[i].done) {
            param_add(in, in->items[i].job_id);
            any = 1;
        }
    if (!any) { /* Redis took none: step 1 adds them next round */
        in->stage++;
        stage_next(in);
        return;
    }
    const char *params[] = {param_end(in)};
    fm_pg_query(ct(in->rc)->pg, on_enqueued_recorded, in, "UPDATE jobs SET enqueued_at = now() WHERE id = ANY($1::uuid[])",
                1, params);
}

static void on_xadd(redisReply *reply, const char *errstr, void *data)
{
    item_t *it = data;
    if (reply != NULL && reply->type != REDIS_REPLY_ERROR)
        it->done = 1;
    else
        fm_warn("reconcile: XADD of job %s failed (step 1 tries again): %s", it->job_id, reply ? reply->str : errstr);
    enqueue_done(it->in);
}

static void enqueue_jobs(incoming_t *in)
{
    in->replies_due = 1; /* held until every XADD is sent: a callback may come before the loop ends */
    for (size_t i = 0; i < in->count; ++i) {
        item_t *it = &in->items[i];
        if (it->todo != TODO_ENQUEUE)
            continue;
        char upload_id[37];
        snprintf(upload_id, sizeof(upload_id), "%s", in->objects[i].key + PREFIX_LEN);
        const char *argv[] = {"XADD",      FM_JOBS_STREAM, "MAXLEN",  "~",            "1000000", "*",
                              "job_id",    it->job_id,     "type",    "process_upload", "file_id", it->file_id,
                              "upload_id", upload_id,      "request_id", "reconciler"};
        it->done = 0;
        in->replies_due++;
        if (fm_redis_commandargv(ct(in->rc)->redis, on_xadd, it, (int)(sizeof(argv) / sizeof(argv[0])), argv, NULL) != 0)
            in->replies_due--;
    }
    enqueue_done(in);
}

/* ---- marking the uploads found ---------------------------------------------------------------------------------- */

static item_t *item_of_upload(incoming_t *in, const char *upload_id)
{
    for (size_t i = 0; i < in->count; ++i)
        if (in->items[i].todo == TODO_MARK && strcmp(in->objects[i].key + PREFIX_LEN, upload_id) == 0)
            return &in->items[i];
    return NULL;
}

static void on_marked(PGresult *res, const char *errstr, void *data)
{
    incoming_t *in = data;
    if (stopping(in))
        return;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        fm_warn("reconcile: marking the uploads found under incoming/ failed: %s",
                res ? PQresultErrorMessage(res) : errstr);
        in->dirty = 1; /* they stay PENDING with an object: nothing may expire on this cycle's word */
        for (size_t i = 0; i < in->count; ++i)
            if (in->items[i].todo == TODO_MARK)
                in->items[i].todo = TODO_NONE;
        in->stage++;
        stage_next(in);
        return;
    }
    int found = 0;
    for (int row = 0; row < PQntuples(res); ++row) {
        const char *upload_id = PQgetvalue(res, row, 0), *outcome = PQgetvalue(res, row, 1);
        item_t *it = item_of_upload(in, upload_id);
        if (it == NULL)
            continue;
        snprintf(it->job_id, sizeof(it->job_id), "%s", PQgetvalue(res, row, 2));
        snprintf(it->file_id, sizeof(it->file_id), "%s", PQgetvalue(res, row, 3));
        fm_reconcile_forget_file(in->rc, it->file_id);
        if (strcmp(outcome, "uploaded") == 0) {
            fm_info("reconcile: upload %s: uploaded (its object was found without complete or event)", upload_id);
            fm_metrics_counter_add("fm_reconcile_uploads_found_total", NULL, 1);
            it->todo = TODO_ENQUEUE;
            found++;
        } else if (strcmp(outcome, "size_mismatch") == 0) {
            fm_info("reconcile: upload %s: size_mismatch (%lld bytes found): failed, its object goes", upload_id,
                    it->head_size);
            it->todo = TODO_DELETE;
            it->why = WHY_MISMATCH;
        } else {
            it->todo = TODO_NONE; /* a `complete`, an event or an abort got there first */
        }
    }
    for (size_t i = 0; i < in->count; ++i)
        if (in->items[i].todo == TODO_MARK)
            in->items[i].todo = TODO_NONE;
    if (found > 0) /* nothing is lost, but the event path is not working: say where to look */
        fm_warn("reconcile: %d upload(s) found whose S3 event never came: if this goes on while uploads arrive, the "
                "bucket's notification is not delivering (with a persistent topic on Ceph RGW 16, its queue may be "
                "stuck until radosgw restarts: docs/decisions.md \"Local stack\")",
                found);
    in->stage++;
    stage_next(in);
}

static void mark_found(incoming_t *in)
{
    char *ids = malloc(in->param_size), *sizes = malloc(in->param_size);
    if (ids == NULL || sizes == NULL)
        h2o_fatal("out of memory");
    size_t ids_len = 0, sizes_len = 0;
    param_reset(in);
    for (size_t i = 0; i < in->count; ++i) {
        const item_t *it = &in->items[i];
        if (it->todo != TODO_MARK)
            continue;
        ids_len += (size_t)snprintf(ids + ids_len, in->param_size - ids_len, "%s%s", ids_len ? "," : "{",
                                    in->objects[i].key + PREFIX_LEN);
        sizes_len += (size_t)snprintf(sizes + sizes_len, in->param_size - sizes_len, "%s%lld", sizes_len ? "," : "{",
                                      it->head_size);
        param_add(in, it->etag);
    }
    snprintf(ids + ids_len, in->param_size - ids_len, "}");
    snprintf(sizes + sizes_len, in->param_size - sizes_len, "}");
    const char *params[] = {ids, sizes, param_end(in), fm_control->config.s3_bucket};
    fm_pg_query(ct(in->rc)->pg, on_marked, in,
                "SELECT out_upload::text, out_outcome, coalesce(out_job::text, ''), coalesce(out_file::text, '') "
                "FROM fm_uploads_found($1::uuid[], $2::bigint[], $3::text[], $4)",
                4, params);
    free(ids);
    free(sizes);
}

/* ---- HEAD of the objects of PENDING uploads, newest first ---------------------------------------------------------- */

static void head_work(void *data)
{
    incoming_t *in = ((reconcile_t *)data)->incoming;
    fm_s3_t *s3 = fm_offload_s3();
    fm_s3_result_t res;
    for (size_t n = in->head_pos; n < in->head_pos + in->chunk; ++n) {
        item_t *it = &in->items[in->order[n]];
        it->done = 0;
        if (s3 == NULL)
            continue;
        if (fm_s3_head_object(s3, in->objects[in->order[n]].key, &res) == 0) {
            it->head_size = res.content_length;
            size_t len = strlen(res.etag);
            if (len >= 2 && res.etag[0] == '"' && res.etag[len - 1] == '"')
                snprintf(it->etag, sizeof(it->etag), "%.*s", (int)(len - 2), res.etag + 1);
            else
                snprintf(it->etag, sizeof(it->etag), "%s", res.etag);
            it->done = 1;
        } else if (res.status == 404) {
            it->done = 2; /* gone since the listing */
        }
    }
}

static void on_heads(void *data)
{
    reconcile_t *rc = data;
    incoming_t *in = rc->incoming;
    rc->offload_pending = 0;
    for (size_t n = in->head_pos; n < in->head_pos + in->chunk; ++n) {
        item_t *it = &in->items[in->order[n]];
        if (it->done == 1 && strchr(it->etag, '"') == NULL && strchr(it->etag, '\\') == NULL) {
            it->todo = TODO_MARK;
        } else {
            if (it->done != 2) { /* not settled: the upload stays PENDING with an object */
                fm_warn("reconcile: HEAD %s failed: it is looked at again next cycle", in->objects[in->order[n]].key);
                in->dirty = 1;
            }
            it->todo = TODO_NONE;
        }
    }
    in->head_pos += in->chunk;
    stage_next(in);
}

static int newer_first(const void *a, const void *b, void *arg)
{
    const incoming_t *in = arg;
    long long ta = in->objects[*(const size_t *)a].last_modified, tb = in->objects[*(const size_t *)b].last_modified;
    return ta < tb ? 1 : ta > tb ? -1 : 0;
}

static void head_some(incoming_t *in)
{
    in->chunk = in->order_count - in->head_pos < HEADS_PER_CALL ? in->order_count - in->head_pos : HEADS_PER_CALL;
    in->heads += (int)in->chunk;
    if (fm_offload_run(in->rc->thread->offload, head_work, on_heads, in->rc) == 0)
        in->rc->offload_pending = 1;
    else
        fm_reconcile_round_end(in->rc);
}

/* ---- orphans: no record in Redis, then none in PostgreSQL ----------------------------------------------------------- */

static void on_orphans_confirmed(PGresult *res, const char *errstr, void *data)
{
    incoming_t *in = data;
    if (stopping(in))
        return;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        fm_warn("reconcile: looking up incoming/ objects failed: %s", res ? PQresultErrorMessage(res) : errstr);
    } else {
        for (int row = 0; row < PQntuples(res); ++row)
            for (size_t i = 0; i < in->count; ++i)
                if (in->items[i].todo == TODO_ORPHAN && strcmp(in->objects[i].key, PQgetvalue(res, row, 0)) == 0) {
                    in->items[i].todo = TODO_DELETE;
                    in->items[i].why = WHY_ORPHAN;
                }
    }
    for (size_t i = 0; i < in->count; ++i)
        if (in->items[i].todo == TODO_ORPHAN)
            in->items[i].todo = TODO_NONE;
    in->stage++;
    stage_next(in);
}

static void confirm_orphans(incoming_t *in)
{
    param_reset(in);
    for (size_t i = 0; i < in->count; ++i)
        if (in->items[i].todo == TODO_ORPHAN)
            param_add(in, in->objects[i].key);
    /* Neither an uploads row (by id or by key) nor a blob names it. */
    const char *params[] = {param_end(in)};
    fm_pg_query(ct(in->rc)->pg, on_orphans_confirmed, in,
                "SELECT c.k FROM unnest($1::text[]) AS c(k) "
                "WHERE NOT EXISTS (SELECT 1 FROM uploads u WHERE u.id = substr(c.k, 10)::uuid) "
                "AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.object_key = c.k) "
                "AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.storage_key = c.k)",
                1, params);
}

/* ---- records still only in Redis ---------------------------------------------------------------------------------- */

static void records_done(incoming_t *in)
{
    if (--in->replies_due > 0 || stopping(in))
        return;
    in->stage++;
    stage_next(in);
}

static void on_record(redisReply *reply, const char *errstr, void *data)
{
    item_t *it = data;
    incoming_t *in = it->in;
    size_t i = (size_t)(it - in->items);
    const fm_s3_object_t *o = &in->objects[i];
    it->todo = TODO_NONE;
    if (reply != NULL && reply->type == REDIS_REPLY_INTEGER && reply->integer == 0) {
        /* Younger than FM_UPLOAD_EXPIRY_S, an object may belong to an upload still under way (step 3's rule). */
        if (o->last_modified < now_s() - (long long)fm_control->config.upload_expiry_s)
            it->todo = TODO_ORPHAN;
    } else if (reply != NULL && reply->type == REDIS_REPLY_INTEGER && in->recheck_count < RECHECK_MAX) {
        /* written behind, not flushed yet: the flusher brings it within FM_RECORD_FLUSH_MS, the next round marks it */
        recheck_t *r = &in->recheck[in->recheck_count++];
        memcpy(r->key, o->key, KEY_LEN); /* upload_key(): exactly KEY_LEN bytes */
        r->key[KEY_LEN] = '\0';
        r->size = o->size;
        r->last_modified = o->last_modified;
    }
    records_done(in);
}

static void ask_records(incoming_t *in)
{
    in->replies_due = 1; /* held until every EXISTS is sent */
    for (size_t i = 0; i < in->count; ++i) {
        item_t *it = &in->items[i];
        if (it->todo != TODO_RECORD)
            continue;
        char record[64];
        snprintf(record, sizeof(record), "fm:rec:{%s}", in->objects[i].key + PREFIX_LEN);
        const char *argv[] = {"EXISTS", record};
        in->replies_due++;
        if (fm_redis_commandargv(ct(in->rc)->redis, on_record, it, 2, argv, NULL) != 0) {
            it->todo = TODO_NONE;
            in->replies_due--;
        }
    }
    records_done(in);
}

/* ---- the stages of a page ------------------------------------------------------------------------------------------ */

/* Runs the current stage, or the first one after it that has work; a callback that ends its stage increments
 * in->stage first, one that did a part of it (a chunk of HEADs or DELETEs) does not. */
static void stage_next(incoming_t *in)
{
    for (;;) {
        if (stopping(in))
            return;
        switch (in->stage) {
        case STAGE_RECORDS:
            if (count_todo(in, TODO_RECORD) > 0) {
                ask_records(in);
                return;
            }
            break;
        case STAGE_ORPHANS:
            if (count_todo(in, TODO_ORPHAN) > 0) {
                confirm_orphans(in);
                return;
            }
            break;
        case STAGE_HEADS:
            if (in->head_pos < in->order_count) {
                head_some(in);
                return;
            }
            break;
        case STAGE_MARK:
            if (count_todo(in, TODO_MARK) > 0) {
                mark_found(in);
                return;
            }
            break;
        case STAGE_ENQUEUE:
            if (count_todo(in, TODO_ENQUEUE) > 0) {
                enqueue_jobs(in);
                return;
            }
            break;
        case STAGE_DELETE:
            if (delete_some(in))
                return;
            break;
        case STAGE_DONE:
            page_done(in);
            return;
        }
        in->stage++;
    }
}

/* ---- a page: listed, then classified ------------------------------------------------------------------------------ */

static void on_classified(PGresult *res, const char *errstr, void *data)
{
    incoming_t *in = data;
    if (stopping(in))
        return;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        /* the cursor stays: the next round lists this page again */
        fm_warn("reconcile: classifying incoming/ keys failed: %s", res ? PQresultErrorMessage(res) : errstr);
        fm_reconcile_step_next(in->rc);
        return;
    }
    static const char *const kinds[] = {"", "blob", "unrecorded", "pending", "held", "processing", "finished"};
    long long young = now_s() - MIN_AGE_S;
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
    qsort_r(in->order, in->order_count, sizeof(in->order[0]), newer_first, in);
    in->stage = STAGE_RECORDS;
    stage_next(in);
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
        stage_next(in);
        return;
    }
    const char *params[] = {param_end(in)};
    fm_pg_query(ct(in->rc)->pg, on_classified, in,
                "SELECT out_n, out_class FROM fm_incoming_classify($1::text[])", 1, params);
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
    in->list_ok = fm_s3_list_objects(s3, PREFIX, in->cursor, PAGE, in->objects, PAGE, &in->count, &in->truncated,
                                     &in->res) == 0;
}

static void on_listed(void *data)
{
    reconcile_t *rc = data;
    incoming_t *in = rc->incoming;
    rc->offload_pending = 0;
    if (stopping(in))
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
        stage_next(in);
        return;
    }
    page_start(in);
}

/* The next page of the listing, unless this round has done its share. */
static void list_next(incoming_t *in)
{
    if (stopping(in))
        return;
    if (in->pages >= PAGES_PER_ROUND || in->heads >= HEADS_PER_ROUND) {
        fm_reconcile_step_next(in->rc);
        return;
    }
    in->pages++;
    if (in->cursor[0] == '\0') { /* a new cycle: what exists from now on is what it covers */
        in->started = now_s() - 1;
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
    if (stopping(in))
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
    in->param_size = (size_t)PAGE * (sizeof(in->items[0].etag) + 4) + 4; /* the longest array: a page of quoted ETags or keys */
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
