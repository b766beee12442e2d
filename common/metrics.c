/* Prometheus registry: see metrics.h. */
#include "metrics.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LABELS 256
#define MAX_FAMILY 96
static const double buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
#define NBUCKETS (sizeof(buckets) / sizeof(buckets[0]))

typedef struct family {
    struct family *next;
    char name[MAX_FAMILY];
    fm_metric_type_t type;
    char help[200];
    struct fm_metric_series *series;
} family_t;

struct fm_metric_series {
    struct fm_metric_series *next;
    char labels[MAX_LABELS];
    _Atomic double value; /* counter/gauge value; histogram sum (written under hist_lock for histograms) */
    /* A histogram's count and buckets change together under hist_lock, so a render never shows a bucket above
     * +Inf. Buckets hold the observations of their own interval; render makes them cumulative. */
    pthread_mutex_t hist_lock;
    unsigned long long count, bucket_counts[NBUCKETS];
};
typedef struct fm_metric_series series_t;

/* Guards the family and series lists (lookup, creation, render's walk); values are updated outside it. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static family_t *families;

static family_t *find_family(const char *name, fm_metric_type_t type)
{
    family_t *f;
    for (f = families; f != NULL; f = f->next)
        if (strcmp(f->name, name) == 0)
            return f;
    f = calloc(1, sizeof(*f));
    if (f == NULL)
        abort();
    snprintf(f->name, sizeof(f->name), "%s", name);
    f->type = type;
    /* Keep registration order in the output: append. */
    family_t **tail = &families;
    while (*tail != NULL)
        tail = &(*tail)->next;
    *tail = f;
    return f;
}

static series_t *find_series(family_t *f, const char *labels)
{
    if (labels == NULL) /* a series without labels */
        labels = "";
    series_t *s;
    for (s = f->series; s != NULL; s = s->next)
        if (strcmp(s->labels, labels) == 0)
            return s;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        abort();
    snprintf(s->labels, sizeof(s->labels), "%s", labels);
    atomic_init(&s->value, 0.0);
    pthread_mutex_init(&s->hist_lock, NULL);
    s->next = f->series;
    f->series = s;
    return s;
}

fm_metric_series_t *fm_metrics_series(const char *family, fm_metric_type_t type, const char *labels)
{
    pthread_mutex_lock(&lock);
    series_t *s = find_series(find_family(family, type), labels);
    pthread_mutex_unlock(&lock);
    return s;
}

/* C11 has no atomic add for floating types (and `+=` on _Atomic double may need libatomic): a CAS loop. Relaxed
 * order is enough, a counter orders nothing else. */
static void add_double(_Atomic double *target, double value)
{
    double seen = atomic_load_explicit(target, memory_order_relaxed);
    while (
        !atomic_compare_exchange_weak_explicit(target, &seen, seen + value, memory_order_relaxed, memory_order_relaxed))
        ;
}

void fm_metrics_series_add(fm_metric_series_t *series, double value)
{
    add_double(&series->value, value);
}

void fm_metrics_series_set(fm_metric_series_t *series, double value)
{
    atomic_store_explicit(&series->value, value, memory_order_relaxed);
}

void fm_metrics_series_observe(fm_metric_series_t *series, double value)
{
    /* The first bucket whose bound holds the value; NaN fits none and, as before, counts only in +Inf. */
    size_t bucket = 0;
    while (bucket < NBUCKETS && !(value <= buckets[bucket]))
        ++bucket;
    pthread_mutex_lock(&series->hist_lock);
    add_double(&series->value, value);
    series->count++;
    if (bucket < NBUCKETS)
        series->bucket_counts[bucket]++;
    pthread_mutex_unlock(&series->hist_lock);
}

void fm_metrics_describe(const char *family, fm_metric_type_t type, const char *help)
{
    pthread_mutex_lock(&lock);
    family_t *f = find_family(family, type);
    f->type = type;
    snprintf(f->help, sizeof(f->help), "%s", help);
    pthread_mutex_unlock(&lock);
}

void fm_metrics_counter_add(const char *family, const char *labels, double value)
{
    fm_metrics_series_add(fm_metrics_series(family, FM_METRIC_COUNTER, labels), value);
}

void fm_metrics_gauge_set(const char *family, const char *labels, double value)
{
    fm_metrics_series_set(fm_metrics_series(family, FM_METRIC_GAUGE, labels), value);
}

void fm_metrics_observe(const char *family, const char *labels, double value)
{
    fm_metrics_series_observe(fm_metrics_series(family, FM_METRIC_HISTOGRAM, labels), value);
}

static const char *type_name(fm_metric_type_t t)
{
    return t == FM_METRIC_COUNTER ? "counter" : t == FM_METRIC_GAUGE ? "gauge" : "histogram";
}

static void render_histogram(FILE *out, const char *name, series_t *s)
{
    unsigned long long count, bucket_counts[NBUCKETS];
    double sum;
    pthread_mutex_lock(&s->hist_lock); /* one consistent snapshot; printing happens after */
    count = s->count;
    memcpy(bucket_counts, s->bucket_counts, sizeof(bucket_counts));
    sum = atomic_load_explicit(&s->value, memory_order_relaxed);
    pthread_mutex_unlock(&s->hist_lock);

    const char *sep = s->labels[0] ? "," : "";
    unsigned long long cumulative = 0;
    for (size_t i = 0; i < NBUCKETS; ++i) {
        cumulative += bucket_counts[i];
        fprintf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, s->labels, sep, buckets[i], cumulative);
    }
    fprintf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, s->labels, sep, count);
    fprintf(out, "%s_sum%s%s%s %.17g\n", name, s->labels[0] ? "{" : "", s->labels, s->labels[0] ? "}" : "", sum);
    fprintf(out, "%s_count%s%s%s %llu\n", name, s->labels[0] ? "{" : "", s->labels, s->labels[0] ? "}" : "", count);
}

char *fm_metrics_render(size_t *len)
{
    char *text = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&text, &size);
    if (out == NULL)
        abort();
    pthread_mutex_lock(&lock);
    for (family_t *f = families; f != NULL; f = f->next) {
        if (f->help[0] != '\0')
            fprintf(out, "# HELP %s %s\n", f->name, f->help);
        fprintf(out, "# TYPE %s %s\n", f->name, type_name(f->type));
        for (series_t *s = f->series; s != NULL; s = s->next) {
            if (f->type == FM_METRIC_HISTOGRAM) {
                render_histogram(out, f->name, s);
                continue;
            }
            double value = atomic_load_explicit(&s->value, memory_order_relaxed);
            if (s->labels[0])
                fprintf(out, "%s{%s} %.17g\n", f->name, s->labels, value);
            else
                fprintf(out, "%s %.17g\n", f->name, value);
        }
    }
    pthread_mutex_unlock(&lock);
    fclose(out);
    *len = size;
    return text;
}
