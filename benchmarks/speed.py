"""Speed of mnist-lightning's ``fit`` next to a plain PyTorch loop over the same tensors, in one process.

For the MLP (784-128-64-10), the ``convnet`` CNN and the ``vit`` preset: seconds per training epoch and images
per second through the project's Trainer (built by the CLI from the preset, logger off), the same for a
hand-written loop with the same model, initial weights, batch size and optimizer (the floor), their ratio, the
same network trained by a bare Lightning Trainer (what Lightning itself costs), and evaluation images per second
(``trainer.test`` next to a plain no-grad loop) at the training batch, the old evaluation default, and at the
data module's evaluation batch (``eval_batch_size="auto"``); then the speedrun preset's training time and test
accuracy over several seeds, and a torchvision DataLoader with per-image ToTensor + Normalize for comparison.
Writes ``speed.md`` and ``speed.json``.

    python benchmarks/speed.py            # the full benchmark (README table)
    python benchmarks/speed.py --tiny     # a few batches of everything: checks that the script still works
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import json
import os
import platform
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
import torch.nn.functional as F
from torch import Tensor, nn

from mnist_lightning.callbacks import TrainTimer, synchronize
from mnist_lightning.cli import MNISTLightningCLI, config_dir
from mnist_lightning.data import EVAL_BATCH_SIZE, MEAN, STD, MNISTDataModule
from mnist_lightning.models.base import MNISTClassifier

HERE = Path(__file__).resolve().parent


# (name, preset file in configs/)
MODELS: list[tuple[str, str]] = [("mlp_128_64", "mlp_128_64.yaml"), ("convnet", "convnet.yaml"), ("vit", "vit.yaml")]


@dataclass
class ModelResult:
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


class BareClassifier(L.LightningModule):
    """The least a LightningModule can be: cross-entropy of ``net`` and one optimizer, no metrics, no hooks.

    Trained by a Trainer with no callbacks, logger, checkpointing or progress bar, it measures what Lightning's
    own loop costs per step (the floor for anything trained by a Trainer), apart from this project's additions.
    """

    def __init__(self, source: MNISTClassifier) -> None:
        super().__init__()
        self.net = source.net
        self.build_optimizer = source.build_optimizer  # the same optimizer and settings, over the same parameters

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        return F.cross_entropy(self.net(images), labels)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.build_optimizer()


def bare_training(
    source: MNISTClassifier, dm: MNISTDataModule, trainer: L.Trainer, *callbacks: L.Callback
) -> list[float]:
    """Seconds per epoch of ``BareClassifier(source)`` trained on ``dm`` by a bare Trainer with the device,
    precision, epochs and batch limit of ``trainer``."""
    timer = TrainTimer()
    bare_trainer = L.Trainer(
        accelerator=trainer.accelerator,
        devices=1,
        precision=trainer.precision,
        max_epochs=trainer.max_epochs,
        limit_train_batches=trainer.limit_train_batches,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer, *callbacks],
    )
    bare_trainer.fit(BareClassifier(source), datamodule=dm)
    return timer.epoch_seconds


def plain_normalize(images: Tensor) -> Tensor:
    return (images.unsqueeze(1).float() / 255 - MEAN) / STD


class PlainLoop:
    """The floor: shuffle, slice, normalize, forward, cross-entropy, backward, step, over tensors on the device."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        precision: str = "32-true",
    ) -> None:
        self.net, self.optimizer = net, optimizer
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.precision = precision  # the Trainer's: the plain loop follows bf16-mixed with the same autocast
        self.epochs_done = 0  # seeds each epoch's shuffle

    @torch.enable_grad()
    def train_epoch(self) -> float:
        """Train one epoch; its seconds."""
        images, labels, device = self.images, self.labels, self.images.device
        self.net.train()
        synchronize(device)
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(self.epochs_done)
        order = torch.randperm(len(labels), generator=generator).to(device)
        for first in range(0, len(labels), self.batch_size):
            index = order[first : first + self.batch_size]
            with autocast(device, self.precision):
                loss = F.cross_entropy(self.net(plain_normalize(images[index])), labels[index])
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        synchronize(device)
        self.epochs_done += 1
        return time.perf_counter() - start


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast Lightning's ``bf16-mixed`` runs the forward pass in; nothing for other precisions."""
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class PlainEpochAfterEach(L.Callback):
    """Runs one epoch of ``plain`` after every training epoch of the Trainer it is attached to.

    Trainer epochs and plain epochs then alternate, so a machine that speeds up or slows down meanwhile (a shared
    CPU does) affects both alike.
    """

    def __init__(self, plain: PlainLoop) -> None:
        self.plain = plain
        self.epoch_seconds: list[float] = []  # of the plain epochs run by this callback

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_seconds.append(self.plain.train_epoch())


