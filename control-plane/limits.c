/* The login and registration limiter: see limits.h. */
#include "limits.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "metrics.h"

/* Longest key: the prefix, an account (FM_EMAIL_MAX), a space and a host prefix. */
#define KEY_SIZE (64 + FM_EMAIL_BUF_SIZE + FM_RL_PREFIX_SIZE)

/*
 * One login attempt, atomically. KEYS: 1 account+client failures, 2 client attempts, 3 network attempts,
 * 4 the account's hash {failures, next_at (ms)}, 5 "the account logged in from this client".
 * ARGV: 1 window (s), 2..5 the limits of keys 1..4, 6 the longest delay (s).
 * Returns {verdict, seconds to wait}: "ok", or what refused it ("account_ip", "ip", "net", "account").
 * Refused attempts are not counted: they cost no hash and told the client nothing. Fixed windows for 1..3; the
 * account's failures live until a window passes without one, so a slow, steady guesser stays at the longest
 * delay. Redis's clock (TIME) is the one clock every instance shares.
 */
static const char login_script[] =
    "local window = tonumber(ARGV[1]) "
    "local function over(key, limit) "
    "  if tonumber(redis.call('GET', key) or '0') < limit then return nil end "
    "  local ttl = redis.call('TTL', key) "
    "  if ttl < 1 then redis.call('EXPIRE', key, window) ttl = window end "
    "  return ttl "
    "end "
    "local names = {'account_ip', 'ip', 'net'} "
    "for i = 1, 3 do "
    "  local wait = over(KEYS[i], tonumber(ARGV[i + 1])) "
    "  if wait then return {names[i], wait} end "
    "end "
    "local failures = tonumber(redis.call('HGET', KEYS[4], 'failures') or '0') "
    "local limit = tonumber(ARGV[5]) "
    "if failures >= limit and redis.call('EXISTS', KEYS[5]) == 0 then "
    "  local t = redis.call('TIME') "
    "  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
    "  local next_at = tonumber(redis.call('HGET', KEYS[4], 'next_at') or '0') "
    "  if now < next_at then return {'account', math.ceil((next_at - now) / 1000)} end "
    "  local delay = math.min(tonumber(ARGV[6]), 2 ^ math.min(failures - limit, 30)) "
    "  redis.call('HSET', KEYS[4], 'next_at', string.format('%.0f', now + delay * 1000)) "
    "end "
    "for i = 1, 3 do "
    "  redis.call('INCR', KEYS[i]) "
    "  if redis.call('TTL', KEYS[i]) < 0 then redis.call('EXPIRE', KEYS[i], window) end "
    "end "
    "redis.call('HINCRBY', KEYS[4], 'failures', 1) "
    "redis.call('EXPIRE', KEYS[4], window) "
    "return {'ok', 0}";

/* A right password. KEYS: 1 account+client failures, 2 the account's hash, 3 the known-client mark.
 * ARGV: 1 how long the client is remembered (s; 0 = not at all). */
static const char login_success_script[] = "redis.call('DEL', KEYS[1], KEYS[2]) "
                                           "if tonumber(ARGV[1]) > 0 then "
                                           "  redis.call('SET', KEYS[3], '1', 'EX', ARGV[1]) "
                                           "end "
                                           "return 1";

/* One fixed-window counter: {verdict, seconds to wait}. KEYS: 1 the counter. ARGV: 1 window (s), 2 limit. */
static const char counter_script[] =
    "local n = redis.call('INCR', KEYS[1]) "
    "local ttl = redis.call('TTL', KEYS[1]) "
    "if ttl < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) ttl = tonumber(ARGV[1]) end "
    "if n > tonumber(ARGV[2]) then return {'ip', ttl} end "
    "return {'ok', 0}";

static pthread_once_t metrics_once = PTHREAD_ONCE_INIT;

static void describe_metrics(void)
{
    fm_metrics_describe("fm_auth_limited_total", FM_METRIC_COUNTER,
                        "Logins and registrations refused by the limiter (429), by the counter that refused them");
}

/* Keys share the {fm:rl} hash tag; an account and a prefix are joined by a space, which neither can contain. */
static void limit_key(char out[KEY_SIZE], const char *kind, const char *first, const char *second)
{
    snprintf(out, KEY_SIZE, "fm:rl:{fm:rl}:%s:%s%s%s", kind, first, second ? " " : "", second ? second : "");
}

