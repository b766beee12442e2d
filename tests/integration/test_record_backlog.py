"""The bound of the write-behind backlog (control-plane/records.c, docs/decisions.md "Records written behind",
DESIGN.md §6 rule 2): records of POST /v1/uploads held only in Redis are at most FM_RECORD_BACKLOG_MAX and never older
than FM_RECORD_BACKLOG_MS; past either bound the route writes the record through to PostgreSQL before answering, or
answers 503 + Retry-After when PostgreSQL cannot take it either. Nothing accepted is lost; the flushers drain a large
backlog in batches of up to 1,000, one bad record does not stop them, and a batch a dead flusher left leased is taken
again. Against the real stack:

- The flushers are held without timing: a psql session holds one user's `users` row FOR UPDATE. A batch holding a
  record of that user waits on the row (the files' foreign key takes the owner's row FOR KEY SHARE), while another
  user's upload written through checks only its own row. The instances wait for PostgreSQL for two minutes
  (FM_PG_TIMEOUT_MS) so that a held batch is not timed out meanwhile.
- The backlog is read from Redis in one step (pending + flushing, the oldest creation time by Redis's clock).
- Rounds and counts come from /metrics (fm_records_flush_batches_total, fm_records_flushed_total, …), never from the
  wall clock.

Redis database 10 is shared with test_upload_records.py's write-through instance, which writes nothing behind; each
test empties the backlog's keys first and the module empties them at the end. PostgreSQL is the session's database.

    FM_BUILD_DIR=build /usr/bin/python3 -m pytest -q tests/integration/test_record_backlog.py
"""
import concurrent.futures
import contextlib
import secrets
import time
import uuid

import pytest
import requests

from helpers_fm import metric as service_metric, redis_cmd, redis_url, wait_for
from helpers_uploads import Fm, Psql, random_bytes, sha256_hex

REDIS_DB = 41
WAIT_S = 60  # generous bound on each wait for a state the test causes itself; never reached when all is well
BACKLOG_KEYS = ("fm:rec:pending", "fm:rec:flushing", "fm:rec:lease")
BACKLOG_LUA = ("local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) local age = -1 "
               "for _, k in ipairs(KEYS) do local o = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')[2] "
               "if o and now - o > age then age = now - o end end "
               "return {redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2]), age}")


class BacklogFm(Fm):
    """helpers_uploads.Fm on Redis database 10."""

    def redis(self, *args):
        return redis_cmd(self.stack, REDIS_DB, *args)

    def backlog(self):
        """(records only in Redis, age in ms of the oldest or -1), read atomically."""
        count, age = self.redis("EVAL", BACKLOG_LUA, 2, "fm:rec:pending", "fm:rec:flushing")
        return int(count), int(age)

    def metric(self, name):
        return service_metric(self.base, name)

    def in_pg(self, file_ids):
        """How many of these files have their row in PostgreSQL."""
        if not file_ids:
            return 0
        ids = ",".join(f"'{f}'" for f in file_ids)
        return int(self.sql(f"SELECT count(*) FROM files WHERE id IN ({ids})"))

    def post_upload(self, user, name=None):
        # on_conflict=rename: the write-behind path these tests bound (the default, fail, writes every record
        # through); distinct names: a clash is test_file_names.py's
        data = random_bytes(64)
        return self.call(user, "POST", "/v1/uploads", json={
            "name": name or f"backlog-{secrets.token_hex(6)}.bin", "size": len(data),
            "content_type": "application/octet-stream", "sha256": secrets.token_hex(32), "on_conflict": "rename"})

    def ready_user(self, prefix):
        """A user whose session is cached and whose dedupe index is built (its first upload reads PostgreSQL's
        blobs, which the tests lock), that first upload already in PostgreSQL."""
        user = self.user(prefix)
        self.start(user, random_bytes(10))
        assert wait_for(lambda: self.backlog()[0] == 0, timeout=WAIT_S)
        return user


def clear_backlog(stack):
    # (and the one-flusher lock of builds before the bound, which a stopped instance would leave for two minutes:
    # the suite then shows what such a build does, not a stale lock)
    redis_cmd(stack, REDIS_DB, "DEL", *BACKLOG_KEYS, "fm:lock:records")


@contextlib.contextmanager
def instance(controls, stack, **env):
    clear_backlog(stack)
    env = {"FM_THREADS": 2, "FM_PG_TIMEOUT_MS": 120000, **env}
    svc = controls.start(FM_REDIS_URL=redis_url(stack, REDIS_DB), **env)
    f = BacklogFm(stack, svc)
    try:
        yield f
    finally:
        f.close()
        controls.stop(svc)


