"""Imitation end to end: cloning lowers the held-out action error, DAgger grows the dataset with
states the learner flew, the run folder flies through evaluate and stress, --init-from starts RL
from the imitated actions exactly, and a killed run resumes the same round with the same data."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch as th
import yaml

from agents.checkpoint import list_checkpoints
from agents.config import ConfigError, load_config
from agents.demonstrations import Demonstrations
from agents.evaluate import evaluate
from agents.flight import agent_of_config, load_agent
from agents.imitate import DATASET_FILE, PROGRESS_FILE, imitate, start
from agents.io import RowLog
from agents.run import load_model, load_run, read_run_config, uses_time_input
from agents.stress import Sweep, parse_levels, run_sweep
from agents.train import actor_parameters, fine_tuning_model, make_vec_env, train

REPO = Path(__file__).resolve().parents[1]
CORES = {"lstm": {"hidden_size": 16}, "ncp-cfc": {"units": 12, "output_size": 4}, "mlp": {}}


def tiny(core: str, **extra: str) -> list[str]:
    """Overrides for a fast run: 2 s episodes, small nets, few episodes and epochs."""
    settings = {
        "env.n_envs": "4",
        "env.kwargs": "{episode_seconds: 2.0}",
        "policy.core_kwargs": json.dumps(CORES[core]),
        "policy.net_arch": "[16]",
        "algo.n_steps": "64",
        "algo.batch_size": "64",
        "algo.n_epochs": "2",
        "train.progress_bar": "false",
        "train.stop_at_success": "null",
        "imitation.demo_episodes": "8",
        "imitation.heldout_episodes": "2",
        "imitation.epochs": "3",
        "imitation.dagger_rounds": "2",
        "imitation.episodes_per_round": "4",
        "imitation.eval_every": "3",
        "eval.n_episodes": "2",
        "eval.final_episodes": "2",
        **extra,
    }
    return [f"{key}={value}" for key, value in settings.items()]


@pytest.mark.parametrize("override, named", [("imitation.beta=1.5", "imitation.beta"),
                                              ("imitation.chunk_length=0", "imitation.chunk_length"),
                                              ("imitation.epoch=3", "imitation.epoch")])
def test_imitation_keys_are_validated_naming_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config("hover", [override])


@pytest.fixture(scope="module")
def imitated(tmp_path_factory):
    """An imitated lstm run: behaviour cloning and two DAgger rounds."""
    config = load_config("hover-lstm", tiny("lstm"))
    return imitate(config, tmp_path_factory.mktemp("runs") / "imitated", log=lambda _: None).run_dir


@pytest.mark.parametrize("core", ["lstm", "ncp-cfc", "mlp"])
def test_cloning_drives_held_out_action_error_far_below_a_random_policys(core, tmp_path):
    config = load_config(f"hover-{core}", tiny(core, **{"imitation.demo_episodes": "6", "imitation.chunk_length": "16",
                                                        "imitation.learning_rate": "1e-2"}))
    th.set_num_threads(config.train.torch_threads)  # as `imitate` does
    state = start(config, tmp_path, agent_of_config(config), {}, log=lambda _: None)
    untrained = state.heldout_error()
    losses = []
    for _ in range(12):
        losses.append(state.train_epoch())
        state.progress.epochs += 1
    assert losses[-1] < 0.5 * losses[0]
    assert state.heldout_error() < 0.5 * untrained


def test_dagger_rounds_add_states_the_learner_flew_and_grow_the_dataset(imitated):
    rounds = RowLog.read(imitated / "dagger.csv")
    assert [int(r["round"]) for r in rounds] == [0, 1, 2]
    assert int(rounds[0]["learner_steps"]) == 0  # behaviour cloning: only the expert flew
    for before, after in itertools.pairwise(rounds):
        assert 0 < int(after["learner_steps"]) < int(after["steps"])  # beta 0.5, 0.25: mixed
        assert int(after["dataset_steps"]) == int(before["dataset_steps"]) + int(after["steps"])
    data = Demonstrations.load(list_checkpoints(imitated / "checkpoints")[-1] / DATASET_FILE)
    assert data.steps == int(rounds[-1]["dataset_steps"])
    assert sum(int(e.learner.sum()) for e in data.episodes) == sum(int(r["learner_steps"]) for r in rounds)


def test_imitated_run_folder_loads_and_flies_through_evaluate_and_stress(imitated, tmp_path):
    for name in ("config.yaml", "model.zip", "normalization.json", "vecnormalize.pkl", "eval.csv",
                 "training_curve.png", "final_eval.json", "best_model.zip"):
        assert (imitated / name).is_file(), name
    assert any((imitated / "tb").rglob("events.out.tfevents.*"))
    final = json.loads((imitated / "final_eval.json").read_text())
    assert final["timesteps"] == int(RowLog.read(imitated / "dagger.csv")[-1]["dataset_steps"])
    summary = evaluate(load_agent(imitated), tmp_path / "eval", episodes=2, backend="serial", trace=0,
                       log=lambda _: None)
    assert summary.episodes == 2 and summary.errors == 0
    sweep = Sweep((load_agent(imitated),), parse_levels(["wind=0,2"], ["wind"]), episodes=2, seed=3, batch=2)
    run_sweep(sweep, tmp_path / "stress", backend="serial", log=lambda _: None)
    rows = RowLog.read(tmp_path / "stress" / "episodes.csv")
    assert len(rows) == 4 and not any(r["error"] for r in rows)


def test_init_from_acts_exactly_like_the_imitated_policy_until_the_first_rl_update(imitated, tmp_path):
    config = read_run_config(imitated / "config.yaml", [f"train.init_from={imitated}", "train.total_timesteps=1024",
                                                        "eval.freq=0", "eval.final_episodes=0", "checkpoint.freq=0"])
    run = load_run(imitated)
    cloned = load_model(run.config, run.model, imitated)
    time_input = uses_time_input(config)
    venv = make_vec_env(config, config.env.n_envs, seed=1, time_input=time_input)
    model = fine_tuning_model(config, venv, tmp_path / "tuned", time_input, log=lambda _: None)
    assert model.num_timesteps == 2 * config.rollout_size  # the critic warm-up flew two rollouts
    tuned_norm = model.get_vec_normalize_env()
    probe = make_vec_env(config, 4, seed=77, time_input=time_input, subproc=False)
    obs = probe.reset()
    state_a = state_b = None
    starts = np.ones(4, dtype=bool)
    for _ in range(30):
        a, state_a = cloned.predict(run.normalizer.normalize_obs(obs), state_a, starts, deterministic=True)
        b, state_b = model.predict(tuned_norm.normalize_obs(obs), state_b, starts, deterministic=True)
        assert np.array_equal(a, b)
        obs, _, dones, _ = probe.step(a)
        starts = dones
    probe.close()
    actor_before = [p.detach().clone() for p in actor_parameters(model.policy)]
    venv.close()

    result = train(config, tmp_path / "tuned", log=lambda _: None)  # warm-up, then two RL rollouts
    tuned = load_model(config, (result.run_dir / "model.zip").read_bytes(), result.run_dir)
    after = actor_parameters(tuned.policy)
    assert any(not th.equal(x, y) for x, y in zip(actor_before, after))  # RL did update the actor
    assert read_run_config(result.run_dir / "config.yaml").train.init_from == str(imitated)


def test_imitation_killed_mid_round_resumes_the_same_round_with_the_same_data(tmp_path):
    overrides = tiny("lstm", **{"imitation.demo_episodes": "4", "imitation.heldout_episodes": "1",
                                "imitation.episodes_per_round": "2", "imitation.epochs": "6",
                                "imitation.eval_every": "0", "eval.final_episodes": "0", "imitation.dagger_rounds": "1"})
    config = load_config("hover-lstm", overrides)
    config_file = tmp_path / "lstm.yaml"
    config_file.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    run = tmp_path / "runs" / "killed"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "agents.cli", "imitate", "--config", str(config_file), "--root", str(tmp_path / "runs"),
         "--name", "killed"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def in_round_one() -> dict | None:
        for checkpoint in reversed(list_checkpoints(run / "checkpoints")):
            try:
                progress = json.loads((checkpoint / PROGRESS_FILE).read_text())
            except (OSError, ValueError):
                continue
            if progress["round"] == 1:
                return progress
        return None

    deadline = time.time() + 120
    while in_round_one() is None and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    progress = in_round_one()
    assert progress is not None, process.stderr.read().decode()
    assert not (run / "model.zip").exists() and progress["epoch_in_round"] < 6, "the run finished before the kill"
    saved = Demonstrations.load(list_checkpoints(run / "checkpoints")[-1] / DATASET_FILE)

    messages = []
    imitate(read_run_config(run / "config.yaml"), run, resume=True, log=messages.append)
    assert messages[0] == f"note: run folder {run.resolve()} was left by process {process.pid}, which died; taking it over"
    assert messages[1].startswith(f"resuming {run} in round 1 after epoch")
    uninterrupted = imitate(config, tmp_path / "runs" / "whole", log=lambda _: None).run_dir
    resumed = Demonstrations.load(list_checkpoints(run / "checkpoints")[-1] / DATASET_FILE)
    whole = Demonstrations.load(list_checkpoints(uninterrupted / "checkpoints")[-1] / DATASET_FILE)
    assert resumed.steps == saved.steps == whole.steps  # round 1 was not collected again
    for a, b in zip(resumed.episodes, whole.episodes):
        assert np.array_equal(a.obs, b.obs) and np.array_equal(a.labels, b.labels)
    weights = [load_model(config, (d / "model.zip").read_bytes(), d).policy.state_dict() for d in (run, uninterrupted)]
    assert all(th.equal(weights[0][k], weights[1][k]) for k in weights[0])
