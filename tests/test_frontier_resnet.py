"""The resnet_frontier preset on the real MNIST through the CLI (a capped run, its checkpoint reloaded), its
network's shape, and the results table's ensembles, whose number of test-time views is chosen on validation."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS, REPO

from mnist_lightning.checkpoints import load_classifier
from mnist_lightning.cli import MNISTLightningCLI
from mnist_lightning.data import load_split, normalize_uint8
from mnist_lightning.data.datamodule import split_indices
from mnist_lightning.errors import ConfigError
from mnist_lightning.evaluation.ensemble import VIEW_SHIFTS, shifted
from mnist_lightning.models import ResNet, ResNetClassifier

sys.path.insert(0, str(REPO / "benchmarks"))  # the scripts import their parts as siblings
results = importlib.import_module("results")
results_views = importlib.import_module("results_views")

QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def cli(*args: str) -> MNISTLightningCLI:
    with mock.patch.object(sys, "argv", ["mnist-lightning"]):  # pytest's own arguments are not the CLI's
        return MNISTLightningCLI(args=list(args))


def test_the_network_has_a_stage_per_resolution_and_starts_as_its_shortcuts() -> None:
    net = ResNet(stem_channels=8, stem_kernel=5, widths=[8, 8, 16, 32], blocks=[1, 2, 1, 1])
    sizes = []
    for stage in net.stages:
        stage.register_forward_hook(lambda module, inputs, output: sizes.append(tuple(output.shape[1:])))
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert sizes == [(8, 28, 28), (8, 14, 14), (16, 7, 7), (32, 4, 4)]
    assert len(net.stages[1]) == 2 and net.stem[0][0].kernel_size == (5, 5)
    # every block's last BatchNorm starts at zero: the residual branch adds nothing at first
    assert all(float(block.second[1].weight.abs().sum()) == 0 for stage in net.stages for block in stage)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"widths": [8, 16], "blocks": [1]}, "model.widths and model.blocks need one entry per stage"),
        ({"widths": [8, 0]}, "must be positive"),
        ({"stem_kernel": 4}, "model.stem_kernel must be an odd number"),
    ],
)
def test_shapes_that_cannot_be_built_are_one_line(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ResNetClassifier(**settings)


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> tuple[MNISTLightningCLI, Path]:
    """``fit --config resnet_frontier`` on 2 batches of the real MNIST, validated on 200 images."""
    folder = tmp_path_factory.mktemp("resnet")
    run = cli(
        "fit", "--config", "resnet_frontier", "--data.data_dir", str(mnist_dir), "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2", "--trainer.num_sanity_val_steps=0",
        "--data.eval_batch_size=100", "--media.enabled=false", f"--trainer.default_root_dir={folder}",
        f"--checkpoint.dirpath={folder}", "--checkpoint.filename=best", *QUIET,
    )  # fmt: skip
    return run, folder / "best.ckpt"


def test_resnet_frontier_trains_on_real_mnist_with_its_recipe(resnet_run) -> None:
    run, checkpoint = resnet_run
    model, data = run.model, run.datamodule
    assert isinstance(model, ResNetClassifier) and model.num_parameters == 5_208_202
    assert model.hparams.optimizer == "adam" and model.hparams.scheduler == "exponential"
    assert model.hparams.lr_decay == 0.75 and results.recipe_epochs("resnet_frontier") == 11
    assert data.batch_size == 100 and data.augment and data.elastic_alpha == 15 and tuple(data.scale) == (1.0, 1.12)
    assert run.trainer.global_step == 2 and torch.isfinite(run.trainer.callback_metrics["train/loss"])
    assert checkpoint.is_file()


def test_the_resnet_checkpoint_rebuilds_the_same_network(resnet_run, mnist_dir: Path) -> None:
    run, checkpoint = resnet_run
    restored = load_classifier(checkpoint)
    assert isinstance(restored, ResNetClassifier) and restored.hparams.widths == [128, 128, 256, 512]
    images = normalize_uint8(load_split(mnist_dir, train=False)[0][:8].unsqueeze(1))
    with torch.no_grad():
        assert torch.allclose(restored(images), run.model.eval()(images), atol=1e-5)


# --- ensembles: the number of views is chosen on validation ----------------------------------------------------------
def test_the_best_validation_count_wins_then_nll_then_fewer_views() -> None:
    scores = {1: {"acc": 99.5, "nll": 0.03}, 5: {"acc": 99.6, "nll": 0.031}, 9: {"acc": 99.6, "nll": 0.029}}
    assert results_views.best_views(scores) == 9
    assert results_views.best_views({**scores, 9: {"acc": 99.6, "nll": 0.031}}) == 5
    # the running mean over views: two views of which the second is right about the first image
    probabilities = torch.tensor([[[0.6, 0.4], [0.9, 0.1]], [[0.0, 1.0], [0.9, 0.1]]]).repeat(1, 1, 5)[..., :10]
    scored = results_views.score_views(probabilities / probabilities.sum(-1, keepdim=True), torch.tensor([1, 0]))
    assert scored[1]["acc"] == 50.0 and scored[2]["acc"] == 100.0


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """Two small CNN checkpoints kept as results.py keeps them: ``keep/<preset>/seed<S>.ckpt``."""
    keep = tmp_path_factory.mktemp("keep")
    for seed in (1, 2):
        cli(
            "fit", "--model", "CNNClassifier", "--model.conv_blocks", "[{channels: 4, kernel_size: 5, pool: 2}]",
            "--model.hidden_sizes", "[]", "--data.data_dir", str(mnist_dir), "--data.batch_size", "128",
            "--trainer.max_epochs=1", "--trainer.limit_train_batches=20", "--trainer.limit_val_batches=2",
            f"--seed_everything={seed}", f"--trainer.default_root_dir={keep / str(seed)}",
            f"--checkpoint.dirpath={keep / 'small'}", f"--checkpoint.filename=seed{seed}",
            "--checkpoint.save_last=false", *QUIET,
        )  # fmt: skip
    return keep


def independent_scores(paths: list[Path], images: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
    """Accuracy of the first k views' mean probabilities, for every k (written apart from results_views)."""
    models = [load_classifier(p) for p in paths]
    inputs = normalize_uint8(images.unsqueeze(1))
    with torch.no_grad():
        per_view = [sum(m(shifted(inputs, r, c)).softmax(1) for m in models) / len(models) for r, c in VIEW_SHIFTS]
    return {k: 100 * (sum(per_view[:k]).argmax(1) == labels).float().mean().item() for k in range(1, 10)}


