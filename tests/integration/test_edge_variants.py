"""fm-edge on-the-fly image variants and access events against the real stack (docs/downloads.md "Image variants",
"Access events"). The originals live in RGW; URLs are signed by botocore's CloudFrontSigner (test_edge.py helpers);
outputs are decoded by PIL, an implementation independent of libvips.

    FM_BUILD_DIR=build /usr/bin/python3 -m pytest tests/integration/test_edge_variants.py -q
"""
import concurrent.futures
import io
import subprocess
import time
import uuid

import pytest
import requests
from PIL import Image

from helpers_fm import redis_cmd, redis_url
from test_edge import counters, error_code, metric, put_object, sign, signer  # noqa: F401 (fixtures)
from test_worker_cleanup import png_bomb

EVENTS_DB = 14  # the events edge's own Redis database, flushed by its test


@pytest.fixture(scope="module")
def s3(stack):
    client = stack.s3_client()
    bucket = stack.env["FM_S3_BUCKET"]
    try:
        client.head_bucket(Bucket=bucket)
    except Exception:
        client.create_bucket(Bucket=bucket)
    return client


@pytest.fixture(scope="module")
def edge(edges):
    return edges.start()


def jpeg_bytes(size, exif=False):
    """A photo-like JPEG (a gradient, so it is not trivially compressible), optionally with an EXIF block."""
    width, height = size
    img = Image.linear_gradient("L").resize(size).convert("RGB")
    out = io.BytesIO()
    kw = {}
    if exif:
        e = Image.Exif()
        e[0x010F] = "FMCameraMaker"  # Make
        e[0x0131] = "secret-serial-1234"  # Software
        kw["exif"] = e.tobytes()
    img.save(out, "JPEG", quality=85, **kw)
    return out.getvalue()


def put_bytes(stack, s3, body, content_type):
    key = f"incoming/{uuid.uuid4()}"
    s3.put_object(Bucket=stack.env["FM_S3_BUCKET"], Key=key, Body=body, ContentType=content_type)
    return key


@pytest.fixture(scope="module")
def photo(stack, s3):
    """A 4000×3000 JPEG (12 MP) with EXIF in the bucket."""
    return put_bytes(stack, s3, jpeg_bytes((4000, 3000), exif=True), "image/jpeg")


def decode(resp):
    img = Image.open(io.BytesIO(resp.content))
    img.load()
    return img


def vcounters(edge):
    text = requests.get(edge.url + "/metrics", timeout=5).text
    out = counters(edge)
    for name in ("variant_hits", "variant_renders", "variant_coalesced", "variant_refused", "variant_errors"):
        out[name] = metric(edge, f"fm_edge_{name}_total") if f"fm_edge_{name}_total" in text else 0.0
    return out


def test_width_and_webp(edge, signer, photo):
    r = requests.get(sign(signer, edge, photo, "w=256&format=webp"), timeout=60)
    assert r.status_code == 200, r.text[:300]
    assert r.headers["Content-Type"] == "image/webp"
    assert "Vary" not in r.headers  # an explicit format does not depend on Accept
    img = decode(r)
    assert img.format == "WEBP" and img.size == (256, 192)
    assert b"FMCameraMaker" not in r.content and b"secret-serial" not in r.content, "EXIF reached the variant"
    # libvips 8.14's webpsave writes a minimal EXIF of its own (resolution, no source field): nothing of the source.
    exif = img.getexif()
    assert 0x010F not in exif and 0x0131 not in exif, dict(exif)


def test_cover_crops_to_the_box(edge, signer, photo):
    r = requests.get(sign(signer, edge, photo, "w=300&h=300&fit=cover&format=jpeg&q=70"), timeout=60)
    assert r.status_code == 200, r.text[:300]
    img = decode(r)
    assert img.format == "JPEG" and img.size == (300, 300)
    assert b"FMCameraMaker" not in r.content


def test_contain_pads_and_inside_never_enlarges(edge, signer, photo):
    r = requests.get(sign(signer, edge, photo, "w=300&h=300&fit=contain&format=png"), timeout=60)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png"
    assert decode(r).size == (300, 300)
    r = requests.get(sign(signer, edge, photo, "w=300&h=300&format=png"), timeout=60)
    assert decode(r).size == (300, 225)
    r = requests.get(sign(signer, edge, photo, "w=4096&format=jpeg"), timeout=60)  # larger than the source
    assert decode(r).size == (4000, 3000)


