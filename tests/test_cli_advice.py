"""Messages name the right thing, and the advice they print works exactly as printed.

- a seed that is not an integer (every spelling: option, ``=``, YAML) says an integer is expected;
- a ``--ckpt_path`` that is not a checkpoint file (a folder with only ``last.ckpt`` or ``last-v1.ckpt``, an empty
  folder, a folder of several, a run folder, a link loop, a dangling link, a folder named ``x.ckpt``, an empty, text or
  truncated file, a missing path) is described as what it is, and the ``--ckpt_path ...`` it suggests is taken from
  the printed line with ``shlex``, run, and works; a missing path is never suggested back;
- ``--ckpt_path last`` keeps its dashes in the message.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import one_error_line, run_cli

QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
VALIDATE = ["validate", *QUIET, "--trainer.limit_val_batches", "1"]
error_line = functools.partial(one_error_line, code=None)  # any non-zero exit code
SUGGESTED = re.compile(r"--ckpt_path ('[^']*'|\S+)")


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder of a tiny fit: ``checkpoints/`` holds a best and a ``last.ckpt``."""
    folder = tmp_path_factory.mktemp("advice")
    fit = ["fit", "--model", "MLPClassifier", "--model.hidden_sizes", "[16]", "--trainer.max_epochs", "1"]
    short = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        run_cli(*fit, *short, *QUIET)
    (last,) = (folder / "runs").rglob("last.ckpt")
    return last.parent.parent


# --------------------------------------------------------------------------------------------------------- seeds
@pytest.mark.parametrize(
    "spelling",
    [
        ["--seed_everything", "abc"],
        ["--seed_everything=1.5"],
        ["--seed_everything", "1e3"],
        ["--seed_everything", "-3"],
        ["--seed_everything", "4294967296"],
        ["--config", "seed.yaml"],
        ["--config", "quoted.yaml"],
    ],
)
def test_a_seed_that_is_not_an_integer_says_an_integer_is_expected(isolated: Path, spelling: list[str]) -> None:
    (isolated / "seed.yaml").write_text("seed_everything: abc\n")
    (isolated / "quoted.yaml").write_text("seed_everything: '7.5'\n")
    line = error_line(run_cli("fit", "--model", "MLPClassifier", *spelling, check=False))
    assert "seed_everything expects an integer from 0 to 4294967295" in line, line
    assert "bool" not in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--data.batch_size", "abc"], "data.batch_size expects an integer; got 'abc'"),
        (["--model.lr", "fast"], "model.lr expects a number; got 'fast'"),
        (["--data.augment", "maybe"], "data.augment expects true or false; got 'maybe'"),
        (["--trainer.precision", "17"], "trainer.precision expects one of 64, 32, 16, transformer-engine"),
        (["--trainer.logger", "NoSuchLogger"], "trainer.logger: no class 'NoSuchLogger'"),
    ],
)
def test_a_value_of_the_wrong_type_names_its_setting_and_what_it_takes(
    isolated: Path, args: list[str], expected: str
) -> None:
    line = error_line(run_cli("fit", "--model", "MLPClassifier", *args, check=False))
    assert expected in line and "<class" not in line, line
    assert "unknown model" not in line


def test_ckpt_path_last_keeps_its_dashes(isolated: Path) -> None:
    line = error_line(run_cli("validate", "--ckpt_path", "last", "--trainer.default_root_dir", "nowhere", check=False))
    assert "error: --ckpt_path last: no last.ckpt under nowhere" in line, line


