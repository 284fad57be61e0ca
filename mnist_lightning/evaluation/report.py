"""``mnist-lightning report``: what a trained classifier gets right and wrong, how far its probabilities can be
trusted, and how it holds up when the digits change. One or several checkpoints in; Markdown, PNG figures and JSON
out, and the same numbers on the W&B run that trained each checkpoint.

This module runs the models and puts the parts together (the numbers come from the other modules of
:mod:`mnist_lightning.evaluation`, the figures from :mod:`mnist_lightning.figures.evaluation`). The Python API is
:func:`build_report`; the notebook ``05_robustness_and_calibration`` is built on it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor

from mnist_lightning.checkpoints import (
    CheckpointInfo,
    data_dir_to_evaluate,
    inspect_checkpoint,
    load_classifier,
    resolve_last,
)
from mnist_lightning.data import MNISTDataModule, normalize_uint8
from mnist_lightning.data.transforms import SHIFTS
from mnist_lightning.errors import ConfigError, one_line
from mnist_lightning.evaluation.calibration import bins_json, calibration, fit_temperature
from mnist_lightning.evaluation.ensemble import check_checkpoint_path
from mnist_lightning.evaluation.metrics import summarize
from mnist_lightning.evaluation.rendering import report_json, report_markdown
from mnist_lightning.evaluation.results import ModelReport
from mnist_lightning.evaluation.robustness import SHIFT_IMAGES, robustness, shift_subset
from mnist_lightning.evaluation.temperature import WHERE_CHOICES, calibration_record, store_temperature
from mnist_lightning.evaluation.wandb_run import log_to_wandb
from mnist_lightning.figures import save_png
from mnist_lightning.figures.evaluation import ReliabilityPanel, mistakes_figure, reliability_figure, robustness_figure
from mnist_lightning.figures.training import confusion_matrix_figure
from mnist_lightning.models.base import MNISTClassifier
from mnist_lightning.outputs import staged_folder, write_atomically

ENSEMBLE = "ensemble"
Split = tuple[Tensor, Tensor]  # uint8 images (N, 28, 28) and their labels


@dataclass
class Report:
    """What :func:`build_report` wrote: the folder, the files in it, and every number (``data`` is the JSON)."""

    folder: Path
    files: list[Path]
    data: dict[str, Any]
    models: list[ModelReport]
    figures: dict[str, Figure]

    @property
    def markdown(self) -> Path:
        return self.folder / "report.md"


def pick_device(device: str) -> torch.device:
    """``auto``: CUDA when there is one, else the CPU; or any device name torch knows."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"the device {device!r} (--device) is not a device; use auto, cpu or cuda") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"the device {device} (--device) asks for CUDA, which this machine does not have; use auto or cpu"
        )
    if chosen.type == "meta":
        raise ConfigError(
            f"the device {device} (--device) holds no data, so it cannot run a model; use auto, cpu or cuda"
        )
    try:  # a device index that is not there (cuda:7 on one GPU), a backend this build lacks: one line, now
        torch.empty(1, device=chosen)
    except (RuntimeError, AssertionError) as err:
        raise ConfigError(
            f"the device {device} (--device) cannot be used here ({one_line(err, 200)}); use auto or cpu"
        ) from None
    return chosen


def resolve_checkpoints(paths: Iterable[str | Path], runs_root: str | Path = "runs") -> list[Path]:
    """The checkpoint files, ``last`` meaning the newest ``last.ckpt`` under ``runs_root``."""
    resolved = [
        resolve_last([runs_root], "pass a checkpoint file") if str(path) == "last" else Path(path) for path in paths
    ]
    for path in resolved:
        check_checkpoint_path(path, "checkpoint (--ckpt_path)")
    return resolved


def default_output(checkpoints: Sequence[Path], runs_root: str | Path = "runs") -> Path:
    """One checkpoint: ``<run dir>/report`` beside its ``checkpoints/``; several: ``runs/reports/<date-time>``."""
    if len(checkpoints) == 1:
        path = checkpoints[0]
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return run_dir / "report"
    return Path(runs_root) / "reports" / time.strftime("%Y%m%d-%H%M%S")


