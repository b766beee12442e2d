/* UUID checks: see uuid.h. */
#include "uuid.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

void fm_uuid_new(char out[37])
{
    static _Thread_local unsigned char pool[512];
    static _Thread_local size_t left;
    if (left < 10) {
        if (RAND_bytes(pool, sizeof(pool)) != 1) {
            fm_error("RAND_bytes failed: no id can be made");
            abort();
        }
        left = sizeof(pool);
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    unsigned char b[16];
    for (int i = 0; i < 6; ++i)
        b[i] = (unsigned char)(ms >> (40 - 8 * i));
    memcpy(b + 6, pool + sizeof(pool) - left, 10);
    OPENSSL_cleanse(pool + sizeof(pool) - left, 10); /* each byte is handed out once */
    left -= 10;
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x70); /* version 7 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* variant 10 */
    static const char hex[] = "0123456789abcdef";
    char *p = out;
    for (int i = 0; i < 16; ++i) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *p++ = '-';
        *p++ = hex[b[i] >> 4];
        *p++ = hex[b[i] & 15];
    }
    *p = '\0';
}

static int check(const char *s, size_t len, int lower_only)
{
    if (s == NULL || len != 36)
        return 0;
    for (size_t i = 0; i < 36; ++i) {
        char c = s[i];
        int dash = i == 8 || i == 13 || i == 18 || i == 23;
        int hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (!lower_only && c >= 'A' && c <= 'F');
        if (dash ? c != '-' : !hex)
            return 0;
    }
    return 1;
}

int fm_uuid_valid(const char *s, size_t len)
{
    return check(s, len, 0);
}

int fm_uuid_lower_valid(const char *s, size_t len)
{
    return check(s, len, 1);
}

const char *fm_incoming_key_id(const char *key, size_t len)
{
    if (key == NULL || len != FM_INCOMING_KEY_LEN || memcmp(key, FM_INCOMING_PREFIX, FM_INCOMING_PREFIX_LEN) != 0)
        return NULL;
    return fm_uuid_lower_valid(key + FM_INCOMING_PREFIX_LEN, 36) ? key + FM_INCOMING_PREFIX_LEN : NULL;
}
