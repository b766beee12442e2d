/* Async Redis pool on the h2o evloop: see redis.h. */
#include "redis.h"

#include <hiredis/async.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"

#define BACKOFF_STEPS 6
static const uint64_t backoff_ms[BACKOFF_STEPS] = {100, 200, 400, 800, 1600, 2000};
#define CONNECT_TIMEOUT_MIN_MS 1000

typedef enum { CONN_DOWN, CONN_CONNECTING, CONN_HANDSHAKE, CONN_READY, CONN_CLOSING } conn_state_t;

typedef struct redis_conn {
    fm_redis_t *owner;
    redisAsyncContext *ac; /* NULL while down */
    h2o_socket_t *sock;    /* watches ac's fd; hiredis does the reading and writing */
    conn_state_t state;
    int write_armed;  /* an h2o_socket_notify_write is pending: it is one-shot and cannot be cancelled */
    int write_wanted; /* hiredis asked for writability and has not withdrawn it since */
    int flushing;     /* on_flush is writing: a further write wait goes through epoll */
    h2o_timeout_entry_t flush_entry; /* commands issued this loop turn are written together at its end */
    int handshake_left;
    int is_sub;               /* the invalidation subscriber of a tracking pool, not a command connection */
    int tracked;              /* CLIENT TRACKING ON REDIRECT was accepted: Redis reports changes of keys read here */
    long long tracking_for;   /* the subscriber id the last CLIENT TRACKING named */
    size_t inflight; /* commands sent and not yet answered by hiredis, timed-out ones included */
    unsigned backoff_step;
    h2o_timeout_entry_t timer; /* connect deadline while connecting, reconnect delay while down */
} redis_conn_t;

typedef struct redis_request {
    fm_redis_t *owner;
    redis_conn_t *conn;
    fm_redis_cb cb; /* NULL once the caller was answered by the timeout: the late reply is dropped */
    void *data;
    const char *fail_errstr;
    h2o_linklist_t failing_link;
    h2o_timeout_entry_t deadline;
} redis_request_t;

struct fm_redis {
    h2o_loop_t *loop;
    char *host;
    int port;
    char *password;
    int db;
    uint64_t timeout_ms;
    size_t pool_size;
    redis_conn_t *conns;
    size_t next_conn;
    h2o_linklist_t failing; /* requests answered with an error on the next loop turn */
    h2o_timeout_entry_t failing_entry;
    int in_failing; /* on_failing is running the failure callbacks */
    h2o_timeout_t zero_timeout;
    h2o_timeout_t next_turn_timeout; /* 1 ms: a zero timeout linked from its own callback runs in the same pass */
    h2o_timeout_t command_timeout;
    h2o_timeout_t connect_timeout;
    h2o_timeout_t backoff[BACKOFF_STEPS];
    int shutting_down;
    /* tracking pools only (fm_redis_create_tracking) */
    redis_conn_t *sub; /* conns[pool_size]: subscribed to __redis__:invalidate */
    long long sub_id;  /* its CLIENT ID */
    int sub_ready;     /* subscribed: command connections may be tracked */
    uint64_t epoch;
    fm_redis_invalidate_cb on_invalidate;
    void *invalidate_data;
};

#define INVALIDATE_CHANNEL "__redis__:invalidate"


static void conn_start(redis_conn_t *c);
static void tracking_lost(fm_redis_t *r, redis_conn_t *c);
static void tracking_enable(redis_conn_t *c);
static void sub_subscribe(redis_conn_t *c);

/* --- the hiredis fd on the h2o loop ------------------------------------------------------------------------------ */

static void on_readable(h2o_socket_t *sock, const char *err)
{
    redis_conn_t *c = sock->data;
    /* DONT_READ: h2o only reports readiness, hiredis reads; an EOF or error surfaces from redisBufferRead */
    if (c->ac != NULL)
        redisAsyncHandleRead(c->ac);
}

static void on_writable(h2o_socket_t *sock, const char *err)
{
    redis_conn_t *c = sock->data;
    c->write_armed = 0;
    /* hiredis may have withdrawn the request (delWrite) after we armed the one-shot notification */
    if (c->write_wanted && c->ac != NULL)
        redisAsyncHandleWrite(c->ac);
}

