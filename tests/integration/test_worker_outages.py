"""Dependency outages never use the attempts meant for bad content (issue 10; DESIGN.md §6 rule 4, §8 "a dependency
outage of ≤ 60 s never ends a file FAILED"; docs/workers.md "Retries and dead letters").

The worker runs with FM_JOB_MAX_ATTEMPTS=3 and a 200 ms backoff base, so three counted attempts would be spent in about
a second: every outage below lasts for many more failed tries than that, and the file must still end READY. Content
errors keep their old rule (quarantined at once, or FAILED + dead letter after three content attempts).

The module has a private stack (PostgreSQL, Redis, RGW, clamd) of its own, because it stops its PostgreSQL, Redis and
clamd. The worker reaches the store through a TCP relay the test can close (connection refused), turn into a failing
store (every request answered 503 SlowDown), and open again; the clients' presigned PUTs go to RGW directly. Tests
assert on states and counters (jobs.attempts, jobs.transient_retries, the metrics), not on timings.

Run: FM_BUILD_DIR=build /usr/bin/python3 -m pytest -q tests/integration/test_worker_outages.py
"""
import io
import os
import secrets
import signal
import socket
import threading
import time

import pytest
import requests
from PIL import Image

from conftest import ControlFactory, WorkerFactory
from helpers_fm import metric_sum, redis_cmd, redis_url, relay_sockets, wait_for
from helpers_uploads import MIB, Fm, Psql, key_of, sha256_hex
from stackfixture import free_ports, start_stack

OUTAGE_DB = 3          # the module's Redis database (its stack is its own)
MAX_ATTEMPTS = 3
BACKOFF_MS = 200       # FM_JOB_BACKOFF_BASE_MS: three counted attempts take ~1.4 s
BACKOFF_MAX_MS = 1500  # FM_JOB_BACKOFF_MAX_MS: an outage is retried at least every 1.5 s
VISIBILITY_MS = 3000
MORE_THAN_THE_ATTEMPTS = MAX_ATTEMPTS + 2  # failed tries an outage must last for (counted, they would have ended it)
SETTLED = {"READY", "QUARANTINED", "FAILED"}


# --- a TCP relay in front of RGW, for the worker alone ------------------------------------------------------------

SLOW_DOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>"
             b"<Message>Please reduce your request rate.</Message></Error>")


class StoreRelay:
    """Relays TCP connections to the store while open; when closed nothing listens (connection refused, as while RGW
    restarts); when failing it answers every request 503 SlowDown and closes, as a store under strain does."""

    def __init__(self, target):
        host, port = target.split("//", 1)[1].rsplit(":", 1)
        self.target = (host, int(port))
        (self.port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{self.port}"
        self.mode, self.listener, self.conns = "closed", None, set()
        self.lock = threading.Lock()
        self.refused_requests = 0

    def _listen(self):
        if self.listener is not None:
            return
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self.listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _drop_all(self):
        with self.lock:
            conns, self.conns = list(self.conns), set()
        for c in conns:
            for how in (lambda: c.shutdown(socket.SHUT_RDWR), c.close):
                try:
                    how()
                except OSError:
                    pass

    def open(self):
        self.mode = "open"
        self._listen()

    def fail(self):
        self.mode = "failing"
        self._drop_all()
        self._listen()

    def close(self):
        self.mode = "closed"
        s, self.listener = self.listener, None
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self._drop_all()

    def _track(self, *socks):
        with self.lock:
            self.conns.update(socks)

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self._track(client)
            handler = self._relay if self.mode == "open" else self._refuse
            threading.Thread(target=handler, args=(client,), daemon=True).start()

    def _refuse(self, client):
        try:
            client.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            self.refused_requests += 1
            client.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
                           b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(SLOW_DOWN) + SLOW_DOWN)
        except OSError:
            pass
        finally:
            client.close()

    def _relay(self, client):
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        self._track(upstream)
        relay_sockets(client, upstream)
        client.close()
        upstream.close()


# --- fixtures --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ostack():
    st = start_stack()
    yield st
    st.stop()


@pytest.fixture(scope="module")
def ocontrols(ostack, log_dir):
    factory = ControlFactory(ostack, log_dir)
    factory.migrate()
    yield factory
    failures = factory.stop_all()
    assert not failures, "\n\n".join(failures)


