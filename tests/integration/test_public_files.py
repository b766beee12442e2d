"""Public files (docs/downloads.md "Public files"): PATCH /v1/files/{id} {"visibility"}, the Redis set fm:public of
"{file_id}/{key}" members fm-edge serves unsigned, the download route's /p/ URL and fm-edge's /p/{key}?file={id}
route, against the real stack.

One dedicated fm-control and one fm-edge share a Redis database (PUBLIC_REDIS_DB), so the edge sees the fm:public
that the control plane keeps. Files are uploaded through the API and made READY as test_download.py does (its
DownloadFm.ready_file, reused here).

    FM_BUILD_DIR=build /usr/bin/python3 -m pytest -q tests/integration/test_public_files.py
"""
import hashlib
import io
import json
import time
import urllib.parse
import uuid

import pytest
import requests
from PIL import Image

from helpers_fm import assert_error, assert_unauthorized, redis_cmd, redis_url
from helpers_uploads import dedicated, random_bytes, sha256_hex
from test_download import KeyPair, DownloadFm, check_signed, resource_of
from test_edge import metric
from test_edge_variants import jpeg_bytes

PUBLIC_REDIS_DB = 5
KEY_ID = "KPUBTEST1"


class PublicFm(DownloadFm):
    """test_download's helpers on this module's Redis database."""

    def redis(self, *args):
        return redis_cmd(self.stack, PUBLIC_REDIS_DB, *args)

    def patch(self, user, file_id, body, **kw):
        return self.call(user, "PATCH", f"/v1/files/{file_id}", json=body, **kw)

    def file_state(self, file_id):
        return self.sql_row(f"SELECT row_to_json(f) FROM (SELECT visibility, version, updated_at FROM files "
                            f"WHERE id = '{file_id}') f")

    def is_public(self, file_id, key):
        return self.redis("SISMEMBER", "fm:public", f"{file_id}/{key}") == 1


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory):
    return KeyPair(KEY_ID, tmp_path_factory.mktemp("cf-keys-public"))


@pytest.fixture(scope="module")
def edge(edges, stack, key_pair):
    return edges.start(FM_EDGE_CF_PUBLIC_KEYS=f"{key_pair.id}={key_pair.public_path}",
                       FM_REDIS_URL=redis_url(stack, PUBLIC_REDIS_DB), FM_EDGE_MAX_AGE_S="600")


@pytest.fixture(scope="module")
def fm(controls, stack, key_pair, edge):
    with dedicated(controls, stack, PublicFm, FM_CF_KEYS=f"{key_pair.id}={key_pair.private_path}",
                   FM_EDGE_PUBLIC_BASE=edge.url,
                   FM_DOWNLOAD_URL_TTL_S=300, FM_RECONCILE_INTERVAL_S=1,
                   FM_REDIS_URL=redis_url(stack, PUBLIC_REDIS_DB)) as f:
        yield f


@pytest.fixture(scope="module")
def alice(fm):
    return fm.user("pub-alice")


@pytest.fixture(scope="module")
def bob(fm):
    return fm.user("pub-bob")


def public_url(edge, key, file_id, name, disposition="inline"):
    return (f"{edge.url}/p/{urllib.parse.quote(key, safe='/')}?file={file_id}&name={urllib.parse.quote(name, safe='')}"
            f"&disposition={disposition}")


PUBLIC_CACHE_CONTROL = "public, max-age=60, must-revalidate"  # FM_EDGE_PUBLIC_MAX_AGE_S


def make_public(fm, user, file_id):
    r = fm.patch(user, file_id, {"visibility": "public"})
    assert r.status_code == 200, r.text
    return r.json()


# ---- PATCH -------------------------------------------------------------------------------------------------------


