"""Camera observations: the conv-head encoder feeds a recurrent core trained by RecurrentPPO."""

from __future__ import annotations

import numpy as np
import torch as th
from sb3_contrib import RecurrentPPO

import envs
from envs.wrappers import AppendStepDuration
from policies.encoders import ConvStateEncoder
from policies.sb3_policy import CorePolicy


def test_conv_head_and_ncp_core_train_on_camera_observations_and_predict():
    env = AppendStepDuration(envs.FollowEnv(camera=True))
    model = RecurrentPPO(CorePolicy, env, n_steps=64, batch_size=64, n_epochs=1, seed=0,
                         policy_kwargs={"core": "ncp-cfc", "elapsed_in_obs": True,
                                        "features_extractor_class": ConvStateEncoder})
    extractor = model.policy.features_extractor
    assert isinstance(extractor, ConvStateEncoder)
    before = [p.detach().clone() for p in extractor.conv.parameters()]
    model.learn(128)
    assert any(not th.equal(a, b) for a, b in zip(before, extractor.conv.parameters()))
    obs, _ = env.reset(seed=0)
    action, state = model.predict(obs, deterministic=True)
    assert action.shape == (4,) and np.all(np.abs(action) <= 1.0)
    again, _ = model.predict(obs, state=state, episode_start=np.zeros(1, dtype=bool),
                             deterministic=True)
    assert again.shape == (4,)


def test_encoder_features_end_with_the_state_so_the_step_duration_stays_last():
    env = AppendStepDuration(envs.ForestEnv(camera=True))
    encoder = ConvStateEncoder(env.observation_space, image_features=16)
    obs, _ = env.reset(seed=0)
    image = th.as_tensor(obs["image"]).permute(2, 0, 1).unsqueeze(0).float() / 255.0
    state = th.as_tensor(obs["state"]).unsqueeze(0)
    features = encoder({"image": image, "state": state})
    assert features.shape == (1, 16 + state.shape[1])
    assert th.equal(features[0, -state.shape[1]:], state[0])
    assert features[0, -1].item() == np.float32(1 / 48)
