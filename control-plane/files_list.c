/*
 * GET /v1/files?folder=ID|root&sort=name|created_at|updated_at|size&order=asc|desc&type=…&limit=1..200&cursor=…:
 * one folder's live entries, folders first, keyset-paged (DESIGN.md §5b; docs/decisions.md "Listing (issue 11
 * item 2)").
 *
 * parse (the query, the cursor: signed and bound to owner, folder, sort, order and type) → authorize (the
 * caller may list the folder: folder_readable, the one check sharing will extend) → act (one SQL statement: the
 * folders after the cursor and the files from the start, or the files after the cursor; each an index range scan of
 * schema/014_listing.sql, LIMIT n + 1) → answer ({items, next_cursor}, each file with its signed thumbnail_url).
 *
 * A first page (no cursor) is cached in Redis under the owner's tree generation (tree.c): one round trip, a small
 * script reading fm:tgen:{owner} and the page keyed by it. Any change in the owner's tree INCRs the generation, so
 * every cached page of the owner is dropped in O(1). The page holds signed URLs: it lives less long than they do.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "control.h"
#include "hash.h"
#include "listcursor.h"
#include "log.h"
#include "qs.h"

#define LIMIT_DEFAULT 50
#define LIMIT_MAX 200
/* The nil UUID is the root's folder key (schema/012 fm_parent_key). */
#define ROOT_KEY "00000000-0000-0000-0000-000000000000"
/* The longest a cached first page lives, in seconds (shorter still when the signed URLs live less long). */
#define PAGE_TTL_MAX_S 60

enum { SORT_NAME, SORT_CREATED, SORT_UPDATED, SORT_SIZE, SORT_COUNT };
enum { SHAPE_FIRST, SHAPE_FOLDERS_AFTER, SHAPE_FILES_AFTER, SHAPE_COUNT };

static const char *const sort_names[SORT_COUNT] = {"name", "created_at", "updated_at", "size"};
static const char *const type_names[] = {"image", "video", "audio", "pdf", "text", "other", NULL};

typedef struct {
    char folder_key[37]; /* lowercase UUID; ROOT_KEY for the root */
    int sort, desc;
    const char *type; /* one of type_names, or NULL: every type (and the folders) */
    int limit;
    int shape; /* SHAPE_FIRST without a cursor */
    char after_id[37];
    char after_key[FM_LIST_CURSOR_KEY_MAX + 1]; /* the cursor row's sort key (a name, a timestamp, a size) */
} list_query_t;

typedef struct {
    const fm_principal_t *principal;
    list_query_t q;
    char page_key[160];   /* the first page's cache key (with the generation once known), "" when not cached */
    long long page_ttl_s; /* its lifetime (page_ttl) */
} list_state_t;

/* ---- the SQL: made once ---- */

static char *statements[SHAPE_COUNT][SORT_COUNT][2];
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

/* The columns of each sort, as the indexes of schema/014 have them; a folder has no size: by name there. */
static const char *const order_cols[SORT_COUNT] = {"lower(x.name) COLLATE \"C\", x.name COLLATE \"C\", x.id",
                                                   "x.created_at, x.id", "x.updated_at, x.id", "x.size, x.id"};
