"""What a ``--ckpt_path`` is when it is not a checkpoint file, said in one line with what to pass instead.

A path that does not exist (and the checkpoints beside it), a symbolic link that leads nowhere or in a loop, a folder
(and the checkpoints in it: only ``last.ckpt``, several, none), or a file that cannot be a checkpoint (empty, text,
truncated, an export). Paths in the advice are shell-quoted, so that ``--ckpt_path PATH`` works as printed, and only
files that exist and may be checkpoints are suggested. :func:`mnist_lightning.checkpoints.read_checkpoint` calls
:func:`check_checkpoint_file` before it reads a file.
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import zipfile
from pathlib import Path

from mnist_lightning.errors import CheckpointError

LAST_NAME = re.compile(r"last(-v\d+)?\.ckpt")


def check_checkpoint_file(path: Path) -> None:
    """Refuse, saying what it is and what to pass instead, a ``--ckpt_path`` that is not a checkpoint file: a path
    that does not exist (and the checkpoints beside it), a symbolic link that leads nowhere or in a loop, a folder
    (and the checkpoints in it), or a file that cannot be a checkpoint (empty, text, an export)."""
    try:
        os.stat(path)
    except OSError as err:
        raise CheckpointError(missing_path(path, err)) from None
    if path.is_dir():
        named = ", not a file (although its name ends in .ckpt)" if path.suffix == ".ckpt" else ""
        raise CheckpointError(f"checkpoint {path} is a folder{named}; {folder_advice(path)}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a regular file (a device or pipe); pass a .ckpt file")
    what = not_a_checkpoint(path)
    if what:
        raise CheckpointError(f"checkpoint {path} is {what}; {folder_advice(path.parent, 'its folder')}")


def missing_path(path: Path, err: OSError) -> str:
    """Why ``os.stat(path)`` failed, in words, with the fix."""
    if err.errno == errno.ELOOP:
        return (
            f"checkpoint {path} is a symbolic link loop (its links lead back to themselves); point the link at a "
            ".ckpt file, or pass the file itself"
        )
    if path.is_symlink():
        return (
            f"checkpoint {path} is a symbolic link to {os.readlink(path)}, which does not exist (moved or deleted); "
            "pass the checkpoint file itself, or make the link point at it"
        )
    if err.errno == errno.EACCES:
        return f"checkpoint {path} cannot be read (permission denied); pass a checkpoint you can read"
    if err.errno == errno.ENOTDIR:
        return f"checkpoint {path} does not exist (a part of the path is a file, not a folder); pass a .ckpt file"
    # the folder it would be in (the nearest one that exists): a typo is fixed with a file that is there, never
    # with the missing path itself
    parent = next((folder for folder in path.parents if folder.is_dir()), Path("."))
    if checkpoints_in(parent)[1]:
        return f"checkpoint {path} does not exist; {folder_advice(parent, str(parent))}"
    return (
        f"checkpoint {path} does not exist; pass a .ckpt file from runs/<project>/<run id>/checkpoints "
        "or --ckpt_path last"
    )


def checkpoints_in(folder: Path) -> tuple[Path, list[Path]]:
    """The ``.ckpt`` files in ``folder`` that may be checkpoints (newest last), or those in its ``checkpoints``
    folder when it is a run's folder; with the folder they are in."""
    for place in (folder, folder / "checkpoints"):
        try:
            # only files that may be checkpoints: advice never names an empty, a text or a truncated file
            files = [p for p in place.glob("*.ckpt") if p.is_file() and not_a_checkpoint(p) is None]
        except OSError:
            files = []
        if files:
            return place, sorted(files, key=lambda p: (p.stat().st_mtime, p.name))
    return folder, []


def folder_advice(folder: Path, name: str = "it") -> str:
    """What to pass instead of ``folder`` (called ``name`` in the message): the checkpoints it holds (the best and
    the last by name), or where the checkpoints of a run are. Paths are shell-quoted: the advice works as printed."""
    place, files = checkpoints_in(folder)
    if place != folder:
        name = f"its {place.name} folder" if name == "it" else str(place)
    if not files:
        # beside a file that is not a checkpoint, "no .ckpt files" would be false: that file may be one by name
        holds = "no other checkpoint" if name == "its folder" else "no .ckpt files"
        return f"{name} holds {holds}: pass a .ckpt file from runs/<project>/<run id>/checkpoints, or --ckpt_path last"
    lasts = [p for p in files if LAST_NAME.fullmatch(p.name)]
    best = [p for p in files if p not in lasts]
    if not best:
        kind = "only " + " and ".join(p.name for p in lasts)
        return f"{name} holds {kind}, the state the run saved last: pass --ckpt_path {shlex.quote(str(lasts[-1]))}"
    if len(files) == 1:
        return f"{name} holds {files[0].name}: pass --ckpt_path {shlex.quote(str(files[0]))}"
    names = ", ".join(p.name for p in files[-4:]) + (f" and {len(files) - 4} more" if len(files) > 4 else "")
    choices = f"--ckpt_path {shlex.quote(str(best[-1]))}"
    if lasts:
        choices += f" (to continue training: --ckpt_path {shlex.quote(str(lasts[-1]))})"
    return f"{name} holds {names}: pass one of them, e.g. {choices}"


# what a file that cannot be a checkpoint is, by its name (checked after its first bytes)
NOT_CHECKPOINTS = {
    ".onnx": "an ONNX model (an export)",
    ".pt2": "a torch.export program (an export)",
    ".yaml": "a YAML config (pass it with --config)",
    ".yml": "a YAML config (pass it with --config)",
    ".csv": "a CSV table",
    ".json": "a JSON file",
    ".md": "a Markdown file",
    ".png": "an image",
    ".jpg": "an image",
}


def not_a_checkpoint(path: Path) -> str | None:
    """What ``path`` is when its first bytes show it cannot be a checkpoint (torch writes a zip, or a pickle in the
    older format); None when it may be one (reading it decides)."""
    try:
        with path.open("rb") as file:
            head = file.read(512)
    except OSError as err:
        return f"a file that cannot be read ({err.strerror or err})"
    if not head:
        return "an empty file (0 bytes), not a checkpoint"
    if head.startswith(b"PK\x03\x04"):  # the zip archive torch writes: its directory is at the end
        return (
            None
            if zipfile.is_zipfile(path)
            else "truncated or not a Lightning checkpoint (its zip archive has no end: a save or copy cut short)"
        )
    if head.startswith(b"\x80"):
        return None  # a pickle (torch's older format): torch.load tells whether it is a good one
    if path.suffix.lower() in NOT_CHECKPOINTS:
        return f"{NOT_CHECKPOINTS[path.suffix.lower()]}, not a checkpoint"
    try:
        text = head.decode()
    except UnicodeDecodeError:
        return f"a file of {path.stat().st_size:,} bytes that is neither a zip archive nor a pickle: not a checkpoint"
    first = text.strip().splitlines()[0][:60] if text.strip() else ""
    return f"a text file (it starts {first!r}), not a checkpoint"
