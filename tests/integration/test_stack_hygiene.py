"""Stack hygiene (issue 10 #5 and #15):

- #5: the presigned PUT does not sign `x-amz-acl` / `x-amz-grant-*`, so a client could add `x-amz-acl: public-read`
  and read its object anonymously straight from RGW, past the edge, private visibility and delete.
  infra/lib/s3_prepare.py keeps the bucket private: a bucket policy denies PutObject with a public ACL or a grant,
  the public access block ignores public ACLs.
- #15: the data folders are 0700 and the logs 0600; RGW logs no request line (they held whole presigned URLs and the
  events webhook secret); logs rotate by size (stack_rotate_logs, infra/up's rotator); access lines can be sampled
  (FM_ACCESS_LOG); answers over TLS carry Strict-Transport-Security, answers over plain HTTP never do.

The #5 tests use the session's stack, prepared by the repository's s3_prepare.py, and the upload instance's
presigned URLs; the log and permission tests a private stack of their own.
Run: /usr/bin/python3 -m pytest -q tests/integration/test_stack_hygiene.py
"""
import json
import secrets
import shlex
import ssl
import stat
import subprocess
import time
import urllib.parse

import pytest
import requests

from helpers_fm import wait_for
from helpers_uploads import Fm, uploads_control
from stackfixture import STACK_SH, free_ports, pid_alive, private_stack  # noqa: F401 (private_stack: a fixture)

SERVICES_SH = STACK_SH.parent / "services.sh"


# --- #5 public ACLs through presigned URLs ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def fm(controls, stack):
    f = Fm(stack, uploads_control(controls, stack))
    yield f
    f.close()


@pytest.fixture(scope="module")
def alice(fm):
    return fm.user("hygiene")


def anonymous_get(fm, key):
    return requests.get(f"{fm.stack.env['FM_S3_ENDPOINT']}/{fm.bucket}/{key}", timeout=10)


@pytest.mark.parametrize("extra", [
    {"x-amz-acl": "public-read"},
    {"x-amz-acl": "public-read-write"},
    {"x-amz-acl": "authenticated-read"},
    {"x-amz-grant-read": 'uri="http://acs.amazonaws.com/groups/global/AllUsers"'},
    {"x-amz-grant-full-control": 'uri="http://acs.amazonaws.com/groups/global/AllUsers"'},
], ids=lambda h: "-".join(f"{k}={v.split('/')[-1]}" for k, v in h.items()))
def test_public_acl_on_a_presigned_put_does_not_publish_the_object(fm, alice, extra):
    data = b"private bytes " + secrets.token_bytes(16)
    answer = fm.start(alice, data)
    key = f"incoming/{answer['upload_id']}"
    put = fm.put(answer, data, headers={**answer["headers"], **extra})
    got = anonymous_get(fm, key)
    assert got.status_code == 403 and data not in got.content, (
        f"PUT with {extra} answered {put.status_code}; an anonymous GET of {key} answered {got.status_code}")
    # the PUT carrying it is refused outright (the bucket policy), so nothing with a public ACL is stored
    assert put.status_code == 403, put.text


def test_plain_presigned_put_still_works_and_stays_private(fm, alice):
    data = secrets.token_bytes(64)
    answer = fm.start(alice, data)
    assert fm.put(answer, data).status_code == 200
    assert fm.head(f"incoming/{answer['upload_id']}")["ContentLength"] == len(data)
    assert anonymous_get(fm, f"incoming/{answer['upload_id']}").status_code == 403


def test_a_public_policy_cannot_be_put_on_the_bucket(fm):
    import botocore.exceptions
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                                                      "Resource": f"arn:aws:s3:::{fm.bucket}/*"}]}
    with pytest.raises(botocore.exceptions.ClientError):
        fm.s3.put_bucket_policy(Bucket=fm.bucket, Policy=json.dumps(policy))
    statements = json.loads(fm.s3.get_bucket_policy(Bucket=fm.bucket)["Policy"])["Statement"]
    assert all(st["Effect"] == "Deny" for st in statements), statements


# --- #15 private folders and logs ------------------------------------------------------------------------------

