"""The ``mnist-lightning`` console script end to end: fit, validate, test, predict, and its error lines.

The first test runs the installed console script as new processes, as a user does; the others run the same command
in the test process (``run_cli``), which shows the same output and exit codes without a new process's start-up."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS, metric, run_cli, run_console_script
from wandb_offline import read_run


def test_fit_test_predict_validate_through_the_console_script(isolated: Path) -> None:
    run_console_script("fit", "--config", str(CONFIGS / "mlp_128_64.yaml"), "--trainer.max_epochs", "1")
    (run_dir,) = (isolated / "runs" / "mnist-lightning").iterdir()
    (best,) = (run_dir / "checkpoints").glob("best-*.ckpt")
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["class_path"] == "mnist_lightning.models.MLPClassifier"
    assert saved["trainer"]["max_epochs"] == 1

    (wandb_dir,) = (isolated / "runs" / "wandb").glob("offline-run-*")
    run = read_run(wandb_dir)
    assert run.run_id == run_dir.name
    assert run.config["model"]["init_args"]["hidden_sizes"] == [128, 64]
    assert run.config["data"]["batch_size"] == 64
    assert len(run.metric("val/acc")) == 1 and run.metric("train/loss")

    tested = run_console_script("test", "--ckpt_path", str(best))
    assert metric(tested.stdout, "test/acc") >= 0.95

    validated = run_console_script("validate", "--ckpt_path", str(best))
    assert metric(validated.stdout, "val/acc") == pytest.approx(float(best.stem.split("val_acc")[1]), abs=1e-4)

    predicted = run_console_script("predict", "--ckpt_path", str(best), "--predictions.output", "out/preds.csv")
    out = isolated / "runs" / "out" / "preds.csv"
    assert str(out.relative_to(isolated)) in predicted.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 10_000
    assert list(rows[0]) == ["index", "prediction"] + [f"prob_{k}" for k in range(10)]
    probs = [float(rows[0][f"prob_{k}"]) for k in range(10)]
    assert sum(probs) == pytest.approx(1, abs=1e-4)
    assert int(rows[0]["prediction"]) == max(range(10), key=probs.__getitem__)
    assert sum(int(r["prediction"]) == label for r, label in zip(rows[:5], [7, 2, 1, 0, 4])) >= 4
    assert not list(out.parent.glob(".*.tmp"))


def test_fit_twice_in_the_same_folder(isolated: Path) -> None:
    args = ("fit", "--config", str(CONFIGS / "linear.yaml"), "--trainer.max_epochs", "1")
    run_cli(*args, "--trainer.limit_train_batches", "20", "--trainer.limit_val_batches", "5")
    run_cli(*args, "--trainer.limit_train_batches", "20", "--trainer.limit_val_batches", "5")
    runs = list((isolated / "runs" / "mnist-lightning").iterdir())
    assert len(runs) == 2
    assert all((r / "checkpoints" / "last.ckpt").is_file() and (r / "config.yaml").is_file() for r in runs)


def test_python_dash_m_and_help() -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "mnist_lightning", "fit", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--model" in result.stdout and "--data.data_dir" in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["fit", "--model", "NoSuchNet"], "unknown model 'NoSuchNet'; choose one of"),
        (["test", "--ckpt_path", "missing.ckpt"], "checkpoint missing.ckpt does not exist"),
        (["fit", "--config", "nope.yaml"], "nope.yaml"),
        (["fit", "--model", "MLPClassifier", "--model.lr", "-1"], "lr must be positive"),
        (["fit", "--model", "MLPClassifier", "--data.batch_size", "0"], "batch_size must be a positive integer"),
        (
            ["fit", "--model", "MLPClassifier", "--data.data_dir", "empty", "--data.download", "false"],
            "MNIST files missing in empty/MNIST/raw",
        ),
        (["fit", "--model", "MLPClassifier", "--data.data_dir", "empty"], "download failed"),
    ],
)
def test_bad_input_gets_one_clear_line(isolated: Path, args: list[str], expected: str) -> None:
    (isolated / "empty").mkdir()
    result = run_cli(*args, check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("mnist-lightning: error: ") and expected in errors[0], errors[0]
    assert not list((isolated / "runs").rglob("*.ckpt")) if (isolated / "runs").exists() else True


def test_model_help_shows_that_models_options(isolated: Path) -> None:
    general = run_cli("fit", "--help").stdout
    for spelling in (["--model", "MLPClassifier"], ["--model=MLPClassifier"]):
        shown = run_cli("fit", *spelling, "--help").stdout
        assert "--model.hidden_sizes" in shown and "--model.batch_norm" in shown
        assert "--model.hidden_sizes" not in general


def test_a_preset_by_name_gives_no_warning_about_mixed_arguments(isolated: Path) -> None:
    result = run_cli("fit", "--config", "linear", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                     "--trainer.limit_val_batches", "1", "--trainer.logger", "false")  # fmt: skip
    assert "args parameter is intended" not in result.stderr and "recommended" not in result.stderr
    assert "smaller than the logging interval" not in result.stderr


def test_the_package_has_no_import_cycle() -> None:
    import ast

    package = Path(__file__).resolve().parents[1] / "mnist_lightning"
    modules = {
        ".".join(("mnist_lightning", *path.relative_to(package).with_suffix("").parts)).removesuffix(".__init__"): path
        for path in package.rglob("*.py")
    }
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):  # function-level imports count too
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mnist_lightning"):
                targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            target = next((t for t in targets if t in modules), None)
            if target and target != name:
                graph[name].add(target)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(nxt == goal or (nxt not in seen and not seen.add(nxt) and reaches(nxt, goal, seen))
                   for nxt in graph[start])  # fmt: skip

    cycles = [(a, b) for a in graph for b in graph[a] if reaches(b, a, set())]
    assert cycles == []


def test_metric_reader_reads_lightnings_table_with_and_without_rich() -> None:
    # with `rich` installed Lightning draws the results table with box characters; the tests must read both
    plain = "       Test metric             DataLoader 0\n         test/acc            0.9512000083923340\n"
    boxed = "┃    Test metric    ┃   DataLoader 0   ┃\n│     test/acc      │  0.95120000839   │\n"
    assert metric(plain, "test/acc") == pytest.approx(0.9512) == metric(boxed, "test/acc")
