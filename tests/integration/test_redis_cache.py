"""The per-thread copies of Redis values in fm-control (common/rcache.c, FM_REDIS_CACHE_MAX_AGE_MS): sessions and
file rows are answered without a Redis round trip, and any change Redis makes to them -- whoever makes it, through
the API or straight in Redis -- is seen by the very next request, because Redis reports it (CLIENT TRACKING). When
the reports may have been lost (the subscriber killed, the database flushed) nothing stale is served either.

All against the real Redis of the session's stack, on a database of this module's own (CACHE_DB).
"""
import json
import re
import subprocess

import pytest
import requests

from conftest import BUILD_DIR, unique_email
from helpers_fm import assert_unauthorized, bearer, login, me, redis_cmd, redis_url, register, wait_for
from helpers_uploads import Fm, random_bytes

CACHE_DB = 4
ROUNDS = 20  # each change is checked right after it, this many times: a race would show as a flake here


def counter(svc, family, labels):
    text = requests.get(svc.url + "/metrics", timeout=10).text
    m = re.search(r"^%s\{%s\} (\S+)$" % (re.escape(family), re.escape(labels)), text, re.M)
    return float(m.group(1)) if m else 0.0


def hits(svc):
    return counter(svc, "fm_rcache_lookups_total", 'result="hit"')


@pytest.fixture(scope="module")
def node(controls, stack, control):
    register(control.url, unique_email("seed"))  # the accounts made here are members
    # one thread: every request meets the same copies, so a stale one could not hide on another thread
    svc = controls.start(FM_REDIS_URL=redis_url(stack, CACHE_DB), FM_THREADS=1)
    yield svc
    controls.stop(svc)


@pytest.fixture
def user(node):
    email = unique_email("rc")
    register(node.url, email)
    return login(node.url, email)


def session_key(tokens):
    return "fm:sess:{%s}" % tokens["session_id"]


def warm(node, tokens):
    """Two reads: the first may fill the copy, the second is answered from it (asserted by the hit counter)."""
    me(node.url, tokens["access_token"])
    before = hits(node)
    assert me(node.url, tokens["access_token"]).status_code == 200
    assert hits(node) > before, "the session was not answered from the local copy"


def test_repeated_requests_are_answered_from_the_local_copy(node, user):
    before = hits(node)
    for _ in range(10):
        assert me(node.url, user["access_token"]).status_code == 200
    assert hits(node) - before >= 9


def test_logout_is_seen_by_the_next_request(node, stack):
    for _ in range(ROUNDS):
        email = unique_email("rc-out")
        register(node.url, email)
        tokens = login(node.url, email)
        warm(node, tokens)
        r = requests.post(node.url + "/v1/auth/logout", headers=bearer(tokens["access_token"]), timeout=10)
        assert r.status_code == 204, r.text
        assert_unauthorized(me(node.url, tokens["access_token"]), "session_revoked")


def test_a_change_made_straight_in_redis_is_seen_by_the_next_request(node, stack, user):
    key = session_key(user)
    good = redis_cmd(stack, CACHE_DB, "GET", key)
    for _ in range(ROUNDS):
        warm(node, user)
        # someone else's session now: the copy must not answer with the old owner
        redis_cmd(stack, CACHE_DB, "SET", key, "00000000-0000-0000-0000-000000000000 member")
        assert_unauthorized(me(node.url, user["access_token"]), "session_revoked")
        redis_cmd(stack, CACHE_DB, "SET", key, good)
        assert me(node.url, user["access_token"]).status_code == 200


