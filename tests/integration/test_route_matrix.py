"""Every route guarded: the routes of control-plane/main.c's `routes[]` and edge/main.c's, each × {no token, an
expired token, a garbage token, another account's id, a narrower role, bad input}, with the status AND the error code
of the JSON error body (DESIGN §6: {"error":{"code","message","request_id"}}).

The route tables are read from the C sources when the suite runs: a route without a row here fails
test_every_route_has_a_row, naming it. A case that does not apply is `NA("why")`.

Rules the rows follow (docs/decisions.md, "Route matrix"): another account's resource is 404 with the route's
not-found code, never 403 (a 403 would confirm that the id exists); a viewer cannot obtain upload URLs or start
uploads (403 `forbidden`); admin routes answer a member 403 `forbidden`. Every "another account" case is checked
against its owner too (the owner's same request is not the 404), so the 404 cannot come from a wrong path.

One fm-control (its own Redis database) and one fm-edge serve the whole module.

    FM_BUILD_DIR=build /usr/bin/python3 -m pytest tests/integration/test_route_matrix.py -q
"""
import base64
import datetime
import json
import re
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from helpers_fm import assert_error, claims, hs256_by_hand, redis_url
from helpers_uploads import Fm, dedicated, random_bytes
from test_edge import put_object, s3, sign, signer  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[2]
MATRIX_REDIS_DB = 57  # 47+ is free; 57 and 58 are less likely to meet another new module at a merge
EVENTS_SECRET = "route-matrix-events-secret-0123456789abcdef"
MIB = 1024 * 1024
CASES = ("no_token", "expired_token", "garbage_token", "other_account", "narrow_role", "bad_input")


def c_routes(source):
    """(method, path) of every row of the `routes[]` table in a C source file."""
    text = (ROOT / source).read_text()
    table = re.search(r"static const fm_route_t routes\[\] = \{(.*?)\n\};", text, re.S)
    assert table, f"no routes[] table in {source}"
    return re.findall(r'\{\s*"([A-Z]+)",\s*"([^"]+)",\s*\w+\s*\}', table.group(1))


class NA:
    def __init__(self, reason):
        self.reason = reason


class E:
    """An expected refusal: `status`, `code`; `send(ctx)` makes the request (None: the case's default one)."""

    def __init__(self, status, code, send=None, what=""):
        self.status, self.code, self.send, self.what = status, code, send, what


# ---- the module's stack: one fm-control, users, and resources of each ----------------------------------------------

class Ctx:
    pass


def q(value):
    return urllib.parse.quote(value, safe="")


def single_put(fm, user):
    data = random_bytes(1000)
    return fm.start(user, data), data


def multipart(fm, user):
    return fm.start(user, size=20 * MIB, sha256="ab" * 32)


def uppy_multipart(fm, user):
    r = fm.call(user, "POST", "/v1/uppy/s3/multipart", json={
        "filename": "m.bin", "type": "application/octet-stream",
        "metadata": {"size": 11 * MIB, "sha256": "cd" * 32}})
    assert r.status_code == 200, r.text
    return r.json()


def resources(fm, user):
    """What the routes act on, owned by `user`: a pending single PUT, a multipart upload, an Uppy multipart upload
    and an UPLOADED file with its job (the PUT and the complete went through the real routes)."""
    res = {"single": single_put(fm, user)[0], "multipart": multipart(fm, user), "uppy": uppy_multipart(fm, user)}
    done, _ = fm.upload(user, random_bytes(1200))
    res["file_id"] = done["file_id"]
    res["job_id"] = fm.sql(f"SELECT id FROM jobs WHERE upload_id = '{done['upload_id']}'")
    assert res["job_id"], done
    # a folder (made in PostgreSQL: a viewer may not create one) and one in the trash, for the folder routes
    res["folder_id"] = fm.sql(f"INSERT INTO folders (owner_id, name) VALUES ('{user.id}', 'mx-folder') RETURNING id")
    res["trashed_folder_id"] = fm.sql(f"INSERT INTO folders (owner_id, name, deleted_at) VALUES ('{user.id}', "
                                      f"'mx-trashed', now()) RETURNING id")
    fm.sql(f"UPDATE folders SET trashed_with = id WHERE id = '{res['trashed_folder_id']}'")
    return res


def rsa_key_file(folder):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = folder / "cf.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def ctx(controls, stack, tmp_path_factory):
    key = rsa_key_file(tmp_path_factory.mktemp("matrix-cf"))
    with dedicated(controls, stack, Fm, FM_REDIS_URL=redis_url(stack, MATRIX_REDIS_DB), FM_EVENTS_SECRET=EVENTS_SECRET,
                   FM_CF_KEYS=f"KMATRIX1={key}", FM_EDGE_PUBLIC_BASE="http://127.0.0.1:9/",
                   FM_MULTIPART_THRESHOLD=8 * MIB) as fm:
        c = Ctx()
        c.fm = fm
        c.a, c.b, c.viewer, c.admin = fm.user("mx-a"), fm.user("mx-b"), fm.user("mx-viewer"), fm.user("mx-admin")
        c.ra, c.rb, c.rv = resources(fm, c.a), resources(fm, c.b), resources(fm, c.viewer)
        # Roles change in PostgreSQL; a new login carries the new role (the session entry is rebuilt).
        fm.sql(f"UPDATE users SET role = 'viewer' WHERE id = '{c.viewer.id}'; "
               f"UPDATE users SET role = 'admin' WHERE id = '{c.admin.id}'")
        fm.relogin(c.viewer)
        fm.relogin(c.admin)
        assert fm.call(c.viewer, "GET", "/v1/me").json()["role"] == "viewer"
        assert fm.call(c.admin, "GET", "/v1/me").json()["role"] == "admin"
        sid = json.loads(base64.urlsafe_b64decode(c.a.token.split(".")[1] + "==="))["sid"]
        now = int(time.time())
        c.expired = hs256_by_hand(controls.jwt_secret.encode(), claims(c.a.id, sid, iat=now - 3600, ttl=60))
        yield c


