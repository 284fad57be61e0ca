"""``mnist-lightning export``'s output path, every class of it: one line that names the export file, exit 1, nothing
written, and advice that works when followed exactly as printed (it is run here, split with shlex as a shell would).

The checkpoint is the real MLP of ``tests/fixtures/checkpoints_0_1``; successful exports are TorchScript where the
format is not the point (the quickest to write).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import one_error_line, run_cli

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "checkpoints_0_1" / "mlp.ckpt"


@pytest.fixture
def checkpoint(isolated: Path) -> Path:
    """A copy of the fixture checkpoint in the test's folder (exports beside it land there)."""
    copy = isolated / "mlp.ckpt"
    shutil.copyfile(FIXTURE, copy)
    return copy


def export(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("export", *args, check=False)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single error line of a refused export: exit 1, no traceback, no 'Exported'."""
    assert "Exported" not in result.stderr, result.stderr[-3000:]
    return one_error_line(result)


def suggested(line: str, option: str = "--output") -> list[str]:
    """The option and value the line suggests after 'such as' or 'use', read as a shell reads them."""
    match = re.search(rf"(?:such as|use) ({option} .*)$", line)
    assert match, line
    lexer = shlex.shlex(match.group(1), posix=True)
    lexer.whitespace_split = True
    return [lexer.get_token(), lexer.get_token().rstrip(",;")]  # type: ignore[union-attr]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".wandb" not in p.parts)


# -- a folder where a file was meant -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["exports", "my exports", "it's here"])
def test_an_existing_folder_gets_a_message_about_export_files(isolated: Path, checkpoint: Path, name: str) -> None:
    folder = isolated / name
    folder.mkdir()
    line = one_line(export("--ckpt_path", str(checkpoint), "--output", str(folder)))
    assert f"the export file --output {shlex.quote(str(folder))} is a folder; give a file name such as" in line
    assert files_under(folder) == []
    fix = suggested(line)
    assert fix == ["--output", str(folder / "mlp.onnx")]
    assert export("--ckpt_path", str(checkpoint), *fix, "--format", "torchscript").returncode == 1  # onnx's suffix
    if "'" in name:  # the hardest to quote: follow this one's advice exactly as printed (ONNX takes a while)
        done = export("--ckpt_path", str(checkpoint), *fix)
        assert done.returncode == 0, done.stderr[-2000:]
        assert files_under(folder) == ["mlp.onnx"]


@pytest.mark.parametrize("exists", [True, False], ids=["existing", "missing"])
def test_a_name_ending_in_a_slash_is_a_folder(isolated: Path, checkpoint: Path, exists: bool) -> None:
    if exists:
        (isolated / "out").mkdir()
    line = one_line(export("--ckpt_path", str(checkpoint), "--output", "out/", "--format", "torchscript"))
    assert "the export file --output out/ " in line and "folder" in line, line
    assert suggested(line) == ["--output", "out/mlp.pt"]
    assert (isolated / "out").exists() == exists  # nothing made
    done = export("--ckpt_path", str(checkpoint), *suggested(line), "--format", "torchscript")
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.jit.load(str(isolated / "out" / "mlp.pt")) is not None


# -- the suffix and the format ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "output", "fix", "other"),
    [
        ("onnx", "model.pt", "model.onnx", "torchscript"),
        ("torchscript", "model.onnx", "model.pt", "onnx"),
        ("pt2", "model.pt", "model.pt2", "torchscript"),
        ("torchscript", "model.ckpt", "model.pt", None),
        ("onnx", "my model", "my model.onnx", None),
    ],
)
def test_a_suffix_that_is_not_the_formats_is_refused(
    isolated: Path, checkpoint: Path, fmt: str, output: str, fix: str, other: str | None
) -> None:
    line = one_line(export("--ckpt_path", str(checkpoint), "--format", fmt, "--output", output))
    assert f"the export file --output {shlex.quote(output)} does not end in" in line, line
    assert suggested(line) == ["--output", fix]
    if other:
        assert f", or --format {other}" in line
    assert files_under(isolated) == ["mlp.ckpt"]


@pytest.mark.parametrize("output", ["model.bin", "model", "my model.txt"])
def test_a_suffix_that_names_no_format_is_refused_and_the_advice_works(
    isolated: Path, checkpoint: Path, output: str
) -> None:
    line = one_line(export("--ckpt_path", str(checkpoint), "--output", output))
    assert "does not say which format to write: end it in .onnx (onnx), .pt (torchscript), .pt2 (pt2)" in line
    assert files_under(isolated) == ["mlp.ckpt"]
    fix = suggested(line)
    assert Path(fix[1]).suffix == ".onnx"
    if output == "model.bin":  # one run of the advice (ONNX takes longest to write)
        done = export("--ckpt_path", str(checkpoint), *fix)
        assert done.returncode == 0 and (isolated / "model.onnx").is_file(), done.stderr[-2000:]


def test_the_format_follows_the_suffix(isolated: Path, checkpoint: Path) -> None:
    done = export("--ckpt_path", str(checkpoint), "--output", "model.PT")
    assert done.returncode == 0 and "as torchscript to model.PT" in done.stderr, done.stderr[-2000:]
    assert torch.jit.load(str(isolated / "model.PT")) is not None


# -- folders that are missing, a file, or not writable ----------------------------------------------------------------


def test_missing_folders_are_made(isolated: Path, checkpoint: Path) -> None:
    done = export("--ckpt_path", str(checkpoint), "--output", "new folder/sub/m.pt")
    assert done.returncode == 0, done.stderr[-2000:]
    assert files_under(isolated / "new folder") == ["sub", "sub/m.pt"]


def test_a_file_where_a_folder_is_needed_is_refused(isolated: Path, checkpoint: Path) -> None:
    (isolated / "notes").write_text("keep\n")
    line = one_line(export("--ckpt_path", str(checkpoint), "--output", "notes/sub/m.pt"))
    assert "cannot be made: notes is a file, not a folder" in line, line
    assert (isolated / "notes").read_text() == "keep\n"


def test_a_read_only_folder_is_refused_before_the_model_loads(
    isolated: Path, checkpoint: Path, mounted: Callable[[str, str], Path]
) -> None:
    read_only = mounted("ro", "ro,size=64k")
    for output in (read_only / "m.pt", read_only / "sub" / "m.pt"):
        line = one_line(export("--ckpt_path", str(checkpoint), "--output", str(output)))
        assert f"folder {read_only} is not writable (read-only file system)" in line, line
        assert "choose another --output" in line
    assert files_under(read_only) == []


def test_the_default_beside_a_read_only_checkpoint_says_to_choose_output(
    isolated: Path, mounted: Callable[[str, str], Path]
) -> None:
    folder = mounted("ckpts", "size=2m")
    shutil.copyfile(FIXTURE, folder / "mlp.ckpt")
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    line = one_line(export("--ckpt_path", str(folder / "mlp.ckpt")))
    assert f"the export file {folder / 'mlp.onnx'} (beside the checkpoint; choose another with --output)" in line
    assert "read-only file system" in line
    done = export("--ckpt_path", str(folder / "mlp.ckpt"), *suggested(line))  # --output mlp.onnx, here
    assert done.returncode == 0 and (isolated / "mlp.onnx").is_file(), done.stderr[-2000:]


# -- what is already there ------------------------------------------------------------------------------------------


def test_an_existing_file_is_replaced_by_a_complete_one(isolated: Path, checkpoint: Path) -> None:
    (isolated / "m.pt").write_text("an older export\n")
    done = export("--ckpt_path", str(checkpoint), "--output", "m.pt")
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.jit.load(str(isolated / "m.pt")) is not None
    assert files_under(isolated) == ["m.pt", "mlp.ckpt"]  # no temporary file left


def test_a_full_disk_keeps_the_old_file_and_leaves_nothing(
    isolated: Path, checkpoint: Path, mounted: Callable[[str, str], Path]
) -> None:
    small = mounted("small", "size=16k")  # the MLP's TorchScript file is about 120 kB
    (small / "m.pt").write_text("the old export\n")
    for output in (small / "m.pt", small / "new" / "deeper" / "m.pt", small / "m.pt2"):
        line = one_line(export("--ckpt_path", str(checkpoint), "--output", str(output)))
        assert "no space left on device" in line, line
    assert (small / "m.pt").read_text() == "the old export\n"
    assert files_under(small) == ["m.pt"]  # no temporary file, and the folders the export made are gone


def test_something_that_is_not_a_regular_file_is_refused(isolated: Path, checkpoint: Path) -> None:
    os.mkfifo(isolated / "pipe.onnx")
    line = one_line(export("--ckpt_path", str(checkpoint), "--output", "pipe.onnx"))
    assert "the export file --output pipe.onnx is not a regular file" in line, line
    assert suggested(line) == ["--output", "mlp.onnx"]


def test_the_checkpoint_itself_is_refused(isolated: Path) -> None:
    shutil.copyfile(FIXTURE, isolated / "model.pt")
    line = one_line(export("--ckpt_path", "model.pt", "--output", "./model.pt"))
    assert "is the checkpoint itself" in line, line
    assert (isolated / "model.pt").read_bytes() == FIXTURE.read_bytes()


def test_an_empty_output_is_refused(isolated: Path, checkpoint: Path) -> None:
    line = one_line(export("--ckpt_path", str(checkpoint), "--output", ""))
    assert "the export file --output '' is empty" in line and suggested(line) == ["--output", "mlp.onnx"], line
    assert files_under(isolated) == ["mlp.ckpt"]


@pytest.mark.parametrize("link", ["loop", "broken"])
def test_a_link_to_nothing_in_the_path_is_named_as_such(isolated: Path, checkpoint: Path, link: str) -> None:
    (isolated / "out").symlink_to("out" if link == "loop" else "nowhere")
    line = one_line(export("--ckpt_path", str(checkpoint), "--output", "out/m.pt"))
    assert "cannot be made: out is a link to nothing (broken, or a loop)" in line, line
    assert (isolated / "out").is_symlink() and not (isolated / "nowhere").exists()
