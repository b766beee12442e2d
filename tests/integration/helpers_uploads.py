"""Helpers of the upload and S3-event suites (test_uploads.py, test_events.py): the one fm-control both use, users,
the upload calls, and direct looks at PostgreSQL, Redis and the bucket. No mocks: everything talks to the real
stack.

The dedicated fm-control has its own Redis database (REDIS_DB): its job stream, dedupe index and reconciler lock are
not shared with the suite's other instances, whose reconcilers hold the shared lock for their own (30 s) interval.
"""
import contextlib
import datetime
import glob
import hashlib
import json
import os
import secrets
import time
import subprocess
import threading
import types
import urllib.parse

import botocore.auth
import botocore.exceptions
import requests
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from conftest import unique_email
from helpers_fm import PASSWORD, bearer, login, main_dbname, metric, redis_cmd, redis_url, register, wait_for

MIB = 1024 * 1024
THRESHOLD = 8 * MIB            # FM_MULTIPART_THRESHOLD of the dedicated instance
PART_SIZE = 8 * MIB            # the smallest part size fm-control chooses
REDIS_DB = 12                  # the dedicated instance's Redis database
TTL_REDIS_DB = 13              # the short-URL-lifetime instance's
EVENTS_SECRET = secrets.token_hex(24)
JOBS_STREAM = "jobs"

_instances = {}


def uploads_control(controls, stack):
    """The one fm-control of the upload and event suites, started on first use and kept for the session (the
    session's teardown stops it and checks its exit status and sanitizer log)."""
    svc = _instances.get(id(controls))
    if svc is None or svc.proc.poll() is not None:
        svc = controls.start(
            FM_EVENTS_SECRET=EVENTS_SECRET,
            FM_RECONCILE_INTERVAL_S=1,
            FM_MULTIPART_THRESHOLD=THRESHOLD,
            FM_REDIS_URL=redis_url(stack, REDIS_DB),
        )
        _instances[id(controls)] = svc
    return svc


def stop_uploads_control(controls):
    """Stops the shared instance of uploads_control if it runs (the next uploads_control starts it again). Every
    reconciler lists the whole bucket and marks the pending uploads it finds in the one PostgreSQL database, putting
    their jobs on *its* Redis database's stream: a module that checks its own reconciler's work stops this one
    first."""
    svc = _instances.pop(id(controls), None)
    if svc is not None and svc in controls.started:
        controls.stop(svc)


def random_bytes(n):
    return os.urandom(n)


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