static void ev_add_read(void *privdata)
{
    redis_conn_t *c = privdata;
    if (c->sock != NULL && !h2o_socket_is_reading(c->sock))
        h2o_socket_read_start(c->sock, on_readable);
}

static void ev_del_read(void *privdata)
{
    redis_conn_t *c = privdata;
    if (c->sock != NULL && h2o_socket_is_reading(c->sock))
        h2o_socket_read_stop(c->sock);
}

/* Writes what hiredis buffered during this loop turn, in one write(2) (a pipeline); the socket of a ready connection
 * is nearly always writable, so this saves the epoll round trip (two epoll_ctl and a loop turn) per command. */
static void on_flush(h2o_timeout_entry_t *entry)
{
    redis_conn_t *c = H2O_STRUCT_FROM_MEMBER(redis_conn_t, flush_entry, entry);
    if (!c->write_wanted || c->ac == NULL)
        return;
    c->flushing = 1;
    redisAsyncHandleWrite(c->ac);
    c->flushing = 0;
}

static void ev_add_write(void *privdata)
{
    redis_conn_t *c = privdata;
    c->write_wanted = 1;
    if (c->state == CONN_READY && c->sock != NULL && !c->flushing && !c->write_armed) {
        if (!h2o_timeout_is_linked(&c->flush_entry))
            h2o_timeout_link(c->owner->loop, &c->owner->zero_timeout, &c->flush_entry);
        return;
    }
    /* connecting (hiredis learns of connect(2) completing this way), or the socket was full */
    if (c->sock != NULL && !c->write_armed) {
        c->write_armed = 1;
        h2o_socket_notify_write(c->sock, on_writable);
    }
}

static void ev_del_write(void *privdata)
{
    redis_conn_t *c = privdata;
    c->write_wanted = 0;
}

/* Lets go of the h2o socket without closing the fd, which hiredis closes itself right after. */
static void detach_socket(redis_conn_t *c)
{
    if (c->sock == NULL)
        return;
    h2o_socket_export_t info;
    /* h2o_socket_export asserts that no write notification is pending; the socket is disposed anyway */
    c->sock->_cb.write = NULL;
    h2o_socket_export(c->sock, &info);
    h2o_buffer_dispose(&info.input);
    c->sock = NULL;
    c->write_armed = 0;
    c->write_wanted = 0;
    if (h2o_timeout_is_linked(&c->flush_entry))
        h2o_timeout_unlink(&c->flush_entry);
}

static void schedule_reconnect(redis_conn_t *c)
{
    fm_redis_t *r = c->owner;
    if (h2o_timeout_is_linked(&c->timer))
        h2o_timeout_unlink(&c->timer);
    h2o_timeout_link(r->loop, &r->backoff[c->backoff_step], &c->timer);
    if (c->backoff_step + 1 < BACKOFF_STEPS)
        ++c->backoff_step;
}

/* hiredis cleanup hook: the context is being freed (connect failure, disconnect or redisAsyncFree). hiredis has
 * already run every pending callback with a NULL reply, and closes the fd when this returns. */
static void ev_cleanup(void *privdata)
{
    redis_conn_t *c = privdata;
    fm_redis_t *r = c->owner;
    int was_up = c->state == CONN_READY || c->state == CONN_CLOSING;

    detach_socket(c);
    c->ac = NULL;
    c->state = CONN_DOWN;
    c->handshake_left = 0;
    if (c->is_sub || c->tracked)
        tracking_lost(r, c);
    if (h2o_timeout_is_linked(&c->timer))
        h2o_timeout_unlink(&c->timer);
    if (r->shutting_down)
        return;
    if (was_up)
        fm_warn("redis %s:%d: connection lost, reconnecting", r->host, r->port);
    schedule_reconnect(c);
}

/* --- connection lifecycle ---------------------------------------------------------------------------------------- */

static void conn_ready(redis_conn_t *c)
{
    c->state = CONN_READY;
    c->backoff_step = 0;
    if (h2o_timeout_is_linked(&c->timer))
        h2o_timeout_unlink(&c->timer);
    if (c->is_sub)
        sub_subscribe(c);
    else if (c->owner->sub_ready)
        tracking_enable(c);
}

