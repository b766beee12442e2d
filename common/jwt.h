/*
 * jwt: access tokens (RFC 7519, compact JWS RFC 7515).
 *
 * We issue HS256 tokens for our own issuer and verify them, plus, optionally, RS256 or ES256 tokens from one
 * external identity provider. The verification key is chosen by the token's `iss`, never by its `alg`; the
 * algorithm for each key is fixed by configuration and the token's `alg` must equal it exactly (so `none`,
 * and an HS256 token keyed with the provider's public PEM, are refused). libjwt is not used: it trusts the
 * token's `alg`, checks no claims, and re-parses PEM keys on every call (notes/libraries.md). Header and
 * payload are parsed with cJSON, signatures checked with OpenSSL (HMAC compared in constant time, the
 * provider's EVP_PKEY parsed once at verifier creation).
 */
#ifndef FM_JWT_H
#define FM_JWT_H

#include <stddef.h>
#include <stdint.h>

/** Longest token fm_jwt_verify looks at; anything longer is FM_JWT_ERR_TOO_LARGE before any parsing. */
#define FM_JWT_MAX_TOKEN_LEN 8192

/** Clock skew allowed between us and any issuer when checking `exp`, `nbf` and `iat`, in seconds. */
#define FM_JWT_LEEWAY_SECONDS 30

/** Minimum HS256 secret length in bytes (RFC 7518 §3.2: a key at least as long as the hash output). */
#define FM_JWT_MIN_SECRET_LEN 32

/**
 * Longest string claim (`iss`, `sub`, `sid`, `jti`, audience) we accept, in bytes. A longer claim is refused
 * rather than truncated, so that two different subjects can never compare equal after copying.
 */
#define FM_JWT_CLAIM_MAX 255

/** Buffer size that always holds a token from fm_jwt_issue_hs256, with its NUL. */
#define FM_JWT_ISSUE_BUF_SIZE 4096

/** Signature algorithms we know. Configuration picks one per key; a token cannot choose. */
typedef enum {
    FM_JWT_ALG_HS256 = 1,
    FM_JWT_ALG_RS256,
    FM_JWT_ALG_ES256,
} fm_jwt_alg_t;

/** Roles carried by our own tokens. Tokens from the external provider always report FM_JWT_ROLE_NONE. */
typedef enum {
    FM_JWT_ROLE_NONE = 0,
    FM_JWT_ROLE_ADMIN,
    FM_JWT_ROLE_MEMBER,
    FM_JWT_ROLE_VIEWER,
} fm_jwt_role_t;

/** Which key verified a token. */
typedef enum {
    FM_JWT_SOURCE_LOCAL = 1, /**< our HS256 issuer */
    FM_JWT_SOURCE_EXTERNAL,  /**< the configured identity provider */
} fm_jwt_source_t;

/** Why a token was refused; fm_jwt_error_code() gives a stable string for the 401 body. */
typedef enum {
    FM_JWT_OK = 0,
    FM_JWT_ERR_MALFORMED,     /**< not 3 base64url parts of JSON objects, `crit` header, duplicate claim, ... */
    FM_JWT_ERR_BAD_ALG,       /**< `alg` missing, `none`, or not the one pinned for the issuer's key */
    FM_JWT_ERR_BAD_SIGNATURE, /**< signature does not verify (or has the wrong length) */
    FM_JWT_ERR_EXPIRED,       /**< now >= exp + leeway */
    FM_JWT_ERR_NOT_YET_VALID, /**< now + leeway < nbf, or iat in the future beyond the leeway */
    FM_JWT_ERR_BAD_ISSUER,    /**< `iss` is neither our issuer nor the configured external one */
    FM_JWT_ERR_MISSING_CLAIM, /**< a required claim (iss, sub, exp; sid and role for ours; aud if configured) */
    FM_JWT_ERR_TOO_LARGE,     /**< longer than FM_JWT_MAX_TOKEN_LEN */
    FM_JWT_ERR_BAD_CLAIM,     /**< a claim of the wrong type, too long, or an unknown `role` */
    FM_JWT_ERR_BAD_AUDIENCE,  /**< external token whose `aud` does not contain the configured audience */
    FM_JWT_ERR_INTERNAL,      /**< out of memory or OpenSSL failure: not the client's fault (500, not 401) */
} fm_jwt_error_t;

/** Claims of a verified token, copied out so nothing points into the token or a parser's memory. */
typedef struct {
    fm_jwt_error_t error; /**< FM_JWT_OK after success, else the reason; the other fields are then zero */
    fm_jwt_source_t source;
    fm_jwt_role_t role; /**< FM_JWT_ROLE_NONE for external tokens: map the subject to a user */
    char iss[FM_JWT_CLAIM_MAX + 1];
    char sub[FM_JWT_CLAIM_MAX + 1];
    char sid[FM_JWT_CLAIM_MAX + 1]; /**< always set for our tokens; empty if an external token has none */
    char jti[FM_JWT_CLAIM_MAX + 1]; /**< empty if absent */
    int64_t iat;                    /**< 0 if absent */
    int64_t nbf;                    /**< 0 if absent */
    int64_t exp;
} fm_jwt_claims_t;