@torch.no_grad()
def plain_inference(net: nn.Module, images: Tensor, batch_size: int) -> float:
    """Images per second of a no-grad evaluation pass."""
    net.eval()
    synchronize(images.device)
    start = time.perf_counter()
    for first in range(0, len(images), batch_size):
        net(plain_normalize(images[first : first + batch_size])).argmax(dim=1)
    synchronize(images.device)
    return len(images) / (time.perf_counter() - start)


def steady_epoch(seconds: list[float]) -> float:
    """The fastest epoch after the first (which pays for warm-up): on a shared machine the least disturbed one."""
    return min(seconds[1:] or seconds)


def bench_model(name: str, preset: str, opts: argparse.Namespace) -> ModelResult:
    path = config_dir() / preset
    if not path.is_file():
        note = f"no configs/{preset}"
        print(f"{name}: skipped: {note}", flush=True)
        return ModelResult(name=name, source="", skipped=note)
    args, source = [f"--config={path}"], f"configs/{preset}"
    # --precision and --compile apply to fit, bare Lightning and the plain loop alike
    args += [f"--trainer.precision={opts.precision}"] if getattr(opts, "precision", None) else []
    args += ["--model.init_args.compile=true"] if getattr(opts, "compile", False) else []
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
        plain = PlainLoop(plain_model.net, plain_model.build_optimizer(), images, labels, dm.batch_size, precision)

        # a plain epoch after each fit epoch and after each bare-Lightning epoch; each is compared with its own
        timer, eval_timer = TrainTimer(), EvalTimer()
        plain_beside_fit, plain_beside_bare = PlainEpochAfterEach(plain), PlainEpochAfterEach(plain)
        trainer.callbacks.extend([timer, eval_timer, plain_beside_fit])
        trainer.fit(model, datamodule=dm)
        bare_epoch_seconds = bare_training(bare_source, dm, trainer, plain_beside_bare)
        bare_s = steady_epoch(bare_epoch_seconds)
        rates = bench_evaluation(trainer, model, dm, plain_model.net, eval_timer, opts)

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
        eval_batch_size=dm.eval_batch_size,
        fit_inference_images_per_s=rates["test"],
        plain_inference_images_per_s=rates["plain"],
        fit_inference_train_batch_images_per_s=rates["test_train_batch"],
        plain_inference_train_batch_images_per_s=rates["plain_train_batch"],
    )
    print(
        f"{name}: fit {fit_s:.2f} s/epoch, plain {plain_s:.2f} s/epoch, ratio {result.ratio:.2f} "
        f"(bare Lightning {result.bare_ratio:.2f}); test {rates['test']:,.0f} images/s at batch {dm.eval_batch_size} "
        f"(plain {rates['plain']:,.0f}), {rates['test_train_batch']:,.0f} at batch {dm.batch_size} "
        f"(plain {rates['plain_train_batch']:,.0f})",
        flush=True,
    )
    return result


def bench_evaluation(
    trainer: L.Trainer,
    model: MNISTClassifier,
    dm: MNISTDataModule,
    plain_net: nn.Module,
    eval_timer: EvalTimer,
    opts: argparse.Namespace,
) -> dict[str, float]:
    """Images per second of ``trainer.test`` and of a plain no-grad loop over the test images, at the data module's
    evaluation batch and at the training batch; each the best of ``opts.eval_repeats`` runs, the batch sizes
    alternating so that a machine that drifts meanwhile affects both alike."""
    eval_batch = dm.eval_batch_size
    test_images = dm.splits["test"][0].to(trainer.strategy.root_device)
    measured: dict[str, list[float]] = {"test": [], "test_train_batch": [], "plain": [], "plain_train_batch": []}
    try:
        for _ in range(opts.eval_repeats):
            for key, batch in (("", eval_batch), ("_train_batch", dm.batch_size)):
                dm.eval_batch_size = batch
                trainer.test(model, datamodule=dm, verbose=False)
                measured[f"test{key}"].append(eval_timer.rates[-1])
                images = test_images[: 3 * batch] if opts.tiny else test_images  # tiny: 3 batches, as the test loop
                with autocast(images.device, str(trainer.precision)):  # as the Trainer under bf16-mixed
                    measured[f"plain{key}"].append(plain_inference(plain_net, images, batch))
    finally:
        dm.eval_batch_size = eval_batch
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


