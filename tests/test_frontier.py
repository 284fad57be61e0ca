"""The frontier features on a few batches of the real MNIST: weight averaging, elastic deformation, the exponential
schedule, and test-time augmentation and checkpoint ensembles in ``test`` and ``predict``."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import re
import sys
from pathlib import Path
from unittest import mock

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS, REPO, run_cli

from mnist_lightning import MLPClassifier, MNISTDataModule
from mnist_lightning.checkpoints import load_classifier
from mnist_lightning.cli import MNISTLightningCLI
from mnist_lightning.data import MEAN, STD, elastic_displacement, load_split, normalize_uint8, random_affine
from mnist_lightning.errors import ConfigError, MNISTLightningError
from mnist_lightning.models.averaging import WeightAverage
from mnist_lightning.models.schedules import LRSchedule

FEW = ("--trainer.max_epochs", "1", "--trainer.limit_train_batches", "30", "--trainer.limit_val_batches", "2",
       "--trainer.enable_progress_bar", "false", "--trainer.logger", "false")  # fmt: skip


def quiet_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, **kwargs)


def cli(*args: str) -> MNISTLightningCLI:
    with mock.patch.object(sys, "argv", ["mnist-lightning"]):  # pytest's own arguments are not the CLI's
        return MNISTLightningCLI(args=list(args))


# --- weight average --------------------------------------------------------------------------------------------------
def test_the_weight_average_moves_by_one_minus_decay_after_its_warm_up() -> None:
    live = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(live, decay=0.99)
    before = average.net[0].weight.clone()
    with torch.no_grad():
        live[0].weight.add_(1.0)
        live[1].running_mean.fill_(2.0)
    live[1].num_batches_tracked.fill_(7)
    average.update(live, step=10_000)  # past the warm-up: weight 1 - 0.99 on the live values
    assert torch.allclose(average.net[0].weight, 0.99 * before + 0.01 * live[0].weight)
    assert torch.allclose(average.net[1].running_mean, torch.full((2,), 0.02))  # buffers are averaged too
    assert int(average.net[1].num_batches_tracked) == 7  # counters are copied
    previous = average.net[0].weight.clone()
    average.update(live, step=0)  # the first step keeps only 1/10 of the (random) start
    assert torch.allclose(average.net[0].weight, 0.1 * previous + 0.9 * live[0].weight)
    assert not any(p.requires_grad for p in average.parameters())


def test_validation_checkpoints_and_test_use_the_averaged_weights(mnist_dir: Path, tmp_path: Path) -> None:
    L.seed_everything(0)
    data = MNISTDataModule(data_dir=str(mnist_dir), batch_size=64, val_size=1000)
    model = MLPClassifier(hidden_sizes=[64], lr=0.003, ema_decay=0.9)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=40, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    live, averaged = model.net.state_dict(), model.weight_average.net.state_dict()
    assert not torch.equal(live["1.weight"], averaged["1.weight"])  # a real average, not a copy
    # the logged val/acc is the accuracy of the averaged weights, not of the trained ones
    images, labels = data.splits["val"]
    inputs = normalize_uint8(images.unsqueeze(1))
    with torch.no_grad():
        ema_acc = (model.weight_average.net(inputs).argmax(1) == labels).float().mean().item()
        live_acc = (model.net(inputs).argmax(1) == labels).float().mean().item()
    assert trainer.callback_metrics["val/acc"].item() == pytest.approx(ema_acc, abs=1e-6)
    assert ema_acc != live_acc and ema_acc > 0.8
    # the checkpoint holds both; whatever loads it (test, serve, export, ensembles) predicts with the average
    path = tmp_path / "ema.ckpt"
    trainer.save_checkpoint(path)
    assert {"ema.net.1.weight", "net.1.weight"} <= set(torch.load(path, weights_only=True)["state_dict"])
    restored = MLPClassifier.load_from_checkpoint(path, weights_only=True).eval()
    with torch.no_grad():
        assert torch.equal(restored(inputs[:50]), model.weight_average.net(inputs[:50]))
    got = quiet_trainer().test(restored, datamodule=data, verbose=False)[0]
    assert got["test/acc"] > 0.8
    # only the trained weights are optimized
    optimized = {id(p) for group in model.configure_optimizers().param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.net.parameters()}


def test_ema_decay_out_of_range_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"model.ema_decay must be between 0 and 1"):
        MLPClassifier(ema_decay=1.0)


def test_a_weight_average_in_half_precision_is_refused_before_training(mnist_dir: Path, tmp_path: Path) -> None:
    data = MNISTDataModule(data_dir=str(mnist_dir))
    model = MLPClassifier(hidden_sizes=[], ema_decay=0.999)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, precision="bf16-true",
                            default_root_dir=tmp_path)  # fmt: skip
    with pytest.raises(ConfigError, match=r"use --trainer\.precision bf16-mixed"):
        trainer.fit(model, datamodule=data)
    assert trainer.global_step == 0


# --- exponential schedule --------------------------------------------------------------------------------------------
def test_the_exponential_schedule_multiplies_the_rate_by_lr_decay_every_epoch(mnist_dir: Path, tmp_path: Path) -> None:
    data = MNISTDataModule(data_dir=str(mnist_dir), batch_size=64)
    model = MLPClassifier(hidden_sizes=[], lr=0.01, scheduler="exponential", lr_decay=0.5, warmup_epochs=1)
    trainer = quiet_trainer(max_epochs=3, limit_train_batches=4, limit_val_batches=0, default_root_dir=tmp_path)
    rates: list[float] = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer.callbacks.append(Record())
    trainer.fit(model, datamodule=data)
    # one epoch of linear warm-up (4 steps), then half the rate per epoch, spread over its steps
    assert rates[:4] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])
    assert rates[4] == pytest.approx(0.01) and rates[8] == pytest.approx(0.005)
    assert rates[6] == pytest.approx(0.01 * 0.5**0.5)
    assert LRSchedule(100, 0, 0.9)(10) == pytest.approx(0.9**10)


def test_an_exponential_run_resumed_with_another_length_is_refused(isolated: Path) -> None:
    args = ["fit", "--config", str(CONFIGS / "linear.yaml"), "--model.scheduler", "exponential", *FEW]
    run_cli(*args)
    result = run_cli(*args, "--trainer.max_epochs", "3", "--ckpt_path", "last", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "exponential schedule was laid out for 30 steps" in result.stderr


# --- elastic deformation ---------------------------------------------------------------------------------------------
def test_the_elastic_field_is_smooth_and_about_a_pixel_with_simards_setting(mnist_dir: Path) -> None:
    images = load_split(mnist_dir, train=True)[0][:256].unsqueeze(1).float().div(255)
    generator = torch.Generator().manual_seed(0)
    field = elastic_displacement(images, alpha=34, sigma=4, generator=generator) * 14  # grid units → pixels (28/2)
    assert 0.5 < field.abs().mean().item() < 2.0
    # smooth: neighbouring pixels move almost together (unsmoothed noise would differ by ~alpha/2 pixels)
    assert (field[:, 1:] - field[:, :-1]).abs().mean().item() < 0.3
    # the same draws without elastic give the plain affine transform; with it, the images change but keep their ink
    plain = random_affine(images, 10, 0.1, (0.9, 1.1), torch.Generator().manual_seed(1))
    same = random_affine(images, 10, 0.1, (0.9, 1.1), torch.Generator().manual_seed(1), elastic_alpha=0.0)
    warped = random_affine(images, 10, 0.1, (0.9, 1.1), torch.Generator().manual_seed(1), elastic_alpha=34)
    assert torch.equal(plain, same) and not torch.allclose(plain, warped)
    assert warped.sum().item() == pytest.approx(plain.sum().item(), rel=0.05)


def test_elastic_deformation_only_touches_training_batches(mnist_dir: Path) -> None:
    data = MNISTDataModule(data_dir=str(mnist_dir), augment=True, elastic_alpha=34, rotation=0, translate=0)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    data.trainer = mock.Mock(training=False, precision_plugin=mock.Mock(convert_input=lambda x: x))
    images, _ = data.on_after_batch_transfer(batch, 0)
    assert torch.equal(images, normalize_uint8(batch[0]))
    data.trainer.training = True
    augmented, _ = data.on_after_batch_transfer(batch, 0)
    assert not torch.allclose(augmented, images)


@pytest.mark.parametrize(("setting", "value"), [("elastic_alpha", -1), ("elastic_sigma", 0), ("elastic_alpha", "x")])
def test_bad_elastic_settings_are_named(setting: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"data.{setting} must be"):
        MNISTDataModule(**{setting: value})


# --- test-time augmentation and ensembles ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> list[Path]:
    """An MLP (with a weight average) and a small CNN, each fitted by the CLI on a few batches: a mixed ensemble."""
    folder = tmp_path_factory.mktemp("members")
    models = {
        "mlp": ["--model", "MLPClassifier", "--model.hidden_sizes", "[32]", "--model.ema_decay", "0.9"],
        "cnn": ["--model", "CNNClassifier", "--model.conv_blocks", "[{channels: 4, kernel_size: 5, pool: 2}]",
                "--model.hidden_sizes", "[]"],
    }  # fmt: skip
    for name, model in models.items():
        cli("fit", *model, "--data.data_dir", str(mnist_dir), "--data.batch_size", "128", *FEW[:2],
            "--trainer.limit_train_batches", "25", *FEW[4:], "--trainer.default_root_dir", str(folder / name),
            "--checkpoint.dirpath", str(folder), "--checkpoint.filename", name,
            "--checkpoint.save_last", "false")  # fmt: skip
    return [folder / "mlp.ckpt", folder / "cnn.ckpt"]


def shift(images: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """Moved by whole pixels with black (normalized) coming in: written apart from the package's own."""
    out = torch.full_like(images, -MEAN / STD)
    h, w = images.shape[-2:]
    src_r, dst_r = (slice(0, h - rows), slice(rows, h)) if rows >= 0 else (slice(-rows, h), slice(0, h + rows))
    src_c, dst_c = (
        (slice(0, w - columns), slice(columns, w)) if columns >= 0 else (slice(-columns, w), slice(0, w + columns))
    )
    out[..., dst_r, dst_c] = images[..., src_r, src_c]
    return out


