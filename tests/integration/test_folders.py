"""Folders (issue 11 item 1; DESIGN.md §5b; docs/files.md "Folders"; docs/decisions.md "Folders (issue 11 item 1)")
against the real stack: POST /v1/folders, GET/PATCH/DELETE /v1/folders/{id}, POST /v1/folders/{id}/restore.

One dedicated fm-control on its own Redis database (FOLDERS_REDIS_DB) with small bounds (FM_FOLDER_*) so the
refusals are cheap to reach, and one fm-edge on the same database that verifies its download URLs (revocation marks).
Files are uploaded through the API into folders and made READY as the worker would (mark_verified).

    FM_BUILD_DIR=build /usr/bin/python3 -m pytest -q tests/integration/test_folders.py
"""
import json
import threading
import uuid

import pytest
import requests

from helpers_fm import assert_error, redis_cmd, redis_url
from helpers_uploads import dedicated, random_bytes, sha256_hex
from test_download import DownloadFm, KeyPair

FOLDERS_REDIS_DB = 56  # 47+ is free; 56 is no other module's
KEY_ID = "KFOLDERS1"
ENTRIES_MAX, MOVE_MAX, TRASH_MAX = 30, 5, 20


class FoldersFm(DownloadFm):
    def redis(self, *args):
        return redis_cmd(self.stack, FOLDERS_REDIS_DB, *args)

    def mkdir(self, user, name, parent=None, expect=201, **kw):
        body = {"name": name}
        if parent is not None:
            body["parent_id"] = parent
        r = self.call(user, "POST", "/v1/folders", json=body, **kw)
        assert r.status_code == expect, r.text
        return r.json() if expect == 201 else r

    def get(self, user, folder_id):
        return self.call(user, "GET", f"/v1/folders/{folder_id}")

    def patch(self, user, folder_id, body, query=""):
        return self.call(user, "PATCH", f"/v1/folders/{folder_id}{query}", json=body)

    def rmdir(self, user, folder_id):
        return self.call(user, "DELETE", f"/v1/folders/{folder_id}")

    def restore(self, user, folder_id):
        return self.call(user, "POST", f"/v1/folders/{folder_id}/restore")

    def folder_rows(self, user):
        """Every folder row of the user: {id: (name, parent_id, ancestors, deleted, trashed_with, version)}."""
        out = self.sql(f"SELECT coalesce(json_object_agg(id, json_build_array(name, parent_id, ancestors,"
                       f" deleted_at IS NOT NULL, trashed_with, version)), '{{}}') FROM folders"
                       f" WHERE owner_id = '{user.id}'")
        return {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) for k, v in json.loads(out).items()}

    def file_trash(self, file_id):
        return self.sql_row(f"SELECT row_to_json(f) FROM (SELECT deleted_at IS NOT NULL AS deleted, trashed_with,"
                            f" folder_id FROM files WHERE id = '{file_id}') f")

    def file_in(self, user, folder_id, name=None, ready=False):
        data = random_bytes(1500)
        a, _ = self.upload(user, data, folder=folder_id, name=name or f"f-{uuid.uuid4().hex[:8]}.bin")
        if ready:
            self.mark_verified(a["file_id"], data)
        return a["file_id"], data


def assert_tree_consistent(rows):
    """Every folder's ancestors are its parent's ancestors plus the parent, and no folder is its own ancestor."""
    for fid, (_name, parent, ancestors, *_rest) in rows.items():
        assert fid not in ancestors, (fid, ancestors)
        if parent is None:
            assert ancestors == (), (fid, ancestors)
        else:
            assert ancestors == rows[parent][2] + (parent,), (fid, parent, ancestors, rows[parent][2])


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory):
    return KeyPair(KEY_ID, tmp_path_factory.mktemp("cf-keys-folders"))


@pytest.fixture(scope="module")
def edge(edges, stack, key_pair):
    return edges.start(FM_EDGE_CF_PUBLIC_KEYS=f"{key_pair.id}={key_pair.public_path}",
                       FM_REDIS_URL=redis_url(stack, FOLDERS_REDIS_DB))


