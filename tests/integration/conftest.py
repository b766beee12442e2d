"""Shared fixtures of the integration suite: one private stack (PostgreSQL, Redis, Ceph RGW, clamd) per pytest
session on free loopback ports, and the project's services started from FM_BUILD_DIR (build/ or build-asan/)
against it. Every process is stopped by PID at the end, even when tests fail; a service that exits non-zero
or whose log holds a sanitizer report fails the run.

Run with Debian's interpreter: /usr/bin/python3 -m pytest tests/integration
"""
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stackfixture import free_ports, start_stack  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BUILD_DIR = Path(os.environ.get("FM_BUILD_DIR", REPO / "build"))
SANITIZER_REPORT = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:")


def sanitizer_env():
    return {
        "ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1:abort_on_error=0",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
        "LSAN_OPTIONS": f"suppressions={REPO / 'tests' / 'lsan.supp'}:print_suppressions=0",
    }


class Service:
    """One running fm-control / fm-edge / fm-worker process, logging to a file."""

    def __init__(self, name, args, env, port, log_dir):
        self.name, self.args, self.env, self.port = name, args, env, port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = Path(log_dir) / f"{name}-{port}.log"
        self.proc = None

    def start(self, timeout=20):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, env=self.env, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer /healthz in {timeout} s:\n{self.log_text()}")

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout=30):
        """SIGTERM (graceful stop), then SIGKILL after `timeout`; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def check_clean_exit(self):
        rc = self.stop()
        text = self.log_text()
        assert not SANITIZER_REPORT.search(text), f"{self.name}: sanitizer report in {self.log_path}:\n{text[-6000:]}"
        assert rc == 0, f"{self.name} exited with {rc}; log {self.log_path}:\n{text[-4000:]}"


class ControlFactory:
    """Starts fm-control instances against the session's stack (tests may start extra ones with other settings)."""

    def __init__(self, stack, log_dir):
        self.stack, self.log_dir, self.started = stack, log_dir, []
        self.jwt_secret = secrets.token_hex(32)

    def env(self, **overrides):
        e = {k: v for k, v in os.environ.items() if not k.startswith("FM_")}
        e.update(self.stack.env)
        e.update(sanitizer_env())
        e.update({
            "FM_JWT_SECRET": self.jwt_secret,
            "FM_THREADS": "2",
            "FM_HTTPS_PORT": "0",
            "FM_LOG_LEVEL": "info",
            # The suite logs in hundreds of times from 127.0.0.1; the rate-limit tests start their own instance.
            "FM_LOGIN_LIMIT_IP": "1000000",
            "FM_LOGIN_LIMIT_NET": "10000000",
            "FM_LOGIN_LIMIT_ACCOUNT": "100000",
            "FM_LOGIN_LIMIT_ACCOUNT_IP": "100000",
            "FM_REGISTER_LIMIT_IP": "1000000",
            # Cheap argon2id in tests: the cost parameters are measured in tests/bench, not here.
            "FM_ARGON2_M_KIB": "4096",
            "FM_ARGON2_T": "1",
            "FM_PG_TIMEOUT_MS": "3000",
            "FM_REDIS_TIMEOUT_MS": "1000",
            # Every reconciler lists the whole bucket and settles what it finds in the one PostgreSQL database, but
            # writes to its own instance's Redis database (job stream, cached rows): only instances that ask for a
            # reconciler (a module that tests it sets its own interval) run one within a session.
            "FM_RECONCILE_INTERVAL_S": "3600",
        })
        e.update({k: str(v) for k, v in overrides.items()})
        return e

    def migrate(self):
        env = self.env()
        p = subprocess.run([str(BUILD_DIR / "fm-control"), "migrate"], env=env, capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, f"migrate failed:\n{p.stdout}\n{p.stderr}"
        assert not SANITIZER_REPORT.search(p.stderr), p.stderr

    def start(self, wait_ready=True, **overrides):
        """Starts an instance; with wait_ready, returns once /readyz says 200 (its PostgreSQL and Redis pools are
        connected: until then queries fail fast with 503, by design of common/pg.c)."""
        port = overrides.pop("FM_HTTP_PORT", None) or free_ports(1)[0]
        env = self.env(FM_HTTP_PORT=port, **overrides)
        svc = Service("fm-control", [str(BUILD_DIR / "fm-control")], env, int(port), self.log_dir).start()
        self.started.append(svc)
        if wait_ready:
            wait_ready_200(svc)
        return svc

    def stop(self, svc):
        """Stops an instance before the session ends (SIGTERM, exit status and sanitizer log checked). Every
        instance shares the session's PostgreSQL database, and one on a Redis database of its own runs its own
        reconciler: left running, it would take the next suites' pending uploads onto its own job stream."""
        self.started.remove(svc)
        svc.check_clean_exit()

    def stop_all(self):
        failures = []
        for svc in self.started:
            try:
                svc.check_clean_exit()
            except AssertionError as e:
                failures.append(str(e))
        self.started.clear()
        return failures


class WorkerFactory:
    """Starts fm-worker instances (the job consumer, health on a free port) against the session's stack, with the
    control planes' environment plus `overrides` (e.g. FM_REDIS_URL of a suite's own Redis database). Every worker
    started is stopped at the session's end -- SIGTERM, exit status 0 and a clean sanitizer log required -- unless
    a test killed it on purpose with kill()."""

    def __init__(self, controls, log_dir):
        self.controls, self.log_dir, self.started = controls, log_dir, []

    def start(self, **overrides):
        port = overrides.pop("FM_WORKER_HEALTH_PORT", None) or free_ports(1)[0]
        env = self.controls.env(FM_WORKER_HEALTH_PORT=port, **overrides)
        svc = Service("fm-worker", [str(BUILD_DIR / "fm-worker")], env, int(port), self.log_dir)
        self.started.append(svc)
        return svc.start()

    def stop(self, svc):
        """Graceful stop of one worker; asserts exit status 0 and no sanitizer report."""
        if svc in self.started:
            self.started.remove(svc)
        svc.check_clean_exit()

    def kill(self, svc):
        """SIGKILL (a crash); the worker is then not checked at the end."""
        if svc in self.started:
            self.started.remove(svc)
        if svc.proc.poll() is None:
            svc.proc.kill()
        svc.proc.wait()
        svc.log.close()

    def stop_all(self):
        failures = []
        for svc in list(self.started):
            try:
                self.stop(svc)
            except AssertionError as e:
                failures.append(str(e))
        return failures


POOL_GAUGE = re.compile(r'^fm_(pg|redis)_pool_connected\{thread="(\d+)"\} (\S+)$', re.M)


def wait_ready_200(svc, timeout=20):
    """Waits for /readyz 200 and then for every event-loop thread's pools to be connected (per-thread gauges in
    /metrics, refreshed each second): /readyz runs on one thread only, and a thread whose pool is still
    connecting answers 503 (see the report on the startup race)."""
    threads = int(svc.env.get("FM_THREADS") or 0) or os.cpu_count() or 1
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = requests.get(svc.url + "/readyz", timeout=5)
            if last.status_code == 200:
                metrics = requests.get(svc.url + "/metrics", timeout=5).text
                up = {(kind, thread) for kind, thread, value in POOL_GAUGE.findall(metrics) if float(value) > 0}
                if all((kind, str(t)) in up for kind in ("pg", "redis") for t in range(threads)):
                    return
        except requests.RequestException as e:
            last = e
        time.sleep(0.05)
    raise RuntimeError(f"{svc.name} on port {svc.port} not ready in {timeout} s: "
                       f"{getattr(last, 'text', last)}\n{svc.log_text()[-3000:]}")


@pytest.fixture(scope="session")
def stack():
    st = start_stack()
    yield st
    st.stop()


@pytest.fixture(scope="session")
def log_dir():
    d = Path(os.environ.get("FM_TEST_LOG_DIR") or tempfile.mkdtemp(prefix="fm-test-logs-"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def controls(stack, log_dir):
    factory = ControlFactory(stack, log_dir)
    factory.migrate()
    yield factory
    failures = factory.stop_all()
    assert not failures, "\n\n".join(failures)


@pytest.fixture(scope="session")
def workers(controls, log_dir):
    """Factory of fm-worker instances; all are stopped (and their exit checked) at the end of the session."""
    factory = WorkerFactory(controls, log_dir)
    yield factory
    failures = factory.stop_all()
    assert not failures, "\n\n".join(failures)


@pytest.fixture(scope="session")
def control(controls):
    """The suite's main fm-control (HTTP/1.1 + h2c on a free port)."""
    return controls.start()


@pytest.fixture
def api(control):
    """A requests session bound to the main control plane: api.get('/v1/me')."""
    return ApiClient(control.url)


class ApiClient(requests.Session):
    def __init__(self, base):
        super().__init__()
        self.base = base

    def request(self, method, url, *args, **kwargs):
        kwargs.setdefault("timeout", 10)
        return super().request(method, self.base + url, *args, **kwargs)


def unique_email(prefix="user"):
    return f"{prefix}-{secrets.token_hex(6)}@example.test"


class EdgeFactory:
    """Starts fm-edge instances against the session's stack (S3 origin = the stack's RGW), each with its own cache
    folder unless one is passed (restart tests reuse it), trusting a CloudFront key pair made for the session
    (RSA-2048, `cryptography`): `key_pair_id`, `private_key` (for botocore's CloudFrontSigner) and the PEM files.
    Every edge started is stopped at the end -- SIGTERM, exit status 0 and a clean sanitizer log required."""

    def __init__(self, stack, log_dir):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        self.stack, self.log_dir, self.started = stack, log_dir, []
        self.dir = Path(tempfile.mkdtemp(prefix="fm-edge-test-"))
        self.key_pair_id = "KFMEDGETEST1"
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public_pem = self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.public_key_path = self.dir / "cf-public.pem"
        self.public_key_path.write_bytes(public_pem)
        self.purge_secret = secrets.token_hex(24)
        self.jwt_secret = secrets.token_hex(32)

    def env(self, **overrides):
        e = {k: v for k, v in os.environ.items() if not k.startswith("FM_")}
        e.update(self.stack.env)
        e.update(sanitizer_env())
        e.update({
            "FM_JWT_SECRET": self.jwt_secret,
            "FM_THREADS": "2",
            "FM_EDGE_HTTPS_PORT": "0",
            "FM_LOG_LEVEL": "info",
            "FM_EDGE_CF_PUBLIC_KEYS": f"{self.key_pair_id}={self.public_key_path}",
            "FM_EDGE_PURGE_SECRET": self.purge_secret,
            "FM_EDGE_CACHE_MAX_BYTES": str(2 << 30),
        })
        e.update({k: str(v) for k, v in overrides.items()})
        return e

    def start(self, cache_dir=None, **overrides):
        port = overrides.pop("FM_EDGE_HTTP_PORT", None) or free_ports(1)[0]
        cache_dir = Path(cache_dir or tempfile.mkdtemp(prefix="cache-", dir=self.dir))
        env = self.env(FM_EDGE_HTTP_PORT=port, FM_EDGE_CACHE_DIR=cache_dir,
                       FM_EDGE_PUBLIC_BASE=overrides.pop("FM_EDGE_PUBLIC_BASE", f"http://127.0.0.1:{port}"),
                       **overrides)
        svc = Service("fm-edge", [str(BUILD_DIR / "fm-edge")], env, int(port), self.log_dir)
        svc.cache_dir = cache_dir
        self.started.append(svc)
        return svc.start()

    def stop(self, svc):
        """Graceful stop of one edge; asserts exit status 0 and no sanitizer report."""
        if svc in self.started:
            self.started.remove(svc)
        svc.check_clean_exit()

    def stop_all(self):
        failures = []
        for svc in list(self.started):
            try:
                self.stop(svc)
            except AssertionError as e:
                failures.append(str(e))
        return failures


@pytest.fixture(scope="session")
def edges(stack, log_dir):
    """Factory of fm-edge instances (see EdgeFactory); all are stopped and their exit checked at the end."""
    factory = EdgeFactory(stack, log_dir)
    yield factory
    failures = factory.stop_all()
    import shutil
    shutil.rmtree(factory.dir, ignore_errors=True)
    assert not failures, "\n\n".join(failures)
