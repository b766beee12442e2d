"""Accounts and sessions (DESIGN.md §4 "Auth", §5, §6) against the real fm-control, PostgreSQL and Redis:
register, login, JWT claims, refresh rotation and reuse detection, logout, token verification (expiry, forged
and malformed tokens, algorithm confusion with an external identity provider), rate limits, HTTP/2.

Run: /usr/bin/python3 -m pytest -q tests/integration/test_auth.py
"""
import hashlib
import hmac
import json
import re
import secrets
import shutil
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conftest import BUILD_DIR, SANITIZER_REPORT, unique_email
from helpers_fm import (ISSUER, PASSWORD, assert_error, assert_unauthorized, b64url, bearer, claims, compact,
                        database_url, hs256_by_hand, login, main_dbname, me, post_json, psql, redis_cmd, redis_url,
                        register)
from stackfixture import free_ports

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
EXTERNAL_ISSUER = "https://idp.example.test"


@pytest.fixture(scope="module")
def base(control):
    """The main instance's URL, with at least one user in the shared database."""
    register(control.url, unique_email("seed"))
    return control.url


@pytest.fixture
def account(base):
    """A fresh member account logged in once: (email, tokens)."""
    email = unique_email()
    register(base, email)
    return email, login(base, email)


def jwt_decode(token, secret):
    return jwt.decode(token, secret, algorithms=["HS256"], issuer=ISSUER,
                      options={"require": ["iss", "sub", "exp", "iat"]})


# --- register ------------------------------------------------------------------------------------------------

def test_register_creates_member(base):
    email = unique_email()
    r = post_json(base, "/v1/auth/register", {"email": email, "password": PASSWORD})
    assert r.status_code == 201, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    user = r.json()["user"]
    assert UUID_RE.match(user["id"]), user
    assert user["email"] == email
    assert user["role"] == "member"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", user["created_at"]), user
    assert "password" not in r.text and "argon2" not in r.text


FRESH_REDIS_DB = 2  # the fresh-database instances' own: their record flusher must not take other instances' records


