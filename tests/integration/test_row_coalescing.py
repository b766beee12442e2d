"""Coalesced row loads (control-plane/files.c, docs/decisions.md "Row loads are coalesced"): when the cached row
`fm:file:{id}` is missing, the readers of one event-loop thread that miss it together share one PostgreSQL query
instead of each queueing their own (the cache stampede of the h2 benchmark: 400 misses, 270 of them "pg timeout").

No timing: PostgreSQL is held with `LOCK TABLE files IN ACCESS EXCLUSIVE MODE` in a psql session, so the first
reader's query waits on the lock (seen in pg_stat_activity under this instance's application_name); the test goes on
once every other reader is counted as waiting for it (fm_row_loads_coalesced_total), then releases or breaks the load.

One dedicated fm-control with one thread (every request meets the same table). Every Redis database but 0 belongs to
another suite, so it uses the stack's database 0; its keys cannot collide (file ids are UUIDs) and the instance is
stopped at the end of the module.

    FM_BUILD_DIR=build /usr/bin/python3 -m pytest -q tests/integration/test_row_coalescing.py
"""
import concurrent.futures
import contextlib
import subprocess
import uuid

import pytest

from helpers_fm import assert_error, metric as service_metric, redis_cmd, redis_url, wait_for
from helpers_uploads import Fm, Psql, dedicated, random_bytes

REDIS_DB = 0
APP_NAME = "fm-coalesce-test"
READERS = 20
WAIT_S = 30  # generous bound on each wait for a state the test causes itself; never reached when all is well
FILE_QUERY = "%json_build_object(''id'', f.id%"  # files.c's file_sql, as an SQL literal


class CoalesceFm(Fm):
    """helpers_uploads.Fm on the stack's Redis database 0."""

    def redis(self, *args):
        return redis_cmd(self.stack, REDIS_DB, *args)

    def ready_file(self, owner):
        """A READY file of `owner` whose row was never read (so neither Redis nor the thread holds a copy)."""
        data = random_bytes(300)
        file_id = self.start(owner, data)["file_id"]
        self.mark_verified(file_id, data)
        assert self.redis("GET", f"fm:file:{{{file_id}}}") is None
        return file_id

    def waiting_loads(self):
        """PostgreSQL backends of this instance whose file-row query waits on a lock: (pid, ...) ."""
        out = self.sql(f"SELECT pid FROM pg_stat_activity WHERE application_name = '{APP_NAME}' "
                       f"AND wait_event_type = 'Lock' AND query LIKE '{FILE_QUERY}'")
        return [int(p) for p in out.split()] if out else []


@pytest.fixture(scope="module")
def fm(controls, stack):
    with dedicated(controls, stack, CoalesceFm, FM_THREADS=1, FM_REDIS_URL=redis_url(stack, REDIS_DB),
                   FM_DATABASE_URL=f"{stack.env['FM_DATABASE_URL']} application_name={APP_NAME}",
                   FM_PG_TIMEOUT_MS=120000) as f:  # the held loads must not time out here
        yield f


@pytest.fixture(scope="module")
def owner(fm):
    return fm.user("co-owner")


@pytest.fixture(scope="module")
def stranger(fm):
    return fm.user("co-stranger")


def coalesced(fm):
    return service_metric(fm.base, "fm_row_loads_coalesced_total")


def inflight(fm):
    return service_metric(fm.base, "fm_http_inflight_requests", thread="0")


@contextlib.contextmanager
def files_locked(fm, table="files"):
    """Every statement that reads `table` waits until the block ends (then the transaction is rolled back)."""
    session = Psql(fm.stack, fm.dbname)
    try:
        session.query(f"BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        yield session
    finally:
        session.query("ROLLBACK")
        session.close()


class Readers:
    """GET /v1/files/{id} from many threads at once; results() waits for every answer."""

    def __init__(self, fm):
        self.fm = fm
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=READERS + 5)
        self.futures = []

    def get(self, user, file_id, count=1):
        for _ in range(count):
            self.futures.append(self.pool.submit(self.fm.call, user, "GET", f"/v1/files/{file_id}", timeout=120))

    def results(self):
        try:
            return [f.result() for f in self.futures]
        finally:
            self.pool.shutdown()


