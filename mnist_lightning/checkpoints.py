"""The one place that reads checkpoints: find one, read it safely, check it, describe it, rebuild its model.

Every command (``fit --ckpt_path``, ``validate``, ``test``, ``predict``, ``serve``, ``export``), the notebook helpers
and the results script come through here, so a checkpoint is judged the same way everywhere:

- it is read with ``weights_only=True`` (tensors and plain data, no arbitrary unpickling);
- it must hold a ``state_dict`` and the ``_class_path`` that LightningCLI records for the model;
- the class it names is looked up among the classifiers this package defines (or a class path the user gave
  explicitly) *before* anything is imported, so a file can never make Python import a module of its choosing;
- the settings it holds are checked against that class's signature, so a checkpoint from another version gets one
  line naming the unknown settings instead of a parser error;
- the model itself is rebuilt by Lightning's own ``load_from_checkpoint``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mnist_lightning.checkpoint_paths import LAST_NAME, check_checkpoint_file
from mnist_lightning.data.files import missing_raw_files
from mnist_lightning.errors import CheckpointError
from mnist_lightning.models import MNISTClassifier

# keys that the CLI adds to every checkpoint: the run it belongs to, and the metrics when it was saved
RUN_ID_KEY = "wandb_run_id"
METRICS_KEY = "metrics"
# data settings that belong to the machine or the command, not to the trained model
MACHINE_DATA_SETTINGS = ("data_dir", "predict_images")
LIGHTNING_VERSION_KEY = "pytorch-lightning_version"  # every checkpoint Lightning writes has it; its loader needs it
RUN_ID = re.compile(r"[a-z0-9]{8}")


def classifier_classes() -> list[type[MNISTClassifier]]:
    """Every concrete classifier this package defines (what ``--model`` accepts by name)."""
    found, todo = [], [MNISTClassifier]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls is not MNISTClassifier and cls.__module__.startswith("mnist_lightning."):
            found.append(cls)
    return sorted(found, key=lambda cls: cls.__name__)


def known_class_paths() -> dict[str, type[MNISTClassifier]]:
    """Class path → class, for every spelling LightningCLI may record: jsonargparse writes the shortest import path
    (``mnist_lightning.MLPClassifier``), older runs wrote ``mnist_lightning.models.MLPClassifier`` or the module."""
    paths: dict[str, type[MNISTClassifier]] = {}
    for cls in classifier_classes():
        for package in (cls.__module__, "mnist_lightning.models", "mnist_lightning"):
            paths[f"{package}.{cls.__name__}"] = cls
    return paths


def find_last(*roots: str | Path) -> Path | None:
    """The most recently written ``last.ckpt`` (or ``last-vN.ckpt``) anywhere under any of ``roots``, or None.

    ``--ckpt_path last`` means the run that was interrupted, not the (empty) folder of a new run: every run has its
    own ``<root>/<project>/<run id>/checkpoints``.
    """
    found = [
        path
        for root in map(Path, roots)
        for path in (root.rglob("last*.ckpt") if root.is_dir() else [])
        if LAST_NAME.fullmatch(path.name) and path.is_file()
    ]
    return max(found, key=lambda path: path.stat().st_mtime, default=None)


def resolve_last(roots: Iterable[str | Path], fix: str) -> Path:
    """``--ckpt_path last`` for every command: the newest last checkpoint under ``roots`` (see :func:`find_last`), or
    a one-line :class:`CheckpointError` that names where it looked and ends with ``fix``."""
    roots = list(roots)
    found = find_last(*roots)
    if found is None:
        raise CheckpointError(f"--ckpt_path last: no last.ckpt under {searched(roots)}; {fix}")
    return found


def searched(roots: Iterable[str | Path]) -> str:
    """The folders ``--ckpt_path last`` looked in, for a message: ``runs or out``."""
    return " or ".join(dict.fromkeys(str(Path(root)) for root in roots))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's tensors and plain data (``weights_only``), or a one-line :class:`CheckpointError` that says
    what the path is instead (see :func:`check_checkpoint_file`)."""
    path = Path(path)
    check_checkpoint_file(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises many types for a damaged or foreign file; all mean the same here
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in reason or "Unsupported global" in reason:
            reason = "it holds Python objects other than tensors and plain data, which are not loaded for safety"
        raise CheckpointError(
            f"checkpoint {path} could not be read ({reason[:200]}); it is truncated or not a Lightning checkpoint"
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {path} is not a Lightning checkpoint (no state_dict)")
    if LIGHTNING_VERSION_KEY not in checkpoint:
        raise CheckpointError(
            f"checkpoint {path} was not written by Lightning (no {LIGHTNING_VERSION_KEY}); load its weights into a "
            "model yourself with load_state_dict"
        )
    return checkpoint


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint written by ``mnist-lightning fit`` holds, apart from the weights."""

    path: Path
    class_path: str
    model_settings: dict[str, Any]
    data_settings: dict[str, Any]
    run_id: str | None  # the run's folder name (W&B's run id when W&B was on)
    wandb_run_id: str | None  # the W&B run that trained it, when W&B was on
    metrics: dict[str, float] = field(default_factory=dict)
    epoch: int | None = None
    global_step: int | None = None
    trained_data_dir: str | None = None  # the data folder `fit` read (a machine's path: see data_dir_to_evaluate)

    @property
    def class_name(self) -> str:
        return self.class_path.rsplit(".", 1)[-1]

    def describe(self) -> str:
        """``MLPClassifier(hidden_sizes=[128, 64], ...)``: the classifier and its settings, in one line."""
        settings = ", ".join(f"{key}={value!r}" for key, value in self.model_settings.items())
        return f"{self.class_name}({settings})"


def inspect_checkpoint(path: str | Path, checkpoint: dict[str, Any] | None = None) -> CheckpointInfo:
    """Read ``path`` (unless its contents are given) and check that ``mnist-lightning fit`` wrote it."""
    path = Path(path)
    checkpoint = read_checkpoint(path) if checkpoint is None else checkpoint
    hparams = checkpoint.get("hyper_parameters")
    class_path = hparams.get("_class_path") if isinstance(hparams, dict) else None
    if not isinstance(class_path, str) or not class_path:
        raise CheckpointError(
            f"checkpoint {path} names no model class; it was not written by mnist-lightning fit "
            "(load its weights into a model yourself with load_state_dict)"
        )
    model_settings = {key: value for key, value in hparams.items() if not key.startswith("_")}
    data = checkpoint.get("datamodule_hyper_parameters")
    data_settings = (
        {k: v for k, v in data.items() if not k.startswith("_") and k not in MACHINE_DATA_SETTINGS}
        if isinstance(data, dict)
        else {}
    )
    wandb_run_id = checkpoint.get(RUN_ID_KEY)
    run_id = wandb_run_id
    if not run_id:  # older files: the run id is the name of the folder above checkpoints/
        folder = path.parent.parent.name if path.parent.name == "checkpoints" else ""
        run_id = folder if RUN_ID.fullmatch(folder) else None
    metrics = checkpoint.get(METRICS_KEY)
    return CheckpointInfo(
        path=path,
        class_path=class_path,
        model_settings=model_settings,
        data_settings=data_settings,
        run_id=str(run_id) if run_id else None,
        wandb_run_id=str(wandb_run_id) if wandb_run_id else None,
        metrics={str(k): float(v) for k, v in metrics.items()} if isinstance(metrics, dict) else {},
        epoch=int(checkpoint["epoch"]) if "epoch" in checkpoint else None,
        global_step=int(checkpoint["global_step"]) if "global_step" in checkpoint else None,
        trained_data_dir=(str(data["data_dir"]) if isinstance(data, dict) and data.get("data_dir") else None),
    )


def data_dir_to_evaluate(info: CheckpointInfo, given: str | Path | None = None) -> str | None:
    """The data folder a command that evaluates ``info``'s checkpoint reads: the one the user ``given``, else the
    one the checkpoint was trained on while that folder still holds MNIST's raw files, else None (the default:
    ``$MNIST_LIGHTNING_DATA_DIR`` or ``./data``).

    The trained folder is a path on the machine that trained it; on another machine, or once it is gone, it means
    nothing, so it is only used where it still holds the four files.
    """
    if given:
        return str(given)
    if info.trained_data_dir and not missing_raw_files(info.trained_data_dir):
        return info.trained_data_dir
    return None


def classifier_class(info: CheckpointInfo, trusted: Iterable[str] = ()) -> type[MNISTClassifier]:
    """The class a checkpoint names, found among this package's classifiers or the ``trusted`` class paths.

    Nothing is imported for a class path that is neither: a checkpoint cannot choose what Python imports.
    """
    known = known_class_paths()
    if info.class_path in known:
        return known[info.class_path]
    if info.class_path in set(trusted):
        module_name, _, class_name = info.class_path.rpartition(".")
        try:
            cls = getattr(__import__(module_name, fromlist=[class_name]), class_name)
        except (ImportError, AttributeError) as err:
            raise CheckpointError(
                f"checkpoint {info.path} holds {info.class_path}, which cannot be imported here ({err})"
            ) from None
        if isinstance(cls, type) and issubclass(cls, MNISTClassifier):
            return cls
        raise CheckpointError(f"checkpoint {info.path} names {info.class_path}, which is not an MNISTClassifier")
    names = ", ".join(cls.__name__ for cls in classifier_classes())
    raise CheckpointError(
        f"checkpoint {info.path} holds the model class {info.class_path}, which this version of mnist-lightning "
        f"does not have (renamed, removed, or from another project); use the mnist-lightning version that trained "
        f"it, or pass the model's full class path with --model if you trust it (classifiers here: {names})"
    )


def check_settings(info: CheckpointInfo, cls: type[MNISTClassifier]) -> None:
    """Refuse, naming them, model settings that ``cls`` does not take (a checkpoint from another version)."""
    refuse_unknown(info, info.model_settings, accepted_settings(cls), prefix="", owner=f" for {cls.__name__}")


def check_data_settings(info: CheckpointInfo, known: Iterable[str]) -> None:
    """Refuse, naming them, data settings the data module does not take."""
    refuse_unknown(info, info.data_settings, set(known), prefix="data.", owner="")


def refuse_unknown(info: CheckpointInfo, settings: dict[str, Any], known: set[str], prefix: str, owner: str) -> None:
    unknown = [key for key in settings if key not in known]
    if unknown:
        given = ", ".join(f"{prefix}{key}={settings[key]!r}" for key in unknown)
        raise CheckpointError(
            f"checkpoint {info.path} sets {given}{owner}, which this version of mnist-lightning does not know; "
            "use the mnist-lightning version that trained it"
        )


def accepted_settings(cls: type) -> set[str]:
    """The keyword arguments ``cls`` takes, following ``**kwargs`` up to the base classes that take them."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters
        names |= {
            name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD
        }
        if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            break
    return names - {"self"}


def load_classifier(
    path: str | Path, map_location: str | torch.device = "cpu", trusted: Iterable[str] = ()
) -> MNISTClassifier:
    """The classifier stored in ``path``, checked first and then rebuilt by Lightning's ``load_from_checkpoint``,
    in eval mode. ``MLPClassifier.load_from_checkpoint(path)`` does the same when you know the class."""
    info = inspect_checkpoint(path)
    cls = classifier_class(info, trusted)
    check_settings(info, cls)
    try:
        model = cls.load_from_checkpoint(info.path, map_location=map_location, weights_only=True)
    except (RuntimeError, TypeError, ValueError) as err:  # shapes or settings that no longer fit the class
        reason = str(err).strip().splitlines()[0][:300]
        raise CheckpointError(
            f"checkpoint {info.path} does not fit {cls.__name__} ({reason}); "
            "use the mnist-lightning version that trained it"
        ) from None
    return model.eval()


def check_model_fits(info: CheckpointInfo, model: torch.nn.Module, state_dict: dict[str, Any]) -> None:
    """Refuse, in one line naming both, a checkpoint whose architecture is not the one of ``model``."""
    given_class = type(model).__name__
    saved_shapes = {k: tuple(v.shape) for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    given_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if info.class_name == given_class and saved_shapes == given_shapes:
        return
    fix = "leave out --model and the model config to use the checkpoint's own, or pass a checkpoint of this model"
    if info.class_name != given_class:
        raise CheckpointError(
            f"checkpoint {info.path} holds a {info.class_name}, but the model given is a {given_class}; {fix}"
        )
    given = {k: v for k, v in getattr(model, "hparams", {}).items() if not k.startswith("_")}
    differ = sorted(k for k in info.model_settings.keys() | given.keys() if info.model_settings.get(k) != given.get(k))
    if differ:
        mine = ", ".join(f"{k}={info.model_settings.get(k)!r}" for k in differ)
        theirs = ", ".join(f"{k}={given.get(k)!r}" for k in differ)
        raise CheckpointError(
            f"checkpoint {info.path} holds {info.class_name}({mine}), but the model given is "
            f"{given_class}({theirs}); {fix}"
        )
    key = next(k for k in saved_shapes.keys() | given_shapes.keys() if saved_shapes.get(k) != given_shapes.get(k))
    raise CheckpointError(
        f"checkpoint {info.path} does not fit {given_class}: {key} is {saved_shapes.get(key)} in the checkpoint and "
        f"{given_shapes.get(key)} in the model; {fix}"
    )


def artifact_metadata(path: str | Path) -> dict[str, Any]:
    """Epoch, step and metrics recorded in a checkpoint, as plain numbers for W&B model-artifact metadata."""
    info = inspect_checkpoint(path)
    metadata: dict[str, Any] = {"file": Path(path).name}
    if info.epoch is not None:
        metadata["epoch"] = info.epoch
    if info.global_step is not None:
        metadata["global_step"] = info.global_step
    metadata.update(info.metrics)
    return metadata
