"""The simulated Crazyflie obeys its model: gravity, motor lag, thrust, drag, ground effect, PID."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import envs
from envs.control import CascadedPID
from envs.params import CRAZYFLIE, GRAVITY
from envs.quadrotor import QuadrotorSim


@pytest.fixture
def sim():
    simulation = QuadrotorSim(CRAZYFLIE, 240)
    yield simulation
    simulation.close()


def test_crazyflie_figures_follow_from_the_constants():
    assert CRAZYFLIE.hover_rpm == pytest.approx(14468, abs=1)
    assert CRAZYFLIE.max_rpm == pytest.approx(21703, abs=1)
    assert 4 * CRAZYFLIE.max_rotor_thrust == pytest.approx(0.595, abs=1e-3)


def test_drone_free_falls_at_g_with_motors_off_and_no_body_drag():
    sim = QuadrotorSim(dataclasses.replace(CRAZYFLIE, body_drag_coeff=0.0), 240)
    sim.reset((0.0, 0.0, 10.0))
    steps = 120
    for _ in range(steps):
        sim.step((0.0, 0.0, 0.0, 0.0))
    # Bullet integrates semi-implicitly: v_n = -g n dt exactly, z_n = z_0 - g dt^2 n (n + 1) / 2.
    assert sim.velocity[2] == pytest.approx(-GRAVITY * steps * sim.dt, rel=1e-9)
    assert sim.position[2] == pytest.approx(10.0 - GRAVITY * sim.dt**2 * steps * (steps + 1) / 2,
                                            rel=1e-9)
    assert sim.velocity[0] == sim.velocity[1] == 0.0
    sim.close()


@pytest.mark.parametrize("wind", [0.0, 3.0])
def test_body_drag_grows_with_the_square_of_the_relative_airspeed(sim, wind):
    decelerations = []
    for airspeed in (2.0, 4.0):  # rotors stopped: no rotor drag, only body drag
        sim.reset((0.0, 0.0, 10.0), velocity=(wind + airspeed, 0.0, 0.0))
        sim.wind = (wind, 0.0, 0.0)
        sim.step((0.0, 0.0, 0.0, 0.0))
        decelerations.append((wind + airspeed - sim.velocity[0]) / sim.dt)
    assert decelerations[1] / decelerations[0] == pytest.approx(4.0, rel=0.01)
    # 0.5 * 1.225 kg/m^3 * Cd 3.0 * 4e-4 m^2 * (2 m/s)^2 / 0.027 kg (PyFlyt's cf2x figures)
    assert decelerations[0] == pytest.approx(0.5 * 1.225 * 3.0 * 4e-4 * 4.0 / 0.027, rel=0.01)


def test_rotor_speed_follows_a_first_order_lag(sim):
    sim.reset((0.0, 0.0, 2.0))
    target = CRAZYFLIE.hover_rpm
    steps = round(CRAZYFLIE.motor_tau * 240 * 2)  # two time constants
    for _ in range(steps):
        sim.step((target, target, target, target))
    expected = target * (1.0 - math.exp(-steps * sim.dt / CRAZYFLIE.motor_tau))
    assert sim.rpm[0] == pytest.approx(expected, rel=1e-9)
    assert 0.8 * target < sim.rpm[0] < 0.9 * target  # 1 - e^-2 = 86 %


def test_hover_rpm_holds_altitude_in_still_air_and_lifts_near_the_ground(sim):
    hover = (CRAZYFLIE.hover_rpm,) * 4
    sim.reset((0.0, 0.0, 2.0), rpm=CRAZYFLIE.hover_rpm)
    for _ in range(240):
        sim.step(hover)
    assert abs(sim.position[2] - 2.0) < 1e-3
    sim.reset((0.0, 0.0, 0.05), rpm=CRAZYFLIE.hover_rpm)
    for _ in range(24):
        sim.step(hover)
    assert sim.velocity[2] > 0.05  # ground effect adds thrust below ~ a few rotor radii


def test_wind_drags_the_drone_downwind_through_relative_airspeed(sim):
    hover = (CRAZYFLIE.hover_rpm,) * 4
    sim.reset((0.0, 0.0, 2.0), rpm=CRAZYFLIE.hover_rpm)
    sim.wind = (3.0, 0.0, 0.0)
    sim.step(hover)
    # Rotor drag 9.18e-7 * 6060 rad/s * 3 m/s = 16.7 mN, body drag 0.5 * 1.225 * 3.0 * 4e-4 *
    # (3 m/s)^2 = 6.6 mN, on 0.027 kg: 0.86 m/s^2 at first.
    assert sim.velocity[0] / sim.dt == pytest.approx((16.7e-3 + 6.6e-3) / 0.027, rel=0.02)
    for _ in range(239):
        sim.step(hover)
    assert 0.4 < sim.velocity[0] < 0.9
    assert abs(sim.velocity[1]) < 1e-6
    # Moving with the wind, the drone feels no airspeed and no drag.
    sim.reset((0.0, 0.0, 2.0), velocity=(3.0, 0.0, 0.0), rpm=CRAZYFLIE.hover_rpm)
    for _ in range(24):
        sim.step(hover)
    assert sim.velocity[0] == pytest.approx(3.0, abs=1e-6)


def test_differential_rotor_speeds_yaw_the_drone(sim):
    sim.reset((0.0, 0.0, 2.0), rpm=CRAZYFLIE.hover_rpm)
    fast, slow = CRAZYFLIE.hover_rpm * 1.05, CRAZYFLIE.hover_rpm * 0.95
    for _ in range(48):
        sim.step((slow, fast, slow, fast))  # rotors 1 and 3 have yaw_sign +1
    assert sim.body_rates[2] > 0.5
    assert abs(sim.body_rates[0]) < 1e-3 and abs(sim.body_rates[1]) < 1e-3


def test_pid_hovers_with_under_2cm_steady_state_error(sim):
    pid = CascadedPID(CRAZYFLIE)
    goal = (0.3, -0.2, 1.0)
    sim.reset((0.0, 0.0, 0.5 * CRAZYFLIE.collision_height))
    errors = []
    for step in range(240 * 8):
        if step % 5 == 0:
            setpoint = pid.position_to_velocity(tuple(g - x for g, x in zip(goal, sim.position)))
        acc = pid.velocity_to_acceleration(setpoint, sim.velocity, sim.dt)
        thrust, *rates = pid.acceleration_to_thrust_and_rates(acc, sim.rot, pid.yaw_hold_rate(sim.rot))
        sim.step(pid.rates_to_rpm(thrust, rates, sim.body_rates, sim.dt))
        if step >= 240 * 6:
            errors.append(math.dist(goal, sim.position))
    assert max(errors) < 0.02
    assert abs(math.atan2(sim.rot[3], sim.rot[0])) < 0.01


@pytest.mark.parametrize("mode", ["motors", "ctbr", "velocity"])
def test_pid_expert_solves_hover_in_every_action_mode(mode):
    env = envs.HoverEnv(action=mode)
    for seed in range(5):
        env.reset(seed=seed)
        terminated = truncated = False
        while not (terminated or truncated):
            _, _, terminated, truncated, info = env.step(env.expert_action())
        assert info["is_success"] and not info["crashed"]
        assert info["distance_to_goal"] < 0.1


def test_pid_expert_flies_100_waypoint_courses_without_a_crash():
    env = envs.WaypointsEnv()
    successes = 0
    for seed in range(100):
        env.reset(seed=seed)
        terminated = truncated = False
        while not (terminated or truncated):
            _, _, terminated, truncated, info = env.step(env.expert_action())
        assert not info["crashed"], f"seed {seed} crashed"
        successes += info["is_success"]
    assert successes >= 95


def test_touching_the_ground_after_take_off_is_a_crash():
    env = envs.HoverEnv(action="motors")
    env.reset(seed=0)
    for _ in range(20):  # full thrust: climb above the take-off height
        env.step(np.ones(4, dtype=np.float32))
    assert env.sim.position[2] > 0.1
    terminated = False
    while not terminated:
        _, reward, terminated, _, info = env.step(-np.ones(4, dtype=np.float32))
    assert info["crashed"] and not info["is_success"]
    assert reward < -5


def test_resting_on_the_ground_before_take_off_is_not_a_crash():
    env = envs.HoverEnv(action="motors", episode_seconds=1.0)
    env.reset(seed=0)
    truncated = False
    while not truncated:
        _, _, terminated, truncated, info = env.step(-np.ones(4, dtype=np.float32))
        assert not terminated
    assert not info["crashed"]


def _torques(rpm):
    thrust = [CRAZYFLIE.kf * w * w for w in rpm]
    roll = sum(y * f for y, f in zip(CRAZYFLIE.rotor_y, thrust))
    yaw = sum(s * CRAZYFLIE.km * w * w for s, w in zip(CRAZYFLIE.yaw_sign, rpm))
    return sum(thrust), roll, yaw


def test_mixer_trades_collective_thrust_to_keep_the_roll_torque_at_saturation():
    pid = CascadedPID(CRAZYFLIE)
    pid.set_airborne(True)
    full = 4 * CRAZYFLIE.max_rotor_thrust
    roll = 0.1 * CRAZYFLIE.max_rotor_thrust * 4 * 0.028  # N m, a tenth of the roll authority
    thrust, got_roll, _ = _torques(pid.mix(0.98 * full, roll, 0.0, 0.0))
    assert got_roll == pytest.approx(roll, rel=1e-6)  # attitude authority kept ...
    assert thrust < 0.98 * full  # ... by giving up collective thrust
    # Yaw goes before roll/pitch when both cannot fit.
    _, got_roll, got_yaw = _torques(pid.mix(0.5 * full, 4 * roll, 0.0, 1e-3))
    assert got_roll == pytest.approx(4 * roll, rel=1e-6) and 0 < got_yaw < 1e-3
    # Idle floor: even a zero-thrust request keeps every rotor at idle once airborne.
    assert min(pid.mix(0.0, 0.0, 0.0, 0.0)) == pytest.approx(CRAZYFLIE.idle_rpm)