static void on_handshake_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    redis_conn_t *c = privdata;
    redisReply *answer = reply;

    if (answer == NULL || c->state != CONN_HANDSHAKE)
        return; /* the connection is going away; the cleanup hook takes over */
    if (answer->type == REDIS_REPLY_ERROR) {
        if (c->backoff_step == 0) /* once per failure streak: a wrong password would flood the log */
            fm_warn("redis %s:%d: AUTH/SELECT refused: %.*s", c->owner->host, c->owner->port, (int)answer->len,
                    answer->str);
        /* hiredis frees it when this callback returns, before any further reply; the backoff keeps growing */
        redisAsyncFree(ac);
        return;
    }
    if (--c->handshake_left == 0)
        conn_ready(c);
}

static void on_sub_id(redisAsyncContext *ac, void *reply, void *privdata)
{
    redis_conn_t *c = privdata;
    redisReply *answer = reply;
    if (answer != NULL && answer->type == REDIS_REPLY_INTEGER)
        c->owner->sub_id = answer->integer;
    on_handshake_reply(ac, reply, privdata);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    redis_conn_t *c = ac->data;
    fm_redis_t *r = c->owner;

    if (status != REDIS_OK) {
        if (c->backoff_step == 0)
            fm_warn("redis %s:%d: connect failed: %s", r->host, r->port, ac->errstr != NULL ? ac->errstr : "?");
        return; /* hiredis frees the context next, and ev_cleanup schedules the retry */
    }
    /* Commands are only dispatched once AUTH and SELECT succeeded, so none can run unauthenticated or on db 0. */
    c->state = CONN_HANDSHAKE;
    c->handshake_left = 0;
    if (r->password != NULL) {
        const char *argv[] = {"AUTH", r->password};
        if (redisAsyncCommandArgv(c->ac, on_handshake_reply, c, 2, argv, NULL) == REDIS_OK)
            ++c->handshake_left;
    }
    if (c->is_sub) { /* no SELECT: invalidations name keys of every database */
        if (redisAsyncCommand(c->ac, on_sub_id, c, "CLIENT ID") == REDIS_OK)
            ++c->handshake_left;
    } else if (r->db != 0 && redisAsyncCommand(c->ac, on_handshake_reply, c, "SELECT %d", r->db) == REDIS_OK) {
        ++c->handshake_left;
    }
    if (c->handshake_left == 0)
        conn_ready(c);
}

static void on_conn_timer(h2o_timeout_entry_t *entry)
{
    redis_conn_t *c = H2O_STRUCT_FROM_MEMBER(redis_conn_t, timer, entry);

    if (c->state == CONN_DOWN) {
        conn_start(c);
    } else if (c->state == CONN_CONNECTING || c->state == CONN_HANDSHAKE) {
        fm_warn("redis %s:%d: connect timed out", c->owner->host, c->owner->port);
        redisAsyncFree(c->ac); /* runs ev_cleanup, which schedules the retry */
    }
}

static void conn_start(redis_conn_t *c)
{
    fm_redis_t *r = c->owner;
    redisAsyncContext *ac = redisAsyncConnect(r->host, r->port);

    if (ac == NULL || ac->err != 0) {
        if (c->backoff_step == 0)
            fm_warn("redis %s:%d: connect failed: %s", r->host, r->port, ac != NULL ? ac->errstr : "out of memory");
        if (ac != NULL)
            redisAsyncFree(ac);
        schedule_reconnect(c);
        return;
    }
    /* detects a peer that vanished without a FIN while commands wait on this connection */
    redisEnableKeepAlive(&ac->c);

    c->ac = ac;
    ac->data = c;
    c->sock = h2o_evloop_socket_create(r->loop, ac->c.fd, H2O_SOCKET_FLAG_DONT_READ);
    c->sock->data = c;
    c->write_armed = 0;
    c->write_wanted = 0;
    ac->ev.data = c;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    c->state = CONN_CONNECTING;
    h2o_timeout_link(r->loop, &r->connect_timeout, &c->timer);
    /* after the hooks: it arms the first write wait, which is how hiredis learns that connect(2) finished */
    redisAsyncSetConnectCallback(ac, on_connect);
}

