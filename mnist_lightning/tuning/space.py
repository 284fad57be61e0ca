"""The search space: reading and checking ``configs/tune/*.yaml`` into a :class:`SearchSpace` of :class:`Param`.

Everything wrong with a space file is one :class:`ConfigError` naming the file and the key, raised before any
training. A space also knows how to turn one trial's values into the ``fit`` command line of that trial.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mnist_lightning.cli import config_dir, preset_names
from mnist_lightning.errors import ConfigError, one_line

if TYPE_CHECKING:  # Optuna is imported when a search starts: the other commands do not pay for it
    from optuna.trial import Trial

SPACE_KEYS = {"study", "base", "fixed", "params", "metric", "direction", "n_trials", "pruner", "sampler", "seed"}
PARAM_KEYS = {"low", "high", "log", "step", "type", "choices"}
PRUNERS = ("median", "halving", "none")
SAMPLERS = ("tpe", "random")
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


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
    typed: bool = False  # the range's type was written (type: int or float), not inferred from its bounds

    def suggest(self, trial: Trial) -> Any:
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

    def description(self) -> dict[str, Any]:
        """The parameter's kind and range or choices, as a study stores it."""
        if self.kind == "categorical":
            return {"choices": self.choices}
        return {"type": self.kind, "low": self.low, "high": self.high, "log": self.log, "step": self.step}

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
    base_given: list[str] = field(default_factory=list)  # ``base`` as the file wrote it (names or paths)

    @property
    def mode(self) -> str:
        """``max`` or ``min``: the checkpoint's mode for this space's direction."""
        return "max" if self.direction == "maximize" else "min"

    def checkpoint_settings(self) -> dict[str, Any]:
        """A trial's best checkpoint is the one with the best value of the search metric: the same metric and mode
        as the trial's score (the project's default checkpoint watches val/acc)."""
        settings: dict[str, Any] = {"checkpoint.monitor": self.metric, "checkpoint.mode": self.mode}
        if self.metric != "val/acc" and "checkpoint.filename" not in self.fixed:
            # the default file name shows val/acc; name the file after the metric it was chosen by
            label = re.sub(r"[^A-Za-z0-9_.-]", "_", self.metric)
            settings["checkpoint.filename"] = f"best-epoch{{epoch:02d}}-step{{step}}-{label}{{{self.metric}:.4f}}"
        return settings

    def settings(self, values: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint's metric, the fixed settings and a trial's values as one nested config."""
        return nest({**self.checkpoint_settings(), **self.fixed, **values})

    def description(self) -> dict[str, Any]:
        """What a study keeps of the space that created it, to refuse a resume with another space: the base configs
        (as written, and their contents), the fixed settings, every searched range or list of choices, the metric
        and its direction. ``n_trials``, the sampler, the pruner and the seed may change between runs of a study."""
        return json.loads(
            json.dumps(
                {
                    "base": self.base_given or self.base,
                    "base contents": [read_yaml_quietly(Path(b)) for b in self.base],
                    "fixed": self.fixed,
                    "params": {name: p.description() for name, p in self.params.items()},
                    "metric": self.metric,
                    "direction": self.direction,
                },
                default=str,
            )
        )

    def fit_args(self, values: dict[str, Any]) -> list[str]:
        """The ``fit`` command line of one trial (without the subcommand): the base configs, then the fixed settings
        and the trial's values as one inline config, the same content ``best.yaml`` gets.

        An inline config rather than ``--model.init_args.lr=...`` options: the CLI drops ``--model.*`` options when
        the model comes from a config file.
        """
        args = self.base_args()
        args.append("--config=" + yaml.safe_dump(self.settings(values), default_flow_style=True, width=10**9).strip())
        return args

    def base_args(self) -> list[str]:
        """``--config`` for each base config, in order."""
        return [arg for config in self.base for arg in ("--config", config)]

    def decoded(self, stored: dict[str, Any]) -> dict[str, Any]:
        """A trial's parameters as Optuna stored them, back to the settings' values (searched settings only)."""
        return {name: p.decode(stored[name]) for name, p in self.params.items() if name in stored}


def is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def read_yaml_quietly(path: Path) -> Any:
    """A config file's contents (None when it cannot be read: the probe says why)."""
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def space_changes(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """How ``current`` (a :meth:`SearchSpace.description`) differs from the ``stored`` one, one phrase each."""
    changes = []
    old_params, new_params = stored.get("params", {}), current.get("params", {})
    changes += [f"parameter {name} added" for name in new_params if name not in old_params]
    changes += [f"parameter {name} removed" for name in old_params if name not in new_params]
    for name in new_params:
        if name in old_params and old_params[name] != new_params[name]:
            changes.append(f"{name} was {describe(old_params[name])}, now {describe(new_params[name])}")
    old_fixed, new_fixed = stored.get("fixed", {}), current.get("fixed", {})
    for name in {**old_fixed, **new_fixed}:
        old, new = old_fixed.get(name, "(unset)"), new_fixed.get(name, "(unset)")
        if old != new:
            changes.append(f"fixed {name} was {old!r}, now {new!r}")
    for key in ("base", "base contents", "metric", "direction"):
        if key in stored and stored[key] != current.get(key):
            shown = "changed" if key == "base contents" else f"was {stored[key]!r}, now {current.get(key)!r}"
            changes.append(f"{key} {shown}")
    return changes


def describe(param: dict[str, Any]) -> str:
    if "choices" in param:
        return f"choices {param['choices']}"
    text = f"{param['type']} {param['low']}..{param['high']}"
    return text + (" log" if param.get("log") else "") + (f" step {param['step']}" if param.get("step") else "")


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


def find_space_file(path: Path) -> Path:
    """The space file as given, else the one of that name in ``configs/tune/``."""
    if path.is_file():
        return path
    candidates = [config_dir() / "tune" / str(path), config_dir() / "tune" / f"{path}.yaml"]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise ConfigError(f"search space {path} does not exist; pass a YAML file such as configs/tune/linear.yaml")
    return found


def read_space_file(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"search space {path} is not valid YAML ({one_line(err)}); fix the file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"search space {path} cannot be read ({getattr(err, 'strerror', None) or err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"search space {path} must be a mapping with 'base' and 'params'; see docs/tune.md")
    unknown = sorted(set(raw) - SPACE_KEYS)
    if unknown:
        raise ConfigError(
            f"search space {path}: unknown key {unknown[0]!r}; the keys are {', '.join(sorted(SPACE_KEYS))}"
        )
    return raw


def load_space(path: str | Path, study: str | None = None, n_trials: int | None = None) -> SearchSpace:
    """Read and check a search space; anything wrong is one :class:`ConfigError` naming the file and the key."""
    path = find_space_file(Path(path))
    raw = read_space_file(path)
    where = f"search space {path}"

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
    check_checkpoint_settings(fixed, metric, direction, where)
    return SearchSpace(
        path,
        name,
        resolved_base,
        dict(fixed),
        params,
        metric,
        direction,
        trials,
        pruner,
        pruner_args,
        sampler,
        seed,
        base_given=list(base_list),
    )


def check_checkpoint_settings(fixed: dict[str, Any], metric: str, direction: str, where: str) -> None:
    """A trial's checkpoint watches the search metric in the search's direction: a fixed setting that says
    otherwise would keep a checkpoint other than the one the trial's score comes from."""
    mode = "max" if direction == "maximize" else "min"
    for key, wanted in (("checkpoint.monitor", metric), ("checkpoint.mode", mode)):
        if key in fixed and fixed[key] != wanted:
            raise ConfigError(
                f"{where}: fixed {key} is {fixed[key]!r} but a trial's checkpoint follows the search "
                f"(metric {metric}, direction {direction}: {key} {wanted}); remove it from 'fixed'"
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
    unknown = sorted(set(spec) - PARAM_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; use low, high, log, step, type or choices")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list")
        if set(spec) - {"choices"}:
            raise ConfigError(f"{where}: give either choices or low/high, not both")
        check_distinct_choices(choices, where)
        return Param(key, "categorical", choices=list(choices))
    return parse_range(key, spec, where)


def parse_range(key: str, spec: dict[str, Any], where: str) -> Param:
    """A ``{low, high, log, step, type}`` entry."""
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
    if step is not None:
        check_step_reaches_high(low, high, step, where)
    return Param(key, kind, low=low, high=high, log=log, step=step, typed="type" in spec)


def check_step_reaches_high(low: float, high: float, step: float, where: str) -> None:
    """A range in steps must land on ``high``: otherwise Optuna lowers ``high`` to the last step below it, with only
    a warning (16..40 in steps of 16 searches 16 and 32, never 40). Decimal arithmetic, as Optuna's own check uses,
    so that 0.0..0.5 in steps of 0.1 divides."""
    d_low, d_high, d_step = (Decimal(str(v)) for v in (low, high, step))
    span = d_high - d_low
    if span % d_step == 0:
        return
    below = d_low + (span // d_step) * d_step
    above = below + d_step
    values = [d_low + i * d_step for i in range(int(span // d_step) + 1)]
    shown = ", ".join(str(v) for v in values[:5]) + (", ..." if len(values) > 5 else "")
    raise ConfigError(
        f"{where}: {low}..{high} in steps of {step} does not reach {high}; Optuna would silently search "
        f"{low}..{below} only ({shown}); set high to {below} or {above}, or a step that divides {span}"
    )


def check_distinct_choices(choices: list[Any], where: str) -> None:
    """No two choices that Optuna would take for one: it finds a stored value with ``==`` (so ``1``, ``1.0`` and
    ``true`` are one choice, stored as the first), and a repeated choice is drawn more often than the others."""
    encoded = [c if is_scalar(c) else json.dumps(c, sort_keys=True) for c in choices]
    for i, choice in enumerate(choices):
        for j in range(i):
            if choices[j] == choice or encoded[j] == encoded[i]:
                raise ConfigError(
                    f"{where}: choices {choices[j]!r} and {choice!r} are the same value to Optuna (it would store "
                    f"{choice!r} as {choices[j]!r} and draw that value twice as often); remove one of them"
                )
