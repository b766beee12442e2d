"""The reconciler's pass over incoming/ (step 2, control-plane/incoming.c): its orphans (issue 3).

When Redis loses upload records before the flusher wrote them (records.c), clients still hold presigned PUT URLs:
their objects land at incoming/{upload_id} with no record anywhere. The reconciler lists incoming/ 1,000 keys a call
(up to 10 calls a round, a cursor in Redis) and deletes an incoming/{uuid} object older than FM_UPLOAD_EXPIRY_S
when Redis holds no record fm:rec:{id} and PostgreSQL no uploads row and no blob for it. Tested against the real
Ceph RGW, Redis and PostgreSQL of the stack, with FM_UPLOAD_EXPIRY_S at its minimum (60 s: RGW sets LastModified
itself, so the test waits for the objects to age):
  - an object whose record was lost is deleted, logged once and counted;
  - beside it, objects of an upload recorded in PostgreSQL, of one whose record is only in Redis, of a blob with
    no upload row, and keys that are not incoming/{uuid} (logged once at warn) all stay, through a whole cycle
    of the listing.
"""
import re
import secrets
import uuid

import pytest

from helpers_fm import metric as service_metric, redis_cmd, redis_url, wait_for
from helpers_uploads import dedicated, key_of, random_bytes
ORPHANS_DB = 1   # this suite's Redis database: its own records and listing cursor
EXPIRY_S = 60    # FM_UPLOAD_EXPIRY_S's minimum (common/config.c)
ROUND = 10_000   # keys a round lists at most (incoming.c: 10 pages of 1,000)


@pytest.fixture(scope="module")
def fm(controls, stack):
    redis_cmd(stack, ORPHANS_DB, "DEL", "fm:reconcile:incoming")
    with dedicated(controls, stack, events=True, FM_RECORD_FLUSH_MS=60000, FM_RECONCILE_INTERVAL_S=1,
                   FM_UPLOAD_EXPIRY_S=EXPIRY_S,
                   FM_REDIS_URL=redis_url(stack, ORPHANS_DB)) as f:
        yield f


def rcmd(fm, *args):
    return redis_cmd(fm.stack, ORPHANS_DB, *args)


def metric(fm, name):
    return service_metric(fm.base, name)


def upload_rows(fm, upload_id):
    return int(fm.sql(f"SELECT count(*) FROM uploads WHERE id = '{upload_id}'"))


def start_unflushed(fm, user, data):
    """An upload whose record stays in Redis only: taken off the flusher's list (it ticks once a minute, so it had
    almost surely not taken it yet; if it had, try again)."""
    for _ in range(3):
        a = fm.start(user, data, recorded=False)
        rcmd(fm, "ZREM", "fm:rec:pending", a["upload_id"])
        if upload_rows(fm, a["upload_id"]) == 0:
            return a
    pytest.fail("the flusher took every record before it could be kept in Redis")


def incoming_count(fm):
    pages = fm.s3.get_paginator("list_objects_v2").paginate(Bucket=fm.bucket, Prefix="incoming/")
    return sum(len(p.get("Contents", [])) for p in pages)


def test_lost_record_object_is_swept_and_nothing_else(fm):
    user = fm.user("orphans")
    kept = {}

    # An upload recorded in PostgreSQL (complete brings the record in), its object PUT.
    body = random_bytes(100)
    in_pg = fm.start(user, body, recorded=False)
    assert fm.put(in_pg, body).status_code == 200
    assert fm.complete(user, in_pg["upload_id"]).status_code == 200
    kept["recorded in PostgreSQL"] = key_of(in_pg["upload_id"])

    # An upload whose record is only in Redis (not flushed), its object PUT.
    body = random_bytes(101)
    in_redis = start_unflushed(fm, user, body)
    assert fm.put(in_redis, body).status_code == 200
    kept["recorded in Redis only"] = key_of(in_redis["upload_id"])

    # A blob whose storage key is incoming/{uuid} without any upload row.
    blob_key = f"incoming/{uuid.uuid4()}"
    fm.s3.put_object(Bucket=fm.bucket, Key=blob_key, Body=b"blob")
    fm.sql(f"INSERT INTO blobs (sha256, size, storage_key, content_type, ref_count) VALUES "
           f"(decode('{secrets.token_hex(32)}', 'hex'), 4, '{blob_key}', 'application/octet-stream', 1)")
    kept["named by a blob"] = blob_key

    # Keys we never make: not a uuid, XML and URL specials (the listing's decoding), an upper-case uuid.
    foreign = ["incoming/not-a-uuid", f"incoming/odd key &<>+%{secrets.token_hex(2)}.txt",
               f"incoming/{str(uuid.uuid4()).upper()}"]
    for key in foreign:
        fm.s3.put_object(Bucket=fm.bucket, Key=key, Body=b"foreign")
        kept[f"foreign {key!r}"] = key

    try:
        # The lost record: Redis forgets it (a crash beyond the AOF window), the client still PUTs. It is PUT last,
        # so once it is old enough for the sweep the others are too.
        body = random_bytes(102)
        lost = start_unflushed(fm, user, body)
        rcmd(fm, "DEL", f"fm:rec:{{{lost['upload_id']}}}", f"fm:recf:{{{lost['file_id']}}}")
        assert fm.put(lost, body).status_code == 200
        assert upload_rows(fm, lost["upload_id"]) == 0
        assert fm.complete(user, lost["upload_id"]).status_code == 404  # documented: the client starts again

        # Deleted once older than FM_UPLOAD_EXPIRY_S, by a round that reaches it (one a second, 10,000 keys each).
        timeout = EXPIRY_S + 30 + incoming_count(fm) // ROUND
        assert wait_for(lambda: fm.head(key_of(lost["upload_id"])) is None, timeout=timeout, interval=1), \
            f"{key_of(lost['upload_id'])} still there after {timeout} s"
        assert metric(fm, "fm_reconcile_orphans_deleted_total") >= 1
        log = fm.svc.log_text()
        assert len(re.findall(rf"deleted orphan object {key_of(lost['upload_id'])} \(102 bytes", log)) == 1, log[-3000:]

        # A whole cycle of the listing later, the rest is there: the passes list keys in order and wrap, so N more
        # keys listed (N = the keys under incoming/) looked at every key again, all of them old enough by then.
        listed, keys = metric(fm, "fm_reconcile_incoming_listed_total"), incoming_count(fm)
        assert wait_for(lambda: metric(fm, "fm_reconcile_incoming_listed_total") >= listed + keys,
                        timeout=30 + keys // ROUND, interval=1)
        for what, key in kept.items():
            assert fm.head(key) is not None, f"the object {what} ({key}) was deleted"
        assert rcmd(fm, "EXISTS", f"fm:rec:{{{in_redis['upload_id']}}}") == 1
        assert upload_rows(fm, in_redis["upload_id"]) == 0
        log = fm.svc.log_text()
        for key in foreign:  # logged once although listed at least twice
            assert log.count(f"object {key} under incoming/ is not incoming/{{upload id}}") == 1, key
        for key in kept.values():
            assert f"deleted orphan object {key} " not in log
    finally:
        fm.sql(f"DELETE FROM blobs WHERE storage_key = '{blob_key}'")
        for key in [blob_key, key_of(in_redis["upload_id"])] + foreign:
            fm.s3.delete_object(Bucket=fm.bucket, Key=key)