def test_views_are_chosen_on_the_validation_images_the_members_were_chosen_on(kept: Path, mnist_dir: Path) -> None:
    members = sorted((kept / "small").glob("seed*.ckpt"))
    choice = results_views.choose_views(members, limit=500)
    images, labels = load_split(mnist_dir, train=True)
    _, val_idx = split_indices(len(images), 5000, 42)
    expected = independent_scores(members, images[val_idx][:500], labels[val_idx][:500])
    got = {int(k): v["acc"] for k, v in choice["val_by_views"].items()}
    assert got == pytest.approx(expected, abs=1e-3) and choice["val_images"] == 500
    # not the test images: those would score differently
    test_images, test_labels = load_split(mnist_dir, train=False)
    assert independent_scores(members, test_images[:500], test_labels[:500]) != pytest.approx(expected, abs=1e-3)
    assert choice["views"] == results_views.best_views(choice["val_by_views"])


def test_an_ensemble_row_tests_once_with_the_count_chosen_on_validation(
    kept: Path, mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = {"views": 3, "val_images": 5000, "val_by_views": {1: {"acc": 90.0, "nll": 0.3}, 3: {"acc": 91.0}}}
    monkeypatch.setattr(results, "choose_views", lambda members, most, limit=None: chosen)
    tests: list[list[str]] = []
    real = results.MNISTLightningCLI
    monkeypatch.setattr(results, "MNISTLightningCLI", lambda args: tests.append(args) or real(args=args))
    key, row = results.run_ensemble(["small"], kept, 9, tmp_path)
    assert len(tests) == 1 and tests[0][tests[0].index("--tta") + 1] == "3"  # the test set, once, with 3 views
    assert key == "ensemble: small ×2; views chosen on validation" and row["views_chosen_on"] == "validation"
    members = sorted((kept / "small").glob("seed*.ckpt"))
    images, labels = load_split(mnist_dir, train=False)
    models = [load_classifier(p) for p in members]
    inputs = normalize_uint8(images.unsqueeze(1))
    with torch.no_grad():
        mean = sum(m(shifted(inputs, r, c)).softmax(1) for m in models for r, c in VIEW_SHIFTS[:3]) / 6
    assert row["test_acc"] == pytest.approx(100 * (mean.argmax(1) == labels).float().mean().item(), abs=0.006)
    assert row["test_loss"] == pytest.approx(F.nll_loss(mean.log(), labels).item(), abs=1e-3)
    views, val = results.views_cell(row)
    assert views == "3 of 1–3, chosen on validation" and val.startswith("91.00% (90.00% with 1 view")


def test_members_trained_on_different_splits_are_refused(kept: Path, tmp_path: Path) -> None:
    members = sorted((kept / "small").glob("seed*.ckpt"))
    other = tmp_path / "other.ckpt"
    checkpoint = torch.load(members[1], weights_only=True)
    checkpoint["datamodule_hyper_parameters"]["split_seed"] = 7
    torch.save(checkpoint, other)
    with pytest.raises(ConfigError, match="trained on different validation splits"):
        results_views.choose_views([members[0], other])


def test_the_committed_table_recommends_no_count_chosen_on_test() -> None:
    table = (REPO / "benchmarks" / "results.md").read_text().split("## Ensembles", 1)[-1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "×" in line]
    assert rows and all("chosen on validation" in row or "not chosen on validation" in row for row in rows)
    assert (CONFIGS / "resnet_frontier.yaml").is_file()


def test_an_ensemble_without_kept_checkpoints_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"^results.py: no kept checkpoints .*/<preset>/seed\*.ckpt for cnn_frontier$"):
        results.main(["--ensemble", "cnn_frontier", "--keep", str(tmp_path), "--results", str(tmp_path / "r.json")])
    assert not (tmp_path / "r.json").exists()
