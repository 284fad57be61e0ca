"""The report as files: its numbers as JSON (``report.json``) and as Markdown tables with the figures
(``report.md``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from mnist_lightning.data.transforms import SHIFTS
from mnist_lightning.evaluation.calibration import CALIBRATION_BINS
from mnist_lightning.evaluation.results import ModelReport
from mnist_lightning.evaluation.temperature import SMALL_VALIDATION
from mnist_lightning.models.base import NUM_CLASSES


def model_json(report: ModelReport) -> dict[str, Any]:
    """One model's entry of ``report.json``: where it came from, its numbers and its robustness curves."""
    entry: dict[str, Any] = {"label": report.label}
    if report.info is not None:
        entry.update(
            checkpoint=str(report.info.path),
            model_class=report.info.class_name,
            run_id=report.info.run_id,
            wandb_run_id=report.info.wandb_run_id,
            temperature=report.metrics["calibration"]["temperature"],
        )
    return {**entry, **report.metrics, "robustness": report.robustness}


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
        data["temperature_stored_in"] = models[0]["calibration"].get("stored_in", [])
    ensemble = [model_json(r) for r in reports if r.info is None]
    if ensemble:
        data["ensemble"] = ensemble[0]
    return data


def report_markdown(data: dict[str, Any], reports: Sequence[ModelReport]) -> str:
    """``report.md``: the numbers of ``data`` (the JSON) as tables, with the figures named after ``reports``."""
    entries = [*data["models"], *([data["ensemble"]] if "ensemble" in data else [])]
    lines = [
        "# Model report",
        "",
        f"Created {data['created']} on {data['device']} in {data['seconds']:.1f} s. Test set: the official 10,000 "
        f"MNIST test images. Numbers: [report.json](report.json).",
        "",
        *models_table(entries),
        "",
        "## Per class",
        "",
        "Precision, recall and F1 of every digit on the test set.",
        "",
        *per_class_table(entries),
    ]
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
        "ECE, MCE, the diagram and the bin counts below all use the same bins (the last one closed at 1.0). "
        "The fitted T is stored with its checkpoint, and predict, serve, export and ensembles apply it "
        "(`--temperature off` turns it off):",
        "",
        *temperature_lines(entries),
        "",
        "![reliability diagrams](reliability.png)",
        "",
        *bins_table(entries, data["calibration_bins"]),
        "",
        "## Robustness",
        "",
        f"Test accuracy on shifted digits, made from {data['shift_images']:,} test images (drawn with seed "
        f"{data['seed']}, which also seeds the random parts of the shifts); level 0 is those images unchanged.",
        "",
        "![accuracy against shift level](robustness.png)",
        "",
        *robustness_table(data["shifts"], entries),
    ]
    return "\n".join(lines) + "\n"


def models_table(entries: Sequence[dict[str, Any]]) -> list[str]:
    """The ``## Models`` section: accuracy and calibration of every model, one row each."""
    lines = [
        "## Models",
        "",
        "| model | checkpoint | test accuracy | ECE | MCE | NLL | temperature | ECE after | MCE after | NLL after |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in entries:
        cal = entry["calibration"]
        temperature = f"{cal['temperature']:.3f}" if "temperature" in cal else "–"
        after = [
            f"{cal[key]:.4f}" if key in cal else "–"
            for key in ("ece_after_temperature", "mce_after_temperature", "nll_after_temperature")
        ]
        checkpoint = f"`{entry['checkpoint']}`" if "checkpoint" in entry else "mean of the probabilities"
        lines.append(
            f"| {entry['label']} | {checkpoint} | {entry['test_accuracy']:.2%} | {cal['ece']:.4f} | "
            f"{cal['mce']:.4f} | {cal['nll']:.4f} | {temperature} | {' | '.join(after)} |"
        )
    return lines


def temperature_lines(entries: Sequence[dict[str, Any]]) -> list[str]:
    """One bullet per checkpoint: its temperature, what it was fitted on, and where it was stored (or why not)."""
    lines = []
    for entry in entries:
        cal = entry["calibration"]
        if "temperature" not in cal:
            continue
        line = f"- {entry['label']}: T = {cal['temperature']:.3f}, fitted on {cal['validation_images']:,} validation"
        line += " images"
        if cal.get("small_validation"):
            line += f" (fewer than {SMALL_VALIDATION:,}: a rough fit; a larger `--data.val_size` gives a firmer one)"
        if cal.get("stored_in"):
            line += "; stored in " + " and ".join(f"`{path}`" for path in cal["stored_in"])
        else:
            line += f"; not stored: {cal.get('not_stored', 'not asked to')}"
        lines.append(line)
    return lines


def bins_table(entries: Sequence[dict[str, Any]], bins: int) -> list[str]:
    """How many test images fall in every confidence bin, and their accuracy, for every model (before and after
    its temperature)."""
    columns = [(entry["label"], entry["calibration"]["bins"]) for entry in entries]
    columns += [
        (f"{entry['label']} after T", entry["calibration"]["bins_after_temperature"])
        for entry in entries
        if "bins_after_temperature" in entry["calibration"]
    ]
    lines = [
        "Test images per confidence bin (count, and their accuracy):",
        "",
        "| confidence | " + " | ".join(label for label, _ in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for k in range(bins):
        closing = "]" if k == bins - 1 else ")"
        cells = [f"{b['count'][k]:,} ({b['accuracy'][k]:.3f})" if b["count"][k] else "0" for _, b in columns]
        lines.append(f"| [{k / bins:.3f}, {(k + 1) / bins:.3f}{closing} | " + " | ".join(cells) + " |")
    return lines


def per_class_table(entries: Sequence[dict[str, Any]]) -> list[str]:
    """Precision / recall / F1 of every digit (rows) for every model (columns)."""
    lines = [
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
    return lines


def robustness_table(shifts: dict[str, dict[str, Any]], entries: Sequence[dict[str, Any]]) -> list[str]:
    """Accuracy of every model (columns) at every level of every shift (rows)."""
    lines = [
        "| shift | level | " + " | ".join(e["label"] for e in entries) + " |",
        "|---|---:|" + "---:|" * len(entries),
    ]
    for name, shift in shifts.items():
        for i, level in enumerate(shift["levels"]):
            cells = " | ".join(f"{e['robustness'][name][i]:.2%}" for e in entries)
            lines.append(f"| {name} | {level:g} | {cells} |")
    return lines