/* The cursor row's key, on the SQL side: what the query answers as sort_key and takes back as $5 (text). */
static const char *const key_expr[SORT_COUNT] = {
    "x.name", "to_char(x.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    "to_char(x.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')", "x.size::text"};
static const char *const key_param[SORT_COUNT] = {"(lower($5::text) COLLATE \"C\", $5::text COLLATE \"C\", $6::uuid)",
                                                  "($5::timestamptz, $6::uuid)", "($5::timestamptz, $6::uuid)",
                                                  "($5::bigint, $6::uuid)"};

#define ISO_SECONDS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

/* `cols` with every column followed by " DESC" when desc. */
static void directed(char *out, size_t size, const char *cols, int desc)
{
    if (!desc) {
        snprintf(out, size, "%s", cols);
        return;
    }
    size_t used = 0;
    for (const char *p = cols; *p != '\0';) {
        const char *comma = strchr(p, ',');
        size_t len = comma != NULL ? (size_t)(comma - p) : strlen(p);
        used += (size_t)snprintf(out + used, size - used, "%s%.*s DESC", used > 0 ? ", " : "", (int)len, p);
        p += len;
        while (*p == ',' || *p == ' ')
            ++p;
    }
}

/* " AND (cols) > (cursor row)" (< for desc): the keyset condition of a page after the cursor, "" for a first one. */
static void after_cursor(char *out, size_t size, int sort, int desc, int after)
{
    if (after)
        snprintf(out, size, " AND (%s) %s %s", order_cols[sort], desc ? "<" : ">", key_param[sort]);
    else
        out[0] = '\0';
}

/* The folders branch: the live folders of the folder, from the start or after the cursor ($5, $6), in the sort's
 * order, numbered; none under a type filter (a folder has no type). */
static void folders_branch(char *out, size_t size, int sort, int desc, int after)
{
    int fsort = sort == SORT_SIZE ? SORT_NAME : sort;
    char cols[256], cond[512];
    directed(cols, sizeof(cols), order_cols[fsort], desc);
    after_cursor(cond, sizeof(cond), fsort, desc, after);
    snprintf(out, size,
             "SELECT 0 AS rank, row_number() OVER (ORDER BY %s) AS pos, 'folder' AS kind, x.id, x.name,"
             " x.parent_id AS parent, NULL::bigint AS size, NULL::text AS content_type, NULL::text AS status,"
             " NULL::text AS visibility, x.created_at, x.updated_at, %s AS sort_key, NULL::text AS thumb_key"
             " FROM (SELECT * FROM folders x WHERE x.owner_id = $1::uuid AND fm_parent_key(x.parent_id) = $2::uuid"
             " AND x.deleted_at IS NULL AND $3::text IS NULL%s ORDER BY %s LIMIT $4) x",
             cols, key_expr[fsort], cond, cols);
}

/* The files branch: the live files of the folder of the type (if any), from the start or after the cursor. The thumb
 * is the webp one, as GET /v1/files/{id}/download?variant=thumb signs it by default; only a READY file shows one. */
static void files_branch(char *out, size_t size, int sort, int desc, int after)
{
    char cols[256], cond[512];
    directed(cols, sizeof(cols), order_cols[sort], desc);
    after_cursor(cond, sizeof(cond), sort, desc, after);
    snprintf(out, size,
             "SELECT 1 AS rank, x.pos, 'file' AS kind, x.id, x.name, x.folder_id AS parent, x.size,"
             " x.content_type, x.status::text, x.visibility, x.created_at, x.updated_at, x.sort_key,"
             " CASE WHEN x.status = 'READY' THEN b.variants->'thumb'->'webp'->>'key' END AS thumb_key"
             " FROM (SELECT x.*, %s AS sort_key, row_number() OVER (ORDER BY %s) AS pos FROM ("
             "SELECT * FROM files x WHERE x.owner_id = $1::uuid AND fm_parent_key(x.folder_id) = $2::uuid"
             " AND x.deleted_at IS NULL AND ($3::text IS NULL OR fm_type_family(x.content_type) = $3::text)"
             "%s ORDER BY %s LIMIT $4) x) x LEFT JOIN blobs b ON b.sha256 = x.blob_sha256",
             key_expr[sort], cols, cond, cols);
}

static void init_once_fn(void)
{
    for (int shape = 0; shape < SHAPE_COUNT; ++shape)
        for (int sort = 0; sort < SORT_COUNT; ++sort)
            for (int desc = 0; desc < 2; ++desc) {
                size_t size = 8192;
                char *sql = malloc(size), files[3072], folders[3072];
                if (sql == NULL)
                    h2o_fatal("out of memory");
                files_branch(files, sizeof(files), sort, desc, shape == SHAPE_FILES_AFTER);
                if (shape == SHAPE_FILES_AFTER) {
                    snprintf(sql, size,
                             "SELECT kind, id, name, parent, size, content_type, status, visibility, " ISO_SECONDS(
                                 "created_at") ", " ISO_SECONDS("updated_at") ", sort_key, thumb_key FROM (%s) u ORDER "
                                                                              "BY pos",
                             files);
                } else {
                    folders_branch(folders, sizeof(folders), sort, desc, shape == SHAPE_FOLDERS_AFTER);
                    snprintf(sql, size,
                             "SELECT kind, id, name, parent, size, content_type, status, visibility, " ISO_SECONDS(
                                 "created_at") ", " ISO_SECONDS("updated_at") ", sort_key, thumb_key FROM (%s UNION "
                                                                              "ALL %s) u ORDER BY rank, pos",
                             folders, files);
                }
                statements[shape][sort][desc] = sql; /* for the process's life: prepared per connection */
            }
}

static void local_keep(const char *key, const char *body, size_t len, long long ttl_s);
static void answer_page(fm_req_t *r, const char *body, size_t len);
static void folder_readable(fm_req_t *r);

/* ---- the cursor (common/listcursor.c) ---- */

/* The cursor's fields of this listing (all but the row). */
static void cursor_of(const fm_principal_t *p, const list_query_t *q, fm_list_cursor_t *c)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->owner, sizeof(c->owner), "%.36s", p->user_id);
    snprintf(c->folder, sizeof(c->folder), "%.36s", q->folder_key);
    snprintf(c->sort, sizeof(c->sort), "%s", sort_names[q->sort]);
    snprintf(c->order, sizeof(c->order), "%s", q->desc ? "desc" : "asc");
    snprintf(c->type, sizeof(c->type), "%s", q->type != NULL ? q->type : "-");
}

