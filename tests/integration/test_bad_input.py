"""Bad input against the accounts routes (DESIGN.md §6): every error is JSON {"error":{"code","message",
"request_id"}} with the right status, and no input crashes fm-control. The last test checks the main instance is
still healthy after all of it (and the session teardown checks its exit status and sanitizer log).

Run: /usr/bin/python3 -m pytest -q tests/integration/test_bad_input.py
"""
import http.client
import json
import re
import secrets
import socket

import pytest
import requests

from conftest import SANITIZER_REPORT, unique_email
from helpers_fm import PASSWORD, assert_error, login, post_json, register

JSON_ROUTES = ["/v1/auth/register", "/v1/auth/login", "/v1/auth/refresh"]
GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def base(control):
    register(control.url, unique_email("seed"))
    return control.url


def post_raw(base, path, data, content_type="application/json", headers=None):
    h = dict(headers or {})
    if content_type is not None:
        h["Content-Type"] = content_type
    return requests.post(base + path, data=data, headers=h, timeout=10)


def raw_http(base, data, timeout=5):
    """Sends bytes on a fresh connection; returns what the server answered first (b"" if it just closed)."""
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        try:
            return s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            return b""


def login_with_user_agent(base, email, password, user_agent):
    """A login whose User-Agent is sent byte for byte (requests would re-encode it)."""
    port = int(base.rsplit(":", 1)[1])
    body = json.dumps({"email": email, "password": password}).encode()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.putrequest("POST", "/v1/auth/login", skip_accept_encoding=True)
        c.putheader("Content-Type", "application/json")
        c.putheader("User-Agent", user_agent)
        c.putheader("Content-Length", str(len(body)))
        c.endheaders(body)
        r = c.getresponse()
        return r.status, r.getheader("X-Request-Id"), r.read()
    finally:
        c.close()


# --- media type ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("route", JSON_ROUTES)
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx", "json", ""])
def test_wrong_content_type_is_415(base, route, content_type):
    body = json.dumps({"email": "a@example.test", "password": PASSWORD, "refresh_token": "x" * 43})
    assert_error(post_raw(base, route, body, content_type), 415, "unsupported_media_type")


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON",
                                          "application/json;charset=UTF-8"])
def test_json_content_type_variants_are_accepted(base, content_type):
    email = unique_email("ct")
    body = json.dumps({"email": email, "password": PASSWORD})
    r = post_raw(base, "/v1/auth/register", body, content_type)
    assert r.status_code == 201, r.text
    assert post_raw(base, "/v1/auth/login", body, content_type).status_code == 200


# --- malformed JSON ------------------------------------------------------------------------------------------

MALFORMED = {
    "truncated": '{"email":',
    "trailing_garbage": '{"email":"a@example.test","password":"12345678"} x',
    "two_objects": '{"email":"a@example.test"}{"password":"12345678"}',
    "array": '[{"email":"a@example.test","password":"12345678"}]',
    "string": '"hello"',
    "number": "42",
    "null": "null",
    "true": "true",
    "empty": "",
    "whitespace": "  \n\t ",
    "single_quotes": "{'email': 'a@example.test'}",
    "trailing_comma": '{"email":"a@example.test",}',
    "unquoted_key": '{email:"a@example.test"}',
    "nan": '{"email": NaN}',
    "comment": '{"email":"a@example.test" /* hi */}',
    "deep_arrays": "[" * 10000,
    "deep_arrays_closed": "[" * 5000 + "]" * 5000,
    "deep_objects": '{"a":' * 3000,
    "deep_inside_field": '{"email":' + "[" * 4000 + "]" * 4000 + ',"password":"12345678"}',
    "bad_escape": '{"email":"\\x41@example.test"}',
    "lone_surrogate_escape_unterminated": '{"email":"\\ud800',
}


@pytest.mark.parametrize("route", JSON_ROUTES)
@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_json_is_400(base, route, kind):
    body = MALFORMED[kind]
    assert len(body.encode()) <= 16384  # under the auth body limit: the parser itself must refuse it
    assert_error(post_raw(base, route, body.encode()), 400, "invalid_json")


