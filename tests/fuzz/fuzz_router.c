/*
 * Fuzz target for fm_router_match (common/router.c) with the control plane's route table (DESIGN.md §5, plus the
 * built-in /healthz and /metrics) on arbitrary method and path bytes.
 *
 * Input: byte 0 picks the size of the `allow` buffer (0..79; 64 is what http.c passes); the rest is
 * "METHOD PATH", split at the first space (no space: the method is GET and everything is the path). Method and
 * path are copied into buffers of their exact length without a NUL, so a read past `len` is an ASan report.
 *
 * Invariants: captures are non-empty slices of the path without '/', and substituting them into the pattern
 * gives the path back; the result, the route and the captures equal those of an independent segment-by-segment
 * matcher (first route in table order; HEAD served by GET); `allow` is NUL-terminated inside its buffer, lists
 * only methods of routes that match the path, and with a large enough buffer lists all of them in table order.
 * (With a small buffer router.c may skip a method that would just fit; that is allowed.)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "router.h"

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_router: invariant failed at line %d: %s\n", __LINE__, #cond);                        \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

static void handle_dummy(struct fm_req *r)
{
    (void)r;
}

static const fm_route_t routes[] = {
    {"GET", "/healthz", handle_dummy},
    {"GET", "/metrics", handle_dummy},
    {"GET", "/readyz", handle_dummy},
    {"POST", "/v1/auth/register", handle_dummy},
    {"POST", "/v1/auth/login", handle_dummy},
    {"POST", "/v1/auth/refresh", handle_dummy},
    {"POST", "/v1/auth/logout", handle_dummy},
    {"GET", "/v1/me", handle_dummy},
    {"POST", "/v1/uploads", handle_dummy},
    {"POST", "/v1/uploads/{id}/parts", handle_dummy},
    {"GET", "/v1/uploads/{id}/parts", handle_dummy},
    {"POST", "/v1/uploads/{id}/complete", handle_dummy},
    {"DELETE", "/v1/uploads/{id}", handle_dummy},
    {"POST", "/v1/events/s3", handle_dummy},
    {"GET", "/v1/files", handle_dummy},
    {"GET", "/v1/files/delta", handle_dummy},
    {"GET", "/v1/files/{id}", handle_dummy},
    {"PATCH", "/v1/files/{id}", handle_dummy},
    {"DELETE", "/v1/files/{id}", handle_dummy},
    {"POST", "/v1/files/{id}/restore", handle_dummy},
    {"GET", "/v1/files/{id}/download", handle_dummy},
    {"POST", "/v1/files/{id}/shares", handle_dummy},
    {"DELETE", "/v1/shares/{id}", handle_dummy},
    {"GET", "/v1/shares/{token}", handle_dummy},
    {"GET", "/v1/search", handle_dummy},
    {"GET", "/v1/search/suggest", handle_dummy},
    {"GET", "/v1/jobs/{id}", handle_dummy},
    {"GET", "/v1/admin/jobs", handle_dummy},
    {"POST", "/v1/admin/jobs/{id}/retry", handle_dummy},
    {"GET", "/v1/admin/stats", handle_dummy},
    /* Not in the API: the most captures a route may have, and one more than that (which can never match). */
    {"PUT", "/v1/test/{a}/{b}/x/{c}/{d}", handle_dummy},
    {"PUT", "/v1/test/{a}/{b}/{c}/{d}/{e}", handle_dummy},
};
#define ROUTE_COUNT (sizeof(routes) / sizeof(routes[0]))

/* Reference matcher, written independently of router.c: the pattern and the path are compared one '/'-separated
 * segment at a time; a "{name}" segment captures one non-empty path segment. */
static int ref_match(const char *pattern, const char *path, size_t path_len, h2o_iovec_t *captures, size_t *count)
{
    const char *p = pattern, *s = path, *end = path + path_len;
    size_t n = 0;
    if (path_len == 0 || *s != '/')
        return 0;
    for (;;) {
        /* p and s sit on a '/'; compare the segments that follow. */
        p++;
        s++;
        size_t p_len = strcspn(p, "/");
        const char *slash = memchr(s, '/', (size_t)(end - s));
        size_t s_len = slash != NULL ? (size_t)(slash - s) : (size_t)(end - s);
        if (p_len > 0 && p[0] == '{' && p[p_len - 1] == '}') {
            if (s_len == 0 || n == FM_ROUTE_MAX_PARAMS)
                return 0;
            captures[n].base = (char *)s;
            captures[n].len = s_len;
            n++;
        } else if (p_len != s_len || memcmp(p, s, s_len) != 0) {
            return 0;
        }
        p += p_len;
        s += s_len;
        if (*p == '\0' || s == end)
            break;
    }
    if (*p != '\0' || s != end)
        return 0;
    *count = n;
    return 1;
}

static int method_is(h2o_iovec_t method, const char *name)
{
    return method.len == strlen(name) && memcmp(method.base, name, method.len) == 0;
}

