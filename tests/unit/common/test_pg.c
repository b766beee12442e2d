/*
 * common/pg.c against a real PostgreSQL 15 that this test initializes (initdb as user postgres, we run as root)
 * and starts on a free loopback port in a temp dir, and stops by PID, also when a test fails.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pg.h"
#include "loop_test.h"

#define PG_BIN "/usr/lib/postgresql/15/bin"
#define MANY 1000
#define OVERFLOW 10

typedef struct {
    int called;
    int inconsistent; /* res and errstr both set or both unset */
    int order;        /* completion sequence number */
    ExecStatusType status;
    char sqlstate[8];
    char value[64];  /* first field of the first row */
    char value2[64]; /* second field of the first row */
    char err[64];
} result_t;

static struct {
    char dir[64];
    char data_dir[96];
    char log_path[128];
    int port;
    char port_str[16];
    char conninfo[160];
    pid_t pid;
    h2o_loop_t *loop;
    fm_pg_t *pg; /* the adapter under test */
    result_t slots[16];
    size_t next_slot;
    int completions;
    result_t many[FM_PG_MAX_QUEUE + MANY];
} env;

/* In a forked child: become the postgres user (initdb and postgres refuse root), log to the temp dir. */
static void child_become_postgres(void)
{
    struct passwd *pw = getpwnam("postgres");
    if (pw == NULL || setgroups(0, NULL) != 0 || setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0) {
        fprintf(stderr, "cannot become user postgres: %s\n", strerror(errno));
        _exit(126);
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* after setuid, which clears it: never outlive a killed test */
    int log_fd = open(env.log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (log_fd >= 0) {
        dup2(log_fd, 1);
        dup2(log_fd, 2);
    }
}

static void stop_postgres(void)
{
    if (env.pid > 0) {
        /* immediate shutdown: the postmaster takes its backends down with it, so a restart finds no leftovers */
        kill(env.pid, SIGQUIT);
        waitpid(env.pid, NULL, 0);
        env.pid = 0;
    }
}

/*
 * The postmaster is exec'd directly (rather than through pg_ctl, which daemonizes it) so that it is this
 * process's child: its PID is known, waitpid() reaps it and PDEATHSIG covers a test killed outright.
 * Fails the test loudly (never skips) when the binaries are missing or the server does not come up.
 */
static void start_postgres(void)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        child_become_postgres();
        execl(PG_BIN "/postgres", "postgres", "-D", env.data_dir, "-p", env.port_str, "-k", env.dir, "-c",
              "listen_addresses=127.0.0.1", "-c", "fsync=off", (char *)NULL);
        fprintf(stderr, "exec postgres: %s\n", strerror(errno));
        _exit(127);
    }
    env.pid = pid;
    uint64_t deadline = now_ms() + 15000;
    while (PQping(env.conninfo) != PQPING_OK) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            env.pid = 0;
            fail_msg("postgres exited (status %d) before accepting connections; see %s", status, env.log_path);
        }
        if (now_ms() > deadline)
            fail_msg("postgres on port %d not ready within 15 s; see %s", env.port, env.log_path);
        usleep(20000);
    }
}

static void init_cluster(void)
{
    if (access(PG_BIN "/initdb", X_OK) != 0 || access(PG_BIN "/postgres", X_OK) != 0)
        fail_msg("PostgreSQL 15 binaries missing under " PG_BIN " (package postgresql-15)");
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        child_become_postgres();
        execl(PG_BIN "/initdb", "initdb", "-D", env.data_dir, "-A", "trust", "-U", "postgres", "--no-sync",
              (char *)NULL);
        _exit(127);
    }
    int status;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("initdb failed (status %d); see %s", status, env.log_path);
}

