/*
 * common/redis.c against a real redis-server that this test starts on a free loopback port (with a password, so
 * the AUTH/SELECT handshake is exercised) and stops by PID, also when a test fails.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "rcache.h"
#include "redis.h"
#include "loop_test.h"

#define PASSWORD "s3cret with spaces" /* AUTH must go out as one binary-safe argument */
#define DB 3

typedef struct {
    int called;
    int inconsistent; /* reply and errstr both set or both unset */
    int type;
    long long integer;
    char str[256];
    size_t len;
    char err[64];
} result_t;

#define MANY 1000

static struct {
    char dir[64];
    char port_str[16];
    int port;
    pid_t pid;
    h2o_loop_t *loop;
    fm_redis_t *r; /* the adapter under test */
    result_t slots[16];
    size_t next_slot;
    result_t many[MANY];
} env;

/* A blocking PING with AUTH straight to the server: tells when it accepts connections. */
static int server_answers(void)
{
    struct timeval tv = {0, 200000};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", env.port, tv);
    int ok = 0;
    if (c != NULL && c->err == 0) {
        redisReply *reply = redisCommand(c, "AUTH %s", PASSWORD);
        ok = reply != NULL && reply->type == REDIS_REPLY_STATUS;
        freeReplyObject(reply);
    }
    redisFree(c);
    return ok;
}

static void stop_redis(void)
{
    if (env.pid > 0) {
        kill(env.pid, SIGKILL);
        waitpid(env.pid, NULL, 0);
        env.pid = 0;
    }
}

/* Fails the test loudly (never skips) when redis-server is missing or does not come up. */
static void start_redis(void)
{
    char log_path[128];
    snprintf(log_path, sizeof(log_path), "%s/redis.log", env.dir);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a test process that was killed outright */
        int log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (log_fd >= 0) {
            dup2(log_fd, 1);
            dup2(log_fd, 2);
        }
        execlp("redis-server", "redis-server", "--port", env.port_str, "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", env.dir, "--daemonize", "no", "--requirepass", PASSWORD,
               "--enable-debug-command", "yes", (char *)NULL);
        fprintf(stderr, "exec redis-server: %s\n", strerror(errno));
        _exit(127);
    }
    env.pid = pid;
    uint64_t deadline = now_ms() + 5000;
    while (!server_answers()) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            env.pid = 0;
            fail_msg("redis-server exited (status %d) before answering; is it installed? see %s", status, log_path);
        }
        if (now_ms() > deadline)
            fail_msg("redis-server on port %d did not answer within 5 s; see %s", env.port, log_path);
        usleep(20000);
    }
}

static int group_setup(void **state)
{
    signal(SIGPIPE, SIG_IGN); /* hiredis writes with write(2) */
    strcpy(env.dir, "/tmp/fm-test-redis-XXXXXX");
    if (mkdtemp(env.dir) == NULL)
        return -1;
    env.port = free_port();
    snprintf(env.port_str, sizeof(env.port_str), "%d", env.port);
    atexit(stop_redis);
    start_redis();
    env.loop = h2o_evloop_create();
    return 0;
}

static int group_teardown(void **state)
{
    stop_redis();
    if (env.loop != NULL) {
        h2o_evloop_run(env.loop, 0); /* frees the sockets the adapters disposed */
        h2o_evloop_destroy(env.loop);
    }
    char log_path[128];
    snprintf(log_path, sizeof(log_path), "%s/redis.log", env.dir);
    unlink(log_path);
    rmdir(env.dir);
    return 0;
}

/* Records the answer; no cmocka assert here, a longjmp out of the loop would leave h2o mid-iteration. */
static void on_result(redisReply *reply, const char *errstr, void *data)
{
    result_t *res = data;
    ++res->called;
    if ((errstr == NULL) == (reply == NULL))
        res->inconsistent = 1;
    if (errstr != NULL) {
        snprintf(res->err, sizeof(res->err), "%s", errstr);
        return;
    }
    res->type = reply->type;
    res->integer = reply->integer;
    if (reply->str != NULL) {
        res->len = reply->len;
        memcpy(res->str, reply->str, reply->len < sizeof(res->str) ? reply->len : sizeof(res->str));
    }
}

