/*
 * GET /v1/files/{id}/download[?variant=thumb|preview&format=webp|jpeg][&disposition=attachment][&redirect=1]:
 * a CloudFront-signed fm-edge URL for a READY file or one of its image variants, or the unsigned /p/ URL of a public
 * file (docs/downloads.md "Download URLs").
 *
 * parse (the query) → authorize (bearer token, then the cached file row of files.c: owner only for now) → act (the
 * resource URL, signed with the first FM_CF_KEYS key pair) → answer ({url, expires_at}, or 302 with redirect=1).
 * CPU only: no S3 call, and no PostgreSQL call when the row is cached in Redis.
 *
 * RSA-2048 signing costs ~0.3 ms of CPU, more than the rest of the request, so each thread keeps the URLs it signed
 * (direct-mapped, by resource and expiry). Expiries are rounded down to a tenth of the TTL, so repeated downloads
 * of one file within that window are one signature; the rounding only ever shortens a URL's life.
 */
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cfsign.h"
#include "control.h"
#include "hash.h"
#include "log.h"
#include "qs.h"
#include "uploads.h"

#define SIGNED_CACHE_SLOTS 1024
/* Longest file name put into a URL, in bytes: what fm-edge accepts for Content-Disposition. */
#define DOWNLOAD_NAME_MAX 255

typedef struct {
    const char *variant; /* NULL: the file itself; else "thumb" | "preview" */
    const char *format;  /* with a variant: "webp" | "jpeg" */
    int attachment;      /* Content-Disposition: attachment instead of inline */
    int redirect;        /* answer 302 with Location */
} download_query_t;

typedef struct {
    long long expires;
    char *resource, *url;
} signed_slot_t;

/* One thread's signed URLs. Created on the thread's first download, freed by fm_download_free. */
typedef struct signed_cache {
    struct signed_cache *next;
    signed_slot_t slots[SIGNED_CACHE_SLOTS];
} signed_cache_t;

/* Set once by fm_download_init before the threads start; read-only afterwards. */
static fm_cf_keys_t *signing_keys; /* NULL: downloads disabled (FM_CF_KEYS empty) */
static char signing_key_id[FM_CF_KEY_ID_MAX + 1];
static char public_base[256]; /* FM_EDGE_PUBLIC_BASE without a trailing '/' */

static _Thread_local signed_cache_t *thread_cache;
static signed_cache_t *all_caches;
static pthread_mutex_t all_caches_lock = PTHREAD_MUTEX_INITIALIZER;

/* ---- keys ---- */

int fm_download_init(const fm_config_t *cfg)
{
    size_t base_len = strlen(cfg->edge_public_base);
    while (base_len > 0 && cfg->edge_public_base[base_len - 1] == '/')
        --base_len;
    snprintf(public_base, sizeof(public_base), "%.*s", (int)base_len, cfg->edge_public_base);
    if (cfg->cf_keys[0] == '\0') {
        fm_warn("FM_CF_KEYS is empty: GET /v1/files/{id}/download answers 503 downloads_disabled");
        return 0;
    }
    if ((signing_keys = fm_cf_keys_new()) == NULL)
        return -1;
    int bad = fm_cf_keys_load(signing_keys, "FM_CF_KEYS", "Key-Pair-Id=private.pem", cfg->cf_keys, signing_key_id) != 0;
    /* The first key signs: make sure it can (a public PEM only verifies) before serving. */
    char *probe = NULL, err[256] = "";
    fm_cf_sign_req_t req = {.url = "http://fm.invalid/f/probe", .date_less_than = FM_CF_EPOCH_MAX};
    if (!bad && fm_cf_sign_url(signing_keys, signing_key_id, &req, &probe, err, sizeof(err)) != 0) {
        fm_error("config: FM_CF_KEYS: the first key pair %s cannot sign: %s", signing_key_id, err);
        bad = 1;
    }
    free(probe);
    if (bad) {
        fm_cf_keys_free(signing_keys);
        signing_keys = NULL;
        return -1;
    }
    fm_info("downloads: %zu key pair(s), signing with %s, edge %s", fm_cf_keys_count(signing_keys), signing_key_id,
            public_base);
    return 0;
}

