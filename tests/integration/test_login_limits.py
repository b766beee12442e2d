"""The login limiter and registration roles as an attacker and an account's owner meet them (issue 10 #8, #9, #15),
against the real fm-control, PostgreSQL and Redis, each test on an instance of its own with realistic limits (the
suite's other instances run with huge ones).

fm-control sees the TCP peer's address (fm_req_peer), so clients here bind to different loopback addresses
(127.0.0.x, all one IPv4 /24) to be different clients; the IPv6 /64 grouping is proven in
tests/unit/common/test_ratelimit.c, since the services listen on IPv4 only.

Run: /usr/bin/python3 -m pytest -q tests/integration/test_login_limits.py
"""
import secrets
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from requests.adapters import HTTPAdapter

from conftest import BUILD_DIR, SANITIZER_REPORT, unique_email
from helpers_fm import PASSWORD, assert_error, database_url, psql, redis_cmd, redis_url

LIMITS_DB = 44  # the rate-limit tests' Redis database, flushed before each test here
FRESH_REDIS_DB = 45  # the fresh-database instances' own

# What an instance here runs with unless a test says otherwise: the product's defaults (common/config.c).
REALISTIC = {
    "FM_LOGIN_LIMIT_ACCOUNT_IP": 10,
    "FM_LOGIN_LIMIT_ACCOUNT": 10,
    "FM_LOGIN_DELAY_MAX_S": 60,
    "FM_LOGIN_LIMIT_IP": 30,
    "FM_LOGIN_LIMIT_NET": 120,
    "FM_LOGIN_WINDOW_S": 300,
    "FM_REGISTER_LIMIT_IP": 20,
}


class SourceAddress(HTTPAdapter):
    """Connects from a chosen local address, so that fm-control sees another client."""

    def __init__(self, source_ip):
        self.source_ip = source_ip
        super().__init__()

    def init_poolmanager(self, connections, maxsize, block=False, **pool_kwargs):
        pool_kwargs["source_address"] = (self.source_ip, 0)
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)


def post_from(source_ip, url, path, body, timeout=30):
    with requests.Session() as s:
        s.mount("http://", SourceAddress(source_ip))
        return s.post(url + path, json=body, timeout=timeout)


def login_from(source_ip, url, email, password=PASSWORD):
    return post_from(source_ip, url, "/v1/auth/login", {"email": email, "password": password})


def register_from(source_ip, url, email, password=PASSWORD):
    r = post_from(source_ip, url, "/v1/auth/register", {"email": email, "password": password})
    assert r.status_code == 201, r.text
    return r.json()["user"]


def assert_limited(r, at_most):
    """429 rate_limited with a Retry-After of 1..at_most seconds; returns it."""
    assert_error(r, 429, "rate_limited")
    retry_after = r.headers.get("Retry-After", "")
    assert retry_after.isdigit() and 1 <= int(retry_after) <= at_most, r.headers
    return int(retry_after)


@pytest.fixture
def instance(controls, stack, request):
    """start(**settings): an fm-control with REALISTIC limits overridden by `settings`, on the rate-limit Redis
    database (flushed first, so no counter of another test is seen), stopped at the end of the test."""
    def start(**settings):
        redis_cmd(stack, LIMITS_DB, "FLUSHDB")
        env = dict(REALISTIC, FM_REDIS_URL=redis_url(stack, LIMITS_DB))
        env.update(settings)
        svc = controls.start(**env)
        request.addfinalizer(lambda: controls.stop(svc))
        return svc
    return start


# --- #8: one normal form of an email -----------------------------------------------------------------------------

def test_kelvin_sign_cannot_bypass_a_locked_account(instance):
    """`\u212Aiki@…` (KELVIN SIGN) is `kiki@…` to PostgreSQL's lower(), and was a fresh limiter counter: the right
    password then logged in past the lock. Addresses beyond ASCII are refused; capitals are the same counter."""
    svc = instance(FM_LOGIN_LIMIT_ACCOUNT_IP=3, FM_LOGIN_LIMIT_ACCOUNT=3)
    tag = secrets.token_hex(4)
    email = f"kiki-{tag}@example.test"
    register_from("127.0.0.9", svc.url, email)
    for spelling in (email, email.upper(), email):
        assert_error(login_from("127.0.0.2", svc.url, spelling, "wrong password"), 401, "invalid_credentials")
    assert_limited(login_from("127.0.0.2", svc.url, email), 300)
    assert_limited(login_from("127.0.0.2", svc.url, f"KIKI-{tag}@EXAMPLE.TEST"), 300)
    for confusable in (f"\u212aiki-{tag}@example.test", f"kiki-{tag}@example.tes\u0074\u0307",
                       f"\uff4biki-{tag}@example.test"):
        assert_error(login_from("127.0.0.2", svc.url, confusable), 422, "invalid_email")
        assert_error(post_from("127.0.0.2", svc.url, "/v1/auth/register",
                               {"email": confusable, "password": "another password"}), 422, "invalid_email")
    # Still locked for this client, and the owner's account was not taken over by a look-alike registration.
    assert_limited(login_from("127.0.0.2", svc.url, email), 300)
    assert login_from("127.0.0.9", svc.url, email).json()["user"]["email"] == email


