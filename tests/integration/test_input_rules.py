"""Input rules that hold on every route (issue 10 #12 and #13):

- a JSON body with a member name twice in one object, at any depth, is refused with 422 `duplicate_key` before any
  route reads it (cJSON's lookup took the first copy, PostgreSQL's jsonb the last: one body meant two things);
  S3 event messages, parsed apart from the body reader, refuse it too (400 `invalid_event`);
- a file name must be well-formed UTF-8 without control characters (C0, DEL, C1 such as U+0085, U+2028/2029) and
  without bidirectional controls (U+202A..U+202E, U+2066..U+2069, U+200E/F, U+061C): 422 `invalid_name`.
  "a\\u202Egpj.svg" would otherwise be listed as "asvg.jpg".

Real services on the suite's stack (uploads through the dedicated upload instance, fm-edge for its purge route).
Run: /usr/bin/python3 -m pytest -q tests/integration/test_input_rules.py
"""
import secrets
import uuid

import pytest
import requests

from helpers_fm import PASSWORD, assert_error
from helpers_uploads import EVENTS_SECRET, MIB, shared_uploads_fm

SHA = "ab" * 32


@pytest.fixture(scope="module")
def fm(controls, stack):
    with shared_uploads_fm(controls, stack) as f:
        yield f


@pytest.fixture(scope="module")
def user(fm):
    return fm.user("rules")


def send(fm, user, method, path, text):
    headers = {"Content-Type": "application/json"}
    return fm.call(user, method, path, data=text.encode(), headers=headers)


# --- #12 duplicate JSON member names ------------------------------------------------------------------------------

def upload_body(size_part):
    return ('{"name":"dup.bin",' + size_part + ',"content_type":"application/octet-stream","sha256":"' + SHA + '"}')


def test_duplicate_size_is_refused_and_nothing_is_recorded(fm, user):
    """The issue's case: one route read the first size, another the last."""
    before = fm.row_counts(user)
    r = send(fm, user, "POST", "/v1/uploads", upload_body('"size":1,"size":999999999'))
    err = assert_error(r, 422, "duplicate_key")
    assert '"size"' in err["message"], err
    assert fm.row_counts(user) == before


@pytest.mark.parametrize("text", [
    '{"email":"a@example.test","password":"%s","email":"b@example.test"}' % PASSWORD,
    '{"email":"a@example.test","password":"x","password":"%s"}' % PASSWORD,
])
@pytest.mark.parametrize("path", ["/v1/auth/register", "/v1/auth/login"])
def test_duplicate_keys_are_refused_by_the_auth_routes(fm, path, text):
    assert_error(send(fm, None, "POST", path, text), 422, "duplicate_key")


def test_duplicate_refresh_token_is_refused(fm):
    assert_error(send(fm, None, "POST", "/v1/auth/refresh", '{"refresh_token":"%s","refresh_token":"%s"}'
                      % ("a" * 43, "b" * 43)), 422, "duplicate_key")


def test_escaped_spelling_of_a_name_is_the_same_name(fm, user):
    r = send(fm, user, "POST", "/v1/uploads", upload_body('"size":1,"\\u0073ize":2'))
    assert_error(r, 422, "duplicate_key")


def test_duplicates_inside_nested_objects_are_refused(fm, user):
    """A multipart upload's parts and complete calls: the duplicate sits in an object inside an array."""
    a = fm.start(user, size=20 * MIB, sha256=secrets.token_hex(32), name="big.bin")
    upload_id = a["upload_id"]
    r = send(fm, user, "POST", f"/v1/uploads/{upload_id}/parts", '{"part_numbers":[1],"part_numbers":[2]}')
    assert_error(r, 422, "duplicate_key")
    r = send(fm, user, "POST", f"/v1/uploads/{upload_id}/complete",
             '{"parts":[{"part_number":1,"etag":"\\"abc\\"","part_number":2}]}')
    assert_error(r, 422, "duplicate_key")
    assert fm.upload_row(upload_id)["status"] == "PENDING"


