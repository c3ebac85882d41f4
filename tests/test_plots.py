"""Plots a reader can trust: what each one must show, from real flights and real files."""

from __future__ import annotations

import math

import numpy as np

import envs
from agents.flight import expert_spec, fly
from agents.report import plot_training_curve, write_trajectories


def test_forest_reports_its_trees_and_other_tasks_none():
    forest = envs.ForestEnv()
    forest.reset(seed=0)
    assert forest.obstacles() == [(x, y, forest.tree_radius) for x, y, _ in forest.trees] and forest.obstacles()
    forest.close()
    hover = envs.HoverEnv()
    hover.reset(seed=0)
    assert hover.obstacles() == []
    hover.close()


def test_traced_flights_carry_trees_the_targets_path_and_the_wind_that_trajectories_png_draws(tmp_path):
    [forest] = fly(expert_spec("LiquidDrones/Forest-v0", {"episode_seconds": 1.0}), [0], trace=1)
    [follow] = fly(expert_spec("LiquidDrones/Follow-v0", {"episode_seconds": 1.0}), [0], trace=1)
    [windy] = fly(expert_spec("LiquidDrones/Hover-v0", {"episode_seconds": 1.0}), [0], {"wind": 2.0}, trace=1)
    assert forest.obstacles and all(radius == 0.15 for _, _, radius in forest.obstacles)
    assert follow.goal_path.shape == follow.positions.shape
    assert len(np.unique(follow.goal_path, axis=0)) > 10  # the target moved every step
    assert math.hypot(*windy.wind[:2]) == 2.0 and forest.wind == (0.0, 0.0, 0.0)
    for flight in (forest, follow, windy):
        write_trajectories([flight], 48, tmp_path, "test")
        assert (tmp_path / "trajectories.png").stat().st_size > 10_000


def test_training_curve_writes_its_png(tmp_path):
    rows = [{"timesteps": s, "success_rate": s / 4096, "crash_rate": 0.1, "mean_reward": 1.0} for s in (1024, 4096)]
    plot_training_curve(rows, tmp_path / "curve.png", "run: Hover-v0, core mlp, seed 0")
    assert (tmp_path / "curve.png").stat().st_size > 10_000
