"""fm-edge against the real stack: Ceph RGW is the origin, URLs are signed by botocore's CloudFrontSigner (the
independent implementation) with a key pair made for the session (conftest.EdgeFactory).

Origin requests are counted by the edge's own /metrics (fm_edge_misses_total: one per origin fetch). The tests of
cold misses streamed while filled put a TCP proxy between the edge and RGW (OriginProxy), which holds the origin's
answer mid-body until the test lets it go on or cuts it: what a client has by then was streamed, not cached.

    FM_BUILD_DIR=build /usr/bin/python3 -m pytest tests/integration/test_edge.py -q
"""
import collections
import concurrent.futures
import datetime
import hashlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import uuid

from pathlib import Path

import pytest
import requests
from botocore.signers import CloudFrontSigner
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from helpers_fm import metric as service_metric, metric_sum, wait_for


def metric(edge, name):
    return service_metric(edge.url, name)


def counters(edge):
    text = requests.get(edge.url + "/metrics", timeout=5).text
    return {name: metric_sum(text, f"fm_edge_{name}_total")
            for name in ("hits", "misses", "coalesced", "refused", "purged", "evictions")}


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


def file_of(key):
    """The file id these tests sign URLs of `key` for: one per key (no revocation names it), so that two URLs of one
    key are URLs of one file, as they are when fm-control signs them."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, key))


def sign(signer, edge, key, query="", expires_in=600, file_id=None):
    """A canned-policy URL of `key` as fm-control signs them: for a file (`file=`, file_of(key) unless given) and the
    extra `query`."""
    query = f"file={file_id or file_of(key)}" + (f"&{query}" if query else "")
    url = f"{edge.url}/f/{key}?{query}"
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
    """20 requests for one cold object at once: one origin fetch, every answer whole. Each other request joins the
    fill or comes after it (a hit); both are not required to occur here, as the split depends on timing alone:
    joining is provoked without timing by test_concurrent_cold_requests_all_stream_from_one_origin_fetch (its
    origin holds the body until every request is in), and hits by every test that asks twice."""
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
    # Each other request either joined the fill or came after it and was a hit. How many joined depends on timing
    # alone (the fill of 10 MB from the local RGW takes tens of ms); that requests arriving during a fill do join
    # it is shown without timing by test_concurrent_cold_requests_all_stream_from_one_origin_fetch, whose origin
    # holds the body until every request is in.
    assert (after["coalesced"] - before["coalesced"]) + (after["hits"] - before["hits"]) == 19


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
    key, _ = put_object(stack, s3, 100, content_type="text/plain")  # a type that may be inline (answer.c)
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
    url = signer.generate_presigned_url(f"{edge.url}/f/{key}?file={uuid.uuid4()}", policy=policy)
    r = requests.get(url, timeout=10)
    assert r.status_code == 200 and r.content == body
    policy = signer.build_policy(f"{edge.url}/f/incoming/*", expires, ip_address="10.1.2.3/32")
    r = requests.get(signer.generate_presigned_url(f"{edge.url}/f/{key}?file={uuid.uuid4()}", policy=policy),
                     timeout=10)
    assert r.status_code == 403 and error_code(r) == "ip_not_allowed"
    policy = signer.build_policy(f"{edge.url}/f/variants/*", expires)
    r = requests.get(signer.generate_presigned_url(f"{edge.url}/f/{key}?file={uuid.uuid4()}", policy=policy),
                     timeout=10)
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
    # two of the four 400 KiB objects fit the 1 MiB cap; the new edge's gauges read 0 until they refresh (1 s)
    assert wait_for(lambda: 2 * 400 * 1024 <= metric(edge, "fm_edge_cache_bytes") <= 1 << 20, 10), \
        metric(edge, "fm_edge_cache_bytes")
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


# ---- streaming a cold miss while it is filled ---------------------------------------------------------------------


class OriginProxy:
    """A TCP proxy in front of RGW that an edge uses as its S3 endpoint (FM_S3_ENDPOINT), so a test can hold the
    origin's answer mid-body and then let it go on or cut it. Requests are forwarded as sent (SigV4 signs the Host
    header, which is the proxy's, and RGW checks it as received) with `Connection: close` added, so one connection
    carries one request; `methods` counts them. While armed (`hold`), the answer to a GET stops after `after` bytes
    until `release()`, or `cut()` closes both connections there."""

    def __init__(self, endpoint):
        target = urllib.parse.urlsplit(endpoint)
        self.target = (target.hostname, target.port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.methods = collections.Counter()
        self.lock = threading.Lock()
        self.hold_after = None
        self.gate = threading.Event()
        self.gate.set()
        self.held = threading.Event()  # a GET answer is being held
        self.cutting = False
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self, after):
        self.hold_after, self.cutting = after, False
        self.held.clear()
        self.gate.clear()

    def release(self):
        self.hold_after = None
        self.gate.set()

    def cut(self):
        self.cutting = True
        self.release()

    def count(self, method):
        with self.lock:
            return self.methods[method]

    def _accept(self):
        while True:
            client, _ = self.listener.accept()
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        upstream = None
        try:
            head = b""
            while b"\r\n\r\n" not in head:  # GET and HEAD carry no body
                data = client.recv(65536)
                if not data:
                    return
                head += data
            method = head.split(b" ", 1)[0].decode()
            with self.lock:
                self.methods[method] += 1
            upstream = socket.create_connection(self.target)
            upstream.sendall(head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
            hold_after = self.hold_after if method == "GET" else None
            forwarded = 0
            while True:
                data = upstream.recv(65536)
                if not data:
                    return
                if hold_after is not None and forwarded + len(data) >= hold_after:
                    client.sendall(data[:hold_after - forwarded])
                    data = data[hold_after - forwarded:]
                    self.held.set()
                    self.gate.wait()
                    hold_after = None
                    if self.cutting:
                        return
                client.sendall(data)
                forwarded += len(data)
        except OSError:
            pass
        finally:
            client.close()
            if upstream is not None:
                upstream.close()


@pytest.fixture(scope="module")
def origin_proxy(stack):
    return OriginProxy(stack.env["FM_S3_ENDPOINT"])


@pytest.fixture(scope="module")
def proxied_edge(edges, origin_proxy):
    return edges.start(FM_S3_ENDPOINT=origin_proxy.url)


def cached(edge, key):
    """Whether the edge's disk cache holds the object `key` itself (not a variant), in any file's partition: a data
    file whose sidecar (edge/cache.c, FM_EDGE_CACHE_DIR/<sha256(cache key)>.meta) names the key, or the key then the
    partition separator and "f=" (edge.h FM_EDGE_PARTITION)."""
    names = (f"key={key}\n".encode(), f"key={key}\x1ff=".encode())
    for meta in Path(edge.cache_dir).glob("*.meta"):
        try:
            text = meta.read_bytes()
        except FileNotFoundError:  # evicted or purged meanwhile
            continue
        line = next((ln for ln in text.split(b"\n") if ln.startswith(b"key=")), b"") + b"\n"
        if (line == names[0] or (line.startswith(names[1]) and line.count(b"\x1f") == 1)) and \
                meta.with_suffix(".data").exists():
            return True
    return False


def read_rest(response):
    """The rest of a streamed body and the error that ended it early (None when the body came whole)."""
    data = b""
    try:
        for chunk in response.iter_content(1 << 16):
            data += chunk
    except (requests.RequestException, http.client.HTTPException, OSError) as e:
        return data, e
    return data, None


HOLD_AFTER = 2 << 20  # bytes of the origin's GET answer let through before the proxy holds it
FIRST = 1 << 16  # what a client reads before the fill may go on


def test_cold_miss_streams_before_the_fill_completes(stack, s3, proxied_edge, origin_proxy, signer):
    edge = proxied_edge
    key, body = put_object(stack, s3, 8 * 1000 * 1000, content_type="application/pdf")
    url = sign(signer, edge, key, query="name=report.pdf")
    streamed = metric(edge, "fm_edge_streamed_total")
    origin_proxy.hold(HOLD_AFTER)
    try:
        # The read timeout only bounds the wait: today's edge answers nothing before the whole object is cached.
        with requests.get(url, stream=True, timeout=(5, 60)) as r:
            assert r.status_code == 200
            first = r.raw.read(FIRST)
            assert first == body[:FIRST]
            # Headers and body bytes arrived while the origin's answer cannot complete (the proxy holds it).
            assert origin_proxy.held.wait(60) and not origin_proxy.gate.is_set()
            assert not cached(edge, key)
            assert int(r.headers["Content-Length"]) == len(body)
            assert r.headers["Content-Type"] == "application/pdf"
            assert r.headers["Accept-Ranges"] == "bytes"
            assert r.headers["ETag"].startswith('"')
            assert r.headers["Cache-Control"].startswith("private, max-age=")
            assert r.headers["Content-Disposition"].startswith('attachment; filename="report.pdf"')
            assert "Last-Modified" in r.headers
            assert metric(edge, "fm_edge_streamed_total") == streamed + 1
            # A HEAD joining the fill is answered from the origin's headers too.
            h = requests.head(url, timeout=60)
            assert h.status_code == 200 and int(h.headers["Content-Length"]) == len(body)
            assert h.headers["ETag"] == r.headers["ETag"]
            assert not cached(edge, key)
            origin_proxy.release()
            rest, error = read_rest(r)
            assert error is None
            assert first + rest == body
            streamed_headers = r.headers
    finally:
        origin_proxy.release()
    # Published once complete: a hit now, with the same validators as the streamed answer.
    before = counters(edge)
    r = requests.get(url, timeout=60)
    assert r.status_code == 200 and r.content == body
    assert counters(edge)["hits"] == before["hits"] + 1
    for name in ("ETag", "Last-Modified", "Content-Type", "Content-Length", "Content-Disposition", "Accept-Ranges"):
        assert r.headers[name] == streamed_headers[name], name


def test_concurrent_cold_requests_all_stream_from_one_origin_fetch(stack, s3, proxied_edge, origin_proxy, signer):
    edge = proxied_edge
    key, body = put_object(stack, s3, 6 * 1000 * 1000)
    url = sign(signer, edge, key)
    clients = 10
    gets, before = origin_proxy.count("GET"), counters(edge)
    streamed = metric(edge, "fm_edge_streamed_total")
    have_first = threading.Barrier(clients + 1, timeout=60)
    go_on = threading.Event()

    def fetch(_):
        with requests.get(url, stream=True, timeout=(5, 60)) as r:
            first = r.raw.read(FIRST)
            have_first.wait()  # every client holds the first bytes while the fill is held
            go_on.wait(60)
            rest, error = read_rest(r)
            return r.status_code, error, hashlib.sha256(first + rest).hexdigest()

    origin_proxy.hold(HOLD_AFTER)
    try:
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            futures = [pool.submit(fetch, i) for i in range(clients)]
            have_first.wait()
            assert origin_proxy.held.wait(60) and not cached(edge, key)
            assert metric(edge, "fm_edge_streamed_total") == streamed + clients
            origin_proxy.release()
            go_on.set()
            results = [f.result() for f in futures]
    finally:
        origin_proxy.release()
        go_on.set()
    expected = hashlib.sha256(body).hexdigest()
    assert all(status == 200 and error is None and digest == expected for status, error, digest in results), results
    after = counters(edge)
    assert origin_proxy.count("GET") - gets == 1, "concurrent cold requests made more than one origin GET"
    assert after["misses"] - before["misses"] == 1
    assert after["coalesced"] - before["coalesced"] == clients - 1


def test_origin_dying_mid_body_cuts_every_stream(stack, s3, proxied_edge, origin_proxy, signer):
    edge = proxied_edge
    key, body = put_object(stack, s3, 6 * 1000 * 1000)
    url = sign(signer, edge, key)
    clients = 3
    errors = metric(edge, "fm_edge_origin_errors_total")
    have_first = threading.Barrier(clients + 1, timeout=60)

    def fetch(_):
        with requests.get(url, stream=True, timeout=(5, 60)) as r:
            first = r.raw.read(FIRST)
            have_first.wait()
            rest, error = read_rest(r)
            return r.status_code, int(r.headers["Content-Length"]), first + rest, error

    origin_proxy.hold(HOLD_AFTER)
    try:
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            futures = [pool.submit(fetch, i) for i in range(clients)]
            have_first.wait()
            origin_proxy.cut()  # the origin's connection closes mid-body
            results = [f.result() for f in futures]
    finally:
        origin_proxy.release()
    for status, length, data, error in results:
        assert status == 200 and length == len(body)  # the headers went out before the failure
        # Cut: an error or a short body, never a complete one; what came is the object's beginning.
        assert error is not None or len(data) < len(body), "a failed fill looked like a complete answer"
        assert len(data) < len(body) and data == body[:len(data)]
    assert metric(edge, "fm_edge_origin_errors_total") == errors + 1
    assert metric(edge, "fm_edge_stream_errors_total") >= clients
    # Nothing was published and the temp file is gone; the next request fills again, whole.
    assert not cached(edge, key)
    assert not list(edge.cache_dir.glob("*.tmp"))
    before = counters(edge)
    r = requests.get(url, timeout=60)
    assert r.status_code == 200 and r.content == body
    assert counters(edge)["misses"] == before["misses"] + 1
    assert cached(edge, key)


def test_a_client_leaving_mid_stream_does_not_disturb_the_others(stack, s3, proxied_edge, origin_proxy, signer):
    edge = proxied_edge
    key, body = put_object(stack, s3, 6 * 1000 * 1000)
    url = sign(signer, edge, key)
    origin_proxy.hold(HOLD_AFTER)
    try:
        staying = requests.get(url, stream=True, timeout=(5, 60))
        leaving = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=60)
        leaving.request("GET", url[len(edge.url):])
        assert staying.raw.read(FIRST) == body[:FIRST]
        assert leaving.getresponse().read(FIRST) == body[:FIRST]
        leaving.sock.shutdown(socket.SHUT_RDWR)  # gone mid-stream
        leaving.close()
        # Another client joins after the first one left, then the fill goes on.
        late = requests.get(url, stream=True, timeout=(5, 60))
        origin_proxy.release()
        rest, error = read_rest(staying)
        assert error is None and body[:FIRST] + rest == body
        late_body, error = read_rest(late)
        assert error is None and late_body == body
        staying.close()
        late.close()
    finally:
        origin_proxy.release()
    before = counters(edge)
    assert requests.get(url, timeout=60).content == body
    assert counters(edge)["hits"] == before["hits"] + 1


def test_purge_during_a_streamed_fill_serves_it_but_does_not_keep_it(stack, s3, proxied_edge, origin_proxy, signer,
                                                                     edges):
    edge = proxied_edge
    key, body = put_object(stack, s3, 4 * 1000 * 1000)
    url = sign(signer, edge, key)
    origin_proxy.hold(HOLD_AFTER)
    try:
        with requests.get(url, stream=True, timeout=(5, 60)) as r:
            first = r.raw.read(FIRST)
            purge = requests.post(edge.url + "/_edge/purge", json={"keys": [key]},
                                  headers={"X-FM-Edge-Secret": edges.purge_secret}, timeout=10)
            assert purge.status_code == 200
            origin_proxy.release()
            rest, error = read_rest(r)
            assert error is None and first + rest == body
    finally:
        origin_proxy.release()
    before = counters(edge)
    assert requests.get(url, timeout=60).content == body
    assert counters(edge)["misses"] == before["misses"] + 1, "an object purged while filling was kept"


def test_sigterm_lets_a_stream_in_flight_finish(stack, s3, edges, origin_proxy, signer):
    edge = edges.start(FM_S3_ENDPOINT=origin_proxy.url, FM_GRACEFUL_TIMEOUT_MS="60000")
    key, body = put_object(stack, s3, 6 * 1000 * 1000)
    url = sign(signer, edge, key)
    origin_proxy.hold(HOLD_AFTER)
    try:
        with requests.get(url, stream=True, timeout=(5, 60)) as r:
            first = r.raw.read(FIRST)
            edge.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)  # the edge stops accepting, then waits for the request in flight
            origin_proxy.release()
            rest, error = read_rest(r)
            assert error is None and first + rest == body
    finally:
        origin_proxy.release()
    edge.proc.wait(60)  # it stops by itself once the stream is done (a second SIGTERM would kill it)
    edges.stop(edge)  # exit status 0, no sanitizer report


@pytest.mark.skipif(shutil.which("curl") is None or "HTTP2" not in subprocess.run(
    ["curl", "-V"], capture_output=True, text=True).stdout, reason="needs a curl with HTTP/2")
def test_http2_streams_a_cold_miss_and_resets_it_on_failure(stack, s3, proxied_edge, origin_proxy, signer, tmp_path):
    """The same over HTTP/2 (h2c, curl's client): streamed while held, whole after; a failed fill resets the stream."""
    edge = proxied_edge
    for outcome in ("whole", "cut"):
        key, body = put_object(stack, s3, 6 * 1000 * 1000)
        out = tmp_path / f"{outcome}.bin"
        origin_proxy.hold(HOLD_AFTER)
        try:
            curl = subprocess.Popen(["curl", "--http2-prior-knowledge", "-sS", "-o", str(out), "-w", "%{http_version}",
                                     sign(signer, edge, key)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert origin_proxy.held.wait(60)
            # Body bytes reach the client while the origin's answer is held (the fill cannot complete).
            deadline = time.monotonic() + 60  # a bound on the wait, not a timing assertion
            while not (out.exists() and out.stat().st_size >= FIRST):
                assert curl.poll() is None and time.monotonic() < deadline, curl.communicate()
                time.sleep(0.05)
            assert not cached(edge, key)
            origin_proxy.cut() if outcome == "cut" else origin_proxy.release()
            version, error = curl.communicate(timeout=60)
        finally:
            origin_proxy.release()
        data = out.read_bytes()
        assert version == "2"
        if outcome == "whole":
            assert curl.returncode == 0 and data == body, error
        else:  # curl: (92) HTTP/2 stream 1 was not closed cleanly
            assert curl.returncode != 0 and len(data) < len(body) and data == body[:len(data)]
