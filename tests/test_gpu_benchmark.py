"""benchmarks/gpu.py: its tiny CPU mode end to end, its time caps, and the speedrun_995 preset."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from background import JOBS, benchmark_files, gpu_tiny_job
from conftest import CONFIGS, REPO

from mnist_lightning.callbacks import TrainTimer
from mnist_lightning.cli import MNISTLightningCLI
from mnist_lightning.data import RAW_FILES, raw_dir
from mnist_lightning.models import SpeedrunCNN

BENCHMARKS = REPO / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the scripts import their parts as siblings, as `python benchmarks/gpu.py` does
import gpu_budget  # noqa: E402
import gpu_cuda  # noqa: E402
import gpu_frontier  # noqa: E402
import gpu_recipes  # noqa: E402
import gpu_report  # noqa: E402
import gpu_staging  # noqa: E402
import results_views  # noqa: E402


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def tiny_run(mnist_dir: Path) -> tuple[Path, subprocess.CompletedProcess[str], tuple[float, dict[Path, int]]]:
    """One ``gpu.py --tiny`` run without ``--out`` for the tests below: the folder it wrote its tables into, and
    the committed results table's modification time and every benchmarks/ file's before it. It runs in the
    background from the session's start (tests/background.py), from an empty folder."""
    job = JOBS.wait("gpu_tiny", lambda root: gpu_tiny_job(root, mnist_dir))
    result = job.result
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (out,) = re.findall(r"^\[gpu\] tables in (.+)$", result.stdout, flags=re.M)
    assert Path(out).parent == job.folder / "tmp" and Path(out).name.startswith("mnist-gpu-tiny-")
    return Path(out), result, (job.before["results_mtime"], job.before["benchmark_files"])


def test_tiny_mode_writes_every_table_with_hardware_versions_and_date(tiny_run) -> None:
    out, result, (committed_mtime, files_before) = tiny_run
    report = json.loads((out / "gpu.json").read_text())
    table = (out / "gpu.md").read_text()
    env = report["environment"]
    assert report["tiny"] is True and "TINY MODE" in table.splitlines()[0]
    assert env["device"].startswith("CPU") and env["gpus"] == 0
    assert env["torch"] == torch.__version__ and env["lightning"] == L.__version__
    today = dt.datetime.now(dt.timezone.utc).date()
    assert abs((dt.date.fromisoformat(env["date"][:10]) - today).days) <= 1
    assert f"hardware: {env['device']}" in table and f"torch {torch.__version__}" in table
    assert f"lightning {L.__version__}" in table and env["date"] in table

    # where the time went: every part ran, inside what it was allowed
    parts = {p["name"]: p for p in report["parts"]}
    assert list(parts) == ["tests", "speedrun", "speedrun_995", "speed", "frontier", "recipes"]
    for part in parts.values():
        assert part["status"] == "done" and 0 < part["spent_s"] <= part["allowance_s"] <= part["cap_s"]
        assert f"| {part['name']} | {part['cap_s']:.0f} |" in table
    assert "where the time went" in result.stdout
    # CI never touches the committed tables, nor anything else in benchmarks/
    assert (REPO / "benchmarks" / "results.json").stat().st_mtime == committed_mtime
    assert benchmark_files() == files_before


