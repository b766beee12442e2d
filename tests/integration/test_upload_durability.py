"""Accepted uploads are never lost, and bytes that come after the fact are never kept (issue 10, "Data safety";
DESIGN.md §6 rule 3: no object a client PUT with our URL is ever lost).

Against the real stack (PostgreSQL, Redis, Ceph RGW), with two fm-control instances of this module:
  - `dur`: the reconciler every DUR_INTERVAL_S seconds, records written behind as usual (FM_RECORD_FLUSH_MS 50);
  - `slow`: records stay in Redis for a minute (FM_RECORD_FLUSH_MS 60000), no reconciler round during a test.
The bucket's notifications are off in this module (helpers_uploads.dedicated), except in the test that makes its own
persistent topic: an event is delivered only where a test says so.

What is tested:
  - 100,000 abandoned presigns (never PUT) do not hide the uploads that did arrive: 50 uploads whose events never
    came are UPLOADED within two reconciler intervals; the abandoned ones get no S3 call each and expire by one
    UPDATE once old (control-plane/incoming.c, reconcile.c step 3, schema/009_reconcile.sql);
  - an object PUT with the old presigned URL after the upload was finished (READY, QUARANTINED, job failed for
    good) is deleted by the event or by the reconciler's listing, and the file keeps its verified bytes; an event for
    an upload still being processed changes nothing (events.c, incoming.c);
  - the events route records what it can while Redis is away (uploads already in PostgreSQL) and answers 503 only
    for a record still only in Redis; the persistent topic delivers that event again once it can be taken.

The 100,000 presigns are inserted with one SQL statement in the shape records.c's flusher writes (a `files` row
PENDING_UPLOAD and an `uploads` row PENDING, method PUT, key incoming/{id}, created over the last hour, URL valid for
an hour): POST /v1/uploads in a loop would take minutes here, and what the reconciler sees is the same rows.

Redis databases: 10 and 11, shared with test_upload_records.py's instances (stopped at the end of that module; these
are stopped at the end of this one). Run: /usr/bin/python3 -m pytest -q tests/integration/test_upload_durability.py
"""
import hashlib
import re
import secrets
import time

import boto3
import botocore.config
import pytest
import requests

from helpers_fm import metric as service_metric, redis_cmd, redis_url, wait_for
from helpers_uploads import (EVENTS_SECRET, aws_record, cors_origins, dedicated, key_of, post_event,
                             put_notifications, random_bytes, sha256_hex, stop_uploads_control)

DUR_DB, SLOW_DB = 42, 43  # databases of their own: no other module's instance flushes these records
DUR_INTERVAL_S = 5     # short, so that "two intervals" is a short wait; one round takes well under a second here
ABANDONED = 100_000
ARRIVED = 50


def on_db(f, stack, db):
    """Fm's look at Redis (stream entries, cached rows) on the instance's own database."""
    f.redis = lambda *args: redis_cmd(stack, db, *args)
    return f


@pytest.fixture(scope="module")
def dur(controls, stack):
    stop_uploads_control(controls)  # its reconciler would take this module's uploads onto its own stream
    redis_cmd(stack, DUR_DB, "FLUSHDB")
    with dedicated(controls, stack, FM_EVENTS_SECRET=EVENTS_SECRET, FM_RECONCILE_INTERVAL_S=DUR_INTERVAL_S,
                   FM_REDIS_URL=redis_url(stack, DUR_DB)) as f:
        yield on_db(f, stack, DUR_DB)


@pytest.fixture(scope="module")
def slow(controls, stack, dur):
    redis_cmd(stack, SLOW_DB, "FLUSHDB")
    # the flusher ticks once a minute, and the backlog's bound must not write the records through meanwhile
    with dedicated(controls, stack, FM_EVENTS_SECRET=EVENTS_SECRET, FM_RECORD_FLUSH_MS=60000,
                   FM_RECORD_BACKLOG_MS=3600000, FM_RECONCILE_INTERVAL_S=3600,
                   FM_REDIS_URL=redis_url(stack, SLOW_DB)) as f:
        yield on_db(f, stack, SLOW_DB)


