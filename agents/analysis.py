"""Study analysis: hierarchical-bootstrap intervals, paired differences, learned seeds, the report.

A study trains every variant (a config) with several training seeds and flies one paired stress
test of all runs. `analyse_study` turns its rows into one JSON-able summary; `write_study_report`
writes ``report.md``, ``study.json`` and the PNGs from it. Neither trains nor flies anything.

Inputs (rows as read from CSV: every value may be a string):

- episode rows, one per run, level and episode: ``variant``, ``seed`` (training seed), ``axis``
  (``"nominal"`` for the shared in-distribution level), ``level`` (float; ``""`` for nominal),
  ``episode_seed``, and the `agents.metrics.EpisodeResult` columns (``success``, ``crashed``,
  ``time_s``, ``final_distance_m``, ``error``, ...; its ``seed`` field is not read);
- run rows, one per run: ``variant``, ``seed``, ``steps_to_target`` (``""`` if never reached),
  ``minutes_to_target``, ``params`` (actor parameter count);
- curve rows, one per run and periodic evaluation: ``variant``, ``seed``, ``timesteps``,
  ``success_rate`` (0-1), ``wall_time_s``.

Per-axis rows hold the off-nominal levels only; the nominal rows serve every axis (as in
``liquid-drones stress``). Every run flies the same episode seeds at every level (paired).

Metrics per variant and level: success rate, crash rate (episodes that raised count as neither
success nor crash, and stay in the denominator), mean final distance (m, episodes that flew) and
mean time to goal (s, successful episodes). A run's value is the mean over its episodes; a
variant's value is the mean over its runs (every training seed weighs the same; a run without a
single valid episode for a mean, e.g. no success for time to goal, is left out of that mean).
Mean OOD success and OOD drop are those of `agents.metrics` (`ood_success`, `ood_drop`).

**The bootstrap** (`draw_weights`, `two_stage_mean`). One resample draws (1) for every variant,
its training seeds with replacement, independently of the other variants (different variants'
runs share nothing), then (2) the episodes within the drawn runs with replacement, with ONE draw
of episode seeds shared by every run, level and variant, because the episode seeds are one
factor crossed with everything else: episode 17 is the same task layout and disturbance draw
for every run, so a hard episode is hard for all of them. Sharing the draw keeps that pairing:
in a difference between levels, or between a variant and the reference, the part of the episode
variation they share cancels in every resample as it does in the data, while the part each run
has alone (and all the seed-to-seed variation) is kept. Drawing the episodes independently per
run instead would count the shared part as noise in every difference (too wide) and average it
away over seeds in a single variant's mean (too narrow). The 95 % intervals are the percentiles
of `agents.metrics.interval`; a rate's interval at one level is at least the Wilson interval of
its episodes pooled (`pooled_wilson`), so a level where no episode crashed does not read [0, 0]. The episode noise within a run is seen by both stages (it moves a
run's mean, which the seed stage resamples, and the episode stage draws it again), so the
intervals lean slightly wide: in the simulation of tests/test_analysis.py (5 seeds x 30 episodes
per variant, seed standard deviation ~0.15) they cover a known difference in ~96 % of studies,
where an episode-only bootstrap, blind to seed-to-seed variation, covers it in ~69 %.

A seed *learned* when its in-distribution success is at least ``learned_level``. Every result is
given over all seeds (``"all"``) and over the seeds that learned (``"learned"``; None for a
variant without one); the learned fraction has a Wilson 95 % interval over seeds.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.io import write_json, write_text
from agents.metrics import EpisodeResult, interval, ood_drop, ood_success, wilson_interval
from agents.report import markdown_table, percent, pyplot, save_figure

NOMINAL = "nominal"  # the axis name of the shared in-distribution level
METRICS = ("success_rate", "crash_rate", "final_distance_m", "time_to_goal_s")
METRIC_TEXT = {"success_rate": "success", "crash_rate": "crash rate",
               "final_distance_m": "final distance (m)", "time_to_goal_s": "time to goal (s)"}
SUBSETS = ("all", "learned")

Cell = tuple[str, "float | None"]  # (axis, level); level None for the nominal cell


class StudyDataError(ValueError):
    """Study rows that cannot be analysed, reported before any resampling."""


# --- the bootstrap ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Weights:
    """Multiplicities of one set of resamples: ``episodes`` [R, E] (shared by every run and
    level), ``seeds`` per group of runs [R, S_g] (independent between groups)."""

    episodes: np.ndarray
    seeds: dict[Hashable, np.ndarray]


def draw_weights(rng: np.random.Generator, episodes: int, seeds: Mapping[Hashable, int], resamples: int) -> Weights:
    """Draw ``resamples`` two-stage resamples as multiplicities (how often each seed/episode is drawn).

    :param episodes: E, the number of paired episode seeds
    :param seeds: per group of runs (a variant, or its seeds that learned), its number of seeds
    """
    def counts(n: int) -> np.ndarray:
        return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(float)

    return Weights(counts(episodes), {name: counts(n) for name, n in seeds.items()})


def _weighted_mean(weights: np.ndarray, values: np.ndarray, subscripts: str) -> np.ndarray:
    """Weighted mean that skips NaN values; NaN where no weight lands on a valid value."""
    valid = ~np.isnan(values)
    total = np.einsum(subscripts, weights, np.where(valid, values, 0.0))
    count = np.einsum(subscripts, weights, valid.astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.where(count > 0, count, 1.0), np.nan)


def two_stage_mean(values: np.ndarray, episode_weights: np.ndarray, seed_weights: np.ndarray) -> np.ndarray:
    """The mean over runs of each run's mean over episodes, under resampling weights.

    :param values: ``[S, C, E]`` one metric of S runs x C levels x E episodes (NaN: no value)
    :param episode_weights: ``[R, E]`` multiplicity of every episode in each resample
    :param seed_weights: ``[R, S]`` multiplicity of every run in each resample
    :return: ``[R, C]``; with weights of ones, the point estimate
    """
    run_means = _weighted_mean(episode_weights, values, "re,sce->rsc")
    return _weighted_mean(seed_weights, run_means, "rs,rsc->rc")


def estimate(point: float, samples: np.ndarray, at_least: tuple[float, float] | None = None) -> dict[str, float]:
    """``{"value", "low", "high"}``: a point estimate and its 95 % bootstrap interval, widened to
    contain ``at_least`` when given."""
    point = float(point)
    low, high = interval(samples, point)
    if at_least is not None:
        low, high = min(low, at_least[0]), max(high, at_least[1])
    return {"value": point, "low": low, "high": high}


def pooled_wilson(outcomes: np.ndarray) -> np.ndarray:
    """Per level, the Wilson 95 % interval of all its episodes pooled, ``[C, 2]``.

    :param outcomes: ``[S, C, E]`` 1/0 outcomes of S runs x C levels x E episodes

    A rate's interval is never narrower than this: pooling ignores the seed-to-seed variation, so
    it is the least a hierarchical interval must admit, and where every episode of every seed
    succeeded (or failed) it keeps the interval from shrinking to a point (a percentile bootstrap
    of constant data has zero width).
    """
    n = outcomes.shape[0] * outcomes.shape[2]
    return np.array([wilson_interval(int(k), n) for k in outcomes.sum(axis=(0, 2))])


# --- reading rows -----------------------------------------------------------------------------
@dataclass(frozen=True)
class VariantData:
    """One variant's episodes as arrays: ``values[metric]`` is ``[S, C, E]``."""

    seeds: tuple[int, ...]
    cells: tuple[Cell, ...]  # cells[0] is the nominal cell
    values: dict[str, np.ndarray]
    errors: int

    def subset(self, rows: Sequence[int]) -> VariantData:
        return VariantData(tuple(self.seeds[i] for i in rows), self.cells,
                           {k: v[list(rows)] for k, v in self.values.items()}, self.errors)

    def axis_columns(self, axis: str) -> list[int]:
        return [i for i, (a, _) in enumerate(self.cells) if a == axis]


