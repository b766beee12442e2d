"""Verified bytes stay what was verified (issue 10 findings 1, 2 and 11; DESIGN.md §6 rule 1; docs/workers.md "Where
verified bytes live", docs/downloads.md "Revocation"), against the real stack: fm-control, fm-worker and fm-edge on a
Redis database of this module's, Ceph RGW, clamd behind a TCP gate this module can close.

A presigned PUT stays valid after the upload completed. Before, the verified blob kept the upload's key
incoming/{upload_id}, so a second PUT to the same URL replaced bytes that had been hashed and scanned (EICAR served as
a READY file, to its owner and to everyone whose upload deduplicated onto it), and a download URL named another
account's upload. Now the worker copies the client's object to staging/ before reading it, the verified copy lives at
blobs/{sha256}, and signed URLs name their file so that fm-edge can refuse them once it is trashed.

    FM_BUILD_DIR=build /usr/bin/python3 -m pytest -q tests/integration/test_verified_bytes.py
"""
import hashlib
import socket
import threading
import time
import urllib.parse
import uuid

import pytest
import requests

from helpers_fm import assert_error, redis_cmd, redis_url, relay_sockets, wait_for
from helpers_uploads import dedicated, sha256_hex
from test_download import DownloadFm, KeyPair, split_signed
from test_edge import metric
from test_file_delete import octet_bytes
from test_worker import WorkerFm, eicar

VERIFIED_REDIS_DB = 40
KEY_ID = "KVERIFIED1"
MIB = 1024 * 1024
COPY_PART_BYTES = 5 * MIB  # FM_S3_COPY_PART_BYTES of the module's worker: S3's smallest part, so parts are tested


class VerifiedFm(WorkerFm, DownloadFm):
    """The worker suite's helpers (READY made by fm-worker) and the download suite's, on this module's database."""

    def redis(self, *args):
        return redis_cmd(self.stack, VERIFIED_REDIS_DB, *args)

    def ready(self, user, data, content_type="application/octet-stream", name=None):
        """Start, PUT, complete, READY by the worker. Returns (start answer, file id)."""
        a, c = self.upload(user, data, content_type=content_type, name=name)
        row = self.wait_status(a["file_id"], {"READY", "QUARANTINED", "FAILED"}, timeout=60)
        assert row["status"] == "READY", (row, self.job_row(c["job_id"]))
        return a, a["file_id"]

    def url(self, user, file_id, query=""):
        r = self.download(user, file_id, query)
        assert r.status_code == 200, r.text
        return r.json()["url"]


class Gate:
    """A TCP proxy in front of clamd that the worker scans through: closed, it holds each new connection's bytes
    (the worker waits in its scan step, after it staged and hashed the object) until opened again."""

    def __init__(self, port):
        self.target = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open_ = threading.Event()
        self.open_.set()
        self.waiting = threading.Event()  # a connection is being held
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.waiting.clear()
        self.open_.clear()

    def open(self):
        self.open_.set()

    def _accept(self):
        while True:
            client, _ = self.listener.accept()
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        if not self.open_.is_set():
            self.waiting.set()
            self.open_.wait()
        upstream = socket.create_connection(self.target)
        relay_sockets(client, upstream)
        client.close()
        upstream.close()


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory):
    return KeyPair(KEY_ID, tmp_path_factory.mktemp("cf-keys-verified"))


@pytest.fixture(scope="module")
def edge(edges, stack, key_pair):
    return edges.start(FM_EDGE_CF_PUBLIC_KEYS=f"{key_pair.id}={key_pair.public_path}",
                       FM_REDIS_URL=redis_url(stack, VERIFIED_REDIS_DB))


@pytest.fixture(scope="module")
def fm(controls, stack, key_pair, edge):
    with dedicated(controls, stack, VerifiedFm, FM_CF_KEYS=f"{key_pair.id}={key_pair.private_path}",
                   FM_EDGE_PUBLIC_BASE=edge.url, FM_RECONCILE_INTERVAL_S=1,
                   FM_REDIS_URL=redis_url(stack, VERIFIED_REDIS_DB)) as f:
        yield f


