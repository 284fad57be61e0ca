"""Photos and drawings of digits as MNIST digits: image files prepared the way the MNIST images were made.

MNIST's digits were size-normalized to fit a 20×20 box (keeping their aspect ratio, antialiased) and then
centred by their centre of mass in a 28×28 frame, white ink on black. :func:`prepare_digit` does the same to
any picture of one digit: a photo or scan (dark ink on light paper) or a drawing (light on dark), any size,
colour or grey. Only numpy and Pillow are used, so the same steps work next to an exported model.

Files come from anywhere, so reading them is guarded: :func:`open_image` checks the pixel count in the header
before anything is decoded (:data:`MAX_PIXELS`), opens only the formats of :data:`IMAGE_SUFFIXES` (never, say, EPS,
which Pillow hands to Ghostscript), decodes JPEGs at a reduced scale, and uses the first frame of animations and
multi-page files. :func:`prepare_digit` shrinks whatever it gets to at most :data:`WORK_SIZE` pixels a side before
it makes float arrays, and reads 16-bit, palette, CMYK and transparent images as what they show.
"""

from __future__ import annotations

import contextlib
import math
import re
import struct
import sys
import threading
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_lightning.errors import ConfigError, MNISTLightningError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
FRAME = 28  # the MNIST image size
BOX = 20  # the longer side of the digit inside the frame
MIN_CONTRAST = 32  # grey levels between paper and the darkest ink below which an image counts as blank
NOISE_FLOOR = 0.2  # ink weaker than this fraction of the strongest ink is paper texture or JPEG noise
# The largest image read: a 50-megapixel phone photo (8160×6120) passes; a 15000×15000 scan or a decompression
# bomb is refused from its header, before a byte is decoded. Decoding one at the limit takes at most ~200 MB (RGBA).
MAX_PIXELS = 50_000_000
WORK_SIZE = 2048  # longer side an image is shrunk to (box average) before float arrays are made from it
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")  # what Pillow may open: those of IMAGE_SUFFIXES
# What Pillow raises on malformed files (SyntaxError and struct.error from some damaged headers). Caught only around
# Pillow's calls, and nothing broader, so that a bug of ours or Pillow's still ends with its traceback.
PILLOW_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error)
_OPEN_LOCK = threading.Lock()  # warnings.catch_warnings changes process-wide state (serve opens from threads)


class ImageInputError(MNISTLightningError, ValueError):
    """One image that cannot be turned into a digit; the message names the file and says why."""


class UnreadableImageError(ImageInputError):
    """Not an image of a supported format, or a damaged or truncated one."""


class ImageTooLargeError(ImageInputError):
    """An image with more pixels than :data:`MAX_PIXELS` (or the limit given); refused before decoding."""


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.0f} megapixels" if pixels >= 10**6 else f"{pixels} pixels"


def _too_large(width: int, height: int, max_pixels: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"image too large: {width}×{height} pixels ({_megapixels(width * height)}) is over the limit of "
        f"{_megapixels(max_pixels)}; scale it down (a digit needs no more than about 1000×1000)"
    )


