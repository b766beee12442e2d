/*
 * The local HTTP listener of the S3 client tests (test_s3.c, test_s3_xml.c): it gives one canned answer per request,
 * on one keep-alive connection or several, and keeps what came in; a client pointed at it; the captured requests read
 * back. Each test file is its own executable, so each has its own copy of the buffers below.
 */
#ifndef FM_TEST_S3_LISTENER_H
#define FM_TEST_S3_LISTENER_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "s3.h"

#define DOC_ACCESS "AKIAIOSFODNN7EXAMPLE"
#define DOC_SECRET "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

/* ---- a local HTTP listener ---------------------------------------------------------------------------------- */

#define MAX_EXCHANGES 10
#define REQUEST_MAX (64 * 1024)

/* What came in, per exchange; one listener runs at a time, so the buffers are shared. */
static char request_pool[MAX_EXCHANGES][REQUEST_MAX];

/* Answers the i-th request with the i-th canned response; keeps every request (NUL-terminated). */
typedef struct {
    int fd;
    int port;
    int conn; /* the connection being served, or -1 */
    size_t count, served;
    char *responses[MAX_EXCHANGES];
    char *requests[MAX_EXCHANGES];
    size_t request_len[MAX_EXCHANGES];
    char *request; /* requests[0] */
    int silent;    /* accept, read, never answer (timeout test) */
    pthread_t thread;
} listener_t;

/* Reads one request (headers and a Content-Length body); 0, or -1 if the peer closed first. */
static inline int read_request(int conn, char *buf, size_t *len)
{
    size_t header_end = 0, want = 0;
    *len = 0;
    buf[0] = '\0';
    while (*len < REQUEST_MAX - 1) {
        ssize_t n = recv(conn, buf + *len, REQUEST_MAX - 1 - *len, 0);
        if (n <= 0)
            return -1;
        *len += (size_t)n;
        buf[*len] = '\0';
        if (header_end == 0) {
            char *end = strstr(buf, "\r\n\r\n");
            if (end == NULL)
                continue;
            header_end = (size_t)(end + 4 - buf);
            char *cl = strcasestr(buf, "\r\nContent-Length:");
            want = header_end + (cl != NULL && cl < end ? strtoul(cl + 17, NULL, 10) : 0);
        }
        if (*len >= want)
            return 0;
    }
    return 0;
}

static inline void send_all(int conn, const char *data)
{
    size_t len = strlen(data), sent = 0;
    while (sent < len) {
        ssize_t n = send(conn, data + sent, len - sent, MSG_NOSIGNAL);
        if (n <= 0)
            return;
        sent += (size_t)n;
    }
}

static inline void *listener_run(void *arg)
{
    listener_t *l = arg;
    while (l->silent || l->served < l->count) {
        int conn = accept(l->fd, NULL, NULL);
        if (conn < 0)
            return NULL;
        __atomic_store_n(&l->conn, conn, __ATOMIC_SEQ_CST);
        if (l->silent) {
            size_t len;
            read_request(conn, l->requests[0], &len);
            char sink[256];
            while (recv(conn, sink, sizeof(sink), 0) > 0) {
            }
        }
        /* Keep-alive: the client sends the next request on the same connection until it closes it. */
        while (!l->silent && l->served < l->count) {
            size_t i = l->served;
            if (read_request(conn, l->requests[i], &l->request_len[i]) != 0)
                break;
            send_all(conn, l->responses[i]);
            l->served++;
        }
        __atomic_store_n(&l->conn, -1, __ATOMIC_SEQ_CST);
        close(conn);
        if (l->silent)
            return NULL;
    }
    return NULL;
}

static inline void listener_init(listener_t *l)
{
    memset(l, 0, sizeof(*l));
    l->conn = -1;
    for (size_t i = 0; i < MAX_EXCHANGES; i++) {
        l->requests[i] = request_pool[i];
        request_pool[i][0] = '\0';
    }
    l->request = l->requests[0];
}

/* Queues one answer: `head` is the status line and headers without Content-Length, computed from `body`. */
static inline void listener_answer(listener_t *l, const char *head, const char *body)
{
    assert_true(l->count < MAX_EXCHANGES);
    size_t size = strlen(head) + strlen(body) + 64;
    char *response = malloc(size);
    assert_non_null(response);
    snprintf(response, size, "%sContent-Length: %zu\r\n\r\n%s", head, strlen(body), body);
    l->responses[l->count++] = response;
}

static inline void listener_go(listener_t *l)
{
    l->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(l->fd >= 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(l->fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
    assert_int_equal(listen(l->fd, 4), 0);
    socklen_t len = sizeof(addr);
    assert_int_equal(getsockname(l->fd, (struct sockaddr *)&addr, &len), 0);
    l->port = ntohs(addr.sin_port);
    assert_int_equal(pthread_create(&l->thread, NULL, listener_run, l), 0);
}

/* One exchange; a NULL `head` makes a listener that reads the request and never answers. */
static inline void listener_start(listener_t *l, const char *head, const char *body)
{
    listener_init(l);
    l->silent = head == NULL;
    if (head != NULL)
        listener_answer(l, head, body);
    listener_go(l);
}

/* Stops the thread (also when fewer requests came than answers were queued); the requests stay readable. */
static inline void listener_stop(listener_t *l)
{
    shutdown(l->fd, SHUT_RDWR);
    int conn = __atomic_load_n(&l->conn, __ATOMIC_SEQ_CST);
    if (conn >= 0)
        shutdown(conn, SHUT_RDWR);
    pthread_join(l->thread, NULL);
    close(l->fd);
    for (size_t i = 0; i < l->count; i++)
        free(l->responses[i]);
}

static inline fm_s3_t *s3_for_port(int port, long timeout_ms)
{
    char endpoint[64];
    snprintf(endpoint, sizeof(endpoint), "http://127.0.0.1:%d", port);
    fm_s3_config_t cfg = {.endpoint = endpoint,
                          .region = "us-east-1",
                          .bucket = "fm-bucket",
                          .access_key = DOC_ACCESS,
                          .secret_key = DOC_SECRET,
                          .timeout_ms = timeout_ms};
    char err[256];
    fm_s3_t *s3 = fm_s3_new(&cfg, err, sizeof(err));
    if (s3 == NULL)
        fail_msg("%s", err);
    return s3;
}

/* The value of request header `name` in a captured request, or NULL. */
static inline char *captured_header(const char *request, const char *name, char *out, size_t size)
{
    char pattern[128];
    snprintf(pattern, sizeof(pattern), "\r\n%s:", name);
    const char *p = strcasestr(request, pattern);
    if (p == NULL)
        return NULL;
    p += strlen(pattern);
    while (*p == ' ')
        p++;
    size_t n = strcspn(p, "\r");
    if (n >= size)
        n = size - 1;
    memcpy(out, p, n);
    out[n] = '\0';
    return out;
}

/* The body of a captured request. */
static inline const char *captured_body(const char *request)
{
    const char *p = strstr(request, "\r\n\r\n");
    assert_non_null(p);
    return p + 4;
}

#endif
