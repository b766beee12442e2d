"""The three binaries as an operator meets them: configuration validated at start, health of fm-edge and fm-worker,
/metrics, migrations applied once, graceful exit (also when the stop signal comes during the start)."""
import signal
import subprocess
import time
from pathlib import Path

import requests

from conftest import BUILD_DIR, Service, free_ports, sanitizer_env


def run(binary, env, *args):
    return subprocess.run([str(BUILD_DIR / binary), *args], env=env, capture_output=True, text=True, timeout=60)


def test_bad_configuration_stops_with_a_message_naming_the_variable(controls):
    env = controls.env(FM_HTTP_PORT="99999", FM_LOG_LEVEL="loud", FM_JWT_SECRET="short")
    p = run("fm-control", env)
    assert p.returncode == 2
    for name in ("FM_HTTP_PORT", "FM_LOG_LEVEL", "FM_JWT_SECRET"):
        assert name in p.stderr
    assert "short" not in p.stderr  # secrets are never echoed


def test_missing_required_variable(controls):
    env = controls.env()
    del env["FM_DATABASE_URL"]
    p = run("fm-control", env)
    assert p.returncode == 2 and "FM_DATABASE_URL is required" in p.stderr


def test_config_table_lists_every_service_variable():
    p = run("fm-control", {}, "config", "--all")
    assert p.returncode == 0
    for name in ("FM_THREADS", "FM_DATABASE_URL", "FM_JWT_SECRET", "FM_EDGE_HTTP_PORT", "FM_WORKER_HEALTH_PORT"):
        assert f"`{name}`" in p.stdout


def test_migrations_are_applied_once(controls):
    p = run("fm-control", controls.env(), "migrate")
    assert p.returncode == 0, p.stderr
    assert "0 applied" in p.stdout


def test_edge_and_worker_answer_health_and_stop_gracefully(controls, log_dir):
    env = controls.env()
    env.update(sanitizer_env())
    edge_port, worker_port = free_ports(2)
    edge = Service("fm-edge", [str(BUILD_DIR / "fm-edge")], {**env, "FM_EDGE_HTTP_PORT": str(edge_port),
                                                           "FM_EDGE_HTTPS_PORT": "0"}, edge_port, log_dir)
    worker = Service("fm-worker", [str(BUILD_DIR / "fm-worker")], {**env, "FM_WORKER_HEALTH_PORT": str(worker_port)},
                     worker_port, log_dir)
    for svc in (edge, worker):
        svc.start()
        try:
            r = requests.get(svc.url + "/healthz", timeout=5)
            assert r.status_code == 200 and r.json() == {"status": "ok"}
            assert r.headers["x-request-id"]
            assert requests.get(svc.url + "/nope", timeout=5).json()["error"]["code"] == "not_found"
            assert "fm_http_requests_total" in requests.get(svc.url + "/metrics", timeout=5).text
        finally:
            svc.check_clean_exit()


def test_metrics_count_requests_by_route_and_status(control):
    requests.get(control.url + "/v1/me", timeout=5)  # 401
    text = requests.get(control.url + "/metrics", timeout=5).text
    assert 'fm_http_requests_total{service="fm-control",route="/v1/me",method="GET",status="401"}' in text
    assert 'fm_http_request_duration_seconds_bucket{service="fm-control",route="/v1/me",le="+Inf"}' in text
    assert "fm_pg_pool_connected{" in text and "fm_redis_pool_connected{" in text


def vips_threads(pid):
    """Names of the process's threads that libvips started (its workers exist from vips_init on)."""
    names = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:
            pass
    return [n for n in names if n.startswith("libvips")]


def test_a_stop_signal_during_start_is_a_graceful_stop(controls, log_dir):
    """SIGTERM while fm-edge is still starting (its threads wait up to 1 s for an unreachable Redis) is taken by the
    server's sigwait() once it gets there -- not by one of libvips' worker threads, which would have killed the process
    without a graceful stop (common/server.h fm_server_block_stop_signals)."""
    env = controls.env()
    env.update(sanitizer_env())
    port = free_ports(1)[0]
    env.update({"FM_EDGE_HTTP_PORT": str(port), "FM_EDGE_HTTPS_PORT": "0", "FM_REDIS_URL": "redis://127.0.0.1:1/0"})
    log_path = Path(log_dir) / f"fm-edge-start-stop-{port}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([str(BUILD_DIR / "fm-edge")], env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not vips_threads(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert vips_threads(proc.pid), "libvips started no worker thread: the test would prove nothing"
        text = log_path.read_text(errors="replace")
        assert "listening" not in text, "fm-edge was already up: the signal would not fall in its start"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text(errors="replace")
    assert rc == 0, f"fm-edge exited with {rc} on SIGTERM during its start:\n{text[-3000:]}"
    assert "signal 15, stopping gracefully" in text and "fm-edge stopped" in text, text[-3000:]
