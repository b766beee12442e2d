/* Client prefixes for the limiters: see ratelimit.h. */
#include "ratelimit.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static void ipv4_prefix(const uint8_t addr[4], int bits, char *out, size_t size)
{
    uint8_t masked[4] = {addr[0], addr[1], addr[2], bits == 32 ? addr[3] : 0};
    char text[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, masked, text, sizeof(text));
    snprintf(out, size, "%s/%d", text, bits);
}

/* Keeps the first `bits` (a multiple of 8) bits; inet_ntop then writes the RFC 5952 form ("2001:db8::/48"). */
static void ipv6_prefix(const uint8_t addr[16], int bits, char *out, size_t size)
{
    uint8_t masked[16] = {0};
    memcpy(masked, addr, (size_t)bits / 8);
    char text[INET6_ADDRSTRLEN];
    inet_ntop(AF_INET6, masked, text, sizeof(text));
    snprintf(out, size, "%s/%d", text, bits);
}

int fm_rl_client(const char *ip, fm_rl_client_t *out)
{
    static const uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    uint8_t addr[16];
    if (ip != NULL && inet_pton(AF_INET, ip, addr) == 1) {
        ipv4_prefix(addr, 32, out->host, sizeof(out->host));
        ipv4_prefix(addr, 24, out->net, sizeof(out->net));
        return 0;
    }
    if (ip != NULL && inet_pton(AF_INET6, ip, addr) == 1) {
        if (memcmp(addr, v4_mapped, sizeof(v4_mapped)) == 0) {
            ipv4_prefix(addr + 12, 32, out->host, sizeof(out->host));
            ipv4_prefix(addr + 12, 24, out->net, sizeof(out->net));
        } else {
            ipv6_prefix(addr, 64, out->host, sizeof(out->host));
            ipv6_prefix(addr, 48, out->net, sizeof(out->net));
        }
        return 0;
    }
    snprintf(out->host, sizeof(out->host), "unknown");
    snprintf(out->net, sizeof(out->net), "unknown");
    return -1;
}
