"""Direct-to-S3 uploads end to end (DESIGN.md §4 "Upload", docs/uploads.md) against the real stack: fm-control signs,
checks and records; the bytes go to Ceph RGW with presigned URLs; botocore is the independent reference for the
signatures; PostgreSQL, the Redis job stream and the bucket are looked at directly.

One dedicated fm-control (helpers_uploads.uploads_control: multipart above 8 MiB, reconciler every second, a Redis
database of its own). The bucket's event notifications are off while this module runs: `complete` is what is
tested here (events and the reconciler are test_events.py's).

Run: /usr/bin/python3 -m pytest -q tests/integration/test_uploads.py
"""
import datetime
import json
import re
import secrets
import threading
import time
import urllib.parse
import uuid

import botocore.exceptions
import pytest
import requests

from helpers_fm import assert_error, assert_unauthorized, redis_url, wait_for
from helpers_uploads import (MIB, PART_SIZE, THRESHOLD, TTL_REDIS_DB, Fm, botocore_presign_like, key_of,
                             random_bytes, s3_error_code, sha256_hex, shared_uploads_fm)

GIB = 1024 * MIB
MAX_UPLOAD = 50 * GIB  # FM_MAX_UPLOAD_BYTES default
UUID_RE = r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"


@pytest.fixture(scope="module")
def fm(controls, stack):
    with shared_uploads_fm(controls, stack) as f:
        yield f


@pytest.fixture(scope="module")
def alice(fm):
    return fm.user("alice")


@pytest.fixture(scope="module")
def bob(fm):
    return fm.user("bob")


def expect_error(resp, status, code, what):
    """assert_error, naming the case that failed."""
    try:
        return assert_error(resp, status, code)
    except AssertionError as e:
        raise AssertionError(f"{what}: {e}") from None


def parse_time(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc).timestamp()


# --- single PUT -----------------------------------------------------------------------------------------------------

def test_single_put_end_to_end(fm, alice):
    data = random_bytes(3000)
    name = "report ü (1).txt"
    before = time.time()
    a = fm.start(alice, data, name=name, content_type="text/plain")
    assert set(a) == {"upload_id", "file_id", "deduplicated", "method", "url", "headers", "expires_at"}, a
    assert a["deduplicated"] is False and a["method"] == "PUT"
    assert a["headers"] == {"Content-Type": "text/plain"}
    key = key_of(a["upload_id"])
    endpoint = fm.stack.env["FM_S3_ENDPOINT"].rstrip("/")
    assert a["url"].startswith(f"{endpoint}/{fm.bucket}/{key}?"), a["url"]
    assert before + 900 - 5 <= parse_time(a["expires_at"]) <= time.time() + 900 + 5  # FM_UPLOAD_URL_TTL_S
    # server-made, version 7: the time in ms, then 74 random bits (keys cannot be guessed), ordered by creation
    assert re.match(UUID_RE, a["upload_id"]) and re.match(UUID_RE, a["file_id"]), a
    assert abs(int(a["upload_id"].replace("-", "")[:12], 16) / 1000 - time.time()) < 60, a

    f = fm.file(alice, a["file_id"])
    assert f.status_code == 200 and f.json()["status"] == "PENDING_UPLOAD", f.text
    assert fm.upload_row(a["upload_id"])["status"] == "PENDING"

    put = fm.put(a, data)
    assert put.status_code == 200, put.text

    trace = "00-" + secrets.token_hex(16) + "-" + secrets.token_hex(8) + "-01"
    c = fm.complete(alice, a["upload_id"], headers={"traceparent": trace})
    assert c.status_code == 200, c.text
    done = c.json()
    assert set(done) == {"upload_id", "file_id", "status", "job_id"}, done
    assert done["upload_id"] == a["upload_id"] and done["file_id"] == a["file_id"]
    assert done["status"] == "UPLOADED"
    job_id = done["job_id"]
    uuid.UUID(job_id)

    f = fm.file(alice, a["file_id"]).json()
    assert f["status"] == "UPLOADED" and f["id"] == a["file_id"], f
    assert f["name"] == name and f["size"] == len(data) and f["content_type"] == "text/plain"
    assert f["sha256"] == sha256_hex(data) and f["folder_id"] is None
    assert "owner_id" not in f
    j = fm.job(alice, job_id)
    assert j.status_code == 200, j.text
    j = j.json()
    assert j["status"] == "QUEUED" and j["type"] == "process_upload", j
    assert j["file_id"] == a["file_id"] and j["upload_id"] == a["upload_id"] and j["attempts"] == 0
    assert j["transient_retries"] == 0

    # PostgreSQL: one job; the upload knows who completed it and the object's ETag (MD5 of a single PUT).
    assert fm.jobs_of_upload(a["upload_id"]) == [job_id]
    row = fm.upload_row(a["upload_id"])
    assert row["status"] == "UPLOADED" and row["completed_by"] == "complete", row
    assert row["etag"] == put.headers["ETag"].strip('"')

    # Redis: exactly one stream entry for that job, carrying the trace context of the request.
    entries = fm.stream_entries(job_id)
    assert len(entries) == 1, entries
    e = entries[0]
    assert e["type"] == "process_upload" and e["file_id"] == a["file_id"] and e["upload_id"] == a["upload_id"]
    assert e["traceparent"] == trace

    # S3: the bytes under the server's key, with the signed content type.
    obj = fm.s3.get_object(Bucket=fm.bucket, Key=key)
    assert obj["Body"].read() == data and obj["ContentType"] == "text/plain"


def test_empty_file_uploads(fm, alice):
    a, done = fm.upload(alice, b"", content_type="text/plain")
    assert done["status"] == "UPLOADED"
    assert fm.head(key_of(a["upload_id"]))["ContentLength"] == 0
    assert len(fm.stream_entries(done["job_id"])) == 1