/* The cursor after the row (phase, id, key) of this listing, in r's pool; NULL if it cannot be made. */
static char *cursor_make(fm_req_t *r, const fm_principal_t *p, const list_query_t *q, char phase, const char *id,
                         const char *key)
{
    fm_list_cursor_t c;
    cursor_of(p, q, &c);
    c.phase = phase;
    if (strlen(id) != 36 || strlen(key) > FM_LIST_CURSOR_KEY_MAX)
        return NULL;
    memcpy(c.id, id, 37);
    memcpy(c.key, key, strlen(key) + 1);
    char *out = h2o_mem_alloc_pool(&r->req->pool, FM_LIST_CURSOR_MAX + 1);
    const char *secret = fm_control->config.jwt_secret; /* keyed as every cursor: common/cursor.c */
    return fm_list_cursor_encode(secret, strlen(secret), &c, out, FM_LIST_CURSOR_MAX + 1) == 0 ? out : NULL;
}

/* Checks `cursor` (len bytes) against this listing and fills q's shape and position. -1: tampered, malformed, or
 * made for another owner, folder, sort, order or type. */
static int cursor_read(const fm_principal_t *p, list_query_t *q, const char *cursor, size_t len)
{
    fm_list_cursor_t got, want;
    const char *secret = fm_control->config.jwt_secret;
    cursor_of(p, q, &want); /* owner and folder: the scope the tag must match */
    if (fm_list_cursor_decode(secret, strlen(secret), want.owner, want.folder, cursor, len, &got) != 0)
        return -1;
    /* authentic for this owner and folder: it still must be this sort's, order's and type's */
    if (strcmp(got.sort, want.sort) != 0 || strcmp(got.order, want.order) != 0 || strcmp(got.type, want.type) != 0 ||
        strlen(got.key) >= sizeof(q->after_key))
        return -1;
    q->shape = got.phase == 'd' ? SHAPE_FOLDERS_AFTER : SHAPE_FILES_AFTER;
    memcpy(q->after_id, got.id, 37);
    snprintf(q->after_key, sizeof(q->after_key), "%s", got.key);
    return 0;
}

/* ---- parse ---- */

