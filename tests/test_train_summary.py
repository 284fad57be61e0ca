"""The model summary at the start of ``fit``: no ``0 Total Flops`` (Lightning counts FLOPs only for a model with an
example input), but the forward FLOPs of one image counted by torch, and no summary when it is turned off."""

from __future__ import annotations

from pathlib import Path

from conftest import CONFIGS, run_cli

from mnist_lightning import MLPClassifier
from mnist_lightning.callbacks.summary import forward_flops
from mnist_lightning.models import CNNClassifier

TINY = (
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
    "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
)  # fmt: skip


def test_the_summary_counts_the_forward_flops_of_one_image(isolated: Path) -> None:
    result = run_cli("fit", "--config", str(CONFIGS / "mlp_128_64.yaml"), "--model.ema_decay", "0.9", *TINY)
    assert "| Params |" in result.stderr and "Trainable params" in result.stderr
    assert "Total Flops" not in result.stderr and "FLOPs |" not in result.stderr  # no column of zeros
    # 784*128 + 128*64 + 64*10 multiply-adds, two FLOPs each; the weight average does not double it
    assert "218 K     Forward FLOPs per image" in result.stderr
    assert "Skipping setting a default `ModelSummary`" not in result.stderr


def test_no_summary_when_it_is_turned_off(isolated: Path) -> None:
    result = run_cli("fit", "--config", str(CONFIGS / "linear.yaml"), *TINY, "--trainer.enable_model_summary", "false")
    assert "Trainable params" not in result.stderr and "FLOPs" not in result.stderr


def test_forward_flops_of_a_convolutional_net_leave_its_modes_as_they_were() -> None:
    model = CNNClassifier()  # LeNet with BatchNorm: a batch of one is counted in eval mode
    model.train()
    flops = forward_flops(model)
    # a convolution uses each weight at every position: more than two FLOPs per parameter, unlike a linear layer
    assert flops is not None and flops > 4 * model.num_parameters
    assert all(module.training for module in model.modules())
    assert forward_flops(MLPClassifier(hidden_sizes=[], compile=True)) is None  # never compiles for a count
