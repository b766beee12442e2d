/* JSON-lines logger: see log.h. */
#include "log.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static fm_log_level_t min_level = FM_LOG_INFO;
static char service_name[32] = "fm";
static const char *level_names[] = {"debug", "info", "warn", "error"};

void fm_log_init(const char *service, const char *level)
{
    snprintf(service_name, sizeof(service_name), "%s", service);
    for (int i = 0; i < 4; ++i)
        if (level != NULL && strcmp(level, level_names[i]) == 0)
            min_level = (fm_log_level_t)i;
}

void fm_json_escape_into(char *buf, size_t cap, size_t *pos, const char *s, size_t len)
{
    size_t p = *pos;
    for (size_t i = 0; i < len && p + 7 < cap; ++i) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            buf[p++] = '\\';
            buf[p++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            p += (size_t)snprintf(buf + p, cap - p, "\\u%04x", c);
        } else {
            buf[p++] = (char)c;
        }
    }
    buf[p < cap ? p : cap - 1] = '\0';
    *pos = p;
}

static size_t line_start(char *buf, size_t cap, fm_log_level_t level)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    return (size_t)snprintf(buf, cap, "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"level\":\"%s\",\"service\":\"%s\"",
                            tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                            ts.tv_nsec / 1000000, level_names[level], service_name);
}

static void add_field(char *buf, size_t cap, size_t *pos, const char *name, const char *value)
{
    if (value == NULL || *pos + strlen(name) + 8 >= cap)
        return;
    *pos += (size_t)snprintf(buf + *pos, cap - *pos, ",\"%s\":\"", name);
    fm_json_escape_into(buf, cap - 3, pos, value, strlen(value));
    buf[(*pos)++] = '"';
    buf[*pos] = '\0';
}

static void line_end(char *buf, size_t cap, size_t pos)
{
    if (pos > cap - 3)
        pos = cap - 3;
    buf[pos++] = '}';
    buf[pos++] = '\n';
    ssize_t unused = write(STDERR_FILENO, buf, pos);
    (void)unused;
}

void fm_log(fm_log_level_t level, const char *request_id, const char *fmt, ...)
{
    if (level < min_level)
        return;
    char msg[1024], buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    size_t pos = line_start(buf, sizeof(buf), level);
    add_field(buf, sizeof(buf), &pos, "msg", msg);
    add_field(buf, sizeof(buf), &pos, "request_id", request_id);
    line_end(buf, sizeof(buf), pos);
}

int fm_log_enabled(fm_log_level_t level)
{
    return level >= min_level;
}

fm_log_level_t fm_log_access_level(int status)
{
    return status >= 500 ? FM_LOG_WARN : FM_LOG_INFO;
}

typedef enum { ACCESS_OFF, ACCESS_SAMPLE, ACCESS_ALL } access_mode_t;

static access_mode_t access_mode = ACCESS_ALL;
static unsigned access_sample_every = 1;

void fm_log_access_init(const char *mode, unsigned sample_every)
{
    access_mode = mode == NULL || strcmp(mode, "all") == 0 ? ACCESS_ALL
                  : strcmp(mode, "sample") == 0            ? ACCESS_SAMPLE
                                                           : ACCESS_OFF;
    access_sample_every = sample_every > 0 ? sample_every : 1;
}

int fm_log_access_enabled(int status)
{
    if (access_mode == ACCESS_OFF && status < 500)
        return 0;
    return fm_log_enabled(fm_log_access_level(status));
}

/* Errors are what an operator looks for, so sampling only thins out the answers below 400. A counter per thread
 * (no shared cache line, no lock): one line in N of each thread's successes. */
static int access_sampled_out(int status)
{
    static _Thread_local unsigned long long successes;
    if (access_mode != ACCESS_SAMPLE || status >= 400)
        return 0;
    return successes++ % access_sample_every != 0;
}

void fm_log_access(const char *request_id, const char *method, const char *route, const char *path, int status,
                   double duration_ms, const char *error_code)
{
    fm_log_level_t level = fm_log_access_level(status);
    if (!fm_log_access_enabled(status) || access_sampled_out(status))
        return;
    char buf[2048];
    size_t pos = line_start(buf, sizeof(buf), level);
    add_field(buf, sizeof(buf), &pos, "msg", "request");
    add_field(buf, sizeof(buf), &pos, "request_id", request_id);
    add_field(buf, sizeof(buf), &pos, "method", method);
    add_field(buf, sizeof(buf), &pos, "route", route);
    add_field(buf, sizeof(buf), &pos, "path", path);
    add_field(buf, sizeof(buf), &pos, "error", error_code);
    pos += (size_t)snprintf(buf + pos, sizeof(buf) - pos, ",\"status\":%d,\"duration_ms\":%.3f", status, duration_ms);
    line_end(buf, sizeof(buf), pos);
}
