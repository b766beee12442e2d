"""Cleanup jobs and the decompression-bomb guard of fm-worker, end to end against the real stack (docs/workers.md
"Cleanup", schema/005_cleanup.sql, lambda-workers/cleanup.c). No mocks: uploads go through an fm-control with
presigned PUTs, fm-worker processes them, and PostgreSQL, Redis and the bucket are looked at directly.

The suite has its own Redis database (CLEANUP_DB) shared by its fm-control and its workers. Its workers scan every
second with a grace period of one second (FM_CLEANUP_INTERVAL_S=1, FM_BLOB_GRACE_S=1). Helpers come from
test_worker.py.

Run: FM_BUILD_DIR=build /usr/bin/python3 -m pytest -q tests/integration/test_worker_cleanup.py
"""
import time
import zlib
import struct

import pytest

from helpers_fm import metric, redis_cmd, redis_url, wait_for
from helpers_uploads import EVENTS_SECRET, MIB, dedicated, sha256_hex
from test_worker import Pool, WorkerFm, image_bytes, metrics, upload

CLEANUP_DB = 7


class CleanupFm(WorkerFm):
    def redis(self, *args):
        return redis_cmd(self.stack, CLEANUP_DB, *args)

    def blob_state(self, sha):
        return self.sql_row(f"SELECT row_to_json(b) FROM (SELECT storage_key, variants, unreferenced_since, ref_count "
                            f"FROM blobs WHERE sha256 = decode('{sha}', 'hex')) b")

    def cleanup_job(self, sha):
        return self.sql_row(f"SELECT row_to_json(j) FROM (SELECT id, status, attempts, last_error, payload, "
                            f"enqueued_at FROM jobs WHERE dedupe_key = 'cleanup_blob:{sha}') j")

    def blob_keys(self, sha):
        """The blob's object key and every variant key."""
        blob = self.blob_state(sha)
        keys = [blob["storage_key"]]
        for by_format in blob["variants"].values():
            keys += [v["key"] for v in by_format.values()]
        return keys


class CleanupPool(Pool):
    def env(self, **overrides):
        return super().env(**{"FM_REDIS_URL": redis_url(self.stack, CLEANUP_DB), "FM_CLEANUP_INTERVAL_S": 1,
                              "FM_BLOB_GRACE_S": 1, **overrides})

    def stop(self):
        if self.current is not None and self.current.proc.poll() is None:
            self.workers.stop(self.current)
        self.current = None


@pytest.fixture(scope="module")
def fm(controls, stack):
    with dedicated(controls, stack, CleanupFm, FM_EVENTS_SECRET=EVENTS_SECRET, FM_RECONCILE_INTERVAL_S=1,
                   FM_MULTIPART_THRESHOLD=1024 * MIB, FM_REDIS_URL=redis_url(stack, CLEANUP_DB)) as f:
        yield f


@pytest.fixture(scope="module")
def pool(workers, stack):
    p = CleanupPool(workers, stack)
    yield p
    p.stop()


@pytest.fixture
def worker(pool):
    return pool.ensure()


@pytest.fixture(scope="module")
def alice(fm):
    return fm.user("calice")


@pytest.fixture(scope="module")
def bob(fm):
    return fm.user("cbob")


def ready_upload(fm, user, data, content_type, **kw):
    a, job_id = upload(fm, user, data, content_type, **kw)
    row = fm.wait_status(a["file_id"], {"READY", "QUARANTINED", "FAILED"}, timeout=30)
    assert row["status"] == "READY", (row, fm.job_row(job_id))
    return a


# --- cleanup_blob ------------------------------------------------------------------------------------------------------

def test_unreferenced_blob_is_deleted_and_referenced_ones_are_kept(fm, alice, bob, worker):
    gone, kept, trashed = (image_bytes("PNG", (640, 480)), image_bytes("JPEG", (500, 400)),
                           image_bytes("PNG", (300, 300)))
    gone_sha, kept_sha, trashed_sha = (sha256_hex(d) for d in (gone, kept, trashed))
    a1 = ready_upload(fm, alice, gone, "image/png")
    a2 = ready_upload(fm, bob, gone, "image/png")  # the worker points bob's file at alice's blob
    assert fm.file_row(a2["file_id"])["blob"] == gone_sha
    ready_upload(fm, alice, kept, "image/jpeg")
    a4 = ready_upload(fm, alice, trashed, "image/png")
    gone_keys, kept_keys, trashed_keys = fm.blob_keys(gone_sha), fm.blob_keys(kept_sha), fm.blob_keys(trashed_sha)
    assert len(gone_keys) == 5 and all(fm.head(k) for k in gone_keys), gone_keys  # object + 4 variants

    # every file of `gone` purged; `trashed` only in the trash (restorable: it keeps its bytes), within the control
    # plane's FM_TRASH_RETENTION_S (30 days by default; past it the reconciler deletes the row, test_file_delete.py)
    fm.sql(f"DELETE FROM files WHERE id IN ('{a1['file_id']}', '{a2['file_id']}')")
    fm.sql(f"UPDATE files SET deleted_at = now() - interval '20 days' WHERE id = '{a4['file_id']}'")

    assert wait_for(lambda: fm.blob_state(gone_sha) is None, 30, 0.1), (fm.blob_state(gone_sha),
                                                                       fm.cleanup_job(gone_sha),
                                                                       worker.log_text()[-3000:])
    for key in gone_keys:
        assert fm.head(key) is None, key
    job = fm.cleanup_job(gone_sha)
    assert job["status"] == "DONE" and job["attempts"] == 1 and job["payload"]["result"] == "deleted", job
    assert job["payload"]["sha256"] == gone_sha and job["enqueued_at"], job
    assert wait_for(lambda: not [e for e in fm.stream_entries(job["id"])], 5)  # acknowledged and deleted
    assert 'fm_worker_jobs_total{type="cleanup_blob",outcome="deleted"}' in metrics(worker)

    # two more whole scans (begun after the purge): nothing else goes
    scans = metric(worker.url, "fm_worker_scans_total", type="cleanup_blob")
    assert wait_for(lambda: metric(worker.url, "fm_worker_scans_total", type="cleanup_blob") >= scans + 3, 30), \
        worker.log_text()[-3000:]
    for sha, keys in ((kept_sha, kept_keys), (trashed_sha, trashed_keys)):
        state = fm.blob_state(sha)
        assert state is not None and state["unreferenced_since"] is None, state
        assert fm.cleanup_job(sha) is None
        assert all(fm.head(k) for k in keys), keys


