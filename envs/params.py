"""Physical constants of the Crazyflie 2.x and the default simulation rates, each defined once.

Every figure is a public one (Bitcraze data sheets, and the system-identification values
collected by gym-pybullet-drones for its ``cf2x`` model); units are SI unless the name says rpm.
Disturbances build scaled copies with :meth:`QuadrotorParams.scaled` instead of editing fields.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

PHYSICS_HZ = 240
"""Default physics rate (Hz): one PyBullet step every 1/240 s."""
CONTROL_HZ = 48
"""Default control rate (Hz): the policy acts every 5 physics steps."""

GRAVITY = 9.8
"""Gravitational acceleration (m/s^2)."""


@dataclass(frozen=True)
class QuadrotorParams:
    """Typed physical constants of an X-configuration quadrotor; defaults are the Crazyflie 2.x.

    Rotor ``i`` sits at ``(rotor_x[i], rotor_y[i])`` metres in the body frame (x forward, y left,
    z up), produces thrust ``kf * w^2`` along body z and a yaw torque ``yaw_sign[i] * km * w^2``,
    with ``w`` in rpm.
    """

    mass: float = 0.027  # kg
    ixx: float = 1.4e-5  # kg m^2
    iyy: float = 1.4e-5  # kg m^2
    izz: float = 2.17e-5  # kg m^2
    arm: float = 0.0397  # m, centre to rotor axis
    kf: float = 3.16e-10  # N / rpm^2
    km: float = 7.94e-12  # N m / rpm^2
    thrust_to_weight: float = 2.25
    motor_tau: float = 0.02  # s, first-order rotor-speed lag (brushed 7x16 mm motor, approx.)
    rotor_x: tuple[float, float, float, float] = (0.028, -0.028, -0.028, 0.028)  # m
    rotor_y: tuple[float, float, float, float] = (-0.028, -0.028, 0.028, 0.028)  # m
    yaw_sign: tuple[float, float, float, float] = (-1.0, 1.0, -1.0, 1.0)
    motor_efficiency: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # thrust factor
    collision_radius: float = 0.06  # m
    collision_height: float = 0.025  # m
    prop_radius: float = 0.0231  # m
    ground_effect_coeff: float = 11.37
    drag_xy: float = 9.18e-7  # N s^2/(m rad) -> force per (m/s airspeed) per (rad/s summed rotor speed)
    drag_z: float = 10.31e-7  # as drag_xy, along body z
    gravity: float = GRAVITY  # m/s^2

    @property
    def weight(self) -> float:
        """Weight (N)."""
        return self.mass * self.gravity

    @property
    def hover_rpm(self) -> float:
        """Rotor speed (rpm) at which four rotors carry the weight (~14,468 for the Crazyflie)."""
        return math.sqrt(self.weight / (4.0 * self.kf))

    @property
    def max_rpm(self) -> float:
        """Maximum rotor speed (rpm), set by the thrust-to-weight ratio (~21,703)."""
        return self.hover_rpm * math.sqrt(self.thrust_to_weight)

    @property
    def max_rotor_thrust(self) -> float:
        """Thrust of one rotor at full speed (N); four of them make ~0.595 N."""
        return self.kf * self.max_rpm**2

    def scaled(self, mass_factor: float = 1.0, motor: int | None = None,
               motor_efficiency: float = 1.0) -> QuadrotorParams:
        """A copy carrying a payload and/or a weak motor.

        Args:
            mass_factor: multiplies the mass; the inertia is scaled by the same factor (payload
                spread like the airframe), so the rotational response per unit mass is unchanged.
            motor: index 0-3 of the motor whose thrust is scaled by ``motor_efficiency``.
            motor_efficiency: thrust factor of that motor, in (0, 1].
        """
        if mass_factor <= 0:
            raise ValueError(f"mass_factor must be > 0, got {mass_factor}")
        if not 0 < motor_efficiency <= 1:
            raise ValueError(f"motor_efficiency must be in (0, 1], got {motor_efficiency}")
        efficiency = list(self.motor_efficiency)
        if motor is not None:
            if motor not in range(4):
                raise ValueError(f"motor must be one of 0, 1, 2, 3, got {motor}")
            efficiency[motor] = motor_efficiency
        # The hover/max rpm derive from the *nominal* weight: a payload does not make motors stronger.
        return dataclasses.replace(
            self,
            mass=self.mass * mass_factor,
            ixx=self.ixx * mass_factor,
            iyy=self.iyy * mass_factor,
            izz=self.izz * mass_factor,
            thrust_to_weight=self.thrust_to_weight / mass_factor,
            motor_efficiency=tuple(efficiency),
        )


CRAZYFLIE = QuadrotorParams()
"""The nominal Crazyflie 2.x."""
