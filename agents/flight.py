"""Flying closed-loop episodes: who flies (agent specs, pilots), the one episode runner, jobs.

Who flies is an `AgentSpec`: a finished run (`agent_of_run`: its config, model.zip and
normalisation statistics, carried as bytes and arrays so that a worker on another machine needs
no shared filesystem) or the env's cascaded-PID expert (`expert_spec`). The env is the agent's
own (id and constructor kwargs) with the flight's disturbances in place of any training-time
randomisation.

`fly` runs episodes, one per seed, in ``batch`` envs stepped in lock step so that the policy
acts on the whole batch at once. The policy input always has ``batch`` rows (idle rows are
padding), so an episode's actions depend only on its own observations: every episode is a
function of its seed, whatever else runs beside it, in any worker, on any backend. Recurrent
state is carried from step to step and reset (``episode_start``) where an env begins a new
episode. Actions are the policy's mean unless ``deterministic=False``. `episode_result` is the
one place that turns a finished episode into an `agents.metrics.EpisodeResult`: `evaluate`,
`stress` and training-time evaluations all fly through here.

`FlightJob` / `fly_job` / `run_flight_jobs` split episodes into jobs for `agents.parallel`.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np

from agents.io import RowLog
from agents.metrics import EpisodeResult, action_smoothness
from agents.normalization import ObsNormalizer
from agents.parallel import describe, run_jobs
from agents.run import Run, check_model, load_model, load_run, uses_time_input

EXPERT = "expert"
DEFAULT_EPISODES = 50
# Episode seeds start here: disjoint from the seeds of training envs (train.seed + rank) and of
# training-time evaluation (train.seed + EVAL_SEED_OFFSET + episode).
DEFAULT_SEED = 100_000
EVAL_SEED_OFFSET = 10_000
DEFAULT_BATCH = 8  # envs stepped together; the policy input always has this many rows

Position = tuple[float, float, float]


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
    normalizer: ObsNormalizer | None = field(default=None, repr=False)
    source: str = "final"  # which of the run's models (`agents.run.load_run`)

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


def agent_of_run(run: Run, name: str | None = None) -> AgentSpec:
    """The policy of a loaded run as an agent."""
    config = run.config
    return AgentSpec(
        name=name or run.path.name,
        env_id=config.env.id,
        env_kwargs=_without_disturbances(config.env.kwargs),
        control_hz=_control_hz(config.env.kwargs),
        time_input=uses_time_input(config),
        run_dir=str(run.path),
        config=config.to_dict(),
        model=run.model,
        normalizer=run.normalizer,
        source=run.source,
    )


def load_agent(run_dir: str | Path, name: str | None = None, model: str = "final",
               step: int | None = None) -> AgentSpec:
    """Read and check a run folder's ``model`` (`agents.run.load_run` + `check_model`) as an agent.

    :raise agents.run.RunError: naming the file, if the folder is not a usable finished run
    """
    run = load_run(run_dir, model, step)
    check_model(run)
    return agent_of_run(run, name)


def agent_of_config(config: Any, name: str = "training") -> AgentSpec:
    """The env side of a training config as an agent (the pilot is given to `fly` separately)."""
    return AgentSpec(name=name, env_id=config.env.id, env_kwargs=_without_disturbances(config.env.kwargs),
                     control_hz=_control_hz(config.env.kwargs), time_input=uses_time_input(config))


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
class ModelPilot:
    """An SB3 model with its observation normalisation; keeps the recurrent state.

    :param normalizer: anything with ``normalize_obs`` (an `ObsNormalizer`, or the live
        VecNormalize of a run in training), or None
    """

    def __init__(self, model: Any, normalizer: Any = None) -> None:
        self.model = model
        self.normalizer = normalizer
        self.state: Any = None

    @classmethod
    def of(cls, spec: AgentSpec) -> ModelPilot:
        from agents.config import config_from_dict

        return cls(load_model(config_from_dict(spec.config), spec.model, spec.run_dir or spec.name), spec.normalizer)

    def begin(self) -> None:
        self.state = None

    def act(self, obs: Any, starts: np.ndarray, flying: Sequence[gym.Env | None],
            deterministic: bool) -> np.ndarray:
        """Actions [batch, 4] for observations [batch, ...]; ``starts`` marks first steps of
        episodes; ``flying`` holds each row's env (None for padding rows)."""
        if self.normalizer is not None:
            obs = self.normalizer.normalize_obs(obs)
        actions, self.state = self.model.predict(obs, state=self.state, episode_start=starts,
                                                 deterministic=deterministic)
        return actions


