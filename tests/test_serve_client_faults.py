"""``mnist-lightning serve`` against clients that stall, lie about their body, or leave: a 4xx and one log line each.

The server is the real console script on a free port of 127.0.0.1 with a real checkpoint (the MLP of
``tests/fixtures/checkpoints_0_1``) and ``--request_timeout 2``; requests are bytes written on a raw socket, since
stalling and lying bodies exist only there. Its log (stdout and stderr) is read line by line: after each fault the
test sends a marker request, and the lines between are the fault's own.
"""

from __future__ import annotations

import base64
import io
import json
import re
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import MNIST_DIR, subprocess_env
from digit_helpers import digit_png, wait_for_address
from PIL import Image

from mnist_lightning.checkpoints import load_classifier
from mnist_lightning.data import load_split
from mnist_lightning.serving.serve import predict_drawing

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "checkpoints_0_1"
TIMEOUT_S = 2  # the server's --request_timeout here
HEAD = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


class Server:
    """A running ``mnist-lightning serve`` and its log lines as they arrive."""

    def __init__(self, process: subprocess.Popen[str], address: tuple[str, int]) -> None:
        self.process, self.address = process, address
        self.lines: list[str] = []
        self.arrived = threading.Condition()  # notified for every new line
        threading.Thread(target=self.read_log, daemon=True).start()

    def read_log(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            with self.arrived:
                self.lines.append(line.rstrip("\n"))
                self.arrived.notify_all()

    def wait(self, until: Callable[[], bool], message: Callable[[], str]) -> None:
        """Until ``until()`` holds for the lines so far (checked as each arrives), at most 60 s."""
        with self.arrived:
            assert self.arrived.wait_for(until, timeout=60), message()

    def lines_of(self, action: Callable[[], object], wait_for: int = 0) -> tuple[object, list[str]]:
        """What ``action`` returns, and the log lines the server wrote for it: those before a marker request sent
        once ``action`` has returned and ``wait_for`` new lines have appeared (for faults the client does not wait
        to hear about)."""
        first = len(self.lines)
        result = action()
        self.wait(lambda: len(self.lines) - first >= wait_for, lambda: f"no log line: {self.lines[first:]}")
        marker = f"/marker-{uuid.uuid4().hex}"
        status, _, _ = exchange(self.address, f"GET {marker} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert status == 404
        self.wait(
            lambda: any(marker in line for line in self.lines[first:]),
            lambda: f"the marker never reached the log: {self.lines[first:]}",
        )
        lines = self.lines[first:]
        return result, [line for line in lines if marker not in line]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    exe = Path(sys.executable).with_name("mnist-lightning")
    args = ["serve", "--ckpt_path", str(FIXTURES / "mlp.ckpt"), "--host", "127.0.0.1", "--port", "0"]
    process = subprocess.Popen(
        [str(exe), *args, "--request_timeout", str(TIMEOUT_S)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**subprocess_env(), "OMP_NUM_THREADS": "1"},
    )
    try:
        url = wait_for_address(process, timeout=120)
        host, port = re.match(r"http://([\d.]+):(\d+)/", url).groups()  # type: ignore[union-attr]
        yield Server(process, (host, int(port)))
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def digit_png_bytes() -> bytes:
    """A real MNIST test digit as the page's PNG."""
    images, _ = load_split(MNIST_DIR, train=False)
    return digit_png(images[0].numpy())


@pytest.fixture(scope="module")
def digit_body(digit_png_bytes: bytes) -> bytes:
    """The page's request body for that digit."""
    return json.dumps({"image": "data:image/png;base64," + base64.b64encode(digit_png_bytes).decode()}).encode()


def parse(answer: bytes) -> tuple[int | None, dict[str, str], bytes]:
    if not answer.startswith(b"HTTP/"):
        return None, {}, answer
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in header_lines)}
    return int(status_line.split()[1]), headers, body