def _field(row: Mapping[str, Any], key: str, index: int, kind: type) -> Any:
    if key not in row:
        raise StudyDataError(f"row {index} has no {key!r} column (it has {sorted(row)})")
    try:
        return kind(float(row[key])) if kind is int else kind(row[key])
    except (TypeError, ValueError):
        raise StudyDataError(f"row {index}: {key}={row[key]!r} is not a {kind.__name__}") from None


def _level(row: Mapping[str, Any], index: int) -> float | None:
    axis, raw = _field(row, "axis", index, str), row.get("level", "")
    if axis == NOMINAL:
        if raw not in ("", None):
            raise StudyDataError(f"row {index}: a nominal row has level {raw!r}; it must be empty")
        return None
    if raw in ("", None):
        raise StudyDataError(f"row {index}: axis {axis!r} needs a level (only {NOMINAL!r} rows have none)")
    return _field(row, "level", index, float)


def _episode_values(result: EpisodeResult) -> dict[str, float]:
    return {"success_rate": float(result.success), "crash_rate": float(result.crashed),
            "final_distance_m": math.nan if result.error else result.final_distance_m,
            "time_to_goal_s": result.time_to_goal_s}


def read_episodes(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, VariantData], tuple[int, ...]]:
    """Per variant its arrays, and the episode seeds (sorted), after checking the pairing."""
    if not rows:
        raise StudyDataError("no episode rows to analyse")
    runs: dict[str, dict[int, dict[Cell, dict[int, dict[str, float]]]]] = defaultdict(lambda: defaultdict(dict))
    errors: dict[str, int] = defaultdict(int)
    for index, row in enumerate(rows):
        variant, seed = _field(row, "variant", index, str), _field(row, "seed", index, int)
        cell = (_field(row, "axis", index, str), _level(row, index))
        episode = _field(row, "episode_seed", index, int)
        episodes = runs[variant][seed].setdefault(cell, {})
        if episode in episodes:
            raise StudyDataError(f"row {index}: episode {episode} of {variant} seed {seed} at {cell} appears twice")
        result = EpisodeResult.from_row(row)
        episodes[episode] = _episode_values(result)
        errors[variant] += bool(result.error)
    episode_seeds = sorted({e for by_seed in runs.values() for by_cell in by_seed.values()
                            for episodes in by_cell.values() for e in episodes})
    data = {}
    for variant, by_seed in runs.items():
        seeds = sorted(by_seed)
        cells = sorted({cell for by_cell in by_seed.values() for cell in by_cell},
                       key=lambda c: (c[0] != NOMINAL, c[0], c[1] if c[1] is not None else -math.inf))
        if cells[0] != (NOMINAL, None):
            raise StudyDataError(f"variant {variant} has no {NOMINAL!r} rows (in-distribution episodes)")
        for seed in seeds:
            missing = [c for c in cells if c not in by_seed[seed]]
            if missing:
                raise StudyDataError(f"{variant} seed {seed} lacks levels {missing} that its other seeds have")
            for cell in cells:
                flown = sorted(by_seed[seed][cell])
                if flown != episode_seeds:
                    raise StudyDataError(
                        f"{variant} seed {seed} at {cell} flew episode seeds {_span(flown)}, others "
                        f"{_span(episode_seeds)}: every run and level must fly the same episodes (paired)")
        values = {metric: np.array([[[by_seed[s][c][e][metric] for e in episode_seeds] for c in cells]
                                    for s in seeds]) for metric in METRICS}
        data[variant] = VariantData(tuple(seeds), tuple(cells), values, errors[variant])
    return data, tuple(episode_seeds)


