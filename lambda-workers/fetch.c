/*
 * step_fetch: the staged copy (step_stage; the client's own object only where no copy was made, in tools) streamed
 * once from S3 into a private temp file, hashed (SHA-256) on the way, so every
 * later step reads a local file and nothing holds the object in memory. The size is checked against the
 * declared one while bytes arrive: an object larger than declared is stopped there rather than allowed to fill
 * the disk.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "b64.h"
#include "worker.h"

typedef struct {
    int fd;
    EVP_MD_CTX *sha256;
    long long size;          /* bytes written so far */
    long long declared_size; /* < 0: not declared, no limit */
    int too_large;           /* stopped: more bytes came than declared */
    int write_errno;         /* stopped: the temp file refused a write (ENOSPC...) */
} fetch_sink_t;

static int write_chunk(void *ud, const void *data, size_t len)
{
    fetch_sink_t *sink = ud;
    if (sink->declared_size >= 0 && (long long)len > sink->declared_size - sink->size) {
        sink->too_large = 1;
        return -1;
    }
    if (EVP_DigestUpdate(sink->sha256, data, len) != 1)
        abort();
    for (size_t done = 0; done < len;) {
        ssize_t n = write(sink->fd, (const char *)data + done, len - done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            sink->write_errno = errno;
            return -1;
        }
        done += (size_t)n;
    }
    sink->size += (long long)len;
    return 0;
}

__attribute__((format(printf, 3, 4))) static fm_step_rc give_up(fm_job_t *job, fm_step_rc rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(job->reason, sizeof(job->reason), fmt, ap);
    va_end(ap);
    /* Nothing later may read a partial copy. */
    if (job->path[0] != '\0')
        unlink(job->path);
    job->path[0] = '\0';
    return rc;
}

/* Creates a private file (0600, close-on-exec) in `dir`; its descriptor, or -1 with errno set. */
static int create_temp(const char *dir, char *path, size_t path_size)
{
    int n = snprintf(path, path_size, "%s/fm-job-XXXXXX", dir);
    if (n < 0 || (size_t)n >= path_size) {
        path[0] = '\0';
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = mkostemp(path, O_CLOEXEC); /* mkstemp's mode is 0600 whatever the umask */
    if (fd < 0)
        path[0] = '\0';
    return fd;
}

fm_step_rc step_fetch(fm_job_t *job, fm_s3_t *s3, const fm_worker_limits_t *limits)
{
    if (job->path[0] != '\0') /* a copy from an earlier run of the step: start again */
        unlink(job->path);
    job->path[0] = job->sha256[0] = '\0';
    job->size = 0;
    const char *dir = limits->tmp_dir != NULL && *limits->tmp_dir != '\0' ? limits->tmp_dir : "/tmp";
    int fd = create_temp(dir, job->path, sizeof(job->path));
    if (fd < 0)
        return give_up(job, FM_STEP_RETRY, "temp file in %s: %s", dir, strerror(errno));

    fetch_sink_t sink = {.fd = fd, .sha256 = EVP_MD_CTX_new(), .declared_size = job->declared_size};
    if (sink.sha256 == NULL || EVP_DigestInit_ex(sink.sha256, EVP_sha256(), NULL) != 1)
        abort();
    fm_s3_result_t res;
    const char *key = job->staging_key[0] != '\0' ? job->staging_key : job->object_key;
    int rc = fm_s3_get_object(s3, key, write_chunk, &sink, &res);
    unsigned char digest[32];
    unsigned int digest_len = 0;
    if (EVP_DigestFinal_ex(sink.sha256, digest, &digest_len) != 1)
        abort();
    EVP_MD_CTX_free(sink.sha256);
    int close_errno = close(fd) != 0 ? errno : 0; /* a delayed write error (NFS, quota) shows here */

    if (sink.too_large) {
        if (res.content_length > job->declared_size)
            return give_up(job, FM_STEP_QUARANTINE, "declared %lld bytes, object has %lld", job->declared_size,
                           res.content_length);
        return give_up(job, FM_STEP_QUARANTINE, "declared %lld bytes, object has more", job->declared_size);
    }
    if (sink.write_errno != 0)
        return give_up(job, FM_STEP_RETRY, "temp file: %s", strerror(sink.write_errno));
    if (rc != 0) {
        /* 404: the object was deleted (or never landed) -- retrying cannot bring it back. A missing bucket is
         * the configuration's fault, not the content's. */
        if (res.status == 404 && strcmp(res.code, "NoSuchBucket") != 0)
            return give_up(job, FM_STEP_FAIL, "object %s is gone (S3 %s)", key, res.code);
        return give_up(job, FM_STEP_RETRY, "S3 GET %s: %s (HTTP %ld): %s", key, res.code, res.status,
                       res.message);
    }
    if (close_errno != 0)
        return give_up(job, FM_STEP_RETRY, "temp file: %s", strerror(close_errno));
    job->size = sink.size;
    if (job->declared_size >= 0 && sink.size != job->declared_size)
        return give_up(job, FM_STEP_QUARANTINE, "declared %lld bytes, object has %lld", job->declared_size, sink.size);
    fm_hex_encode(digest, digest_len < 32 ? digest_len : 32, job->sha256, sizeof(job->sha256));
    job->reason[0] = '\0';
    return FM_STEP_OK;
}
