"""Small helpers shared by the accounts tests: error-shape assertions, account set-up, hand-made JWTs, a raw RESP
client for Redis and psql against the private stack. No mocks: everything talks to the real services."""
import base64
import hashlib
import hmac
import json
import re
import socket
import subprocess
import threading
import time

import requests

PASSWORD = "correct horse battery staple"
ISSUER = "files-manager"


def assert_error(resp, status, code=None):
    """The contract of DESIGN.md §6: the status, a JSON body {"error":{"code","message","request_id"}} whose
    request_id is the X-Request-Id header; returns the error object."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text[:500]}"
    assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err.get("code"), str) and err["code"], body
    assert isinstance(err.get("message"), str) and err["message"], body
    assert isinstance(err.get("request_id"), str) and err["request_id"], body
    assert err["request_id"] == resp.headers.get("X-Request-Id"), (err, resp.headers)
    if code is not None:
        assert err["code"] == code, f"expected code {code!r}, got {err['code']!r}: {body}"
    return err


def assert_unauthorized(resp, code=None):
    err = assert_error(resp, 401, code)
    assert resp.headers.get("WWW-Authenticate", "").startswith("Bearer"), resp.headers
    return err


def post_json(base, path, body, headers=None, timeout=10):
    return requests.post(base + path, json=body, headers=headers or {}, timeout=timeout)


def register(base, email, password=PASSWORD):
    r = post_json(base, "/v1/auth/register", {"email": email, "password": password})
    assert r.status_code == 201, r.text
    return r.json()["user"]


def login(base, email, password=PASSWORD):
    r = post_json(base, "/v1/auth/login", {"email": email, "password": password})
    assert r.status_code == 200, r.text
    return r.json()


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def me(base, token, timeout=10):
    return requests.get(base + "/v1/me", headers=bearer(token), timeout=timeout)


def b64url(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(header, payload, sign):
    """A compact JWS from dicts; `sign(signing_input_bytes) -> signature bytes`."""
    signing_input = b64url(json.dumps(header, separators=(",", ":"))) + "." + b64url(
        json.dumps(payload, separators=(",", ":")))
    return signing_input + "." + b64url(sign(signing_input.encode()))


def hs256_by_hand(key_bytes, payload, header=None):
    """HS256 with any key bytes (PyJWT refuses a PEM public key as an HMAC secret; that is the attack)."""
    return compact(header or {"alg": "HS256", "typ": "JWT"}, payload,
                   lambda msg: hmac.new(key_bytes, msg, hashlib.sha256).digest())


def claims(sub, sid, role="member", iss=ISSUER, iat=None, ttl=900, **extra):
    now = int(time.time()) if iat is None else iat
    out = {"iss": iss, "sub": sub, "sid": sid, "role": role, "iat": now, "nbf": now, "exp": now + ttl}
    out.update(extra)
    return out


def metric_sum(text, name, **labels):
    """The sum of the samples of `name` in a /metrics text whose labels include `labels`. A counter has no sample
    until its first increment, so no sample reads 0 -- but only when the family itself is exposed (its `# TYPE`
    line): a renamed or misspelt metric fails here instead of reading an "unchanged" 0."""
    total, found = 0.0, False
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
            found = True
    family = re.sub(r"_(count|sum|bucket)$", "", name)  # a histogram's series are named after its family
    if not found and not re.search(rf"^# TYPE ({re.escape(name)}|{re.escape(family)} histogram)", text, re.M):
        raise AssertionError(f"/metrics exposes no family {name}")
    return total


def metric(base_url, name, **labels):
    """metric_sum of the service at `base_url` (fm-control, fm-edge, fm-worker: GET /metrics)."""
    return metric_sum(requests.get(base_url + "/metrics", timeout=10).text, name, **labels)


def wait_for(predicate, timeout, interval=0.1):
    """Polls predicate() until it returns a truthy value; returns that value or the last falsy one."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


# --- the stack's services, spoken to directly --------------------------------------------------------------------

def redis_port(stack):
    return int(stack.env["FM_REDIS_URL"].rsplit(":", 1)[1].split("/")[0])


def redis_url(stack, db):
    return f"redis://127.0.0.1:{redis_port(stack)}/{db}"


def _read_reply(f):
    line = f.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise RuntimeError(f"unexpected RESP line {line!r}")


def redis_cmd(stack, db, *args):
    """One Redis command on database `db`; returns the decoded reply."""
    def encode(parts):
        out = f"*{len(parts)}\r\n".encode()
        for p in parts:
            b = p if isinstance(p, bytes) else str(p).encode()
            out += f"${len(b)}\r\n".encode() + b + b"\r\n"
        return out

    with socket.create_connection(("127.0.0.1", redis_port(stack)), timeout=5) as s:
        s.sendall(encode(["SELECT", db]) + encode(list(args)))
        f = s.makefile("rb")
        _read_reply(f)
        return _read_reply(f)


def psql(stack, sql, dbname=None):
    """Runs SQL as user postgres on the stack's PostgreSQL; returns the unaligned output."""
    args = ["/usr/bin/psql", "-X", "-tA", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p",
            str(stack.env["FM_PG_PORT"]), "-U", "postgres", "-d", dbname or "postgres", "-c", sql]
    p = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def database_url(stack, dbname):
    """The stack's FM_DATABASE_URL with another database name."""
    words = [w for w in stack.env["FM_DATABASE_URL"].split() if not w.startswith("dbname=")]
    return " ".join(words + [f"dbname={dbname}"])


def main_dbname(stack):
    """The database name in the stack's FM_DATABASE_URL."""
    return next(w.split("=", 1)[1] for w in stack.env["FM_DATABASE_URL"].split() if w.startswith("dbname="))


def relay_sockets(client, upstream):
    """Copies bytes both ways between two connected sockets until either side closes, then shuts both down (the
    tests' TCP relays in front of clamd or the store)."""
    def pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
    back.start()
    pump(client, upstream)
    back.join(30)
