"""Training configuration: typed sections, YAML loading, ``--set`` overrides and validation.

A config is named after its task file in ``agents/configs/`` (``hover``, ``waypoints``), optionally
followed by a core (``hover-lstm``, ``waypoints-ncp-ltc``). A task file holds one full
configuration plus a ``core_overrides`` block per core, merged when that core is chosen (the
file's ``policy.core_kwargs`` belong to its own core and are dropped when another is chosen).
Precedence, lowest first: the defaults below, the task file, its ``core_overrides[core]``, then
``--set key=value`` (dotted keys, values parsed as YAML).

Loading checks every key, type and range against the schema, and raises `ConfigError` naming
the key and what is allowed. Checks that need to build an env or a core (an unknown env id or
constructor argument, a wrong core keyword) are `agents.preflight.preflight`, which `train` runs
before any work; reading a finished run does not repeat them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from policies import CORE_NAMES

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = "hover"

class ConfigError(ValueError):
    """A configuration problem, raised before any work starts; the message names the key."""


Check = Callable[[str, Any], Any]


def _int(minimum: int | None = None) -> Check:
    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(f"{key} must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise ConfigError(f"{key} must be >= {minimum}, got {value}")
        return value

    return check


def _float(minimum: float | None = None, maximum: float | None = None, optional: bool = False) -> Check:
    def check(key: str, value: Any) -> float | None:
        if value is None and optional:
            return None
        try:
            if isinstance(value, bool):
                raise TypeError
            number = float(value)  # YAML 1.1 reads "3e-4" as a string
        except (TypeError, ValueError):
            suffix = " or null" if optional else ""
            raise ConfigError(f"{key} must be a number{suffix}, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key} must be finite, got {value!r}")
        if minimum is not None and number < minimum:
            raise ConfigError(f"{key} must be >= {minimum}, got {number}")
        if maximum is not None and number > maximum:
            raise ConfigError(f"{key} must be <= {maximum}, got {number}")
        return number

    return check


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def _choice(*allowed: Any) -> Check:
    def check(key: str, value: Any) -> Any:
        if value not in allowed:
            names = ", ".join(str(a).lower() if isinstance(a, bool) else str(a) for a in allowed)
            raise ConfigError(f"{key}: {value!r} is not allowed; allowed values: {names}")
        return value

    return check


def _str(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be a non-empty string, got {value!r}")
    return value


def _optional_str(key: str, value: Any) -> str | None:
    return None if value is None else _str(key, value)


def _mapping(key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{key} must be a mapping of names to values, got {value!r}")
    return dict(value)


def _layers(key: str, value: Any) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise ConfigError(f"{key} must be a list of positive layer sizes, e.g. [64, 64], got {value!r}")
    return list(value)


def _net_arch(key: str, value: Any) -> list[int] | dict[str, list[int]]:
    if isinstance(value, dict):
        if set(value) != {"pi", "vf"}:
            raise ConfigError(f"{key} as a mapping needs exactly the keys pi and vf, got {sorted(value)}")
        return {head: _layers(f"{key}.{head}", layers) for head, layers in value.items()}
    return _layers(key, value)


def _option(default: Any, check: Check, doc: str) -> Any:
    """A config field: its default, its validator and a one-line description."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"check": check, "doc": doc})
    return field(default=default, metadata={"check": check, "doc": doc})


@dataclass
class EnvConfig:
    id: str = _option("LiquidDrones/Hover-v0", _str, "Gymnasium id (registered by `import envs`)")
    kwargs: dict = _option({}, _mapping, "constructor keyword arguments (action, ctrl_freq, ...)")
    n_envs: int = _option(8, _int(1), "parallel training envs")
    vec_env: str = _option("auto", _choice("auto", "subproc", "dummy"), "auto: subproc when n_envs > 1")
    normalize_obs: bool = _option(True, _bool, "VecNormalize observations (never the step duration)")
    normalize_reward: bool = _option(True, _bool, "VecNormalize rewards")
    clip_obs: float = _option(10.0, _float(minimum=0.0), "clip normalised observations to +-clip_obs")


