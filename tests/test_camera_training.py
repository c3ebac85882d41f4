"""`liquid-drones train` with camera observations: the conv head feeds a core, runs save and load."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from agents.config import load_config
from agents.run import algorithm_class, uses_time_input
from agents.train import make_vec_env, normalize, train
from policies.encoders import ConvStateEncoder
from test_train import tiny


@pytest.mark.parametrize("core", ["ncp-cfc", "mlp"])
def test_camera_config_trains_with_the_conv_head_and_writes_a_loadable_run(core, tmp_path):
    overrides = tiny(core, total=512, **{"env.kwargs": "{camera: true, episode_seconds: 1.0}",
                                         "eval.freq": "0", "eval.final_episodes": "2",
                                         "checkpoint.freq": "512"})
    config = load_config(f"forest-camera-{core}" if core != "ncp-cfc" else "forest-camera",
                         overrides)
    result = train(config, tmp_path / "run", log=lambda _: None)
    model = algorithm_class(config).load(result.run_dir / "model.zip", device="cpu")
    assert isinstance(model.policy.features_extractor, ConvStateEncoder)
    assert result.timesteps == 512

    time_input = uses_time_input(config)
    venv = normalize(make_vec_env(config, 1, seed=3, time_input=time_input), config, time_input,
                     training=False)
    assert isinstance(venv.observation_space, gym.spaces.Dict)
    assert venv.norm_obs_keys == ["state"]
    obs = venv.reset()
    assert obs["image"].dtype == np.uint8  # pixels reach the encoder unnormalised
    actions, _ = model.predict(obs, deterministic=True)
    assert actions.shape == (1, 4) and np.all(np.abs(actions) <= 1)
    venv.close()
