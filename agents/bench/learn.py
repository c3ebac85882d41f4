"""Time to solve: `liquid-drones bench learn`.

Trains the shipped configs (ncp-cfc, lstm, mlp on Hover and Waypoints, or the listed
``<task>-<core>`` configs) with the training's own stop-at-target (``train.stop_at_success``)
and reports the env steps (RL) or expert labels (imitation) and wall-clock minutes until the
success level was first reached over 100 evaluation episodes (Hover >= 95 % within 15 min;
Waypoints >= 90 % within 60 min; ``train.max_minutes`` ends a run at its budget). ``--method``
picks RL (`agents.train`, evaluating every 50,000 env steps), imitation (`agents.imitate`,
evaluating every ``imitation.eval_every`` epochs of the config: 10 by default, two evaluations per
round of behaviour cloning / DAgger) or both, side by side. Each method's time to target is known
to the resolution of its evaluations (plus their own cost, counted in the wall time). The runs are
kept under ``<out>/learn-runs/``. Writes a table to the terminal and CSV, JSON and PNG files to ``out``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from agents.config import load_config
from agents.imitate import imitate
from agents.io import write_rows
from agents.report import bar_chart, print_rows
from agents.run import EVAL_FILE, read_eval_rows
from agents.train import train
from policies import CORE_NAMES

#: task -> (success level, wall-time budget in minutes) of `bench learn`.
LEARN_TARGETS = {"hover": (0.95, 15.0), "waypoints": (0.90, 60.0)}
LEARN_CORES = ("ncp-cfc", "lstm", "mlp")
METHODS = ("rl", "imitate", "both")


def time_to_success(name: str, level: float, budget_min: float, eval_freq: int, n_episodes: int,
                    run_dir: Path, method: str = "rl") -> dict[str, Any]:
    """Train config ``name`` into ``run_dir`` (RL, or ``method`` imitate) until ``level`` success
    over ``n_episodes`` or ``budget_min`` minutes; the env steps (imitation: expert labels) and
    minutes of the first evaluation at the level."""
    overrides = ["train.progress_bar=false", f"train.stop_at_success={level}", f"train.max_minutes={budget_min}",
                 f"eval.freq={eval_freq}", f"eval.n_episodes={n_episodes}", "eval.final_episodes=0"]
    config = load_config(name, overrides)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    if method == "imitate":
        imitate(config, run_dir)
    else:
        train(config, run_dir)
    rows = read_eval_rows(run_dir / EVAL_FILE)
    first = next((r for r in rows if r["success_rate"] >= level), None)
    last = rows[-1] if rows else None
    return {
        "config": name,
        "method": method,
        "level": level,
        "reached": first is not None,
        "env_steps": int(first["timesteps"]) if first else int(last["timesteps"]) if last else 0,
        "minutes": round((first or last)["wall_time_s"] / 60, 2) if (first or last) else budget_min,
        "budget_min": budget_min,
        "last_success_rate": None if last is None else (first or last)["success_rate"],
    }


def learn_configs(every_core: bool = False) -> list[str]:
    """The config names `bench learn` trains by default, in order: every task x every core of
    LEARN_CORES; with ``every_core``, the names ``--configs`` accepts (every core of CORE_NAMES)."""
    cores = CORE_NAMES if every_core else LEARN_CORES
    return [f"{task}-{core}" for task in LEARN_TARGETS for core in cores]


def check_learn_configs(configs: tuple[str, ...]) -> None:
    """Raise ValueError naming any of ``configs`` that `bench learn` cannot train, and the allowed ones."""
    allowed = learn_configs(every_core=True)
    unknown = [name for name in configs if name not in allowed]
    if unknown:
        raise ValueError(f"unknown --configs {unknown}; allowed: {', '.join(allowed)}")


def main(out_dir: str = "runs/bench", quick: bool = False, configs: tuple[str, ...] | None = None,
         method: str = "rl") -> list[dict[str, Any]]:
    """`liquid-drones bench learn`: steps and minutes to the success level, per task and core.

    ``quick`` is a smoke run (one config, a 1-minute budget, 20 evaluation episodes). ``configs``
    picks other configs of :func:`learn_configs` (any core; results go to
    ``learn-<first config>.*`` then, so subsets run in separate processes do not overwrite each other).
    ``method``: ``rl``, ``imitate`` or ``both`` (each config imitated, then trained with RL).
    """
    check_learn_configs(configs or ())
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    selected = list(configs) if configs else (["hover-ncp-cfc"] if quick else learn_configs())
    methods = ("imitate", "rl") if method == "both" else (method,)
    out = Path(out_dir)
    rows = []
    n_episodes = 20 if quick else 100
    for task, (level, budget) in LEARN_TARGETS.items():
        for core in CORE_NAMES:
            name = f"{task}-{core}"
            for how in methods if name in selected else ():
                rows.append(time_to_success(name, level, 1.0 if quick else budget, 8192 if quick else 50_000,
                                            n_episodes, out / "learn-runs" / f"{name}-{how}", how))
    last = ["-" if r["last_success_rate"] is None else f"{100 * r['last_success_rate']:.0f} %" for r in rows]
    shown = [{"config": r["config"], "method": r["method"], "level": f"{100 * r['level']:.0f} %",
              "reached": "yes" if r["reached"] else "NO",
              "env steps / labels": f"{r['env_steps']:,}", "minutes": f"{r['minutes']:.1f}",
              "budget (min)": f"{r['budget_min']:.0f}", "last success": success}
             for r, success in zip(rows, last)]
    print_rows(shown, f"Time to success level (evaluations over {n_episodes} episodes)")
    stem = (f"learn-{selected[0]}" if configs else "learn") + ("" if method == "rl" else f"-{method}")
    write_rows(rows, out, stem)
    bar_chart(out / f"{stem}.png", [f"{r['config']} {r['method']}" for r in rows], [r["minutes"] for r in rows],
              "wall-clock minutes to the success level (grey: the whole budget, level not reached)", "Time to solve",
              failed=[not r["reached"] for r in rows],
              notes=[f"{100 * r['level']:.0f} % reached" if r["reached"] else f"NOT reached: best {success}"
                     for r, success in zip(rows, last)],
              failed_label="level not reached within the budget")
    return rows
