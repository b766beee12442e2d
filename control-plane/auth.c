/*
 * Accounts and sessions (DESIGN.md §4 "Auth"): register, login, refresh, logout, me, and the bearer-token check
 * every other route uses.
 *
 * Sessions: PostgreSQL holds the truth (sessions, refresh_tokens, see schema/002_auth_functions.sql); Redis
 * holds `fm:sess:{sid}` = "user_id role" or "revoked", so logout refuses the session's access tokens at once on
 * every instance. A missing key (Redis restarted empty) is rebuilt from PostgreSQL on first use.
 * An email is compared in one normal form everywhere (common/email.h); login and registration attempts are limited
 * before any password is hashed (limits.h). argon2id runs on the hashing pool (fm_hash_call): ~20–40 ms of CPU
 * must not stall an event loop, and when its queue is full the answer is 503 at once (FM_HASH_QUEUE_MAX).
 */
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "b64.h"
#include "control.h"
#include "email.h"
#include "limits.h"
#include "quota.h"
#include "log.h"

#define AUTH_BODY_MAX 16384

typedef struct {
    char email[FM_EMAIL_BUF_SIZE]; /* as the client spelled it (answers show the spelling registered) */
    fm_login_guard_t guard;        /* its normal form and the client's prefixes: what the limiter counts */
    char password[FM_PASSWORD_MAX_LEN + 1];
    size_t password_len;
    char password_hash[FM_PASSWORD_HASH_BUF_SIZE];
    int password_ok;
    char user_id[40], role[8];
    int user_found, user_disabled;
    char refresh_token[FM_TOKEN_MAX_LEN + 1], refresh_hash[FM_TOKEN_HASH_BUF_SIZE];
    char new_refresh_token[FM_TOKEN_MAX_LEN + 1], new_refresh_hash[FM_TOKEN_HASH_BUF_SIZE];
    char session_id[40];
    long long session_expires_at;
    char ip[64];
    const fm_principal_t *principal;
} auth_state_t;

static void auth_state_free(void *p)
{
    auth_state_t *s = p;
    OPENSSL_cleanse(s->password, sizeof(s->password));
    OPENSSL_cleanse(s->refresh_token, sizeof(s->refresh_token));
    OPENSSL_cleanse(s->new_refresh_token, sizeof(s->new_refresh_token));
}

static auth_state_t *auth_state(fm_req_t *r)
{
    auth_state_t *s = fm_req_state(r, sizeof(auth_state_t));
    r->state_free = auth_state_free;
    return s;
}

/* ---- small helpers -------------------------------------------------------------------------------------- */

static fm_jwt_role_t role_from_name(const char *name)
{
    if (strcmp(name, "admin") == 0)
        return FM_JWT_ROLE_ADMIN;
    if (strcmp(name, "viewer") == 0)
        return FM_JWT_ROLE_VIEWER;
    if (strcmp(name, "member") == 0)
        return FM_JWT_ROLE_MEMBER;
    return FM_JWT_ROLE_NONE;
}

static void copy_field(char *dst, size_t size, PGresult *res, int row, int col)
{
    snprintf(dst, size, "%s", PQgetisnull(res, row, col) ? "" : PQgetvalue(res, row, col));
}

static void session_key(char *out, size_t size, const char *session_id)
{
    snprintf(out, size, "fm:sess:{%.36s}", session_id);
}

/* The Redis value of a live session: "user_id role". */
static void session_cache_set(fm_req_t *r, fm_redis_cb cb, const char *session_id, const char *user_id,
                              const char *role, long long ttl_seconds)
{
    char key[80], value[64], ttl[24];
    session_key(key, sizeof(key), session_id);
    snprintf(value, sizeof(value), "%s %s", user_id, role);
    snprintf(ttl, sizeof(ttl), "%lld", ttl_seconds > 1 ? ttl_seconds : 1);
    const char *argv[] = {"SET", key, value, "EX", ttl};
    fm_redis_call(r, cb, 5, argv);
}

/* Marks a session revoked for longer than any of its access tokens can live. */
static void session_cache_revoke(fm_req_t *r, fm_redis_cb cb, const char *session_id)
{
    char key[80], ttl[24];
    session_key(key, sizeof(key), session_id);
    snprintf(ttl, sizeof(ttl), "%lld", (long long)fm_control->config.access_ttl_s + FM_JWT_LEEWAY_SECONDS + 60);
    const char *argv[] = {"SET", key, "revoked", "EX", ttl};
    fm_redis_call(r, cb, 5, argv);
}

