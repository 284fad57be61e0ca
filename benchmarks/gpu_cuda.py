"""gpu.py's first part: the CUDA-only tests of ``tests/`` through pytest and, with two or more GPUs, a DDP fit."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from gpu_budget import Part, hard_cap

REPO = Path(__file__).resolve().parents[1]


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
