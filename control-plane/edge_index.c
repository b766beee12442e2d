/*
 * What fm-edge reads from Redis, kept from PostgreSQL's truth (docs/downloads.md "Revocation", "Public files"):
 *   fm:public              set of "{file_id}/{key}": the object keys of each live, READY, public file (its blob's
 *                          storage_key and variant keys); /p/ serves a key for a file only while the member is there
 *                          (file_update.c adds and removes a file's members, file_delete.c on trash and restore);
 *   fm:revoked:{id}        a file in the trash (file_delete.c), so that the signed URLs issued for it stop at once
 *                          however many other files share its blob; kept FM_DOWNLOAD_URL_TTL_S + a margin, the
 *                          longest such a URL can live; removed on restore.
 * Redis holds them with persistence on; when it lost them (restarted empty, flushed) the reconciler's round rebuilds
 * them here, each when its sentinel is missing (fm:public:built, fm:revoked:built, written after the rebuild: an
 * empty set is no sign of a loss, and the rebuild's query must not run every round). A change that commits between the rebuild's SELECT and its writes can be undone by them
 * (a private file public again, a restored file revoked) until that file's next change or the mark's expiry: the
 * window is one round trip after Redis lost its data.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "reconcile_internal.h"

#define SADD_CHUNK 500
#define MARKS_SENTINEL "fm:revoked:built"
#define PUBLIC_SENTINEL "fm:public:built"

long long fm_revocation_ttl_s(void)
{
    return (long long)fm_control->config.download_url_ttl_s + 300; /* clock skew between the signer and the edge */
}

/* ---- fm:public ---- */

static const char public_members_sql[] =
    "SELECT f.id::text || '/' || k.key FROM files f JOIN blobs b ON b.sha256 = f.blob_sha256,"
    " LATERAL (SELECT b.storage_key UNION ALL SELECT v.value->>'key'"
    "  FROM jsonb_each(b.variants) e, jsonb_each(e.value) v WHERE jsonb_typeof(v.value) = 'object') AS k(key) "
    "WHERE k.key IS NOT NULL AND f.visibility = 'public' AND f.deleted_at IS NULL AND f.status = 'READY'";

static void on_public_members(PGresult *res, const char *errstr, void *data)
{
    reconcile_t *rc = data;
    rc->public_running = 0;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        fm_warn("reconcile: reading the public files failed: %s", res ? PQresultErrorMessage(res) : errstr);
        return;
    }
    int rows = PQntuples(res);
    const char *argv[2 + SADD_CHUNK] = {"SADD", "fm:public"};
    for (int first = 0; first < rows; first += SADD_CHUNK) {
        int count = rows - first < SADD_CHUNK ? rows - first : SADD_CHUNK;
        for (int i = 0; i < count; ++i)
            argv[2 + i] = PQgetvalue(res, first + i, 0);
        fm_redis_commandargv(ct(rc)->redis, fm_reconcile_ignore_reply, NULL, 2 + count, argv, NULL);
    }
    const char *sentinel[] = {"SET", PUBLIC_SENTINEL, "1"};
    fm_redis_commandargv(ct(rc)->redis, fm_reconcile_ignore_reply, NULL, 3, sentinel, NULL);
    if (rows > 0)
        fm_info("reconcile: fm:public was missing, rebuilt with %d member(s)", rows);
}

static void on_public_exists(redisReply *reply, const char *errstr, void *data)
{
    reconcile_t *rc = data;
    if (reply == NULL || reply->type != REDIS_REPLY_INTEGER || reply->integer != 0) {
        rc->public_running = 0; /* present, or Redis cannot tell: the next round looks again */
        return;
    }
    fm_pg_query(ct(rc)->pg, on_public_members, rc, public_members_sql, 0, NULL);
}

/* ---- revocation marks ---- */

static void on_trashed_files(PGresult *res, const char *errstr, void *data)
{
    reconcile_t *rc = data;
    rc->marks_running = 0;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        fm_warn("reconcile: reading the trashed files failed: %s", res ? PQresultErrorMessage(res) : errstr);
        return;
    }
    char ttl[24];
    snprintf(ttl, sizeof(ttl), "%lld", fm_revocation_ttl_s());
    int rows = PQntuples(res);
    for (int i = 0; i < rows; ++i) {
        char key[64];
        snprintf(key, sizeof(key), "fm:revoked:{%s}", PQgetvalue(res, i, 0));
        const char *argv[] = {"SET", key, "1", "EX", ttl};
        fm_redis_commandargv(ct(rc)->redis, fm_reconcile_ignore_reply, NULL, 5, argv, NULL);
    }
    const char *sentinel[] = {"SET", MARKS_SENTINEL, "1"};
    fm_redis_commandargv(ct(rc)->redis, fm_reconcile_ignore_reply, NULL, 3, sentinel, NULL);
    if (rows > 0)
        fm_info("reconcile: revocation marks were missing, %d rebuilt", rows);
}

static void on_marks_built(redisReply *reply, const char *errstr, void *data)
{
    reconcile_t *rc = data;
    if (reply == NULL || reply->type != REDIS_REPLY_INTEGER || reply->integer != 0) {
        rc->marks_running = 0;
        return;
    }
    char ttl[24];
    snprintf(ttl, sizeof(ttl), "%lld", fm_revocation_ttl_s());
    const char *params[] = {ttl};
    fm_pg_query(ct(rc)->pg, on_trashed_files, rc,
                "SELECT id::text FROM files WHERE deleted_at > now() - make_interval(secs => $1::integer)", 1, params);
}

void fm_edge_index_check(reconcile_t *rc)
{
    if (rc->thread->shutting_down)
        return;
    if (!rc->public_running) {
        rc->public_running = 1;
        const char *argv[] = {"EXISTS", PUBLIC_SENTINEL};
        if (fm_redis_commandargv(ct(rc)->redis, on_public_exists, rc, 2, argv, NULL) != 0)
            rc->public_running = 0;
    }
    if (!rc->marks_running) {
        rc->marks_running = 1;
        const char *argv[] = {"EXISTS", MARKS_SENTINEL};
        if (fm_redis_commandargv(ct(rc)->redis, on_marks_built, rc, 2, argv, NULL) != 0)
            rc->marks_running = 0;
    }
}
