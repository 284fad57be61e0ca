"""Training processes that share one machine's cores: one fit against two and four at once, with torch's default
threads in each and with each given its share (``mnist_lightning.threads``).

Each process is the console script's ``fit`` of a 784-64-128-64-10 MLP (batch 128, logger off, checkpoints in a
temporary folder) for ``--epochs`` epochs, started at the same moment as the others of its group. A group's figure is
its wall time from the first start to the last exit; its efficiency is ``N × (one process alone) / (group wall)``:
1.0 when N processes together go as fast as one that has every core, less when they get in each other's way.
Groups run in turn, every setting once per repeat, so that a machine whose load drifts affects all alike; the
tables give medians. ``OMP_NUM_THREADS`` is removed for the default-thread groups (torch then takes every core) and
set to each process's share for the others.

    python benchmarks/cores.py                                  # 1, 2 and 4 processes, 3 epochs, 3 repeats
    python benchmarks/cores.py --processes 1,2 --epochs 1 --repeats 1 --out /tmp/cores
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from speed_report import environment
from startup import TRAIN_TIMER, TRAINING_TOOK

from mnist_lightning.threads import THREADS_ENV, available_cores, child_environment

HERE = Path(__file__).resolve().parent
CLI = str(Path(sys.executable).with_name("mnist-lightning"))
FIT = [CLI, "fit", "--model", "MLPClassifier", "--model.hidden_sizes", "[64,128,64]", "--data.batch_size", "128"]
FIT += ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
FIT += ["--trainer.enable_model_summary", "false", TRAIN_TIMER]


def group_environment(processes: int, shared: bool) -> dict[str, str]:
    """Each process's environment: without ``OMP_NUM_THREADS`` (torch's default: every core) or with its share."""
    base = {key: value for key, value in os.environ.items() if key != THREADS_ENV}
    base["WANDB_MODE"] = "offline"
    return child_environment(processes, base=base) if shared else base


def run_group(processes: int, shared: bool, epochs: int) -> dict[str, Any]:
    """Start ``processes`` fits at once; their wall and training seconds, and the group's wall."""
    env = group_environment(processes, shared)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="mnist-cores-") as workdir:
        start = time.perf_counter()
        running = []
        for index in range(processes):
            folder = Path(workdir) / str(index)
            folder.mkdir()
            command = [*FIT, "--trainer.max_epochs", str(epochs), "--seed_everything", str(index)]
            with open(folder / "output.txt", "w") as output:  # a file, not a pipe: nothing waits on a full pipe
                running.append(subprocess.Popen(command, cwd=folder, env=env, stdout=output, stderr=subprocess.STDOUT))
        walls: list[float | None] = [None] * processes
        while None in walls:  # each process's own wall time: poll them all
            time.sleep(0.05)
            for index, process in enumerate(running):
                if walls[index] is None and process.poll() is not None:
                    walls[index] = time.perf_counter() - start
        trains = []
        for index, process in enumerate(running):
            output = (Path(workdir) / str(index) / "output.txt").read_text()
            if process.returncode != 0:
                raise SystemExit(f"a fit exited {process.returncode}:\n{output[-3000:]}")
            took = TRAINING_TOOK.findall(output)
            trains.append(float(took[-1]) if took else float("nan"))
        group_wall = time.perf_counter() - start
    return {
        "processes": processes,
        "threads": env.get(THREADS_ENV, "default"),
        "group_wall_s": group_wall,
        "process_wall_s": walls,
        "train_s": trains,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (processes, threads): the median group wall and training time, and the efficiency."""
    settings = sorted({(r["processes"], r["threads"]) for r in runs}, key=lambda s: (s[0], s[1] != "default"))
    alone = statistics.median(r["group_wall_s"] for r in runs if r["processes"] == 1)
    rows = []
    for processes, threads in settings:
        mine = [r for r in runs if (r["processes"], r["threads"]) == (processes, threads)]
        wall = statistics.median(r["group_wall_s"] for r in mine)
        rows.append(
            {
                "processes": processes,
                "threads": threads,
                "group_wall_s": wall,
                "mean_train_s": statistics.median(statistics.fmean(r["train_s"]) for r in mine),
                "efficiency": processes * alone / wall,
                "repeats": len(mine),
                "load": statistics.median(r["load_before"] for r in mine),
            }
        )
    return rows


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "| processes | threads each | group wall s (median) | training s per process | efficiency | load (1 min) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        threads = "default (every core)" if row["threads"] == "default" else f"{row['threads']} (its share)"
        lines.append(
            f"| {row['processes']} | {threads} | {row['group_wall_s']:.1f} | {row['mean_train_s']:.1f} | "
            f"{row['efficiency']:.2f} | {row['load']:.1f} |"
        )
    head = (
        f"{env['date']}; {env['device']} ({report['cores']} available); torch {env['torch']}, lightning "
        f"{env['lightning']}. Command: `{report['command']}`. {report['epochs']} epochs per fit, "
        f"{report['repeats']} repeats, medians."
    )
    return head + "\n\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", default="1,2,4", help="comma-separated group sizes (1 is always measured)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each fit")
    parser.add_argument("--repeats", type=int, default=3, help="times each setting runs; medians are reported")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for cores.md and cores.json")
    opts = parser.parse_args(argv)
    sizes = sorted({1, *(int(n) for n in opts.processes.split(","))})
    command = "python benchmarks/cores.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    runs = []
    for repeat in range(opts.repeats):
        for processes in sizes:
            for shared in (False, True) if processes > 1 else (False,):
                run = run_group(processes, shared, opts.epochs)
                runs.append(run | {"repeat": repeat})
                print(
                    f"{processes} process(es), threads {run['threads']}: group {run['group_wall_s']:.1f} s, "
                    f"training {statistics.fmean(run['train_s']):.1f} s each, load {run['load_before']:.1f}",
                    flush=True,
                )
    report = {
        "command": command.strip(),
        "environment": environment(),
        "cores": available_cores(),
        "epochs": opts.epochs,
        "repeats": opts.repeats,
        "rows": summarize(runs),
        "runs": runs,
    }
    table = markdown(report)
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "cores.md").write_text("# Training processes sharing cores\n\n" + table)
    (opts.out / "cores.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table)
    return report


if __name__ == "__main__":
    main()