@pytest.fixture(scope="module", autouse=True)
def empty_backlog_at_the_end(stack):
    yield
    clear_backlog(stack)


@contextlib.contextmanager
def flushers_held(fm, user):
    """Every batch with a record of `user` waits until the block ends (the row lock's transaction is then rolled
    back), and so does an upload of `user` written through."""
    session = Psql(fm.stack, fm.dbname)
    try:
        session.query(f"BEGIN; SELECT 1 FROM users WHERE id = '{user.id}' FOR UPDATE")
        yield session
    finally:
        session.query("ROLLBACK")
        session.close()


def test_backlog_never_exceeds_its_count_bound(controls, stack):
    """FM_RECORD_BACKLOG_MAX=50 with the flushers held: 50 concurrent uploads of one user are written behind; 30 more,
    of another user, are written through (in PostgreSQL before their 201); 5 more of the first user wait for
    PostgreSQL (written through too, behind its held row) instead of going behind; the backlog never holds more
    than 50; all 85 reach PostgreSQL."""
    with instance(controls, stack, FM_RECORD_BACKLOG_MAX=50, FM_RECORD_BACKLOG_MS=3600000) as fm:
        held, other = fm.ready_user("bound-count"), fm.ready_user("bound-count-other")
        seen = []

        def post_all(user, count, pool):
            futures = [pool.submit(fm.post_upload, user) for _ in range(count)]
            while not all(f.done() for f in futures):
                seen.append(fm.backlog()[0])
            seen.append(fm.backlog()[0])
            answers = [f.result() for f in futures]
            assert [a.status_code for a in answers] == [201] * count, [a.text for a in answers if a.status_code != 201]
            return [a.json()["file_id"] for a in answers]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            with flushers_held(fm, held):
                behind = post_all(held, 50, pool)
                assert fm.backlog()[0] == 50 and fm.in_pg(behind) == 0
                through = post_all(other, 30, pool)
                assert fm.in_pg(through) == 30  # held flushers: only written through can be there
                assert fm.metric("fm_records_written_through_total") == 30
                waiting = [pool.submit(fm.post_upload, held) for _ in range(5)]
                assert wait_for(lambda: fm.metric("fm_records_written_through_total") == 35, timeout=WAIT_S)
                assert fm.backlog()[0] == 50 and not any(w.done() for w in waiting)
            assert [w.result().status_code for w in waiting] == [201] * 5
        assert max(seen) <= 50, seen
        files = behind + through + [w.result().json()["file_id"] for w in waiting]
        assert wait_for(lambda: fm.in_pg(files) == 85, timeout=WAIT_S), fm.in_pg(files)
        assert wait_for(lambda: fm.backlog()[0] == 0, timeout=WAIT_S)


def test_backlog_never_holds_records_older_than_its_time_bound(controls, stack):
    """FM_RECORD_BACKLOG_MS=1000 with the flushers held: once the oldest record in Redis is a second old, the next
    upload (of another user) is written through and the backlog does not grow; both records reach PostgreSQL."""
    with instance(controls, stack, FM_RECORD_BACKLOG_MAX=100000, FM_RECORD_BACKLOG_MS=1000) as fm:
        held, other = fm.ready_user("bound-time"), fm.ready_user("bound-time-other")
        with flushers_held(fm, held):
            first = fm.post_upload(held)
            assert first.status_code == 201, first.text
            assert fm.backlog()[0] == 1 and fm.in_pg([first.json()["file_id"]]) == 0
            assert wait_for(lambda: fm.backlog()[1] >= 1000, timeout=WAIT_S)  # by Redis's clock, as the bound
            late = fm.post_upload(other)
            assert late.status_code == 201, late.text
            assert fm.in_pg([late.json()["file_id"]]) == 1  # before its answer
            assert fm.backlog()[0] == 1
            assert fm.metric("fm_records_written_through_total") == 1
        files = [first.json()["file_id"], late.json()["file_id"]]
        assert wait_for(lambda: fm.in_pg(files) == 2, timeout=WAIT_S)