/* Results live in static storage: if a test fails midway, the teardown's fm_redis_destroy still answers its
 * pending callbacks, and they must not write into a dead stack frame. */
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
    fm_redis_destroy(env.r);
    env.r = NULL;
    return 0;
}

static void destroy_pool(void)
{
    fm_redis_destroy(env.r);
    env.r = NULL;
}

static fm_redis_t *pool_up(size_t pool_size, uint64_t timeout_ms)
{
    fm_redis_t *r = env.r = fm_redis_create(env.loop, "127.0.0.1", env.port, PASSWORD, DB, pool_size, timeout_ms);
    assert_non_null(r);
    assert_true(RUN_UNTIL(fm_redis_connected(r) == pool_size, 3000));
    return r;
}

/* Sends a command and checks that the callback did not run inside the call. */
#define SEND(r, res, ...)                                                                                              \
    do {                                                                                                               \
        assert_int_equal(fm_redis_command((r), on_result, (res), __VA_ARGS__), 0);                                     \
        assert_int_equal((res)->called, 0);                                                                            \
    } while (0)

/* The callback ran exactly once, with exactly one of reply and errstr. */
#define ANSWERED_ONCE(res)                                                                                             \
    do {                                                                                                               \
        assert_int_equal((res)->called, 1);                                                                            \
        assert_int_equal((res)->inconsistent, 0);                                                                      \
    } while (0)

static void test_roundtrip(void **state)
{
    fm_redis_t *r = pool_up(2, 1000);
    static const char value[] = "bin\0ary value";
    const char *argv[] = {"SET", "fm:test:k", value};
    const size_t argvlen[] = {3, 9, sizeof(value) - 1};
    result_t *set = slot(), *get = slot(), *get_fmt = slot(), *wrong_type = slot();

    assert_int_equal(fm_redis_commandargv(r, on_result, set, 3, argv, argvlen), 0);
    assert_int_equal(set->called, 0);
    assert_true(RUN_UNTIL(set->called, 1000));
    ANSWERED_ONCE(set);
    assert_int_equal(set->type, REDIS_REPLY_STATUS);
    assert_memory_equal(set->str, "OK", 2);

    SEND(r, get, "GET %b", "fm:test:k", (size_t)9);
    SEND(r, get_fmt, "GET %s", "fm:test:k");
    SEND(r, wrong_type, "INCR %s", "fm:test:k");
    assert_true(RUN_UNTIL(get->called && get_fmt->called && wrong_type->called, 1000));
    ANSWERED_ONCE(get);
    assert_int_equal(get->type, REDIS_REPLY_STRING);
    assert_int_equal(get->len, sizeof(value) - 1);
    assert_memory_equal(get->str, value, sizeof(value) - 1);
    assert_int_equal(get_fmt->len, sizeof(value) - 1);
    /* a Redis error is a reply, not an adapter failure */
    ANSWERED_ONCE(wrong_type);
    assert_int_equal(wrong_type->type, REDIS_REPLY_ERROR);
    assert_string_equal(wrong_type->err, "");
    assert_non_null(strstr(wrong_type->str, "not an integer"));

    /* SELECT took effect: the key is in DB 3, not in DB 0 */
    struct timeval tv = {1, 0};
    redisContext *direct = redisConnectWithTimeout("127.0.0.1", env.port, tv);
    assert_true(direct != NULL && direct->err == 0);
    freeReplyObject(redisCommand(direct, "AUTH %s", PASSWORD));
    redisReply *in_db0 = redisCommand(direct, "EXISTS fm:test:k");
    assert_int_equal(in_db0->integer, 0);
    freeReplyObject(in_db0);
    freeReplyObject(redisCommand(direct, "SELECT %d", DB));
    redisReply *in_db3 = redisCommand(direct, "EXISTS fm:test:k");
    assert_int_equal(in_db3->integer, 1);
    freeReplyObject(in_db3);
    redisFree(direct);

    /* fm_redis_commandargv writes RESP itself: lengths of several digits, a text longer than its stack buffer,
     * CR LF inside a value, an empty argument, and more than nine arguments all reach Redis intact */
    static char big[5001];
    for (size_t i = 0; i < sizeof(big) - 1; ++i)
        big[i] = i % 100 == 98 ? '\r' : i % 100 == 99 ? '\n' : (char)('a' + i % 26);
    const char *set_big[] = {"SET", "fm:test:big", big}, *set_empty[] = {"SET", "fm:test:empty", ""};
    const char *push[] = {"RPUSH", "fm:test:list", "1", "22", "333", "4", "5", "6", "7", "8", "9", "10", "11", ""};
    result_t *big_set = slot(), *empty_set = slot(), *pushed = slot();
    assert_int_equal(fm_redis_commandargv(r, on_result, big_set, 3, set_big, NULL), 0);
    assert_int_equal(fm_redis_commandargv(r, on_result, empty_set, 3, set_empty, NULL), 0);
    assert_int_equal(fm_redis_commandargv(r, on_result, pushed, 14, push, NULL), 0);
    /* the pool's connections are not ordered with each other: read only after the writes were answered */
    assert_true(RUN_UNTIL(big_set->called && empty_set->called && pushed->called, 1000));
    result_t *big_get = slot(), *empty_get = slot(), *third = slot();
    SEND(r, big_get, "GET fm:test:big");
    SEND(r, empty_get, "GET fm:test:empty");
    SEND(r, third, "LINDEX fm:test:list 2");
    assert_true(RUN_UNTIL(big_get->called && empty_get->called && third->called, 1000));
    ANSWERED_ONCE(big_set);
    ANSWERED_ONCE(empty_set);
    assert_int_equal(pushed->type, REDIS_REPLY_INTEGER);
    assert_int_equal(pushed->integer, 12);
    assert_int_equal(big_get->len, sizeof(big) - 1);
    assert_memory_equal(big_get->str, big, 256); /* what result_t keeps; the end is read back below */
    result_t *tail = slot();
    SEND(r, tail, "GETRANGE fm:test:big 4800 4999");
    assert_true(RUN_UNTIL(tail->called, 1000));
    assert_int_equal(tail->len, 200);
    assert_memory_equal(tail->str, big + 4800, 200);
    assert_int_equal(empty_get->type, REDIS_REPLY_STRING);
    assert_int_equal(empty_get->len, 0);
    assert_int_equal(third->len, 3);
    assert_memory_equal(third->str, "333", 3);

    /* an invalid format and the pub/sub commands are refused up front; their callback never runs */
    result_t *refused = slot();
    assert_int_equal(fm_redis_command(r, on_result, refused, "GET %q"), -1);
    assert_int_equal(fm_redis_command(r, on_result, refused, "SUBSCRIBE chan"), -1);
    const char *monitor[] = {"monitor"};
    assert_int_equal(fm_redis_commandargv(r, on_result, refused, 1, monitor, NULL), -1);
    run_for(50);
    assert_int_equal(refused->called, 0);
    destroy_pool();
}

