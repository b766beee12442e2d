"""S3 event notifications → jobs, and the reconciler (DESIGN.md §4 "S3 events → jobs": "missing the event never loses
an upload"), against the real stack: Ceph RGW's own notifications, hand-made AWS-shaped messages, races with
`complete`, and uploads whose event never came.

The same dedicated fm-control as test_uploads.py (helpers_uploads.uploads_control: FM_EVENTS_SECRET set,
reconciler every second, a Redis database of its own). The bucket's notifications are off in this module except
inside the test that points them at that instance.

Run: /usr/bin/python3 -m pytest -q tests/integration/test_events.py
"""
import hashlib
import json
import socket
import threading
import time
import uuid

import pytest
import requests

from helpers_fm import assert_error, wait_for
from helpers_uploads import (EVENTS_SECRET, PART_SIZE, aws_record, key_of, notifications_to, post_event,
                             put_notifications, random_bytes, shared_uploads_fm)


@pytest.fixture(scope="module")
def fm(controls, stack):
    with shared_uploads_fm(controls, stack) as f:
        yield f


@pytest.fixture(scope="module")
def user(fm):
    return fm.user("events")


def md5(data):
    return hashlib.md5(data).hexdigest()


def summary(records=1, enqueued=0, duplicates=0, failed=0, deleted=0, ignored=0):
    return {"records": records, "enqueued": enqueued, "duplicates": duplicates, "failed": failed, "deleted": deleted,
            "ignored": ignored}


def put_pending(fm, user, data=None, shield=True):
    """A single-PUT upload whose object is in the bucket but that nobody completed; kept away from the 1 s
    reconciler (shield) so that only what the test sends can move it."""
    data = random_bytes(1500) if data is None else data
    a = fm.start(user, data)
    if shield:
        fm.shield_from_reconciler(a["upload_id"])
    assert fm.put(a, data).status_code == 200
    return a, data


def event_for(fm, a, data, **kw):
    return {"Records": [aws_record(fm.bucket, key_of(a["upload_id"]), len(data), etag=md5(data), **kw)]}


def ceph_record(bucket, key, size, etag):
    """One record as Ceph RGW 16 sends it: eventSource ceph:s3, the key as it is, no region."""
    return {
        "eventVersion": "2.2", "eventSource": "ceph:s3", "awsRegion": "", "eventTime": "2026-11-23T16:36:46.500399Z",
        "eventName": "ObjectCreated:Put", "userIdentity": {"principalId": "fm"},
        "requestParameters": {"sourceIPAddress": ""}, "responseElements": {"x-amz-request-id": "x", "x-amz-id-2": "y"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "files-manager-uploads",
               "bucket": {"name": bucket, "ownerIdentity": {"principalId": "fm"}, "arn": f"arn:aws:s3:::{bucket}",
                          "id": "b"},
               "object": {"key": key, "size": size, "eTag": etag, "versionId": "", "sequencer": "0A1B2C",
                          "metadata": [], "tags": []}},
        "eventId": "1", "opaqueData": "",
    }


def assert_one_job(fm, a, by=None):
    """The upload is UPLOADED with exactly one job row and one stream entry; returns the job id."""
    row = fm.upload_row(a["upload_id"])
    assert row["status"] == "UPLOADED", row
    if by is not None:
        assert row["completed_by"] == by, row
    jobs = fm.jobs_of_upload(a["upload_id"])
    assert len(jobs) == 1, jobs
    # The stream entry follows the commit that made the job (the XADD comes after it): allow it a moment.
    entries = wait_for(lambda: fm.stream_entries(jobs[0]), 5) or []
    assert len(entries) == 1, entries
    assert entries[0]["upload_id"] == a["upload_id"] and entries[0]["file_id"] == a["file_id"]
    return jobs[0]


# --- real notifications from Ceph RGW -------------------------------------------------------------------------------

