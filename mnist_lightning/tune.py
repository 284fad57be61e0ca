"""``mnist-lightning tune``: hyperparameter search with Optuna, without a W&B server.

A search space (``configs/tune/*.yaml``) names dotted ``fit`` settings and their ranges. Every trial is a real
``fit`` built by :class:`MNISTLightningCLI` from the base preset, the fixed settings and the trial's values, run in
this process (so that Optuna's pruning callback can stop a bad trial after any validation), with its own run folder,
checkpoints and W&B run. The study lives in an Optuna journal file under ``runs/tune/<study>/``, which several
processes (or machines sharing the folder) can append to at once; ``--resume`` continues an interrupted search.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mnist_lightning.argtypes import positive_int, positive_number
from mnist_lightning.callbacks import NonFiniteLossError, RunLock
from mnist_lightning.cli import DEBUG_ENV, MNISTLightningCLI, config_dir, preset_names, summarize_parse_error
from mnist_lightning.errors import ConfigError, MNISTLightningError, one_line
from mnist_lightning.outputs import ensure_writable_folder, replace_atomically, write_atomically

SPACE_KEYS = {"study", "base", "fixed", "params", "metric", "direction", "n_trials", "pruner", "sampler", "seed"}
PRUNERS = ("median", "halving", "none")
SAMPLERS = ("tpe", "random")
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
JOURNAL = "study.journal"
# a trial's owner writes a heartbeat this often while it trains; --resume treats a running trial of another machine
# whose heartbeat is older than --stale_after seconds as dead (a trial of this machine: as soon as its process is gone)
HEARTBEAT_SECONDS = 30.0
# Optuna's default of 5 unpruned trials before the median pruner starts is a large part of a small study
MEDIAN_DEFAULTS = {"n_startup_trials": 2, "n_warmup_steps": 0}


# ----------------------------------------------------------------------------------------------- search space
@dataclass
class Param:
    """One searched setting: a float or int range (optionally on a log scale, with a step) or a list of choices."""

    name: str
    kind: str  # float, int or categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: list[Any] = field(default_factory=list)

    def suggest(self, trial: Any) -> Any:
        """The trial's value (for choices: the choice itself, lists and dicts included)."""
        if self.kind == "categorical":
            # Optuna stores scalar choices only: lists and dicts travel as their JSON text
            encoded = [c if is_scalar(c) else json.dumps(c) for c in self.choices]
            picked = trial.suggest_categorical(self.name, encoded)
            return self.choices[encoded.index(picked)]
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def decode(self, stored: Any) -> Any:
        """A value as Optuna stored it, back to the setting's value."""
        if self.kind == "categorical" and isinstance(stored, str) and not any(stored == c for c in self.choices):
            return yaml.safe_load(stored)
        return stored

    def extremes(self) -> list[Any]:
        """Values that together exercise the whole range: both ends, or every choice."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


@dataclass
class SearchSpace:
    """A parsed ``configs/tune/*.yaml``."""

    path: Path
    study: str
    base: list[str]
    fixed: dict[str, Any]
    params: dict[str, Param]
    metric: str = "val/acc"
    direction: str = "maximize"
    n_trials: int = 20
    pruner: str = "median"
    pruner_args: dict[str, Any] = field(default_factory=dict)
    sampler: str = "tpe"
    seed: int | None = None

    def fit_args(self, values: dict[str, Any]) -> list[str]:
        """The ``fit`` command line of one trial (without the subcommand): the base configs, then the fixed settings
        and the trial's values as one inline config, the same content ``best.yaml`` gets.

        An inline config rather than ``--model.init_args.lr=...`` options: the CLI drops ``--model.*`` options when
        the model comes from a config file.
        """
        args: list[str] = []
        for config in self.base:
            args += ["--config", config]
        settings = nest({**self.fixed, **values})
        args.append("--config=" + yaml.safe_dump(settings, default_flow_style=True, width=10**9).strip())
        return args


def is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def load_space(path: str | Path, study: str | None = None, n_trials: int | None = None) -> SearchSpace:
    """Read and check a search space; anything wrong is one :class:`ConfigError` naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        candidates = [config_dir() / "tune" / str(path), config_dir() / "tune" / f"{path}.yaml"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ConfigError(f"search space {path} does not exist; pass a YAML file such as configs/tune/linear.yaml")
        path = found
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"search space {path} is not valid YAML ({one_line(err)}); fix the file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"search space {path} cannot be read ({getattr(err, 'strerror', None) or err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"search space {path} must be a mapping with 'base' and 'params'; see docs/tune.md")
    where = f"search space {path}"
    unknown = sorted(set(raw) - SPACE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; the keys are {', '.join(sorted(SPACE_KEYS))}")

    name = study or raw.get("study") or path.stem
    if not isinstance(name, str) or not STUDY_NAME.match(name):
        raise ConfigError(f"{where}: study name {name!r} must be letters, digits, '_', '.' or '-'")
    base = raw.get("base")
    base_list = [base] if isinstance(base, str) else base
    if not base_list or not isinstance(base_list, list) or not all(isinstance(b, str) for b in base_list):
        raise ConfigError(f"{where}: 'base' must name a preset (e.g. linear) or a list of config files")
    resolved_base = [resolve_config(b, path, where) for b in base_list]

    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{where}: 'fixed' must map settings to values, e.g. {{trainer.max_epochs: 3}}")
    for key in fixed:
        check_setting_name(key, where)

    params_raw = raw.get("params")
    if not isinstance(params_raw, dict) or not params_raw:
        raise ConfigError(f"{where}: 'params' must map at least one setting to its range or choices")
    params = {key: parse_param(key, spec, where) for key, spec in params_raw.items()}
    overlap = sorted(set(params) & set(fixed))
    if overlap:
        raise ConfigError(f"{where}: {overlap[0]} is both fixed and searched; keep it in one of 'fixed' or 'params'")

    metric = raw.get("metric", "val/acc")
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"{where}: 'metric' must be a logged metric such as val/acc")
    direction = raw.get("direction", "maximize")
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"{where}: direction {direction!r} must be maximize or minimize")
    trials = raw.get("n_trials", 20) if n_trials is None else n_trials
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"{where}: n_trials must be a whole number of at least 1, got {trials!r}")
    pruner, pruner_args = raw.get("pruner", "median"), {}
    if isinstance(pruner, dict):
        pruner_args = {k: v for k, v in pruner.items() if k != "name"}
        pruner = pruner.get("name")
    if pruner not in PRUNERS:
        raise ConfigError(f"{where}: pruner {pruner!r} must be one of {', '.join(PRUNERS)}")
    sampler = raw.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise ConfigError(f"{where}: sampler {sampler!r} must be one of {', '.join(SAMPLERS)}")
    seed = raw.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"{where}: seed must be a whole number or null, got {seed!r}")
    return SearchSpace(
        path, name, resolved_base, dict(fixed), params, metric, direction, trials, pruner, pruner_args, sampler, seed
    )


def resolve_config(name: str, space_path: Path, where: str) -> str:
    """A base config: a file (as given, or beside the space file) or a preset name."""
    candidates = [
        Path(name),
        space_path.parent / name,
        config_dir() / name,
        config_dir() / f"{name}.yaml",
    ]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise ConfigError(f"{where}: base {name!r} is neither a file nor a preset ({', '.join(preset_names())})")
    return str(found.resolve())


def check_setting_name(key: Any, where: str) -> None:
    if not isinstance(key, str) or not SETTING_NAME.match(key):
        raise ConfigError(
            f"{where}: {key!r} is not a setting name; write the dotted fit option without dashes, "
            "e.g. model.init_args.lr or data.batch_size"
        )


def parse_param(key: str, spec: Any, where: str) -> Param:
    """One entry of ``params``: ``{low, high, log, step, type}``, ``{choices: [...]}`` or a plain list of choices."""
    check_setting_name(key, where)
    where = f"{where}: {key}"
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be {{low: ..., high: ...}} or {{choices: [...]}}, got {spec!r}")
    allowed = {"low", "high", "log", "step", "type", "choices"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; use low, high, log, step, type or choices")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list")
        if set(spec) - {"choices"}:
            raise ConfigError(f"{where}: give either choices or low/high, not both")
        return Param(key, "categorical", choices=list(choices))
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: a range needs both low and high (or give choices: [...])")
    low, high = spec["low"], spec["high"]
    for bound, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: {bound} must be a finite number, got {value!r} (write 1.0e-4, not 1e-4)")
    if low >= high:
        raise ConfigError(f"{where}: low {low} must be below high {high}; swap them, or move it to 'fixed'")
    kind = spec.get("type") or ("int" if isinstance(low, int) and isinstance(high, int) else "float")
    if kind not in ("int", "float"):
        raise ConfigError(f"{where}: type {kind!r} must be int or float")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log scale needs low above 0, got {low}")
    step = spec.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise ConfigError(f"{where}: step must be a positive number")
    if step is not None and log:
        raise ConfigError(f"{where}: step and log cannot be combined; drop one of them")
    if kind == "int" and not all(float(v).is_integer() for v in (low, high, step or 1)):
        raise ConfigError(f"{where}: an int range needs whole low, high and step")
    if kind == "int":
        low, high, step = int(low), int(high), int(step) if step is not None else None
    return Param(key, kind, low=low, high=high, log=log, step=step)


# --------------------------------------------------------------------------------------------------- trials
class TuneCLI(MNISTLightningCLI):
    """The ``fit`` CLI whose parse errors are raised (and become one ConfigError) instead of ending the process."""

    def init_parser(self, **kwargs: Any) -> Any:
        parser = super().init_parser(**kwargs)
        parser.exit_on_error = False
        return parser


def build_cli(args: list[str], space: SearchSpace) -> TuneCLI:
    """Model, data and trainer of one trial, exactly as ``mnist-lightning fit <args>`` would build them."""
    try:
        cli = TuneCLI(args=args, run=False)
    except MNISTLightningError:
        raise
    except Exception as err:
        # jsonargparse's ArgumentError (or the ValueError it wraps around what a class rejected)
        if os.environ.get(DEBUG_ENV) or type(err).__name__ not in ("ArgumentError", "ValueError"):
            raise
        raise ConfigError(
            f"search space {space.path}: fit rejects the settings ({summarize_parse_error(str(err))}); "
            "check the names and ranges against 'mnist-lightning fit --help'"
        ) from None
    if cli.trainer.world_size > 1:
        raise ConfigError(
            f"search space {space.path}: tune runs each trial in one process but {cli.trainer.world_size} were asked "
            "for; use trainer.devices: 1 (run several tune processes on one study to use more devices)"
        )
    return cli


def probe(space: SearchSpace) -> bool:
    """Build the fit configuration at the ends of every range (and with every choice) before any training, so a
    misspelt setting or a value the model refuses is one error now, not a failed trial later. Returns whether the
    trials log to W&B."""
    rounds = max(len(p.extremes()) for p in space.params.values())
    uses_wandb = False
    for i in range(rounds):
        values = {name: p.extremes()[i % len(p.extremes())] for name, p in space.params.items()}
        try:
            cli = build_cli(space.fit_args(values), space)
        except ConfigError:
            if i == 0:  # a misspelt name gets a clearer message than the parser's
                base = build_cli([a for c in space.base for a in ("--config", c)], space)
                check_settings_known(base, space, base_only=True)
            raise
        if i == 0:
            check_settings_known(cli, space)
        uses_wandb = uses_wandb or any(isinstance(lg, WandbLogger) for lg in cli.trainer.loggers)
    return uses_wandb


def check_settings_known(cli: TuneCLI, space: SearchSpace, base_only: bool = False) -> None:
    """Every searched and fixed setting is in the parsed configuration. A model's ``**kwargs`` lets jsonargparse
    take ``model.init_args.lrr`` without a word and drop it, so a misspelt name would search nothing."""
    keys = [*space.params, *space.fixed]
    # on the base configuration alone, the settings of a model the space switches to are not there yet
    other_model = base_only and any(k in ("model", "model.class_path") for k in keys)
    for key in keys:
        if key not in cli.config and not (other_model and key.startswith("model.")):
            model = cli.config.get("model.class_path", "the model").rsplit(".", 1)[-1]
            raise ConfigError(
                f"search space {space.path}: {key} is not a setting of this fit configuration; see "
                f"'mnist-lightning fit --help' and 'mnist-lightning fit --model {model} --help'"
            )


class Heartbeat(Callback):
    """Stamps the trial with the time now and then while it trains, so other processes can tell it is alive."""

    def __init__(self, study: Any, trial_id: int) -> None:
        self.study, self.trial_id, self.last = study, trial_id, 0.0

    def beat(self) -> None:
        now = time.time()
        if now - self.last >= HEARTBEAT_SECONDS:
            self.last = now
            self.study._storage.set_trial_system_attr(self.trial_id, "tune:heartbeat", now)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self.beat()

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self.beat()


def machine_id() -> str:
    """This machine (and boot): two containers with one host name still differ."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = ""
    return f"{socket.gethostname()}:{boot}"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_trial(trial: Any, study: Any, space: SearchSpace, wandb_on: bool) -> float:
    """Train one trial; the metric's best validation value is its result (the best checkpoint has it too)."""
    import optuna
    from optuna_integration import PyTorchLightningPruningCallback

    values = {name: p.suggest(trial) for name, p in space.params.items()}
    args = space.fit_args(values)
    if wandb_on:
        # one W&B run per trial, grouped by study
        args += [
            f"--trainer.logger.init_args.group={space.study}",
            f"--trainer.logger.init_args.tags={json.dumps(['tune', space.study])}",
            f"--trainer.logger.init_args.name={space.study}-{trial.number}",
        ]
    cli = build_cli(args, space)
    run_dir = str(cli.run_dir) if cli.run_dir else ""
    trial.set_user_attr("run_dir", run_dir)
    cli.trainer.callbacks.append(Heartbeat(study, trial._trial_id))
    # every validation is reported (the history plot shows it); the pruner decides whether to stop
    cli.trainer.callbacks.append(PyTorchLightningPruningCallback(trial, monitor=space.metric))
    cli.check_outputs()
    lock = RunLock(cli.run_dir) if cli.run_dir else None
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    except NonFiniteLossError as err:
        # a diverged trial is a bad trial: pruned, so that the sampler learns to avoid its region
        trial.set_user_attr("note", f"loss not finite: {one_line(err)[:120]}")
        raise optuna.TrialPruned("loss not finite") from None
    finally:
        if lock is not None:
            lock.release()
        finish_wandb(cli)
        callback = cli.trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "")
        if best:
            trial.set_user_attr("checkpoint", str(best))
    reported = trial.storage.get_trial(trial._trial_id).intermediate_values
    if not reported:
        raise ConfigError(
            f"search space {space.path}: the metric {space.metric!r} was never logged during validation; use a "
            "metric the model logs (val/acc, val/loss) and keep validation on (trainer.limit_val_batches > 0)"
        )
    pick = max if space.direction == "maximize" else min
    return pick(reported.values())


def finish_wandb(cli: TuneCLI) -> None:
    """End the trial's W&B run: the next trial starts its own run in this process."""
    for logger in cli.trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            with contextlib.suppress(Exception):
                logger._experiment.finish()


# ---------------------------------------------------------------------------------------------------- study
def study_folder(root: str | Path, study: str) -> Path:
    return Path(root) / "tune" / study


def open_study(space: SearchSpace, folder: Path, resume: bool) -> tuple[Any, bool]:
    """The study in ``folder/study.journal``: new, or (with ``resume``) the existing one. Returns it and whether it
    was created now."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    ensure_writable_folder(folder, "the study folder (--root)")
    storage = JournalStorage(JournalFileBackend(str(folder / JOURNAL)))
    exists = space.study in optuna.study.get_all_study_names(storage)
    if exists and not resume:
        raise ConfigError(
            f"study {space.study} already exists in {folder}; continue it (or join it from another process) with "
            "--resume, or start another with --study NAME"
        )
    sampler: Any
    seed = space.seed if not exists else None  # a second process must not draw the same values as the first
    if space.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, space.n_trials // 3)))
    study = optuna.create_study(
        study_name=space.study,
        storage=storage,
        sampler=sampler,
        pruner=make_pruner(space),
        direction=space.direction,
        load_if_exists=True,  # two processes starting at once: the second one joins
    )
    if exists and study.direction.name.lower() != space.direction:
        raise ConfigError(
            f"study {space.study} was started to {study.direction.name.lower()}; the space now says {space.direction}"
        )
    return study, not exists


def make_pruner(space: SearchSpace) -> Any:
    import optuna

    try:
        if space.pruner == "median":
            return optuna.pruners.MedianPruner(**{**MEDIAN_DEFAULTS, **space.pruner_args})
        if space.pruner == "halving":
            return optuna.pruners.SuccessiveHalvingPruner(**space.pruner_args)
        return optuna.pruners.NopPruner()
    except (TypeError, ValueError) as err:
        raise ConfigError(f"search space {space.path}: pruner settings rejected ({one_line(err)})") from None


def recover_interrupted(study: Any, stale_after: float) -> list[int]:
    """Mark trials whose process is gone as failed, and queue each failed-by-interruption trial again (once).

    A running trial of this machine is dead when its process is; one of another machine when its heartbeat is older
    than ``stale_after`` seconds. Returns the numbers of the trials queued again.
    """
    from optuna.trial import TrialState

    storage, here, now = study._storage, machine_id(), time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.system_attrs.get("tune:owner", {})
        beat = trial.system_attrs.get("tune:heartbeat", trial.datetime_start.timestamp() if trial.datetime_start else 0)
        if owner.get("machine") == here:
            dead = not process_alive(int(owner.get("pid", 0)))
        else:
            dead = now - float(beat) > stale_after
        if dead:
            storage.set_trial_user_attr(trial._trial_id, "note", "interrupted: its process ended")
            storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    queued = []
    for trial in trials:
        if trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted") and trial.number not in retried:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
            queued.append(trial.number)
    return queued


def counted(trial: Any) -> bool:
    """A trial that is part of the study's total (surplus trials, made when processes race, are not)."""
    return not trial.user_attrs.get("surplus")


def optimize(study: Any, space: SearchSpace, wandb_on: bool, folder: Path) -> int:
    """Run trials until the study has ``n_trials`` finished (complete or pruned) ones; returns how many ran here."""
    import optuna
    from optuna.trial import TrialState

    active = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    ran = 0
    owner = {"machine": machine_id(), "pid": os.getpid()}
    while True:
        trials = [t for t in study.get_trials(deepcopy=False) if counted(t)]
        if sum(t.state in active for t in trials) >= space.n_trials:
            return ran  # finished, or the last trials are running in other processes
        trial = study.ask()
        study._storage.set_trial_system_attr(trial._trial_id, "tune:owner", owner)
        # several processes may ask at once: the trial numbers (given out in order by the storage) decide which of
        # them is beyond the total; that one is closed unrun and left out of the tables
        ahead = [
            t for t in study.get_trials(deepcopy=False) if t.number < trial.number and t.state in active and counted(t)
        ]
        if len(ahead) >= space.n_trials:
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=TrialState.FAIL)
            return ran
        started = time.time()
        print(f"tune {space.study}: trial {trial.number} starting", file=sys.stderr)
        try:
            value = run_trial(trial, study, space, wandb_on)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            state = "pruned"
        except ConfigError:
            study.tell(trial, state=TrialState.FAIL)
            raise
        except MNISTLightningError as err:
            trial.set_user_attr("note", one_line(err)[:200])
            study.tell(trial, state=TrialState.FAIL)
            state = f"failed: {one_line(err)[:200]}"
        except (KeyboardInterrupt, SystemExit, SIGTERMException):
            # Ctrl+C (Lightning turns it into SystemExit after saving last.ckpt) or SIGTERM (a batch system taking
            # the machine back): --resume runs this trial again
            trial.set_user_attr("note", "interrupted")
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=TrialState.FAIL)
            with contextlib.suppress(MNISTLightningError):
                write_outputs(study, space, folder)
            print(
                f"tune {space.study}: interrupted in trial {trial.number}; continue the study (that trial runs again "
                f"from the start) with: mnist-lightning tune {space.path} --resume",
                file=sys.stderr,
            )
            raise
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        else:
            study.tell(trial, value)
            state = f"{space.metric} {value:.4f}"
        ran += 1
        print(f"tune {space.study}: trial {trial.number} {state} ({time.time() - started:.0f} s)", file=sys.stderr)
        write_table(study, space, folder)


# --------------------------------------------------------------------------------------------------- output
def nest(settings: dict[str, Any]) -> dict[str, Any]:
    """``{"model.init_args.lr": 0.1}`` → ``{"model": {"init_args": {"lr": 0.1}}}``."""
    tree: dict[str, Any] = {}
    for key, value in settings.items():
        node = tree
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


def trial_rows(study: Any, space: SearchSpace) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        if not counted(t) or t.state.name == "WAITING":
            continue
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name.lower()}
        row[space.metric] = "" if t.value is None else round(t.value, 6)
        for name, p in space.params.items():
            row[name] = p.decode(t.params[name]) if name in t.params else ""
        row["epochs"] = len(t.intermediate_values)
        seconds = t.duration.total_seconds() if t.duration else None
        row["seconds"] = "" if seconds is None else round(seconds, 1)
        row["run"] = t.user_attrs.get("run_dir", "")
        notes = [t.user_attrs.get("note", "")]
        if "retry_of" in t.user_attrs:
            notes.append(f"rerun of trial {t.user_attrs['retry_of']}")
        row["note"] = "; ".join(n for n in notes if n)
        rows.append(row)
    return rows


def write_table(study: Any, space: SearchSpace, folder: Path) -> list[dict[str, Any]]:
    """``trials.csv`` and ``trials.md``: one row per trial (surplus and queued ones left out)."""
    rows = trial_rows(study, space)
    columns = ["trial", "state", space.metric, *space.params, "epochs", "seconds", "run", "note"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
    write_atomically(folder / "trials.csv", buffer.getvalue())
    lines = [f"# Study {space.study}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row[c]).replace("|", "\\|") for c in columns) + " |")
    write_atomically(folder / "trials.md", "\n".join(lines) + "\n")
    return rows


def best_trial(study: Any) -> Any:
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not done:
        return None
    pick = max if study.direction.name == "MAXIMIZE" else min
    return pick(done, key=lambda t: t.value)


def write_best(study: Any, space: SearchSpace, folder: Path) -> Any:
    """``best.yaml``: the fixed settings and the best trial's values, a config to add after the base preset."""
    best = best_trial(study)
    if best is None:
        return None
    values = {name: p.decode(best.params[name]) for name, p in space.params.items() if name in best.params}
    bases = " ".join(f"--config {b}" for b in space.base)
    header = (
        f"# Best trial of study {space.study} ({space.metric} {best.value:.4f}, trial {best.number}), written by "
        "mnist-lightning tune.\n"
        f"# Train it: mnist-lightning fit {bases} --config {folder / 'best.yaml'}\n"
    )
    write_atomically(folder / "best.yaml", header + yaml.safe_dump(nest({**space.fixed, **values}), sort_keys=False))
    return best


def write_plots(study: Any, space: SearchSpace, folder: Path) -> str | None:
    """``history.png`` (every trial's result and the best so far) and ``importance.png``; returns a note when the
    importance cannot be computed (then the figure says why)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState

    maximize = study.direction.name == "MAXIMIZE"
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    pruned = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.PRUNED and t.intermediate_values]
    fig, ax = plt.subplots(figsize=(7, 4))
    if complete:
        ax.scatter([t.number for t in complete], [t.value for t in complete], label="complete", color="tab:blue")
        best, running = [], None
        for t in sorted(complete, key=lambda t: t.number):
            running = t.value if running is None else (max if maximize else min)(running, t.value)
            best.append(running)
        ax.step([t.number for t in sorted(complete, key=lambda t: t.number)], best, where="post", label="best so far")
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.scatter([t.number for t in pruned], last, marker="x", color="tab:red", label="pruned (last value)")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(space.metric)
    ax.set_title(f"{space.study}: optimisation history")
    if complete or pruned:
        ax.legend()
    replace_atomically(folder / "history.png", lambda tmp: fig.savefig(tmp, format="png", dpi=100), suffix=".png")
    plt.close(fig)

    note = None
    varying = [n for n in space.params if len({repr(t.params.get(n)) for t in complete}) > 1]
    if len(complete) < 2:
        note = f"parameter importance needs at least 2 completed trials, the study has {len(complete)}"
    elif not varying:
        note = "parameter importance needs a parameter that varies between completed trials"
    importances: dict[str, float] = {}
    if note is None:
        try:
            importances = optuna.importance.get_param_importances(study, params=varying)
        except (ValueError, RuntimeError) as err:
            note = f"parameter importance could not be computed ({one_line(err)[:150]})"
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.5 * len(space.params) + 1)))
    if note is None:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:blue")
        ax.set_xlabel("importance (fANOVA)")
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, note, ha="center", va="center", wrap=True)
    ax.set_title(f"{space.study}: parameter importance for {space.metric}")
    fig.tight_layout()
    replace_atomically(folder / "importance.png", lambda tmp: fig.savefig(tmp, format="png", dpi=100), suffix=".png")
    plt.close(fig)
    return note


def write_outputs(study: Any, space: SearchSpace, folder: Path) -> tuple[list[dict[str, Any]], Any, str | None]:
    rows = write_table(study, space, folder)
    best = write_best(study, space, folder)
    note = write_plots(study, space, folder)
    return rows, best, note


def summary_line(space: SearchSpace, rows: list[dict[str, Any]], best: Any, folder: Path) -> str:
    states = [r["state"] for r in rows]
    counts = f"{states.count('complete')} complete, {states.count('pruned')} pruned, {states.count('fail')} failed" + (
        f", {states.count('running')} running" if "running" in states else ""
    )
    files = "best.yaml, trials.csv, trials.md, history.png, importance.png" if best else "trials.csv, trials.md"
    if best is None:
        return f"tune {space.study}: no completed trial yet ({counts}); files in {folder}/ ({files})"
    values = ", ".join(f"{n}={space.params[n].decode(v)!r}" for n, v in best.params.items() if n in space.params)
    return (
        f"tune {space.study}: best {space.metric} {best.value:.4f} (trial {best.number}: {values}); "
        f"{len(rows)} trials: {counts}; files in {folder}/ ({files})"
    )


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna logs every trial at INFO; the tune command prints its own lines."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def tune(
    space_path: str | Path,
    *,
    study: str | None = None,
    n_trials: int | None = None,
    resume: bool = False,
    root: str | Path = "runs",
    stale_after: float = 600.0,
) -> Path:
    """Run (or continue, or join) a search; returns the study's folder with its result files."""
    space = load_space(space_path, study, n_trials)
    folder = study_folder(root, space.study)
    if not resume and (folder / JOURNAL).exists():
        # checked before the (slower) probe; open_study checks again for a study created meanwhile
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(str(folder / JOURNAL)))
        if space.study in optuna.study.get_all_study_names(storage):
            raise ConfigError(
                f"study {space.study} already exists in {folder}; continue it (or join it from another process) "
                "with --resume, or start another with --study NAME"
            )
    wandb_on = probe(space)
    with quiet_optuna():
        optuna_study, created = open_study(space, folder, resume)
        if resume and created:
            print(f"tune {space.study}: no study to resume in {folder}: starting it", file=sys.stderr)
        queued = recover_interrupted(optuna_study, stale_after) if resume else []
        if queued:
            print(f"tune {space.study}: running interrupted trial(s) {queued} again", file=sys.stderr)
        optimize(optuna_study, space, wandb_on, folder)
        rows, best, note = write_outputs(optuna_study, space, folder)
    if note:
        print(f"tune {space.study}: {note} (importance.png says so)", file=sys.stderr)
    print(summary_line(space, rows, best, folder), file=sys.stderr)
    if best is not None:
        bases = " ".join(f"--config {b}" for b in space.base)
        print(f"Train the best: mnist-lightning fit {bases} --config {folder / 'best.yaml'}", file=sys.stderr)
    return folder


def add_tune_parser(commands: Any) -> argparse.ArgumentParser:
    """``mnist-lightning tune``'s arguments, as a subcommand of the extra commands' parser."""
    about = "hyperparameter search with Optuna over a search space (configs/tune/*.yaml), offline; see docs/tune.md"
    parser = commands.add_parser("tune", help=about, description=about)
    parser.add_argument("space", help="search space YAML file, or the name of one in configs/tune/")
    parser.add_argument("--study", default=None, help="study name (default: the space's 'study', else its file name)")
    parser.add_argument(
        "--n_trials",
        type=positive_int,
        default=None,
        help="the study's total of finished trials (default: the space's)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted study, or join it from another process"
    )
    parser.add_argument("--root", default="runs", help="the study goes to ROOT/tune/<study>/ (default: %(default)s)")
    parser.add_argument(
        "--stale_after",
        type=positive_number,
        default=600.0,
        help="with --resume: a running trial of another machine silent for this many seconds is dead "
        "(default: %(default)s)",
    )
    return parser


def run_tune_command(options: argparse.Namespace) -> None:
    tune(
        options.space,
        study=options.study,
        n_trials=options.n_trials,
        resume=options.resume,
        root=options.root,
        stale_after=options.stale_after,
    )