@pytest.fixture(scope="module")
def fm(controls, stack, key_pair, edge):
    with dedicated(controls, stack, FoldersFm, FM_REDIS_URL=redis_url(stack, FOLDERS_REDIS_DB),
                   FM_CF_KEYS=f"{key_pair.id}={key_pair.private_path}", FM_EDGE_PUBLIC_BASE=edge.url,
                   FM_FOLDER_ENTRIES_MAX=ENTRIES_MAX, FM_FOLDER_MOVE_MAX=MOVE_MAX,
                   FM_FOLDER_TRASH_MAX=TRASH_MAX) as f:
        yield f


@pytest.fixture
def alice(fm):
    return fm.user("fold-a")


@pytest.fixture
def bob(fm):
    return fm.user("fold-b")


# ---- create, get, path ----------------------------------------------------------------------------------------------

def test_create_get_and_path(fm, alice):
    gen = int(fm.redis("GET", f"fm:tgen:{{{alice.id}}}") or 0)
    a = fm.mkdir(alice, "Photos")
    assert a["name"] == "Photos" and a["parent_id"] is None and a["path"] == [], a
    assert a["created_at"].endswith("Z") and a["updated_at"].endswith("Z"), a
    b = fm.mkdir(alice, "2026", a["id"])
    c = fm.mkdir(alice, "Summer", b["id"])
    assert c["parent_id"] == b["id"]
    assert c["path"] == [{"id": a["id"], "name": "Photos"}, {"id": b["id"], "name": "2026"}], c
    got = fm.get(alice, c["id"])
    assert got.status_code == 200 and got.json() == c, got.text
    assert fm.get(alice, c["id"].upper()).json() == c  # ids in any case
    assert int(fm.redis("GET", f"fm:tgen:{{{alice.id}}}")) >= gen + 3  # each change dropped the owner's listings
    rows = fm.folder_rows(alice)
    assert rows[c["id"]][2] == (a["id"], b["id"])
    assert_tree_consistent(rows)


def test_name_taken_among_folders_and_files(fm, alice):
    a = fm.mkdir(alice, "Docs")
    before = fm.folder_rows(alice)
    assert_error(fm.mkdir(alice, "Docs", expect=409), 409, "name_taken")
    assert fm.mkdir(alice, "docs")["name"] == "docs"  # names are exact bytes: case matters
    # a FILE of the same name in the same folder holds the name too
    fm.file_in(alice, a["id"], name="report.pdf")
    assert_error(fm.mkdir(alice, "report.pdf", a["id"], expect=409), 409, "name_taken")
    assert len(fm.folder_rows(alice)) == len(before) + 1  # only "docs": nothing half-made by the refusals
    r = fm.call(alice, "POST", "/v1/folders?on_conflict=rename", json={"name": "report.pdf", "parent_id": a["id"]})
    assert r.status_code == 201 and r.json()["name"] == "report (1).pdf", r.text
    r = fm.call(alice, "POST", "/v1/folders", json={"name": "Docs", "on_conflict": "rename"})
    assert r.status_code == 201 and r.json()["name"] == "Docs (1)", r.text
    assert_error(fm.call(alice, "POST", "/v1/folders?on_conflict=merge", json={"name": "Docs"}), 422,
                 "invalid_on_conflict")
    # the same name under another parent is fine
    assert fm.mkdir(alice, "Docs", a["id"])["name"] == "Docs"


@pytest.mark.parametrize("name,code", [
    ("a/b", "invalid_name"), ("/", "invalid_name"), ("back\\slash", "invalid_name"), ("", "invalid_name"),
    ("..", "invalid_name"), ("bell\u0007", "invalid_name"), ("line\nfeed", "invalid_name"),
    ("c1\u0085", "invalid_name"), ("evil\u202egpj.exe", "invalid_name"), ("iso\u2066x", "invalid_name"),
    ("x" * 256, "invalid_name"), ("é" * 128, "invalid_name"), ("nul\u0000byte", "invalid_field"), (5, "invalid_name"),
])
def test_bad_names_are_refused(fm, alice, name, code):
    target = fm.mkdir(alice, "target")
    before = fm.folder_rows(alice)
    assert_error(fm.call(alice, "POST", "/v1/folders", json={"name": name}), 422, code)
    assert_error(fm.patch(alice, target["id"], {"name": name}), 422, code)
    assert fm.folder_rows(alice) == before


