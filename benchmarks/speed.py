"""Speed of mnist-lightning's ``fit`` next to a plain PyTorch loop over the same tensors, in one process.

For the MLP (784-128-64-10), the ``convnet`` CNN and the ``vit`` preset: seconds per training epoch and images
per second through the project's Trainer (built by the CLI from the preset, logger off), the same for a
hand-written loop with the same model, initial weights, batch size and optimizer (the floor), their ratio, the
same network trained by a bare Lightning Trainer (what Lightning itself costs), and evaluation images per second
(``trainer.test`` next to a plain no-grad loop) at the training batch, the old evaluation default, and at the
data module's evaluation batch (``eval_batch_size="auto"``); then the speedrun preset's training time and test
accuracy over several seeds, and a torchvision DataLoader with per-image ToTensor + Normalize for comparison.
Writes ``speed.md`` and ``speed.json`` into ``benchmarks/`` (``--out`` for another folder); a tiny run writes into a
new temporary folder unless ``--out`` names one. The reference loops are in speed_reference.py, the tables in
speed_report.py.

    python benchmarks/speed.py            # the full benchmark (README table)
    python benchmarks/speed.py --tiny     # a few batches of everything: checks that the script still works
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import lightning as L
import torch
from speed_reference import PlainEpochAfterEach, PlainLoop, autocast, bare_training, plain_inference, training_input
from speed_report import environment, markdown
from torch import nn

from mnist_lightning.callbacks import TrainTimer, synchronize
from mnist_lightning.cli import MNISTLightningCLI, config_dir
from mnist_lightning.data import MEAN, STD, MNISTDataModule
from mnist_lightning.data.settings import resolve_eval_batch_size
from mnist_lightning.models.base import MNISTClassifier

HERE = Path(__file__).resolve().parent


# (name, preset file in configs/)
MODELS: list[tuple[str, str]] = [
    ("mlp_128_64", "mlp_128_64.yaml"),
    ("convnet", "convnet.yaml"),
    ("vit", "vit.yaml"),
    ("small_cnn", "small_cnn.yaml"),
    ("cnn_strong", "cnn_strong.yaml"),
    ("vit_strong", "vit_strong.yaml"),
]


@dataclass
class ModelResult:
    """One model's figures: fit, the plain loop and bare Lightning per training epoch, and evaluation rates."""

    name: str
    source: str
    params: int = 0
    batch_size: int = 0
    optimizer: str = ""
    train_images: int = 0
    fit_epoch_s: float = 0.0
    plain_epoch_s: float = 0.0
    fit_images_per_s: float = 0.0
    plain_images_per_s: float = 0.0
    ratio: float = 0.0
    bare_epoch_s: float = 0.0
    bare_ratio: float = 0.0
    epoch_seconds: dict[str, list[float]] = field(default_factory=dict)
    # evaluation: `trainer.test` and a plain no-grad loop over the test images, at the data module's evaluation batch
    # (`eval_batch_size`, its default) and at the training batch (the evaluation batch before "auto")
    eval_batch_size: int = 0
    fit_inference_images_per_s: float = 0.0
    plain_inference_images_per_s: float = 0.0
    fit_inference_train_batch_images_per_s: float = 0.0
    plain_inference_train_batch_images_per_s: float = 0.0
    skipped: str = ""


@dataclass
class SpeedrunResult:
    """The speedrun preset's training seconds and test accuracy, one entry per seed."""

    seeds: list[int] = field(default_factory=list)
    train_s: list[float] = field(default_factory=list)
    fit_call_s: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    steps: int = 0


def build(args: list[str], workdir: Path) -> MNISTLightningCLI:
    """Model, data module and Trainer exactly as ``mnist-lightning fit`` would build them (logger off)."""
    common = [f"--trainer.default_root_dir={workdir}", "--trainer.logger=false", "--trainer.enable_model_summary=false"]
    with mock.patch.object(sys, "argv", sys.argv[:1]):  # the benchmark's own options are not the CLI's
        return MNISTLightningCLI(args=[*args, *common], run=False)