void fm_download_free(void)
{
    pthread_mutex_lock(&all_caches_lock);
    for (signed_cache_t *c = all_caches, *next; c != NULL; c = next) {
        next = c->next;
        for (size_t i = 0; i < SIGNED_CACHE_SLOTS; ++i) {
            free(c->slots[i].resource);
            free(c->slots[i].url);
        }
        free(c);
    }
    all_caches = NULL;
    pthread_mutex_unlock(&all_caches_lock);
    fm_cf_keys_free(signing_keys);
    signing_keys = NULL;
}

/* ---- signing ---- */

/* The canned-policy URL of `resource` until `expires`; borrowed from this thread's cache until its next call.
 * NULL (logged) when signing fails. */
static const char *sign_cached(fm_req_t *r, const char *resource, long long expires)
{
    if (thread_cache == NULL) {
        if ((thread_cache = calloc(1, sizeof(*thread_cache))) == NULL)
            h2o_fatal("out of memory");
        pthread_mutex_lock(&all_caches_lock);
        thread_cache->next = all_caches;
        all_caches = thread_cache;
        pthread_mutex_unlock(&all_caches_lock);
    }
    uint64_t hash = fm_fnv1a(resource, strlen(resource), (uint64_t)expires);
    signed_slot_t *slot = &thread_cache->slots[hash % SIGNED_CACHE_SLOTS];
    if (slot->url != NULL && slot->expires == expires && strcmp(slot->resource, resource) == 0)
        return slot->url;
    char *url = NULL, err[256];
    fm_cf_sign_req_t req = {.url = resource, .date_less_than = expires};
    if (fm_cf_sign_url(signing_keys, signing_key_id, &req, &url, err, sizeof(err)) != 0) {
        fm_log(FM_LOG_ERROR, r->request_id, "download: cannot sign %s: %s", resource, err);
        return NULL;
    }
    char *copy = strdup(resource);
    if (copy == NULL)
        h2o_fatal("out of memory");
    free(slot->resource);
    free(slot->url);
    *slot = (signed_slot_t){.expires = expires, .resource = copy, .url = url};
    return url;
}

/* ---- parse ---- */

/* One of `choices` (NULL-terminated) equal to the len bytes at v, or NULL. */
static const char *choose(const char *v, size_t len, const char *const *choices)
{
    for (; *choices; ++choices)
        if (strlen(*choices) == len && memcmp(*choices, v, len) == 0)
            return *choices;
    return NULL;
}

/* Fills q from the query string; answers 422 and returns -1 on a value we do not know. Other parameters are
 * ignored, as everywhere in the API. */
static int parse_query(fm_req_t *r, download_query_t *q)
{
    static const char *const variants[] = {"thumb", "preview", NULL}, *const formats[] = {"webp", "jpeg", NULL};
    static const char *const dispositions[] = {"inline", "attachment", NULL};
    static const char *const flags[] = {"0", "1", "false", "true", NULL};
    *q = (download_query_t){0};
    /* Every item in turn, a repeat overriding (names compared raw; a bare name is an empty value). */
    h2o_iovec_t rest = fm_req_query(r), name, value;
    while (fm_qs_next(&rest, &name, &value)) {
        const char *p = name.base, *v = value.base != NULL ? value.base : "";
        size_t name_len = name.len, len = value.len;
        if (name_len == 7 && memcmp(p, "variant", 7) == 0) {
            if ((q->variant = choose(v, len, variants)) == NULL) {
                fm_reply_error(r, 422, "invalid_variant", "variant must be thumb or preview");
                return -1;
            }
        } else if (name_len == 6 && memcmp(p, "format", 6) == 0) {
            if ((q->format = choose(v, len, formats)) == NULL) {
                fm_reply_error(r, 422, "invalid_format", "format must be webp or jpeg");
                return -1;
            }
        } else if (name_len == 11 && memcmp(p, "disposition", 11) == 0) {
            const char *d = choose(v, len, dispositions);
            if (d == NULL) {
                fm_reply_error(r, 422, "invalid_disposition", "disposition must be inline or attachment");
                return -1;
            }
            q->attachment = d == dispositions[1];
        } else if (name_len == 8 && memcmp(p, "redirect", 8) == 0) {
            const char *f = choose(v, len, flags);
            if (f == NULL) {
                fm_reply_error(r, 422, "invalid_redirect", "redirect must be 0 or 1");
                return -1;
            }
            q->redirect = f == flags[1] || f == flags[3];
        }
    }
    if (q->format != NULL && q->variant == NULL) {
        fm_reply_error(r, 422, "invalid_format", "format applies to a variant: add variant=thumb or variant=preview");
        return -1;
    }
    if (q->variant != NULL && q->format == NULL)
        q->format = "webp";
    return 0;
}