def test_longest_name_is_accepted(fm, alice):
    assert fm.mkdir(alice, "x" * 255)["name"] == "x" * 255
    assert fm.mkdir(alice, "é" * 127 + "x")["name"] == "é" * 127 + "x"  # 255 bytes


def test_create_under_missing_foreign_or_trashed_parent_is_404(fm, alice, bob):
    theirs = fm.mkdir(bob, "bob's")
    trashed = fm.mkdir(alice, "gone")
    assert fm.rmdir(alice, trashed["id"]).status_code == 204
    before = fm.folder_rows(alice)
    for parent in (theirs["id"], trashed["id"], str(uuid.uuid4())):
        assert_error(fm.mkdir(alice, "child", parent, expect=404), 404, "folder_not_found")
    assert_error(fm.call(alice, "POST", "/v1/folders", json={"name": "x", "parent_id": "nope"}), 422,
                 "invalid_field")
    assert fm.folder_rows(alice) == before
    assert fm.sql(f"SELECT count(*) FROM folders WHERE parent_id = '{theirs['id']}'") == "0"


def test_others_folders_are_404_everywhere(fm, alice, bob):
    theirs = fm.mkdir(bob, "private")
    mine = fm.mkdir(alice, "mine")
    assert_error(fm.get(alice, theirs["id"]), 404, "folder_not_found")
    assert_error(fm.patch(alice, theirs["id"], {"name": "stolen"}), 404, "folder_not_found")
    assert_error(fm.patch(alice, mine["id"], {"parent_id": theirs["id"]}), 404, "folder_not_found")
    assert_error(fm.rmdir(alice, theirs["id"]), 404, "folder_not_found")
    assert_error(fm.restore(alice, theirs["id"]), 404, "folder_not_found")
    assert_error(fm.get(alice, "not-a-uuid"), 404, "folder_not_found")
    assert fm.get(bob, theirs["id"]).json() == theirs  # untouched
    assert fm.get(alice, mine["id"]).json()["parent_id"] is None


# ---- rename and move ------------------------------------------------------------------------------------------------

def test_rename_and_move_rewrite_the_subtree(fm, alice):
    a, b = fm.mkdir(alice, "A"), fm.mkdir(alice, "B")
    c = fm.mkdir(alice, "C", a["id"])
    d = fm.mkdir(alice, "D", c["id"])
    e = fm.mkdir(alice, "E", d["id"])
    version = fm.folder_rows(alice)[c["id"]][5]
    r = fm.patch(alice, c["id"], {"name": "C2"})
    assert r.status_code == 200 and r.json()["name"] == "C2" and r.json()["parent_id"] == a["id"], r.text
    r = fm.patch(alice, c["id"], {"parent_id": b["id"]})
    assert r.status_code == 200, r.text
    assert r.json()["path"] == [{"id": b["id"], "name": "B"}] and r.json()["name"] == "C2"
    assert fm.get(alice, e["id"]).json()["path"] == [{"id": b["id"], "name": "B"}, {"id": c["id"], "name": "C2"},
                                                     {"id": d["id"], "name": "D"}]
    rows = fm.folder_rows(alice)
    assert rows[c["id"]][5] == version + 2
    assert_tree_consistent(rows)
    # to the root, renamed in the same call
    r = fm.patch(alice, c["id"], {"parent_id": None, "name": "top"})
    assert r.status_code == 200 and r.json()["parent_id"] is None and r.json()["path"] == [], r.text
    assert fm.get(alice, e["id"]).json()["path"][0] == {"id": c["id"], "name": "top"}
    assert_tree_consistent(fm.folder_rows(alice))