def test_complete_is_idempotent_also_when_concurrent(fm, alice):
    data = random_bytes(5000)
    a = fm.start(alice, data)
    assert fm.put(a, data).status_code == 200
    results = [None] * 8
    barrier = threading.Barrier(len(results))

    def go(i):
        barrier.wait()
        results[i] = fm.complete(alice, a["upload_id"])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    job_ids = {r.json()["job_id"] for r in results}
    assert len(job_ids) == 1, job_ids
    job_id = job_ids.pop()
    assert fm.jobs_of_upload(a["upload_id"]) == [job_id]
    assert len(fm.stream_entries(job_id)) == 1
    again = fm.complete(alice, a["upload_id"])
    assert again.status_code == 200 and again.json() == results[0].json()


# --- the presigned URLs ---------------------------------------------------------------------------------------------

def test_presigned_urls_match_botocore(fm, alice):
    """Our URL, re-signed by botocore's S3SigV4QueryAuth from the same inputs (time frozen at the URL's
    X-Amz-Date), carries the same signature: for a single PUT (Content-Type and Content-Length signed) and for
    UploadPart URLs (Content-Length of each part signed)."""
    env = fm.stack.env
    data = random_bytes(100)
    single = fm.start(alice, data, content_type="image/png")
    ours, theirs = botocore_presign_like(single["url"], "PUT", {**single["headers"], "Content-Length": "100"},
                                         env["FM_S3_ACCESS_KEY"], env["FM_S3_SECRET_KEY"])
    assert ours["X-Amz-SignedHeaders"] == "content-length;content-type;host"
    assert ours["X-Amz-Expires"] == "900"
    assert ours["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert ours == theirs

    multi = fm.start(alice, size=THRESHOLD + 1, sha256=sha256_hex(b"multi"))
    try:
        part_size, count = multi["multipart"]["part_size"], multi["multipart"]["part_count"]
        for part in multi["multipart"]["parts"]:
            n = part["part_number"]
            length = part_size if n < count else THRESHOLD + 1 - (count - 1) * part_size
            ours, theirs = botocore_presign_like(part["url"], "PUT", {"Content-Length": str(length)},
                                                 env["FM_S3_ACCESS_KEY"], env["FM_S3_SECRET_KEY"])
            assert ours["X-Amz-SignedHeaders"] == "content-length;host"
            assert ours["partNumber"] == str(part["part_number"])
            assert ours["uploadId"] == fm.upload_row(multi["upload_id"])["s3_upload_id"]
            assert ours == theirs
    finally:
        assert fm.abort(alice, multi["upload_id"]).status_code == 204


def tamper_query(url, name, change):
    parts = urllib.parse.urlsplit(url)
    query = [(k, change(v) if k == name else v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, quote_via=urllib.parse.quote)))


def test_tampered_urls_are_refused_by_the_store(fm, alice):
    data = random_bytes(1000)
    a = fm.start(alice, data, content_type="text/plain")
    b = fm.start(alice, data, content_type="text/plain")
    key_a, key_b = key_of(a["upload_id"]), key_of(b["upload_id"])
    flipped = tamper_query(a["url"], "X-Amz-Signature", lambda v: v[:-1] + ("0" if v[-1] != "0" else "1"))
    attempts = {
        "signature": (flipped, a["headers"]),
        "other key": (a["url"].replace(f"/{key_a}?", f"/{key_b}?"), a["headers"]),
        "longer expiry": (tamper_query(a["url"], "X-Amz-Expires", lambda v: "604800"), a["headers"]),
        "other content type": (a["url"], {"Content-Type": "text/html"}),
        "no content type": (a["url"], {}),
    }
    for what, (url, headers) in attempts.items():
        r = requests.put(url, data=data, headers=headers, timeout=10)
        assert r.status_code == 403, f"{what}: {r.status_code} {r.text[:300]}"
        assert s3_error_code(r) in ("SignatureDoesNotMatch", "AccessDenied"), f"{what}: {r.text[:300]}"
    assert fm.head(key_a) is None and fm.head(key_b) is None
    # The genuine URL still works.
    assert fm.put(a, data).status_code == 200
    assert fm.complete(alice, a["upload_id"]).status_code == 200
    assert fm.abort(alice, b["upload_id"]).status_code == 204


def test_expired_upload_url_is_refused(controls, stack, fm):
    """FM_UPLOAD_URL_TTL_S=1 on an instance of its own (stopped, and its exit checked, at the end)."""
    svc = controls.start(FM_UPLOAD_URL_TTL_S=1, FM_REDIS_URL=redis_url(stack, TTL_REDIS_DB))
    try:
        short = Fm(stack, svc)
        user = short.user("ttl")
        data = random_bytes(100)
        a = short.start(user, data)
        assert urllib.parse.parse_qs(urllib.parse.urlsplit(a["url"]).query)["X-Amz-Expires"] == ["1"]
        time.sleep(2.5)
        r = short.put(a, data)
        assert r.status_code == 403, r.text
        assert fm.head(key_of(a["upload_id"])) is None
        assert_error(short.complete(user, a["upload_id"]), 409, "object_missing")
        assert short.abort(user, a["upload_id"]).status_code == 204
    finally:
        controls.stop(svc)


# --- multipart ------------------------------------------------------------------------------------------------------