@pytest.fixture(scope="module")
def gate(stack):
    return Gate(int(stack.env["FM_CLAMD_PORT"]))


@pytest.fixture(scope="module")
def worker(workers, stack, fm, gate):
    w = workers.start(FM_REDIS_URL=redis_url(stack, VERIFIED_REDIS_DB), FM_WORKER_THREADS=2,
                      FM_CLAMD_HOST="127.0.0.1", FM_CLAMD_PORT=gate.port, FM_S3_COPY_PART_BYTES=COPY_PART_BYTES,
                      FM_JOB_BACKOFF_BASE_MS=200, FM_CLEANUP_INTERVAL_S=1)
    yield w
    workers.stop(w)


@pytest.fixture(scope="module")
def alice(fm):
    return fm.user("vb-alice")


@pytest.fixture(scope="module")
def bob(fm):
    return fm.user("vb-bob")


def same_size_eicar(n):
    """EICAR (which the stack's clamd finds anywhere in a stream) padded to n bytes: a PUT to a URL that signs
    Content-Length must bring exactly the declared size."""
    body = eicar() + b"\n"
    assert len(body) <= n
    return body + b" " * (n - len(body))


def served(url):
    r = requests.get(url, timeout=60)
    assert r.status_code == 200, r.text[:300]
    return r.content


# ---- finding 1: the verified bytes cannot be replaced ----------------------------------------------------------


def test_verified_bytes_cannot_be_replaced(fm, alice, bob, worker, edge):
    """A second PUT to the upload's URL after READY changes nothing that is served: not the owner's download, not the
    blob, not the download of another account whose upload deduplicated onto the same bytes."""
    data = octet_bytes(4096)
    sha = sha256_hex(data)
    a, mine = fm.ready(alice, data, name="report.bin")

    # the URL still takes a PUT of the declared size: the store cannot tell it from the first one
    replaced = fm.put(a, same_size_eicar(len(data)))
    assert replaced.status_code == 200, replaced.text
    time.sleep(0.5)
    row = fm.file_row(mine)
    assert row["status"] == "READY" and row["blob"] == sha, row
    assert served(fm.url(alice, mine)) == data, "the bytes served are no longer the ones verified"
    assert fm.blob_row(sha)["storage_key"] == f"blobs/{sha}"
    assert fm.get_bytes(f"blobs/{sha}") == data

    # another account uploads the original bytes: storage-level dedupe points it at the same verified blob
    _, theirs = fm.ready(bob, data, name="copy.bin")
    assert fm.file_row(theirs)["blob"] == sha
    assert served(fm.url(bob, theirs)) == data
    assert served(fm.url(bob, theirs, "disposition=attachment")) == data


def test_reput_between_the_read_and_the_blob_copy_is_not_served(fm, alice, worker, edge, gate):
    """The race the copy-first order closes: the worker has staged and hashed the object and waits in its scan; a
    PUT to the upload's URL replaces incoming/{id} meanwhile. What becomes READY, and what is served, is what was
    hashed and scanned."""
    data = octet_bytes(8192)
    sha = sha256_hex(data)
    gate.close()
    try:
        a = fm.start(alice, data, name="raced.bin")
        assert fm.put(a, data).status_code == 200
        assert fm.complete(alice, a["upload_id"]).status_code == 200
        assert gate.waiting.wait(30), "the worker never reached its scan"
        assert fm.file_row(a["file_id"])["status"] == "PROCESSING"
        assert fm.put(a, same_size_eicar(len(data))).status_code == 200  # the client's object is now EICAR
    finally:
        gate.open()
    row = fm.wait_status(a["file_id"], {"READY", "QUARANTINED", "FAILED"}, timeout=60)
    assert row["status"] == "READY" and row["blob"] == sha, row
    assert served(fm.url(alice, a["file_id"])) == data, "the bytes served are not the ones hashed and scanned"
    assert fm.get_bytes(f"blobs/{sha}") == data
    # the worker deleted the client's object and its staged copy when it was done
    assert wait_for(lambda: fm.head(f"incoming/{a['upload_id']}") is None, 10)
    assert fm.head(f"staging/{a['upload_id']}") is None


