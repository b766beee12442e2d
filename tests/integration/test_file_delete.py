"""Trash, restore, retention and edge purge (DESIGN.md §4 "Delete"; docs/downloads.md "Delete, restore, retention";
docs/workers.md "Edge purge") against the real stack: DELETE /v1/files/{id}, POST /v1/files/{id}/restore, the
reconciler's hard delete after FM_TRASH_RETENTION_S, and the purge_edge jobs fm-worker runs against fm-edge.

The module has its own Redis database (DELETE_REDIS_DB) shared by its fm-control, its fm-worker and two fm-edges (the
edges see fm:public there). Files are uploaded through the API and made READY by the worker (so blobs, variants,
storage-level dedupe and the owner's dedupe index are the real ones); the edges fill from Ceph RGW. The worker purges
both edges (FM_EDGE_PURGE_URLS); the second one is stopped and started again by the retry test.

    FM_BUILD_DIR=build /usr/bin/python3 -m pytest -q tests/integration/test_file_delete.py
"""
import json
import subprocess
import uuid

import pytest
import requests

from helpers_fm import assert_error, assert_unauthorized, redis_cmd, redis_url, wait_for
from helpers_uploads import EVENTS_SECRET, dedicated, random_bytes, sha256_hex
from test_download import DownloadFm, KeyPair
from test_edge import cached, metric
from test_worker import WorkerFm, image_bytes, upload

DELETE_REDIS_DB = 15
KEY_ID = "KDELTEST1"
BACKOFF_MS = 200  # FM_JOB_BACKOFF_BASE_MS of the module's worker
MAX_ATTEMPTS = 10  # FM_JOB_MAX_ATTEMPTS: room for an edge to come back


class DeleteFm(WorkerFm, DownloadFm):
    """The worker suite's helpers (uploads made READY by fm-worker) and the download suite's, on this module's Redis
    database."""

    def redis(self, *args):
        return redis_cmd(self.stack, DELETE_REDIS_DB, *args)

    def delete(self, user, file_id, **kw):
        return self.call(user, "DELETE", f"/v1/files/{file_id}", **kw)

    def restore(self, user, file_id, **kw):
        return self.call(user, "POST", f"/v1/files/{file_id}/restore", **kw)

    def patch(self, user, file_id, body):
        return self.call(user, "PATCH", f"/v1/files/{file_id}", json=body)

    def file_state(self, file_id):
        return self.sql_row(f"SELECT row_to_json(f) FROM (SELECT deleted_at, version, visibility FROM files "
                            f"WHERE id = '{file_id}') f")

    def is_public(self, file_id, key):
        return self.redis("SISMEMBER", "fm:public", f"{file_id}/{key}") == 1

    def purge_jobs(self, **payload):
        where = " AND ".join(f"payload->>'{k}' = '{v}'" for k, v in payload.items())
        out = self.sql(f"SELECT coalesce(json_agg(row_to_json(j) ORDER BY j.created_at), '[]') FROM ("
                       f"SELECT id, status, attempts, transient_retries, last_error, payload, enqueued_at, created_at"
                       f" FROM jobs WHERE type = 'purge_edge' AND {where}) j")
        return json.loads(out)

    def wait_purged(self, timeout=60, **payload):
        """The one purge_edge job matching `payload`, once it is DONE."""
        job = wait_for(lambda: (lambda js: js[0] if len(js) == 1 and js[0]["status"] in ("DONE", "FAILED") else None)(
            self.purge_jobs(**payload)), timeout, 0.1)
        assert job and job["status"] == "DONE", self.purge_jobs(**payload)
        return job

    def cleanup_job(self, sha):
        return self.sql_row(f"SELECT row_to_json(j) FROM (SELECT id, status, attempts, payload FROM jobs "
                            f"WHERE dedupe_key = 'cleanup_blob:{sha}') j")

    def ready(self, user, data=None, content_type="application/octet-stream", name=None):
        """Uploads `data` and waits until the worker made it READY. Returns (file id, object key, sha256)."""
        data = data if data is not None else octet_bytes(3000)
        a, job_id = upload(self, user, data, content_type, name=name)
        row = self.wait_status(a["file_id"], {"READY", "QUARANTINED", "FAILED"}, timeout=60)
        assert row["status"] == "READY", (row, self.job_row(job_id))
        sha = sha256_hex(data)
        return a["file_id"], self.blob_row(sha)["storage_key"], sha