class EvalTimer(L.Callback):
    """Images per second of each test loop, waiting for the device; ``rates`` has one per ``trainer.test``."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(trainer.strategy.root_device)
        self.images = 0
        self.start = time.perf_counter()

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self.images += len(batch[1])

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(trainer.strategy.root_device)
        self.rates.append(self.images / (time.perf_counter() - self.start))


def steady_epoch(seconds: list[float]) -> float:
    """The fastest epoch after the first (which pays for warm-up): on a shared machine the least disturbed one."""
    return min(seconds[1:] or seconds)


def bench_model(name: str, preset: str, opts: argparse.Namespace) -> ModelResult:
    """``fit`` of ``configs/<preset>``, bare Lightning and the plain loop from the same initial weights, epochs
    interleaved; then evaluation (``--precision`` and ``--compile`` apply to all three)."""
    path = config_dir() / preset
    if not path.is_file():
        note = f"no configs/{preset}"
        print(f"{name}: skipped: {note}", flush=True)
        return ModelResult(name=name, source="", skipped=note)
    args, source = [f"--config={path}"], f"configs/{preset}"
    # --precision and --compile apply to fit, bare Lightning and the plain loop alike
    args += [f"--trainer.precision={opts.precision}"] if getattr(opts, "precision", None) else []
    args += ["--model.init_args.compile=true"] if getattr(opts, "compile", False) else []
    channels_last = getattr(opts, "channels_last", None)
    args += [f"--model.init_args.channels_last={channels_last}"] if channels_last is not None else []
    args += [f"--data.eval_batch_size={opts.eval_batch}"] if getattr(opts, "eval_batch", None) else []
    limits = [f"--trainer.limit_train_batches={opts.train_batches}"] if opts.train_batches else []
    limits += ["--trainer.limit_val_batches=2", "--trainer.limit_test_batches=3"] if opts.tiny else []
    with tempfile.TemporaryDirectory() as workdir:
        L.seed_everything(0, verbose=False)
        cli = build(
            [*args, f"--trainer.max_epochs={opts.epochs}", "--trainer.num_sanity_val_steps=0", *limits], Path(workdir)
        )
        model, dm, trainer = cli.model, cli.datamodule, cli.trainer
        device = trainer.strategy.root_device
        plain_model, bare_source = copy.deepcopy(model).to(device), copy.deepcopy(model)  # the same initial weights
        plain_model.configure_model()  # compile (if asked) as fit's Trainer does
        bare_source.configure_model()
        dm.setup("fit")
        all_batches = len(dm.train_dataloader())
        num_batches = min(all_batches, opts.train_batches or all_batches)
        images, labels = (t[: num_batches * dm.batch_size].to(device) for t in dm.splits["train"])
        precision = str(trainer.precision)
        in_channels_last = bool(model.hparams.get("channels_last"))
        plain = PlainLoop(
            plain_model.net,
            plain_model.build_optimizer(),
            images,
            labels,
            dm.batch_size,
            precision,
            prepare=training_input(dm),
            channels_last=in_channels_last,
        )

        # a plain epoch after each fit epoch and after each bare-Lightning epoch; each is compared with its own
        timer, eval_timer = TrainTimer(), EvalTimer()
        plain_beside_fit, plain_beside_bare = PlainEpochAfterEach(plain), PlainEpochAfterEach(plain)
        trainer.callbacks.extend([timer, eval_timer, plain_beside_fit])
        trainer.fit(model, datamodule=dm)
        bare_epoch_seconds = bare_training(bare_source, dm, trainer, plain_beside_bare)
        bare_s = steady_epoch(bare_epoch_seconds)
        rates = bench_evaluation(trainer, model, dm, plain_model.net, eval_timer, opts, in_channels_last)

    fit_s, plain_s = steady_epoch(timer.epoch_seconds), steady_epoch(plain_beside_fit.epoch_seconds)
    result = ModelResult(
        name=name,
        source=source,
        params=model.num_parameters,
        batch_size=dm.batch_size,
        optimizer=f"{model.hparams.optimizer} lr {model.hparams.lr:g}",
        train_images=len(labels),
        fit_epoch_s=fit_s,
        plain_epoch_s=plain_s,
        fit_images_per_s=len(labels) / fit_s,
        plain_images_per_s=len(labels) / plain_s,
        ratio=fit_s / plain_s,
        bare_epoch_s=bare_s,
        bare_ratio=bare_s / steady_epoch(plain_beside_bare.epoch_seconds),
        epoch_seconds={
            "fit": timer.epoch_seconds,
            "plain_beside_fit": plain_beside_fit.epoch_seconds,
            "bare": bare_epoch_seconds,
            "plain_beside_bare": plain_beside_bare.epoch_seconds,
        },
        eval_batch_size=large_eval_batch(dm, opts),
        fit_inference_images_per_s=rates["test"],
        plain_inference_images_per_s=rates["plain"],
        fit_inference_train_batch_images_per_s=rates["test_train_batch"],
        plain_inference_train_batch_images_per_s=rates["plain_train_batch"],
    )
    print(
        f"{name}: fit {fit_s:.2f} s/epoch, plain {plain_s:.2f} s/epoch, ratio {result.ratio:.2f} "
        f"(bare Lightning {result.bare_ratio:.2f}); test {rates['test']:,.0f} images/s "
        f"at batch {result.eval_batch_size} "
        f"(plain {rates['plain']:,.0f}), {rates['test_train_batch']:,.0f} at batch {dm.batch_size} "
        f"(plain {rates['plain_train_batch']:,.0f})",
        flush=True,
    )
    return result


def large_eval_batch(dm: MNISTDataModule, opts: argparse.Namespace) -> int:
    """The evaluation batch compared with the training batch: ``--eval-batch``, else the large one of ``"auto"``."""
    return getattr(opts, "eval_batch", None) or resolve_eval_batch_size(dm.batch_size, "auto", large_batches_pay=True)


def bench_evaluation(
    trainer: L.Trainer,
    model: MNISTClassifier,
    dm: MNISTDataModule,
    plain_net: nn.Module,
    eval_timer: EvalTimer,
    opts: argparse.Namespace,
    channels_last: bool = False,
) -> dict[str, float]:
    """Images per second of ``trainer.test`` and of a plain no-grad loop over the test images, at the large
    evaluation batch (``--eval-batch``, else max(batch_size, 1000): what ``"auto"`` picks wherever large batches pay)
    and at the training batch; each the best of ``opts.eval_repeats`` runs, the batch sizes alternating so that a
    machine that drifts meanwhile affects both alike."""
    setting, eval_batch = dm.eval_batch_setting, large_eval_batch(dm, opts)
    test_images = dm.splits["test"][0].to(trainer.strategy.root_device)
    measured: dict[str, list[float]] = {"test": [], "test_train_batch": [], "plain": [], "plain_train_batch": []}
    try:
        for _ in range(opts.eval_repeats):
            for key, batch in (("", eval_batch), ("_train_batch", dm.batch_size)):
                dm.eval_batch_setting = batch
                trainer.test(model, datamodule=dm, verbose=False)
                measured[f"test{key}"].append(eval_timer.rates[-1])
                images = test_images[: 3 * batch] if opts.tiny else test_images  # tiny: 3 batches, as the test loop
                with autocast(images.device, str(trainer.precision)):  # as the Trainer under bf16-mixed
                    measured[f"plain{key}"].append(plain_inference(plain_net, images, batch, channels_last))
    finally:
        dm.eval_batch_setting = setting
    return {key: max(rates) for key, rates in measured.items()}


def bench_speedrun(opts: argparse.Namespace) -> SpeedrunResult:
    """Train the speedrun preset once per seed through the project's fit; training time and official test accuracy."""
    result = SpeedrunResult()
    limits = ["--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1"]
    limits.append("--trainer.max_epochs=1")
    for seed in range(opts.first_seed, opts.first_seed + opts.seeds):
        with tempfile.TemporaryDirectory() as workdir:
            cli = build(
                [
                    f"--config={config_dir() / 'speedrun.yaml'}",
                    f"--seed_everything={seed}",
                    *(limits if opts.tiny else []),
                ],
                Path(workdir),
            )
            timers = [c for c in cli.trainer.callbacks if isinstance(c, TrainTimer)]
            if not timers:
                timers = [TrainTimer()]
                cli.trainer.callbacks.append(timers[0])
            start = time.perf_counter()
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
            fit_call = time.perf_counter() - start
            metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
        result.seeds.append(seed)
        result.train_s.append(timers[0].train_seconds or 0.0)
        result.fit_call_s.append(fit_call)
        result.test_acc.append(float(metrics["test/acc"]))
        result.steps = cli.trainer.global_step
        print(
            f"speedrun seed {seed}: {result.train_s[-1]:.2f} s training, test acc {result.test_acc[-1]:.4f}", flush=True
        )
    return result