def test_multipart_end_to_end(fm, alice):
    size = 17 * MIB
    data = random_bytes(size)
    a = fm.start(alice, data, content_type="video/mp4")
    # a multipart upload is recorded before the answer, so its name is settled and said (docs/uploads.md)
    assert set(a) == {"upload_id", "file_id", "deduplicated", "name", "method", "expires_at", "multipart"}, a
    assert a["method"] == "MULTIPART" and a["deduplicated"] is False
    mp = a["multipart"]
    assert mp["part_size"] == PART_SIZE and mp["part_count"] == 3
    assert [p["part_number"] for p in mp["parts"]] == [1, 2, 3]
    key = key_of(a["upload_id"])
    s3_upload_id = fm.upload_row(a["upload_id"])["s3_upload_id"]
    assert fm.multipart_ids(key) == [s3_upload_id]

    listed = fm.call(alice, "GET", f"/v1/uploads/{a['upload_id']}/parts")
    assert listed.status_code == 200 and listed.json()["parts"] == [], listed.text

    # Parts 1 and 3 now; resume later with a fresh URL for part 2.
    sent = fm.put_parts(a, data, numbers=[3, 1])
    listed = fm.call(alice, "GET", f"/v1/uploads/{a['upload_id']}/parts").json()
    assert listed["part_size"] == PART_SIZE and listed["part_count"] == 3
    assert [(p["part_number"], p["size"]) for p in listed["parts"]] == [(1, PART_SIZE), (3, size - 2 * PART_SIZE)]
    etags = {p["part_number"]: p["etag"] for p in sent}
    assert {p["part_number"]: p["etag"].strip('"') for p in listed["parts"]} == \
        {n: e.strip('"') for n, e in etags.items()}
    # ...what S3 itself says:
    s3_parts = fm.s3.list_parts(Bucket=fm.bucket, Key=key, UploadId=s3_upload_id)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in s3_parts] == [(p["part_number"], p["size"]) for p in listed["parts"]]

    more = fm.call(alice, "POST", f"/v1/uploads/{a['upload_id']}/parts", json={"part_numbers": [2]})
    assert more.status_code == 200, more.text
    more = more.json()
    assert [p["part_number"] for p in more["parts"]] == [2] and "expires_at" in more
    r = requests.put(more["parts"][0]["url"], data=data[PART_SIZE:2 * PART_SIZE], timeout=60)
    assert r.status_code == 200, r.text
    etags[2] = r.headers["ETag"]
    parts = [{"part_number": n, "etag": etags[n]} for n in (1, 2, 3)]

    c = fm.complete(alice, a["upload_id"], parts)
    assert c.status_code == 200, c.text
    done = c.json()
    assert done["status"] == "UPLOADED" and done["file_id"] == a["file_id"]
    again = fm.complete(alice, a["upload_id"], parts)
    assert again.status_code == 200 and again.json()["job_id"] == done["job_id"], again.text
    # Completing again needs no parts (the upload is done).
    assert fm.complete(alice, a["upload_id"]).json()["job_id"] == done["job_id"]

    head = fm.head(key)
    assert head["ContentLength"] == size and head["ContentType"] == "video/mp4"
    assert head["ETag"].strip('"').endswith("-3")
    assert fm.get_bytes(key) == data
    assert fm.multipart_ids(key) == []
    assert fm.upload_row(a["upload_id"])["etag"] == head["ETag"].strip('"')
    assert fm.jobs_of_upload(a["upload_id"]) == [done["job_id"]]
    assert len(fm.stream_entries(done["job_id"])) == 1
    assert fm.file(alice, a["file_id"]).json()["status"] == "UPLOADED"

    # A completed upload takes no more part calls, and cannot be aborted.
    assert_error(fm.call(alice, "GET", f"/v1/uploads/{a['upload_id']}/parts"), 409, "not_pending")
    assert_error(fm.call(alice, "POST", f"/v1/uploads/{a['upload_id']}/parts", json={"part_numbers": [1]}), 409,
                 "not_pending")
    assert_error(fm.abort(alice, a["upload_id"]), 409, "already_completed")
    assert fm.head(key)["ContentLength"] == size


def test_multipart_plan_at_the_edges(fm, alice):
    """Exactly the threshold is one PUT, one byte more is two parts; the largest file stays under 10,000 parts of
    whole MiB with the first 100 part URLs; one byte more is 413."""
    # the largest file is past the default quota of 10 GiB (test_quotas.py): this owner's is raised for it
    fm.sql(f"UPDATE users SET quota_bytes = {4 * MAX_UPLOAD} WHERE id = '{alice.id}'")
    at = fm.start(alice, size=THRESHOLD, sha256=sha256_hex(b"at"))
    assert at["method"] == "PUT"
    above = fm.start(alice, size=THRESHOLD + 1, sha256=sha256_hex(b"above"))
    assert above["method"] == "MULTIPART"
    assert (above["multipart"]["part_size"], above["multipart"]["part_count"]) == (PART_SIZE, 2)
    big = fm.start(alice, size=MAX_UPLOAD, sha256=sha256_hex(b"big"))
    mp = big["multipart"]
    assert mp["part_size"] % MIB == 0 and mp["part_size"] >= PART_SIZE
    assert mp["part_count"] <= 10000 and (mp["part_count"] - 1) * mp["part_size"] < MAX_UPLOAD
    assert mp["part_count"] * mp["part_size"] >= MAX_UPLOAD
    assert [p["part_number"] for p in mp["parts"]] == list(range(1, 101))
    last = fm.call(alice, "POST", f"/v1/uploads/{big['upload_id']}/parts",
                   json={"part_numbers": [mp["part_count"], 101]})
    assert last.status_code == 200 and [p["part_number"] for p in last.json()["parts"]] == [mp["part_count"], 101]
    assert_error(fm.call(alice, "POST", "/v1/uploads", json={
        "name": "x", "size": MAX_UPLOAD + 1, "content_type": "text/plain", "sha256": sha256_hex(b"x")}), 413,
        "too_large")
    for a in (at, above, big):
        assert fm.abort(alice, a["upload_id"]).status_code == 204
    assert fm.multipart_ids(key_of(big["upload_id"])) == []


def assert_still_pending(fm, user, a):
    assert fm.upload_row(a["upload_id"])["status"] == "PENDING"
    assert fm.file_row(a["file_id"])["status"] == "PENDING_UPLOAD"
    assert fm.jobs_of_upload(a["upload_id"]) == []
    assert fm.head(key_of(a["upload_id"])) is None


