"""GET /v1/files: one folder's entries, folders first, keyset-paged, with signed thumbnail URLs and a first-page cache
keyed by the owner's tree generation (issue 11 item 2; DESIGN.md §5b; docs/decisions.md "Listing (issue 11 item 2)").

Against the real stack: rows are made through the API (uploads the real fm-worker makes READY, with their variants)
where a test needs real files, and by SQL INSERT of valid rows where it needs many (the 10,000-file folder); the
thumbnail URLs are fetched from a real fm-edge that verifies them (an ECDSA P-256 key pair: the signing choice of
docs/decisions.md). Every expected order is computed here in Python from the same rows, never taken from the server.

    FM_BUILD_DIR=build /usr/bin/python3 -m pytest -q tests/integration/test_listing.py
"""
import base64
import datetime
import hashlib
import io
import re
import secrets
import uuid

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from PIL import Image

from helpers_fm import assert_error, assert_unauthorized, redis_cmd, redis_url, wait_for
from helpers_uploads import EVENTS_SECRET, MIB, Fm, aws_record, dedicated, key_of, post_event

LISTING_DB = 55  # this module's fm-control, fm-worker and fm-edge (47+ is free; 57/58 are the route matrix's, 62 test_delta's)
KEY_ID = "KLISTEC1"
SORTS = ("name", "created_at", "updated_at", "size")
ROOT = "00000000-0000-0000-0000-000000000000"