def open_image(source: str | Path | IO[bytes], max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and decode an image (its first frame) at a bounded cost; close it when done (or use ``with``).

    The size is checked from the header before anything is decoded, and JPEGs over :data:`WORK_SIZE` are decoded
    at 1/2, 1/4 or 1/8 scale (libjpeg does that for free).

    Raises:
        ImageTooLargeError: more than ``max_pixels`` pixels.
        UnreadableImageError: not a PNG, JPEG, BMP, GIF, TIFF or WebP image, or a damaged or truncated one.
    """
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            # Pillow warns about images over its own limit (89 MP); ours is lower and checked just below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source, formats=FORMATS)
    except UnidentifiedImageError:
        raise UnreadableImageError(
            "not an image file Pillow can read; use a PNG or JPEG of one digit (or BMP, GIF, TIFF, WebP)"
        ) from None
    except Image.DecompressionBombError as err:  # over twice Pillow's limit: raised before we see the size
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        size = _megapixels(int(pixels.group(1))) if pixels else "too many pixels"
        raise ImageTooLargeError(
            f"image too large: {size} is over the limit of {_megapixels(max_pixels)}; scale it down "
            "(a digit needs no more than about 1000×1000)"
        ) from None
    except PILLOW_ERRORS as err:
        raise UnreadableImageError(f"could not be read ({err}); save it again as PNG or JPEG") from None
    try:
        width, height = image.size
        if width * height > max_pixels:
            raise _too_large(width, height, max_pixels)
        if width < 1 or height < 1:
            raise UnreadableImageError(f"image has no pixels ({width}×{height}); save it again as PNG or JPEG")
        if image.format in ("JPEG", "MPO") and max(width, height) > WORK_SIZE:
            scale = WORK_SIZE / max(width, height)
            image.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))
        image.load()
        if image.size[0] * image.size[1] > max_pixels:  # a format whose frame grew while loading
            raise _too_large(*image.size, max_pixels)
    except ImageInputError:
        image.close()
        raise
    except Image.DecompressionBombError:
        image.close()
        raise _too_large(width, height, max_pixels) from None
    except PILLOW_ERRORS as err:
        image.close()
        reason = "truncated or damaged" if "truncated" in str(err) else f"could not be read ({err})"
        raise UnreadableImageError(f"{reason}; save it again as PNG or JPEG") from None
    return image


def prepare_digit(image: Image.Image) -> np.ndarray:
    """A picture of one digit as a ``(28, 28)`` uint8 MNIST-style image: white ink on black, 20 px, centred.

    Steps: turned upright as its EXIF orientation asks (in place: ``image`` itself is turned and loses the tag, so
    that an image that needs no turn costs no copy); greyscale; inverted when the background (the image's border)
    is light; paper level subtracted and ink stretched to full strength; cropped to the ink's bounding box; scaled
    (antialiased) so its longer side is 20 pixels; placed in a 28×28 frame so that its centre of mass is at the
    frame's centre (pixel 14, 14).

    Raises:
        ImageInputError: the image holds no ink (a blank page).
    """
    grey = _to_grey(image)
    border = _border(grey)
    if np.median(border) > 127:
        grey = 255.0 - grey
        border = 255.0 - border
    paper = float(np.median(border))
    peak = float(grey.max())
    if peak - paper < MIN_CONTRAST:
        raise ImageInputError("no ink found (a blank image); write one digit, dark on light or light on dark")
    ink = np.clip((grey - paper) / (peak - paper), 0.0, 1.0)
    ink[ink < NOISE_FLOOR] = 0.0
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]

    height, width = ink.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    digit = np.asarray(Image.fromarray(ink.astype(np.float32)).resize(size, Image.Resampling.LANCZOS))
    digit = np.clip(digit, 0.0, None)
    digit /= digit.max()  # thin pen strokes fade when shrunk; MNIST ink always reaches full strength

    frame = np.zeros((FRAME, FRAME), dtype=np.float32)
    total = digit.sum()
    centre_row = (digit.sum(axis=1) * np.arange(digit.shape[0])).sum() / total
    centre_col = (digit.sum(axis=0) * np.arange(digit.shape[1])).sum() / total
    top, left = round(FRAME / 2 - centre_row), round(FRAME / 2 - centre_col)
    # paste, clipping whatever would fall outside the frame
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + digit.shape[0], FRAME), min(left + digit.shape[1], FRAME)
    frame[r0:r1, c0:c1] = digit[r0 - top : r1 - top, c0 - left : c1 - left]
    return np.round(frame * 255).astype(np.uint8)


def _to_grey(image: Image.Image) -> np.ndarray:
    """Luminance as float ``(H, W)`` in [0, 255], upright, at most :data:`WORK_SIZE` a side; transparent areas
    become the opposite of the ink's shade."""
    _turn_upright(image)
    sixteen_bit = image.mode.startswith("I;16")
    transparent = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode in ("1", "L", "P", "RGB") and "transparency" in image.info  # a colour marked transparent
    )
    # one of the modes Image.reduce works on, keeping what the picture shows
    if transparent:
        image = image.convert("LA" if image.mode == "La" else "RGBA")
    elif image.mode in ("I", "F") or sixteen_bit:
        image = image.convert("F")  # raw values; scaled to 0..255 below
    elif image.mode in ("1", "P"):
        image = image.convert("L")
    elif image.mode not in ("L", "RGB"):
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX, ...
    factor = math.ceil(max(image.size) / WORK_SIZE)
    if factor > 1:
        image = image.reduce(factor)  # box average: antialiased, and the full-size copy is never made as floats
    if image.mode == "F":
        return _eight_bit(np.asarray(image, dtype=np.float32), sixteen_bit)
    if transparent:
        alpha = np.asarray(image.getchannel("A"), dtype=np.float32) / 255
        luma = np.asarray(image.convert("L"), dtype=np.float32)
        ink_shade = (luma * alpha).sum() / max(alpha.sum(), 1e-6)
        behind = 0.0 if ink_shade > 127 else 255.0
        return luma * alpha + behind * (1 - alpha)
    return np.asarray(image.convert("L"), dtype=np.float32)


def _eight_bit(values: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    """Integer or float samples on the 0..255 scale: 16-bit ones divided by 257, floats in [0, 1] times 255."""
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    top = float(values.max()) if values.size else 0.0
    if sixteen_bit or 255 < top <= 65535:
        values = values / 257
    elif top > 65535:
        values = values * (255 / top)
    elif 0 < top <= 1:
        values = values * 255
    return np.clip(values, 0.0, 255.0)


def _turn_upright(image: Image.Image) -> None:
    """Turn ``image`` in place as its EXIF (or XMP) orientation asks; unreadable EXIF data counts as upright.

    In place: Pillow's copying form copies every image, also those that need no turn (a 50-megapixel one at the
    limit is 200 MB more).
    """
    with contextlib.suppress(PILLOW_ERRORS):
        ImageOps.exif_transpose(image, in_place=True)


def _border(grey: np.ndarray) -> np.ndarray:
    """The pixels of a frame around the image (2% of its shorter side, at least one pixel): mostly background."""
    band = max(1, round(0.02 * min(grey.shape)))
    return np.concatenate([grey[:band].ravel(), grey[-band:].ravel(), grey[:, :band].ravel(), grey[:, -band:].ravel()])


def load_digit(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file and prepare it with :func:`prepare_digit`; raise ImageInputError naming the file.

    Bounded in time and memory by ``max_pixels`` (see :func:`open_image`).
    """
    path = Path(path)
    if not path.exists():
        raise ImageInputError(f"{path}: no such file")
    if not path.is_file():  # a FIFO or a device would block the read or never end
        raise UnreadableImageError(f"{path}: not a regular file; pass image files or folders holding them")
    try:
        with open_image(path, max_pixels) as image:
            try:
                return prepare_digit(image)
            except ImageInputError:
                raise
            except PILLOW_ERRORS as err:  # a mode Pillow cannot convert, pixel data it cannot hand over
                raise UnreadableImageError(f"could not be read ({err}); save it again as PNG or JPEG") from None
    except ImageInputError as err:
        raise type(err)(f"{path}: {err}") from None
    except OSError as err:  # opening the file itself: permissions, I/O errors
        raise UnreadableImageError(f"{path}: could not be read ({err.strerror or err})") from None


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, and the image files (by suffix, sorted) inside given folders and their subfolders."""
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found.extend(sorted(p for p in entry.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(entry)
    return found


def load_digits(paths: Sequence[str | Path]) -> tuple[list[Path], np.ndarray, list[tuple[Path, str]]]:
    """Prepare every image among ``paths`` (files or folders).

    Returns:
        the files that worked, their digits as uint8 ``(N, 28, 28)``, and ``(file, message)`` for those that did
        not (and for folders with no images), so that one bad file never stops the others.
    """
    files, digits, failed = [], [], []
    for entry in map(Path, paths):
        if entry.is_dir() and not find_images([entry]):
            failed.append((entry, f"{entry}: folder holds no image files ({', '.join(IMAGE_SUFFIXES)})"))
    for path in find_images(paths):
        try:
            digits.append(load_digit(path))
            files.append(path)
        except ImageInputError as err:
            failed.append((path, str(err)))
    stacked = np.stack(digits) if digits else np.zeros((0, FRAME, FRAME), dtype=np.uint8)
    return files, stacked, failed


def read_predict_images(paths: Sequence[str | Path]) -> tuple[list[Path], np.ndarray, list[tuple[Path, str]]]:
    """:func:`load_digits` for ``predict --data.predict_images``: each file that cannot be used is reported on stderr
    as skipped; raises ConfigError (the reason itself for a single file) when none can be used."""
    files, digits, failures = load_digits(paths)
    if not files and len(failures) == 1:
        raise ConfigError(failures[0][1])
    for _, message in failures:
        print(f"mnist-lightning: skipped {message}", file=sys.stderr)
    if not files:
        raise ConfigError(
            f"none of the {len(failures)} images in data.predict_images could be used (see above); "
            "pass PNG or JPEG files of single digits, or folders holding them"
        )
    return files, digits, failures
