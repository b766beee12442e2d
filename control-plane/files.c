/*
 * GET /v1/files/{id} and GET /v1/jobs/{id}: status reads, answered from a Redis-cached row (`fm:file:{id}`,
 * `fm:job:{id}`, JSON with the owner's id) and filled from PostgreSQL on a miss. Whoever changes a row deletes its
 * key (uploads_complete.c, events.c, the worker); the TTL bounds what a lost delete can cost.
 * Only the owner sees a row; anyone else gets the same 404 as for a missing id.
 * A file's row also carries what the download route needs (visibility, the blob's storage_key and variants,
 * fm_file_row); GET /v1/files/{id} strips those internal fields, like the owner's id, and shows `metadata` (an
 * allow-list of blobs.metadata built in the row's SQL) and `variants` (what exists, without keys; fm_file_answer).
 * The GPS position is never in the row: the owner's ?include=gps reads it for that request only (gps_sql).
 * Misses of one key on one thread share one PostgreSQL load (docs/decisions.md "Row loads are coalesced"): when the
 * key expires under load, its readers must not all queue a query at once.
 */
#include <stdio.h>
#include <string.h>

#include "control.h"
#include "hash.h"
#include "log.h"
#include "metrics.h"
#include "qs.h"

#define CACHE_TTL_S "300"
/* Loads in flight that others may join, per thread: a direct-mapped table, so a key whose slot is taken by another
 * key's load just loads alone. */
#define LOAD_SLOTS 256

typedef struct {
    const char *kind; /* "file" | "job" */
    char id[40], key[64];
    const fm_principal_t *principal;
    int record_checked; /* the written-behind record was looked for already */
    /* fm_file_row's caller and its argument; NULL: answer the row (GET /v1/files/{id}) */
    void (*next)(fm_req_t *r, const cJSON *row, void *arg);
    void *arg;
    /* While this request's own load is in flight: its slot in `joinable` (NULL once it may not be joined any more),
     * the requests waiting for it, and whether its row may be cached (not when a writer superseded it). */
    fm_req_t **slot;
    fm_req_t *waiters, *last_waiter;
    int superseded;
    fm_req_t *next_waiter; /* while this request waits for another's load */
    int with_gps;          /* GET /v1/files/{id}?include=gps */
    const char *answer;    /* with_gps: the answer without the position, in the request's pool, while gps_sql runs */
} read_state_t;

/* The load each key's readers join on this thread: a request whose query is in flight (held until it answers). */
static _Thread_local fm_req_t *joinable[LOAD_SLOTS];

/* Fields of the cached file row that are not part of GET /v1/files/{id}'s answer (`variants` is replaced by the list
 * fm_file_answer builds from it). */
static const char *const internal_fields[] = {"owner_id", "visibility", "storage_key", "variants"};
/* What fm_file_answer lists of blobs.variants: a few renditions today (thumb/preview × jpeg/webp); names and formats
 * are the worker's own words, shown only when short and plain. */
#define SHOWN_VARIANTS_MAX 16
#define VARIANT_WORD_MAX 32

/*
 * GET /v1/files/{id}'s `metadata`, built from blobs.metadata (describe.c) by an allow-list: each field the API shows is
 * named here and type-checked, so a field a future worker adds never reaches a client (nor the cached row) until it is
 * added here. Never GPS (its own query, owner opt-in: gps_sql). Strings are bounded so the row stays well under the
 * per-thread cache's RCACHE_VALUE_MAX (main.c): camera make/model lose control characters and are cut to
 * EXIF_TEXT_MAX characters; taken_at is EXIF's "YYYY:MM:DD HH:MM:SS" (local time of the camera, offset unknown) as
 * ISO 8601 without an offset, or absent when malformed. Dimensions and orientation are shown for images only (a PDF's
 * describe.c size is page 1 in points, not pixels: its variants give the pixel size). docs/decisions.md "Metadata in
 * the API".
 */
/* one SQL fragment per line, as the query reads */
/* clang-format off */
#define EXIF_TEXT_MAX "64"
#define NUMBER_SQL(field) "CASE jsonb_typeof(b.metadata->'" field "') WHEN 'number' THEN b.metadata->'" field "' END"
#define IMAGE_NUMBER_SQL(field) "CASE WHEN b.content_type LIKE 'image/%' THEN " NUMBER_SQL(field) " END"
#define EXIF_TEXT_SQL(field)                                                                                           \
    "CASE jsonb_typeof(b.metadata->'exif'->'" field "') WHEN 'string' THEN nullif(left(regexp_replace("                \
    "b.metadata->'exif'->>'" field "', '[[:cntrl:]]', '', 'g'), " EXIF_TEXT_MAX "), '') END"
