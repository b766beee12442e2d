/* Account email addresses: see email.h. */
#include "email.h"

#include <string.h>

int fm_email_normalize(const char *email, size_t len, char *out, size_t out_size)
{
    if (out == NULL || out_size == 0)
        return -1;
    out[0] = '\0';
    if (email == NULL || len < 3 || len > FM_EMAIL_MAX || out_size < len + 1)
        return -1;
    size_t at = len;
    for (size_t i = 0; i < len; ++i) {
        unsigned char c = (unsigned char)email[i];
        /* Printable ASCII only: no space, no control, no DEL, no byte of a UTF-8 sequence. */
        if (c < 0x21 || c > 0x7e)
            return -1;
        if (c == '@') {
            if (at != len)
                return -1;
            at = i;
        }
    }
    if (at == len || at == 0 || at == len - 1)
        return -1;
    for (size_t i = 0; i < len; ++i) {
        char c = email[i];
        out[i] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
    }
    out[len] = '\0';
    return 0;
}