def test_blob_referenced_again_before_its_job_runs_is_kept(fm, alice, pool):
    pool.ensure()
    data = image_bytes("PNG", (400, 300))
    sha = sha256_hex(data)
    a = ready_upload(fm, alice, data, "image/png")
    keys = fm.blob_keys(sha)
    pool.stop()  # no worker runs the job while the blob changes hands

    fm.sql(f"DELETE FROM files WHERE id = '{a['file_id']}'")
    # the scan, as the housekeeper runs it: first round marks the blob, a round past the grace period makes the job
    fm.sql("SELECT count(*) FROM fm_cleanup_scan(1, 500)")
    marked = fm.blob_state(sha)
    assert marked["unreferenced_since"] is not None and marked["ref_count"] == 0, marked
    assert fm.cleanup_job(sha) is None  # not past the grace period yet
    time.sleep(1.1)
    fm.sql("SELECT count(*) FROM fm_cleanup_scan(1, 500)")
    job = fm.cleanup_job(sha)
    assert job and job["status"] == "QUEUED", job
    # … and the entry the housekeeper would add (the control plane's reconciler may add one too: a duplicate
    # delivery, absorbed by the job's lock and status)
    fm.redis("XADD", "jobs", "*", "job_id", job["id"], "type", "cleanup_blob", "file_id", "", "upload_id", "",
             "request_id", "test", "traceparent", "")

    # meanwhile the content is referenced again (what a dedupe or a restore does)
    fm.sql(f"INSERT INTO files (owner_id, name, size, content_type, claimed_sha256, blob_sha256, status) VALUES "
           f"('{alice.id}', 'again.png', {len(data)}, 'image/png', decode('{sha}', 'hex'), decode('{sha}', 'hex'), "
           f"'READY')")
    pool.ensure()
    job = wait_for(lambda: (lambda j: j if j["status"] in ("DONE", "FAILED") else None)(fm.cleanup_job(sha)), 20)
    assert job and job["status"] == "DONE" and job["payload"]["result"] == "kept", fm.cleanup_job(sha)
    state = fm.blob_state(sha)
    assert state is not None and state["unreferenced_since"] is None, state
    assert all(fm.head(k) for k in keys), keys
    assert fm.get_bytes(keys[0]) == data

    # once its last file goes for good, the same job row runs again and deletes it
    fm.sql(f"DELETE FROM files WHERE blob_sha256 = decode('{sha}', 'hex')")
    assert wait_for(lambda: fm.blob_state(sha) is None, 30, 0.1), (fm.blob_state(sha), fm.cleanup_job(sha))
    assert all(fm.head(k) is None for k in keys), keys
    assert fm.cleanup_job(sha)["payload"]["result"] == "deleted"


# --- decompression bombs -------------------------------------------------------------------------------------------------

def png_bomb(width, height):
    """A 1-bit greyscale PNG of width × height zero pixels, deflated row by row: ~300 KB on disk for 50000², while
    decoding it would take width × height bytes at 8 bits per pixel (2.5 GB)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    z = zlib.compressobj(9)
    idat = bytearray()
    rows_per_call = 1000
    block = row * rows_per_call
    for _ in range(height // rows_per_call):
        idat += z.compress(block)
    idat += z.compress(row * (height % rows_per_call)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", bytes(idat)) + chunk(b"IEND", b""))


def vm_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_decompression_bomb_is_refused_quickly_with_bounded_memory(fm, alice, worker):
    data = png_bomb(50000, 50000)
    assert len(data) < 1 * MIB, len(data)
    before = vm_hwm_kib(worker.proc.pid)
    t0 = time.monotonic()
    a, job_id = upload(fm, alice, data, "image/png", name="bomb.png")
    row = fm.wait_status(a["file_id"], {"READY", "QUARANTINED", "FAILED"}, timeout=60)
    elapsed = time.monotonic() - t0
    assert row["status"] == "QUARANTINED", (row, fm.job_row(job_id), worker.log_text()[-3000:])
    assert "50000×50000 pixels is over the limit" in row["status_reason"], row
    job = fm.job_row(job_id)
    assert job["status"] == "DONE" and job["attempts"] == 1 and job["last_error"] == row["status_reason"], job
    assert fm.blob_row(sha256_hex(data)) is None
    after = vm_hwm_kib(worker.proc.pid)
    # a decode would need 50000² bytes (2.4 GiB); the guard reads the header only
    assert after < 300 * 1024, (before, after)
    print(f"bomb: refused in {elapsed:.2f} s, worker VmHWM {before} KiB before, {after} KiB after")
