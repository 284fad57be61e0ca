"""W&B tracking through the real console script and wandb offline: config, metrics, media, artifacts, resume, sweep."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import CONFIGS, run_cli
from torch import Tensor, nn
from wandb_offline import OfflineRun, read_run

from mnist_lightning import MNISTDataModule
from mnist_lightning.callbacks import MediaLogger
from mnist_lightning.checkpoints import RUN_ID_KEY, inspect_checkpoint
from mnist_lightning.figures.training import attention_figure, confusion_matrix
from mnist_lightning.models.base import MNISTClassifier

TINY = (
    "--trainer.limit_train_batches",
    "10",
    "--trainer.limit_val_batches",
    "4",
    "--trainer.enable_progress_bar",
    "false",
)
VAL_MEDIA = ("confusion_matrix", "val_predictions", "val_worst")


def offline_runs(root: Path) -> list[OfflineRun]:
    return [read_run(folder) for folder in sorted((root / "runs" / "wandb").glob("offline-run-*"))]


def model_artifacts(run: OfflineRun) -> dict[str, dict]:
    """alias -> metadata of the staged ``model`` artifacts."""
    found = {}
    for artifact in run.artifacts:
        if artifact.type == "model":
            for alias in artifact.aliases:
                found[alias] = json.loads(artifact.metadata) | {"_files": [e.path for e in artifact.manifest.contents]}
    return found


def test_offline_run_holds_config_metrics_media_artifacts_and_resumes_with_the_same_id(isolated: Path) -> None:
    common = ("fit", "--config", str(CONFIGS / "mlp_128_64.yaml"), *TINY)
    first = run_cli(
        *common,
        "--trainer.max_epochs=1",
        "--trainer.logger.init_args.tags=[sweepable, mlp]",
        "--trainer.logger.init_args.group=mlp_128_64",
        "--trainer.logger.init_args.watch=gradients",
        "--trainer.logger.init_args.watch_log_freq=5",
    )
    assert "wandb sync runs/wandb/offline-run-" in first.stderr
    (run_dir,) = (isolated / "runs" / "mnist-lightning").iterdir()
    (run,) = offline_runs(isolated)
    assert run.run_id == run_dir.name

    # the whole resolved config, plus parameter count and split sizes; no flattened copy of the hyperparameters
    assert run.config["model"]["class_path"] == "mnist_lightning.models.MLPClassifier"
    assert run.config["model"]["init_args"]["hidden_sizes"] == [128, 64]
    assert run.config["trainer"]["logger"]["init_args"]["group"] == "mlp_128_64"
    assert run.config["num_parameters"] == 109_386
    assert run.config["split_sizes"] == {"train": 55_000, "val": 5_000, "test": 10_000}
    assert not {"lr", "hidden_sizes", "batch_size", "_class_path"} & set(run.config)
    assert run.tags == ["sweepable", "mlp"] and run.group == "mlp_128_64"

    # metrics, media (images and a table) and wandb.watch histograms, all on the trainer/global_step axis
    assert run.metric("train/loss") and run.metric("val/acc") and run.metric("val/acc_best")
    media_types = {key: run.metric(f"media/{key}/_type") for key in (*VAL_MEDIA, "train_samples", "learning_curves")}
    assert all(types == ["image-file"] for types in media_types.values()), media_types
    assert run.metric("media/val_worst_table/_type") == ["table-file"]
    assert any(key.startswith("gradients/net.") for row in run.history for key in row)

    # the same figures as PNG files next to the checkpoints
    pngs = {path.name for path in (run_dir / "media").glob("*.png")}
    assert pngs == {"train_samples.png", "learning_curves.png"} | {f"{name}-epoch000.png" for name in VAL_MEDIA}
    assert all((run_dir / "media" / name).read_bytes()[:4] == b"\x89PNG" for name in pngs)

    # best and last checkpoints staged as model artifacts with their metrics
    artifacts = model_artifacts(run)
    assert {"best", "last"} <= set(artifacts)
    best_file = next((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert artifacts["best"]["_files"] == [best_file.name] and artifacts["last"]["_files"] == ["last.ckpt"]
    assert artifacts["best"]["val/acc"] == pytest.approx(run.metric("val/acc")[-1])
    assert artifacts["last"]["global_step"] == 10 and artifacts["last"]["epoch"] == 0

    # the run id travels with the checkpoint, also when it is copied out of its run folder
    copied = isolated / "elsewhere.ckpt"
    shutil.copy(best_file, copied)
    assert torch.load(copied, weights_only=True)[RUN_ID_KEY] == run.run_id == inspect_checkpoint(copied).wandb_run_id

    # resume: the same W&B run id, the step count goes on, checkpoints stay in the same run folder
    resumed = run_cli(*common, "--trainer.max_epochs=2", "--ckpt_path", "last")
    assert f"Resuming from runs/mnist-lightning/{run.run_id}/checkpoints/last.ckpt" in resumed.stderr
    assert [p.name for p in (isolated / "runs" / "mnist-lightning").iterdir()] == [run.run_id]
    before, after = offline_runs(isolated)  # offline, wandb writes the resumed part as a second folder, same id
    assert before.run_id == after.run_id == run.run_id
    assert max(after.metric("trainer/global_step")) == 20 > max(before.metric("trainer/global_step"))
    assert after.metric("epoch") and set(after.metric("epoch")) == {1}
    assert model_artifacts(after)["last"]["global_step"] == 20
    assert not after.metric("media/train_samples/_type")  # the grid of digits is not logged twice
    assert (run_dir / "media" / "confusion_matrix-epoch001.png").is_file()


class TinyAttentionClassifier(MNISTClassifier):
    """A stand-in for a ViT: one attention block over 16 patch tokens, exposing ``attention_maps``."""

    def __init__(self, *, heads: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.heads = heads
        self.embed = nn.Linear(49, 8 * heads)
        self.net = nn.Linear(8 * heads, 10)

    def _tokens(self, images: Tensor) -> Tensor:
        patches = images.unfold(2, 7, 7).unfold(3, 7, 7).reshape(len(images), 16, 49)
        return self.embed(patches)

    def attention_maps(self, images: Tensor) -> Tensor:
        tokens = self._tokens(images).reshape(len(images), 16, self.heads, 8).transpose(1, 2)
        scores = tokens @ tokens.transpose(-1, -2) / 8**0.5
        return scores.softmax(dim=-1).unsqueeze(0)  # (blocks=1, batch, heads, tokens, tokens)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(self._tokens(images).mean(dim=1))


def test_media_callback_draws_attention_of_every_head_and_skips_the_sanity_check(mnist_dir: Path, tmp_path: Path):
    media = MediaLogger(num_val_images=100, num_attention_images=3, num_samples=8)
    model = TinyAttentionClassifier(heads=2)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=2,
        num_sanity_val_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[media],
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(mnist_dir), batch_size=64))
    names = sorted(path.name for path in media.written)
    assert names == sorted(
        ["train_samples.png", "learning_curves.png", "attention-epoch000.png"]
        + [f"{n}-epoch000.png" for n in VAL_MEDIA]
    )
    assert all(path.is_file() and path.parent == tmp_path / "media" for path in media.written)
    assert [len(points) for points in media.curves.values()] == [1, 1, 1]  # sanity check not counted

    images = torch.randn(3, 1, 28, 28)
    figure = attention_figure(images, model.attention_maps(images)[-1])
    assert len(figure.axes) == 3 * (1 + 2) + 1  # one row per image: the input and both heads; the colour bar


def test_confusion_matrix_counts_true_rows_and_predicted_columns() -> None:
    matrix = confusion_matrix(torch.tensor([1, 1, 2, 0]), torch.tensor([1, 2, 2, 0]), num_classes=3)
    assert matrix.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def render_sweep_command(sweep: dict, values: dict[str, object]) -> list[str]:
    """The command line ``wandb agent`` runs for one trial, built with wandb's own macro functions."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    command = sweep_utils.create_sweep_command(list(sweep["command"]))
    macros = sweep_utils.create_sweep_command_args({"args": {key: {"value": v} for key, v in values.items()}})
    macros |= {"env": ["/usr/bin/env"], "interpreter": ["python"], "program": [sweep["program"]]}
    rendered = []
    for chunk in map(str, command):  # the substitution loop of wandb.wandb_agent.Agent._command_run
        rendered += macros.get(chunk[2:-1]) or [] if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return rendered


