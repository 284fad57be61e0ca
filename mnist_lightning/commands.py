"""The ``serve`` and ``export`` commands, which LightningCLI does not know: a checkpoint in, a page or a file out."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import NoReturn

from mnist_lightning.cli import CheckpointError, load_checkpoint
from mnist_lightning.export import FORMATS
from mnist_lightning.models.base import MNISTClassifier

EXTRA_COMMANDS = ("serve", "export")


def load_model(ckpt_path: str | Path) -> MNISTClassifier:
    """The classifier that wrote ``ckpt_path``, rebuilt from its ``_class_path`` and hyperparameters, in eval mode.

    The checkpoint is read with ``weights_only`` (no arbitrary unpickling); the class must be an
    :class:`MNISTClassifier` that can be imported here.
    """
    checkpoint = load_checkpoint(ckpt_path)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    hparams.pop("_instantiator", None)
    class_path = hparams.pop("_class_path", None)
    if not isinstance(class_path, str):
        raise CheckpointError(
            f"checkpoint {ckpt_path} has no model class path; it was not written by mnist-lightning fit"
        )
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint {ckpt_path} needs the model class {class_path}, which cannot be imported here "
            f"({type(err).__name__}); install the mnist-lightning version that trained it"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, MNISTClassifier)):
        raise CheckpointError(f"checkpoint {ckpt_path} names {class_path}, which is not an MNISTClassifier")
    try:
        model = cls(**hparams)
        model.load_state_dict(checkpoint["state_dict"])
    except (TypeError, RuntimeError) as err:
        raise CheckpointError(
            f"checkpoint {ckpt_path} does not fit {class_path} ({str(err).splitlines()[0]}); "
            "use the mnist-lightning version that trained it"
        ) from None
    return model.eval()


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse with the CLI's error style: one line, exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"mnist-lightning: error: {message}; see '{self.prog} --help'", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``mnist-lightning serve`` and ``mnist-lightning export``."""
    parser = OneLineArgumentParser(prog="mnist-lightning")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineArgumentParser)
    about = "a local page to draw digits and see the model's probabilities as you draw"
    serve = commands.add_parser("serve", help=about, description=about)
    serve.add_argument("--ckpt_path", required=True, help="checkpoint written by mnist-lightning fit")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (default: %(default)s)")
    about = (
        "write the model as ONNX, TorchScript or torch.export (pt2) file: input 'images' uint8 (N, 28, 28) "
        "white ink on black, outputs 'logits' and 'probabilities' float32 (N, 10)"
    )
    export = commands.add_parser("export", help=about, description=about)
    export.add_argument("--ckpt_path", required=True, help="checkpoint written by mnist-lightning fit")
    export.add_argument("--format", choices=list(FORMATS), default="onnx", help="(default: %(default)s)")
    export.add_argument(
        "--output", default=None, help="file to write (default: the checkpoint's path with .onnx, .pt or .pt2)"
    )
    return parser


def run_extra_command(args: list[str]) -> None:
    """Run ``serve`` or ``export`` with command-line ``args`` (the first one names the command)."""
    options = build_parser().parse_args(args)
    model = load_model(options.ckpt_path)
    if options.command == "export":
        from mnist_lightning.export import export_model

        output = options.output or Path(options.ckpt_path).with_suffix(FORMATS[options.format])
        written = export_model(model, output, options.format)
        print(f"Exported {type(model).__name__} as {options.format} to {written}", file=sys.stderr)
    else:
        from mnist_lightning.serve import serve

        serve(model, options.ckpt_path, options.host, options.port)