class EcKeyPair:
    """A CloudFront key pair on P-256 (fm-control signs with the private key, fm-edge verifies with the public)."""

    def __init__(self, key_id, folder):
        self.id = key_id
        private = ec.generate_private_key(ec.SECP256R1())
        self.private_path = folder / f"{key_id}.pem"
        self.private_path.write_bytes(private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        self.private_path.chmod(0o600)
        self.public_path = folder / f"{key_id}.pub.pem"
        self.public_path.write_bytes(private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


class ListFm(Fm):
    def redis(self, *args):
        return redis_cmd(self.stack, LISTING_DB, *args)

    def list(self, user, **params):
        return self.call(user, "GET", "/v1/files", params=params)

    def list_ok(self, user, **params):
        r = self.list(user, **params)
        assert r.status_code == 200, r.text
        assert r.headers.get("cache-control") == "private, no-store"
        return r.json()

    def list_all(self, user, **params):
        """Every page to the end: the items in order and the number of pages."""
        items, cursor, pages = [], None, 0
        while True:
            body = self.list_ok(user, **params, **({"cursor": cursor} if cursor else {}))
            pages += 1
            items += body["items"]
            cursor = body["next_cursor"]
            if cursor is None:
                return items, pages
            assert pages < 100000

    def folder(self, user, name, parent=None, created=None, updated=None):
        """A live folder row as the folder routes leave it (ancestors from the parent's)."""
        fid = str(uuid.uuid4())
        anc = (f"(SELECT ancestors || id FROM folders WHERE id = '{parent}')" if parent else "'{}'::uuid[]")
        self.sql(f"INSERT INTO folders (id, owner_id, parent_id, name, ancestors, created_at, updated_at) VALUES "
                 f"('{fid}', '{user.id}', {sql_str(parent)}, {sql_str(name)}, {anc}, "
                 f"{sql_ts(created)}, {sql_ts(updated)})")
        return fid

    def files(self, user, rows, folder=None):
        """Inserts file rows [(name, size, content_type, created, updated)] (valid rows: a claimed hash, a status);
        returns their ids in order."""
        ids = [str(uuid.uuid4()) for _ in rows]
        values = ",".join(
            f"('{i}', '{user.id}', {sql_str(folder)}, {sql_str(n)}, {size}, {sql_str(ct)}, "
            f"decode('{hashlib.sha256(i.encode()).hexdigest()}', 'hex'), 'UPLOADED', {sql_ts(c)}, {sql_ts(u)})"
            for i, (n, size, ct, c, u) in zip(ids, rows))
        self.sql("INSERT INTO files (id, owner_id, folder_id, name, size, content_type, claimed_sha256, status, "
                 f"created_at, updated_at) VALUES {values}")
        return ids

    def cached_pages(self, user):
        return [k for k in self.redis("KEYS", f"fm:list:{{{user.id}}}:*")]

    def changed(self, user, sql):
        """A change made by SQL as a route would make it: committed, then the owner's generation INCRed (tree.c)."""
        self.sql(sql)
        self.redis("INCR", f"fm:tgen:{{{user.id}}}")

    def gen(self, user):
        return int(self.redis("GET", f"fm:tgen:{{{user.id}}}") or 0)


def sql_str(s):
    return "NULL" if s is None else "'" + s.replace("'", "''") + "'"


def sql_ts(t):
    return "now()" if t is None else f"'{t.isoformat()}'"


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory):
    return EcKeyPair(KEY_ID, tmp_path_factory.mktemp("cf-keys-listing"))


@pytest.fixture(scope="module")
def edge(edges, stack, key_pair):
    return edges.start(FM_EDGE_CF_PUBLIC_KEYS=f"{key_pair.id}={key_pair.public_path}",
                       FM_REDIS_URL=redis_url(stack, LISTING_DB))


@pytest.fixture(scope="module")
def fm(controls, stack, key_pair, edge):
    with dedicated(controls, stack, ListFm, FM_CF_KEYS=f"{key_pair.id}={key_pair.private_path}",
                   FM_EDGE_PUBLIC_BASE=edge.url, FM_EVENTS_SECRET=EVENTS_SECRET,
                   FM_MULTIPART_THRESHOLD=1024 * MIB, FM_REDIS_URL=redis_url(stack, LISTING_DB)) as f:
        yield f


@pytest.fixture(scope="module")
def worker(fm, workers, stack):
    w = workers.start(FM_REDIS_URL=redis_url(stack, LISTING_DB), FM_WORKER_THREADS=2)
    yield w
    workers.stop(w)


@pytest.fixture
def alice(fm):
    return fm.user("lalice")


@pytest.fixture
def bob(fm):
    return fm.user("lbob")


def png(size=(320, 200)):
    img = Image.new("RGB", size, (20, 90, 200))
    for x in range(0, size[0], 7):
        img.putpixel((x, x % size[1]), (x % 256, 5, secrets.randbelow(256)))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def wait_ready(fm, user, file_id, timeout=60):
    r = wait_for(lambda: (lambda x: x if x.status_code == 200 and x.json().get("status") in
                                      ("READY", "FAILED", "QUARANTINED") else None)(fm.file(user, file_id)),
                 timeout, 0.05)
    assert r is not None and r.json()["status"] == "READY", r and r.text
    return r.json()


# ---- what Python expects ---------------------------------------------------------------------------------------------

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def at(seconds, micro=0):
    return T0 + datetime.timedelta(seconds=seconds, microseconds=micro)


def expected(folders, files, sort, order, type_=None):
    """The listing's order, computed here: folders (by name under sort=size) then files; names by lower(name), name,
    id compared as code points (= UTF-8 bytes, COLLATE "C"); the others by value then id."""
    def key(row, s):
        if s == "name":
            return (row["name"].lower(), row["name"], row["id"])
        return (row[s], row["id"])
    rev = order == "desc"
    fs = [] if type_ else sorted(folders, key=lambda r: key(r, "name" if sort == "size" else sort), reverse=rev)
    ff = sorted((f for f in files if type_ is None or f["family"] == type_), key=lambda r: key(r, sort), reverse=rev)
    return [("folder", r["id"]) for r in fs] + [("file", r["id"]) for r in ff]


def family(ct):
    t = ct.split(";")[0].strip().lower()
    for prefix in ("image", "video", "audio", "text"):
        if t.startswith(prefix + "/"):
            return prefix
    return "pdf" if t == "application/pdf" else "other"


NAMES = ["b.txt", "B.txt", "a.txt", "A.txt", "é.txt", "Zeta.png", "zeta.png", "z", "Élan.pdf", "10.jpg", "9.jpg",
         "_x", "a b", "ab", "a-b", "Ä.txt", "ä.txt", "movie.mp4", "song.mp3", "doc.bin"]
TYPES = ["text/plain", "text/plain; charset=utf-8", "image/png", "IMAGE/JPEG", "video/mp4", "audio/mpeg",
         "application/pdf", "application/octet-stream", "Text/CSV ; charset=x", "application/pdfx"]


def make_tree(fm, user, parent=None):
    """A folder with 7 sub-folders and 40 files of mixed case names, types, equal and distinct sizes and times."""
    folder = fm.folder(user, "tree-" + secrets.token_hex(3), parent)
    fnames = ["Zoo", "apple", "Apple", "banana", "Été", "10", "9"]
    folders = []
    for i, n in enumerate(fnames):
        c, u = at(i % 3), at(100 - i % 4)
        fid = fm.folder(user, n, folder, c, u)
        folders.append({"id": fid, "name": n, "created_at": c, "updated_at": u})
    rows = []
    for i in range(40):
        name = NAMES[i % len(NAMES)] if i < len(NAMES) else f"f{i % 7}-{i}.dat"
        ct = TYPES[i % len(TYPES)]
        rows.append((name, (i * 37) % 5 * 1000, ct, at(i % 6, (i * 13) % 3), at(50 - i % 5)))
    ids = fm.files(user, rows, folder)
    files = [{"id": i, "name": n, "size": s, "family": family(ct), "created_at": c, "updated_at": u}
             for i, (n, s, ct, c, u) in zip(ids, rows)]
    return folder, folders, files


# ---- parameters and errors -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("param,value,code", [
    ("sort", "mtime", "invalid_sort"), ("sort", "", "invalid_sort"), ("sort", "NAME", "invalid_sort"),
    ("order", "up", "invalid_order"), ("order", "", "invalid_order"),
    ("type", "images", "invalid_type"), ("type", "image/png", "invalid_type"), ("type", "", "invalid_type"),
    ("limit", "0", "invalid_limit"), ("limit", "201", "invalid_limit"), ("limit", "abc", "invalid_limit"),
    ("limit", "-1", "invalid_limit"), ("limit", "", "invalid_limit"), ("limit", "1e2", "invalid_limit"),
    ("limit", "0050", "invalid_limit"), ("limit", "99999999999999999999", "invalid_limit"),
    ("sort", "%zz", "invalid_sort"),
])
def test_out_of_range_parameters_are_422(fm, alice, param, value, code):
    r = fm.call(alice, "GET", f"/v1/files?{param}={value}")
    assert_error(r, 422, code)