def test_moderately_deep_json_parses_and_fails_on_the_field(base):
    body = '{"email":' + "[" * 200 + "]" * 200 + ',"password":"12345678"}'
    assert_error(post_raw(base, "/v1/auth/register", body), 422, "invalid_field")


# --- sizes ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("route", JSON_ROUTES)
def test_auth_body_over_16_kib_is_413_json(base, route):
    body = json.dumps({"email": "a" * (200 * 1024) + "@example.test", "password": PASSWORD})
    assert_error(post_raw(base, route, body), 413, "payload_too_large")


def test_auth_body_just_under_16_kib_is_parsed(base):
    body = json.dumps({"email": unique_email(), "password": PASSWORD, "padding": "p" * 16000})
    assert len(body) <= 16384
    r = post_raw(base, "/v1/auth/register", body)
    assert r.status_code == 201, r.text


def test_body_over_max_body_bytes_is_413(base):
    """h2o refuses on the announced Content-Length, before the body: a client that keeps sending meets a closed
    connection, so the exchange is driven by hand (headers only, then read) to see the answer every time."""
    host, port = base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 2097152\r\nConnection: close\r\n\r\n" + b'{"email":"' + b"a" * 1000)
        f = s.makefile("rb")
        status = f.readline()
        headers = {}
        while (line := f.readline().strip()):
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        body = f.read(int(headers.get("content-length", "0")))
    assert status.split()[1] == b"413", status
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    assert json.loads(body)["error"]["request_id"] == headers["x-request-id"]
    assert requests.get(base + "/healthz", timeout=5).status_code == 200


def test_chunked_body_over_max_body_bytes_is_413(base):
    def chunks():
        yield b'{"email":"'
        for _ in range(40):
            yield b"a" * 65536
        yield b'"}'

    r = requests.post(base + "/v1/auth/login", data=chunks(), headers={"Content-Type": "application/json"},
                      timeout=10)
    assert r.status_code == 413, r.text[:200]
    assert requests.get(base + "/healthz", timeout=5).status_code == 200


# --- fields --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("route", ["/v1/auth/register", "/v1/auth/login"])
@pytest.mark.parametrize("field", ["email", "password"])
@pytest.mark.parametrize("value,code", [(5, "invalid_field"), (1.5, "invalid_field"), (True, "invalid_field"),
                                        ({"a": 1}, "invalid_field"), (["x@example.test"], "invalid_field"),
                                        (None, "missing_field"), ("", "invalid_field")])
def test_wrong_field_types_are_422(base, route, field, value, code):
    body = {"email": unique_email(), "password": PASSWORD}
    body[field] = value
    assert_error(post_json(base, route, body), 422, code)


@pytest.mark.parametrize("value,code", [(5, "invalid_field"), (None, "missing_field"), ({}, "invalid_field"),
                                        ("", "invalid_field"), ("x" * 343, "invalid_field")])
def test_refresh_token_field_is_checked(base, value, code):
    assert_error(post_json(base, "/v1/auth/refresh", {"refresh_token": value}), 422, code)
    assert_error(post_json(base, "/v1/auth/refresh", {}), 422, "missing_field")


def email_of_length(n):
    domain = "@example.test"
    return "u" + secrets.token_hex(4) + "x" * (n - 9 - len(domain)) + domain


def test_email_length_bounds(base):
    longest = email_of_length(254)
    assert len(longest) == 254
    assert register(base, longest)["email"] == longest
    login(base, longest)
    for route in ("/v1/auth/register", "/v1/auth/login"):
        assert_error(post_json(base, route, {"email": email_of_length(255), "password": PASSWORD}), 422,
                     "invalid_field")
        assert_error(post_json(base, route, {"email": email_of_length(5000), "password": PASSWORD}), 422,
                     "invalid_field")


def test_password_length_bounds(base):
    email = unique_email()
    assert register(base, email, "p" * 1024)["email"] == email
    login(base, email, "p" * 1024)
    assert_error(post_json(base, "/v1/auth/login", {"email": email, "password": "p" * 1023}), 401,
                 "invalid_credentials")
    for route in ("/v1/auth/register", "/v1/auth/login"):
        assert_error(post_json(base, route, {"email": unique_email(), "password": "p" * 1025}), 422, "invalid_field")