#define EXIF_DATETIME_SQL "b.metadata->'exif'->>'datetime'"
#define METADATA_SQL                                                                                                   \
    "jsonb_strip_nulls(jsonb_build_object("                                                                            \
    " 'detected_type', b.content_type,"                                                                                \
    " 'width', " IMAGE_NUMBER_SQL("width") ","                                                                         \
    " 'height', " IMAGE_NUMBER_SQL("height") ","                                                                       \
    " 'orientation', " IMAGE_NUMBER_SQL("orientation") ","                                                             \
    " 'page_count', " NUMBER_SQL("pages") ","                                                                          \
    " 'duration', " NUMBER_SQL("duration") ","                                                                         \
    " 'encrypted', CASE WHEN b.metadata->'encrypted' = 'true' THEN true END,"                                          \
    " 'camera', nullif(jsonb_strip_nulls(jsonb_build_object("                                                          \
    "   'make', " EXIF_TEXT_SQL("make") ", 'model', " EXIF_TEXT_SQL("model") ")), '{}'),"                              \
    " 'taken_at', CASE WHEN jsonb_typeof(b.metadata->'exif'->'datetime') = 'string' AND " EXIF_DATETIME_SQL            \
    "   ~ '^\\d{4}:(0[1-9]|1[0-2]):(0[1-9]|[12]\\d|3[01]) ([01]\\d|2[0-3]):[0-5]\\d:[0-5]\\d$'"                       \
    "   THEN regexp_replace(" EXIF_DATETIME_SQL ", '^(\\d{4}):(\\d\\d):(\\d\\d) ', '\\1-\\2-\\3T') END))"
/* clang-format on */

static const char file_sql[] =
    "SELECT json_build_object('id', f.id, 'name', f.name, 'size', f.size, 'content_type', f.content_type,"
    " 'sha256', encode(f.claimed_sha256, 'hex'), 'status', f.status, 'status_reason', f.status_reason,"
    " 'folder_id', f.folder_id, 'deduplicated', f.blob_sha256 IS NOT NULL AND NOT EXISTS ("
    "   SELECT 1 FROM uploads u WHERE u.file_id = f.id),"
    " 'created_at', to_char(f.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
    " 'updated_at', to_char(f.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
    " 'metadata', CASE WHEN f.status = 'READY' AND b.sha256 IS NOT NULL THEN " METADATA_SQL " ELSE '{}' END,"
    " 'owner_id', f.owner_id, 'visibility', f.visibility, 'storage_key', b.storage_key,"
    " 'variants', coalesce(b.variants, '{}'::jsonb))::text "
    "FROM files f LEFT JOIN blobs b ON b.sha256 = f.blob_sha256 WHERE f.id = $1::uuid AND f.deleted_at IS NULL";

/* The GPS position of a READY file's blob (describe.c: {"lat", "lon"} in decimal degrees), for its owner's
 * ?include=gps only: never part of the cached row, so no answer built from the row can carry it. */
static const char gps_sql[] = "SELECT b.metadata->'gps' FROM files f JOIN blobs b ON b.sha256 = f.blob_sha256"
                              " WHERE f.id = $1::uuid AND f.deleted_at IS NULL AND f.status = 'READY'";

static const char job_sql[] =
    "SELECT json_build_object('id', j.id, 'type', j.type, 'status', j.status, 'file_id', j.file_id,"
    " 'upload_id', j.upload_id, 'attempts', j.attempts, 'transient_retries', j.transient_retries,"
    " 'last_error', j.last_error,"
    " 'created_at', to_char(j.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
    " 'owner_id', f.owner_id)::text "
    "FROM jobs j JOIN files f ON f.id = j.file_id WHERE j.id = $1::uuid";

/* A row's text as parsed by this thread: a client polling a file's status, or fetching download URLs of one file,
 * sends the same cached text again and again, and parsing it and printing the answer (cJSON prints each number twice
 * over to check it) was a sixth of such a request's CPU. Keyed by the cache key, matched on the exact text, so a
 * changed row is simply parsed again. `answer` is GET's body: the row without its internal fields. */