# ---- how each route is called ---------------------------------------------------------------------------------------
# `path(res)` names the route for a user's resources `res`; `body` is a valid body (the refusals come before it is
# used). Every request runs as a user (or none): CALL(ctx, user, res) → requests.Response.

def uppy_route(res, tail=""):
    u = res["uppy"]
    return f"/v1/uppy/s3/multipart/{q(u['uploadId'])}{tail}?key={q(u['key'])}"


ROUTE_CALLS = {
    ("GET", "/readyz"): (lambda res: "/readyz", None),
    ("POST", "/v1/auth/register"): (lambda res: "/v1/auth/register", None),
    ("POST", "/v1/auth/login"): (lambda res: "/v1/auth/login", None),
    ("POST", "/v1/auth/refresh"): (lambda res: "/v1/auth/refresh", None),
    ("POST", "/v1/auth/logout"): (lambda res: "/v1/auth/logout", None),
    ("GET", "/v1/me"): (lambda res: "/v1/me", None),
    ("POST", "/v1/uploads"): (lambda res: "/v1/uploads",
                              {"name": "x.bin", "size": 10, "content_type": "application/octet-stream",
                               "sha256": "ef" * 32}),
    ("POST", "/v1/uploads/{id}/parts"): (lambda res: f"/v1/uploads/{res['multipart']['upload_id']}/parts",
                                         {"part_numbers": [1]}),
    ("GET", "/v1/uploads/{id}/parts"): (lambda res: f"/v1/uploads/{res['multipart']['upload_id']}/parts", None),
    ("POST", "/v1/uploads/{id}/complete"): (lambda res: f"/v1/uploads/{res['single']['upload_id']}/complete", None),
    ("DELETE", "/v1/uploads/{id}"): (lambda res: f"/v1/uploads/{res['single']['upload_id']}", None),
    ("POST", "/v1/events/s3"): (lambda res: "/v1/events/s3", {"Records": []}),
    ("GET", "/v1/files"): (lambda res: "/v1/files", None),
    ("GET", "/v1/files/{id}"): (lambda res: f"/v1/files/{res['file_id']}", None),
    ("PATCH", "/v1/files/{id}"): (lambda res: f"/v1/files/{res['file_id']}", {"visibility": "private"}),
    ("DELETE", "/v1/files/{id}"): (lambda res: f"/v1/files/{res['file_id']}", None),
    ("POST", "/v1/files/{id}/restore"): (lambda res: f"/v1/files/{res['file_id']}/restore", None),
    ("POST", "/v1/files/{id}/copy"): (lambda res: f"/v1/files/{res['file_id']}/copy", {"name": "copy.bin"}),
    ("GET", "/v1/files/{id}/download"): (lambda res: f"/v1/files/{res['file_id']}/download", None),
    ("POST", "/v1/folders"): (lambda res: "/v1/folders", {"name": "mx-new"}),
    ("GET", "/v1/folders/{id}"): (lambda res: f"/v1/folders/{res['folder_id']}", None),
    ("PATCH", "/v1/folders/{id}"): (lambda res: f"/v1/folders/{res['folder_id']}", {"name": "mx-renamed"}),
    ("DELETE", "/v1/folders/{id}"): (lambda res: f"/v1/folders/{res['folder_id']}", None),
    ("POST", "/v1/folders/{id}/restore"): (lambda res: f"/v1/folders/{res['trashed_folder_id']}/restore", None),
    ("GET", "/v1/jobs/{id}"): (lambda res: f"/v1/jobs/{res['job_id']}", None),
    ("GET", "/v1/trash"): (lambda res: "/v1/trash", None),
    ("DELETE", "/v1/trash"): (lambda res: "/v1/trash", None),
    ("DELETE", "/v1/trash/{id}"): (lambda res: f"/v1/trash/{res['file_id']}", None),
    ("GET", "/v1/files/delta"): (lambda res: "/v1/files/delta", None),
    ("GET", "/v1/admin/jobs"): (lambda res: "/v1/admin/jobs?status=failed", None),
    ("POST", "/v1/admin/jobs/{id}/retry"): (lambda res: f"/v1/admin/jobs/{res['job_id']}/retry", None),
    ("GET", "/v1/uppy/s3/params"): (lambda res: "/v1/uppy/s3/params?filename=a.bin&type=text%2Fplain"
                                    "&metadata%5Bsize%5D=10&metadata%5Bsha256%5D=" + "ef" * 32, None),
    ("POST", "/v1/uppy/s3/multipart"): (lambda res: "/v1/uppy/s3/multipart",
                                        {"filename": "a.bin", "type": "application/octet-stream",
                                         "metadata": {"size": 11 * MIB, "sha256": "ef" * 32}}),
    ("GET", "/v1/uppy/s3/multipart/{uploadId}/{partNumber}"): (lambda res: uppy_route(res, "/1"), None),
    ("POST", "/v1/uppy/s3/multipart/{uploadId}/complete"): (lambda res: uppy_route(res, "/complete"),
                                                            {"parts": [{"PartNumber": 1, "ETag": "\"x\""}]}),
    ("GET", "/v1/uppy/s3/multipart/{uploadId}"): (lambda res: uppy_route(res), None),
    ("DELETE", "/v1/uppy/s3/multipart/{uploadId}"): (lambda res: uppy_route(res), None),
}


def call(c, route, user, res, token=None, path=None, body="default", raw=None, headers=None):
    """The route's request as `user` (None: no Authorization; `token`: that bearer token instead)."""
    method = route[0]
    make_path, default_body = ROUTE_CALLS[route]
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    kw = {}
    if raw is not None:
        kw["data"] = raw
        h.setdefault("Content-Type", "application/json")
    else:
        b = default_body if body == "default" else body
        if b is not None:
            kw["json"] = b
    return c.fm.call(user, method, path or make_path(res), headers=h, allow_redirects=False, **kw)


# ---- bad-input requests shared by many rows ---------------------------------------------------------------------------

