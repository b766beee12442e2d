/*
 * UUIDs as the API and the object keys write them (8-4-4-4-12 hex digits): the one check every service uses.
 */
#ifndef FM_UUID_H
#define FM_UUID_H

#include <stddef.h>

/**
 * A new id, written lowercase into out (36 digits and dashes + NUL): a version 7 UUID (RFC 9562 §5.7), the Unix time
 * in ms in its first 48 bits, then 74 random bits from OpenSSL's generator (drawn a few hundred bytes at a time per
 * thread: one RAND_bytes call per id cost as much as the rest). Ids made later sort after earlier ones (to the
 * millisecond), so PostgreSQL adds each new row's key at the right edge of its indexes instead of at a random page:
 * the new-record inserts cost a third less (docs/decisions.md "Time-ordered ids"). The ms it leaks is the row's
 * created_at, shown anyway; the 74 random bits keep ids unguessable, and no id is a capability on its own. Any thread.
 */
void fm_uuid_new(char out[37]);

/** True when s (len bytes) is a UUID in its 8-4-4-4-12 hex form (either case). */
int fm_uuid_valid(const char *s, size_t len);

/** True when s (len bytes) is a UUID written as we write them: lowercase hex only (object keys and signed URLs are
 *  case-sensitive, so "ABC…" names something else). */
int fm_uuid_lower_valid(const char *s, size_t len);

/** "incoming/": the prefix of every upload's object key (uploads_create.c writes `incoming/{upload id}`). */
#define FM_INCOMING_PREFIX "incoming/"
#define FM_INCOMING_PREFIX_LEN (sizeof(FM_INCOMING_PREFIX) - 1)
/** Bytes of an upload's object key: the prefix and 36. */
#define FM_INCOMING_KEY_LEN (FM_INCOMING_PREFIX_LEN + 36)

/**
 * The upload id in `key` (len bytes) when it is one of our upload keys, `incoming/` + a lowercase UUID; else NULL.
 * The one case rule for object keys: we write the ids lowercase and S3 keys are case-sensitive, so
 * "incoming/ABC…" is someone else's object, refused by every service (events, the reconciler, Uppy, Lambda mode).
 * The id returned points into `key` (36 bytes, not NUL-terminated unless key is).
 */
const char *fm_incoming_key_id(const char *key, size_t len);

#endif
