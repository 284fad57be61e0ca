"""Speed features: data resident on the device, compile, channels-last, mixed precision, cheap logging, benchmark."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from background import JOBS, benchmark_files, speed_tiny_job
from conftest import CONFIGS
from lightning.pytorch.callbacks import TQDMProgressBar

from mnist_lightning import MLPClassifier, MNISTDataModule
from mnist_lightning.callbacks import PredictionWriter, TrainTimer
from mnist_lightning.cli import MNISTLightningCLI
from mnist_lightning.cli.trainer_setup import PROGRESS_BAR_REFRESH_STEPS
from mnist_lightning.data import EVAL_BATCH_SIZE
from mnist_lightning.models import SpeedrunCNN
from mnist_lightning.models.metrics import TrainingSums


def quiet_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, **kwargs)


def fake_trainer(device: str) -> SimpleNamespace:
    """What the data module reads from a Trainer: its root device and the process's rank."""
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)), global_rank=0, world_size=1)


@pytest.fixture(scope="module")
def datamodule(mnist_dir: Path) -> MNISTDataModule:
    dm = MNISTDataModule(data_dir=str(mnist_dir), batch_size=100, eval_batch_size=100)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize(
    ("on_device", "root", "expected"),
    [
        ("auto", "cuda", "cuda"),
        ("auto", "mps", "mps"),
        ("auto", "cpu", "cpu"),
        (True, "cuda", "cuda"),
        (False, "cuda", "cpu"),
    ],
)
def test_data_follows_the_trainer_to_accelerators(datamodule: MNISTDataModule, on_device, root, expected) -> None:
    datamodule.on_device, datamodule.trainer = on_device, fake_trainer(root)
    try:
        assert datamodule.data_device().type == expected
    finally:
        datamodule.on_device, datamodule.trainer = "auto", None


def test_batches_are_sliced_where_the_splits_live(datamodule: MNISTDataModule) -> None:
    # the meta device stands in for a GPU: a copy there keeps shapes and dtypes, and nothing can come back by accident
    datamodule.on_device, datamodule.trainer = True, fake_trainer("meta")
    try:
        for loader in (datamodule.train_dataloader(), datamodule.val_dataloader(), datamodule.test_dataloader()):
            images, labels = next(iter(loader))
            assert images.device.type == labels.device.type == "meta"
            assert images.shape == (100, 1, 28, 28) and images.dtype == torch.uint8 and labels.shape == (100,)
        assert datamodule.resident_split("train")[0] is datamodule.resident_split("train")[0]  # copied once
        assert datamodule.splits["train"][0].device.type == "cpu"  # the CPU copy stays for the next trainer
        assert len(list(datamodule.train_dataloader())) == 550
    finally:
        datamodule.on_device, datamodule.trainer = "auto", None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_batches_arrive_on_the_gpu_without_a_copy(mnist_dir: Path) -> None:
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen.append(batch[0].device.type)

    dm = MNISTDataModule(data_dir=str(mnist_dir), batch_size=256)
    trainer = L.Trainer(
        accelerator="cuda", devices=1, logger=False, max_steps=3, limit_val_batches=1, callbacks=[Spy()]
    )
    trainer.fit(MLPClassifier(), datamodule=dm)
    assert dm.resident_split("train")[0].device.type == "cuda" and seen == ["cuda"] * 3


def test_train_metrics_cover_one_epoch_and_log_once(datamodule: MNISTDataModule) -> None:
    counts = []

    class Count(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            counts.append(pl_module.train_sums.count)

    trainer = quiet_trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=1, callbacks=[Count()])
    trainer.fit(MLPClassifier(), datamodule=datamodule)
    assert counts == [300, 300]  # reset every epoch, not accumulated across epochs
    metrics = trainer.callback_metrics
    assert 0 <= metrics["train/acc"] <= 1 and torch.isfinite(metrics["train/loss"])