def test_duplicate_keys_are_refused_by_file_update_and_uppy(fm, user):
    r = send(fm, user, "PATCH", f"/v1/files/{uuid.uuid4()}", '{"visibility":"private","visibility":"public"}')
    assert_error(r, 422, "duplicate_key")
    r = send(fm, user, "POST", "/v1/uppy/s3/multipart",
             '{"filename":"a.bin","type":"application/octet-stream","filename":"b.bin",'
             '"metadata":{"size":"20000000","sha256":"%s"}}' % SHA)
    assert_error(r, 422, "duplicate_key")
    r = send(fm, user, "POST", "/v1/uppy/s3/multipart",
             '{"filename":"a.bin","type":"application/octet-stream",'
             '"metadata":{"size":"20000000","size":"1","sha256":"%s"}}' % SHA)
    assert_error(r, 422, "duplicate_key")


def test_duplicate_keys_are_refused_in_s3_events(fm):
    key = f"incoming/{uuid.uuid4()}"
    record = ('{"eventVersion":"2.2","eventSource":"ceph:s3","eventName":"ObjectCreated:Put",'
              '"s3":{"bucket":{"name":"%s"},"object":{"key":"%s","size":1,"size":999999,"eTag":"x"}}}'
              % (fm.bucket, key))
    r = requests.post(f"{fm.base}/v1/events/s3?secret={EVENTS_SECRET}", data='{"Records":[%s]}' % record,
                      headers={"Content-Type": "application/json"}, timeout=10)
    err = assert_error(r, 400, "invalid_event")
    assert "twice" in err["message"], err


def test_duplicate_keys_are_refused_by_the_edge(edges):
    edge = edges.start()
    try:
        r = requests.post(edge.url + "/_edge/purge", data='{"keys":["a"],"keys":["b"]}',
                          headers={"Content-Type": "application/json", "X-FM-Edge-Secret": edges.purge_secret},
                          timeout=10)
        assert_error(r, 422, "duplicate_key")
    finally:
        edges.stop(edge)


# --- #13 file names -----------------------------------------------------------------------------------------------

REFUSED_NAMES = {
    "rlo": "a\u202egpj.svg",             # shows as "asvg.jpg"
    "lro": "\u202dreport.pdf",
    "embedding": "a\u202ab\u202c.txt",
    "isolate": "x\u2067exe.txt\u2069",
    "rlm": "photo\u200f.jpg",
    "alm": "\u061cfile.txt",
    "nel_c1": "a\u0085b.txt",
    "c1_first": "\u0080.txt",
    "c1_last": "\u009f.txt",
    "line_separator": "a\u2028b.txt",
    "del": "a\u007fb.txt",
    "tab": "a\tb.txt",
}


@pytest.mark.parametrize("case", sorted(REFUSED_NAMES))
def test_file_names_with_control_or_bidi_characters_are_refused(fm, user, case):
    name = REFUSED_NAMES[case]
    before = fm.row_counts(user)
    r = fm.call(user, "POST", "/v1/uploads",
                json={"name": name, "size": 1, "content_type": "application/octet-stream", "sha256": SHA})
    assert_error(r, 422, "invalid_name")
    assert fm.row_counts(user) == before


# Raw bytes reach a name only through a query string (a JSON body must be valid UTF-8 as a whole).
BAD_UTF8 = {
    "overlong_slash": "%C0%AF",
    "overlong_3": "%E0%80%AF",
    "surrogate": "%ED%A0%80",
    "above_10ffff": "%F4%90%80%80",
    "truncated": "%E2%82",
    "stray_continuation": "%80",
    "c1_nel": "%C2%85",
}


@pytest.mark.parametrize("case", sorted(BAD_UTF8))
def test_uppy_filenames_of_invalid_utf8_are_refused(fm, user, case):
    query = ("filename=a" + BAD_UTF8[case] + "b.txt&type=text%2Fplain&metadata%5Bsize%5D=5&metadata%5Bsha256%5D="
             + SHA)
    r = fm.call(user, "GET", "/v1/uppy/s3/params?" + query)
    assert_error(r, 422, "invalid_name")


@pytest.mark.parametrize("name", ["Résumé 2024.pdf", "שלום.txt", "ملف.pdf", "👩\u200d👩\u200d👧.jpg",
                                  "می\u200cخواهم.txt", "日本語.txt", "a" * 255])
def test_ordinary_international_names_are_accepted(fm, user, name):
    data = secrets.token_bytes(16)
    a = fm.start(user, data, name=name)
    assert fm.file(user, a["file_id"]).json()["name"] == name


def test_names_longer_than_255_bytes_are_refused(fm, user):
    r = fm.call(user, "POST", "/v1/uploads",
                json={"name": "é" * 128, "size": 1, "content_type": "application/octet-stream", "sha256": SHA})
    assert_error(r, 422, "invalid_name")
