"""``test`` and ``predict`` of several checkpoints (``--ensemble``) or several views of each image (``--tta``).

The CLI builds its model from ``--ckpt_path`` as usual; when either option is given, that model is replaced by an
:class:`EnsembleClassifier` of the checkpoints just before the command runs. ``fit`` and ``validate`` refuse both.
"""

from __future__ import annotations

import sys
from argparse import Namespace

from lightning.pytorch.cli import LightningArgumentParser

from mnist_lightning.checkpoints import load_classifier
from mnist_lightning.cli.parsing import LIGHTNING_CKPT_PATHS
from mnist_lightning.errors import ConfigError
from mnist_lightning.evaluation.ensemble import MAX_VIEWS, EnsembleClassifier, check_views, expand_checkpoints
from mnist_lightning.evaluation.temperature import apply_temperature, parse_temperature
from mnist_lightning.models import MNISTClassifier

TEMPERATURE_OPTION = "--predictions.temperature"


def add_ensemble_arguments(parser: LightningArgumentParser) -> None:
    """``--ensemble`` and ``--tta``."""
    parser.add_argument(
        "--ensemble",
        type=str,
        nargs="+",
        default=None,
        help="test and predict: more checkpoints (files, or folders of .ckpt files) whose class probabilities "
        "are averaged with those of --ckpt_path (which, if not given, is the first of these)",
    )
    parser.add_argument(
        "--tta",
        type=int,
        default=1,
        help=f"test and predict: average the probabilities of this many views of every image: the image and its "
        f"one-pixel shifts (1, the default, is off; 5 adds up, down, left, right; at most {MAX_VIEWS})",
    )


def evaluates_ensemble(section: Namespace | None) -> bool:
    """Whether the command asks for test-time views (``--tta``) or more checkpoints (``--ensemble``)."""
    if not section:
        return False
    return bool(section.get("ensemble")) or section.get("tta") not in (None, 1)


def refuse_ensemble(section: Namespace | None, subcommand: str) -> None:
    """``fit`` and ``validate`` take neither option."""
    if evaluates_ensemble(section):
        # validation picks checkpoints; an ensemble's figures there would be compared with a single model's
        raise ConfigError(
            f"the options --ensemble and --tta are for test and predict, not for {subcommand}; "
            "run mnist-lightning test (or predict) with them"
        )


def member_temperature_choice(section: Namespace) -> float | None:
    """None when every member applies its own stored temperature (the default), 1 when ``--predictions.temperature``
    turns temperatures off or gives a number (which then applies once, to the averaged probabilities)."""
    writer = section.get("predictions")  # the parsed section, or the PredictionWriter made from it
    given = writer.get("temperature", "stored") if isinstance(writer, dict | Namespace) else None
    given = getattr(writer, "temperature", "stored") if given is None else given
    return None if parse_temperature(given, TEMPERATURE_OPTION[2:]) is None else 1.0


def ensemble_of_checkpoints(section: Namespace, model: MNISTClassifier, subcommand: str) -> EnsembleClassifier:
    """The :class:`EnsembleClassifier` of ``--ckpt_path`` and ``--ensemble`` with ``--tta`` views.

    ``section`` is the subcommand's instantiated configuration: its ``ckpt_path`` is cleared, since every member is
    loaded already and Lightning has no single file to restore.
    """
    views = check_views(section.get("tta"))
    if not section.get("ckpt_path") or section.ckpt_path in LIGHTNING_CKPT_PATHS:
        raise ConfigError(
            "the options --tta and --ensemble evaluate checkpoints: give --ckpt_path FILE (or --ensemble FILES)"
        )
    paths = expand_checkpoints([section.ckpt_path, *(section.get("ensemble") or [])])
    own_class = f"{type(model).__module__}.{type(model).__qualname__}"  # checked while the arguments were parsed
    members = [load_classifier(path, trusted=[own_class]) for path in paths]
    choice = member_temperature_choice(section)
    temperatures = [apply_temperature(m, p, choice, TEMPERATURE_OPTION) for m, p in zip(members, paths, strict=True)]
    ensemble = EnsembleClassifier(members, views, sources=[str(p) for p in paths])
    section.ckpt_path = None
    listed = ", ".join(
        f"{path} (T={t:.3g})" if t != 1 else str(path) for path, t in zip(paths, temperatures, strict=True)
    )
    print(f"mnist-lightning: {subcommand} of {ensemble.describe()}: {listed}", file=sys.stderr)
    return ensemble
