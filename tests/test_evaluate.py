"""Closed-loop evaluation: loading runs, recurrent state per episode, metrics, files, bad input."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers LiquidDrones/*)
from agents.cli import main
from agents.config import load_config
from agents.evaluate import evaluate
from agents.flight import expert_spec, fly, pilot_for
from agents.flight import load_agent as load_run
from agents.run import RunError
from agents.metrics import EPISODE_COLUMNS, wilson_interval
from agents.train import prepare_run_dir, train

SHORT = 2.0  # s per episode: enough for an untrained policy to crash or time out


def train_tiny_run(root: Path, core: str, **core_kwargs) -> Path:
    """A finished run folder from a few hundred env steps (the weights barely move)."""
    overrides = ["env.n_envs=2", "env.vec_env=dummy", f"env.kwargs={{episode_seconds: {SHORT}}}",
                 "algo.n_steps=64", "algo.batch_size=64", "algo.n_epochs=1", "train.total_timesteps=128",
                 "eval.freq=0", "eval.final_episodes=0", "checkpoint.freq=0", "train.progress_bar=false",
                 "train.stop_at_success=null",
                 f"policy.core={core}"]
    if core_kwargs:
        overrides.append("policy.core_kwargs={" + ", ".join(f"{k}: {v}" for k, v in core_kwargs.items()) + "}")
    run_dir = prepare_run_dir(root, f"tiny-{core}")
    train(load_config("hover", overrides), run_dir, log=lambda message: None)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {"cfc": train_tiny_run(root, "ncp-cfc", units=12, output_size=4),
            "mlp": train_tiny_run(root, "mlp")}


def test_load_run_reads_the_run_env_and_policy(runs):
    spec = load_run(runs["cfc"])
    assert spec.env_id == "LiquidDrones/Hover-v0"
    assert spec.env_kwargs == {"episode_seconds": SHORT}
    assert spec.time_input and spec.control_hz == 48 and not spec.is_expert
    assert not load_run(runs["mlp"]).time_input


@pytest.mark.parametrize("core", ["cfc", "mlp"])
def test_an_episode_does_not_depend_on_the_episodes_flown_before_it(runs, core):
    """Recurrent state is reset at every episode start and batch rows do not mix: each episode
    flown in a busy batch (after other episodes in its env slot) equals the same seed flown alone."""
    spec = load_run(runs[core])
    seeds = [5, 6, 7, 8, 9]
    together = fly(spec, seeds, batch=2)
    for seed, flight in zip(seeds, together):
        alone = fly(spec, [seed], batch=2)[0]
        assert flight.result == alone.result
    assert len({f.result.path_length_m for f in together}) == len(seeds)  # real, distinct episodes


def test_carrying_the_state_across_an_episode_start_would_change_the_episode(runs):
    """The reset matters: a pilot that hides the episode start from the policy flies differently."""
    spec = load_run(runs["cfc"])
    pilot = pilot_for(spec)

    class NoReset:
        def begin(self):
            pilot.begin()

        def act(self, obs, starts, flying, deterministic):
            self.calls = getattr(self, "calls", 0) + 1
            return pilot.act(obs, starts & (self.calls == 1), flying, deterministic)

    proper = fly(spec, [5, 6], batch=1)
    leaky = fly(spec, [5, 6], batch=1, pilot=NoReset())
    assert leaky[0].result == proper[0].result
    assert leaky[1].result != proper[1].result


def test_expert_on_hover_succeeds_and_its_metrics_are_consistent():
    spec = expert_spec("LiquidDrones/Hover-v0")
    flights = fly(spec, [0, 1, 2])
    env = gym.make("LiquidDrones/Hover-v0")
    for seed, flight in zip([0, 1, 2], flights):
        r = flight.result
        env.reset(seed=seed)
        start, goal = env.unwrapped.sim.position, env.unwrapped.goal
        assert r.success and not r.crashed and not r.timeout and r.error == ""
        assert r.shortest_path_m == pytest.approx(math.dist(start, goal) - 0.10)  # to the 0.10 m success ball
        assert r.shortest_path_m <= r.path_length_m
        assert 0.5 < r.spl <= 1.0
        assert r.time_s == pytest.approx(r.steps / 48) and r.time_to_goal_s >= 1.0  # includes the 1 s hold
        assert r.final_distance_m < 0.10
    env.close()


def test_waypoints_shortest_path_cuts_the_waypoint_radius_off_the_straight_legs():
    spec = expert_spec("LiquidDrones/Waypoints-v0")
    [flight] = fly(spec, [3])
    env = gym.make("LiquidDrones/Waypoints-v0")
    env.reset(seed=3)
    corners = [env.unwrapped.sim.position, *env.unwrapped.waypoints]
    env.close()
    legs = sum(math.dist(a, b) for a, b in zip(corners, corners[1:]))
    assert len(corners) == 5
    # between the bound of the triangle inequality and the path through the centres stopping 0.2 m short
    assert legs - 0.2 - 3 * 0.4 <= flight.result.shortest_path_m <= legs - 0.2
    assert flight.result.shortest_path_m <= flight.result.path_length_m
    assert flight.goals == [tuple(w) for w in corners[1:]]


def test_ctrl_rate_disturbance_changes_the_step_duration_seen_by_the_episode():
    [flight] = fly(expert_spec("LiquidDrones/Hover-v0"), [0], {"ctrl_rate": 24})
    assert flight.result.time_s == pytest.approx(flight.result.steps / 24)


def test_an_episode_that_raises_is_recorded_and_the_others_are_unchanged():
    spec = expert_spec("LiquidDrones/Hover-v0")
    expert = pilot_for(spec)

    class NanWhenGoalIsEast:
        def begin(self):
            expert.begin()

        def act(self, obs, starts, flying, deterministic):
            actions = expert.act(obs, starts, flying, deterministic)
            for i, env in enumerate(flying):
                if env is not None and env.unwrapped.goal[0] > 0:
                    actions[i] = np.nan
            return actions

    seeds = list(range(8))
    clean = fly(spec, seeds, batch=3)
    faulty = fly(spec, seeds, batch=3, pilot=NanWhenGoalIsEast())
    east = [f.goals[0][0] > 0 for f in clean]
    assert 0 < sum(east) < len(seeds)
    for is_east, good, bad in zip(east, clean, faulty):
        if is_east:
            assert "NaN" in bad.result.error and not bad.result.success
        else:
            assert bad.result == good.result


def test_evaluate_writes_episodes_metrics_trajectories_and_video(tmp_path):
    spec = expert_spec("LiquidDrones/Hover-v0", {"episode_seconds": SHORT})
    summary = evaluate(spec, tmp_path, episodes=5, seed=10, backend="serial", video=1, trace=2,
                       log=lambda message: None)
    with (tmp_path / "episodes.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["seed"]) for r in rows] == [10, 11, 12, 13, 14]
    assert tuple(rows[0]) == EPISODE_COLUMNS
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    successes = sum(r["success"] == "True" for r in rows)
    assert metrics["success_rate"] == summary.success_rate == successes / 5
    assert (metrics["success_low"], metrics["success_high"]) == pytest.approx(wilson_interval(successes, 5))
    assert metrics["seeds"] == [10, 14] and metrics["deterministic"] is True
    assert (tmp_path / "trajectories.png").stat().st_size > 10_000
    with (tmp_path / "trajectories.csv").open() as handle:
        assert {int(r["seed"]) for r in csv.DictReader(handle)} == {10, 11}
    video = [p for p in tmp_path.iterdir() if p.stem == "episodes" and p.suffix in (".mp4", ".gif")]
    assert video and video[0].stat().st_size > 1000


def test_evaluate_on_a_process_pool_gives_the_serial_results(runs, tmp_path):
    spec = load_run(runs["cfc"])
    evaluate(spec, tmp_path / "serial", episodes=6, backend="serial", trace=0, log=lambda m: None)
    evaluate(spec, tmp_path / "pool", episodes=6, backend="local", workers=2, trace=0, log=lambda m: None)
    assert (tmp_path / "serial" / "episodes.csv").read_text() == (tmp_path / "pool" / "episodes.csv").read_text()


def test_load_run_names_what_is_missing(tmp_path, runs):
    with pytest.raises(RunError, match="not found"):
        load_run(tmp_path / "nope")
    with pytest.raises(RunError, match="not a run folder"):
        load_run(tmp_path)
    (tmp_path / "config.yaml").write_text((runs["mlp"] / "config.yaml").read_text())
    with pytest.raises(RunError, match="no model.zip"):
        load_run(tmp_path)


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "does/not/exist"], "run folder 'does/not/exist' not found"),
    (["evaluate"], "give a RUN_DIR"),
    (["evaluate", "--agent", "expert", "--disturb", "gale=3"], "unknown disturbance axis ['gale']"),
    (["evaluate", "--agent", "expert", "--disturb", "density=2"], "does not respond to disturbance density"),
    (["evaluate", "--agent", "expert", "--env", "Orbit-v0"], "unknown env 'Orbit-v0'; allowed"),
    (["evaluate", "--agent", "expert", "--episodes", "0"], "--episodes: must be >= 1, got 0"),
    (["evaluate", "--agent", "expert", "--seed", "-5"], "--seed: must be >= 0, got -5"),
    (["evaluate", "--agent", "expert", "--workers", "-1"], "--workers: must be >= 1, got -1"),
])
def test_bad_evaluate_input_stops_with_a_message_before_any_episode(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--root", str(tmp_path)])
    assert stop.value.code != 0
    assert message in str(stop.value.code) + capsys.readouterr().err
    assert not any(tmp_path.iterdir())
