/*
 * fm-control's process-wide and per-thread state, shared by its route files (auth.c, health.c, …).
 */
#ifndef FM_CONTROL_H
#define FM_CONTROL_H

#include "config.h"
#include "http.h"
#include "jwt.h"
#include "password.h"
#include "pg.h"
#include "redis.h"

/** The process: configuration and what every thread reads but never changes after start. Owned by main.c. */
typedef struct fm_control {
    fm_config_t config;
    fm_jwt_verifier_t *verifier;
    fm_password_params_t argon2;
    char dummy_password_hash[FM_PASSWORD_HASH_BUF_SIZE]; /* verified against when the email is unknown */
} fm_control_t;

/** One event-loop thread's connections. Owned by that thread. */
typedef struct fm_control_thread {
    fm_redis_t *redis;
    fm_pg_t *pg;
} fm_control_thread_t;

/** Who is calling, once fm_auth_require() accepted the bearer token. */
typedef struct fm_principal {
    char user_id[40];
    char session_id[40]; /* empty for external-IdP tokens */
    fm_jwt_role_t role;
    fm_jwt_source_t source;
} fm_principal_t;

/** The running service (set by main.c before the threads start). */
extern fm_control_t *fm_control;

static inline fm_control_thread_t *fm_control_thread(fm_req_t *r)
{
    return r->thread->data;
}

/**
 * Authenticates the request's bearer token (signature, claims, session not revoked) and then calls
 * next(r, principal); on failure answers 401 (or 503 when Redis/PostgreSQL cannot tell) and never calls next.
 * The principal lives as long as the request.
 */
void fm_auth_require(fm_req_t *r, void (*next)(fm_req_t *r, const fm_principal_t *principal));

/* Route handlers, by file. */
void handle_auth_register(fm_req_t *r);
void handle_auth_login(fm_req_t *r);
void handle_auth_refresh(fm_req_t *r);
void handle_auth_logout(fm_req_t *r);
void handle_me(fm_req_t *r);
void handle_readyz(fm_req_t *r);

/** Applies the schema/NNN_name.sql files that are not yet applied (blocking; for `fm-control migrate`). Returns 0 or -1. */
int fm_migrate(const char *conninfo, const char *schema_dir);

#endif