def test_admin_email_look_alike_is_refused(instance):
    """FM_ADMIN_EMAIL was compared with lower() in SQL, so a KELVIN SIGN look-alike of it registered as admin."""
    boss = f"KBoss-{secrets.token_hex(4)}@Example.TEST"
    svc = instance(FM_ADMIN_EMAIL=boss)
    r = post_from("127.0.0.1", svc.url, "/v1/auth/register",
                  {"email": "\u212a" + boss[1:], "password": PASSWORD})
    assert_error(r, 422, "invalid_email")
    # The configured address itself, in any ASCII case, is the admin.
    assert register_from("127.0.0.1", svc.url, boss.lower())["role"] == "admin"


# --- #9: the attacker's failures do not lock the owner out ---------------------------------------------------------

def test_attacker_failures_do_not_lock_the_owner_out(instance):
    """Ten wrong passwords from anyone used to lock the account for 300 s, right password or not. Now the guessing
    client is refused, and the owner logs in: at once from a client the account logged in from before, after the
    account's soft delay (≤ FM_LOGIN_DELAY_MAX_S) from a new one."""
    svc = instance(FM_LOGIN_LIMIT_ACCOUNT_IP=5, FM_LOGIN_LIMIT_ACCOUNT=5, FM_LOGIN_DELAY_MAX_S=3)
    owner = unique_email("owner")
    register_from("127.0.0.3", svc.url, owner)
    assert login_from("127.0.0.3", svc.url, owner).status_code == 200  # the owner's usual client
    for _ in range(5):
        assert_error(login_from("127.0.0.2", svc.url, owner, "guess-1234"), 401, "invalid_credentials")
    assert_limited(login_from("127.0.0.2", svc.url, owner, "guess-1234"), 300)
    assert_limited(login_from("127.0.0.2", svc.url, owner), 300)  # the guesser's client, even with the password
    # The account is past FM_LOGIN_LIMIT_ACCOUNT failures: its usual client is not delayed at all.
    r = login_from("127.0.0.3", svc.url, owner)
    assert r.status_code == 200, r.text
    # A client the account never logged in from waits the soft delay, then the right password works.
    for _ in range(5):
        assert_error(login_from("127.0.0.4", svc.url, owner, "guess-5678"), 401, "invalid_credentials")
    assert_error(login_from("127.0.0.6", svc.url, owner, "guess-5678"), 401, "invalid_credentials")  # delay 1 s
    wait = assert_limited(login_from("127.0.0.5", svc.url, owner), 1)
    time.sleep(wait)
    r = login_from("127.0.0.5", svc.url, owner)
    assert r.status_code == 200, r.text
    assert r.json()["user"]["email"] == owner
    # The guessing client is still refused: the owner's logins cleared the account's failures, not its counter.
    assert_limited(login_from("127.0.0.2", svc.url, owner), 300)


def test_account_delay_doubles_per_failure_and_stays_a_delay(instance):
    """Failures from many clients (a botnet) past FM_LOGIN_LIMIT_ACCOUNT space the next attempts from unknown
    clients by 1, 2, 4 … s up to FM_LOGIN_DELAY_MAX_S; each wait ends with an attempt let through."""
    svc = instance(FM_LOGIN_LIMIT_ACCOUNT=3, FM_LOGIN_DELAY_MAX_S=4)
    owner = unique_email("target")
    register_from("127.0.0.200", svc.url, owner)
    clients = (f"127.0.0.{n}" for n in range(20, 200))
    for _ in range(3):
        assert_error(login_from(next(clients), svc.url, owner, "guess-0000"), 401, "invalid_credentials")
    waits = []
    for gap in (1, 2, 4, 4):
        # An attempt is let through (and fails), and the next one right after it must wait about `gap` seconds.
        assert_error(login_from(next(clients), svc.url, owner, "guess-1111"), 401, "invalid_credentials")
        wait = assert_limited(login_from(next(clients), svc.url, owner, "guess-2222"), 4)
        assert gap - 1 <= wait <= gap, (gap, waits + [wait])
        waits.append(wait)
        time.sleep(wait)
    # The owner, on a client never seen before, gets in once the current wait is over.
    r = login_from(next(clients), svc.url, owner)
    assert r.status_code == 200, r.text


def test_clients_of_one_network_are_counted_together(instance):
    """Rotating source addresses escaped a per-address limit. Attempts are also counted per network (IPv4 /24,
    IPv6 /48): one address per attempt across 127.0.0.0/24 still meets FM_LOGIN_LIMIT_NET."""
    svc = instance(FM_LOGIN_LIMIT_IP=3, FM_LOGIN_LIMIT_NET=6)
    for n in range(10, 16):
        assert_error(login_from(f"127.0.0.{n}", svc.url, unique_email("spray"), "guess-1234"), 401,
                     "invalid_credentials")
    assert_limited(login_from("127.0.0.16", svc.url, unique_email("spray"), "guess-1234"), 300)


