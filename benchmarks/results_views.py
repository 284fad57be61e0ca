"""How many test-time views an ensemble row of the results table uses: chosen on the validation split, never on test.

Every member's class probabilities are computed once per view (the image and its one-pixel shifts, in the order of
:data:`~mnist_lightning.evaluation.ensemble.VIEW_SHIFTS`) on the validation images the members were chosen on; the
ensemble of the first ``k`` views is their running mean, so every count from 1 to the most allowed is scored from
one pass. The count with the best validation accuracy wins (then the lower validation NLL, then fewer views: a
difference of one or two images of 5,000 is noise, and fewer views cost less). Only then is the test set used, once,
with that count (benchmarks/results.py, benchmarks/gpu_frontier.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mnist_lightning.checkpoints import data_dir_to_evaluate, inspect_checkpoint, load_classifier
from mnist_lightning.data import MNISTDataModule, normalize_uint8
from mnist_lightning.errors import ConfigError
from mnist_lightning.evaluation.ensemble import MAX_VIEWS, VIEW_SHIFTS, check_views, shifted

# the data settings that decide which images are validation images: members must agree on them
SPLIT_SETTINGS = ("val_size", "split_seed")


def validation_split(members: Sequence[Path], data_dir: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation images (uint8 ``(N, 28, 28)``) and labels every member was chosen on.

    Refused when the members were trained on different splits: one member's validation images would then be
    another's training images, and a choice made on them would favour that member.
    """
    infos = [inspect_checkpoint(path) for path in members]
    splits = {tuple(info.data_settings.get(key) for key in SPLIT_SETTINGS) for info in infos}
    if len(splits) > 1:
        raise ConfigError(
            f"the ensemble's checkpoints were trained on different validation splits ({sorted(map(str, splits))}); "
            "test-time views can only be chosen on images none of them trained on: ensemble checkpoints of one split"
        )
    settings = {key: infos[0].data_settings[key] for key in SPLIT_SETTINGS if key in infos[0].data_settings}
    data = MNISTDataModule(data_dir=data_dir_to_evaluate(infos[0], data_dir), download=False, **settings)
    data.setup("validate")
    return data.splits["val"]


@torch.no_grad()
def view_probabilities(
    models: Sequence[torch.nn.Module], images: torch.Tensor, views: int, batch_size: int = 1000
) -> torch.Tensor:
    """Class probabilities ``(views, N, 10)`` of uint8 ``images``, averaged over ``models``, one slice per view."""
    device = next(models[0].parameters()).device
    out = torch.zeros(views, len(images), 10)
    for start in range(0, len(images), batch_size):
        batch = normalize_uint8(images[start : start + batch_size].unsqueeze(1).to(device))
        for view, (rows, columns) in enumerate(VIEW_SHIFTS[:views]):
            total = sum(model.probabilities(shifted(batch, rows, columns)).float() for model in models)
            out[view, start : start + len(batch)] = (total / len(models)).cpu()
    return out


def score_views(probabilities: torch.Tensor, labels: torch.Tensor) -> dict[int, dict[str, float]]:
    """Validation accuracy (percent) and NLL of the ensemble of the first ``k`` views, for every ``k``."""
    running = probabilities.cumsum(0) / torch.arange(1, len(probabilities) + 1).view(-1, 1, 1)
    scores = {}
    for k, mean in enumerate(running, start=1):
        acc = (mean.argmax(1) == labels).float().mean().item()
        nll = F.nll_loss(mean.clamp_min(torch.finfo(mean.dtype).tiny).log(), labels).item()
        scores[k] = {"acc": round(100 * acc, 3), "nll": round(nll, 5)}
    return scores


def best_views(scores: dict[int, dict[str, float]]) -> int:
    """The view count with the best validation accuracy, then the lower NLL, then the fewer views."""
    return min(scores, key=lambda k: (-scores[k]["acc"], scores[k]["nll"], k))


def choose_views(
    members: Sequence[Path], most: int = MAX_VIEWS, data_dir: str | None = None, limit: int | None = None
) -> dict[str, Any]:
    """Choose the ensemble's number of test-time views (1 to ``most``) on the validation split.

    ``limit`` keeps only the first validation images (a tiny check). Returns ``views`` (the choice),
    ``val_images`` and ``val_by_views`` (every count's validation accuracy and NLL).
    """
    check_views(most)
    images, labels = validation_split(members, data_dir)
    if limit:
        images, labels = images[:limit], labels[:limit]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = [load_classifier(path).to(device) for path in members]
    scores = score_views(view_probabilities(models, images, most), labels)
    return {"views": best_views(scores), "val_images": len(labels), "val_by_views": scores}