def bench_torchvision_loader(opts: argparse.Namespace) -> dict[str, float]:
    """One epoch of a torchvision DataLoader over the 60,000 training images, per-image ToTensor + Normalize."""
    from torchvision import datasets, transforms

    dm = MNISTDataModule()
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    dataset = datasets.MNIST(str(dm.data_dir), train=True, transform=transform, download=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True, num_workers=0)
    start, images = time.perf_counter(), 0
    for batch, (x, _) in enumerate(loader):
        images += len(x)
        if opts.tiny and batch == 20:
            break
    seconds = time.perf_counter() - start
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Every model asked for, the speedrun and the torchvision loader; ``speed.md`` and ``speed.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a few batches of everything (CI)")
    parser.add_argument(
        "--epochs", type=int, default=3, help="training epochs per model; the fastest after the first is reported"
    )
    parser.add_argument("--train-batches", type=int, default=0, help="limit the training batches per epoch (0: all)")
    parser.add_argument("--seeds", type=int, default=5, help="speedrun seeds")
    parser.add_argument("--first-seed", type=int, default=0, help="the first speedrun seed")
    parser.add_argument(
        "--models",
        default="mlp_128_64,convnet,vit",
        help=f"comma-separated subset of the models: {', '.join(name for name, _ in MODELS)}",
    )
    parser.add_argument(
        "--precision",
        choices=["32-true", "bf16-mixed"],
        default=None,
        help="precision of every model (default: the preset's); the plain loop uses the same autocast",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile every network (fit, bare and plain)")
    parser.add_argument(
        "--channels-last",
        choices=["true", "false"],
        default=None,
        help="channels-last weights and batches for every network (default: the preset's); plain follows",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    parser.add_argument(
        "--eval-batch", type=int, default=None, help="evaluation batch of the data module (default: the preset's)"
    )
    parser.add_argument("--note", default="", help="a sentence for speed.md about the machine (e.g. what else ran)")
    parser.add_argument("--no-loader", action="store_true", help="skip the torchvision DataLoader comparison")
    parser.add_argument(
        "--eval-repeats", type=int, default=2, help="test passes per evaluation batch size; the fastest is reported"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for speed.md and speed.json (default: benchmarks/; with --tiny a new temporary one)",
    )
    opts = parser.parse_args(argv)
    if opts.tiny:
        opts.epochs, opts.train_batches, opts.seeds, opts.eval_repeats = 1, opts.train_batches or 5, 1, 1
    if opts.out is None:  # a tiny run measures nothing: its tables never replace the committed ones unless asked
        opts.out = Path(tempfile.mkdtemp(prefix="mnist-speed-tiny-")) if opts.tiny else HERE
    command = "python benchmarks/speed.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)

    load_before = os.getloadavg()[0]
    wanted = set(opts.models.split(","))
    models = [bench_model(name, preset, opts) for name, preset in MODELS if name in wanted]
    speedrun = bench_speedrun(opts)
    loader = {} if opts.no_loader else bench_torchvision_loader(opts)
    report = {
        "command": command.strip(),
        "tiny": opts.tiny,
        "train_batches": opts.train_batches,
        "eval_repeats": opts.eval_repeats,
        "note": opts.note,
        "settings": {
            "channels_last": opts.channels_last,
            "compile": opts.compile,
            "precision": opts.precision,
            "threads": torch.get_num_threads() if opts.threads else None,
            "eval_batch": opts.eval_batch,
        },
        "environment": environment(),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "models": [asdict(m) for m in models],
        "speedrun": asdict(speedrun),
        "torchvision_loader": loader,
    }
    table = markdown(report)
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "speed.md").write_text(table)
    (opts.out / "speed.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table)
    print(f"wrote speed.md and speed.json in {opts.out}", flush=True)
    return report


if __name__ == "__main__":
    main()