static int group_setup(void **state)
{
    strcpy(env.dir, "/tmp/fm-test-pg-XXXXXX");
    if (mkdtemp(env.dir) == NULL)
        return -1;
    struct passwd *pw = getpwnam("postgres");
    if (pw == NULL)
        fail_msg("user postgres missing (package postgresql-15)");
    /* the server writes its data, log and socket here */
    if (chown(env.dir, pw->pw_uid, pw->pw_gid) != 0)
        fail_msg("chown %s: %s", env.dir, strerror(errno));
    snprintf(env.data_dir, sizeof(env.data_dir), "%s/data", env.dir);
    snprintf(env.log_path, sizeof(env.log_path), "%s/server.log", env.dir);
    env.port = free_port();
    snprintf(env.port_str, sizeof(env.port_str), "%d", env.port);
    snprintf(env.conninfo, sizeof(env.conninfo),
             "host=127.0.0.1 port=%d dbname=postgres user=postgres connect_timeout=2", env.port);
    atexit(stop_postgres);
    init_cluster();
    start_postgres();
    env.loop = h2o_evloop_create();
    return 0;
}

static int group_teardown(void **state)
{
    stop_postgres();
    if (env.loop != NULL) {
        h2o_evloop_run(env.loop, 0); /* frees the sockets the adapter disposed */
        h2o_evloop_destroy(env.loop);
    }
    char command[128];
    snprintf(command, sizeof(command), "rm -rf '%s'", env.dir);
    if (system(command) != 0)
        fprintf(stderr, "could not remove %s\n", env.dir);
    return 0;
}

/* Records the answer; no cmocka assert here, a longjmp out of the loop would leave h2o mid-iteration. */
static void on_result(PGresult *res, const char *errstr, void *data)
{
    result_t *out = data;
    ++out->called;
    out->order = env.completions++;
    if ((errstr == NULL) == (res == NULL))
        out->inconsistent = 1;
    if (errstr != NULL) {
        snprintf(out->err, sizeof(out->err), "%s", errstr);
        return;
    }
    out->status = PQresultStatus(res);
    const char *sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    snprintf(out->sqlstate, sizeof(out->sqlstate), "%s", sqlstate != NULL ? sqlstate : "");
    if (out->status == PGRES_TUPLES_OK && PQntuples(res) > 0) {
        snprintf(out->value, sizeof(out->value), "%s", PQgetisnull(res, 0, 0) ? "(null)" : PQgetvalue(res, 0, 0));
        if (PQnfields(res) > 1)
            snprintf(out->value2, sizeof(out->value2), "%s", PQgetisnull(res, 0, 1) ? "(null)" : PQgetvalue(res, 0, 1));
    }
}

/* Results live in static storage: if a test fails midway, the teardown's fm_pg_destroy still answers its pending
 * callbacks, and they must not write into a dead stack frame. */
static result_t *slot(void)
{
    assert_true(env.next_slot < sizeof(env.slots) / sizeof(env.slots[0]));
    return &env.slots[env.next_slot++];
}

static int all_called(const result_t *results, size_t count)
{
    for (size_t i = 0; i < count; ++i)
        if (!results[i].called)
            return 0;
    return 1;
}

static int test_setup(void **state)
{
    memset(env.slots, 0, sizeof(env.slots));
    env.next_slot = 0;
    return 0;
}

/* Destroys what a failed test left, so later tests and the loop's destruction start clean. */
static int test_teardown(void **state)
{
    fm_pg_destroy(env.pg);
    env.pg = NULL;
    return 0;
}

static void destroy_pool(void)
{
    fm_pg_destroy(env.pg);
    env.pg = NULL;
}

static fm_pg_t *pool_up(size_t pool_size, uint64_t timeout_ms)
{
    fm_pg_t *pg = env.pg = fm_pg_create(env.loop, env.conninfo, pool_size, timeout_ms);
    assert_non_null(pg);
    assert_true(RUN_UNTIL(fm_pg_connected(pg) == pool_size, 5000));
    return pg;
}

