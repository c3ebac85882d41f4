"""`liquid-drones bench cores`: speed and size of every recurrent core, side by side with ncps.

For each core (and the ncps LTC/CfC of the same size, when ncps is installed) it measures:

- ``rollout_us``: one rollout step for 8 envs — inputs ``[1, 8, 20]`` with episode starts and
  elapsed times, under ``torch.inference_mode`` (what a policy does per env step; ncps gets no
  time spans, since its cells cannot broadcast a batch of them);
- ``train_ms``: forward + backward of a ``[T=128, B=64, F=20]`` batch (what an update does);
- ``params``: trainable parameters (ncps' LTC stores masked ``[N, N]`` matrices, ours only the
  existing synapses).

Times are medians over repeats (``*_min`` the best repeat) with ``torch.set_num_threads(t)`` for
each ``t`` in ``THREADS``; our core and the ncps model are timed in turn, repeat by repeat, so
that load from other processes affects both alike. ``speedup_vs_ncps`` compares ``train_ms`` with
the ncps row of the same model and thread count. Sizes: 32 units everywhere; NCP wirings are
AutoNCP(32, 4 motor neurons); the CfC backbone has ncps' default 128 units.
"""

from __future__ import annotations

import importlib
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from agents.io import write_rows
from agents.report import print_rows, pyplot, save_figure
from policies import build_core

FEATURES, STEPS, BATCH, ROLLOUT_ENVS = 20, 128, 64, 8
UNITS, MOTOR = 32, 4
# One intra-op thread is what training uses (the envs take the other core); two is torch's default
# on this 2-core machine, the setting of a user who just imports both libraries. Both are reported.
THREADS = (1, 2)
ROLLOUT_TARGET_US = 200.0
#: Forward+backward speed-up over ncps each core must reach (ncp-ltc: DESIGN.md; cfc, ncp-cfc: issue #17).
TRAIN_TARGETS = {"ncp-ltc": 10.0, "cfc": 3.0, "ncp-cfc": 6.0}
# (row label, our core name and kwargs, matching ncps model or None)
CASES: tuple[tuple[str, str, dict[str, Any], str | None], ...] = (
    ("mlp", "mlp", {}, None),
    ("lstm", "lstm", {"hidden_size": UNITS}, None),
    ("gru", "gru", {"hidden_size": UNITS}, None),
    ("cfc", "cfc", {"hidden_size": UNITS}, "CfC(32)"),
    ("ltc", "ltc", {"hidden_size": UNITS}, "LTC(32)"),
    ("ncp-cfc", "ncp-cfc", {"units": UNITS, "output_size": MOTOR}, "CfC(AutoNCP(32, 4))"),
    ("ncp-ltc", "ncp-ltc", {"units": UNITS, "output_size": MOTOR}, "LTC(AutoNCP(32, 4))"),
)


def _ncps_model(description: str) -> torch.nn.Module:
    """The ncps (torch) model named in CASES, time-major like ours."""
    ncps_torch = importlib.import_module("ncps.torch")
    wirings = importlib.import_module("ncps.wirings")
    units: Any = wirings.AutoNCP(UNITS, MOTOR) if "AutoNCP" in description else UNITS
    model_class = ncps_torch.LTC if description.startswith("LTC") else ncps_torch.CfC
    return model_class(FEATURES, units, batch_first=False)