def octet_bytes(n):
    """Random bytes that libmagic (the worker's sniff step, same database as file(1)) calls application/octet-stream:
    about 1 % of random buffers look like a DOS executable or an audio stream to it and would be quarantined."""
    while True:
        data = random_bytes(n)
        kind = subprocess.run(["file", "-b", "--mime-type", "-"], input=data, capture_output=True, timeout=30)
        if kind.stdout.strip() == b"application/octet-stream":
            return data




def fill(edge, signed_url, main_edge, key):
    """GETs a URL signed for the main edge from `edge` (both verify as FM_EDGE_PUBLIC_BASE = the main edge) and waits
    for the copy in its cache (the fill is published right after the answer)."""
    r = requests.get(edge.url + signed_url[len(main_edge.url):], timeout=60)
    assert r.status_code == 200, r.text[:300]
    assert wait_for(lambda: cached(edge, key), 20), key
    return r.content


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory):
    return KeyPair(KEY_ID, tmp_path_factory.mktemp("cf-keys-delete"))


def edge_env(stack, key_pair, main_url=None):
    env = {"FM_EDGE_CF_PUBLIC_KEYS": f"{key_pair.id}={key_pair.public_path}",
           "FM_REDIS_URL": redis_url(stack, DELETE_REDIS_DB)}
    if main_url:
        env["FM_EDGE_PUBLIC_BASE"] = main_url
    return env


@pytest.fixture(scope="module")
def edge(edges, stack, key_pair):
    return edges.start(**edge_env(stack, key_pair))


@pytest.fixture(scope="module")
def second_edge(edges, stack, key_pair, edge):
    """Another edge, purged too; the retry test stops it and starts it again on the same port and cache."""
    return {"svc": edges.start(**edge_env(stack, key_pair, edge.url))}


@pytest.fixture(scope="module")
def fm(controls, stack, key_pair, edge):
    with dedicated(controls, stack, DeleteFm, FM_CF_KEYS=f"{key_pair.id}={key_pair.private_path}",
                   FM_EDGE_PUBLIC_BASE=edge.url,
                   # no reconciler rounds of its own (the harness's default interval): the tests that need rounds
                   # start a 1 s instance on the same Redis database, and two instances on one lock take turns by
                   # the phase of their timers, which could leave the test's instance without a round for minutes
                   FM_EVENTS_SECRET=EVENTS_SECRET,
                   FM_REDIS_URL=redis_url(stack, DELETE_REDIS_DB)) as f:
        yield f


@pytest.fixture(scope="module")
def worker(workers, stack, edges, edge, second_edge, fm):
    w = workers.start(FM_REDIS_URL=redis_url(stack, DELETE_REDIS_DB), FM_WORKER_THREADS=2,
                      FM_JOB_BACKOFF_BASE_MS=BACKOFF_MS, FM_JOB_MAX_ATTEMPTS=MAX_ATTEMPTS,
                      FM_EDGE_PURGE_URLS=f"{edge.url}, {second_edge['svc'].url}/",
                      FM_EDGE_PURGE_SECRET=edges.purge_secret,
                      # the scan must not race the retention test: the reconciler makes those jobs itself
                      FM_CLEANUP_INTERVAL_S=1, FM_BLOB_GRACE_S=86400)
    yield w
    workers.stop(w)


@pytest.fixture(scope="module")
def alice(fm):
    return fm.user("del-alice")


@pytest.fixture(scope="module")
def bob(fm):
    return fm.user("del-bob")


def public_url(edge, key, file_id):
    return f"{edge.url}/p/{key}?file={file_id}&name=x.bin"


