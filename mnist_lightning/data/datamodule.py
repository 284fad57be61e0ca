"""The LightningDataModule: MNIST split into seeded train/validation sets and the official test set, served as batches
sliced on the device and turned into model input (augmented for training) after the transfer."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch import Tensor

from mnist_lightning.data.files import default_data_dir, ensure_mnist, load_checked_splits
from mnist_lightning.data.loader import ShardedBatchOrder, TensorBatchLoader, trained_batches
from mnist_lightning.data.settings import check_settings, resolve_eval_batch_size, resolve_val_size
from mnist_lightning.data.transforms import augment_uint8, normalize_uint8


def split_indices(num_samples: int, val_size: int | float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded, disjoint (train, validation) index sets; ``val_size`` as in :func:`resolve_val_size`."""
    num_val = resolve_val_size(num_samples, val_size)
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    return order[num_val:], order[:num_val]


class MNISTDataModule(L.LightningDataModule):
    """MNIST with a seeded train/validation split of the 60,000 training images and the official 10,000 test images.

    Every setting is checked when the module is built: a bad one raises :class:`ConfigError` naming it as a
    user writes it (``data.eval_batch_size``) and a value that works.

    The images are decoded once into uint8 tensors; batches are index slices, moved to the device as uint8 and
    scaled, normalized and (training only, if ``augment``) randomly transformed there.

    Args:
        data_dir: folder with ``MNIST/raw/*-ubyte``, each file plain or as the ``.gz`` torchvision downloads (read
            in memory: the folder may be read-only); defaults to ``$MNIST_LIGHTNING_DATA_DIR`` or ``./data``.
        batch_size: images per batch, per process.
        eval_batch_size: images per batch for validation, test and predict, per process. ``"auto"`` (the default,
            also ``None``) is ``max(batch_size, 1000)``: evaluation keeps no gradients, so a larger batch is cheap in
            memory and several times faster than the training batch. On the CPU that holds for MLPs only: a
            convolutional or attention network evaluates there at its training batch, which measured up to twice
            as fast as 1,000 (see :meth:`eval_batch_size`). The metrics are means over all images, so they do not
            depend on it (up to float rounding of the loss).
        val_size: validation images taken from the training set: an int is a count (``5000``), a float a fraction
            strictly between 0 and 1 (``0.1``). A whole-number float such as ``1.0`` or ``5000.0`` is refused
            (write ``1`` or ``5000`` for a count).
        split_seed: seed of the train/validation split.
        shuffle_seed: seed of the per-epoch shuffle of the training batches.
        download: download MNIST through torchvision when it is missing.
        augment: random affine transform of training batches (never validation, test or predict).
        rotation: largest rotation in degrees for ``augment`` (0 to 180).
        translate: largest shift as a fraction of the image size for ``augment`` (0 to 1).
        scale: range ``[low, high]`` of the zoom factor for ``augment`` (0 < low <= high).
        elastic_alpha: with ``augment``, the strength in pixels of a random elastic deformation on top of the
            affine transform (0, the default, is off; 34 with ``elastic_sigma`` 4 is Simard et al.'s setting, which
            moves pixels by about 1–2 pixels).
        elastic_sigma: smoothness of the elastic deformation: the Gaussian's standard deviation in pixels.
        predict_split: which images ``predict`` runs on.
        on_device: keep the splits on the trainer's device so that every batch is an index slice there and
            Lightning's batch transfer has nothing to copy; ``auto`` does it on CUDA and MPS, not on the CPU.
        predict_images: image files or folders (PNG, JPEG, ...) that ``predict`` runs on instead of MNIST, each
            prepared like an MNIST digit (see :mod:`mnist_lightning.data.images`); a file that cannot be read
            gets a message and the others still run.
    """

    def __init__(
        self,
        *,
        data_dir: str | None = None,
        batch_size: int = 64,
        eval_batch_size: int | Literal["auto"] | None = "auto",
        val_size: int | float = 5000,
        split_seed: int = 42,
        shuffle_seed: int = 0,
        download: bool = True,
        augment: bool = False,
        rotation: float = 10.0,
        translate: float = 0.1,
        scale: tuple[float, float] = (0.9, 1.1),
        elastic_alpha: float = 0.0,
        elastic_sigma: float = 4.0,
        predict_split: Literal["train", "val", "test"] = "test",
        on_device: bool | Literal["auto"] = "auto",
        predict_images: list[str] | str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if data_dir:
            # recorded absolute in the checkpoint: validate/test/predict read the folder a model was trained on
            # again (checkpoints.data_dir_to_evaluate), maybe from another working folder
            self.hparams["data_dir"] = os.path.abspath(data_dir)
        check_settings(self.hparams)
        self.data_dir = Path(data_dir) if data_dir else default_data_dir()
        self.batch_size = batch_size
        self.eval_batch_setting = eval_batch_size
        self.val_size, self.split_seed, self.shuffle_seed = val_size, split_seed, shuffle_seed
        self.download = download
        self.augment = augment
        self.rotation, self.translate, self.scale = rotation, translate, scale
        self.elastic_alpha, self.elastic_sigma = elastic_alpha, elastic_sigma
        self.predict_split = predict_split
        self.on_device = on_device
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}
        self._resident: dict[str, tuple[Tensor, Tensor]] = {}
        self.predict_images = [predict_images] if isinstance(predict_images, str) else predict_images
        self.predict_files: list[Path] | None = None  # with predict_images: the files that were read, in order
        self.predict_failures: list[tuple[Path, str]] = []

    def _predicting_images(self) -> bool:
        return bool(self.predict_images) and self.trainer is not None and self.trainer.predicting

    def prepare_data(self) -> None:
        if not self._predicting_images():
            ensure_mnist(self.data_dir, download_if_missing=self.download)

    def setup(self, stage: str | None = None) -> None:
        if self._predicting_images():
            self._setup_images()
            return
        self.predict_files = None
        if "train" in self.splits:
            return
        official = load_checked_splits(self.data_dir)
        images, labels = official["train"]
        train_idx, val_idx = split_indices(len(images), self.val_size, self.split_seed)
        self.splits["train"] = (images[train_idx], labels[train_idx])
        self.splits["val"] = (images[val_idx], labels[val_idx])
        self.splits["test"] = official["test"]

    def _setup_images(self) -> None:
        from mnist_lightning.data.images import read_predict_images  # Pillow is imported only to predict images

        files, digits, failures = read_predict_images(self.predict_images)
        self.predict_files, self.predict_failures = files, failures
        self._resident.pop("images", None)
        images = torch.from_numpy(digits)
        self.splits["images"] = (images, torch.full((len(images),), -1, dtype=torch.long))

    @property
    def eval_batch_size(self) -> int:
        """The evaluation batch now: ``data.eval_batch_size``, or for ``"auto"`` the rule of
        :func:`~mnist_lightning.data.settings.resolve_eval_batch_size` for the trainer's device and model (a model
        class says whether large batches pay on the CPU: ``large_eval_batches_on_cpu``; without a trainer, they do).
        It is read when a loader is made, once the trainer knows both."""
        trainer = self.trainer
        large_batches_pay = True
        if trainer is not None and trainer.strategy.root_device.type == "cpu":
            large_batches_pay = bool(getattr(trainer.lightning_module, "large_eval_batches_on_cpu", True))
        return resolve_eval_batch_size(self.batch_size, self.eval_batch_setting, large_batches_pay)

    @property
    def split_sizes(self) -> dict[str, int]:
        """Number of images in each split (after ``setup``)."""
        return {name: len(labels) for name, (_, labels) in self.splits.items()}

    def data_device(self) -> torch.device:
        """Where the batches are sliced: the trainer's device when ``on_device`` asks for it, else the CPU."""
        trainer = self.trainer
        if trainer is None or self.on_device is False:
            return torch.device("cpu")
        device = trainer.strategy.root_device
        if self.on_device == "auto" and device.type not in ("cuda", "mps"):
            return torch.device("cpu")
        return device

    def resident_split(self, split: str) -> tuple[Tensor, Tensor]:
        """The images and labels of ``split`` on :meth:`data_device`, copied there once and kept."""
        device = self.data_device()
        if split not in self._resident or self._resident[split][0].device != device:
            images, labels = self.splits[split]
            self._resident[split] = (images.to(device), labels.to(device))
        return self._resident[split]

    def _loader(self, split: str, shuffle: bool) -> TensorBatchLoader:
        images, labels = self.resident_split(split)
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        batch_size = self.batch_size if split == "train" else self.eval_batch_size
        order = ShardedBatchOrder(len(labels), batch_size, shuffle, self.shuffle_seed, rank, world)
        # the training loader is resumable: its state says how many batches of the epoch were trained on
        progress = partial(trained_batches, trainer) if split == "train" and trainer is not None else None
        return TensorBatchLoader(images, labels, order, progress)

    def train_dataloader(self) -> TensorBatchLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> TensorBatchLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> TensorBatchLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> TensorBatchLoader:
        return self._loader("images" if self._predicting_images() else self.predict_split, shuffle=False)

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int) -> tuple[Tensor, Tensor]:
        images, labels = batch
        if self.augment and self.trainer is not None and self.trainer.training:
            images = augment_uint8(
                images, self.rotation, self.translate, self.scale, self.elastic_alpha, self.elastic_sigma
            )
        else:
            images = normalize_uint8(images)
        if self.trainer is not None:
            # bf16-true / 16-true: the weights are half precision, so the images made here must be too
            images = self.trainer.precision_plugin.convert_input(images)
        return images, labels
