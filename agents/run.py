"""The run folder: its files, and reading a finished run back (config, model, normalisation).

Whoever writes a run (``liquid-drones train`` today), a run folder ``runs/<name>/`` has one layout:

| file | what |
|---|---|
| ``config.yaml`` | the resolved configuration (`agents.config.Config`), written once at the start |
| ``model.zip`` | the final SB3 model (PPO for the ``mlp`` core, RecurrentPPO otherwise) |
| ``normalization.json`` | observation normalisation statistics as plain numbers (`agents.normalization`) |
| ``vecnormalize.pkl`` | the same statistics as SB3's pickled VecNormalize (for SB3 users) |
| ``best_model.zip``, ``best_normalization.json`` | the best periodic evaluation's model and its statistics |
| ``best_vecnormalize.pkl`` | the same statistics as SB3's pickled VecNormalize |
| ``eval.csv``, ``training_curve.png`` | periodic evaluations (`EVAL_COLUMNS`) and their plot |
| ``final_eval.json`` | the final evaluation's metrics |
| ``checkpoints/step_<N>/`` | resumable checkpoints (`agents.checkpoint`) |
| ``tb/`` | TensorBoard logs |
| ``provenance.json`` | each training session: package version, git commit, command, seeds, times (`agents.provenance`) |
| ``train.log`` | training's progress and evaluation lines, time-stamped, appended by every session |

Reading a run needs this format only, never the training code: `load_run` reads the files
without building an env, and `check_model` loads the model once to check it against the config.
Run folders hold pickled objects (SB3 stores parts of ``model.zip`` with cloudpickle; the
checkpoints keep ``vecnormalize.pkl``): loading a run can execute code, so load only runs you
trust. Evaluation reads the normalisation from ``normalization.json``, never the pickle.

`load_run` reads the final model by default; ``model="best"`` the best periodic evaluation's
(``best_model.zip`` + ``best_normalization.json``) and ``model="checkpoint"`` a checkpoint's
(``checkpoints/step_<N>/``: its normalisation exists only as SB3's ``vecnormalize.pkl``, which
is unpickled — loading a checkpoint is for runs you trust, like loading any model.zip).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agents.config import (
    LATER_KEYS,
    Config,
    ConfigError,
    config_from_dict,
    parse_override,
    read_yaml,
    schema_keys,
    set_dotted,
)
from agents.io import RowLog, replace_rows, write_text
from agents.normalization import NORMALIZATION_FILE, ObsNormalizer

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.zip"
NORMALIZER_FILE = "vecnormalize.pkl"
BEST_MODEL_FILE = "best_model.zip"
BEST_NORMALIZER_FILE = "best_vecnormalize.pkl"
BEST_NORMALIZATION_FILE = "best_normalization.json"
MODEL_CHOICES = ("final", "best", "checkpoint")  # which model of a run `load_run` reads
EVAL_FILE = "eval.csv"
CURVE_FILE = "training_curve.png"
FINAL_EVAL_FILE = "final_eval.json"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tb"
TRAIN_LOG = "train.log"
EVAL_COLUMNS = ("timesteps", "success_rate", "crash_rate", "mean_reward", "std_reward", "mean_length",
                "wall_time_s")


class RunError(ValueError):
    """A path given as a run folder is not one; the message says what is missing."""


def save_config(config: Config, path: Path) -> None:
    """Write ``config`` as YAML, atomically."""
    write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def read_run_config(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The config.yaml of a run folder, with ``key=value`` overrides applied.

    :raise ConfigError: if the file is missing, empty, cut off or invalid, naming the file
    """
    if not path.is_file():
        raise ConfigError(f"{path} not found: not a run folder written by `liquid-drones train`")
    data = read_yaml(path)
    if not data:
        raise ConfigError(f"{path} is empty: the run's configuration is lost (refusing to fall back "
                          f"to built-in defaults that would not describe its model)")
    missing = [key for key in schema_keys() if not key.startswith(LATER_KEYS) and not _has(data, key)]
    if missing:
        raise ConfigError(f"{path} lacks {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}: it is cut "
                          f"off or was edited (a run's config.yaml holds every key; refusing to fill in defaults "
                          f"that may not describe its model)")
    for key, value in map(parse_override, overrides):
        set_dotted(data, key, value)
    return config_from_dict(data)