static int one_of(const char *v, const char *const *choices)
{
    for (int i = 0; choices[i] != NULL; ++i)
        if (strcmp(v, choices[i]) == 0)
            return i;
    return -1;
}

/* A parameter's decoded value into out; 1 when present, 0 when absent; -1 (answered `status` `code`) when it does not
 * decode or is longer than out. An empty value is present and empty. */
static int param(fm_req_t *r, const char *name, char *out, size_t size, int status, const char *code)
{
    int rc = fm_qs_get(fm_req_query(r), name, 0, out, size, NULL);
    if (rc == FM_QS_ABSENT)
        return 0;
    if (rc == FM_PCT_OK || rc == FM_QS_EMPTY)
        return 1;
    fm_reply_error(r, status, code, "%s is malformed", name);
    return -1;
}

/* Fills q from the query string (other parameters are ignored, as everywhere in the API); answers and returns -1 on a
 * value outside the documented ones: 422 for sort, order, type and limit, 404 folder_not_found for a folder that is
 * no UUID (as for a path id), 400 invalid_cursor. */
static int parse_query(fm_req_t *r, const fm_principal_t *p, list_query_t *q)
{
    static const char *const orders[] = {"asc", "desc", NULL};
    static const char *const sorts[] = {"name", "created_at", "updated_at", "size", NULL};
    char value[64];
    int rc;
    *q = (list_query_t){.limit = LIMIT_DEFAULT, .shape = SHAPE_FIRST};
    snprintf(q->folder_key, sizeof(q->folder_key), ROOT_KEY);
    if ((rc = param(r, "folder", value, sizeof(value), 404, "folder_not_found")) < 0)
        return -1;
    if (rc == 1 && strcmp(value, "root") != 0) {
        size_t len = strlen(value);
        if (!fm_uuid_valid(value, len)) {
            fm_reply_error(r, 404, "folder_not_found", "no such folder");
            return -1;
        }
        for (size_t i = 0; i < len; ++i)
            q->folder_key[i] = (char)(value[i] >= 'A' && value[i] <= 'F' ? value[i] + 32 : value[i]);
        q->folder_key[len] = '\0';
        if (strcmp(q->folder_key, ROOT_KEY) == 0) { /* the nil UUID is the root's key, never a folder's id */
            fm_reply_error(r, 404, "folder_not_found", "no such folder");
            return -1;
        }
    }
    if ((rc = param(r, "sort", value, sizeof(value), 422, "invalid_sort")) < 0)
        return -1;
    if (rc == 1 && (q->sort = one_of(value, sorts)) < 0) {
        fm_reply_error(r, 422, "invalid_sort", "sort must be name, created_at, updated_at or size");
        return -1;
    }
    if ((rc = param(r, "order", value, sizeof(value), 422, "invalid_order")) < 0)
        return -1;
    if (rc == 1 && (q->desc = one_of(value, orders)) < 0) {
        fm_reply_error(r, 422, "invalid_order", "order must be asc or desc");
        return -1;
    }
    if ((rc = param(r, "type", value, sizeof(value), 422, "invalid_type")) < 0)
        return -1;
    if (rc == 1) {
        int t = one_of(value, type_names);
        if (t < 0) {
            fm_reply_error(r, 422, "invalid_type", "type must be image, video, audio, pdf, text or other");
            return -1;
        }
        q->type = type_names[t];
    }
    if ((rc = param(r, "limit", value, sizeof(value), 422, "invalid_limit")) < 0)
        return -1;
    if (rc == 1) {
        size_t len = strlen(value);
        int limit = 0;
        for (size_t i = 0; i < len && limit <= LIMIT_MAX; ++i)
            limit = value[i] >= '0' && value[i] <= '9' ? limit * 10 + (value[i] - '0') : LIMIT_MAX + 1;
        if (len == 0 || len > 3 || limit < 1 || limit > LIMIT_MAX) {
            fm_reply_error(r, 422, "invalid_limit", "limit must be an integer from 1 to %d", LIMIT_MAX);
            return -1;
        }
        q->limit = limit;
    }
    char cursor[FM_LIST_CURSOR_MAX + 1];
    rc = fm_qs_get(fm_req_query(r), "cursor", 0, cursor, sizeof(cursor), NULL);
    if (rc == FM_QS_ABSENT)
        return 0;
    if (rc != FM_PCT_OK || cursor_read(p, q, cursor, strlen(cursor)) != 0) {
        fm_reply_error(r, 400, "invalid_cursor", "the cursor is not one of this listing's");
        return -1;
    }
    return 0;
}