@pytest.fixture
def restore_redis(stack):
    yield
    stack.start_redis()


def md5(data):
    return hashlib.md5(data).hexdigest()


def summary(records=1, enqueued=0, duplicates=0, failed=0, deleted=0, ignored=0):
    return {"records": records, "enqueued": enqueued, "duplicates": duplicates, "failed": failed, "deleted": deleted,
            "ignored": ignored}


def metric(fm, name):
    return service_metric(fm.base, name)


def statuses(fm, upload_ids):
    ids = ",".join(f"'{u}'" for u in upload_ids)
    out = fm.sql(f"SELECT status, count(*) FROM uploads WHERE id IN ({ids}) GROUP BY status")
    return dict((line.split("|")[0], int(line.split("|")[1])) for line in out.splitlines() if line)


def insert_abandoned(fm, user, count):
    """`count` presigns handed out over the last hour and never used, as records.c's flusher writes them."""
    t0 = time.monotonic()
    fm.sql(f"""
        WITH g AS (SELECT gen_random_uuid() AS fid, gen_random_uuid() AS uid, i,
                          now() - interval '1 minute' - random() * interval '55 minutes' AS t
                   FROM generate_series(1, {count}) i),
        f AS (INSERT INTO files (id, owner_id, name, size, content_type, claimed_sha256, status, created_at,
                                 updated_at)
              SELECT fid, '{user.id}', 'abandoned-' || i || '.bin', 1000 + i % 5000, 'application/octet-stream',
                     sha256(i::text::bytea), 'PENDING_UPLOAD', t, t FROM g RETURNING id)
        INSERT INTO uploads (id, file_id, owner_id, object_key, size, content_type, claimed_sha256, method,
                             expires_at, created_at)
        SELECT uid, fid, '{user.id}', 'incoming/' || uid, 1000 + i % 5000, 'application/octet-stream',
               sha256(i::text::bytea), 'PUT', t + interval '1 hour', t FROM g""")
    print(f"{count} abandoned presigns inserted in {time.monotonic() - t0:.1f} s")


@pytest.fixture(scope="module")
def crowd(dur):
    """A user holding ABANDONED presigns that were never used (removed at the end)."""
    user = dur.user("abandoner")
    insert_abandoned(dur, user, ABANDONED)
    yield user
    # Removed without the foreign keys' triggers (nothing else refers to these rows: no jobs, shares or grants), so
    # that the clean-up is as quick on a schema without 009's indexes, where each cascade would scan a table.
    dur.sql(f"BEGIN; SET LOCAL session_replication_role = replica; "
            f"DELETE FROM uploads WHERE owner_id = '{user.id}'; DELETE FROM files WHERE owner_id = '{user.id}'; COMMIT")


# --- the uploads that arrived, among many that never will ------------------------------------------------------------

def test_uploads_whose_events_never_came_are_uploaded_within_two_intervals(dur, crowd):
    """The notification is off: no event reaches any control plane, no client calls complete. Before: the reconciler
    probed 50 pending uploads a round, oldest unchecked first -- the abandoned presigns -- and never reached these."""
    user = dur.user("arrived")
    uploads = []
    for i in range(ARRIVED):
        data = random_bytes(200 + i)
        a = dur.start(user, data)
        assert dur.put(a, data).status_code == 200
        uploads.append((a, data))
    last_put = time.monotonic()
    ids = [a["upload_id"] for a, _ in uploads]
    deadline = 2 * DUR_INTERVAL_S
    done = wait_for(lambda: statuses(dur, ids).get("UPLOADED") == ARRIVED, deadline + 1, interval=0.25)
    took = time.monotonic() - last_put
    assert done, f"after {took:.1f} s: {statuses(dur, ids)}; log:\n{dur.svc.log_text()[-3000:]}"
    print(f"{ARRIVED} uploads UPLOADED {took:.1f} s after the last PUT (interval {DUR_INTERVAL_S} s), "
          f"among {ABANDONED} abandoned presigns")
    assert took <= deadline + 1
    for a, data in uploads:
        row = dur.upload_row(a["upload_id"])
        assert row["completed_by"] == "reconciler" and row["etag"] == md5(data), row
        assert len(dur.jobs_of_upload(a["upload_id"])) == 1
        assert dur.file_row(a["file_id"])["status"] == "UPLOADED"
    # Their jobs are on the stream, recorded as enqueued (one statement for the page).
    jobs = {e["upload_id"] for e in dur.stream_entries()}
    missing = set(ids) - jobs
    assert not missing, (f"{len(missing)} of {len(ids)} jobs not on the stream ({len(jobs)} entries)",
                         dur.sql(f"SELECT json_agg(j) FROM (SELECT status, enqueued_at, created_at FROM jobs "
                                 f"WHERE upload_id = '{sorted(missing)[0]}') j"))
    assert dur.sql(f"SELECT count(*) FROM jobs WHERE upload_id IN ({','.join(repr(u) for u in ids)}) "
                   f"AND enqueued_at IS NULL") == "0"
    # The abandoned presigns cost nothing: none was looked at one by one (the old probe stamped checked_at).
    assert dur.sql(f"SELECT count(*) FROM uploads WHERE owner_id = '{crowd.id}' AND checked_at IS NOT NULL") == "0"
    assert dur.sql(f"SELECT count(*) FROM uploads WHERE owner_id = '{crowd.id}' AND status = 'PENDING'") == \
        str(ABANDONED)


