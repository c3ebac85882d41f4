"""``LiquidDrones/Hover-v0``: take off, reach a nearby point and hold it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from envs.base import Position, QuadrotorEnv, require_height_range, require_positive

PROGRESS_REWARD = 10.0  # per metre closed on the target
HOLD_REWARD_RATE = 5.0  # per second spent at the target (tapers with distance)
HOLD_REWARD_SCALE = 0.2  # m, distance at which the hold reward has fallen to ~24 %
SUCCESS_REWARD = 10.0


class HoverEnv(QuadrotorEnv):
    """Take off from the ground, fly to a random target within ~1 m and hold it.

    ## Description
    A Crazyflie 2.x rests on the ground at the origin, heading +x. A target is drawn at a
    horizontal distance of up to ``target_radius`` and a height between ``min_height`` and
    ``max_height`` above the start. The drone must reach it and hold it: within
    ``success_radius`` (0.10 m) and slower than ``success_speed`` (0.2 m/s) for ``hold_seconds``
    (1 s) in a row, which ends the episode as a success. With a ``push`` disturbance the hold
    counts only after the push has landed (so a success includes the recovery).

    ## Action Space
    ``Box(-1, 1, (4,), float32)``, meaning set by ``action`` (default ``ctbr``: collective thrust
    and body rates; also ``motors`` and ``velocity``, see envs/actions.py). NaN or inf raise
    ValueError; values outside [-1, 1] are clipped.

    ## Observation Space
    ``Box(float32, (22,))``, SI units, each entry clipped to its bound:

    | index | meaning                                   | unit  | bound | noise std |
    |-------|-------------------------------------------|-------|-------|-----------|
    | 0-2   | target - position (world x, y, z)         | m     | 10    | 1         |
    | 3-5   | velocity (world x, y, z)                  | m/s   | 10    | 1         |
    | 6-14  | rotation matrix body->world, row-major    | -     | 1     | 1         |
    | 15-17 | body rates p, q, r                        | rad/s | 20    | 1         |
    | 18-21 | previous action                           | -     | 1     | 0         |

    ``noise std`` is the observation-noise standard deviation at ``obs_noise`` = 1 (in the entry's
    unit); the ``obs_noise`` disturbance level scales it, and noisy values are clipped too.

    ## Rewards
    Per step: ``10 * (metres closed on the target)`` + ``5 * dt * (1 - tanh(d / 0.2 m))`` (hold
    reward, d = distance) - ``0.01 * |a_t - a_{t-1}|^2`` - ``0.002 * dt * |body rates|^2``.
    Success adds ``10`` plus the hold reward the remaining time would have paid at d = 0, so
    finishing early never pays less than hovering on. A crash costs ``10``.

    ## Starting State
    On the ground at (0, 0, 0.0125 m), level, at rest, rotors stopped.

    ## Episode End
    1. Termination (success): the hold condition above is met; ``info["is_success"]`` is True.
    2. Termination (crash): ground contact after having climbed above 0.1 m, tilt beyond
       80 deg, contact with any other body, or leaving the arena (|x| or |y| > 3 m, z > 3 m, times the
       ``range`` disturbance factor).
    3. Truncation: ``episode_seconds`` (default 8 s) have elapsed.

    ## Info
    ``is_success``, ``crashed``, ``distance_to_goal`` (m), ``path_length`` (m flown),
    ``dt`` (s, true duration of the step), ``pushed`` (the push has landed), ``push_time`` (s
    from the start when it landed, None before).

    ## Arguments
    ``target_radius`` (m, 0.5), ``min_height``/``max_height`` (m, 0.5/1.0), ``hold_seconds``
    (s, 1.0), ``success_radius`` (m, 0.10), ``success_speed`` (m/s, 0.2), plus the shared
    ``action``, ``ctrl_freq`` (Hz, 48), ``pyb_freq`` (Hz, 240), ``episode_seconds``,
    ``render_mode``, ``params`` and ``disturbances`` of :class:`envs.base.QuadrotorEnv`.
    """

    default_action = "ctbr"
    goal_name = "target"
    default_episode_seconds = 8.0

    def __init__(self, target_radius: float = 0.5, min_height: float = 0.5,
                 max_height: float = 1.0, hold_seconds: float = 1.0, success_radius: float = 0.10,
                 success_speed: float = 0.2, **kwargs: Any) -> None:
        require_positive(target_radius=target_radius, hold_seconds=hold_seconds,
                         success_radius=success_radius, success_speed=success_speed)
        require_height_range(min_height, max_height, self.arena_height)
        super().__init__(**kwargs)
        self.target_radius = target_radius
        self.min_height = min_height
        self.max_height = max_height
        self.hold_seconds = hold_seconds
        self.success_radius = success_radius
        self.success_speed = success_speed
        self._target: Position = (0.0, 0.0, min_height)

    def goal_radius(self) -> float:
        return self.success_radius

    @property
    def goal(self) -> Position:
        return self._target

    def _spawn(self, rng: np.random.Generator) -> tuple[Position, float]:
        scale = self.range_factor
        radius = self.target_radius * math.sqrt(rng.uniform()) * scale
        angle = rng.uniform(-math.pi, math.pi)
        height = rng.uniform(self.min_height, self.max_height) * scale
        self._target = (radius * math.cos(angle), radius * math.sin(angle), height)
        self._held = 0.0
        return (0.0, 0.0, 0.5 * self.sim.params.collision_height), 0.0

    def _task_step(self) -> tuple[float, bool]:
        dt = self.control_dt
        reward = PROGRESS_REWARD * self._progress()
        distance = self.distance_to_goal()
        reward += HOLD_REWARD_RATE * dt * (1.0 - math.tanh(distance / HOLD_REWARD_SCALE))
        if (distance < self.success_radius and self.speed() < self.success_speed
                and not self.push_pending):
            self._held += dt
        else:
            self._held = 0.0
        success = self._held >= self.hold_seconds - 1e-9
        if success:
            remaining = (self.max_steps - self._steps) * dt
            reward += SUCCESS_REWARD + HOLD_REWARD_RATE * remaining
        return reward, success
