"""CorePolicy inside sb3-contrib's RecurrentPPO: state packing, sequence equivalence, save/load."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

import envs  # noqa: F401  (registers LiquidDrones/*)
from envs.wrappers import AppendStepDuration
from policies import build_core
from policies.sb3_policy import RECURRENT_CORE_NAMES, CoreSequence, CorePolicy

SMALL = {
    "lstm": {"hidden_size": 8},
    "gru": {"hidden_size": 7},
    "cfc": {"hidden_size": 8, "backbone_units": 16},
    "ltc": {"hidden_size": 6, "ode_unfolds": 2},
    "ncp-cfc": {"units": 12, "output_size": 3},
    "ncp-ltc": {"units": 12, "output_size": 3, "ode_unfolds": 2},
}
TIME_AWARE = {"cfc", "ltc", "ncp-cfc", "ncp-ltc"}


def hover_venv(n_envs: int, time_input: bool, seed: int = 0, episode_seconds: float = 8.0) -> DummyVecEnv:
    def make(rank: int):
        def thunk():
            env = gym.make("LiquidDrones/Hover-v0", episode_seconds=episode_seconds)
            env = Monitor(AppendStepDuration(env) if time_input else env)
            env.reset(seed=seed + rank)
            return env

        return thunk

    return DummyVecEnv([make(i) for i in range(n_envs)])


def small_model(core: str, n_envs: int = 2, critic: str = "separate", n_steps: int = 32,
                episode_seconds: float = 8.0) -> RecurrentPPO:
    time_input = core in TIME_AWARE
    return RecurrentPPO(
        CorePolicy,
        hover_venv(n_envs, time_input, 0, episode_seconds),
        n_steps=n_steps,
        batch_size=32,
        n_epochs=1,
        policy_kwargs={"core": core, "core_kwargs": SMALL[core], "critic": critic,
                       "elapsed_in_obs": time_input, "net_arch": [16]},
        seed=0,
        device="cpu",
    )


@pytest.mark.parametrize("state_size", [1, 6, 7])
def test_packed_state_splits_into_lstm_pair_and_unpacks_losslessly(state_size):
    core = build_core("gru", 3, hidden_size=state_size)
    sequence = CoreSequence(core)
    state = th.randn(5, state_size)
    hidden, cell = sequence.pack(state)
    assert hidden.shape == cell.shape == (1, 5, (state_size + 1) // 2)
    assert th.equal(sequence.unpack((hidden, cell)), state)


@pytest.mark.parametrize("core", RECURRENT_CORE_NAMES)
def test_predict_with_state_carried_step_by_step_equals_sequence_forward(core):
    model = small_model(core)
    policy = model.policy
    rng = np.random.default_rng(0)
    steps, n_envs = 10, 3
    obs = rng.normal(size=(steps, n_envs, policy.observation_space.shape[0])).astype(np.float32)
    if core in TIME_AWARE:
        obs[..., -1] = rng.uniform(0.01, 0.05, size=(steps, n_envs))  # step durations in s
    starts = np.zeros((steps, n_envs), dtype=bool)
    starts[0] = True
    starts[6, 1] = True  # an episode restarts mid-sequence in env 1

    state, stepwise = None, []
    for t in range(steps):
        actions, state = policy.predict(obs[t], state=state, episode_start=starts[t], deterministic=True)
        stepwise.append(actions)
    stepwise = np.stack(stepwise)

    # One call over the whole sequence, laid out as RecurrentPPO's buffer does (sequence-major).
    packed = policy.lstm_actor.initial_state(n_envs)
    flat_obs = th.as_tensor(obs.transpose(1, 0, 2).reshape(n_envs * steps, -1))
    flat_starts = th.as_tensor(starts.T.reshape(-1), dtype=th.float32)
    with th.no_grad():
        distribution, final = policy.get_distribution(flat_obs, packed, flat_starts)
    mean = distribution.distribution.mean.numpy().reshape(n_envs, steps, -1).transpose(1, 0, 2)
    np.testing.assert_allclose(stepwise, np.clip(mean, -1, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state[0], final[0].numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("core,critic", [("lstm", "separate"), ("ncp-ltc", "shared"), ("cfc", "mlp")])
def test_rollout_buffer_states_round_trip_to_identical_log_probs(core, critic):
    """States stored, sliced and padded by RecurrentPPO's buffer reproduce the rollout's log-probs."""
    model = small_model(core, n_envs=3, critic=critic, n_steps=64, episode_seconds=0.5)  # 24-step episodes
    model._setup_learn(64 * 3, None)
    model.collect_rollouts(model.env, model._init_callback(None), model.rollout_buffer, 64)
    starts = model.rollout_buffer.episode_starts
    assert starts[1:].any(), "want at least one episode start inside the rollout"
    with th.no_grad():
        for batch in model.rollout_buffer.get(48):
            values, log_prob, _ = model.policy.evaluate_actions(
                batch.observations, batch.actions, batch.lstm_states, batch.episode_starts)
            mask = batch.mask > 0
            th.testing.assert_close(log_prob[mask], batch.old_log_prob[mask], rtol=1e-4, atol=1e-4)
            th.testing.assert_close(values.flatten()[mask], batch.old_values[mask], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("core,critic", [("lstm", "separate"), ("gru", "separate"), ("cfc", "shared"),
                                         ("ltc", "separate"), ("ncp-cfc", "mlp"), ("ncp-ltc", "separate")])
def test_rollout_step_is_bit_identical_to_sb3_contrib_distribution_path(core, critic):
    """The direct one-step path (forward, predict_values, _predict) against sb3-contrib's, which
    builds SB3 Distribution objects: same actions for the same seed, same log-probs, values, states."""
    policy = small_model(core, n_envs=3, critic=critic).policy
    n_envs, generator = 4, th.Generator().manual_seed(3)
    obs = th.randn(n_envs, policy.observation_space.shape[0], generator=generator)
    if core in TIME_AWARE:
        obs[:, -1] = th.rand(n_envs, generator=generator) * 0.05
    hidden = th.randn(2, 1, n_envs, policy.lstm_actor.hidden_size, generator=generator)
    states = RNNStates((hidden[0], hidden[1]), (hidden[1] * 0.5, hidden[0] * 0.5))
    starts = th.tensor([0.0, 1.0, 0.0, 0.0])
    for tweak in (0.0, 0.3):  # the cached std follows an in-place change of log_std
        with th.no_grad():
            policy.log_std.add_(tweak)
            assert policy._one_step(starts, states.pi)
            for deterministic in (False, True):
                th.manual_seed(7)
                fast = policy(obs, states, starts, deterministic)
                th.manual_seed(7)
                reference = RecurrentActorCriticPolicy.forward(policy, obs, states, starts, deterministic)
                for a, b in zip(fast[:3], reference[:3]):
                    assert th.equal(a, b)
                for a, b in zip(fast[3].pi + fast[3].vf, reference[3].pi + reference[3].vf):
                    assert th.equal(a, b)
                if not deterministic:
                    sampled = fast
            assert th.equal(policy.predict_values(obs, states.vf, starts),
                            RecurrentActorCriticPolicy.predict_values(policy, obs, states.vf, starts))
            th.manual_seed(8)
            actions, next_pi = policy._predict(obs, states.pi, starts)
            th.manual_seed(8)
            ref_actions, ref_pi = RecurrentActorCriticPolicy._predict(policy, obs, states.pi, starts)
            assert th.equal(actions, ref_actions) and all(th.equal(a, b) for a, b in zip(next_pi, ref_pi))
        # The PPO update's sequence path (evaluate_actions, with gradients) scores the sampled actions alike.
        actions, values, log_prob, _ = sampled
        update_values, update_log_prob, _ = policy.evaluate_actions(obs, actions, states, starts)
        th.testing.assert_close(update_log_prob.detach(), log_prob, rtol=1e-6, atol=1e-5)
        th.testing.assert_close(update_values.detach(), values, rtol=1e-6, atol=1e-6)
    # The next step reads the states the last one returned without copying them.
    with th.no_grad():
        next_states = policy(obs, states, starts)[3]
        assert policy.lstm_actor.unpack(next_states.pi).data_ptr() == next_states.pi[0].data_ptr()


def test_time_aware_core_reads_step_duration_and_other_cores_ignore_it():
    obs = np.random.default_rng(1).normal(size=(4, 23)).astype(np.float32)
    slow = obs.copy()
    obs[:, -1], slow[:, -1] = 1 / 48, 1 / 12
    for core, should_differ in (("cfc", True), ("lstm", False)):
        policy = small_model(core).policy if core == "cfc" else RecurrentPPO(
            CorePolicy, hover_venv(1, True), n_steps=8, batch_size=8, seed=0,
            policy_kwargs={"core": "lstm", "core_kwargs": SMALL["lstm"], "elapsed_in_obs": True}).policy
        fast_actions, _ = policy.predict(obs, deterministic=True)
        slow_actions, _ = policy.predict(slow, deterministic=True)
        assert (not np.allclose(fast_actions, slow_actions)) == should_differ, core


@pytest.mark.parametrize("core", ["lstm", "ncp-cfc"])
def test_save_load_round_trip_gives_identical_actions(core, tmp_path):
    model = small_model(core)
    model.learn(64)
    model.save(tmp_path / "model.zip")
    loaded = RecurrentPPO.load(tmp_path / "model.zip", device="cpu")
    obs = np.random.default_rng(2).normal(size=(5, model.observation_space.shape[0])).astype(np.float32)
    obs[:, -1] = 1 / 48
    state_a = state_b = None
    for _ in range(3):
        a, state_a = model.predict(obs, state=state_a, deterministic=True)
        b, state_b = loaded.predict(obs, state=state_b, deterministic=True)
        np.testing.assert_array_equal(a, b)


def test_evaluate_policy_runs_episodes_with_recurrent_state():
    model = small_model("gru", n_envs=2)
    rewards, lengths = evaluate_policy(model, model.env, n_eval_episodes=2, return_episode_rewards=True)
    assert len(rewards) == 2 and all(n > 0 for n in lengths)


def test_mlp_core_is_rejected_with_a_pointer_to_ppo():
    with pytest.raises(ValueError, match="core must be one of"):
        CorePolicy(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-1, 1, (2,)), lambda _: 1e-3, core="mlp")


@pytest.mark.parametrize("core", ["cfc", "ltc"])
def test_rollouts_after_a_fused_adam_step_use_the_updated_weights(core):
    # torch's fused Adam writes parameters without bumping their version counters, which the
    # caches of derived weights key on; the policy drops its caches after every optimiser step.
    model = small_model(core)
    assert model.policy.optimizer.defaults["fused"] is True
    obs = np.random.default_rng(3).normal(size=(2, model.observation_space.shape[0])).astype(np.float32)
    obs[:, -1] = 1 / 48
    before, _ = model.predict(obs, deterministic=True)  # fills the caches
    model.learn(64)
    cached, _ = model.predict(obs, deterministic=True)
    for module in model.policy.modules():
        if hasattr(module, "_derived_key"):
            module._derived_key = None
    model.policy._std_cache = None
    fresh, _ = model.predict(obs, deterministic=True)
    np.testing.assert_array_equal(cached, fresh)
    assert not np.array_equal(before, cached)
