"""Names and conflicts (issue 11 item 4; docs/uploads.md "Names and on_conflict", docs/decisions.md "Names and
conflicts (issue 11 items 1, 4)"): on_conflict on POST /v1/uploads (write-through with fail, the default; written
behind with rename, the name settled by the flush), PATCH /v1/files/{id} {name, folder_id}, POST
/v1/files/{id}/copy, against the real stack. Names are one namespace per (owner, folder) shared by files and folders
(schema/012_tree.sql's entry_names); every refusal is checked to have changed nothing.

    FM_BUILD_DIR=build /usr/bin/python3 -m pytest -q tests/integration/test_file_names.py
"""
import concurrent.futures
import secrets
import uuid

import pytest

from helpers_fm import assert_error, redis_cmd, redis_url, wait_for
from helpers_uploads import THRESHOLD, Fm, dedicated, random_bytes, sha256_hex
from test_record_backlog import flushers_held

NAMES_REDIS_DB = 54  # this module's fm-control (free: grep REDIS_DB in the suite)


class NamesFm(Fm):
    def redis(self, *args):
        return redis_cmd(self.stack, NAMES_REDIS_DB, *args)

    def post(self, user, name, data=None, **extra):
        data = data if data is not None else random_bytes(64)
        body = {"name": name, "size": len(data), "content_type": "application/octet-stream",
                "sha256": sha256_hex(data)}
        body.update(extra)
        return self.call(user, "POST", "/v1/uploads", json=body)

    def names(self, user, folder=None):
        where = "folder_id IS NULL" if folder is None else f"folder_id = '{folder}'"
        out = self.sql(f"SELECT name FROM files WHERE owner_id = '{user.id}' AND {where} AND deleted_at IS NULL "
                       f"ORDER BY name")
        return out.split("\n") if out else []

    def folder(self, user, name=None, parent=None, trashed=False):
        return self.sql(f"INSERT INTO folders (owner_id, parent_id, name, deleted_at) VALUES ('{user.id}', "
                        f"{'NULL' if parent is None else repr(parent)}, '{name or 'f-' + secrets.token_hex(4)}', "
                        f"{'now()' if trashed else 'NULL'}) RETURNING id")

    def ready(self, user, name, data=None, folder=None):
        data = data if data is not None else random_bytes(300)
        a, _ = self.upload(user, data, name=name, folder=folder, on_conflict="fail")
        self.mark_verified(a["file_id"], data)
        return a["file_id"], data

    def row(self, file_id):
        return self.sql_row(f"SELECT row_to_json(f) FROM (SELECT name, folder_id, status, version, updated_at, "
                            f"deleted_at, encode(blob_sha256, 'hex') AS blob FROM files WHERE id = '{file_id}') f")

    def patch(self, user, file_id, body, query=""):
        return self.call(user, "PATCH", f"/v1/files/{file_id}" + (f"?{query}" if query else ""), json=body)

    def copy(self, user, file_id, body, query=""):
        return self.call(user, "POST", f"/v1/files/{file_id}/copy" + (f"?{query}" if query else ""), json=body)


@pytest.fixture(scope="module")
def fm(controls, stack):
    with dedicated(controls, stack, NamesFm, FM_MULTIPART_THRESHOLD=THRESHOLD,
                   FM_REDIS_URL=redis_url(stack, NAMES_REDIS_DB)) as f:
        yield f


# ---- uploads ----------------------------------------------------------------------------------------------------


def test_upload_of_a_taken_name_is_refused_by_default(fm):
    user = fm.user("nm-fail")
    first = fm.post(user, "report.pdf")
    assert first.status_code == 201, first.text
    assert first.json()["name"] == "report.pdf"  # written through: the name is final
    assert fm.sql(f"SELECT count(*) FROM files WHERE id = '{first.json()['file_id']}'") == "1"  # before the answer
    before = fm.row_counts(user)
    assert_error(fm.post(user, "report.pdf"), 409, "name_taken")
    assert_error(fm.post(user, "report.pdf", on_conflict="fail"), 409, "name_taken")
    assert fm.row_counts(user) == before  # no file, no upload row left behind
    # a folder of that name takes the name as well (one namespace for files and folders)
    fm.folder(user, "Photos")
    assert_error(fm.post(user, "Photos"), 409, "name_taken")
    # names are exact bytes: another case is another name
    assert fm.post(user, "Report.pdf").status_code == 201


