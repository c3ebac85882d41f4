"""Observation normalisation: SB3's VecNormalize while training, plain statistics in a run folder.

Training normalises with `StepDurationVecNormalize` (SB3's VecNormalize, which leaves a trailing
step-duration entry untouched for time-aware cores). A finished run also stores the observation
statistics as plain JSON (``normalization.json``: mean, variance, epsilon, clip, the normalised
keys of a Dict observation and whether the last entry is the step duration), which
`ObsNormalizer` applies exactly as VecNormalize does — so evaluating a run needs no unpickling
of code, and the statistics are readable by anyone:

    normalised = clip((obs - mean) / sqrt(var + epsilon), -clip, +clip)    (float32 result)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import VecNormalize

from agents.io import write_json

NORMALIZATION_FILE = "normalization.json"


class StepDurationVecNormalize(VecNormalize):
    """VecNormalize that leaves the last observation entry (the step duration in s) untouched.

    Time-aware cores need the true duration; normalising it would turn it into a z-score.
    """

    def _normalize_obs(self, obs: np.ndarray, obs_rms: Any) -> np.ndarray:
        normalized = super()._normalize_obs(obs, obs_rms)
        normalized[..., -1] = obs[..., -1]
        return normalized

    def _unnormalize_obs(self, obs: np.ndarray, obs_rms: Any) -> np.ndarray:
        restored = super()._unnormalize_obs(obs, obs_rms)
        restored[..., -1] = obs[..., -1]
        return restored


class FrozenRunningMeanStd(RunningMeanStd):
    """Observation statistics that `update` leaves as they are.

    `train --init-from` fine-tunes an imitated actor on the statistics it was cloned with: a
    VecNormalize holding these keeps normalising with them while its return statistics adapt.
    """

    def update(self, arr: np.ndarray) -> None:
        pass


@dataclass(frozen=True)
class ObsNormalizer:
    """Fixed observation statistics, applied like VecNormalize.normalize_obs.

    :param mean: per normalised key (``None`` for a flat Box observation), the running mean [F]
    :param var: likewise, the running variance [F]
    :param epsilon: added to the variance before the square root
    :param clip: normalised values are clipped to [-clip, clip]
    :param keep_last: the last entry is the step duration (s) and passes through unchanged
    """

    mean: dict[str | None, np.ndarray]
    var: dict[str | None, np.ndarray]
    epsilon: float
    clip: float
    keep_last: bool

    @classmethod
    def of(cls, vec_normalize: VecNormalize) -> ObsNormalizer:
        """The current observation statistics of a (StepDuration)VecNormalize."""
        rms = vec_normalize.obs_rms
        stats = {key: rms[key] for key in vec_normalize.norm_obs_keys} if isinstance(rms, dict) else {None: rms}
        return cls({k: np.array(s.mean, dtype=np.float64) for k, s in stats.items()},
                   {k: np.array(s.var, dtype=np.float64) for k, s in stats.items()},
                   float(vec_normalize.epsilon), float(vec_normalize.clip_obs),
                   isinstance(vec_normalize, StepDurationVecNormalize))

    def _apply(self, obs: np.ndarray, key: str | None) -> np.ndarray:
        normalised = np.clip((obs - self.mean[key]) / np.sqrt(self.var[key] + self.epsilon), -self.clip, self.clip)
        if self.keep_last:
            normalised[..., -1] = obs[..., -1]
        return normalised.astype(np.float32)

    def normalize_obs(self, obs: np.ndarray | dict[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
        """Normalised observations, [B, F] (or a Dict whose listed keys are normalised)."""
        if isinstance(obs, dict):
            return {key: self._apply(value, key) if key in self.mean else value for key, value in obs.items()}
        return self._apply(obs, None)

    def size(self, key: str | None = None) -> int:
        """Length of the normalised observation vector (of ``key`` in a Dict observation)."""
        return int(self.mean[key].shape[-1])

    def to_dict(self) -> dict[str, Any]:
        return {"mean": {str(k): v.tolist() for k, v in self.mean.items()},
                "var": {str(k): v.tolist() for k, v in self.var.items()},
                "dict_keys": [k for k in self.mean if k is not None],
                "epsilon": self.epsilon, "clip": self.clip, "keep_last": self.keep_last}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ObsNormalizer:
        keys = {str(k): k for k in data["dict_keys"]} if data["dict_keys"] else {"None": None}
        return cls({keys[k]: np.array(v, dtype=np.float64) for k, v in data["mean"].items()},
                   {keys[k]: np.array(v, dtype=np.float64) for k, v in data["var"].items()},
                   float(data["epsilon"]), float(data["clip"]), bool(data["keep_last"]))

    def frozen_statistics(self, key: str | None = None) -> FrozenRunningMeanStd:
        """These statistics (of ``key`` in a Dict observation) as a never-updated RunningMeanStd."""
        rms = FrozenRunningMeanStd(shape=self.mean[key].shape)
        rms.mean, rms.var = self.mean[key].copy(), self.var[key].copy()
        return rms

    def save(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> ObsNormalizer:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_pickle(cls, path: Path) -> ObsNormalizer:
        """The statistics of SB3's pickled VecNormalize (``vecnormalize.pkl``). Unpickling can run
        code: only for files of runs you trust (checkpoints have no JSON copy)."""
        import pickle

        with Path(path).open("rb") as handle:
            return cls.of(pickle.load(handle))
