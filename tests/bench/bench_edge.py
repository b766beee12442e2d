#!/usr/bin/python3
"""Benchmark of fm-edge cache hits (DESIGN.md §8): a 4 KiB object behind a signed URL (botocore CloudFrontSigner,
RSA-2048, canned policy; fm-edge verifies a URL's RSA signature once and then remembers it until it expires) against nginx serving the same file from disk in
the same run (wrk, HTTP/1.1 keep-alive, 64 connections), then MB/s for a 1 MiB object, the cold-miss latency (and,
for a --cold-mib object, the time to the headers and to the first body byte against the whole body: a cold miss is
streamed while it is filled), and the time to render an on-the-fly variant of a 12 MP JPEG on a cache miss (p50 of --variants renders, each with
other parameters, from the cached original) and the variant hit rate when the same URLs are asked again.

    FM_BUILD_DIR=build /usr/bin/python3 tests/bench/bench_edge.py [--duration 10] [--threads 2] [--cold-only]
    FM_BUILD_DIR=build /usr/bin/python3 tests/bench/bench_edge.py --render-load-only [--render-clients 16]

--render-load-only times cold misses of fresh 4 KiB objects, idle and while --render-clients threads ask for distinct
?w=&h= of one public 12 MP PNG as fast as they are answered (issue 10 #4: renders used to share the origin fills'
pool); run it with FM_BUILD_DIR of the build before and after a change to compare.

Starts a private stack (tests/integration/stackfixture.py; RGW is the origin), fm-edge and nginx (same worker
count, sendfile on, access log off) on free loopback ports; everything is stopped by PID at the end. The load
generator shares the 2 cores with the server under test, as in every figure of docs/benchmarks.md.
"""
import argparse
import datetime
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration"))
from stackfixture import free_ports, start_stack  # noqa: E402

BUILD_DIR = Path(os.environ.get("FM_BUILD_DIR", REPO / "build"))


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def wait_http(url, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def wrk(url, duration, connections, threads=2):
    p = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", url],
                       capture_output=True, text=True, timeout=duration + 60)
    out = p.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(KB|MB|GB)", out)
    mbps = float(transfer.group(1)) * {"KB": 1 / 1024, "MB": 1, "GB": 1024}[transfer.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{url}: {non2xx.group(1)} error answers\n{out}")
    return rps, float(p99.group(1)) * scale, mbps


def edge_metric(port, name):
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    m = re.search(rf"^{name}(?:{{}})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def photo_jpeg():
    """A 4000×3000 photo-like JPEG: a gradient with mild noise, about the size a phone camera writes."""
    import io
    from PIL import Image
    base = Image.linear_gradient("L").resize((4000, 3000))
    noise = Image.effect_noise((4000, 3000), 24)
    rgb = Image.merge("RGB", (base, Image.blend(base, noise, 0.5), noise))
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=90)
    return out.getvalue()


def bench_variants(s3, bucket, signer, edge_port, expires, count):
    """Renders `count` + 1 variants of one 12 MP JPEG (distinct widths: each a miss), then asks for them again."""
    key = f"incoming/{uuid.uuid4()}"
    body = photo_jpeg()
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="image/jpeg")
    urls = [signer.generate_presigned_url(f"http://127.0.0.1:{edge_port}/f/{key}?file={uuid.uuid4()}&w={256 + 8 * i}&format=webp",
                                          date_less_than=expires) for i in range(count + 1)]
    times = []
    for url in urls:
        t = time.monotonic()
        r = requests.get(url, timeout=120)
        times.append((time.monotonic() - t) * 1000)
        assert r.status_code == 200 and r.headers["Content-Type"] == "image/webp", r.text[:300]
    hits_before = edge_metric(edge_port, "fm_edge_variant_hits_total")
    renders_before = edge_metric(edge_port, "fm_edge_variant_renders_total")
    hit_times = []
    for url in urls[1:]:
        t = time.monotonic()
        r = requests.get(url, timeout=120)
        hit_times.append((time.monotonic() - t) * 1000)
        assert r.status_code == 200
    hits = edge_metric(edge_port, "fm_edge_variant_hits_total") - hits_before
    renders = edge_metric(edge_port, "fm_edge_variant_renders_total") - renders_before
    return key, len(body), times[0], times[1:], hit_times, hits / max(1, hits + renders)


