/*
 * ratelimit: what the limiters count a client as (docs/decisions.md "Accounts and tokens", issue 10 #9).
 *
 * A limiter keyed by the exact source address is bypassed by whoever holds many addresses, and every IPv6
 * subscriber does: a home or cloud network gets at least a /64 and SLAAC/privacy addresses rotate inside it. So a
 * client is counted at two sizes:
 *  - host: an IPv4 address (/32) or an IPv6 /64 (one subscriber's LAN, RFC 6177 / RFC 7421);
 *  - net:  an IPv4 /24 or an IPv6 /48 (the common allocation to one site or one rented block).
 * An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack socket shows for an IPv4 client) is IPv4.
 * Pure functions, no I/O; any thread.
 */
#ifndef FM_RATELIMIT_H
#define FM_RATELIMIT_H

#include <stddef.h>

/** Buffer size for one prefix (an IPv6 /64 needs 25 bytes with its NUL; room for any inet_ntop text + "/NN"). */
#define FM_RL_PREFIX_SIZE 64

/** A client address as the limiters count it. */
typedef struct fm_rl_client {
    char host[FM_RL_PREFIX_SIZE]; /**< "192.0.2.7/32" or "2001:db8:1:2::/64" */
    char net[FM_RL_PREFIX_SIZE];  /**< "192.0.2.0/24" or "2001:db8:1::/48" */
} fm_rl_client_t;

/**
 * Fills `out` from the textual address `ip` (as inet_ntop writes it, NUL-terminated). Returns 0, or -1 when `ip`
 * is NULL, empty or not an IPv4/IPv6 address; both prefixes are then "unknown", so that every such client shares
 * one counter (fail closed) instead of escaping the limits.
 */
int fm_rl_client(const char *ip, fm_rl_client_t *out);

#endif /* FM_RATELIMIT_H */
