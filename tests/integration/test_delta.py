"""GET /v1/files/delta (issue 11 item 3; DESIGN.md §5b; docs/downloads.md "Delete, restore, retention") against the
real stack: the change log written by schema/016_trash_delta.sql's triggers, replayed by a client into a local copy
that must end equal to a fresh read of its rows; cursors signed, bound to the user, expired by the retention.

Uploads go through the API (their rows arrive through the write-behind flush). The first replay test makes folders,
renames and moves with SQL, since the feed records every change of the rows whoever makes it;
test_replay_through_the_routes_equals_a_fresh_listing makes them with the routes and compares with GET /v1/files.

    FM_BUILD_DIR=build /usr/bin/python3 -m pytest -q tests/integration/test_delta.py
"""
import base64
import json
import time
import uuid

import pytest

from helpers_fm import assert_error, redis_cmd, redis_url, wait_for
from helpers_uploads import EVENTS_SECRET, Fm, Psql, dedicated, random_bytes

DELTA_REDIS_DB = 62  # 47+ is free; 57-59 and 61 (test_trash_routes) are taken
PRUNE_REDIS_DB = 60  # the short-retention instance's own (its own reconciler lock)


class DeltaFm(Fm):
    def redis(self, *args):
        return redis_cmd(self.stack, DELTA_REDIS_DB, *args)

    def listing(self, user):
        """Every live entry of the caller, walked through GET /v1/files folder by folder (all pages), as
        {(kind, id): (name, parent, status)}."""
        out, todo = {}, ["root"]
        while todo:
            folder, cursor = todo.pop(), None
            while True:
                q = f"/v1/files?folder={folder}&limit=200" + (f"&cursor={cursor}" if cursor else "")
                r = self.call(user, "GET", q)
                assert r.status_code == 200, r.text
                body = r.json()
                for item in body["items"]:
                    if item["kind"] == "folder":
                        out[("folder", item["id"])] = (item["name"], item["parent_id"], None)
                        todo.append(item["id"])
                    else:
                        out[("file", item["id"])] = (item["name"], item["folder_id"], item["status"])
                cursor = body["next_cursor"]
                if cursor is None:
                    break
        return out

    def delta(self, user, cursor=None, limit=None):
        q = []
        if cursor is not None:
            q.append(f"cursor={cursor}")
        if limit is not None:
            q.append(f"limit={limit}")
        return self.call(user, "GET", "/v1/files/delta" + ("?" + "&".join(q) if q else ""))

    def now(self, user):
        r = self.delta(user)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["changes"] == [] and body["has_more"] is False, body
        return body["cursor"]

    def fresh(self, user):
        """The caller's rows read straight from PostgreSQL, as {(kind, id): projection}."""
        out = self.sql(
            "SELECT coalesce(json_agg(x), '[]') FROM ("
            f" SELECT 'file' AS kind, id, name, folder_id AS parent, status::text, visibility, version,"
            f"        deleted_at IS NOT NULL AS trashed FROM files WHERE owner_id = '{user.id}'"
            " UNION ALL"
            f" SELECT 'folder', id, name, parent_id, NULL, NULL, version, deleted_at IS NOT NULL"
            f" FROM folders WHERE owner_id = '{user.id}') x")
        return {(r["kind"], r["id"]): (r["name"], r["parent"], r["status"], r["visibility"], r["version"],
                                       r["trashed"]) for r in json.loads(out)}

    def folder(self, user, name, parent=None):
        fid = str(uuid.uuid4())
        if parent is None:
            self.sql(f"INSERT INTO folders (id, owner_id, name) VALUES ('{fid}', '{user.id}', '{name}')")
        else:
            self.sql(f"INSERT INTO folders (id, owner_id, parent_id, name, ancestors) SELECT '{fid}', '{user.id}', "
                     f"id, '{name}', ancestors || id FROM folders WHERE id = '{parent}'")
        return fid


def project(kind, entry):
    parent = entry["folder_id"] if kind == "file" else entry["parent_id"]
    return (entry["name"], parent, entry.get("status"), entry.get("visibility"), entry["version"],
            entry["deleted_at"] is not None)


