"""``mnist-lightning report``: what a trained classifier gets right and wrong, how far its probabilities can be
trusted, and how it holds up when the digits change. One or several checkpoints in; Markdown, PNG figures and JSON
out, and the same numbers on the W&B run that trained each checkpoint.

The Python API is :func:`build_report`; the notebook ``05_robustness_and_calibration`` is built on it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor
from torchmetrics.functional.classification import (
    multiclass_calibration_error,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from mnist_lightning.checkpoints import CheckpointInfo, inspect_checkpoint, load_classifier, resolve_last
from mnist_lightning.data import MNISTDataModule, normalize, normalize_uint8
from mnist_lightning.errors import ConfigError
from mnist_lightning.figures import save_png
from mnist_lightning.figures.digits import digit_grid
from mnist_lightning.figures.training import confusion_matrix, confusion_matrix_figure
from mnist_lightning.models.base import MNISTClassifier
from mnist_lightning.outputs import ensure_writable_folder, write_atomically
from mnist_lightning.runs import PROJECT_FOLDER
from mnist_lightning.shifts import SHIFTS

NUM_CLASSES = 10
CALIBRATION_BINS = 15  # torchmetrics' default, and the reliability diagram's bins
MISTAKES_SHOWN = 24
# test images per shifted level: curves good to a point or two of accuracy, and a report in well under a minute
SHIFT_IMAGES = 1000
ENSEMBLE = "ensemble"


@dataclass
class ModelReport:
    """The numbers of one checkpoint (or of the ensemble, whose ``info`` is None)."""

    label: str
    slug: str  # file-name-safe label, used in the figure names
    info: CheckpointInfo | None
    test_probs: Tensor  # (10000, 10) on the CPU
    metrics: dict[str, Any] = field(default_factory=dict)
    robustness: dict[str, list[float]] = field(default_factory=dict)


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
        raise ConfigError(f"--device {device!r} is not a device; use auto, cpu or cuda") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} asks for CUDA, which this machine does not have; use auto or cpu")
    return chosen


def resolve_checkpoints(paths: Iterable[str | Path], runs_root: str | Path = "runs") -> list[Path]:
    """The checkpoint files, ``last`` meaning the newest ``last.ckpt`` under ``runs_root``."""
    return [
        resolve_last([runs_root], "pass a checkpoint file") if str(path) == "last" else Path(path) for path in paths
    ]


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


def fit_temperature(logits: Tensor, labels: Tensor, iterations: int = 50) -> float:
    """The temperature T that minimises the NLL of ``logits / T`` (LBFGS on log T, so T stays positive)."""
    logits, labels = logits.detach().clone().float(), labels.detach().clone()  # not inference tensors: autograd
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return float(log_t.detach().exp())


def calibration(probs: Tensor, labels: Tensor) -> dict[str, float]:
    """Expected and maximum calibration error (torchmetrics, 15 bins) and the negative log-likelihood."""
    return {
        "ece": float(multiclass_calibration_error(probs, labels, NUM_CLASSES, n_bins=CALIBRATION_BINS, norm="l1")),
        "mce": float(multiclass_calibration_error(probs, labels, NUM_CLASSES, n_bins=CALIBRATION_BINS, norm="max")),
        "nll": float(F.nll_loss(probs.clamp_min(1e-12).log(), labels)),
    }


def per_class(probs: Tensor, labels: Tensor) -> dict[str, list[float]]:
    """Precision, recall and F1 of every digit (torchmetrics), and how many test images each digit has."""
    args = (probs, labels, NUM_CLASSES)
    return {
        "precision": multiclass_precision(*args, average="none").tolist(),
        "recall": multiclass_recall(*args, average="none").tolist(),
        "f1": multiclass_f1_score(*args, average="none").tolist(),
        "support": torch.bincount(labels, minlength=NUM_CLASSES).tolist(),
    }


def confident_mistakes(probs: Tensor, labels: Tensor, count: int = MISTAKES_SHOWN) -> list[dict[str, Any]]:
    """The ``count`` wrong predictions with the highest probability: test index, true, predicted, probability."""
    confidence, predicted = probs.max(1)
    wrong = (predicted != labels).nonzero().flatten()
    order = wrong[confidence[wrong].argsort(descending=True)][:count]
    return [
        {"index": int(i), "true": int(labels[i]), "predicted": int(predicted[i]), "probability": float(confidence[i])}
        for i in order
    ]


def summarize(probs: Tensor, labels: Tensor) -> dict[str, Any]:
    predicted = probs.argmax(1)
    return {
        "test_accuracy": float((predicted == labels).float().mean()),
        "per_class": per_class(probs, labels),
        "confusion_matrix": confusion_matrix(predicted, labels).tolist(),
        "calibration": calibration(probs, labels),
        "mistakes": confident_mistakes(probs, labels),
    }


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
) -> list[dict[str, list[float]]]:
    """Accuracy at every level of every shift (or of ``shifts``), for each model and (with several models) their
    ensemble. ``clean_probs`` are each model's probabilities of ``images`` unchanged.

    Each shifted batch is made once, on ``device``, and given to every model, so all models (and the ensemble) see
    the same images. Level 0 is the clean images themselves, whose probabilities are already known.
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
    return curves