def test_multipart_upload_of_a_taken_name_is_refused_and_leaves_no_multipart(fm):
    user = fm.user("nm-mp")
    assert fm.post(user, "big.bin").status_code == 201
    r = fm.call(user, "POST", "/v1/uploads", json={"name": "big.bin", "size": THRESHOLD + 1,
                                                    "content_type": "application/octet-stream",
                                                    "sha256": sha256_hex(b"big")})
    assert_error(r, 409, "name_taken")
    assert fm.row_counts(user) == (1, 1, 0)


def test_upload_rename_written_through_answers_the_final_name(fm):
    user = fm.user("nm-through")
    folder = fm.folder(user)
    assert fm.post(user, "a.txt", folder=folder).status_code == 201
    r = fm.post(user, "a.txt", folder=folder, on_conflict="rename")
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "a (1).txt"
    m = fm.call(user, "POST", "/v1/uploads", json={"name": "a.txt", "size": THRESHOLD + 1, "folder": folder,
                                                    "content_type": "application/octet-stream",
                                                    "sha256": sha256_hex(b"m"), "on_conflict": "rename"})
    assert m.status_code == 201 and m.json()["method"] == "MULTIPART" and m.json()["name"] == "a (2).txt", m.text
    assert fm.names(user, folder) == ["a (1).txt", "a (2).txt", "a.txt"]


def test_upload_rename_written_behind_lands_with_a_free_name(fm):
    """Records written behind whose name is taken (by a live file, and by each other within one batch) all reach
    PostgreSQL, each with fm_free_name's name: the flush never fails on a name (before, the batch failed and the
    clashing records were set aside)."""
    user = fm.user("nm-behind")
    assert fm.post(user, "same.bin").status_code == 201  # a live file of that name, in PostgreSQL
    generation = int(fm.redis("GET", f"fm:tgen:{{{user.id}}}") or 0)
    with flushers_held(fm, user):  # the records wait in Redis, and then go in one batch
        answers = [fm.post(user, "same.bin", on_conflict="rename") for _ in range(30)]
        for a in answers:
            assert a.status_code == 201, a.text
            assert "name" not in a.json()  # not settled yet: the flush settles it
        assert fm.sql(f"SELECT count(*) FROM files WHERE owner_id = '{user.id}'") == "1"
    for a in answers:
        fm.wait_recorded(a.json()["file_id"])
    assert sorted(fm.names(user)) == sorted(["same.bin"] + [f"same ({i}).bin" for i in range(1, 31)])
    # the flush told the owner's listings (fm_tree_changed) that new files are there
    assert wait_for(lambda: int(fm.redis("GET", f"fm:tgen:{{{user.id}}}") or 0) > generation, timeout=5)
    assert fm.sql(f"SELECT count(*) FROM uploads WHERE owner_id = '{user.id}'") == "31"
    assert fm.redis("EXISTS", *[f"fm:rec:refused:{{{a.json()['upload_id']}}}" for a in answers]) == 0
    # what GET /v1/files/{id} shows is the settled name
    got = {fm.file(user, a.json()["file_id"]).json()["name"] for a in answers}
    assert got == {f"same ({i}).bin" for i in range(1, 31)}


def test_dedupe_hit_follows_on_conflict(fm):
    user = fm.user("nm-dedupe")
    data = random_bytes(400)
    fm.ready(user, "d.bin", data)
    assert_error(fm.post(user, "d.bin", data), 409, "name_taken")
    r = fm.post(user, "d.bin", data, on_conflict="rename")  # the index hit, written behind
    assert r.status_code == 200 and r.json()["deduplicated"] is True, r.text
    fm.wait_recorded(r.json()["file_id"])
    assert fm.row(r.json()["file_id"])["name"] == "d (1).bin"
    folder = fm.folder(user)
    assert fm.post(user, "d.bin", data, folder=folder).json()["name"] == "d.bin"  # PostgreSQL's dedupe
    assert_error(fm.post(user, "d.bin", data, folder=folder), 409, "name_taken")
    r = fm.post(user, "d.bin", data, folder=folder, on_conflict="rename")
    assert r.status_code == 200 and r.json()["deduplicated"] is True and r.json()["name"] == "d (1).bin", r.text


