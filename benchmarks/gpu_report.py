"""gpu.py's tables: ``gpu.json`` (every figure) and ``gpu.md`` (one section per part, then how to run it).

A tiny run (``--tiny``) gets the same tables under a TINY MODE title, and none of the conclusions a real run's
figures support (the targets reached, where the MLP's time goes, what would close the gap): a few batches of tiny
models on a CPU measure nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import gpu_frontier
import speed_report
import torch
from gpu_budget import Budget
from gpu_staging import CARRY, DEVICE_COMMAND

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

GAP_ADVICE = (
    "What would close the gap: the MLP does little GPU work per step, so fit's extra time is host time per step"
    " (Python in Lightning's loop and hooks, then this project's). Bare Lightning is the floor for anything trained"
    " by a Trainer: the project's share can go (fewer per-step callbacks: progress bar, loss guard and step"
    " checkpoints off), Lightning's only with fewer steps (a larger batch: the cost is per step, not per image) or"
    " fewer Python calls per step (a fused optimizer, `torch.optim.Adam(fused=True)`; the whole step captured in a"
    " CUDA graph, which needs manual optimization, static shapes and no host syncs)."
)


def environment() -> dict[str, Any]:
    """speed.py's description of the machine, with the CUDA version and the number of GPUs."""
    env = speed_report.environment()
    env["cuda"] = torch.version.cuda or "none"
    env["gpus"] = torch.cuda.device_count()
    return env


