"""Distribution shifts of MNIST digits for robustness curves: batched tensor operations on the images' device.

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

ShiftFn = Callable[[Tensor, float, torch.Generator], Tensor]


def _uniform(images: Tensor, generator: torch.Generator, *shape: int) -> Tensor:
    # drawn on the CPU generator and moved: a CPU generator gives the same numbers whatever device the images are on
    return torch.rand(*shape, generator=generator).to(images.device, images.dtype)


def _random_sign(images: Tensor, generator: torch.Generator) -> Tensor:
    return _uniform(images, generator, len(images)).round().mul(2).sub(1)


def _affine(images: Tensor, angle: Tensor, shift: Tensor, zoom: Tensor) -> Tensor:
    """Rotate by ``angle`` (radians), shift by ``shift`` (``(N, 2)`` in pixels) and zoom by ``zoom``, per image."""
    size = images.shape[-1]
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # affine_grid maps output coordinates to input ones, in [-1, 1]: a shift of s pixels is -2 s / size there
    tx, ty = -2 * shift[:, 0] / size, -2 * shift[:, 1] / size
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")


def rotate(images: Tensor, degrees: float, generator: torch.Generator) -> Tensor:
    """Rotate every digit by ``degrees``, clockwise or anticlockwise at random."""
    if degrees == 0:
        return images
    angle = _random_sign(images, generator) * math.radians(degrees)
    zeros = torch.zeros(len(images), 2, device=images.device, dtype=images.dtype)
    return _affine(images, angle, zeros, torch.ones_like(angle))


def translate(images: Tensor, pixels: float, generator: torch.Generator) -> Tensor:
    """Move every digit by ``pixels`` in a random direction (what leaves the frame is lost)."""
    if pixels == 0:
        return images
    direction = _uniform(images, generator, len(images)) * 2 * math.pi
    shift = torch.stack([torch.cos(direction), torch.sin(direction)], 1) * pixels
    zeros = torch.zeros(len(images), device=images.device, dtype=images.dtype)
    return _affine(images, zeros, shift, torch.ones_like(zeros))


def scale(images: Tensor, factor: float, generator: torch.Generator) -> Tensor:
    """Shrink every digit to ``factor`` of its size, or grow it by ``1 / factor``, at random, about the centre."""
    if factor == 1:
        return images
    zoom = torch.where(_random_sign(images, generator) > 0, factor, 1 / factor).to(images.dtype)
    zeros = torch.zeros(len(images), device=images.device, dtype=images.dtype)
    return _affine(images, zeros, torch.zeros(len(images), 2, device=images.device, dtype=images.dtype), zoom)


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
    """Gaussian blur of the last two dimensions (rows, then columns); also smooths the training augmentation's
    elastic field (:func:`mnist_lightning.data.elastic_displacement`)."""
    rows = _blur_matrix(images.shape[-1], sigma, images.device, images.dtype)
    columns = _blur_matrix(images.shape[-2], sigma, images.device, images.dtype)
    return columns.T @ (images @ rows)


def blur(images: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    """Gaussian blur with standard deviation ``sigma`` pixels."""
    return images if sigma == 0 else gaussian_blur(images, sigma)


def elastic(images: Tensor, alpha: float, generator: torch.Generator, grid: int = 5) -> Tensor:
    """Elastic deformation: random displacements on a coarse ``grid`` × ``grid`` lattice, smoothly (bicubically)
    interpolated to every pixel and scaled so that the largest displacement in each image is ``alpha`` pixels."""
    if alpha == 0:
        return images
    n, _, height, width = images.shape
    coarse = _uniform(images, generator, n, 2, grid, grid) * 2 - 1
    field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
    field = field / field.flatten(1).abs().amax(1).clamp_min(1e-8).view(n, 1, 1, 1) * alpha
    ys = torch.linspace(-1 + 1 / height, 1 - 1 / height, height, device=images.device, dtype=images.dtype)
    xs = torch.linspace(-1 + 1 / width, 1 - 1 / width, width, device=images.device, dtype=images.dtype)
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)  # (H, W, 2) as (x, y), what grid_sample wants
    offset = field.permute(0, 2, 3, 1) * torch.tensor([2 / width, 2 / height], device=images.device)
    return F.grid_sample(images, base + offset, align_corners=False, padding_mode="zeros")


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
    top = (low + _uniform(images, generator, n) * max(high - low, 0)).long().view(n, 1, 1)
    left = (low + _uniform(images, generator, n) * max(high - low, 0)).long().view(n, 1, 1)
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