def _has(data: dict[str, Any], dotted: str) -> bool:
    section, key = dotted.split(".", 1)
    return isinstance(data.get(section), dict) and key in data[section]


def uses_time_input(config: Config) -> bool:
    """Whether the policy receives step durations (``policy.time_input``; ``auto``: time-aware cores)."""
    if config.policy.time_input != "auto":
        return bool(config.policy.time_input)
    if config.policy.core == "mlp":
        return False
    from policies import build_core

    return build_core(config.policy.core, 4, **config.policy.core_kwargs).time_aware


def algorithm_class(config: Config) -> type:
    """The SB3 algorithm class that saved (and loads) the run's model."""
    if config.policy.core == "mlp":
        from stable_baselines3 import PPO

        return PPO
    from sb3_contrib import RecurrentPPO

    return RecurrentPPO


@dataclass(frozen=True)
class Run:
    """A finished run folder's contents, as bytes (a worker on another machine needs no shared
    filesystem)."""

    path: Path
    config: Config
    model: bytes
    normalizer: ObsNormalizer | None
    source: str = "final"  # which model: "final", "best" or "checkpoint <step>"


def load_run(run_dir: str | Path, model: str = "final", step: int | None = None) -> Run:
    """Read a run: config.yaml, the chosen model and, when configured, its normalisation.

    :param model: ``final`` (model.zip + normalization.json), ``best`` (best_model.zip +
        best_normalization.json) or ``checkpoint`` (``step``, default the newest)
    :raise RunError: if ``run_dir`` is missing or is not a run folder, or lacks the chosen model
    """
    if model not in MODEL_CHOICES:
        raise RunError(f"unknown model {model!r}; allowed: {', '.join(MODEL_CHOICES)}")
    if step is not None and model != "checkpoint":
        raise RunError(f"a step ({step}) chooses a checkpoint: use it with model 'checkpoint', not {model!r}")
    path = Path(run_dir)
    if not path.is_dir():
        raise RunError(f"run folder {str(run_dir)!r} not found (expected a folder written by "
                       f"`liquid-drones train`, e.g. runs/<name>)")
    try:
        config = read_run_config(path / CONFIG_FILE)
    except ConfigError as error:
        raise RunError(f"{path} is not a usable run folder: {error}") from None
    if model == "checkpoint":
        return _load_checkpoint(path, config, step)
    model_file, stats = (path / MODEL_FILE, path / NORMALIZATION_FILE) if model == "final" else \
        (path / BEST_MODEL_FILE, path / BEST_NORMALIZATION_FILE)
    if not model_file.is_file():
        raise RunError(f"{path} has no {model_file.name}: " + (
            f"training has not finished (a checkpoint under {path / CHECKPOINT_DIR} can be resumed with "
            f"`liquid-drones train --resume {path}`)" if model == "final" else "no periodic evaluation was run"))
    normalizer = None
    if config.env.normalize_obs:
        if model == "best" and not stats.is_file() and (path / BEST_NORMALIZER_FILE).is_file():
            stats = path / BEST_NORMALIZER_FILE  # a run written before best_normalization.json existed
        normalizer = _read_normalizer(stats, path)
    return Run(path.resolve(), config, model_file.read_bytes(), normalizer, model)


