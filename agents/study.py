"""`liquid-drones study SPEC`: train every variant x seed, fly one paired stress test, analyse.

Inputs: a study spec (`agents.study_spec`). The work, in the study folder (default
``runs/study-<spec>``):

0. with ``tune: {trials, budget}`` in the spec, ``tune/<variant>/``: every variant is tuned first
   with the same effort (`agents.tune`), and its seeds train the best trial's config.
1. ``runs/<variant>/seed-<k>/``: one training run per variant and seed (`agents.train.train`, or
   `agents.imitate.imitate` for a variant of ``grid: {training: [imitate]}``; its steps are labels),
   ``workers`` at a time, one torch thread each (local processes, or Ray tasks with
   ``backend="ray"``). A run that raises (or whose worker dies) is retried once, then reported
   as failed while the others complete. A finished run (its ``final_eval.json`` exists) is never
   trained again; an interrupted one resumes from its newest checkpoint.
2. ``stress/``: one `agents.stress` sweep of every finished run at once (the same episode seeds
   for every run, level and axis), resumable per level.
3. ``runs.csv`` (one row per run: steps and minutes to the success target, actor parameters,
   status), ``curves.csv`` (every run's periodic evaluations), and the analysis of
   `agents.analysis`: ``study.json``, ``report.md`` and its PNGs.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from agents.analysis import analyse_study, write_study_report
from agents.compare import model_facts
from agents.flight import load_agent
from agents.io import RowLog, write_json, write_rows
from agents.lock import FolderLock, LockError
from agents.provenance import recorded
from agents.parallel import check_backend, ray_session, run_jobs
from agents.robustness import NOMINAL, StressError, nominal_level
from agents.run import EVAL_FILE, FINAL_EVAL_FILE, read_eval_rows
from agents.stress import Sweep, parse_axes, parse_levels, run_sweep
from agents.study_spec import StudyError, StudySpec, load_spec
from envs.disturbances import AXIS_LABELS

RETRIES = 1  # a failed training run is tried once more before it is reported as failed


@dataclass(frozen=True)
class TrainJob:
    """One training run of a study (picklable: it runs in a worker)."""

    spec: StudySpec
    variant: str
    seed: int
    run_dir: str
    extra: tuple[str, ...] = ()


def run_name(variant: str, seed: int) -> str:
    return f"{variant}/seed-{seed}"


def is_finished(run_dir: Path) -> bool:
    """A run is finished once train wrote its final_eval.json (the last file it writes)."""
    return (run_dir / FINAL_EVAL_FILE).is_file()


def train_job(job: TrainJob) -> dict[str, Any]:
    """Train (or resume) one run; return how long it took. Runs in a worker process."""
    from agents.checkpoint import list_checkpoints
    from agents.imitate import imitate
    from agents.train import train

    variant = next(v for v in job.spec.variants if v.name == job.variant)
    config = job.spec.config(variant, job.seed, job.extra)
    run_dir = Path(job.run_dir)
    resume = bool(list_checkpoints(run_dir / "checkpoints"))
    if run_dir.exists() and not resume:  # an attempt that died before its first checkpoint
        shutil.rmtree(run_dir)
    started = time.time()
    learn = imitate if variant.method == "imitate" else train
    learn(config, run_dir, resume=resume, log=lambda message: print(f"[{job.variant} seed {job.seed}] {message}",
                                                                     flush=True))
    return {"seconds": time.time() - started}


@dataclass
class StudyResult:
    out_dir: Path
    trained: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def _run_facts(spec: StudySpec, variant: str, seed: int, run_dir: Path, status: str) -> dict[str, Any]:
    """steps/minutes to the success target and actor parameters of one run."""
    row = {"variant": variant, "seed": seed, "status": status, "steps_to_target": "", "minutes_to_target": "",
           "params": "", "train_steps": ""}
    if status != "finished":
        return row
    final = json.loads((run_dir / FINAL_EVAL_FILE).read_text())
    reached = final.get("target_reached_at")
    curve = read_eval_rows(run_dir / EVAL_FILE)
    if reached is not None:
        at = next((r for r in curve if int(r["timesteps"]) == reached), None)
        row["steps_to_target"] = reached
        row["minutes_to_target"] = round(at["wall_time_s"] / 60, 3) if at else ""
    facts = model_facts(load_agent(run_dir, run_name(variant, seed)))
    row["params"], row["train_steps"] = facts["actor_params"], facts["train_steps"]
    return row


def _tune_stage(spec: StudySpec, out_dir: Path, backend: str, workers: int, address: str | None,
                log: Callable[[str], None]) -> dict[str, tuple[str, ...]]:
    """Tune every variant with the same trials and budget (`agents.tune`, resumable in
    ``tune/<variant>/``); return each variant's best keys as overrides (none without a complete trial)."""
    from agents.tune import tune

    tuned = {}
    for variant in spec.variants:
        log(f"study {spec.name}: tuning {variant.name} ({spec.tune['trials']} trials x {spec.tune['budget']:,} steps)")
        given = [*spec.overrides, *variant.overrides]
        config = spec.config(variant, spec.seeds[0])
        if config.eval.final_episodes < 1:  # a trial's value is its final evaluation
            given.append(f"eval.final_episodes={config.eval.n_episodes}")
        found = tune(variant.base or spec.base, given, spec.tune["trials"], spec.tune["budget"],
                     out_dir / "tune" / variant.name, workers=workers,
                     backend="ray" if backend == "ray" else "local", address=address, log=log)
        tuned[variant.name] = tuple(o for o in found.best_overrides if o not in given) if found.best_config else ()
    return tuned


