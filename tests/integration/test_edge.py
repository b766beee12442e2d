"""fm-edge against the real stack: Ceph RGW is the origin, URLs are signed by botocore's CloudFrontSigner (the
independent implementation) with a key pair made for the session (conftest.EdgeFactory).

Origin requests are counted by the edge's own /metrics (fm_edge_misses_total: one per origin fetch).

    FM_BUILD_DIR=build /usr/bin/python3 -m pytest tests/integration/test_edge.py -q
"""
import concurrent.futures
import datetime
import hashlib
import http.client
import os
import re
import time
import uuid

import pytest
import requests
from botocore.signers import CloudFrontSigner
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding


def metric(edge, name):
    text = requests.get(edge.url + "/metrics", timeout=5).text
    m = re.search(rf"^{name}(?:{{}})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def counters(edge):
    text = requests.get(edge.url + "/metrics", timeout=5).text
    out = {}
    for name in ("hits", "misses", "coalesced", "refused", "purged", "evictions"):
        m = re.search(rf"^fm_edge_{name}_total(?:{{}})? (\S+)$", text, re.M)
        out[name] = float(m.group(1)) if m else 0.0
    return out


@pytest.fixture(scope="module")
def s3(stack):
    client = stack.s3_client()
    bucket = stack.env["FM_S3_BUCKET"]
    try:
        client.head_bucket(Bucket=bucket)
    except Exception:
        client.create_bucket(Bucket=bucket)
    return client


def put_object(stack, s3, size, prefix="incoming/", content_type="application/octet-stream", key=None):
    key = key or f"{prefix}{uuid.uuid4()}"
    body = os.urandom(size)
    s3.put_object(Bucket=stack.env["FM_S3_BUCKET"], Key=key, Body=body, ContentType=content_type)
    return key, body


@pytest.fixture(scope="module")
def edge(edges):
    return edges.start()


@pytest.fixture(scope="module")
def signer(edges):
    def rsa_sign(message):
        return edges.private_key.sign(message, padding.PKCS1v15(), hashes.SHA1())
    return CloudFrontSigner(edges.key_pair_id, rsa_sign)


def sign(signer, edge, key, query="", expires_in=600):
    url = f"{edge.url}/f/{key}" + (f"?{query}" if query else "")
    expires = datetime.datetime.fromtimestamp(int(time.time()) + expires_in, tz=datetime.timezone.utc)
    return signer.generate_presigned_url(url, date_less_than=expires)


def raw_get(edge, target, headers=None):
    """A request whose path goes on the wire exactly as written (requests/urllib3 would normalize '..')."""
    conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=10)
    try:
        conn.request("GET", target, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def error_code(resp):
    return resp.json()["error"]["code"]


# ---- bytes and caching ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1000, 10 * 1000 * 1000, 200 * 1000 * 1000], ids=["1KB", "10MB", "200MB"])
def test_download_is_byte_identical_then_a_hit(stack, s3, edge, signer, size):
    key, body = put_object(stack, s3, size, content_type="application/pdf")
    url = sign(signer, edge, key)
    before = counters(edge)
    digest = hashlib.sha256()
    with requests.get(url, stream=True, timeout=120) as r:
        assert r.status_code == 200, r.text[:500]
        assert r.headers["Content-Type"] == "application/pdf"
        assert int(r.headers["Content-Length"]) == size
        assert r.headers["Accept-Ranges"] == "bytes"
        assert r.headers["ETag"].startswith('"')
        assert r.headers["Cache-Control"].startswith("private, max-age=")
        for chunk in r.iter_content(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(body).hexdigest()
    after_miss = counters(edge)
    assert after_miss["misses"] == before["misses"] + 1

    digest = hashlib.sha256()
    with requests.get(url, stream=True, timeout=120) as r:
        assert r.status_code == 200
        for chunk in r.iter_content(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(body).hexdigest()
    after_hit = counters(edge)
    assert after_hit["hits"] == after_miss["hits"] + 1
    assert after_hit["misses"] == after_miss["misses"], "a cached object was fetched from the origin again"


def test_head_answers_headers_only(stack, s3, edge, signer):
    key, body = put_object(stack, s3, 4096, content_type="image/png")
    r = requests.head(sign(signer, edge, key), timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Length"] == "4096"
    assert r.headers["Content-Type"] == "image/png"
    assert r.content == b""


def test_deep_keys_are_served(stack, s3, edge, signer):
    key, body = put_object(stack, s3, 700, key=f"variants/{uuid.uuid4().hex}/a/b/c/thumb.webp")
    r = requests.get(sign(signer, edge, key), timeout=10)
    assert r.status_code == 200 and r.content == body


def test_missing_object_is_404(edge, signer, s3):
    r = requests.get(sign(signer, edge, f"incoming/{uuid.uuid4()}"), timeout=10)
    assert r.status_code == 404
    assert error_code(r) == "not_found"


def test_concurrent_cold_requests_make_one_origin_fetch(stack, s3, edge, signer):
    key, body = put_object(stack, s3, 10 * 1000 * 1000)
    url = sign(signer, edge, key)
    expected = hashlib.sha256(body).hexdigest()
    before = counters(edge)

    def fetch(_):
        r = requests.get(url, timeout=60)
        return r.status_code, hashlib.sha256(r.content).hexdigest()

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(fetch, range(20)))
    assert all(status == 200 and digest == expected for status, digest in results), results
    after = counters(edge)
    assert after["misses"] - before["misses"] == 1, "concurrent misses were not coalesced into one origin fetch"
    # Each other request either joined the fill or came after it and was a hit.
    assert (after["coalesced"] - before["coalesced"]) + (after["hits"] - before["hits"]) == 19
    assert after["coalesced"] - before["coalesced"] >= 1


# ---- ranges and conditional requests ----------------------------------------------------------------------------


def test_ranges(stack, s3, edge, signer):
    key, body = put_object(stack, s3, 1024)
    url = sign(signer, edge, key)
    r = requests.get(url, headers={"Range": "bytes=0-99"}, timeout=10)
    assert r.status_code == 206 and r.content == body[:100]
    assert r.headers["Content-Range"] == "bytes 0-99/1024"
    r = requests.get(url, headers={"Range": "bytes=1000-"}, timeout=10)
    assert r.status_code == 206 and r.content == body[1000:]
    assert r.headers["Content-Range"] == "bytes 1000-1023/1024"
    r = requests.get(url, headers={"Range": "bytes=-10"}, timeout=10)
    assert r.status_code == 206 and r.content == body[-10:]
    assert r.headers["Content-Range"] == "bytes 1014-1023/1024"
    r = requests.get(url, headers={"Range": "bytes=100-99999999999999999999999"}, timeout=10)
    assert r.status_code == 206 and r.content == body[100:]
    r = requests.get(url, headers={"Range": "bytes=2000-"}, timeout=10)
    assert r.status_code == 416
    assert r.headers["Content-Range"] == "bytes */1024"
    assert error_code(r) == "range_not_satisfiable"
    r = requests.get(url, headers={"Range": "bytes=-0"}, timeout=10)
    assert r.status_code == 416
    # Unparsable or multi-range: ignored, the whole object (RFC 9110 allows it).
    for value in ("bytes=abc", "bytes=0-1,5-6", "items=0-1"):
        r = requests.get(url, headers={"Range": value}, timeout=10)
        assert r.status_code == 200 and r.content == body, value
    # If-Range with another ETag: the whole object.
    r = requests.get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'}, timeout=10)
    assert r.status_code == 200 and r.content == body


def test_conditional_requests(stack, s3, edge, signer):
    key, body = put_object(stack, s3, 2048)
    url = sign(signer, edge, key)
    first = requests.get(url, timeout=10)
    etag, last_modified = first.headers["ETag"], first.headers["Last-Modified"]
    r = requests.get(url, headers={"If-None-Match": etag}, timeout=10)
    assert r.status_code == 304 and r.content == b""
    assert r.headers["ETag"] == etag
    assert "Transfer-Encoding" not in r.headers and r.headers.get("Content-Length", "0") == "0"
    r = requests.get(url, headers={"If-None-Match": f'"nope", W/{etag}'}, timeout=10)
    assert r.status_code == 304
    r = requests.get(url, headers={"If-None-Match": '"nope"'}, timeout=10)
    assert r.status_code == 200 and r.content == body
    r = requests.get(url, headers={"If-Modified-Since": last_modified}, timeout=10)
    assert r.status_code == 304
    r = requests.get(url, headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}, timeout=10)
    assert r.status_code == 200


def test_content_disposition_from_the_signed_name(stack, s3, edge, signer):
    key, _ = put_object(stack, s3, 100)
    # "résumé "q"\r\n.pdf": unicode, quotes and a CR/LF in a user's file name.
    url = sign(signer, edge, key, query="name=r%C3%A9sum%C3%A9%20%22q%22%0D%0A.pdf")
    r = requests.get(url, timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Disposition"] == (
        "attachment; filename=\"r_sum_ _q_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22q%22.pdf")
    r = requests.get(sign(signer, edge, key, query="disposition=inline&name=a.txt"), timeout=10)
    assert r.headers["Content-Disposition"] == "inline; filename=\"a.txt\"; filename*=UTF-8''a.txt"
    r = requests.get(sign(signer, edge, key, query="name=%FF%FE"), timeout=10)
    assert r.status_code == 400 and error_code(r) == "invalid_name"
    r = requests.get(sign(signer, edge, key, query="disposition=evil"), timeout=10)
    assert r.status_code == 400


# ---- refusals: no origin request ---------------------------------------------------------------------------------


def test_bad_signatures_are_refused_before_the_origin(stack, s3, edge, signer, edges):
    key, _ = put_object(stack, s3, 1000)
    other_key, _ = put_object(stack, s3, 1000)
    before = counters(edge)

    expired = sign(signer, edge, key, expires_in=-1)
    r = requests.get(expired, timeout=10)
    assert r.status_code == 403 and error_code(r) == "expired", r.text

    good = sign(signer, edge, key)
    sig = re.search(r"Signature=([^&]+)", good).group(1)
    flipped = ("A" if sig[10] != "A" else "B")
    tampered = good.replace(sig, sig[:10] + flipped + sig[11:])
    r = requests.get(tampered, timeout=10)
    assert r.status_code == 403 and error_code(r) == "bad_signature", r.text

    # A valid signature for one object used on another.
    other = good.replace(key, other_key)
    r = requests.get(other, timeout=10)
    assert r.status_code == 403 and error_code(r) == "bad_signature", r.text

    # Extra parameter appended after signing: the canned policy no longer matches.
    r = requests.get(good + "&name=x.exe", timeout=10)
    assert r.status_code == 403, r.text

    r = requests.get(good.replace(edges.key_pair_id, "KUNKNOWN"), timeout=10)
    assert r.status_code == 403 and error_code(r) == "unknown_key", r.text

    r = requests.get(f"{edge.url}/f/{key}", timeout=10)
    assert r.status_code == 403 and error_code(r).startswith("missing_"), r.text

    r = requests.get(good.replace("Signature=", "Signature=%%%"), timeout=10)
    assert r.status_code == 403

    after = counters(edge)
    assert after["misses"] == before["misses"], "a refused request reached the origin"
    assert after["hits"] == before["hits"]
    assert after["refused"] >= before["refused"] + 7


def test_custom_policy_with_wildcard_and_ip(stack, s3, edge, signer):
    key, body = put_object(stack, s3, 500)
    expires = datetime.datetime.fromtimestamp(int(time.time()) + 600, tz=datetime.timezone.utc)
    policy = signer.build_policy(f"{edge.url}/f/incoming/*", expires, ip_address="127.0.0.1/32")
    url = signer.generate_presigned_url(f"{edge.url}/f/{key}", policy=policy)
    r = requests.get(url, timeout=10)
    assert r.status_code == 200 and r.content == body
    policy = signer.build_policy(f"{edge.url}/f/incoming/*", expires, ip_address="10.1.2.3/32")
    r = requests.get(signer.generate_presigned_url(f"{edge.url}/f/{key}", policy=policy), timeout=10)
    assert r.status_code == 403 and error_code(r) == "ip_not_allowed"
    policy = signer.build_policy(f"{edge.url}/f/variants/*", expires)
    r = requests.get(signer.generate_presigned_url(f"{edge.url}/f/{key}", policy=policy), timeout=10)
    assert r.status_code == 403 and error_code(r) == "resource_mismatch"


@pytest.mark.parametrize("target", [
    "/f/incoming/../incoming/x",
    "/f/incoming/%2e%2e/etc",
    "/f/incoming%2Fx",
    "/f/incoming%2fx",
    "/f/incoming/%5Cx",
    "/f/incoming/a%00b",
    "/f/incoming//x",
    "/f/incoming/./x",
    "/f/incoming/%zz",
    "/f/incoming/" + "a" * 1100,
])
def test_bad_paths_are_400_before_anything(edge, target):
    before = counters(edge)
    status, headers, body = raw_get(edge, target + "?Expires=1&Signature=x&Key-Pair-Id=y")
    assert status == 400, body
    assert b'"invalid_path"' in body
    after = counters(edge)
    assert after["misses"] == before["misses"] and after["refused"] == before["refused"]


# ---- purge --------------------------------------------------------------------------------------------------------


def test_purge_then_refill(stack, s3, edge, signer, edges):
    key, body = put_object(stack, s3, 3000)
    sha = hashlib.sha256(body).hexdigest()
    v1, _ = put_object(stack, s3, 100, key=f"variants/{sha}/thumb.webp")
    v2, _ = put_object(stack, s3, 100, key=f"variants/{sha}/preview.jpeg")
    for k in (key, v1, v2):
        assert requests.get(sign(signer, edge, k), timeout=10).status_code == 200
    purge = edge.url + "/_edge/purge"
    r = requests.post(purge, json={"keys": [key]}, timeout=10)
    assert r.status_code == 401
    r = requests.post(purge, json={"keys": [key]}, headers={"X-FM-Edge-Secret": "wrong" * 8}, timeout=10)
    assert r.status_code == 401
    auth = {"X-FM-Edge-Secret": edges.purge_secret}
    r = requests.post(purge, json={"keys": "nope"}, headers=auth, timeout=10)
    assert r.status_code == 422

    before = counters(edge)
    r = requests.post(purge, json={"keys": [key], "prefixes": [f"variants/{sha}/"]}, headers=auth, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json() == {"purged": 3}
    for k in (key, v1, v2):
        assert requests.get(sign(signer, edge, k), timeout=10).status_code == 200
    after = counters(edge)
    assert after["misses"] == before["misses"] + 3, "purged objects were not fetched again"
    assert requests.post(purge, json={"keys": [f"incoming/{uuid.uuid4()}"]}, headers=auth,
                         timeout=10).json() == {"purged": 0}


# ---- restart and eviction -----------------------------------------------------------------------------------------


def test_restart_keeps_the_cache(stack, s3, edges, signer):
    first = edges.start()
    key, body = put_object(stack, s3, 50000)
    r = requests.get(sign(signer, first, key), timeout=10)
    assert r.status_code == 200 and r.content == body
    cache_dir = first.cache_dir
    edges.stop(first)
    # A half-written fill left by a crash is cleaned at start, never served.
    (cache_dir / ("0" * 64 + ".1.2.tmp")).write_bytes(b"partial")
    second = edges.start(cache_dir=cache_dir)
    before = counters(second)
    r = requests.get(sign(signer, second, key), timeout=10)
    assert r.status_code == 200 and r.content == body
    after = counters(second)
    assert after["hits"] == before["hits"] + 1 and after["misses"] == before["misses"]
    assert not list(cache_dir.glob("*.tmp"))
    edges.stop(second)


def test_lru_eviction_keeps_the_cache_under_its_cap(stack, s3, edges, signer):
    edge = edges.start(FM_EDGE_CACHE_MAX_BYTES=str(1 << 20))
    keys = [put_object(stack, s3, 400 * 1024)[0] for _ in range(4)]
    for k in keys:
        assert requests.get(sign(signer, edge, k), timeout=10).status_code == 200
    time.sleep(1.2)  # the cache gauges refresh once a second
    assert metric(edge, "fm_edge_cache_bytes") <= 1 << 20
    assert counters(edge)["evictions"] >= 2
    before = counters(edge)
    assert requests.get(sign(signer, edge, keys[-1]), timeout=10).status_code == 200
    assert counters(edge)["hits"] == before["hits"] + 1  # the most recent stayed
    assert requests.get(sign(signer, edge, keys[0]), timeout=10).status_code == 200
    assert counters(edge)["misses"] == before["misses"] + 1  # the oldest went
    edges.stop(edge)


def test_a_verified_url_still_expires(stack, s3, edge, signer):
    """The edge remembers verified canned URLs (docs/downloads.md), never past their signed Expires."""
    key, body = put_object(stack, s3, 100)
    url = sign(signer, edge, key, expires_in=2)
    assert requests.get(url, timeout=10).status_code == 200
    assert requests.get(url, timeout=10).status_code == 200
    time.sleep(2.2)
    r = requests.get(url, timeout=10)
    assert r.status_code == 403 and error_code(r) == "expired"
