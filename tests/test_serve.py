"""``mnist-lightning serve`` against requests it does not expect, and under a burst of them.

The server is the real console script on a free port of 127.0.0.1 (never another address), with a tiny CNN trained
on the real MNIST; requests are written with http.client so that every header and byte is the test's choice.
"""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import io
import json
import logging
import re
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch
from digit_helpers import BrokenModel, digit_png, encode, huge_png, jpeg_claiming, python_path, serving
from PIL import Image
from tiny_models import TinyCNNClassifier

from mnist_lightning.cli.main import main
from mnist_lightning.data import normalize
from mnist_lightning.data.images import prepare_digit
from mnist_lightning.errors import ConfigError
from mnist_lightning.serving.serve import MAX_UPLOAD_BYTES, create_app, serve

pytest_plugins = ["digit_fixtures"]  # cnn_checkpoint, mnist_test: shared with test_handwriting.py, trained once
JSON = {"Content-Type": "application/json"}


@pytest.fixture(autouse=True)
def tiny_models_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", python_path())


@pytest.fixture(scope="module")
def address(cnn_checkpoint: Path) -> Iterator[str]:
    """The address of one ``mnist-lightning serve`` for the whole module: every test also checks it still answers."""
    with serving(cnn_checkpoint) as address:
        assert urlsplit(address).hostname == "127.0.0.1"
        yield address


@pytest.fixture(scope="module")
def known_digits(cnn_checkpoint: Path, mnist_test: tuple[np.ndarray, np.ndarray]) -> list[tuple[bytes, int]]:
    """Real MNIST test digits as the page's PNGs, with their labels: those this model classifies right.

    Chosen by running the model here on the digit prepared from the same PNG; the server must then say the same.
    """
    images, labels = mnist_test
    pngs = [digit_png(images[i]) for i in range(160)]
    digits = np.stack([prepare_digit(Image.open(io.BytesIO(png))) for png in pngs])
    model = TinyCNNClassifier.load_from_checkpoint(cnn_checkpoint, map_location="cpu", weights_only=True).eval()
    with torch.no_grad():
        predicted = model(normalize(torch.from_numpy(digits).float().div(255).unsqueeze(1))).argmax(dim=1).numpy()
    pairs = zip(pngs, labels[: len(pngs)], predicted, strict=True)
    known = [(png, int(label)) for png, label, guess in pairs if guess == label]
    assert len(known) >= 150  # the tiny CNN is ~97% right
    return known


def request(
    address: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request on its own connection: status, headers, body."""
    url = urlsplit(address)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def predict_body(image: bytes | str) -> bytes:
    """The page's request body for an image (bytes: a PNG, sent as a data URL) or a ready ``"image"`` string."""
    if isinstance(image, bytes):
        image = "data:image/png;base64," + base64.b64encode(image).decode()
    return json.dumps({"image": image}).encode()


def assert_json_error(status: int, headers: http.client.HTTPMessage, body: bytes, expected: int, phrase: str) -> None:
    assert status == expected, body[:300]
    assert headers.get_content_type() == "application/json", headers
    answer = json.loads(body)
    assert list(answer) == ["error"] and phrase in answer["error"], answer


def assert_still_answers(address: str, known: list[tuple[bytes, int]]) -> None:
    png, label = known[0]
    status, _, body = request(address, "POST", "/predict", predict_body(png), JSON)
    assert status == 200 and json.loads(body)["prediction"] == label


NESTED = 100_000  # far deeper than any JSON parser's stack


@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        (b"[1, 2]", "is a JSON array, not an object"),
        (b'"data:image/png;base64,iVBORw0KGgo="', "is a JSON string, not an object"),
        (b"3.5", "is a JSON number, not an object"),
        (b"null", "is a JSON null, not an object"),
        (b"true", "is a JSON boolean, not an object"),
        (b"{}", 'has no "image"'),
        (b'{"picture": "data:image/png;base64,iVBORw0KGgo="}', 'has no "image"'),
        (b'{"image": 7}', '"image" is a JSON number, not a string'),
        (b'{"image": null}', '"image" is a JSON null, not a string'),
        (b'{"image": ["data:image/png;base64,"]}', '"image" is a JSON array, not a string'),
        (b'{"image": {"data": "x"}}', '"image" is a JSON object, not a string'),
        (b"[" * NESTED + b"]" * NESTED, "not valid JSON"),
        (b'{"a": ' * NESTED + b"1" + b"}" * NESTED, "not valid JSON"),
        (b'{"image": ', "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe{\x00}", "not valid JSON"),
        (b'{"image": ' + b"9" * 100_000 + b"}", "not valid JSON"),  # past Python's int digit limit
    ],
    ids=[
        "array",
        "string",
        "number",
        "null",
        "boolean",
        "empty-object",
        "other-key",
        "image-number",
        "image-null",
        "image-array",
        "image-object",
        "nested-arrays",
        "nested-objects",
        "malformed",
        "empty-body",
        "not-utf8",
        "huge-integer",
    ],
)
def test_a_body_that_is_not_the_expected_json_object_gets_400(
    address: str, known_digits: list[tuple[bytes, int]], body: bytes, phrase: str
) -> None:
    assert_json_error(*request(address, "POST", "/predict", body, JSON), 400, phrase)
    assert_still_answers(address, known_digits)