def test_stack_folders_and_logs_are_private(private_stack):
    d = private_stack.dir
    top = d.stat().st_mode
    assert top & (stat.S_IROTH | stat.S_IWOTH | stat.S_IRGRP | stat.S_IWGRP) == 0, oct(top)
    for sub in d.iterdir():
        if sub.is_dir():
            assert sub.stat().st_mode & 0o077 == 0, f"{sub} is {oct(sub.stat().st_mode)}"
    logs = list((d / "logs").iterdir())
    assert any(p.name == "ceph-client.rgw.a.log" for p in logs), logs
    for log in logs:
        assert log.stat().st_mode & 0o077 == 0, f"{log} is {oct(log.stat().st_mode)}"
    assert (d / "stack.env").stat().st_mode & 0o077 == 0


def all_logs(stack):
    return "\n".join(p.read_text(errors="replace") for p in (stack.dir / "logs").iterdir() if p.is_file())


def test_rgw_logs_neither_presigned_urls_nor_the_webhook_secret(private_stack):
    st = private_stack
    secret = "whsecret" + secrets.token_hex(12)
    closed_port = free_ports(1)[0]  # nobody listens: RGW's push fails, which it used to log with the URL
    st.prepare_s3(events_url=f"http://127.0.0.1:{closed_port}/v1/events/s3?secret={secret}")
    s3 = st.s3_client()
    bucket = st.env["FM_S3_BUCKET"]
    url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "incoming/hygiene"}, ExpiresIn=300)
    signature = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["X-Amz-Signature"][0]
    assert requests.put(url, data=b"x", timeout=10).status_code == 200
    # RGW writes its log from a thread of its own: give it the time it took when it did log them (< 1 s)
    time.sleep(3)
    text = all_logs(st)
    assert signature not in text, "a presigned URL's signature is in the stack's logs"
    assert "X-Amz-Credential" not in text
    assert secret not in text, "the events webhook secret is in the stack's logs"


def sh(stack, script, **env):
    e = stack._shell_env()
    e.update({k: str(v) for k, v in env.items()})
    return subprocess.run(["bash", "-c", f"set -euo pipefail; source {shlex.quote(str(STACK_SH))}; "
                           f"source {shlex.quote(str(SERVICES_SH))}; {script}"],
                          env=e, capture_output=True, text=True, timeout=60)


def test_logs_are_rotated_in_place_above_the_cap(private_stack):
    st = private_stack
    logs = st.dir / "logs"
    pg_log = logs / "postgresql.log"
    assert pg_log.stat().st_size > 0
    before = pg_log.read_bytes()
    small = logs / "small.log"
    small.write_text("x\n")
    p = sh(st, f"stack_rotate_logs {shlex.quote(str(st.dir))}", FM_LOG_ROTATE_BYTES=len(before) - 1,
           FM_LOG_ROTATE_KEEP=2)
    assert p.returncode == 0, p.stderr
    assert (logs / "postgresql.log.1").read_bytes().startswith(before)
    assert small.read_text() == "x\n" and not (logs / "small.log.1").exists()
    assert (logs / "postgresql.log.1").stat().st_mode & 0o077 == 0
    # the server keeps writing to its descriptor (O_APPEND): the next line starts the file, no hole before it
    marker = "rotation_marker_" + secrets.token_hex(4)
    subprocess.run(["psql", "-h", "127.0.0.1", "-p", st.env["FM_PG_PORT"], "-U", "postgres", "-d", "postgres", "-c",
                    f"SELECT {marker}"], capture_output=True, timeout=30)
    assert wait_for(lambda: marker in pg_log.read_text(errors="replace"), 10)
    assert not pg_log.read_bytes().startswith(b"\0") and pg_log.stat().st_size < len(before) + 4096
    # at most FM_LOG_ROTATE_KEEP old copies
    for _ in range(3):
        with open(pg_log, "a") as f:
            f.write("filler " * 100 + "\n")
        sh(st, f"stack_rotate_logs {shlex.quote(str(st.dir))}", FM_LOG_ROTATE_BYTES=100, FM_LOG_ROTATE_KEEP=2)
    assert (logs / "postgresql.log.2").exists() and not (logs / "postgresql.log.3").exists()


def test_rotator_runs_in_the_background_and_stops_by_pid(private_stack):
    st = private_stack
    log = st.dir / "logs" / "fm-control.log"
    p = sh(st, f"services_rotator_start {shlex.quote(str(st.dir))}", FM_LOG_ROTATE_BYTES=1000,
           FM_LOG_ROTATE_INTERVAL_S=1)
    assert p.returncode == 0, p.stderr
    pid = int((st.dir / "run" / "fm-log-rotate.pid").read_text())
    try:
        assert pid_alive(pid)
        with open(log, "a") as f:
            f.write("y" * 5000 + "\n")
        assert wait_for(lambda: (st.dir / "logs" / "fm-control.log.1").exists() and log.stat().st_size == 0, 10)
    finally:
        p = sh(st, f"services_rotator_stop {shlex.quote(str(st.dir))}")
    assert p.returncode == 0, p.stderr
    assert wait_for(lambda: not pid_alive(pid), 10)
    assert not (st.dir / "run" / "fm-log-rotate.pid").exists()


