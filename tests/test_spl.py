"""SPL's shortest path enters each goal's success ball: SPL <= 1, and 1 only for a shortest flight."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agents.flight import expert_spec, fly
from envs.shortest_path import shortest_path_through_balls


def test_a_straight_line_of_balls_is_cut_short_by_one_radius():
    assert shortest_path_through_balls([0, 0, 0], [[1, 0, 0], [2, 0, 0], [3, 0, 0]], 0.2) == pytest.approx(2.8)
    assert shortest_path_through_balls([0, 0, 0], [[0, 0, 0.1]], 0.2) == 0.0  # starting inside the ball
    assert shortest_path_through_balls([0, 0, 0], [], 0.2) == 0.0


def test_no_path_through_the_balls_is_shorter_and_the_optimum_is_attained():
    rng = np.random.default_rng(0)
    for _ in range(5):
        start, centres = rng.uniform(-2, 2, 3), rng.uniform(-2, 2, (4, 3))
        shortest = shortest_path_through_balls(start, centres, 0.2)
        legs = sum(math.dist(a, b) for a, b in zip([start, *centres], centres))
        assert legs - 0.2 - 3 * 0.4 <= shortest <= legs - 0.2
        for _ in range(200):  # random touch points inside each ball: never shorter
            offsets = rng.normal(size=(4, 3))
            offsets *= (0.2 * rng.uniform(0, 1, (4, 1)) ** (1 / 3)) / np.linalg.norm(offsets, axis=1, keepdims=True)
            points = [start, *(centres + offsets)]
            assert sum(math.dist(a, b) for a, b in zip(points, points[1:])) >= shortest - 1e-9


@pytest.mark.parametrize("env_id", ["LiquidDrones/Waypoints-v0", "LiquidDrones/Hover-v0"])
def test_spl_of_flown_episodes_is_at_most_one_and_one_only_for_a_path_no_longer_than_the_shortest(env_id):
    flights = fly(expert_spec(env_id), range(4))
    assert any(f.result.success for f in flights)
    for flight in flights:
        r = flight.result
        assert 0.0 <= r.spl <= 1.0
        if r.success:
            assert r.path_length_m >= r.shortest_path_m  # the flight entered every success ball
            assert (r.spl == 1.0) == (r.path_length_m <= r.shortest_path_m)