def bad_json(route):
    return E(400, "invalid_json", lambda c: call(c, route, c.a, c.ra, raw="{not json"), "a body that is not JSON")


def wrong_types(route, body, code="invalid_field"):
    return E(422, code, lambda c: call(c, route, c.a, c.ra, body=body), f"wrong types: {body}")


def malformed_id(route, path, code):
    return E(404, code, lambda c: call(c, route, c.a, c.ra, path=path), f"a malformed id: {path}")


def other(code):
    """A's request on B's resource: 404 `code`, as if it did not exist."""
    return E(404, code)


AUTH = {"no_token": E(401, "missing_token"), "expired_token": E(401, "token_expired"),
        "garbage_token": E(401, "invalid_token")}
NO_RESOURCE = NA("the route names no resource: it acts on the caller's own account")
ANY_ROLE = NA("every role may do this to its own resources (a viewer reads, aborts and deletes what it owns)")
PUBLIC = {"no_token": NA("public route: no token is needed"), "expired_token": NA("public route"),
          "garbage_token": NA("public route")}

def trashed_file(c, user):
    """A file of `user` in the trash (its upload aborted long ago: nothing keeps it from a purge)."""
    a = c.fm.start(user, random_bytes(64))
    c.fm.sql(f"UPDATE uploads SET status = 'ABORTED', created_at = now() - interval '2 days' "
             f"WHERE id = '{a['upload_id']}'")
    assert c.fm.call(user, "DELETE", f"/v1/files/{a['file_id']}").status_code == 204
    return a["file_id"]


def purge_of_others(c):
    """A's purge of B's trashed file: 404, the row stays, and B's own purge of it works."""
    theirs = trashed_file(c, c.b)
    r = c.fm.call(c.a, "DELETE", f"/v1/trash/{theirs}")
    assert c.fm.sql(f"SELECT count(*) FROM files WHERE id = '{theirs}'") == "1"
    assert c.fm.call(c.b, "DELETE", f"/v1/trash/{theirs}").status_code == 204
    return r


def trash_cursor_of(c, user):
    trashed_file(c, user)
    trashed_file(c, user)
    cursor = c.fm.call(user, "GET", "/v1/trash?limit=1").json()["next_cursor"]
    assert cursor
    return cursor


