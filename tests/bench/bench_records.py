#!/usr/bin/python3
"""Sustained benchmark of POST /v1/uploads with its write-behind backlog (control-plane/records.c, DESIGN.md §6 rule 2
and §8): the flushers' ceiling (records/s into PostgreSQL), then minutes of presigns with the backlog and its lag
sampled from Redis over time, and the drain after the load.

    /usr/bin/python3 tests/bench/bench_records.py --binary build/fm-control [--sustained 120] [--out FILE]

One run starts a private stack (tests/integration/stackfixture.py), migrates it, and:

1. ceiling: an fm-control whose flushers are held (a psql session holds the benchmark user's `users` row FOR UPDATE,
   so every batch of that user's records waits on it; the bounds are raised for this instance) is loaded with
   presigns for --fill seconds; the backlog they leave in Redis is let go at once, and the time until Redis holds no
   record gives the flushers' ceiling, records/s, with the CPU each process used meanwhile;
2. sustained: a fresh fm-control with the default bounds (FM_RECORD_BACKLOG_MAX, FM_RECORD_BACKLOG_MS,
   FM_RECORD_FLUSH_MS); `/healthz` (10 s) as the reference, then `POST /v1/uploads` (presign, a fresh random sha256
   per request) with wrk, HTTP/1.1, 64 connections, for --sustained seconds. Every --sample seconds a row: answers/s
   by status and their p50/p99 in that window (fm-control's histogram), records written behind / through / flushed
   per second, and the backlog — its size and the age of its oldest record, read from Redis every 0.5 s (max and
   last of the window). After the load: the drain time, and every 201 checked against PostgreSQL.

The report (Markdown) goes to stdout and --out; progress to stderr. The load generator shares the machine's cores
with fm-control, PostgreSQL and Redis, and the machine may be shared with other work: the CPU each used is printed.
"""
import argparse
import datetime
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_control import (NPROC, REPO, Control, CpuWindow, Db, build_info, fmt, log, machine_info,  # noqa: E402
                           post_until_ok, run_wrk, tool_version, upload_body)
from helpers_fm import redis_cmd  # noqa: E402  (tests/integration, put on sys.path by bench_control)
from helpers_uploads import Psql  # noqa: E402
from stackfixture import start_stack  # noqa: E402

NAME = "bench-sustained.txt"
FILL_NAME = "bench-ceiling.txt"
BACKLOG_LUA = ("local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) local age = 0 "
               "for _, k in ipairs(KEYS) do local o = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')[2] "
               "if o and now - o > age then age = now - o end end "
               "return {redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2]), age}")


def backlog(stack):
    """(records only in Redis, age of the oldest in ms), read atomically (records.c's pending + flushing)."""
    count, age = redis_cmd(stack, 0, "EVAL", BACKLOG_LUA, 2, "fm:rec:pending", "fm:rec:flushing")
    return int(count), int(age)


def metrics(base):
    """The series of /metrics as {name{labels}: value}."""
    out = {}
    for line in requests.get(base + "/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                pass
    return out


def uploads_answers(m):
    """POST /v1/uploads answers by status."""
    out = {}
    for key, v in m.items():
        if key.startswith("fm_http_requests_total{") and 'route="/v1/uploads"' in key:
            status = re.search(r'status="(\d+)"', key).group(1)
            out[status] = out.get(status, 0) + v
    return out


def uploads_buckets(m):
    """POST /v1/uploads latency histogram: [(upper bound s, cumulative count)]."""
    out = []
    for key, v in m.items():
        if key.startswith("fm_http_request_duration_seconds_bucket{") and 'route="/v1/uploads"' in key:
            le = re.search(r'le="([^"]+)"', key).group(1)
            out.append((float("inf") if le == "+Inf" else float(le), v))
    return sorted(out)


def window_percentile(before, after, q):
    """The upper bound of the histogram bucket that holds quantile q of the answers between two scrapes."""
    b = dict(before)
    delta = [(le, n - b.get(le, 0)) for le, n in after]
    total = delta[-1][1] if delta else 0
    if total <= 0:
        return None
    for le, n in delta:
        if n >= q * total:
            return le
    return float("inf")


def counter(m, name):
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))


