"""fm-worker's AWS Lambda mode (lambda-workers/lambda.c) against a local runtime API that follows the documented
protocol (lambda_runtime.py), through tests/tools/fm_lambda_echo: a runtime whose handler reads the S3 event with
fm_lambda_s3_records() and echoes the records, request id, deadline and trace id it was given.

No stack needed. Binaries come from FM_BUILD_DIR (conftest.BUILD_DIR); with an ASan build there, a sanitizer
report in the runtime's log fails the test. Every process started here is killed at teardown, pass or fail.
"""
import os
import subprocess
import time

import pytest

from conftest import BUILD_DIR, SANITIZER_REPORT, sanitizer_env
from lambda_runtime import LambdaRuntime

ECHO = BUILD_DIR / "fm_lambda_echo"


def aws_s3_put_event(key, bucket="amzn-s3-demo-bucket", size=1024, etag="0123456789abcdef0123456789abcdef"):
    """The Lambda console's "s3-put" sample event (Lambda developer guide, "Using AWS Lambda with Amazon S3"),
    with `key` as S3 sends it: form-urlencoded (spaces as '+', the rest %-encoded)."""
    return {"Records": [{
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "1970-01-01T00:00:00.000Z",
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "EXAMPLE"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": "EXAMPLE123456789",
                             "x-amz-id-2": "EXAMPLE123/5678abcdefghijklambdaisawesome/mnopqrstuvwxyzABCDEFGH"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "testConfigRule",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "EXAMPLE"},
                       "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": key, "size": size, "eTag": etag, "sequencer": "0A1B2C3D4E5F678901"},
        },
    }]}