def shift_subset(total: int, count: int, seed: int) -> Tensor:
    """Indices of the test images the shift curves use: all of them, or ``count`` drawn at random with ``seed``."""
    if count >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:count].sort().values


def robustness_figure(reports: Sequence[ModelReport]) -> Figure:
    """One small plot per shift, accuracy against level, every model (and the ensemble, dashed) on the same axes."""
    shifts = [SHIFTS[name] for name in reports[0].robustness]
    columns = min(5, len(shifts))
    rows = math.ceil(len(shifts) / columns)
    height = 2.6 * rows + 1.0
    fig = Figure(figsize=(3.1 * columns, height))  # a fixed layout: constrained layout costs seconds with 10 axes
    fig.subplots_adjust(left=0.05, right=0.99, top=1 - 0.55 / height, bottom=0.75 / height, wspace=0.3, hspace=0.6)
    axes = fig.subplots(rows, columns, squeeze=False).flatten()
    for ax, shift in zip(axes, shifts, strict=False):
        for report in reports:
            style = {"linestyle": "--", "color": "black"} if report.info is None else {}
            ax.plot(shift.levels, report.robustness[shift.name], marker="o", markersize=3, label=report.label, **style)
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


def reliability_bins(probs: Tensor, labels: Tensor, bins: int = CALIBRATION_BINS) -> tuple[Tensor, Tensor, Tensor]:
    """Per confidence bin: mean confidence, accuracy and count (the bins torchmetrics' ECE uses)."""
    confidence, predicted = probs.max(1)
    index = (confidence * bins).long().clamp_(max=bins - 1)
    count = torch.bincount(index, minlength=bins).float()
    conf_sum = torch.bincount(index, weights=confidence.double(), minlength=bins).float()
    hit_sum = torch.bincount(index, weights=(predicted == labels).double(), minlength=bins).float()
    safe = count.clamp_min(1)
    return conf_sum / safe, hit_sum / safe, count


def reliability_figure(reports: Sequence[ModelReport], labels: Tensor) -> Figure:
    """Reliability diagram of each model: accuracy against confidence per bin, before and after temperature."""
    fig = Figure(figsize=(3.6 * len(reports), 3.6), layout="constrained")
    axes = fig.subplots(1, len(reports), squeeze=False)[0]
    width = 1 / CALIBRATION_BINS
    centres = (torch.arange(CALIBRATION_BINS) + 0.5) * width
    for ax, report in zip(axes, reports, strict=True):
        _, accuracy, count = reliability_bins(report.test_probs, labels)
        shown = count > 0
        ax.bar(centres[shown], accuracy[shown], width=width, edgecolor="black", alpha=0.6, label="accuracy")
        cal = report.metrics["calibration"]
        title = f"{report.label}\nECE {cal['ece']:.4f}"
        if "scaled_probs" in report.metrics:
            conf_t, acc_t, count_t = reliability_bins(report.metrics["scaled_probs"], labels)
            kept = count_t > 0
            ax.plot(conf_t[kept], acc_t[kept], "o-", color="tab:orange", markersize=3, label="after temperature")
            title += f" → {cal['ece_after_temperature']:.4f} (T={cal['temperature']:.2f})"
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", title=title)
        ax.title.set_size(8)
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("accuracy")
    return fig


def mistakes_figure(report: ModelReport, images: Tensor) -> Figure:
    mistakes = report.metrics["mistakes"]
    if not mistakes:
        fig = Figure(figsize=(3, 1))
        fig.text(0.5, 0.5, "no mistakes on the test set", ha="center", va="center")
        return fig
    shown = images[[m["index"] for m in mistakes]]
    titles = [f"true {m['true']} pred {m['predicted']}\n{m['probability']:.3f}" for m in mistakes]
    return digit_grid(shown, titles, colors=["firebrick"] * len(titles), ncols=8, title=f"{report.label}: most "
                      "confident mistakes (true, predicted, probability)")  # fmt: skip


