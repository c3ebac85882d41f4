"""Config loading, merging and validation: every problem stops before work, naming the key."""

from __future__ import annotations

import pytest
import yaml

from agents.cli import main as cli
from agents.checkpoint import incompatible_keys
from agents.config import ConfigError, available_configs, load_config, parse_override
from agents.preflight import preflight
from agents.run import read_run_config, save_config
from policies import CORE_NAMES


def test_default_config_is_hover_with_cfc_on_an_autoncp_wiring():
    config = load_config()
    assert config.env.id == "LiquidDrones/Hover-v0"
    assert config.policy.core == "ncp-cfc"
    assert config.policy.core_kwargs["units"] > config.policy.core_kwargs["output_size"]


@pytest.mark.parametrize("name", available_configs())
def test_every_named_config_validates(name):
    config = load_config(name)
    core = next((c for c in sorted(CORE_NAMES, key=len, reverse=True) if name.endswith(f"-{c}")), "")
    task = name.removesuffix(f"-{core}") if core else name
    assert config.env.id.lower().endswith(f"/{task.split('-')[0]}-v0")  # forest-camera: Forest-v0
    if core:
        assert config.policy.core == core


def test_task_core_names_cover_both_tasks_and_every_core():
    names = set(available_configs())
    assert {f"{task}-{core}" for task in ("hover", "waypoints") for core in CORE_NAMES} <= names


def test_choosing_another_core_drops_the_file_cores_kwargs():
    config = load_config("hover-lstm")
    assert config.policy.core_kwargs == {"hidden_size": 64}
    assert load_config("hover", ["policy.core=gru"]).policy.core_kwargs == {"hidden_size": 64}


def test_set_overrides_win_and_parse_yaml_values():
    config = load_config("waypoints-cfc", ["algo.learning_rate=1e-3", "policy.net_arch=[32, 32]",
                                           "policy.core_kwargs.hidden_size=16", "env.kwargs={ctrl_freq: 24}"])
    assert config.algo.learning_rate == 1e-3
    assert config.policy.net_arch == [32, 32]
    assert config.policy.core_kwargs["hidden_size"] == 16 and config.policy.core_kwargs["mode"] == "default"
    assert config.env.kwargs == {"ctrl_freq": 24}


@pytest.mark.parametrize(
    "override, named, allowed",
    [
        ("algo.lerning_rate=1e-3", "algo.lerning_rate", "learning_rate"),
        ("optimiser.lr=1", "optimiser", "algo"),
        ("policy.core=transformer", "policy.core", "ncp-cfc"),
        ("policy.critic=both", "policy.critic", "separate"),
        ("algo.n_steps=-5", "algo.n_steps", ">= 1"),
        ("algo.n_epochs=ten", "algo.n_epochs", "integer"),
        ("algo.gamma=1.5", "algo.gamma", "<= 1.0"),
        ("env.vec_env=ray", "env.vec_env", "subproc"),
        ("policy.net_arch={pi: [8]}", "policy.net_arch", "pi and vf"),
        ("algo.batch_size=100000", "algo.batch_size", "n_steps x env.n_envs"),
        ("policy.core_kwargs.hiden_size=3", "policy.core_kwargs", "hidden_size"),
        ("env.id=LiquidDrones/Hoover-v0", "env.id", "LiquidDrones/Hover-v0"),
        ("env.kwargs={ctrl_freq: 50}", "env.kwargs", "allowed control rates"),
        ("env.kwargs={actoin: ctbr}", "env.kwargs", "allowed"),
    ],
)
def test_bad_keys_and_values_raise_naming_the_key_and_what_is_allowed(override, named, allowed):
    with pytest.raises(ConfigError) as error:
        preflight(load_config("hover-lstm", [override]))
    assert named in str(error.value) and allowed in str(error.value)


def test_unknown_config_name_lists_the_available_ones():
    with pytest.raises(ConfigError, match="hover-lstm"):
        load_config("hoover")


def test_malformed_override_is_a_config_error():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("algo.n_steps")


def test_unknown_key_in_a_yaml_file_is_named(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"env": {"id": "LiquidDrones/Hover-v0", "n_env": 4}}))
    with pytest.raises(ConfigError, match=r"env\.n_env.*n_envs"):
        load_config(str(path))


def test_saved_config_reloads_identically_and_resume_keys_are_classified(tmp_path):
    config = load_config("hover-gru", ["train.total_timesteps=5000"])
    save_config(config, tmp_path / "config.yaml")
    again = read_run_config(tmp_path / "config.yaml")
    assert again == config
    longer = read_run_config(tmp_path / "config.yaml", ["train.total_timesteps=9000", "eval.freq=10"])
    assert incompatible_keys(config, longer) == []
    other = read_run_config(tmp_path / "config.yaml", ["policy.core_kwargs.hidden_size=8", "algo.gamma=0.9"])
    assert incompatible_keys(config, other) == ["algo.gamma", "policy.core_kwargs.hidden_size"]


def test_cli_stops_on_a_bad_key_before_creating_a_run_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(["train", "--root", str(tmp_path), "--name", "x", "--set", "algo.n_stepz=3"])
    assert "algo.n_stepz" in str(exit_.value.code)
    assert not (tmp_path / "x").exists()


def test_bench_learn_rejects_an_unknown_config_before_training(tmp_path):
    with pytest.raises(SystemExit) as exit_:
        cli(["bench", "learn", "--out", str(tmp_path), "--configs", "hover-gru,hover-transformer"])
    message = str(exit_.value.code)
    assert "hover-transformer" in message and "waypoints-ncp-ltc" in message and "hover-gru'" not in message
    assert not list(tmp_path.iterdir())