def truncated_png() -> bytes:
    png = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8)))
    return png[: len(png) // 2]


BAD_IMAGES: dict[str, tuple[Callable[[], bytes | str], int, str]] = {
    "not-base64": (lambda: "data:image/png;base64,iVBOR#w0K!!", 400, '"image" is not valid base64'),
    "empty": (lambda: "data:image/png;base64,", 400, '"image" is empty'),
    "empty-string": (lambda: "", 400, '"image" is empty'),
    "not-an-image": (lambda: b"a letter, not a picture of a digit", 400, "not an image file"),
    "truncated": (truncated_png, 400, "truncated or damaged"),
    "gif-as-text": (lambda: "data:image/png," + "%47%49%46", 400, "not base64-encoded"),
    "svg": (lambda: "data:image/svg+xml;base64,PHN2Zy8+", 415, "data URL of image/svg+xml"),
    "text": (lambda: "data:text/plain;base64,aGVsbG8=", 415, "data URL of text/plain"),
    "no-type": (lambda: "data:;base64,aGVsbG8=", 415, "data URL of no type"),
    "bomb-15000x15000": (lambda: huge_png(15000, 15000), 413, "image too large: 225 megapixels"),
    "scan-10000x10000": (lambda: huge_png(10000, 10000), 413, "image too large: 10000×10000 pixels"),
    "header-60000x60000": (lambda: jpeg_claiming(60000, 60000), 413, "image too large: 3600 megapixels"),
    "blank": (lambda: encode(Image.new("L", (280, 280), 0)), 422, "no ink found"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_an_image_that_cannot_be_used_gets_a_4xx(
    address: str, known_digits: list[tuple[bytes, int]], case: str
) -> None:
    make, expected, phrase = BAD_IMAGES[case]
    assert_json_error(*request(address, "POST", "/predict", predict_body(make()), JSON), expected, phrase)
    assert_still_answers(address, known_digits)


@pytest.mark.parametrize(
    ("method", "path", "headers", "expected", "phrase"),
    [
        ("GET", "/predict", {}, 405, "GET is not allowed on /predict; use POST"),
        ("DELETE", "/predict", {}, 405, "use POST"),
        ("PUT", "/", JSON, 405, "PUT is not allowed on /; use GET"),
        ("GET", "/nope", {}, 404, "no page at /nope"),
        ("POST", "/predict/", JSON, 404, "no page at /predict/"),
        ("POST", "/predict", {}, 415, "Content-Type is missing"),
        ("POST", "/predict", {"Content-Type": "text/plain"}, 415, "Content-Type is text/plain"),
        ("POST", "/predict", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "send {"),
        ("POST", "/predict", {"Content-Type": "multipart/form-data; boundary=x"}, 415, "send {"),
    ],
    ids=["get", "delete", "put-page", "unknown", "trailing-slash", "no-type", "text", "form", "multipart"],
)
def test_a_wrong_route_method_or_content_type_gets_a_4xx(
    address: str,
    known_digits: list[tuple[bytes, int]],
    method: str,
    path: str,
    headers: dict[str, str],
    expected: int,
    phrase: str,
) -> None:
    body = predict_body(known_digits[0][0])  # a body that would work on the right route, with the right type
    status, answer_headers, answer = request(address, method, path, body, headers)
    assert_json_error(status, answer_headers, answer, expected, phrase)
    if expected == 405:
        assert method not in answer_headers["Allow"]
    assert_still_answers(address, known_digits)


@pytest.mark.parametrize("size", [MAX_UPLOAD_BYTES + 1, 3 * MAX_UPLOAD_BYTES])
def test_a_body_over_the_limit_gets_413_unread(address: str, known_digits: list[tuple[bytes, int]], size: int) -> None:
    body = b'{"image": "' + b"A" * (size - 13) + b'"}'
    assert len(body) == size
    assert_json_error(*request(address, "POST", "/predict", body, JSON), 413, "the body is over 4 MB")
    assert_still_answers(address, known_digits)


def raw_request(address: str, data: bytes) -> tuple[int | None, dict[str, str], bytes]:
    """Bytes sent as they are on a socket; the answer's status, headers and body.

    A request line too garbled to tell its HTTP version gets an HTTP/0.9 answer (the body alone, then the server
    closes): status None.
    """
    url = urlsplit(address)
    with socket.create_connection((url.hostname, url.port), timeout=30) as connection:
        connection.sendall(data)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
            head, found, body = answer.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length: *(\d+)", head)
            if answer.startswith(b"HTTP/") and found and length and len(body) >= int(length.group(1)):
                break  # complete (over a limit, the server may keep reading what the client still sends)
    if not answer.startswith(b"HTTP/"):
        return None, {}, answer
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, body


def chunked(body: bytes, size: int = 2**20) -> bytes:
    """A body in Transfer-Encoding: chunked, which carries no Content-Length."""
    pieces = (body[i : i + size] for i in range(0, len(body), size))
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


CHUNKED = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("data", "expected", "phrase"),
    [
        (b"HELLO THERE\r\n\r\n", 400, "Bad HTTP/0.9 request type"),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414, "the request line is over 64 kB"),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"\r\n", 431, "Too many headers"),
        (b"GET / HTTP/1.1\r\nX-Long: " + b"y" * 70_000 + b"\r\n\r\n", 431, "Line too long"),
        (CHUNKED + chunked(b'{"image": "' + b"A" * (6 * 2**20) + b'"}'), 413, "the body is over 4 MB"),
        (b"POST /predict HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: -5\r\n\r\n{}", 400, "-5"),
    ],
    ids=["garbled-request-line", "long-url", "many-headers", "long-header", "chunked-6MB", "negative-length"],
)
def test_a_malformed_http_request_gets_a_json_4xx(
    address: str, known_digits: list[tuple[bytes, int]], data: bytes, expected: int | None, phrase: str
) -> None:
    status, headers, body = raw_request(address, data)
    assert status == expected, (status, headers, body[:300])
    assert expected is None or headers["Content-Type"] == "application/json", headers
    assert phrase in json.loads(body)["error"]
    assert_still_answers(address, known_digits)