def fresh_database_instance(controls, stack, request, **settings):
    """A new, migrated, empty database in the stack's PostgreSQL and an instance on it, with a Redis database of its
    own (written-behind records in a shared one could be flushed by it into the wrong PostgreSQL database), stopped
    at the end of the test."""
    dbname = "fm_fresh_" + secrets.token_hex(4)
    psql(stack, f"CREATE DATABASE {dbname}")
    url = database_url(stack, dbname)
    p = subprocess.run([str(BUILD_DIR / "fm-control"), "migrate"], env=controls.env(FM_DATABASE_URL=url),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert not SANITIZER_REPORT.search(p.stderr), p.stderr
    assert psql(stack, "SELECT count(*) FROM users", dbname=dbname) == "0"
    svc = controls.start(FM_DATABASE_URL=url, FM_REDIS_URL=redis_url(stack, FRESH_REDIS_DB), **settings)
    request.addfinalizer(lambda: controls.stop(svc))
    return svc, dbname


def test_concurrent_registrations_make_only_the_admin_email_admin(controls, stack, request):
    """Being first makes nobody admin (test_login_limits.py: the first user is a member); among simultaneous
    registrations on an empty database, only FM_ADMIN_EMAIL's account is."""
    boss = unique_email("race-boss")
    fresh, dbname = fresh_database_instance(controls, stack, request, FM_ADMIN_EMAIL=boss)
    emails = [unique_email("race") for _ in range(7)] + [boss]
    with ThreadPoolExecutor(len(emails)) as pool:
        answers = list(pool.map(lambda e: post_json(fresh.url, "/v1/auth/register", {"email": e, "password": PASSWORD}),
                                emails))
    assert [r.status_code for r in answers] == [201] * len(emails), [r.text for r in answers]
    roles = {r.json()["user"]["email"]: r.json()["user"]["role"] for r in answers}
    assert roles == {e: "admin" if e == boss else "member" for e in emails}
    tokens = login(fresh.url, boss)
    assert jwt_decode(tokens["access_token"], controls.jwt_secret)["role"] == "admin"
    assert me(fresh.url, tokens["access_token"]).json()["role"] == "admin"
    assert psql(stack, "SELECT count(*) FROM users WHERE role = 'admin'", dbname=dbname) == "1"


def test_concurrent_registrations_of_one_email(base):
    """Eight registrations of one address in two spellings, all at once: exactly one account, every other answer
    409 email_taken. Which spelling wins is not required to vary: it is the one outcome the race has (one account,
    the address compared case-insensitively), and the losers' answer after a committed account is tested alone by
    test_duplicate_email_is_refused_case_insensitively."""
    email = unique_email("same")
    spellings = [email, email.upper()] * 4
    with ThreadPoolExecutor(len(spellings)) as pool:
        answers = list(pool.map(lambda e: post_json(base, "/v1/auth/register", {"email": e, "password": PASSWORD}),
                                spellings))
    created = [r for r in answers if r.status_code == 201]
    assert len(created) == 1, [r.text for r in answers]
    for r in answers:
        if r.status_code != 201:
            assert_error(r, 409, "email_taken")


def test_admin_email_becomes_admin(controls, base):
    boss = unique_email("boss")
    inst = controls.start(FM_ADMIN_EMAIL=boss)
    # The configured address matches case-insensitively; anyone else stays a member.
    user = register(inst.url, boss.upper())
    assert user["role"] == "admin"
    assert register(inst.url, unique_email())["role"] == "member"
    tokens = login(inst.url, boss)
    assert jwt_decode(tokens["access_token"], controls.jwt_secret)["role"] == "admin"
    assert me(inst.url, tokens["access_token"]).json()["role"] == "admin"


def test_duplicate_email_is_refused_case_insensitively(base):
    email = unique_email("dup")
    register(base, email)
    assert_error(post_json(base, "/v1/auth/register", {"email": email, "password": PASSWORD}), 409, "email_taken")
    local, domain = email.split("@")
    other_case = local.upper() + "@" + domain.title()
    assert_error(post_json(base, "/v1/auth/register", {"email": other_case, "password": "another password"}),
                 409, "email_taken")
    # The original password still works, under either spelling of the address.
    login(base, email)
    login(base, other_case)


@pytest.mark.parametrize("email", ["no-at-sign.example.test", "@example.test", "user@", "two@@example.test",
                                   "a@b@example.test", "with space@example.test", "tab\t@example.test",
                                   "ctl\x7f@example.test", "a@"])
def test_register_invalid_email(base, email):
    r = post_json(base, "/v1/auth/register", {"email": email, "password": PASSWORD})
    assert_error(r, 422, "invalid_email")


def test_register_password_length_bounds(base):
    assert_error(post_json(base, "/v1/auth/register", {"email": unique_email(), "password": "1234567"}),
                 422, "weak_password")
    assert_error(post_json(base, "/v1/auth/register", {"email": unique_email(), "password": ""}),
                 422, "invalid_field")
    email = unique_email()
    assert register(base, email, "12345678")["email"] == email  # 8 bytes is the documented minimum
    login(base, email, "12345678")


@pytest.mark.parametrize("body", [{}, {"email": "x@example.test"}, {"password": PASSWORD},
                                  {"email": None, "password": PASSWORD}])
def test_register_missing_field(base, body):
    assert_error(post_json(base, "/v1/auth/register", body), 422, "missing_field")


# --- login, /v1/me, claims -----------------------------------------------------------------------------------

def test_login_returns_access_and_refresh_tokens(base):
    email = unique_email("Mixed")
    user = register(base, email)
    tokens = login(base, email.lower())  # the address is matched case-insensitively
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 900
    assert isinstance(tokens["access_token"], str) and tokens["access_token"].count(".") == 2
    assert isinstance(tokens["refresh_token"], str) and len(tokens["refresh_token"]) >= 32
    assert tokens["refresh_token"] != tokens["access_token"]
    # 30 days (FM_REFRESH_TTL_S); +1: the server rounds the session's expiry to the nearest second.
    assert 2592000 - 60 <= tokens["refresh_expires_in"] <= 2592000 + 1
    assert UUID_RE.match(tokens["session_id"])
    assert tokens["user"] == {"id": user["id"], "email": email, "role": "member"}
    # Each login is its own session with its own tokens.
    again = login(base, email)
    assert again["session_id"] != tokens["session_id"]
    assert again["refresh_token"] != tokens["refresh_token"]


def test_wrong_password_and_unknown_email_get_the_same_answer(base):
    email = unique_email()
    register(base, email)
    wrong = assert_error(post_json(base, "/v1/auth/login", {"email": email, "password": "wrong password"}),
                         401, "invalid_credentials")
    unknown = assert_error(post_json(base, "/v1/auth/login", {"email": unique_email("nobody"), "password": PASSWORD}),
                           401, "invalid_credentials")
    assert wrong["message"] == unknown["message"]  # nothing tells which emails have accounts
    # The right password still works afterwards.
    login(base, email)


def test_me_returns_the_caller(base, account):
    email, tokens = account
    r = me(base, tokens["access_token"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == tokens["user"]["id"]
    assert body["email"] == email
    assert body["role"] == "member"
    assert body["auth"] == "password"
    assert body["session_id"] == tokens["session_id"]
    assert body["used_bytes"] == 0 and body["quota_bytes"] > 0
    assert "password_hash" not in body


def test_access_token_claims(controls, base, account):
    _, tokens = account
    header = jwt.get_unverified_header(tokens["access_token"])
    assert header["alg"] == "HS256"
    c = jwt_decode(tokens["access_token"], controls.jwt_secret)
    assert c["iss"] == "files-manager"
    assert c["sub"] == tokens["user"]["id"]
    assert c["sid"] == tokens["session_id"]
    assert c["role"] == "member"
    assert c["exp"] - c["iat"] == 900
    assert abs(c["iat"] - time.time()) < 60
    # Signed with the instance's secret, and with nothing else.
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(tokens["access_token"], "x" * 64, algorithms=["HS256"], issuer=ISSUER)


# --- refresh -------------------------------------------------------------------------------------------------

def refresh(base, token):
    return post_json(base, "/v1/auth/refresh", {"refresh_token": token})


def test_refresh_rotates_tokens(controls, base, account):
    _, t1 = account
    r = refresh(base, t1["refresh_token"])
    assert r.status_code == 200, r.text
    t2 = r.json()
    assert t2["refresh_token"] != t1["refresh_token"]
    assert t2["session_id"] == t1["session_id"]
    assert t2["user"] == t1["user"]
    c = jwt_decode(t2["access_token"], controls.jwt_secret)
    assert c["sid"] == t1["session_id"] and c["sub"] == t1["user"]["id"] and c["exp"] - c["iat"] == 900
    assert me(base, t2["access_token"]).status_code == 200
    # The new refresh token works (once) in turn.
    r = refresh(base, t2["refresh_token"])
    assert r.status_code == 200, r.text
    t3 = r.json()
    assert t3["refresh_token"] not in (t1["refresh_token"], t2["refresh_token"])
    assert me(base, t3["access_token"]).status_code == 200


def test_refresh_reuse_revokes_the_whole_session(base, account):
    _, t1 = account
    t2 = refresh(base, t1["refresh_token"]).json()
    t3 = refresh(base, t2["refresh_token"]).json()
    assert me(base, t3["access_token"]).status_code == 200
    # An old (already rotated) refresh token comes back: it leaked, so the family dies.
    assert_error(refresh(base, t1["refresh_token"]), 401, "refresh_token_reused")
    # The newest refresh token and the current access token are refused from now on.
    assert_error(refresh(base, t3["refresh_token"]), 401, "session_revoked")
    assert_unauthorized(me(base, t3["access_token"]), "session_revoked")
    assert_unauthorized(me(base, t1["access_token"]), "session_revoked")


def test_reuse_of_the_latest_rotated_token_also_revokes(base, account):
    _, t1 = account
    t2 = refresh(base, t1["refresh_token"]).json()
    assert_error(refresh(base, t1["refresh_token"]), 401, "refresh_token_reused")
    assert_unauthorized(me(base, t2["access_token"]), "session_revoked")
    # Other sessions of the same user live on.
    email = t1["user"]["email"]
    other = login(base, email)
    assert me(base, other["access_token"]).status_code == 200


@pytest.mark.parametrize("token", ["x" * 43, secrets.token_urlsafe(32)])
def test_refresh_with_unknown_token(base, token):
    assert_error(refresh(base, token), 401, "invalid_refresh_token")


def test_access_token_is_not_a_refresh_token(base, account):
    _, t1 = account
    assert_error(refresh(base, t1["access_token"]), 422, "invalid_field")  # longer than any refresh token
    assert_error(refresh(base, t1["session_id"]), 401, "invalid_refresh_token")


def test_expired_refresh_token(base, stack, account):
    _, tokens = account
    psql(stack, "UPDATE refresh_tokens SET expires_at = now() - interval '1 second' "
                f"WHERE session_id = '{tokens['session_id']}'", dbname=main_dbname(stack))
    assert_error(refresh(base, tokens["refresh_token"]), 401, "refresh_token_expired")
    assert_error(refresh(base, tokens["refresh_token"]), 401, "refresh_token_expired")  # not counted as reuse


def test_disabled_account(base, stack, account):
    email, tokens = account
    psql(stack, f"UPDATE users SET disabled_at = now() WHERE id = '{tokens['user']['id']}'", dbname=main_dbname(stack))
    assert_error(post_json(base, "/v1/auth/login", {"email": email, "password": PASSWORD}), 403, "account_disabled")
    # A wrong password tells nothing about the account's state.
    assert_error(post_json(base, "/v1/auth/login", {"email": email, "password": "wrong password"}), 401,
                 "invalid_credentials")
    assert_error(refresh(base, tokens["refresh_token"]), 401, "session_revoked")
    # The access token itself is refused: while its session is still cached (Redis, or the thread's tracked copy)
    # /v1/me finds the account disabled; once the refresh above revoked the session, the session check refuses it
    r = me(base, tokens["access_token"])
    assert (r.status_code, r.json()["error"]["code"]) in {(403, "account_disabled"), (401, "session_revoked")}, r.text
    assert_error(r, r.status_code)


# --- logout --------------------------------------------------------------------------------------------------

def test_password_hashes_do_not_hold_up_the_offload_pool(controls):
    """FM_HASH_THREADS: logins queue for their own hashing thread, so the offload pool's S3 calls (here /readyz's
    HEAD bucket, on a pool of one thread) are not queued behind argon2id hashes. With the hashes on the offload pool
    /readyz would wait for every login submitted before it."""
    svc = controls.start(FM_OFFLOAD_THREADS="1", FM_HASH_THREADS="1", FM_ARGON2_T="40")
    try:
        email = unique_email("hashpool")
        register(svc.url, email)
        t0 = time.monotonic()
        login(svc.url, email)
        one = time.monotonic() - t0  # a login at this cost, alone

        def timed_login():
            login(svc.url, email)
            return time.monotonic()

        with ThreadPoolExecutor(max_workers=3) as pool:
            logins = [pool.submit(timed_login) for _ in range(3)]
            time.sleep(one / 2)  # the first hash is running, the others wait for the hashing thread
            r = requests.get(svc.url + "/readyz", timeout=60)
            ready_at = time.monotonic()
            ends = sorted(f.result() for f in logins)
        assert r.status_code == 200 and r.json()["checks"]["s3"] == "ok", r.text
        # Three hashes in a row take ~3 × `one`; /readyz came back long before the last of them.
        assert ready_at < ends[-1] - one / 2, (f"/readyz answered {ends[-1] - ready_at:.3f} s before the last "
                                               f"login; one login takes {one:.3f} s")
    finally:
        controls.stop(svc)


@pytest.fixture(scope="module")
def peer(controls, base):
    """A second instance on the same PostgreSQL and Redis (N stateless instances behind a load balancer)."""
    return controls.start()


def test_logout_revokes_the_session_at_once_everywhere(base, peer, account):
    email, tokens = account
    other = login(base, email)  # a second device
    assert me(peer.url, tokens["access_token"]).status_code == 200
    r = requests.post(base + "/v1/auth/logout", headers=bearer(tokens["access_token"]), timeout=10)
    assert r.status_code == 204, r.text
    assert r.content == b""
    # Refused at once, on this instance and on the other one.
    assert_unauthorized(me(base, tokens["access_token"]), "session_revoked")
    assert_unauthorized(me(peer.url, tokens["access_token"]), "session_revoked")
    assert_error(refresh(base, tokens["refresh_token"]), 401, "session_revoked")
    # Logging out twice: the token is no longer valid.
    assert_unauthorized(requests.post(base + "/v1/auth/logout", headers=bearer(tokens["access_token"]), timeout=10),
                        "session_revoked")
    # The other device's session is untouched.
    assert me(base, other["access_token"]).status_code == 200
    assert refresh(peer.url, other["refresh_token"]).status_code == 200


def test_logout_needs_a_token(base):
    assert_unauthorized(requests.post(base + "/v1/auth/logout", timeout=10), "missing_token")


# --- token verification ----------------------------------------------------------------------------------------

@pytest.fixture
def session_claims(base, account):
    """sub and sid of a live session, for hand-made tokens."""
    _, tokens = account
    return tokens["user"]["id"], tokens["session_id"]


def test_hand_made_token_with_the_right_secret_is_accepted(controls, base, session_claims):
    """The baseline of the forged-token tests below: the same construction, correctly signed, works."""
    sub, sid = session_claims
    token = jwt.encode(claims(sub, sid), controls.jwt_secret, algorithm="HS256")
    assert me(base, token).status_code == 200
    assert me(base, hs256_by_hand(controls.jwt_secret.encode(), claims(sub, sid))).status_code == 200


def test_expired_access_token(controls, base, session_claims):
    sub, sid = session_claims
    now = int(time.time())
    token = jwt.encode(claims(sub, sid, iat=now - 1000, ttl=900), controls.jwt_secret, algorithm="HS256")
    assert_unauthorized(me(base, token), "token_expired")


def forged_tokens(secret, sub, sid):
    good = claims(sub, sid)
    key = secret.encode()
    valid = hs256_by_hand(key, good)
    head, payload, sig = valid.split(".")
    padded = dict(good, padding="p" * 9000)
    return {
        "alg_none": compact({"alg": "none", "typ": "JWT"}, good, lambda m: b""),
        "alg_none_mixed_case": compact({"alg": "nOnE", "typ": "JWT"}, good, lambda m: b""),
        "alg_none_with_hs256_signature": compact({"alg": "none"}, good, lambda m: hmac_sha256(key, m)),
        "alg_missing": compact({"typ": "JWT"}, good, lambda m: hmac_sha256(key, m)),
        "hs512": jwt.encode(good, secret, algorithm="HS512"),
        "garbage": "not-a-jwt",
        "two_parts": head + "." + payload,
        "four_parts": valid + ".x",
        "empty_signature": head + "." + payload + ".",
        "bad_base64": head + "." + payload + "!!." + sig,
        "oversized": hs256_by_hand(key, padded),
        "wrong_issuer": hs256_by_hand(key, dict(good, iss="someone-else")),
        "wrong_secret": hs256_by_hand(b"k" * 64, good),
        "tampered_role": head + "." + b64url(json.dumps(dict(good, role="admin"))) + "." + sig,
        "not_yet_valid": hs256_by_hand(key, dict(good, nbf=int(time.time()) + 3600)),
        "no_exp": hs256_by_hand(key, {k: v for k, v in good.items() if k != "exp"}),
        "unknown_role": hs256_by_hand(key, dict(good, role="superuser")),
        "no_sid": hs256_by_hand(key, {k: v for k, v in good.items() if k != "sid"}),
        "sid_not_uuid": hs256_by_hand(key, dict(good, sid="'; DROP TABLE sessions; --")),
    }


def hmac_sha256(key, msg):
    return hmac.new(key, msg, hashlib.sha256).digest()


FORGED = ["alg_none", "alg_none_mixed_case", "alg_none_with_hs256_signature", "alg_missing", "hs512", "garbage",
          "two_parts", "four_parts", "empty_signature", "bad_base64", "oversized", "wrong_issuer", "wrong_secret",
          "tampered_role", "not_yet_valid", "no_exp", "unknown_role", "no_sid", "sid_not_uuid"]


@pytest.mark.parametrize("kind", FORGED)
def test_forged_or_malformed_token_is_refused(controls, base, session_claims, kind):
    sub, sid = session_claims
    token = forged_tokens(controls.jwt_secret, sub, sid)[kind]
    if kind == "oversized":
        assert len(token) > 8192
    assert_unauthorized(me(base, token), "invalid_token")


def test_token_for_a_session_that_does_not_exist(controls, base, session_claims):
    sub, _ = session_claims
    token = jwt.encode(claims(sub, str(uuid.uuid4())), controls.jwt_secret, algorithm="HS256")
    assert_unauthorized(me(base, token), "session_revoked")


def test_token_with_another_users_subject_is_refused(controls, base, session_claims):
    """A valid session id does not lend itself to another subject."""
    _, sid = session_claims
    victim = register(base, unique_email("victim"))
    token = jwt.encode(claims(victim["id"], sid), controls.jwt_secret, algorithm="HS256")
    assert_unauthorized(me(base, token), "session_revoked")


@pytest.mark.parametrize("header,code", [
    (None, "missing_token"),
    ("", "invalid_token"),
    ("Bearer", "invalid_token"),
    ("Bearer ", "invalid_token"),
    ("Basic dXNlcjpwYXNz", "invalid_token"),
    ("Token {token}", "invalid_token"),
    ("{token}", "invalid_token"),
])
def test_authorization_header_shapes(base, account, header, code):
    _, tokens = account
    headers = {} if header is None else {"Authorization": header.format(token=tokens["access_token"])}
    assert_unauthorized(requests.get(base + "/v1/me", headers=headers, timeout=10), code)


def test_bearer_scheme_is_case_insensitive(base, account):
    _, tokens = account
    r = requests.get(base + "/v1/me", headers={"Authorization": "bearer " + tokens["access_token"]}, timeout=10)
    assert r.status_code == 200, r.text


# --- external identity provider: pinned algorithm (no alg confusion) ----------------------------------------------

def pem_public(key):
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def external_claims(sub, iss=EXTERNAL_ISSUER, ttl=300):
    now = int(time.time())
    return {"iss": iss, "sub": sub, "iat": now, "exp": now + ttl}


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def start_external(controls, tmp_path_factory, key, alg):
    d = tmp_path_factory.mktemp("idp")
    (d / "idp.pem").write_bytes(pem_public(key))
    return controls.start(FM_JWT_EXTERNAL_KEY_FILE=str(d / "idp.pem"), FM_JWT_EXTERNAL_ALG=alg,
                          FM_JWT_EXTERNAL_ISSUER=EXTERNAL_ISSUER)


@pytest.fixture(scope="module")
def rs256_instance(controls, tmp_path_factory, rsa_key, base):
    return start_external(controls, tmp_path_factory, rsa_key, "RS256")


@pytest.fixture(scope="module")
def es256_instance(controls, tmp_path_factory, ec_key, base):
    return start_external(controls, tmp_path_factory, ec_key, "ES256")


def test_external_rs256_token_is_accepted_and_provisions_a_user(rs256_instance, rsa_key):
    sub = "alice-" + secrets.token_hex(4)
    token = jwt.encode(external_claims(sub), rsa_key, algorithm="RS256")
    r = me(rs256_instance.url, token)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["auth"] == "external"
    assert body["role"] == "member"
    assert sub in body["email"]
    assert "session_id" not in body
    # The same identity maps to the same user next time; another subject is another user.
    token2 = jwt.encode(external_claims(sub), rsa_key, algorithm="RS256")
    assert me(rs256_instance.url, token2).json()["id"] == body["id"]
    other = me(rs256_instance.url, jwt.encode(external_claims(sub + "-b"), rsa_key, algorithm="RS256")).json()
    assert other["id"] != body["id"]


def test_external_token_confusion_is_refused_rs256(rs256_instance, rsa_key, ec_key, controls):
    sub = "mallory-" + secrets.token_hex(4)
    c = external_claims(sub)
    public_pem = pem_public(rsa_key)
    other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tokens = {
        # HS256 keyed with the provider's public key (the classic confusion attack), with and without newline.
        "hs256_with_public_pem": hs256_by_hand(public_pem, c),
        "hs256_with_public_pem_stripped": hs256_by_hand(public_pem.strip(), c),
        "es256_for_rs256_issuer": jwt.encode(c, ec_key, algorithm="ES256"),
        "rs256_other_key": jwt.encode(c, other_rsa, algorithm="RS256"),
        "ps256_same_key": jwt.encode(c, rsa_key, algorithm="PS256"),
        "rs256_claiming_our_issuer": jwt.encode(dict(c, iss=ISSUER, sid=str(uuid.uuid4()), role="admin"), rsa_key,
                                                algorithm="RS256"),
        "none_for_external_issuer": compact({"alg": "none"}, c, lambda m: b""),
        "hs256_with_our_secret_for_external_issuer": hs256_by_hand(controls.jwt_secret.encode(), c),
        "rs256_expired": jwt.encode(dict(c, iat=c["iat"] - 1000, exp=c["iat"] - 100), rsa_key, algorithm="RS256"),
    }
    for name, token in tokens.items():
        r = me(rs256_instance.url, token)
        err = assert_unauthorized(r)
        assert err["code"] in ("invalid_token", "token_expired"), (name, err)
        if name == "rs256_expired":
            assert err["code"] == "token_expired", (name, err)
    # None of the refused tokens provisioned a user.
    good = me(rs256_instance.url, jwt.encode(c, rsa_key, algorithm="RS256"))
    assert good.status_code == 200 and good.json()["auth"] == "external"


def test_external_es256_token_is_accepted(es256_instance, ec_key):
    sub = "bob-" + secrets.token_hex(4)
    r = me(es256_instance.url, jwt.encode(external_claims(sub), ec_key, algorithm="ES256"))
    assert r.status_code == 200, r.text
    assert r.json()["auth"] == "external" and sub in r.json()["email"]


def test_external_token_confusion_is_refused_es256(es256_instance, ec_key, rsa_key):
    c = external_claims("eve-" + secrets.token_hex(4))
    public_pem = pem_public(ec_key)
    tokens = {
        "hs256_with_public_pem": hs256_by_hand(public_pem, c),
        "rs256_for_es256_issuer": jwt.encode(c, rsa_key, algorithm="RS256"),
        "es256_other_key": jwt.encode(c, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256"),
        "es384_other_curve": jwt.encode(c, ec.generate_private_key(ec.SECP384R1()), algorithm="ES384"),
        "none": compact({"alg": "none"}, c, lambda m: b""),
    }
    for name, token in tokens.items():
        err = assert_unauthorized(me(es256_instance.url, token))
        assert err["code"] == "invalid_token", (name, err)


def test_external_key_must_fit_the_pinned_algorithm(controls, tmp_path_factory, ec_key):
    """An EC key configured as RS256 is a configuration error: the service refuses to start."""
    d = tmp_path_factory.mktemp("idp-bad")
    (d / "idp.pem").write_bytes(pem_public(ec_key))
    env = controls.env(FM_HTTP_PORT=free_ports(1)[0], FM_JWT_EXTERNAL_KEY_FILE=str(d / "idp.pem"),
                       FM_JWT_EXTERNAL_ALG="RS256", FM_JWT_EXTERNAL_ISSUER=EXTERNAL_ISSUER)
    p = subprocess.run([str(BUILD_DIR / "fm-control")], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode != 0
    assert "JWT" in p.stderr or "jwt" in p.stderr, p.stderr
    assert not SANITIZER_REPORT.search(p.stderr), p.stderr


# --- rate limits -----------------------------------------------------------------------------------------------

RL_DB = 3


@pytest.fixture(scope="module")
def limited(controls, stack, base):
    """An instance with small limits and its own Redis database, so its counters mix with nobody's."""
    return controls.start(FM_LOGIN_LIMIT_ACCOUNT_IP=3, FM_LOGIN_LIMIT_ACCOUNT=3, FM_LOGIN_LIMIT_IP=5,
                          FM_LOGIN_LIMIT_NET=20, FM_LOGIN_WINDOW_S=60, FM_REGISTER_LIMIT_IP=3,
                          FM_REDIS_URL=redis_url(stack, RL_DB))


@pytest.fixture
def fresh_limits(limited, stack):
    redis_cmd(stack, RL_DB, "FLUSHDB")
    yield limited
    redis_cmd(stack, RL_DB, "FLUSHDB")


def assert_rate_limited(r):
    assert_error(r, 429, "rate_limited")
    retry_after = r.headers.get("Retry-After")
    assert retry_after is not None and retry_after.isdigit(), r.headers
    assert 0 < int(retry_after) <= 60


def test_login_limit_per_account_and_client(fresh_limits, base):
    email = unique_email("rl")
    register(base, email)  # on the main instance: registrations are not what is counted here
    url = fresh_limits.url
    # Three wrong passwords (one spelled in capitals: the same account) use up FM_LOGIN_LIMIT_ACCOUNT_IP.
    for spelling in (email, email.upper(), email):
        assert_error(post_json(url, "/v1/auth/login", {"email": spelling, "password": "wrong password"}), 401,
                     "invalid_credentials")
    # The next attempt from this client is refused before the password is looked at, even the right one.
    assert_rate_limited(post_json(url, "/v1/auth/login", {"email": email, "password": PASSWORD}))
    # Another account from the same address (4th attempt counted from it, within the per-IP limit) is not locked.
    other = unique_email("rl-other")
    register(base, other)
    assert login(url, other)["user"]["email"] == other


def test_login_limit_per_ip(fresh_limits):
    url = fresh_limits.url
    for _ in range(5):
        assert_error(post_json(url, "/v1/auth/login", {"email": unique_email("spray"), "password": "guess1234"}),
                     401, "invalid_credentials")
    # Password spraying over many accounts from one address hits the per-IP limit.
    assert_rate_limited(post_json(url, "/v1/auth/login", {"email": unique_email("spray"), "password": "guess1234"}))


def test_register_limit_per_ip(fresh_limits):
    url = fresh_limits.url
    for _ in range(3):
        register(url, unique_email("reg"))
    r = post_json(url, "/v1/auth/register", {"email": unique_email("reg"), "password": PASSWORD})
    assert_rate_limited(r)


def test_invalid_registrations_are_not_counted(fresh_limits):
    url = fresh_limits.url
    for _ in range(5):
        assert_error(post_json(url, "/v1/auth/register", {"email": "bad", "password": PASSWORD}), 422,
                     "invalid_email")
    register(url, unique_email("reg"))


# --- HTTP/2 ----------------------------------------------------------------------------------------------------

CURL = shutil.which("curl") or "/usr/bin/curl"


def curl(*args):
    p = subprocess.run([CURL, "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=20)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_h2c_prior_knowledge(base, account):
    _, tokens = account
    out = curl("--http2-prior-knowledge", "-i", base + "/healthz")
    assert out.startswith("HTTP/2 200"), out[:200]
    out = curl("--http2-prior-knowledge", "-i", "-H", "Authorization: Bearer " + tokens["access_token"],
               base + "/v1/me")
    assert out.startswith("HTTP/2 200"), out[:300]
    assert tokens["user"]["id"] in out
    out = curl("--http2-prior-knowledge", "-i", base + "/v1/me")
    assert out.startswith("HTTP/2 401"), out[:300]
    assert '"code":"missing_token"' in out


@pytest.fixture(scope="module")
def tls_instance(controls, tmp_path_factory, base):
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    p = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                        str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    (https_port,) = free_ports(1)
    svc = controls.start(FM_HTTPS_PORT=https_port, FM_TLS_CERT=str(cert), FM_TLS_KEY=str(key))
    return svc, f"https://127.0.0.1:{https_port}", cert


def test_tls_negotiates_http2(tls_instance, account):
    _, https, cert = tls_instance
    _, tokens = account
    assert curl("-k", "--http2", "-o", "/dev/null", "-w", "%{http_version}", https + "/healthz") == "2"
    out = curl("--cacert", str(cert), "--http2", "-i", "-H", "Authorization: Bearer " + tokens["access_token"],
               https + "/v1/me")
    assert out.startswith("HTTP/2 200"), out[:300]
    # HTTP/1.1 over TLS still works (clients without ALPN h2).
    assert curl("-k", "--http1.1", "-o", "/dev/null", "-w", "%{http_version}", https + "/healthz") == "1.1"
    r = requests.post(https + "/v1/auth/login", json={"email": tokens["user"]["email"], "password": PASSWORD},
                      verify=str(cert), timeout=10)
    assert r.status_code == 200, r.text