def test_unknown_fields_are_ignored(base):
    email = unique_email()
    r = post_json(base, "/v1/auth/register", {"email": email, "password": PASSWORD, "role": "admin", "id": "x"})
    assert r.status_code == 201, r.text
    assert r.json()["user"]["role"] == "member"  # a client cannot choose its role


def test_non_ascii_email_is_refused_and_punycode_round_trips(base):
    """Addresses are ASCII (docs/decisions.md: one normal form for the limiter and the database); an
    internationalised domain is given in its xn-- form."""
    for route in ("/v1/auth/register", "/v1/auth/login"):
        assert_error(post_json(base, route, {"email": f"ünï-{secrets.token_hex(4)}@exämple.test", "password": PASSWORD}),
                     422, "invalid_email")
    email = f"Uni-{secrets.token_hex(4)}@xn--exmple-cua.test"
    assert register(base, email)["email"] == email
    assert login(base, email.lower())["user"]["email"] == email


# --- invalid UTF-8 and NUL bytes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("route", ["/v1/auth/register", "/v1/auth/login"])
def test_invalid_utf8_email_is_a_client_error(base, route):
    body = b'{"email":"\xff\xfe' + secrets.token_hex(4).encode() + b'@example.test","password":"12345678"}'
    r = post_raw(base, route, body)
    assert r.status_code in (400, 422), f"{r.status_code} {r.text}"
    assert_error(r, r.status_code)


def test_invalid_utf8_password_is_handled(base):
    """Passwords are bytes to argon2id: either refused as a client error, or accepted and compared exactly."""
    email = unique_email("utf8pw")
    body = b'{"email":"' + email.encode() + b'","password":"\xff\xfe\xfd-password"}'
    r = post_raw(base, "/v1/auth/register", body)
    if r.status_code != 201:
        assert_error(r, r.status_code)
        assert r.status_code in (400, 422)
        return
    assert post_raw(base, "/v1/auth/login", body).status_code == 200
    other = b'{"email":"' + email.encode() + b'","password":"\xff\xfe\xfc-password"}'
    assert_error(post_raw(base, "/v1/auth/login", other), 401, "invalid_credentials")


def test_invalid_utf8_refresh_token(base):
    # RFC 8259 §8.1: JSON text is UTF-8; any body that is not is refused before parsing.
    assert_error(post_raw(base, "/v1/auth/refresh", b'{"refresh_token":"\xff\xfe\xfd' + b"a" * 40 + b'"}'), 400,
                 "invalid_json")


def test_nul_byte_in_email_is_refused(base):
    email = unique_email("nul")
    r = post_json(base, "/v1/auth/register", {"email": email + "\u0000junk", "password": PASSWORD})
    assert_error(r, 422)


def test_nul_byte_alone_in_email(base):
    assert_error(post_json(base, "/v1/auth/register", {"email": "\u0000@example.test", "password": PASSWORD}), 422)


def test_nul_byte_in_password_is_not_truncated(base):
    email = unique_email("nulpw")
    r = post_json(base, "/v1/auth/register", {"email": email, "password": "password123\u0000tail"})
    if r.status_code != 201:
        assert_error(r, 422)  # refusing NUL bytes outright is fine
        return
    assert_error(post_json(base, "/v1/auth/login", {"email": email, "password": "password123\u0000other"}), 401,
                 "invalid_credentials")
    assert_error(post_json(base, "/v1/auth/login", {"email": email, "password": "password123"}), 401,
                 "invalid_credentials")


def test_long_ascii_user_agent_is_fine(base):
    email = unique_email("ua")
    register(base, email)
    status, _, body = login_with_user_agent(base, email, PASSWORD, "agent/" + "x" * 3000)
    assert status == 200, body


@pytest.mark.parametrize("user_agent", [b"\xff\xfe", ("a" * 510 + "\u00e9").encode()],
                         ids=["not_utf8", "utf8_cut_by_truncation"])