def expected_probabilities(paths: list[Path], images: torch.Tensor, shifts: list[tuple[int, int]]) -> torch.Tensor:
    models = [load_classifier(p) for p in paths]
    with torch.no_grad():
        total = sum(m(shift(images, r, c)).softmax(1) for m in models for r, c in shifts)
    return total / (len(models) * len(shifts))


FIVE_VIEWS = [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]


def test_test_averages_checkpoints_and_shifted_views(two_checkpoints: list[Path], mnist_dir: Path) -> None:
    mlp, cnn = two_checkpoints
    run = cli("test", "--ckpt_path", str(mlp), "--ensemble", str(cnn), "--tta", "5", "--trainer.enable_progress_bar",
              "false", "--trainer.limit_test_batches", "2", "--data.eval_batch_size", "500")  # fmt: skip
    assert run.trainer.logger is None  # an ensemble's figures are not the training run's
    images, labels = load_split(mnist_dir, train=False)
    probabilities = expected_probabilities([mlp, cnn], normalize_uint8(images[:1000].unsqueeze(1)), FIVE_VIEWS)
    accuracy = (probabilities.argmax(1) == labels[:1000]).float().mean().item()
    nll = F.nll_loss(probabilities.log(), labels[:1000]).item()
    assert run.trainer.callback_metrics["test/acc"].item() == pytest.approx(accuracy, abs=1e-6)
    assert run.trainer.callback_metrics["test/loss"].item() == pytest.approx(nll, rel=1e-4)
    single = cli("test", "--ckpt_path", str(mlp), "--trainer.enable_progress_bar", "false",
                 "--trainer.limit_test_batches", "2", "--trainer.logger", "false")  # fmt: skip
    assert single.trainer.callback_metrics["test/acc"].item() != pytest.approx(accuracy, abs=1e-6)


