"""The callbacks of a run: checkpointing that survives interruptions, the loss guard, the prediction writer, the
training timer, the model summary and the training media. The CLI adds them; ``TrainTimer`` is the one presets name
in YAML."""

from mnist_lightning.callbacks.checkpointing import (
    AtomicCheckpointIO,
    ResumableCheckpoint,
    RunBusyError,
    RunLock,
    interrupted_by,
)
from mnist_lightning.callbacks.learning_curves import LearningCurves
from mnist_lightning.callbacks.loss_guard import FiniteLossGuard, NonFiniteLossError
from mnist_lightning.callbacks.media import MediaLogger, TrainingDigits, ValidationFigures
from mnist_lightning.callbacks.predictions import DistributedPredictError, PredictionWriter, require_single_process
from mnist_lightning.callbacks.summary import ModelSummaryWithFlops
from mnist_lightning.callbacks.timing import TrainTimer, synchronize

__all__ = [
    "AtomicCheckpointIO",
    "DistributedPredictError",
    "FiniteLossGuard",
    "LearningCurves",
    "MediaLogger",
    "ModelSummaryWithFlops",
    "NonFiniteLossError",
    "PredictionWriter",
    "ResumableCheckpoint",
    "RunBusyError",
    "RunLock",
    "TrainTimer",
    "TrainingDigits",
    "ValidationFigures",
    "interrupted_by",
    "require_single_process",
    "synchronize",
]