def _span(seeds: Sequence[int]) -> str:
    return f"{len(seeds)} seeds {seeds[0]}-{seeds[-1]}" if seeds else "none"


def _optional(raw: Any) -> float:
    return math.nan if raw in ("", None) else float(raw)


def read_runs(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int], dict[str, float]]:
    """Per (variant, seed): steps and minutes to target (NaN: never reached) and params."""
    facts = {}
    for index, row in enumerate(rows):
        key = (_field(row, "variant", index, str), _field(row, "seed", index, int))
        facts[key] = {name: _optional(row.get(name)) for name in ("steps_to_target", "minutes_to_target", "params")}
    return facts


# --- analysis ---------------------------------------------------------------------------------
def _subset_summary(data: VariantData, weights: np.ndarray, seed_weights: np.ndarray,
                    nominal_levels: Mapping[str, float]) -> tuple[dict[str, Any], dict[str, tuple[float, np.ndarray]]]:
    """The summary of one variant (over the seeds in ``data``), and per comparable quantity (mean
    OOD success, in-distribution success, each axis's OOD success) its point and resamples."""
    ones_e, ones_s = np.ones((1, weights.shape[1])), np.ones((1, len(data.seeds)))
    points = {m: two_stage_mean(v, ones_e, ones_s)[0] for m, v in data.values.items()}
    samples = {m: two_stage_mean(v, weights, seed_weights) for m, v in data.values.items()}
    seed_success = two_stage_mean(data.values["success_rate"], ones_e, np.eye(len(data.seeds)))  # [S, C]
    wilson = {m: pooled_wilson(data.values[m]) for m in METRICS if m.endswith("rate")}

    def level_estimate(metric: str, column: int) -> dict[str, float]:
        at_least = wilson[metric][column] if metric in wilson else None
        return estimate(points[metric][column], samples[metric][:, column], at_least)

    axes = sorted({axis for axis, _ in data.cells[1:]})
    groups = [data.axis_columns(axis) for axis in axes]
    success, success_samples = points["success_rate"], samples["success_rate"]
    ood_point, ood_samples = ood_success(success, groups), ood_success(success_samples, groups)
    summary: dict[str, Any] = {
        "seeds": list(data.seeds),
        "in_distribution": {m: level_estimate(m, 0) for m in METRICS},
        "mean_ood_success": estimate(ood_point, ood_samples),
        "ood_drop": estimate(ood_drop(success[0], ood_point), ood_drop(success_samples[:, 0], ood_samples)),
        # the mean over axes of the mean over off-nominal levels, as for success
        "mean_ood_crash_rate": estimate(ood_success(points["crash_rate"], groups),
                                        ood_success(samples["crash_rate"], groups)),
        "axes": {},
    }
    for axis, columns in zip(axes, groups):
        levels = []
        nominal = nominal_levels.get(axis)
        for column in [0, *columns]:
            level = data.cells[column][1]
            levels.append({"level": nominal if column == 0 else level, "nominal": column == 0,
                           **{m: level_estimate(m, column) for m in METRICS},
                           "seed_success": [float(v) for v in seed_success[:, column]]})
        levels.sort(key=lambda entry: -math.inf if entry["level"] is None else entry["level"])
        summary["axes"][axis] = {
            "levels": levels,
            "ood_success": estimate(ood_success(success, [columns]), ood_success(success_samples, [columns])),
        }
    comparable = {"mean_ood_success": (float(ood_point), ood_samples),
                  "in_distribution_success": (float(success[0]), success_samples[:, 0]),
                  **{axis: (float(ood_success(success, [c])), ood_success(success_samples, [c]))
                     for axis, c in zip(axes, groups)}}
    return summary, comparable


