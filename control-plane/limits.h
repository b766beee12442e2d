/*
 * limits: the login and registration limiter (issue 10 #9; docs/decisions.md "Accounts and tokens").
 *
 * Counters live in Redis under the `{fm:rl}` hash tag, so each script below is one atomic call, also on Redis
 * Cluster. A client is counted as its host prefix and its network (common/ratelimit.h), an account as its normal
 * email form (common/email.h). Login, checked by one script before the password is hashed:
 *  - account + client failures: past FM_LOGIN_LIMIT_ACCOUNT_IP, that pair is refused until its window ends
 *    (the strict counter: it stops the guesser, not the account's owner on another network);
 *  - client and network attempts: past FM_LOGIN_LIMIT_IP / FM_LOGIN_LIMIT_NET, refused until the window ends
 *    (spraying over many accounts, and the hashing work one source can cause);
 *  - account failures from all clients: past FM_LOGIN_LIMIT_ACCOUNT, attempts from clients the account has not
 *    logged in from are spaced by a delay doubling with each failure, 1 s up to FM_LOGIN_DELAY_MAX_S — a soft
 *    delay, never a lock, and one the account's usual clients do not see (NIST SP 800-63B §5.2.2).
 * An attempt let through is counted as a failure at once (parallel guesses cannot overtake the limits); a right
 * password then clears the account's failures, and its pair's, and remembers the client (FM_LOGIN_KNOWN_TTL_S).
 *
 * Each call holds the request like fm_redis_call; the callback starts with fm_req_resume().
 */
#ifndef FM_LIMITS_H
#define FM_LIMITS_H

#include "control.h"
#include "email.h"
#include "ratelimit.h"

/** Who is trying (the normal form of the email) and from where. */
typedef struct fm_login_guard {
    char account[FM_EMAIL_BUF_SIZE];
    fm_rl_client_t client;
} fm_login_guard_t;

/** Counts a login attempt and decides whether it may go on; `cb` gets the script's reply. */
void fm_limits_login_check(fm_req_t *r, const fm_login_guard_t *guard, fm_redis_cb cb);

/**
 * Reads fm_limits_login_check's reply: returns 0 when the attempt may go on, 1 when it answered (429
 * `rate_limited` + Retry-After, or 503 when Redis cannot tell: the limiter fails closed).
 */
int fm_limits_login_refused(fm_req_t *r, redisReply *reply, const char *errstr);

/** After a right password: clears the account's failures and its pair's, and remembers the client. */
void fm_limits_login_succeeded(fm_req_t *r, const fm_login_guard_t *guard, fm_redis_cb cb);

/** Counts a registration from the client (FM_REGISTER_LIMIT_IP per window); `cb` gets the reply. */
void fm_limits_register_check(fm_req_t *r, const fm_login_guard_t *guard, fm_redis_cb cb);

/** Reads fm_limits_register_check's reply, like fm_limits_login_refused. */
int fm_limits_register_refused(fm_req_t *r, redisReply *reply, const char *errstr);

#endif /* FM_LIMITS_H */