def test_abandoned_presigns_expire_by_one_statement(dur, crowd):
    """20,000 of them made three days old (URLs long expired): EXPIRED and their files FAILED within a few rounds
    (10,000 a round), without an S3 call each. Before: 50 a round, each with a DELETE on S3 (400 rounds)."""
    n = 20_000
    dur.sql(f"UPDATE uploads SET created_at = now() - interval '3 days', expires_at = now() - interval '71 hours' "
            f"WHERE id IN (SELECT id FROM uploads WHERE owner_id = '{crowd.id}' AND status = 'PENDING' LIMIT {n})")
    t0 = time.monotonic()
    expired = lambda: int(dur.sql(f"SELECT count(*) FROM uploads WHERE owner_id = '{crowd.id}' "
                                  f"AND status = 'EXPIRED'"))
    assert wait_for(lambda: expired() == n, 8 * DUR_INTERVAL_S, interval=0.5), \
        f"{expired()} of {n} expired; log:\n{dur.svc.log_text()[-2000:]}"
    print(f"{n} abandoned uploads expired in {time.monotonic() - t0:.1f} s")
    assert dur.sql(f"SELECT count(*) FROM files f JOIN uploads u ON u.file_id = f.id WHERE u.owner_id = "
                   f"'{crowd.id}' AND u.status = 'EXPIRED' AND f.status = 'FAILED' "
                   f"AND f.status_reason = 'upload expired'") == str(n)
    # The young ones (URL still valid) are left alone.
    assert dur.sql(f"SELECT count(*) FROM uploads WHERE owner_id = '{crowd.id}' AND status = 'PENDING'") == \
        str(ABANDONED - n)


# --- bytes that come after the upload was finished --------------------------------------------------------------------

def finish_like_the_worker(fm, a, data, outcome="ready"):
    """The end of a job in the key layout of issue 10 (the worker change made at the same time, COMMON.md): the
    verified copy at blobs/{sha256} (or quarantine/{upload_id}), the incoming object deleted, the file READY (or
    QUARANTINED), the job DONE, the upload COMPLETED. `outcome` "failed": the job failed for good (content error), the
    upload stays UPLOADED with its object, kept for an admin retry."""
    key, digest = key_of(a["upload_id"]), sha256_hex(data)
    if outcome == "failed":
        fm.sql(f"UPDATE jobs SET status = 'FAILED', last_error = 'corrupt', finished_at = now() "
               f"WHERE upload_id = '{a['upload_id']}'; "
               f"UPDATE files SET status = 'FAILED', status_reason = 'corrupt' WHERE id = '{a['file_id']}'")
    else:
        dst = f"blobs/{digest}" if outcome == "ready" else f"quarantine/{a['upload_id']}"
        fm.s3.copy_object(Bucket=fm.bucket, Key=dst, CopySource={"Bucket": fm.bucket, "Key": key})
        fm.s3.delete_object(Bucket=fm.bucket, Key=key)
        if outcome == "ready":
            fm.sql(f"INSERT INTO blobs (sha256, size, storage_key, content_type, ref_count) VALUES "
                   f"(decode('{digest}', 'hex'), {len(data)}, '{dst}', 'application/octet-stream', 1); "
                   f"UPDATE files SET status = 'READY', blob_sha256 = decode('{digest}', 'hex') "
                   f"WHERE id = '{a['file_id']}'")
        else:
            fm.sql(f"UPDATE files SET status = 'QUARANTINED', status_reason = 'virus' WHERE id = '{a['file_id']}'")
        fm.sql(f"UPDATE jobs SET status = 'DONE', finished_at = now() WHERE upload_id = '{a['upload_id']}'; "
               f"UPDATE uploads SET status = 'COMPLETED' WHERE id = '{a['upload_id']}'")
    fm.redis("DEL", f"fm:file:{{{a['file_id']}}}")


