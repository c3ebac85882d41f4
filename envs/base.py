"""The shared Gymnasium env: rates, action modes, observation, crash checks and info keys.

A task (envs/hover.py, envs/waypoints.py) subclasses :class:`QuadrotorEnv` and supplies only
what makes it a task: where the drone starts and where the goals are (:meth:`_spawn`), the
current goal (:attr:`goal`), its reward and success (:meth:`_task_step`) and any extra
observation or info entries.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import gymnasium as gym
import numpy as np

from envs.actions import ACTION_MODES
from envs.control import CascadedPID
from envs.disturbances import COMMON_AXES, IMAGE_AXES, Disturbances, EpisodeDisturbance
from envs.params import CONTROL_HZ, CRAZYFLIE, PHYSICS_HZ, QuadrotorParams
from envs.quadrotor import QuadrotorSim
from envs.sensors import ForwardCamera

Position = tuple[float, float, float]

# Observation layout shared by every task: (name, size, bound); values are SI and clipped.
BASE_OBSERVATION = (
    ("goal offset (m, world)", 3, 10.0),
    ("velocity (m/s, world)", 3, 10.0),
    ("rotation matrix body->world, rows", 9, 1.0),
    ("body rates (rad/s)", 3, 20.0),
    ("previous action", 4, 1.0),
)

IDLE_RPM = (0.0, 0.0, 0.0, 0.0)  # rotor command before any (delayed) action has arrived
MAX_TILT_COS = math.cos(math.radians(80.0))  # a tilt beyond 80 deg is a crash
TAKE_OFF_HEIGHT = 0.1  # m: above this the drone has taken off; later ground contact is a crash
CRASH_PENALTY = 10.0
ACTION_CHANGE_PENALTY = 0.01  # per unit of |a_t - a_{t-1}|^2
BODY_RATE_PENALTY = 0.002  # per (rad/s)^2 of body rate


def require_positive(**values: float) -> None:
    """Raise ValueError naming the first argument that is not > 0."""
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")


def require_height_range(min_height: float, max_height: float, ceiling: float) -> None:
    """Raise ValueError unless 0 < min_height <= max_height < ceiling (m)."""
    if not 0 < min_height <= max_height < ceiling:
        raise ValueError(f"need 0 < min_height <= max_height < {ceiling} m, "
                         f"got min_height={min_height!r}, max_height={max_height!r}")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


class QuadrotorEnv(gym.Env):
    """Base quadrotor env; see the task classes for the user manual of each task.

    Args (shared by every task):
        action: action mode, one of ``motors``, ``ctbr``, ``velocity`` (see envs/actions.py).
        ctrl_freq: control rate (Hz): env steps per simulated second; must divide ``pyb_freq``.
        pyb_freq: physics rate (Hz).
        episode_seconds: time limit (s) after which the episode is truncated.
        render_mode: ``None`` or ``"rgb_array"`` (chase-camera frames from :meth:`render`).
        params: airframe constants (default: Crazyflie 2.x).
        disturbances: :class:`envs.disturbances.Disturbances` (or a dict of its fields): fixed
            stress levels or per-episode ranges. A ``ctrl_rate`` in it replaces ``ctrl_freq``
            and raises ``pyb_freq`` to the smallest multiple of it that is >= ``pyb_freq``.
        camera: add a forward camera; the observation becomes a Dict ``{"state": Box,
            "image": Box(0, 255, (48, 64, 3), uint8)}`` (only tasks with ``supports_camera``).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ}
    default_action = "ctbr"
    default_episode_seconds = 8.0
    arena_half_width = 3.0  # m: |x|, |y| beyond this is leaving the arena
    arena_height = 3.0  # m: z beyond this is leaving the arena
    task_observation: tuple[tuple[str, int, float], ...] = ()
    task_axes: tuple[str, ...] = ()  # task-specific disturbance axes this env responds to
    airborne_start = False  # start hovering (rotors at hover speed) instead of on the ground
    supports_camera = False

    def __init__(self, action: str | None = None, ctrl_freq: int = CONTROL_HZ,
                 pyb_freq: int = PHYSICS_HZ, episode_seconds: float | None = None,
                 render_mode: str | None = None, params: QuadrotorParams = CRAZYFLIE,
                 disturbances: Disturbances | dict[str, Any] | None = None,
                 camera: bool = False, **unknown: Any) -> None:
        if unknown:
            raise ValueError(f"unknown argument(s) {sorted(unknown)} for {type(self).__name__}; "
                             f"allowed: {self.argument_names()}")
        if not isinstance(disturbances, Disturbances):
            disturbances = Disturbances.from_dict(disturbances)
        if disturbances.ctrl_rate is not None:
            ctrl_freq = disturbances.ctrl_rate
            pyb_freq = math.ceil(pyb_freq / ctrl_freq) * ctrl_freq
        action = self.default_action if action is None else action
        if action not in ACTION_MODES:
            raise ValueError(f"unknown action mode {action!r}; allowed: {sorted(ACTION_MODES)}")
        if not isinstance(pyb_freq, int) or pyb_freq <= 0:
            raise ValueError(f"pyb_freq must be a positive integer (Hz), got {pyb_freq!r}")
        if not isinstance(ctrl_freq, int) or ctrl_freq <= 0 or pyb_freq % ctrl_freq:
            raise ValueError(f"ctrl_freq={ctrl_freq!r} Hz does not divide pyb_freq={pyb_freq} Hz; "
                             f"allowed control rates: {_divisors(pyb_freq)}")
        episode_seconds = self.default_episode_seconds if episode_seconds is None else episode_seconds
        if not episode_seconds > 0:
            raise ValueError(f"episode_seconds must be > 0, got {episode_seconds!r}")
        if camera and not self.supports_camera:
            raise ValueError(f"{type(self).__name__} has no camera option; camera=True is "
                             f"allowed for the Forest and Follow tasks")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"unknown render_mode {render_mode!r}; allowed: None, 'rgb_array'")

        self.render_mode = render_mode
        self.disturbances = disturbances
        self.params = params
        self.episode_seconds = episode_seconds
        self.ctrl_freq = ctrl_freq
        self.pyb_freq = pyb_freq
        self.substeps = pyb_freq // ctrl_freq
        self.control_dt = self.substeps / pyb_freq  # s, true duration of one env step
        self.max_steps = math.ceil(episode_seconds * ctrl_freq)
        self.sim = QuadrotorSim(params, pyb_freq)
        self.pid = CascadedPID(params)
        self.expert_pid = CascadedPID(params)
        self.action_mode = ACTION_MODES[action](self.pid)

        layout = BASE_OBSERVATION + self.task_observation
        bounds = np.concatenate([np.full(size, bound) for _, size, bound in layout])
        self._obs_high = bounds.astype(np.float32)
        self._noisy_entries = np.ones(len(bounds), dtype=bool)  # all but the previous action
        self._noisy_entries[18:22] = False
        state_space = gym.spaces.Box(-self._obs_high, self._obs_high, dtype=np.float32)
        self.camera = ForwardCamera() if camera else None
        if self.camera is None:
            self.observation_space = state_space
        else:
            image_shape = (self.camera.height, self.camera.width, 3)
            self.observation_space = gym.spaces.Dict({
                "state": state_space,
                "image": gym.spaces.Box(0, 255, shape=image_shape, dtype=np.uint8)})
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self._previous_action = [0.0, 0.0, 0.0, 0.0]
        self.range_factor = 1.0

    @property
    def disturbance_axes(self) -> tuple[str, ...]:
        """The disturbance axes this env responds to (see envs/disturbances.py)."""
        return self.axes_with(camera=self.camera is not None)

    @classmethod
    def axes_with(cls, camera: bool) -> tuple[str, ...]:
        """The disturbance axes of this task, with or without a camera (no env is built)."""
        return COMMON_AXES + cls.task_axes + (IMAGE_AXES if camera else ())

    @classmethod
    def argument_names(cls) -> list[str]:
        """Every constructor argument the env accepts (task arguments and the shared ones)."""
        names: set[str] = set()
        for klass in cls.__mro__:
            if "__init__" in vars(klass) and issubclass(klass, QuadrotorEnv):
                parameters = inspect.signature(vars(klass)["__init__"]).parameters.values()
                names.update(p.name for p in parameters
                             if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD)
        return sorted(names)

    # --- task hooks --------------------------------------------------------------------------
    @property
    def goal(self) -> Position:
        """Current goal position (m, world)."""
        raise NotImplementedError

    def _spawn(self, rng: np.random.Generator) -> tuple[Position, float]:
        """Draw the task layout (goals); return the start position (m) and heading (rad)."""
        raise NotImplementedError

    def _task_step(self) -> tuple[float, bool]:
        """Task reward for the step just simulated and whether the task is now accomplished."""
        raise NotImplementedError

    def _task_observation(self) -> list[float]:
        return []

    def _task_info(self) -> dict[str, Any]:
        return {}

    def _marker_positions(self) -> list[Position]:
        return [self.goal]

    def route(self) -> list[Position]:
        """The goals of the episode in visiting order (m, world); one for most tasks."""
        return [self.goal]

    def shortest_path_length(self) -> float:
        """Length (m) of the straight legs from the start through :meth:`route`, the L_shortest
        of SPL; NaN where the goal moves (no fixed path to compare with)."""
        corners = [self.start_position, *self.route()]
        return float(sum(math.dist(a, b) for a, b in zip(corners, corners[1:])))

    # --- shared helpers for tasks ------------------------------------------------------------
    def distance_to_goal(self) -> float:
        """Distance (m) from the drone to the current goal."""
        return math.dist(self.sim.position, self.goal)

    def speed(self) -> float:
        """Speed (m/s) over ground."""
        vx, vy, vz = self.sim.velocity
        return math.sqrt(vx * vx + vy * vy + vz * vz)

    def _progress(self) -> float:
        """Metres closed on the current goal since the previous call (negative when receding)."""
        distance = self.distance_to_goal()
        progress = self._previous_distance - distance
        self._previous_distance = distance
        return progress

    def _retarget(self) -> None:
        """Call after the goal changes so progress is measured against the new goal."""
        self._previous_distance = self.distance_to_goal()
        if self.render_mode is not None:
            self.sim.set_markers(self._marker_positions())

    # --- Gymnasium API -----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        # The disturbance draws come from their own stream, taken first, so the task layout of
        # a seed is the same at every disturbance level (paired comparisons).
        disturbance_rng = np.random.default_rng(int(self.np_random.integers(2**63)))
        self.disturbance = EpisodeDisturbance(self.disturbances, disturbance_rng, self.control_dt,
                                              self.substeps, self.episode_seconds)
        self.range_factor = self.disturbance.range
        airframe = self.params.scaled(self.disturbance.mass, self.disturbance.motor_index,
                                      self.disturbance.motor_efficiency)
        if airframe != self.sim.params:
            self.sim.set_params(airframe)
        start, yaw = self._spawn(self.np_random)
        self.start_position = start
        self.sim.reset(start, yaw, rpm=self.params.hover_rpm if self.airborne_start else 0.0)
        self.sim.wind = self.disturbance.wind()
        self.pid.reset()
        self.expert_pid.reset()
        self._previous_action = [0.0, 0.0, 0.0, 0.0]
        self._steps = 0
        self._took_off = False
        self.path_length = 0.0
        self._retarget()
        return self._observe(), self._info(success=False, crashed=False)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = self._validate_action(action)
        sim, mode, disturbance = self.sim, self.action_mode, self.disturbance
        start = sim.position
        if disturbance.action_delay:
            for _ in range(self.substeps):
                delayed = disturbance.delayed_action(action)
                if delayed is None:
                    sim.step(IDLE_RPM)
                else:
                    mode.command(delayed)
                    sim.step(mode.rpm(sim))
        else:
            mode.command(action)
            for _ in range(self.substeps):
                sim.step(mode.rpm(sim))
        self._steps += 1
        if self._steps * self.control_dt >= disturbance.push_time:
            sim.push(disturbance.push_velocity)
            disturbance.push_time = math.inf
        sim.wind = disturbance.wind()
        self.path_length += math.dist(start, sim.position)

        crashed = self._crashed()
        reward, success = self._task_step()
        success = success and not crashed
        change = sum((a - b) ** 2 for a, b in zip(action, self._previous_action))
        rates = sum(w * w for w in sim.body_rates)
        reward -= ACTION_CHANGE_PENALTY * change + BODY_RATE_PENALTY * rates * self.control_dt
        if crashed:
            reward -= CRASH_PENALTY
        self._previous_action = action
        terminated = crashed or success
        truncated = not terminated and self._steps >= self.max_steps
        return (self._observe(), float(reward), terminated, truncated,
                self._info(success=success, crashed=crashed))

    def render(self) -> np.ndarray | None:
        """Chase-camera RGB frame [240, 320, 3] uint8 when ``render_mode="rgb_array"``."""
        if self.render_mode == "rgb_array":
            return self.sim.render_chase()
        return None

    def close(self) -> None:
        self.sim.close()

    # --- expert ------------------------------------------------------------------------------
    def expert_action(self) -> np.ndarray:
        """The expert's action in this env's action mode: the cascaded PID tracking the
        velocity set-point of :meth:`_expert_velocity`."""
        return self.action_mode.expert(self.sim, self._expert_velocity(), self.expert_pid,
                                       self.control_dt)

    def _expert_velocity(self) -> tuple[float, float, float]:
        """Velocity set-point (m/s) of the expert: the position loop towards the goal."""
        offset = tuple(g - x for g, x in zip(self.goal, self.sim.position))
        return self.expert_pid.position_to_velocity(offset)

    # --- internals ---------------------------------------------------------------------------
    def _validate_action(self, action: np.ndarray) -> list[float]:
        values = np.asarray(action, dtype=np.float64).ravel().tolist()
        if len(values) != 4:
            raise ValueError(f"action must have 4 values, got shape {np.shape(action)}")
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"action contains NaN or inf: {values}")
        return [min(max(v, -1.0), 1.0) for v in values]

    def _crashed(self) -> bool:
        sim = self.sim
        x, y, z = sim.position
        if z > TAKE_OFF_HEIGHT:
            self._took_off = True
        ground, other = sim.contacts()
        return (other or (ground and self._took_off) or sim.rot[8] < MAX_TILT_COS
                or max(abs(x), abs(y)) > self.arena_half_width * self.range_factor
                or z > self.arena_height * self.range_factor)

    def _observe(self) -> np.ndarray | dict[str, np.ndarray]:
        """What the policy sees: the state (noisy), the camera image (perturbed), both delayed."""
        disturbance = self.disturbance
        state = disturbance.noisy_state(self._observation(), self._noisy_entries)
        if self.camera is None:
            return disturbance.delayed_observation(state)
        image = disturbance.perturbed_image(self.camera.read(self.sim))
        return disturbance.delayed_observation({"state": state, "image": image})

    def _observation(self) -> np.ndarray:
        """The true state vector (see the task's observation table)."""
        sim = self.sim
        gx, gy, gz = self.goal
        x, y, z = sim.position
        values = [gx - x, gy - y, gz - z, *sim.velocity, *sim.rot, *sim.body_rates,
                  *self._previous_action, *self._task_observation()]
        obs = np.array(values, dtype=np.float32)
        return np.clip(obs, -self._obs_high, self._obs_high, out=obs)

    def _info(self, success: bool, crashed: bool) -> dict[str, Any]:
        return {"is_success": success, "crashed": crashed,
                "distance_to_goal": self.distance_to_goal(), "path_length": self.path_length,
                "dt": self.control_dt, **self._task_info()}
