"""Search spaces: ``search_spaces/<name>.yaml`` parsed and validated into a ``SearchSpace``, and the configs it yields."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import yaml

from fashion_core.config.checks import ConfigError
from fashion_core.config.schema import ExperimentConfig, find_technique, flatten, load_experiment, technique_raw

if TYPE_CHECKING:  # optuna and torch are imported where used, never at import time
    import optuna


PARAM_KINDS = ("float", "int", "categorical")
PARAM_FIELDS = {
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "categorical": ("type", "choices", "when"),
}
SPACE_KEYS = ("description", "base", "objective", "fixed", "params")
# Validation metrics only: the test split never drives a choice.
OBJECTIVES = ("val_top1_mean", "val_top5_mean", "val_top1_micro")


# ---------------------------------------------------------------- search spaces


@dataclass(frozen=True)
class Param:
    """One searched config key: a float or int range, or a list of choices, maybe conditional."""

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()
    when: tuple[tuple[str, tuple], ...] = ()  # (earlier categorical param, the values that activate this one)

    def active(self, chosen: Mapping[str, Any]) -> bool:
        """Whether this parameter is searched given the values chosen before it."""
        return all(k in chosen and chosen[k] in values for k, values in self.when)

    def suggest(self, trial: optuna.Trial) -> Any:
        """Ask the trial for a value."""
        # a range: _parse_param set low and high (and any step), floats for a float parameter, ints for an int one
        if self.kind == "float":
            return trial.suggest_float(
                self.name, cast(float, self.low), cast(float, self.high), log=self.log, step=self.step
            )
        if self.kind == "int":
            return trial.suggest_int(
                self.name, cast(int, self.low), cast(int, self.high), log=self.log, step=cast(int, self.step or 1)
            )
        return trial.suggest_categorical(self.name, list(self.choices))

    def extremes(self) -> list[Any]:
        """The values to check against the config before anything runs."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.kind}
        if self.kind == "categorical":
            d["choices"] = list(self.choices)
        else:
            d.update(low=self.low, high=self.high, log=self.log, step=self.step)
        if self.when:
            d["when"] = {k: list(v) for k, v in self.when}
        return d


@dataclass(frozen=True)
class SearchSpace:
    """A search space file, parsed and checked against its base technique."""

    name: str
    path: Path
    base_path: Path
    stage: str
    description: str
    objective: str
    fixed: tuple[tuple[str, Any], ...]
    params: tuple[Param, ...]

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.params]

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's values as dotted config overrides (conditional parameters only when active)."""
        chosen: dict[str, Any] = {}
        for p in self.params:
            if p.active(chosen):
                chosen[p.name] = p.suggest(trial)
        return chosen


def _space_error(path: Path, msg: str) -> ConfigError:
    return ConfigError(f"search space {path}: {msg}")


def _number(path: Path, where: str, value: Any, integer: bool) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _space_error(path, f"{where} must be a number, got {value!r}")
    if integer and not float(value).is_integer():
        raise _space_error(path, f"{where} must be an integer, got {value!r}")
    return int(value) if integer else float(value)