def test_predict_writes_the_averaged_probabilities(
    two_checkpoints: list[Path], isolated: Path, mnist_dir: Path
) -> None:
    folder = two_checkpoints[0].parent
    # a folder stands for the checkpoints in it; --ckpt_path may be left out
    cli("predict", "--ensemble", str(folder), "--tta", "3", "--predictions.output", str(isolated / "p.csv"),
        "--trainer.enable_progress_bar", "false")  # fmt: skip
    rows = list(csv.DictReader((isolated / "p.csv").open()))
    assert len(rows) == 10_000
    images = normalize_uint8(load_split(mnist_dir, train=False)[0][:40].unsqueeze(1))
    members = sorted(p for p in folder.glob("*.ckpt") if not p.name.startswith("last"))
    assert len(members) == 2
    expected = expected_probabilities(members, images, FIVE_VIEWS[:3])
    got = torch.tensor([[float(row[f"prob_{k}"]) for k in range(10)] for row in rows[:40]])
    assert torch.allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["validate", "--tta", "5"], "the options --ensemble and --tta are for test and predict, not for validate"),
        (["fit", "--ensemble", "{other}"], "the options --ensemble and --tta are for test and predict, not for fit"),
        (["test", "--tta", "0"], "test-time views (--tta) must be a whole number from 1 (off) to 9"),
        (["predict", "--ensemble", "{missing}"], "nothing.ckpt does not exist"),
        (["test", "--ensemble", "{empty}"], "holds no .ckpt files"),
    ],
)
def test_ensemble_mistakes_are_refused_before_any_work(
    two_checkpoints: list[Path], isolated: Path, args: list[str], message: str
) -> None:
    mlp, cnn = two_checkpoints
    (isolated / "empty").mkdir()
    args = [a.format(other=cnn, missing=mlp.parent / "nothing.ckpt", empty=isolated / "empty") for a in args]
    with pytest.raises(MNISTLightningError, match=re.escape(message)):
        cli(args[0], "--ckpt_path", str(mlp), *args[1:], *FEW[4:])


