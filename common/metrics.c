/* Prometheus registry: see metrics.h. */
#include "metrics.h"

#include <pthread.h>
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
    struct series *series;
} family_t;

typedef struct series {
    struct series *next;
    char labels[MAX_LABELS];
    double value; /* counter/gauge value; histogram sum */
    unsigned long long count, bucket_counts[NBUCKETS];
} series_t;

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
    s->next = f->series;
    f->series = s;
    return s;
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
    pthread_mutex_lock(&lock);
    find_series(find_family(family, FM_METRIC_COUNTER), labels)->value += value;
    pthread_mutex_unlock(&lock);
}

void fm_metrics_gauge_set(const char *family, const char *labels, double value)
{
    pthread_mutex_lock(&lock);
    find_series(find_family(family, FM_METRIC_GAUGE), labels)->value = value;
    pthread_mutex_unlock(&lock);
}

void fm_metrics_observe(const char *family, const char *labels, double value)
{
    pthread_mutex_lock(&lock);
    series_t *s = find_series(find_family(family, FM_METRIC_HISTOGRAM), labels);
    s->value += value;
    s->count++;
    for (size_t i = 0; i < NBUCKETS; ++i)
        if (value <= buckets[i])
            s->bucket_counts[i]++;
    pthread_mutex_unlock(&lock);
}

static const char *type_name(fm_metric_type_t t)
{
    return t == FM_METRIC_COUNTER ? "counter" : t == FM_METRIC_GAUGE ? "gauge" : "histogram";
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
            const char *sep = s->labels[0] ? "," : "";
            if (f->type != FM_METRIC_HISTOGRAM) {
                if (s->labels[0])
                    fprintf(out, "%s{%s} %.17g\n", f->name, s->labels, s->value);
                else
                    fprintf(out, "%s %.17g\n", f->name, s->value);
                continue;
            }
            for (size_t i = 0; i < NBUCKETS; ++i)
                fprintf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", f->name, s->labels, sep, buckets[i], s->bucket_counts[i]);
            fprintf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", f->name, s->labels, sep, s->count);
            fprintf(out, "%s_sum%s%s%s %.17g\n", f->name, s->labels[0] ? "{" : "", s->labels, s->labels[0] ? "}" : "",
                    s->value);
            fprintf(out, "%s_count%s%s%s %llu\n", f->name, s->labels[0] ? "{" : "", s->labels, s->labels[0] ? "}" : "",
                    s->count);
        }
    }
    pthread_mutex_unlock(&lock);
    fclose(out);
    *len = size;
    return text;
}
