"""The data module on the real MNIST files: split, official test set, batches, errors."""

from __future__ import annotations

import gzip
import shutil
import socket
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO, run_cli

from mnist_lightning import MLPClassifier
from mnist_lightning.data import (
    EVAL_BATCH_SIZE,
    RAW_FILES,
    MNISTDataError,
    MNISTDataModule,
    ShardedBatchOrder,
    ensure_mnist,
    load_split,
    raw_dir,
    split_indices,
)
from mnist_lightning.errors import ConfigError
from mnist_lightning.evaluation.ensemble import EnsembleClassifier
from mnist_lightning.models import CNNClassifier

# the .gz files of a torchvision download (MNIST/raw/*-ubyte.gz), when this machine has them
SHARED_GZ = REPO.parent / "shared" / "mnist-gz"


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
    assert images.dtype == torch.uint8 and images.shape == (EVAL_BATCH_SIZE, 1, 28, 28)
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


# --- settings: each bad one is named as the user writes it, with a value that works ---------------------------------

BAD_SETTINGS = [
    ("batch_size", 0),
    ("batch_size", 2.5),
    ("eval_batch_size", 0),
    ("eval_batch_size", -1000),
    ("eval_batch_size", "big"),
    ("val_size", 60_000),
    ("val_size", 0),
    ("val_size", 1.5),
    ("val_size", 1.0),
    ("val_size", 5000.0),
    ("val_size", 0.0),
    ("val_size", 1e-9),  # rounds to no validation image
    ("val_size", "0.1"),
    ("split_seed", -1),
    ("split_seed", 2**40),
    ("shuffle_seed", 1.5),
    ("rotation", -5),
    ("rotation", 400),
    ("rotation", float("nan")),
    ("translate", 1.5),
    ("translate", -0.1),
    ("scale", (1.2, 0.8)),
    ("scale", (0.0, 1.1)),
    ("scale", (0.9,)),
    ("scale", (0.9, float("inf"))),
]


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS, ids=[f"{n}={v!r}" for n, v in BAD_SETTINGS])
def test_a_bad_setting_is_refused_by_its_own_name(name: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        MNISTDataModule(**{name: value})
    message = str(info.value)
    # the setting itself, not a neighbour (eval_batch_size was once reported as batch_size)
    assert message.startswith(f"data.{name}=") or message.startswith(f"data.{name} "), message
    assert "; try " in message and "\n" not in message


@pytest.mark.parametrize(("name", "value"), [("predict_split", "dev"), ("on_device", 1), ("augment", "yes")])
def test_a_bad_choice_lists_the_choices(name: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^data\.{name} must be one of "):
        MNISTDataModule(**{name: value})


def test_whole_number_floats_are_not_counts(mnist_dir: Path) -> None:
    # a float is a fraction, an int a count: 1.0 is neither "all images" nor "one image"
    with pytest.raises(ConfigError) as info:
        MNISTDataModule(val_size=1.0)
    assert "fraction" in str(info.value) and "write the int 1" in str(info.value)
    with pytest.raises(ConfigError, match="write the int 5000"):
        MNISTDataModule(val_size=5000.0)
    dm = MNISTDataModule(data_dir=str(mnist_dir), val_size=1)
    dm.setup("fit")
    assert dm.split_sizes["val"] == 1 and dm.split_sizes["train"] == 59_999


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (["--data.eval_batch_size", "0"], "data.eval_batch_size"),
        (["--data.val_size", "1.0"], "data.val_size=1.0"),
        (["--data.scale", "[1.2, 0.8]"], "data.scale"),
        (["--data.rotation", "-10"], "data.rotation"),
    ],
)
def test_the_cli_names_the_bad_setting(args: list[str], name: str) -> None:
    result = run_cli("fit", "--model", "MLPClassifier", "--trainer.logger", "false", *args, check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"mnist-lightning: error: {name}") and "try" in line


# --- evaluation batch --------------------------------------------------------------------------------------------


def test_evaluation_uses_a_larger_batch_by_default(datamodule: MNISTDataModule) -> None:
    assert MNISTDataModule().eval_batch_size == EVAL_BATCH_SIZE == 1000
    assert MNISTDataModule(batch_size=4096).eval_batch_size == 4096  # never below the training batch
    assert MNISTDataModule(eval_batch_size=None).eval_batch_size == EVAL_BATCH_SIZE  # old checkpoints' value
    assert MNISTDataModule(eval_batch_size=100).eval_batch_size == 100
    assert datamodule.batch_size == 256
    for loader in (datamodule.val_dataloader(), datamodule.test_dataloader()):
        sizes = [len(labels) for _, labels in loader]
        assert sizes[0] == EVAL_BATCH_SIZE and sum(sizes) == len(loader.labels)
    assert len(next(iter(datamodule.train_dataloader()))[1]) == 256