/* ---- token answers -------------------------------------------------------------------------------------- */

static void answer_tokens(fm_req_t *r, auth_state_t *s, int status)
{
    char access[FM_JWT_ISSUE_BUF_SIZE];
    const fm_config_t *cfg = &fm_control->config;
    fm_jwt_issue_t claims = {
        .issuer = cfg->jwt_issuer,
        .subject = s->user_id,
        .session_id = s->session_id,
        .role = role_from_name(s->role),
        .issued_at = time(NULL),
        .ttl_seconds = cfg->access_ttl_s,
    };
    if (fm_jwt_issue_hs256((const uint8_t *)cfg->jwt_secret, strlen(cfg->jwt_secret), &claims, access,
                           sizeof(access)) != 0) {
        fm_reply_error(r, 500, "internal_error", "could not issue a token");
        return;
    }
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "access_token", access);
    cJSON_AddStringToObject(body, "token_type", "Bearer");
    cJSON_AddNumberToObject(body, "expires_in", (double)cfg->access_ttl_s);
    cJSON_AddStringToObject(body, "refresh_token", s->new_refresh_token);
    long long refresh_left = s->session_expires_at - (long long)time(NULL);
    if (refresh_left > cfg->refresh_ttl_s) /* the database rounds the expiry to the second */
        refresh_left = cfg->refresh_ttl_s;
    cJSON_AddNumberToObject(body, "refresh_expires_in", (double)refresh_left);
    cJSON_AddStringToObject(body, "session_id", s->session_id);
    cJSON *user = cJSON_AddObjectToObject(body, "user");
    cJSON_AddStringToObject(user, "id", s->user_id);
    cJSON_AddStringToObject(user, "email", s->email);
    cJSON_AddStringToObject(user, "role", s->role);
    fm_reply_json(r, status, body);
}

/* Fresh refresh token: random, stored only as its SHA-256. */
static int make_refresh_token(auth_state_t *s)
{
    return fm_token_random(s->new_refresh_token, sizeof(s->new_refresh_token), FM_TOKEN_DEFAULT_BYTES) != 0 ||
                   fm_token_hash(s->new_refresh_token, strlen(s->new_refresh_token), s->new_refresh_hash) != 0
               ? -1
               : 0;
}

/* Reads {email, password} into the state and the client's address into its guard; answers and returns -1 on bad
 * input. An address outside the normal form (email.h) is refused here, for login as for registration: its normal
 * form is what the limiter counts and the database compares. */
static int parse_credentials(fm_req_t *r, auth_state_t *s)
{
    cJSON *body = fm_req_json_body(r, AUTH_BODY_MAX);
    if (body == NULL)
        return -1;
    const char *email = fm_json_require_string(r, body, "email", 1, FM_EMAIL_MAX);
    const char *password = email ? fm_json_require_string(r, body, "password", 1, FM_PASSWORD_MAX_LEN) : NULL;
    if (password == NULL) {
        cJSON_Delete(body);
        return -1;
    }
    snprintf(s->email, sizeof(s->email), "%s", email);
    s->password_len = strlen(password);
    memcpy(s->password, password, s->password_len + 1);
    OPENSSL_cleanse(cJSON_GetObjectItemCaseSensitive(body, "password")->valuestring, s->password_len);
    cJSON_Delete(body);
    if (fm_email_normalize(s->email, strlen(s->email), s->guard.account, sizeof(s->guard.account)) != 0) {
        fm_reply_error(r, 422, "invalid_email",
                       "email must look like name@domain in ASCII, without spaces (an internationalised domain in "
                       "its xn-- form)");
        return -1;
    }
    fm_req_peer(r, s->ip, sizeof(s->ip));
    fm_rl_client(s->ip, &s->guard.client);
    return 0;
}

/* A full hashing queue answers at once, before the attempt is counted: waiting seconds behind a flood of logins
 * helps nobody, and a retry after a second usually finds room. */
