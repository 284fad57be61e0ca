"""How long ``mnist-lightning`` takes to start and to finish, and how much of a short ``fit`` is outside its epochs.

Three measurements, each command in a fresh process ``--repeats`` times (the OS file cache is warmed first, as for a
user who runs the command twice); every table gives medians:

* ``--imports`` (the default with no flag): the commands a user starts with (``--help``) next to bare imports, and the
  share above ``import lightning.pytorch``.
* ``--whole``: the whole command, start to exit, of a 3-epoch ``fit`` of the 784-64-128-64-10 MLP at batch 128 with
  the logger off, through the console script. The run's own timing (``TrainTimer``, added with
  ``--trainer.callbacks+=``) gives the epochs' seconds; the rest of the process's wall time is spent outside them.
* ``--phases``: the same ``fit`` in a probe process that stamps each milestone (interpreter up, imports, parse,
  model/data/Trainer built, checks, Lightning's set-up, sanity check, epochs, teardown, exit) on the system-wide
  monotonic clock; the table gives each phase's seconds, and ``outside the epochs`` is their sum without the epochs.

    python benchmarks/startup.py                        # the import table, 5 runs of each
    python benchmarks/startup.py --whole --phases --repeats 7
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PYTHON = sys.executable
CLI = str(Path(sys.executable).with_name("mnist-lightning"))
REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "import torch": [PYTHON, "-c", "import torch"],
    "import lightning.pytorch": [PYTHON, "-c", "import lightning.pytorch"],
    "import lightning.pytorch.cli (jsonargparse)": [PYTHON, "-c", "import lightning.pytorch.cli"],
    "import mnist_lightning.cli": [PYTHON, "-c", "import mnist_lightning.cli"],
    "mnist-lightning --help": [CLI, "--help"],
    "mnist-lightning fit --help": [CLI, "fit", "--help"],
}
# the network: 784-64-128-64-10, batch 128, 3 epochs, logger off (the mlp_128_64 preset, resized)
FIT_ARGS = [
    "fit",
    "--config",
    str(REPO / "configs" / "mlp_128_64.yaml"),
    "--model.init_args.hidden_sizes",
    "[64, 128, 64]",
    "--data.batch_size",
    "128",
    "--trainer.max_epochs",
    "3",
    "--trainer.logger",
    "false",
]
TRAIN_TIMER = "--trainer.callbacks+=mnist_lightning.callbacks.TrainTimer"
TRAINING_TOOK = re.compile(r"Training took ([0-9.]+) s")

# The probe's milestones, in the order a fit passes them; a phase is named by the milestone that ends it.
PHASES = {
    "interpreter": "Python starts (the console script's interpreter and site-packages)",
    "imports": "import mnist_lightning.cli (Lightning, torch, jsonargparse)",
    "parse": "LightningCLI's parsers and the parse (presets, defaults.yaml, the checkpoint pass)",
    "instantiate": "model, data module, callbacks and Trainer built",
    "run folder": "the run's folder placed (after_instantiate_classes)",
    "checks": "before_fit: outputs checked, run locked, data prepared",
    "fit set-up": "Trainer.fit up to the callbacks' setup (environment, data setup)",
    "fit start": "model and optimizers configured, model summary (up to on_fit_start)",
    "sanity check": "sanity validation batches",
    "train start": "from the sanity check to the first epoch",
    "epochs": "the epochs, their validation included (first epoch start to last epoch end)",
    "train end": "from the last epoch's end to on_fit_end (final checkpoints)",
    "teardown": "Trainer teardown, the CLI returns",
    "exit": "interpreter shutdown (atexit, threads, module teardown)",
}
OUTSIDE = [name for name in PHASES if name != "epochs"]


def run_env(package_root: str | None = None) -> dict[str, str]:
    """The environment of a measured command: W&B offline; with ``package_root``, that tree's package imported."""
    env = os.environ | {"WANDB_MODE": "offline"}
    return env | {"PYTHONPATH": package_root} if package_root else env


def seconds_of(command: list[str], package_root: str | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=run_env(package_root))
    return time.perf_counter() - start


