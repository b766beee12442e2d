"""Quotas (issue 11 item 6; docs/decisions.md "Quotas"; schema/017_quotas.sql, control-plane/quota.c) against the real
stack: fm-control and fm-worker on a Redis database of this module's, PostgreSQL, Ceph RGW, clamd.

A presign (single PUT written behind or through, multipart), a dedupe hit and a copy charge the owner: the presign
reserves, READY turns the reservation into usage, abort/expiry/FAILED release it, the trash counts until purged.
Concurrent charges cannot pass the quota together (the Redis script's atomic check, and PostgreSQL's with the owner's
row locked); past it: 413 quota_exceeded, nothing created. GET /v1/me shows quota_bytes, used_bytes,
reserved_bytes; the reconciler's recount repairs figures that drifted.

    FM_BUILD_DIR=build /usr/bin/python3 -m pytest -q tests/integration/test_quotas.py
"""
import os
import secrets
import threading

import pytest

from helpers_fm import assert_error, redis_cmd, redis_url, wait_for
from helpers_uploads import Fm, dedicated, sha256_hex

QUOTA_DB = 48  # this module's fm-control and fm-worker (free: grep REDIS_DB in the suite)
MIB = 1024 * 1024


class QuotaFm(Fm):
    def redis(self, *args):
        return redis_cmd(self.stack, QUOTA_DB, *args)

    def me(self, user):
        r = self.call(user, "GET", "/v1/me")
        assert r.status_code == 200, r.text
        b = r.json()
        return b["quota_bytes"], b["used_bytes"], b["reserved_bytes"]

    def set_quota(self, user, quota):
        self.sql(f"UPDATE users SET quota_bytes = {quota} WHERE id = '{user.id}'")

    def presign(self, user, size, on_conflict="rename", **extra):
        body = {"name": f"q-{secrets.token_hex(6)}.bin", "size": size, "content_type": "application/octet-stream",
                "sha256": secrets.token_hex(32), "on_conflict": on_conflict}
        body.update(extra)
        return self.call(user, "POST", "/v1/uploads", json=body)

    def wait_ready(self, user, file_id, timeout=30):
        r = wait_for(lambda: (lambda x: x if x.status_code == 200 and x.json().get("status") in
                                          ("READY", "FAILED", "QUARANTINED") else None)(self.file(user, file_id)),
                     timeout, 0.05)
        assert r is not None and r.json()["status"] == "READY", self.file(user, file_id).text

    def figures_settle(self, user, expected, timeout=10):
        """Waits until /v1/me shows (used, reserved) == expected (write-behind records reach PostgreSQL within
        FM_RECORD_FLUSH_MS); returns the last figures."""
        last = {}

        def check():
            last["v"] = self.me(user)[1:]
            return last["v"] == expected
        wait_for(check, timeout, 0.05)
        return last["v"]


@pytest.fixture(scope="module")
def fm(controls, stack):
    with dedicated(controls, stack, QuotaFm, FM_RECONCILE_INTERVAL_S=1, FM_MULTIPART_THRESHOLD=8 * MIB,
                   FM_REDIS_URL=redis_url(stack, QUOTA_DB)) as f:
        yield f


@pytest.fixture(scope="module")
def worker(fm, workers, stack):
    w = workers.start(FM_REDIS_URL=redis_url(stack, QUOTA_DB), FM_WORKER_THREADS=2)
    yield w
    workers.stop(w)


def upload_ready(fm, user, data, **kw):
    a, _ = fm.upload(user, data, **kw)
    fm.wait_ready(user, a["file_id"])
    return a["file_id"]


# --- the figures ---------------------------------------------------------------------------------------------------

def test_me_shows_quota_used_and_reserved(fm, worker):
    """A presign reserves its size, READY turns it into usage; /v1/me shows the three figures."""
    user = fm.user("q-me")
    quota, used, reserved = fm.me(user)
    assert (used, reserved) == (0, 0) and quota > 0
    data = os.urandom(3000)
    for on_conflict in ("fail", "rename"):  # written through, and written behind
        a = fm.start(user, data, on_conflict=on_conflict)
        assert fm.figures_settle(user, (0, 3000)) == (0, 3000), on_conflict
        assert fm.put(a, data).status_code == 200
        assert fm.complete(user, a["upload_id"]).status_code == 200
        fm.wait_ready(user, a["file_id"])
        assert fm.figures_settle(user, (3000, 0)) == (3000, 0), on_conflict
        fm.call(user, "DELETE", f"/v1/files/{a['file_id']}")  # the trash still counts
        assert fm.me(user)[1:] == (3000, 0)
        purge = fm.call(user, "DELETE", f"/v1/trash/{a['file_id']}")
        assert purge.status_code == 204, purge.text
        assert fm.me(user)[1:] == (0, 0)


def test_abort_and_expiry_release_the_reservation(fm):
    user = fm.user("q-abort")
    a = fm.start(user, os.urandom(500), on_conflict="fail")
    assert fm.me(user)[1:] == (0, 500)
    assert fm.abort(user, a["upload_id"]).status_code in (200, 204)
    assert fm.me(user)[1:] == (0, 0)
    # an upload the reconciler expires: the file goes FAILED, its reservation with it
    b = fm.start(user, os.urandom(700), on_conflict="fail")
    fm.sql(f"UPDATE uploads SET status = 'EXPIRED' WHERE id = '{b['upload_id']}'; "
           f"UPDATE files SET status = 'FAILED', status_reason = 'upload expired' WHERE id = '{b['file_id']}'")
    assert fm.me(user)[1:] == (0, 0)