static int hasher_full(fm_req_t *r)
{
    if (!fm_server_hash_full())
        return 0;
    fm_reply_unavailable(r, "the password hasher");
    return 1;
}

/* ---- POST /v1/auth/register ----------------------------------------------------------------------------- */

static void on_register_inserted(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (res != NULL && PQresultStatus(res) == PGRES_FATAL_ERROR) {
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (state != NULL && strcmp(state, "23505") == 0) {
            fm_reply_error(r, 409, "email_taken", "an account with this email already exists");
            return;
        }
    }
    if (fm_pg_failed(r, res, errstr))
        return;
    cJSON *body = cJSON_CreateObject(), *user = cJSON_AddObjectToObject(body, "user");
    cJSON_AddStringToObject(user, "id", PQgetvalue(res, 0, 0));
    cJSON_AddStringToObject(user, "email", PQgetvalue(res, 0, 1));
    cJSON_AddStringToObject(user, "role", PQgetvalue(res, 0, 2));
    cJSON_AddStringToObject(user, "created_at", PQgetvalue(res, 0, 3));
    fm_reply_json(r, 201, body);
}

static void hash_password_work(void *data)
{
    fm_req_t *r = data;
    auth_state_t *s = r->state;
    s->password_ok = fm_password_hash(s->password, s->password_len, &fm_control->argon2, s->password_hash) == 0;
    OPENSSL_cleanse(s->password, sizeof(s->password));
}

static void on_password_hashed(void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    auth_state_t *s = r->state;
    if (!s->password_ok) {
        fm_reply_error(r, 500, "internal_error", "could not hash the password");
        return;
    }
    /* FM_ADMIN_EMAIL in the same normal form; one that has none (not ASCII) names nobody. */
    char admin[FM_EMAIL_BUF_SIZE];
    const char *admin_email = fm_control->config.admin_email;
    if (fm_email_normalize(admin_email, strlen(admin_email), admin, sizeof(admin)) != 0)
        admin[0] = '\0';
    const char *params[] = {s->email, s->password_hash, admin, s->ip[0] ? s->ip : NULL, r->request_id};
    fm_pg_call(r, on_register_inserted,
            "SELECT id, email, role, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
            "FROM fm_register_user($1, $2, $3, $4::inet, $5)",
            5, params);
}

static void on_register_rate_checked(redisReply *reply, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_limits_register_refused(r, reply, errstr))
        return;
    fm_hash_call(r, hash_password_work, on_password_hashed);
}

void handle_auth_register(fm_req_t *r)
{
    auth_state_t *s = auth_state(r);
    if (parse_credentials(r, s) != 0)
        return;
    if (s->password_len < FM_PASSWORD_MIN_LEN) {
        fm_reply_error(r, 422, "weak_password", "password must be at least %d bytes long", FM_PASSWORD_MIN_LEN);
        return;
    }
    if (hasher_full(r))
        return;
    fm_limits_register_check(r, &s->guard, on_register_rate_checked);
}

/* ---- POST /v1/auth/login -------------------------------------------------------------------------------- */

/* After a login or a refresh: the session is cached, and the tokens answered. */
static void on_session_cached(redisReply *reply, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    /* The session is in PostgreSQL already; a cache miss later rebuilds the key, so a failure here is only logged. */
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR)
        fm_log(FM_LOG_WARN, r->request_id, "redis: session not cached: %s", reply ? reply->str : errstr);
    /* The owner's quota copy (quota.h) made or rewritten now, so that the first uploads of the session find it. */
    fm_quota_refresh(fm_control_thread(r), ((auth_state_t *)r->state)->user_id);
    answer_tokens(r, r->state, 200);
}

static void on_session_created(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_pg_failed(r, res, errstr))
        return;
    auth_state_t *s = r->state;
    copy_field(s->session_id, sizeof(s->session_id), res, 0, 0);
    s->session_expires_at = atoll(PQgetvalue(res, 0, 1));
    session_cache_set(r, on_session_cached, s->session_id, s->user_id, s->role, fm_control->config.refresh_ttl_s);
}

static void verify_password_work(void *data)
{
    fm_req_t *r = data;
    auth_state_t *s = r->state;
    /* Unknown accounts are checked against a dummy hash so that both answers take the same time. */
    const char *encoded = s->user_found && s->password_hash[0] ? s->password_hash : fm_control->dummy_password_hash;
    s->password_ok = fm_password_verify(encoded, s->password, s->password_len) == 0 && s->user_found &&
                     s->password_hash[0] != '\0';
    OPENSSL_cleanse(s->password, sizeof(s->password));
}

