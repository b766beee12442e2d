/*
 * Step 2 of the reconciler, what a page does with its keys (incoming.c lists and classifies them; the stages run in
 * this order): ask Redis for the records of keys without an uploads row (a record still only there is looked at again
 * next round; none, and older than FM_UPLOAD_EXPIRY_S: an orphan candidate), confirm the orphans in PostgreSQL, HEAD
 * the objects of PENDING uploads newest first, mark those uploads in one statement, put their jobs on the stream,
 * and delete what nobody may keep (orphans, objects that came after their upload was finished, objects of the wrong
 * size). S3 calls run on the offload pool a few at a time.
 */
#include <stdlib.h>

#include "incoming_internal.h"
#include "log.h"
#include "metrics.h"

/* ---- deleting what nobody may keep ------------------------------------------------------------------------------- */

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
    long long now = fm_incoming_now();
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
    fm_incoming_stage_next(in);
}

/* The next few objects to delete, on the offload pool; 0 when none is left. */
int fm_incoming_delete_some(incoming_t *in)
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

/* ---- the jobs of the uploads found ------------------------------------------------------------------------------- */

static void on_enqueued_recorded(PGresult *res, const char *errstr, void *data)
{
    incoming_t *in = data;
    if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK) /* step 1 puts them on the stream once more */
        fm_warn("reconcile: recording enqueued jobs failed: %s", res ? PQresultErrorMessage(res) : errstr);
    in->stage++;
    fm_incoming_stage_next(in);
}

static void enqueue_done(incoming_t *in)
{
    if (--in->replies_due > 0 || fm_incoming_stopping(in))
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
        fm_incoming_stage_next(in);
        return;
    }
    const char *params[] = {param_end(in)};
    fm_pg_query(ct(in->rc)->pg, on_enqueued_recorded, in,
                "UPDATE jobs SET enqueued_at = now() WHERE id = ANY($1::uuid[])", 1, params);
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

void fm_incoming_enqueue_jobs(incoming_t *in)
{
    in->replies_due = 1; /* held until every XADD is sent: a callback may come before the loop ends */
    for (size_t i = 0; i < in->count; ++i) {
        item_t *it = &in->items[i];
        if (it->todo != TODO_ENQUEUE)
            continue;
        char upload_id[37];
        snprintf(upload_id, sizeof(upload_id), "%s", in->objects[i].key + PREFIX_LEN);
        const char *argv[] = {
            "XADD", FM_JOBS_STREAM,   "MAXLEN",  "~",         "1000000",   "*",       "job_id",     it->job_id,
            "type", "process_upload", "file_id", it->file_id, "upload_id", upload_id, "request_id", "reconciler"};
        it->done = 0;
        in->replies_due++;
        if (fm_redis_commandargv(ct(in->rc)->redis, on_xadd, it, (int)(sizeof(argv) / sizeof(argv[0])), argv, NULL) !=
            0)
            in->replies_due--;
    }
    enqueue_done(in);
}

/* ---- marking the uploads found ----------------------------------------------------------------------------------- */

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
    if (fm_incoming_stopping(in))
        return;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        fm_warn("reconcile: marking the uploads found under incoming/ failed: %s",
                res ? PQresultErrorMessage(res) : errstr);
        in->dirty = 1; /* they stay PENDING with an object: nothing may expire on this cycle's word */
        for (size_t i = 0; i < in->count; ++i)
            if (in->items[i].todo == TODO_MARK)
                in->items[i].todo = TODO_NONE;
        in->stage++;
        fm_incoming_stage_next(in);
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
    fm_incoming_stage_next(in);
}

void fm_incoming_mark_found(incoming_t *in)
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

/* ---- HEAD of the objects of PENDING uploads, newest first -------------------------------------------------------- */

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
    fm_incoming_stage_next(in);
}

int fm_incoming_newer_first(const void *a, const void *b, void *arg)
{
    const incoming_t *in = arg;
    long long ta = in->objects[*(const size_t *)a].last_modified, tb = in->objects[*(const size_t *)b].last_modified;
    return ta < tb ? 1 : ta > tb ? -1 : 0;
}

void fm_incoming_head_some(incoming_t *in)
{
    in->chunk = in->order_count - in->head_pos < HEADS_PER_CALL ? in->order_count - in->head_pos : HEADS_PER_CALL;
    in->heads += (int)in->chunk;
    if (fm_offload_run(in->rc->thread->offload, head_work, on_heads, in->rc) == 0)
        in->rc->offload_pending = 1;
    else
        fm_reconcile_round_end(in->rc);
}

/* ---- orphans: no record in Redis, then none in PostgreSQL -------------------------------------------------------- */

static void on_orphans_confirmed(PGresult *res, const char *errstr, void *data)
{
    incoming_t *in = data;
    if (fm_incoming_stopping(in))
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
    fm_incoming_stage_next(in);
}

void fm_incoming_confirm_orphans(incoming_t *in)
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

/* ---- records still only in Redis --------------------------------------------------------------------------------- */

static void records_done(incoming_t *in)
{
    if (--in->replies_due > 0 || fm_incoming_stopping(in))
        return;
    in->stage++;
    fm_incoming_stage_next(in);
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
        if (o->last_modified < fm_incoming_now() - (long long)fm_control->config.upload_expiry_s)
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

void fm_incoming_ask_records(incoming_t *in)
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