def receive_all(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    answer = b""
    try:
        while chunk := connection.recv(65536):
            answer += chunk
    except ConnectionResetError:
        pass
    return answer


def exchange(
    address: tuple[str, int], data: bytes, half_close: bool = False, trickle: float | None = None
) -> tuple[int | None, dict[str, str], bytes]:
    """Send ``data`` (all at once, or a byte every ``trickle`` seconds until the server answers), optionally close
    the sending side, and read the answer until the server closes."""
    with socket.create_connection(address, timeout=60) as connection:
        if trickle is None:
            connection.sendall(data)
        else:
            for byte in data:
                if select.select([connection], [], [], trickle)[0]:
                    break  # the server has answered (or closed)
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    break
        if half_close:
            connection.shutdown(socket.SHUT_WR)
        return parse(receive_all(connection))


def assert_fault(server: Server, data: bytes, status: int, phrase: str, **how: object) -> list[str]:
    """The answer is ``status`` with ``{"error": ...phrase...}``, and the log has one line about it, no traceback."""
    (answer_status, headers, body), lines = server.lines_of(lambda: exchange(server.address, data, **how))
    assert answer_status == status, (answer_status, body[:300], lines)
    assert headers.get("content-type") == "application/json"
    error = json.loads(body)
    assert list(error) == ["error"] and phrase in error["error"], error
    assert len(lines) == 1, lines
    assert f"-> {status}: " in lines[0] and phrase in lines[0], lines
    return lines


def post(body: bytes, content_type: str = "application/json", path: str = "/predict") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def test_a_good_request_is_answered_and_not_logged(server: Server, digit_png_bytes: bytes, digit_body: bytes) -> None:
    """The baseline the faults below are compared with: a drawing answered as in this process, no line logged."""
    (status, _, body), lines = server.lines_of(lambda: exchange(server.address, post(digit_body)))
    assert status == 200, body[:300]
    answer = json.loads(body)
    expected = predict_drawing(load_classifier(FIXTURES / "mlp.ckpt"), Image.open(io.BytesIO(digit_png_bytes)))
    assert answer["prediction"] == expected["prediction"]
    assert answer["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)
    assert lines == []


# -- a body that stalls, and headers that trickle: 408 once the request's deadline has passed --------------------------

STALLS = {
    "body-partly-sent": (HEAD + b'Content-Length: 100\r\n\r\n{"im', "the body did not arrive within 2 s"),
    "body-never-sent": (HEAD + b"Content-Length: 100\r\n\r\n", "(Content-Length said 100 bytes)"),
    "chunk-partly-sent": (HEAD + b'Transfer-Encoding: chunked\r\n\r\n10\r\n{"im', "the chunked body did not arrive"),
    "last-chunk-never-sent": (HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n", "the chunked body did not"),
    "headers-unfinished": (HEAD, "the request's headers did not arrive within 2 s"),
    "request-line-unfinished": (b"POST /predi", "the request's headers did not arrive"),
    "nothing-sent": (b"", "no request arrived within 2 s"),
}


@pytest.mark.parametrize("case", list(STALLS))
def test_a_stalled_request_gets_408_and_one_log_line(server: Server, case: str) -> None:
    data, phrase = STALLS[case]
    assert_fault(server, data, 408, phrase)


@pytest.mark.parametrize("part", ["headers", "body"])
def test_a_request_trickled_byte_by_byte_gets_408(server: Server, digit_body: bytes, part: str) -> None:
    """Slowloris: every byte comes well within any per-read timeout, the whole request not within the deadline."""
    head = HEAD + b"Content-Length: %d\r\n\r\n" % len(digit_body)
    if part == "headers":
        assert_fault(server, head + digit_body, 408, "the request's headers did not arrive", trickle=0.2)
    else:  # the headers at once, then the body a byte at a time

        def send() -> tuple[int | None, dict[str, str], bytes]:
            with socket.create_connection(server.address, timeout=60) as connection:
                connection.sendall(head)
                for byte in digit_body:
                    if select.select([connection], [], [], 0.2)[0]:
                        break
                    connection.sendall(bytes([byte]))
                return parse(receive_all(connection))

        (status, _, body), lines = server.lines_of(send)
        assert status == 408 and "the body did not arrive within 2 s" in json.loads(body)["error"]
        assert len(lines) == 1 and "-> 408: " in lines[0], lines


# -- framing that lies or that this server does not take ------------------------------------------------------------

LIES = {
    "length-not-a-number": (b"Content-Length: abc\r\n\r\n{}", 400, "Content-Length 'abc' is not a number of bytes"),
    "length-decimal": (b"Content-Length: 2.0\r\n\r\n{}", 400, "Content-Length '2.0' is not a number"),
    "length-signed": (b"Content-Length: +2\r\n\r\n{}", 400, "Content-Length '+2' is not a number"),
    "length-negative": (b"Content-Length: -5\r\n\r\n{}", 400, "Content-Length '-5' is not a number"),
    "length-hexadecimal": (b"Content-Length: 0x2\r\n\r\n{}", 400, "Content-Length '0x2' is not a number"),
    "length-empty": (b"Content-Length: \r\n\r\n{}", 400, "Content-Length '' is not a number"),
    "length-twice": (b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400, "given more than once (2, 3)"),
    "length-list": (b"Content-Length: 2, 3\r\n\r\n{}", 400, "given more than once (2, 3)"),
    "length-huge": (b"Content-Length: " + b"9" * 40 + b"\r\n\r\n{}", 413, "the body is over 4 MB"),
    "length-over-limit": (b"Content-Length: %d\r\n\r\n{}" % (4 * 2**20 + 1), 413, "the body is over 4 MB"),
    "length-shorter-than-body": (b'Content-Length: 5\r\n\r\n{"image": ""}', 400, "the body is not valid JSON"),
    "no-length": (b"\r\n", 411, "a POST needs a Content-Length header"),
    "coding-gzip": (b"Transfer-Encoding: gzip\r\n\r\n{}", 400, "Transfer-Encoding gzip is not supported"),
    "coding-gzip-chunked": (b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400, "gzip, chunked is not"),
    "chunked-and-length": (
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        400,
        "both Transfer-Encoding and Content-Length",
    ),
    "chunk-size-not-hexadecimal": (b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "chunk size 'zz' is not"),
    "chunk-longer-than-its-size": (
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}}}\r\n0\r\n\r\n",
        400,
        "a chunk is longer than its size says",
    ),
    "chunk-over-limit": (b"Transfer-Encoding: chunked\r\n\r\n500000\r\n{", 413, "the body is over 4 MB"),
}


