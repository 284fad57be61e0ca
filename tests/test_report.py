"""``mnist-lightning report`` on the real MNIST: its numbers against torchmetrics, shifts that move accuracy the way
they must, temperature scaling, the files it writes, its one-line errors, and the W&B run it logs into."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, MNIST_DIR, run_cli
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassPrecision,
    MulticlassRecall,
)
from wandb_offline import read_run

from mnist_lightning.checkpoints import inspect_checkpoint, load_classifier
from mnist_lightning.data import DATA_DIR_ENV, MNISTDataModule, load_split, normalize
from mnist_lightning.data.transforms import SHIFTS, rotate
from mnist_lightning.evaluation.calibration import calibration, fit_temperature
from mnist_lightning.evaluation.report import Report, build_report, logits_of

TINY = ("--trainer.max_epochs", "1", "--trainer.limit_train_batches", "20", "--trainer.limit_val_batches", "2")
QUICK = ("--shift_images", "300")  # the console-script tests check files and wiring, not the curves


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two small models trained on the real MNIST by ``mnist-lightning fit``: a linear one with W&B (offline) and
    an MLP without a logger (so without a W&B run id). Returns their best checkpoints and the folder."""
    folder = tmp_path_factory.mktemp("report_models")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv(DATA_DIR_ENV, str(MNIST_DIR))
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
            mp.setenv(var, str(folder / ".wandb" / var.lower()))
        mp.delenv("WANDB_API_KEY", raising=False)
        run_cli("fit", "--config", str(CONFIGS / "linear.yaml"), *TINY, "--trainer.enable_progress_bar", "false")
        run_cli(
            "fit", "--config", str(CONFIGS / "mlp_20.yaml"), *TINY, "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", "runs_mlp",
        )  # fmt: skip
    (linear,) = (folder / "runs").rglob("best-*.ckpt")
    (mlp,) = (folder / "runs_mlp").rglob("best-*.ckpt")
    return {"linear": linear, "mlp": mlp, "folder": folder}


