"""The web client end to end in a real browser: tests/browser/upload.test.mjs (Node's test runner, playwright-core,
Debian's Chromium) against an fm-control of its own that serves web/ and whose bucket CORS allows its origin, and a
real fm-worker (clamd is part of the stack) sharing that instance's own Redis database (BROWSER_REDIS_DB): `complete`
puts each upload's job on that database's stream, the worker makes the file READY and adds its blob to the owner's
dedupe index there, so choosing the same file again gets the server's real dedupe answer. No other module's
instance uses that database, so the worker takes only this module's jobs.

Skipped only with FM_BROWSER_TESTS=0. A missing Chromium, Node or playwright-core is a failure (infra/setup
installs them), not a skip. Screenshots and the runner's output land in <log folder>/browser-<build folder>/
(the log folder is $FM_TEST_LOG_DIR, or a temporary one).
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import BUILD_DIR
from helpers_fm import redis_url
from stackfixture import free_ports

REPO = Path(__file__).resolve().parents[2]
BROWSER_DIR = REPO / "tests" / "browser"
CHROMIUM = os.environ.get("FM_CHROMIUM", "/usr/bin/chromium")
BROWSER_REDIS_DB = 59  # this module's fm-control and fm-worker (job stream, dedupe index); 47+ is free

pytestmark = pytest.mark.skipif(os.environ.get("FM_BROWSER_TESTS") == "0", reason="FM_BROWSER_TESTS=0")


def allow_origin(stack, origin):
    """Adds `origin` to the bucket's CORS origins, keeping the ones already there (other tests rely on them)."""
    s3 = stack.s3_client()
    try:
        rules = s3.get_bucket_cors(Bucket=stack.env["FM_S3_BUCKET"])["CORSRules"]
        origins = [o for rule in rules for o in rule.get("AllowedOrigins", [])]
    except s3.exceptions.ClientError:
        origins = []
    if origin not in origins:
        origins.append(origin)
    stack.prepare_s3(web_origin=",".join(origins))


def test_browser_upload(controls, workers, stack, log_dir, request):
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: run infra/setup (Debian packages chromium, chromium-driver)"
    node = shutil.which("node")
    assert node, "node is missing: run infra/setup"
    assert (BROWSER_DIR / "node_modules" / "playwright-core" / "package.json").is_file(), \
        "playwright-core is missing: run infra/setup (npm ci --prefix tests/browser)"

    port = free_ports(1)[0]
    origin = f"http://127.0.0.1:{port}"
    allow_origin(stack, origin)
    redis_db = redis_url(stack, BROWSER_REDIS_DB)
    control = controls.start(FM_HTTP_PORT=port, FM_WEB_DIR=str(REPO / "web"), FM_REDIS_URL=redis_db)
    request.addfinalizer(lambda: controls.stop(control))
    worker = workers.start(FM_REDIS_URL=redis_db, FM_WORKER_THREADS=2)
    request.addfinalizer(lambda: workers.stop(worker))

    artifacts = Path(log_dir) / f"browser-{BUILD_DIR.name}"
    artifacts.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FM_")}
    env.update({"FM_TEST_BASE_URL": origin, "FM_TEST_ARTIFACTS": str(artifacts), "FM_CHROMIUM": CHROMIUM})
    try:
        p = subprocess.run([node, "--test", "--test-reporter=spec", "upload.test.mjs"], cwd=BROWSER_DIR, env=env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=900)
    except subprocess.TimeoutExpired as e:
        out = e.output.decode(errors="replace") if isinstance(e.output, bytes) else (e.output or "")
        pytest.fail(f"the browser test did not finish in {e.timeout} s:\n{out}\n"
                    f"screenshots: {artifacts}\nfm-control log: {control.log_path}\n"
                    f"fm-worker log: {worker.log_path}")
    (artifacts / "upload.test.log").write_text(p.stdout)
    assert p.returncode == 0, (f"node --test upload.test.mjs failed ({p.returncode}):\n{p.stdout}\n"
                               f"screenshots: {artifacts}\nfm-control log ({control.log_path}), last lines:\n"
                               f"{control.log_text()[-4000:]}\nfm-worker log ({worker.log_path}), last lines:\n"
                               f"{worker.log_text()[-3000:]}")
    print(p.stdout)
