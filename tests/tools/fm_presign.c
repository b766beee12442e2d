/*
 * fm_presign: prints a SigV4 presigned URL made by common/sigv4.c, so integration tests can PUT/GET through the
 * real store (Ceph RGW) with exactly the URLs the control plane would hand out.
 *
 *   fm_presign METHOD ENDPOINT BUCKET KEY EXPIRES [CONTENT-TYPE]
 *
 * Credentials from FM_S3_ACCESS_KEY, FM_S3_SECRET_KEY, FM_S3_SESSION_TOKEN (optional) and FM_S3_REGION
 * (default us-east-1). Path-style addressing. With CONTENT-TYPE the Content-Type header is signed and the
 * client must send that exact value. Exit status 0, 1 on a signing error, 2 on a usage error.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "sigv4.h"

int main(int argc, char **argv)
{
    if (argc != 6 && argc != 7) {
        fprintf(stderr, "usage: %s METHOD ENDPOINT BUCKET KEY EXPIRES [CONTENT-TYPE]\n", argv[0]);
        return 2;
    }
    const char *access_key = getenv("FM_S3_ACCESS_KEY"), *secret_key = getenv("FM_S3_SECRET_KEY");
    const char *region = getenv("FM_S3_REGION");
    if (access_key == NULL || secret_key == NULL) {
        fprintf(stderr, "%s: FM_S3_ACCESS_KEY and FM_S3_SECRET_KEY must be set\n", argv[0]);
        return 2;
    }
    char *end = NULL;
    errno = 0;
    long expires = strtol(argv[5], &end, 10);
    if (errno != 0 || end == argv[5] || *end != '\0') {
        fprintf(stderr, "%s: EXPIRES must be a number of seconds\n", argv[0]);
        return 2;
    }
    fm_sigv4_t *signer = fm_sigv4_new(access_key, secret_key, getenv("FM_S3_SESSION_TOKEN"),
                                      region != NULL && *region != '\0' ? region : "us-east-1", "s3");
    if (signer == NULL) {
        fprintf(stderr, "%s: %s\n", argv[0], fm_sigv4_last_error());
        return 1;
    }
    fm_sigv4_header_t content_type = {"Content-Type", argc == 7 ? argv[6] : NULL};
    fm_sigv4_request_t req = {.method = argv[1],
                              .endpoint = argv[2],
                              .bucket = argv[3],
                              .key = argv[4],
                              .headers = &content_type,
                              .header_count = argc == 7 ? 1 : 0};
    char *url = NULL;
    int rc = fm_sigv4_presign(signer, &req, expires, time(NULL), &url);
    if (rc == 0)
        printf("%s\n", url);
    else
        fprintf(stderr, "%s: %s\n", argv[0], fm_sigv4_last_error());
    free(url);
    fm_sigv4_free(signer);
    return rc == 0 ? 0 : 1;
}
