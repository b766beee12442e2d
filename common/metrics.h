/*
 * Metrics registry rendered as Prometheus text (exposition format 0.0.4).
 *
 * Series are created on first use and live for the process. Looking a series up by name takes one mutex and a
 * linear search; a hot caller looks it up once with fm_metrics_series() and keeps the handle, after which a
 * counter add is a lock-free atomic and a histogram observation takes only that series' own lock. Families are
 * described once with fm_metrics_describe().
 */
#ifndef FM_METRICS_H
#define FM_METRICS_H

#include <stddef.h>

typedef enum { FM_METRIC_COUNTER, FM_METRIC_GAUGE, FM_METRIC_HISTOGRAM } fm_metric_type_t;

/** One series `family{labels}`. Owned by the registry and never freed, so a handle stays valid for the process. */
typedef struct fm_metric_series fm_metric_series_t;

/** Declares a family's type and help text (call at start, before updates). */
void fm_metrics_describe(const char *family, fm_metric_type_t type, const char *help);

/** Adds `value` to the counter series `family{labels}`; `labels` is the inside of the braces, e.g. `route="/x"`, or NULL/"" for none. */
void fm_metrics_counter_add(const char *family, const char *labels, double value);

/** Sets the gauge series `family{labels}`. */
void fm_metrics_gauge_set(const char *family, const char *labels, double value);

/** Records one observation (seconds for latencies) in the histogram series `family{labels}`. */
void fm_metrics_observe(const char *family, const char *labels, double value);

/**
 * The series `family{labels}`, created on first use like the calls above (`type` only matters when the family is
 * new). The same family and labels always give the same handle; thread-safe.
 */
fm_metric_series_t *fm_metrics_series(const char *family, fm_metric_type_t type, const char *labels);

/** Adds `value` to a counter series, without a lock. Same effect as fm_metrics_counter_add() on its name. */
void fm_metrics_series_add(fm_metric_series_t *series, double value);

/** Sets a gauge series. Same effect as fm_metrics_gauge_set() on its name. */
void fm_metrics_series_set(fm_metric_series_t *series, double value);

/** Records one observation in a histogram series. Same effect as fm_metrics_observe() on its name. */
void fm_metrics_series_observe(fm_metric_series_t *series, double value);

/**
 * fm_metrics_counter_add for a family and labels that never change at this call site (string literals): the
 * handle is looked up once per thread and call site, then every add is lock-free.
 */
#define FM_METRICS_COUNT(family, labels, value)                                                                        \
    do {                                                                                                               \
        static _Thread_local fm_metric_series_t *fm_series_;                                                           \
        if (fm_series_ == NULL)                                                                                        \
            fm_series_ = fm_metrics_series((family), FM_METRIC_COUNTER, (labels));                                     \
        fm_metrics_series_add(fm_series_, (value));                                                                    \
    } while (0)

/** Renders every series; returns a malloc'd, NUL-terminated text the caller frees (length in *len). */
char *fm_metrics_render(size_t *len);

#endif
