"""Stress sweeps: paired seeds, shared nominal level, failure containment, resume, Ray = local."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from agents.cli import main
from agents.compare import compare
from agents.flight import expert_spec
from agents.flight import load_agent as load_run
from agents.io import RowLog
from agents.metrics import ood_success
from agents.parallel import run_jobs
from agents.stress import StressError, Sweep, parse_axes, parse_levels, run_sweep
from test_evaluate import SHORT, train_tiny_run

LEVELS = ["wind=0,3", "ctrl_rate=24,48"]


@pytest.fixture(scope="module")
def agents(tmp_path_factory):
    run = train_tiny_run(tmp_path_factory.mktemp("runs"), "ncp-cfc", units=12, output_size=4)
    return (load_run(run), expert_spec("LiquidDrones/Hover-v0", {"episode_seconds": SHORT}))


@pytest.fixture(scope="module")
def sweep(agents):
    return Sweep(agents, parse_levels(LEVELS, ["wind", "ctrl_rate"]), episodes=4, seed=7, batch=4)


@pytest.fixture(scope="module")
def stress_dir(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("stress")
    run_sweep(sweep, out, backend="serial", log=lambda message: None)
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_every_job_flies_the_same_seeds_and_the_nominal_level_once_per_agent(sweep, agents):
    jobs = sweep.jobs()
    assert {job.seeds for job in jobs} == {(7, 8, 9, 10)}
    for spec in agents:
        cells = [(job.tag["axis"], job.tag["level"]) for job in jobs if job.tag["agent"] == spec.name]
        # wind 0 and ctrl_rate 48 are this agent's nominal level: flown once, as "nominal"
        assert sorted(cells, key=str) == sorted([("nominal", ""), ("wind", 3.0), ("ctrl_rate", 24.0)], key=str)


def test_ctrl_rate_nominal_is_the_agent_own_training_rate():
    slow = expert_spec("LiquidDrones/Hover-v0", {"ctrl_freq": 24})
    sweep = Sweep((slow,), parse_levels([], ["ctrl_rate"]), episodes=1)
    assert sorted(job.tag["level"] for job in sweep.jobs() if job.tag["axis"] == "ctrl_rate") == [48.0, 96.0]


def test_stress_results_hold_every_level_with_the_shared_nominal(stress_dir, sweep, agents):
    episodes = read_csv(stress_dir / "episodes.csv")
    assert len(episodes) == 2 * 3 * 4  # agents x (nominal + 2 off-nominal levels) x episodes
    results = read_csv(stress_dir / "results.csv")
    for spec in agents:
        rows = {(r["axis"], r["level"]): r for r in results if r["agent"] == spec.name}
        assert set(rows) == {("nominal", ""), ("wind", "0.0"), ("wind", "3.0"),
                             ("ctrl_rate", "24.0"), ("ctrl_rate", "48.0")}
        for axis_nominal in (("wind", "0.0"), ("ctrl_rate", "48.0")):
            shared = rows[axis_nominal]
            assert shared["in_distribution"] == "True"
            assert shared["success_rate"] == rows[("nominal", "")]["success_rate"]
    expert_rows = [r for r in results if r["agent"] == agents[1].name]
    assert all(r["episodes"] == "4" and r["errors"] == "0" for r in expert_rows)


def test_stress_summary_matches_the_episode_rows(stress_dir, agents):
    summary = json.loads((stress_dir / "summary.json").read_text())
    episodes = read_csv(stress_dir / "episodes.csv")

    def rate(agent, axis, level):
        cell = [r for r in episodes if (r["agent"], r["axis"], r["level"]) == (agent, axis, level)]
        return np.mean([r["success"] == "True" for r in cell])

    for spec in agents:
        entry = summary["agents"][spec.name]
        nominal = rate(spec.name, "nominal", "")
        mean_ood = ood_success(np.array([rate(spec.name, "wind", "3.0"), rate(spec.name, "ctrl_rate", "24.0")]),
                               [[0], [1]])
        assert entry["in_distribution"]["success_rate"] == nominal
        assert entry["mean_ood_success"] == pytest.approx(mean_ood)
        assert entry["ood_drop"] == pytest.approx(nominal - mean_ood)
        low, high = entry["mean_ood_interval"]
        assert low <= mean_ood <= high
    assert "vs_" + agents[0].name in summary["agents"][agents[1].name]
    report = (stress_dir / "report.md").read_text()
    assert "## wind: wind speed (m/s)" in report and "## ctrl_rate: control rate (Hz)" in report
    assert "(nominal)" in report and "robustness.png" in report
    assert (stress_dir / "robustness.png").stat().st_size > 10_000


def test_an_interrupted_stress_test_resumes_without_reflying_finished_levels(sweep, stress_dir, tmp_path):
    out = tmp_path / "resumed"
    out.mkdir()
    (out / "stress.json").write_text((stress_dir / "stress.json").read_text())
    rows = read_csv(stress_dir / "episodes.csv")
    kept = [r for r in rows if not (r["axis"] == "wind" and r["agent"] == sweep.agents[0].name)]
    columns = list(rows[0])
    log = RowLog(out / "episodes.csv", columns)
    log.write(kept)
    with (out / "episodes.csv").open("a") as handle:
        handle.write("partial,line,cut")  # the process died mid-write
    with pytest.raises(StressError, match="--resume"):
        run_sweep(sweep, out, backend="serial", log=lambda m: None)
    messages = []
    run_sweep(sweep, out, backend="serial", resume=True, log=messages.append)
    assert "5 level(s) already flown, 1 to go" in messages[0]
    key = lambda r: (r["agent"], r["axis"], r["level"], r["seed"])  # noqa: E731
    assert sorted(read_csv(out / "episodes.csv"), key=key) == sorted(rows, key=key)
    assert (out / "results.csv").read_text() == (stress_dir / "results.csv").read_text()


def test_a_job_that_raises_or_kills_its_worker_loses_only_its_own_result():
    # Jobs are Python expressions run by the builtin eval, so workers start without importing torch.
    jobs = ["0 * 0", "1 * 1", "2 * 2", "__import__('os')._exit(1)", "4 * 4", "int('bad job')", "6 * 6"]
    results, errors = {}, {}
    run_jobs(eval, jobs, on_result=results.__setitem__, on_error=errors.__setitem__,
             backend="local", workers=2)
    assert results == {"0 * 0": 0, "1 * 1": 1, "2 * 2": 4, "4 * 4": 16, "6 * 6": 36}
    assert errors["int('bad job')"] == "ValueError: invalid literal for int() with base 10: 'bad job'"
    assert "worker process died" in errors["__import__('os')._exit(1)"]


def test_ray_backend_gives_the_local_results_for_the_same_seeds(sweep, stress_dir, tmp_path):
    run_sweep(sweep, tmp_path, backend="ray", workers=2, log=lambda message: None)
    key = lambda r: (r["agent"], r["axis"], r["level"], r["seed"])  # noqa: E731
    on_ray, local = read_csv(tmp_path / "episodes.csv"), read_csv(stress_dir / "episodes.csv")
    assert sorted(on_ray, key=key) == sorted(local, key=key)


def test_compare_puts_runs_side_by_side_from_one_stress_test(sweep, stress_dir, tmp_path):
    rows = compare(sweep, tmp_path, stress_dir, log=lambda message: None)
    run, expert = rows
    assert run["core"] == "ncp-cfc" and run["train_steps"] == 128
    assert 0 < run["actor_params"] < run["total_params"]
    assert run["train_minutes"] >= 0
    assert expert["core"] == "PID expert" and expert["actor_params"] == 0
    summary = json.loads((stress_dir / "summary.json").read_text())
    assert run["mean_ood_success"] == summary["agents"][run["agent"]]["mean_ood_success"]
    assert {"ood_wind", "ood_ctrl_rate"} <= set(run)
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    assert "| agent |" in (tmp_path / "compare.md").read_text()


def test_parse_axes_and_levels_name_what_is_allowed(agents):
    assert parse_axes(None, agents) == ["wind", "mass", "motor", "motor_lag", "obs_noise", "latency",
                                        "ctrl_rate", "push", "range"]
    with pytest.raises(StressError, match="unknown axis 'gale'.*allowed: wind, mass"):
        parse_axes(["wind,gale"], agents)
    with pytest.raises(StressError, match="unknown axis 'density'"):
        parse_axes(["density"], agents)  # Forest only
    with pytest.raises(StressError, match="mass=-1.0.*out of range"):
        parse_levels(["mass=1,-1"], ["mass"])
    with pytest.raises(StressError, match="not among the swept axes"):
        parse_levels(["wind=1"], ["mass"])
    with pytest.raises(StressError, match="same env"):
        Sweep((agents[0], expert_spec("LiquidDrones/Waypoints-v0")), {"wind": (1.0,)})


@pytest.mark.parametrize("argv, message", [
    (["stress", "missing/run"], "run folder 'missing/run' not found"),
    (["stress"], "nothing to stress"),
    (["stress", "--expert", "--axes", "gale"], "unknown axis 'gale'"),
    (["stress", "--expert", "--address", "10.0.0.1:6379"], "needs --backend ray"),
    (["compare", "--expert", "--stress", "nowhere"], "holds no finished stress test"),
])
def test_bad_stress_input_stops_with_a_message_before_any_episode(argv, message, tmp_path):
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--root", str(tmp_path)])
    assert message in str(stop.value)
    assert not any(tmp_path.iterdir())