/* --- requests ---------------------------------------------------------------------------------------------------- */

static void on_failing(h2o_timeout_entry_t *entry)
{
    fm_redis_t *r = H2O_STRUCT_FROM_MEMBER(fm_redis_t, failing_entry, entry);
    h2o_linklist_t batch;

    /* only the failures queued so far; ones queued by these callbacks go to next_turn_timeout (fail_later) */
    h2o_linklist_init_anchor(&batch);
    h2o_linklist_insert_list(&batch, &r->failing);
    r->in_failing = 1;
    while (!h2o_linklist_is_empty(&batch)) {
        redis_request_t *req = H2O_STRUCT_FROM_MEMBER(redis_request_t, failing_link, batch.next);
        h2o_linklist_unlink(&req->failing_link);
        req->cb(NULL, req->fail_errstr, req->data);
        free(req);
    }
    r->in_failing = 0;
}

/* The callback must never run inside fm_redis_command, so immediate failures wait for a zero timeout. */
static void fail_later(fm_redis_t *r, redis_request_t *req, const char *errstr)
{
    req->fail_errstr = errstr;
    h2o_linklist_insert(&r->failing, &req->failing_link);
    if (!h2o_timeout_is_linked(&r->failing_entry))
        h2o_timeout_link(r->loop, r->in_failing ? &r->next_turn_timeout : &r->zero_timeout, &r->failing_entry);
}

static void on_deadline(h2o_timeout_entry_t *entry)
{
    redis_request_t *req = H2O_STRUCT_FROM_MEMBER(redis_request_t, deadline, entry);
    fm_redis_cb cb = req->cb;

    /* hiredis 0.14 has no command timeout and cannot forget a callback: answer now, free on the late reply */
    req->cb = NULL;
    cb(NULL, "redis timeout", req->data);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    redis_request_t *req = privdata;
    redis_conn_t *c = req->conn;
    fm_redis_t *r = req->owner;

    --c->inflight;
    if (reply == NULL && c->state == CONN_READY)
        c->state = CONN_CLOSING; /* hiredis is failing everything queued on it: send nothing more there */
    if (h2o_timeout_is_linked(&req->deadline))
        h2o_timeout_unlink(&req->deadline);
    if (req->cb != NULL) {
        const char *errstr = reply != NULL ? NULL : r->shutting_down ? "redis shutting down" : "redis disconnected";
        req->cb(reply, errstr, req->data);
    }
    free(req);
}

/* The ready connection with the fewest unanswered commands, so one stuck behind a slow command is avoided. */
static redis_conn_t *choose_conn(fm_redis_t *r)
{
    redis_conn_t *best = NULL;
    for (size_t i = 0; i < r->pool_size; ++i) {
        redis_conn_t *c = &r->conns[(r->next_conn + i) % r->pool_size];
        if (c->state == CONN_READY && (best == NULL || c->inflight < best->inflight))
            best = c;
    }
    r->next_conn = (r->next_conn + 1) % r->pool_size;
    return best;
}

/* hiredis routes (un)subscribe and monitor replies differently (a callback per message, never "once"), so the
 * adapter refuses them. `cmd` is a RESP array as formatted by hiredis: "*N\r\n$len\r\nNAME\r\n...". */
static int is_unsupported_command(const char *cmd, size_t len)
{
    static const char *const refused[] = {"subscribe", "psubscribe", "unsubscribe", "punsubscribe", "monitor"};
    const char *end = cmd + len, *p = memchr(cmd, '\n', len);

    if (p == NULL || ++p >= end || *p != '$')
        return 1;
    char *name_end;
    unsigned long name_len = strtoul(p + 1, &name_end, 10);
    const char *name = name_end + 2;
    if (name > end || name_len > (size_t)(end - name))
        return 1;
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); ++i)
        if (strlen(refused[i]) == name_len && strncasecmp(name, refused[i], name_len) == 0)
            return 1;
    return 0;
}

