"""Figures of the data and of what the model does, logged to W&B by a callback and written as PNG files.

The PNG files go to ``<run dir>/media/`` (next to ``checkpoints/``), so people who do not use W&B see them too.
Figures are drawn with matplotlib's object API on the Agg canvas: no pyplot, no GUI, no global backend change.

ViT-style models opt in to attention plots with one method::

    def attention_maps(self, images: Tensor) -> Tensor:  # (blocks, batch, heads, tokens, tokens)

(a list of per-block ``(batch, heads, tokens, tokens)`` tensors works too); the last block is plotted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from matplotlib.figure import Figure
from torch import Tensor

from mnist_lightning.errors import ConfigError
from mnist_lightning.figures import save_png
from mnist_lightning.runs import run_directory

NUM_CLASSES = 10


def digit_grid(
    images: Tensor, titles: Sequence[str], colors: Sequence[str] | None = None, ncols: int = 8, title: str = ""
) -> Figure:
    """A grid of ``(N, 1, H, W)`` or ``(N, H, W)`` images, each titled (and optionally colored).

    The images are tiled into one picture on a single axes (far cheaper to draw than one axes per image).
    """
    images = images.detach().float().cpu().reshape(len(images), *images.shape[-2:])
    count, height, width = images.shape
    ncols = max(1, min(ncols, count))
    nrows = max(1, -(-count // ncols))
    lines = max((t.count("\n") + 1 for t in titles), default=1)
    pad, title_space = 2, 4 * lines + 2  # in image pixels
    cell_h, cell_w = height + title_space + pad, width + pad
    canvas = torch.full((nrows * cell_h, ncols * cell_w), float("nan"))
    for i, image in enumerate(images):
        low, high = image.min(), image.max()
        scaled = (image - low) / (high - low) if high > low else torch.zeros_like(image)
        row, col = divmod(i, ncols)
        top, left = row * cell_h + title_space, col * cell_w
        canvas[top : top + height, left : left + width] = scaled
    scale = 0.05  # inches per image pixel
    fig = Figure(figsize=(canvas.shape[1] * scale, canvas.shape[0] * scale + (0.35 if title else 0.05)))
    ax = fig.add_axes((0, 0, 1, canvas.shape[0] * scale / fig.get_figheight()))
    ax.imshow(canvas.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_facecolor("white")
    ax.set_axis_off()
    for i, text in enumerate(titles[:count]):
        row, col = divmod(i, ncols)
        color = colors[i] if colors else "black"
        x, y = col * cell_w + width / 2, row * cell_h + title_space - 1
        ax.text(x, y, text, ha="center", va="bottom", fontsize=7 if lines > 1 else 8, color=color)
    if title:
        fig.suptitle(title, y=1 - 0.02 / fig.get_figheight(), va="top", fontsize=10)
    return fig


def confusion_matrix(predicted: Tensor, true: Tensor, num_classes: int = NUM_CLASSES) -> Tensor:
    """Counts ``(true, predicted)`` as a ``(num_classes, num_classes)`` int64 matrix."""
    flat = true.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def confusion_matrix_figure(matrix: Tensor, title: str = "") -> Figure:
    """The confusion matrix with its counts written in the cells (rows: true digit, columns: predicted)."""
    matrix = matrix.cpu()
    fig = Figure(figsize=(6, 5.4))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.1, top=0.93)
    ax = fig.subplots()
    shown = ax.imshow(matrix.numpy(), cmap="Blues")
    fig.colorbar(shown, ax=ax, shrink=0.8)
    n = matrix.shape[0]
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)
    threshold = matrix.max().item() / 2
    for t in range(n):
        for p in range(n):
            count = matrix[t, p].item()
            if count:
                color = "white" if count > threshold else "black"
                ax.text(p, t, str(count), ha="center", va="center", fontsize=7, color=color)
    return fig


def token_labels(tokens: int) -> list[str]:
    """Names of the tokens of an attention map: ``c`` for the class token (token 0), then the patches from 1."""
    return ["c"] + [str(i) for i in range(1, tokens)]


def _token_ticks(tokens: int) -> list[int]:
    # the class token, then the last patch of every patch row (c, 4, 8, 12, 16 for a 4×4 grid), about 5 ticks
    if tokens < 2:
        return list(range(tokens))
    side = math.isqrt(tokens - 1)
    step = side * max(1, -(-side // 4)) if side * side == tokens - 1 else max(1, -(-(tokens - 1) // 4))
    return [0, *range(step, tokens, step)]


def attention_figure(images: Tensor, attention: Tensor, title: str = "") -> Figure:
    """One row per image: the image, then every head's ``tokens × tokens`` attention ``(batch, heads, T, T)``.

    In each matrix the rows are the query tokens and the columns the key tokens (``c``, token 0, is the class token;
    1, 2, ... the patches row by row), so every row sums to 1. Heads are numbered from 1, as in the notebooks and
    the drawing page. All matrices share one colour scale, from 0 to the largest weight shown, with its colour bar
    on the right.
    """
    images = images.detach().float().cpu().reshape(len(images), *images.shape[-2:])
    attention = attention.detach().float().cpu()
    batch, heads, tokens = attention.shape[:3]
    vmax = float(attention.max()) if attention.numel() else 1.0
    width, height = 1.6 * (heads + 1) + 1.1, 1.7 * batch + 1.2  # inches: +colour bar, +titles and axis labels
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(batch, heads + 1, squeeze=False)
    top, bottom = 1 - 0.75 / height, 0.45 / height
    fig.subplots_adjust(left=0.2 / width, right=1 - 1.0 / width, bottom=bottom, top=top, wspace=0.25, hspace=0.3)
    ticks = _token_ticks(tokens)
    names = token_labels(tokens)
    shown = None
    for b in range(batch):
        axes[b, 0].imshow(images[b].numpy(), cmap="gray")
        axes[b, 0].set_axis_off()
        if b == 0:
            axes[b, 0].set_title("input", fontsize=9)
        for h in range(heads):
            ax = axes[b, h + 1]
            shown = ax.imshow(attention[b, h].numpy(), cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
            # tick labels and axis labels only along the left column of heads and the bottom row, as in a grid plot
            ax.set_xticks(ticks, [names[t] for t in ticks] if b == batch - 1 else [])
            ax.set_yticks(ticks, [names[t] for t in ticks] if h == 0 else [])
            ax.tick_params(labelsize=6, length=2, pad=1)
            if b == 0:
                ax.set_title(f"head {h + 1}", fontsize=9)
            if b == batch - 1:
                ax.set_xlabel("key token", fontsize=8, labelpad=1)
            if h == 0:
                ax.set_ylabel("query token", fontsize=8, labelpad=1)
    if shown is not None:
        bar_axes = fig.add_axes((1 - 0.8 / width, bottom, 0.12 / width, top - bottom))
        bar = fig.colorbar(shown, cax=bar_axes)
        bar.set_label("attention probability", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    note = f"rows: query tokens, columns: key tokens (c: class token, 1–{tokens - 1}: patches row by row)"
    fig.suptitle(f"{title}\n{note}" if title else note, fontsize=9, y=1 - 0.08 / height, va="top")
    return fig


def learning_curves_figure(curves: dict[str, list[tuple[int, float]]]) -> Figure:
    """Train and validation loss, and validation accuracy, against the training step."""
    fig = Figure(figsize=(10, 4))
    loss_ax, acc_ax = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.92, wspace=0.25)
    for key, label in (("train/loss", "train"), ("val/loss", "validation")):
        if curves.get(key):
            steps, values = zip(*curves[key])
            loss_ax.plot(steps, values, marker="o", label=label)
    loss_ax.set(xlabel="training step", ylabel="cross-entropy loss", title="loss")
    loss_ax.legend()
    if curves.get("val/acc"):
        steps, values = zip(*curves["val/acc"])
        acc_ax.plot(steps, values, marker="o", color="tab:green")
    acc_ax.set(xlabel="training step", ylabel="accuracy", title="validation accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
    return fig


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
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.num_val_images = num_val_images
        self.num_shown = num_shown
        self.num_worst = num_worst
        self.num_attention_images = num_attention_images
        self.curves: dict[str, list[tuple[int, float]]] = {"train/loss": [], "val/loss": [], "val/acc": []}
        self.written: list[Path] = []
        self._reset_batch_buffers()

    def _reset_batch_buffers(self) -> None:
        self._images: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._probs: list[Tensor] = []
        self._attention: tuple[Tensor, Tensor, int] | None = None  # images, last block's maps, number of blocks

    # --- where figures go -------------------------------------------------------------------------------------
    def _emit(self, trainer: L.Trainer, key: str, fig: Figure, filename: str, caption: str = "") -> None:
        path = save_png(fig, Path(run_directory(trainer)) / "media" / filename)
        self.written.append(path)
        wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if wandb_loggers:
            import wandb

            for logger in wandb_loggers:
                image = wandb.Image(str(path), caption=caption or None)
                logger.experiment.log({key: image, "trainer/global_step": trainer.global_step})

    def _due(self, trainer: L.Trainer) -> bool:
        return (
            self.enabled
            and trainer.is_global_zero
            and not trainer.sanity_checking
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        )

    # --- fit start: the data ----------------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self.enabled and trainer.is_global_zero and self.num_samples > 0) or trainer.datamodule is None:
            return
        if trainer.ckpt_path:
            return  # a resumed run already has its grid of training digits
        images, labels = first_images(trainer.datamodule.train_dataloader(), self.num_samples)
        if len(labels):
            fig = digit_grid(images, [str(int(label)) for label in labels], title="training digits (label)")
            self._emit(trainer, "media/train_samples", fig, "train_samples.png", "training digits with their labels")

    # --- validation: what the model does ----------------------------------------------------------------------
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
                self._validation_figures(trainer)
        finally:
            self._reset_batch_buffers()

    def _validation_figures(self, trainer: L.Trainer) -> None:
        images, labels, probs = torch.cat(self._images), torch.cat(self._labels), torch.cat(self._probs)
        predicted = probs.argmax(dim=1)
        epoch = trainer.current_epoch
        tag = f"epoch{epoch:03d}"
        accuracy = (predicted == labels).float().mean().item()

        matrix = confusion_matrix(predicted, labels, probs.shape[1])
        title = f"epoch {epoch}: {len(labels)} validation images, accuracy {accuracy:.2%}"
        self._emit(
            trainer, "media/confusion_matrix", confusion_matrix_figure(matrix, title), f"confusion_matrix-{tag}.png"
        )

        n = min(self.num_shown, len(labels))
        titles = [f"{p} ({t})" for p, t in zip(predicted[:n].tolist(), labels[:n].tolist())]
        colors = ["black" if p == t else "red" for p, t in zip(predicted[:n].tolist(), labels[:n].tolist())]
        fig = digit_grid(images[:n], titles, colors, title=f"epoch {epoch}: predicted (true)")
        self._emit(trainer, "media/val_predictions", fig, f"val_predictions-{tag}.png", "predicted (true)")

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
            self._emit(trainer, "media/val_worst", fig, f"val_worst-{tag}.png", "most confident mistakes")
            self._log_worst_table(trainer, images, rows)

        if self._attention is not None:
            shown, attention, blocks = self._attention
            title = f"epoch {epoch}: attention of every head in block {blocks} of {blocks} (the last)"
            self._emit(trainer, "media/attention", attention_figure(shown, attention, title), f"attention-{tag}.png")

    def _log_worst_table(self, trainer: L.Trainer, images: Tensor, rows: list[tuple[int, int, int, float, float]]):
        wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if not wandb_loggers:
            return
        import wandb

        columns = ["image", "predicted", "true", "p(predicted)", "p(true)"]
        data = [[wandb.Image(to_uint8(images[i])), p, t, pp, pt] for i, p, t, pp, pt in rows]
        for logger in wandb_loggers:
            table = wandb.Table(columns=columns, data=data)
            logger.experiment.log({"media/val_worst_table": table, "trainer/global_step": trainer.global_step})

    # --- learning curves --------------------------------------------------------------------------------------
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        for key in ("val/loss", "val/acc"):
            if key in trainer.callback_metrics:
                self.curves[key].append((trainer.global_step, float(trainer.callback_metrics[key])))

    def _record_train_loss(self, trainer: L.Trainer) -> None:
        # the model logs train/loss in its own on_train_epoch_end, which runs after the callbacks' one: the value
        # of an epoch is read when the next epoch starts, and at the end of fit for the last one
        points = self.curves["train/loss"]
        value = trainer.callback_metrics.get("train/loss")
        if value is not None and (not points or points[-1][0] != trainer.global_step):
            points.append((trainer.global_step, float(value)))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record_train_loss(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record_train_loss(trainer)
        if self.enabled and trainer.is_global_zero and any(self.curves.values()):
            fig = learning_curves_figure(self.curves)
            self._emit(trainer, "media/learning_curves", fig, "learning_curves.png", "loss and validation accuracy")

    def state_dict(self) -> dict[str, Any]:
        # kept in checkpoints so that the curves of a resumed run start at its beginning
        return {"curves": {key: [list(point) for point in points] for key, points in self.curves.items()}}

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # The checkpoint of an epoch's end is written after its validation, before the model logs the epoch's
        # train/loss (in its on_train_epoch_end): that point is not in the curves yet, and a run resumed from this
        # checkpoint would never see it logged. The checkpoint's copy of the curves gets it from the model's sums.
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        point = self._unlogged_train_point(trainer, pl_module)
        if point is not None and isinstance(state, dict):
            state["curves"]["train/loss"].append(list(point))

    def _unlogged_train_point(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[int, float] | None:
        """(step, mean training loss) of an epoch whose batches have all run but whose loss is not recorded yet.

        Read from ``pl_module.train_sums`` (the per-epoch sums of :class:`MNISTClassifier`; other modules get no
        such point); under DDP it is this rank's mean, close to the all-rank mean the model logs.
        """
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return None
        progress = trainer.fit_loop.epoch_loop.batch_progress
        if not (progress.is_last_batch or progress.current.ready >= trainer.num_training_batches):
            return None  # a checkpoint in the middle of an epoch: the resumed run logs the whole epoch's loss
        points = self.curves["train/loss"]
        if points and points[-1][0] == trainer.global_step:
            return None
        sums = getattr(pl_module, "train_sums", None)
        count = getattr(sums, "count", 0)
        if not count:
            return None
        return trainer.global_step, float(sums.loss / count)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key, points in state_dict.get("curves", {}).items():
            self.curves[key] = [(int(step), float(value)) for step, value in points]


def to_uint8(image: Tensor) -> Any:
    """A ``(1, H, W)`` or ``(H, W)`` image of any range as a uint8 ``(H, W)`` array spanning 0..255."""
    image = image.detach().float().cpu().reshape(image.shape[-2:])
    low, high = image.min(), image.max()
    scaled = (image - low) / (high - low) if high > low else torch.zeros_like(image)
    return (scaled * 255).round().to(torch.uint8).numpy()


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