def one_load_waiting(fm):
    """The first reader's query is in PostgreSQL, waiting on the lock; returns its backend's pid."""
    pids = wait_for(fm.waiting_loads, WAIT_S)
    assert len(pids) == 1, f"expected one file-row query waiting on the lock, found {pids}"
    return pids[0]


def all_joined(fm, before, joiners):
    """Waits until `joiners` readers wait for the one load in flight, or until a second query shows up (which would
    be a reader loading on its own); asserts the former."""
    wait_for(lambda: coalesced(fm) - before >= joiners or len(fm.waiting_loads()) > 1, WAIT_S)
    waiting = fm.waiting_loads()
    assert len(waiting) == 1, f"{len(waiting)} file-row queries wait in PostgreSQL: readers made their own"
    assert coalesced(fm) - before == joiners, f"{coalesced(fm) - before:.0f} of {joiners} readers waited for the load"


def read_while_locked(fm, user, file_id):
    """READERS concurrent GETs of `file_id` by `user` while PostgreSQL holds the files table: the first starts the
    load, the others join it (asserted). Returns their answers and the coalesced counter from before."""
    before = coalesced(fm)
    readers = Readers(fm)
    with files_locked(fm):
        readers.get(user, file_id)
        one_load_waiting(fm)
        readers.get(user, file_id, READERS - 1)
        all_joined(fm, before, READERS - 1)
    return readers.results(), before


def test_concurrent_misses_share_one_query(fm, owner):
    file_id = fm.ready_file(owner)
    answers, before = read_while_locked(fm, owner, file_id)
    assert [a.status_code for a in answers] == [200] * READERS, [a.text[:200] for a in answers]
    bodies = [a.json() for a in answers]
    assert all(b == bodies[0] for b in bodies), bodies
    assert bodies[0]["id"] == file_id and bodies[0]["status"] == "READY"
    assert not {"owner_id", "visibility", "storage_key"} & set(bodies[0]), bodies[0]
    # `variants` is the list of what exists (test_file_metadata.py), never the stored keys
    assert all("key" not in v for v in bodies[0]["variants"]), bodies[0]
    assert coalesced(fm) - before == READERS - 1
    assert len({a.headers["X-Request-Id"] for a in answers}) == READERS  # each answered as itself
    # the load filled the cache once: the next read is answered without PostgreSQL
    assert wait_for(lambda: fm.redis("GET", f"fm:file:{{{file_id}}}"), 5)


def test_the_first_misses_of_a_missing_id_share_one_query(fm, owner):
    answers, _ = read_while_locked(fm, owner, str(uuid.uuid4()))
    for a in answers:
        assert_error(a, 404, "not_found")


@pytest.mark.parametrize("first", ["owner", "stranger"])
def test_a_stranger_waiting_on_the_same_row_gets_404(fm, owner, stranger, first):
    """Each waiter is checked as itself: whoever's load it was, the owner gets the row and anyone else the 404 of a
    missing id."""
    file_id = fm.ready_file(owner)
    users = {"owner": owner, "stranger": stranger}
    before = coalesced(fm)
    readers = Readers(fm)
    with files_locked(fm):
        readers.get(users[first], file_id)
        one_load_waiting(fm)
        for _ in range(5):
            readers.get(stranger, file_id)
            readers.get(owner, file_id)
        all_joined(fm, before, 10)
    answers = readers.results()
    asked = [first] + ["stranger", "owner"] * 5
    for who, a in zip(asked, answers):
        if who == "owner":
            assert a.status_code == 200 and a.json()["id"] == file_id, a.text[:300]
        else:
            err = assert_error(a, 404, "not_found")
            assert err["message"] == "no such file", err


