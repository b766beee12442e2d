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

#endif