def test_invalid_parts_record_nothing_and_the_upload_can_still_complete(fm, alice):
    size = PART_SIZE + MIB
    data = random_bytes(size)
    a = fm.start(alice, data)
    uid = a["upload_id"]
    parts = fm.put_parts(a, data)
    p1, p2 = parts
    wrong_etag = '"' + "0" * 32 + '"'
    bad = {
        "out of order": [p2, p1],
        "missing part": [p1],
        "repeated part": [p1, p1],
        "wrong etag": [p1, {"part_number": 2, "etag": wrong_etag}],
        "number beyond part_count": [p1, p2, {"part_number": 3, "etag": p2["etag"]}],
        "number 0": [{"part_number": 0, "etag": p1["etag"]}, p2],
        "fractional number": [p1, {"part_number": 1.5, "etag": p2["etag"]}],
        "number as string": [p1, {"part_number": "2", "etag": p2["etag"]}],
        "huge number": [p1, {"part_number": 1e10, "etag": p2["etag"]}],
        "negative number": [{"part_number": -1, "etag": p1["etag"]}, p2],
        "empty etag": [p1, {"part_number": 2, "etag": ""}],
        "no etag": [p1, {"part_number": 2}],
        "empty list": [],
    }
    for what, body in bad.items():
        expect_error(fm.complete(alice, uid, body), 422, "invalid_parts", what)
        assert_still_pending(fm, alice, a)
    for body in ({"parts": "1"}, {"parts": None}, {}, {"parts": {"part_number": 1}}):
        assert_error(fm.call(alice, "POST", f"/v1/uploads/{uid}/complete", json=body), 422, "invalid_parts")
    for raw in (b"", b"{", b"[]"):
        r = fm.call(alice, "POST", f"/v1/uploads/{uid}/complete", data=raw,
                    headers={"Content-Type": "application/json"})
        assert_error(r, 400, "invalid_json")
    assert_still_pending(fm, alice, a)
    # S3 still holds both parts.
    listed = fm.call(alice, "GET", f"/v1/uploads/{uid}/parts").json()["parts"]
    assert [p["part_number"] for p in listed] == [1, 2]

    # A first part below S3's minimum (EntityTooSmall) is refused the same way, and can be sent again. Our part URL
    # signs the part's size, so such a part can only come some other way (here with the store's own credentials).
    assert requests.put(fm.part_urls(a)[1], data=b"tiny", timeout=30).status_code == 403
    tiny = fm.s3.upload_part(Bucket=fm.bucket, Key=key_of(uid), UploadId=fm.upload_row(uid)["s3_upload_id"],
                             PartNumber=1, Body=b"tiny")
    assert_error(fm.complete(alice, uid, [{"part_number": 1, "etag": tiny["ETag"]}, p2]), 422, "invalid_parts")
    assert_still_pending(fm, alice, a)
    (p1,) = fm.put_parts(a, data, numbers=[1])

    c = fm.complete(alice, uid, [p1, p2])
    assert c.status_code == 200, c.text
    assert fm.head(key_of(uid))["ContentLength"] == size
    assert fm.jobs_of_upload(uid) == [c.json()["job_id"]]


def test_part_url_requests_are_checked(fm, alice):
    a = fm.start(alice, size=2 * PART_SIZE + 1, sha256=sha256_hex(b"parts"))
    uid = a["upload_id"]
    path = f"/v1/uploads/{uid}/parts"
    for numbers in ([0], [4], [1.5], ["1"], [None], [], list(range(1, 3)) * 501):
        expect_error(fm.call(alice, "POST", path, json={"part_numbers": numbers}), 422, "invalid_parts", numbers)
    for body in ({}, {"part_numbers": 1}, {"part_numbers": "1,2"}):
        assert_error(fm.call(alice, "POST", path, json=body), 422, "invalid_parts")
    assert_error(fm.call(alice, "POST", path, data=b"{", headers={"Content-Type": "application/json"}), 400,
                 "invalid_json")
    ok = fm.call(alice, "POST", path, json={"part_numbers": [3, 1, 3]})
    assert ok.status_code == 200 and [p["part_number"] for p in ok.json()["parts"]] == [3, 1, 3]
    # A single-PUT upload has no parts.
    single = fm.start(alice, b"one")
    assert_error(fm.call(alice, "POST", f"/v1/uploads/{single['upload_id']}/parts", json={"part_numbers": [1]}),
                 409, "not_multipart")
    assert_error(fm.call(alice, "GET", f"/v1/uploads/{single['upload_id']}/parts"), 409, "not_multipart")
    assert fm.abort(alice, uid).status_code == 204
    assert fm.abort(alice, single["upload_id"]).status_code == 204


# --- abort ----------------------------------------------------------------------------------------------------------

def test_abort_single_put_removes_the_object(fm, alice):
    data = random_bytes(2000)
    a = fm.start(alice, data)
    fm.shield_from_reconciler(a["upload_id"])
    assert fm.put(a, data).status_code == 200
    key = key_of(a["upload_id"])
    assert fm.head(key) is not None
    r = fm.abort(alice, a["upload_id"])
    assert r.status_code == 204 and r.content == b"", r.text
    assert fm.head(key) is None
    assert fm.upload_row(a["upload_id"])["status"] == "ABORTED"
    row = fm.file_row(a["file_id"])
    assert row["status"] == "FAILED" and row["deleted_at"] is not None
    assert_error(fm.file(alice, a["file_id"]), 404)
    assert fm.abort(alice, a["upload_id"]).status_code == 204  # again: nothing left to do
    assert_error(fm.complete(alice, a["upload_id"]), 409, "not_pending")
    assert fm.jobs_of_upload(a["upload_id"]) == []
    # A PUT with the old URL after the abort would land an object nobody completes: the reconciler's business,
    # not a way back in.
    assert fm.upload_row(a["upload_id"])["status"] == "ABORTED"


def test_abort_before_any_put(fm, alice):
    a = fm.start(alice, b"nothing yet")
    assert fm.abort(alice, a["upload_id"]).status_code == 204
    assert fm.upload_row(a["upload_id"])["status"] == "ABORTED"