static void on_login_limits_cleared(redisReply *reply, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    auth_state_t *s = r->state;
    /* The password was right: a failure to clear the counters costs the owner a little patience, not the login. */
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR)
        fm_log(FM_LOG_WARN, r->request_id, "redis: login counters not cleared: %s", reply ? reply->str : errstr);
    if (make_refresh_token(s) != 0) {
        fm_reply_error(r, 500, "internal_error", "could not make a token");
        return;
    }
    char ttl[24], hash_hex[80];
    snprintf(ttl, sizeof(ttl), "%lld", (long long)fm_control->config.refresh_ttl_s);
    snprintf(hash_hex, sizeof(hash_hex), "\\x%s", s->new_refresh_hash);
    /* The User-Agent is any bytes a client sends: keep printable ASCII only, so it is valid UTF-8 for the database. */
    h2o_iovec_t ua = fm_req_header(r, "user-agent");
    char user_agent[512];
    size_t ua_len = 0;
    for (size_t i = 0; i < ua.len && ua_len + 1 < sizeof(user_agent); ++i)
        user_agent[ua_len++] = ua.base[i] >= 0x20 && ua.base[i] < 0x7f ? ua.base[i] : '?';
    user_agent[ua_len] = '\0';
    const char *params[] = {s->user_id, hash_hex, ttl, user_agent, s->ip[0] ? s->ip : NULL, r->request_id};
    fm_pg_call(r, on_session_created,
            "SELECT session_id, extract(epoch FROM expires_at)::bigint "
            "FROM fm_session_create($1, $2::bytea, $3::integer, $4, $5::inet, $6)",
            6, params);
}

static void on_password_verified(void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    auth_state_t *s = r->state;
    if (!s->password_ok) {
        fm_reply_error(r, 401, "invalid_credentials", "email or password is wrong");
        return;
    }
    if (s->user_disabled) {
        fm_reply_error(r, 403, "account_disabled", "this account is disabled");
        return;
    }
    fm_limits_login_succeeded(r, &s->guard, on_login_limits_cleared);
}

static void on_login_user_loaded(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_pg_failed(r, res, errstr))
        return;
    auth_state_t *s = r->state;
    if (PQntuples(res) == 1) {
        s->user_found = 1;
        copy_field(s->user_id, sizeof(s->user_id), res, 0, 0);
        copy_field(s->password_hash, sizeof(s->password_hash), res, 0, 1);
        copy_field(s->role, sizeof(s->role), res, 0, 2);
        s->user_disabled = strcmp(PQgetvalue(res, 0, 3), "t") == 0;
        copy_field(s->email, sizeof(s->email), res, 0, 4);
    }
    fm_hash_call(r, verify_password_work, on_password_verified);
}

static void on_login_rate_checked(redisReply *reply, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_limits_login_refused(r, reply, errstr))
        return;
    auth_state_t *s = r->state;
    /* The normal form is lower-cased ASCII, which is what lower() makes of any stored address that can match it
     * (users_email_key is on lower(email)). */
    const char *params[] = {s->guard.account};
    fm_pg_call(r, on_login_user_loaded,
            "SELECT id, password_hash, role, disabled_at IS NOT NULL, email FROM users WHERE lower(email) = $1", 1,
            params);
}

void handle_auth_login(fm_req_t *r)
{
    auth_state_t *s = auth_state(r);
    if (parse_credentials(r, s) != 0)
        return;
    if (hasher_full(r))
        return;
    fm_limits_login_check(r, &s->guard, on_login_rate_checked);
}

/* ---- POST /v1/auth/refresh ------------------------------------------------------------------------------ */

static void on_reuse_revoked(redisReply *reply, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    /* PostgreSQL has revoked the session; if Redis missed it, the cached entry still expires with the tokens. */
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR)
        fm_log(FM_LOG_WARN, r->request_id, "redis: revocation not cached: %s", reply ? reply->str : errstr);
    fm_reply_error(r, 401, "refresh_token_reused",
                   "this refresh token was already used; the session has been revoked, log in again");
}