/* ---- tracking pools (fm_redis_create_tracking) ---- */

static struct {
    int all;          /* "anything may have changed" reports */
    int keys;         /* key reports */
    char last[64];
} reports;

static void on_report(const char *key, size_t len, void *data)
{
    if (key == NULL) {
        ++reports.all;
        return;
    }
    ++reports.keys;
    snprintf(reports.last, sizeof(reports.last), "%.*s", (int)len, key);
}

static redisContext *direct_client(void)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", env.port, tv);
    assert_true(c != NULL && c->err == 0);
    freeReplyObject(redisCommand(c, "AUTH %s", PASSWORD));
    freeReplyObject(redisCommand(c, "SELECT %d", DB));
    return c;
}

static void test_tracking_reports_changes(void **state)
{
    uint64_t epoch, before;
    memset(&reports, 0, sizeof(reports));
    fm_redis_t *r = env.r = fm_redis_create_tracking(env.loop, "127.0.0.1", env.port, PASSWORD, DB, 2, 1000,
                                                      on_report, NULL);
    assert_non_null(r);
    assert_true(RUN_UNTIL(fm_redis_tracked(r, &epoch), 3000));
    redisContext *other = direct_client();
    freeReplyObject(redisCommand(other, "SET fm:test:tracked v1"));

    /* a key read through the pool is reported when another client changes it, and the epoch moves */
    result_t *get = slot();
    SEND(r, get, "GET fm:test:tracked");
    assert_true(RUN_UNTIL(get->called, 1000));
    assert_memory_equal(get->str, "v1", 2);
    fm_redis_tracked(r, &before);
    freeReplyObject(redisCommand(other, "SET fm:test:tracked v2"));
    assert_true(RUN_UNTIL(reports.keys == 1, 1000));
    assert_string_equal(reports.last, "fm:test:tracked");
    assert_true(fm_redis_tracked(r, &epoch) && epoch > before);

    /* once reported the key is not followed until read again: a second change is not reported */
    freeReplyObject(redisCommand(other, "SET fm:test:tracked v3"));
    run_for(100);
    assert_int_equal(reports.keys, 1);

    /* a report already in the socket is taken by fm_redis_tracked itself, without a loop turn */
    result_t *again = slot();
    SEND(r, again, "GET fm:test:tracked");
    assert_true(RUN_UNTIL(again->called, 1000));
    freeReplyObject(redisCommand(other, "DEL fm:test:tracked"));
    usleep(50000);
    fm_redis_tracked(r, &epoch);
    assert_int_equal(reports.keys, 2);

    /* a flush reports "everything" */
    freeReplyObject(redisCommand(other, "FLUSHDB"));
    assert_true(RUN_UNTIL(reports.all >= 1, 1000));

    /* the subscriber killed: "everything" is reported, tracking is off until it is back, then on again */
    int all = reports.all;
    redisReply *killed = redisCommand(other, "CLIENT KILL TYPE pubsub");
    assert_true(killed != NULL && killed->type == REDIS_REPLY_INTEGER && killed->integer >= 1);
    freeReplyObject(killed);
    assert_true(RUN_UNTIL(reports.all > all, 1000));
    assert_true(RUN_UNTIL(fm_redis_tracked(r, &epoch), 5000));
    freeReplyObject(redisCommand(other, "SET fm:test:tracked v4"));
    result_t *third = slot();
    SEND(r, third, "GET fm:test:tracked");
    assert_true(RUN_UNTIL(third->called, 1000));
    freeReplyObject(redisCommand(other, "SET fm:test:tracked v5"));
    assert_true(RUN_UNTIL(reports.keys == 3, 1000));
    redisFree(other);
    destroy_pool();
}

