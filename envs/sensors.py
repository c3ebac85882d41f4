"""On-board sensors: a levelled fan of range rays and a forward-looking RGB camera."""

from __future__ import annotations

import math

import numpy as np
import pybullet as p

from envs.quadrotor import QuadrotorSim

RAY_START_OFFSET = 0.07  # m from the centre: just outside the 0.06 m collision cylinder


class RangeSensor:
    """A horizontal fan of ``num_rays`` rays, levelled (gimbal-stabilised) and centred on the
    drone's heading, cast with PyBullet's batched ray test.

    Args:
        num_rays: rays in the fan (>= 1).
        fov_deg: angle the fan spans (degrees, (0, 360]); 360 gives a full ring.
        max_range: ray length (m).

    :meth:`read` returns distances normalised by ``max_range``: [num_rays] in [0, 1], 1 meaning
    nothing within range. Ray ``i`` points at heading + ``angles[i]`` (rad, counter-clockwise).
    """

    def __init__(self, num_rays: int = 32, fov_deg: float = 360.0, max_range: float = 4.0) -> None:
        if not isinstance(num_rays, int) or num_rays < 1:
            raise ValueError(f"num_rays must be an integer >= 1, got {num_rays!r}")
        if not 0 < fov_deg <= 360:
            raise ValueError(f"fov_deg must be in (0, 360], got {fov_deg!r}")
        if not max_range > 0:
            raise ValueError(f"max_range must be > 0 m, got {max_range!r}")
        self.num_rays = num_rays
        self.max_range = max_range
        fov = math.radians(fov_deg)
        if fov_deg == 360:
            self.angles = [2 * math.pi * i / num_rays - math.pi for i in range(num_rays)]
        elif num_rays == 1:
            self.angles = [0.0]
        else:
            self.angles = [-fov / 2 + fov * i / (num_rays - 1) for i in range(num_rays)]

    def directions(self, sim: QuadrotorSim) -> list[tuple[float, float]]:
        """Unit ray directions (world x, y) for the drone's current heading."""
        yaw = math.atan2(sim.rot[3], sim.rot[0])
        return [(math.cos(yaw + a), math.sin(yaw + a)) for a in self.angles]

    def read(self, sim: QuadrotorSim) -> list[float]:
        """Normalised hit distances [num_rays] in [0, 1]."""
        x, y, z = sim.position
        starts, ends = [], []
        for dx, dy in self.directions(sim):
            starts.append((x + RAY_START_OFFSET * dx, y + RAY_START_OFFSET * dy, z))
            ends.append((x + self.max_range * dx, y + self.max_range * dy, z))
        hits = p.rayTestBatch(starts, ends, physicsClientId=sim.client)
        span = self.max_range - RAY_START_OFFSET
        return [(RAY_START_OFFSET + hit[2] * span) / self.max_range if hit[0] >= 0 else 1.0
                for hit in hits]


class ForwardCamera:
    """A body-fixed camera looking along the drone's x axis (TinyRenderer, headless).

    Args:
        width, height: image size in pixels (default 64 x 48).
        fov_deg: vertical field of view (degrees).
        max_distance: far clipping plane (m).

    :meth:`read` returns an RGB image [height, width, 3] uint8.
    """

    def __init__(self, width: int = 64, height: int = 48, fov_deg: float = 75.0,
                 max_distance: float = 20.0) -> None:
        self.width = width
        self.height = height
        self.projection = p.computeProjectionMatrixFOV(fov=fov_deg, aspect=width / height,
                                                       nearVal=0.03, farVal=max_distance)

    def read(self, sim: QuadrotorSim) -> np.ndarray:
        r = sim.rot
        x, y, z = sim.position
        forward = (r[0], r[3], r[6])
        eye = (x + 0.04 * forward[0], y + 0.04 * forward[1], z + 0.04 * forward[2])
        target = (eye[0] + forward[0], eye[1] + forward[1], eye[2] + forward[2])
        view = p.computeViewMatrix(eye, target, (r[2], r[5], r[8]), physicsClientId=sim.client)
        _, _, rgba, _, _ = p.getCameraImage(self.width, self.height, view, self.projection,
                                            renderer=p.ER_TINY_RENDERER,
                                            flags=p.ER_NO_SEGMENTATION_MASK,
                                            physicsClientId=sim.client)
        return np.asarray(rgba, dtype=np.uint8).reshape(self.height, self.width, 4)[:, :, :3].copy()
