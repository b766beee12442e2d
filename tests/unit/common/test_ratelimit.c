/*
 * Tests for common/ratelimit.c: the prefixes a client is counted as (issue 10 #9). The integration suite reaches
 * fm-control over IPv4 loopback only, so the IPv6 cases are proven here: addresses rotated inside one /64 (SLAAC,
 * privacy addresses, a cloud VM's routed /64) are one client, and the /48 around them one network.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ratelimit.h"

#include <stdio.h>
#include <string.h>

static void check(const char *ip, const char *host, const char *net)
{
    fm_rl_client_t client;
    assert_int_equal(fm_rl_client(ip, &client), 0);
    assert_string_equal(client.host, host);
    assert_string_equal(client.net, net);
}

static void test_ipv4_host_and_net(void **state)
{
    (void)state;
    check("192.0.2.7", "192.0.2.7/32", "192.0.2.0/24");
    check("127.0.0.1", "127.0.0.1/32", "127.0.0.0/24");
    check("255.255.255.255", "255.255.255.255/32", "255.255.255.0/24");
}

static void test_ipv6_addresses_rotated_in_one_64_are_one_client(void **state)
{
    (void)state;
    const char *rotated[] = {"2001:db8:1:2::1", "2001:db8:1:2:a1b2:c3d4:e5f6:789", "2001:db8:1:2:ffff:ffff:ffff:ffff",
                             "2001:0DB8:0001:0002:0000:0000:0000:0042"};
    for (size_t i = 0; i < sizeof(rotated) / sizeof(rotated[0]); ++i)
        check(rotated[i], "2001:db8:1:2::/64", "2001:db8:1::/48");
    /* The next /64 is another client of the same network; the next /48 another network. */
    check("2001:db8:1:3::1", "2001:db8:1:3::/64", "2001:db8:1::/48");
    check("2001:db8:2:2::1", "2001:db8:2:2::/64", "2001:db8:2::/48");
    check("::1", "::/64", "::/48");
    check("fe80::1234", "fe80::/64", "fe80::/48");
}

static void test_ipv4_mapped_ipv6_is_ipv4(void **state)
{
    (void)state;
    /* What a dual-stack socket reports for an IPv4 client: the same counters as the plain IPv4 address. */
    check("::ffff:192.0.2.7", "192.0.2.7/32", "192.0.2.0/24");
    check("::ffff:c000:207", "192.0.2.7/32", "192.0.2.0/24");
}

static void test_unparsable_addresses_share_one_counter(void **state)
{
    (void)state;
    const char *bad[] = {"", "localhost", "192.0.2", "192.0.2.7/32", "2001:db8::1%eth0", "1.2.3.4 ", "::g"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
        fm_rl_client_t client;
        assert_int_equal(fm_rl_client(bad[i], &client), -1);
        assert_string_equal(client.host, "unknown");
        assert_string_equal(client.net, "unknown");
    }
    fm_rl_client_t client;
    assert_int_equal(fm_rl_client(NULL, &client), -1);
    assert_string_equal(client.host, "unknown");
}

int main(void)
{
    // clang-format off
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ipv4_host_and_net),
        cmocka_unit_test(test_ipv6_addresses_rotated_in_one_64_are_one_client),
        cmocka_unit_test(test_ipv4_mapped_ipv6_is_ipv4),
        cmocka_unit_test(test_unparsable_addresses_share_one_counter),
    };
    // clang-format on
    return cmocka_run_group_tests(tests, NULL, NULL);
}