def test_limit_bounds_and_default(fm, alice):
    fm.files(alice, [(f"n{i:03}", 1, "text/plain", None, None) for i in range(205)])
    assert len(fm.list_ok(alice)["items"]) == 50
    assert len(fm.list_ok(alice, limit=1)["items"]) == 1
    body = fm.list_ok(alice, limit=200)
    assert len(body["items"]) == 200 and body["next_cursor"]
    assert len(fm.list_ok(alice, limit=200, cursor=body["next_cursor"])["items"]) == 5


def test_requires_a_token(fm):
    assert_unauthorized(requests.get(fm.base + "/v1/files", timeout=10))


def test_folder_of_another_user_trashed_or_unknown_is_404(fm, alice, bob):
    mine = fm.folder(alice, "mine")
    fm.files(alice, [("secret.txt", 1, "text/plain", None, None)], mine)
    assert [i["name"] for i in fm.list_ok(alice, folder=mine)["items"]] == ["secret.txt"]
    assert_error(fm.list(bob, folder=mine), 404, "folder_not_found")
    assert_error(fm.list(bob, folder=mine.upper()), 404, "folder_not_found")
    assert_error(fm.list(alice, folder=str(uuid.uuid4())), 404, "folder_not_found")
    assert_error(fm.list(alice, folder="not-a-uuid"), 404, "folder_not_found")
    assert_error(fm.list(alice, folder=ROOT), 404, "folder_not_found")
    fm.changed(alice, f"UPDATE folders SET deleted_at = now() WHERE id = '{mine}'")
    assert_error(fm.list(alice, folder=mine), 404, "folder_not_found")


