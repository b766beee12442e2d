/*
 * Stock Uppy (@uppy/aws-s3 with `endpoint` pointing here) speaks Companion's S3 routes; this file maps them onto the
 * same upload logic as /v1/uploads (uploads.c, uploads_complete.c). Uppy option `endpoint` = `<control>/v1/uppy`,
 * `headers` = {authorization: "Bearer …"}; the app puts the file's `size` and `sha256` into its meta and lists
 * them in `allowedMetaFields` (we record both before any byte moves, as for our own API).
 *
 *   GET    /v1/uppy/s3/params?filename=&type=&metadata[size]=&metadata[sha256]=  getUploadParameters (one PUT)
 *   POST   /v1/uppy/s3/multipart {filename, type, metadata}                       createMultipartUpload
 *   GET    /v1/uppy/s3/multipart/{uploadId}/{partNumber}?key=                     signPart
 *   GET    /v1/uppy/s3/multipart/{uploadId}?key=                                  listParts
 *   POST   /v1/uppy/s3/multipart/{uploadId}/complete?key= {parts:[{PartNumber, ETag}]}
 *   DELETE /v1/uppy/s3/multipart/{uploadId}?key=                                  abortMultipartUpload
 *
 * `key` is our object key (`incoming/{upload_id}`), which names the upload; `uploadId` is S3's and must match it.
 * A single PUT through Uppy has no `complete` call: the S3 event (or the reconciler) finishes it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"
#include "log.h"
#include "qs.h"
#include "uploads.h"
#include "uuid.h"

/* The query parameter `name` (compared after decoding), form-decoded ('+' is a space) into out; 0 found (empty
 * included), -1 absent or bad (a bad escape, a NUL, too long). */
static int query_param(fm_req_t *r, const char *name, char *out, size_t size)
{
    int rc = fm_qs_get(fm_req_query(r), name, FM_PCT_FORM, out, size, NULL);
    return rc == FM_PCT_OK || rc == FM_QS_EMPTY ? 0 : -1;
}

/* ---- GET /v1/uppy/s3/params and POST /v1/uppy/s3/multipart: a new upload --------------------------------------- */

static void start_from_fields(fm_req_t *r, fm_upload_state_t *s, const char *filename, const char *type,
                              const char *size_text, const char *sha256)
{
    char *end = NULL;
    double size = size_text != NULL ? strtod(size_text, &end) : -1;
    if (size_text == NULL || end == size_text || *end != '\0') {
        fm_reply_error(r, 422, "invalid_size",
                       "put the file's size (and sha256) into its Uppy meta and allowedMetaFields");
        return;
    }
    if (sha256 == NULL) {
        fm_reply_error(r, 422, "invalid_sha256", "put the file's sha256 into its Uppy meta and allowedMetaFields");
        return;
    }
    if (fm_upload_validate(r, s, filename, size, type, sha256, NULL) != 0)
        return;
    if (s->mode == FM_UPLOAD_MODE_SINGLE && s->size > 5368709120LL) {
        fm_reply_error(r, 413, "too_large", "a single PUT holds at most 5 GiB: use multipart");
        return;
    }
    fm_upload_start(r, s);
}

static void params_authorized(fm_req_t *r, const fm_principal_t *p)
{
    fm_upload_state_t *s = fm_upload_state(r);
    s->principal = p;
    s->uppy = 1;
    s->mode = FM_UPLOAD_MODE_SINGLE;
    if (p->role == FM_JWT_ROLE_VIEWER) {
        fm_reply_error(r, 403, "forbidden", "viewers cannot upload");
        return;
    }
    char filename[1024], type[128], size[32], sha256[80];
    if (query_param(r, "filename", filename, sizeof(filename)) != 0 || query_param(r, "type", type, sizeof(type)) != 0) {
        fm_reply_error(r, 422, "invalid_field", "filename and type are required");
        return;
    }
    int have_size = query_param(r, "metadata[size]", size, sizeof(size)) == 0;
    int have_sha = query_param(r, "metadata[sha256]", sha256, sizeof(sha256)) == 0;
    char on_conflict[16]; /* docs/uploads.md: Uppy's meta may carry it (allowedMetaFields), as size and sha256 */
    int have_on_conflict = query_param(r, "metadata[on_conflict]", on_conflict, sizeof(on_conflict)) == 0;
    if (fm_upload_on_conflict(r, s, have_on_conflict ? on_conflict : NULL) != 0)
        return;
    start_from_fields(r, s, filename, type, have_size ? size : NULL, have_sha ? sha256 : NULL);
}