class Replica:
    """A client's local copy kept by the feed: each change says "this id is now `entry`" (null: gone)."""

    def __init__(self, fm, user, cursor):
        self.fm, self.user, self.cursor, self.rows, self.ops = fm, user, cursor, {}, []

    def pull(self, limit=None):
        while True:
            r = self.fm.delta(self.user, self.cursor, limit)
            assert r.status_code == 200, r.text
            body = r.json()
            for c in body["changes"]:
                assert c["kind"] in ("file", "folder") and c["op"] in (
                    "created", "updated", "renamed", "moved", "trashed", "restored", "deleted"), c
                self.ops.append((c["id"], c["op"]))
                if c["entry"] is None:
                    self.rows.pop((c["kind"], c["id"]), None)
                else:
                    assert c["entry"]["id"] == c["id"], c
                    self.rows[(c["kind"], c["id"])] = project(c["kind"], c["entry"])
            self.cursor = body["cursor"]
            if not body["has_more"]:
                return self.rows

    def ops_of(self, entry_id):
        return [op for i, op in self.ops if i == entry_id]


@pytest.fixture(scope="module")
def fm(controls, stack):
    with dedicated(controls, stack, DeltaFm, FM_EVENTS_SECRET=EVENTS_SECRET,
                   FM_REDIS_URL=redis_url(stack, DELTA_REDIS_DB)) as f:
        yield f


@pytest.fixture
def alice(fm):
    return fm.user("delta-alice")


@pytest.fixture
def bob(fm):
    return fm.user("delta-bob")


def test_without_a_cursor_it_answers_now_and_no_changes(fm, alice):
    fm.start(alice, random_bytes(10))  # a change before "now" is not in the feed after it
    cursor = fm.now(alice)
    rep = Replica(fm, alice, cursor)
    assert rep.pull() == {}
    assert_error(fm.delta(None), 401, "missing_token")


def test_replayed_feed_equals_a_fresh_read(fm, alice, bob):
    rep = Replica(fm, alice, fm.now(alice))
    uploaded, _ = fm.upload(alice, random_bytes(300))                  # created, then UPLOADED (status)
    pending = fm.start(alice, random_bytes(40))                         # created
    trashed = fm.start(alice, random_bytes(41))
    restored = fm.start(alice, random_bytes(42))
    purged = fm.start(alice, random_bytes(43))
    fm.sql(f"UPDATE uploads SET status = 'ABORTED', created_at = now() - interval '2 days' "
           f"WHERE file_id = '{purged['file_id']}'")
    folder = fm.folder(alice, "Docs")
    sub = fm.folder(alice, "Sub", folder)
    fm.sql(f"UPDATE files SET folder_id = '{sub}' WHERE id = '{pending['file_id']}'")     # moved
    fm.sql(f"UPDATE files SET name = 'renamed.bin' WHERE id = '{uploaded['file_id']}'")  # renamed
    # updated: the worker's own status change (no worker runs here)
    fm.sql(f"UPDATE files SET status = 'FAILED', status_reason = 'corrupt', version = version + 1 "
           f"WHERE id = '{uploaded['file_id']}'")
    for f in (trashed, restored, purged):
        assert fm.call(alice, "DELETE", f"/v1/files/{f['file_id']}").status_code == 204
    assert fm.call(alice, "POST", f"/v1/files/{restored['file_id']}/restore").status_code == 200
    assert fm.call(alice, "DELETE", f"/v1/trash/{purged['file_id']}").status_code == 204  # deleted
    fm.sql(f"UPDATE folders SET name = 'Papers' WHERE id = '{folder}'")
    fm.sql(f"UPDATE folders SET deleted_at = now(), trashed_with = '{folder}' WHERE id = '{sub}'")
    fm.sql(f"UPDATE files SET deleted_at = now(), trashed_with = '{folder}' WHERE folder_id = '{sub}'")
    fm.upload(bob, random_bytes(77))  # bob's changes are not in alice's feed

    got = wait_for(lambda: rep.pull() == fm.fresh(alice), 20)
    assert got, (rep.rows, fm.fresh(alice))
    assert ("file", purged["file_id"]) not in rep.rows
    assert set(rep.rows) == set(fm.fresh(alice))
    # the live files as GET /v1/files/{id} shows them
    for key, row in rep.rows.items():
        if key[0] == "file" and not row[5]:
            body = fm.call(alice, "GET", f"/v1/files/{key[1]}").json()
            assert (body["name"], body["status"], body["folder_id"]) == (row[0], row[2], row[1]), body
    assert rep.ops_of(purged["file_id"])[-2:] == ["trashed", "deleted"]
    assert rep.ops_of(restored["file_id"])[-2:] == ["trashed", "restored"]
    assert "moved" in rep.ops_of(pending["file_id"]) and rep.ops_of(pending["file_id"])[-1] == "trashed"
    assert "renamed" in rep.ops_of(uploaded["file_id"]) and "updated" in rep.ops_of(uploaded["file_id"])
    assert rep.ops_of(folder) == ["created", "renamed"] and rep.ops_of(sub) == ["created", "trashed"]
    # nothing more: the feed is at its end, and a pull repeated brings nothing
    before = len(rep.ops)
    rep.pull()
    assert len(rep.ops) == before


