/* common/metrics.c: Prometheus text exposition of counters, gauges and cumulative histograms. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
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

/* The number after `prefix` (a whole series name with labels, then a space) at the start of a line, or -1. */
static double series_value(const char *text, const char *prefix)
{
    char line_start[256];
    snprintf(line_start, sizeof(line_start), "\n%s", prefix);
    const char *at = strstr(text, line_start);
    return at == NULL ? -1 : strtod(at + strlen(line_start), NULL);
}

static void test_handle_identity(void **state)
{
    fm_metric_series_t *a = fm_metrics_series("h_total", FM_METRIC_COUNTER, "k=\"a\"");
    assert_non_null(a);
    assert_ptr_equal(fm_metrics_series("h_total", FM_METRIC_COUNTER, "k=\"a\""), a);
    assert_ptr_not_equal(fm_metrics_series("h_total", FM_METRIC_COUNTER, "k=\"b\""), a);
    assert_ptr_not_equal(fm_metrics_series("h_other_total", FM_METRIC_COUNTER, "k=\"a\""), a);
    /* NULL and "" both name the series without labels */
    assert_ptr_equal(fm_metrics_series("h_total", FM_METRIC_COUNTER, NULL),
                     fm_metrics_series("h_total", FM_METRIC_COUNTER, ""));
}

static void test_handle_and_name_share_series(void **state)
{
    fm_metric_series_t *s = fm_metrics_series("h_shared_total", FM_METRIC_COUNTER, "k=\"x\"");
    fm_metrics_series_add(s, 2);
    fm_metrics_counter_add("h_shared_total", "k=\"x\"", 3);
    fm_metrics_series_add(s, 0.5);
    fm_metric_series_t *g = fm_metrics_series("h_gauge", FM_METRIC_GAUGE, NULL);
    fm_metrics_gauge_set("h_gauge", NULL, 7);
    fm_metrics_series_set(g, 4);

    size_t len;
    char *text = fm_metrics_render(&len);
    assert_non_null(strstr(text, "# TYPE h_shared_total counter\nh_shared_total{k=\"x\"} 5.5\n"));
    assert_non_null(strstr(text, "# TYPE h_gauge gauge\nh_gauge 4\n"));
    free(text);
}

/* Observations through a handle render exactly like the same observations by name, bounds included: a value equal
 * to a bucket's bound counts in that bucket (le is <=), one above the last bound only in +Inf. */
static void test_histogram_handle_matches_name(void **state)
{
    static const double values[] = {0, 0.0005, 0.0007, 0.005, 0.0051, 0.02, 1, 10, 10.5, 20};
    fm_metric_series_t *h = fm_metrics_series("h_seconds", FM_METRIC_HISTOGRAM, "via=\"handle\"");
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); ++i) {
        fm_metrics_series_observe(h, values[i]);
        fm_metrics_observe("h_seconds", "via=\"name\"", values[i]);
    }
    fm_metrics_series_observe(fm_metrics_series("h_bare_seconds", FM_METRIC_HISTOGRAM, NULL), 0.3);

    size_t len;
    char *text = fm_metrics_render(&len);
    assert_non_null(strstr(text, "h_seconds_bucket{via=\"handle\",le=\"0.0005\"} 2\n"));
    assert_non_null(strstr(text, "h_seconds_bucket{via=\"handle\",le=\"0.001\"} 3\n"));
    assert_non_null(strstr(text, "h_seconds_bucket{via=\"handle\",le=\"0.005\"} 4\n"));
    assert_non_null(strstr(text, "h_seconds_bucket{via=\"handle\",le=\"0.01\"} 5\n"));
    assert_non_null(strstr(text, "h_seconds_bucket{via=\"handle\",le=\"1\"} 7\n"));
    assert_non_null(strstr(text, "h_seconds_bucket{via=\"handle\",le=\"10\"} 8\n"));
    assert_non_null(strstr(text, "h_seconds_bucket{via=\"handle\",le=\"+Inf\"} 10\n"));
    assert_non_null(strstr(text, "h_seconds_count{via=\"handle\"} 10\n"));
    assert_true(series_value(text, "h_seconds_sum{via=\"handle\"} ") > 41.53);
    assert_non_null(strstr(text, "h_bare_seconds_bucket{le=\"0.25\"} 0\nh_bare_seconds_bucket{le=\"0.5\"} 1\n"));
    assert_non_null(strstr(text, "h_bare_seconds_sum 0.29999999999999999\nh_bare_seconds_count 1\n"));

    /* Line by line, the handle's series equals the named one once the label is renamed. */
    size_t handle_lines = 0;
    for (char *line = text; *line != '\0';) {
        char *end = strchr(line, '\n');
        assert_non_null(end);
        char *label = strstr(line, "via=\"handle\"");
        if (label != NULL && label < end) {
            char expected[256];
            snprintf(expected, sizeof(expected), "%.*svia=\"name\"%.*s\n", (int)(label - line), line,
                     (int)(end - label - strlen("via=\"handle\"")), label + strlen("via=\"handle\""));
            assert_non_null(strstr(text, expected));
            ++handle_lines;
        }
        line = end + 1;
    }
    assert_int_equal(handle_lines, 14 + 3); /* 14 bounds, +Inf, _sum, _count */
    free(text);
}

