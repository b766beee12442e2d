/*
 * GET/HEAD /p/{key}?file={id}&{query}: the unsigned download of a public file's object (docs/downloads.md "fm-edge",
 * "Public files"). The control plane (control-plane/file_update.c, file_delete.c) keeps the Redis set fm:public of
 * "{file_id}/{key}" members: for each live, READY, public file, its blob's storage_key and variant keys. A member
 * names the file, not only the key: many files share one blob, and making one of them private (or trashing it) must
 * stop its URLs without touching the others'.
 *
 * parse (serve.c's, as for /f/: path checks, variant parameters, the `file` id, required here) → authorize
 * (SISMEMBER fm:public {file}/{key} on the thread's Redis connection, on the loop; Redis down → 503; not a member →
 * 404 not_public before the cache or the origin is touched) → act and answer (serve.c's, with a short public
 * Cache-Control and revalidation). The set is asked on every request, hits included, so making a file private takes
 * effect at once, whatever the edge has cached.
 */
#include <string.h>

#include "edge.h"
#include "log.h"
#include "metrics.h"

#define PUBLIC_SET "fm:public"

static void on_membership(redisReply *reply, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    const fm_edge_target_t *t = r->state;
    if (reply == NULL || reply->type != REDIS_REPLY_INTEGER) {
        fm_log(FM_LOG_WARN, r->request_id, "edge: SISMEMBER %s failed: %s", PUBLIC_SET,
               reply != NULL && reply->type == REDIS_REPLY_ERROR ? reply->str
               : errstr                                          ? errstr
                                                                 : "unexpected reply");
        fm_reply_unavailable(r, "the public-file index");
        return;
    }
    if (reply->integer != 1) {
        fm_metrics_counter_add("fm_edge_refused_total", NULL, 1);
        fm_reply_error(r, 404, "not_public", "no public file has this object");
        return;
    }
    fm_edge_serve_target(r, t);
}

void fm_edge_handle_public(fm_req_t *r)
{
    fm_edge_target_t *t = fm_req_state(r, sizeof(fm_edge_target_t));
    if (fm_edge_parse_target(r, t) != 0)
        return;
    if (t->file_id[0] == '\0') {
        fm_metrics_counter_add("fm_edge_refused_total", NULL, 1);
        fm_reply_error(r, 404, "not_public", "a public URL names its file (file=)");
        return;
    }
    char *member = h2o_mem_alloc_pool(&r->req->pool, 36 + 1 + t->key_len + 1);
    memcpy(member, t->file_id, 36);
    member[36] = '/';
    memcpy(member + 37, t->key, t->key_len + 1);
    fm_redis_t *redis = fm_edge_redis();
    const char *argv[] = {"SISMEMBER", PUBLIC_SET, member};
    const size_t argvlen[] = {9, strlen(PUBLIC_SET), 37 + t->key_len};
    fm_req_hold(r);
    if (redis == NULL || fm_redis_commandargv(redis, on_membership, r, 3, argv, argvlen) != 0) {
        fm_req_resume(r);
        fm_reply_unavailable(r, "the public-file index");
    }
}
