"""The report's calibration numbers: ECE, MCE, the reliability diagram and its bin counts come from one binning,
checked against torchmetrics on confidences with many exact 1.0s; and the spellings of a temperature."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from mnist_lightning.errors import ConfigError
from mnist_lightning.evaluation.calibration import CALIBRATION_BINS, bins_json, calibration, reliability_bins
from mnist_lightning.evaluation.temperature import parse_temperature
from mnist_lightning.figures.evaluation import ReliabilityPanel, reliability_figure


def confident_probs(saturated: int, sure: int, spread: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities whose top value is exactly 1.0 in float32 for ``saturated`` images (10% of them wrong: an
    over-confident group), 0.95 for ``sure`` images (all right: under-confident, in the same last bin) and spread
    out for ``spread`` images, some of them exactly on bin boundaries."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(saturated + sure + spread, 10, generator=g)
    labels = logits.argmax(1)
    logits[:saturated] = -20.0
    logits[torch.arange(saturated), labels[:saturated]] = 40.0  # softmax is exactly 1.0 in float32
    labels[: saturated // 10] = (labels[: saturated // 10] + 1) % 10
    probs = logits.softmax(1)
    top = torch.full((sure,), 0.95)
    rest = (1 - top) / 9
    block = rest.unsqueeze(1).repeat(1, 10)
    block[torch.arange(sure), labels[saturated : saturated + sure]] = top
    probs[saturated : saturated + sure] = block
    boundaries = torch.linspace(0, 1, CALIBRATION_BINS + 1)[3:14]  # exact float32 boundaries
    for i, value in enumerate(boundaries.tolist()[:spread]):
        row = saturated + sure + i
        others = (1 - value) / 9
        probs[row] = others
        probs[row, labels[row]] = value
    return probs, labels


def test_exact_ones_make_torchmetrics_disagree_with_its_own_bins() -> None:
    """Why one binning matters: torchmetrics gives confidence 1.0 a bin of its own, so its ECE and MCE are not the
    numbers of the 15 bins the diagram draws."""
    probs, labels = confident_probs(3000, 1000, 0)
    assert (probs.max(1).values == 1.0).sum() == 3000
    ours = calibration(probs, labels)
    theirs_ece = float(multiclass_calibration_error(probs, labels, 10, n_bins=15, norm="l1"))
    theirs_mce = float(multiclass_calibration_error(probs, labels, 10, n_bins=15, norm="max"))
    assert abs(ours["ece"] - theirs_ece) > 0.01 and abs(ours["mce"] - theirs_mce) > 0.01


def test_ece_and_mce_are_the_numbers_of_the_diagrams_bins() -> None:
    probs, labels = confident_probs(3000, 1000, 2000)
    confidence, accuracy, count = reliability_bins(probs, labels)
    assert count.sum() == len(labels) and len(count) == CALIBRATION_BINS
    assert count[-1] >= 4000  # every exact 1.0 and every 0.95 is in the last bin, [14/15, 1]
    gaps = (accuracy - confidence).abs()
    cal = calibration(probs, labels)
    assert cal["ece"] == pytest.approx(float((gaps * count).sum() / len(labels)), abs=1e-12)
    assert cal["mce"] == pytest.approx(float(gaps[count > 0].max()), abs=1e-12)
    assert bins_json(probs, labels)["count"] == [int(c) for c in count.tolist()]


def test_without_exact_ones_the_bins_are_torchmetrics_own() -> None:
    """Every confidence below 1.0, boundaries included, lands in torchmetrics' bin: the same ECE and MCE (to
    torchmetrics' float32 sums; one image in another bin would move the ECE by about 1e-4)."""
    probs, labels = confident_probs(0, 1000, 5000, seed=1)
    ours = calibration(probs, labels)
    assert ours["ece"] == pytest.approx(float(multiclass_calibration_error(probs, labels, 10, 15, "l1")), abs=1e-5)
    assert ours["mce"] == pytest.approx(float(multiclass_calibration_error(probs, labels, 10, 15, "max")), abs=1e-5)


def test_the_diagram_writes_the_count_of_every_bin() -> None:
    probs, labels = confident_probs(3000, 1000, 2000)
    _, _, count = reliability_bins(probs, labels)
    fig = reliability_figure([ReliabilityPanel("model", probs, (probs.log() / 2).softmax(1))], labels)
    texts = [text.get_text() for text in fig.axes[0].texts]
    assert texts == [f"{int(c):,}" for c in count[count > 0].tolist()]


@pytest.mark.parametrize(
    ("given", "expected"),
    [("off", 1.0), ("OFF", 1.0), ("none", 1.0), ("stored", None), ("auto", None), (None, None), ("1.5", 1.5), (2, 2.0)],
)
def test_temperature_spellings(given: object, expected: float | None) -> None:
    assert parse_temperature(given, "--temperature") == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("given", ["0", "-1", "abc", "inf", "nan", 0, True])
def test_a_temperature_that_is_not_one_is_refused(given: object) -> None:
    with pytest.raises(ConfigError, match="--temperature must be a positive number, 'stored'"):
        parse_temperature(given, "--temperature")  # type: ignore[arg-type]
