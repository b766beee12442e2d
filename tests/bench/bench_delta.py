#!/usr/bin/python3
"""The change log of GET /v1/files/delta (schema/016_trash_delta.sql; docs/benchmarks.md "Delta and its change
log"): what its triggers cost the write-behind batch insert, and the plan of the feed's query on a big log.

1. A batch insert of 1,000 file rows in one statement (the shape of records_flush.c's insert: one INSERT ... SELECT
   over arrays), --runs times each, median and p90 in ms, with
   - no change-log trigger (the schema before 016: the triggers disabled),
   - the statement-level triggers as shipped (one INSERT ... SELECT from the transition table per statement),
   - a row-level trigger doing the same (one INSERT per row), for comparison,
   interleaved run after run in a rotating order; each run's rows are deleted again outside the timing.
2. 1,000,000 change-log rows for one owner (and 200,000 for 20 others), then EXPLAIN (ANALYZE, BUFFERS) of the
   feed's page query (fm_delta's, with the index order (owner_id, xid, seq)) for a cursor in the middle, and the
   time of fm_delta itself over a page of 1,000.

Runs against a PostgreSQL it is given (psql connection options), in a database of its own that it drops and
creates (default fm_bench_delta), applying schema/*.sql first:

    /usr/bin/python3 tests/bench/bench_delta.py --psql="-h 127.0.0.1 -p 5432 -U postgres" [--runs 20]
"""
import argparse
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OWNER = "00000000-0000-4000-8000-00000000b0b0"


