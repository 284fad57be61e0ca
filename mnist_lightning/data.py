"""MNIST as tensors: file checks, the seeded train/validation split, batches and on-device transforms."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import math
import numbers
import os
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from mnist_lightning.errors import ConfigError, MNISTLightningError
from mnist_lightning.shifts import gaussian_blur

MEAN = 0.1307
STD = 0.3081
NUM_TRAIN = 60_000
NUM_TEST = 10_000
DATA_DIR_ENV = "MNIST_LIGHTNING_DATA_DIR"
# the evaluation batch of ``eval_batch_size="auto"``: max(batch_size, EVAL_BATCH_SIZE). Evaluation keeps no
# gradients, so this batch costs little memory (a peak of 0.36 GB more than batch 64 for the convnet preset, on the
# CPU). Through `trainer.test` on the project's busy 2-core CPU (best of 3 / of 1, images/s): MLP 3,065 at 64,
# 11,575 at 500, 17,794 at 1000, 24,895 at 2000; convnet 125 at 32, 270 at 500, 287 at 1000, 301 at 2000. 1000 takes
# most of the gain for both at half the memory of 2000. See benchmarks/speed.md.
EVAL_BATCH_SIZE = 1000
MAX_SEED = 2**32 - 1

# name -> (idx magic number, item count, byte size, md5 of the uncompressed file)
RAW_FILES: dict[str, tuple[int, int, int, str]] = {
    "train-images-idx3-ubyte": (2051, NUM_TRAIN, 47_040_016, "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte": (2049, NUM_TRAIN, 60_008, "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte": (2051, NUM_TEST, 7_840_016, "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte": (2049, NUM_TEST, 10_008, "27ae3e4e09519cfbb04c329615203637"),
}


class MNISTDataError(MNISTLightningError, RuntimeError):
    """The MNIST files are missing or damaged; the message says which and how to fix it."""


def default_data_dir() -> Path:
    """The data folder: ``$MNIST_LIGHTNING_DATA_DIR`` if set, else ``./data``."""
    return Path(os.environ.get(DATA_DIR_ENV) or "data")


def raw_dir(data_dir: str | Path) -> Path:
    """Where torchvision's ``datasets.MNIST`` keeps the four uncompressed files."""
    return Path(data_dir) / "MNIST" / "raw"


def _fix_hint(data_dir: Path) -> str:
    return (
        f"point data_dir at a folder holding MNIST/raw/{{{', '.join(RAW_FILES)}}}, plain or .gz "
        f"(--data.data_dir DIR or {DATA_DIR_ENV}=DIR), or run once with internet access to download it"
    )


def raw_source(data_dir: str | Path, name: str) -> Path | None:
    """The file holding raw file ``name``: the plain file if present, else its ``.gz`` download, else None."""
    folder = raw_dir(data_dir)
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def missing_raw_files(data_dir: str | Path) -> list[str]:
    """The raw files for which ``data_dir`` holds neither the plain file nor its ``.gz``."""
    return [name for name in RAW_FILES if raw_source(data_dir, name) is None]


def _damaged(path: Path, problem: str, data_dir: str | Path) -> MNISTDataError:
    return MNISTDataError(
        f"MNIST file {path} {problem}; replace it with a good copy (or delete it and let the download run again), "
        f"or {_fix_hint(Path(data_dir))}"
    )


def read_raw_bytes(path: Path, data_dir: str | Path | None = None) -> bytes:
    """The uncompressed bytes of one raw file, plain or ``.gz``.

    A ``.gz`` is decompressed in memory, never next to itself: the folder may be read-only (a shared copy).
    An unreadable or damaged file raises :class:`MNISTDataError` naming it.
    """
    if data_dir is None:  # only for the hint in a message: the folder above MNIST/raw
        data_dir = path.parents[2] if len(path.parents) > 2 else path.parent
    try:
        data = path.read_bytes()
    except OSError as err:
        raise _damaged(path, f"cannot be read ({err.strerror or err})", data_dir) from err
    if path.suffix != ".gz":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError; a cut-off stream is an EOFError
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise _damaged(path, f"is not a readable gzip file ({reason}: truncated or corrupt)", data_dir) from err


