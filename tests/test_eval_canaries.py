"""Canaries for the one private Lightning name evaluation and serving rely on: ``LightningModule._jit_is_scripting``,
which :func:`mnist_lightning.serving.export.trainer_free_tracing` sets so that ``torch.jit.trace`` can take in a
classifier that no Trainer holds (``mnist-lightning export --format torchscript``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule
from tiny_models import TinyCNNClassifier

from mnist_lightning.serving.export import RawImageClassifier, export_model, trainer_free_tracing

NOT_ATTACHED = "not attached to a `Trainer`"


def test_lightning_honours_jit_is_scripting_on_a_module_without_trainer() -> None:
    model = TinyCNNClassifier()
    assert LightningModule._jit_is_scripting is False, "Lightning renamed or changed _jit_is_scripting"
    with pytest.raises(RuntimeError, match=NOT_ATTACHED):
        _ = model.trainer
    model._jit_is_scripting = True
    assert model.trainer is None, "Lightning no longer honours _jit_is_scripting: export --format torchscript breaks"


def test_tracing_a_classifier_without_trainer_still_needs_the_flag() -> None:
    # if this fails, torch.jit.trace no longer reads `trainer`: trainer_free_tracing (and this canary) can go
    wrapped = RawImageClassifier(TinyCNNClassifier().eval()).eval()
    with pytest.raises(RuntimeError, match=NOT_ATTACHED):
        torch.jit.trace(wrapped, (torch.zeros(2, 28, 28, dtype=torch.uint8),), check_trace=False)


def test_trainer_free_tracing_traces_and_then_restores_the_module() -> None:
    model = TinyCNNClassifier().eval()
    wrapped = RawImageClassifier(model).eval()
    images = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    with torch.no_grad(), trainer_free_tracing(wrapped):
        traced = torch.jit.trace(wrapped, (images[:2],), check_trace=False)
    assert "_jit_is_scripting" not in vars(model)
    with pytest.raises(RuntimeError, match=NOT_ATTACHED):
        _ = model.trainer  # outside the block, a module without trainer says so again
    with torch.no_grad():
        for ours, theirs in zip(traced(images), wrapped(images), strict=True):
            torch.testing.assert_close(ours, theirs)


def test_torchscript_export_of_a_classifier_without_trainer(tmp_path: Path) -> None:
    model = TinyCNNClassifier()
    path = export_model(model, tmp_path / "model.pt", "torchscript")
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    logits, probabilities = torch.jit.load(str(path))(images)
    assert logits.shape == probabilities.shape == (5, 10)
    assert "_jit_is_scripting" not in vars(model)
