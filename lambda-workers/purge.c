/*
 * purge: purge_edge jobs, and the POST /_edge/purge they make to every edge (purge.h, docs/workers.md "Edge purge").
 */
#include "purge.h"

#include <curl/curl.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"

/* What fm-edge accepts (edge/purge.c): at most 1000 strings per list, each 1..1024 bytes. */
#define PURGE_LIST_MAX 1000
#define PURGE_ITEM_MAX 1024
#define ANSWER_KEPT 160 /* bytes of an edge's error answer kept for the job's last_error */

typedef struct {
    char text[ANSWER_KEPT + 1];
    size_t len;
} answer_t;

static size_t on_answer(char *data, size_t size, size_t count, void *ud)
{
    answer_t *a = ud;
    size_t n = size * count, room = ANSWER_KEPT - a->len;
    size_t take = n < room ? n : room;
    for (size_t i = 0; i < take; ++i) /* one line in the log: control bytes become spaces */
        a->text[a->len++] = (unsigned char)data[i] < ' ' ? ' ' : data[i];
    a->text[a->len] = '\0';
    return n;
}

/* One edge: 0 on 2xx, else -1 (unavailable: see fm_edge_purge) or -2 (the request refused) with `reason`. */
static int purge_one(const char *base, size_t base_len, const char *secret, const char *body, char *reason,
                     size_t reason_size)
{
    while (base_len > 0 && base[base_len - 1] == '/')
        --base_len;
    char url[FM_CONFIG_URL_MAX + 32], secret_header[300];
    snprintf(url, sizeof(url), "%.*s/_edge/purge", (int)base_len, base);
    snprintf(secret_header, sizeof(secret_header), "X-FM-Edge-Secret: %s", secret);
    CURL *c = curl_easy_init();
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    struct curl_slist *with_secret = headers ? curl_slist_append(headers, secret_header) : NULL;
    if (c == NULL || with_secret == NULL) {
        curl_slist_free_all(headers);
        curl_easy_cleanup(c);
        snprintf(reason, reason_size, "purge of %s: out of memory", url);
        return -1;
    }
    headers = with_secret;
    answer_t answer = {.len = 0};
    char curl_error[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L); /* timeouts without SIGALRM: worker threads */
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)FM_PURGE_CONNECT_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)FM_PURGE_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_answer);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &answer);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, curl_error);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(headers);
    curl_easy_cleanup(c);
    OPENSSL_cleanse(secret_header, sizeof(secret_header));
    if (rc != CURLE_OK) {
        snprintf(reason, reason_size, "purge of %s failed: %s", url,
                 curl_error[0] ? curl_error : curl_easy_strerror(rc));
        return -1;
    }
    if (status < 200 || status > 299) {
        snprintf(reason, reason_size, "purge of %s answered HTTP %ld: %s", url, status, answer.text);
        int unavailable =
            status >= 500 || status < 400 || status == 401 || status == 403 || status == 408 || status == 429;
        return unavailable ? -1 : -2;
    }
    return 0;
}

int fm_edge_purge(const char *urls, const char *secret, const cJSON *keys, const cJSON *prefixes, char *reason,
                  size_t reason_size)
{
    cJSON *doc = cJSON_CreateObject();
    cJSON_AddItemToObject(doc, "keys", cJSON_Duplicate(keys, 1));
    cJSON_AddItemToObject(doc, "prefixes", cJSON_Duplicate(prefixes, 1));
    char *body = cJSON_PrintUnformatted(doc);
    cJSON_Delete(doc);
    if (body == NULL)
        abort();
    int purged = 0;
    size_t pos = 0, len;
    const char *base;
    while ((len = fm_config_list_next(urls, &pos, &base)) > 0) {
        int rc = purge_one(base, len, secret, body, reason, reason_size);
        if (rc != 0) {
            purged = rc;
            break;
        }
        ++purged;
    }
    free(body);
    return purged;
}

/* ---- the job ---------------------------------------------------------------------------------------------------- */