def test_abort_multipart_leaves_nothing_on_s3(fm, alice):
    data = random_bytes(PART_SIZE + 1000)
    a = fm.start(alice, data)
    key = key_of(a["upload_id"])
    s3_upload_id = fm.upload_row(a["upload_id"])["s3_upload_id"]
    fm.put_parts(a, data, numbers=[1])
    assert fm.multipart_ids(key) == [s3_upload_id]
    assert fm.abort(alice, a["upload_id"]).status_code == 204
    assert fm.multipart_ids(key) == []
    with pytest.raises(botocore.exceptions.ClientError) as e:
        fm.s3.list_parts(Bucket=fm.bucket, Key=key, UploadId=s3_upload_id)
    assert e.value.response["Error"]["Code"] in ("NoSuchUpload", "NoSuchKey")
    assert fm.head(key) is None
    late = requests.put(fm.part_urls(a)[2], data=data[PART_SIZE:], timeout=30)
    assert late.status_code == 404 and s3_error_code(late) in ("NoSuchUpload", "NoSuchKey"), late.text
    assert fm.upload_row(a["upload_id"])["status"] == "ABORTED"
    assert fm.file_row(a["file_id"])["status"] == "FAILED"
    assert_error(fm.call(alice, "GET", f"/v1/uploads/{a['upload_id']}/parts"), 409, "not_pending")
    assert_error(fm.complete(alice, a["upload_id"], [{"part_number": 1, "etag": "x"}]), 409, "not_pending")


def test_abort_after_complete_is_409(fm, alice):
    data = random_bytes(100)
    a, done = fm.upload(alice, data)
    assert_error(fm.abort(alice, a["upload_id"]), 409, "already_completed")
    assert fm.head(key_of(a["upload_id"]))["ContentLength"] == len(data)
    assert fm.upload_row(a["upload_id"])["status"] == "UPLOADED"
    assert fm.file(alice, a["file_id"]).json()["status"] == "UPLOADED"


# --- completing what is not there -----------------------------------------------------------------------------------

def test_complete_without_put_is_409_object_missing(fm, alice):
    data = random_bytes(700)
    a = fm.start(alice, data)
    assert_error(fm.complete(alice, a["upload_id"]), 409, "object_missing")
    assert_still_pending(fm, alice, a)
    assert fm.put(a, data).status_code == 200
    c = fm.complete(alice, a["upload_id"])
    assert c.status_code == 200 and c.json()["status"] == "UPLOADED", c.text


def test_presigned_put_refuses_a_body_of_another_size(fm, alice):
    """Content-Length is signed: the store itself refuses more (or fewer) bytes than declared, so the declared size
    is what S3 holds and a quota or size limit cannot be walked around with a bigger body."""
    data = random_bytes(2000)
    a = fm.start(alice, data)
    fm.shield_from_reconciler(a["upload_id"])
    for body in (data[:1000], data + random_bytes(30 * 1000)):
        r = fm.put(a, body)
        assert r.status_code == 403 and b"SignatureDoesNotMatch" in r.content, (r.status_code, r.text[:300])
        assert fm.head(key_of(a["upload_id"])) is None
    assert fm.put(a, data).status_code == 200
    assert fm.head(key_of(a["upload_id"]))["ContentLength"] == 2000


def test_size_mismatch_fails_the_upload_and_deletes_the_object(fm, alice):
    """An object of another size than declared (which our signed URLs cannot make; a store that does not check
    signed headers, or another writer, could) fails the upload when it completes, and the object goes."""
    data = random_bytes(2000)
    a = fm.start(alice, data)
    fm.shield_from_reconciler(a["upload_id"])
    fm.s3.put_object(Bucket=fm.bucket, Key=key_of(a["upload_id"]), Body=data[:1000])
    assert_error(fm.complete(alice, a["upload_id"]), 409, "size_mismatch")
    assert fm.head(key_of(a["upload_id"])) is None
    row = fm.upload_row(a["upload_id"])
    assert row["status"] == "FAILED" and row["status_reason"] == "size_mismatch", row
    assert fm.file(alice, a["file_id"]).json()["status"] == "FAILED"
    assert fm.jobs_of_upload(a["upload_id"]) == []
    assert_error(fm.complete(alice, a["upload_id"]), 409, "not_pending")


def test_multipart_size_mismatch_fails_the_upload_and_deletes_the_object(fm, alice):
    data = random_bytes(PART_SIZE + 1000)
    a = fm.start(alice, data)
    p1, = fm.put_parts(a, data, numbers=[1])
    assert requests.put(fm.part_urls(a)[2], data=data[PART_SIZE:] + b"more", timeout=30).status_code == 403
    r = fm.s3.upload_part(Bucket=fm.bucket, Key=key_of(a["upload_id"]), PartNumber=2, Body=data[PART_SIZE:] + b"more",
                          UploadId=fm.upload_row(a["upload_id"])["s3_upload_id"])
    assert_error(fm.complete(alice, a["upload_id"], [p1, {"part_number": 2, "etag": r["ETag"]}]), 409,
                 "size_mismatch")
    assert fm.head(key_of(a["upload_id"])) is None
    assert fm.upload_row(a["upload_id"])["status"] == "FAILED"
    assert fm.file_row(a["file_id"])["status"] == "FAILED"
    assert fm.jobs_of_upload(a["upload_id"]) == []


# --- dedupe ---------------------------------------------------------------------------------------------------------

def dedupe_key(user):
    return f"fm:dedupe:{{{user.id}}}"


def verified_file(fm, user, content_type="text/plain"):
    """A file of `user` whose bytes a worker verified, with the worker's index entry (hash → size): what the worker
    leaves, written by Fm.mark_verified (this module runs no worker)."""
    data = random_bytes(1234)
    a, _ = fm.upload(user, data, content_type=content_type)
    fm.mark_verified(a["file_id"], data, content_type)
    return data, a