#define PARSED_SLOTS 64

typedef struct {
    char key[64];
    char *text;
    size_t len;
    cJSON *row;   /* read-only once stored */
    char *answer; /* NUL-terminated */
} parsed_row_t;

static _Thread_local parsed_row_t parsed_rows[PARSED_SLOTS];

/* A variant's name or format as the worker wrote it, if it is one short word: [a-z0-9_-]{1,VARIANT_WORD_MAX}. */
static int plain_word(const char *s)
{
    size_t len = s != NULL ? strlen(s) : 0;
    if (len == 0 || len > VARIANT_WORD_MAX)
        return 0;
    for (size_t i = 0; i < len; ++i)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '-'))
            return 0;
    return 1;
}

/* The API's `variants` from the row's blobs.variants (name → format → {key, width, height, bytes}, variants.c):
 * [{name, format, width, height, size}] in the stored order, each field copied by name and type, never the key
 * (variants are downloaded through GET /v1/files/{id}/download?variant=, which signs the edge URL). */
static cJSON *shown_variants(const cJSON *stored)
{
    static const struct {
        const char *stored, *shown;
    } numbers[] = {{"width", "width"}, {"height", "height"}, {"bytes", "size"}};
    cJSON *list = cJSON_CreateArray();
    const cJSON *by_format, *entry;
    int count = 0;
    if (!cJSON_IsObject(stored))
        return list;
    cJSON_ArrayForEach(by_format, stored)
    {
        if (!cJSON_IsObject(by_format) || !plain_word(by_format->string))
            continue;
        cJSON_ArrayForEach(entry, by_format)
        {
            if (!cJSON_IsObject(entry) || !plain_word(entry->string) || count == SHOWN_VARIANTS_MAX)
                continue;
            cJSON *shown = cJSON_CreateObject();
            cJSON_AddStringToObject(shown, "name", by_format->string);
            cJSON_AddStringToObject(shown, "format", entry->string);
            for (size_t i = 0; i < sizeof(numbers) / sizeof(numbers[0]); ++i) {
                const cJSON *n = cJSON_GetObjectItemCaseSensitive(entry, numbers[i].stored);
                if (cJSON_IsNumber(n))
                    cJSON_AddNumberToObject(shown, numbers[i].shown, n->valuedouble);
            }
            cJSON_AddItemToArray(list, shown);
            count++;
        }
    }
    return list;
}

cJSON *fm_file_answer(const cJSON *row)
{
    cJSON *shown = cJSON_Duplicate(row, 1);
    if (shown == NULL)
        h2o_fatal("out of memory");
    for (size_t i = 0; i < sizeof(internal_fields) / sizeof(internal_fields[0]); ++i)
        cJSON_DeleteItemFromObjectCaseSensitive(shown, internal_fields[i]);
    const cJSON *status = cJSON_GetObjectItemCaseSensitive(row, "status");
    int ready = cJSON_IsString(status) && strcmp(status->valuestring, "READY") == 0;
    if (!ready || !cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(shown, "metadata"))) { /* not known yet: empty */
        cJSON_DeleteItemFromObjectCaseSensitive(shown, "metadata");
        cJSON_AddItemToObject(shown, "metadata", cJSON_CreateObject());
    }
    cJSON_AddItemToObject(shown, "variants",
                          ready ? shown_variants(cJSON_GetObjectItemCaseSensitive(row, "variants"))
                                : cJSON_CreateArray());
    return shown;
}

static void parsed_clear(parsed_row_t *p)
{
    free(p->text);
    cJSON_Delete(p->row);
    cJSON_free(p->answer);
    *p = (parsed_row_t){0};
}

void fm_files_thread_dispose(void)
{
    for (size_t i = 0; i < PARSED_SLOTS; ++i)
        parsed_clear(&parsed_rows[i]);
}

/* The parsed form of `text` (the row of `key`), NULL if it is not a JSON object; borrowed until the thread's next
 * call. */