def test_bf16_true_precision_feeds_bfloat16_images(datamodule: MNISTDataModule) -> None:
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen.append(batch[0].dtype)

    L.seed_everything(0)
    model = MLPClassifier(lr=3e-3)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=30, limit_val_batches=5, precision="bf16-true")
    trainer.callbacks.append(Spy())
    trainer.fit(model, datamodule=datamodule)
    assert set(seen) == {torch.bfloat16} and next(model.parameters()).dtype == torch.bfloat16
    assert trainer.callback_metrics["val/acc"] > 0.7
    probs = trainer.predict(model, datamodule=datamodule)[0]
    assert probs.dtype == torch.float32


def test_training_sums_weight_each_batch_by_its_size() -> None:
    sums = TrainingSums()
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    sums.add(torch.tensor(0.5), logits[:2], torch.tensor([0, 0]))  # one of two right
    sums.add(torch.tensor(2.0), logits[2:], torch.tensor([0]))  # one of one right
    assert sums.count == 3 and float(sums.loss) == pytest.approx(0.5 * 2 + 2.0) and int(sums.correct) == 2
    sums.reset()
    assert sums.count == 0 and sums.loss is None


def test_bf16_mixed_precision_trains_and_predicts_float32(datamodule: MNISTDataModule) -> None:
    L.seed_everything(0)
    model = MLPClassifier(lr=3e-3)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=60, limit_val_batches=5, precision="bf16-mixed")
    trainer.fit(model, datamodule=datamodule)
    assert trainer.callback_metrics["val/acc"] > 0.8 and torch.isfinite(trainer.callback_metrics["val/loss"])
    probs = trainer.predict(model, datamodule=datamodule)[0]
    assert probs.dtype == torch.float32 and torch.allclose(probs.sum(dim=1), torch.ones(len(probs)), atol=1e-4)


def test_compile_keeps_checkpoint_keys_clean(datamodule: MNISTDataModule, tmp_path: Path) -> None:
    model = MLPClassifier(compile=True)
    model.configure_model()
    assert model.net._compiled_call_impl is not None  # compiled in place (compilation itself is lazy)
    assert set(model.state_dict()) == set(MLPClassifier().state_dict())  # no "_orig_mod." anywhere
    path = tmp_path / "compiled.ckpt"
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    torch.save({**checkpoint, "pytorch-lightning_version": L.__version__}, path)
    restored = MLPClassifier.load_from_checkpoint(path)
    assert restored.hparams.compile is True
    for name, tensor in model.state_dict().items():
        assert torch.equal(restored.state_dict()[name], tensor)


@pytest.mark.slow
def test_compiled_fit_trains_and_loads_back(datamodule: MNISTDataModule, tmp_path: Path) -> None:
    L.seed_everything(0)
    model = MLPClassifier(compile=True, lr=3e-3)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=50, limit_val_batches=5, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=datamodule)
    assert trainer.callback_metrics["val/acc"] > 0.8
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    restored = MLPClassifier.load_from_checkpoint(path).eval()
    images = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(restored(images), model.eval()(images), atol=1e-5)


def test_channels_last_reaches_weights_and_activations(datamodule: MNISTDataModule) -> None:
    model = SpeedrunCNN(channels_last=True)
    formats = []
    convs = [m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:
        conv.register_forward_hook(
            lambda mod, inp, out: formats.append(
                (
                    inp[0].is_contiguous(memory_format=torch.channels_last),
                    out.is_contiguous(memory_format=torch.channels_last),
                )
            )
        )
    quiet_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0).fit(model, datamodule=datamodule)
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert formats and all(inp and out for inp, out in formats)
    plain = SpeedrunCNN()
    formats.clear()
    plain.net[0].register_forward_hook(lambda mod, inp, out: formats.append(out.is_contiguous()))
    plain(torch.randn(2, 1, 28, 28))
    assert formats == [True]  # without the setting the network stays in the default layout


