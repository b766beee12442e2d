"""GET /v1/files/{id}/download (DESIGN.md §4 "Download", docs/downloads.md "Download URLs") against the real stack.

One dedicated fm-control (its own Redis database, DOWNLOAD_REDIS_DB) signing with two RSA-2048 key pairs made here
with `cryptography` (FM_CF_KEYS: the first signs, the second is the one being rotated out) for a running fm-edge
that trusts both. Files become READY the way the worker leaves them: the uploaded object copied to blobs/{sha256}, a
blob row on that key and files.status (SQL, as helpers_uploads.Fm.mark_verified does). botocore's
CloudFrontSigner is the independent reference for every URL.

    FM_BUILD_DIR=build /usr/bin/python3 -m pytest -q tests/integration/test_download.py
"""
import base64
import datetime
import hashlib
import json
import subprocess
import time
import urllib.parse
import uuid

import pytest
import requests
from botocore.signers import CloudFrontSigner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from conftest import BUILD_DIR
from helpers_fm import assert_error, assert_unauthorized, redis_cmd, redis_url, wait_for
from helpers_uploads import Fm, dedicated, random_bytes, sha256_hex
DOWNLOAD_REDIS_DB = 8
TTL_S = 300
KEY_ID, OLD_KEY_ID = "KDLTESTNEW1", "KDLTESTOLD1"


