"""The data settings checked as a user writes them: a bad one raises :class:`ConfigError` naming it
(``data.eval_batch_size``) with a value that works, before anything is read or trained."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from mnist_lightning.data.files import NUM_TRAIN
from mnist_lightning.errors import ConfigError

# the evaluation batch of ``eval_batch_size="auto"``: max(batch_size, EVAL_BATCH_SIZE). Evaluation keeps no
# gradients, so this batch costs little memory (a peak of 0.36 GB more than batch 64 for the convnet preset, on the
# CPU). Through `trainer.test` on the project's busy 2-core CPU (best of 3 / of 1, images/s): MLP 3,065 at 64,
# 11,575 at 500, 17,794 at 1000, 24,895 at 2000; convnet 125 at 32, 270 at 500, 287 at 1000, 301 at 2000. 1000 takes
# most of the gain for both at half the memory of 2000. See benchmarks/speed.md. On the quiet machine the convnet was
# the other way round (4,381 at 32, 2,370 at 1000): see resolve_eval_batch_size for the CPU rule that followed.
EVAL_BATCH_SIZE = 1000
MAX_SEED = 2**32 - 1
CHOICES: dict[str, tuple[Any, ...]] = {
    "download": (True, False),
    "augment": (True, False),
    "predict_split": ("train", "val", "test"),
    "on_device": (True, False, "auto"),
}


def check_settings(settings: Mapping[str, Any]) -> None:
    """Check the arguments of :class:`~mnist_lightning.data.MNISTDataModule` (by name), the first bad one raising."""
    check_int("batch_size", settings["batch_size"], 1, None, "64")
    eval_batch_size = settings["eval_batch_size"]
    if eval_batch_size is not None and eval_batch_size != "auto":
        check_int("eval_batch_size", eval_batch_size, 1, None, f'{EVAL_BATCH_SIZE} or "auto"')
    resolve_val_size(NUM_TRAIN, settings["val_size"])
    check_int("split_seed", settings["split_seed"], 0, MAX_SEED, "42")
    check_int("shuffle_seed", settings["shuffle_seed"], 0, MAX_SEED, "0")
    check_real("rotation", settings["rotation"], 0.0, 180.0, "10")
    check_real("translate", settings["translate"], 0.0, 1.0, "0.1")
    check_scale(settings["scale"])
    check_real("elastic_alpha", settings["elastic_alpha"], 0.0, 1000.0, "34")
    check_real("elastic_sigma", settings["elastic_sigma"], 0.0, 100.0, "4", low_open=True)
    for name, allowed in CHOICES.items():
        value = settings[name]
        # `x in (True, False)` would also take 1 and 0
        if not any(value is a if isinstance(a, bool) else value == a for a in allowed):
            choices = ", ".join(str(a).lower() if isinstance(a, bool) else a for a in allowed)
            raise ConfigError(f"data.{name} must be one of {choices}, got {value!r}")


def resolve_eval_batch_size(batch_size: int, eval_batch_size: int | str | None, large_batches_pay: bool = True) -> int:
    """The evaluation batch: a number is itself; ``"auto"`` (or None) is ``max(batch_size, EVAL_BATCH_SIZE)``, where
    evaluation keeps no gradients, so a larger batch costs little memory and runs much faster, unless
    ``large_batches_pay`` is false (a convolutional or attention network on the CPU): then the training batch.

    On the quiet 2-core CPU (2026-12-06, ``benchmarks/speed.py``, three runs) batch 1,000 tested an MLP 3.9× as fast
    as its training batch of 64, but ``small_cnn`` (64), ``cnn_strong`` (128) and ``vit_strong`` (128) only 0.5–0.9×
    as fast: their activations at 1,000 images (100 MB a layer for 32 channels) no longer fit the CPU's caches."""
    if eval_batch_size not in (None, "auto"):
        return int(eval_batch_size)
    return max(batch_size, EVAL_BATCH_SIZE) if large_batches_pay else batch_size


def resolve_val_size(num_samples: int, val_size: int | float) -> int:
    """The number of validation images: an int is a count, a float a fraction strictly between 0 and 1.

    A float that is a whole number (``1.0``, ``5000.0``) is refused rather than guessed at: ``1.0`` could mean
    "all of them" or "one image". Write a count as an int (``5000``) and a fraction below 1 (``0.1``). Sizes that
    leave no training or no validation image are refused as well.
    """
    example = "5000 (a count) or 0.1 (a fraction)"
    if isinstance(val_size, bool) or not isinstance(val_size, numbers.Real):
        raise ConfigError(
            f"data.val_size must be an int (a count) or a float (a fraction), got {val_size!r}; try {example}"
        )
    if isinstance(val_size, numbers.Integral):
        count = int(val_size)
        if not 0 < count < num_samples:
            raise ConfigError(
                f"data.val_size={count} must be at least 1 and less than the {num_samples:,} training images; "
                f"try {example}"
            )
        return count
    fraction = float(val_size)
    if not 0 < fraction < 1:  # NaN too
        count_hint = (
            f"; for a count of {int(fraction):,} image{'s' if fraction > 1 else ''} write the int {int(fraction)}"
            if fraction.is_integer() and 0 < fraction < num_samples
            else ""
        )
        raise ConfigError(
            f"data.val_size={val_size} is a float, which means a fraction of the {num_samples:,} training images, "
            f"and must lie strictly between 0 and 1{count_hint}; try {example}"
        )
    count = round(num_samples * fraction)
    if not 0 < count < num_samples:
        left = "no validation image" if count == 0 else "no training image"
        raise ConfigError(
            f"data.val_size={val_size} leaves {left} of the {num_samples:,} training images; try {example}"
        )
    return count


def check_int(name: str, value: object, minimum: int, maximum: int | None, example: str) -> int:
    """``value`` of the data setting ``name`` if it is an int in [minimum, maximum], else a ConfigError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"data.{name} must be an integer, got {value!r}; try {example}")
    if value < minimum or (maximum is not None and value > maximum):
        allowed = (
            f"an integer from {minimum:,} to {maximum:,}"
            if maximum is not None
            else f"an integer of at least {minimum:,}"
        )
        allowed = "a positive integer" if (minimum, maximum) == (1, None) else allowed
        raise ConfigError(f"data.{name} must be {allowed}, got {value}; try {example}")
    return int(value)


def check_real(name: str, value: object, low: float, high: float, example: str, low_open: bool = False) -> float:
    """``value`` of the data setting ``name`` if it is a number in [low, high] ((low, high] with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"data.{name} must be a number, got {value!r}; try {example}")
    number = float(value)
    inside = low < number <= high if low_open else low <= number <= high  # False for NaN
    if not inside or not math.isfinite(number):
        allowed = f"{'above' if low_open else 'at least'} {low:g}"
        if math.isfinite(high):
            allowed = f"{allowed} and at most {high:g}" if low_open else f"from {low:g} to {high:g}"
        raise ConfigError(f"data.{name} must be a number {allowed}, got {value}; try {example}")
    return number


def check_scale(value: object) -> tuple[float, float]:
    """The augmentation's zoom range ``(low, high)``: two numbers with 0 < low <= high."""
    example = "[0.9, 1.1]"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ConfigError(f"data.scale must be two numbers [low, high], got {value!r}; try {example}")
    try:
        low, high = (check_real("scale", v, 0.0, math.inf, example, low_open=True) for v in value)
    except ConfigError:
        low = high = math.nan
    if not low <= high:  # also NaN: an element that is not a positive number
        raise ConfigError(f"data.scale must be [low, high] with 0 < low <= high, got {list(value)}; try {example}")
