#!/usr/bin/python3
"""Prints SigV4 test vectors made by botocore, the independent reference for common/sigv4.c.

Run by tests/unit/common/test_sigv4.c (with Debian's /usr/bin/python3, which has python3-botocore). One JSON
object per line: the inputs the C signer gets and the output botocore produced for them, then a last line
{"kind": "end", "count": N}. Any failure (botocore missing included) exits non-zero, which fails the C test.

Presigned URLs come from a botocore S3 client's generate_presigned_url (S3SigV4QueryAuth, path-style), so key
encoding is botocore's serializer, not ours. Header signing comes from the same client's real requests
(S3SigV4Auth), caught at 'before-send' so nothing goes on the network. The clock is frozen by replacing the
`datetime` that botocore.auth reads (it calls datetime.datetime.utcnow() for the signing time).
"""
import calendar
import datetime
import json
import sys
import types

import botocore.auth
import botocore.session
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.credentials import Credentials
from botocore.config import Config

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
RGW = "http://127.0.0.1:7480"
DOC_TIME = datetime.datetime(2013, 5, 24, 0, 0, 0)
LEAP_TIME = datetime.datetime(2024, 2, 29, 23, 59, 59)


class _Clock:
    now = DOC_TIME


class _FrozenDatetime(datetime.datetime):
    @classmethod
    def utcnow(cls):
        return _Clock.now


botocore.auth.datetime = types.SimpleNamespace(datetime=_FrozenDatetime)
_session = botocore.session.get_session()


def _client(endpoint, region="us-east-1", token=None, style="path"):
    return _session.create_client(
        "s3",
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        aws_session_token=token,
        config=Config(signature_version="s3v4", s3={"addressing_style": style}, retries={"max_attempts": 0}),
    )


def _inputs(name, method, endpoint, bucket, key, when, region, token, params, headers):
    return {
        "name": name,
        "method": method,
        "endpoint": endpoint,
        "bucket": bucket,
        "key": key,
        "now": calendar.timegm(when.timetuple()),
        "region": region,
        "access_key": ACCESS_KEY,
        "secret_key": SECRET_KEY,
        "session_token": token,
        "params": [[n, v] for n, v in params],
        "headers": [[n, v] for n, v in headers],
    }


def presign(name, operation, method, op_params, params=(), headers=(), expires=3600, endpoint=RGW,
            region="us-east-1", token=None, when=DOC_TIME, style="path"):
    """`params`/`headers`: what the C signer is given for `op_params`, in the order botocore serialises them."""
    _Clock.now = when
    client = _client(endpoint, region, token, style)
    url = client.generate_presigned_url(operation, Params=op_params, ExpiresIn=expires)
    bucket = op_params["Bucket"] if style == "path" else None
    vector = _inputs(name, method, endpoint or "https://%s.s3.amazonaws.com" % op_params["Bucket"], bucket,
                     op_params.get("Key"), when, region, token, params, headers)
    vector.update(kind="presign", expires=expires, url=url)
    return vector


class _Raw:
    def stream(self, **kwargs):
        return iter([b""])


def signed_request(name, operation, method, op_params, params=(), body=b"", endpoint=RGW, region="us-east-1",
                   token=None, when=DOC_TIME):
    """Signs a real client call with S3SigV4Auth; the C side gets the other signed headers from botocore's list."""
    _Clock.now = when
    client = _client(endpoint, region, token)
    seen = {}

    def before_send(request, **kwargs):
        seen["url"] = request.url
        seen["headers"] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in request.headers.items()}
        return AWSResponse(request.url, 200, {}, _Raw())

    client.meta.events.register("before-send.s3", before_send)
    getattr(client, operation)(**op_params)
    hdrs = seen["headers"]
    signed = hdrs["Authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    own = {"host", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token"}
    lower = {k.lower(): v for k, v in hdrs.items()}
    extra = [(h, lower[h]) for h in signed if h not in own]
    vector = _inputs(name, method, endpoint, op_params["Bucket"], op_params.get("Key"), when, region, token, params,
                     extra)
    vector.update(kind="headers", body=body.decode("utf-8"), url=seen["url"], authorization=hdrs["Authorization"],
                  amz_date=hdrs["X-Amz-Date"], content_sha256=hdrs["X-Amz-Content-SHA256"],
                  security_token=hdrs.get("X-Amz-Security-Token"))
    return vector


def raw_signed(name, method, bucket, key, params, headers, body=b"", when=DOC_TIME):
    """S3SigV4Auth on a hand-made AWSRequest, for what the client API cannot express: repeated query names and
    repeated headers. The URL needs no encoding here (plain names only)."""
    _Clock.now = when
    query = "&".join("%s=%s" % (n, v) for n, v in params)
    request = AWSRequest(method=method, url="%s/%s/%s?%s" % (RGW, bucket, key, query), data=body)
    for header_name, value in headers:
        request.headers[header_name] = value  # HTTPHeaders appends: a second assignment repeats the header
    S3SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "us-east-1").add_auth(request)
    vector = _inputs(name, method, RGW, bucket, key, when, "us-east-1", None, params, headers)
    vector.update(kind="headers", body=body.decode("utf-8"), url=request.url,
                  authorization=request.headers["Authorization"], amz_date=request.headers["X-Amz-Date"],
                  content_sha256=request.headers["X-Amz-Content-SHA256"], security_token=None)
    return vector