def test_move_and_rename_refuse_a_taken_name(fm, alice):
    a = fm.mkdir(alice, "A")
    fm.mkdir(alice, "same", a["id"])
    x = fm.mkdir(alice, "same")
    y = fm.mkdir(alice, "y")
    fm.file_in(alice, a["id"], name="file.txt")
    before = fm.folder_rows(alice)
    assert_error(fm.patch(alice, x["id"], {"parent_id": a["id"]}), 409, "name_taken")
    assert_error(fm.patch(alice, y["id"], {"name": "same"}), 409, "name_taken")
    assert_error(fm.patch(alice, y["id"], {"name": "file.txt", "parent_id": a["id"]}), 409, "name_taken")
    assert fm.folder_rows(alice) == before
    r = fm.patch(alice, x["id"], {"parent_id": a["id"]}, "?on_conflict=rename")
    assert r.status_code == 200 and r.json()["name"] == "same (1)", r.text
    r = fm.patch(alice, y["id"], {"name": "file.txt", "parent_id": a["id"], "on_conflict": "rename"})
    assert r.status_code == 200 and r.json()["name"] == "file (1).txt", r.text


def test_move_into_its_own_subtree_is_a_cycle(fm, alice):
    a = fm.mkdir(alice, "A")
    child = fm.mkdir(alice, "child", a["id"])
    grandchild = fm.mkdir(alice, "grandchild", child["id"])
    before = fm.folder_rows(alice)
    for target in (a, child, grandchild):
        assert_error(fm.patch(alice, a["id"], {"parent_id": target["id"]}), 409, "folder_cycle")
    assert_error(fm.patch(alice, child["id"], {"parent_id": grandchild["id"], "name": "x"}), 409, "folder_cycle")
    assert fm.folder_rows(alice) == before


def test_move_into_a_trashed_folder_is_404(fm, alice):
    a, b = fm.mkdir(alice, "A"), fm.mkdir(alice, "B")
    inner = fm.mkdir(alice, "inner", b["id"])
    assert fm.rmdir(alice, b["id"]).status_code == 204
    before = fm.folder_rows(alice)
    for target in (b, inner):
        assert_error(fm.patch(alice, a["id"], {"parent_id": target["id"]}), 404, "folder_not_found")
    assert_error(fm.patch(alice, inner["id"], {"name": "z"}), 404, "folder_not_found")  # trashed: not patchable
    assert fm.folder_rows(alice) == before


def test_patch_body_rules(fm, alice):
    a = fm.mkdir(alice, "A")
    assert_error(fm.patch(alice, a["id"], {}), 422, "invalid_field")
    assert_error(fm.patch(alice, a["id"], {"color": "red"}), 422, "invalid_field")
    assert_error(fm.patch(alice, a["id"], {"parent_id": 7}), 422, "invalid_field")
    r = fm.patch(alice, a["id"], {"name": "A"})  # no change: the folder as it is
    assert r.status_code == 200 and r.json()["name"] == "A"


# ---- bounds ---------------------------------------------------------------------------------------------------------

def test_subtree_too_large_to_move_or_trash(fm, alice):
    big, dest = fm.mkdir(alice, "big"), fm.mkdir(alice, "dest")
    parent = big["id"]
    for i in range(MOVE_MAX + 1):  # MOVE_MAX + 1 descendant folders
        parent = fm.mkdir(alice, f"level{i}", parent if i % 2 else big["id"])["id"]
    before = fm.folder_rows(alice)
    assert_error(fm.patch(alice, big["id"], {"parent_id": dest["id"]}), 422, "subtree_too_large")
    assert fm.folder_rows(alice) == before
    # renaming is no move: allowed whatever the subtree
    assert fm.patch(alice, big["id"], {"name": "big2"}).status_code == 200
    # the trash bound counts folders and live files: TRASH_MAX - (MOVE_MAX + 2) files more tip it over
    for _ in range(TRASH_MAX - (MOVE_MAX + 2) + 1):
        fm.file_in(alice, big["id"])
    before = fm.folder_rows(alice)
    assert_error(fm.rmdir(alice, big["id"]), 422, "subtree_too_large")
    assert fm.folder_rows(alice) == before
    assert fm.sql(f"SELECT count(*) FROM files WHERE folder_id = '{big['id']}' AND deleted_at IS NOT NULL") == "0"


