"""What a person reads: console tables, Markdown tables, percentages and the plots of single runs.

- `print_rows`: a table on the console, never narrower than `CONSOLE_WIDTH` (logs and CI are not
  terminals), with long cells folded rather than cut.
- `markdown_table`, `percent`: the pieces of every report.md.
- `pyplot()`: matplotlib on the headless Agg backend (the one place that sets it up);
  `save_figure` writes a PNG atomically and closes the figure.
- `plot_training_curve` (eval.csv of a run), `write_trajectories` (flown paths),
  `write_video` (rendered frames).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.io import atomic_write, replace_rows

CONSOLE_WIDTH = 160  # characters: the width of console tables when stdout is not a terminal


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def console() -> Any:
    """A rich Console at least `CONSOLE_WIDTH` wide (rich's default for a pipe or file is 80)."""
    from rich.console import Console

    terminal = Console()
    return terminal if terminal.is_terminal and terminal.width >= CONSOLE_WIDTH else Console(width=CONSOLE_WIDTH)


def bar_chart(path: Path, labels: Sequence[str], values: Sequence[float], xlabel: str, title: str,
              failed: Sequence[bool] | None = None, notes: Sequence[str] | None = None,
              failed_label: str = "did not reach the target") -> None:
    """A horizontal bar chart, one bar per label (top to bottom in the given order).

    Bars marked ``failed`` are drawn hatched and grey (with a legend entry ``failed_label``), so a
    run that stopped at its budget never looks like one that reached the target; ``notes`` are
    written at the end of the bars.
    """
    from matplotlib.patches import Patch

    plt = pyplot()
    failed = list(failed) if failed is not None else [False] * len(labels)
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(labels) + 1.4))
    rows = range(len(labels))[::-1]
    for row, value, miss in zip(rows, values, failed):
        ax.barh(row, value, color="0.8" if miss else "tab:blue", hatch="///" if miss else None,
                edgecolor="0.4" if miss else "tab:blue")
    for row, value, note in zip(rows, values, notes or []):
        ax.text(value, row, f" {note}", va="center", fontsize=8)
    ax.set_yticks(list(rows), list(labels))
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.margins(x=0.4 if notes else 0.05)  # room for the notes right of the longest bar
    if any(failed):
        fig.legend(handles=[Patch(facecolor="tab:blue", label="reached the target"),
                            Patch(facecolor="0.8", hatch="///", edgecolor="0.4", label=failed_label)],
                   loc="lower center", ncol=2, frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.35 / fig.get_figheight() if any(failed) else 0, 1, 1))
    save_figure(fig, path)