@dataclass
class PolicyConfig:
    core: str = _option("ncp-cfc", _choice(*CORE_NAMES), "memory core")
    core_kwargs: dict = _option({}, _mapping, "build_core keyword arguments (hidden_size, units, ...)")
    critic: str = _option("separate", _choice("separate", "shared", "mlp"), "critic memory")
    time_input: Any = _option("auto", _choice("auto", True, False), "feed true step durations; auto: time-aware cores")
    net_arch: Any = _option([64], _net_arch, "MLP head after the core (the whole net for mlp)")
    activation: str = _option("tanh", _choice("tanh", "relu", "elu", "silu"), "MLP activation")
    log_std_init: float = _option(0.0, _float(), "initial log std of the Gaussian actions")
    ortho_init: bool = _option(True, _bool, "orthogonal initialisation of the MLP layers")
    encoder: str = _option("auto", _choice("auto", "flatten", "conv"),
                           "observation encoder; auto: conv head for camera (Dict) observations")


@dataclass
class AlgoConfig:
    learning_rate: float = _option(3e-4, _float(minimum=0.0), "Adam learning rate")
    lr_schedule: str = _option("constant", _choice("constant", "linear"), "linear: decays to 0 at the end")
    n_steps: int = _option(256, _int(1), "steps per env per rollout")
    batch_size: int = _option(512, _int(2), "minibatch size (transitions)")
    n_epochs: int = _option(10, _int(1), "passes over each rollout")
    gamma: float = _option(0.99, _float(0.0, 1.0), "discount")
    gae_lambda: float = _option(0.95, _float(0.0, 1.0), "GAE lambda")
    clip_range: float = _option(0.2, _float(minimum=0.0), "PPO clip range")
    ent_coef: float = _option(0.0, _float(minimum=0.0), "entropy bonus")
    vf_coef: float = _option(0.5, _float(minimum=0.0), "value loss weight")
    max_grad_norm: float = _option(0.5, _float(minimum=0.0), "gradient clipping")
    target_kl: Any = _option(None, _float(minimum=0.0, optional=True), "early stop on KL (null: off)")


@dataclass
class TrainConfig:
    total_timesteps: int = _option(1_000_000, _int(1), "env steps (rounded up to whole rollouts of n_steps x n_envs)")
    seed: int = _option(0, _int(0), "seed of envs, weights and sampling")
    device: str = _option("cpu", _choice("cpu", "cuda", "auto"), "torch device")
    torch_threads: int = _option(1, _int(0), "torch threads in the learner (0: torch's default)")
    progress_bar: bool = _option(True, _bool, "show a progress bar (plain progress lines when not a terminal)")
    stop_at_success: Any = _option(None, _float(minimum=0.0, maximum=1.0, optional=True),
                                   "stop at the first periodic evaluation with at least this success rate "
                                   "(null: train the full budget)")
    max_minutes: Any = _option(None, _float(minimum=0.0, optional=True),
                               "stop at the first rollout boundary after this many minutes (null: no limit)")
    init_from: Any = _option(None, _optional_str, "RL only: start from this imitated run folder's actor and "
                             "normalisation (null: from scratch; `train --init-from`)")
    critic_warmup_rollouts: int = _option(2, _int(0), "with init_from: rollouts of value-only updates "
                                          "(actor frozen) before RL updates start")


@dataclass
class EvalConfig:
    freq: int = _option(50_000, _int(0), "evaluate every N env steps (0: never)")
    n_episodes: int = _option(20, _int(1), "episodes per periodic evaluation")
    final_episodes: int = _option(100, _int(0), "episodes of the final evaluation (0: none)")
    deterministic: bool = _option(True, _bool, "evaluate the mean action")


