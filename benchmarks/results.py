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

The frontier presets are measured over seeds, keeping their checkpoints for the ensemble rows (two processes can
run side by side, one seed each; rows are merged into the JSON under a lock):

    python benchmarks/results.py --presets cnn_frontier --seeds 1 2 3 --keep frontier-checkpoints

and the ensemble rows test every kept checkpoint of the presets named, together, through ``mnist-lightning test
--ensemble ... --tta N``, where N (1 to ``--tta``, 9 by default) is chosen on the validation split first
(results_views.py) and the test set is used once, with that N:

    python benchmarks/results.py --ensemble cnn_frontier --keep frontier-checkpoints

Seeds can run side by side on one machine, each process with its share of the cores as torch threads
(``--threads`` or ``OMP_NUM_THREADS`` wins):

    python benchmarks/results.py --presets cnn_frontier --seeds 1 2 3 --parallel 3 --keep frontier-checkpoints

``--tiny`` runs a few batches of each (a check that the script works, never a result) and, unless ``--results`` or
``--output`` names a file, writes its tables into a new temporary folder: never into benchmarks/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # presets.py beside this file, also when loaded from the tests

from presets import ALL_PRESETS, CATALOGUE_PRESETS, STRONG_PRESETS  # noqa: E402
from results_parallel import run_side_by_side  # noqa: E402
from results_views import choose_views  # noqa: E402

from mnist_lightning.cli import MNISTLightningCLI  # noqa: E402
from mnist_lightning.errors import ConfigError  # noqa: E402
from mnist_lightning.evaluation.ensemble import MAX_VIEWS  # noqa: E402
from mnist_lightning.outputs import replace_atomically, write_atomically  # noqa: E402
from mnist_lightning.threads import share_threads  # noqa: E402

CONFIGS = REPO / "configs"
# what the notebook a preset came from reported (docs/presets.md), and the targets of the stronger presets
SOURCE_FIGURES = {
    "mlp_128_64": "97.76%",
    "convnet": "98% (NLL 0.081)",
    "vit_encoder": "90% (NLL 0.312)",
    "mlp_strong": "target ≥ 98.8%",
    "cnn_strong": "target ≥ 99.6%",
    "vit_strong": "target ≥ 99.3%",
    "cnn_frontier": "target ≥ 99.70% (mean of 3 seeds)",
    "mlp_frontier": "target ≥ 99.40%",
    "vit_frontier": "target ≥ 99.50%",
    "resnet_frontier": "target ≥ 99.74% (mean of seeds)",
}
# --tiny: a few batches of each split and evaluation batches of 100 (a check that everything runs, not a result)
TINY_FIT_ARGS = [
    "--trainer.limit_train_batches=3",  # 2 and 3, not 1: the CLI reads a bare 1 as 1.0, "all batches"
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--data.eval_batch_size=100",
    "--media.enabled=false",
]
TINY_LOAD = "results.py --tiny: 3 batches per epoch, not a result"
TINY_VAL_IMAGES = 200


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


def run_preset(
    preset: str,
    max_epochs: int | None,
    workdir: Path,
    extra_args: Sequence[str] = (),
    seed: int | None = None,
    keep: Path | None = None,
) -> dict[str, Any]:
    """Fit one preset from its config, test its best-validation checkpoint, and return the table row.

    ``extra_args`` are more command-line options for the CLI (benchmarks/gpu.py's tiny mode limits the batches).
    ``seed`` replaces the preset's ``seed_everything`` (weights, shuffle and augmentation; the validation split
    stays the preset's). With ``keep`` the best checkpoint is copied to ``keep/<preset>/seed<seed>.ckpt``.
    """
    config = CONFIGS / f"{preset}.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"no preset {config}; choose from {', '.join(ALL_PRESETS)}")
    full = recipe_epochs(preset)
    epochs = min(full, max_epochs) if max_epochs else full
    args = ["--config", str(CONFIGS / "defaults.yaml"), "--config", str(config)]
    args += ["--trainer.max_epochs", str(epochs), "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    folder = workdir / (preset if seed is None else f"{preset}-seed{seed}")
    args += ["--trainer.default_root_dir", str(folder), "--checkpoint.dirpath", str(folder)]
    if seed is not None:
        args += ["--seed_everything", str(seed)]
    args += list(extra_args)
    cli = MNISTLightningCLI(args=args, run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - start
    tested = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)[0]
    if keep is not None:
        kept = keep / preset / f"seed{seed if seed is not None else 'default'}.ckpt"
        kept.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(kept, lambda tmp: shutil.copyfile(cli.trainer.checkpoint_callback.best_model_path, tmp))
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
        "threads": torch.get_num_threads(),
        "date": dt.date.today().isoformat(),
        "source": SOURCE_FIGURES.get(preset, "not reported"),
        **({"seed": seed} if seed is not None else {}),
    }


