/* Router: see router.h. */
#include "router.h"

#include <string.h>

/* Matches one pattern against a path; fills captures. Both start with '/'. */
static int match_pattern(const char *pattern, h2o_iovec_t path, h2o_iovec_t *params, size_t *param_count)
{
    const char *p = pattern, *s = path.base, *end = path.base + path.len;
    size_t count = 0;
    while (*p != '\0' && s < end) {
        if (*p == '{') {
            const char *close = strchr(p, '}');
            const char *seg_end = memchr(s, '/', end - s);
            if (close == NULL)
                return 0;
            if (seg_end == NULL)
                seg_end = end;
            if (seg_end == s || count == FM_ROUTE_MAX_PARAMS)
                return 0;
            params[count++] = h2o_iovec_init(s, seg_end - s);
            p = close + 1;
            s = seg_end;
            continue;
        }
        if (*p != *s)
            return 0;
        ++p;
        ++s;
    }
    if (*p != '\0' || s != end)
        return 0;
    *param_count = count;
    return 1;
}

fm_route_result_t fm_router_match(const fm_route_t *routes, size_t route_count, h2o_iovec_t method, h2o_iovec_t path,
                                  const fm_route_t **route, h2o_iovec_t params[FM_ROUTE_MAX_PARAMS],
                                  size_t *param_count, char *allow, size_t allow_size)
{
    size_t allow_len = 0;
    int path_matched = 0;
    if (allow_size > 0)
        allow[0] = '\0';
    for (size_t i = 0; i < route_count; ++i) {
        h2o_iovec_t captures[FM_ROUTE_MAX_PARAMS];
        size_t count = 0;
        if (!match_pattern(routes[i].pattern, path, captures, &count))
            continue;
        /* HEAD is answered by the GET handler (h2o drops the body). */
        int same = h2o_memis(method.base, method.len, routes[i].method, strlen(routes[i].method)) ||
                   (h2o_memis(method.base, method.len, H2O_STRLIT("HEAD")) && strcmp(routes[i].method, "GET") == 0);
        if (same) {
            *route = &routes[i];
            memcpy(params, captures, sizeof(captures[0]) * count);
            *param_count = count;
            return FM_ROUTE_FOUND;
        }
        path_matched = 1;
        size_t mlen = strlen(routes[i].method);
        if (allow_len + mlen + 3 < allow_size) {
            if (allow_len > 0) {
                memcpy(allow + allow_len, ", ", 2);
                allow_len += 2;
            }
            memcpy(allow + allow_len, routes[i].method, mlen + 1);
            allow_len += mlen;
        }
    }
    return path_matched ? FM_ROUTE_METHOD_NOT_ALLOWED : FM_ROUTE_NOT_FOUND;
}
