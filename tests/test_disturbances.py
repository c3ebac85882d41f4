"""Each disturbance axis changes the simulation the way it claims."""

from __future__ import annotations

import math

import numpy as np
import pytest

import envs
from envs.disturbances import AXES, DEFAULT_LEVELS, Disturbances, EpisodeDisturbance


def _fly_expert(env, seed, steps):
    env.reset(seed=seed)
    positions, rpms = [], []
    for _ in range(steps):
        env.step(env.expert_action())
        positions.append(env.sim.position)
        rpms.append(list(env.sim.rpm))
    return np.array(positions), np.array(rpms)


def _hover_env(**disturbances):
    # The hold never completes, so the expert keeps flying for the whole window.
    return envs.HoverEnv(action="velocity", hold_seconds=100.0, episode_seconds=10.0,
                         disturbances=disturbances)


def test_3ms_wind_pushes_a_pid_hovering_drone_downwind():
    calm, _ = _fly_expert(_hover_env(), 0, 240)
    windy_env = _hover_env(wind=3.0, gust=0.0)
    windy, _ = _fly_expert(windy_env, 0, 240)
    downwind = np.array(windy_env.episode_disturbance.steady_wind) / 3.0
    shift = (windy - calm) @ downwind
    assert shift.max() > 0.05  # metres, before the integrator wins it back
    assert np.linalg.norm(windy_env.episode_disturbance.steady_wind) == pytest.approx(3.0)


def test_gusts_follow_the_dryden_intensities_and_correlation_times():
    speed, gust = 4.0, 0.1
    episode = EpisodeDisturbance(Disturbances(wind=speed, gust=gust), np.random.default_rng(0),
                                 control_dt=1 / 48, substeps=5)
    winds = np.array([episode.wind() for _ in range(48 * 3000)])
    vertical_std = gust * speed
    assert np.allclose(winds.mean(axis=0), episode.steady_wind, atol=0.15)
    assert np.allclose(winds.std(axis=0), [1.96 * vertical_std] * 2 + [vertical_std], rtol=0.1)
    # Correlation time L / wind: vertical L_w = 3.05 m -> 0.76 s at 4 m/s, horizontal 23 m.
    assert episode.gust_time == pytest.approx((23.0 / speed, 23.0 / speed, 3.048 / speed), rel=0.01)
    lag = round(episode.gust_time[2] * 48)
    w = winds[:, 2] - winds[:, 2].mean()
    assert np.corrcoef(w[:-lag], w[lag:])[0, 1] == pytest.approx(math.exp(-1.0), abs=0.05)
    env = _hover_env(wind=2.0)
    env.reset(seed=1)
    seen = set()
    for _ in range(10):
        env.step(env.expert_action())
        seen.add(env.sim.wind)
    assert len(seen) == 10  # the simulated wind changes every control step


def test_mass_x1_4_raises_hover_thrust_by_about_40_percent():
    _, nominal = _fly_expert(_hover_env(), 0, 300)
    heavy_env = _hover_env(mass=1.4)
    _, heavy = _fly_expert(heavy_env, 0, 300)
    thrust_ratio = (heavy[-50:] ** 2).sum(axis=1).mean() / (nominal[-50:] ** 2).sum(axis=1).mean()
    assert thrust_ratio == pytest.approx(1.4, rel=0.03)
    assert heavy_env.sim.params.mass == pytest.approx(0.027 * 1.4)
    assert heavy_env.sim.params.ixx == pytest.approx(1.4e-5 * 1.4)
    assert heavy_env.pid.params.mass == pytest.approx(0.027)  # the controller is not told


def test_weak_motor_scales_one_rotor_and_the_pid_compensates():
    env = _hover_env(motor=0.7)
    _, rpms = _fly_expert(env, 0, 300)
    weak = env.episode_disturbance.motor_index
    assert sorted(env.sim.params.motor_efficiency) == [0.7, 1.0, 1.0, 1.0]
    assert env.sim.params.motor_efficiency[weak] == 0.7
    assert rpms[-1, weak] == pytest.approx(rpms[-1].max())  # it must spin fastest


def _first_climbing_step(latency_ms):
    env = envs.HoverEnv(action="motors", disturbances={"latency": latency_ms})
    env.reset(seed=0)
    for step in range(40):
        obs, *_ = env.step(np.ones(4, dtype=np.float32))
        if obs[5] > 0.05:  # observed vertical speed (m/s)
            return step
    raise AssertionError("never climbed")


@pytest.mark.parametrize("k", [1, 2, 3])
def test_latency_of_k_control_steps_delays_the_response_by_k_steps(k):
    control_period_ms = 1000.0 / 48
    assert _first_climbing_step(k * control_period_ms) - _first_climbing_step(0.0) == k