def test_odd_user_agent_does_not_break_login(base, user_agent):
    email = unique_email("ua")
    register(base, email)
    status, _, body = login_with_user_agent(base, email, PASSWORD, user_agent)
    assert status == 200, body


# --- routing -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,path", [("GET", "/"), ("GET", "/v1"), ("GET", "/v1/nope"), ("POST", "/v1/auth"),
                                         ("GET", "/v1/me/extra"), ("POST", "/v1/auth/login/x"),
                                         ("GET", "/v1/auth/../../etc/passwd"), ("GET", "/%00"),
                                         ("GET", "/v1/ME"), ("DELETE", "/nope")])
def test_unknown_route_is_404(base, method, path):
    r = requests.request(method, base + path, timeout=10)
    assert_error(r, 404, "not_found")


@pytest.mark.parametrize("method,path,allow", [("GET", "/v1/auth/login", "POST"), ("PUT", "/v1/auth/register", "POST"),
                                               ("DELETE", "/v1/auth/logout", "POST"), ("POST", "/v1/me", "GET"),
                                               ("PATCH", "/v1/me", "GET"), ("POST", "/healthz", "GET"),
                                               ("DELETE", "/readyz", "GET")])
def test_wrong_method_is_405_with_allow(base, method, path, allow):
    r = requests.request(method, base + path, timeout=10)
    assert_error(r, 405, "method_not_allowed")
    assert allow in [m.strip() for m in r.headers["Allow"].split(",")]


# --- request ids ---------------------------------------------------------------------------------------------

def test_request_id_is_echoed_when_sent(base):
    for path in ("/healthz", "/v1/nope", "/v1/me"):
        r = requests.get(base + path, headers={"X-Request-Id": "client-req_42.a:b"}, timeout=10)
        assert r.headers["X-Request-Id"] == "client-req_42.a:b"
    r = post_json(base, "/v1/auth/login", {"email": unique_email(), "password": PASSWORD},
                  headers={"X-Request-Id": "trace-123"})
    assert assert_error(r, 401, "invalid_credentials")["request_id"] == "trace-123"


def test_request_id_is_generated_when_missing_or_unusable(base):
    seen = set()
    for sent in (None, "has space", "x" * 65, "quote\"inside", "<script>"):
        headers = {} if sent is None else {"X-Request-Id": sent}
        r = requests.get(base + "/v1/nope", headers=headers, timeout=10)
        err = assert_error(r, 404, "not_found")
        assert GENERATED_ID.match(err["request_id"]), err
        seen.add(err["request_id"])
    assert len(seen) == 5  # unique per request


# --- raw protocol abuse ----------------------------------------------------------------------------------------

RAW = {
    "garbage_line": b"GARBAGE\r\n\r\n",
    "bad_content_length": b"POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "negative_content_length": b"POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}",
    "bad_chunk": b"POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                 b"Content-Type: application/json\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "binary_auth_header": b"GET /v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \x01\x02\xff.\xfe.\x00\r\n\r\n",
    "huge_header": b"GET /v1/me HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 200000 + b"\r\n\r\n",
    "h2_preface_then_junk": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x04\x01\x00\x00\x00\x00\x00junk" * 3,
    "http_0_9": b"GET /healthz\r\n\r\n",
}


@pytest.mark.parametrize("kind", list(RAW))
def test_protocol_abuse_does_not_hurt_the_server(base, kind):
    answer = raw_http(base, RAW[kind])
    if answer.startswith(b"HTTP/1."):
        status = int(answer.split()[1])
        assert 400 <= status < 500, answer[:200]
    assert requests.get(base + "/healthz", timeout=5).status_code == 200


# --- still standing --------------------------------------------------------------------------------------------

def test_zz_service_survived(base, control):
    assert control.proc.poll() is None, "fm-control exited"
    r = requests.get(base + "/healthz", timeout=5)
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert requests.get(base + "/readyz", timeout=10).status_code == 200
    email = unique_email("after")
    register(base, email)
    login(base, email)
    assert not SANITIZER_REPORT.search(control.log_text())