def test_one_client_is_limited_across_accounts(instance):
    svc = instance(FM_LOGIN_LIMIT_IP=3)
    for _ in range(3):
        assert_error(login_from("127.0.0.7", svc.url, unique_email("spray"), "guess-1234"), 401,
                     "invalid_credentials")
    assert_limited(login_from("127.0.0.7", svc.url, unique_email("spray"), "guess-1234"), 300)
    # Another address of the network is another client.
    assert_error(login_from("127.0.0.8", svc.url, unique_email("spray"), "guess-1234"), 401, "invalid_credentials")


def test_email_taken_probes_are_rate_limited(instance):
    """Register keeps answering 409 email_taken (docs/decisions.md says why); each probe counts against the
    client's FM_REGISTER_LIMIT_IP like any registration."""
    svc = instance(FM_REGISTER_LIMIT_IP=3)
    taken = unique_email("taken")
    register_from("127.0.0.30", svc.url, taken)
    for _ in range(3):
        assert_error(post_from("127.0.0.31", svc.url, "/v1/auth/register",
                               {"email": taken, "password": PASSWORD}), 409, "email_taken")
    assert_limited(post_from("127.0.0.31", svc.url, "/v1/auth/register", {"email": unique_email(), "password": PASSWORD}),
                   300)


# --- #9: a bounded hashing queue -----------------------------------------------------------------------------------

def test_full_hashing_queue_answers_503_at_once(instance):
    """One hashing thread and a queue of 2 at an expensive cost: logins beyond what the queue holds answer 503 with
    Retry-After at once, instead of waiting seconds behind the others (450 logins put one at 4 s before)."""
    svc = instance(FM_HASH_THREADS=1, FM_HASH_QUEUE_MAX=2, FM_ARGON2_T=40, FM_LOGIN_LIMIT_ACCOUNT=1000)
    email = unique_email("queue")
    register_from("127.0.0.40", svc.url, email)

    def timed_login(n):
        r = login_from(f"127.0.0.{50 + n}", svc.url, email)
        return r, time.monotonic()

    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(timed_login, range(12)))
    busy = [(r, t) for r, t in answers if r.status_code == 503]
    served = [(r, t) for r, t in answers if r.status_code != 503]
    assert busy, [r.status_code for r, _ in answers]
    for r, _ in busy:
        assert_error(r, 503, "unavailable")
        assert r.headers.get("Retry-After", "").isdigit() and int(r.headers["Retry-After"]) >= 1, r.headers
    for r, _ in served:
        assert r.status_code == 200, r.text
    # The refused ones did not wait for the hashes of the served ones.
    assert served
    assert max(t for _, t in busy) < max(t for _, t in served)
    # Once the queue drained, logins are served again.
    assert login_from("127.0.0.40", svc.url, email).status_code == 200


# --- #15: no admin by being first ------------------------------------------------------------------------------------

def fresh_database_instance(controls, stack, request, **settings):
    """A new, migrated, empty database and an instance on it (with a Redis database for such instances), stopped at
    the end of the test; returns (instance, database name)."""
    dbname = "fm_fresh_" + secrets.token_hex(4)
    psql(stack, f"CREATE DATABASE {dbname}")
    url = database_url(stack, dbname)
    p = subprocess.run([str(BUILD_DIR / "fm-control"), "migrate"], env=controls.env(FM_DATABASE_URL=url),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert not SANITIZER_REPORT.search(p.stderr), p.stderr
    svc = controls.start(FM_DATABASE_URL=url, FM_REDIS_URL=redis_url(stack, FRESH_REDIS_DB), **settings)
    request.addfinalizer(lambda: controls.stop(svc))
    return svc, dbname


def test_first_user_of_a_fresh_database_is_a_member(controls, stack, request):
    """infra/up leaves an empty database: whoever registered first became admin (the README's example did)."""
    svc, dbname = fresh_database_instance(controls, stack, request)
    assert psql(stack, "SELECT count(*) FROM users", dbname=dbname) == "0"
    first = register_from("127.0.0.1", svc.url, unique_email("first"))
    assert first["role"] == "member"
    r = login_from("127.0.0.1", svc.url, first["email"])
    assert r.json()["user"]["role"] == "member"
    assert psql(stack, "SELECT string_agg(role::text, ',') FROM users", dbname=dbname) == "member"


def test_admin_email_user_is_admin_even_when_not_first(controls, stack, request):
    boss = unique_email("boss")
    svc, dbname = fresh_database_instance(controls, stack, request, FM_ADMIN_EMAIL=boss)
    assert register_from("127.0.0.1", svc.url, unique_email("early"))["role"] == "member"
    assert register_from("127.0.0.1", svc.url, boss.upper())["role"] == "admin"
    assert login_from("127.0.0.1", svc.url, boss).json()["user"]["role"] == "admin"
    assert psql(stack, "SELECT count(*) FROM users WHERE role = 'admin'", dbname=dbname) == "1"
