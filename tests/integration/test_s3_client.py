"""The multipart calls of common/s3.c (fm_s3_list_parts, fm_s3_complete_multipart, create/abort/head) and the
worker's streamed GET and copy against the real store (Ceph RGW), through tests/tools/fm_s3ctl; boto3 is the
independent client that checks what they did.
Parts go up with presigned UploadPart URLs made by our signer, as browsers will send them (DESIGN.md §4)."""
import hashlib
import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest import BUILD_DIR, SANITIZER_REPORT, sanitizer_env

MIB = 1024 * 1024


def s3ctl(stack, *args, ok=True):
    """Runs fm_s3ctl; returns its JSON line. With ok=True the call must succeed, with ok=False it must fail."""
    env = {**stack.env, **sanitizer_env(), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([str(BUILD_DIR / "fm_s3ctl"), *args], env=env, capture_output=True, text=True, timeout=60)
    assert not SANITIZER_REPORT.search(p.stderr), p.stderr
    assert p.returncode in (0, 1), f"fm_s3ctl {args[0]}: exit {p.returncode}\n{p.stderr}"
    out = json.loads(p.stdout)
    assert out["ok"] is (p.returncode == 0)
    assert out["ok"] is ok, out
    return out


def put_part(stack, key, upload_id, number, data):
    url = s3ctl(stack, "presign-part", key, upload_id, str(number))["url"]
    r = requests.put(url, data=data, timeout=30)
    assert r.status_code == 200, r.text
    return r.headers["ETag"]


def multipart_etag(*chunks):
    """S3's ETag of a multipart object: MD5 of the parts' binary MD5s, then '-' and the part count."""
    digest = hashlib.md5(b"".join(hashlib.md5(c).digest() for c in chunks)).hexdigest()
    return f'"{digest}-{len(chunks)}"'


@pytest.fixture
def s3(stack):
    return stack.s3_client()


def test_create_list_complete_head(stack, s3):
    bucket, key = stack.env["FM_S3_BUCKET"], "incoming/s3-client/big é+&.bin"
    upload_id = s3ctl(stack, "create", key, "application/octet-stream")["upload_id"]
    chunks = [b"\x01" * (5 * MIB), b"\x02"]
    etags = [put_part(stack, key, upload_id, n, c) for n, c in enumerate(chunks, 1)]

    listed = s3ctl(stack, "list", key, upload_id)["parts"]
    assert listed == [{"part_number": 1, "etag": etags[0], "size": 5 * MIB},
                      {"part_number": 2, "etag": etags[1], "size": 1}]
    assert etags[0] == f'"{hashlib.md5(chunks[0]).hexdigest()}"'
    theirs = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in theirs] == [(1, etags[0], 5 * MIB), (2, etags[1], 1)]

    # ETags are taken with or without their quotes.
    done = s3ctl(stack, "complete", key, upload_id, f"1:{etags[0]}", f"2:{etags[1].strip(chr(34))}")
    assert done["status"] == 200
    # Ceph RGW answers Complete with an unquoted ETag (an empty one in some versions): HEAD has the real one.
    assert done["etag"].strip('"') in ("", multipart_etag(*chunks).strip('"'))

    head = s3ctl(stack, "head", key)
    assert head["etag"] == multipart_etag(*chunks)
    assert head["size"] == 5 * MIB + 1
    assert head["content_type"] == "application/octet-stream"
    obj = s3.get_object(Bucket=bucket, Key=key)
    assert obj["ETag"] == head["etag"]
    assert obj["Body"].read() == b"".join(chunks)
    # The upload is gone once completed.
    assert upload_id not in {u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}


def test_abort_leaves_nothing(stack, s3):
    bucket, key = stack.env["FM_S3_BUCKET"], "incoming/s3-client/aborted.bin"
    upload_id = s3ctl(stack, "create", key)["upload_id"]
    put_part(stack, key, upload_id, 1, b"x" * MIB)
    assert len(s3ctl(stack, "list", key, upload_id)["parts"]) == 1

    assert s3ctl(stack, "abort", key, upload_id)["status"] == 204
    # RGW answers ListParts of an aborted upload with 404 NoSuchKey, AWS with NoSuchUpload.
    gone = s3ctl(stack, "list", key, upload_id, ok=False)
    assert gone["status"] == 404 and gone["code"] in ("NoSuchUpload", "NoSuchKey")
    assert upload_id not in {u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}
    assert s3ctl(stack, "head", key, ok=False)["code"] == "NotFound"
    assert s3ctl(stack, "abort", key, upload_id, ok=False)["code"] == "NoSuchUpload"
    # AWS: 404 NoSuchUpload. Ceph RGW 16 answers Complete of an aborted (or unknown) upload with 500 InternalError
    # "This multipart completion is already in progress": a failure either way, never a completed object.
    missing = s3ctl(stack, "complete", key, upload_id, '1:"00000000000000000000000000000000"', ok=False)
    assert (missing["status"], missing["code"]) in ((404, "NoSuchUpload"), (500, "InternalError"))
    assert s3ctl(stack, "head", key, ok=False)["code"] == "NotFound"


