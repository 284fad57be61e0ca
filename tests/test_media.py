"""Run media: the attention figure, the attention maps of ``vit_encoder``, learning curves across a resume, export."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS, run_cli
from tiny_models import TinyCNNClassifier
from torch import Tensor
from wandb_offline import read_run

from mnist_lightning.callbacks import MediaLogger
from mnist_lightning.figures.training import attention_figure
from mnist_lightning.models.vit import TransformerEncoderClassifier, TransformerEncoderViT
from mnist_lightning.serving.export import export_model
from mnist_lightning.serving.serve import class_token_attention


def test_attention_figure_numbers_heads_from_one_labels_its_axes_and_has_a_colour_bar() -> None:
    torch.manual_seed(0)
    attention = torch.randn(2, 3, 17, 17).softmax(dim=-1)  # 2 images, 3 heads, class token + 16 patches
    figure = attention_figure(torch.rand(2, 1, 28, 28), attention, "epoch 0")
    *panels, bar = figure.axes
    first_row, last_row = panels[:4], panels[4:]
    assert len(last_row) == 4  # per image: the input and the three heads
    assert [axis.get_title() for axis in first_row] == ["input", "head 1", "head 2", "head 3"]
    assert all(axis.get_title() == "" for axis in last_row)
    assert [axis.get_xlabel() for axis in last_row[1:]] == ["key token"] * 3
    assert [row[1].get_ylabel() for row in (first_row, last_row)] == ["query token"] * 2
    ticks = ["c", "4", "8", "12", "16"]  # the class token, then the last patch of each row of the 4×4 grid
    assert [label.get_text() for label in last_row[1].get_xticklabels()] == ticks
    assert [label.get_text() for label in first_row[1].get_yticklabels()] == ticks
    assert bar.get_ylabel() == "attention probability"
    # one colour scale for every matrix, so the bar holds for all of them
    limits = {axis.get_images()[0].get_clim() for axis in panels if axis not in (first_row[0], last_row[0])}
    assert limits == {(0.0, float(attention.max()))}


def rebuilt_logits(net: TransformerEncoderViT, images: Tensor, maps: Tensor) -> Tensor:
    """The encoder's forward, written out by hand with each layer's attention taken from ``maps``.

    If the maps are the weights each layer really applies to its values, this gives the model's own logits.
    """
    tokens = net.embedding(images)
    batch, count, dim = tokens.shape
    for layer, weights in zip(net.encoder.layers, maps):
        attention = layer.self_attn
        seen = layer.norm1(tokens) if layer.norm_first else tokens
        values = F.linear(seen, attention.in_proj_weight[2 * dim :], attention.in_proj_bias[2 * dim :])
        values = values.view(batch, count, attention.num_heads, -1).transpose(1, 2)  # (B, heads, tokens, head dim)
        attended = attention.out_proj((weights @ values).transpose(1, 2).reshape(batch, count, dim))

        def feed_forward(x: Tensor, layer: torch.nn.TransformerEncoderLayer = layer) -> Tensor:
            return layer.linear2(layer.activation(layer.linear1(x)))

        if layer.norm_first:
            tokens = tokens + attended
            tokens = tokens + feed_forward(layer.norm2(tokens))
        else:
            tokens = layer.norm1(tokens + attended)
            tokens = layer.norm2(tokens + feed_forward(tokens))
    return net.head(tokens[:, 0])


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_encoder_vit_attention_maps_are_the_weights_its_layers_apply(norm_first: bool) -> None:
    torch.manual_seed(0)
    model = TransformerEncoderClassifier(depth=3, heads=4, feedforward_dim=96, norm_first=norm_first).eval()
    images = torch.randn(5, 1, 28, 28)
    before = model(images)
    maps = model.attention_maps(images)
    assert maps.shape == (3, 5, 4, 17, 17)  # blocks, images, heads, queries, keys: as ViTClassifier's
    assert (maps >= 0).all()
    assert torch.allclose(maps.sum(dim=-1), torch.ones(3, 5, 4, 17), atol=1e-5)  # a softmax over the keys
    assert not torch.allclose(maps.sum(dim=-2), torch.ones(3, 5, 4, 17), atol=1e-3)  # not over the queries
    assert not torch.allclose(maps[0], maps[-1])  # each layer its own weights, not one layer's repeated

    # the hooks leave the model as it was: the same logits after, the same maps again, nothing left registered
    assert torch.equal(model(images), before)
    assert torch.equal(model.attention_maps(images), maps)
    with torch.no_grad():
        assert torch.allclose(rebuilt_logits(model.net, images, maps), before, atol=1e-5)

    # the drawing page reads them as it reads the ViT's: [block][head][patch]
    page = class_token_attention(model, images[:1])
    assert (len(page), len(page[0]), len(page[0][0])) == (3, 4, 16)
    assert page[-1][2] == pytest.approx(maps[-1, 0, 2, 0, 1:].tolist())


def test_resumed_run_keeps_the_train_loss_of_the_epoch_before_it(isolated: Path) -> None:
    common = (
        "fit",
        "--config",
        str(CONFIGS / "vit_encoder.yaml"),
        "--trainer.limit_train_batches=5",
        "--trainer.limit_val_batches=2",
        "--data.eval_batch_size=100",  # validation batches of 100, not 1,000: the curves' points are what counts
        "--trainer.enable_progress_bar=false",
    )
    run_cli(*common, "--trainer.max_epochs=1")
    (run_dir,) = (isolated / "runs" / "mnist-lightning").iterdir()
    last = run_dir / "checkpoints" / "last.ckpt"
    run_cli(*common, "--ckpt_path", str(last), "--trainer.max_epochs", "2")

    curves = torch.load(last, weights_only=True)["callbacks"][MediaLogger().state_key]["curves"]
    # what the model logged to W&B: the first run's epoch, then the resumed run's
    first, resumed = (read_run(folder) for folder in sorted((isolated / "runs" / "wandb").glob("offline-run-*")))
    logged = first.metric("train/loss") + resumed.metric("train/loss")
    assert len(logged) == 2
    assert [step for step, _ in curves["train/loss"]] == [5, 10]  # both epochs' points, at their last step
    assert [value for _, value in curves["train/loss"]] == pytest.approx(logged, rel=1e-5)
    assert [step for step, _ in curves["val/loss"]] == [5, 10]
    # vit_encoder gets its attention figure every epoch, before and after the resume
    media = run_dir / "media"
    assert {"attention-epoch000.png", "attention-epoch001.png", "learning_curves.png"} <= {
        path.name for path in media.iterdir()
    }


class WarningCNN(TinyCNNClassifier):
    """A CNN whose forward warns: the export must let a model's own warnings through."""

    def forward(self, images: Tensor) -> Tensor:
        warnings.warn("a warning from the model's forward", UserWarning, stacklevel=2)
        return super().forward(images)


@pytest.mark.parametrize("fmt, name", [("pt2", "model.pt2"), ("torchscript", "model.pt"), ("onnx", "model.onnx")])
def test_export_shows_the_models_warnings_but_no_temporary_file_suffix_warning(
    fmt: str, name: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "exported"
    with pytest.warns(UserWarning, match="a warning from the model's forward"):
        path = export_model(WarningCNN(), folder / name, fmt)  # type: ignore[arg-type]
    # torch.export.save logs (not warns) about a file name that does not end in .pt2
    assert "ending in .pt2" not in capfd.readouterr().err
    assert [entry.name for entry in folder.iterdir()] == [name] and path == folder / name  # no temporary file left
