"""`liquid-drones train`: config -> vectorised envs -> policy -> learn -> run folder.

A run folder ``runs/<name>/`` holds ``config.yaml``, ``tb/`` (TensorBoard), ``checkpoints/``,
``eval.csv`` and ``training_curve.png`` (periodic evaluations), ``best_model.zip`` (+
``best_vecnormalize.pkl``), and at the end ``model.zip``, ``vecnormalize.pkl`` and
``final_eval.json``. ``train(config, run_dir, resume=True)`` continues a run from its newest
checkpoint to the configured total number of env steps.

Note: with ``env.vec_env`` subproc, a script that calls `train` needs the usual
``if __name__ == "__main__":`` guard (worker processes re-import the main module).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch as th
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    SubprocVecEnv,
    VecEnv,
    VecNormalize,
    sync_envs_normalization,
)

from agents.callbacks import (
    CheckpointEvery,
    EvalEvery,
    EvalSummary,
    RolloutStatsCallback,
    append_row,
    eval_row,
    evaluate_episodes,
    plot_training_curve,
    truncate_rows,
)
from agents.checkpoint import (
    Checkpoint,
    CheckpointError,
    atomic_write,
    latest_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from agents.config import (
    RESUMABLE_PREFIXES,
    Config,
    ConfigError,
    incompatible_keys,
    read_run_config,
    save_config,
)
from policies.encoders import ConvStateEncoder
from policies.sb3_policy import CorePolicy

ACTIVATIONS = {"tanh": th.nn.Tanh, "relu": th.nn.ReLU, "elu": th.nn.ELU, "silu": th.nn.SiLU}
EVAL_SEED_OFFSET = 10_000  # eval envs draw episodes from seeds disjoint from the training envs'


class StepDurationVecNormalize(VecNormalize):
    """VecNormalize that leaves the last observation entry (the step duration in s) untouched.

    Time-aware cores need the true duration; normalising it would turn it into a z-score.
    """

    def _normalize_obs(self, obs: np.ndarray, obs_rms: Any) -> np.ndarray:
        normalized = super()._normalize_obs(obs, obs_rms)
        normalized[..., -1] = obs[..., -1]
        return normalized

    def _unnormalize_obs(self, obs: np.ndarray, obs_rms: Any) -> np.ndarray:
        restored = super()._unnormalize_obs(obs, obs_rms)
        restored[..., -1] = obs[..., -1]
        return restored


def uses_time_input(config: Config) -> bool:
    """Whether the policy receives step durations (``policy.time_input``, ``auto``: time-aware cores)."""
    if config.policy.time_input != "auto":
        return bool(config.policy.time_input)
    if config.policy.core == "mlp":
        return False
    from policies import build_core

    return build_core(config.policy.core, 4, **config.policy.core_kwargs).time_aware


def env_factory(env_id: str, kwargs: dict[str, Any], seed: int, time_input: bool) -> Callable[[], gym.Env]:
    """A picklable constructor of one monitored env (SubprocVecEnv workers call it)."""

    def make() -> gym.Env:
        import envs  # noqa: F401  (registers the LiquidDrones ids in a fresh worker process)

        env = gym.make(env_id, **kwargs)
        if time_input:
            from envs.wrappers import AppendStepDuration

            env = AppendStepDuration(env)
        env = Monitor(env)
        env.action_space.seed(seed)
        return env

    return make


def make_vec_env(config: Config, n_envs: int, seed: int, time_input: bool, subproc: bool | None = None) -> VecEnv:
    """``n_envs`` monitored copies of the configured env; their first resets use ``seed, seed + 1, ...``."""
    factories = [env_factory(config.env.id, config.env.kwargs, seed + i, time_input) for i in range(n_envs)]
    if subproc is None:
        subproc = config.env.vec_env == "subproc" or (config.env.vec_env == "auto" and n_envs > 1)
    venv = SubprocVecEnv(factories) if subproc else DummyVecEnv(factories)
    venv.seed(seed)
    return venv


def normalize(venv: VecEnv, config: Config, time_input: bool, training: bool = True) -> VecEnv:
    """Wrap ``venv`` in (StepDuration)VecNormalize as configured; evaluation envs keep raw rewards."""
    if not (config.env.normalize_obs or config.env.normalize_reward):
        return venv
    cls = StepDurationVecNormalize if time_input else VecNormalize
    # Camera observations: normalise the state vector only; images stay uint8 for the encoder.
    keys = ["state"] if isinstance(venv.observation_space, gym.spaces.Dict) else None
    return cls(
        venv,
        training=training,
        norm_obs=config.env.normalize_obs,
        norm_obs_keys=keys,
        norm_reward=config.env.normalize_reward and training,
        clip_obs=config.env.clip_obs,
        gamma=config.algo.gamma,
    )


def build_model(config: Config, venv: VecEnv, run_dir: Path | None, time_input: bool) -> BaseAlgorithm:
    """PPO with an MLP for the ``mlp`` core, RecurrentPPO with `CorePolicy` for every other core."""
    algo = config.algo
    learning_rate: Any = algo.learning_rate
    if algo.lr_schedule == "linear":
        learning_rate = LinearSchedule(algo.learning_rate, 0.0, 1.0)
    policy_kwargs: dict[str, Any] = {
        "net_arch": config.policy.net_arch,
        "activation_fn": ACTIVATIONS[config.policy.activation],
        "log_std_init": config.policy.log_std_init,
        "ortho_init": config.policy.ortho_init,
    }
    dict_observations = isinstance(venv.observation_space, gym.spaces.Dict)
    encoder = config.policy.encoder
    if encoder == "conv" or (encoder == "auto" and dict_observations):
        policy_kwargs["features_extractor_class"] = ConvStateEncoder
    if config.policy.core == "mlp":
        algorithm, policy = PPO, "MultiInputPolicy" if dict_observations else "MlpPolicy"
    else:
        algorithm, policy = RecurrentPPO, CorePolicy
        policy_kwargs.update(
            core=config.policy.core,
            core_kwargs=config.policy.core_kwargs,
            critic=config.policy.critic,
            elapsed_in_obs=time_input,
        )
    return algorithm(
        policy,
        venv,
        learning_rate=learning_rate,
        n_steps=algo.n_steps,
        batch_size=algo.batch_size,
        n_epochs=algo.n_epochs,
        gamma=algo.gamma,
        gae_lambda=algo.gae_lambda,
        clip_range=algo.clip_range,
        ent_coef=algo.ent_coef,
        vf_coef=algo.vf_coef,
        max_grad_norm=algo.max_grad_norm,
        target_kl=algo.target_kl,
        policy_kwargs=policy_kwargs,
        tensorboard_log=str(run_dir / "tb") if run_dir else None,
        seed=config.train.seed,
        device=config.train.device,
        verbose=0,
    )


def algorithm_class(config: Config) -> type[BaseAlgorithm]:
    return PPO if config.policy.core == "mlp" else RecurrentPPO


@dataclass
class TrainResult:
    run_dir: Path
    timesteps: int
    minutes: float
    final: EvalSummary | None


def default_run_name(label: str) -> str:
    return f"{label}-{datetime.now():%Y%m%d-%H%M%S}"


def prepare_run_dir(root: Path, name: str) -> Path:
    run_dir = root / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"run folder {run_dir} already exists; pick another --name or --resume {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def train(
    config: Config,
    run_dir: Path,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train as configured into ``run_dir`` (a fresh folder, or an existing run when ``resume``).

    :raise ConfigError: on resume, if ``config`` changes a key that fixes the model or its data
    :raise CheckpointError: on resume, if there is no usable checkpoint
    """
    started = time.time()
    if config.train.torch_threads:
        th.set_num_threads(config.train.torch_threads)
    time_input = uses_time_input(config)
    ckpt = checkpoint_to_resume(config, run_dir) if resume else None
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")

    # A resumed run draws new episodes: its envs are seeded past the steps already taken.
    venv = make_vec_env(config, config.env.n_envs, config.train.seed + (ckpt.step if ckpt else 0), time_input)
    eval_env = normalize(make_vec_env(config, min(config.env.n_envs, 4), config.train.seed + EVAL_SEED_OFFSET,
                                      time_input, subproc=False), config, time_input, training=False)
    try:
        if ckpt is None:
            model = build_model(config, normalize(venv, config, time_input), run_dir, time_input)
        else:
            model = restore(ckpt, config, venv, run_dir)
            log(f"resuming {run_dir} from step {ckpt.step:,}")
        remaining = config.train.total_timesteps - model.num_timesteps
        if remaining > 0:
            model.learn(remaining, callback=training_callbacks(config, run_dir, eval_env), tb_log_name="run",
                        reset_num_timesteps=ckpt is None, progress_bar=config.train.progress_bar)
        save_run(model, config, run_dir)
        final = final_evaluation(model, eval_env, config, run_dir, time.time() - started)
    finally:
        venv.close()
        eval_env.close()

    minutes = (time.time() - started) / 60
    log(f"trained {model.num_timesteps:,} env steps in {minutes:.1f} min -> {run_dir}")
    if final is not None:
        log(f"final evaluation: {final}")
    return TrainResult(run_dir, model.num_timesteps, minutes, final)


