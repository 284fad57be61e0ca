"""The results table script: rows from its JSON become one markdown table, capped runs marked as such."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from conftest import REPO

spec = importlib.util.spec_from_file_location("results", REPO / "benchmarks" / "results.py")
results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results)


def row(preset: str, epochs: int, recipe: int, acc: float) -> dict:
    return {
        "preset": preset,
        "model": "CNNClassifier",
        "parameters": 1_199_882,
        "epochs": epochs,
        "recipe_epochs": recipe,
        "test_acc": acc,
        "test_loss": 0.05,
        "best_val_acc": acc,
        "seconds_per_epoch": 12.5,
        "hardware": "CPU test",
        "date": "2026-01-01",
        "source": results.SOURCE_FIGURES.get(preset, "not reported"),
    }


def test_table_only_rewrites_the_markdown_from_the_json(tmp_path: Path) -> None:
    data = {"cnn_strong": row("cnn_strong", 15, 15, 99.61), "convnet": row("convnet", 1, 10, 97.5)}
    (tmp_path / "r.json").write_text(json.dumps(data))
    results.main(["--table-only", "--results", str(tmp_path / "r.json"), "--output", str(tmp_path / "r.md")])
    lines = (tmp_path / "r.md").read_text().splitlines()
    table = [line for line in lines if line.startswith("| `")]
    assert [line.split("|")[1].strip() for line in table] == ["`convnet`", "`cnn_strong`"]  # catalogue order first
    assert "| 1 / 10 (capped) | 97.50% |" in table[0] and "98% (NLL 0.081)" in table[0]
    assert "| 15 / 15 | 99.61% |" in table[1] and "1,199,882" in table[1]
    assert any(line.startswith("Not measured yet:") and "`vit_encoder`" in line for line in lines)


def test_recipe_epochs_come_from_the_preset_config() -> None:
    assert results.recipe_epochs("lenet5") == 5
    assert results.recipe_epochs("convnet") == 10
