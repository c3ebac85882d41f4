"""Gymnasium/SB3 conformance, determinism, validation and rendering of the suite's envs."""

from __future__ import annotations

import gc
import math
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pybullet as p
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from envs.wrappers import AppendStepDuration

MODES = ("motors", "ctbr", "velocity")
INFO_KEYS = {"is_success", "crashed", "distance_to_goal", "path_length", "dt"}


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
@pytest.mark.parametrize("mode", MODES)
def test_gymnasium_and_sb3_checkers_pass_without_warnings(env_id, mode):
    env = gym.make(env_id, action=mode, render_mode="rgb_array")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=False)
        sb3_check_env(env.unwrapped, warn=True)
    env.close()


def test_make_with_module_prefix_works_in_a_fresh_process():
    code = ("import gymnasium as gym; env = gym.make('envs:LiquidDrones/Waypoints-v0'); "
            "obs, info = env.reset(seed=0); print(obs.shape, env.action_space.shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "(25,) (4,)" in out.stdout


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_default_action_modes_and_observation_sizes(env_id):
    env = gym.make(env_id)
    expected = {"LiquidDrones/Hover-v0": ("ctbr", 22), "LiquidDrones/Waypoints-v0": ("velocity", 25),
                "LiquidDrones/Forest-v0": ("velocity", 54), "LiquidDrones/Follow-v0": ("velocity", 25)}
    mode, size = expected[env_id]
    assert env.unwrapped.action_mode.name == mode
    assert env.observation_space.shape == (size,)
    assert env.observation_space.dtype == np.float32
    env.close()


def _trajectory(env, seed, actions):
    obs, _ = env.reset(seed=seed)
    rows = [obs]
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        rows.append(np.append(obs, reward))
        if terminated or truncated:
            break
    return np.concatenate(rows)


@pytest.mark.parametrize("mode", MODES)
def test_same_seed_and_actions_give_bit_identical_trajectories(mode):
    actions = np.random.default_rng(0).uniform(-1, 1, size=(80, 4))
    env = envs.HoverEnv(action=mode)
    first = _trajectory(env, 7, actions)
    _trajectory(env, 8, actions)  # a different episode in between must leave no trace
    again = _trajectory(env, 7, actions)
    fresh = _trajectory(envs.HoverEnv(action=mode), 7, actions)
    assert np.array_equal(first, again)
    assert np.array_equal(first, fresh)
    assert not np.array_equal(first, _trajectory(env, 8, actions))


def test_reset_repositions_bodies_instead_of_reloading(monkeypatch):
    env = envs.WaypointsEnv(render_mode="rgb_array")
    env.reset(seed=0)
    bodies, drone = env.unwrapped.sim.num_bodies(), env.unwrapped.sim.drone

    def no_reload(*args, **kwargs):
        raise AssertionError("reset must not load a URDF")

    monkeypatch.setattr(p, "loadURDF", no_reload)
    for seed in range(50):
        env.reset(seed=seed)
        env.step(env.action_space.sample())
    assert env.sim.num_bodies() == bodies
    assert env.sim.drone == drone
    env.close()


def test_close_disconnects_the_pybullet_client():
    env = envs.HoverEnv()
    client = env.sim.client
    env.close()
    assert not p.isConnected(physicsClientId=client)
    env.close()  # idempotent


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_action_raises_value_error(bad):
    env = envs.HoverEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="NaN or inf"):
        env.step(np.array([0.0, bad, 0.0, 0.0], dtype=np.float32))


def test_out_of_range_actions_are_clipped_to_the_box():
    actions = np.random.default_rng(1).uniform(-1, 1, size=(30, 4))
    clipped = _trajectory(envs.HoverEnv(action="motors"), 0, np.sign(actions))
    wild = _trajectory(envs.HoverEnv(action="motors"), 0, np.sign(actions) * 7.5)
    assert np.array_equal(clipped, wild)


def test_control_rate_must_divide_physics_rate():
    with pytest.raises(ValueError, match=r"ctrl_freq=50 .*allowed control rates: \[1, 2, 3, 4, 5, 6, 8"):
        envs.HoverEnv(ctrl_freq=50)


def test_unknown_action_mode_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"'thrust'.*\['ctbr', 'motors', 'velocity'\]"):
        gym.make("LiquidDrones/Hover-v0", action="thrust")