def verdict(variant: str, reference: str, quantity: str, difference: float, low: float, high: float,
            seeds: int = 2) -> str:
    """One plain sentence about a difference in success (variant - reference) and its 95 % interval;
    ``seeds``: the fewest training seeds on either side (one cannot show seed-to-seed variation)."""
    head = f"{variant} vs {reference}, {quantity}: {percent(difference, low, high, signed=True)}"
    if any(math.isnan(v) for v in (difference, low, high)):
        return f"{head} — not enough data for a verdict"
    if seeds < 2:
        return f"{head} — no verdict: one training seed shows no seed-to-seed variation"
    if low <= 0.0 <= high:
        return f"{head} — no evidence of a difference"
    return f"{head} — {variant if low > 0 else reference} is better"


def _differences(stats: Mapping[str, Mapping[str, tuple[float, np.ndarray]]], seeds: Mapping[str, int],
                 reference: str) -> list[dict[str, Any]]:
    rows = []
    for variant, own in stats.items():
        if variant == reference:
            continue
        ref, fewest = stats[reference], min(seeds[variant], seeds[reference])
        for name in own:
            if name not in ref:
                continue
            quantity = {"mean_ood_success": "mean OOD success",
                        "in_distribution_success": "in-distribution success"}.get(name, f"{name} OOD success")
            result = estimate(own[name][0] - ref[name][0], own[name][1] - ref[name][1])  # paired resamples
            rows.append({"variant": variant, "reference": reference, "quantity": quantity, **result,
                         "verdict": verdict(variant, reference, quantity, result["value"], result["low"],
                                            result["high"], fewest)})
    return rows