class Psql:
    """One psql session kept open for many statements: starting psql costs up to a second on a loaded machine
    (Debian's /usr/bin/psql is a Perl wrapper), and these suites look at PostgreSQL hundreds of times."""

    def __init__(self, stack, dbname):
        binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"))
        binary = binaries[-1] if binaries else "/usr/bin/psql"
        self.proc = subprocess.Popen(
            [binary, "-X", "-tA", "-q", "-v", "ON_ERROR_STOP=0", "-h", "127.0.0.1", "-p", str(stack.env["FM_PG_PORT"]),
             "-U", "postgres", "-d", dbname],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lock = threading.Lock()

    def query(self, sql):
        """Runs `sql` (one or more statements); returns the rows printed, unaligned, '|' between columns."""
        marker = f"__fm_done_{secrets.token_hex(6)}__"
        with self.lock:
            self.proc.stdin.write(sql.rstrip().rstrip(";") + ";\n\\echo " + marker + "\n")
            self.proc.stdin.flush()
            lines = []
            while True:
                line = self.proc.stdout.readline()
                if line == "":
                    raise RuntimeError(f"psql exited ({self.proc.poll()}): {''.join(lines)}")
                if line.rstrip("\n") == marker:
                    break
                lines.append(line.rstrip("\n"))
        errors = [ln for ln in lines if ln.startswith(("ERROR:", "FATAL:", "psql:"))]
        assert not errors, f"SQL failed: {sql}\n" + "\n".join(lines)
        return "\n".join(lines).strip()

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


class User:
    def __init__(self, uid, email, token):
        self.id, self.email, self.token = uid, email, token

    @property
    def headers(self):
        return bearer(self.token)


class Fm:
    """The dedicated instance and the stack behind it."""

    def __init__(self, stack, svc):
        self.stack, self.svc, self.base = stack, svc, svc.url
        self.bucket = stack.env["FM_S3_BUCKET"]
        self.s3 = stack.s3_client()
        self.dbname = main_dbname(stack)
        self.psql = Psql(stack, self.dbname)

    def close(self):
        self.psql.close()

    # --- accounts
    def user(self, prefix="up"):
        email = unique_email(prefix)
        u = register(self.base, email)
        return User(u["id"], email, login(self.base, email)["access_token"])

    def relogin(self, user):
        user.token = login(self.base, user.email, PASSWORD)["access_token"]
        return user

    # --- HTTP
    def call(self, user, method, path, **kw):
        headers = dict(kw.pop("headers", None) or {})
        if user is not None:
            headers.update(user.headers)
        kw.setdefault("timeout", 15)
        return requests.request(method, self.base + path, headers=headers, **kw)

    def start(self, user, data=None, *, size=None, sha256=None, name=None, content_type="application/octet-stream",
              folder=None, expect=201, recorded=True, **extra):
        """POST /v1/uploads for `data` (or explicit size/sha256); asserts the status; returns the answer. With
        `recorded`, also waits until the new file's row reached PostgreSQL (records are written behind: records.c)."""
        body = {"name": name or f"file-{secrets.token_hex(4)}.bin",
                "size": len(data) if size is None else size,
                "content_type": content_type,
                "sha256": sha256 or sha256_hex(data)}
        if folder is not None:
            body["folder"] = folder
        # on_conflict: the API's default is "fail", which writes the record through to PostgreSQL before the answer
        # (docs/uploads.md); the suites written before it test the write-behind path that "rename" keeps, and their
        # names are random anyway. test_file_names.py passes it explicitly.
        body.setdefault("on_conflict", "rename")
        body.update(extra)
        r = self.call(user, "POST", "/v1/uploads", json=body)
        assert r.status_code == expect, f"expected {expect}, got {r.status_code}: {r.text[:500]}"
        answer = r.json()
        if recorded and r.status_code in (200, 201):
            self.wait_recorded(answer["file_id"])
        return answer

    def wait_recorded(self, file_id, timeout=10):
        """Waits for the file row in PostgreSQL (the flusher writes batches every FM_RECORD_FLUSH_MS)."""
        deadline = time.monotonic() + timeout
        while self.sql(f"SELECT count(*) FROM files WHERE id = '{file_id}'") != "1":
            assert time.monotonic() < deadline, f"file {file_id} not in PostgreSQL after {timeout} s"
            time.sleep(0.02)

    @staticmethod
    def put(answer, data, headers=None):
        """PUTs `data` to a single-PUT answer's URL with exactly its headers (unless told otherwise)."""
        return requests.put(answer["url"], data=data, headers=answer["headers"] if headers is None else headers,
                            timeout=30)

    def part_urls(self, answer):
        return {p["part_number"]: p["url"] for p in answer["multipart"]["parts"]}

    def put_parts(self, answer, data, numbers=None):
        """PUTs the parts of a multipart answer (all, or `numbers`); returns [{part_number, etag}] ascending."""
        mp = answer["multipart"]
        urls = self.part_urls(answer)
        out = []
        for n in numbers or range(1, mp["part_count"] + 1):
            chunk = data[(n - 1) * mp["part_size"]:n * mp["part_size"]]
            r = requests.put(urls[n], data=chunk, timeout=60)
            assert r.status_code == 200, f"part {n}: {r.status_code} {r.text[:300]}"
            out.append({"part_number": n, "etag": r.headers["ETag"]})
        return out

    def complete(self, user, upload_id, parts=None, headers=None):
        kw = {"json": {"parts": parts}} if parts is not None else {}
        return self.call(user, "POST", f"/v1/uploads/{upload_id}/complete", headers=headers, **kw)

    def abort(self, user, upload_id):
        return self.call(user, "DELETE", f"/v1/uploads/{upload_id}")

    def upload(self, user, data, content_type="application/octet-stream", **kw):
        """Start, PUT, complete; returns (start answer, complete answer)."""
        a = self.start(user, data, content_type=content_type, **kw)
        assert a["method"] == "PUT", a
        p = self.put(a, data)
        assert p.status_code == 200, p.text
        c = self.complete(user, a["upload_id"])
        assert c.status_code == 200, c.text
        return a, c.json()

    def file(self, user, file_id):
        return self.call(user, "GET", f"/v1/files/{file_id}")

    def job(self, user, job_id):
        return self.call(user, "GET", f"/v1/jobs/{job_id}")

    # --- PostgreSQL
    def sql(self, query):
        return self.psql.query(query)

    def sql_row(self, query):
        """One row as a dict, from a query of the form SELECT row_to_json(x) ... (None if no row)."""
        out = self.sql(query)
        return json.loads(out) if out else None

    def upload_row(self, upload_id):
        return self.sql_row(f"SELECT row_to_json(u) FROM (SELECT status, completed_by, status_reason, etag, "
                            f"s3_upload_id, file_id FROM uploads WHERE id = '{upload_id}') u")

    def file_row(self, file_id):
        return self.sql_row(f"SELECT row_to_json(f) FROM (SELECT status, status_reason, deleted_at, "
                            f"encode(blob_sha256, 'hex') AS blob FROM files WHERE id = '{file_id}') f")

    def jobs_of_upload(self, upload_id):
        out = self.sql(f"SELECT id FROM jobs WHERE upload_id = '{upload_id}' ORDER BY created_at")
        return out.split() if out else []

    def row_counts(self, user):
        """(files, uploads, jobs) rows of the user."""
        out = self.sql(f"SELECT (SELECT count(*) FROM files WHERE owner_id = '{user.id}'), "
                       f"(SELECT count(*) FROM uploads WHERE owner_id = '{user.id}'), "
                       f"(SELECT count(*) FROM jobs j JOIN files f ON f.id = j.file_id "
                       f" WHERE f.owner_id = '{user.id}')")
        return tuple(int(x) for x in out.split("|"))

    def reconcile_rounds(self, n, timeout=60):
        """Waits for `n` whole reconciler rounds of this instance that began after the call (a round in progress
        when it is made may have read the state before: it does not count), by fm_reconcile_rounds_total."""
        start = metric(self.base, "fm_reconcile_rounds_total")
        assert wait_for(lambda: metric(self.base, "fm_reconcile_rounds_total") >= start + n + 1, timeout), \
            f"fewer than {n} reconciler rounds in {timeout} s"

    def shield_from_reconciler(self, upload_id):
        """The 1 s reconciler probes every pending single PUT whose object exists: a test that needs the upload to
        stay PENDING after its PUT (abort, size mismatch by `complete`) makes it look recently checked."""
        self.sql(f"UPDATE uploads SET checked_at = now() + interval '1 hour' WHERE id = '{upload_id}'")

    def mark_verified(self, file_id, data, content_type="application/octet-stream"):
        """What fm-worker leaves once it verified a file's bytes (lambda-workers/process.c outcome_ready), for suites
        that run no worker: the bytes at blobs/{sha256} with their type, the blob row, the file READY on it, the
        owner's dedupe entry (hash -> size), the cached row dropped, and the client's object gone.
        test_worker.py::test_mark_verified_leaves_what_the_worker_leaves compares the two."""
        digest = sha256_hex(data)
        key = f"blobs/{digest}"
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        self.sql(f"INSERT INTO blobs (sha256, size, storage_key, content_type, ref_count) VALUES "
                 f"(decode('{digest}', 'hex'), {len(data)}, '{key}', '{content_type}', 1) "
                 f"ON CONFLICT (sha256) DO UPDATE SET ref_count = blobs.ref_count + 1; "
                 f"UPDATE files SET status = 'READY', blob_sha256 = decode('{digest}', 'hex') WHERE id = '{file_id}'")
        owner = self.sql(f"SELECT owner_id FROM files WHERE id = '{file_id}'")
        self.redis("HSET", f"fm:dedupe:{{{owner}}}", digest, str(len(data)))
        self.redis("DEL", f"fm:file:{{{file_id}}}")
        for key in self.sql(f"SELECT object_key FROM uploads WHERE file_id = '{file_id}'").split():
            self.s3.delete_object(Bucket=self.bucket, Key=key)

    # --- Redis
    def redis(self, *args):
        return redis_cmd(self.stack, REDIS_DB, *args)

    def stream_entries(self, job_id=None):
        """The `jobs` stream entries (dicts of their fields), those of `job_id` only if given."""
        out = []
        for _entry_id, fields in self.redis("XRANGE", JOBS_STREAM, "-", "+") or []:
            d = dict(zip(fields[::2], fields[1::2]))
            if job_id is None or d.get("job_id") == job_id:
                out.append(d)
        return out

    # --- S3
    def head(self, key):
        """HEAD of an object: the response dict, or None for 404."""
        try:
            return self.s3.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as e:
            if e.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
                return None
            raise

    def multipart_ids(self, key):
        """The S3 multipart upload ids in progress for `key`."""
        out = self.s3.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
        return [u["UploadId"] for u in out.get("Uploads", []) if u["Key"] == key]

    def get_bytes(self, key):
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()


def key_of(upload_id):
    return f"incoming/{upload_id}"


def s3_error_code(response):
    text = response.text
    return text.split("<Code>", 1)[1].split("</Code>", 1)[0] if "<Code>" in text else None


# --- SigV4: botocore as the independent reference ----------------------------------------------------------------

@contextlib.contextmanager
def frozen_botocore_clock(when):
    """botocore.auth reads datetime.datetime.utcnow() for the signing time (as tests/unit/common/sigv4_vectors.py
    freezes it); restored afterwards."""
    class Frozen(datetime.datetime):
        @classmethod
        def utcnow(cls):
            return when

    saved = botocore.auth.datetime
    botocore.auth.datetime = types.SimpleNamespace(datetime=Frozen)
    try:
        yield
    finally:
        botocore.auth.datetime = saved


AUTH_PARAMS = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders",
               "X-Amz-Signature", "X-Amz-Security-Token")


