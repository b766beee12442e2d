"""A private local stack (PostgreSQL, Redis, Ceph RGW, clamd) on free loopback ports in a temporary folder,
for integration tests. Drives infra/lib/stack.sh, so tests exercise the same scripts developers use.

    from stackfixture import start_stack, private_stack   # private_stack: a module-scoped pytest fixture

    st = start_stack()               # ~8 s cold (Ceph), returns a Stack
    st.env                           # FM_DATABASE_URL, FM_REDIS_URL, FM_S3_*, FM_CLAMD_ADDR, FM_STACK_DIR (+ ports)
    st.prepare_s3(events_url=..., web_origin=...)   # bucket, CORS, topic + notification (infra/lib/s3_prepare.py)
    st.restart_pg(); st.restart_redis()             # or stop_pg()/start_pg(), stop_redis()/start_redis()
    st.stop_clamd(); st.start_clamd()               # likewise restart_clamd(), and the same for ceph
    st.stop()                        # by PID; idempotent; removes the folder unless FM_STACK_KEEP=1

Run under /usr/bin/python3 (Debian's boto3, requests, pytest).
"""
import os
import random
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STACK_SH = REPO / "infra" / "lib" / "stack.sh"
S3_PREPARE = REPO / "infra" / "lib" / "s3_prepare.py"

PORT_VARS = ("FM_PG_PORT", "FM_REDIS_PORT", "FM_RGW_PORT", "FM_CEPH_MON_PORT", "FM_CLAMD_PORT")
CEPH_RANGE = 12  # msgr ports for the OSD (4 used) with room for ports taken meanwhile
PROCESSES = ("pg", "redis", "ceph-mon", "ceph-osd", "radosgw", "clamd")


