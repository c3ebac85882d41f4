"""The shortest path that enters a sequence of balls in order: the L_shortest of SPL.

A task succeeds on reaching a goal *within a radius* (Waypoints 0.20 m per waypoint, Forest
0.5 m, Hover 0.10 m), so the shortest feasible flight from the start ends each leg on the
surface of the next goal's ball, not at its centre; measuring to the centres would make the
"shortest" path longer than real successful flights (SPL stuck at 1).

The problem is convex: minimise sum |p_i - p_(i-1)| over p_1..p_K with p_0 = start and
|p_i - c_i| <= r. It is solved by block-coordinate descent: each touch point in turn moves to the
point of its ball that minimises the length of its two legs (exactly: on the straight segment
between its neighbours when that segment meets the ball, else on the sphere, found by a
golden-section search along the great circle in the plane of the neighbours and the centre),
until no point moves by more than 1 µm (the length is then exact to far less: it is flat at its minimum). Obstacles are ignored (Forest: a lower bound).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def shortest_path_through_balls(start: Sequence[float], centres: Sequence[Sequence[float]], radius: float,
                                tolerance: float = 1e-6, max_sweeps: int = 200) -> float:
    """Length (m) of the shortest path from ``start`` entering, in order, the ball of ``radius``
    (m) around each of ``centres`` ([K, 3], m); 0 for no centres."""
    if not len(centres):
        return 0.0
    centres_ = np.asarray(centres, dtype=np.float64)
    points = [np.asarray(start, dtype=np.float64)] + [c.copy() for c in centres_]
    for _ in range(max_sweeps):
        moved = 0.0
        for i in range(1, len(points)):
            after = points[i + 1] if i + 1 < len(points) else None
            best = _best_touch(points[i - 1], after, centres_[i - 1], radius)
            moved = max(moved, float(np.linalg.norm(best - points[i])))
            points[i] = best
        if moved < tolerance:
            break
    return float(sum(np.linalg.norm(b - a) for a, b in zip(points, points[1:])))


def _project(point: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """The point of the ball nearest to ``point``."""
    offset = point - centre
    distance = float(np.linalg.norm(offset))
    return point.copy() if distance <= radius else centre + offset * (radius / distance)


def _best_touch(before: np.ndarray, after: np.ndarray | None, centre: np.ndarray, radius: float) -> np.ndarray:
    """The point p of the ball minimising |p - before| + |after - p| (only the first term at the end)."""
    if after is None:
        return _project(before, centre, radius)
    segment = after - before
    length2 = float(segment @ segment)
    t = 0.0 if length2 == 0.0 else min(max(float((centre - before) @ segment) / length2, 0.0), 1.0)
    nearest = before + t * segment
    if np.linalg.norm(nearest - centre) <= radius:
        return nearest  # the straight leg passes through the ball
    u = before - centre
    u /= np.linalg.norm(u)
    w = after - centre
    v = w - (w @ u) * u
    if np.linalg.norm(v) < 1e-12:  # neighbours on one line through the centre: any plane will do
        v = np.cross(u, [1.0, 0.0, 0.0] if abs(u[0]) < 0.9 else [0.0, 1.0, 0.0])
    v /= np.linalg.norm(v)
    # In the plane of the centre (origin), ``before`` (on the first axis) and ``after``:
    ax, bx, by = float(np.linalg.norm(before - centre)), float(w @ u), float(w @ v)
    end = math.atan2(by, bx)  # angle of ``after`` seen from the centre, in [0, pi]

    def cost(angle: float) -> float:
        x, y = radius * math.cos(angle), radius * math.sin(angle)
        return math.hypot(x - ax, y) + math.hypot(bx - x, by - y)

    low, high = 0.0, end
    for _ in range(45):  # the arc shrinks by 0.618 per step: to ~1e-9 rad
        a, b = high - GOLDEN * (high - low), low + GOLDEN * (high - low)
        if cost(a) <= cost(b):
            high = b
        else:
            low = a
    angle = (low + high) / 2.0
    return centre + radius * (math.cos(angle) * u + math.sin(angle) * v)
