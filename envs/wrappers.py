"""Gymnasium wrappers of the suite's envs."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

MAX_STEP_DURATION = 1.0  # s, upper bound of the appended observation entry


def _with_duration(space: gym.spaces.Box) -> gym.spaces.Box:
    return gym.spaces.Box(np.append(space.low, 0.0).astype(np.float32),
                          np.append(space.high, MAX_STEP_DURATION).astype(np.float32),
                          dtype=np.float32)


class AppendStepDuration(gym.Wrapper):
    """Append the true duration of the last env step (s, ``info["dt"]``) as the last observation
    entry, so a time-aware core (CfC, LTC) can split it off as its elapsed time.

    After ``reset`` the entry is the nominal control period ``1 / ctrl_freq``.
    Observation shape: ``(F,) -> (F + 1,)``; for a Dict observation (camera) the ``state``
    entry grows that way and the image is untouched.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.observation_space
        if isinstance(space, gym.spaces.Dict) and "state" in space.spaces:
            self.observation_space = gym.spaces.Dict(
                {**space.spaces, "state": _with_duration(space["state"])})
        elif isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
            self.observation_space = _with_duration(space)
        else:
            raise ValueError(f"AppendStepDuration needs a flat Box or a Dict with a 'state' Box, "
                             f"got {space}")

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        return self._append(obs, info["dt"]), info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._append(obs, info["dt"]), reward, terminated, truncated, info

    @staticmethod
    def _append(obs: np.ndarray | dict[str, np.ndarray], dt: float) -> Any:
        if isinstance(obs, dict):
            return {**obs, "state": np.append(obs["state"], np.float32(dt)).astype(np.float32)}
        return np.append(obs, np.float32(dt)).astype(np.float32)
