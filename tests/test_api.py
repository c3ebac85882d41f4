"""The Python API: the README's snippet flies a run trained here; state and batches behave."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from agents import load_policy
from test_evaluate import train_tiny_run

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {"cfc": train_tiny_run(root, "ncp-cfc", units=12, output_size=4), "mlp": train_tiny_run(root, "mlp")}


def readme_python_snippet() -> str:
    section = README.read_text().split("### Use a trained policy from Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("core", ["cfc", "mlp"])
def test_the_readme_snippet_flies_an_episode_of_a_run_trained_here(core, runs, capsys):
    code = readme_python_snippet().replace('"runs/main"', repr(str(runs[core])))
    assert code != readme_python_snippet(), "the snippet no longer loads runs/main"
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    info = namespace["info"]
    assert namespace["done"] and "is_success" in info and info["dt"] > 0
    assert capsys.readouterr().out.strip() in ("success", "crash", "timeout")


def test_act_carries_the_recurrent_state_and_reset_starts_over(runs):
    policy = load_policy(runs["cfc"])
    assert policy.recurrent and policy.make_env().observation_space.shape == (23,)  # + step duration
    env = policy.make_env()
    obs, _ = env.reset(seed=3)
    observations = [obs]
    for _ in range(5):
        obs, *_ = env.step(policy.act(obs))
        observations.append(obs)
    env.close()
    policy.reset()
    first = [policy.act(o) for o in observations]
    policy.reset()
    again = [policy.act(o) for o in observations]
    np.testing.assert_array_equal(first, again)
    state, stateless = None, []
    for i, o in enumerate(observations):  # the explicit-state step gives the same actions
        action, state = policy.step(o, state, episode_start=i == 0)
        stateless.append(action)
    np.testing.assert_array_equal(first, stateless)
    fresh = policy.step(observations[3], None, True)[0]
    assert not np.array_equal(fresh, first[3]), "the state carried from earlier steps has no effect"


def test_a_batch_of_observations_gives_a_batch_of_the_single_actions(runs):
    policy = load_policy(runs["mlp"])
    env = policy.make_env()
    obs = np.stack([env.reset(seed=s)[0] for s in range(3)])
    env.close()
    actions, state = policy.step(obs, None, True)
    assert actions.shape == (3, 4) and state is None and np.all(np.abs(actions) <= 1)
    np.testing.assert_allclose(actions[1], policy.step(obs[1], None, True)[0], atol=1e-6)