/** What fm_jwt_issue_hs256 puts in a token. Strings are borrowed for the call only. */
typedef struct {
    const char *issuer;     /**< `iss`; every string here: 1..FM_JWT_CLAIM_MAX bytes of printable ASCII */
    const char *subject;    /**< `sub`: the user id as a string */
    const char *session_id; /**< `sid`: the refresh session this token belongs to (revocation) */
    fm_jwt_role_t role;     /**< admin, member or viewer */
    int64_t issued_at;      /**< unix seconds; used for `iat` and `nbf` */
    int64_t ttl_seconds;    /**< > 0; `exp` = issued_at + ttl_seconds */
    const char *jti;        /**< optional; NULL draws a random 128-bit one */
} fm_jwt_issue_t;

/** Configuration of a verifier. Everything is copied; the caller may free it after fm_jwt_verifier_new. */
typedef struct {
    const uint8_t *hs256_secret; /**< our signing secret, >= FM_JWT_MIN_SECRET_LEN bytes */
    size_t hs256_secret_len;
    const char *issuer; /**< our `iss`; tokens claiming it must be HS256 */

    /* Optional external identity provider: leave external_issuer NULL for none. */
    const char *external_issuer;     /**< its `iss`; must differ from `issuer` */
    fm_jwt_alg_t external_alg;       /**< FM_JWT_ALG_RS256 (RSA >= 2048 bits) or FM_JWT_ALG_ES256 (P-256) */
    const char *external_public_pem; /**< "-----BEGIN PUBLIC KEY-----" (SubjectPublicKeyInfo) */
    size_t external_public_pem_len;
    const char *external_audience; /**< optional: if set, `aud` (string or array) must contain it */
} fm_jwt_verifier_config_t;

/**
 * Verification keys and expectations. Immutable after fm_jwt_verifier_new, so one verifier may be shared by
 * all threads without locking; it has one owner, who frees it after every thread has stopped using it.
 */
typedef struct fm_jwt_verifier fm_jwt_verifier_t;

/**
 * Signs an HS256 token with claims iss, sub, sid, role, iat, nbf (= iat), exp and jti, header
 * {"alg":"HS256","typ":"JWT"}. Writes the NUL-terminated compact token into `out`
 * (FM_JWT_ISSUE_BUF_SIZE is always enough). Returns 0, or -1 on a short secret, an empty or over-long string,
 * an invalid role or ttl, a small buffer, or a crypto failure.
 */
int fm_jwt_issue_hs256(const uint8_t *secret, size_t secret_len, const fm_jwt_issue_t *claims, char *out,
                       size_t out_size);

/**
 * Creates a verifier from `config` (parsing the external PEM once). Returns NULL on an invalid configuration:
 * short secret, missing or over-long issuer, equal issuers, an unparsable PEM, or a key that does not fit
 * `external_alg` (RSA < 2048 bits, EC not on P-256). Free with fm_jwt_verifier_free.
 */
fm_jwt_verifier_t *fm_jwt_verifier_new(const fm_jwt_verifier_config_t *config);

/** Frees a verifier and wipes its secret. NULL is allowed. */
void fm_jwt_verifier_free(fm_jwt_verifier_t *verifier);

/**
 * Verifies a compact token of `len` bytes (need not be NUL-terminated) at unix time `now`.
 * Returns 0 and fills `out`, or -1 with `out` zeroed except `out->error`.
 * Checks, in order: size; three base64url parts whose first two are JSON objects; `alg` not `none`;
 * `iss` selects the key (our issuer or the external one); `alg` equals that key's pinned algorithm;
 * signature; exp (required), nbf and iat with FM_JWT_LEEWAY_SECONDS; sub (required); for our tokens sid and a
 * role of admin|member|viewer; for external tokens the audience when configured.
 */
int fm_jwt_verify(const fm_jwt_verifier_t *verifier, const char *token, size_t len, int64_t now, fm_jwt_claims_t *out);

/**
 * A thread's memory of the tokens it verified with one verifier (not thread-safe: one per thread). A token seen
 * again byte for byte is not parsed or verified again: its remembered claims are checked against `now` (exp, nbf,
 * iat with the leeway) and returned. Only successful verifications are remembered; a different verifier clears it.
 * Revocation is not this module's business: the caller still checks the session (`sid`) as before.
 */
typedef struct fm_jwt_memo fm_jwt_memo_t;

/** A new empty memo (64 entries, made as used), or NULL if out of memory. */
fm_jwt_memo_t *fm_jwt_memo_new(void);

/** Frees a memo and wipes the tokens it holds. NULL is allowed. */
void fm_jwt_memo_free(fm_jwt_memo_t *memo);

/** fm_jwt_verify with `memo` (NULL: plain fm_jwt_verify); same results, same `out`. */
int fm_jwt_verify_memo(const fm_jwt_verifier_t *verifier, fm_jwt_memo_t *memo, const char *token, size_t len,
                       int64_t now, fm_jwt_claims_t *out);

/** How many verifications the memo answered (`hits`) and how many it passed on (`misses`). */
void fm_jwt_memo_stats(const fm_jwt_memo_t *memo, uint64_t *hits, uint64_t *misses);

/** Stable snake_case code for an error ("expired", "bad_signature", ...), for API error bodies and logs. */
const char *fm_jwt_error_code(fm_jwt_error_t error);

/** "admin", "member" or "viewer"; NULL for FM_JWT_ROLE_NONE or an invalid value. */
const char *fm_jwt_role_name(fm_jwt_role_t role);

#endif /* FM_JWT_H */