def botocore_presign_like(url, method, headers, access_key, secret_key):
    """Re-signs presigned `url` with botocore's S3SigV4QueryAuth from the same inputs (time, expiry, region and
    scope read from the URL; `headers` are the ones the client is told to send). Returns (ours, botocore's) query
    parameters as dicts."""
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    cred = query["X-Amz-Credential"].split("/")
    assert len(cred) == 5 and cred[0] == access_key and cred[3] == "s3" and cred[4] == "aws4_request", cred
    when = datetime.datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
    assert cred[1] == when.strftime("%Y%m%d"), cred
    operation = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
                 if k not in AUTH_PARAMS]
    bare = urllib.parse.urlunsplit(parts._replace(
        query=urllib.parse.urlencode(operation, quote_via=urllib.parse.quote)))
    request = AWSRequest(method=method, url=bare, headers=dict(headers or {}))
    signer = S3SigV4QueryAuth(Credentials(access_key, secret_key), "s3", cred[2], expires=int(query["X-Amz-Expires"]))
    with frozen_botocore_clock(when):
        signer.add_auth(request)
    theirs = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(request.url).query, keep_blank_values=True))
    return query, theirs


# --- S3 event messages ------------------------------------------------------------------------------------------

def aws_record(bucket, key, size, etag="d41d8cd98f00b204e9800998ecf8427e", event="ObjectCreated:Put",
               sequencer=None, encode_key=True):
    """One record in AWS's shape (S3 user guide, "Event message structure"): key form-urlencoded."""
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "eventName": event,
        "userIdentity": {"principalId": "AWS:TESTER"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": secrets.token_hex(8), "x-amz-id-2": secrets.token_hex(16)},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "files-manager-uploads",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "TESTER"}, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": urllib.parse.quote_plus(key) if encode_key else key, "size": size, "eTag": etag,
                       "sequencer": sequencer or secrets.token_hex(9).upper()},
        },
    }