/* ---- act and answer ---- */

/* The download's file name: the file's own, or for a variant "{stem}-{variant}.{jpg|webp}"; at most
 * DOWNLOAD_NAME_MAX bytes (fm-edge refuses longer names; PostgreSQL counts a name's 255 in characters), shortened
 * at a UTF-8 character boundary before the extension. */
static void download_name(const char *name, const char *variant, const char *format, char *out, size_t size)
{
    char ext[32] = "";
    const char *dot = strrchr(name, '.');
    int has_ext = dot != NULL && dot != name && strlen(dot) < sizeof(ext); /* a long one is part of the stem */
    size_t stem_len = has_ext ? (size_t)(dot - name) : strlen(name);
    if (variant != NULL)
        snprintf(ext, sizeof(ext), "-%s.%s", variant, strcmp(format, "jpeg") == 0 ? "jpg" : "webp");
    else if (has_ext)
        snprintf(ext, sizeof(ext), "%s", dot);
    size_t limit = DOWNLOAD_NAME_MAX - strlen(ext);
    if (stem_len > limit) {
        stem_len = limit;
        while (stem_len > 0 && ((unsigned char)name[stem_len] & 0xc0) == 0x80)
            --stem_len; /* do not cut a character in two */
    }
    snprintf(out, size, "%.*s%s", (int)stem_len, name, ext);
}

int fm_download_enabled(void)
{
    return signing_keys != NULL;
}

long long fm_download_url_min_life_s(void)
{
    long long ttl = fm_control->config.download_url_ttl_s, step = ttl / 10 > 0 ? ttl / 10 : 1;
    return ttl - step;
}

const char *fm_download_url(fm_req_t *r, const fm_download_target_t *t, long long *expires_out)
{
    /* The resource: {FM_EDGE_PUBLIC_BASE}/f/{key}?file={id}&name=…&disposition=…, every parameter inside the
     * signature: the key is the blob's (blobs/{sha256}, shared by every file with these bytes, so it tells nothing of
     * who else holds them), and the file id is what fm-edge checks against revocations (a trashed file's URLs stop
     * at once, whoever else shares the blob). Never a wildcard policy: one URL, one object. A public file's is
     * {FM_EDGE_PUBLIC_BASE}/p/{key}?file={id}&… unsigned (fm-edge serves it while "{id}/{key}" is in fm:public, which
     * file_update.c and file_delete.c keep). */
    char filename[320];
    download_name(t->name, t->variant, t->format, filename, sizeof(filename));
    size_t cap = strlen(public_base) + 3 * strlen(t->key) + 3 * strlen(filename) + 64 + 42;
    char *resource = h2o_mem_alloc_pool(&r->req->pool, cap), *p = resource;
    p += sprintf(p, "%s/%s/", public_base, t->is_public ? "p" : "f");
    p = fm_pct_encode(p, t->key, strlen(t->key), FM_PCT_KEEP_SLASH);
    p += sprintf(p, "?file=%s&name=", t->file_id);
    p = fm_pct_encode(p, filename, strlen(filename), 0);
    sprintf(p, "&disposition=%s", t->attachment ? "attachment" : "inline");
    if (expires_out != NULL)
        *expires_out = 0;
    if (t->is_public)
        return resource;
    if (signing_keys == NULL)
        return NULL;
    long long now = (long long)time(NULL), ttl = fm_control->config.download_url_ttl_s;
    long long step = ttl / 10 > 0 ? ttl / 10 : 1, expires = (now + ttl) / step * step;
    const char *signed_url = sign_cached(r, resource, expires);
    if (signed_url == NULL)
        return NULL;
    size_t len = strlen(signed_url);
    char *url = h2o_mem_alloc_pool(&r->req->pool, len + 1); /* the thread's cache slot may be reused at once */
    memcpy(url, signed_url, len + 1);
    if (expires_out != NULL)
        *expires_out = expires;
    return url;
}

