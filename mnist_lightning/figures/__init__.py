"""Figures as pure functions: tensors and numbers in, a matplotlib ``Figure`` out, nothing logged or written.

Training media (:mod:`mnist_lightning.callbacks`), the report and the notebooks draw with these; :func:`save_png`
is the one place a figure becomes a file.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from mnist_lightning.outputs import replace_atomically


def save_png(fig: Figure, path: Path) -> Path:
    """Write the figure as PNG through a temporary file, so a PNG is either complete or absent."""
    return replace_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80), suffix=".png")
