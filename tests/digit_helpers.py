"""Helpers of the handwriting and serve tests: a running ``serve``, and hostile images made cheaply."""

from __future__ import annotations

import contextlib
import io
import os
import re
import selectors
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

TESTS = Path(__file__).resolve().parent


def python_path() -> str:
    """The tests folder (for ``tiny_models``) ahead of whatever PYTHONPATH already holds."""
    return os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))


@contextlib.contextmanager
def serving(ckpt_path: Path, model: str = "tiny_models.TinyCNNClassifier") -> Iterator[str]:
    """``mnist-lightning serve`` on a free port of 127.0.0.1; yields its address and stops it afterwards."""
    exe = Path(sys.executable).with_name("mnist-lightning")
    env = {**os.environ, "PYTHONPATH": python_path(), "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [str(exe), "serve", "--ckpt_path", str(ckpt_path), "--model", model, "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        address = wait_for_address(server, timeout=120)
        # keep reading what it prints, so that a full pipe never blocks it (a 500 logs a traceback)
        threading.Thread(target=server.stdout.read, daemon=True).start()  # type: ignore[union-attr]
        yield address
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def wait_for_address(server: subprocess.Popen[str], timeout: float) -> str:
    """The http address the server prints once it listens."""
    assert server.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(server.stdout, selectors.EVENT_READ)
    output, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=1.0):
            line = server.stdout.readline()
            if not line and server.poll() is not None:
                break
            output.append(line)
            match = re.search(r"on (http://\S+/)", line)
            if match:
                return match.group(1)
    raise AssertionError(f"mnist-lightning serve did not start:\n{''.join(output)}")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(width: int, height: int) -> bytes:
    """A real, complete black 1-bit PNG of ``width``×``height``: tens of kB that would decode to gigabytes.

    Written row by row into zlib, so making it never holds more than one row.
    """
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte, then the packed pixels
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header claims ``width``×``height`` (up to 65535 each): only the header is read."""
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 255).save(buffer, "JPEG")
    raw = bytearray(buffer.getvalue())
    at = raw.index(b"\xff\xc0")  # SOF0: marker, length (2), precision (1), height (2), width (2)
    raw[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(raw)


def encode(image: Image.Image, format: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def digit_png(digit: np.ndarray) -> bytes:
    """An MNIST digit as the drawing page sends it: white on black, ten times larger, as a PNG."""
    return encode(Image.fromarray(digit).resize((280, 280), Image.Resampling.BICUBIC))


class BrokenModel(torch.nn.Module):
    """A model whose forward pass fails: a bug, which must not pass for a bad request."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("forward pass broke")