def completed_upload(fm, user, outcome="ready"):
    data = random_bytes(1234)
    a, _ = fm.upload(user, data)
    finish_like_the_worker(fm, a, data, outcome)
    return a, data


def late_put(fm, a, size):
    """A PUT with the upload's old presigned URL, still valid: the same size (the URL signs Content-Length), other
    bytes."""
    other = random_bytes(size)
    assert fm.put(a, other).status_code == 200
    assert fm.head(key_of(a["upload_id"]))["ContentLength"] == size
    return other


def assert_file_keeps_its_bytes(fm, user, a, data, status="READY"):
    f = fm.file(user, a["file_id"]).json()
    assert f["status"] == status and f["sha256"] == sha256_hex(data), f
    if status == "READY":
        assert fm.get_bytes(f"blobs/{sha256_hex(data)}") == data


@pytest.mark.parametrize("outcome", ["ready", "quarantined", "failed"])
def test_a_late_put_is_deleted_by_its_event(dur, outcome):
    """After the job ended (READY, QUARANTINED, or FAILED for good), a PUT with the old URL: its event deletes the
    object (before: "duplicate", and the bytes stayed behind the file). The file is unchanged."""
    user = dur.user("late")
    a, data = completed_upload(dur, user, outcome)
    if outcome != "failed":
        assert dur.head(key_of(a["upload_id"])) is None
    else:  # the late delivery of the upload's own event: the same bytes, kept for an admin retry
        r = post_event(dur.base, {"Records": [aws_record(dur.bucket, key_of(a["upload_id"]), len(data))]})
        assert r.status_code == 200 and r.json() == summary(duplicates=1), r.text
        assert dur.head(key_of(a["upload_id"])) is not None
    late_put(dur, a, len(data))
    r = post_event(dur.base, {"Records": [aws_record(dur.bucket, key_of(a["upload_id"]), len(data))]})
    assert r.status_code == 200 and r.json() == summary(deleted=1), r.text
    assert dur.head(key_of(a["upload_id"])) is None
    status = {"ready": "READY", "quarantined": "QUARANTINED", "failed": "FAILED"}[outcome]
    assert_file_keeps_its_bytes(dur, user, a, data, status)
    assert len(dur.jobs_of_upload(a["upload_id"])) == 1
    assert "its upload was finished before it came" in dur.svc.log_text()


def test_a_late_put_is_deleted_by_the_reconciler(dur):
    """The same without any event (the notification is off): the next listing of incoming/ deletes it."""
    user = dur.user("late-sweep")
    a, data = completed_upload(dur, user)
    deleted = metric(dur, "fm_reconcile_late_objects_deleted_total")
    late_put(dur, a, len(data))
    assert wait_for(lambda: dur.head(key_of(a["upload_id"])) is None, 2 * DUR_INTERVAL_S + 1, interval=0.25), \
        dur.svc.log_text()[-2000:]
    assert metric(dur, "fm_reconcile_late_objects_deleted_total") >= deleted + 1
    assert re.search(rf"deleted {key_of(a['upload_id'])} \(1234 bytes\): its upload was finished",
                     dur.svc.log_text())
    assert_file_keeps_its_bytes(dur, user, a, data)


