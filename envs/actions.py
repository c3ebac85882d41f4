"""Action modes: how a normalised policy action in [-1, 1]^4 becomes rotor speed commands.

Each mode turns the action into a set-point once per control step (:meth:`command`) and then
produces rotor speeds (rpm) once per physics step (:meth:`rpm`), so inner loops run at the
physics rate. :meth:`expert` maps the PID cascade's wish (a velocity set-point) to the same
normalised action, which makes the PID an expert in every mode.

| mode       | action[0]               | action[1:4]                          |
|------------|-------------------------|--------------------------------------|
| `motors`   | rotor 0 thrust fraction | rotors 1-3 thrust fractions          |
| `ctbr`     | collective thrust       | body rates p, q, r (+-MAX_BODY_RATE) |
| `velocity` | world vx (+-MAX_SPEED)  | vy, vz (+-MAX_SPEED), yaw rate (+-MAX_YAW_RATE) |

Thrust fractions and collective thrust map -1 -> 0 N and +1 -> the maximum thrust.
"""

from __future__ import annotations

import math

import numpy as np

from envs.control import CascadedPID, Vec3
from envs.quadrotor import QuadrotorSim

MAX_BODY_RATE = math.pi  # rad/s, ctbr rate command at |action| = 1
MAX_SPEED = 2.0  # m/s, velocity command at |action| = 1
MAX_YAW_RATE = math.pi / 2.0  # rad/s, velocity-mode yaw-rate command at |action| = 1


def _unit(value: float, limit: float) -> float:
    """``value / limit`` clipped to [-1, 1]."""
    return min(max(value / limit, -1.0), 1.0)


def _thrust_to_unit(thrust: float, max_thrust: float) -> float:
    return min(max(2.0 * thrust / max_thrust - 1.0, -1.0), 1.0)


class ActionMode:
    """Base of the action modes; ``pid`` is the env's inner-loop cascade."""

    name = ""

    def __init__(self, pid: CascadedPID) -> None:
        self.pid = pid

    def command(self, action: list[float]) -> None:
        """Take a validated action (4 floats in [-1, 1]) as the set-point for this control step."""
        raise NotImplementedError

    def rpm(self, sim: QuadrotorSim) -> tuple[float, float, float, float]:
        """Rotor speed commands (rpm) for the next physics step."""
        raise NotImplementedError

    def expert(self, sim: QuadrotorSim, velocity_setpoint: Vec3, expert_pid: CascadedPID,
               dt: float) -> np.ndarray:
        """The normalised action with which the cascade would track ``velocity_setpoint`` (m/s).

        ``expert_pid`` holds the expert's own integrator; ``dt`` is the control period (s).
        """
        raise NotImplementedError

    @staticmethod
    def _expert_thrust_and_rates(sim: QuadrotorSim, velocity_setpoint: Vec3,
                                 expert_pid: CascadedPID, dt: float) -> tuple[float, ...]:
        acc = expert_pid.velocity_to_acceleration(velocity_setpoint, sim.velocity, dt)
        return expert_pid.acceleration_to_thrust_and_rates(acc, sim.rot,
                                                           expert_pid.yaw_hold_rate(sim.rot))


class MotorsMode(ActionMode):
    """Four rotor thrust fractions; rotor ``i`` spins at ``max_rpm * sqrt((a_i + 1) / 2)``."""

    name = "motors"

    def command(self, action: list[float]) -> None:
        max_rpm = self.pid.params.max_rpm
        self._rpm = tuple(max_rpm * math.sqrt(0.5 * (a + 1.0)) for a in action)

    def rpm(self, sim: QuadrotorSim) -> tuple[float, float, float, float]:
        return self._rpm

    def expert(self, sim, velocity_setpoint, expert_pid, dt):
        thrust, *rates = self._expert_thrust_and_rates(sim, velocity_setpoint, expert_pid, dt)
        rpm = expert_pid.rates_to_rpm(thrust, rates, sim.body_rates, dt)
        max_rpm = self.pid.params.max_rpm
        return np.array([2.0 * (w / max_rpm) ** 2 - 1.0 for w in rpm], dtype=np.float32)


class CtbrMode(ActionMode):
    """Collective thrust and body rates, tracked by the rate loop at the physics rate."""

    name = "ctbr"

    def command(self, action: list[float]) -> None:
        self._thrust = 0.5 * (action[0] + 1.0) * 4.0 * self.pid.params.max_rotor_thrust
        self._rates = (action[1] * MAX_BODY_RATE, action[2] * MAX_BODY_RATE,
                       action[3] * MAX_BODY_RATE)

    def rpm(self, sim: QuadrotorSim) -> tuple[float, float, float, float]:
        return self.pid.rates_to_rpm(self._thrust, self._rates, sim.body_rates, sim.dt)

    def expert(self, sim, velocity_setpoint, expert_pid, dt):
        thrust, p, q, r = self._expert_thrust_and_rates(sim, velocity_setpoint, expert_pid, dt)
        max_thrust = 4.0 * self.pid.params.max_rotor_thrust
        return np.array([_thrust_to_unit(thrust, max_thrust), _unit(p, MAX_BODY_RATE),
                         _unit(q, MAX_BODY_RATE), _unit(r, MAX_BODY_RATE)], dtype=np.float32)


class VelocityMode(ActionMode):
    """World-frame velocity and yaw-rate set-point, tracked by the cascade at the physics rate."""

    name = "velocity"

    def command(self, action: list[float]) -> None:
        self._velocity = (action[0] * MAX_SPEED, action[1] * MAX_SPEED, action[2] * MAX_SPEED)
        self._yaw_rate = action[3] * MAX_YAW_RATE

    def rpm(self, sim: QuadrotorSim) -> tuple[float, float, float, float]:
        pid = self.pid
        acc = pid.velocity_to_acceleration(self._velocity, sim.velocity, sim.dt)
        thrust, p, q, r = pid.acceleration_to_thrust_and_rates(acc, sim.rot, self._yaw_rate)
        return pid.rates_to_rpm(thrust, (p, q, r), sim.body_rates, sim.dt)

    def expert(self, sim, velocity_setpoint, expert_pid, dt):
        vx, vy, vz = velocity_setpoint
        yaw_rate = expert_pid.yaw_hold_rate(sim.rot)
        return np.array([_unit(vx, MAX_SPEED), _unit(vy, MAX_SPEED), _unit(vz, MAX_SPEED),
                         _unit(yaw_rate, MAX_YAW_RATE)], dtype=np.float32)


ACTION_MODES: dict[str, type[ActionMode]] = {
    mode.name: mode for mode in (MotorsMode, CtbrMode, VelocityMode)
}