U = "/v1/uppy/s3/multipart"
ROWS = {
    ("GET", "/readyz"): {**PUBLIC, "other_account": NA("no resource"), "narrow_role": NA("public"),
                         "bad_input": NA("takes no input")},
    ("POST", "/v1/auth/register"): {
        **PUBLIC, "other_account": NA("creates an account"), "narrow_role": NA("public"),
        "bad_input": [bad_json(("POST", "/v1/auth/register")),
                      wrong_types(("POST", "/v1/auth/register"), {"email": 5, "password": "x" * 20}),
                      wrong_types(("POST", "/v1/auth/register"), {"email": "no-at-sign", "password": "x" * 20},
                                  "invalid_email")]},
    ("POST", "/v1/auth/login"): {
        **PUBLIC, "other_account": E(401, "invalid_credentials",
                                     lambda c: c.fm.call(None, "POST", "/v1/auth/login",
                                                         json={"email": c.b.email, "password": "not B's password"}),
                                     "B's email with another password"),
        "narrow_role": NA("public"),
        "bad_input": [bad_json(("POST", "/v1/auth/login")),
                      wrong_types(("POST", "/v1/auth/login"), {"email": ["a"], "password": 1})]},
    ("POST", "/v1/auth/refresh"): {
        "no_token": E(422, "missing_field", lambda c: c.fm.call(None, "POST", "/v1/auth/refresh", json={}),
                      "no refresh_token in the body"),
        "expired_token": NA("refresh tokens are opaque; their expiry is test_auth's"),
        "garbage_token": E(401, "invalid_refresh_token",
                           lambda c: c.fm.call(None, "POST", "/v1/auth/refresh",
                                               json={"refresh_token": "garbage." + "x" * 40}), "a garbage one"),
        "other_account": NA("the refresh token is the account"), "narrow_role": NA("any role refreshes"),
        "bad_input": [bad_json(("POST", "/v1/auth/refresh")),
                      wrong_types(("POST", "/v1/auth/refresh"), {"refresh_token": 12})]},
    ("POST", "/v1/auth/logout"): {**AUTH, "other_account": NO_RESOURCE, "narrow_role": ANY_ROLE,
                                  "bad_input": NA("the body is not read")},
    ("GET", "/v1/me"): {**AUTH, "other_account": NO_RESOURCE, "narrow_role": ANY_ROLE,
                        "bad_input": NA("takes no input")},
    ("POST", "/v1/uploads"): {
        **AUTH, "other_account": NO_RESOURCE,
        "narrow_role": E(403, "forbidden"),
        "bad_input": [bad_json(("POST", "/v1/uploads")),
                      wrong_types(("POST", "/v1/uploads"), {"name": "x", "size": "10",
                                                            "content_type": "text/plain", "sha256": "ef" * 32},
                                  "invalid_size")]},
    ("POST", "/v1/uploads/{id}/parts"): {
        **AUTH, "other_account": other("upload_not_found"),
        "narrow_role": E(403, "forbidden"),
        "bad_input": [bad_json(("POST", "/v1/uploads/{id}/parts")),
                      wrong_types(("POST", "/v1/uploads/{id}/parts"), {"part_numbers": "1"}, "invalid_parts"),
                      malformed_id(("POST", "/v1/uploads/{id}/parts"), "/v1/uploads/not-a-uuid/parts",
                                   "upload_not_found")]},
    ("GET", "/v1/uploads/{id}/parts"): {
        **AUTH, "other_account": other("upload_not_found"), "narrow_role": ANY_ROLE,
        "bad_input": [malformed_id(("GET", "/v1/uploads/{id}/parts"), "/v1/uploads/1%27%20OR%201=1/parts",
                                   "upload_not_found")]},
    ("POST", "/v1/uploads/{id}/complete"): {
        **AUTH, "other_account": other("upload_not_found"), "narrow_role": ANY_ROLE,
        "bad_input": [malformed_id(("POST", "/v1/uploads/{id}/complete"), "/v1/uploads/zzz/complete",
                                   "upload_not_found"),
                      E(422, "invalid_parts",
                        lambda c: call(c, ("POST", "/v1/uploads/{id}/complete"), c.a, c.ra,
                                       path=f"/v1/uploads/{c.ra['multipart']['upload_id']}/complete",
                                       body={"parts": "all"}), "parts of the wrong type")]},
    ("DELETE", "/v1/uploads/{id}"): {
        **AUTH, "other_account": other("upload_not_found"), "narrow_role": ANY_ROLE,
        "bad_input": [malformed_id(("DELETE", "/v1/uploads/{id}"), "/v1/uploads/" + "9" * 36, "upload_not_found")]},
    ("POST", "/v1/events/s3"): {
        "no_token": E(401, "invalid_secret", lambda c: c.fm.call(None, "POST", "/v1/events/s3",
                                                                 json={"Records": []}), "no events secret"),
        "expired_token": NA("the events secret is the credential: no token"),
        "garbage_token": E(401, "invalid_secret",
                           lambda c: c.fm.call(None, "POST", "/v1/events/s3", json={"Records": []},
                                               headers={"X-FM-Events-Secret": "wrong" + EVENTS_SECRET[5:]}),
                           "a wrong events secret"),
        "other_account": E(401, "invalid_secret",
                           lambda c: c.fm.call(c.a, "POST", "/v1/events/s3", json={"Records": []}),
                           "a user's bearer token is no events secret"),
        "narrow_role": NA("one secret, no roles"),
        "bad_input": [E(400, "invalid_event",
                        lambda c: c.fm.call(None, "POST", "/v1/events/s3", data="{not json",
                                            headers={"X-FM-Events-Secret": EVENTS_SECRET,
                                                     "Content-Type": "application/json"}), "not JSON"),
                      E(400, "invalid_event",
                        lambda c: c.fm.call(None, "POST", "/v1/events/s3", json={"Records": "x"},
                                            headers={"X-FM-Events-Secret": EVENTS_SECRET}), "Records not a list")]},
    ("GET", "/v1/files"): {
        **AUTH,
        "other_account": E(404, "folder_not_found",
                           lambda c: c.fm.call(c.a, "GET", f"/v1/files?folder={listing_folder(c, c.b)}"),
                           "B's folder (B lists it: test_listing)"),
        "narrow_role": ANY_ROLE,
        "bad_input": [E(422, "invalid_sort", lambda c: c.fm.call(c.a, "GET", "/v1/files?sort=mtime"), "sort"),
                      E(422, "invalid_order", lambda c: c.fm.call(c.a, "GET", "/v1/files?order=up"), "order"),
                      E(422, "invalid_type", lambda c: c.fm.call(c.a, "GET", "/v1/files?type=image/png"), "type"),
                      E(422, "invalid_limit", lambda c: c.fm.call(c.a, "GET", "/v1/files?limit=201"), "limit"),
                      E(400, "invalid_cursor", lambda c: c.fm.call(c.a, "GET", "/v1/files?cursor=x.y"), "cursor"),
                      E(404, "folder_not_found", lambda c: c.fm.call(c.a, "GET", "/v1/files?folder=1%27"),
                        "a malformed folder id")]},
    ("GET", "/v1/files/{id}"): {
        **AUTH, "other_account": other("not_found"), "narrow_role": ANY_ROLE,
        "bad_input": [malformed_id(("GET", "/v1/files/{id}"), "/v1/files/not-a-uuid", "not_found")]},
    ("PATCH", "/v1/files/{id}"): {
        **AUTH, "other_account": other("not_found"), "narrow_role": ANY_ROLE,
        "bad_input": [bad_json(("PATCH", "/v1/files/{id}")),
                      wrong_types(("PATCH", "/v1/files/{id}"), {"visibility": True}),
                      wrong_types(("PATCH", "/v1/files/{id}"), {"name": 5}),
                      wrong_types(("PATCH", "/v1/files/{id}"), {"name": "a/b.txt"}, "invalid_name"),
                      wrong_types(("PATCH", "/v1/files/{id}"), {"name": "a\u202eb"}, "invalid_name"),
                      wrong_types(("PATCH", "/v1/files/{id}"), {"folder_id": 5}, "invalid_folder"),
                      wrong_types(("PATCH", "/v1/files/{id}"), {"name": "n.txt", "on_conflict": "replace"}),
                      E(404, "folder_not_found",
                        lambda c: call(c, ("PATCH", "/v1/files/{id}"), c.a, c.ra, body={"folder_id": str(uuid.uuid4())}),
                        "a folder nobody has"),
                      malformed_id(("PATCH", "/v1/files/{id}"), "/v1/files/x", "not_found")]},
    ("DELETE", "/v1/files/{id}"): {
        **AUTH, "other_account": other("not_found"), "narrow_role": ANY_ROLE,
        "bad_input": [malformed_id(("DELETE", "/v1/files/{id}"), "/v1/files/..", "not_found")]},
    ("POST", "/v1/files/{id}/restore"): {
        **AUTH, "other_account": other("not_found"), "narrow_role": ANY_ROLE,
        "bad_input": [malformed_id(("POST", "/v1/files/{id}/restore"), "/v1/files/x/restore", "not_found")]},
    ("POST", "/v1/files/{id}/copy"): {
        **AUTH, "other_account": other("not_found"), "narrow_role": E(403, "forbidden"),
        "bad_input": [bad_json(("POST", "/v1/files/{id}/copy")),
                      wrong_types(("POST", "/v1/files/{id}/copy"), {"name": 5}),
                      wrong_types(("POST", "/v1/files/{id}/copy"), {"name": "a\u0007b"}, "invalid_name"),
                      wrong_types(("POST", "/v1/files/{id}/copy"), {"folder_id": "x"}, "invalid_folder"),
                      wrong_types(("POST", "/v1/files/{id}/copy"), {"size": 1}),
                      E(404, "folder_not_found",
                        lambda c: call(c, ("POST", "/v1/files/{id}/copy"), c.a, c.ra,
                                       body={"folder_id": str(uuid.uuid4())}),
                        "a folder nobody has"),
                      E(409, "not_ready", lambda c: call(c, ("POST", "/v1/files/{id}/copy"), c.a, c.ra),
                        "a file not READY yet (UPLOADED) has no blob to share"),
                      malformed_id(("POST", "/v1/files/{id}/copy"), "/v1/files/x/copy", "not_found")]},
    ("GET", "/v1/files/{id}/download"): {
        **AUTH, "other_account": other("not_found"), "narrow_role": ANY_ROLE,
        "bad_input": [malformed_id(("GET", "/v1/files/{id}/download"), "/v1/files/x/download", "not_found"),
                      E(422, "invalid_variant",
                        lambda c: call(c, ("GET", "/v1/files/{id}/download"), c.a, c.ra,
                                       path=f"/v1/files/{c.ra['file_id']}/download?variant=huge"),
                        "an unknown variant")]},
    ("POST", "/v1/folders"): {
        **AUTH, "narrow_role": E(403, "forbidden"),
        "other_account": E(404, "folder_not_found",
                           lambda c: call(c, ("POST", "/v1/folders"), c.a, c.ra,
                                          body={"name": "mx-new", "parent_id": c.rb["folder_id"]}),
                           "a folder under B's folder"),
        "bad_input": [bad_json(("POST", "/v1/folders")),
                      wrong_types(("POST", "/v1/folders"), {"name": 5}, "invalid_name"),
                      wrong_types(("POST", "/v1/folders"), {"name": "a/b"}, "invalid_name"),
                      wrong_types(("POST", "/v1/folders"), {"name": "x", "parent_id": "nope"}),
                      E(422, "invalid_on_conflict",
                        lambda c: c.fm.call(c.a, "POST", "/v1/folders?on_conflict=merge", json={"name": "x"}),
                        "an unknown on_conflict")]},
    ("GET", "/v1/folders/{id}"): {
        **AUTH, "other_account": other("folder_not_found"), "narrow_role": ANY_ROLE,
        "bad_input": [malformed_id(("GET", "/v1/folders/{id}"), "/v1/folders/not-a-uuid", "folder_not_found"),
                      E(404, "folder_not_found",
                        lambda c: call(c, ("GET", "/v1/folders/{id}"), c.a, c.ra,
                                       path=f"/v1/folders/{c.ra['trashed_folder_id']}"), "a folder in the trash")]},
    ("PATCH", "/v1/folders/{id}"): {
        **AUTH, "other_account": [other("folder_not_found"),
                                  E(404, "folder_not_found",
                                    lambda c: call(c, ("PATCH", "/v1/folders/{id}"), c.a, c.ra,
                                                   body={"parent_id": c.rb["folder_id"]}), "into B's folder")],
        "narrow_role": ANY_ROLE,
        "bad_input": [bad_json(("PATCH", "/v1/folders/{id}")),
                      wrong_types(("PATCH", "/v1/folders/{id}"), {"name": "\u202etxt.exe"}, "invalid_name"),
                      wrong_types(("PATCH", "/v1/folders/{id}"), {"parent_id": 1}),
                      wrong_types(("PATCH", "/v1/folders/{id}"), {}),
                      E(409, "folder_cycle",
                        lambda c: call(c, ("PATCH", "/v1/folders/{id}"), c.a, c.ra,
                                       body={"parent_id": c.ra["folder_id"]}), "into itself"),
                      malformed_id(("PATCH", "/v1/folders/{id}"), "/v1/folders/x", "folder_not_found")]},
    ("DELETE", "/v1/folders/{id}"): {
        **AUTH, "other_account": other("folder_not_found"), "narrow_role": ANY_ROLE,
        "bad_input": [malformed_id(("DELETE", "/v1/folders/{id}"), "/v1/folders/1%27%20OR%201=1", "folder_not_found")]},
    ("POST", "/v1/folders/{id}/restore"): {
        **AUTH, "other_account": other("folder_not_found"), "narrow_role": ANY_ROLE,
        "bad_input": [malformed_id(("POST", "/v1/folders/{id}/restore"), "/v1/folders/x/restore",
                                   "folder_not_found"),
                      E(409, "not_deleted",
                        lambda c: call(c, ("POST", "/v1/folders/{id}/restore"), c.a, c.ra,
                                       path=f"/v1/folders/{c.ra['folder_id']}/restore"), "a live folder")]},
    ("GET", "/v1/jobs/{id}"): {
        **AUTH, "other_account": other("not_found"), "narrow_role": ANY_ROLE,
        "bad_input": [malformed_id(("GET", "/v1/jobs/{id}"), "/v1/jobs/x", "not_found")]},
    ("GET", "/v1/trash"): {
        **AUTH, "narrow_role": ANY_ROLE,
        "other_account": E(400, "invalid_cursor",
                           lambda c: c.fm.call(c.a, "GET", f"/v1/trash?cursor={trash_cursor_of(c, c.b)}"),
                           "B's trash cursor sent by A"),
        "bad_input": [E(422, "invalid_limit", lambda c: c.fm.call(c.a, "GET", "/v1/trash?limit=0"), "limit 0"),
                      E(422, "invalid_limit", lambda c: c.fm.call(c.a, "GET", "/v1/trash?limit=201"), "limit 201"),
                      E(400, "invalid_cursor", lambda c: c.fm.call(c.a, "GET", "/v1/trash?cursor=garbage"),
                        "a cursor this server never gave")]},
    ("DELETE", "/v1/trash"): {**AUTH, "other_account": NO_RESOURCE, "narrow_role": ANY_ROLE,
                              "bad_input": NA("takes no input")},
    ("DELETE", "/v1/trash/{id}"): {
        **AUTH, "narrow_role": ANY_ROLE,
        "other_account": E(404, "not_found", purge_of_others, "A purges B's trashed file"),
        "bad_input": [malformed_id(("DELETE", "/v1/trash/{id}"), "/v1/trash/not-a-uuid", "not_found"),
                      E(404, "not_found", lambda c: c.fm.call(c.a, "DELETE", f"/v1/trash/{c.ra['file_id']}"),
                        "a live file: not in the trash")]},
    ("GET", "/v1/files/delta"): {
        **AUTH, "narrow_role": ANY_ROLE,
        "other_account": E(400, "invalid_cursor",
                           lambda c: c.fm.call(c.a, "GET", "/v1/files/delta?cursor="
                                               + c.fm.call(c.b, "GET", "/v1/files/delta").json()["cursor"]),
                           "B's delta cursor sent by A"),
        "bad_input": [E(400, "invalid_cursor", lambda c: c.fm.call(c.a, "GET", "/v1/files/delta?cursor=AAAA"),
                        "a cursor this server never gave"),
                      E(422, "invalid_limit", lambda c: c.fm.call(c.a, "GET", "/v1/files/delta?limit=1001"),
                        "limit above 1,000")]},
    ("GET", "/v1/admin/jobs"): {
        **AUTH, "other_account": NA("admins see every account's jobs; others are refused (narrow_role)"),
        "narrow_role": E(403, "forbidden"),
        "bad_input": [E(422, "invalid_status",
                        lambda c: c.fm.call(c.admin, "GET", "/v1/admin/jobs?status=bogus"), "an unknown status")]},
    ("POST", "/v1/admin/jobs/{id}/retry"): {
        **AUTH, "other_account": NA("admins act on every account's jobs; others are refused (narrow_role)"),
        "narrow_role": E(403, "forbidden"),
        "bad_input": [E(404, "not_found", lambda c: c.fm.call(c.admin, "POST", "/v1/admin/jobs/x/retry"),
                        "a malformed id"),
                      E(409, "job_not_failed",
                        lambda c: c.fm.call(c.admin, "POST", f"/v1/admin/jobs/{c.rb['job_id']}/retry"),
                        "a job that has not failed")]},
    ("GET", "/v1/uppy/s3/params"): {
        **AUTH, "other_account": NO_RESOURCE, "narrow_role": E(403, "forbidden"),
        "bad_input": [E(422, "invalid_field", lambda c: c.fm.call(c.a, "GET", "/v1/uppy/s3/params?type=text%2Fplain"),
                        "no filename"),
                      E(422, "invalid_size",
                        lambda c: c.fm.call(c.a, "GET", "/v1/uppy/s3/params?filename=a&type=text%2Fplain"
                                            "&metadata%5Bsize%5D=ten"), "a size that is not a number")]},
    ("POST", U): {
        **AUTH, "other_account": NO_RESOURCE, "narrow_role": E(403, "forbidden"),
        "bad_input": [bad_json(("POST", U)), wrong_types(("POST", U), {"filename": 5, "type": "text/plain"})]},
    ("GET", U + "/{uploadId}/{partNumber}"): {
        **AUTH, "narrow_role": E(403, "forbidden"),
        "other_account": [other("upload_not_found"),
                          E(404, "upload_not_found",
                            lambda c: call(c, ("GET", U + "/{uploadId}/{partNumber}"), c.a, c.ra,
                                           path=f"{U}/{q(c.rb['uppy']['uploadId'])}/1?key={q(c.ra['uppy']['key'])}"),
                            "B's S3 uploadId with A's own key")],
        "bad_input": [E(422, "invalid_parts",
                        lambda c: call(c, ("GET", U + "/{uploadId}/{partNumber}"), c.a, c.ra,
                                       path=uppy_route(c.ra, "/0")), "part number 0"),
                      E(422, "invalid_parts",
                        lambda c: call(c, ("GET", U + "/{uploadId}/{partNumber}"), c.a, c.ra,
                                       path=uppy_route(c.ra, "/one")), "a part number that is not a number"),
                      E(404, "upload_not_found",
                        lambda c: call(c, ("GET", U + "/{uploadId}/{partNumber}"), c.a, c.ra,
                                       path=f"{U}/{q(c.ra['uppy']['uploadId'])}/1?key=blobs%2F{'ab' * 32}"),
                        "a key outside incoming/"),
                      E(404, "upload_not_found",
                        lambda c: call(c, ("GET", U + "/{uploadId}/{partNumber}"), c.a, c.ra,
                                       path=f"{U}/{q(c.ra['uppy']['uploadId'])}/1"), "no key")]},
    ("POST", U + "/{uploadId}/complete"): {
        **AUTH, "other_account": other("upload_not_found"), "narrow_role": ANY_ROLE,
        "bad_input": [bad_json(("POST", U + "/{uploadId}/complete")),
                      wrong_types(("POST", U + "/{uploadId}/complete"), {"parts": {"1": "x"}}, "invalid_parts")]},
    ("GET", U + "/{uploadId}"): {
        **AUTH, "other_account": other("upload_not_found"), "narrow_role": ANY_ROLE,
        "bad_input": [E(404, "upload_not_found",
                        lambda c: call(c, ("GET", U + "/{uploadId}"), c.a, c.ra,
                                       path=f"{U}/{q(c.ra['uppy']['uploadId'])}?key=incoming%2Fnot-a-uuid"),
                        "a malformed key")]},
    ("DELETE", U + "/{uploadId}"): {
        **AUTH, "other_account": other("upload_not_found"), "narrow_role": ANY_ROLE,
        "bad_input": [E(404, "upload_not_found",
                        lambda c: call(c, ("DELETE", U + "/{uploadId}"), c.a, c.ra,
                                       path=f"{U}/not-the-upload-id?key={q(c.ra['uppy']['key'])}"),
                        "another S3 uploadId with our key")]},
}


