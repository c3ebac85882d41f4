"""`liquid-drones stress`: success along each disturbance axis, for one or more agents, paired.

For every agent (a trained run or the PID expert) and every level of every chosen axis
(`envs.disturbances.DEFAULT_LEVELS` unless overridden), the same episode seeds are flown, so
agents and levels are compared on identical task layouts and disturbance draws. The
in-distribution level (each axis at its nominal value: no wind, mass and motor x1, no noise,
no latency, no push, range x1, the agent's own training control rate) is flown once per agent and
shared by every axis.

Output folder (default ``runs/stress-<time>``):

- ``stress.json``: the settings (agents, env, axes, levels, seeds); ``--resume`` checks them;
- ``episodes.csv``: one row per episode (agent, axis, level + `agents.metrics.EpisodeResult`),
  appended as each job finishes, so an interrupted sweep keeps everything already flown;
- ``results.csv``, ``summary.json``, ``robustness.png``, ``report.md``: the analysis
  (`agents.robustness`).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from agents.flight import (
    DEFAULT_BATCH,
    DEFAULT_EPISODES,
    DEFAULT_SEED,
    AgentSpec,
    FlightJob,
    agents_from_args,
    env_axes,
    run_flight_jobs,
)
from agents.io import RowLog, replace_rows, timestamped_name, write_json
from agents.lock import FolderLock, LockError
from agents.provenance import recorded
from agents.metrics import EPISODE_COLUMNS
from agents.parallel import check_backend
from agents.robustness import NOMINAL, StressError, analyse, cell_of, nominal_level
from envs.disturbances import AXES, DEFAULT_LEVELS, Disturbances

TAG_COLUMNS = ("agent", "axis", "level")


def parse_axes(names: Sequence[str] | None, agents: Sequence[AgentSpec]) -> list[str]:
    """``["wind,mass", "push"]`` -> ``["wind", "mass", "push"]``; default: every axis that the
    agents' env responds to (`envs.base.QuadrotorEnv.disturbance_axes`)."""
    responsive = [env_axes(spec) for spec in agents]
    allowed = [axis for axis in AXES if all(axis in axes for axes in responsive)]
    axes = [a.strip() for text in names or [] for a in text.split(",") if a.strip()] or allowed
    unknown = [a for a in axes if a not in allowed]
    if unknown:
        env = agents[0].env_id if agents else "the env"
        raise StressError(f"unknown axis {', '.join(map(repr, unknown))} for {env}; allowed: {', '.join(allowed)}")
    return list(dict.fromkeys(axes))


