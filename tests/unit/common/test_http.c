/* common/http.c: the HTTP/1 framing check and the answers' time format (the parts that run without a server). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "http.h"

#define FRAMING(literal) fm_http1_framing_check(literal, sizeof(literal) - 1)

static void test_one_framing_header_is_fine(void **state)
{
    assert_int_equal(FRAMING("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), FM_HTTP1_FRAMING_OK);
    assert_int_equal(FRAMING("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"), FM_HTTP1_FRAMING_OK);
    assert_int_equal(FRAMING("POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
                     FM_HTTP1_FRAMING_OK);
    /* only the head counts: what follows the empty line (a body, the next pipelined request) is not read */
    assert_int_equal(FRAMING("POST /a HTTP/1.1\r\nContent-Length: 40\r\n\r\n"
                             "POST /b HTTP/1.1\r\nContent-Length: 1\r\n\r\n"),
                     FM_HTTP1_FRAMING_OK);
    /* a header whose name only contains the word is another header */
    assert_int_equal(
        FRAMING("POST / HTTP/1.1\r\nX-Content-Length: 1\r\nContent-Lengths: 2\r\nContent-Length: 3\r\n\r\n"),
        FM_HTTP1_FRAMING_OK);
}

static void test_conflicts_are_found(void **state)
{
    assert_int_equal(FRAMING("POST / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nGET /x HTTP/1.1\r\n"),
                     FM_HTTP1_FRAMING_DUPLICATE_LENGTH);
    assert_int_equal(FRAMING("POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-LENGTH: 5\r\n\r\nhello"),
                     FM_HTTP1_FRAMING_DUPLICATE_LENGTH); /* equal values are refused too */
    assert_int_equal(FRAMING("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
                     FM_HTTP1_FRAMING_LENGTH_AND_ENCODING);
    assert_int_equal(FRAMING("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
                     FM_HTTP1_FRAMING_LENGTH_AND_ENCODING);
    assert_int_equal(FRAMING("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
                     FM_HTTP1_FRAMING_DUPLICATE_ENCODING);
    /* bare LF line endings, as picohttpparser accepts them, and a leading empty line */
    assert_int_equal(FRAMING("\r\nPOST / HTTP/1.1\nContent-Length: 1\nContent-Length: 2\n\n"),
                     FM_HTTP1_FRAMING_DUPLICATE_LENGTH);
}

static void test_folded_lines_are_not_headers(void **state)
{
    assert_int_equal(FRAMING("POST / HTTP/1.1\r\nX-A: 1\r\n Content-Length: 9\r\nContent-Length: 1\r\n\r\n"),
                     FM_HTTP1_FRAMING_OK);
}

static void test_incomplete_heads_are_not_judged(void **state)
{
    assert_int_equal(FRAMING(""), FM_HTTP1_FRAMING_UNREADABLE);
    assert_int_equal(FRAMING("POST / HTTP/1.1"), FM_HTTP1_FRAMING_UNREADABLE);
    assert_int_equal(FRAMING("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n"),
                     FM_HTTP1_FRAMING_UNREADABLE);
}

/* fm_iso8601: the timestamps of the answers (expires_at of uploads and downloads) are UTC with a Z, seconds only */
static void test_iso8601_is_utc_seconds(void **state)
{
    char out[32];
    fm_iso8601(0, out);
    assert_string_equal(out, "1970-01-01T00:00:00Z");
    fm_iso8601(1767323045, out);
    assert_string_equal(out, "2026-01-02T03:04:05Z");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_framing_header_is_fine),
        cmocka_unit_test(test_conflicts_are_found),
        cmocka_unit_test(test_folded_lines_are_not_headers),
        cmocka_unit_test(test_incomplete_heads_are_not_judged),
        cmocka_unit_test(test_iso8601_is_utc_seconds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
