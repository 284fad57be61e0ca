"""The temperature ``report`` fits travels with its checkpoint: fit → report → predict, export, serve and ensembles
apply it by default, ``off`` and an explicit value win, a stale calibration file is ignored, it can be written into
the checkpoint, and a small validation split or an unwritable folder is said. Real MNIST, tiny fits."""

from __future__ import annotations

import argparse
import base64
import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, MNIST_DIR, run_cli
from digit_helpers import digit_png

from mnist_lightning.checkpoints import load_classifier
from mnist_lightning.cli.commands import calibrated_classifier
from mnist_lightning.data import DATA_DIR_ENV, load_split, normalize
from mnist_lightning.errors import OutputPathError
from mnist_lightning.evaluation.temperature import CHECKPOINT_KEY, sidecar_path
from mnist_lightning.serving.serve import create_app

TINY = ("--trainer.max_epochs", "1", "--trainer.limit_train_batches", "20", "--trainer.limit_val_batches", "2")
QUIET = ("--trainer.logger", "false", "--trainer.enable_progress_bar", "false")
QUICK_REPORT = ("--no-wandb", "--shift_images", "100", "--shifts", "rotation")
ROWS = 64  # predictions compared
JSON = {"Content-Type": "application/json"}


def predict_body(png: bytes) -> bytes:
    """What the drawing page posts for a PNG."""
    return json.dumps({"image": "data:image/png;base64," + base64.b64encode(png).decode()}).encode()


