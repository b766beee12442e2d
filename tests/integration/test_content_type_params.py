"""Content types with parameters (issue 11 item 8; docs/uploads.md "Content types", common/mediatype.h) against the
real stack: fm-control, fm-worker and fm-edge on a Redis database of this module's, Ceph RGW, clamd.

`text/plain; charset=utf-8` (any RFC 9110 `type/subtype; name=value`) is matched on its type/subtype against
FM_ALLOWED_CONTENT_TYPES and signed as sent: RGW takes the PUT with exactly that header, refuses any other, and stores
it; the file keeps the value as sent. Parameters never make a refused type allowed, nor an active type passive at the
edge. Before, every such value was answered 415 `content_type_not_allowed`.

    FM_BUILD_DIR=build /usr/bin/python3 -m pytest -q tests/integration/test_content_type_params.py
"""
import hashlib
import os
import urllib.parse

import pytest
import requests

from helpers_fm import assert_error, redis_cmd, redis_url
from helpers_uploads import dedicated, s3_error_code, sha256_hex
from test_download import KeyPair
from test_verified_bytes import VerifiedFm

CTYPE_REDIS_DB = 52  # this module's fm-control, fm-worker and fm-edge
KEY_ID = "KCTYPEPARAMS1"
MIB = 1024 * 1024
THRESHOLD = 8 * MIB
STRICT_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"

# Accepted: allowed essences with parameters, in any case, with OWS and quoted strings.
WITH_PARAMS = [
    "text/plain; charset=utf-8",
    "text/plain;charset=UTF-8",
    "TEXT/Plain ; charset=utf-8",
    "text/csv; charset=utf-8; header=present",
    'text/plain; charset="utf-8"',
    'application/json; profile="https://example.com/a; b=c"',
    'text/markdown; variant=GFM; x="say \\"hi\\""',
    "text/plain  ;   charset=utf-8",
]


class CtypeFm(VerifiedFm):
    def redis(self, *args):
        return redis_cmd(self.stack, CTYPE_REDIS_DB, *args)


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory):
    return KeyPair(KEY_ID, tmp_path_factory.mktemp("cf-keys-ctype"))


@pytest.fixture(scope="module")
def edge(edges, stack, key_pair):
    return edges.start(FM_EDGE_CF_PUBLIC_KEYS=f"{key_pair.id}={key_pair.public_path}",
                       FM_REDIS_URL=redis_url(stack, CTYPE_REDIS_DB))


@pytest.fixture(scope="module")
def fm(controls, stack, key_pair, edge):
    with dedicated(controls, stack, CtypeFm, FM_CF_KEYS=f"{key_pair.id}={key_pair.private_path}",
                   FM_EDGE_PUBLIC_BASE=edge.url, FM_RECONCILE_INTERVAL_S=1, FM_MULTIPART_THRESHOLD=THRESHOLD,
                   FM_REDIS_URL=redis_url(stack, CTYPE_REDIS_DB)) as f:
        yield f


@pytest.fixture(scope="module")
def worker(workers, stack, fm):
    w = workers.start(FM_REDIS_URL=redis_url(stack, CTYPE_REDIS_DB), FM_WORKER_THREADS=2,
                      FM_JOB_BACKOFF_BASE_MS=200)
    yield w
    workers.stop(w)


@pytest.fixture(scope="module")
def alice(fm):
    return fm.user("ctype")


def body_of(data, content_type, name="notes.txt"):
    return {"name": name, "size": len(data), "content_type": content_type, "sha256": sha256_hex(data)}


@pytest.mark.parametrize("content_type", WITH_PARAMS)
def test_a_type_with_parameters_is_signed_as_sent(fm, alice, content_type):
    """201 with a presigned PUT whose signed Content-Type is the value as sent: RGW takes exactly that header and
    stores it; the file (GET /v1/files/{id}, PostgreSQL) keeps it too."""
    data = os.urandom(2000)
    a = fm.start(alice, data, content_type=content_type)
    assert a["method"] == "PUT" and a["headers"] == {"Content-Type": content_type}, a
    p = fm.put(a, data)
    assert p.status_code == 200, p.text
    head = fm.head(f"incoming/{a['upload_id']}")
    assert head["ContentType"] == content_type, head
    f = fm.file(alice, a["file_id"])
    assert f.status_code == 200 and f.json()["content_type"] == content_type, f.text
    assert fm.sql(f"SELECT content_type FROM files WHERE id = '{a['file_id']}'") == content_type


