"""gpu.py's frontier part: ``resnet_frontier`` over as many seeds as fit, then their committee, whose number of
test-time views is chosen on the validation split before the test set is used once.

The preset is probed for a few steps first (gpu_recipes.probe): the projected seconds of one seed, and of the
committee's evaluation (every member on every view of the validation images, then the test images once), decide how
many seeds start; a seed that still overruns is stopped at the part's cap, leaving the committee its time. Every
seed is a whole recipe through benchmarks/results.py's ``run_preset`` (figures off, ``last.ckpt`` only at epoch
ends: neither is part of the recipe, and both cost GPU minutes), its best-validation checkpoint kept for the
committee (``run_ensemble``).
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
import time
from pathlib import Path
from typing import Any

import results
from gpu_budget import OverCap, Part, hard_cap
from gpu_recipes import probe

from mnist_lightning.evaluation.ensemble import MAX_VIEWS

PRESET = "resnet_frontier"
SINGLE_TARGET = 99.74  # the public recipe's mean single model (10 nets), official test accuracy in percent
COMMITTEE_TARGET = 99.82  # a committee of 10 of them
# what the runs leave out of the recipe's fit: figures at every validation and the mid-epoch last.ckpt (62 MB with
# Adam's state) are not part of the recipe and would cost seconds of every minute
QUIET = ["--media.enabled=false", "--checkpoint.last_every_n_train_steps=0"]
TINY_NET = ["--model.init_args.stem_channels=8", "--model.init_args.widths=[8,8,16,16]"]
MARGIN = 1.15  # a seed starts only when its projection, times this, still fits
# gpu.md's paragraphs on this part and its expected time (written before any GPU ran it), kept on every page it writes
ESTIMATE = """## The frontier on the GPU

The `frontier` part (cap 180 s, `--cap-frontier`) probes `configs/resnet_frontier.yaml` for a few steps, then runs
its whole recipe once per seed while one more seed and the committee's evaluation still fit (`--frontier-seeds`, 10
at most), with figures off and `last.ckpt` written at epoch ends only (neither is part of the recipe). The kept
best-validation checkpoints then form the committee: its number of test-time views (1 to 9) is chosen on the 5,000
validation images, and the test set is used once, with that number. The seeds' mean and the committee are compared
with the public recipe's 99.74% (single models) and 99.82% (a committee of 10) only from 3 seeds and 2 members on;
a tiny run compares nothing. `--frontier-args` passes more fit options (e.g. `"--trainer.precision=bf16-mixed"`).