def test_folder_too_deep(fm, alice):
    parent, chain = None, []
    for depth in range(32):  # depths 0..31: 32 folders, the deepest with 31 above it
        f = fm.mkdir(alice, f"d{depth}", parent)
        chain.append(f)
        parent = f["id"]
    assert len(fm.get(alice, parent).json()["path"]) == 31
    before = fm.folder_rows(alice)
    assert_error(fm.mkdir(alice, "too-deep", parent, expect=422), 422, "folder_too_deep")
    # a folder with one child moved under d30: its child would be at depth 32
    top = fm.mkdir(alice, "top")
    fm.mkdir(alice, "kid", top["id"])
    assert_error(fm.patch(alice, top["id"], {"parent_id": chain[30]["id"]}), 422, "folder_too_deep")
    assert fm.patch(alice, top["id"], {"parent_id": chain[29]["id"]}).status_code == 200  # deepest at 31
    rows = fm.folder_rows(alice)
    assert {k: v for k, v in rows.items() if k in before} == before
    assert_tree_consistent(rows)


def test_folder_full(fm, alice):
    box = fm.mkdir(alice, "box")
    fm.file_in(alice, box["id"])
    for i in range(ENTRIES_MAX - 1):
        fm.mkdir(alice, f"e{i}", box["id"])
    outside = fm.mkdir(alice, "outside")
    before = fm.folder_rows(alice)
    assert_error(fm.mkdir(alice, "one-more", box["id"], expect=422), 422, "folder_full")
    assert_error(fm.patch(alice, outside["id"], {"parent_id": box["id"]}), 422, "folder_full")
    assert fm.folder_rows(alice) == before


def test_a_full_folder_takes_no_file(fm, alice):
    """The entries bound holds for files too: an upload (written through), a dedupe, a copy and a move into a full
    folder are 422 folder_full, and nothing is created or moved (schema 018 fm_folder_room)."""
    box = fm.mkdir(alice, "file-box")
    source, data = fm.file_in(alice, None, ready=True)  # at the root
    loose, _ = fm.file_in(alice, None)
    for i in range(ENTRIES_MAX):
        fm.mkdir(alice, f"x{i}", box["id"])
    files_before = fm.sql(f"SELECT count(*) FROM files WHERE owner_id = '{alice.id}'")
    body = {"name": "late.bin", "size": 10, "content_type": "application/octet-stream",
            "sha256": sha256_hex(b"0123456789"), "folder": box["id"], "on_conflict": "fail"}
    assert_error(fm.call(alice, "POST", "/v1/uploads", json=body), 422, "folder_full")
    body.update({"size": len(data), "sha256": sha256_hex(data)})  # the owner holds these bytes: a dedupe
    assert_error(fm.call(alice, "POST", "/v1/uploads", json=body), 422, "folder_full")
    assert_error(fm.call(alice, "POST", f"/v1/files/{source}/copy", json={"folder_id": box["id"]}), 422,
                 "folder_full")
    assert_error(fm.call(alice, "PATCH", f"/v1/files/{loose}", json={"folder_id": box["id"]}), 422, "folder_full")
    assert fm.sql(f"SELECT count(*) FROM files WHERE owner_id = '{alice.id}'") == files_before
    assert fm.sql(f"SELECT folder_id IS NULL FROM files WHERE id = '{loose}'") == "t"
    # a rename in place is no new entry
    r = fm.call(alice, "PATCH", f"/v1/files/{loose}", json={"name": "renamed-in-place.bin"})
    assert r.status_code == 200, r.text


# ---- trash and restore ----------------------------------------------------------------------------------------------

