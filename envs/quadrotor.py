"""One quadrotor in its own PyBullet DIRECT client: rotor forces, motor lag, drag, ground effect.

PyBullet integrates the rigid body and resolves contacts; this module supplies the forces it
does not know about, once per physics step (they are cleared by PyBullet after each step):

- rotor ``i`` spins at ``w_i`` rpm, following its command with a first-order lag
  ``tau * dw/dt = w_cmd - w`` (integrated exactly over the step);
- thrust ``eff_i * kf * w_i^2`` along body z and yaw torque ``yaw_sign_i * eff_i * km * w_i^2``;
- rotor drag against the *relative* airspeed ``v - wind`` in the body frame, proportional to
  the summed rotor speed (rad/s) with coefficients ``drag_xy``/``drag_z``, plus body drag
  ``0.5 * rho * Cd * A * |v_rel| * v_rel`` per body axis (quadratic in the airspeed); a wind
  velocity therefore acts physically, through the same drag a moving drone feels;
- once airborne (:attr:`QuadrotorSim.min_rpm` set by the env) no rotor is commanded below the
  idle speed;
- ground effect: each rotor's thrust grows by ``ground_effect_coeff * (prop_radius / 4h)^2``
  at height ``h`` (m) of that rotor, with ``h`` clipped from below (the model diverges at 0).

Bodies are loaded once; :meth:`QuadrotorSim.reset` repositions them, so resets are cheap and
memory stays flat. All hot-path arithmetic is on Python floats (see envs/control.py).
"""

from __future__ import annotations

import math
import weakref
from importlib import resources

import numpy as np
import pybullet as p

from envs.params import QuadrotorParams

URDF_PATH = str(resources.files("envs.assets") / "cf2x.urdf")
RPM_TO_RAD_S = 2.0 * math.pi / 60.0
GROUND_EFFECT_MAX_HEIGHT = 0.5  # m: above this the ground-effect gain is < 0.2 % and skipped
GROUND_HALF_EXTENT = 50.0  # m, half side of the rendered ground tile
PARKED = (0.0, 0.0, -50.0)  # m, where unused static bodies wait (below the ground plane)