def test_file_rows_follow_redis(node, stack):
    fm = Fm(stack, node)
    try:
        owner = fm.user("rc-files")
        a = fm.start(owner, random_bytes(100))
        key = "fm:file:{%s}" % a["file_id"]
        assert fm.file(owner, a["file_id"]).status_code == 200
        assert wait_for(lambda: redis_cmd(stack, CACHE_DB, "GET", key), 5)  # the fill that follows the answer
        row = json.loads(redis_cmd(stack, CACHE_DB, "GET", key))
        name = row["name"]
        for i in range(ROUNDS):
            assert fm.file(owner, a["file_id"]).json()["name"] == name
            before = hits(node)
            assert fm.file(owner, a["file_id"]).json()["name"] == name
            assert hits(node) > before
            redis_cmd(stack, CACHE_DB, "SET", key, json.dumps(dict(row, name=f"n{i}.bin")), "EX", "60")
            name = f"n{i}.bin"
            assert fm.file(owner, a["file_id"]).json()["name"] == name
    finally:
        fm.close()


def test_nothing_stale_while_the_reports_are_lost(node, stack, user):
    """The subscriber that receives Redis's reports is killed: until it is back, reads go to Redis (no copy is
    trusted), and the ones made meanwhile are right; afterwards copies are used again, and followed again."""
    key = session_key(user)
    good = redis_cmd(stack, CACHE_DB, "GET", key)
    for _ in range(5):
        warm(node, user)
        # every fm-control's subscriber on this Redis: the others reconnect the same way
        assert int(redis_cmd(stack, CACHE_DB, "CLIENT", "KILL", "TYPE", "pubsub")) >= 1
        redis_cmd(stack, CACHE_DB, "SET", key, "00000000-0000-0000-0000-000000000000 member")
        assert_unauthorized(me(node.url, user["access_token"]), "session_revoked")
        redis_cmd(stack, CACHE_DB, "SET", key, good)
        assert me(node.url, user["access_token"]).status_code == 200
        before = hits(node)
        assert wait_for(lambda: me(node.url, user["access_token"]).status_code == 200 and hits(node) > before, 15), \
            "copies are not used again after the subscriber came back"
        redis_cmd(stack, CACHE_DB, "SET", key, "00000000-0000-0000-0000-000000000000 member")
        assert_unauthorized(me(node.url, user["access_token"]), "session_revoked")
        redis_cmd(stack, CACHE_DB, "SET", key, good)


def test_a_flush_drops_every_copy(node, stack, user):
    warm(node, user)
    redis_cmd(stack, CACHE_DB, "FLUSHDB")
    # PostgreSQL still holds the session: it is valid and the key comes back; revoked there, it is refused at once
    assert me(node.url, user["access_token"]).status_code == 200
    assert redis_cmd(stack, CACHE_DB, "GET", session_key(user)) is not None
    warm(node, user)
    redis_cmd(stack, CACHE_DB, "FLUSHDB")
    r = requests.post(node.url + "/v1/auth/logout", headers=bearer(user["access_token"]), timeout=10)
    assert r.status_code == 204, r.text
    assert_unauthorized(me(node.url, user["access_token"]), "session_revoked")


def test_no_copies_when_turned_off(controls, stack, control):
    svc = controls.start(FM_REDIS_URL=redis_url(stack, CACHE_DB), FM_REDIS_CACHE_MAX_AGE_MS=0)
    try:
        email = unique_email("rc-off")
        register(svc.url, email)
        tokens = login(svc.url, email)
        for _ in range(5):
            assert me(svc.url, tokens["access_token"]).status_code == 200
        assert hits(svc) == 0
        assert counter(svc, "fm_rcache_lookups_total", 'result="miss"') == 0
    finally:
        controls.stop(svc)


@pytest.mark.parametrize("value", ["-1", "3600001", "soon"])
def test_bad_cache_setting_stops_the_service(controls, value):
    env = controls.env(FM_REDIS_CACHE_MAX_AGE_MS=value, FM_HTTP_PORT="1")
    p = subprocess.run([str(BUILD_DIR / "fm-control")], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2, p.stderr
    assert "FM_REDIS_CACHE_MAX_AGE_MS" in p.stderr, p.stderr
