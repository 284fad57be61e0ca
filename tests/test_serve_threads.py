"""``serve``'s server in this process (real sockets, its own thread): clients that stall do not hold up others, a
client that leaves before its answer is one log line, and a bug is still a 500 with its traceback.

In this process so that the model can be held mid-forward-pass until the test lets it go: that is how a client can
leave exactly while its answer is being computed, and how a busy model is shown not to block the page.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import MNIST_DIR
from digit_helpers import BrokenModel, digit_png

from mnist_lightning.checkpoints import load_classifier
from mnist_lightning.data import load_split
from mnist_lightning.serving.connections import LOG
from mnist_lightning.serving.serve import start_server

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "checkpoints_0_1"


class Lines(logging.Handler):
    """The server log's lines, as :func:`mnist_lightning.serving.serve.serve` would print them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.arrived = threading.Condition()  # notified for every new line

    def emit(self, record: logging.LogRecord) -> None:
        with self.arrived:
            self.lines.append(self.format(record))
            self.arrived.notify_all()

    def wait_for(self, count: int, timeout: float = 60) -> list[str]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.lines) >= count, timeout), (
                f"expected {count} log lines, got {self.lines}"
            )
            return list(self.lines)


@pytest.fixture
def log_lines() -> Iterator[Lines]:
    handler = Lines()
    LOG.addHandler(handler)
    level = LOG.level
    LOG.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        LOG.removeHandler(handler)
        LOG.setLevel(level)


@contextlib.contextmanager
def running(model: torch.nn.Module, request_timeout: float = 120) -> Iterator[tuple[str, int]]:
    """``serve``'s server for ``model`` on a free port of 127.0.0.1, served from a thread."""
    server = start_server(model, "model.ckpt", "127.0.0.1", 0, request_timeout)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", server.port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


class GatedModel(torch.nn.Module):
    """A model whose forward pass waits until the test opens the gate (and says when it has started)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(28 * 28, 10)
        self.entered, self.gate = threading.Event(), threading.Event()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        assert self.gate.wait(timeout=120), "the test never opened the gate"
        return self.linear(images.flatten(1))


@pytest.fixture(scope="module")
def predict_request() -> bytes:
    """A complete POST /predict of a real MNIST test digit, as the page sends it."""
    images, _ = load_split(MNIST_DIR, train=False)
    body = json.dumps({"image": "data:image/png;base64," + base64.b64encode(digit_png(images[0].numpy())).decode()})
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body.encode()


def answer_of(connection: socket.socket) -> tuple[int, dict[str, object]]:
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body else {}


def ask(address: tuple[str, int], data: bytes) -> tuple[int, dict[str, object]]:
    with socket.create_connection(address, timeout=60) as connection:
        connection.sendall(data)
        return answer_of(connection)


def get_page(address: tuple[str, int]) -> bytes:
    """The drawing page's whole answer, status line included."""
    with socket.create_connection(address, timeout=60) as connection:
        connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    return data


def test_stalled_clients_do_not_hold_up_others(predict_request: bytes, log_lines: Lines) -> None:
    """Twenty clients stall mid-body and twenty mid-headers (slowloris; the deadline is long here): a drawing and the
    page are answered meanwhile."""
    with running(load_classifier(FIXTURES / "mlp.ckpt")) as address:
        stalled = [socket.create_connection(address, timeout=60) for _ in range(40)]
        try:
            for n, connection in enumerate(stalled):
                connection.sendall(predict_request[: len(predict_request) // 2] if n % 2 else predict_request[:40])
            status, answer = ask(address, predict_request)
            assert status == 200 and sum(answer["probabilities"]) == pytest.approx(1, abs=1e-4)  # type: ignore[arg-type]
            assert get_page(address).startswith(b"HTTP/1.1 200")
            # the stalled ones are still waiting for their deadline: neither answered nor closed
            assert select.select(stalled, [], [], 0)[0] == []
        finally:
            for connection in stalled:
                connection.close()
    assert all("-> 200" not in line for line in log_lines.lines)


def test_a_busy_model_does_not_block_the_page(predict_request: bytes) -> None:
    model = GatedModel()
    with running(model) as address, socket.create_connection(address, timeout=60) as drawing:
        drawing.sendall(predict_request)
        assert model.entered.wait(timeout=60)
        data = get_page(address)
        assert data.startswith(b"HTTP/1.1 200") and b"<canvas" in data
        model.gate.set()
        status, answer = answer_of(drawing)
        assert status == 200 and len(answer["probabilities"]) == 10  # type: ignore[arg-type]


def reset(connection: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed client or a dropped network does."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


def test_a_client_that_leaves_before_its_answer_is_one_log_line(
    predict_request: bytes, log_lines: Lines, capfd: pytest.CaptureFixture[str]
) -> None:
    """The client resets the connection while the model computes its answer: writing it fails (a reset or a broken
    pipe), which is one line in the log, no traceback, and the server goes on."""
    model = GatedModel()
    with running(model) as address:
        connection = socket.create_connection(address, timeout=60)
        connection.sendall(predict_request)
        assert model.entered.wait(timeout=60)
        reset(connection)
        model.gate.set()
        lines = log_lines.wait_for(1)
        status, answer = ask(address, predict_request)  # still serving
        assert status == 200 and len(answer["probabilities"]) == 10  # type: ignore[arg-type]
        time.sleep(0.2)  # anything more the first request would have logged
    assert len(log_lines.lines) == 1, log_lines.lines
    assert "POST /predict" in lines[0] and "the client left before the answer" in lines[0], lines
    output = capfd.readouterr()
    assert "Traceback" not in output.err + output.out


def test_a_bug_is_a_500_with_its_traceback_in_the_log(
    predict_request: bytes, log_lines: Lines, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    with running(BrokenModel()) as address:
        status, answer = ask(address, predict_request)
    assert status == 500 and list(answer) == ["error"]
    log = caplog.text + capfd.readouterr().err  # Flask's logger: to stderr, or to pytest's handler when it has one
    assert "Traceback" in log and "RuntimeError: forward pass broke" in log
    assert log_lines.lines == []  # not logged as a client's fault
