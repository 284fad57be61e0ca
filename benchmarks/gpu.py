"""The GPU proof in one script: speedruns, fit against the plain loop, full recipes and the CUDA tests, in 10 minutes.

On one H100 or H200, in this order, each part under its own time cap inside one overall budget (``--budget``):

1. the CUDA-only tests of ``tests/`` and, with two or more GPUs, a DDP ``fit`` over NCCL;
2. the speedruns: ``configs/speedrun.yaml`` (target 99.0% mean official test accuracy, under 1 s of training) and
   ``configs/speedrun_995.yaml`` (99.5%, under 5 s), each through the CLI's real ``fit`` once per seed, after one
   untimed warm-up run; training time from :class:`~mnist_lightning.timing.TrainTimer` (device synchronised,
   start-up and data loading excluded), mean ± std over the seeds that fit in the cap (``--seeds`` at most);
3. ``benchmarks/speed.py``'s comparison (fit, the plain loop, bare Lightning) for the MLP, the convnet and the ViT,
   in 32-bit, bf16-mixed and compiled variants, and what separates fit from the plain loop for the MLP;
4. full recipes through ``benchmarks/results.py``: each preset is probed for a few steps first, and runs only when
   the projected time fits what is left (presets whose committed row is capped first, then the cheapest); a preset
   that still overruns is stopped at its cap.

Writes ``gpu.md`` and ``gpu.json`` (after every part, so a run cut short keeps what it measured) and ``results.json``
and ``results.md``: the committed results with the new rows merged in. ``--tiny`` runs every part on a few batches
of tiny models on the CPU (CI): the same tables, marked as tiny, never a measurement.

    python benchmarks/gpu.py --stage             # before the device call: MNIST .gz into data/, wheels into .whl/
    python3 benchmarks/gpu.py --out $OUT         # on the device (the whole command is in benchmarks/gpu.md)
    python benchmarks/gpu.py --tiny --out tmp    # a few batches of everything on the CPU: checks that it still works
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import gzip
import importlib.metadata
import json
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # this checkout's mnist_lightning: the device machine has no install of it
sys.path.insert(0, str(HERE))  # speed.py and results.py, also when this file is imported from the tests

import lightning as L  # noqa: E402
import results  # noqa: E402
import speed  # noqa: E402
import torch  # noqa: E402

from mnist_lightning.callbacks import TrainTimer, synchronize  # noqa: E402
from mnist_lightning.cli import MNISTLightningCLI, config_dir  # noqa: E402
from mnist_lightning.data import DATA_DIR_ENV, RAW_FILES, raw_dir, verify_raw_files  # noqa: E402

SPEEDRUNS = [  # (preset, target mean test accuracy, goal for the mean training seconds)
    ("speedrun", 0.990, 1.0),
    ("speedrun_995", 0.995, 5.0),
]
RECIPE_PRESETS = ["convnet", "vit", "vit_encoder", "cnn_strong", "vit_strong", "mlp_strong"]
SPEED_VARIANTS = "32-true,bf16-mixed,32-true+compile"
SPEED_MODELS = "mlp_128_64,convnet,vit"
# the device image has torch, lightning, torchmetrics, onnx and the rest; these travel as wheels (see gpu.md)
STAGE_PACKAGES = ["jsonargparse", "docstring_parser", "typeshed_client", "flask", "itsdangerous", "blinker"]
TINY_MODEL = {
    "speedrun": ["--model.init_args.channels=[4,8]", "--model.init_args.hidden=16"],
    "speedrun_995": ["--model.init_args.channels=[4,8]", "--model.init_args.hidden=16"],
}
# 2, not 1: the CLI reads a bare 1 as the float 1.0, which Lightning takes for "all batches"
TINY_LIMITS = ["--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2"]


# --- time -----------------------------------------------------------------------------------------------------------


class OverCap(Exception):
    """A part (or one run inside it) reached its time cap."""


@dataclass
class Part:
    """One part of the script: its cap, the seconds it may actually use, and what happened."""

    name: str
    cap_s: float
    allowance_s: float
    clock: Callable[[], float] = field(repr=False)
    started: float = 0.0
    spent_s: float | None = None
    status: str = "not run"
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def left(self) -> float:
        """Seconds this part may still use."""
        return self.allowance_s - self.elapsed()

    def fits(self, estimate_s: float) -> bool:
        """Whether something expected to take ``estimate_s`` seconds ends inside this part's allowance."""
        return estimate_s <= self.left()

    def __enter__(self) -> Part:
        self.status = "running"
        print(f"[gpu] {self.name}: up to {self.allowance_s:.0f} s (cap {self.cap_s:.0f} s)", flush=True)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> bool:
        self.spent_s = self.elapsed()
        if error is None:
            self.status = "done"
        elif isinstance(error, OverCap):
            self.status = f"stopped at its cap: {error}"
        elif isinstance(error, Exception):  # one broken part must not cost the others their one device run
            self.status = f"failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            self.notes.append("".join(traceback.format_exception(kind, error, tb))[-3000:])
        else:
            return False
        print(f"[gpu] {self.name}: {self.status} after {self.spent_s:.1f} s", flush=True)
        return isinstance(error, Exception)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("clock", "started")}


