/*
 * FNV-1a, 64 bits: a fast, non-cryptographic hash for picking a slot in the in-process tables (rcache.c, the signed
 * URL cache of download.c, the reconciler's seen-keys list). Never for anything an attacker must not collide.
 */
#ifndef FM_HASH_H
#define FM_HASH_H

#include <stddef.h>
#include <stdint.h>

/** The hash of `len` bytes; `seed` (0 for none) is mixed into the offset basis. */
static inline uint64_t fm_fnv1a(const void *data, size_t len, uint64_t seed)
{
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ULL ^ seed;
    for (size_t i = 0; i < len; ++i)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

#endif