@dataclass
class ImitationConfig:
    """`liquid-drones imitate`: behaviour cloning on expert sequences, then DAgger rounds."""

    demo_episodes: int = _option(64, _int(1), "expert episodes of round 0 (behaviour cloning)")
    heldout_episodes: int = _option(4, _int(1), "further expert episodes never trained on (held-out action error)")
    action_noise: float = _option(0.1, _float(minimum=0.0), "std of Gaussian noise added to the flown actions "
                                  "while collecting (state coverage; labels stay the expert's), action units")
    randomize: bool = _option(True, _bool, "collect under env.kwargs.disturbances ranges (false: nominal)")
    epochs: int = _option(20, _int(1), "passes over the aggregated dataset per round")
    batch_sequences: int = _option(8, _int(1), "parallel sequence streams per gradient step")
    chunk_length: int = _option(32, _int(1), "steps per truncated back-propagation window")
    learning_rate: float = _option(2e-3, _float(minimum=0.0), "Adam learning rate of the actor")
    max_grad_norm: float = _option(1.0, _float(minimum=0.0), "gradient clipping (0: off)")
    dagger_rounds: int = _option(4, _int(0), "DAgger rounds after behaviour cloning (0: behaviour cloning only)")
    episodes_per_round: int = _option(32, _int(1), "episodes flown (and labelled by the expert) per DAgger round")
    beta: float = _option(0.5, _float(0.0, 1.0), "DAgger round 1: probability that a step flies the expert's action")
    beta_decay: float = _option(0.5, _float(0.0, 1.0), "beta of round k = beta x beta_decay^(k-1)")
    eval_every: int = _option(10, _int(0), "evaluate every N epochs (0: only the final evaluation)")


