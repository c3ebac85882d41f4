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


def _summary(agents: int, axes: dict[str, list[float]]) -> dict:
    from agents.metrics import wilson_interval

    entries = {}
    for k in range(agents):
        per_axis = {}
        for axis, levels in axes.items():
            wins = [50 if k < 2 else 50 - 5 * i for i in range(len(levels))]  # two agents identical
            intervals = [wilson_interval(w, 50) for w in wins]
            per_axis[axis] = {"levels": levels, "success": [w / 50 for w in wins],
                              "success_low": [c[0] for c in intervals], "success_high": [c[1] for c in intervals],
                              "nominal": levels[0]}
        entries[f"study-nominal-ncp-cfc/seed-{k}"] = {"axes": per_axis}
    return {"settings": {"levels": axes, "env": "LiquidDrones/Hover-v0", "episodes": 50}, "agents": entries}


def test_robustness_figure_with_two_axes_and_five_agents_keeps_every_text_inside_and_agents_apart():
    from agents.report import pyplot
    from agents.robustness import robustness_figure

    fig = robustness_figure(_summary(5, {"wind": [0.0, 2.5, 5.0], "mass": [0.8, 1.0, 1.2]}))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    for text in fig.findobj(lambda artist: hasattr(artist, "get_text") and artist.get_text()):
        extent = text.get_window_extent(renderer)
        assert box.x0 - 1 <= extent.x0 and extent.x1 <= box.x1 + 1 and box.y0 - 1 <= extent.y0 \
            and extent.y1 <= box.y1 + 1, text.get_text()
    panel = fig.axes[0]
    lines = [container.lines[0] for container in panel.containers]  # each agent's line (errorbar)
    first, second = lines[0].get_xdata(), lines[1].get_xdata()  # the two identical agents
    assert not np.allclose(first, second) and lines[0].get_marker() != lines[1].get_marker()
    pyplot().close(fig)


def test_console_tables_keep_long_run_names_whole_on_one_line(capsys):
    from agents.report import print_rows

    names = [f"study-nominal-ncp-cfc/seed-{k}" for k in range(3)]
    print_rows([{"agent": name, **{f"axis_{i}": "83 % [71, 91]" for i in range(12)}} for name in names], "comparison")
    out = capsys.readouterr().out
    assert all(name in out for name in names)