def test_a_dedupe_hit_past_the_bound_is_written_through(controls, stack):
    """FM_RECORD_BACKLOG_MAX=1 reached while the flushers are held: a dedupe hit of another user is decided and
    stored by PostgreSQL before its answer (200, READY on the blob), not kept in Redis."""
    with instance(controls, stack, FM_RECORD_BACKLOG_MAX=1, FM_RECORD_BACKLOG_MS=3600000) as fm:
        held, owner = fm.ready_user("bound-dedupe-held"), fm.ready_user("bound-dedupe")
        data = random_bytes(300)
        source = fm.start(owner, data)
        fm.mark_verified(source["file_id"], data)
        fm.redis("HSET", f"fm:dedupe:{{{owner.id}}}", sha256_hex(data), str(len(data)))  # what the worker writes
        with flushers_held(fm, held):
            assert fm.post_upload(held).status_code == 201
            assert fm.backlog()[0] == 1
            d = fm.start(owner, data, expect=200, recorded=False)
            assert d["deduplicated"] is True and d["status"] == "READY"
            assert fm.file_row(d["file_id"]) == {"status": "READY", "status_reason": None, "deleted_at": None,
                                                 "blob": sha256_hex(data)}  # before its answer
            assert fm.backlog()[0] == 1
            assert fm.metric("fm_records_written_through_total") == 1


def test_past_the_bound_with_postgresql_down_the_answer_is_503_with_retry_after(controls, stack):
    """PostgreSQL stopped, FM_RECORD_BACKLOG_MAX=3: three uploads are accepted behind, the fourth cannot be made
    durable in time and is refused with 503 + Retry-After (never a 201); the three reach PostgreSQL once it is back."""
    with instance(controls, stack, FM_RECORD_BACKLOG_MAX=3, FM_RECORD_BACKLOG_MS=3600000) as fm:
        user = fm.ready_user("bound-pgdown")
        fm.psql.close()
        stack.stop_pg()
        try:
            accepted = [fm.post_upload(user) for _ in range(3)]
            refused = fm.post_upload(user)
        finally:
            stack.start_pg()
            fm.psql = Psql(stack, fm.dbname)
        assert [a.status_code for a in accepted] == [201] * 3, [a.text for a in accepted]
        assert refused.status_code == 503, refused.text
        assert refused.headers.get("Retry-After") == "1"
        assert refused.json()["error"]["code"] == "unavailable"
        files = [a.json()["file_id"] for a in accepted]
        assert wait_for(lambda: fm.in_pg(files) == 3, timeout=WAIT_S)
        assert wait_for(lambda: fm.backlog()[0] == 0, timeout=WAIT_S)


def test_past_the_bound_a_backed_up_database_refuses_with_503(controls, stack):
    """One thread, one PostgreSQL connection, FM_RECORD_BACKLOG_MAX=1, `files` locked: the written-through uploads
    queue for the connection until 8 wait (FM_PG_POOL_SIZE × 8); the ones after them are refused at once with 503 +
    Retry-After instead of waiting too. Every 201 reaches PostgreSQL once the lock goes."""
    with instance(controls, stack, FM_THREADS=1, FM_PG_POOL_SIZE=1, FM_RECORD_BACKLOG_MAX=1,
                  FM_RECORD_BACKLOG_MS=3600000) as fm:
        user = fm.ready_user("bound-queue")
        session = Psql(stack, fm.dbname)
        try:
            session.query("BEGIN; LOCK TABLE files IN ACCESS EXCLUSIVE MODE")
            first = fm.post_upload(user)  # behind: the backlog is at its bound from here on
            assert first.status_code == 201, first.text
            with concurrent.futures.ThreadPoolExecutor(19) as pool:
                futures = [pool.submit(fm.post_upload, user) for _ in range(19)]
                assert wait_for(lambda: sum(f.done() for f in futures) >= 10, timeout=WAIT_S)
                session.query("ROLLBACK")
                answers = [f.result() for f in futures]
        finally:
            session.close()
        codes = sorted(a.status_code for a in answers)
        assert set(codes) == {201, 503} and codes.count(503) >= 10, codes
        for a in answers:
            if a.status_code == 503:
                assert a.headers.get("Retry-After") == "1" and a.json()["error"]["code"] == "unavailable", a.text
        assert fm.metric("fm_records_refused_total") == codes.count(503)
        files = [first.json()["file_id"]] + [a.json()["file_id"] for a in answers if a.status_code == 201]
        assert wait_for(lambda: fm.in_pg(files) == len(files), timeout=WAIT_S)


