"""HTTP/1 message framing (issue 10 #10): h2o 2.2.5 takes the first of two Content-Length headers and lets
Transfer-Encoding win over Content-Length, then keeps the connection. Behind a proxy that reads the other value, the
bytes after the body become a request of the attacker's choosing (request smuggling). Our request layer
(common/http.c, shared by fm-control, fm-edge and fm-worker's health port) answers such requests 400
`ambiguous_framing` with `Connection: close` and really closes: a request pipelined behind one gets no answer.

Raw sockets only (requests/http.client would not send these heads).
Run: /usr/bin/python3 -m pytest -q tests/integration/test_http_framing.py
"""
import json
import re
import socket
import ssl
import subprocess

import pytest

from stackfixture import free_ports

SMUGGLED = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


def exchange(port, data, timeout=3.0, tls=False):
    """Sends `data` on a fresh connection and reads until the server closes it or `timeout` passes.
    Returns (bytes received, closed_by_server)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock = raw
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
        sock = ctx.wrap_socket(raw, server_hostname="localhost")
    received, closed = b"", False
    try:
        sock.sendall(data)
        while True:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            except (ConnectionResetError, ssl.SSLError):
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
    finally:
        sock.close()
    return received, closed


def answers(received):
    """The status codes of the answers in `received`, in order."""
    return [int(m.group(1)) for m in STATUS_LINE.finditer(received)]


def error_body(received):
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
    return head, json.loads(body[:length])


def assert_refused_and_closed(port, data, tls=False):
    received, closed = exchange(port, data, tls=tls)
    assert answers(received) == [400], f"expected one 400 and nothing for the pipelined request: {received[:600]!r}"
    head, body = error_body(received)
    assert re.search(rb"(?i)\r\nconnection: *close\r\n", head), head
    assert body["error"]["code"] == "ambiguous_framing", body
    assert closed, "the server kept the connection open after an ambiguous request"


def post_head(path, *framing):
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
            + b"".join(h + b"\r\n" for h in framing) + b"\r\n")


@pytest.fixture(scope="module")
def port(control):
    return control.port


def test_conflicting_content_lengths_are_refused_and_the_connection_closed(port):
    # h2o reads a 0-byte body; "{\"a\"" would be 5 more bytes to a proxy that took the second value
    data = post_head("/v1/auth/login", b"Content-Length: 0", b"Content-Length: 5") + SMUGGLED
    assert_refused_and_closed(port, data)


def test_repeated_equal_content_length_is_refused(port):
    body = b'{"a":1}'
    data = post_head("/v1/auth/login", b"Content-Length: 7", b"content-length: 7") + body + SMUGGLED
    assert_refused_and_closed(port, data)


@pytest.mark.parametrize("order", ["te_first", "cl_first"])
def test_transfer_encoding_with_content_length_is_refused_and_closed(port, order):
    te, cl = b"Transfer-Encoding: chunked", b"Content-Length: 4"
    framing = (te, cl) if order == "te_first" else (cl, te)
    data = post_head("/v1/auth/login", *framing) + b"7\r\n{\"a\":1}\r\n0\r\n\r\n" + SMUGGLED
    assert_refused_and_closed(port, data)


def test_repeated_transfer_encoding_is_refused(port):
    data = post_head("/v1/auth/login", b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked")
    data += b"7\r\n{\"a\":1}\r\n0\r\n\r\n" + SMUGGLED
    assert_refused_and_closed(port, data)


def test_plain_pipelined_requests_are_still_answered(port):
    """One framing header per request is fine, and the check reads each request's own head: a body and a previous
    request on the same connection are not mistaken for headers."""
    body = b'{"email":"nobody@example.test","password":"x"}'
    first = post_head("/v1/auth/login", b"Content-Length: %d" % len(body)) + body
    data = first + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    received, closed = exchange(port, data)
    assert answers(received) == [401, 200], received[:800]  # wrong password, then the health check
    assert closed  # by the second request's Connection: close


def test_ambiguous_second_request_of_a_connection_is_refused(port):
    """The second request's head is judged too (the connection's buffer starts at it once the first is answered)."""
    data = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    data += post_head("/v1/auth/login", b"Content-Length: 0", b"Content-Length: 5") + SMUGGLED
    received, closed = exchange(port, data)
    assert answers(received) == [200, 400], received[:800]
    assert closed


def test_edge_refuses_ambiguous_framing(edges):
    """fm-edge answers through the same request layer."""
    edge = edges.start()
    data = (b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n" + SMUGGLED)
    assert_refused_and_closed(edge.port, data)
    edges.stop(edge)


@pytest.fixture(scope="module")
def tls_control(controls, tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "2", "-subj", "/CN=localhost", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True)
    https_port = free_ports(1)[0]
    svc = controls.start(FM_HTTPS_PORT=https_port, FM_TLS_CERT=d / "cert.pem", FM_TLS_KEY=d / "key.pem")
    svc.https_port = https_port
    yield svc
    controls.stop(svc)


def test_ambiguous_framing_is_refused_over_tls(tls_control):
    data = post_head("/v1/auth/login", b"Content-Length: 0", b"Content-Length: 5") + SMUGGLED
    assert_refused_and_closed(tls_control.https_port, data, tls=True)