def test_a_chunked_body_within_the_limit_is_read(address: str, known_digits: list[tuple[bytes, int]]) -> None:
    png, label = known_digits[1]
    status, _, body = raw_request(address, CHUNKED + chunked(predict_body(png), size=1000))
    assert status == 200 and json.loads(body)["prediction"] == label


def test_a_bug_is_a_500_with_its_traceback_in_the_log(
    caplog: pytest.LogCaptureFixture, mnist_test: tuple[np.ndarray, np.ndarray]
) -> None:
    client = create_app(BrokenModel()).test_client()  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR):
        response = client.post("/predict", data=predict_body(digit_png(mnist_test[0][0])), headers=JSON)
    assert response.status_code == 500 and response.is_json and "error" in response.get_json()
    assert "forward pass broke" in caplog.text and "Traceback" in caplog.text
    bad = client.post("/predict", data=b"[]", headers=JSON)  # and a bad request is still a 400, not a 500
    assert bad.status_code == 400 and "not an object" in bad.get_json()["error"]


@pytest.mark.parametrize("port", ["-1", "65536", "99999999999999999999"])
def test_a_port_outside_0_to_65535_is_one_line(
    cnn_checkpoint: Path, capsys: pytest.CaptureFixture[str], port: str
) -> None:
    # the command line (whichever of its parser and serve() refuses it first) ...
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--ckpt_path", str(cnn_checkpoint), "--port", port])
    assert exit_info.value.code != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mnist-lightning: error: ") and "65535" in lines[0], lines
    assert port in lines[0]
    # ... and Python code calling serve() directly
    with pytest.raises(ConfigError, match=rf"the port must be between 0 and 65535, got {port};"):
        serve(BrokenModel(), cnn_checkpoint, port=int(port))  # type: ignore[arg-type]


# -- a burst of good and bad requests -------------------------------------------------------------------------------