def test_complete_refusals(stack):
    key = "incoming/s3-client/refused.bin"
    upload_id = s3ctl(stack, "create", key)["upload_id"]
    e1 = put_part(stack, key, upload_id, 1, b"a" * (5 * MIB))
    e2 = put_part(stack, key, upload_id, 2, b"b")

    wrong = s3ctl(stack, "complete", key, upload_id, f"1:{e1}", '2:"0123456789abcdef0123456789abcdef"', ok=False)
    assert (wrong["status"], wrong["code"]) == (400, "InvalidPart")
    not_uploaded = s3ctl(stack, "complete", key, upload_id, f"1:{e1}", f"4:{e2}", ok=False)
    assert (not_uploaded["status"], not_uploaded["code"]) == (400, "InvalidPart")
    # RGW would complete these; the client refuses them before sending, as S3 would (InvalidPartOrder).
    for parts in ([f"2:{e2}", f"1:{e1}"], [f"1:{e1}", f"1:{e1}", f"2:{e2}"]):
        order = s3ctl(stack, "complete", key, upload_id, *parts, ok=False)
        assert (order["status"], order["code"]) == (0, "InvalidPartOrder")
    for bad in ('1:"a b"', "1:", '0:"abc"', '10001:"abc"'):
        assert s3ctl(stack, "complete", key, upload_id, bad, ok=False)["code"] == "InvalidArgument"
    # After all the refusals, the upload still completes.
    assert s3ctl(stack, "complete", key, upload_id, f"1:{e1}", f"2:{e2}")["status"] == 200
    assert s3ctl(stack, "head", key)["size"] == 5 * MIB + 1

    # Every part but the last must be at least 5 MiB.
    key = "incoming/s3-client/too-small.bin"
    upload_id = s3ctl(stack, "create", key)["upload_id"]
    e1 = put_part(stack, key, upload_id, 1, b"a")
    e2 = put_part(stack, key, upload_id, 2, b"b")
    small = s3ctl(stack, "complete", key, upload_id, f"1:{e1}", f"2:{e2}", ok=False)
    assert (small["status"], small["code"]) == (400, "EntityTooSmall")
    s3ctl(stack, "abort", key, upload_id)


def test_list_follows_pages(stack, s3):
    """1001 parts: two ListParts pages of (at most) 1000, joined in order."""
    bucket, key = stack.env["FM_S3_BUCKET"], "incoming/s3-client/many-parts.bin"
    upload_id = s3ctl(stack, "create", key)["upload_id"]
    try:
        numbers = list(range(1, 1001)) + [1500]
        with ThreadPoolExecutor(8) as pool:  # boto3 clients are thread-safe; one part is ~40 ms on RGW
            list(pool.map(lambda n: s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=n,
                                                   Body=str(n).encode()), numbers))
        listed = s3ctl(stack, "list", key, upload_id)["parts"]
        assert [p["part_number"] for p in listed] == numbers
        assert all(p["size"] == len(str(p["part_number"])) for p in listed)
        assert listed[-1]["etag"] == f'"{hashlib.md5(b"1500").hexdigest()}"'
    finally:
        s3ctl(stack, "abort", key, upload_id)


def s3get(stack, key, out_path, ok=True):
    """Runs `fm_s3ctl get KEY` with the object streamed into out_path; returns (JSON line, max RSS in KiB)."""
    env = {**stack.env, **sanitizer_env(), "PATH": "/usr/bin:/bin"}
    with open(out_path, "wb") as out, open(f"{out_path}.err", "w+b") as err:
        proc = subprocess.Popen([str(BUILD_DIR / "fm_s3ctl"), "get", key], env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage, for its peak memory
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode(errors="replace")
    assert not SANITIZER_REPORT.search(text), text
    assert proc.returncode in (0, 1), f"fm_s3ctl get: exit {proc.returncode}\n{text}"
    line = json.loads(text.strip().splitlines()[-1])  # the JSON line goes to stderr: stdout is the object
    assert line["ok"] is (proc.returncode == 0)
    assert line["ok"] is ok, line
    return line, usage.ru_maxrss


def test_get_streams_a_large_object(stack, s3, tmp_path):
    """20 MiB come back byte for byte, through the write callback, without the client holding them in memory."""
    bucket, key = stack.env["FM_S3_BUCKET"], "incoming/s3-client/get é+&.bin"
    data = os.urandom(20 * MIB)
    s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType="application/x-test")
    got, rss_kib = s3get(stack, key, tmp_path / "object")
    assert (got["status"], got["size"], got["bytes"]) == (200, len(data), len(data))
    assert got["etag"] == s3.head_object(Bucket=bucket, Key=key)["ETag"]
    assert (tmp_path / "object").read_bytes() == data
    # Peak memory against a GET answered 404 (same tool and libraries, sanitizer or not): far under the object.
    _, base_kib = s3get(stack, "incoming/s3-client/no such object", tmp_path / "missing", ok=False)
    assert rss_kib - base_kib < 8 * 1024, f"GET peak RSS {rss_kib} KiB vs {base_kib} KiB for an error answer"