def test_root_is_the_default_and_lists_only_live_entries_of_the_owner(fm, alice, bob):
    sub = fm.folder(alice, "sub")
    a_ids = fm.files(alice, [("root1.txt", 1, "text/plain", None, None), ("root2.txt", 2, "text/plain", None, None)])
    fm.files(alice, [("inside.txt", 1, "text/plain", None, None)], sub)
    fm.files(bob, [("bobs.txt", 1, "text/plain", None, None)])
    fm.changed(alice, f"UPDATE files SET deleted_at = now() WHERE id = '{a_ids[1]}'")
    body = fm.list_ok(alice)
    assert body == fm.list_ok(alice, folder="root")
    assert [(i["kind"], i["name"]) for i in body["items"]] == [("folder", "sub"), ("file", "root1.txt")]
    assert body["next_cursor"] is None
    folder, file_ = body["items"]
    assert set(folder) == {"kind", "id", "name", "parent_id", "created_at", "updated_at"}
    assert folder["parent_id"] is None and folder["id"] == sub
    assert set(file_) == {"kind", "id", "name", "size", "content_type", "status", "folder_id", "visibility",
                          "created_at", "updated_at", "thumbnail_url"}
    assert file_["folder_id"] is None and file_["size"] == 1 and file_["status"] == "UPLOADED"
    assert file_["thumbnail_url"] is None and file_["visibility"] == "private"
    inside = fm.list_ok(alice, folder=sub)["items"]
    assert [(i["name"], i["folder_id"]) for i in inside] == [("inside.txt", sub)]