def _train_stage(spec: StudySpec, out_dir: Path, backend: str, workers: int, address: str | None,
                 result: StudyResult, log: Callable[[str], None], tuned: dict[str, tuple[str, ...]]) -> None:
    runs = {(v.name, s): out_dir / "runs" / v.name / f"seed-{s}" for v in spec.variants for s in spec.seeds}
    todo = []
    for (variant, seed), run_dir in runs.items():
        if is_finished(run_dir):
            result.reused.append(run_name(variant, seed))
        else:
            todo.append(TrainJob(spec, variant, seed, str(run_dir), tuned.get(variant, ())))
    log(f"study {spec.name}: {len(runs)} runs, {len(result.reused)} already trained, {len(todo)} to train")
    for attempt in range(1 + RETRIES):
        if not todo:
            break
        errors: dict[str, str] = {}
        result.trained += [run_name(job.variant, job.seed) for job in todo]
        run_jobs(train_job, todo, on_result=lambda job, done: None,
                 on_error=lambda job, error: errors.__setitem__(run_name(job.variant, job.seed), error),
                 backend=backend, workers=workers, address=address, desc="study: train", unit="run")
        for name, error in errors.items():
            log(f"run {name} failed ({error})" + ("; retrying once" if attempt < RETRIES else "; giving up"))
        todo = [job for job in todo if run_name(job.variant, job.seed) in errors]
        result.failed = errors


def _stress_stage(spec: StudySpec, out_dir: Path, names: dict[str, tuple[str, int]], backend: str, workers: int,
                  address: str | None, log: Callable[[str], None]) -> list[dict[str, str]]:
    agents = tuple(load_agent(out_dir / "runs" / variant / f"seed-{seed}", name)
                   for name, (variant, seed) in names.items())
    axes = parse_axes(list(spec.axes) if spec.axes else None, agents)
    levels = parse_levels([f"{axis}={','.join(map(str, values))}" for axis, values in spec.levels.items()], axes)
    sweep = Sweep(agents, levels, spec.episodes, spec.episode_seed, spec.batch)
    stress_dir = out_dir / "stress"
    saved = stress_dir / "stress.json"
    if saved.exists() and json.loads(saved.read_text()) != json.loads(json.dumps(sweep.settings())):
        stale = out_dir / f"stress-before-{time.strftime('%Y%m%d-%H%M%S')}"
        log(f"the runs changed since the last stress test; keeping it in {stale} and flying a new one")
        stress_dir.rename(stale)
    run_sweep(sweep, stress_dir, backend, workers, address, resume=saved.exists(), log=log)
    return RowLog.read(stress_dir / "episodes.csv"), sweep