def load_raw_files(data_dir: str | Path) -> dict[str, bytes]:
    """The uncompressed bytes of the four raw files (each plain or ``.gz``), checked: size, magic number, item
    count and MD5. Raises :class:`MNISTDataError` naming the missing or bad file."""
    folder = raw_dir(data_dir)
    missing = missing_raw_files(data_dir)
    if missing:
        present = len(RAW_FILES) - len(missing)
        found = f" ({present} of {len(RAW_FILES)} present)" if present else ""
        raise MNISTDataError(
            f"MNIST files missing in {folder}{found}: {', '.join(missing)}; {_fix_hint(Path(data_dir))}"
        )
    files = {}
    for name in RAW_FILES:
        path = raw_source(data_dir, name)
        assert path is not None  # checked above
        data = read_raw_bytes(path, data_dir)
        problem = describe_raw_file_problem(name, data)
        if problem:
            raise _damaged(path, problem if path.suffix != ".gz" else f"(uncompressed) {problem}", data_dir)
        files[name] = data
    return files


def verify_raw_files(data_dir: str | Path) -> None:
    """Check size, magic number, item count and MD5 of the four raw files; raise MNISTDataError naming the bad one."""
    load_raw_files(data_dir)


def describe_raw_file_problem(name: str, data: bytes) -> str | None:
    """What is wrong with the bytes of raw file ``name`` (None when they are the genuine file)."""
    magic, count, size, md5 = RAW_FILES[name]
    found_magic = int.from_bytes(data[0:4], "big") if len(data) >= 4 else None
    found_count = int.from_bytes(data[4:8], "big") if len(data) >= 8 else None
    kinds = {2051: "images", 2049: "labels"}
    if found_magic in kinds and found_magic != magic:
        return f"holds {kinds[found_magic]}, expected {kinds[magic]} (files swapped or misnamed)"
    if found_magic == magic and found_count is not None and found_count != count:
        return f"holds {found_count:,} items, expected {count:,} (train and t10k files mixed up)"
    if len(data) != size:
        header = "with a valid header " if (found_magic, found_count) == (magic, count) else ""
        return f"is {len(data):,} bytes {header}where {size:,} are expected (truncated or not MNIST)"
    if (found_magic, found_count) != (magic, count):
        return "has the wrong header (not an MNIST idx file)"
    if hashlib.md5(data).hexdigest() != md5:
        return "fails its MD5 check (corrupt)"
    return None