# ---- trash and restore ---------------------------------------------------------------------------------------------


def test_delete_hides_the_file_and_restore_brings_it_back(fm, alice, worker, edge):
    data = octet_bytes(5000)
    file_id, key, sha = fm.ready(alice, data, name="doc.bin")
    before = fm.file(alice, file_id)
    assert before.status_code == 200
    assert fm.download(alice, file_id).status_code == 200
    version = fm.file_state(file_id)["version"]

    r = fm.delete(alice, file_id)
    assert r.status_code == 204 and r.content == b"", r.text
    state = fm.file_state(file_id)
    assert state["deleted_at"] is not None and state["version"] == version + 1
    assert_error(fm.file(alice, file_id), 404, "not_found")
    assert_error(fm.download(alice, file_id), 404, "not_found")
    assert_error(fm.patch(alice, file_id, {"visibility": "public"}), 404, "not_found")
    assert_error(fm.delete(alice, file_id), 404, "not_found")  # already in the trash: gone from the owner's view
    assert fm.blob_row(sha) is not None and fm.head(key) is not None  # restorable: the bytes stay

    r = fm.restore(alice, file_id)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body == fm.file(alice, file_id).json(), body
    assert body["id"] == file_id and body["status"] == "READY" and body["name"] == "doc.bin"
    assert not {"owner_id", "visibility", "storage_key"} & set(body), body
    # `variants` is the list of what exists (test_file_metadata.py), never the stored keys
    assert all("key" not in v for v in body["variants"]), body
    state = fm.file_state(file_id)
    assert state["deleted_at"] is None and state["version"] == version + 2
    url = fm.download(alice, file_id).json()["url"]
    got = requests.get(url, timeout=60)
    assert got.status_code == 200 and got.content == data
    assert_error(fm.restore(alice, file_id), 409, "not_deleted")


def test_public_file_leaves_fm_public_and_comes_back(fm, alice, worker, edge):
    data = image_bytes("PNG", (320, 240))
    file_id, key, sha = fm.ready(alice, data, content_type="image/png", name="pic.png")
    variant_keys = [v["key"] for by_format in fm.blob_row(sha)["variants"].values() for v in by_format.values()]
    assert variant_keys, fm.blob_row(sha)
    assert fm.patch(alice, file_id, {"visibility": "public"}).status_code == 200
    assert all(fm.is_public(file_id, k) for k in [key] + variant_keys)
    assert requests.get(public_url(edge, key, file_id), timeout=60).content == data

    assert fm.delete(alice, file_id).status_code == 204
    assert not any(fm.is_public(file_id, k) for k in [key] + variant_keys)
    assert_error(requests.get(public_url(edge, key, file_id), timeout=30), 404, "not_public")
    assert_error(requests.get(f"{edge.url}/p/{variant_keys[0]}?file={file_id}", timeout=30), 404, "not_public")

    r = fm.restore(alice, file_id)
    assert r.status_code == 200, r.text
    assert all(fm.is_public(file_id, k) for k in [key] + variant_keys)
    assert requests.get(public_url(edge, key, file_id), timeout=60).content == data
    assert "/p/" in fm.download(alice, file_id).json()["url"]


def test_public_twin_stays_public_when_one_file_is_deleted(fm, alice, bob, worker, edge):
    data = octet_bytes(2500)
    mine, key, sha = fm.ready(alice, data)
    theirs, key2, _ = fm.ready(bob, data)  # storage-level dedupe: both files on one blob
    assert key2 == key == f"blobs/{sha}"
    assert fm.patch(alice, mine, {"visibility": "public"}).status_code == 200
    assert fm.patch(bob, theirs, {"visibility": "public"}).status_code == 200
    assert fm.delete(alice, mine).status_code == 204
    assert not fm.is_public(mine, key) and fm.is_public(theirs, key), "bob's file stays public, alice's does not"
    assert_error(requests.get(public_url(edge, key, mine), timeout=30), 404, "not_public")
    assert requests.get(public_url(edge, key, theirs), timeout=60).content == data
    assert fm.delete(bob, theirs).status_code == 204
    assert not fm.is_public(theirs, key)
    assert_error(requests.get(public_url(edge, key, theirs), timeout=30), 404, "not_public")


