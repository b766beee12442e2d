"""Companion's S3 routes, as stock @uppy/aws-s3 calls them with `endpoint: <control>/v1/uppy` (control-plane/uppy.c):
they map onto the same uploads as /v1/uploads, with Uppy's field names and answer shapes."""
import hashlib
import os
import urllib.parse

import pytest
import requests

from conftest import unique_email

EVENTS_SECRET = "uppy-test-events-secret-0123456789"
UPPY_DB = 50  # the module's own Redis database (test_edge_variants flushes 14)
TIMEOUT = 30  # seconds, every request: a hung answer fails its test instead of the whole run


def _bounded(method):
    return lambda *args, **kwargs: method(*args, **{"timeout": TIMEOUT, **kwargs})


get, post, put, delete = (_bounded(m) for m in (requests.get, requests.post, requests.put, requests.delete))


@pytest.fixture(scope="module")
def uppy(controls, stack):
    # Its own Redis database: the reconciler lock of the suite's other instances (30 s rounds) must not stall this
    # instance's 1 s reconciler, which finishes Uppy's single PUTs when no event reaches it.
    redis_url = stack.env["FM_REDIS_URL"].rsplit("/", 1)[0] + f"/{UPPY_DB}"
    node = controls.start(FM_RECONCILE_INTERVAL_S="1", FM_REDIS_URL=redis_url, FM_EVENTS_SECRET=EVENTS_SECRET)
    email, password = unique_email("uppy"), "correct horse battery"
    assert post(node.url + "/v1/auth/register", json={"email": email, "password": password}).status_code == 201
    token = post(node.url + "/v1/auth/login", json={"email": email, "password": password}).json()["access_token"]
    yield node.url, {"authorization": "Bearer " + token}, stack
    controls.stop(node)


def q(value):
    return urllib.parse.quote(value, safe="")


def test_single_put_through_get_upload_parameters(uppy):
    base, auth, stack = uppy
    data = os.urandom(3000)
    query = urllib.parse.urlencode({"filename": "u b.bin", "type": "application/octet-stream",
                                    "metadata[size]": len(data), "metadata[sha256]": hashlib.sha256(data).hexdigest()})
    p = get(f"{base}/v1/uppy/s3/params?{query}", headers=auth)
    assert p.status_code == 200, p.text
    body = p.json()
    assert body["method"] == "PUT" and body["fields"] == {} and body["headers"] == {"Content-Type": "application/octet-stream"}
    assert put(body["url"], data=data, headers=body["headers"]).status_code == 200
    key = urllib.parse.urlsplit(body["url"]).path.split("/", 2)[2]
    assert key == "incoming/" + body["upload_id"]
    obj = stack.s3_client().get_object(Bucket=stack.env["FM_S3_BUCKET"], Key=key)
    assert obj["Body"].read() == data
    # Uppy sends no complete on this path: the store's event finishes the upload (sent here as RGW would; another
    # test instance's reconciler, sharing the database, may have finished it first: then it is a duplicate).
    event = {"Records": [{"eventVersion": "2.2", "eventSource": "ceph:s3", "awsRegion": "",
                          "eventName": "ObjectCreated:Put",
                          "s3": {"bucket": {"name": stack.env["FM_S3_BUCKET"]},
                                 "object": {"key": key, "size": len(data), "eTag": hashlib.md5(data).hexdigest()}}}]}
    e = post(f"{base}/v1/events/s3", headers={"x-fm-events-secret": EVENTS_SECRET}, json=event)
    assert e.status_code == 200 and e.json()["enqueued"] + e.json()["duplicates"] == 1, e.text
    assert get(f"{base}/v1/files/{body['file_id']}", headers=auth).json()["status"] == "UPLOADED"