def _learning_curves(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per variant: every run's success on a common step grid (a run that stopped early — at its
    target — keeps its last evaluation), their mean, min and max over seeds."""
    runs: dict[str, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for index, row in enumerate(rows):
        runs[_field(row, "variant", index, str)][_field(row, "seed", index, int)].append(
            (_field(row, "timesteps", index, float), _field(row, "success_rate", index, float)))
    curves = {}
    for variant, by_seed in runs.items():
        grid = np.array(sorted({t for points in by_seed.values() for t, _ in points}))
        table = []
        for seed in sorted(by_seed):
            t, y = np.array(sorted(by_seed[seed])).T
            table.append(np.where(grid < t[0], np.nan, np.interp(grid, t, y)))
        table = np.array(table)
        curves[variant] = {"timesteps": grid.tolist(), "seeds": sorted(by_seed),
                           "runs": table.tolist(), "mean": np.nanmean(table, axis=0).tolist(),
                           "low": np.nanmin(table, axis=0).tolist(), "high": np.nanmax(table, axis=0).tolist()}
    return curves


def _run_facts(variant: str, data: VariantData, in_distribution: np.ndarray, learned: np.ndarray,
               facts: Mapping[tuple[str, int], Mapping[str, float]]) -> dict[str, Any]:
    nan = {"steps_to_target": math.nan, "minutes_to_target": math.nan, "params": math.nan}
    runs = [{"seed": seed, "in_distribution_success": float(s), "learned": i in learned,
             **facts.get((variant, seed), nan)} for i, (seed, s) in enumerate(zip(data.seeds, in_distribution))]
    reached = [r for r in runs if not math.isnan(r["steps_to_target"])]
    params = sorted({r["params"] for r in runs if not math.isnan(r["params"])})
    return {
        "runs": runs,
        "reached_target": len(reached),
        "steps_to_target": float(np.mean([r["steps_to_target"] for r in reached])) if reached else math.nan,
        "minutes_to_target": float(np.mean([r["minutes_to_target"] for r in reached])) if reached else math.nan,
        "params": params[0] if len(params) == 1 else (params or math.nan),
    }


def analyse_study(
    episode_rows: Sequence[Mapping[str, Any]],
    run_rows: Sequence[Mapping[str, Any]],
    curve_rows: Sequence[Mapping[str, Any]],
    reference: str,
    learned_level: float,
    axis_labels: Mapping[str, str],
    resamples: int = 2000,
    seed: int = 0,
    nominal_levels: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The study summary (every number ``study.json`` and ``report.md`` show; see the module docstring).

    :param episode_rows: one per run, level and episode (schema: module docstring)
    :param run_rows: one per run, steps/minutes to target and params (may be empty)
    :param curve_rows: learning-curve evaluations (may be empty)
    :param reference: the variant every other is compared with
    :param learned_level: in-distribution success (0-1) at or above which a seed learned
    :param axis_labels: axis -> label with unit for tables and plots (default: the axis name)
    :param resamples: bootstrap resamples
    :param seed: random seed of the bootstrap
    :param nominal_levels: axis -> its nominal level, to place the nominal cell on the axis's
        curve (an axis without one shows it first, labelled "nominal")
    :return: a dict (floats NaN where undefined; `write_study_report` writes them as null):

        - ``settings``: reference, learned_level, resamples, episodes, axes (axis -> label), ...
        - ``variants[name]``: ``seeds``, ``learned_seeds``, ``learned_fraction``, ``errors``,
          ``runs`` (per seed: in-distribution success, learned, steps/minutes to target, params),
          ``reached_target``, ``steps_to_target`` / ``minutes_to_target`` (means over the runs
          that reached it), ``params``, and ``all`` / ``learned`` (None without a learned seed):
          ``in_distribution[metric]``, ``mean_ood_success``, ``ood_drop``, ``mean_ood_crash_rate``,
          ``axes[axis]`` = ``{"levels": [{"level", "nominal", <metric>..., "seed_success"}],
          "ood_success"}``; every estimate is ``{"value", "low", "high"}`` (95 %)
        - ``differences["all" | "learned"]``: per variant and quantity (mean OOD success,
          in-distribution success, each axis's OOD success): variant - reference as
          ``value``/``low``/``high`` and its ``verdict`` sentence
        - ``curves[name]``: ``timesteps``, ``seeds``, ``runs`` [S, T], ``mean``/``low``/``high`` [T]
    """
    if not 0.0 <= learned_level <= 1.0:
        raise StudyDataError(f"learned_level must be a success rate in [0, 1], got {learned_level}")
    if resamples < 100:
        raise StudyDataError(f"resamples must be >= 100 for 95 % intervals, got {resamples}")
    data, episode_seeds = read_episodes(episode_rows)
    if reference not in data:
        raise StudyDataError(f"reference variant {reference!r} is not in the rows; variants: {sorted(data)}")
    nominal_levels = dict(nominal_levels or {})
    for name, d in data.items():
        for axis, level in d.cells[1:]:
            if level == nominal_levels.get(axis):
                raise StudyDataError(f"{name} has {axis} rows at its nominal level {level:g}; in-distribution "
                                     f"episodes belong in the {NOMINAL!r} rows, shared by every axis")
    facts = read_runs(run_rows)
    ones = np.ones((1, len(episode_seeds)))
    learned = {}
    for name, d in data.items():
        in_distribution = two_stage_mean(d.values["success_rate"][:, :1], ones, np.eye(len(d.seeds)))[:, 0]
        learned[name] = (in_distribution, np.flatnonzero(in_distribution >= learned_level))
    subsets = {(name, "all"): np.arange(len(d.seeds)) for name, d in data.items()}
    subsets |= {(name, "learned"): rows for name, (_, rows) in learned.items() if len(rows)}
    weights = draw_weights(np.random.default_rng(seed), len(episode_seeds),
                           {key: len(rows) for key, rows in subsets.items()}, resamples)
    variants: dict[str, Any] = {}
    stats: dict[str, dict[str, dict[str, tuple[float, np.ndarray]]]] = {subset: {} for subset in SUBSETS}
    for name, d in data.items():
        in_distribution, rows = learned[name]
        k, n = len(rows), len(d.seeds)
        low, high = wilson_interval(k, n)
        variants[name] = {
            "seeds": list(d.seeds), "learned_seeds": [d.seeds[i] for i in rows],
            "learned_fraction": {"value": k / n, "low": low, "high": high}, "errors": d.errors,
            **_run_facts(name, d, in_distribution, rows, facts)}
        for subset in SUBSETS:
            if (name, subset) not in subsets:
                variants[name][subset] = None
                continue
            variants[name][subset], stats[subset][name] = _subset_summary(
                d.subset(subsets[name, subset]), weights.episodes, weights.seeds[name, subset], nominal_levels)
    differences = {subset: (_differences(stats[subset], {name: len(subsets[name, subset]) for name in stats[subset]},
                                         reference) if reference in stats[subset] else [])
                   for subset in SUBSETS}
    axes = sorted({axis for d in data.values() for axis, _ in d.cells[1:]})
    return {
        "settings": {"reference": reference, "learned_level": learned_level, "resamples": resamples,
                     "bootstrap_seed": seed, "episodes": len(episode_seeds),
                     "episode_seeds": [episode_seeds[0], episode_seeds[-1]],
                     "axes": {axis: axis_labels.get(axis, axis) for axis in axes},
                     "nominal_levels": {axis: nominal_levels.get(axis) for axis in axes}},
        "variants": variants,
        "differences": differences,
        "curves": _learning_curves(curve_rows),
    }


# --- the report -------------------------------------------------------------------------------
def _number(value: float | list[float], form: str = ",.0f") -> str:
    if isinstance(value, list):
        return ", ".join(_number(v, form) for v in value)
    return "n/a" if math.isnan(value) else f"{value:{form}}"