def blob_refs(fm, data):
    return int(fm.sql(f"SELECT ref_count FROM blobs WHERE sha256 = decode('{sha256_hex(data)}', 'hex')"))


def test_dedupe_same_owner_verified_blob(fm):
    owner = fm.user("dedupe")
    data, first = verified_file(fm, owner)
    files, uploads, jobs = fm.row_counts(owner)
    d = fm.start(owner, data, name="copy.txt", content_type="text/plain", expect=200)
    assert set(d) == {"file_id", "deduplicated", "status"}, d
    assert d["deduplicated"] is True and d["status"] == "READY" and d["file_id"] != first["file_id"]
    # No bytes move: no upload, no job, no object; the new file points at the blob.
    assert fm.row_counts(owner) == (files + 1, uploads, jobs)
    assert fm.sql(f"SELECT count(*) FROM files WHERE blob_sha256 = decode('{sha256_hex(data)}', 'hex')") == "2"
    f = fm.file(owner, d["file_id"]).json()
    assert f["status"] == "READY" and f["name"] == "copy.txt" and f["sha256"] == sha256_hex(data), f
    assert f["deduplicated"] is True and fm.file(owner, first["file_id"]).json()["deduplicated"] is False
    assert fm.file_row(d["file_id"])["blob"] == sha256_hex(data)


def test_dedupe_index_is_rebuilt_from_postgresql(fm):
    owner = fm.user("rebuild")
    data, _ = verified_file(fm, owner)
    other, _ = verified_file(fm, owner)
    assert fm.redis("DEL", dedupe_key(owner)) == 1
    d = fm.start(owner, data, expect=200)
    assert d["deduplicated"] is True
    index = fm.redis("HGETALL", dedupe_key(owner))
    index = dict(zip(index[::2], index[1::2]))
    assert index.get("_built") == "1", index
    assert sha256_hex(data) in index and sha256_hex(other) in index
    # An index that Redis lost the hash of entirely, rebuilt on the next start, still finds the second one.
    fm.redis("DEL", dedupe_key(owner))
    assert fm.start(owner, other, expect=200)["deduplicated"] is True


def test_no_dedupe_across_owners(fm):
    owner, stranger = fm.user("owner"), fm.user("stranger")
    data, first = verified_file(fm, owner)
    a = fm.start(stranger, data)  # 201: a normal upload
    assert a["deduplicated"] is False and a["method"] == "PUT"
    # Even if the stranger's Redis index claimed the hash, PostgreSQL decides: an entry of another form sends the
    # decision to PostgreSQL at once…
    fm.redis("HSET", dedupe_key(stranger), sha256_hex(data), "1", "_built", "1")
    b = fm.start(stranger, data)
    assert b["deduplicated"] is False and "url" in b
    assert fm.file_row(b["file_id"])["blob"] is None
    assert_error(fm.file(stranger, first["file_id"]), 404)
    # …and a forged entry of the worker's form is taken for the answer, but the record written behind is checked
    # in PostgreSQL (records.c): the file never points at the owner's blob and ends FAILED.
    fm.redis("HSET", dedupe_key(stranger), sha256_hex(data), str(len(data)))
    c = fm.start(stranger, data, expect=200)
    row = fm.file_row(c["file_id"])
    assert row["blob"] is None and row["status"] == "FAILED", row
    assert fm.file(stranger, c["file_id"]).json()["status"] == "FAILED"
    assert fm.file_row(first["file_id"])["status"] == "READY"


def test_no_dedupe_on_a_claimed_but_unverified_hash(fm):
    owner = fm.user("unverified")
    data = random_bytes(999)
    fm.upload(owner, data)  # UPLOADED, not verified: no blob yet
    fm.redis("HSET", dedupe_key(owner), sha256_hex(data), "1")
    assert fm.start(owner, data)["deduplicated"] is False
    fm.redis("DEL", dedupe_key(owner))
    assert fm.start(owner, data)["deduplicated"] is False
    # A verified blob whose size differs from the claim is no dedupe either.
    verified, _ = verified_file(fm, owner)
    a = fm.start(owner, size=len(verified) + 1, sha256=sha256_hex(verified))
    assert a["deduplicated"] is False


def make_folder(fm, user):
    return fm.sql(f"INSERT INTO folders (owner_id, name) VALUES ('{user.id}', 'f-{secrets.token_hex(4)}') RETURNING id")


def test_uploads_into_folders(fm):
    owner, other = fm.user("folders"), fm.user("folders-other")
    mine, theirs = make_folder(fm, owner), make_folder(fm, other)
    data = random_bytes(321)
    a = fm.start(owner, data, folder=mine)
    assert fm.file(owner, a["file_id"]).json()["folder_id"] == mine
    m = fm.start(owner, size=THRESHOLD + 1, sha256=sha256_hex(b"folder-multi"), folder=mine)
    assert fm.file(owner, m["file_id"]).json()["folder_id"] == mine
    assert fm.abort(owner, m["upload_id"]).status_code == 204
    before = fm.row_counts(owner)
    assert_error(fm.call(owner, "POST", "/v1/uploads", json=good_body(folder=theirs)), 404, "folder_not_found")
    assert fm.row_counts(owner) == before
    # Dedupe honours the folder too: into one's own, yes; into someone else's, no (and nothing is recorded).
    assert fm.put(a, data).status_code == 200 and fm.complete(owner, a["upload_id"]).status_code == 200
    fm.mark_verified(a["file_id"], data)
    fm.redis("DEL", dedupe_key(owner))
    d = fm.start(owner, data, folder=mine, expect=200)
    assert d["deduplicated"] is True and fm.file(owner, d["file_id"]).json()["folder_id"] == mine
    before = fm.row_counts(owner)
    refs = blob_refs(fm, data)
    body = {"name": "x", "size": len(data), "content_type": "application/octet-stream", "sha256": sha256_hex(data),
            "folder": theirs}
    assert_error(fm.call(owner, "POST", "/v1/uploads", json=body), 404, "folder_not_found")
    assert fm.row_counts(owner) == before and blob_refs(fm, data) == refs


