"""The weight average (``model.ema_decay``) on torch's ``AveragedModel``: one update per optimizer step with the
warm-up, the checkpoint layout of 0.1, and every evaluation path (attention maps included) on the average."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from mnist_lightning import MLPClassifier, MNISTDataModule
from mnist_lightning.models import ViTClassifier


class RecordAfterEachStep(L.Callback):
    """The live weights after every optimizer step, and the average a checkpoint saved at that moment would hold."""

    def __init__(self) -> None:
        self.start: dict[str, torch.Tensor] = {}
        self.live: list[dict[str, torch.Tensor]] = []
        self.average_seen: list[dict[str, torch.Tensor]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.start = {k: v.clone() for k, v in pl_module.weight_average.net.state_dict().items()}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        if trainer.global_step > len(self.live):  # an optimizer step happened with this batch
            self.live.append({k: v.clone() for k, v in pl_module.net.state_dict().items()})
            self.average_seen.append({k: v.clone() for k, v in pl_module.weight_average.net.state_dict().items()})


def test_the_average_moves_once_per_optimizer_step_with_its_warm_up(tmp_path: Path) -> None:
    L.seed_everything(0)
    decay = 0.6  # below the warm-up's (1 + t) / (10 + t) from step 5 on: both branches are used
    model = MLPClassifier(hidden_sizes=[8], batch_norm=True, lr=0.01, ema_decay=decay)
    record = RecordAfterEachStep()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=16,
        limit_val_batches=0,
        accumulate_grad_batches=2,  # 16 batches, 8 optimizer steps
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[record],
    )
    trainer.fit(model, datamodule=MNISTDataModule(batch_size=16))
    assert trainer.global_step == len(record.live) == 8

    expected = {k: v.float() for k, v in record.start.items()}
    for step, live in enumerate(record.live):
        weight = 1 - min(decay, (1 + step) / (10 + step))
        for key, value in live.items():
            if value.is_floating_point():
                expected[key] = expected[key] + weight * (value - expected[key])
            else:  # BatchNorm's batch counter is copied
                expected[key] = value.clone()
        # what the callbacks (a checkpoint among them) see after a step already holds that step's average
        for key, value in record.average_seen[step].items():
            torch.testing.assert_close(value.float(), expected[key].float(), rtol=1e-5, atol=1e-6)
    assert int(model.weight_average.net.state_dict()["2.num_batches_tracked"]) == 16  # every batch's statistics


def test_the_checkpoint_layout_is_the_one_of_0_1() -> None:
    model = MLPClassifier(hidden_sizes=[4], ema_decay=0.9)
    keys = set(model.state_dict())
    assert keys == {"net.1.weight", "net.1.bias", "net.3.weight", "net.3.bias"} | {
        f"ema.{key}" for key in ("net.1.weight", "net.1.bias", "net.3.weight", "net.3.bias")
    }  # no AveragedModel "module." names and no step count: it comes from the trainer
    other = MLPClassifier(hidden_sizes=[4], ema_decay=0.9)
    other.load_state_dict(model.state_dict())
    assert torch.equal(other.weight_average.net[1].weight, model.weight_average.net[1].weight)
    assert not any(p.requires_grad for p in model.weight_average.parameters())


def test_attention_maps_come_from_the_weights_the_model_predicts_with() -> None:
    torch.manual_seed(0)
    model = ViTClassifier(patch_size=7, dim=16, depth=2, heads=2, head_dim=8, mlp_dim=16, ema_decay=0.9)
    with torch.no_grad():  # an average that differs from the trained weights
        for parameter in model.weight_average.net.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    images = torch.randn(3, 1, 28, 28)
    model.eval()
    _, averaged = model.weight_average.net(images, return_attention=True)
    _, live = model.net(images, return_attention=True)
    assert torch.equal(model.attention_maps(images), averaged) and not torch.allclose(averaged, live)
    model.train()  # training mode: the trained weights, as forward uses them
    assert torch.equal(model.attention_maps(images), live)