UNIT_FORMAT = {"final_distance_m": ".3f", "time_to_goal_s": ".2f"}


def _with_interval(entry: Mapping[str, float], metric: str) -> str:
    if metric.endswith("rate"):
        return percent(entry["value"], entry["low"], entry["high"])
    if math.isnan(entry["value"]):
        return "n/a"
    form = UNIT_FORMAT[metric]
    return f"{entry['value']:{form}} [{entry['low']:{form}}, {entry['high']:{form}}]"


def _level_text(entry: Mapping[str, Any]) -> str:
    if entry["level"] is None:
        return NOMINAL
    return f"{entry['level']:g}" + (" (nominal)" if entry["nominal"] else "")


def _overview(summary: Mapping[str, Any], subset: str) -> list[str]:
    rows = []
    for name, entry in summary["variants"].items():
        part = entry[subset]
        learned = entry["learned_fraction"]
        facts = [f"{entry['reached_target']}/{len(entry['seeds'])}", _number(entry["steps_to_target"]),
                 _number(entry["minutes_to_target"], ".1f"), _number(entry["params"])]
        if part is None:
            rows.append([name, "0", percent(learned["value"], learned["low"], learned["high"]), *["—"] * 6, *facts])
            continue
        nominal = part["in_distribution"]
        rows.append([
            name, len(part["seeds"]), percent(learned["value"], learned["low"], learned["high"]),
            _with_interval(nominal["success_rate"], "success_rate"),
            _with_interval(part["mean_ood_success"], "success_rate"),
            percent(**part["ood_drop"], signed=True),
            _with_interval(nominal["crash_rate"], "crash_rate"),
            _with_interval(part["mean_ood_crash_rate"], "crash_rate"),
            _with_interval(nominal["final_distance_m"], "final_distance_m"),
            *facts])
    header = ["variant", "seeds", "learned", "in-dist. success", "mean OOD success", "OOD drop",
              "in-dist. crash", "mean OOD crash", "in-dist. final distance (m)", "reached target",
              "steps to target", "minutes to target", "params"]
    return markdown_table(header, rows)


def _axismarkdown_table(summary: Mapping[str, Any], axis: str, subset: str) -> list[str]:
    """Rows level by level (variants side by side at each), then each variant's mean OOD success."""
    parts = {name: entry[subset]["axes"][axis] for name, entry in summary["variants"].items()
             if entry[subset] is not None and axis in entry[subset]["axes"]}
    order, _ = _level_positions(summary, axis)
    rows = [[_level_text(level), name, *(_with_interval(level[m], m) for m in METRICS)]
            for value in order for name, part in parts.items() for level in part["levels"] if level["level"] == value]
    rows += [["mean OOD", name, _with_interval(part["ood_success"], "success_rate"), "", "", ""]
             for name, part in parts.items()]
    return markdown_table(["level", "variant", *(METRIC_TEXT[m] for m in METRICS)], rows)


def study_markdown(summary: Mapping[str, Any]) -> str:
    """``report.md``: overview, differences with verdicts, one table per axis; all seeds, then
    the seeds that learned."""
    settings = summary["settings"]
    lines = [
        "# Study report", "",
        f"Variants: {', '.join(summary['variants'])}; reference: {settings['reference']}. "
        f"{settings['episodes']} paired episodes per run and level (episode seeds "
        f"{settings['episode_seeds'][0]}-{settings['episode_seeds'][1]}). A seed learned when its "
        f"in-distribution success is at least {100 * settings['learned_level']:g} %.", "",
        "Values are means over training seeds of each run's mean over episodes; [low, high] are 95 % "
        f"intervals of a hierarchical bootstrap ({settings['resamples']} resamples: training seeds per "
        "variant, then episodes, one episode draw shared by every run and level so comparisons stay "
        "paired; see `agents/analysis.py`). The learned fraction has a Wilson 95 % interval over seeds. "
        "Mean OOD success = mean over axes of the mean success over the axis's off-nominal levels; "
        "OOD drop = in-distribution success - mean OOD success. Final distance in metres (episodes "
        "that flew), time to goal in seconds (successful episodes); steps and minutes to target are "
        "means over the runs that reached it.", "",
    ]
    tuning = settings.get("tuning")
    if tuning:
        lines += [f"Every variant was tuned first with the same effort: {tuning['trials']} trials of "
                  f"{tuning['budget']:,} env steps each (Optuna TPE with median pruning, `liquid-drones tune`); "
                  f"its seeds then trained the best trial's config. Tuned keys: "
                  + "; ".join(f"{variant}: {', '.join(keys) or 'no complete trial, untuned'}"
                              for variant, keys in tuning["best"].items()) + ".", ""]
    if settings.get("failed_runs"):
        lines += ["Runs that failed twice and are left out: " + "; ".join(
            f"{name} ({error})" for name, error in settings["failed_runs"].items()) + ".", ""]
    if settings["axes"]:
        lines += ["![robustness](robustness.png)", "", "![graded metrics](graded.png)", ""]
    if summary["curves"]:
        lines += ["![learning curves](learning_curves.png)", ""]
    if summary["differences"]["all"]:
        lines += ["![differences](differences.png)", ""]
    for subset, title in (("all", "all seeds"), ("learned", "seeds that learned")):
        lines += [f"## Overview: {title}", ""] + _overview(summary, subset) + [""]
        differences = summary["differences"][subset]
        if differences:
            lines += [f"### Differences to {settings['reference']} ({title}, paired; success in "
                      "percentage points, 95 % interval)", "", *(f"- {d['verdict']}" for d in differences), ""]
        for axis, label in settings["axes"].items():
            lines += [f"### {axis}: {label} ({title})", ""] + _axismarkdown_table(summary, axis, subset) + [""]
    errors = {name: e["errors"] for name, e in summary["variants"].items() if e["errors"]}
    if errors:
        lines += [f"Episodes that raised (counted as failures): {errors}.", ""]
    return "\n".join(lines)