def test_public_file_is_served_unsigned(fm, alice, edge):
    data = random_bytes(200_000)
    file_id, key, _ = fm.ready_file(alice, data, name="open data.bin")
    before = fm.file_state(file_id)
    body = make_public(fm, alice, file_id)
    assert body["id"] == file_id and body["status"] == "READY" and body["visibility"] == "public"
    assert not {"owner_id", "storage_key"} & set(body), body
    # `variants` is the list of what exists (test_file_metadata.py), never the stored keys
    assert all("key" not in v for v in body["variants"]), body
    after = fm.file_state(file_id)
    assert after["version"] == before["version"] + 1
    assert fm.sql(f"SELECT updated_at > '{before['updated_at']}'::timestamptz FROM files WHERE id = '{file_id}'") == "t"
    assert after["visibility"] == "public"
    assert fm.is_public(file_id, key)
    # GET /v1/files/{id} is unchanged: visibility stays internal there
    got = fm.file(alice, file_id).json()
    assert got["status"] == "READY" and "visibility" not in got

    r = fm.download(alice, file_id)
    assert r.status_code == 200, r.text
    assert r.json() == {"url": public_url(edge, key, file_id, "open data.bin"), "expires_at": None}
    url = r.json()["url"]
    assert "Signature" not in url and "Expires" not in url

    # anyone, without a signature: same bytes, Content-Disposition, short public caching with revalidation (making
    # the file private reaches shared caches within a minute), Range, 304
    got = requests.get(url, timeout=30)
    assert got.status_code == 200, got.text[:300]
    assert hashlib.sha256(got.content).hexdigest() == sha256_hex(data)
    assert got.headers["Cache-Control"] == PUBLIC_CACHE_CONTROL
    # the URL says inline, but application/octet-stream is never shown inline (docs/downloads.md "Active types")
    assert got.headers["Content-Disposition"].startswith("attachment;")
    assert "filename*=UTF-8''open%20data.bin" in got.headers["Content-Disposition"]
    part = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=30)
    assert part.status_code == 206 and part.content == data[10:20]
    assert requests.get(url, headers={"If-None-Match": got.headers["ETag"]}, timeout=30).status_code == 304
    # the name and disposition are not signed: another name is fine
    other = requests.get(public_url(edge, key, file_id, "renamed.bin", "attachment"), timeout=30)
    assert other.status_code == 200 and other.content == data
    assert other.headers["Content-Disposition"].startswith("attachment;")
    # the signed route still wants its signature
    assert requests.get(url.replace("/p/", "/f/", 1), timeout=30).status_code == 403
    # redirect=1 answers the same URL in Location
    redirect = fm.download(alice, file_id, "redirect=1&disposition=attachment")
    assert redirect.status_code == 302 and redirect.headers["Location"] == public_url(edge, key, file_id,
                                                                                      "open data.bin", "attachment")
    # the URL names its file: without it, or with another file's id, the key is not public
    assert_error(requests.get(f"{edge.url}/p/{key}", timeout=30), 404, "not_public")
    assert_error(requests.get(public_url(edge, key, uuid.uuid4(), "x.bin"), timeout=30), 404, "not_public")


def test_variants_of_a_public_file(fm, alice, edge):
    data = jpeg_bytes((640, 480))
    file_id, key, _ = fm.ready_file(alice, data, name="photo.jpg", content_type="image/jpeg")
    sha = sha256_hex(data)
    thumb = jpeg_bytes((64, 48))
    thumb_key = f"variants/{sha}/thumb.jpg"
    fm.s3.put_object(Bucket=fm.bucket, Key=thumb_key, Body=thumb, ContentType="image/jpeg")
    variants = {"thumb": {"jpeg": {"key": thumb_key, "width": 64, "height": 48, "bytes": len(thumb)}}}
    fm.sql(f"UPDATE blobs SET variants = '{json.dumps(variants)}'::jsonb WHERE sha256 = decode('{sha}', 'hex')")
    fm.drop_cached(file_id)
    make_public(fm, alice, file_id)
    assert fm.is_public(file_id, key) and fm.is_public(file_id, thumb_key)

    # the stored variant, through the download route
    r = fm.download(alice, file_id, "variant=thumb&format=jpeg")
    assert r.status_code == 200, r.text
    assert r.json()["url"] == public_url(edge, thumb_key, file_id, "photo-thumb.jpg")
    got = requests.get(r.json()["url"], timeout=30)
    assert got.status_code == 200 and got.content == thumb
    # an on-the-fly variant of the original, unsigned
    resized = requests.get(f"{edge.url}/p/{key}?file={file_id}&w=100&format=png", timeout=60)
    assert resized.status_code == 200, resized.text[:300]
    img = Image.open(io.BytesIO(resized.content))
    assert img.format == "PNG" and img.size == (100, 75)
    assert resized.headers["Cache-Control"] == PUBLIC_CACHE_CONTROL
    # bad variant parameters are refused as on /f/
    assert_error(requests.get(f"{edge.url}/p/{key}?file={file_id}&w=0", timeout=30), 400, "invalid_variant")