void handle_uppy_params(fm_req_t *r)
{
    fm_auth_require(r, params_authorized);
}

static void multipart_create_authorized(fm_req_t *r, const fm_principal_t *p)
{
    fm_upload_state_t *s = fm_upload_state(r);
    s->principal = p;
    s->uppy = 1;
    s->mode = FM_UPLOAD_MODE_CLIENT_PARTS;
    if (p->role == FM_JWT_ROLE_VIEWER) {
        fm_reply_error(r, 403, "forbidden", "viewers cannot upload");
        return;
    }
    cJSON *body = fm_req_json_body(r, 16384);
    if (body == NULL)
        return;
    const char *filename = fm_json_require_string(r, body, "filename", 1, 1024);
    const char *type = filename ? fm_json_require_string(r, body, "type", 1, 127) : NULL;
    if (type == NULL) {
        cJSON_Delete(body);
        return;
    }
    cJSON *meta = cJSON_GetObjectItemCaseSensitive(body, "metadata");
    cJSON *size = cJSON_GetObjectItemCaseSensitive(meta, "size"), *sha = cJSON_GetObjectItemCaseSensitive(meta, "sha256");
    cJSON *on_conflict = cJSON_GetObjectItemCaseSensitive(meta, "on_conflict");
    if (fm_upload_on_conflict(r, s, cJSON_IsString(on_conflict) ? on_conflict->valuestring : NULL) != 0) {
        cJSON_Delete(body);
        return;
    }
    char size_text[32];
    if (cJSON_IsNumber(size))
        snprintf(size_text, sizeof(size_text), "%.0f", size->valuedouble);
    else
        snprintf(size_text, sizeof(size_text), "%s", cJSON_IsString(size) ? size->valuestring : "");
    start_from_fields(r, s, filename, type, size_text[0] ? size_text : NULL,
                      cJSON_IsString(sha) ? sha->valuestring : NULL);
    cJSON_Delete(body);
}

void handle_uppy_multipart_create(fm_req_t *r)
{
    fm_auth_require(r, multipart_create_authorized);
}

/* ---- the routes on an existing multipart upload ---------------------------------------------------------------- */

/* Finds our upload from ?key=incoming/{id}, then the loaded upload must carry S3's uploadId of the path. */
static void load_by_key(fm_req_t *r, const fm_principal_t *p, fm_upload_loaded_fn next)
{
    fm_upload_state_t *s = fm_upload_state(r);
    s->uppy = 1;
    const char *id = NULL;
    if (query_param(r, "key", s->uppy_key, sizeof(s->uppy_key)) != 0 ||
        (id = fm_incoming_key_id(s->uppy_key, strlen(s->uppy_key))) == NULL) {
        fm_reply_error(r, 404, "upload_not_found", "no such upload");
        return;
    }
    /* fm_upload_load() reads the upload id from params[0]; S3's uploadId stays in params[1] (see routes). */
    r->params[1] = r->params[0];
    r->params[0] = h2o_iovec_init(id, 36);
    fm_upload_load(r, p, next);
}

