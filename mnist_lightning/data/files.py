"""The raw MNIST files: where they are (``MNIST_LIGHTNING_DATA_DIR``), their download, their checks (size, header,
MD5) and their idx format, read into uint8 image and int64 label tensors."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import tempfile
import zlib
from pathlib import Path

import torch
from torch import Tensor

from mnist_lightning.errors import MNISTLightningError
from mnist_lightning.outputs import missing_folders, remove_empty_folders

NUM_TRAIN = 60_000
NUM_TEST = 10_000
DATA_DIR_ENV = "MNIST_LIGHTNING_DATA_DIR"

# name -> (idx magic number, item count, byte size, md5 of the uncompressed file)
RAW_FILES: dict[str, tuple[int, int, int, str]] = {
    "train-images-idx3-ubyte": (2051, NUM_TRAIN, 47_040_016, "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte": (2049, NUM_TRAIN, 60_008, "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte": (2051, NUM_TEST, 7_840_016, "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte": (2049, NUM_TEST, 10_008, "27ae3e4e09519cfbb04c329615203637"),
}


# (size, mtime, inode, device) of each raw file whose MD5 this process has checked: fit checks the files in
# prepare_data and reads them again in setup, and the second MD5 of the 55 MB (0.1-0.2 s on the 2-core VM) is
# skipped while the file is unchanged. A replaced or rewritten file has another inode or mtime and is checked again.
_MD5_CHECKED: dict[Path, tuple[int, int, int, int]] = {}


def _signature(path: Path) -> tuple[int, int, int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev


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
        if not Path(data_dir).is_dir():  # most likely a typo: the fix is the right folder, not files put there
            raise MNISTDataError(
                f"MNIST files missing in {folder}: the data folder {data_dir} does not exist; "
                f"{_fix_hint(Path(data_dir))}"
            )
        raise MNISTDataError(
            f"MNIST files missing in {folder}{found}: {', '.join(missing)}; {_fix_hint(Path(data_dir))}"
        )
    files = {}
    for name in RAW_FILES:
        path = raw_source(data_dir, name)
        assert path is not None  # checked above
        try:
            signature = _signature(path)
        except OSError:
            signature = None  # read_raw_bytes says what is wrong
        data = read_raw_bytes(path, data_dir)
        checked = signature is not None and _MD5_CHECKED.get(path.resolve()) == signature
        problem = describe_raw_file_problem(name, data, check_md5=not checked)
        if problem:
            raise _damaged(path, problem if path.suffix != ".gz" else f"(uncompressed) {problem}", data_dir)
        with contextlib.suppress(OSError):
            if signature is not None and signature == _signature(path):  # unchanged while it was read
                _MD5_CHECKED[path.resolve()] = signature
        files[name] = data
    return files


def verify_raw_files(data_dir: str | Path) -> None:
    """Check size, magic number, item count and MD5 of the four raw files; raise MNISTDataError naming the bad one."""
    load_raw_files(data_dir)


def describe_raw_file_problem(name: str, data: bytes, check_md5: bool = True) -> str | None:
    """What is wrong with the bytes of raw file ``name`` (None when they are the genuine file); ``check_md5=False``
    checks all but the MD5 (of a file whose MD5 was checked already)."""
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
    if check_md5 and hashlib.md5(data).hexdigest() != md5:
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
    ``MNIST/raw`` that could later pass as data, and a ``data_dir`` that did not exist before is not left behind
    either (a mistyped folder is not made real).
    """
    from torchvision import datasets

    target = raw_dir(data_dir)
    missing = missing_raw_files(data_dir)
    created = missing_folders(Path(data_dir))
    try:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=data_dir, prefix=".mnist-download-") as staging:
            try:
                for train in (True, False):
                    datasets.MNIST(staging, train=train, download=True)
            except Exception as err:  # torchvision raises RuntimeError/URLError/OSError depending on what failed
                raise MNISTDataError(_download_failed(data_dir, missing, err, bool(created))) from err
            try:
                verify_raw_files(staging)
            except MNISTDataError as err:
                raise MNISTDataError(f"the MNIST download is damaged, nothing was kept: {err}") from err
            target.mkdir(parents=True, exist_ok=True)
            for name in RAW_FILES:
                os.replace(raw_dir(staging) / name, target / name)
    except OSError as err:
        remove_empty_folders(created)
        raise MNISTDataError(
            f"cannot write MNIST into {data_dir} ({err.strerror or err}); {_fix_hint(Path(data_dir))}"
        ) from err
    except MNISTDataError:
        remove_empty_folders(created)
        raise


def _download_failed(data_dir: str | Path, missing: list[str], err: Exception, folder_was_missing: bool) -> str:
    why = f"the download failed ({_download_failure(err)})"
    if folder_was_missing:
        # a folder that is not there is most likely a typo: the fix is the right folder, not files put into this one
        return (
            f"MNIST files missing in {raw_dir(data_dir)}: {', '.join(RAW_FILES)}, the data folder {data_dir} does not "
            f"exist and {why}; point --data.data_dir or {DATA_DIR_ENV} at the folder that holds MNIST/raw, or run "
            "again with internet access"
        )
    return (
        f"MNIST files missing in {raw_dir(data_dir)}: {', '.join(missing or RAW_FILES)}, and {why}; put them (plain "
        f"or .gz) in that folder, point --data.data_dir or {DATA_DIR_ENV} at a folder whose MNIST/raw holds them, "
        "or run again with internet access"
    )


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


def load_checked_splits(data_dir: str | Path) -> dict[str, tuple[Tensor, Tensor]]:
    """The official ``"train"`` and ``"test"`` images and labels (as :func:`load_split` gives them) from files checked
    as :func:`load_raw_files` checks them: each file is read once, for the check and for the tensors."""
    files = load_raw_files(data_dir)
    return {"train": _split_tensors(files, train=True), "test": _split_tensors(files, train=False)}


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