def test_accept_negotiation(edge, signer, photo):
    url = sign(signer, edge, photo, "w=200")
    r = requests.get(url, headers={"Accept": "image/avif,image/webp,image/apng,*/*;q=0.8"}, timeout=60)
    assert r.status_code == 200, r.text[:300]
    assert r.headers["Content-Type"] == "image/webp" and decode(r).format == "WEBP"
    assert r.headers["Vary"] == "Accept"
    r = requests.get(url, headers={"Accept": "image/png,*/*"}, timeout=60)
    assert r.headers["Content-Type"] == "image/jpeg" and decode(r).format == "JPEG"
    assert r.headers["Vary"] == "Accept"
    r = requests.get(url, headers={"Accept": "image/webp;q=0, */*"}, timeout=60)
    assert r.headers["Content-Type"] == "image/jpeg"
    r = requests.get(sign(signer, edge, photo, "w=200&format=auto"), headers={"Accept": "image/webp"}, timeout=60)
    assert r.headers["Content-Type"] == "image/webp" and r.headers["Vary"] == "Accept"
    assert decode(r).size == (200, 150)


def test_second_request_is_a_hit(stack, s3, edge, signer):
    key = put_bytes(stack, s3, jpeg_bytes((1200, 900)), "image/jpeg")
    url = sign(signer, edge, key, "w=120&h=90&format=webp")
    before = vcounters(edge)
    first = requests.get(url, timeout=60)
    assert first.status_code == 200 and decode(first).size == (120, 90)
    mid = vcounters(edge)
    assert mid["variant_renders"] == before["variant_renders"] + 1
    assert mid["misses"] == before["misses"] + 1  # the original was filled once
    second = requests.get(url, timeout=60)
    assert second.status_code == 200 and second.content == first.content
    after = vcounters(edge)
    assert after["variant_hits"] == mid["variant_hits"] + 1
    assert after["variant_renders"] == mid["variant_renders"] and after["misses"] == mid["misses"]
    assert second.headers["ETag"] == first.headers["ETag"]
    r = requests.get(url, headers={"If-None-Match": first.headers["ETag"]}, timeout=10)
    assert r.status_code == 304
    # Another size renders from the cached original: no origin fetch.
    r = requests.get(sign(signer, edge, key, "w=60&format=jpeg"), timeout=60)
    assert r.status_code == 200 and decode(r).size == (60, 45)
    assert vcounters(edge)["misses"] == after["misses"]


def test_concurrent_requests_make_one_render(stack, s3, edge, signer):
    """10 requests for one variant at once: one render, one origin miss, the same bytes to all. Each other request
    joins the render or comes after it (a variant hit): their sum is asserted, not the split, which depends on
    timing alone and has no hold to steer it (hits of a rendered variant are tested alone by
    test_second_request_is_a_hit)."""
    key = put_bytes(stack, s3, jpeg_bytes((2000, 1500)), "image/jpeg")
    url = sign(signer, edge, key, "w=500&format=webp")
    before = vcounters(edge)
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda _: requests.get(url, timeout=60), range(10)))
    assert all(r.status_code == 200 for r in results)
    assert len({r.content for r in results}) == 1
    after = vcounters(edge)
    assert after["variant_renders"] - before["variant_renders"] == 1
    assert after["misses"] - before["misses"] == 1
    joined, hits = (after[n] - before[n] for n in ("variant_coalesced", "variant_hits"))
    assert joined + hits == 9, (before, after)


@pytest.mark.parametrize("query", ["w=0", "w=99999", "q=101", "fit=stretch", "format=bmp", "w=-5", "w=12abc",
                                   "h=", "w=100&w=200", "w=0100", "q=0"])
def test_out_of_bounds_is_400_before_the_origin(stack, s3, edge, signer, query):
    key = put_bytes(stack, s3, jpeg_bytes((64, 48)), "image/jpeg")
    before = vcounters(edge)
    r = requests.get(sign(signer, edge, key, query), timeout=10)
    assert r.status_code == 400, r.text
    assert error_code(r) == "invalid_variant" and r.json()["error"]["message"]
    after = vcounters(edge)
    assert after["misses"] == before["misses"] and after["variant_renders"] == before["variant_renders"]
    assert after["variant_refused"] == before["variant_refused"] + 1


def test_changed_parameter_breaks_the_signature(stack, s3, edge, signer, photo):
    good = sign(signer, edge, photo, "w=256&format=webp")
    before = vcounters(edge)
    for tampered in (good.replace("w=256", "w=300"), good.replace("format=webp", "format=png"),
                     good.replace("w=256&", "w=256&h=10&")):
        r = requests.get(tampered, timeout=10)
        assert r.status_code == 403, (tampered, r.text)
    # Parameters added to a signed plain URL, too.
    r = requests.get(sign(signer, edge, photo) + "&w=10", timeout=10)
    assert r.status_code == 403
    after = vcounters(edge)
    assert after["misses"] == before["misses"] and after["variant_renders"] == before["variant_renders"]


