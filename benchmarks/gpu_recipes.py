"""gpu.py's full recipes: each preset probed for a few steps, then whole recipes in the order and time that fit.

A probe's step and validation-batch times, times the recipe's batches and epochs, project a recipe's seconds; the
presets whose committed row is capped (or missing) run first, each group cheapest first, each under its own cap.
The rows go through benchmarks/results.py (``run_preset``) and merge into a copy of the committed results table.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import results
import speed
from gpu_budget import OverCap, Part, hard_cap
from gpu_speedruns import TINY_LIMITS

from mnist_lightning.callbacks import TrainTimer, synchronize
from mnist_lightning.cli import config_dir


class ValidationTimer(L.Callback):
    """Seconds of each validation's batches, from its start to the end of its last batch (device synchronised)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.start = 0.0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(trainer.strategy.root_device)
        self.start = time.perf_counter()

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *args: Any
    ) -> None:
        if batch_idx + 1 >= trainer.num_val_batches[0]:
            synchronize(trainer.strategy.root_device)
            self.seconds.append(time.perf_counter() - self.start)


def probe(preset: str, opts: argparse.Namespace, workdir: Path, extra: Sequence[str] = ()) -> dict[str, Any]:
    """A few training steps and validation batches of ``preset`` (with ``extra`` fit options); the seconds its
    whole recipe would take."""
    steps, val = (2, 2) if opts.tiny else (opts.probe_steps, 2)
    start = time.perf_counter()
    args = ["--config", str(config_dir() / "defaults.yaml"), "--config", str(config_dir() / f"{preset}.yaml")]
    args += ["--trainer.max_epochs=2", f"--trainer.limit_train_batches={steps}", f"--trainer.limit_val_batches={val}"]
    args += ["--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false", *extra]
    cli = speed.build(args, workdir)
    timer, validation = TrainTimer(), ValidationTimer()
    cli.trainer.callbacks.extend([timer, validation])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    # the second epoch's figures: the first pays for warm-up
    step_s, val_s = timer.epoch_seconds[-1] / steps, validation.seconds[-1] / val
    # what an epoch costs besides its batches: checkpoints, figures, the hooks at its end
    rest = (timer.train_seconds or 0.0) - sum(timer.epoch_seconds) - sum(validation.seconds)
    epoch_extra_s = max(0.0, rest) / len(timer.epoch_seconds)
    dm = cli.datamodule
    sizes = dm.split_sizes
    epochs = 1 if opts.tiny else results.recipe_epochs(preset)
    if opts.tiny:
        train_batches, val_batches, test_batches = 3, 2, 2
    else:
        train_batches = math.ceil(sizes["train"] / dm.batch_size)
        val_batches = math.ceil(sizes["val"] / dm.eval_batch_size)
        test_batches = math.ceil(sizes["test"] / dm.eval_batch_size)
    setup_s = time.perf_counter() - start - (timer.train_seconds or 0.0)
    projected = epochs * (train_batches * step_s + val_batches * val_s + epoch_extra_s) + test_batches * val_s + setup_s
    return {
        "step_ms": 1e3 * step_s,
        "val_batch_ms": 1e3 * val_s,
        "epoch_extra_s": epoch_extra_s,
        "setup_s": setup_s,
        "epochs": epochs,
        "projected_s": projected,
    }


def merge_rows(committed: dict[str, dict], new: dict[str, dict]) -> tuple[dict[str, dict], list[str]]:
    """The committed rows with the new ones in; a capped new row never replaces a row with more epochs."""
    rows, notes = dict(committed), []
    for preset, row in new.items():
        old = rows.get(preset)
        # (ensemble rows have no epochs: a new one replaces the old)
        if old and "epochs" in old and "epochs" in row and old["epochs"] >= old["recipe_epochs"] > row["epochs"]:
            notes.append(f"`{preset}`: kept the committed {old['epochs']}-epoch row ({old['hardware']})")
            continue
        rows[preset] = row
    return rows, notes


def recipe_order(projected: dict[str, float], committed: dict[str, dict]) -> list[str]:
    """Presets whose committed row is capped or missing first (a full GPU row adds most there), each group
    cheapest first, so that as many rows as possible fit."""

    def full(preset: str) -> bool:
        row = committed.get(preset)
        return bool(row) and row["epochs"] >= row["recipe_epochs"]

    return sorted(projected, key=lambda p: (full(p), projected[p]))


def run_recipes(part: Part, opts: argparse.Namespace, report: dict[str, Any], committed: dict[str, dict]) -> None:
    """Probe every preset, then run the whole recipes that fit, in :func:`recipe_order` (into ``report``)."""
    with tempfile.TemporaryDirectory(prefix="mnist-gpu-recipes-") as tmp:
        workdir = Path(tmp)
        for preset in opts.presets:
            try:
                with hard_cap(part.left()):
                    report["presets"][preset] = probe(preset, opts, workdir / f"probe-{preset}")
            except OverCap:
                report["presets"][preset] = {"status": "skipped: no time left to probe it"}
                break
        projected = {p: r["projected_s"] for p, r in report["presets"].items() if "projected_s" in r}
        for preset in recipe_order(projected, committed):
            entry = report["presets"][preset]
            cap = min(opts.preset_cap, part.left())
            if entry["projected_s"] * 1.15 > cap:
                entry["status"] = f"skipped: projected {entry['projected_s']:.0f} s, {cap:.0f} s available"
                continue
            start = time.perf_counter()
            try:
                with hard_cap(cap):
                    tiny = [*TINY_LIMITS, "--media.enabled=false"] if opts.tiny else ()
                    row = results.run_preset(preset, 1 if opts.tiny else None, workdir, tiny)
            except OverCap:
                entry["status"] = f"stopped at its {cap:.0f} s cap (projected {entry['projected_s']:.0f} s)"
                continue
            finally:
                entry["seconds"] = time.perf_counter() - start
            if opts.tiny:
                row["load"] = "gpu.py --tiny: 3 batches per epoch, not a result"
            report["rows"][preset] = row
            entry["status"] = "done"
            print(f"[gpu] recipe {preset}: {row['test_acc']:.2f}% in {entry['seconds']:.0f} s", flush=True)


def write_results(
    report: dict[str, Any], committed: dict[str, dict], out: Path, more: dict[str, dict] | None = None
) -> None:
    """results.json and results.md in ``out``: the committed rows with this run's (and ``more``: the frontier
    part's) merged in."""
    rows, notes = merge_rows(committed, {**(more or {}), **report["rows"]})
    report["merge_notes"] = notes
    out.mkdir(parents=True, exist_ok=True)  # also when every part before this one was skipped
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "results.md").write_text(results.markdown(rows))