def test_cli_progress_bar_refreshes_every_n_steps() -> None:
    cli = MNISTLightningCLI(args=["--config", str(CONFIGS / "mlp_128_64.yaml"), "--trainer.logger", "false"], run=False)
    bars = [c for c in cli.trainer.callbacks if isinstance(c, TQDMProgressBar)]
    assert len(bars) == 1 and bars[0].refresh_rate == PROGRESS_BAR_REFRESH_STEPS
    off = MNISTLightningCLI(
        args=["--model", "MLPClassifier", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"],
        run=False,
    )
    assert off.trainer.progress_bar_callback is None


def test_only_predict_carries_the_prediction_writer() -> None:
    # its hooks would run on every training step for nothing; `predict` writing its file is tested in test_cli
    cli = MNISTLightningCLI(args=["--config", str(CONFIGS / "mlp_128_64.yaml"), "--trainer.logger", "false"], run=False)
    assert not any(isinstance(c, PredictionWriter) for c in cli.trainer.callbacks)


def test_the_cli_hides_lightnings_logging_advertisement(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero")
    MNISTLightningCLI(args=["--model", "MLPClassifier", "--trainer.logger", "false"], run=False)
    assert "Tip:" not in caplog.text and "GPU available" in caplog.text  # the other start-up lines stay


def test_speedrun_preset_builds_the_speedrun_network() -> None:
    cli = MNISTLightningCLI(args=["--config", str(CONFIGS / "speedrun.yaml"), "--trainer.logger", "false"], run=False)
    assert isinstance(cli.model, SpeedrunCNN) and cli.model.hparams.scheduler == "onecycle"
    assert cli.datamodule.batch_size == 512 and cli.datamodule.on_device == "auto"
    assert any(isinstance(c, TrainTimer) for c in cli.trainer.callbacks)
    assert cli.model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_benchmark_tiny_mode_writes_its_table(mnist_dir: Path) -> None:
    # `python benchmarks/speed.py --tiny` (no --out), in the background from the session's start
    job = JOBS.wait("speed_tiny", lambda root: speed_tiny_job(root, mnist_dir))
    result = job.result
    assert result.returncode == 0, result.stderr[-3000:]
    (out,) = (Path(p) for p in re.findall(r"^wrote speed.md and speed.json in (.+)$", result.stdout, flags=re.M))
    assert out.parent == job.folder / "tmp" and out.name.startswith("mnist-speed-tiny-")
    # a tiny run never writes into benchmarks/ unless --out asks it to
    assert benchmark_files() == job.before["benchmark_files"]
    report = json.loads((out / "speed.json").read_text())
    table = (out / "speed.md").read_text()
    measured = {m["name"]: m for m in report["models"] if not m["skipped"]}
    assert {"mlp_128_64", "convnet"} <= set(measured)
    for row in measured.values():
        assert row["fit_epoch_s"] > 0 and row["plain_epoch_s"] > 0
        # evaluation at the data module's default batch, and at the training batch it used before
        assert row["eval_batch_size"] == max(row["batch_size"], EVAL_BATCH_SIZE)
        for key in ("fit_inference", "plain_inference", "fit_inference_train_batch", "plain_inference_train_batch"):
            assert row[f"{key}_images_per_s"] > 0
        assert f"| {row['name']} | {row['batch_size']} | " in table and f"| {row['eval_batch_size']} | " in table
        # one epoch each in tiny mode; the plain loop ran one epoch beside fit's and one beside bare Lightning's
        seconds = row["epoch_seconds"]
        assert all(len(seconds[k]) == 1 for k in ("fit", "plain_beside_fit", "bare", "plain_beside_bare"))
        assert row["bare_epoch_s"] == seconds["bare"][0] > 0
        assert row["bare_ratio"] == pytest.approx(row["bare_epoch_s"] / seconds["plain_beside_bare"][0])
        assert row["ratio"] == pytest.approx(seconds["fit"][0] / seconds["plain_beside_fit"][0])
        assert f"| {row['name']} | {row['params']:,} |" in table
    vit = next(m for m in report["models"] if m["name"] == "vit")
    assert not vit["skipped"] or f"vit: skipped: {vit['skipped']}" in result.stdout
    assert len(report["speedrun"]["test_acc"]) == 1 and report["torchvision_loader"]["images"] > 0
    assert "Speedrun" in table and "torchvision DataLoader" in table and "| bare / plain |" in table
    assert "**Evaluation**" in table and "| test speed-up |" in table
    # a few batches support no verdict: neither on the speedrun's target nor on the loaders' rates
    assert "reaches 99.0%" not in table and "misses 99.0%" not in table and "moves images at" not in table
