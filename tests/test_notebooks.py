"""Each notebook runs top to bottom in a fresh kernel (CI budget) and draws its figures; committed ones show them."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from background import JOBS, notebook_job
from conftest import REPO

from mnist_lightning.notebook import BUDGET_ENV, fit_preset, latest_checkpoint, notebook_budget

NOTEBOOKS = REPO / "notebooks"
# notebook -> how many figure cells it has (cells tagged "figure": each must show at least one image/png)
FIGURES = {
    "01_data.ipynb": 4,
    "02_train_and_compare.ipynb": 1,
    "03_vit_attention.ipynb": 4,
    "04_predictions.ipynb": 4,
    "05_robustness_and_calibration.ipynb": 4,
}


def figure_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if "figure" in cell.get("metadata", {}).get("tags", [])]


def has_png(cell: nbformat.NotebookNode) -> bool:
    return any("image/png" in output.get("data", {}) for output in cell.get("outputs", []))


def test_every_notebook_is_checked() -> None:
    assert sorted(path.name for path in NOTEBOOKS.glob("*.ipynb")) == sorted(FIGURES)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_runs_in_ci_budget(name: str, mnist_dir: Path) -> None:
    # run in a fresh kernel with the CI budget by tests/run_notebook.py, in the background from the session's start
    job = JOBS.wait(name, lambda root: notebook_job(name, root, mnist_dir))
    assert job.result.returncode == 0, job.result.stderr[-5000:]  # the first failing cell's error
    notebook = nbformat.read(job.folder / "executed.ipynb", as_version=4)

    assert notebook.cells[-1].outputs[0]["text"].strip() == sys.executable
    first_code = next(cell for cell in notebook.cells if cell.cell_type == "code")
    assert "budget: ci" in "".join(output.get("text", "") for output in first_code.outputs)
    figures = figure_cells(notebook)
    assert len(figures) == FIGURES[name]
    missing = [cell.source.splitlines()[0] for cell in figures if not has_png(cell)]
    assert not missing, f"{name}: figure cells without an image: {missing}"


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_committed_notebook_shows_a_full_run(name: str) -> None:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code_cells), f"{name}: not every cell was run"
    errors = [output for cell in code_cells for output in cell.outputs if output.output_type == "error"]
    assert not errors, f"{name}: committed with an error output"
    first_output = "".join(output.get("text", "") for output in code_cells[0].outputs)
    assert "budget: full" in first_output, f"{name}: the committed outputs are not from a full-budget run"
    figures = figure_cells(notebook)
    assert len(figures) == FIGURES[name] and all(has_png(cell) for cell in figures)


def test_unknown_budget_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BUDGET_ENV, "quick")
    with pytest.raises(ValueError, match=r"use 'full'.*or 'ci'"):
        notebook_budget()
    monkeypatch.delenv(BUDGET_ENV)
    assert notebook_budget() == "full"


def test_epoch_history_has_train_and_validation_metrics_of_every_epoch() -> None:
    cli, history = fit_preset(
        "mlp_128_64", "--trainer.max_epochs=2", "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=2"
    )
    assert history.column("epoch") == [1, 2]
    for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
        assert len(history.column(key)) == 2
    assert history.column("val/acc")[-1] == pytest.approx(float(cli.trainer.callback_metrics["val/acc"]))
    assert latest_checkpoint("mlp_128_64") is not None
