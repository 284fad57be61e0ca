"""gpu.py's speedruns: each preset through the CLI's real ``fit`` once per seed, timed, and summarised.

One untimed warm-up run first (the CUDA context, cuDNN's and cuBLAS's start-up, any compilation), then one ``fit``
per seed while the next still fits the part's cap; training time from the preset's
:class:`~mnist_lightning.callbacks.TrainTimer`, accuracy from a test of the final weights on the official test set.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

from gpu_budget import Part, hard_cap, run_while_time_allows

from mnist_lightning.callbacks import TrainTimer
from mnist_lightning.cli import MNISTLightningCLI, config_dir

TINY_MODEL = {
    "speedrun": ["--model.init_args.channels=[4,8]", "--model.init_args.hidden=16"],
    "speedrun_995": ["--model.init_args.channels=[4,8]", "--model.init_args.hidden=16"],
}
# 2, not 1: the CLI reads a bare 1 as the float 1.0, which Lightning takes for "all batches"
TINY_LIMITS = ["--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2"]

# what a speedrun leaves out of `fit`: logging, the progress bar, the model summary and the figures (which the
# validation of each epoch would draw inside the timed window, taking longer than the training itself)
QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
QUIET.append("--media.enabled=false")


def fit_once(preset: str, seed: int, extra: list[str], workdir: Path, test: bool = True) -> dict[str, Any]:
    """``mnist-lightning fit --config <preset>`` (with :data:`QUIET`) in this process, then a test of the final
    weights on the official test set."""
    args = ["fit", f"--config={config_dir() / f'{preset}.yaml'}", f"--seed_everything={seed}", *QUIET]
    args += [f"--trainer.default_root_dir={workdir}", *extra]
    start = time.perf_counter()
    with mock.patch.object(sys, "argv", sys.argv[:1]):  # the script's own options are not the CLI's
        cli = MNISTLightningCLI(args=args)
    fit_call = time.perf_counter() - start
    timers = [c for c in cli.trainer.callbacks if isinstance(c, TrainTimer)]
    if not timers or timers[0].train_seconds is None:
        raise RuntimeError(f"configs/{preset}.yaml has no mnist_lightning.callbacks.TrainTimer callback")
    acc = float(cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]["test/acc"]) if test else None
    return {
        "train_s": timers[0].train_seconds,
        "fit_call_s": fit_call,
        "test_acc": acc,
        "steps": cli.trainer.global_step,
    }


def run_speedrun(part: Part, preset: str, target: float, goal_s: float, opts: argparse.Namespace) -> dict[str, Any]:
    """A warm-up, then ``preset``'s seeds while they fit ``part``: every run, and their :func:`summarize`."""
    extra = shlex.split(getattr(opts, f"{preset}_args") or "")
    if opts.compile_speedruns:
        extra.append("--model.init_args.compile=true")
    if opts.tiny:
        extra += [*TINY_MODEL[preset], "--trainer.max_epochs=1", *TINY_LIMITS]
    report: dict[str, Any] = {"preset": preset, "target_acc": target, "goal_s": goal_s, "extra_args": extra}
    with tempfile.TemporaryDirectory() as workdir:
        # untimed: the CUDA context, cuDNN's and cuBLAS's start-up and any compilation happen here
        start = time.perf_counter()
        warmup = ["--trainer.max_epochs=1", f"--trainer.limit_train_batches={2 if opts.tiny else 10}"]
        with hard_cap(part.left()):
            fit_once(preset, 10_000, [*extra, *warmup], Path(workdir) / "warmup", test=False)
        report["warmup_s"] = time.perf_counter() - start
        seeds = list(range(opts.first_seed, opts.first_seed + opts.seeds))

        def one(seed: int) -> dict[str, Any]:
            run = {"seed": seed, **fit_once(preset, seed, extra, Path(workdir) / f"seed{seed}")}
            print(f"[gpu] {preset} seed {seed}: {run['train_s']:.3f} s, test acc {run['test_acc']:.4f}", flush=True)
            return run

        runs, note = run_while_time_allows(part, seeds, one)
    report["runs"], report["note"] = runs, note
    report.update(summarize(runs, target, goal_s, opts.min_seeds))
    return report


def mean_std(values: list[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(runs: list[dict[str, Any]], target: float, goal_s: float, min_seeds: int) -> dict[str, Any]:
    """Mean ± std of training time and test accuracy, and whether the targets are met."""
    if not runs:
        return {"seeds": 0, "reached": False}
    acc, acc_std = mean_std([r["test_acc"] for r in runs])
    train, train_std = mean_std([r["train_s"] for r in runs])
    return {
        "seeds": len(runs),
        "test_acc_mean": acc,
        "test_acc_std": acc_std,
        "train_s_mean": train,
        "train_s_std": train_std,
        "fit_call_s_mean": statistics.fmean(r["fit_call_s"] for r in runs),
        "steps": runs[-1]["steps"],
        "reached": acc >= target and train < goal_s and len(runs) >= min_seeds,
    }
