/*
 * The owner's tree generation (issue 11 item 2; docs/decisions.md "Listing (issue 11 item 2)"): one Redis counter per
 * owner, fm:tgen:{owner}, part of the key of every cached listing page of that owner (files_list.c), so that any
 * change to the owner's files or folders drops all of them in O(1) (INCR: the old keys are never read again and
 * expire on their own).
 *
 * Every route and background step that changes what a listing shows (a new file, a status, a name, a folder, the
 * trash) calls fm_tree_changed after PostgreSQL committed, as it DELs fm:file:{id}: fire and forget on the thread's
 * Redis pool. A lost INCR leaves a listing at most its cache TTL old (≤ 60 s, files_list.c).
 */
#include <string.h>

#include "control.h"

static void ignore_reply(redisReply *reply, const char *errstr, void *data) {}

int fm_pg_name_taken(const PGresult *res)
{
    if (res == NULL || PQresultStatus(res) != PGRES_FATAL_ERROR)
        return 0;
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *constraint = PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME);
    return state != NULL && strcmp(state, "23505") == 0 && constraint != NULL &&
           strcmp(constraint, "entry_names_pkey") == 0;
}

int fm_name_retry(fm_req_t *r, int rename, int *tries)
{
    if (rename && ++*tries < FM_NAME_TRIES_MAX)
        return 1;
    fm_reply_error(r, 409, "name_taken", "a file or folder of that name is already there (on_conflict: \"rename\" "
                                         "numbers it)");
    return 0;
}

int fm_pg_folder_full(fm_req_t *r, const PGresult *res)
{
    if (res == NULL || PQresultStatus(res) != PGRES_FATAL_ERROR)
        return 0;
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (state == NULL || strcmp(state, "FMF01") != 0)
        return 0;
    fm_reply_error(r, 422, "folder_full", "that folder already holds %lld entries (FM_FOLDER_ENTRIES_MAX)",
                   (long long)fm_control->config.folder_entries_max);
    return 1;
}

void fm_tree_changed(fm_control_thread_t *thread, const char *owner_id)
{
    fm_redis_command(thread->redis, ignore_reply, NULL, "INCR fm:tgen:{%s}", owner_id);
}

static void on_owner(PGresult *res, const char *errstr, void *data)
{
    /* res NULL: the pool is shutting down or PostgreSQL is away; the page TTL bounds what this costs */
    if (res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 && PQgetlength(res, 0, 0) == 36)
        fm_tree_changed(data, PQgetvalue(res, 0, 0));
}

void fm_tree_file_changed(fm_control_thread_t *thread, const char *file_id)
{
    static const char sql[] = "SELECT owner_id::text FROM files WHERE id = $1::uuid";
    const char *params[] = {file_id};
    fm_pg_query_prepared(thread->pg, on_owner, thread, sql, 1, params);
}
