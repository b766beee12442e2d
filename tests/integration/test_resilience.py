"""Resilience of the accounts feature (DESIGN.md §3, §4, §6): Redis or PostgreSQL going away makes fm-control
answer 503 `unavailable` quickly (never hang, never crash) and it recovers by itself when they come back, without
a restart and without losing sessions; the Redis session cache is rebuilt from PostgreSQL; a graceful stop
(SIGTERM) finishes in-flight requests and exits 0; restarting loses nothing committed.

The outages hit the session's shared stack, so every test restores it in a `finally` and the instances used here
are dedicated ones (a failure here does not poison the main instance). Run:
    /usr/bin/python3 -m pytest -q tests/integration/test_resilience.py
"""
import signal
import threading
import time

import pytest
import requests

from conftest import unique_email, wait_ready_200
from helpers_fm import (PASSWORD, assert_error, assert_unauthorized, bearer, login, main_dbname, me, metric, post_json,
                        psql, redis_cmd, redis_url, register, wait_for)

CACHE_DB = 6  # the dedicated instance's Redis database: its session keys can be flushed without touching others
FAST = 3.0    # seconds: an outage must be reported at least this quickly


@pytest.fixture(scope="module")
def node(controls, stack, control):
    register(control.url, unique_email("seed"))  # so that the accounts made here are members
    svc = controls.start(FM_REDIS_URL=redis_url(stack, CACHE_DB))
    yield svc
    controls.stop(svc)


@pytest.fixture
def user(node):
    email = unique_email("res")
    register(node.url, email)
    return email, login(node.url, email)


@pytest.fixture
def restore_stack(stack):
    """Whatever happens in the test, Redis and PostgreSQL run again afterwards (both starts are idempotent)."""
    yield stack
    stack.start_redis()
    stack.start_pg()


def timed(call):
    t0 = time.monotonic()
    result = call()
    return result, time.monotonic() - t0


def assert_unavailable_fast(call):
    r, elapsed = timed(call)
    assert_error(r, 503, "unavailable")
    assert elapsed < FAST, f"503 took {elapsed:.2f} s"
    assert r.headers.get("Retry-After", "").isdigit(), r.headers
    return r


def readyz(node):
    return requests.get(node.url + "/readyz", timeout=10)


def refresh(base, token):
    return post_json(base, "/v1/auth/refresh", {"refresh_token": token})


# --- the session cache -----------------------------------------------------------------------------------------

def test_session_cache_is_rebuilt_from_postgres(node, stack, user):
    _, tokens = user
    key = "fm:sess:{%s}" % tokens["session_id"]
    assert redis_cmd(stack, CACHE_DB, "GET", key) == f"{tokens['user']['id']} member"
    # Redis lost everything (restarted empty, evicted, flushed): PostgreSQL decides, and the key comes back.
    redis_cmd(stack, CACHE_DB, "FLUSHDB")
    r = me(node.url, tokens["access_token"])
    assert r.status_code == 200, r.text
    assert r.json()["session_id"] == tokens["session_id"]
    assert redis_cmd(stack, CACHE_DB, "GET", key) == f"{tokens['user']['id']} member"
    assert 0 < int(redis_cmd(stack, CACHE_DB, "TTL", key)) <= 2592000


def test_session_revoked_in_postgres_is_refused_after_cache_loss(node, stack, user):
    _, tokens = user
    psql(stack, f"UPDATE sessions SET revoked_at = now(), revoked_reason = 'admin' "
                f"WHERE id = '{tokens['session_id']}'", dbname=main_dbname(stack))
    redis_cmd(stack, CACHE_DB, "DEL", "fm:sess:{%s}" % tokens["session_id"])
    assert_unauthorized(me(node.url, tokens["access_token"]), "session_revoked")
    assert redis_cmd(stack, CACHE_DB, "GET", "fm:sess:{%s}" % tokens["session_id"]) == "revoked"
    assert_error(refresh(node.url, tokens["refresh_token"]), 401, "session_revoked")


# --- Redis outage ----------------------------------------------------------------------------------------------

def test_redis_outage_is_503_fast_and_recovers_without_restart(node, restore_stack, user):
    stack = restore_stack
    email, tokens = user
    pid = node.proc.pid
    stack.stop_redis()
    try:
        assert_unavailable_fast(lambda: me(node.url, tokens["access_token"]))
        assert_unavailable_fast(lambda: post_json(node.url, "/v1/auth/login", {"email": email, "password": PASSWORD}))
        assert_unavailable_fast(lambda: post_json(node.url, "/v1/auth/register",
                                                  {"email": unique_email(), "password": PASSWORD}))
        # A logout that cannot be recorded in the session store must not pretend to have worked.
        assert_unavailable_fast(lambda: requests.post(node.url + "/v1/auth/logout",
                                                      headers=bearer(tokens["access_token"]), timeout=10))
        r, elapsed = timed(lambda: readyz(node))
        assert r.status_code == 503 and elapsed < FAST, (r.status_code, elapsed, r.text)
        body = r.json()
        assert body["status"] == "not_ready"
        assert body["checks"]["redis"] == "unavailable"
        assert body["checks"]["postgres"] == "ok"
        # Liveness is not readiness: the process is alive and says so.
        assert requests.get(node.url + "/healthz", timeout=5).status_code == 200
    finally:
        stack.start_redis()
    # Back within a few seconds, same process, and the session made before the outage is still valid.
    recovered = wait_for(lambda: me(node.url, tokens["access_token"]).status_code == 200, timeout=10)
    assert recovered, me(node.url, tokens["access_token"]).text
    assert node.proc.pid == pid and node.proc.poll() is None
    wait_ready_200(node, timeout=10)  # every thread has reconnected (each has its own pool)
    assert login(node.url, email)["user"]["email"] == email
    r = refresh(node.url, tokens["refresh_token"])
    assert r.status_code == 200, r.text
    assert me(node.url, r.json()["access_token"]).status_code == 200


