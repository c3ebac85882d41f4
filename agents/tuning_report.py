"""What a tuning leaves for a person: trials.csv, history.png, importance.png and report.md.

- trials.csv (+ trials.json): one row per trial: number, state, value, duration, the last
  evaluated step and its intermediate value, every tuned key, the final success rate and mean
  reward, and a note (why a trial was rejected or failed).
- history.png: every trial's score (pruned trials at their last evaluation, failed ones as ticks
  at zero) and the best score so far.
- importance.png: PED-ANOVA importance of each key over the complete trials (Optuna's
  ``PedAnovaImportanceEvaluator``, which needs no scikit-learn; fANOVA and mean decrease impurity
  need it), as shares of their total; not drawn with fewer than 3 complete trials.
- report.md: the trials by state, the score, sampler and pruner, the time per trial, the best
  trial's keys beside the untuned config's, the importances and both figures.
"""

from __future__ import annotations

import math
import statistics
import warnings
from pathlib import Path
from typing import Any

import optuna

from agents.config import Config
from agents.io import write_rows, write_text
from agents.report import bar_chart, markdown_table, pyplot, save_figure
from agents.search_space import SearchSpace

BEST_CONFIG_FILE = "best.yaml"


def write_report(study: optuna.Study, best: optuna.trial.FrozenTrial | None, base: Config, space: SearchSpace,
                 out: Path, budget: str, score_text: str, pruner: str, storage: str) -> None:
    """trials.csv (+ .json), history.png, importance.png (when computable) and report.md in ``out``.

    :param budget: the budget per trial as text (``"50,000 env steps"``)
    :param score_text: the definition of a trial's score
    """
    trials = study.get_trials(deepcopy=False)
    write_rows([trial_row(t, space) for t in trials], out, "trials")
    plot_history(trials, out / "history.png", study.study_name)
    importances = param_importances(study)
    if importances:
        bar_chart(out / "importance.png", list(importances), list(importances.values()),
                  "importance (PED-ANOVA, share of the total)", f"{study.study_name}: what moved the score")
    write_text(out / "report.md", "\n".join(report_lines(study, trials, best, base, space, budget, score_text,
                                                         pruner, storage, importances)) + "\n")


def trial_states(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """Trials per Optuna state name (``{"COMPLETE": 3, "PRUNED": 1}``), states with none left out."""
    return {state.name: sum(t.state == state for t in trials) for state in optuna.trial.TrialState
            if any(t.state == state for t in trials)}


def trial_row(trial: optuna.trial.FrozenTrial, space: SearchSpace) -> dict[str, Any]:
    """One line of trials.csv: number, state, value, duration, the sampled keys, then the notes."""
    steps = sorted(trial.intermediate_values)
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "duration_s": round(trial.duration.total_seconds(), 1) if trial.duration else None,
        "last_evaluated_step": steps[-1] if steps else None,
        "last_intermediate": trial.intermediate_values[steps[-1]] if steps else None,
        **{p.key: trial.params.get(p.key) for p in space.params},
        "success_rate": trial.user_attrs.get("success_rate"),
        "mean_reward": trial.user_attrs.get("mean_reward"),
        "note": trial.user_attrs.get("rejected") or trial.user_attrs.get("error")
        or trial.system_attrs.get("fail_reason", ""),
    }


def param_importances(study: optuna.Study) -> dict[str, float]:
    """PED-ANOVA importances over the complete trials (Optuna's evaluator that needs no
    scikit-learn); empty with fewer than 3 complete trials or when Optuna cannot compute them."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 3:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}
    total = sum(found.values())
    return {key: value / total for key, value in found.items()} if total > 0 else {}


def plot_history(trials: list[optuna.trial.FrozenTrial], path: Path, title: str) -> None:
    """Score per trial (complete: dots; pruned: last intermediate score, crosses; failed: ticks at
    the bottom) and the best score so far."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    states = optuna.trial.TrialState
    complete = [t for t in trials if t.state == states.COMPLETE]
    pruned = [t for t in trials if t.state == states.PRUNED and t.intermediate_values]
    failed = [t for t in trials if t.state == states.FAIL]
    if complete:
        ax.plot([t.number for t in complete], [t.value for t in complete], "o", color="tab:blue", label="complete")
        best, line = -math.inf, []
        for t in complete:
            best = max(best, t.value)
            line.append(best)
        ax.step([t.number for t in complete], line, where="post", color="tab:green", label="best so far")
    if pruned:
        ax.plot([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                "x", color="grey", label="pruned (last evaluation)")
    if failed:
        ax.plot([t.number for t in failed], [0.0] * len(failed), "|", color="tab:red", ms=12, label="failed")
    ax.set(xlabel="trial", ylabel="score (success rate + reward tie-break)", title=f"{title}: optimisation history")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if complete or pruned or failed:
        ax.legend(loc="best")
    fig.tight_layout()
    save_figure(fig, path)


def dotted(data: dict[str, Any], key: str) -> Any:
    """``data["a"]["b"]`` for ``"a.b"``; None where a part is missing."""
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def report_lines(study: optuna.Study, trials: list[optuna.trial.FrozenTrial], best: Any, base: Config,
                 space: SearchSpace, budget: str, score_text: str, pruner: str, storage: str,
                 importances: dict[str, float]) -> list[str]:
    """The lines of report.md."""
    states = trial_states(trials)
    durations = [t.duration.total_seconds() / 60 for t in trials
                 if t.state == optuna.trial.TrialState.COMPLETE and t.duration]
    rejected = sum("rejected" in t.user_attrs for t in trials)
    lines = [
        f"# Tuning: {study.study_name}",
        "",
        f"- {len(trials)} trials of {budget} each: "
        + ", ".join(f"{count} {state.lower()}" for state, count in states.items())
        + (f" ({rejected} pruned untrained: combination rejected by the config)" if rejected else ""),
        f"- score: {score_text}; value = final evaluation ({base.eval.final_episodes} episodes), pruning on "
        f"the periodic evaluations",
        f"- sampler TPE (seeded), pruner {pruner}; storage `{storage}`",
        f"- time per complete trial: median {statistics.median(durations):.1f} min" if durations
        else "- no complete trial yet",
        "",
    ]
    if best is not None:
        values = space.values_of(best.params)
        lines += [f"## Best: trial {best.number}, score {best.value:.4f} (success "
                  f"{100 * best.user_attrs.get('success_rate', math.nan):.0f} %, mean reward "
                  f"{best.user_attrs.get('mean_reward', math.nan):.1f})", ""]
        lines += markdown_table(["key", "tuned", "untuned config"],
                                [[key, value, dotted(base.to_dict(), key)] for key, value in values.items()])
        lines += ["", f"Train it: `liquid-drones train --config {BEST_CONFIG_FILE}` (written beside this report).", ""]
    if importances:
        lines += ["## Parameter importance (PED-ANOVA over the complete trials)", ""]
        lines += markdown_table(["key", "importance"], [[k, f"{v:.2f}"] for k, v in importances.items()])
        lines += ["", "![importance](importance.png)", ""]
    lines += ["![history](history.png)"]
    return lines