def test_trash_takes_the_subtree_and_restore_brings_back_exactly_it(fm, alice, edge):
    a = fm.mkdir(alice, "A")
    b = fm.mkdir(alice, "B", a["id"])
    c = fm.mkdir(alice, "C", b["id"])
    f_top, _ = fm.file_in(alice, a["id"], ready=True)
    f_deep, data = fm.file_in(alice, c["id"], ready=True)
    f_alone, _ = fm.file_in(alice, b["id"], ready=True)
    sha = sha256_hex(data)
    url = fm.download(alice, f_deep).json()["url"]
    assert requests.get(url, timeout=60).content == data
    assert fm.call(alice, "DELETE", f"/v1/files/{f_alone}").status_code == 204  # trashed on its own first
    assert fm.redis("HGET", f"fm:dedupe:{{{alice.id}}}", sha) == str(len(data))

    r = fm.rmdir(alice, a["id"])
    assert r.status_code == 204 and r.content == b"", r.text
    for folder in (a, b, c):
        assert_error(fm.get(alice, folder["id"]), 404, "folder_not_found")
    for file_id in (f_top, f_deep):
        assert_error(fm.file(alice, file_id), 404, "not_found")
        state = fm.file_trash(file_id)
        assert state["deleted"] and state["trashed_with"] == a["id"], state
    assert fm.file_trash(f_alone)["trashed_with"] is None
    rows = fm.folder_rows(alice)
    assert all(rows[x["id"]][3] and rows[x["id"]][4] == a["id"] for x in (a, b, c)), rows
    # the signed URL made before is refused by the edge at once; the owner's dedupe index forgot the hash
    assert_error(requests.get(url, timeout=60), 410, "revoked")
    assert fm.redis("HGET", f"fm:dedupe:{{{alice.id}}}", sha) is None
    jobs = fm.sql(f"SELECT count(*) FROM jobs WHERE type = 'purge_edge' AND payload->>'sha256' = '{sha}'")
    assert jobs == "1"
    assert_error(fm.rmdir(alice, a["id"]), 404, "folder_not_found")  # already in the trash
    assert_error(fm.patch(alice, b["id"], {"name": "x"}), 404, "folder_not_found")

    r = fm.restore(alice, a["id"])
    assert r.status_code == 200, r.text
    assert r.json() == fm.get(alice, a["id"]).json() and r.json()["name"] == "A"
    assert fm.get(alice, c["id"]).json()["path"] == [{"id": a["id"], "name": "A"}, {"id": b["id"], "name": "B"}]
    for file_id in (f_top, f_deep):
        assert fm.file(alice, file_id).status_code == 200
        assert fm.file_trash(file_id)["trashed_with"] is None
    assert fm.file_trash(f_alone) == {"deleted": True, "trashed_with": None, "folder_id": b["id"]}  # stays
    assert fm.redis("EXISTS", f"fm:revoked:{{{f_deep}}}") == 0
    assert fm.redis("HGET", f"fm:dedupe:{{{alice.id}}}", sha) == str(len(data))
    fresh = fm.download(alice, f_deep).json()["url"]
    assert requests.get(fresh, timeout=60).content == data
    assert_error(fm.restore(alice, a["id"]), 409, "not_deleted")
    assert_tree_consistent(fm.folder_rows(alice))


def test_repeated_delete_repairs_redis(fm, alice):
    a = fm.mkdir(alice, "A")
    f, _ = fm.file_in(alice, a["id"], ready=True)
    assert fm.rmdir(alice, a["id"]).status_code == 204
    fm.redis("DEL", f"fm:revoked:{{{f}}}")  # as if Redis had failed after the commit
    assert_error(fm.rmdir(alice, a["id"]), 404, "folder_not_found")
    assert fm.redis("EXISTS", f"fm:revoked:{{{f}}}") == 1


