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
- ``results.csv``: one row per agent, axis and level: the `agents.metrics.Summary` metrics;
- ``summary.json``: per agent, in-distribution success, per-axis robustness, mean OOD success
  and OOD drop with paired (Bayesian) bootstrap 95 % intervals, and differences to the first agent;
- ``robustness.png``: success against level, one panel per axis, one line per agent, Wilson
  95 % bands; ``report.md``: the same as tables.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from agents.evaluate import (
    DEFAULT_BATCH,
    DEFAULT_EPISODES,
    DEFAULT_SEED,
    AgentSpec,
    FlightJob,
    env_axes,
    run_flight_jobs,
)
from agents.metrics import (
    EPISODE_COLUMNS,
    EpisodeResult,
    Summary,
    interval,
    ood_drop,
    ood_success,
    paired_bootstrap,
)
from agents.parallel import RowLog
from agents.reporting import print_rows, write_rows
from envs.disturbances import AXES, AXIS_LABELS, DEFAULT_LEVELS, Disturbances

NOMINAL = "nominal"  # the axis name of the shared in-distribution level
TAG_COLUMNS = ("agent", "axis", "level")


class StressError(ValueError):
    """Bad stress-test input, reported before any episode is flown."""


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
            try:
                Disturbances.level(axis, value)
            except ValueError as error:
                raise StressError(f"level {axis}={value}: {error}") from None
    return levels


def nominal_level(axis: str, spec: AgentSpec) -> float:
    """The in-distribution value of ``axis`` for this agent."""
    if axis == "ctrl_rate":
        return float(spec.control_hz)
    return float(getattr(Disturbances(), axis))


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


def _cell(row: dict[str, Any]) -> tuple[str, str, float | None]:
    level = row["level"]
    return row["agent"], row["axis"], None if level in ("", None) else float(level)