@pytest.fixture(scope="module")
def rotation_report(trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Report:
    """The report of the linear model through the Python API, rotations only, on the whole test set."""
    output = tmp_path_factory.mktemp("rotation_report")
    return build_report(
        [trained["linear"]], output, use_wandb=False, shift_images=10_000, shifts=["rotation"], data_dir=MNIST_DIR
    )


def independent_probs(checkpoint: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Test-set probabilities computed here without the report's code, and the labels."""
    model = load_classifier(checkpoint)
    images, labels = load_split(MNIST_DIR, train=False)
    with torch.no_grad():
        probs = model(normalize(images.float().div(255).unsqueeze(1))).softmax(1)
    return probs, labels


def test_numbers_match_torchmetrics(trained: dict[str, Path], rotation_report: Report) -> None:
    probs, labels = independent_probs(trained["linear"])
    (entry,) = rotation_report.data["models"]
    recall = MulticlassRecall(10, average=None)(probs, labels)
    precision = MulticlassPrecision(10, average=None)(probs, labels)
    ece = MulticlassCalibrationError(10, n_bins=15, norm="l1")(probs, labels)
    assert entry["per_class"]["recall"] == pytest.approx(recall.tolist(), abs=1e-6)
    assert entry["per_class"]["precision"] == pytest.approx(precision.tolist(), abs=1e-6)
    assert entry["calibration"]["ece"] == pytest.approx(float(ece), abs=1e-5)
    assert entry["test_accuracy"] == pytest.approx(float(MulticlassAccuracy(10, average="micro")(probs, labels)))
    assert sum(map(sum, entry["confusion_matrix"])) == 10_000
    assert rotation_report.data["temperature"] == entry["calibration"]["temperature"] > 0


def test_rotation_moves_accuracy_the_expected_way(rotation_report: Report) -> None:
    (entry,) = rotation_report.data["models"]
    curve = entry["robustness"]["rotation"]
    assert rotation_report.data["shifts"]["rotation"]["levels"][0] == 0
    assert curve[0] == entry["test_accuracy"]  # 0°: the clean test set, exactly
    assert curve[-1] < entry["test_accuracy"] - 0.3  # 90°: collapsed, well below clean
    assert curve[1] > curve[-1]  # 15° hurts far less than 90°


def test_level_zero_of_every_shift_leaves_the_images_alone() -> None:
    images = load_split(MNIST_DIR, train=False)[0][:64].float().div(255).unsqueeze(1)
    for shift in SHIFTS.values():
        assert torch.equal(shift.apply(images, shift.levels[0], torch.Generator().manual_seed(0)), images), shift.name
        shifted = shift.apply(images, shift.levels[-1], torch.Generator().manual_seed(0))
        assert shifted.shape == images.shape and not torch.equal(shifted, images), shift.name
        again = shift.apply(images, shift.levels[-1], torch.Generator().manual_seed(0))
        assert torch.equal(shifted, again), f"{shift.name} is not reproducible with a fixed seed"
    rotated = rotate(images, 90, torch.Generator().manual_seed(0))
    # each digit is turned a quarter, one way or the other (chosen per image)
    errors = torch.stack([torch.rot90(images, k, (2, 3)).sub(rotated).abs().flatten(1).amax(1) for k in (1, 3)])
    assert errors.amin(0).max() < 1e-4


def test_temperature_scaling_lowers_the_ece_of_an_overconfident_model(trained: dict[str, Path]) -> None:
    info = inspect_checkpoint(trained["linear"])
    model = load_classifier(trained["linear"])
    datamodule = MNISTDataModule(**info.data_settings)
    datamodule.setup()
    (val_images, val_labels), (test_images, test_labels) = datamodule.splits["val"], datamodule.splits["test"]
    cpu = torch.device("cpu")
    val_logits = logits_of(model, val_images, 2000, cpu) * 5  # over-confident: the same ranking, sharper
    test_logits = logits_of(model, test_images, 2000, cpu) * 5
    temperature = fit_temperature(val_logits, val_labels)
    before = calibration(test_logits.softmax(1), test_labels)
    after = calibration((test_logits / temperature).softmax(1), test_labels)
    assert temperature > 2  # it undoes most of the ×5
    assert after["ece"] < before["ece"] / 2
    assert after["nll"] < before["nll"]


def offline_parts(folder: Path, run_id: str) -> list[Path]:
    return sorted((folder / "runs" / "wandb").glob(f"offline-run-*-{run_id}"), key=lambda p: p.stat().st_mtime)


def test_one_checkpoint_writes_the_report_in_its_run_folder_and_its_wandb_run(trained: dict[str, Path]) -> None:
    checkpoint = trained["linear"]
    run_id = inspect_checkpoint(checkpoint).wandb_run_id
    assert run_id and len(offline_parts(trained["folder"], run_id)) == 1  # the training run
    result = run_cli("report", "--ckpt_path", str(checkpoint), *QUICK)
    assert result.returncode == 0
    folder = checkpoint.parent.parent / "report"
    names = {path.name for path in folder.iterdir()}
    assert {"report.md", "report.json", "robustness.png", "reliability.png"} <= names
    assert any(name.startswith("confusion-") for name in names) and any(name.startswith("mistakes-") for name in names)
    data = json.loads((folder / "report.json").read_text())
    assert set(data["shifts"]) == set(SHIFTS) and "ensemble" not in data
    markdown = (folder / "report.md").read_text()
    assert "![accuracy against shift level](robustness.png)" in markdown and "| 9 |" in markdown
    for png in folder.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the report is a W&B run of its own, linked to the training run, which it leaves as it was
    assert len(offline_parts(trained["folder"], run_id)) == 1
    (part,) = [p for p in (trained["folder"] / "runs" / "wandb").glob("offline-run-*") if not p.name.endswith(run_id)]
    logged = read_run(part)
    assert logged.run_id != run_id and logged.config["training_run_id"] == run_id and logged.group == run_id
    assert logged.summary["report/test_acc"] == pytest.approx(data["models"][0]["test_accuracy"])
    assert logged.summary["report/temperature"] == pytest.approx(data["temperature"])
    assert logged.metric("report/ece") == [pytest.approx(data["models"][0]["calibration"]["ece"])]


def test_two_checkpoints_give_a_side_by_side_table_with_an_ensemble(trained: dict[str, Path], isolated: Path) -> None:
    result = run_cli(
        "report", "--ckpt_path", str(trained["linear"]), str(trained["mlp"]), "--output", "both", "--no-wandb", *QUICK
    )
    assert result.returncode == 0
    data = json.loads((isolated / "both" / "report.json").read_text())
    assert [m["model_class"] for m in data["models"]] == ["MLPClassifier", "MLPClassifier"]
    assert data["ensemble"]["robustness"]["rotation"][0] > 0
    markdown = (isolated / "both" / "report.md").read_text()
    table = markdown.split("## Models", 1)[1].split("##", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 4 and rows[-1].startswith("| ensemble")  # header, two models, the ensemble
    assert "mean of the probabilities" in rows[-1]
    assert not (isolated / "runs" / "wandb").exists()  # --no-wandb


def test_missing_checkpoint_is_one_line(isolated: Path) -> None:
    result = run_cli("report", "--ckpt_path", "nowhere.ckpt", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "nowhere.ckpt does not exist" in result.stderr


def test_unwritable_output_is_one_line(trained: dict[str, Path], isolated: Path) -> None:
    (isolated / "taken").write_text("a file where the report folder should be")
    result = run_cli("report", "--ckpt_path", str(trained["mlp"]), "--output", "taken/report", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "taken is a file, not a folder" in result.stderr


def test_predict_applies_the_reported_temperature(isolated: Path) -> None:
    import csv

    fit = ["fit", "--config", str(CONFIGS / "linear.yaml"), "--trainer.max_epochs", "1", "--trainer.logger", "false"]
    run_cli(*fit, "--trainer.limit_train_batches", "10", "--trainer.limit_val_batches", "2")
    best = next(isolated.rglob("best-*.ckpt"))
    tops, digits = {}, {}
    for temperature in ("1.0", "3.0"):
        out = isolated / f"p{temperature}.csv"
        run_cli("predict", "--ckpt_path", str(best), "--predictions.temperature", temperature,
                "--predictions.output", str(out), "--trainer.limit_predict_batches", "1")  # fmt: skip
        rows = list(csv.DictReader(out.open()))
        tops[temperature] = [max(float(r[f"prob_{k}"]) for k in range(10)) for r in rows]
        digits[temperature] = [r["prediction"] for r in rows]
    # a higher temperature softens every probability and changes no prediction
    assert digits["3.0"] == digits["1.0"]
    assert all(hot < cold for hot, cold in zip(tops["3.0"], tops["1.0"]))
    bad = run_cli("predict", "--ckpt_path", str(best), "--predictions.temperature", "0", check=False)
    assert bad.returncode == 1 and "predictions.temperature must be a positive number" in bad.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["report", "--ckpt_path", "x.ckpt", "--batch_size", "0"],
        ["report", "--ckpt_path", "x.ckpt", "--shift_images=-5"],
        ["report", "--ckpt_path", "x.ckpt", "--batch_size", "many"],
        ["tune", "configs/tune/linear.yaml", "--n_trials", "0"],
        ["tune", "configs/tune/linear.yaml", "--stale_after=-1"],
        ["serve", "--ckpt_path", "x.ckpt", "--temperature", "0"],
    ],
)
def test_numbers_out_of_range_are_one_line_before_any_work(
    isolated: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    from mnist_lightning.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    value = args[-1].split("=", 1)[1] if "=" in args[-1] else args[-1]  # both spellings: `--x v` and `--x=v`
    assert line.startswith("mnist-lightning: error: argument --") and repr(value).strip("'") in line
