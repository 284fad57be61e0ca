"""Reliability: damaged data, bad settings and checkpoints get one line; interrupted runs resume exactly;
seeded runs repeat; a diverging run stops; nothing is ever half-written."""

from __future__ import annotations

import errno
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from conftest import MNIST_DIR, run_console_script
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.loggers import Logger

from mnist_lightning import MLPClassifier, MNISTDataModule
from mnist_lightning.callbacks import (
    AtomicCheckpointIO,
    FiniteLossGuard,
    NonFiniteLossError,
    PredictionWriter,
    ResumableCheckpoint,
)
from mnist_lightning.checkpoints import find_last
from mnist_lightning.cli import MNISTLightningCLI, config_dir
from mnist_lightning.cli.main import main
from mnist_lightning.cli.presets import resolve_preset_args
from mnist_lightning.data import RAW_FILES, MNISTDataError, ensure_mnist, raw_dir, verify_raw_files
from mnist_lightning.errors import ConfigError, OutputPathError
from mnist_lightning.outputs import replace_atomically, write_atomically

TINY_MODEL = '''
from torch import nn
from mnist_lightning.models.base import MNISTClassifier


class TinyClassifier(MNISTClassifier):
    """A different architecture: one linear layer on 7x7 pooled images."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.net = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(49, 10))
'''


# --- a real checkpoint written by the CLI, shared by the checkpoint cases -----------------------------------------