def _complete_cells(rows: list[dict[str, str]], seeds: Sequence[int]) -> dict[tuple, list[dict[str, str]]]:
    """Rows of the cells whose every seed has a full, error-free row (resumable work)."""
    cells: dict[tuple, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        if None not in row.values():  # a line cut short by an interruption is dropped
            cells[_cell(row)].append(row)
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
    """Fly the sweep into ``out_dir`` (see the module docstring) and return the summary."""
    from agents.checkpoint import atomic_write

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
        log_rows = RowLog(csv_path.with_suffix(".csv.tmp"), columns)
        log_rows.write(row for cell_rows in done.values() for row in cell_rows)
        log_rows.path.replace(csv_path)
        jobs = [job for job in jobs if _cell(job.tag) not in done]
        log(f"resuming {out_dir}: {len(done)} level(s) already flown, {len(jobs)} to go")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(settings_path, lambda p: p.write_text(json.dumps(settings, indent=1)))
    episode_log = RowLog(csv_path, columns, append=resume)
    run_flight_jobs(jobs, episode_log, backend, workers, address, desc="stress")
    return analyse(sweep, RowLog.read(csv_path), out_dir, log)


# --- analysis --------------------------------------------------------------------------------
def _results_by_cell(sweep: Sweep, rows: list[dict[str, str]]) -> dict[tuple, list[EpisodeResult]]:
    cells: dict[tuple, dict[int, EpisodeResult]] = defaultdict(dict)
    for row in rows:
        if None not in row.values():
            result = EpisodeResult.from_row(row)
            cells[_cell(row)][result.seed] = result
    missing = [cell for cell in (_cell(job.tag) for job in sweep.jobs())
               if sorted(cells.get(cell, {})) != list(sweep.seeds)]
    if missing:
        raise StressError(f"episodes.csv lacks episodes of {len(missing)} level(s), e.g. {missing[0]}; "
                          f"rerun with --resume to fly them")
    return {cell: [by_seed[s] for s in sweep.seeds] for cell, by_seed in cells.items()}


def analyse(sweep: Sweep, rows: list[dict[str, str]], out_dir: Path,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """results.csv, summary.json, robustness.png and report.md from the episode rows."""
    from agents.checkpoint import atomic_write

    cells = _results_by_cell(sweep, rows)

    def results(spec: AgentSpec, axis: str, level: float | None) -> list[EpisodeResult]:
        if axis == NOMINAL or level == nominal_level(axis, spec):
            return cells[(spec.name, NOMINAL, None)]
        return cells[(spec.name, axis, level)]

    table = []
    for spec in sweep.agents:
        for axis in [NOMINAL, *sweep.levels]:
            levels = [None] if axis == NOMINAL else sweep.curve_levels(spec, axis)
            for level in levels:
                in_distribution = axis == NOMINAL or level == nominal_level(axis, spec)
                summary = Summary.of(results(spec, axis, level))
                table.append({"agent": spec.name, "axis": axis, "level": "" if level is None else level,
                              "in_distribution": in_distribution, **summary.as_dict()})

    # One outcome matrix for every agent and level, so that one seed resampling serves all
    # intervals, including differences between agents.
    columns: list[list[EpisodeResult]] = []
    layout: dict[str, tuple[int, list[list[int]]]] = {}
    for spec in sweep.agents:
        nominal_column = len(columns)
        columns.append(results(spec, NOMINAL, None))
        groups = []
        for axis in sweep.levels:
            groups.append([])
            for level in sweep.off_nominal(spec, axis):
                groups[-1].append(len(columns))
                columns.append(results(spec, axis, level))
        layout[spec.name] = (nominal_column, groups)
    outcomes = np.array([[r.success for r in column] for column in columns], dtype=float)
    rates, resampled = outcomes.mean(axis=1), paired_bootstrap(outcomes)

    summary: dict[str, Any] = {"settings": sweep.settings(), "agents": {}}
    reference = sweep.agents[0].name
    for spec in sweep.agents:
        nominal_column, groups = layout[spec.name]
        ood_point, ood_samples = ood_success(rates, groups), ood_success(resampled, groups)
        nominal_summary = Summary.of(columns[nominal_column])
        entry = {
            "in_distribution": nominal_summary.as_dict(),
            "mean_ood_success": float(ood_point),
            "mean_ood_interval": interval(ood_samples, ood_point),
            "ood_drop": float(ood_drop(rates[nominal_column], ood_point)),
            "ood_drop_interval": interval(ood_drop(resampled[:, nominal_column], ood_samples),
                                          ood_drop(rates[nominal_column], ood_point)),
            "errors": sum(r.error != "" for c in [nominal_column, *(c for g in groups for c in g)]
                          for r in columns[c]),
            "axes": {},
        }
        for axis, group in zip(sweep.levels, groups):
            axis_rows = [row for row in table if row["agent"] == spec.name and row["axis"] == axis]
            entry["axes"][axis] = {
                "levels": [row["level"] for row in axis_rows],
                "success": [row["success_rate"] for row in axis_rows],
                "success_low": [row["success_low"] for row in axis_rows],
                "success_high": [row["success_high"] for row in axis_rows],
                "nominal": nominal_level(axis, spec),
                "mean_success": float(np.mean([row["success_rate"] for row in axis_rows])),
                "ood_success": float(ood_success(rates, [group])) if group else math.nan,
            }
        if spec.name != reference:
            ref_nominal, ref_groups = layout[reference]
            nominal_difference = rates[nominal_column] - rates[ref_nominal]
            ood_difference = ood_point - ood_success(rates, ref_groups)
            entry["vs_" + reference] = {
                "in_distribution_difference": float(nominal_difference),
                "in_distribution_interval": interval(resampled[:, nominal_column] - resampled[:, ref_nominal],
                                                     nominal_difference),
                "mean_ood_difference": float(ood_difference),
                "mean_ood_interval": interval(ood_samples - ood_success(resampled, ref_groups), ood_difference),
            }
        summary["agents"][spec.name] = entry

    write_rows(table, out_dir, "results")
    atomic_write(out_dir / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=1, default=float)))
    plot_robustness(summary, out_dir / "robustness.png")
    atomic_write(out_dir / "report.md", lambda p: p.write_text(report(summary)))
    print_rows(overview_rows(summary), f"stress test: {sweep.agents[0].env_id}, {sweep.episodes} episodes per level")
    errors = sum(entry["errors"] for entry in summary["agents"].values())
    if errors:
        log(f"warning: {errors} episode(s) raised and count as failures; their messages are in the "
            f"error column of {out_dir / 'episodes.csv'}")
    log(f"wrote {out_dir}/results.csv, summary.json, robustness.png, report.md")
    return summary