@pytest.fixture(scope="module")
def oworkers(ocontrols, log_dir):
    factory = WorkerFactory(ocontrols, log_dir)
    yield factory
    failures = factory.stop_all()
    assert not failures, "\n\n".join(failures)


class OutageFm(Fm):
    def redis(self, *args):
        return redis_cmd(self.stack, OUTAGE_DB, *args)

    def reconnect_sql(self):
        """A new psql session (the old one ended with the PostgreSQL it talked to)."""
        try:
            self.psql.close()
        except Exception:  # noqa: BLE001 -- its server is gone: whatever state it is in, it is dropped
            pass
        self.psql = Psql(self.stack, self.dbname)

    def job_row(self, job_id):
        """The whole job row (transient_retries is missing on a schema without migration 010)."""
        return self.sql_row(f"SELECT row_to_json(j) FROM jobs j WHERE id = '{job_id}'")


@pytest.fixture(scope="module")
def relay(ostack):
    r = StoreRelay(ostack.env["FM_S3_ENDPOINT"])
    r.open()
    yield r
    r.close()


@pytest.fixture(scope="module")
def fm(ocontrols, ostack):
    svc = ocontrols.start(FM_RECONCILE_INTERVAL_S=1, FM_MULTIPART_THRESHOLD=1024 * MIB,
                          FM_REDIS_URL=redis_url(ostack, OUTAGE_DB))
    f = OutageFm(ostack, svc)
    yield f
    f.close()
    ocontrols.stop(svc)


class Pool:
    """The module's fm-worker (2 job threads), its S3 traffic through the relay; tests may replace it."""

    def __init__(self, workers, stack, relay):
        self.workers, self.stack, self.relay, self.current = workers, stack, relay, None

    def env(self, **overrides):
        e = {"FM_REDIS_URL": redis_url(self.stack, OUTAGE_DB), "FM_WORKER_THREADS": 2,
             "FM_JOB_MAX_ATTEMPTS": MAX_ATTEMPTS, "FM_JOB_BACKOFF_BASE_MS": BACKOFF_MS,
             "FM_JOB_BACKOFF_MAX_MS": BACKOFF_MAX_MS, "FM_JOB_VISIBILITY_MS": VISIBILITY_MS,
             "FM_CLAMD_TIMEOUT_MS": 2000, "FM_S3_ENDPOINT": self.relay.url}
        e.update(overrides)
        return e

    def replace(self, **overrides):
        if self.current is not None and self.current.proc.poll() is None:
            self.workers.stop(self.current)
        self.current = self.workers.start(**self.env(**overrides))
        return self.current

    def ensure(self):
        if self.current is None or self.current.proc.poll() is not None:
            self.current = self.workers.start(**self.env())
        return self.current


@pytest.fixture(scope="module")
def pool(oworkers, ostack, relay):
    p = Pool(oworkers, ostack, relay)
    yield p
    if p.current is not None and p.current.proc.poll() is None:
        oworkers.stop(p.current)


@pytest.fixture
def worker(pool):
    return pool.replace()  # a fresh process per test: its metrics count that test's jobs only


@pytest.fixture(scope="module")
def alice(fm):
    return fm.user("outage")


@pytest.fixture
def clamd_back(ostack):
    """Whatever happens in the test, clamd runs (and is not stopped with SIGSTOP) afterwards."""
    yield ostack
    pid = ostack.pids().get("clamd")
    if pid:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    ostack.start_clamd()


@pytest.fixture
def services_back(ostack, fm, relay):
    """PostgreSQL and Redis run and the relay is open again after the test (the starts are idempotent)."""
    yield ostack
    relay.open()
    ostack.start_pg()
    ostack.start_redis()
    fm.reconnect_sql()


# --- helpers -----------------------------------------------------------------------------------------------------------

def image_bytes(fmt, size):
    img = Image.new("RGB", size, (30, 120, 200))
    for x in range(0, size[0], 29):
        for y in range(0, size[1], 31):
            img.putpixel((x, y), (x % 256, y % 256, secrets.randbelow(256)))
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


def upload(fm, user, data, content_type, **kw):
    a, c = fm.upload(user, data, content_type=content_type, **kw)
    return a, c["job_id"] if "job_id" in c else fm.jobs_of_upload(a["upload_id"])[0]


def metrics(svc):
    return requests.get(svc.url + "/metrics", timeout=5).text


metric = metric_sum  # (text, name, **labels)


