"""Stock Uppy in a real browser: tests/browser/uppy.test.mjs (Node's test runner, playwright-core, Debian's
Chromium, @uppy/core + @uppy/aws-s3 bundled with esbuild) against an fm-control of its own whose bucket CORS allows
its origin, with a 1 s reconciler so a single PUT (Uppy sends no complete) is finished promptly.

Skipped only with FM_BROWSER_TESTS=0. A missing Chromium, Node or npm package is a failure (infra/setup installs
them), not a skip. Screenshots, Uppy's result and the runner's output land in <log folder>/browser-uppy-<build
folder>/ (the log folder is $FM_TEST_LOG_DIR, or a temporary one).
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import BUILD_DIR
from stackfixture import free_ports
from test_browser_upload import allow_origin

REPO = Path(__file__).resolve().parents[2]
BROWSER_DIR = REPO / "tests" / "browser"
CHROMIUM = os.environ.get("FM_CHROMIUM", "/usr/bin/chromium")

pytestmark = pytest.mark.skipif(os.environ.get("FM_BROWSER_TESTS") == "0", reason="FM_BROWSER_TESTS=0")


def test_browser_uppy(controls, stack, log_dir, request):
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: run infra/setup (Debian packages chromium, chromium-driver)"
    node = shutil.which("node")
    assert node, "node is missing: run infra/setup"
    for package in ("playwright-core", "esbuild", "@uppy/core", "@uppy/aws-s3"):
        assert (BROWSER_DIR / "node_modules" / package / "package.json").is_file(), \
            f"{package} is missing: run infra/setup (npm ci --prefix tests/browser)"

    port = free_ports(1)[0]
    origin = f"http://127.0.0.1:{port}"
    allow_origin(stack, origin)
    control = controls.start(FM_HTTP_PORT=port, FM_WEB_DIR=str(REPO / "web"), FM_RECONCILE_INTERVAL_S="1")
    request.addfinalizer(lambda: controls.stop(control))

    artifacts = Path(log_dir) / f"browser-uppy-{BUILD_DIR.name}"
    artifacts.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FM_")}
    env.update({"FM_TEST_BASE_URL": origin, "FM_TEST_ARTIFACTS": str(artifacts), "FM_CHROMIUM": CHROMIUM})
    try:
        p = subprocess.run([node, "--test", "--test-reporter=spec", "uppy.test.mjs"], cwd=BROWSER_DIR, env=env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=600)
    except subprocess.TimeoutExpired as e:
        out = e.output.decode(errors="replace") if isinstance(e.output, bytes) else (e.output or "")
        pytest.fail(f"the Uppy browser test did not finish in {e.timeout} s:\n{out}\n"
                    f"artifacts: {artifacts}\nfm-control log: {control.log_path}")
    (artifacts / "uppy.test.log").write_text(p.stdout)
    assert p.returncode == 0, (f"node --test uppy.test.mjs failed ({p.returncode}):\n{p.stdout}\n"
                               f"artifacts: {artifacts}\nfm-control log ({control.log_path}), last lines:\n"
                               f"{control.log_text()[-4000:]}")
    print(p.stdout)