/* Sends a query and checks that the callback did not run inside the call. */
#define QUERY(pg, res, sql, nparams, params)                                                                           \
    do {                                                                                                               \
        assert_int_equal(fm_pg_query((pg), on_result, (res), (sql), (nparams), (params)), 0);                          \
        assert_int_equal((res)->called, 0);                                                                            \
    } while (0)

/* The callback ran exactly once, with exactly one of res and errstr. */
#define ANSWERED_ONCE(res)                                                                                             \
    do {                                                                                                               \
        assert_int_equal((res)->called, 1);                                                                            \
        assert_int_equal((res)->inconsistent, 0);                                                                      \
    } while (0)

static void test_roundtrip_and_null_params(void **state)
{
    fm_pg_t *pg = pool_up(2, 2000);
    result_t *sum = slot(), *nulls = slot();
    char param[8] = "41";
    const char *sum_params[] = {param};
    const char *null_params[] = {NULL, "x"};

    QUERY(pg, sum, "SELECT $1::int + 1", 1, sum_params);
    strcpy(param, "99"); /* the adapter copied the parameter */
    QUERY(pg, nulls, "SELECT $1::text IS NULL, $2::text", 2, null_params);
    assert_true(RUN_UNTIL(sum->called && nulls->called, 2000));
    ANSWERED_ONCE(sum);
    assert_int_equal(sum->status, PGRES_TUPLES_OK);
    assert_string_equal(sum->value, "42");
    ANSWERED_ONCE(nulls);
    assert_string_equal(nulls->value, "t");
    assert_string_equal(nulls->value2, "x");

    /* bad arguments are refused up front; the callback never runs */
    result_t *refused = slot();
    assert_int_equal(fm_pg_query(pg, on_result, refused, NULL, 0, NULL), -1);
    assert_int_equal(fm_pg_query(pg, on_result, refused, "SELECT $1", 1, NULL), -1);
    assert_null(fm_pg_create(env.loop, "host='unterminated", 1, 100));
    run_for(20);
    assert_int_equal(refused->called, 0);
    destroy_pool();
}

static void test_error_results_carry_sqlstate(void **state)
{
    fm_pg_t *pg = pool_up(1, 2000);
    result_t *syntax = slot(), *create = slot(), *first = slot(), *duplicate = slot(), *after = slot();
    const char *id[] = {"7"};

    QUERY(pg, syntax, "SELEC 1", 0, NULL);
    QUERY(pg, create, "CREATE TEMP TABLE uniq (id int PRIMARY KEY)", 0, NULL);
    QUERY(pg, first, "INSERT INTO uniq VALUES ($1)", 1, id);
    QUERY(pg, duplicate, "INSERT INTO uniq VALUES ($1)", 1, id);
    QUERY(pg, after, "SELECT count(*) FROM uniq", 0, NULL);
    assert_true(RUN_UNTIL(after->called, 2000));
    ANSWERED_ONCE(syntax);
    assert_int_equal(syntax->status, PGRES_FATAL_ERROR);
    assert_string_equal(syntax->sqlstate, "42601");
    assert_int_equal(create->status, PGRES_COMMAND_OK);
    assert_int_equal(first->status, PGRES_COMMAND_OK);
    ANSWERED_ONCE(duplicate);
    assert_int_equal(duplicate->status, PGRES_FATAL_ERROR);
    assert_string_equal(duplicate->sqlstate, "23505");
    /* an error result leaves the connection usable (same connection: the temp table is visible) */
    assert_string_equal(after->value, "1");
    assert_int_equal(fm_pg_connected(pg), 1);
    destroy_pool();
}