class Runtime:
    """One fm_lambda_echo process, logging to a file."""

    def __init__(self, proc, log_path):
        self.proc, self.log_path = proc, log_path

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait(self, timeout=20):
        """The exit status; fails the test if the process is still running after `timeout` seconds."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"fm_lambda_echo still running after {timeout} s:\n{self.log_text()[-3000:]}")

    def assert_clean_exit(self, timeout=20):
        rc = self.wait(timeout)
        assert rc == 0, f"fm_lambda_echo exited with {rc}:\n{self.log_text()[-3000:]}"


@pytest.fixture
def runtime_api():
    api = LambdaRuntime()
    yield api
    api.stop()


@pytest.fixture
def start_runtime(runtime_api, tmp_path):
    """start_runtime(max_invocations=None, **env) starts fm_lambda_echo against runtime_api."""
    assert ECHO.exists(), f"{ECHO} not built: cmake --build {BUILD_DIR} --target fm_lambda_echo"
    started = []

    def start(max_invocations=None, **env_overrides):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FM_", "AWS_", "_X_AMZN"))}
        env.update(sanitizer_env())
        env["AWS_LAMBDA_RUNTIME_API"] = runtime_api.address
        env.update({k: str(v) for k, v in env_overrides.items()})
        log_path = tmp_path / f"fm_lambda_echo-{len(started)}.log"
        args = [str(ECHO)] + ([str(max_invocations)] if max_invocations is not None else [])
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        started.append(Runtime(proc, log_path))
        return started[-1]

    yield start
    reports = []
    for rt in started:
        if rt.proc.poll() is None:
            rt.proc.kill()
            rt.proc.wait()
        if SANITIZER_REPORT.search(rt.log_text()):
            reports.append(f"sanitizer report in {rt.log_path}:\n{rt.log_text()[-6000:]}")
    assert not reports, "\n\n".join(reports)


def test_aws_s3_event_reaches_the_handler_with_the_key_decoded(runtime_api, start_runtime):
    rt = start_runtime(max_invocations=1)
    rid = runtime_api.enqueue(aws_s3_put_event("incoming/summer+holiday%2B2024%2F%C3%A9t%C3%A9+%281%29.jpg",
                                               size=52_428_800, etag="d41d8cd98f00b204e9800998ecf8427e-7"))
    answer = runtime_api.wait_answer(rid)
    assert answer.kind == "response", answer.body
    assert answer.content_type == "application/json"
    doc = answer.json()
    assert doc["records"] == [{"bucket": "amzn-s3-demo-bucket", "key": "incoming/summer holiday+2024/été (1).jpg",
                               "size": 52_428_800, "etag": "d41d8cd98f00b204e9800998ecf8427e-7",
                               "kind": "created"}]
    assert doc["request_id"] == rid and doc["test_event"] is False
    rt.assert_clean_exit()


def test_three_invocations_in_a_row_are_answered_in_order(runtime_api, start_runtime):
    rt = start_runtime(max_invocations=3)
    keys = ["incoming/one.txt", "incoming/two+words.txt", "incoming/three%25.txt"]
    ids = [runtime_api.enqueue(aws_s3_put_event(key, size=i)) for i, key in enumerate(keys)]
    answers = [runtime_api.wait_answer(rid) for rid in ids]
    assert runtime_api.answer_order == ids
    assert [a.json()["records"][0]["key"] for a in answers] == ["incoming/one.txt", "incoming/two words.txt",
                                                                 "incoming/three%.txt"]
    assert [a.json()["records"][0]["size"] for a in answers] == [0, 1, 2]
    rt.assert_clean_exit()
    assert runtime_api.rejected == []


def test_one_invocation_at_a_time(runtime_api, start_runtime):
    """The runtime answers each event before it asks /next again, and then waits for more."""
    start_runtime()
    ids = [runtime_api.enqueue(aws_s3_put_event(f"incoming/{name}")) for name in ("a", "b", "c")]
    answers = [runtime_api.wait_answer(rid) for rid in ids]
    assert [a.next_calls for a in answers] == [1, 2, 3]
    runtime_api.wait_next_calls(4)  # blocked in the long poll, not gone
    late = runtime_api.enqueue(aws_s3_put_event("incoming/late"))
    assert runtime_api.wait_answer(late).json()["records"][0]["key"] == "incoming/late"


def test_a_failing_invocation_posts_the_error_document(runtime_api, start_runtime):
    rt = start_runtime(max_invocations=2)
    failing = runtime_api.enqueue({"fail": True})
    after = runtime_api.enqueue(aws_s3_put_event("incoming/after-the-error.bin"))
    answer = runtime_api.wait_answer(failing)
    assert answer.kind == "error"
    assert answer.error_type == "Files.ProcessingError"
    doc = answer.json()
    assert doc["errorType"] == "Files.ProcessingError"
    assert doc["errorMessage"] == "the event asked to fail"
    assert doc.get("stackTrace") == []
    # The runtime goes on with the next event.
    assert runtime_api.wait_answer(after).json()["records"][0]["key"] == "incoming/after-the-error.bin"
    rt.assert_clean_exit()


@pytest.mark.parametrize("payload, message", [
    ({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                   "s3": {"bucket": {"name": "b"}, "object": {"size": 1}}}]}, "key"),
    ({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                   "s3": {"bucket": {"name": "b"}, "object": {"key": "bad%zzkey", "size": 1}}}]}, "key"),
    ("{not json", ""),
])
def test_an_event_the_parser_refuses_is_a_processing_error(runtime_api, start_runtime, payload, message):
    rt = start_runtime(max_invocations=1)
    rid = runtime_api.enqueue(payload)
    answer = runtime_api.wait_answer(rid)
    assert answer.kind == "error" and answer.error_type == "Files.ProcessingError"
    assert message in answer.json()["errorMessage"]
    assert answer.json()["errorMessage"] != ""
    rt.assert_clean_exit()


def test_s3_test_event_has_no_records(runtime_api, start_runtime):
    rt = start_runtime(max_invocations=1)
    rid = runtime_api.enqueue({"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2014-10-13T15:57:02.089Z",
                               "Bucket": "amzn-s3-demo-bucket", "RequestId": "5582815E1AEA5ADF",
                               "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE"})
    doc = runtime_api.wait_answer(rid).json()
    assert doc["records"] == [] and doc["test_event"] is True
    rt.assert_clean_exit()


def test_init_failure_is_reported_and_the_process_exits_non_zero(runtime_api, start_runtime):
    rt = start_runtime(FM_TEST_INIT_FAIL=1)
    init_error = runtime_api.wait_init_error()
    assert init_error.error_type == "Files.InitError"
    doc = init_error.json()
    assert doc["errorType"] == "Files.InitError"
    assert "FM_TEST_INIT_FAIL" in doc["errorMessage"]
    rc = rt.wait()
    assert rc == 1, f"exit status {rc}:\n{rt.log_text()}"  # fm_lambda_run() failed: an exit, not a crash
    assert runtime_api.next_calls == 0  # it never asked for an event


def test_deadline_and_trace_id_reach_the_handler(runtime_api, start_runtime):
    rt = start_runtime(max_invocations=2)
    deadline = int(time.time() * 1000) + 123_456
    trace = "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419;Sampled=1"
    first = runtime_api.enqueue(aws_s3_put_event("incoming/x"), deadline_ms=deadline, trace_id=trace)
    second = runtime_api.enqueue(aws_s3_put_event("incoming/y"), deadline_ms=deadline + 1,
                                 headers={"Lambda-Runtime-Aws-Request-Id": "req-without-trace",
                                          "Lambda-Runtime-Deadline-Ms": str(deadline + 1)},
                                 request_id="req-without-trace")
    doc = runtime_api.wait_answer(first).json()
    assert doc["deadline_ms"] == deadline
    assert doc["trace_id"] == trace  # exported as _X_AMZN_TRACE_ID
    doc = runtime_api.wait_answer(second).json()
    assert doc["deadline_ms"] == deadline + 1
    assert doc["trace_id"] is None  # not inherited from the previous invocation
    rt.assert_clean_exit()


@pytest.mark.parametrize("headers", [
    {"Lambda-Runtime-Deadline-Ms": "1542409706888"},  # no request id at all
    {"Lambda-Runtime-Aws-Request-Id": "../../init/error", "Lambda-Runtime-Deadline-Ms": "1542409706888"},
    {"Lambda-Runtime-Aws-Request-Id": "", "Lambda-Runtime-Deadline-Ms": "1542409706888"},
])
def test_an_event_without_a_usable_request_id_is_skipped(runtime_api, start_runtime, headers):
    rt = start_runtime(max_invocations=2)
    bad = runtime_api.enqueue(aws_s3_put_event("incoming/lost"), headers=headers)
    good = runtime_api.enqueue(aws_s3_put_event("incoming/kept"))
    assert runtime_api.wait_answer(good).json()["records"][0]["key"] == "incoming/kept"
    rt.assert_clean_exit()
    assert bad not in runtime_api.answers
    assert runtime_api.init_errors == [] and runtime_api.rejected == []
    assert "Lambda-Runtime-Aws-Request-Id" in rt.log_text()


def test_a_payload_over_6_mb_is_answered_with_an_error(runtime_api, start_runtime):
    rt = start_runtime(max_invocations=2)
    big = runtime_api.enqueue(b'{"padding":"' + b"x" * (6 * 1024 * 1024) + b'"}')
    after = runtime_api.enqueue(aws_s3_put_event("incoming/after-big"))
    answer = runtime_api.wait_answer(big)
    assert answer.kind == "error" and answer.error_type == "Files.PayloadTooLarge"
    assert runtime_api.wait_answer(after).kind == "response"
    rt.assert_clean_exit()


def test_the_runtime_exits_when_the_runtime_api_fails(runtime_api, start_runtime):
    """A 500 from the runtime API means "exit promptly" (and so does an unreachable API)."""
    rt = start_runtime()
    runtime_api.wait_next_calls(1)
    runtime_api.stop()  # the pending /next is answered 500 and the listener closes
    rc = rt.wait()
    assert rc == 1, f"exit status {rc}:\n{rt.log_text()}"
    assert "answered 500" in rt.log_text()