def checkpoint_to_resume(config: Config, run_dir: Path) -> Checkpoint:
    """The newest checkpoint of ``run_dir``, after checking ``config`` may continue that run."""
    changed = incompatible_keys(read_run_config(run_dir / "config.yaml"), config)
    if changed:
        raise ConfigError(
            f"cannot resume {run_dir} with a different {', '.join(changed)}: these keys fix the model "
            f"or its training data (may change: {', '.join(RESUMABLE_PREFIXES)})"
        )
    return latest_checkpoint(run_dir / "checkpoints")


def restore(ckpt: Checkpoint, config: Config, venv: VecEnv, run_dir: Path) -> BaseAlgorithm:
    """Model, optimiser, counters, normalisation statistics and RNG states of ``ckpt``, on ``venv``."""
    if ckpt.vecnormalize is not None:
        venv = VecNormalize.load(str(ckpt.vecnormalize), venv)
    try:
        model = algorithm_class(config).load(ckpt.model, env=venv, device=config.train.device)
    except Exception as error:  # SB3 raises many kinds on a bad zip
        raise CheckpointError(f"checkpoint {ckpt.path} cannot be loaded: {error}") from error
    if model.num_timesteps != ckpt.step:
        raise CheckpointError(f"checkpoint {ckpt.path} holds step {model.num_timesteps}, not {ckpt.step}")
    model.tensorboard_log = str(run_dir / "tb")
    set_rng_state(ckpt.load_rng())
    truncate_rows(run_dir / "eval.csv", ckpt.step)
    return model


