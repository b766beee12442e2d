/* Async PostgreSQL pool on the h2o evloop: see pg.h. */
#include "pg.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define BACKOFF_STEPS 6
static const uint64_t backoff_ms[BACKOFF_STEPS] = {100, 200, 400, 800, 1600, 2000};
#define CONNECT_TIMEOUT_MIN_MS 1000
#define MAX_PARAMS 65535 /* the protocol's Bind message counts parameters in 16 bits */
/* Statements a pool prepares (fm_pg_query_prepared), at most: one bit each per connection. Past it, unnamed. */
#define PREPARED_MAX 64
/* A prepared statement the server no longer takes as it is: "cached plan must not change result type" (a migration
 * changed a table under it) or "prepared statement does not exist" (a pooler gave us another server session). */
#define STALE_PLAN_SQLSTATE "0A000"
#define NO_STATEMENT_SQLSTATE "26000"

typedef enum { CONN_DOWN, CONN_CONNECTING, CONN_IDLE, CONN_BUSY } conn_state_t;

typedef struct pg_query pg_query_t;

typedef struct pg_conn {
    fm_pg_t *owner;
    PGconn *pgconn;     /* NULL while down */
    h2o_socket_t *sock; /* watches a dup of PQsocket, see watch_socket() */
    conn_state_t state;
    int write_armed; /* an h2o_socket_notify_write is pending: it is one-shot and cannot be cancelled */
    int flushing;    /* PQflush returned 1: part of the query is still in libpq's output buffer */
    int recycling;   /* reopening after a query timeout: the server was fine a moment ago, so keep queueing */
    int preparing;   /* the query's statement is being prepared: its execution is sent once that result is in */
    uint64_t prepared;    /* bit i: the pool's statement i is prepared on this connection (as generation `names`) */
    unsigned names;       /* statement names are fm{names}_{i}: a stale set is left behind under the old names */
    pg_query_t *query;
    PGresult *result; /* kept while draining PQgetResult until it returns NULL */
    unsigned backoff_step;
    h2o_timeout_entry_t timer; /* connect deadline while connecting, reconnect delay while down */
} pg_conn_t;

struct pg_query {
    fm_pg_t *owner;
    pg_conn_t *conn; /* set while in flight */
    fm_pg_cb cb;
    void *data;
    const char *fail_errstr;
    h2o_linklist_t link; /* in `waiting` or `failing` */
    h2o_timeout_entry_t deadline;
    int nparams;
    int statement; /* the pool's prepared statement (index), or -1: an unnamed statement, parsed and planned anew */
    char **params; /* sql and params live in the same allocation as the query */
    char *sql;
};

struct fm_pg {
    h2o_loop_t *loop;
    char *conninfo;
    uint64_t timeout_ms;
    size_t pool_size;
    pg_conn_t *conns;
    h2o_linklist_t waiting; /* FIFO of queries without a connection */
    size_t waiting_count;
    h2o_linklist_t failing; /* queries answered with an error on the next loop turn */
    h2o_timeout_entry_t failing_entry;
    int in_failing; /* on_failing is running the failure callbacks */
    h2o_timeout_t zero_timeout;
    h2o_timeout_t next_turn_timeout; /* 1 ms: a zero timeout linked from its own callback runs in the same pass */
    h2o_timeout_t query_timeout;
    h2o_timeout_t connect_timeout;
    h2o_timeout_t backoff[BACKOFF_STEPS];
    int shutting_down;
    int unprepared;                          /* fm_pg_set_prepared(pg, 0): every query unnamed */
    const char *statements[PREPARED_MAX];    /* fm_pg_query_prepared's statements, by the caller's constant text */
    size_t statement_count;
};

static void conn_start(pg_conn_t *c);
static void pump(fm_pg_t *pg);

/* libpq messages end with a newline, which the JSON log line does not need. */
static int trimmed(const char *msg)
{
    size_t len = msg != NULL ? strlen(msg) : 0;
    while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == ' '))
        --len;
    return (int)len;
}