def test_rgw_notification_marks_an_upload_nobody_completed(fm, user):
    url = f"{fm.base}/v1/events/s3?secret={EVENTS_SECRET}"
    notifications_to(fm, url)
    try:
        a, data = put_pending(fm, user)
        assert wait_for(lambda: fm.upload_row(a["upload_id"])["status"] == "UPLOADED", 20), \
            f"no event within 20 s; fm-control log:\n{fm.svc.log_text()[-3000:]}"
        job_id = assert_one_job(fm, a, by="event")
        assert fm.upload_row(a["upload_id"])["etag"] == md5(data)
        assert fm.file(user, a["file_id"]).json()["status"] == "UPLOADED"
        j = fm.job(user, job_id).json()
        assert j["status"] == "QUEUED" and j["upload_id"] == a["upload_id"]
        # The client's own `complete` arrives later: the same job.
        c = fm.complete(user, a["upload_id"])
        assert c.status_code == 200 and c.json()["job_id"] == job_id, c.text

        # Multipart: our CompleteMultipartUpload raises an event of its own while `complete` is still running.
        big = random_bytes(PART_SIZE + 4096)
        m = fm.start(user, big)
        parts = fm.put_parts(m, big)
        c = fm.complete(user, m["upload_id"], parts)
        assert c.status_code == 200, c.text
        time.sleep(1)  # room for a late event to (wrongly) make a second job
        assert assert_one_job(fm, m) == c.json()["job_id"]
    finally:
        put_notifications(fm, [])


# --- hand-made messages ---------------------------------------------------------------------------------------------

def test_aws_shaped_event_enqueues_once(fm, user):
    a, data = put_pending(fm, user)
    body = event_for(fm, a, data)
    assert "%2F" in body["Records"][0]["s3"]["object"]["key"]  # form-urlencoded, as AWS sends it
    r = post_event(fm.base, body)
    assert r.status_code == 200, r.text
    assert r.json() == summary(enqueued=1)
    job_id = assert_one_job(fm, a, by="event")
    assert fm.upload_row(a["upload_id"])["etag"] == md5(data)
    assert fm.file(user, a["file_id"]).json()["status"] == "UPLOADED"

    # At-least-once delivery: the same event again, by query or header secret, changes nothing.
    again = post_event(fm.base, body)
    assert again.status_code == 200 and again.json() == summary(duplicates=1), again.text
    again = post_event(fm.base, body, how="header")
    assert again.status_code == 200 and again.json() == summary(duplicates=1), again.text
    assert assert_one_job(fm, a) == job_id
    c = fm.complete(user, a["upload_id"])
    assert c.status_code == 200 and c.json()["job_id"] == job_id


def test_a_batch_of_aws_and_rgw_shaped_records(fm, user):
    a, da = put_pending(fm, user)
    b, db = put_pending(fm, user)
    body = {"Records": [
        aws_record(fm.bucket, key_of(a["upload_id"]), len(da), etag=md5(da), event="ObjectCreated:Post"),
        ceph_record(fm.bucket, key_of(b["upload_id"]), len(db), md5(db)),
        aws_record(fm.bucket, "incoming/not an upload.txt", 3),
    ]}
    r = post_event(fm.base, body)
    assert r.status_code == 200 and r.json() == summary(records=3, enqueued=2, ignored=1), r.text
    assert_one_job(fm, a, by="event")
    assert_one_job(fm, b, by="event")
    r = post_event(fm.base, body)
    assert r.json() == summary(records=3, duplicates=2, ignored=1)