static int submit(fm_redis_t *r, fm_redis_cb cb, void *data, const char *cmd, size_t len)
{
    if (is_unsupported_command(cmd, len))
        return -1;

    redis_request_t *req = h2o_mem_alloc(sizeof(*req));
    memset(req, 0, sizeof(*req));
    req->owner = r;
    req->cb = cb;
    req->data = data;
    req->deadline.cb = on_deadline;

    redis_conn_t *c = choose_conn(r);
    /* hiredis copies cmd into its output buffer; it refuses only a context that is already going away */
    if (c == NULL || redisAsyncFormattedCommand(c->ac, on_reply, req, cmd, len) != REDIS_OK) {
        fail_later(r, req, "redis unavailable");
        return 0;
    }
    req->conn = c;
    ++c->inflight;
    if (r->timeout_ms != 0)
        h2o_timeout_link(r->loop, &r->command_timeout, &req->deadline);
    return 0;
}

int fm_redis_command(fm_redis_t *r, fm_redis_cb cb, void *data, const char *fmt, ...)
{
    if (r == NULL || cb == NULL || fmt == NULL || r->shutting_down)
        return -1;

    char *cmd = NULL;
    va_list ap;
    va_start(ap, fmt);
    int len = redisvFormatCommand(&cmd, fmt, ap);
    va_end(ap);
    if (len < 0)
        return -1;
    int ret = submit(r, cb, data, cmd, (size_t)len);
    redisFreeCommand(cmd);
    return ret;
}

static size_t decimal_len(size_t n)
{
    size_t len = 1;
    while (n >= 10) {
        n /= 10;
        ++len;
    }
    return len;
}

/* Writes "<kind><n>\r\n" (a RESP array or bulk string header) and returns the end. */
static char *put_header(char *p, char kind, size_t n)
{
    *p++ = kind;
    size_t len = decimal_len(n);
    for (size_t i = len; i > 0; --i) {
        p[i - 1] = (char)('0' + n % 10);
        n /= 10;
    }
    p += len;
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

int fm_redis_commandargv(fm_redis_t *r, fm_redis_cb cb, void *data, int argc, const char **argv, const size_t *argvlen)
{
    if (r == NULL || cb == NULL || argc < 1 || argv == NULL || r->shutting_down)
        return -1;
    for (int i = 0; i < argc; ++i)
        if (argv[i] == NULL)
            return -1;

    /* The RESP text is built here rather than by redisFormatCommandArgv, whose two sprintf calls per argument were
     * a tenth of a presign's CPU. It goes on the stack when small: hiredis copies it into its output buffer. */
    size_t total = 1 + decimal_len((size_t)argc) + 2;
    for (int i = 0; i < argc; ++i) {
        size_t n = argvlen != NULL ? argvlen[i] : strlen(argv[i]);
        total += 1 + decimal_len(n) + 2 + n + 2;
    }
    char stack[2048];
    char *cmd = total <= sizeof(stack) ? stack : malloc(total);
    if (cmd == NULL)
        return -1;
    char *p = put_header(cmd, '*', (size_t)argc);
    for (int i = 0; i < argc; ++i) {
        size_t n = argvlen != NULL ? argvlen[i] : strlen(argv[i]);
        p = put_header(p, '$', n);
        memcpy(p, argv[i], n);
        p += n;
        *p++ = '\r';
        *p++ = '\n';
    }
    int ret = submit(r, cb, data, cmd, (size_t)(p - cmd));
    if (cmd != stack)
        free(cmd);
    return ret;
}

/* --- tracking: Redis tells which keys read here changed ---------------------------------------------------------- *
 * The subscriber connection asks CLIENT ID, then SUBSCRIBEs to __redis__:invalidate; once that is confirmed, every
 * command connection sends CLIENT TRACKING ON REDIRECT <id>. From then on Redis publishes, on the subscriber, the
 * names of the keys read on a command connection as soon as they are written, deleted, expired or evicted (a flush:
 * no names). Losing the subscriber or a tracked connection loses those reports, so both count as "everything
 * changed" (epoch bumped, NULL to the callback) until tracking is back. */

static void tracking_changed(fm_redis_t *r, const char *key, size_t len)
{
    ++r->epoch;
    if (r->on_invalidate != NULL)
        r->on_invalidate(key, len, r->invalidate_data);
}

static void tracking_lost(fm_redis_t *r, redis_conn_t *c)
{
    if (c->is_sub) {
        r->sub_ready = 0;
        r->sub_id = 0;
        for (size_t i = 0; i < r->pool_size; ++i)
            r->conns[i].tracked = 0;
    }
    c->tracked = 0;
    tracking_changed(r, NULL, 0);
}

static void on_tracking_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    redis_conn_t *c = privdata;
    fm_redis_t *r = c->owner;
    redisReply *answer = reply;
    if (answer == NULL || c->state != CONN_READY)
        return;
    if (answer->type == REDIS_REPLY_ERROR) {
        fm_warn("redis %s:%d: CLIENT TRACKING refused: %.*s", r->host, r->port, (int)answer->len, answer->str);
        return;
    }
    /* A reply for an older subscriber may come first: Redis runs the newer CLIENT TRACKING before anything sent
     * after it on this connection, so the connection is tracked for every later command either way. */
    if (r->sub_ready && c->tracking_for == r->sub_id)
        c->tracked = 1;
}

