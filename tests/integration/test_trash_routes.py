"""The trash view (issue 11 item 5; DESIGN.md §5b; docs/downloads.md "Delete, restore, retention") against the real
stack: GET /v1/trash, DELETE /v1/trash/{id}, DELETE /v1/trash, and the reconciler's retention now taking trashed
folders too (schema/016_trash_delta.sql).

Files are uploaded through the API (READY ones made so by a real fm-worker, whose cleanup_blob jobs delete the
objects); folders are made and trashed with SQL the way the folder routes do it (deleted_at + trashed_with over the
subtree, schema/012_tree.sql), as those routes are built in parallel.

    FM_BUILD_DIR=build /usr/bin/python3 -m pytest -q tests/integration/test_trash_routes.py
"""
import base64
import uuid

import pytest

from helpers_fm import assert_error, redis_url, wait_for
from helpers_uploads import EVENTS_SECRET, dedicated, random_bytes
from test_file_delete import DeleteFm, octet_bytes

TRASH_REDIS_DB = 61  # 47+ is free; 57-59 are taken
RETENTION_S = 2592000


class TrashFm(DeleteFm):
    def redis(self, *args):
        from helpers_fm import redis_cmd
        return redis_cmd(self.stack, TRASH_REDIS_DB, *args)

    def trash(self, user, query=""):
        return self.call(user, "GET", f"/v1/trash{query}")

    def purge(self, user, entry_id):
        return self.call(user, "DELETE", f"/v1/trash/{entry_id}")

    def empty(self, user):
        return self.call(user, "DELETE", "/v1/trash")

    def exists(self, table, entry_id):
        return self.sql(f"SELECT count(*) FROM {table} WHERE id = '{entry_id}'") == "1"

    def folder(self, user, name, parent=None):
        """A folder row as POST /v1/folders makes it (ancestors = the parent's path)."""
        fid = str(uuid.uuid4())
        if parent is None:
            self.sql(f"INSERT INTO folders (id, owner_id, name) VALUES ('{fid}', '{user.id}', '{name}')")
        else:
            self.sql(f"INSERT INTO folders (id, owner_id, parent_id, name, ancestors) SELECT '{fid}', '{user.id}', "
                     f"id, '{name}', ancestors || id FROM folders WHERE id = '{parent}'")
        return fid

    def into(self, file_id, folder_id):
        self.sql(f"UPDATE files SET folder_id = '{folder_id}' WHERE id = '{file_id}'")

    def trash_folder(self, folder_id, ago="0 seconds"):
        """DELETE /v1/folders/{id}'s transaction: the subtree's live rows get deleted_at, and trashed_with = the
        folder except the folder itself."""
        f = folder_id
        self.sql(f"BEGIN; "
                 f"UPDATE folders SET deleted_at = now() - interval '{ago}', updated_at = now(), version = version + 1,"
                 f" trashed_with = CASE WHEN id = '{f}' THEN NULL ELSE '{f}'::uuid END"
                 f" WHERE (id = '{f}' OR ancestors @> ARRAY['{f}'::uuid]) AND deleted_at IS NULL; "
                 f"UPDATE files SET deleted_at = now() - interval '{ago}', updated_at = now(), version = version + 1,"
                 f" trashed_with = '{f}' WHERE deleted_at IS NULL AND folder_id IN ("
                 f"  SELECT id FROM folders WHERE id = '{f}' OR ancestors @> ARRAY['{f}'::uuid]); COMMIT")


@pytest.fixture(scope="module")
def fm(controls, stack):
    with dedicated(controls, stack, TrashFm, FM_EVENTS_SECRET=EVENTS_SECRET,
                   FM_REDIS_URL=redis_url(stack, TRASH_REDIS_DB)) as f:
        yield f


@pytest.fixture(scope="module")
def worker(workers, stack, fm):
    # the scan's grace is long: every cleanup job seen here was made by a purge, not by the scan
    w = workers.start(FM_REDIS_URL=redis_url(stack, TRASH_REDIS_DB), FM_WORKER_THREADS=2,
                      FM_CLEANUP_INTERVAL_S=1, FM_BLOB_GRACE_S=86400)
    yield w
    workers.stop(w)


@pytest.fixture
def alice(fm):
    return fm.user("trash-alice")


