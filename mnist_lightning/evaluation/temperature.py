"""The fitted temperature that travels with its checkpoint: written by ``report``, read by every command that gives
probabilities (``predict``, ``serve``, ``export``, the members of an ensemble).

``report`` fits a temperature on a checkpoint's validation split and stores it, without touching the checkpoint,
in a small file beside it, ``<checkpoint>.calibration.json`` (``--save_temperature checkpoint`` also or instead
writes it into the checkpoint under :data:`CHECKPOINT_KEY`, atomically). The file records the temperature, how many
validation images it was fitted on, the ECE before and after it, and the checkpoint's size and SHA-256: when the
checkpoint is replaced (``last.ckpt`` refreshed by a later fit), the file no longer fits it and is ignored with a
note, since the new weights have their own calibration.

:func:`resolve_temperature` is the one place that decides the temperature a command applies: an explicit value
wins (``off`` is 1), else the stored one, else 1.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mnist_lightning.errors import ConfigError, OutputPathError
from mnist_lightning.outputs import reason, replace_atomically, write_atomically

SIDECAR_SUFFIX = ".calibration.json"
CHECKPOINT_KEY = "mnist_lightning_calibration"  # the record inside a checkpoint (report --save_temperature checkpoint)
RECORD_FORMAT = 1
# Below this many validation images a fitted temperature is called rough. The NLL it minimises is dominated by the
# model's few mistakes (about 20 in 1,000 images at 98% accuracy). Measured (docs/report.md): T refitted on random
# subsets of a 96.5%-accurate MLP's 5,000 validation images varies by 15% (one standard deviation) on 300 images,
# 7% on 1,000 and 2.5% on 3,000.
SMALL_VALIDATION = 1000
OFF_WORDS = ("off", "none")
STORED_WORDS = ("stored", "auto")
WHERE_CHOICES = ("beside", "checkpoint", "both", "nowhere")  # report --save_temperature


def sidecar_path(checkpoint: str | Path) -> Path:
    """``<checkpoint>.calibration.json``, beside the checkpoint."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + SIDECAR_SUFFIX)


