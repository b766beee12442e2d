#!/usr/bin/python3
"""A legitimate login during a flood of logins (issue 10 #9: "one hashing thread lets 450 logins delay a
legitimate one to 4 s"), with the hashing queue bounded as shipped (FM_HASH_QUEUE_MAX=16) and as it was (1024).

    /usr/bin/python3 tests/bench/bench_login_flood.py [--flood 450] [--rounds 3] [--queues 1024,32,16] [--build-dir build]

One run starts a private stack (tests/integration/stackfixture.py), migrates it and, for each queue bound, a fresh
fm-control with FM_HASH_THREADS=1, the default argon2id cost (m=19456 KiB, t=2, p=1) and the login limits raised
(the flood stands for many clients; what is measured is the hashing queue, not the limiter). Each round: h2load
sends `--flood` logins of unknown accounts over as many HTTP/1.1 connections at once (each costs a hash against
the dummy), and 0.3 s later one login of a registered user with the right password is timed. Printed per bound: the
flood's answers by status and its duration, and the legitimate login's status and latency per round. No figure is
asserted; a 503 is the bounded queue's answer ("retry in 1 s"), given at once instead of after the wait.
"""
import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "bench"))
sys.path.insert(0, str(REPO / "tests" / "integration"))
from bench_control import Control, log  # noqa: E402
from stackfixture import start_stack  # noqa: E402

PASSWORD = "bench-" + secrets.token_urlsafe(12)


def flood(base, count, body_path, out):
    p = subprocess.run(["h2load", "--h1", "-n", str(count), "-c", str(count), "-d", str(body_path),
                        "-H", "content-type: application/json", base + "/v1/auth/login"],
                       capture_output=True, text=True, timeout=300)
    out["text"] = p.stdout
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", p.stdout)
    took = re.search(r"finished in ([\d.]+)(m?s)", p.stdout)
    out["codes"] = tuple(int(c) for c in codes.groups()) if codes else None
    out["seconds"] = (float(took.group(1)) / (1000 if took.group(2) == "ms" else 1)) if took else None


def one_round(base, email, count, body_path):
    result = {}
    t = threading.Thread(target=flood, args=(base, count, body_path, result))
    t.start()
    time.sleep(0.3)  # the flood's requests are in (h2load connects them all at once)
    t0 = time.monotonic()
    r = requests.post(base + "/v1/auth/login", json={"email": email, "password": PASSWORD}, timeout=120)
    latency = time.monotonic() - t0
    t.join()
    return r.status_code, r.headers.get("Retry-After"), latency, result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flood", type=int, default=450)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--queues", default="1024,32,16")
    ap.add_argument("--build-dir", default=str(REPO / "build"))
    args = ap.parse_args()
    binary = Path(args.build_dir) / "fm-control"
    workdir = Path(tempfile.mkdtemp(prefix="fm-bench-flood-"))
    body_path = workdir / "login.json"
    body_path.write_text(json.dumps({"email": "nobody-" + secrets.token_hex(6) + "@example.test",
                                     "password": "not-the-password"}))
    st = start_stack(prepare_s3=False)
    rows = []
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FM_")}
        env.update(st.env)
        env.update({"FM_JWT_SECRET": secrets.token_urlsafe(48), "FM_SCHEMA_DIR": str(REPO / "schema"),
                    "FM_HASH_THREADS": "1", "FM_LOGIN_LIMIT_IP": "1000000", "FM_LOGIN_LIMIT_NET": "1000000",
                    "FM_LOGIN_LIMIT_ACCOUNT": "100000", "FM_LOGIN_LIMIT_ACCOUNT_IP": "100000",
                    "FM_REGISTER_LIMIT_IP": "1000"})
        p = subprocess.run([str(binary), "migrate"], env=env, capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            raise RuntimeError(p.stderr)
        for queue in [int(q) for q in args.queues.split(",")]:
            ctl = Control(binary, dict(env, FM_HASH_QUEUE_MAX=str(queue)), workdir, threads=2, tls=None)
            try:
                email = f"bench-{secrets.token_hex(6)}@example.test"
                r = requests.post(ctl.base + "/v1/auth/register", json={"email": email, "password": PASSWORD},
                                  timeout=30)
                r.raise_for_status()
                for n in range(args.rounds):
                    log(f"queue {queue}: round {n + 1}")
                    rows.append((queue, n + 1) + one_round(ctl.base, email, args.flood, body_path))
                    time.sleep(1)
            finally:
                ctl.stop()
    finally:
        st.stop()
    print(f"| FM_HASH_QUEUE_MAX | round | flood of {args.flood}: 2xx/4xx/5xx | flood took | legitimate login | its latency |")
    print("|---|---|---|---|---|---|")
    for queue, n, status, retry_after, latency, flood_result in rows:
        codes = flood_result.get("codes")
        flood_codes = f"{codes[0]}/{codes[2]}/{codes[3]}" if codes else "?"
        took = f"{flood_result['seconds']:.2f} s" if flood_result.get("seconds") else "?"
        legit = f"{status}" + (f" (Retry-After {retry_after})" if retry_after else "")
        print(f"| {queue} | {n} | {flood_codes} | {took} | {legit} | {latency * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