def post_event(base, body, secret=EVENTS_SECRET, how="query", headers=None, timeout=15):
    """POSTs an event message (a dict is sent as JSON, bytes/str as they are)."""
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    url = base + "/v1/events/s3"
    if secret is not None and how == "query":
        url += "?secret=" + urllib.parse.quote(secret, safe="")
    elif secret is not None and how == "header":
        h["X-FM-Events-Secret"] = secret
    data = json.dumps(body) if isinstance(body, (dict, list)) else body
    return requests.post(url, data=data, headers=h, timeout=timeout)


def assert_no_partial_rows(fm, user, before):
    assert fm.row_counts(user) == before, "a refused request left rows behind"



# --- the bucket's notifications -----------------------------------------------------------------------------------

S3_CONFIG_FIELDS = ("Id", "TopicArn", "Events", "Filter")


def get_notifications(fm):
    """The bucket's topic configurations, in the form put_bucket_notification_configuration takes back."""
    cfg = fm.s3.get_bucket_notification_configuration(Bucket=fm.bucket)
    return [{k: v for k, v in c.items() if k in S3_CONFIG_FIELDS} for c in cfg.get("TopicConfigurations", [])]


def put_notifications(fm, configs):
    """Sets the bucket's topic configurations; [] removes them all (RGW refuses an empty configuration with
    MalformedXML, so that is its `DELETE /{bucket}?notification`, signed by botocore)."""
    if configs:
        fm.s3.put_bucket_notification_configuration(Bucket=fm.bucket,
                                                    NotificationConfiguration={"TopicConfigurations": configs})
        return
    env = fm.stack.env
    request = AWSRequest(method="DELETE", url=f"{env['FM_S3_ENDPOINT'].rstrip('/')}/{fm.bucket}?notification")
    S3SigV4Auth(Credentials(env["FM_S3_ACCESS_KEY"], env["FM_S3_SECRET_KEY"]), "s3",
                env["FM_S3_REGION"]).add_auth(request)
    r = requests.delete(request.url, headers=dict(request.headers), timeout=30)
    assert r.status_code in (200, 204), f"DELETE ?notification: {r.status_code} {r.text[:300]}"
    assert not get_notifications(fm)