static void test_many_concurrent_queued_fifo(void **state)
{
    fm_pg_t *pg = pool_up(4, 10000);
    static char params[MANY][12];
    size_t max_queued = 0, max_busy = 0;
    memset(env.many, 0, sizeof(env.many));

    for (int i = 0; i < MANY; ++i) {
        const char *param[] = {params[i]};
        snprintf(params[i], sizeof(params[i]), "%d", i);
        QUERY(pg, &env.many[i], "SELECT $1::int", 1, param);
    }
    assert_int_equal(fm_pg_busy(pg), 4);
    assert_int_equal(fm_pg_queued(pg), MANY - 4);
    uint64_t deadline = now_ms() + 10000;
    while (!all_called(env.many, MANY) && now_ms() < deadline) {
        if (fm_pg_queued(pg) > max_queued)
            max_queued = fm_pg_queued(pg);
        if (fm_pg_busy(pg) > max_busy)
            max_busy = fm_pg_busy(pg);
        h2o_evloop_run(env.loop, 10);
    }
    assert_true(max_busy <= 4);
    int first_order = env.many[0].order;
    for (int i = 0; i < MANY; ++i)
        if (env.many[i].order < first_order)
            first_order = env.many[i].order;
    for (int i = 0; i < MANY; ++i) {
        ANSWERED_ONCE(&env.many[i]);
        assert_string_equal(env.many[i].err, "");
        assert_int_equal(atoi(env.many[i].value), i);
        /* FIFO: query i was sent only once all but at most 3 of the queries before it had completed */
        assert_true(env.many[i].order - first_order >= i - 3);
    }
    assert_int_equal(fm_pg_queued(pg), 0);
    assert_int_equal(fm_pg_busy(pg), 0);
    destroy_pool();
}

/* One connection in flight, FM_PG_MAX_QUEUE waiting: the rest fail with "pg queue full", the others succeed. */
static void test_queue_full(void **state)
{
    fm_pg_t *pg = pool_up(1, 20000);
    size_t total = 1 + FM_PG_MAX_QUEUE + OVERFLOW, full = 0;
    memset(env.many, 0, sizeof(env.many));

    for (size_t i = 0; i < total; ++i)
        QUERY(pg, &env.many[i], "SELECT 1", 0, NULL);
    assert_int_equal(fm_pg_queued(pg), FM_PG_MAX_QUEUE);
    assert_true(RUN_UNTIL(all_called(env.many, total), 20000));
    for (size_t i = 0; i < total; ++i) {
        ANSWERED_ONCE(&env.many[i]);
        if (strcmp(env.many[i].err, "pg queue full") == 0)
            ++full;
        else
            assert_string_equal(env.many[i].value, "1");
    }
    assert_int_equal(full, OVERFLOW);
    destroy_pool();
}

/* A parameter larger than the socket buffers: PQflush returns 1 and the adapter waits for writability. */
static void test_large_parameter_is_flushed(void **state)
{
    fm_pg_t *pg = pool_up(1, 10000);
    result_t *len = slot();
    size_t size = 16 << 20;
    char *big = malloc(size + 1);
    assert_non_null(big);
    memset(big, 'a', size);
    big[size] = '\0';
    const char *param[] = {big};

    QUERY(pg, len, "SELECT length($1)", 1, param);
    free(big);
    assert_true(RUN_UNTIL(len->called, 10000));
    ANSWERED_ONCE(len);
    assert_string_equal(len->err, "");
    assert_string_equal(len->value, "16777216");
    destroy_pool();
}

/* The query times out; its connection is reopened, and the next query succeeds on it. */
static void test_timeout_then_next_query_works(void **state)
{
    fm_pg_t *pg = pool_up(1, 200);
    result_t *slow = slot(), *next = slot();

    uint64_t start = now_ms();
    QUERY(pg, slow, "SELECT pg_sleep(1)", 0, NULL);
    assert_true(RUN_UNTIL(slow->called, 2000));
    ANSWERED_ONCE(slow);
    assert_string_equal(slow->err, "pg timeout");
    assert_in_range(now_ms() - start, 150, 600);

    /* The connection is reopened (a new backend: under a loaded machine that alone can take more than the 200 ms
     * query timeout, which would time the next query out while it waits for it, as it should); then it works. */
    assert_true(RUN_UNTIL(fm_pg_connected(pg) == 1, 10000));
    QUERY(pg, next, "SELECT 'ok'", 0, NULL);
    assert_true(RUN_UNTIL(next->called, 1000));
    ANSWERED_ONCE(next);
    assert_string_equal(next->err, "");
    assert_string_equal(next->value, "ok");
    assert_int_equal(fm_pg_connected(pg), 1);
    run_for(100);
    assert_int_equal(slow->called, 1);
    destroy_pool();
}

