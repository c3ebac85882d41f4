"""Use a trained policy from Python: load a run folder, build its env, fly it step by step.

    from agents import load_policy

    policy = load_policy("runs/main")
    env = policy.make_env()                 # the env it was trained on (+ step duration if used)
    obs, info = env.reset(seed=0)
    policy.reset()                          # new episode: recurrent state back to its start
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy.act(obs))
        done = terminated or truncated

`load_policy` reads the run folder (`agents.run.load_run`: config.yaml, model.zip and the plain
JSON normalisation statistics, never the pickle) and checks the model against the config.
`TrainedPolicy.act` normalises the observation, runs the policy (PPO for the ``mlp`` core,
RecurrentPPO otherwise) and carries the recurrent state between calls; `TrainedPolicy.step` is
the same without hidden state, for callers who keep the state themselves (many episodes at once).
Observations are one env's ([F], or a Dict of such) or a batch ([B, F]); actions come back
in the same form ([4] or [B, 4], each in [-1, 1]).

Loading a model.zip unpickles parts of it (SB3 uses cloudpickle): load only runs you trust.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from agents.flight import AgentSpec, agent_of_run, make_env
from agents.run import Run, check_model, load_model, load_run

Observation = np.ndarray | dict[str, np.ndarray]


@dataclass
class TrainedPolicy:
    """A finished run's policy with its observation normalisation and its env factory.

    :param run: the run folder's contents (`agents.run.Run`)
    :param spec: the run as an agent (env id, env kwargs, whether the step duration is appended)
    :param model: the SB3 model (``PPO`` or ``RecurrentPPO``) on the CPU
    """

    run: Run
    spec: AgentSpec
    model: Any
    _state: Any = field(default=None, repr=False)
    _starting: bool = field(default=True, repr=False)

    @property
    def recurrent(self) -> bool:
        """Whether the policy has memory (every core but ``mlp``)."""
        return self.run.config.policy.core != "mlp"

    @property
    def observation_space(self) -> gym.Space:
        return self.model.observation_space

    def make_env(self, disturbances: dict[str, Any] | None = None, render: bool = False) -> gym.Env:
        """The env the run was trained on (its id and kwargs, `envs.wrappers.AppendStepDuration`
        for time-aware cores), with ``disturbances`` (e.g. ``{"wind": 3.0}``, m/s) in place of the
        training-time randomisation; ``render`` gives ``env.render()`` RGB frames."""
        return make_env(self.spec, disturbances, render)

    def reset(self) -> None:
        """Forget the recurrent state: the next `act` starts a new episode."""
        self._state, self._starting = None, True

    def act(self, obs: Observation, deterministic: bool = True) -> np.ndarray:
        """The action for ``obs``, carrying the recurrent state from the previous call."""
        action, self._state = self.step(obs, self._state, self._starting, deterministic)
        self._starting = False
        return action

    def step(self, obs: Observation, state: Any, episode_start: bool | np.ndarray,
             deterministic: bool = True) -> tuple[np.ndarray, Any]:
        """``(action, next_state)`` for ``obs`` given ``state`` (None at the first step).

        :param episode_start: True (or per row of a batch, [B]) where ``obs`` is an episode's
            first observation: the state is reset to the core's initial state there
        :return: the action ([4] or [B, 4]) and the state to pass to the next call (None for mlp)
        """
        single = _is_single(obs, self.observation_space)
        batch = _add_batch(obs) if single else obs
        rows = len(next(iter(batch.values())) if isinstance(batch, dict) else batch)
        starts = np.broadcast_to(np.asarray(episode_start, dtype=bool), (rows,)).copy()
        if self.run.normalizer is not None:
            batch = self.run.normalizer.normalize_obs(batch)
        actions, state = self.model.predict(batch, state=state, episode_start=starts, deterministic=deterministic)
        return (actions[0] if single else actions), state


def load_policy(run_dir: str | Path) -> TrainedPolicy:
    """The policy of the finished run in ``run_dir``, ready to fly (see the module docstring).

    :raise agents.run.RunError: naming the file, if the folder is not a usable finished run
    """
    run = load_run(run_dir)
    check_model(run)
    return TrainedPolicy(run, agent_of_run(run), load_model(run.config, run.model, run.path))


def _is_single(obs: Observation, space: gym.Space) -> bool:
    if isinstance(obs, dict):
        return np.shape(obs["state"]) == space["state"].shape
    return np.shape(obs) == space.shape


def _add_batch(obs: Observation) -> Observation:
    if isinstance(obs, dict):
        return {key: np.asarray(value)[None] for key, value in obs.items()}
    return np.asarray(obs)[None]