static void on_refresh_rotated(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_pg_failed(r, res, errstr))
        return;
    auth_state_t *s = r->state;
    const char *outcome = PQgetvalue(res, 0, 0);
    copy_field(s->session_id, sizeof(s->session_id), res, 0, 1);
    copy_field(s->user_id, sizeof(s->user_id), res, 0, 2);
    copy_field(s->role, sizeof(s->role), res, 0, 3);
    copy_field(s->email, sizeof(s->email), res, 0, 4);
    s->session_expires_at = PQgetisnull(res, 0, 5) ? 0 : atoll(PQgetvalue(res, 0, 5));
    if (strcmp(outcome, "ok") == 0) {
        session_cache_set(r, on_session_cached, s->session_id, s->user_id, s->role,
                          s->session_expires_at - (long long)time(NULL));
    } else if (strcmp(outcome, "reused") == 0) {
        fm_log(FM_LOG_WARN, r->request_id, "refresh token reuse: session %s revoked", s->session_id);
        session_cache_revoke(r, on_reuse_revoked, s->session_id);
    } else if (strcmp(outcome, "expired") == 0) {
        fm_reply_error(r, 401, "refresh_token_expired", "the refresh token has expired, log in again");
    } else if (strcmp(outcome, "revoked") == 0) {
        fm_reply_error(r, 401, "session_revoked", "the session has ended, log in again");
    } else {
        fm_reply_error(r, 401, "invalid_refresh_token", "the refresh token is not valid");
    }
}

void handle_auth_refresh(fm_req_t *r)
{
    auth_state_t *s = auth_state(r);
    cJSON *body = fm_req_json_body(r, AUTH_BODY_MAX);
    if (body == NULL)
        return;
    const char *token = fm_json_require_string(r, body, "refresh_token", 1, FM_TOKEN_MAX_LEN);
    if (token == NULL) {
        cJSON_Delete(body);
        return;
    }
    snprintf(s->refresh_token, sizeof(s->refresh_token), "%s", token);
    cJSON_Delete(body);
    fm_req_peer(r, s->ip, sizeof(s->ip));
    if (fm_token_hash(s->refresh_token, strlen(s->refresh_token), s->refresh_hash) != 0 ||
        make_refresh_token(s) != 0) {
        fm_reply_error(r, 500, "internal_error", "could not hash the token");
        return;
    }
    char old_hex[80], new_hex[80];
    snprintf(old_hex, sizeof(old_hex), "\\x%s", s->refresh_hash);
    snprintf(new_hex, sizeof(new_hex), "\\x%s", s->new_refresh_hash);
    const char *params[] = {old_hex, new_hex, s->ip[0] ? s->ip : NULL, r->request_id};
    fm_pg_call(r, on_refresh_rotated,
            "SELECT outcome, session_id, user_id, role, email, extract(epoch FROM expires_at)::bigint "
            "FROM fm_refresh_rotate($1::bytea, $2::bytea, $3::inet, $4)",
            4, params);
}

/* ---- POST /v1/auth/logout ------------------------------------------------------------------------------- */

static void on_logout_recorded(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_pg_failed(r, res, errstr))
        return;
    fm_reply_raw(r, 204, "application/json", "", 0);
}

static void on_logout_revoked(redisReply *reply, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_redis_failed(r, reply, errstr))
        return;
    const fm_principal_t *p = r->auth;
    char ip[64];
    fm_req_peer(r, ip, sizeof(ip));
    const char *params[] = {p->session_id, ip[0] ? ip : NULL, r->request_id};
    /* Revoking in PostgreSQL ends the refresh tokens too. */
    fm_pg_call(r, on_logout_recorded,
            "WITH s AS (UPDATE sessions SET revoked_at = now(), revoked_reason = 'logout' "
            "           WHERE id = $1 AND revoked_at IS NULL RETURNING id, user_id) "
            "INSERT INTO audit_log (actor_id, action, target_type, target_id, ip, request_id) "
            "SELECT user_id, 'session.logout', 'session', id::text, $2::inet, $3 FROM s",
            3, params);
}

