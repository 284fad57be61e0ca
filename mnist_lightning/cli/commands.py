"""The ``serve``, ``export`` and ``report`` commands, which LightningCLI does not know: checkpoints in, files out.

Each has a function that adds its argparse parser and one that runs it; :mod:`mnist_lightning.cli.main` lists them
(with ``tune``'s, from :mod:`mnist_lightning.tuning`) in the one command table. The modules that do the work (a web
server, exporters, the report) are imported only when their command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mnist_lightning.checkpoints import load_classifier
from mnist_lightning.cli.argtypes import port_number, positive_int, positive_number
from mnist_lightning.serving.export import FORMATS

TRUSTED_MODEL_HELP = (
    "full class path of a classifier defined outside mnist-lightning that the checkpoint holds (it is imported, "
    "so name only code you trust); this package's classifiers need nothing"
)


def add_checkpoint_arguments(parser: argparse.ArgumentParser, several: bool = False) -> None:
    """``--ckpt_path`` (one checkpoint, or ``several``) and ``--model``, the class to trust for a foreign one."""
    written = "written by mnist-lightning fit"
    about = f"checkpoints {written} ('last': the newest)" if several else f"checkpoint {written}"
    parser.add_argument("--ckpt_path", required=True, nargs="+" if several else None, help=about)
    parser.add_argument("--model", default=None, help=TRUSTED_MODEL_HELP)


def trusted_classes(options: argparse.Namespace) -> list[str]:
    """The class paths the user vouched for with ``--model``."""
    return [options.model] if options.model else []


def add_command(commands: Any, name: str, about: str) -> argparse.ArgumentParser:
    """A subcommand parser whose one-line ``about`` is both its entry in the list and its own description."""
    return commands.add_parser(name, help=about, description=about)


# --------------------------------------------------------------------------------------------------------- serve
def add_serve_parser(commands: Any) -> argparse.ArgumentParser:
    parser = add_command(commands, "serve", "a local page to draw digits and see the model's probabilities as you draw")
    add_checkpoint_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument(
        "--request_timeout",
        type=positive_number,
        default=5.0,  # serving.connections.REQUEST_TIMEOUT_S (not imported here: it imports werkzeug)
        metavar="SECONDS",
        help="a request (headers and body) must arrive within this, else it gets 408 (default: %(default)g)",
    )
    parser.add_argument(
        "--port", type=port_number, default=8000, help="port; 0 picks a free one (default: %(default)s)"
    )
    parser.add_argument(
        "--temperature",
        type=positive_number,
        default=1.0,
        help="divide the logits by this before the softmax: the temperature 'mnist-lightning report' fits (default: 1)",
    )
    return parser


def run_serve(options: argparse.Namespace) -> None:
    from mnist_lightning.serving.serve import serve

    model = load_classifier(options.ckpt_path, trusted=trusted_classes(options))
    model.temperature = options.temperature
    serve(model, options.ckpt_path, options.host, options.port, options.request_timeout)


# -------------------------------------------------------------------------------------------------------- export
def add_export_parser(commands: Any) -> argparse.ArgumentParser:
    about = (
        "write the model as ONNX, TorchScript or torch.export (pt2) file: input 'images' uint8 (N, 28, 28) "
        "white ink on black, outputs 'logits' and 'probabilities' float32 (N, 10)"
    )
    parser = add_command(commands, "export", about)
    add_checkpoint_arguments(parser)
    parser.add_argument(
        "--format", choices=list(FORMATS), default=None, help="(default: from --output's suffix, else onnx)"
    )
    parser.add_argument(
        "--output",
        default=None,
        help="file to write, ending in .onnx, .pt or .pt2 (default: the checkpoint's path with the format's suffix)",
    )
    return parser


def run_export(options: argparse.Namespace) -> None:
    from mnist_lightning.serving.export import export_model, export_target

    target = export_target(options.output, options.ckpt_path, options.format)  # before the model is loaded and traced
    model = load_classifier(options.ckpt_path, trusted=trusted_classes(options))
    try:
        written = export_model(model, target.path, target.format)
    except BaseException:
        target.remove_made_folders()  # a failed export leaves nothing behind, not even the folders it made
        raise
    print(f"Exported {type(model).__name__} as {target.format} to {written}", file=sys.stderr)


# -------------------------------------------------------------------------------------------------------- report
# the report's options that are build_report's keyword arguments of the same name
REPORT_SETTINGS = ("use_wandb", "device", "batch_size", "seed", "shift_images", "shifts")


def add_report_parser(commands: Any) -> argparse.ArgumentParser:
    about = (
        "a report on one or several checkpoints: per-class metrics, confusion matrix, confident mistakes, "
        "calibration and temperature, accuracy under shifts (Markdown, PNG, JSON; also logged to the training W&B run)"
    )
    parser = add_command(commands, "report", about)
    add_checkpoint_arguments(parser, several=True)
    parser.add_argument(
        "--output", default=None, help="folder (default: <run dir>/report for one, runs/reports/<date-time> for more)"
    )
    parser.add_argument(
        "--no-wandb", dest="use_wandb", action="store_false", help="do not log to the training W&B runs"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default: %(default)s)")
    parser.add_argument("--batch_size", type=positive_int, default=2000, help="(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random shifts (default: %(default)s)")
    parser.add_argument(
        "--shift_images",
        type=positive_int,
        default=1000,
        help="test images per shifted level (default: %(default)s, 10000: all)",
    )
    parser.add_argument("--shifts", nargs="+", default=None, help="shifts to run (default: all)")
    return parser


def run_report(options: argparse.Namespace) -> None:
    from mnist_lightning.evaluation.report import build_report

    settings = {name: getattr(options, name) for name in REPORT_SETTINGS}
    written = build_report(options.ckpt_path, options.output, trusted=trusted_classes(options), **settings)
    print(f"Report written to {written.markdown} ({written.data['seconds']:.0f} s)", file=sys.stderr)
