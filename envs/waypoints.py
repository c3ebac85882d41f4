"""``LiquidDrones/Waypoints-v0``: visit a sequence of random waypoints in order."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from envs.base import (ObservationField, Position, QuadrotorEnv, require_height_range,
                       require_positive)

PROGRESS_REWARD = 10.0  # per metre closed on the current waypoint
WAYPOINT_REWARD = 2.0  # per waypoint reached
SUCCESS_REWARD = 10.0  # on reaching the last waypoint
MIN_SPACING = 1.0  # m between consecutive waypoints (and from the start to the first)


class WaypointsEnv(QuadrotorEnv):
    """Take off and fly through ``num_waypoints`` random waypoints, in order.

    ## Description
    A Crazyflie 2.x rests on the ground at the origin, heading +x. ``num_waypoints`` (default 4)
    waypoints are drawn in the box |x|, |y| <= ``half_width`` (2 m), ``min_height`` <= z <=
    ``max_height`` (0.5-2 m), each at least 1 m from the previous one (the first from the start).
    A waypoint counts as reached when the drone comes within ``waypoint_radius`` (0.20 m) of it;
    the next one then becomes the goal. Reaching the last one ends the episode as a success;
    with a ``push`` disturbance the last waypoint counts only once the push has landed.

    ## Action Space
    ``Box(-1, 1, (4,), float32)``, meaning set by ``action`` (default ``velocity``: world-frame
    velocity +-2 m/s and yaw rate +-pi/2 rad/s; also ``motors`` and ``ctbr``, see
    envs/actions.py). NaN or inf raise ValueError; values outside [-1, 1] are clipped.

    ## Observation Space
    ``Box(float32, (25,))``, SI units, each entry clipped to its bound:

    | index | meaning                                        | unit  | bound | noise std |
    |-------|------------------------------------------------|-------|-------|-----------|
    | 0-2   | current waypoint - position (world x, y, z)    | m     | 10    | 1         |
    | 3-5   | velocity (world x, y, z)                       | m/s   | 10    | 1         |
    | 6-14  | rotation matrix body->world, row-major         | -     | 1     | 1         |
    | 15-17 | body rates p, q, r                             | rad/s | 20    | 1         |
    | 18-21 | previous action                                | -     | 1     | 0         |
    | 22-24 | next waypoint - current waypoint (0 if last)   | m     | 10    | 1         |

    ``noise std`` is the observation-noise standard deviation at ``obs_noise`` = 1 (in the entry's
    unit); the ``obs_noise`` disturbance level scales it, and noisy values are clipped too.

    ## Rewards
    Per step: ``10 * (metres closed on the current waypoint)`` - ``0.01 * |a_t - a_{t-1}|^2``
    - ``0.002 * dt * |body rates|^2``; ``+2`` per waypoint reached; ``+10`` on success;
    ``-10`` on a crash.

    ## Starting State
    On the ground at (0, 0, 0.0125 m), level, at rest, rotors stopped.

    ## Episode End
    1. Termination (success): the last waypoint is reached; ``info["is_success"]`` is True.
    2. Termination (crash): ground contact after having climbed above 0.1 m, tilt beyond
       80 deg, contact with any other body, or leaving the arena (|x| or |y| > 3 m, z > 3 m, times the
       ``range`` disturbance factor).
    3. Truncation: ``episode_seconds`` (default 20 s) have elapsed.

    ## Info
    ``is_success``, ``crashed``, ``distance_to_goal`` (m, to the current waypoint),
    ``path_length`` (m flown), ``dt`` (s, true duration of the step), ``pushed``,
    ``push_time`` (see Hover), ``waypoints_reached``.

    ## Arguments
    ``num_waypoints`` (4), ``waypoint_radius`` (m, 0.20), ``half_width`` (m, 2.0),
    ``min_height``/``max_height`` (m, 0.5/2.0), plus the shared ``action``, ``ctrl_freq`` (Hz, 48),
    ``pyb_freq`` (Hz, 240), ``episode_seconds``, ``render_mode``, ``params`` and ``disturbances`` of
    :class:`envs.base.QuadrotorEnv`.
    """

    default_action = "velocity"
    goal_name = "current waypoint"
    default_episode_seconds = 20.0
    task_observation = (ObservationField("next waypoint - current waypoint (0 if last)", 3, "m",
                                         10.0, 1.0),)

    def __init__(self, num_waypoints: int = 4, waypoint_radius: float = 0.20,
                 half_width: float = 2.0, min_height: float = 0.5, max_height: float = 2.0,
                 **kwargs: Any) -> None:
        if not isinstance(num_waypoints, int) or num_waypoints < 1:
            raise ValueError(f"num_waypoints must be an integer >= 1, got {num_waypoints!r}")
        require_positive(waypoint_radius=waypoint_radius)
        if not 0 < half_width < self.arena_half_width:
            raise ValueError(f"half_width must be in (0, {self.arena_half_width}) m, "
                             f"got {half_width!r}")
        require_height_range(min_height, max_height, self.arena_height)
        super().__init__(**kwargs)
        self.num_waypoints = num_waypoints
        self.waypoint_radius = waypoint_radius
        self.half_width = half_width
        self.min_height = min_height
        self.max_height = max_height
        self.waypoints: list[Position] = [(0.0, 0.0, min_height)]
        self._reached = 0

    @property
    def goal(self) -> Position:
        return self.waypoints[min(self._reached, self.num_waypoints - 1)]

    def _spawn(self, rng: np.random.Generator) -> tuple[Position, float]:
        start = (0.0, 0.0, 0.5 * self.sim.params.collision_height)
        low = (-self.half_width, -self.half_width, self.min_height)
        high = (self.half_width, self.half_width, self.max_height)
        self.waypoints = []
        previous = start
        while len(self.waypoints) < self.num_waypoints:
            candidate = tuple(float(v) * self.range_factor for v in rng.uniform(low, high))
            if math.dist(candidate, previous) >= MIN_SPACING * self.range_factor:
                self.waypoints.append(candidate)
                previous = candidate
        self._reached = 0
        return start, 0.0

    def _task_step(self) -> tuple[float, bool]:
        reward = PROGRESS_REWARD * self._progress()
        last = self._reached == self.num_waypoints - 1
        if self.distance_to_goal() < self.waypoint_radius and not (last and self.push_pending):
            self._reached += 1
            reward += WAYPOINT_REWARD
            if self._reached == self.num_waypoints:
                return reward + SUCCESS_REWARD, True
            self._retarget()
        return reward, False

    def _task_observation(self) -> list[float]:
        index = self._reached
        if index + 1 >= self.num_waypoints:
            return [0.0, 0.0, 0.0]
        current, following = self.waypoints[index], self.waypoints[index + 1]
        return [following[i] - current[i] for i in range(3)]

    def _task_info(self) -> dict[str, Any]:
        return {"waypoints_reached": self._reached}

    def _marker_positions(self) -> list[Position]:
        return self.waypoints[self._reached:]

    def goal_radius(self) -> float:
        return self.waypoint_radius

    def route(self) -> list[Position]:
        return list(self.waypoints)
