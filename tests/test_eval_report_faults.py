"""``mnist-lightning report``'s faults: no empty or partial output folder after any failure, an earlier report kept,
Ctrl-C and SIGTERM (real signals) in one line with 130 and 143, stage lines, the data folder the checkpoint was
trained on, a missing-data message whose advice works, a W&B hint that works with spaces, and path problems named
as what they are. Real MNIST, one tiny fit with W&B offline, in a folder whose path has a space."""

from __future__ import annotations

import json
import os
import shlex
import signal
from pathlib import Path

import pytest
from conftest import CONFIGS, MNIST_DIR, run_cli, run_console_script, start_console_script

from mnist_lightning.data import DATA_DIR_ENV, RAW_FILES, raw_dir

TINY = ("--trainer.max_epochs", "1", "--trainer.limit_train_batches", "20", "--trainer.limit_val_batches", "2")
QUICK_REPORT = ("--shift_images", "100", "--shifts", "rotation")
EARLIER = '{"an": "earlier report"}\n'


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A linear model fitted with W&B (offline) on ``--data.data_dir "<space folder>/my data"``, a folder of links
    to the real MNIST files."""
    folder = tmp_path_factory.mktemp("report faults") / "with space"
    data = folder / "my data"
    raw_dir(data).mkdir(parents=True)
    for name in RAW_FILES:
        (raw_dir(data) / name).symlink_to(raw_dir(MNIST_DIR) / name)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv(DATA_DIR_ENV, str(folder / "no mnist here"))  # only --data.data_dir has the files
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
            mp.setenv(var, str(folder / ".wandb" / var.lower()))
        mp.delenv("WANDB_API_KEY", raising=False)
        run_cli(
            "fit", "--config", str(CONFIGS / "linear.yaml"), *TINY, "--data.data_dir", str(data),
            "--trainer.enable_progress_bar", "false",
        )  # fmt: skip
    (best,) = folder.rglob("best-*.ckpt")
    return {"best": best, "folder": folder, "data": data}


@pytest.fixture
def no_default_mnist(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default data folder holds no MNIST: only the trained folder or --data.data_dir can be used."""
    empty = isolated / "empty"
    empty.mkdir()
    monkeypatch.setenv(DATA_DIR_ENV, str(empty))
    return empty


def leftovers(folder: Path) -> list[str]:
    """Partial report folders left beside the output."""
    return sorted(path.name for path in folder.iterdir() if ".partial-" in path.name)


def earlier_report(folder: Path) -> Path:
    folder.mkdir()
    (folder / "report.json").write_text(EARLIER)
    return folder


def test_the_report_reads_the_folder_the_checkpoint_was_trained_on(
    trained: dict[str, Path], isolated: Path, no_default_mnist: Path
) -> None:
    result = run_cli("report", "--ckpt_path", str(trained["best"]), "--output", "out", "--no-wandb", *QUICK_REPORT)
    assert json.loads((isolated / "out" / "report.json").read_text())["models"][0]["test_accuracy"] > 0.5
    for stage in range(1, 7):  # a line at every stage
        assert f"report [{stage}/6] " in result.stderr


def test_missing_data_names_an_option_report_accepts_and_that_advice_works(
    trained: dict[str, Path], isolated: Path, no_default_mnist: Path
) -> None:
    out = earlier_report(isolated / "out")
    moved = trained["data"].with_name("moved away")
    trained["data"].rename(moved)  # the trained folder no longer holds MNIST
    try:
        args = ("report", "--ckpt_path", str(trained["best"]), "--output", "out", "--no-wandb", *QUICK_REPORT)
        failed = run_console_script(*args, check=False)
        assert failed.returncode == 1 and "Traceback" not in failed.stderr
        error = failed.stderr.strip().splitlines()[-1]
        assert error.startswith("mnist-lightning: error:") and "point --data.data_dir" in error
        assert (out / "report.json").read_text() == EARLIER and leftovers(isolated) == []
        fresh = run_cli(*args[:4], "fresh/report", *args[5:], check=False)  # a new folder: never made
        assert fresh.returncode == 1 and not (isolated / "fresh").exists() and leftovers(isolated) == []
        run_cli(*args, "--data.data_dir", str(MNIST_DIR))  # the advice, as given
        assert json.loads((out / "report.json").read_text())["models"]
    finally:
        moved.rename(trained["data"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--device", "no-such-device"), "is not a device"),
        (("--device", "cuda:99"), "the device cuda:99 (--device)"),  # no CUDA, or no 100th GPU
        (("--device", "meta"), "the device meta (--device) holds no data"),
        (("--shifts", "rotation", "sideways"), "unknown shift sideways"),
    ],
)
def test_a_refused_setting_leaves_no_folder(
    trained: dict[str, Path], isolated: Path, extra: tuple[str, ...], message: str
) -> None:
    result = run_cli("report", "--ckpt_path", str(trained["best"]), "--output", "new/out", *extra, check=False)
    assert result.returncode == 1 and message in result.stderr
    assert sorted(path.name for path in isolated.iterdir() if not path.name.startswith(".")) == []