def listing_folder(c, user):
    """A folder of `user` (made by SQL: the folder routes are test_folders'), made once per user."""
    name = f"matrix-{user.id[:8]}"
    found = c.fm.sql(f"SELECT id FROM folders WHERE owner_id = '{user.id}' AND name = '{name}'")
    folder = found.split()[0] if found else c.fm.sql(
        f"INSERT INTO folders (owner_id, name) VALUES ('{user.id}', '{name}') RETURNING id").split()[0]
    assert c.fm.call(user, "GET", f"/v1/files?folder={folder}").status_code == 200  # the owner lists it
    return folder


# ---- the rule: a row for every route --------------------------------------------------------------------------------

def test_every_route_has_a_row():
    """A route added to control-plane/main.c without its row here fails the suite by name."""
    routes = c_routes("control-plane/main.c")
    assert len(routes) >= 26, routes
    missing = [f"{m} {p}" for m, p in routes if (m, p) not in ROWS]
    assert not missing, ("routes of control-plane/main.c without a row in test_route_matrix.ROWS (add one, with the "
                         "expected status and error code of each case, or NA(reason)): " + ", ".join(missing))
    stale = [f"{m} {p}" for m, p in ROWS if (m, p) not in routes]
    assert not stale, "rows for routes main.c no longer has: " + ", ".join(stale)
    for route, row in ROWS.items():
        assert set(row) == set(CASES), (route, set(CASES) ^ set(row))
        assert route in ROUTE_CALLS, route