/* A copy of payload[name] with only what an edge accepts: strings of 1..1024 bytes, 1000 at most. */
static cJSON *purge_list(const cJSON *payload, const char *name, const char *job_id)
{
    cJSON *out = cJSON_CreateArray();
    const cJSON *item;
    cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(payload, name))
    {
        size_t len = cJSON_IsString(item) ? strlen(item->valuestring) : 0;
        if (len == 0 || len > PURGE_ITEM_MAX || cJSON_GetArraySize(out) == PURGE_LIST_MAX) {
            fm_warn("purge: job %s: an item of payload.%s is not a purgeable key; skipped", job_id, name);
            continue;
        }
        cJSON_AddItemToArray(out, cJSON_CreateString(item->valuestring));
    }
    return out;
}

/* Job DONE with payload.result (and payload.edges); one statement. 0, or -1 when PostgreSQL failed. */
static int finish(fm_worker_t *w, const char *job_id, const char *result, int edges)
{
    char edges_text[16];
    snprintf(edges_text, sizeof(edges_text), "%d", edges);
    const char *params[] = {job_id, result, edges_text};
    PGresult *res = fm_worker_sql(w,
                                  "UPDATE jobs SET status = 'DONE', finished_at = now(), last_error = NULL,"
                                  " payload = payload || jsonb_build_object('result', $2::text, 'edges', $3::integer)"
                                  " WHERE id = $1::uuid AND status = 'RUNNING'",
                                  3, params);
    if (res == NULL)
        return -1;
    PQclear(res);
    return 0;
}

fm_purge_rc fm_purge_job(fm_worker_t *w, const char *job_id, char *reason, size_t reason_size)
{
    reason[0] = '\0';
    const char *params[] = {job_id};
    PGresult *res = fm_worker_sql(w, "SELECT payload::text FROM jobs WHERE id = $1::uuid", 1, params);
    if (res == NULL)
        return FM_PURGE_LEFT;
    cJSON *payload = PQntuples(res) == 1 ? cJSON_Parse(PQgetvalue(res, 0, 0)) : NULL;
    PQclear(res);
    cJSON *keys = purge_list(payload, "keys", job_id), *prefixes = purge_list(payload, "prefixes", job_id);
    const cJSON *sha = cJSON_GetObjectItemCaseSensitive(payload, "sha256");
    const char *what = cJSON_IsString(sha) ? sha->valuestring : "?";
    fm_purge_rc rc;
    if (cJSON_GetArraySize(keys) + cJSON_GetArraySize(prefixes) == 0) {
        fm_warn("purge: job %s names no key or prefix; closed", job_id);
        rc = finish(w, job_id, "nothing", 0) == 0 ? FM_PURGE_NO_EDGES : FM_PURGE_LEFT;
    } else if (w->cfg->edge_purge_urls[0] == '\0') {
        fm_info("purge: job %s (blob %.64s): no edge to purge (FM_EDGE_PURGE_URLS is empty); done", job_id, what);
        rc = finish(w, job_id, "no_edges", 0) == 0 ? FM_PURGE_NO_EDGES : FM_PURGE_LEFT;
    } else {
        int edges =
            fm_edge_purge(w->cfg->edge_purge_urls, w->cfg->edge_purge_secret, keys, prefixes, reason, reason_size);
        if (edges < 0) {
            rc = edges == -2 ? FM_PURGE_FAIL : FM_PURGE_RETRY;
        } else {
            rc = finish(w, job_id, "purged", edges) == 0 ? FM_PURGE_DONE : FM_PURGE_LEFT;
            if (rc == FM_PURGE_DONE)
                fm_info("purge: job %s (blob %.64s): %d key(s), %d prefix(es) purged on %d edge(s)", job_id, what,
                        cJSON_GetArraySize(keys), cJSON_GetArraySize(prefixes), edges);
        }
    }
    cJSON_Delete(keys);
    cJSON_Delete(prefixes);
    cJSON_Delete(payload);
    return rc;
}