def training_callbacks(config: Config, run_dir: Path, eval_env: VecEnv) -> CallbackList:
    """Rollout statistics, periodic evaluation (best model) and checkpoints, as configured."""
    callbacks: list[BaseCallback] = [RolloutStatsCallback()]
    if config.eval.freq:
        callbacks.append(EvalEvery(config.eval.freq, eval_env, config.eval.n_episodes, run_dir,
                                   run_dir / "eval.csv", config.eval.deterministic,
                                   config.train.seed + EVAL_SEED_OFFSET))
    if config.checkpoint.freq:
        callbacks.append(CheckpointEvery(config.checkpoint.freq, run_dir / "checkpoints", config.checkpoint.keep))
    return CallbackList(callbacks)


def save_run(model: BaseAlgorithm, config: Config, run_dir: Path) -> None:
    """model.zip and vecnormalize.pkl, plus a final checkpoint so that a longer --resume continues here."""
    if config.checkpoint.freq:
        save_checkpoint(model, run_dir / "checkpoints", config.checkpoint.keep)
    atomic_write(run_dir / "model.zip", model.save)
    normalizer = model.get_vec_normalize_env()
    if normalizer is not None:
        atomic_write(run_dir / "vecnormalize.pkl", lambda p: normalizer.save(str(p)))


def final_evaluation(
    model: BaseAlgorithm, eval_env: VecEnv, config: Config, run_dir: Path, wall_time_s: float
) -> EvalSummary | None:
    """Evaluate ``eval.final_episodes`` episodes into final_eval.json and eval.csv; draw the curve."""
    final = None
    if config.eval.final_episodes:
        normalizer = model.get_vec_normalize_env()
        if normalizer is not None:
            sync_envs_normalization(normalizer, eval_env)
        episodes = evaluate_episodes(model, eval_env, config.eval.final_episodes, config.eval.deterministic,
                                     config.train.seed + EVAL_SEED_OFFSET)
        final = EvalSummary.of(episodes)
        result = {"timesteps": model.num_timesteps, **final.as_dict()}
        atomic_write(run_dir / "final_eval.json", lambda p: p.write_text(json.dumps(result, indent=1)))
        append_row(run_dir / "eval.csv", eval_row(model.num_timesteps, final, wall_time_s))
    plot_training_curve(run_dir / "eval.csv", run_dir / "training_curve.png", run_dir.name)
    return final