static void tracking_enable(redis_conn_t *c)
{
    fm_redis_t *r = c->owner;
    c->tracking_for = r->sub_id;
    redisAsyncCommand(c->ac, on_tracking_reply, c, "CLIENT TRACKING ON REDIRECT %lld", r->sub_id);
}

static void on_sub_message(redisAsyncContext *ac, void *reply, void *privdata)
{
    redis_conn_t *c = privdata;
    fm_redis_t *r = c->owner;
    redisReply *m = reply;
    if (m == NULL || c->state != CONN_READY) /* going away: ev_cleanup reports the loss */
        return;
    if (m->type != REDIS_REPLY_ARRAY || m->elements < 3 || m->element[0]->type != REDIS_REPLY_STRING) {
        tracking_changed(r, NULL, 0);
        return;
    }
    if (strcmp(m->element[0]->str, "subscribe") == 0) {
        r->sub_ready = 1;
        for (size_t i = 0; i < r->pool_size; ++i)
            if (r->conns[i].state == CONN_READY)
                tracking_enable(&r->conns[i]);
        return;
    }
    redisReply *keys = m->element[2];
    if (strcmp(m->element[0]->str, "message") != 0 || keys->type != REDIS_REPLY_ARRAY) {
        tracking_changed(r, NULL, 0); /* a flush (nil), or anything not understood */
        return;
    }
    for (size_t i = 0; i < keys->elements; ++i) {
        redisReply *k = keys->element[i];
        if (k->type == REDIS_REPLY_STRING)
            tracking_changed(r, k->str, k->len);
        else
            tracking_changed(r, NULL, 0);
    }
}

static void sub_subscribe(redis_conn_t *c)
{
    if (redisAsyncCommand(c->ac, on_sub_message, c, "SUBSCRIBE " INVALIDATE_CHANNEL) != REDIS_OK)
        redisAsyncDisconnect(c->ac);
}

int fm_redis_tracked(fm_redis_t *r, uint64_t *epoch)
{
    if (r == NULL || r->sub == NULL)
        return 0;
    /* Reports already in the subscriber's socket are taken first: a change Redis made before this moment is
     * known before the caller trusts what it read earlier (the loop may have woken for a request first). Every
     * lookup reads the socket, not once per request: Redis may write a change's reply before its report, so a
     * report can land between two lookups of one request. */
    if (r->sub_ready && r->sub->ac != NULL)
        redisAsyncHandleRead(r->sub->ac);
    *epoch = r->epoch;
    if (!r->sub_ready)
        return 0;
    size_t ready = 0;
    for (size_t i = 0; i < r->pool_size; ++i) {
        if (r->conns[i].state != CONN_READY)
            continue;
        if (!r->conns[i].tracked)
            return 0;
        ++ready;
    }
    return ready > 0;
}

/* --- pool -------------------------------------------------------------------------------------------------------- */

