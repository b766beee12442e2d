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
    with flushers_held(fm, user):  # the records wait in Redis, and then go in one batch
        answers = [fm.post(user, "same.bin", on_conflict="rename") for _ in range(5)]
        for a in answers:
            assert a.status_code == 201, a.text
            assert "name" not in a.json()  # not settled yet: the flush settles it
        assert fm.sql(f"SELECT count(*) FROM files WHERE owner_id = '{user.id}'") == "1"
    for a in answers:
        fm.wait_recorded(a.json()["file_id"])
    assert fm.names(user) == ["same (1).bin", "same (2).bin", "same (3).bin", "same (4).bin", "same (5).bin",
                              "same.bin"]
    assert fm.sql(f"SELECT count(*) FROM uploads WHERE owner_id = '{user.id}'") == "6"
    assert fm.redis("EXISTS", *[f"fm:rec:refused:{{{a.json()['upload_id']}}}" for a in answers]) == 0
    # what GET /v1/files/{id} shows is the settled name
    got = {fm.file(user, a.json()["file_id"]).json()["name"] for a in answers}
    assert got == {f"same ({i}).bin" for i in range(1, 6)}


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
