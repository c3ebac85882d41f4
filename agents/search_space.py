"""The search space of `liquid-drones tune`: one YAML entry per config key, validated before any trial.

A space file maps dotted config keys (as ``--set`` takes them) to a distribution:

| entry | distribution | Optuna call |
|---|---|---|
| ``{low: 1.0e-4, high: 5.0e-3, log: true}`` | float range, log-uniform with ``log`` | ``suggest_float`` |
| ``{low: 3, high: 10}`` (both ends integers; optional ``step``) | integer range | ``suggest_int`` |
| ``{low: 0.9, high: 0.99, step: 0.01}`` | float grid | ``suggest_float`` |
| ``{choices: [128, 256, 512]}`` | categorical (a choice may be a list, e.g. a ``net_arch``) | ``suggest_categorical`` |

A ``core_overrides`` block per core adds or replaces entries when that core is tuned (core sizes
differ: ``hidden_size`` for lstm/gru/cfc/ltc, ``units`` for the NCP wirings, ``net_arch`` for mlp),
as in the config files. The defaults are ``agents/configs/tune/default.yaml``.

`load_space` checks every entry before any trial runs and raises `agents.config.ConfigError`
naming it: an unknown key, an unknown entry field, ``low > high``, a log range with ``low <= 0``,
a categorical without choices, and every end or choice against the key's own config check
(``algo.gamma`` in [0, 1], ...). Keys inside ``policy.core_kwargs`` and ``env.kwargs`` are checked
by building the core or env with each end (`agents.preflight`). Checks between keys (``batch_size
<= n_steps x n_envs``) depend on the sampled combination: `agents.tune` prunes a trial whose
combination the config rejects, before it trains.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agents.config import CONFIG_DIR, Config, ConfigError, read_yaml, set_dotted
from agents.preflight import check_core, check_env
from policies import CORE_NAMES

DEFAULT_SPACE = CONFIG_DIR / "tune" / "default.yaml"
ENTRY_FIELDS = ("low", "high", "log", "step", "choices")
MAPPING_KEYS = ("env.kwargs", "policy.core_kwargs")  # free-form sections: checked by building env / core


@dataclass(frozen=True)
class Param:
    """One tuned key: a float or int range (``low``..``high``, ``log``, ``step``) or ``choices``."""

    key: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    @property
    def is_int(self) -> bool:
        return not self.choices and all(_is_int(v) for v in (self.low, self.high))

    def values_to_check(self) -> list[Any]:
        """The ends of a range or every choice: the values validated before tuning."""
        return list(self.choices) if self.choices else [self.low, self.high]

    def suggest(self, trial: Any) -> Any:
        """Draw this key's value from an Optuna trial (a list choice comes back as its list)."""
        if self.choices:
            labels = [_label(c) for c in self.choices]
            return self.choices[labels.index(trial.suggest_categorical(self.key, labels))]
        if self.is_int:
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)