def parse_levels(texts: Sequence[str], axes: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """Sweep levels per axis: the defaults, with ``"axis=v1,v2,..."`` overrides."""
    levels = {axis: DEFAULT_LEVELS[axis] for axis in axes}
    for text in texts:
        axis, sep, raw = text.partition("=")
        axis = axis.strip()
        if not sep or axis not in AXES:
            raise StressError(f"--levels {text!r}: expected axis=v1,v2,... with an axis of {', '.join(AXES)}")
        if axis not in axes:
            raise StressError(f"--levels {text!r}: {axis} is not among the swept axes ({', '.join(axes)})")
        try:
            values = tuple(float(v) for v in raw.split(",") if v.strip())
        except ValueError:
            raise StressError(f"--levels {text!r}: the levels must be numbers, e.g. {axis}="
                              f"{','.join(str(v) for v in DEFAULT_LEVELS[axis])}") from None
        if not values:
            raise StressError(f"--levels {text!r}: no level given")
        levels[axis] = values
    for axis, values in levels.items():
        for value in values:
            if axis == "ctrl_rate" and not (value > 0 and float(value).is_integer()):
                raise StressError(f"level ctrl_rate={value}: a control rate is a whole number of Hz, e.g. 24, 48, 96")
            try:
                Disturbances.level(axis, value)
            except ValueError as error:
                raise StressError(f"level {axis}={value}: {error}") from None
    return levels


def disturbance_of(axis: str, value: float) -> dict[str, Any]:
    return {axis: int(value) if axis == "ctrl_rate" else float(value)}


@dataclass(frozen=True)
class Sweep:
    """What a stress test flies: agents x (nominal + off-nominal levels of each axis) x seeds."""

    agents: tuple[AgentSpec, ...]
    levels: dict[str, tuple[float, ...]]
    episodes: int = DEFAULT_EPISODES
    seed: int = DEFAULT_SEED
    batch: int = DEFAULT_BATCH
    deterministic: bool = True

    def __post_init__(self) -> None:
        if not self.agents:
            raise StressError("nothing to stress: give at least one run folder (or --expert)")
        names = [a.name for a in self.agents]
        if len(set(names)) != len(names):
            raise StressError(f"agent names must be unique, got {names}")
        env_ids = sorted({a.env_id for a in self.agents})
        if len(env_ids) > 1:
            raise StressError(f"all agents must fly the same env for a paired comparison; got "
                              f"{', '.join(f'{a.name}: {a.env_id}' for a in self.agents)}")
        if self.episodes < 1:
            raise StressError(f"--episodes must be >= 1, got {self.episodes}")

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(range(self.seed, self.seed + self.episodes))

    def off_nominal(self, spec: AgentSpec, axis: str) -> list[float]:
        return [v for v in self.levels[axis] if v != nominal_level(axis, spec)]

    def curve_levels(self, spec: AgentSpec, axis: str) -> list[float]:
        """The levels of an axis's curve: its sweep levels and the nominal one, ascending."""
        return sorted({*self.levels[axis], nominal_level(axis, spec)})

    def jobs(self) -> list[FlightJob]:
        """One job per agent and level; levels outermost so agents progress together."""
        cells = [(NOMINAL, None)] + [(axis, v) for axis in self.levels for v in self.levels[axis]]
        jobs = []
        for axis, value in cells:
            for spec in self.agents:
                if axis != NOMINAL and value == nominal_level(axis, spec):
                    continue
                disturbances = {} if axis == NOMINAL else disturbance_of(axis, value)
                tag = {"agent": spec.name, "axis": axis, "level": "" if value is None else value}
                jobs.append(FlightJob(spec, self.seeds, disturbances, self.batch, self.deterministic, tag))
        return jobs

    def settings(self) -> dict[str, Any]:
        return {
            "env": self.agents[0].env_id,
            "agents": [{"name": a.name, "run_dir": a.run_dir, "model": a.key, "env_kwargs": a.env_kwargs,
                        "control_hz": a.control_hz} for a in self.agents],
            "levels": {axis: list(values) for axis, values in self.levels.items()},
            "episodes": self.episodes, "seeds": [self.seed, self.seed + self.episodes - 1],
            "batch": self.batch, "deterministic": self.deterministic,
        }


def _complete_cells(rows: list[dict[str, str]], seeds: Sequence[int]) -> dict[tuple, list[dict[str, str]]]:
    """Rows of the cells whose every seed has a full, error-free row (resumable work)."""
    cells: dict[tuple, list[dict[str, str]]] = defaultdict(list)
    for row in rows:  # complete rows only: `agents.io.RowLog.read` drops a line cut short
        cells[cell_of(row)].append(row)
    wanted = sorted(seeds)
    return {cell: cell_rows for cell, cell_rows in cells.items()
            if sorted(int(r["seed"]) for r in cell_rows) == wanted and not any(r["error"] for r in cell_rows)}


def run_sweep(
    sweep: Sweep,
    out_dir: Path,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fly the sweep into ``out_dir`` (see the module docstring) and return the summary.

    :raise agents.lock.LockError: if another process writes into ``out_dir``
    """
    with FolderLock(out_dir, "stress folder", log):
        return _run_sweep(sweep, out_dir, backend, workers, address, resume, log)


def _run_sweep(sweep: Sweep, out_dir: Path, backend: str, workers: int | None, address: str | None,
               resume: bool, log: Callable[[str], None]) -> dict[str, Any]:
    settings_path, csv_path = out_dir / "stress.json", out_dir / "episodes.csv"
    settings = sweep.settings()
    jobs = sweep.jobs()
    if csv_path.exists() and not resume:
        raise StressError(f"{out_dir} already holds a stress test; pass --resume to continue it "
                          f"or choose another --out")
    columns = [*TAG_COLUMNS, *EPISODE_COLUMNS]
    if resume and csv_path.exists():
        saved = json.loads(settings_path.read_text()) if settings_path.exists() else None
        if saved != json.loads(json.dumps(settings)):
            raise StressError(f"--resume {out_dir}: its stress.json was written for other agents, "
                              f"levels or seeds; rerun with the same options or choose another --out")
        done = _complete_cells(RowLog.read(csv_path), sweep.seeds)
        replace_rows(csv_path, columns, (row for cell_rows in done.values() for row in cell_rows))
        jobs = [job for job in jobs if cell_of(job.tag) not in done]
        log(f"resuming {out_dir}: {len(done)} level(s) already flown, {len(jobs)} to go")
    with recorded(out_dir, "stress", {"episodes": settings["seeds"]}):
        write_json(settings_path, settings)
        episode_log = RowLog(csv_path, columns, append=resume)
        run_flight_jobs(jobs, episode_log, backend, workers, address, desc="stress")
        return analyse(sweep, RowLog.read(csv_path), out_dir, log)


def sweep_from_args(args: Any) -> Sweep:
    """The `Sweep` of ``liquid-drones stress`` / ``compare`` arguments, validated."""
    check_backend(args.backend, args.address)
    agents = agents_from_args(args.run_dirs, args.expert, args.env, args.action)
    if not agents:
        raise StressError("nothing to stress: give run folders and/or --expert")
    axes = parse_axes(args.axes, agents)
    if args.batch < 1:
        raise StressError(f"--batch must be >= 1, got {args.batch}")
    return Sweep(tuple(agents), parse_levels(args.levels, axes), args.episodes, args.seed,
                 args.batch, not args.stochastic)


def main(args: Any) -> None:
    """``liquid-drones stress`` (arguments: see agents/cli.py)."""
    try:
        sweep = sweep_from_args(args)
    except ValueError as error:
        sys.exit(f"error: {error}")
    out_dir = Path(args.out) if args.out else Path(args.root) / timestamped_name("stress")
    try:
        run_sweep(sweep, out_dir, args.backend, args.workers, args.address, args.resume)
    except (StressError, LockError) as error:
        sys.exit(f"error: {error}")
    except OSError as error:
        sys.exit(f"error: cannot write the stress test: {error}")