static void logout_authorized(fm_req_t *r, const fm_principal_t *p)
{
    if (p->session_id[0] == '\0') {
        /* External-IdP tokens have no session here: they end at their exp, or at the provider. */
        fm_reply_raw(r, 204, "application/json", "", 0);
        return;
    }
    session_cache_revoke(r, on_logout_revoked, p->session_id);
}

void handle_auth_logout(fm_req_t *r)
{
    fm_auth_require(r, logout_authorized);
}

/* ---- GET /v1/me ----------------------------------------------------------------------------------------- */

static void on_me_loaded(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_pg_failed(r, res, errstr))
        return;
    if (PQntuples(res) != 1) {
        fm_reply_error(r, 404, "not_found", "this account no longer exists");
        return;
    }
    if (strcmp(PQgetvalue(res, 0, 7), "t") == 0) {
        fm_reply_error(r, 403, "account_disabled", "this account is disabled");
        return;
    }
    const fm_principal_t *p = r->auth;
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "id", PQgetvalue(res, 0, 0));
    cJSON_AddStringToObject(body, "email", PQgetvalue(res, 0, 1));
    cJSON_AddStringToObject(body, "role", PQgetvalue(res, 0, 2));
    if (!PQgetisnull(res, 0, 3))
        cJSON_AddStringToObject(body, "display_name", PQgetvalue(res, 0, 3));
    else
        cJSON_AddNullToObject(body, "display_name");
    cJSON_AddStringToObject(body, "created_at", PQgetvalue(res, 0, 4));
    cJSON_AddNumberToObject(body, "quota_bytes", atof(PQgetvalue(res, 0, 5)));
    cJSON_AddNumberToObject(body, "used_bytes", atof(PQgetvalue(res, 0, 6)));
    cJSON_AddNumberToObject(body, "reserved_bytes", atof(PQgetvalue(res, 0, 8)));
    cJSON_AddStringToObject(body, "auth", p->source == FM_JWT_SOURCE_EXTERNAL ? "external" : "password");
    if (p->session_id[0] != '\0')
        cJSON_AddStringToObject(body, "session_id", p->session_id);
    fm_reply_json(r, 200, body);
}

static const char me_sql[] = "SELECT id, email, role, display_name, "
                             "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), quota_bytes, "
                             "used_bytes, disabled_at IS NOT NULL, reserved_bytes "
                             "FROM users WHERE id = $1";

static void me_authorized(fm_req_t *r, const fm_principal_t *p)
{
    const char *params[] = {p->user_id};
    fm_pg_call_prepared(r, on_me_loaded, me_sql, 1, params);
}

void handle_me(fm_req_t *r)
{
    fm_auth_require(r, me_authorized);
}

/* ---- bearer-token check --------------------------------------------------------------------------------- */

typedef void (*authed_fn)(fm_req_t *r, const fm_principal_t *principal);

typedef struct {
    fm_principal_t principal; /* first: r->auth is handed to handlers as the principal */
    authed_fn next;
    fm_jwt_claims_t claims;
} auth_check_t;

static void auth_fail(fm_req_t *r, const char *code, const char *message)
{
    fm_req_add_header(r, "www-authenticate", "Bearer realm=\"files-manager\"");
    fm_reply_error(r, 401, code, "%s", message);
}

static void auth_accept(fm_req_t *r, const char *user_id, const char *role)
{
    auth_check_t *check = r->auth;
    snprintf(check->principal.user_id, sizeof(check->principal.user_id), "%s", user_id);
    check->principal.role = role_from_name(role);
    check->next(r, &check->principal);
}

static void on_session_cache_refilled(redisReply *reply, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    auth_check_t *check = r->auth;
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR)
        fm_log(FM_LOG_WARN, r->request_id, "redis: session cache not refilled: %s", reply ? reply->str : errstr);
    if (check->principal.role == FM_JWT_ROLE_NONE)
        auth_fail(r, "session_revoked", "the session has ended, log in again");
    else
        check->next(r, &check->principal);
}

static void on_session_loaded(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_pg_failed(r, res, errstr))
        return;
    auth_check_t *check = r->auth;
    if (PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), check->claims.sub) == 0) {
        snprintf(check->principal.user_id, sizeof(check->principal.user_id), "%s", PQgetvalue(res, 0, 0));
        check->principal.role = role_from_name(PQgetvalue(res, 0, 1));
        session_cache_set(r, on_session_cache_refilled, check->principal.session_id, check->principal.user_id,
                          PQgetvalue(res, 0, 1), atoll(PQgetvalue(res, 0, 2)));
    } else {
        check->principal.role = FM_JWT_ROLE_NONE;
        session_cache_revoke(r, on_session_cache_refilled, check->principal.session_id);
    }
}