@pytest.mark.parametrize("case", list(LIES))
def test_a_lying_or_unsupported_framing_gets_a_4xx_and_one_log_line(server: Server, case: str) -> None:
    rest, status, phrase = LIES[case]
    assert_fault(server, HEAD + rest, status, phrase)


@pytest.mark.parametrize(
    ("rest", "phrase"),
    [
        (b"Content-Length: 100\r\n\r\n{}", "the body ended after 2 of its 100 bytes"),
        (b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n", "the chunked body ended before its last"),
        (b"Transfer-Encoding: chunked\r\n\r\n10\r\n{}", "a chunk ended after 2 of its 16 bytes"),
    ],
    ids=["length", "no-last-chunk", "short-chunk"],
)
def test_a_body_shorter_than_announced_then_closed_gets_400(server: Server, rest: bytes, phrase: str) -> None:
    """The client stops sending (it closes its side) before the bytes it announced: 400 at once, no waiting."""
    assert_fault(server, HEAD + rest, 400, phrase, half_close=True)


# -- bodies and routes the app refuses: the same single line ---------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status", "phrase"),
    [
        (post(b"{not json"), 400, "the body is not valid JSON"),
        (post(b""), 400, "the body is not valid JSON"),
        (post(b"[]"), 400, "is a JSON array, not an object"),
        (post(b'{"image": 7}'), 400, '"image" is a JSON number'),
        (post(json.dumps({"image": base64.b64encode(b"not a picture").decode()}).encode()), 400, "not an image"),
        (post(b'{"image": "data:text/plain;base64,aGk="}'), 415, "data URL of text/plain"),
        (post(b"{}", content_type="text/plain"), 415, "Content-Type is text/plain"),
        (post(b"{}", path="/nowhere"), 404, "no page at /nowhere"),
        (b"GET /predict HTTP/1.1\r\nHost: x\r\n\r\n", 405, "GET is not allowed on /predict"),
        (b"HELLO THERE\r\n\r\n", 400, "Bad HTTP/0.9 request type"),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"\r\n", 431, "Too many"),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414, "the request line is over 64 kB"),
    ],
    ids=[
        "not-json",
        "empty-body",
        "json-array",
        "image-number",
        "not-an-image",
        "text-data-url",
        "wrong-content-type",
        "unknown-path",
        "wrong-method",
        "garbled-request-line",
        "many-headers",
        "long-request-line",
    ],
)
def test_a_request_the_server_refuses_is_one_log_line(server: Server, data: bytes, status: int, phrase: str) -> None:
    assert_fault(server, data, status, phrase)


# -- clients that leave -------------------------------------------------------------------------------------------


def reset(connection: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed client or a dropped network does."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_client_that_leaves_mid_body_is_one_log_line(server: Server, how: str) -> None:
    def leave() -> None:
        connection = socket.create_connection(server.address, timeout=60)
        connection.sendall(HEAD + b'Content-Length: 100\r\n\r\n{"im')
        time.sleep(0.2)  # let the server start reading the body
        reset(connection) if how == "reset" else connection.close()

    _, lines = server.lines_of(leave, wait_for=1)
    assert len(lines) == 1, lines
    expected = "the client closed the connection" if how == "reset" else "the body ended after 4 of its 100 bytes"
    assert "POST /predict" in lines[0] and expected in lines[0], lines


def test_the_log_has_no_traceback(server: Server) -> None:
    """After every fault above (this module's tests run in order): not one traceback, and the server still serves."""
    status, _, _ = exchange(server.address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    assert not [line for line in server.lines if "Traceback" in line or "Error on request" in line], server.lines
