"""Study analysis on synthetic studies: bootstrap coverage, verdicts, learned seeds, the report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from agents.analysis import (
    StudyDataError,
    analyse_study,
    draw_weights,
    two_stage_mean,
    verdict,
    write_study_report,
)
from agents.io import strict as strict_json
from agents.metrics import EpisodeResult, interval, wilson_interval

AXIS_LABELS = {"wind": "wind speed (m/s)", "mass": "mass factor (x)"}
NOMINAL_LEVELS = {"wind": 0.0, "mass": 1.0}
LEVELS = {"wind": (1.0, 2.0, 3.0), "mass": (0.8, 1.2)}


def simulated_difference_coverage(studies: int = 200, seeds: int = 5, episodes: int = 30,
                                  means: tuple[float, float] = (0.7, 0.6), concentration: float = 8.0,
                                  resamples: int = 1000) -> tuple[float, float]:
    """How often the 95 % interval of the difference of two variants' success covers the true
    difference, for the hierarchical bootstrap and for an episode-only bootstrap that pools every
    episode of a variant as if its seeds did not exist.

    Each simulated seed's success probability is Beta-distributed around its variant's mean
    (``concentration`` 8: a seed standard deviation of about 0.15), and its episodes are
    Bernoulli draws of it: the seed-level variance a study has.
    """
    rng = np.random.default_rng(12)
    truth = means[0] - means[1]
    covered = {"hierarchical": 0, "episode-only": 0}
    for _ in range(studies):
        outcomes = []
        for mean in means:
            p = rng.beta(mean * concentration, (1 - mean) * concentration, size=seeds)
            outcomes.append((rng.random((seeds, 1, episodes)) < p[:, None, None]).astype(float))
        weights = draw_weights(rng, episodes, {0: seeds, 1: seeds}, resamples)
        hierarchical = [two_stage_mean(o, weights.episodes, weights.seeds[i])[:, 0] for i, o in enumerate(outcomes)]
        pooled = [o.ravel()[rng.integers(0, o.size, size=(resamples, o.size))].mean(axis=1) for o in outcomes]
        for name, (a, b) in (("hierarchical", hierarchical), ("episode-only", pooled)):
            low, high = interval(a - b)
            covered[name] += low <= truth <= high
    return covered["hierarchical"] / studies, covered["episode-only"] / studies


def test_hierarchical_bootstrap_covers_a_known_difference_where_an_episode_only_bootstrap_does_not():
    hierarchical, episode_only = simulated_difference_coverage()
    assert 0.90 <= hierarchical <= 0.99
    assert episode_only < 0.85


def episode_rows(probabilities: dict[str, list[float]], episodes: int = 12, seed: int = 0) -> list[dict[str, str]]:
    """CSV-like rows of a synthetic study: per variant, each training seed's in-distribution
    success probability; success falls with the level of each axis; failures split into
    crashes and timeouts."""
    rng = np.random.default_rng(seed)
    rows = []
    for variant, seed_probabilities in probabilities.items():
        for training_seed, p in enumerate(seed_probabilities):
            cells = [("nominal", "", p)] + [(axis, level, p * (1 - 0.15 * (i + 1)))
                                            for axis, levels in LEVELS.items() for i, level in enumerate(levels)]
            for axis, level, p_cell in cells:
                for e in range(episodes):
                    success = rng.random() < p_cell
                    crashed = not success and rng.random() < 0.5
                    distance = rng.uniform(0.01, 0.09) if success else rng.uniform(0.1, 0.6)
                    time_s = rng.uniform(3.0, 6.0) + (level if axis == "wind" else 0.0) if success else 10.0
                    result = EpisodeResult(e, success, crashed, not (success or crashed), 240, time_s, 1.5, 1.0,
                                           distance, 0.1, 1.0)
                    row = {k: str(v) for k, v in result.to_row().items()}
                    rows.append({**row, "variant": variant, "seed": str(training_seed), "axis": axis,
                                 "level": str(level), "episode_seed": str(100 + e)})
    return rows


def analyse(rows, reference="lstm", nominal_levels=NOMINAL_LEVELS):
    return analyse_study(rows, [], [], reference=reference, learned_level=0.9, axis_labels=AXIS_LABELS,
                         resamples=300, nominal_levels=nominal_levels)


@pytest.mark.parametrize("difference, low, high, seeds, ending", [
    (-0.05, -0.12, 0.02, 5, "no evidence of a difference"),
    (0.10, 0.03, 0.18, 5, "ncp-cfc is better"),
    (-0.10, -0.18, -0.03, 5, "lstm is better"),
    (-0.10, -0.18, -0.03, 1, "no verdict: one training seed shows no seed-to-seed variation"),
    (math.nan, math.nan, math.nan, 5, "not enough data for a verdict"),
])
def test_verdict_names_the_better_variant_only_when_the_interval_excludes_zero(difference, low, high, seeds, ending):
    sentence = verdict("ncp-cfc", "lstm", "mean OOD success", difference, low, high, seeds)
    assert sentence.endswith(" — " + ending)
    if not math.isnan(difference):
        assert sentence.startswith(f"ncp-cfc vs lstm, mean OOD success: {100 * difference:+.0f} % "
                                   f"[{100 * low:+.0f}, {100 * high:+.0f}]")


def test_episodes_hard_for_every_run_widen_each_variant_but_cancel_in_their_paired_difference():
    rows = episode_rows({"lstm": [1.0, 1.0, 1.0], "ncp-cfc": [1.0, 1.0, 1.0]}, episodes=10)
    hard = {"100", "101", "102", "103"}  # the same four episode seeds fail for every run at every level
    rows = [{**r, "success": str(r["episode_seed"] not in hard)} for r in rows if r["axis"] == "nominal"]
    summary = analyse(rows)
    lstm = summary["variants"]["lstm"]["all"]["in_distribution"]["success_rate"]
    assert lstm["value"] == pytest.approx(0.6)
    assert lstm["high"] - lstm["low"] > 0.3  # ten episodes: the episode draw is most of the uncertainty
    difference = next(d for d in summary["differences"]["all"] if d["quantity"] == "in-distribution success")
    assert (difference["value"], difference["low"], difference["high"]) == (0.0, 0.0, 0.0)


def test_seeds_that_never_learn_count_in_the_learned_fraction_and_only_in_the_all_seeds_results():
    rows = episode_rows({"lstm": [1.0, 1.0, 0.0, 0.0], "mlp": [0.0, 0.0]})
    summary = analyse(rows)
    lstm = summary["variants"]["lstm"]
    assert lstm["learned_fraction"]["value"] == 0.5
    assert lstm["learned_seeds"] == [0, 1]
    assert lstm["learned"]["in_distribution"]["success_rate"]["value"] == 1.0
    assert lstm["all"]["in_distribution"]["success_rate"]["value"] == 0.5
    assert 0.0 < lstm["learned_fraction"]["low"] < 0.5 < lstm["learned_fraction"]["high"] < 1.0  # Wilson
    assert summary["variants"]["mlp"]["learned"] is None
    assert [d["variant"] for d in summary["differences"]["learned"]] == []  # no mlp seed to compare


def test_paired_differences_name_the_variant_whose_seeds_are_clearly_better():
    rows = episode_rows({"lstm": [0.35, 0.4, 0.45, 0.4], "ncp-cfc": [0.95, 0.9, 1.0, 0.95]}, episodes=20)
    differences = analyse(rows)["differences"]["all"]
    by_quantity = {d["quantity"]: d for d in differences}
    assert set(by_quantity) == {"mean OOD success", "in-distribution success", "mass OOD success",
                                "wind OOD success"}
    assert by_quantity["mean OOD success"]["low"] > 0
    assert by_quantity["mean OOD success"]["verdict"].endswith("— ncp-cfc is better")


def test_study_rows_that_break_the_pairing_are_refused_before_any_resampling():
    rows = episode_rows({"lstm": [0.9, 0.9]})
    with pytest.raises(StudyDataError, match="same episodes"):
        analyse([r for r in rows if not (r["seed"] == "1" and r["axis"] == "wind" and r["episode_seed"] == "100")])
    with pytest.raises(StudyDataError, match="reference variant 'gru'"):
        analyse(rows, reference="gru")
    wind = next(r for r in rows if r["axis"] == "wind")
    with pytest.raises(StudyDataError, match="axis 'wind' needs a level"):
        analyse([{**wind, "level": ""}, *rows])


def test_strict_json_turns_nan_and_numpy_values_into_plain_json():
    value = {"a": np.float64(math.nan), "b": [np.int64(3), math.inf, np.bool_(True)], "c": np.array([0.5])}
    assert json.dumps(strict_json(value), allow_nan=False) == '{"a": null, "b": [3, null, true], "c": [0.5]}'


def test_study_report_writes_every_file_from_a_small_synthetic_study(tmp_path):
    rows = episode_rows({"lstm": [0.9, 1.0, 0.6], "ncp-cfc": [1.0, 0.95, 1.0], "mlp": [0.0, 0.7, 0.5]})
    runs = [{"variant": v, "seed": str(s), "steps_to_target": "" if v == "mlp" else str(50_000 * (s + 1)),
             "minutes_to_target": "" if v == "mlp" else str(0.5 * (s + 1)), "params": "3000"}
            for v in ("lstm", "ncp-cfc", "mlp") for s in range(3)]
    curves = [{"variant": v, "seed": str(s), "timesteps": str(t), "success_rate": str(min(1.0, t / (1e5 * (s + 1)))),
               "wall_time_s": str(t / 1000)} for v in ("lstm", "ncp-cfc", "mlp") for s in range(3)
              for t in range(20_000, 20_000 * (5 + s), 20_000)]
    summary = analyse_study(rows, runs, curves, reference="lstm", learned_level=0.9, axis_labels=AXIS_LABELS,
                            resamples=300, nominal_levels=NOMINAL_LEVELS)
    written = write_study_report(summary, tmp_path)
    names = {p.name for p in written}
    assert names == {"study.json", "report.md", "robustness.png", "graded.png", "learning_curves.png",
                     "differences.png"}
    assert all(p.stat().st_size > 0 for p in written)
    assert not list(tmp_path.glob("*.tmp"))
    saved = json.loads((tmp_path / "study.json").read_text())  # strict: json would read NaN, so check text
    assert "NaN" not in (tmp_path / "study.json").read_text()
    assert saved["variants"]["mlp"]["steps_to_target"] is None
    assert saved["variants"]["lstm"]["steps_to_target"] == 100_000
    report = (tmp_path / "report.md").read_text()
    for text in ("## Overview: all seeds", "## Overview: seeds that learned", "### wind: wind speed (m/s)",
                 "ncp-cfc vs lstm, mean OOD success:", "0 (nominal)"):
        assert text in report


def test_axis_rows_at_the_nominal_level_are_refused_since_the_nominal_rows_serve_every_axis():
    rows = episode_rows({"lstm": [0.9]}, episodes=3)
    with pytest.raises(StudyDataError, match="wind rows at its nominal level 1"):
        analyse(rows, nominal_levels={"wind": 1.0})


def test_a_rate_that_is_zero_in_every_episode_keeps_the_pooled_wilson_interval_not_a_point():
    summary = analyse(episode_rows({"lstm": [1.0, 1.0, 1.0]}, episodes=10))
    crash = summary["variants"]["lstm"]["all"]["in_distribution"]["crash_rate"]
    assert crash["value"] == 0.0 and crash["low"] == 0.0
    assert crash["high"] == pytest.approx(wilson_interval(0, 30)[1])  # 3 seeds x 10 episodes pooled