def over_seeds(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One row for the runs of a preset with different seeds: means, the test accuracy's standard deviation."""
    rows = [runs[seed] for seed in sorted(runs, key=int)]
    accs = [r["test_acc"] for r in rows]
    summary = dict(rows[-1])
    summary.pop("seed", None)
    summary.update(
        {
            "test_acc": round(statistics.fmean(accs), 3),
            "test_acc_std": round(statistics.stdev(accs), 3) if len(accs) > 1 else 0.0,
            "test_loss": round(statistics.fmean(r["test_loss"] for r in rows), 4),
            "best_val_acc": round(statistics.fmean(r["best_val_acc"] for r in rows), 3),
            "seconds_per_epoch": round(statistics.fmean(r["seconds_per_epoch"] for r in rows), 1),
            "epochs": min(r["epochs"] for r in rows),
            "date": max(r["date"] for r in rows),
            "runs": runs,
        }
    )
    return summary


def save_row(results: Path, output: Path, key: str, row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Merge ``row`` into the JSON (under a lock: several processes may run seeds side by side) and rewrite both."""
    with open(results.with_name(results.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows: dict[str, dict[str, Any]] = json.loads(results.read_text()) if results.is_file() else {}
        if "seed" in row:
            runs = dict(rows.get(key, {}).get("runs", {}))
            runs[str(row["seed"])] = row
            row = over_seeds(runs)
        if row.get("views_chosen_on") == "validation":  # it replaces the same members' rows with views given by hand
            same = key.split(";")[0] + ";"
            rows = {k: r for k, r in rows.items() if not k.startswith(same) or r.get("views_chosen_on")}
        rows[key] = row
        write_atomically(results, json.dumps(rows, indent=2) + "\n")
        write_atomically(output, markdown(rows))
    return rows


def ensemble_members(presets: Sequence[str], keep: Path) -> list[Path]:
    """The kept checkpoints ``keep/<preset>/seed*.ckpt`` of ``presets``, in order."""
    members = [path for preset in presets for path in sorted((keep / preset).glob("seed*.ckpt"))]
    if not members:
        raise FileNotFoundError(f"no kept checkpoints {keep}/<preset>/seed*.ckpt for {', '.join(presets)}")
    return members


def run_ensemble(
    presets: Sequence[str], keep: Path, most_views: int, workdir: Path, tiny: bool = False
) -> tuple[str, dict[str, Any]]:
    """Test the kept checkpoints of ``presets`` as one ensemble: key and row.

    The number of test-time views (1 to ``most_views``) is chosen on the validation split the members were chosen
    on (:func:`results_views.choose_views`); the test set is then used once, with that number.
    """
    members = ensemble_members(presets, keep)
    choice = choose_views(members, most_views, limit=TINY_VAL_IMAGES if tiny else None)
    views = choice["views"]
    args = ["test", "--ensemble", *map(str, members), "--tta", str(views), "--trainer.logger", "false"]
    args += ["--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(workdir)]
    if tiny:
        args += ["--trainer.limit_test_batches=2", "--data.eval_batch_size=100"]
    start = time.perf_counter()
    with mock.patch.object(sys, "argv", sys.argv[:1]):  # the script's own options are not the CLI's
        cli = MNISTLightningCLI(args=args)
    seconds = time.perf_counter() - start
    metrics = cli.trainer.callback_metrics
    counts = ", ".join(f"{preset} ×{sum(1 for m in members if m.parent.name == preset)}" for preset in presets)
    command = f"python benchmarks/results.py --ensemble {' '.join(presets)} --keep {keep.name}"
    return f"ensemble: {counts}; views chosen on validation", {
        "ensemble": [str(m.relative_to(keep)) for m in members],
        "views": views,
        "views_chosen_on": "validation",
        **{key: choice[key] for key in ("val_images", "val_by_views")},
        "parameters": cli.model.num_parameters,
        "test_acc": round(100 * float(metrics["test/acc"]), 2),
        "test_loss": round(float(metrics["test/loss"]), 4),
        "test_seconds": round(seconds, 1),
        "hardware": hardware(torch.get_num_threads()),
        "date": dt.date.today().isoformat(),
        "command": command + (f" --tta {most_views}" if most_views != MAX_VIEWS else ""),
        **({"load": TINY_LOAD} if tiny else {}),
    }


def command_cell(row: dict[str, Any]) -> str:
    """The command that regenerates an ensemble row: for a row with views given by hand, the one that now replaces
    it (``--tta`` there is the most views considered, no longer the count used)."""
    if row.get("views_chosen_on") == "validation":
        return row["command"]
    return re.sub(r" --tta \d+", "", row["command"])


def views_cell(row: dict[str, Any]) -> tuple[str, str]:
    """The views column of an ensemble row and its validation column: the choice and what it was made on."""
    if row.get("views_chosen_on") != "validation":  # rows from before the choice was made on validation
        return f"{row['views']}, given by hand (not chosen on validation)", "—"

    scores = {int(k): v for k, v in row["val_by_views"].items()}
    chosen, one = scores[row["views"]], scores[1]
    return (
        f"{row['views']} of 1–{max(scores)}, chosen on validation",
        f"{chosen['acc']:.2f}% ({one['acc']:.2f}% with 1 view; {row['val_images']:,} images)",
    )


def markdown(rows: dict[str, dict[str, Any]]) -> str:
    """The results table, presets in the order of docs/presets.md and then the stronger ones."""
    ensembles = {key: row for key, row in rows.items() if "ensemble" in row}
    rows = {key: row for key, row in rows.items() if key not in ensembles}
    order = [p for p in ALL_PRESETS if p in rows] + sorted(set(rows) - set(ALL_PRESETS))
    lines = [
        "# Results",
        "",
        "Test accuracy and loss on the official 10,000 MNIST test images, from the checkpoint with the best validation",
        "accuracy. Regenerate with `python benchmarks/results.py` (see its `--help`); rows accumulate in",
        "`benchmarks/results.json`. *Epochs* says `run / recipe`: a row with fewer epochs than its recipe was capped",
        "(`--max-epochs`; a one-cycle or cosine schedule is then compressed into those epochs) and is not the preset's",
        "full result. Seconds per epoch include validation; on a shared, loaded CPU they are slow and noisy.",
        "Rows measured over several seeds show the mean test accuracy ± its standard deviation and the seeds; the",
        "validation split is the same for every seed.",
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
        acc = f"{r['test_acc']:.2f}%"
        if len(r.get("runs", ())) > 1:
            seeds = ", ".join(sorted(r["runs"], key=int))
            acc = f"{r['test_acc']:.2f} ± {r['test_acc_std']:.2f}% ({len(r['runs'])} seeds: {seeds})"
        lines.append(
            f"| `{preset}` | {r['model']} | {r['parameters']:,} | {epochs} | {acc} | "
            f"{r['test_loss']:.4f} | {r['best_val_acc']:.2f}% | {r['seconds_per_epoch']:.1f} | {r['source']} | "
            f"{r['hardware']}{'; ' + r['load'] if r.get('load') else ''} | {r['date']} |"
        )
    seeded = [p for p in order if len(rows[p].get("runs", ())) > 1]
    if seeded:
        lines += [
            "",
            "Rows over seeds are regenerated (each seed can run in its own process at the same time) with:",
            "",
        ]
        lines += [
            f"- `{p}`: `python benchmarks/results.py --presets {p} --seeds {' '.join(sorted(rows[p]['runs'], key=int))}"
            f" --keep frontier-checkpoints --parallel {len(rows[p]['runs'])}`"
            for p in seeded
        ]
    missing = [p for p in ALL_PRESETS if p not in rows]
    if missing:
        lines += ["", f"Not measured yet: {', '.join(f'`{p}`' for p in missing)}."]
    if ensembles:
        lines += [
            "",
            "## Ensembles and test-time augmentation",
            "",
            "The class probabilities of every kept checkpoint (each chosen on the validation split) and of every view",
            "of each test image (the image and its one-pixel shifts), averaged; the test loss is the NLL of the",
            "averaged probabilities. The number of views is chosen on the validation split the checkpoints were chosen",
            "on (the best validation accuracy, then NLL, then fewer views), and only then is the test set used, once.",
            "Rows whose views were given by hand were each tested at the count given: they compare counts on the",
            "test set and recommend none. Each row's command regenerates it from the kept checkpoints (for a row",
            "with views given by hand, it makes the row that replaces it, with the views chosen on validation).",
            "",
            "| ensemble | views | val acc, chosen views | parameters | test acc | test loss | test seconds | hardware "
            "| date | command |",
            "|---|---|---:|---:|---:|---:|---:|---|---|---|",
        ]
        for key in sorted(ensembles, key=lambda k: (ensembles[k].get("views_chosen_on") != "validation", k)):
            r = ensembles[key]
            views, val = views_cell(r)
            lines.append(
                f"| {key.removeprefix('ensemble: ').split(';')[0]} | {views} | {val} | {r['parameters']:,} | "
                f"{r['test_acc']:.2f}% | {r['test_loss']:.4f} | {r['test_seconds']:.1f} | {r['hardware']}"
                f"{'; ' + r['load'] if r.get('load') else ''} | {r['date']} | `{command_cell(r)}` |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options; ``--tiny`` without ``--results``/``--output`` writes into a new temporary folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=CATALOGUE_PRESETS + STRONG_PRESETS, help="presets to run")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="run every preset once per seed")
    parser.add_argument("--keep", type=Path, default=None, help="keep best checkpoints as KEEP/<preset>/seed<S>.ckpt")
    parser.add_argument(
        "--ensemble", nargs="+", default=None, help="test the kept checkpoints of these presets together"
    )
    parser.add_argument(
        "--tta",
        type=int,
        default=MAX_VIEWS,
        help=f"with --ensemble: the most test-time views per image (1 to {MAX_VIEWS}); the number used is chosen "
        "on the validation split, then tested once",
    )
    parser.add_argument("--max-epochs", type=int, default=None, help="cap every preset's epochs (a quick check)")
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="run up to N preset/seed fits side by side, each process with its share of the cores as torch threads",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads per process (wins over OMP_NUM_THREADS)"
    )
    parser.add_argument("--tiny", action="store_true", help="a few batches of each fit: a check, never a result")
    parser.add_argument("--load", default="", help="a note on the machine's load, shown with the hardware")
    parser.add_argument("--results", type=Path, default=None, help="the JSON (default: benchmarks/results.json)")
    parser.add_argument("--output", type=Path, default=None, help="the markdown (default: benchmarks/results.md)")
    parser.add_argument("--table-only", action="store_true", help="only rewrite the markdown from the JSON")
    args = parser.parse_args(argv)
    if args.parallel < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--parallel and --threads take a whole number of at least 1")
    if not 1 <= args.tta <= MAX_VIEWS:
        parser.error(f"--tta takes the most test-time views to consider, 1 to {MAX_VIEWS}; got {args.tta}")
    if args.ensemble and args.keep is None:
        parser.error("--ensemble needs --keep, the folder the checkpoints were kept in")
    if args.tiny:  # a tiny run measures nothing: its tables go where asked, or into a new temporary folder
        if args.results is None and args.output is None:
            folder = Path(tempfile.mkdtemp(prefix="mnist-results-tiny-"))
            args.results, args.output = folder / "results.json", folder / "results.md"
        args.results = args.results or args.output.with_suffix(".json")
        args.output = args.output or args.results.with_suffix(".md")
        args.max_epochs = 1
    args.results = args.results or REPO / "benchmarks" / "results.json"
    args.output = args.output or REPO / "benchmarks" / "results.md"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    rows: dict[str, dict[str, Any]] = json.loads(args.results.read_text()) if args.results.is_file() else {}
    jobs = [(preset, seed) for preset in args.presets for seed in args.seeds or [None]]
    if args.ensemble:
        share_threads(1, args.threads)
        with tempfile.TemporaryDirectory(prefix="mnist-results-") as workdir:
            try:
                key, row = run_ensemble(args.ensemble, args.keep, args.tta, Path(workdir), args.tiny)
            except (FileNotFoundError, ConfigError) as error:  # no kept checkpoints, members of different splits
                sys.exit(f"results.py: {error}")
        print(json.dumps(row), flush=True)
        rows = save_row(args.results, args.output, key, row)
    elif not args.table_only and args.parallel > 1 and len(jobs) > 1:
        failed = run_side_by_side(jobs, args)
        rows = json.loads(args.results.read_text()) if args.results.is_file() else {}
        if failed:
            write_atomically(args.output, markdown(rows))
            sys.exit(f"results.py: {', '.join(failed)} failed (their output is above); the other rows are saved")
    elif not args.table_only:
        share_threads(1, args.threads)
        extra = TINY_FIT_ARGS if args.tiny else []
        with tempfile.TemporaryDirectory(prefix="mnist-results-") as workdir:
            for preset, seed in jobs:
                row = run_preset(preset, args.max_epochs, Path(workdir), extra, seed=seed, keep=args.keep)
                if args.load or args.tiny:
                    row["load"] = "; ".join(filter(None, [args.load, TINY_LOAD if args.tiny else ""]))
                print(json.dumps(row), flush=True)
                rows = save_row(args.results, args.output, preset, row)
    write_atomically(args.output, markdown(rows))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