def noisy_png():
    """A 4000×3000 PNG of noise, ~21 MB as in the issue's report: every render decodes 12 MP through zlib."""
    import io
    from PIL import Image
    noise = Image.effect_noise((4000, 3000), 64)
    rgb = Image.merge("RGB", (noise, Image.linear_gradient("L").resize((4000, 3000)), noise))
    out = io.BytesIO()
    rgb.save(out, "PNG", compress_level=1)
    return out.getvalue()


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def bench_render_load(stack, s3, bucket, signer, expires, edge_port, clients, samples, seconds_before=1.0):
    """The issue's measurement: the cold-miss latency of other objects (fresh 4 KiB objects behind signed URLs, one at
    a time) while `clients` threads ask for distinct ?w=&h= of one public 12 MP PNG as fast as they are answered
    (an attacker does not honour Retry-After). Returns (idle ms list, loaded ms list, render answers by status)."""
    import collections
    import random
    import threading
    from helpers_fm import redis_cmd
    png_key = f"incoming/{uuid.uuid4()}"
    s3.put_object(Bucket=bucket, Key=png_key, Body=noisy_png(), ContentType="image/png")
    redis_cmd(stack, 0, "SADD", "fm:public", png_key)
    assert requests.get(f"http://127.0.0.1:{edge_port}/p/{png_key}", timeout=120).status_code == 200

    def fresh_urls(n):
        urls = []
        for _ in range(n):
            k = f"incoming/{uuid.uuid4()}"
            s3.put_object(Bucket=bucket, Key=k, Body=os.urandom(4096), ContentType="application/octet-stream")
            urls.append(signer.generate_presigned_url(f"http://127.0.0.1:{edge_port}/f/{k}", date_less_than=expires))
        return urls

    def cold_misses(urls):
        out = []
        for url in urls:
            t = time.monotonic()
            r = requests.get(url, timeout=120)
            out.append((time.monotonic() - t) * 1000)
            assert r.status_code == 200 and len(r.content) == 4096, r.status_code
        return out

    idle = cold_misses(fresh_urls(samples))
    loaded_urls = fresh_urls(samples)
    statuses = collections.Counter()
    stop = threading.Event()

    def attacker(index):
        session = requests.Session()
        rng = random.Random(index)
        while not stop.is_set():
            w, h = rng.randrange(64, 4000), rng.randrange(64, 3000)
            try:
                r = session.get(f"http://127.0.0.1:{edge_port}/p/{png_key}?w={w}&h={h}", timeout=120)
                statuses[r.status_code] += 1
            except requests.RequestException:
                statuses["error"] += 1

    threads = [threading.Thread(target=attacker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds_before)  # the renders pile up
    loaded = cold_misses(loaded_urls)
    stop.set()
    for t in threads:
        t.join(180)
    return idle, loaded, statuses


def print_render_load(idle, loaded, statuses, clients, label):
    answered = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0])))
    print(f"| {label} | {percentile(idle, 0.5):.1f} / {percentile(idle, 0.95):.1f} ms | "
          f"{percentile(loaded, 0.5):.1f} / {percentile(loaded, 0.95):.1f} / {max(loaded):.0f} ms | {answered} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", type=int, default=15, help="variant cache misses measured")
    ap.add_argument("--cold-mib", type=int, default=200, help="size of the object whose cold first byte is timed")
    ap.add_argument("--cold-only", action="store_true", help="only the cold misses (no wrk, nginx or variants)")
    ap.add_argument("--render-load-only", action="store_true",
                    help="only the cold-miss latency under --render-clients clients asking for distinct variants")
    ap.add_argument("--render-clients", type=int, default=16)
    ap.add_argument("--render-samples", type=int, default=40, help="cold misses timed, idle and under the load")
    args = ap.parse_args()

    from botocore.signers import CloudFrontSigner
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    work = Path(tempfile.mkdtemp(prefix="fm-bench-edge-"))
    procs = []
    stack = start_stack()
    try:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (work / "pub.pem").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        signer = CloudFrontSigner("KBENCH1", lambda m: key.sign(m, padding.PKCS1v15(), hashes.SHA1()))

        s3 = stack.s3_client()
        bucket = stack.env["FM_S3_BUCKET"]
        objects = {}
        for label, size in (("4KiB", 4096), ("1MiB", 1 << 20), ("big", args.cold_mib << 20)):
            k = f"incoming/{uuid.uuid4()}"
            body = os.urandom(size)
            s3.put_object(Bucket=bucket, Key=k, Body=body, ContentType="application/octet-stream")
            objects[label] = (k, body)

        edge_port, nginx_port = free_ports(2)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FM_")}
        env.update(stack.env)
        env.update({"FM_JWT_SECRET": secrets.token_hex(32), "FM_THREADS": str(args.threads),
                    "FM_EDGE_HTTPS_PORT": "0", "FM_LOG_LEVEL": "warn",
                    "FM_EDGE_CF_PUBLIC_KEYS": f"KBENCH1={work / 'pub.pem'}"})

        def start_edge(name, port, **extra):
            edge_env = dict(env, FM_EDGE_HTTP_PORT=str(port), FM_EDGE_CACHE_DIR=str(work / f"cache-{name}"),
                            FM_EDGE_PUBLIC_BASE=f"http://127.0.0.1:{port}", **extra)
            with open(work / f"edge-{name}.log", "wb") as edge_log:
                proc = subprocess.Popen([str(BUILD_DIR / "fm-edge")], env=edge_env, stdout=edge_log,
                                        stderr=subprocess.STDOUT)
            procs.append((proc, signal.SIGTERM))
            wait_http(f"http://127.0.0.1:{port}/healthz")
            return proc

        expires = datetime.datetime.now(tz=datetime.timezone.utc) + datetime.timedelta(hours=2)
        if args.render_load_only:
            from helpers_fm import redis_url
            print(f"### Cold misses of other objects under {args.render_clients} clients asking for distinct "
                  f"`?w=&h=` of one public 12 MP PNG ({datetime.date.today()}, {os.cpu_count()} cores, "
                  f"FM_THREADS={args.threads}, {BUILD_DIR})\n")
            print("| edge | cold miss idle: p50 / p95 | cold miss under the render load: p50 / p95 / max | "
                  "render answers during the load |")
            print("|---|---|---|---|")
            setups = [("defaults", {})]
            if (BUILD_DIR / "fm-edge").exists() and b"FM_EDGE_RENDERS_PER_CLIENT" in (BUILD_DIR / "fm-edge").read_bytes():
                setups.append(("FM_EDGE_RENDERS_PER_CLIENT=64, FM_EDGE_RENDERS_MAX=64 (own render pool only)",
                               {"FM_EDGE_RENDERS_PER_CLIENT": "64", "FM_EDGE_RENDERS_MAX": "64"}))
            for i, (label, extra) in enumerate(setups):
                port = free_ports(1)[0]
                proc = start_edge(f"render{i}", port, FM_REDIS_URL=redis_url(stack, 0), **extra)
                idle, loaded, statuses = bench_render_load(stack, s3, bucket, signer, expires, port,
                                                           args.render_clients, args.render_samples)
                print_render_load(idle, loaded, statuses, args.render_clients, label)
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
            return

        start_edge("main", edge_port)

        expires = datetime.datetime.now(tz=datetime.timezone.utc) + datetime.timedelta(hours=2)
        urls = {label: signer.generate_presigned_url(f"http://127.0.0.1:{edge_port}/f/{k}?file={uuid.uuid4()}",
                                                      date_less_than=expires)
                for label, (k, _) in objects.items()}
        cold = {}
        for label in ("4KiB", "1MiB"):
            t = time.monotonic()
            r = requests.get(urls[label], timeout=30)
            cold[label] = (time.monotonic() - t) * 1000
            assert r.status_code == 200 and r.content == objects[label][1], r.text[:300]
        # The large cold miss: headers and first byte come at the origin's pace, the body as the fill writes it.
        t = time.monotonic()
        with requests.get(urls["big"], stream=True, timeout=120) as r:
            big_headers_ms = (time.monotonic() - t) * 1000
            first = r.raw.read(1)
            big_first_ms = (time.monotonic() - t) * 1000
            rest = r.raw.read()
            big_total_ms = (time.monotonic() - t) * 1000
            assert r.status_code == 200 and first + rest == objects["big"][1]
        big_line = (f"Cold miss of a {args.cold_mib} MiB object: headers {big_headers_ms:.0f} ms, first body byte "
                    f"{big_first_ms:.0f} ms, whole body {big_total_ms:.0f} ms.")
        if args.cold_only:
            print(f"Cold miss (origin fill from the local RGW, then served): 4 KiB {cold['4KiB']:.1f} ms, "
                  f"1 MiB {cold['1MiB']:.1f} ms.\n{big_line}")
            return

        # nginx serves the very same files: copies of the edge's cached data under their key names.
        root = work / "www"
        work.chmod(0o755)  # nginx workers drop to an unprivileged user when started as root
        for label, (k, body) in objects.items():
            if label == "big":
                continue
            (root / Path(k).parent).mkdir(parents=True, exist_ok=True)
            (root / k).write_bytes(body)
        conf = work / "nginx.conf"
        conf.write_text(f"""
worker_processes {args.threads};
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
daemon off;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on; tcp_nopush on; tcp_nodelay on;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path {work}/nginx-tmp; proxy_temp_path {work}/nginx-tmp; fastcgi_temp_path {work}/nginx-tmp;
    uwsgi_temp_path {work}/nginx-tmp; scgi_temp_path {work}/nginx-tmp;
    server {{ listen 127.0.0.1:{nginx_port}; root {root}; }}
}}
""")
        nginx = subprocess.Popen(["/usr/sbin/nginx", "-c", str(conf), "-p", str(work)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        procs.append((nginx, signal.SIGQUIT))
        wait_http(f"http://127.0.0.1:{nginx_port}/{objects['4KiB'][0]}")
        check = requests.get(f"http://127.0.0.1:{nginx_port}/{objects['4KiB'][0]}", timeout=5)
        assert check.status_code == 200 and check.content == objects["4KiB"][1], check.status_code

        rows = []
        d = args.duration
        log("4 KiB: edge …")
        memory_before = edge_metric(edge_port, "fm_edge_memory_hits_total")
        e_rps, e_p99, _ = wrk(urls["4KiB"], d, 64)
        memory_hits = edge_metric(edge_port, "fm_edge_memory_hits_total") - memory_before
        after = requests.get(urls["4KiB"], timeout=5)
        assert after.status_code == 200 and after.content == objects["4KiB"][1], after.status_code
        log("4 KiB: nginx …")
        n_rps, n_p99, _ = wrk(f"http://127.0.0.1:{nginx_port}/{objects['4KiB'][0]}", d, 64)
        rows.append(("cache hit 4 KiB, signed URL, 64 conns", e_rps, e_p99, n_rps, n_p99))
        # The same object on an edge without the memory tier: every hit opens and reads the cached file.
        disk_port = free_ports(1)[0]
        disk_edge = start_edge("disk", disk_port, FM_EDGE_MEMORY_BYTES="0")
        disk_url = signer.generate_presigned_url(f"http://127.0.0.1:{disk_port}/f/{objects['4KiB'][0]}?file={uuid.uuid4()}",
                                                 date_less_than=expires)
        check = requests.get(disk_url, timeout=30)  # its cold miss
        assert check.status_code == 200 and check.content == objects["4KiB"][1], check.status_code
        log("4 KiB: edge, memory tier off …")
        d_rps, d_p99, _ = wrk(disk_url, d, 64)
        disk_edge.send_signal(signal.SIGTERM)
        disk_edge.wait(30)
        log("1 MiB: edge …")
        e1_rps, e1_p99, e1_mb = wrk(urls["1MiB"], d, 16)
        log("1 MiB: nginx …")
        n1_rps, n1_p99, n1_mb = wrk(f"http://127.0.0.1:{nginx_port}/{objects['1MiB'][0]}", d, 16)

        print(f"### fm-edge cache hits ({datetime.date.today()}, {os.cpu_count()} cores, FM_THREADS={args.threads}, "
              f"nginx worker_processes={args.threads}, wrk -t2, {d} s each)\n")
        print("| what | fm-edge | nginx (same file, same run) | ratio |")
        print("|---|---|---|---|")
        print(f"| 4 KiB, 64 connections: req/s | {e_rps:,.0f} | {n_rps:,.0f} | {e_rps / n_rps:.2f} |")
        print(f"| 4 KiB, 64 connections: p99 | {e_p99:.2f} ms | {n_p99:.2f} ms | |")
        print(f"| 4 KiB, FM_EDGE_MEMORY_BYTES=0 (every hit reads the file): req/s | {d_rps:,.0f} | {n_rps:,.0f} | "
              f"{d_rps / n_rps:.2f} |")
        print(f"| 4 KiB, FM_EDGE_MEMORY_BYTES=0: p99 | {d_p99:.2f} ms | {n_p99:.2f} ms | |")
        print(f"| 1 MiB, 16 connections: MB/s | {e1_mb:,.0f} | {n1_mb:,.0f} | {e1_mb / n1_mb:.2f} |")
        print(f"| 1 MiB, 16 connections: p99 | {e1_p99:.2f} ms | {n1_p99:.2f} ms | |")
        print(f"\nThe 4 KiB load's hits answered from the memory tier: {memory_hits:,.0f} (fm_edge_memory_hits_total); "
              "the answer after the load was checked byte for byte.")
        print(f"\nCold miss (origin fill from the local RGW, then served): 4 KiB {cold['4KiB']:.1f} ms, "
              f"1 MiB {cold['1MiB']:.1f} ms.\n{big_line}")

        log("variants …")
        photo_key, photo_size, first_ms, render_ms, hit_ms, hit_rate = bench_variants(
            s3, bucket, signer, edge_port, expires, args.variants)
        render_ms.sort()
        hit_ms.sort()
        print(f"\nVariants of a 12 MP JPEG (4000×3000, {photo_size / 1e6:.1f} MB), `?w=…&format=webp`, one request at "
              f"a time:\n")
        print("| what | time |")
        print("|---|---|")
        print(f"| first variant: origin fetch + render | {first_ms:.0f} ms |")
        print(f"| render on a variant miss (original cached), p50 of {len(render_ms)} | {render_ms[len(render_ms) // 2]:.0f}"
              f" ms (min {render_ms[0]:.0f}, max {render_ms[-1]:.0f}) |")
        print(f"| same URLs again: variant hit, p50 | {hit_ms[len(hit_ms) // 2]:.1f} ms |")
        print(f"| variant hit rate on the second pass | {hit_rate:.0%} |")
    finally:
        for p, stop_signal in procs:
            if p.poll() is None:
                p.send_signal(stop_signal)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