MATRIX = [(route, case) for route in ROWS for case in CASES]


def default_request(c, route, case):
    """The case's request when its row does not give one."""
    if case == "no_token":
        return call(c, route, None, c.ra)
    if case == "expired_token":
        return call(c, route, None, c.ra, token=c.expired)
    if case == "garbage_token":
        return call(c, route, None, c.ra, token="eyJhbGciOiJIUzI1NiJ9.garbage.garbage")
    if case == "other_account":
        return call(c, route, c.a, c.rb)
    if case == "narrow_role":
        # Admin routes: a member. Others: a viewer on its own resources (started while it was a member).
        if "/admin/" in route[1]:
            return call(c, route, c.a, c.ra)
        return call(c, route, c.viewer, c.rv)
    raise AssertionError(case)


@pytest.mark.parametrize("route,case", MATRIX, ids=[f"{m} {p} | {case}" for (m, p), case in MATRIX])
def test_route_refuses(ctx, route, case):
    expected = ROWS[route][case]
    if isinstance(expected, NA):
        assert expected.reason
        pytest.skip(f"n/a: {expected.reason}")
    for e in expected if isinstance(expected, list) else [expected]:
        r = e.send(ctx) if e.send else default_request(ctx, route, case)
        assert_error(r, e.status, e.code)
        if e.code in ("missing_token", "token_expired", "invalid_token"):
            assert r.headers.get("WWW-Authenticate", "").startswith("Bearer"), r.headers
        if case == "other_account" and e.send is None and route[0] == "GET":
            # The 404 is about ownership, not a wrong path: the owner's same request is not refused so.
            mine = call(ctx, route, ctx.b, ctx.rb)
            assert mine.status_code != 404, (e.what, mine.text)