def psql(args, db, sql, quiet=True):
    cmd = ["psql", "-X", "-v", "ON_ERROR_STOP=1", *shlex.split(args), "-d", db]
    if quiet:
        cmd += ["-tA", "-q"]
    r = subprocess.run(cmd, input=sql, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        sys.exit(f"psql failed: {r.stderr}")
    return r.stdout.strip() + ("\n" + r.stderr.strip() if r.stderr.strip() and not quiet else "")


# The three cases interleaved in a rotating order, run after run (the machine is shared and noisy: blocks of one
# case would each meet another load), in one transaction; each run's rows deleted again outside the timing.
INSERT_TIMING = """
CREATE FUNCTION bench_changes_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tree_changes (owner_id, kind, entry_id, op) VALUES (NEW.owner_id, 'file', NEW.id, 'created');
    RETURN NULL;
END $$;
CREATE TRIGGER bench_files_changes_row AFTER INSERT ON files FOR EACH ROW EXECUTE FUNCTION bench_changes_row();
DO $$
DECLARE
    t0 timestamptz;
    ms double precision[];
    cases text[] := ARRAY['none', 'statement', 'row'];
    c integer;
    r double precision[];
BEGIN
    ms := array_fill(0::double precision, ARRAY[3, %(runs)s]);
    FOR i IN 1..%(runs)s LOOP
        FOR k IN 0..2 LOOP
            c := (i + k) %% 3 + 1;
            EXECUTE format('ALTER TABLE files %%s TRIGGER files_changes_ins',
                           CASE WHEN c = 2 THEN 'ENABLE' ELSE 'DISABLE' END);
            EXECUTE format('ALTER TABLE files %%s TRIGGER bench_files_changes_row',
                           CASE WHEN c = 3 THEN 'ENABLE' ELSE 'DISABLE' END);
            t0 := clock_timestamp();
            INSERT INTO files (owner_id, name, size, content_type, claimed_sha256, status)
                SELECT o, n, s, 'text/plain', h, 'PENDING_UPLOAD'
                FROM unnest((SELECT array_agg('%(owner)s'::uuid) FROM generate_series(1, 1000)),
                            (SELECT array_agg('bench-' || i || '-' || g) FROM generate_series(1, 1000) g),
                            (SELECT array_agg(g::bigint) FROM generate_series(1, 1000) g),
                            (SELECT array_agg(sha256((i * 100000 + g)::text::bytea)) FROM generate_series(1, 1000) g))
                     AS x(o, n, s, h);
            ms[c][i] := extract(epoch FROM clock_timestamp() - t0) * 1000;
            ALTER TABLE files DISABLE TRIGGER files_changes_del;
            DELETE FROM files WHERE owner_id = '%(owner)s';
            ALTER TABLE files ENABLE TRIGGER files_changes_del;
            DELETE FROM tree_changes;
        END LOOP;
    END LOOP;
    FOR c IN 1..3 LOOP
        r := ARRAY(SELECT ms[c][j] FROM generate_series(1, %(runs)s) j);
        RAISE NOTICE 'RESULT %%|%%|%%', cases[c],
            (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY m) FROM unnest(r) m),
            (SELECT percentile_cont(0.9) WITHIN GROUP (ORDER BY m) FROM unnest(r) m);
    END LOOP;
END $$;
ALTER TABLE files ENABLE TRIGGER files_changes_ins;
DROP TRIGGER bench_files_changes_row ON files;
DROP FUNCTION bench_changes_row();
"""


def timing(args, db, runs):
    out = subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", *shlex.split(args), "-d", db, "-q"],
                         input=INSERT_TIMING % {"runs": runs, "owner": OWNER}, capture_output=True, text=True,
                         timeout=3600)
    lines = [ln.split("RESULT ", 1)[1].split("|") for ln in out.stderr.splitlines() if "RESULT" in ln]
    if out.returncode != 0 or len(lines) != 3:
        sys.exit(f"timing failed: {out.stderr}")
    return {c: (float(p50), float(p90)) for c, p50, p90 in lines}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--psql", default="-h 127.0.0.1 -U postgres", help="psql connection options")
    ap.add_argument("--db", default="fm_bench_delta")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--log-rows", type=int, default=1000000)
    a = ap.parse_args()

    psql(a.psql, "postgres", f"DROP DATABASE IF EXISTS {a.db}; CREATE DATABASE {a.db};")
    for f in sorted((ROOT / "schema").glob("*.sql")):
        psql(a.psql, a.db, f.read_text())
    psql(a.psql, a.db, f"INSERT INTO users (id, email, password_hash) VALUES ('{OWNER}', 'bench-delta@example.com', 'x')")
    version = psql(a.psql, a.db, "SHOW server_version")
    print(f"# bench_delta: PostgreSQL {version}, {a.runs} runs per case\n")

    print("## 1. One INSERT of 1,000 file rows (ms; median / p90)\n")
    print("| change log | median | p90 |\n|---|---|---|")
    t = timing(a.psql, a.db, a.runs)
    for case, what in (("none", "none (before schema 016)"), ("statement", "statement-level triggers (shipped)"),
                       ("row", "a row-level trigger instead")):
        print(f"| {what} | {t[case][0]:.1f} | {t[case][1]:.1f} |")
    print(f"\nstatement-level: {(t['statement'][0] / t['none'][0] - 1) * 100:+.0f} % over none; row-level: "
          f"{(t['row'][0] / t['none'][0] - 1) * 100:+.0f} %\n")

    print(f"## 2. The feed's query on a log of {a.log_rows:,} rows for one owner (+200,000 for 20 others)\n")
    # the rows as finished transactions made them: their xids spread over the ids below the horizon (a scratch
    # cluster has used few, so many changes share one), in (xid, seq) order
    horizon = int(psql(a.psql, a.db, "SELECT pg_snapshot_xmin(pg_current_snapshot())"))
    span = max(horizon - 4, 1)
    psql(a.psql, a.db, f"""
        INSERT INTO tree_changes (xid, owner_id, kind, entry_id, op, at)
            SELECT (3 + (g::bigint * {span}) / {a.log_rows + 1})::text::xid8, '{OWNER}', 'file', gen_random_uuid(),
                   'created', now()
            FROM generate_series(1, {a.log_rows}) g;
        INSERT INTO tree_changes (xid, owner_id, kind, entry_id, op, at)
            SELECT (3 + (g::bigint * {span}) / 200001)::text::xid8,
                   ('00000000-0000-4000-8000-' || lpad((g % 20)::text, 12, '0'))::uuid,
                   'file', gen_random_uuid(), 'updated', now()
            FROM generate_series(1, 200000) g;
        VACUUM ANALYZE tree_changes;""")
    print(f"xids 3..{horizon - 1} (the horizon was {horizon})")
    mid_xid, mid_seq = psql(a.psql, a.db, f"SELECT xid, seq FROM tree_changes WHERE owner_id = '{OWNER}' "
                                          f"ORDER BY xid, seq OFFSET {a.log_rows // 2} LIMIT 1").split("|")
    print(f"cursor in the middle: (xid {mid_xid}, seq {mid_seq})\n\n```")
    print(psql(a.psql, a.db, f"""
        EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
        SELECT c.seq, c.xid, c.kind, c.entry_id, c.op FROM tree_changes c
        WHERE c.owner_id = '{OWNER}' AND (c.xid, c.seq) > ('{mid_xid}'::xid8, {mid_seq})
          AND c.xid < pg_snapshot_xmin(pg_current_snapshot())
        ORDER BY c.xid, c.seq LIMIT 1001;""", quiet=False))
    print("```\n\nfm_delta, one page of 1,000 with their entries (the entries are purged rows here: null), 5 runs:\n\n```")
    print(psql(a.psql, a.db, f"""\\timing on
        SELECT length(out_changes), out_has_more FROM fm_delta('{OWNER}', '{mid_xid}', {mid_seq}, 1000);
        SELECT length(out_changes), out_has_more FROM fm_delta('{OWNER}', '{mid_xid}', {mid_seq}, 1000);
        SELECT length(out_changes), out_has_more FROM fm_delta('{OWNER}', '{mid_xid}', {mid_seq}, 1000);
        SELECT length(out_changes), out_has_more FROM fm_delta('{OWNER}', '{mid_xid}', {mid_seq}, 1000);
        SELECT length(out_changes), out_has_more FROM fm_delta('{OWNER}', '{mid_xid}', {mid_seq}, 1000);
        """, quiet=False))
    print("```")
    psql(a.psql, "postgres", f"DROP DATABASE {a.db}")


if __name__ == "__main__":
    main()
