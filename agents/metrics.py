"""Closed-loop evaluation metrics (DESIGN.md), from per-episode results to robustness summaries.

One flown episode is an `EpisodeResult`; a set of them summarises into a `Summary`:

| metric              | definition                                                              |
|---------------------|-------------------------------------------------------------------------|
| `success_rate`      | successes / episodes, with its Wilson 95 % interval (`success_low/high`) |
| `crash_rate`        | crashed episodes / episodes                                             |
| `timeout_rate`      | episodes truncated at the time limit / episodes                         |
| `error_rate`        | episodes that raised (no outcome; counted as failures, never dropped)   |
| `spl`               | mean of S * L_shortest / max(L_flown, L_shortest) (Anderson et al. 2018); L_shortest enters each goal's success ball (`envs.shortest_path`) |
| `time_to_goal_s`    | mean episode time of the successful episodes (s; NaN if none)           |
| `final_distance_m`  | mean distance to the current goal at the last step (m)                  |
| `action_smoothness` | mean over steps t >= 1 and action entries of |a_t - a_{t-1}| (actions in [-1, 1]) |
| `pushed_rate`       | episodes in which the `push` disturbance landed / episodes (`info["pushed"]`)  |

SPL is NaN where the goal moves (Follow: no shortest path). Exactly one of success, crash,
timeout and error holds per episode, so the four rates sum to 1.
An episode that raised counts in the denominator of every rate: an error can only lower a
success rate, never raise it.

Robustness along one disturbance axis is the success rate at each of its levels and the mean
over them. A run's *mean OOD success* (`ood_success`) is the mean over axes of each axis's mean
success over its off-nominal levels (each axis weighs the same however many levels it has); its
*OOD drop* is in-distribution (nominal) success minus mean OOD success. Every level and agent of
a stress test flies the same episode seeds, so `paired_bootstrap` weights whole seeds, the same
for all of them (a Bayesian bootstrap); `interval` turns any statistic of the resampled rates
into a 95 % interval.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Z_95 = 1.959963984540054  # standard-normal quantile of a two-sided 95 % interval


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % for the default ``z``); (0, 1) if n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends, no round-off
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def spl(success: bool, shortest: float, flown: float) -> float:
    """Success weighted by path length of one episode: S * L_shortest / max(L_flown, L_shortest).

    NaN when the task has no shortest path (``shortest`` NaN: a moving goal).
    """
    if math.isnan(shortest):
        return math.nan
    if not success:
        return 0.0
    longest = max(flown, shortest)
    return 1.0 if longest <= 0.0 else shortest / longest


def action_smoothness(actions: np.ndarray) -> float:
    """Mean |a_t - a_{t-1}| over steps t >= 1 and action entries; NaN for fewer than two actions."""
    actions = np.asarray(actions, dtype=np.float64)
    if len(actions) < 2:
        return math.nan
    return float(np.abs(np.diff(actions, axis=0)).mean())


@dataclass(frozen=True)
class EpisodeResult:
    """The outcome of one closed-loop episode.

    ``shortest_path`` (m) is the straight-line length of the task: start -> goal for Hover, start
    -> waypoint 1 -> ... -> waypoint K for Waypoints, NaN where the goal moves. ``error`` holds
    the exception text of an episode that raised (then every other field but ``seed`` is zero /
    NaN, and its SPL is 0: a failure).
    """

    seed: int
    success: bool
    crashed: bool
    timeout: bool
    steps: int
    time_s: float
    path_length_m: float
    shortest_path_m: float
    final_distance_m: float
    action_smoothness: float
    reward: float
    error: str = ""
    pushed: bool = False

    @classmethod
    def failed(cls, seed: int, error: str) -> EpisodeResult:
        """The record of an episode that raised ``error`` before it ended."""
        nan = math.nan
        return cls(seed, False, False, False, 0, nan, nan, nan, nan, nan, nan, error or "error")

    @property
    def spl(self) -> float:
        return 0.0 if self.error else spl(self.success, self.shortest_path_m, self.path_length_m)

    @property
    def time_to_goal_s(self) -> float:
        return self.time_s if self.success else math.nan

    def to_row(self) -> dict[str, Any]:
        """A flat CSV row: the fields plus ``spl`` and ``time_to_goal_s``."""
        row = dataclasses.asdict(self)
        row["spl"] = self.spl
        row["time_to_goal_s"] = self.time_to_goal_s
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> EpisodeResult:
        """Inverse of `to_row`, also from CSV strings (extra keys are ignored)."""
        values = {}
        for field in dataclasses.fields(cls):
            raw = row.get(field.name, "")
            if field.type == "bool":
                values[field.name] = raw if isinstance(raw, bool) else str(raw) == "True"
            elif field.type == "int":
                values[field.name] = int(float(raw))
            elif field.type == "float":
                values[field.name] = math.nan if raw in ("", None) else float(raw)
            else:
                values[field.name] = "" if raw is None else str(raw)
        return cls(**values)


EPISODE_COLUMNS = (*(f.name for f in dataclasses.fields(EpisodeResult)), "spl", "time_to_goal_s")


def _mean(values: Iterable[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


@dataclass(frozen=True)
class Summary:
    """Metrics of a set of episodes (see the module table)."""

    episodes: int
    errors: int
    success_rate: float
    success_low: float
    success_high: float
    crash_rate: float
    timeout_rate: float
    error_rate: float
    spl: float
    time_to_goal_s: float
    final_distance_m: float
    action_smoothness: float
    mean_reward: float
    mean_steps: float
    pushed_rate: float = 0.0

    @classmethod
    def of(cls, episodes: Sequence[EpisodeResult]) -> Summary:
        n = len(episodes)
        if n == 0:
            raise ValueError("cannot summarise zero episodes")
        successes = sum(e.success for e in episodes)
        errors = sum(bool(e.error) for e in episodes)
        flown = [e for e in episodes if not e.error]
        low, high = wilson_interval(successes, n)
        return cls(
            episodes=n,
            errors=errors,
            success_rate=successes / n,
            success_low=low,
            success_high=high,
            crash_rate=sum(e.crashed for e in episodes) / n,
            timeout_rate=sum(e.timeout for e in episodes) / n,
            error_rate=errors / n,
            spl=float(np.nan_to_num([e.spl for e in episodes]).mean())
            if any(not math.isnan(e.spl) for e in flown) else math.nan,
            time_to_goal_s=_mean(e.time_s for e in episodes if e.success),
            final_distance_m=_mean(e.final_distance_m for e in flown),
            action_smoothness=_mean(e.action_smoothness for e in flown),
            mean_reward=_mean(e.reward for e in flown),
            mean_steps=_mean(e.steps for e in flown),
            pushed_rate=sum(e.pushed for e in episodes) / n,
        )

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        text = (f"success {100 * self.success_rate:.1f} % (95 % CI {100 * self.success_low:.1f}-"
                f"{100 * self.success_high:.1f}), crash {100 * self.crash_rate:.1f} %, timeout "
                f"{100 * self.timeout_rate:.1f} %, SPL {self.spl:.3f}, time to goal "
                f"{self.time_to_goal_s:.2f} s, final distance {self.final_distance_m:.3f} m, "
                f"smoothness {self.action_smoothness:.3f} over {self.episodes} episodes")
        if self.pushed_rate:
            text += f"; {100 * self.pushed_rate:.0f} % of episodes pushed"
        if self.errors:
            text += f"; {self.errors} episode(s) raised and count as failures"
        return text


def ood_success(rates: np.ndarray, axes: Sequence[Sequence[int]]) -> np.ndarray:
    """Mean OOD success: the mean over axes of each axis's mean success over its off-nominal levels.

    :param rates: success rates, ``[..., K]`` (K level columns; leading dimensions e.g. resamples)
    :param axes: per axis, the columns of its off-nominal levels (an axis without any is skipped)
    :return: ``[...]``
    """
    rates = np.asarray(rates, dtype=float)
    per_axis = [rates[..., list(columns)].mean(axis=-1) for columns in axes if len(columns)]
    if not per_axis:
        return np.full(rates.shape[:-1], math.nan)
    return np.mean(per_axis, axis=0)


def ood_drop(in_distribution_success: Any, mean_ood_success: Any) -> Any:
    """In-distribution success minus mean OOD success (positive: worse out of distribution)."""
    return np.subtract(in_distribution_success, mean_ood_success)


def paired_bootstrap(outcomes: np.ndarray, resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """Success rates of every column under seed weights drawn once for all columns.

    Every level (and every agent) of a stress test flies the same seeds, so weighting whole seeds
    alike for all columns keeps the pairing: a difference between columns is not blurred by the
    seed-to-seed variation both share. The weights are a Bayesian bootstrap, Dirichlet(1, ..., 1)
    over the E seeds plus one pseudo-seed whose outcome in each column is an independent
    Jeffreys draw Beta(1/2, 1/2). The pseudo-seed keeps a level where every episode succeeded (or
    failed) from getting a zero-width interval (the marginals come out close to the Wilson
    interval), and since it is independent across columns, no difference between columns looks
    more certain than the seeds show.

    :param outcomes: ``[K, E]`` successes (1/0) of K columns on the same E seeds, in seed order
    :return: ``[resamples, K]`` success rates
    """
    outcomes = np.asarray(outcomes, dtype=float)
    k, n = outcomes.shape
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.ones(n + 1), size=resamples)
    pseudo = rng.beta(0.5, 0.5, size=(resamples, k))
    return weights[:, :n] @ outcomes.T + weights[:, n:] * pseudo


def interval(samples: np.ndarray, point: float | None = None) -> tuple[float, float]:
    """Central 95 % interval (2.5th and 97.5th percentiles) of bootstrap samples, widened to
    contain ``point`` when given (at 0 or E successes out of E the Jeffreys posterior excludes
    the observed rate itself; Brown, Cai & DasGupta 2001 set the bound to it there)."""
    samples = np.asarray(samples, dtype=float)
    samples = samples[~np.isnan(samples)]
    if not len(samples):
        return math.nan, math.nan
    low, high = np.percentile(samples, [2.5, 97.5])
    if point is not None and not math.isnan(point):
        low, high = min(low, point), max(high, point)
    return float(low), float(high)