def test_a_larger_put_to_a_used_url_is_refused_by_the_store(fm, alice, worker):
    """Content-Length is signed: a 30 MB body cannot hide behind a READY 21-byte file (size and quota bypass)."""
    data = b"twenty-one bytes: ok\n"
    assert len(data) == 21
    a, file_id = fm.ready(alice, data, content_type="text/plain", name="small.txt")
    big = fm.put(a, b"\0" * (30 * 1000 * 1000))
    assert big.status_code == 403 and b"SignatureDoesNotMatch" in big.content, big.text[:300]
    # the worker deletes the client's object last, once the file is READY
    assert wait_for(lambda: fm.head(f"incoming/{a['upload_id']}") is None, 10)
    assert fm.file_row(file_id)["status"] == "READY"


def test_large_upload_is_copied_in_parts(fm, alice, worker):
    """Above FM_S3_COPY_PART_BYTES (S3's 5 GiB CopyObject limit in production; 5 MiB here) the staging and blob
    copies are UploadPartCopy parts: the blob is whole and the multipart copy left nothing behind."""
    data = octet_bytes(12 * MIB + 5)
    sha = sha256_hex(data)
    a, file_id = fm.ready(alice, data, name="large.bin")
    head = fm.head(f"blobs/{sha}")
    assert head["ContentLength"] == len(data) and head["ETag"].endswith('-3"'), head["ETag"]
    assert hashlib.sha256(fm.get_bytes(f"blobs/{sha}")).hexdigest() == sha
    assert fm.s3.list_multipart_uploads(Bucket=fm.bucket, Prefix="blobs/").get("Uploads", []) == []
    assert fm.s3.list_multipart_uploads(Bucket=fm.bucket, Prefix="staging/").get("Uploads", []) == []


# ---- finding 2: no URL tells who else holds the bytes --------------------------------------------------------------


def test_download_urls_reveal_no_other_owner(fm, alice, bob, worker, edge):
    """Bob's URL for his copy of bytes Alice stored first names the content-addressed key he could compute himself
    and his own file, nothing of Alice's: the same shape as for bytes nobody else holds."""
    data = octet_bytes(3000)
    sha = sha256_hex(data)
    a_start, a_file = fm.ready(alice, data)
    b_start, b_file = fm.ready(bob, data)
    lone = octet_bytes(3000)
    _, lone_file = fm.ready(bob, lone)

    for query in ("", "disposition=attachment"):
        url = fm.url(bob, b_file, query)
        resource, _ = split_signed(url)
        parts = urllib.parse.urlsplit(resource)
        assert parts.path == f"/f/blobs/{sha}"
        assert urllib.parse.parse_qs(parts.query)["file"] == [b_file]
        for secret in (a_start["upload_id"], a_file, alice.id):
            assert secret not in url
        lone_resource, _ = split_signed(fm.url(bob, lone_file, query))
        assert urllib.parse.urlsplit(lone_resource).path == f"/f/blobs/{sha256_hex(lone)}"
        r = requests.get(url, timeout=60)
        assert r.status_code == 200 and r.content == data
        for value in r.headers.values():
            for secret in (a_start["upload_id"], a_file, alice.id):
                assert secret not in value, (secret, r.headers)
    # the stored object's key and the public answer of GET /v1/files/{id} do not name Alice's upload either
    body = fm.file(bob, b_file).json()
    assert a_start["upload_id"] not in str(body) and a_file not in str(body)