@pytest.fixture(scope="module")
def mlp_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.ckpt`` of a 3-step ``fit`` of the MLP [128, 64] through the CLI (in-process)."""
    root = tmp_path_factory.mktemp("mlp_run")
    MNISTLightningCLI(
        args=[
            "fit",
            "--config",
            "mlp_128_64",
            "--data.data_dir",
            str(MNIST_DIR),
            "--trainer.default_root_dir",
            str(root),
            "--trainer.logger",
            "false",
            "--trainer.max_steps",
            "3",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
        ]
    )
    return find_last(root)  # <root>/mnist-lightning/<run id>/checkpoints/last.ckpt


def damaged_copy(root: Path, name: str, content: bytes | None) -> Path:
    """An MNIST folder of links to the real files, with ``name`` replaced by ``content`` (None: left out)."""
    folder = raw_dir(root)
    folder.mkdir(parents=True)
    for other in RAW_FILES:
        if other != name:
            (folder / other).symlink_to(raw_dir(MNIST_DIR) / other)
    if content is not None:
        (folder / name).write_bytes(content)
    return root


def real(name: str) -> bytes:
    return (raw_dir(MNIST_DIR) / name).read_bytes()


def random_bytes(name: str) -> bytes:
    return (
        torch.randint(0, 256, (len(real(name)),), generator=torch.Generator().manual_seed(0)).byte().numpy().tobytes()
    )


def flipped_byte(name: str) -> bytes:
    data = bytearray(real(name))
    data[len(data) // 2] ^= 0xFF
    return bytes(data)


def make_cases() -> list:
    """(id, files to set up, command line, what the one error line must say)."""
    cases = [
        ("unknown-model", None, ["fit", "--model", "NoSuchNet"], "unknown model 'NoSuchNet'"),
        ("lr-zero", None, ["fit", "--model", "MLPClassifier", "--model.lr", "0"], "lr must be positive"),
        ("lr-negative", None, ["fit", "--model", "MLPClassifier", "--model.lr", "-0.1"], "lr must be positive"),
        ("batch-zero", None, ["fit", "--model", "MLPClassifier", "--data.batch_size", "0"], "batch_size must be"),
        ("batch-negative", None, ["fit", "--model", "MLPClassifier", "--data.batch_size", "-8"], "batch_size must"),
        ("val-all", None, ["fit", "--model", "MLPClassifier", "--data.val_size", "60000"], "less than the 60,000"),
        ("val-fraction", None, ["fit", "--model", "MLPClassifier", "--data.val_size", "1.5"], "val_size=1.5"),
        # any ValueError a model raises while it is built is one line (torch's own, here)
        ("model-value-error", None, ["fit", "--model", "MLPClassifier", "--model.dropout", "1.5"], "dropout"),
        ("preset-missing", None, ["fit", "--config", "no_such_preset"], "config file no_such_preset does not exist"),
        ("preset-file-missing", None, ["fit", "--config", "nope/x.yaml"], "config file nope/x.yaml does not exist"),
        ("data-missing", "missing", ["fit", "--model", "MLPClassifier"], "MNIST files missing in"),
        ("data-3-of-4", "partial", ["fit", "--model", "MLPClassifier"], "(3 of 4 present): t10k-labels-idx1-ubyte"),
        ("data-truncated", "truncated", ["fit", "--model", "MLPClassifier"], "train-images-idx3-ubyte is 1,000,000"),
        ("data-labels-as-images", "swapped", ["fit", "--model", "MLPClassifier"], "holds labels, expected images"),
        ("data-random-bytes", "random", ["fit", "--model", "MLPClassifier"], "wrong header (not an MNIST idx file)"),
        ("data-corrupt", "corrupt", ["fit", "--model", "MLPClassifier"], "t10k-images-idx3-ubyte fails its MD5"),
        ("ckpt-missing", None, ["test", "--ckpt_path", "gone.ckpt"], "checkpoint gone.ckpt does not exist"),
        ("ckpt-truncated", "ckpt", ["test", "--ckpt_path", "truncated.ckpt"], "truncated or not a Lightning"),
        ("ckpt-not-a-checkpoint", "ckpt", ["predict", "--ckpt_path", "notes.ckpt"], "is a text file (it starts"),
        ("ckpt-no-state-dict", "ckpt", ["validate", "--ckpt_path", "tensors.ckpt"], "is not a Lightning checkpoint"),
        ("ckpt-last-none", None, ["test", "--ckpt_path", "last"], "no last.ckpt under runs"),
        (
            "ckpt-other-sizes",
            "ckpt",
            ["test", "--ckpt_path", "mlp.ckpt", "--model.hidden_sizes", "[32]"],
            "holds MLPClassifier(hidden_sizes=[128, 64]), but the model given is MLPClassifier(hidden_sizes=[32])",
        ),
        (
            "ckpt-other-class",
            "ckpt",
            ["test", "--ckpt_path", "mlp.ckpt", "--model", "reliability_models.TinyClassifier"],
            "holds a MLPClassifier, but the model given is a TinyClassifier",
        ),
        (
            "ckpt-other-sizes-fit",
            "ckpt",
            ["fit", "--ckpt_path", "mlp.ckpt", "--model", "MLPClassifier", "--model.hidden_sizes", "[64]"],
            "but the model given is MLPClassifier(hidden_sizes=[64])",
        ),
    ]
    if hasattr(__import__("mnist_lightning.models").models, "ViTClassifier"):  # issue 3's ViT, once merged
        cases.append(
            (
                "vit-patch",
                None,
                ["fit", "--model", "ViTClassifier", "--model.patch_size", "5"],
                "does not divide the 28",
            )
        )
    return cases


CASES = make_cases()
# run through the real console script in the fast suite: one of each kind; all of them with -m slow
CONSOLE_FAST = {"unknown-model", "data-3-of-4", "ckpt-other-sizes"}


def set_up(kind: str | None, folder: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Lay out the files of case ``kind`` in ``folder``; the extra arguments the case needs."""
    data = folder / "data"
    files = {
        "missing": ("t10k-labels-idx1-ubyte", None),  # with download off, below: nothing at all
        "partial": ("t10k-labels-idx1-ubyte", None),
        "truncated": ("train-images-idx3-ubyte", real("train-images-idx3-ubyte")[:1_000_000]),
        "swapped": ("train-images-idx3-ubyte", real("train-labels-idx1-ubyte")),
        "random": ("t10k-images-idx3-ubyte", random_bytes("t10k-images-idx3-ubyte")),
        "corrupt": ("t10k-images-idx3-ubyte", flipped_byte("t10k-images-idx3-ubyte")),
    }
    if kind == "missing":
        data.mkdir()
    elif kind in files:
        damaged_copy(data, *files[kind])
    if kind == "ckpt":
        shutil.copy(checkpoint, folder / "mlp.ckpt")
        (folder / "truncated.ckpt").write_bytes(checkpoint.read_bytes()[:50_000])
        (folder / "notes.ckpt").write_text("these are not the weights you are looking for\n")
        torch.save({"weights": torch.ones(3)}, folder / "tensors.ckpt")
        (folder / "reliability_models.py").write_text(TINY_MODEL)
        monkeypatch.syspath_prepend(str(folder))
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))
    # damaged data must not send the run to the network
    return ["--data.data_dir", str(data), "--data.download", "false"] if kind in files else []


