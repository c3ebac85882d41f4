"""The shared Gymnasium env: rates, action modes, observation, crash checks and info keys.

A task (envs/hover.py, envs/waypoints.py) subclasses :class:`QuadrotorEnv` and supplies only
what makes it a task: where the drone starts and where the goals are (:meth:`_spawn`), the
current goal (:attr:`goal`), its reward and success (:meth:`_task_step`) and any extra
observation or info entries.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

from envs.actions import ACTION_MODES
from envs.control import CascadedPID
from envs.disturbances import COMMON_AXES, IMAGE_AXES, Disturbances, EpisodeDisturbance
from envs.params import CONTROL_HZ, CRAZYFLIE, PHYSICS_HZ, QuadrotorParams
from envs.quadrotor import QuadrotorSim
from envs.sensors import ForwardCamera
from envs.shortest_path import shortest_path_through_balls

Position = tuple[float, float, float]



class ObservationField(NamedTuple):
    """One block of the observation vector; the task docstrings' tables list these rows."""

    meaning: str
    size: int
    unit: str
    bound: float  # every entry is clipped to [-bound, bound]
    noise_std: float  # Gaussian noise std at obs_noise = 1, in ``unit``


# Observation layout shared by every task; values are SI and clipped.
BASE_OBSERVATION = (
    ObservationField("goal - position (world x, y, z)", 3, "m", 10.0, 1.0),
    ObservationField("velocity (world x, y, z)", 3, "m/s", 10.0, 1.0),
    ObservationField("rotation matrix body->world, row-major", 9, "-", 1.0, 1.0),
    ObservationField("body rates p, q, r", 3, "rad/s", 20.0, 1.0),
    ObservationField("previous action", 4, "-", 1.0, 0.0),
)

MAX_TILT_COS = math.cos(math.radians(80.0))  # a tilt beyond 80 deg is a crash
TAKE_OFF_HEIGHT = 0.1  # m: above this the drone has taken off; later ground contact is a crash
# Below this height (m) ground contact is looked for; the 0.06 x 0.025 m collision cylinder
# cannot reach the ground from higher up (its farthest point is 0.061 m from the centre).
GROUND_CHECK_HEIGHT = 0.1
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


