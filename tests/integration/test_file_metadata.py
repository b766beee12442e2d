"""GET /v1/files/{id}'s `metadata` and `variants` (issue 11 item 7; docs/downloads.md "One file", docs/decisions.md
"Metadata in the API") against the real stack: files go through fm-control with presigned PUTs, the real fm-worker
describes them and makes their variants, and the API is read as a client reads it. No mocks.

What a client relies on: the fields the worker extracted (dimensions, pages, camera, capture time, orientation) and
the variants that exist (name, format, size), an allow-list only (no storage key, no field the worker may add later),
and never the GPS position unless the owner asks for it with ?include=gps.

Run: FM_BUILD_DIR=build /usr/bin/python3 -m pytest -q tests/integration/test_file_metadata.py
"""
import io
import json
import secrets

import pytest
from PIL import Image

from helpers_fm import redis_cmd, redis_url, wait_for
from helpers_uploads import EVENTS_SECRET, MIB, Fm, dedicated, sha256_hex

META_DB = 53  # this module's fm-control and fm-worker (job stream, dedupe index, cached rows); 47+ is free
RCACHE_VALUE_MAX = 4096  # control-plane/main.c: the largest value the per-thread Redis cache keeps

LAT, LON = (51, 30, 45.5), (0, 7, 39.0)  # 51.512638…° N, 0.1275° W
LAT_DEG = 51 + 30 / 60 + 45.5 / 3600
LON_DEG = -(0 + 7 / 60 + 39.0 / 3600)


class MetaFm(Fm):
    def redis(self, *args):
        return redis_cmd(self.stack, META_DB, *args)

    def wait_ready(self, user, file_id, timeout=30):
        """Waits until the API shows the file READY (the worker drops the cached row after its commit)."""
        r = wait_for(lambda: (lambda x: x if x.status_code == 200 and x.json().get("status") in
                                          ("READY", "FAILED", "QUARANTINED") else None)(self.file(user, file_id)),
                     timeout, 0.05)
        assert r is not None, self.file(user, file_id).text
        body = r.json()
        assert body["status"] == "READY", body
        return body

    def blob_of(self, file_id):
        return self.sql_row(f"SELECT row_to_json(b) FROM (SELECT b.metadata, b.variants FROM blobs b JOIN files f"
                            f" ON f.blob_sha256 = b.sha256 WHERE f.id = '{file_id}') b")


@pytest.fixture(scope="module")
def fm(controls, stack):
    with dedicated(controls, stack, MetaFm, FM_EVENTS_SECRET=EVENTS_SECRET, FM_RECONCILE_INTERVAL_S=1,
                   FM_MULTIPART_THRESHOLD=1024 * MIB, FM_REDIS_URL=redis_url(stack, META_DB)) as f:
        yield f


@pytest.fixture(scope="module")
def worker(fm, workers, stack):
    w = workers.start(FM_REDIS_URL=redis_url(stack, META_DB), FM_WORKER_THREADS=2)
    yield w
    workers.stop(w)


@pytest.fixture(scope="module")
def alice(fm):
    return fm.user("malice")


@pytest.fixture(scope="module")
def bob(fm):
    return fm.user("mbob")


# --- fixtures' bytes ---------------------------------------------------------------------------------------------------

def photo(make="FMCam", model="FM-1 \"Pro\"", taken="2024:05:06 07:08:09", orientation=6, gps=True,
          size=(400, 300)):
    """A JPEG as a phone writes it: stored 400×300, EXIF orientation 6 (shown turned: 300×400), camera, capture
    time and a GPS position."""
    img = Image.new("RGB", size, (30, 120, 200))
    for x in range(0, size[0], 13):
        img.putpixel((x, x % size[1]), (x % 256, 7, secrets.randbelow(256)))
    exif = Image.Exif()
    exif[0x010F] = make
    exif[0x0110] = model
    exif[0x0112] = orientation
    exif[0x0131] = "editor 1.0"  # Software: no field the API lists
    exif[0x8769] = {0x9003: taken}  # the Exif IFD: DateTimeOriginal
    if gps:
        exif[0x8825] = {1: "N", 2: tuple(float(x) for x in LAT), 3: "W", 4: tuple(float(x) for x in LON)}
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