def test_a_damaged_checkpoint_leaves_no_folder_and_keeps_the_earlier_report(isolated: Path) -> None:
    out = earlier_report(isolated / "out")
    (isolated / "damaged.ckpt").write_bytes(b"not a checkpoint")
    result = run_cli("report", "--ckpt_path", "damaged.ckpt", "--output", "out", check=False)
    # one line naming the file as what it is (here: a text file, not a checkpoint)
    assert result.returncode == 1 and "damaged.ckpt" in result.stderr and "not a checkpoint" in result.stderr
    assert "Traceback" not in result.stderr
    assert (out / "report.json").read_text() == EARLIER and leftovers(isolated) == []
    result = run_cli("report", "--ckpt_path", "damaged.ckpt", "--output", "fresh", check=False)
    assert not (isolated / "fresh").exists()


@pytest.mark.parametrize(
    ("sent", "code", "said"),
    [(signal.SIGINT, 130, "interrupted (Ctrl+C)"), (signal.SIGTERM, 143, "stopped by SIGTERM")],
)
def test_a_stopped_report_says_so_in_one_line_and_leaves_the_earlier_one(
    trained: dict[str, Path], isolated: Path, sent: signal.Signals, code: int, said: str
) -> None:
    out = earlier_report(isolated / "out")
    args = ("report", "--ckpt_path", str(trained["best"]), "--output", "out", "--no-wandb")
    with start_console_script(*args, "--shift_images", "10000", "--data.data_dir", str(MNIST_DIR)) as process:
        assert process.stderr is not None
        seen = []
        while not seen or "[4/6]" not in seen[-1]:  # the shifts: the longest stage
            line = process.stderr.readline()
            assert line, f"the report ended before its shifts:\n{''.join(seen)}"
            seen.append(line)
        os.kill(process.pid, sent)
        _, rest = process.communicate(timeout=120)
    assert process.returncode == code, rest
    assert "Traceback" not in rest
    (line,) = rest.strip().splitlines()
    assert line.startswith(f"mnist-lightning: report {said} after") and "no report was written" in line
    assert (out / "report.json").read_text() == EARLIER and sorted(p.name for p in out.iterdir()) == ["report.json"]
    assert leftovers(isolated) == []


def test_the_wandb_hint_names_the_run_and_its_sync_command_survives_spaces(
    trained: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = trained["folder"]
    monkeypatch.chdir(folder)
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(folder / ".wandb" / var.lower()))
    result = run_cli("report", "--ckpt_path", str(trained["best"]), *QUICK_REPORT)
    (hint,) = [line for line in result.stderr.splitlines() if "wandb sync" in line]
    run_id = trained["best"].parents[1].name
    # the report's own run, and the training run it belongs to
    assert "project mnist-lightning, run id " in hint and "entity " in hint and f"training run {run_id}" in hint
    command = shlex.split(hint.split("upload it with: ", 1)[1])
    assert command[:2] == ["wandb", "sync"] and len(command) == 4
    training, report = map(Path, command[2:])
    assert all(" " in str(synced) and synced.is_dir() for synced in (training, report))
    assert training.name.endswith(run_id) and f"run id {report.name.rsplit('-', 1)[1]}" in hint
    assert (folder / "runs" / "mnist-lightning" / run_id / "report" / "report.md").is_file()


def test_path_problems_are_named_as_what_they_are(trained: dict[str, Path], isolated: Path) -> None:
    loop = isolated / "loop.ckpt"
    loop.symlink_to(loop)
    nowhere = isolated / "nowhere.ckpt"
    nowhere.symlink_to(isolated / "gone.ckpt")
    for path, said in ((loop, "is a symbolic link that loops back on itself"), (nowhere, "which does not exist")):
        result = run_cli("report", "--ckpt_path", str(path), check=False)
        assert result.returncode == 1 and said in result.stderr and "Traceback" not in result.stderr
    only_last = isolated / "only last"
    only_last.mkdir()
    (only_last / "last.ckpt").symlink_to(trained["best"])
    result = run_cli(
        "test", "--ckpt_path", str(trained["best"]), "--ensemble", str(only_last), "--trainer.logger", "false",
        check=False,
    )  # fmt: skip
    assert result.returncode == 1 and "holds only last.ckpt" in result.stderr
    assert f"name it as a file: {only_last / 'last.ckpt'}" in result.stderr
    result = run_cli(
        "test", "--ckpt_path", str(trained["best"]), "--ensemble", str(loop), "--trainer.logger", "false", check=False
    )
    assert result.returncode == 1 and "loops back on itself" in result.stderr and "--ensemble" in result.stderr


def test_a_staged_folder_appears_whole_or_not_at_all(isolated: Path) -> None:
    from mnist_lightning.outputs import staged_folder

    kept = earlier_report(isolated / "kept")
    (kept / "notes.txt").write_text("the user's own file")
    with pytest.raises(KeyboardInterrupt), staged_folder(kept, "the report folder") as staging:
        (staging / "report.json").write_text("half")
        raise KeyboardInterrupt
    assert (kept / "report.json").read_text() == EARLIER and leftovers(isolated) == []
    with staged_folder(kept, "the report folder") as staging:
        (staging / "report.json").write_text("new")
    assert (kept / "report.json").read_text() == "new" and (kept / "notes.txt").is_file()
    with staged_folder(isolated / "a" / "b", "the report folder") as staging:
        assert not (isolated / "a").exists()  # parents are made only at the end
        (staging / "report.md").write_text("whole")
    assert (isolated / "a" / "b" / "report.md").read_text() == "whole" and leftovers(isolated) == []
