"""``LiquidDrones/Forest-v0``: fly ~10 m to a goal through random cylindrical trees."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from envs.base import ObservationField, Position, QuadrotorEnv, require_positive
from envs.sensors import RangeSensor

PROGRESS_REWARD = 10.0  # per metre closed on the goal
SUCCESS_REWARD = 10.0
START_CLEARANCE = 1.5  # m: no tree this close to the start
GOAL_CLEARANCE = 1.0  # m: no tree this close to the goal
BAND_HALF_WIDTH = 3.0  # m: trees stand at |y| <= this (times the range factor)
FLIGHT_HEIGHT = 1.0  # m, start and goal height
# Expert: potential field on the range readings, with a tangential term to slide around trees.
EXPERT_INFLUENCE = 1.2  # m: obstacles nearer than this repel
EXPERT_REPULSION = 0.6  # m^2/s: repulsive speed = gain * (1/d - 1/influence)
EXPERT_TANGENT = 1.5  # tangential / repulsive ratio


class ForestEnv(QuadrotorEnv):
    """Fly from a hover to a goal ``goal_distance`` (10 m) ahead through a random forest.

    ## Description
    A Crazyflie 2.x hovers at (0, 0, 1 m), heading +x, rotors at hover speed. The goal is at
    x = ``goal_distance``, y drawn in [-1, 1] m, z = 1 m. Vertical cylinders ("trees",
    ``tree_radius`` 0.15 m, ``tree_height`` 4 m) stand at random in 1.5 m < x < goal - 1 m,
    |y| <= 3 m, ``density`` (0.25) per m^2 on average, at least ``min_gap`` (0.7 m) of free space
    between neighbours, none within 1.5 m of the start or 1 m of the goal. ``forest_seed`` fixes
    the forest (same trees every episode); by default each episode draws a new one. Reaching
    within ``success_radius`` (0.5 m) of the goal is a success; any contact is a crash.

    ## Action Space
    ``Box(-1, 1, (4,), float32)``, meaning set by ``action`` (default ``velocity``; also ``ctbr``
    and ``motors``, see envs/actions.py).

    ## Observation Space
    ``Box(float32, (22 + num_rays,))`` (with ``camera=True`` a Dict of this ``state`` and a
    64 x 48 RGB ``image`` from a forward camera):

    | index | meaning                                             | unit  | bound | noise std |
    |-------|-----------------------------------------------------|-------|-------|-----------|
    | 0-2   | goal - position (world x, y, z)                     | m     | 10    | 1         |
    | 3-5   | velocity (world x, y, z)                            | m/s   | 10    | 1         |
    | 6-14  | rotation matrix body->world, row-major              | -     | 1     | 1         |
    | 15-17 | body rates p, q, r                                  | rad/s | 20    | 1         |
    | 18-21 | previous action                                     | -     | 1     | 0         |
    | 22-   | range rays, distance / ``ray_range`` (1: no hit)    | -     | 1     | 0.25      |

    ``noise std`` is the observation-noise standard deviation at ``obs_noise`` = 1 (in the entry's
    unit; for the rays 1 m, i.e. 1 / ``ray_range`` = 0.25 at the default 4 m); the ``obs_noise``
    disturbance level scales it, and noisy values are clipped too.

    The rays form a levelled fan of ``num_rays`` (32) over ``ray_fov_deg`` (360) degrees
    centred on the heading, ``ray_range`` (4 m) long; ray i points at heading + angle i,
    angles spaced evenly from -fov/2 (counter-clockwise positive).

    ## Rewards
    ``10 * (metres closed on the goal)`` per step, ``+10`` on success, ``-10`` on a crash, minus
    the shared action-change and body-rate penalties.

    ## Episode End
    1. Termination (success): within ``success_radius`` of the goal (once any push has landed).
    2. Termination (crash): any contact (tree or ground), tilt beyond 80 deg, or leaving the
       arena (|x| or |y| > 13 m, z > 4 m, times the ``range`` factor).
    3. Truncation: ``episode_seconds`` (default 25 s) have elapsed.

    ## Arguments
    ``goal_distance`` (m, 10), ``density`` (trees per m^2, 0.25), ``tree_radius`` (m, 0.15),
    ``tree_height`` (m, 4), ``min_gap`` (m, 0.7), ``forest_seed`` (None), ``num_rays`` (32),
    ``ray_fov_deg`` (360), ``ray_range`` (m, 4), ``success_radius`` (m, 0.5), plus the shared
    arguments of :class:`envs.base.QuadrotorEnv` (``camera=True`` adds the image). Disturbance
    axis ``density`` multiplies the tree density.
    """

    default_action = "velocity"
    default_episode_seconds = 25.0
    arena_half_width = 13.0
    arena_height = 4.0
    airborne_start = True
    supports_camera = True
    task_axes = ("density",)

    def __init__(self, goal_distance: float = 10.0, density: float = 0.25,
                 tree_radius: float = 0.15, tree_height: float = 4.0, min_gap: float = 0.7,
                 forest_seed: int | None = None, num_rays: int = 32, ray_fov_deg: float = 360.0,
                 ray_range: float = 4.0, success_radius: float = 0.5, **kwargs: Any) -> None:
        require_positive(goal_distance=goal_distance, tree_radius=tree_radius,
                         tree_height=tree_height, success_radius=success_radius)
        if not 0 <= density <= 2:
            raise ValueError(f"density must be in [0, 2] trees per m^2, got {density!r}")
        if not min_gap >= 0:
            raise ValueError(f"min_gap must be >= 0 m, got {min_gap!r}")
        if not 4 <= goal_distance <= 12:
            raise ValueError(f"goal_distance must be in [4, 12] m, got {goal_distance!r}")
        self.range_sensor = RangeSensor(num_rays, ray_fov_deg, ray_range)
        self.task_observation = (ObservationField(
            "range rays, distance / ``ray_range`` (1: no hit)", num_rays, "-", 1.0,
            1.0 / ray_range),)  # noise: 1 m on a ray
        super().__init__(**kwargs)
        self.goal_distance = goal_distance
        self.density = density
        self.tree_radius = tree_radius
        self.tree_height = tree_height
        self.min_gap = min_gap
        self.forest_seed = forest_seed
        self.success_radius = success_radius
        self.trees: list[Position] = []
        self._tree_bodies: list[int] = []
        self._goal: Position = (goal_distance, 0.0, FLIGHT_HEIGHT)
        self._ranges = [1.0] * num_rays

    def obstacles(self) -> list[tuple[float, float, float]]:
        return [(x, y, self.tree_radius) for x, y, _ in self.trees]

    def goal_radius(self) -> float:
        return self.success_radius

    @property
    def goal(self) -> Position:
        return self._goal

    def _spawn(self, rng: np.random.Generator) -> tuple[Position, float]:
        scale = self.range_factor
        self._goal = (self.goal_distance * scale, float(rng.uniform(-1.0, 1.0)), FLIGHT_HEIGHT)
        layout_rng = rng if self.forest_seed is None else np.random.default_rng(self.forest_seed)
        self.trees = self._draw_forest(layout_rng, scale)
        while len(self._tree_bodies) < len(self.trees):
            self._tree_bodies.append(self.sim.add_cylinder(self.tree_radius, self.tree_height))
        for i, body in enumerate(self._tree_bodies):
            self.sim.place(body, self.trees[i] if i < len(self.trees) else None)
        return (0.0, 0.0, FLIGHT_HEIGHT), 0.0

    def _draw_forest(self, rng: np.random.Generator, scale: float) -> list[Position]:
        """Tree centres (m): a density-driven count placed by rejection sampling."""
        x_low, x_high = START_CLEARANCE, self._goal[0] - GOAL_CLEARANCE
        half_width = BAND_HALF_WIDTH * scale
        area = max(x_high - x_low, 0.0) * 2.0 * half_width
        count = int(rng.poisson(self.density * self.episode_disturbance.density * area))
        spacing = 2.0 * self.tree_radius + self.min_gap
        trees: list[Position] = []
        for _ in range(count * 20):  # attempts
            if len(trees) == count:
                break
            x, y = float(rng.uniform(x_low, x_high)), float(rng.uniform(-half_width, half_width))
            if math.hypot(x - self._goal[0], y - self._goal[1]) < GOAL_CLEARANCE + self.tree_radius:
                continue
            if all(math.hypot(x - tx, y - ty) >= spacing for tx, ty, _ in trees):
                trees.append((x, y, 0.5 * self.tree_height))
        return trees

    def _task_step(self) -> tuple[float, bool]:
        reward = PROGRESS_REWARD * self._progress()
        if self.distance_to_goal() < self.success_radius and not self.push_pending:
            return reward + SUCCESS_REWARD, True
        return reward, False

    def _task_observation(self) -> list[float]:
        self._ranges = self.range_sensor.read(self.sim)
        return self._ranges

    def _expert_velocity(self) -> tuple[float, float, float]:
        vx, vy, vz = super()._expert_velocity()
        x, y, _ = self.sim.position
        gx, gy = self._goal[0] - x, self._goal[1] - y
        max_range = self.range_sensor.max_range
        for (dx, dy), reading in zip(self.range_sensor.directions(self.sim), self._ranges):
            distance = max(reading * max_range, 1e-3)  # m to the obstacle surface
            if distance >= EXPERT_INFLUENCE:
                continue
            push = EXPERT_REPULSION * (1.0 / distance - 1.0 / EXPERT_INFLUENCE)
            tx, ty = -dy, dx  # perpendicular to the ray, turned towards the goal's side
            if tx * gx + ty * gy < 0:
                tx, ty = -tx, -ty
            vx += push * (EXPERT_TANGENT * tx - dx)
            vy += push * (EXPERT_TANGENT * ty - dy)
        speed = math.hypot(vx, vy)
        limit = self.expert_pid.gains.max_speed
        if speed > limit:
            vx, vy = vx * limit / speed, vy * limit / speed
        return vx, vy, vz