static const parsed_row_t *parse_row(const char *key, const char *text, size_t len)
{
    parsed_row_t *p = &parsed_rows[fm_fnv1a(key, strlen(key), 0) % PARSED_SLOTS];
    if (p->row != NULL && p->len == len && strcmp(p->key, key) == 0 && memcmp(p->text, text, len) == 0)
        return p;
    parsed_clear(p);
    cJSON *row = cJSON_ParseWithLength(text, len);
    if (!cJSON_IsObject(row)) {
        cJSON_Delete(row);
        return NULL;
    }
    cJSON *shown;
    if (strncmp(key, "fm:file:", 8) == 0) {
        shown = fm_file_answer(row);
    } else { /* a job row: only its owner's id is internal */
        if ((shown = cJSON_Duplicate(row, 1)) == NULL)
            h2o_fatal("out of memory");
        cJSON_DeleteItemFromObjectCaseSensitive(shown, "owner_id");
    }
    char *answer = cJSON_PrintUnformatted(shown), *copy = malloc(len + 1);
    cJSON_Delete(shown);
    if (answer == NULL || copy == NULL)
        h2o_fatal("out of memory");
    memcpy(copy, text, len);
    copy[len] = '\0';
    *p = (parsed_row_t){.text = copy, .len = len, .row = row, .answer = answer};
    snprintf(p->key, sizeof(p->key), "%s", key);
    return p;
}

/* A GPS position as describe.c stores it, copied by field and range: {"lat", "lon"} in decimal degrees, or NULL. */
static cJSON *shown_gps(const cJSON *stored)
{
    const cJSON *lat = cJSON_GetObjectItemCaseSensitive(stored, "lat"),
                *lon = cJSON_GetObjectItemCaseSensitive(stored, "lon");
    if (!cJSON_IsNumber(lat) || !cJSON_IsNumber(lon) || !(lat->valuedouble >= -90 && lat->valuedouble <= 90) ||
        !(lon->valuedouble >= -180 && lon->valuedouble <= 180))
        return NULL;
    cJSON *gps = cJSON_CreateObject();
    cJSON_AddNumberToObject(gps, "lat", lat->valuedouble);
    cJSON_AddNumberToObject(gps, "lon", lon->valuedouble);
    return gps;
}

/* gps_sql answered: the owner's answer with metadata.gps when the blob has a position. */
static void on_gps_loaded(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_pg_failed(r, res, errstr))
        return;
    read_state_t *s = r->state;
    cJSON *answer = cJSON_Parse(s->answer), *stored = NULL, *gps = NULL;
    if (answer == NULL)
        h2o_fatal("out of memory"); /* our own print of a parsed row */
    if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
        stored = cJSON_ParseWithLength(PQgetvalue(res, 0, 0), (size_t)PQgetlength(res, 0, 0));
    cJSON *metadata = cJSON_GetObjectItemCaseSensitive(answer, "metadata");
    if (cJSON_IsObject(metadata) && (gps = shown_gps(stored)) != NULL)
        cJSON_AddItemToObject(metadata, "gps", gps);
    cJSON_Delete(stored);
    fm_reply_json(r, 200, answer);
}

/* Answers the cached/loaded row, parsed by parse_row (NULL: not JSON), or hands it to fm_file_row's caller, if the
 * caller owns it; the internal fields are not part of the answer. This owner test is the one permission check of
 * every file read (GET, download, PATCH's answer): the GPS opt-in below is only reached through it. */
static void answer_row(fm_req_t *r, const parsed_row_t *p)
{
    read_state_t *s = r->state;
    const cJSON *owner = p != NULL ? cJSON_GetObjectItemCaseSensitive(p->row, "owner_id") : NULL;
    if (!cJSON_IsString(owner) || strcmp(owner->valuestring, s->principal->user_id) != 0) {
        fm_reply_error(r, 404, "not_found", "no such %s", s->kind);
        return;
    }
    if (s->next != NULL) {
        s->next(r, p->row, s->arg);
        return;
    }
    const cJSON *status = cJSON_GetObjectItemCaseSensitive(p->row, "status");
    if (s->with_gps && cJSON_IsString(status) && strcmp(status->valuestring, "READY") == 0) {
        /* the parsed row is the thread's, and may be replaced while gps_sql runs: the answer is kept with r */
        size_t len = strlen(p->answer);
        char *answer = h2o_mem_alloc_pool(&r->req->pool, len + 1);
        memcpy(answer, p->answer, len + 1);
        s->answer = answer;
        const char *params[] = {s->id};
        fm_pg_call(r, on_gps_loaded, gps_sql, 1, params);
        return;
    }
    fm_reply_raw(r, 200, "application/json", p->answer, strlen(p->answer));
}

