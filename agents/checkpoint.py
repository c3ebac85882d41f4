"""Atomic training checkpoints and their verification.

A checkpoint is a folder ``checkpoints/step_<N>/`` holding everything an exact resume needs:

- ``model.zip``: weights, optimiser state and the timestep counter (SB3's own format);
- ``vecnormalize.pkl``: observation and return normalisation statistics (when used);
- ``rng.json``: Python, NumPy and torch random-generator states (plain numbers, no pickle);
- ``manifest.json``: the step and a SHA-256 of every file, written last.

The folder is written under a temporary name and renamed into place with `os.replace`, so a run
killed mid-write leaves either the previous checkpoints or a complete new one, never half of one.
A checkpoint whose manifest is missing or whose files do not match it is reported as corrupt.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm

from agents.config import Config
from agents.io import umask

MANIFEST = "manifest.json"
PREFIX = "step_"
RNG_FILE = "rng.json"


#: Keys that may differ between a run's saved config and a ``--resume`` (the rest fix the model,
#: the data it was trained on or its optimiser).
RESUMABLE_PREFIXES = (
    "train.total_timesteps",
    "train.progress_bar",
    "train.torch_threads",
    "train.device",
    "train.stop_at_success",
    "train.max_minutes",
    "env.vec_env",
    "imitation.dagger_rounds",
    "imitation.eval_every",
    "eval.",
    "checkpoint.",
)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt."""


def flatten_keys(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as one level with dotted keys (``{"algo": {"gamma": 0.99}}`` -> ``{"algo.gamma": 0.99}``)."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(flatten_keys(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def incompatible_keys(saved: Config, requested: Config) -> list[str]:
    """Keys whose change would make a resumed run a different experiment."""
    old, new = flatten_keys(saved.to_dict()), flatten_keys(requested.to_dict())
    return sorted(
        key
        for key in old.keys() | new.keys()
        if old.get(key) != new.get(key) and not key.startswith(RESUMABLE_PREFIXES)
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rng_state() -> dict[str, Any]:
    """The global random-generator states that training draws from, as JSON-able numbers."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "torch": th.get_rng_state().tolist()}


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    th.set_rng_state(th.tensor(state["torch"], dtype=th.uint8))


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint folder."""

    path: Path
    step: int

    @property
    def model(self) -> Path:
        return self.path / "model.zip"

    @property
    def vecnormalize(self) -> Path | None:
        path = self.path / "vecnormalize.pkl"
        return path if path.exists() else None

    def load_rng(self) -> dict[str, Any]:
        return json.loads((self.path / RNG_FILE).read_text())


def save_checkpoint(model: BaseAlgorithm, directory: Path, keep: int, step: int | None = None,
                    extras: dict[str, Callable[[Path], Any]] | None = None) -> Checkpoint:
    """Write a checkpoint of ``model`` (and its VecNormalize) at ``step`` (default: its current
    timestep); keep the newest ``keep``. ``extras`` maps further file names to functions that write
    them (`agents.imitate` adds its dataset, optimiser and progress)."""
    directory.mkdir(parents=True, exist_ok=True)
    step = model.num_timesteps if step is None else step
    final = directory / f"{PREFIX}{step:012d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=directory))
    os.chmod(tmp, 0o777 & ~umask())  # a checkpoint folder as readable as any new folder (mkdtemp makes 0700)
    try:
        model.save(tmp / "model.zip")
        normalizer = model.get_vec_normalize_env()
        if normalizer is not None:
            normalizer.save(str(tmp / "vecnormalize.pkl"))
        (tmp / RNG_FILE).write_text(json.dumps(rng_state()))
        for name, write in (extras or {}).items():
            write(tmp / name)
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
        (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    for old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old)
    return Checkpoint(final, step)


def remove_partial_checkpoints(directory: Path) -> list[Path]:
    """Delete the temporary folders that writes killed midway left behind; return them.

    Call it only while holding the run folder's lock (no other writer is in the middle of one).
    """
    partial = [p for p in directory.glob(f".{PREFIX}*") if p.is_dir()] if directory.is_dir() else []
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return partial


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint folders, oldest first (temporary folders of interrupted writes are skipped)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def verify(path: Path) -> Checkpoint:
    """Check a checkpoint folder against its manifest.

    :raise CheckpointError: naming the folder and the missing or mismatching file
    """
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        step, files = int(manifest["step"]), dict(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"checkpoint {path} is corrupt: unreadable {MANIFEST} ({error})") from None
    for name in ("model.zip", RNG_FILE):
        if name not in files:
            raise CheckpointError(f"checkpoint {path} is corrupt: {MANIFEST} lists no {name}")
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} is corrupt: {name} is missing")
        if _sha256(file) != expected:
            raise CheckpointError(f"checkpoint {path} is corrupt: {name} does not match its checksum")
    return Checkpoint(path, step)


def latest_checkpoint(directory: Path) -> Checkpoint:
    """The newest checkpoint in ``directory``, verified.

    :raise CheckpointError: if there is none, or the newest one is corrupt (it is not silently
        skipped: resuming from an older one would repeat training the user may not expect)
    """
    found = list_checkpoints(directory)
    if not found:
        raise CheckpointError(f"no checkpoint in {directory}: nothing to resume")
    return verify(found[-1])
