"""Test-time augmentation and checkpoint ensembles: the mean class probabilities of several views and models.

``mnist-lightning test`` and ``predict`` build an :class:`EnsembleClassifier` when given ``--tta`` (more than one
view) or ``--ensemble`` (more checkpoints). Every member keeps its own architecture, weights (its weight average
when it has one) and temperature; the ensemble averages their probabilities, never their logits, so members of
different families and calibrations mix fairly.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from mnist_lightning.data import MEAN, STD
from mnist_lightning.errors import ConfigError
from mnist_lightning.models.base import NUM_CLASSES, MNISTClassifier
from mnist_lightning.models.metrics import SampleMean

# (rows, columns) shifts of the test-time views, in the order they are added: the image itself, then one pixel
# up/down/left/right, then the diagonals. No flips or large rotations: a mirrored 2 is not a 2, a turned 6 is a 9.
VIEW_SHIFTS: tuple[tuple[int, int], ...] = (
    (0, 0),
    (-1, 0),
    (1, 0),
    (0, -1),
    (0, 1),
    (-1, -1),
    (-1, 1),
    (1, -1),
    (1, 1),
)
MAX_VIEWS = len(VIEW_SHIFTS)
BACKGROUND = -MEAN / STD  # a black pixel after normalization


def check_views(views: int) -> int:
    """``views`` if it is a number of test-time views this module has (1 is the image alone)."""
    if isinstance(views, bool) or not isinstance(views, int) or not 1 <= views <= MAX_VIEWS:
        raise ConfigError(
            f"the number of test-time views (--tta) must be a whole number from 1 (off) to {MAX_VIEWS}, got {views!r}; "
            "try 5 (the image "
            "and its one-pixel shifts up, down, left and right)"
        )
    return views


def shifted(images: Tensor, rows: int, columns: int) -> Tensor:
    """Normalized images ``(B, C, H, W)`` moved by whole pixels, with black coming in at the edges."""
    if rows == 0 and columns == 0:
        return images
    pad = max(abs(rows), abs(columns))
    height, width = images.shape[-2:]
    padded = F.pad(images, (pad, pad, pad, pad), value=BACKGROUND)
    top, left = pad - rows, pad - columns
    return padded[..., top : top + height, left : left + width]


class ProbabilityAverage(nn.Module):
    """The log of the mean class probabilities of ``members`` over ``views`` shifted views of every image.

    Log-probabilities behave as logits (their softmax gives the probabilities back), so the loss, the accuracy and
    the predictions of :class:`EnsembleClassifier` are computed as for any classifier.
    """

    def __init__(self, members: Sequence[MNISTClassifier], views: int = 1) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.views = check_views(views)

    def forward(self, images: Tensor) -> Tensor:
        total: Tensor | None = None
        for member in self.members:
            for rows, columns in VIEW_SHIFTS[: self.views]:
                probabilities = member.probabilities(shifted(images, rows, columns))
                total = probabilities if total is None else total + probabilities
        assert total is not None  # at least one member and one view
        mean = total / (len(self.members) * self.views)
        return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()


class EnsembleClassifier(L.LightningModule):
    """Evaluation-only classifier: the probabilities of several checkpoints and test-time views, averaged.

    Logs ``test/loss`` (the NLL of the averaged probabilities) and ``test/acc``; ``predict`` gives the averaged
    probabilities. It is built for ``test`` and ``predict``, never trained or saved.
    """

    def __init__(self, members: Sequence[MNISTClassifier], views: int = 1, sources: Sequence[str] = ()) -> None:
        super().__init__()
        if not members:
            raise ConfigError("an ensemble needs at least one checkpoint")
        self.net = ProbabilityAverage(members, views)
        self.sources = [str(s) for s in sources]
        self.test_loss = SampleMean()
        self.test_acc = MulticlassAccuracy(NUM_CLASSES, average="micro", validate_args=False)
        self.temperature = 1.0  # the members apply their own; this one (--predictions.temperature) comes on top
        # data.eval_batch_size "auto" on the CPU: a large batch only when it pays for every member
        self.large_eval_batches_on_cpu = all(member.large_eval_batches_on_cpu for member in members)

    @property
    def num_parameters(self) -> int:
        """Trainable parameters of all members together (weight averages not counted twice)."""
        return sum(member.num_parameters for member in self.net.members)

    def describe(self) -> str:
        """``2 checkpoints × 5 views``: what is averaged, in words."""
        count = len(self.net.members)
        return (
            f"{count} checkpoint{'s' if count > 1 else ''} × {self.net.views} view{'s' if self.net.views > 1 else ''}"
        )

    def forward(self, images: Tensor) -> Tensor:
        """Log of the averaged probabilities ``(B, 10)`` (they act as logits)."""
        return self.net(images)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        log_probabilities = self(images)
        self.test_loss.update(F.nll_loss(log_probabilities.float(), labels), len(labels))
        self.test_acc.update(log_probabilities, labels)

    def on_test_epoch_end(self) -> None:
        self.log("test/loss", self.test_loss, prog_bar=True)
        self.log("test/acc", self.test_acc, prog_bar=True)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.probabilities(batch[0])

    def probabilities(self, images: Tensor) -> Tensor:
        """The averaged class probabilities ``(B, 10)`` in float32 (sharpened or softened by ``temperature``)."""
        return (self(images).float() / self.temperature).softmax(dim=1)

    def configure_optimizers(self) -> Any:
        raise ConfigError("an ensemble or test-time augmentation is for test and predict; it cannot be trained")


def check_checkpoint_path(path: Path, what: str) -> None:
    """Refuse, naming it as what it is, a ``path`` that cannot be a checkpoint file: a symbolic link that loops or
    points nowhere, or a name that does not exist. ``what`` says whose path it is (``the ensemble member``)."""
    if path.is_symlink() and not path.exists():
        try:
            target = path.resolve(strict=True)
        except RuntimeError:  # Python < 3.13 raises RuntimeError for a loop
            target = None
        except OSError as err:
            if err.errno == errno.ELOOP:
                target = None
            else:
                raise ConfigError(
                    f"{what} {path} is a symbolic link to {os.readlink(path)}, which does not exist; "
                    "pass the checkpoint file itself"
                ) from None
        if target is None:
            raise ConfigError(f"{what} {path} is a symbolic link that loops back on itself; pass a .ckpt file")
    if not path.exists():
        raise ConfigError(
            f"{what} {path} does not exist; pass .ckpt files (or folders of them) written by mnist-lightning fit"
        )


def expand_checkpoints(paths: Sequence[str | Path], what: str = "the ensemble member (--ensemble)") -> list[Path]:
    """The checkpoint files ``paths`` name, a folder standing for the ``.ckpt`` files in it (``last*.ckpt``
    aside: they repeat a run's latest state), in order and without repeats."""
    found: list[Path] = []
    for entry in paths:
        path = Path(entry)
        check_checkpoint_path(path, what)
        if path.is_dir():
            files = sorted(p for p in path.glob("*.ckpt") if p.is_file() and not p.name.startswith("last"))
            if not files:
                lasts = sorted(p.name for p in path.glob("last*.ckpt"))
                if lasts:
                    raise ConfigError(
                        f"the ensemble folder {path} holds only {', '.join(lasts)} (a run's latest state, which a "
                        f"folder leaves out because it repeats a run); name it as a file: {path / lasts[0]}"
                    )
                raise ConfigError(f"the ensemble folder {path} holds no .ckpt files; name the checkpoint files")
            found += files
        else:
            found.append(path)
    unique: dict[Path, None] = {}
    for path in found:
        unique.setdefault(path.resolve(), None)
    return list(unique)
