"""Evaluation metrics on hand-built episodes: outcome rates, Wilson interval, SPL, robustness."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agents.metrics import (
    EpisodeResult,
    Summary,
    action_smoothness,
    interval,
    ood_drop,
    ood_success,
    paired_bootstrap,
    spl,
    wilson_interval,
)


def episode(seed=0, outcome="success", time_s=2.0, flown=2.0, shortest=1.0, distance=0.05, smooth=0.1):
    if outcome == "error":
        return EpisodeResult.failed(seed, "ValueError: action contains NaN or inf")
    return EpisodeResult(seed, outcome == "success", outcome == "crash", outcome == "timeout",
                         steps=int(48 * time_s), time_s=time_s, path_length_m=flown,
                         shortest_path_m=shortest, final_distance_m=distance,
                         action_smoothness=smooth, reward=1.0)


@pytest.mark.parametrize("successes, n, expected", [
    (8, 10, (0.4902, 0.9433)),   # Wilson (1927) score interval, z = 1.96
    (0, 10, (0.0, 0.2775)),
    (10, 10, (0.7225, 1.0)),
    (50, 100, (0.4038, 0.5962)),
    (1, 1, (0.2065, 1.0)),
])
def test_wilson_interval_matches_reference_values(successes, n, expected):
    low, high = wilson_interval(successes, n)
    assert low == pytest.approx(expected[0], abs=5e-5)
    assert high == pytest.approx(expected[1], abs=5e-5)


def test_wilson_interval_of_no_episodes_is_uninformative():
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_spl_weights_success_by_shortest_over_flown_path():
    assert spl(True, shortest=1.0, flown=2.0) == 0.5
    assert spl(True, shortest=1.0, flown=0.9) == 1.0  # cutting the corner never scores above 1
    assert spl(False, shortest=1.0, flown=1.0) == 0.0
    assert math.isnan(spl(True, shortest=math.nan, flown=3.0))  # a moving goal has no SPL


def test_action_smoothness_is_the_mean_absolute_change_per_entry_and_step():
    actions = np.array([[0, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, -1]], dtype=float)
    assert action_smoothness(actions) == pytest.approx(2 / 8)  # two unit changes, 2 steps x 4 entries
    assert math.isnan(action_smoothness(actions[:1]))


def test_summary_of_hand_built_episodes():
    episodes = ([episode(i, "success", time_s=2.0 + i, flown=1.0 + i) for i in range(6)]
                + [episode(6, "crash", distance=1.0), episode(7, "crash", distance=2.0),
                   episode(8, "timeout", distance=0.5), episode(9, "error")])
    s = Summary.of(episodes)
    assert (s.episodes, s.errors) == (10, 1)
    assert (s.success_rate, s.crash_rate, s.timeout_rate, s.error_rate) == (0.6, 0.2, 0.1, 0.1)
    assert (s.success_low, s.success_high) == wilson_interval(6, 10)
    # SPL over all 10 episodes; the failures and the error count as 0.
    assert s.spl == pytest.approx(sum(1.0 / max(1.0 + i, 1.0) for i in range(6)) / 10)
    assert s.time_to_goal_s == pytest.approx(np.mean([2.0 + i for i in range(6)]))
    # Final distance over the 9 flown episodes; the error has none.
    assert s.final_distance_m == pytest.approx((6 * 0.05 + 1.0 + 2.0 + 0.5) / 9)
    assert s.action_smoothness == pytest.approx(0.1)


def test_an_error_can_only_lower_the_success_rate():
    clean = Summary.of([episode(0), episode(1, "crash")])
    with_error = Summary.of([episode(0), episode(1, "crash"), episode(2, "error")])
    assert with_error.success_rate < clean.success_rate
    assert with_error.success_rate + with_error.crash_rate + with_error.timeout_rate + with_error.error_rate == 1


def test_time_to_goal_is_undefined_without_a_success():
    assert math.isnan(Summary.of([episode(0, "crash"), episode(1, "timeout")]).time_to_goal_s)


def test_episode_rows_round_trip_through_csv_strings():
    for original in (episode(3, "timeout", smooth=math.nan), episode(4, "error")):
        row = {key: str(value) for key, value in original.to_row().items()}
        restored = EpisodeResult.from_row(row)
        assert restored.to_row().keys() == original.to_row().keys()
        for key, value in original.to_row().items():
            other = restored.to_row()[key]
            assert other == value or (isinstance(value, float) and math.isnan(value) and math.isnan(other))


def test_mean_ood_success_weighs_each_axis_equally_and_the_drop_is_nominal_minus_it():
    # columns: nominal, wind 2 levels, mass 1 level
    rates = np.array([0.9, 0.6, 0.2, 0.5])
    axes = [[1, 2], [3]]
    assert ood_success(rates, axes) == pytest.approx((0.4 + 0.5) / 2)
    assert ood_drop(rates[0], ood_success(rates, axes)) == pytest.approx(0.9 - 0.45)
    assert ood_success(rates, [[1, 2], []]) == pytest.approx(0.4)  # an axis without OOD levels is skipped


def test_paired_bootstrap_keeps_the_pairing_and_has_wilson_like_marginals():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2, 50)
    outcomes = np.array([a, a, np.ones(50), np.zeros(50)])
    rates = paired_bootstrap(outcomes)
    low, high = interval(rates[:, 1] - rates[:, 0])
    assert -0.05 < low < 0 < high < 0.05  # identical on every seed: only the pseudo-seed differs
    low, high = interval(rates[:, 0])
    wilson = wilson_interval(int(a.sum()), 50)
    assert low == pytest.approx(wilson[0], abs=0.03) and high == pytest.approx(wilson[1], abs=0.03)
    low, high = interval(rates[:, 2])
    assert 0.9 < low < 0.99 and high > 0.999  # 50/50 successes still leave room below 100 %
    assert interval(rates[:, 3])[1] > 0.01


def test_paired_bootstrap_keeps_uncertainty_where_every_episode_has_the_same_outcome():
    # 10/10 at the nominal level, one level at 10/10 and one at 0/10: the drop is 50 % on these
    # seeds, but 10 episodes per level cannot pin it down to the percent.
    rates = paired_bootstrap(np.array([np.ones(10), np.ones(10), np.zeros(10)]))
    low, high = interval(ood_drop(rates[:, 0], ood_success(rates, [[1, 2]])), 0.5)
    assert low < 0.4 and high >= 0.5


def test_paired_bootstrap_sees_a_consistent_difference_that_unpaired_noise_would_hide():
    rng = np.random.default_rng(2)
    base = rng.integers(0, 2, 60)
    better = base.copy()
    better[np.flatnonzero(base == 0)[:6]] = 1  # fixes 6 of the failures, breaks nothing
    rates = paired_bootstrap(np.array([base, better]))
    low, _ = interval(rates[:, 1] - rates[:, 0])
    assert low > 0.0
    unpaired = paired_bootstrap(better[None], seed=1)[:, 0] - paired_bootstrap(base[None], seed=2)[:, 0]
    assert interval(unpaired)[0] < 0.0
