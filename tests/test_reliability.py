"""Adversarial use of the workflows: folders written side by side, cut-off and corrupt files, bad
input, leaks. Each case stops with a message naming what is wrong, before anything is written."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from agents.checkpoint import list_checkpoints
from agents.cli import main as cli
from agents.config import ConfigError, load_config
from agents.evaluate import EvaluationError, evaluate
from agents.flight import expert_spec, load_agent
from agents.io import atomic_write, write_json
from agents.lock import FolderLock
from agents.preflight import preflight
from agents.run import EVAL_FILE, RunError, read_eval_rows, read_run_config
from agents.train import train
from test_evaluate import SHORT, train_tiny_run
from test_train import tiny

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("runs"), "ncp-cfc", units=12, output_size=4)


def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that holds ``folder``'s lock until it is killed."""
    script = f"from agents.lock import FolderLock; import time; FolderLock({str(folder)!r}); print('held', flush=True); time.sleep(60)"
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_train_into_a_folder_in_use_stops_before_writing(tmp_path):
    holder = _hold_lock(tmp_path / "runs" / "same")
    try:
        with pytest.raises(SystemExit) as stop:
            cli(["train", "--config", "hover-gru", "--root", str(tmp_path / "runs"), "--name", "same"])
        assert "is in use by" in str(stop.value.code) and str(holder.pid) in str(stop.value.code)
        assert [p.name for p in (tmp_path / "runs" / "same").iterdir()] == [".lock"]
    finally:
        holder.kill()
        holder.wait()


def test_a_second_stress_into_an_output_folder_in_use_stops_before_writing(tmp_path):
    holder = _hold_lock(tmp_path / "stress")
    try:
        with pytest.raises(SystemExit) as stop:
            cli(["stress", "--expert", "--axes", "wind", "--levels", "wind=0,1", "--episodes", "1",
                 "--backend", "serial", "--out", str(tmp_path / "stress")])
        assert "stress folder" in str(stop.value.code) and "in use by" in str(stop.value.code)
        assert [p.name for p in (tmp_path / "stress").iterdir()] == [".lock"]
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_is_released_on_exit_and_only_a_dead_holder_is_reported(tmp_path):
    take = [sys.executable, "-c", f"from agents.lock import FolderLock; FolderLock({str(tmp_path / 'a')!r})"]
    lock = FolderLock(tmp_path / "a")
    refused = subprocess.run(take, cwd=REPO, env=ENV, capture_output=True, text=True)
    assert refused.returncode != 0 and f'"pid": {os.getpid()}' in refused.stderr and "LockError" in refused.stderr
    lock.release()
    for _ in range(2):  # a clean exit leaves no holder record behind
        done = subprocess.run(take, cwd=REPO, env=ENV, capture_output=True, text=True)
        assert done.returncode == 0 and "died" not in done.stdout
    killed = subprocess.Popen([*take[:-1], take[-1] + "; import os; os.kill(os.getpid(), 9)"], cwd=REPO, env=ENV)
    killed.wait()
    messages = []
    FolderLock(tmp_path / "a", log=messages.append).release()
    assert messages == [f"note: folder {(tmp_path / 'a').resolve()} was left by process {killed.pid}, which died; "
                        f"taking it over"]


