/*
 * Fuzz target for fm_redis_url_parse (common/config.c): FM_REDIS_URL comes from the environment, i.e. from
 * whoever deploys the service, and is parsed before anything else validates it.
 *
 * Input: byte 0 picks the host buffer size and byte 1 the password buffer size (each 1..256; 256 is what the
 * services pass); the rest, cut at its first NUL, is the URL. Both output buffers are malloc'd at their exact size
 * so that ASan sees any write past them.
 *
 * Invariants on success: host is non-empty, NUL-terminated inside its buffer and free of ':', '/' and '@';
 * the password is NUL-terminated inside its buffer and empty when the URL has no '@'; port is 1..65535 and db
 * 0..10000; and "redis://:password@host:port/db" built from the parts parses back to the same parts.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_config: invariant failed at line %d: %s\n", __LINE__, #cond);                        \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t host_size = (size_t)data[0] + 1, password_size = (size_t)data[1] + 1;
    char *url = malloc(size - 2 + 1);
    memcpy(url, data + 2, size - 2);
    url[size - 2] = '\0';

    char *host = malloc(host_size), *password = malloc(password_size);
    int port = -1, db = -1;
    if (fm_redis_url_parse(url, host, host_size, &port, password, password_size, &db) == 0) {
        size_t host_len = strnlen(host, host_size), password_len = strnlen(password, password_size);
        CHECK(host_len > 0 && host_len < host_size);
        CHECK(strpbrk(host, ":/@") == NULL);
        CHECK(password_len < password_size);
        CHECK(strchr(url, '@') != NULL || password_len == 0);
        CHECK(port >= 1 && port <= 65535);
        CHECK(db >= 0 && db <= 10000);
        CHECK(strncmp(url, "redis://", 8) == 0);
        CHECK(strstr(url, host) != NULL);

        /* Rebuild a canonical URL from the parts: it must give the same parts back. */
        size_t again_size = host_len + password_len + 40;
        char *again = malloc(again_size);
        snprintf(again, again_size, "redis://:%s@%s:%d/%d", password, host, port, db);
        char *host2 = malloc(host_size), *password2 = malloc(password_size);
        int port2 = -1, db2 = -1;
        CHECK(fm_redis_url_parse(again, host2, host_size, &port2, password2, password_size, &db2) == 0);
        CHECK(strcmp(host, host2) == 0 && strcmp(password, password2) == 0 && port == port2 && db == db2);
        free(host2);
        free(password2);
        free(again);
    }
    free(host);
    free(password);
    free(url);
    return 0;
}