def test_the_signed_type_is_the_only_one_rgw_takes(fm, alice):
    """The URL signed for `text/plain; charset=utf-8` refuses the bare type, another charset and another spelling:
    the parameters are part of what is signed."""
    data = os.urandom(1000)
    a = fm.start(alice, data, content_type="text/plain; charset=utf-8")
    for other in ("text/plain", "text/plain; charset=latin-1", "text/plain;charset=utf-8", "text/html; charset=utf-8"):
        r = fm.put(a, data, headers={"Content-Type": other})
        assert r.status_code == 403 and s3_error_code(r) == "SignatureDoesNotMatch", (other, r.status_code, r.text)
    assert fm.put(a, data).status_code == 200


def test_a_multipart_upload_keeps_its_parameters(fm, alice):
    """Above the threshold the type goes to CreateMultipartUpload: the completed object carries it as sent."""
    data = os.urandom(THRESHOLD + 1000)
    a = fm.start(alice, data, content_type="text/csv; charset=utf-8; header=present")
    assert "multipart" in a, a
    parts = fm.put_parts(a, data)
    c = fm.complete(alice, a["upload_id"], parts)
    assert c.status_code == 200, c.text
    head = fm.head(f"incoming/{a['upload_id']}")
    assert head["ContentType"] == "text/csv; charset=utf-8; header=present"
    assert fm.file(alice, a["file_id"]).json()["content_type"] == "text/csv; charset=utf-8; header=present"


def test_uppy_routes_take_parameters(fm, alice):
    """Companion's routes (Uppy sends the browser's File.type, which may carry parameters): the PUT parameters sign
    the value as sent, the multipart create accepts it."""
    data = os.urandom(1500)
    query = urllib.parse.urlencode({"filename": "u.txt", "type": "text/plain; charset=utf-8",
                                    "metadata[size]": len(data), "metadata[sha256]": sha256_hex(data)})
    p = fm.call(alice, "GET", f"/v1/uppy/s3/params?{query}")
    assert p.status_code == 200, p.text
    assert p.json()["headers"] == {"Content-Type": "text/plain; charset=utf-8"}
    assert requests.put(p.json()["url"], data=data, headers=p.json()["headers"], timeout=30).status_code == 200
    r = requests.put(p.json()["url"], data=data, headers={"Content-Type": "text/plain"}, timeout=30)
    assert r.status_code == 403, r.text
    big = os.urandom(16)
    c = fm.call(alice, "POST", "/v1/uppy/s3/multipart", json={
        "filename": "m.csv", "type": "Text/CSV; charset=utf-8",
        "metadata": {"size": 6 * MIB, "sha256": hashlib.sha256(big).hexdigest()}})
    assert c.status_code == 200, c.text
    key, upload_id = c.json()["key"], c.json()["uploadId"]
    assert fm.multipart_ids(key) == [upload_id]
    d = fm.call(alice, "DELETE", f"/v1/uppy/s3/multipart/{urllib.parse.quote(upload_id, safe='')}"
                f"?key={urllib.parse.quote(key, safe='')}")
    assert d.status_code in (200, 204), d.text


