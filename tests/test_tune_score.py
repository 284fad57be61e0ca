"""A tune trial's score is the best value of the search metric over every validation it made (several per epoch with
``val_check_interval`` below 1), its checkpoint follows that metric, and the trial prints one line."""

from __future__ import annotations

import csv
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from conftest import run_console_script
from digit_helpers import python_path
from tune_models import PEAKS

from mnist_lightning.tuning.study import open_journal


def peak_space(path: Path) -> Path:
    space = {
        "study": "peak",
        "base": "linear",
        "fixed": {
            "model.class_path": "tune_models.PeakEarlyClassifier",
            "trainer.max_epochs": 2,
            "trainer.limit_train_batches": 4,
            "trainer.val_check_interval": 0.5,  # two validations per epoch: after batches 2 and 4
            "trainer.limit_val_batches": 2,
            "trainer.logger": False,
        },
        "params": {"model.init_args.lr": [1.0e-3]},
        "metric": "val/peak",
        "direction": "maximize",
        "n_trials": 1,
        "pruner": "none",
        "sampler": "random",
    }
    path.write_text(yaml.safe_dump(space))
    return path


def test_score_is_the_best_validation_and_the_checkpoint_follows_the_metric(monkeypatch: pytest.MonkeyPatch) -> None:
    # the console script, so that everything a trial prints (stdout too) is seen
    monkeypatch.setenv("PYTHONPATH", python_path())
    result = run_console_script("tune", str(peak_space(Path("space.yaml"))))

    (trial,) = optuna.load_study(study_name="peak", storage=open_journal(Path("runs/tune/peak"))).trials
    # every validation reported, two per epoch
    assert trial.intermediate_values == pytest.approx(dict(enumerate(PEAKS)))
    assert trial.value == 1.0  # the best, not the last (0.2) nor the best of one per epoch (0.5)
    with Path("runs/tune/peak/trials.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert float(row["val/peak"]) == 1.0 and row["validations"] == "4" and row["epochs"] == "2"

    # the trial's best checkpoint is the one with that value of that metric, saved at the second validation
    best = Path(trial.user_attrs["checkpoint"])
    assert best.is_file() and "val_peak1.0000" in best.name and "step4" in best.name, best.name
    saved = torch.load(best, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 4
    (state,) = [v for k, v in saved["callbacks"].items() if "Checkpoint" in k]
    assert state["monitor"] == "val/peak" and float(state["best_model_score"]) == 1.0

    # best.yaml keeps that checkpoint setting
    best_config = yaml.safe_load(Path("runs/tune/peak/best.yaml").read_text())
    assert best_config["checkpoint"]["monitor"] == "val/peak" and best_config["checkpoint"]["mode"] == "max"

    # one line for the trial: no model summary, progress bars or Lightning's start-up lines
    output = result.stdout + result.stderr
    for noise in ("Total params", "Sanity Checking", "Epoch 0", "GPU available", "Seed set", "Trainer.fit"):
        assert noise not in output, noise
    (line,) = [line for line in output.splitlines() if line.startswith("tune peak: trial 0 ")]
    assert "complete" in line and "val/peak 1.0000" in line and "best of 4 validations" in line and "lr=0.001" in line
