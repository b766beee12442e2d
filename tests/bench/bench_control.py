#!/usr/bin/python3
"""Benchmark of fm-control (DESIGN.md §8): /healthz vs GET /v1/me and POST /v1/uploads (presign and dedupe hit) over
HTTP/1.1 (wrk), h2c and h2 over TLS (h2load), fm-control RSS under load, and logins/s per core at the argon2id cost
in use.

    /usr/bin/python3 tests/bench/bench_control.py [--duration 10] [--out docs/benchmarks.md-section]

One run starts a private stack (tests/integration/stackfixture.py: PostgreSQL, Redis, Ceph RGW, clamd on free
loopback ports), migrates it, then for each FM_THREADS value starts a fresh fm-control on free ports (log level
warn) and loads it. Every figure is printed beside its reference from the same run: /v1/me beside /healthz of the
same server and tool (and so are both POST /v1/uploads cases, checked against PostgreSQL after each load), h2 beside
HTTP/1.1, the login hash beside a direct libargon2 call. The Markdown report goes to
stdout (and --out); progress goes to stderr. Only loopback traffic; every load run is bounded in time.

The load generator shares the machine's cores with fm-control, PostgreSQL and Redis (no pinning): the CPU each of
them used during every run is measured (/proc) and printed, together with the CPU used by other processes of the
machine, so the split is visible rather than assumed.
"""
import argparse
import ctypes
import datetime
import json
import os
import platform
import re
import resource
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration"))
from helpers_fm import redis_cmd  # noqa: E402
from stackfixture import free_ports, start_stack  # noqa: E402

WRK_LUA = Path(__file__).resolve().parent / "wrk_me.lua"
CLK_TCK = os.sysconf("SC_CLK_TCK")
NPROC = os.cpu_count() or 1
# argon2id defaults of common/config.c (FM_ARGON2_M_KIB / _T / _P).
ARGON2 = {"m_kib": 19456, "t": 2, "p": 1}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- CPU and memory accounting -----------------------------------------------------------------------------------

def proc_ticks(pid):
    """utime + stime of a process (all its threads), in clock ticks; None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])


def tree_ticks(roots):
    """CPU ticks of the given PIDs and their direct children (PostgreSQL backends are children of the postmaster)."""
    roots = {r for r in roots if r}
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) in roots or int(fields[1]) in roots:
            total += int(fields[11]) + int(fields[12])
    return total


def machine_busy_ticks():
    """Busy ticks of all CPUs (everything but idle and iowait), from /proc/stat."""
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(v) - v[3] - (v[4] if len(v) > 4 else 0)


def children_cpu_s():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def mem_status(pid):
    """(VmRSS, VmHWM) in MiB."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) / 1024.0
    except OSError:
        return None, None
    return out.get("VmRSS"), out.get("VmHWM")


class CpuWindow:
    """CPU used between start() and stop() by fm-control, the load generator (children reaped meanwhile),
    PostgreSQL (postmaster + backends), Redis, the rest of the private stack (Ceph, clamd), and every other process
    of the machine. Percentages are of one core; *_s are CPU seconds."""

    def __init__(self, server_pid, stack_pids):
        self.server_pid = server_pid
        self.groups = {"pg": [stack_pids.get("pg")], "redis": [stack_pids.get("redis")],
                       "rest": [v for k, v in stack_pids.items() if k not in ("pg", "redis")]}

    def start(self):
        self.t0 = time.monotonic()
        self.s0 = proc_ticks(self.server_pid) or 0
        self.c0 = children_cpu_s()
        self.g0 = {k: tree_ticks(v) for k, v in self.groups.items()}
        self.m0 = machine_busy_ticks()
        return self

    def stop(self):
        wall = time.monotonic() - self.t0
        out = {"wall_s": wall,
               "server_s": ((proc_ticks(self.server_pid) or self.s0) - self.s0) / CLK_TCK,
               "client_s": children_cpu_s() - self.c0}
        for k, v in self.groups.items():
            # (can go below 0 when a process of the group exited meanwhile, taking its ticks with it)
            out[k + "_s"] = max(0, tree_ticks(v) - self.g0[k]) / CLK_TCK
        busy = (machine_busy_ticks() - self.m0) / CLK_TCK
        out["other_s"] = max(0.0, busy - sum(out[k + "_s"] for k in ("server", "client", "pg", "redis", "rest")))
        for k in ("server", "client", "pg", "redis", "rest", "other"):
            out[k] = 100.0 * out[k + "_s"] / wall if wall > 0 else 0.0
        out["idle"] = max(0.0, 100.0 * NPROC - 100.0 * busy / wall) if wall > 0 else 0.0
        return out


# ---- load generators ---------------------------------------------------------------------------------------------

