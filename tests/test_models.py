"""Every architecture preset: its catalogued layers and parameter counts, forward and backward, the ViTs' details."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path
from unittest import mock

import lightning as L
import pytest
import torch
from conftest import CONFIGS, REPO, metric, run_console_script
from torch import nn

from mnist_lightning.cli import MNISTLightningCLI
from mnist_lightning.cli.main import main
from mnist_lightning.data import MNISTDataModule
from mnist_lightning.models import CNNClassifier, TransformerEncoderClassifier, ViTClassifier

# the one list of presets, which benchmarks/results.py also reads (plain data: running it imports nothing)
PRESETS = runpy.run_path(str(REPO / "benchmarks" / "presets.py"))
CATALOGUE_PRESETS, STRONG_PRESETS = PRESETS["CATALOGUE_PRESETS"], PRESETS["STRONG_PRESETS"]


def preset_model(preset: str) -> L.LightningModule:
    """The model ``mnist-lightning fit --config configs/<preset>.yaml`` trains."""
    args = ["--config", str(CONFIGS / "defaults.yaml"), "--config", str(CONFIGS / f"{preset}.yaml")]
    with mock.patch.object(sys, "argv", ["mnist-lightning"]):  # pytest's own arguments are not the CLI's
        return MNISTLightningCLI(args=[*args, "--trainer.logger", "false"], run=False).model


def describe(module: nn.Module) -> list[str]:
    """The layers of a plain CNN in words, e.g. ``conv 1→32 k3 pad 1``, ``bn 6``, ``linear 9216→128``."""
    words = []
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            pad = f" pad {layer.padding[0]}" if layer.padding[0] else ""
            words.append(f"conv {layer.in_channels}→{layer.out_channels} k{layer.kernel_size[0]}{pad}")
        elif isinstance(layer, nn.BatchNorm2d):
            words.append(f"bn {layer.num_features}")
        elif isinstance(layer, nn.MaxPool2d):
            words.append(f"maxpool {layer.kernel_size}")
        elif isinstance(layer, nn.Dropout):
            words.append(f"dropout {layer.p}")
        elif isinstance(layer, nn.Linear):
            words.append(f"linear {layer.in_features}→{layer.out_features}")
        elif isinstance(layer, nn.ReLU | nn.Flatten | nn.Tanh):
            words.append(type(layer).__name__.lower())
    return words


# The catalogue's layers, one by one (lenet_bn1: ReLU then Dropout after the 84 layer, the same function as the
# notebook's Dropout then ReLU), and the parameter counts worked out by hand.
CNN_LAYERS = {
    "lenet_bn1": (
        "conv 1→6 k5, bn 6, relu, maxpool 2, conv 6→16 k5, relu, maxpool 2, "
        "flatten, linear 256→120, relu, linear 120→84, relu, dropout 0.1, linear 84→10",
        156 + 12 + 2_416 + 30_840 + 10_164 + 850,
    ),
    "lenet5": (
        "conv 1→6 k5, bn 6, relu, maxpool 2, conv 6→16 k5, bn 16, relu, maxpool 2, "
        "flatten, linear 256→120, relu, linear 120→84, relu, linear 84→10",
        156 + 12 + 2_416 + 32 + 30_840 + 10_164 + 850,
    ),
    "small_cnn": (
        "conv 1→16 k3 pad 1, bn 16, relu, maxpool 2, conv 16→32 k3 pad 1, bn 32, relu, maxpool 2, "
        "flatten, linear 1568→128, relu, dropout 0.25, linear 128→10",
        160 + 32 + 4_640 + 64 + 200_832 + 1_290,
    ),
    "convnet_pool2": (
        "conv 1→32 k3, relu, maxpool 2, dropout 0.25, conv 32→64 k3, relu, maxpool 2, dropout 0.5, "
        "flatten, linear 1600→128, linear 128→10",
        320 + 18_496 + 204_928 + 1_290,
    ),
    "convnet": (
        "conv 1→32 k3, relu, conv 32→64 k3, relu, maxpool 2, dropout 0.25, "
        "flatten, linear 9216→128, relu, dropout 0.5, linear 128→10",
        1_199_882,
    ),
}


@pytest.mark.parametrize("preset", list(CNN_LAYERS))
def test_cnn_presets_have_their_catalogued_layers_and_parameter_counts(preset: str) -> None:
    layers, params = CNN_LAYERS[preset]
    model = preset_model(preset)
    assert isinstance(model, CNNClassifier)
    assert ", ".join(describe(model.net)) == layers
    assert model.num_parameters == params


def test_vit_preset_matches_its_catalogue_entry() -> None:
    model = preset_model("vit")
    assert isinstance(model, ViTClassifier)
    vit = model.net
    assert vit.embedding.project.in_features == 49 and vit.embedding.project.out_features == 64
    assert vit.embedding.class_token.shape == (1, 1, 64) and vit.embedding.position.shape == (1, 17, 64)
    assert len(vit.blocks) == 6
    for block in vit.blocks:
        assert block.attention.heads == 8
        assert block.attention.to_qkv.weight.shape == (3 * 512, 64) and block.attention.to_qkv.bias is None
        assert block.attention.to_out.weight.shape == (64, 512) and block.attention.to_out.bias is None
        assert [type(m) for m in block.mlp if not isinstance(m, nn.Dropout)] == [nn.Linear, nn.ReLU, nn.Linear]
        assert (block.mlp[0].in_features, block.mlp[0].out_features, block.mlp[-2].out_features) == (64, 128, 64)
    assert isinstance(vit.norm, nn.LayerNorm) and vit.classifier.in_features == 64
    # embedding 49·64+64, class token 64, positions 17·64; per block 2 LayerNorms, qkv, out, MLP; final norm + head
    per_block = 2 * 128 + 64 * 1536 + 512 * 64 + (64 * 128 + 128) + (128 * 64 + 64)
    assert model.num_parameters == 3_200 + 64 + 1_088 + 6 * per_block + 128 + 650 == 892_554


def test_vit_encoder_preset_is_batch_first_with_a_trained_class_token() -> None:
    model = preset_model("vit_encoder")
    assert isinstance(model, TransformerEncoderClassifier)
    net = model.net
    layers = net.encoder.layers
    assert len(layers) == 4
    for layer in layers:
        assert layer.self_attn.batch_first and layer.self_attn.num_heads == 8 and layer.self_attn.embed_dim == 64
        assert layer.linear1.out_features == 3000 and layer.activation_relu_or_gelu == 2  # 2: GELU
    assert describe(net.head) == ["linear 64→250", "linear 250→100", "tanh", "linear 100→10"]
    class_token = net.embedding.class_token
    assert isinstance(class_token, nn.Parameter) and class_token.requires_grad
    assert any(p is class_token for p in model.configure_optimizers().param_groups[0]["params"])
    # batch first: a batch of 3 gives 3 independent rows (a (tokens, batch, dim) mix-up would couple them)
    model.eval()
    images = torch.randn(3, 1, 28, 28)
    assert torch.allclose(model(images)[1:], model(images[1:]), atol=1e-5)
    model.train()
    model(images).sum().backward()
    assert class_token.grad is not None and class_token.grad.abs().sum() > 0
    layer_params = 64 * 192 + 192 + 64 * 64 + 64 + 64 * 3000 + 3000 + 3000 * 64 + 64 + 4 * 64
    assert model.num_parameters == 3_200 + 64 + 1_088 + 4 * layer_params + 16_250 + 25_100 + 1_010 == 1_662_552


@pytest.mark.parametrize("preset", CATALOGUE_PRESETS + STRONG_PRESETS)
def test_every_preset_runs_forward_and_backward(preset: str) -> None:
    model = preset_model(preset)
    model.train()
    logits = model(torch.randn(4, 1, 28, 28))
    assert logits.shape == (4, 10)
    torch.nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_vit_attention_maps_of_the_last_block() -> None:
    torch.manual_seed(0)
    model = ViTClassifier().eval()
    image = torch.randn(1, 1, 28, 28)
    maps = model.attention_maps(image)
    assert maps.shape == (6, 1, 8, 17, 17)  # blocks, images, heads, queries, keys
    last = maps[-1, 0]
    assert (last >= 0).all()
    assert torch.allclose(last.sum(dim=-1), torch.ones(8, 17), atol=1e-5)  # softmax over the keys
    assert not torch.allclose(last.sum(dim=-2), torch.ones(8, 17), atol=1e-3)  # not over the queries
    # the fused kernel and the explicit attention give the same logits
    fused = model(image)
    explicit, _ = model.net(image, return_attention=True)
    assert torch.allclose(fused, explicit, atol=1e-5)


def test_vit_settings_change_tokens_and_heads() -> None:
    model = ViTClassifier(patch_size=4, dim=32, depth=2, heads=4, head_dim=8, mlp_dim=64).eval()
    maps = model.attention_maps(torch.randn(2, 1, 28, 28))
    assert maps.shape == (2, 2, 4, 50, 50)
    assert model.net.embedding.position.shape == (1, 50, 32)


def test_patch_size_that_does_not_divide_28_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match=re.escape("patch_size=5 does not divide the 28-pixel image side")):
        ViTClassifier(patch_size=5)
    with pytest.raises(SystemExit) as exit_info, mock.patch.object(sys, "argv", ["mnist-lightning"]):
        main(["fit", "--model", "ViTClassifier", "--model.patch_size", "6", "--trainer.logger", "false"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "mnist-lightning: error: patch_size=6 does not divide the 28-pixel image side; choose one of 1, 2, 4, 7, 14, 28"
    ]


def test_conv_block_with_an_unknown_key_is_refused() -> None:
    with pytest.raises(ValueError, match=r"conv_blocks\[0\] has unknown keys \['kernel'\]"):
        CNNClassifier(conv_blocks=[{"channels": 8, "kernel": 3}])


def test_a_few_hundred_steps_of_lenet5_reach_90_percent_validation_accuracy(mnist_dir: Path, tmp_path: Path) -> None:
    L.seed_everything(0)
    model = preset_model("lenet5")
    dm = MNISTDataModule(data_dir=str(mnist_dir), batch_size=64, eval_batch_size=1000)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=200,
        limit_val_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.callback_metrics["val/acc"] > 0.9


@pytest.mark.slow
@pytest.mark.parametrize("preset", CATALOGUE_PRESETS + STRONG_PRESETS)
def test_every_preset_fits_and_tests_through_the_console_script(preset: str, isolated: Path) -> None:
    limits = ["--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2"]
    run_console_script("fit", "--config", str(CONFIGS / f"{preset}.yaml"), "--trainer.max_epochs", "1", *limits)
    (run_dir,) = (isolated / "runs" / "mnist-lightning").iterdir()
    (best,) = (run_dir / "checkpoints").glob("best-*.ckpt")
    tested = run_console_script("test", "--ckpt_path", str(best), "--trainer.limit_test_batches", "2")
    assert 0 <= metric(tested.stdout, "test/acc") <= 1
