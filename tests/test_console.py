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


def test_ctrl_c_during_training_saves_a_resumable_run_and_exits_without_a_traceback(tmp_path):
    config = load_config("hover-mlp", tiny(1_000_000))
    config_file = tmp_path / "mlp.yaml"
    config_file.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    run = tmp_path / "runs" / "stopped"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "agents.cli", "train", "--config", str(config_file), "--root", str(tmp_path / "runs"),
         "--name", "stopped"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "train.log").is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)  # a few rollouts in
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
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