/* fm_rcache_keep_absent: "no such key" is kept like a value (fm-edge's revocation marks are mostly absent), and
 * dropped the moment the key is created, as Redis tracks a key read while it did not exist. */
static fm_rcache_t *absent_cache; /* destroyed by the test, or by test_teardown_rcache when it failed midway */

static int absent_kept(const char *key, const char **value, size_t *len)
{
    return fm_rcache_get(absent_cache, key, value, len);
}

static void test_rcache_keeps_absence_until_the_key_appears(void **state)
{
    const char *value;
    size_t len;
    fm_rcache_t *c = absent_cache = fm_rcache_create(env.loop, "127.0.0.1", env.port, PASSWORD, DB, 1000, 64, 256,
                                                     60000);
    assert_non_null(c);
    fm_rcache_keep_absent(c);
    assert_true(RUN_UNTIL(fm_rcache_connected(c), 3000));
    redisContext *other = direct_client();
    freeReplyObject(redisCommand(other, "DEL fm:test:revoked"));

    assert_int_equal(absent_kept("fm:test:revoked", &value, &len), 0);
    result_t *missing = slot();
    assert_int_equal(fm_rcache_fetch(c, "fm:test:revoked", on_result, missing), 0);
    assert_true(RUN_UNTIL(missing->called, 1000));
    assert_int_equal(missing->type, REDIS_REPLY_NIL);
    assert_int_equal(absent_kept("fm:test:revoked", &value, &len), 1);
    assert_null(value);
    assert_int_equal(len, 0);

    /* created by another client: the kept absence goes, and the value read next is kept */
    freeReplyObject(redisCommand(other, "SET fm:test:revoked 1"));
    assert_true(RUN_UNTIL(absent_kept("fm:test:revoked", &value, &len) == 0, 1000));
    result_t *present = slot();
    assert_int_equal(fm_rcache_fetch(c, "fm:test:revoked", on_result, present), 0);
    assert_true(RUN_UNTIL(present->called, 1000));
    assert_int_equal(absent_kept("fm:test:revoked", &value, &len), 1);
    assert_non_null(value);
    assert_memory_equal(value, "1", 1);

    /* and deleted again: the value goes too */
    freeReplyObject(redisCommand(other, "DEL fm:test:revoked"));
    assert_true(RUN_UNTIL(absent_kept("fm:test:revoked", &value, &len) == 0, 1000));
    redisFree(other);
    fm_rcache_destroy(c);
    absent_cache = NULL;
}

