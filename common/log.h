/*
 * JSON-lines logging (DESIGN.md §3): one object per line on stderr with ts, level, msg and, for requests,
 * request_id, route, status, duration_ms. Each line is one write(2), so threads never interleave.
 */
#ifndef FM_LOG_H
#define FM_LOG_H

#include <stdarg.h>
#include <stddef.h>

typedef enum { FM_LOG_DEBUG, FM_LOG_INFO, FM_LOG_WARN, FM_LOG_ERROR } fm_log_level_t;

/** Sets the lowest level written ("debug", "info", "warn", "error") and the service name put on every line. */
void fm_log_init(const char *service, const char *level);

/** Logs a formatted message; `request_id` may be NULL. The message is JSON-escaped. */
void fm_log(fm_log_level_t level, const char *request_id, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/** Whether a line at `level` would be written: lets a hot path skip building what only the log would read. */
int fm_log_enabled(fm_log_level_t level);

/** The level of a request's access line: warn for a 5xx answer, info otherwise. */
fm_log_level_t fm_log_access_level(int status);

/**
 * Which answers get an access line (FM_ACCESS_LOG): "all"; "sample": every answer ≥ 400 and one in `sample_every`
 * of the others (counted per thread); "off": none below 500 (a 5xx still gets its line, at warn). Call once before
 * threads start; the default is "all".
 */
void fm_log_access_init(const char *mode, unsigned sample_every);

/** Whether an answer of `status` may get an access line (level and mode; sampling is decided in fm_log_access). */
int fm_log_access_enabled(int status);

/** The access-log line of one HTTP request (at fm_log_access_level(status)), unless the mode leaves it out. */
void fm_log_access(const char *request_id, const char *method, const char *route, const char *path, int status,
                   double duration_ms, const char *error_code);

#define fm_debug(...) fm_log(FM_LOG_DEBUG, NULL, __VA_ARGS__)
#define fm_info(...) fm_log(FM_LOG_INFO, NULL, __VA_ARGS__)
#define fm_warn(...) fm_log(FM_LOG_WARN, NULL, __VA_ARGS__)
#define fm_error(...) fm_log(FM_LOG_ERROR, NULL, __VA_ARGS__)

/** Appends `s` (len bytes) JSON-escaped to buf (size cap, at *pos); always leaves buf NUL-terminated. */
void fm_json_escape_into(char *buf, size_t cap, size_t *pos, const char *s, size_t len);

#endif
