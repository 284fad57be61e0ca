"""``mnist-lightning serve``: a local page (Flask) to draw a digit and watch the model's probabilities change.

The page posts the canvas as a PNG to ``/predict`` while you draw; the server prepares it exactly like an image
file given to ``predict`` (:func:`mnist_lightning.data.images.prepare_digit`) and answers with the ten
probabilities, the 28×28 image the model saw and, for models that expose ``attention_maps(images)`` (the ViTs),
the class token's attention over the patches in every block and head.

Whatever arrives, the answer is JSON: a request the server cannot use gets a 4xx with ``{"error": "..."}`` that
says what to send instead (400 not the JSON or image expected, 404/405 wrong route or method, 413 too large a body
or image, 415 not JSON or an image type it does not read, 422 an image without a digit; the socket-level faults,
408 a stalled request, 411 no length, and the rest, are :mod:`.connections`'), and one line in the log; each request
costs bounded time and memory (the request deadline, :data:`MAX_UPLOAD_BYTES`,
:data:`mnist_lightning.data.images.MAX_PIXELS`, at most :data:`DECODE_SLOTS` images decoded at once). A bug is still
a 500 (JSON too), with its traceback in the log.
"""

from __future__ import annotations

import base64
import binascii
import errno
import html
import io
import json
import logging
import math
import re
import shlex
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flask import Flask, Response, jsonify, request
from PIL import Image
from torch import Tensor
from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    MethodNotAllowed,
    NotFound,
    RequestEntityTooLarge,
    UnsupportedMediaType,
)
from werkzeug.serving import BaseWSGIServer

from mnist_lightning.data import normalize_uint8
from mnist_lightning.data.images import (
    MAX_PIXELS,
    ImageInputError,
    ImageTooLargeError,
    UnreadableImageError,
    open_image,
    prepare_digit,
)
from mnist_lightning.errors import ConfigError
from mnist_lightning.models.base import MNISTClassifier
from mnist_lightning.serving import connections
from mnist_lightning.serving.connections import REQUEST_TIMEOUT_S, log_fault, printable

PAGE = Path(__file__).with_name("page.html")  # packaged with the module (hatchling includes it)
MAX_UPLOAD_BYTES = 4 * 1024 * 1024  # a request body over this gets 413, never parsed (the page sends ~10 kB)
DECODE_SLOTS = 2  # images decoded and prepared at once: bounds memory when many large ones arrive together
# the media types of the data URLs accepted, for the formats that handwriting.open_image reads
IMAGE_TYPES = ("image/png", "image/jpeg", "image/jpg", "image/gif", "image/bmp", "image/webp", "image/tiff")
DATA_URL = re.compile(r"data:([^,;]*)((?:;[^,;]*)*),", re.IGNORECASE)
SEND = 'send {"image": "data:image/png;base64,..."} (a PNG or JPEG of one digit) as application/json'