def wait_failing_without_failing(fm, file_id, job_id, tries, timeout=90):
    """Polls until the job has failed on a dependency `tries` times in a row, asserting all along that neither the
    file nor the job is FAILED (the outage must not use the attempts of the content). Returns the job row."""
    deadline = time.monotonic() + timeout
    while True:
        f, j = fm.file_row(file_id), fm.job_row(job_id)
        assert f["status"] != "FAILED" and j["status"] != "FAILED", \
            f"a dependency outage ended the file FAILED: file {f}, job {j}"
        assert f["status"] not in SETTLED, (f, j)
        if (j.get("transient_retries") or 0) >= tries and j["status"] == "RETRY":
            return j
        assert time.monotonic() < deadline, f"the job has not failed {tries} times on the dependency: {j}"
        time.sleep(0.05)


def wait_settled(fm, file_id, timeout=60):
    row = wait_for(lambda: (lambda r: r if r and r["status"] in SETTLED else None)(fm.file_row(file_id)), timeout,
                   0.05)
    assert row, f"file {file_id} not settled after {timeout} s: {fm.file_row(file_id)}"
    return row


def assert_waiting_state(fm, alice, a, job_id, job, words):
    """What the owner and an admin see while a job waits for a dependency: the file UPLOADED (or PROCESSING while a
    try runs), the job RETRY with no attempt used and the dependency's error as its last error."""
    assert job["attempts"] == 0, job
    assert any(w in job["last_error"] for w in words), job
    assert fm.file_row(a["file_id"])["status"] in ("UPLOADED", "PROCESSING")
    r = fm.job(alice, job_id)  # GET /v1/jobs/{id}: the reason is shown
    assert r.status_code == 200, r.text
    shown = r.json()
    assert shown["status"] in ("RETRY", "RUNNING") and shown["last_error"], shown
    assert shown["attempts"] == 0 and shown["transient_retries"] >= 1, shown  # waiting on a dependency, not refused


# --- (a) clamd ---------------------------------------------------------------------------------------------------------

def test_clamd_down_for_many_backoffs_never_fails_the_file(fm, alice, worker, clamd_back):
    stack = clamd_back
    data = image_bytes("PNG", (320, 240))
    stack.stop_clamd()
    a, job_id = upload(fm, alice, data, "image/png", name="scan-me.png")
    job = wait_failing_without_failing(fm, a["file_id"], job_id, MORE_THAN_THE_ATTEMPTS)
    assert_waiting_state(fm, alice, a, job_id, job, ("clamd unavailable",))
    assert fm.redis("ZSCORE", "jobs:delayed", job_id) is not None  # scheduled, not forgotten

    stack.start_clamd()
    row = wait_settled(fm, a["file_id"])
    assert row["status"] == "READY" and row["blob"] == sha256_hex(data), (row, fm.job_row(job_id))
    job = fm.job_row(job_id)
    assert job["status"] == "DONE" and job["attempts"] == 1, job  # the one that worked; the outage used none
    assert job["transient_retries"] >= MORE_THAN_THE_ATTEMPTS, job
    text = metrics(worker)
    assert metric(text, "fm_worker_retries_total", cause="dependency", step="scan") >= MORE_THAN_THE_ATTEMPTS
    assert metric(text, "fm_worker_retries_total", cause="content") == 0
    assert metric(text, "fm_worker_jobs_total", type="process_upload", outcome="deferred") >= MORE_THAN_THE_ATTEMPTS
    assert metric(text, "fm_worker_dead_letters_total") == 0
    dead = fm.redis("XRANGE", "jobs:dead", "-", "+") or []
    assert not [e for e in dead if job_id in e[1]], dead


# --- (b) the store ----------------------------------------------------------------------------------------------------