def test_an_ensemble_mistake_on_the_command_line_is_one_line(two_checkpoints: list[Path]) -> None:
    result = run_cli("test", "--ckpt_path", str(two_checkpoints[0]), "--tta", "12", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.strip().splitlines() if "error" in line]
    assert (
        lines == [lines[0]] and "test-time views (--tta) must be a whole number from 1 (off) to 9, got 12" in lines[0]
    )


# --- presets and the results table -----------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["cnn_frontier", "mlp_frontier", "vit_frontier"])
def test_frontier_presets_train_with_their_features(preset: str, isolated: Path) -> None:
    # validation batches of 100 (not the presets' 1,000): the features are what is checked, not the accuracy
    small = ("--trainer.limit_train_batches", "3", "--data.eval_batch_size", "100")
    run = cli("fit", "--config", preset, *FEW[:2], *small, *FEW[4:])
    assert run.model.weight_average is not None and run.datamodule.elastic_alpha > 0
    assert run.trainer.global_step == 3 and run.trainer.checkpoint_callback.best_model_path


def load_results_module():
    spec = importlib.util.spec_from_file_location("results", REPO / "benchmarks" / "results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seed_rows_merge_into_mean_and_spread(tmp_path: Path) -> None:
    results = load_results_module()
    base = {"preset": "cnn_frontier", "model": "CNNClassifier", "parameters": 279_050, "epochs": 18,
            "recipe_epochs": 18, "test_loss": 0.1, "best_val_acc": 99.7, "seconds_per_epoch": 100.0,
            "hardware": "CPU test", "date": "2026-12-02", "source": "target"}  # fmt: skip
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    for seed, acc in ((1, 99.70), (2, 99.74), (3, 99.72)):  # as three processes would, one seed each
        results.save_row(out, md, "cnn_frontier", {**base, "seed": seed, "test_acc": acc})
    row = json.loads(out.read_text())["cnn_frontier"]
    assert row["test_acc"] == pytest.approx(99.72) and row["test_acc_std"] == pytest.approx(0.02)
    assert sorted(row["runs"]) == ["1", "2", "3"]
    assert "| 99.72 ± 0.02% (3 seeds: 1, 2, 3) |" in md.read_text()
    assert "`python benchmarks/results.py --presets cnn_frontier --seeds 1 2 3 --keep" in md.read_text()
    assert "--parallel 3`" in md.read_text()
    ensemble = {"ensemble": ["a", "b", "c"], "parameters": 837_150, "test_loss": 0.02, "test_seconds": 30.0,
                "hardware": "CPU test", "date": "2026-12-02"}  # fmt: skip
    # an older row whose views were given by hand (and tested at that count): shown, recommending nothing
    hand = {**ensemble, "views": 9, "test_acc": 99.83, "command": "python benchmarks/results.py --ensemble x --tta 9"}
    results.save_row(out, md, "ensemble: cnn_frontier ×3; 9 views", hand)
    assert "| cnn_frontier ×3 | 9, given by hand (not chosen on validation) | — | 837,150 | 99.83% |" in md.read_text()
    assert "`python benchmarks/results.py --ensemble x` |" in md.read_text()  # today's command replaces it
    scores = {"1": {"acc": 99.7, "nll": 0.02}, "5": {"acc": 99.76, "nll": 0.019}}
    chosen = {**ensemble, "views": 5, "views_chosen_on": "validation", "val_images": 5000, "val_by_views": scores,
              "test_acc": 99.81, "command": "python benchmarks/results.py --ensemble x"}  # fmt: skip
    results.save_row(out, md, "ensemble: cnn_frontier ×3; views chosen on validation", chosen)
    table = md.read_text()
    assert "| cnn_frontier ×3 | 5 of 1–5, chosen on validation | 99.76% (99.70% with 1 view; 5,000 images) |" in table
    assert "given by hand" not in table.split("| command |")[1]  # the same members' hand-picked row is replaced
    assert math.isclose(json.loads(out.read_text())["cnn_frontier"]["test_acc"], 99.72)
