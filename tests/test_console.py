"""The training console: lines in train.log as well as on the console; Ctrl-C saves a resumable run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from agents.config import load_config
from agents.run import read_run_config
from agents.train import train

REPO = Path(__file__).resolve().parents[1]


def tiny(total: int, **extra: str) -> list[str]:
    settings = {"env.n_envs": "2", "env.vec_env": "dummy", "env.kwargs": "{episode_seconds: 1.0}",
                "algo.n_steps": "64", "algo.batch_size": "64", "algo.n_epochs": "1",
                "train.total_timesteps": str(total), "eval.freq": "0", "eval.final_episodes": "0",
                "checkpoint.freq": "0", "train.progress_bar": "false", "train.stop_at_success": "null", **extra}
    return [f"{key}={value}" for key, value in settings.items()]


def test_each_evaluation_line_shows_success_with_its_interval_on_the_console_and_in_train_log(tmp_path):
    config = load_config("hover-mlp", tiny(256, **{"eval.freq": "128", "eval.n_episodes": "2"}))
    lines: list[str] = []
    train(config, tmp_path / "run", log=lines.append)
    evaluations = [line for line in lines if line.startswith("[eval]")]
    assert len(evaluations) == 1 and all("success" in line and "95 % CI" in line for line in evaluations)
    logged = (tmp_path / "run" / "train.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in logged] == lines  # every line, each behind its time stamp
    assert logged[0][:4].isdigit() and "T" in logged[0].split(" ")[0]


def interrupted_training(tmp_path: Path, vec_env: str, whole_group: bool) -> tuple[Path, str, str, int]:
    """Start `liquid-drones train` (a long run) in a subprocess, send SIGINT once it is training
    (to the process, or like a terminal to its whole process group), and wait for it to exit.

    :return: the run folder, stdout, stderr and the exit status
    """
    config = load_config("hover-mlp", tiny(1_000_000, **{"env.vec_env": vec_env}))
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    run = tmp_path / "runs" / "stopped"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "agents.cli", "train", "--config", str(config_file), "--root", str(tmp_path / "runs"),
         "--name", "stopped"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    deadline = time.time() + 120
    while not (run / "train.log").is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)  # a few rollouts in
    if whole_group:
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    return run, out, err, process.returncode


def test_ctrl_c_during_training_saves_a_resumable_run_and_exits_without_a_traceback(tmp_path):
    run, out, err, status = interrupted_training(tmp_path, "dummy", whole_group=False)
    assert status == 130, err
    assert "Traceback" not in err and "interrupted at step" in out and "--resume" in out
    assert (run / "model.zip").is_file() and (run / "normalization.json").is_file()
    assert not (run / "final_eval.json").exists()  # not finished: a study resumes it
    stopped_at = int(out.split("interrupted at step ")[1].split(":")[0].replace(",", ""))
    assert 0 < stopped_at < 1_000_000

    longer = read_run_config(run / "config.yaml", [f"train.total_timesteps={stopped_at + 128}"])
    messages: list[str] = []
    result = train(longer, run, resume=True, log=messages.append)
    assert f"resuming {run} from step {stopped_at:,}" in messages
    assert result.timesteps >= stopped_at + 128 and (run / "final_eval.json").is_file()


def test_a_terminals_ctrl_c_reaching_subprocess_env_workers_too_still_saves_the_run(tmp_path):
    run, out, err, status = interrupted_training(tmp_path, "subproc", whole_group=True)
    assert status == 130 and "Traceback" not in err, err
    assert "interrupted at step" in out and (run / "model.zip").is_file()


def test_print_config_prints_the_resolved_config_and_trains_nothing(tmp_path, capsys):
    from agents.cli import main

    main(["train", "--config", "hover-lstm", "--set", "algo.learning_rate=1e-3", "--seed", "7", "--print-config",
          "--root", str(tmp_path)])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == load_config("hover-lstm", ["algo.learning_rate=1e-3", "train.seed=7"]).to_dict()
    assert printed["policy"]["core"] == "lstm" and printed["train"]["seed"] == 7
    assert not any(tmp_path.iterdir())


def test_list_names_configs_envs_cores_axes_with_units_and_levels_and_studies(capsys):
    from agents.cli import main
    from envs.disturbances import AXES, AXIS_LABELS, DEFAULT_LEVELS
    from policies import CORE_NAMES

    main(["list"])
    out = capsys.readouterr().out
    for word in ["waypoints", "LiquidDrones/Forest-v0", "hover-cores", *CORE_NAMES, *AXES]:
        assert word in out, word
    assert AXIS_LABELS["wind"] in out and ", ".join(f"{v:g}" for v in DEFAULT_LEVELS["latency"]) in out


def test_version_names_the_package_and_its_git_commit(capsys):
    import pytest

    from agents.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("liquid-drones ")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert f"git {head.stdout.strip()}" in line