def test_owner_only(fm, alice, bob, worker):
    file_id, key, _ = fm.ready(alice)
    assert_unauthorized(fm.delete(None, file_id))
    assert_unauthorized(fm.restore(None, file_id))
    assert_error(fm.delete(bob, file_id), 404, "not_found")
    assert fm.file(alice, file_id).status_code == 200  # untouched
    assert fm.file_state(file_id)["deleted_at"] is None
    assert fm.delete(alice, file_id).status_code == 204
    assert_error(fm.restore(bob, file_id), 404, "not_found")
    assert fm.file_state(file_id)["deleted_at"] is not None
    assert fm.restore(alice, file_id.upper()).status_code == 200  # any case of the UUID
    assert fm.file(alice, file_id).status_code == 200


def test_bad_ids(fm, alice):
    for bad in ("not-a-uuid", "1234", str(uuid.uuid4()) + "0", "g" * 8 + str(uuid.uuid4())[8:]):
        assert_error(fm.delete(alice, bad), 404, "not_found")
        assert_error(fm.restore(alice, bad), 404, "not_found")
    unknown = str(uuid.uuid4())
    assert_error(fm.delete(alice, unknown), 404, "not_found")
    assert_error(fm.restore(alice, unknown), 404, "not_found")


def test_restore_of_a_live_file_is_409(fm, alice, worker):
    file_id, _, _ = fm.ready(alice)
    assert_error(fm.restore(alice, file_id), 409, "not_deleted")
    assert fm.file_state(file_id)["deleted_at"] is None


def test_pending_file_goes_to_the_trash_without_purge(fm, alice):
    pending = fm.start(alice, random_bytes(100))
    file_id = pending["file_id"]
    assert fm.delete(alice, file_id).status_code == 204
    assert_error(fm.file(alice, file_id), 404, "not_found")
    assert fm.purge_jobs(file_id=file_id) == []  # no blob: nothing any edge could hold
    assert fm.upload_row(pending["upload_id"])["status"] == "PENDING"  # the reconciler's expiry ends it
    r = fm.restore(alice, file_id)
    assert r.status_code == 200 and r.json()["status"] == "PENDING_UPLOAD", r.text


def test_dedupe_index_follows_the_trash(fm, alice, worker):
    data = octet_bytes(4000)
    file_id, _, sha = fm.ready(alice, data)
    index = f"fm:dedupe:{{{alice.id}}}"
    assert fm.redis("HGET", index, sha) == str(len(data))  # the worker registered it
    assert fm.delete(alice, file_id).status_code == 204
    assert fm.redis("HGET", index, sha) is None
    # the owner no longer holds the content: a new upload of it moves the bytes again
    again = fm.start(alice, data, recorded=False)
    assert again["deduplicated"] is False and again["method"] == "PUT", again
    assert fm.restore(alice, file_id).status_code == 200
    assert fm.redis("HGET", index, sha) == str(len(data))
    dup = fm.start(alice, data, recorded=False, expect=200)
    assert dup["deduplicated"] is True, dup


# ---- purge --------------------------------------------------------------------------------------------------------