@contextlib.contextmanager
def dedicated(controls, stack, cls=None, events=False, **env):
    """An fm-control of the module's own (`env`: its settings, FM_REDIS_URL of a Redis database of its own among
    them), wrapped in `cls` (Fm by default); the bucket's S3 events are off meanwhile unless `events`. At the end the
    helper's connections are closed and the instance stopped (exit status and sanitizer log checked)."""
    svc = controls.start(**env)
    f = (cls or Fm)(stack, svc)
    try:
        if events:
            yield f
        else:
            with notifications_off(f):  # no other control plane (and its worker) gets our uploads' events
                yield f
    finally:
        f.close()
        controls.stop(svc)


@contextlib.contextmanager
def notifications_off(fm):
    """No S3 event reaches any control plane inside (the `complete` calls and the reconciler are what is tested);
    the bucket's notifications are put back afterwards."""
    saved = get_notifications(fm)
    if saved:
        put_notifications(fm, [])
    try:
        yield
    finally:
        if saved:
            put_notifications(fm, saved)



@contextlib.contextmanager
def shared_uploads_fm(controls, stack):
    """An Fm on the shared upload instance (uploads_control), the bucket's notifications off while it is used."""
    f = Fm(stack, uploads_control(controls, stack))
    try:
        with notifications_off(f):
            yield f
    finally:
        f.close()

def cors_origins(fm):
    try:
        rules = fm.s3.get_bucket_cors(Bucket=fm.bucket)["CORSRules"]
    except botocore.exceptions.ClientError:
        return []
    return [o for rule in rules for o in rule.get("AllowedOrigins", [])]


def notifications_to(fm, url):
    """Points the bucket's notification (infra/lib/s3_prepare.py, immediate delivery) at `url`, keeping the CORS
    origins other tests set."""
    origins = cors_origins(fm)
    fm.stack.prepare_s3(events_url=url, persistent=False, web_origin=",".join(origins) if origins else None)
