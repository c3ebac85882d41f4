"""`liquid-drones tune`: equal-budget hyper-parameter search of one config with Optuna.

config + search space (`agents.search_space`) -> an Optuna study in a storage -> trials, each a
real training run (`agents.train.train`) of ``budget`` env steps with the trial's sampled keys,
in ``<out>/trials/<number>/`` -> best.yaml, and trials.csv, history.png, importance.png, report.md
(`agents.tuning_report`).

- **Score** (maximised): ``success rate + 1e-3 * r / (1 + |r|)`` with ``r`` the mean episode
  reward. Success decides; the reward term lies in (-1e-3, 1e-3), less than one episode of
  success in any evaluation (1/20 = 0.05), so it only breaks ties.
- **Intermediate values**: the score of every periodic evaluation (``eval.n_episodes`` episodes
  every ``eval.freq`` env steps; tuning sets ``eval.freq = budget // 5`` unless ``--set``),
  reported at its env steps. **Trial value**: the score of the final evaluation
  (``eval.final_episodes`` episodes) at the end of the budget. A ``linear`` learning-rate
  schedule decays over the budget, not over the config's ``train.total_timesteps``.
- **Pruner** ``median``: Optuna's MedianPruner (5 startup trials, no pruning before a third of
  the budget): a trial below the median of the earlier trials at the same step stops at once.
  ``none`` never prunes; an Optuna pruner object may be passed to `tune`.
- **Sampler**: TPE, seeded with ``seed`` + the trial's number, so a serial tuning is
  reproducible and concurrent workers never share a seed.
- **Rejected** combinations: a sampled combination that the config refuses (e.g. ``batch_size >
  n_steps x n_envs``, or a core keyword value the core refuses) is pruned before it trains; the
  reason is the trial's user attribute ``rejected``.
- **Failed** trials: an exception in a trial is recorded (state FAIL, user attribute ``error``)
  and the tuning goes on.

Storage and resuming: ``--storage`` is an SQLAlchemy URL (default ``sqlite:///<out>/study.db``) or
``journal:PATH`` (Optuna's journal file, for many processes on one file system). The study is
named after the config; rerunning the same command continues it: ``--trials N`` is the number
of complete, pruned or running trials the study should hold, so finished trials are never rerun
and failed or interrupted ones are topped up. Several invocations on one storage share the
study (two that check the count at the same moment can end one trial above N). Ctrl-C records
the running trial as failed; a trial whose process is killed stays "running" until an SQL
storage's heartbeat (60 s, grace 180 s) fails it (the journal storage has no heartbeat). ``--workers N`` runs N trials at a time in local
processes; ``--backend ray`` runs each trial as a Ray task (`agents.parallel`; on a cluster the
storage must be a URL or journal path every node reaches).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
import yaml

from agents.callbacks import EvalSummary
from agents.config import Config, ConfigError, load_config
from agents.io import write_text
from agents.parallel import check_backend, run_jobs
from agents.preflight import preflight
from agents.search_space import SearchSpace, load_space
from agents.train import train
from agents.tuning_report import BEST_CONFIG_FILE, trial_states, write_report

REWARD_WEIGHT = 1e-3  # weight of the bounded reward term in the score: a tie-break only
SCORE_TEXT = f"success rate + {REWARD_WEIGHT:g} x r / (1 + |r|), r the mean episode reward"
EVALUATIONS_PER_TRIAL = 5  # periodic evaluations per trial unless eval.freq is set
TRIALS_DIR = "trials"
PRUNERS = ("median", "none")
HEARTBEAT_S, GRACE_S = 60, 180  # SQL storages: a trial silent this long is failed as stale
COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)


def score(summary: EvalSummary) -> float:
    """Success rate plus a reward tie-break bounded to (-1e-3, 1e-3) (see the module docstring)."""
    reward = summary.mean_reward
    return summary.success_rate + REWARD_WEIGHT * reward / (1.0 + abs(reward))


def open_storage(spec: str) -> optuna.storages.BaseStorage:
    """``journal:PATH`` -> Optuna's journal file; anything else an SQLAlchemy URL (with heartbeat)."""
    if spec.startswith("journal:"):
        path = Path(spec.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    engine = {"connect_args": {"timeout": 60}} if spec.startswith("sqlite") else {}  # s: wait for other writers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(spec, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S,
                                          grace_period=GRACE_S)


def make_pruner(pruner: str | optuna.pruners.BasePruner, budget: int) -> optuna.pruners.BasePruner:
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=budget // 3)
    if pruner == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"unknown pruner {pruner!r}; allowed: {', '.join(PRUNERS)} or an optuna pruner")


