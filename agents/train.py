"""`liquid-drones train`: config -> vectorised envs -> policy -> learn -> run folder.

The run folder it writes is described in `agents.run`. Periodic and final evaluations fly
through `agents.flight`, the runner of `evaluate` and `stress`, on fixed episode seeds.
``train(config, run_dir, resume=True)`` continues a run from its newest checkpoint to the
configured total number of env steps.

Note: with ``env.vec_env`` subproc, a script that calls `train` needs the usual
``if __name__ == "__main__":`` guard (worker processes re-import the main module).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import torch as th
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecNormalize

from agents.callbacks import (
    CheckpointEvery,
    EvalEvery,
    EvalSummary,
    ProgressLines,
    RolloutStatsCallback,
    StopAfter,
    eval_row,
    evaluate_model,
)
from agents.checkpoint import (
    RESUMABLE_PREFIXES,
    Checkpoint,
    CheckpointError,
    incompatible_keys,
    latest_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from agents.config import DEFAULT_CONFIG, Config, ConfigError, load_config
from agents.flight import EVAL_SEED_OFFSET, agent_of_config
from agents.io import atomic_write, timestamped_name, write_json
from agents.normalization import NORMALIZATION_FILE, ObsNormalizer, StepDurationVecNormalize
from agents.preflight import preflight
from agents.report import plot_training_curve
from agents.run import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    CURVE_FILE,
    EVAL_FILE,
    FINAL_EVAL_FILE,
    MODEL_FILE,
    NORMALIZER_FILE,
    TENSORBOARD_DIR,
    algorithm_class,
    append_eval_row,
    read_eval_rows,
    read_run_config,
    save_config,
    truncate_eval_rows,
    uses_time_input,
)
from policies.encoders import ConvStateEncoder
from policies.sb3_policy import CorePolicy

ACTIVATIONS = {"tanh": th.nn.Tanh, "relu": th.nn.ReLU, "elu": th.nn.ELU, "silu": th.nn.SiLU}


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
        tensorboard_log=str(run_dir / TENSORBOARD_DIR) if run_dir else None,
        seed=config.train.seed,
        device=config.train.device,
        verbose=0,
    )


@dataclass
class TrainResult:
    run_dir: Path
    timesteps: int
    minutes: float
    final: EvalSummary | None


def prepare_run_dir(root: Path, name: str) -> Path:
    """``root/name`` as a new, empty run folder.

    :raise ConfigError: if the name leaves ``root`` or the folder already holds files
    """
    run_dir = root / name
    if Path(name).is_absolute() or ".." in Path(name).parts or not name.strip():
        raise ConfigError(f"--name {name!r} must be a plain folder name inside --root {root} "
                          f"(no '..', no absolute path)")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"run folder {run_dir} already exists; pick another --name or --resume {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def train(
    config: Config,
    run_dir: Path,
    resume: bool = False,
    log: Callable[[str], None] = print,
    on_evaluation: Callable[[int, EvalSummary], None] | None = None,
) -> TrainResult:
    """Train as configured into ``run_dir`` (a fresh folder, or an existing run when ``resume``).

    ``on_evaluation(timesteps, summary)`` is called after every periodic evaluation (`EvalEvery`);
    an exception it raises ends training at once and leaves ``train`` with the envs closed.

    :raise ConfigError: on resume, if ``config`` changes a key that fixes the model or its data
    :raise CheckpointError: on resume, if there is no usable checkpoint
    """
    started = time.time()
    preflight(config)
    if config.train.torch_threads:
        th.set_num_threads(config.train.torch_threads)
    time_input = uses_time_input(config)
    ckpt = checkpoint_to_resume(config, run_dir) if resume else None
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume or read_run_config(run_dir / CONFIG_FILE) != config:
        save_config(config, run_dir / CONFIG_FILE)  # once; on resume only for a change the rules allow

    # A resumed run draws new episodes: its envs are seeded past the steps already taken.
    venv = make_vec_env(config, config.env.n_envs, config.train.seed + (ckpt.step if ckpt else 0), time_input)
    try:
        if ckpt is None:
            model = build_model(config, normalize(venv, config, time_input), run_dir, time_input)
        else:
            model = restore(ckpt, config, venv, run_dir)
            log(f"resuming {run_dir} from step {ckpt.step:,}")
        remaining = config.train.total_timesteps - model.num_timesteps
        reached = None
        if remaining > 0:
            callbacks = training_callbacks(config, run_dir, on_evaluation)
            bar = config.train.progress_bar and sys.stdout.isatty()
            if config.train.progress_bar and not bar:
                callbacks.callbacks.append(ProgressLines(config.train.total_timesteps))
            model.learn(remaining, callback=callbacks, tb_log_name="run", reset_num_timesteps=ckpt is None,
                        progress_bar=bar)
            reached = next((c.target_reached_at for c in callbacks.callbacks if isinstance(c, EvalEvery)), None)
            if reached is not None:
                log(f"success target {config.train.stop_at_success:.0%} reached at step {reached:,}: stopping")
        save_run(model, config, run_dir)
        final = final_evaluation(model, config, run_dir, time.time() - started, reached)
    finally:
        venv.close()

    minutes = (time.time() - started) / 60
    log(f"trained {model.num_timesteps:,} env steps in {minutes:.1f} min -> {run_dir}")
    if final is not None:
        log(f"final evaluation: {final}")
    return TrainResult(run_dir, model.num_timesteps, minutes, final)


def checkpoint_to_resume(config: Config, run_dir: Path) -> Checkpoint:
    """The newest checkpoint of ``run_dir``, after checking ``config`` may continue that run."""
    changed = incompatible_keys(read_run_config(run_dir / CONFIG_FILE), config)
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
    model.tensorboard_log = str(run_dir / TENSORBOARD_DIR)
    set_rng_state(ckpt.load_rng())
    truncate_eval_rows(run_dir / EVAL_FILE, ckpt.step)
    return model


def evaluation_seeds(config: Config, episodes: int) -> list[int]:
    """The episode seeds of every training-time evaluation (the same each time)."""
    first = config.train.seed + EVAL_SEED_OFFSET
    return list(range(first, first + episodes))


def training_callbacks(config: Config, run_dir: Path,
                       on_evaluation: Callable[[int, EvalSummary], None] | None = None) -> CallbackList:
    """Rollout statistics, periodic evaluation (best model, stop at target, ``on_evaluation``), a
    time limit and checkpoints, as configured."""
    callbacks: list[BaseCallback] = [RolloutStatsCallback()]
    if config.eval.freq:
        callbacks.append(EvalEvery(config.eval.freq, agent_of_config(config, run_dir.name),
                                   config.env.kwargs.get("disturbances") or {},
                                   evaluation_seeds(config, config.eval.n_episodes), run_dir,
                                   run_dir / EVAL_FILE, config.eval.deterministic, config.train.stop_at_success,
                                   on_evaluation))
    if config.train.max_minutes is not None:
        callbacks.append(StopAfter(config.train.max_minutes))
    if config.checkpoint.freq:
        callbacks.append(CheckpointEvery(config.checkpoint.freq, run_dir / CHECKPOINT_DIR, config.checkpoint.keep))
    return CallbackList(callbacks)


def save_run(model: BaseAlgorithm, config: Config, run_dir: Path) -> None:
    """model.zip, the normalisation (normalization.json and vecnormalize.pkl), plus a final
    checkpoint so that a longer --resume continues here."""
    if config.checkpoint.freq:
        save_checkpoint(model, run_dir / CHECKPOINT_DIR, config.checkpoint.keep)
    atomic_write(run_dir / MODEL_FILE, model.save)
    normalizer = model.get_vec_normalize_env()
    if normalizer is not None:
        ObsNormalizer.of(normalizer).save(run_dir / NORMALIZATION_FILE)
        atomic_write(run_dir / NORMALIZER_FILE, lambda p: normalizer.save(str(p)))


def final_evaluation(model: BaseAlgorithm, config: Config, run_dir: Path, wall_time_s: float,
                     target_reached_at: int | None = None) -> EvalSummary | None:
    """Evaluate ``eval.final_episodes`` episodes into final_eval.json (with the env steps at which
    the success target was reached, if it was) and eval.csv; draw the curve."""
    final = None
    if config.eval.final_episodes:
        episodes = evaluate_model(model, model.get_vec_normalize_env(), agent_of_config(config, run_dir.name),
                                  evaluation_seeds(config, config.eval.final_episodes),
                                  config.env.kwargs.get("disturbances") or {}, config.eval.deterministic)
        final = EvalSummary.of(episodes)
        write_json(run_dir / FINAL_EVAL_FILE, {"timesteps": model.num_timesteps, "target_reached_at": target_reached_at,
                                               **final.as_dict()})
        append_eval_row(run_dir / EVAL_FILE, eval_row(model.num_timesteps, final, wall_time_s))
    plot_training_curve(read_eval_rows(run_dir / EVAL_FILE), run_dir / CURVE_FILE, run_dir.name)
    return final


def main(args: Any) -> None:
    """``liquid-drones train`` (arguments: see agents/cli.py)."""
    overrides = list(args.set)
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    try:
        if args.resume:
            run_dir = Path(args.resume)
            if args.config:
                config = load_config(args.config, overrides)
            else:
                config = read_run_config(run_dir / CONFIG_FILE, overrides)
            preflight(config)
        else:
            name = args.config or DEFAULT_CONFIG
            config = load_config(name, overrides)
            preflight(config)
            label = Path(name).stem if name.endswith((".yaml", ".yml")) else name
            if "-" not in label:
                label = f"{label}-{config.policy.core}"
            run_dir = prepare_run_dir(Path(args.root), args.name or timestamped_name(label))
        train(config, run_dir, resume=bool(args.resume))
    except (ConfigError, CheckpointError) as error:
        sys.exit(f"error: {error}")