def whole_fit(root: Path, package_root: str | None = None) -> tuple[float, float]:
    """One ``mnist-lightning fit`` start to exit: (wall seconds, the epochs' seconds from the run's TrainTimer)."""
    command = [CLI, *FIT_ARGS, "--trainer.default_root_dir", str(root), TRAIN_TIMER]
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=run_env(package_root))
    wall = time.monotonic() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    found = TRAINING_TOOK.search(done.stdout + done.stderr)
    if found is None:
        raise RuntimeError("the run did not print TrainTimer's 'Training took ... s'")
    return wall, float(found.group(1))


def probed_fit(root: Path, package_root: str | None = None) -> dict[str, float]:
    """One probed fit: each phase's seconds."""
    with tempfile.TemporaryDirectory() as folder:
        stamps_file = Path(folder) / "stamps.json"
        command = [PYTHON, __file__, "--probe", str(stamps_file), "--", *FIT_ARGS]
        command += ["--trainer.default_root_dir", str(root), "--trainer.callbacks+=__main__.Milestones"]
        spawned = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, env=run_env(package_root))
        exited = time.monotonic()
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        stamps = {"spawn": spawned, **json.loads(stamps_file.read_text()), "exit": exited}
    names = list(stamps)
    return {end: stamps[end] - stamps[start] for start, end in itertools.pairwise(names)}


# --------------------------------------------------------------------------------------------- the probe process
STAMPS: dict[str, float] = {}


def stamp(name: str) -> None:
    STAMPS.setdefault(name, time.monotonic())


def run_probe(stamps_file: str, args: list[str]) -> None:
    """Run the console command's ``main`` with milestones stamped (imports, LightningCLI's steps, Trainer hooks)."""
    import atexit

    from mnist_lightning.cli import main as cli_main
    from mnist_lightning.cli.lightning_cli import MNISTLightningCLI

    stamp("imports")

    def stamped(method_name: str, milestone: str) -> None:
        method = getattr(MNISTLightningCLI, method_name)

        def wrapper(self, *a, **kw):
            result = method(self, *a, **kw)
            stamp(milestone)
            return result

        setattr(MNISTLightningCLI, method_name, wrapper)

    stamped("parse_arguments", "parse")
    stamped("instantiate_classes", "instantiate")
    stamped("after_instantiate_classes", "run folder")
    stamped("before_fit", "checks")
    # written after everything else that runs at exit was registered (atexit runs last-registered first)
    atexit.register(lambda: Path(stamps_file).write_text(json.dumps({**STAMPS, "teardown": returned})))
    cli_main.main(args)
    returned = time.monotonic()


def milestones_callback() -> type:
    import lightning as L

    class Milestones(L.Callback):
        """Stamps the Trainer's milestones (added with ``--trainer.callbacks+=__main__.Milestones``)."""

        def setup(self, trainer, pl_module, stage):
            stamp("fit set-up")

        def on_fit_start(self, trainer, pl_module):
            stamp("fit start")

        def on_sanity_check_end(self, trainer, pl_module):
            stamp("sanity check")

        def on_train_epoch_start(self, trainer, pl_module):
            stamp("train start")

        def on_train_epoch_end(self, trainer, pl_module):
            STAMPS["epochs"] = time.monotonic()  # the last epoch's end

        def on_fit_end(self, trainer, pl_module):
            stamp("train end")

    return Milestones


# ------------------------------------------------------------------------------------------------------- tables
def shown(args: list[str]) -> str:
    """A command line as a user types it in the repository (quoted where needed, paths relative)."""
    return " ".join(shlex.quote(arg.replace(f"{REPO}/", "")) for arg in args)


def machine_line(repeats: int) -> str:
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"median of {repeats} runs, {when}, {os.cpu_count()} CPUs, load average {load}"