def test_pages_follow_the_cursor_with_has_more(fm, alice):
    rep = Replica(fm, alice, fm.now(alice))
    ids = [fm.start(alice, random_bytes(20 + i))["file_id"] for i in range(5)]
    first = wait_for(lambda: (lambda b: b if len(b["changes"]) == 2 else None)(
        fm.delta(alice, rep.cursor, limit=2).json()), 10)
    assert first and first["has_more"] is True, first
    wait_for(lambda: len(rep.pull(limit=2)) == 5, 10)
    assert sorted(i for i, op in rep.ops if op == "created") == sorted(ids)
    assert len(rep.ops) == 5  # each change once


def test_a_change_committed_late_is_not_skipped(fm, alice):
    """A transaction that took its place in the log first but commits last: a feed ordered by seq alone would step
    past it for good once a later change was read."""
    rep = Replica(fm, alice, fm.now(alice))
    slow = Psql(fm.stack, fm.dbname)
    try:
        early = str(uuid.uuid4())
        # FAILED: a row that charges nothing, so the open transaction does not hold alice's quota figures (a charge
        # locks the owner's users row until it commits, schema/017_quotas.sql) and `late` can commit meanwhile
        slow.query(f"BEGIN; INSERT INTO files (id, owner_id, name, size, content_type, claimed_sha256, status) "
                   f"VALUES ('{early}', '{alice.id}', 'early.bin', 1, 'text/plain', sha256('early'), 'FAILED')")
        late = fm.start(alice, random_bytes(30))["file_id"]  # committed while `early` is open
        time.sleep(0.3)
        rep.pull()
        assert ("file", late) not in rep.rows  # held back while an older transaction is open
        slow.query("COMMIT")
        assert wait_for(lambda: {("file", early), ("file", late)} <= set(rep.pull()), 10), rep.rows
    finally:
        slow.close()