def test_upload_into_a_trashed_folder_is_not_found(fm):
    user = fm.user("nm-trashed")
    trashed = fm.folder(user, trashed=True)
    before = fm.row_counts(user)
    assert_error(fm.post(user, "x.bin", folder=trashed), 404, "folder_not_found")
    assert_error(fm.post(user, "x.bin", folder=trashed, on_conflict="rename"), 404, "folder_not_found")
    assert fm.row_counts(user) == before


@pytest.mark.parametrize("value", ["replace", "", "RENAME", 1, None, True, ["rename"]])
def test_upload_on_conflict_must_be_fail_or_rename(fm, value):
    user = fm.user("nm-bad")
    assert_error(fm.post(user, "x.bin", on_conflict=value), 422, "invalid_field")
    assert fm.row_counts(user) == (0, 0, 0)


# ---- PATCH /v1/files/{id}: rename and move ----------------------------------------------------------------------


def test_rename_and_move_change_the_row_and_the_answer(fm):
    user = fm.user("nm-patch")
    file_id, _ = fm.ready(user, "draft.txt")
    before = fm.row(file_id)
    r = fm.patch(user, file_id, {"name": "final.txt"})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "final.txt" and r.json()["id"] == file_id and r.json()["folder_id"] is None
    after = fm.row(file_id)
    assert after["name"] == "final.txt" and after["version"] == before["version"] + 1
    assert fm.sql(f"SELECT updated_at > '{before['updated_at']}'::timestamptz FROM files WHERE id = '{file_id}'") == "t"
    assert fm.file(user, file_id).json()["name"] == "final.txt"  # the cached row was dropped
    folder = fm.folder(user)
    r = fm.patch(user, file_id, {"folder_id": folder, "name": "moved.txt"})
    assert r.status_code == 200 and r.json()["folder_id"] == folder and r.json()["name"] == "moved.txt", r.text
    assert fm.names(user, folder) == ["moved.txt"] and fm.names(user) == []
    r = fm.patch(user, file_id, {"folder_id": None})  # back to the root
    assert r.status_code == 200 and r.json()["folder_id"] is None, r.text
    # the old name is free again; renaming to its own name is no conflict
    assert fm.patch(user, file_id, {"name": "moved.txt"}).status_code == 200
    assert fm.patch(user, file_id, {"name": "moved.txt"}, query="on_conflict=rename").json()["name"] == "moved.txt"
    # the tree generation moved (listing caches)
    assert int(fm.redis("GET", f"fm:tgen:{{{user.id}}}") or 0) >= 3
    # visibility still works alongside
    r = fm.patch(user, file_id, {"visibility": "public", "name": "shared.txt"})
    assert r.status_code == 200 and r.json()["visibility"] == "public" and r.json()["name"] == "shared.txt", r.text


def test_rename_to_a_taken_name(fm):
    user = fm.user("nm-taken")
    a, _ = fm.ready(user, "a.txt")
    fm.ready(user, "b.txt")
    fm.folder(user, "c.txt")
    for name in ("b.txt", "c.txt"):
        before = fm.row(a)
        assert_error(fm.patch(user, a, {"name": name}), 409, "name_taken")
        assert_error(fm.patch(user, a, {"name": name, "visibility": "public"}), 409, "name_taken")
        assert fm.row(a) == before  # nothing half-changed: not the visibility either
    r = fm.patch(user, a, {"name": "b.txt", "on_conflict": "rename"})
    assert r.status_code == 200 and r.json()["name"] == "b (1).txt", r.text
    r = fm.patch(user, a, {"name": "c.txt"}, query="on_conflict=rename")
    assert r.status_code == 200 and r.json()["name"] == "c (1).txt", r.text
    # a move into a folder holding the name
    folder = fm.folder(user)
    fm.ready(user, "c (1).txt", folder=folder)
    before = fm.row(a)
    assert_error(fm.patch(user, a, {"folder_id": folder}), 409, "name_taken")
    assert fm.row(a) == before
    r = fm.patch(user, a, {"folder_id": folder, "on_conflict": "rename"})  # numbered from its own name
    assert r.status_code == 200 and r.json()["name"] == "c (1) (1).txt" and r.json()["folder_id"] == folder, r.text