def _colours(names: Sequence[str]) -> dict[str, str]:
    cycle = pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
    return {name: cycle[i % len(cycle)] for i, name in enumerate(names)}


def _grid(panels: int, width: float, height: float, rows: int = 1) -> tuple[Any, np.ndarray]:
    """A figure of ``rows`` x ``panels`` axes (wrapped at 4 columns when rows == 1; with several
    rows, the panels of a row share their y axis: one metric per row)."""
    ncols = min(4, panels) if rows == 1 else panels
    nrows = math.ceil(panels / ncols) if rows == 1 else rows
    fig, axes = pyplot().subplots(nrows, ncols, figsize=(width * ncols, height * nrows + 1.0), squeeze=False,
                                   sharey="row" if rows > 1 else False)
    return fig, axes


def _level_positions(summary: Mapping[str, Any], axis: str) -> tuple[list[Any], list[str]]:
    """The levels of an axis's curve (nominal included) in order, and their tick labels."""
    levels: dict[Any, str] = {}
    for entry in summary["variants"].values():
        if entry["all"] is not None and axis in entry["all"]["axes"]:
            for level in entry["all"]["axes"][axis]["levels"]:
                levels[level["level"]] = _level_text(level).replace(" (nominal)", "\n(nominal)")
    order = sorted(levels, key=lambda v: -math.inf if v is None else v)
    return order, [levels[v] for v in order]


def _finish(fig: Any, panels: np.ndarray, used: int, caption: str, legend: bool = True) -> None:
    for panel in list(panels.flat)[used:]:
        panel.set_visible(False)
    if legend:
        handles, labels = panels.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), frameon=False)
    fig.text(0.5, 0.005, caption, ha="center", va="bottom", fontsize=8, wrap=True)
    height = fig.get_figheight()  # inches: keep 0.45 in for the caption and 0.5 in for the legend
    fig.tight_layout(rect=(0, 0.45 / height, 1, 1 - (0.5 if legend else 0.1) / height))


def _level_curves(summary: Mapping[str, Any], metrics: Sequence[str], path: Path, caption: str,
                  seed_points: bool) -> None:
    """One panel per metric and axis: per variant, the mean at each level with its 95 % interval
    (dodged so that variants do not hide each other), and optionally each seed's own success."""
    axes = list(summary["settings"]["axes"])
    names = list(summary["variants"])
    colours = _colours(names)
    rows = len(metrics)
    fig, panels = _grid(len(axes), 3.8, 2.9, rows) if rows > 1 else _grid(len(axes), 3.8, 3.0)
    width = 0.7 / max(1, len(names))
    for j, axis in enumerate(axes):
        order, ticks = _level_positions(summary, axis)
        for i, metric in enumerate(metrics):
            panel = panels[i, j] if rows > 1 else panels.flat[j]
            scale = 100.0 if metric.endswith("rate") else 1.0
            for k, name in enumerate(names):
                part = summary["variants"][name]["all"]
                if part is None or axis not in part["axes"]:
                    continue
                levels = part["axes"][axis]["levels"]
                x = np.array([order.index(level["level"]) for level in levels]) + (k - (len(names) - 1) / 2) * width
                y = np.array([level[metric]["value"] for level in levels]) * scale
                low = np.array([level[metric]["low"] for level in levels]) * scale
                high = np.array([level[metric]["high"] for level in levels]) * scale
                panel.errorbar(x, y, yerr=[y - low, high - y], fmt="o-", color=colours[name], ms=4, lw=1.2,
                               capsize=0 if seed_points else 2, label=name)  # seed dashes need no caps beside them
                if seed_points:
                    for xi, level in zip(x, levels):
                        seeds = np.array(level["seed_success"]) * scale
                        panel.plot(np.full(len(seeds), xi), seeds, "_", color=colours[name], ms=8, mew=1.5, alpha=0.55)
            panel.set_xticks(range(len(order)), ticks, fontsize=8)
            panel.set_xlim(-0.6, len(order) - 0.4)
            panel.grid(alpha=0.3)
            if i == rows - 1:
                panel.set_xlabel(summary["settings"]["axes"][axis], fontsize=9)
            if i == 0:
                panel.set_title(axis)
            if j == 0 or rows == 1:
                panel.set_ylabel(METRIC_TEXT[metric] + (" (%)" if scale == 100.0 else ""), fontsize=9)
            if metric == "success_rate":
                panel.set_ylim(-4, 104)
    for i, metric in enumerate(metrics):  # after plotting: a shared row autoscales to all its panels
        if metric in ("crash_rate", "final_distance_m"):
            (panels[i, 0] if rows > 1 else panels.flat[0]).set_ylim(0, None)
    _finish(fig, panels, len(axes) * rows if rows > 1 else len(axes), caption)
    save_figure(fig, path)


