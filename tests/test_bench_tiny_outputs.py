"""The benchmark scripts' tiny runs: where their tables go by default, and that they draw no conclusions."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest
from conftest import REPO

BENCHMARKS = REPO / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the scripts import their parts as siblings, as `python benchmarks/gpu.py` does
import gpu  # noqa: E402
import gpu_frontier  # noqa: E402
import gpu_report  # noqa: E402
import results  # noqa: E402
import speed_report  # noqa: E402


def test_only_a_real_gpu_run_writes_into_benchmarks_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert gpu.parse_args([]).out == BENCHMARKS
    tiny = gpu.parse_args(["--tiny"]).out
    assert tiny.parent == tmp_path and tiny.name.startswith("mnist-gpu-tiny-") and list(tiny.iterdir()) == []
    assert gpu.parse_args(["--tiny", "--out", str(tmp_path / "asked")]).out == tmp_path / "asked"
    assert gpu.parse_args(["--stage"]).out is None  # staging writes no tables: no folder made for them


def mlp_row(variant: str = "32-true") -> dict:
    """A speed.py row of the MLP: 100 steps of batch 64 through fit, bare Lightning and the plain loop."""
    return {
        "variant": variant,
        "name": "mlp_128_64",
        "train_images": 6400,
        "batch_size": 64,
        "fit_epoch_s": 0.5,
        "bare_epoch_s": 0.4,
        "plain_epoch_s": 0.25,
        "ratio": 2.0,
    }


def test_where_the_mlps_time_goes_is_said_only_for_a_real_run() -> None:
    (real,) = gpu_report.mlp_gap([mlp_row()])
    assert "5000 µs through fit, 4000 µs through bare Lightning, 2500 µs in the plain loop" in real
    assert "Lightning's loop adds 1500 µs per step" in real and "callbacks 1000 µs." in real
    (tiny,) = gpu_report.mlp_gap([mlp_row()], tiny=True)
    assert tiny.endswith("2500 µs in the plain loop.") and "adds" not in tiny
    assert gpu_report.mlp_gap([{**mlp_row(), "skipped": "compile is not run in tiny mode"}]) == []


def speed_report_of(tiny: bool, accuracy: float) -> dict:
    """What speed.py's paragraphs read: one speedrun seed, the MLP's rate and the torchvision loader's."""
    return {
        "tiny": tiny,
        "speedrun": {"seeds": [0], "train_s": [2.0], "fit_call_s": [2.5], "test_acc": [accuracy], "steps": 3},
        "models": [{"name": "mlp_128_64", "skipped": "", "fit_images_per_s": 8000.0}],
        "torchvision_loader": {"seconds": 1.0, "images": 2000, "images_per_s": 2000.0},
    }


def test_speed_verdicts_are_given_only_for_a_real_run() -> None:
    real = speed_report_of(tiny=False, accuracy=0.9915)
    assert "mean official test accuracy 99.15% (reaches 99.0%)." in speed_report.speedrun_paragraph(real)
    assert "(misses 99.0%)" in speed_report.speedrun_paragraph(speed_report_of(tiny=False, accuracy=0.5))
    assert "moves images at 4.0× its rate" in speed_report.loader_paragraph(real)
    tiny = speed_report_of(tiny=True, accuracy=0.5)
    speedrun, loader = speed_report.speedrun_paragraph(tiny), speed_report.loader_paragraph(tiny)
    assert "mean official test accuracy 50.00%. Per seed" in speedrun and "99.0%" not in speedrun
    assert loader.endswith("2,000 images/s.") and "×" not in loader


def test_a_tiny_results_run_writes_into_a_new_temporary_folder_unless_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    real = results.parse_args([])
    assert (real.results, real.output) == (BENCHMARKS / "results.json", BENCHMARKS / "results.md")
    tiny = results.parse_args(["--tiny", "--presets", "resnet_frontier"])
    assert tiny.results.parent == tiny.output.parent and tiny.results.parent.parent == tmp_path
    assert tiny.results.parent.name.startswith("mnist-results-tiny-") and tiny.max_epochs == 1
    for option in ("--ensemble", "--table-only"):  # every spelling of a tiny run
        args = results.parse_args(["--tiny", option, *(["x", "--keep", "k"] if option == "--ensemble" else [])])
        assert BENCHMARKS not in (args.results.parent, args.output.parent)
    asked = results.parse_args(["--tiny", "--results", str(tmp_path / "a.json")])
    assert asked.output == tmp_path / "a.md"  # beside the file it was asked for, not in benchmarks/
    asked = results.parse_args(["--tiny", "--output", str(tmp_path / "b.md")])
    assert asked.results == tmp_path / "b.json"


def test_the_tiny_gpu_run_runs_the_frontier_on_a_tiny_network_with_two_seeds() -> None:
    opts = gpu.parse_args(["--tiny"])
    assert opts.frontier_seeds == 2 and opts.cap_frontier == 20 * gpu.parse_args([]).cap_frontier
    assert "frontier" in gpu.PARTS and gpu.PARTS.index("frontier") < gpu.PARTS.index("recipes")


def frontier_report(tiny: bool, seeds: int, accuracy: float) -> dict:
    """What gpu.md's frontier section reads: a probe, ``seeds`` runs at ``accuracy`` and their committee."""
    runs = [
        {"seed": s, "epochs": 11, "recipe_epochs": 11, "best_val_acc": 99.7, "test_acc": accuracy,
         "seconds_per_epoch": 5.0, "seconds": 60.0}
        for s in range(seeds)
    ]  # fmt: skip
    committee = {"ensemble": [f"seed{s}.ckpt" for s in range(seeds)], "views": 5, "val_images": 5000,
                 "val_by_views": {"1": {"acc": 99.7}, "5": {"acc": 99.8}}, "test_acc": accuracy + 0.1,
                 "seconds": 9.0}  # fmt: skip
    summary = {"test_acc": accuracy, "test_acc_std": 0.02}
    probe = {"step_ms": 4.0, "val_batch_ms": 20.0, "projected_s": 55.0}
    return {"frontier": {"probe": probe, "runs": runs, "summary": summary, "committee": committee, "note": ""}}


def test_frontier_verdicts_are_given_only_for_a_real_run_with_enough_seeds() -> None:
    real = "\n".join(gpu_frontier.section(frontier_report(False, 3, 99.75), tiny=False))
    assert "(target ≥ 99.74%: yes)" in real and "(target ≥ 99.82%: yes)" in real
    assert "5 view(s), chosen on 5,000 validation images" in real and "measured once: 99.85%" in real
    missed = "\n".join(gpu_frontier.section(frontier_report(False, 3, 99.6), tiny=False))
    assert "(target ≥ 99.74%: no)" in missed and "(target ≥ 99.82%: no)" in missed
    few = "\n".join(gpu_frontier.section(frontier_report(False, 1, 99.9), tiny=False))
    assert "yes" not in few and "(1 of the 3 seeds needed)" in few
    tiny = "\n".join(gpu_frontier.section(frontier_report(True, 3, 99.9), tiny=True))
    assert ": yes)" not in tiny and ": no)" not in tiny and tiny.count("n/a (tiny)") == 2