def decode_image_field(encoded: str) -> bytes:
    """The bytes of ``"image"``: a base64 data URL of an image type, or bare base64.

    Raises:
        BadRequest: not base64, or empty.
        UnsupportedMediaType: a data URL of a type that is not an image format read here.
    """
    match = DATA_URL.match(encoded[:256])  # a data URL's header is short: never scan megabytes for one
    if match:
        media_type, params = match.group(1).strip().lower(), match.group(2).lower().split(";")
        if media_type not in IMAGE_TYPES:
            raise UnsupportedMediaType(f"a data URL of {media_type or 'no type'} is not an image read here; {SEND}")
        if "base64" not in (p.strip() for p in params):
            raise BadRequest(f"the data URL is not base64-encoded; {SEND}")
        encoded = encoded[match.end() :]
    try:
        # whitespace (line-wrapped base64) is allowed; any other character outside the alphabet is an error
        raw = base64.b64decode("".join(encoded.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f'"image" is not valid base64; {SEND}') from None
    if not raw:
        raise BadRequest(f'"image" is empty; {SEND}')
    return raw


def read_request_image() -> str:
    """The ``"image"`` string of the request's JSON body, or the HTTP error that says what was wrong."""
    if request.mimetype != "application/json":
        # JSON only: it also keeps other web pages from posting here with a plain HTML form
        raise UnsupportedMediaType(f"Content-Type is {request.mimetype or 'missing'}; {SEND}")
    body = request.get_data(cache=False)  # RequestEntityTooLarge when Content-Length is over MAX_CONTENT_LENGTH
    if request.content_length is None and len(body) >= MAX_UPLOAD_BYTES:
        # a chunked body (no Content-Length) is cut at the limit without an error: the rest was not read
        raise RequestEntityTooLarge()
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        raise BadRequest(f"the body is not valid JSON; {SEND}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"the body is a JSON {json_type(data)}, not an object; {SEND}")
    if "image" not in data:
        raise BadRequest(f'the JSON object has no "image"; {SEND}')
    if not isinstance(data["image"], str):
        raise BadRequest(f'"image" is a JSON {json_type(data["image"])}, not a string; {SEND}')
    return data["image"]


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def json_error(err: HTTPException) -> Response:
    """Any HTTP error as ``{"error": description}`` with its status and headers (such as 405's Allow)."""
    response = err.get_response()
    message = err.description
    if message == type(err).description:  # werkzeug's generic text: say what this server has instead
        if isinstance(err, NotFound):
            message = f"no page at {request.path}; this server has GET / (the drawing page) and POST /predict"
        elif isinstance(err, MethodNotAllowed):
            allowed = ", ".join(sorted(set(err.valid_methods or []) - {"HEAD", "OPTIONS"}))
            message = f"{request.method} is not allowed on {request.path}; use {allowed}"
        elif isinstance(err, RequestEntityTooLarge):
            message = f"the body is over {MAX_UPLOAD_BYTES // 2**20} MB; {SEND}"
    if err.code is not None and err.code < 500:  # a 500's traceback is in the log already (Flask logs it)
        path = request.full_path.rstrip("?")
        log_fault(request.remote_addr or "<local>", f"{request.method} {path}", err.code, message)
    response.set_data(json.dumps({"error": message}))
    response.content_type = "application/json"
    return response


def class_token_attention(model: MNISTClassifier, images: Tensor) -> list[list[list[float]]] | None:
    """The class token's attention over the patches, ``[block][head][patch]``, or None for models without it.

    Works with any model (or its ``net``) that has ``attention_maps(images)`` returning, per block, a tensor
    ``(batch, heads, tokens, tokens)`` of attention weights whose token 0 is the class token and whose other
    tokens are a square grid of patches.
    """
    owner = model if callable(getattr(model, "attention_maps", None)) else getattr(model, "net", None)
    attention_maps = getattr(owner, "attention_maps", None)
    if not callable(attention_maps):
        return None
    maps: Sequence[Tensor] = attention_maps(images)
    blocks = [block[0, :, 0, 1:].float().cpu() for block in maps]
    if not blocks or math.isqrt(blocks[0].shape[-1]) ** 2 != blocks[0].shape[-1]:
        return None
    return [block.tolist() for block in blocks]


def predict_drawing(model: MNISTClassifier, image: Image.Image) -> dict[str, Any]:
    """Prepare one drawing and run the model: probabilities, predicted digit, 28×28 pixels, attention or None."""
    return predict_digit(model, prepare_digit(image))


def predict_digit(model: MNISTClassifier, digit: np.ndarray) -> dict[str, Any]:
    """Run the model on one prepared ``(28, 28)`` uint8 digit: as :func:`predict_drawing` returns."""
    device = next(model.parameters()).device
    pixels = torch.from_numpy(digit).to(device)
    images = normalize_uint8(pixels).view(1, 1, 28, 28)
    with torch.no_grad():
        # any module with a forward pass can be served; a classifier's temperature (serve --temperature) applies
        probs = (model(images).float() / getattr(model, "temperature", 1.0)).softmax(dim=1)[0].cpu()
        attention = class_token_attention(model, images)
    return {
        "prediction": int(probs.argmax()),
        "probabilities": probs.tolist(),
        "pixels": digit.ravel().tolist(),
        "attention": attention,
    }


def create_app(model: MNISTClassifier, title: str = "", max_pixels: int = MAX_PIXELS) -> Flask:
    """The Flask app: ``GET /`` the drawing page, ``POST /predict`` with ``{"image": "data:image/png;base64,..."}``."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES
    model.eval()
    lock = threading.Lock()  # one forward pass at a time: modules are not guaranteed thread-safe
    decoding = threading.BoundedSemaphore(DECODE_SLOTS)
    page = PAGE.read_text().replace("{{title}}", html.escape(title or type(model).__name__))

    # every HTTP error as JSON: 400, 404, 405, 413, 415, 422, and the 500 Flask makes of an unhandled exception
    # (which it logs with its traceback first); other exceptions are never caught here
    app.register_error_handler(HTTPException, json_error)

    @app.get("/")
    def index() -> Response:
        return Response(page, mimetype="text/html")

    @app.post("/predict")
    def predict() -> tuple[Response, int]:
        raw = decode_image_field(read_request_image())
        try:
            with decoding, open_image(io.BytesIO(raw), max_pixels) as image:
                digit = prepare_digit(image)
        except ImageTooLargeError as err:
            raise RequestEntityTooLarge(str(err)) from None
        except UnreadableImageError as err:
            raise BadRequest(str(err)) from None
        except ImageInputError as err:  # a readable image without a digit in it
            return jsonify({"error": str(err)}), 422
        with lock:
            return jsonify(predict_digit(model, digit)), 200

    return app


class RequestHandler(connections.RequestHandler):
    """The handler that reads each request whole before a deadline; its malformed-request answers say what to send."""

    advice = SEND


def start_server(
    model: MNISTClassifier,
    ckpt_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    request_timeout: float = REQUEST_TIMEOUT_S,
) -> BaseWSGIServer:
    """Bind the drawing page's server for ``model`` (not yet serving: call ``serve_forever``); port 0 picks one.

    Each connection has its own thread; a request must arrive whole (line, headers, body) within ``request_timeout``
    seconds, else it gets a 408 (see :mod:`mnist_lightning.serving.connections`).

    Raises:
        ConfigError: ``port`` outside 0..65535, a ``host`` that is not an address of this machine, ``host:port`` in
            use or not allowed, or a ``request_timeout`` that is not a positive number of seconds.
    """
    from werkzeug.serving import make_server

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(
            f"the port must be between 0 and 65535, got {port}; pass --port 8000, or --port 0 for a free one"
        )
    if not (isinstance(request_timeout, int | float) and 0 < request_timeout < math.inf):
        raise ConfigError(f"the request timeout must be a positive number of seconds, got {request_timeout}; try 10")
    if isinstance(host, str) and re.fullmatch(r"\[[0-9a-fA-F:.%\w]+\]", host):
        host = host[1:-1]  # an IPv6 address as a URL writes it: [::1]
    app = create_app(model, title=f"{type(model).__name__} · {Path(ckpt_path).name}")
    listener = listen(host, port)  # here, so that each way to fail is one clear line (werkzeug would exit)
    try:
        server = make_server(
            host, listener.getsockname()[1], app, threaded=True, request_handler=RequestHandler, fd=listener.fileno()
        )
    finally:
        listener.close()  # the server holds its own duplicate of the socket
    server.request_timeout = float(request_timeout)  # type: ignore[attr-defined]  # read by RequestHandler
    server.max_body = MAX_UPLOAD_BYTES  # type: ignore[attr-defined]
    return server


LOCAL_HOSTS = "use --host 127.0.0.1 (this machine only) or --host 0.0.0.0 (every network interface)"


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port``, or one ConfigError that says which of the two is wrong and what works."""
    if not isinstance(host, str) or not host.strip() or "\x00" in host or host.startswith("unix://"):
        raise ConfigError(
            f"cannot listen on --host {shlex.quote(printable(host))}: not an IP address or host name; {LOCAL_HOSTS}"
        )
    url = re.fullmatch(r"(?:[a-z]+://)?\[?([^/\[\]]*?)\]?(?::(\d+))?/?", host.strip(), re.IGNORECASE)
    plain = url.group(1) if url and ("://" in host or (url.group(2) and host.count(":") == 1)) else None
    shown = shlex.quote(host)
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)  # create_server's own error hides which part failed
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host, port), family=family)
    except (socket.gaierror, UnicodeError):
        if plain:  # a URL or host:port where the host alone was meant
            fix = f"--host {shlex.quote(plain)}" + (f" --port {url.group(2)}" if url.group(2) else "")  # type: ignore[union-attr]
            raise ConfigError(
                f"cannot listen on --host {shown}: a URL or host:port, not a host name; give them apart: {fix}"
            ) from None
        raise ConfigError(
            f"cannot listen on --host {shown}: not an address or a host name this machine knows; {LOCAL_HOSTS}"
        ) from None
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is in use (another server?); pick another --port, or --port 0 for a free one"
            ) from None
        if err.errno == errno.EACCES:
            raise ConfigError(
                f"not allowed to listen on port {port} ({err.strerror}); use --port 8000, or --port 0 for a free one"
            ) from None
        if err.errno in (errno.EADDRNOTAVAIL, errno.EINVAL, errno.EAFNOSUPPORT):
            reason = f"not an address of this machine ({err.strerror})"
            raise ConfigError(f"cannot listen on --host {shown}: {reason}; {LOCAL_HOSTS}") from None
        raise ConfigError(f"cannot listen on {host}:{port} ({err.strerror or err}); {LOCAL_HOSTS}") from None


def serve(
    model: MNISTClassifier,
    ckpt_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    request_timeout: float = REQUEST_TIMEOUT_S,
) -> None:
    """Serve the drawing page for ``model`` until interrupted; port 0 picks a free port (printed).

    The log (stderr) has one line per request the server refused or a client dropped, and a traceback per bug.
    """
    server = start_server(model, ckpt_path, host, port, request_timeout)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request while drawing
    if not connections.LOG.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        connections.LOG.addHandler(handler)
        connections.LOG.setLevel(logging.INFO)
        connections.LOG.propagate = False  # its one line, not a second copy through a root handler
    shown = f"[{server.host}]" if ":" in server.host else server.host
    print(f"Serving {ckpt_path} on http://{shown}:{server.port}/ (Ctrl+C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("Stopped.", file=sys.stderr)
    finally:
        server.server_close()