def test_multipart_sign_list_complete(uppy):
    base, auth, stack = uppy
    data = os.urandom(11 * 1024 * 1024)
    c = post(f"{base}/v1/uppy/s3/multipart", headers=auth, json={
        "filename": "m.bin", "type": "application/octet-stream",
        "metadata": {"name": "m.bin", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}})
    assert c.status_code == 200, c.text
    key, upload_id = c.json()["key"], c.json()["uploadId"]
    assert key.startswith("incoming/")
    route = f"{base}/v1/uppy/s3/multipart/{q(upload_id)}"
    parts = []
    for number, chunk in enumerate([data[:5 << 20], data[5 << 20:10 << 20], data[10 << 20:]], 1):
        signed = get(f"{route}/{number}?key={q(key)}", headers=auth)
        assert signed.status_code == 200, signed.text
        stored = put(signed.json()["url"], data=chunk)
        assert stored.status_code == 200
        parts.append({"PartNumber": number, "ETag": stored.headers["ETag"]})
    listed = get(f"{route}?key={q(key)}", headers=auth)
    assert listed.status_code == 200
    assert [(p["PartNumber"], p["Size"]) for p in listed.json()] == [(1, 5 << 20), (2, 5 << 20), (3, 1 << 20)]
    done = post(f"{route}/complete?key={q(key)}", headers=auth, json={"parts": parts})
    assert done.status_code == 200, done.text
    assert done.json()["location"].endswith("/" + key)
    f = get(f"{base}/v1/files/{done.json()['file_id']}", headers=auth).json()
    assert f["status"] == "UPLOADED" and f["size"] == len(data)
    head = stack.s3_client().head_object(Bucket=stack.env["FM_S3_BUCKET"], Key=key)
    assert head["ContentLength"] == len(data) and head["ETag"].endswith('-3"')


def test_abort_and_foreign_upload_ids(uppy, controls):
    base, auth, stack = uppy
    c = post(f"{base}/v1/uppy/s3/multipart", headers=auth, json={
        "filename": "a.bin", "type": "application/octet-stream", "metadata": {"size": 10 << 20, "sha256": "0" * 64}}).json()
    route = f"{base}/v1/uppy/s3/multipart/{q(c['uploadId'])}"
    wrong = get(f"{base}/v1/uppy/s3/multipart/not-it?key={q(c['key'])}", headers=auth)
    assert wrong.status_code == 404 and wrong.json()["error"]["code"] == "upload_not_found"
    # another user cannot touch it
    email = unique_email("uppy-other")
    post(base + "/v1/auth/register", json={"email": email, "password": "correct horse battery"})
    other = post(base + "/v1/auth/login", json={"email": email, "password": "correct horse battery"}).json()
    other_auth = {"authorization": "Bearer " + other["access_token"]}
    assert delete(f"{route}?key={q(c['key'])}", headers=other_auth).status_code == 404
    a = delete(f"{route}?key={q(c['key'])}", headers=auth)
    assert a.status_code == 200 and a.json() == {}
    uploads = stack.s3_client().list_multipart_uploads(Bucket=stack.env["FM_S3_BUCKET"], Prefix=c["key"])
    assert not uploads.get("Uploads")


@pytest.mark.parametrize("query", [
    {"filename": "x", "type": "text/plain", "metadata[sha256]": "0" * 64},  # no size
    {"filename": "x", "type": "text/plain", "metadata[size]": "10"},  # no sha256
    {"filename": "x", "type": "text/plain", "metadata[size]": "-1", "metadata[sha256]": "0" * 64},
    {"filename": "../x", "type": "text/plain", "metadata[size]": "1", "metadata[sha256]": "0" * 64},
])
def test_missing_or_bad_meta_is_422(uppy, query):
    base, auth, _ = uppy
    r = get(f"{base}/v1/uppy/s3/params?{urllib.parse.urlencode(query)}", headers=auth)
    assert r.status_code == 422 and r.json()["error"]["code"].startswith("invalid_")


def test_requires_a_token(uppy):
    base, _, _ = uppy
    assert get(f"{base}/v1/uppy/s3/params?filename=x&type=text/plain").status_code == 401


def test_upper_case_key_names_no_upload(uppy):
    """?key= is our object key, incoming/ + a lowercase UUID (uuid.h's one case rule): S3 keys are case-sensitive, so
    the upper-cased key names another object, not this upload, even though PostgreSQL's ::uuid would match it."""
    base, auth, stack = uppy
    c = post(f"{base}/v1/uppy/s3/multipart", headers=auth, json={
        "filename": "case.bin", "type": "application/octet-stream", "metadata": {"size": 10 << 20, "sha256": "0" * 64}})
    assert c.status_code == 200, c.text
    key, route = c.json()["key"], f"{base}/v1/uppy/s3/multipart/{q(c.json()['uploadId'])}"
    upper = "incoming/" + key[len("incoming/"):].upper()
    assert upper != key
    assert get(f"{route}?key={q(key)}", headers=auth).status_code == 200
    for answer in (get(f"{route}?key={q(upper)}", headers=auth),
                   get(f"{route}/1?key={q(upper)}", headers=auth),
                   delete(f"{route}?key={q(upper)}", headers=auth)):
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "upload_not_found", answer.text
    assert delete(f"{route}?key={q(key)}", headers=auth).status_code == 200
