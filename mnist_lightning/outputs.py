"""Output files and folders: checked before the work starts, written atomically, and one line when they fail.

Every file the package writes (config.yaml, predictions, figures, checkpoints through
:class:`mnist_lightning.callbacks.checkpointing.AtomicCheckpointIO`) goes to a temporary name beside its target and is
renamed into place, so a crash, a kill or a full disk never leaves a half-written file or spoils a good one.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mnist_lightning.errors import OutputPathError


def reason(err: OSError) -> str:
    """An OSError in a few words: ``read-only file system``, ``no space left on device``, ..."""
    if err.errno == errno.ENOSPC:
        return "no space left on device"
    return (err.strerror or str(err) or type(err).__name__).lower()


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first: what making ``folder`` makes."""
    return [path for path in (folder, *folder.parents) if not path.exists()]


def remove_empty_folders(folders: Iterable[Path]) -> None:
    """Remove ``folders`` (deepest first: those a failed write or run made) while they are empty. The first one that
    is not empty ends it, since the folders above it hold it; one already gone is skipped."""
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            return


def blocking_file(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` (itself excluded) that is a file rather than a folder, if any."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def refuse_file_in_the_way(path: Path, what: str) -> None:
    """One OutputPathError when the folder ``path`` is a file, or a file stands where one of its parents must be."""
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{what} {path} is a file, not a folder; remove it or choose another folder")
    blocker = blocking_file(path)
    if blocker is not None:
        raise OutputPathError(f"{what} {path} cannot be made: {blocker} is a file, not a folder; choose another path")


def prove_writable(folder: Path) -> None:
    """Make and remove a file in ``folder``; OSError when it cannot be written (permissions, a read-only disk)."""
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
        pass


def ensure_writable_folder(path: str | Path, what: str) -> Path:
    """Create ``path`` (and its parents) and prove a file can be written in it, or raise one OutputPathError."""
    path = Path(path)
    refuse_file_in_the_way(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
        prove_writable(path)
    except OSError as err:
        raise OutputPathError(f"cannot write {what} {path} ({reason(err)}); choose another folder") from None
    return path


def ensure_writable_file(path: str | Path, what: str) -> Path:
    """Check that the file ``path`` can be written (its folder writable, no folder in its place)."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{what} {path} is a folder; give a file name such as {path / 'predictions.csv'}")
    ensure_writable_folder(path.parent, f"the folder of {what}")
    return path


@contextmanager
def staged_folder(path: str | Path, what: str) -> Iterator[Path]:
    """A new temporary folder beside ``path`` to fill; when the block ends normally its files move into ``path``
    (made then, with its parents), and on any failure (an exception, Ctrl+C) it is removed with what it holds.

    So an output folder appears only complete, and an earlier one is not touched until the new files are all
    written (its other files stay). Raises one :class:`OutputPathError` at once when ``path`` cannot be written.
    """
    path = Path(os.path.abspath(path))
    refuse_file_in_the_way(path, what)
    anchor = next(parent for parent in path.parents if parent.is_dir())  # same file system as path will be
    try:
        if path.is_dir():  # the files will be moved into it: prove that now, not after the work
            prove_writable(path)
        staging = Path(tempfile.mkdtemp(dir=anchor, prefix=f".{path.name}.partial-"))
    except OSError as err:
        raise OutputPathError(f"cannot write {what} {path} ({reason(err)}); choose another folder") from None
    try:
        yield staging
        staging.chmod(0o777 & ~current_umask())  # mkdtemp makes the folder private; the result is an ordinary one
        try:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                os.rename(staging, path)
            else:
                for item in staging.iterdir():
                    shutil.move(item, path / item.name)
        except OSError as err:
            raise OutputPathError(f"cannot write {what} {path} ({reason(err)}); choose another folder") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_atomically(path: str | Path, text: str | bytes) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it and a rename: all of it or nothing."""
    data = text.encode() if isinstance(text, str) else text
    replace_atomically(path, lambda tmp: tmp.write_bytes(data))


def replace_atomically(path: str | Path, write: Callable[[Path], object], suffix: str = ".tmp") -> Path:
    """Let ``write`` fill a temporary file beside ``path`` (ending in ``suffix``), then rename it to ``path``.

    A failure (a full disk, say) removes the temporary file, leaves any older ``path`` untouched, and becomes one
    :class:`OutputPathError` naming the path and the reason.
    """
    path = Path(path)
    if not path.parent.is_dir():
        ensure_writable_folder(path.parent, f"the folder of {path.name}")
    if path.is_dir():
        raise OutputPathError(f"cannot write {path}: it is a folder; give a file name")
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    except OSError as err:
        raise OutputPathError(f"cannot write {path} ({reason(err)}); choose another folder") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        tmp.chmod(0o666 & ~current_umask())  # mkstemp makes the file private; the result is an ordinary file
        os.replace(tmp, path)
    except OSError as err:
        raise OutputPathError(f"cannot write {path} ({reason(err)}); nothing was written") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
