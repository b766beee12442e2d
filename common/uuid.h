/*
 * UUIDs as the API and the object keys write them (8-4-4-4-12 hex digits): the one check every service uses.
 */
#ifndef FM_UUID_H
#define FM_UUID_H

#include <stddef.h>

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
