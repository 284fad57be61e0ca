"""W&B as its users expect, through the console script and the real wandb offline: evaluation beside the training
run, no empty predict runs, the learning rate, watch histograms at their frequency, artifacts staged with the run."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CONFIGS, run_cli
from wandb_offline import read_run

LINEAR = ("--config", str(CONFIGS / "linear.yaml"))
TINY = ("--trainer.max_epochs", "1", "--trainer.limit_train_batches", "6", "--trainer.limit_val_batches", "2")


def offline_folders(root: Path) -> list[Path]:
    return sorted((root / "runs" / "wandb").glob("offline-run-*"), key=lambda p: p.stat().st_mtime)


def test_test_and_validate_log_next_to_the_run_that_trained_the_checkpoint(isolated: Path) -> None:
    run_cli("fit", *LINEAR, *TINY)
    (run_dir,) = (isolated / "runs" / "mnist-lightning").iterdir()
    config_before = (run_dir / "config.yaml").read_bytes()
    best = next(run_dir.glob("checkpoints/best-*.ckpt"))

    tested = run_cli("test", "--ckpt_path", str(best))
    validated = run_cli("validate", "--ckpt_path", str(best))
    folders = offline_folders(isolated)
    runs = [read_run(f) for f in folders]
    # trained, tested, validated: three W&B runs, the evaluations linked to the training run
    assert runs[0].run_id == run_dir.name and len({run.run_id for run in runs}) == 3
    assert runs[1].config["training_run_id"] == runs[2].config["training_run_id"] == run_dir.name
    assert runs[1].metric("test/acc") and runs[2].metric("val/acc")
    assert [p.name for p in (isolated / "runs" / "mnist-lightning").iterdir()] == [run_dir.name]
    assert (run_dir / "config.yaml").read_bytes() == config_before  # the training config is not overwritten
    # the sync hint names the evaluation's run and the training run it points to
    assert all(str(f.relative_to(isolated)) in tested.stderr for f in folders[:2])
    assert all(str(f.relative_to(isolated)) in validated.stderr for f in (folders[0], folders[2]))
    assert "dirpath has changed" not in tested.stderr + validated.stderr


def test_predict_starts_no_wandb_run(isolated: Path) -> None:
    run_cli("fit", *LINEAR, *TINY)
    before = offline_folders(isolated)
    best = next((isolated / "runs").rglob("best-*.ckpt"))
    run_cli("predict", "--ckpt_path", str(best))
    assert offline_folders(isolated) == before


def test_a_schedule_logs_the_learning_rate(isolated: Path) -> None:
    run_cli("fit", *LINEAR, *TINY, "--model.scheduler", "onecycle", "--trainer.log_every_n_steps", "1")
    (run,) = [read_run(f) for f in offline_folders(isolated)]
    rates = run.metric("train/lr")
    assert len(rates) >= 5 and max(rates) > rates[0]  # one-cycle warms up from a fraction of the peak


def test_watch_histograms_arrive_every_watch_log_freq_steps(isolated: Path) -> None:
    run_cli(
        "fit", *LINEAR, *TINY, "--trainer.logger.init_args.watch", "gradients",
        "--trainer.logger.init_args.watch_log_freq", "2",
    )  # fmt: skip
    (run,) = [read_run(f) for f in offline_folders(isolated)]
    steps = [row.get("trainer/global_step") for row in run.history if any(k.startswith("gradients/") for k in row)]
    assert len(steps) >= 3  # steps 2, 4, 6 of one 6-step epoch, not once per epoch


def test_offline_model_artifacts_are_staged_under_runs(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_DATA_DIR")
    run_cli("fit", *LINEAR, *TINY)
    staged = [p for p in (isolated / "runs" / "wandb" / "data").rglob("*") if p.is_file()]
    assert staged, "the model artifacts were staged elsewhere"