static void on_notice(void *arg, const char *message)
{
    /* libpq's default processor prints raw lines to stderr, which would break the JSON-lines log */
    fm_debug("pg notice: %.*s", trimmed(message), message);
}

/* --- failing queries on the next loop turn ----------------------------------------------------------------------- */

static void on_failing(h2o_timeout_entry_t *entry)
{
    fm_pg_t *pg = H2O_STRUCT_FROM_MEMBER(fm_pg_t, failing_entry, entry);
    h2o_linklist_t batch;

    /* only the failures queued so far; ones queued by these callbacks go to next_turn_timeout (fail_later) */
    h2o_linklist_init_anchor(&batch);
    h2o_linklist_insert_list(&batch, &pg->failing);
    pg->in_failing = 1;
    while (!h2o_linklist_is_empty(&batch)) {
        pg_query_t *q = H2O_STRUCT_FROM_MEMBER(pg_query_t, link, batch.next);
        h2o_linklist_unlink(&q->link);
        q->cb(NULL, q->fail_errstr, q->data);
        free(q);
    }
    pg->in_failing = 0;
}

/* Failures found inside fm_pg_query (or the pump it runs) must not call back synchronously: use a zero timeout. */
static void fail_later(fm_pg_t *pg, pg_query_t *q, const char *errstr)
{
    if (h2o_timeout_is_linked(&q->deadline))
        h2o_timeout_unlink(&q->deadline);
    q->fail_errstr = errstr;
    h2o_linklist_insert(&pg->failing, &q->link);
    if (!h2o_timeout_is_linked(&pg->failing_entry))
        h2o_timeout_link(pg->loop, pg->in_failing ? &pg->next_turn_timeout : &pg->zero_timeout, &pg->failing_entry);
}

static void fail_waiting(fm_pg_t *pg, const char *errstr)
{
    while (!h2o_linklist_is_empty(&pg->waiting)) {
        pg_query_t *q = H2O_STRUCT_FROM_MEMBER(pg_query_t, link, pg->waiting.next);
        h2o_linklist_unlink(&q->link);
        fail_later(pg, q, errstr);
    }
    pg->waiting_count = 0;
}

/* Connections that can take queued queries now or very soon. */
static size_t available(fm_pg_t *pg)
{
    size_t n = 0;
    for (size_t i = 0; i < pg->pool_size; ++i) {
        pg_conn_t *c = &pg->conns[i];
        if (c->state == CONN_IDLE || c->state == CONN_BUSY ||
            (c->state == CONN_CONNECTING && (c->recycling || c->backoff_step == 0)))
            ++n;
    }
    return n;
}

/* --- the libpq fd on the h2o loop -------------------------------------------------------------------------------- */

static void on_readable(h2o_socket_t *sock, const char *err);
static void on_writable(h2o_socket_t *sock, const char *err);

/* h2o closes the fd it watches, and libpq closes its socket by itself (on EOF, or when PQconnectPoll moves to the
 * next address). Watching a private dup keeps the epoll registration valid whatever libpq does, and closing it
 * with the h2o socket is always correct. */
