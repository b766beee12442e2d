/*
 * The owner's tree generation (issue 11 item 2; docs/decisions.md "The folder tree"): one Redis counter per owner,
 * fm:tgen:{owner}, part of the key of every cached listing page of that owner, so that any change to the owner's
 * files or folders drops all of them in O(1) (INCR: the old keys are never read again and expire on their own).
 *
 * Every route that changes what a listing shows (a new file, a status, a name, a folder, the trash) calls
 * fm_tree_changed after PostgreSQL committed, as it DELs fm:file:{id}: fire and forget on the thread's Redis pool.
 * A lost INCR leaves a listing at most its cache TTL old.
 */
#include <string.h>

#include "control.h"

static void ignore_reply(redisReply *reply, const char *errstr, void *data)
{
}

int fm_pg_name_taken(const PGresult *res)
{
    if (res == NULL || PQresultStatus(res) != PGRES_FATAL_ERROR)
        return 0;
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *constraint = PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME);
    return state != NULL && strcmp(state, "23505") == 0 && constraint != NULL &&
           strcmp(constraint, "entry_names_pkey") == 0;
}

void fm_tree_changed(fm_control_thread_t *thread, const char *owner_id)
{
    fm_redis_command(thread->redis, ignore_reply, NULL, "INCR fm:tgen:{%s}", owner_id);
}
