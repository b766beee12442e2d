/*
 * GET /v1/files/delta?cursor=&limit= (issue 11 item 3; DESIGN.md §5b; docs/downloads.md "Delete, restore,
 * retention"): every change to the caller's files and folders after the cursor, so a client keeps a local copy:
 *
 *   {changes: [{seq, kind: "file"|"folder", id, op: "created"|"updated"|"renamed"|"moved"|"trashed"|"restored"|
 *               "deleted", entry: the current row, null once purged}], cursor, has_more}
 *
 * Without a cursor: no changes and the cursor of "now" (the client lists first, then follows the feed). A client
 * applies each change as "id is now `entry`" (null: gone), which is idempotent: a change seen twice is harmless.
 *
 * authorize → parse (limit 1..PAGE_MAX, default PAGE_MAX; the cursor of common/cursor.c scoped "delta:{owner}":
 * tampered, or another user's → 400 invalid_cursor) → act (one statement: schema/016_trash_delta.sql fm_delta over
 * the change log its triggers write; 410 cursor_expired when the log's retention, FM_DELTA_RETENTION_S, deleted
 * changes after it) → answer (the next cursor signed).
 *
 * The cursor's payload is the place (xid, seq) in the log's order, 16 bytes big-endian (see the schema for why the
 * order is not seq alone).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"
#include "cursor.h"
#include "log.h"
#include "qs.h"

#define PAGE_MAX 1000
#define PLACE_LEN 16

typedef struct {
    const fm_principal_t *principal;
    int limit;
} delta_t;

static void scope_of(const fm_principal_t *p, char *out, size_t size)
{
    snprintf(out, size, "delta:%s", p->user_id);
}

static const fm_config_t *cfg(void)
{
    return &fm_control->config;
}

/* Answers {changes: <changes_json>, cursor: the place (xid, seq) signed, has_more}. */
static void answer(fm_req_t *r, const char *changes_json, const char *xid, const char *seq, int has_more)
{
    delta_t *d = r->state;
    uint64_t x = strtoull(xid, NULL, 10), s = strtoull(seq, NULL, 10);
    uint8_t place[PLACE_LEN];
    for (int b = 0; b < 8; ++b) {
        place[b] = (uint8_t)(x >> (56 - 8 * b));
        place[8 + b] = (uint8_t)(s >> (56 - 8 * b));
    }
    char scope[64], cursor[FM_CURSOR_TEXT_MAX];
    scope_of(d->principal, scope, sizeof(scope));
    if (fm_cursor_sign(cfg()->jwt_secret, strlen(cfg()->jwt_secret), scope, place, sizeof(place), cursor,
                       sizeof(cursor)) != 0) {
        fm_reply_error(r, 500, "internal_error", "the request could not be completed");
        return;
    }
    /* changes_json is PostgreSQL's jsonb text: written as is, not parsed and printed again */
    size_t len = strlen(changes_json) + strlen(cursor) + 64;
    char *body = malloc(len);
    if (body == NULL)
        h2o_fatal("out of memory");
    int n = snprintf(body, len, "{\"changes\":%s,\"cursor\":\"%s\",\"has_more\":%s}", changes_json, cursor,
                     has_more ? "true" : "false");
    fm_reply_raw(r, 200, "application/json", body, (size_t)n);
    free(body);
}

static void on_now(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_pg_failed(r, res, errstr))
        return;
    answer(r, "[]", PQgetvalue(res, 0, 0), "0", 0);
}

static void on_delta(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_pg_failed(r, res, errstr))
        return;
    if (PQntuples(res) != 1) {
        fm_reply_error(r, 500, "internal_error", "the request could not be completed");
        return;
    }
    if (strcmp(PQgetvalue(res, 0, 0), "t") == 0) {
        fm_reply_error(r, 410, "cursor_expired",
                       "changes after this cursor are no longer kept: list your files again and follow a new cursor");
        return;
    }
    answer(r, PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2), PQgetvalue(res, 0, 3),
           strcmp(PQgetvalue(res, 0, 4), "t") == 0);
}

static void delta_authorized(fm_req_t *r, const fm_principal_t *p)
{
    delta_t *d = fm_req_state(r, sizeof(delta_t));
    d->principal = p;
    h2o_iovec_t query = fm_req_query(r);
    char value[16];
    int rc = fm_qs_get(query, "limit", 0, value, sizeof(value), NULL);
    d->limit = PAGE_MAX;
    if (rc != FM_QS_ABSENT) {
        char *end;
        long v = rc == FM_PCT_OK ? strtol(value, &end, 10) : 0;
        if (rc != FM_PCT_OK || end == value || *end != '\0' || value[0] == '+' || value[0] == '-' || v < 1 ||
            v > PAGE_MAX) {
            fm_reply_error(r, 422, "invalid_limit", "limit must be an integer from 1 to %d", PAGE_MAX);
            return;
        }
        d->limit = (int)v;
    }
    char text[FM_CURSOR_TEXT_MAX];
    rc = fm_qs_get(query, "cursor", 0, text, sizeof(text), NULL);
    if (rc == FM_QS_ABSENT) {
        fm_pg_call(r, on_now, "SELECT pg_snapshot_xmin(pg_current_snapshot())::text", 0, NULL);
        return;
    }
    uint8_t place[FM_CURSOR_PAYLOAD_MAX];
    size_t len = 0;
    char scope[64];
    scope_of(p, scope, sizeof(scope));
    if (rc != FM_PCT_OK ||
        fm_cursor_open(cfg()->jwt_secret, strlen(cfg()->jwt_secret), scope, text, strlen(text), place, sizeof(place),
                       &len) != 0 ||
        len != PLACE_LEN) {
        fm_reply_error(r, 400, "invalid_cursor", "the cursor is not one this server gave you");
        return;
    }
    uint64_t x = 0, s = 0;
    for (int b = 0; b < 8; ++b) {
        x = x << 8 | place[b];
        s = s << 8 | place[8 + b];
    }
    char xid[24], seq[24], limit[16];
    snprintf(xid, sizeof(xid), "%" PRIu64, x);
    snprintf(seq, sizeof(seq), "%" PRId64, (int64_t)s);
    snprintf(limit, sizeof(limit), "%d", d->limit);
    const char *params[] = {p->user_id, xid, seq, limit};
    fm_pg_call(r, on_delta,
               "SELECT out_expired, out_changes, out_xid, out_seq, out_has_more"
               " FROM fm_delta($1::uuid, $2::xid8, $3::bigint, $4::integer)",
               4, params);
}

void handle_files_delta(fm_req_t *r)
{
    fm_auth_require(r, delta_authorized);
}