class Budget:
    """The script's seconds: a part gets its cap or what is left of the total, whichever is less."""

    def __init__(self, total_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.total_s, self.clock = total_s, clock
        self.started = clock()
        self.parts: list[Part] = []

    def left(self) -> float:
        return self.total_s - (self.clock() - self.started)

    def part(self, name: str, cap_s: float | None = None) -> Part:
        """A new part; ``cap_s`` None: everything that is left."""
        left = max(0.0, self.left())
        cap = left if cap_s is None else cap_s
        part = Part(name, cap, min(cap, left), self.clock)
        self.parts.append(part)
        return part


@contextlib.contextmanager
def hard_cap(seconds: float) -> Iterator[None]:
    """Raise :class:`OverCap` in the main thread once ``seconds`` have passed (SIGALRM), wherever the code is then.

    Lightning lets an exception from a ``fit`` or ``test`` through after its teardown, so a training that overruns
    stops cleanly instead of taking the rest of the script's time.
    """
    if seconds <= 0:
        raise OverCap("no time left")

    def ring(signum: int, frame: Any) -> None:
        raise OverCap(f"{seconds:.0f} s passed")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_while_time_allows(
    part: Part, items: list[Any], run_one: Callable[[Any], Any], margin: float = 1.2
) -> tuple[list[Any], str]:
    """``run_one`` on each item while the slowest run so far, times ``margin``, still fits in ``part``.

    Returns the results and a note on why it stopped early ('' when every item ran); a run that still overruns
    is stopped by :func:`hard_cap` and left out.
    """
    done: list[Any] = []
    slowest = 0.0
    for item in items:
        if done and not part.fits(slowest * margin):
            return done, f"stopped after {len(done)} of {len(items)}: the next would pass the {part.cap_s:.0f} s cap"
        start = part.clock()
        try:
            with hard_cap(part.left()):
                done.append(run_one(item))
        except OverCap:
            return done, f"stopped after {len(done)} of {len(items)}: run {len(done) + 1} reached the cap"
        slowest = max(slowest, part.clock() - start)
    return done, ""


# --- data and staging --------------------------------------------------------------------------------------------


def find_mnist(data_dir: Path | None) -> Path:
    """A folder with ``MNIST/raw/*-ubyte``: the first of ``data_dir``, $MNIST_LIGHTNING_DATA_DIR, ./data and
    ../shared/mnist that has them, or that has the ``.gz`` files, which are then decompressed into a temporary folder.
    """
    env = os.environ.get(DATA_DIR_ENV)
    candidates = [Path(p) for p in (data_dir, env, REPO / "data", REPO.parent / "shared" / "mnist") if p]
    for folder in candidates:
        if all((raw_dir(folder) / name).is_file() for name in RAW_FILES):
            return folder.resolve()
        if all((raw_dir(folder) / f"{name}.gz").is_file() for name in RAW_FILES):
            target = Path(tempfile.gettempdir()) / "mnist-lightning-gpu"
            raw_dir(target).mkdir(parents=True, exist_ok=True)
            for name in RAW_FILES:
                with gzip.open(raw_dir(folder) / f"{name}.gz") as packed:
                    (raw_dir(target) / name).write_bytes(packed.read())
            verify_raw_files(target)
            print(f"[gpu] MNIST: decompressed {raw_dir(folder)}/*.gz into {raw_dir(target)}", flush=True)
            return target
    tried = ", ".join(str(raw_dir(f)) for f in candidates)
    raise SystemExit(f"gpu.py: no MNIST (*-ubyte or *-ubyte.gz) in {tried}; pass --data-dir or run --stage first")


def stage(mnist_gz: Path, packages: list[str]) -> None:
    """Put what the device machine lacks into git-ignored folders of this checkout: the gzipped MNIST into
    ``data/MNIST/raw`` and wheels of ``packages`` (the versions installed here, for Python 3.12) into ``.whl``."""
    target = raw_dir(REPO / "data")
    target.mkdir(parents=True, exist_ok=True)
    for name in RAW_FILES:
        shutil.copyfile(raw_dir(mnist_gz) / f"{name}.gz", target / f"{name}.gz")
    wheels = REPO / ".whl"
    wheels.mkdir(exist_ok=True)
    platforms = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    for package in packages:
        pinned = f"{package}=={importlib.metadata.version(package)}"
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
        command += ["--python-version", "3.12", "--implementation", "cp", "-d", str(wheels), pinned]
        command += [arg for p in platforms for arg in ("--platform", p)]
        subprocess.run(command, check=True)
    size = sum(p.stat().st_size for p in [*wheels.iterdir(), *target.iterdir()]) / 2**20
    print(f"staged {target} and {len(list(wheels.iterdir()))} wheels in {wheels} ({size:.1f} MiB to carry)")
    print(f"device command (carry {CARRY}):\n{DEVICE_COMMAND}")


# --- 1. tests ---------------------------------------------------------------------------------------------------------


def needs_cuda(decorator: ast.expr) -> bool:
    """Whether a test decorator is ``pytest.mark.cuda`` or a ``skipif`` whose condition is about CUDA."""
    name = ast.unparse(decorator.func if isinstance(decorator, ast.Call) else decorator)
    if name.endswith("mark.cuda"):
        return True
    if name.endswith("mark.skipif") and isinstance(decorator, ast.Call):
        condition = decorator.args[0] if decorator.args else None
        return condition is not None and "cuda" in ast.unparse(condition)
    return False


def cuda_only_tests(tests_dir: Path) -> list[str]:
    """Node ids of the tests that only run with CUDA (marked ``cuda``, or skipped unless CUDA is available)."""
    found = []
    for path in sorted(tests_dir.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(needs_cuda(d) for d in node.decorator_list):
                found.append(f"{tests_dir.name}/{path.name}::{node.name}")
    return found


def child_env() -> dict[str, str]:
    """This process's environment, with this checkout importable (the device machine has no install of it)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "WANDB_MODE": "offline"}


class Outcomes:
    """A pytest plugin that keeps each test's outcome."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when == "call" or report.outcome != "passed":  # a skip or error in set-up is the test's outcome
            self.outcomes.setdefault(report.nodeid, report.outcome)


def run_tests(part: Part, report: dict[str, Any]) -> None:
    """The CUDA-only tests through pytest and, with several GPUs, a DDP fit (into ``report``).

    pytest runs in this process: torch and Lightning are imported already, which saves a new interpreter's
    start-up (half a minute on a busy CPU).
    """
    import pytest

    ids = cuda_only_tests(REPO / "tests")
    report.update(cuda_tests=ids, gpus=torch.cuda.device_count())
    outcomes = Outcomes()
    cwd = Path.cwd()
    try:
        os.chdir(REPO)  # pytest finds pyproject.toml's settings from here
        with hard_cap(part.left()):
            rc = pytest.main(["-q", "-rs", "-p", "no:cacheprovider", *ids], plugins=[outcomes]) if ids else 0
    finally:
        os.chdir(cwd)
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for outcome in outcomes.outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    report.update(pytest_rc=int(rc), pytest_counts=counts, outcomes=outcomes.outcomes)
    if report["gpus"] > 1:
        with tempfile.TemporaryDirectory() as workdir:
            fit = [sys.executable, "-m", "mnist_lightning", "fit", "--config", "configs/mlp_128_64.yaml"]
            fit += ["--config", "configs/ddp.yaml", "--trainer.max_epochs", "1", "--trainer.logger", "false"]
            fit += ["--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", workdir]
            start = time.perf_counter()
            ddp = subprocess.run(
                fit, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=max(1.0, part.left())
            )
        members = re.findall(r"MEMBER: \d+/(\d+)", ddp.stdout + ddp.stderr)
        report["ddp"] = {
            "rc": ddp.returncode,
            "processes": int(members[0]) if members else 0,
            "backend": "nccl" if "nccl" in (ddp.stdout + ddp.stderr).lower() else "?",
            "seconds": time.perf_counter() - start,
            "tail": (ddp.stdout + ddp.stderr)[-1500:],
        }
    else:
        report["ddp"] = {"note": f"{report['gpus']} GPU(s): DDP with NCCL needs at least 2, not run"}


# --- 2. speedruns -----------------------------------------------------------------------------------------------


# what a speedrun leaves out of `fit`: logging, the progress bar, the model summary and the figures (which the
# validation of each epoch would draw inside the timed window, taking longer than the training itself)
QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
QUIET.append("--media.enabled=false")


def fit_once(preset: str, seed: int, extra: list[str], workdir: Path, test: bool = True) -> dict[str, Any]:
    """``mnist-lightning fit --config <preset>`` (with :data:`QUIET`) in this process, then a test of the final
    weights on the official test set."""
    args = ["fit", f"--config={config_dir() / f'{preset}.yaml'}", f"--seed_everything={seed}", *QUIET]
    args += [f"--trainer.default_root_dir={workdir}", *extra]
    start = time.perf_counter()
    with mock.patch.object(sys, "argv", sys.argv[:1]):  # the script's own options are not the CLI's
        cli = MNISTLightningCLI(args=args)
    fit_call = time.perf_counter() - start
    timers = [c for c in cli.trainer.callbacks if isinstance(c, TrainTimer)]
    if not timers or timers[0].train_seconds is None:
        raise RuntimeError(f"configs/{preset}.yaml has no mnist_lightning.timing.TrainTimer callback")
    acc = float(cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]["test/acc"]) if test else None
    return {
        "train_s": timers[0].train_seconds,
        "fit_call_s": fit_call,
        "test_acc": acc,
        "steps": cli.trainer.global_step,
    }


def run_speedrun(part: Part, preset: str, target: float, goal_s: float, opts: argparse.Namespace) -> dict[str, Any]:
    extra = shlex.split(getattr(opts, f"{preset}_args") or "")
    if opts.compile_speedruns:
        extra.append("--model.init_args.compile=true")
    if opts.tiny:
        extra += [*TINY_MODEL[preset], "--trainer.max_epochs=1", *TINY_LIMITS]
    report: dict[str, Any] = {"preset": preset, "target_acc": target, "goal_s": goal_s, "extra_args": extra}
    with tempfile.TemporaryDirectory() as workdir:
        # untimed: the CUDA context, cuDNN's and cuBLAS's start-up and any compilation happen here
        start = time.perf_counter()
        warmup = ["--trainer.max_epochs=1", f"--trainer.limit_train_batches={2 if opts.tiny else 10}"]
        with hard_cap(part.left()):
            fit_once(preset, 10_000, [*extra, *warmup], Path(workdir) / "warmup", test=False)
        report["warmup_s"] = time.perf_counter() - start
        seeds = list(range(opts.first_seed, opts.first_seed + opts.seeds))

        def one(seed: int) -> dict[str, Any]:
            run = {"seed": seed, **fit_once(preset, seed, extra, Path(workdir) / f"seed{seed}")}
            print(f"[gpu] {preset} seed {seed}: {run['train_s']:.3f} s, test acc {run['test_acc']:.4f}", flush=True)
            return run

        runs, note = run_while_time_allows(part, seeds, one)
    report["runs"], report["note"] = runs, note
    report.update(summarize(runs, target, goal_s, opts.min_seeds))
    return report


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(runs: list[dict[str, Any]], target: float, goal_s: float, min_seeds: int) -> dict[str, Any]:
    """Mean ± std of training time and test accuracy, and whether the targets are met."""
    if not runs:
        return {"seeds": 0, "reached": False}
    acc, acc_std = mean_std([r["test_acc"] for r in runs])
    train, train_std = mean_std([r["train_s"] for r in runs])
    return {
        "seeds": len(runs),
        "test_acc_mean": acc,
        "test_acc_std": acc_std,
        "train_s_mean": train,
        "train_s_std": train_std,
        "fit_call_s_mean": statistics.fmean(r["fit_call_s"] for r in runs),
        "steps": runs[-1]["steps"],
        "reached": acc >= target and train < goal_s and len(runs) >= min_seeds,
    }


# --- 3. speed.py ------------------------------------------------------------------------------------------------


def run_speed(part: Part, opts: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """speed.py's ``bench_model`` for each variant and model that fits; one row each (appended to ``rows``)."""
    seconds: dict[str, float] = {}  # each model's last duration: the estimate for its next variant
    wanted = opts.speed_models.split(",")
    for variant in opts.speed_variants.split(","):
        precision, _, flag = variant.partition("+")
        compiled = flag == "compile"
        for name, preset in speed.MODELS:
            if name not in wanted:
                continue
            row: dict[str, Any] = {"variant": variant, "name": name}
            # compiling costs several plain epochs (three networks: fit's, bare Lightning's and the plain loop's)
            estimate = seconds.get(name, 0.0) * (3.0 if compiled else 1.2)
            if compiled and opts.tiny:
                row["skipped"] = "compile is not run in tiny mode (minutes of C++ compilation on a CPU)"
            elif not part.fits(estimate):
                row["skipped"] = f"the estimated {estimate:.0f} s do not fit the {part.left():.0f} s left"
            else:
                options = argparse.Namespace(
                    tiny=opts.tiny,
                    epochs=opts.speed_epochs,
                    train_batches=opts.speed_batches,
                    precision=precision,
                    compile=compiled,
                    eval_repeats=1,  # one test pass per evaluation batch: the GPU minutes go to training
                )
                start = time.perf_counter()
                try:
                    with hard_cap(part.left()):
                        row.update(asdict(speed.bench_model(name, preset, options)), variant=variant)
                except OverCap as stop:
                    row["skipped"] = f"stopped at the cap ({stop})"
                except Exception as error:  # e.g. a compiler failure: the other variants still run
                    row["skipped"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:300]}"
                row["seconds"] = seconds[name] = time.perf_counter() - start
            print(f"[gpu] speed {variant} {name}: {row.get('skipped') or 'measured'}", flush=True)
            rows.append(row)


def mlp_gap(rows: list[dict[str, Any]]) -> list[str]:
    """Per-step time of the MLP through fit, bare Lightning and the plain loop, and where the difference goes."""
    lines = []
    for row in rows:
        if row["name"] != "mlp_128_64" or row.get("skipped") or not row.get("fit_epoch_s"):
            continue
        steps = math.ceil(row["train_images"] / row["batch_size"])
        fit, bare, plain = (row[k] / steps * 1e6 for k in ("fit_epoch_s", "bare_epoch_s", "plain_epoch_s"))
        lines.append(
            f"- {row['variant']}: fit / plain = {row['ratio']:.2f}. One step of batch {row['batch_size']}: "
            f"{fit:.0f} µs through fit, {bare:.0f} µs through bare Lightning, {plain:.0f} µs in the plain loop: "
            f"Lightning's loop adds {bare - plain:.0f} µs per step, this project's module, metrics and callbacks "
            f"{fit - bare:.0f} µs."
        )
    return lines


# --- 4. full recipes ----------------------------------------------------------------------------------------------


class ValidationTimer(L.Callback):
    """Seconds of each validation's batches, from its start to the end of its last batch (device synchronised)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.start = 0.0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(trainer.strategy.root_device)
        self.start = time.perf_counter()

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *args: Any
    ) -> None:
        if batch_idx + 1 >= trainer.num_val_batches[0]:
            synchronize(trainer.strategy.root_device)
            self.seconds.append(time.perf_counter() - self.start)


def probe(preset: str, opts: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """A few training steps and validation batches of ``preset``; the seconds its whole recipe would take."""
    steps, val = (2, 2) if opts.tiny else (opts.probe_steps, 2)
    start = time.perf_counter()
    args = ["--config", str(config_dir() / "defaults.yaml"), "--config", str(config_dir() / f"{preset}.yaml")]
    args += ["--trainer.max_epochs=2", f"--trainer.limit_train_batches={steps}", f"--trainer.limit_val_batches={val}"]
    args += ["--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false"]
    cli = speed.build(args, workdir)
    timer, validation = TrainTimer(), ValidationTimer()
    cli.trainer.callbacks.extend([timer, validation])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    # the second epoch's figures: the first pays for warm-up
    step_s, val_s = timer.epoch_seconds[-1] / steps, validation.seconds[-1] / val
    # what an epoch costs besides its batches: checkpoints, figures, the hooks at its end
    rest = (timer.train_seconds or 0.0) - sum(timer.epoch_seconds) - sum(validation.seconds)
    epoch_extra_s = max(0.0, rest) / len(timer.epoch_seconds)
    dm = cli.datamodule
    sizes = dm.split_sizes
    epochs = 1 if opts.tiny else results.recipe_epochs(preset)
    if opts.tiny:
        train_batches, val_batches, test_batches = 3, 2, 2
    else:
        train_batches = math.ceil(sizes["train"] / dm.batch_size)
        val_batches = math.ceil(sizes["val"] / dm.eval_batch_size)
        test_batches = math.ceil(sizes["test"] / dm.eval_batch_size)
    setup_s = time.perf_counter() - start - (timer.train_seconds or 0.0)
    projected = epochs * (train_batches * step_s + val_batches * val_s + epoch_extra_s) + test_batches * val_s + setup_s
    return {
        "step_ms": 1e3 * step_s,
        "val_batch_ms": 1e3 * val_s,
        "epoch_extra_s": epoch_extra_s,
        "setup_s": setup_s,
        "epochs": epochs,
        "projected_s": projected,
    }


def merge_rows(committed: dict[str, dict], new: dict[str, dict]) -> tuple[dict[str, dict], list[str]]:
    """The committed rows with the new ones in; a capped new row never replaces a row with more epochs."""
    rows, notes = dict(committed), []
    for preset, row in new.items():
        old = rows.get(preset)
        if old and old["epochs"] >= old["recipe_epochs"] and row["epochs"] < old["epochs"]:
            notes.append(f"`{preset}`: kept the committed {old['epochs']}-epoch row ({old['hardware']})")
            continue
        rows[preset] = row
    return rows, notes


def recipe_order(projected: dict[str, float], committed: dict[str, dict]) -> list[str]:
    """Presets whose committed row is capped or missing first (a full GPU row adds most there), each group
    cheapest first, so that as many rows as possible fit."""

    def full(preset: str) -> bool:
        row = committed.get(preset)
        return bool(row) and row["epochs"] >= row["recipe_epochs"]

    return sorted(projected, key=lambda p: (full(p), projected[p]))


def run_recipes(part: Part, opts: argparse.Namespace, report: dict[str, Any], committed: dict[str, dict]) -> None:
    """Probe every preset, then run the whole recipes that fit, in :func:`recipe_order` (into ``report``)."""
    with tempfile.TemporaryDirectory(prefix="mnist-gpu-recipes-") as tmp:
        workdir = Path(tmp)
        for preset in opts.presets:
            try:
                with hard_cap(part.left()):
                    report["presets"][preset] = probe(preset, opts, workdir / f"probe-{preset}")
            except OverCap:
                report["presets"][preset] = {"status": "skipped: no time left to probe it"}
                break
        projected = {p: r["projected_s"] for p, r in report["presets"].items() if "projected_s" in r}
        for preset in recipe_order(projected, committed):
            entry = report["presets"][preset]
            cap = min(opts.preset_cap, part.left())
            if entry["projected_s"] * 1.15 > cap:
                entry["status"] = f"skipped: projected {entry['projected_s']:.0f} s, {cap:.0f} s available"
                continue
            start = time.perf_counter()
            try:
                with hard_cap(cap):
                    tiny = [*TINY_LIMITS, "--media.enabled=false"] if opts.tiny else ()
                    row = results.run_preset(preset, 1 if opts.tiny else None, workdir, tiny)
            except OverCap:
                entry["status"] = f"stopped at its {cap:.0f} s cap (projected {entry['projected_s']:.0f} s)"
                continue
            finally:
                entry["seconds"] = time.perf_counter() - start
            if opts.tiny:
                row["load"] = "gpu.py --tiny: 3 batches per epoch, not a result"
            report["rows"][preset] = row
            entry["status"] = "done"
            print(f"[gpu] recipe {preset}: {row['test_acc']:.2f}% in {entry['seconds']:.0f} s", flush=True)


def write_results(report: dict[str, Any], committed: dict[str, dict], out: Path) -> None:
    """results.json and results.md in ``out``: the committed rows with this run's merged in."""
    rows, notes = merge_rows(committed, report["rows"])
    report["merge_notes"] = notes
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "results.md").write_text(results.markdown(rows))


