/*
 * Helpers shared by the adapter tests (test_redis.c, test_pg.c), which drive a real h2o loop against real servers.
 * The including file declares `env` with an `h2o_loop_t *loop` member before it uses RUN_UNTIL or run_for.
 */
#ifndef FM_TEST_LOOP_H
#define FM_TEST_LOOP_H

#include <arpa/inet.h>
#include <h2o.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static inline uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Drives the loop until `cond` holds or `ms` pass; evaluates to the final value of `cond`. */
#define RUN_UNTIL(cond, ms)                                                                                            \
    ({                                                                                                                 \
        uint64_t deadline_ = now_ms() + (ms);                                                                          \
        while (!(cond) && now_ms() < deadline_)                                                                        \
            h2o_evloop_run(env.loop, 10);                                                                              \
        (cond);                                                                                                        \
    })

static inline void run_loop_for(h2o_loop_t *loop, uint64_t ms)
{
    uint64_t until = now_ms() + ms;
    while (now_ms() < until)
        h2o_evloop_run(loop, 10);
}
#define run_for(ms) run_loop_for(env.loop, (ms))

/* A loopback port nobody listens on right now (the kernel's choice). */
static inline int free_port(void)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 ||
        getsockname(fd, (struct sockaddr *)&addr, &len) != 0) {
        perror("free_port");
        abort();
    }
    close(fd);
    return ntohs(addr.sin_port);
}

#endif
