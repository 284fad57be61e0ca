"""Checkpoints written by an earlier layout of the package (0.1, flat modules, hand-written weight average) still load,
predict exactly as they did, evaluate through the command and resume training.

``tests/fixtures/checkpoints_0_1`` holds ``last.ckpt`` of three one-epoch runs (6 batches of 32) made with that code:

- ``mlp.ckpt``: ``MLPClassifier --model.hidden_sizes [16] --model.ema_decay 0.9`` (a weight average in the file);
- ``cnn.ckpt``: the ``small_cnn`` preset with one 4-channel block and a hidden layer of 8;
- ``vit.ckpt``: the ``vit_strong`` preset (one-cycle schedule, augmentation) with width 16 and one block.

``expected_logits.json`` holds what each returned, in eval mode, for the first 8 official test images.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mnist_lightning import load_classifier
from mnist_lightning.checkpoints import read_checkpoint
from mnist_lightning.data import load_split, normalize_uint8
from mnist_lightning.models import CNNClassifier, MLPClassifier, ViTClassifier

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints_0_1"
CLASSES = {"mlp": MLPClassifier, "cnn": CNNClassifier, "vit": ViTClassifier}


@pytest.fixture(scope="module")
def first_test_images(mnist_dir: Path) -> torch.Tensor:
    images, _ = load_split(mnist_dir, train=False)
    return normalize_uint8(images[:8]).unsqueeze(1)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_an_old_checkpoint_predicts_as_it_did(name: str, first_test_images: torch.Tensor) -> None:
    expected = torch.tensor(json.loads((FIXTURES / "expected_logits.json").read_text())["logits"][name])
    for model in (
        load_classifier(FIXTURES / f"{name}.ckpt"),
        CLASSES[name].load_from_checkpoint(FIXTURES / f"{name}.ckpt"),
    ):
        assert type(model) is CLASSES[name]
        with torch.no_grad():
            logits = model.eval()(first_test_images)
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_an_old_checkpoint_with_a_weight_average_predicts_with_the_average(first_test_images: torch.Tensor) -> None:
    model = load_classifier(FIXTURES / "mlp.ckpt").eval()
    live = model.net  # the optimized weights: they differ from the average after 6 steps at decay 0.9
    with torch.no_grad():
        assert not torch.allclose(live(first_test_images), model(first_test_images))


def test_an_old_checkpoint_is_tested_and_resumed_through_the_command(isolated: Path) -> None:
    from mnist_lightning.cli.main import main

    run = isolated / "old" / "checkpoints"
    run.mkdir(parents=True)
    shutil.copy(FIXTURES / "mlp.ckpt", run / "last.ckpt")
    quiet = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    main(["test", "--ckpt_path", str(run / "last.ckpt"), "--trainer.limit_test_batches", "2", *quiet])

    before = read_checkpoint(run / "last.ckpt")
    main(
        [
            "fit",
            "--ckpt_path",
            str(run / "last.ckpt"),
            "--trainer.max_epochs",
            "2",
            "--trainer.limit_train_batches",
            "6",
            "--trainer.limit_val_batches",
            "2",
            *quiet,
        ]
    )
    # the file came from another folder, so Lightning keeps it and writes the run's new last checkpoint beside it
    after = max((read_checkpoint(path) for path in run.glob("last*.ckpt")), key=lambda state: state["global_step"])
    assert before["global_step"] == 6 and after["global_step"] == 12
    assert after["hyper_parameters"]["ema_decay"] == 0.9
    changed = [k for k in before["state_dict"] if not torch.equal(before["state_dict"][k], after["state_dict"][k])]
    assert changed, "resuming trained nothing"
