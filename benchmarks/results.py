"""Regenerate the results table: fit presets from ``configs/``, test them on the official test set, write markdown.

Every preset is built exactly as ``mnist-lightning fit --config configs/<preset>.yaml`` builds it (through
:class:`MNISTLightningCLI` with ``configs/defaults.yaml`` first), trained with its recipe (or fewer epochs with
``--max-epochs``), and tested once on the official 10,000 test images from the checkpoint with the best validation
accuracy. Each measured row is kept in ``benchmarks/results.json`` so that runs of different presets, on different
machines, add up to one table in ``benchmarks/results.md``.

    python benchmarks/results.py                                  # every preset, full recipes
    python benchmarks/results.py --presets mlp_strong convnet      # some presets
    python benchmarks/results.py --presets convnet --max-epochs 1  # a quick check (marked as capped in the table)
    python benchmarks/results.py --table-only                      # rewrite the markdown from the JSON
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mnist_lightning.cli import MNISTLightningCLI  # noqa: E402

CONFIGS = REPO / "configs"
CATALOGUE_PRESETS = [
    "linear",
    "mlp_20",
    "mlp_40_20",
    "mlp_128_62",
    "mlp_128_64",
    "mlp_100_100_linear",
    "lenet_bn1",
    "lenet5",
    "small_cnn",
    "convnet_pool2",
    "convnet",
    "vit",
    "vit_encoder",
]
STRONG_PRESETS = ["mlp_strong", "cnn_strong", "vit_strong"]
# what the notebook a preset came from reported (docs/presets.md), and the targets of the stronger presets
SOURCE_FIGURES = {
    "mlp_128_64": "97.76%",
    "convnet": "98% (NLL 0.081)",
    "vit_encoder": "90% (NLL 0.312)",
    "mlp_strong": "target ≥ 98.8%",
    "cnn_strong": "target ≥ 99.6%",
    "vit_strong": "target ≥ 99.3%",
}


def hardware(threads: int) -> str:
    """The accelerator a run used, in words."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    if torch.backends.mps.is_available():
        return "Apple MPS"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {threads} thread{'s' if threads > 1 else ''}"


def recipe_epochs(preset: str) -> int:
    """The epoch count of a preset's recipe (``trainer.max_epochs`` of its config, else of defaults.yaml)."""
    for path in (CONFIGS / f"{preset}.yaml", CONFIGS / "defaults.yaml"):
        epochs = (yaml.safe_load(path.read_text()).get("trainer") or {}).get("max_epochs")
        if epochs:
            return int(epochs)
    raise ValueError(f"no trainer.max_epochs for {preset}")


def run_preset(preset: str, max_epochs: int | None, workdir: Path, extra_args: Sequence[str] = ()) -> dict[str, Any]:
    """Fit one preset from its config, test its best-validation checkpoint, and return the table row.

    ``extra_args`` are more command-line options for the CLI (benchmarks/gpu.py's tiny mode limits the batches).
    """
    config = CONFIGS / f"{preset}.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"no preset {config}; choose from {', '.join(CATALOGUE_PRESETS + STRONG_PRESETS)}")
    full = recipe_epochs(preset)
    epochs = min(full, max_epochs) if max_epochs else full
    args = ["--config", str(CONFIGS / "defaults.yaml"), "--config", str(config)]
    args += ["--trainer.max_epochs", str(epochs), "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    args += ["--trainer.default_root_dir", str(workdir / preset), "--checkpoint.dirpath", str(workdir / preset)]
    args += list(extra_args)
    cli = MNISTLightningCLI(args=args, run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - start
    tested = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)[0]
    return {
        "preset": preset,
        "model": type(cli.model).__name__,
        "parameters": cli.model.num_parameters,
        "epochs": cli.trainer.current_epoch,
        "recipe_epochs": full,
        "test_acc": round(100 * tested["test/acc"], 2),
        "test_loss": round(tested["test/loss"], 4),
        "best_val_acc": round(100 * float(cli.trainer.checkpoint_callback.best_model_score), 2),
        "seconds_per_epoch": round(seconds / max(cli.trainer.current_epoch, 1), 1),
        "hardware": hardware(torch.get_num_threads()),
        "date": dt.date.today().isoformat(),
        "source": SOURCE_FIGURES.get(preset, "not reported"),
    }


def markdown(rows: dict[str, dict[str, Any]]) -> str:
    """The results table, presets in the order of docs/presets.md and then the stronger ones."""
    order = [p for p in CATALOGUE_PRESETS + STRONG_PRESETS if p in rows] + sorted(
        set(rows) - set(CATALOGUE_PRESETS + STRONG_PRESETS)
    )
    lines = [
        "# Results",
        "",
        "Test accuracy and loss on the official 10,000 MNIST test images, from the checkpoint with the best validation",
        "accuracy. Regenerate with `python benchmarks/results.py` (see its `--help`); rows accumulate in",
        "`benchmarks/results.json`. *Epochs* says `run / recipe`: a row with fewer epochs than its recipe was capped",
        "(`--max-epochs`; a one-cycle or cosine schedule is then compressed into those epochs) and is not the preset's",
        "full result. Seconds per epoch include validation; on a shared, loaded CPU they are slow and noisy.",
        "",
    ]
    lines += [
        "| preset | model | parameters | epochs (run / recipe) | test acc | test loss | best val acc | s / epoch "
        "| source reported | hardware | date |",
        "|---|---|---:|---|---:|---:|---:|---:|---|---|---|",
    ]
    for preset in order:
        r = rows[preset]
        epochs = f"{r['epochs']} / {r['recipe_epochs']}" + ("" if r["epochs"] >= r["recipe_epochs"] else " (capped)")
        lines.append(
            f"| `{preset}` | {r['model']} | {r['parameters']:,} | {epochs} | {r['test_acc']:.2f}% | "
            f"{r['test_loss']:.4f} | {r['best_val_acc']:.2f}% | {r['seconds_per_epoch']:.1f} | {r['source']} | "
            f"{r['hardware']}{'; ' + r['load'] if r.get('load') else ''} | {r['date']} |"
        )
    missing = [p for p in CATALOGUE_PRESETS + STRONG_PRESETS if p not in rows]
    if missing:
        lines += ["", f"Not measured yet: {', '.join(f'`{p}`' for p in missing)}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=CATALOGUE_PRESETS + STRONG_PRESETS, help="presets to run")
    parser.add_argument("--max-epochs", type=int, default=None, help="cap every preset's epochs (a quick check)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy CPU)")
    parser.add_argument("--load", default="", help="a note on the machine's load, shown with the hardware")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results.json")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results.md")
    parser.add_argument("--table-only", action="store_true", help="only rewrite the markdown from the JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "offline")
    rows: dict[str, dict[str, Any]] = json.loads(args.results.read_text()) if args.results.is_file() else {}
    if not args.table_only:
        with tempfile.TemporaryDirectory(prefix="mnist-results-") as workdir:
            for preset in args.presets:
                row = run_preset(preset, args.max_epochs, Path(workdir))
                if args.load:
                    row["load"] = args.load
                rows[preset] = row
                print(json.dumps(row), flush=True)
                args.results.write_text(json.dumps(rows, indent=2) + "\n")
                args.output.write_text(markdown(rows))
    args.output.write_text(markdown(rows))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