def race(calls, lead=None):
    """Sends `calls` ({name: function making one request}) and returns {name: response}. With no `lead` all are
    released together from a barrier, so which one the server takes first is up to its threads; with `lead` named,
    that call is answered first and the others are then released together: the lead's outcome is certain, the
    rest still race each other."""
    out = {}
    if lead is not None:
        out[lead] = calls[lead]()
    rest = {name: call for name, call in calls.items() if name != lead}
    barrier = threading.Barrier(len(rest))

    def send(name, call):
        barrier.wait()
        out[name] = call()

    threads = [threading.Thread(target=send, args=item) for item in rest.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(out) == set(calls), f"a request raised instead of answering: {sorted(set(calls) - set(out))}"
    return out


def test_event_and_complete_racing_make_one_job(fm, user):
    """Two deliveries of the event and the client's `complete`, all at once, many times: one job every time.

    Either side may be first to mark the upload (`completed_by`), and the invariant is checked for whichever was.
    Which one wins a round released together is up to the server's threads and cannot be steered, so besides those
    rounds, some give one side a head start (answered before the others go, which still race each other) and the
    test requires that both outcomes were seen: the checks of each side's win have really run."""
    leads = [None] * 10 + ["event1", "complete"] * 2
    pending = [put_pending(fm, user, random_bytes(100 + i)) for i in range(len(leads))]
    winners, together = {}, {}
    for (a, data), lead in zip(pending, leads):
        body = event_for(fm, a, data)
        out = race({"event1": lambda: post_event(fm.base, body), "event2": lambda: post_event(fm.base, body),
                    "complete": lambda: fm.complete(user, a["upload_id"])}, lead)
        assert out["complete"].status_code == 200, out["complete"].text
        events = [out["event1"].json(), out["event2"].json()]
        assert all(e["failed"] == 0 and e["ignored"] == 0 and e["records"] == 1 for e in events), events
        enqueued = sum(e["enqueued"] for e in events)
        assert enqueued in (0, 1), events
        job_id = assert_one_job(fm, a)
        assert out["complete"].json()["job_id"] == job_id
        by = fm.upload_row(a["upload_id"])["completed_by"]
        assert (by == "event") == (enqueued == 1), (by, events)
        if lead is not None:
            assert by == ("event" if lead == "event1" else "complete"), (lead, by, events)
        else:
            together[by] = together.get(by, 0) + 1
        winners[by] = winners.get(by, 0) + 1
    print("first to mark the upload:", winners, "of which released together:", together)
    assert set(winners) == {"event", "complete"}, winners


def test_events_not_for_our_uploads_are_ignored(fm, user):
    a, data = put_pending(fm, user)
    aborted = fm.start(user, b"gone")
    assert fm.abort(user, aborted["upload_id"]).status_code == 204
    uid, key = a["upload_id"], key_of(a["upload_id"])
    records = [
        aws_record("another-bucket", key, len(data), etag=md5(data)),
        aws_record(fm.bucket, key, len(data), etag=md5(data), event="ObjectRemoved:Delete"),
        aws_record(fm.bucket, key, len(data), etag=md5(data), event="ObjectRestore:Completed"),
        aws_record(fm.bucket, key_of(str(uuid.uuid4())), 10),
        aws_record(fm.bucket, "other/file.txt", 10),
        aws_record(fm.bucket, "incoming/" + uid.upper(), len(data)),
        aws_record(fm.bucket, key + "/x", len(data)),
        aws_record(fm.bucket, "incoming/", 0),
        aws_record(fm.bucket, key_of(aborted["upload_id"]), 4),
    ]
    r = post_event(fm.base, {"Records": records})
    assert r.status_code == 200 and r.json() == summary(records=len(records), ignored=len(records)), r.text
    assert fm.upload_row(uid)["status"] == "PENDING"
    assert fm.upload_row(aborted["upload_id"])["status"] == "ABORTED"
    assert fm.jobs_of_upload(uid) == [] and fm.jobs_of_upload(aborted["upload_id"]) == []


def test_s3_test_event_has_no_records(fm):
    body = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2026-11-23T16:36:46.500Z",
            "Bucket": fm.bucket, "RequestId": "5582815E1AEA5ADF", "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9"}
    r = post_event(fm.base, body)
    assert r.status_code == 200 and r.json() == summary(records=0), r.text


def test_events_need_the_secret(fm, user):
    a, data = put_pending(fm, user)
    body = event_for(fm, a, data)
    tokens_as_secret = {"Authorization": f"Bearer {user.token}"}
    for how, secret, headers in (("query", None, None), ("query", "", None), ("query", "wrong" * 8, None),
                                 ("query", EVENTS_SECRET.upper(), None), ("query", EVENTS_SECRET[:-1], None),
                                 ("query", EVENTS_SECRET + "0", None), ("header", "wrong", None),
                                 ("header", EVENTS_SECRET[1:], None), ("query", None, tokens_as_secret)):
        r = post_event(fm.base, body, secret=secret, how=how, headers=headers)
        assert_error(r, 401, "invalid_secret")
        assert EVENTS_SECRET not in r.text
    assert fm.upload_row(a["upload_id"])["status"] == "PENDING"
    assert fm.jobs_of_upload(a["upload_id"]) == []
    r = post_event(fm.base, body)
    assert r.status_code == 200 and r.json()["enqueued"] == 1