# ---- order -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sort", SORTS)
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_each_sort_pages_in_the_order_python_computes(fm, alice, sort, order):
    folder, folders, files = make_tree(fm, alice)
    want = expected(folders, files, sort, order)
    for limit in (3, 7, 50):
        items, pages = fm.list_all(alice, folder=folder, sort=sort, order=order, limit=limit)
        assert [(i["kind"], i["id"]) for i in items] == want, (sort, order, limit)
        assert pages == -(-len(want) // limit)


def test_folders_come_first_across_pages(fm, alice):
    folder, folders, files = make_tree(fm, alice)
    items, _ = fm.list_all(alice, folder=folder, sort="size", order="desc", limit=4)
    kinds = [i["kind"] for i in items]
    assert kinds == ["folder"] * len(folders) + ["file"] * len(files)
    # a page that ends exactly on the last folder: the next one starts with the files
    first = fm.list_ok(alice, folder=folder, limit=len(folders))
    assert [i["kind"] for i in first["items"]] == ["folder"] * len(folders) and first["next_cursor"]
    second = fm.list_ok(alice, folder=folder, limit=len(folders), cursor=first["next_cursor"])
    assert [i["kind"] for i in second["items"]] == ["file"] * len(folders)


@pytest.mark.parametrize("type_", ["image", "video", "audio", "pdf", "text", "other"])
def test_type_filter_by_family_parameters_ignored(fm, alice, type_):
    folder, folders, files = make_tree(fm, alice)
    items, _ = fm.list_all(alice, folder=folder, type=type_, limit=5)
    assert [(i["kind"], i["id"]) for i in items] == expected(folders, files, "name", "asc", type_)
    assert items and all(i["kind"] == "file" for i in items)
    if type_ == "text":
        cts = {i["content_type"] for i in items}
        assert "text/plain; charset=utf-8" in cts and "Text/CSV ; charset=x" in cts, cts


def test_ten_thousand_files_paged_to_the_end(fm, alice):
    folder = fm.folder(alice, "big")
    n = 10000
    fm.sql(f"INSERT INTO files (owner_id, folder_id, name, size, content_type, claimed_sha256, status, created_at) "
           f"SELECT '{alice.id}', '{folder}', 'file-' || (g * 7919 % {n}), g % 13, 'image/png', "
           f"sha256(g::text::bytea), 'UPLOADED', timestamptz '2026-01-01' + (g % 100) * interval '1 second' "
           f"FROM generate_series(1, {n}) g")
    ids = set(fm.sql(f"SELECT id FROM files WHERE folder_id = '{folder}'").split())
    assert len(ids) == n
    for sort, order in (("name", "asc"), ("created_at", "desc"), ("size", "asc")):
        items, pages = fm.list_all(alice, folder=folder, sort=sort, order=order, limit=200)
        got = [i["id"] for i in items]
        assert len(got) == n and set(got) == ids, (sort, len(got), len(set(got)))
        assert pages == n // 200


# ---- cursors ---------------------------------------------------------------------------------------------------------

def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64e(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def test_tampered_and_foreign_cursors_are_400(fm, alice, bob):
    folder, _, _ = make_tree(fm, alice)
    other = fm.folder(alice, "other")
    fm.files(alice, [(f"o{i}", 1, "text/plain", None, None) for i in range(5)], other)
    cursor = fm.list_ok(alice, folder=folder, limit=3)["next_cursor"]
    # common/cursor.c's text: base64url(version 0x01 | payload | 16-byte tag), the listing's fields in the payload
    raw = b64d(cursor)
    assert raw[0] == 1 and raw[1:4] == b"l2\n" and "." not in cursor
    assert fm.list(alice, folder=folder, limit=3, cursor=cursor).status_code == 200
    bad = [
        b64e(raw[:-1] + bytes([raw[-1] ^ 1])),  # tag changed
        b64e(raw.replace(b"\nd\n", b"\nf\n")),  # payload changed, old tag
        b64e(raw[:-17] + bytes([raw[-17] ^ 1]) + raw[-16:]),  # the key's last byte changed
        b64e(bytes([2]) + raw[1:]),  # another version
        b64e(raw[:-16]),  # no tag
        cursor + ".", "." + cursor, "x" * 5000, "%zz", "", "!!!.???", cursor + "A", cursor[:-2],
    ]
    for c in bad:
        assert_error(fm.list(alice, folder=folder, limit=3, cursor=c), 400, "invalid_cursor")
    # bound to the owner, the folder, the sort, the order and the type
    assert_error(fm.list(bob, folder=folder, limit=3, cursor=cursor), 400, "invalid_cursor")  # parsed first
    assert_error(fm.list(bob, limit=3, cursor=cursor), 400, "invalid_cursor")
    assert_error(fm.list(alice, folder=other, limit=3, cursor=cursor), 400, "invalid_cursor")
    assert_error(fm.list(alice, limit=3, cursor=cursor), 400, "invalid_cursor")
    assert_error(fm.list(alice, folder=folder, sort="size", limit=3, cursor=cursor), 400, "invalid_cursor")
    assert_error(fm.list(alice, folder=folder, order="desc", limit=3, cursor=cursor), 400, "invalid_cursor")
    assert_error(fm.list(alice, folder=folder, type="text", limit=3, cursor=cursor), 400, "invalid_cursor")
    # limit is not bound: a client may change its page size
    assert fm.list(alice, folder=folder, limit=10, cursor=cursor).status_code == 200


def test_cursor_survives_its_row_trashed_or_renamed(fm, alice):
    folder = fm.folder(alice, "keyset")
    ids = fm.files(alice, [(f"k{i:02}", i, "text/plain", at(i), at(i)) for i in range(10)], folder)
    for mutate in ("trash", "rename"):
        page = fm.list_ok(alice, folder=folder, sort="name", limit=4)
        last = page["items"][-1]["id"]
        if mutate == "trash":
            fm.changed(alice, f"UPDATE files SET deleted_at = now() WHERE id = '{last}'")
        else:
            fm.changed(alice, f"UPDATE files SET name = 'zz-' || name WHERE id = '{last}'")
        rest = fm.list_ok(alice, folder=folder, sort="name", limit=4, cursor=page["next_cursor"])
        live = fm.sql(f"SELECT id FROM files WHERE folder_id = '{folder}' AND deleted_at IS NULL "
                      f"AND name > '{page['items'][-1]['name']}' ORDER BY name LIMIT 4").split()
        assert [i["id"] for i in rest["items"]] == live, mutate
        fm.changed(alice, f"UPDATE files SET deleted_at = NULL, name = regexp_replace(name, '^zz-', '') "
                          f"WHERE id = '{last}'")
    assert ids


# ---- thumbnails ------------------------------------------------------------------------------------------------------

def test_thumbnail_url_is_a_signed_edge_url_of_the_thumb_and_null_otherwise(fm, alice, worker, edge):
    folder = fm.folder(alice, "pics")
    a, _ = fm.upload(alice, png(), content_type="image/png", name="pic.png", folder=folder)
    data = secrets.token_bytes(3000)
    b, _ = fm.upload(alice, b"plain text file\n" * 10, content_type="text/plain", name="note.txt", folder=folder)
    wait_ready(fm, alice, a["file_id"])
    wait_ready(fm, alice, b["file_id"])
    pending = fm.start(alice, data, name="pending.bin", folder=folder)
    items = {i["name"]: i for i in fm.list_ok(alice, folder=folder)["items"]}
    assert set(items) == {"pic.png", "note.txt", "pending.bin"}
    assert items["pending.bin"]["thumbnail_url"] is None and items["pending.bin"]["status"] == "PENDING_UPLOAD"
    assert items["note.txt"]["thumbnail_url"] is None and items["note.txt"]["status"] == "READY"
    url = items["pic.png"]["thumbnail_url"]
    assert url.startswith(edge.url + "/f/variants/") and f"Key-Pair-Id={KEY_ID}" in url
    # the URL GET /v1/files/{id}/download?variant=thumb signs (one signer, download.c): the same resource and expiry
    # (ECDSA signatures are randomised, and each thread caches its own)
    dl = fm.call(alice, "GET", f"/v1/files/{a['file_id']}/download?variant=thumb").json()["url"]
    assert re.sub(r"Signature=[^&]*", "", dl) == re.sub(r"Signature=[^&]*", "", url)
    got = requests.get(url, timeout=30)
    assert got.status_code == 200 and got.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(got.content)).format == "WEBP"
    # one URL, one object: the signature does not open another key
    other = url.replace("/thumb.webp", "/preview.webp")
    assert requests.get(other, timeout=30).status_code == 403
    assert pending


# ---- the first-page cache --------------------------------------------------------------------------------------------

def names(body):
    return [i["name"] for i in body["items"]]


def test_first_page_is_cached_under_the_generation(fm, alice):
    fm.files(alice, [("c1.txt", 1, "text/plain", None, None)])
    g = fm.gen(alice)
    body = fm.list_ok(alice)
    keys = wait_for(lambda: fm.cached_pages(alice), 5, 0.02)  # the SET is fire and forget
    assert keys and all(k.startswith(f"fm:list:{{{alice.id}}}:{ROOT}:name:asc:all:50:") for k in keys), keys
    assert keys == [f"fm:list:{{{alice.id}}}:{ROOT}:name:asc:all:50:{g}"]
    ttl = int(fm.redis("TTL", keys[0]))
    assert 0 < ttl <= 60
    # served from the cache: a row changed behind the API's back (no INCR) does not show
    fm.sql(f"UPDATE files SET name = 'behind.txt' WHERE owner_id = '{alice.id}'")
    assert fm.list_ok(alice) == body
    fm.redis("INCR", f"fm:tgen:{{{alice.id}}}")
    assert names(fm.list_ok(alice)) == ["behind.txt"]


def test_cache_dropped_when_a_file_is_trashed_and_restored(fm, alice, worker):
    a, _ = fm.upload(alice, b"hello\n", content_type="text/plain", name="t.txt")
    wait_ready(fm, alice, a["file_id"])
    assert names(fm.list_ok(alice)) == ["t.txt"]
    assert fm.call(alice, "DELETE", f"/v1/files/{a['file_id']}").status_code == 204
    assert names(fm.list_ok(alice)) == []
    assert fm.call(alice, "POST", f"/v1/files/{a['file_id']}/restore").status_code == 200
    assert names(fm.list_ok(alice)) == ["t.txt"]


def test_cache_dropped_by_a_new_file_and_its_status_changes(fm, alice, worker):
    assert names(fm.list_ok(alice)) == []
    a = fm.start(alice, png(), name="new.png", content_type="image/png")  # a record flushed to PostgreSQL
    body = fm.list_ok(alice)
    assert [(i["name"], i["status"]) for i in body["items"]] == [("new.png", "PENDING_UPLOAD")]
    a2, _ = fm.upload(alice, png(), content_type="image/png", name="done.png")  # complete, then the worker
    wait_ready(fm, alice, a2["file_id"])
    got = wait_for(lambda: (lambda b: b if any(i["name"] == "done.png" and i["status"] == "READY" and
                                                i["thumbnail_url"] for i in b["items"]) else None)(fm.list_ok(alice)),
                   2, 0.05)
    assert got, fm.list_ok(alice)


def test_cache_dropped_when_the_worker_fails_a_file(fm, alice, worker):
    # declared image/png, bytes of a text file: the worker's sniff rejects it (FAILED or QUARANTINED)
    a, _ = fm.upload(alice, b"not a png at all\n" * 20, content_type="image/png", name="liar.png")
    assert fm.list_ok(alice)["items"][0]["status"] in ("UPLOADED", "PROCESSING", "PENDING_UPLOAD")
    row = wait_for(lambda: (lambda x: x if x.json().get("status") in ("FAILED", "QUARANTINED") else None)(
        fm.file(alice, a["file_id"])), 60, 0.05)
    assert row, fm.file(alice, a["file_id"]).text
    assert fm.list_ok(alice)["items"][0]["status"] == row.json()["status"]


def test_other_owners_changes_keep_my_cache(fm, alice, bob):
    fm.files(alice, [("mine.txt", 1, "text/plain", None, None)])
    fm.list_ok(alice)
    g = fm.gen(alice)
    fm.start(bob, b"x" * 10, name="bobs.bin")
    assert fm.gen(alice) == g and fm.cached_pages(alice)


def test_cache_dropped_when_an_upload_is_aborted(fm, alice):
    a = fm.start(alice, b"y" * 100, name="aborted.bin")
    assert [(i["name"], i["status"]) for i in fm.list_ok(alice)["items"]] == [("aborted.bin", "PENDING_UPLOAD")]
    assert fm.abort(alice, a["upload_id"]).status_code in (200, 204)
    assert names(fm.list_ok(alice)) == []


def test_cache_dropped_when_the_upload_is_completed(fm, alice):
    data = b"z" * 200
    a = fm.start(alice, data, name="completed.bin")
    assert [i["status"] for i in fm.list_ok(alice)["items"]] == ["PENDING_UPLOAD"]
    fm.put(a, data)
    assert fm.complete(alice, a["upload_id"]).status_code == 200
    # UPLOADED, or further along when this module's worker already took the job: never the cached PENDING_UPLOAD
    assert [i["status"] for i in fm.list_ok(alice)["items"]] != ["PENDING_UPLOAD"]


def test_cursor_after_a_name_of_255_four_byte_characters(fm, alice):
    folder = fm.folder(alice, "long")
    longest = "\U0001F600" * 255  # 1,020 bytes of UTF-8: PostgreSQL bounds names in characters
    after = "\U0001F601"  # after it in code-point order
    fm.files(alice, [(longest, 1, "text/plain", None, None), (after, 1, "text/plain", None, None)], folder)
    page = fm.list_ok(alice, folder=folder, limit=1)
    assert page["items"][0]["name"] == longest and page["next_cursor"]
    rest = fm.list_ok(alice, folder=folder, limit=1, cursor=page["next_cursor"])
    assert names(rest) == [after] and rest["next_cursor"] is None
    assert_error(fm.list(alice, folder="f" * 100), 404, "folder_not_found")


def test_cache_dropped_by_an_s3_event(fm, alice):
    data = b"e" * 300
    a = fm.start(alice, data, name="by-event.bin")
    assert [i["status"] for i in fm.list_ok(alice)["items"]] == ["PENDING_UPLOAD"]
    assert fm.put(a, data).status_code == 200
    record = aws_record(fm.bucket, key_of(a["upload_id"]), len(data), etag=hashlib.md5(data).hexdigest())
    r = post_event(fm.base, {"Records": [record]})
    assert r.status_code == 200, r.text
    assert fm.upload_row(a["upload_id"])["status"] != "PENDING"  # the event marked it (events.c)
    assert [i["status"] for i in fm.list_ok(alice)["items"]] != ["PENDING_UPLOAD"]