def libvips_encodes_avif(folder):
    """Whether this machine's libvips has an AV1 encoder, asked of libvips itself (its command-line tool)."""
    out = folder / "probe.avif"
    done = subprocess.run(["vips", "black", str(out), "8", "8"], capture_output=True, timeout=60)
    return done.returncode == 0 and out.read_bytes()[4:12] == b"ftypavif"


def test_avif_is_rendered_or_refused(edge, signer, photo, tmp_path):
    r = requests.get(sign(signer, edge, photo, "w=64&format=avif"), timeout=120)
    if libvips_encodes_avif(tmp_path):
        assert r.status_code == 200 and r.headers["Content-Type"] == "image/avif", r.text[:300]
        assert r.content[4:12] == b"ftypavif"
    else:  # no AV1 encoder in this libvips (docs/downloads.md): refused, saying why
        assert r.status_code == 400 and "avif" in r.json()["error"]["message"], r.text[:300]


def test_not_an_image_is_415(stack, s3, edge, signer):
    key, _ = put_object(stack, s3, 5000, content_type="application/pdf")
    r = requests.get(sign(signer, edge, key, "w=100"), timeout=30)
    assert r.status_code == 415, r.text
    assert error_code(r) == "not_an_image"
    # The original itself is still served.
    assert requests.get(sign(signer, edge, key), timeout=30).status_code == 200


def test_decompression_bomb_is_refused(stack, s3, edge, signer):
    key = put_bytes(stack, s3, png_bomb(50000, 50000), "image/png")
    t = time.monotonic()
    r = requests.get(sign(signer, edge, key, "w=100&format=webp"), timeout=60)
    assert r.status_code == 422, r.text
    assert error_code(r) == "image_too_large" and "50000" in r.json()["error"]["message"]
    assert time.monotonic() - t < 20
    assert requests.get(edge.url + "/healthz", timeout=5).status_code == 200
    # Still serving renders.
    small = put_bytes(stack, s3, jpeg_bytes((80, 60)), "image/jpeg")
    assert requests.get(sign(signer, edge, small, "w=40"), timeout=30).status_code == 200


def test_purge_drops_the_variants(stack, s3, edge, signer, edges):
    key = put_bytes(stack, s3, jpeg_bytes((800, 600)), "image/jpeg")
    urls = [sign(signer, edge, key, q) for q in ("w=100&format=webp", "w=50&format=jpeg")]
    for u in urls:
        assert requests.get(u, timeout=60).status_code == 200
    r = requests.post(edge.url + "/_edge/purge", json={"keys": [key]},
                      headers={"X-FM-Edge-Secret": edges.purge_secret}, timeout=10)
    assert r.status_code == 200 and r.json() == {"purged": 3}  # the original and its two variants
    before = vcounters(edge)
    for u in urls:
        assert requests.get(u, timeout=60).status_code == 200
    after = vcounters(edge)
    assert after["variant_renders"] == before["variant_renders"] + 2
    assert after["misses"] == before["misses"] + 1


# ---- access events ----------------------------------------------------------------------------------------------


def test_access_events_reach_the_stream(stack, s3, edges, signer):
    redis_cmd(stack, EVENTS_DB, "FLUSHDB")
    edge = edges.start(FM_REDIS_URL=redis_url(stack, EVENTS_DB))
    try:
        key, body = put_object(stack, s3, 3000)
        url = sign(signer, edge, key)
        for _ in range(3):
            r = requests.get(url, timeout=10)
            assert r.status_code == 200 and r.content == body
        deadline = time.monotonic() + 5
        entries = []
        while time.monotonic() < deadline:
            entries = redis_cmd(stack, EVENTS_DB, "XRANGE", "downloads", "-", "+")
            if len(entries) >= 3:
                break
            time.sleep(0.2)
        assert len(entries) == 3, entries
        events = []
        for _, fields in entries:
            fields = [f.decode() if isinstance(f, bytes) else f for f in fields]
            events.append(dict(zip(fields[::2], fields[1::2])))
        assert all(e["key"] == key and e["bytes"] == "3000" and e["status"] == "200" for e in events), events
        assert all(e["ip"] == "127.0.0.1" and e["variant"] == "" for e in events)
        assert sorted(e["cache"] for e in events) == ["hit", "hit", "miss"]
        assert all(abs(int(e["t"]) / 1000 - time.time()) < 60 for e in events)
    finally:
        edges.stop(edge)