class KeyPair:
    def __init__(self, key_id, folder):
        self.id = key_id
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_path = folder / f"{key_id}.pem"
        self.private_path.write_bytes(self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        self.private_path.chmod(0o600)
        self.public_path = folder / f"{key_id}.pub.pem"
        self.public_path.write_bytes(self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def botocore_url(self, resource, expires):
        """What botocore's CloudFrontSigner makes of the same resource and expiry (canned policy, RSA-SHA1)."""
        signer = CloudFrontSigner(self.id, lambda m: self.private.sign(m, padding.PKCS1v15(), hashes.SHA1()))
        return signer.generate_presigned_url(
            resource, date_less_than=datetime.datetime.fromtimestamp(expires, tz=datetime.timezone.utc))


class DownloadFm(Fm):
    """helpers_uploads.Fm on the dedicated instance's Redis database."""

    def redis(self, *args):
        return redis_cmd(self.stack, DOWNLOAD_REDIS_DB, *args)

    def drop_cached(self, file_id):
        self.redis("DEL", f"fm:file:{{{file_id}}}")

    def ready_file(self, user, data=None, name=None, content_type="application/octet-stream"):
        """Uploads `data` through the API, then makes the file READY as the worker would (its bytes copied to
        blobs/{sha256}, the blob's key). Returns (file_id, object key, data)."""
        data = data if data is not None else random_bytes(1500)
        a, _ = self.upload(user, data, content_type=content_type, name=name)
        self.mark_verified(a["file_id"], data, content_type)
        return a["file_id"], f"blobs/{sha256_hex(data)}", data

    def download(self, user, file_id, query="", **kw):
        return self.call(user, "GET", f"/v1/files/{file_id}/download" + (f"?{query}" if query else ""),
                         allow_redirects=False, **kw)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cf-keys")
    return KeyPair(KEY_ID, folder), KeyPair(OLD_KEY_ID, folder)


@pytest.fixture(scope="module")
def edge(edges, keys):
    new, old = keys
    return edges.start(FM_EDGE_CF_PUBLIC_KEYS=f"{new.id}={new.public_path},{old.id}={old.public_path}")


@pytest.fixture(scope="module")
def fm(controls, stack, keys, edge):
    new, old = keys
    with dedicated(controls, stack, DownloadFm,
                   FM_CF_KEYS=f"{new.id}={new.private_path}, {old.id}={old.private_path}",
                   FM_EDGE_PUBLIC_BASE=edge.url + "/", FM_DOWNLOAD_URL_TTL_S=TTL_S,
                   FM_REDIS_URL=redis_url(stack, DOWNLOAD_REDIS_DB)) as f:
        yield f


@pytest.fixture(scope="module")
def alice(fm):
    return fm.user("dl-alice")


@pytest.fixture(scope="module")
def bob(fm):
    return fm.user("dl-bob")


def cf_b64decode(text):
    return base64.b64decode(text.replace("-", "+").replace("_", "=").replace("~", "/"), validate=True)


def split_signed(url):
    """(resource, {Expires, Signature, Key-Pair-Id}) of a canned-policy URL (the CloudFront parameters are last)."""
    resource, _, tail = url.partition("&Expires=")
    params = dict(urllib.parse.parse_qsl("Expires=" + tail, keep_blank_values=True))
    assert set(params) == {"Expires", "Signature", "Key-Pair-Id"}, url
    return resource, params


def check_signed(url, key, expected_resource):
    """The URL is the resource signed with `key`: byte for byte botocore's URL, and the signature verifies with the
    public key over the canned policy. Returns Expires."""
    resource, params = split_signed(url)
    assert resource == expected_resource
    assert params["Key-Pair-Id"] == key.id
    expires = int(params["Expires"])
    assert url == key.botocore_url(resource, expires)
    statement = {"Resource": resource, "Condition": {"DateLessThan": {"AWS:EpochTime": expires}}}
    policy = json.dumps({"Statement": [statement]}, separators=(",", ":")).encode()
    key.private.public_key().verify(cf_b64decode(params["Signature"]), policy, padding.PKCS1v15(), hashes.SHA1())
    return expires


def iso_to_epoch(text):
    return int(datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc).timestamp())


def resource_of(edge, key, file_id, name, disposition="inline"):
    return (f"{edge.url}/f/{urllib.parse.quote(key, safe='/')}?file={file_id}&name={urllib.parse.quote(name, safe='')}"
            f"&disposition={disposition}")


# ---- the signed URL --------------------------------------------------------------------------------------------


def test_url_is_botocore_signed_for_the_edge(fm, alice, keys, edge):
    name = 'résumé "final" (1) & co.pdf'
    file_id, key, _ = fm.ready_file(alice, name=name)
    before = int(time.time())
    r = fm.download(alice, file_id)
    after = int(time.time())
    assert r.status_code == 200, r.text
    assert r.headers.get("Cache-Control") == "private, no-store"
    body = r.json()
    assert set(body) == {"url", "expires_at"}
    expires = check_signed(body["url"], keys[0], resource_of(edge, key, file_id, name))
    assert iso_to_epoch(body["expires_at"]) == expires
    # TTL FM_DOWNLOAD_URL_TTL_S, rounded down to a tenth of it (never longer)
    assert before + TTL_S - TTL_S // 10 < expires <= after + TTL_S


def test_attachment_and_redirect(fm, alice, keys, edge):
    file_id, key, _ = fm.ready_file(alice, name="report.txt")
    r = fm.download(alice, file_id, "disposition=attachment&redirect=1")
    assert r.status_code == 302, r.text
    url = r.headers["Location"]
    assert r.json()["url"] == url
    check_signed(url, keys[0], resource_of(edge, key, file_id, "report.txt", "attachment"))
    plain = fm.download(alice, file_id, "disposition=attachment&redirect=0")
    assert plain.status_code == 200 and "Location" not in plain.headers
    assert split_signed(plain.json()["url"])[0] == split_signed(url)[0]


def test_public_file_gets_an_unsigned_url(fm, alice, edge):
    """A public file's URL is fm-edge's unsigned /p/ route (test_public_files.py serves it through the edge)."""
    file_id, key, _ = fm.ready_file(alice, name="public.bin")
    fm.sql(f"UPDATE files SET visibility = 'public' WHERE id = '{file_id}'")
    fm.drop_cached(file_id)
    r = fm.download(alice, file_id)
    assert r.status_code == 200, r.text
    assert r.json() == {"url": resource_of(edge, key, file_id, "public.bin").replace("/f/", "/p/", 1), "expires_at": None}


def test_get_file_hides_the_internal_fields(fm, alice):
    file_id, _, _ = fm.ready_file(alice)
    fm.download(alice, file_id)  # caches the row with its download fields
    body = fm.file(alice, file_id).json()
    assert body["status"] == "READY"
    assert not {"owner_id", "visibility", "storage_key"} & set(body), body
    # `variants` is the list of what exists (test_file_metadata.py), never the stored keys
    assert all("key" not in v for v in body["variants"]), body


# ---- who and when ------------------------------------------------------------------------------------------------


def test_refusals(fm, alice, bob):
    file_id, _, _ = fm.ready_file(alice)
    assert_unauthorized(fm.download(None, file_id))
    assert_error(fm.download(bob, file_id), 404, "not_found")
    assert_error(fm.download(alice, str(uuid.uuid4())), 404, "not_found")
    assert_error(fm.download(alice, "not-a-uuid"), 404, "not_found")
    assert_error(fm.download(alice, file_id, "variant=huge"), 422, "invalid_variant")
    assert_error(fm.download(alice, file_id, "variant=thumb&format=gif"), 422, "invalid_format")
    assert_error(fm.download(alice, file_id, "format=webp"), 422, "invalid_format")
    assert_error(fm.download(alice, file_id, "disposition=evil"), 422, "invalid_disposition")
    assert_error(fm.download(alice, file_id, "redirect=yes"), 422, "invalid_redirect")
    # not an image: no variants
    assert_error(fm.download(alice, file_id, "variant=thumb"), 404, "no_such_variant")


@pytest.mark.parametrize("status, code, http", [
    ("UPLOADED", "not_ready", 409), ("PROCESSING", "not_ready", 409), ("QUARANTINED", "quarantined", 403),
    ("FAILED", "failed", 409)])
def test_only_ready_files_leave(fm, alice, status, code, http):
    file_id, _, _ = fm.ready_file(alice)
    fm.sql(f"UPDATE files SET status = '{status}' WHERE id = '{file_id}'")
    fm.drop_cached(file_id)
    assert_error(fm.download(alice, file_id), http, code)


def test_pending_and_deleted_files(fm, alice):
    data = random_bytes(100)
    pending = fm.start(alice, data)["file_id"]
    assert_error(fm.download(alice, pending), 409, "not_ready")
    file_id, _, _ = fm.ready_file(alice)
    fm.sql(f"UPDATE files SET deleted_at = now() WHERE id = '{file_id}'")
    fm.drop_cached(file_id)
    assert_error(fm.download(alice, file_id), 404, "not_found")


def test_variants(fm, alice, keys, edge):
    file_id, _, data = fm.ready_file(alice, name="holiday.photo.jpg", content_type="image/jpeg")
    sha = sha256_hex(data)
    variants = {v: {f: {"key": f"variants/{sha}/{v}.{'jpg' if f == 'jpeg' else f}", "width": 10, "height": 8,
                        "bytes": 99} for f in ("jpeg", "webp")} for v in ("thumb", "preview")}
    fm.sql(f"UPDATE blobs SET variants = '{json.dumps(variants)}'::jsonb WHERE sha256 = decode('{sha}', 'hex')")
    fm.drop_cached(file_id)
    for query, key, name in [("variant=thumb&format=jpeg", f"variants/{sha}/thumb.jpg", "holiday.photo-thumb.jpg"),
                             ("variant=preview", f"variants/{sha}/preview.webp", "holiday.photo-preview.webp"),
                             ("variant=thumb&format=webp", f"variants/{sha}/thumb.webp", "holiday.photo-thumb.webp")]:
        r = fm.download(alice, file_id, query)
        assert r.status_code == 200, (query, r.text)
        check_signed(r.json()["url"], keys[0], resource_of(edge, key, file_id, name))
    # a blob with only some variants
    fm.sql(f"UPDATE blobs SET variants = '{json.dumps({'thumb': {'webp': variants['thumb']['webp']}})}'::jsonb "
           f"WHERE sha256 = decode('{sha}', 'hex')")
    fm.drop_cached(file_id)
    assert_error(fm.download(alice, file_id, "variant=thumb&format=jpeg"), 404, "no_such_variant")
    assert_error(fm.download(alice, file_id, "variant=preview"), 404, "no_such_variant")


def test_long_variant_names_are_shortened_for_the_edge(fm, alice):
    name = "é" * 125 + ".jpg"  # 254 bytes, the most an upload takes is 255; fm-edge takes at most 255 too
    file_id, _, data = fm.ready_file(alice, name=name, content_type="image/jpeg")
    sha = sha256_hex(data)
    variants = {"preview": {"webp": {"key": f"variants/{sha}/preview.webp", "width": 1, "height": 1, "bytes": 1}}}
    fm.sql(f"UPDATE blobs SET variants = '{json.dumps(variants)}'::jsonb WHERE sha256 = decode('{sha}', 'hex')")
    fm.drop_cached(file_id)
    r = fm.download(alice, file_id, "variant=preview")
    assert r.status_code == 200, r.text
    resource, _ = split_signed(r.json()["url"])
    sent = urllib.parse.parse_qs(urllib.parse.urlsplit(resource).query)["name"][0]
    assert sent == "é" * 121 + "-preview.webp", "cut before the suffix, at a character boundary"
    assert len(sent.encode()) <= 255


# ---- the permission cache ----------------------------------------------------------------------------------------


def test_permission_check_is_served_from_the_redis_cache(fm, alice, keys, edge):
    file_id, key, _ = fm.ready_file(alice, name="before.txt")
    assert fm.download(alice, file_id).status_code == 200
    # the row is cached on the side of the answer (the SET may reach Redis just after the response left)
    cached = wait_for(lambda: fm.redis("GET", f"fm:file:{{{file_id}}}"), 5)
    assert cached is not None and json.loads(cached)["storage_key"] == key
    # a change in PostgreSQL alone (no DEL, as a writer that forgot) is not seen while the row is cached ...
    fm.sql(f"UPDATE files SET name = 'after.txt', status = 'QUARANTINED' WHERE id = '{file_id}'")
    r = fm.download(alice, file_id)
    assert r.status_code == 200, r.text
    check_signed(r.json()["url"], keys[0], resource_of(edge, key, file_id, "before.txt"))
    # ... and is once the key is gone, as every writer deletes it
    fm.drop_cached(file_id)
    assert_error(fm.download(alice, file_id), 403, "quarantined")
    assert wait_for(lambda: fm.redis("GET", f"fm:file:{{{file_id}}}"), 5)  # that answer's fill landed: drop it
    fm.sql(f"UPDATE files SET status = 'READY' WHERE id = '{file_id}'")
    fm.drop_cached(file_id)
    r = fm.download(alice, file_id)
    check_signed(r.json()["url"], keys[0], resource_of(edge, key, file_id, "after.txt"))


# ---- through fm-edge ---------------------------------------------------------------------------------------------


def test_download_through_the_edge_is_byte_identical(fm, alice, edge):
    data = random_bytes(300_000)
    file_id, _, _ = fm.ready_file(alice, data, name="photo résumé.bin")
    url = fm.download(alice, file_id, "disposition=attachment").json()["url"]
    r = requests.get(url, timeout=30)
    assert r.status_code == 200, r.text[:300]
    assert hashlib.sha256(r.content).hexdigest() == sha256_hex(data)
    cd = r.headers["Content-Disposition"]
    assert cd.startswith("attachment;") and "filename*=UTF-8''photo%20r%C3%A9sum%C3%A9.bin" in cd, cd
    # a changed parameter breaks the signature
    tampered = url.replace("disposition=attachment", "disposition=inline")
    assert requests.get(tampered, timeout=30).status_code == 403


def test_url_signed_with_the_old_key_still_works_at_the_edge(fm, alice, keys, edge):
    """Rotation: the edge trusts both pairs; a URL made with the second (old) key is accepted too."""
    data = random_bytes(2000)
    file_id, key, _ = fm.ready_file(alice, data, name="old.bin")
    resource = resource_of(edge, key, file_id, "old.bin")
    r = requests.get(keys[1].botocore_url(resource, int(time.time()) + 60), timeout=30)
    assert r.status_code == 200 and r.content == data


# ---- configuration -----------------------------------------------------------------------------------------------


def test_without_keys_downloads_answer_503(control, fm, alice):
    # the session's main fm-control has no FM_CF_KEYS
    from helpers_fm import login, register
    from conftest import unique_email
    email = unique_email("dl-nokeys")
    register(control.url, email)
    token = login(control.url, email)["access_token"]
    r = requests.get(f"{control.url}/v1/files/{uuid.uuid4()}/download", headers={"Authorization": f"Bearer {token}"},
                     timeout=10)
    assert_error(r, 503, "downloads_disabled")


@pytest.mark.parametrize("spec, message", [
    ("KONLYPUBLIC={pub}", "cannot sign"),
    ("no-equals-sign", "is not Key-Pair-Id=private.pem"),
    ("KMISSING=/nonexistent/key.pem", "cannot read"),
])
def test_bad_keys_stop_the_service(controls, keys, spec, message):
    env = controls.env(FM_CF_KEYS=spec.format(pub=keys[0].public_path), FM_HTTP_PORT="1")
    p = subprocess.run([str(BUILD_DIR / "fm-control")], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2, p.stderr
    assert message in p.stderr, p.stderr


def test_bad_public_keys_stop_the_edge_with_every_mistake_logged(edges, keys):
    """fm-edge reads FM_EDGE_CF_PUBLIC_KEYS with the control plane's loader (common/cfkeys.c): every bad item is one
    JSON log line naming the variable (not a bare fprintf), the good ones are still read, and the edge stops."""
    env = edges.env(FM_EDGE_CF_PUBLIC_KEYS=f"no-equals-sign,{keys[0].id}={keys[0].public_path},"
                                          "KMISSING=/nonexistent/key.pem")
    p = subprocess.run([str(BUILD_DIR / "fm-edge")], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2, p.stderr
    errors = [json.loads(line) for line in p.stderr.splitlines() if line.startswith("{")]
    errors = [e["msg"] for e in errors if e.get("level") == "error" and e.get("service") == "fm-edge"]
    assert errors == ['config: FM_EDGE_CF_PUBLIC_KEYS: "no-equals-sign" is not Key-Pair-Id=path.pem',
                      "config: FM_EDGE_CF_PUBLIC_KEYS: cannot read /nonexistent/key.pem",
                      "fm-edge: fix FM_EDGE_CF_PUBLIC_KEYS (see `fm-edge config`)"], p.stderr
