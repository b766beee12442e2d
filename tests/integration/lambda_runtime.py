"""A local AWS Lambda runtime API (version 2018-06-01) for testing custom runtimes such as fm-worker's Lambda mode.

It speaks the documented protocol (AWS Lambda developer guide, "Using the Lambda runtime API for custom
runtimes") with its state machine, not canned answers:

  GET  /2018-06-01/runtime/invocation/next             blocks until an invocation is queued, then answers 200 with
                                                      the event and Lambda-Runtime-Aws-Request-Id,
                                                      Lambda-Runtime-Deadline-Ms, Lambda-Runtime-Invoked-Function-Arn,
                                                      Lambda-Runtime-Trace-Id; the invocation is then in flight
  POST /2018-06-01/runtime/invocation/{id}/response   202 for an in-flight id, 404 for an id never handed out,
                                                      400 for one already answered, 413 above 6 MB
  POST /2018-06-01/runtime/invocation/{id}/error      same, records the Lambda-Runtime-Function-Error-Type header
  POST /2018-06-01/runtime/init/error                 202 before the first /next, 403 after (init is over)

Tests queue invocations with enqueue() and wait for the runtime's answer with wait_answer(). Handler threads are
daemons and a blocked /next is released by stop(), so stopping never hangs.
"""
import contextlib
import json
import secrets
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREFIX = "/2018-06-01/runtime"
MAX_PAYLOAD = 6 * 1024 * 1024
DEFAULT_ARN = "arn:aws:lambda:us-east-1:123456789012:function:files-manager-worker"


class Invocation:
    def __init__(self, payload, request_id, deadline_ms, function_arn, trace_id, headers):
        self.payload = payload
        self.request_id = request_id
        self.deadline_ms = deadline_ms
        self.function_arn = function_arn
        self.trace_id = trace_id
        self.headers = headers  # replaces the standard headers when not None (malformed-runtime tests)
        self.state = "queued"  # queued -> in_flight -> answered


class Answer:
    """What the runtime posted for one request id."""

    def __init__(self, kind, body, error_type=None, content_type=None):
        self.kind = kind  # "response" or "error"
        self.body = body  # bytes as received
        self.error_type = error_type  # the Lambda-Runtime-Function-Error-Type header (errors)
        self.content_type = content_type
        self.next_calls = None  # how many /next calls the runtime had made when it answered

    def json(self):
        return json.loads(self.body)


class LambdaRuntime:
    def __init__(self, host="127.0.0.1"):
        self.cond = threading.Condition()
        self.queue = []  # Invocations not yet handed out, in order
        self.by_id = {}  # request id -> Invocation (every one handed out or queued)
        self.answers = {}  # request id -> Answer
        self.answer_order = []  # request ids in the order they were answered
        self.init_errors = []  # Answers posted to /init/error
        self.next_calls = 0  # GET /next requests received
        self.rejected = []  # (method, path, status) of every request refused
        self.stopping = False
        runtime = self

        class Handler(RuntimeHandler):
            pass

        Handler.runtime = runtime
        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.address = f"{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="lambda-runtime", daemon=True)
        self.thread.start()

    # --- test side -------------------------------------------------------------------------------------------
    def enqueue(self, payload, *, request_id=None, deadline_ms=None, trace_id=None, function_arn=DEFAULT_ARN,
                headers=None):
        """Queues an invocation (payload: bytes, str or a JSON-able object); returns its request id."""
        if not isinstance(payload, (bytes, str)):
            payload = json.dumps(payload)
        if isinstance(payload, str):
            payload = payload.encode()
        request_id = request_id or str(uuid.uuid4())
        if deadline_ms is None:
            deadline_ms = int(time.time() * 1000) + 30_000
        if trace_id is None:
            trace_id = f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Parent={uuid.uuid4().hex[:16]};Sampled=1"
        inv = Invocation(payload, request_id, deadline_ms, function_arn, trace_id, headers)
        with self.cond:
            self.queue.append(inv)
            self.by_id.setdefault(request_id, inv)
            self.cond.notify_all()
        return request_id

    def wait_answer(self, request_id, timeout=20):
        """The Answer posted for request_id; raises TimeoutError when none came in `timeout` seconds."""
        with self.cond:
            if not self.cond.wait_for(lambda: request_id in self.answers, timeout):
                raise TimeoutError(f"no answer for {request_id} in {timeout} s")
            return self.answers[request_id]

    def wait_init_error(self, timeout=20):
        with self.cond:
            if not self.cond.wait_for(lambda: self.init_errors, timeout):
                raise TimeoutError(f"no /init/error in {timeout} s")
            return self.init_errors[0]

    def wait_next_calls(self, count, timeout=20):
        """Waits until the runtime has asked /next `count` times (it is then waiting for an event)."""
        with self.cond:
            if not self.cond.wait_for(lambda: self.next_calls >= count, timeout):
                raise TimeoutError(f"/next called {self.next_calls} times, not {count}, in {timeout} s")

    def stop(self):
        with self.cond:
            if self.stopping:
                return
            self.stopping = True
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    # --- server side (called by the handler threads) -----------------------------------------------------
    def take_next(self):
        """Blocks until an invocation is queued; None when stopping."""
        with self.cond:
            self.next_calls += 1
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.queue or self.stopping)
            if self.stopping:
                return None
            inv = self.queue.pop(0)
            inv.state = "in_flight"
            return inv

    def record(self, request_id, answer):
        """202, or the error status and document of the runtime API."""
        with self.cond:
            inv = self.by_id.get(request_id)
            if inv is None or inv.state == "queued":
                return 404, {"errorMessage": f"unknown request id {request_id}", "errorType": "InvalidRequestID"}
            if inv.state == "answered":
                return 400, {"errorMessage": f"{request_id} was already answered",
                             "errorType": "InvalidStateTransition"}
            inv.state = "answered"
            answer.next_calls = self.next_calls
            self.answers[request_id] = answer
            self.answer_order.append(request_id)
            self.cond.notify_all()
            return 202, {"status": "OK"}

    def record_init_error(self, answer):
        with self.cond:
            if self.next_calls > 0:
                return 403, {"errorMessage": "init is over: /next was already called",
                             "errorType": "InvalidStateTransition"}
            self.init_errors.append(answer)
            self.cond.notify_all()
            return 202, {"status": "OK"}


class RuntimeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real runtime API: clients reuse one connection
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall between
    runtime = None

    def log_message(self, fmt, *args):
        pass

    def send_json(self, status, doc, headers=None):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        if status >= 400:
            with self.runtime.cond:
                self.runtime.rejected.append((self.command, self.path, status))

    def do_GET(self):
        if self.path != PREFIX + "/invocation/next":
            return self.send_json(404, {"errorMessage": "not found", "errorType": "NotFound"})
        inv = self.runtime.take_next()
        if inv is None:
            return self.send_json(500, {"errorMessage": "runtime API stopping", "errorType": "Runtime.ExitError"})
        if inv.headers is not None:
            headers = inv.headers
        else:
            headers = {"Lambda-Runtime-Aws-Request-Id": inv.request_id,
                       "Lambda-Runtime-Deadline-Ms": str(inv.deadline_ms),
                       "Lambda-Runtime-Invoked-Function-Arn": inv.function_arn,
                       "Lambda-Runtime-Trace-Id": inv.trace_id}
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(inv.payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(inv.payload)

    def read_body(self):
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.send_json(411, {"errorMessage": "Content-Length required", "errorType": "LengthRequired"})
            return None
        length = int(length)
        if length > MAX_PAYLOAD:
            # Read it anyway so the connection stays usable, then refuse as Lambda does.
            self.rfile.read(length)
            self.send_json(413, {"errorMessage": f"payload of {length} bytes is over {MAX_PAYLOAD}",
                                 "errorType": "RequestEntityTooLarge"})
            return None
        return self.rfile.read(length)

    def do_POST(self):
        path = self.path
        if path == PREFIX + "/init/error":
            body = self.read_body()
            if body is None:
                return
            answer = Answer("init_error", body, self.headers.get("Lambda-Runtime-Function-Error-Type"),
                            self.headers.get("Content-Type"))
            return self.send_json(*self.runtime.record_init_error(answer))
        parts = path[len(PREFIX):].split("/") if path.startswith(PREFIX + "/invocation/") else []
        # ["", "invocation", "{id}", "response" | "error"]
        if len(parts) != 4 or parts[3] not in ("response", "error") or not parts[2]:
            length = self.headers.get("Content-Length", "0")
            self.rfile.read(int(length) if length.isdigit() else 0)
            return self.send_json(404, {"errorMessage": "not found", "errorType": "NotFound"})
        body = self.read_body()
        if body is None:
            return
        kind = parts[3]
        error_type = self.headers.get("Lambda-Runtime-Function-Error-Type") if kind == "error" else None
        answer = Answer(kind, body, error_type, self.headers.get("Content-Type"))
        return self.send_json(*self.runtime.record(parts[2], answer))


@contextlib.contextmanager
def lambda_worker(pool, log_dir, name="lambda"):
    """fm-worker in Lambda mode (AWS_LAMBDA_RUNTIME_API) against a fresh LambdaRuntime, with the settings of the
    suite's worker `pool`. Yields (runtime, process, log path); at the end the process is killed if still running,
    the runtime stopped, and -- when the block passed -- its log checked for sanitizer reports."""
    from conftest import BUILD_DIR, SANITIZER_REPORT

    api = LambdaRuntime()
    env = pool.workers.controls.env(**pool.env(AWS_LAMBDA_RUNTIME_API=api.address))
    log_path = log_dir / f"fm-worker-{name}-{secrets.token_hex(4)}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(BUILD_DIR / "fm-worker")], env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        yield api, proc, log_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        api.stop()
    text = log_path.read_text(errors="replace")
    assert not SANITIZER_REPORT.search(text), text[-4000:]