def test_resume_refuses_a_cut_off_or_empty_config_naming_the_file(tmp_path):
    config = load_config("hover-gru", tiny("gru", total=256))
    run = train(config, tmp_path / "run", log=lambda _: None).run_dir
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text[: len(text) // 2].rsplit("\n", 1)[0] + "\n")
    with pytest.raises(ConfigError, match="cut off"):
        read_run_config(run / "config.yaml")
    (run / "config.yaml").write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        read_run_config(run / "config.yaml")
    with pytest.raises(RunError, match="config.yaml is empty"):
        load_agent(run)


def test_resume_repairs_a_cut_off_last_row_of_eval_csv(tmp_path):
    config = load_config("hover-gru", tiny("gru", total=1024, **{"checkpoint.freq": "512", "eval.freq": "256"}))
    run = train(config, tmp_path / "run", log=lambda _: None).run_dir
    rows = read_eval_rows(run / EVAL_FILE)
    text = (run / EVAL_FILE).read_text()
    (run / EVAL_FILE).write_text(text[:-7])  # the last row cut mid-number, without its newline
    assert len(read_eval_rows(run / EVAL_FILE)) == len(rows) - 1
    longer = load_config("hover-gru", tiny("gru", total=1536, **{"checkpoint.freq": "512", "eval.freq": "256"}))
    train(longer, run, resume=True, log=lambda _: None)
    repaired = read_eval_rows(run / EVAL_FILE)
    assert [r["timesteps"] for r in repaired] == sorted(r["timesteps"] for r in repaired)
    assert (run / EVAL_FILE).read_text().count("\n") == len(repaired) + 1


def test_evaluate_refuses_to_overwrite_an_evaluation_unless_asked(tmp_path):
    spec = expert_spec("LiquidDrones/Hover-v0", {"episode_seconds": SHORT})
    evaluate(spec, tmp_path, episodes=1, backend="serial", trace=0, log=lambda _: None)
    before = (tmp_path / "metrics.json").read_text()
    with pytest.raises(EvaluationError, match="--overwrite"):
        evaluate(spec, tmp_path, episodes=2, backend="serial", trace=0, log=lambda _: None)
    assert (tmp_path / "metrics.json").read_text() == before
    evaluate(spec, tmp_path, episodes=2, backend="serial", trace=0, log=lambda _: None, overwrite=True)
    assert json.loads((tmp_path / "metrics.json").read_text())["episodes"] == 2


def test_a_corrupt_model_or_a_config_that_disagrees_with_it_stops_naming_the_file(tiny_run, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.yaml", "normalization.json"):
        (broken / name).write_bytes((tiny_run / name).read_bytes())
    (broken / "model.zip").write_bytes(b"not a zip at all")
    with pytest.raises(RunError, match=r"broken/model\.zip is not a loadable RecurrentPPO model"):
        load_agent(broken)
    with pytest.raises(SystemExit) as stop:
        cli(["stress", str(broken), "--axes", "wind", "--episodes", "1", "--out", str(tmp_path / "s")])
    assert "model.zip" in str(stop.value.code) and not (tmp_path / "s").exists()

    relabelled = tmp_path / "relabelled"
    relabelled.mkdir()
    for name in ("model.zip", "normalization.json"):
        (relabelled / name).write_bytes((tiny_run / name).read_bytes())
    (relabelled / "config.yaml").write_text((tiny_run / "config.yaml").read_text().replace("core: ncp-cfc", "core: ncp-ltc"))
    with pytest.raises(RunError, match="holds a 'ncp-cfc' policy, but .* says policy.core 'ncp-ltc'"):
        load_agent(relabelled)


@pytest.mark.parametrize("argv, message", [
    (["stress", "--expert", "--axes", "ctrl_rate", "--levels", "ctrl_rate=47.9"], "whole number of Hz"),
    (["train", "--name", "../../escape"], "must be a plain folder name"),
    (["train", "--set", "env.id=CartPole-v1"], "not one of this suite's"),
])
def test_bad_input_stops_before_any_work(argv, message, tmp_path):
    with pytest.raises(SystemExit) as stop:
        cli([*argv, "--root", str(tmp_path)])
    assert message in str(stop.value.code)
    assert not any(tmp_path.iterdir())


def test_training_on_cuda_without_a_gpu_is_an_error_not_a_silent_cpu_run():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")  # the CI machine has none; the check then runs
    with pytest.raises(ConfigError, match="train.device: cuda"):
        preflight(load_config("hover-gru", ["train.device=cuda"]))


def test_verbs_whose_every_episode_raises_exit_non_zero(tiny_run, tmp_path):
    """A policy that outputs NaN makes every env step raise: there is no result to report."""
    import shutil

    import torch

    from agents.run import algorithm_class

    broken = tmp_path / "nan-policy"
    shutil.copytree(tiny_run, broken)
    config = read_run_config(broken / "config.yaml")
    model = algorithm_class(config).load(broken / "model.zip", device="cpu")
    with torch.no_grad():
        model.policy.action_net.weight.fill_(float("nan"))
    model.save(broken / "model.zip")
    for argv in (["evaluate", str(broken), "--episodes", "2", "--workers", "1", "--out", str(tmp_path / "e")],
                 ["stress", str(broken), "--axes", "wind", "--levels", "wind=0,1", "--episodes", "1",
                  "--backend", "serial", "--out", str(tmp_path / "s")]):
        with pytest.raises(SystemExit) as stop:
            cli(argv)
        assert "every one of the" in str(stop.value.code)


def test_killing_a_sweep_kills_its_pool_workers(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "agents.cli", "stress", "--expert", "--axes", "wind", "--levels", "wind=0,1,2,3",
         "--episodes", "40", "--workers", "2", "--out", str(tmp_path / "s")],
        cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(process.pid)
    episodes = tmp_path / "s" / "episodes.csv"
    deadline = time.time() + 90
    while (not episodes.exists() or episodes.read_text().count("\n") < 3) and time.time() < deadline:
        time.sleep(0.1)  # the workers are flying
    workers = parent.children(recursive=True)
    assert workers, "the pool never started"
    process.send_signal(signal.SIGKILL)
    process.wait()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"{len(alive)} worker(s) outlived their parent"


def test_a_checkpoint_write_killed_midway_is_cleaned_on_the_next_start(tmp_path):
    config = load_config("hover-gru", tiny("gru", total=512, **{"checkpoint.freq": "256"}))
    run = train(config, tmp_path / "run", log=lambda _: None).run_dir
    partial = run / "checkpoints" / ".step_000000000768.abcd"
    partial.mkdir()
    (partial / "model.zip").write_bytes(b"half")
    train(load_config("hover-gru", tiny("gru", total=1024, **{"checkpoint.freq": "256"})), run, resume=True,
          log=lambda _: None)
    assert not partial.exists()
    assert list_checkpoints(run / "checkpoints")[-1].name == "step_000000001024"


def test_output_files_honour_the_umask_and_json_is_strict(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.png", lambda p: p.write_bytes(b"x"))
        write_json(tmp_path / "b.json", {"nan": float("nan"), "inf": [float("inf")], "ok": 1.5})
    finally:
        os.umask(old)
    for name in ("a.png", "b.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
    text = (tmp_path / "b.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON")) == \
        {"nan": None, "inf": [None], "ok": 1.5}


def test_every_loading_verb_says_that_run_folders_are_code(capsys):
    for verb in ("evaluate", "stress", "compare", "train"):
        with pytest.raises(SystemExit):
            cli([verb, "--help"])
        assert "Load only runs you trust" in textwrap.dedent(capsys.readouterr().out).replace("\n", " ")
