/*
 * step_scan: the temp copy through clamd's INSTREAM over TCP (scan.h has the protocol). Every wait (connect, each
 * write, the answer) is bounded by limits->clamd_timeout_ms. The rule that shapes the errors: a file is never
 * let through without clamd having said "OK" to all of it. A virus or a stream clamd refuses as too long is
 * quarantined; anything else that goes wrong (no daemon, a timeout, a reset, an odd answer) asks for a retry.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "scan.h"
#include "worker.h"

#define DEFAULT_CHUNK_BYTES (64 * 1024)
/* clamd reads a chunk into memory whole; bigger chunks gain nothing. */
#define MAX_CHUNK_BYTES (8 * 1024 * 1024)
#define DEFAULT_TIMEOUT_MS 30000
/* "stream: <signature> FOUND": signature names are well under 200 bytes. */
#define MAX_REPLY 4096

static const char STREAM_PREFIX[] = "stream: ";
static const char FOUND_SUFFIX[] = " FOUND";
static const char SIZE_LIMIT_REPLY[] = "INSTREAM size limit exceeded. ERROR";

/* Printable ASCII only: clamd's words end up in job->reason, which the owner is shown. */
static void copy_printable(char *out, size_t size, const char *in, size_t len)
{
    if (size == 0)
        return;
    if (len > size - 1)
        len = size - 1;
    for (size_t i = 0; i < len; i++)
        out[i] = in[i] >= 0x20 && in[i] <= 0x7e ? in[i] : '?';
    out[len] = '\0';
}

int fm_clamd_parse_reply(const char *reply, size_t len, char *signature, size_t sig_size)
{
    if (sig_size > 0)
        signature[0] = '\0';
    if (reply == NULL)
        return FM_CLAMD_ERROR;
    const char *nul = memchr(reply, '\0', len);
    if (nul != NULL)
        len = (size_t)(nul - reply);
    while (len > 0 && reply[len - 1] == '\n')
        len--;

    size_t prefix = sizeof(STREAM_PREFIX) - 1, suffix = sizeof(FOUND_SUFFIX) - 1;
    if (len == prefix + 2 && memcmp(reply, "stream: OK", len) == 0)
        return FM_CLAMD_CLEAN;
    if (len > prefix + suffix && memcmp(reply, STREAM_PREFIX, prefix) == 0 &&
        memcmp(reply + len - suffix, FOUND_SUFFIX, suffix) == 0) {
        copy_printable(signature, sig_size, reply + prefix, len - prefix - suffix);
        return FM_CLAMD_FOUND;
    }
    if (len == sizeof(SIZE_LIMIT_REPLY) - 1 && memcmp(reply, SIZE_LIMIT_REPLY, len) == 0)
        return FM_CLAMD_SIZE_LIMIT;
    return FM_CLAMD_ERROR;
}

/* ---- the connection ---------------------------------------------------------------------------------------- */

__attribute__((format(printf, 2, 3))) static fm_step_rc set_reason(fm_job_t *job, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(job->reason, sizeof(job->reason), fmt, ap);
    va_end(ap);
    return FM_STEP_RETRY; /* the caller overrides for the other outcomes */
}

/* Waits for `events` on fd; 1 when ready (revents in *revents), 0 on timeout, -1 on error (errno). */
static int wait_fd(int fd, short events, int timeout_ms, short *revents)
{
    struct pollfd p = {.fd = fd, .events = events};
    int n;
    do
        n = poll(&p, 1, timeout_ms);
    while (n < 0 && errno == EINTR);
    if (n > 0 && revents != NULL)
        *revents = p.revents;
    return n;
}

/* A non-blocking TCP socket connected to host:port within timeout_ms, or -1 with `err` saying why. */
static int connect_clamd(const char *host, int port, int timeout_ms, char *err, size_t err_size)
{
    char service[16];
    snprintf(service, sizeof(service), "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *list = NULL;
    int gai = getaddrinfo(host, service, &hints, &list);
    if (gai != 0) {
        snprintf(err, err_size, "resolve %s: %s", host, gai_strerror(gai));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *ai = list; ai != NULL && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            snprintf(err, err_size, "socket: %s", strerror(errno));
            continue;
        }
        int error = 0;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            error = errno;
            if (error == EINPROGRESS) {
                int ready = wait_fd(fd, POLLOUT, timeout_ms, NULL);
                socklen_t error_len = sizeof(error);
                if (ready == 0)
                    error = ETIMEDOUT;
                else if (ready < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &error_len) != 0)
                    error = errno;
            }
        }
        if (error != 0) {
            snprintf(err, err_size, "connect %s:%d: %s", host, port, strerror(error));
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(list);
    return fd;
}

/*
 * Sends all of buf. Returns 0 when sent, 1 when clamd spoke or hung up first (it does so only to refuse the
 * stream, e.g. over StreamMaxLength: its answer is then waiting to be read), -1 on a timeout or another error.
 */
static int send_all(int fd, const unsigned char *buf, size_t len, int timeout_ms, char *err, size_t err_size)
{
    size_t sent = 0;
    while (sent < len) {
        short revents = 0;
        int ready = wait_fd(fd, POLLOUT | POLLIN, timeout_ms, &revents);
        if (ready <= 0) {
            snprintf(err, err_size, "send: %s", ready == 0 ? "timed out" : strerror(errno));
            return -1;
        }
        if (revents & (POLLIN | POLLHUP | POLLERR))
            return 1;
        ssize_t n = send(fd, buf + sent, len - sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;
            if (errno == EPIPE || errno == ECONNRESET)
                return 1;
            snprintf(err, err_size, "send: %s", strerror(errno));
            return -1;
        }
        sent += (size_t)n;
    }
    return 0;
}