/* ---- act and answer ---- */

static const char *cell(PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col);
}

static void add_string_or_null(cJSON *obj, const char *name, const char *value)
{
    if (value != NULL)
        cJSON_AddStringToObject(obj, name, value);
    else
        cJSON_AddNullToObject(obj, name);
}

/* A READY file's thumbnail URL (signed as GET /v1/files/{id}/download?variant=thumb signs it), or NULL. */
static const char *thumbnail_url(fm_req_t *r, PGresult *res, int row)
{
    const char *key = cell(res, row, 11), *visibility = cell(res, row, 7);
    if (key == NULL || key[0] == '\0' || strlen(key) > 1024 || !fm_download_enabled())
        return NULL;
    fm_download_target_t t = {.file_id = cell(res, row, 1),
                              .key = key,
                              .name = cell(res, row, 2),
                              .variant = "thumb",
                              .format = "webp",
                              .is_public = visibility != NULL && strcmp(visibility, "public") == 0};
    return fm_download_url(r, &t, NULL);
}

static void ignore_reply(redisReply *reply, const char *errstr, void *data) {}

static void on_rows(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_pg_failed(r, res, errstr))
        return;
    list_state_t *s = r->state;
    const list_query_t *q = &s->q;
    int rows = PQntuples(res), shown = rows > q->limit ? q->limit : rows;
    cJSON *body = cJSON_CreateObject(), *items = cJSON_AddArrayToObject(body, "items");
    for (int i = 0; i < shown; ++i) {
        cJSON *item = cJSON_CreateObject();
        int is_folder = strcmp(PQgetvalue(res, i, 0), "folder") == 0;
        cJSON_AddStringToObject(item, "kind", is_folder ? "folder" : "file");
        cJSON_AddStringToObject(item, "id", PQgetvalue(res, i, 1));
        cJSON_AddStringToObject(item, "name", PQgetvalue(res, i, 2));
        if (is_folder) {
            add_string_or_null(item, "parent_id", cell(res, i, 3));
        } else {
            cJSON_AddNumberToObject(item, "size", (double)strtoll(PQgetvalue(res, i, 4), NULL, 10));
            cJSON_AddStringToObject(item, "content_type", PQgetvalue(res, i, 5));
            cJSON_AddStringToObject(item, "status", PQgetvalue(res, i, 6));
            add_string_or_null(item, "folder_id", cell(res, i, 3));
            cJSON_AddStringToObject(item, "visibility", PQgetvalue(res, i, 7));
        }
        cJSON_AddStringToObject(item, "created_at", PQgetvalue(res, i, 8));
        cJSON_AddStringToObject(item, "updated_at", PQgetvalue(res, i, 9));
        if (!is_folder)
            add_string_or_null(item, "thumbnail_url", thumbnail_url(r, res, i));
        cJSON_AddItemToArray(items, item);
    }
    const char *next = NULL;
    if (rows > shown) {
        int last = shown - 1;
        char phase = strcmp(PQgetvalue(res, last, 0), "folder") == 0 ? 'd' : 'f';
        if ((next = cursor_make(r, s->principal, q, phase, PQgetvalue(res, last, 1), PQgetvalue(res, last, 10))) ==
            NULL) {
            cJSON_Delete(body);
            fm_reply_error(r, 500, "internal_error", "the next cursor could not be made");
            return;
        }
    }
    add_string_or_null(body, "next_cursor", next);
    char *text = cJSON_PrintUnformatted(body);
    cJSON_Delete(body);
    if (text == NULL)
        h2o_fatal("out of memory");
    size_t len = strlen(text);
    long long ttl = s->page_ttl_s;
    if (s->page_key[0] != '\0' && ttl >= 1) {
        local_keep(s->page_key, text, len, ttl);
        /* Fire and forget: a lost SET costs one more query. The key holds the generation read before the query, so a
         * change committed after that read (and its INCR) leaves this page under a generation no one reads. */
        char ttl_text[24];
        snprintf(ttl_text, sizeof(ttl_text), "%lld", ttl);
        fm_redis_commandargv(fm_control_thread(r)->redis, ignore_reply, NULL, 5,
                             (const char *[]){"SET", s->page_key, text, "EX", ttl_text},
                             (const size_t[]){3, strlen(s->page_key), len, 2, strlen(ttl_text)});
    }
    answer_page(r, text, len);
    cJSON_free(text);
}

