"""The report's figures: accuracy against shift level, reliability diagrams and the most confident mistakes."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from matplotlib.figure import Figure
from torch import Tensor

from mnist_lightning.data.transforms import SHIFTS
from mnist_lightning.evaluation.calibration import CALIBRATION_BINS, reliability_bins
from mnist_lightning.figures.digits import digit_grid


def robustness_figure(curves: Mapping[str, Mapping[str, Sequence[float]]], dashed: Collection[str] = ()) -> Figure:
    """One small plot per shift, accuracy against level, every model on the same axes.

    Args:
        curves: model label -> shift name -> accuracy at each level;
            every model has the same shifts.
        dashed: the labels drawn as a dashed black line (the ensemble).
    """
    shifts = [SHIFTS[name] for name in next(iter(curves.values()))]
    columns = min(5, len(shifts))
    rows = math.ceil(len(shifts) / columns)
    height = 2.6 * rows + 1.0
    fig = Figure(figsize=(3.1 * columns, height))  # a fixed layout: constrained layout costs seconds with 10 axes
    fig.subplots_adjust(left=0.05, right=0.99, top=1 - 0.55 / height, bottom=0.75 / height, wspace=0.3, hspace=0.6)
    axes = fig.subplots(rows, columns, squeeze=False).flatten()
    for ax, shift in zip(axes, shifts, strict=False):
        for label, curve in curves.items():
            style = {"linestyle": "--", "color": "black"} if label in dashed else {}
            ax.plot(shift.levels, curve[shift.name], marker="o", markersize=3, label=label, **style)
        ax.set(title=shift.name, xlabel=shift.unit, ylim=(0, 1.02), xticks=shift.levels)
        ax.tick_params(labelsize=7)
        ax.xaxis.label.set_size(7)
        ax.grid(alpha=0.3)
    for ax in axes[len(shifts) :]:
        ax.set_axis_off()
    axes[0].set_ylabel("test accuracy")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncols=min(len(names), 4), fontsize=8, frameon=False)
    fig.suptitle("Accuracy on shifted test digits (level 0: the clean test set)")
    return fig


class ReliabilityPanel(NamedTuple):
    """One model's reliability diagram: its title, its test probabilities and, when it has a fitted temperature,
    the probabilities after it."""

    title: str
    probs: Tensor
    scaled_probs: Tensor | None = None


def reliability_figure(panels: Sequence[ReliabilityPanel], labels: Tensor) -> Figure:
    """Reliability diagram of each model: accuracy against confidence per bin (the bins of the ECE, with the number
    of test images in each written on its bar), before and after temperature."""
    fig = Figure(figsize=(3.6 * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    width = 1 / CALIBRATION_BINS
    centres = (torch.arange(CALIBRATION_BINS) + 0.5) * width
    for ax, panel in zip(axes, panels, strict=True):
        _, accuracy, count = reliability_bins(panel.probs, labels)
        shown = count > 0
        bars = ax.bar(
            centres[shown].tolist(),
            accuracy[shown].tolist(),
            width=width,
            edgecolor="black",
            alpha=0.6,
            label="accuracy",
        )
        counts = [f"{int(c):,}" for c in count[shown].tolist()]
        ax.bar_label(bars, counts, rotation=90, fontsize=5, padding=2)
        if panel.scaled_probs is not None:
            conf_t, acc_t, count_t = reliability_bins(panel.scaled_probs, labels)
            kept = count_t > 0
            ax.plot(
                conf_t[kept].tolist(),
                acc_t[kept].tolist(),
                "o-",
                color="tab:orange",
                markersize=3,
                label="after temperature",
            )
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1.15), xlabel="confidence (bar labels: test images in the bin)", title=panel.title)
        ax.title.set_size(8)
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("accuracy")
    return fig


def mistakes_figure(images: Tensor, mistakes: Sequence[Mapping[str, Any]], label: str) -> Figure:
    """The test digits of ``mistakes`` (``index``, ``true``, ``predicted``, ``probability`` each, as
    :func:`mnist_lightning.evaluation.metrics.confident_mistakes` gives them), titled with what went wrong."""
    if not mistakes:
        fig = Figure(figsize=(3, 1))
        fig.text(0.5, 0.5, "no mistakes on the test set", ha="center", va="center")
        return fig
    shown = images[[m["index"] for m in mistakes]]
    titles = [f"true {m['true']} pred {m['predicted']}\n{m['probability']:.3f}" for m in mistakes]
    title = f"{label}: most confident mistakes (true, predicted, probability)"
    return digit_grid(shown, titles, colors=["firebrick"] * len(titles), ncols=8, title=title)
