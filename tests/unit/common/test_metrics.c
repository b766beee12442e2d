/* common/metrics.c: Prometheus text exposition of counters, gauges and cumulative histograms. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "metrics.h"

static void test_render(void **state)
{
    fm_metrics_describe("t_requests_total", FM_METRIC_COUNTER, "Requests");
    fm_metrics_counter_add("t_requests_total", "route=\"/a\",status=\"200\"", 1);
    fm_metrics_counter_add("t_requests_total", "route=\"/a\",status=\"200\"", 2);
    fm_metrics_counter_add("t_requests_total", "route=\"/a\",status=\"404\"", 1);
    fm_metrics_gauge_set("t_pool", "thread=\"0\"", 4);
    fm_metrics_gauge_set("t_pool", "thread=\"0\"", 3);
    fm_metrics_observe("t_seconds", "route=\"/a\"", 0.0007);
    fm_metrics_observe("t_seconds", "route=\"/a\"", 0.02);
    fm_metrics_observe("t_seconds", "route=\"/a\"", 20);

    size_t len;
    char *text = fm_metrics_render(&len);
    assert_int_equal(strlen(text), len);
    assert_non_null(strstr(text, "# HELP t_requests_total Requests\n# TYPE t_requests_total counter\n"));
    assert_non_null(strstr(text, "t_requests_total{route=\"/a\",status=\"200\"} 3\n"));
    assert_non_null(strstr(text, "t_requests_total{route=\"/a\",status=\"404\"} 1\n"));
    assert_non_null(strstr(text, "# TYPE t_pool gauge\nt_pool{thread=\"0\"} 3\n"));
    /* buckets are cumulative: 0.0005 → 0, 0.001 → 1, 0.025 → 2, +Inf → 3 */
    assert_non_null(strstr(text, "t_seconds_bucket{route=\"/a\",le=\"0.0005\"} 0\n"));
    assert_non_null(strstr(text, "t_seconds_bucket{route=\"/a\",le=\"0.001\"} 1\n"));
    assert_non_null(strstr(text, "t_seconds_bucket{route=\"/a\",le=\"0.025\"} 2\n"));
    assert_non_null(strstr(text, "t_seconds_bucket{route=\"/a\",le=\"10\"} 2\n"));
    assert_non_null(strstr(text, "t_seconds_bucket{route=\"/a\",le=\"+Inf\"} 3\n"));
    assert_non_null(strstr(text, "t_seconds_count{route=\"/a\"} 3\n"));
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_render)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
