#!/usr/bin/python3
"""Benchmark of fm-worker (DESIGN.md §8 "upload → READY (small image, local stack) p95 ≤ 1 s"; issue 4 "Measure"):
jobs/s per core for small images, upload-landed → READY p50/p95, and peak RSS per worker thread.

    /usr/bin/python3 tests/bench/bench_worker.py [--images 200] [--threads 1,2] [--build-dir build] [--out FILE]

One run starts a private stack (tests/integration/stackfixture.py: PostgreSQL, Redis, Ceph RGW, clamd on free
loopback ports), migrates it, starts one fm-control (bench_control.Control) and registers a user. Then, for each
FM_WORKER_THREADS value, a fresh fm-worker (log level warn) and two phases, each on images never seen before (so no
job is short-cut by dedupe):

  * latency: `--paced` images (default 30) one at a time, each uploaded (POST /v1/uploads, presigned PUT, POST
    complete) only once the previous one is READY: the time from "the PUT returned" (the object landed) to READY,
    with an idle queue;
  * throughput: `--images` images (default 200) uploaded by 4 client threads as fast as they go: jobs ÷ fm-worker
    CPU seconds (utime + stime from /proc, the whole process) = jobs/s per core, the wall-clock rate, and landed →
    READY under that backlog.

READY is the moment the owner's notification (`PUBLISH fm:events:{owner}`, sent right after PostgreSQL says READY)
reaches a subscriber here. Images are 640×480 JPEGs made with PIL (a gradient and a few hundred random dots, ~30–60
KB). Peak RSS is fm-worker's VmHWM after each phase; "per thread" is (VmHWM − VmRSS at start) ÷ threads, beside the
whole-process figure. Beside each phase: the CPU used by PostgreSQL, Redis, the rest of the stack (RGW, clamd) and
the client in the same window, and the worker's own split by step (fm_worker_step_seconds from its /metrics), the
reference that shows where a job's time goes. The Markdown report goes to stdout (and --out); progress to stderr.
"""
import argparse
import datetime
import io
import json
import os
import random
import re
import secrets
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "bench"))
sys.path.insert(0, str(REPO / "tests" / "integration"))
from bench_control import (CLK_TCK, Control, CpuWindow, build_info, log, machine_info, mem_status,  # noqa: E402
                           percentile, proc_ticks)
from stackfixture import free_ports, start_stack  # noqa: E402

PASSWORD = "bench-" + secrets.token_urlsafe(12)


# ---- images ---------------------------------------------------------------------------------------------------------