static int watch_socket(pg_conn_t *c)
{
    int fd = PQsocket(c->pgconn), watched;
    if (fd < 0 || (watched = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0)
        return -1;
    c->sock = h2o_evloop_socket_create(c->owner->loop, watched, H2O_SOCKET_FLAG_DONT_READ);
    c->sock->data = c;
    c->write_armed = 0;
    return 0;
}

static void unwatch_socket(pg_conn_t *c)
{
    if (c->sock == NULL)
        return;
    h2o_socket_close(c->sock); /* also drops a pending write notification */
    c->sock = NULL;
    c->write_armed = 0;
}

static void arm_write(pg_conn_t *c)
{
    if (!c->write_armed) {
        c->write_armed = 1;
        h2o_socket_notify_write(c->sock, on_writable);
    }
}

/* --- connection lifecycle ---------------------------------------------------------------------------------------- */

static void schedule_reconnect(pg_conn_t *c)
{
    fm_pg_t *pg = c->owner;
    if (h2o_timeout_is_linked(&c->timer))
        h2o_timeout_unlink(&c->timer);
    h2o_timeout_link(pg->loop, &pg->backoff[c->backoff_step], &c->timer);
    if (c->backoff_step + 1 < BACKOFF_STEPS)
        ++c->backoff_step;
}

static void conn_close(pg_conn_t *c)
{
    unwatch_socket(c);
    if (c->result != NULL) {
        PQclear(c->result);
        c->result = NULL;
    }
    if (c->pgconn != NULL) {
        PQfinish(c->pgconn);
        c->pgconn = NULL;
    }
    c->state = CONN_DOWN;
    c->flushing = 0;
    c->preparing = 0;
    c->prepared = 0; /* a new session prepares anew */
    if (h2o_timeout_is_linked(&c->timer))
        h2o_timeout_unlink(&c->timer);
}

/* The connection failed or broke: its query fails, it retries with backoff, and if nothing is left to serve the
 * queue, waiting queries fail fast instead of hanging until their timeout. */
static void conn_lost(pg_conn_t *c, const char *why)
{
    fm_pg_t *pg = c->owner;
    pg_query_t *q = c->query;

    if (c->state == CONN_IDLE || c->state == CONN_BUSY)
        fm_warn("pg: connection lost, reconnecting: %.*s", trimmed(why), why);
    else if (c->backoff_step == 0)
        fm_warn("pg: connect failed: %.*s", trimmed(why), why);
    c->query = NULL;
    conn_close(c);
    c->recycling = 0;
    if (q != NULL) {
        q->conn = NULL;
        fail_later(pg, q, "pg disconnected");
    }
    schedule_reconnect(c);
    if (available(pg) == 0)
        fail_waiting(pg, "pg unavailable");
}

static void conn_established(pg_conn_t *c)
{
    if (PQsetnonblocking(c->pgconn, 1) != 0 || watch_socket(c) != 0) {
        conn_lost(c, PQerrorMessage(c->pgconn));
        return;
    }
    c->state = CONN_IDLE;
    c->recycling = 0;
    c->backoff_step = 0;
    if (h2o_timeout_is_linked(&c->timer))
        h2o_timeout_unlink(&c->timer);
    /* always read while up, so a server that goes away is noticed even when idle */
    h2o_socket_read_start(c->sock, on_readable);
    pump(c->owner);
}

/* One PQconnectPoll step. The socket can change between steps, so the watch is renewed each time. */
static void connect_step(pg_conn_t *c)
{
    unwatch_socket(c);
    switch (PQconnectPoll(c->pgconn)) {
    case PGRES_POLLING_READING:
        if (watch_socket(c) != 0)
            break;
        h2o_socket_read_start(c->sock, on_readable);
        return;
    case PGRES_POLLING_WRITING:
        if (watch_socket(c) != 0)
            break;
        arm_write(c);
        return;
    case PGRES_POLLING_OK:
        conn_established(c);
        return;
    default:
        break;
    }
    conn_lost(c, PQerrorMessage(c->pgconn));
}

static void conn_start(pg_conn_t *c)
{
    fm_pg_t *pg = c->owner;

    c->pgconn = PQconnectStart(pg->conninfo);
    if (c->pgconn == NULL) {
        conn_lost(c, "out of memory");
        return;
    }
    if (PQstatus(c->pgconn) == CONNECTION_BAD) {
        conn_lost(c, PQerrorMessage(c->pgconn));
        return;
    }
    PQsetNoticeProcessor(c->pgconn, on_notice, NULL);
    c->state = CONN_CONNECTING;
    h2o_timeout_link(pg->loop, &pg->connect_timeout, &c->timer);
    /* libpq's documented polling loop starts as if PQconnectPoll had returned PGRES_POLLING_WRITING */
    if (watch_socket(c) != 0) {
        conn_lost(c, "no socket");
        return;
    }
    arm_write(c);
}

static void on_conn_timer(h2o_timeout_entry_t *entry)
{
    pg_conn_t *c = H2O_STRUCT_FROM_MEMBER(pg_conn_t, timer, entry);

    if (c->state == CONN_DOWN)
        conn_start(c);
    else if (c->state == CONN_CONNECTING)
        conn_lost(c, "connect timeout");
}

/* --- queries ----------------------------------------------------------------------------------------------------- */

/* Returns 0 when the query is fully handed to the kernel or waits for writability, -1 if the connection broke. */
static int flush_query(pg_conn_t *c)
{
    int ret = PQflush(c->pgconn);
    if (ret < 0) {
        conn_lost(c, PQerrorMessage(c->pgconn));
        return -1;
    }
    c->flushing = ret == 1;
    if (c->flushing)
        arm_write(c);
    return 0;
}

static void statement_name(const pg_conn_t *c, int statement, char name[32])
{
    snprintf(name, 32, "fm%u_%d", c->names, statement);
}

/* Sends the query's next message: its statement's preparation (the first time on this connection), else its
 * execution. 0 once libpq took it, -1 if nothing reached the server. */
static int send_command(pg_conn_t *c, pg_query_t *q)
{
    const char *const *params = (const char *const *)q->params;
    if (q->statement < 0)
        return PQsendQueryParams(c->pgconn, q->sql, q->nparams, NULL, params, NULL, NULL, 0) ? 0 : -1;
    char name[32];
    statement_name(c, q->statement, name);
    if (!(c->prepared & (UINT64_C(1) << q->statement))) {
        c->preparing = 1;
        return PQsendPrepare(c->pgconn, name, q->sql, q->nparams, NULL) ? 0 : -1;
    }
    c->preparing = 0;
    return PQsendQueryPrepared(c->pgconn, name, q->nparams, params, NULL, NULL, 0) ? 0 : -1;
}

/* Nothing reached the server: the query goes back in front of the queue for another connection. */
static void send_failed(pg_conn_t *c, pg_query_t *q)
{
    fm_pg_t *pg = c->owner;
    c->query = NULL;
    q->conn = NULL;
    h2o_linklist_insert(pg->waiting.next, &q->link);
    ++pg->waiting_count;
    conn_lost(c, PQerrorMessage(c->pgconn));
}

static void send_query(pg_conn_t *c, pg_query_t *q)
{
    c->query = q;
    q->conn = c;
    c->state = CONN_BUSY;
    if (send_command(c, q) != 0) {
        send_failed(c, q);
        return;
    }
    flush_query(c);
}

/* FIFO: the oldest waiting query goes to the next idle connection. Never calls a callback itself. */
static void pump(fm_pg_t *pg)
{
    for (size_t i = 0; i < pg->pool_size && !h2o_linklist_is_empty(&pg->waiting); ++i) {
        pg_conn_t *c = &pg->conns[i];
        if (c->state != CONN_IDLE)
            continue;
        pg_query_t *q = H2O_STRUCT_FROM_MEMBER(pg_query_t, link, pg->waiting.next);
        h2o_linklist_unlink(&q->link);
        --pg->waiting_count;
        send_query(c, q);
    }
}

static void finish_query(pg_conn_t *c)
{
    fm_pg_t *pg = c->owner;
    pg_query_t *q = c->query;
    PGresult *res = c->result;
    const char *errstr = NULL;

    c->query = NULL;
    c->result = NULL;
    c->state = CONN_IDLE;
    q->conn = NULL;
    if (h2o_timeout_is_linked(&q->deadline))
        h2o_timeout_unlink(&q->deadline);
    if (q->statement >= 0 && res != NULL && PQresultStatus(res) == PGRES_FATAL_ERROR) {
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (state != NULL && (strcmp(state, STALE_PLAN_SQLSTATE) == 0 || strcmp(state, NO_STATEMENT_SQLSTATE) == 0)) {
            /* this answer stands; the next queries prepare their statements again, under new names */
            fm_warn("pg: prepared statements of a connection are stale (%s), preparing them again", state);
            c->prepared = 0;
            ++c->names;
        }
    }
    c->preparing = 0;
    /* A FATAL from a terminating server (e.g. 57P01) is not the query's answer: report the broken connection. */
    if (res == NULL || PQstatus(c->pgconn) == CONNECTION_BAD) {
        PQclear(res);
        res = NULL;
        errstr = "pg disconnected";
        conn_lost(c, PQerrorMessage(c->pgconn));
    }
    q->cb(res, errstr, q->data);
    PQclear(res);
    free(q);
    pump(pg);
}

/* Drains results until PQgetResult returns NULL: only then is the connection ready for the next query. */
static void collect_results(pg_conn_t *c)
{
    while (!PQisBusy(c->pgconn)) {
        PGresult *res = PQgetResult(c->pgconn);
        if (res == NULL) {
            if (c->preparing && c->result != NULL && PQresultStatus(c->result) == PGRES_COMMAND_OK) {
                /* prepared: now the execution (a failed preparation is the query's answer, as its error) */
                PQclear(c->result);
                c->result = NULL;
                c->prepared |= UINT64_C(1) << c->query->statement;
                if (send_command(c, c->query) != 0)
                    send_failed(c, c->query);
                else
                    flush_query(c);
                return;
            }
            finish_query(c);
            return;
        }
        ExecStatusType status = PQresultStatus(res);
        if (status == PGRES_COPY_IN || status == PGRES_COPY_OUT || status == PGRES_COPY_BOTH) {
            PQclear(res); /* the adapter has no COPY API; the connection is stuck in COPY mode, drop it */
            conn_lost(c, "COPY is not supported");
            return;
        }
        /* one statement gives one result; should there be more, keep the first error or else the last one */
        if (c->result == NULL) {
            c->result = res;
        } else if (PQresultStatus(c->result) == PGRES_FATAL_ERROR) {
            PQclear(res);
        } else {
            PQclear(c->result);
            c->result = res;
        }
    }
}

static void on_input(pg_conn_t *c)
{
    if (!PQconsumeInput(c->pgconn)) {
        conn_lost(c, PQerrorMessage(c->pgconn));
        return;
    }
    if (c->state == CONN_IDLE) {
        PGnotify *notify;
        while ((notify = PQnotifies(c->pgconn)) != NULL)
            PQfreemem(notify);
        if (PQstatus(c->pgconn) == CONNECTION_BAD)
            conn_lost(c, PQerrorMessage(c->pgconn));
        return;
    }
    /* libpq: while a send is incomplete, input must be consumed before flushing again or both sides can block */
    if (c->flushing && flush_query(c) != 0)
        return;
    collect_results(c);
}

static void on_readable(h2o_socket_t *sock, const char *err)
{
    pg_conn_t *c = sock->data;
    if (c->state == CONN_CONNECTING)
        connect_step(c);
    else if (c->state == CONN_IDLE || c->state == CONN_BUSY)
        on_input(c);
}

static void on_writable(h2o_socket_t *sock, const char *err)
{
    pg_conn_t *c = sock->data;
    c->write_armed = 0;
    if (c->state == CONN_CONNECTING)
        connect_step(c);
    else if (c->state == CONN_BUSY && c->flushing)
        flush_query(c);
}

static void on_deadline(h2o_timeout_entry_t *entry)
{
    pg_query_t *q = H2O_STRUCT_FROM_MEMBER(pg_query_t, deadline, entry);
    fm_pg_t *pg = q->owner;
    pg_conn_t *c = q->conn;

    if (c == NULL) {
        h2o_linklist_unlink(&q->link);
        --pg->waiting_count;
    } else {
        /* PQcancel would block on a new connection: drop this one and open a fresh one right away instead */
        c->query = NULL;
        q->conn = NULL;
        conn_close(c);
        c->recycling = 1;
        conn_start(c);
    }
    q->cb(NULL, "pg timeout", q->data);
    free(q);
}

static pg_query_t *query_new(fm_pg_t *pg, fm_pg_cb cb, void *data, const char *sql, int nparams,
                             const char *const *params)
{
    size_t sql_len = strlen(sql) + 1, size = sizeof(pg_query_t) + sizeof(char *) * (size_t)nparams + sql_len;
    for (int i = 0; i < nparams; ++i)
        if (params[i] != NULL)
            size += strlen(params[i]) + 1;

    pg_query_t *q = h2o_mem_alloc(size);
    memset(q, 0, sizeof(*q));
    q->owner = pg;
    q->cb = cb;
    q->data = data;
    q->deadline.cb = on_deadline;
    q->nparams = nparams;
    q->statement = -1;
    q->params = (char **)(q + 1);
    char *p = (char *)(q->params + nparams);
    q->sql = memcpy(p, sql, sql_len);
    p += sql_len;
    for (int i = 0; i < nparams; ++i) {
        if (params[i] == NULL) {
            q->params[i] = NULL;
        } else {
            size_t len = strlen(params[i]) + 1;
            q->params[i] = memcpy(p, params[i], len);
            p += len;
        }
    }
    return q;
}

static int query_submit(fm_pg_t *pg, fm_pg_cb cb, void *data, const char *sql, int nparams, const char *const *params,
                        int statement)
{
    if (pg == NULL || cb == NULL || sql == NULL || nparams < 0 || nparams > MAX_PARAMS ||
        (nparams > 0 && params == NULL) || pg->shutting_down)
        return -1;

    pg_query_t *q = query_new(pg, cb, data, sql, nparams, params);
    q->statement = statement;
    if (available(pg) == 0) {
        fail_later(pg, q, "pg unavailable");
        return 0;
    }
    if (pg->waiting_count >= FM_PG_MAX_QUEUE) {
        fail_later(pg, q, "pg queue full");
        return 0;
    }
    if (pg->timeout_ms != 0)
        h2o_timeout_link(pg->loop, &pg->query_timeout, &q->deadline);
    h2o_linklist_insert(&pg->waiting, &q->link);
    ++pg->waiting_count;
    pump(pg);
    return 0;
}

int fm_pg_query(fm_pg_t *pg, fm_pg_cb cb, void *data, const char *sql, int nparams, const char *const *params)
{
    return query_submit(pg, cb, data, sql, nparams, params, -1);
}

int fm_pg_query_prepared(fm_pg_t *pg, fm_pg_cb cb, void *data, const char *sql, int nparams, const char *const *params)
{
    int statement = -1;
    if (pg != NULL && !pg->unprepared) {
        /* the caller's constant text is the statement's identity: a pointer comparison per known statement */
        for (size_t i = 0; i < pg->statement_count && statement < 0; ++i)
            if (pg->statements[i] == sql)
                statement = (int)i;
        if (statement < 0 && pg->statement_count < PREPARED_MAX && sql != NULL) {
            pg->statements[pg->statement_count] = sql;
            statement = (int)pg->statement_count++;
        }
    }
    return query_submit(pg, cb, data, sql, nparams, params, statement);
}

void fm_pg_set_prepared(fm_pg_t *pg, int on)
{
    if (pg != NULL)
        pg->unprepared = !on;
}

/* --- pool -------------------------------------------------------------------------------------------------------- */

fm_pg_t *fm_pg_create(h2o_loop_t *loop, const char *conninfo, size_t pool_size, uint64_t timeout_ms)
{
    if (loop == NULL || conninfo == NULL || pool_size == 0)
        return NULL;
    /* a conninfo that does not parse would fail every reconnect forever: refuse it now */
    char *parse_error = NULL;
    PQconninfoOption *options = PQconninfoParse(conninfo, &parse_error);
    if (options == NULL) {
        fm_error("pg: invalid conninfo: %.*s", trimmed(parse_error), parse_error != NULL ? parse_error : "");
        PQfreemem(parse_error);
        return NULL;
    }
    PQconninfoFree(options);

    fm_pg_t *pg = h2o_mem_alloc(sizeof(*pg));
    memset(pg, 0, sizeof(*pg));
    pg->loop = loop;
    pg->conninfo = h2o_strdup(NULL, conninfo, SIZE_MAX).base;
    pg->timeout_ms = timeout_ms;
    pg->pool_size = pool_size;
    h2o_linklist_init_anchor(&pg->waiting);
    h2o_linklist_init_anchor(&pg->failing);
    pg->failing_entry.cb = on_failing;
    h2o_timeout_init(loop, &pg->zero_timeout, 0);
    h2o_timeout_init(loop, &pg->next_turn_timeout, 1);
    h2o_timeout_init(loop, &pg->query_timeout, timeout_ms);
    h2o_timeout_init(loop, &pg->connect_timeout,
                     timeout_ms > CONNECT_TIMEOUT_MIN_MS ? timeout_ms : CONNECT_TIMEOUT_MIN_MS);
    for (size_t i = 0; i < BACKOFF_STEPS; ++i)
        h2o_timeout_init(loop, &pg->backoff[i], backoff_ms[i]);

    pg->conns = h2o_mem_alloc(sizeof(*pg->conns) * pool_size);
    memset(pg->conns, 0, sizeof(*pg->conns) * pool_size);
    for (size_t i = 0; i < pool_size; ++i) {
        pg->conns[i].owner = pg;
        pg->conns[i].timer.cb = on_conn_timer;
        conn_start(&pg->conns[i]);
    }
    return pg;
}

size_t fm_pg_connected(fm_pg_t *pg)
{
    size_t n = 0;
    for (size_t i = 0; pg != NULL && i < pg->pool_size; ++i)
        if (pg->conns[i].state == CONN_IDLE || pg->conns[i].state == CONN_BUSY)
            ++n;
    return n;
}

size_t fm_pg_busy(fm_pg_t *pg)
{
    size_t n = 0;
    for (size_t i = 0; pg != NULL && i < pg->pool_size; ++i)
        if (pg->conns[i].state == CONN_BUSY)
            ++n;
    return n;
}

size_t fm_pg_queued(fm_pg_t *pg)
{
    return pg != NULL ? pg->waiting_count : 0;
}

void fm_pg_destroy(fm_pg_t *pg)
{
    if (pg == NULL)
        return;
    pg->shutting_down = 1;

    h2o_linklist_t pending;
    h2o_linklist_init_anchor(&pending);
    for (size_t i = 0; i < pg->pool_size; ++i) {
        pg_conn_t *c = &pg->conns[i];
        if (c->query != NULL) {
            h2o_linklist_insert(&pending, &c->query->link);
            c->query = NULL;
        }
        conn_close(c);
    }
    h2o_linklist_insert_list(&pending, &pg->waiting);
    h2o_linklist_insert_list(&pending, &pg->failing);
    pg->waiting_count = 0;
    while (!h2o_linklist_is_empty(&pending)) {
        pg_query_t *q = H2O_STRUCT_FROM_MEMBER(pg_query_t, link, pending.next);
        h2o_linklist_unlink(&q->link);
        if (h2o_timeout_is_linked(&q->deadline))
            h2o_timeout_unlink(&q->deadline);
        q->cb(NULL, "pg shutting down", q->data);
        free(q);
    }
    if (h2o_timeout_is_linked(&pg->failing_entry))
        h2o_timeout_unlink(&pg->failing_entry);

    h2o_timeout_dispose(pg->loop, &pg->zero_timeout);
    h2o_timeout_dispose(pg->loop, &pg->next_turn_timeout);
    h2o_timeout_dispose(pg->loop, &pg->query_timeout);
    h2o_timeout_dispose(pg->loop, &pg->connect_timeout);
    for (size_t i = 0; i < BACKOFF_STEPS; ++i)
        h2o_timeout_dispose(pg->loop, &pg->backoff[i]);
    free(pg->conns);
    free(pg->conninfo);
    free(pg);
}