def h2c_get(fm, user, path, request_id):
    """A GET over HTTP/2 (curl, prior knowledge) whose answer is never read; go_away() ends its connection. HTTP/2
    because h2o reads an HTTP/2 connection all along and frees its requests when it closes, while an HTTP/1 request
    in progress only learns of its client's departure when it writes the answer."""
    return subprocess.Popen(["curl", "-s", "-o", "/dev/null", "--http2-prior-knowledge", "-H",
                             f"Authorization: Bearer {user.token}", "-H", f"X-Request-Id: {request_id}",
                             fm.base + path], stdin=subprocess.DEVNULL)


def go_away(client):
    client.kill()
    client.wait()


def test_readers_that_go_away_do_not_strand_the_others(fm, owner):
    """The request whose query it is and one waiter lose their clients while the load is held: the load still
    answers the remaining waiters, and the instance stays clean (its exit and sanitizer log are checked at the end)."""
    file_id = fm.ready_file(owner)
    path = f"/v1/files/{file_id}"
    before = coalesced(fm)
    readers = Readers(fm)
    with files_locked(fm):
        leader = h2c_get(fm, owner, path, "co-gone-leader")
        one_load_waiting(fm)
        readers.get(owner, file_id, 5)
        waiter = h2c_get(fm, owner, path, "co-gone-waiter")
        readers.get(owner, file_id, 5)
        all_joined(fm, before, 11)
        assert wait_for(lambda: inflight(fm) == 12, WAIT_S), inflight(fm)
        go_away(leader)
        go_away(waiter)
        # both requests are gone on the server's side (h2o freed them) before the load answers
        assert wait_for(lambda: inflight(fm) == 10, WAIT_S), inflight(fm)
    answers = readers.results()
    assert [a.status_code for a in answers] == [200] * 10, [a.text[:200] for a in answers]
    assert all(a.json()["id"] == file_id for a in answers)
    assert fm.file(owner, file_id).status_code == 200


@pytest.mark.parametrize("how, status, code", [
    ("pg_terminate_backend", 503, "unavailable"),  # no result (as a timeout): fm_pg_failed answers 503
    ("pg_cancel_backend", 500, "internal_error"),  # an SQL error: 500
])
def test_a_failed_load_answers_every_waiter_as_its_reader(fm, owner, how, status, code):
    file_id = fm.ready_file(owner)
    before = coalesced(fm)
    readers = Readers(fm)
    with files_locked(fm):
        readers.get(owner, file_id)
        pid = one_load_waiting(fm)
        readers.get(owner, file_id, READERS - 1)
        all_joined(fm, before, READERS - 1)
        assert fm.sql(f"SELECT {how}({pid})") == "t"
        answers = readers.results()  # answered while the lock is still held: no one made a query of their own
    ids = set()
    for a in answers:
        ids.add(assert_error(a, status, code)["request_id"])
        if status == 503:
            assert a.headers.get("Retry-After") == "1"
    assert len(ids) == READERS
    # the next reader loads again, and succeeds
    assert fm.file(owner, file_id).status_code == 200


def test_a_patch_reads_back_its_own_write(fm, owner):
    """PATCH answers the row read again after its UPDATE; a GET's load that began before that UPDATE may hold the
    older row, so the PATCH does not wait for it but loads on its own. `uploads` is locked: the file-row query
    (which reads it) waits, the PATCH's UPDATE (which does not) goes through."""
    file_id = fm.ready_file(owner)
    readers = Readers(fm)
    with files_locked(fm, "uploads"):
        readers.get(owner, file_id)
        one_load_waiting(fm)
        patch = readers.pool.submit(fm.call, owner, "PATCH", f"/v1/files/{file_id}", json={"visibility": "public"},
                                    timeout=120)
        waiting = wait_for(lambda: len(fm.waiting_loads()) > 1, WAIT_S)
        assert waiting, "the PATCH's read-back waited for a load that began before its write"
    answer = patch.result()
    assert answer.status_code == 200, answer.text
    assert answer.json()["visibility"] == "public"
    assert [a.status_code for a in readers.results()] == [200]
