"""The ``serve``, ``export`` and ``report`` commands, which LightningCLI does not know: checkpoints in, files out.

Each has a function that adds its argparse parser and one that runs it; :mod:`mnist_lightning.cli.main` lists them
(with ``tune``'s, from :mod:`mnist_lightning.tuning`) in the one command table. The modules that do the work (a web
server, exporters, the report) are imported only when their command runs.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

from mnist_lightning.checkpoints import load_classifier
from mnist_lightning.cli.argtypes import port_number, positive_int, positive_number
from mnist_lightning.errors import ConfigError
from mnist_lightning.evaluation.temperature import WHERE_CHOICES, apply_temperature, parse_temperature
from mnist_lightning.models import MNISTClassifier
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
    add_temperature_argument(parser, "the probabilities")
    return parser


def add_temperature_argument(parser: argparse.ArgumentParser, applies_to: str) -> None:
    """``--temperature``: stored (default), a positive number, or off."""
    parser.add_argument(
        "--temperature",
        type=temperature_choice,
        default=None,
        metavar="{stored,off,T}",
        help=f"divide the logits by T before the softmax of {applies_to}; stored (the default): the temperature "
        "'mnist-lightning report' fitted and stored beside the checkpoint (1 when there is none); off: 1",
    )


def temperature_choice(text: str) -> float | None:
    """argparse type of ``--temperature``: None for stored, 1 for off, else a positive number."""
    try:
        return parse_temperature(text, "--temperature")
    except ConfigError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a temperature; use a number above 0, stored or off"
        ) from None


temperature_choice.__name__ = "temperature"


def calibrated_classifier(options: argparse.Namespace) -> MNISTClassifier:
    """The checkpoint's classifier with the temperature ``--temperature`` chose (the stored one by default)."""
    model = load_classifier(options.ckpt_path, trusted=trusted_classes(options))
    apply_temperature(model, options.ckpt_path, options.temperature, "--temperature")
    return model


def run_serve(options: argparse.Namespace) -> None:
    from mnist_lightning.serving.serve import serve

    serve(calibrated_classifier(options), options.ckpt_path, options.host, options.port, options.request_timeout)


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
    add_temperature_argument(parser, "the exported 'probabilities' ('logits' stay as they are)")
    return parser


def run_export(options: argparse.Namespace) -> None:
    from mnist_lightning.serving.export import export_model, export_target

    target = export_target(options.output, options.ckpt_path, options.format)  # before the model is loaded and traced
    model = calibrated_classifier(options)
    try:
        written = export_model(model, target.path, target.format)
    except BaseException:
        target.remove_made_folders()  # a failed export leaves nothing behind, not even the folders it made
        raise
    scaled = f", probabilities at temperature {model.temperature:.3f}" if model.temperature != 1 else ""
    print(f"Exported {type(model).__name__} as {target.format} to {written}{scaled}", file=sys.stderr)


# -------------------------------------------------------------------------------------------------------- report
# the report's options that are build_report's keyword arguments of the same name
REPORT_SETTINGS = (
    "use_wandb",
    "device",
    "batch_size",
    "seed",
    "shift_images",
    "shifts",
    "data_dir",
    "save_temperature",
)


def add_report_parser(commands: Any) -> argparse.ArgumentParser:
    about = (
        "a report on one or several checkpoints: per-class metrics, confusion matrix, confident mistakes, "
        "calibration and temperature, accuracy under shifts (Markdown, PNG, JSON; also a W&B run)"
    )
    parser = add_command(commands, "report", about)
    add_checkpoint_arguments(parser, several=True)
    parser.add_argument(
        "--output", default=None, help="folder (default: <run dir>/report for one, runs/reports/<date-time> for more)"
    )
    parser.add_argument("--no-wandb", dest="use_wandb", action="store_false", help="do not log the report to W&B")
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
    parser.add_argument(
        "--data.data_dir",
        dest="data_dir",
        default=None,
        metavar="DIR",
        help="folder holding MNIST/raw (default: the folder the checkpoint was trained on while it still holds "
        "MNIST, else $MNIST_LIGHTNING_DATA_DIR or ./data)",
    )
    parser.add_argument(
        "--save_temperature",
        choices=WHERE_CHOICES,
        default="beside",
        help="where each checkpoint's fitted temperature goes, for predict, serve, export and ensembles to apply: "
        "beside (<checkpoint>.calibration.json, the default), checkpoint (written into the .ckpt, atomically), "
        "both, or nowhere",
    )
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the report is, so that it stops as on Ctrl+C (and cleans up the same way)."""


def raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def run_report(options: argparse.Namespace) -> None:
    from mnist_lightning.evaluation.report import build_report

    settings = {name: getattr(options, name) for name in REPORT_SETTINGS}
    started = time.perf_counter()

    stages: list[str] = []

    def stage(line: str) -> None:
        stages.append(line)
        print(f"report {line} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        written = build_report(
            options.ckpt_path, options.output, trusted=trusted_classes(options), progress=stage, **settings
        )
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated)
        how = "stopped by SIGTERM" if terminated else "interrupted (Ctrl+C)"
        if stages and stages[-1].startswith("W&B"):
            what = "the report was written; adding it to the W&B run was cut short (run report again to add it)"
        else:
            what = "no report was written (an earlier one in the output folder is unchanged)"
        print(f"mnist-lightning: report {how} after {time.perf_counter() - started:.0f} s; {what}", file=sys.stderr)
        raise SystemExit(128 + int(signal.SIGTERM if terminated else signal.SIGINT)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    for model in written.data["models"]:
        print(temperature_line(model), file=sys.stderr)
    print(f"Report written to {written.markdown} ({written.data['seconds']:.0f} s)", file=sys.stderr)


def temperature_line(model: dict[str, Any]) -> str:
    """Where a checkpoint's fitted temperature went, in one line."""
    cal = model["calibration"]
    name = Path(model["checkpoint"]).name
    fitted = f"Temperature {cal['temperature']:.3f} of {name} (fitted on {cal['validation_images']:,} validation images"
    fitted += ", a small split: only a rough fit)" if cal.get("small_validation") else ")"
    if cal.get("stored_in"):
        return f"{fitted} stored in {' and '.join(cal['stored_in'])}: predict, serve, export and ensembles apply it"
    return (
        f"{fitted} not stored: {cal.get('not_stored')}; it is in report.json: pass it with --predictions.temperature "
        f"{cal['temperature']:.3f} (predict) or --temperature {cal['temperature']:.3f} (serve, export)"
    )