@dataclass(frozen=True)
class TrialJob:
    """What a worker needs to run one trial against the shared study (picklable)."""

    config: str
    overrides: tuple[str, ...]  # the tuning settings and the user's, before the sampled keys
    space: SearchSpace
    storage: str
    study_name: str
    trials: int
    seed: int
    pruner: Any
    budget: int
    out_dir: Path


def counted_trials(study: optuna.Study) -> int:
    """Trials that count towards ``--trials``: complete, pruned and running (not failed)."""
    return len(study.get_trials(deepcopy=False, states=COUNTED))


def run_trial(job: TrialJob) -> None:
    """Run one trial of the study, unless it already holds ``job.trials``."""
    study = optuna.load_study(study_name=job.study_name, storage=open_storage(job.storage),
                              pruner=make_pruner(job.pruner, job.budget))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # trials of killed processes stop counting
    if counted_trials(study) >= job.trials:
        return
    study.optimize(lambda trial: objective(trial, job), n_trials=1, catch=(Exception,))


def objective(trial: optuna.Trial, job: TrialJob) -> float:
    """Train one sampled config for the budget; report every periodic evaluation to the pruner."""
    # Optuna samples at the first suggest: seeding by the number the storage gave this trial makes a
    # serial tuning reproducible and keeps concurrent workers from drawing with one seed.
    trial.study.sampler = optuna.samplers.TPESampler(seed=job.seed + trial.number)
    trial.set_user_attr("pid", os.getpid())
    values = job.space.sample(trial)
    try:
        config = load_config(job.config, [*job.overrides, *job.space.overrides(values)])
        preflight(config)
    except ConfigError as error:
        trial.set_user_attr("rejected", str(error))
        raise optuna.TrialPruned(f"rejected by the config: {error}") from None

    def report(timesteps: int, summary: EvalSummary) -> None:
        trial.report(score(summary), timesteps)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {timesteps:,} (score {score(summary):.3f})")

    try:
        result = train(config, job.out_dir / TRIALS_DIR / f"{trial.number:04d}",
                       log=lambda line: print(f"[trial {trial.number}] {line}", flush=True), on_evaluation=report)
    except optuna.TrialPruned:
        raise
    except Exception as error:
        trial.set_user_attr("error", f"{type(error).__name__}: {error}")
        raise
    final = result.final
    trial.set_user_attr("success_rate", final.success_rate)
    trial.set_user_attr("mean_reward", final.mean_reward)
    trial.set_user_attr("timesteps", result.timesteps)
    return score(final)


@dataclass
class TuneResult:
    """What a tuning produced (``best_*`` are None while no trial is complete)."""

    out_dir: Path
    study_name: str
    storage: str
    states: dict[str, int]  # trials per Optuna state name
    best_trial: int | None
    best_value: float | None
    best_overrides: list[str]  # the user's overrides + the best trial's keys (no tuning settings)
    best_config: Path | None  # best.yaml: `liquid-drones train --config` takes it
    seconds: float


def tuning_settings(budget: int) -> list[str]:
    """The overrides every trial starts from (the user's ``--set`` come after and win)."""
    # Every trial trains its whole budget (equal effort): no stop at a success target.
    return [f"eval.freq={max(1, budget // EVALUATIONS_PER_TRIAL)}", "checkpoint.freq=0", "train.progress_bar=false",
            "train.stop_at_success=null"]


def study_settings(config: str, overrides: list[str], budget: int, space: SearchSpace) -> dict[str, Any]:
    """What fixes a study (stored as JSON in its user attributes); a rerun that changes any of it is refused."""
    return {"config": config, "overrides": list(overrides), "budget": budget,
            "space": [dataclasses.asdict(p) for p in space.params]}


def open_study(storage: str, name: str, settings: dict[str, Any]) -> optuna.Study:
    """Create the study, or load it after checking it was started with the same settings."""
    study = optuna.create_study(study_name=name, storage=open_storage(storage), direction="maximize",
                                load_if_exists=True)
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", settings)
    else:
        changed = [key for key in settings if stored.get(key) != json.loads(json.dumps(settings[key]))]
        if changed:
            raise ConfigError(f"study {name!r} in {storage} was started with another {', '.join(changed)} "
                              f"({', '.join(f'{k}={stored.get(k)!r}' for k in changed)}); rerun with the same "
                              f"settings to continue it, or pick another --out / --storage")
    return study


