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
import gpu_report  # noqa: E402
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