def _whole_hz(name: str, value: Any) -> int:
    """A rate (Hz) as int: positive integers, or floats that are whole numbers (48.0)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive whole number of Hz, got {value!r}")
    return value


class QuadrotorEnv(gym.Env):
    """Base quadrotor env; see the task classes for the user manual of each task.

    Args (shared by every task):
        action: action mode, one of ``motors``, ``ctbr``, ``velocity`` (see envs/actions.py).
        ctrl_freq: control rate (Hz): env steps per simulated second; must divide ``pyb_freq``.
        pyb_freq: physics rate (Hz).
        episode_seconds: time limit (s) after which the episode is truncated.
        render_mode: ``None`` or ``"rgb_array"`` (chase-camera frames from :meth:`render`).
        params: airframe constants (default: Crazyflie 2.x), a
            :class:`envs.params.QuadrotorParams` or a dict of its fields (unknown keys are a
            ValueError).
        disturbances: :class:`envs.disturbances.Disturbances` (or a dict of its fields): fixed
            stress levels or per-episode ranges. A ``ctrl_rate`` in it replaces ``ctrl_freq``
            and raises ``pyb_freq`` to the smallest multiple of it that is >= ``pyb_freq``.
            Kept as :attr:`disturbance_levels`; the values drawn for the current episode are
            :attr:`episode_disturbance`.
        camera: add a forward camera; the observation becomes a Dict ``{"state": Box,
            "image": Box(0, 255, (48, 64, 3), uint8)}`` (only tasks with ``supports_camera``).

    Every argument is checked before the PyBullet client is created (ValueError naming the
    value and what is allowed); rates may be whole-number floats (``48.0``).

    Shared behaviour of every task:
        - crashes are checked after every physics step (not only every control step); a step
          that ends in a crash stops there. A simulator state that turns NaN/inf is a crash too:
          the drone is put back to its last finite state, so observation and reward stay finite;
        - once airborne no rotor spins below the idle floor (``params.idle_rpm``);
        - until the first (latency-delayed) action arrives the rotors keep their spawn command:
          hover speed for airborne starts, stopped on the ground;
        - a ``push`` lands ``push_delay`` (0.5-2 s) after take-off, and no success counts before
          it has landed; ``info["pushed"]``/``info["push_time"]`` report it;
        - after :meth:`close`, ``reset``/``step``/``render`` raise RuntimeError; an env dropped
          without ``close`` releases its client when garbage-collected.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ}
    default_action = "ctbr"
    default_episode_seconds = 8.0
    arena_half_width = 3.0  # m: |x|, |y| beyond this is leaving the arena
    arena_height = 3.0  # m: z beyond this is leaving the arena
    goal_name = "goal"  # what the first observation block points at ("<goal_name> - position")
    task_observation: tuple[ObservationField, ...] = ()
    task_axes: tuple[str, ...] = ()  # task-specific disturbance axes this env responds to
    airborne_start = False  # start hovering (rotors at hover speed) instead of on the ground
    success_at_time_limit = False  # success is judged when time runs out (then a truncation)
    supports_camera = False

    def __init__(self, action: str | None = None, ctrl_freq: int = CONTROL_HZ,
                 pyb_freq: int = PHYSICS_HZ, episode_seconds: float | None = None,
                 render_mode: str | None = None,
                 params: QuadrotorParams | dict[str, Any] = CRAZYFLIE,
                 disturbances: Disturbances | dict[str, Any] | None = None,
                 camera: bool = False, **unknown: Any) -> None:
        # Every check comes before the PyBullet client is created.
        if unknown:
            raise ValueError(f"unknown argument(s) {sorted(unknown)} for {type(self).__name__}; "
                             f"allowed: {self.argument_names()}")
        if isinstance(params, dict):
            params = QuadrotorParams.from_dict(params)
        if not isinstance(params, QuadrotorParams):
            raise ValueError(f"params must be a QuadrotorParams or a dict of its fields, "
                             f"got {params!r}")
        if not isinstance(disturbances, Disturbances):
            disturbances = Disturbances.from_dict(disturbances)
        pyb_freq = _whole_hz("pyb_freq", pyb_freq)
        ctrl_freq = _whole_hz("ctrl_freq", ctrl_freq)
        if disturbances.ctrl_rate is not None:
            ctrl_freq = disturbances.ctrl_rate
            pyb_freq = math.ceil(pyb_freq / ctrl_freq) * ctrl_freq
        action = self.default_action if action is None else action
        if action not in ACTION_MODES:
            raise ValueError(f"unknown action mode {action!r}; allowed: {sorted(ACTION_MODES)}")
        if pyb_freq % ctrl_freq:
            raise ValueError(f"ctrl_freq={ctrl_freq!r} Hz does not divide pyb_freq={pyb_freq} Hz; "
                             f"allowed control rates: {_divisors(pyb_freq)}")
        episode_seconds = self.default_episode_seconds if episode_seconds is None else episode_seconds
        if (isinstance(episode_seconds, bool) or not isinstance(episode_seconds, (int, float))
                or not math.isfinite(episode_seconds) or episode_seconds * ctrl_freq < 1):
            raise ValueError(f"episode_seconds must be a finite number of at least one control "
                             f"step (1/{ctrl_freq} s), got {episode_seconds!r}")
        if camera and not self.supports_camera:
            raise ValueError(f"{type(self).__name__} has no camera option; camera=True is "
                             f"allowed for the Forest and Follow tasks")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"unknown render_mode {render_mode!r}; allowed: None, 'rgb_array' "
                             f"(frames from render(); the envs open no window)")

        self.render_mode = render_mode
        self.disturbance_levels = disturbances
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

        layout = self.observation_layout
        self._obs_high = np.concatenate([np.full(f.size, f.bound) for f in layout]).astype(np.float32)
        self._noise_std = np.concatenate([np.full(f.size, f.noise_std) for f in layout])
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
    def observation_layout(self) -> tuple[ObservationField, ...]:
        """The blocks of the state observation, in order (the docstring tables list them)."""
        goal = BASE_OBSERVATION[0]._replace(meaning=f"{self.goal_name} - position (world x, y, z)")
        return (goal, *BASE_OBSERVATION[1:], *self.task_observation)

    @property
    def push_pending(self) -> bool:
        """Whether this episode's push is still to come; the tasks accept no success until it
        has landed, so every successful pushed episode recovered from its push."""
        return self.episode_disturbance.push_speed > 0 and self._push_time is None

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

    def obstacles(self) -> list[tuple[float, float, float]]:
        """The episode's vertical cylinders as (x, y, radius) in m, world; none but in Forest."""
        return []

    def route(self) -> list[Position]:
        """The goals of the episode in visiting order (m, world); one for most tasks."""
        return [self.goal]

    def goal_radius(self) -> float:
        """Radius (m) around each goal of :meth:`route` within which the goal counts as reached."""
        raise NotImplementedError

    def shortest_path_length(self) -> float:
        """Length (m) of the shortest path from the start that enters, in order, the ball of
        :meth:`goal_radius` around each goal of :meth:`route` (`envs.shortest_path`): the
        L_shortest of SPL, never longer than a successful flight. Obstacles are ignored (a lower
        bound in Forest); NaN where the goal moves (no fixed path to compare with)."""
        return shortest_path_through_balls(self.start_position, self.route(), self.goal_radius())

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
        self._require_open()
        super().reset(seed=seed)
        # The disturbance draws come from their own stream, taken first, so the task layout of
        # a seed is the same at every disturbance level (paired comparisons).
        disturbance_rng = np.random.default_rng(int(self.np_random.integers(2**63)))
        episode = self.episode_disturbance = EpisodeDisturbance(
            self.disturbance_levels, disturbance_rng, self.control_dt, self.substeps)
        self.range_factor = episode.range
        airframe = self.params.scaled(episode.mass, episode.motor_index,
                                      episode.motor_efficiency, episode.motor_lag)
        if airframe != self.sim.params:
            self.sim.set_params(airframe)
        self._push_time: float | None = None
        self._push_due = math.inf  # s from the start; set at take-off
        self._took_off = False
        self._diverged = False
        self._steps = 0
        self._set_airborne(False)
        start, yaw = self._spawn(self.np_random)
        self.start_position = start
        # The spawn command: hovering for airborne starts, stopped on the ground. Rotors keep it
        # until the first (delayed) action arrives.
        spawn_rpm = self.params.hover_rpm if self.airborne_start else 0.0
        self._spawn_rpm = (spawn_rpm,) * 4
        self.sim.reset(start, yaw, rpm=spawn_rpm)
        if self.airborne_start:
            self._take_off()
        self.sim.wind = episode.wind()
        self.pid.reset()
        self.expert_pid.reset()
        self._previous_action = [0.0, 0.0, 0.0, 0.0]
        self.path_length = 0.0
        self._retarget()
        return self._observe(), self._info(success=False, crashed=False)

    def _take_off(self) -> None:
        """From now on: ground contact is a crash, rotors idle no lower than the floor, and the
        push (if any) is scheduled ``push_delay`` seconds later."""
        self._took_off = True
        self._set_airborne(True)
        if self.episode_disturbance.push_speed > 0:
            self._push_due = self._steps * self.control_dt + self.episode_disturbance.push_delay

    def _set_airborne(self, airborne: bool) -> None:
        self.sim.min_rpm = self.params.idle_rpm if airborne else 0.0
        self.pid.set_airborne(airborne)
        self.expert_pid.set_airborne(airborne)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._require_open()
        action = self._validate_action(action)
        sim, mode, episode = self.sim, self.action_mode, self.episode_disturbance
        start = sim.position
        before = sim.snapshot()
        crashed = False
        if episode.action_delay:
            for _ in range(self.substeps):
                delayed = episode.delayed_action(action)
                if delayed is None:
                    sim.step(self._spawn_rpm)
                else:
                    mode.command(delayed)
                    sim.step(mode.rpm(sim))
                if self._crashed():
                    crashed = True
                    break
        else:
            mode.command(action)
            for _ in range(self.substeps):
                sim.step(mode.rpm(sim))
                if self._crashed():
                    crashed = True
                    break
        if self._diverged:  # the physics blew up: end as a crash from the last finite state
            sim.restore(before)
        self._steps += 1
        elapsed = self._steps * self.control_dt
        if not crashed and elapsed >= self._push_due:
            sim.push(episode.push_velocity)
            self._push_time = elapsed
            self._push_due = math.inf
        sim.wind = episode.wind()
        self.path_length += math.dist(start, sim.position)

        reward, success = self._task_step()
        success = success and not crashed
        change = sum((a - b) ** 2 for a, b in zip(action, self._previous_action))
        rates = sum(w * w for w in sim.body_rates)
        reward -= ACTION_CHANGE_PENALTY * change + BODY_RATE_PENALTY * rates * self.control_dt
        if crashed:
            reward -= self._crash_penalty()
        self._previous_action = action
        at_limit = self._steps >= self.max_steps
        terminated = crashed or (success and not self.success_at_time_limit)
        truncated = not terminated and at_limit
        return (self._observe(), float(reward), terminated, truncated,
                self._info(success=success, crashed=crashed))

    def _crash_penalty(self) -> float:
        """What a crash costs (reward units)."""
        return CRASH_PENALTY

    def render(self) -> np.ndarray | None:
        """Chase-camera RGB frame [240, 320, 3] uint8 when ``render_mode="rgb_array"``."""
        self._require_open()
        if self.render_mode == "rgb_array":
            return self.sim.render_chase()
        return None

    def close(self) -> None:
        self.sim.close()

    def _require_open(self) -> None:
        if self.sim.closed:
            raise RuntimeError(f"{type(self).__name__} is closed: its PyBullet client was "
                               f"released by close(); create a new env")

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
        """Crash check after each physics step: diverged (non-finite) state, tilt beyond 80 deg,
        leaving the arena, contact with an obstacle, or ground contact after take-off."""
        sim = self.sim
        if not sim.finite():
            self._diverged = True
            return True
        x, y, z = sim.position
        if not self._took_off and z > TAKE_OFF_HEIGHT:
            self._take_off()
        if (sim.rot[8] < MAX_TILT_COS
                or max(abs(x), abs(y)) > self.arena_half_width * self.range_factor
                or z > self.arena_height * self.range_factor):
            return True
        if sim.obstacles or (self._took_off and z < GROUND_CHECK_HEIGHT):
            ground, other = sim.contacts()
            return other or (ground and self._took_off)
        return False

    def _observe(self) -> np.ndarray | dict[str, np.ndarray]:
        """What the policy sees: the state (noisy), the camera image (perturbed), both delayed."""
        episode = self.episode_disturbance
        state = episode.noisy_state(self._observation(), self._noise_std, self._obs_high)
        if self.camera is None:
            return episode.delayed_observation(state)
        image = episode.perturbed_image(self.camera.read(self.sim))
        return episode.delayed_observation({"state": state, "image": image})

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
                "dt": self.control_dt, "pushed": self._push_time is not None,
                "push_time": self._push_time,
                **self._task_info()}