class EvaluationBatchSizes(L.Callback):
    """The number of images in each validation and test batch."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx) -> None:
        self.sizes.append(len(batch[1]))

    def on_test_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx) -> None:
        self.sizes.append(len(batch[1]))


@pytest.mark.parametrize(
    ("network", "setting", "expected"),
    [
        ("mlp", "auto", EVAL_BATCH_SIZE),  # an MLP evaluates fastest in large batches on the CPU too
        ("cnn", "auto", 64),  # a CNN on the CPU: its training batch (large batches leave the caches)
        ("cnn", None, 64),  # an older checkpoint's setting means "auto"
        ("cnn", 500, 500),  # a number is the user's and wins
        ("ensemble of mlp and cnn", "auto", 64),  # large only if it pays for every member
        ("ensemble of mlp", "auto", EVAL_BATCH_SIZE),
    ],
)
def test_auto_evaluation_batch_on_the_cpu_follows_the_network(
    mnist_dir: Path, network: str, setting: int | str | None, expected: int
) -> None:
    mlp, cnn = MLPClassifier(hidden_sizes=[16]), CNNClassifier(conv_blocks=[{"channels": 4, "kernel_size": 3}])
    model = {"mlp": mlp, "cnn": cnn}.get(network) or EnsembleClassifier([mlp, cnn] if "cnn" in network else [mlp])
    sizes = EvaluationBatchSizes()
    trainer = L.Trainer(
        accelerator="cpu", limit_val_batches=2, limit_test_batches=2, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[sizes],
    )  # fmt: skip
    dm = MNISTDataModule(data_dir=str(mnist_dir), batch_size=64, eval_batch_size=setting)
    if not isinstance(model, EnsembleClassifier):  # an ensemble only tests and predicts
        trainer.validate(model, datamodule=dm, verbose=False)
    trainer.test(model, datamodule=dm, verbose=False)
    assert sizes.sizes == [expected] * len(sizes.sizes) and len(sizes.sizes) in (2, 4)
    assert MNISTDataModule(batch_size=64, eval_batch_size=setting).eval_batch_size == (
        500 if setting == 500 else EVAL_BATCH_SIZE
    )  # without a trainer nothing says where it runs: the large batch


def test_validation_results_do_not_depend_on_the_evaluation_batch(mnist_dir: Path) -> None:
    results = []
    for eval_batch_size in (64, "auto"):
        L.seed_everything(3)
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
        dm = MNISTDataModule(data_dir=str(mnist_dir), eval_batch_size=eval_batch_size)
        results.append(trainer.validate(MLPClassifier(), datamodule=dm, verbose=False)[0])
    small, large = results
    assert small["val/acc"] == large["val/acc"]  # counts of right answers over the same 5,000 images
    assert small["val/loss"] == pytest.approx(large["val/loss"], rel=1e-5)  # the same mean, summed in another order


# --- missing files and a download that cannot run ----------------------------------------------------------------


def closed_port() -> int:
    """A localhost port nobody listens on: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("present", [0, 3])
def test_a_failed_download_names_the_missing_files(
    mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, present: int
) -> None:
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [f"http://127.0.0.1:{closed_port()}/"])
    folder = raw_dir(tmp_path / "data")
    folder.mkdir(parents=True)
    for name in list(RAW_FILES)[:present]:
        (folder / name).symlink_to(raw_dir(mnist_dir) / name)
    with pytest.raises(MNISTDataError) as info:
        ensure_mnist(tmp_path / "data")
    message = str(info.value)
    missing = list(RAW_FILES)[present:]
    assert f"MNIST files missing in {folder}: {', '.join(missing)}, and the download failed" in message
    # a refused connection, not a network timeout
    assert "Connection refused" in message and "--data.data_dir" in message and "\n" not in message
    assert sorted(p.name for p in folder.iterdir()) == sorted(list(RAW_FILES)[:present])  # nothing left behind