static void format_int(char out[24], long long value)
{
    snprintf(out, 24, "%lld", value);
}

void fm_limits_login_check(fm_req_t *r, const fm_login_guard_t *guard, fm_redis_cb cb)
{
    const fm_config_t *cfg = &fm_control->config;
    char pair[KEY_SIZE], host[KEY_SIZE], net[KEY_SIZE], account[KEY_SIZE], known[KEY_SIZE];
    limit_key(pair, "login:pair", guard->account, guard->client.host);
    limit_key(host, "login:ip", guard->client.host, NULL);
    limit_key(net, "login:net", guard->client.net, NULL);
    limit_key(account, "login:failures", guard->account, NULL);
    limit_key(known, "login:known", guard->account, guard->client.host);
    char window[24], pair_limit[24], host_limit[24], net_limit[24], account_limit[24], delay_max[24];
    format_int(window, cfg->login_window_s);
    format_int(pair_limit, cfg->login_limit_account_ip);
    format_int(host_limit, cfg->login_limit_ip);
    format_int(net_limit, cfg->login_limit_net);
    format_int(account_limit, cfg->login_limit_account);
    format_int(delay_max, cfg->login_delay_max_s);
    const char *argv[] = {"EVAL", login_script, "5",        pair,       host,      net,           account,
                          known,  window,       pair_limit, host_limit, net_limit, account_limit, delay_max};
    fm_redis_call(r, cb, (int)(sizeof(argv) / sizeof(argv[0])), argv);
}

void fm_limits_login_succeeded(fm_req_t *r, const fm_login_guard_t *guard, fm_redis_cb cb)
{
    char pair[KEY_SIZE], account[KEY_SIZE], known[KEY_SIZE], known_ttl[24];
    limit_key(pair, "login:pair", guard->account, guard->client.host);
    limit_key(account, "login:failures", guard->account, NULL);
    limit_key(known, "login:known", guard->account, guard->client.host);
    format_int(known_ttl, fm_control->config.login_known_ttl_s);
    const char *argv[] = {"EVAL", login_success_script, "3", pair, account, known, known_ttl};
    fm_redis_call(r, cb, (int)(sizeof(argv) / sizeof(argv[0])), argv);
}

void fm_limits_register_check(fm_req_t *r, const fm_login_guard_t *guard, fm_redis_cb cb)
{
    char key[KEY_SIZE], window[24], limit[24];
    limit_key(key, "register:ip", guard->client.host, NULL);
    format_int(window, fm_control->config.login_window_s);
    format_int(limit, fm_control->config.register_limit_ip);
    const char *argv[] = {"EVAL", counter_script, "1", key, window, limit};
    fm_redis_call(r, cb, (int)(sizeof(argv) / sizeof(argv[0])), argv);
}

/* {verdict, seconds}: answers 429 with Retry-After unless the verdict is "ok". */
static int refused(fm_req_t *r, redisReply *reply, const char *errstr, const char *route)
{
    if (fm_redis_failed(r, reply, errstr))
        return 1;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 || reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[1]->type != REDIS_REPLY_INTEGER) {
        fm_log(FM_LOG_ERROR, r->request_id, "redis: unexpected limiter reply (type %d)", reply->type);
        fm_reply_unavailable(r, "the session store");
        return 1;
    }
    const char *verdict = reply->element[0]->str;
    if (strcmp(verdict, "ok") == 0)
        return 0;
    long long retry_after = reply->element[1]->integer > 0 ? reply->element[1]->integer : 1;
    pthread_once(&metrics_once, describe_metrics);
    char labels[96];
    snprintf(labels, sizeof(labels), "route=\"%s\",counter=\"%.16s\"", route, verdict);
    fm_metrics_counter_add("fm_auth_limited_total", labels, 1);
    char value[24];
    format_int(value, retry_after);
    fm_req_add_header(r, "retry-after", value);
    /* One answer for every counter: which one refused (and so whether an account is being guessed at) is not
     * the client's to learn. */
    fm_reply_error(r, 429, "rate_limited", "too many attempts, retry in %lld s", retry_after);
    return 1;
}

int fm_limits_login_refused(fm_req_t *r, redisReply *reply, const char *errstr)
{
    return refused(r, reply, errstr, "login");
}

int fm_limits_register_refused(fm_req_t *r, redisReply *reply, const char *errstr)
{
    return refused(r, reply, errstr, "register");
}
