"""Physical constants of the Crazyflie 2.x and the default simulation rates, each defined once.

Every figure is a public one (Bitcraze data sheets, and the system-identification values
collected by gym-pybullet-drones for its ``cf2x`` model); units are SI unless the name says rpm.
Disturbances build scaled copies with :meth:`QuadrotorParams.scaled` instead of editing fields.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

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
    # s, first-order rotor-speed time constant of the brushed 7x16 mm motor. Published Crazyflie
    # models use 10 ms (PyFlyt's cf2x.yaml, motor tau 0.01) to 25 ms (arlk/cf-model's motor
    # transfer function 40 / (s + 40)); slower identified values (~70 ms) are reached with the
    # motor_lag disturbance axis (x3.5).
    motor_tau: float = 0.02
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
    # Body (parasitic) drag 0.5 * rho * Cd * A * |v_rel| * v_rel per body axis; Cd and A are
    # PyFlyt's cf2x model (PyFlyt/models/vehicles/cf2x/cf2x.yaml: drag_coef_xyz 3.0,
    # drag_area_xyz 4e-4 m^2), rho the ISA sea-level air density.
    body_drag_coeff: float = 3.0
    body_drag_area: float = 4.0e-4  # m^2, per body axis
    air_density: float = 1.225  # kg/m^3
    # Rotors never spin below this fraction of the maximum rotor thrust once airborne (5 %, as
    # the "airmode" idle of common flight stacks, e.g. Betaflight's 5.5 % motor idle): the
    # mixer trades collective thrust for attitude authority inside [idle, max].
    idle_thrust_fraction: float = 0.05
    gravity: float = GRAVITY  # m/s^2

    def __post_init__(self) -> None:
        positive = ("mass", "ixx", "iyy", "izz", "arm", "kf", "km", "motor_tau",
                    "collision_radius", "collision_height", "prop_radius", "gravity")
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
                    and math.isfinite(value)):
                raise ValueError(f"params {name}={value!r}: must be a finite number > 0")
        if not self.thrust_to_weight > 0:
            raise ValueError(f"params thrust_to_weight={self.thrust_to_weight!r}: must be > 0")
        for name in ("drag_xy", "drag_z", "body_drag_coeff", "body_drag_area", "air_density",
                     "ground_effect_coeff"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"params {name}={getattr(self, name)!r}: must be >= 0")
        if not 0 <= self.idle_thrust_fraction < 0.5:
            raise ValueError(f"params idle_thrust_fraction={self.idle_thrust_fraction!r}: "
                             f"allowed [0, 0.5)")
        for name in ("rotor_x", "rotor_y", "yaw_sign", "motor_efficiency"):
            if len(getattr(self, name)) != 4:
                raise ValueError(f"params {name}={getattr(self, name)!r}: needs 4 values")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> QuadrotorParams:
        """Crazyflie defaults overridden by ``values``; an unknown key is a ValueError naming it
        and the allowed ones."""
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise ValueError(f"unknown params key(s) {unknown}; allowed: {allowed}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

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

    @property
    def idle_rpm(self) -> float:
        """Lowest rotor speed (rpm) once airborne: ``idle_thrust_fraction`` of the maximum
        rotor thrust (~4,850 rpm for the Crazyflie)."""
        return self.max_rpm * math.sqrt(self.idle_thrust_fraction)

    def scaled(self, mass_factor: float = 1.0, motor: int | None = None,
               motor_efficiency: float = 1.0, motor_lag: float = 1.0) -> QuadrotorParams:
        """A copy carrying a payload and/or a weak motor.

        Args:
            mass_factor: multiplies the mass; the inertia is scaled by the same factor (payload
                spread like the airframe), so the rotational response per unit mass is unchanged.
            motor: index 0-3 of the motor whose thrust is scaled by ``motor_efficiency``.
            motor_efficiency: thrust factor of that motor, in (0, 1].
            motor_lag: multiplies the rotor time constant ``motor_tau``.
        """
        if mass_factor <= 0:
            raise ValueError(f"mass_factor must be > 0, got {mass_factor}")
        if not 0 < motor_efficiency <= 1:
            raise ValueError(f"motor_efficiency must be in (0, 1], got {motor_efficiency}")
        if motor_lag <= 0:
            raise ValueError(f"motor_lag must be > 0, got {motor_lag}")
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
            motor_tau=self.motor_tau * motor_lag,
        )


CRAZYFLIE = QuadrotorParams()
"""The nominal Crazyflie 2.x."""
