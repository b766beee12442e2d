"""fm-worker's job consumer end to end (DESIGN.md §4 "Processing (workers)", docs/workers.md) against the real stack:
uploads go through an fm-control with presigned PUTs, fm-worker processes the jobs from the Redis stream, and
PostgreSQL, Redis, the bucket and clamd are looked at directly. No mocks.

The suite has its own Redis database (WORKER_DB) shared by its fm-control and its workers, so no other suite's jobs
are taken and no other suite's control plane sees these. The bucket's S3 notifications are off while it runs:
`complete` (and the 1 s reconciler) make the jobs.

Run: FM_BUILD_DIR=build /usr/bin/python3 -m pytest -q tests/integration/test_worker.py
"""
import hashlib
import io
import json
import os
import secrets
import signal
import socket
import threading
import time

import pytest
import requests
from PIL import Image

from conftest import unique_email
from helpers_fm import login, metric, redis_cmd, redis_url, register, wait_for
from helpers_uploads import EVENTS_SECRET, MIB, Fm, User, key_of, notifications_off, sha256_hex

WORKER_DB = 9
BACKOFF_MS = 200      # FM_JOB_BACKOFF_BASE_MS of the suite's workers: retries after 0.4 s, 0.8 s
VISIBILITY_MS = 3000  # FM_JOB_VISIBILITY_MS: a dead worker's job is reclaimed after 3 s
ADMIN_EMAIL = unique_email("worker-admin")


class WorkerFm(Fm):
    def redis(self, *args):
        return redis_cmd(self.stack, WORKER_DB, *args)

    def job_row(self, job_id):
        return self.sql_row(f"SELECT row_to_json(j) FROM (SELECT status, attempts, last_error, payload "
                            f"FROM jobs WHERE id = '{job_id}') j")

    def blob_row(self, sha):
        return self.sql_row(f"SELECT row_to_json(b) FROM (SELECT size, storage_key, content_type, metadata, variants,"
                            f" extracted_text FROM blobs WHERE sha256 = decode('{sha}', 'hex')) b")

    def wait_status(self, file_id, statuses, timeout=30):
        statuses = {statuses} if isinstance(statuses, str) else set(statuses)
        row = wait_for(lambda: (lambda r: r if r and r["status"] in statuses else None)(self.file_row(file_id)),
                       timeout, 0.05)
        assert row, f"file {file_id} not in {statuses} after {timeout} s: {self.file_row(file_id)}"
        return row


@pytest.fixture(scope="module")
def fm(controls, stack):
    svc = controls.start(FM_EVENTS_SECRET=EVENTS_SECRET, FM_RECONCILE_INTERVAL_S=1, FM_ADMIN_EMAIL=ADMIN_EMAIL,
                         FM_MULTIPART_THRESHOLD=1024 * MIB, FM_REDIS_URL=redis_url(stack, WORKER_DB))
    f = WorkerFm(stack, svc)
    try:
        with notifications_off(f):
            yield f
    finally:
        f.close()
        controls.stop(svc)


class Pool:
    """The suite's fm-worker: one process (2 job threads) by default; tests may replace it or add more."""

    def __init__(self, workers, stack):
        self.workers, self.stack, self.current = workers, stack, None

    def env(self, **overrides):
        e = {"FM_REDIS_URL": redis_url(self.stack, WORKER_DB), "FM_WORKER_THREADS": 2,
             "FM_JOB_BACKOFF_BASE_MS": BACKOFF_MS, "FM_JOB_VISIBILITY_MS": VISIBILITY_MS}
        e.update(overrides)
        return e

    def start_extra(self, **overrides):
        return self.workers.start(**self.env(**overrides))

    def ensure(self):
        if self.current is None or self.current.proc.poll() is not None:
            self.current = self.start_extra()
        return self.current

    def replace(self, **overrides):
        if self.current is not None and self.current.proc.poll() is None:
            self.workers.stop(self.current)
        self.current = self.start_extra(**overrides)
        return self.current


