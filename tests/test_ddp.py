"""Lightning's DDP through the console script: 2 CPU processes (gloo), one epoch, then DDP and 1-process tests.

One fit covers the whole issue: every process trains on its own shard, the shards cover the training split
exactly once, validation and test metrics are those of the whole split, and only rank 0 writes a W&B run and
checkpoints.
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, metric, run_cli, run_console_script
from digit_helpers import python_path
from lightning.pytorch.strategies import DDPStrategy
from wandb_offline import read_run

from mnist_lightning import MLPClassifier, MNISTDataModule
from mnist_lightning.cli import MNISTLightningCLI
from mnist_lightning.cli.main import main
from mnist_lightning.data import normalize

TWO_CPU_PROCESSES = ("--config", str(CONFIGS / "ddp.yaml"), "--trainer.devices", "2", "--trainer.accelerator", "cpu")
TIMEOUT = 300  # seconds; a stuck rank must fail the test, never hang it


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def run_ddp(monkeypatch: pytest.MonkeyPatch, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the console script with 2 DDP processes on a free port (a new process: Lightning starts the second rank
    by running the first one's command line again)."""
    monkeypatch.setenv("MASTER_PORT", free_port())
    result = run_console_script(*args, *TWO_CPU_PROCESSES, "--trainer.enable_progress_bar", "false", timeout=TIMEOUT)
    assert "MEMBER: 2/2" in result.stdout + result.stderr, "the second process did not start"
    return result


def test_ddp_fit_shards_the_epoch_and_evaluates_whole_splits(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the subprocesses import the recording callback from tests/
    monkeypatch.setenv("PYTHONPATH", python_path())
    fit_args = ("fit", "--config", str(CONFIGS / "mlp_128_64.yaml"), "--trainer.max_epochs", "1")
    # 512 per process: 53 full global batches of 1,024 and a last one of 728 split 364/364
    fit_args += ("--data.batch_size", "512", "--trainer.callbacks+=sample_recorder.SeenSampleRecorder")
    fit_args += ("--trainer.callbacks.folder", "seen", "--trainer.enable_model_summary", "false")
    fit = run_ddp(monkeypatch, *fit_args)

    # each rank trained on its own shard; together exactly the training split, once
    records = {path.name: json.loads(path.read_text()) for path in (isolated / "seen").iterdir()}
    assert sorted(records) == ["rank0-epoch0.json", "rank1-epoch0.json"]
    rank0, rank1 = records["rank0-epoch0.json"], records["rank1-epoch0.json"]
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["split_size"] == 55_000
    assert len(rank0["batch_sizes"]) == len(rank1["batch_sizes"]) == 54
    seen = rank0["positions"] + rank1["positions"]
    assert len(seen) == len(set(seen)) == 55_000
    assert set(seen) == set(range(55_000))
    assert not set(rank0["positions"]) & set(rank1["positions"])

    # one W&B run, one run folder, one set of checkpoints; rank 1 printed nothing about W&B
    (wandb_dir,) = (isolated / "runs" / "wandb").glob("*run-*")
    (run_dir,) = (isolated / "runs" / "mnist-lightning").iterdir()
    assert [p.relative_to(run_dir).as_posix() for p in (isolated / "runs").rglob("last.ckpt")] == [
        "checkpoints/last.ckpt"
    ]
    (best,) = (isolated / "runs").rglob("best-*.ckpt")
    assert (run_dir / "config.yaml").is_file()
    assert fit.stderr.count("W&B: offline run saved") == 1
    run = read_run(wandb_dir)
    assert run.run_id == run_dir.name
    assert run.config["trainer"]["strategy"] == "ddp" and str(run.config["trainer"]["devices"]) == "2"
    val_acc, val_acc_best = run.metric("val/acc"), run.metric("val/acc_best")
    assert len(val_acc) == 1 and val_acc_best == val_acc

    # validation metrics are those of the whole 5,000-image split, not of one rank's half
    model = MLPClassifier.load_from_checkpoint(best, map_location="cpu").eval()
    data = MNISTDataModule(val_size=5000, split_seed=42)
    data.setup()
    images, labels = data.splits["val"]
    with torch.no_grad():
        expected_val_acc = (model(normalize(images.unsqueeze(1).float() / 255)).argmax(1) == labels).float().mean()
    assert abs(val_acc[0] - expected_val_acc.item()) < 1e-6
    assert f"val_acc{expected_val_acc.item():.4f}" in best.name

    # test/acc: 2 processes, then one process, of the same checkpoint
    last = run_dir / "checkpoints" / "last.ckpt"
    ddp_test = run_ddp(monkeypatch, "test", "--ckpt_path", str(last), "--trainer.logger", "false").stdout
    single_test = run_cli("test", "--ckpt_path", str(last), "--trainer.logger", "false").stdout
    assert round(metric(ddp_test, "test/acc"), 4) == round(metric(single_test, "test/acc"), 4) > 0.9
    assert len(list((isolated / "runs" / "wandb").glob("*run-*"))) == 1


def test_ddp_preset_combines_with_a_model_preset_for_several_machines() -> None:
    presets = ["--config", str(CONFIGS / "mlp_128_64.yaml"), "--config", str(CONFIGS / "ddp.yaml")]
    machines = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.num_nodes", "3"]
    cli = MNISTLightningCLI(args=[*presets, *machines], run=False)
    assert isinstance(cli.trainer.strategy, DDPStrategy)
    assert cli.trainer.world_size == 6 and cli.trainer.num_nodes == 3
    assert cli.model.hparams.hidden_sizes == [128, 64] and cli.datamodule.batch_size == 64


def test_predict_with_several_processes_is_refused_in_one_line(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--model", "MLPClassifier", *TWO_CPU_PROCESSES])
    assert exit_info.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert errors == [
        "mnist-lightning: error: predict runs in one process but 2 were asked for; "
        "run it with --trainer.devices 1 --trainer.num_nodes 1 and without the ddp preset"
    ]
    assert not list(isolated.rglob("*.csv"))