def test_bad_cursors_and_limits(fm, alice, bob):
    cursor = fm.now(alice)
    raw = bytearray(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    raw[5] ^= 0x40  # a bit of the place
    tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert_error(fm.delta(alice, tampered), 400, "invalid_cursor")
    assert_error(fm.delta(alice, "garbage"), 400, "invalid_cursor")
    assert_error(fm.delta(alice, ""), 400, "invalid_cursor")
    assert_error(fm.delta(bob, cursor), 400, "invalid_cursor")  # alice's cursor, bob's token
    for bad in ("0", "1001", "x", "-5"):
        assert_error(fm.delta(alice, cursor, limit=bad), 422, "invalid_limit")
    assert fm.delta(alice, cursor, limit=1000).status_code == 200


def test_a_cursor_older_than_the_retained_log_is_410(fm, controls, stack, alice):
    old = fm.now(alice)
    fid = fm.start(alice, random_bytes(33))["file_id"]
    seq = int(fm.sql(f"SELECT max(seq) FROM tree_changes WHERE entry_id = '{fid}'"))
    time.sleep(1.5)
    short = controls.start(FM_RECONCILE_INTERVAL_S=1, FM_DELTA_RETENTION_S=1,
                           FM_REDIS_URL=redis_url(stack, PRUNE_REDIS_DB))
    try:
        assert wait_for(lambda: int(fm.sql("SELECT seq FROM tree_changes_pruned")) >= seq
                        or fm.sql(f"SELECT count(*) FROM tree_changes WHERE seq = {seq}") == "0", 30)
        assert fm.sql(f"SELECT count(*) FROM tree_changes WHERE seq = {seq}") == "0"
    finally:
        controls.stop(short)
    assert_error(fm.delta(alice, old), 410, "cursor_expired")
    # the client lists again and follows a new cursor
    assert fm.delta(alice, fm.now(alice)).status_code == 200


def test_replay_through_the_routes_equals_a_fresh_listing(fm, alice):
    """Folders made, renamed, moved, trashed and restored, files uploaded, renamed, moved, copied, trashed, restored
    and purged, all through the routes: the live entries of the replayed feed are exactly what a fresh walk of
    GET /v1/files shows (name, parent, status)."""
    rep = Replica(fm, alice, fm.now(alice))

    def post(path, body, status):
        r = fm.call(alice, "POST", path, json=body)
        assert r.status_code == status, r.text
        return r.json()

    def patch(path, body):
        r = fm.call(alice, "PATCH", path, json=body)
        assert r.status_code == 200, r.text

    docs = post("/v1/folders", {"name": "Docs"}, 201)["id"]
    sub = post("/v1/folders", {"name": "Sub", "parent_id": docs}, 201)["id"]
    other = post("/v1/folders", {"name": "Other"}, 201)["id"]
    data = random_bytes(500)
    ready, _ = fm.upload(alice, data)
    fm.mark_verified(ready["file_id"], data)
    pending = fm.start(alice, random_bytes(60))
    gone = fm.start(alice, random_bytes(61))
    patch(f"/v1/files/{pending['file_id']}", {"name": "moved.bin", "folder_id": sub})
    copy = post(f"/v1/files/{ready['file_id']}/copy", {"folder_id": docs, "name": "copy.bin"}, 201)
    patch(f"/v1/folders/{sub}", {"parent_id": other, "name": "Sub2"})
    patch(f"/v1/folders/{docs}", {"name": "Papers"})
    assert fm.call(alice, "DELETE", f"/v1/folders/{other}").status_code == 204   # Sub2 and moved.bin with it
    post(f"/v1/folders/{other}/restore", {}, 200)
    assert fm.call(alice, "DELETE", f"/v1/folders/{docs}").status_code == 204    # copy.bin with it, stays
    fm.sql(f"UPDATE uploads SET status = 'ABORTED', created_at = now() - interval '2 days' "
           f"WHERE file_id = '{gone['file_id']}'")
    assert fm.call(alice, "DELETE", f"/v1/files/{gone['file_id']}").status_code == 204
    assert fm.call(alice, "DELETE", f"/v1/trash/{gone['file_id']}").status_code == 204  # purged
    assert copy["id"] not in {k[1] for k in fm.listing(alice)}

    def replayed():  # the live entries of the local copy: (name, parent, status)
        return {k: v[:3] for k, v in rep.pull().items() if not v[5]}
    fresh = fm.listing(alice)
    assert wait_for(lambda: replayed() == fresh, 20), (replayed(), fresh)
    assert set(fresh) == {("folder", other), ("folder", sub), ("file", ready["file_id"]),
                          ("file", pending["file_id"])}
    assert fresh[("folder", sub)] == ("Sub2", other, None)
    assert fresh[("file", pending["file_id"])][:2] == ("moved.bin", sub)
