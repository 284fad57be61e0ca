"""gpu.py's speed part: benchmarks/speed.py's fit, plain loop and bare Lightning per precision variant and model."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from typing import Any

import speed
from gpu_budget import OverCap, Part, hard_cap


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