/* The status check of DESIGN.md §4 "Download": only READY files leave. Answers and returns -1 otherwise. */
static int require_ready(fm_req_t *r, const char *status)
{
    if (strcmp(status, "READY") == 0)
        return 0;
    if (strcmp(status, "QUARANTINED") == 0)
        fm_reply_error(r, 403, "quarantined", "the file is quarantined");
    else if (strcmp(status, "FAILED") == 0)
        fm_reply_error(r, 409, "failed", "the file could not be processed");
    else
        fm_reply_error(r, 409, "not_ready", "the file is not ready yet (%s)", status);
    return -1;
}

static void on_file_row(fm_req_t *r, const cJSON *row, void *arg)
{
    const download_query_t *q = arg;
    const cJSON *status = cJSON_GetObjectItemCaseSensitive(row, "status");
    if (require_ready(r, cJSON_IsString(status) ? status->valuestring : "unknown") != 0)
        return;
    const cJSON *key = cJSON_GetObjectItemCaseSensitive(row, "storage_key");
    if (q->variant != NULL) {
        const cJSON *variants = cJSON_GetObjectItemCaseSensitive(row, "variants");
        const cJSON *by_format = cJSON_GetObjectItemCaseSensitive(variants, q->variant);
        key = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(by_format, q->format), "key");
        if (!cJSON_IsString(key)) {
            fm_reply_error(r, 404, "no_such_variant", "the file has no %s variant in %s", q->variant, q->format);
            return;
        }
    }
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(row, "name");
    const cJSON *visibility = cJSON_GetObjectItemCaseSensitive(row, "visibility");
    const cJSON *file_id = cJSON_GetObjectItemCaseSensitive(row, "id");
    if (!cJSON_IsString(key) || key->valuestring[0] == '\0' || strlen(key->valuestring) > 1024 ||
        !cJSON_IsString(name) || !cJSON_IsString(file_id) || !fm_uuid_lower_valid(file_id->valuestring, 36)) {
        fm_reply_error(r, 500, "internal_error", "the file's stored object is unknown");
        return;
    }

    int is_public = cJSON_IsString(visibility) && strcmp(visibility->valuestring, "public") == 0;
    fm_download_target_t target = {.file_id = file_id->valuestring, .key = key->valuestring,
                                   .name = name->valuestring, .variant = q->variant, .format = q->format,
                                   .attachment = q->attachment, .is_public = is_public};
    long long expires = 0;
    const char *url = fm_download_url(r, &target, &expires);
    if (url == NULL) {
        fm_reply_error(r, 500, "internal_error", "the download URL could not be signed");
        return;
    }
    char expires_at[32] = "";
    if (!is_public)
        fm_iso8601(expires, expires_at);

    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "url", url);
    if (is_public) /* an unsigned URL does not expire: it works while the file stays public */
        cJSON_AddNullToObject(body, "expires_at");
    else
        cJSON_AddStringToObject(body, "expires_at", expires_at);
    fm_req_add_header(r, "cache-control", "private, no-store"); /* the URL is a bearer credential */
    if (q->redirect)
        fm_req_add_header(r, "location", url);
    fm_reply_json(r, q->redirect ? 302 : 200, body);
}

static void download_authorized(fm_req_t *r, const fm_principal_t *p)
{
    download_query_t q;
    if (parse_query(r, &q) != 0)
        return;
    if (signing_keys == NULL) {
        fm_reply_error(r, 503, "downloads_disabled", "downloads are not configured (FM_CF_KEYS)");
        return;
    }
    download_query_t *arg = h2o_mem_alloc_pool(&r->req->pool, sizeof(*arg)); /* lives as long as the request */
    *arg = q;
    fm_file_row(r, p, r->params[0].base, r->params[0].len, on_file_row, arg);
}

void handle_file_download(fm_req_t *r)
{
    fm_auth_require(r, download_authorized);
}
