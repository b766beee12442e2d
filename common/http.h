/*
 * One API request on its way through a handler: the route's captures, the request id, replies in the API's
 * JSON shapes (DESIGN.md §6), JSON body parsing with bounds, and the bookkeeping that makes asynchronous
 * handlers safe when the client goes away mid-request.
 *
 * Handler shape (STYLE.md): parse → authorize → act → answer. A handler that waits on Redis, PostgreSQL or
 * the offload pool calls fm_req_hold() before issuing the call and starts its callback with
 * `if (fm_req_resume(r) != 0) return;` — the request may be gone by then, and fm_req_resume frees it.
 */
#ifndef FM_HTTP_H
#define FM_HTTP_H

#include <cjson/cJSON.h>
#include <h2o.h>

#include "config.h"
#include "router.h"
#include "server.h"

/** The state of one request. Allocated by the server, freed when h2o freed the request and no call is pending. */
typedef struct fm_req {
    h2o_req_t *req; /* NULL once h2o freed the request (the client went away) */
    fm_thread_t *thread;
    const fm_route_t *route;
    h2o_iovec_t params[FM_ROUTE_MAX_PARAMS]; /* captures, borrowed from req->path_normalized */
    size_t param_count;
    char request_id[68];
    uint64_t started_ns;
    unsigned pending;  /* asynchronous calls in flight */
    int answered;      /* a response was started */
    int status;        /* the status answered */
    const char *error_code;
    void *auth;  /* the service's idea of the caller (control-plane: fm_principal_t), free()d with the request */
    void *state; /* handler state from fm_req_state(), freed with the request */
    void *state_aux; /* a helper module's state (fm_req_aux), free()d with the request */
    void (*state_free)(void *state);
} fm_req_t;

/** Handler state of `size` zeroed bytes, owned by the request (freed with `state_free` first, if set). */
void *fm_req_state(fm_req_t *r, size_t size);

/** State of `size` zeroed bytes for a helper module working inside a handler (one at a time), freed with r. */
void *fm_req_aux(fm_req_t *r, size_t size);

/** Marks an asynchronous call as started. */
void fm_req_hold(fm_req_t *r);

/** Marks it finished; returns -1 (and frees r if it was the last call) when the request is gone, else 0. */
int fm_req_resume(fm_req_t *r);

/** The value of header `name` (lowercase), or {NULL,0}. */
h2o_iovec_t fm_req_header(fm_req_t *r, const char *name);

/** The request's raw query (after '?', still percent-encoded; read it with qs.h), or {NULL, 0} without a '?'. */
h2o_iovec_t fm_req_query(fm_req_t *r);

/** The client's address as text (IPv4/IPv6), for rate limits and audit. */
void fm_req_peer(fm_req_t *r, char *out, size_t size);

/** Adds a response header (before answering); name lowercase. Value is copied. */
void fm_req_add_header(fm_req_t *r, const char *name, const char *value);

/** Answers `body` (consumed, may be NULL for an empty object) as application/json. */
void fm_reply_json(fm_req_t *r, int status, cJSON *body);

/** Formats unix time t as the answers' timestamps read: 2026-01-02T03:04:05Z (UTC). */
void fm_iso8601(long long t, char out[32]);

/** Answers raw bytes with a content type. */
void fm_reply_raw(fm_req_t *r, int status, const char *content_type, const char *body, size_t len);

/**
 * Counts an answer in fm_http_requests_total and fm_http_request_duration_seconds, as every fm_reply_* does; for
 * answers sent some other way (a streamed file). `route` is the label and must live as long as the process (a route
 * pattern or a string literal): it keys the thread's table of series.
 */
void fm_http_count(fm_req_t *r, const char *route, int status, double seconds);

/** Answers {"error":{"code","message","request_id"}} with `status`; `code` is a static snake_case string. */
void fm_reply_error(fm_req_t *r, int status, const char *code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/** 503 for a dependency that failed or timed out; the message names it, not its internals. */
void fm_reply_unavailable(fm_req_t *r, const char *dependency);

/**
 * Parses the body as a JSON object of at most `max_bytes`: answers 415 (not application/json), 413 (too large),
 * 400 (invalid JSON or not an object) and returns NULL; otherwise returns the object (caller deletes).
 */
cJSON *fm_req_json_body(fm_req_t *r, size_t max_bytes);

/**
 * Reads string member `name`: returns it, or NULL after answering 422 when it is missing, not a string, or
 * longer than `max_len` bytes (or shorter than `min_len`).
 */
const char *fm_json_require_string(fm_req_t *r, cJSON *obj, const char *name, size_t min_len, size_t max_len);

/** A new random request id (32 hex digits). */
void fm_http_request_id(char out[33]);

/** The server-side entry point (used by server.c). */
void fm_http_dispatch(fm_thread_t *thread, h2o_req_t *req);

/** True when s[0..len) is well-formed UTF-8 (no overlongs, surrogates or code points above U+10FFFF). */
int fm_utf8_valid(const unsigned char *s, size_t len);

/** How the framing headers of an HTTP/1 request head read (fm_http1_framing_check). */
typedef enum fm_http1_framing {
    FM_HTTP1_FRAMING_OK = 0,              /**< at most one Content-Length or one Transfer-Encoding, not both */
    FM_HTTP1_FRAMING_DUPLICATE_LENGTH,    /**< Content-Length more than once (equal values too) */
    FM_HTTP1_FRAMING_DUPLICATE_ENCODING,  /**< Transfer-Encoding more than once */
    FM_HTTP1_FRAMING_LENGTH_AND_ENCODING, /**< both (RFC 9112 §6.1: answer, then close) */
    FM_HTTP1_FRAMING_UNREADABLE,          /**< no complete head in the bytes (nothing was judged) */
} fm_http1_framing_t;

/**
 * Reads the head of an HTTP/1 request (`len` bytes from the request line on; the body may follow) and tells
 * whether its message framing is ambiguous. h2o 2.2.5 takes the first of two Content-Length headers and lets
 * Transfer-Encoding win over Content-Length, and hides both headers from handlers; a proxy in front that picks
 * the other value would see another request boundary (request smuggling). fm_http_dispatch refuses such requests
 * with 400 and closes the connection. Line endings CRLF or bare LF, names case-insensitive, obs-fold lines are not
 * headers: as h2o's picohttpparser reads them. Pure; reads at most `len` bytes.
 */
fm_http1_framing_t fm_http1_framing_check(const char *head, size_t len);

/**
 * Settings of the request layer from the service's configuration, called once by main() before fm_server_run:
 * Strict-Transport-Security on answers sent over TLS (FM_HSTS_MAX_AGE_S; never on plain HTTP) and the access log's
 * mode (FM_ACCESS_LOG, FM_ACCESS_LOG_SAMPLE, see log.h).
 */
void fm_http_configure(const fm_config_t *cfg);

#endif
