"""Exported actors (TorchScript, ONNX, C) fly the same actions as the PyTorch policy they came from.

Each variant is built as training builds it (`agents.train.build_model` on a normalised Hover
vec env), its parameters are moved off their initial values (so that every weight matters, also
the LTC's unit input/output maps and the CfC's pure-mode constants), and one run of 100 control
steps with episode starts is recorded with SB3's ``predict(deterministic=True)`` on the
observations ``VecNormalize`` normalises. The exports replay the raw observations.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

from agents.config import load_config
from agents.train import build_model, make_vec_env, normalize, uses_time_input
from policies.encoders import ConvStateEncoder
from policies import CORE_NAMES
from policies.export import FORMATS, NormStats, c_footprint, export_actor
from policies.export.footprint import instructions_per_step
from policies.sb3_policy import CorePolicy

TOLERANCE = 1e-5
STEPS = 100
#: label -> (core, core_kwargs, extra config overrides); small sizes as in tests/test_train.py
VARIANTS = {
    "mlp": ("mlp", {}, {}),
    "lstm": ("lstm", {"hidden_size": 16}, {}),
    "gru": ("gru", {"hidden_size": 16}, {}),
    "gru-elu-head": ("gru", {"hidden_size": 16}, {"policy.activation": "elu", "policy.net_arch": "[16, 16]"}),
    "cfc": ("cfc", {"hidden_size": 16, "backbone_units": 32}, {}),
    "cfc-no_gate": ("cfc", {"hidden_size": 16, "backbone_units": 32, "mode": "no_gate"}, {}),
    "cfc-pure-2-silu": ("cfc", {"hidden_size": 16, "backbone_units": 32, "mode": "pure", "backbone_layers": 2,
                                "backbone_activation": "silu"}, {}),
    "ltc": ("ltc", {"hidden_size": 8, "ode_unfolds": 3}, {}),
    "ltc-elapsed": ("ltc", {"hidden_size": 8, "ode_unfolds": 3}, {"policy.time_input": "true"}),
    "ncp-cfc": ("ncp-cfc", {"units": 16, "output_size": 4}, {}),
    "ncp-cfc-pure": ("ncp-cfc", {"units": 16, "output_size": 4, "mode": "pure"}, {}),
    "ncp-ltc": ("ncp-ltc", {"units": 16, "output_size": 4, "ode_unfolds": 3}, {}),
}


def config_for(core: str, core_kwargs: dict, extra: dict):
    overrides = {
        "env.n_envs": "1",
        "env.vec_env": "dummy",
        "env.kwargs": "{episode_seconds: 1.0}",  # 48 steps: episode starts inside the 100 recorded
        "policy.core_kwargs": json.dumps(core_kwargs),
        "algo.n_steps": "64",
        "algo.batch_size": "64",
        **extra,
    }
    return load_config(f"hover-{core}", [f"{key}={value}" for key, value in overrides.items()])


@cache
def recorded(label: str):
    """``(policy, norm, raw observations [T, O], episode starts [T], actions [T, A])`` of ``label``."""
    config = config_for(*VARIANTS[label])
    time_input = uses_time_input(config)
    venv = normalize(make_vec_env(config, 1, seed=7, time_input=time_input), config, time_input)
    model = build_model(config, venv, None, time_input)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.policy.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    if isinstance(model.policy, CorePolicy):
        model.policy.forget_derived()
    venv.reset()
    rng = np.random.default_rng(0)
    for _ in range(60):  # statistics away from their initial 0 / 1
        venv.step(rng.uniform(-0.3, 0.3, (1, 4)).astype(np.float32))
    venv.training = False
    obs, state, start = venv.reset(), None, np.ones(1, dtype=bool)
    raw, starts, actions = [], [], []
    for _ in range(STEPS):
        raw.append(venv.get_original_obs()[0].copy())
        starts.append(bool(start[0]))
        action, state = model.predict(obs, state=state, episode_start=start, deterministic=True)
        actions.append(action[0])
        obs, _, start, _ = venv.step(action)
    norm = NormStats.from_vec_normalize(venv)
    venv.close()
    return model.policy, norm, np.array(raw), np.array(starts), np.array(actions)


def replay(step, state_size: int, raw: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Actions of ``step(obs [1, O], state [1, H], start [1]) -> (action, state)`` over a recording."""
    state, actions = np.zeros((1, state_size), dtype=np.float32), []
    for obs, start in zip(raw, starts):
        action, state = step(obs[None].astype(np.float32), state, np.array([float(start)], dtype=np.float32))
        actions.append(np.asarray(action)[0])
    return np.array(actions)