def test_unknown_task_argument_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"\['num_wayponts'\].*allowed: .*'num_waypoints'"):
        gym.make("LiquidDrones/Waypoints-v0", num_wayponts=3)
    with pytest.raises(ValueError, match="num_waypoints must be an integer >= 1, got 0"):
        envs.WaypointsEnv(num_waypoints=0)


@pytest.mark.parametrize(("ctrl_freq", "pyb_freq"), [(24, 240), (48, 240), (96, 480)])
def test_info_reports_every_key_and_the_true_step_duration(ctrl_freq, pyb_freq):
    env = envs.WaypointsEnv(ctrl_freq=ctrl_freq, pyb_freq=pyb_freq)
    _, info = env.reset(seed=0)
    assert INFO_KEYS | {"waypoints_reached"} <= info.keys()
    for _ in range(5):
        _, _, _, _, info = env.step(env.action_space.sample())
        assert INFO_KEYS | {"waypoints_reached"} <= info.keys()
        assert info["dt"] == pytest.approx(1.0 / ctrl_freq)
        assert info["is_success"] is False


def test_time_limit_truncates_without_terminating():
    env = envs.HoverEnv(episode_seconds=0.5, action="velocity")
    env.reset(seed=0)
    steps, truncated = 0, False
    while not truncated:
        _, _, terminated, truncated, info = env.step(np.zeros(4, dtype=np.float32))
        assert not terminated
        steps += 1
    assert steps == 24
    assert info["is_success"] is False and info["crashed"] is False


def test_append_step_duration_wrapper_adds_dt_as_last_entry():
    env = AppendStepDuration(envs.HoverEnv(ctrl_freq=24))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (23,) and env.observation_space.contains(obs)
    obs, *_ = env.step(env.action_space.sample())
    assert obs[-1] == pytest.approx(1.0 / 24)


def test_rgb_array_render_returns_a_chase_camera_frame_that_follows_the_drone():
    env = envs.HoverEnv(render_mode="rgb_array", action="velocity")
    env.reset(seed=0)
    first = env.render()
    for _ in range(30):
        env.step(env.expert_action())
    later = env.render()
    assert first.shape == (240, 320, 3) and first.dtype == np.uint8
    assert first.std() > 5  # not a blank image
    assert np.abs(first.astype(int) - later.astype(int)).mean() > 1
    assert envs.HoverEnv().render() is None


def test_shortest_path_length_follows_the_route_and_is_nan_for_a_moving_goal():
    hover = envs.HoverEnv()
    hover.reset(seed=0)
    assert hover.shortest_path_length() == pytest.approx(math.dist(hover.start_position, hover.goal) - 0.10)
    route = envs.WaypointsEnv()
    route.reset(seed=0)
    corners = [route.start_position, *route.waypoints]
    legs = sum(math.dist(a, b) for a, b in zip(corners, corners[1:]))
    assert route.route() == route.waypoints
    assert legs - 0.2 - 3 * 0.4 <= route.shortest_path_length() <= legs - 0.2  # enters each 0.2 m ball
    follow = envs.FollowEnv()
    follow.reset(seed=0)
    assert math.isnan(follow.shortest_path_length())


