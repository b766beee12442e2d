/* The shared HTTP server: see server.h. */
#include "server.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "http.h"
#include "log.h"
#include "metrics.h"

typedef struct {
    h2o_handler_t super;
} dispatch_handler_t;

static h2o_globalconf_t globalconf;
static fm_thread_t *threads;
static fm_offload_t *offload_pool;
static fm_offload_t *hash_pool; /* NULL unless spec->hash_threads */
static size_t hash_queue_max;   /* its bound */
static h2o_multithread_message_t *shutdown_messages;

static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t start_cond = PTHREAD_COND_INITIALIZER;
static size_t threads_started;

uint64_t fm_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    fm_thread_t *thread = H2O_STRUCT_FROM_MEMBER(fm_thread_t, ctx, req->conn->ctx);
    fm_http_dispatch(thread, req);
    return 0;
}

/* h2o answers a few errors itself, before any handler runs and on the host's fallback path: a body over
 * max_request_entity_size (413), an unparsable request (400). This filter turns those plain-text answers into the
 * API's JSON error (DESIGN.md §6) with a request id; our own handlers never run on the fallback path. */
typedef struct {
    h2o_ostream_t super;
    h2o_iovec_t body;
} json_error_ostream_t;

static void json_error_send(h2o_ostream_t *self, h2o_req_t *req, h2o_iovec_t *bufs, size_t bufcnt,
                            h2o_send_state_t state)
{
    json_error_ostream_t *o = (json_error_ostream_t *)self;
    if (h2o_send_state_is_in_progress(state)) { /* h2o's text is dropped; ours goes with the last call */
        h2o_ostream_send_next(self, req, NULL, 0, state);
        return;
    }
    h2o_ostream_send_next(self, req, &o->body, 1, state);
}

static void json_error_setup(h2o_filter_t *self, h2o_req_t *req, h2o_ostream_t **slot)
{
    int status = req->res.status;
    if (status >= 400) {
        const char *code = status == 413 ? "payload_too_large" : status == 400 ? "bad_request" : "http_error";
        char id[33], text[256];
        fm_http_request_id(id);
        int len = snprintf(text, sizeof(text), "{\"error\":{\"code\":\"%s\",\"message\":\"%s\",\"request_id\":\"%s\"}}",
                           code, status == 413 ? "the request body is too large" : "the request could not be read", id);
        json_error_ostream_t *o = (json_error_ostream_t *)h2o_add_ostream(req, sizeof(*o), slot);
        o->super.do_send = json_error_send;
        o->body = h2o_strdup(&req->pool, text, (size_t)len);
        h2o_set_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, H2O_STRLIT("application/json"), 1);
        h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-request-id"), 0, NULL,
                              h2o_strdup(&req->pool, id, SIZE_MAX).base, strlen(id));
        req->res.content_length = o->body.len;
        slot = &o->super.next;
    }
    h2o_setup_next_ostream(req, slot);
}

static int resolve(const char *bind_addr, int port, struct sockaddr_in *sin)
{
    memset(sin, 0, sizeof(*sin));
    sin->sin_family = AF_INET;
    sin->sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, bind_addr, &sin->sin_addr) == 1 ? 0 : -1;
}