def import_table(repeats: int, trees: dict[str, str | None]) -> None:
    subprocess.run(COMMANDS["mnist-lightning --help"], capture_output=True)  # warm the OS file cache
    runs = {
        name: interleaved(lambda tree, c=command: seconds_of(c, tree), trees, repeats)
        for name, command in COMMANDS.items()
    }
    seconds = {
        name: {label: statistics.median(values) for label, values in by_tree.items()} for name, by_tree in runs.items()
    }
    print(f"Start-up, {machine_line(repeats)}\n")
    print(f"| command | {' | '.join(f'{label} s | {label}: above `import lightning.pytorch`' for label in trees)} |")
    print(f"|---|{'---:|---:|' * len(trees)}")
    for name, by_tree in seconds.items():
        cells = []
        for label, value in by_tree.items():
            cells += [f"{value:.2f}", f"{value - seconds['import lightning.pytorch'][label]:+.2f}"]
        print(f"| `{name}` | {' | '.join(cells)} |")
    print()


def interleaved(measure: Callable[[str | None], Any], trees: dict[str, str | None], repeats: int) -> dict[str, list]:
    """``repeats`` measurements of each tree, taking turns (so that each sees the same load)."""
    for package_root in trees.values():
        measure(package_root)  # warm the OS file cache
    runs: dict[str, list] = {label: [] for label in trees}
    for _ in range(repeats):
        for label, package_root in trees.items():
            runs[label].append(measure(package_root))
    return runs


def whole_table(repeats: int, root: Path, trees: dict[str, str | None]) -> None:
    runs = interleaved(lambda tree: whole_fit(root, tree), trees, repeats)
    print(f"The whole `fit` command, {machine_line(repeats)}\n")
    print(f"`mnist-lightning {shown(FIT_ARGS)} {TRAIN_TIMER}`\n")
    print("| package | start to exit s | epochs s (TrainTimer) | outside the epochs s |")
    print("|---|---:|---:|---:|")
    for label, measured in runs.items():
        walls, epochs = [wall for wall, _ in measured], [train for _, train in measured]
        outside = statistics.median(wall - train for wall, train in measured)
        print(f"| {label} | {statistics.median(walls):.2f} | {statistics.median(epochs):.2f} | {outside:.2f} |")
    print()
    for label, measured in runs.items():
        print(f"{label}: every run's outside-the-epochs s: {', '.join(f'{w - t:.2f}' for w, t in measured)}")
    print()


def phase_table(repeats: int, root: Path, trees: dict[str, str | None]) -> None:
    runs = interleaved(lambda tree: probed_fit(root, tree), trees, repeats)
    print(f"Phases of the probed `fit`, {machine_line(repeats)}\n")
    print(f"| phase | {' | '.join(f'{label} s' for label in trees)} | what |")
    print(f"|---|{'---:|' * len(trees)}---|")
    for name, what in PHASES.items():
        values = [statistics.median(run.get(name, 0.0) for run in runs[label]) for label in trees]
        print(f"| {name} | {' | '.join(f'{value:.2f}' for value in values)} | {what} |")
    outside = {label: [sum(run.get(name, 0.0) for name in OUTSIDE) for run in runs[label]] for label in trees}
    sums = " | ".join(f"**{statistics.median(values):.2f}**" for values in outside.values())
    print(f"| **outside the epochs** | {sums} | the phases above but the epochs, summed in each run |")
    print()
    for label, values in outside.items():
        print(f"{label}: every run's outside-the-epochs s: {', '.join(f'{value:.2f}' for value in values)}")
    print()


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--probe":
        stamp("interpreter")
        Milestones = milestones_callback()
        globals()["Milestones"] = Milestones  # found by jsonargparse as __main__.Milestones
        run_probe(sys.argv[2], sys.argv[4:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--imports", action="store_true", help="the import and --help table (the default)")
    parser.add_argument("--whole", action="store_true", help="the whole fit command, start to exit")
    parser.add_argument("--phases", action="store_true", help="the fit's phases, from a probe process")
    parser.add_argument(
        "--before", metavar="DIR", help="also measure the package in DIR (a checkout of an older commit), interleaved"
    )
    options = parser.parse_args()
    trees: dict[str, str | None] = {"this tree": None}
    if options.before:
        trees = {"before": str(Path(options.before).resolve()), "after": str(REPO)}
    with tempfile.TemporaryDirectory() as root:
        if options.imports or not (options.whole or options.phases):
            import_table(options.repeats, trees)
        if options.whole:
            whole_table(options.repeats, Path(root), trees)
        if options.phases:
            phase_table(options.repeats, Path(root), trees)


if __name__ == "__main__":
    main()