static void list_rows(fm_req_t *r)
{
    list_state_t *s = r->state;
    const list_query_t *q = &s->q;
    char limit[16];
    snprintf(limit, sizeof(limit), "%d", q->limit + 1);
    const char *params[6] = {s->principal->user_id, q->folder_key, q->type, limit, NULL, NULL};
    if (q->shape != SHAPE_FIRST) {
        params[4] = q->after_key;
        params[5] = q->after_id;
    }
    fm_pg_call_prepared(r, on_rows, statements[q->shape][q->sort][q->desc], q->shape == SHAPE_FIRST ? 4 : 6, params);
}

/* ---- authorize ---- */

static void on_folder(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_pg_failed(r, res, errstr))
        return;
    if (PQntuples(res) != 1) {
        fm_reply_error(r, 404, "folder_not_found", "no such folder");
        return;
    }
    list_rows(r);
}

/* The one permission check of a listing: the caller may list the folder (their root; a live folder they own). Answers
 * 404 folder_not_found for anything else, a folder of someone else's as a trashed or missing one. Sharing extends
 * this function (a grant on the folder or one of its ancestors). */
static void folder_readable(fm_req_t *r)
{
    static const char sql[] =
        "SELECT 1 FROM folders WHERE id = $1::uuid AND owner_id = $2::uuid AND deleted_at IS NULL";
    list_state_t *s = r->state;
    if (strcmp(s->q.folder_key, ROOT_KEY) == 0) {
        list_rows(r);
        return;
    }
    fm_pg_call_prepared(r, on_folder, sql, 2, (const char *[]){s->q.folder_key, s->principal->user_id});
}

/* ---- the first page's cache ---- */

/* A page under a key is immutable (the key holds the generation), so each thread keeps the pages it served last
 * (direct-mapped) and a warm page costs one small GET of the generation, not the page's ~30 KB from Redis. */
#define LOCAL_PAGES 64
#define LOCAL_PAGE_MAX (512 * 1024)

typedef struct {
    char key[160];
    char *body;
    size_t len;
    uint64_t expires_ms; /* one page TTL after it was kept: a page read from Redis lives at most 2 TTLs in all, and
                          * 2 TTLs ≤ half the shortest URL life, so a URL served from it has half its life left */
} local_page_t;

static _Thread_local local_page_t local_pages[LOCAL_PAGES];

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static local_page_t *local_slot(const char *key)
{
    return &local_pages[fm_fnv1a(key, strlen(key), 0) % LOCAL_PAGES];
}

static void local_keep(const char *key, const char *body, size_t len, long long ttl_s)
{
    if (len > LOCAL_PAGE_MAX)
        return;
    local_page_t *slot = local_slot(key);
    char *copy = malloc(len);
    if (copy == NULL)
        h2o_fatal("out of memory");
    memcpy(copy, body, len);
    free(slot->body);
    *slot = (local_page_t){.body = copy, .len = len, .expires_ms = now_ms() + (uint64_t)ttl_s * 1000};
    snprintf(slot->key, sizeof(slot->key), "%s", key);
}