def test_sweep_config_renders_a_command_that_runs_one_trial(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = yaml.safe_load((CONFIGS / "sweep.yaml").read_text())
    params = sweep["parameters"]
    assert sweep["metric"] == {"name": "val/acc", "goal": "maximize"}
    assert params["data.batch_size"]["values"] == [8, 16, 32, 64]
    assert params["model.init_args.optimizer"]["values"] == ["sgd", "adam", "adagrad"]
    assert params["model.init_args.lr"] == {"distribution": "log_uniform_values", "min": 0.001, "max": 1.0}

    trial = {"data.batch_size": 8, "model.init_args.optimizer": "adagrad", "model.init_args.lr": 0.0316}
    trial |= {key: spec["value"] for key, spec in params.items() if "value" in spec}
    # fixed values a sweep could also set, here to keep the trial short and without figures
    trial |= {"trainer.max_epochs": 1, "trainer.limit_train_batches": 5, "trainer.limit_val_batches": 2}
    trial |= {"media.enabled": False}
    command = render_sweep_command(sweep, trial)
    assert command[:2] == ["/usr/bin/env", "mnist-lightning"] and "--data.batch_size=8" in command

    # the agent starts the command with the trial's run id in WANDB_RUN_ID, from the repository root; the command
    # after `/usr/bin/env mnist-lightning` runs here in the test process, as that console script would run it
    monkeypatch.setenv("WANDB_RUN_ID", "sweeptrial1")
    shutil.copytree(CONFIGS, isolated / "configs")
    run_cli(*command[2:])
    (run,) = offline_runs(isolated)
    assert run.run_id == "sweeptrial1"
    assert run.config["data"]["batch_size"] == 8
    assert run.config["model"]["init_args"]["optimizer"] == "adagrad"
    assert run.config["model"]["init_args"]["lr"] == pytest.approx(0.0316)
    assert len(run.metric("val/acc")) == len(run.metric("train/loss")) == 1
    assert not (isolated / "runs" / "mnist-lightning" / "sweeptrial1" / "media").exists()
