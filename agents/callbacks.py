"""Training callbacks: rollout statistics, periodic evaluation with best-model saving, checkpoints,
progress lines, a wall-time limit and Ctrl-C.

Evaluation and checkpoints happen at rollout boundaries (right after a PPO update), so a
checkpoint holds exactly the weights, optimiser and counters an uninterrupted run would have there.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from agents.checkpoint import flatten_keys, save_checkpoint
from agents.flight import AgentSpec, ModelPilot, fly
from agents.io import atomic_write
from agents.metrics import EpisodeResult, Summary
from agents.progress import say
from agents.normalization import ObsNormalizer
from agents.run import BEST_MODEL_FILE, BEST_NORMALIZATION_FILE, BEST_NORMALIZER_FILE, append_eval_row, read_eval_rows


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


def evaluate_model(model: BaseAlgorithm, normalizer: Any, spec: AgentSpec, seeds: Sequence[int],
                   disturbances: dict[str, Any], deterministic: bool = True) -> list[EpisodeResult]:
    """Fly one episode per seed with the model as it is now (`agents.flight.fly`, the runner of
    `evaluate` and `stress`), normalising observations with ``normalizer`` (the run's live
    VecNormalize, or None). Sampled actions draw from a forked torch RNG, so an evaluation never
    moves the training's random stream."""
    with th.random.fork_rng():
        flights = fly(spec, seeds, disturbances, deterministic=deterministic, pilot=ModelPilot(model, normalizer))
    return [flight.result for flight in flights]


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


class ProgressLines(BaseCallback):
    """Plain progress lines for logs: steps, share done, env steps/s, the latest rollout success
    and crash rates, time left; every ``every_s`` seconds of wall time, each given to ``write``."""

    def __init__(self, total: int, every_s: float = 30.0, write: Callable[[str], None] = say) -> None:
        super().__init__()
        self.total, self.every_s, self.write = total, every_s, write
        self.start = self.last = time.time()
        self.first_step = 0

    def _on_training_start(self) -> None:
        self.start = self.last = time.time()
        self.first_step = self.num_timesteps

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        now = time.time()
        if now - self.last < self.every_s:
            return
        self.last = now
        done = self.num_timesteps - self.first_step
        fps = done / max(now - self.start, 1e-9)
        left = max(self.total - self.num_timesteps, 0) / max(fps, 1e-9)
        values = self.logger.name_to_value
        rates = "".join(f", {label} {100 * values[key]:.0f} %" for key, label in
                        (("rollout/success_rate", "rollout success"), ("rollout/crash_rate", "crash"))
                        if key in values)
        self.write(f"[train] step {self.num_timesteps:,}/{self.total:,} ({100 * self.num_timesteps / self.total:.0f} %)"
                   f", {fps:,.0f} steps/s{rates}, ~{left / 60:.1f} min left")


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C after saving a resumable run; the message says how to resume."""


class StopOnInterrupt(BaseCallback):
    """Ctrl-C (SIGINT) while learning ends ``learn()`` at the next env step instead of anywhere in
    the middle of an update, so that the caller can save the run; a second Ctrl-C aborts at once.

    Use as a context manager around ``learn()``: the handler is installed only in the main thread
    (a signal handler cannot be set elsewhere) and the previous one is restored on exit.
    """

    def __init__(self, log: Callable[[str], None] = say) -> None:
        super().__init__()
        self.log = log
        self.requested = False
        self.previous: Any = None

    def __enter__(self) -> StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.log("interrupted (Ctrl-C): saving the run at the next env step; Ctrl-C again aborts without saving")

    def _on_step(self) -> bool:
        return not self.requested


class HyperParameters(BaseCallback):
    """Record a config's keys in TensorBoard's HPARAMS tab when learning starts, linked to the
    success rates of rollouts, periodic evaluations and the final evaluation (`FINAL_METRICS`)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.values = {key: value if isinstance(value, (bool, int, float, str)) else str(value)
                       for key, value in flatten_keys(config).items()}

    def _on_training_start(self) -> None:
        from stable_baselines3.common.logger import HParam

        metrics = {"rollout/success_rate": 0.0, "eval/success_rate": 0.0, "final/success_rate": 0.0}
        self.logger.record("hparams", HParam(self.values, metrics), exclude=("stdout", "log", "json", "csv"))

    def _on_step(self) -> bool:
        return True