def fingerprint(checkpoint: str | Path) -> dict[str, Any]:
    """What identifies a checkpoint file's contents: its size and SHA-256 (a copy keeps both; a refit changes them)."""
    path = Path(checkpoint)
    with path.open("rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    return {"size": path.stat().st_size, "sha256": digest}


def parse_temperature(value: str | float | None, option: str) -> float | None:
    """A temperature given by the user: a positive number, ``off``/``none`` (1: no scaling), or ``stored``/``auto``
    (None: the stored one). ``option`` names the option in the error."""
    if value is None:
        return None
    if isinstance(value, str):
        word = value.strip().lower()
        if word in STORED_WORDS:
            return None
        if word in OFF_WORDS:
            return 1.0
        try:
            value = float(word)
        except ValueError:
            value = float("nan")
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 or value == float("inf"):
        raise ConfigError(
            f"{option} must be a positive number, 'stored' (the temperature report fitted, the default) or 'off', "
            f"got {value!r}; try 1.0"
        )
    return float(value)


@dataclass(frozen=True)
class StoredTemperature:
    """A temperature found for a checkpoint, and where."""

    temperature: float
    where: Path  # the calibration file, or the checkpoint itself
    validation_images: int

    @property
    def small(self) -> bool:
        return self.validation_images < SMALL_VALIDATION

    def describe(self) -> str:
        """``temperature 1.370 from best.ckpt.calibration.json (fitted by report on 5,000 validation images)``."""
        text = (
            f"temperature {self.temperature:.3f} from {self.where} "
            f"(fitted by mnist-lightning report on {self.validation_images:,} validation images"
        )
        if self.small:
            text += f"; under {SMALL_VALIDATION:,}, so only a rough fit"
        return text + ")"


def calibration_record(
    checkpoint: str | Path,
    temperature: float,
    validation_images: int,
    before: dict[str, float],
    after: dict[str, float],
) -> dict[str, Any]:
    """The stored record: the temperature, what it was fitted on, the test ECE before and after it."""
    return {
        "format": RECORD_FORMAT,
        "temperature": temperature,
        "fitted_on": "validation split",
        "validation_images": validation_images,
        "small_validation": validation_images < SMALL_VALIDATION,
        "test_ece_before": before["ece"],
        "test_ece_after": after["ece"],
        "test_nll_before": before["nll"],
        "test_nll_after": after["nll"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "checkpoint": Path(checkpoint).name,
    }


def store_temperature(checkpoint: str | Path, record: dict[str, Any], where: str) -> tuple[list[Path], str | None]:
    """Store ``record`` for ``checkpoint`` as ``where`` says (:data:`WHERE_CHOICES`).

    Returns the files written and, when something could not be written (a read-only folder), why: the caller says
    so and carries on, since the temperature is also in the report.
    """
    checkpoint = Path(checkpoint)
    written: list[Path] = []
    try:
        if where in ("checkpoint", "both"):
            write_into_checkpoint(checkpoint, record)
            written.append(checkpoint)
        if where in ("beside", "both"):
            # fingerprinted after any rewrite above, so that the two agree
            sidecar = sidecar_path(checkpoint)
            write_atomically(sidecar, json.dumps({**record, "fingerprint": fingerprint(checkpoint)}, indent=2) + "\n")
            written.append(sidecar)
    except (OutputPathError, OSError) as err:
        text = err.args[0] if isinstance(err, OutputPathError) else reason(err)
        return written, f"could not store the temperature for {checkpoint}: {text}"
    return written, None


def write_into_checkpoint(checkpoint: Path, record: dict[str, Any]) -> None:
    """Add ``record`` to the checkpoint under :data:`CHECKPOINT_KEY`, through a temporary file and a rename."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state[CHECKPOINT_KEY] = record
    replace_atomically(checkpoint, lambda tmp: torch.save(state, tmp), suffix=".ckpt")


def find_stored(checkpoint: str | Path) -> tuple[StoredTemperature | None, str | None]:
    """The temperature stored for ``checkpoint`` (its calibration file, else inside it) and a note when a
    calibration file was there but ignored (it belongs to an earlier version of the checkpoint, or is damaged)."""
    checkpoint = Path(checkpoint)
    sidecar = sidecar_path(checkpoint)
    note = None
    if sidecar.is_file():
        try:
            record = json.loads(sidecar.read_text())
            temperature = float(record["temperature"])
            images = int(record["validation_images"])
            saved = record["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError):
            note = f"{sidecar} is not a calibration file mnist-lightning report wrote; ignored"
        else:
            if temperature > 0 and saved == fingerprint(checkpoint):
                return StoredTemperature(temperature, sidecar, images), None
            note = (
                f"{sidecar} was fitted for an earlier version of {checkpoint.name} (the checkpoint was replaced "
                "since); ignored: run mnist-lightning report again for a temperature that fits it"
            )
    embedded = embedded_record(checkpoint)
    if embedded is not None:
        return StoredTemperature(float(embedded["temperature"]), checkpoint, int(embedded["validation_images"])), note
    return None, note


def embedded_record(checkpoint: Path) -> dict[str, Any] | None:
    """The record written into the checkpoint, if any (the file is memory-mapped: only the record is read)."""
    from mnist_lightning.checkpoints import read_checkpoint  # checkpoints imports the models; only needed here

    record = read_checkpoint(checkpoint).get(CHECKPOINT_KEY)
    if isinstance(record, dict) and isinstance(record.get("temperature"), int | float) and record["temperature"] > 0:
        return record
    return None


def resolve_temperature(checkpoint: str | Path | None, choice: float | None, off_hint: str) -> tuple[float, str | None]:
    """The temperature to apply to ``checkpoint``'s logits and a one-line note for stderr (None: nothing to say).

    ``choice`` is what the user gave (:func:`parse_temperature`): a number wins; None takes the stored temperature,
    or 1 when there is none. ``off_hint`` is the option that turns it off (``--temperature off``), for the note.
    """
    if choice is not None or checkpoint is None:
        return (1.0 if choice is None else choice), None
    stored, note = find_stored(checkpoint)
    if stored is None:
        return 1.0, (f"mnist-lightning: {note}" if note else None)
    line = f"mnist-lightning: {Path(checkpoint).name}: applying {stored.describe()}; {off_hint} off for none"
    return stored.temperature, line


def apply_temperature(model: Any, checkpoint: str | Path | None, choice: float | None, off_hint: str) -> float:
    """Set ``model.temperature`` as :func:`resolve_temperature` decides, printing its note; the temperature."""
    temperature, note = resolve_temperature(checkpoint, choice, off_hint)
    if note:
        print(note, file=sys.stderr)
    model.temperature = temperature
    return temperature