@pytest.fixture(scope="module")
def pool(workers, stack):
    p = Pool(workers, stack)
    yield p
    if p.current is not None and p.current.proc.poll() is None:
        workers.stop(p.current)


@pytest.fixture
def worker(pool):
    return pool.ensure()


@pytest.fixture(scope="module")
def alice(fm):
    return fm.user("walice")


@pytest.fixture(scope="module")
def bob(fm):
    return fm.user("wbob")


@pytest.fixture(scope="module")
def admin(fm):
    u = register(fm.base, ADMIN_EMAIL)
    assert u["role"] == "admin", u
    return User(u["id"], ADMIN_EMAIL, login(fm.base, ADMIN_EMAIL)["access_token"])


# --- helpers ---------------------------------------------------------------------------------------------------------

def image_bytes(fmt, size, color=(200, 40, 90)):
    img = Image.new("RGB", size, color)
    for x in range(0, size[0], 37):  # some structure, so the encoders have work and the hash is unique
        for y in range(0, size[1], 41):
            img.putpixel((x, y), (x % 256, y % 256, secrets.randbelow(256)))
    out = io.BytesIO()
    img.save(out, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def eicar():
    """The EICAR test file, assembled here so that no file of the repository is one (scanners flag it)."""
    parts = ["X5O!P%@AP[4\\PZX54(P^)7CC)7}$", "EICAR-STANDARD-", "ANTIVIRUS-", "TEST-FILE!$H+H*"]
    return "".join(parts).encode()


def upload(fm, user, data, content_type, **kw):
    a, c = fm.upload(user, data, content_type=content_type, **kw)
    return a, c["job_id"] if "job_id" in c else fm.jobs_of_upload(a["upload_id"])[0]


class Subscriber:
    """Reads a Redis pub/sub channel in a thread (pub/sub is not per database)."""

    def __init__(self, stack, channel):
        port = int(stack.env["FM_REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        cmd = f"*2\r\n$9\r\nSUBSCRIBE\r\n${len(channel)}\r\n{channel}\r\n".encode()
        self.sock.sendall(cmd)
        self.messages, self.f = [], self.sock.makefile("rb")
        self._read()  # the subscribe confirmation
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _read(self):
        line = self.f.readline()
        n = int(line[1:])
        items = []
        for _ in range(n):
            head = self.f.readline()
            if head[:1] == b"$":
                items.append(self.f.read(int(head[1:]) + 2)[:-2].decode())
            else:
                items.append(head[1:-2].decode())
        return items

    def _loop(self):
        try:
            while True:
                items = self._read()
                if items and items[0] == "message":
                    self.messages.append(json.loads(items[2]))
        except (OSError, ValueError):
            pass

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def metrics(svc):
    return requests.get(svc.url + "/metrics", timeout=5).text


def s3_head(fm, key):
    return fm.head(key)


# --- the happy path --------------------------------------------------------------------------------------------------

def test_png_becomes_ready_with_metadata_variants_and_hash(fm, alice, worker, stack):
    data = image_bytes("PNG", (1500, 1000))
    sub = Subscriber(stack, f"fm:events:{{{alice.id}}}")
    try:
        t0 = time.monotonic()
        a, job_id = upload(fm, alice, data, "image/png", name="photo.png")
        row = fm.wait_status(a["file_id"], {"READY", "QUARANTINED", "FAILED"}, timeout=20)
        elapsed = time.monotonic() - t0
        assert row["status"] == "READY", (row, fm.job_row(job_id), worker.log_text()[-3000:])
        assert elapsed < 10, elapsed
        sha = sha256_hex(data)
        assert row["blob"] == sha and row["status_reason"] is None
        blob = fm.blob_row(sha)
        assert blob["size"] == len(data) and blob["content_type"] == "image/png"
        assert blob["storage_key"] == f"blobs/{sha}"  # content-addressed, out of every client URL's reach
        assert blob["metadata"]["width"] == 1500 and blob["metadata"]["height"] == 1000, blob["metadata"]
        job = fm.job_row(job_id)
        assert job["status"] == "DONE" and job["attempts"] == 1 and job["last_error"] is None
        assert fm.upload_row(a["upload_id"])["status"] == "COMPLETED"
        # the verified bytes live at blobs/{sha256}, with the type they really have; the client's object and the
        # worker's staged copy are gone
        assert fm.get_bytes(f"blobs/{sha}") == data
        assert fm.head(f"blobs/{sha}")["ContentType"] == "image/png"
        # (deleted last, once the file is READY and its owner told)
        assert wait_for(lambda: fm.head(key_of(a["upload_id"])) is None and fm.head(f"staging/{a['upload_id']}") is None,
                        10)

        # four variants: thumb (256) and preview (1024), JPEG and WebP, decodable, within their box
        variants = blob["variants"]
        assert set(variants) == {"thumb", "preview"}, variants
        for name, box in (("thumb", 256), ("preview", 1024)):
            assert set(variants[name]) == {"jpeg", "webp"}, variants[name]
            for fmt, pil_name in (("jpeg", "JPEG"), ("webp", "WEBP")):
                v = variants[name][fmt]
                assert v["key"].startswith(f"variants/{sha}/"), v
                img = Image.open(io.BytesIO(fm.get_bytes(v["key"])))
                img.load()
                assert img.format == pil_name, (v, img.format)
                assert max(img.size) <= box and max(img.size) >= box - 1, (v, img.size)
                assert abs(img.size[0] / img.size[1] - 1.5) < 0.02, img.size
                assert (img.size[0], img.size[1]) == (v["width"], v["height"]), v

        # the API shows READY (the worker drops the cached row right after its commit), and the owner was told
        r = wait_for(lambda: (lambda x: x if x.json().get("status") == "READY" else None)(fm.file(alice, a["file_id"])), 5)
        assert r is not None and r.status_code == 200, fm.file(alice, a["file_id"]).text
        msgs = wait_for(lambda: [m for m in sub.messages if m.get("status") == "READY"], 5)
        assert msgs and msgs[0] == {"type": "file.status", "file_id": a["file_id"], "job_id": job_id,
                                    "status": "READY"}, sub.messages
        # the owner's dedupe index knows the verified blob
        assert fm.redis("HGET", f"fm:dedupe:{{{alice.id}}}", sha) == str(len(data))
    finally:
        sub.close()


def test_jpeg_dimensions_and_storage_dedupe_across_owners(fm, alice, bob, worker):
    data = image_bytes("JPEG", (2000, 1500))
    sha = sha256_hex(data)
    a1, _ = upload(fm, alice, data, "image/jpeg", name="a.jpg")
    assert fm.wait_status(a1["file_id"], {"READY", "QUARANTINED", "FAILED"})["status"] == "READY"
    blob = fm.blob_row(sha)
    assert (blob["metadata"]["width"], blob["metadata"]["height"]) == (2000, 1500)

    # bob holds no verified copy: the control plane lets him upload, the worker finds the blob and collapses it
    a2, job2 = upload(fm, bob, data, "image/jpeg", name="b.jpg")
    assert a2["deduplicated"] is False
    row = fm.wait_status(a2["file_id"], {"READY", "QUARANTINED", "FAILED"})
    assert row["status"] == "READY" and row["blob"] == sha, row
    assert fm.sql(f"SELECT count(*) FROM blobs WHERE sha256 = decode('{sha}', 'hex')") == "1"
    assert fm.blob_row(sha)["storage_key"] == f"blobs/{sha}"
    # both incoming objects are deleted once their files are READY; the one blob object stays
    for up in (a1, a2):
        assert wait_for(lambda: fm.head(key_of(up["upload_id"])) is None, 10), "an incoming object is still there"
    assert fm.get_bytes(f"blobs/{sha}") == data
    assert fm.job_row(job2)["status"] == "DONE"


# --- refused content ----------------------------------------------------------------------------------------------------

def test_eicar_is_quarantined_and_moved_out_of_reach(fm, alice, worker):
    data = eicar() + b"\n"
    a, job_id = upload(fm, alice, data, "text/plain", name="eicar.txt")
    row = fm.wait_status(a["file_id"], {"READY", "QUARANTINED", "FAILED"})
    assert row["status"] == "QUARANTINED", (row, fm.job_row(job_id))
    assert "FM-Test.EICAR" in row["status_reason"], row
    assert row["blob"] is None
    job = fm.job_row(job_id)
    assert job["status"] == "DONE" and job["last_error"] == row["status_reason"]
    assert fm.head(key_of(a["upload_id"])) is None  # the original is gone …
    assert fm.get_bytes(f"quarantine/{a['upload_id']}") == data  # … kept out of reach for an operator
    assert fm.blob_row(sha256_hex(data)) is None
    assert fm.redis("HGET", f"fm:dedupe:{{{alice.id}}}", sha256_hex(data)) is None
    r = wait_for(lambda: (lambda x: x if x.json().get("status") == "QUARANTINED" else None)(fm.file(alice, a["file_id"])), 5)
    assert r is not None, fm.file(alice, a["file_id"]).text


def test_shell_script_declared_as_png_is_quarantined(fm, alice, worker):
    data = b"#!/bin/sh\nrm -rf \"$HOME\"/not-really\necho " + secrets.token_hex(8).encode() + b"\n"
    a, job_id = upload(fm, alice, data, "image/png", name="cat.png")
    row = fm.wait_status(a["file_id"], {"READY", "QUARANTINED", "FAILED"})
    assert row["status"] == "QUARANTINED", (row, fm.job_row(job_id))
    assert "image/png" in row["status_reason"] or "script" in row["status_reason"], row
    assert fm.head(key_of(a["upload_id"])) is None


def test_claimed_hash_mismatch_is_quarantined(fm, alice, worker):
    claimed = os.urandom(4096)
    actual = os.urandom(4096)  # same size: the upload completes, only the hash tells
    a = fm.start(alice, claimed, content_type="application/octet-stream")
    assert fm.put(a, actual).status_code == 200
    c = fm.complete(alice, a["upload_id"])
    assert c.status_code == 200, c.text
    row = fm.wait_status(a["file_id"], {"READY", "QUARANTINED", "FAILED"})
    assert row["status"] == "QUARANTINED" and "sha256 mismatch" in row["status_reason"], row
    assert sha256_hex(actual) in row["status_reason"]
    assert fm.blob_row(sha256_hex(actual)) is None and fm.blob_row(sha256_hex(claimed)) is None


# --- retries, dead letters, admin ----------------------------------------------------------------------------------------

def test_corrupt_jpeg_fails_after_three_attempts_then_admin_retry_works(fm, alice, bob, admin, worker):
    good = image_bytes("JPEG", (800, 600))
    corrupt = good[: len(good) // 2]  # a truncated JPEG: the header says JPEG, the pixels end early
    a, job_id = upload(fm, alice, corrupt, "image/jpeg", name="broken.jpg")
    t0 = time.monotonic()
    row = fm.wait_status(a["file_id"], {"READY", "QUARANTINED", "FAILED"}, timeout=30)
    elapsed = time.monotonic() - t0
    assert row["status"] == "FAILED", (row, fm.job_row(job_id))
    job = fm.job_row(job_id)
    assert job["status"] == "FAILED" and job["attempts"] == 3 and job["last_error"], job
    assert row["status_reason"] == job["last_error"]
    # backoff: 2^1 × 200 ms and 2^2 × 200 ms between the attempts, moved back by the 500 ms mover
    assert elapsed >= 1.0, elapsed
    dead = [dict(zip(f[::2], f[1::2])) for _id, f in fm.redis("XRANGE", "jobs:dead", "-", "+")]
    mine = [d for d in dead if d["job_id"] == job_id]
    assert len(mine) == 1 and mine[0]["attempts"] == "3" and mine[0]["error"] == job["last_error"], dead
    assert mine[0]["file_id"] == a["file_id"] and mine[0]["upload_id"] == a["upload_id"]
    assert fm.redis("ZSCORE", "jobs:delayed", job_id) is None
    assert fm.get_bytes(key_of(a["upload_id"])) == corrupt  # kept for the retry
    # the outcome is counted once the job is recorded, acknowledged and unlocked: a moment after the status
    assert wait_for(lambda: metric(worker.url, "fm_worker_jobs_total", type="process_upload", outcome="failed") >= 1,
                    10), metrics(worker)
    assert metric(worker.url, "fm_worker_retries_total") >= 2
    assert metric(worker.url, "fm_worker_dead_letters_total") >= 1

    # admin routes: members are refused, the failed job is listed
    r = fm.call(bob, "GET", "/v1/admin/jobs?status=failed")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    assert fm.call(bob, "POST", f"/v1/admin/jobs/{job_id}/retry").status_code == 403
    r = fm.call(admin, "GET", "/v1/admin/jobs?status=failed")
    assert r.status_code == 200, r.text
    listed = {j["id"]: j for j in r.json()["jobs"]}
    assert job_id in listed, r.json()
    assert listed[job_id]["attempts"] == 3 and listed[job_id]["last_error"] == job["last_error"]
    assert listed[job_id]["file_id"] == a["file_id"] and listed[job_id]["finished_at"]
    assert fm.call(admin, "GET", "/v1/admin/jobs?status=bogus").status_code == 422
    assert fm.call(admin, "POST", f"/v1/admin/jobs/{secrets.token_hex(4)}/retry").status_code == 404

    # Fix the cause. The object cannot be replaced by a valid JPEG with the same size and hash, so the fix is
    # the one an operator makes after the client re-sent the right bytes: the object is replaced and the
    # upload's (and file's) claimed size and hash are updated to the new content's.
    fm.s3.put_object(Bucket=fm.bucket, Key=key_of(a["upload_id"]), Body=good, ContentType="image/jpeg")
    sha = sha256_hex(good)
    fm.sql(f"UPDATE uploads SET size = {len(good)}, claimed_sha256 = decode('{sha}', 'hex') "
           f"WHERE id = '{a['upload_id']}'; UPDATE files SET size = {len(good)}, "
           f"claimed_sha256 = decode('{sha}', 'hex') WHERE id = '{a['file_id']}'")
    r = fm.call(admin, "POST", f"/v1/admin/jobs/{job_id}/retry")
    assert r.status_code == 202 and r.json() == {"job_id": job_id, "status": "QUEUED"}, r.text
    row = fm.wait_status(a["file_id"], {"READY", "QUARANTINED", "FAILED"}, timeout=30)
    assert row["status"] == "READY" and row["blob"] == sha, (row, fm.job_row(job_id))
    job = fm.job_row(job_id)
    assert job["status"] == "DONE" and job["attempts"] == 1, job
    assert job["payload"]["previous_error"] == mine[0]["error"], job
    r = fm.call(admin, "POST", f"/v1/admin/jobs/{job_id}/retry")  # no longer failed
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_not_failed", r.text


def test_duplicate_delivery_is_processed_once(fm, alice, worker, stack):
    data = image_bytes("PNG", (300, 200))
    sub = Subscriber(stack, f"fm:events:{{{alice.id}}}")
    try:
        a = fm.start(alice, data, content_type="image/png")
        assert fm.put(a, data).status_code == 200
        c = fm.complete(alice, a["upload_id"])
        assert c.status_code == 200, c.text
        job_id = fm.jobs_of_upload(a["upload_id"])[0]
        # the same job delivered twice more, at once: three entries, one processing
        for _ in range(2):
            fm.redis("XADD", "jobs", "*", "job_id", job_id, "type", "process_upload", "file_id", a["file_id"],
                     "upload_id", a["upload_id"], "request_id", "dup", "traceparent", "")
        assert fm.wait_status(a["file_id"], {"READY", "QUARANTINED", "FAILED"})["status"] == "READY"
        assert wait_for(lambda: fm.redis("XLEN", "jobs") == 0 and fm.redis("XPENDING", "jobs", "workers")[0] == 0,
                        10), fm.redis("XRANGE", "jobs", "-", "+")
        # and once more after it is done
        fm.redis("XADD", "jobs", "*", "job_id", job_id, "type", "process_upload", "file_id", a["file_id"],
                 "upload_id", a["upload_id"], "request_id", "late", "traceparent", "")
        assert wait_for(lambda: fm.redis("XLEN", "jobs") == 0, 10)
        time.sleep(0.5)
        job = fm.job_row(job_id)
        assert job["status"] == "DONE" and job["attempts"] == 1, job
        ready = [m for m in sub.messages if m.get("file_id") == a["file_id"] and m.get("status") == "READY"]
        assert len(ready) == 1, sub.messages
        assert wait_for(lambda: metric(worker.url, "fm_worker_jobs_total", outcome="skipped") >= 1, 10), metrics(worker)
    finally:
        sub.close()


def test_clamd_down_retries_then_succeeds_when_back(fm, alice, pool, stack):
    # Slower backoff for this test (4 s, then 8 s): clamd takes a few seconds to come back.
    pool.replace(FM_JOB_BACKOFF_BASE_MS=2000, FM_CLAMD_TIMEOUT_MS=1000)
    data = image_bytes("PNG", (320, 240))
    stack.stop_clamd()
    try:
        a, job_id = upload(fm, alice, data, "image/png")
        job = wait_for(lambda: (lambda j: j if j["status"] == "RETRY" else None)(fm.job_row(job_id)), 20)
        # a dependency's failure uses none of the attempts meant for the content (test_worker_outages.py)
        assert job and job["attempts"] == 0 and "clamd" in job["last_error"].lower(), fm.job_row(job_id)
        assert fm.file_row(a["file_id"])["status"] == "UPLOADED"  # never marked clean without a scan
        # the retry is scheduled just after the attempt is recorded as failed
        assert wait_for(lambda: fm.redis("ZSCORE", "jobs:delayed", job_id) is not None, 5), "no retry scheduled"
    finally:
        stack.start_clamd()
    row = fm.wait_status(a["file_id"], {"READY", "QUARANTINED", "FAILED"}, timeout=40)
    assert row["status"] == "READY", (row, fm.job_row(job_id))
    job = fm.job_row(job_id)
    assert job["status"] == "DONE" and job["attempts"] == 1, job
    pool.replace()


# --- crash recovery, heartbeat, metrics ----------------------------------------------------------------------------------

def live_workers(fm):
    out = {}
    for key in fm.redis("KEYS", "fm:worker:*") or []:
        raw = fm.redis("GET", key)
        if raw:
            out[key] = json.loads(raw)
    return out


def test_killed_worker_job_is_finished_by_another(fm, alice, pool):
    first = pool.ensure()
    second = pool.start_extra()
    try:
        data = os.urandom(200 * MIB)  # slow enough to be caught in the middle: fetch + hash + scan of 200 MiB
        a, job_id = upload(fm, alice, data, "application/octet-stream", name="big.bin")
        running = wait_for(lambda: [w for w in live_workers(fm).values() if w["job_id"] == job_id], 30, 0.02)
        assert running, (fm.job_row(job_id), live_workers(fm))
        assert fm.job_row(job_id)["status"] == "RUNNING"
        victim_pid = running[0]["pid"]
        victim = first if first.proc.pid == victim_pid else second
        assert victim.proc.pid == victim_pid, (victim_pid, first.proc.pid, second.proc.pid)
        os.kill(victim_pid, signal.SIGKILL)
        pool.workers.kill(victim)
        survivor = second if victim is first else first
        row = fm.wait_status(a["file_id"], {"READY", "QUARANTINED", "FAILED"}, timeout=90)
        assert row["status"] == "READY", (row, fm.job_row(job_id), survivor.log_text()[-3000:])
        job = fm.job_row(job_id)
        assert job["status"] == "DONE" and job["attempts"] == 2, job
        assert row["blob"] == hashlib.sha256(data).hexdigest()
        assert "reclaimed" in survivor.log_text()
        assert wait_for(lambda: fm.redis("XPENDING", "jobs", "workers")[0] == 0, 10)
    finally:
        for svc in (first, second):
            if svc.proc.poll() is None and svc is not pool.current:
                pool.workers.stop(svc)
        if pool.current is not None and pool.current.proc.poll() is not None:
            pool.current = None


def test_heartbeat_shows_live_workers_and_metrics(fm, worker):
    pid = worker.proc.pid
    mine = wait_for(lambda: [w for w in live_workers(fm).values() if w["pid"] == pid], 15)
    assert len(mine) == 2 and {w["thread"] for w in mine} == {0, 1}, live_workers(fm)
    ttl = fm.redis("TTL", next(k for k, w in live_workers(fm).items() if w["pid"] == pid))
    assert 0 < ttl <= 30
    text = wait_for(lambda: (lambda t: t if "fm_worker_queue_depth" in t else None)(metrics(worker)), 10)
    assert 'fm_worker_queue_depth{queue="stream"}' in text and 'fm_worker_queue_depth{queue="pending"}' in text


def test_graceful_stop_finishes_the_job_in_flight(fm, alice, pool, workers):
    svc = pool.ensure()
    data = os.urandom(64 * MIB)
    a, job_id = upload(fm, alice, data, "application/octet-stream", name="mid.bin")
    assert wait_for(lambda: fm.job_row(job_id)["status"] == "RUNNING", 30, 0.02), fm.job_row(job_id)
    pool.current = None
    workers.stop(svc)  # SIGTERM: the job finishes, then exit 0 (checked)
    row = fm.file_row(a["file_id"])
    assert row["status"] == "READY", (row, fm.job_row(job_id))
    assert not [w for w in live_workers(fm).values() if w["pid"] == svc.proc.pid]


def verified_state(fm, user, file_id, data):
    """What a verified file leaves behind, in the terms the suites without a worker rely on."""
    sha = sha256_hex(data)
    row, blob, head = fm.file_row(file_id), fm.blob_row(sha), fm.head(f"blobs/{sha}")
    client_keys = fm.sql(f"SELECT object_key FROM uploads WHERE file_id = '{file_id}'").split()
    return {
        "file": (row["status"], row["blob"] == sha, row["status_reason"]),
        "blob row": (blob["size"] == len(data), blob["storage_key"] == f"blobs/{sha}", blob["content_type"]),
        "object": (head["ContentLength"] == len(data), head["ContentType"], fm.get_bytes(f"blobs/{sha}") == data),
        "dedupe entry": fm.redis("HGET", f"fm:dedupe:{{{user.id}}}", sha) == str(len(data)),
        "client objects left": [k for k in client_keys if fm.head(k) is not None],
    }


def test_mark_verified_leaves_what_the_worker_leaves(fm, alice, worker):
    """The suites that run no worker make files READY with helpers_uploads.Fm.mark_verified: it must leave what the
    worker leaves for a file of the same kind, or those suites test a state that never exists."""
    by_worker = f"verified by the worker {secrets.token_hex(16)}\n".encode()
    a, _ = upload(fm, alice, by_worker, "text/plain", name="worker.txt")
    assert fm.wait_status(a["file_id"], {"READY", "QUARANTINED", "FAILED"})["status"] == "READY"
    assert wait_for(lambda: fm.head(key_of(a["upload_id"])) is None, 10)  # deleted last
    by_helper = f"verified by the helper {secrets.token_hex(16)}\n".encode()
    b = fm.start(alice, by_helper, content_type="text/plain", name="helper.txt")
    fm.shield_from_reconciler(b["upload_id"])  # no job: the helper stands in for the worker
    assert fm.put(b, by_helper).status_code == 200
    fm.mark_verified(b["file_id"], by_helper, "text/plain")
    worker_state = verified_state(fm, alice, a["file_id"], by_worker)
    assert worker_state == verified_state(fm, alice, b["file_id"], by_helper), worker_state
    assert fm.file(alice, b["file_id"]).json()["status"] == fm.file(alice, a["file_id"]).json()["status"] == "READY"


# --- Lambda mode -----------------------------------------------------------------------------------------------------------

def test_lambda_mode_processes_the_s3_event_with_the_same_handler(fm, alice, pool, log_dir):
    from helpers_uploads import aws_record
    from lambda_runtime import lambda_worker

    data = image_bytes("PNG", (640, 480))
    a = fm.start(alice, data, content_type="image/png")
    fm.shield_from_reconciler(a["upload_id"])  # only the Lambda event may make this job
    assert fm.put(a, data).status_code == 200
    with lambda_worker(pool, log_dir) as (api, proc, log_path):
        # incoming/{UPPER-CASE id} is another object, not this upload (uuid.h's one case rule), though PostgreSQL's
        # ::uuid would match the id: no job, nothing processed.
        upper = {"Records": [aws_record(fm.bucket, "incoming/" + a["upload_id"].upper(), len(data))]}
        answer = api.wait_answer(api.enqueue(upper), timeout=60)
        assert answer.kind == "response" and answer.json() == {"processed": 0}, (answer.body, log_path.read_text())
        assert fm.jobs_of_upload(a["upload_id"]) == []
        event = {"Records": [aws_record(fm.bucket, key_of(a["upload_id"]), len(data)),
                             aws_record(fm.bucket, "variants/not-an-upload.jpg", 10)]}
        rid = api.enqueue(event)
        answer = api.wait_answer(rid, timeout=60)
        assert answer.kind == "response" and answer.json() == {"processed": 1}, (answer.body, log_path.read_text())
        row = fm.file_row(a["file_id"])
        assert row["status"] == "READY" and row["blob"] == sha256_hex(data), row
        job_id = fm.jobs_of_upload(a["upload_id"])[0]
        assert fm.job_row(job_id)["attempts"] == 1
        assert fm.upload_row(a["upload_id"])["completed_by"] == "event"
        # the same event again (Lambda retries at least once): nothing is processed twice
        answer = api.wait_answer(api.enqueue(event), timeout=60)
        assert answer.kind == "response", answer.body
        assert fm.job_row(job_id)["attempts"] == 1


def test_lambda_mode_stops_promptly_on_sigterm_while_it_waits_for_an_event(pool, log_dir):
    """Lambda (or an operator) sends SIGTERM while the runtime waits on /invocation/next: fm-worker stops at once and
    exits 0, as in queue mode (before: the signal stayed blocked and the process had to be killed)."""
    import subprocess

    from lambda_runtime import lambda_worker

    with lambda_worker(pool, log_dir) as (api, proc, log_path):
        api.wait_next_calls(1, timeout=60)  # initialised, waiting for an event that does not come
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 15 s after SIGTERM:\n{log_path.read_text(errors='replace')[-3000:]}")
        assert rc == 0, log_path.read_text(errors="replace")[-3000:]
        assert "stop signal" in log_path.read_text(errors="replace")