static int s3_upload_id_matches(fm_req_t *r, fm_upload_state_t *s)
{
    char given[FM_S3_UPLOAD_ID_MAX];
    if (strcmp(s->method, "MULTIPART") != 0 ||
        fm_pct_decode(r->params[1].base, r->params[1].len, given, sizeof(given), NULL, FM_PCT_FORM) != FM_PCT_OK ||
        strcmp(given, s->s3_upload_id) != 0) {
        fm_reply_error(r, 404, "upload_not_found", "no such multipart upload for this key");
        return 0;
    }
    return 1;
}

static void sign_part_loaded(fm_req_t *r, fm_upload_state_t *s)
{
    if (!s3_upload_id_matches(r, s))
        return;
    if (strcmp(s->status, "PENDING") != 0) {
        fm_reply_error(r, 409, "not_pending", "this upload is %s", s->status);
        return;
    }
    /* params[2] holds the part number (captured after the uploadId). */
    char number[8];
    h2o_iovec_t text = r->params[2];
    int part = 0;
    if (text.len == 0 || text.len >= sizeof(number)) {
        part = -1;
    } else {
        memcpy(number, text.base, text.len);
        number[text.len] = '\0';
        char *end;
        long v = strtol(number, &end, 10);
        part = *end == '\0' && v >= 1 && v <= FM_UPLOAD_MAX_PARTS ? (int)v : -1;
    }
    if (part < 1) {
        fm_reply_error(r, 422, "invalid_parts", "part numbers go from 1 to %d", FM_UPLOAD_MAX_PARTS);
        return;
    }
    long long ttl = fm_control->config.upload_url_ttl_s;
    char *url = fm_upload_presign(r, s->key, NULL, -1, part, s->s3_upload_id, ttl); /* Uppy sizes its own parts */
    if (url == NULL) {
        fm_reply_error(r, 500, "internal_error", "could not sign the part URL");
        return;
    }
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "url", url);
    cJSON_AddStringToObject(body, "method", "PUT");
    cJSON_AddNumberToObject(body, "expires", (double)ttl);
    free(url);
    fm_reply_json(r, 200, body);
}

static void sign_part_authorized(fm_req_t *r, const fm_principal_t *p)
{
    /* As POST /v1/uploads/{id}/parts: a part URL is an upload right, which viewers do not have. */
    if (p->role == FM_JWT_ROLE_VIEWER) {
        fm_reply_error(r, 403, "forbidden", "viewers cannot upload");
        return;
    }
    /* The route captured {uploadId} and {partNumber}; keep the part number where load_by_key leaves it alone. */
    r->params[2] = r->params[1];
    load_by_key(r, p, sign_part_loaded);
}

void handle_uppy_sign_part(fm_req_t *r)
{
    fm_auth_require(r, sign_part_authorized);
}

static void list_loaded(fm_req_t *r, fm_upload_state_t *s)
{
    if (s3_upload_id_matches(r, s))
        fm_upload_list_parts_loaded(r, s);
}

static void list_authorized(fm_req_t *r, const fm_principal_t *p)
{
    load_by_key(r, p, list_loaded);
}

void handle_uppy_list_parts(fm_req_t *r)
{
    fm_auth_require(r, list_authorized);
}

static void complete_loaded(fm_req_t *r, fm_upload_state_t *s)
{
    if (s3_upload_id_matches(r, s))
        fm_upload_complete_loaded(r, s);
}

static void complete_authorized(fm_req_t *r, const fm_principal_t *p)
{
    load_by_key(r, p, complete_loaded);
}

void handle_uppy_complete(fm_req_t *r)
{
    fm_auth_require(r, complete_authorized);
}

static void abort_loaded(fm_req_t *r, fm_upload_state_t *s)
{
    if (s3_upload_id_matches(r, s))
        fm_upload_abort_loaded(r, s);
}

static void abort_authorized(fm_req_t *r, const fm_principal_t *p)
{
    load_by_key(r, p, abort_loaded);
}

void handle_uppy_abort(fm_req_t *r)
{
    fm_auth_require(r, abort_authorized);
}
