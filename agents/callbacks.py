"""Training callbacks: rollout statistics, periodic evaluation with best-model saving, checkpoints.

Evaluation and checkpoints happen at rollout boundaries (right after a PPO update), so a
checkpoint holds exactly the weights, optimiser and counters an uninterrupted run would have there.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, sync_envs_normalization

from agents.checkpoint import atomic_write, save_checkpoint
from agents.metrics import EpisodeResult, Summary

EVAL_COLUMNS = ("timesteps", "success_rate", "crash_rate", "mean_reward", "std_reward", "mean_length", "wall_time_s")


@dataclass(frozen=True)
class EvalSummary(Summary):
    """`agents.metrics.Summary` of evaluation episodes, plus the spread of their rewards (eval.csv)."""

    std_reward: float = math.nan

    @classmethod
    def of(cls, episodes: Sequence[EpisodeResult]) -> EvalSummary:
        summary = super().of(episodes)
        return dataclasses.replace(summary, std_reward=float(np.std([e.reward for e in episodes])))

    @property
    def mean_length(self) -> float:
        """Mean episode length in env steps."""
        return self.mean_steps

    def as_dict(self) -> dict[str, float]:
        return {**super().as_dict(), "mean_length": self.mean_length}

    def __str__(self) -> str:
        return f"{super().__str__()}; mean reward {self.mean_reward:.2f}, mean length {self.mean_length:.0f} steps"


def evaluate_episodes(
    model: BaseAlgorithm, venv: VecEnv, n_episodes: int, deterministic: bool = True, seed: int | None = None
) -> list[EpisodeResult]:
    """Run ``n_episodes`` full episodes, spread evenly over the envs of ``venv``.

    Recurrent state is carried step by step and reset where an episode ends. Each env runs a fixed
    number of episodes (as SB3's evaluate_policy does) so that short episodes are not over-counted.
    An episode's ``seed`` field is its index in the returned list; its outcome is exactly one of
    success, crash (without success) and timeout (neither).
    """
    n_envs = venv.num_envs
    targets = np.array([(n_episodes + i) // n_envs for i in range(n_envs)])
    counts = np.zeros(n_envs, dtype=int)
    returns = np.zeros(n_envs)
    lengths = np.zeros(n_envs, dtype=int)
    times = np.zeros(n_envs)
    changes = np.zeros(n_envs)  # sum of |a_t - a_{t-1}| over the episode's steps and action entries
    previous: np.ndarray | None = None
    episodes: list[EpisodeResult] = []
    if seed is not None:
        venv.seed(seed)
    obs = venv.reset()
    shortest = venv.env_method("shortest_path_length")
    state = None
    starts = np.ones(n_envs, dtype=bool)
    while (counts < targets).any():
        actions, state = model.predict(obs, state=state, episode_start=starts, deterministic=deterministic)
        flat = np.asarray(actions, dtype=np.float64).reshape(n_envs, -1)
        if previous is not None:
            changes += np.where(starts, 0.0, np.abs(flat - previous).sum(axis=1))
        previous = flat
        obs, rewards, dones, infos = venv.step(actions)
        returns += rewards
        lengths += 1
        times += [info.get("dt", math.nan) for info in infos]
        for i in np.flatnonzero(dones):
            if counts[i] < targets[i]:
                info = infos[i]
                success = bool(info.get("is_success", False))
                crashed = bool(info.get("crashed", False)) and not success
                steps = int(lengths[i])
                episodes.append(EpisodeResult(
                    seed=len(episodes), success=success, crashed=crashed, timeout=not (success or crashed),
                    steps=steps, time_s=float(times[i]), path_length_m=float(info.get("path_length", math.nan)),
                    shortest_path_m=shortest[i], final_distance_m=float(info.get("distance_to_goal", math.nan)),
                    action_smoothness=float(changes[i] / ((steps - 1) * flat.shape[1])) if steps > 1 else math.nan,
                    reward=float(returns[i])))
                counts[i] += 1
                shortest[i] = venv.env_method("shortest_path_length", indices=[i])[0]  # of the next episode
            returns[i], lengths[i], times[i], changes[i] = 0.0, 0, 0.0, 0.0
        starts = dones
    return episodes


class RolloutStatsCallback(BaseCallback):
    """Log crash and timeout rates of the last ``window`` training episodes as ``rollout/*``.

    SB3 already logs ``rollout/success_rate`` and ``rollout/ep_len_mean`` from the Monitor wrapper.
    """

    def __init__(self, window: int = 100) -> None:
        super().__init__()
        self.crashes: deque[bool] = deque(maxlen=window)
        self.timeouts: deque[bool] = deque(maxlen=window)

    def _on_step(self) -> bool:
        for done, info in zip(self.locals["dones"], self.locals["infos"]):
            if done:
                crashed = bool(info.get("crashed", False)) and not info.get("is_success", False)
                self.crashes.append(crashed)
                self.timeouts.append(bool(info.get("TimeLimit.truncated", False)) and not crashed)
        return True

    def _on_rollout_end(self) -> None:
        if self.crashes:
            self.logger.record("rollout/crash_rate", float(np.mean(self.crashes)))
            self.logger.record("rollout/timeout_rate", float(np.mean(self.timeouts)))


class AtRolloutBoundary(BaseCallback):
    """Base of callbacks that act every ``freq`` env steps, right after a PPO update."""

    def __init__(self, freq: int) -> None:
        super().__init__()
        self.freq = freq
        self.last_step = 0

    def _on_training_start(self) -> None:
        self.last_step = self.num_timesteps - self.num_timesteps % self.freq if self.freq else 0

    def _on_rollout_start(self) -> None:
        if self.freq and self.num_timesteps >= self.last_step + self.freq:
            self.last_step = self.num_timesteps - self.num_timesteps % self.freq
            self.act()

    def _on_step(self) -> bool:
        return True

    def act(self) -> None:
        raise NotImplementedError


class CheckpointEvery(AtRolloutBoundary):
    """Write an atomic checkpoint (model, optimiser, normalisation, RNG) every ``freq`` env steps."""

    def __init__(self, freq: int, directory: Path, keep: int) -> None:
        super().__init__(freq)
        self.directory = directory
        self.keep = keep

    def act(self) -> None:
        save_checkpoint(self.model, self.directory, self.keep)


class EvalEvery(AtRolloutBoundary):
    """Evaluate every ``freq`` env steps on ``eval_env``; log, append to a CSV, keep the best model.

    The best model (highest success rate, ties broken by mean reward) is saved as
    ``best_model.zip`` with its ``best_vecnormalize.pkl`` in ``run_dir``.
    """

    def __init__(
        self,
        freq: int,
        eval_env: VecEnv,
        n_episodes: int,
        run_dir: Path,
        csv_path: Path,
        deterministic: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(freq)
        self.eval_env = eval_env
        self.n_episodes = n_episodes
        self.run_dir = run_dir
        self.csv_path = csv_path
        self.deterministic = deterministic
        self.seed = seed
        self.best: tuple[float, float] | None = None
        self.start = time.time()

    def _on_training_start(self) -> None:
        super()._on_training_start()
        self.best = best_so_far(self.csv_path)

    def act(self) -> None:
        train_env = self.model.get_vec_normalize_env()
        if train_env is not None:
            sync_envs_normalization(train_env, self.eval_env)
        summary = EvalSummary.of(evaluate_episodes(self.model, self.eval_env, self.n_episodes, self.deterministic, self.seed))
        for key in ("success_rate", "crash_rate", "mean_reward", "mean_length"):
            self.logger.record(f"eval/{key}", getattr(summary, key))
        self.logger.dump(self.num_timesteps)
        append_row(self.csv_path, eval_row(self.num_timesteps, summary, time.time() - self.start))
        score = (summary.success_rate, summary.mean_reward)
        if self.best is None or score > self.best:
            self.best = score
            atomic_write(self.run_dir / "best_model.zip", self.model.save)
            if train_env is not None:
                atomic_write(self.run_dir / "best_vecnormalize.pkl", lambda p: train_env.save(str(p)))


def eval_row(timesteps: int, summary: EvalSummary, wall_time_s: float) -> dict[str, Any]:
    """One line of eval.csv."""
    return {
        "timesteps": timesteps,
        "success_rate": summary.success_rate,
        "crash_rate": summary.crash_rate,
        "mean_reward": summary.mean_reward,
        "std_reward": summary.std_reward,
        "mean_length": summary.mean_length,
        "wall_time_s": round(wall_time_s, 1),
    }


def append_row(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=EVAL_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def read_rows(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def truncate_rows(path: Path, max_timesteps: int) -> None:
    """Drop evaluation rows past ``max_timesteps`` (resuming from an earlier checkpoint)."""
    rows = [r for r in read_rows(path) if r["timesteps"] <= max_timesteps]
    if path.exists():
        path.unlink()
    for row in rows:
        append_row(path, {k: int(v) if k == "timesteps" else v for k, v in row.items()})


def best_so_far(path: Path) -> tuple[float, float] | None:
    rows = read_rows(path)
    return max(((r["success_rate"], r["mean_reward"]) for r in rows), default=None)


def plot_training_curve(csv_path: Path, png_path: Path, title: str) -> None:
    """Success and crash rate (left axis) and mean reward (right axis) against env steps."""
    rows = read_rows(csv_path)
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["timesteps"] for r in rows]
    fig, rates = plt.subplots(figsize=(7, 4))
    rates.plot(steps, [100 * r["success_rate"] for r in rows], "o-", color="tab:green", label="success %")
    rates.plot(steps, [100 * r["crash_rate"] for r in rows], "s-", color="tab:red", label="crash %")
    rates.set_xlabel("env steps")
    rates.set_ylabel("% of evaluation episodes")
    rates.set_ylim(-2, 102)
    reward = rates.twinx()
    reward.plot(steps, [r["mean_reward"] for r in rows], "--", color="tab:blue", label="mean reward")
    reward.set_ylabel("mean episode reward")
    handles = rates.get_legend_handles_labels()[0] + reward.get_legend_handles_labels()[0]
    rates.legend(handles, [h.get_label() for h in handles], loc="lower right")
    rates.set_title(title)
    fig.tight_layout()
    atomic_write(png_path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
