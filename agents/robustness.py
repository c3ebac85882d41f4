"""The analysis of a stress test: per-level metrics, robustness, paired intervals, report and plot.

From the episode rows of a `agents.stress.Sweep` it writes:

- ``results.csv``: one row per agent, axis and level: the `agents.metrics.Summary` metrics
  (success with its Wilson interval and the graded metrics: crash rate, final distance, time to
  goal, SPL);
- ``summary.json``: per agent, in-distribution success, per-axis robustness, mean OOD success
  and OOD drop with paired (Bayesian) bootstrap 95 % intervals, and differences to the first agent;
- ``robustness.png``: success against level, one panel per axis, one line per agent, Wilson
  95 % bands; ``report.md``: the same as tables.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from agents.flight import AgentSpec
from agents.io import write_json, write_rows, write_text
from agents.metrics import EpisodeResult, Summary, interval, ood_drop, ood_success, paired_bootstrap
from agents.report import markdown_table, percent, print_rows, pyplot, save_figure
from envs.disturbances import AXIS_LABELS, Disturbances

if TYPE_CHECKING:
    from agents.stress import Sweep

NOMINAL = "nominal"  # the axis name of the shared in-distribution level


class StressError(ValueError):
    """Bad stress-test input, reported before any episode is flown."""


def cell_of(row: dict[str, Any]) -> tuple[str, str, float | None]:
    level = row["level"]
    return row["agent"], row["axis"], None if level in ("", None) else float(level)


def nominal_level(axis: str, spec: AgentSpec) -> float:
    """The in-distribution value of ``axis`` for this agent."""
    if axis == "ctrl_rate":
        return float(spec.control_hz)
    return float(getattr(Disturbances(), axis))



# --- analysis --------------------------------------------------------------------------------
def _results_by_cell(sweep: Sweep, rows: list[dict[str, str]]) -> dict[tuple, list[EpisodeResult]]:
    cells: dict[tuple, dict[int, EpisodeResult]] = defaultdict(dict)
    for row in rows:  # complete rows only: `agents.io.RowLog.read` drops a line cut short
        result = EpisodeResult.from_row(row)
        cells[cell_of(row)][result.seed] = result
    missing = [cell for cell in (cell_of(job.tag) for job in sweep.jobs())
               if sorted(cells.get(cell, {})) != list(sweep.seeds)]
    if missing:
        raise StressError(f"episodes.csv lacks episodes of {len(missing)} level(s), e.g. {missing[0]}; "
                          f"rerun with --resume to fly them")
    return {cell: [by_seed[s] for s in sweep.seeds] for cell, by_seed in cells.items()}


def analyse(sweep: Sweep, rows: list[dict[str, str]], out_dir: Path,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """results.csv, summary.json, robustness.png and report.md from the episode rows."""
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
                "crash_rate": [row["crash_rate"] for row in axis_rows],
                "final_distance_m": [row["final_distance_m"] for row in axis_rows],
                "time_to_goal_s": [row["time_to_goal_s"] for row in axis_rows],
                "pushed_rate": [row["pushed_rate"] for row in axis_rows],
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
    write_json(out_dir / "summary.json", summary)
    plot_robustness(summary, out_dir / "robustness.png")
    write_text(out_dir / "report.md", report(summary))
    print_rows(overview_rows(summary), f"stress test: {sweep.agents[0].env_id}, {sweep.episodes} episodes per level")
    errors = sum(entry["errors"] for entry in summary["agents"].values())
    if errors:
        log(f"warning: {errors} episode(s) raised and count as failures; their messages are in the "
            f"error column of {out_dir / 'episodes.csv'}")
    log(f"wrote {out_dir}/results.csv, summary.json, robustness.png, report.md")
    if errors == len(rows):
        raise StressError(f"every one of the {errors} episodes raised: there is no result; see the error column "
                          f"of {out_dir / 'episodes.csv'}")
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
        "(`agents.metrics.paired_bootstrap`). Episodes that raised count as failures. Each level's "
        "cell also gives the graded metrics, so a near miss and a crash differ: crash rate, mean "
        "final distance to the goal (m) and mean time to goal of the successful episodes (s).",
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
                    text += (f"<br>crash {100 * a['crash_rate'][i]:.0f} %, {a['final_distance_m'][i]:.2f} m"
                             + (f", {a['time_to_goal_s'][i]:.1f} s" if not math.isnan(a["time_to_goal_s"][i]) else "")
                             + (f", pushed {100 * a['pushed_rate'][i]:.0f} %" if axis == "push" else ""))
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


MARKERS = "osD^vP*Xh<>"  # one per agent, so that agents stay apart without colour


def plot_robustness(summary: dict[str, Any], path: Path) -> None:
    """robustness.png: `robustness_figure` of a stress test's summary."""
    save_figure(robustness_figure(summary), path)