static void on_cache_filled(redisReply *reply, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR)
        fm_log(FM_LOG_WARN, r->request_id, "redis: row not cached: %s", reply ? reply->str : errstr);
}

static void load_row(fm_req_t *r, void *arg);

/* What one request does with a load's result, its own or the one it waited for (each reader is answered on its own:
 * its owner check, its error, its record check). `*cached`: the row was put back in Redis already. */
static void row_loaded(fm_req_t *r, PGresult *res, const char *errstr, int may_cache, int *cached)
{
    if (fm_pg_failed(r, res, errstr))
        return;
    read_state_t *s = r->state;
    if (PQntuples(res) != 1 && strcmp(s->kind, "file") == 0 &&
        fm_records_retry_file(r, s->id, &s->record_checked, load_row))
        return;
    if (PQntuples(res) != 1) {
        fm_reply_error(r, 404, "not_found", "no such %s", s->kind);
        return;
    }
    const char *json = PQgetvalue(res, 0, 0);
    if (may_cache && !*cached) {
        const char *argv[] = {"SET", s->key, json, "EX", CACHE_TTL_S};
        /* not fm_redis_call: a fill refused at once only goes uncached, the row is still answered below */
        fm_redis_call_with(r, r, on_cache_filled, 5, argv);
        *cached = 1;
    }
    answer_row(r, parse_row(s->key, json, (size_t)PQgetlength(res, 0, 0)));
}

/* A load answered: its request and every waiter are resumed and answered. A request whose client went away is only
 * resumed (which may free it, so each one's successor is read first); the others still get the result. */
static void on_loaded(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    read_state_t *s = r->state;
    if (s->slot != NULL) /* readers arriving from now on start a new load */
        *s->slot = NULL;
    fm_req_t *waiter = s->waiters;
    int may_cache = !s->superseded, cached = 0;
    s->slot = NULL;
    s->waiters = s->last_waiter = NULL;
    if (fm_req_resume(r) == 0)
        row_loaded(r, res, errstr, may_cache, &cached);
    while (waiter != NULL) {
        fm_req_t *w = waiter;
        waiter = ((read_state_t *)w->state)->next_waiter;
        if (fm_req_resume(w) == 0)
            row_loaded(w, res, errstr, may_cache, &cached);
    }
}

static void on_cache_read(redisReply *reply, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (reply != NULL && reply->type == REDIS_REPLY_STRING) {
        read_state_t *s = r->state;
        const parsed_row_t *p = parse_row(s->key, reply->str, reply->len);
        /* A file row cached before it carried the download fields and the metadata is read again (it lives
         * CACHE_TTL_S at most). */
        if (p != NULL && (strcmp(s->kind, "file") != 0 || cJSON_HasObjectItem(p->row, "metadata"))) {
            answer_row(r, p);
            return;
        }
    }
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) /* Redis down: PostgreSQL still answers */
        fm_log(FM_LOG_WARN, r->request_id, "redis: cache unavailable: %s", reply ? reply->str : errstr);
    load_row(r, NULL);
}

void fm_files_describe_metrics(void)
{
    fm_metrics_describe("fm_row_loads_coalesced_total", FM_METRIC_COUNTER,
                        "File and job row reads that waited for another request's PostgreSQL load of the same row");
    fm_metrics_counter_add("fm_row_loads_coalesced_total", NULL, 0);
}

/* A GET (or HEAD) may take the result of a load already in flight. Any other method reads back a row it has just
 * written (PATCH, restore), as does a request that has just brought its written-behind record into PostgreSQL: a
 * load in flight may predate that write, so such a request loads itself, and readers arriving later join it. */
static int may_join(fm_req_t *r)
{
    const read_state_t *s = r->state;
    h2o_iovec_t method = r->req->method;
    return !s->record_checked && (h2o_memis(method.base, method.len, H2O_STRLIT("GET")) ||
                                  h2o_memis(method.base, method.len, H2O_STRLIT("HEAD")));
}