def test_a_first_download_is_a_miss_whatever_others_downloaded(fm, alice, bob, worker, edge):
    """No timing tells who else holds the bytes: fm-edge caches per file (edge.h FM_EDGE_PARTITION), so Bob's first
    download of his copy fetches from the origin like anyone's first download, though Alice's copy of the same blob
    is hot in the cache. His second is a hit from his own partition."""
    data = octet_bytes(3500)
    _, a_file = fm.ready(alice, data)
    _, b_file = fm.ready(bob, data)
    a_url = fm.url(alice, a_file)
    assert served(a_url) == data and served(a_url) == data  # Alice's copy: a miss, then a hit
    misses, hits = metric(edge, "fm_edge_misses_total"), metric(edge, "fm_edge_hits_total")
    b_url = fm.url(bob, b_file)
    assert served(b_url) == data
    assert (metric(edge, "fm_edge_misses_total"), metric(edge, "fm_edge_hits_total")) == (misses + 1, hits)
    assert served(b_url) == data
    assert metric(edge, "fm_edge_hits_total") == hits + 1


# ---- finding 11: revocation is per file, at once ---------------------------------------------------------------


def test_trashed_file_urls_stop_at_once_while_its_blob_twin_serves(fm, alice, bob, worker, edge):
    """Alice trashes her file: the URL signed for it before is refused at once (a cache hit included), though Bob's
    file on the same blob keeps serving the same cached bytes; her restore makes the URL work again."""
    data = octet_bytes(5000)
    _, mine = fm.ready(alice, data)
    _, theirs = fm.ready(bob, data)
    my_url, their_url = fm.url(alice, mine), fm.url(bob, theirs)
    assert served(my_url) == data
    hits = metric(edge, "fm_edge_hits_total")
    assert served(my_url) == data
    assert metric(edge, "fm_edge_hits_total") == hits + 1  # cached by now

    assert fm.call(alice, "DELETE", f"/v1/files/{mine}").status_code == 204
    refused = metric(edge, "fm_edge_refused_total")
    assert_error(requests.get(my_url, timeout=30), 410, "revoked")
    assert_error(requests.get(my_url + "&w=10", timeout=30), 403, "bad_signature")  # not a way around it
    assert metric(edge, "fm_edge_refused_total") >= refused + 1
    assert served(their_url) == data

    assert fm.call(alice, "POST", f"/v1/files/{mine}/restore").status_code == 200
    assert wait_for(lambda: requests.get(my_url, timeout=30).status_code == 200, 5)
    assert served(my_url) == data


def test_a_lost_revocation_mark_is_rebuilt(fm, alice, worker, edge):
    """Redis lost its data: the reconciler writes the marks of files still in the trash again."""
    data = octet_bytes(2000)
    _, file_id = fm.ready(alice, data)
    url = fm.url(alice, file_id)
    assert fm.call(alice, "DELETE", f"/v1/files/{file_id}").status_code == 204
    assert_error(requests.get(url, timeout=30), 410, "revoked")
    fm.redis("DEL", f"fm:revoked:{{{file_id}}}", "fm:revoked:built")
    assert wait_for(lambda: fm.redis("EXISTS", f"fm:revoked:{{{file_id}}}") == 1, 15)  # FM_RECONCILE_INTERVAL_S=1
    ttl = fm.redis("TTL", f"fm:revoked:{{{file_id}}}")
    assert 300 < ttl <= 300 + 300 + 1, ttl  # FM_DOWNLOAD_URL_TTL_S (default 300) + the skew margin
    assert_error(requests.get(url, timeout=30), 410, "revoked")


def test_signed_url_without_a_file_is_refused(fm, alice, worker, edge, key_pair):
    """A URL must name the file it was issued for: a signature over the bare key (as before) is not enough."""
    data = octet_bytes(1000)
    _, file_id = fm.ready(alice, data)
    sha = sha256_hex(data)
    bare = key_pair.botocore_url(f"{edge.url}/f/blobs/{sha}", int(time.time()) + 60)
    assert_error(requests.get(bare, timeout=30), 403, "unbound_url")
    bound = key_pair.botocore_url(f"{edge.url}/f/blobs/{sha}?file={file_id}", int(time.time()) + 60)
    assert served(bound) == data
    upper = key_pair.botocore_url(f"{edge.url}/f/blobs/{sha}?file={file_id.upper()}", int(time.time()) + 60)
    assert_error(requests.get(upper, timeout=30), 400, "invalid_path")
    other = key_pair.botocore_url(f"{edge.url}/f/blobs/{sha}?file={uuid.uuid4()}&share=nope", int(time.time()) + 60)
    assert_error(requests.get(other, timeout=30), 400, "invalid_path")


