"""`liquid-drones compare`: trained runs side by side, from one paired stress test.

One row per agent: memory core, parameter count (the actor that flies, and everything trained),
in-distribution success, mean OOD success and OOD drop (with 95 % intervals), OOD success per
axis, training steps and training wall time. The numbers come from a stress test of all of them
at once (``--stress DIR`` to reuse one, otherwise one is flown into ``<out>/stress``), so every
agent was flown on the same seeds and levels.

Writes ``compare.csv`` + ``compare.json`` (the table), ``compare.md`` and ``compare.png``
(success in and out of distribution per agent; OOD success per axis as a heat map).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from agents.config import config_from_dict
from agents.flight import AgentSpec
from agents.io import timestamped_name, write_rows, write_text
from agents.lock import FolderLock, LockError
from agents.provenance import recorded
from agents.report import markdown_table, percent, print_rows, pyplot, save_figure
from agents.robustness import StressError
from agents.run import load_model
from agents.stress import Sweep, run_sweep, sweep_from_args


def training_wall_time_s(run_dir: Path) -> float:
    """Seconds spent in ``learn()``, from the TensorBoard event times of each (resumed) session.

    Each session's event file starts when learning starts and gets a record per rollout, so the
    span of its timestamps is that session's training time (NaN if the run logged none).
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    total, found = 0.0, False
    for path in sorted((run_dir / "tb").rglob("events.out.tfevents*")):
        times = [event.wall_time for event in EventFileLoader(str(path)).Load()]
        if times:
            total += max(times) - min(times)
            found = True
    return total if found else math.nan


def model_facts(spec: AgentSpec) -> dict[str, Any]:
    """Core, parameter counts and training steps of an agent (the expert has none)."""
    if spec.is_expert:
        return {"core": "PID expert", "actor_params": 0, "total_params": 0, "train_steps": 0,
                "train_minutes": math.nan}
    config = config_from_dict(spec.config)
    model = load_model(config, spec.model, spec.run_dir or spec.name)
    policy = model.policy
    actor_parts = [policy.mlp_extractor.policy_net, policy.action_net]
    actor_parts += [policy.lstm_actor] if hasattr(policy, "lstm_actor") else []
    count = lambda modules: sum(p.numel() for m in modules for p in m.parameters())  # noqa: E731
    return {
        "core": config.policy.core,
        "actor_params": count(actor_parts),
        "total_params": count([policy]),
        "train_steps": int(model.num_timesteps),
        "train_minutes": training_wall_time_s(Path(spec.run_dir)) / 60,
    }


