"""New file records written behind (control-plane/records.c, docs/decisions.md "Uploads: records written behind").

POST /v1/uploads (single PUT) and a dedupe hit store their rows in Redis and answer; flushers move them into
PostgreSQL in batches. Whatever needs a row first (complete, parts, abort, events, GET /v1/files) brings that one
record in itself. The bound of the backlog (written through or 503 past it) is test_record_backlog.py's. Tested
against the real Redis and PostgreSQL of the stack:
  - the flusher writes the rows and cleans Redis up;
  - an instance whose flusher waits a minute still completes, aborts, takes events and answers reads for records
    that exist only in Redis;
  - with FM_RECORD_FLUSH_MS=0 the rows are in PostgreSQL before the answer.
"""
import time

import pytest

from helpers_fm import redis_cmd, redis_url, wait_for
from helpers_uploads import (EVENTS_SECRET, Fm, aws_record, dedicated, key_of, post_event, random_bytes, sha256_hex,
                             shared_uploads_fm)
SLOW_DB = 11   # the instance whose flusher ticks once a minute
SYNC_DB = 10   # the instance that writes through


@pytest.fixture(scope="module")
def fm(controls, stack):
    with shared_uploads_fm(controls, stack) as f:
        yield f


@pytest.fixture(scope="module")
def slow(controls, stack, fm):
    # the flusher ticks once a minute, and the backlog's bound must not write the records through meanwhile
    with dedicated(controls, stack, events=True, FM_RECORD_FLUSH_MS=60000, FM_RECORD_BACKLOG_MS=3600000,
                   FM_EVENTS_SECRET=EVENTS_SECRET, FM_REDIS_URL=redis_url(stack, SLOW_DB)) as f:
        yield f


def rows(fm, file_id):
    return int(fm.sql(f"SELECT count(*) FROM files WHERE id = '{file_id}'"))


def test_flusher_writes_the_rows_and_cleans_redis(fm):
    user = fm.user("rec")
    data = random_bytes(777)
    a = fm.start(user, data, name="behind.txt", content_type="text/plain", recorded=False)
    fm.wait_recorded(a["file_id"])
    f = fm.sql_row(f"SELECT row_to_json(x) FROM (SELECT owner_id, name, size, content_type, status, "
                   f"encode(claimed_sha256, 'hex') AS sha FROM files WHERE id = '{a['file_id']}') x")
    assert f == {"owner_id": user.id, "name": "behind.txt", "size": 777, "content_type": "text/plain",
                 "status": "PENDING_UPLOAD", "sha": sha256_hex(data)}, f
    u = fm.sql_row(f"SELECT row_to_json(x) FROM (SELECT file_id, owner_id, object_key, size, method, status, "
                   f"extract(epoch FROM expires_at - created_at)::int AS ttl FROM uploads "
                   f"WHERE id = '{a['upload_id']}') x")
    assert u == {"file_id": a["file_id"], "owner_id": user.id, "object_key": key_of(a["upload_id"]), "size": 777,
                 "method": "PUT", "status": "PENDING", "ttl": u["ttl"]}, u
    assert 899 <= u["ttl"] <= 900  # FM_UPLOAD_URL_TTL_S; expires_at is whole seconds, created_at has ms
    # Once in PostgreSQL the record leaves Redis (the flusher drops it after its batch committed).
    assert wait_for(lambda: fm.redis("EXISTS", f"fm:rec:{{{a['upload_id']}}}") == 0 and
             fm.redis("EXISTS", f"fm:recf:{{{a['file_id']}}}") == 0 and
             all(fm.redis("ZSCORE", k, a["upload_id"]) is None for k in ("fm:rec:pending", "fm:rec:flushing",
                                                                           "fm:rec:lease")), timeout=10)
    # The upload goes on as any other.
    assert fm.put(a, data).status_code == 200
    assert fm.complete(user, a["upload_id"]).json()["status"] == "UPLOADED"


def test_many_records_in_one_batch(fm):
    user = fm.user("batch")
    answers = [fm.start(user, random_bytes(10 + i), recorded=False) for i in range(60)]
    for a in answers:
        fm.wait_recorded(a["file_id"])
    assert fm.row_counts(user) == (60, 60, 0)


