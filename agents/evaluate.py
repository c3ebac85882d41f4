"""`liquid-drones evaluate`: fly closed-loop episodes with a trained run or the PID expert.

Who flies is an `AgentSpec`: a run folder written by ``liquid-drones train`` (`load_run`: its
config.yaml, model.zip and vecnormalize.pkl, carried as bytes so a worker on another machine
needs no shared filesystem) or the env's cascaded-PID expert (`expert_spec`). The env is the
run's own (id and constructor kwargs) with the evaluation's disturbances in place of any
training-time randomisation (default: none, i.e. the nominal world).

`fly` runs episodes, one per seed, in ``batch`` envs stepped in lock step so the policy acts on
the whole batch at once. The policy input always has ``batch`` rows (idle rows are padding), so an
episode's actions depend only on its own observations: every episode is a function of its seed,
whatever else runs beside it, in any worker, on any backend. Recurrent state is carried from step
to step and reset (``episode_start``) where an env begins a new episode. Actions are the policy's
mean unless ``deterministic=False``.

`evaluate` splits the seeds into jobs for `agents.parallel` and writes to its output folder:

- ``episodes.csv``: one row per episode (`agents.metrics.EpisodeResult`), written as jobs finish;
- ``metrics.json``: the `agents.metrics.Summary` and the settings that produced it;
- ``trajectories.csv`` + ``trajectories.png``: the flight paths of the first episodes (top view
  and height over time, coloured by outcome, goals marked);
- with ``video``: ``episodes.mp4`` (or ``.gif`` without imageio-ffmpeg) of the first episodes.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np

from agents.metrics import EPISODE_COLUMNS, EpisodeResult, Summary, action_smoothness
from agents.parallel import RowLog, default_workers, describe, run_jobs

EXPERT = "expert"
DEFAULT_EPISODES = 50
# Episode seeds start here: disjoint from the seeds of training envs (train.seed + rank) and of
# training-time evaluation (train.seed + 10_000 + rank).
DEFAULT_SEED = 100_000
DEFAULT_BATCH = 8  # envs stepped together; the policy input always has this many rows
TRACE_EPISODES = 10  # episodes drawn in trajectories.png
VIDEO_EPISODES = 3
OUTCOME_COLOURS = {"success": "tab:green", "crash": "tab:red", "timeout": "tab:orange", "error": "black"}

Position = tuple[float, float, float]


class RunError(ValueError):
    """A path given as a run folder is not one; the message says what is missing."""


@dataclass(frozen=True)
class AgentSpec:
    """Who flies (a run's policy or the PID expert) and in which env; picklable.

    ``env_kwargs`` are the env constructor arguments without ``disturbances``; ``control_hz`` is
    the control rate the agent was trained at (the nominal level of the ``ctrl_rate`` axis).
    """

    name: str
    env_id: str
    env_kwargs: dict[str, Any]
    control_hz: int
    time_input: bool = False
    run_dir: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    model: bytes | None = field(default=None, repr=False)
    vecnormalize: bytes | None = field(default=None, repr=False)

    @property
    def is_expert(self) -> bool:
        return self.model is None

    @property
    def key(self) -> str:
        """Identity of the agent for caching a loaded policy in a worker."""
        digest = hashlib.sha1(self.model or b"").hexdigest()[:16]
        return f"{self.name}:{digest}"


def _control_hz(env_kwargs: dict[str, Any]) -> int:
    from envs.params import CONTROL_HZ

    rate = (env_kwargs.get("disturbances") or {}).get("ctrl_rate")
    return int(rate if isinstance(rate, (int, float)) else env_kwargs.get("ctrl_freq", CONTROL_HZ))


def _without_disturbances(env_kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in env_kwargs.items() if k != "disturbances"}


def load_run(run_dir: str | Path, name: str | None = None) -> AgentSpec:
    """The policy of a finished training run (config.yaml, model.zip, vecnormalize.pkl).

    :raise RunError: if ``run_dir`` is missing or is not a finished run folder
    """
    from agents.config import ConfigError, read_run_config
    from agents.train import uses_time_input

    path = Path(run_dir)
    if not path.is_dir():
        raise RunError(f"run folder {str(run_dir)!r} not found (expected a folder written by "
                       f"`liquid-drones train`, e.g. runs/<name>)")
    try:
        config = read_run_config(path / "config.yaml")
    except ConfigError as error:
        raise RunError(f"{path} is not a run folder: {error}") from None
    model = path / "model.zip"
    if not model.is_file():
        raise RunError(f"{path} has no model.zip: training has not finished (a checkpoint under "
                       f"{path / 'checkpoints'} can be resumed with `liquid-drones train --resume {path}`)")
    normalizer = path / "vecnormalize.pkl"
    if config.env.normalize_obs and not normalizer.is_file():
        raise RunError(f"{path} has no vecnormalize.pkl, but its config normalises observations")
    return AgentSpec(
        name=name or path.name,
        env_id=config.env.id,
        env_kwargs=_without_disturbances(config.env.kwargs),
        control_hz=_control_hz(config.env.kwargs),
        time_input=uses_time_input(config),
        run_dir=str(path.resolve()),
        config=config.to_dict(),
        model=model.read_bytes(),
        vecnormalize=normalizer.read_bytes() if config.env.normalize_obs else None,
    )


def expert_spec(env_id: str, env_kwargs: dict[str, Any] | None = None, name: str = EXPERT) -> AgentSpec:
    """The env's cascaded-PID expert (``env.unwrapped.expert_action()``) as an agent.

    The expert reads the true simulator state: observation noise and observation latency do not
    reach it (action latency and every physical disturbance do).
    """
    import envs

    if env_id not in envs.ENV_IDS:
        raise ValueError(f"unknown env {env_id!r}; allowed: {', '.join(envs.ENV_IDS)}")
    kwargs = dict(env_kwargs or {})
    return AgentSpec(name=name, env_id=env_id, env_kwargs=_without_disturbances(kwargs),
                     control_hz=_control_hz(kwargs))


# --- pilots: turn a batch of observations into a batch of actions ----------------------------
class _PolicyPilot:
    """A trained SB3 model with its observation normalisation; keeps the recurrent state."""

    def __init__(self, spec: AgentSpec) -> None:
        from agents.config import config_from_dict
        from agents.train import algorithm_class

        config = config_from_dict(spec.config)
        self.model = algorithm_class(config).load(io.BytesIO(spec.model), device="cpu")
        self.normalizer = pickle.loads(spec.vecnormalize) if spec.vecnormalize else None
        if self.normalizer is not None:
            self.normalizer.training = False
        self.state: Any = None

    def begin(self) -> None:
        self.state = None

    def act(self, obs: np.ndarray, starts: np.ndarray, flying: Sequence[gym.Env | None],
            deterministic: bool) -> np.ndarray:
        """Actions [batch, 4] for observations [batch, ...]; ``starts`` marks first steps of
        episodes; ``flying`` holds each row's env (None for padding rows)."""
        if self.normalizer is not None:
            obs = self.normalizer.normalize_obs(obs)
        actions, self.state = self.model.predict(obs, state=self.state, episode_start=starts,
                                                 deterministic=deterministic)
        return actions


class _ExpertPilot:
    """The env's own cascaded PID, reading the true state (observations are ignored)."""

    def begin(self) -> None:
        pass

    def act(self, obs: Any, starts: np.ndarray, flying: Sequence[gym.Env | None],
            deterministic: bool) -> np.ndarray:
        actions = np.zeros((len(flying), 4), dtype=np.float32)
        for i, env in enumerate(flying):
            if env is not None:
                actions[i] = env.unwrapped.expert_action()
        return actions


_PILOTS: dict[str, Any] = {}  # per process: a worker loads each run's model once


def pilot_for(spec: AgentSpec) -> Any:
    if spec.key not in _PILOTS:
        _PILOTS[spec.key] = _ExpertPilot() if spec.is_expert else _PolicyPilot(spec)
    return _PILOTS[spec.key]


# --- flying episodes -------------------------------------------------------------------------
def make_env(spec: AgentSpec, disturbances: dict[str, Any] | None = None,
             render: bool = False) -> gym.Env:
    """The agent's env with ``disturbances`` (dict of `envs.disturbances.Disturbances` fields)."""
    import envs  # noqa: F401  (registers the ids in a fresh worker)
    from envs.wrappers import AppendStepDuration

    env = gym.make(spec.env_id, **spec.env_kwargs, disturbances=dict(disturbances or {}),
                   render_mode="rgb_array" if render else None, disable_env_checker=True)
    return AppendStepDuration(env) if spec.time_input else env


def task_points(env: gym.Env) -> list[Position]:
    """The goals of the episode in visiting order (m)."""
    return [tuple(p) for p in env.unwrapped.route()]


def env_axes(spec: AgentSpec) -> tuple[str, ...]:
    """The disturbance axes the agent's env responds to."""
    env = make_env(spec)
    try:
        return tuple(env.unwrapped.disturbance_axes)
    finally:
        env.close()


def check_disturbances(spec: AgentSpec, disturbances: dict[str, Any]) -> None:
    """Fail early on an axis the agent's env does not respond to."""
    axes = env_axes(spec)
    ignored = [axis for axis in disturbances if axis not in axes and axis != "gust"]
    if ignored:
        raise ValueError(f"{spec.env_id} does not respond to disturbance {', '.join(ignored)}; "
                         f"allowed: {', '.join(axes)}")


@dataclass
class Flight:
    """One flown episode: its result and, when recorded, its path and frames."""

    result: EpisodeResult
    goals: list[Position] = field(default_factory=list)
    positions: np.ndarray | None = None  # [steps + 1, 3] m, world
    frames: list[np.ndarray] | None = None

    @property
    def outcome(self) -> str:
        r = self.result
        return "error" if r.error else "success" if r.success else "crash" if r.crashed else "timeout"


class _InFlight:
    """Book-keeping of the episode an env slot is flying."""

    def __init__(self, index: int, seed: int, env: gym.Env, trace: bool, record: bool) -> None:
        self.index, self.seed = index, seed
        self.goals = task_points(env)
        start = tuple(env.unwrapped.sim.position)
        self.shortest = env.unwrapped.shortest_path_length()
        self.actions: list[np.ndarray] = []
        self.reward = 0.0
        self.time_s = 0.0
        self.positions = [start] if trace else None
        self.frames = [env.render()] if record else None

    def step(self, env: gym.Env, action: np.ndarray, reward: float, info: dict[str, Any]) -> None:
        self.actions.append(np.clip(action, -1.0, 1.0))
        self.reward += reward
        self.time_s += info["dt"]
        if self.positions is not None:
            self.positions.append(tuple(env.unwrapped.sim.position))
        if self.frames is not None:
            self.frames.append(env.render())

    def finish(self, info: dict[str, Any], terminated: bool, truncated: bool) -> Flight:
        success = bool(info["is_success"])
        result = EpisodeResult(
            seed=self.seed, success=success, crashed=bool(info["crashed"]) and not success,
            timeout=truncated and not terminated, steps=len(self.actions), time_s=self.time_s,
            path_length_m=float(info["path_length"]), shortest_path_m=self.shortest,
            final_distance_m=float(info["distance_to_goal"]),
            action_smoothness=action_smoothness(np.array(self.actions)), reward=self.reward)
        positions = None if self.positions is None else np.array(self.positions)
        return Flight(result, self.goals, positions, self.frames)


def fly(
    spec: AgentSpec,
    seeds: Sequence[int],
    disturbances: dict[str, Any] | None = None,
    batch: int = DEFAULT_BATCH,
    deterministic: bool = True,
    trace: int = 0,
    video: int = 0,
    pilot: Any = None,
) -> list[Flight]:
    """Fly one episode per seed; return them in the order of ``seeds``.

    An episode whose env or policy raises is recorded as an error (`EpisodeResult.failed`) and
    the others go on. ``trace``/``video``: record the path / rendered frames of the first that
    many seeds. ``pilot`` replaces the agent's own (tests inject faults with it).
    """
    import torch as th

    seeds = list(seeds)
    if not seeds:
        return []
    pilot = pilot or pilot_for(spec)
    pilot.begin()
    if not deterministic:
        th.manual_seed(seeds[0])  # sampled actions: reproducible for the same job
    render = video > 0
    envs: list[gym.Env | None] = [make_env(spec, disturbances, render)
                                  for _ in range(min(batch, len(seeds)))]
    envs += [None] * (batch - len(envs))
    obs = _batch_buffer(envs[0].observation_space, batch)
    starts = np.ones(batch, dtype=bool)
    slots: list[_InFlight | None] = [None] * batch
    flights: list[Flight | None] = [None] * len(seeds)
    queue = deque(enumerate(seeds))

    def fail(slot: int, error: BaseException) -> None:
        episode = slots[slot]
        flights[episode.index] = Flight(EpisodeResult.failed(episode.seed, describe(error)), episode.goals)
        slots[slot] = None

    def start_next(slot: int) -> None:
        """Reset the slot's env with the next seed (an env that fails to reset is an error)."""
        while queue and envs[slot] is not None:
            index, seed = queue.popleft()
            try:
                first, _ = envs[slot].reset(seed=seed)
                _store(obs, slot, first)
                slots[slot] = _InFlight(index, seed, envs[slot], index < trace, index < video)
            except Exception as error:
                flights[index] = Flight(EpisodeResult.failed(seed, describe(error)))
                continue
            starts[slot] = True
            return
        _store(obs, slot, None)
        starts[slot] = True

    def renew(slot: int) -> None:
        """Replace an env whose step raised (its simulator state is no longer trustworthy); a
        slot whose env cannot be rebuilt is retired."""
        envs[slot].close()
        try:
            envs[slot] = make_env(spec, disturbances, render)
        except Exception:
            envs[slot] = None

    try:
        for slot in range(batch):
            start_next(slot)
        while any(slots):
            active = [env if slots[i] else None for i, env in enumerate(envs)]
            try:
                actions = np.asarray(pilot.act(obs, starts, active, deterministic))
            except Exception as error:
                for slot in range(batch):
                    if slots[slot]:
                        fail(slot, error)
                        start_next(slot)
                continue
            starts[:] = False
            for slot in range(batch):
                episode = slots[slot]
                if episode is None:
                    starts[slot] = True
                    continue
                try:
                    o, reward, terminated, truncated, info = envs[slot].step(actions[slot])
                    episode.step(envs[slot], actions[slot], float(reward), info)
                except Exception as error:
                    fail(slot, error)
                    renew(slot)
                    start_next(slot)
                    continue
                if terminated or truncated:
                    flights[episode.index] = episode.finish(info, terminated, truncated)
                    slots[slot] = None
                    start_next(slot)
                else:
                    _store(obs, slot, o)
    finally:
        for env in envs:
            if env is not None:
                env.close()
    for index, seed in queue:  # only if every env had to be retired
        flights[index] = Flight(EpisodeResult.failed(seed, "no working env left in this job"))
    return flights  # type: ignore[return-value]


def _batch_buffer(space: gym.Space, batch: int) -> np.ndarray | dict[str, np.ndarray]:
    """Zeros for ``batch`` observations of ``space`` (a Box, or a Dict of Boxes: camera envs)."""
    if isinstance(space, gym.spaces.Dict):
        return {key: np.zeros((batch, *sub.shape), sub.dtype) for key, sub in space.spaces.items()}
    return np.zeros((batch, *space.shape), space.dtype)


def _store(buffer: np.ndarray | dict[str, np.ndarray], slot: int, obs: Any) -> None:
    """Put one env's observation (None: padding zeros) into row ``slot`` of the batch."""
    parts = buffer.items() if isinstance(buffer, dict) else [(None, buffer)]
    for key, rows in parts:
        rows[slot] = 0 if obs is None else (obs if key is None else obs[key])


# --- jobs for agents.parallel ----------------------------------------------------------------
@dataclass(frozen=True)
class FlightJob:
    """Episodes of one agent at one disturbance setting; ``tag`` prefixes every result row."""

    spec: AgentSpec
    seeds: tuple[int, ...]
    disturbances: dict[str, Any] = field(default_factory=dict)
    batch: int = DEFAULT_BATCH
    deterministic: bool = True
    tag: dict[str, Any] = field(default_factory=dict)


def fly_job(job: FlightJob) -> list[dict[str, Any]]:
    """Rows (``tag`` + episode fields) of a job's episodes; runs in a worker."""
    flights = fly(job.spec, job.seeds, job.disturbances, job.batch, job.deterministic)
    return [{**job.tag, **flight.result.to_row()} for flight in flights]


def error_rows(job: FlightJob, error: str) -> list[dict[str, Any]]:
    """The rows of a job that failed as a whole: every episode an error with its text."""
    return [{**job.tag, **EpisodeResult.failed(seed, error).to_row()} for seed in job.seeds]


def split(seeds: Sequence[int], parts: int) -> list[tuple[int, ...]]:
    """``seeds`` in ``parts`` contiguous chunks of near-equal size (none empty)."""
    parts = max(1, min(parts, len(seeds)))
    bounds = np.linspace(0, len(seeds), parts + 1).round().astype(int)
    return [tuple(seeds[a:b]) for a, b in zip(bounds, bounds[1:])]


def run_flight_jobs(jobs: Sequence[FlightJob], log: RowLog, backend: str, workers: int | None,
                    address: str | None, desc: str) -> None:
    """Run ``jobs`` with `agents.parallel.run_jobs`, appending each job's rows to ``log`` at once."""
    run_jobs(fly_job, jobs,
             on_result=lambda job, rows: log.write(rows),
             on_error=lambda job, error: log.write(error_rows(job, error)),
             backend=backend, workers=workers, address=address,
             size=lambda job: len(job.seeds), desc=desc, unit="episode")


# --- the evaluate verb -----------------------------------------------------------------------
def evaluate(
    spec: AgentSpec,
    out_dir: Path,
    episodes: int = DEFAULT_EPISODES,
    seed: int = DEFAULT_SEED,
    disturbances: dict[str, Any] | None = None,
    deterministic: bool = True,
    batch: int = DEFAULT_BATCH,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    video: int = 0,
    trace: int = TRACE_EPISODES,
    log: Callable[[str], None] = print,
) -> Summary:
    """Fly ``episodes`` episodes (seeds ``seed, seed + 1, ...``) and write the evaluation files."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    from agents.checkpoint import atomic_write

    out_dir.mkdir(parents=True, exist_ok=True)
    disturbances = dict(disturbances or {})
    seeds = list(range(seed, seed + episodes))
    workers = workers or default_workers()
    if workers == 1 and backend == "local":
        backend = "serial"
    jobs = [FlightJob(spec, chunk, disturbances, batch, deterministic)
            for chunk in split(seeds, 2 * workers if backend != "serial" else 1)]
    csv_path = out_dir / "episodes.csv"
    run_flight_jobs(jobs, RowLog(csv_path, EPISODE_COLUMNS), backend, workers, address,
                    desc=f"evaluate {spec.name}")
    results = sorted((EpisodeResult.from_row(row) for row in RowLog.read(csv_path)), key=lambda r: r.seed)
    rows = [r.to_row() for r in results]
    sorted_log = RowLog(csv_path.with_suffix(".csv.tmp"), EPISODE_COLUMNS)
    sorted_log.write(rows)
    sorted_log.path.replace(csv_path)

    summary = Summary.of(results)
    metrics = {
        "agent": spec.name, "run_dir": spec.run_dir, "env": spec.env_id, "env_kwargs": spec.env_kwargs,
        "disturbances": disturbances, "episodes": episodes, "seeds": [seed, seed + episodes - 1],
        "deterministic": deterministic, "batch": batch, **summary.as_dict(),
    }
    atomic_write(out_dir / "metrics.json", lambda p: p.write_text(json.dumps(metrics, indent=1, default=str)))

    shown = min(max(trace, video), episodes)
    if shown:
        flights = fly(spec, seeds[:shown], disturbances, batch, deterministic, trace=trace, video=video)
        traced = [f for f in flights if f.positions is not None]
        if traced:
            title = f"{spec.name}: {describe_setting(disturbances)}"
            write_trajectories(traced, control_rate(spec, disturbances), out_dir, title)
        recorded = [f for f in flights if f.frames]
        if recorded:
            path = write_video([frame for f in recorded for frame in f.frames], out_dir / "episodes",
                               fps=control_rate(spec, disturbances))
            log(f"video of {len(recorded)} episode(s): {path}")
    log(f"{spec.name} on {spec.env_id} ({describe_setting(disturbances)}): {summary}")
    log(f"wrote {out_dir}/episodes.csv, metrics.json" + (", trajectories.png" if shown else ""))
    return summary


def describe_setting(disturbances: dict[str, Any]) -> str:
    """``"wind=3, mass=1.2"``, or ``"nominal"`` without disturbances."""
    return ", ".join(f"{k}={v}" for k, v in disturbances.items()) or "nominal"


def control_rate(spec: AgentSpec, disturbances: dict[str, Any]) -> int:
    """Env steps per second under ``disturbances`` (the ``ctrl_rate`` axis changes it)."""
    return int(disturbances.get("ctrl_rate") or spec.control_hz)


def write_trajectories(flights: Sequence[Flight], control_hz: float, out_dir: Path, title: str) -> None:
    """trajectories.csv (episode, seed, step, x, y, z) and trajectories.png (top view, height)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from agents.checkpoint import atomic_write

    rows = [{"seed": f.result.seed, "outcome": f.outcome, "step": step, "x": x, "y": y, "z": z}
            for f in flights for step, (x, y, z) in enumerate(f.positions)]
    log = RowLog(out_dir / "trajectories.csv.tmp", ["seed", "outcome", "step", "x", "y", "z"])
    log.write(rows)
    log.path.replace(out_dir / "trajectories.csv")

    fig, (top, height) = plt.subplots(1, 2, figsize=(11, 4.6))
    for f in flights:
        colour = OUTCOME_COLOURS[f.outcome]
        p, goals = f.positions, np.array(f.goals)
        top.plot(p[:, 0], p[:, 1], color=colour, lw=1.2, alpha=0.8)
        top.plot(goals[:, 0], goals[:, 1], "x--", color=colour, ms=7, lw=0.6, alpha=0.6)
        top.plot(p[-1, 0], p[-1, 1], "o", color=colour, ms=4)
        height.plot(np.arange(len(p)) / control_hz, p[:, 2], color=colour, lw=1.2, alpha=0.8)
        height.axhline(goals[-1, 2], color=colour, ls=":", lw=0.6, alpha=0.6)
    top.plot(0, 0, "ks", ms=6)
    top.set(xlabel="x (m)", ylabel="y (m)", title="top view (x: goals, o: end, square: start)")
    top.set_aspect("equal", adjustable="datalim")
    height.set(xlabel="time (s)", ylabel="z (m)", title="height (dotted: final goal)")
    counts = {o: sum(f.outcome == o for f in flights) for o in OUTCOME_COLOURS}
    handles = [Line2D([], [], color=c, label=f"{o} ({counts[o]})") for o, c in OUTCOME_COLOURS.items() if counts[o]]
    height.legend(handles=handles, loc="lower right")
    fig.suptitle(f"{title} - first {len(flights)} episodes")
    fig.tight_layout()
    atomic_write(out_dir / "trajectories.png", lambda path: fig.savefig(path, format="png", dpi=110))
    plt.close(fig)


def write_video(frames: Sequence[np.ndarray], stem: Path, fps: int) -> Path:
    """Write ``stem.mp4`` (imageio-ffmpeg) or, without it, ``stem.gif`` at <= 25 frames/s."""
    import imageio.v2 as imageio

    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        keep = max(1, math.ceil(fps / 25))
        path = stem.with_suffix(".gif")
        imageio.mimsave(path, list(frames[::keep]), duration=1000 * keep / fps, loop=0)
        return path
    path = stem.with_suffix(".mp4")
    imageio.mimsave(path, list(frames), fps=fps)
    return path


def disturbance_dict(assignments: Sequence[str]) -> dict[str, Any]:
    """``["wind=3", "mass=0.9:1.1"]`` -> the non-nominal fields of the parsed `Disturbances`.

    :raise ValueError: naming an unknown axis or a bad value, and what is allowed
    """
    from envs.disturbances import Disturbances

    parsed, nominal = Disturbances.parse(assignments).to_dict(), Disturbances().to_dict()
    return {axis: value for axis, value in parsed.items() if value != nominal[axis]}


# --- command line ----------------------------------------------------------------------------
def resolve_env_id(name: str) -> str:
    """``Hover-v0`` or ``hover`` -> ``LiquidDrones/Hover-v0``; full ids pass through."""
    import envs

    for env_id in envs.ENV_IDS:
        short = env_id.split("/")[-1]
        if name in (env_id, short) or name.lower() == short.split("-")[0].lower():
            return env_id
    raise ValueError(f"unknown env {name!r}; allowed: {', '.join(envs.ENV_IDS)}")


def agents_from_args(run_dirs: Sequence[str], expert: bool, env: str | None,
                     action: str | None) -> list[AgentSpec]:
    """The runs (named by folder, or by path where folder names repeat) and optionally the expert,
    which flies the first run's env (or ``env`` with ``action`` when no run is given)."""
    names = [Path(d).name for d in run_dirs]
    agents = [load_run(d, name if names.count(name) == 1 else str(d).rstrip("/"))
              for d, name in zip(run_dirs, names)]
    if expert:
        if agents:
            kwargs = dict(agents[0].env_kwargs, **({"action": action} if action else {}))
            agents.append(expert_spec(agents[0].env_id, kwargs))
        else:
            agents.append(expert_spec(resolve_env_id(env or "Hover-v0"), {"action": action} if action else {}))
    elif env or action:
        raise ValueError("--env and --action choose the expert's env; they need --agent expert / --expert "
                         "(a run flies the env it was trained on)")
    return agents


def _tag(disturbances: dict[str, Any]) -> str:
    """A folder-name tag: ``wind3.0-mass1.2``, ``wind1.0to3.0`` for a range, or ``nominal``."""
    text = [f"{k}{'to'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in disturbances.items()]
    return "-".join(text) or "nominal"


def main(args: Any) -> None:
    """``liquid-drones evaluate`` (arguments: see agents/cli.py)."""
    import sys

    from agents.parallel import check_backend

    try:
        if args.run_dir is None and args.agent != EXPERT:
            raise ValueError("give a RUN_DIR to evaluate, or --agent expert (with --env) for the PID expert")
        [spec] = agents_from_args([args.run_dir] if args.run_dir else [], args.agent == EXPERT,
                                  args.env, args.action)[-1:]
        disturbances = disturbance_dict(args.disturb)
        check_disturbances(spec, disturbances)
        check_backend(args.backend, args.address)
        if args.video:
            try:
                import imageio  # noqa: F401
            except ImportError:
                raise ValueError("--video needs imageio: pip install 'liquid-drones[video]'") from None
        for option in ("episodes", "batch"):
            if getattr(args, option) < 1:
                raise ValueError(f"--{option} must be >= 1, got {getattr(args, option)}")
    except ValueError as error:
        sys.exit(f"error: {error}")
    if args.out:
        out_dir = Path(args.out)
    elif args.run_dir:
        out_dir = Path(args.run_dir) / f"eval-{'expert-' if spec.is_expert else ''}{_tag(disturbances)}"
    else:
        out_dir = Path(args.root) / f"eval-expert-{spec.env_id.split('/')[-1]}-{_tag(disturbances)}"
    evaluate(spec, out_dir, args.episodes, args.seed, disturbances, not args.stochastic, args.batch,
             args.backend, args.workers, args.address,
             video=args.video_episodes if args.video else 0)
