"""speed.py's tables: the machine it ran on and ``speed.md``, from the report ``speed.json`` also holds.

A tiny run (``--tiny``) gets the same tables marked as tiny, without the verdicts a real run's figures support
(whether the speedrun reaches its target, how the data loaders compare).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path
from typing import Any

import lightning as L
import torch

from mnist_lightning.data import EVAL_BATCH_SIZE


def environment() -> dict[str, Any]:
    """The date, the device (GPU name, or CPU model and cores), torch and lightning versions, threads, Python."""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        model_names = (
            [
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ]
            if Path("/proc/cpuinfo").is_file()
            else []
        )
        device = f"CPU: {model_names[0] if model_names else platform.processor()}, {os.cpu_count()} cores"
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device,
        "torch": torch.__version__,
        "lightning": L.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def evaluation_table(report: dict[str, Any]) -> list[str]:
    """The evaluation rows: ``trainer.test`` and the plain loop at the training batch and at the evaluation batch."""
    lines = [
        "",
        "**Evaluation** (the 10,000 test images; `test`: `trainer.test` of the same Trainer after `fit`, timing the"
        " test loop; `plain`: a no-grad loop slicing, normalizing and running the network over the same tensors)."
        " Before, validation, test and predict used the training batch; `eval_batch_size` now defaults to"
        f' `"auto"` = max(batch_size, {EVAL_BATCH_SIZE}), except for convolutional and attention networks on the CPU,'
        " which evaluate at their training batch there (measured faster: benchmarks/README.md)."
        + (
            f" Fastest of {report['eval_repeats']} passes each, the two batch sizes alternating."
            if report.get("eval_repeats", 1) > 1
            else " One pass each, the two batch sizes one after the other."
        ),
        "",
        "| model | training batch | test images/s | plain images/s | test / plain | eval batch | test images/s "
        "| plain images/s | test / plain | test speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["models"]:
        if r["skipped"]:
            continue
        old, new = r["fit_inference_train_batch_images_per_s"], r["fit_inference_images_per_s"]
        old_plain, new_plain = r["plain_inference_train_batch_images_per_s"], r["plain_inference_images_per_s"]
        lines.append(
            f"| {r['name']} | {r['batch_size']} | {old:,.0f} | {old_plain:,.0f} | {old / old_plain:.2f} "
            f"| {r['eval_batch_size']} | {new:,.0f} | {new_plain:,.0f} | {new / new_plain:.2f} | {new / old:.1f}× |"
        )
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The whole ``speed.md`` page."""
    env = report["environment"]
    lines = [
        "# mnist-lightning speed",
        "",
        f"{env['date']}; {env['device']}; torch {env['torch']}, lightning {env['lightning']}, "
        f"{env['torch_threads']} torch threads. Load average (1 min) {report['load_before']:.2f} before, "
        f"{report['load_after']:.2f} after." + (f" {report['note']}" if report.get("note") else ""),
        "",
        f"Command: `{report['command']}`"
        + (" (tiny mode: a few batches, not a measurement)" if report["tiny"] else ""),
        "",
        settings_sentence(report),
        "",
        "`fit`: the Trainer the CLI builds from the preset (progress bar and checkpointing as configured, logger off),"
        " timing the training batches of each epoch (validation excluded). `plain`: a hand-written loop over the"
        " same tensors with the same model, initial weights, batch size and optimizer. `bare Lightning`: the same"
        " network, optimizer and data module trained by a Trainer with no callbacks, logger, checkpointing or"
        " progress bar, and a LightningModule with only a cross-entropy `training_step` (no metrics): what"
        " Lightning's own loop costs. One plain epoch runs after each epoch of `fit` and of `bare Lightning`, so"
        " they alternate and see the same machine; each is compared with the plain epochs beside it. Each reports its"
        " fastest epoch after the first (the first pays for warm-up); `speed.json` has every epoch."
        + (
            f" Training was limited to {report['train_batches']} batches per epoch: s/epoch is for those batches."
            if report["train_batches"]
            else ""
        ),
        "",
        "| model | params | batch | optimizer | train images | fit s/epoch | plain s/epoch | fit / plain "
        "| bare Lightning s/epoch | bare / plain | fit images/s | plain images/s |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    if not report["models"]:  # a speedrun-only run (`--models ""`): no training or evaluation table
        lines[-2:] = ["No model measured (`--models` named none)."]
    for r in report["models"]:
        if r["skipped"]:
            lines.append(f"| {r['name']} | skipped: {r['skipped']} |" + " |" * 10)
            continue
        lines.append(
            f"| {r['name']} | {r['params']:,} | {r['batch_size']} | {r['optimizer']} | {r['train_images']:,} "
            f"| {r['fit_epoch_s']:.2f} | {r['plain_epoch_s']:.2f} | {r['ratio']:.2f} | {r['bare_epoch_s']:.2f} "
            f"| {r['bare_ratio']:.2f} | {r['fit_images_per_s']:,.0f} | {r['plain_images_per_s']:,.0f} |"
        )
    lines += evaluation_table(report) if report["models"] else []
    lines += ["", speedrun_paragraph(report), "", loader_paragraph(report), ""]
    return "\n".join(lines)


def settings_sentence(report: dict[str, Any]) -> str:
    """The CPU settings every network of the run used (each the preset's unless the command set it)."""
    settings = report.get("settings", {})
    named = {
        "channels_last": "channels-last",
        "compile": "torch.compile",
        "precision": "precision",
        "threads": "torch threads",
        "eval_batch": "evaluation batch",
    }
    chosen = [f"{label} {settings[key]}" for key, label in named.items() if settings.get(key) not in (None, False)]
    return (
        "Settings for fit, bare Lightning and plain alike: "
        + (", ".join(chosen) if chosen else "each preset's own")
        + ". A preset that augments its training batches (`data.augment`) has the plain loop apply the same"
        " augmentation function to its batches."
    )


def speedrun_paragraph(report: dict[str, Any]) -> str:
    """The speedrun's mean time and accuracy over its seeds, and (from a real run) whether it reaches 99.0%."""
    sr = report["speedrun"]
    if not sr["test_acc"]:
        return "**Speedrun**: not run (`--seeds 0`)."
    mean_acc = sum(sr["test_acc"]) / len(sr["test_acc"])
    mean_s = sum(sr["train_s"]) / len(sr["train_s"])
    mean_fit_call = sum(sr["fit_call_s"]) / len(sr["fit_call_s"])
    per_seed = ", ".join(f"{s:.2f} s / {a:.2%}" for s, a in zip(sr["train_s"], sr["test_acc"]))
    # a few batches reach nothing and miss nothing: a tiny run states the figures only
    verdict = "" if report["tiny"] else f" ({'reaches' if mean_acc >= 0.99 else 'misses'} 99.0%)"
    return (
        f"**Speedrun** (`configs/speedrun.yaml`, {sr['steps']} steps, seeds {sr['seeds']}): "
        f"mean training time {mean_s:.2f} s (set-up excluded; whole `fit` call {mean_fit_call:.2f} s), "
        f"mean official test accuracy {mean_acc:.2%}{verdict}. "
        f"Per seed (time / accuracy): {per_seed}."
    )


def loader_paragraph(report: dict[str, Any]) -> str:
    """The torchvision DataLoader's rate and (from a real run) how the MLP's ``fit`` epoch compares with it."""
    loader = report["torchvision_loader"]
    if not loader:
        return "**torchvision DataLoader**: not run (`--no-loader`)."
    text = (
        f"**torchvision DataLoader** (per-image ToTensor + Normalize, batch 64, no workers): "
        f"{loader['seconds']:.2f} s for {loader['images']:,} images, {loader['images_per_s']:,.0f} images/s"
    )
    mlp = next((r for r in report["models"] if r["name"] == "mlp_128_64" and not r["skipped"]), None)
    if mlp is None or report["tiny"]:
        return f"{text}."
    ratio = mlp["fit_images_per_s"] / loader["images_per_s"]
    return f"{text}; the MLP's `fit` epoch moves images at {ratio:.1f}× its rate while also training on them."
