"""Faults a user can cause, through the console script: one line, a non-zero exit, nothing half-written, nothing
good overwritten. Output places, Lightning's own configuration errors, broken YAML, concurrent runs, Ctrl+C."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

import pytest
import torch
from conftest import CONFIGS, one_error_line, run_cli, start_console_script, subprocess_env

from mnist_lightning.checkpoints import find_last

LINEAR = ("--config", str(CONFIGS / "linear.yaml"))
TINY = (
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "5", "--trainer.limit_val_batches", "2",
    "--trainer.enable_progress_bar", "false",
)  # fmt: skip


def no_wandb_run_anywhere(root: Path) -> bool:
    return not [p for p in root.rglob("*run-*") if p.is_dir() and "wandb" in str(p)]


# --- output places -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("MNIST_LIGHTNING_DATA_DIR", str(mnist_dir))
        run_cli("fit", *LINEAR, *TINY, "--trainer.logger", "false")
    return next(folder.rglob("best-*.ckpt"))


@pytest.mark.parametrize(
    "option",
    ["--trainer.default_root_dir", "--checkpoint.dirpath", "--trainer.logger.init_args.save_dir"],
)
def test_fit_into_a_folder_under_a_file_is_refused_before_training(isolated: Path, option: str) -> None:
    (isolated / "taken").write_text("keep me\n")
    result = run_cli("fit", *LINEAR, *TINY, option, "taken/sub", check=False)
    line = one_error_line(result)
    assert "taken" in line and "is a file" in line
    assert (isolated / "taken").read_text() == "keep me\n"
    assert not list(isolated.rglob("*.ckpt")) and no_wandb_run_anywhere(isolated)


def test_fit_with_a_file_where_the_checkpoint_folder_goes(isolated: Path) -> None:
    (isolated / "ckpts").write_text("keep me\n")
    line = one_error_line(run_cli("fit", *LINEAR, *TINY, "--checkpoint.dirpath", "ckpts", check=False))
    assert "ckpts is a file, not a folder" in line and (isolated / "ckpts").read_text() == "keep me\n"


def test_fit_into_a_read_only_folder(isolated: Path, mounted) -> None:
    read_only = mounted("ro", "ro,size=1m")
    line = one_error_line(run_cli("fit", *LINEAR, *TINY, "--trainer.default_root_dir", str(read_only), check=False))
    assert str(read_only) in line and "read-only file system" in line
    assert no_wandb_run_anywhere(isolated)


def test_fit_onto_a_full_disk_is_one_line_and_leaves_only_whole_files(isolated: Path, mounted) -> None:
    small = mounted("small", "size=160k")
    result = run_cli(
        "fit", *LINEAR, *TINY, "--trainer.logger", "false", "--trainer.default_root_dir", str(small), check=False
    )
    line = one_error_line(result)
    assert "no space left on device" in line and str(small) in line
    assert not [p for p in small.rglob("*") if p.name.endswith((".partial", ".tmp"))]
    for checkpoint in small.rglob("*.ckpt"):  # whatever was written is whole
        torch.load(checkpoint, weights_only=True)


@pytest.mark.parametrize("where", ["a folder", "under a file"])
def test_predict_to_a_bad_output_is_refused_before_predicting(isolated: Path, trained: Path, where: str) -> None:
    (isolated / "out").mkdir()
    (isolated / "out" / "old.csv").write_text("keep\n")
    (isolated / "file").write_text("keep\n")
    output = str(isolated / "out") if where == "a folder" else str(isolated / "file" / "p.csv")
    result = run_cli("predict", "--ckpt_path", str(trained), "--predictions.output", output, check=False)
    line = one_error_line(result)
    assert "--predictions.output" in line or "file, not a folder" in line
    assert "Predictions for" not in result.stderr
    assert (isolated / "out" / "old.csv").read_text() == "keep\n" and (isolated / "file").read_text() == "keep\n"


@pytest.mark.parametrize("where", ["a folder", "under a file"])
def test_export_to_a_bad_output_is_refused(isolated: Path, trained: Path, where: str) -> None:
    (isolated / "dir").mkdir()
    (isolated / "file").write_text("keep\n")
    output = str(isolated / "dir") if where == "a folder" else str(isolated / "file" / "m.onnx")
    line = one_error_line(run_cli("export", "--ckpt_path", str(trained), "--output", output, check=False))
    assert ("is a folder" in line) or ("is a file, not a folder" in line)
    assert list((isolated / "dir").iterdir()) == [] and (isolated / "file").read_text() == "keep\n"


def test_predict_onto_a_full_disk_leaves_the_old_file(isolated: Path, trained: Path, mounted) -> None:
    small = mounted("small", "size=64k")  # 10,000 rows of probabilities need about 700 kB
    (small / "p.csv").write_text("old\n")
    result = run_cli("predict", "--ckpt_path", str(trained), "--predictions.output", str(small / "p.csv"), check=False)
    line = one_error_line(result)
    assert "p.csv" in line and "no space left on device" in line
    assert (small / "p.csv").read_text() == "old\n" and sorted(p.name for p in small.iterdir()) == ["p.csv"]


# --- Lightning's own configuration errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--trainer.accelerator", "cuda"], ["accelerator", "cpu"]),
        (["--trainer.accelerator", "tpu-ish"], ["accelerator", "cpu"]),
        (["--trainer.max_epochs", "-5"], ["max_epochs"]),
        (["--trainer.devices", "0"], ["devices"]),
    ],
    ids=["cuda-missing", "unknown-accelerator", "negative-epochs", "zero-devices"],
)
def test_lightning_configuration_errors_are_one_line(isolated: Path, args: list[str], words: list[str]) -> None:
    result = run_cli("fit", *LINEAR, *TINY, "--trainer.logger", "false", *args, check=False)
    line = one_error_line(result, code=result.returncode)
    assert result.returncode in (1, 2)
    assert all(word in line for word in words), line
    assert not list(isolated.rglob("*.ckpt"))


@pytest.mark.parametrize("port", ["-1", "65536", "http"])
def test_serve_refuses_a_port_out_of_range(isolated: Path, trained: Path, port: str) -> None:
    line = one_error_line(run_cli("serve", "--ckpt_path", str(trained), "--port", port, check=False), code=2)
    assert "port" in line and "0 to 65535" in line


# --- messages --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line_no"),
    [("trainer:\n  max_epochs: 1\n bad: [\n", 3), ("model:\n\tclass_path: x\n", 2), ("a: b: c\n", 1)],
)
def test_a_yaml_syntax_error_names_the_file_and_the_line(isolated: Path, text: str, line_no: int) -> None:
    (isolated / "broken.yaml").write_text(text)
    line = one_error_line(run_cli("fit", "--config", "broken.yaml", check=False))
    assert "broken.yaml" in line and f"line {line_no}" in line


# --- concurrency -----------------------------------------------------------------------------------------------------


def start_fit(folder: Path, *args: str, **popen: object) -> subprocess.Popen[str]:
    """``mnist-lightning fit`` of the linear preset as its own process in ``folder``."""
    return start_console_script("fit", *LINEAR, "--trainer.enable_progress_bar", "false", *args, cwd=folder, **popen)


def test_two_fits_at_once_without_a_logger_get_their_own_folders(isolated: Path) -> None:
    args = ("--trainer.logger", "false", *TINY[:-2])
    first, second = start_fit(isolated, *args), start_fit(isolated, *args)
    for process in (first, second):
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-2000:]
    runs = sorted((isolated / "runs" / "mnist-lightning").iterdir())
    assert len(runs) == 2
    for run in runs:
        assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
        assert (run / "media").is_dir()
    assert not (isolated / "runs" / "checkpoints").exists()


def lock_is_held(run_dir: Path) -> bool:
    lock = run_dir / ".lock"
    if not lock.is_file():
        return False
    with lock.open() as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def test_a_run_being_continued_elsewhere_is_refused_and_a_killed_one_frees_it(isolated: Path) -> None:
    run_cli("fit", *LINEAR, *TINY)  # a finished W&B run (offline) to continue
    (run_dir,) = (isolated / "runs" / "mnist-lightning").iterdir()

    def wandb_folders() -> list[Path]:
        return list((isolated / "runs" / "wandb").glob(f"offline-run-*-{run_dir.name}"))

    longer = ("--trainer.max_epochs", "50", "--trainer.limit_train_batches", "50", "--ckpt_path", "last")
    first = start_fit(isolated, *longer)
    try:
        deadline = time.monotonic() + 600  # generous: a busy machine starts processes slowly
        # wait for the lock and for the fit's own W&B folder: killed before W&B starts, it would leave none
        while (
            not (lock_is_held(run_dir) and len(wandb_folders()) == 2)
            and time.monotonic() < deadline
            and first.poll() is None
        ):
            time.sleep(0.1)
        assert lock_is_held(run_dir) and len(wandb_folders()) == 2, "the first fit never took the run"
        line = one_error_line(run_cli("fit", *LINEAR, *TINY, "--ckpt_path", "last", check=False))
        assert str(run_dir.relative_to(isolated)) in line and "another process" in line
    finally:
        first.kill()  # SIGKILL: no clean-up at all
        first.communicate()
    assert len(wandb_folders()) == 2  # the first run and its continuation, none for the refused one
    # wandb names an offline folder by the second it starts: a continuation started within the killed one's second
    # would write into the killed one's folder and leave this count at 2
    time.sleep(1.1)
    # the lock did not stick: the run goes on, for a few epochs past wherever the killed fit had saved it
    more = str(torch.load(find_last(run_dir), weights_only=True)["epoch"] + 3)
    run_cli(
        "fit", *LINEAR, *TINY, "--trainer.max_epochs", more, "--trainer.limit_val_batches", "1", "--ckpt_path", "last"
    )
    # a run cannot be continued to fewer epochs than it has: one line, before W&B resumes it once more
    line = one_error_line(
        run_cli("fit", *LINEAR, *TINY, "--trainer.max_epochs", "2", "--ckpt_path", "last", check=False)
    )
    done = re.search(r"has already trained (\d+) epochs, more than --trainer.max_epochs 2", line)
    assert done and 2 < int(done[1]) <= 51 and f"--trainer.max_epochs above {done[1]}" in line, line
    assert len(wandb_folders()) == 3


# --- Ctrl+C ----------------------------------------------------------------------------------------------------------


def drain(stream: IO[str], into: list[str]) -> threading.Thread:
    """Read ``stream`` to its end in the background, so that a full pipe never stops the process writing it."""
    reader = threading.Thread(target=lambda: into.extend(iter(stream.readline, "")), daemon=True)
    reader.start()
    return reader


def test_ctrl_c_saves_and_exits_130(isolated: Path) -> None:
    # PYTHONFAULTHANDLER: should the process ever hang after Ctrl+C, SIGABRT makes it print where each thread is
    process = start_fit(isolated, "--trainer.logger", "false", "--trainer.max_epochs", "50",
                        "--checkpoint.last_every_n_train_steps", "5",
                        env=subprocess_env() | {"PYTHONFAULTHANDLER": "1"})  # fmt: skip
    stdout: list[str] = []
    stderr: list[str] = []
    readers = [drain(process.stdout, stdout), drain(process.stderr, stderr)]  # type: ignore[arg-type]
    try:
        # training is under way once the first periodic last.ckpt is there (a generous wait: a busy machine is slow)
        deadline = time.monotonic() + 600
        while find_last(isolated / "runs") is None and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.poll() is None, f"the fit ended before Ctrl+C:\n{''.join(stderr)[-3000:]}"
        assert find_last(isolated / "runs") is not None, "no last.ckpt after 600 s"
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=600)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack to stderr
            process.wait(timeout=60)
            for reader in readers:
                reader.join(timeout=10)
            pytest.fail(f"still running 600 s after Ctrl+C; its stderr:\n{''.join(stderr)[-6000:]}")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    for reader in readers:
        reader.join(timeout=60)
    err = "".join(stderr)
    assert process.returncode == 130, err[-2000:]
    assert "stopped by Ctrl+C" in err and "--ckpt_path last" in err
    saved = torch.load(find_last(isolated / "runs"), weights_only=True)
    assert saved["global_step"] > 0
    assert "Traceback" not in err
    assert os.environ.get("MNIST_LIGHTNING_DEBUG") is None