@dataclass(frozen=True)
class SearchSpace:
    """The tuned keys of one core, in file order."""

    params: tuple[Param, ...]
    source: str

    def sample(self, trial: Any) -> dict[str, Any]:
        """``{key: value}`` drawn from an Optuna trial."""
        return {p.key: p.suggest(trial) for p in self.params}

    def overrides(self, values: dict[str, Any]) -> list[str]:
        """``key=value`` strings (`agents.config.load_config` overrides) for sampled or best values."""
        return [f"{key}={_label(value)}" for key, value in values.items()]

    def values_of(self, params: dict[str, Any]) -> dict[str, Any]:
        """Optuna's stored params (list choices as their labels) -> config values."""
        by_key = {p.key: p for p in self.params}
        values = {}
        for key, value in params.items():
            choices = by_key[key].choices if key in by_key else ()
            labels = [_label(c) for c in choices]
            values[key] = choices[labels.index(value)] if value in labels else value
        return values


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _label(value: Any) -> Any:
    """A choice as Optuna stores it: numbers, strings and booleans as they are, lists and
    mappings as flow YAML (``[64, 64]``), which `load_config` parses back."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip()


def _schema() -> dict[str, dataclasses.Field]:
    """Every config key (``section.field``) with its field (whose metadata holds the check)."""
    config = Config()
    return {f"{section.name}.{field.name}": field
            for section in dataclasses.fields(config) for field in dataclasses.fields(getattr(config, section.name))}


def _number(where: str, value: Any) -> float | int:
    if _is_int(value):
        return value
    try:
        number = float(value)  # YAML 1.1 reads "1e-4" as a string
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{where} must be finite, got {value!r}")
    return number


def _param(key: str, entry: Any, source: str) -> Param:
    """One entry, its own fields checked (not yet against the config schema)."""
    where = f"search space {source}: entry {key!r}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping such as {{low: 1, high: 10}} or {{choices: [a, b]}}, "
                          f"got {entry!r}")
    unknown = sorted(set(entry) - set(ENTRY_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown field {', '.join(map(repr, unknown))}; allowed: {', '.join(ENTRY_FIELDS)}")
    if "choices" in entry:
        if set(entry) != {"choices"}:
            raise ConfigError(f"{where}: choices cannot be combined with low, high, log or step")
        if not isinstance(entry["choices"], list) or not entry["choices"]:
            raise ConfigError(f"{where}: choices must be a non-empty list, got {entry['choices']!r}")
        return Param(key, choices=tuple(entry["choices"]))
    if "low" not in entry or "high" not in entry:
        raise ConfigError(f"{where} needs both low and high (or choices)")
    low, high = _number(f"{where} low", entry["low"]), _number(f"{where} high", entry["high"])
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    step = None if entry.get("step") is None else _number(f"{where} step", entry["step"])
    if low > high:
        raise ConfigError(f"{where}: low ({low}) must be <= high ({high})")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got low = {low}")
    if step is not None and (step <= 0 or log):
        raise ConfigError(f"{where}: step must be > 0 and cannot be combined with log, got step = {step}")
    if _is_int(low) != _is_int(high) or (step is not None and _is_int(low) != _is_int(step)):
        raise ConfigError(f"{where}: low, high and step must all be integers (an int range) or all numbers "
                          f"with a decimal point (a float range), got {low!r}, {high!r}, {step!r}")
    return Param(key, low=low, high=high, log=log, step=step)


def _check_against_config(param: Param, base: Config, source: str) -> None:
    """Every end or choice of ``param`` passes its key's own check (or builds, for env/core keywords)."""
    where = f"search space {source}: entry {param.key!r}"
    schema = _schema()
    section = next((m for m in MAPPING_KEYS if param.key.startswith(m + ".")), None)
    if section is None and param.key not in schema:
        raise ConfigError(f"{where}: unknown config key; allowed: {', '.join(schema)}, or keys under "
                          f"{' / '.join(m + '.' for m in MAPPING_KEYS)}")
    for value in param.values_to_check():
        try:
            if section is None:
                schema[param.key].metadata["check"](param.key, value)
                continue
            data = copy.deepcopy(base.to_dict())
            set_dotted(data, param.key, value)
            if section == "env.kwargs":
                check_env(dataclasses.replace(base.env, kwargs=data["env"]["kwargs"]))
            else:
                check_core(dataclasses.replace(base.policy, core_kwargs=data["policy"]["core_kwargs"]))
        except ConfigError as error:
            raise ConfigError(f"{where}: value {value!r} is not allowed: {error}") from None


def load_space(path: str | Path | None, base: Config) -> SearchSpace:
    """Read a space file (default `DEFAULT_SPACE`) for the core of ``base`` and check every entry.

    :param base: the config being tuned (its core picks the ``core_overrides`` block; its env and
        core settings are the background against which env/core keywords are built)
    :raise ConfigError: naming the file and entry, before any trial runs
    """
    path = Path(path) if path is not None else DEFAULT_SPACE
    if not path.is_file():
        raise ConfigError(f"search space file {path} does not exist")
    data = read_yaml(path)
    source = str(path)
    blocks = data.pop("core_overrides", None) or {}
    if not isinstance(blocks, dict):
        raise ConfigError(f"search space {source}: core_overrides must map core names to entries")
    for core, block in blocks.items():
        if core not in CORE_NAMES:
            raise ConfigError(f"search space {source}: core_overrides: unknown core {core!r}; "
                              f"allowed: {', '.join(CORE_NAMES)}")
        if not isinstance(block, dict):
            raise ConfigError(f"search space {source}: core_overrides.{core} must be a mapping of entries")
    entries = {**data, **(blocks.get(base.policy.core) or {})}
    if not entries:
        raise ConfigError(f"search space {source} has no entries for core {base.policy.core!r}")
    params = tuple(_param(key, entry, source) for key, entry in entries.items())
    for param in params:
        _check_against_config(param, base, source)
    return SearchSpace(params, source)