def fmt_mean_std(mean: float, std: float, digits: int, percent: bool = False) -> str:
    """``mean ± std`` with ``digits`` decimals (as percentages of fractions with ``percent``)."""
    if percent:
        return f"{100 * mean:.{digits}f} ± {100 * std:.{digits}f}%"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def time_section(report: dict[str, Any]) -> list[str]:
    """The budget and each part's cap, allowance, seconds spent and status."""
    lines = [
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
    return lines


def speedrun_section(report: dict[str, Any]) -> list[str]:
    """One row per speedrun preset (mean ± std over its seeds), then every seed's time and accuracy."""
    lines = [
        "## Speedruns",
        "",
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
        # a tiny run's figures reach nothing and miss nothing: they are not measurements
        reached = "n/a (tiny)" if report["tiny"] else "yes" if sr["reached"] else "no"
        lines.append(
            f"| `{sr['preset']}` | {sr['seeds']} | {sr['steps']} | {train}"
            f" | < {sr['goal_s']:g} s | {fmt_mean_std(sr['test_acc_mean'], sr['test_acc_std'], 2, True)}"
            f" | ≥ {sr['target_acc']:.1%} | {sr['fit_call_s_mean']:.2f} | {reached} |"
        )
    for sr in report["speedruns"]:
        if sr.get("runs"):
            per_seed = ", ".join(f"{r['seed']}: {r['train_s']:.3f} s / {r['test_acc']:.2%}" for r in sr["runs"])
            lines += ["", f"`{sr['preset']}` per seed (warm-up {sr['warmup_s']:.1f} s): {per_seed}."]
        if sr.get("note"):
            lines += ["", f"`{sr['preset']}`: {sr['note']}."]
    lines.append("")
    lines.append("For comparison: the public record for 99% is 0.76 s on a GTX 1660 Ti; this project aims at 0.5 s.")
    return lines


def mlp_gap(rows: list[dict[str, Any]], tiny: bool = False) -> list[str]:
    """Per-step time of the MLP through fit, bare Lightning and the plain loop, and (from a real run) where the
    difference goes."""
    lines = []
    for row in rows:
        if row["name"] != "mlp_128_64" or row.get("skipped") or not row.get("fit_epoch_s"):
            continue
        steps = math.ceil(row["train_images"] / row["batch_size"])
        fit, bare, plain = (row[k] / steps * 1e6 for k in ("fit_epoch_s", "bare_epoch_s", "plain_epoch_s"))
        line = (
            f"- {row['variant']}: fit / plain = {row['ratio']:.2f}. One step of batch {row['batch_size']}: "
            f"{fit:.0f} µs through fit, {bare:.0f} µs through bare Lightning, {plain:.0f} µs in the plain loop"
        )
        if tiny:
            lines.append(f"{line}.")
        else:
            lines.append(
                f"{line}: Lightning's loop adds {bare - plain:.0f} µs per step, this project's module, metrics and "
                f"callbacks {fit - bare:.0f} µs."
            )
    return lines


def speed_section(report: dict[str, Any]) -> list[str]:
    """speed.py's figures per variant and model, and the MLP's per-step times."""
    lines = [
        "## fit, the plain loop and bare Lightning (benchmarks/speed.py)",
        "",
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
    gap = mlp_gap(report["speed"], report["tiny"])
    if gap:
        lines += ["", "**The MLP's ratio.**", "", *gap]
        if not report["tiny"]:
            lines += ["", GAP_ADVICE]
    return lines


def frontier_section(report: dict[str, Any]) -> list[str]:
    """resnet_frontier's seeds and committee (gpu_frontier.py draws it)."""
    return gpu_frontier.section(report, report["tiny"])


def recipes_section(report: dict[str, Any]) -> list[str]:
    """Each preset's probe, projection and outcome, with the row it measured; then the merge notes."""
    rec = report["recipes"]
    lines = [
        "## Full recipes (benchmarks/results.py)",
        "",
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
    return lines


def tests_section(report: dict[str, Any]) -> list[str]:
    """The CUDA-only tests' outcome and the DDP fit's (or why it did not run)."""
    tests = report["tests"]
    lines = ["## CUDA tests and DDP", ""]
    if tests.get("cuda_tests") is None or "pytest_counts" not in tests:
        return [*lines, "Not run."]
    counts = ", ".join(f"{n} {k}" for k, n in tests["pytest_counts"].items() if n)
    listed = ", ".join(f"`{t}`" for t in tests["cuda_tests"]) or "none found"
    lines.append(f"CUDA-only tests ({listed}): {counts or 'no result'} (pytest exit code {tests['pytest_rc']}).")
    ddp = tests["ddp"]
    if "note" in ddp:
        return [*lines, "", f"DDP: {ddp['note']}."]
    return [
        *lines,
        "",
        f"DDP (`fit --config configs/mlp_128_64.yaml --config configs/ddp.yaml`, 1 epoch): exit code "
        f"{ddp['rc']}, {ddp['processes']} processes, backend {ddp['backend']}, {ddp['seconds']:.0f} s.",
    ]


def markdown(report: dict[str, Any]) -> str:
    """The whole ``gpu.md`` page."""
    env = report["environment"]
    tiny = " — TINY MODE: a few batches of tiny models on the CPU, not a measurement" if report["tiny"] else ""
    lines = [
        f"# mnist-lightning on a GPU{tiny}",
        "",
        f"{env['date']}; hardware: {env['device']}; torch {env['torch']} (CUDA {env['cuda']}), "
        f"lightning {env['lightning']}, Python {env['python']}; {env['gpus']} GPU(s). Command: `{report['command']}`",
        "",
    ]
    for section in (time_section, speedrun_section, speed_section, frontier_section, recipes_section, tests_section):
        lines += [*section(report), ""]
    if not report["tiny"]:  # an estimate and what it implies: nothing a tiny run's page should carry
        lines.append(gpu_frontier.ESTIMATE)
    lines.append(HOWTO)
    return "\n".join(lines)


def write_report(report: dict[str, Any], budget: Budget, out: Path) -> None:
    """``gpu.json`` and ``gpu.md`` in ``out``, with the parts' seconds so far (written after every part)."""
    report["parts"] = [p.summary() for p in budget.parts]
    report["total_s"] = budget.total_s - budget.left()
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "gpu.md").write_text(markdown(report) + "\n")