# ---- blobs of an earlier version ---------------------------------------------------------------------------------


def legacy_file(fm, user, data, name):
    """A READY file as the previous version left it: its blob's object at its upload's incoming/{upload_id}, the key
    that upload's URL can still write. Returns (file id, key)."""
    a = fm.start(user, data, name=name)
    key = f"incoming/{a['upload_id']}"
    fm.s3.put_object(Bucket=fm.bucket, Key=key, Body=data)
    sha = sha256_hex(data)
    fm.sql(f"INSERT INTO blobs (sha256, size, storage_key, content_type, ref_count) VALUES "
           f"(decode('{sha}', 'hex'), {len(data)}, '{key}', 'application/octet-stream', 1); "
           f"UPDATE uploads SET status = 'COMPLETED', completed_at = now() WHERE id = '{a['upload_id']}'; "
           f"UPDATE files SET status = 'READY', blob_sha256 = decode('{sha}', 'hex') WHERE id = '{a['file_id']}'")
    fm.drop_cached(a["file_id"])
    return a["file_id"], key


def test_blobs_of_the_previous_version_are_moved_out_of_client_reach(fm, alice, worker, edge):
    """The housekeeping scan finds a blob still at an incoming/ key; its rekey job proves the bytes (a staged copy,
    hashed) and moves them to blobs/{sha256}; the file keeps downloading."""
    data = octet_bytes(6000)
    sha = sha256_hex(data)
    file_id, key = legacy_file(fm, alice, data, "old.bin")
    assert wait_for(lambda: fm.blob_row(sha)["storage_key"] == f"blobs/{sha}", 30), fm.blob_row(sha)
    assert fm.get_bytes(f"blobs/{sha}") == data
    assert wait_for(lambda: fm.head(key) is None, 10)
    assert fm.head(f"staging/rekey-{sha}") is None
    job = fm.sql_row(f"SELECT row_to_json(j) FROM (SELECT status, payload FROM jobs "
                     f"WHERE dedupe_key = 'rekey_blob:{sha}') j")
    assert job["status"] == "DONE" and job["payload"]["result"] == "moved", job
    assert fm.file_row(file_id)["status"] == "READY"
    assert served(fm.url(alice, file_id)) == data


def test_a_previous_version_blob_whose_bytes_were_replaced_is_quarantined(fm, alice, bob, worker, edge):
    """The bytes at the old key were replaced after they were verified (what the old URL allowed): the rekey finds
    another hash, and every READY file on that blob stops being served as verified."""
    data = octet_bytes(7000)
    sha = sha256_hex(data)
    mine, key = legacy_file(fm, alice, data, "swapped.bin")
    fm.s3.put_object(Bucket=fm.bucket, Key=key, Body=same_size_eicar(len(data)))  # the old URL's second PUT
    row = fm.wait_status(mine, {"QUARANTINED"}, timeout=30)
    assert row["status_reason"] == "the stored bytes changed after verification", row
    assert_error(fm.download(alice, mine), 403, "quarantined")
    # the old object goes once the files are marked
    assert wait_for(lambda: fm.head(key) is None and fm.head(f"blobs/{sha}") is None, 10)
    assert fm.get_bytes(f"quarantine/rekey-{sha}")[:len(eicar())] == eicar()
    # the real bytes uploaded again become a verified blob at blobs/{sha256}, for whoever uploads them
    _, theirs = fm.ready(bob, data)
    assert fm.blob_row(sha)["storage_key"] == f"blobs/{sha}"
    assert served(fm.url(bob, theirs)) == data