def test_tiny_speedruns_count_their_seeds_and_report_mean_and_std(tiny_run) -> None:
    out, _, _ = tiny_run
    report = json.loads((out / "gpu.json").read_text())
    table = (out / "gpu.md").read_text()
    assert [s["preset"] for s in report["speedruns"]] == ["speedrun", "speedrun_995"]
    for run in report["speedruns"]:
        assert run["seeds"] == len(run["runs"]) == 2 and [r["seed"] for r in run["runs"]] == [0, 1]
        assert run["note"] == ""  # both seeds fitted in the cap
        for seed in run["runs"]:
            assert 0 <= seed["test_acc"] <= 1 and 0 < seed["train_s"] < seed["fit_call_s"] and seed["steps"] == 3
        accs = [r["test_acc"] for r in run["runs"]]
        assert run["test_acc_mean"] == pytest.approx(sum(accs) / 2)
        assert run["test_acc_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2**0.5)
        assert run["train_s_std"] >= 0 and run["warmup_s"] > 0
        assert run["reached"] is False  # three batches of a tiny network reach no target
        assert f"| `{run['preset']}` | 2 | 3 |" in table
        assert re.search(rf"^\| `{run['preset']}` \|.*\| n/a \(tiny\) \|$", table, flags=re.M)  # no verdict
        assert "--model.init_args.channels=[4,8]" in run["extra_args"]  # the tiny model, not the preset's


def test_tiny_speed_rows_come_from_speed_py(tiny_run) -> None:
    out, _, _ = tiny_run
    report = json.loads((out / "gpu.json").read_text())
    table = (out / "gpu.md").read_text()
    rows = {(r["variant"], r["name"]): r for r in report["speed"]}
    assert set(rows) == {(v, "mlp_128_64") for v in ("32-true", "bf16-mixed", "32-true+compile")}
    for variant in ("32-true", "bf16-mixed"):
        row = rows[(variant, "mlp_128_64")]
        assert not row.get("skipped") and row["params"] == 109_386
        assert row["fit_epoch_s"] > 0 and row["plain_epoch_s"] > 0 and row["bare_epoch_s"] > 0
        assert row["ratio"] == pytest.approx(row["fit_epoch_s"] / row["plain_epoch_s"])
        assert f"| {variant} | mlp_128_64 | 109,386 | 64 |" in table
    assert "tiny mode" in rows[("32-true+compile", "mlp_128_64")]["skipped"]
    assert "**The MLP's ratio.**" in table and "through bare Lightning" in table
    # a few batches on a CPU support no conclusion: the per-step figures, without where the time goes or advice
    assert "Lightning's loop adds" not in table and gpu_report.GAP_ADVICE not in table


def test_tiny_recipes_merge_into_a_copy_of_the_results_table(tiny_run) -> None:
    out, _, _ = tiny_run
    report = json.loads((out / "gpu.json").read_text())
    recipes = report["recipes"]
    assert set(recipes["presets"]) == {"convnet", "mlp_strong"}
    for preset, entry in recipes["presets"].items():
        assert entry["status"] == "done" and entry["projected_s"] > 0 and entry["step_ms"] > 0
        row = recipes["rows"][preset]
        assert 0 <= row["test_acc"] <= 100 and row["epochs"] == 1 and row["hardware"].startswith("CPU")
    committed = json.loads((REPO / "benchmarks" / "results.json").read_text())
    merged = json.loads((out / "results.json").read_text())
    frontier = {"resnet_frontier", report["frontier"]["committee"]["key"]}
    assert set(merged) == set(committed) | frontier
    # convnet's committed row was capped: the tiny row replaces it (marked); mlp_strong's full row is kept
    assert merged["convnet"] == recipes["rows"]["convnet"] and "tiny" in merged["convnet"]["load"]
    assert merged["mlp_strong"] == committed["mlp_strong"]
    assert any("`mlp_strong`: kept" in note for note in recipes["merge_notes"])
    results_md = (out / "results.md").read_text()
    assert "gpu.py --tiny" in results_md and "| `convnet` |" in results_md


def test_tiny_frontier_runs_seeds_then_a_committee_whose_views_are_chosen_on_validation(tiny_run) -> None:
    out, _, _ = tiny_run
    report = json.loads((out / "gpu.json").read_text())
    frontier, table = report["frontier"], (out / "gpu.md").read_text()
    assert frontier["preset"] == "resnet_frontier" and frontier["probe"]["projected_s"] > 0
    assert [r["seed"] for r in frontier["runs"]] == [0, 1] and all(r["epochs"] == 1 for r in frontier["runs"])
    assert "--model.init_args.widths=[8,8,16,16]" in frontier["extra_args"]  # the tiny network, not the preset's
    committee = frontier["committee"]
    scores = {int(k): v for k, v in committee["val_by_views"].items()}
    assert sorted(scores) == list(range(1, 10)) and committee["val_images"] == 200
    assert committee["views"] == results_views.best_views(scores) and committee["views_chosen_on"] == "validation"
    assert committee["ensemble"] == ["resnet_frontier/seed0.ckpt", "resnet_frontier/seed1.ckpt"]
    section = table.split("## The frontier", 1)[1].split("\n## ", 1)[0]
    assert section.count("n/a (tiny)") == 2 and ": yes)" not in section and ": no)" not in section
    assert gpu_frontier.ESTIMATE not in table  # the expected minutes per seed are a real page's, not a tiny one's
    merged = json.loads((out / "results.json").read_text())
    assert sorted(merged["resnet_frontier"]["runs"]) == ["0", "1"]
    assert merged[committee["key"]]["views"] == committee["views"]
    assert "chosen on validation" in (out / "results.md").read_text()


def test_tiny_mode_lists_the_cuda_tests_and_says_why_ddp_did_not_run(tiny_run) -> None:
    out, _, _ = tiny_run
    tests = json.loads((out / "gpu.json").read_text())["tests"]
    cuda_test = "tests/test_speed.py::test_training_batches_arrive_on_the_gpu_without_a_copy"
    assert cuda_test in tests["cuda_tests"]
    assert tests["pytest_rc"] == 0 and tests["pytest_counts"]["failed"] == 0
    # no CUDA here: pytest ran and skipped them
    assert tests["pytest_counts"]["skipped"] == len(tests["cuda_tests"]) >= 1
    assert "not run" in tests["ddp"]["note"]
    assert "DDP: 0 GPU(s): DDP with NCCL needs at least 2, not run." in (out / "gpu.md").read_text()


def test_cuda_only_tests_are_the_ones_skipped_without_cuda(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        "import pytest, torch\n"
        "@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')\n"
        "def test_on_gpu(): pass\n"
        "@pytest.mark.cuda\n"
        "def test_marked(): pass\n"
        "@pytest.mark.parametrize('device', ['cuda', 'cpu'])\n"
        "def test_any_device(device): pass\n"
        "@pytest.mark.skipif(sys.platform == 'win32', reason='posix')\n"
        "def test_posix(): pass\n"
    )
    found = gpu_cuda.cuda_only_tests(tmp_path / "tests")
    assert found == ["tests/test_x.py::test_on_gpu", "tests/test_x.py::test_marked"]


def test_a_part_gets_its_cap_or_what_is_left() -> None:
    clock = FakeClock()
    budget = gpu_budget.Budget(100, clock)
    first = budget.part("first", 30)
    assert first.allowance_s == 30 and first.left() == 30
    clock.now += 80
    assert first.left() == -50 and not first.fits(1)
    second = budget.part("second", 30)
    assert second.allowance_s == 20  # only 20 s of the budget are left
    clock.now += 25
    assert budget.part("third", 30).allowance_s == 0  # the budget is spent
    assert budget.part("rest").allowance_s == 0 and gpu_budget.Budget(50, clock).part("rest").allowance_s == 50


def test_seeds_stop_before_one_that_would_pass_the_cap() -> None:
    clock = FakeClock()
    part = gpu_budget.Budget(1000, clock).part("speedrun", 10)

    def one(seed: int) -> int:
        clock.now += 3  # every run takes 3 s
        return seed

    done, note = gpu_budget.run_while_time_allows(part, list(range(30)), one)
    # after 3 runs (9 s) 1 s is left, less than the slowest run times the margin
    assert done == [0, 1, 2] and note == "stopped after 3 of 30: the next would pass the 10 s cap"
    everything = gpu_budget.Budget(1000, clock).part("speedrun", 100)
    assert gpu_budget.run_while_time_allows(everything, [0, 1], one) == ([0, 1], "")


def test_a_run_that_overruns_is_stopped_at_the_cap() -> None:
    part = gpu_budget.Budget(1000).part("speedrun", 0.5)

    def spin(seed: int) -> int:
        end = time.monotonic() + 30
        while time.monotonic() < end:  # Python code, like a training loop: the alarm interrupts it
            pass
        return seed

    done, note = gpu_budget.run_while_time_allows(part, [0, 1], spin)  # each seed would spin for 30 s uncapped
    assert done == [] and "reached the cap" in note
    with pytest.raises(gpu_budget.OverCap), gpu_budget.hard_cap(0):
        pass


def test_a_failing_part_is_recorded_and_the_script_goes_on() -> None:
    budget = gpu_budget.Budget(1000)
    with budget.part("broken", 10) as part:
        raise ValueError("no such preset")
    assert part.status == "failed: ValueError: no such preset" and "Traceback" in part.notes[0]
    with budget.part("slow", 10) as part:
        raise gpu_budget.OverCap("10 s passed")
    assert part.status == "stopped at its cap: 10 s passed" and part.spent_s is not None
    with pytest.raises(KeyboardInterrupt), budget.part("interrupted", 10):
        raise KeyboardInterrupt


def test_a_capped_row_never_replaces_a_full_one() -> None:
    def row(epochs: int, recipe: int, hardware: str) -> dict:
        return {"epochs": epochs, "recipe_epochs": recipe, "hardware": hardware}

    committed = {"convnet": row(1, 10, "CPU"), "cnn_strong": row(15, 15, "CPU"), "vit": row(1, 10, "CPU")}
    new = {"convnet": row(10, 10, "H200"), "cnn_strong": row(3, 15, "H200"), "mlp_strong": row(15, 15, "H200")}
    rows, notes = gpu_recipes.merge_rows(committed, new)
    assert rows["convnet"]["hardware"] == "H200" and rows["mlp_strong"]["hardware"] == "H200"
    assert rows["cnn_strong"]["hardware"] == "CPU" and rows["vit"]["hardware"] == "CPU"
    assert notes == ["`cnn_strong`: kept the committed 15-epoch row (CPU)"]


def test_capped_rows_are_remeasured_first_then_the_cheapest() -> None:
    committed = {
        "convnet": {"epochs": 1, "recipe_epochs": 10},
        "vit": {"epochs": 1, "recipe_epochs": 10},
        "cnn_strong": {"epochs": 15, "recipe_epochs": 15},
    }
    projected = {"cnn_strong": 20.0, "vit": 90.0, "convnet": 40.0, "vit_encoder": 60.0}
    assert gpu_recipes.recipe_order(projected, committed) == ["convnet", "vit_encoder", "vit", "cnn_strong"]


def test_the_gzipped_mnist_is_decompressed_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gz = REPO.parent / "shared" / "mnist-gz"
    if not (raw_dir(gz) / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"no gzipped MNIST in {gz}")  # only the development machine has this copy
    monkeypatch.setattr(gpu_staging.tempfile, "tempdir", str(tmp_path))
    found = gpu_staging.find_mnist(gz)
    assert found == tmp_path / "mnist-lightning-gpu"
    assert all((raw_dir(found) / name).stat().st_size == RAW_FILES[name][2] for name in RAW_FILES)


def empty_report() -> dict:
    """A report of a run whose every part was skipped."""
    env = {"date": "2026-12-06", "device": "H100", "torch": "2", "cuda": "12", "lightning": "2", "python": "3"}
    env["gpus"] = 1
    return {"environment": env, "tiny": False, "command": "python benchmarks/gpu.py", "budget_s": 540, "parts": [],
            "speedruns": [], "speed": [], "speed_epochs": 3, "speed_batches": 300, "frontier": {},
            "recipes": {}, "preset_cap_s": 150, "tests": {}}  # fmt: skip


def test_the_committed_gpu_page_holds_the_device_command() -> None:
    page = (REPO / "benchmarks" / "gpu.md").read_text()
    assert gpu_staging.DEVICE_COMMAND in page and gpu_staging.CARRY in page and "--stage" in page
    # the frontier's expected time per seed, written before a GPU ran it: on this page and on every page gpu.py writes
    assert gpu_frontier.ESTIMATE in page and gpu_frontier.ESTIMATE in gpu_report.markdown(empty_report())


def test_speedrun_995_preset_loads_and_trains_a_few_batches(isolated: Path) -> None:
    limits = ["--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2", "--trainer.max_epochs=1"]
    cli = MNISTLightningCLI(
        args=["fit", "--config", str(CONFIGS / "speedrun_995.yaml"), "--trainer.logger=false", *limits]
    )
    model, dm = cli.model, cli.datamodule
    assert isinstance(model, SpeedrunCNN) and tuple(model.hparams.channels) == (64, 128)
    assert model.hparams.scheduler == "onecycle" and model.hparams.label_smoothing == 0.1
    assert dm.augment and dm.batch_size == 512 and dm.on_device == "auto"
    timer = next(c for c in cli.trainer.callbacks if isinstance(c, TrainTimer))
    assert cli.trainer.global_step == 3 and timer.train_seconds > 0
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert not (isolated / "runs" / "media").exists() and not list(isolated.rglob("*.png"))  # no figures


def test_the_results_tables_are_written_into_an_out_folder_not_made_yet(tmp_path: Path) -> None:
    # every part before the frontier or the recipes skipped: nothing has made --out yet
    committed = {"linear": json.loads((REPO / "benchmarks" / "results.json").read_text())["linear"]}
    frontier = {**committed["linear"], "preset": "resnet_frontier", "recipe_epochs": 11, "epochs": 11}
    gpu_recipes.write_results({"rows": {}}, committed, tmp_path / "out", {"resnet_frontier": frontier})
    assert set(json.loads((tmp_path / "out" / "results.json").read_text())) == {"linear", "resnet_frontier"}
