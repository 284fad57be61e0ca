"""Models that leave Python: ONNX, TorchScript and ``torch.export`` files with the MNIST scaling built in.

Every exported model takes raw MNIST-style images, ``images``: uint8 ``(N, 28, 28)`` (white ink on black, as
:func:`mnist_lightning.data.images.prepare_digit` returns them; any batch size N) and returns ``logits`` and
``probabilities``, both float32 ``(N, 10)``. Scaling to [0, 1] and the MNIST normalization happen inside.

- ``onnx``: run it with onnxruntime (or any ONNX runtime), no PyTorch needed;
- ``torchscript``: ``torch.jit.load`` (also from C++ libtorch; TorchScript is deprecated in recent PyTorch);
- ``pt2``: ``torch.export.load(path).module()``, PyTorch's successor to TorchScript.
"""

from __future__ import annotations

import io
import os
import shlex
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from mnist_lightning.data import normalize_uint8
from mnist_lightning.errors import MNISTLightningError, OutputPathError
from mnist_lightning.models.base import MNISTClassifier
from mnist_lightning.outputs import prove_writable, reason, remove_empty_folders, replace_atomically

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "pt2": ".pt2"}
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probabilities")


class ExportError(MNISTLightningError, ValueError):
    """The model could not be exported; the message says why."""


@dataclass
class ExportTarget:
    """Where ``export`` writes and in which format, checked before the model is loaded (:func:`export_target`)."""

    path: Path
    format: str
    missing_folders: list[Path] = field(default_factory=list)  # made by the write, outermost first

    def remove_made_folders(self) -> None:
        """Remove the folders the write made, if they are still empty (after a failed export: nothing left)."""
        remove_empty_folders(reversed(self.missing_folders))


def quoted(path: str | Path) -> str:
    """A path as it must be typed in a shell."""
    return shlex.quote(str(path))


def export_target(output: str | Path | None, ckpt_path: str | Path, fmt: str | None = None) -> ExportTarget:
    """The export file and its format for ``--output``/``--format``, or one error saying what to give instead.

    Without ``fmt`` the format follows ``output``'s suffix (onnx without either); without ``output`` the file goes
    beside the checkpoint with the format's suffix. Refused, each with a fix that works as printed: a folder (or a
    name ending in a slash), a suffix that is not the format's, something that is not a regular file (a device, a
    FIFO), the checkpoint itself, a folder that is a file or cannot be written. A missing folder is made by the write
    (and removed again if the export fails). An existing file is replaced only by a complete new one.

    Raises:
        ExportError: an unknown format, or a suffix that does not match it.
        OutputPathError: an output path that cannot be written as an export file.
    """
    if fmt is not None and fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    checkpoint = Path(ckpt_path)
    if output is not None and not str(output).strip():
        example = quoted(checkpoint.stem + FORMATS[fmt or "onnx"])
        raise OutputPathError(
            f"the export file --output {quoted(output)} is empty; give a file name such as --output {example}"
        )
    if output is None:
        fmt = fmt or "onnx"
        path = checkpoint.with_suffix(FORMATS[fmt])
        what = f"the export file {quoted(path)} (beside the checkpoint; choose another with --output)"
    else:
        path = Path(output).expanduser()
        if str(output).endswith(("/", os.sep)) or path.is_dir():
            example = path / (checkpoint.stem + FORMATS[fmt or "onnx"])
            folder = "is a folder" if path.is_dir() else "names a folder (it ends in /)"
            raise OutputPathError(
                f"the export file --output {quoted(output)} {folder}; "
                f"give a file name such as --output {quoted(example)}"
            )
        fmt = fmt or format_of(path)
        expected = FORMATS[fmt]
        if path.suffix.lower() != expected:
            others = [name for name, suffix in FORMATS.items() if suffix == path.suffix.lower()]
            instead = f", or --format {others[0]}" if others else ""
            raise ExportError(
                f"the export file --output {quoted(output)} does not end in {expected}, the suffix of --format {fmt}; "
                f"use --output {quoted(path.with_suffix(expected))}{instead}"
            )
        what = f"the export file --output {quoted(output)}"
    example = f"--output {quoted(checkpoint.stem + FORMATS[fmt])}"
    if path.exists() or path.is_symlink():
        if path.exists() and not stat.S_ISREG(path.stat().st_mode):
            raise OutputPathError(f"{what} is not a regular file; give a file name such as {example}")
        if checkpoint.exists() and path.exists() and os.path.samefile(path, checkpoint):
            raise OutputPathError(f"{what} is the checkpoint itself; give another file name such as {example}")
    missing = missing_folders(path.parent, what, example)
    probe_writable(path.parent if not missing else missing[0].parent, what, example)
    return ExportTarget(path, fmt, missing)


def format_of(path: Path) -> str:
    """The export format a file name's suffix says."""
    for name, suffix in FORMATS.items():
        if path.suffix.lower() == suffix:
            return name
    choices = ", ".join(f"{suffix} ({name})" for name, suffix in FORMATS.items())
    raise ExportError(
        f"the export file --output {quoted(path)} does not say which format to write: end it in {choices}, "
        f"such as --output {quoted(path.with_suffix('.onnx'))}, or give --format"
    )