@pytest.fixture
def bob(fm):
    return fm.user("trash-bob")


def pending_file(fm, user, name=None):
    """A file whose upload was aborted long ago (no upload in flight keeps its row), in the root."""
    a = fm.start(user, random_bytes(64), name=name)
    fm.sql(f"UPDATE uploads SET status = 'ABORTED', created_at = now() - interval '2 days' "
           f"WHERE id = '{a['upload_id']}'")
    return a["file_id"]


# ---- GET /v1/trash ---------------------------------------------------------------------------------------------------


def test_trash_lists_entries_trashed_on_their_own_newest_first(fm, alice, bob):
    loose = pending_file(fm, alice, "loose.bin")
    folder = fm.folder(alice, "Photos")
    sub = fm.folder(alice, "2024", folder)
    inside, deeper = pending_file(fm, alice, "in.bin"), pending_file(fm, alice, "deep.bin")
    fm.into(inside, folder)
    fm.into(deeper, sub)
    assert fm.delete(alice, loose).status_code == 204
    fm.trash_folder(folder)
    pending_file(fm, bob)  # bob's trash is not alice's
    assert fm.delete(bob, pending_file(fm, bob)).status_code == 204

    r = fm.trash(alice)
    assert r.status_code == 200, r.text
    body = r.json()
    items = body["items"]
    # what the folder took shows as the folder; newest first
    assert [(i["kind"], i["id"]) for i in items] == [("folder", folder), ("file", loose)], items
    assert body["next_cursor"] is None
    f, l_ = items
    assert f["name"] == "Photos" and f["parent_id"] is None and "size" not in f, f
    assert l_["name"] == "loose.bin" and l_["size"] == 64 and l_["folder_id"] is None, l_
    for it in items:
        deleted = fm.sql(f"SELECT to_char(deleted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), "
                         f"to_char((deleted_at + interval '{RETENTION_S} seconds') AT TIME ZONE 'UTC', "
                         f"'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM {it['kind']}s WHERE id = '{it['id']}'").split("|")
        assert [it["deleted_at"], it["purge_at"]] == deleted, (it, deleted)