def test_refused_requests_left_the_other_account_alone(ctx):
    """After every refusal above (A's DELETE, complete and abort of B's resources among them), B's things are as
    they were: the pending uploads still pending, the file still there and private."""
    fm, b, rb = ctx.fm, ctx.b, ctx.rb
    for kind in ("single", "multipart"):
        assert fm.upload_row(rb[kind]["upload_id"])["status"] == "PENDING", kind
    assert fm.call(b, "GET", uppy_route(rb, "/1")).status_code == 200
    f = fm.file(b, rb["file_id"])
    assert f.status_code == 200 and f.json().get("visibility", "private") == "private", f.text
    assert fm.file_row(rb["file_id"])["deleted_at"] is None
    assert fm.call(b, "GET", f"/v1/folders/{rb['folder_id']}").json()["name"] == "mx-folder"
    assert fm.sql(f"SELECT count(*) FROM folders WHERE owner_id = '{ctx.a.id}' AND name = 'mx-new'") == "0"


def test_a_viewer_gets_no_part_urls(ctx):
    """A member demoted to viewer keeps its pending uploads but gets no more upload URLs from either part route (both
    handed them out: only the routes that start an upload checked the role); it still lists and aborts them."""
    fm, v, rv = ctx.fm, ctx.viewer, ctx.rv
    assert_error(fm.call(v, "POST", f"/v1/uploads/{rv['multipart']['upload_id']}/parts",
                         json={"part_numbers": [1, 2]}), 403, "forbidden")
    assert_error(fm.call(v, "GET", uppy_route(rv, "/2")), 403, "forbidden")
    assert fm.call(v, "GET", f"/v1/uploads/{rv['multipart']['upload_id']}/parts").status_code == 200
    assert fm.call(v, "GET", uppy_route(rv)).status_code == 200
    # The same calls of a member still work (the block is the role's, not the route's).
    assert fm.call(ctx.a, "GET", uppy_route(ctx.ra, "/2")).status_code == 200
    gone = fm.call(v, "DELETE", uppy_route(rv))
    assert gone.status_code in (200, 204), gone.text
    assert fm.upload_row(rv["uppy"]["key"].split("/", 1)[1])["status"] == "ABORTED"


# ---- fm-edge: edge/main.c's routes ----------------------------------------------------------------------------------
# The edge has no accounts: a /f/ URL's signature (CloudFront's, bound to the key and the file) is the credential, a
# /p/ object must be public for the file= it names, purge needs X-FM-Edge-Secret. A HEAD refusal has the GET's
# status and headers and no body, so its error code is read from the GET of the same URL.

EDGE_PUBLIC_DB = 58  # the edge's Redis database (fm:public); nothing in this module makes objects public
EDGE_CASES = ("no_token", "expired_token", "garbage_token", "other_account", "narrow_role", "bad_input")


@pytest.fixture(scope="module")
def edge(edges, stack):
    return edges.start(FM_REDIS_URL=redis_url(stack, EDGE_PUBLIC_DB), FM_EDGE_EVENTS="0")


