"""`liquid-drones export`: a trained run folder to TorchScript and C, with the C footprint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from agents.cli import main as cli
from agents.config import config_from_dict
from agents.flight import load_agent
from agents.run import load_model
from test_evaluate import train_tiny_run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("runs"), "ncp-cfc", units=12, output_size=4)


def test_export_writes_a_torchscript_actor_that_acts_like_the_run(tiny_run):
    """Raw observations in (the actor normalises them itself), the run's deterministic action out."""
    cli(["export", str(tiny_run), "--format", "torchscript"])
    actor = torch.jit.load(str(tiny_run / "export-torchscript" / "actor.pt"))
    spec = load_agent(tiny_run)
    model = load_model(config_from_dict(spec.config), spec.model, "model.zip")
    obs = np.random.default_rng(0).normal(size=(1, model.observation_space.shape[0])).astype(np.float32)
    expected, _ = model.predict(spec.normalizer.normalize_obs(obs), episode_start=np.ones(1, bool), deterministic=True)
    state = torch.zeros(1, model.policy.lstm_actor.state_size)
    with torch.no_grad():
        action, _ = actor(torch.from_numpy(obs), state, torch.ones(1))
    np.testing.assert_allclose(action.numpy(), expected, atol=1e-5)


def test_export_c_writes_source_header_and_footprint(tiny_run, capsys):
    cli(["export", str(tiny_run), "--format", "c", "--out", str(tiny_run / "c")])
    assert {p.name for p in (tiny_run / "c").iterdir()} >= {"actor.c", "actor.h", "footprint.json"}
    footprint = json.loads((tiny_run / "c" / "footprint.json").read_text())
    assert 0 < footprint["flash_bytes"] < 1_000_000 and 0 < footprint["ram_bytes"] < 192_000
    assert "Cortex-M4F cycles per step" in capsys.readouterr().out


def test_export_names_an_unfinished_run(tmp_path):
    with pytest.raises(SystemExit) as stop:
        cli(["export", str(tmp_path), "--format", "c"])
    assert "not a usable run folder" in str(stop.value.code)