def test_restore_renames_when_the_name_was_taken_and_falls_back_to_the_root(fm, alice):
    a = fm.mkdir(alice, "Work")
    assert fm.rmdir(alice, a["id"]).status_code == 204
    fm.mkdir(alice, "Work")
    r = fm.restore(alice, a["id"])
    assert r.status_code == 200 and r.json()["name"] == "Work (1)", r.text
    # a folder trashed on its own whose parent went to the trash later comes back at the root, with its subtree
    p = fm.mkdir(alice, "P")
    d = fm.mkdir(alice, "D", p["id"])
    inner = fm.mkdir(alice, "inner", d["id"])
    assert fm.rmdir(alice, d["id"]).status_code == 204
    assert fm.rmdir(alice, p["id"]).status_code == 204
    assert_error(fm.restore(alice, inner["id"]), 404, "folder_not_found")  # trashed with D: restore D
    r = fm.restore(alice, d["id"])
    assert r.status_code == 200 and r.json()["parent_id"] is None and r.json()["path"] == [], r.text
    assert fm.get(alice, inner["id"]).json()["path"] == [{"id": d["id"], "name": "D"}]
    assert_error(fm.get(alice, p["id"]), 404, "folder_not_found")
    assert_tree_consistent(fm.folder_rows(alice))


def test_restore_past_retention_is_refused(fm, alice):
    a = fm.mkdir(alice, "old")
    assert fm.rmdir(alice, a["id"]).status_code == 204
    fm.sql(f"UPDATE folders SET deleted_at = now() - interval '31 days' WHERE id = '{a['id']}'")
    assert_error(fm.restore(alice, a["id"]), 409, "expired")
    assert fm.folder_rows(alice)[a["id"]][3]  # still in the trash


# ---- races ----------------------------------------------------------------------------------------------------------

def race(*calls):
    """Runs the calls at once (each in its own thread, released together); returns their responses in order."""
    out = [None] * len(calls)
    gate = threading.Barrier(len(calls))

    def run(i, fn):
        gate.wait()
        out[i] = fn()

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_racing_rename_and_move_lose_no_update(fm, alice):
    for round_ in range(15):
        f = fm.mkdir(alice, f"racer{round_}")
        dest = fm.mkdir(alice, f"dest{round_}")
        r1, r2 = race(lambda: fm.patch(alice, f["id"], {"name": f"renamed{round_}"}),
                      lambda: fm.patch(alice, f["id"], {"parent_id": dest["id"]}))
        assert r1.status_code == 200 and r2.status_code == 200, (r1.text, r2.text)
        got = fm.get(alice, f["id"]).json()
        assert got["name"] == f"renamed{round_}" and got["parent_id"] == dest["id"], got
        assert fm.folder_rows(alice)[f["id"]][5] == 3  # two updates, none lost
    assert_tree_consistent(fm.folder_rows(alice))


def test_crossing_moves_never_make_a_cycle(fm, alice):
    seen = set()
    for round_ in range(30):
        a = fm.mkdir(alice, f"A{round_}")
        b = fm.mkdir(alice, f"B{round_}")
        b_child = fm.mkdir(alice, "kid", b["id"])
        # A into B's child while B into A: one of them must be refused
        r1, r2 = race(lambda: fm.patch(alice, a["id"], {"parent_id": b_child["id"]}),
                      lambda: fm.patch(alice, b["id"], {"parent_id": a["id"]}))
        outcome = (r1.status_code, r2.status_code)
        assert outcome in ((200, 409), (409, 200)), (r1.text, r2.text)
        assert_error(r1 if outcome[0] == 409 else r2, 409, "folder_cycle")
        seen.add(outcome)
        assert_tree_consistent(fm.folder_rows(alice))
        if len(seen) == 2 and round_ >= 10:
            break
    assert seen == {(200, 409), (409, 200)}, seen


def test_creates_racing_a_move_of_an_ancestor_keep_paths_right(fm, alice):
    """A folder created under a folder whose ancestor is moved at that moment: its path must follow the move (the
    create holds its parent's chain, so the move's rewrite sees the new row or the create sees the moved chain)."""
    left, right = fm.mkdir(alice, "left"), fm.mkdir(alice, "right")
    for round_ in range(20):
        # a fresh subtree each round: MOVE_MAX bounds what one move may take
        mover = fm.mkdir(alice, f"mover{round_}", left["id"])
        deep = fm.mkdir(alice, "deep", fm.mkdir(alice, "mid", mover["id"])["id"])
        target = right
        r1, r2 = race(lambda: fm.patch(alice, mover["id"], {"parent_id": target["id"]}),
                      lambda: fm.call(alice, "POST", "/v1/folders", json={"name": f"new{round_}",
                                                                          "parent_id": deep["id"]}))
        assert r1.status_code == 200 and r2.status_code == 201, (r1.text, r2.text)
        assert_tree_consistent(fm.folder_rows(alice))
        assert fm.get(alice, r2.json()["id"]).json()["path"][0]["id"] == target["id"]


