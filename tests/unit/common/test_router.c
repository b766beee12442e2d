/* common/router.c: pattern matching, captures, 404 vs 405 with Allow. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "router.h"

static void handler_a(struct fm_req *r) {}
static void handler_b(struct fm_req *r) {}

static const fm_route_t routes[] = {
    {"GET", "/v1/files/{id}", handler_a},
    {"DELETE", "/v1/files/{id}", handler_b},
    {"POST", "/v1/uploads/{id}/parts", handler_a},
    {"GET", "/v1/uploads/{id}/parts", handler_b},
    {"GET", "/v1/files/delta", handler_b}, /* after {id}: table order decides, so "delta" is captured as an id */
    {"GET", "/v1/a/{x}/b/{y}", handler_a},
};
#define COUNT (sizeof(routes) / sizeof(routes[0]))

static fm_route_result_t match(const char *method, const char *path, const fm_route_t **route, h2o_iovec_t *params,
                               size_t *count, char *allow)
{
    return fm_router_match(routes, COUNT, h2o_iovec_init(method, strlen(method)), h2o_iovec_init(path, strlen(path)),
                           route, params, count, allow, 64);
}

static void test_capture(void **state)
{
    const fm_route_t *route = NULL;
    h2o_iovec_t params[FM_ROUTE_MAX_PARAMS];
    size_t count = 0;
    char allow[64];
    assert_int_equal(match("GET", "/v1/files/abc-123", &route, params, &count, allow), FM_ROUTE_FOUND);
    assert_ptr_equal(route, &routes[0]);
    assert_int_equal(count, 1);
    assert_int_equal(params[0].len, 7);
    assert_memory_equal(params[0].base, "abc-123", 7);

    assert_int_equal(match("GET", "/v1/a/one/b/two", &route, params, &count, allow), FM_ROUTE_FOUND);
    assert_int_equal(count, 2);
    assert_memory_equal(params[1].base, "two", 3);
}

static void test_method_selects_route(void **state)
{
    const fm_route_t *route = NULL;
    h2o_iovec_t params[FM_ROUTE_MAX_PARAMS];
    size_t count = 0;
    char allow[64];
    assert_int_equal(match("DELETE", "/v1/files/x", &route, params, &count, allow), FM_ROUTE_FOUND);
    assert_ptr_equal(route->handler, handler_b);
    assert_int_equal(match("GET", "/v1/uploads/u1/parts", &route, params, &count, allow), FM_ROUTE_FOUND);
    assert_ptr_equal(route, &routes[3]);
    /* HEAD is served by the GET route */
    assert_int_equal(match("HEAD", "/v1/files/x", &route, params, &count, allow), FM_ROUTE_FOUND);
    assert_ptr_equal(route, &routes[0]);
}

static void test_not_found(void **state)
{
    const fm_route_t *route = NULL;
    h2o_iovec_t params[FM_ROUTE_MAX_PARAMS];
    size_t count = 0;
    char allow[64];
    const char *paths[] = {"/", "/v1/files", "/v1/files/", "/v1/files/x/", "/v1/files/x/y", "/v1/filesx/1",
                           "/v1/uploads//parts", "", "/v1/a/1/b/"};
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); ++i)
        assert_int_equal(match("GET", paths[i], &route, params, &count, allow), FM_ROUTE_NOT_FOUND);
}

static void test_method_not_allowed_lists_allow(void **state)
{
    const fm_route_t *route = NULL;
    h2o_iovec_t params[FM_ROUTE_MAX_PARAMS];
    size_t count = 0;
    char allow[64];
    assert_int_equal(match("PUT", "/v1/files/x", &route, params, &count, allow), FM_ROUTE_METHOD_NOT_ALLOWED);
    assert_string_equal(allow, "GET, DELETE");
    assert_int_equal(match("PATCH", "/v1/uploads/u/parts", &route, params, &count, allow),
                     FM_ROUTE_METHOD_NOT_ALLOWED);
    assert_string_equal(allow, "POST, GET");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_capture),
        cmocka_unit_test(test_method_selects_route),
        cmocka_unit_test(test_not_found),
        cmocka_unit_test(test_method_not_allowed_lists_allow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