# --- the tables ---------------------------------------------------------------------------------------------------

CARRY = '[".whl", "data"]'
DEVICE_COMMAND = (
    "set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
    "--target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && "
    "python3 benchmarks/gpu.py --out $OUT 2>&1 | tee $OUT/gpu.log"
)
HOWTO = f"""## Running it on the device

1. Here, in the checkout the session calls the device from, once: `python benchmarks/gpu.py --stage`. It copies the
   gzipped MNIST (`../shared/mnist-gz`, 11 MB; another path with `--stage-mnist DIR`) into `data/MNIST/raw/` and
   downloads wheels for Python 3.12 of the packages the device image lacks (jsonargparse with docstring-parser and
   typeshed-client for LightningCLI; flask with itsdangerous and blinker for `serve`; at the versions installed here)
   into `.whl/`. Both folders are git-ignored. Nothing else is needed: the device image has torch, lightning,
   torchmetrics, matplotlib, onnx and onnxscript; wandb is not needed (the script runs with the logger off, and the
   project imports wandb only for the W&B logger). `gpu.py` decompresses the `.gz` files itself, whether or not the
   data module reads them.
2. One device call, `timeout_s` 600, `carry` `{CARRY}`:

   ```
   {DEVICE_COMMAND}
   ```

   The script's budget is 540 s (`--budget`), so it ends inside the 600 s limit with its tables written; every part
   writes `gpu.md`/`gpu.json` as it ends, so even a run cut short brings back what it measured.
3. Copy `gpu.md`, `gpu.json`, `results.json` and `results.md` from the call's files into `benchmarks/` and commit;
   `gpu.log` is the full output. Each part's cap is an option (`--help`); `--skip PART` leaves parts out.
"""