def test_creates_racing_a_trash_of_an_ancestor_leave_no_live_orphan(fm, alice):
    """A folder created under a subtree while the subtree goes to the trash: either the create is refused (404) or
    the new folder went to the trash with the rest; never a live folder under a trashed one."""
    seen = set()
    for round_ in range(20):
        top = fm.mkdir(alice, f"top{round_}")
        mid = fm.mkdir(alice, "mid", top["id"])
        r1, r2 = race(lambda: fm.rmdir(alice, top["id"]),
                      lambda: fm.call(alice, "POST", "/v1/folders", json={"name": "late", "parent_id": mid["id"]}))
        assert r1.status_code == 204, r1.text
        assert r2.status_code in (201, 404), r2.text
        seen.add(r2.status_code)
        if r2.status_code == 201:
            row = fm.folder_rows(alice)[r2.json()["id"]]
            assert row[3] and row[4] == top["id"], row  # trashed with the subtree
        assert fm.sql(f"SELECT count(*) FROM folders c JOIN folders p ON p.id = c.parent_id"
                      f" WHERE c.owner_id = '{alice.id}' AND c.deleted_at IS NULL AND p.deleted_at IS NOT NULL") == "0"
    assert seen, seen


def test_trashed_descendants_count_in_a_moves_depth(fm, alice):
    """A subtree in the trash stays in the tree: a move that would put it past the depth bound is refused, so its
    restore under its parent can never pass the bound (schema 012's CHECK would make it a 500)."""
    parent = fm.mkdir(alice, "parent")
    f = fm.mkdir(alice, "f", parent["id"])
    kid = fm.mkdir(alice, "kid", f["id"])
    assert fm.rmdir(alice, f["id"]).status_code == 204
    chain = None
    for depth in range(30):
        chain = fm.mkdir(alice, f"c{depth}", chain and chain["id"])
    # parent at depth 30 would put f at 31 and kid at 32
    assert_error(fm.patch(alice, parent["id"], {"parent_id": chain["id"]}), 422, "folder_too_deep")
    assert fm.patch(alice, parent["id"], {"parent_id": chain["path"][-1]["id"]}).status_code == 200
    r = fm.restore(alice, f["id"])
    assert r.status_code == 200 and r.json()["parent_id"] == parent["id"], r.text
    assert len(fm.get(alice, kid["id"]).json()["path"]) == 31
    assert_tree_consistent(fm.folder_rows(alice))


def test_restore_clears_the_marks_of_files_without_a_blob(fm, alice):
    """A file not verified yet (no blob) goes to the trash with its folder and gets a revocation mark like any other;
    the restore must drop it (and the cached row) too, not only those of files with a blob."""
    a = fm.mkdir(alice, "A")
    pending, _ = fm.file_in(alice, a["id"])  # UPLOADED, no blob
    ready, data = fm.file_in(alice, a["id"], ready=True)
    assert fm.file_row(pending)["blob"] is None
    assert fm.rmdir(alice, a["id"]).status_code == 204
    assert fm.redis("EXISTS", f"fm:revoked:{{{pending}}}") == 1 and fm.redis("EXISTS", f"fm:revoked:{{{ready}}}") == 1
    assert fm.restore(alice, a["id"]).status_code == 200
    assert fm.redis("EXISTS", f"fm:revoked:{{{pending}}}") == 0 and fm.redis("EXISTS", f"fm:revoked:{{{ready}}}") == 0
    assert fm.file(alice, pending).status_code == 200
    assert fm.redis("HGET", f"fm:dedupe:{{{alice.id}}}", sha256_hex(data)) == str(len(data))
