"""`liquid-drones evaluate`: fly closed-loop episodes with a trained run or the PID expert.

Inputs: an agent (`agents.flight`), episode seeds, disturbances. The work: split the seeds into
flight jobs and run them (`agents.flight.run_flight_jobs`). Outputs in the evaluation folder:

- ``episodes.csv``: one row per episode (`agents.metrics.EpisodeResult`), written as jobs finish;
- ``metrics.json``: the `agents.metrics.Summary` and the settings that produced it;
- ``trajectories.csv`` + ``trajectories.png``: the flight paths of the first episodes (top view
  and height over time, coloured by outcome, goals marked);
- with ``video``: ``episodes.mp4`` (or ``.gif`` without imageio-ffmpeg) of the first episodes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from agents.flight import (
    DEFAULT_BATCH,
    DEFAULT_EPISODES,
    DEFAULT_SEED,
    EXPERT,
    AgentSpec,
    Flight,
    FlightJob,
    agents_from_args,
    check_disturbances,
    disturbance_dict,
    fly,
    run_flight_jobs,
    split,
)
from agents.io import RowLog, replace_rows, write_json
from agents.lock import FolderLock, LockError
from agents.provenance import recorded
from agents.metrics import EPISODE_COLUMNS, EpisodeResult, Summary
from agents.parallel import check_backend, default_workers
from agents.report import write_trajectories, write_video

TRACE_EPISODES = 10  # episodes drawn in trajectories.png
VIDEO_EPISODES = 3


def describe_setting(disturbances: dict[str, Any]) -> str:
    """``"wind=3, mass=1.2"``, or ``"nominal"`` without disturbances."""
    return ", ".join(f"{k}={v}" for k, v in disturbances.items()) or "nominal"


def control_rate(spec: AgentSpec, disturbances: dict[str, Any]) -> int:
    """Env steps per second under ``disturbances`` (the ``ctrl_rate`` axis changes it)."""
    return int(disturbances.get("ctrl_rate") or spec.control_hz)


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
    overwrite: bool = False,
) -> Summary:
    """Fly ``episodes`` episodes (seeds ``seed, seed + 1, ...``) and write the evaluation files.

    :raise EvaluationError: if ``out_dir`` already holds an evaluation (unless ``overwrite``), or
        if every episode raised
    :raise agents.lock.LockError: if another process writes into ``out_dir``
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    with FolderLock(out_dir, "evaluation folder", log):
        if not overwrite and any((out_dir / name).exists() for name in ("episodes.csv", "metrics.json")):
            raise EvaluationError(f"{out_dir} already holds an evaluation; pass --overwrite to replace it "
                                  f"or choose another --out")
        with recorded(out_dir, "evaluate", {"episodes": [seed, seed + episodes - 1]}):
            return _evaluate(spec, out_dir, episodes, seed, disturbances, deterministic, batch, backend, workers,
                             address, video, trace, log)


def _evaluate(spec: AgentSpec, out_dir: Path, episodes: int, seed: int, disturbances: dict[str, Any] | None,
              deterministic: bool, batch: int, backend: str, workers: int | None, address: str | None,
              video: int, trace: int, log: Callable[[str], None]) -> Summary:
    disturbances = dict(disturbances or {})
    seeds = list(range(seed, seed + episodes))
    workers = workers or default_workers()
    if workers == 1 and backend == "local":
        backend = "serial"
    chunks = split(seeds, 2 * workers if backend != "serial" else 1)
    trace = min(trace, len(chunks[0]))  # the first job records the paths of its first episodes
    jobs = [FlightJob(spec, chunk, disturbances, batch, deterministic, trace=trace if i == 0 else 0)
            for i, chunk in enumerate(chunks)]
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "episodes.csv"
    traced: list[Flight] = []
    run_flight_jobs(jobs, RowLog(csv_path, EPISODE_COLUMNS), backend, workers, address,
                    desc=f"evaluate {spec.name}", on_traced=traced.extend)
    results = sorted((EpisodeResult.from_row(row) for row in RowLog.read(csv_path)), key=lambda r: r.seed)
    replace_rows(csv_path, EPISODE_COLUMNS, (r.to_row() for r in results))

    summary = Summary.of(results)
    write_json(out_dir / "metrics.json", {
        "agent": spec.name, "run_dir": spec.run_dir, "model": None if spec.is_expert else spec.source,
        "env": spec.env_id, "env_kwargs": spec.env_kwargs,
        "disturbances": disturbances, "episodes": episodes, "seeds": [seed, seed + episodes - 1],
        "deterministic": deterministic, "batch": batch, **summary.as_dict(),
    })
    title = f"{spec.name}: {describe_setting(disturbances)}"
    if traced:
        write_trajectories(traced, control_rate(spec, disturbances), out_dir, title)
    if video:
        recorded = [f for f in fly(spec, seeds[:video], disturbances, batch, deterministic, video=video) if f.frames]
        if recorded:
            path = write_video([frame for f in recorded for frame in f.frames], out_dir / "episodes",
                               fps=control_rate(spec, disturbances))
            log(f"video of {len(recorded)} episode(s): {path}")
    log(f"{spec.name} on {spec.env_id} ({describe_setting(disturbances)}): {summary}")
    log(f"wrote {out_dir}/episodes.csv, metrics.json" + (", trajectories.png" if traced else ""))
    if summary.errors == summary.episodes:
        raise EvaluationError(f"every one of the {summary.episodes} episodes raised; see the error column of "
                              f"{csv_path}")
    return summary


class EvaluationError(RuntimeError):
    """Every episode of an evaluation raised: there is no result to report."""


def _tag(disturbances: dict[str, Any]) -> str:
    """A folder-name tag: ``wind3.0-mass1.2``, ``wind1.0to3.0`` for a range, or ``nominal``."""
    text = [f"{k}{'to'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in disturbances.items()]
    return "-".join(text) or "nominal"


def main(args: Any) -> None:
    """``liquid-drones evaluate`` (arguments: see agents/cli.py)."""
    try:
        if args.run_dir is None and args.agent != EXPERT:
            raise ValueError("give a RUN_DIR to evaluate, or --agent expert (with --env) for the PID expert")
        if args.step is not None and args.model != "checkpoint":
            raise ValueError(f"--step {args.step} chooses a checkpoint: add --model checkpoint")
        [spec] = agents_from_args([args.run_dir] if args.run_dir else [], args.agent == EXPERT,
                                  args.env, args.action, args.model, args.step)[-1:]
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
        model = "" if spec.is_expert or spec.source == "final" else spec.source.replace(" ", "") + "-"
        out_dir = Path(args.run_dir) / f"eval-{'expert-' if spec.is_expert else model}{_tag(disturbances)}"
    else:
        out_dir = Path(args.root) / f"eval-expert-{spec.env_id.split('/')[-1]}-{_tag(disturbances)}"
    try:
        evaluate(spec, out_dir, args.episodes, args.seed, disturbances, not args.stochastic, args.batch,
                 args.backend, args.workers, args.address,
                 video=args.video_episodes if args.video else 0, overwrite=args.overwrite)
    except (EvaluationError, LockError) as error:
        sys.exit(f"error: {error}")
    except OSError as error:
        sys.exit(f"error: cannot write the evaluation: {error}")
