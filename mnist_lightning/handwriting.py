"""Your own handwriting as MNIST digits: image files prepared the way the MNIST images were made.

MNIST's digits were size-normalized to fit a 20×20 box (keeping their aspect ratio, antialiased) and then
centred by their centre of mass in a 28×28 frame, white ink on black. :func:`prepare_digit` does the same to
any picture of one digit: a photo or scan (dark ink on light paper) or a drawing (light on dark), any size,
colour or grey. Only numpy and Pillow are used, so the same steps work next to an exported model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_lightning.errors import MNISTLightningError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
FRAME = 28  # the MNIST image size
BOX = 20  # the longer side of the digit inside the frame
MIN_CONTRAST = 32  # grey levels between paper and the darkest ink below which an image counts as blank
NOISE_FLOOR = 0.2  # ink weaker than this fraction of the strongest ink is paper texture or JPEG noise


class ImageInputError(MNISTLightningError, ValueError):
    """One image that cannot be turned into a digit; the message names the file and says why."""


def prepare_digit(image: Image.Image) -> np.ndarray:
    """A picture of one digit as a ``(28, 28)`` uint8 MNIST-style image: white ink on black, 20 px, centred.

    Steps: greyscale; inverted when the background (the image's border) is light; paper level subtracted and
    ink stretched to full strength; cropped to the ink's bounding box; scaled (antialiased) so its longer side
    is 20 pixels; placed in a 28×28 frame so that its centre of mass is at the frame's centre (pixel 14, 14).

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
    """Luminance as float ``(H, W)`` in [0, 255]; transparent areas become the opposite of the ink's shade."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255
        luma = np.asarray(rgba.convert("L"), dtype=np.float32)
        ink_shade = (luma * alpha).sum() / max(alpha.sum(), 1e-6)
        behind = 0.0 if ink_shade > 127 else 255.0
        return luma * alpha + behind * (1 - alpha)
    return np.asarray(image.convert("L"), dtype=np.float32)


def _border(grey: np.ndarray) -> np.ndarray:
    """The pixels of a frame around the image (2% of its shorter side, at least one pixel): mostly background."""
    band = max(1, round(0.02 * min(grey.shape)))
    return np.concatenate([grey[:band].ravel(), grey[-band:].ravel(), grey[:, :band].ravel(), grey[:, -band:].ravel()])


def load_digit(path: str | Path) -> np.ndarray:
    """Read an image file and prepare it with :func:`prepare_digit`; raise ImageInputError naming the file."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return prepare_digit(image)
    except ImageInputError as err:
        raise ImageInputError(f"{path}: {err}") from None
    except FileNotFoundError:
        raise ImageInputError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise ImageInputError(f"{path}: not an image file Pillow can read; use a PNG or JPEG of one digit") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageInputError(f"{path}: could not be read ({err}); save it again as PNG or JPEG") from None


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