def label_of(info: CheckpointInfo, taken: set[str]) -> str:
    base = f"{info.class_name} {info.run_id or info.path.stem}"
    label, n = base, 2
    while label in taken:
        label, n = f"{base} ({n})", n + 1
    taken.add(label)
    return label


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
) -> Report:
    """Evaluate ``checkpoints`` and write ``report.md``, ``report.json`` and the PNG figures into ``output``.

    Args:
        checkpoints: checkpoint files written by ``mnist-lightning fit`` (``last``: the newest ``last.ckpt``).
        output: folder to write; default: ``<run dir>/report`` for one checkpoint, ``runs/reports/<date-time>``
            for several.
        use_wandb: also log the report to the W&B run that trained each checkpoint (offline when not logged in).
        device: ``auto`` (CUDA when there is one), ``cpu``, ``cuda``, ...; the shifts are made there too.
        batch_size: images per forward pass.
        seed: seed of the random parts of the shifts (the same seed gives the same shifted images).
        shift_images: how many test images (a random subset drawn with ``seed``) each shifted level uses; level 0
            is the same subset unchanged. 10,000 (or more) uses the whole test set.
        shifts: the names of the shifts to run (default: all of :data:`mnist_lightning.shifts.SHIFTS`).
        trusted: class paths of classifiers defined outside the package that the checkpoints may hold.
        data_dir: where MNIST is (default: ``$MNIST_LIGHTNING_DATA_DIR`` or ``./data``).
    """
    started = time.perf_counter()
    if not checkpoints:
        raise ConfigError("report needs at least one checkpoint: --ckpt_path A.ckpt [B.ckpt ...]")
    if batch_size < 1:
        raise ConfigError(f"--batch_size must be a positive integer, got {batch_size}; try 2000")
    unknown = sorted(set(shifts or ()) - set(SHIFTS))
    if unknown:
        raise ConfigError(f"unknown shift {', '.join(unknown)}; choose from {', '.join(SHIFTS)}")
    if shift_images < 1:
        raise ConfigError(f"--shift_images must be a positive integer, got {shift_images}; try {SHIFT_IMAGES}")
    paths = resolve_checkpoints(checkpoints)
    infos = [inspect_checkpoint(path) for path in paths]  # a missing or foreign file: one line, before any work
    folder = ensure_writable_folder(Path(output) if output else default_output(paths), "the report folder (--output)")
    chosen = pick_device(device)
    trusted = list(trusted)
    models = [load_classifier(path, map_location=chosen, trusted=trusted) for path in paths]

    data_kwargs = {"data_dir": str(data_dir)} if data_dir else {}
    test_set: tuple[Tensor, Tensor] | None = None
    val_cache: dict[str, tuple[Tensor, Tensor]] = {}
    taken: set[str] = set()
    reports: list[ModelReport] = []
    for index, (info, model) in enumerate(zip(infos, models, strict=True)):
        # each model's temperature is fitted on the validation split it was trained with (its own split seed)
        key = json.dumps(info.data_settings, sort_keys=True, default=str)
        if key not in val_cache:
            datamodule = MNISTDataModule(**{**info.data_settings, **data_kwargs})
            datamodule.prepare_data()
            datamodule.setup()
            val_cache[key] = datamodule.splits["val"]
            test_set = test_set or datamodule.splits["test"]
        assert test_set is not None
        val_images, val_labels = val_cache[key]
        test_images, test_labels = test_set
        if len(val_labels) == 0:
            raise ConfigError(f"checkpoint {info.path} was trained without a validation split; no temperature fit")
        test_logits = logits_of(model, test_images, batch_size, chosen)
        temperature = fit_temperature(logits_of(model, val_images, batch_size, chosen), val_labels)
        label = label_of(info, taken)
        report = ModelReport(label, f"{index + 1}-{info.class_name}", info, test_logits.softmax(1))
        report.metrics = summarize(report.test_probs, test_labels)
        scaled = (test_logits / temperature).softmax(1)
        after = calibration(scaled, test_labels)
        report.metrics["calibration"].update(
            temperature=temperature,
            ece_after_temperature=after["ece"],
            mce_after_temperature=after["mce"],
            nll_after_temperature=after["nll"],
        )
        report.metrics["scaled_probs"] = scaled
        reports.append(report)
    assert test_set is not None
    test_images, test_labels = test_set
    if len(reports) > 1:
        mean = torch.stack([r.test_probs for r in reports]).mean(0)
        ensemble = ModelReport(f"{ENSEMBLE} (mean of {len(reports)})", ENSEMBLE, None, mean)
        ensemble.metrics = summarize(mean, test_labels)
        reports.append(ensemble)

    count = min(shift_images, len(test_labels))
    subset = shift_subset(len(test_labels), count, seed)
    curves = robustness(
        models, [r.test_probs[subset] for r in reports[: len(models)]], test_images[subset], test_labels[subset],
        batch_size, chosen, seed, shifts,
    )  # fmt: skip
    for report, curve in zip(reports, curves, strict=True):
        report.robustness = curve

    figures = {"robustness": robustness_figure(reports), "reliability": reliability_figure(reports, test_labels)}
    for report in reports:
        figures[f"confusion-{report.slug}"] = confusion_matrix_figure(
            torch.tensor(report.metrics["confusion_matrix"]), title=f"{report.label} (rows: true, columns: predicted)"
        )
        figures[f"mistakes-{report.slug}"] = mistakes_figure(report, test_images)
    files = [save_png(fig, folder / f"{name}.png") for name, fig in figures.items()]

    seconds = time.perf_counter() - started
    data = report_json(reports, chosen, seed, count, seconds)
    json_path, md_path = folder / "report.json", folder / "report.md"
    write_atomically(json_path, json.dumps(data, indent=2) + "\n")
    write_atomically(md_path, report_markdown(data, reports))
    files += [json_path, md_path]
    result = Report(folder, files, data, reports, figures)
    if use_wandb:
        for report in reports:
            if report.info is not None and report.info.wandb_run_id:
                log_to_wandb(report, result)
    return result


