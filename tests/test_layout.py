"""The shape of agents/: evaluation never touches training code, runs load without building envs,
and what an axis or a core needs lives in one place."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pybullet
import pytest

import envs.quadrotor
from agents.evaluate import evaluate
from agents.flight import load_agent
from envs.disturbances import AXES, AXIS_LABELS, DEFAULT_LEVELS
from test_evaluate import train_tiny_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("runs"), "ncp-cfc", units=12, output_size=4)


def test_evaluate_stress_and_compare_never_import_the_training_code(tiny_run, tmp_path):
    """Reading a finished run needs the run folder's format, not the code that wrote it."""
    script = f"""
import sys
from agents.cli import main
main(["evaluate", {str(tiny_run)!r}, "--episodes", "2", "--workers", "1", "--out", {str(tmp_path / 'e')!r}])
main(["stress", {str(tiny_run)!r}, "--axes", "wind", "--levels", "wind=0,2", "--episodes", "2",
      "--backend", "serial", "--out", {str(tmp_path / 's')!r}])
main(["compare", {str(tiny_run)!r}, "--stress", {str(tmp_path / 's')!r}, "--axes", "wind", "--levels", "wind=0,2",
      "--episodes", "2", "--backend", "serial", "--out", {str(tmp_path / 'c')!r}])
training = sorted(m for m in sys.modules if m in ("agents.train", "agents.imitate", "agents.demonstrations",
                                                  "agents.callbacks", "agents.preflight")
                  or m.startswith("agents.bench"))
print("TRAINING MODULES:", training)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "TRAINING MODULES: []" in done.stdout
    assert (tmp_path / "c" / "compare.csv").is_file()


def test_evaluating_a_run_builds_exactly_the_envs_it_flies(tiny_run, tmp_path, monkeypatch):
    """Loading and checking a run builds no env; five episodes in one batch fly in five envs."""
    connections = []
    real_connect = pybullet.connect

    def counting_connect(*args, **kwargs):
        connections.append(args)
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(envs.quadrotor.p, "connect", counting_connect)
    spec = load_agent(tiny_run)
    assert connections == []
    evaluate(spec, tmp_path / "eval", episodes=5, backend="serial", trace=3, log=lambda _: None)
    assert len(connections) == 5
    assert (tmp_path / "eval" / "trajectories.png").is_file()


def test_every_disturbance_axis_has_a_label_and_default_levels_beside_its_definition():
    assert set(AXIS_LABELS) == set(AXES) == set(DEFAULT_LEVELS)
    assert all(AXIS_LABELS[axis] for axis in AXES)