static int test_teardown_rcache(void **state)
{
    fm_rcache_destroy(absent_cache);
    absent_cache = NULL;
    return test_teardown(state);
}

static void test_many_concurrent(void **state)
{
    fm_redis_t *r = pool_up(4, 2000);
    result_t *del = slot();
    memset(env.many, 0, sizeof(env.many));

    SEND(r, del, "DEL fm:test:counter");
    assert_true(RUN_UNTIL(del->called, 1000));
    for (int i = 0; i < MANY; ++i)
        SEND(r, &env.many[i], "INCR fm:test:counter");
    assert_true(RUN_UNTIL(all_called(env.many, MANY), 5000));

    /* every INCR answered once, with its own value: no reply was lost, duplicated or given to another caller */
    static char seen[MANY + 1];
    memset(seen, 0, sizeof(seen));
    for (int i = 0; i < MANY; ++i) {
        ANSWERED_ONCE(&env.many[i]);
        assert_string_equal(env.many[i].err, "");
        assert_int_equal(env.many[i].type, REDIS_REPLY_INTEGER);
        assert_in_range(env.many[i].integer, 1, MANY);
        assert_int_equal(seen[env.many[i].integer], 0);
        seen[env.many[i].integer] = 1;
    }
    destroy_pool();
}

/* A command blocking one connection times out; the next command goes to the other connection at once, and the
 * late reply of the first is dropped without a second callback. */
static void test_timeout_blocked_connection(void **state)
{
    fm_redis_t *r = pool_up(2, 200);
    result_t *blocked = slot(), *ping = slot();

    uint64_t start = now_ms();
    SEND(r, blocked, "BLPOP fm:test:empty 1");
    assert_true(RUN_UNTIL(blocked->called, 1000));
    assert_string_equal(blocked->err, "redis timeout");
    assert_in_range(now_ms() - start, 150, 600);

    SEND(r, ping, "PING");
    assert_true(RUN_UNTIL(ping->called, 150));
    ANSWERED_ONCE(ping);
    assert_string_equal(ping->err, "");
    assert_memory_equal(ping->str, "PONG", 4);

    run_for(1100); /* BLPOP answers nil after 1 s: dropped */
    ANSWERED_ONCE(blocked);
    assert_int_equal(fm_redis_connected(r), 2);
    destroy_pool();
}

/* DEBUG SLEEP stalls the whole server: the command times out, and once the server is back commands work. */
static void test_timeout_debug_sleep(void **state)
{
    fm_redis_t *r = pool_up(1, 200);
    result_t *sleeping = slot(), *ping = slot();

    uint64_t start = now_ms();
    SEND(r, sleeping, "DEBUG SLEEP 0.5");
    assert_true(RUN_UNTIL(sleeping->called, 1000));
    assert_string_equal(sleeping->err, "redis timeout");
    assert_in_range(now_ms() - start, 150, 450);

    while (now_ms() < start + 700) /* the server sleeps until then */
        h2o_evloop_run(env.loop, 10);
    SEND(r, ping, "PING");
    assert_true(RUN_UNTIL(ping->called, 1000));
    ANSWERED_ONCE(ping);
    assert_string_equal(ping->err, "");
    assert_memory_equal(ping->str, "PONG", 4);
    ANSWERED_ONCE(sleeping);
    destroy_pool();
}

static void test_wrong_password_fails_fast(void **state)
{
    fm_redis_t *r = env.r = fm_redis_create(env.loop, "127.0.0.1", env.port, "wrong", 0, 2, 500);
    result_t *res = slot();
    assert_non_null(r);
    run_for(300);
    assert_int_equal(fm_redis_connected(r), 0);

    uint64_t start = now_ms();
    SEND(r, res, "PING");
    assert_true(RUN_UNTIL(res->called, 1000));
    ANSWERED_ONCE(res);
    assert_string_equal(res->err, "redis unavailable");
    assert_true(now_ms() - start < 250);
    destroy_pool();
}