def fit(folder: Path, *extra: str) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv(DATA_DIR_ENV, str(MNIST_DIR))
        run_cli("fit", "--config", str(CONFIGS / "linear.yaml"), *TINY, *QUIET, *extra)
    (best,) = folder.rglob("best-*.ckpt")
    return best


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A tiny linear model, reported on (its temperature stored beside it), with what report printed."""
    folder = tmp_path_factory.mktemp("calibrated")
    best = fit(folder)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv(DATA_DIR_ENV, str(MNIST_DIR))
        result = run_cli("report", "--ckpt_path", str(best), "--output", str(folder / "report"), *QUICK_REPORT)
    data = json.loads((folder / "report" / "report.json").read_text())
    return {"best": best, "folder": folder, "stderr": result.stderr, "data": data}


def test_report_stores_the_temperature_beside_the_checkpoint_and_says_where(reported: dict[str, object]) -> None:
    best, data = reported["best"], reported["data"]
    assert isinstance(best, Path) and isinstance(data, dict)
    sidecar = sidecar_path(best)
    record = json.loads(sidecar.read_text())
    temperature = data["temperature"]
    assert record["temperature"] == temperature and temperature != pytest.approx(1.0, abs=1e-3)
    assert record["validation_images"] == 9000 and record["small_validation"] is False
    assert record["fingerprint"]["size"] == best.stat().st_size
    cal = data["models"][0]["calibration"]
    assert cal["stored_in"] == [str(sidecar)] and data["temperature_stored_in"] == [str(sidecar)]
    assert sum(cal["bins"]["count"]) == sum(cal["bins_after_temperature"]["count"]) == 10_000
    assert {"mce_after_temperature", "nll_after_temperature"} <= set(cal)
    assert f"stored in {sidecar}" in str(reported["stderr"])
    markdown = (Path(str(reported["folder"])) / "report" / "report.md").read_text()
    assert f"stored in `{sidecar}`" in markdown and "| NLL after |" in markdown


def logits_of_test_images(checkpoint: Path, count: int = ROWS) -> torch.Tensor:
    """The first test images' logits, computed here without the commands' code."""
    images = load_split(MNIST_DIR, train=False)[0][:count]
    with torch.no_grad():
        return load_classifier(checkpoint)(normalize(images.float().div(255).unsqueeze(1)))


def predicted(checkpoint: Path, output: Path, *extra: str) -> tuple[torch.Tensor, str]:
    result = run_cli(
        "predict", "--ckpt_path", str(checkpoint), "--predictions.output", str(output),
        "--trainer.limit_predict_batches", "1", "--data.eval_batch_size", str(ROWS),
        "--trainer.enable_progress_bar", "false", *extra,
    )  # fmt: skip
    rows = list(csv.DictReader(output.open()))[:ROWS]
    return torch.tensor([[float(row[f"prob_{k}"]) for k in range(10)] for row in rows]), result.stderr


def test_predict_applies_the_stored_temperature_unless_told_otherwise(
    reported: dict[str, object], isolated: Path
) -> None:
    best = reported["best"]
    assert isinstance(best, Path)
    temperature = json.loads(sidecar_path(best).read_text())["temperature"]
    logits = logits_of_test_images(best)
    stored, note = predicted(best, isolated / "stored.csv")
    assert torch.allclose(stored, (logits / temperature).softmax(1), atol=2e-6)
    assert f"applying temperature {temperature:.3f} from {sidecar_path(best)}" in note
    assert "--predictions.temperature off for none" in note  # the way to turn it off, as printed
    for spelling in ("off", "1"):  # every spelling: tests/test_eval_calibration.py
        plain, note = predicted(best, isolated / f"{spelling}.csv", "--predictions.temperature", spelling)
        assert torch.allclose(plain, logits.softmax(1), atol=2e-6), spelling
        assert "applying temperature" not in note
    explicit, _ = predicted(best, isolated / "two.csv", "--predictions.temperature", "2.5")
    assert torch.allclose(explicit, (logits / 2.5).softmax(1), atol=2e-6)


def test_export_bakes_the_stored_temperature_into_the_probabilities(
    reported: dict[str, object], isolated: Path
) -> None:
    best = reported["best"]
    assert isinstance(best, Path)
    temperature = json.loads(sidecar_path(best).read_text())["temperature"]
    images = load_split(MNIST_DIR, train=False)[0][:ROWS]
    logits = logits_of_test_images(best)
    for extra, expected in (((), temperature), (("--temperature", "off"), 1.0)):
        output = isolated / f"model-{len(extra)}.pt"
        result = run_cli("export", "--ckpt_path", str(best), "--format", "torchscript", "--output", str(output), *extra)
        exported_logits, probabilities = torch.jit.load(str(output))(images)
        assert torch.allclose(exported_logits, logits, atol=1e-5)  # the logits stay as they are
        assert torch.allclose(probabilities, (logits / expected).softmax(1), atol=2e-6)
        assert ("probabilities at temperature" in result.stderr) == (expected != 1.0)


def test_serve_applies_the_stored_temperature(reported: dict[str, object]) -> None:
    best = reported["best"]
    assert isinstance(best, Path)
    temperature = json.loads(sidecar_path(best).read_text())["temperature"]
    body = predict_body(digit_png(load_split(MNIST_DIR, train=False)[0][0].numpy()))
    answers = {}
    for given in (None, 1.0):  # what serve's --temperature gives: stored (the default), off
        options = argparse.Namespace(ckpt_path=str(best), model=None, temperature=given)
        app = create_app(calibrated_classifier(options))
        answers[given] = app.test_client().post("/predict", data=body, headers=JSON).get_json()
    plain = torch.tensor(answers[1.0]["probabilities"])
    expected = (plain.log() / temperature).softmax(0)  # softmax(z / T) from softmax(z)
    assert torch.allclose(torch.tensor(answers[None]["probabilities"]), expected, atol=1e-5)


def test_every_member_of_an_ensemble_applies_its_own_temperature(reported: dict[str, object], isolated: Path) -> None:
    best = reported["best"]
    assert isinstance(best, Path)
    last = best.with_name("last.ckpt")  # reported on: no; it has no calibration file
    assert not sidecar_path(last).exists()
    temperature = json.loads(sidecar_path(best).read_text())["temperature"]
    expected = ((logits_of_test_images(best) / temperature).softmax(1) + logits_of_test_images(last).softmax(1)) / 2
    both, note = predicted(best, isolated / "ensemble.csv", "--ensemble", str(last))
    assert torch.allclose(both, expected, atol=2e-6)
    assert f"(T={temperature:.3g})" in note
    off, _ = predicted(best, isolated / "ensemble-off.csv", "--ensemble", str(last), "--predictions.temperature", "off")
    plain = (logits_of_test_images(best).softmax(1) + logits_of_test_images(last).softmax(1)) / 2
    assert torch.allclose(off, plain, atol=2e-6)


def test_a_calibration_file_of_a_replaced_checkpoint_is_ignored_with_a_note(
    reported: dict[str, object], isolated: Path
) -> None:
    best = reported["best"]
    assert isinstance(best, Path)
    copy = isolated / "copied" / best.name
    copy.parent.mkdir()
    shutil.copy(best, copy)  # a copy (new mtime) of both files keeps the temperature
    shutil.copy(sidecar_path(best), sidecar_path(copy))
    temperature = json.loads(sidecar_path(best).read_text())["temperature"]
    _, note = predicted(copy, isolated / "copy.csv")
    assert f"applying temperature {temperature:.3f}" in note

    state = torch.load(copy, weights_only=True)  # the checkpoint replaced by other weights, same name
    state["state_dict"] = {k: v * 0.5 for k, v in state["state_dict"].items()}
    torch.save(state, copy)
    probabilities, note = predicted(copy, isolated / "stale.csv")
    assert "was fitted for an earlier version" in note and "applying temperature" not in note
    assert torch.allclose(probabilities, logits_of_test_images(copy).softmax(1), atol=2e-6)


def test_the_temperature_can_be_written_into_the_checkpoint(reported: dict[str, object], isolated: Path) -> None:
    best = reported["best"]
    assert isinstance(best, Path)
    copy = isolated / best.name
    shutil.copy(best, copy)
    run_cli("report", "--ckpt_path", str(copy), "--output", "r", "--save_temperature", "checkpoint", *QUICK_REPORT)
    assert not sidecar_path(copy).exists() and not list(isolated.glob(".*.ckpt*"))  # no temporary file left
    record = torch.load(copy, weights_only=True)[CHECKPOINT_KEY]
    assert json.loads((isolated / "r" / "report.json").read_text())["temperature_stored_in"] == [str(copy)]
    probabilities, note = predicted(copy, isolated / "inside.csv")
    assert f"from {copy} " in note
    expected = (logits_of_test_images(copy) / record["temperature"]).softmax(1)
    assert torch.allclose(probabilities, expected, atol=2e-6)


def test_an_unwritable_checkpoint_folder_is_said_and_the_report_goes_on(
    reported: dict[str, object], isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    best = reported["best"]
    assert isinstance(best, Path)

    def read_only(path: object, text: object) -> None:
        raise OutputPathError(f"cannot write {path} (read-only file system); choose another folder")

    monkeypatch.setattr("mnist_lightning.evaluation.temperature.write_atomically", read_only)
    result = run_cli("report", "--ckpt_path", str(best), "--output", "r", *QUICK_REPORT)
    data = json.loads((isolated / "r" / "report.json").read_text())
    cal = data["models"][0]["calibration"]
    assert cal["stored_in"] == [] and "read-only file system" in cal["not_stored"]
    assert "not stored" in result.stderr and "read-only file system" in result.stderr
    assert "not stored" in (isolated / "r" / "report.md").read_text()


def test_a_temperature_fitted_on_a_small_validation_split_says_so(tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("small_validation")
    best = fit(folder, "--data.val_size", "300")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        result = run_cli("report", "--ckpt_path", str(best), "--output", "r", *QUICK_REPORT)
        record = json.loads(sidecar_path(best).read_text())
        assert record["validation_images"] == 300 and record["small_validation"] is True
        assert "a small split: only a rough fit" in result.stderr
        assert "a rough fit" in (folder / "r" / "report.md").read_text()
        _, note = predicted(best, folder / "p.csv")
    assert "on 300 validation images; under 1,000, so only a rough fit" in note
