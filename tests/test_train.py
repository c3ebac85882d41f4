"""The training workflow end to end: every core, run folder contents, kill + resume, bad checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from agents.callbacks import EvalSummary
from agents.checkpoint import CheckpointError, list_checkpoints
from agents.config import ConfigError, load_config
from agents.metrics import Summary
from agents.run import algorithm_class, read_run_config, uses_time_input
from agents.train import make_vec_env, train
from policies import CORE_NAMES

REPO = Path(__file__).resolve().parents[1]
TINY_CORES = {
    "mlp": {},
    "lstm": {"hidden_size": 16},
    "gru": {"hidden_size": 16},
    "cfc": {"hidden_size": 16, "backbone_units": 32},
    "ltc": {"hidden_size": 8, "ode_unfolds": 3},
    "ncp-cfc": {"units": 16, "output_size": 4},
    "ncp-ltc": {"units": 16, "output_size": 4, "ode_unfolds": 3},
}


def tiny(core: str, total: int = 2048, **extra: str) -> list[str]:
    """Overrides for a fast run: 2 in-process envs with 2 s episodes, small nets, few epochs."""
    settings = {
        "env.n_envs": "2",
        "env.vec_env": "dummy",
        "env.kwargs": "{episode_seconds: 2.0}",
        "policy.core_kwargs": json.dumps(TINY_CORES[core]),
        "policy.net_arch": "[16]",
        "algo.n_steps": "128",
        "algo.batch_size": "128",
        "algo.n_epochs": "2",
        "train.total_timesteps": str(total),
        "train.progress_bar": "false",
        "train.stop_at_success": "null",
        "eval.freq": "1024",
        "eval.n_episodes": "2",
        "eval.final_episodes": "4",
        "checkpoint.freq": "1024",
        **extra,
    }
    return [f"{key}={value}" for key, value in settings.items()]


@pytest.mark.parametrize("core", CORE_NAMES)
def test_every_core_trains_end_to_end_and_writes_a_loadable_run(core, tmp_path):
    config = load_config(f"hover-{core}", tiny(core))
    result = train(config, tmp_path / "run", log=lambda _: None)
    run = result.run_dir
    assert result.timesteps == 2048
    for name in ("config.yaml", "model.zip", "vecnormalize.pkl", "normalization.json", "eval.csv", "training_curve.png",
                 "best_model.zip", "final_eval.json"):
        assert (run / name).is_file(), name
    assert any((run / "tb").rglob("events.out.tfevents.*"))
    assert [p.name for p in list_checkpoints(run / "checkpoints")][-1] == "step_000000002048"
    assert read_run_config(run / "config.yaml") == config
    assert json.loads((run / "final_eval.json").read_text())["episodes"] == 4

    model = algorithm_class(config).load(run / "model.zip", device="cpu")
    assert model.num_timesteps == 2048
    venv = make_vec_env(config, 1, seed=5, time_input=uses_time_input(config))
    obs = venv.reset()
    actions, state = model.predict(obs, deterministic=True)
    assert actions.shape == (1, 4) and np.all(np.abs(actions) <= 1)
    venv.close()


def _write_config(path: Path, overrides: list[str]) -> Path:
    config = load_config("hover-gru", overrides)
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path


def test_run_killed_after_a_checkpoint_resumes_to_exactly_the_requested_steps(tmp_path):
    config_file = _write_config(tmp_path / "gru.yaml", tiny("gru", total=6144, **{"checkpoint.freq": "512"}))
    run = tmp_path / "runs" / "killed"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "agents.cli", "train", "--config", str(config_file), "--root", str(tmp_path / "runs"),
         "--name", "killed"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list_checkpoints(run / "checkpoints") and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    checkpoints = list_checkpoints(run / "checkpoints")
    assert checkpoints, process.stderr.read().decode()
    assert not (run / "model.zip").exists(), "the run finished before it could be killed"
    killed_at = int(checkpoints[-1].name.removeprefix("step_"))
    assert 0 < killed_at < 6144

    messages = []
    result = train(read_run_config(run / "config.yaml"), run, resume=True, log=messages.append)
    assert messages[0] == f"note: run folder {run.resolve()} was left by process {process.pid}, which died; taking it over"
    assert messages[1] == f"resuming {run} from step {killed_at:,}"
    assert result.timesteps == 6144
    config = read_run_config(run / "config.yaml")
    model = algorithm_class(config).load(run / "model.zip", device="cpu")
    assert model.num_timesteps == 6144
    steps = [float(line.split(",")[0]) for line in (run / "eval.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == 6144  # the final evaluation closes the curve


def test_resume_restores_normalisation_optimiser_and_counter(tmp_path):
    config = load_config("hover-mlp", tiny("mlp", total=1024, **{"eval.freq": "0", "eval.final_episodes": "0"}))
    run = train(config, tmp_path / "run", log=lambda _: None).run_dir
    longer = read_run_config(run / "config.yaml", ["train.total_timesteps=1536"])
    before = algorithm_class(config).load(run / "checkpoints" / "step_000000001024" / "model.zip")
    train(longer, run, resume=True, log=lambda _: None)
    after = algorithm_class(config).load(run / "model.zip")
    assert after.num_timesteps == 1536
    assert after.policy.optimizer.state_dict()["state"][0]["step"] > before.policy.optimizer.state_dict()["state"][0]["step"]
    import pickle

    with (run / "vecnormalize.pkl").open("rb") as handle:
        assert pickle.load(handle).obs_rms.count > 1536  # statistics continued from the checkpoint's


def test_corrupt_checkpoint_and_incompatible_resume_are_clear_errors(tmp_path):
    config = load_config("hover-mlp", tiny("mlp", total=512, **{"eval.freq": "0", "eval.final_episodes": "0",
                                                                 "checkpoint.freq": "256"}))
    run = train(config, tmp_path / "run", log=lambda _: None).run_dir

    with pytest.raises(ConfigError, match="policy.net_arch"):
        train(read_run_config(run / "config.yaml", ["policy.net_arch=[8]"]), run, resume=True)

    newest = list_checkpoints(run / "checkpoints")[-1]
    data = bytearray((newest / "model.zip").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (newest / "model.zip").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"corrupt: model\.zip does not match its checksum"):
        train(read_run_config(run / "config.yaml", ["train.total_timesteps=1024"]), run, resume=True)


def test_resume_without_checkpoints_says_so(tmp_path):
    config = load_config("hover-mlp", tiny("mlp", total=256, **{"eval.freq": "0", "eval.final_episodes": "0",
                                                                 "checkpoint.freq": "0"}))
    run = train(config, tmp_path / "run", log=lambda _: None).run_dir
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(config, run, resume=True)


def test_subprocess_and_in_process_envs_give_the_same_seeded_episodes():
    config = load_config("hover-cfc")
    actions = np.zeros((2, 4), dtype=np.float32)
    trajectories = []
    for subproc in (True, False):
        venv = make_vec_env(config, 2, seed=3, time_input=True, subproc=subproc)
        observations = [venv.reset()] + [venv.step(actions)[0] for _ in range(5)]
        venv.close()
        trajectories.append(np.stack(observations))
    np.testing.assert_array_equal(trajectories[0], trajectories[1])
    assert np.all(trajectories[0][..., -1] > 0)  # the appended step duration


def test_training_evaluation_and_evaluate_fly_identical_episodes(tmp_path):
    """One episode runner: the final training-time evaluation of a run and `evaluate` of the same
    run on the same seeds give identical episode results (and the training summary adds only the
    reward spread and mean length to the evaluate metrics)."""
    config = load_config("hover-gru", [*tiny("gru"), "env.kwargs={episode_seconds: 1.0}", "eval.final_episodes=5"])
    run = train(config, tmp_path / "run", log=lambda _: None).run_dir
    from agents.callbacks import evaluate_model
    from agents.evaluate import evaluate
    from agents.flight import EVAL_SEED_OFFSET, agent_of_config, load_agent
    from agents.train import evaluation_seeds

    seeds = evaluation_seeds(config, 5)
    assert seeds[0] == config.train.seed + EVAL_SEED_OFFSET
    model = algorithm_class(config).load(run / "model.zip", device="cpu")
    normalizer = load_agent(run).normalizer
    in_training = evaluate_model(model, normalizer, agent_of_config(config), seeds, {})
    evaluate(load_agent(run), tmp_path / "eval", episodes=5, seed=seeds[0], backend="serial", trace=0,
             log=lambda _: None)
    from agents.io import RowLog
    from agents.metrics import EpisodeResult

    flown = [EpisodeResult.from_row(row) for row in RowLog.read(tmp_path / "eval" / "episodes.csv")]
    assert [r.to_row() for r in in_training] == [r.to_row() for r in flown]
    assert all(e.success + e.crashed + e.timeout == 1 for e in in_training)
    final = json.loads((run / "final_eval.json").read_text())
    summary = EvalSummary.of(in_training)
    assert final["success_rate"] == summary.success_rate and final["mean_reward"] == pytest.approx(summary.mean_reward)
    np.testing.assert_equal({k: v for k, v in summary.as_dict().items() if k not in ("std_reward", "mean_length")},
                            Summary.of(in_training).as_dict())
    assert summary.mean_length == np.mean([e.steps for e in in_training])
    assert summary.std_reward == pytest.approx(np.std([e.reward for e in in_training]))