BAD_NAMES = [("slash", "a/b.txt"), ("backslash", "a\\b.txt"), ("newline", "a\nb"), ("tab", "a\tb"),
             ("escape", "a\u001b[31m"), ("DEL", "a\u007fb"), ("C1", "a\u0085b"), ("RLO", "evil\u202egnp.exe"),
             ("LRI", "a\u2066b"), ("256 bytes", "x" * 256), ("256 UTF-8 bytes", "é" * 128), ("dot", "."),
             ("dots", ".."), ("empty", "")]


@pytest.mark.parametrize("label,name", BAD_NAMES, ids=[b[0] for b in BAD_NAMES])
def test_bad_names_change_nothing(fm, label, name):
    user = fm.user("nm-badname")
    file_id, _ = fm.ready(user, "keep.txt")
    before = fm.row(file_id)
    assert_error(fm.patch(user, file_id, {"name": name, "visibility": "public"}), 422, "invalid_name")
    assert_error(fm.copy(user, file_id, {"name": name}), 422, "invalid_name")
    assert_error(fm.post(user, name), 422, "invalid_name" if name else "invalid_field")
    assert fm.row(file_id) == before
    assert fm.sql(f"SELECT count(*) FROM files WHERE owner_id = '{user.id}'") == "1"


def test_name_with_nul_is_refused(fm):
    user = fm.user("nm-nul")
    file_id, _ = fm.ready(user, "keep.txt")
    before = fm.row(file_id)
    for r in (fm.patch(user, file_id, {"name": "a\u0000b"}), fm.copy(user, file_id, {"name": "a\u0000b"})):
        assert r.status_code == 422 and r.json()["error"]["code"] in ("invalid_name", "invalid_field"), r.text
    assert fm.row(file_id) == before
    assert fm.sql(f"SELECT count(*) FROM files WHERE owner_id = '{user.id}'") == "1"


def test_bad_patch_input_changes_nothing(fm):
    user, other = fm.user("nm-badpatch"), fm.user("nm-other")
    file_id, _ = fm.ready(user, "keep.txt")
    theirs_folder = fm.folder(other)
    trashed = fm.folder(user, trashed=True)
    theirs_file, _ = fm.ready(other, "theirs.txt")
    before = fm.row(file_id)
    cases = [
        ({"folder_id": theirs_folder}, 404, "folder_not_found"),
        ({"folder_id": trashed}, 404, "folder_not_found"),
        ({"folder_id": str(uuid.uuid4())}, 404, "folder_not_found"),
        ({"folder_id": theirs_folder, "name": "new.txt", "visibility": "public"}, 404, "folder_not_found"),
        ({"folder_id": "../x"}, 422, "invalid_folder"),
        ({"folder_id": 5}, 422, "invalid_folder"),
        ({"name": 5}, 422, "invalid_field"),
        ({"name": None}, 422, "invalid_field"),
        ({"name": "x.txt", "on_conflict": "replace"}, 422, "invalid_field"),
        ({"name": "x.txt", "on_conflict": 1}, 422, "invalid_field"),
        ({"name": "x.txt", "owner_id": other.id}, 422, "invalid_field"),
        ({}, 422, "invalid_field"),
    ]
    for body, status, code in cases:
        assert_error(fm.patch(user, file_id, body), status, code)
        assert fm.row(file_id) == before, body
    assert_error(fm.patch(user, file_id, {"name": "x.txt"}, query="on_conflict=overwrite"), 422, "invalid_field")
    # someone else's file, a file in the trash: 404, unchanged
    theirs_before = fm.row(theirs_file)
    assert_error(fm.patch(user, theirs_file, {"name": "mine.txt"}), 404, "not_found")
    assert fm.row(theirs_file) == theirs_before
    assert fm.call(user, "DELETE", f"/v1/files/{file_id}").status_code in (200, 204)
    trashed_row = fm.row(file_id)
    assert_error(fm.patch(user, file_id, {"name": "back.txt"}), 404, "not_found")
    assert fm.row(file_id) == trashed_row