@dataclass
class CheckpointConfig:
    freq: int = _option(100_000, _int(0), "checkpoint every N env steps (0: never)")
    keep: int = _option(2, _int(1), "newest checkpoints kept")


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    imitation: ImitationConfig = field(default_factory=ImitationConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def rollout_size(self) -> int:
        """Env steps per PPO update (n_steps x n_envs)."""
        return self.algo.n_steps * self.env.n_envs


_SECTION_CLASSES = {f.name: type(getattr(Config(), f.name)) for f in dataclasses.fields(Config)}


def _build(data: dict[str, Any]) -> Config:
    """Validate a nested mapping against the schema and build the `Config`."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    sections = {}
    for name, values in data.items():
        if name not in _SECTION_CLASSES:
            raise ConfigError(f"unknown key {name!r}; allowed sections: {', '.join(_SECTION_CLASSES)}")
        cls = _SECTION_CLASSES[name]
        if not isinstance(values, dict):
            raise ConfigError(f"{name} must be a mapping, got {values!r}")
        fields_ = {f.name: f for f in dataclasses.fields(cls)}
        checked = {}
        for key, value in values.items():
            if key not in fields_:
                raise ConfigError(f"unknown key '{name}.{key}'; allowed keys in {name}: {', '.join(fields_)}")
            checked[key] = fields_[key].metadata["check"](f"{name}.{key}", value)
        sections[name] = cls(**checked)
    config = Config(**sections)
    _check_consistency(config)
    return config


def _check_consistency(config: Config) -> None:
    if config.algo.batch_size > config.rollout_size:
        raise ConfigError(
            f"algo.batch_size ({config.algo.batch_size}) must be <= algo.n_steps x env.n_envs "
            f"({config.rollout_size})"
        )
    if config.train.stop_at_success is not None and not config.eval.freq:
        raise ConfigError("train.stop_at_success needs periodic evaluations; set eval.freq > 0 or train.stop_at_success=null")
    if config.policy.core == "mlp" and config.policy.critic != "separate":
        raise ConfigError("policy.critic: the mlp core has no memory to share; allowed value for mlp: separate")
    if config.policy.core == "mlp" and config.policy.time_input is True:
        raise ConfigError("policy.time_input: the mlp core is not time-aware; allowed values for mlp: auto, false")


def parse_override(text: str) -> tuple[str, Any]:
    """``"algo.n_steps=128"`` -> ``("algo.n_steps", 128)`` (the value is parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value with a dotted key (e.g. algo.n_steps=128), got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {error}") from None
    return key.strip(), value


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data["a"]["b"]["c"] = value`` for ``key == "a.b.c"``, creating mappings on the way."""
    *parents, leaf = key.split(".")
    node = data
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parents[: i + 1])} is not a section")
        node = child
    node[leaf] = value


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def available_configs() -> list[str]:
    """Names `load_config` accepts: every task file, alone and followed by each core."""
    tasks = sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))
    return tasks + [f"{task}-{core}" for task in tasks for core in CORE_NAMES]


def _resolve(name_or_path: str) -> tuple[Path, str | None]:
    """A config name or YAML path -> (file, core chosen by the name or None)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path, None
    if (CONFIG_DIR / f"{name_or_path}.yaml").is_file():
        return CONFIG_DIR / f"{name_or_path}.yaml", None
    for core in CORE_NAMES:  # task names may contain hyphens too (forest-camera-lstm)
        task = name_or_path.removesuffix(f"-{core}")
        if task != name_or_path and (CONFIG_DIR / f"{task}.yaml").is_file():
            return CONFIG_DIR / f"{task}.yaml", core
    raise ConfigError(f"unknown config {name_or_path!r}; allowed: {', '.join(available_configs())} or a .yaml file")


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections")
    return data


def load_config(name_or_path: str = DEFAULT_CONFIG, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load, merge and validate a configuration.

    :param name_or_path: a config name (``hover``, ``hover-lstm``; see `available_configs`) or a
        YAML file
    :param overrides: ``key=value`` strings with dotted keys, applied last
    :raise ConfigError: on any unknown key, core or bad value, naming the key
    """
    path, named_core = _resolve(name_or_path)
    data = read_yaml(path)
    core_overrides = _mapping("core_overrides", data.pop("core_overrides", None))
    for core, block in core_overrides.items():
        if core not in CORE_NAMES:
            raise ConfigError(f"core_overrides: unknown core {core!r}; allowed: {', '.join(CORE_NAMES)}")
        _mapping(f"core_overrides.{core}", block)

    parsed = [parse_override(text) for text in overrides]
    file_core = data.get("policy", {}).get("core", PolicyConfig.core)
    core = next((value for key, value in parsed if key == "policy.core"), named_core or file_core)
    _choice(*CORE_NAMES)("policy.core", core)

    if core != file_core:  # the file's core_kwargs belong to its own core
        data.get("policy", {}).pop("core_kwargs", None)
    data = _merge(data, core_overrides.get(core) or {})
    data.setdefault("policy", {})["core"] = core
    for key, value in parsed:
        set_dotted(data, key, value)
    return _build(data)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Validate a mapping as written by `Config.to_dict` (e.g. a run's config.yaml)."""
    return _build(copy.deepcopy(data))


#: Keys (or prefixes) added after run folders were first written: a run's config.yaml may lack them (their
#: defaults then apply); every other key must be there.
LATER_KEYS = ("train.stop_at_success", "train.max_minutes", "train.init_from", "train.critic_warmup_rollouts",
              "imitation.")


def schema_keys() -> list[str]:
    """Every ``section.key`` of the schema."""
    return [f"{section}.{f.name}" for section, cls in _SECTION_CLASSES.items() for f in dataclasses.fields(cls)]


def describe_schema() -> str:
    """Every key with its default and meaning (for ``--help`` and error messages)."""
    lines = []
    for section, cls in _SECTION_CLASSES.items():
        for f in dataclasses.fields(cls):
            default = getattr(cls(), f.name)
            lines.append(f"{section}.{f.name} = {default!r}: {f.metadata['doc']}")
    return "\n".join(lines)
