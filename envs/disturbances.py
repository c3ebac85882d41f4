"""Out-of-distribution disturbances: one typed, serialisable config applied inside the simulation.

Every axis takes either a fixed value (a stress level) or a ``(low, high)`` range drawn uniformly
once per episode (training-time domain randomisation). The nominal value of each axis means
"no disturbance". :data:`AXIS_LABELS` holds each axis's human label with its unit.

| axis        | unit | meaning                                                          | nominal |
|-------------|------|------------------------------------------------------------------|---------|
| `wind`      | m/s  | steady horizontal wind, random direction, + Dryden-like gusts (see below); acts through rotor drag and body drag against the relative airspeed | 0 |
| `mass`      | x    | payload: mass and inertia times the factor (the controller is not told) | 1 |
| `motor`     | x    | thrust efficiency of one random motor                             | 1 |
| `motor_lag` | x    | rotor time constant times the factor (nominal ``motor_tau``, envs/params.py) | 1 |
| `obs_noise` | x    | scales the per-channel noise std table of the env's observation (one unit: 1 m, 1 m/s, 1 per rotation entry (~rad), 1 rad/s, 1 m per range ray); noisy observations are clipped to the observation space | 0 |
| `latency`   | ms   | loop delay: observations late by whole control steps (up to half), actions by the rest, at physics-step resolution; rotors keep their spawn command until the first action arrives | 0 |
| `ctrl_rate` | Hz   | control rate of the env (fixed per env; the physics rate becomes the smallest multiple >= nominal) | env's own |
| `push`      | m/s  | horizontal velocity change in a random direction, 0.5-2 s after take-off (airborne starts: after the start); success counts only after it | 0 |
| `range`     | x    | goal distance multiplier (the arena grows with it)                | 1 |
| `density`   | x    | obstacle density multiplier (Forest)                              | 1 |
| `target_speed` | x | moving-target speed multiplier (Follow)                           | 1 |
| `brightness` | full scale | added to camera pixels (0-1 scale)                         | 0 |
| `contrast`  | x    | camera pixels scaled about mid-grey                               | 1 |
| `pixel_noise` | full scale | Gaussian noise std on camera pixels (0-1 scale)           | 0 |

An env responds to the axes in its ``disturbance_axes``: the first nine everywhere, ``density``
in Forest, ``target_speed`` in Follow, the last three when it has a camera.

Gusts follow the low-altitude Dryden turbulence model (MIL-HDBK-1797, as in MIL-F-8785C) with
its first-order (longitudinal) shaping filter on every component, i.e. an Ornstein-Uhlenbeck
process per world axis:

- vertical intensity ``sigma_w = gust * wind`` (``gust`` 0.1 by default: "light" turbulence,
  sigma_w = 0.1 W20); horizontal ``sigma_u = sigma_v = sigma_w / (0.177 + 0.000823 h)^0.4``;
- length scales ``L_w = h``, ``L_u = L_v = h / (0.177 + 0.000823 h)^1.2`` (h, L in feet),
  evaluated at the model's lowest height h = 10 ft (3.05 m; the drones fly at 0.5-2 m), which
  gives sigma_u = 1.96 sigma_w, L_u = 23.0 m, L_w = 3.05 m;
- correlation times ``L / wind`` (Taylor's frozen turbulence carried past the drone by the mean
  wind): at 3 m/s, 7.7 s horizontally and 1.0 s vertically.
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

COMMON_AXES = ("wind", "mass", "motor", "motor_lag", "obs_noise", "latency", "ctrl_rate", "push",
               "range")
IMAGE_AXES = ("brightness", "contrast", "pixel_noise")
AXES = (*COMMON_AXES, "density", "target_speed", *IMAGE_AXES)
AXIS_LABELS: dict[str, str] = {
    "wind": "wind speed (m/s)", "mass": "mass factor (x)", "motor": "one motor's efficiency (x)",
    "motor_lag": "motor time-constant factor (x)",
    "obs_noise": "observation noise std (m, m/s, rad)", "latency": "latency (ms)",
    "ctrl_rate": "control rate (Hz)", "push": "push (m/s)", "range": "goal distance factor (x)",
    "density": "tree density factor (x)", "target_speed": "target speed factor (x)",
    "brightness": "camera brightness offset", "contrast": "camera contrast (x)",
    "pixel_noise": "camera pixel noise std",
}
"""Human label (with unit) of each axis, for tables and plot axes."""
DEFAULT_LEVELS: dict[str, tuple[float, ...]] = {
    "wind": (0.0, 2.5, 5.0, 7.5, 10.0),
    "mass": (0.8, 1.0, 1.2, 1.4),
    "motor": (1.0, 0.9, 0.8, 0.7),
    "motor_lag": (1.0, 2.0, 3.5),
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
"""The sweep levels of each axis that a stress test uses by default."""
# (lowest allowed, highest allowed, lower bound inclusive) per randomisable axis.
_BOUNDS = {
    "wind": (0.0, 20.0, True), "mass": (0.0, 5.0, False), "motor": (0.0, 1.0, False),
    "motor_lag": (0.0, 10.0, False),
    "obs_noise": (0.0, 1.0, True), "latency": (0.0, 1000.0, True), "push": (0.0, 10.0, True),
    "range": (0.0, 10.0, False), "density": (0.0, 10.0, True),
    "target_speed": (0.0, 10.0, True), "brightness": (-1.0, 1.0, True),
    "contrast": (0.0, 10.0, True), "pixel_noise": (0.0, 1.0, True),
}
_FEET = 0.3048  # m per ft
TURBULENCE_HEIGHT_FT = 10.0  # ft, lowest height of the low-altitude Dryden model (MIL-HDBK-1797)
_DRYDEN_FACTOR = 0.177 + 0.000823 * TURBULENCE_HEIGHT_FT
HORIZONTAL_GUST_RATIO = _DRYDEN_FACTOR ** -0.4  # sigma_u / sigma_w (1.96)
VERTICAL_LENGTH_SCALE = TURBULENCE_HEIGHT_FT * _FEET  # m, L_w = h (3.05 m)
HORIZONTAL_LENGTH_SCALE = TURBULENCE_HEIGHT_FT / _DRYDEN_FACTOR**1.2 * _FEET  # m, L_u (23.0 m)
PUSH_DELAY = (0.5, 2.0)  # s after take-off (or after the start, when airborne) of the push


def _number(axis: str, value: Any) -> float:
    """A level as float; numeric strings (YAML reads ``1e3`` as text) are converted."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"disturbance {axis}={value!r}: expected a number or (low, high)")