def _workloads(model: torch.nn.Module, ncps: bool) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(one rollout step for ROLLOUT_ENVS envs, one forward+backward of a training batch)."""
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(STEPS, BATCH, FEATURES, generator=generator)
    step = torch.randn(1, ROLLOUT_ENVS, FEATURES, generator=generator)
    if ncps:  # ncps cannot take per-env time spans in a batch: default 1 s steps
        state = torch.zeros(ROLLOUT_ENVS, model.state_size)
        return (lambda: model(step, state)), (lambda: model(batch)[0].square().mean().backward())
    starts, elapsed = torch.zeros(1, ROLLOUT_ENVS), torch.full((1, ROLLOUT_ENVS), 1 / 48)
    state, initial = model.initial_state(ROLLOUT_ENVS), model.initial_state(BATCH)

    def train():
        outputs = model(batch, initial)[0]
        if outputs.requires_grad:  # mlp has nothing to train
            outputs.square().mean().backward()

    return (lambda: model(step, state, starts, elapsed)), train


def _interleaved(runs: list[Callable[[], Any]], repeats: int, inner: int = 1,
                 inference: bool = False) -> list[list[float]]:
    """Seconds per call of each run: ``repeats`` samples each, taken in turn so that a busy machine
    slows all runs alike (after one warm-up call each)."""
    samples: list[list[float]] = [[] for _ in runs]
    with torch.inference_mode(inference):
        for run in runs:
            run()
        for _ in range(repeats):
            for run, times in zip(runs, samples):
                start = time.perf_counter()
                for _ in range(inner):
                    run()
                times.append((time.perf_counter() - start) / inner)
    return samples


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _ncps_available() -> bool:
    try:
        importlib.import_module("ncps.torch")
    except ImportError:
        print("ncps is not installed (pip install ncps==1.0.1): skipping the ncps reference rows")
        return False
    return True


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Measure every core (and the ncps model of the same size, side by side); return the rows."""
    have_ncps = _ncps_available()
    previous_threads = torch.get_num_threads()
    rows: list[dict[str, Any]] = []
    try:
        jobs = [(threads, case) for threads in THREADS for case in CASES]
        for threads, (label, name, kwargs, reference) in tqdm(jobs, desc="bench cores"):
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            models = [("ours", name, build_core(name, FEATURES, **kwargs))]
            if have_ncps and reference:
                models.append(("ncps", reference, _ncps_model(reference)))
            workloads = [_workloads(model, impl == "ncps") for impl, _, model in models]
            slow = have_ncps and reference is not None and reference.startswith("LTC")
            rollouts = _interleaved([w[0] for w in workloads], repeats=3 if quick else 7,
                                    inner=30 if quick else 300, inference=True)
            trains = _interleaved([w[1] for w in workloads], repeats=1 if quick else (3 if slow else 9))
            for (impl, description, model), rollout, train in zip(models, rollouts, trains):
                rows.append({"core": label, "impl": impl, "model": description, "threads": threads,
                             "params": _parameters(model),
                             "rollout_us": statistics.median(rollout) * 1e6, "rollout_us_min": min(rollout) * 1e6,
                             "train_ms": statistics.median(train) * 1e3, "train_ms_min": min(train) * 1e3})
    finally:
        torch.set_num_threads(previous_threads)
    for row in rows:
        match = [r for r in rows if r["impl"] == "ncps" and r["core"] == row["core"] and r["threads"] == row["threads"]]
        row["speedup_vs_ncps"] = match[0]["train_ms"] / row["train_ms"] if match and row["impl"] == "ours" else ""
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    """Print the rows as a console table, plus the targets' verdicts."""
    print_rows(rows, f"Cores: rollout step (B={ROLLOUT_ENVS}, T=1) and train step "
                     f"(forward+backward, T={STEPS}, B={BATCH}, F={FEATURES})")
    for row in rows:
        if row["impl"] != "ours":
            continue
        verdicts = [f"rollout {'OK' if row['rollout_us'] < ROLLOUT_TARGET_US else 'MISSED'} "
                    f"({row['rollout_us']:.0f} us vs < {ROLLOUT_TARGET_US:.0f})"]
        target = TRAIN_TARGETS.get(row["core"])
        if target and row["speedup_vs_ncps"] != "":
            verdicts.append(f"train {'OK' if row['speedup_vs_ncps'] >= target else 'MISSED'} "
                            f"({row['speedup_vs_ncps']:.1f}x ncps vs >= {target:.0f}x)")
        print(f"{row['core']:>8} @ {row['threads']} thread(s): " + "; ".join(verdicts))


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    threads = sorted({r["threads"] for r in rows})
    plt = pyplot()
    fig, axes = plt.subplots(len(threads), 2, figsize=(14, 4.2 * len(threads)), squeeze=False)
    for (train_ax, rollout_ax), thread_count in zip(axes, threads):
        subset = [r for r in rows if r["threads"] == thread_count]
        labels = [f"{r['core']}\n({r['impl']})" for r in subset]
        colours = ["tab:blue" if r["impl"] == "ours" else "tab:gray" for r in subset]
        train_ax.bar(labels, [max(r["train_ms"], 1e-3) for r in subset], color=colours)
        train_ax.set_yscale("log")
        train_ax.set_ylabel("ms (log scale)")
        train_ax.set_title(f"forward + backward, T={STEPS} B={BATCH} F={FEATURES}, {thread_count} thread(s)")
        rollout_ax.bar(labels, [r["rollout_us"] for r in subset], color=colours)
        rollout_ax.axhline(ROLLOUT_TARGET_US, color="tab:red", linestyle="--", label="target")
        rollout_ax.set_ylabel("us")
        rollout_ax.set_title(f"one rollout step, {ROLLOUT_ENVS} envs, {thread_count} thread(s)")
        rollout_ax.legend()
        for ax in (train_ax, rollout_ax):
            ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def main(out_dir: str = "runs/bench", quick: bool = False) -> list[dict[str, Any]]:
    """Measure, print the table, and write cores.csv, cores.json and cores.png to ``out_dir``."""
    rows = run(quick=quick)
    print_table(rows)
    write_rows(rows, out_dir, "cores")
    _plot(rows, Path(out_dir) / "cores.png")
    print(f"wrote {out_dir}/cores.csv, cores.json, cores.png")
    return rows
