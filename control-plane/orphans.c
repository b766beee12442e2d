/*
 * Step 6 of the reconciler (reconcile.c): objects under incoming/ that no upload record names. They come from issue 3:
 * Redis lost upload records the flusher had not written yet, and clients PUT with the URLs they held. Once every 10
 * intervals across instances (the Redis key fm:orphans:due), it lists 200 keys under incoming/ after the cursor
 * fm:orphans:cursor (kept in Redis so the next pass, on any instance, goes on; deleted once the listing is through, so
 * the next pass starts again) and deletes each incoming/{upload id} that is older than FM_UPLOAD_EXPIRY_S (step 3's
 * bound: by then a live upload has long been recorded), has no record fm:rec:{id} in Redis and then no uploads row (by
 * id or object_key) nor blob (storage_key) in PostgreSQL -- Redis first, because the flusher commits the rows before
 * it deletes the record. A 404 on DELETE is fine; one info line per object, counted in
 * fm_reconcile_orphans_deleted_total. Keys of another shape are never deleted, and logged at warn once per key and
 * process.
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

#define ORPHAN_PREFIX "incoming/"
#define ORPHAN_PREFIX_LEN (sizeof(ORPHAN_PREFIX) - 1)
#define ORPHAN_PAGE 200          /* keys listed, and at most deleted, per pass */
#define ORPHAN_EVERY 10          /* one pass every this many intervals, across instances (fm:orphans:due) */
#define ORPHAN_FOREIGN_SEEN 1024 /* foreign keys remembered, so that each is logged once per process */

/* What a listed key has become during a pass. */
enum { ORPHAN_KEEP, ORPHAN_CANDIDATE, ORPHAN_CONFIRMED, ORPHAN_DELETED, ORPHAN_FAILED };

typedef struct orphan_ref {
    struct orphans *orphans;
    int index;
} orphan_ref_t;

typedef struct orphans {
    reconcile_t *rc;
    char cursor[FM_S3_KEY_MAX]; /* start-after of this pass: "" from the start */
    fm_s3_object_t objects[ORPHAN_PAGE];
    unsigned char state[ORPHAN_PAGE];
    orphan_ref_t refs[ORPHAN_PAGE]; /* callback data of the Redis EXISTS of each key */
    size_t count;
    int truncated, list_ok, replies_due;
    fm_s3_result_t res;                         /* of the listing, or of the first failed DELETE */
    char keys_param[ORPHAN_PAGE * 48 + 3];      /* "{incoming/<uuid>,…}" for PostgreSQL */
    uint64_t foreign_seen[ORPHAN_FOREIGN_SEEN]; /* FNV-1a of the foreign keys logged */
    size_t foreign_count;
} orphans_t;

/* The objects of uploads are incoming/{upload id}, the id as PostgreSQL prints a uuid (lower-case, 8-4-4-4-12). */
static int upload_key(const char *key)
{
    const char *id = key + ORPHAN_PREFIX_LEN;
    if (strncmp(key, ORPHAN_PREFIX, ORPHAN_PREFIX_LEN) != 0 || strlen(id) != 36)
        return 0;
    for (int i = 0; i < 36; ++i) {
        int dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? id[i] != '-' : !((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
            return 0;
    }
    return 1;
}

/* Someone else's object under incoming/ (a key we never make): never ours to delete; said once per key. */
static void foreign_key(orphans_t *o, const char *key)
{
    uint64_t hash = fm_fnv1a(key, strlen(key), 0);
    for (size_t i = 0; i < o->foreign_count; ++i)
        if (o->foreign_seen[i] == hash)
            return;
    if (o->foreign_count == ORPHAN_FOREIGN_SEEN)
        return;
    o->foreign_seen[o->foreign_count++] = hash;
    char shown[FM_S3_KEY_MAX];
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)key; *p != '\0' && n < sizeof(shown) - 1; ++p)
        shown[n++] = *p < 0x20 || *p == 0x7f ? '?' : (char)*p; /* a key may hold a newline: one log line stays one */
    shown[n] = '\0';
    fm_warn("reconcile: object %s under incoming/ is not incoming/{upload id}: left alone%s", shown,
            o->foreign_count == ORPHAN_FOREIGN_SEEN ? " (further such keys are not logged)" : "");
}

static void orphans_delete_work(void *data)
{
    orphans_t *o = ((reconcile_t *)data)->orphans;
    fm_s3_t *s3 = fm_offload_s3();
    fm_s3_result_t res;
    for (size_t i = 0; i < o->count; ++i) {
        if (o->state[i] != ORPHAN_CONFIRMED)
            continue;
        if (s3 != NULL && (fm_s3_delete_object(s3, o->objects[i].key, &res) == 0 || res.status == 404)) {
            o->state[i] = ORPHAN_DELETED;
            continue;
        }
        o->state[i] = ORPHAN_FAILED;
        if (s3 == NULL || res.status == 0)
            break; /* the store is away: the rest waits for the next pass rather than each for its timeout */
        if (o->res.code[0] == '\0')
            o->res = res;
    }
}

