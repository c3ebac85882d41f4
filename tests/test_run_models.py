"""Which model of a run is flown (final, best, a checkpoint), and the provenance of every folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from agents.cli import main
from agents.config import load_config
from agents.run import RunError, load_run
from agents.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    overrides = ["env.n_envs=2", "env.vec_env=dummy", "env.kwargs={episode_seconds: 1.0}", "algo.n_steps=64",
                 "algo.batch_size=64", "algo.n_epochs=1", "train.total_timesteps=256", "eval.freq=128",
                 "eval.n_episodes=2", "eval.final_episodes=2", "checkpoint.freq=128", "checkpoint.keep=5",
                 "train.progress_bar=false", "train.stop_at_success=null"]
    run_dir = tmp_path_factory.mktemp("runs") / "gru"
    train(load_config("hover-gru", overrides), run_dir, log=lambda _: None)
    return run_dir


def test_best_and_checkpoint_models_load_with_their_own_statistics_without_the_final_model(run):
    best = load_run(run, "best")
    assert best.model == (run / "best_model.zip").read_bytes() and best.source == "best"
    assert best.normalizer.size() == 22 and (run / "best_normalization.json").is_file()  # no pickle read
    checkpoint = load_run(run, "checkpoint", 128)
    assert checkpoint.source == "checkpoint 128"
    assert checkpoint.model == (run / "checkpoints" / "step_000000000128" / "model.zip").read_bytes()
    assert load_run(run, "checkpoint").source == "checkpoint 256"  # the newest by default
    assert checkpoint.normalizer.mean[None].tolist() != load_run(run).normalizer.mean[None].tolist()
    with pytest.raises(RunError, match="no checkpoint at step 5; it has steps 128, 256"):
        load_run(run, "checkpoint", 5)
    with pytest.raises(RunError, match="unknown model 'last'; allowed: final, best, checkpoint"):
        load_run(run, "last")


def test_evaluate_model_is_recorded_in_metrics_json_beside_the_provenance(run, tmp_path, monkeypatch):
    argv = ["liquid-drones", "evaluate", str(run), "--model", "checkpoint", "--step", "128", "--episodes", "2",
            "--workers", "1", "--out", str(tmp_path / "e")]
    monkeypatch.setattr(sys, "argv", argv)
    main(argv[1:])
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["model"] == "checkpoint 128"
    [session] = json.loads((tmp_path / "e" / "provenance.json").read_text())["sessions"]
    assert session["verb"] == "evaluate" and session["command"] == argv and session["outcome"] == "finished"
    assert session["seeds"] == {"episodes": [100_000, 100_001]} and session["started"] <= session["ended"]
    assert "version" in session


def test_a_run_records_its_training_session_and_tensorboard_its_hyper_parameters_and_final_evaluation(run):
    [session] = json.loads((run / "provenance.json").read_text())["sessions"]
    assert session["verb"] == "train" and session["outcome"] == "finished" and session["seeds"]["train"] == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [events] = list((run / "tb").rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert "final/success_rate" in accumulator.Tags()["scalars"]
    assert "_hparams_/experiment" in accumulator.PluginTagToContent("hparams")


def test_a_step_without_model_checkpoint_stops_with_a_message(run, capsys):
    with pytest.raises(SystemExit, match="--step 128 chooses a checkpoint: add --model checkpoint"):
        main(["evaluate", str(run), "--step", "128"])


def test_compare_and_the_stress_test_it_flies_record_their_provenance(run, tmp_path):
    main(["compare", str(run), "--axes", "wind", "--levels", "wind=0,2", "--episodes", "2", "--backend", "serial",
          "--out", str(tmp_path / "c")])
    for folder, verb in ((tmp_path / "c", "compare"), (tmp_path / "c" / "stress", "stress")):
        [session] = json.loads((folder / "provenance.json").read_text())["sessions"]
        assert session["verb"] == verb and session["outcome"] == "finished"
        assert session["seeds"] == {"episodes": [100_000, 100_001]}
