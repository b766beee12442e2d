/* UUID checks: see uuid.h. */
#include "uuid.h"

#include <string.h>

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