# --- PostgreSQL outage -------------------------------------------------------------------------------------------

def test_postgres_outage_is_503_fast_and_recovers_without_restart(node, restore_stack, user):
    stack = restore_stack
    email, tokens = user
    pid = node.proc.pid
    stack.stop_pg()
    try:
        assert_unavailable_fast(lambda: post_json(node.url, "/v1/auth/login", {"email": email, "password": PASSWORD}))
        assert_unavailable_fast(lambda: post_json(node.url, "/v1/auth/login", {"email": email, "password": PASSWORD}))
        assert_unavailable_fast(lambda: post_json(node.url, "/v1/auth/register",
                                                  {"email": unique_email(), "password": PASSWORD}))
        assert_unavailable_fast(lambda: refresh(node.url, tokens["refresh_token"]))
        assert_unavailable_fast(lambda: me(node.url, tokens["access_token"]))
        r, elapsed = timed(lambda: readyz(node))
        assert r.status_code == 503 and elapsed < FAST, (r.status_code, elapsed, r.text)
        assert r.json()["checks"]["postgres"] == "unavailable"
        assert r.json()["checks"]["redis"] == "ok"
        assert requests.get(node.url + "/healthz", timeout=5).status_code == 200
    finally:
        stack.start_pg()
    ok = wait_for(lambda: post_json(node.url, "/v1/auth/login", {"email": email, "password": PASSWORD})
                  .status_code == 200, timeout=15, interval=0.2)
    assert ok, "login did not recover after PostgreSQL came back"
    assert node.proc.pid == pid and node.proc.poll() is None
    wait_ready_200(node, timeout=10)  # every thread has reconnected (each has its own pool)
    # Everything committed before the outage is still there: the account, the session, its refresh token.
    assert me(node.url, tokens["access_token"]).status_code == 200
    r = refresh(node.url, tokens["refresh_token"])
    assert r.status_code == 200, r.text


# --- restarts and graceful stop ----------------------------------------------------------------------------------

def test_restarting_fm_control_keeps_accounts_and_sessions(controls, stack, control):
    overrides = {"FM_REDIS_URL": redis_url(stack, CACHE_DB)}
    first = controls.start(**overrides)
    email = unique_email("restart")
    register(first.url, email)
    tokens = login(first.url, email)
    assert first.stop() == 0, first.log_text()[-2000:]

    second = controls.start(**overrides)
    assert me(second.url, tokens["access_token"]).status_code == 200
    r = refresh(second.url, tokens["refresh_token"])
    assert r.status_code == 200, r.text
    newer = r.json()
    assert login(second.url, email)["user"]["email"] == email
    assert requests.post(second.url + "/v1/auth/logout", headers=bearer(newer["access_token"]),
                         timeout=10).status_code == 204
    assert_unauthorized(me(second.url, tokens["access_token"]), "session_revoked")


def test_sigterm_finishes_the_in_flight_login_and_exits_0(controls, stack, control):
    # A costly argon2id (64 MiB, 40 passes) makes one login last over a second: long enough to be caught by the
    # signal, and to be seen in flight by the once-a-second fm_http_inflight_requests gauge.
    slow = controls.start(FM_ARGON2_M_KIB=65536, FM_ARGON2_T=40, FM_REDIS_URL=redis_url(stack, CACHE_DB))
    email = unique_email("slow")
    # Hashed with the slow parameters, so verifying it at login costs about as much.
    _, hash_seconds = timed(lambda: register(slow.url, email))
    assert hash_seconds > 1.1, f"a hash takes {hash_seconds:.3f} s: too fast to test a graceful stop with"
    result = {}

    def do_login():
        try:
            result["response"] = requests.post(slow.url + "/v1/auth/login",
                                               json={"email": email, "password": PASSWORD}, timeout=60)
        except requests.RequestException as e:
            result["error"] = e
        result["done"] = time.monotonic()

    t = threading.Thread(target=do_login)
    t.start()
    # the signal comes once the server holds the login (never by a fixed delay, which a slow machine outruns)
    assert wait_for(lambda: metric(slow.url, "fm_http_inflight_requests") >= 1 or "done" in result, 30), \
        "the login was never seen in flight"
    assert "done" not in result, "the login finished before it was seen in flight"
    signalled = time.monotonic()
    slow.proc.send_signal(signal.SIGTERM)
    t.join(60)
    assert not t.is_alive()
    assert "error" not in result, result.get("error")
    assert result["done"] > signalled + 0.02, "the login finished about when the signal came: nothing was in flight"
    r = result["response"]
    assert r.status_code == 200, r.text
    assert r.json()["user"]["email"] == email
    assert slow.proc.wait(30) == 0, slow.log_text()[-3000:]
    assert "stopping gracefully" in slow.log_text()
    # The process is gone: nothing listens any more.
    with pytest.raises(requests.ConnectionError):
        requests.get(slow.url + "/healthz", timeout=2)