static void test_unavailable_and_destroy(void **state)
{
    /* nothing listens there: queries fail on the next loop turn, not inside the call and not after a timeout */
    char conninfo[128];
    snprintf(conninfo, sizeof(conninfo), "host=127.0.0.1 port=%d dbname=postgres user=postgres", free_port());
    fm_pg_t *pg = env.pg = fm_pg_create(env.loop, conninfo, 2, 5000);
    result_t *down = slot(), *pending = slot(), *queued = slot(), *failing = slot();
    assert_non_null(pg);
    uint64_t start = now_ms();
    QUERY(pg, down, "SELECT 1", 0, NULL);
    assert_true(RUN_UNTIL(down->called, 1000));
    ANSWERED_ONCE(down);
    assert_string_equal(down->err, "pg unavailable");
    assert_true(now_ms() - start < 250);
    QUERY(pg, failing, "SELECT 1", 0, NULL);
    destroy_pool(); /* before the loop turn that would fail it */
    ANSWERED_ONCE(failing);
    assert_string_equal(failing->err, "pg shutting down");

    /* destroy answers the query in flight and the queued one */
    pg = pool_up(1, 0);
    QUERY(pg, pending, "SELECT pg_sleep(5)", 0, NULL);
    QUERY(pg, queued, "SELECT 1", 0, NULL);
    run_for(50);
    destroy_pool();
    ANSWERED_ONCE(pending);
    assert_string_equal(pending->err, "pg shutting down");
    ANSWERED_ONCE(queued);
    assert_string_equal(queued->err, "pg shutting down");
}

/* The server dies: the query in flight and new ones fail quickly; it comes back on the same port: the same
 * adapter reconnects and queries succeed again. */
static void test_server_restart(void **state)
{
    fm_pg_t *pg = pool_up(2, 10000);
    result_t *in_flight = slot(), *while_down = slot(), *after = slot();

    QUERY(pg, in_flight, "SELECT pg_sleep(5)", 0, NULL);
    run_for(50);
    uint64_t start = now_ms();
    stop_postgres();
    assert_true(RUN_UNTIL(in_flight->called, 1000));
    ANSWERED_ONCE(in_flight);
    assert_string_equal(in_flight->err, "pg disconnected");
    assert_true(RUN_UNTIL(fm_pg_connected(pg) == 0, 1000));
    assert_true(now_ms() - start < 1500);

    start = now_ms();
    QUERY(pg, while_down, "SELECT 1", 0, NULL);
    assert_true(RUN_UNTIL(while_down->called, 1000));
    ANSWERED_ONCE(while_down);
    assert_string_equal(while_down->err, "pg unavailable");
    assert_true(now_ms() - start < 250);

    run_for(500); /* let the backoff grow a little before the server returns */
    start_postgres();
    assert_true(RUN_UNTIL(fm_pg_connected(pg) == 2, 10000));
    QUERY(pg, after, "SELECT 'back'", 0, NULL);
    assert_true(RUN_UNTIL(after->called, 2000));
    ANSWERED_ONCE(after);
    assert_string_equal(after->value, "back");
    destroy_pool();
}

/* fm_pg_query_prepared: prepared once per connection, then only executed; a bad statement answers its error and the
 * connection goes on; a statement a migration made stale fails once and is prepared again; off, nothing is prepared. */