static fm_redis_t *create(h2o_loop_t *loop, const char *host, int port, const char *password, int db,
                          size_t pool_size, uint64_t timeout_ms, int tracking)
{
    if (loop == NULL || host == NULL || port <= 0 || port > 65535 || db < 0 || pool_size == 0)
        return NULL;

    fm_redis_t *r = h2o_mem_alloc(sizeof(*r));
    memset(r, 0, sizeof(*r));
    r->loop = loop;
    r->host = h2o_strdup(NULL, host, SIZE_MAX).base;
    r->port = port;
    r->password = password != NULL ? h2o_strdup(NULL, password, SIZE_MAX).base : NULL;
    r->db = db;
    r->timeout_ms = timeout_ms;
    r->pool_size = pool_size;
    h2o_linklist_init_anchor(&r->failing);
    r->failing_entry.cb = on_failing;
    h2o_timeout_init(loop, &r->zero_timeout, 0);
    h2o_timeout_init(loop, &r->next_turn_timeout, 1);
    h2o_timeout_init(loop, &r->command_timeout, timeout_ms);
    h2o_timeout_init(loop, &r->connect_timeout,
                     timeout_ms > CONNECT_TIMEOUT_MIN_MS ? timeout_ms : CONNECT_TIMEOUT_MIN_MS);
    for (size_t i = 0; i < BACKOFF_STEPS; ++i)
        h2o_timeout_init(loop, &r->backoff[i], backoff_ms[i]);

    size_t total = pool_size + (tracking != 0);
    r->conns = h2o_mem_alloc(sizeof(*r->conns) * total);
    memset(r->conns, 0, sizeof(*r->conns) * total);
    if (tracking) {
        r->sub = &r->conns[pool_size];
        r->sub->is_sub = 1;
    }
    for (size_t i = 0; i < total; ++i) {
        r->conns[i].owner = r;
        r->conns[i].timer.cb = on_conn_timer;
        r->conns[i].flush_entry.cb = on_flush;
        conn_start(&r->conns[i]);
    }
    return r;
}

fm_redis_t *fm_redis_create(h2o_loop_t *loop, const char *host, int port, const char *password, int db,
                            size_t pool_size, uint64_t timeout_ms)
{
    return create(loop, host, port, password, db, pool_size, timeout_ms, 0);
}

fm_redis_t *fm_redis_create_tracking(h2o_loop_t *loop, const char *host, int port, const char *password, int db,
                                     size_t pool_size, uint64_t timeout_ms, fm_redis_invalidate_cb cb, void *data)
{
    fm_redis_t *r = create(loop, host, port, password, db, pool_size, timeout_ms, 1);
    if (r != NULL) {
        r->on_invalidate = cb;
        r->invalidate_data = data;
    }
    return r;
}

size_t fm_redis_connected(fm_redis_t *r)
{
    size_t up = 0;
    for (size_t i = 0; r != NULL && i < r->pool_size; ++i)
        if (r->conns[i].state == CONN_READY)
            ++up;
    return up;
}

void fm_redis_destroy(fm_redis_t *r)
{
    if (r == NULL)
        return;
    r->shutting_down = 1;

    for (size_t i = 0; i < r->pool_size + (r->sub != NULL); ++i) {
        redis_conn_t *c = &r->conns[i];
        if (h2o_timeout_is_linked(&c->timer))
            h2o_timeout_unlink(&c->timer);
        /* runs every pending callback with a NULL reply ("redis shutting down"), then ev_cleanup */
        if (c->ac != NULL)
            redisAsyncFree(c->ac);
    }
    while (!h2o_linklist_is_empty(&r->failing)) {
        redis_request_t *req = H2O_STRUCT_FROM_MEMBER(redis_request_t, failing_link, r->failing.next);
        h2o_linklist_unlink(&req->failing_link);
        req->cb(NULL, "redis shutting down", req->data);
        free(req);
    }
    if (h2o_timeout_is_linked(&r->failing_entry))
        h2o_timeout_unlink(&r->failing_entry);

    h2o_timeout_dispose(r->loop, &r->zero_timeout);
    h2o_timeout_dispose(r->loop, &r->next_turn_timeout);
    h2o_timeout_dispose(r->loop, &r->command_timeout);
    h2o_timeout_dispose(r->loop, &r->connect_timeout);
    for (size_t i = 0; i < BACKOFF_STEPS; ++i)
        h2o_timeout_dispose(r->loop, &r->backoff[i]);
    free(r->conns);
    free(r->host);
    free(r->password);
    free(r);
}