class ExpertPilot:
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
        _PILOTS[spec.key] = ExpertPilot() if spec.is_expert else ModelPilot.of(spec)
    return _PILOTS[spec.key]


# --- envs --------------------------------------------------------------------------------------
def make_env(spec: AgentSpec, disturbances: dict[str, Any] | None = None, render: bool = False) -> gym.Env:
    """The agent's env with ``disturbances`` (dict of `envs.disturbances.Disturbances` fields)."""
    import envs  # noqa: F401  (registers the ids in a fresh worker)
    from envs.wrappers import AppendStepDuration

    env = gym.make(spec.env_id, **spec.env_kwargs, disturbances=dict(disturbances or {}),
                   render_mode="rgb_array" if render else None, disable_env_checker=True)
    return AppendStepDuration(env) if spec.time_input else env


def env_axes(spec: AgentSpec) -> tuple[str, ...]:
    """The disturbance axes the agent's env responds to (from the env class; no env is built)."""
    import envs

    return envs.disturbance_axes(spec.env_id, spec.env_kwargs)


def check_disturbances(spec: AgentSpec, disturbances: dict[str, Any]) -> None:
    """Fail early on an axis the agent's env does not respond to."""
    axes = env_axes(spec)
    ignored = [axis for axis in disturbances if axis not in axes and axis != "gust"]
    if ignored:
        raise ValueError(f"{spec.env_id} does not respond to disturbance {', '.join(ignored)}; "
                         f"allowed: {', '.join(axes)}")


def disturbance_dict(assignments: Sequence[str]) -> dict[str, Any]:
    """``["wind=3", "mass=0.9:1.1"]`` -> the non-nominal fields of the parsed `Disturbances`.

    :raise ValueError: naming an unknown axis or a bad value, and what is allowed
    """
    from envs.disturbances import Disturbances

    parsed, nominal = Disturbances.parse(assignments).to_dict(), Disturbances().to_dict()
    return {axis: value for axis, value in parsed.items() if value != nominal[axis]}


def resolve_env_id(name: str) -> str:
    """``Hover-v0`` or ``hover`` -> ``LiquidDrones/Hover-v0``; full ids pass through."""
    import envs

    for env_id in envs.ENV_IDS:
        short = env_id.split("/")[-1]
        if name in (env_id, short) or name.lower() == short.split("-")[0].lower():
            return env_id
    raise ValueError(f"unknown env {name!r}; allowed: {', '.join(envs.ENV_IDS)}")


