/*
 * A fill's blocking work, on an offload thread (edge/origin.c starts it and tells its waiters): the origin GET of
 * an object into a temp file in the cache folder, announced to the streaming waiters as soon as the origin's headers
 * are known and reported as it is written, then published into the cache; or a variant rendered from its cached
 * original. Lifetimes and locking: the comment at the top of origin.c; this file touches the shared fields of a fill
 * only through origin_internal.h's fm_edge_fill_* calls.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "origin_internal.h"

#define PROGRESS_STEP (256 * 1024) /* a fill wakes its parked streams every this many bytes (and at the end) */

typedef struct {
    fill_t *fill;
    int fd, read_fd; /* read_fd: handed to the streams with the headers (-1: no streaming) */
    time_t stored_at;
    int streamed; /* the headers were announced: streams may have started */
    uint64_t written, reported;
    long long size; /* Content-Length, -1 unknown */
    int failed;
    int abandoned; /* stopped: nobody waits and it is far from done */
    int too_large; /* stopped at the headers: larger than the cache keeps */
    fm_edge_meta_t head;
} sink_t;

static int write_to_file(void *ud, const void *data, size_t len)
{
    sink_t *sink = ud;
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(sink->fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            sink->failed = errno ? errno : EIO;
            return 1;
        }
        p += n;
        len -= (size_t)n;
        sink->written += (uint64_t)n;
    }
    if (fm_edge_fill_should_stop(sink->fill, sink->written, sink->size)) {
        sink->abandoned = 1;
        return 1;
    }
    /* at the first bytes (first-byte latency), then every PROGRESS_STEP (not to flood the loops) */
    if (sink->reported == 0 || sink->written - sink->reported >= PROGRESS_STEP) {
        sink->reported = sink->written;
        fm_edge_fill_report_progress(sink->fill, sink->written);
    }
    return 0;
}

/* The GET's answer is the object's (2xx): announced to the streams when its size is known (a Content-Length). */
static int on_origin_headers(void *ud, const fm_s3_result_t *head)
{
    sink_t *sink = ud;
    sink->size = head->content_length;
    fm_edge_meta_t meta = {.size = (uint64_t)head->content_length, .stored_at = sink->stored_at};
    snprintf(meta.key, sizeof(meta.key), "%s", sink->fill->key);
    snprintf(meta.etag, sizeof(meta.etag), "%s", head->etag);
    snprintf(meta.content_type, sizeof(meta.content_type), "%s", head->content_type);
    if (head->content_length >= 0 && (uint64_t)head->content_length > fm_edge_cache_object_max()) {
        sink->too_large = 1; /* not one byte more: every waiter is passed through (deliver) */
        sink->head = meta;
        return 1;
    }
    if (sink->read_fd == -1 || head->content_length < 0)
        return 0; /* no streaming: the waiters get the published file */
    fm_edge_fill_announce_headers(sink->fill, &meta, sink->read_fd);
    sink->read_fd = -1; /* the fill's now */
    sink->streamed = 1;
    return 0;
}

/* The origin GET into a temp file, published into the cache; streamed to the waiters that can take it as it comes.
 * Returns whether the bytes streamed are the whole object announced. */