def print_rows(rows: Sequence[dict[str, Any]], title: str) -> None:
    """Print ``rows`` as a table on the console (cells are folded, never cut). The first column
    names the rows (a run, an agent) and is kept whole on one line; the others fold to make room."""
    from rich.table import Table

    columns = list(dict.fromkeys(key for row in rows for key in row))
    table = Table(title=title)
    for i, column in enumerate(columns):
        if i == 0:
            width = max(len(_format(row.get(column, ""))) for row in [{column: column}, *rows])
            table.add_column(column, no_wrap=True, min_width=width)
        else:
            table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_format(row.get(column, "")) for column in columns))
    console().print(table)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """The lines of a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _points(fraction: float, sign: str) -> str:
    """A fraction in percent, whole numbers except that a non-zero value never shows as 0."""
    value = 100 * fraction
    return f"{value:{sign}.1f}" if 0 < abs(value) < 0.5 else f"{value:{sign}.0f}"


def percent(value: float, low: float, high: float, signed: bool = False) -> str:
    """``"83 % [71, 91]"`` (``signed``: ``"+5 % [-2, +12]"``); ``"n/a"`` for NaN."""
    if value is None or math.isnan(value):
        return "n/a"
    sign = "+" if signed else ""
    return f"{_points(value, sign)} % [{_points(low, sign)}, {_points(high, sign)}]"


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 110) -> None:
    """Write ``fig`` as a PNG atomically and close it."""
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=dpi))
    pyplot().close(fig)


def plot_training_curve(rows: Sequence[dict[str, float]], png_path: Path, title: str) -> None:
    """Success and crash rate (left axis) and mean reward (right axis) against env steps."""
    if not rows:
        return
    plt = pyplot()
    steps = [r["timesteps"] for r in rows]
    fig, rates = plt.subplots(figsize=(7, 4))
    rates.plot(steps, [100 * r["success_rate"] for r in rows], "o-", color="tab:green", label="success %")
    rates.plot(steps, [100 * r["crash_rate"] for r in rows], "s-", color="tab:red", label="crash %")
    rates.set_xlabel("env steps")
    rates.set_ylabel("% of evaluation episodes")
    rates.set_ylim(-2, 102)
    reward = rates.twinx()
    reward.plot(steps, [r["mean_reward"] for r in rows], "--", color="tab:blue", label="mean reward")
    reward.set_ylabel("mean episode reward")
    handles = rates.get_legend_handles_labels()[0] + reward.get_legend_handles_labels()[0]
    rates.set_title(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))  # room below the axes: the legend never covers a curve
    fig.legend(handles, [h.get_label() for h in handles], loc="lower center", ncol=len(handles), frameon=False)
    save_figure(fig, png_path)


OUTCOME_MARKERS = {"success": "o", "crash": "X", "timeout": "s", "error": "d"}
MIN_HEIGHT_SPAN_M = 0.5  # the height axis of trajectories.png spans at least this much


def write_trajectories(flights: Sequence[Any], control_hz: float, out_dir: Path, title: str) -> None:
    """trajectories.csv (seed, outcome, step, x, y, z) and trajectories.png of `agents.flight.Flight`
    records that carry positions.

    The PNG has a top view and the height over time; each episode has its own colour and its
    outcome as the end marker. Goals are numbered in visiting order, a moving goal (Follow's
    target) is drawn as its dashed path, obstacles (Forest's trees) as circles of the episode's
    colour, and a steady wind as one arrow per episode with its speed in m/s.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle

    rows = [{"seed": f.result.seed, "outcome": f.outcome, "step": step, "x": x, "y": y, "z": z}
            for f in flights for step, (x, y, z) in enumerate(f.positions)]
    replace_rows(out_dir / "trajectories.csv", ["seed", "outcome", "step", "x", "y", "z"], rows)

    plt = pyplot()
    colours = plt.get_cmap("tab10").colors
    fig, (top, height) = plt.subplots(1, 2, figsize=(12, 5))
    episode_handles = []
    for i, f in enumerate(flights):
        colour = colours[i % len(colours)]
        p, goals = f.positions, np.array(f.goals)
        for x, y, radius in f.obstacles:
            top.add_patch(Circle((x, y), radius, facecolor=colour, edgecolor=colour, alpha=0.25, lw=0.5))
        if f.goal_path is not None and len(np.unique(f.goal_path, axis=0)) > len(goals):  # a moving goal
            top.plot(f.goal_path[:, 0], f.goal_path[:, 1], "--", color=colour, lw=0.9, alpha=0.7)
            height.plot(np.arange(len(f.goal_path)) / control_hz, f.goal_path[:, 2], "--", color=colour, lw=0.8)
        else:
            top.plot(goals[:, 0], goals[:, 1], ":", color=colour, lw=0.6, alpha=0.7)
            for number, (x, y, _) in enumerate(goals, start=1):
                top.annotate(str(number), (x, y), color=colour, fontsize=8, fontweight="bold", ha="center",
                             va="center", bbox={"boxstyle": "circle,pad=0.15", "fc": "white", "ec": colour, "lw": 0.8})
            height.axhline(goals[-1, 2], color=colour, ls=":", lw=0.6, alpha=0.6)
        top.plot(p[:, 0], p[:, 1], color=colour, lw=1.2, alpha=0.9)
        top.plot(p[0, 0], p[0, 1], "^", color=colour, ms=6)
        top.plot(p[-1, 0], p[-1, 1], OUTCOME_MARKERS[f.outcome], color=colour, ms=7, mec="black", mew=0.6)
        height.plot(np.arange(len(p)) / control_hz, p[:, 2], color=colour, lw=1.2, alpha=0.9)
        height.plot((len(p) - 1) / control_hz, p[-1, 2], OUTCOME_MARKERS[f.outcome], color=colour, ms=7,
                    mec="black", mew=0.6)
        episode_handles.append(Line2D([], [], color=colour, marker=OUTCOME_MARKERS[f.outcome], mec="black",
                                      mew=0.6, label=f"seed {f.result.seed}: {f.outcome}"))
    winds = [(i, f.wind) for i, f in enumerate(flights) if math.hypot(*f.wind[:2]) > 0]
    for i, (wx, wy, _) in winds:  # arrows from one corner: direction per episode, length to scale
        speed = math.hypot(wx, wy)
        length = 0.1 * speed / max(math.hypot(*w[:2]) for _, w in winds)
        top.annotate("", xy=(0.12 + length * wx / speed, 0.8 + length * wy / speed), xytext=(0.12, 0.8),
                     xycoords="axes fraction", arrowprops={"arrowstyle": "->", "color": colours[i % len(colours)],
                                                           "lw": 1.5})
    if winds:
        speeds = sorted({round(math.hypot(*w[:2]), 2) for _, w in winds})
        top.text(0.02, 0.98, f"wind {', '.join(f'{s:g}' for s in speeds)} m/s", transform=top.transAxes,
                 va="top", fontsize=8, bbox={"fc": "white", "ec": "0.7", "alpha": 0.9})
    moving = any(f.goal_path is not None and len(np.unique(f.goal_path, axis=0)) > len(f.goals) for f in flights)
    keys = ["^ start", "dashed: target's path" if moving else "numbers: goals in order",
            *(["circles: trees"] if any(f.obstacles for f in flights) else []), "marker: outcome"]
    top.set(xlabel="x (m)", ylabel="y (m)", title=f"top view\n{', '.join(keys)}")
    top.set_aspect("equal", adjustable="datalim")
    height.set(xlabel="time (s)", ylabel="z (m)", title=f"height\n{'dashed: target' if moving else 'dotted: final goal'}")
    low, high = height.get_ylim()
    if high - low < MIN_HEIGHT_SPAN_M:  # centimetre wiggles must not look like metres
        middle = (low + high) / 2
        height.set_ylim(middle - MIN_HEIGHT_SPAN_M / 2, middle + MIN_HEIGHT_SPAN_M / 2)
    outcome_handles = [Line2D([], [], color="0.5", ls="", marker=m, mec="black", mew=0.6, label=o)
                       for o, m in OUTCOME_MARKERS.items() if any(f.outcome == o for f in flights)]
    height.legend(handles=episode_handles + outcome_handles, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  fontsize=8, frameon=False)
    fig.suptitle(f"{title} - first {len(flights)} episodes")
    fig.tight_layout()
    save_figure(fig, out_dir / "trajectories.png")


def write_video(frames: Sequence[np.ndarray], stem: Path, fps: int) -> Path:
    """Write ``stem.mp4`` (imageio-ffmpeg) or, without it, ``stem.gif`` at <= 25 frames/s."""
    import imageio.v2 as imageio

    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        keep = max(1, math.ceil(fps / 25))
        path = stem.with_suffix(".gif")
        atomic_write(path, lambda p: imageio.mimsave(p, list(frames[::keep]), format="GIF",
                                                     duration=1000 * keep / fps, loop=0))
        return path
    path = stem.with_suffix(".mp4")
    atomic_write(path, lambda p: imageio.mimsave(p, list(frames), format="FFMPEG", fps=fps))
    return path
