/*
 * Revoked downloads (docs/downloads.md "Revocation"). A signed URL names, inside its signed query, the file it was
 * issued for (`file=`) and, when it came through a share link, the share (`share=`): many files share one blob key
 * (storage-level dedupe, copies), so revocation cannot be per key. Trashing a file or revoking a share writes
 * fm:revoked:{id} in Redis (control-plane/file_delete.c), kept as long as a signed URL can live (7 days); fm-edge
 * refuses a URL naming a revoked id, cache hits included, from the moment Redis has the mark.
 *
 * Each loop thread keeps what it read in a copy that Redis keeps true (common/rcache.h, CLIENT TRACKING), "no such
 * mark" included: a hit costs a table look-up, and a new mark drops the copy the moment Redis reports it. Without the
 * copy (FM_REDIS_CACHE_MAX_AGE_MS=0, or tracking lost) each request asks Redis. Redis unreachable: 503, never served
 * unchecked (a revoked URL must not work because a dependency is down).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edge.h"
#include "log.h"
#include "metrics.h"
#include "rcache.h"

#define RCACHE_SLOTS 4096
#define RCACHE_VALUE_MAX 64

static __thread fm_rcache_t *marks; /* NULL: FM_REDIS_CACHE_MAX_AGE_MS=0, every check goes to Redis */

int fm_edge_revoke_thread_init(fm_thread_t *thread)
{
    const fm_config_t *cfg = fm_edge.cfg;
    if (cfg->redis_cache_max_age_ms <= 0)
        return 0;
    char host[256], password[256];
    int port, db;
    if (fm_redis_url_parse(cfg->redis_url, host, sizeof(host), &port, password, sizeof(password), &db) != 0) {
        fm_error("edge revocation: cannot parse FM_REDIS_URL");
        return -1;
    }
    marks = fm_rcache_create(thread->loop, host, port, password[0] ? password : NULL, db,
                             (uint64_t)cfg->redis_timeout_ms, RCACHE_SLOTS, RCACHE_VALUE_MAX,
                             (uint64_t)cfg->redis_cache_max_age_ms);
    memset(password, 0, sizeof(password));
    if (marks == NULL) {
        fm_error("edge revocation: cannot create the tracked Redis connection");
        return -1;
    }
    fm_rcache_keep_absent(marks);
    return 0;
}

void fm_edge_revoke_thread_dispose(void)
{
    fm_rcache_destroy(marks);
    marks = NULL;
}

/* One check in flight: the ids still to look at, and where to go after. */
typedef struct {
    char keys[FM_EDGE_REVOKE_IDS_MAX][64];
    size_t count, next;
    fm_edge_revoke_cb cb;
} check_t;

static void next_id(fm_req_t *r, check_t *c);

static void on_mark(redisReply *reply, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    check_t *c = r->state_aux;
    if (reply == NULL || (reply->type != REDIS_REPLY_NIL && reply->type != REDIS_REPLY_STRING)) {
        fm_log(FM_LOG_WARN, r->request_id, "edge: GET %s failed: %s", c->keys[c->next - 1],
               reply != NULL && reply->type == REDIS_REPLY_ERROR ? reply->str : errstr ? errstr : "unexpected reply");
        c->cb(r, FM_EDGE_REVOKE_UNKNOWN);
        return;
    }
    if (reply->type == REDIS_REPLY_STRING) {
        c->cb(r, FM_EDGE_REVOKED);
        return;
    }
    next_id(r, c);
}

static void next_id(fm_req_t *r, check_t *c)
{
    while (c->next < c->count) {
        const char *key = c->keys[c->next++];
        const char *value;
        size_t len;
        if (marks != NULL && fm_rcache_get(marks, key, &value, &len)) {
            if (value != NULL) {
                c->cb(r, FM_EDGE_REVOKED);
                return;
            }
            continue; /* no mark, as Redis would answer now */
        }
        fm_req_hold(r);
        int sent;
        if (marks != NULL && fm_rcache_connected(marks)) {
            sent = fm_rcache_fetch(marks, key, on_mark, r);
        } else {
            fm_redis_t *redis = fm_edge_redis();
            const char *argv[] = {"GET", key};
            sent = redis != NULL ? fm_redis_commandargv(redis, on_mark, r, 2, argv, NULL) : -1;
        }
        if (sent != 0) {
            fm_req_resume(r);
            c->cb(r, FM_EDGE_REVOKE_UNKNOWN);
        }
        return;
    }
    c->cb(r, FM_EDGE_NOT_REVOKED);
}

void fm_edge_check_revoked(fm_req_t *r, const char *const *ids, size_t count, fm_edge_revoke_cb cb)
{
    check_t *c = fm_req_aux(r, sizeof(check_t));
    c->cb = cb;
    for (size_t i = 0; i < count && c->count < FM_EDGE_REVOKE_IDS_MAX; ++i)
        if (ids[i] != NULL && ids[i][0] != '\0')
            snprintf(c->keys[c->count++], sizeof(c->keys[0]), "fm:revoked:{%.36s}", ids[i]);
    next_id(r, c);
}
