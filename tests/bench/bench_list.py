#!/usr/bin/python3
"""Benchmark of GET /v1/files (DESIGN.md §8 "first page of 50 with thumbnail URLs, folder of 100,000 files, owner of
1,000,000": ≥ 30 % of /healthz warm, p99 ≤ 20 ms cold), with RSA-2048 and ECDSA P-256 signing keys, and EXPLAIN
(ANALYZE, BUFFERS) of the listing statements.

    /usr/bin/python3 tests/bench/bench_list.py --binary /tmp/build-listing-rel/fm-control [--duration 10]

One run starts a private stack (tests/integration/stackfixture.py), migrates it, and generates by SQL
(generate_series) one owner with 1,000,000 READY files with thumbnails: 100,000 in one folder, the rest in folders of
50. Then for each key type a fresh fm-control (FM_THREADS=2) is loaded:
  * warm: wrk (64 connections) on the big folder's first page, answered from the first-page cache, beside /healthz of
    the same server in the same run;
  * cold, page cache dropped: the owner's generation INCRed before each request (what any change does), so each
    request reads PostgreSQL and builds the page; the thread's recent signatures still serve (same 50 URLs);
  * cold, nothing cached: each request lists another never-listed 50-file folder: 50 fresh signatures each.
Sequential requests (one client) for the cold rows: their latency is the request's own, not a queue's.
Shared helpers (the stack, wrk, CPU accounting, fm-control) come from bench_control.py.
"""
import argparse
import base64
import datetime
import os
import re
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_control import (REPO, Control, CpuWindow, Db, build_info, log, machine_info, percentile,  # noqa: E402
                           run_wrk)
from helpers_fm import redis_cmd  # noqa: E402
from stackfixture import start_stack  # noqa: E402

TOTAL, BIG, SMALL = 1_000_000, 100_000, 50
BLOBS = 10_000  # files share blobs (i % BLOBS); the thumbnail URL names the file, so every URL is still its own