def test_delete_purges_the_edges(fm, alice, worker, edge, second_edge):
    other = second_edge["svc"]
    data = image_bytes("JPEG", (640, 480))
    file_id, key, sha = fm.ready(alice, data, content_type="image/jpeg", name="p.jpg")
    url = fm.download(alice, file_id).json()["url"]
    thumb_url = fm.download(alice, file_id, "variant=thumb&format=jpeg").json()["url"]
    thumb_key = fm.blob_row(sha)["variants"]["thumb"]["jpeg"]["key"]
    assert fill(edge, url, edge, key) == data
    fill(edge, thumb_url, edge, thumb_key)
    fill(other, url, edge, key)
    hits = metric(edge, "fm_edge_hits_total")
    assert requests.get(url, timeout=60).content == data
    assert metric(edge, "fm_edge_hits_total") == hits + 1  # served from the cache
    purged = metric(edge, "fm_edge_purged_total")

    assert fm.delete(alice, file_id).status_code == 204
    job = fm.wait_purged(file_id=file_id)
    payload = job["payload"]
    assert payload["keys"] == [key] and payload["prefixes"] == [f"variants/{sha}/"], payload
    assert payload["reason"] == "delete" and payload["result"] == "purged" and payload["edges"] == 2, payload
    assert job["attempts"] == 1 and job["enqueued_at"], job
    assert not cached(edge, key) and not cached(edge, thumb_key) and not cached(other, key)
    assert metric(edge, "fm_edge_purged_total") >= purged + 2
    assert 'fm_worker_jobs_total{type="purge_edge",outcome="purged"}' in requests.get(worker.url + "/metrics",
                                                                                       timeout=5).text
    # A URL signed before the delete still verifies, but names a trashed file: refused at once, neither served nor
    # refilled (test_verified_bytes.py: the same for a file whose blob another live file shares)
    misses = metric(edge, "fm_edge_misses_total")
    assert_error(requests.get(url, timeout=60), 410, "revoked")
    assert metric(edge, "fm_edge_misses_total") == misses


def test_no_purge_while_a_twin_is_live(fm, alice, bob, worker, edge):
    data = octet_bytes(6000)
    mine, key, sha = fm.ready(alice, data)
    theirs, _, _ = fm.ready(bob, data)
    fill(edge, fm.download(bob, theirs).json()["url"], edge, key)
    assert fm.delete(alice, mine).status_code == 204
    assert fm.purge_jobs(file_id=mine) == []  # bob's file still serves these bytes: no purge, no refill
    assert cached(edge, key)
    assert fm.delete(bob, theirs).status_code == 204
    assert fm.wait_purged(file_id=theirs)["payload"]["keys"] == [key]
    assert not cached(edge, key)


def test_purge_is_retried_while_an_edge_is_down(fm, alice, worker, edges, edge, second_edge, stack, key_pair):
    other = second_edge["svc"]
    data = octet_bytes(7000)
    file_id, key, _ = fm.ready(alice, data)
    fill(other, fm.download(alice, file_id).json()["url"], edge, key)
    edges.stop(other)

    assert fm.delete(alice, file_id).status_code == 204
    # an edge that is down is a dependency's failure: retried, using none of the job's attempts
    job = wait_for(lambda: (lambda js: js[0] if js and js[0]["transient_retries"] >= 1 and js[0]["status"] == "RETRY"
                            else None)(fm.purge_jobs(file_id=file_id)), 60, 0.05)
    assert job and job["attempts"] == 0, fm.purge_jobs(file_id=file_id)
    assert job, fm.purge_jobs(file_id=file_id)
    assert str(other.port) in job["last_error"], job
    assert edges.purge_secret not in job["last_error"]

    # the same port and cache folder: the copy is still there after the restart, until the retry purges it
    second_edge["svc"] = other = edges.start(cache_dir=other.cache_dir, FM_EDGE_HTTP_PORT=other.port,
                                             **edge_env(stack, key_pair, edge.url))
    job = fm.wait_purged(timeout=120, file_id=file_id)
    assert job["attempts"] == 1 and job["transient_retries"] >= 1 and job["payload"]["edges"] == 2, job
    assert not cached(other, key)


def test_purge_without_edges_is_a_logged_no_op(fm, alice, workers, stack, worker):
    file_id, _, _ = fm.ready(alice)
    workers.stop(worker)  # a worker without FM_EDGE_PURGE_URLS takes the job
    lone = workers.start(FM_REDIS_URL=redis_url(stack, DELETE_REDIS_DB), FM_WORKER_THREADS=1)
    try:
        assert fm.delete(alice, file_id).status_code == 204
        job = fm.wait_purged(file_id=file_id)
        assert job["payload"]["result"] == "no_edges" and job["payload"]["edges"] == 0, job
        assert wait_for(lambda: "no edge to purge" in lone.log_text(), 10)
    finally:
        workers.stop(lone)
        worker.start()  # the module's worker again, same settings and port


