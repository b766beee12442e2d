#!/usr/bin/python3
"""The folder routes at their bounds (control-plane/folders.c, schema/013_folders.sql; docs/decisions.md "Folders
(issue 11 item 1)"): how long one PATCH (a move rewriting FM_FOLDER_MOVE_MAX = 10,000 descendant folders), one DELETE
(a subtree of FM_FOLDER_TRASH_MAX = 10,000 entries: 1,001 folders and 8,999 READY files on 1,000 blobs, all the Redis
work included; --large: 100,000 entries, 10,001 folders and 89,999 files) and its restore take, and
GET /v1/folders/{id} of a folder 3 deep beside /healthz.

    /usr/bin/python3 tests/bench/bench_folders.py --binary build/fm-control [--gets 500] [--large] [--explain]

One run starts a private stack (tests/integration/stackfixture.py), migrates it, makes the tree in SQL (as the routes
would leave it), starts one fm-control (FM_THREADS=2, default bounds, FM_PG_TIMEOUT_MS raised to 60 s so the figure
is the work's, not the timeout's) and times each call from the client (wall time, one call each). The report
(Markdown) goes to stdout; progress to stderr.
"""
import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_control import REPO, Control, Db, log  # noqa: E402
from stackfixture import start_stack  # noqa: E402

TREE_SQL = """
BEGIN;
CREATE TEMP TABLE t_top AS SELECT gen_random_uuid() AS id, 'top-' || g AS name FROM generate_series(1, :tops) g;
INSERT INTO folders (id, owner_id, parent_id, name, ancestors) VALUES (:'root', :'owner', NULL, :'root', '{}');
INSERT INTO folders (id, owner_id, parent_id, name, ancestors)
    SELECT id, :'owner', :'root', name, ARRAY[:'root'::uuid] FROM t_top;
INSERT INTO folders (owner_id, parent_id, name, ancestors)
    SELECT :'owner', t.id, 'sub-' || g, ARRAY[:'root'::uuid, t.id] FROM t_top t, generate_series(1, :subs) g;
INSERT INTO blobs (sha256, size, storage_key, content_type, ref_count)
    SELECT sha256(('blob' || g)::bytea), 1000, 'blobs/' || encode(sha256(('blob' || g)::bytea), 'hex'),
           'application/octet-stream', 1 FROM generate_series(1, 1000) g ON CONFLICT DO NOTHING;
INSERT INTO files (owner_id, folder_id, name, size, content_type, claimed_sha256, blob_sha256, status)
    SELECT :'owner', f.id, 'file-' || g || '.bin', 1000, 'application/octet-stream',
           sha256(('blob' || (((f.n - 1) * 10 + g) % 1000 + 1))::bytea),
           sha256(('blob' || (((f.n - 1) * 10 + g) % 1000 + 1))::bytea), 'READY'
    FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM folders WHERE ancestors @> ARRAY[:'root'::uuid]
          AND cardinality(ancestors) = 2) f, generate_series(1, 10) g
    WHERE (f.n - 1) * 10 + g <= :files;
DROP TABLE t_top;
COMMIT;
ANALYZE folders; ANALYZE files; ANALYZE entry_names;
SELECT (SELECT count(*) FROM folders WHERE id = :'root' OR ancestors @> ARRAY[:'root'::uuid]),
       (SELECT count(*) FROM files f JOIN folders d ON d.id = f.folder_id WHERE d.ancestors @> ARRAY[:'root'::uuid]);
"""


def tree(db, owner, tops, subs, files):
    """A folder at the root with `tops` children of `subs` children each, and `files` READY files (10 per leaf at
    most) on 1,000 blobs. Returns (its id, "folders|files")."""
    root = str(uuid.uuid4())
    return root, db.run(TREE_SQL, root=root, owner=owner, tops=tops, subs=subs, files=files)[-1]