def generate(db, owner):
    """The owner's tree, by SQL: folder 'big' (BIG files) and (TOTAL - BIG) / SMALL folders of SMALL files, every
    file READY on a blob with a thumb variant. Returns (big folder id, [small folder ids])."""
    t0 = time.monotonic()
    db.run(f"""
INSERT INTO blobs (sha256, size, storage_key, content_type, ref_count, variants)
SELECT sha256(('b' || g)::bytea), 1000 + g, 'blobs/' || encode(sha256(('b' || g)::bytea), 'hex'), 'image/jpeg', 1,
       jsonb_build_object('thumb', jsonb_build_object('webp', jsonb_build_object(
           'key', 'variants/' || encode(sha256(('b' || g)::bytea), 'hex') || '/thumb.webp', 'width', 256,
           'height', 192, 'bytes', 9000)))
FROM generate_series(1, {BLOBS}) g;
INSERT INTO folders (owner_id, name) VALUES ('{owner}', 'big');
INSERT INTO folders (owner_id, name) SELECT '{owner}', 'small-' || g FROM generate_series(1, {(TOTAL - BIG) // SMALL}) g;
""")
    big = db.run(f"SELECT id FROM folders WHERE owner_id = '{owner}' AND name = 'big'")[0]
    db.run(f"""
INSERT INTO files (owner_id, folder_id, name, size, content_type, claimed_sha256, blob_sha256, status, created_at,
                   updated_at)
SELECT '{owner}', '{big}', 'IMG_' || lpad(g::text, 6, '0') || '.jpg', 1000 + g % {BLOBS}, 'image/jpeg',
       sha256(('b' || (g % {BLOBS} + 1))::bytea), sha256(('b' || (g % {BLOBS} + 1))::bytea), 'READY',
       timestamptz '2025-01-01' + g * interval '1 minute', timestamptz '2025-01-01' + g * interval '1 minute'
FROM generate_series(1, {BIG}) g;
""")
    log(f"big folder: {BIG} files in {time.monotonic() - t0:.0f} s")
    chunk = 1000  # folders per statement: 50,000 rows, well inside Db.run's 60 s
    for first in range(1, (TOTAL - BIG) // SMALL + 1, chunk):
        db.run(f"""
INSERT INTO files (owner_id, folder_id, name, size, content_type, claimed_sha256, blob_sha256, status, created_at,
                   updated_at)
SELECT '{owner}', f.id, 'photo-' || g || '.jpg', 1000 + g, 'image/jpeg',
       sha256(('b' || (g % {BLOBS} + 1))::bytea), sha256(('b' || (g % {BLOBS} + 1))::bytea), 'READY',
       timestamptz '2025-01-01' + g * interval '1 second', timestamptz '2025-01-01' + g * interval '1 second'
FROM folders f, generate_series(1, {SMALL}) g
WHERE f.owner_id = '{owner}' AND f.name IN (SELECT 'small-' || n FROM generate_series({first}, {first + chunk - 1}) n);
""")
    db.run("ANALYZE files; ANALYZE folders; ANALYZE blobs;")
    smalls = db.run(f"SELECT id FROM folders WHERE owner_id = '{owner}' AND name LIKE 'small-%' ORDER BY name")
    n = int(db.run(f"SELECT count(*) FROM files WHERE owner_id = '{owner}'")[0])
    assert n == TOTAL, n
    log(f"generated {n} files in {time.monotonic() - t0:.0f} s")
    return big, smalls


def timed_get(session, url, token):
    t = time.perf_counter()
    r = session.get(url, headers={"authorization": f"Bearer {token}"}, timeout=10)
    ms = (time.perf_counter() - t) * 1000
    if r.status_code != 200:
        raise RuntimeError(f"{url}: {r.status_code} {r.text[:300]}")
    return ms, r.json()


def cold_rows(ctl, st, token, owner, big, smalls, n):
    """(page cache dropped, nothing cached): latencies in ms of n sequential requests each."""
    s = requests.Session()
    url = f"{ctl.base}/v1/files?folder={big}&limit=50"
    timed_get(s, url, token)
    dropped = []
    for _ in range(n):
        redis_cmd(st, redis_db(st), "INCR", f"fm:tgen:{{{owner}}}")
        ms, body = timed_get(s, url, token)
        assert len(body["items"]) == 50 and all(i["thumbnail_url"] for i in body["items"])
        dropped.append(ms)
    fresh = []
    for folder in smalls[:n]:
        ms, body = timed_get(s, f"{ctl.base}/v1/files?folder={folder}&limit=50", token)
        assert len(body["items"]) == 50 and all(i["thumbnail_url"] for i in body["items"])
        fresh.append(ms)
    return sorted(dropped), sorted(fresh)


def redis_db(st):
    """The Redis database of the stack's FM_REDIS_URL (fm-control's)."""
    m = re.search(r"/(\d+)$", st.env["FM_REDIS_URL"])
    return int(m.group(1)) if m else 0


def logged_statement(st, marker):
    """The text of the last statement PostgreSQL logged (log_min_duration_statement = 0 meanwhile) that contains
    `marker`: the statement exactly as fm-control prepared it (pg_stat_activity cuts at 1 KiB)."""
    text = (Path(st.dir) / "logs" / "postgresql.log").read_text(errors="replace")
    found = [m.group(1) for m in re.finditer(r"(?:execute|statement|parse) [^:]*: (SELECT kind.*)$", text, re.M)
             if marker in m.group(1)]
    if not found:
        raise RuntimeError("the listing statement was not logged")
    return found[-1]


def explain(db, st, ctl, token, owner, big):
    """EXPLAIN (ANALYZE, BUFFERS) of the statements fm-control runs (read back from pg_stat_activity, so they are
    its own text), first page and a page deep into the big folder, for sort=name and sort=created_at, with the
    generic plan (what a prepared statement runs after its fifth execution)."""
    out = []
    s = requests.Session()
    for sort in ("name", "created_at"):
        url = f"{ctl.base}/v1/files?folder={big}&limit=50&sort={sort}"
        cursor = None
        for page in range(400):  # 20,000 rows in: the keyset starts mid-index, not at its head
            ms, body = timed_get(s, url + (f"&cursor={cursor}" if cursor else ""), token)
            cursor = body["next_cursor"]
        for label, cur in (("first page", None), ("page 401", cursor)):
            redis_cmd(st, redis_db(st), "INCR", f"fm:tgen:{{{owner}}}")
            db.run("ALTER SYSTEM SET log_min_duration_statement = 0; SELECT pg_reload_conf();")
            time.sleep(0.5)
            try:
                # a fresh connection logs the parse with the text: a new fm-control thread pool has none prepared
                timed_get(s, url + (f"&cursor={cur}" if cur else ""), token)
            finally:
                db.run("ALTER SYSTEM RESET log_min_duration_statement; SELECT pg_reload_conf();")
            sql = logged_statement(st, "UNION ALL" if cur is None else ") > (")
            params = [f"'{owner}'", f"'{big}'", "NULL", "51"]
            if cur:
                payload = base64.urlsafe_b64decode(cur.split(".")[0] + "==").decode().split("\n")
                params += ["'" + payload[8].replace("'", "''") + "'", f"'{payload[7]}'"]
            plan = db.run("SET plan_cache_mode = force_generic_plan;\n"
                          f"PREPARE s AS {sql};\nEXPLAIN (ANALYZE, BUFFERS) EXECUTE s({', '.join(params)});")
            out.append((f"sort={sort}, {label}", sql, plan))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    ap.add_argument("--cold", type=int, default=300, help="sequential requests per cold row (default 300)")
    ap.add_argument("--binary", default=str(REPO / "build" / "fm-control"))
    ap.add_argument("--threads", type=int, default=2, help="FM_THREADS (default 2)")
    args = ap.parse_args()
    binary = Path(args.binary)
    btype, rev = build_info(binary)
    model, mem = machine_info()
    argv = "/usr/bin/python3 " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])
    workdir = tempfile.mkdtemp(prefix="fm-bench-list-")
    st = start_stack()
    report = [f"- {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {model}, {mem:.1f} GiB, "
              f"load {' '.join(Path('/proc/loadavg').read_text().split()[:3])}; `{binary}` ({btype}, {rev}); "
              f"FM_THREADS={args.threads}; `{argv}`", ""]
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FM_")}
        env.update(st.env)
        env.update({"FM_JWT_SECRET": secrets.token_urlsafe(48), "FM_ACCESS_TTL_S": "3600",
                    "FM_SCHEMA_DIR": str(REPO / "schema"), "FM_REGISTER_LIMIT_IP": "1000",
                    "FM_LOGIN_LIMIT_ACCOUNT": "100000", "FM_LOGIN_LIMIT_IP": "1000000",
                    "FM_EDGE_PUBLIC_BASE": "http://127.0.0.1:9"})
        keys = {"RSA-2048": Path(workdir) / "rsa.pem", "ECDSA P-256": Path(workdir) / "ec.pem"}
        subprocess.run(["openssl", "genrsa", "-out", str(keys["RSA-2048"]), "2048"], check=True,
                       capture_output=True, timeout=60)
        subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-out", str(keys["ECDSA P-256"])], check=True, capture_output=True, timeout=60)
        env["FM_CF_KEYS"] = f"KBENCH={keys['RSA-2048']}"
        p = subprocess.run([str(binary), "migrate"], env=env, capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            raise RuntimeError(p.stdout[-2000:] + p.stderr[-2000:])
        db = Db(st.env)
        email, password = f"list-{secrets.token_hex(4)}@example.com", secrets.token_urlsafe(18)
        big = smalls = owner = None
        rows, plans = [], []
        for kind, key in keys.items():
            env["FM_CF_KEYS"] = f"KBENCH={key}"
            ctl = Control(binary, env, workdir, args.threads, None)
            try:
                if owner is None:
                    r = requests.post(ctl.base + "/v1/auth/register", json={"email": email, "password": password},
                                      timeout=30)
                    owner = r.json()["user"]["id"]
                    log("generating the owner's 1,000,000 files")
                    big, smalls = generate(db, owner)
                token = requests.post(ctl.base + "/v1/auth/login", json={"email": email, "password": password},
                                      timeout=30).json()["access_token"]
                url = f"{ctl.base}/v1/files?folder={big}&limit=50"
                _, body = timed_get(requests.Session(), url, token)
                assert len(body["items"]) == 50 and all(i["thumbnail_url"] for i in body["items"]), body
                stack_pids = st.pids()
                log(f"{kind}: wrk /healthz")
                cpu = CpuWindow(ctl.pid, stack_pids).start()
                health = run_wrk(ctl.base + "/healthz", args.duration, None)
                health["cpu"] = cpu.stop()
                log(f"{kind}: wrk first page (warm)")
                cpu = CpuWindow(ctl.pid, stack_pids).start()
                warm = run_wrk(url, args.duration, token)
                warm["cpu"] = cpu.stop()
                log(f"{kind}: cold rows")
                dropped, fresh = cold_rows(ctl, st, token, owner, big, smalls[len(rows) * args.cold:], args.cold)
                rows.append((kind, health, warm, dropped, fresh))
                if not plans:
                    plans = explain(db, st, ctl, token, owner, big)
            finally:
                ctl.stop()
        report += ["| signing key | /healthz req/s | first page warm req/s | ratio | warm p99 ms | fm-control CPU "
                   "µs/req (warm) | cold, page cache dropped: p50 / p99 ms | cold, nothing cached (50 new "
                   "signatures): p50 / p99 ms |", "|---|---|---|---|---|---|---|---|"]
        for kind, health, warm, dropped, fresh in rows:
            per_req = warm["cpu"]["server_s"] / max(1, warm["requests"]) * 1e6
            report.append(f"| {kind} | {health['rps']:.0f} | {warm['rps']:.0f} | "
                          f"{100 * warm['rps'] / health['rps']:.0f} % | {warm['p99_ms']:.2f} | {per_req:.0f} | "
                          f"{percentile(dropped, 50):.2f} / {percentile(dropped, 99):.2f} | "
                          f"{percentile(fresh, 50):.2f} / {percentile(fresh, 99):.2f} |")
            errors = {**health["errors"], **warm["errors"]}
            if errors:
                report.append(f"\n{kind}: errors {errors}\n")
        report += ["", f"wrk: `{rows[0][2]['cmd']}`; cold rows: {args.cold} sequential requests each (one client).",
                   ""]
        for label, sql, plan in plans:
            report += [f"EXPLAIN (ANALYZE, BUFFERS), generic plan, {label}:", "", "```", *plan, "```", ""]
    finally:
        st.stop()
    print("\n".join(report))


if __name__ == "__main__":
    main()