@pytest.fixture(scope="module")
def objects(stack, s3):
    (k1, _), (k2, _) = put_object(stack, s3, 700), put_object(stack, s3, 900)
    return k1, k2


def edge_family(method, path):
    return method, path.split("{", 1)[0]


def file_url(edge, signer, key, **kw):
    return sign(signer, edge, key, **kw)


def swap_file(url, file_id):
    return re.sub(r"file=[0-9a-f-]+", f"file={file_id}", url)


def purge(edge, body=None, raw=None, secret=None):
    h = {"Content-Type": "application/json"}
    if secret is not None:
        h["X-FM-Edge-Secret"] = secret
    return requests.post(edge.url + "/_edge/purge", data=raw if raw is not None else json.dumps(body), headers=h,
                         timeout=10)


F_ROW = {
    "no_token": [(403, "missing_signature", lambda e, s, k, E_: f"{e.url}/f/{k[0]}?file={uuid.uuid4()}")],
    "expired_token": [(403, "expired", lambda e, s, k, E_: file_url(e, s, k[0], expires_in=-5))],
    "garbage_token": [(403, "bad_signature", lambda e, s, k, E_: re.sub(r"Signature=[^&]+", "Signature=" + "A" * 172,
                                                                          file_url(e, s, k[0]))),
                      (403, "unknown_key", lambda e, s, k, E_: file_url(e, s, k[0]).replace(E_.key_pair_id,
                                                                                            "KUNKNOWN"))],
    # Another file's id on a URL signed for this one, and one key's URL asked for another key.
    "other_account": [(403, "bad_signature", lambda e, s, k, E_: swap_file(file_url(e, s, k[0]), uuid.uuid4())),
                      (403, "bad_signature", lambda e, s, k, E_: file_url(e, s, k[0]).replace(k[0], k[1]))],
    "narrow_role": [(403, "resource_mismatch", lambda e, s, k, E_: s.generate_presigned_url(
        f"{e.url}/f/{k[0]}?file={uuid.uuid4()}", policy=s.build_policy(
            f"{e.url}/f/variants/*", datetime_in(600))))],
    "bad_input": [(400, "invalid_path", lambda e, s, k, E_: f"{e.url}/f/incoming/%2e%2e/x?file={uuid.uuid4()}"),
                  (400, "invalid_path", lambda e, s, k, E_: f"{e.url}/f/{k[0]}?file=NOT-A-UUID"),
                  (400, "invalid_variant", lambda e, s, k, E_: file_url(e, s, k[0], query="w=0"))],
}
P_ROW = {
    "no_token": NA("/p/ URLs are unsigned: a public object needs no credential"),
    "expired_token": NA("unsigned: nothing expires"),
    "garbage_token": NA("unsigned"),
    "other_account": [(404, "not_public", lambda e, s, k, E_: f"{e.url}/p/{k[0]}?file={uuid.uuid4()}")],
    "narrow_role": [(404, "not_public", lambda e, s, k, E_: f"{e.url}/p/{k[0]}")],
    "bad_input": [(400, "invalid_path", lambda e, s, k, E_: f"{e.url}/p/incoming/%2e%2e/x?file={uuid.uuid4()}")],
}
EDGE_ROWS = {("GET", "/f/"): F_ROW, ("HEAD", "/f/"): F_ROW, ("GET", "/p/"): P_ROW, ("HEAD", "/p/"): P_ROW,
             ("POST", "/_edge/purge"): {
                 "no_token": [(401, "unauthorized", lambda e, E_: purge(e, {"keys": ["x"]}))],
                 "expired_token": NA("one static secret: nothing expires"),
                 "garbage_token": [(401, "unauthorized", lambda e, E_: purge(e, {"keys": ["x"]}, secret="w" * 48))],
                 "other_account": NA("no accounts: the secret is the edge operator's"),
                 "narrow_role": NA("one secret, no roles"),
                 "bad_input": [(400, "invalid_json", lambda e, E_: purge(e, raw="{nope", secret=E_.purge_secret)),
                               (422, "invalid_field", lambda e, E_: purge(e, {"keys": "k"}, secret=E_.purge_secret)),
                               (422, "invalid_field", lambda e, E_: purge(e, {"prefixes": [7]},
                                                                           secret=E_.purge_secret)),
                               (422, "missing_field", lambda e, E_: purge(e, {}, secret=E_.purge_secret))]}}


def datetime_in(seconds):
    return datetime.datetime.fromtimestamp(int(time.time()) + seconds, tz=datetime.timezone.utc)


def test_every_edge_route_has_a_row():
    routes = c_routes("edge/main.c")
    missing = sorted({f"{m} {p}" for m, p in routes if edge_family(m, p) not in EDGE_ROWS})
    assert not missing, "routes of edge/main.c without a row in test_route_matrix.EDGE_ROWS: " + ", ".join(missing)
    for family, row in EDGE_ROWS.items():
        assert set(row) == set(EDGE_CASES), (family, set(EDGE_CASES) ^ set(row))


EDGE_MATRIX = [(family, case) for family in EDGE_ROWS for case in EDGE_CASES]


@pytest.mark.parametrize("family,case", EDGE_MATRIX, ids=[f"{m} {p} | {c}" for (m, p), c in EDGE_MATRIX])
def test_edge_route_refuses(edges, edge, signer, objects, family, case):
    expected = EDGE_ROWS[family][case]
    if isinstance(expected, NA):
        pytest.skip(f"n/a: {expected.reason}")
    method = family[0]
    for status, code, make in expected:
        if family[1] == "/_edge/purge":
            r = make(edge, edges)
            assert_error(r, status, code)
            continue
        url = make(edge, signer, objects, edges)
        got = requests.get(url, timeout=10)
        assert_error(got, status, code)
        if method == "HEAD":
            head = requests.head(url, timeout=10)
            assert head.status_code == status, (url, head.status_code)
            assert head.content == b"" and head.headers.get("Content-Type", "").startswith("application/json")
            assert head.headers.get("X-Request-Id"), head.headers