# Each malformed value next to its well-formed sibling: the sibling is accepted (parameters are read), the malformed
# one refused as any type we do not take (415 content_type_not_allowed, the code of "nonsense" before), nothing stored.
MALFORMED = [
    ("text/plain; charset", "text/plain; charset=utf-8"),                     # a parameter without '='
    ("text/plain; charset=", "text/plain; charset=x"),                        # no value
    ('text/plain; charset="utf-8', 'text/plain; charset="utf-8"'),            # unterminated quoted string
    ('text/plain; x="a\\', 'text/plain; x="a\\\\"'),                          # the closing quote escaped away
    ("text/plain; x=\"a\u0001\"", 'text/plain; x="a"'),                      # a control character
    ("text/plain; charset=utf-8\r\nX-Amz-Acl: public-read", "text/plain; charset=utf-8"),  # header injection
    ("text/plain; x=\"caf\u00e9\"", 'text/plain; x="cafe"'),                 # non-ASCII
    ("text/plain;\tcharset=utf-8", "text/plain; charset=utf-8"),             # a tab (RGW would refuse the PUT)
    ("text/plain;", "text/plain;a=b"),                                        # an empty parameter
    ("text/plain; charset=utf-8 ", "text/plain; charset=utf-8"),              # trailing blanks
    ("/plain; charset=utf-8", "text/plain; charset=utf-8"),                   # empty type
    ("text/; charset=utf-8", "text/plain; charset=utf-8"),                    # empty subtype
    ("text/plain; charset=utf-8, text/html", "text/plain; charset=utf-8"),  # a list: browsers read the last
    ("text/plain" + "".join(f";p{i}=v" for i in range(9)), "text/plain" + "".join(f";p{i}=v" for i in range(8))),
]


@pytest.mark.parametrize("bad,good", MALFORMED, ids=[str(i) for i in range(len(MALFORMED))])
def test_malformed_parameters_are_refused_and_record_nothing(fm, alice, bad, good):
    data = os.urandom(100)
    fm.start(alice, data, content_type=good)  # waits for its rows: the count below must not move behind us
    before = fm.row_counts(alice)
    r = fm.call(alice, "POST", "/v1/uploads", json=body_of(data, bad))
    assert_error(r, 415, "content_type_not_allowed")
    assert fm.row_counts(alice) == before


def test_parameters_never_make_a_refused_type_allowed(fm, alice):
    """Matched on type/subtype: a type outside the list stays 415 whatever its parameters, while the same
    parameters on an allowed type pass; an over-long value stays 422 as before."""
    data = os.urandom(100)
    fm.start(alice, data, content_type="text/plain; charset=utf-8", recorded=False)
    for bad in ("text/html; charset=utf-8", "TEXT/HTML ;x=y", "application/x-msdownload; a=b",
                "text/javascript; charset=utf-8", "text/plain-x; charset=utf-8", "text/plai; charset=utf-8"):
        assert_error(fm.call(alice, "POST", "/v1/uploads", json=body_of(data, bad)), 415, "content_type_not_allowed")
        query = urllib.parse.urlencode({"filename": "u.txt", "type": bad, "metadata[size]": len(data),
                                        "metadata[sha256]": sha256_hex(data)})
        assert_error(fm.call(alice, "GET", f"/v1/uppy/s3/params?{query}"), 415, "content_type_not_allowed")
    long_value = "text/plain; charset=utf-8; x=" + "a" * 100  # 129 bytes
    assert_error(fm.call(alice, "POST", "/v1/uploads", json=body_of(data, long_value)), 422, "invalid_field")


def test_a_verified_file_declared_with_parameters_is_served_by_its_real_type(fm, alice, worker, edge):
    """Through the worker to the edge: plain text declared `text/plain; charset=utf-8` becomes READY and is shown
    inline; an HTML page declared the same way (the text family accepts it) is served as the HTML it is, hence as an
    attachment with the sandboxed policy, never as a live document."""
    text = b"plain words and nothing else\n" * 20  # no commas: libmagic would call it text/csv
    _, text_id = fm.ready(alice, text, content_type="text/plain; charset=utf-8", name="a.txt")
    r = requests.get(fm.url(alice, text_id), timeout=30)
    assert r.status_code == 200 and r.content == text
    assert r.headers["Content-Type"].startswith("text/plain"), r.headers
    assert r.headers["Content-Disposition"].startswith("inline"), r.headers
    assert fm.file(alice, text_id).json()["content_type"] == "text/plain; charset=utf-8"

    page = b"<!DOCTYPE html><html><head><title>x</title></head><body><script>alert(1)</script></body></html>\n"
    _, page_id = fm.ready(alice, page, content_type="TEXT/PLAIN ; charset=utf-8", name="page.txt")
    r = requests.get(fm.url(alice, page_id), timeout=30)
    assert r.status_code == 200 and r.content == page
    assert r.headers["Content-Disposition"].startswith("attachment"), r.headers
    assert r.headers["Content-Security-Policy"] == STRICT_CSP
    assert r.headers["Cross-Origin-Resource-Policy"] == "same-origin"