def _download_failure(err: Exception) -> str:
    """One line on why torchvision's download failed (its own message spans several lines, one per mirror)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reason = lines[-1] if lines else ""
    if len(reason) > 160:
        reason = reason[:157] + "..."
    return f"{type(err).__name__}: {reason}" if reason else type(err).__name__


def download(data_dir: str | Path) -> None:
    """Download MNIST through torchvision and move the four files into place only once all of them are verified.

    The download goes to a temporary folder inside ``data_dir``: a download that breaks halfway leaves nothing in
    ``MNIST/raw`` that could later pass as data.
    """
    from torchvision import datasets

    target = raw_dir(data_dir)
    missing = missing_raw_files(data_dir)
    try:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=data_dir, prefix=".mnist-download-") as staging:
            try:
                for train in (True, False):
                    datasets.MNIST(staging, train=train, download=True)
            except Exception as err:  # torchvision raises RuntimeError/URLError/OSError depending on what failed
                raise MNISTDataError(
                    f"MNIST files missing in {target}: {', '.join(missing or RAW_FILES)}, and the download failed "
                    f"({_download_failure(err)}); put them (plain or .gz) in that folder, point --data.data_dir or "
                    f"{DATA_DIR_ENV} at a folder whose MNIST/raw holds them, or run again with internet access"
                ) from err
            try:
                verify_raw_files(staging)
            except MNISTDataError as err:
                raise MNISTDataError(f"the MNIST download is damaged, nothing was kept: {err}") from err
            target.mkdir(parents=True, exist_ok=True)
            for name in RAW_FILES:
                os.replace(raw_dir(staging) / name, target / name)
    except OSError as err:
        raise MNISTDataError(
            f"cannot write MNIST into {data_dir} ({err.strerror or err}); {_fix_hint(Path(data_dir))}"
        ) from err


def ensure_mnist(data_dir: str | Path, download_if_missing: bool = True) -> None:
    """Make sure verified MNIST files (plain or ``.gz``) are in ``data_dir``, downloading them if allowed and needed."""
    if download_if_missing and missing_raw_files(data_dir):
        download(data_dir)
    verify_raw_files(data_dir)


def parse_idx(data: bytes) -> Tensor:
    """The uint8 tensor held by the bytes of one (uncompressed) idx file."""
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).reshape(shape)


def read_idx(path: Path) -> Tensor:
    """Read one idx file (as in torchvision's MNIST layout, plain or ``.gz``) into a uint8 tensor."""
    return parse_idx(read_raw_bytes(Path(path)))


def _split_tensors(files: dict[str, bytes], train: bool) -> tuple[Tensor, Tensor]:
    prefix = "train" if train else "t10k"
    return parse_idx(files[f"{prefix}-images-idx3-ubyte"]), parse_idx(files[f"{prefix}-labels-idx1-ubyte"]).long()


def load_split(data_dir: str | Path, train: bool) -> tuple[Tensor, Tensor]:
    """The official training (60,000) or test (10,000) images as uint8 ``(N, 28, 28)`` and labels as int64."""
    prefix = "train" if train else "t10k"
    files = {}
    for name in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
        path = raw_source(data_dir, name)
        if path is None:
            raise MNISTDataError(f"MNIST file {name} missing in {raw_dir(data_dir)}; {_fix_hint(Path(data_dir))}")
        files[name] = read_raw_bytes(path, data_dir)
    return _split_tensors(files, train)


def split_indices(num_samples: int, val_size: int | float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded, disjoint (train, validation) index sets; ``val_size`` as in :func:`resolve_val_size`."""
    num_val = resolve_val_size(num_samples, val_size)
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    return order[num_val:], order[:num_val]


def resolve_val_size(num_samples: int, val_size: int | float) -> int:
    """The number of validation images: an int is a count, a float a fraction strictly between 0 and 1.

    A float that is a whole number (``1.0``, ``5000.0``) is refused rather than guessed at: ``1.0`` could mean
    "all of them" or "one image". Write a count as an int (``5000``) and a fraction below 1 (``0.1``). Sizes that
    leave no training or no validation image are refused as well.
    """
    example = "5000 (a count) or 0.1 (a fraction)"
    if isinstance(val_size, bool) or not isinstance(val_size, numbers.Real):
        raise ConfigError(
            f"data.val_size must be an int (a count) or a float (a fraction), got {val_size!r}; try {example}"
        )
    if isinstance(val_size, numbers.Integral):
        count = int(val_size)
        if not 0 < count < num_samples:
            raise ConfigError(
                f"data.val_size={count} must be at least 1 and less than the {num_samples:,} training images; "
                f"try {example}"
            )
        return count
    fraction = float(val_size)
    if not 0 < fraction < 1:  # NaN too
        count_hint = (
            f"; for a count of {int(fraction):,} image{'s' if fraction > 1 else ''} write the int {int(fraction)}"
            if fraction.is_integer() and 0 < fraction < num_samples
            else ""
        )
        raise ConfigError(
            f"data.val_size={val_size} is a float, which means a fraction of the {num_samples:,} training images, "
            f"and must lie strictly between 0 and 1{count_hint}; try {example}"
        )
    count = round(num_samples * fraction)
    if not 0 < count < num_samples:
        left = "no validation image" if count == 0 else "no training image"
        raise ConfigError(
            f"data.val_size={val_size} leaves {left} of the {num_samples:,} training images; try {example}"
        )
    return count


def check_int(name: str, value: object, minimum: int, maximum: int | None, example: str) -> int:
    """``value`` of the data setting ``name`` if it is an int in [minimum, maximum], else a ConfigError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"data.{name} must be an integer, got {value!r}; try {example}")
    if value < minimum or (maximum is not None and value > maximum):
        allowed = (
            f"an integer from {minimum:,} to {maximum:,}"
            if maximum is not None
            else f"an integer of at least {minimum:,}"
        )
        allowed = "a positive integer" if (minimum, maximum) == (1, None) else allowed
        raise ConfigError(f"data.{name} must be {allowed}, got {value}; try {example}")
    return int(value)


def check_real(name: str, value: object, low: float, high: float, example: str, low_open: bool = False) -> float:
    """``value`` of the data setting ``name`` if it is a number in [low, high] ((low, high] with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"data.{name} must be a number, got {value!r}; try {example}")
    number = float(value)
    inside = low < number <= high if low_open else low <= number <= high  # False for NaN
    if not inside or not math.isfinite(number):
        allowed = f"{'above' if low_open else 'at least'} {low:g}"
        if math.isfinite(high):
            allowed = f"{allowed} and at most {high:g}" if low_open else f"from {low:g} to {high:g}"
        raise ConfigError(f"data.{name} must be a number {allowed}, got {value}; try {example}")
    return number


def check_scale(value: object) -> tuple[float, float]:
    """The augmentation's zoom range ``(low, high)``: two numbers with 0 < low <= high."""
    example = "[0.9, 1.1]"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ConfigError(f"data.scale must be two numbers [low, high], got {value!r}; try {example}")
    try:
        low, high = (check_real("scale", v, 0.0, math.inf, example, low_open=True) for v in value)
    except ConfigError:
        low = high = math.nan
    if not low <= high:  # also NaN: an element that is not a positive number
        raise ConfigError(f"data.scale must be [low, high] with 0 < low <= high, got {list(value)}; try {example}")
    return low, high


class ShardedBatchOrder:
    """Batches of indices for one process and one epoch: seeded by (seed, epoch), split across ranks.

    Every global batch of ``batch_size * world_size`` indices is dealt round-robin to the ranks, so all ranks
    get the same number of batches and together see every index exactly once per epoch.
    """

    def __init__(
        self, num_samples: int, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        global_batch = self.batch_size * self.world_size
        full, rest = divmod(self.num_samples, global_batch)
        # a last global batch too small to give every rank one sample is merged into the one before it
        return full + (1 if rest >= self.world_size or full == 0 else 0)

    def batches(self) -> list[Tensor]:
        """The index tensors of this rank's batches for the current epoch."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator)
        else:
            order = torch.arange(self.num_samples)
        global_batch = self.batch_size * self.world_size
        bounds = [min(i * global_batch, self.num_samples) for i in range(len(self))] + [self.num_samples]
        return [order[lo:hi][self.rank :: self.world_size] for lo, hi in itertools.pairwise(bounds)]


class TensorBatchLoader:
    """Iterates (uint8 images ``(B, 1, 28, 28)``, labels) batches by index slicing one tensor: no per-image Python.

    Lightning finds ``sampler.set_epoch`` on it and reseeds the shuffle every epoch. With ``progress`` (batches of
    the current epoch already trained on, and batches in the epoch) it is resumable: ``state_dict`` goes into
    checkpoints and ``load_state_dict`` makes the next iteration start where the checkpoint left off, in the same
    batch order.
    """

    batch_sampler = None  # Lightning looks for it; the batches come from ``sampler``

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        sampler: ShardedBatchOrder,
        progress: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self.images = images
        self.labels = labels
        self.sampler = sampler
        self.progress = progress
        self.skip = 0

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        skip, self.skip = self.skip, 0
        batches = self.sampler.batches()[skip:]
        if self.images.device.type != "cpu" and batches:
            # one copy of the epoch's order to the device instead of one small copy per batch
            sizes = [len(index) for index in batches]
            batches = torch.cat(batches).to(self.images.device, non_blocking=True).split(sizes)
        for index in batches:
            yield self.images[index].unsqueeze(1), self.labels[index]

    def state_dict(self) -> dict[str, int]:
        """The epoch and how many of its batches were trained on (saved in checkpoints by Lightning)."""
        done, total = self.progress() if self.progress else (0, len(self))
        if done >= total:  # a finished epoch: Lightning continues with the next one on this loader's iterator
            return {"epoch": self.sampler.epoch + 1, "batches_done": 0}
        return {"epoch": self.sampler.epoch, "batches_done": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume: the next iteration gives the rest of the saved epoch, in that epoch's order."""
        self.sampler.set_epoch(state["epoch"])
        self.skip = state["batches_done"]


def random_affine(
    images: Tensor,
    degrees: float,
    translate: float,
    scale: tuple[float, float],
    generator: torch.Generator | None = None,
    elastic_alpha: float = 0.0,
    elastic_sigma: float = 4.0,
) -> Tensor:
    """A random rotation, shift and scale for every image of a ``(B, C, H, W)`` float batch, on its device, and
    with ``elastic_alpha > 0`` an elastic deformation on top, all in one resampling of the image."""
    batch = images.shape[0]
    opts = {"device": images.device, "dtype": images.dtype}
    angle = (torch.rand(batch, **opts, generator=generator) * 2 - 1) * math.radians(degrees)
    factor = torch.empty(batch, **opts).uniform_(scale[0], scale[1], generator=generator)
    shift = (torch.rand(batch, 2, **opts, generator=generator) * 2 - 1) * (2 * translate)
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    if elastic_alpha > 0:
        grid = grid + elastic_displacement(images, elastic_alpha, elastic_sigma, generator)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")


def elastic_displacement(
    images: Tensor, alpha: float, sigma: float, generator: torch.Generator | None = None
) -> Tensor:
    """A random smooth displacement field ``(B, H, W, 2)`` in ``grid_sample``'s [-1, 1] coordinates.

    Simard, Steinkraus and Platt (2003): uniform noise in [-1, 1] per pixel and axis, smoothed by a Gaussian of
    ``sigma`` pixels and scaled by ``alpha`` pixels. With their alpha 34 and sigma 4 pixels move by about 1–2
    pixels, smoothly, like a hand that writes the digit a little differently.
    """
    batch, _, height, width = images.shape
    opts = {"device": images.device, "dtype": images.dtype}
    noise = torch.rand(batch, 2, height, width, **opts, generator=generator) * 2 - 1
    field = gaussian_blur(noise, sigma) * alpha
    pixels_to_grid = torch.tensor([2 / width, 2 / height], **opts)  # grid_sample's x, y run over [-1, 1]
    return field.permute(0, 2, 3, 1) * pixels_to_grid


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
            memory and several times faster than the training batch. The metrics are means over all images, so
            they do not depend on it (up to float rounding of the loss).
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
            prepared like an MNIST digit (see :mod:`mnist_lightning.handwriting`); a file that cannot be read
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
        check_int("batch_size", batch_size, 1, None, "64")
        if eval_batch_size is not None and eval_batch_size != "auto":
            check_int("eval_batch_size", eval_batch_size, 1, None, f'{EVAL_BATCH_SIZE} or "auto"')
        resolve_val_size(NUM_TRAIN, val_size)
        check_int("split_seed", split_seed, 0, MAX_SEED, "42")
        check_int("shuffle_seed", shuffle_seed, 0, MAX_SEED, "0")
        check_real("rotation", rotation, 0.0, 180.0, "10")
        check_real("translate", translate, 0.0, 1.0, "0.1")
        check_scale(scale)
        check_real("elastic_alpha", elastic_alpha, 0.0, 1000.0, "34")
        check_real("elastic_sigma", elastic_sigma, 0.0, 100.0, "4", low_open=True)
        for name, value, allowed in (
            ("download", download, (True, False)),
            ("augment", augment, (True, False)),
            ("predict_split", predict_split, ("train", "val", "test")),
            ("on_device", on_device, (True, False, "auto")),
        ):
            # `x in (True, False)` would also take 1 and 0
            if not any(value is a if isinstance(a, bool) else value == a for a in allowed):
                choices = ", ".join(str(a).lower() if isinstance(a, bool) else a for a in allowed)
                raise ConfigError(f"data.{name} must be one of {choices}, got {value!r}")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir) if data_dir else default_data_dir()
        self.batch_size = batch_size
        # "auto": evaluation keeps no gradients, so a larger batch costs little memory and runs much faster
        self.eval_batch_size = (
            max(batch_size, EVAL_BATCH_SIZE) if eval_batch_size in (None, "auto") else int(eval_batch_size)
        )
        self.val_size = val_size
        self.split_seed = split_seed
        self.shuffle_seed = shuffle_seed
        self.download = download
        self.augment = augment
        self.rotation = rotation
        self.translate = translate
        self.scale = scale
        self.elastic_alpha = elastic_alpha
        self.elastic_sigma = elastic_sigma
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
        files = load_raw_files(self.data_dir)  # checked, plain or .gz: read once for the check and the tensors
        images, labels = _split_tensors(files, train=True)
        train_idx, val_idx = split_indices(len(images), self.val_size, self.split_seed)
        self.splits["train"] = (images[train_idx], labels[train_idx])
        self.splits["val"] = (images[val_idx], labels[val_idx])
        self.splits["test"] = _split_tensors(files, train=False)

    def _setup_images(self) -> None:
        from mnist_lightning.handwriting import load_digits

        files, digits, failures = load_digits(self.predict_images)
        if not files and len(failures) == 1:
            raise ConfigError(failures[0][1])
        for _, message in failures:
            print(f"mnist-lightning: skipped {message}", file=sys.stderr)
        if not files:
            raise ConfigError(
                f"none of the {len(failures)} images in data.predict_images could be used (see above); "
                "pass PNG or JPEG files of single digits, or folders holding them"
            )
        self.predict_files, self.predict_failures = files, failures
        self._resident.pop("images", None)
        images = torch.from_numpy(digits)
        self.splits["images"] = (images, torch.full((len(images),), -1, dtype=torch.long))

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
        progress = self._train_batches_done if split == "train" and trainer is not None else None
        return TensorBatchLoader(images, labels, order, progress)

    def _train_batches_done(self) -> tuple[int, int]:
        # batches of this epoch whose optimizer step is done (what a checkpoint taken now has trained on), of all
        trainer = self.trainer
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed, int(trainer.num_training_batches)

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
            images = normalize(
                random_affine(
                    images.float().div_(255),
                    self.rotation,
                    self.translate,
                    self.scale,
                    elastic_alpha=self.elastic_alpha,
                    elastic_sigma=self.elastic_sigma,
                )
            )
        else:
            images = normalize_uint8(images)
        if self.trainer is not None:
            # bf16-true / 16-true: the weights are half precision, so the images made here must be too
            images = self.trainer.precision_plugin.convert_input(images)
        return images, labels


def normalize(images: Tensor) -> Tensor:
    """Standardize images scaled to [0, 1] with the MNIST training mean and standard deviation."""
    return (images - MEAN) / STD


def normalize_uint8(images: Tensor) -> Tensor:
    """:func:`normalize` of raw 0–255 pixels in two in-place passes over one new float tensor."""
    return images.float().sub_(255 * MEAN).mul_(1 / (255 * STD))
