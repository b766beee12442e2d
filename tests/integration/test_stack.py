"""The local stack (infra/lib/stack.sh, infra/lib/s3_prepare.py) on free ports in a temporary folder.

Run: /usr/bin/python3 -m pytest -v tests/integration/test_stack.py
"""
import http.server
import json
import socket
import struct
import subprocess
import threading
import time
import urllib.parse

import botocore.exceptions
import pytest
import requests

from stackfixture import pid_alive, start_stack

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
ORIGIN = "http://127.0.0.1:8080"


@pytest.fixture(scope="module")
def stack(request):
    """This module's own stack, not the session's shared one (conftest.py): the last test here stops it."""
    st = start_stack()
    request.addfinalizer(st.stop)
    return st


def psql(stack, sql):
    p = subprocess.run(["psql", "-X", "-tA", "-v", "ON_ERROR_STOP=1", stack.env["FM_DATABASE_URL"], "-c", sql],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def redis_cmd(stack, *args):
    """One RESP command over a raw socket; returns the decoded first reply line (enough for these tests)."""
    port = int(stack.env["FM_REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        data = b""
        while not data.endswith(b"\r\n") or (
                data.startswith(b"$") and not data.startswith(b"$-1") and data.count(b"\r\n") < 2):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    lines = data.decode().split("\r\n")
    return lines[1] if lines[0].startswith("$") and lines[0] != "$-1" else lines[0]


def clamd(stack, command, body=None):
    host, port = stack.env["FM_CLAMD_ADDR"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"z" + command + b"\0")
        if body is not None:
            for i in range(0, len(body), 4096):
                chunk = body[i:i + 4096]
                s.sendall(struct.pack(">I", len(chunk)) + chunk)
            s.sendall(struct.pack(">I", 0))
        reply = b""
        while not reply.endswith(b"\0"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.rstrip(b"\0").decode()


# --- PostgreSQL -----------------------------------------------------------------------------------------------

def test_postgres_query_and_extensions(stack):
    assert psql(stack, "SELECT 40 + 2") == "42"
    exts = psql(stack, "SELECT string_agg(extname, ',' ORDER BY extname) FROM pg_extension").split(",")
    assert "pgcrypto" in exts and "pg_trgm" in exts
    assert psql(stack, "SELECT similarity('report.pdf', 'reprot.pdf') > 0.2") == "t"
    assert len(psql(stack, "SELECT encode(digest('x', 'sha256'), 'hex')")) == 64


def test_postgres_restart_keeps_data(stack):
    psql(stack, "CREATE TABLE IF NOT EXISTS stack_probe (v text); INSERT INTO stack_probe VALUES ('kept')")
    old = stack.pids()["pg"]
    stack.restart_pg()
    assert not pid_alive(old)
    assert stack.pids()["pg"] != old
    assert psql(stack, "SELECT v FROM stack_probe") == "kept"


# --- Redis ----------------------------------------------------------------------------------------------------

def test_redis_ping(stack):
    assert redis_cmd(stack, "PING") == "+PONG"


def test_redis_restart_keeps_queue(stack):
    assert "-" in redis_cmd(stack, "XADD", "stack-probe", "*", "job", "1")  # the new entry's id
    old = stack.pids()["redis"]
    stack.restart_redis()
    assert not pid_alive(old)
    assert redis_cmd(stack, "XLEN", "stack-probe") == ":1"  # the append-only file survived the restart


# --- S3 (Ceph RGW) --------------------------------------------------------------------------------------------

def test_s3_put_get_delete(stack):
    s3, bucket = stack.s3_client(), stack.env["FM_S3_BUCKET"]
    s3.put_object(Bucket=bucket, Key="probe/a.txt", Body=b"hello", ContentType="text/plain")
    got = s3.get_object(Bucket=bucket, Key="probe/a.txt")
    assert got["Body"].read() == b"hello"
    assert got["ContentType"] == "text/plain"
    s3.delete_object(Bucket=bucket, Key="probe/a.txt")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.head_object(Bucket=bucket, Key="probe/a.txt")
    assert e.value.response["Error"]["Code"] in ("404", "NoSuchKey")


def test_s3_presigned_put_and_tampered_signature(stack):
    s3, bucket = stack.s3_client(), stack.env["FM_S3_BUCKET"]
    url = s3.generate_presigned_url("put_object", ExpiresIn=300,
                                    Params={"Bucket": bucket, "Key": "probe/presigned.bin",
                                            "ContentType": "application/octet-stream"})
    r = requests.put(url, data=b"\x00" * 1000, headers={"Content-Type": "application/octet-stream"}, timeout=10)
    assert r.status_code == 200, r.text
    assert s3.head_object(Bucket=bucket, Key="probe/presigned.bin")["ContentLength"] == 1000

    u = urllib.parse.urlsplit(url)
    q = urllib.parse.parse_qsl(u.query)
    q = [(k, (v[:-1] + ("0" if v[-1] != "0" else "1")) if k == "X-Amz-Signature" else v) for k, v in q]
    tampered = urllib.parse.urlunsplit(u._replace(query=urllib.parse.urlencode(q)))
    r = requests.put(tampered, data=b"evil", headers={"Content-Type": "application/octet-stream"}, timeout=10)
    assert r.status_code == 403, r.text
    # the signed Content-Type is enforced too
    r = requests.put(url, data=b"evil", headers={"Content-Type": "text/html"}, timeout=10)
    assert r.status_code == 403, r.text
    assert s3.head_object(Bucket=bucket, Key="probe/presigned.bin")["ContentLength"] == 1000
    s3.delete_object(Bucket=bucket, Key="probe/presigned.bin")


def test_s3_cors_preflight(stack):
    url = f"{stack.env['FM_S3_ENDPOINT']}/{stack.env['FM_S3_BUCKET']}/incoming/some-upload"
    r = requests.options(url, timeout=10, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "content-type"})
    assert r.status_code == 200, r.text
    assert r.headers.get("Access-Control-Allow-Origin") == ORIGIN
    assert "PUT" in r.headers.get("Access-Control-Allow-Methods", "")
    r = requests.options(url, timeout=10, headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "PUT"})
    assert r.headers.get("Access-Control-Allow-Origin") not in ("http://evil.example", "*")


class _Events(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        self.records, self.bodies = [], []
        self.cond = threading.Condition()
        super().__init__(("127.0.0.1", 0), _EventHandler)

    def wait_for(self, pred, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [r for r in self.records if pred(r)]
                if found or time.monotonic() >= deadline:
                    return found
                self.cond.wait(max(0.0, min(0.5, deadline - time.monotonic())))


class _EventHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
        srv = self.server
        with srv.cond:
            srv.bodies.append((self.path, body))
            try:
                srv.records.extend(json.loads(body).get("Records", []))
            except (ValueError, AttributeError):
                pass
            srv.cond.notify_all()

    def log_message(self, *args):
        pass


@pytest.fixture
def events():
    srv = _Events()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _key(record):
    return urllib.parse.unquote_plus(record["s3"]["object"]["key"])


def test_s3_notifications_reach_webhook(stack, events):
    s3, bucket = stack.s3_client(), stack.env["FM_S3_BUCKET"]
    # First pointed at a dead endpoint, then re-pointed: the second run must replace the first.
    # Not persistent: a new persistent topic starts delivering only within ~30 s (docs/decisions.md "Local stack"),
    # and what is tested here is that notifications reach the webhook unchanged.
    stack.prepare_s3(events_url="http://127.0.0.1:9/v1/events/s3?secret=old", persistent=False)
    url = f"http://127.0.0.1:{events.server_address[1]}/v1/events/s3?secret=s3cr%2Bt"
    stack.prepare_s3(events_url=url, persistent=False)

    s3.put_object(Bucket=bucket, Key="outside/y", Body=b"not watched")
    s3.put_object(Bucket=bucket, Key="incoming/x", Body=b"watched")
    created = events.wait_for(lambda r: _key(r) == "incoming/x" and "ObjectCreated" in r["eventName"], 20)
    assert created, f"no ObjectCreated event for incoming/x within 20 s; got {events.records}"
    rec = created[0]
    assert rec["s3"]["bucket"]["name"] == bucket
    assert rec["s3"]["object"]["size"] == len(b"watched")
    assert rec["eventSource"].endswith(":s3")
    path, _ = events.bodies[0]
    assert path == "/v1/events/s3?secret=s3cr%2Bt"  # the webhook URL (and its secret) arrives unchanged

    s3.delete_object(Bucket=bucket, Key="incoming/x")
    removed = events.wait_for(lambda r: _key(r) == "incoming/x" and "ObjectRemoved" in r["eventName"], 20)
    assert removed, f"no ObjectRemoved event for incoming/x within 20 s; got {events.records}"
    assert not [r for r in events.records if _key(r).startswith("outside/")]
    s3.delete_object(Bucket=bucket, Key="outside/y")


def test_ceph_restart_keeps_objects(stack):
    s3, bucket = stack.s3_client(), stack.env["FM_S3_BUCKET"]
    s3.put_object(Bucket=bucket, Key="probe/survivor", Body=b"still here")
    old = {k: v for k, v in stack.pids().items() if k in ("ceph-mon", "ceph-osd", "radosgw")}
    t0 = time.monotonic()
    stack.restart_ceph()
    print(f"ceph restart: {time.monotonic() - t0:.1f} s")
    assert not any(pid_alive(p) for p in old.values())
    s3 = stack.s3_client()
    assert s3.get_object(Bucket=bucket, Key="probe/survivor")["Body"].read() == b"still here"
    # the user and keys, the CORS rules and the notification survived too
    assert s3.get_bucket_cors(Bucket=bucket)["CORSRules"][0]["AllowedOrigins"]
    s3.delete_object(Bucket=bucket, Key="probe/survivor")


# --- clamd ----------------------------------------------------------------------------------------------------

def test_clamd_ping_and_scan(stack):
    assert clamd(stack, b"PING") == "PONG"
    found = clamd(stack, b"INSTREAM", b"some bytes before " + EICAR + b" and after")
    assert found.startswith("stream: ") and found.endswith(" FOUND"), found
    assert "FM-Test.EICAR" in found
    assert clamd(stack, b"INSTREAM", b"a perfectly clean file\n" * 1000) == "stream: OK"


# --- the whole stack ------------------------------------------------------------------------------------------

def test_start_is_idempotent(stack):
    before = stack.pids()
    t0 = time.monotonic()
    stack.start()
    assert time.monotonic() - t0 < 10
    assert stack.pids() == before
    st = stack.sh("stack_status", check=False)
    assert st.returncode == 0, st.stdout + st.stderr


def test_stop_leaves_no_processes(stack):
    pids = stack.pids()
    assert set(pids) == {"pg", "redis", "ceph-mon", "ceph-osd", "radosgw", "clamd"}
    assert all(pid_alive(p) for p in pids.values())
    keep, stack.keep = stack.keep, True  # keep the folder: the status check below reads it
    t0 = time.monotonic()
    stack.stop()
    print(f"stop: {time.monotonic() - t0:.1f} s (cold start was {stack.start_seconds:.1f} s)")
    stack.keep = keep
    alive = {n: p for n, p in pids.items() if pid_alive(p)}
    assert not alive, f"still running after stop: {alive}"
    st = stack.sh("stack_status", check=False)
    assert st.returncode != 0 and "running" not in st.stdout, st.stdout
    # every listening port is released
    for var in ("FM_PG_PORT", "FM_REDIS_PORT", "FM_RGW_PORT", "FM_CEPH_MON_PORT", "FM_CLAMD_PORT"):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", int(stack.ports[var])), timeout=1).close()
    stack.stop()  # idempotent; removes the folder unless FM_STACK_KEEP=1
