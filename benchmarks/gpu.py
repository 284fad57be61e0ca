"""The GPU proof in one script: speedruns, fit against the plain loop, full recipes and the CUDA tests, in 10 minutes.

On one H100 or H200, in this order, each part under its own time cap inside one overall budget (``--budget``):

1. the CUDA-only tests of ``tests/`` and, with two or more GPUs, a DDP ``fit`` over NCCL;
2. the speedruns: ``configs/speedrun.yaml`` (target 99.0% mean official test accuracy, under 1 s of training) and
   ``configs/speedrun_995.yaml`` (99.5%, under 5 s), each through the CLI's real ``fit`` once per seed, after one
   untimed warm-up run; training time from :class:`~mnist_lightning.callbacks.TrainTimer` (device synchronised,
   start-up and data loading excluded), mean ± std over the seeds that fit in the cap (``--seeds`` at most);
3. ``benchmarks/speed.py``'s comparison (fit, the plain loop, bare Lightning) for the MLP, the convnet and the ViT,
   in 32-bit, bf16-mixed and compiled variants, and what separates fit from the plain loop for the MLP;
4. the frontier: ``configs/resnet_frontier.yaml`` over as many seeds as fit its cap, each a whole recipe, then their
   committee, whose number of test-time views is chosen on the validation split before the test set is used once;
5. full recipes through ``benchmarks/results.py``: each preset is probed for a few steps first, and runs only when
   the projected time fits what is left (presets whose committed row is capped first, then the cheapest); a preset
   that still overruns is stopped at its cap.

Writes ``gpu.md`` and ``gpu.json`` (after every part, so a run cut short keeps what it measured) and ``results.json``
and ``results.md``: the committed results with the new rows merged in. ``--tiny`` runs every part on a few batches
of tiny models on the CPU (CI): the same tables, marked as tiny, never a measurement, written into a new temporary
folder unless ``--out`` names one (a tiny run never touches ``benchmarks/`` by itself).

    python benchmarks/gpu.py --stage             # before the device call: MNIST .gz into data/, wheels into .whl/
    python3 benchmarks/gpu.py --out $OUT         # on the device (the whole command is in benchmarks/gpu.md)
    python benchmarks/gpu.py --tiny              # a few batches of everything on the CPU: checks that it still works

The parts live beside this file: gpu_budget.py (caps), gpu_staging.py (MNIST and wheels), gpu_cuda.py (1),
gpu_speedruns.py (2), gpu_speed.py (3), gpu_frontier.py (4), gpu_recipes.py (5) and gpu_report.py (the tables).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # this checkout's mnist_lightning: the device machine has no install of it
sys.path.insert(0, str(HERE))  # the parts beside this file, speed.py and results.py, also when imported from the tests

import torch  # noqa: E402
from gpu_budget import Budget  # noqa: E402
from gpu_cuda import run_tests  # noqa: E402
from gpu_frontier import result_rows, run_frontier  # noqa: E402
from gpu_recipes import run_recipes, write_results  # noqa: E402
from gpu_report import environment, write_report  # noqa: E402
from gpu_speed import run_speed  # noqa: E402
from gpu_speedruns import run_speedrun  # noqa: E402
from gpu_staging import STAGE_PACKAGES, find_mnist, stage  # noqa: E402

from mnist_lightning.data import DATA_DIR_ENV  # noqa: E402

SPEEDRUNS = [  # (preset, target mean test accuracy, goal for the mean training seconds)
    ("speedrun", 0.990, 1.0),
    ("speedrun_995", 0.995, 5.0),
]
RECIPE_PRESETS = ["convnet", "vit", "vit_encoder", "cnn_strong", "vit_strong", "mlp_strong"]
SPEED_VARIANTS = "32-true,bf16-mixed,32-true+compile"
SPEED_MODELS = "mlp_128_64,convnet,vit"

PARTS = ["tests", "speedrun", "speedrun_995", "speed", "frontier", "recipes"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options; ``--tiny`` shrinks seeds, epochs and batches and widens every cap (a busy CPU is slow)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a few batches of tiny models on the CPU (CI)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for gpu.md, gpu.json, results.json/.md (default: benchmarks/; with --tiny a new temporary one)",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with MNIST/raw (*-ubyte or *-ubyte.gz)")
    parser.add_argument("--budget", type=float, default=540, help="seconds for the whole script")
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS, help="parts to leave out")
    parser.add_argument("--cap-tests", type=float, default=45, help="seconds for the CUDA tests (and DDP)")
    parser.add_argument("--cap-speedrun", type=float, default=75, help="seconds for the speedrun's seeds")
    parser.add_argument("--cap-speedrun-995", type=float, default=90, help="seconds for speedrun_995's seeds")
    parser.add_argument("--cap-speed", type=float, default=115, help="seconds for the speed.py comparison")
    parser.add_argument(
        "--cap-frontier", type=float, default=180, help="seconds for resnet_frontier's seeds and their committee"
    )
    parser.add_argument("--cap-recipes", type=float, default=None, help="seconds for the recipes (default: the rest)")
    parser.add_argument("--preset-cap", type=float, default=150, help="seconds for one preset's whole recipe")
    parser.add_argument("--seeds", type=int, default=30, help="speedrun seeds at most (as many as fit the cap)")
    parser.add_argument("--min-seeds", type=int, default=10, help="seeds needed to count a target as reached")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--frontier-seeds", type=int, default=10, help="resnet_frontier seeds at most (as fit the cap)")
    parser.add_argument("--frontier-args", default="", help="more fit options for configs/resnet_frontier.yaml")
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
    if opts.out is None and not opts.stage:
        # a tiny run measures nothing: its tables never replace the committed ones unless --out asks for it
        opts.out = Path(tempfile.mkdtemp(prefix="mnist-gpu-tiny-")) if opts.tiny else HERE
    if opts.tiny:
        opts.seeds, opts.min_seeds, opts.speed_epochs, opts.speed_batches = 2, 2, 1, 5
        # a CPU shared with other work can be many times slower than usual: the tiny run must not hit its caps
        opts.budget, opts.preset_cap = opts.budget * 20, opts.preset_cap * 20
        opts.frontier_seeds = 2
        for name in ("cap_tests", "cap_speedrun", "cap_speedrun_995", "cap_speed", "cap_frontier"):
            setattr(opts, name, getattr(opts, name) * 20)
        if opts.speed_models == SPEED_MODELS:
            opts.speed_models = "mlp_128_64"  # speed.py's own tiny test covers the convnet and the ViT
        if opts.presets == RECIPE_PRESETS:
            opts.presets = ["convnet", "mlp_strong"]  # one capped committed row (replaced), one full (kept)
    return opts


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Every part not skipped, in order, each under its cap; the report (also written to ``--out``)."""
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
        "frontier": {},
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
    committed_path = HERE / "results.json"
    committed = json.loads(committed_path.read_text()) if committed_path.is_file() else {}
    report["recipes"] = {"presets": {}, "rows": {}}
    if "frontier" not in opts.skip:
        with budget.part("frontier", opts.cap_frontier) as part:
            try:
                run_frontier(part, opts, report["frontier"])
            finally:  # the seeds measured before a failure still count
                write_results(report["recipes"], committed, opts.out, result_rows(report["frontier"]))
        write_report(report, budget, opts.out)
    if "recipes" not in opts.skip:
        with budget.part("recipes", opts.cap_recipes) as part:
            try:
                run_recipes(part, opts, report["recipes"], committed)
            finally:  # the rows measured before a failure still count
                write_results(report["recipes"], committed, opts.out, result_rows(report["frontier"]))
        write_report(report, budget, opts.out)

    print("[gpu] where the time went:", flush=True)
    for p in budget.parts:
        print(f"  {p.name:14s} {p.spent_s or 0:7.1f} s of {p.allowance_s:5.0f} s  {p.status}", flush=True)
    print(f"  total          {budget.total_s - budget.left():7.1f} s of {budget.total_s:5.0f} s", flush=True)
    print(f"[gpu] tables in {opts.out}", flush=True)
    return report


if __name__ == "__main__":
    main()
