"""How a model holds up when the digits change: test accuracy at every level of every shift (rotation, blur, ...).

The shifts themselves (what each does at each level) are :data:`mnist_lightning.data.transforms.SHIFTS`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from mnist_lightning.data import normalize
from mnist_lightning.data.transforms import SHIFTS
from mnist_lightning.models.base import MNISTClassifier

# test images per shifted level: curves good to a point or two of accuracy, and a report in well under a minute
SHIFT_IMAGES = 1000


def shift_subset(total: int, count: int, seed: int) -> Tensor:
    """Indices of the test images the shift curves use: all of them, or ``count`` drawn at random with ``seed``."""
    if count >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:count].sort().values


@torch.inference_mode()
def robustness(
    models: Sequence[MNISTClassifier],
    clean_probs: Sequence[Tensor],
    images: Tensor,
    labels: Tensor,
    batch_size: int,
    device: torch.device,
    seed: int,
    shifts: Sequence[str] | None = None,
    progress_bar: bool = False,
) -> list[dict[str, list[float]]]:
    """Accuracy at every level of every shift (or of ``shifts``), for each model and (with several models) their
    ensemble. ``clean_probs`` are each model's probabilities of ``images`` unchanged.

    Each shifted batch is made once, on ``device``, and given to every model, so all models (and the ensemble) see
    the same images. Level 0 is the clean images themselves, whose probabilities are already known. With
    ``progress_bar``, a bar over the shifted levels is drawn on stderr when it is a terminal.
    """
    count = len(labels)
    chosen = [SHIFTS[name] for name in shifts] if shifts is not None else list(SHIFTS.values())
    columns = len(models) + (1 if len(models) > 1 else 0)
    curves: list[dict[str, list[float]]] = [{} for _ in range(columns)]
    pixels = images.to(device).float().div_(255).unsqueeze(1)
    labels_on_device = labels.to(device)
    generator = torch.Generator()
    clean = torch.stack([p.argmax(1) == labels for p in clean_probs])
    if len(models) > 1:
        mean = torch.stack(list(clean_probs)).mean(0)
        clean = torch.cat([clean, (mean.argmax(1) == labels).unsqueeze(0)])
    clean_accuracy = clean.float().mean(1).tolist()
    # disable=None: tqdm draws only on a terminal (a log file gets the report's stage lines alone)
    bar = tqdm(
        total=sum(len(shift.levels) - 1 for shift in chosen), desc="shifted levels", unit="level", leave=False,
        file=sys.stderr, disable=None if progress_bar else True,
    )  # fmt: skip
    for shift in chosen:
        s = list(SHIFTS).index(shift.name)
        for column in range(columns):
            curves[column][shift.name] = [clean_accuracy[column]]
        for level_index, level in enumerate(shift.levels[1:], start=1):
            # one seed per (shift, level): a curve does not depend on which other shifts were computed
            generator.manual_seed(seed * 1_000_003 + s * 1000 + level_index)
            correct = torch.zeros(columns, dtype=torch.long, device=device)
            for start in range(0, count, batch_size):
                batch = normalize(shift.apply(pixels[start : start + batch_size], level, generator))
                target = labels_on_device[start : start + batch_size]
                probs = [model(batch.to(model.dtype)).float().softmax(1) for model in models]
                hits = [(p.argmax(1) == target).sum() for p in probs]
                if len(models) > 1:
                    hits.append((torch.stack(probs).mean(0).argmax(1) == target).sum())
                correct += torch.stack(hits)
            for column in range(columns):
                curves[column][shift.name].append(float(correct[column]) / count)
            bar.update()
    bar.close()
    return curves
