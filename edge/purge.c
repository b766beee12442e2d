/*
 * POST /_edge/purge {"keys":[…],"prefixes":[…]} with X-FM-Edge-Secret: removes cached objects by exact key (with
 * the on-the-fly variants rendered from it) and by key prefix (a blob's variants live under "variants/{sha256}/"), and
 * marks fills in flight for them so their result is served to those already waiting but not kept. fm-worker calls
 * it (lambda-workers/purge.c, FM_EDGE_PURGE_URLS) after DELETE /v1/files/{id} trashed the last live file of a blob,
 * and again when the blob's objects are deleted (docs/downloads.md "Delete, restore, retention").
 */
#include <openssl/crypto.h>
#include <string.h>

#include "edge.h"
#include "log.h"
#include "metrics.h"

#define PURGE_MAX_ITEMS 1000

static int secret_ok(fm_req_t *r)
{
    const char *secret = fm_edge.cfg->edge_purge_secret;
    h2o_iovec_t sent = fm_req_header(r, "x-fm-edge-secret");
    size_t len = strlen(secret);
    /* Constant time over the secret's length; an unset secret disables purge. */
    return len > 0 && sent.base != NULL && sent.len == len && CRYPTO_memcmp(sent.base, secret, len) == 0;
}

/* Checks that `name` is an array of 1..1024-byte strings (absent = empty); answers 422 and returns -1 if not. */
static int check_list(fm_req_t *r, cJSON *body, const char *name, size_t *count)
{
    cJSON *list = cJSON_GetObjectItemCaseSensitive(body, name);
    *count = 0;
    if (list == NULL)
        return 0;
    if (!cJSON_IsArray(list) || cJSON_GetArraySize(list) > PURGE_MAX_ITEMS) {
        fm_reply_error(r, 422, "invalid_field", "%s must be an array of at most %d strings", name, PURGE_MAX_ITEMS);
        return -1;
    }
    cJSON *item;
    cJSON_ArrayForEach(item, list)
    {
        if (!cJSON_IsString(item) || strlen(item->valuestring) == 0 || strlen(item->valuestring) > FM_EDGE_KEY_MAX) {
            fm_reply_error(r, 422, "invalid_field", "%s must hold 1..%d-byte strings", name, FM_EDGE_KEY_MAX);
            return -1;
        }
        ++*count;
    }
    return 0;
}

void fm_edge_handle_purge(fm_req_t *r)
{
    if (!secret_ok(r)) {
        fm_reply_error(r, 401, "unauthorized", "a valid X-FM-Edge-Secret is required");
        return;
    }
    cJSON *body = fm_req_json_body(r, 65536);
    if (body == NULL)
        return;
    size_t key_count, prefix_count;
    if (check_list(r, body, "keys", &key_count) != 0 || check_list(r, body, "prefixes", &prefix_count) != 0) {
        cJSON_Delete(body);
        return;
    }
    if (key_count + prefix_count == 0) {
        cJSON_Delete(body);
        fm_reply_error(r, 422, "missing_field", "keys or prefixes is required");
        return;
    }
    size_t purged = 0;
    cJSON *item;
    cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(body, "keys"))
    {
        size_t len = strlen(item->valuestring);
        fm_edge_origin_purge(item->valuestring, len, 0);
        purged += fm_edge_cache_purge_key(item->valuestring, len);
    }
    cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(body, "prefixes"))
    {
        size_t len = strlen(item->valuestring);
        fm_edge_origin_purge(item->valuestring, len, 1);
        purged += fm_edge_cache_purge_prefix(item->valuestring, len);
    }
    cJSON_Delete(body);
    fm_metrics_counter_add("fm_edge_purged_total", NULL, (double)purged);
    fm_info("edge purge: %zu keys, %zu prefixes, %zu objects removed", key_count, prefix_count, purged);
    cJSON *answer = cJSON_CreateObject();
    cJSON_AddNumberToObject(answer, "purged", (double)purged);
    fm_reply_json(r, 200, answer);
}
