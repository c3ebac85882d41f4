"""Out-of-distribution disturbances: one typed, serialisable config applied inside the simulation.

Every axis takes either a fixed value (a stress level) or a ``(low, high)`` range drawn uniformly
once per episode (training-time domain randomisation). The nominal value of each axis means
"no disturbance".

| axis        | unit | meaning                                                          | nominal |
|-------------|------|------------------------------------------------------------------|---------|
| `wind`      | m/s  | steady horizontal wind, random direction, + gusts (`gust` x speed std, OU process, 1 s) | 0 |
| `mass`      | x    | payload: mass and inertia times the factor (the controller is not told) | 1 |
| `motor`     | x    | thrust efficiency of one random motor                             | 1 |
| `obs_noise` | m, m/s, rad | Gaussian noise std on every observation entry but the previous action | 0 |
| `latency`   | ms   | loop delay: observations late by whole control steps (up to half), actions by the rest, at physics-step resolution | 0 |
| `ctrl_rate` | Hz   | control rate of the env (fixed per env; the physics rate becomes the smallest multiple >= nominal) | env's own |
| `push`      | m/s  | horizontal velocity change in a random direction at a random time in 25-50 % of the episode | 0 |
| `range`     | x    | goal distance multiplier (the arena grows with it)                | 1 |
| `density`   | x    | obstacle density multiplier (Forest)                              | 1 |
| `target_speed` | x | moving-target speed multiplier (Follow)                           | 1 |
| `brightness` | full scale | added to camera pixels (0-1 scale)                         | 0 |
| `contrast`  | x    | camera pixels scaled about mid-grey                               | 1 |
| `pixel_noise` | full scale | Gaussian noise std on camera pixels (0-1 scale)           | 0 |

An env responds to the axes in its ``disturbance_axes``: the first eight everywhere, ``density``
in Forest, ``target_speed`` in Follow, the last three when it has a camera.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

Level = float | tuple[float, float]

COMMON_AXES = ("wind", "mass", "motor", "obs_noise", "latency", "ctrl_rate", "push", "range")
IMAGE_AXES = ("brightness", "contrast", "pixel_noise")
AXES = (*COMMON_AXES, "density", "target_speed", *IMAGE_AXES)
DEFAULT_LEVELS: dict[str, tuple[float, ...]] = {
    "wind": (0.0, 1.0, 2.0, 3.0, 4.0),
    "mass": (0.8, 1.0, 1.2, 1.4),
    "motor": (1.0, 0.9, 0.8, 0.7),
    "obs_noise": (0.0, 0.02, 0.05, 0.1),
    "latency": (0.0, 20.0, 40.0, 80.0),
    "ctrl_rate": (24, 48, 96),
    "push": (0.0, 0.5, 1.0),
    "range": (1.0, 1.5, 2.0, 3.0),
    "density": (1.0, 1.5, 2.0, 2.5),
    "target_speed": (1.0, 1.5, 2.0, 3.0),
    "brightness": (0.0, -0.3, 0.15, 0.3),
    "contrast": (1.0, 0.7, 0.5, 1.5),
    "pixel_noise": (0.0, 0.02, 0.05, 0.1),
}
# (lowest allowed, highest allowed, lower bound inclusive) per randomisable axis.
_BOUNDS = {
    "wind": (0.0, 20.0, True), "mass": (0.0, 5.0, False), "motor": (0.0, 1.0, False),
    "obs_noise": (0.0, 1.0, True), "latency": (0.0, 1000.0, True), "push": (0.0, 10.0, True),
    "range": (0.0, 10.0, False), "density": (0.0, 10.0, True),
    "target_speed": (0.0, 10.0, True), "brightness": (-1.0, 1.0, True),
    "contrast": (0.0, 10.0, True), "pixel_noise": (0.0, 1.0, True),
}
#: Axis name -> the label of its level on a plot or in a report (quantity and unit).
AXIS_LABELS = {
    "wind": "wind speed (m/s)", "mass": "mass factor (x)", "motor": "one motor's efficiency (x)",
    "obs_noise": "observation noise std (m, m/s, rad)", "latency": "latency (ms)",
    "ctrl_rate": "control rate (Hz)", "push": "push (m/s)", "range": "goal distance factor (x)",
    "density": "tree density factor (x)", "target_speed": "target speed factor (x)",
    "brightness": "camera brightness offset", "contrast": "camera contrast (x)",
    "pixel_noise": "camera pixel noise std",
}
GUST_TIME_CONSTANT = 1.0  # s, correlation time of the gust process
PUSH_WINDOW = (0.25, 0.5)  # fraction of the episode time limit in which the push happens


@dataclass(frozen=True)
class Disturbances:
    """Disturbance levels (see the module table). Fields other than ``gust`` and ``ctrl_rate``
    accept a number or a ``(low, high)`` range."""

    wind: Level = 0.0
    gust: float = 0.25
    mass: Level = 1.0
    motor: Level = 1.0
    obs_noise: Level = 0.0
    latency: Level = 0.0
    ctrl_rate: int | None = None
    push: Level = 0.0
    range: Level = 1.0
    density: Level = 1.0
    target_speed: Level = 1.0
    brightness: Level = 0.0
    contrast: Level = 1.0
    pixel_noise: Level = 0.0

    def __post_init__(self) -> None:
        for axis, (low, high, inclusive) in _BOUNDS.items():
            value = getattr(self, axis)
            if isinstance(value, (list, tuple)):
                if len(value) != 2 or value[0] > value[1]:
                    raise ValueError(f"disturbance {axis}={value!r}: a range must be (low, high) "
                                     f"with low <= high")
                object.__setattr__(self, axis, (float(value[0]), float(value[1])))
                values = value
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                object.__setattr__(self, axis, float(value))
                values = (value,)
            else:
                raise ValueError(f"disturbance {axis}={value!r}: expected a number or (low, high)")
            for v in values:
                if not (low <= v <= high if inclusive else low < v <= high):
                    bracket = "[" if inclusive else "("
                    raise ValueError(f"disturbance {axis}={value!r} out of range: allowed "
                                     f"{bracket}{low}, {high}]")
        if not 0.0 <= self.gust <= 2.0:
            raise ValueError(f"disturbance gust={self.gust!r} out of range: allowed [0, 2]")
        if self.ctrl_rate is not None and (not isinstance(self.ctrl_rate, int)
                                           or isinstance(self.ctrl_rate, bool)
                                           or self.ctrl_rate <= 0):
            raise ValueError(f"disturbance ctrl_rate={self.ctrl_rate!r}: expected a positive "
                             f"integer (Hz) or None")

    # --- serialisation -----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> Disturbances:
        """Build from a plain dict (YAML/JSON); an unknown axis is a ValueError naming it."""
        values = dict(values or {})
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise ValueError(f"unknown disturbance axis {unknown}; allowed: {allowed}")
        if isinstance(values.get("ctrl_rate"), float) and values["ctrl_rate"].is_integer():
            values["ctrl_rate"] = int(values["ctrl_rate"])
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    @classmethod
    def parse(cls, assignments: Iterable[str]) -> Disturbances:
        """Build from CLI strings ``axis=value`` or ``axis=low:high`` (e.g. ``wind=3``)."""
        values: dict[str, Any] = {}
        for text in assignments:
            axis, sep, raw = text.partition("=")
            if not sep:
                raise ValueError(f"disturbance {text!r}: expected axis=value, axes: {AXES}")
            try:
                parts = [float(x) for x in raw.split(":")]
            except ValueError:
                raise ValueError(f"disturbance {text!r}: value must be a number or low:high")
            values[axis.strip()] = parts[0] if len(parts) == 1 else tuple(parts)
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (ranges as lists), inverse of :meth:`from_dict`."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def level(cls, axis: str, value: float) -> Disturbances:
        """Nominal everywhere except ``axis`` fixed at ``value`` (one stress level)."""
        if axis not in AXES:
            raise ValueError(f"unknown disturbance axis {axis!r}; allowed: {AXES}")
        if axis == "ctrl_rate":
            return cls(ctrl_rate=int(value))
        return cls(**{axis: value})


def _draw(rng: np.random.Generator, level: Level) -> float:
    if isinstance(level, tuple):
        return float(rng.uniform(level[0], level[1]))
    return level


class EpisodeDisturbance:
    """The disturbances of one episode: values drawn at reset, per-step state (gusts, delays).

    Args:
        config: the levels or ranges.
        rng: generator for this episode's draws and noise (the env derives it from its seed).
        control_dt: env step duration (s); substeps: physics steps per env step.
        episode_seconds: time limit (s), for the push time.
    """

    def __init__(self, config: Disturbances, rng: np.random.Generator, control_dt: float,
                 substeps: int, episode_seconds: float) -> None:
        self.rng = rng
        self.control_dt = control_dt
        speed = _draw(rng, config.wind)
        direction = rng.uniform(-math.pi, math.pi)
        self.steady_wind = (speed * math.cos(direction), speed * math.sin(direction), 0.0)
        self.gust_std = config.gust * speed
        self.gust = [0.0, 0.0, 0.0]
        self.mass = _draw(rng, config.mass)
        self.motor_index = int(rng.integers(4))
        self.motor_efficiency = _draw(rng, config.motor)
        self.obs_noise = _draw(rng, config.obs_noise)
        self.range = _draw(rng, config.range)
        self.density = _draw(rng, config.density)
        self.target_speed = _draw(rng, config.target_speed)
        self.brightness = _draw(rng, config.brightness)
        self.contrast = _draw(rng, config.contrast)
        self.pixel_noise = _draw(rng, config.pixel_noise)
        push = _draw(rng, config.push)
        angle = rng.uniform(-math.pi, math.pi)
        self.push_velocity = (push * math.cos(angle), push * math.sin(angle), 0.0)
        self.push_time = rng.uniform(*PUSH_WINDOW) * episode_seconds if push > 0 else math.inf
        latency_steps = _draw(rng, config.latency) / 1000.0 / (control_dt / substeps)
        total = round(latency_steps)  # physics steps
        self.observation_delay = (total // 2) // substeps  # control steps
        self.action_delay = total - self.observation_delay * substeps  # physics steps
        self._observations: deque[Any] = deque()
        self._actions: deque[list[float] | None] = deque()

    @property
    def changes_airframe(self) -> bool:
        return self.mass != 1.0 or self.motor_efficiency != 1.0

    def wind(self) -> tuple[float, float, float]:
        """Advance the gusts by one control step; the wind velocity (m/s, world) for it."""
        if self.gust_std == 0:
            return self.steady_wind
        decay = math.exp(-self.control_dt / GUST_TIME_CONSTANT)
        spread = self.gust_std * math.sqrt(1.0 - decay * decay)
        noise = self.rng.standard_normal(3)
        self.gust = [decay * g + spread * n for g, n in zip(self.gust, noise)]
        return tuple(s + g for s, g in zip(self.steady_wind, self.gust))

    def delayed_action(self, action: list[float]) -> list[float] | None:
        """The action to apply at this physics step, ``action_delay`` physics steps late;
        ``None`` while the first action of the episode is still on its way (rotors idle)."""
        if not self._actions:
            self._actions.extend([None] * self.action_delay)
        self._actions.append(action)
        return self._actions.popleft()

    def noisy_state(self, state: np.ndarray, noisy_entries: np.ndarray) -> np.ndarray:
        """``state`` with Gaussian noise of std ``obs_noise`` on the ``noisy_entries``."""
        if self.obs_noise == 0:
            return state
        noise = self.rng.normal(0.0, self.obs_noise, size=int(noisy_entries.sum()))
        state = state.copy()
        state[noisy_entries] += noise.astype(np.float32)
        return state

    def perturbed_image(self, image: np.ndarray) -> np.ndarray:
        """Camera ``image`` [H, W, 3] uint8 with contrast, brightness and pixel noise applied."""
        if self.contrast == 1 and self.brightness == 0 and self.pixel_noise == 0:
            return image
        pixels = (image.astype(np.float32) / 255.0 - 0.5) * self.contrast + 0.5 + self.brightness
        if self.pixel_noise > 0:
            pixels += self.rng.normal(0.0, self.pixel_noise, size=pixels.shape).astype(np.float32)
        return (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    def delayed_observation(self, observation: Any) -> Any:
        """The observation ``observation_delay`` control steps late (the first one repeated)."""
        if not self.observation_delay:
            return observation
        if not self._observations:  # distinct copies: a returned observation is never reused
            self._observations.extend(copy.deepcopy(observation)
                                      for _ in range(self.observation_delay))
        self._observations.append(observation)
        return self._observations.popleft()
