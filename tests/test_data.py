"""The data module on the real MNIST files: split, official test set, batches, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import pytest
import torch

from mnist_lightning.data import (
    RAW_FILES,
    MNISTDataError,
    MNISTDataModule,
    ShardedBatchOrder,
    raw_dir,
    split_indices,
)


@pytest.fixture(scope="module")
def datamodule(mnist_dir: Path) -> MNISTDataModule:
    dm = MNISTDataModule(data_dir=str(mnist_dir), batch_size=256)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_default_split_sizes(datamodule: MNISTDataModule) -> None:
    assert datamodule.split_sizes == {"train": 55_000, "val": 5_000, "test": 10_000}


def test_validation_size_as_a_fraction(mnist_dir: Path) -> None:
    dm = MNISTDataModule(data_dir=str(mnist_dir), val_size=0.2)
    dm.setup("fit")
    assert dm.split_sizes == {"train": 48_000, "val": 12_000, "test": 10_000}


def test_split_is_disjoint_complete_and_repeatable(mnist_dir: Path, datamodule: MNISTDataModule) -> None:
    train_idx, val_idx = split_indices(60_000, 5_000, seed=42)
    assert len(set(train_idx.tolist()) & set(val_idx.tolist())) == 0
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(60_000))
    again = MNISTDataModule(data_dir=str(mnist_dir))
    again.setup("fit")
    for split in ("train", "val"):
        assert torch.equal(again.splits[split][0], datamodule.splits[split][0])
        assert torch.equal(again.splits[split][1], datamodule.splits[split][1])
    other_seed, _ = split_indices(60_000, 5_000, seed=7)
    assert not torch.equal(other_seed, train_idx)


def test_test_set_is_the_official_one(datamodule: MNISTDataModule) -> None:
    images, labels = datamodule.splits["test"]
    assert images.shape == (10_000, 28, 28) and images.dtype == torch.uint8
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert torch.bincount(labels).tolist()[:3] == [980, 1135, 1032]


def test_batches_are_normalized_on_transfer(datamodule: MNISTDataModule) -> None:
    images, labels = next(iter(datamodule.val_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (256, 1, 28, 28)
    x, y = datamodule.on_after_batch_transfer((images, labels), 0)
    assert x.dtype == torch.float32 and torch.equal(y, labels)
    assert abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1) < 0.1


def test_training_order_is_seeded_per_epoch_and_sharded() -> None:
    order = ShardedBatchOrder(1_000, 64, shuffle=True, seed=3)
    first = torch.cat(order.batches())
    assert torch.equal(first, torch.cat(order.batches()))
    order.set_epoch(1)
    second = torch.cat(order.batches())
    assert not torch.equal(first, second) and sorted(second.tolist()) == list(range(1_000))
    ranks = [ShardedBatchOrder(1_001, 64, shuffle=True, seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[0].batches()) == len(ranks[1].batches()) == len(ranks[0])
    seen = torch.cat([torch.cat(r.batches()) for r in ranks]).tolist()
    assert sorted(seen) == list(range(1_001))


def test_augmentation_only_touches_training_batches(mnist_dir: Path) -> None:
    dm = MNISTDataModule(data_dir=str(mnist_dir), augment=True, rotation=30)
    dm.setup("fit")
    dm.trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    batch = next(iter(dm.val_dataloader()))
    plain = dm.on_after_batch_transfer(batch, 0)[0]
    dm.trainer.training = True
    augmented = dm.on_after_batch_transfer(batch, 0)[0]
    dm.trainer.validating = True
    assert torch.equal(dm.on_after_batch_transfer(batch, 0)[0], plain)
    assert not torch.allclose(augmented, plain)


def test_missing_data_names_the_folder_and_files(tmp_path: Path) -> None:
    dm = MNISTDataModule(data_dir=str(tmp_path / "empty"), download=False)
    with pytest.raises(MNISTDataError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert str(raw_dir(tmp_path / "empty")) in message and "data_dir" in message
    assert all(name in message for name in RAW_FILES)


def test_truncated_file_is_named(mnist_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(mnist_dir / "MNIST", copy / "MNIST")
    bad = raw_dir(copy) / "t10k-labels-idx1-ubyte"
    bad.write_bytes(bad.read_bytes()[:5000])
    with pytest.raises(MNISTDataError, match=r"t10k-labels-idx1-ubyte.*truncated"):
        MNISTDataModule(data_dir=str(copy), download=False).prepare_data()


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"val_size": 60_000}, {"val_size": 1.5}])
def test_bad_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=r"batch_size|val_size"):
        MNISTDataModule(**kwargs)