def agents_from_args(run_dirs: Sequence[str], expert: bool, env: str | None,
                     action: str | None, model: str = "final", step: int | None = None) -> list[AgentSpec]:
    """The runs' ``model`` (named by folder, or by path where folder names repeat) and optionally
    the expert, which flies the first run's env (or ``env`` with ``action`` when no run is given)."""
    names = [Path(d).name for d in run_dirs]
    agents = [load_agent(d, name if names.count(name) == 1 else str(d).rstrip("/"), model, step)
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


# --- flying episodes -------------------------------------------------------------------------
@dataclass
class Flight:
    """One flown episode: its result and, when recorded, its path and frames."""

    result: EpisodeResult
    goals: list[Position] = field(default_factory=list)
    positions: np.ndarray | None = None  # [steps + 1, 3] m, world
    frames: list[np.ndarray] | None = None
    goal_path: np.ndarray | None = None  # [steps + 1, 3] m, the current goal at each step (traced)
    obstacles: list[tuple[float, float, float]] = field(default_factory=list)  # (x, y, radius) m
    wind: Position = (0.0, 0.0, 0.0)  # the episode's steady wind, m/s, world

    @property
    def outcome(self) -> str:
        r = self.result
        return "error" if r.error else "success" if r.success else "crash" if r.crashed else "timeout"


def episode_result(seed: int, info: dict[str, Any], terminated: bool, truncated: bool,
                   actions: Sequence[np.ndarray], time_s: float, reward: float, shortest_m: float) -> EpisodeResult:
    """The outcome of a finished episode from its last ``info`` and what was recorded on the way.

    Exactly one of success, crash (without success) and timeout (neither) holds.
    """
    success = bool(info["is_success"])
    crashed = bool(info["crashed"]) and not success
    return EpisodeResult(
        seed=seed, success=success, crashed=crashed, timeout=not (success or crashed),
        steps=len(actions), time_s=time_s, path_length_m=float(info["path_length"]), shortest_path_m=shortest_m,
        final_distance_m=float(info["distance_to_goal"]),
        action_smoothness=action_smoothness(np.array(actions)), reward=reward, pushed=bool(info.get("pushed", False)))


class _InFlight:
    """Book-keeping of the episode an env slot is flying."""

    def __init__(self, index: int, seed: int, env: gym.Env, trace: bool, record: bool) -> None:
        self.index, self.seed = index, seed
        self.goals = [tuple(p) for p in env.unwrapped.route()]
        self.shortest = env.unwrapped.shortest_path_length()
        self.actions: list[np.ndarray] = []
        self.reward = 0.0
        self.time_s = 0.0
        self.positions = [tuple(env.unwrapped.sim.position)] if trace else None
        self.goal_path = [tuple(env.unwrapped.goal)] if trace else None
        self.obstacles = env.unwrapped.obstacles() if trace else []
        self.wind = tuple(env.unwrapped.episode_disturbance.steady_wind)
        self.frames = [env.render()] if record else None

    def step(self, env: gym.Env, action: np.ndarray, reward: float, info: dict[str, Any]) -> None:
        self.actions.append(np.clip(action, -1.0, 1.0))
        self.reward += reward
        self.time_s += info["dt"]
        if self.positions is not None:
            self.positions.append(tuple(env.unwrapped.sim.position))
            self.goal_path.append(tuple(env.unwrapped.goal))
        if self.frames is not None:
            self.frames.append(env.render())

    def finish(self, info: dict[str, Any], terminated: bool, truncated: bool) -> Flight:
        result = episode_result(self.seed, info, terminated, truncated, self.actions, self.time_s, self.reward,
                                self.shortest)
        positions = None if self.positions is None else np.array(self.positions)
        goal_path = None if self.goal_path is None else np.array(self.goal_path)
        return Flight(result, self.goals, positions, self.frames, goal_path, self.obstacles, self.wind)


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
    many seeds. ``pilot`` replaces the agent's own (training evaluations fly the live model).
    Builds ``min(batch, len(seeds))`` envs (plus one for each env whose step raised).
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
    envs: list[gym.Env | None] = [make_env(spec, disturbances, render) for _ in range(min(batch, len(seeds)))]
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
    """Episodes of one agent at one disturbance setting; ``tag`` prefixes every result row;
    the paths of the first ``trace`` episodes are recorded too."""

    spec: AgentSpec
    seeds: tuple[int, ...]
    disturbances: dict[str, Any] = field(default_factory=dict)
    batch: int = DEFAULT_BATCH
    deterministic: bool = True
    tag: dict[str, Any] = field(default_factory=dict)
    trace: int = 0


@dataclass
class JobResult:
    rows: list[dict[str, Any]]
    traced: list[Flight]


def fly_job(job: FlightJob) -> JobResult:
    """Rows (``tag`` + episode fields) of a job's episodes, and its traced flights; runs in a worker."""
    flights = fly(job.spec, job.seeds, job.disturbances, job.batch, job.deterministic, trace=job.trace)
    return JobResult([{**job.tag, **flight.result.to_row()} for flight in flights],
                     [flight for flight in flights if flight.positions is not None])


def error_rows(job: FlightJob, error: str) -> list[dict[str, Any]]:
    """The rows of a job that failed as a whole: every episode an error with its text."""
    return [{**job.tag, **EpisodeResult.failed(seed, error).to_row()} for seed in job.seeds]


def split(seeds: Sequence[int], parts: int) -> list[tuple[int, ...]]:
    """``seeds`` in ``parts`` contiguous chunks of near-equal size (none empty)."""
    parts = max(1, min(parts, len(seeds)))
    bounds = np.linspace(0, len(seeds), parts + 1).round().astype(int)
    return [tuple(seeds[a:b]) for a, b in zip(bounds, bounds[1:])]


def run_flight_jobs(jobs: Sequence[FlightJob], log: RowLog, backend: str, workers: int | None,
                    address: str | None, desc: str,
                    on_traced: Callable[[list[Flight]], None] | None = None) -> None:
    """Run ``jobs`` with `agents.parallel.run_jobs`, appending each job's rows to ``log`` at once
    (and handing traced flights to ``on_traced``)."""

    def done(job: FlightJob, result: JobResult) -> None:
        log.write(result.rows)
        if on_traced is not None and result.traced:
            on_traced(result.traced)

    run_jobs(fly_job, jobs, on_result=done,
             on_error=lambda job, error: log.write(error_rows(job, error)),
             backend=backend, workers=workers, address=address,
             size=lambda job: len(job.seeds), desc=desc, unit="episode")