def timed(fn):
    t0 = time.perf_counter()
    r = fn()
    return r, (time.perf_counter() - t0) * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=str(REPO / "build" / "fm-control"))
    ap.add_argument("--gets", type=int, default=500)
    ap.add_argument("--large", action="store_true", help="trash 100,000 entries instead of 10,000 (raises the bound)")
    ap.add_argument("--explain", action="store_true", help="also print EXPLAIN ANALYZE of the trash's file UPDATE")
    args = ap.parse_args()
    st, ctl = None, None
    workdir = tempfile.mkdtemp(prefix="fm-bench-folders-")
    try:
        log("starting a private stack")
        st = start_stack()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FM_")}
        env.update(st.env)
        env.update({"FM_JWT_SECRET": secrets.token_urlsafe(48), "FM_ACCESS_TTL_S": "7200",
                    "FM_GRACEFUL_TIMEOUT_MS": "2000", "FM_SCHEMA_DIR": str(REPO / "schema"),
                    "FM_PG_TIMEOUT_MS": "60000", "FM_REDIS_TIMEOUT_MS": "60000",
                    "FM_FOLDER_TRASH_MAX": "100000" if args.large else "10000"})
        p = subprocess.run([args.binary, "migrate"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"migrate failed: {p.stdout[-1000:]}")
        ctl = Control(args.binary, env, workdir, 2, None)
        email, password = f"bench-{secrets.token_hex(4)}@example.com", secrets.token_urlsafe(18)
        owner = requests.post(ctl.base + "/v1/auth/register", json={"email": email, "password": password},
                              timeout=30).json()["user"]["id"]
        token = requests.post(ctl.base + "/v1/auth/login", json={"email": email, "password": password},
                              timeout=30).json()["access_token"]
        h = {"Authorization": f"Bearer {token}"}
        db = Db(st.env)
        log("making the trees")
        dest = tree(db, owner, 0, 0, 0)[0]
        big, big_counts = tree(db, owner, 100, 99, 0)  # 10,000 descendant folders: FM_FOLDER_MOVE_MAX
        # FM_FOLDER_TRASH_MAX entries: 1 + 10 + 990 folders and 8,999 files; --large: 10,001 + 89,999
        root, counts = tree(db, owner, 100, 99, 89999) if args.large else tree(db, owner, 10, 99, 8999)
        deep = db.run(f"SELECT id FROM folders WHERE ancestors @> ARRAY['{root}'::uuid] "
                      f"AND cardinality(ancestors) = 2 LIMIT 1")[0]
        s = requests.Session()
        for _ in range(20):
            s.get(ctl.base + f"/v1/folders/{deep}", headers=h, timeout=10)
        gets, health = [], []
        for _ in range(args.gets):
            r, ms = timed(lambda: s.get(ctl.base + f"/v1/folders/{deep}", headers=h, timeout=10))
            assert r.status_code == 200, r.text
            gets.append(ms)
            _, ms = timed(lambda: s.get(ctl.base + "/healthz", timeout=10))
            health.append(ms)
        if args.explain:  # the SQL alone, rolled back: what is PostgreSQL's share of the route's time
            for sql in (f"SELECT count(*) FROM fm_folder_trash('{owner}', '{root}', 100000)",
                        f"SELECT count(*) FROM fm_folder_update('{owner}', '{big}', NULL, true, '{dest}', false,"
                        f" 10000, 100000)"):
                out = db.run(f"BEGIN; EXPLAIN (ANALYZE, TIMING OFF) {sql}; ROLLBACK;")
                print(f"- `{sql[:60]}…`: {[x for x in out if 'Execution Time' in x][0].strip()}")
                nested = subprocess.run(
                    ["/usr/bin/psql", "-X", "-q", "-tA", "-h", "127.0.0.1", "-p", str(db.port), "-U", "postgres",
                     "-d", db.dbname, "-c", "LOAD 'auto_explain'", "-c", "SET auto_explain.log_min_duration = 100",
                     "-c", "SET auto_explain.log_nested_statements = on", "-c", "SET client_min_messages = log",
                     "-c", f"BEGIN; {sql}; ROLLBACK;"], capture_output=True, text=True, timeout=120)
                for line in nested.stderr.splitlines():  # the nested statements over 100 ms
                    if "duration" in line or "Query Text" in line:
                        print("    " + line.strip()[:160])
            print()
        move, move_ms = timed(lambda: s.patch(ctl.base + f"/v1/folders/{big}", json={"parent_id": dest},
                                              headers=h, timeout=120))
        assert move.status_code == 200, move.text
        gone, trash_ms = timed(lambda: s.delete(ctl.base + f"/v1/folders/{root}", headers=h, timeout=120))
        assert gone.status_code == 204, gone.text
        back, restore_ms = timed(lambda: s.post(ctl.base + f"/v1/folders/{root}/restore", headers=h, timeout=120))
        assert back.status_code == 200, back.text
        q = statistics.quantiles
        print(f"## Folder routes at their bounds ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"load {' '.join(Path('/proc/loadavg').read_text().split()[:3])}, {args.binary})\n")
        print(f"moved: {big_counts.replace('|', ' folders, ')} files; trashed: {counts.replace('|', ' folders, ')} files\n")
        print("| call | wall time |\n|---|---|")
        print(f"| `GET /v1/folders/{{id}}` (3 deep), p50 / p99 of {args.gets} | {statistics.median(gets):.2f} / "
              f"{q(gets, n=100)[98]:.2f} ms |")
        print(f"| `GET /healthz` same loop, p50 / p99 | {statistics.median(health):.2f} / "
              f"{q(health, n=100)[98]:.2f} ms |")
        print(f"| `PATCH` move rewriting 10,000 descendant folders | {move_ms:.0f} ms |")
        print(f"| `DELETE` of the trashed tree (all READY, on 1,000 blobs; Redis work included) | {trash_ms:.0f} ms |")
        print(f"| `POST …/restore` of the same | {restore_ms:.0f} ms |")
    finally:
        if ctl is not None:
            ctl.stop()
        if st is not None:
            st.stop()


if __name__ == "__main__":
    main()