class QuadrotorSim:
    """A Crazyflie-like quadrotor simulated at ``physics_hz`` in a private PyBullet client.

    Args:
        params: airframe constants (change later with :meth:`set_params`).
        physics_hz: physics steps per second.

    State after each :meth:`step` (plain tuples, world frame unless noted):
    ``position`` (m), ``quaternion`` (x, y, z, w), ``rot`` (9-tuple body->world, row-major),
    ``velocity`` (m/s), ``body_rates`` (rad/s, body frame), ``rpm`` (4 rotor speeds).
    ``wind`` (m/s, world) may be set at any time.
    """

    def __init__(self, params: QuadrotorParams, physics_hz: int) -> None:
        self.physics_hz = physics_hz
        self.dt = 1.0 / physics_hz
        self.client = p.connect(p.DIRECT)
        cid = self.client
        p.setGravity(0.0, 0.0, -params.gravity, physicsClientId=cid)
        p.setTimeStep(self.dt, physicsClientId=cid)
        ground_shape = p.createCollisionShape(p.GEOM_PLANE, physicsClientId=cid)
        ground_visual = p.createVisualShape(
            p.GEOM_BOX, halfExtents=[GROUND_HALF_EXTENT, GROUND_HALF_EXTENT, 0.001],
            rgbaColor=[0.55, 0.6, 0.55, 1.0], physicsClientId=cid)
        self.ground = p.createMultiBody(0.0, ground_shape, ground_visual, physicsClientId=cid)
        self.drone = p.loadURDF(URDF_PATH, [0.0, 0.0, 1.0], flags=p.URDF_USE_INERTIA_FROM_FILE,
                                physicsClientId=cid)
        # Our drag model replaces Bullet's velocity damping; a sleeping body would ignore forces.
        p.changeDynamics(self.drone, -1, linearDamping=0.0, angularDamping=0.0,
                         activationState=p.ACTIVATION_STATE_DISABLE_SLEEPING, physicsClientId=cid)
        self._markers: list[int] = []
        self.obstacles = 0  # colliding bodies besides the ground and the drone
        self.wind: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self.min_rpm = 0.0  # rpm, floor of every rotor command (the idle speed once airborne)
        # A dropped sim releases its client when garbage-collected, as close() does.
        self._release = weakref.finalize(self, p.disconnect, physicsClientId=cid)
        self.set_params(params)
        self.reset((0.0, 0.0, 1.0))

    def set_params(self, params: QuadrotorParams) -> None:
        """Apply an airframe (mass, inertia, rotor constants) to the loaded body."""
        self.params = params
        p.changeDynamics(self.drone, -1, mass=params.mass,
                         localInertiaDiagonal=[params.ixx, params.iyy, params.izz],
                         physicsClientId=self.client)
        p.setGravity(0.0, 0.0, -params.gravity, physicsClientId=self.client)
        self._lag = 1.0 - math.exp(-self.dt / params.motor_tau)
        self._thrust_coeff = tuple(params.kf * e for e in params.motor_efficiency)
        self._yaw_coeff = tuple(params.km * e * s for e, s in
                                zip(params.motor_efficiency, params.yaw_sign))
        # Below this rotor height (m) the ground-effect model is held constant; the bound keeps
        # the extra thrust at full speed to ~1/15 of the maximum, as in gym-pybullet-drones.
        self._ground_clip = 0.25 * params.prop_radius * math.sqrt(
            15.0 * params.max_rpm**2 * params.kf * params.ground_effect_coeff
            / (4.0 * params.max_rotor_thrust))
        self._body_drag = 0.5 * params.air_density * params.body_drag_coeff * params.body_drag_area

    def reset(self, position: tuple[float, float, float], yaw: float = 0.0,
              velocity: tuple[float, float, float] = (0.0, 0.0, 0.0), rpm: float = 0.0) -> None:
        """Place the drone at ``position`` (m) with heading ``yaw`` (rad), ``velocity`` (m/s),
        zero body rates and all rotors at ``rpm``. No body is reloaded."""
        cid = self.client
        quaternion = p.getQuaternionFromEuler([0.0, 0.0, yaw])
        p.resetBasePositionAndOrientation(self.drone, position, quaternion, physicsClientId=cid)
        p.resetBaseVelocity(self.drone, velocity, [0.0, 0.0, 0.0], physicsClientId=cid)
        # Bullet keeps contact manifolds (and their solver warm-start) across repositioning;
        # filtering the drone's pairs out for one collision pass drops them, so a reset episode
        # replays bit-identically to one in a fresh client.
        others = [p.getBodyUniqueId(i, physicsClientId=cid)
                  for i in range(p.getNumBodies(physicsClientId=cid))]
        others.remove(self.drone)
        for enable in (0, 1):
            for body in others:
                p.setCollisionFilterPair(self.drone, body, -1, -1, enable, physicsClientId=cid)
            if not enable:
                p.performCollisionDetection(physicsClientId=cid)
        self.rpm = [rpm, rpm, rpm, rpm]
        self._read_state()

    def _read_state(self) -> None:
        cid = self.client
        self.position, self.quaternion = p.getBasePositionAndOrientation(self.drone,
                                                                         physicsClientId=cid)
        self.velocity, omega = p.getBaseVelocity(self.drone, physicsClientId=cid)
        self.angular_velocity = omega
        r = self.rot = p.getMatrixFromQuaternion(self.quaternion)
        wx, wy, wz = omega
        self.body_rates = (r[0] * wx + r[3] * wy + r[6] * wz,
                           r[1] * wx + r[4] * wy + r[7] * wz,
                           r[2] * wx + r[5] * wy + r[8] * wz)

    def step(self, rpm_command: tuple[float, float, float, float]) -> None:
        """Advance one physics step (``1 / physics_hz`` s) with rotor speed commands in rpm."""
        prm = self.params
        lag = self._lag
        floor = self.min_rpm
        c0, c1, c2, c3 = rpm_command
        w0, w1, w2, w3 = self.rpm
        # Unrolled over the four rotors: this runs at the physics rate.
        w0 += lag * ((c0 if c0 > floor else floor) - w0)
        w1 += lag * ((c1 if c1 > floor else floor) - w1)
        w2 += lag * ((c2 if c2 > floor else floor) - w2)
        w3 += lag * ((c3 if c3 > floor else floor) - w3)
        self.rpm = [w0, w1, w2, w3]
        s0, s1, s2, s3 = w0 * w0, w1 * w1, w2 * w2, w3 * w3
        k0, k1, k2, k3 = self._thrust_coeff
        thrust = [k0 * s0, k1 * s1, k2 * s2, k3 * s3]
        r = self.rot
        px, py, pz = self.position
        if pz < GROUND_EFFECT_MAX_HEIGHT and r[8] > 0.0:
            coeff, radius, clip = prm.ground_effect_coeff, prm.prop_radius, self._ground_clip
            for i in range(4):
                height = max(pz + r[6] * prm.rotor_x[i] + r[7] * prm.rotor_y[i], clip)
                ratio = radius / (4.0 * height)
                thrust[i] *= 1.0 + coeff * ratio * ratio
        f0, f1, f2, f3 = thrust
        x0, x1, x2, x3 = prm.rotor_x
        y0, y1, y2, y3 = prm.rotor_y
        q0, q1, q2, q3 = self._yaw_coeff
        tx = y0 * f0 + y1 * f1 + y2 * f2 + y3 * f3
        ty = -(x0 * f0 + x1 * f1 + x2 * f2 + x3 * f3)
        tz = q0 * s0 + q1 * s1 + q2 * s2 + q3 * s3
        # Rotor drag (linear) and body drag (quadratic) against the airspeed, in the body frame.
        vx, vy, vz = self.velocity
        wx, wy, wz = self.wind
        ax, ay, az = vx - wx, vy - wy, vz - wz
        bx = r[0] * ax + r[3] * ay + r[6] * az
        by = r[1] * ax + r[4] * ay + r[7] * az
        bz = r[2] * ax + r[5] * ay + r[8] * az
        rotor = (w0 + w1 + w2 + w3) * RPM_TO_RAD_S
        body = self._body_drag * math.sqrt(bx * bx + by * by + bz * bz)
        fx = -(prm.drag_xy * rotor + body) * bx
        fy = -(prm.drag_xy * rotor + body) * by
        fz = -(prm.drag_z * rotor + body) * bz + f0 + f1 + f2 + f3
        cid = self.client
        p.applyExternalForce(self.drone, -1,
                             (r[0] * fx + r[1] * fy + r[2] * fz,
                              r[3] * fx + r[4] * fy + r[5] * fz,
                              r[6] * fx + r[7] * fy + r[8] * fz),
                             (px, py, pz), p.WORLD_FRAME, physicsClientId=cid)
        p.applyExternalTorque(self.drone, -1,
                              (r[0] * tx + r[1] * ty + r[2] * tz,
                               r[3] * tx + r[4] * ty + r[5] * tz,
                               r[6] * tx + r[7] * ty + r[8] * tz),
                              p.WORLD_FRAME, physicsClientId=cid)
        p.stepSimulation(physicsClientId=cid)
        self._read_state()

    def snapshot(self) -> tuple:
        """The kinematic state and rotor speeds, for :meth:`restore`."""
        return self.position, self.quaternion, self.velocity, self.angular_velocity, tuple(self.rpm)

    def restore(self, snapshot: tuple) -> None:
        """Put the drone back into a state taken by :meth:`snapshot` (e.g. after the physics
        diverged to NaN)."""
        position, quaternion, velocity, angular_velocity, rpm = snapshot
        cid = self.client
        p.resetBasePositionAndOrientation(self.drone, position, quaternion, physicsClientId=cid)
        p.resetBaseVelocity(self.drone, velocity, angular_velocity, physicsClientId=cid)
        self.rpm = list(rpm)
        self._read_state()

    def finite(self) -> bool:
        """Whether position, velocity and angular velocity are all finite numbers (a NaN or inf
        anywhere in the forces reaches them within one step)."""
        x, y, z = self.position
        vx, vy, vz = self.velocity
        wx, wy, wz = self.angular_velocity
        return math.isfinite(x + y + z + vx + vy + vz + wx + wy + wz)

    def push(self, velocity_change: tuple[float, float, float]) -> None:
        """Add ``velocity_change`` (m/s, world) to the drone's velocity at once (an impulse)."""
        velocity = tuple(v + dv for v, dv in zip(self.velocity, velocity_change))
        _, omega = p.getBaseVelocity(self.drone, physicsClientId=self.client)
        p.resetBaseVelocity(self.drone, velocity, omega, physicsClientId=self.client)
        self._read_state()

    def contacts(self) -> tuple[bool, bool]:
        """(touching the ground, touching anything else) after the last step."""
        ground = other = False
        for contact in p.getContactPoints(bodyA=self.drone, physicsClientId=self.client):
            if contact[2] == self.ground:
                ground = True
            else:
                other = True
        return ground, other

    def add_cylinder(self, radius: float, height: float,
                     rgba: tuple[float, float, float, float] = (0.45, 0.3, 0.15, 1.0)) -> int:
        """A static, colliding vertical cylinder (radius, height in m), parked out of the way
        below the ground; place it with :meth:`place`. Returns its body id."""
        cid = self.client
        shape = p.createCollisionShape(p.GEOM_CYLINDER, radius=radius, height=height,
                                       physicsClientId=cid)
        self.obstacles += 1
        visual = p.createVisualShape(p.GEOM_CYLINDER, radius=radius, length=height,
                                     rgbaColor=rgba, physicsClientId=cid)
        return p.createMultiBody(0.0, shape, visual, basePosition=PARKED, physicsClientId=cid)

    def add_visual_sphere(self, radius: float,
                          rgba: tuple[float, float, float, float] = (0.9, 0.1, 0.1, 1.0)) -> int:
        """A visual-only sphere (seen by cameras, not by physics or rays). Returns its body id."""
        cid = self.client
        visual = p.createVisualShape(p.GEOM_SPHERE, radius=radius, rgbaColor=rgba,
                                     physicsClientId=cid)
        return p.createMultiBody(0.0, -1, visual, basePosition=PARKED, physicsClientId=cid)

    def place(self, body: int, position: tuple[float, float, float] | None = None) -> None:
        """Move a static body to ``position`` (m), or park it out of the way when None."""
        p.resetBasePositionAndOrientation(body, PARKED if position is None else position,
                                          (0.0, 0.0, 0.0, 1.0), physicsClientId=self.client)

    def set_markers(self, positions: list[tuple[float, float, float]],
                    radius: float = 0.05) -> None:
        """Show visual-only spheres (no collision, no effect on physics) at ``positions`` (m)."""
        cid = self.client
        while len(self._markers) < len(positions):
            shape = p.createVisualShape(p.GEOM_SPHERE, radius=radius,
                                        rgbaColor=[1.0, 0.55, 0.0, 0.9], physicsClientId=cid)
            self._markers.append(p.createMultiBody(0.0, -1, shape, physicsClientId=cid))
        for i, marker in enumerate(self._markers):
            self.place(marker, positions[i] if i < len(positions) else None)

    def render_chase(self, width: int = 320, height: int = 240) -> np.ndarray:
        """RGB frame [height, width, 3] uint8 from a camera 0.8 m behind and above the drone,
        drawn by PyBullet's TinyRenderer (no display needed)."""
        yaw = math.degrees(math.atan2(self.rot[3], self.rot[0]))
        view = p.computeViewMatrixFromYawPitchRoll(
            cameraTargetPosition=self.position, distance=0.8, yaw=yaw - 90.0, pitch=-25.0,
            roll=0.0, upAxisIndex=2, physicsClientId=self.client)
        projection = p.computeProjectionMatrixFOV(fov=60.0, aspect=width / height, nearVal=0.02,
                                                  farVal=30.0, physicsClientId=self.client)
        _, _, rgba, _, _ = p.getCameraImage(width, height, view, projection,
                                            renderer=p.ER_TINY_RENDERER,
                                            physicsClientId=self.client)
        return np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[:, :, :3].copy()

    def num_bodies(self) -> int:
        """How many bodies the client holds (constant across resets)."""
        return p.getNumBodies(physicsClientId=self.client)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has released the client."""
        return self.client < 0

    def close(self) -> None:
        """Disconnect the PyBullet client (idempotent)."""
        if self.client >= 0:
            self._release()
            self.client = -1
