"""Digit images as pictures: a titled grid of digits (training media, the report, the notebooks) and one digit as
8-bit pixels (W&B table cells)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor


def scaled_to_unit(image: Tensor) -> Tensor:
    """An image of any range stretched to span 0..1 (all zeros when it is flat)."""
    low, high = image.min(), image.max()
    return (image - low) / (high - low) if high > low else torch.zeros_like(image)


def to_uint8(image: Tensor) -> Any:
    """A ``(1, H, W)`` or ``(H, W)`` image of any range as a uint8 ``(H, W)`` array spanning 0..255."""
    image = image.detach().float().cpu().reshape(image.shape[-2:])
    return (scaled_to_unit(image) * 255).round().to(torch.uint8).numpy()


def digit_grid(
    images: Tensor,
    titles: Sequence[str],
    colors: Sequence[str] | None = None,
    ncols: int = 8,
    title: str = "",
    cmap: str = "gray",
    new_figure: Callable[..., Figure] = Figure,
) -> Figure:
    """A grid of ``(N, 1, H, W)`` or ``(N, H, W)`` images of any range (each stretched to its own min..max), each
    titled (and optionally colored).

    The images are tiled into one picture on a single axes (far cheaper to draw than one axes per image).
    ``cmap="gray_r"`` draws dark ink on white; ``new_figure=matplotlib.pyplot.figure`` makes a figure pyplot shows
    (the notebooks'), the default a plain one nothing keeps a reference to.
    """
    images = images.detach().float().cpu().reshape(len(images), *images.shape[-2:])
    count, height, width = images.shape
    ncols = max(1, min(ncols, count))
    nrows = max(1, -(-count // ncols))
    lines = max((t.count("\n") + 1 for t in titles), default=1)
    pad, title_space = 2, 4 * lines + 2  # in image pixels
    cell_h, cell_w = height + title_space + pad, width + pad
    canvas = torch.full((nrows * cell_h, ncols * cell_w), float("nan"))
    for i, image in enumerate(images):
        row, col = divmod(i, ncols)
        top, left = row * cell_h + title_space, col * cell_w
        canvas[top : top + height, left : left + width] = scaled_to_unit(image)
    scale = 0.05  # inches per image pixel
    fig = new_figure(figsize=(canvas.shape[1] * scale, canvas.shape[0] * scale + (0.35 if title else 0.05)))
    ax = fig.add_axes((0, 0, 1, canvas.shape[0] * scale / fig.get_figheight()))
    ax.imshow(canvas.numpy(), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_facecolor("white")
    ax.set_axis_off()
    for i, text in enumerate(titles[:count]):
        row, col = divmod(i, ncols)
        color = colors[i] if colors else "black"
        x, y = col * cell_w + width / 2, row * cell_h + title_space - 1
        ax.text(x, y, text, ha="center", va="bottom", fontsize=7 if lines > 1 else 8, color=color)
    if title:
        fig.suptitle(title, y=1 - 0.02 / fig.get_figheight(), va="top", fontsize=10)
    return fig
