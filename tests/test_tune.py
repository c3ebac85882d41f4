"""`liquid-drones tune` end to end: real Optuna storage, real training runs of a few hundred env steps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml

from agents.cli import main as cli_main
from agents.config import ConfigError, load_config
from agents.train import train
from agents.tune import open_storage, tune

REPO = Path(__file__).resolve().parents[1]
States = optuna.trial.TrialState
# A tiny MLP run: 2 in-process envs, 1 s episodes, one periodic evaluation (at 256 steps) per trial.
TINY = ["env.n_envs=2", "env.vec_env=dummy", "env.kwargs={episode_seconds: 1.0}", "policy.net_arch=[16]",
        "algo.n_steps=128", "algo.batch_size=128", "eval.freq=256", "eval.n_episodes=2", "eval.final_episodes=2"]
BUDGET = 512
SPACE = {
    "algo.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
    "algo.n_epochs": {"low": 1, "high": 2},
    "policy.net_arch": {"choices": [[8], [16]]},
}
ALWAYS_PRUNE = optuna.pruners.ThresholdPruner(lower=2.0)  # a score is at most 1.001: prunes at the first report


def write_space(folder: Path, entries: dict) -> Path:
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(entries))
    return path


def tiny_tune(out: Path, trials: int, **kwargs):
    return tune("hover-mlp", TINY, trials, BUDGET, out, space=write_space(out.parent, SPACE), log=lambda _: None,
                **kwargs)


def stored_trials(out: Path, storage: str | None = None) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="tune-hover-mlp",
                             storage=open_storage(storage or f"sqlite:///{out / 'study.db'}")).trials


def test_a_three_trial_tuning_writes_its_outputs_and_a_best_config_that_trains(tmp_path):
    out = tmp_path / "tune"
    result = tiny_tune(out, trials=3)

    trials = stored_trials(out)
    assert [t.state for t in trials] == [States.COMPLETE] * 3
    assert all(sorted(t.intermediate_values) == [256] for t in trials)  # the periodic evaluation reached the pruner
    for name in ("trials.csv", "best.yaml", "history.png", "importance.png", "report.md", "study.db"):
        assert (out / name).is_file(), name
    assert all((out / "trials" / f"{t.number:04d}" / "final_eval.json").is_file() for t in trials)
    best = max(trials, key=lambda t: t.value)
    assert result.best_trial == best.number and result.best_value == best.value
    assert result.states == {"COMPLETE": 3}

    tuned = load_config(str(result.best_config), ["train.total_timesteps=256", "eval.freq=0", "train.stop_at_success=null"])
    assert tuned.algo.learning_rate == pytest.approx(best.params["algo.learning_rate"])
    assert tuned.algo.n_epochs == best.params["algo.n_epochs"]
    assert tuned.policy.net_arch == yaml.safe_load(best.params["policy.net_arch"])
    assert tuned.env.n_envs == 2 and tuned.train.total_timesteps == 256  # fixed keys kept, tuning budget not
    trained = train(tuned, tmp_path / "best-run", log=lambda _: None)
    assert trained.timesteps == 256 and (trained.run_dir / "model.zip").is_file()


def test_a_trial_the_pruner_stops_is_recorded_as_pruned_at_its_first_evaluation(tmp_path):
    out = tmp_path / "tune"
    result = tiny_tune(out, trials=1, pruner=ALWAYS_PRUNE)

    [trial] = stored_trials(out)
    assert trial.state == States.PRUNED and list(trial.intermediate_values) == [256]
    run = out / "trials" / "0000"
    assert (run / "eval.csv").is_file() and not (run / "model.zip").exists()  # stopped before the budget's end
    assert result.best_config is None and "PRUNED" in (out / "trials.csv").read_text()


def test_a_trial_that_raises_is_recorded_as_failed_and_the_tuning_goes_on(tmp_path):
    out = tmp_path / "tune"
    (out / "trials").mkdir(parents=True)
    (out / "trials" / "0000").write_text("a file where trial 0's run folder should go")

    tiny_tune(out, trials=2, pruner=ALWAYS_PRUNE)

    first, second = stored_trials(out)
    assert first.state == States.FAIL and "FileExistsError" in first.user_attrs["error"]
    assert second.state == States.PRUNED
    assert "FileExistsError" in (out / "trials.csv").read_text()


def test_rerunning_an_interrupted_tuning_continues_the_same_study(tmp_path):
    out = tmp_path / "tune"

    def interrupt_during_second_trial() -> None:
        while not (out / "trials" / "0001").is_dir():  # trial 1 has started training
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_during_second_trial, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        tiny_tune(out, trials=2)
    before = stored_trials(out)
    assert [t.state for t in before] == [States.COMPLETE, States.FAIL]

    with pytest.raises(ConfigError, match="budget"):  # another budget would not be the same study
        tune("hover-mlp", TINY, 2, 2 * BUDGET, out, space=out.parent / "space.yaml", log=lambda _: None)
    tiny_tune(out, trials=2)
    after = stored_trials(out)
    assert [t.state for t in after] == [States.COMPLETE, States.FAIL, States.COMPLETE]
    assert after[0].datetime_complete == before[0].datetime_complete and after[0].params == before[0].params


def test_two_processes_on_one_storage_share_the_study(tmp_path):
    out = tmp_path / "tune"
    space = write_space(tmp_path, SPACE)
    code = (f"from agents.tune import tune; tune('hover-mlp', {TINY!r}, 3, {BUDGET}, {str(out)!r}, "
            f"space={str(space)!r}, log=lambda _: None)")
    other = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not (out / "trials" / "0000").is_dir():  # the other process is training its first trial
            assert other.poll() is None, other.stderr.read()
            time.sleep(0.2)
        tiny_tune(out, trials=3)
        assert other.wait(timeout=300) == 0, other.stderr.read()
    finally:
        other.kill()

    trials = stored_trials(out)
    # Both check the count before starting a trial; at the same moment they can end one above 3.
    assert len(trials) in (3, 4) and all(t.state == States.COMPLETE for t in trials)
    assert {t.user_attrs["pid"] for t in trials} == {os.getpid(), other.pid}


@pytest.mark.parametrize("entry, message", [
    ({"algo.learnin_rate": {"low": 1e-4, "high": 1e-3}}, "'algo.learnin_rate': unknown config key"),
    ({"algo.n_epochs": {"low": 10, "high": 3}}, "'algo.n_epochs': low (10) must be <= high (3)"),
    ({"algo.ent_coef": {"low": 0.0, "high": 0.01, "log": True}}, "'algo.ent_coef': a log range needs low > 0"),
    ({"algo.n_steps": {"choices": []}}, "'algo.n_steps': choices must be a non-empty list"),
    ({"algo.gamma": {"low": 0.9, "high": 1.5}}, "'algo.gamma': value 1.5 is not allowed: algo.gamma must be <= 1"),
    ({"algo.gamma": {"low": 0.9, "hi": 0.99}}, "'algo.gamma': unknown field 'hi'"),
    ({"policy.core_kwargs.hidden_sise": {"choices": [16]}}, "'policy.core_kwargs.hidden_sise': value 16"),
])
def test_bad_search_space_entries_stop_with_a_clear_error_before_any_trial(tmp_path, entry, message):
    out = tmp_path / "tune"
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tune("hover-lstm", TINY, 3, BUDGET, out, space=write_space(tmp_path, entry), log=lambda _: None)
    assert not out.exists()


def test_the_tune_verb_stops_on_bad_input_with_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--trials must be an integer >= 1, got 0"):
        cli_main(["tune", "--config", "hover-mlp", "--trials", "0", "--out", str(tmp_path / "tune")])


def test_trials_run_as_ray_tasks_sharing_a_journal_storage(tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "tune"
    journal = f"journal:{tmp_path / 'journal.log'}"
    tiny_tune(out, trials=2, workers=2, backend="ray", storage=journal)

    trials = stored_trials(out, journal)
    assert [t.state for t in trials] == [States.COMPLETE] * 2
    assert os.getpid() not in {t.user_attrs["pid"] for t in trials}
