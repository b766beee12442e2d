"""fm-edge against the attacks of issue 10 (#3 active types, #4 amplification, #7 Range overflow), on the real stack:
RGW is the origin, URLs are signed by botocore's CloudFrontSigner (test_edge.py's helpers), /p/ keys are made public
by adding them to the Redis set fm:public the edge asks (the control plane's side is test_public_files.py's).

What the origin is asked is counted two ways: the edge's own /metrics (fm_edge_misses_total = whole-object fills,
fm_edge_origin_heads_total, fm_edge_origin_ranges_total) and, where it matters, a TCP proxy in front of RGW
(test_edge.OriginProxy) that counts requests by method and can hold an answer mid-body. Latency effects are measured
by tests/bench/bench_edge.py, never asserted here.

    FM_BUILD_DIR=build /usr/bin/python3 -m pytest tests/integration/test_edge_hardening.py -q
"""
import concurrent.futures
import http.client
import io
import socket
import time
import urllib.parse
import uuid

import pytest
import requests

from helpers_fm import redis_cmd, redis_url
from test_edge import (OriginProxy, cached, counters, error_code, metric, put_object, raw_get, s3,  # noqa: F401
                       sign, signer)

PUBLIC_DB = 14  # the /p/ edge's Redis database (fm:public); test_edge_variants flushes it only in its own test
STRICT_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
MEDIA_CSP = "default-src 'none'; media-src 'self'; style-src 'unsafe-inline'"


@pytest.fixture(scope="module")
def edge(edges, stack):
    return edges.start(FM_REDIS_URL=redis_url(stack, PUBLIC_DB), FM_EDGE_EVENTS="0")


def put(stack, s3, body, content_type, key=None):
    key = key or f"incoming/{uuid.uuid4()}"
    s3.put_object(Bucket=stack.env["FM_S3_BUCKET"], Key=key, Body=body, ContentType=content_type)
    return key


def make_public(stack, key):
    assert redis_cmd(stack, PUBLIC_DB, "SADD", "fm:public", key) in (0, 1)


def public_url(edge, key, query=""):
    return f"{edge.url}/p/{urllib.parse.quote(key, safe='/')}" + (f"?{query}" if query else "")


# ---- #7: Range numbers that overflow 64 bits ----------------------------------------------------------------------


@pytest.mark.parametrize("cold", [True, False], ids=["cold", "cached"])
def test_range_overflow_never_wraps(stack, s3, edge, signer, cold):
    """RFC 9110 §14.1.2: a last-pos past the end is the end, a suffix longer than the object is the whole object, a
    first-pos past the end is unsatisfiable -- however many digits. The edge used to wrap: 0-99…9 → bytes 0-3999."""
    key, body = put_object(stack, s3, 6338)
    url = sign(signer, edge, key)
    if not cold:
        assert requests.get(url, timeout=10).status_code == 200
    huge = "9" * 23
    cases = [
        (f"bytes=0-{huge}", 206, "bytes 0-6337/6338", body),
        (f"bytes=-{huge}", 206, "bytes 0-6337/6338", body),
        (f"bytes=6000-{huge}", 206, "bytes 6000-6337/6338", body[6000:]),
        ("bytes=-18446744073709551616", 206, "bytes 0-6337/6338", body),  # 2^64
        ("bytes=0-18446744073709551619", 206, "bytes 0-6337/6338", body),  # wrapped to 3 before
        (f"bytes={huge}-", 416, "bytes */6338", None),
        ("bytes=18446744073709551616-18446744073709551617", 416, "bytes */6338", None),
    ]
    for value, status, content_range, expected in cases:
        r = requests.get(url, headers={"Range": value}, timeout=30)
        assert r.status_code == status, (value, r.status_code, r.headers.get("Content-Range"))
        assert r.headers["Content-Range"] == content_range, value
        if expected is not None:
            assert r.content == expected, value
        else:
            assert error_code(r) == "range_not_satisfiable"


# ---- #3: active types are never live documents --------------------------------------------------------------------

SVG_XSS = (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>alert(document.domain)</script>'
           b'</svg>')

ACTIVE_TYPES = [
    "image/svg+xml", "text/html", "text/html; charset=utf-8", "TEXT/HTML", "application/xhtml+xml", "text/xml",
    "application/xml", "application/rss+xml", "text/xsl", "application/javascript", "text/javascript",
    "application/ecmascript", "application/json", "application/octet-stream", "multipart/x-mixed-replace",
    "image/png, text/html", "video/mp4,text/html", "",
]


def assert_not_live(r, ctx=""):
    assert r.status_code in (200, 206), (ctx, r.status_code, r.text[:200])
    disposition = r.headers.get("Content-Disposition", "")
    assert disposition.startswith("attachment"), (ctx, disposition)
    assert r.headers["Content-Security-Policy"] == STRICT_CSP, ctx
    assert r.headers["X-Content-Type-Options"] == "nosniff", ctx
    assert r.headers["Cross-Origin-Resource-Policy"] == "same-origin", ctx