def test_an_event_for_an_upload_being_processed_changes_nothing(dur):
    """UPLOADED, its job queued: the object is what the job will read. A repeated event is a duplicate; the object
    stays (and so does it for the reconciler's listing)."""
    user = dur.user("processing")
    data = random_bytes(999)
    a, done = dur.upload(user, data)
    r = post_event(dur.base, {"Records": [aws_record(dur.bucket, key_of(a["upload_id"]), len(data))]})
    assert r.status_code == 200 and r.json() == summary(duplicates=1), r.text
    time.sleep(DUR_INTERVAL_S + 1)  # a round of the listing
    assert dur.get_bytes(key_of(a["upload_id"])) == data
    assert dur.upload_row(a["upload_id"])["status"] == "UPLOADED"
    assert dur.jobs_of_upload(a["upload_id"]) == [done["job_id"]]


def test_verified_bytes_kept_at_the_upload_key_are_never_deleted(dur):
    """A blob whose storage key is still incoming/{upload_id} (the key layout before issue 10): an event for it, or
    the listing, leaves it alone."""
    user = dur.user("old-layout")
    data = random_bytes(777)
    a, _ = dur.upload(user, data)
    digest = sha256_hex(data)
    dur.sql(f"INSERT INTO blobs (sha256, size, storage_key, content_type, ref_count) VALUES (decode('{digest}', "
            f"'hex'), {len(data)}, '{key_of(a['upload_id'])}', 'application/octet-stream', 1); "
            f"UPDATE files SET status = 'READY', blob_sha256 = decode('{digest}', 'hex') WHERE id = '{a['file_id']}'; "
            f"UPDATE jobs SET status = 'DONE' WHERE upload_id = '{a['upload_id']}'; "
            f"UPDATE uploads SET status = 'COMPLETED' WHERE id = '{a['upload_id']}'")
    try:
        r = post_event(dur.base, {"Records": [aws_record(dur.bucket, key_of(a["upload_id"]), len(data))]})
        assert r.status_code == 200 and r.json() == summary(duplicates=1), r.text
        time.sleep(DUR_INTERVAL_S + 1)
        assert dur.get_bytes(key_of(a["upload_id"])) == data
    finally:
        dur.sql(f"UPDATE files SET blob_sha256 = NULL WHERE id = '{a['file_id']}'; "
                f"DELETE FROM blobs WHERE sha256 = decode('{digest}', 'hex')")


# --- events while Redis is away ----------------------------------------------------------------------------------------

def unflushed(fm, user, data):
    """An upload whose record is still only in Redis (the slow instance's flusher ticks once a minute)."""
    a = fm.start(user, data, recorded=False)
    assert fm.sql(f"SELECT count(*) FROM uploads WHERE id = '{a['upload_id']}'") == "0"
    return a


def test_events_are_taken_while_redis_is_away(slow, stack, restore_redis):
    """Redis stops. An event for an upload already in PostgreSQL is recorded (200; the job's stream entry follows
    from the reconciler's step 1). One for a record still only in Redis answers 503, so the store delivers it
    again -- and it is taken once Redis is back. Before: every event answered 503 while Redis was away."""
    user = slow.user("redis-away")
    in_pg_data = random_bytes(321)
    in_pg = slow.start(user, in_pg_data, recorded=False)
    assert slow.file(user, in_pg["file_id"]).status_code == 200  # brings its record into PostgreSQL
    assert slow.put(in_pg, in_pg_data).status_code == 200
    only_redis_data = random_bytes(322)
    only_redis = unflushed(slow, user, only_redis_data)
    assert slow.put(only_redis, only_redis_data).status_code == 200
    stack.stop_redis()
    try:
        r = post_event(slow.base, {"Records": [aws_record(slow.bucket, key_of(in_pg["upload_id"]), 321)]})
        assert r.status_code == 200 and r.json() == summary(enqueued=1), r.text
        row = slow.upload_row(in_pg["upload_id"])
        assert row["status"] == "UPLOADED" and row["completed_by"] == "event", row
        assert slow.sql(f"SELECT enqueued_at IS NULL FROM jobs WHERE upload_id = '{in_pg['upload_id']}'") == "t"
        r = post_event(slow.base, {"Records": [aws_record(slow.bucket, key_of(only_redis["upload_id"]), 322)]})
        assert r.status_code == 503 and r.headers.get("Retry-After"), r.text
    finally:
        stack.start_redis()
    r = None
    for _ in range(50):  # the instance reconnects to Redis
        r = post_event(slow.base, {"Records": [aws_record(slow.bucket, key_of(only_redis["upload_id"]), 322)]})
        if r.status_code == 200:
            break
        time.sleep(0.2)
    assert r.status_code == 200 and r.json() == summary(enqueued=1), r.text
    assert slow.upload_row(only_redis["upload_id"])["status"] == "UPLOADED"


