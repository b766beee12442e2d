"""Presigned URLs made by our signer (common/sigv4.c, through tests/tools/fm_presign) against the real store:
Ceph RGW accepts them and refuses every tampered or expired variant (DESIGN.md §4 "Upload")."""
import subprocess
import time
import urllib.parse

import pytest
import requests

from conftest import BUILD_DIR

KEYS = [
    "incoming/plain.txt",
    "incoming/with space and+plus~tilde.txt",
    "incoming/fïlé/日本.txt",
    "incoming/a=b&c?d#e.bin",
]


def presign(stack, method, key, expires=300, content_type=None):
    args = [str(BUILD_DIR / "fm_presign"), method, stack.env["FM_S3_ENDPOINT"], stack.env["FM_S3_BUCKET"], key,
            str(expires)]
    if content_type:
        args.append(content_type)
    p = subprocess.run(args, env={**stack.env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=10)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def s3_error_code(response):
    text = response.text
    return text.split("<Code>", 1)[1].split("</Code>", 1)[0] if "<Code>" in text else None


@pytest.mark.parametrize("key", KEYS)
def test_presigned_put_then_get_round_trips(stack, key):
    body = f"bytes for {key}".encode()
    put = requests.put(presign(stack, "PUT", key, content_type="text/plain"), data=body,
                       headers={"Content-Type": "text/plain"}, timeout=10)
    assert put.status_code == 200, put.text
    # An independent client (boto3) sees the object under exactly that key.
    obj = stack.s3_client().get_object(Bucket=stack.env["FM_S3_BUCKET"], Key=key)
    assert obj["Body"].read() == body
    assert obj["ContentType"] == "text/plain"
    get = requests.get(presign(stack, "GET", key), timeout=10)
    assert get.status_code == 200 and get.content == body


def tamper_query(url, name, change):
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query = [(k, change(v) if k == name else v) for k, v in query]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, quote_via=urllib.parse.quote)))


def flip_last_hex(value):
    return value[:-1] + ("0" if value[-1] != "0" else "1")


def test_tampered_signature_is_refused(stack):
    url = tamper_query(presign(stack, "PUT", "incoming/tamper-sig", content_type="text/plain"), "X-Amz-Signature",
                       flip_last_hex)
    r = requests.put(url, data=b"x", headers={"Content-Type": "text/plain"}, timeout=10)
    assert r.status_code == 403 and s3_error_code(r) == "SignatureDoesNotMatch"


def test_other_key_with_the_same_signature_is_refused(stack):
    url = presign(stack, "PUT", "incoming/mine", content_type="text/plain").replace("/incoming/mine?", "/incoming/theirs?")
    r = requests.put(url, data=b"x", headers={"Content-Type": "text/plain"}, timeout=10)
    assert r.status_code == 403 and s3_error_code(r) == "SignatureDoesNotMatch"


def test_longer_expiry_than_signed_is_refused(stack):
    url = tamper_query(presign(stack, "PUT", "incoming/tamper-exp", expires=60), "X-Amz-Expires", lambda v: "604800")
    r = requests.put(url, data=b"x", timeout=10)
    assert r.status_code == 403


def test_signed_content_type_is_enforced(stack):
    url = presign(stack, "PUT", "incoming/ctype", content_type="image/png")
    r = requests.put(url, data=b"x", headers={"Content-Type": "text/html"}, timeout=10)
    assert r.status_code == 403
    assert requests.put(url, data=b"x", headers={"Content-Type": "image/png"}, timeout=10).status_code == 200


def test_get_url_cannot_be_used_to_put(stack):
    url = presign(stack, "GET", "incoming/method")
    r = requests.put(url, data=b"x", timeout=10)
    assert r.status_code == 403


def test_expired_url_is_refused(stack):
    url = presign(stack, "PUT", "incoming/expired", expires=1)
    time.sleep(2.5)
    r = requests.put(url, data=b"x", timeout=10)
    assert r.status_code == 403


def test_signer_refuses_expiry_beyond_seven_days(stack):
    args = [str(BUILD_DIR / "fm_presign"), "PUT", stack.env["FM_S3_ENDPOINT"], stack.env["FM_S3_BUCKET"], "k",
            "604801"]
    p = subprocess.run(args, env={**stack.env}, capture_output=True, text=True, timeout=10)
    assert p.returncode == 1 and "604800" in p.stderr + p.stdout
