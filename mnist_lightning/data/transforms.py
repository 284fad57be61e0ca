"""Batched image transforms on the images' device: uint8 pixels to model input, the training augmentation and the
report's distribution shifts, all made from one affine-grid builder, one elastic displacement and one Gaussian blur.

Every shift takes a float batch ``(N, 1, 28, 28)`` scaled to [0, 1] (white ink on black, as MNIST is stored), a
level in the shift's own unit (degrees, pixels, a factor, ...) and a ``torch.Generator`` for the random parts, so the
same seed gives the same shifted images on every run and for every model of a comparison. Level 0 of every shift
(``SHIFTS[name].levels[0]``) returns the images unchanged: severity 0 is the clean test set.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

MEAN = 0.1307
STD = 0.3081
ELASTIC_SHIFT_SIGMA = 4.0  # smoothness in pixels of the report's elastic field: Simard et al.'s, as in training

ShiftFn = Callable[[Tensor, float, torch.Generator], Tensor]


# --- model input ----------------------------------------------------------------------------------------------------


def normalize(images: Tensor) -> Tensor:
    """Standardize images scaled to [0, 1] with the MNIST training mean and standard deviation."""
    return (images - MEAN) / STD


def normalize_uint8(images: Tensor) -> Tensor:
    """:func:`normalize` of raw 0–255 pixels in two in-place passes over one new float tensor: the model input."""
    return images.float().sub_(255 * MEAN).mul_(1 / (255 * STD))


# --- the parts: random numbers, affine grids, blur, elastic displacement -------------------------------------------


def uniform(like: Tensor, generator: torch.Generator | None, *shape: int) -> Tensor:
    """Numbers uniform in [0, 1) of ``shape`` on ``like``'s device and in its dtype.

    With a generator they are drawn on the generator's device and moved: a CPU generator gives the same numbers
    whatever device the images are on. Without one they come from the default generator of the images' device.
    """
    device = like.device if generator is None else generator.device
    return torch.rand(*shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def affine_grid(shape: torch.Size, angle: Tensor, zoom: Tensor, offset: Tensor) -> Tensor:
    """``grid_sample``'s grid that rotates by ``angle`` (radians), zooms by ``zoom`` and moves by ``offset`` (``(N, 2)``
    as x, y in grid units: the image spans [-1, 1]), per image of a batch of ``shape``.

    The grid maps output to input coordinates, so an offset of +o samples from o further right: the picture moves
    left (the report's shifts pass ``-2 * pixels / size`` to move it by ``pixels``).
    """
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, offset[:, 0]], 1), torch.stack([sin, cos, offset[:, 1]], 1)], 1)
    return F.affine_grid(theta, list(shape), align_corners=False)


def resample(images: Tensor, grid: Tensor) -> Tensor:
    """``images`` sampled (bilinearly) at ``grid``; what falls outside the frame is black."""
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")


def _blur_matrix(size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``(size, size)`` matrix M such that ``x @ M`` blurs the rows of ``x`` with a Gaussian (zeros beyond the edge).

    A blur as two small matrix products is exact and far faster on the CPU than a convolution of 28 × 28 images.
    """
    x = torch.arange(size, device=device, dtype=dtype)
    weights = torch.exp(-((x.view(-1, 1) - x.view(1, -1)) ** 2) / (2 * sigma**2))
    radius = max(1, math.ceil(3 * sigma))
    full_sum = torch.exp(-(torch.arange(-radius, radius + 1, device=device, dtype=dtype) ** 2) / (2 * sigma**2)).sum()
    return weights / full_sum  # normalised as the full kernel is, so a border pixel loses what falls outside


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of the last two dimensions (rows, then columns): the ``blur`` shift, and the smoothing of
    :func:`elastic_displacement`."""
    rows = _blur_matrix(images.shape[-1], sigma, images.device, images.dtype)
    columns = _blur_matrix(images.shape[-2], sigma, images.device, images.dtype)
    return columns.T @ (images @ rows)


def elastic_displacement(
    images: Tensor, alpha: float, sigma: float, generator: torch.Generator | None = None
) -> Tensor:
    """A random smooth displacement field ``(B, H, W, 2)`` in ``grid_sample``'s [-1, 1] coordinates.

    Simard, Steinkraus and Platt (2003): uniform noise in [-1, 1] per pixel and axis, smoothed by a Gaussian of
    ``sigma`` pixels and scaled by ``alpha`` pixels. With their alpha 34 and sigma 4 pixels move by about 1–2
    pixels, smoothly, like a hand that writes the digit a little differently.
    """
    batch, _, height, width = images.shape
    noise = uniform(images, generator, batch, 2, height, width) * 2 - 1
    field = gaussian_blur(noise, sigma) * alpha
    pixels_to_grid = torch.tensor([2 / width, 2 / height], device=images.device, dtype=images.dtype)
    return field.permute(0, 2, 3, 1) * pixels_to_grid  # grid_sample's x, y run over [-1, 1]


# --- training augmentation ------------------------------------------------------------------------------------------


def random_affine(
    images: Tensor,
    degrees: float,
    translate: float,
    scale: tuple[float, float],
    generator: torch.Generator | None = None,
    elastic_alpha: float = 0.0,
    elastic_sigma: float = 4.0,
) -> Tensor:
    """A random rotation, shift and scale for every image of a ``(B, C, H, W)`` float batch, on its device, and
    with ``elastic_alpha > 0`` an elastic deformation on top, all in one resampling of the image."""
    batch = images.shape[0]
    angle = (uniform(images, generator, batch) * 2 - 1) * math.radians(degrees)
    device = images.device if generator is None else generator.device
    factor = torch.empty(batch, device=device, dtype=images.dtype).uniform_(scale[0], scale[1], generator=generator)
    shift = (uniform(images, generator, batch, 2) * 2 - 1) * (2 * translate)
    grid = affine_grid(images.shape, angle, factor.to(images.device), shift)
    if elastic_alpha > 0:
        grid = grid + elastic_displacement(images, elastic_alpha, elastic_sigma, generator)
    return resample(images, grid)


def augment_uint8(
    images: Tensor,
    degrees: float,
    translate: float,
    scale: tuple[float, float],
    elastic_alpha: float = 0.0,
    elastic_sigma: float = 4.0,
) -> Tensor:
    """Model input of raw uint8 training images, each randomly transformed by :func:`random_affine` on the way."""
    pixels = images.float().div_(255)
    return normalize(random_affine(pixels, degrees, translate, scale, None, elastic_alpha, elastic_sigma))


# --- the report's shifts --------------------------------------------------------------------------------------------


def _random_sign(images: Tensor, generator: torch.Generator) -> Tensor:
    return uniform(images, generator, len(images)).round().mul(2).sub(1)


def _move(images: Tensor, angle: Tensor, shift: Tensor, zoom: Tensor) -> Tensor:
    """Rotate by ``angle`` (radians), shift by ``shift`` (``(N, 2)`` in pixels) and zoom by ``zoom``, per image."""
    return resample(images, affine_grid(images.shape, angle, zoom, -2 * shift / images.shape[-1]))


def _zeros(images: Tensor, *shape: int) -> Tensor:
    return torch.zeros(len(images), *shape, device=images.device, dtype=images.dtype)


def rotate(images: Tensor, degrees: float, generator: torch.Generator) -> Tensor:
    """Rotate every digit by ``degrees``, clockwise or anticlockwise at random."""
    if degrees == 0:
        return images
    angle = _random_sign(images, generator) * math.radians(degrees)
    return _move(images, angle, _zeros(images, 2), torch.ones_like(angle))


def translate(images: Tensor, pixels: float, generator: torch.Generator) -> Tensor:
    """Move every digit by ``pixels`` in a random direction (what leaves the frame is lost)."""
    if pixels == 0:
        return images
    direction = uniform(images, generator, len(images)) * 2 * math.pi
    shift = torch.stack([torch.cos(direction), torch.sin(direction)], 1) * pixels
    zeros = _zeros(images)
    return _move(images, zeros, shift, torch.ones_like(zeros))


def scale(images: Tensor, factor: float, generator: torch.Generator) -> Tensor:
    """Shrink every digit to ``factor`` of its size, or grow it by ``1 / factor``, at random, about the centre."""
    if factor == 1:
        return images
    zoom = torch.where(_random_sign(images, generator) > 0, factor, 1 / factor).to(images.dtype)
    return _move(images, _zeros(images), _zeros(images, 2), zoom)


def blur(images: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    """Gaussian blur with standard deviation ``sigma`` pixels."""
    return images if sigma == 0 else gaussian_blur(images, sigma)


def elastic(images: Tensor, pixels: float, generator: torch.Generator) -> Tensor:
    """Elastic deformation: the smooth random field of :func:`elastic_displacement` (sigma
    :data:`ELASTIC_SHIFT_SIGMA`), scaled so that the largest displacement in each image is ``pixels`` pixels."""
    if pixels == 0:
        return images
    field = elastic_displacement(images, 1.0, ELASTIC_SHIFT_SIGMA, generator)
    height, width = images.shape[-2:]
    grid_to_pixels = torch.tensor([width / 2, height / 2], device=images.device, dtype=images.dtype)
    largest = (field * grid_to_pixels).flatten(1).abs().amax(1).clamp_min(1e-8).view(-1, 1, 1, 1)
    zeros = _zeros(images)
    identity = affine_grid(images.shape, zeros, torch.ones_like(zeros), _zeros(images, 2))
    return resample(images, identity + field * (pixels / largest))


def noise(images: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """Add Gaussian noise of standard deviation ``std`` (pixels are in [0, 1]) and clip to [0, 1]."""
    if std == 0:
        return images
    return (images + torch.randn(images.shape, generator=generator).to(images) * std).clamp_(0, 1)


def occlude(images: Tensor, side: float, generator: torch.Generator) -> Tensor:
    """Erase a ``side`` × ``side`` square at a random place of the central 20 × 20 (where the digit is)."""
    side = int(side)
    if side == 0:
        return images
    n, size = len(images), images.shape[-1]
    low, high = 4, size - 4 - side  # the square's top-left corner keeps it mostly over the digit's box
    top = (low + uniform(images, generator, n) * max(high - low, 0)).long().view(n, 1, 1)
    left = (low + uniform(images, generator, n) * max(high - low, 0)).long().view(n, 1, 1)
    rows = torch.arange(size, device=images.device).view(1, size, 1)
    cols = torch.arange(size, device=images.device).view(1, 1, size)
    square = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    return images.masked_fill(square.unsqueeze(1), 0.0)


def contrast(images: Tensor, factor: float, generator: torch.Generator) -> Tensor:
    """Scale the contrast about mid-grey: ink and background both move towards 0.5 (``factor`` 1: unchanged)."""
    return images if factor == 1 else (images - 0.5) * factor + 0.5


def thinner(images: Tensor, steps: float, generator: torch.Generator) -> Tensor:
    """Erode the strokes ``steps`` times with a 3 × 3 minimum filter."""
    for _ in range(int(steps)):
        images = -F.max_pool2d(-images, 3, stride=1, padding=1)
    return images


def thicker(images: Tensor, steps: float, generator: torch.Generator) -> Tensor:
    """Dilate the strokes ``steps`` times with a 3 × 3 maximum filter."""
    for _ in range(int(steps)):
        images = F.max_pool2d(images, 3, stride=1, padding=1)
    return images


@dataclass(frozen=True)
class Shift:
    """A shift, its levels (the first is the clean images) and the unit of the levels, for plot axes."""

    name: str
    apply: ShiftFn
    levels: tuple[float, ...]
    unit: str


SHIFTS: dict[str, Shift] = {
    shift.name: shift
    for shift in (
        Shift("rotation", rotate, (0, 15, 30, 45, 60, 90), "degrees"),
        Shift("translation", translate, (0, 2, 4, 6, 8), "pixels"),
        Shift("scaling", scale, (1.0, 0.85, 0.7, 0.55, 0.4), "factor (shrink or grow by its inverse)"),
        Shift("elastic", elastic, (0, 1, 2, 3, 4), "largest displacement, pixels"),
        Shift("noise", noise, (0, 0.1, 0.2, 0.4, 0.6), "standard deviation"),
        Shift("blur", blur, (0, 0.5, 1.0, 1.5, 2.0), "sigma, pixels"),
        Shift("occlusion", occlude, (0, 6, 9, 12, 15), "square side, pixels"),
        Shift("contrast", contrast, (1.0, 0.5, 0.3, 0.15, 0.05), "contrast factor"),
        Shift("thinner", thinner, (0, 1, 2), "3×3 erosions"),
        Shift("thicker", thicker, (0, 1, 2, 3), "3×3 dilations"),
    )
}


def apply_shift(name: str, images: Tensor, level: float, generator: torch.Generator) -> Tensor:
    """``SHIFTS[name]`` at ``level`` applied to a float batch ``(N, 1, 28, 28)`` in [0, 1]."""
    return SHIFTS[name].apply(images, level, generator)