def environment() -> dict[str, Any]:
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        model_names = (
            [
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ]
            if Path("/proc/cpuinfo").is_file()
            else []
        )
        device = f"CPU: {model_names[0] if model_names else platform.processor()}, {os.cpu_count()} cores"
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device,
        "torch": torch.__version__,
        "lightning": L.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def evaluation_table(report: dict[str, Any]) -> list[str]:
    """The evaluation rows: ``trainer.test`` and the plain loop at the training batch and at the evaluation batch."""
    lines = [
        "",
        "**Evaluation** (the 10,000 test images; `test`: `trainer.test` of the same Trainer after `fit`, timing the"
        " test loop; `plain`: a no-grad loop slicing, normalizing and running the network over the same tensors)."
        " Before, validation, test and predict used the training batch; `eval_batch_size` now defaults to"
        f' `"auto"` = max(batch_size, {EVAL_BATCH_SIZE}).'
        + (
            f" Fastest of {report['eval_repeats']} passes each, the two batch sizes alternating."
            if report.get("eval_repeats", 1) > 1
            else " One pass each, the two batch sizes one after the other."
        ),
        "",
        "| model | training batch | test images/s | plain images/s | test / plain | eval batch | test images/s "
        "| plain images/s | test / plain | test speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["models"]:
        if r["skipped"]:
            continue
        old, new = r["fit_inference_train_batch_images_per_s"], r["fit_inference_images_per_s"]
        old_plain, new_plain = r["plain_inference_train_batch_images_per_s"], r["plain_inference_images_per_s"]
        lines.append(
            f"| {r['name']} | {r['batch_size']} | {old:,.0f} | {old_plain:,.0f} | {old / old_plain:.2f} "
            f"| {r['eval_batch_size']} | {new:,.0f} | {new_plain:,.0f} | {new / new_plain:.2f} | {new / old:.1f}× |"
        )
    return lines


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "# mnist-lightning speed",
        "",
        f"{env['date']}; {env['device']}; torch {env['torch']}, lightning {env['lightning']}, "
        f"{env['torch_threads']} torch threads. Load average (1 min) {report['load_before']:.2f} before, "
        f"{report['load_after']:.2f} after." + (f" {report['note']}" if report.get("note") else ""),
        "",
        f"Command: `{report['command']}`"
        + (" (tiny mode: a few batches, not a measurement)" if report["tiny"] else ""),
        "",
        "`fit`: the Trainer the CLI builds from the preset (progress bar and checkpointing as configured, logger off),"
        " timing the training batches of each epoch (validation excluded). `plain`: a hand-written loop over the"
        " same tensors with the same model, initial weights, batch size and optimizer. `bare Lightning`: the same"
        " network, optimizer and data module trained by a Trainer with no callbacks, logger, checkpointing or"
        " progress bar, and a LightningModule with only a cross-entropy `training_step` (no metrics): what"
        " Lightning's own loop costs. One plain epoch runs after each epoch of `fit` and of `bare Lightning`, so"
        " they alternate and see the same machine; each is compared with the plain epochs beside it. Each reports its"
        " fastest epoch after the first (the first pays for warm-up); `speed.json` has every epoch."
        + (
            f" Training was limited to {report['train_batches']} batches per epoch: s/epoch is for those batches."
            if report["train_batches"]
            else ""
        ),
        "",
        "| model | params | batch | optimizer | train images | fit s/epoch | plain s/epoch | fit / plain "
        "| bare Lightning s/epoch | bare / plain | fit images/s | plain images/s |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["models"]:
        if r["skipped"]:
            lines.append(f"| {r['name']} | skipped: {r['skipped']} |" + " |" * 10)
            continue
        lines.append(
            f"| {r['name']} | {r['params']:,} | {r['batch_size']} | {r['optimizer']} | {r['train_images']:,} "
            f"| {r['fit_epoch_s']:.2f} | {r['plain_epoch_s']:.2f} | {r['ratio']:.2f} | {r['bare_epoch_s']:.2f} "
            f"| {r['bare_ratio']:.2f} | {r['fit_images_per_s']:,.0f} | {r['plain_images_per_s']:,.0f} |"
        )
    lines += evaluation_table(report)
    sr = report["speedrun"]
    if sr["test_acc"]:
        mean_acc = sum(sr["test_acc"]) / len(sr["test_acc"])
        mean_s = sum(sr["train_s"]) / len(sr["train_s"])
        mean_fit_call = sum(sr["fit_call_s"]) / len(sr["fit_call_s"])
        per_seed = ", ".join(f"{s:.2f} s / {a:.2%}" for s, a in zip(sr["train_s"], sr["test_acc"]))
        speedrun = (
            f"**Speedrun** (`configs/speedrun.yaml`, {sr['steps']} steps, seeds {sr['seeds']}): "
            f"mean training time {mean_s:.2f} s (set-up excluded; whole `fit` call {mean_fit_call:.2f} s), "
            f"mean official test accuracy {mean_acc:.2%} ({'reaches' if mean_acc >= 0.99 else 'misses'} 99.0%). "
            f"Per seed (time / accuracy): {per_seed}."
        )
    else:
        speedrun = "**Speedrun**: not run (`--seeds 0`)."
    loader = report["torchvision_loader"]
    mlp = next((r for r in report["models"] if r["name"] == "mlp_128_64" and not r["skipped"]), None)
    lines += [
        "",
        speedrun,
        "",
        f"**torchvision DataLoader** (per-image ToTensor + Normalize, batch 64, no workers): "
        f"{loader['seconds']:.2f} s for {loader['images']:,} images, {loader['images_per_s']:,.0f} images/s"
        + (
            f"; the MLP's `fit` epoch moves images at {mlp['fit_images_per_s'] / loader['images_per_s']:.1f}× its "
            "rate while also training on them."
            if mlp
            else "."
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a few batches of everything (CI)")
    parser.add_argument(
        "--epochs", type=int, default=3, help="training epochs per model; the fastest after the first is reported"
    )
    parser.add_argument("--train-batches", type=int, default=0, help="limit the training batches per epoch (0: all)")
    parser.add_argument("--seeds", type=int, default=5, help="speedrun seeds")
    parser.add_argument("--first-seed", type=int, default=0, help="the first speedrun seed")
    parser.add_argument("--models", default="mlp_128_64,convnet,vit", help="comma-separated subset of the models")
    parser.add_argument(
        "--precision",
        choices=["32-true", "bf16-mixed"],
        default=None,
        help="precision of every model (default: the preset's); the plain loop uses the same autocast",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile every network (fit, bare and plain)")
    parser.add_argument("--note", default="", help="a sentence for speed.md about the machine (e.g. what else ran)")
    parser.add_argument(
        "--eval-repeats", type=int, default=2, help="test passes per evaluation batch size; the fastest is reported"
    )
    parser.add_argument("--out", type=Path, default=HERE, help="folder for speed.md and speed.json")
    opts = parser.parse_args(argv)
    if opts.tiny:
        opts.epochs, opts.train_batches, opts.seeds, opts.eval_repeats = 1, opts.train_batches or 5, 1, 1
    command = "python benchmarks/speed.py " + shlex.join(sys.argv[1:] if argv is None else argv)

    load_before = os.getloadavg()[0]
    wanted = set(opts.models.split(","))
    models = [bench_model(name, preset, opts) for name, preset in MODELS if name in wanted]
    speedrun = bench_speedrun(opts)
    loader = bench_torchvision_loader(opts)
    report = {
        "command": command.strip(),
        "tiny": opts.tiny,
        "train_batches": opts.train_batches,
        "eval_repeats": opts.eval_repeats,
        "note": opts.note,
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
    return report


if __name__ == "__main__":
    main()
