/*
 * Metrics registry rendered as Prometheus text (exposition format 0.0.4).
 *
 * Series are created on first use and live for the process. Updates take one uncontended mutex; that is cheap
 * next to a request and keeps the registry simple. Families are described once with fm_metrics_describe().
 */
#ifndef FM_METRICS_H
#define FM_METRICS_H

#include <stddef.h>

typedef enum { FM_METRIC_COUNTER, FM_METRIC_GAUGE, FM_METRIC_HISTOGRAM } fm_metric_type_t;

/** Declares a family's type and help text (call at start, before updates). */
void fm_metrics_describe(const char *family, fm_metric_type_t type, const char *help);

/** Adds `value` to the counter series `family{labels}`; `labels` is the inside of the braces, e.g. `route="/x"`, or NULL/"" for none. */
void fm_metrics_counter_add(const char *family, const char *labels, double value);

/** Sets the gauge series `family{labels}`. */
void fm_metrics_gauge_set(const char *family, const char *labels, double value);

/** Records one observation (seconds for latencies) in the histogram series `family{labels}`. */
void fm_metrics_observe(const char *family, const char *labels, double value);

/** Renders every series; returns a malloc'd, NUL-terminated text the caller frees (length in *len). */
char *fm_metrics_render(size_t *len);

#endif