def test_trash_pages_to_the_end_without_duplicates(fm, alice):
    ids = set()
    for _ in range(7):
        fid = pending_file(fm, alice)
        assert fm.delete(alice, fid).status_code == 204
        ids.add(fid)
    # two entries deleted in the same microsecond: the id breaks the tie
    same = list(ids)[:2]
    fm.sql(f"UPDATE files SET deleted_at = '2026-01-01T00:00:00Z' WHERE id IN ('{same[0]}', '{same[1]}')")
    seen, cursor, pages = [], None, 0
    while True:
        r = fm.trash(alice, "?limit=2" + (f"&cursor={cursor}" if cursor else ""))
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["items"]) <= 2
        seen += [i["id"] for i in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == len(ids), seen
    assert pages == 4


def test_trash_refuses_bad_limits_and_cursors(fm, alice, bob):
    for fid in (pending_file(fm, alice), pending_file(fm, alice)):
        assert fm.delete(alice, fid).status_code == 204
    for bad in ("0", "201", "-1", "abc", "1.5", ""):
        assert_error(fm.trash(alice, f"?limit={bad}"), 422, "invalid_limit")
    cursor = fm.trash(alice, "?limit=1").json()["next_cursor"]
    assert cursor
    assert fm.trash(alice, f"?limit=1&cursor={cursor}").status_code == 200
    raw = bytearray(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    raw[3] ^= 1  # one bit of the keyset
    tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert_error(fm.trash(alice, f"?cursor={tampered}"), 400, "invalid_cursor")
    assert_error(fm.trash(alice, "?cursor=not-a-cursor"), 400, "invalid_cursor")
    assert_error(fm.trash(alice, "?cursor=" + "A" * 400), 400, "invalid_cursor")
    # alice's cursor is no cursor of bob's
    assert_error(fm.trash(bob, f"?cursor={cursor}"), 400, "invalid_cursor")
    # nor is a cursor of another route (the delta feed's)
    delta_cursor = fm.call(alice, "GET", "/v1/files/delta").json()["cursor"]
    assert_error(fm.trash(alice, f"?cursor={delta_cursor}"), 400, "invalid_cursor")
    assert_error(fm.trash(None), 401, "missing_token")


# ---- DELETE /v1/trash/{id} -----------------------------------------------------------------------------------------


def test_purge_deletes_the_row_and_the_worker_deletes_the_blob(fm, alice, worker):
    data = octet_bytes(4000)
    file_id, key, sha = fm.ready(alice, data)
    assert fm.delete(alice, file_id).status_code == 204
    r = fm.purge(alice, file_id)
    assert r.status_code == 204 and r.content == b"", r.text
    assert not fm.exists("files", file_id)
    job = wait_for(lambda: (lambda j: j if j and j["status"] in ("DONE", "FAILED") else None)(fm.cleanup_job(sha)),
                   60, 0.1)
    assert job and job["status"] == "DONE" and job["payload"]["result"] == "deleted", fm.cleanup_job(sha)
    assert job["payload"]["reason"] == "purged from the trash", job
    assert fm.blob_row(sha) is None and fm.head(key) is None
    assert fm.wait_purged(sha256=sha, reason="cleanup")["payload"]["keys"] == [key]
    assert_error(fm.file(alice, file_id), 404, "not_found")
    assert [i for i in fm.trash(alice).json()["items"] if i["id"] == file_id] == []
    assert_error(fm.purge(alice, file_id), 404, "not_found")  # gone for good


def test_purge_keeps_a_blob_another_live_file_uses(fm, alice, bob, worker):
    data = octet_bytes(5000)
    mine, key, sha = fm.ready(alice, data)
    theirs, _, _ = fm.ready(bob, data)  # one blob, two files
    assert fm.delete(alice, mine).status_code == 204
    assert fm.purge(alice, mine).status_code == 204
    assert not fm.exists("files", mine)
    assert fm.cleanup_job(sha) is None
    assert fm.blob_row(sha) is not None and fm.head(key) is not None
    assert fm.file(bob, theirs).status_code == 200


def test_purge_of_a_folder_takes_its_whole_subtree(fm, alice, worker):
    top = fm.folder(alice, "Top")
    sub = fm.folder(alice, "Sub", top)
    a, _, sha_a = fm.ready(alice, octet_bytes(3100))
    b = pending_file(fm, alice)
    c = pending_file(fm, alice)
    fm.into(a, top)
    fm.into(b, sub)
    fm.into(c, sub)
    assert fm.delete(alice, c).status_code == 204  # trashed on its own before the folder: goes with it too
    fm.trash_folder(top)
    # what the folder took is not an entry of its own
    assert_error(fm.purge(alice, sub), 404, "not_found")
    assert_error(fm.purge(alice, b), 404, "not_found")
    assert fm.purge(alice, top).status_code == 204
    for table, ids in (("files", (a, b, c)), ("folders", (top, sub))):
        for entry in ids:
            assert not fm.exists(table, entry), (table, entry)
    job = wait_for(lambda: (lambda j: j if j and j["status"] == "DONE" else None)(fm.cleanup_job(sha_a)), 60, 0.1)
    assert job, fm.cleanup_job(sha_a)
    assert fm.trash(alice).json()["items"] == []


def test_purge_of_a_folder_with_a_live_entry_inside_changes_nothing(fm, alice):
    top = fm.folder(alice, "Holder")
    live = pending_file(fm, alice)
    fm.trash_folder(top)
    fm.into(live, top)  # a live file inside a trashed folder (e.g. restored on its own into it)
    assert_error(fm.purge(alice, top), 409, "folder_not_empty")
    assert fm.exists("folders", top) and fm.exists("files", live)


def test_purge_while_an_upload_may_still_put_is_409(fm, alice):
    a = fm.start(alice, random_bytes(80))  # PENDING: its URL can still PUT
    assert fm.delete(alice, a["file_id"]).status_code == 204
    assert_error(fm.purge(alice, a["file_id"]), 409, "upload_in_progress")
    assert fm.exists("files", a["file_id"])


def test_purge_refuses_what_is_not_the_callers_trash(fm, alice, bob):
    live = pending_file(fm, alice)
    assert_error(fm.purge(alice, live), 404, "not_found")  # not in the trash
    theirs = pending_file(fm, bob)
    assert fm.delete(bob, theirs).status_code == 204
    assert_error(fm.purge(alice, theirs), 404, "not_found")  # bob's
    assert fm.exists("files", theirs)
    assert_error(fm.purge(alice, str(uuid.uuid4())), 404, "not_found")
    assert_error(fm.purge(alice, "not-a-uuid"), 404, "not_found")
    assert_error(fm.purge(None, theirs), 401, "missing_token")
    assert fm.purge(bob, theirs).status_code == 204  # the owner's same request works


# ---- DELETE /v1/trash ---------------------------------------------------------------------------------------------


def test_empty_trash_purges_everything_of_the_caller_only(fm, alice, bob, worker):
    data = octet_bytes(3300)
    ready, key, sha = fm.ready(alice, data)
    loose = [pending_file(fm, alice) for _ in range(3)]
    folder = fm.folder(alice, "Old")
    sub = fm.folder(alice, "Older", folder)
    inside = pending_file(fm, alice)
    fm.into(inside, sub)
    kept = pending_file(fm, alice)  # live: stays
    for fid in loose + [ready]:
        assert fm.delete(alice, fid).status_code == 204
    fm.trash_folder(folder)
    theirs = pending_file(fm, bob)
    assert fm.delete(bob, theirs).status_code == 204

    r = fm.empty(alice)
    assert r.status_code == 204, r.text
    assert fm.trash(alice).json()["items"] == []
    for fid in loose + [ready, inside]:
        assert not fm.exists("files", fid), fid
    assert not fm.exists("folders", folder) and not fm.exists("folders", sub)
    assert fm.exists("files", kept) and fm.exists("files", theirs)
    assert [i["id"] for i in fm.trash(bob).json()["items"]] == [theirs]
    job = wait_for(lambda: (lambda j: j if j and j["status"] == "DONE" else None)(fm.cleanup_job(sha)), 60, 0.1)
    assert job and job["payload"]["reason"] == "trash emptied", fm.cleanup_job(sha)
    assert fm.head(key) is None
    assert fm.empty(alice).status_code == 204  # an empty trash: nothing to do


def test_empty_trash_is_bounded_per_call(fm, alice):
    # 1,001 trashed files (made in SQL: the bound is 1,000 a call)
    fm.sql(f"INSERT INTO files (owner_id, name, size, content_type, claimed_sha256, deleted_at) "
           f"SELECT '{alice.id}', 'bulk-' || g, 1, 'text/plain', sha256(g::text::bytea), now() "
           f"FROM generate_series(1, 1001) g")
    r = fm.empty(alice)
    assert r.status_code == 202, r.text
    assert r.json() == {"purged": 1000, "more": True}
    assert fm.sql(f"SELECT count(*) FROM files WHERE owner_id = '{alice.id}'") == "1"
    assert fm.empty(alice).status_code == 204
    assert fm.sql(f"SELECT count(*) FROM files WHERE owner_id = '{alice.id}'") == "0"


def test_empty_trash_leaves_a_file_whose_upload_may_still_put(fm, alice):
    a = fm.start(alice, random_bytes(90))
    assert fm.delete(alice, a["file_id"]).status_code == 204
    assert fm.empty(alice).status_code == 204
    assert fm.exists("files", a["file_id"])
    assert [i["id"] for i in fm.trash(alice).json()["items"]] == [a["file_id"]]


# ---- retention ------------------------------------------------------------------------------------------------------


def test_retention_deletes_trashed_folders_after_their_files(fm, controls, stack, alice):
    top = fm.folder(alice, "Ancient")
    sub = fm.folder(alice, "Older", top)
    inside = pending_file(fm, alice)
    fm.into(inside, sub)
    fm.trash_folder(top, ago="31 days")
    recent = fm.folder(alice, "Recent")
    fm.trash_folder(recent)
    # an instance with the default retention (30 days) and a 1 s reconciler, on a Redis database of its own (its own
    # reconciler lock)
    rounds = controls.start(FM_RECONCILE_INTERVAL_S=1, FM_REDIS_URL=redis_url(stack, TRASH_REDIS_DB + 2))
    try:
        assert wait_for(lambda: not fm.exists("folders", top), 60)
        assert not fm.exists("folders", sub) and not fm.exists("files", inside)
        assert fm.exists("folders", recent)  # within retention
    finally:
        controls.stop(rounds)