def model_json(report: ModelReport) -> dict[str, Any]:
    metrics = {key: value for key, value in report.metrics.items() if key != "scaled_probs"}
    entry: dict[str, Any] = {"label": report.label}
    if report.info is not None:
        entry.update(
            checkpoint=str(report.info.path),
            model_class=report.info.class_name,
            run_id=report.info.run_id,
            wandb_run_id=report.info.wandb_run_id,
            temperature=metrics["calibration"]["temperature"],
        )
    return {**entry, **metrics, "robustness": report.robustness}


def report_json(
    reports: Sequence[ModelReport], device: torch.device, seed: int, shift_images: int, seconds: float
) -> dict[str, Any]:
    """The report's numbers. With one checkpoint, ``temperature`` at the top is its fitted temperature."""
    models = [model_json(r) for r in reports if r.info is not None]
    shift_names = list(reports[0].robustness)
    data: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(seconds, 2),
        "device": str(device),
        "seed": seed,
        "shift_images": shift_images,
        "calibration_bins": CALIBRATION_BINS,
        "shifts": {name: {"levels": list(SHIFTS[name].levels), "unit": SHIFTS[name].unit} for name in shift_names},
        "models": models,
    }
    if len(models) == 1:
        data["temperature"] = models[0]["temperature"]
    ensemble = [model_json(r) for r in reports if r.info is None]
    if ensemble:
        data["ensemble"] = ensemble[0]
    return data