@pytest.mark.parametrize(("rate", "physics"), [(24, 240), (48, 240), (96, 288)])
def test_ctrl_rate_changes_the_step_duration_in_info(rate, physics):
    env = envs.WaypointsEnv(disturbances=Disturbances.level("ctrl_rate", rate))
    _, info = env.reset(seed=0)
    _, _, _, _, info = env.step(env.expert_action())
    assert info["dt"] == pytest.approx(1.0 / rate)
    assert env.pyb_freq == physics and env.max_steps == 20 * rate


def test_range_multiplies_the_goal_distance_for_the_same_seed():
    near = envs.HoverEnv()
    far = envs.HoverEnv(disturbances={"range": 3.0})
    near.reset(seed=4)
    far.reset(seed=4)
    assert np.allclose(np.array(far.goal), 3.0 * np.array(near.goal))
    route = envs.WaypointsEnv(disturbances={"range": 2.0})
    route.reset(seed=4)
    base = envs.WaypointsEnv()
    base.reset(seed=4)
    assert np.allclose(np.array(route.waypoints), 2.0 * np.array(base.waypoints))


def test_push_changes_velocity_by_its_size_once_after_take_off():
    env = _hover_env(push=1.0)
    env.reset(seed=2)
    take_off = None
    for step in range(240):
        before = np.array(env.sim.velocity)
        _, _, _, _, info = env.step(env.expert_action())
        if take_off is None and env.sim.position[2] > 0.1:
            take_off = (step + 1) * env.control_dt
        if info["pushed"]:
            break
    jump = np.array(env.sim.velocity) - before
    assert np.linalg.norm(jump[:2]) == pytest.approx(1.0, abs=0.1)
    assert info["push_time"] - take_off == pytest.approx(env.episode_disturbance.push_delay,
                                                         abs=2 * env.control_dt)
    assert 0.5 <= env.episode_disturbance.push_delay <= 2.0
    _, _, _, _, info = env.step(env.expert_action())
    assert info["pushed"] and np.linalg.norm(np.array(env.sim.velocity) - before) < 2.0


def test_observation_noise_perturbs_state_entries_but_not_the_previous_action():
    clean, noisy = envs.HoverEnv(), envs.HoverEnv(disturbances={"obs_noise": 0.05})
    clean_obs, _ = clean.reset(seed=0)
    noisy_obs, _ = noisy.reset(seed=0)
    difference = noisy_obs - clean_obs
    assert np.array_equal(difference[18:22], np.zeros(4))
    state = np.concatenate([difference[:18]])
    assert 0.02 < state.std() < 0.09
    # Reward and success use the true state: the same actions give the same rewards.
    action = np.zeros(4, dtype=np.float32)
    assert clean.step(action)[1] == noisy.step(action)[1]


def test_same_seed_gives_the_same_task_layout_at_every_level():
    goals = set()
    for axis in ("wind", "mass", "motor", "obs_noise", "latency", "push"):
        for value in DEFAULT_LEVELS[axis]:
            env = envs.HoverEnv(disturbances=Disturbances.level(axis, value))
            env.reset(seed=11)
            goals.add(env.goal)
    assert len(goals) == 1


def test_ranges_are_drawn_per_episode_for_domain_randomisation():
    env = envs.HoverEnv(disturbances={"mass": [0.8, 1.2], "wind": (0.0, 2.0)})
    masses = set()
    for seed in range(5):
        env.reset(seed=seed)
        masses.add(env.sim.params.mass)
        assert 0.8 * 0.027 <= env.sim.params.mass <= 1.2 * 0.027
        assert 0.0 <= np.linalg.norm(env.episode_disturbance.steady_wind) <= 2.0
    assert len(masses) == 5


def test_disturbances_round_trip_and_parse_cli_strings():
    config = Disturbances.parse(["wind=3", "mass=0.9:1.1", "ctrl_rate=96"])
    assert config == Disturbances(wind=3.0, mass=(0.9, 1.1), ctrl_rate=96)
    assert Disturbances.from_dict(config.to_dict()) == config
    assert set(DEFAULT_LEVELS) == set(AXES)


@pytest.mark.parametrize(("values", "message"), [
    ({"wnd": 1.0}, r"unknown disturbance axis \['wnd'\]; allowed: \['wind'"),
    ({"motor": 1.3}, r"motor=1.3 out of range: allowed \(0.0, 1.0\]"),
    ({"mass": (1.2, 0.8)}, "low <= high"),
    ({"ctrl_rate": 0}, "positive integer"),
])
def test_bad_disturbances_are_rejected_with_the_axis_named(values, message):
    with pytest.raises(ValueError, match=message):
        Disturbances.from_dict(values)
