"""Training the MLP on the real MNIST: it learns, and a checkpoint gives back the same model."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from mnist_lightning import MLPClassifier, MNISTDataModule
from mnist_lightning.models.schedules import OPTIMIZERS


def quiet_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, **kwargs)


def test_short_mlp_run_lifts_validation_accuracy_above_90_percent(mnist_dir: Path, tmp_path: Path) -> None:
    L.seed_everything(0)
    dm = MNISTDataModule(data_dir=str(mnist_dir), batch_size=128)
    model = MLPClassifier(hidden_sizes=[128, 64])
    trainer = quiet_trainer(max_epochs=1, default_root_dir=tmp_path)
    before = trainer.validate(model, datamodule=dm, verbose=False)[0]["val/acc"]
    trainer.fit(model, datamodule=dm)
    after = trainer.callback_metrics
    assert before < 0.3
    assert after["val/acc"] > 0.9
    assert after["val/acc_best"] == pytest.approx(after["val/acc"].item())
    assert after["train/loss"] < 0.6

    # checkpoint round trip: the same test metrics from the file alone
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    expected = trainer.test(model, datamodule=dm, verbose=False)[0]
    restored = MLPClassifier.load_from_checkpoint(path)
    assert restored.hparams.hidden_sizes == [128, 64]
    got = quiet_trainer().test(restored, datamodule=dm, verbose=False)[0]
    assert got["test/acc"] == expected["test/acc"] > 0.9
    assert got["test/loss"] == pytest.approx(expected["test/loss"], abs=1e-6)


@pytest.mark.parametrize(
    ("hidden", "activation", "params"),
    [([], "relu", 7_850), ([128, 64], "relu", 109_386), ([100, 100], "none", 89_610), ([128, 62], "relu", 109_108)],
)
def test_mlp_shapes(hidden: list[int], activation: str, params: int) -> None:
    model = MLPClassifier(hidden_sizes=hidden, activation=activation)
    assert model.num_parameters == params
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.net) if activation == "none" else True
    logits = model(torch.randn(3, 1, 28, 28))
    assert logits.shape == (3, 10)


@pytest.mark.parametrize("name", ["sgd", "adam", "adagrad", "adamw"])
def test_optimizer_and_learning_rate_come_from_the_settings(name: str) -> None:
    model = MLPClassifier(optimizer=name, lr=0.05)
    optimizer = model.configure_optimizers()
    assert type(optimizer) is OPTIMIZERS[name]
    assert optimizer.param_groups[0]["lr"] == 0.05


def test_bad_learning_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="lr must be positive"):
        MLPClassifier(lr=0)