def report_markdown(data: dict[str, Any], reports: Sequence[ModelReport]) -> str:
    entries = [*data["models"], *([data["ensemble"]] if "ensemble" in data else [])]
    lines = [
        "# Model report",
        "",
        f"Created {data['created']} on {data['device']} in {data['seconds']:.1f} s. Test set: the official 10,000 "
        f"MNIST test images. Numbers: [report.json](report.json).",
        "",
        "## Models",
        "",
        "| model | checkpoint | test accuracy | ECE | MCE | temperature | ECE after temperature |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for entry in entries:
        cal = entry["calibration"]
        temperature = f"{cal['temperature']:.3f}" if "temperature" in cal else "–"
        after = f"{cal['ece_after_temperature']:.4f}" if "ece_after_temperature" in cal else "–"
        checkpoint = f"`{entry['checkpoint']}`" if "checkpoint" in entry else "mean of the probabilities"
        lines.append(
            f"| {entry['label']} | {checkpoint} | {entry['test_accuracy']:.2%} | {cal['ece']:.4f} | "
            f"{cal['mce']:.4f} | {temperature} | {after} |"
        )
    lines += [
        "",
        "## Per class",
        "",
        "Precision, recall and F1 of every digit on the test set.",
        "",
        "| digit | " + " | ".join(f"{e['label']} P / R / F1" for e in entries) + " |",
        "|---:|" + "---:|" * len(entries),
    ]
    for digit in range(NUM_CLASSES):
        cells = [
            f"{e['per_class']['precision'][digit]:.3f} / {e['per_class']['recall'][digit]:.3f} / "
            f"{e['per_class']['f1'][digit]:.3f}"
            for e in entries
        ]
        lines.append(f"| {digit} | " + " | ".join(cells) + " |")
    for report in reports:
        lines += [
            "",
            f"### {report.label}",
            "",
            f"![confusion matrix of {report.label}](confusion-{report.slug}.png)",
            "",
            f"![most confident mistakes of {report.label}](mistakes-{report.slug}.png)",
        ]
    lines += [
        "",
        "## Calibration",
        "",
        f"Expected (ECE) and maximum (MCE) calibration error over {data['calibration_bins']} confidence bins. The "
        "temperature T is fitted on each checkpoint's own validation split (the one it was trained with) by "
        "minimising the negative log-likelihood of logits / T; the ECE after it is measured on the test set. "
        "Divide the model's logits by T before the softmax to use it.",
        "",
        "![reliability diagrams](reliability.png)",
        "",
        "## Robustness",
        "",
        f"Test accuracy on shifted digits, made from {data['shift_images']:,} test images (drawn with seed "
        f"{data['seed']}, which also seeds the random parts of the shifts); level 0 is those images unchanged.",
        "",
        "![accuracy against shift level](robustness.png)",
        "",
        "| shift | level | " + " | ".join(e["label"] for e in entries) + " |",
        "|---|---:|" + "---:|" * len(entries),
    ]
    for name, shift in data["shifts"].items():
        for i, level in enumerate(shift["levels"]):
            cells = " | ".join(f"{e['robustness'][name][i]:.2%}" for e in entries)
            lines.append(f"| {name} | {level:g} | {cells} |")
    return "\n".join(lines) + "\n"


def wandb_root(info: CheckpointInfo) -> tuple[Path, str]:
    """The folder whose ``wandb/`` holds the training run's files, and the W&B project: from the run-folder layout
    ``<save_dir>/<project>/<run id>/checkpoints/<file>``, else ``runs`` and ``mnist-lightning``."""
    parents = info.path.resolve().parents
    if info.path.parent.name == "checkpoints" and len(parents) > 3:
        return parents[3], parents[2].name
    return Path("runs"), PROJECT_FOLDER


def log_to_wandb(report: ModelReport, result: Report) -> None:
    """Add the report's numbers, table and figures to the W&B run that trained the checkpoint."""
    import wandb

    from mnist_lightning.tracking import wandb_logged_in

    assert report.info is not None and report.info.wandb_run_id
    root, project = wandb_root(report.info)
    mode = os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    ensure_writable_folder(root / "wandb", "the W&B folder")
    run = wandb.init(id=report.info.wandb_run_id, resume="allow", project=project, dir=str(root), mode=mode)
    metrics = report.metrics
    cal = metrics["calibration"]
    scalars: dict[str, float] = {
        "report/test_acc": metrics["test_accuracy"],
        "report/ece": cal["ece"],
        "report/mce": cal["mce"],
        "report/nll": cal["nll"],
        "report/temperature": cal["temperature"],
        "report/ece_after_temperature": cal["ece_after_temperature"],
        "report/mce_after_temperature": cal["mce_after_temperature"],
    }
    for name in ("precision", "recall", "f1"):
        for digit, value in enumerate(metrics["per_class"][name]):
            scalars[f"report/{name}/{digit}"] = value
    rows = [
        [shift, level, accuracy]
        for shift, accuracies in report.robustness.items()
        for level, accuracy in zip(SHIFTS[shift].levels, accuracies, strict=True)
    ]
    images = {
        f"report/{name.split('-', 1)[0]}": wandb.Image(str(path))
        for path in result.files
        if path.suffix == ".png"
        for name in [path.stem]
        if not name.startswith(("confusion-", "mistakes-")) or name.endswith(f"-{report.slug}")
    }
    run.log({**scalars, **images, "report/robustness": wandb.Table(["shift", "level", "accuracy"], rows)})
    run.summary.update(scalars)
    folder = Path(run.dir).parent
    run.finish()
    if mode != "online":
        print(f"W&B: report added to offline run {folder}; upload it with: wandb sync {folder}", file=sys.stderr)