@dataclass(frozen=True)
class Disturbances:
    """Disturbance levels (see the module table). Fields other than ``gust`` and ``ctrl_rate``
    accept a number or a ``(low, high)`` range; numeric strings such as ``"1e3"`` are read as
    numbers. ``gust`` is the vertical turbulence intensity as a fraction of the wind speed."""

    wind: Level = 0.0
    gust: float = 0.1
    mass: Level = 1.0
    motor: Level = 1.0
    motor_lag: Level = 1.0
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
                if len(value) != 2:
                    raise ValueError(f"disturbance {axis}={value!r}: a range must be (low, high) "
                                     f"with low <= high")
                values = (_number(axis, value[0]), _number(axis, value[1]))
                if values[0] > values[1]:
                    raise ValueError(f"disturbance {axis}={value!r}: a range must be (low, high) "
                                     f"with low <= high")
                object.__setattr__(self, axis, values)
            else:
                values = (_number(axis, value),)
                object.__setattr__(self, axis, values[0])
            for v in values:
                if not (low <= v <= high if inclusive else low < v <= high):
                    bracket = "[" if inclusive else "("
                    raise ValueError(f"disturbance {axis}={value!r} out of range: allowed "
                                     f"{bracket}{low}, {high}]")
        gust = _number("gust", self.gust)
        if not 0.0 <= gust <= 2.0:
            raise ValueError(f"disturbance gust={self.gust!r} out of range: allowed [0, 2]")
        object.__setattr__(self, "gust", gust)
        rate = self.ctrl_rate
        if isinstance(rate, str):
            try:
                rate = float(rate)
            except ValueError:
                pass
        if isinstance(rate, float) and rate.is_integer():
            rate = int(rate)
        if rate is not None and (not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0):
            raise ValueError(f"disturbance ctrl_rate={self.ctrl_rate!r}: expected a positive "
                             f"integer (Hz) or None")
        object.__setattr__(self, "ctrl_rate", rate)

    # --- serialisation -----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> Disturbances:
        """Build from a plain dict (YAML/JSON); an unknown axis is a ValueError naming it."""
        values = dict(values or {})
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise ValueError(f"unknown disturbance axis {unknown}; allowed: {allowed}")
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
    """

    def __init__(self, config: Disturbances, rng: np.random.Generator, control_dt: float,
                 substeps: int) -> None:
        self.rng = rng
        self.control_dt = control_dt
        speed = _draw(rng, config.wind)
        direction = rng.uniform(-math.pi, math.pi)
        self.steady_wind = (speed * math.cos(direction), speed * math.sin(direction), 0.0)
        vertical_std = config.gust * speed
        self.gust_std = (HORIZONTAL_GUST_RATIO * vertical_std,) * 2 + (vertical_std,)
        self.gust_time = ((HORIZONTAL_LENGTH_SCALE / speed,) * 2 + (VERTICAL_LENGTH_SCALE / speed,)
                          if speed > 0 else (math.inf,) * 3)  # s, correlation times
        self._gust_decay = tuple(math.exp(-control_dt / t) for t in self.gust_time)
        self._gust_spread = tuple(s * math.sqrt(1.0 - d * d)
                                  for s, d in zip(self.gust_std, self._gust_decay))
        # Start the gusts in their stationary distribution, so every step of the episode is alike.
        self.gust = [s * n for s, n in zip(self.gust_std, rng.standard_normal(3))]
        self.mass = _draw(rng, config.mass)
        self.motor_index = int(rng.integers(4))
        self.motor_efficiency = _draw(rng, config.motor)
        self.motor_lag = _draw(rng, config.motor_lag)
        self.obs_noise = _draw(rng, config.obs_noise)
        self.range = _draw(rng, config.range)
        self.density = _draw(rng, config.density)
        self.target_speed = _draw(rng, config.target_speed)
        self.brightness = _draw(rng, config.brightness)
        self.contrast = _draw(rng, config.contrast)
        self.pixel_noise = _draw(rng, config.pixel_noise)
        self.push_speed = _draw(rng, config.push)
        angle = rng.uniform(-math.pi, math.pi)
        self.push_velocity = (self.push_speed * math.cos(angle),
                              self.push_speed * math.sin(angle), 0.0)
        self.push_delay = float(rng.uniform(*PUSH_DELAY))  # s after take-off
        latency_steps = _draw(rng, config.latency) / 1000.0 / (control_dt / substeps)
        total = round(latency_steps)  # physics steps
        self.observation_delay = (total // 2) // substeps  # control steps
        self.action_delay = total - self.observation_delay * substeps  # physics steps
        self._observations: deque[Any] = deque()
        self._actions: deque[list[float] | None] = deque()

    def wind(self) -> tuple[float, float, float]:
        """Advance the gusts by one control step; the wind velocity (m/s, world) for it."""
        if self.gust_std[2] == 0:
            return self.steady_wind
        noise = self.rng.standard_normal(3)
        self.gust = [d * g + s * n for d, g, s, n in
                     zip(self._gust_decay, self.gust, self._gust_spread, noise)]
        return tuple(s + g for s, g in zip(self.steady_wind, self.gust))

    def delayed_action(self, action: list[float]) -> list[float] | None:
        """The action to apply at this physics step, ``action_delay`` physics steps late;
        ``None`` while the first action of the episode is still on its way (the env then keeps
        the rotors at their spawn command)."""
        if not self._actions:
            self._actions.extend([None] * self.action_delay)
        self._actions.append(action)
        return self._actions.popleft()

    def noisy_state(self, state: np.ndarray, noise_std: np.ndarray,
                    bound: np.ndarray) -> np.ndarray:
        """``state`` plus Gaussian noise of std ``obs_noise * noise_std`` (per entry, in the
        entry's unit), clipped to ``[-bound, bound]``."""
        if self.obs_noise == 0:
            return state
        noise = self.rng.standard_normal(state.shape[0]) * (self.obs_noise * noise_std)
        state = state + noise.astype(np.float32)
        return np.clip(state, -bound, bound, out=state)

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