def tune(
    config_name_or_path: str,
    overrides: list[str] | tuple[str, ...] = (),
    trials: int = 40,
    budget: int | None = None,
    out_dir: str | Path | None = None,
    storage: str | None = None,
    workers: int = 1,
    backend: str = "local",
    address: str | None = None,
    space: str | Path | None = None,
    seed: int = 0,
    *,
    pruner: str | optuna.pruners.BasePruner = "median",
    study_name: str | None = None,
    log: Callable[[str], None] = print,
) -> TuneResult:
    """Tune ``config_name_or_path`` with ``trials`` trials of ``budget`` env steps each.

    :param overrides: ``key=value`` settings kept fixed in every trial (and in best.yaml)
    :param budget: env steps per trial (default: the config's ``train.total_timesteps``)
    :param out_dir: default ``runs/tune-<config>``; rerunning with the same folder continues
    :param storage: SQLAlchemy URL or ``journal:PATH`` (default ``sqlite:///<out>/study.db``)
    :param workers: trials at a time (local processes, or Ray CPUs of a local Ray instance)
    :param backend: ``local`` or ``ray`` (with ``address``: that Ray cluster)
    :param space: search space YAML (default `agents.search_space.DEFAULT_SPACE`)
    :raise ConfigError: on a bad config, override, space entry or setting, before any trial runs
    """
    started = time.time()
    if backend not in ("local", "ray"):
        raise ConfigError(f"backend {backend!r}: allowed backends for tune: local, ray")
    try:
        check_backend(backend, address)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    base = load_config(config_name_or_path, list(overrides))
    preflight(base)
    budget = base.train.total_timesteps if budget is None else budget
    for name, value in (("trials", trials), ("budget", budget), ("workers", workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"--{name} must be an integer >= 1, got {value!r}")
    if base.eval.final_episodes < 1:
        raise ConfigError("eval.final_episodes must be >= 1 for tuning: a trial's value is its final evaluation")
    pruner_name = type(make_pruner(pruner, budget)).__name__
    search = load_space(space, base)
    if any(p.key == "train.total_timesteps" for p in search.params):
        raise ConfigError("search space entry 'train.total_timesteps': the env steps of a trial are --budget, "
                          "the same for every trial; remove the entry")
    trial_overrides = (*tuning_settings(budget), *overrides, f"train.total_timesteps={budget}")
    load_config(config_name_or_path, list(trial_overrides))

    label = Path(config_name_or_path).stem if config_name_or_path.endswith((".yaml", ".yml")) else config_name_or_path
    out = Path(out_dir) if out_dir is not None else Path("runs") / f"tune-{label}"
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    name = study_name or f"tune-{label}"
    study = open_study(storage, name, study_settings(config_name_or_path, list(overrides), budget, search))

    remaining = max(0, trials - counted_trials(study))
    log(f"tuning {config_name_or_path}: {remaining} of {trials} trials to run ({budget:,} env steps each), "
        f"study {name!r} in {storage} -> {out}")
    job = TrialJob(config_name_or_path, trial_overrides, search, storage, name, trials, seed, pruner, budget, out)
    run_jobs(run_trial, [job] * remaining, on_result=lambda _job, _none: None,
             on_error=lambda _job, error: log(f"a trial's worker failed: {error}"),
             backend="serial" if backend == "local" and workers == 1 else backend,
             workers=workers, address=address, desc="trials", unit="trial")
    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    return write_outputs(study, base, config_name_or_path, list(overrides), search, budget, out, storage,
                         pruner_name, started, log)


def write_outputs(study: optuna.Study, base: Config, config: str, overrides: list[str], space: SearchSpace,
                  budget: int, out: Path, storage: str, pruner: str, started: float,
                  log: Callable[[str], None] = print) -> TuneResult:
    """best.yaml, then trials.csv (+ .json), history.png, importance.png and report.md
    (`agents.tuning_report`) in ``out``."""
    trials = study.get_trials(deepcopy=False)
    states = trial_states(trials)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value) if complete else None
    best_overrides, best_path = list(overrides), None
    if best is not None:
        best_overrides += space.overrides(space.values_of(best.params))
        best_path = out / BEST_CONFIG_FILE
        tuned = load_config(config, best_overrides)
        write_text(best_path, f"# {config} tuned by `liquid-drones tune` (study {study.study_name!r}, trial "
                              f"{best.number}, score {best.value:.4f} at {budget:,} env steps per trial).\n"
                              f"# Train it: liquid-drones train --config {best_path}\n"
                   + yaml.safe_dump(tuned.to_dict(), sort_keys=False))
    write_report(study, best, base, space, out, f"{budget:,} env steps", SCORE_TEXT, pruner, storage)
    result = TuneResult(out, study.study_name, storage, states, best.number if best else None,
                        best.value if best else None, best_overrides, best_path, time.time() - started)
    log(f"tuned: {states}; best trial {result.best_trial} (score {result.best_value}) -> {best_path}")
    return result


def main(args: Any) -> None:
    """``liquid-drones tune`` (arguments: see agents/cli.py)."""
    try:
        tune(args.config, args.set, args.trials, args.budget, args.out, args.storage, args.workers, args.backend,
             args.address, args.space, args.seed, pruner=args.pruner, study_name=args.study_name)
    except ConfigError as error:
        sys.exit(f"error: {error}")