static void on_session_checked(redisReply *reply, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_redis_failed(r, reply, errstr))
        return;
    auth_check_t *check = r->auth;
    if (reply->type == REDIS_REPLY_NIL) {
        /* Not cached (expired from Redis, or Redis lost its data): PostgreSQL decides and the cache is refilled. */
        const char *params[] = {check->principal.session_id};
        fm_pg_call_prepared(r, on_session_loaded,
                "SELECT s.user_id, u.role, GREATEST(1, extract(epoch FROM s.expires_at - now())::bigint) "
                "FROM sessions s JOIN users u ON u.id = s.user_id "
                "WHERE s.id = $1::uuid AND s.revoked_at IS NULL AND s.expires_at > now() AND u.disabled_at IS NULL",
                1, params);
        return;
    }
    char user_id[40], role[8];
    if (reply->type != REDIS_REPLY_STRING || reply->len >= 64 ||
        sscanf(reply->str, "%39s %7s", user_id, role) != 2 || strcmp(user_id, check->claims.sub) != 0) {
        auth_fail(r, "session_revoked", "the session has ended, log in again");
        return;
    }
    auth_accept(r, user_id, role);
}

static void on_external_user(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_pg_failed(r, res, errstr))
        return;
    if (PQntuples(res) != 1) {
        auth_fail(r, "unknown_user", "this identity is not known here");
        return;
    }
    auth_accept(r, PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1));
}

void fm_auth_require(fm_req_t *r, authed_fn next)
{
    h2o_iovec_t header = fm_req_header(r, "authorization");
    if (header.base == NULL) {
        auth_fail(r, "missing_token", "send Authorization: Bearer <access token>");
        return;
    }
    if (header.len < 8 || !h2o_lcstris(header.base, 7, H2O_STRLIT("bearer "))) {
        auth_fail(r, "invalid_token", "the Authorization scheme must be Bearer");
        return;
    }
    h2o_iovec_t token = h2o_iovec_init(header.base + 7, header.len - 7);
    while (token.len > 0 && token.base[0] == ' ') {
        token.base++;
        token.len--;
    }
    auth_check_t *check = calloc(1, sizeof(*check));
    if (check == NULL)
        h2o_fatal("out of memory");
    r->auth = check;
    check->next = next;
    if (fm_jwt_verify_memo(fm_control->verifier, fm_control_thread(r)->tokens, token.base, token.len, time(NULL),
                           &check->claims) != 0) {
        fm_jwt_error_t error = check->claims.error;
        if (error == FM_JWT_ERR_INTERNAL) {
            fm_reply_error(r, 500, "internal_error", "could not verify the token");
            return;
        }
        char message[96];
        snprintf(message, sizeof(message), "the access token is not valid (%s)", fm_jwt_error_code(error));
        auth_fail(r, error == FM_JWT_ERR_EXPIRED ? "token_expired" : "invalid_token", message);
        return;
    }
    check->principal.source = check->claims.source;
    if (check->claims.source == FM_JWT_SOURCE_EXTERNAL) {
        const char *params[] = {check->claims.iss, check->claims.sub, fm_control->config.external_default_role};
        fm_pg_call(r, on_external_user, "SELECT id, role FROM fm_external_user($1, $2, $3::user_role)", 3, params);
        return;
    }
    /* Session ids we issue are UUIDs; anything else cannot be one of ours (and must not reach a ::uuid cast). */
    if (!fm_uuid_valid(check->claims.sid, strlen(check->claims.sid)) ||
        !fm_uuid_valid(check->claims.sub, strlen(check->claims.sub))) {
        auth_fail(r, "invalid_token", "the access token is not valid (bad_claim)");
        return;
    }
    memcpy(check->principal.session_id, check->claims.sid, 37); /* a UUID, checked above */
    char key[80];
    session_key(key, sizeof(key), check->principal.session_id);
    fm_redis_get_cached(r, on_session_checked, key);
}
