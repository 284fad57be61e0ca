"""The docs hold up: CI runs the README's commands, links resolve, every preset is listed with true figures."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from statistics import mean
from unittest import mock

import pytest
import yaml
from conftest import CONFIGS, REPO

from mnist_lightning.cli import MNISTLightningCLI

README = REPO / "README.md"
CATALOGUE = REPO / "docs" / "presets.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md")), *(REPO / d / "README.md" for d in ("benchmarks", "notebooks"))]
INSTALL = (
    'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" && '
    "mnist-lightning fit --config configs/mlp_128_64.yaml"
)
TESTS = 'python -m pytest -m "not slow" -n 2'


def model_presets() -> list[str]:
    """Every config that names a model (not defaults.yaml, the ddp trainer preset or the sweep definition)."""
    presets = []
    for path in sorted(CONFIGS.glob("*.yaml")):
        config = yaml.safe_load(path.read_text()) or {}
        if isinstance(config.get("model"), dict) and "class_path" in config["model"]:
            presets.append(path.stem)
    return presets


def without_code_blocks(text: str) -> str:
    """The markdown with fenced code blocks blanked out: a link-like string in code is not a link."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces turned into hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings, with GitHub's -1, -2 suffixes for repeated headings."""
    seen: dict[str, int] = {}
    result = set()
    for line in without_code_blocks(page.read_text()).splitlines():
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            base = slug(match.group(1))
            result.add(f"{base}-{seen[base]}" if base in seen else base)
            seen[base] = seen.get(base, 0) + 1
    return result


def table_rows(text: str, heading: str) -> dict[str, list[str]]:
    """Table rows under a ``## heading`` (up to the next one): the preset of the first cell -> the other cells."""
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `([a-z0-9_]+)` \|(.*)\|$", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split("|")]
    return rows


def test_ci_runs_the_readme_install_and_test_commands() -> None:
    readme = README.read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert INSTALL in readme and TESTS in readme
    assert 'pip install -e ".[dev]"' in ci and TESTS in ci
    assert (REPO / "configs" / "mlp_128_64.yaml").is_file()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_to_a_file_and_heading_that_exist(page: Path) -> None:
    text = without_code_blocks(page.read_text())
    links = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text)
    assert links, f"{page.name} has no links: the pattern no longer matches"
    broken = []
    for link in links:
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(f"{link}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{link}: no heading #{anchor} in {path.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: {broken}"


def test_every_config_named_in_the_docs_exists() -> None:
    named = {name for page in PAGES for name in re.findall(r"configs/([a-z0-9_]+\.yaml)", page.read_text())}
    assert "mlp_128_64.yaml" in named
    assert [name for name in sorted(named) if not (CONFIGS / name).is_file()] == []


def test_every_preset_is_in_the_readme_table_and_the_catalogue() -> None:
    presets = model_presets()
    assert {"mlp_128_64", "convnet", "vit", "cnn_strong", "speedrun"} <= set(presets)
    assert sorted(table_rows(README.read_text(), "Presets and their accuracy")) == presets
    catalogue = CATALOGUE.read_text()
    assert sorted(table_rows(catalogue, "Summary")) == presets
    # and each preset has its own entry with its layers below the summary
    detailed = catalogue.split("\n## Summary\n", 1)[1].split("\n## ", 1)[1]
    assert [p for p in presets if f"| `{p}` |" not in detailed] == []


def test_documented_parameter_counts_are_those_of_the_built_models() -> None:
    readme = table_rows(README.read_text(), "Presets and their accuracy")
    catalogue = CATALOGUE.read_text()
    summary = table_rows(catalogue, "Summary")
    for preset in model_presets():
        args = ["--config", str(CONFIGS / "defaults.yaml"), "--config", str(CONFIGS / f"{preset}.yaml")]
        with mock.patch.object(sys, "argv", ["mnist-lightning"]):  # pytest's own arguments are not the CLI's
            model = MNISTLightningCLI(args=[*args, "--trainer.logger", "false"], run=False).model
        count = f"{model.num_parameters:,}"
        assert readme[preset][1] == count, preset
        assert summary[preset][1] == count, preset
        # every other table row of the catalogue that names the preset and a parameter count agrees
        for line in catalogue.splitlines():
            if line.startswith(f"| `{preset}` |"):
                counts = [c.strip() for c in line.split("|") if re.fullmatch(r"\d{1,3}(,\d{3})+", c.strip())]
                assert counts == [count], (preset, line)


def test_documented_accuracies_are_the_measured_ones() -> None:
    rows = json.loads((REPO / "benchmarks" / "results.json").read_text())
    measured = {key: row for key, row in rows.items() if "ensemble" not in row}  # ensembles have a table of their own
    speedrun = json.loads((REPO / "benchmarks" / "speed.json").read_text())["speedrun"]
    readme = table_rows(README.read_text(), "Presets and their accuracy")
    summary = table_rows(CATALOGUE.read_text(), "Summary")
    presets = model_presets()
    # a preset with no measurement yet (designed for a GPU) must say so in both tables, never show a figure
    unmeasured = set(presets) - set(measured) - {"speedrun"}
    assert set(measured) <= set(presets)
    for preset in presets:
        if preset in unmeasured:
            assert all(table[preset][-1].startswith("not measured yet") for table in (readme, summary)), preset
            continue
        if preset == "speedrun":
            figure, capped = f"{100 * mean(speedrun['test_acc']):.2f}% (mean", False
        else:
            row = measured[preset]
            figure, capped = f"{row['test_acc']:.2f}%", row["epochs"] < row["recipe_epochs"]
        for table in (readme, summary):
            cell = table[preset][-1]
            assert cell.startswith(figure), (preset, cell, figure)
            assert ("capped" in cell) == capped, (preset, cell)