def _load_checkpoint(path: Path, config: Config, step: int | None) -> Run:
    """A checkpoint's model and normalisation (`agents.checkpoint.verify` checks its files)."""
    from agents.checkpoint import CheckpointError, list_checkpoints, verify

    found = {int(p.name.rsplit("_", 1)[1]): p for p in list_checkpoints(path / CHECKPOINT_DIR)}
    if not found:
        raise RunError(f"{path} has no checkpoints under {CHECKPOINT_DIR}/")
    if step is None:
        step = max(found)
    if step not in found:
        raise RunError(f"{path} has no checkpoint at step {step}; it has steps {', '.join(map(str, sorted(found)))}")
    try:
        checkpoint = verify(found[step])
    except CheckpointError as error:
        raise RunError(str(error)) from None
    normalizer = None
    if config.env.normalize_obs:
        normalizer = _read_normalizer(checkpoint.path / NORMALIZER_FILE, path)
    return Run(path.resolve(), config, checkpoint.model.read_bytes(), normalizer, f"checkpoint {step}")


def _read_normalizer(file: Path, run: Path) -> ObsNormalizer:
    """Statistics from ``normalization.json``-style JSON, or SB3's pickled VecNormalize (``.pkl``)."""
    if not file.is_file():
        raise RunError(f"{run} has no {file.relative_to(run)}, but its config normalises observations")
    try:
        return ObsNormalizer.from_pickle(file) if file.suffix == ".pkl" else ObsNormalizer.load(file)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError) as error:
        raise RunError(f"{file} is unreadable: {error}") from None


def load_model(config: Config, model: bytes, source: str | Path) -> Any:
    """The SB3 model saved in ``model`` (bytes of a model.zip), on the CPU.

    :raise RunError: naming ``source`` if the bytes are not a loadable model
    """
    import io

    try:
        return algorithm_class(config).load(io.BytesIO(model), device="cpu")
    except Exception as error:  # SB3 raises many kinds on a bad zip
        raise RunError(f"{source} is not a loadable {algorithm_class(config).__name__} model: "
                       f"{type(error).__name__}: {error}") from None


def check_model(run: Run) -> None:
    """Load the run's model once and check it against config.yaml and the normalisation.

    :raise RunError: naming the file, if the model is unreadable, its core differs from the
        config's, or the normalisation does not fit its observations
    """
    model = load_model(run.config, run.model, run.path / MODEL_FILE)
    policy = model.policy
    saved_core = getattr(policy, "core_name", "mlp")
    if saved_core != run.config.policy.core:
        raise RunError(f"{run.path / MODEL_FILE} holds a {saved_core!r} policy, but {run.path / CONFIG_FILE} "
                       f"says policy.core {run.config.policy.core!r}")
    if run.normalizer is not None:
        space = policy.observation_space
        shape = space["state"].shape if hasattr(space, "spaces") else space.shape
        key = "state" if hasattr(space, "spaces") else None
        if key not in run.normalizer.mean or run.normalizer.size(key) != shape[-1]:
            raise RunError(f"{run.path / NORMALIZATION_FILE} does not fit the model's observations "
                           f"(shape {shape})")


# --- eval.csv ---------------------------------------------------------------------------------
def read_eval_rows(path: Path) -> list[dict[str, float]]:
    """The complete rows of an eval.csv as numbers (a row cut short by a crash is left out)."""
    rows = []
    for row in RowLog.read(path):
        try:
            rows.append({k: float(v) if v not in ("", None) else math.nan for k, v in row.items()})
        except ValueError:
            continue
    return rows


def append_eval_row(path: Path, row: dict[str, Any]) -> None:
    """Append one evaluation to eval.csv (created with its header; a cut-off last line is repaired)."""
    RowLog(path, EVAL_COLUMNS, append=True).write([row])


def truncate_eval_rows(path: Path, max_timesteps: int) -> None:
    """Keep the complete evaluation rows up to ``max_timesteps`` (resuming from a checkpoint)."""
    if not path.exists():
        return
    rows = [r for r in read_eval_rows(path) if r["timesteps"] <= max_timesteps]
    replace_rows(path, EVAL_COLUMNS,
                 ({k: int(v) if k == "timesteps" else v for k, v in r.items()} for r in rows))