# ---- retention --------------------------------------------------------------------------------------------------


def test_retention_deletes_rows_then_blobs(fm, controls, stack, alice, bob, worker, key_pair, edge):
    data = octet_bytes(9000)
    mine, key, sha = fm.ready(alice, data)
    theirs, _, _ = fm.ready(bob, data)  # one blob, two files
    pending = fm.start(alice, random_bytes(50))  # trashed before its upload finished
    assert fm.delete(alice, pending["file_id"]).status_code == 204
    assert fm.delete(alice, mine).status_code == 204
    fill(edge, fm.download(bob, theirs).json()["url"], edge, key)

    short = controls.start(FM_RECONCILE_INTERVAL_S=1, FM_TRASH_RETENTION_S=1,
                           FM_REDIS_URL=redis_url(stack, DELETE_REDIS_DB))
    try:
        assert wait_for(lambda: fm.file_state(mine) is None, 60), fm.file_state(mine)
        # bob's file keeps the blob: no cleanup job was made with the row's delete, the bytes stay
        assert fm.cleanup_job(sha) is None and fm.blob_row(sha) is not None and fm.head(key) is not None
        assert fm.file(bob, theirs).status_code == 200
        # too late to restore, on any instance
        assert_error(fm.restore(alice, mine), 404, "not_found")
        # the pending upload's file stays until the upload is finished or expired
        assert fm.file_state(pending["file_id"]) is not None
        assert fm.upload_row(pending["upload_id"])["status"] == "PENDING"

        assert cached(edge, key)  # nothing purged while bob's file served the bytes

        assert fm.delete(bob, theirs).status_code == 204
        assert wait_for(lambda: fm.file_state(theirs) is None, 60), fm.file_state(theirs)
        job = wait_for(lambda: (lambda j: j if j and j["status"] in ("DONE", "FAILED") else None)(fm.cleanup_job(sha)),
                       60, 0.1)
        assert job and job["status"] == "DONE" and job["payload"]["result"] == "deleted", fm.cleanup_job(sha)
        assert job["payload"]["reason"] == "trash retention", job
        assert fm.blob_row(sha) is None and fm.head(key) is None
        # the delete purged the edges once already; the cleanup purges them again after the origin lost the bytes
        # (a URL signed before the delete could have refilled them meanwhile)
        purge = fm.wait_purged(sha256=sha, reason="cleanup")
        assert purge["payload"]["keys"] == [key] and purge["payload"]["result"] == "purged", purge
        assert purge["payload"]["prefixes"] == [f"variants/{sha}/"], purge
        assert not cached(edge, key)
    finally:
        controls.stop(short)


def test_restore_past_retention_is_404(fm, controls, stack, alice, worker):
    """The default retention (30 days): a file trashed longer ago cannot come back, whether or not a reconciler round
    deleted its row yet."""
    file_id, _, _ = fm.ready(alice)
    assert fm.delete(alice, file_id).status_code == 204
    fm.sql(f"UPDATE files SET deleted_at = now() - interval '31 days' WHERE id = '{file_id}'")
    # past retention though no round deleted the row yet (the module's instance runs none)
    assert fm.file_state(file_id) is not None
    assert_error(fm.restore(alice, file_id), 404, "not_found")
    # an instance with the default retention (30 days) and a 1 s reconciler deletes the row at its first round
    rounds = controls.start(FM_RECONCILE_INTERVAL_S=1, FM_REDIS_URL=redis_url(stack, DELETE_REDIS_DB))
    try:
        assert wait_for(lambda: fm.file_state(file_id) is None, 60), fm.file_state(file_id)
    finally:
        controls.stop(rounds)