void fm_files_list_thread_dispose(void)
{
    for (size_t i = 0; i < LOCAL_PAGES; ++i) {
        free(local_pages[i].body);
        local_pages[i] = (local_page_t){0};
    }
}

static void answer_page(fm_req_t *r, const char *body, size_t len)
{
    fm_req_add_header(r, "cache-control", "private, no-store"); /* the thumbnail URLs are bearer credentials */
    fm_reply_raw(r, 200, "application/json", body, len);
}

static void on_page(redisReply *reply, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    list_state_t *s = r->state;
    if (reply != NULL && reply->type == REDIS_REPLY_STRING) {
        /* another thread's (or instance's) page: kept here too */
        local_keep(s->page_key, reply->str, reply->len, s->page_ttl_s);
        answer_page(r, reply->str, reply->len);
        return;
    }
    folder_readable(r);
}

static void on_generation(redisReply *reply, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    list_state_t *s = r->state;
    if (reply == NULL || (reply->type != REDIS_REPLY_STRING && reply->type != REDIS_REPLY_NIL) ||
        (reply->type == REDIS_REPLY_STRING && (reply->len == 0 || reply->len > 20))) {
        /* Redis is not needed to answer: list from PostgreSQL, uncached */
        fm_log(FM_LOG_WARN, r->request_id, "listing cache: %s", errstr != NULL ? errstr : "unexpected reply");
        s->page_key[0] = '\0';
        folder_readable(r);
        return;
    }
    size_t used = strlen(s->page_key);
    if (reply->type == REDIS_REPLY_STRING)
        snprintf(s->page_key + used, sizeof(s->page_key) - used, "%.*s", (int)reply->len, reply->str);
    else
        snprintf(s->page_key + used, sizeof(s->page_key) - used, "0");
    local_page_t *slot = local_slot(s->page_key);
    if (slot->body != NULL && strcmp(slot->key, s->page_key) == 0 && now_ms() < slot->expires_ms) {
        answer_page(r, slot->body, slot->len);
        return;
    }
    if (fm_redis_call_with(r, r, on_page, 2, (const char *[]){"GET", s->page_key}) != 0)
        folder_readable(r);
}

/* A first page is looked up before the folder check: its key holds the owner (only they can have made it, after the
 * check passed) and the owner's generation (trashing or moving the folder INCRs it). The generation is read first,
 * from Redis every time (a change's INCR is seen by the next request); the page under it from this thread's copy,
 * else from Redis. */
static void first_page_cached(fm_req_t *r)
{
    list_state_t *s = r->state;
    const list_query_t *q = &s->q;
    char gen_key[64];
    snprintf(gen_key, sizeof(gen_key), "fm:tgen:{%s}", s->principal->user_id);
    snprintf(s->page_key, sizeof(s->page_key), "fm:list:{%s}:%s:%s:%s:%s:%d:", s->principal->user_id, q->folder_key,
             sort_names[q->sort], q->desc ? "desc" : "asc", q->type != NULL ? q->type : "all", q->limit);
    if (fm_redis_call_with(r, r, on_generation, 2, (const char *[]){"GET", gen_key}) != 0) {
        s->page_key[0] = '\0';
        folder_readable(r);
    }
}

static void list_authorized(fm_req_t *r, const fm_principal_t *p)
{
    pthread_once(&init_once, init_once_fn);
    list_state_t *s = fm_req_state(r, sizeof(*s));
    s->principal = p;
    if (parse_query(r, p, &s->q) != 0)
        return;
    /* a quarter of the shortest life of the URLs it holds, so a cached URL has most of its life left */
    s->page_ttl_s = fm_download_url_min_life_s() / 4;
    if (s->page_ttl_s > PAGE_TTL_MAX_S)
        s->page_ttl_s = PAGE_TTL_MAX_S;
    if (s->q.shape == SHAPE_FIRST && s->page_ttl_s >= 1)
        first_page_cached(r);
    else
        folder_readable(r);
}

void handle_files_list(fm_req_t *r)
{
    fm_auth_require(r, list_authorized);
}
