/*
 * A small router: method + path pattern → handler. Patterns are literal segments and `{name}` captures, e.g.
 * "/v1/uploads/{id}/parts"; a capture matches one non-empty segment. Routes are tried in table order.
 */
#ifndef FM_ROUTER_H
#define FM_ROUTER_H

#include <h2o.h>

#define FM_ROUTE_MAX_PARAMS 4

struct fm_req;

/** A route; `pattern` doubles as the metrics/log label, so it never carries the ids of a real path. */
typedef struct fm_route {
    const char *method; /* "GET", "POST", … */
    const char *pattern;
    void (*handler)(struct fm_req *r);
} fm_route_t;

typedef enum { FM_ROUTE_FOUND, FM_ROUTE_NOT_FOUND, FM_ROUTE_METHOD_NOT_ALLOWED } fm_route_result_t;

/**
 * Finds the route for `method` and `path` (no query string). On FOUND, *route is set and params[] hold the
 * captures as slices of `path` (borrowed). On METHOD_NOT_ALLOWED, `allow` receives the comma-separated methods
 * that the path does accept (NUL-terminated, truncated to allow_size).
 */
fm_route_result_t fm_router_match(const fm_route_t *routes, size_t route_count, h2o_iovec_t method, h2o_iovec_t path,
                                  const fm_route_t **route, h2o_iovec_t params[FM_ROUTE_MAX_PARAMS],
                                  size_t *param_count, char *allow, size_t allow_size);

#endif