static const char prep_double[] = "SELECT $1::int * 2, (SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'fm%')";
static const char prep_bad[] = "SELEC $1";
static const char prep_star[] = "SELECT * FROM prep_t";
static const char prep_off[] = "SELECT 7, (SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'fm%')";

#define QUERY_PREPARED(pg, res, sql, nparams, params)                                                                  \
    do {                                                                                                               \
        assert_int_equal(fm_pg_query_prepared((pg), on_result, (res), (sql), (nparams), (params)), 0);                 \
        assert_int_equal((res)->called, 0);                                                                            \
    } while (0)

static void test_prepared_statements(void **state)
{
    fm_pg_t *pg = pool_up(1, 2000);
    result_t *first = slot(), *second = slot(), *bad = slot(), *after_bad = slot(), *create = slot(),
             *star = slot(), *alter = slot(), *stale = slot(), *again = slot(), *off = slot();
    const char *p21[] = {"21"}, *p5[] = {"5"};

    QUERY_PREPARED(pg, first, prep_double, 1, p21);
    QUERY_PREPARED(pg, second, prep_double, 1, p5);
    QUERY_PREPARED(pg, bad, prep_bad, 1, p5);
    QUERY_PREPARED(pg, after_bad, prep_double, 1, p21);
    assert_true(RUN_UNTIL(after_bad->called, 2000));
    ANSWERED_ONCE(first);
    assert_string_equal(first->value, "42");
    assert_string_equal(first->value2, "1"); /* prepared (as fm0_0) before it ran */
    ANSWERED_ONCE(second);
    assert_string_equal(second->value, "10");
    assert_string_equal(second->value2, "1"); /* not prepared twice */
    ANSWERED_ONCE(bad);
    assert_int_equal(bad->status, PGRES_FATAL_ERROR);
    assert_string_equal(bad->sqlstate, "42601");
    ANSWERED_ONCE(after_bad);
    assert_string_equal(after_bad->value, "42");
    assert_string_equal(after_bad->value2, "1");

    QUERY(pg, create, "CREATE TEMP TABLE prep_t AS SELECT 1 AS a", 0, NULL);
    QUERY_PREPARED(pg, star, prep_star, 0, NULL);
    QUERY(pg, alter, "ALTER TABLE prep_t ADD COLUMN b int DEFAULT 5", 0, NULL);
    QUERY_PREPARED(pg, stale, prep_star, 0, NULL);
    QUERY_PREPARED(pg, again, prep_star, 0, NULL);
    assert_true(RUN_UNTIL(again->called, 2000));
    assert_int_equal(create->status, PGRES_COMMAND_OK);
    assert_string_equal(star->value, "1");
    assert_string_equal(star->value2, "");
    assert_int_equal(alter->status, PGRES_COMMAND_OK);
    ANSWERED_ONCE(stale);
    assert_string_equal(stale->sqlstate, "0A000"); /* cached plan must not change result type */
    ANSWERED_ONCE(again);
    assert_int_equal(again->status, PGRES_TUPLES_OK);
    assert_string_equal(again->value, "1");
    assert_string_equal(again->value2, "5");

    fm_pg_set_prepared(pg, 0);
    QUERY_PREPARED(pg, off, prep_off, 0, NULL);
    assert_true(RUN_UNTIL(off->called, 2000));
    ANSWERED_ONCE(off);
    assert_string_equal(off->value, "7");
    assert_string_equal(off->value2, "3"); /* fm0_0, fm0_2 before the stale set, fm1_2 after: no new one */
    assert_int_equal(fm_pg_connected(pg), 1);
    destroy_pool();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip_and_null_params, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_error_results_carry_sqlstate, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_many_concurrent_queued_fifo, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_queue_full, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_large_parameter_is_flushed, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_timeout_then_next_query_works, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_unavailable_and_destroy, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_server_restart, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_prepared_statements, test_setup, test_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