PLACEHOLDER = """# mnist-lightning on a GPU

No GPU run yet: no H100 or H200 has been available to this project so far. `benchmarks/gpu.py` is ready for one
device session of 15 minutes (machine start-up included): one call of at most 10 minutes replaces this page with
its tables (hardware, torch and lightning versions, date; the speedruns over 10 to 30 seeds, mean ± std; fit
against the plain loop and bare Lightning in 32-bit, bf16-mixed and compiled variants; the full recipes that fit;
the CUDA-only tests and, with two or more GPUs, DDP over NCCL) and adds the GPU rows to `results.md`. Its tiny CPU
mode (`python benchmarks/gpu.py --tiny --out tmp`) runs in the test suite, so the script keeps working meanwhile.
`configs/speedrun_995.yaml` was designed without a GPU (and without a full training on this project's CPU): whether
it reaches 99.5% in under 5 s is the first thing that run will tell (`--speedrun-995-args` tries changes, e.g.
`"--trainer.max_epochs=15"`, without editing the preset).
"""


def fmt_mean_std(mean: float, std: float, digits: int, percent: bool = False) -> str:
    if percent:
        return f"{100 * mean:.{digits}f} ± {100 * std:.{digits}f}%"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    tiny = " — TINY MODE: a few batches of tiny models on the CPU, not a measurement" if report["tiny"] else ""
    lines = [
        f"# mnist-lightning on a GPU{tiny}",
        "",
        f"{env['date']}; hardware: {env['device']}; torch {env['torch']} (CUDA {env['cuda']}), "
        f"lightning {env['lightning']}, Python {env['python']}; {env['gpus']} GPU(s). Command: `{report['command']}`",
        "",
        "## Where the time went",
        "",
        f"Budget {report['budget_s']:.0f} s; {report.get('total_s', 0):.0f} s used.",
        "",
        "| part | cap s | allowed s | spent s | status |",
        "|---|---:|---:|---:|---|",
    ]
    for p in report["parts"]:
        spent = "" if p["spent_s"] is None else f"{p['spent_s']:.1f}"
        lines.append(f"| {p['name']} | {p['cap_s']:.0f} | {p['allowance_s']:.0f} | {spent} | {p['status']} |")

    lines += ["", "## Speedruns", ""]
    lines += [
        "Each seed is one `mnist-lightning fit --config configs/<preset>.yaml` in this process (logger, progress bar,",
        "model summary and figures off), after one untimed warm-up run; training time from the first batch to the last",
        "(validation and checkpoints included, set-up and data loading excluded, the device synchronised); accuracy on",
        "the official 10,000 test images with the final weights.",
        "",
        "| preset | seeds | steps | training s (mean ± std) | goal | test acc (mean ± std) | target | whole fit call s "
        "| reached |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for sr in report["speedruns"]:
        if not sr.get("seeds"):
            lines.append(f"| `{sr['preset']}` | 0 | | | < {sr['goal_s']:g} s | | ≥ {sr['target_acc']:.1%} | | no |")
            continue
        train = fmt_mean_std(sr["train_s_mean"], sr["train_s_std"], 3)
        lines.append(
            f"| `{sr['preset']}` | {sr['seeds']} | {sr['steps']} | {train}"
            f" | < {sr['goal_s']:g} s | {fmt_mean_std(sr['test_acc_mean'], sr['test_acc_std'], 2, True)}"
            f" | ≥ {sr['target_acc']:.1%} | {sr['fit_call_s_mean']:.2f} | {'yes' if sr['reached'] else 'no'} |"
        )
    for sr in report["speedruns"]:
        if sr.get("runs"):
            per_seed = ", ".join(f"{r['seed']}: {r['train_s']:.3f} s / {r['test_acc']:.2%}" for r in sr["runs"])
            lines += ["", f"`{sr['preset']}` per seed (warm-up {sr['warmup_s']:.1f} s): {per_seed}."]
        if sr.get("note"):
            lines += ["", f"`{sr['preset']}`: {sr['note']}."]
    lines.append("")
    lines.append("For comparison: the public record for 99% is 0.76 s on a GTX 1660 Ti; this project aims at 0.5 s.")

    lines += ["", "## fit, the plain loop and bare Lightning (benchmarks/speed.py)", ""]
    lines += [
        f"speed.py's `bench_model` per variant: {report['speed_epochs']} epoch(s) of "
        f"{report['speed_batches'] or 'all'} training batches; each column is the fastest epoch after the first"
        " (the first pays for warm-up and compilation). `plain` follows the variant (autocast, compile).",
        "",
        "| variant | model | params | batch | fit s/epoch | plain s/epoch | fit / plain | bare s/epoch | bare / plain "
        "| fit images/s | plain images/s | fit inference images/s | plain inference images/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["speed"]:
        if r.get("skipped"):
            lines.append(f"| {r['variant']} | {r['name']} | skipped: {r['skipped']} |" + " |" * 10)
            continue
        lines.append(
            f"| {r['variant']} | {r['name']} | {r['params']:,} | {r['batch_size']} | {r['fit_epoch_s']:.3f} "
            f"| {r['plain_epoch_s']:.3f} | {r['ratio']:.2f} | {r['bare_epoch_s']:.3f} | {r['bare_ratio']:.2f} "
            f"| {r['fit_images_per_s']:,.0f} | {r['plain_images_per_s']:,.0f} "
            f"| {r['fit_inference_images_per_s']:,.0f} | {r['plain_inference_images_per_s']:,.0f} |"
        )
    gap = mlp_gap(report["speed"])
    if gap:
        lines += ["", "**The MLP's ratio.**", "", *gap, "", GAP_ADVICE]

    rec = report["recipes"]
    lines += ["", "## Full recipes (benchmarks/results.py)", ""]
    lines += [
        "Each preset is probed for a few steps, and its whole recipe runs only when the projected time fits what is",
        f"left and the per-preset cap ({report['preset_cap_s']:.0f} s): presets whose committed row is capped first,",
        "then the cheapest first. Rows are merged into `results.json` / `results.md` (a capped row never replaces",
        "one with more epochs).",
        "",
        "| preset | status | step ms | projected s | seconds | epochs | test acc | test loss |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for preset, entry in rec.get("presets", {}).items():
        row = rec["rows"].get(preset)
        acc = f"{row['test_acc']:.2f}%" if row else ""
        loss = f"{row['test_loss']:.4f}" if row else ""
        epochs = f"{row['epochs']} / {row['recipe_epochs']}" if row else ""
        step = f"{entry['step_ms']:.2f}" if "step_ms" in entry else ""
        projected = f"{entry['projected_s']:.0f}" if "projected_s" in entry else ""
        seconds = f"{entry['seconds']:.0f}" if "seconds" in entry else ""
        status = entry.get("status", "not run")
        lines.append(f"| `{preset}` | {status} | {step} | {projected} | {seconds} | {epochs} | {acc} | {loss} |")
    for note in rec.get("merge_notes", []):
        lines += ["", note]

    tests = report["tests"]
    lines += ["", "## CUDA tests and DDP", ""]
    if tests.get("cuda_tests") is not None and "pytest_counts" in tests:
        counts = ", ".join(f"{n} {k}" for k, n in tests["pytest_counts"].items() if n)
        listed = ", ".join(f"`{t}`" for t in tests["cuda_tests"]) or "none found"
        lines.append(f"CUDA-only tests ({listed}): {counts or 'no result'} (pytest exit code {tests['pytest_rc']}).")
        ddp = tests["ddp"]
        if "note" in ddp:
            lines += ["", f"DDP: {ddp['note']}."]
        else:
            lines += [
                "",
                f"DDP (`fit --config configs/mlp_128_64.yaml --config configs/ddp.yaml`, 1 epoch): exit code "
                f"{ddp['rc']}, {ddp['processes']} processes, backend {ddp['backend']}, {ddp['seconds']:.0f} s.",
            ]
    else:
        lines.append("Not run.")
    lines += ["", HOWTO]
    return "\n".join(lines)


GAP_ADVICE = (
    "What would close the gap: the MLP does little GPU work per step, so fit's extra time is host time per step"
    " (Python in Lightning's loop and hooks, then this project's). Bare Lightning is the floor for anything trained"
    " by a Trainer: the project's share can go (fewer per-step callbacks: progress bar, loss guard and step"
    " checkpoints off), Lightning's only with fewer steps (a larger batch: the cost is per step, not per image) or"
    " fewer Python calls per step (a fused optimizer, `torch.optim.Adam(fused=True)`; the whole step captured in a"
    " CUDA graph, which needs manual optimization, static shapes and no host syncs)."
)


def environment() -> dict[str, Any]:
    env = speed.environment()
    env["cuda"] = torch.version.cuda or "none"
    env["gpus"] = torch.cuda.device_count()
    return env


def write_report(report: dict[str, Any], budget: Budget, out: Path) -> None:
    report["parts"] = [p.summary() for p in budget.parts]
    report["total_s"] = budget.total_s - budget.left()
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "gpu.md").write_text(markdown(report) + "\n")


# --- main ---------------------------------------------------------------------------------------------------------

PARTS = ["tests", "speedrun", "speedrun_995", "speed", "recipes"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a few batches of tiny models on the CPU (CI)")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for gpu.md, gpu.json, results.json/.md")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with MNIST/raw (*-ubyte or *-ubyte.gz)")
    parser.add_argument("--budget", type=float, default=540, help="seconds for the whole script")
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS, help="parts to leave out")
    parser.add_argument("--cap-tests", type=float, default=45, help="seconds for the CUDA tests (and DDP)")
    parser.add_argument("--cap-speedrun", type=float, default=75, help="seconds for the speedrun's seeds")
    parser.add_argument("--cap-speedrun-995", type=float, default=90, help="seconds for speedrun_995's seeds")
    parser.add_argument("--cap-speed", type=float, default=140, help="seconds for the speed.py comparison")
    parser.add_argument("--cap-recipes", type=float, default=None, help="seconds for the recipes (default: the rest)")
    parser.add_argument("--preset-cap", type=float, default=150, help="seconds for one preset's whole recipe")
    parser.add_argument("--seeds", type=int, default=30, help="speedrun seeds at most (as many as fit the cap)")
    parser.add_argument("--min-seeds", type=int, default=10, help="seeds needed to count a target as reached")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--speedrun-args", default="", help="more fit options for configs/speedrun.yaml")
    parser.add_argument("--speedrun-995-args", default="", help="more fit options for configs/speedrun_995.yaml")
    parser.add_argument("--compile-speedruns", action="store_true", help="torch.compile the speedrun networks")
    parser.add_argument("--speed-variants", default=SPEED_VARIANTS, help="precision[+compile], comma-separated")
    parser.add_argument("--speed-models", default=SPEED_MODELS, help="speed.py models, comma-separated")
    parser.add_argument("--speed-epochs", type=int, default=3, help="epochs per speed.py model")
    parser.add_argument("--speed-batches", type=int, default=300, help="training batches per epoch (0: all)")
    parser.add_argument("--presets", nargs="+", default=RECIPE_PRESETS, help="presets for full recipes")
    parser.add_argument("--probe-steps", type=int, default=20, help="training steps per epoch of a preset's probe")
    parser.add_argument("--stage", action="store_true", help="only stage MNIST and wheels for the device (see gpu.md)")
    parser.add_argument("--stage-mnist", type=Path, default=REPO.parent / "shared" / "mnist-gz")
    parser.add_argument("--stage-packages", nargs="+", default=STAGE_PACKAGES)
    opts = parser.parse_args(argv)
    if opts.tiny:
        opts.seeds, opts.min_seeds, opts.speed_epochs, opts.speed_batches = 2, 2, 1, 5
        # a CPU shared with other work can be many times slower than usual: the tiny run must not hit its caps
        opts.budget, opts.preset_cap = opts.budget * 20, opts.preset_cap * 20
        for name in ("cap_tests", "cap_speedrun", "cap_speedrun_995", "cap_speed"):
            setattr(opts, name, getattr(opts, name) * 20)
        if opts.speed_models == SPEED_MODELS:
            opts.speed_models = "mlp_128_64"  # speed.py's own tiny test covers the convnet and the ViT
        if opts.presets == RECIPE_PRESETS:
            opts.presets = ["convnet", "mlp_strong"]  # one capped committed row (replaced), one full (kept)
    return opts


def main(argv: list[str] | None = None) -> dict[str, Any]:
    opts = parse_args(argv)
    if opts.stage:
        stage(opts.stage_mnist, opts.stage_packages)
        return {}
    budget = Budget(opts.budget)
    os.environ[DATA_DIR_ENV] = str(find_mnist(opts.data_dir))
    command = "python benchmarks/gpu.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report: dict[str, Any] = {
        "command": command.strip(),
        "tiny": opts.tiny,
        "environment": environment(),
        "budget_s": opts.budget,
        "preset_cap_s": opts.preset_cap,
        "speed_epochs": opts.speed_epochs,
        "speed_batches": opts.speed_batches,
        "tests": {},
        "speedruns": [],
        "speed": [],
        "recipes": {},
    }
    print(f"[gpu] {report['environment']['device']}, torch {torch.__version__}, budget {opts.budget:.0f} s", flush=True)

    if "tests" not in opts.skip:
        with budget.part("tests", opts.cap_tests) as part:
            run_tests(part, report["tests"])
        write_report(report, budget, opts.out)
    for preset, target, goal in SPEEDRUNS:
        if preset in opts.skip:
            continue
        with budget.part(preset, getattr(opts, f"cap_{preset}")) as part:
            report["speedruns"].append({"preset": preset, "target_acc": target, "goal_s": goal, "seeds": 0})
            report["speedruns"][-1] = run_speedrun(part, preset, target, goal, opts)
        write_report(report, budget, opts.out)
    if "speed" not in opts.skip:
        with budget.part("speed", opts.cap_speed) as part:
            run_speed(part, opts, report["speed"])
        write_report(report, budget, opts.out)
    if "recipes" not in opts.skip:
        report["recipes"] = {"presets": {}, "rows": {}}
        committed_path = HERE / "results.json"
        committed = json.loads(committed_path.read_text()) if committed_path.is_file() else {}
        with budget.part("recipes", opts.cap_recipes) as part:
            try:
                run_recipes(part, opts, report["recipes"], committed)
            finally:  # the rows measured before a failure still count
                write_results(report["recipes"], committed, opts.out)
        write_report(report, budget, opts.out)

    print("[gpu] where the time went:", flush=True)
    for p in budget.parts:
        print(f"  {p.name:14s} {p.spent_s or 0:7.1f} s of {p.allowance_s:5.0f} s  {p.status}", flush=True)
    print(f"  total          {budget.total_s - budget.left():7.1f} s of {budget.total_s:5.0f} s", flush=True)
    return report


if __name__ == "__main__":
    main()