def png(size=(640, 480)):
    img = Image.new("RGB", size, (200, 40, 90))
    for x in range(0, size[0], 17):
        img.putpixel((x, x % size[1]), (x % 256, 3, secrets.randbelow(256)))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def pdf(pages=3):
    imgs = [Image.new("RGB", (612, 792), (255, 255, 255 - 40 * i)) for i in range(pages)]
    for i, img in enumerate(imgs):
        img.putpixel((10 + i, 10), (secrets.randbelow(256), 0, 0))
    out = io.BytesIO()
    imgs[0].save(out, "PDF", save_all=True, append_images=imgs[1:], resolution=72.0)
    return out.getvalue()


def processed(fm, user, worker, data, content_type, name):
    a, _ = fm.upload(user, data, content_type=content_type, name=name)
    return a["file_id"], fm.wait_ready(user, a["file_id"])


def assert_variants_without_keys(fm, file_id, body):
    """`variants` lists exactly what the worker stored, by name and format with its size, and no storage key."""
    stored = fm.blob_of(file_id)["variants"]
    expected = sorted((name, fmt, v["width"], v["height"], v["bytes"])
                      for name, by_fmt in stored.items() for fmt, v in by_fmt.items())
    assert expected, stored
    shown = body["variants"]
    assert isinstance(shown, list), shown
    for v in shown:
        assert set(v) == {"name", "format", "width", "height", "size"}, v
    assert sorted((v["name"], v["format"], v["width"], v["height"], v["size"]) for v in shown) == expected
    text = json.dumps(body)
    assert "variants/" not in text and "blobs/" not in text and '"key"' not in text, text


# --- the tests ---------------------------------------------------------------------------------------------------------

def test_photo_shows_camera_capture_time_and_orientation_but_no_gps_by_default(fm, alice, worker):
    file_id, body = processed(fm, alice, worker, photo(), "image/jpeg", "holiday.jpg")
    m = body["metadata"]
    assert m == {"detected_type": "image/jpeg", "width": 300, "height": 400, "orientation": 6, "page_count": 1,
                 "camera": {"make": "FMCam", "model": "FM-1 \"Pro\""}, "taken_at": "2024-05-06T07:08:09"}, m
    assert fm.blob_of(file_id)["metadata"].get("gps"), "the worker extracted no position: the test proves nothing"
    assert "gps" not in json.dumps(body) and "51.51" not in json.dumps(body), body
    assert_variants_without_keys(fm, file_id, body)
    assert {(v["name"], v["format"]) for v in body["variants"]} == {
        ("thumb", "jpeg"), ("thumb", "webp"), ("preview", "jpeg"), ("preview", "webp")}
    # the cached copy of the row (Redis) never holds the position either, and the cached answer is the same
    cached = fm.redis("GET", f"fm:file:{{{file_id}}}")
    assert cached and "lat" not in cached and "51.51" not in cached, cached
    assert fm.file(alice, file_id).json() == body
    # PATCH answers the same shape
    r = fm.call(alice, "PATCH", f"/v1/files/{file_id}", json={"visibility": "private"})
    assert r.status_code == 200, r.text
    assert r.json()["metadata"] == m and r.json()["variants"] == body["variants"], r.json()


def test_owner_opts_in_to_gps_and_no_one_else_sees_the_file(fm, alice, bob, worker):
    file_id, body = processed(fm, alice, worker, photo(model="GPS-2"), "image/jpeg", "where.jpg")
    r = fm.call(alice, "GET", f"/v1/files/{file_id}?include=gps")
    assert r.status_code == 200, r.text
    got = r.json()
    gps = got["metadata"].pop("gps")
    assert abs(gps["lat"] - LAT_DEG) < 1e-6 and abs(gps["lon"] - LON_DEG) < 1e-6, gps
    assert got == body  # the rest is the default answer
    # asking twice (the row is cached now) still shows it; without the opt-in it is gone again
    assert fm.call(alice, "GET", f"/v1/files/{file_id}?include=gps").json()["metadata"]["gps"] == gps
    assert "gps" not in fm.file(alice, file_id).json()["metadata"]
    # someone else's file is the same 404 as a missing one, opt-in or not
    missing = fm.call(bob, "GET", "/v1/files/00000000-0000-4000-8000-000000000000").json()["error"]
    for path in (f"/v1/files/{file_id}", f"/v1/files/{file_id}?include=gps"):
        r = fm.call(bob, "GET", path)
        assert r.status_code == 404 and "51.51" not in r.text, r.text
        assert r.json()["error"]["code"] == missing["code"] == "not_found"
    # an include the API does not know is refused, not silently ignored
    r = fm.call(alice, "GET", f"/v1/files/{file_id}?include=location")
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_include", r.text