def test_get_missing_key(stack, tmp_path):
    """A 404's XML error document is read for its code and never reaches the caller's write function."""
    got, _ = s3get(stack, "incoming/s3-client/never-uploaded.bin", tmp_path / "body", ok=False)
    assert (got["status"], got["code"]) == (404, "NoSuchKey")
    assert (tmp_path / "body").read_bytes() == b""


def test_copy_object(stack, s3):
    bucket = stack.env["FM_S3_BUCKET"]
    src, dst = "incoming/s3-client/to copy é+&=?.bin", "quarantine/s3-client/copied é+&=?.bin"
    data = os.urandom(MIB + 7)
    put = s3.put_object(Bucket=bucket, Key=src, Body=data, ContentType="application/pdf")
    s3.delete_object(Bucket=bucket, Key=dst)

    done = s3ctl(stack, "copy", src, dst)
    assert done["status"] == 200
    assert done["etag"] == put["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    copy = s3.get_object(Bucket=bucket, Key=dst)
    assert copy["Body"].read() == data and copy["ContentType"] == "application/pdf"
    assert s3ctl(stack, "head", src)["size"] == len(data)  # a copy, not a move

    missing = s3ctl(stack, "copy", "incoming/s3-client/no such source", dst, ok=False)
    assert (missing["status"], missing["code"]) == (404, "NoSuchKey")


def test_copy_replaces_the_content_type(stack, s3):
    """The worker's copy to blobs/{sha256} carries the type it sniffed, not the one the client declared."""
    bucket, src, dst = stack.env["FM_S3_BUCKET"], "incoming/s3-client/typed.bin", "blobs/s3-client/typed.bin"
    data = os.urandom(4096)
    s3.put_object(Bucket=bucket, Key=src, Body=data, ContentType="image/svg+xml")
    done = s3ctl(stack, "copy", src, dst, "application/pdf")
    assert done["size"] == len(data)
    copy = s3.get_object(Bucket=bucket, Key=dst)
    assert copy["Body"].read() == data and copy["ContentType"] == "application/pdf"


@pytest.mark.parametrize("size", [12 * MIB + 3, 10 * MIB], ids=["3-parts", "2-whole-parts"])
def test_copy_above_the_part_size_is_made_of_part_copies(stack, s3, size):
    """Above S3's 5 GiB CopyObject limit the copy is UploadPartCopy parts (here with 5 MiB parts, the smallest S3
    allows, so the same code path runs on small objects): the bytes, the type and the part count all come through."""
    bucket, src, dst = stack.env["FM_S3_BUCKET"], f"incoming/s3-client/large-{size}", f"blobs/s3-client/large-{size}"
    data = os.urandom(size)
    s3.put_object(Bucket=bucket, Key=src, Body=data, ContentType="video/mp4")
    done = s3ctl(stack, "copy", src, dst, "-", str(5 * MIB))
    assert done["size"] == size
    head = s3.head_object(Bucket=bucket, Key=dst)
    parts = -(-size // (5 * MIB))
    assert head["ETag"].endswith(f'-{parts}"'), head["ETag"]  # a multipart object, not one CopyObject
    assert head["ContentType"] == "video/mp4" and head["ContentLength"] == size
    assert hashlib.sha256(s3.get_object(Bucket=bucket, Key=dst)["Body"].read()).digest() == \
        hashlib.sha256(data).digest()
    assert s3.list_multipart_uploads(Bucket=bucket, Prefix=dst).get("Uploads", []) == []

    missing = s3ctl(stack, "copy", "incoming/s3-client/absent-large", dst, "-", str(5 * MIB), ok=False)
    assert (missing["status"], missing["code"]) == (404, "NoSuchKey")