@pytest.mark.parametrize("content_type", ACTIVE_TYPES)
def test_active_types_are_never_served_as_live_documents(stack, s3, edge, signer, content_type):
    """A signed URL asking disposition=inline (the control plane's default) gets an attachment with the sandboxed
    CSP for any type outside the inline allowlist: on the cold miss (answered while filled) and on the hit."""
    key = put(stack, s3, SVG_XSS, content_type)
    for query in ("disposition=inline&name=logo.svg", "disposition=inline", "", "name=a.svg"):
        url = sign(signer, edge, key, query=query)
        for attempt in ("cold", "hit"):
            r = requests.get(url, timeout=30)
            assert_not_live(r, (content_type, query, attempt))
            assert r.content == SVG_XSS
        r = requests.get(url, headers={"Range": "bytes=0-9"}, timeout=30)
        assert_not_live(r, (content_type, query, "range"))
        key = put(stack, s3, SVG_XSS, content_type)  # a cold object again for the next query


def test_public_urls_cannot_turn_an_svg_inline(stack, s3, edge):
    """/p/ URLs are unsigned: anyone can write disposition=inline. The served type decides, not the URL."""
    key = put(stack, s3, SVG_XSS, "image/svg+xml")
    make_public(stack, key)
    for query in ("disposition=inline&name=logo.svg", "disposition=inline", "", "w=&x=1"):
        r = requests.get(public_url(edge, key, query), timeout=30)
        if query == "w=&x=1":
            assert r.status_code == 400  # a bad variant parameter is refused, with the headers all the same
            assert r.headers["Content-Security-Policy"] == STRICT_CSP
            continue
        assert_not_live(r, query)
        assert r.headers["Cache-Control"].startswith("public")
    # A variant of an SVG is refused (only raster loaders may read an original): no SVG is ever rendered inline.
    r = requests.get(public_url(edge, key, "w=64&format=png"), timeout=30)
    assert r.status_code == 415 and error_code(r) == "not_an_image"
    assert r.headers["Content-Security-Policy"] == STRICT_CSP


@pytest.mark.parametrize("content_type,csp", [
    ("image/png", STRICT_CSP), ("image/jpeg", STRICT_CSP), ("image/webp", STRICT_CSP), ("text/plain", STRICT_CSP),
    ("text/plain; charset=utf-8", STRICT_CSP), ("application/pdf", STRICT_CSP), ("video/mp4", MEDIA_CSP),
    ("audio/mpeg", MEDIA_CSP), ("VIDEO/WebM", MEDIA_CSP),
])
def test_passive_types_stay_inline_with_a_strict_policy(stack, s3, edge, signer, content_type, csp):
    """What a browser shows without running the file (raster images, text, PDF in its sandboxed viewer, audio and
    video) keeps disposition=inline; the policy still forbids scripts. Audio and video get no `sandbox`: Chromium
    would not play them at the top level (docs/decisions.md)."""
    key = put(stack, s3, b"\x00" * 100, content_type)
    url = sign(signer, edge, key, query="disposition=inline&name=a.bin")
    for attempt in ("cold", "hit"):
        r = requests.get(url, timeout=30)
        assert r.status_code == 200, r.text[:200]
        assert r.headers["Content-Disposition"].startswith("inline"), (content_type, attempt)
        assert r.headers["Content-Security-Policy"] == csp, (content_type, attempt)
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert "Cross-Origin-Resource-Policy" not in r.headers  # the web client embeds images and video
    # A revalidation (304) carries the same policy: a browser replaces the cached headers with the 304's.
    r = requests.get(url, headers={"If-None-Match": r.headers["ETag"]}, timeout=30)
    assert r.status_code == 304 and r.headers["Content-Security-Policy"] == csp


def test_every_answer_carries_the_strict_policy(stack, s3, edge, signer):
    """Refusals and errors too: a 400, 403, 404, 416, a 503 of /p/ -- each with the sandboxed CSP and nosniff."""
    key, body = put_object(stack, s3, 1000, content_type="image/png")
    answers = {
        "400 path": raw_get(edge, "/f/incoming/%2e%2e/x?Expires=1&Signature=x&Key-Pair-Id=y"),
        "403 signature": raw_get(edge, f"/f/{key}?Expires=1&Signature=x&Key-Pair-Id=y"),
        "404 missing": raw_get(edge, sign(signer, edge, f"incoming/{uuid.uuid4()}")[len(edge.url):]),
        "404 not public": raw_get(edge, f"/p/incoming/{uuid.uuid4()}"),
        "416": raw_get(edge, sign(signer, edge, key)[len(edge.url):], {"Range": "bytes=5000-"}),
        "400 variant": raw_get(edge, sign(signer, edge, key, query="w=0")[len(edge.url):]),
    }
    for what, (status, headers, _) in answers.items():
        assert str(status) == what.split()[0], (what, status)
        headers = {k.lower(): v for k, v in headers.items()}
        assert headers.get("content-security-policy") == STRICT_CSP, what
        assert headers.get("x-content-type-options") == "nosniff", what
