#!/usr/bin/python3
"""What the bucket's persistent notification topic costs and does on the local Ceph RGW (docs/decisions.md "Local
stack"; issue 10): prints figures, asserts nothing.

    /usr/bin/python3 tests/bench/bench_s3_topic.py [--down 15]

On a private stack (tests/integration/stackfixture.py, stopped by PID at the end) with a tiny webhook of its own:
  1. start delay: a persistent topic is created (infra/lib/s3_prepare.py) and an object PUT at once: seconds until
     its event arrives (RGW looks for new queues every 30 s);
  2. steady state: PUT -> delivery, 10 times;
  3. the webhook answers 503 for 10 s: how often RGW retried, and how soon the event arrived after the first 200;
  4. the webhook refuses connections for --down seconds (fm-control stopped): whether the event arrives within 60 s
     after it listens again -- on Ceph 16.2.15 the queue's worker may hang for good (until radosgw restarts);
  5. if it hung: radosgw restarted, seconds until the queued events arrive.
About 3 to 5 minutes.
"""
import argparse
import http.server
import json
import sys
import threading
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from stackfixture import start_stack  # noqa: E402


class Webhook(http.server.BaseHTTPRequestHandler):
    status = 200
    arrivals = []  # (monotonic time, status answered, keys)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            keys = [urllib.parse.unquote_plus(r["s3"]["object"]["key"]) for r in json.loads(body).get("Records", [])]
        except (ValueError, KeyError, TypeError):
            keys = []
        Webhook.arrivals.append((time.monotonic(), Webhook.status, keys))
        self.send_response(Webhook.status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def serve(port=0):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), Webhook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def delivered(key, since, timeout):
    """Seconds from `since` until `key` was answered 200, or None."""
    deadline = time.monotonic() + timeout
    while True:
        for t, status, keys in list(Webhook.arrivals):
            if status == 200 and key in keys and t >= since:
                return t - since
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def attempts(key):
    return sum(1 for _, _, keys in Webhook.arrivals if key in keys)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--down", type=float, default=15.0, help="seconds the webhook refuses connections (step 4)")
    a = p.parse_args()
    srv = serve()
    port = srv.server_address[1]
    st = start_stack()
    try:
        s3, bucket = st.s3_client(), st.env["FM_S3_BUCKET"]
        url = f"http://127.0.0.1:{port}/v1/events/s3?secret=x"
        put = lambda key: s3.put_object(Bucket=bucket, Key=key, Body=b"x")

        st.prepare_s3(events_url=url, persistent=True)
        t = time.monotonic()
        put("incoming/start")
        d = delivered("incoming/start", t, 90)
        print(f"1. new persistent topic: first event {'never (90 s)' if d is None else f'{d:.1f} s'} after the PUT")

        lat = []
        for i in range(10):
            t = time.monotonic()
            put(f"incoming/steady-{i}")
            lat.append(delivered(f"incoming/steady-{i}", t, 30))
        print("2. steady state, PUT -> delivery (s):", " ".join("-" if x is None else f"{x:.2f}" for x in lat))

        Webhook.status = 503
        put("incoming/refused")
        time.sleep(10)
        Webhook.status = 200
        t = time.monotonic()
        d = delivered("incoming/refused", t, 60)
        print(f"3. webhook answering 503 for 10 s: {attempts('incoming/refused')} deliveries tried; delivered "
              f"{'never (60 s)' if d is None else f'{d * 1000:.0f} ms'} after it answered 200 again")

        srv.shutdown()
        srv.server_close()
        put("incoming/down")
        time.sleep(a.down)
        srv = serve(port)
        t = time.monotonic()
        d = delivered("incoming/down", t, 60)
        put("incoming/after")
        d2 = delivered("incoming/after", time.monotonic(), 30)
        print(f"4. webhook refusing connections for {a.down:.0f} s: that event "
              f"{'not delivered within 60 s' if d is None else f'delivered {d:.2f} s after it listened again'}; "
              f"a later event {'not delivered within 30 s (the queue hangs)' if d2 is None else f'after {d2:.2f} s'}")
        if d is None or d2 is None:
            t = time.monotonic()
            st.restart_ceph()
            r = time.monotonic()
            d = delivered("incoming/down", t, 180)
            print(f"5. radosgw restarted ({r - t:.0f} s): the queued event "
                  f"{'still not delivered 180 s later' if d is None else f'delivered {d - (r - t):.0f} s after it was up'}")
    finally:
        st.stop()
        srv.shutdown()


if __name__ == "__main__":
    main()
