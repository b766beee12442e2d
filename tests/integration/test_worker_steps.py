"""The worker's first steps against the real stack, through tests/tools/fm_scan: step_scan (lambda-workers/scan.c)
talks to the stack's clamd, whose only signature is the project's infra/clamav/fm-test.ndb (EICAR anywhere in a
stream); step_fetch and step_verify (fetch.c, verify.c) read objects that boto3 put into Ceph RGW, and hashlib is
the independent SHA-256.

The EICAR test string is assembled here at run time and never stored whole in the repository, so no scanner
flags the source tree.
"""
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BUILD_DIR, REPO, SANITIZER_REPORT, sanitizer_env

MIB = 1024 * 1024
CHUNK = 64 * 1024  # step_scan's default INSTREAM chunk

# The 68-byte EICAR test file, in pieces.
EICAR = b"".join([b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$", b"EICAR-STANDARD-", b"ANTIVIRUS-", b"TEST-FILE!$H+H*"])


def test_eicar_is_what_the_stack_signature_matches():
    """The string built above is the one infra/clamav/fm-test.ndb describes (else every 'found' test is moot)."""
    assert len(EICAR) == 68
    name, target, offset, hexsig = (REPO / "infra" / "clamav" / "fm-test.ndb").read_text().strip().split(":")
    assert (name, target, offset) == ("FM-Test.EICAR", "0", "*")
    assert bytes.fromhex(hexsig) == EICAR


def run_tool(env, *args, preexec_fn=None, timeout=120):
    """Runs fm_scan; returns its JSON line."""
    full_env = {**env, **sanitizer_env(), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([str(BUILD_DIR / "fm_scan"), *args], env=full_env, capture_output=True, text=True,
                       timeout=timeout, preexec_fn=preexec_fn)
    assert not SANITIZER_REPORT.search(p.stderr), p.stderr
    assert p.returncode == 0, f"fm_scan {' '.join(args)}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return json.loads(p.stdout)


def scan(stack, path, **env):
    out = run_tool({**stack.env, "FM_CLAMD_HOST": "127.0.0.1", **{k: str(v) for k, v in env.items()}}, str(path))
    assert out["step"] == "scan"
    return out


def assert_found(out):
    assert out["rc"] == "QUARANTINE", out
    # clamd names signatures from an unsigned database "<name>.UNOFFICIAL".
    assert out["reason"] in ("virus: FM-Test.EICAR", "virus: FM-Test.EICAR.UNOFFICIAL"), out


# ---- step_scan -----------------------------------------------------------------------------------------------

def test_clean_file_passes(stack, tmp_path):
    path = tmp_path / "clean.bin"
    path.write_bytes(os.urandom(300 * 1024))
    assert scan(stack, path) == {"step": "scan", "rc": "OK", "reason": ""}
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert scan(stack, empty)["rc"] == "OK"


def test_eicar_is_quarantined(stack, tmp_path):
    path = tmp_path / "eicar.com"
    path.write_bytes(EICAR)
    assert_found(scan(stack, path))


@pytest.mark.parametrize("chunk", [0, 1000, 4096])
def test_eicar_inside_a_large_file_across_chunks(stack, tmp_path, chunk):
    """EICAR in the middle of 3 MiB, straddling a chunk boundary: clamd sees one stream, not separate chunks."""
    size = chunk or CHUNK
    at = (3 * MIB // 2) // size * size - 30  # starts 30 bytes before a boundary
    data = bytearray(os.urandom(3 * MIB))
    data[at:at + len(EICAR)] = EICAR
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(data))
    assert_found(scan(stack, path, FM_CLAMD_CHUNK_BYTES=chunk))
    # The same file without it is clean: the finding was the EICAR bytes, not the size or the chunking.
    data[at:at + len(EICAR)] = b"\0" * len(EICAR)
    path.write_bytes(bytes(data))
    assert scan(stack, path, FM_CLAMD_CHUNK_BYTES=chunk)["rc"] == "OK"


def test_clamd_down_means_retry_then_back(stack, tmp_path):
    path = tmp_path / "eicar.txt"
    path.write_bytes(b"prefix " + EICAR)
    stack.stop_clamd()
    try:
        down = scan(stack, path)
        assert down["rc"] == "RETRY", down
        assert down["reason"].startswith("clamd unavailable: connect 127.0.0.1:"), down
        assert "refused" in down["reason"], down
    finally:
        stack.start_clamd()
    assert_found(scan(stack, path))
    clean = tmp_path / "clean.txt"
    clean.write_bytes(b"hello")
    assert scan(stack, clean)["rc"] == "OK"


def test_clamd_hung_means_retry(stack, tmp_path):
    """clamd stopped with SIGSTOP accepts the connection (the kernel does) but never answers: a timeout, a retry."""
    path = tmp_path / "file.bin"
    path.write_bytes(os.urandom(4 * MIB))  # more than the socket buffers take, so the writes time out too
    pid = stack.pids()["clamd"]
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        hung = scan(stack, path, FM_CLAMD_TIMEOUT_MS=700)
        assert time.monotonic() - t0 < 10
    finally:
        os.kill(pid, signal.SIGCONT)
    assert hung["rc"] == "RETRY", hung
    assert hung["reason"].startswith("clamd unavailable:") and "timed out" in hung["reason"], hung
    assert scan(stack, path)["rc"] == "OK"


@pytest.fixture
def small_clamd(stack, tmp_path):
    """A second real clamd, with the stack's signature and StreamMaxLength 1M, on a free port; stopped by PID."""
    from stackfixture import free_ports
    clamd = shutil.which("clamd") or "/usr/sbin/clamd"
    (port,) = free_ports(1)
    d = tmp_path / "clamd"
    (d / "db").mkdir(parents=True)
    (d / "tmp").mkdir()
    shutil.copy(REPO / "infra" / "clamav" / "fm-test.ndb", d / "db")
    (d / "clamd.conf").write_text(
        f"DatabaseDirectory {d / 'db'}\nTemporaryDirectory {d / 'tmp'}\nTCPSocket {port}\nTCPAddr 127.0.0.1\n"
        f"Foreground yes\nLogFile {d / 'clamd.log'}\nStreamMaxLength 1M\n")
    proc = subprocess.Popen([clamd, "-c", str(d / "clamd.conf")], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (d / "clamd.log").read_text(errors="replace")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"zPING\0")
                    if s.recv(16) == b"PONG\0":
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the small clamd did not answer PING"
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_over_stream_max_length_is_quarantined_never_clean(stack, tmp_path, small_clamd):
    """clamd refuses a stream over StreamMaxLength mid-way (and closes): the file is too large to scan, and is
    quarantined rather than let through unscanned."""
    path = tmp_path / "large.bin"
    path.write_bytes(os.urandom(8 * MIB))
    out = scan(stack, path, FM_CLAMD_PORT=small_clamd)
    assert out == {"step": "scan", "rc": "QUARANTINE", "reason": "too large to scan (clamd StreamMaxLength)"}
    small = tmp_path / "small.bin"
    small.write_bytes(os.urandom(200 * 1024))
    assert scan(stack, small, FM_CLAMD_PORT=small_clamd)["rc"] == "OK"


# ---- step_fetch + step_verify ----------------------------------------------------------------------------------

def fetch(stack, key, claimed, declared, tmp_dir, preexec_fn=None, **env):
    out = run_tool({**stack.env, "FM_TMP_DIR": str(tmp_dir), **env}, "--fetch", key, claimed, str(declared),
                   preexec_fn=preexec_fn)
    # The temp copy is private, and gone once the job is cleared (or at once when a step refused it).
    assert out["mode"] in ("", "0600"), out
    assert list(Path(tmp_dir).iterdir()) == [], "fm_scan left a temp file"
    return out


@pytest.fixture
def s3(stack):
    return stack.s3_client()


@pytest.fixture
def big_object(stack, s3):
    key = "incoming/worker-steps/20MiB.bin"
    data = os.urandom(20 * MIB)
    s3.put_object(Bucket=stack.env["FM_S3_BUCKET"], Key=key, Body=data)
    return key, data


def test_fetch_computes_the_sha256(stack, tmp_path, big_object):
    key, data = big_object
    digest = hashlib.sha256(data).hexdigest()
    out = fetch(stack, key, digest, len(data), tmp_path)
    assert out["step"] == "verify" and out["rc"] == "OK", out
    assert (out["sha256"], out["size"], out["reason"]) == (digest, len(data), "")
    assert out["mode"] == "0600" and Path(out["path"]).parent == tmp_path
    assert Path(out["path"]).name.startswith("fm-job-")


def test_wrong_claimed_hash_is_quarantined(stack, tmp_path, big_object):
    key, data = big_object
    digest, claimed = hashlib.sha256(data).hexdigest(), hashlib.sha256(b"something else").hexdigest()
    out = fetch(stack, key, claimed, len(data), tmp_path)
    assert (out["step"], out["rc"], out["sha256"]) == ("verify", "QUARANTINE", digest), out
    assert out["reason"] == f"sha256 mismatch: claimed {claimed}, content {digest}"


def test_size_other_than_declared_is_quarantined(stack, s3, tmp_path):
    key, data = "incoming/worker-steps/sized.bin", os.urandom(MIB)
    s3.put_object(Bucket=stack.env["FM_S3_BUCKET"], Key=key, Body=data)
    digest = hashlib.sha256(data).hexdigest()
    for declared in (len(data) + 1, len(data) - 1, 10):
        out = fetch(stack, key, digest, declared, tmp_path)
        assert (out["step"], out["rc"]) == ("fetch", "QUARANTINE"), out
        assert out["reason"] == f"declared {declared} bytes, object has {len(data)}"
        assert out["path"] == ""


def test_missing_object_fails(stack, tmp_path):
    key = "incoming/worker-steps/never-uploaded"
    out = fetch(stack, key, "0" * 64, 5, tmp_path)
    assert (out["step"], out["rc"], out["path"]) == ("fetch", "FAIL", ""), out
    assert out["reason"] == f"object {key} is gone (S3 NoSuchKey)"


def test_store_unreachable_means_retry(stack, tmp_path, big_object):
    from stackfixture import free_ports
    key, data = big_object
    (closed_port,) = free_ports(1)
    out = fetch(stack, key, hashlib.sha256(data).hexdigest(), len(data), tmp_path,
                FM_S3_ENDPOINT=f"http://127.0.0.1:{closed_port}")
    assert (out["step"], out["rc"]) == ("fetch", "RETRY"), out
    assert out["reason"].startswith(f"S3 GET {key}: ConnectFailed (HTTP 0)"), out


def test_temp_file_write_error_means_retry(stack, tmp_path, big_object):
    """A temp file that cannot grow (here RLIMIT_FSIZE, as a full disk would refuse it): retried, not failed."""
    key, data = big_object

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (MIB, MIB))

    out = fetch(stack, key, hashlib.sha256(data).hexdigest(), len(data), tmp_path, preexec_fn=limit_file_size)
    assert (out["step"], out["rc"], out["path"]) == ("fetch", "RETRY", ""), out
    assert out["reason"] == "temp file: File too large", out