def test_two_clients_racing_a_rename_to_one_name(fm):
    """Two files renamed to one name at once: exactly one wins, the other is 409 and keeps its name."""
    user = fm.user("nm-race")
    for round_ in range(5):
        a, _ = fm.ready(user, f"a-{round_}.txt")
        b, _ = fm.ready(user, f"b-{round_}.txt")
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda f: fm.patch(user, f, {"name": f"won-{round_}.txt"}), [a, b]))
        codes = sorted(r.status_code for r in results)
        assert codes == [200, 409], [r.text for r in results]
        loser = [a, b][[r.status_code for r in results].index(409)]
        assert fm.row(loser)["name"] in (f"a-{round_}.txt", f"b-{round_}.txt")
        assert fm.sql(f"SELECT count(*) FROM files WHERE owner_id = '{user.id}' AND name = 'won-{round_}.txt'") == "1"


# ---- POST /v1/files/{id}/copy -----------------------------------------------------------------------------------


def test_copy_shares_the_blob_and_shows_its_metadata(fm):
    user = fm.user("nm-copy")
    file_id, data = fm.ready(user, "photo.jpg")
    blob = fm.row(file_id)["blob"]
    fm.sql(f"UPDATE blobs SET metadata = '{{\"pages\": 3}}' WHERE sha256 = decode('{blob}', 'hex')")
    fm.redis("DEL", f"fm:file:{{{file_id}}}")
    blobs_before = fm.sql("SELECT count(*) FROM blobs")
    r = fm.copy(user, file_id, {})
    assert_error(r, 409, "name_taken")  # the same folder, the same name, on_conflict fail
    r = fm.copy(user, file_id, {}, query="on_conflict=rename")
    assert r.status_code == 201, r.text
    copy = r.json()
    assert copy["id"] != file_id and copy["name"] == "photo (1).jpg" and copy["status"] == "READY", copy
    assert copy["size"] == len(data) and copy["sha256"] == sha256_hex(data)
    assert copy["metadata"].get("page_count") == 3, copy
    assert fm.row(copy["id"])["blob"] == blob
    assert fm.sql("SELECT count(*) FROM blobs") == blobs_before  # no new blob, no bytes moved
    assert fm.file(user, copy["id"]).json()["metadata"].get("page_count") == 3
    # into a folder under a new name
    folder = fm.folder(user)
    r = fm.copy(user, file_id, {"folder_id": folder, "name": "copy.jpg"})
    assert r.status_code == 201 and r.json()["folder_id"] == folder and r.json()["name"] == "copy.jpg", r.text
    # the copy downloads like the source: same bytes (the same blob)
    assert fm.sql(f"SELECT count(*) FROM files WHERE owner_id = '{user.id}' AND blob_sha256 = decode('{blob}', 'hex')"
                  f" AND status = 'READY'") == "3"


def test_copy_refusals_create_nothing(fm):
    user, other = fm.user("nm-copybad"), fm.user("nm-copyother")
    ready, _ = fm.ready(user, "r.txt")
    pending = fm.post(user, "p.txt").json()["file_id"]
    theirs, _ = fm.ready(other, "t.txt")
    trashed = fm.folder(user, trashed=True)
    count = lambda: fm.sql(f"SELECT count(*) FROM files WHERE owner_id = '{user.id}'")
    before = count()
    assert_error(fm.copy(user, pending, {"name": "p2.txt"}), 409, "not_ready")
    assert_error(fm.copy(user, theirs, {"name": "t2.txt"}), 404, "not_found")
    assert_error(fm.copy(user, ready, {"folder_id": trashed}), 404, "folder_not_found")
    assert_error(fm.copy(user, ready, {"folder_id": fm.folder(other)}), 404, "folder_not_found")
    assert_error(fm.copy(user, ready, {"folder_id": "x"}), 422, "invalid_folder")
    assert_error(fm.copy(user, ready, {"name": "n.txt", "on_conflict": "maybe"}), 422, "invalid_field")
    assert_error(fm.copy(user, ready, {"size": 1}), 422, "invalid_field")
    assert_error(fm.copy(user, str(uuid.uuid4()), {}), 404, "not_found")
    fm.call(user, "DELETE", f"/v1/files/{ready}")
    assert_error(fm.copy(user, ready, {"name": "again.txt"}), 404, "not_found")
    assert count() == before
