"""``mnist-lightning serve``: a local page (Flask) to draw a digit and watch the model's probabilities change.

The page posts the canvas as a PNG to ``/predict`` while you draw; the server prepares it exactly like an image
file given to ``predict`` (:func:`mnist_lightning.handwriting.prepare_digit`) and answers with the ten
probabilities, the 28×28 image the model saw and, for models that expose ``attention_maps(images)`` (the ViTs),
the class token's attention over the patches in every block and head.
"""

from __future__ import annotations

import base64
import binascii
import html
import io
import logging
import math
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from flask import Flask, Response, jsonify, request
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from mnist_lightning.data import normalize
from mnist_lightning.errors import ConfigError
from mnist_lightning.handwriting import ImageInputError, prepare_digit
from mnist_lightning.models.base import MNISTClassifier

PAGE = Path(__file__).with_name("serve_page.html")
MAX_UPLOAD_BYTES = 4 * 1024 * 1024


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
    digit = prepare_digit(image)
    device = next(model.parameters()).device
    pixels = torch.from_numpy(digit).to(device)
    images = normalize(pixels.float().div(255)).view(1, 1, 28, 28)
    with torch.no_grad():
        probs = model(images).softmax(dim=1)[0].float().cpu()
        attention = class_token_attention(model, images)
    return {
        "prediction": int(probs.argmax()),
        "probabilities": probs.tolist(),
        "pixels": digit.ravel().tolist(),
        "attention": attention,
    }


def create_app(model: MNISTClassifier, title: str = "") -> Flask:
    """The Flask app: ``GET /`` the drawing page, ``POST /predict`` with ``{"image": "data:image/png;base64,..."}``."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES
    model.eval()
    lock = threading.Lock()  # one forward pass at a time: modules are not guaranteed thread-safe
    page = PAGE.read_text().replace("{{title}}", html.escape(title or type(model).__name__))

    @app.get("/")
    def index() -> Response:
        return Response(page, mimetype="text/html")

    @app.post("/predict")
    def predict() -> tuple[Response, int]:
        data = request.get_json(silent=True) or {}
        encoded = str(data.get("image", ""))
        try:
            raw = base64.b64decode(encoded.split(",", 1)[-1], validate=True)
            with Image.open(io.BytesIO(raw)) as image:
                image.load()
                with lock:
                    return jsonify(predict_drawing(model, image)), 200
        except ImageInputError as err:
            return jsonify({"error": str(err)}), 422
        except (binascii.Error, UnidentifiedImageError, OSError, ValueError):
            return jsonify({"error": 'send {"image": "data:image/png;base64,..."} with a PNG or JPEG'}), 400

    return app


def serve(model: MNISTClassifier, ckpt_path: str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the drawing page for ``model`` until interrupted; port 0 picks a free port (printed)."""
    from werkzeug.serving import make_server, select_address_family

    app = create_app(model, title=f"{type(model).__name__} · {Path(ckpt_path).name}")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request while drawing
    # bind here so a busy port is one clear error (werkzeug would print its own lines and exit)
    try:
        listener = socket.create_server((host, port), family=select_address_family(host, port))
    except OSError as err:
        raise ConfigError(f"cannot listen on {host}:{port} ({err.strerror or err}); pick another --port") from None
    server = make_server(host, listener.getsockname()[1], app, threaded=True, fd=listener.fileno())
    listener.close()  # the server holds its own duplicate of the socket
    print(f"Serving {ckpt_path} on http://{host}:{server.port}/ (Ctrl+C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("Stopped.", file=sys.stderr)
    finally:
        server.server_close()