/* Reads clamd's answer up to its NUL (or the end of the connection) into buf; its length, or -1 with `err`. */
static ssize_t read_reply(int fd, char *buf, size_t size, int timeout_ms, char *err, size_t err_size)
{
    size_t len = 0;
    while (len < size) {
        int ready = wait_fd(fd, POLLIN, timeout_ms, NULL);
        if (ready <= 0) {
            snprintf(err, err_size, "no answer: %s", ready == 0 ? "timed out" : strerror(errno));
            return -1;
        }
        ssize_t n = recv(fd, buf + len, size - len, 0);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;
            if (errno == ECONNRESET && len > 0)
                break; /* what came before the reset is the answer */
            snprintf(err, err_size, "no answer: %s", strerror(errno));
            return -1;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (memchr(buf + len - (size_t)n, '\0', (size_t)n) != NULL)
            break;
    }
    if (len == 0)
        snprintf(err, err_size, "the connection closed without an answer");
    return len > 0 ? (ssize_t)len : -1;
}

/*
 * Streams the open file `in` to clamd on `fd`. Returns 0 when all of it and the end chunk went out, 1 when clamd
 * cut it short (see send_all), -1 with `err` on a local read error or a failed send.
 */
static int send_file(int fd, int in, size_t chunk_bytes, int timeout_ms, char *err, size_t err_size)
{
    static const unsigned char command[] = "zINSTREAM"; /* with its NUL */
    int rc = send_all(fd, command, sizeof(command), timeout_ms, err, err_size);
    if (rc != 0)
        return rc;
    unsigned char *buf = malloc(4 + chunk_bytes);
    if (buf == NULL)
        abort();
    for (;;) {
        ssize_t n;
        do
            n = read(in, buf + 4, chunk_bytes);
        while (n < 0 && errno == EINTR);
        if (n < 0) {
            snprintf(err, err_size, "temp file: %s", strerror(errno));
            rc = -1;
            break;
        }
        /* Each chunk: its length as 4 bytes in network order, then the bytes; a zero length ends the stream. */
        uint32_t length = htonl((uint32_t)n);
        memcpy(buf, &length, 4);
        rc = send_all(fd, buf, 4 + (size_t)n, timeout_ms, err, err_size);
        if (rc != 0 || n == 0)
            break;
    }
    free(buf);
    return rc;
}

fm_step_rc step_scan(fm_job_t *job, const fm_worker_limits_t *limits)
{
    int timeout_ms = limits->clamd_timeout_ms > 0 ? limits->clamd_timeout_ms : DEFAULT_TIMEOUT_MS;
    long long chunk = limits->clamd_chunk_bytes > 0 ? limits->clamd_chunk_bytes : DEFAULT_CHUNK_BYTES;
    if (chunk > MAX_CHUNK_BYTES)
        chunk = MAX_CHUNK_BYTES;
    const char *host = limits->clamd_host != NULL && *limits->clamd_host != '\0' ? limits->clamd_host : "127.0.0.1";
    if (limits->clamd_port < 1 || limits->clamd_port > 65535)
        return set_reason(job, "clamd unavailable: no valid port configured (%d)", limits->clamd_port);

    int in = open(job->path, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return set_reason(job, "scan: cannot open the temp copy: %s", strerror(errno));
    char err[160] = "";
    int fd = connect_clamd(host, limits->clamd_port, timeout_ms, err, sizeof(err));
    if (fd < 0) {
        close(in);
        return set_reason(job, "clamd unavailable: %s", err);
    }
    int sent = send_file(fd, in, (size_t)chunk, timeout_ms, err, sizeof(err));
    close(in);
    if (sent < 0) {
        close(fd);
        return set_reason(job, "clamd unavailable: %s", err);
    }
    char reply[MAX_REPLY];
    ssize_t reply_len = read_reply(fd, reply, sizeof(reply), timeout_ms, err, sizeof(err));
    close(fd);
    if (reply_len < 0)
        return set_reason(job, "clamd unavailable: %s", err);

    char signature[200];
    switch (fm_clamd_parse_reply(reply, (size_t)reply_len, signature, sizeof(signature))) {
    case FM_CLAMD_CLEAN:
        if (sent != 0) /* "OK" for a stream it did not take whole is no scan of the file */
            return set_reason(job, "clamd unavailable: it answered OK before the whole file was sent");
        job->reason[0] = '\0';
        return FM_STEP_OK;
    case FM_CLAMD_FOUND:
        set_reason(job, "virus: %s", signature);
        return FM_STEP_QUARANTINE;
    case FM_CLAMD_SIZE_LIMIT:
        set_reason(job, "too large to scan (clamd StreamMaxLength)");
        return FM_STEP_QUARANTINE;
    default: {
        char text[160];
        copy_printable(text, sizeof(text), reply, strnlen(reply, (size_t)reply_len));
        return set_reason(job, "clamd unavailable: unexpected answer \"%s\"", text);
    }
    }
}