def _bindable(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _ephemeral_low():
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(count, span=1):
    """`count` blocks of `span` consecutive free loopback ports, each verified by binding it.

    Picked below the kernel's ephemeral range (not with bind(0), which lands inside it): a listening port in the
    ephemeral range can be taken by an outgoing connection's local port while PostgreSQL or Redis is being
    restarted, and the restart then fails with EADDRINUSE."""
    low, high = 20000, _ephemeral_low() - 1
    chosen, taken = [], set()
    for _ in range(5000):
        base = random.randint(low, high - span)
        block = range(base, base + span)
        if any(p in taken for p in block):
            continue
        if all(_bindable(p) for p in block):
            chosen.append(base)
            taken.update(block)
            if len(chosen) == count:
                return chosen
    # Fallback: let the kernel choose (single ports only).
    socks = []
    try:
        for _ in range(count - len(chosen)):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return chosen + [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _parse_env(text):
    env = {}
    for line in text.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            k, v = words[1].split("=", 1)
            env[k] = v
    return env


class Stack:
    def __init__(self, data_dir, ports, keep=False):
        self.dir = Path(data_dir)
        self.ports = dict(ports)
        self.keep = keep
        self.env = {}
        self.stopped = False

    # --- plumbing
    def _shell_env(self):
        e = dict(os.environ)
        for k in list(e):  # never let a developer's exported stack settings leak into the private stack
            if k.startswith("FM_"):
                del e[k]
        e.update({k: str(v) for k, v in self.ports.items()})
        e["FM_PG_FSYNC"] = "off"  # test data need no durability against power loss
        return e

    def sh(self, *calls, timeout=240, check=True):
        """Run stack.sh functions (each `name` gets the data folder as argument) in one bash."""
        script = f"set -euo pipefail; source {shlex.quote(str(STACK_SH))}; " + "; ".join(
            f"{c} {shlex.quote(str(self.dir))}" for c in calls)
        p = subprocess.run(["bash", "-c", script], env=self._shell_env(), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"stack.sh {' '.join(calls)} failed ({p.returncode}):\n{p.stderr}\n"
                               f"logs: {self.dir / 'logs'}")
        return p

    def load_env(self):
        self.env = _parse_env(self.sh("stack_env").stdout)
        self.env.update({k: str(v) for k, v in self.ports.items()})
        return self.env

    # --- lifecycle
    def start(self):
        self.sh("stack_start")
        self.stopped = False
        return self.load_env()

    def stop(self):
        """Stop every process by its PID (idempotent), then remove the folder unless kept."""
        if not self.dir.exists():
            return
        self.sh("stack_stop", timeout=180)
        self.stopped = True
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def start_pg(self):
        self.sh("stack_start_pg")

    def stop_pg(self):
        self.sh("stack_stop_pg")

    def restart_pg(self):
        self.sh("stack_stop_pg", "stack_start_pg")

    def start_redis(self):
        self.sh("stack_start_redis")

    def stop_redis(self):
        self.sh("stack_stop_redis")

    def restart_redis(self):
        self.sh("stack_stop_redis", "stack_start_redis")

    def start_clamd(self):
        self.sh("stack_start_clamd")

    def stop_clamd(self):
        self.sh("stack_stop_clamd")

    def restart_clamd(self):
        self.sh("stack_stop_clamd", "stack_start_clamd")

    def start_ceph(self):
        self.sh("stack_start_ceph")

    def stop_ceph(self):
        self.sh("stack_stop_ceph")

    def restart_ceph(self):
        self.sh("stack_stop_ceph", "stack_start_ceph")

    # --- S3
    def prepare_s3(self, events_url=None, web_origin=None, persistent=True, topic=None, prefix=None):
        """Bucket + CORS; with events_url also the topic and the bucket notification. Idempotent. The topic is
        persistent by default, as infra/up makes it; a new persistent topic starts delivering within ~30 s, so a
        test that needs events at once from a topic made for it passes persistent=False."""
        e = self._shell_env()
        e.update(self.env)
        for k, v in (("FM_S3_EVENTS_URL", events_url), ("FM_WEB_ORIGIN", web_origin),
                     ("FM_S3_TOPIC", topic), ("FM_S3_EVENTS_PREFIX", prefix)):
            if v is not None:
                e[k] = v
        e["FM_S3_EVENTS_PERSISTENT"] = "true" if persistent else "false"
        p = subprocess.run(["/usr/bin/python3", str(S3_PREPARE)], env=e, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"s3_prepare.py failed:\n{p.stderr}")

    def s3_client(self):
        import boto3
        import botocore.config
        return boto3.client(
            "s3", endpoint_url=self.env["FM_S3_ENDPOINT"], region_name=self.env["FM_S3_REGION"],
            aws_access_key_id=self.env["FM_S3_ACCESS_KEY"], aws_secret_access_key=self.env["FM_S3_SECRET_KEY"],
            config=botocore.config.Config(signature_version="s3v4", s3={"addressing_style": "path"}))

    # --- processes
    def pids(self):
        """Recorded PIDs by process name (pg, redis, ceph-mon, ceph-osd, radosgw, clamd)."""
        out = {}
        for name in PROCESSES:
            f = self.dir / "run" / f"{name}.pid"
            try:
                out[name] = int(f.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        return out


def pid_alive(pid):
    """True when the process exists and is not a zombie (orphans may wait a while for PID 1 to reap them)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def start_stack(data_dir=None, prepare_s3=True, web_origin=None):
    """Start a private stack on free ports; returns a started Stack (call .stop() when done).

    The folder is made under /tmp with mode 0755 (PostgreSQL runs as user postgres and must reach it) and a short
    path (Unix socket paths are limited to 107 bytes)."""
    if data_dir is None:
        data_dir = tempfile.mkdtemp(prefix="fm-stack-", dir="/tmp")
    os.chmod(data_dir, 0o755)
    p = free_ports(5)
    (ceph_min,) = free_ports(1, span=CEPH_RANGE)
    ports = dict(zip(PORT_VARS, p))
    ports["FM_CEPH_PORT_MIN"] = ceph_min
    ports["FM_CEPH_PORT_MAX"] = ceph_min + CEPH_RANGE - 1
    st = Stack(data_dir, ports, keep=os.environ.get("FM_STACK_KEEP") == "1")
    t0 = time.monotonic()
    try:
        st.start()
        if prepare_s3:
            st.prepare_s3(web_origin=web_origin)
    except BaseException:
        st.keep = True  # keep the logs of a failed start
        try:
            st.stop()
        finally:
            raise
    st.start_seconds = time.monotonic() - t0
    return st


@pytest.fixture(scope="module")
def private_stack(request):
    """A private stack for one test module, stopped (by PID) even when tests fail. (conftest.py's `stack` is the
    session's shared one; use this where a module must not disturb it, e.g. it stops or breaks services.)"""
    st = start_stack()
    request.addfinalizer(st.stop)
    return st