def _parse_param(path: Path, name: str, spec: Any, earlier: dict[str, Param]) -> Param:  # noqa: C901 - one check per parameter field, each its own one-line error
    """One entry of ``params:``; every mistake is a one-line error naming the parameter."""
    if not isinstance(spec, Mapping):
        raise _space_error(
            path, f"parameter {name!r} must be a mapping with a type, e.g. {{type: float, low: 0.0, high: 5.0}}"
        )
    kind = spec.get("type")
    if kind not in PARAM_KINDS:
        raise _space_error(path, f"parameter {name!r}: unknown type {kind!r}; choose one of: {', '.join(PARAM_KINDS)}")
    unknown = sorted(set(spec) - set(PARAM_FIELDS[kind]))
    if unknown:
        raise _space_error(
            path,
            f"parameter {name!r}: unknown field(s) {', '.join(unknown)}; "
            f"a {kind} parameter has: {', '.join(PARAM_FIELDS[kind])}",
        )
    when = _parse_when(path, name, spec.get("when"), earlier)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, (list, tuple)) or not choices:
            raise _space_error(path, f"parameter {name!r}: choices must be a non-empty list")
        for c in choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise _space_error(path, f"parameter {name!r}: choice {c!r} is not a number, string, bool or null")
        if len(set(map(repr, choices))) != len(choices):
            raise _space_error(path, f"parameter {name!r}: repeated choices in {list(choices)}")
        return Param(name, kind, choices=tuple(choices), when=when)
    integer = kind == "int"
    for key in ("low", "high"):
        if key not in spec:
            raise _space_error(path, f"parameter {name!r}: a {kind} range needs low and high")
    low = _number(path, f"parameter {name!r} low", spec["low"], integer)
    high = _number(path, f"parameter {name!r} high", spec["high"], integer)
    if low > high:
        raise _space_error(path, f"parameter {name!r}: low ({low}) > high ({high})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise _space_error(path, f"parameter {name!r}: log must be true or false, got {log!r}")
    step = spec.get("step")
    if step is not None:
        step = _number(path, f"parameter {name!r} step", step, integer)
        if step <= 0:
            raise _space_error(path, f"parameter {name!r}: step must be > 0, got {step}")
        if log:
            raise _space_error(path, f"parameter {name!r}: step and log cannot be used together")
    if log and low <= 0:
        raise _space_error(path, f"parameter {name!r}: a log range needs low > 0, got {low}")
    return Param(name, kind, low=low, high=high, log=log, step=step, when=when)


def _parse_when(path: Path, name: str, when: Any, earlier: dict[str, Param]) -> tuple[tuple[str, tuple], ...]:
    """``when: {loss.weights: effective_number}``: searched only when an earlier categorical has these values."""
    if when is None:
        return ()
    if not isinstance(when, Mapping) or not when:
        raise _space_error(path, f"parameter {name!r}: when must map an earlier parameter to its value(s)")
    out = []
    for ref, values in when.items():
        if ref not in earlier or earlier[ref].kind != "categorical":
            valid = [p for p, spec in earlier.items() if spec.kind == "categorical"]
            raise _space_error(
                path,
                f"parameter {name!r}: when refers to {ref!r}, which is not an earlier categorical "
                f"parameter; choose one of: {', '.join(valid) or '(none)'}",
            )
        values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
        bad = [v for v in values if v not in earlier[ref].choices]
        if bad or not values:
            raise _space_error(
                path,
                f"parameter {name!r}: when {ref} = {bad or values} is not among its choices "
                f"{list(earlier[ref].choices)}",
            )
        out.append((str(ref), values))
    return tuple(out)


def find_space(name_or_path: str | Path, root: str | Path = "search_spaces") -> Path:
    """A search space by name (``focal_weights``) or path; an unknown name lists the valid ones."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"search space file {str(p)!r} not found")
        return p
    cand = Path(root) / f"{name_or_path}.yaml"
    if cand.is_file():
        return cand
    valid = sorted(x.stem for x in Path(root).glob("*.yaml"))
    raise ConfigError(
        f"unknown search space {str(name_or_path)!r}; choose one of: "
        f"{', '.join(valid) or '(none in ' + str(root) + ')'}"
    )


def _find_base(base: Any, path: Path, experiments_dir: str | Path) -> Path:
    """``base: pretrain/baseline`` (a technique of experiments/<stage>/) or a path to a technique file."""
    if not isinstance(base, str) or not base:
        raise _space_error(path, "base must name a technique, e.g. base: pretrain/baseline")
    if base.endswith((".yaml", ".yml")):
        p = Path(base)
        for cand in (p, path.parent / p):
            if cand.is_file():
                return cand
        raise _space_error(path, f"base technique file {base!r} not found")
    stage, sep, name = base.partition("/")
    if not sep or stage not in ("pretrain", "finetune"):
        raise _space_error(path, f"base {base!r} must look like pretrain/<technique> or finetune/<technique>")
    return find_technique(name, stage, experiments_dir)


def load_space(
    name_or_path: str | Path, spaces_dir: str | Path = "search_spaces", experiments_dir: str | Path = "experiments"
) -> SearchSpace:
    """Read and check a search space; a bad one is a ConfigError before anything runs.

    Checks: the file's keys, each parameter's type and fields, low <= high, log ranges above 0,
    non-empty choices, conditions on earlier parameters, and that every bound and choice is a
    valid value of an existing config key of the base technique (unknown keys list the valid ones).

    Args:
        name_or_path: a stem of ``spaces_dir`` or a path to a YAML file.
        spaces_dir: the folder of search spaces.
        experiments_dir: where ``base: <stage>/<technique>`` is looked up.
    Returns:
        The parsed SearchSpace.
    """
    path = find_space(name_or_path, spaces_dir)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise _space_error(path, f"not valid YAML ({e})") from None
    if not isinstance(raw, Mapping):
        raise _space_error(path, "the top level must be a mapping")
    unknown = sorted(set(raw) - set(SPACE_KEYS))
    if unknown:
        raise _space_error(path, f"unknown key(s) {', '.join(map(str, unknown))}; valid keys: {', '.join(SPACE_KEYS)}")
    base_path = _find_base(raw.get("base"), path, experiments_dir)
    objective = raw.get("objective", "val_top1_mean")
    if objective not in OBJECTIVES:
        raise _space_error(
            path,
            f"unknown objective {objective!r}; choose one of: {', '.join(OBJECTIVES)} "
            "(validation metrics only: the test split never selects)",
        )
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, Mapping):
        raise _space_error(path, "fixed must map config keys to values, e.g. loss.name: focal")
    fixed = flatten(fixed)
    params_raw = raw.get("params")
    if not isinstance(params_raw, Mapping) or not params_raw:
        raise _space_error(path, "params must map at least one config key to its range or choices")
    params: dict[str, Param] = {}
    for name, spec in params_raw.items():
        params[str(name)] = _parse_param(path, str(name), spec, dict(params))
    clash = sorted(set(params) & set(fixed))
    if clash:
        raise _space_error(path, f"{', '.join(clash)} both fixed and searched")
    try:
        base = load_experiment(base_path, overrides=fixed)
    except ConfigError as e:
        raise _space_error(path, f"base {base_path} with fixed values: {e}") from None
    for p in params.values():
        if p.name.split(".")[0] in ("stage", "technique", "description", "data"):
            raise _space_error(
                path, f"{p.name!r} cannot be searched (it changes what the study is about, not how a model is trained)"
            )
        for v in p.extremes():
            try:
                base.replace(**{p.name: v})
            except ConfigError as e:
                raise _space_error(path, f"parameter {p.name!r} = {v!r}: {e}") from None
    return SearchSpace(
        name=path.stem,
        path=path,
        base_path=base_path,
        stage=base.stage,
        description=str(raw.get("description", "")),
        objective=objective,
        fixed=tuple(fixed.items()),
        params=tuple(params.values()),
    )


def base_config(
    space: SearchSpace, profile: str = "default", overrides: Mapping[str, Any] | None = None
) -> ExperimentConfig:
    """The config every trial starts from: profile <- base technique <- fixed <- overrides.

    Overriding a searched key is an error: the study would silently ignore the override.
    """
    overrides = dict(overrides or {})
    searched = sorted(set(overrides) & set(space.param_names))
    if searched:
        raise ConfigError(f"{', '.join(searched)} searched by {space.path}; do not override it (-o)")
    cfg = load_experiment(
        space.base_path, overrides={**dict(space.fixed), **overrides}, profile=profile, stage=space.stage
    )
    return cfg.replace(technique=space.name)


def trial_config(base: ExperimentConfig, params: Mapping[str, Any]) -> ExperimentConfig:
    """The base config with a trial's values."""
    return base.replace(**dict(params))


def best_config_yaml(space: SearchSpace, params: Mapping[str, Any], note: str = "", header: str = "") -> str:
    """A technique file (the ``experiments/`` format: only keys that differ from the defaults) of the
    base technique with the fixed and the tuned values."""
    raw = technique_raw(space.base_path)  # its parents' keys too: the file written has no parent
    raw = flatten({k: v for k, v in raw.items() if k != "technique"})
    raw.update(dict(space.fixed))
    raw.update(dict(params))
    nested: dict[str, Any] = {}
    for key, value in raw.items():
        d = nested
        parts = key.split(".")
        for part in parts[:-1]:
            d = d.setdefault(part, {})
        d[parts[-1]] = list(value) if isinstance(value, tuple) else value
    nested.pop("description", None)  # the base's own words would describe the untuned technique
    desc = " ".join(x for x in (space.description.strip(), note) if x)
    ordered = {"description": desc, "stage": nested.pop("stage", space.stage), **nested}
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return comment + yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True)
