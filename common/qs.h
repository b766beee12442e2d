/*
 * Percent-encoding (RFC 3986 §2.1) and query strings: the one hex-digit reader, encoder, decoder and query-parameter
 * reader every service uses. Pure functions on the caller's buffers: no allocation, no state, any thread.
 *
 * The variants are explicit flags, never guessed: form encoding ('+' is a space: S3 event keys, ListObjectsV2 with
 * encoding-type=url, HTML/Uppy query strings) versus URI paths (a '+' is a '+'); '/' kept (an S3 key in a path) or
 * escaped (a query value, SigV4's canonical query). h2o 2.2.5's h2o_uri_escape does not serve: it keeps the RFC 3986
 * sub-delims (!'()*+,;= …) that SigV4 and our signed URLs must escape, and allocates from a pool.
 */
#ifndef FM_QS_H
#define FM_QS_H

#include <h2o.h>
#include <stddef.h>

/** The value 0..15 of the hex digit `c` (either case), or -1. */
int fm_hex_digit(char c);

/** The byte of the escape "%XX" at p[0..2] (p[0] is '%'), `avail` bytes readable from p; -1 if truncated or not hex. */
int fm_pct_escape(const char *p, size_t avail);

enum {
    FM_PCT_KEEP_SLASH = 1, /* encode: '/' stays (an S3 key's path, SigV4's canonical URI) */
    FM_PCT_FORM = 2,       /* decode: '+' is a space (application/x-www-form-urlencoded, S3's encoded keys) */
};

/**
 * Writes `len` bytes of `s` percent-encoded per RFC 3986 at `out`: unreserved bytes (A-Z a-z 0-9 - . _ ~) as they
 * are, '/' too with FM_PCT_KEEP_SLASH, every other byte (UTF-8 included) as %XX upper-case; a space is %20, never
 * '+' (SigV4 UriEncode, RFC 3986). `out` holds 3 * len bytes; no NUL is written. Returns the end of what it wrote.
 */
char *fm_pct_encode(char *out, const char *s, size_t len, int flags);

/** What fm_pct_decode and fm_qs_get report. Every caller keeps its own answer to each. */
typedef enum {
    FM_PCT_OK = 0,
    FM_PCT_BAD_ESCAPE = -1, /* '%' not followed by two hex digits (truncated or not hex) */
    FM_PCT_NUL = -2,        /* decodes to a NUL byte: the result could not be a C string */
    FM_PCT_TOO_LONG = -3,   /* more than out_size - 1 bytes decoded */
} fm_pct_result_t;

/**
 * Decodes `len` bytes of `in` (%XX escapes, and '+' as a space with FM_PCT_FORM) into `out`, NUL-terminated, at most
 * out_size - 1 bytes; *out_len (if not NULL) = the decoded length. The first problem from the left is reported.
 */
fm_pct_result_t fm_pct_decode(const char *in, size_t len, char *out, size_t out_size, size_t *out_len, int flags);

/**
 * The next '&'-separated item of `*rest` (a raw query, without the '?'), which it steps past. `*name` and `*value`
 * are raw (still encoded) slices of the query; `value->base` is NULL for an item without '='. An empty item ("a&&b")
 * is an item with an empty name. Returns 0 when nothing is left.
 */
int fm_qs_next(h2o_iovec_t *rest, h2o_iovec_t *name, h2o_iovec_t *value);

enum {
    FM_QS_SKIP_EMPTY = 1, /* fm_qs_raw: "name=" does not count; a later "name=v" is found */
    FM_QS_BARE = 2,       /* fm_qs_raw: "name" without '=' counts, with an empty value */
};

/**
 * The raw value (still encoded) of the first item named `name` (compared raw, byte for byte) that has a '=', or
 * {NULL, 0} when absent; an empty value is {non-NULL, 0}. Flags: FM_QS_SKIP_EMPTY, FM_QS_BARE. `*count` (if not
 * NULL) = how many items qualify, so a caller can refuse a repeat.
 */
h2o_iovec_t fm_qs_raw(h2o_iovec_t query, const char *name, int flags, int *count);

/** What fm_qs_get reports besides fm_pct_result_t's problems. */
enum {
    FM_QS_ABSENT = 1, /* no item with that name and a '=' */
    FM_QS_EMPTY = 2,  /* found, and the value is empty (out is "") */
};

/**
 * The first item whose name, decoded (FM_PCT_FORM applies to names and values), equals `name` and that has a '=':
 * its value decoded into `out` (out_size bytes with the NUL; *out_len if not NULL). Returns FM_PCT_OK, FM_QS_EMPTY,
 * FM_QS_ABSENT, or the value's FM_PCT_BAD_ESCAPE / FM_PCT_NUL / FM_PCT_TOO_LONG. An item whose name does not decode
 * (or is longer than 63 bytes decoded) is not that parameter, and the search goes on.
 */
int fm_qs_get(h2o_iovec_t query, const char *name, int flags, char *out, size_t out_size, size_t *out_len);

#endif