def hold_user(stack, dbname, user_id):
    """A psql session that holds the user's row FOR UPDATE: every batch with one of its records waits."""
    session = Psql(stack, dbname)
    session.query(f"BEGIN; SELECT 1 FROM users WHERE id = '{user_id}' FOR UPDATE")
    return session


def wait_drained(stack, limit_s, every=0.1):
    """Seconds until Redis holds no record (or limit_s), and the largest backlog seen meanwhile."""
    t0 = time.monotonic()
    while True:
        count, _ = backlog(stack)
        if count == 0 or time.monotonic() - t0 > limit_s:
            return time.monotonic() - t0, count
        time.sleep(every)


def user_rows(db, user_id, name):
    return int(db.run("SELECT count(*) FROM files f JOIN uploads u ON u.file_id = f.id "
                      "WHERE f.owner_id = :'uid' AND f.name = :'name';", uid=user_id, name=name)[0])


class Sampler(threading.Thread):
    """Every 0.5 s the backlog from Redis; every `window` s a row with the metrics' deltas."""

    def __init__(self, stack, base, window):
        super().__init__(daemon=True)
        self.stack, self.base, self.window = stack, base, window
        self.rows, self.stop_event = [], threading.Event()

    def run(self):
        t0 = last_t = time.monotonic()
        last = metrics(self.base)
        counts, ages = [], []
        while not self.stop_event.wait(0.5):
            try:
                c, a = backlog(self.stack)
                counts.append(c)
                ages.append(a)
            except (OSError, RuntimeError):
                pass
            now = time.monotonic()
            if now - last_t >= self.window:
                m = metrics(self.base)
                self.rows.append(self.row(t0, last_t, now, last, m, counts, ages))
                last, last_t, counts, ages = m, now, [], []

    @staticmethod
    def row(t0, t_from, t_to, before, after, counts, ages):
        dt = t_to - t_from
        a0, a1 = uploads_answers(before), uploads_answers(after)
        rate = {s: (a1.get(s, 0) - a0.get(s, 0)) / dt for s in set(a0) | set(a1)}
        d = {k: (counter(after, k) - counter(before, k)) / dt for k in
             ("fm_records_written_through_total", "fm_records_flushed_total", "fm_records_refused_total")}
        hb, ha = uploads_buckets(before), uploads_buckets(after)
        return {"t": t_to - t0, "rate": rate, "through": d["fm_records_written_through_total"],
                "flushed": d["fm_records_flushed_total"], "refused": d["fm_records_refused_total"],
                "p50": window_percentile(hb, ha, 0.5), "p99": window_percentile(hb, ha, 0.99),
                "backlog_max": max(counts) if counts else None, "backlog_last": counts[-1] if counts else None,
                "age_max": max(ages) if ages else None, "age_last": ages[-1] if ages else None}


def log_lines(ctl, phase, notes):
    """fm-control's warn/error lines of a phase, counted by message (digits and ids folded), into the notes."""
    levels, messages = ctl.log_levels()
    messages = {k: v for k, v in messages.items() if not k.startswith("FM_CF_KEYS is empty")}  # no downloads here
    top = sorted(messages.items(), key=lambda kv: -kv[1])[:6]
    if top:
        notes.append(f"{phase}: fm-control logged " + ", ".join(f"{v} {k}" for k, v in sorted(levels.items())
                                                              if k not in ("info", "debug"))
                     + ": " + "; ".join(f"{n}× `{text}`" for text, n in top))


def ms_bound(v):
    if v is None:
        return "—"
    return "> 10 s" if v == float("inf") else f"≤ {v * 1000:g}"