JUNK: list[tuple[str, str, bytes, dict[str, str], int]] = [
    ("POST", "/predict", b"[" * NESTED, JSON, 400),
    ("POST", "/predict", b'{"image": 7}', JSON, 400),
    ("POST", "/predict", predict_body("data:image/png;base64,iVBOR#w0K"), JSON, 400),
    ("POST", "/predict", predict_body(huge_png(15000, 15000)), JSON, 413),
    ("POST", "/predict", predict_body(jpeg_claiming(60000, 60000)), JSON, 413),
    ("POST", "/predict", predict_body(truncated_png()), JSON, 400),
    ("POST", "/predict", predict_body("data:text/html;base64,PGgxPg=="), JSON, 415),
    ("POST", "/predict", predict_body(encode(Image.new("L", (280, 280), 0))), JSON, 422),
    ("POST", "/predict", b'{"image": "' + b"A" * MAX_UPLOAD_BYTES + b'"}', JSON, 413),
    ("POST", "/predict", b"{}", {"Content-Type": "text/plain"}, 415),
    ("GET", "/predict", b"", {}, 405),
    ("GET", "/admin", b"", {}, 404),
]


def timed(address: str, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[float, int, bytes]:
    start = time.perf_counter()
    status, _, answer = request(address, method, path, body, headers)
    return time.perf_counter() - start, status, answer


def test_good_requests_are_answered_right_while_bad_ones_pour_in(
    address: str, known_digits: list[tuple[bytes, int]]
) -> None:
    """A client drawing (one request at a time) while two others send junk: every answer right; 100 good requests
    alone, then 100 good and 240 bad. The latencies are printed, not asserted (they belong to a benchmark: a busy
    machine must not fail a test)."""
    good = known_digits[:100]

    def draw_all() -> list[float]:
        seconds = []
        for png, label in good:
            elapsed, status, answer = timed(address, "POST", "/predict", predict_body(png), JSON)
            assert status == 200, answer[:300]
            assert json.loads(answer)["prediction"] == label
            seconds.append(elapsed)
        return seconds

    def p99(values: list[float]) -> float:
        return float(np.percentile(values, 99))

    alone = draw_all()

    stop = threading.Event()
    junk_answers: list[tuple[int, int, bytes]] = []

    def send_junk(offset: int) -> None:
        for n in range(120):
            if stop.is_set():
                return
            method, path, body, headers, expected = JUNK[(n + offset) % len(JUNK)]
            _, status, answer = timed(address, method, path, body, headers)
            junk_answers.append((expected, status, answer))

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        senders = [pool.submit(send_junk, offset) for offset in (0, len(JUNK) // 2)]
        drawing = pool.submit(draw_all)
        try:
            mixed = drawing.result(timeout=300)
        finally:
            stop.set()
        for sender in senders:
            sender.result(timeout=300)

    assert len(junk_answers) >= 100, "the junk senders stopped early"
    for expected, status, answer in junk_answers:
        assert status == expected and "error" in json.loads(answer), (expected, status, answer[:200])
    figures = {
        "alone_median_ms": 1000 * statistics.median(alone),
        "alone_p99_ms": 1000 * p99(alone),
        "mixed_median_ms": 1000 * statistics.median(mixed),
        "mixed_p99_ms": 1000 * p99(mixed),
        "bad_requests": len(junk_answers),
    }
    print("serve latency:", json.dumps({k: round(v, 1) for k, v in figures.items()}))
    assert_still_answers(address, known_digits)


def test_the_server_answers_after_the_burst(address: str, known_digits: list[tuple[bytes, int]]) -> None:
    """Every known digit right after all of the above: nothing was left in a bad state."""
    for png, label in known_digits[100:150]:
        status, _, answer = request(address, "POST", "/predict", predict_body(png), JSON)
        result: dict[str, Any] = json.loads(answer)
        assert status == 200 and result["prediction"] == label
        assert sum(result["probabilities"]) == pytest.approx(1, abs=1e-4) and len(result["pixels"]) == 28 * 28


def test_serve_applies_the_temperature(cnn_checkpoint: Path, mnist_test: tuple[np.ndarray, np.ndarray]) -> None:
    model = TinyCNNClassifier.load_from_checkpoint(cnn_checkpoint, map_location="cpu", weights_only=True).eval()
    body = predict_body(digit_png(mnist_test[0][0]))
    answers = {}
    for temperature in (1.0, 4.0):
        model.temperature = temperature  # what `serve --temperature` sets
        answers[temperature] = create_app(model).test_client().post("/predict", data=body, headers=JSON).get_json()
    assert answers[4.0]["prediction"] == answers[1.0]["prediction"]
    assert max(answers[4.0]["probabilities"]) < max(answers[1.0]["probabilities"])
    assert sum(answers[4.0]["probabilities"]) == pytest.approx(1, abs=1e-5)