def sns_client(stack):
    env = stack.env
    return boto3.client("sns", endpoint_url=env["FM_S3_ENDPOINT"], region_name=env["FM_S3_REGION"],
                        aws_access_key_id=env["FM_S3_ACCESS_KEY"], aws_secret_access_key=env["FM_S3_SECRET_KEY"],
                        config=botocore.config.Config(signature_version="s3v4"))


def events_received(fm):
    """POSTs the instance answered on /v1/events/s3, whatever the status."""
    text = requests.get(fm.base + "/metrics", timeout=5).text
    return sum(float(v) for v in re.findall(r'^fm_http_requests_total\{[^}]*route="/v1/events/s3"[^}]*\} (\S+)$',
                                           text, re.M))


def test_the_persistent_topic_delivers_a_refused_event_again(slow, stack, restore_redis):
    """The bucket's topic as infra/up makes it (persistent by default, infra/lib/s3_prepare.py): an event answered 503
    (a record only in Redis while Redis is away) is delivered again by Ceph RGW until it is taken. Before (topic not
    persistent): RGW dropped it, and the upload waited for the reconciler."""
    topic = f"durability-{secrets.token_hex(4)}"  # a queue of its own, whatever earlier tests left in others
    url = f"{slow.base}/v1/events/s3?secret={EVENTS_SECRET}"
    origins = cors_origins(slow)  # kept as other tests set them
    stack.prepare_s3(events_url=url, topic=topic, web_origin=",".join(origins) if origins else None)  # persistent
    sns = sns_client(stack)
    try:
        # A new persistent topic delivers once RGW has taken its queue (it looks every 30 s): wait for that first.
        before, t0 = events_received(slow), time.monotonic()
        probe = f"incoming/warm-up-{secrets.token_hex(4)}"  # not an upload key: ignored by fm-control
        slow.s3.put_object(Bucket=slow.bucket, Key=probe, Body=b"x")
        assert wait_for(lambda: events_received(slow) > before, 60, interval=0.5), "the topic never delivered"
        print(f"a new persistent topic delivered its first event {time.monotonic() - t0:.1f} s after the PUT")
        slow.s3.delete_object(Bucket=slow.bucket, Key=probe)

        user = slow.user("persistent")
        data = random_bytes(4444)
        a = unflushed(slow, user, data)
        stack.stop_redis()
        try:
            refused = events_received(slow)
            assert slow.put(a, data).status_code == 200
            assert wait_for(lambda: events_received(slow) > refused + 5, 20, interval=0.2), "no retries seen"
            assert slow.sql(f"SELECT count(*) FROM uploads WHERE id = '{a['upload_id']}'") == "0"
        finally:
            stack.start_redis()
        assert wait_for(lambda: (slow.upload_row(a["upload_id"]) or {}).get("status") == "UPLOADED", 30,
                        interval=0.2), slow.svc.log_text()[-2000:]
        assert slow.upload_row(a["upload_id"])["completed_by"] == "event"
        print(f"the event was answered 503 {events_received(slow) - refused - 1:.0f} times before it was taken")
    finally:
        put_notifications(slow, [])
        arn = next((t["TopicArn"] for t in sns.list_topics().get("Topics", []) if t["TopicArn"].endswith(":" + topic)),
                   None)
        if arn:
            sns.delete_topic(TopicArn=arn)