def test_event_body_too_large_is_413(fm):
    """A 5 MB message (above FM_MAX_BODY_BYTES): 413 as soon as the headers announce it, before the body is read
    (sending all of it first would meet a closed connection, which is fine for a server to do)."""
    record = json.dumps(aws_record(fm.bucket, "other/x", 1))
    body = ('{"Records":[' + ",".join([record] * 8000) + "]}").encode()
    assert len(body) > 5_000_000
    with socket.create_connection(("127.0.0.1", fm.svc.port), timeout=10) as s:
        s.sendall((f"POST /v1/events/s3?secret={EVENTS_SECRET} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
                  + body[:65536])
        head = s.makefile("rb").readline()
    assert head.split()[1] == b"413", head
    assert requests.get(fm.base + "/healthz", timeout=5).status_code == 200
    # Within the limit, a message is read whatever its number of records (here: none of them ours).
    small = ('{"Records":[' + ",".join([record] * 50) + "]}").encode()
    r = post_event(fm.base, small)
    assert r.status_code == 200 and r.json() == summary(records=50, ignored=50), r.text


def test_event_body_too_large_is_a_json_error(fm):
    with socket.create_connection(("127.0.0.1", fm.svc.port), timeout=10) as s:
        s.sendall((f"POST /v1/events/s3?secret={EVENTS_SECRET} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                   f"Content-Type: application/json\r\nContent-Length: 5000000\r\n\r\n").encode())
        f = s.makefile("rb")
        status = f.readline()
        headers = {}
        while (line := f.readline().strip()):
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        body = f.read(int(headers.get("content-length", "0")))
    assert status.split()[1] == b"413", status
    assert headers.get("content-type", "").startswith("application/json"), (headers, body)
    err = json.loads(body)["error"]
    assert err["code"] and err["request_id"] == headers.get("x-request-id"), err


INVALID_EVENTS = [
    ("not JSON", b"{"),
    ("empty", b""),
    ("a list", b"[]"),
    ("null", b"null"),
    ("Records not a list", b'{"Records":"x"}'),
    ("record without fields", b'{"Records":[{}]}'),
    ("record without key", b'{"Records":[{"eventVersion":"2.1","eventName":"ObjectCreated:Put",'
                           b'"s3":{"bucket":{"name":"b"},"object":{}}}]}'),
    ("NUL escape", b'{"Records":[{"eventVersion":"2.1","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},'
                   b'"object":{"key":"incoming/a\\u0000"}}}]}'),
    ("invalid UTF-8", b'{"Records":[\xff]}'),
    ("trailing garbage", b'{"Records":[]} x'),
]


@pytest.mark.parametrize("what,data", INVALID_EVENTS, ids=[i[0] for i in INVALID_EVENTS])
def test_invalid_event_bodies_are_400(fm, what, data):
    r = requests.post(f"{fm.base}/v1/events/s3?secret={EVENTS_SECRET}", data=data,
                      headers={"Content-Type": "application/json"}, timeout=10)
    assert_error(r, 400)


def test_a_batch_with_one_bad_record_is_refused_whole(fm, user):
    a, data = put_pending(fm, user)
    good = aws_record(fm.bucket, key_of(a["upload_id"]), len(data), etag=md5(data))
    bad_key = aws_record(fm.bucket, "x", 1)
    bad_key["s3"]["object"]["key"] = "incoming%2F%zz"
    bad_size = aws_record(fm.bucket, "y", 1)
    bad_size["s3"]["object"]["size"] = -5
    for bad in (bad_key, bad_size):
        assert_error(post_event(fm.base, {"Records": [good, bad]}), 400)
        assert fm.upload_row(a["upload_id"])["status"] == "PENDING"
        assert fm.jobs_of_upload(a["upload_id"]) == []


def put_other_size(fm, a, body):
    """An object of another size than declared at the upload's key. Our presigned URL signs the size, so the store
    refuses it there (403); another writer (a store that does not check signed headers) could still put it."""
    assert fm.put(a, body).status_code == 403
    fm.s3.put_object(Bucket=fm.bucket, Key=key_of(a["upload_id"]), Body=body)


def test_event_with_another_size_fails_the_upload(fm, user):
    """The object holds fewer bytes than announced (the event says so, and HEAD confirms it): FAILED, object gone."""
    data = random_bytes(1500)
    a = fm.start(user, data)
    fm.shield_from_reconciler(a["upload_id"])
    put_other_size(fm, a, data[:1000])
    body = {"Records": [aws_record(fm.bucket, key_of(a["upload_id"]), 1000, etag=md5(data[:1000]))]}
    r = post_event(fm.base, body)
    assert r.status_code == 200 and r.json() == summary(failed=1), r.text
    row = fm.upload_row(a["upload_id"])
    assert row["status"] == "FAILED" and row["status_reason"] == "size_mismatch", row
    assert fm.file(user, a["file_id"]).json()["status"] == "FAILED"
    assert fm.jobs_of_upload(a["upload_id"]) == []
    assert fm.head(key_of(a["upload_id"])) is None
    assert_error(fm.complete(user, a["upload_id"]), 409, "not_pending")


# --- finding 14: the event is a hint, the object is the truth ---------------------------------------------------------

def test_forged_event_without_object_marks_nothing(fm, user):
    """Somebody holding the events secret announces an object that was never PUT: ignored, the upload stays PENDING
    (before: UPLOADED with a job for bytes that do not exist)."""
    a = fm.start(user, random_bytes(1500))
    fm.shield_from_reconciler(a["upload_id"])
    body = {"Records": [aws_record(fm.bucket, key_of(a["upload_id"]), 1500)]}
    r = post_event(fm.base, body)
    assert r.status_code == 200 and r.json() == summary(ignored=1), r.text
    assert fm.upload_row(a["upload_id"])["status"] == "PENDING"
    assert fm.jobs_of_upload(a["upload_id"]) == []
    assert fm.file(user, a["file_id"]).json()["status"] == "PENDING_UPLOAD"


def test_event_size_and_etag_are_taken_from_the_object(fm, user):
    """An event that lies about the size and ETag of an object that exists: what is recorded is what HEAD says. The
    announced size matches the object here, so the upload is marked, with the object's ETag; a lie the other way
    (the event says the right size, the object is shorter) fails the upload."""
    a, data = put_pending(fm, user)
    body = {"Records": [aws_record(fm.bucket, key_of(a["upload_id"]), len(data) + 999, etag="0" * 32)]}
    r = post_event(fm.base, body)
    assert r.status_code == 200 and r.json() == summary(enqueued=1), r.text
    assert_one_job(fm, a, by="event")
    assert fm.upload_row(a["upload_id"])["etag"] == md5(data)
    job = fm.sql_row(f"SELECT row_to_json(j) FROM (SELECT payload->>'etag' AS etag, (payload->>'size')::bigint AS size"
                     f" FROM jobs WHERE upload_id = '{a['upload_id']}') j")
    assert job == {"etag": md5(data), "size": len(data)}, job

    short = random_bytes(1500)
    b = fm.start(user, short)
    fm.shield_from_reconciler(b["upload_id"])
    put_other_size(fm, b, short[:700])
    r = post_event(fm.base, {"Records": [aws_record(fm.bucket, key_of(b["upload_id"]), 1500, etag=md5(short))]})
    assert r.status_code == 200 and r.json() == summary(failed=1), r.text
    assert fm.upload_row(b["upload_id"])["status"] == "FAILED"
    assert fm.head(key_of(b["upload_id"])) is None


# --- the reconciler -------------------------------------------------------------------------------------------------

def test_reconciler_enqueues_an_upload_whose_event_was_lost(fm, user):
    """Notifications are off: the object lands, no event comes, the client never calls complete."""
    a, data = put_pending(fm, user, shield=False)
    assert wait_for(lambda: fm.upload_row(a["upload_id"])["status"] == "UPLOADED", 40), \
        f"not reconciled in 40 s; log:\n{fm.svc.log_text()[-3000:]}"
    job_id = assert_one_job(fm, a, by="reconciler")
    assert fm.upload_row(a["upload_id"])["etag"] == md5(data)
    assert fm.job(user, job_id).json()["status"] == "QUEUED"
    c = fm.complete(user, a["upload_id"])
    assert c.status_code == 200 and c.json()["job_id"] == job_id


def test_reconciler_leaves_uploads_without_object_pending(fm, user):
    a = fm.start(user, b"never sent")
    fm.reconcile_rounds(3)
    assert fm.upload_row(a["upload_id"])["status"] == "PENDING"
    assert fm.jobs_of_upload(a["upload_id"]) == []
    assert fm.abort(user, a["upload_id"]).status_code == 204


def test_reconciler_puts_jobs_missing_from_the_stream_back(fm, user):
    """A job whose XADD failed (enqueued_at NULL, not on the stream) is added by the next rounds."""
    a, done = fm.upload(user, random_bytes(300))
    job_id = done["job_id"]
    entry_ids = [e[0] for e in fm.redis("XRANGE", "jobs", "-", "+") if dict(zip(e[1][::2], e[1][1::2]))
                 .get("job_id") == job_id]
    assert len(entry_ids) == 1
    fm.redis("XDEL", "jobs", entry_ids[0])
    # 3 s old: due for this instance (1 s interval), not yet for the suite's other instances (30 s).
    fm.sql(f"UPDATE jobs SET enqueued_at = NULL, created_at = now() - interval '3 seconds' WHERE id = '{job_id}'")
    assert wait_for(lambda: len(fm.stream_entries(job_id)) == 1, 15)
    # enqueued_at is recorded right after the XADD answered
    assert wait_for(lambda: fm.sql(f"SELECT enqueued_at IS NOT NULL FROM jobs WHERE id = '{job_id}'") == "t", 5)
    fm.reconcile_rounds(1)  # a later round does not add it again
    assert len(fm.stream_entries(job_id)) == 1


def backdate(fm, *uploads, unshield=False):
    """Makes the uploads three days old, their URLs long expired; `unshield` also ends a hold (checked_at now: the
    reconciler's expiry waits for a listing that began after it)."""
    ids = ",".join(f"'{a['upload_id']}'" for a in uploads)
    hold = ", checked_at = now()" if unshield else ""
    fm.sql(f"UPDATE uploads SET created_at = now() - interval '3 days', expires_at = now() - interval '71 hours'{hold} "
           f"WHERE id IN ({ids})")


def test_reconciler_expires_abandoned_uploads(fm, user):
    without = fm.start(user, b"nothing")
    big = random_bytes(PART_SIZE + 100)
    multi = fm.start(user, big)
    fm.put_parts(multi, big, numbers=[1])
    s3_upload_id = fm.upload_row(multi["upload_id"])["s3_upload_id"]
    assert fm.multipart_ids(key_of(multi["upload_id"])) == [s3_upload_id]
    everything = (without, multi)
    backdate(fm, *everything)
    assert wait_for(lambda: all(fm.upload_row(a["upload_id"])["status"] == "EXPIRED" for a in everything), 15), \
        [fm.upload_row(a["upload_id"]) for a in everything]
    for a in everything:
        row = fm.file_row(a["file_id"])
        assert row["status"] == "FAILED" and row["status_reason"] == "upload expired", row
        assert fm.head(key_of(a["upload_id"])) is None
        assert fm.jobs_of_upload(a["upload_id"]) == []
        assert_error(fm.complete(user, a["upload_id"]), 409, "not_pending")
        assert fm.abort(user, a["upload_id"]).status_code == 204
    assert fm.multipart_ids(key_of(multi["upload_id"])) == []


def test_an_old_upload_whose_object_exists_is_marked_never_expired(fm, user):
    """Three days old, its URL long expired, never completed, its event lost -- but its object is in the bucket: the
    client PUT it with our URL, so it is an accepted upload (DESIGN.md §6 rule 3). Before: expired, object deleted."""
    a, data = put_pending(fm, user)  # held from the reconciler until it is old
    backdate(fm, a, unshield=True)
    assert wait_for(lambda: fm.upload_row(a["upload_id"])["status"] != "PENDING", 15), fm.upload_row(a["upload_id"])
    assert_one_job(fm, a, by="reconciler")
    assert fm.head(key_of(a["upload_id"]))["ContentLength"] == len(data)
    fm.reconcile_rounds(2)  # rounds later: still there, still UPLOADED
    assert fm.upload_row(a["upload_id"])["status"] == "UPLOADED"
    assert fm.head(key_of(a["upload_id"])) is not None


def test_file_status_is_fresh_after_the_reconciler(fm, user):
    a = fm.start(user, b"stale?")
    assert fm.file(user, a["file_id"]).json()["status"] == "PENDING_UPLOAD"  # now cached
    assert fm.put(a, b"stale?").status_code == 200
    assert wait_for(lambda: fm.upload_row(a["upload_id"])["status"] == "UPLOADED", 15)
    assert fm.file(user, a["file_id"]).json()["status"] == "UPLOADED"


@pytest.mark.parametrize("found_by", ["event", "reconciler"])
def test_object_of_a_size_mismatch_is_deleted(fm, user, found_by):
    data = random_bytes(1500)
    a = fm.start(user, data)
    if found_by == "event":
        fm.shield_from_reconciler(a["upload_id"])
    put_other_size(fm, a, data[:1000])
    if found_by == "event":
        body = {"Records": [aws_record(fm.bucket, key_of(a["upload_id"]), 1000, etag=md5(data[:1000]))]}
        assert post_event(fm.base, body).json() == summary(failed=1)
    assert wait_for(lambda: fm.upload_row(a["upload_id"])["status"] == "FAILED", 15)
    assert fm.file_row(a["file_id"])["status"] == "FAILED"
    assert fm.jobs_of_upload(a["upload_id"]) == []
    backdate(fm, a)  # even once it is old enough to count as abandoned
    assert wait_for(lambda: fm.head(key_of(a["upload_id"])) is None, 4), "the object is still in the bucket"


@pytest.mark.parametrize("rival", ["event", "complete"])
def test_abort_racing_never_loses_a_committed_upload(fm, user, rival):
    """Abort against an event or `complete`, at once, many times. Whoever wins, the end is consistent: ABORTED
    (204, no job, no object) or UPLOADED (409 to the abort, one job, the object still in the bucket).

    Which side wins a round released together cannot be steered (the server's threads decide), so some rounds give
    one side a head start (answered before the other goes), alternating, and the test requires both ends to have
    been seen: the checks of either end have really run."""
    outcomes, together, lost = {}, {}, []
    for lead in [None] * 10 + ["abort", rival] * 2:
        a, data = put_pending(fm, user)
        body = event_for(fm, a, data)
        other = (lambda: post_event(fm.base, body)) if rival == "event" else (lambda: fm.complete(user, a["upload_id"]))
        out = race({rival: other, "abort": lambda: fm.abort(user, a["upload_id"])}, lead)
        status = fm.upload_row(a["upload_id"])["status"]
        if lead is not None:
            assert status == ("ABORTED" if lead == "abort" else "UPLOADED"), (lead, status, out["abort"].text)
        else:
            together[status] = together.get(status, 0) + 1
        outcomes[(status, out["abort"].status_code)] = outcomes.get((status, out["abort"].status_code), 0) + 1
        if status == "ABORTED":
            assert out["abort"].status_code == 204
            assert fm.jobs_of_upload(a["upload_id"]) == []
            assert fm.head(key_of(a["upload_id"])) is None
            if rival == "complete":
                assert out[rival].status_code == 409, out[rival].text
        else:
            assert status == "UPLOADED" and out["abort"].status_code == 409, (status, out["abort"].text)
            assert_one_job(fm, a)
            if fm.head(key_of(a["upload_id"])) is None:
                lost.append(a["upload_id"])
    print(rival, outcomes, "released together:", together, "lost:", len(lost))
    assert not lost, f"{len(lost)} committed uploads lost their object ({outcomes})"
    assert {status for status, _ in outcomes} == {"ABORTED", "UPLOADED"}, outcomes