def assert_one_clear_line(stderr: str, expected: str, folder: Path) -> None:
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, stderr[-3000:]
    assert errors[0].startswith("mnist-lightning: error: ") and expected in errors[0], errors[0]
    # nothing half-written: no checkpoint, prediction or staging file anywhere
    leftovers = [p for p in folder.rglob("*") if p.suffix in (".ckpt", ".csv", ".partial", ".tmp") and p.is_file()]
    leftovers = [p for p in leftovers if p.parent != folder]  # the test's own inputs lie at the top
    assert not leftovers, leftovers


@pytest.mark.parametrize(("case", "kind", "args", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_in_process(
    case: str,
    kind: str | None,
    args: list[str],
    expected: str,
    isolated: Path,
    mlp_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    extra = set_up(kind, isolated, mlp_checkpoint, monkeypatch)
    monkeypatch.setattr(sys, "argv", ["mnist-lightning"])
    with pytest.raises(SystemExit) as exited:
        main([*args, *extra, "--trainer.logger", "false"])
    assert exited.value.code not in (0, None)
    assert_one_clear_line(capfd.readouterr().err, expected, isolated)


@pytest.mark.parametrize(
    ("case", "kind", "args", "expected"),
    [pytest.param(*c, marks=() if c[0] in CONSOLE_FAST else pytest.mark.slow, id=c[0]) for c in CASES],
)
def test_bad_input_through_the_console_script(
    case: str,
    kind: str | None,
    args: list[str],
    expected: str,
    isolated: Path,
    mlp_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    extra = set_up(kind, isolated, mlp_checkpoint, monkeypatch)
    result = run_console_script(*args, *extra, check=False)
    assert result.returncode != 0
    assert_one_clear_line(result.stderr, expected, isolated)


def test_debug_flag_gives_the_traceback(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNIST_LIGHTNING_DEBUG", "1")
    with pytest.raises(ValueError, match="lr must be positive"):
        main(["fit", "--model", "MLPClassifier", "--model.lr", "0", "--trainer.logger", "false"])


# --- data integrity ----------------------------------------------------------------------------------------------


def test_train_and_test_files_mixed_up_are_named(tmp_path: Path) -> None:
    damaged_copy(tmp_path, "t10k-labels-idx1-ubyte", real("train-labels-idx1-ubyte"))
    with pytest.raises(MNISTDataError, match=r"t10k-labels-idx1-ubyte holds 60,000 items, expected 10,000"):
        verify_raw_files(tmp_path)


def broken_download(url: str, download_root: str, filename: str, md5: str | None = None, **kwargs) -> None:
    """Stands in for torchvision's download: half of the first file arrives, then the connection drops."""
    Path(download_root).mkdir(parents=True, exist_ok=True)
    (Path(download_root) / filename.removesuffix(".gz")).write_bytes(real(filename.removesuffix(".gz"))[:30_000])
    raise urllib.error.URLError("connection reset by peer")


def offline_download(url: str, download_root: str, filename: str, md5: str | None = None, **kwargs) -> None:
    """Stands in for torchvision's download with the real, uncompressed files (no network here)."""
    Path(download_root).mkdir(parents=True, exist_ok=True)
    name = filename.removesuffix(".gz")
    shutil.copy(raw_dir(MNIST_DIR) / name, Path(download_root) / name)


def test_a_broken_download_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.mnist

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", broken_download)
    with pytest.raises(MNISTDataError, match="download failed"):
        ensure_mnist(tmp_path / "data")
    assert [p for p in (tmp_path / "data").rglob("*") if p.is_file()] == []
    # the next run does not take a leftover for data
    with pytest.raises(MNISTDataError, match="MNIST files missing"):
        ensure_mnist(tmp_path / "data", download_if_missing=False)


def test_a_damaged_download_is_not_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.mnist

    def corrupting_download(url: str, download_root: str, filename: str, **kwargs) -> None:
        offline_download(url, download_root, filename)
        if filename.startswith("t10k-images"):
            (Path(download_root) / "t10k-images-idx3-ubyte").write_bytes(flipped_byte("t10k-images-idx3-ubyte"))

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", corrupting_download)
    with pytest.raises(MNISTDataError, match=r"download is damaged, nothing was kept.*t10k-images.*MD5"):
        ensure_mnist(tmp_path / "data")
    assert [p for p in (tmp_path / "data").rglob("*") if p.is_file()] == []


def test_a_good_download_is_moved_into_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.mnist

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline_download)
    damaged_copy(tmp_path / "data", "train-labels-idx1-ubyte", None)  # 3 of 4 there: the fourth is fetched
    ensure_mnist(tmp_path / "data")
    verify_raw_files(tmp_path / "data")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["MNIST"]


# --- nothing half-written ----------------------------------------------------------------------------------------


def half_then_full_disk(path: Path) -> None:
    """A write that stores part of the file and then fails like a full disk."""
    path.write_text("index,prediction\n" * 10)
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_write_that_fails_midway_leaves_no_file(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputPathError, match=r"predictions\.csv \(no space left on device\)"):
        replace_atomically(tmp_path / "out" / "predictions.csv", half_then_full_disk)
    assert list((tmp_path / "out").iterdir()) == []


def test_an_old_file_survives_a_failed_rewrite(tmp_path: Path) -> None:
    target = tmp_path / "run" / "config.yaml"
    write_atomically(target, "old: 1\n")
    with pytest.raises(OutputPathError):
        replace_atomically(target, half_then_full_disk)
    assert target.read_text() == "old: 1\n" and [p.name for p in target.parent.iterdir()] == ["config.yaml"]


def test_every_writer_goes_through_write_atomically(monkeypatch: pytest.MonkeyPatch) -> None:
    import inspect

    import mnist_lightning.tracking as tracking

    assert "write_atomically(" in inspect.getsource(PredictionWriter.write_on_epoch_end)
    assert "write_atomically(" in inspect.getsource(tracking.SaveConfigToRun.setup)
    assert ".save(" not in inspect.getsource(tracking.SaveConfigToRun.setup)


def quiet_trainer(root: Path, *callbacks: L.Callback, **kwargs) -> L.Trainer:
    options = {"max_epochs": 2, "limit_train_batches": 30, "limit_val_batches": 3, "deterministic": True}
    options |= {"logger": False} | kwargs
    return L.Trainer(
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=list(callbacks),
        plugins=[AtomicCheckpointIO()],
        **options,
    )


def resumable_checkpoint(root: Path, every: int = 7) -> ResumableCheckpoint:
    return ResumableCheckpoint(
        dirpath=root / "checkpoints", monitor="val/acc", mode="max", save_last=True, last_every_n_train_steps=every
    )


def test_a_checkpoint_save_that_fails_keeps_the_previous_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    L.seed_everything(0)
    checkpoint = resumable_checkpoint(tmp_path, every=5)
    trainer = quiet_trainer(tmp_path, checkpoint, max_epochs=1, limit_train_batches=5)
    trainer.fit(MLPClassifier(hidden_sizes=[16]), datamodule=MNISTDataModule(batch_size=64))
    last = tmp_path / "checkpoints" / "last.ckpt"
    before = last.read_bytes()

    def dies_while_writing(self, checkpoint: dict, path: str, storage_options=None) -> None:
        Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # killed in the middle of the write

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", dies_while_writing)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(last)
    assert last.read_bytes() == before
    assert sorted(p.name for p in last.parent.iterdir() if p.name.startswith(".")) == []


# --- interrupted training -----------------------------------------------------------------------------------------


class Interrupt(L.Callback):
    """Interrupts ``fit`` after optimizer step ``at``: SIGTERM to itself, or a SIGKILL stand-in that keeps the
    ``last.ckpt`` present on disk at that moment (what a killed process leaves) and stops without saving."""

    def __init__(self, at: int, how: str) -> None:
        self.at, self.how = at, how

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step != self.at:
            return
        if self.how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            return
        last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        shutil.copy(last, last.with_name("at_kill.ckpt"))
        raise RuntimeError("killed")


class MetricsRecorder(Logger):
    """Keeps every metrics dict Lightning logs, in memory."""

    name, version = "recorder", 0

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[dict[str, float]] = []

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.logged.append(dict(metrics))

    def train_metrics_per_epoch(self) -> dict[int, tuple[float, float]]:
        return {int(m["epoch"]): (m["train/loss"], m["train/acc"]) for m in self.logged if "train/loss" in m}


def fit_mlp(
    root: Path, *callbacks: L.Callback, ckpt_path: str | None = None, logger: Logger | bool = False
) -> tuple[L.Trainer, MLPClassifier]:
    L.seed_everything(1)
    model = MLPClassifier(hidden_sizes=[32])
    trainer = quiet_trainer(root, resumable_checkpoint(root), *callbacks, logger=logger)
    datamodule = MNISTDataModule(data_dir=str(MNIST_DIR), batch_size=64)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    return trainer, model


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[L.Trainer, MLPClassifier, MetricsRecorder]:
    recorder = MetricsRecorder()
    return (*fit_mlp(tmp_path_factory.mktemp("whole"), logger=recorder), recorder)


@pytest.mark.parametrize(("how", "at"), [("sigterm", 40), ("sigterm", 30), ("sigkill", 40), ("sigkill", 31)])
def test_interrupted_fit_resumes_to_the_same_weights(
    tmp_path: Path, how: str, at: int, uninterrupted: tuple[L.Trainer, MLPClassifier, MetricsRecorder]
) -> None:
    """Steps 30/31 are the end of epoch 0 (30 batches); 40 is the middle of epoch 1. Periodic saves every 7 steps."""
    whole, whole_model, whole_metrics = uninterrupted
    root = tmp_path / how
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    with pytest.raises((SIGTERMException, RuntimeError)):
        fit_mlp(root, Interrupt(at, how))
    saved = root / "checkpoints" / ("last.ckpt" if how == "sigterm" else "at_kill.ckpt")
    state = torch.load(saved, weights_only=True)
    assert state["global_step"] == at if how == "sigterm" else state["global_step"] < at
    resumed_metrics = MetricsRecorder()
    resumed, resumed_model = fit_mlp(root, ckpt_path=str(saved), logger=resumed_metrics)
    assert (resumed.current_epoch, resumed.global_step) == (whole.current_epoch, whole.global_step) == (2, 60)
    for (name, a), b in zip(whole_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.callback_metrics["val/acc"] == whole.callback_metrics["val/acc"]
    # the epoch it resumed in logs the mean over all of its batches, those before the interruption included
    # (killed at step 31, the newest checkpoint is the one written after epoch 0's validation: epoch 1 starts afresh)
    first_epoch = state["epoch"] + (1 if (how, at) == ("sigkill", 31) else 0)
    per_epoch = resumed_metrics.train_metrics_per_epoch()
    assert per_epoch == {e: v for e, v in whole_metrics.train_metrics_per_epoch().items() if e >= first_epoch}


def test_resuming_after_an_epochs_last_batch_from_a_checkpoint_without_sums_logs_no_nan(tmp_path: Path) -> None:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    with pytest.raises(SIGTERMException):
        fit_mlp(tmp_path, Interrupt(30, "sigterm"))  # saved after epoch 0's last batch, before its end
    saved = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(saved, weights_only=True)
    del state["train_sums"]  # as written before the checkpoint held them
    torch.save(state, saved)
    recorder = MetricsRecorder()
    fit_mlp(tmp_path, ckpt_path=str(saved), logger=recorder)
    per_epoch = recorder.train_metrics_per_epoch()
    # epoch 0 trains no batch in the resumed run: nothing is known of it, so nothing is logged (not NaN)
    assert list(per_epoch) == [1] and all(math.isfinite(v) for v in per_epoch[1])


def test_last_resolves_to_the_newest_run(tmp_path: Path) -> None:
    assert find_last(tmp_path) is None
    old = tmp_path / "mnist-lightning" / "run1" / "checkpoints" / "last.ckpt"
    new = tmp_path / "mnist-lightning" / "run2" / "checkpoints" / "last.ckpt"
    plain = tmp_path / "checkpoints" / "last.ckpt"
    for i, path in enumerate((old, plain, new)):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    (tmp_path / "mnist-lightning" / "run2" / "checkpoints" / "best-epoch01.ckpt").write_bytes(b"x")
    assert find_last(tmp_path) == new
    os.utime(plain, (2_000_000, 2_000_000))
    assert find_last(tmp_path) == plain


def test_preset_names_resolve_to_configs() -> None:
    assert resolve_preset_args(["fit", "--config", "mlp_128_64"]) == [
        "fit",
        "--config",
        str(config_dir() / "mlp_128_64.yaml"),
    ]
    assert resolve_preset_args(["fit", "--config=linear.yaml"]) == ["fit", f"--config={config_dir() / 'linear.yaml'}"]
    with pytest.raises(ConfigError, match="config file mlp_9 does not exist") as info:
        resolve_preset_args(["fit", "--config", "mlp_9"])
    listed = str(info.value).split("preset: ")[1].split(", ")
    assert {"linear", "mlp_128_64", "convnet", "vit"} <= set(listed) and not {"defaults", "sweep"} & set(listed)


# --- no NaN goes unnoticed -----------------------------------------------------------------------------------------


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer: L.Trainer, module, outputs, batch, batch_idx: int) -> None:
        self.losses.append((trainer.global_step, outputs["loss"].item()))


def test_a_diverging_run_stops_at_the_step_the_loss_went_nan(tmp_path: Path) -> None:
    def diverge(*callbacks: L.Callback) -> L.Trainer:
        L.seed_everything(0)
        trainer = quiet_trainer(tmp_path, *callbacks, max_epochs=1, limit_train_batches=20, limit_val_batches=0)
        trainer.fit(MLPClassifier(optimizer="sgd", lr=1e6), datamodule=MNISTDataModule(batch_size=64))
        return trainer

    recorder = LossRecorder()
    diverge(recorder)  # without the guard it trains on, silently
    first_bad = next(step for step, loss in recorder.losses if not torch.isfinite(torch.tensor(loss)))
    assert len(recorder.losses) == 20
    guarded = LossRecorder()
    with pytest.raises(NonFiniteLossError, match=rf"training loss became (nan|inf) at step {first_bad} \(epoch 0"):
        diverge(FiniteLossGuard(), guarded)
    assert len(guarded.losses) < 20


def test_losses_collected_on_an_accelerator_are_checked_together_and_name_the_first_bad_step() -> None:
    guard = FiniteLossGuard(check_every_n_steps=4)
    trainer = SimpleNamespace(lightning_module=SimpleNamespace(hparams=SimpleNamespace(lr=0.5)))
    guard.losses = [torch.tensor(v) for v in (0.7, 0.6, float("inf"), float("nan"))]
    guard.where = [(10, 1, 3), (11, 1, 4), (12, 1, 5), (13, 1, 6)]
    with pytest.raises(NonFiniteLossError, match=r"became inf at step 12 \(epoch 1, batch 5\).*model.lr=0.5"):
        guard.check(trainer)
    assert guard.losses == [] and guard.where == []
    guard.losses, guard.where = [torch.tensor(0.5)], [(14, 1, 7)]
    guard.check(trainer)  # finite: nothing happens and the next steps start a new collection
    assert guard.losses == []


@pytest.mark.slow
def test_a_diverging_run_through_the_console_script(isolated: Path) -> None:
    result = run_console_script(
        "fit",
        "--model",
        "MLPClassifier",
        "--model.optimizer",
        "sgd",
        "--model.lr",
        "1e6",
        "--trainer.limit_train_batches",
        "40",
        "--trainer.logger",
        "false",
        check=False,
    )
    assert result.returncode == 1
    assert_one_clear_line(result.stderr, "training loss became nan at step", isolated)
    assert "lower the learning rate (model.lr=1e+06)" in result.stderr


# --- repeatability --------------------------------------------------------------------------------------------------


def test_two_seeded_deterministic_runs_give_identical_metrics(isolated: Path) -> None:
    def run(name: str) -> dict[str, float]:
        cli = MNISTLightningCLI(
            args=[
                "fit",
                "--config",
                "mlp_128_64",
                "--trainer.deterministic",
                "true",
                "--trainer.accelerator",
                "cpu",
                "--trainer.max_epochs",
                "2",
                "--trainer.limit_train_batches",
                "40",
                "--trainer.limit_val_batches",
                "10",
                "--trainer.logger",
                "false",
                "--trainer.default_root_dir",
                name,
                "--trainer.enable_progress_bar",
                "false",
                "--data.augment",
                "true",
            ]
        )
        return {k: v.item() for k, v in cli.trainer.callback_metrics.items()}

    first, second = run("a"), run("b")
    assert first["val/acc"] == second["val/acc"] and first["val/loss"] == second["val/loss"]
    assert first == second
    assert first["val/acc"] > 0.5  # it did train


# --- the real console script, killed and resumed (slow: five full processes) ---------------------------------------

RESUME_ARGS = [
    "fit",
    "--config",
    "mlp_128_64",
    "--trainer.max_epochs",
    "2",
    "--trainer.limit_train_batches",
    "300",
    "--trainer.limit_val_batches",
    "20",
    "--checkpoint.last_every_n_train_steps",
    "10",
    "--trainer.logger",
    "false",
    "--trainer.enable_progress_bar",
    "false",
]


def final_state(root: Path) -> tuple[int, int, float, dict[str, torch.Tensor]]:
    checkpoint = torch.load(find_last(root / "runs"), weights_only=True)
    (best,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("ResumableCheckpoint")]
    return checkpoint["epoch"], checkpoint["global_step"], float(best["current_score"]), checkpoint["state_dict"]


def start_and_interrupt(folder: Path, how: int, min_step: int) -> int:
    """Start ``fit`` in ``folder``, send ``how`` once a periodic last.ckpt of step >= min_step exists; its step."""
    folder.mkdir()
    exe = Path(sys.executable).with_name("mnist-lightning")
    process = subprocess.Popen([str(exe), *RESUME_ARGS], cwd=folder, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        last = find_last(folder / "runs")  # runs/mnist-lightning/<run id>/checkpoints/last.ckpt
        if last is not None and torch.load(last, weights_only=True)["global_step"] >= min_step:
            process.send_signal(how)
            break
        time.sleep(0.02)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + how if how == signal.SIGTERM else -how, stderr[-3000:]
    return torch.load(find_last(folder / "runs"), weights_only=True)["global_step"]


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_console_fit_killed_mid_epoch_resumes_like_an_uninterrupted_run(isolated: Path, how: int) -> None:
    (isolated / "whole").mkdir()
    subprocess.run(
        [str(Path(sys.executable).with_name("mnist-lightning")), *RESUME_ARGS],
        cwd=isolated / "whole",
        check=True,
        capture_output=True,
    )
    epoch, step, val_acc, weights = final_state(isolated / "whole")
    assert (epoch, step) == (1, 600)

    saved_step = start_and_interrupt(isolated / "cut", how, min_step=320)
    assert saved_step % 300 > 0, "the interruption must land in the middle of an epoch"
    os.chdir(isolated / "cut")
    resumed = run_console_script(*RESUME_ARGS, "--ckpt_path", "last")
    (run_dir,) = (isolated / "cut" / "runs" / "mnist-lightning").iterdir()  # the resumed run goes on in its folder
    last = find_last(run_dir).relative_to(isolated / "cut")
    assert f"Restoring states from the checkpoint path at {last}" in resumed.stderr
    r_epoch, r_step, r_val_acc, r_weights = final_state(isolated / "cut")
    assert (r_epoch, r_step) == (epoch, step)
    assert abs(r_val_acc - val_acc) <= 0.003
    assert all(torch.equal(weights[k], r_weights[k]) for k in weights)
