"""Each disturbance axis acts as labelled inside whole episodes flown by the PID expert."""

from __future__ import annotations

import warnings

import numpy as np
import pybullet as p
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.disturbances import AXES, AXIS_LABELS, DEFAULT_LEVELS, Disturbances
from envs.params import CRAZYFLIE

TASKS = (envs.HoverEnv, envs.WaypointsEnv, envs.ForestEnv, envs.FollowEnv)


def _hover_action(env) -> np.ndarray:
    """The ``motors`` action that commands the hover rpm on every rotor."""
    fraction = (CRAZYFLIE.hover_rpm / env.params.max_rpm) ** 2
    return np.full(4, 2.0 * fraction - 1.0, dtype=np.float32)


@pytest.mark.parametrize("env_cls", TASKS)
def test_every_non_crashed_expert_episode_is_pushed_and_the_push_moves_the_drone(env_cls):
    env = env_cls(disturbances={"push": 1.0})
    for seed in range(20):
        env.reset(seed=seed)
        done, info, pushed_at = False, {"pushed": False}, None
        # Fly until half a second after the push (or the end): enough to see it land.
        while not done and (pushed_at is None or env._steps < pushed_at + 24):
            before = np.array(env.sim.velocity)
            _, _, terminated, truncated, info = env.step(env.expert_action())
            done = terminated or truncated
            if info["pushed"] and pushed_at is None:
                pushed_at = env._steps
                jump = np.linalg.norm((np.array(env.sim.velocity) - before)[:2])
                assert jump > 0.8, f"seed {seed}: the push changed the speed by {jump:.2f} m/s"
        assert info["pushed"] or info["crashed"], f"seed {seed} was never pushed"
        assert not (info["is_success"] and pushed_at is None)
        assert info["push_time"] == pytest.approx(pushed_at * env.control_dt)


def test_hover_succeeds_only_after_holding_the_target_for_a_second_after_the_push():
    env = envs.HoverEnv(disturbances={"push": 1.0})
    successes = 0
    for seed in range(20):
        env.reset(seed=seed)
        done = False
        while not done:
            _, _, terminated, truncated, info = env.step(env.expert_action())
            done = terminated or truncated
        if info["is_success"]:
            successes += 1
            elapsed = env._steps * env.control_dt
            assert elapsed >= info["push_time"] + env.hold_seconds - 1e-9
    assert successes >= 19


@pytest.mark.parametrize("env_cls", [envs.ForestEnv, envs.FollowEnv])
def test_latency_keeps_an_airborne_start_hovering_until_the_first_action_arrives(env_cls):
    env = env_cls(disturbances={"latency": 80.0})
    for seed in range(3):
        env.reset(seed=seed)
        start = env.sim.position[2]
        heights = []
        for _ in range(round(0.3 * env.ctrl_freq)):
            env.step(env.expert_action())
            heights.append(env.sim.position[2])
        assert start - min(heights) < 0.01  # m: no free-fall cut