# ----------------------------------------------------------------------------------------- checkpoint paths
def make_case(case: str, isolated: Path, run: Path) -> Path:
    """The ``--ckpt_path`` of one case, built in ``isolated``."""
    last, best = run / "checkpoints" / "last.ckpt", next((run / "checkpoints").glob("best*.ckpt"))
    folder = isolated / "my runs" / case
    folder.mkdir(parents=True)
    if case == "only last":
        shutil.copy(last, folder / "last.ckpt")
    elif case == "only last-v1":
        shutil.copy(last, folder / "last-v1.ckpt")
    elif case == "several":
        shutil.copy(last, folder / "last.ckpt")
        shutil.copy(best, folder / best.name)
    elif case == "run folder":
        return Path(shutil.copytree(run, folder / "abcd1234"))
    elif case == "link loop":
        os.symlink(folder / "b.ckpt", folder / "a.ckpt")
        os.symlink(folder / "a.ckpt", folder / "b.ckpt")
        return folder / "a.ckpt"
    elif case == "dangling link":
        os.symlink(folder / "moved away.ckpt", folder / "model.ckpt")
        return folder / "model.ckpt"
    elif case == "folder named x.ckpt":
        (folder / "x.ckpt").mkdir()
        return folder / "x.ckpt"
    elif case in ("empty file", "text file", "truncated file"):
        shutil.copy(best, folder / "good.ckpt")  # what the advice should name instead
        content = {"empty file": b"", "text file": b"seed_everything: 1\n", "truncated file": last.read_bytes()[:4000]}
        (folder / "bad.ckpt").write_bytes(content[case])
        return folder / "bad.ckpt"
    elif case == "missing beside checkpoints":
        shutil.copy(last, folder / "last.ckpt")
        shutil.copy(best, folder / "best.ckpt")
        return folder / "bets.ckpt"
    elif case == "missing with spaces":
        return folder / "no such folder" / "my model.ckpt"
    return folder


CASES = {
    "only last": "is a folder; it holds only last.ckpt",
    "only last-v1": "is a folder; it holds only last-v1.ckpt",
    "empty folder": "is a folder; it holds no .ckpt files",
    "several": "is a folder; it holds ",
    "run folder": "is a folder; its checkpoints folder holds ",
    "link loop": "is a symbolic link loop",
    "dangling link": "moved away.ckpt, which does not exist",
    "folder named x.ckpt": "is a folder, not a file (although its name ends in .ckpt)",
    "empty file": "is an empty file (0 bytes), not a checkpoint",
    "text file": "is a text file (it starts 'seed_everything: 1'), not a checkpoint",
    "truncated file": "is truncated",
    "missing beside checkpoints": "bets.ckpt does not exist",
    "missing with spaces": "my model.ckpt does not exist",
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_ckpt_path_that_is_not_a_checkpoint_is_described_and_its_advice_works(
    isolated: Path, run_folder: Path, case: str
) -> None:
    given = make_case(case, isolated, run_folder)
    line = error_line(run_cli(*VALIDATE, "--ckpt_path", str(given), check=False))
    assert f"checkpoint {given} " in line and CASES[case] in line, line

    suggested = [shlex.split(match)[0] for match in SUGGESTED.findall(line.split(CASES[case], 1)[1])]
    suggested = [path for path in suggested if path != "last"]
    assert str(given) not in suggested  # never the path that failed
    for path in suggested:  # a path the line suggests exists, and the command works with it as printed
        assert Path(path).is_file(), (path, line)
    if suggested:
        printed = shlex.split(" ".join(["mnist-lightning", *VALIDATE, SUGGESTED.search(line).group(0)]))
        result = run_cli(*printed[1:], check=False)
        assert result.returncode == 0, result.stderr[-2000:]


def test_export_serve_and_report_describe_a_folder_the_same_way(isolated: Path, run_folder: Path) -> None:
    given = make_case("only last", isolated, run_folder)
    for command in (["export"], ["serve"], ["report", "--no-wandb"]):
        line = error_line(run_cli(*command, "--ckpt_path", str(given), check=False))
        assert "is a folder; it holds only last.ckpt" in line, line
        assert f"--ckpt_path {shlex.quote(str(given / 'last.ckpt'))}" in line


def test_the_one_line_summary_keeps_an_options_dashes_and_drops_only_list_bullets() -> None:
    from mnist_lightning.cli.messages import summarize_parse_error

    assert summarize_parse_error("--device cuda:7: there is no such GPU") == "--device cuda:7: there is no such GPU"
    assert summarize_parse_error("  - the first reason\n  - the second") == "the first reason"
