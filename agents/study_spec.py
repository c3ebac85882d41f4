"""Study specs: a grid of config variants x training seeds, and the paired stress test of them all.

A spec is a YAML file (or the name of one in ``agents/configs/studies/``)::

    base: hover                   # a config name or YAML file, as `train --config` takes
    set: [train.total_timesteps=409600]   # overrides for every variant (optional)
    grid:                         # config keys to vary; the variants are the grid's product
      policy.core: [ncp-cfc, lstm, mlp]
      env.kwargs.disturbances:    # values may be named (label: value) ...
        nominal: {}
        dr: {mass: [0.8, 1.3], wind: [0, 2]}
      training: [rl, imitate]     # how the runs learn: `train` (RL, the default) or `imitate`
      config:                     # the variant's own base config instead of `base`
        shipped: hover-ltc
        tuned: runs/tune-hover-ltc/best.yaml
    seeds: 5                      # training seeds per variant: a count (0..N-1) or a list
    training:                     # study-wide training options (each a train.* config key)
      stop_at_success: 0.95       # stop a run at its first evaluation at this success
      max_minutes: 15
    stress:                       # the paired stress test of every run
      axes: [wind, mass, motor]   # default: every axis the env responds to
      levels: {wind: [0, 2, 4]}   # default: envs.disturbances.DEFAULT_LEVELS
      episodes: 50
      seed: 100000
    tune: {trials: 20, budget: 100000}   # optional: tune every variant first, same effort each
    reference: lstm               # the variant every other one is compared with
    learned_level: 0.95           # in-distribution success at which a seed "learned"

A variant is named by the labels of its grid values joined with ``+`` (``ncp-cfc+dr``; ... of a
plain value is its text). `load_spec` checks everything before any work: unknown keys, bad
values, every variant's config (including `agents.preflight`), the axes and levels, and that the
reference is a variant; a problem raises `StudyError` naming the key.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agents.config import Config, ConfigError, load_config
from agents.flight import DEFAULT_EPISODES, DEFAULT_SEED
from agents.preflight import preflight

STUDY_DIR = Path(__file__).parent / "configs" / "studies"
TOP_KEYS = ("base", "set", "grid", "seeds", "training", "stress", "reference", "learned_level", "tune")
STRESS_KEYS = ("axes", "levels", "episodes", "seed", "batch")
TUNE_KEYS = ("trials", "budget")
#: Grid keys that are not config keys: how a variant's runs learn (`agents.train` or
#: `agents.imitate`), and the variant's own base config (a config name or YAML file, e.g. a tuned best.yaml).
METHOD_KEY = "training"
METHODS = ("rl", "imitate")
BASE_KEY = "config"


class StudyError(ValueError):
    """A study spec problem, raised before any work; the message names the key."""


@dataclass(frozen=True)
class Variant:
    """One grid point: its name, the ``--set`` overrides that make its config, how its runs learn
    and its base config (None: the spec's ``base``)."""

    name: str
    overrides: tuple[str, ...]
    method: str = "rl"  # one of METHODS
    base: str | None = None


@dataclass(frozen=True)
class StudySpec:
    name: str
    base: str
    overrides: tuple[str, ...]
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    axes: tuple[str, ...] | None
    levels: dict[str, tuple[float, ...]]
    episodes: int
    episode_seed: int
    batch: int
    reference: str
    learned_level: float
    tune: dict[str, int] = field(default_factory=dict)

    def config(self, variant: Variant, seed: int, extra: tuple[str, ...] = ()) -> Config:
        """The training config of one run of ``variant`` (no progress bar: runs share a log)."""
        return load_config(variant.base or self.base, [*self.overrides, *variant.overrides, f"train.seed={seed}",
                                       "train.progress_bar=false", *extra])

    def to_dict(self) -> dict[str, Any]:
        methods = {v.name: v.method for v in self.variants if v.method != "rl"}
        bases = {v.name: v.base for v in self.variants if v.base}
        return {"name": self.name, "base": self.base, "set": list(self.overrides),
                **({"training": methods} if methods else {}), **({"configs": bases} if bases else {}),
                "variants": {v.name: list(v.overrides) for v in self.variants}, "seeds": list(self.seeds),
                "axes": None if self.axes is None else list(self.axes),
                "levels": {k: list(v) for k, v in self.levels.items()}, "episodes": self.episodes,
                "episode_seed": self.episode_seed, "batch": self.batch, "reference": self.reference,
                "learned_level": self.learned_level, "tune": self.tune}


def available_studies() -> list[str]:
    return sorted(path.stem for path in STUDY_DIR.glob("*.yaml"))


def _resolve(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise StudyError(f"study spec {path} does not exist")
        return path
    if (STUDY_DIR / f"{name_or_path}.yaml").is_file():
        return STUDY_DIR / f"{name_or_path}.yaml"
    raise StudyError(f"unknown study {name_or_path!r}; allowed: {', '.join(available_studies())} or a .yaml file")


def _label(value: Any) -> str:
    if isinstance(value, (dict, list)):
        raise StudyError(f"grid value {value!r} needs a name: write the key's values as a mapping "
                         f"label: value (e.g. nominal: {{}}, dr: {{mass: [0.8, 1.3]}})")
    return str(value).lower() if isinstance(value, bool) else str(value)


def _grid(grid: Any) -> list[Variant]:
    if grid is None:
        return [Variant("base", ())]
    if not isinstance(grid, dict) or not grid:
        raise StudyError(f"grid must be a mapping of config keys to lists of values, got {grid!r}")
    axes = []
    for key, values in grid.items():
        if isinstance(values, dict):
            named = [(str(label), value) for label, value in values.items()]
        elif isinstance(values, list):
            named = [(_label(value), value) for value in values]
        else:
            raise StudyError(f"grid.{key} must be a list of values (or a mapping label: value), got {values!r}")
        if not named:
            raise StudyError(f"grid.{key} has no values")
        if key == METHOD_KEY:
            wrong = [value for _, value in named if value not in METHODS]
            if wrong:
                raise StudyError(f"grid.{key}: unknown training method {wrong[0]!r}; allowed: {', '.join(METHODS)}")
        elif key == BASE_KEY:
            wrong = [value for _, value in named if not isinstance(value, str)]
            if wrong:
                raise StudyError(f"grid.{key}: {wrong[0]!r} is not a config name or YAML file")
        else:
            named = [(label, f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}")
                     for label, value in named]
        axes.append([(label, (key, value)) for label, value in named])
    variants = []
    for point in itertools.product(*axes):
        chosen = dict(choice for _, choice in point)  # grid key -> its override, method or base
        variants.append(Variant("+".join(label for label, _ in point),
                                tuple(o for k, o in chosen.items() if k not in (METHOD_KEY, BASE_KEY)),
                                chosen.get(METHOD_KEY, "rl"), chosen.get(BASE_KEY)))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise StudyError(f"grid labels do not name the variants apart: {names}")
    return variants


def _int(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise StudyError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def load_spec(name_or_path: str) -> StudySpec:
    """Read and check a study spec (see the module docstring).

    :raise StudyError: naming the key and what is allowed, before any work
    """
    path = _resolve(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise StudyError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise StudyError(f"{path} must hold a mapping")
    unknown = [key for key in data if key not in TOP_KEYS]
    if unknown:
        raise StudyError(f"unknown key {unknown[0]!r} in {path}; allowed: {', '.join(TOP_KEYS)}")
    if "base" not in data:
        raise StudyError(f"{path} needs a base config (base: hover, or a YAML file)")
    overrides = data.get("set") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise StudyError(f"set must be a list of key=value strings, got {overrides!r}")
    training = data.get("training") or {}
    if not isinstance(training, dict):
        raise StudyError(f"training must be a mapping of train.* keys, got {training!r}")
    overrides = [*overrides, *(f"train.{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"
                               for key, value in training.items())]
    variants = _grid(data.get("grid"))

    seeds = data.get("seeds", 5)
    if isinstance(seeds, list):
        seeds = tuple(_int("seeds[]", s, 0) for s in seeds)
        if not seeds or len(set(seeds)) != len(seeds):
            raise StudyError(f"seeds must be distinct, got {list(seeds)}")
    else:
        seeds = tuple(range(_int("seeds", seeds, 1)))

    stress = data.get("stress") or {}
    if not isinstance(stress, dict):
        raise StudyError(f"stress must be a mapping, got {stress!r}")
    unknown = [key for key in stress if key not in STRESS_KEYS]
    if unknown:
        raise StudyError(f"unknown key 'stress.{unknown[0]}'; allowed: {', '.join(STRESS_KEYS)}")
    axes = stress.get("axes")
    if axes is not None and (not isinstance(axes, list) or not all(isinstance(a, str) for a in axes)):
        raise StudyError(f"stress.axes must be a list of axis names, got {axes!r}")
    levels = stress.get("levels") or {}
    if not isinstance(levels, dict):
        raise StudyError(f"stress.levels must be a mapping axis: [levels], got {levels!r}")
    parsed_levels = {}
    for axis, values in levels.items():
        if not isinstance(values, list) or not values or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise StudyError(f"stress.levels.{axis} must be a list of numbers, got {values!r}")
        parsed_levels[axis] = tuple(float(v) for v in values)

    names = [v.name for v in variants]
    reference = str(data.get("reference", names[0]))
    if reference not in names:
        raise StudyError(f"reference {reference!r} is not a variant; variants: {', '.join(names)}")
    learned = data.get("learned_level", 0.95)
    if isinstance(learned, bool) or not isinstance(learned, (int, float)) or not 0 <= learned <= 1:
        raise StudyError(f"learned_level must be a success rate in [0, 1], got {learned!r}")
    tune = data.get("tune") or {}
    if not isinstance(tune, dict) or any(key not in TUNE_KEYS for key in tune):
        raise StudyError(f"tune must be a mapping with the keys {', '.join(TUNE_KEYS)}, got {tune!r}")
    tune = {key: _int(f"tune.{key}", value, 1) for key, value in tune.items()}
    if tune and set(tune) != set(TUNE_KEYS):
        raise StudyError(f"tune needs both {' and '.join(TUNE_KEYS)}, got {sorted(tune)}")
    if tune and any(v.method != "rl" for v in variants):
        raise StudyError("tune tunes RL training; a study with grid.training imitate variants cannot have a tune stage")

    spec = StudySpec(path.stem, str(data["base"]), tuple(overrides), tuple(variants), seeds,
                     None if axes is None else tuple(axes), parsed_levels,
                     _int("stress.episodes", stress.get("episodes", DEFAULT_EPISODES), 1),
                     _int("stress.seed", stress.get("seed", DEFAULT_SEED), 0),
                     _int("stress.batch", stress.get("batch", 8), 1), reference, float(learned), tune)
    env_ids = set()
    for variant in spec.variants:
        try:
            config = spec.config(variant, spec.seeds[0])
            preflight(config)
            if variant.method == "imitate":
                from agents.imitate import check_imitation_config

                check_imitation_config(config)
        except ConfigError as error:
            raise StudyError(f"variant {variant.name} ({variant.base or spec.base}"
                             f"{''.join(', ' + o for o in variant.overrides)}): "
                             f"{error}") from None
        env_ids.add(config.env.id)
    if len(env_ids) > 1:
        raise StudyError(f"every variant must fly the same env for a paired stress test; got {sorted(env_ids)}")
    _check_stress(spec, env_ids.pop())
    return spec


def _check_stress(spec: StudySpec, env_id: str) -> None:
    """The axes and levels against the env (no env is built)."""
    import envs
    from envs.disturbances import Disturbances

    allowed = envs.disturbance_axes(env_id)
    for axis in [*(spec.axes or ()), *spec.levels]:
        if axis not in allowed:
            raise StudyError(f"stress: unknown axis {axis!r} for {env_id}; allowed: {', '.join(allowed)}")
    for axis, values in spec.levels.items():
        if spec.axes is not None and axis not in spec.axes:
            raise StudyError(f"stress.levels.{axis}: {axis} is not among stress.axes ({', '.join(spec.axes)})")
        for value in values:
            if axis == "ctrl_rate" and not float(value).is_integer():
                raise StudyError(f"stress.levels.ctrl_rate: {value} is not a whole number of Hz")
            try:
                Disturbances.level(axis, value)
            except ValueError as error:
                raise StudyError(f"stress.levels.{axis}: {error}") from None