static void load_row(fm_req_t *r, void *arg)
{
    read_state_t *s = r->state;
    fm_req_t **slot = &joinable[fm_fnv1a(s->key, strlen(s->key), 0) % LOAD_SLOTS];
    s->slot = NULL;
    s->waiters = s->last_waiter = s->next_waiter = NULL;
    s->superseded = 0;
    if (*slot != NULL) {
        read_state_t *loading = (*slot)->state;
        if (strcmp(loading->key, s->key) == 0) {
            if (may_join(r)) {
                fm_req_hold(r); /* not a call: resumed by on_loaded of the request whose load it waits for */
                if (loading->last_waiter != NULL)
                    ((read_state_t *)loading->last_waiter->state)->next_waiter = r;
                else
                    loading->waiters = r;
                loading->last_waiter = r;
                FM_METRICS_COUNT("fm_row_loads_coalesced_total", NULL, 1);
                return;
            }
            loading->slot = NULL; /* its waiters keep it; its row may be older than this request's write */
            loading->superseded = 1;
            *slot = NULL;
        }
    }
    if (*slot == NULL) {
        *slot = r;
        s->slot = slot;
    }
    /* Not fm_pg_call: a refused query must also leave the slot, and no one can have joined it yet. */
    const char *params[] = {s->id};
    if (fm_pg_call_prepared_with(r, r, on_loaded, strcmp(s->kind, "file") == 0 ? file_sql : job_sql, 1, params) != 0) {
        if (s->slot != NULL)
            *s->slot = NULL;
        s->slot = NULL;
        fm_reply_unavailable(r, "the database");
    }
}

int fm_id_param(fm_req_t *r, const char *kind, const char *id, size_t len, char out[37])
{
    if (!fm_uuid_valid(id, len)) {
        fm_reply_error(r, 404, "not_found", "no such %s", kind);
        return -1;
    }
    for (size_t i = 0; i < 36; ++i) /* one cache key per id, whatever the case it was written in */
        out[i] = (char)(id[i] >= 'A' && id[i] <= 'F' ? id[i] + 32 : id[i]);
    out[36] = '\0';
    return 0;
}

static void read_row(fm_req_t *r, const fm_principal_t *p, const char *kind, const char *id, size_t id_len)
{
    read_state_t *s = fm_req_state(r, sizeof(read_state_t));
    s->kind = kind;
    s->principal = p;
    if (fm_id_param(r, kind, id, id_len, s->id) != 0)
        return;
    snprintf(s->key, sizeof(s->key), "fm:%s:{%s}", kind, s->id);
    fm_redis_get_cached(r, on_cache_read, s->key);
}

void fm_file_row(fm_req_t *r, const fm_principal_t *p, const char *id, size_t id_len,
                 void (*next)(fm_req_t *r, const cJSON *row, void *arg), void *arg)
{
    read_state_t *s = fm_req_state(r, sizeof(read_state_t));
    s->next = next;
    s->arg = arg;
    read_row(r, p, "file", id, id_len);
}

/* GET /v1/files/{id}'s query: `include`, a comma-separated list of what the answer leaves out by default; only "gps"
 * (metadata.gps, the owner's opt-in: docs/decisions.md "Metadata in the API"). Other parameters are ignored, as
 * everywhere in the API; an unknown include is 422 so a typo does not silently drop what was asked for. */
static int parse_file_query(fm_req_t *r, read_state_t *s)
{
    h2o_iovec_t rest = fm_req_query(r), name, value;
    while (fm_qs_next(&rest, &name, &value)) {
        if (!h2o_memis(name.base, name.len, H2O_STRLIT("include")))
            continue;
        s->with_gps = 0; /* a repeat overrides, as in download.c */
        const char *v = value.base != NULL ? value.base : "", *end = v + value.len;
        while (v <= end) {
            const char *comma = memchr(v, ',', (size_t)(end - v));
            size_t len = (size_t)((comma != NULL ? comma : end) - v);
            if (h2o_memis(v, len, H2O_STRLIT("gps"))) {
                s->with_gps = 1;
            } else if (len != 0) {
                fm_reply_error(r, 422, "invalid_include", "include takes gps");
                return -1;
            }
            v += len + 1;
        }
    }
    return 0;
}

static void file_authorized(fm_req_t *r, const fm_principal_t *p)
{
    read_state_t *s = fm_req_state(r, sizeof(read_state_t));
    if (parse_file_query(r, s) != 0)
        return;
    read_row(r, p, "file", r->params[0].base, r->params[0].len);
}

static void job_authorized(fm_req_t *r, const fm_principal_t *p)
{
    read_row(r, p, "job", r->params[0].base, r->params[0].len);
}

void handle_file_get(fm_req_t *r)
{
    fm_auth_require(r, file_authorized);
}

void handle_job_get(fm_req_t *r)
{
    fm_auth_require(r, job_authorized);
}
