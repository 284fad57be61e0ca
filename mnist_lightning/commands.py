"""The ``serve``, ``export`` and ``report`` commands, which LightningCLI does not know: checkpoints in, files out."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from mnist_lightning import tuning as tune
from mnist_lightning.argtypes import port_number, positive_int, positive_number
from mnist_lightning.checkpoints import load_classifier
from mnist_lightning.outputs import ensure_writable_file
from mnist_lightning.serving.export import FORMATS

EXTRA_COMMANDS = ("serve", "export", "tune", "report")
TRUSTED_MODEL_HELP = (
    "full class path of a classifier defined outside mnist-lightning that the checkpoint holds (it is imported, "
    "so name only code you trust); this package's classifiers need nothing"
)


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse with the CLI's error style: one line, exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"mnist-lightning: error: {message}; see '{self.prog} --help'", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``mnist-lightning serve``, ``export`` and ``tune``."""
    parser = OneLineArgumentParser(prog="mnist-lightning")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineArgumentParser)
    about = "a local page to draw digits and see the model's probabilities as you draw"
    serve = commands.add_parser("serve", help=about, description=about)
    serve.add_argument("--ckpt_path", required=True, help="checkpoint written by mnist-lightning fit")
    serve.add_argument("--model", default=None, help=TRUSTED_MODEL_HELP)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=port_number, default=8000, help="port; 0 picks a free one (default: %(default)s)")
    serve.add_argument(
        "--temperature",
        type=positive_number,
        default=1.0,
        help="divide the logits by this before the softmax: the temperature 'mnist-lightning report' fits (default: 1)",
    )
    about = (
        "write the model as ONNX, TorchScript or torch.export (pt2) file: input 'images' uint8 (N, 28, 28) "
        "white ink on black, outputs 'logits' and 'probabilities' float32 (N, 10)"
    )
    export = commands.add_parser("export", help=about, description=about)
    export.add_argument("--ckpt_path", required=True, help="checkpoint written by mnist-lightning fit")
    export.add_argument("--model", default=None, help=TRUSTED_MODEL_HELP)
    export.add_argument("--format", choices=list(FORMATS), default="onnx", help="(default: %(default)s)")
    export.add_argument(
        "--output", default=None, help="file to write (default: the checkpoint's path with .onnx, .pt or .pt2)"
    )
    tune.add_tune_parser(commands)
    about = (
        "a report on one or several checkpoints: per-class metrics, confusion matrix, confident mistakes, "
        "calibration and temperature, accuracy under shifts (Markdown, PNG, JSON; also logged to the training W&B run)"
    )
    report = commands.add_parser("report", help=about, description=about)
    report.add_argument(
        "--ckpt_path", required=True, nargs="+", help="checkpoints written by mnist-lightning fit ('last': the newest)"
    )
    report.add_argument(
        "--output", default=None, help="folder (default: <run dir>/report for one, runs/reports/<date-time> for more)"
    )
    report.add_argument("--no-wandb", dest="wandb", action="store_false", help="do not log to the training W&B runs")
    report.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default: %(default)s)")
    report.add_argument("--batch_size", type=positive_int, default=2000, help="(default: %(default)s)")
    report.add_argument("--seed", type=int, default=0, help="seed of the random shifts (default: %(default)s)")
    report.add_argument(
        "--shift_images",
        type=positive_int,
        default=1000,
        help="test images per shifted level (default: %(default)s, 10000: all)",
    )
    report.add_argument("--shifts", nargs="+", default=None, help="shifts to run (default: all)")
    report.add_argument("--model", default=None, help=TRUSTED_MODEL_HELP)
    return parser


def run_extra_command(args: list[str]) -> None:
    """Run ``serve``, ``export``, ``tune`` or ``report`` with ``args`` (the first one names the command)."""
    options = build_parser().parse_args(args)
    if options.command == "tune":
        tune.run_tune_command(options)
    elif options.command == "export":
        from mnist_lightning.serving.export import export_model

        output = options.output or Path(options.ckpt_path).with_suffix(FORMATS[options.format])
        ensure_writable_file(output, "the export file (--output)")  # before the model is loaded and traced
        model = load_classifier(options.ckpt_path, trusted=[options.model] if options.model else [])
        written = export_model(model, output, options.format)
        print(f"Exported {type(model).__name__} as {options.format} to {written}", file=sys.stderr)
    elif options.command == "report":
        from mnist_lightning.evaluation.report import build_report

        written = build_report(
            options.ckpt_path,
            options.output,
            use_wandb=options.wandb,
            device=options.device,
            batch_size=options.batch_size,
            seed=options.seed,
            shift_images=options.shift_images,
            shifts=options.shifts,
            trusted=[options.model] if options.model else [],
        )
        print(f"Report written to {written.markdown} ({written.data['seconds']:.0f} s)", file=sys.stderr)
    else:
        from mnist_lightning.serving.serve import serve

        model = load_classifier(options.ckpt_path, trusted=[options.model] if options.model else [])
        model.temperature = options.temperature
        serve(model, options.ckpt_path, options.host, options.port)