def missing_folders(folder: Path, what: str, example: str) -> list[Path]:
    """The folders above the export file that do not exist yet, outermost first; a file in the way is an error."""
    missing: list[Path] = []
    for candidate in [folder, *folder.parents]:
        if candidate.is_dir():
            return list(reversed(missing))
        if candidate.is_symlink() and not candidate.exists():
            raise OutputPathError(
                f"the folder of {what} cannot be made: {quoted(candidate)} is a link to nothing (broken, or a loop); "
                f"choose another --output, such as {example}"
            )
        if candidate.exists():
            raise OutputPathError(
                f"the folder of {what} cannot be made: {quoted(candidate)} is a file, not a folder; "
                f"choose another --output, such as {example}"
            )
        missing.append(candidate)
    return list(reversed(missing))


def probe_writable(folder: Path, what: str, example: str) -> None:
    """Prove a file can be made in ``folder`` (permissions, a read-only disk), leaving nothing behind."""
    try:
        prove_writable(folder)
    except OSError as err:
        raise OutputPathError(
            f"cannot write {what}: folder {quoted(folder)} is not writable ({reason(err)}); "
            f"choose another --output, such as {example} in a folder you can write"
        ) from None


class RawImageClassifier(nn.Module):
    """A classifier with the input scaling inside: uint8 ``(N, 28, 28)`` → (logits, probabilities).

    The probabilities are the softmax of the logits divided by the model's ``temperature`` (the one ``report``
    stored, applied by ``export`` unless ``--temperature off``), a constant in the exported graph.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.temperature = float(getattr(model, "temperature", 1.0))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(normalize_uint8(images.unsqueeze(1)))
        return logits, (logits / self.temperature).softmax(dim=1)


def export_model(
    model: MNISTClassifier, output: str | Path, fmt: Literal["onnx", "torchscript", "pt2"] = "onnx"
) -> Path:
    """Write ``model`` (on the CPU, in eval mode) to ``output`` in format ``fmt``, atomically."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    wrapped = RawImageClassifier(model.to("cpu").eval()).eval()
    example = torch.zeros(2, 28, 28, dtype=torch.uint8)

    def write(tmp: Path) -> None:
        with torch.no_grad():
            if fmt == "onnx":
                _export_onnx(wrapped, example, tmp)
            elif fmt == "pt2":
                program = torch.export.export(wrapped, (example,), dynamic_shapes=({0: _batch_dim()},))
                tmp.write_bytes(in_memory(lambda buffer: torch.export.save(program, buffer)))
            else:
                with trainer_free_tracing(wrapped):
                    traced = torch.jit.trace(wrapped, (example,), check_trace=False)
                tmp.write_bytes(in_memory(lambda buffer: torch.jit.save(traced, buffer)))

    # the temporary name ends like the final one: torch.export.save warns about any other suffix than .pt2
    return replace_atomically(output, write, suffix=FORMATS[fmt])


def in_memory(save: Callable[[io.BytesIO], object]) -> bytes:
    """What ``save`` writes to a file, as bytes: written to disk by Python, a full disk is an OSError.

    torch's own file writers (``torch.jit.save`` and ``torch.export.save`` given a path) abort the whole process
    on a full disk (a C++ exception; measured: "Fatal Python error: Aborted"), which no ``except`` can turn into
    one line. The files are a few MB at most for these models.
    """
    buffer = io.BytesIO()
    save(buffer)
    return buffer.getvalue()


@contextmanager
def trainer_free_tracing(module: nn.Module) -> Iterator[None]:
    """Let ``torch.jit.trace`` take in the LightningModules inside ``module`` that no Trainer holds.

    The tracer reads every attribute of every submodule (``hasattr`` over ``dir``, looking for exported methods),
    and a LightningModule's ``trainer`` property raises when no Trainer holds it, except while Lightning's private
    flag ``_jit_is_scripting`` is set. Lightning's own way to trace, ``LightningModule.to_torchscript``, sets the
    same flag but is deprecated (it warns), and neither torch nor Lightning has a public switch; attaching a
    throwaway Trainer just to export would set up accelerators and log its own lines. tests/test_eval_canaries.py
    fails when Lightning stops honouring the flag (or when the tracer stops needing it).
    """
    lightning_modules = [m for m in module.modules() if isinstance(m, LightningModule)]
    for lightning_module in lightning_modules:
        lightning_module._jit_is_scripting = True
    try:
        yield
    finally:
        for lightning_module in lightning_modules:
            del lightning_module._jit_is_scripting  # back to the class's False


def _export_onnx(wrapped: nn.Module, example: Tensor, path: Path) -> None:
    try:
        import onnx  # noqa: F401  (torch.onnx needs it, and onnxscript, to write the file)
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ExportError(
            f"ONNX export needs the onnx and onnxscript packages ({err}); pip install onnx onnxscript"
        ) from None
    program = torch.onnx.export(
        wrapped,
        (example,),
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes=({0: _batch_dim()},),
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    if program is None:
        raise ExportError("torch.onnx.export returned no program; update torch")
    program.save(str(path), external_data=False)


def _batch_dim() -> torch.export.Dim:
    return torch.export.Dim("batch", min=1)