# --- bad input ------------------------------------------------------------------------------------------------------

def good_body(**over):
    body = {"name": "ok.txt", "size": 10, "content_type": "text/plain", "sha256": "ab" * 32}
    body.update(over)
    return {k: v for k, v in body.items() if v is not ...}


BAD_BODIES = [
    ("negative size", good_body(size=-1), 422, "invalid_size"),
    ("fractional size", good_body(size=0.5), 422, "invalid_size"),
    ("fractional size above 1", good_body(size=10.25), 422, "invalid_size"),
    ("size as string", good_body(size="10"), 422, "invalid_size"),
    ("size as boolean", good_body(size=True), 422, "invalid_size"),
    ("size null", good_body(size=None), 422, "invalid_size"),
    ("size missing", good_body(size=...), 422, "invalid_size"),
    ("size above the limit", good_body(size=60 * GIB), 413, "too_large"),
    ("size 2^62", good_body(size=2 ** 62), 413, "too_large"),
    ("size 1e30", good_body(size=1e30), 413, "too_large"),
    ("sha256 of 63 digits", good_body(sha256="a" * 63), 422, "invalid_sha256"),
    ("sha256 of 65 digits", good_body(sha256="a" * 65), 422, "invalid_sha256"),
    ("sha256 not hex", good_body(sha256="g" * 64), 422, "invalid_sha256"),
    ("sha256 with a space", good_body(sha256="a" * 63 + " "), 422, "invalid_sha256"),
    ("sha256 base64", good_body(sha256="47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="), 422, "invalid_sha256"),
    ("sha256 as number", good_body(sha256=123), 422, "invalid_field"),
    ("sha256 missing", good_body(sha256=...), 422, "missing_field"),
    ("name with /", good_body(name="a/b.txt"), 422, "invalid_name"),
    ("name with \\", good_body(name="a\\b.txt"), 422, "invalid_name"),
    ("name ..", good_body(name=".."), 422, "invalid_name"),
    ("name .", good_body(name="."), 422, "invalid_name"),
    ("name ../x", good_body(name="../etc"), 422, "invalid_name"),
    ("name with NUL", good_body(name="a\u0000b"), 422, "invalid_field"),
    ("name with newline", good_body(name="a\nb"), 422, "invalid_name"),
    ("name with tab", good_body(name="a\tb"), 422, "invalid_name"),
    ("name with ESC", good_body(name="a\u001b[31mb"), 422, "invalid_name"),
    ("name with DEL", good_body(name="a\u007fb"), 422, "invalid_name"),
    ("name of 256 bytes", good_body(name="x" * 256), 422, "invalid_name"),
    ("name of 256 UTF-8 bytes", good_body(name="é" * 128), 422, "invalid_name"),
    ("name of 10 KB", good_body(name="x" * 10240), 422, "invalid_name"),
    ("name of 12 KB", good_body(name="x" * 12288), 422, "invalid_field"),
    ("name empty", good_body(name=""), 422, "invalid_field"),
    ("name as number", good_body(name=5), 422, "invalid_field"),
    ("name missing", good_body(name=...), 422, "missing_field"),
    ("content type not allowed", good_body(content_type="application/x-msdownload"), 415,
     "content_type_not_allowed"),
    ("content type html", good_body(content_type="text/html"), 415, "content_type_not_allowed"),
    ("content type nonsense", good_body(content_type="nonsense"), 415, "content_type_not_allowed"),
    ("content type empty", good_body(content_type=""), 422, "invalid_field"),
    ("content type missing", good_body(content_type=...), 422, "missing_field"),
    ("folder not a UUID", good_body(folder="../x"), 422, "invalid_folder"),
    ("folder as number", good_body(folder=7), 422, "invalid_folder"),
    ("folder nobody has", good_body(folder=str(uuid.uuid4())), 404, "folder_not_found"),
    ("multipart into a folder nobody has", good_body(size=THRESHOLD + 1, folder=str(uuid.uuid4())), 404,
     "folder_not_found"),
]


@pytest.fixture(scope="module")
def carol(fm):
    return fm.user("carol")


@pytest.mark.parametrize("what,body,status,code", BAD_BODIES,
                         ids=[b[0] if isinstance(b, tuple) else None for b in BAD_BODIES])
def test_bad_upload_requests_record_nothing(fm, carol, what, body, status, code):
    before = fm.row_counts(carol)
    multiparts = len(fm.s3.list_multipart_uploads(Bucket=fm.bucket, Prefix="incoming/").get("Uploads", []))
    assert_error(fm.call(carol, "POST", "/v1/uploads", json=body), status, code)
    assert fm.row_counts(carol) == before, f"{what}: rows were added"
    # Nothing left behind on S3 either (a multipart upload is created before the rows; fm-control aborts it
    # right after answering).
    assert wait_for(lambda: len(fm.s3.list_multipart_uploads(Bucket=fm.bucket, Prefix="incoming/")
                                .get("Uploads", [])) == multiparts, 5), "a multipart upload was left on S3"


BAD_RAW = [
    ("not JSON", b"{", "application/json", 400, "invalid_json"),
    ("a list", b"[]", "application/json", 400, "invalid_json"),
    ("null", b"null", "application/json", 400, "invalid_json"),
    ("trailing bytes", json.dumps(good_body()).encode() + b" x", "application/json", 400, "invalid_json"),
    ("empty", b"", "application/json", 400, "invalid_json"),
    ("invalid UTF-8", b'{"name":"\xff\xfe","size":1,"content_type":"text/plain","sha256":"' + b"a" * 64 + b'"}',
     "application/json", 400, "invalid_json"),
    ("raw control character", b'{"name":"a\x01b","size":1,"content_type":"text/plain","sha256":"' + b"a" * 64 + b'"}',
     "application/json", 400, "invalid_json"),
    ("form encoded", b"name=x&size=1", "application/x-www-form-urlencoded", 415, None),
    ("no content type", json.dumps(good_body()).encode(), None, 415, None),
    ("body above 16 KiB", json.dumps(good_body(pad="x" * 20000)).encode(), "application/json", 413, None),
]


