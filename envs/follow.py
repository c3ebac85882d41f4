"""``LiquidDrones/Follow-v0``: keep 0.5-1.5 m from a target moving on a smooth random path."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from envs.base import CRASH_PENALTY, ObservationField, Position, QuadrotorEnv

IN_RANGE_REWARD_RATE = 2.0  # per second inside the distance band
OUT_OF_RANGE_COST_RATE = 2.0  # per second and metre outside the band
MAX_COSTED_EXCESS = 5.0  # m: distance outside the band beyond this costs no more
TARGET_HEIGHT = 1.0  # m, mean height of the target path
TARGET_BOB = 0.3  # m, amplitude of the target's vertical oscillation
TARGET_BOB_PERIOD = 6.0  # s
TURN_RATE_TIME_CONSTANT = 1.5  # s, correlation time of the target's turn rate
HOME_GAIN = 1.0  # rad/s per rad of heading error when the target steers back inside its area


class FollowEnv(QuadrotorEnv):
    """Keep between ``min_distance`` and ``max_distance`` of a target moving on a smooth path.

    ## Description
    A Crazyflie 2.x hovers at (0, 0, 1 m), rotors at hover speed. A visible red target (a
    0.08 m sphere, seen by the camera, not by physics) starts 1 m ahead and moves at
    ``target_speed`` (0.5 m/s) with a smoothly random turn rate (std ``turn_rate_std``
    0.6 rad/s, 1.5 s correlation), bobbing 1 +- 0.3 m in height, and steering back when it is
    more than ``path_radius`` (3 m) from the origin. The drone must stay 0.5-1.5 m from it; the
    episode is a success when it was in range for at least ``success_fraction`` (80 %) of the
    control steps of the full episode.

    ## Action Space
    ``Box(-1, 1, (4,), float32)``, meaning set by ``action`` (default ``velocity``; also ``ctbr``
    and ``motors``, see envs/actions.py).

    ## Observation Space
    ``Box(float32, (25,))`` (with ``camera=True`` a Dict of this ``state`` and a 64 x 48 RGB
    ``image`` from a forward camera):

    | index | meaning                                   | unit  | bound | noise std |
    |-------|-------------------------------------------|-------|-------|-----------|
    | 0-2   | target - position (world x, y, z)         | m     | 10    | 1         |
    | 3-5   | velocity (world x, y, z)                  | m/s   | 10    | 1         |
    | 6-14  | rotation matrix body->world, row-major    | -     | 1     | 1         |
    | 15-17 | body rates p, q, r                        | rad/s | 20    | 1         |
    | 18-21 | previous action                           | -     | 1     | 0         |
    | 22-24 | target velocity (world x, y, z)           | m/s   | 10    | 1         |

    ``noise std`` is the observation-noise standard deviation at ``obs_noise`` = 1 (in the entry's
    unit); the ``obs_noise`` disturbance level scales it, and noisy values are clipped too.

    ## Rewards
    Per step ``2 * dt`` inside the band, ``-2 * dt * min(metres outside the band, 5)`` otherwise,
    minus the shared action-change and body-rate penalties. A crash costs ``10`` plus the
    largest tracking cost the rest of the episode could have had (``2 * 5 * remaining
    seconds``), so crashing never pays.

    ## Episode End
    1. Termination (crash): any contact, tilt beyond 80 deg, leaving the arena (|x| or |y| >
       6 m, z > 4 m, times the ``range`` factor).
    2. Truncation at ``episode_seconds`` (20 s); ``info["is_success"]`` is True on that step when
       the in-range fraction reached ``success_fraction`` (and any ``push`` has landed).

    ## Info
    The shared keys (``distance_to_goal`` is the distance to the target) and
    ``in_range_fraction`` (of the steps so far).

    ## Arguments
    ``target_speed`` (m/s, 0.5), ``min_distance``/``max_distance`` (m, 0.5/1.5),
    ``success_fraction`` (0.8), ``turn_rate_std`` (rad/s, 0.6), ``path_radius`` (m, 3), plus the
    shared arguments of :class:`envs.base.QuadrotorEnv`. Disturbance axis ``target_speed``
    multiplies the target speed.
    """

    default_action = "velocity"
    goal_name = "target"
    default_episode_seconds = 20.0
    arena_half_width = 6.0
    arena_height = 4.0
    airborne_start = True
    success_at_time_limit = True
    supports_camera = True
    task_axes = ("target_speed",)
    task_observation = (ObservationField("target velocity (world x, y, z)", 3, "m/s", 10.0, 1.0),)

    def __init__(self, target_speed: float = 0.5, min_distance: float = 0.5,
                 max_distance: float = 1.5, success_fraction: float = 0.8,
                 turn_rate_std: float = 0.6, path_radius: float = 3.0, **kwargs: Any) -> None:
        if not 0 <= target_speed <= 5:
            raise ValueError(f"target_speed must be in [0, 5] m/s, got {target_speed!r}")
        if not 0 < min_distance < max_distance:
            raise ValueError(f"need 0 < min_distance < max_distance, got {min_distance!r}, "
                             f"{max_distance!r}")
        if not 0 < success_fraction <= 1:
            raise ValueError(f"success_fraction must be in (0, 1], got {success_fraction!r}")
        if not turn_rate_std >= 0 or not 0 < path_radius < self.arena_half_width - 1:
            raise ValueError(f"need turn_rate_std >= 0 and 0 < path_radius < "
                             f"{self.arena_half_width - 1} m, got {turn_rate_std!r}, {path_radius!r}")
        super().__init__(**kwargs)
        self.target_speed = target_speed
        self.min_distance = min_distance
        self.max_distance = max_distance
        self.success_fraction = success_fraction
        self.turn_rate_std = turn_rate_std
        self.path_radius = path_radius
        self._target_body = self.sim.add_visual_sphere(0.08)
        self._target: Position = (1.0, 0.0, TARGET_HEIGHT)
        self.target_velocity: Position = (0.0, 0.0, 0.0)

    @property
    def goal(self) -> Position:
        return self._target

    def _spawn(self, rng: np.random.Generator) -> tuple[Position, float]:
        self._heading = 0.0
        self._turn_rate = 0.0
        self._bob_phase = float(rng.uniform(0.0, 2.0 * math.pi))
        self._target_rng = np.random.default_rng(int(rng.integers(2**63)))
        self._time = 0.0
        self._in_range = 0
        self._target = (1.0, 0.0, self._target_height())
        self.target_velocity = (0.0, 0.0, 0.0)
        self.sim.place(self._target_body, self._target)
        return (0.0, 0.0, TARGET_HEIGHT), 0.0

    def _marker_positions(self) -> list[Position]:
        return []  # the target itself is visible

    def shortest_path_length(self) -> float:
        return math.nan  # the goal moves

    def _target_height(self) -> float:
        return TARGET_HEIGHT + TARGET_BOB * math.sin(
            2.0 * math.pi * self._time / TARGET_BOB_PERIOD + self._bob_phase)

    def _move_target(self, dt: float) -> None:
        """Advance the target by ``dt`` seconds along its smooth random path."""
        decay = math.exp(-dt / TURN_RATE_TIME_CONSTANT)
        self._turn_rate = (decay * self._turn_rate + self.turn_rate_std
                           * math.sqrt(1.0 - decay * decay) * self._target_rng.standard_normal())
        x, y, z = self._target
        turn = self._turn_rate
        if math.hypot(x, y) > self.path_radius * self.range_factor:
            home = math.atan2(-y, -x)
            turn += HOME_GAIN * ((home - self._heading + math.pi) % (2.0 * math.pi) - math.pi)
        self._heading += turn * dt
        speed = self.target_speed * self.episode_disturbance.target_speed
        self._time += dt
        new_z = self._target_height()
        vx, vy = speed * math.cos(self._heading), speed * math.sin(self._heading)
        self.target_velocity = (vx, vy, (new_z - z) / dt)
        self._target = (x + vx * dt, y + vy * dt, new_z)
        self.sim.place(self._target_body, self._target)

    def _task_step(self) -> tuple[float, bool]:
        dt = self.control_dt
        self._move_target(dt)
        distance = self.distance_to_goal()
        if self.min_distance <= distance <= self.max_distance:
            self._in_range += 1
            reward = IN_RANGE_REWARD_RATE * dt
        else:
            outside = max(self.min_distance - distance, distance - self.max_distance)
            reward = -OUT_OF_RANGE_COST_RATE * dt * min(outside, MAX_COSTED_EXCESS)
        finished = self._steps >= self.max_steps
        return reward, (finished and not self.push_pending
                        and self._in_range >= self.success_fraction * self.max_steps)

    def _crash_penalty(self) -> float:
        remaining = (self.max_steps - self._steps) * self.control_dt  # s
        return CRASH_PENALTY + OUT_OF_RANGE_COST_RATE * MAX_COSTED_EXCESS * remaining

    def _task_observation(self) -> list[float]:
        return list(self.target_velocity)

    def _task_info(self) -> dict[str, Any]:
        return {"in_range_fraction": self._in_range / max(self._steps, 1)}

    def _expert_velocity(self) -> tuple[float, float, float]:
        """Track the point 1 m short of the target on the line to it, plus the target's velocity."""
        x, y, z = self.sim.position
        tx, ty, tz = self._target
        dx, dy, dz = tx - x, ty - y, tz - z
        distance = max(math.sqrt(dx * dx + dy * dy + dz * dz), 1e-6)
        keep = 0.5 * (self.min_distance + self.max_distance)
        offset = tuple(d * (1.0 - keep / distance) for d in (dx, dy, dz))
        vx, vy, vz = self.expert_pid.position_to_velocity(offset)
        fx, fy, fz = self.target_velocity
        return vx + fx, vy + fy, vz + fz