/* A listener per thread with SO_REUSEPORT: the kernel spreads connections across the loops. */
static int open_listener(const char *bind_addr, int port, int reuseport)
{
    struct sockaddr_in sin;
    int fd, on = 1;
    if (resolve(bind_addr, port, &sin) != 0)
        return -1;
    if ((fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) == -1)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    if (reuseport)
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0 || listen(fd, 1024) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

/* SO_REUSEPORT would silently share a port with a stale process: prove the port is free with a plain bind first. */
static int port_is_free(const char *bind_addr, int port)
{
    int fd = open_listener(bind_addr, port, 0);
    if (fd == -1)
        return 0;
    close(fd);
    return 1;
}

static void on_accept(h2o_socket_t *listener, const char *err)
{
    h2o_socket_t *sock;
    if (err != NULL)
        return;
    /* Accept a few per readiness event; the rest wait for the next turn so one loop cannot starve. */
    for (int i = 0; i < 16 && (sock = h2o_evloop_socket_accept(listener)) != NULL; ++i)
        h2o_accept(listener->data, sock);
}

static void on_shutdown_message(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    fm_thread_t *thread = H2O_STRUCT_FROM_MEMBER(fm_thread_t, shutdown_receiver, receiver);
    while (!h2o_linklist_is_empty(messages))
        h2o_linklist_unlink(messages->next);
    if (thread->shutting_down)
        return;
    thread->shutting_down = 1;
    for (int i = 0; i < 2; ++i) {
        if (thread->listeners[i] != NULL) {
            h2o_socket_read_stop(thread->listeners[i]);
            h2o_socket_close(thread->listeners[i]);
            thread->listeners[i] = NULL;
        }
    }
    /* HTTP/2 connections get GOAWAY, HTTP/1 ones close after their current request. */
    h2o_context_request_shutdown(&thread->ctx);
}

static void on_tick(h2o_timeout_entry_t *entry)
{
    fm_thread_t *thread = H2O_STRUCT_FROM_MEMBER(fm_thread_t, tick_entry, entry);
    char labels[96];
    snprintf(labels, sizeof(labels), "service=\"%s\",thread=\"%zu\"", thread->spec->service, thread->index);
    fm_metrics_gauge_set("fm_http_inflight_requests", labels, (double)thread->inflight);
    if (thread->spec->thread_tick != NULL)
        thread->spec->thread_tick(thread);
    h2o_timeout_link(thread->ctx.loop, &thread->tick_timeout, &thread->tick_entry);
}

static void announce_started(fm_thread_t *thread, int status)
{
    pthread_mutex_lock(&start_lock);
    thread->init_status = status;
    threads_started++;
    pthread_cond_broadcast(&start_cond);
    pthread_mutex_unlock(&start_lock);
}

/* Jobs this thread handed to either pool whose answer it has not taken yet. */
static size_t offload_outstanding(fm_thread_t *thread)
{
    return fm_offload_port_outstanding(thread->offload) +
           (thread->hash != NULL ? fm_offload_port_outstanding(thread->hash) : 0);
}

static void *thread_main(void *arg)
{
    fm_thread_t *thread = arg;
    const fm_server_spec_t *spec = thread->spec;
    thread->loop = h2o_evloop_create();
    h2o_context_init(&thread->ctx, thread->loop, &globalconf);
    thread->queue = h2o_multithread_create_queue(thread->loop);
    h2o_multithread_register_receiver(thread->queue, &thread->shutdown_receiver, on_shutdown_message);
    thread->offload = fm_offload_port_create(offload_pool, thread->loop);
    thread->hash = hash_pool != NULL ? fm_offload_port_create(hash_pool, thread->loop) : NULL;

    if (spec->thread_init != NULL && spec->thread_init(thread) != 0) {
        announce_started(thread, -1);
        return NULL;
    }
    /* Listen only once the thread can serve (its pools are up), so no early request meets an empty pool. */
    int ports[2] = {spec->http_port, spec->https_port};
    h2o_accept_ctx_t *accept_ctx[2] = {&thread->accept_plain, &thread->accept_tls};
    for (int i = 0; i < 2; ++i) {
        if (ports[i] == 0)
            continue;
        int fd = open_listener(spec->bind, ports[i], 1);
        if (fd == -1) {
            fm_error("cannot listen on %s:%d: %s", spec->bind, ports[i], strerror(errno));
            announce_started(thread, -1);
            return NULL;
        }
        thread->listeners[i] = h2o_evloop_socket_create(thread->loop, fd, H2O_SOCKET_FLAG_DONT_READ);
        thread->listeners[i]->data = accept_ctx[i];
        h2o_socket_read_start(thread->listeners[i], on_accept);
    }

    h2o_timeout_init(thread->ctx.loop, &thread->tick_timeout, 1000);
    thread->tick_entry.cb = on_tick;
    h2o_timeout_link(thread->ctx.loop, &thread->tick_timeout, &thread->tick_entry);
    announce_started(thread, 0);

    while (!thread->shutting_down)
        h2o_evloop_run(thread->loop, INT32_MAX);

    /* Graceful stop: finish what is in flight, up to the configured limit. */
    uint64_t deadline = fm_now_ns() + spec->graceful_timeout_ms * 1000000u;
    while ((thread->inflight > 0 || offload_outstanding(thread) > 0) && fm_now_ns() < deadline)
        h2o_evloop_run(thread->loop, 10);
    /* Let the last responses reach their sockets. */
    for (uint64_t flush_until = fm_now_ns() + 50000000u; fm_now_ns() < flush_until;)
        h2o_evloop_run(thread->loop, 10);
    if (thread->inflight > 0)
        fm_warn("thread %zu: %zu requests still in flight at the graceful timeout", thread->index, thread->inflight);

    h2o_timeout_unlink(&thread->tick_entry);
    if (spec->thread_dispose != NULL)
        spec->thread_dispose(thread);
    while (offload_outstanding(thread) > 0 && fm_now_ns() < deadline + 1000000000u)
        h2o_evloop_run(thread->loop, 10);
    return NULL;
}

static SSL_CTX *make_ssl_ctx(const char *cert, const char *key)
{
    SSL_CTX *ssl_ctx = SSL_CTX_new(TLS_server_method());
    if (ssl_ctx == NULL)
        return NULL;
    SSL_CTX_set_min_proto_version(ssl_ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ssl_ctx, SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_use_certificate_chain_file(ssl_ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ssl_ctx, key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ssl_ctx) != 1) {
        char reason[256];
        ERR_error_string_n(ERR_get_error(), reason, sizeof(reason));
        fm_error("TLS: cannot load %s / %s: %s", cert, key, reason);
        SSL_CTX_free(ssl_ctx);
        return NULL;
    }
    h2o_ssl_register_alpn_protocols(ssl_ctx, h2o_http2_alpn_protocols);
    return ssl_ctx;
}

static void stop_signal_set(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
}

void fm_server_block_stop_signals(void)
{
    sigset_t stop_signals;
    stop_signal_set(&stop_signals);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
}

int fm_server_hash_full(void)
{
    return hash_pool != NULL && fm_offload_queued(hash_pool) >= hash_queue_max;
}

int fm_server_run(const fm_server_spec_t *spec)
{
    sigset_t stop_signals;
    signal(SIGPIPE, SIG_IGN);
    stop_signal_set(&stop_signals);
    /* Threads inherit the mask, so only sigwait() below sees the stop signals (the services block them before their
     * libraries start threads of their own: fm_server_block_stop_signals). */
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);

    int ports[2] = {spec->http_port, spec->https_port};
    for (int i = 0; i < 2; ++i) {
        if (ports[i] != 0 && !port_is_free(spec->bind, ports[i])) {
            fm_error("port %s:%d is not free (%s): is another instance running?", spec->bind, ports[i],
                     strerror(errno));
            return 1;
        }
    }

    SSL_CTX *ssl_ctx = NULL;
    if (spec->https_port != 0) {
        if (spec->tls_cert == NULL || spec->tls_cert[0] == '\0') {
            fm_error("a TLS port is set but no certificate (FM_TLS_CERT/FM_TLS_KEY)");
            return 1;
        }
        if ((ssl_ctx = make_ssl_ctx(spec->tls_cert, spec->tls_key)) == NULL)
            return 1;
    }

    h2o_config_init(&globalconf);
    globalconf.server_name = h2o_iovec_init(H2O_STRLIT("files-manager"));
    globalconf.max_request_entity_size = spec->max_body_bytes;
    h2o_hostconf_t *hostconf = h2o_config_register_host(&globalconf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *pathconf = h2o_config_register_path(hostconf, "/", 0);
    dispatch_handler_t *handler = (dispatch_handler_t *)h2o_create_handler(pathconf, sizeof(*handler));
    handler->super.on_req = on_req;
    h2o_create_filter(&hostconf->fallback_path, sizeof(h2o_filter_t))->on_setup_ostream = json_error_setup;

    fm_metrics_describe("fm_http_requests_total", FM_METRIC_COUNTER, "HTTP requests answered, by route and status");
    fm_metrics_describe("fm_http_request_duration_seconds", FM_METRIC_HISTOGRAM, "Time to answer, by route");
    fm_metrics_describe("fm_http_inflight_requests", FM_METRIC_GAUGE, "Requests being handled, per thread");

    /* The hashing queue is short on purpose (FM_HASH_QUEUE_MAX): a login that would wait seconds behind a flood of
     * others is better answered 503 + Retry-After at once. */
    hash_queue_max = spec->hash_queue_max != 0 ? spec->hash_queue_max : 1024;
    if ((offload_pool = fm_offload_create(spec->offload_threads, 4096)) == NULL ||
        (spec->hash_threads > 0 && (hash_pool = fm_offload_create(spec->hash_threads, hash_queue_max)) == NULL)) {
        fm_error("cannot start the offload pools");
        return 1;
    }
    threads = calloc(spec->threads, sizeof(*threads));
    shutdown_messages = calloc(spec->threads, sizeof(*shutdown_messages));
    if (threads == NULL || shutdown_messages == NULL)
        h2o_fatal("out of memory");
    for (size_t i = 0; i < spec->threads; ++i) {
        fm_thread_t *thread = &threads[i];
        thread->index = i;
        thread->spec = spec;
        thread->accept_plain = (h2o_accept_ctx_t){.ctx = &thread->ctx, .hosts = globalconf.hosts};
        thread->accept_tls = (h2o_accept_ctx_t){.ctx = &thread->ctx, .hosts = globalconf.hosts, .ssl_ctx = ssl_ctx};
        if (pthread_create(&thread->tid, NULL, thread_main, thread) != 0)
            h2o_fatal("pthread_create failed");
    }

    int failed = 0;
    pthread_mutex_lock(&start_lock);
    while (threads_started < spec->threads)
        pthread_cond_wait(&start_cond, &start_lock);
    pthread_mutex_unlock(&start_lock);
    for (size_t i = 0; i < spec->threads; ++i)
        failed |= threads[i].init_status != 0;
    if (failed) {
        fm_error("%s failed to start", spec->service);
        return 1;
    }
    if (spec->https_port != 0)
        fm_info("%s listening on http://%s:%d (HTTP/1.1, h2c) and https://%s:%d (HTTP/2) with %zu threads",
                spec->service, spec->bind, spec->http_port, spec->bind, spec->https_port, spec->threads);
    else
        fm_info("%s listening on http://%s:%d with %zu threads", spec->service, spec->bind, spec->http_port,
                spec->threads);

    int sig = 0;
    sigwait(&stop_signals, &sig);
    fm_info("%s: signal %d, stopping gracefully", spec->service, sig);
    for (size_t i = 0; i < spec->threads; ++i)
        h2o_multithread_send_message(&threads[i].shutdown_receiver, &shutdown_messages[i]);
    for (size_t i = 0; i < spec->threads; ++i)
        pthread_join(threads[i].tid, NULL);
    fm_offload_destroy(offload_pool);
    fm_offload_destroy(hash_pool);
    fm_info("%s stopped", spec->service);
    return 0;
}