def assert_batch_steps_as_single_envs(step, state_size: int, raw: np.ndarray) -> None:
    """A batch of 3 envs (one starting an episode) gives each env's single-env action and state."""
    rng = np.random.default_rng(2)
    obs = raw[[10, 40, 70]].astype(np.float32)
    state = rng.uniform(-0.5, 0.5, (3, state_size)).astype(np.float32)
    start = np.array([0.0, 1.0, 0.0], dtype=np.float32)
    actions, states = step(obs, state, start)
    for i in range(3):
        action, next_state = step(obs[i : i + 1], state[i : i + 1], start[i : i + 1])
        np.testing.assert_allclose(actions[i : i + 1], action, rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(states[i : i + 1], next_state, rtol=0, atol=TOLERANCE)


def state_size(policy) -> int:
    return policy.lstm_actor.state_size if isinstance(policy, CorePolicy) else 0


def test_recordings_contain_episode_starts_and_actions_that_vary():
    _, _, _, starts, actions = recorded("ncp-ltc")
    assert starts[0] and starts[1:].sum() >= 1
    assert np.ptp(actions, axis=0).max() > 0.05


@pytest.mark.parametrize("label", VARIANTS)
def test_torchscript_actor_reproduces_the_policy_actions(label, tmp_path):
    policy, norm, raw, starts, expected = recorded(label)
    (path,) = export_actor(policy, norm, "torchscript", tmp_path)
    actor = torch.jit.load(str(path))

    def step(obs, state, start):
        with torch.no_grad():
            action, state = actor(torch.from_numpy(obs), torch.from_numpy(state), torch.from_numpy(start))
        return action.numpy(), state.numpy()

    np.testing.assert_allclose(replay(step, state_size(policy), raw, starts), expected, rtol=0, atol=TOLERANCE)
    assert_batch_steps_as_single_envs(step, state_size(policy), raw)


@pytest.mark.parametrize("label", CORE_NAMES)  # one variant per core: an ONNX export takes seconds
def test_onnx_actor_reproduces_the_policy_actions_in_onnxruntime(label, tmp_path):
    import onnxruntime
    policy, norm, raw, starts, expected = recorded(label)
    (path,) = export_actor(policy, norm, "onnx", tmp_path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def step(obs, state, start):
        return session.run(None, {"obs": obs, "state": state, "episode_start": start})

    np.testing.assert_allclose(replay(step, state_size(policy), raw, starts), expected, rtol=0, atol=TOLERANCE)
    assert_batch_steps_as_single_envs(step, state_size(policy), raw)


def compiled(source: Path) -> ctypes.CDLL:
    """The exported C step as a shared library, compiled strictly (warnings are errors)."""
    library = source.with_suffix(".so")
    subprocess.run(["cc", "-std=c99", "-O2", "-Wall", "-Wextra", "-pedantic", "-Werror", "-fPIC", "-shared",
                    str(source), "-o", str(library), "-lm"], check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(library))


@pytest.mark.parametrize("label", VARIANTS)
def test_c_actor_reproduces_the_policy_actions(label, tmp_path):
    policy, norm, raw, starts, expected = recorded(label)
    source, header = export_actor(policy, norm, "c", tmp_path)
    assert f"#define ACTOR_STATE_SIZE {state_size(policy)}\n" in header.read_text()
    library = compiled(source)
    floats = ctypes.POINTER(ctypes.c_float)
    state = np.zeros(max(state_size(policy), 1), dtype=np.float32)
    actions = []
    for obs, start in zip(raw.astype(np.float32), starts):
        if start:
            library.actor_reset(state.ctypes.data_as(floats))
        action = np.zeros(expected.shape[1], dtype=np.float32)
        library.actor_step(state.ctypes.data_as(floats), obs.ctypes.data_as(floats), action.ctypes.data_as(floats))
        actions.append(action)
    np.testing.assert_allclose(np.array(actions), expected, rtol=0, atol=TOLERANCE)


def camera_policy() -> CorePolicy:
    space = spaces.Dict({"image": spaces.Box(0, 255, (3, 24, 32), np.uint8),
                         "state": spaces.Box(-np.inf, np.inf, (6,), np.float32)})
    action_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
    return CorePolicy(space, action_space, lambda _: 1e-3, core="ncp-cfc", core_kwargs={"units": 12, "output_size": 4},
                      features_extractor_class=ConvStateEncoder, features_extractor_kwargs={"image_features": 8})


def test_torchscript_exports_a_camera_policy_and_c_refuses_it_by_name(tmp_path):
    policy = camera_policy()
    rng = np.random.default_rng(1)
    norm = NormStats(rng.normal(size=6), rng.uniform(0.5, 2.0, 6))
    (path,) = export_actor(policy, norm, "torchscript", tmp_path)
    actor = torch.jit.load(str(path))
    state, packed, start = torch.zeros(1, 12), None, np.ones(1, dtype=bool)
    for _ in range(5):
        image = rng.integers(0, 256, (1, 3, 24, 32), dtype=np.uint8)
        raw = rng.normal(size=(1, 6)).astype(np.float32)
        normalised = np.clip((raw - norm.mean) / np.sqrt(norm.var + norm.epsilon), -10, 10).astype(np.float32)
        expected, packed = policy.predict({"image": image, "state": normalised}, packed, start, deterministic=True)
        with torch.no_grad():
            action, state = actor(torch.from_numpy(image), torch.from_numpy(raw), state,
                                  torch.from_numpy(start.astype(np.float32)))
        np.testing.assert_allclose(action.numpy(), expected, rtol=0, atol=TOLERANCE)
        start = np.zeros(1, dtype=bool)
    with pytest.raises(ValueError, match="camera image.*torchscript or onnx"):
        export_actor(policy, norm, "c", tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_export_names_an_unknown_format_and_statistics_of_the_wrong_length(tmp_path):
    policy, norm, *_ = recorded("gru")
    with pytest.raises(ValueError, match="'tflite'.*torchscript, onnx, c"):
        export_actor(policy, norm, "tflite", tmp_path)
    short = NormStats(norm.mean[:-1], norm.var[:-1])
    for fmt in FORMATS:
        with pytest.raises(ValueError, match="statistics have 21 elements"):
            export_actor(policy, short, fmt, tmp_path / fmt)


def test_c_footprint_counts_the_lstm_step_exactly_and_fits_the_crazyflie(tmp_path):
    policy, norm, *_ = recorded("lstm")
    report = c_footprint(policy, norm)
    obs, hidden, head, actions = 22, 16, 64, 4  # Hover: 22 observations; head [64]
    assert report["macs"] == 4 * hidden * (obs + hidden) + hidden * head + head * actions
    assert report["transcendentals"] == 5 * hidden + head
    assert report["state_bytes"] == 4 * 2 * hidden
    weights = 4 * hidden * (obs + hidden) + 4 * hidden + (hidden + 1) * head + (head + 1) * actions
    assert report["parameter_bytes"] == 4 * (weights + 2 * obs + 2 * actions)  # + statistics and bounds
    assert report["parameter_bytes"] < report["flash_bytes"] < 1024**2  # STM32F405: 1 MB flash
    assert report["state_bytes"] < report["ram_bytes"] < 192 * 1024  # 192 KB RAM


def footprint_table() -> str:
    """The footprint of every core at its Hover training size (agents/configs/hover.yaml)."""
    rows = []
    for core in ("mlp", "lstm", "gru", "cfc", "ltc", "ncp-cfc", "ncp-ltc"):
        config = load_config(f"hover-{core}", ["env.n_envs=1", "env.vec_env=dummy", "algo.batch_size=256"])
        time_input = uses_time_input(config)
        venv = make_vec_env(config, 1, seed=0, time_input=time_input)
        model = build_model(config, venv, None, time_input)
        size = venv.observation_space.shape[0]
        norm = NormStats(np.zeros(size), np.ones(size), raw_last=time_input)
        report = c_footprint(model.policy, norm)
        report["x86_instructions"] = instructions_per_step(model.policy, norm) or "no valgrind"
        venv.close()
        rows.append((f"{core} {json.dumps(config.policy.core_kwargs)}", report))
    keys = list(rows[0][1])
    lines = [" | ".join(["core", *keys]), " | ".join(["---"] * (len(keys) + 1))]
    lines += [" | ".join([name, *(f"{report[key]:,.0f}" if isinstance(report[key], (int, float)) else report[key]
                                  for key in keys)]) for name, report in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(footprint_table())