Expected time per seed on one H100, **an estimate** (no GPU has run it yet): about 1 minute. The recipe is 11 epochs
of 550 steps of 100 images, 6,050 steps. Its forward pass costs 0.80 GFLOP per image (torch's FLOP counter), so
training costs 3 × 0.80 × 100 × 6,050 ≈ 1.45 PFLOP: 7–12 s at 120–200 TFLOP/s, a quarter to 40% of the H100's dense
TF32 peak that cuDNN's convolutions use by default. At batch 100 the step is more likely bounded by the host: the
speedrun_995 goal (1,296 steps in under 5 s) assumes at most 3.9 ms per step for a network of 2 convolutions, and
this one has 14 convolutions and 14 BatchNorms, so about 5 ms per step, 30 s, with the GPU's work hidden under it.
Set-up, 11 validations of 5,000 images, checkpoints and the test add 15–20 s: 45–60 s per seed, so the cap holds
the probe and 2 seeds, and `--frontier-seeds 10 --cap-frontier 700 --skip tests speedrun speedrun_995 speed recipes`
would take a whole 10-minute call for a committee of 10. On one thread of the shared 2-core CPU one epoch
alone takes 65–105 minutes ([presets.md](../docs/presets.md#the-frontier-presets)).

The budget, 540 s: tests 45 s, speedrun 75 s, speedrun_995 90 s, speed 115 s, frontier 180 s; the recipes get what
is left (about 35 s, enough for the cheapest; `--skip frontier` gives them 215 s).
"""


def committee_seconds(entry: dict[str, Any], members: int, tiny: bool) -> float:
    """Projected seconds of the committee's evaluation: every member on every view of the validation images and
    then of the test images, at the probe's validation-batch time, and a CLI start for the test."""
    val_batches, test_batches = (2, 2) if tiny else (5, 10)  # 5,000 and 10,000 images in batches of 1,000
    batches = members * MAX_VIEWS * (val_batches + test_batches)
    return batches * entry["val_batch_ms"] / 1e3 + entry["setup_s"]


def run_frontier(part: Part, opts: argparse.Namespace, report: dict[str, Any]) -> None:
    """Probe, seeds while they fit, then the committee (everything into ``report``)."""
    settings = [*QUIET, *shlex.split(opts.frontier_args or "")]
    if opts.tiny:  # a tiny network, evaluated in batches of 100; the probe sets its own batch limits
        settings += [*TINY_NET, "--data.eval_batch_size=100"]
    extra = [*settings, *results.TINY_FIT_ARGS] if opts.tiny else settings
    report.update(preset=PRESET, extra_args=extra, runs=[], note="")
    with tempfile.TemporaryDirectory(prefix="mnist-gpu-frontier-") as tmp:
        workdir, keep = Path(tmp), Path(tmp) / "keep"
        with hard_cap(part.left()):
            entry = report["probe"] = probe(PRESET, opts, workdir / "probe", settings)
        seeds = list(range(opts.first_seed, opts.first_seed + opts.frontier_seeds))
        slowest = entry["projected_s"]
        for seed in seeds:
            reserve = committee_seconds(entry, len(report["runs"]) + 1, opts.tiny)
            if not part.fits(slowest * MARGIN + reserve):
                report["note"] = (
                    f"stopped after {len(report['runs'])} of {len(seeds)} seeds: one more ({slowest:.0f} s) and the "
                    f"committee ({reserve:.0f} s) would pass the {part.cap_s:.0f} s cap"
                )
                break
            start = time.perf_counter()
            try:
                with hard_cap(part.left() - reserve):
                    row = results.run_preset(PRESET, 1 if opts.tiny else None, workdir, extra, seed=seed, keep=keep)
            except OverCap:
                report["note"] = f"seed {seed} reached the cap and was left out"
                break
            seconds = time.perf_counter() - start
            slowest = max(slowest, seconds)
            if opts.tiny:
                row["load"] = results.TINY_LOAD
            report["runs"].append({**row, "seconds": seconds})
            print(f"[gpu] {PRESET} seed {seed}: {row['test_acc']:.2f}% in {seconds:.0f} s", flush=True)
        if not report["runs"]:
            return
        report["summary"] = results.over_seeds({str(r["seed"]): strip(r) for r in report["runs"]})
        start = time.perf_counter()
        with hard_cap(max(part.left(), 1.0)):
            key, row = results.run_ensemble([PRESET], keep, MAX_VIEWS, workdir / "committee", opts.tiny)
        # the members were kept in a temporary folder of this run: the row says which run made it
        row["command"] = f"python benchmarks/gpu.py (frontier part, {len(report['runs'])} seeds)"
        report["committee"] = {"key": key, **row, "seconds": time.perf_counter() - start}
        print(f"[gpu] {PRESET} committee: {row['views']} views (chosen on validation), {row['test_acc']:.2f}%")


def strip(run: dict[str, Any]) -> dict[str, Any]:
    """A seed's results-table row, without the part's own timing."""
    return {k: v for k, v in run.items() if k != "seconds"}


def result_rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rows this part adds to results.json: the preset over its seeds and the committee."""
    rows: dict[str, dict[str, Any]] = {}
    if report.get("summary"):
        rows[PRESET] = report["summary"]
    if report.get("committee"):
        committee = {k: v for k, v in report["committee"].items() if k not in ("key", "seconds")}
        rows[report["committee"]["key"]] = committee
    return rows


def verdict(mean: float, target: float, count: int, needed: int, tiny: bool) -> str:
    """Whether a figure reaches its target: only for a real run with enough seeds."""
    if tiny:
        return "n/a (tiny)"
    if count < needed:
        return f"n/a ({count} of the {needed} seeds needed)"
    return "yes" if mean >= target else "no"


def section(report: dict[str, Any], tiny: bool) -> list[str]:
    """gpu.md's section: the probe, every seed, the mean, the committee and its views chosen on validation."""
    frontier = report.get("frontier") or {}
    lines = [
        f"## The frontier: `{PRESET}` over seeds and their committee",
        "",
        "Each seed is the whole recipe through `benchmarks/results.py` (figures off, `last.ckpt` at epoch ends only), "
        "tested once from its best-validation checkpoint. The committee averages the kept checkpoints' "
        "probabilities over test-time views; how many views (1 to 9) is chosen on the validation images first, "
        "and the test set is used once, with that number.",
        "",
    ]
    entry = frontier.get("probe")
    if not entry:
        return [*lines, "Not run."]
    lines.append(
        f"Probe: {entry['step_ms']:.1f} ms per training step, {entry['val_batch_ms']:.1f} ms per validation batch; "
        f"projected {entry['projected_s']:.0f} s ({entry['projected_s'] / 60:.1f} min) per seed."
    )
    runs = frontier.get("runs", [])
    if runs:
        lines += [
            "",
            "| seed | epochs | best val acc | test acc | s / epoch | seconds |",
            "|---:|---|---:|---:|---:|---:|",
        ]
        for r in runs:
            lines.append(
                f"| {r['seed']} | {r['epochs']} / {r['recipe_epochs']} | {r['best_val_acc']:.2f}% | "
                f"{r['test_acc']:.2f}% | {r['seconds_per_epoch']:.1f} | {r['seconds']:.0f} |"
            )
        s = frontier["summary"]
        minutes = sum(r["seconds"] for r in runs) / len(runs) / 60
        reached = verdict(s["test_acc"], SINGLE_TARGET, len(runs), 3, tiny)
        lines += [
            "",
            f"Mean over {len(runs)} seed(s): {s['test_acc']:.2f} ± {s['test_acc_std']:.2f}% "
            f"(target ≥ {SINGLE_TARGET:.2f}%: {reached}); {minutes:.1f} min per seed, set-up and test included.",
        ]
    if frontier.get("note"):
        lines += ["", f"{frontier['note']}."]
    committee = frontier.get("committee")
    if committee:
        scores = {int(k): v for k, v in committee["val_by_views"].items()}
        by_views = ", ".join(f"{k}: {v['acc']:.2f}%" for k, v in sorted(scores.items()))
        reached = verdict(committee["test_acc"], COMMITTEE_TARGET, len(committee["ensemble"]), 2, tiny)
        lines += [
            "",
            f"Committee of {len(committee['ensemble'])}: {committee['views']} view(s), chosen on "
            f"{committee['val_images']:,} validation images (validation accuracy by views: {by_views}); "
            f"test accuracy, measured once: {committee['test_acc']:.2f}% (target ≥ {COMMITTEE_TARGET:.2f}%: "
            f"{reached}), in {committee['seconds']:.0f} s.",
        ]
    return lines