def robustness_figure(summary: dict[str, Any]) -> Any:
    """Success against level, one panel per axis, one line per agent with its Wilson 95 % interval
    as error bars. Agents differ by colour and marker and are set side by side around each level,
    so equal lines and overlapping intervals stay visible; the x ticks are the levels flown. The
    legend and the wrapped caption get their own room above and below the panels."""
    import textwrap

    plt = pyplot()
    axes = list(summary["settings"]["levels"])
    agents = list(summary["agents"].items())
    ncols = min(4, len(axes))
    nrows = math.ceil(len(axes) / ncols)
    width = max(3.8 * ncols, 7.0)
    settings = summary["settings"]
    caption = textwrap.fill(
        f"{settings['env']}: success vs disturbance level ({settings['episodes']} paired episodes per level). "
        f"Bars: Wilson 95 % intervals; agents are drawn side by side around each level; dotted: nominal level.",
        width=int(13 * width))
    caption_in = 0.2 * (caption.count("\n") + 1) + 0.15
    longest = max((len(name) for name, _ in agents), default=1)
    legend_cols = max(1, min(len(agents), int(width / (0.08 * longest + 0.7))))  # ~0.08 in per character
    legend_in = 0.28 * math.ceil(len(agents) / legend_cols) + 0.1
    height = 3.0 * nrows + caption_in + legend_in
    fig, panels = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for panel, axis in zip(panels.flat, axes):
        levels = sorted({float(v) for _, entry in agents for v in entry["axes"][axis]["levels"]})
        spacing = min(np.diff(levels)) if len(levels) > 1 else 1.0
        for i, (name, entry) in enumerate(agents):
            a = entry["axes"][axis]
            offset = 0.0 if len(agents) == 1 else (i / (len(agents) - 1) - 0.5) * 0.4 * spacing
            x = np.array(a["levels"], dtype=float) + offset
            success, low, high = (100 * np.array(a[key], dtype=float) for key in ("success", "success_low", "success_high"))
            panel.errorbar(x, success, yerr=[success - low, high - success], fmt=f"{MARKERS[i % len(MARKERS)]}-",
                           color=colours[i % len(colours)], ms=5, lw=1.1, elinewidth=0.9, capsize=2.5, label=name)
        for nominal in {entry["axes"][axis]["nominal"] for _, entry in agents}:
            panel.axvline(nominal, color="0.4", ls=":", lw=0.9)
        panel.set_xticks(levels)
        panel.set(title=axis, xlabel=AXIS_LABELS[axis], ylim=(-3, 103))
        panel.grid(alpha=0.3)
    for panel in panels[:, 0]:
        panel.set_ylabel("success (%)")
    for panel in list(panels.flat)[len(axes):]:
        panel.set_visible(False)
    handles, labels = panels.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=legend_cols, frameon=False)
    fig.text(0.5, 0.01, caption, ha="center", va="bottom", fontsize=9)
    fig.tight_layout(rect=(0, caption_in / height, 1, 1 - legend_in / height))
    return fig


