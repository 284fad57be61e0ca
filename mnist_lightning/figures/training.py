"""Figures of what a model does while it trains: the confusion matrix, attention maps and learning curves."""

from __future__ import annotations

import math

from matplotlib.figure import Figure
from torch import Tensor
from torchmetrics.functional.classification import multiclass_confusion_matrix

NUM_CLASSES = 10


def confusion_matrix(predicted: Tensor, true: Tensor, num_classes: int = NUM_CLASSES) -> Tensor:
    """Counts ``(true, predicted)`` as a ``(num_classes, num_classes)`` int64 matrix."""
    return multiclass_confusion_matrix(predicted.long(), true.long(), num_classes)


def confusion_matrix_figure(matrix: Tensor, title: str = "") -> Figure:
    """The confusion matrix with its counts written in the cells (rows: true digit, columns: predicted)."""
    matrix = matrix.cpu()
    fig = Figure(figsize=(6, 5.4))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.1, top=0.93)
    ax = fig.subplots()
    shown = ax.imshow(matrix.numpy(), cmap="Blues")
    fig.colorbar(shown, ax=ax, shrink=0.8)
    n = matrix.shape[0]
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)
    threshold = matrix.max().item() / 2
    for t in range(n):
        for p in range(n):
            count = matrix[t, p].item()
            if count:
                color = "white" if count > threshold else "black"
                ax.text(p, t, str(count), ha="center", va="center", fontsize=7, color=color)
    return fig


def token_labels(tokens: int) -> list[str]:
    """Names of the tokens of an attention map: ``c`` for the class token (token 0), then the patches from 1."""
    return ["c"] + [str(i) for i in range(1, tokens)]


def _token_ticks(tokens: int) -> list[int]:
    # the class token, then the last patch of every patch row (c, 4, 8, 12, 16 for a 4×4 grid), about 5 ticks
    if tokens < 2:
        return list(range(tokens))
    side = math.isqrt(tokens - 1)
    step = side * max(1, -(-side // 4)) if side * side == tokens - 1 else max(1, -(-(tokens - 1) // 4))
    return [0, *range(step, tokens, step)]


def attention_figure(images: Tensor, attention: Tensor, title: str = "") -> Figure:
    """One row per image: the image, then every head's ``tokens × tokens`` attention ``(batch, heads, T, T)``.

    In each matrix the rows are the query tokens and the columns the key tokens (``c``, token 0, is the class token;
    1, 2, ... the patches row by row), so every row sums to 1. Heads are numbered from 1, as in the notebooks and
    the drawing page. All matrices share one colour scale, from 0 to the largest weight shown, with its colour bar
    on the right.
    """
    images = images.detach().float().cpu().reshape(len(images), *images.shape[-2:])
    attention = attention.detach().float().cpu()
    batch, heads, tokens = attention.shape[:3]
    vmax = float(attention.max()) if attention.numel() else 1.0
    width, height = 1.6 * (heads + 1) + 1.1, 1.7 * batch + 1.2  # inches: +colour bar, +titles and axis labels
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(batch, heads + 1, squeeze=False)
    top, bottom = 1 - 0.75 / height, 0.45 / height
    fig.subplots_adjust(left=0.2 / width, right=1 - 1.0 / width, bottom=bottom, top=top, wspace=0.25, hspace=0.3)
    ticks = _token_ticks(tokens)
    names = token_labels(tokens)
    shown = None
    for b in range(batch):
        axes[b, 0].imshow(images[b].numpy(), cmap="gray")
        axes[b, 0].set_axis_off()
        if b == 0:
            axes[b, 0].set_title("input", fontsize=9)
        for h in range(heads):
            ax = axes[b, h + 1]
            shown = ax.imshow(attention[b, h].numpy(), cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
            # tick labels and axis labels only along the left column of heads and the bottom row, as in a grid plot
            ax.set_xticks(ticks, [names[t] for t in ticks] if b == batch - 1 else [])
            ax.set_yticks(ticks, [names[t] for t in ticks] if h == 0 else [])
            ax.tick_params(labelsize=6, length=2, pad=1)
            if b == 0:
                ax.set_title(f"head {h + 1}", fontsize=9)
            if b == batch - 1:
                ax.set_xlabel("key token", fontsize=8, labelpad=1)
            if h == 0:
                ax.set_ylabel("query token", fontsize=8, labelpad=1)
    if shown is not None:
        bar_axes = fig.add_axes((1 - 0.8 / width, bottom, 0.12 / width, top - bottom))
        bar = fig.colorbar(shown, cax=bar_axes)
        bar.set_label("attention probability", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    note = f"rows: query tokens, columns: key tokens (c: class token, 1–{tokens - 1}: patches row by row)"
    fig.suptitle(f"{title}\n{note}" if title else note, fontsize=9, y=1 - 0.08 / height, va="top")
    return fig


def learning_curves_figure(curves: dict[str, list[tuple[int, float]]]) -> Figure:
    """Train and validation loss, and validation accuracy, against the training step."""
    fig = Figure(figsize=(10, 4))
    loss_ax, acc_ax = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.92, wspace=0.25)
    for key, label in (("train/loss", "train"), ("val/loss", "validation")):
        if curves.get(key):
            steps, values = zip(*curves[key])
            loss_ax.plot(steps, values, marker="o", label=label)
    loss_ax.set(xlabel="training step", ylabel="cross-entropy loss", title="loss")
    loss_ax.legend()
    if curves.get("val/acc"):
        steps, values = zip(*curves["val/acc"])
        acc_ax.plot(steps, values, marker="o", color="tab:green")
    acc_ax.set(xlabel="training step", ylabel="accuracy", title="validation accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
    return fig