# --- the limit -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("on_conflict", ["fail", "rename"])
def test_presign_past_the_quota_is_refused(fm, on_conflict):
    """Past the quota: 413 quota_exceeded and nothing created, whichever path the upload takes (written through,
    written behind, multipart); up to it: 201."""
    user = fm.user(f"q-limit-{on_conflict}")
    fm.set_quota(user, 10_000)
    fm.relogin(user)  # the session's start builds the Redis copy with the new quota
    assert fm.presign(user, 6000, on_conflict).status_code == 201
    wait_for(lambda: fm.me(user)[2] == 6000, 10, 0.05)
    before = fm.row_counts(user)
    assert_error(fm.presign(user, 4001, on_conflict), 413, "quota_exceeded")
    assert_error(fm.presign(user, 9 * MIB, on_conflict), 413, "quota_exceeded")  # multipart
    assert fm.row_counts(user) == before
    assert fm.presign(user, 4000, on_conflict).status_code == 201  # exactly up to the quota
    assert_error(fm.presign(user, 1, on_conflict), 413, "quota_exceeded")
    assert fm.figures_settle(user, (0, 10_000)) == (0, 10_000)


def test_a_copy_of_redis_that_counts_too_much_is_rechecked(fm):
    """The Redis copy still counting released bytes (here: an abort's, and a copy made stale by hand) never refuses
    what fits: PostgreSQL is asked before a 413."""
    user = fm.user("q-stale")
    fm.set_quota(user, 5000)
    fm.relogin(user)
    a = fm.start(user, os.urandom(5000), on_conflict="rename")
    assert fm.abort(user, a["upload_id"]).status_code in (200, 204)
    fm.redis("HSET", f"fm:quota:{{{user.id}}}", "b", "999999")
    assert fm.presign(user, 5000, "rename").status_code == 201
    assert fm.figures_settle(user, (0, 5000)) == (0, 5000)


@pytest.mark.parametrize("mix", ["rename", "fail", "both"])
def test_concurrent_presigns_cannot_pass_the_quota_together(fm, mix):
    """30 presigns of 100 bytes at once against a quota of 1,000: exactly 10 pass, whether they are written behind
    (the Redis script's check), through (PostgreSQL's, holding in the Redis copy first) or both at once."""
    user = fm.user(f"q-race-{mix}")
    fm.set_quota(user, 1000)
    fm.relogin(user)
    wait_for(lambda: fm.redis("HGET", f"fm:quota:{{{user.id}}}", "q") == "1000", 10, 0.05)
    statuses = []
    lock = threading.Lock()
    barrier = threading.Barrier(30)

    def one(i):
        mode = mix if mix != "both" else ("rename" if i % 2 else "fail")
        barrier.wait()
        s = fm.presign(user, 100, mode).status_code
        with lock:
            statuses.append(s)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses).count(201) == 10 and statuses.count(413) == 20, statuses
    assert fm.figures_settle(user, (0, 1000)) == (0, 1000)
    assert fm.sql(f"SELECT count(*) FROM files WHERE owner_id = '{user.id}'") == "10"


def test_dedupe_hit_and_copy_count_in_full(fm, worker):
    """A dedupe hit and a copy count their whole size (the owner sees their size, whatever the storage shares); a
    copy past the quota is 413 and makes no row."""
    user = fm.user("q-copy")
    data = os.urandom(2000)
    file_id = upload_ready(fm, user, data)
    hit = fm.start(user, data, expect=200)
    assert hit["deduplicated"] is True
    assert fm.figures_settle(user, (4000, 0)) == (4000, 0)
    copy = fm.call(user, "POST", f"/v1/files/{file_id}/copy", json={"name": "copy.bin"})
    assert copy.status_code == 201, copy.text
    assert fm.me(user)[1:] == (6000, 0)
    fm.set_quota(user, 7000)
    before = fm.row_counts(user)
    assert_error(fm.call(user, "POST", f"/v1/files/{file_id}/copy", json={"name": "copy2.bin"}), 413,
                 "quota_exceeded")
    assert_error(fm.call(user, "POST", "/v1/uploads",
                         json={"name": "again.bin", "size": len(data), "content_type": "application/octet-stream",
                               "sha256": sha256_hex(data)}), 413, "quota_exceeded")
    assert fm.row_counts(user) == before


def test_recount_repairs_figures_that_drifted(fm):
    """The reconciler's recount (every round, a slice of the owners) puts back the figures the rows give."""
    user = fm.user("q-drift")
    fm.start(user, os.urandom(1234), on_conflict="fail")
    fm.sql(f"UPDATE users SET used_bytes = 777, reserved_bytes = 5 WHERE id = '{user.id}'")
    assert fm.me(user)[1:] == (777, 5)
    assert wait_for(lambda: fm.me(user)[1:] == (0, 1234), 20, 0.2), fm.me(user)