#define ADD_THREADS 4
#define ADDS_PER_THREAD 1000000

static pthread_barrier_t start_together;
static atomic_int threads_done;

static void *add_many(void *arg)
{
    fm_metric_series_t *counter = fm_metrics_series("h_race_total", FM_METRIC_COUNTER, NULL);
    fm_metric_series_t *histogram = fm_metrics_series("h_race_seconds", FM_METRIC_HISTOGRAM, NULL);
    pthread_barrier_wait(&start_together); /* the threads' loops overlap, else nothing races */
    for (int i = 0; i < ADDS_PER_THREAD; ++i) {
        fm_metrics_series_add(counter, 1);
        if (i % 1000 == 0) /* the name API updates the same series at the same time */
            fm_metrics_counter_add("h_race_total", NULL, 1);
    }
    for (int i = 0; i < ADDS_PER_THREAD; ++i)
        fm_metrics_series_observe(histogram, (i & 1) ? 0.003 : 30);
    atomic_fetch_add(&threads_done, 1);
    return arg;
}

/* Updates from several threads are never lost, and a render taken meanwhile is consistent: cumulative buckets never
 * decrease and never exceed +Inf, which equals _count. */
static void test_concurrent_updates(void **state)
{
    pthread_t threads[ADD_THREADS];
    assert_int_equal(pthread_barrier_init(&start_together, NULL, ADD_THREADS), 0);
    for (int i = 0; i < ADD_THREADS; ++i)
        assert_int_equal(pthread_create(&threads[i], NULL, add_many, NULL), 0);
    while (atomic_load(&threads_done) < ADD_THREADS) {
        size_t len;
        char *text = fm_metrics_render(&len);
        double low = series_value(text, "h_race_seconds_bucket{le=\"0.005\"} ");
        double high = series_value(text, "h_race_seconds_bucket{le=\"10\"} ");
        double inf = series_value(text, "h_race_seconds_bucket{le=\"+Inf\"} ");
        double count = series_value(text, "h_race_seconds_count ");
        if (count >= 0) {
            assert_true(low <= high);
            assert_true(high <= inf);
            assert_true(inf == count);
        }
        free(text);
    }
    for (int i = 0; i < ADD_THREADS; ++i)
        assert_int_equal(pthread_join(threads[i], NULL), 0);
    pthread_barrier_destroy(&start_together);

    size_t len;
    char *text = fm_metrics_render(&len);
    double adds = (double)ADD_THREADS * ADDS_PER_THREAD;
    assert_true(series_value(text, "h_race_total ") == adds + ADD_THREADS * (ADDS_PER_THREAD / 1000));
    assert_true(series_value(text, "h_race_seconds_bucket{le=\"0.005\"} ") == adds / 2);
    assert_true(series_value(text, "h_race_seconds_bucket{le=\"10\"} ") == adds / 2);
    assert_true(series_value(text, "h_race_seconds_bucket{le=\"+Inf\"} ") == adds);
    assert_true(series_value(text, "h_race_seconds_count ") == adds);
    /* 0.003 and 30 are not exact in binary; the sum of 2000000 of each is within rounding of 60006000 */
    double sum = series_value(text, "h_race_seconds_sum ");
    assert_true(sum > 60005999 && sum < 60006001);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render),
        cmocka_unit_test(test_handle_identity),
        cmocka_unit_test(test_handle_and_name_share_series),
        cmocka_unit_test(test_histogram_handle_matches_name),
        cmocka_unit_test(test_concurrent_updates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