/* The pattern with each "{name}" replaced by the next capture must spell the path exactly. */
static void check_substitution(const char *pattern, h2o_iovec_t path, const h2o_iovec_t *params, size_t count)
{
    size_t used = 0, at = 0;
    for (const char *p = pattern; *p != '\0';) {
        if (*p == '{') {
            CHECK(used < count);
            CHECK(at + params[used].len <= path.len && params[used].base == path.base + at);
            at += params[used].len;
            used++;
            p = strchr(p, '}') + 1;
        } else {
            CHECK(at < path.len && path.base[at] == *p);
            at++;
            p++;
        }
    }
    CHECK(used == count && at == path.len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t allow_size = data[0] % 80;
    data++;
    size--;
    const uint8_t *space = memchr(data, ' ', size);
    size_t method_len = space != NULL ? (size_t)(space - data) : 3;
    const uint8_t *method_src = space != NULL ? data : (const uint8_t *)"GET";
    const uint8_t *path_src = space != NULL ? space + 1 : data;
    size_t path_len = space != NULL ? size - method_len - 1 : size;

    /* Exact-size copies: under ASan even malloc(0) is a real pointer whose every byte access is reported. `allow`
     * of size 0 gets one byte, a sentinel that must stay untouched. */
    char *method_buf = malloc(method_len);
    char *path_buf = malloc(path_len);
    char *allow = malloc(allow_size > 0 ? allow_size : 1);
    memcpy(method_buf, method_src, method_len);
    memcpy(path_buf, path_src, path_len);
    if (allow_size == 0)
        allow[0] = 'x';
    h2o_iovec_t method = h2o_iovec_init(method_buf, method_len);
    h2o_iovec_t path = h2o_iovec_init(path_buf, path_len);

    const fm_route_t *route = NULL;
    h2o_iovec_t params[FM_ROUTE_MAX_PARAMS];
    size_t param_count = 99;
    fm_route_result_t result =
        fm_router_match(routes, ROUTE_COUNT, method, path, &route, params, &param_count, allow, allow_size);

    /* What the reference expects, and the Allow list it would write with unlimited room. */
    fm_route_result_t want = FM_ROUTE_NOT_FOUND;
    size_t want_index = 0, want_count = 0;
    h2o_iovec_t want_params[FM_ROUTE_MAX_PARAMS];
    char want_allow[512] = "";
    for (size_t i = 0; i < ROUTE_COUNT; i++) {
        h2o_iovec_t captures[FM_ROUTE_MAX_PARAMS];
        size_t count = 0;
        if (!ref_match(routes[i].pattern, path_buf, path_len, captures, &count))
            continue;
        int same =
            method_is(method, routes[i].method) || (method_is(method, "HEAD") && strcmp(routes[i].method, "GET") == 0);
        if (same) {
            want = FM_ROUTE_FOUND;
            want_index = i;
            want_count = count;
            memcpy(want_params, captures, sizeof(captures[0]) * count);
            break;
        }
        want = FM_ROUTE_METHOD_NOT_ALLOWED;
        if (want_allow[0] != '\0')
            strcat(want_allow, ", ");
        strcat(want_allow, routes[i].method);
    }

    CHECK(result == want);
    if (result == FM_ROUTE_FOUND) {
        CHECK(route == &routes[want_index]);
        CHECK(param_count == want_count && param_count <= FM_ROUTE_MAX_PARAMS);
        for (size_t i = 0; i < param_count; i++) {
            CHECK(params[i].len > 0);
            CHECK(params[i].base >= path.base && params[i].base + params[i].len <= path.base + path.len);
            CHECK(memchr(params[i].base, '/', params[i].len) == NULL);
            CHECK(params[i].base == want_params[i].base && params[i].len == want_params[i].len);
        }
        check_substitution(route->pattern, path, params, param_count);
    }
    if (allow_size == 0) {
        CHECK(allow[0] == 'x');
    } else {
        size_t allow_len = strnlen(allow, allow_size);
        CHECK(allow_len < allow_size);
        if (result != FM_ROUTE_METHOD_NOT_ALLOWED) {
            /* FOUND may have listed methods of earlier routes; NOT_FOUND lists none. */
            CHECK(result == FM_ROUTE_FOUND || allow_len == 0);
        } else if (strlen(want_allow) + 4 <= allow_size) {
            /* Room for the whole list (router.c keeps a 3-byte margin per entry): all of it, in table order. */
            CHECK(strcmp(allow, want_allow) == 0);
        } else {
            /* Truncated: what is there is still a list of methods this path accepts. */
            char *copy = strdup(allow), *save = NULL;
            for (char *m = strtok_r(copy, ", ", &save); m != NULL; m = strtok_r(NULL, ", ", &save)) {
                int known = 0;
                for (size_t i = 0; i < ROUTE_COUNT && !known; i++) {
                    h2o_iovec_t captures[FM_ROUTE_MAX_PARAMS];
                    size_t count = 0;
                    known = strcmp(routes[i].method, m) == 0 &&
                            ref_match(routes[i].pattern, path_buf, path_len, captures, &count);
                }
                CHECK(known);
            }
            free(copy);
        }
    }
    free(method_buf);
    free(path_buf);
    free(allow);
    return 0;
}