def vectors():
    b = "fm-bucket"
    yield presign("aws doc example, virtual-hosted", "get_object", "GET",
                  {"Bucket": "examplebucket", "Key": "test.txt"}, expires=86400, endpoint=None, style="virtual")
    yield presign("plain key on RGW port", "get_object", "GET", {"Bucket": b, "Key": "hello.txt"})
    yield presign("spaces and parentheses", "get_object", "GET", {"Bucket": b, "Key": "my file (1).txt"})
    yield presign("unicode", "get_object", "GET", {"Bucket": b, "Key": "fïlé/日本.txt"})
    yield presign("plus", "get_object", "GET", {"Bucket": b, "Key": "a+b+c.txt"})
    yield presign("tilde", "get_object", "GET", {"Bucket": b, "Key": "~user/x~y"})
    yield presign("slashes kept, not normalised", "get_object", "GET", {"Bucket": b, "Key": "a/./b/../c//d/"})
    yield presign("leading slash", "get_object", "GET", {"Bucket": b, "Key": "/lead"})
    yield presign("= & ? # % in key", "get_object", "GET", {"Bucket": b, "Key": "q=1&r=2?x#frag 100%.txt"})
    yield presign("reserved punctuation", "get_object", "GET", {"Bucket": b, "Key": "!$'()*,;:@[]"})
    yield presign("7 day expiry", "get_object", "GET", {"Bucket": b, "Key": "week.bin"}, expires=604800)
    yield presign("1 second expiry, leap day", "get_object", "GET", {"Bucket": b, "Key": "k"}, expires=1,
                  when=LEAP_TIME)
    yield presign("session token", "get_object", "GET", {"Bucket": b, "Key": "t.txt"},
                  token="FwoGZXIvYXdzEJr//////////wEaDOvT+Tv2dE/x1q==")
    yield presign("PUT with signed Content-Type", "put_object", "PUT",
                  {"Bucket": b, "Key": "incoming/8f2c", "ContentType": "image/jpeg"},
                  headers=[("Content-Type", "image/jpeg")], expires=900)
    yield presign("PUT with Content-Type parameters and token", "put_object", "PUT",
                  {"Bucket": b, "Key": "incoming/a b", "ContentType": "text/plain; charset=utf-8"},
                  headers=[("Content-Type", "text/plain; charset=utf-8")], token="tok+/=", when=LEAP_TIME)
    yield presign("UploadPart", "upload_part", "PUT",
                  {"Bucket": b, "Key": "big/file.iso", "PartNumber": 7, "UploadId": "2~Zx/y+z=="},
                  params=[("partNumber", "7"), ("uploadId", "2~Zx/y+z==")])
    yield presign("CreateMultipartUpload", "create_multipart_upload", "POST", {"Bucket": b, "Key": "big/new"},
                  params=[("uploads", "")])
    yield presign("ListParts, params not in sorted order", "list_parts", "GET",
                  {"Bucket": b, "Key": "k", "UploadId": "u-1", "MaxParts": 10, "PartNumberMarker": 5},
                  params=[("uploadId", "u-1"), ("max-parts", "10"), ("part-number-marker", "5")])
    yield presign("response-content-disposition", "get_object", "GET",
                  {"Bucket": b, "Key": "d.pdf", "ResponseContentDisposition": 'attachment; filename="x y.pdf"'},
                  params=[("response-content-disposition", 'attachment; filename="x y.pdf"')])
    yield presign("DELETE", "delete_object", "DELETE", {"Bucket": b, "Key": "gone"})
    yield presign("HEAD, other region", "head_object", "HEAD", {"Bucket": b, "Key": "h"}, region="eu-central-1")
    yield presign("https with port", "get_object", "GET", {"Bucket": b, "Key": "k"}, endpoint="https://s3.local:8443")
    yield presign("default port kept in URL, not in Host", "get_object", "GET", {"Bucket": b, "Key": "k"},
                  endpoint="http://127.0.0.1:80")

    yield signed_request("PUT with payload hash, MD5, token", "put_object", "PUT",
                         {"Bucket": b, "Key": "in/ü a+b.txt", "Body": b"hello world", "ContentType": "text/plain",
                          "Metadata": {"note": "  spaced   out  "}},
                         body=b"hello world", token="tok/+=", when=LEAP_TIME)
    yield signed_request("PUT empty body", "put_object", "PUT", {"Bucket": b, "Key": "empty", "Body": b""})
    yield signed_request("HEAD bucket", "head_bucket", "HEAD", {"Bucket": b})
    yield signed_request("HEAD object", "head_object", "HEAD", {"Bucket": b, "Key": "fïlé/日本.txt"})
    yield signed_request("DELETE object", "delete_object", "DELETE", {"Bucket": b, "Key": "a/./b"})
    yield signed_request("CreateMultipartUpload", "create_multipart_upload", "POST",
                         {"Bucket": b, "Key": "big/new", "ContentType": "video/mp4"}, params=[("uploads", "")])
    yield signed_request("AbortMultipartUpload", "abort_multipart_upload", "DELETE",
                         {"Bucket": b, "Key": "big/new", "UploadId": "2~Zx/y+z=="},
                         params=[("uploadId", "2~Zx/y+z==")], token="FQoG/+xyz==")
    yield raw_signed("repeated query name and header", "GET", b, "k", [("tag", "b"), ("tag", "a"), ("list-type", "2")],
                     [("X-Amz-Meta-Dup", "b"), ("x-amz-meta-dup", " a  z "), ("X-Amz-Meta-One", "1")])


def main():
    count = 0
    for vector in vectors():
        print(json.dumps(vector, ensure_ascii=True))
        count += 1
    print(json.dumps({"kind": "end", "count": count, "botocore": botocore.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