def test_checkers_pass_with_delayed_observations():
    env = envs.FollowEnv(camera=True, disturbances={"latency": 80.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=True)
    first, _ = env.reset(seed=0)
    second, *_ = env.step(env.action_space.sample())
    assert first["state"] is not second["state"]


class _BlowsUpOnce(envs.HoverEnv):
    """Hover whose physics is forced to diverge (NaN wind -> NaN forces) at one step."""

    def __init__(self, blow_up_at: int = 30, **kwargs) -> None:
        super().__init__(**kwargs)
        self.blow_up_at = blow_up_at
        self.total_steps = 0

    def step(self, action):
        self.total_steps += 1
        if self.total_steps == self.blow_up_at:
            self.sim.wind = (math.nan, math.nan, math.nan)
        return super().step(action)


def test_a_diverging_simulation_ends_as_a_crash_with_finite_values():
    env = _BlowsUpOnce(action="velocity")
    env.reset(seed=0)
    for _ in range(env.blow_up_at):
        obs, reward, terminated, truncated, info = env.step(env.expert_action())
    assert terminated and info["crashed"] and not info["is_success"]
    assert np.all(np.isfinite(obs)) and env.observation_space.contains(obs)
    assert math.isfinite(reward) and reward < -5
    assert math.isfinite(info["distance_to_goal"]) and env.sim.finite()
    obs, _ = env.reset(seed=1)  # the next episode flies normally
    for _ in range(60):
        obs, *_ = env.step(env.expert_action())
    assert np.all(np.isfinite(obs)) and env.sim.position[2] > 0.2


def test_sb3_ppo_keeps_training_through_a_diverging_episode():
    from stable_baselines3 import PPO

    env = _BlowsUpOnce(blow_up_at=100)
    model = PPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=256)
    assert env.total_steps >= 256


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"render_mode": "human"}, r"unknown render_mode 'human'; allowed: None, 'rgb_array'"),
    ({"episode_seconds": 1e-9}, r"episode_seconds must be .* at least one control step "
                                r"\(1/48 s\), got 1e-09"),
    ({"episode_seconds": -1.0}, r"episode_seconds .* got -1.0"),
    ({"params": {"motor_tau": 0}}, r"params motor_tau=0: must be a finite number > 0"),
    ({"params": {"mass_kg": 0.03}}, r"unknown params key\(s\) \['mass_kg'\]; allowed: \['mass'"),
    ({"disturbances": {"latency": "fast"}}, r"disturbance latency='fast': expected a number"),
    ({"disturbances": {"wind": "1e3"}}, r"disturbance wind='1e3' out of range: allowed \[0.0, 20.0\]"),
    ({"ctrl_freq": 48.5}, r"ctrl_freq must be a positive whole number of Hz, got 48.5"),
])
def test_bad_constructor_arguments_fail_before_a_pybullet_client_exists(kwargs, message,
                                                                        monkeypatch):
    def no_client(*args, **kw):
        raise AssertionError("a PyBullet client was created before the arguments were checked")

    monkeypatch.setattr(p, "connect", no_client)
    with pytest.raises(ValueError, match=message):
        envs.HoverEnv(**kwargs)


def test_numeric_strings_whole_float_rates_and_param_dicts_are_accepted():
    env = envs.HoverEnv(ctrl_freq=48.0, pyb_freq=240.0, params={"mass": 0.03},
                        disturbances={"latency": "1e1", "mass": ["0.9", "1.1"]})
    assert env.ctrl_freq == 48 and isinstance(env.ctrl_freq, int)
    assert env.params.mass == 0.03 and env.disturbance_levels.latency == 10.0
    assert env.disturbance_levels.mass == (0.9, 1.1)
    env.reset(seed=0)
    env.step(env.action_space.sample())
    env.close()


def test_using_a_closed_env_raises_a_clear_runtime_error():
    env = envs.HoverEnv()
    env.reset(seed=0)
    env.close()
    with pytest.raises(RuntimeError, match="HoverEnv is closed"):
        env.step(env.action_space.sample())
    with pytest.raises(RuntimeError, match="HoverEnv is closed"):
        env.reset(seed=0)


def test_envs_dropped_without_close_release_their_pybullet_clients():
    clients = []
    for _ in range(30):
        env = gym.make("LiquidDrones/Waypoints-v0")
        env.reset(seed=0)
        clients.append(env.unwrapped.sim.client)
        del env
    gc.collect()
    assert not any(p.isConnected(physicsClientId=c) for c in clients)


def _documented_rows(env_cls) -> list[list[str]]:
    """The rows of the observation table in the class docstring, as cells."""
    section = env_cls.__doc__.split("## Observation Space")[1].split("##")[0]
    lines = [line.strip() for line in section.splitlines() if line.strip().startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


@pytest.mark.parametrize("env_cls", [envs.HoverEnv, envs.WaypointsEnv, envs.ForestEnv,
                                     envs.FollowEnv])
def test_documented_observation_tables_match_the_real_layout(env_cls):
    env = env_cls()
    layout = env.observation_layout
    rows = _documented_rows(env_cls)
    assert len(rows) == len(layout)
    start = 0
    for (index, meaning, unit, bound, noise), field in zip(rows, layout):
        end = start + field.size - 1
        assert index in (f"{start}-{end}", f"{start}-"), (index, field)
        assert (meaning, unit) == (field.meaning, field.unit)
        assert float(bound) == field.bound and float(noise) == pytest.approx(field.noise_std)
        start = end + 1
    assert start == env.observation_space.shape[0]