static void on_orphans_deleted(void *data)
{
    reconcile_t *rc = data;
    orphans_t *o = rc->orphans;
    rc->offload_pending = 0;
    long long now = (long long)time(NULL);
    int failed = 0;
    for (size_t i = 0; i < o->count; ++i) {
        if (o->state[i] == ORPHAN_DELETED) {
            fm_info("reconcile: deleted orphan object %s (%lld bytes, %lld s old): no upload record in Redis or "
                    "PostgreSQL, no blob",
                    o->objects[i].key, o->objects[i].size, now - o->objects[i].last_modified);
            fm_metrics_counter_add("fm_reconcile_orphans_deleted_total", NULL, 1);
        } else if (o->state[i] == ORPHAN_FAILED || o->state[i] == ORPHAN_CONFIRMED) {
            failed++;
        }
    }
    if (failed > 0)
        fm_warn("reconcile: %d orphan object(s) under incoming/ not deleted (%s); tried again on the next pass", failed,
                o->res.code[0] != '\0' ? o->res.code : "S3 unreachable");
    fm_reconcile_step_next(rc);
}

static void on_orphans_unrecorded(PGresult *res, const char *errstr, void *data)
{
    reconcile_t *rc = data;
    orphans_t *o = rc->orphans;
    if (rc->thread->shutting_down) {
        fm_reconcile_round_end(rc);
        return;
    }
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        fm_warn("reconcile: looking up incoming/ objects failed: %s", res ? PQresultErrorMessage(res) : errstr);
        fm_reconcile_step_next(rc);
        return;
    }
    int confirmed = 0;
    for (int row = 0; row < PQntuples(res); ++row)
        for (size_t i = 0; i < o->count; ++i)
            if (o->state[i] == ORPHAN_CANDIDATE && strcmp(o->objects[i].key, PQgetvalue(res, row, 0)) == 0) {
                o->state[i] = ORPHAN_CONFIRMED;
                confirmed++;
            }
    if (confirmed == 0) {
        fm_reconcile_step_next(rc);
        return;
    }
    memset(&o->res, 0, sizeof(o->res));
    if (fm_offload_run(rc->thread->offload, orphans_delete_work, on_orphans_deleted, rc) == 0)
        rc->offload_pending = 1;
    else
        fm_reconcile_round_end(rc);
}

/* Every EXISTS answered: the keys without a Redis record are looked up in PostgreSQL (in this order: the flusher
 * commits a record's rows before it deletes it from Redis, so a record moving meanwhile is seen in one place). */
static void orphans_recorded_done(orphans_t *o)
{
    reconcile_t *rc = o->rc;
    if (--o->replies_due > 0)
        return;
    if (rc->thread->shutting_down) {
        fm_reconcile_round_end(rc);
        return;
    }
    size_t len = 0;
    o->keys_param[len++] = '{';
    for (size_t i = 0; i < o->count; ++i)
        if (o->state[i] == ORPHAN_CANDIDATE) /* upload_key(): no character that needs quoting in an array */
            len += (size_t)snprintf(o->keys_param + len, sizeof(o->keys_param) - len, "%s%s", len > 1 ? "," : "",
                                    o->objects[i].key);
    if (len == 1) {
        fm_reconcile_step_next(rc);
        return;
    }
    snprintf(o->keys_param + len, sizeof(o->keys_param) - len, "}");
    /* Neither an uploads row (by id or by key) nor a blob (blobs keep incoming/{upload id} as their key) names it. */
    const char *params[] = {o->keys_param};
    fm_pg_query(ct(rc)->pg, on_orphans_unrecorded, rc,
                "SELECT c.k FROM unnest($1::text[]) AS c(k) "
                "WHERE NOT EXISTS (SELECT 1 FROM uploads u WHERE u.id = substr(c.k, 10)::uuid) "
                "AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.object_key = c.k) "
                "AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.storage_key = c.k)",
                1, params);
}

static void on_orphan_record(redisReply *reply, const char *errstr, void *data)
{
    orphan_ref_t *ref = data;
    /* a record in Redis (not flushed yet), or Redis cannot tell: keep it */
    if (reply == NULL || reply->type != REDIS_REPLY_INTEGER || reply->integer != 0)
        ref->orphans->state[ref->index] = ORPHAN_KEEP;
    orphans_recorded_done(ref->orphans);
}

