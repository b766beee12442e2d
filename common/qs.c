/* Percent-encoding and query strings: see qs.h. */
#include "qs.h"

#include <string.h>

int fm_hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int fm_pct_escape(const char *p, size_t avail)
{
    if (avail < 3)
        return -1;
    int hi = fm_hex_digit(p[1]), lo = fm_hex_digit(p[2]);
    return hi < 0 || lo < 0 ? -1 : hi << 4 | lo;
}

static int unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
           c == '_' || c == '~';
}

char *fm_pct_encode(char *out, const char *s, size_t len, int flags)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < len; ++i) {
        unsigned char c = (unsigned char)s[i];
        if (unreserved(c) || (c == '/' && (flags & FM_PCT_KEEP_SLASH))) {
            *out++ = (char)c;
        } else {
            *out++ = '%';
            *out++ = hex[c >> 4];
            *out++ = hex[c & 15];
        }
    }
    return out;
}

fm_pct_result_t fm_pct_decode(const char *in, size_t len, char *out, size_t out_size, size_t *out_len, int flags)
{
    size_t n = 0;
    if (out_size == 0)
        return FM_PCT_TOO_LONG;
    for (size_t i = 0; i < len; ++i) {
        int c = (unsigned char)in[i];
        if (c == '+' && (flags & FM_PCT_FORM)) {
            c = ' ';
        } else if (c == '%') {
            if ((c = fm_pct_escape(in + i, len - i)) < 0) {
                out[n] = '\0';
                return FM_PCT_BAD_ESCAPE;
            }
            i += 2;
        }
        if (c == 0 || n + 1 >= out_size) {
            out[n] = '\0';
            return c == 0 ? FM_PCT_NUL : FM_PCT_TOO_LONG;
        }
        out[n++] = (char)c;
    }
    out[n] = '\0';
    if (out_len != NULL)
        *out_len = n;
    return FM_PCT_OK;
}

int fm_qs_next(h2o_iovec_t *rest, h2o_iovec_t *name, h2o_iovec_t *value)
{
    if (rest->base == NULL || rest->len == 0)
        return 0;
    const char *p = rest->base, *end = rest->base + rest->len;
    const char *amp = memchr(p, '&', rest->len), *item_end = amp ? amp : end;
    const char *eq = memchr(p, '=', (size_t)(item_end - p));
    *name = h2o_iovec_init(p, (size_t)((eq ? eq : item_end) - p));
    *value = eq ? h2o_iovec_init(eq + 1, (size_t)(item_end - eq - 1)) : h2o_iovec_init(NULL, 0);
    /* After a trailing '&' nothing is left: "a=1&" has one item, as the loops this replaced read it. */
    *rest = amp ? h2o_iovec_init(amp + 1, (size_t)(end - amp - 1)) : h2o_iovec_init(end, 0);
    return 1;
}

h2o_iovec_t fm_qs_raw(h2o_iovec_t query, const char *name, int flags, int *count)
{
    size_t name_len = strlen(name);
    h2o_iovec_t found = {NULL, 0}, item_name, value;
    if (count != NULL)
        *count = 0;
    while (fm_qs_next(&query, &item_name, &value)) {
        if (item_name.len != name_len || memcmp(item_name.base, name, name_len) != 0)
            continue;
        if (value.base == NULL) {
            if (!(flags & FM_QS_BARE))
                continue;
            value = h2o_iovec_init("", 0);
        }
        if (value.len == 0 && (flags & FM_QS_SKIP_EMPTY))
            continue;
        if (found.base == NULL)
            found = value;
        if (count == NULL)
            break;
        ++*count;
    }
    return found;
}

int fm_qs_get(h2o_iovec_t query, const char *name, int flags, char *out, size_t out_size, size_t *out_len)
{
    h2o_iovec_t item_name, value;
    while (fm_qs_next(&query, &item_name, &value)) {
        char decoded[64];
        if (value.base == NULL ||
            fm_pct_decode(item_name.base, item_name.len, decoded, sizeof(decoded), NULL, flags) != FM_PCT_OK ||
            strcmp(decoded, name) != 0)
            continue;
        size_t len = 0;
        fm_pct_result_t rc = fm_pct_decode(value.base, value.len, out, out_size, &len, flags);
        if (rc != FM_PCT_OK)
            return rc;
        if (out_len != NULL)
            *out_len = len;
        return len == 0 ? FM_QS_EMPTY : FM_PCT_OK;
    }
    if (out_size > 0)
        out[0] = '\0';
    return FM_QS_ABSENT;
}