@torch.inference_mode()
def logits_of(model: MNISTClassifier, images: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """Logits ``(N, 10)`` (float32, CPU) of uint8 images ``(N, 28, 28)``, prepared as in training."""
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = normalize_uint8(images[start : start + batch_size].to(device)).unsqueeze(1)
        chunks.append(model(batch.to(model.dtype)).float().cpu())
    return torch.cat(chunks)


def label_of(info: CheckpointInfo, taken: set[str]) -> str:
    """The checkpoint's name in the tables and figures, made unique among ``taken`` (which it joins)."""
    base = f"{info.class_name} {info.run_id or info.path.stem}"
    label, n = base, 2
    while label in taken:
        label, n = f"{base} ({n})", n + 1
    taken.add(label)
    return label


def check_arguments(
    checkpoints: Sequence[Any],
    batch_size: int,
    shifts: Sequence[str] | None,
    shift_images: int,
    save_temperature: str = "beside",
) -> None:
    """One line for every argument :func:`build_report` cannot use, before any work."""
    if not checkpoints:
        raise ConfigError("report needs at least one checkpoint: --ckpt_path A.ckpt [B.ckpt ...]")
    if batch_size < 1:
        raise ConfigError(f"--batch_size must be a positive integer, got {batch_size}; try 2000")
    unknown = sorted(set(shifts or ()) - set(SHIFTS))
    if unknown:
        raise ConfigError(f"unknown shift {', '.join(unknown)}; choose from {', '.join(SHIFTS)}")
    if shift_images < 1:
        raise ConfigError(f"--shift_images must be a positive integer, got {shift_images}; try {SHIFT_IMAGES}")
    if save_temperature not in WHERE_CHOICES:
        raise ConfigError(f"--save_temperature must be one of {', '.join(WHERE_CHOICES)}, got {save_temperature!r}")


def data_splits(infos: Sequence[CheckpointInfo], data_dir: str | Path | None) -> tuple[list[Split], Split]:
    """Each checkpoint's validation split (the one it was trained with: its own split seed), and the test set.

    The data folder is ``data_dir`` when given, else the one the checkpoint was trained on while it still holds
    MNIST (:func:`mnist_lightning.checkpoints.data_dir_to_evaluate`), else the default.
    """
    folders = [data_dir_to_evaluate(info, data_dir) for info in infos]
    keys = [
        json.dumps([info.data_settings, folder], sort_keys=True, default=str)
        for info, folder in zip(infos, folders, strict=True)
    ]
    by_settings: dict[str, Split] = {}
    test_set: Split | None = None
    for key, info, folder in zip(keys, infos, folders, strict=True):
        if key not in by_settings:
            datamodule = MNISTDataModule(**{**info.data_settings, **({"data_dir": folder} if folder else {})})
            datamodule.prepare_data()
            datamodule.setup()
            by_settings[key] = datamodule.splits["val"]
            test_set = test_set or datamodule.splits["test"]
    assert test_set is not None
    return [by_settings[key] for key in keys], test_set


def evaluate_checkpoint(
    model: MNISTClassifier,
    info: CheckpointInfo,
    label: str,
    slug: str,
    val_set: Split,
    test_set: Split,
    *,
    batch_size: int,
    device: torch.device,
) -> ModelReport:
    """The numbers of one checkpoint on the test set, its calibration included, before and after the temperature
    fitted on ``val_set``."""
    (val_images, val_labels), (test_images, test_labels) = val_set, test_set
    if len(val_labels) == 0:
        raise ConfigError(f"checkpoint {info.path} was trained without a validation split; no temperature fit")
    test_logits = logits_of(model, test_images, batch_size, device)
    temperature = fit_temperature(logits_of(model, val_images, batch_size, device), val_labels)
    report = ModelReport(label, slug, info, test_logits.softmax(1))
    report.metrics = summarize(report.test_probs, test_labels)
    report.scaled_probs = (test_logits / temperature).softmax(1)
    after = calibration(report.scaled_probs, test_labels)
    report.metrics["calibration"].update(
        temperature=temperature,
        ece_after_temperature=after["ece"],
        mce_after_temperature=after["mce"],
        nll_after_temperature=after["nll"],
        validation_images=len(val_labels),
        bins_after_temperature=bins_json(report.scaled_probs, test_labels),
    )
    return report


def store_temperatures(reports: Sequence[ModelReport], where: str) -> None:
    """Store every checkpoint's fitted temperature as ``where`` says (beside it by default) and record in its
    calibration numbers where it went (``stored_in``) or why it could not be stored (``not_stored``)."""
    for report in reports:
        if report.info is None:
            continue
        cal = report.metrics["calibration"]
        before = {"ece": cal["ece"], "nll": cal["nll"]}
        after = {"ece": cal["ece_after_temperature"], "nll": cal["nll_after_temperature"]}
        record = calibration_record(report.info.path, cal["temperature"], cal["validation_images"], before, after)
        cal["small_validation"] = record["small_validation"]
        if where == "nowhere":
            cal["stored_in"], cal["not_stored"] = [], "not asked to (--save_temperature nowhere)"
            continue
        written, problem = store_temperature(report.info.path, record, where)
        cal["stored_in"] = [str(path) for path in written]
        if problem:
            cal["not_stored"] = problem


def reliability_title(report: ModelReport) -> str:
    """The model's label and ECE, and with a fitted temperature the ECE after it and the temperature."""
    cal = report.metrics["calibration"]
    title = f"{report.label}\nECE {cal['ece']:.4f}"
    if report.scaled_probs is not None:
        title += f" → {cal['ece_after_temperature']:.4f} (T={cal['temperature']:.2f})"
    return title


def report_figures(reports: Sequence[ModelReport], test_images: Tensor, test_labels: Tensor) -> dict[str, Figure]:
    """The report's figures by file name (without ``.png``): robustness and reliability of all models, then the
    confusion matrix and the most confident mistakes of each."""
    curves = {report.label: report.robustness for report in reports}
    ensembles = [report.label for report in reports if report.info is None]
    panels = [ReliabilityPanel(reliability_title(r), r.test_probs, r.scaled_probs) for r in reports]
    figures = {
        "robustness": robustness_figure(curves, ensembles),
        "reliability": reliability_figure(panels, test_labels),
    }
    for report in reports:
        figures[f"confusion-{report.slug}"] = confusion_matrix_figure(
            torch.tensor(report.metrics["confusion_matrix"]), title=f"{report.label} (rows: true, columns: predicted)"
        )
        figures[f"mistakes-{report.slug}"] = mistakes_figure(test_images, report.metrics["mistakes"], report.label)
    return figures


def build_report(
    checkpoints: Sequence[str | Path],
    output: str | Path | None = None,
    *,
    use_wandb: bool = True,
    device: str = "auto",
    batch_size: int = 2000,
    seed: int = 0,
    shift_images: int = SHIFT_IMAGES,
    shifts: Sequence[str] | None = None,
    trusted: Iterable[str] = (),
    data_dir: str | Path | None = None,
    save_temperature: str = "beside",
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Evaluate ``checkpoints`` and write ``report.md``, ``report.json`` and the PNG figures into ``output``.

    The files are written into a temporary folder beside ``output`` and moved there only when all are written: a
    failure or an interrupt leaves no partial folder, and an earlier report in ``output`` stays until then.

    Args:
        checkpoints: checkpoint files written by ``mnist-lightning fit`` (``last``: the newest ``last.ckpt``).
        output: folder to write; default: ``<run dir>/report`` for one checkpoint, ``runs/reports/<date-time>``
            for several.
        use_wandb: also log each checkpoint's report into a W&B run of its own, linked to the run that trained it
            (offline when not logged in).
        device: ``auto`` (CUDA when there is one), ``cpu``, ``cuda``, ...; the shifts are made there too.
        batch_size: images per forward pass.
        seed: seed of the random parts of the shifts (the same seed gives the same shifted images).
        shift_images: how many test images (a random subset drawn with ``seed``) each shifted level uses; level 0
            is the same subset unchanged. 10,000 (or more) uses the whole test set.
        shifts: the names of the shifts to run (default: all of :data:`mnist_lightning.data.transforms.SHIFTS`).
        trusted: class paths of classifiers defined outside the package that the checkpoints may hold.
        data_dir: where MNIST is (default: the folder each checkpoint was trained on while it still holds MNIST,
            else ``$MNIST_LIGHTNING_DATA_DIR`` or ``./data``).
        save_temperature: where each checkpoint's fitted temperature is stored for predict, serve, export and
            ensembles: ``beside`` (``<checkpoint>.calibration.json``, the default), ``checkpoint`` (into the
            checkpoint file, rewritten atomically), ``both`` or ``nowhere``.
        progress: called with a line at the start of every stage (the command prints them on stderr).
    """
    started = time.perf_counter()
    say = progress or (lambda line: None)
    check_arguments(checkpoints, batch_size, shifts, shift_images, save_temperature)
    chosen = pick_device(device)
    paths = resolve_checkpoints(checkpoints)
    infos = [inspect_checkpoint(path) for path in paths]  # a missing or foreign file: one line, before any work
    target = Path(output) if output else default_output(paths)
    stages = 6
    with staged_folder(target, "the report folder (--output)") as staging:
        say(f"[1/{stages}] loading {len(paths)} checkpoint{'s' if len(paths) > 1 else ''} onto {chosen}")
        trusted = list(trusted)
        models = [load_classifier(path, map_location=chosen, trusted=trusted) for path in paths]

        say(f"[2/{stages}] reading MNIST (validation splits and the test set)")
        val_sets, test_set = data_splits(infos, data_dir)
        test_images, test_labels = test_set
        taken: set[str] = set()
        reports: list[ModelReport] = []
        for index, (info, model, val_set) in enumerate(zip(infos, models, val_sets, strict=True)):
            say(f"[3/{stages}] test set and temperature of {info.path.name} ({index + 1} of {len(models)})")
            label, slug = label_of(info, taken), f"{index + 1}-{info.class_name}"
            reports.append(
                evaluate_checkpoint(model, info, label, slug, val_set, test_set, batch_size=batch_size, device=chosen)
            )
        if len(reports) > 1:
            mean = torch.stack([r.test_probs for r in reports]).mean(0)
            ensemble = ModelReport(f"{ENSEMBLE} (mean of {len(reports)})", ENSEMBLE, None, mean)
            ensemble.metrics = summarize(mean, test_labels)
            reports.append(ensemble)

        count = min(shift_images, len(test_labels))
        subset = shift_subset(len(test_labels), count, seed)
        say(f"[4/{stages}] accuracy under {len(shifts) if shifts else len(SHIFTS)} shifts ({count:,} images a level)")
        curves = robustness(
            models, [r.test_probs[subset] for r in reports[: len(models)]], test_images[subset], test_labels[subset],
            batch_size, chosen, seed, shifts, progress_bar=progress is not None,
        )  # fmt: skip
        for report, curve in zip(reports, curves, strict=True):
            report.robustness = curve

        say(f"[5/{stages}] figures")
        figures = report_figures(reports, test_images, test_labels)
        names = [f"{name}.png" for name in figures]
        for name, fig in zip(names, figures.values(), strict=True):
            save_png(fig, staging / name)
        say(f"[6/{stages}] storing the temperatures ({save_temperature}) and writing the report")
        store_temperatures(reports, save_temperature)
        data = report_json(reports, chosen, seed, count, time.perf_counter() - started)
        write_atomically(staging / "report.json", json.dumps(data, indent=2) + "\n")
        write_atomically(staging / "report.md", report_markdown(data, reports))
    folder = Path(os.path.abspath(target))
    files = [folder / name for name in [*names, "report.json", "report.md"]]
    if use_wandb:
        for report in reports:
            if report.info is not None and report.info.wandb_run_id:
                say(f"W&B: logging the report of {report.info.path.name} (training run {report.info.wandb_run_id})")
                log_to_wandb(report, files)
    return Report(folder, files, data, reports, figures)
