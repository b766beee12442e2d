/*
 * password: argon2id password hashes (RFC 9106) in PHC string form, and opaque refresh tokens.
 *
 * Hashes are stored as `$argon2id$v=19$m=<KiB>,t=<passes>,p=<lanes>$<salt b64>$<hash b64>` (standard base64
 * without padding, as libargon2 writes it), with a 16-byte random salt and a 32-byte tag. The parameters travel
 * inside the string, so raising them later only needs fm_password_needs_rehash at the next successful login.
 *
 * Each hash or verify allocates `memory_kib` KiB (19 MiB by default) and holds a CPU for tens of ms: callers
 * must bound how many run at once (a small worker pool), or a burst of logins exhausts memory.
 */
#ifndef FM_PASSWORD_H
#define FM_PASSWORD_H

#include <stddef.h>
#include <stdint.h>

/*
 * Default cost: OWASP Password Storage Cheat Sheet's first argon2id configuration, m=19456 KiB (19 MiB),
 * t=2, p=1. A parallelism of 1 keeps one login on one core; the cost is in memory, which is what resists GPUs.
 */
/** Default argon2id memory cost in KiB (19 MiB). */
#define FM_PASSWORD_DEFAULT_MEMORY_KIB 19456
/** Default argon2id number of passes over memory. */
#define FM_PASSWORD_DEFAULT_ITERATIONS 2
/** Default argon2id lanes (and threads). */
#define FM_PASSWORD_DEFAULT_PARALLELISM 1

/** Shortest password fm_password_hash accepts, in bytes (the API layer may demand more). */
#define FM_PASSWORD_MIN_LEN 8
/** Longest password accepted by hash and verify, in bytes: argon2 takes any length, but we bound the work. */
#define FM_PASSWORD_MAX_LEN 1024

/**
 * Upper bounds on parameters, for hashing and, more importantly, for verifying a stored string: a corrupted or
 * planted row with m=4294967295 must not make us allocate 4 TiB. Memory is capped at 1 GiB.
 */
#define FM_PASSWORD_MAX_MEMORY_KIB (1024u * 1024u)
/** Upper bound on passes accepted in parameters and stored strings. */
#define FM_PASSWORD_MAX_ITERATIONS 64u
/** Upper bound on lanes accepted in parameters and stored strings. */
#define FM_PASSWORD_MAX_PARALLELISM 16u

/** Size of the buffer fm_password_hash writes (the longest PHC string within the bounds above, plus NUL). */
#define FM_PASSWORD_HASH_BUF_SIZE 128

/** Refresh token size in random bytes (256 bits). */
#define FM_TOKEN_DEFAULT_BYTES 32
/** Smallest and largest random byte counts fm_token_random accepts. */
#define FM_TOKEN_MIN_BYTES 16
/** Largest random byte count fm_token_random accepts. */
#define FM_TOKEN_MAX_BYTES 256
/** Longest token string fm_token_hash accepts, in characters (base64url of FM_TOKEN_MAX_BYTES). */
#define FM_TOKEN_MAX_LEN 342
/** Buffer size for fm_token_hash: 64 lowercase hex digits of SHA-256 plus NUL. */
#define FM_TOKEN_HASH_BUF_SIZE 65

/** argon2id cost parameters. */
typedef struct {
    uint32_t memory_kib;  /**< m: KiB of memory, >= 8 * parallelism, <= FM_PASSWORD_MAX_MEMORY_KIB */
    uint32_t iterations;  /**< t: passes, 1..FM_PASSWORD_MAX_ITERATIONS */
    uint32_t parallelism; /**< p: lanes, 1..FM_PASSWORD_MAX_PARALLELISM */
} fm_password_params_t;

/** The default parameters (FM_PASSWORD_DEFAULT_*), returned by value. */
fm_password_params_t fm_password_default_params(void);

/**
 * Hashes `len` bytes of `password` (taken as bytes, not normalised) with argon2id, a fresh 16-byte salt from
 * RAND_bytes and `params` (NULL for the defaults), writing the NUL-terminated PHC string into `out`, which must
 * hold FM_PASSWORD_HASH_BUF_SIZE bytes. Returns 0, or -1 if len is outside FM_PASSWORD_MIN_LEN..MAX_LEN,
 * params are out of bounds, or the RNG or argon2 fails.
 */
int fm_password_hash(const char *password, size_t len, const fm_password_params_t *params,
                     char out[FM_PASSWORD_HASH_BUF_SIZE]);

/**
 * Checks `len` bytes of `password` against a stored PHC string (NUL-terminated). Returns 0 on a match and -1 on
 * a mismatch or any error (not argon2id v=19, unparsable, parameters beyond the FM_PASSWORD_MAX_* bounds,
 * password longer than FM_PASSWORD_MAX_LEN). The tag comparison is constant time (libargon2).
 */
int fm_password_verify(const char *encoded, const char *password, size_t len);

/**
 * Returns 1 if `encoded` should be replaced by a fresh hash of the same password (after it verified): it is not
 * argon2id v=19, cannot be parsed, or its m/t/p, salt length or tag length differ from `params` (NULL for the
 * defaults) and ours. Returns 0 if it is current.
 */
int fm_password_needs_rehash(const char *encoded, const fm_password_params_t *params);

/**
 * Writes a new opaque token, the unpadded base64url of `bytes` random bytes (RAND_bytes), NUL-terminated, into
 * `out`. With FM_TOKEN_DEFAULT_BYTES that is 43 characters. Returns 0, or -1 if `bytes` is outside
 * FM_TOKEN_MIN_BYTES..FM_TOKEN_MAX_BYTES, `out_size` is too small, or the RNG fails.
 */
int fm_token_random(char *out, size_t out_size, size_t bytes);

/**
 * Writes the lowercase hex SHA-256 of the `len`-byte `token` into `out` (FM_TOKEN_HASH_BUF_SIZE bytes): the form
 * a refresh token is stored and looked up in, so a database leak does not leak usable tokens. A plain hash is
 * enough because the token carries 256 random bits, unlike a password. Returns 0, or -1 if len is 0 or above
 * FM_TOKEN_MAX_LEN, or on a crypto failure.
 */
int fm_token_hash(const char *token, size_t len, char out[FM_TOKEN_HASH_BUF_SIZE]);

#endif /* FM_PASSWORD_H */