# --- #15 access lines ------------------------------------------------------------------------------------------

def access_lines(svc, route):
    lines = []
    for line in svc.log_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == "request" and entry.get("route") == route:
            lines.append(entry)
    return lines


def test_access_log_can_be_sampled(controls):
    svc = controls.start(FM_THREADS=1, FM_ACCESS_LOG="sample", FM_ACCESS_LOG_SAMPLE=10)
    try:
        # the start's own health checks count too; any 100 answers in a row on the one thread make 10 lines
        before = len(access_lines(svc, "/healthz"))
        with requests.Session() as s:
            for _ in range(100):
                assert s.get(svc.url + "/healthz", timeout=10).status_code == 200
            for _ in range(5):
                assert s.get(svc.url + "/v1/nothing-here", timeout=10).status_code == 404
        assert wait_for(lambda: len(access_lines(svc, "unmatched")) == 5, 5), "every error keeps its line"
        assert len(access_lines(svc, "/healthz")) - before == 10, "one success line in 10"
    finally:
        controls.stop(svc)


def test_access_log_off_keeps_no_line_below_500(controls):
    svc = controls.start(FM_THREADS=1, FM_ACCESS_LOG="off")
    try:
        for _ in range(20):
            requests.get(svc.url + "/healthz", timeout=10)
            requests.get(svc.url + "/v1/nothing-here", timeout=10)
        time.sleep(0.5)
        assert access_lines(svc, "/healthz") == [] and access_lines(svc, "unmatched") == []
    finally:
        controls.stop(svc)


# --- #15 Strict-Transport-Security -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "2", "-subj", "/CN=localhost", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


def tls_get(port, path):
    """GET over TLS (HTTP/1.1), certificate not checked (self-signed); returns (status, headers lower-cased)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    import http.client
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}
    finally:
        c.close()


def h2_headers(port, path):
    """The answer's headers over TLS + HTTP/2 (curl: ALPN h2), lower-cased names."""
    out = subprocess.run(["curl", "-sk", "--http2", "-o", "/dev/null", "-D", "-", f"https://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, timeout=20).stdout
    assert out.startswith("HTTP/2"), out
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()[1:]) if v}


def test_hsts_on_tls_answers_of_the_control_plane_only(controls, tls_files):
    cert, key = tls_files
    https_port = free_ports(1)[0]
    svc = controls.start(FM_HTTPS_PORT=https_port, FM_TLS_CERT=cert, FM_TLS_KEY=key)
    try:
        for path, status in (("/healthz", 200), ("/v1/nothing-here", 404), ("/v1/me", 401)):
            got, headers = tls_get(https_port, path)
            assert got == status
            assert headers.get("strict-transport-security") == "max-age=31536000", (path, headers)
            plain = requests.get(svc.url + path, timeout=10)
            assert "strict-transport-security" not in {k.lower() for k in plain.headers}, (path, plain.headers)
        assert h2_headers(https_port, "/healthz").get("strict-transport-security") == "max-age=31536000"
        # h2c on the plain port, even claiming :scheme https, gets none
        out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-D", "-",
                              f"{svc.url}/healthz"], capture_output=True, text=True, timeout=20).stdout
        assert out.startswith("HTTP/2") and "strict-transport-security" not in out.lower(), out
    finally:
        controls.stop(svc)


def test_hsts_on_tls_answers_of_the_edge(edges, tls_files):
    cert, key = tls_files
    https_port = free_ports(1)[0]
    edge = edges.start(FM_EDGE_HTTPS_PORT=https_port, FM_TLS_CERT=cert, FM_TLS_KEY=key, FM_HSTS_MAX_AGE_S=600)
    try:
        for path in ("/healthz", "/f/incoming/nothing", "/p/nothing"):
            _, headers = tls_get(https_port, path)
            assert headers.get("strict-transport-security") == "max-age=600", (path, headers)
            plain = requests.get(edge.url + path, timeout=10)
            assert "strict-transport-security" not in {k.lower() for k in plain.headers}, (path, plain.headers)
    finally:
        edges.stop(edge)