def test_the_cli_names_the_files_a_failed_download_misses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a proxy on a closed port makes every download fail at once (the command reads the proxy settings anew)
    proxy = f"http://127.0.0.1:{closed_port()}"
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, proxy)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    result = run_cli("fit", "--model", "MLPClassifier", "--data.data_dir", str(tmp_path / "none"), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("mnist-lightning: error: MNIST files missing in") and "download failed" in line
    assert str(raw_dir(tmp_path / "none")) in line and all(name in line for name in RAW_FILES)


# --- the .gz files of a download, read where they are ------------------------------------------------------------


@pytest.fixture(scope="module")
def gz_dir(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only folder holding only MNIST/raw/*-ubyte.gz: the shared download when present, else made here."""
    if all((raw_dir(SHARED_GZ) / f"{name}.gz").is_file() for name in RAW_FILES):
        return SHARED_GZ
    root = tmp_path_factory.mktemp("mnist-gz")
    folder = raw_dir(root)
    folder.mkdir(parents=True)
    for name in RAW_FILES:
        (folder / f"{name}.gz").write_bytes(gzip.compress((raw_dir(mnist_dir) / name).read_bytes(), compresslevel=1))
    folder.chmod(0o555)
    return root


def test_a_folder_of_gz_files_is_read_in_place(gz_dir: Path, datamodule: MNISTDataModule) -> None:
    before = sorted(p.name for p in raw_dir(gz_dir).iterdir())
    assert all(name.endswith(".gz") for name in before)
    dm = MNISTDataModule(data_dir=str(gz_dir), batch_size=256)
    dm.prepare_data()
    dm.setup("fit")
    for split in ("train", "val", "test"):
        assert torch.equal(dm.splits[split][0], datamodule.splits[split][0])
        assert torch.equal(dm.splits[split][1], datamodule.splits[split][1])
    assert sorted(p.name for p in raw_dir(gz_dir).iterdir()) == before  # nothing written next to them
    images, labels = load_split(gz_dir, train=False)
    assert images.shape == (10_000, 28, 28) and labels[:3].tolist() == [7, 2, 1]


def test_a_folder_mixing_gz_and_plain_files_works(gz_dir: Path, mnist_dir: Path, tmp_path: Path) -> None:
    folder = raw_dir(tmp_path / "mixed")
    folder.mkdir(parents=True)
    for i, name in enumerate(RAW_FILES):
        source = raw_dir(gz_dir) / f"{name}.gz" if i % 2 else raw_dir(mnist_dir) / name
        (folder / source.name).symlink_to(source)
    dm = MNISTDataModule(data_dir=str(tmp_path / "mixed"), download=False)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.split_sizes == {"train": 55_000, "val": 5_000, "test": 10_000}


def gz_copy(gz_dir: Path, root: Path) -> Path:
    """A writable copy of the .gz folder (links to the four files) under ``root``; its raw folder."""
    folder = raw_dir(root)
    folder.mkdir(parents=True)
    for name in RAW_FILES:
        (folder / f"{name}.gz").symlink_to(raw_dir(gz_dir) / f"{name}.gz")
    return folder


@pytest.mark.parametrize("damage", ["truncated", "not-gzip", "wrong-content"])
def test_a_damaged_gz_file_is_named(gz_dir: Path, tmp_path: Path, damage: str) -> None:
    folder = gz_copy(gz_dir, tmp_path / "data")
    bad = folder / "t10k-labels-idx1-ubyte.gz"
    good = bad.read_bytes()
    bad.unlink()
    if damage == "truncated":
        bad.write_bytes(good[: len(good) // 2])
    elif damage == "not-gzip":
        bad.write_bytes(b"<html>404 Not Found</html>")
    else:  # a valid gzip stream of damaged labels
        labels = bytearray(gzip.decompress(good))
        labels[5000] ^= 0xFF
        bad.write_bytes(gzip.compress(bytes(labels)))
    expected = "fails its MD5" if damage == "wrong-content" else "not a readable gzip file"
    with pytest.raises(MNISTDataError) as info:
        MNISTDataModule(data_dir=str(tmp_path / "data"), download=False).prepare_data()
    message = str(info.value)
    assert message.startswith(f"MNIST file {bad} ") and expected in message and "replace it" in message
    assert "\n" not in message


def test_the_cli_names_a_damaged_gz_file(gz_dir: Path, tmp_path: Path) -> None:
    folder = gz_copy(gz_dir, tmp_path / "data")
    bad = folder / "train-images-idx3-ubyte.gz"
    good = bad.read_bytes()
    bad.unlink()
    bad.write_bytes(good[:100_000])
    result = run_cli("fit", "--model", "MLPClassifier", "--data.data_dir", str(tmp_path / "data"), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"mnist-lightning: error: MNIST file {bad} is not a readable gzip file")


def test_the_cli_trains_from_a_gz_folder(gz_dir: Path) -> None:
    result = run_cli(
        "fit",
        "--model",
        "MLPClassifier",
        "--data.data_dir",
        str(gz_dir),
        "--trainer.logger",
        "false",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "5",
        "--trainer.limit_val_batches",
        "1",
    )
    assert "Traceback" not in result.stderr and "mnist-lightning: error" not in result.stderr