class StopAfter(BaseCallback):
    """End training at the first rollout boundary after ``minutes`` of wall time."""

    def __init__(self, minutes: float) -> None:
        super().__init__()
        self.seconds = 60 * minutes
        self.start = time.time()
        self.expired = False

    def _on_training_start(self) -> None:
        self.start = time.time()

    def _on_rollout_start(self) -> None:
        self.expired = time.time() - self.start >= self.seconds

    def _on_step(self) -> bool:
        return not self.expired


class EvalEvery(AtRolloutBoundary):
    """Evaluate every ``freq`` env steps; log, append to eval.csv, keep the best model.

    Each evaluation flies the episodes of ``seeds`` (the same ones every time) in the training
    env and disturbance distribution. With ``stop_at_success``, training ends right after the
    first evaluation whose success rate reaches it (``target_reached_at`` holds its env steps). The best model (highest success rate, ties broken by mean
    reward) is saved as ``best_model.zip`` with its statistics (``best_normalization.json``, and SB3's
    ``best_vecnormalize.pkl``) in ``run_dir``. ``on_evaluation(timesteps, summary)`` is called after
    each evaluation has been recorded; an exception it raises ends training at once (``agents.tune``
    raises ``optuna.TrialPruned``).
    """

    def __init__(
        self,
        freq: int,
        spec: AgentSpec,
        disturbances: dict[str, Any],
        seeds: Sequence[int],
        run_dir: Path,
        csv_path: Path,
        deterministic: bool = True,
        stop_at_success: float | None = None,
        log: Callable[[str], None] = say,
        on_evaluation: Callable[[int, EvalSummary], None] | None = None,
    ) -> None:
        super().__init__(freq)
        self.log = log
        self.on_evaluation = on_evaluation
        self.stop_at_success = stop_at_success
        self.target_reached_at: int | None = None  # env steps of the first evaluation at the target
        self.spec = spec
        self.disturbances = disturbances
        self.seeds = list(seeds)
        self.run_dir = run_dir
        self.csv_path = csv_path
        self.deterministic = deterministic
        self.best: tuple[float, float] | None = None
        self.start = time.time()

    def _on_training_start(self) -> None:
        super()._on_training_start()
        self.best = best_so_far(self.csv_path)

    def _on_step(self) -> bool:
        return self.target_reached_at is None  # False ends learn() before another step is used

    def act(self) -> None:
        train_env = self.model.get_vec_normalize_env()
        episodes = evaluate_model(self.model, train_env, self.spec, self.seeds, self.disturbances, self.deterministic)
        summary = EvalSummary.of(episodes)
        for key in ("success_rate", "crash_rate", "mean_reward", "mean_length"):
            self.logger.record(f"eval/{key}", getattr(summary, key))
        self.logger.dump(self.num_timesteps)
        self.log(f"[eval] step {self.num_timesteps:,}: {summary}")
        append_eval_row(self.csv_path, eval_row(self.num_timesteps, summary, time.time() - self.start))
        if self.stop_at_success is not None and summary.success_rate >= self.stop_at_success:
            self.target_reached_at = self.num_timesteps
        score = (summary.success_rate, summary.mean_reward)
        if self.best is None or score > self.best:
            self.best = score
            atomic_write(self.run_dir / BEST_MODEL_FILE, self.model.save)
            if train_env is not None:
                atomic_write(self.run_dir / BEST_NORMALIZER_FILE, lambda p: train_env.save(str(p)))
                ObsNormalizer.of(train_env).save(self.run_dir / BEST_NORMALIZATION_FILE)
        if self.on_evaluation is not None:
            self.on_evaluation(self.num_timesteps, summary)


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


def best_so_far(path: Path) -> tuple[float, float] | None:
    rows = read_eval_rows(path)
    return max(((r["success_rate"], r["mean_reward"]) for r in rows), default=None)