static int retries;

/* A caller that retries straight from the failure callback. */
static void on_failure_retry(redisReply *reply, const char *errstr, void *data)
{
    if (++retries < 1000)
        fm_redis_command(env.r, on_failure_retry, data, "PING");
}

/* Retrying from the failure callback must not keep the loop inside one turn (no I/O, no reconnect meanwhile):
 * each new failure waits for a later loop turn. */
static void test_retry_from_failure_callback_yields(void **state)
{
    env.r = fm_redis_create(env.loop, "127.0.0.1", free_port(), NULL, 0, 1, 500);
    assert_non_null(env.r);
    retries = 0;
    assert_int_equal(fm_redis_command(env.r, on_failure_retry, NULL, "PING"), 0);
    h2o_evloop_run(env.loop, 0);
    h2o_evloop_run(env.loop, 0);
    assert_in_range(retries, 1, 3);
    run_for(30);
    assert_true(retries < 1000);
    retries = 1000; /* stop retrying; destroy answers the last one */
    destroy_pool();
}

static void test_destroy_answers_pending(void **state)
{
    fm_redis_t *r = pool_up(1, 0);
    result_t *blocked = slot(), *failing = slot();

    SEND(r, blocked, "BLPOP fm:test:empty 5");
    run_for(50);
    destroy_pool();
    ANSWERED_ONCE(blocked);
    assert_string_equal(blocked->err, "redis shutting down");

    /* a failure still waiting for its loop turn is answered by destroy too */
    r = env.r = fm_redis_create(env.loop, "127.0.0.1", free_port(), NULL, 0, 1, 200);
    SEND(r, failing, "PING");
    destroy_pool();
    ANSWERED_ONCE(failing);
    assert_string_equal(failing->err, "redis shutting down");
}

/* The server dies: the command in flight and new ones fail quickly; it comes back on the same port: the same
 * adapter reconnects and commands succeed again. */
static void test_server_restart(void **state)
{
    fm_redis_t *r = pool_up(2, 3000);
    result_t *in_flight = slot(), *while_down = slot(), *set = slot(), *get = slot();

    SEND(r, in_flight, "BLPOP fm:test:empty 5");
    run_for(50);
    uint64_t start = now_ms();
    stop_redis();
    assert_true(RUN_UNTIL(in_flight->called, 1000));
    assert_string_equal(in_flight->err, "redis disconnected");
    assert_true(RUN_UNTIL(fm_redis_connected(r) == 0, 1000));
    assert_true(now_ms() - start < 1000);

    start = now_ms();
    SEND(r, while_down, "PING");
    assert_true(RUN_UNTIL(while_down->called, 1000));
    assert_string_equal(while_down->err, "redis unavailable");
    assert_true(now_ms() - start < 250);

    run_for(500); /* let the backoff grow a little before the server returns */
    start_redis();
    assert_true(RUN_UNTIL(fm_redis_connected(r) == 2, 5000));
    SEND(r, set, "SET fm:test:after %s", "restart");
    assert_true(RUN_UNTIL(set->called, 1000));
    /* only after SET answered: back-to-back commands may go to different connections and run in either order */
    SEND(r, get, "GET fm:test:after");
    assert_true(RUN_UNTIL(get->called, 1000));
    ANSWERED_ONCE(get);
    assert_string_equal(get->err, "");
    assert_int_equal(get->len, 7);
    assert_memory_equal(get->str, "restart", 7);
    ANSWERED_ONCE(in_flight);
    ANSWERED_ONCE(while_down);
    destroy_pool();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_many_concurrent, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_tracking_reports_changes, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_rcache_keeps_absence_until_the_key_appears, test_setup,
                                        test_teardown_rcache),
        cmocka_unit_test_setup_teardown(test_timeout_blocked_connection, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_timeout_debug_sleep, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_wrong_password_fails_fast, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_retry_from_failure_callback_yields, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_destroy_answers_pending, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_server_restart, test_setup, test_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