int fm_edge_fill_fetch(fill_t *fill, const char *tmp_path, fm_edge_fill_result_t *result)
{
    char err[256] = "";
    fm_s3_t *s3 = fm_edge_thread_s3(err, sizeof(err));
    sink_t sink = {.fill = fill, .fd = -1, .read_fd = -1, .size = -1};
    if (s3 == NULL) {
        fm_error("edge: S3 client: %s", err);
        result->status = 503, result->code = "origin_unavailable";
        return 0;
    }
    if ((sink.fd = open(tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) == -1) {
        fm_error("edge: cannot create %s: %s", tmp_path, strerror(errno));
        result->status = 503, result->code = "cache_unavailable";
        return 0;
    }
    sink.stored_at = time(NULL); /* Last-Modified: the same for the streamed answers and the later hits */
    uint64_t started = fm_now_ns();
    sink.read_fd = open(tmp_path, O_RDONLY | O_CLOEXEC); /* -1: no streaming, the waiters get the published file */

    fm_s3_result_t res;
    char object_key[FM_EDGE_KEY_MAX + 1];
    fm_edge_object_key(fill->key, object_key, sizeof(object_key)); /* fill->key is a cache key (a file's partition) */
    int rc = fm_s3_get_object_announced(s3, object_key, on_origin_headers, write_to_file, &sink, &res);
    if (sink.read_fd != -1) /* never announced (an error answer, no Content-Length) */
        close(sink.read_fd);
    time_t stored_at = sink.stored_at;
    int streamed = sink.streamed;
    fm_metrics_observe("fm_edge_origin_seconds", NULL, (double)(fm_now_ns() - started) / 1e9);
    int synced = rc == 0 && fdatasync(sink.fd) == 0;
    close(sink.fd);
    if (rc == 0 && synced && (res.content_length < 0 || (uint64_t)res.content_length == sink.written)) {
        fm_edge_meta_t *meta = &result->meta;
        snprintf(meta->key, sizeof(meta->key), "%s", fill->key);
        meta->size = sink.written;
        snprintf(meta->etag, sizeof(meta->etag), "%s", res.etag);
        snprintf(meta->content_type, sizeof(meta->content_type), "%s", res.content_type);
        meta->stored_at = stored_at;
        if ((result->fd = fm_edge_cache_publish(fill->hex, tmp_path, meta)) == -1)
            result->status = 503, result->code = "cache_unavailable";
        fm_metrics_counter_add("fm_edge_origin_bytes_total", NULL, (double)sink.written);
        return streamed && sink.written == fill->head.size;
    }
    unlink(tmp_path);
    if (sink.too_large) {
        result->too_large = 1;
        result->meta = sink.head;
        fm_metrics_counter_add("fm_edge_too_large_total", NULL, 1);
        return 0;
    }
    if (sink.abandoned) {
        result->status = 503, result->code = "abandoned";
        fm_metrics_counter_add("fm_edge_fills_abandoned_total", NULL, 1);
        return 0;
    }
    if (rc != 0 && (res.status == 404 || strcmp(res.code, "NoSuchKey") == 0))
        result->status = 404, result->code = "not_found";
    else if (sink.failed)
        result->status = 503, result->code = "cache_unavailable";
    else
        result->status = 502, result->code = "origin_error";
    if (result->status != 404)
        fm_warn("edge: origin fill of %s failed: %s %s (%ld) %s", fill->key, res.code, res.message, res.status,
                sink.failed ? strerror(sink.failed) : "");
    fm_metrics_counter_add("fm_edge_origin_errors_total", NULL, 1);
    return 0;
}

/* A variant rendered from the original open on fill->src_fd, published into the cache. Its ETag is derived from
 * the original's and the parameters, so it changes when the original is replaced. */
void fm_edge_fill_render(fill_t *fill, const char *tmp_path, fm_edge_fill_result_t *result)
{
    uint64_t started = fm_now_ns(), size = 0;
    const char *content_type = NULL;
    int rc = fm_edge_variant_render(&fill->variant, fill->src_fd, tmp_path, &size, &content_type, result);
    close(fill->src_fd);
    fill->src_fd = -1;
    fm_metrics_observe("fm_edge_variant_seconds", NULL, (double)(fm_now_ns() - started) / 1e9);
    if (rc != 0) {
        unlink(tmp_path);
        fm_metrics_counter_add("fm_edge_variant_errors_total", NULL, 1);
        return;
    }
    fm_edge_meta_t *meta = &result->meta;
    snprintf(meta->key, sizeof(meta->key), "%s", fill->key);
    meta->size = size;
    char tag_source[sizeof(fill->src_etag) + sizeof(fill->key)], tag_hex[FM_EDGE_HEX_LEN + 1];
    int tag_len = snprintf(tag_source, sizeof(tag_source), "%s%s", fill->src_etag, fill->key);
    fm_edge_cache_name(tag_source, (size_t)tag_len, tag_hex);
    snprintf(meta->etag, sizeof(meta->etag), "\"v-%.32s\"", tag_hex);
    snprintf(meta->content_type, sizeof(meta->content_type), "%s", content_type);
    meta->stored_at = time(NULL);
    if ((result->fd = fm_edge_cache_publish(fill->hex, tmp_path, meta)) == -1)
        result->status = 503, result->code = "cache_unavailable";
}