def test_png_shows_dimensions_and_no_exif(fm, alice, worker):
    file_id, body = processed(fm, alice, worker, png((640, 480)), "image/png", "plain.png")
    assert body["metadata"] == {"detected_type": "image/png", "width": 640, "height": 480, "orientation": 1,
                                "page_count": 1}, body["metadata"]
    assert_variants_without_keys(fm, file_id, body)
    # nothing to opt in to: no position, same answer
    got = fm.call(alice, "GET", f"/v1/files/{file_id}?include=gps").json()
    assert got == body, got


def test_pdf_shows_page_count(fm, alice, worker):
    file_id, body = processed(fm, alice, worker, pdf(3), "application/pdf", "report.pdf")
    assert body["metadata"] == {"detected_type": "application/pdf", "page_count": 3}, body["metadata"]
    assert_variants_without_keys(fm, file_id, body)
    assert {v["name"] for v in body["variants"]} == {"thumb", "preview"}


def test_text_file_shows_detected_type_only(fm, alice, worker):
    data = b"plain words and nothing to render\n" * 20 + secrets.token_hex(8).encode()
    _, body = processed(fm, alice, worker, data, "text/plain", "notes.txt")
    assert body["metadata"] == {"detected_type": "text/plain"}, body["metadata"]
    assert body["variants"] == [], body["variants"]


def test_file_not_processed_yet_has_empty_metadata_and_variants(fm, alice):
    data = png((64, 64))
    a = fm.start(alice, data, content_type="image/png", name="later.png")  # never PUT: PENDING_UPLOAD
    for path in (f"/v1/files/{a['file_id']}", f"/v1/files/{a['file_id']}?include=gps"):
        r = fm.call(alice, "GET", path)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "PENDING_UPLOAD", body
        assert body["metadata"] == {} and body["variants"] == [], body


def test_worker_fields_not_on_the_allow_list_never_reach_the_api(fm, alice, worker):
    """The worker's jsonb is never passed through: a field it adds later (here written straight into the blob's
    row), or a variant entry's key, stays inside until the API names it."""
    file_id, _ = processed(fm, alice, worker, png((300, 200)), "image/png", "future.png")
    sha = fm.sql(f"SELECT encode(blob_sha256, 'hex') FROM files WHERE id = '{file_id}'")
    fm.sql(f"UPDATE blobs SET metadata = metadata || '{{\"serial\": \"SN-SECRET-42\", \"exif\": {{\"owner\": "
           f"\"Jane Q\"}}}}'::jsonb, variants = jsonb_set(variants, '{{thumb,jpeg,source_path}}', "
           f"'\"/home/secret\"') WHERE sha256 = decode('{sha}', 'hex')")
    fm.redis("DEL", f"fm:file:{{{file_id}}}")
    r = fm.call(alice, "GET", f"/v1/files/{file_id}?include=gps")
    assert r.status_code == 200, r.text
    for leaked in ("SN-SECRET-42", "serial", "Jane Q", "/home/secret", "source_path"):
        assert leaked not in r.text, r.text
    assert r.json()["metadata"] == {"detected_type": "image/png", "width": 300, "height": 200, "orientation": 1,
                                    "page_count": 1}


def test_exif_text_is_bounded_and_the_row_fits_the_thread_cache(fm, alice, worker):
    """Camera make/model are cut to 64 characters without control characters (docs/decisions.md), so the file row,
    with the longest name and its variants, stays within what the per-thread Redis cache keeps."""
    make = "M\x01a\"k\\e" + "x" * 240  # the worker keeps 255 bytes
    name = "\"q" * 125 + ".jpg"  # 254 bytes, each quote escaped in JSON
    file_id, body = processed(fm, alice, worker, photo(make=make, model="y" * 250, gps=True), "image/jpeg", name)
    camera = body["metadata"]["camera"]
    assert camera["make"] == ("Ma\"k\\e" + "x" * 240)[:64] and camera["model"] == "y" * 64, camera
    cached = fm.redis("GET", f"fm:file:{{{file_id}}}")
    assert cached is not None and len(cached.encode()) <= RCACHE_VALUE_MAX // 2, len(cached.encode())
    # the same answer from PostgreSQL and from the cache
    assert fm.file(alice, file_id).json() == body