def test_store_unreachable_then_failing_for_twenty_seconds_ends_ready(fm, alice, worker, relay, services_back):
    data = image_bytes("JPEG", (640, 480))
    relay.close()  # connection refused, as while RGW restarts
    t0 = time.monotonic()
    a, job_id = upload(fm, alice, data, "image/jpeg", name="stored.jpg")
    job = wait_failing_without_failing(fm, a["file_id"], job_id, MORE_THAN_THE_ATTEMPTS)
    assert_waiting_state(fm, alice, a, job_id, job, ("ConnectFailed",))
    while time.monotonic() - t0 < 10:  # the outage lasts ~20 s whatever the backoff did
        wait_failing_without_failing(fm, a["file_id"], job_id, 0)
        time.sleep(0.5)

    relay.fail()  # the store answers, but every request with 503 SlowDown
    before = fm.job_row(job_id)["transient_retries"]
    job = wait_failing_without_failing(fm, a["file_id"], job_id, before + 3)  # (one try may have been under way)
    # the job's first call is the stage step's HEAD, whose 503 has no body to name SlowDown
    assert "(HTTP 503)" in job["last_error"], job
    assert relay.refused_requests >= 2
    while time.monotonic() - t0 < 20:
        wait_failing_without_failing(fm, a["file_id"], job_id, 0)
        time.sleep(0.5)

    relay.open()
    row = wait_settled(fm, a["file_id"])
    assert row["status"] == "READY" and row["blob"] == sha256_hex(data), (row, fm.job_row(job_id))
    job = fm.job_row(job_id)
    assert job["status"] == "DONE" and job["attempts"] == 1 and job["transient_retries"] >= before + 3, job
    text = metrics(worker)
    assert metric(text, "fm_worker_retries_total", cause="dependency", step="stage") >= before + 3  # its first S3 call
    assert metric(text, "fm_worker_retries_total", cause="content") == 0


# --- (c) content errors keep their rule ----------------------------------------------------------------------------

def test_hash_mismatch_is_still_quarantined_at_once(fm, alice, worker):
    claimed, actual = os.urandom(4096), os.urandom(4096)
    a = fm.start(alice, claimed, content_type="application/octet-stream")
    assert fm.put(a, actual).status_code == 200
    assert fm.complete(alice, a["upload_id"]).status_code == 200
    job_id = fm.jobs_of_upload(a["upload_id"])[0]
    row = wait_settled(fm, a["file_id"])
    assert row["status"] == "QUARANTINED" and "sha256 mismatch" in row["status_reason"], row
    job = fm.job_row(job_id)
    assert job["status"] == "DONE" and job["attempts"] == 1 and job["transient_retries"] == 0, job
    assert metric(metrics(worker), "fm_worker_retries_total") == 0