def make_jpeg(rng, size=(640, 480)):
    w, h = size
    c0 = [rng.randrange(256) for _ in range(3)]
    c1 = [rng.randrange(256) for _ in range(3)]
    grad = Image.linear_gradient("L").resize(size)
    img = Image.composite(Image.new("RGB", size, tuple(c0)), Image.new("RGB", size, tuple(c1)), grad)
    draw = ImageDraw.Draw(img)
    for _ in range(300):
        x, y = rng.randrange(w), rng.randrange(h)
        draw.rectangle((x, y, x + rng.randrange(1, 6), y + rng.randrange(1, 6)),
                       fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


# ---- the owner's notifications ----------------------------------------------------------------------------------------

class Notifications:
    """SUBSCRIBE fm:events:{owner} on a raw socket; records the arrival time (monotonic) of each file's final status."""

    def __init__(self, redis_port, owner_id):
        self.sock = socket.create_connection(("127.0.0.1", redis_port), timeout=600)
        channel = f"fm:events:{{{owner_id}}}"
        self.sock.sendall(f"*2\r\n$9\r\nSUBSCRIBE\r\n${len(channel)}\r\n{channel}\r\n".encode())
        self.f = self.sock.makefile("rb")
        self._read()
        self.done, self.cond = {}, threading.Condition()
        threading.Thread(target=self._loop, daemon=True).start()

    def _read(self):
        n = int(self.f.readline()[1:])
        items = []
        for _ in range(n):
            head = self.f.readline()
            items.append(self.f.read(int(head[1:]) + 2)[:-2].decode() if head[:1] == b"$" else head[1:-2].decode())
        return items

    def _loop(self):
        try:
            while True:
                items = self._read()
                now = time.monotonic()
                if items and items[0] == "message":
                    msg = json.loads(items[2])
                    if msg.get("status") in ("READY", "QUARANTINED", "FAILED"):
                        with self.cond:
                            self.done.setdefault(msg["file_id"], (now, msg["status"]))
                            self.cond.notify_all()
        except (OSError, ValueError):
            pass

    def wait(self, file_ids, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(f in self.done for f in file_ids):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


# ---- the client -------------------------------------------------------------------------------------------------------

def upload_one(base, token, data, name):
    """POST /v1/uploads, PUT, complete; returns (file_id, landed monotonic time)."""
    import hashlib
    s = requests.Session()
    h = {"authorization": f"Bearer {token}"}
    r = s.post(base + "/v1/uploads", headers=h, timeout=30,
               json={"name": name, "size": len(data), "content_type": "image/jpeg",
                     "sha256": hashlib.sha256(data).hexdigest()})
    if r.status_code != 201:
        raise RuntimeError(f"POST /v1/uploads: {r.status_code} {r.text[:300]}")
    a = r.json()
    p = s.put(a["url"], data=data, headers=a["headers"], timeout=30)
    landed = time.monotonic()
    if p.status_code != 200:
        raise RuntimeError(f"PUT: {p.status_code} {p.text[:300]}")
    c = s.post(base + f"/v1/uploads/{a['upload_id']}/complete", headers=h, timeout=30)
    if c.status_code != 200:
        raise RuntimeError(f"complete: {c.status_code} {c.text[:300]}")
    return a["file_id"], landed


# ---- fm-worker ----------------------------------------------------------------------------------------------------------

class Worker:
    def __init__(self, binary, env, workdir, threads):
        self.threads = threads
        (self.port,) = free_ports(1)
        self.env = dict(env)
        self.env.update({"FM_WORKER_THREADS": str(threads), "FM_WORKER_HEALTH_PORT": str(self.port),
                         "FM_LOG_LEVEL": "warn"})
        self.logpath = Path(workdir) / f"fm-worker-t{threads}.log"
        self.logfile = open(self.logpath, "w")
        self.proc = subprocess.Popen([str(binary)], env=self.env, stdin=subprocess.DEVNULL, stdout=self.logfile,
                                     stderr=subprocess.STDOUT)
        self.pid, self.url = self.proc.pid, f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fm-worker exited with {self.proc.returncode}:\n{self.logpath.read_text()[-2000:]}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("fm-worker did not answer /healthz in 20 s")
            time.sleep(0.05)

    def step_seconds(self):
        """{step: (sum_s, count)} from fm_worker_step_seconds in /metrics."""
        text = requests.get(self.url + "/metrics", timeout=5).text
        out = {}
        for m in re.finditer(r'^fm_worker_step_seconds_(sum|count)\{step="(\w+)"\} (\S+)$', text, re.M):
            s, c = out.get(m.group(2), (0.0, 0))
            out[m.group(2)] = (float(m.group(3)), c) if m.group(1) == "sum" else (s, int(float(m.group(3))))
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logfile.close()
        return self.proc.returncode


def step_delta(before, after):
    out = {}
    for step, (s, c) in after.items():
        s0, c0 = before.get(step, (0.0, 0))
        if c - c0 > 0:
            out[step] = (s - s0) / (c - c0) * 1000.0
    return out


# ---- phases ---------------------------------------------------------------------------------------------------------------

def run_phase(kind, ctl, token, worker, notes_sub, images, stack_pids, concurrency):
    win = CpuWindow(worker.pid, stack_pids).start()
    client0 = time.process_time()  # the client is this process (its upload threads), not a child
    ticks0 = proc_ticks(worker.pid)
    steps0 = worker.step_seconds()
    landed = {}
    t0 = time.monotonic()
    if kind == "latency":
        for i, data in enumerate(images):
            fid, t = upload_one(ctl.base, token, data, f"lat-{i}.jpg")
            landed[fid] = t
            if not notes_sub.wait([fid], 60):
                raise RuntimeError(f"file {fid} not READY after 60 s:\n{worker.logpath.read_text()[-2000:]}")
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            for fid, t in pool.map(lambda a: upload_one(ctl.base, token, a[1], f"thr-{a[0]}.jpg"),
                                   enumerate(images)):
                landed[fid] = t
        if not notes_sub.wait(list(landed), 600):
            missing = [f for f in landed if f not in notes_sub.done]
            raise RuntimeError(f"{len(missing)} files not READY after 600 s")
    last = max(notes_sub.done[f][0] for f in landed)
    wall = last - t0
    cpu = win.stop()
    cpu["client"] = 100.0 * (time.process_time() - client0) / cpu["wall_s"] if cpu["wall_s"] > 0 else 0.0
    worker_cpu_s = ((proc_ticks(worker.pid) or ticks0) - ticks0) / CLK_TCK
    statuses = {}
    for f in landed:
        statuses[notes_sub.done[f][1]] = statuses.get(notes_sub.done[f][1], 0) + 1
    lat = sorted((notes_sub.done[f][0] - landed[f]) * 1000.0 for f in landed)
    rss, hwm = mem_status(worker.pid)
    return {"kind": kind, "jobs": len(landed), "statuses": statuses, "wall_s": wall, "worker_cpu_s": worker_cpu_s,
            "jobs_per_core_s": len(landed) / worker_cpu_s if worker_cpu_s > 0 else float("nan"),
            "jobs_per_s": len(landed) / wall if wall > 0 else float("nan"),
            "p50": percentile(lat, 50), "p95": percentile(lat, 95), "max": lat[-1], "hwm": hwm, "rss": rss,
            "cpu": cpu, "steps": step_delta(steps0, worker.step_seconds())}


def render(meta, results, notes):
    out = [f"## Worker: jobs ({meta['date']})", ""]
    out.append(f"Command: `{meta['argv']}` — {meta['cpu']}, {meta['nproc']} cores, load average before the run "
               f"{meta['loadavg']}; fm-worker {meta['binary']} ({meta['btype']} build, {meta['rev']}). Images: "
               f"640×480 JPEG, {meta['img_kib']:.0f} KiB on average, each new (no dedupe). Latency = PUT returned "
               f"(object landed) → the owner's READY notification; the client also calls `complete` in between.")
    out.append("")
    out.append("| FM_WORKER_THREADS | phase | jobs | wall s | jobs/s | worker CPU s | **jobs/s per core** | "
               "landed→READY p50 / p95 / max ms | VmHWM MiB (start RSS) | peak RSS per thread MiB | "
               "CPU % of one core in the window: worker / PG / Redis / RGW+clamd / client | other processes "
               "of the machine |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        c = r["cpu"]
        out.append(
            f"| {r['threads']} | {r['kind']} ({r['concurrency']}) | {r['jobs']} | {r['wall_s']:.1f} | "
            f"{r['jobs_per_s']:.1f} | {r['worker_cpu_s']:.1f} | **{r['jobs_per_core_s']:.1f}** | "
            f"{r['p50']:.0f} / {r['p95']:.0f} / {r['max']:.0f} | {r['hwm']:.0f} ({r['rss0']:.0f}) | "
            f"{(r['hwm'] - r['rss0']) / r['threads']:.1f} | {c['server']:.0f} / {c['pg']:.0f} / {c['redis']:.0f} / "
            f"{c['rest']:.0f} / {c['client']:.0f} | {c['other']:.0f} |")
    out.append("")
    out.append("Where a job's time goes (mean ms per step in the same window, from `fm_worker_step_seconds`):")
    out.append("")
    steps = sorted({s for r in results for s in r["steps"]},
                   key=lambda s: ["fetch", "verify", "sniff", "scan", "describe", "variants", "text"].index(s)
                   if s in ("fetch", "verify", "sniff", "scan", "describe", "variants", "text") else 99)
    out.append("| FM_WORKER_THREADS | phase | " + " | ".join(steps) + " |")
    out.append("|---|---|" + "---|" * len(steps))
    for r in results:
        out.append(f"| {r['threads']} | {r['kind']} | " + " | ".join(
            f"{r['steps'][s]:.1f}" if s in r["steps"] else "–" for s in steps) + " |")
    out.append("")
    target = [r for r in results if r["kind"] == "latency"]
    if target:
        worst = max(r["p95"] for r in target)
        out.append(f"Target (DESIGN.md §8): upload → READY p95 ≤ 1 s for small images: idle-queue p95 is "
                   f"{worst:.0f} ms at worst → {'met' if worst <= 1000 else 'NOT met'}. Under the backlog of the "
                   f"throughput phase the latency is mostly queueing (jobs wait for a free thread).")
    for n in notes:
        out.append(f"- {n}")
    out.append("")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=200, help="images of the throughput phase (default 200)")
    ap.add_argument("--paced", type=int, default=30, help="images of the latency phase (default 30)")
    ap.add_argument("--concurrency", type=int, default=4, help="client threads of the throughput phase")
    ap.add_argument("--threads", default="1,2", help="FM_WORKER_THREADS values (default 1,2)")
    ap.add_argument("--build-dir", default=str(REPO / "build"), help="where fm-control and fm-worker are")
    ap.add_argument("--out", help="also write the Markdown section to this file")
    args = ap.parse_args()
    build = Path(args.build_dir)
    for b in ("fm-control", "fm-worker"):
        if not (build / b).is_file():
            sys.exit(f"bench: {build / b} not found: build it first")
    thread_values = [int(x) for x in args.threads.split(",") if x.strip()]
    model, _mem = machine_info()
    btype, rev = build_info(build / "fm-worker")
    if btype == "(none)":
        btype = "RelWithDebInfo (CMakeLists.txt's default)"
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": model,
            "nproc": os.cpu_count(), "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
            "binary": os.path.relpath(build / "fm-worker", REPO) if (build / "fm-worker").is_relative_to(REPO)
            else str(build / "fm-worker"), "btype": btype, "rev": rev,
            "argv": "/usr/bin/python3 " + " ".join(shlex.quote(a) for a in
                                                    [os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])}
    rng = random.Random(secrets.randbits(64))
    workdir = tempfile.mkdtemp(prefix="fm-bench-worker-")
    results, notes, st, ctl = [], [], None, None
    try:
        log("starting a private stack (PostgreSQL, Redis, Ceph RGW, clamd)")
        st = start_stack()
        log(f"stack up in {st.start_seconds:.1f} s")
        stack_pids = st.pids()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FM_")}
        env.update(st.env)
        env.update({"FM_JWT_SECRET": secrets.token_urlsafe(48), "FM_ACCESS_TTL_S": "3600",
                    "FM_ARGON2_M_KIB": "4096", "FM_ARGON2_T": "1", "FM_SCHEMA_DIR": str(REPO / "schema"),
                    "FM_LOGIN_LIMIT_IP": "1000000", "FM_REGISTER_LIMIT_IP": "1000000"})
        p = subprocess.run([str(build / "fm-control"), "migrate"], env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"migrate failed:\n{p.stdout[-2000:]}")
        ctl = Control(build / "fm-control", env, workdir, 2, None)
        email = f"bench-worker-{secrets.token_hex(4)}@example.com"
        r = requests.post(ctl.base + "/v1/auth/register", json={"email": email, "password": PASSWORD}, timeout=30)
        if r.status_code != 201:
            raise RuntimeError(f"register: {r.status_code} {r.text[:300]}")
        user_id = r.json()["user"]["id"]
        token = requests.post(ctl.base + "/v1/auth/login", json={"email": email, "password": PASSWORD},
                              timeout=30).json()["access_token"]
        redis_port = int(st.env["FM_REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
        sub = Notifications(redis_port, user_id)
        total = sum(args.paced + args.images for _ in thread_values)
        log(f"making {total} 640×480 JPEGs")
        images = [make_jpeg(rng) for _ in range(total)]
        meta["img_kib"] = sum(len(i) for i in images) / len(images) / 1024
        for threads in thread_values:
            log(f"FM_WORKER_THREADS={threads}: starting fm-worker")
            worker = Worker(build / "fm-worker", env, workdir, threads)
            try:
                time.sleep(1)
                rss0, _ = mem_status(worker.pid)
                for kind, count, conc in (("latency", args.paced, 1), ("throughput", args.images, args.concurrency)):
                    batch, images = images[:count], images[count:]
                    log(f"  {kind}: {count} images")
                    res = run_phase(kind, ctl, token, worker, sub, batch, stack_pids, conc)
                    res.update({"threads": threads, "rss0": rss0, "concurrency": conc})
                    if res["statuses"] != {"READY": count}:
                        notes.append(f"FM_WORKER_THREADS={threads} {kind}: final statuses {res['statuses']}")
                    log(f"  {kind}: {res['jobs_per_core_s']:.1f} jobs/s per core, {res['jobs_per_s']:.1f} jobs/s, "
                        f"p50 {res['p50']:.0f} ms p95 {res['p95']:.0f} ms, VmHWM {res['hwm']:.0f} MiB")
                    results.append(res)
            finally:
                rc = worker.stop()
                if rc != 0:
                    notes.append(f"fm-worker (threads {threads}) exited with {rc}")
        sub.close()
    finally:
        if ctl is not None:
            ctl.stop()
        if st is not None:
            st.stop()
    report = render(meta, results, notes)
    print(report)
    if args.out:
        Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
