"""Training media: figures of the data and of what the model does, written as PNG under ``<run dir>/media/``
(next to ``checkpoints/``, for people who do not use W&B) and logged to W&B.

:class:`MediaLogger` (the CLI's ``--media.*`` settings) is made of three small callbacks: :class:`TrainingDigits`
at fit start, :class:`ValidationFigures` after validation epochs and
:class:`~mnist_lightning.callbacks.learning_curves.LearningCurves` at fit end. The figures themselves are drawn by
:mod:`mnist_lightning.figures`.

ViT-style models opt in to attention plots with one method::

    def attention_maps(self, images: Tensor) -> Tensor:  # (blocks, batch, heads, tokens, tokens)

(a list of per-block ``(batch, heads, tokens, tokens)`` tensors works too); the last block is plotted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from matplotlib.figure import Figure
from torch import Tensor

from mnist_lightning.callbacks.learning_curves import LearningCurves
from mnist_lightning.callbacks.publishing import publish, wandb_loggers
from mnist_lightning.errors import ConfigError
from mnist_lightning.figures.digits import digit_grid, to_uint8
from mnist_lightning.figures.training import attention_figure, confusion_matrix, confusion_matrix_figure


def first_images(loader: Any, count: int) -> tuple[Tensor, Tensor]:
    """The first ``count`` (images, labels) a dataloader yields."""
    images, labels, seen = [], [], 0
    for batch in loader:
        images.append(batch[0][: count - seen])
        labels.append(batch[1][: count - seen])
        seen += len(labels[-1])
        if seen >= count:
            break
    if not labels:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(images), torch.cat(labels)


class TrainingDigits(Callback):
    """At the start of a new fit (not a resumed one): ``train_samples.png``, the first ``num_samples`` training
    digits titled with their labels."""

    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples
        self.written: list[Path] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (trainer.is_global_zero and self.num_samples > 0) or trainer.datamodule is None:
            return
        if trainer.ckpt_path:
            return  # a resumed run already has its grid of training digits
        images, labels = first_images(trainer.datamodule.train_dataloader(), self.num_samples)
        if len(labels):
            fig = digit_grid(images, [str(int(label)) for label in labels], title="training digits (label)")
            caption = "training digits with their labels"
            self.written.append(publish(trainer, "media/train_samples", fig, "train_samples.png", caption))


class ValidationFigures(Callback):
    """Every ``every_n_epochs`` validation epochs, on the first ``num_val_images`` validation images (one extra
    forward pass over them): ``confusion_matrix``, ``val_predictions`` (titled "predicted (true)"), ``val_worst``
    (the ``num_worst`` most confident mistakes with their probabilities, also a W&B table) and, for models with
    ``attention_maps(images)``, ``attention`` (every head of the last block for ``num_attention_images`` images),
    each as ``<name>-epochNNN.png``. The sanity check draws nothing."""

    def __init__(
        self, *, every_n_epochs: int, num_val_images: int, num_shown: int, num_worst: int, num_attention_images: int
    ) -> None:
        self.every_n_epochs = every_n_epochs
        self.num_val_images = num_val_images
        self.num_shown = num_shown
        self.num_worst = num_worst
        self.num_attention_images = num_attention_images
        self.written: list[Path] = []
        self._reset_batch_buffers()

    def _reset_batch_buffers(self) -> None:
        self._images: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._probs: list[Tensor] = []
        self._attention: tuple[Tensor, Tensor, int] | None = None  # images, last block's maps, number of blocks

    def _due(self, trainer: L.Trainer) -> bool:
        return (
            trainer.is_global_zero
            and not trainer.sanity_checking
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        )

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        collected = sum(len(labels) for labels in self._labels)
        if not self._due(trainer) or dataloader_idx != 0 or collected >= self.num_val_images:
            return
        images, labels = batch[0], batch[1]
        take = min(len(labels), self.num_val_images - collected)
        images, labels = images[:take], labels[:take]
        self._images.append(images.detach().float().cpu())
        self._labels.append(labels.detach().cpu())
        # the same precision (autocast, half weights) the validation step itself runs under
        precision = trainer.precision_plugin
        with precision.val_step_context():
            model_input = precision.convert_input(images)
            self._probs.append(pl_module(model_input).detach().float().softmax(dim=1).cpu())
            attention_maps = getattr(pl_module, "attention_maps", None)
            if callable(attention_maps) and self._attention is None and self.num_attention_images > 0:
                maps = attention_maps(model_input[: self.num_attention_images])
                shown = images[: self.num_attention_images].detach().cpu()
                self._attention = (shown, maps[-1].detach().float().cpu(), len(maps))  # the last block

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._labels:
            return
        try:
            if self._due(trainer):
                self._draw(trainer)
        finally:
            self._reset_batch_buffers()

    def _draw(self, trainer: L.Trainer) -> None:
        images, labels, probs = torch.cat(self._images), torch.cat(self._labels), torch.cat(self._probs)
        predicted = probs.argmax(dim=1)
        epoch = trainer.current_epoch
        tag = f"epoch{epoch:03d}"
        accuracy = (predicted == labels).float().mean().item()

        def emit(name: str, fig: Figure, caption: str = "") -> None:
            self.written.append(publish(trainer, f"media/{name}", fig, f"{name}-{tag}.png", caption))

        matrix = confusion_matrix(predicted, labels, probs.shape[1])
        title = f"epoch {epoch}: {len(labels)} validation images, accuracy {accuracy:.2%}"
        emit("confusion_matrix", confusion_matrix_figure(matrix, title))

        n = min(self.num_shown, len(labels))
        pairs = list(zip(predicted[:n].tolist(), labels[:n].tolist()))
        titles, colors = [f"{p} ({t})" for p, t in pairs], ["black" if p == t else "red" for p, t in pairs]
        fig = digit_grid(images[:n], titles, colors, title=f"epoch {epoch}: predicted (true)")
        emit("val_predictions", fig, "predicted (true)")

        wrong = (predicted != labels).nonzero().flatten()
        if len(wrong):
            confidence = probs[wrong, predicted[wrong]]
            worst = wrong[confidence.argsort(descending=True)[: self.num_worst]]
            rows = [
                (int(i), int(predicted[i]), int(labels[i]), probs[i, predicted[i]].item(), probs[i, labels[i]].item())
                for i in worst.tolist()
            ]
            titles = [f"{p} ({t})\np={pp:.2f}, p(true)={pt:.2f}" for _, p, t, pp, pt in rows]
            fig = digit_grid(images[worst], titles, ["red"] * len(rows), title=f"epoch {epoch}: worst mistakes")
            emit("val_worst", fig, "most confident mistakes")
            self._log_worst_table(trainer, images, rows)

        if self._attention is not None:
            shown, attention, blocks = self._attention
            title = f"epoch {epoch}: attention of every head in block {blocks} of {blocks} (the last)"
            emit("attention", attention_figure(shown, attention, title))

    @staticmethod
    def _log_worst_table(trainer: L.Trainer, images: Tensor, rows: list[tuple[int, int, int, float, float]]) -> None:
        loggers = wandb_loggers(trainer)
        if not loggers:
            return
        import wandb

        columns = ["image", "predicted", "true", "p(predicted)", "p(true)"]
        data = [[wandb.Image(to_uint8(images[i])), p, t, pp, pt] for i, p, t, pp, pt in rows]
        for logger in loggers:
            logger.log_table("media/val_worst_table", columns=columns, data=data, step=trainer.global_step)


class MediaLogger(Callback):
    """Logs figures to W&B (images and a table) and writes them as PNG under ``<run dir>/media/``.

    - fit start: ``train_samples.png``, a grid of training digits titled with their labels;
    - every ``every_n_epochs`` validation epochs, on the first ``num_val_images`` validation images (one extra
      forward pass over them): ``confusion_matrix``, ``val_predictions`` (titled "predicted (true)"),
      ``val_worst`` (the most confident mistakes with their probabilities, also a W&B table) and, for models with
      ``attention_maps(images)``, ``attention`` (every head of the last block for a few images), each as
      ``<name>-epochNNN.png``;
    - fit end: ``learning_curves.png``, train and validation loss and validation accuracy.

    Args:
        enabled: ``false`` switches all of it off.
        every_n_epochs: draw the validation figures every this many epochs.
        num_samples: training digits in the fit-start grid.
        num_val_images: validation images the validation figures are computed on.
        num_shown: images in the "predicted (true)" grid.
        num_worst: misclassified images shown.
        num_attention_images: images whose attention maps are drawn.
    """

    def __init__(
        self,
        *,
        enabled: bool = True,
        every_n_epochs: int = 1,
        num_samples: int = 32,
        num_val_images: int = 512,
        num_shown: int = 16,
        num_worst: int = 16,
        num_attention_images: int = 2,
    ) -> None:
        if every_n_epochs < 1:
            raise ConfigError(f"media every_n_epochs must be at least 1, got {every_n_epochs}; use enabled: false")
        self.enabled = enabled
        # the curves are recorded (and kept in checkpoints) even when nothing is drawn: a run resumed with media
        # switched on draws them from its beginning
        self.learning_curves = LearningCurves(draw=enabled)
        self.parts: list[TrainingDigits | ValidationFigures | LearningCurves] = [self.learning_curves]
        if enabled:
            validation = ValidationFigures(
                every_n_epochs=every_n_epochs,
                num_val_images=num_val_images,
                num_shown=num_shown,
                num_worst=num_worst,
                num_attention_images=num_attention_images,
            )
            self.parts = [TrainingDigits(num_samples), validation, self.learning_curves]

    @property
    def curves(self) -> dict[str, list[tuple[int, float]]]:
        """(step, value) points of ``train/loss``, ``val/loss`` and ``val/acc`` so far."""
        return self.learning_curves.curves

    @property
    def written(self) -> list[Path]:
        """The PNG files written so far."""
        return [path for part in self.parts for path in part.written]

    # Lightning calls the hooks of the callbacks it was given: this one passes each on to its parts
    def _each(self, hook: str, *args: Any) -> None:
        for part in self.parts:
            getattr(part, hook)(*args)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._each("on_fit_start", trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._each("on_train_epoch_start", trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._each("on_train_batch_end", trainer, pl_module, *args)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._each("on_validation_batch_end", trainer, pl_module, *args)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._each("on_validation_epoch_end", trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._each("on_validation_end", trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._each("on_fit_end", trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        self.learning_curves.complete_saved_state(state, trainer, pl_module)

    # the state (kept in checkpoints under this callback's name, "MediaLogger") is the curves'
    def state_dict(self) -> dict[str, Any]:
        return self.learning_curves.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.learning_curves.load_state_dict(state_dict)