@pytest.mark.parametrize("what,data,ctype,status,code", BAD_RAW, ids=[b[0] for b in BAD_RAW])
def test_malformed_upload_bodies(fm, carol, what, data, ctype, status, code):
    before = fm.row_counts(carol)
    headers = {"Content-Type": ctype} if ctype else {}
    r = fm.call(carol, "POST", "/v1/uploads", data=data, headers=headers)
    assert_error(r, status, code)
    assert fm.row_counts(carol) == before


def test_names_at_the_limits_are_accepted(fm, carol):
    for name in ("x" * 255, "é" * 127 + "x", "...", ".hidden", "a..b", "日本語 ファイル.txt", "💾.bin", " spaced "):
        a = fm.start(carol, b"n", name=name)
        f = fm.file(carol, a["file_id"]).json()
        assert f["name"] == name
        assert fm.abort(carol, a["upload_id"]).status_code == 204


def test_sha256_in_upper_case_is_normalised(fm, carol):
    data = random_bytes(10)
    a = fm.start(carol, data, sha256=sha256_hex(data).upper())
    assert fm.file(carol, a["file_id"]).json()["sha256"] == sha256_hex(data)
    assert fm.abort(carol, a["upload_id"]).status_code == 204


def test_uploads_need_a_token(fm):
    assert_unauthorized(requests.post(fm.base + "/v1/uploads", json=good_body(), timeout=10))
    some = str(uuid.uuid4())
    for method, path in (("POST", f"/v1/uploads/{some}/complete"), ("DELETE", f"/v1/uploads/{some}"),
                         ("GET", f"/v1/uploads/{some}/parts"), ("POST", f"/v1/uploads/{some}/parts"),
                         ("GET", f"/v1/files/{some}"), ("GET", f"/v1/jobs/{some}")):
        assert_unauthorized(requests.request(method, fm.base + path, timeout=10))
    bad = {"Authorization": "Bearer not.a.token"}
    assert_unauthorized(requests.post(fm.base + "/v1/uploads", json=good_body(), headers=bad, timeout=10))


def test_viewer_cannot_upload(fm):
    viewer = fm.user("viewer")
    fm.sql(f"UPDATE users SET role = 'viewer' WHERE id = '{viewer.id}'")
    fm.relogin(viewer)
    before = fm.row_counts(viewer)
    assert_error(fm.call(viewer, "POST", "/v1/uploads", json=good_body()), 403, "forbidden")
    assert_error(fm.call(viewer, "POST", "/v1/uploads", json=good_body(size=THRESHOLD + 1)), 403, "forbidden")
    assert fm.row_counts(viewer) == before
    assert fm.call(viewer, "GET", "/v1/me").status_code == 200


def test_someone_elses_upload_is_not_found(fm, alice, bob):
    data = random_bytes(PART_SIZE + 10)
    single = fm.start(alice, data[:100])
    fm.shield_from_reconciler(single["upload_id"])
    assert fm.put(single, data[:100]).status_code == 200
    multi = fm.start(alice, data)
    done_a, done = fm.upload(alice, random_bytes(50))
    for a in (single, multi, done_a):
        uid = a["upload_id"]
        assert_error(fm.complete(bob, uid), 404, "upload_not_found")
        assert_error(fm.complete(bob, uid, [{"part_number": 1, "etag": "x"}]), 404, "upload_not_found")
        assert_error(fm.abort(bob, uid), 404, "upload_not_found")
        assert_error(fm.call(bob, "GET", f"/v1/uploads/{uid}/parts"), 404, "upload_not_found")
        assert_error(fm.call(bob, "POST", f"/v1/uploads/{uid}/parts", json={"part_numbers": [1]}), 404,
                     "upload_not_found")
        assert_error(fm.file(bob, a["file_id"]), 404)
    assert_error(fm.job(bob, done["job_id"]), 404)
    # The same answer as for an id that does not exist at all.
    assert_error(fm.complete(bob, str(uuid.uuid4())), 404, "upload_not_found")
    # Nothing of alice's moved.
    assert fm.upload_row(single["upload_id"])["status"] == "PENDING"
    assert fm.head(key_of(single["upload_id"]))["ContentLength"] == 100
    assert fm.multipart_ids(key_of(multi["upload_id"])) == [fm.upload_row(multi["upload_id"])["s3_upload_id"]]
    assert fm.upload_row(done_a["upload_id"])["status"] == "UPLOADED"
    assert fm.abort(alice, single["upload_id"]).status_code == 204
    assert fm.abort(alice, multi["upload_id"]).status_code == 204


BAD_IDS = ["not-a-uuid", "1", "0" * 36, "g" * 8 + "-0000-0000-0000-" + "0" * 12, str(uuid.uuid4()) + "0",
           str(uuid.uuid4())[:-1], "..%2F..%2Fetc", "%00", "x" * 300]


@pytest.mark.parametrize("bad_id", BAD_IDS, ids=[i if len(i) < 40 else f"{i[:10]}...({len(i)})" for i in BAD_IDS])
def test_invalid_ids_in_paths_are_404(fm, alice, bad_id):
    for method, path in (("POST", f"/v1/uploads/{bad_id}/complete"), ("DELETE", f"/v1/uploads/{bad_id}"),
                         ("GET", f"/v1/uploads/{bad_id}/parts"), ("POST", f"/v1/uploads/{bad_id}/parts"),
                         ("GET", f"/v1/files/{bad_id}"), ("GET", f"/v1/jobs/{bad_id}")):
        r = fm.call(alice, method, path, json={"part_numbers": [1]} if path.endswith("parts") else None)
        assert_error(r, 404)
    assert fm.call(alice, "GET", "/healthz").status_code == 200