def test_patch_refusals(fm, alice, bob):
    file_id, key, _ = fm.ready_file(alice)
    assert_unauthorized(fm.patch(None, file_id, {"visibility": "public"}))
    assert_error(fm.patch(bob, file_id, {"visibility": "public"}), 404, "not_found")
    assert_error(fm.patch(alice, str(uuid.uuid4()), {"visibility": "public"}), 404, "not_found")
    assert_error(fm.patch(alice, "not-a-uuid", {"visibility": "public"}), 404, "not_found")
    assert_error(fm.patch(alice, file_id, {"visibility": "everyone"}), 422, "invalid_field")
    assert_error(fm.patch(alice, file_id, {"visibility": True}), 422, "invalid_field")
    # name and folder_id are fields of PATCH now (test_file_names.py); a field it does not know is still refused,
    # and refused whole: the visibility beside it does not change
    assert_error(fm.patch(alice, file_id, {"owner_id": bob.id}), 422, "invalid_field")
    assert_error(fm.patch(alice, file_id, {"visibility": "public", "size": 1}), 422, "invalid_field")
    assert_error(fm.patch(alice, file_id, {"visibility": "public", "name": "x/y.txt"}), 422, "invalid_name")
    assert_error(fm.patch(alice, file_id, {}), 422, "invalid_field")
    bad_json = fm.call(alice, "PATCH", f"/v1/files/{file_id}", data=b"{nope",
                       headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400, bad_json.text
    # nothing of the above changed anything
    assert fm.file_state(file_id)["visibility"] == "private"
    assert not fm.is_public(file_id, key)
    # a deleted file is gone
    fm.sql(f"UPDATE files SET deleted_at = now() WHERE id = '{file_id}'")
    assert_error(fm.patch(alice, file_id, {"visibility": "public"}), 404, "not_found")


@pytest.mark.parametrize("status", ["UPLOADED", "PROCESSING", "QUARANTINED", "FAILED"])
def test_only_ready_files_become_public(fm, alice, status):
    file_id, key, _ = fm.ready_file(alice)
    fm.sql(f"UPDATE files SET status = '{status}' WHERE id = '{file_id}'")
    fm.drop_cached(file_id)
    assert_error(fm.patch(alice, file_id, {"visibility": "public"}), 409, "not_ready")
    assert fm.file_state(file_id)["visibility"] == "private"
    assert not fm.is_public(file_id, key)
    # making it private is always allowed (a no-op here)
    r = fm.patch(alice, file_id, {"visibility": "private"})
    assert r.status_code == 200 and r.json()["visibility"] == "private", r.text


def test_pending_upload_cannot_become_public(fm, alice):
    pending = fm.start(alice, random_bytes(100))["file_id"]
    assert_error(fm.patch(alice, pending, {"visibility": "public"}), 409, "not_ready")


# ---- back to private -------------------------------------------------------------------------------------------


def test_private_again_is_refused_by_the_edge_without_origin_request(fm, alice, edge, key_pair):
    data = random_bytes(5000)
    file_id, key, _ = fm.ready_file(alice, data, name="was-public.bin")
    make_public(fm, alice, file_id)
    url = fm.download(alice, file_id).json()["url"]
    assert requests.get(url, timeout=30).content == data  # now in the edge's cache

    r = fm.patch(alice, file_id, {"visibility": "private"})
    assert r.status_code == 200 and r.json()["visibility"] == "private", r.text
    assert not fm.is_public(file_id, key)
    misses, hits = metric(edge, "fm_edge_misses_total"), metric(edge, "fm_edge_hits_total")
    assert_error(requests.get(url, timeout=30), 404, "not_public")  # cached, still refused
    assert_error(requests.get(f"{edge.url}/p/{key}?file={file_id}&w=64", timeout=30), 404, "not_public")
    assert metric(edge, "fm_edge_misses_total") == misses and metric(edge, "fm_edge_hits_total") == hits
    # the download URL is signed again, for the usual TTL
    signed = fm.download(alice, file_id)
    assert signed.status_code == 200 and signed.json()["expires_at"] is not None
    check_signed(signed.json()["url"], key_pair, resource_of(edge, key, file_id, "was-public.bin"))
    assert requests.get(signed.json()["url"], timeout=30).content == data


def test_never_public_key_makes_no_origin_request(fm, alice, edge):
    file_id, key, _ = fm.ready_file(alice)
    make_public(fm, alice, file_id)
    assert fm.patch(alice, file_id, {"visibility": "private"}).status_code == 200
    misses = metric(edge, "fm_edge_misses_total")
    for path in (f"/p/{key}?file={file_id}", f"/p/{key}?file={file_id}&w=10", f"/p/blobs/nope?file={file_id}",
                 "/p/a/b/c/d/e/f", f"/p/{key}"):
        assert_error(requests.get(edge.url + path, timeout=30), 404, "not_public")
    assert metric(edge, "fm_edge_misses_total") == misses
    # the path rules of /f/ apply before anything else
    for path in ("/p/a%2Fb", "/p//x", "/p/%2e%2e/x", "/p/a/%2E/b"):
        assert_error(requests.get(edge.url + path, timeout=30), 400, "invalid_path")


def test_files_sharing_a_blob_are_public_each_on_its_own(fm, alice, bob, edge):
    """Two files on one blob (a dedupe, as the worker leaves it): each file's /p/ URL lives while that file is
    public, whatever the other does; making one private stops its URLs only."""
    data = random_bytes(3000)
    first, key, _ = fm.ready_file(alice, data, name="a.bin")
    b, _ = fm.upload(bob, random_bytes(10), name="b.bin")
    second = b["file_id"]
    fm.sql(f"UPDATE files SET status = 'READY', blob_sha256 = decode('{sha256_hex(data)}', 'hex') "
           f"WHERE id = '{second}'")
    fm.drop_cached(second)
    make_public(fm, alice, first)
    make_public(fm, bob, second)
    assert fm.is_public(first, key) and fm.is_public(second, key)
    assert fm.patch(alice, first, {"visibility": "private"}).status_code == 200
    assert not fm.is_public(first, key) and fm.is_public(second, key)
    assert_error(requests.get(public_url(edge, key, first, "a.bin"), timeout=30), 404, "not_public")
    assert requests.get(public_url(edge, key, second, "b.bin"), timeout=30).content == data
    assert "/f/" in fm.download(alice, first).json()["url"]
    assert "/p/" in fm.download(bob, second).json()["url"]
    assert fm.patch(bob, second, {"visibility": "private"}).status_code == 200
    assert not fm.is_public(second, key)
    assert_error(requests.get(public_url(edge, key, second, "b.bin"), timeout=30), 404, "not_public")


# ---- purge, lost set, Redis down -----------------------------------------------------------------------------


def test_purge_of_a_public_key_refills(fm, alice, edge, edges):
    data = random_bytes(4000)
    file_id, key, _ = fm.ready_file(alice, data)
    make_public(fm, alice, file_id)
    url = public_url(edge, key, file_id, "x.bin")
    assert requests.get(url, timeout=30).content == data
    purge = requests.post(edge.url + "/_edge/purge", json={"keys": [key]},
                          headers={"X-FM-Edge-Secret": edges.purge_secret}, timeout=10)
    assert purge.status_code == 200 and purge.json()["purged"] >= 1, purge.text
    misses = metric(edge, "fm_edge_misses_total")
    assert requests.get(url, timeout=30).content == data
    assert metric(edge, "fm_edge_misses_total") == misses + 1


def test_lost_set_is_rebuilt_by_the_reconciler(fm, alice, edge):
    data = random_bytes(1000)
    file_id, key, _ = fm.ready_file(alice, data)
    make_public(fm, alice, file_id)
    private_id, private_key, _ = fm.ready_file(alice)
    fm.redis("DEL", "fm:public", "fm:public:built")  # as Redis that lost its data (the sentinel goes with the set)
    deadline = time.time() + 15  # FM_RECONCILE_INTERVAL_S=1
    while not fm.is_public(file_id, key) and time.time() < deadline:
        time.sleep(0.2)
    assert fm.is_public(file_id, key)
    assert not fm.is_public(private_id, private_key)
    assert requests.get(public_url(edge, key, file_id, "y.bin"), timeout=30).content == data


def test_edge_without_redis_answers_503(edges, key_pair, edge):
    """Without Redis the edge cannot tell what is public or revoked: it answers 503 rather than serve unchecked."""
    down = edges.start(FM_EDGE_CF_PUBLIC_KEYS=f"{key_pair.id}={key_pair.public_path}",
                       FM_REDIS_URL="redis://127.0.0.1:1/0")
    r = requests.get(down.url + f"/p/blobs/anything?file={uuid.uuid4()}", timeout=30)
    assert_error(r, 503, "unavailable")
    resource = f"{down.url}/f/blobs/anything?file={uuid.uuid4()}"
    signed = key_pair.botocore_url(resource, int(time.time()) + 60)
    assert_error(requests.get(signed, timeout=30), 503, "unavailable")
    assert requests.get(down.url + "/healthz", timeout=10).status_code == 200
    edges.stop(down)