def plot_learning_curves(summary: Mapping[str, Any], path: Path) -> None:
    """One panel per variant: each seed's evaluation success (thin), their mean (thick) and the
    band between the lowest and highest seed."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    curves = summary["curves"]
    names = list(curves)
    colours = _colours(list(summary["variants"]) + [n for n in names if n not in summary["variants"]])
    fig, panels = _grid(len(names), 3.8, 3.0)
    for panel, name in zip(panels.flat, names):
        c = curves[name]
        t = np.array(c["timesteps"], dtype=float)
        for run in c["runs"]:
            panel.plot(t, 100 * np.array(run, dtype=float), color=colours[name], lw=0.7, alpha=0.5)
        panel.fill_between(t, 100 * np.array(c["low"]), 100 * np.array(c["high"]), color=colours[name],
                           alpha=0.15, lw=0)
        panel.plot(t, 100 * np.array(c["mean"]), color=colours[name], lw=2.2)
        panel.set(title=f"{name} ({len(c['seeds'])} seeds)", xlabel="training steps", ylim=(-4, 104))
        panel.xaxis.set_major_locator(MaxNLocator(5))
        panel.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g}k"))
        panel.grid(alpha=0.3)
    for panel in panels[:, 0]:
        panel.set_ylabel("evaluation success (%)")
    _finish(fig, panels, len(names), "Thick: mean over seeds; thin: each seed; band: lowest to highest seed. "
            "A run that stopped at its target keeps its last evaluation.", legend=False)
    save_figure(fig, path)


def plot_differences(summary: Mapping[str, Any], path: Path) -> None:
    """Forest plot: every difference to the reference (all seeds) with its 95 % interval."""
    plt = pyplot()
    differences = summary["differences"]["all"]
    colours = _colours(list(summary["variants"]))
    fig, panel = plt.subplots(figsize=(7.5, 1.2 + 0.32 * len(differences)))
    y = np.arange(len(differences))[::-1]
    for yi, d in zip(y, differences):
        panel.errorbar(100 * d["value"], yi, xerr=[[100 * (d["value"] - d["low"])], [100 * (d["high"] - d["value"])]],
                       fmt="o", color=colours[d["variant"]], capsize=3, ms=5)
    panel.axvline(0, color="black", lw=0.8)
    for yi, above, below in zip(y[1:], differences, differences[1:]):
        if above["variant"] != below["variant"]:
            panel.axhline(yi + 0.5, color="grey", lw=0.5)
    panel.set_yticks(y, [f"{d['variant']}: {d['quantity']}" for d in differences], fontsize=8)
    panel.set_ylim(-0.7, len(differences) - 0.3)
    panel.set_xlabel(f"success difference to {summary['settings']['reference']} (percentage points)")
    panel.grid(axis="x", alpha=0.3)
    panel.set_title("Paired differences, all seeds (95 % hierarchical-bootstrap intervals)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def write_study_report(summary: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``study.json`` (strict JSON, NaN as null), ``report.md``, ``robustness.png``,
    ``graded.png`` and, when there is something to show, ``learning_curves.png`` and
    ``differences.png`` into ``out_dir``, each atomically; return their paths."""
    out = Path(out_dir)
    write_json(out / "study.json", summary)
    write_text(out / "report.md", study_markdown(summary))
    written = [out / "study.json", out / "report.md"]
    if summary["settings"]["axes"]:
        written += [out / "robustness.png", out / "graded.png"]
        _level_curves(summary, ["success_rate"], out / "robustness.png",
                      "Success by level (all seeds): mean over seeds with its 95 % hierarchical-bootstrap "
                      "interval; dashes: each seed's own success.", seed_points=True)
        _level_curves(summary, ["final_distance_m", "crash_rate", "time_to_goal_s"], out / "graded.png",
                      "Graded metrics by level (all seeds): mean over seeds with 95 % hierarchical-bootstrap "
                      "intervals. Time to goal: successful episodes only.", seed_points=False)
    if summary["curves"]:
        plot_learning_curves(summary, out / "learning_curves.png")
        written.append(out / "learning_curves.png")
    if summary["differences"]["all"]:
        plot_differences(summary, out / "differences.png")
        written.append(out / "differences.png")
    return written