def cpu_cols(c):
    return " / ".join(f"{c[k]:.0f}" for k in ("server", "client", "pg", "redis", "rest", "other"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=str(REPO / "build" / "fm-control"), help="fm-control to test")
    ap.add_argument("--sustained", type=int, default=120, help="seconds of sustained load (default 120, at least 10)")
    ap.add_argument("--sample", type=int, default=5, help="seconds per row of the time series (default 5)")
    ap.add_argument("--fill", type=int, default=10, help="seconds of load that fill the held backlog (default 10)")
    ap.add_argument("--threads", type=int, default=2, help="FM_THREADS of fm-control (default 2)")
    ap.add_argument("--out", help="also write the Markdown report to this file")
    args = ap.parse_args()
    if not 10 <= args.sustained <= 3600 or not 1 <= args.sample <= 60 or not 1 <= args.fill <= 120:
        ap.error("--sustained 10..3600, --sample 1..60, --fill 1..120")
    binary = Path(args.binary)
    if shutil.which("wrk") is None or not binary.is_file():
        sys.exit("bench: needs wrk and a built fm-control (--binary)")
    model, mem_gib = machine_info()
    btype, rev = build_info(binary)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]), "cpu": model, "mem": mem_gib,
            "binary": str(binary), "btype": btype, "rev": rev, "wrk": tool_version(["wrk", "-v"]).split(" Copyright")[0],
            "argv": "/usr/bin/python3 " + " ".join(shlex.quote(a) for a in
                                                    [os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])}
    t_start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="fm-bench-records-")
    st, notes = None, []
    ceiling, sustained = {}, {}
    try:
        log("starting a private stack")
        st = start_stack()
        stack_pids = st.pids()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FM_")}
        env.update(st.env)
        env.update({"FM_JWT_SECRET": secrets.token_urlsafe(48), "FM_ACCESS_TTL_S": "7200",
                    "FM_LOGIN_LIMIT_ACCOUNT": "100000", "FM_LOGIN_LIMIT_IP": "1000000",
                    "FM_REGISTER_LIMIT_IP": "1000", "FM_GRACEFUL_TIMEOUT_MS": "2000",
                    "FM_SCHEMA_DIR": str(REPO / "schema")})
        p = subprocess.run([str(binary), "migrate"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"migrate failed: {p.stdout[-1000:]}")
        db = Db(st.env)
        email, password = f"bench-{secrets.token_hex(4)}@example.com", secrets.token_urlsafe(18)
        meta["defaults"] = {k: None for k in ("FM_RECORD_BACKLOG_MAX", "FM_RECORD_BACKLOG_MS", "FM_RECORD_FLUSH_MS")}
        cfg = subprocess.run([str(binary), "config", "--all"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=30).stdout
        for k in meta["defaults"]:
            m = re.search(rf"{k}\W+(\d+)", cfg)
            meta["defaults"][k] = m.group(1) if m else "?"

        # ---- 1. the flushers' ceiling -------------------------------------------------------------------------
        log(f"ceiling: {args.fill} s of presigns with the flushers held, then the drain")
        held_env = dict(env, FM_PG_TIMEOUT_MS="120000", FM_RECORD_BACKLOG_MAX="10000000",
                        FM_RECORD_BACKLOG_MS="3600000")
        ctl = Control(binary, held_env, workdir, args.threads, None)
        try:
            post_until_ok(ctl, "/v1/auth/register", {"email": email, "password": password}, 201, notes)
            token = post_until_ok(ctl, "/v1/auth/login", {"email": email, "password": password}, 200,
                                  notes).json()["access_token"]
            auth = {"authorization": f"Bearer {token}"}
            user_id = requests.get(ctl.base + "/v1/me", headers=auth, timeout=10).json()["id"]
            r = requests.post(ctl.base + "/v1/uploads", timeout=10, data=upload_body("bench-first.txt", secrets.token_hex(32)),
                              headers={**auth, "content-type": "application/json"})
            if r.status_code != 201:
                raise RuntimeError(f"first presign: {r.status_code} {r.text[:300]}")
            wait_drained(st, 30)
            session = hold_user(st, db.dbname, user_id)
            try:
                fill = run_wrk(ctl.base + "/v1/uploads", args.fill, token, body=upload_body(FILL_NAME, "@SHA256@"),
                               random_sha256=True)
                held, _ = backlog(st)
                win = CpuWindow(ctl.pid, stack_pids).start()
                before = metrics(ctl.base)
            finally:
                session.query("ROLLBACK")
                session.close()
            drain_s, left = wait_drained(st, 900, every=0.05)
            cpu = win.stop()
            after = metrics(ctl.base)
            rows = user_rows(db, user_id, FILL_NAME)
            ceiling = {"fill": fill, "held": held, "drain_s": drain_s, "left": left, "cpu": cpu, "rows": rows,
                       "batches": counter(after, "fm_records_flush_batches_total")
                       - counter(before, "fm_records_flush_batches_total"),
                       "flushed": counter(after, "fm_records_flushed_total")
                       - counter(before, "fm_records_flushed_total")}
            log(f"  {held:,} records held, drained in {drain_s:.1f} s → {held / drain_s:,.0f} records/s")
        finally:
            log_lines(ctl, "ceiling", notes)
            ctl.stop()

        # ---- 2. sustained -------------------------------------------------------------------------------------
        log(f"sustained: /healthz 10 s, then {args.sustained} s of presigns")
        ctl = Control(binary, env, workdir, args.threads, None)
        try:
            token = post_until_ok(ctl, "/v1/auth/login", {"email": email, "password": password}, 200,
                                  notes).json()["access_token"]
            healthz = run_wrk(ctl.base + "/healthz", 10, None)
            run_wrk(ctl.base + "/v1/uploads", 2, token, body=upload_body("bench-warm.txt", "@SHA256@"),
                    random_sha256=True)
            wait_drained(st, 60)
            rows_before = user_rows(db, user_id, NAME)
            m0 = metrics(ctl.base)
            sampler = Sampler(st, ctl.base, args.sample)
            win = CpuWindow(ctl.pid, stack_pids).start()
            sampler.start()
            load = run_wrk(ctl.base + "/v1/uploads", args.sustained, token, body=upload_body(NAME, "@SHA256@"),
                           random_sha256=True)
            t_end = time.monotonic()
            drain_s, left = wait_drained(st, 900, every=0.05)
            sampler.stop_event.set()
            sampler.join(10)
            cpu = win.stop()
            m1 = metrics(ctl.base)
            a0, a1 = uploads_answers(m0), uploads_answers(m1)
            answers = {s: int(a1.get(s, 0) - a0.get(s, 0)) for s in set(a1) if a1.get(s, 0) - a0.get(s, 0)}
            rows = user_rows(db, user_id, NAME) - rows_before
            sustained = {"healthz": healthz, "load": load, "drain_s": drain_s, "left": left, "cpu": cpu,
                         "answers": answers, "rows": rows, "series": sampler.rows,
                         "through": counter(m1, "fm_records_written_through_total")
                         - counter(m0, "fm_records_written_through_total"),
                         "refused": counter(m1, "fm_records_refused_total") - counter(m0, "fm_records_refused_total"),
                         "after_load_s": time.monotonic() - t_end}
            log(f"  {load['rps']:,.0f} req/s, p99 {load['p99_ms']:.1f} ms, answers {answers}, drain {drain_s:.1f} s")
        finally:
            log_lines(ctl, "sustained", notes)
            ctl.stop()
    finally:
        if st is not None:
            log("stopping the stack")
            st.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    meta["total_s"] = time.monotonic() - t_start
    report = render(meta, ceiling, sustained, args, notes)
    sys.stdout.write(report)
    if args.out:
        Path(args.out).write_text(report)
    ok = sustained and sustained["rows"] >= sustained["answers"].get("201", 0) and not sustained["left"]
    return 0 if ok else 1


def render(meta, ceiling, sustained, args, notes):
    L = []
    add = L.append
    add("### Records written behind: ceiling and sustained load (tests/bench/bench_records.py)")
    add("")
    add(f"- date: {meta['date']}; total run time {meta['total_s']:.0f} s; load average at start {meta['loadavg']}")
    add(f"- machine: `nproc` = {NPROC}, {meta['cpu']}, {meta['mem']:.1f} GiB RAM — **shared with other sessions' "
        f"builds and test stacks while this ran**: the oth column is their CPU")
    add(f"- fm-control: {meta['binary']} ({meta['btype']} build, git {meta['rev']}), FM_THREADS={args.threads}, "
        f"defaults FM_RECORD_BACKLOG_MAX={meta['defaults']['FM_RECORD_BACKLOG_MAX']}, "
        f"FM_RECORD_BACKLOG_MS={meta['defaults']['FM_RECORD_BACKLOG_MS']}, "
        f"FM_RECORD_FLUSH_MS={meta['defaults']['FM_RECORD_FLUSH_MS']}; {meta['wrk']}")
    add(f"- command: `{meta['argv']}`")
    add("- CPU % of a core during the phase (total 200 %): srv = fm-control, gen = wrk, pg = PostgreSQL, redis, "
        "stk = rest of the private stack, oth = every other process of the machine")
    add("")
    if ceiling:
        c, cpu = ceiling, ceiling["cpu"]
        rate = c["held"] / c["drain_s"] if c["drain_s"] else float("nan")
        per = lambda k: 1e6 * cpu[k + "_s"] / max(1, c["held"])  # noqa: E731
        add("**Flushers' ceiling** — the backlog left by "
            f"{args.fill} s of presigns with the flushers held ({c['fill']['rps']:,.0f} req/s while filling), let go "
            "at once:")
        add("")
        add("| records held | drained in, s | records/s into PostgreSQL | batches (records per batch) | "
            "CPU µs per record: srv / pg / redis | CPU %: srv / gen / pg / redis / stk / oth | rows in PostgreSQL |")
        add("|---:|---:|---:|---:|---|---|---:|")
        add(f"| {c['held']:,} | {c['drain_s']:.1f} | **{rate:,.0f}** | {c['batches']:,.0f} "
            f"({c['flushed'] / max(1, c['batches']):,.0f}) | {per('server'):.0f} / {per('pg'):.0f} / "
            f"{per('redis'):.0f} | {cpu_cols(cpu)} | {c['rows']:,} |")
        add("")
    if sustained:
        s, load, cpu = sustained, sustained["load"], sustained["cpu"]
        ok201 = s["answers"].get("201", 0)
        add(f"**Sustained** — wrk, HTTP/1.1, 64 connections, {args.sustained} s of `POST /v1/uploads` presigns "
            f"(fresh random sha256 each), right after 10 s of `/healthz` on the same server:")
        add("")
        add("| req/s | ÷ `/healthz` | p50 ms | p99 ms | answers | written through | refused (503) | "
            "backlog max (records) | oldest record max, ms | drain after the load, s | rows in PostgreSQL "
            "(≥ 201s) | CPU %: srv / gen / pg / redis / stk / oth |")
        add("|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---|")
        bmax = max((r["backlog_max"] or 0) for r in s["series"]) if s["series"] else 0
        amax = max((r["age_max"] or 0) for r in s["series"]) if s["series"] else 0
        answers = ", ".join(f"{v:,}× {k}" for k, v in sorted(s["answers"].items()))
        errs = {k: v for k, v in load["errors"].items()}
        add(f"| {load['rps']:,.0f} | {100 * load['rps'] / s['healthz']['rps']:.0f} % "
            f"({s['healthz']['rps']:,.0f}) | {load['p50_ms']:.2f} | {load['p99_ms']:.2f} | {answers}"
            f"{' (wrk: ' + str(errs) + ')' if errs else ''} | {s['through']:,.0f} "
            f"({100 * s['through'] / max(1, ok201):.1f} %) | {s['refused']:,.0f} | {bmax:,} | {amax:,} | "
            f"{s['drain_s']:.2f} | {s['rows']:,} ({'ok' if s['rows'] >= ok201 else '**LOST RECORDS**'}) | "
            f"{cpu_cols(cpu)} |")
        add("")
        add(f"Over time (a row every {args.sample} s; the backlog read from Redis every 0.5 s, max and last of the "
            f"window; latency bounds from fm-control's histogram buckets):")
        add("")
        add("| t, s | 201/s | 503/s | written through/s | flushed/s | p50 ms | p99 ms | backlog max / last | "
            "oldest record, ms max / last |")
        add("|---:|---:|---:|---:|---:|---|---|---|---|")
        for r in s["series"]:
            add(f"| {r['t']:.0f} | {r['rate'].get('201', 0):,.0f} | {r['rate'].get('503', 0):,.0f} | "
                f"{r['through']:,.0f} | {r['flushed']:,.0f} | {ms_bound(r['p50'])} | {ms_bound(r['p99'])} | "
                f"{fmt(r['backlog_max'], 0)} / {fmt(r['backlog_last'], 0)} | "
                f"{fmt(r['age_max'], 0)} / {fmt(r['age_last'], 0)} |")
        add("")
    for n in notes:
        add(f"- note: {n}")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