static void on_orphans_listed(void *data)
{
    reconcile_t *rc = data;
    orphans_t *o = rc->orphans;
    rc->offload_pending = 0;
    if (rc->thread->shutting_down) {
        fm_reconcile_round_end(rc);
        return;
    }
    if (!o->list_ok) {
        fm_warn("reconcile: listing incoming/ after '%s' failed: %s: %s", o->cursor, o->res.code, o->res.message);
        fm_reconcile_step_next(rc);
        return;
    }
    fm_metrics_counter_add("fm_reconcile_orphan_keys_listed_total", NULL, (double)o->count);
    /* The next pass (here or on another instance) goes on after this page, or from the start once through. */
    if (o->truncated) {
        const char *argv[] = {"SET", "fm:orphans:cursor", o->objects[o->count - 1].key};
        fm_redis_commandargv(ct(rc)->redis, fm_reconcile_ignore_reply, NULL, 3, argv, NULL);
    } else {
        const char *argv[] = {"DEL", "fm:orphans:cursor"};
        fm_redis_commandargv(ct(rc)->redis, fm_reconcile_ignore_reply, NULL, 2, argv, NULL);
    }
    /* Younger than FM_UPLOAD_EXPIRY_S, an object may belong to an upload still under way (step 3's rule). */
    long long old_before = (long long)time(NULL) - (long long)fm_control->config.upload_expiry_s;
    o->replies_due = 1; /* held until every EXISTS is sent: a callback may come before the loop ends */
    for (size_t i = 0; i < o->count; ++i) {
        const fm_s3_object_t *object = &o->objects[i];
        o->state[i] = ORPHAN_KEEP;
        if (!upload_key(object->key)) {
            foreign_key(o, object->key);
            continue;
        }
        if (object->last_modified >= old_before)
            continue;
        char record[64];
        snprintf(record, sizeof(record), "fm:rec:{%s}", object->key + ORPHAN_PREFIX_LEN);
        const char *argv[] = {"EXISTS", record};
        o->state[i] = ORPHAN_CANDIDATE;
        o->refs[i] = (orphan_ref_t){o, (int)i};
        o->replies_due++;
        if (fm_redis_commandargv(ct(rc)->redis, on_orphan_record, &o->refs[i], 2, argv, NULL) != 0) {
            o->state[i] = ORPHAN_KEEP;
            o->replies_due--;
        }
    }
    orphans_recorded_done(o);
}

static void orphans_list_work(void *data)
{
    orphans_t *o = ((reconcile_t *)data)->orphans;
    fm_s3_t *s3 = fm_offload_s3();
    if (s3 == NULL) {
        o->list_ok = 0;
        snprintf(o->res.code, sizeof(o->res.code), "NoClient");
        snprintf(o->res.message, sizeof(o->res.message), "no S3 client on the offload thread");
        return;
    }
    o->list_ok = fm_s3_list_objects(s3, ORPHAN_PREFIX, o->cursor, ORPHAN_PAGE, o->objects, ORPHAN_PAGE, &o->count,
                                    &o->truncated, &o->res) == 0;
}

static void on_orphans_cursor(redisReply *reply, const char *errstr, void *data)
{
    reconcile_t *rc = data;
    orphans_t *o = rc->orphans;
    if (rc->thread->shutting_down) {
        fm_reconcile_round_end(rc);
        return;
    }
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        fm_reconcile_step_next(rc);
        return;
    }
    o->cursor[0] = '\0';
    o->count = 0;
    /* a cursor we did not write (too long, another prefix) starts the listing again */
    if (reply->type == REDIS_REPLY_STRING && reply->len < FM_S3_KEY_MAX &&
        memchr(reply->str, '\0', reply->len) == NULL && reply->len > ORPHAN_PREFIX_LEN &&
        memcmp(reply->str, ORPHAN_PREFIX, ORPHAN_PREFIX_LEN) == 0) {
        memcpy(o->cursor, reply->str, reply->len);
        o->cursor[reply->len] = '\0';
    }
    if (fm_offload_run(rc->thread->offload, orphans_list_work, on_orphans_listed, rc) == 0)
        rc->offload_pending = 1;
    else
        fm_reconcile_round_end(rc);
}

static void on_orphans_due(redisReply *reply, const char *errstr, void *data)
{
    reconcile_t *rc = data;
    if (rc->thread->shutting_down) {
        fm_reconcile_round_end(rc);
        return;
    }
    if (reply == NULL || reply->type != REDIS_REPLY_STATUS) { /* nil: a pass ran less than ORPHAN_EVERY ago */
        fm_reconcile_step_next(rc);
        return;
    }
    const char *argv[] = {"GET", "fm:orphans:cursor"};
    if (fm_redis_commandargv(ct(rc)->redis, on_orphans_cursor, rc, 2, argv, NULL) != 0)
        fm_reconcile_round_end(rc);
}

void fm_orphans_start(reconcile_t *rc)
{
    char ttl[24];
    snprintf(ttl, sizeof(ttl), "%lld", (long long)fm_control->config.reconcile_interval_s * ORPHAN_EVERY);
    const char *argv[] = {"SET", "fm:orphans:due", "1", "NX", "EX", ttl};
    if (fm_redis_commandargv(ct(rc)->redis, on_orphans_due, rc, 6, argv, NULL) != 0)
        fm_reconcile_round_end(rc);
}

struct orphans *fm_orphans_new(reconcile_t *rc)
{
    orphans_t *o = calloc(1, sizeof(*o));
    if (o != NULL)
        o->rc = rc;
    return o;
}