def test_flusher_drains_a_large_backlog_in_few_rounds(controls, stack):
    """20,000 records gathered while the flushers are held go to PostgreSQL in batches of up to 1,000 once they are
    let go: every one arrives, in no more rounds (inserts) than 20 full batches plus the few partial batches taken
    while the backlog was filling (two per thread)."""
    total = 20000
    with instance(controls, stack, FM_RECORD_BACKLOG_MAX=100000, FM_RECORD_BACKLOG_MS=3600000) as fm:
        user = fm.ready_user("drain")
        flushed, rounds = fm.metric("fm_records_flushed_total"), fm.metric("fm_records_flush_batches_total")
        with flushers_held(fm, user):
            def post_many(n):
                s = requests.Session()
                s.headers.update(user.headers)
                codes = []
                for _ in range(n):
                    r = s.post(fm.base + "/v1/uploads", timeout=30, json={
                        "name": f"drain-{secrets.token_hex(8)}.bin", "size": 10,
                        "content_type": "application/octet-stream", "sha256": secrets.token_hex(32),
                        "on_conflict": "rename"})
                    codes.append(r.status_code)
                return codes
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                codes = [c for cs in pool.map(post_many, [total // 16] * 16) for c in cs]
            assert codes == [201] * total, {c: codes.count(c) for c in set(codes)}
            assert fm.backlog()[0] == total
        assert wait_for(lambda: fm.backlog()[0] == 0, timeout=600, interval=0.5), fm.backlog()
        assert int(fm.sql(f"SELECT count(*) FROM files WHERE owner_id = '{user.id}' AND name LIKE 'drain-%'")) == total
        assert fm.metric("fm_records_flushed_total") - flushed == total
        used = fm.metric("fm_records_flush_batches_total") - rounds
        assert 0 < used <= total // 1000 + 2 * 2, used


def test_one_bad_record_does_not_stop_the_flusher(controls, stack):
    """A record PostgreSQL refuses (its name is not UTF-8) among good ones: the good ones are flushed, the bad one
    is set aside as fm:rec:refused:{id} with an error logged, and the backlog empties."""
    with instance(controls, stack, FM_RECORD_BACKLOG_MS=3600000) as fm:
        user = fm.ready_user("bad-record")
        with flushers_held(fm, user):  # so that the bad record and good ones meet in one batch
            bad = str(uuid.uuid4())
            fm.redis("HSET", f"fm:rec:{{{bad}}}", "kind", "upload", "file_id", str(uuid.uuid4()), "owner", user.id,
                     "name", b"bad\xff.bin", "size", "10", "type", "application/octet-stream",
                     "sha256", "ab" * 32, "created", str(int(time.time() * 1000)), "upload_id", bad,
                     "key", f"incoming/{bad}", "expires", str(int(time.time()) + 3600))
            fm.redis("ZADD", "fm:rec:pending", str(int(time.time() * 1000)), bad)
            good = [fm.post_upload(user) for _ in range(5)]
            assert [g.status_code for g in good] == [201] * 5
        files = [g.json()["file_id"] for g in good]
        assert wait_for(lambda: fm.in_pg(files) == 5, timeout=WAIT_S), fm.in_pg(files)
        assert wait_for(lambda: fm.backlog()[0] == 0, timeout=WAIT_S), fm.backlog()
        assert fm.redis("EXISTS", f"fm:rec:refused:{{{bad}}}") == 1
        assert fm.metric("fm_records_set_aside_total") == 1
        assert f"PostgreSQL refuses record {bad}" in fm.svc.log_text()


def test_a_batch_left_by_a_dead_flusher_is_taken_again(controls, stack):
    """A record a flusher took (moved to fm:rec:flushing, leased) before its instance died, the lease since ended:
    another flusher takes it again and it reaches PostgreSQL."""
    with instance(controls, stack) as fm:
        user = fm.ready_user("lease")
        upload_id, file_id = str(uuid.uuid4()), str(uuid.uuid4())
        now_ms = int(time.time() * 1000)
        fm.redis("HSET", f"fm:rec:{{{upload_id}}}", "kind", "upload", "file_id", file_id, "owner", user.id,
                 "name", "left.bin", "size", "10", "type", "application/octet-stream", "sha256", "cd" * 32,
                 "created", str(now_ms), "upload_id", upload_id, "key", f"incoming/{upload_id}",
                 "expires", str(now_ms // 1000 + 3600))
        fm.redis("SET", f"fm:recf:{{{file_id}}}", upload_id)
        fm.redis("ZADD", "fm:rec:flushing", str(now_ms), upload_id)
        fm.redis("ZADD", "fm:rec:lease", str(now_ms - 1), upload_id)  # the dead flusher's lease, ended
        assert wait_for(lambda: fm.in_pg([file_id]) == 1, timeout=WAIT_S)
        assert wait_for(lambda: fm.backlog()[0] == 0, timeout=WAIT_S)
        assert fm.redis("EXISTS", f"fm:rec:{{{upload_id}}}", f"fm:recf:{{{file_id}}}", "fm:rec:lease") == 0