def test_unflushed_record_is_read_completed_and_evented(slow):
    user = slow.user("slow")
    data = random_bytes(4321)
    a = slow.start(user, data, recorded=False)
    assert rows(slow, a["file_id"]) == 0  # only in Redis: the flusher's first tick is a minute away
    assert redis_cmd(slow.stack, SLOW_DB, "HGET", f"fm:rec:{{{a['upload_id']}}}", "file_id") == a["file_id"]
    # GET /v1/files brings it in.
    f = slow.file(user, a["file_id"])
    assert f.status_code == 200 and f.json()["status"] == "PENDING_UPLOAD", f.text
    assert rows(slow, a["file_id"]) == 1
    assert redis_cmd(slow.stack, SLOW_DB, "EXISTS", f"fm:rec:{{{a['upload_id']}}}") == 0

    # complete brings it in.
    body = random_bytes(99)
    b = slow.start(user, body, recorded=False)
    assert slow.put(b, body).status_code == 200
    c = slow.complete(user, b["upload_id"])
    assert c.status_code == 200 and c.json()["status"] == "UPLOADED", c.text
    assert len(slow.jobs_of_upload(b["upload_id"])) == 1

    # an S3 event brings it in.
    body = random_bytes(555)
    e = slow.start(user, body, recorded=False)
    assert slow.put(e, body).status_code == 200
    r = post_event(slow.base, {"Records": [aws_record(slow.bucket, key_of(e["upload_id"]), len(body))]})
    assert r.status_code == 200 and r.json()["enqueued"] == 1, r.text
    assert slow.upload_row(e["upload_id"])["status"] == "UPLOADED"

    # abort brings it in (and nothing is left behind).
    g = slow.start(user, random_bytes(10), recorded=False)
    assert slow.abort(user, g["upload_id"]).status_code == 204
    assert slow.upload_row(g["upload_id"])["status"] == "ABORTED"

    # Someone else's id stays a 404, whether or not the record is in PostgreSQL yet.
    other = slow.user("slow-other")
    h = slow.start(user, random_bytes(10), recorded=False)
    assert slow.file(other, h["file_id"]).status_code == 404
    assert slow.complete(other, h["upload_id"]).status_code == 404
    assert slow.file(user, h["file_id"]).json()["status"] == "PENDING_UPLOAD"


def test_unflushed_dedupe_record(slow):
    user = slow.user("slow-dedupe")
    data = random_bytes(2048)
    a, _ = slow.upload(user, data, recorded=False)
    slow.mark_verified(a["file_id"], data)
    redis_cmd(slow.stack, SLOW_DB, "HSET", f"fm:dedupe:{{{user.id}}}", sha256_hex(data), str(len(data)))
    d = slow.start(user, data, expect=200, recorded=False)
    assert d["deduplicated"] is True
    assert rows(slow, d["file_id"]) == 0
    f = slow.file(user, d["file_id"]).json()
    assert f["status"] == "READY" and f["deduplicated"] is True, f
    assert slow.file_row(d["file_id"])["blob"] == sha256_hex(data)


def test_write_through_when_flush_is_off(controls, stack):
    svc = controls.start(FM_RECORD_FLUSH_MS=0, FM_REDIS_URL=redis_url(stack, SYNC_DB))
    f = Fm(stack, svc)
    try:
        user = f.user("sync")
        a = f.start(user, random_bytes(50), recorded=False)
        assert rows(f, a["file_id"]) == 1  # before the answer
        assert redis_cmd(stack, SYNC_DB, "EXISTS", f"fm:rec:{{{a['upload_id']}}}") == 0
        assert redis_cmd(stack, SYNC_DB, "ZCARD", "fm:rec:pending") == 0
    finally:
        f.close()
        controls.stop(svc)


def test_records_survive_a_postgresql_restart(stack, fm):
    """Uploads are taken while PostgreSQL is away (only Redis is on the path, within the backlog's bound: 1 s of
    records by default) and reach it once it is back."""
    user = fm.user("pgdown")  # logged in before: the session is cached in Redis
    fm.start(user, random_bytes(5))  # and the user's dedupe index is built (from PostgreSQL) by a first upload
    fm.psql.close()
    stack.stop_pg()
    try:
        answers = []
        deadline = time.monotonic() + 10
        while len(answers) < 3 and time.monotonic() < deadline:
            r = fm.call(user, "POST", "/v1/uploads", json={"name": "x.bin", "size": 5, "sha256": "cd" * 32,
                                                         "content_type": "application/octet-stream",
                                                         "on_conflict": "rename"})
            assert r.status_code == 201, r.text
            answers.append(r.json())
    finally:
        stack.start_pg()
        fm.psql = type(fm.psql)(stack, fm.dbname)
    for a in answers:
        fm.wait_recorded(a["file_id"], timeout=30)
