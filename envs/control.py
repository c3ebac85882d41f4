"""Cascaded PID for the Crazyflie: position -> velocity -> attitude -> body rate -> motor mixing.

The loops are written with plain Python floats instead of NumPy: they run at the physics rate
(240 Hz) inside every env step, where NumPy's per-call overhead on 3-vectors costs more than
the arithmetic. Rotation matrices are 9-tuples in row-major order mapping body to world
(as ``pybullet.getMatrixFromQuaternion`` returns them).

Loop structure (all gains in SI units, chosen for a closed-loop bandwidth of roughly
rate 25 rad/s > attitude 8 rad/s > velocity 3 rad/s > position 1.5 rad/s, each stage a
factor ~3 slower than the one inside it):

- position:  v_des = Kp_pos * (p_goal - p), limited to ``max_speed``          (control rate)
- velocity:  a_des = Kp_vel * (v_des - v) + Ki_vel * integral + g e_z,
             horizontal part limited by ``max_tilt``                          (physics rate)
- attitude:  reduced attitude: body rates that turn body z towards a_des      (physics rate)
- rate:      torque = J * (Kp_rate * (w_des - w) + Ki_rate * integral)          (physics rate)
- mixing:    rotor thrusts from collective thrust and torques -> rotor speeds (physics rate),
             desaturated: when a rotor would leave [idle, max] thrust, the collective thrust is
             traded first, then yaw torque, then roll/pitch torque (scaled together), so the
             attitude authority is kept as long as the rotors can give it
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from envs.params import QuadrotorParams

Vec3 = tuple[float, float, float]
Rot = tuple[float, ...]  # 9 floats, row-major, body -> world


@dataclass(frozen=True)
class PIDGains:
    """Gains and limits of the cascade (units in the comments)."""

    pos_p: float = 1.5  # 1/s: m of error -> m/s of velocity set-point
    max_speed: float = 1.0  # m/s, limit of the position loop's velocity set-point
    vel_p: float = 3.0  # 1/s: m/s of error -> m/s^2
    vel_i: float = 1.5  # 1/s^2
    vel_i_limit: float = 6.0  # m/s^2, anti-windup bound: carries a payload up to ~1.6 x mass
    max_tilt: float = math.radians(35.0)  # rad, tilt the velocity loop may ask for
    att_p: float = 8.0  # 1/s: rad of tilt error -> rad/s of rate set-point
    yaw_p: float = 2.0  # 1/s: rad of yaw error -> rad/s (used to hold a heading)
    rate_p: float = 25.0  # 1/s: rad/s of rate error -> rad/s^2
    rate_i: float = 60.0  # 1/s^2: integral of rate error -> rad/s^2 (trims a weak motor)
    rate_i_limit: float = 30.0  # rad/s^2, anti-windup bound on the rate integral


class CascadedPID:
    """Stateful cascade for one quadrotor; :meth:`reset` clears the integrators.

    Args:
        params: the airframe (mass, inertia, rotor layout, kf/km, rpm limits).
        gains: loop gains and limits.
    """

    def __init__(self, params: QuadrotorParams, gains: PIDGains = PIDGains()) -> None:
        self.gains = gains
        self.set_params(params)
        self.reset()

    def set_params(self, params: QuadrotorParams) -> None:
        """Use a (possibly disturbed) airframe; the mixer is rebuilt from its rotor layout."""
        self.params = params
        self.inertia = (params.ixx, params.iyy, params.izz)
        # Rows: total thrust, roll torque, pitch torque, yaw torque per unit rotor thrust (N).
        mixing = np.array([
            [1.0, 1.0, 1.0, 1.0],
            list(params.rotor_y),
            [-x for x in params.rotor_x],
            [s * params.km / params.kf for s in params.yaw_sign],
        ])
        self._unmix = tuple(tuple(row) for row in np.linalg.inv(mixing).tolist())
        self._max_rotor_thrust = params.max_rotor_thrust
        self.min_rotor_thrust = 0.0  # N, the idle floor once airborne (see :meth:`set_airborne`)

    def set_airborne(self, airborne: bool) -> None:
        """Keep every rotor at or above the idle thrust (``params.idle_thrust_fraction`` of the
        maximum) while airborne; on the ground rotors may stop."""
        params = self.params
        self.min_rotor_thrust = (params.idle_thrust_fraction * params.max_rotor_thrust
                                 if airborne else 0.0)

    def reset(self) -> None:
        """Clear the integrators (call at episode start)."""
        self._vel_integral = [0.0, 0.0, 0.0]
        self._rate_integral = [0.0, 0.0, 0.0]

    # --- outer loops -------------------------------------------------------------------------
    def position_to_velocity(self, position_error: Vec3) -> Vec3:
        """Velocity set-point (m/s) towards a goal ``position_error`` (m) away, speed-limited."""
        g = self.gains
        vx, vy, vz = (g.pos_p * e for e in position_error)
        speed = math.sqrt(vx * vx + vy * vy + vz * vz)
        if speed > g.max_speed:
            scale = g.max_speed / speed
            vx, vy, vz = vx * scale, vy * scale, vz * scale
        return vx, vy, vz

    def velocity_to_acceleration(self, velocity_setpoint: Vec3, velocity: Vec3, dt: float) -> Vec3:
        """Desired world acceleration including gravity compensation (m/s^2), tilt-limited.

        Integrates the velocity error over ``dt`` seconds (anti-windup clamped).
        """
        g = self.gains
        acc = [0.0, 0.0, 0.0]
        for i in range(3):
            error = velocity_setpoint[i] - velocity[i]
            integral = self._vel_integral[i] + g.vel_i * error * dt
            integral = min(max(integral, -g.vel_i_limit), g.vel_i_limit)
            self._vel_integral[i] = integral
            acc[i] = g.vel_p * error + integral
        acc[2] += self.params.gravity
        acc[2] = max(acc[2], 0.2 * self.params.gravity)  # never ask to fall faster than ~0.8 g
        horizontal = math.hypot(acc[0], acc[1])
        max_horizontal = acc[2] * math.tan(g.max_tilt)
        if horizontal > max_horizontal:
            scale = max_horizontal / horizontal
            acc[0] *= scale
            acc[1] *= scale
        return acc[0], acc[1], acc[2]

    # --- inner loops -------------------------------------------------------------------------
    def acceleration_to_thrust_and_rates(self, acceleration: Vec3, rot: Rot,
                                         yaw_rate: float) -> tuple[float, float, float, float]:
        """Collective thrust (N) and body-rate set-point (rad/s) realising ``acceleration``.

        Thrust is the mass times the acceleration projected on the current body z axis; roll and
        pitch rates turn body z towards the acceleration direction; ``yaw_rate`` passes through.
        """
        ax, ay, az = acceleration
        norm = math.sqrt(ax * ax + ay * ay + az * az)
        bx, by, bz = rot[2], rot[5], rot[8]  # body z axis in world
        thrust = self.params.mass * max(ax * bx + ay * by + az * bz, 0.0)
        dx, dy, dz = ax / norm, ay / norm, az / norm
        # Rotation vector from body z to the desired z (world), then into the body frame.
        ex, ey, ez = by * dz - bz * dy, bz * dx - bx * dz, bx * dy - by * dx
        ebx = rot[0] * ex + rot[3] * ey + rot[6] * ez
        eby = rot[1] * ex + rot[4] * ey + rot[7] * ez
        kp = self.gains.att_p
        return thrust, kp * ebx, kp * eby, yaw_rate

    def rates_to_rpm(self, thrust: float, rate_setpoint: Vec3, body_rates: Vec3,
                     dt: float) -> tuple[float, float, float, float]:
        """Rotor speed commands (rpm) for a collective ``thrust`` (N) and body-rate set-point
        (rad/s); integrates the rate error over ``dt`` seconds (skipped while on the ground,
        where ``thrust`` is below half the weight and contact torques would wind it up)."""
        g = self.gains
        e0 = rate_setpoint[0] - body_rates[0]
        e1 = rate_setpoint[1] - body_rates[1]
        e2 = rate_setpoint[2] - body_rates[2]
        i0, i1, i2 = self._rate_integral
        if thrust > 0.5 * self.params.weight:  # airborne
            ki, limit = g.rate_i, g.rate_i_limit
            i0 = min(max(i0 + ki * e0 * dt, -limit), limit)
            i1 = min(max(i1 + ki * e1 * dt, -limit), limit)
            i2 = min(max(i2 + ki * e2 * dt, -limit), limit)
            self._rate_integral = [i0, i1, i2]
        jx, jy, jz = self.inertia
        kp = g.rate_p
        return self.mix(thrust, jx * (kp * e0 + i0), jy * (kp * e1 + i1), jz * (kp * e2 + i2))

    def mix(self, thrust: float, tx: float, ty: float, tz: float) -> tuple[float, float, float, float]:
        """Rotor speeds (rpm) producing collective ``thrust`` (N) and body torques (N m).

        Rotor thrusts stay inside [idle floor, max rotor thrust]; when the plain allocation
        leaves that range the request is desaturated (see the module docstring).
        """
        u0, u1, u2, u3 = self._unmix
        f0 = u0[0] * thrust + u0[1] * tx + u0[2] * ty + u0[3] * tz
        f1 = u1[0] * thrust + u1[1] * tx + u1[2] * ty + u1[3] * tz
        f2 = u2[0] * thrust + u2[1] * tx + u2[2] * ty + u2[3] * tz
        f3 = u3[0] * thrust + u3[1] * tx + u3[2] * ty + u3[3] * tz
        low, high = self.min_rotor_thrust, self._max_rotor_thrust
        if not (low <= f0 <= high and low <= f1 <= high and low <= f2 <= high
                and low <= f3 <= high):
            f0, f1, f2, f3 = self._desaturate(thrust, tx, ty, tz)
        kf = self.params.kf
        return math.sqrt(f0 / kf), math.sqrt(f1 / kf), math.sqrt(f2 / kf), math.sqrt(f3 / kf)

    def _desaturate(self, thrust: float, tx: float, ty: float,
                    tz: float) -> list[float]:
        """Rotor thrusts (N) inside [floor, max]: roll/pitch torque kept if it fits (else scaled
        down), then as much yaw torque as fits, then the collective closest to ``thrust``."""
        low, high = self.min_rotor_thrust, self._max_rotor_thrust
        span = high - low
        tilt = [row[1] * tx + row[2] * ty for row in self._unmix]
        yaw = [row[3] * tz for row in self._unmix]
        tilt_spread = max(tilt) - min(tilt)
        if tilt_spread > span:
            tilt = [t * span / tilt_spread for t in tilt]
            torque = tilt
        else:
            both = [t + y for t, y in zip(tilt, yaw)]
            both_spread = max(both) - min(both)
            if both_spread > span:
                # The spread is convex in the yaw share, so this share fits.
                share = (span - tilt_spread) / (both_spread - tilt_spread)
                both = [t + share * y for t, y in zip(tilt, yaw)]
            torque = both
        collective = [row[0] * thrust + t for row, t in zip(self._unmix, torque)]
        shift = min(max(0.0, low - min(collective)), high - max(collective))
        return [min(max(c + shift, low), high) for c in collective]

    def yaw_hold_rate(self, rot: Rot, yaw_setpoint: float = 0.0) -> float:
        """Yaw-rate set-point (rad/s) that turns the heading towards ``yaw_setpoint`` (rad)."""
        yaw = math.atan2(rot[3], rot[0])
        error = (yaw_setpoint - yaw + math.pi) % (2.0 * math.pi) - math.pi
        return self.gains.yaw_p * error