def run_study(spec: StudySpec, out_dir: Path, workers: int = 2, backend: str = "local", address: str | None = None,
              resamples: int = 2000, log: Callable[[str], None] = print) -> StudyResult:
    """Train, stress and analyse the study into ``out_dir`` (see the module docstring).

    :raise agents.lock.LockError: if another process writes into ``out_dir``
    :raise StudyError: if ``out_dir`` holds a study of another spec, or no run could be trained
    """
    session = ray_session(workers, address) if backend == "ray" else contextlib.nullcontext()
    with FolderLock(out_dir, "study folder", log), session:
        spec_file = out_dir / "spec.json"
        if spec_file.exists() and json.loads(spec_file.read_text()) != json.loads(json.dumps(spec.to_dict())):
            raise StudyError(f"{out_dir} holds a study of another spec; choose another --out")
        with recorded(out_dir, "study", {"training": list(spec.seeds)}):
            write_json(spec_file, spec.to_dict())
            result = StudyResult(out_dir)
            tuned = _tune_stage(spec, out_dir, backend, workers, address, log) if spec.tune else {}
            _train_stage(spec, out_dir, backend, workers, address, result, log, tuned)

            names = {run_name(v.name, s): (v.name, s) for v in spec.variants for s in spec.seeds
                     if run_name(v.name, s) not in result.failed}
            if not names:
                raise StudyError(f"every run failed: {result.failed}")
            run_rows = [_run_facts(spec, variant, seed, out_dir / "runs" / variant / f"seed-{seed}",
                                   "failed" if run_name(variant, seed) in result.failed else "finished")
                        for variant, seed in ((v.name, s) for v in spec.variants for s in spec.seeds)]
            write_rows(run_rows, out_dir, "runs")
            curve_rows = [{"variant": variant, "seed": seed, **row} for name, (variant, seed) in names.items()
                          for row in read_eval_rows(out_dir / "runs" / variant / f"seed-{seed}" / EVAL_FILE)]
            write_rows(curve_rows, out_dir, "curves")

            episodes, sweep = _stress_stage(spec, out_dir, names, backend, workers, address, log)
            episode_rows = [{**row, "variant": names[row["agent"]][0], "seed": names[row["agent"]][1],
                             "episode_seed": row["seed"]} for row in episodes]
            nominal = {axis: nominal_level(axis, sweep.agents[0]) for axis in sweep.levels}
            variants_left = {variant for variant, _ in names.values()}
            reference = spec.reference if spec.reference in variants_left else sorted(variants_left)[0]
            result.summary = analyse_study(
                [row for row in episode_rows if row["axis"] == NOMINAL or float(row["level"]) != nominal[row["axis"]]],
                [row for row in run_rows if row["status"] == "finished"], curve_rows, reference, spec.learned_level,
                {axis: AXIS_LABELS[axis] for axis in sweep.levels}, resamples=resamples, nominal_levels=nominal)
            result.summary["settings"].update({"study": spec.name, "failed_runs": result.failed})
            if spec.tune:
                result.summary["settings"]["tuning"] = {**spec.tune, "best": {v: list(k) for v, k in tuned.items()}}
            write_study_report(result.summary, out_dir)
            log(f"study {spec.name}: trained {len(result.trained)}, reused {len(result.reused)}, "
                f"failed {len(result.failed)} -> {out_dir}/report.md")
            return result


def main(args: Any) -> None:
    """``liquid-drones study`` (arguments: see agents/cli.py)."""
    try:
        check_backend(args.backend, args.address)
        spec = load_spec(args.spec)
    except ValueError as error:
        sys.exit(f"error: {error}")
    out_dir = Path(args.out) if args.out else Path(args.root) / f"study-{spec.name}"
    try:
        run_study(spec, out_dir, args.workers, args.backend, args.address)
    except (StudyError, StressError, LockError) as error:
        sys.exit(f"error: {error}")
    except OSError as error:
        sys.exit(f"error: cannot write the study: {error}")