@pytest.mark.parametrize("env_cls", TASKS)
def test_checkers_pass_with_observation_noise_and_observations_stay_in_the_space(env_cls):
    env = env_cls(disturbances={"obs_noise": 0.1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    for _ in range(50):
        assert env.observation_space.contains(obs)
        obs, *_ = env.step(env.action_space.sample())


def _noise_samples(env, steps, settle=0):
    """(noisy - true) observations and the true ones over ``steps`` expert steps."""
    env.reset(seed=0)
    for _ in range(settle):
        env.step(env.expert_action())
    noise, truth = [], []
    for _ in range(steps):
        obs, *_ = env.step(env.expert_action())
        true = env._observation()
        noise.append(obs - true)
        truth.append(true)
    return np.array(noise), np.array(truth)


def test_observation_noise_std_per_channel_matches_the_table():
    level = 0.1
    env = envs.HoverEnv(disturbances={"obs_noise": level}, hold_seconds=100.0)
    noise, truth = _noise_samples(env, 600)
    expected = level * env._noise_std
    unclipped = np.abs(truth) < 0.5 * env._obs_high  # far from the bounds, noise is not clipped
    measured = 0
    for i in range(len(expected)):
        samples = noise[unclipped[:, i], i]
        if expected[i] == 0:
            assert np.all(noise[:, i] == 0)  # previous action: noiseless
        elif len(samples) >= 300:  # rotation entries pinned near +-1 (level flight) are clipped
            assert samples.std() == pytest.approx(expected[i], rel=0.15), f"entry {i}"
            measured += 1
    assert measured >= 15
    # Range rays: 1 m of noise per unit level, i.e. 0.1 m / 4 m on the normalised reading.
    forest = envs.ForestEnv(density=0.0, disturbances={"obs_noise": level})
    forest.reset(seed=0)
    tree = forest.sim.add_cylinder(radius=0.3, height=4.0)
    forest.sim.place(tree, (2.0, 0.0, 2.0))
    noise, truth = _noise_samples(forest, 300)
    rays = slice(22, None)
    hit = (truth[:, rays] > 0.2) & (truth[:, rays] < 0.8)
    assert hit.sum() > 300
    assert noise[:, rays][hit].std() == pytest.approx(level * 1.0 / 4.0, rel=0.15)


def test_a_trajectory_grazing_a_tree_between_control_steps_is_a_crash():
    def launch():
        env = envs.ForestEnv(density=0.0, action="motors")
        env.reset(seed=0)
        tree = env.sim.add_cylinder(radius=0.15, height=4.0)
        env.sim.place(tree, (0.58, 0.2, 2.0))  # the drone (r 0.06 m) passes 1 cm inside it
        env.sim.reset((0.0, 0.0, 1.0), velocity=(5.0, 0.0, 0.0), rpm=CRAZYFLIE.hover_rpm)
        return env, tree

    # The graze, physics step by physics step: in contact only between two control steps.
    twin, tree = launch()
    touching = []
    for _ in range(60):
        twin.sim.step((CRAZYFLIE.hover_rpm,) * 4)
        contacts = p.getContactPoints(bodyA=twin.sim.drone, physicsClientId=twin.sim.client)
        touching.append(any(c[2] == tree for c in contacts))
    touching = np.array(touching)
    assert touching.any() and not touching[twin.substeps - 1::twin.substeps].any()

    env, _ = launch()
    for _ in range(12):
        _, reward, terminated, _, info = env.step(_hover_action(env))
        if terminated:
            break
    assert terminated and info["crashed"]
    assert env._steps == np.argmax(touching) // env.substeps + 1


def test_follow_never_pays_a_crash_over_the_worst_tracking_cost_left():
    env = envs.FollowEnv()
    env.reset(seed=0)
    away = np.array([-1.0, 0.0, 1.0, 0.0], dtype=np.float32)  # velocity mode: back and up
    dt = env.control_dt
    worst_step = 2.0 * dt * 5.0  # the tracking cost of one step is capped at 5 m outside the band
    terminated = truncated = False
    while not (terminated or truncated):
        _, reward, terminated, truncated, info = env.step(away)
        if not terminated:
            assert reward >= -worst_step - 0.01 * 4 - 0.002 * dt * 20.0**2 * 3
    assert info["crashed"]
    remaining = env.max_steps - env._steps
    assert reward < -10.0 - remaining * worst_step


ALL_RANGES = {"wind": (0.0, 4.0), "mass": (0.8, 1.4), "motor": (0.7, 1.0),
              "motor_lag": (1.0, 3.5), "obs_noise": (0.0, 0.1), "latency": (0.0, 80.0),
              "push": (0.0, 1.0), "range": (1.0, 1.5), "target_speed": (1.0, 2.0),
              "brightness": (-0.3, 0.3), "contrast": (0.5, 1.5), "pixel_noise": (0.0, 0.1)}


def _rollout(env, seed, steps=60):
    obs, info = env.reset(seed=seed)
    rows = [obs["state"], obs["image"].ravel()]
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(env.expert_action())
        rows += [obs["state"], obs["image"].ravel(), np.array([reward, info["pushed"]])]
        if terminated or truncated:
            break
    return np.concatenate([r.astype(np.float64) for r in rows])


def test_same_seed_gives_bit_identical_episodes_with_every_axis_randomised():
    make = lambda: envs.FollowEnv(camera=True, disturbances=ALL_RANGES)  # noqa: E731
    env = make()
    first = _rollout(env, 3)
    _rollout(env, 4)
    assert np.array_equal(first, _rollout(env, 3))
    assert np.array_equal(first, _rollout(make(), 3))
    assert not np.array_equal(first, _rollout(env, 4))


def test_motor_lag_axis_multiplies_the_rotor_time_constant():
    env = envs.HoverEnv(disturbances={"motor_lag": 3.5})
    env.reset(seed=0)
    assert env.sim.params.motor_tau == pytest.approx(3.5 * CRAZYFLIE.motor_tau)
    for _ in range(3):
        env.step(np.ones(4, dtype=np.float32))
    fast = envs.HoverEnv()
    fast.reset(seed=0)
    for _ in range(3):
        fast.step(np.ones(4, dtype=np.float32))
    assert max(env.sim.rpm) < 0.8 * max(fast.sim.rpm)  # the slow rotors lag behind


def test_rotors_never_drop_below_the_idle_floor_once_airborne():
    env = envs.HoverEnv(action="motors")
    env.reset(seed=0)
    assert env.sim.rpm == [0.0] * 4  # on the ground rotors may stop
    while env.sim.position[2] < 0.2:
        env.step(np.ones(4, dtype=np.float32))
    for _ in range(10):
        env.step(-np.ones(4, dtype=np.float32))  # "motors off" in flight
        assert min(env.sim.rpm) >= CRAZYFLIE.idle_rpm * 0.999
    assert CRAZYFLIE.idle_rpm == pytest.approx(CRAZYFLIE.max_rpm * 0.05**0.5)


def test_every_axis_has_a_label_and_default_levels():
    assert list(AXIS_LABELS) == list(AXES) == list(DEFAULT_LEVELS)
    for axis in AXES:
        assert AXIS_LABELS[axis].strip()
        assert len(DEFAULT_LEVELS[axis]) >= 2
        Disturbances.level(axis, DEFAULT_LEVELS[axis][-1])  # every default level is valid
    assert DEFAULT_LEVELS["motor_lag"] == (1.0, 2.0, 3.5)