def compare(
    sweep: Sweep,
    out_dir: Path,
    stress_dir: Path | None = None,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Compare the agents of ``sweep``; fly the sweep into ``out_dir/stress`` unless ``stress_dir``
    already holds a stress test of (at least) these agents."""
    lock = FolderLock(out_dir, "comparison folder", log)
    try:
        with recorded(out_dir, "compare", {"episodes": [sweep.seed, sweep.seed + sweep.episodes - 1]}):
            return _compare(sweep, out_dir, stress_dir, backend, workers, address, resume, log)
    finally:
        lock.release()


def _compare(sweep: Sweep, out_dir: Path, stress_dir: Path | None, backend: str, workers: int | None,
             address: str | None, resume: bool, log: Callable[[str], None]) -> list[dict[str, Any]]:
    if stress_dir is None:
        summary = run_sweep(sweep, out_dir / "stress", backend, workers, address, resume, log)
    else:
        summary = read_stress(stress_dir, sweep.agents)
    rows = []
    for spec in sweep.agents:
        entry = summary["agents"][spec.name]
        nominal = entry["in_distribution"]
        rows.append({
            "agent": spec.name,
            **model_facts(spec),
            "in_dist_success": nominal["success_rate"],
            "in_dist_low": nominal["success_low"],
            "in_dist_high": nominal["success_high"],
            "mean_ood_success": entry["mean_ood_success"],
            "mean_ood_low": entry["mean_ood_interval"][0],
            "mean_ood_high": entry["mean_ood_interval"][1],
            "ood_drop": entry["ood_drop"],
            **{f"ood_{axis}": a["ood_success"] for axis, a in entry["axes"].items()},
            "errors": entry["errors"],
        })
    write_rows(rows, out_dir, "compare")
    write_text(out_dir / "compare.md", markdown(rows, summary["settings"]))
    plot_compare(rows, summary["settings"], out_dir / "compare.png")
    print_rows([_display(row) for row in rows], "comparison")
    log(f"wrote {out_dir}/compare.csv, compare.md, compare.png")
    return rows


def read_stress(stress_dir: Path, agents: Sequence[AgentSpec]) -> dict[str, Any]:
    """The summary.json of a finished stress test that flew these very agents (same models)."""
    path = stress_dir / "summary.json"
    if not path.is_file():
        raise StressError(f"{stress_dir} holds no finished stress test (no summary.json); run "
                          f"`liquid-drones stress` into it first or drop --stress")
    summary = json.loads(path.read_text())
    flown = {agent["name"]: agent["model"] for agent in summary["settings"]["agents"]}
    missing = [spec.name for spec in agents if spec.name not in flown]
    if missing:
        raise StressError(f"the stress test in {stress_dir} did not fly {', '.join(missing)}; it holds "
                          f"{', '.join(flown)}")
    changed = [spec.name for spec in agents if flown[spec.name] != spec.key]
    if changed:
        raise StressError(f"the model of {', '.join(changed)} changed since the stress test in {stress_dir}; "
                          f"drop --stress to fly a new one")
    return summary


def _display(row: dict[str, Any]) -> dict[str, Any]:
    axes = {k[4:]: f"{100 * v:.0f} %" for k, v in row.items() if k.startswith("ood_") and k != "ood_drop"
            and not math.isnan(v)}
    return {
        "agent": row["agent"], "core": row["core"], "actor params": f"{row['actor_params']:,}",
        "in-dist.": percent(row["in_dist_success"], row["in_dist_low"], row["in_dist_high"]),
        "mean OOD": percent(row["mean_ood_success"], row["mean_ood_low"], row["mean_ood_high"]),
        "OOD drop": f"{100 * row['ood_drop']:+.0f} %", **axes,
        "steps": f"{row['train_steps']:,}",
        "train min": "" if math.isnan(row["train_minutes"]) else f"{row['train_minutes']:.1f}",
    }


def markdown(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    shown = [_display(row) for row in rows]
    first, last = settings["seeds"]
    lines = [f"# Comparison on {settings['env']}", "",
             f"{settings['episodes']} episodes per level, seeds {first}-{last}, identical for every agent "
             f"and level. Success with 95 % intervals (Wilson in distribution, paired Bayesian bootstrap for the "
             f"mean OOD success); per-axis columns: mean success over the axis's off-nominal levels; "
             f"actor params: the core and the action head (what flies).", "",
             "![comparison](compare.png)", ""]
    lines += markdown_table(list(shown[0]), [list(row.values()) for row in shown])
    return "\n".join(lines) + "\n"


def plot_compare(rows: list[dict[str, Any]], settings: dict[str, Any], path: Path) -> None:
    """Left: in-distribution and mean OOD success per agent; right: OOD success per axis."""
    plt = pyplot()
    names = [row["agent"] for row in rows]
    axes = [k[4:] for k in rows[0] if k.startswith("ood_") and k != "ood_drop"]
    fig, (bars, heat) = plt.subplots(1, 2, figsize=(5 + 1.2 * len(names) + 0.7 * len(axes), 4.2),
                                     gridspec_kw={"width_ratios": [1.2, max(1.0, 0.25 * len(axes))]})
    x = np.arange(len(names))
    for offset, key, label, colour in ((-0.2, "in_dist", "in distribution", "tab:blue"),
                                       (0.2, "mean_ood", "mean OOD", "tab:orange")):
        values = np.array([row[f"{key}_success"] for row in rows])
        low = np.array([row[f"{key}_low"] for row in rows])
        high = np.array([row[f"{key}_high"] for row in rows])
        bars.bar(x + offset, 100 * values, 0.4, color=colour, label=label,
                 yerr=100 * np.array([values - low, high - values]), capsize=3)
    bars.set_xticks(x, [f"{row['agent']}\n{row['core']}, {row['actor_params']:,} p" for row in rows],
                    fontsize=8)
    bars.set(ylabel="success (%)", ylim=(0, 105), title="success (95 % intervals)")
    bars.legend(loc="lower right", fontsize=8)
    grid = np.array([[row[f"ood_{axis}"] for axis in axes] for row in rows], dtype=float)
    image = heat.imshow(100 * grid, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
    heat.set_xticks(range(len(axes)), axes, rotation=35, ha="right", fontsize=8)
    heat.set_yticks(range(len(names)), names, fontsize=8)
    for (i, j), value in np.ndenumerate(grid):
        heat.text(j, i, "" if math.isnan(value) else f"{100 * value:.0f}", ha="center", va="center", fontsize=8)
    heat.set_title("OOD success per axis (%)")
    fig.colorbar(image, ax=heat, fraction=0.04)
    fig.suptitle(f"{settings['env']}, {settings['episodes']} paired episodes per level", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def main(args: Any) -> None:
    """``liquid-drones compare`` (arguments: see agents/cli.py)."""
    try:
        sweep = sweep_from_args(args)
        stress_dir = Path(args.stress) if args.stress else None
        if stress_dir is not None:
            read_stress(stress_dir, sweep.agents)
    except ValueError as error:
        sys.exit(f"error: {error}")
    out_dir = Path(args.out) if args.out else Path(args.root) / timestamped_name("compare")
    try:
        compare(sweep, out_dir, stress_dir, args.backend, args.workers, args.address, args.resume)
    except (StressError, LockError) as error:
        sys.exit(f"error: {error}")
    except OSError as error:
        sys.exit(f"error: cannot write the comparison: {error}")