def test_corrupt_image_dead_letters_after_three_content_attempts_whatever_came_before(fm, alice, worker, clamd_back):
    """A truncated JPEG first meets clamd down (dependency errors: no attempt used), then fails on its content: FAILED
    after exactly FM_JOB_MAX_ATTEMPTS content attempts, with the content's reason, and dead-lettered."""
    stack = clamd_back
    good = image_bytes("JPEG", (800, 600))
    corrupt = good[: len(good) // 2]
    stack.stop_clamd()
    a, job_id = upload(fm, alice, corrupt, "image/jpeg", name="broken.jpg")
    wait_failing_without_failing(fm, a["file_id"], job_id, MORE_THAN_THE_ATTEMPTS)
    stack.start_clamd()

    row = wait_settled(fm, a["file_id"])
    job = fm.job_row(job_id)
    assert row["status"] == "FAILED", (row, job)
    assert job["status"] == "FAILED" and job["attempts"] == MAX_ATTEMPTS, job
    assert "clamd" not in job["last_error"] and row["status_reason"] == job["last_error"], job  # the content's reason
    assert job["transient_retries"] == 0, job  # the streak ended with the first content failure
    dead = [dict(zip(f[::2], f[1::2])) for _id, f in fm.redis("XRANGE", "jobs:dead", "-", "+")]
    mine = [d for d in dead if d["job_id"] == job_id]
    assert len(mine) == 1 and mine[0]["attempts"] == str(MAX_ATTEMPTS), dead
    assert mine[0]["error"] == job["last_error"]
    text = metrics(worker)
    assert metric(text, "fm_worker_retries_total", cause="content") == MAX_ATTEMPTS - 1
    assert metric(text, "fm_worker_retries_total", cause="dependency", step="scan") >= MORE_THAN_THE_ATTEMPTS
    assert metric(text, "fm_worker_dead_letters_total") == 1


def test_a_dependency_down_past_the_limit_fails_with_a_clear_reason(fm, alice, worker, clamd_back):
    """FM_JOB_TRANSIENT_MAX_S (a day by default) ends the wait: the job's streak is made to look older than that."""
    stack = clamd_back
    data = image_bytes("PNG", (200, 100))
    stack.stop_clamd()
    a, job_id = upload(fm, alice, data, "image/png")
    job = wait_failing_without_failing(fm, a["file_id"], job_id, 1)
    fm.sql(f"UPDATE jobs SET transient_since = now() - interval '25 hours' WHERE id = '{job_id}'")
    row = wait_settled(fm, a["file_id"])
    job = fm.job_row(job_id)
    assert row["status"] == "FAILED" and job["status"] == "FAILED", (row, job)
    assert job["last_error"].startswith("dependency errors for ") and "FM_JOB_TRANSIENT_MAX_S 86400" in job["last_error"]
    assert "clamd unavailable" in job["last_error"] and row["status_reason"] == job["last_error"], job
    assert job["attempts"] == 0, job
    dead = [dict(zip(f[::2], f[1::2])) for _id, f in fm.redis("XRANGE", "jobs:dead", "-", "+")]
    mine = [d for d in dead if d["job_id"] == job_id]
    assert len(mine) == 1 and mine[0]["error"] == job["last_error"], dead
    assert mine[0]["attempts"] == "0" and int(mine[0]["transient"]) >= 2, mine


# --- (d) PostgreSQL and Redis restarting mid-job ---------------------------------------------------------------------

def stall_scan(stack):
    """clamd stopped with SIGSTOP: the kernel still accepts its connections, so a job's scan waits (up to the clamd
    timeout) until SIGCONT -- a job held in the middle of its steps, deterministically."""
    pid = stack.pids()["clamd"]
    os.kill(pid, signal.SIGSTOP)
    return lambda: os.kill(pid, signal.SIGCONT)


def test_postgresql_restarting_once_the_work_is_done_does_not_fail_the_file(fm, alice, pool, clamd_back,
                                                                            services_back):
    """With a single attempt allowed, PostgreSQL goes away while the job is inside its steps and stays away well past
    the visibility timeout: the job must still end READY on its one attempt."""
    stack = clamd_back
    svc = pool.replace(FM_JOB_MAX_ATTEMPTS=1, FM_CLAMD_TIMEOUT_MS=60000)
    data = image_bytes("PNG", (300, 300))
    resume = stall_scan(stack)
    try:
        a, job_id = upload(fm, alice, data, "image/png")
        assert wait_for(lambda: fm.job_row(job_id)["status"] == "RUNNING", 30, 0.05), fm.job_row(job_id)
        stack.stop_pg()
    finally:
        resume()
    # the steps end and the outcome meets no PostgreSQL; it stays away for several visibility timeouts
    assert wait_for(lambda: "postgresql:" in svc.log_text().split(job_id, 1)[-1], 30), svc.log_text()[-3000:]
    time.sleep(3 * VISIBILITY_MS / 1000)
    stack.start_pg()
    fm.reconnect_sql()
    row = wait_settled(fm, a["file_id"])
    job = fm.job_row(job_id)
    assert row["status"] == "READY" and row["blob"] == sha256_hex(data), (row, job, svc.log_text()[-3000:])
    assert job["status"] == "DONE" and job["attempts"] == 1, job
    assert metric(metrics(svc), "fm_worker_postgresql_waits_total") >= 1


def test_redis_restarting_mid_job_does_not_fail_the_file(fm, alice, pool, clamd_back, services_back):
    """With a single attempt allowed, Redis goes away while the job is inside its steps, for longer than the job's
    lock lives: when it is back, no other worker may start the job again (and count this run as a dead one)."""
    stack = clamd_back
    svc = pool.replace(FM_JOB_MAX_ATTEMPTS=1, FM_CLAMD_TIMEOUT_MS=60000)
    data = image_bytes("PNG", (280, 200))
    resume = stall_scan(stack)
    try:
        a, job_id = upload(fm, alice, data, "image/png")
        assert wait_for(lambda: fm.job_row(job_id)["status"] == "RUNNING", 30, 0.05), fm.job_row(job_id)
        stack.stop_redis()
        time.sleep(2 * VISIBILITY_MS / 1000)  # the lock (PX visibility) expires meanwhile
        stack.start_redis()
        time.sleep(3 * VISIBILITY_MS / 1000)  # the other thread's reclaims run, the housekeeper beats
        assert fm.file_row(a["file_id"])["status"] != "FAILED", fm.job_row(job_id)
    finally:
        resume()
    row = wait_settled(fm, a["file_id"])
    job = fm.job_row(job_id)
    assert row["status"] == "READY", (row, job, svc.log_text()[-3000:])
    assert job["status"] == "DONE" and job["attempts"] == 1, job


def test_a_stop_at_the_end_of_the_graceful_delay_uses_no_attempt(fm, alice, pool, clamd_back):
    """A deploy: SIGTERM while a job is inside its steps, past the graceful delay; the job stops at the next step
    boundary. With a single attempt allowed, the next worker must still make the file READY."""
    stack = clamd_back
    graceful_ms = 300
    svc = pool.replace(FM_JOB_MAX_ATTEMPTS=1, FM_CLAMD_TIMEOUT_MS=60000, FM_GRACEFUL_TIMEOUT_MS=graceful_ms)
    data = image_bytes("PNG", (260, 180))
    resume = stall_scan(stack)
    try:
        a, job_id = upload(fm, alice, data, "image/png")
        assert wait_for(lambda: fm.job_row(job_id)["status"] == "RUNNING", 30, 0.05), fm.job_row(job_id)
        svc.proc.send_signal(signal.SIGTERM)
        # the HTTP side stops first; then the job threads get FM_GRACEFUL_TIMEOUT_MS, and 2 s more for a step
        assert wait_for(lambda: "fm-worker stopped" in svc.log_text(), 30, 0.02), svc.log_text()[-2000:]
        time.sleep(graceful_ms / 1000 + 0.7)
    finally:
        resume()  # the scan ends inside the 2 s: the job stops before its next step
    pool.current = None
    pool.workers.stop(svc)  # exit status 0 and a clean log, checked
    job = fm.job_row(job_id)
    assert job["status"] == "RETRY" and job["attempts"] == 0 and "shutdown" in job["last_error"], job
    assert fm.file_row(a["file_id"])["status"] == "UPLOADED"
    pool.replace(FM_JOB_MAX_ATTEMPTS=1)
    row = wait_settled(fm, a["file_id"])
    assert row["status"] == "READY", (row, fm.job_row(job_id))
    assert fm.job_row(job_id)["attempts"] == 1


# --- Lambda mode -----------------------------------------------------------------------------------------------------

def test_lambda_invocation_during_an_outage_uses_no_attempt_and_the_queue_finishes_it(fm, alice, pool, clamd_back,
                                                                                       log_dir):
    """In Lambda mode a dependency's failure is counted like the queue worker's (no attempt used) and answered with an
    error, so Lambda retries; the job is also on jobs:delayed, which a queue-mode worker serves once clamd is back."""
    from helpers_uploads import aws_record
    from lambda_runtime import lambda_worker

    stack = clamd_back
    if pool.current is not None and pool.current.proc.poll() is None:  # no queue worker until Lambda has answered
        pool.workers.stop(pool.current)
    pool.current = None
    data = image_bytes("PNG", (240, 160))
    a = fm.start(alice, data, content_type="image/png")
    fm.shield_from_reconciler(a["upload_id"])  # only the Lambda event makes this job
    assert fm.put(a, data).status_code == 200
    stack.stop_clamd()
    with lambda_worker(pool, log_dir, "lambda-outage") as (api, _, _):
        answer = api.wait_answer(api.enqueue({"Records": [aws_record(fm.bucket, key_of(a["upload_id"]), len(data))]}),
                                 timeout=60)
        assert answer.kind == "error" and answer.error_type == "Files.ProcessingError", answer.body
        job_id = fm.jobs_of_upload(a["upload_id"])[0]
        job = fm.job_row(job_id)
        assert job["status"] == "RETRY" and job["attempts"] == 0, job
        assert job["transient_retries"] == 1 and b"waits for a dependency" in answer.body, (job, answer.body)
        assert "clamd unavailable" in job["last_error"], job
        assert fm.file_row(a["file_id"])["status"] == "UPLOADED"
    assert fm.redis("ZSCORE", "jobs:delayed", job_id) is not None
    # Lambda's own two retries would meet clamd down too; the queue-mode worker keeps retrying from jobs:delayed
    queue_worker = pool.replace()
    wait_failing_without_failing(fm, a["file_id"], job_id, MORE_THAN_THE_ATTEMPTS)
    stack.start_clamd()
    row = wait_settled(fm, a["file_id"])
    assert row["status"] == "READY", (row, fm.job_row(job_id))
    assert fm.job_row(job_id)["attempts"] == 1
    assert metric(metrics(queue_worker), "fm_worker_retries_total", cause="dependency") >= MORE_THAN_THE_ATTEMPTS - 1
