"""Models that leave Python: ONNX, TorchScript and ``torch.export`` files with the MNIST scaling built in.

Every exported model takes raw MNIST-style images, ``images``: uint8 ``(N, 28, 28)`` (white ink on black, as
:func:`mnist_lightning.data.images.prepare_digit` returns them; any batch size N) and returns ``logits`` and
``probabilities``, both float32 ``(N, 10)``. Scaling to [0, 1] and the MNIST normalization happen inside.

- ``onnx``: run it with onnxruntime (or any ONNX runtime), no PyTorch needed;
- ``torchscript``: ``torch.jit.load`` (also from C++ libtorch; TorchScript is deprecated in recent PyTorch);
- ``pt2``: ``torch.export.load(path).module()``, PyTorch's successor to TorchScript.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from mnist_lightning.data import normalize_uint8
from mnist_lightning.errors import MNISTLightningError
from mnist_lightning.models.base import MNISTClassifier
from mnist_lightning.outputs import replace_atomically

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "pt2": ".pt2"}
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probabilities")


class ExportError(MNISTLightningError, ValueError):
    """The model could not be exported; the message says why."""


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
                torch.export.save(program, str(tmp))
            else:
                with trainer_free_tracing(wrapped):
                    traced = torch.jit.trace(wrapped, (example,), check_trace=False)
                torch.jit.save(traced, str(tmp))

    # the temporary name ends like the final one: torch.export.save warns about any other suffix than .pt2
    return replace_atomically(output, write, suffix=FORMATS[fmt])


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
        raise ExportError(f"ONNX export needs the onnx and onnxscript packages ({err}); pip install them") from None
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