def run_wrk(url, duration, token, connections=64, threads=2, body=None, random_sha256=False):
    """wrk with wrk_me.lua. body: POST this JSON text; random_sha256: its "@SHA256@" gets fresh random hex digits
    on every request (see wrk_me.lua)."""
    env = dict(os.environ)
    for k in ("FM_BENCH_TOKEN", "FM_BENCH_BODY", "FM_BENCH_RANDOM_SHA256", "FM_BENCH_SEED"):
        env.pop(k, None)
    shown_env = []
    if token:
        env["FM_BENCH_TOKEN"] = token
        shown_env.append("FM_BENCH_TOKEN=<access token>")
    if body:
        env["FM_BENCH_BODY"] = body
        shown_env.append(f"FM_BENCH_BODY={shlex.quote(body)}")
    if random_sha256:
        env["FM_BENCH_RANDOM_SHA256"] = "1"
        env["FM_BENCH_SEED"] = str(secrets.randbelow(1 << 30))
        shown_env.append("FM_BENCH_RANDOM_SHA256=1")
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "5s", "-s", str(WRK_LUA), url]
    p = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=duration + 30)
    m = re.search(r"^FM_BENCH_JSON (\{.*\})$", p.stdout, re.M)
    if p.returncode != 0 or m is None:
        raise RuntimeError(f"wrk failed ({p.returncode}): {p.stdout[-800:]} {p.stderr[-800:]}")
    j = json.loads(m.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", p.stdout)
    errors = {k: j[k] for k in ("connect", "read", "write", "timeout") if j[k]}
    if non2xx or j["status"]:
        errors["non-2xx/3xx"] = int(non2xx.group(1)) if non2xx else j["status"]
    return {
        "cmd": " ".join(shlex.quote(c) for c in cmd) + (f" ({', '.join(shown_env)})" if shown_env else ""),
        "requests": j["requests"], "rps": j["requests"] / (j["duration_us"] / 1e6),
        "p50_ms": j["p50_us"] / 1000, "p99_ms": j["p99_us"] / 1000, "max_ms": j["max_us"] / 1000,
        "errors": errors, "proto": "http/1.1",
    }


def redis_commandstats(stack):
    """{command: (calls, usec)} of the stack's Redis (INFO commandstats)."""
    text = redis_cmd(stack, 0, "INFO", "commandstats")
    text = text.decode() if isinstance(text, bytes) else text
    out = {}
    for m in re.finditer(r"^cmdstat_([\w|]+):calls=(\d+),usec=(\d+)", text, re.M):
        out[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return out


def redis_per_request(before, after, requests_done):
    """[(command, calls per request, µs per request)], the most expensive first."""
    rows = []
    for cmd, (calls, usec) in after.items():
        c0, u0 = before.get(cmd, (0, 0))
        if calls > c0 and requests_done:
            rows.append((cmd, ((calls - c0) / requests_done, (usec - u0) / requests_done)))
    rows.sort(key=lambda x: -x[1][1])
    return [r for r in rows if r[1][1] >= 0.05]


PRESIGN_TARGET = 0.35  # DESIGN.md §8 (revised): POST /v1/uploads ÷ /healthz, HTTP/1.1, same run


def start_perf(folder, name):
    """perf record of the whole machine (every process of the request's path) until stop_perf."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    out = Path(folder) / f"{name}.data"
    proc = subprocess.Popen(["perf", "record", "-a", "-g", "-F", "499", "-o", str(out)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc


def stop_perf(proc):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def percentile(sorted_values, q):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def run_h2load(url, duration, token, workdir, clients=4, streams=100, threads=2, warmup=1, body_file=None):
    """h2load; body_file: POST that file's bytes (the same body on every request) as application/json."""
    logf = Path(workdir) / "h2load.log"
    logf.unlink(missing_ok=True)
    cmd = ["h2load", f"-c{clients}", f"-m{streams}", f"-t{threads}", "-D", str(duration),
           "--warm-up-time", str(warmup), f"--log-file={logf}"]
    if body_file:
        cmd += ["-d", str(body_file), "-H", "content-type: application/json"]
    shown = [c if c != "content-type: application/json" else "'content-type: application/json'" for c in cmd]
    if token:
        cmd += ["-H", f"authorization: Bearer {token}"]
        shown += ["-H", "'authorization: Bearer <access token>'"]
    cmd.append(url)
    shown.append(url)
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=duration + warmup + 30)
    out = p.stdout
    fin = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                    r"(\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    proto = re.search(r"Application protocol: (\S+)", out)
    if p.returncode != 0 or not (fin and req and codes):
        raise RuntimeError(f"h2load failed ({p.returncode}): {out[-1200:]} {p.stderr[-800:]}")
    total, _, done, ok, failed, errored, timeout = (int(x) for x in req.groups())
    c2, c3, c4, c5 = (int(x) for x in codes.groups())
    errors = {k: v for k, v in (("failed", failed), ("errored", errored), ("timeout", timeout), ("4xx", c4),
                                ("5xx", c5)) if v}
    lat, bad_log = [], 0
    try:
        with open(logf) as f:
            for line in f:
                cols = line.split("\t")
                if len(cols) >= 3:
                    if not cols[1].startswith("2"):
                        bad_log += 1
                    lat.append(int(cols[2]))
    finally:
        logf.unlink(missing_ok=True)
    lat.sort()
    return {
        "cmd": " ".join(shown), "requests": done, "rps": float(fin.group(3)),
        "p50_ms": percentile(lat, 50) / 1000, "p99_ms": percentile(lat, 99) / 1000,
        "max_ms": (lat[-1] / 1000) if lat else float("nan"), "logged": len(lat), "log_non2xx": bad_log,
        "errors": errors, "proto": proto.group(1) if proto else "?",
    }


# ---- fm-control ----------------------------------------------------------------------------------------------------

class Control:
    def __init__(self, binary, env, workdir, threads, tls):
        self.threads = threads
        self.http_port, self.https_port = free_ports(2)
        self.env = dict(env)
        self.env.update({"FM_THREADS": str(threads), "FM_HTTP_PORT": str(self.http_port), "FM_LOG_LEVEL": "warn",
                         "FM_HTTPS_PORT": str(self.https_port) if tls else "0"})
        if tls:
            self.env.update({"FM_TLS_CERT": tls[0], "FM_TLS_KEY": tls[1]})
        self.logpath = Path(workdir) / f"fm-control-t{threads}.log"
        self.logfile = open(self.logpath, "w")
        self.proc = subprocess.Popen([str(binary), "serve"], env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self.logfile, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.tls_base = f"https://127.0.0.1:{self.https_port}" if tls else None
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fm-control exited with {self.proc.returncode} at start:\n{self.log_tail()}")
            try:
                if requests.get(self.base + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"fm-control did not answer /healthz in 20 s:\n{tail}")
            time.sleep(0.1)

    def alive(self):
        return self.proc.poll() is None

    def log_tail(self, n=20):
        if not self.logfile.closed:  # after stop() too: the tail is what a failure report shows
            self.logfile.flush()
        try:
            return "\n".join(self.logpath.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log_levels(self):
        """Counts of warn/error/fatal lines in its log (JSON lines with a "level" field), and how many times each
        distinct message of those levels came (digits folded, so one cause is one entry)."""
        self.logfile.flush()
        counts, messages = {}, {}
        for line in self.logpath.read_text(errors="replace").splitlines():
            m = re.search(r'"level"\s*:\s*"(\w+)"', line)
            level = m.group(1) if m else "other"
            counts[level] = counts.get(level, 0) + 1
            if level not in ("info", "debug"):
                msg = re.search(r'"msg"\s*:\s*"((?:[^"\\]|\\.)*)"', line)
                text = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|\d+", "#", msg.group(1) if msg else line)[:160]
                messages[text] = messages.get(text, 0) + 1
        return counts, messages

    def stop(self):
        """SIGTERM by PID, SIGKILL after 15 s; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.logfile.close()
        return self.proc.returncode


def post_until_ok(ctl, path, body, want, notes):
    """POST until `want` comes back; a 503 (dependency not ready) is noted and retried for up to 10 s."""
    t0, first = time.monotonic(), None
    while True:
        r = requests.post(ctl.base + path, json=body, timeout=30)
        if r.status_code == want:
            if first is not None:
                notes.append(f"FM_THREADS={ctl.threads}: `POST {path}` sent just after `/healthz` answered 200 got "
                             f"{first} — it succeeded after {1000 * (time.monotonic() - t0):.0f} ms of retries")
            return r
        if r.status_code != 503 or time.monotonic() - t0 > 10:
            raise RuntimeError(f"POST {path} answered {r.status_code}: {r.text[:300]}")
        if first is None:
            first = f"{r.status_code} {r.text[:200]}"
        time.sleep(0.05)


def make_cert(workdir):
    cert, key = str(Path(workdir) / "cert.pem"), str(Path(workdir) / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1"],
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   timeout=30)
    return cert, key


# ---- POST /v1/uploads ----------------------------------------------------------------------------------------------

# The endpoints of the load rows. "upload" ones are POST /v1/uploads bodies (docs/uploads.md): a 1000-byte text/plain
# file, small enough for a single presigned PUT.
ENDPOINTS = {
    "healthz": {"path": "/healthz", "name": "`/healthz`"},
    "me": {"path": "/v1/me", "name": "`/v1/me`", "auth": True},
    "presign": {"path": "/v1/uploads", "name": "`POST /v1/uploads` presign", "auth": True, "upload": True},
    "dedupe": {"path": "/v1/uploads", "name": "`POST /v1/uploads` dedupe hit", "auth": True, "upload": True},
    # the dedupe source file's id is filled in once it exists; its row is cached in Redis after the first read
    "file": {"path": "/v1/files/{id}", "name": "`GET /v1/files/{id}` (cached row)", "auth": True},
    # the same file: cached permission check + CloudFront signature (FM_CF_KEYS: an RSA-2048 key made per run)
    "download": {"path": "/v1/files/{id}/download", "name": "`GET /v1/files/{id}/download` (cached row, signed URL)",
                 "auth": True},
}
UPLOAD_SIZE = 1000
UPLOAD_TYPE = "text/plain"


def upload_body(name, sha256):
    # on_conflict=rename: the write-behind path, whose figure this is (the default, fail, writes each record through
    # to PostgreSQL before the answer: docs/uploads.md "Names and on_conflict"); FM_BENCH_CONFLICT=fail measures that
    return json.dumps({"name": name, "size": UPLOAD_SIZE, "content_type": UPLOAD_TYPE, "sha256": sha256,
                       "on_conflict": os.environ.get("FM_BENCH_CONFLICT", "rename")}, separators=(",", ":"))


class Db:
    """psql (/usr/bin/psql, as the stack's superuser) on the private stack's PostgreSQL."""

    def __init__(self, stack_env):
        self.port = stack_env["FM_PG_PORT"]
        m = re.search(r"dbname=(\S+)", stack_env.get("FM_DATABASE_URL", ""))
        self.dbname = m.group(1) if m else "files_manager"

    def run(self, sql, **variables):
        cmd = ["/usr/bin/psql", "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port),
               "-U", "postgres", "-d", self.dbname, "-f", "-"]
        for k, v in variables.items():
            cmd += ["-v", f"{k}={v}"]
        p = subprocess.run(cmd, input=sql, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60,
                           env=dict(os.environ, PGCONNECT_TIMEOUT="5"))
        if p.returncode != 0:
            raise RuntimeError(f"psql failed ({p.returncode}): {p.stderr.strip()[:500]}")
        return [line for line in p.stdout.splitlines() if line.strip()]


def make_dedupe_source(db, email, sha256):
    """A verified blob of `sha256` and one READY file of the benchmark user on it, made directly in SQL (what a
    worker would have left after verifying an upload), so that POST /v1/uploads with the same sha256 and size is
    a dedupe hit (control-plane/uploads.c). Must run before the user's first POST /v1/uploads: that request builds
    the user's Redis dedupe index from PostgreSQL. Returns (the user's id, the file's id)."""
    out = db.run(
        "BEGIN;\n"
        "INSERT INTO blobs (sha256, size, storage_key, content_type, ref_count)\n"
        "  VALUES (decode(:'sha', 'hex'), :size, 'blobs/' || :'sha', :'ctype', 1);\n"
        "INSERT INTO files (owner_id, name, size, content_type, claimed_sha256, blob_sha256, status)\n"
        "  SELECT id, 'bench-dedupe-source.txt', :size, :'ctype', decode(:'sha', 'hex'), decode(:'sha', 'hex'),\n"
        "         'READY'\n"
        "  FROM users WHERE lower(email) = lower(:'email') RETURNING owner_id, id;\n"
        "COMMIT;\n", sha=sha256, size=UPLOAD_SIZE, ctype=UPLOAD_TYPE, email=email)
    if len(out) != 1 or not re.fullmatch(r"[0-9a-f-]{36}\|[0-9a-f-]{36}", out[0]):
        raise RuntimeError(f"dedupe source: unexpected psql output {out!r}")
    user_id, file_id = out[0].split("|")
    return user_id, file_id


# The names the loads' bodies use: wrk gives each request its own (wrk_me.lua's @NAME@); h2load repeats one body, so
# its files are numbered "bench-presign-h2-x (1).txt", … when their records reach PostgreSQL (on_conflict=rename).
LOAD_NAMES = ("bench-presign-@NAME@.txt", "bench-presign-h2-x.txt", "bench-dedupe-@NAME@.txt")
LOAD_NAME_PATTERNS = ("bench-presign-%", "bench-presign-h2-%", "bench-dedupe-%")


def upload_counts(db, user_id, sha256):
    """The benchmark user's files made by the loads (by name: the hand-checked first ones are left out, as the
    reconciler may move the one whose URL was PUT to UPLOADED at any time) by status, their uploads, and the files
    pointing at the dedupe blob (dedupe reads the blob row and never updates it, so ref_count is not the measure)."""
    out = db.run(
        "SELECT count(*) FILTER (WHERE f.status = 'READY'), count(*) FILTER (WHERE f.status = 'PENDING_UPLOAD'),\n"
        "       count(*) FILTER (WHERE f.status NOT IN ('READY', 'PENDING_UPLOAD')), count(u.id),\n"
        "       (SELECT count(*) FROM files WHERE blob_sha256 = decode(:'sha', 'hex'))\n"
        "FROM files f LEFT JOIN uploads u ON u.file_id = f.id\n"
        "WHERE f.owner_id = :'uid' AND (f.name LIKE :'n1' OR f.name LIKE :'n2' OR f.name LIKE :'n3');\n",
        uid=user_id, sha=sha256, n1=LOAD_NAME_PATTERNS[0], n2=LOAD_NAME_PATTERNS[1], n3=LOAD_NAME_PATTERNS[2])
    ready, pending, other, uploads, ref = (int(x) for x in out[0].split("|"))
    return {"ready": ready, "pending": pending, "other": other, "uploads": uploads, "ref_count": ref}


def check_rows_written(kind, before, after, answered):
    """What a load of one kind wrote to PostgreSQL, against the answers it got. Every answered request must have
    written its rows (more rows than answers is normal: requests still in flight when the tool stopped, and
    h2load's warm-up second, are written but not counted). Returns (delta, problems)."""
    d = {k: after[k] - before[k] for k in before}
    problems = []
    if kind == "presign":
        if d["ready"] or d["other"]:
            problems.append(f"{d['ready']} READY / {d['other']} other files appeared (want only PENDING_UPLOAD)")
        if d["pending"] < answered:
            problems.append(f"only {d['pending']} PENDING_UPLOAD files for {answered} answered requests")
        if d["uploads"] != d["pending"]:
            problems.append(f"{d['uploads']} uploads rows for {d['pending']} new files")
    else:
        if d["pending"] or d["other"] or d["uploads"]:
            problems.append(f"{d['pending']} PENDING_UPLOAD / {d['other']} other files and {d['uploads']} uploads "
                            f"appeared: some requests missed the dedupe and took the presign path")
        if d["ready"] < answered:
            problems.append(f"only {d['ready']} READY files for {answered} answered requests")
        if d["ref_count"] != d["ready"]:
            problems.append(f"{d['ref_count']} more files point at the blob for {d['ready']} new READY files")
    return d, problems


def records_pending(stack_env):
    """How many written-behind records wait in Redis (control-plane/records.c's backlog: fm:rec:pending, and
    fm:rec:flushing for the batches on their way), or None."""
    p = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(stack_env["FM_REDIS_PORT"]), "EVAL",
                        "return redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2])", "2", "fm:rec:pending",
                        "fm:rec:flushing"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=10)
    return int(p.stdout.strip()) if p.returncode == 0 and p.stdout.strip().isdigit() else None


def wait_rows_written(db, stack_env, user_id, sha256, kind, before, answered, limit_s=300):
    """Polls until Redis holds no written-behind record any more — every request answered so far, h2load's warm-up
    ones included, is then in PostgreSQL or lost (check_rows_written says which) — or limit_s passed. Waiting only
    for `answered` rows would let the warm-up's rows land in the next row's counts. Returns (seconds waited until
    the answered requests' rows were in, the counts once Redis was empty)."""
    t0 = time.monotonic()
    want = "pending" if kind == "presign" else "ready"
    answered_at = None
    while True:
        now = upload_counts(db, user_id, sha256)
        if answered_at is None and now[want] - before[want] >= answered:
            answered_at = time.monotonic() - t0
        if records_pending(stack_env) == 0:  # the flusher is done: read once more (its last batch may just
            now = upload_counts(db, user_id, sha256)  # have committed)
            return (answered_at if answered_at is not None else time.monotonic() - t0), now
        if time.monotonic() - t0 > limit_s:
            return time.monotonic() - t0, now
        time.sleep(0.2)


def check_first_upload(ctl, token, kind, body):
    """The first answer of each kind, checked field by field before any load: presign → 201 with a presigned PUT
    URL (then PUT to it: RGW must accept the signature), dedupe → 200 deduplicated:true READY.
    Returns (ok, one-line description)."""
    auth = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    t = time.perf_counter()
    r = requests.post(ctl.base + "/v1/uploads", data=body, headers=auth, timeout=30)
    ms = (time.perf_counter() - t) * 1000
    try:
        j = r.json()
    except ValueError:
        return False, f"{r.status_code}, not JSON: {r.text[:200]!r}"
    keys = ", ".join(sorted(j))
    if kind == "dedupe":
        ok = (r.status_code == 200 and j.get("deduplicated") is True and j.get("status") == "READY"
              and re.fullmatch(r"[0-9a-f-]{36}", str(j.get("file_id"))) is not None)
        return ok, (f"{r.status_code} in {ms:.1f} ms, keys {{{keys}}}, deduplicated "
                    f"{json.dumps(j.get('deduplicated'))}, status {j.get('status')}"
                    + ("" if ok else f" — **unexpected**: {r.text[:300]}"))
    url = str(j.get("url", ""))
    ok = (r.status_code == 201 and j.get("deduplicated") is False and j.get("method") == "PUT"
          and url.startswith("http") and "X-Amz-Signature=" in url
          and (j.get("headers") or {}).get("Content-Type") == UPLOAD_TYPE
          and all(re.fullmatch(r"[0-9a-f-]{36}", str(j.get(k))) for k in ("upload_id", "file_id")))
    params = ",".join(sorted(k for k, _, _ in (q.partition("=") for q in url.partition("?")[2].split("&")) if k))
    desc = (f"{r.status_code} in {ms:.1f} ms, keys {{{keys}}}, method {j.get('method')}, url "
            f"`{url.partition('?')[0]}?{{{params}}}`")
    if not ok:
        return False, desc + f" — **unexpected**: {r.text[:300]}"
    put = requests.put(url, data=b"x" * UPLOAD_SIZE, headers=j["headers"], timeout=30)
    desc += f"; PUT of {UPLOAD_SIZE} bytes to that URL → {put.status_code}"
    if put.status_code != 200:
        return False, desc + f" — **the object store refused the URL**: {put.text[:200]}"
    return True, desc


# ---- logins ------------------------------------------------------------------------------------------------------

def argon2_hash_ms(runs):
    """libargon2's argon2id_hash_raw at ARGON2 (the library fm-control links), called here: [(wall ms, CPU ms)]."""
    lib = ctypes.CDLL("libargon2.so.1")
    f = lib.argon2id_hash_raw
    f.argtypes = [ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t,
                  ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t]
    f.restype = ctypes.c_int
    pwd, salt, out = b"correct horse battery staple", os.urandom(16), ctypes.create_string_buffer(32)
    times = []
    for _ in range(runs):
        t, c = time.perf_counter(), time.thread_time()
        rc = f(ARGON2["t"], ARGON2["m_kib"], ARGON2["p"], pwd, len(pwd), salt, len(salt), out, 32)
        times.append(((time.perf_counter() - t) * 1000, (time.thread_time() - c) * 1000))
        if rc != 0:
            raise RuntimeError(f"argon2id_hash_raw returned {rc}")
    return times


def login_once(session, base, email, password):
    t = time.perf_counter()
    r = session.post(base + "/v1/auth/login", json={"email": email, "password": password}, timeout=30)
    return (time.perf_counter() - t) * 1000, r.status_code


def bench_logins(ctl, email, password, stack_pids, sequential, concurrent):
    res = {}
    # Sequential: one client, one login at a time (at most one hash running).
    s = requests.Session()
    login_once(s, ctl.base, email, password)  # warm the connection and the code path
    win = CpuWindow(ctl.pid, stack_pids).start()
    lat, codes = [], {}
    for _ in range(sequential):
        ms, code = login_once(s, ctl.base, email, password)
        lat.append(ms)
        codes[code] = codes.get(code, 0) + 1
    cpu = win.stop()
    res["sequential"] = {"n": sequential, "workers": 1, "wall_s": cpu["wall_s"], "lat": sorted(lat),
                         "codes": codes, "cpu": cpu}
    # Concurrent: `cores` clients at once, each with its own keep-alive connection.
    sessions = [requests.Session() for _ in range(NPROC)]
    for x in sessions:
        login_once(x, ctl.base, email, password)
    win = CpuWindow(ctl.pid, stack_pids).start()
    with ThreadPoolExecutor(max_workers=NPROC) as pool:
        results = list(pool.map(lambda i: login_once(sessions[i % NPROC], ctl.base, email, password),
                                range(concurrent)))
    cpu = win.stop()
    codes = {}
    for _, code in results:
        codes[code] = codes.get(code, 0) + 1
    res["concurrent"] = {"n": concurrent, "workers": NPROC, "wall_s": cpu["wall_s"],
                         "lat": sorted(ms for ms, _ in results), "codes": codes, "cpu": cpu}
    return res


# ---- report ------------------------------------------------------------------------------------------------------

def fmt(v, digits=1):
    return "—" if v is None or v != v else f"{v:,.{digits}f}"


def cpu_text(c):
    return " / ".join(f"{c[k]:.0f}" for k in ("server", "client", "pg", "redis", "rest", "other"))


def per_req_text(r):
    c, n = r["cpu"], max(1, r["requests"])
    return " / ".join(f"{1e6 * c[k + '_s'] / n:.0f}" for k in ("server", "pg", "redis"))


def err_text(errors):
    return "0" if not errors else "**" + ", ".join(f"{v} {k}" for k, v in errors.items()) + "**"


def machine_info():
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    return model, mem


def tool_version(cmd):
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=10)
        return p.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


def build_info(binary):
    cache = Path(binary).parent / "CMakeCache.txt"
    btype = "?"
    if cache.exists():
        m = re.search(r"^CMAKE_BUILD_TYPE:\w+=(.*)$", cache.read_text(errors="replace"), re.M)
        btype = m.group(1) if m and m.group(1) else "(none)"
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=10).stdout
        rev += " + uncommitted changes" if dirty.strip() else ""
    except (OSError, subprocess.SubprocessError):
        rev = "?"
    return btype, rev


def render(meta, rows, servers, logins, hash_ms, notes, first_answers=()):
    L = []
    add = L.append
    add("## fm-control: measured figures")
    add("")
    add(f"- date: {meta['date']}; total run time {meta['total_s']:.0f} s")
    add(f"- machine: `nproc` = {NPROC}, {meta['cpu']}, {meta['mem_gib']:.1f} GiB RAM, Linux {platform.release()}; "
        f"load average at start {meta['loadavg']}")
    add(f"- fm-control: {meta['binary']} ({meta['btype']} build, git {meta['rev']}); FM_LOG_LEVEL=warn, "
        f"FM_PG_POOL_SIZE/FM_REDIS_POOL_SIZE/FM_OFFLOAD_THREADS/FM_HASH_THREADS at their defaults; a fresh process per FM_THREADS")
    add(f"- tools: {meta['wrk']}; {meta['h2load']}")
    add(f"- command: `{meta['argv']}`")
    add(f"- sharing: no CPU pinning. wrk (2 threads), h2load (2 threads), fm-control, PostgreSQL and Redis all run on "
        f"the same {NPROC} cores, so every req/s below is what is left to the server after the load generator took "
        f"its share. The CPU column shows who used the cores during each run, in % of one core "
        f"(total {100 * NPROC} %): srv = fm-control, gen = load generator, pg = PostgreSQL (postmaster and "
        f"backends), redis, stk = the rest of the private stack (Ceph mon/osd/radosgw, clamd), oth = any other "
        f"process on the machine (noise); the remainder to {100 * NPROC} % was idle. "
        f"CPU µs per request (CPU seconds ÷ requests answered) depends much less on that noise than req/s does.")
    add("")
    add("### Request throughput and latency")
    add("")
    add("wrk: HTTP/1.1 keep-alive, 64 connections, 2 threads, "
        f"{meta['duration']} s (latency percentiles from wrk's Lua `done()`, tests/bench/wrk_me.lua). "
        f"h2load: `-c4 -m100 -t2`, i.e. 4 connections × 100 concurrent streams, {meta['duration']} s after 1 s of "
        "warm-up (h2c = cleartext prior knowledge; h2 = TLS, ALPN h2); p50/p99 computed from its `--log-file`. "
        "`/v1/me` = bearer JWT verify (HS256) + the session (the thread's tracked copy, common/rcache.c; a Redis GET "
        "on its first use) + PostgreSQL user SELECT. "
        "÷ `/healthz` = req/s of the row ÷ req/s of `/healthz` on the same server, tool and protocol, measured just "
        "before it.")
    if meta.get("upload_threads"):
        add("")
        add(f"`POST /v1/uploads` (FM_THREADS={', '.join(map(str, meta['upload_threads']))} only), body "
            f"`{{\"name\", \"size\": {UPLOAD_SIZE}, \"content_type\": \"{UPLOAD_TYPE}\", \"sha256\"}}`: "
            "JWT verify + the session (tracked copy), then one Redis script (records.c's probe) that asks the "
            "user's dedupe index and stores the record: **presign** = the new `files` (PENDING_UPLOAD) + `uploads` "
            "record, written behind into PostgreSQL in batches (control-plane/records.c, FM_RECORD_FLUSH_MS=50) + a "
            "SigV4 presigned PUT URL → 201; **dedupe hit** = the index names the hash with this size: a READY "
            "`files` record on the blob → 200 `deduplicated: true` (no S3, no signature). "
            "wrk's presign body gets a fresh random sha256 per request (wrk_me.lua); h2load repeats one fixed body, "
            "so its presign rows claim the same sha256 every time (a new file + upload row each, as the API allows; "
            "the hash is not in the dedupe index, so the path is the same). The dedupe source (a verified blob and a "
            "READY file of the user) is made in SQL before the user's first upload. Every upload row is checked "
            "against PostgreSQL once flushed: rows written ≥ requests answered, and of the right kind; the flush "
            "column is how long after the load the last answered request's rows were in PostgreSQL.")
    add("")
    add("| FM_THREADS | tool | protocol | endpoint | req/s | p50 ms | p99 ms | ÷ `/healthz` | errors | "
        "CPU µs per request: srv / pg / redis | CPU % of a core: srv / gen / pg / redis / stk / oth | "
        "RSS after, MiB (HWM) |")
    add("|---|---|---|---|---:|---:|---:|---:|---|---|---|---|")
    for r in rows:
        name = ENDPOINTS[r["ep"]]["name"]
        if "failure" in r:
            add(f"| {r['threads']} | {r['tool']} | {r['label']} | {name} | — | — | — | — | "
                f"**run failed: {r['failure']}** | — | — | — |")
            continue
        ratio = r.get("ratio")
        ratio_s = "—" if ratio is None else f"{100 * ratio:.0f} %"
        if ratio is not None and r.get("ratio_invalid"):
            ratio_s += " (invalid!)"
        err = err_text(r["errors"])
        if r.get("invalid") and not r["errors"]:
            err = "**row failed (see below)**"
        c = r["cpu"]
        add(f"| {r['threads']} | {r['tool']} | {r['proto']} | {name} | {fmt(r['rps'], 0)} | "
            f"{fmt(r['p50_ms'], 2)} | {fmt(r['p99_ms'], 2)} | {ratio_s} | {err} | "
            f"{per_req_text(r)} | {cpu_text(c)} | {fmt(r['rss'])} ({fmt(r['hwm'])}) |")
    add("")
    add("h2 vs HTTP/1.1 (same server, same endpoint, same run):")
    add("")
    add("| FM_THREADS | endpoint | HTTP/1.1 req/s | h2c req/s | h2c / HTTP/1.1 | h2 (TLS) req/s | h2 TLS / HTTP/1.1 | "
        "srv CPU µs/req: HTTP/1.1 / h2c / h2 TLS |")
    add("|---|---|---:|---:|---:|---:|---:|---|")
    by = {(r["threads"], r["label"], r["ep"]): r for r in rows if "failure" not in r}
    for t in meta["threads"]:
        for key in ENDPOINTS:
            h1, h2c, h2 = by.get((t, "h1", key)), by.get((t, "h2c", key)), by.get((t, "h2tls", key))
            if not (h1 or h2c or h2):
                continue
            q = lambda a: f"{100 * a['rps'] / h1['rps']:.0f} %" if a and h1 else "—"  # noqa: E731
            us = lambda a: f"{1e6 * a['cpu']['server_s'] / max(1, a['requests']):.0f}" if a else "—"  # noqa: E731
            add(f"| {t} | {ENDPOINTS[key]['name']} | {fmt(h1 and h1['rps'], 0)} | {fmt(h2c and h2c['rps'], 0)} | "
                f"{q(h2c)} | {fmt(h2 and h2['rps'], 0)} | {q(h2)} | {us(h1)} / {us(h2c)} / {us(h2)} |")
    add("")
    up = [r for r in rows if ENDPOINTS[r["ep"]].get("upload")]
    if up:
        add("#### `POST /v1/uploads` against DESIGN.md §8")
        add("")
        add("§8 (revised): the presign over HTTP/1.1 keep-alive, 64 connections: ≥ 35 % of the same server's "
            "`/healthz` req/s in the same run, p99 ≤ 10 ms; HTTP/2 ≥ the HTTP/1.1 figure (the dedupe hit is held to "
            "the same bar here). The first answer of each kind, checked before any load:")
        add("")
        for f in first_answers:
            add(f"- FM_THREADS={f['threads']}, {f['kind']}: {'ok' if f['ok'] else '**WRONG**'} — {f['desc']}")
        add("")
        add("| FM_THREADS | tool | protocol | case | req/s | ÷ `/healthz` (≥ 35 %) | p99 ms (≤ 10) | "
            "÷ HTTP/1.1 (≥ 100 %) | rows written: files / uploads (answered) | in PostgreSQL after, s | verdict |")
        add("|---|---|---|---|---:|---:|---:|---:|---|---:|---|")
        for r in up:
            name = ENDPOINTS[r["ep"]]["name"].replace("`POST /v1/uploads` ", "")
            if "failure" in r:
                add(f"| {r['threads']} | {r['tool']} | {r['label']} | {name} | — | — | — | — | — | — | "
                    f"**run failed: {r['failure']}** |")
                continue
            ratio = r.get("ratio")
            h1 = by.get((r["threads"], "h1", r["ep"]))
            vs_h1 = r["rps"] / h1["rps"] if h1 and r["label"] != "h1" else None
            checks = []
            if ratio is not None:
                checks.append("≥ 35 % " + ("met" if ratio >= PRESIGN_TARGET else "not met"))
            if r["label"] == "h1":
                checks.append("p99 " + ("met" if r["p99_ms"] <= 10 else "not met"))
            if vs_h1 is not None:
                checks.append("h2 ≥ h1 " + ("met" if vs_h1 >= 1 else "not met"))
            verdict = "; ".join(checks)
            if r.get("invalid"):
                verdict = "**FAILED: " + "; ".join(r["invalid"]) + "**"
            w = r.get("written", {})
            files = w.get("pending", 0) + w.get("ready", 0) + w.get("other", 0)
            add(f"| {r['threads']} | {r['tool']} | {r['proto']} | {name} | {fmt(r['rps'], 0)} | "
                f"{'—' if ratio is None else f'{100 * ratio:.0f} %'} | {fmt(r['p99_ms'], 2)} | "
                f"{'—' if vs_h1 is None else f'{100 * vs_h1:.0f} %'} | "
                f"{files:,} / {w.get('uploads', 0):,} ({r['requests']:,}) | {fmt(r.get('flush_s'))} | {verdict} |")
        add("")
        add("The p99 target is an HTTP/1.1 (64 connections) one; h2load's 400 streams in flight measure queueing, so "
            "only the ratios are compared there. Rows written exceed the requests answered by those still in flight "
            "when the tool stopped (and, for h2load, its 1 s of warm-up).")
        add("")
    add("fm-control memory per instance (VmRSS / VmHWM from /proc/PID/status):")
    add("")
    add("| FM_THREADS | RSS idle after start, MiB | RSS after the first login(s), before load, MiB | "
        "RSS after all loads, MiB | peak RSS (HWM), MiB | exit status on SIGTERM | warn/error log lines |")
    add("|---|---:|---:|---:|---:|---|---|")
    for s in servers:
        levels = ", ".join(f"{k}: {v}" for k, v in sorted(s["levels"].items())) or "none"
        add(f"| {s['threads']} | {fmt(s.get('rss_idle'))} | {fmt(s.get('rss_login'))} | {fmt(s.get('rss_end'))} | "
            f"{fmt(s.get('hwm_end'))} | "
            f"{s['exit']} | {levels} |")
    for s in servers:
        top = sorted(s.get("messages", {}).items(), key=lambda kv: -kv[1])[:5]
        if top:
            add("")
            add(f"FM_THREADS={s['threads']}, the most frequent warn/error lines (digits and ids as #): " +
                "; ".join(f"{n}× `{text}`" for text, n in top))
    add("")
    if logins:
        lg = logins["result"]
        add(f"### Logins (argon2id m={ARGON2['m_kib']} KiB, t={ARGON2['t']}, p={ARGON2['p']}; "
            f"FM_THREADS={logins['threads']}, FM_HASH_THREADS=1)")
        add("")
        wall = statistics.median(h[0] for h in hash_ms) if hash_ms else float("nan")
        cpu = statistics.median(h[1] for h in hash_ms) if hash_ms else float("nan")
        add(f"Reference, same run: libargon2 `argon2id_hash_raw` at the same cost called directly (ctypes), "
            f"{len(hash_ms)} hashes: median {fmt(wall)} ms wall, {fmt(cpu)} ms CPU "
            f"→ {fmt(1000 / cpu)} hashes/s per busy core. "
            f"FM_LOGIN_LIMIT_ACCOUNT=100000, FM_LOGIN_LIMIT_IP=1000000 for this run.")
        add("")
        add("| clients | logins | status codes | logins/s | logins/s/core | p50 ms | p99 ms | "
            "fm-control CPU ms per login | logins/s per busy core | CPU % of a core: srv / gen / pg / redis / stk / oth |")
        add("|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
        for key in ("sequential", "concurrent"):
            x = lg[key]
            rate = x["n"] / x["wall_s"]
            per_core = rate / x["workers"]
            cpu_ms = 1000 * x["cpu"]["server_s"] / x["n"]
            codes = ", ".join(f"{v}× {k}" for k, v in sorted(x["codes"].items()))
            if set(x["codes"]) != {200}:
                codes = f"**{codes}**"
            add(f"| {x['workers']} ({key}) | {x['n']} | {codes} | {rate:.1f} | {per_core:.1f} | "
                f"{percentile(x['lat'], 50):.1f} | {percentile(x['lat'], 99):.1f} | {cpu_ms:.1f} | "
                f"{1000 / cpu_ms:.1f} | {cpu_text(x['cpu'])} |")
        add("")
        add(f"logins/s/core: sequential = logins/s (one hash at a time), concurrent = logins/s ÷ {NPROC} clients "
            f"on {NPROC} cores (both depend on what else ran; with FM_HASH_THREADS=1 the concurrent clients queue "
            f"for the one hashing thread). logins/s per busy core = 1000 ÷ fm-control CPU ms "
            f"per login: the rate one core fully given to fm-control would sustain. "
            f"fm-control RSS after the logins: {fmt(logins['rss'])} MiB (HWM {fmt(logins['hwm'])} MiB).")
        add("")
    stats = [r for r in rows if r.get("redis_stats")]
    if stats:
        add("### Redis commands per request (INFO commandstats over the load, ÷ requests answered)")
        add("")
        add("What each answered request cost Redis, the commands a script runs counted inside it, the flushers' "
            "included: calls per request and µs per request (Redis's own timing of each command).")
        add("")
        add("| tool | protocol | endpoint | command: calls, µs per request |")
        add("|---|---|---|---|")
        for r in stats:
            cells = ", ".join(f"{c} {n:.2f} × {us:.1f} µs" for c, (n, us) in r["redis_stats"])
            add(f"| {r['tool']} | {r['label']} | {ENDPOINTS[r['ep']]['name']} | {cells} |")
        add("")
    if notes:
        add("### Problems seen")
        add("")
        for n in notes:
            add(f"- {n}")
        add("")
    add("Commands (the token is passed by environment / header, never printed):")
    add("")
    add("```")
    seen = set()
    for r in rows:
        if "cmd" in r and (r["tool"], r["ep"], r["label"]) not in seen:
            seen.add((r["tool"], r["ep"], r["label"]))
            add(r["cmd"])
    add("```")
    return "\n".join(L) + "\n"


# ---- main --------------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per load run (default 10)")
    ap.add_argument("--threads", default="1,2", help="FM_THREADS values, comma-separated (default 1,2)")
    ap.add_argument("--no-tls", action="store_true", help="skip the h2-over-TLS runs")
    ap.add_argument("--logins", type=int, default=30, help="sequential logins (concurrent: twice as many)")
    ap.add_argument("--binary", default=str(REPO / "build" / "fm-control"), help="fm-control to test")
    ap.add_argument("--upload-threads", default="2",
                    help="FM_THREADS values (of --threads) that also load POST /v1/uploads; '' for none (default 2)")
    ap.add_argument("--out", help="also write the Markdown report to this file")
    ap.add_argument("--endpoints", default="",
                    help="load only these endpoints (comma-separated of healthz, me, presign, dedupe, file, "
                         "download; /healthz is always loaded first, as the reference); default all")
    ap.add_argument("--h1-only", action="store_true", help="only the wrk HTTP/1.1 runs (no h2load)")
    ap.add_argument("--perf", metavar="DIR",
                    help="record each load with `perf record -a -g` (whole machine: fm-control, PostgreSQL, Redis, "
                         "the load tool) into DIR/<protocol>-<endpoint>.data, for `perf report --sort comm,dso,sym`")
    args = ap.parse_args()
    if not 1 <= args.duration <= 120:
        ap.error("--duration must be 1..120 s")
    thread_values = [int(x) for x in args.threads.split(",") if x.strip()]
    only = {x.strip() for x in args.endpoints.split(",") if x.strip()}
    if only - set(ENDPOINTS):
        ap.error(f"--endpoints: unknown {sorted(only - set(ENDPOINTS))}")
    if args.perf and shutil.which("perf") is None:
        ap.error("--perf: perf is not installed")
    upload_threads = [int(x) for x in args.upload_threads.split(",") if x.strip() and int(x) in thread_values]
    binary = Path(args.binary)
    for tool in ("wrk", "h2load", "openssl"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is not installed")
    if not binary.is_file():
        sys.exit(f"bench: {binary} not found: build it first (cmake --build build)")

    t_start = time.monotonic()
    model, mem_gib = machine_info()
    btype, rev = build_info(binary)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model, "mem_gib": mem_gib, "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "binary": os.path.relpath(binary, REPO) if binary.is_relative_to(REPO) else str(binary),
        "btype": btype, "rev": rev, "wrk": tool_version(["wrk", "-v"]).split(" Copyright")[0],
        "h2load": tool_version(["h2load", "--version"]), "duration": args.duration, "threads": thread_values,
        "argv": "/usr/bin/python3 " + " ".join(shlex.quote(a) for a in
                                                [os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
    }
    rows, servers, notes, logins, hash_ms, failed_instances = [], [], [], None, [], []
    first_answers = []
    workdir = tempfile.mkdtemp(prefix="fm-bench-")
    st = None
    try:
        log("starting a private stack (PostgreSQL, Redis, Ceph RGW, clamd)")
        st = start_stack()
        log(f"stack up in {st.start_seconds:.1f} s")
        stack_pids = st.pids()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FM_")}
        env.update(st.env)
        env.update({
            "FM_JWT_SECRET": secrets.token_urlsafe(48), "FM_ACCESS_TTL_S": "3600",
            "FM_LOGIN_LIMIT_ACCOUNT": "100000", "FM_LOGIN_LIMIT_IP": "1000000", "FM_LOGIN_LIMIT_NET": "1000000",
            "FM_REGISTER_LIMIT_IP": "1000",
            "FM_GRACEFUL_TIMEOUT_MS": "2000", "FM_SCHEMA_DIR": str(REPO / "schema"),
            "FM_ARGON2_M_KIB": str(ARGON2["m_kib"]), "FM_ARGON2_T": str(ARGON2["t"]), "FM_ARGON2_P": str(ARGON2["p"]),
        })
        cf_key = Path(workdir) / "cf-private.pem"  # signs GET /v1/files/{id}/download's URLs
        subprocess.run(["openssl", "genrsa", "-out", str(cf_key), "2048"], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        env["FM_CF_KEYS"] = f"KFMBENCH={cf_key}"
        p = subprocess.run([str(binary), "migrate"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"fm-control migrate failed ({p.returncode}):\n{p.stdout[-2000:]}")
        tls = None if args.no_tls else make_cert(workdir)
        email, password = f"bench-{secrets.token_hex(4)}@example.com", secrets.token_urlsafe(18)
        registered = False
        # POST /v1/uploads bodies: wrk's presign body gets a fresh random sha256 per request (wrk_me.lua); h2load
        # can only repeat one body, so its presign rows claim one fixed hash (each request still makes a new file
        # and upload row: the API allows the same claimed hash twice). The dedupe body names the blob made by SQL.
        db, user_id, dedupe_sha = Db(st.env), None, secrets.token_hex(32)
        dedupe_body = upload_body(LOAD_NAMES[2], dedupe_sha)
        wrk_bodies = {"presign": upload_body(LOAD_NAMES[0], "@SHA256@"), "dedupe": dedupe_body}
        h2_body_files = {}
        for key, body in (("presign", upload_body(LOAD_NAMES[1], secrets.token_hex(32))),
                          ("dedupe", dedupe_body)):
            h2_body_files[key] = Path(workdir) / f"{key}.json"
            h2_body_files[key].write_text(body)

        for threads in thread_values:
            log(f"FM_THREADS={threads}: starting fm-control")
            try:
                ctl = Control(binary, env, workdir, threads, tls)
            except RuntimeError as e:
                notes.append(f"FM_THREADS={threads}: fm-control did not start: {e}")
                failed_instances.append(threads)
                continue
            server = {"threads": threads, "exit": "?", "levels": {}}
            servers.append(server)
            try:
                server["rss_idle"], _ = mem_status(ctl.pid)
                # The first requests right after /healthz answers: a 503 here means fm-control took traffic before
                # its PostgreSQL pool was connected. Reported, then retried for up to 10 s.
                if not registered:
                    r = post_until_ok(ctl, "/v1/auth/register", {"email": email, "password": password}, 201, notes)
                    registered = True
                    if upload_threads:
                        # Before the user's first POST /v1/uploads (which builds its Redis dedupe index).
                        user_id, source_file = make_dedupe_source(db, email, dedupe_sha)
                        ENDPOINTS["file"]["path"] = f"/v1/files/{source_file}"
                        ENDPOINTS["download"]["path"] = f"/v1/files/{source_file}/download"
                        log(f"dedupe source: blob {dedupe_sha[:12]}… and a READY file for user {user_id}")
                r = post_until_ok(ctl, "/v1/auth/login", {"email": email, "password": password}, 200, notes)
                token = r.json()["access_token"]
                server["rss_login"], _ = mem_status(ctl.pid)
                r = requests.get(ctl.base + "/v1/me", headers={"authorization": f"Bearer {token}"}, timeout=10)
                if r.status_code != 200:
                    raise RuntimeError(f"/v1/me answered {r.status_code}: {r.text[:300]}")
                endpoints = ["healthz", "me"]
                upload_fail = {}
                if threads in upload_threads:
                    endpoints += ["presign", "dedupe", "file", "download"]
                if only:
                    endpoints = [k for k in endpoints if k == "healthz" or k in only]
                    # The first answer of each kind, by hand, before any load of it.
                    for kind, body in (("presign", upload_body("bench-first.txt", secrets.token_hex(32))),
                                       ("dedupe", dedupe_body)):
                        ok, desc = check_first_upload(ctl, token, kind, body)
                        first_answers.append({"threads": threads, "kind": kind, "ok": ok, "desc": desc})
                        log(f"first {kind} answer: {desc}")
                        if not ok:
                            upload_fail[kind] = f"the first {kind} answer was wrong: {desc}"
                            notes.append(f"FM_THREADS={threads}: {upload_fail[kind]}")
                    r = requests.get(ctl.base + ENDPOINTS["download"]["path"],
                                     headers={"authorization": f"Bearer {token}"}, timeout=10)
                    ok = r.status_code == 200 and "/f/blobs/" in r.text
                    desc = f"{r.status_code} {r.text[:200]}"
                    first_answers.append({"threads": threads, "kind": "download", "ok": ok, "desc": desc})
                    log(f"first download answer: {desc}")
                    if not ok:
                        upload_fail["download"] = f"the first download answer was wrong: {desc}"
                        notes.append(f"FM_THREADS={threads}: {upload_fail['download']}")
                # Warm-up (not reported): connection pools filled, caches and allocator arenas at steady state.
                warm = [("me", 2), ("healthz", 1)] + [(k, 1) for k in ("presign", "dedupe", "file", "download")
                                                      if k in endpoints and k not in upload_fail]
                for key, secs in warm:
                    ep = ENDPOINTS[key]
                    w = run_wrk(ctl.base + ep["path"], secs, token if ep.get("auth") else None,
                                body=wrk_bodies.get(key), random_sha256=key == "presign")
                    if w["errors"]:
                        notes.append(f"FM_THREADS={threads}: warm-up wrk {ep['name']} ({secs} s) had errors "
                                     f"{w['errors']}")

                plan = [("wrk", "h1", ctl.base)] + ([] if args.h1_only else [("h2load", "h2c", ctl.base)])
                if ctl.tls_base and not args.h1_only:
                    plan.append(("h2load", "h2tls", ctl.tls_base))
                for tool, label, base in plan:
                    ref = None
                    for key in endpoints:
                        ep = ENDPOINTS[key]
                        tok = token if ep.get("auth") else None
                        row = {"threads": threads, "tool": tool, "label": label, "ep": key, "path": ep["path"]}
                        if not ctl.alive():
                            row["failure"] = "fm-control is not running"
                            rows.append(row)
                            continue
                        if key in upload_fail:
                            row["failure"] = f"not loaded: the first {key} answer was wrong"
                            rows.append(row)
                            continue
                        log(f"FM_THREADS={threads}: {tool} {label} {ep['name']} for {args.duration} s")
                        before = upload_counts(db, user_id, dedupe_sha) if ep.get("upload") else None
                        rstats = redis_commandstats(st) if ep.get("upload") else None
                        win = CpuWindow(ctl.pid, stack_pids).start()
                        perf = start_perf(args.perf, f"{label}-{key}") if args.perf else None
                        try:
                            if tool == "wrk":
                                res = run_wrk(base + ep["path"], args.duration, tok, body=wrk_bodies.get(key),
                                              random_sha256=key == "presign")
                            else:
                                res = run_h2load(base + ep["path"], args.duration, tok, workdir,
                                                 body_file=h2_body_files.get(key))
                        except (RuntimeError, subprocess.TimeoutExpired) as e:
                            stop_perf(perf)
                            row["failure"] = str(e).splitlines()[0][:200]
                            notes.append(f"FM_THREADS={threads} {tool} {label} {ep['name']}: {e}")
                            rows.append(row)
                            continue
                        row.update(res)
                        row["cpu"] = win.stop()
                        stop_perf(perf)
                        row["rss"], row["hwm"] = mem_status(ctl.pid)
                        row["invalid"] = []
                        if not ctl.alive():
                            notes.append(f"fm-control (FM_THREADS={threads}) died during {tool} {label} "
                                         f"{ep['name']} (exit {ctl.proc.returncode}); log tail:\n\n```\n"
                                         f"{ctl.log_tail()}\n```")
                        if res["errors"]:
                            notes.append(f"FM_THREADS={threads} {tool} {label} {ep['name']}: errors {res['errors']}")
                            if ep.get("upload"):
                                row["invalid"].append(f"errors {res['errors']}")
                        if ep.get("upload"):
                            # The rows are written behind (control-plane/records.c): wait until every answered
                            # request's rows are in PostgreSQL (or nothing moves for 5 s), and report how long.
                            row["flush_s"], after = wait_rows_written(db, st.env, user_id, dedupe_sha, key, before,
                                                                      res["requests"])
                            row["written"], problems = check_rows_written(key, before, after, res["requests"])
                            row["redis_stats"] = redis_per_request(rstats, redis_commandstats(st),
                                                                   res["requests"])
                            for pr in problems:
                                notes.append(f"FM_THREADS={threads} {tool} {label} {ep['name']}: {pr}")
                            row["invalid"] += problems
                        if label != "h1" and res["proto"] not in (label.replace("tls", ""), "h2"):
                            notes.append(f"{tool} {label} {ep['name']}: negotiated {res['proto']}")
                        log(f"  {res['rps']:,.0f} req/s, p50 {res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms, "
                            f"errors {res['errors'] or 0}, RSS {row['rss']:.1f} MiB"
                            + (f", {res['logged']} latencies logged of {res['requests']} done"
                               if "logged" in res else "")
                            + (f", rows written {row['written']} (all in PostgreSQL {row['flush_s']:.1f} s after "
                               f"the load)" if "written" in row else "")
                            + (f", INVALID: {row['invalid']}" if row["invalid"] else ""))
                        rows.append(row)
                        if key == "healthz":
                            ref = row
                        elif ref is not None:
                            row["ratio"] = row["rps"] / ref["rps"]
                            row["ratio_invalid"] = bool(row["errors"] or ref["errors"] or row["invalid"])
                server["rss_end"], server["hwm_end"] = mem_status(ctl.pid)
                if (server["hwm_end"] or 0) > 64:
                    notes.append(f"fm-control (FM_THREADS={threads}) peak RSS {server['hwm_end']:.1f} MiB is above "
                                 f"the 64 MiB target")

                if threads == thread_values[-1] and ctl.alive():
                    log(f"logins: {args.logins} sequential, {2 * args.logins} with {NPROC} concurrent clients")
                    lg = bench_logins(ctl, email, password, stack_pids, args.logins, 2 * args.logins)
                    rss, hwm = mem_status(ctl.pid)
                    logins = {"threads": threads, "result": lg, "rss": rss, "hwm": hwm}
                    if (hwm or 0) > 64:
                        notes.append(f"fm-control (FM_THREADS={threads}) peak RSS {hwm:.1f} MiB during the logins is "
                                     f"above the 64 MiB target")
                    for key in ("sequential", "concurrent"):
                        if set(lg[key]["codes"]) != {200}:
                            notes.append(f"logins ({key}): status codes {lg[key]['codes']}")
                    log("argon2id reference hashes (libargon2 via ctypes)")
                    hash_ms = argon2_hash_ms(10)
            except Exception as e:  # noqa: BLE001 — one instance failing must not lose the others' figures
                notes.append(f"FM_THREADS={threads}: stopped early: {e}; fm-control log tail:\n\n```\n"
                             f"{ctl.log_tail()}\n```")
                failed_instances.append(threads)
            finally:
                levels, messages = ctl.log_levels()
                server["levels"] = {k: v for k, v in levels.items() if k != "info"}
                server["messages"] = messages
                alive = ctl.alive()
                server["exit"] = ctl.stop()
                if not alive:
                    server["exit"] = f"**died before SIGTERM ({server['exit']})**"
                elif server["exit"] != 0:
                    notes.append(f"fm-control (FM_THREADS={threads}) exited with {server['exit']} on SIGTERM; "
                                 f"log tail:\n\n```\n{ctl.log_tail()}\n```")
                    server["exit"] = f"**{server['exit']}**"
                if any(k in server["levels"] for k in ("error", "fatal", "other")):
                    notes.append(f"fm-control (FM_THREADS={threads}) log has {server['levels']}; tail:\n\n```\n"
                                 f"{ctl.log_tail(10)}\n```")
    finally:
        if st is not None:
            log("stopping the stack")
            try:
                st.stop()
            except Exception as e:  # report, but keep the benchmark's output
                log(f"stack stop failed: {e}")
        shutil.rmtree(workdir, ignore_errors=True)

    meta["total_s"] = time.monotonic() - t_start
    meta["upload_threads"] = upload_threads
    report = render(meta, rows, servers, logins, hash_ms, notes, first_answers)
    sys.stdout.write(report)
    if args.out:
        Path(args.out).write_text(report)
        log(f"report written to {args.out}")
    log(f"total {meta['total_s']:.0f} s")
    return 1 if failed_instances or any("failure" in r or r.get("invalid") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