def overview_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per agent: in-distribution success, mean OOD success, OOD drop (with intervals)."""
    rows = []
    for name, entry in summary["agents"].items():
        nominal = entry["in_distribution"]
        rows.append({
            "agent": name,
            "in-dist. success": percent(nominal["success_rate"], nominal["success_low"], nominal["success_high"]),
            "mean OOD success": percent(entry["mean_ood_success"], *entry["mean_ood_interval"]),
            "OOD drop": percent(entry["ood_drop"], *entry["ood_drop_interval"], signed=True),
            **{axis: f"{100 * a['ood_success']:.0f} %" for axis, a in entry["axes"].items()
               if not math.isnan(a["ood_success"])},
            "errors": entry["errors"],
        })
    return rows


def percent(value: float, low: float, high: float, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{100 * value:{sign}.0f} % [{100 * low:{sign}.0f}, {100 * high:{sign}.0f}]"


def _level_text(level: Any) -> str:
    return f"{float(level):g}"


def report(summary: dict[str, Any]) -> str:
    """The stress test as Markdown: settings, overview, differences, one table per axis."""
    settings, agents = summary["settings"], summary["agents"]
    names = list(agents)
    first, last = settings["seeds"]
    lines = [
        f"# Stress test on {settings['env']}",
        "",
        f"Agents: {', '.join(names)}. {settings['episodes']} episodes per level, seeds {first}-{last}, "
        f"the same for every agent and level (paired). Actions: "
        f"{'deterministic (policy mean)' if settings['deterministic'] else 'sampled'}.",
        "",
        "Success rates with Wilson 95 % intervals; mean OOD success = mean over axes of the mean "
        "success over the axis's off-nominal levels; OOD drop = in-distribution success - mean OOD "
        "success; their intervals (and those of differences) are 95 % intervals of a Bayesian "
        "bootstrap over seeds, paired across agents and levels, with Jeffreys marginals "
        "(`agents.metrics.paired_bootstrap`). Episodes that raised count as failures.",
        "",
        "![robustness](robustness.png)",
        "",
        "## Overview",
        "",
    ]
    overview = overview_rows(summary)
    lines += markdown_table(list(overview[0]), [list(row.values()) for row in overview])
    reference = names[0]
    others = [n for n in names[1:] if f"vs_{reference}" in agents[n]]
    if others:
        lines += ["", f"## Differences to {reference} (paired)", ""]
        body = []
        for name in others:
            d = agents[name][f"vs_{reference}"]
            body.append([name, percent(d["in_distribution_difference"], *d["in_distribution_interval"], signed=True),
                         percent(d["mean_ood_difference"], *d["mean_ood_interval"], signed=True)])
        lines += markdown_table(["agent", "in-dist. success difference", "mean OOD success difference"], body)
        lines += ["", "An interval that excludes 0 is a difference these seeds support; one that "
                      "contains 0 is not evidence either way."]
    for axis in settings["levels"]:
        lines += ["", f"## {axis}: {AXIS_LABELS[axis]}", ""]
        levels = sorted({float(level) for name in names for level in agents[name]["axes"][axis]["levels"]})
        body = []
        for level in levels:
            cells = []
            for name in names:
                a = agents[name]["axes"][axis]
                if level in [float(v) for v in a["levels"]]:
                    i = [float(v) for v in a["levels"]].index(level)
                    text = percent(a["success"][i], a["success_low"][i], a["success_high"][i])
                    cells.append(text + (" (nominal)" if level == a["nominal"] else ""))
                else:
                    cells.append("")
            body.append([_level_text(level), *cells])
        body.append(["mean OOD", *(f"{100 * agents[n]['axes'][axis]['ood_success']:.0f} %" for n in names)])
        lines += markdown_table(["level", *names], body)
    if any(not a["run_dir"] for a in settings["agents"]):
        lines += ["", "Note: the PID expert reads the true simulator state, so observation noise and "
                      "observation latency do not reach it (action latency and every physical "
                      "disturbance do)."]
    return "\n".join(lines) + "\n"


def markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def plot_robustness(summary: dict[str, Any], path: Path) -> None:
    """Success against level, one panel per axis, one line (with its Wilson band) per agent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from agents.checkpoint import atomic_write

    axes = list(summary["settings"]["levels"])
    ncols = min(4, len(axes))
    nrows = math.ceil(len(axes) / ncols)
    fig, panels = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows + 0.6), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for panel, axis in zip(panels.flat, axes):
        for i, (name, entry) in enumerate(summary["agents"].items()):
            a = entry["axes"][axis]
            x = np.array(a["levels"], dtype=float)
            colour = colours[i % len(colours)]
            panel.plot(x, 100 * np.array(a["success"]), "o-", color=colour, ms=4, label=name)
            panel.fill_between(x, 100 * np.array(a["success_low"]), 100 * np.array(a["success_high"]),
                               color=colour, alpha=0.15, lw=0)
            panel.axvline(a["nominal"], color=colour, ls=":", lw=0.8)
        panel.set(title=axis, xlabel=AXIS_LABELS[axis], ylim=(-3, 103))
        panel.grid(alpha=0.3)
    for panel in panels[:, 0]:
        panel.set_ylabel("success (%)")
    for panel in list(panels.flat)[len(axes):]:
        panel.set_visible(False)
    handles, labels = panels.flat[0].get_legend_handles_labels()
    settings = summary["settings"]
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), frameon=False)
    fig.suptitle(f"{settings['env']}: success vs disturbance ({settings['episodes']} paired episodes per "
                 f"level; bands: Wilson 95 %; dotted: nominal)", y=0.005, va="bottom", fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 0.93))
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)


def timestamped_dir(root: Path, prefix: str) -> Path:
    """``root/<prefix>-<YYYYmmdd-HHMMSS>``: the default output folder of a verb."""
    return root / f"{prefix}-{datetime.now():%Y%m%d-%H%M%S}"


def sweep_from_args(args: Any) -> Sweep:
    """The `Sweep` of ``liquid-drones stress`` / ``compare`` arguments, validated."""
    from agents.evaluate import agents_from_args
    from agents.parallel import check_backend

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
    import sys

    try:
        sweep = sweep_from_args(args)
    except ValueError as error:
        sys.exit(f"error: {error}")
    out_dir = Path(args.out) if args.out else timestamped_dir(Path(args.root), "stress")
    try:
        run_sweep(sweep, out_dir, args.backend, args.workers, args.address, args.resume)
    except StressError as error:
        sys.exit(f"error: {error}")
