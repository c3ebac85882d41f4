"""`liquid-drones train`: config -> vectorised envs -> policy -> learn -> run folder.

The run folder it writes is described in `agents.run`. Periodic and final evaluations fly
through `agents.flight`, the runner of `evaluate` and `stress`, on fixed episode seeds.
``train(config, run_dir, resume=True)`` continues a run from its newest checkpoint to the
configured total number of env steps. With ``train.init_from`` (``train --init-from RUN_DIR``)
RL fine-tunes an imitated run (`agents.imitate`): its actor and observation statistics carried
over, the critic warmed up first (`fine_tuning_model`).

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
import yaml
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
    HyperParameters,
    ProgressLines,
    RolloutStatsCallback,
    StopAfter,
    StopOnInterrupt,
    TrainingInterrupted,
    eval_row,
    evaluate_model,
)
from agents.checkpoint import (
    RESUMABLE_PREFIXES,
    Checkpoint,
    CheckpointError,
    incompatible_keys,
    latest_checkpoint,
    remove_partial_checkpoints,
    save_checkpoint,
    set_rng_state,
)
from agents.config import DEFAULT_CONFIG, Config, ConfigError, load_config
from agents.flight import EVAL_SEED_OFFSET, agent_of_config
from agents.io import atomic_write, timestamped_name, write_json
from agents.lock import LOCK_FILE, FolderLock, LockError
from agents.normalization import NORMALIZATION_FILE, ObsNormalizer, StepDurationVecNormalize
from agents.preflight import preflight
from agents.progress import LogFile, say
from agents.provenance import recorded
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
    RunError,
    TRAIN_LOG,
    algorithm_class,
    append_eval_row,
    load_model,
    load_run,
    read_eval_rows,
    read_run_config,
    save_config,
    truncate_eval_rows,
    uses_time_input,
)
from policies.encoders import ConvStateEncoder
from policies.sb3_policy import CorePolicy

# What a step or close of SubprocVecEnv raises once its workers are gone.
ENV_WORKER_GONE = (EOFError, BrokenPipeError, ConnectionResetError)
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
    lock = FolderLock(run_dir, "run folder")  # before looking inside: two processes may race here
    if any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        lock.release()
        raise ConfigError(f"run folder {run_dir} already exists; pick another --name or --resume {run_dir}")
    return run_dir


def train(
    config: Config,
    run_dir: Path,
    resume: bool = False,
    log: Callable[[str], None] = say,
    on_evaluation: Callable[[int, EvalSummary], None] | None = None,
) -> TrainResult:
    """Train as configured into ``run_dir`` (a fresh folder, or an existing run when ``resume``).

    Lines are given to ``log`` and appended to ``run_dir/train.log``. Ctrl-C (SIGINT) saves a
    checkpoint, model.zip and the normalisation, then raises `TrainingInterrupted`.
    ``on_evaluation(timesteps, summary)`` is called after every periodic evaluation (`EvalEvery`);
    an exception it raises ends training at once and leaves ``train`` with the envs closed.

    :raise ConfigError: on resume, if ``config`` changes a key that fixes the model or its data
    :raise CheckpointError: on resume, if there is no usable checkpoint
    """
    started = time.time()
    preflight(config)
    seeds = {"train": config.train.seed, "evaluation": evaluation_seeds(config, 1)[0]}
    with FolderLock(run_dir, "run folder", log), recorded(run_dir, "train", seeds):
        return _train_locked(config, run_dir, resume, log, started, on_evaluation)


def _train_locked(config: Config, run_dir: Path, resume: bool, log: Callable[[str], None],
                  started: float, on_evaluation: Callable[[int, EvalSummary], None] | None) -> TrainResult:
    if config.train.torch_threads:
        th.set_num_threads(config.train.torch_threads)
    time_input = uses_time_input(config)
    remove_partial_checkpoints(run_dir / CHECKPOINT_DIR)
    ckpt = checkpoint_to_resume(config, run_dir) if resume else None
    run_dir.mkdir(parents=True, exist_ok=True)
    log = LogFile(run_dir / TRAIN_LOG, log)
    if not resume or read_run_config(run_dir / CONFIG_FILE) != config:
        save_config(config, run_dir / CONFIG_FILE)  # once; on resume only for a change the rules allow

    # A resumed run draws new episodes: its envs are seeded past the steps already taken.
    venv = make_vec_env(config, config.env.n_envs, config.train.seed + (ckpt.step if ckpt else 0), time_input)
    interrupt = StopOnInterrupt(log)
    try:
        if ckpt is None and config.train.init_from:
            model = fine_tuning_model(config, venv, run_dir, time_input, log)
        elif ckpt is None:
            model = build_model(config, normalize(venv, config, time_input), run_dir, time_input)
        else:
            model = restore(ckpt, config, venv, run_dir)
            log(f"resuming {run_dir} from step {ckpt.step:,}")
        remaining = config.train.total_timesteps - model.num_timesteps
        reached = None
        if remaining > 0:
            callbacks = training_callbacks(config, run_dir, log, on_evaluation)
            bar = config.train.progress_bar and sys.stdout.isatty()
            lines_on_console = config.train.progress_bar and not bar
            callbacks.callbacks += [ProgressLines(config.train.total_timesteps,
                                                  write=log if lines_on_console else log.quiet()), interrupt]
            log(f"training {config.env.id} with core {config.policy.core}, seed {config.train.seed}, "
                f"from step {model.num_timesteps:,} to {config.train.total_timesteps:,} (Ctrl-C saves and stops)")
            learn(model, remaining, callbacks, ckpt is not None or bool(config.train.init_from), bar, interrupt)
            reached = next((c.target_reached_at for c in callbacks.callbacks if isinstance(c, EvalEvery)), None)
            if reached is not None:
                log(f"success target {config.train.stop_at_success:.0%} reached at step {reached:,}: stopping")
        save_run(model, config, run_dir, checkpoint=bool(config.checkpoint.freq) or interrupt.requested)
        if interrupt.requested:
            message = (f"interrupted at step {model.num_timesteps:,}: saved a checkpoint and {MODEL_FILE} in "
                       f"{run_dir}; continue with `liquid-drones train --resume {run_dir}`")
            log(message)
            raise TrainingInterrupted(message)
        final = final_evaluation(model, config, run_dir, time.time() - started, reached)
    finally:
        try:
            venv.close()
        except ENV_WORKER_GONE:
            if not interrupt.requested:
                raise

    minutes = (time.time() - started) / 60
    log(f"trained {model.num_timesteps:,} env steps in {minutes:.1f} min -> {run_dir}")
    if final is not None:
        log(f"final evaluation: {final}")
    return TrainResult(run_dir, model.num_timesteps, minutes, final)


def actor_parameters(policy: th.nn.Module) -> list[th.nn.Parameter]:
    """Every parameter the action distribution depends on: the actor's features extractor, its
    core (`CorePolicy.lstm_actor`), its MLP head, the action layer and the log std."""
    modules = [policy.pi_features_extractor, getattr(policy, "lstm_actor", None), policy.mlp_extractor.policy_net,
               policy.action_net]
    parameters = {id(p): p for m in modules if m is not None for p in m.parameters()}
    parameters[id(policy.log_std)] = policy.log_std
    return list(parameters.values())


def fine_tuning_model(config: Config, venv: VecEnv, run_dir: Path, time_input: bool,
                      log: Callable[[str], None] = print) -> BaseAlgorithm:
    """The RL model of ``config`` starting from the imitated run ``train.init_from``: its actor's
    weights and its observation statistics, kept fixed while fine-tuning (`FrozenRunningMeanStd`),
    then ``train.critic_warmup_rollouts`` rollouts of value-only updates (actor frozen). Until
    the first RL update its actions are the imitated policy's, bit for bit.

    :raise ConfigError: if the source is not a run folder or its policy or env differ from ``config``
    """
    source = Path(config.train.init_from)
    try:
        run = load_run(source)
    except RunError as error:
        raise ConfigError(f"train.init_from: {error}") from None
    changed = [key for key in ("env.id", "env.normalize_obs", "env.clip_obs", *(f"policy.{k}" for k in
               config.to_dict()["policy"])) if _dotted(config, key) != _dotted(run.config, key)]
    if changed:
        raise ConfigError(f"train.init_from: {source} was trained with a different {', '.join(changed)}; "
                          f"the policy and its observations must be the same to carry its actor over")
    venv = normalize(venv, config, time_input)
    if run.normalizer is not None:
        key = "state" if isinstance(venv.observation_space, gym.spaces.Dict) else None
        frozen = run.normalizer.frozen_statistics(key)
        if key is None:
            venv.obs_rms = frozen
        else:
            venv.obs_rms[key] = frozen
    model = build_model(config, venv, run_dir, time_input)
    imitated = load_model(run.config, run.model, source / MODEL_FILE)
    names = {id(p) for p in actor_parameters(model.policy)}
    actor = {name for name, p in model.policy.named_parameters() if id(p) in names}
    model.policy.load_state_dict({k: v for k, v in imitated.policy.state_dict().items() if k in actor}, strict=False)
    rollouts = config.train.critic_warmup_rollouts
    if rollouts:
        log(f"actor and normalisation from {source}; warming the critic up for {rollouts} rollouts")
        frozen_actor = actor_parameters(model.policy)
        for parameter in frozen_actor:
            parameter.requires_grad_(False)
        # At the configured rate throughout (a linear schedule would reach 0 within the warm-up).
        schedule, model.lr_schedule = model.lr_schedule, lambda _: config.algo.learning_rate
        model.learn(rollouts * config.rollout_size, tb_log_name="critic_warmup")
        model.lr_schedule = schedule
        for parameter in frozen_actor:
            parameter.requires_grad_(True)
    return model


def _dotted(config: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def learn(model: BaseAlgorithm, steps: int, callbacks: CallbackList, resumed: bool, progress_bar: bool,
          interrupt: StopOnInterrupt) -> None:
    """``model.learn(steps)``; Ctrl-C ends it at the next env step (``interrupt.requested``)."""
    with interrupt:
        try:
            model.learn(steps, callback=callbacks, tb_log_name="run", reset_num_timesteps=not resumed,
                        progress_bar=progress_bar)
        except ENV_WORKER_GONE:
            if not interrupt.requested:  # a terminal's Ctrl-C also ends subprocess env workers
                raise


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


def training_callbacks(config: Config, run_dir: Path, log: Callable[[str], None] = say,
                       on_evaluation: Callable[[int, EvalSummary], None] | None = None) -> CallbackList:
    """Rollout statistics, hyper-parameters, periodic evaluation (best model, stop at target,
    ``on_evaluation``), a time limit and checkpoints, as configured."""
    callbacks: list[BaseCallback] = [RolloutStatsCallback(), HyperParameters(config.to_dict())]
    if config.eval.freq:
        callbacks.append(EvalEvery(config.eval.freq, agent_of_config(config, run_dir.name),
                                   config.env.kwargs.get("disturbances") or {},
                                   evaluation_seeds(config, config.eval.n_episodes), run_dir,
                                   run_dir / EVAL_FILE, config.eval.deterministic, config.train.stop_at_success,
                                   log, on_evaluation))
    if config.train.max_minutes is not None:
        callbacks.append(StopAfter(config.train.max_minutes))
    if config.checkpoint.freq:
        callbacks.append(CheckpointEvery(config.checkpoint.freq, run_dir / CHECKPOINT_DIR, config.checkpoint.keep))
    return CallbackList(callbacks)


def save_run(model: BaseAlgorithm, config: Config, run_dir: Path, checkpoint: bool = True) -> None:
    """model.zip, the normalisation (normalization.json and vecnormalize.pkl), plus (``checkpoint``)
    a final checkpoint so that a longer --resume continues here."""
    if checkpoint:
        save_checkpoint(model, run_dir / CHECKPOINT_DIR, config.checkpoint.keep)
    write_model_files(model, run_dir)


def write_model_files(model: BaseAlgorithm, run_dir: Path) -> None:
    """model.zip and, with a VecNormalize, normalization.json and vecnormalize.pkl."""
    atomic_write(run_dir / MODEL_FILE, model.save)
    normalizer = model.get_vec_normalize_env()
    if normalizer is not None:
        ObsNormalizer.of(normalizer).save(run_dir / NORMALIZATION_FILE)
        atomic_write(run_dir / NORMALIZER_FILE, lambda p: normalizer.save(str(p)))


def final_evaluation(model: BaseAlgorithm, config: Config, run_dir: Path, wall_time_s: float,
                     target_reached_at: int | None = None) -> EvalSummary | None:
    """Evaluate ``eval.final_episodes`` episodes into eval.csv; draw the curve; write
    final_eval.json last (the run's "finished" mark: its steps, the env steps at which the success
    target was reached if it was, and the final metrics if evaluated)."""
    final = None
    if config.eval.final_episodes:
        episodes = evaluate_model(model, model.get_vec_normalize_env(), agent_of_config(config, run_dir.name),
                                  evaluation_seeds(config, config.eval.final_episodes),
                                  config.env.kwargs.get("disturbances") or {}, config.eval.deterministic)
        final = EvalSummary.of(episodes)
        append_eval_row(run_dir / EVAL_FILE, eval_row(model.num_timesteps, final, wall_time_s))
        if getattr(model, "_logger", None) is not None:  # TensorBoard, when this session learned
            for key in ("success_rate", "success_low", "success_high", "crash_rate", "spl", "final_distance_m"):
                model.logger.record(f"final/{key}", getattr(final, key))
            model.logger.dump(model.num_timesteps)
    plot_training_curve(read_eval_rows(run_dir / EVAL_FILE), run_dir / CURVE_FILE,
                        f"{run_dir.name}: {config.env.id.split('/')[-1]}, core {config.policy.core}, "
                        f"seed {config.train.seed}")
    write_json(run_dir / FINAL_EVAL_FILE, {"timesteps": model.num_timesteps, "target_reached_at": target_reached_at,
                                           **(final.as_dict() if final else {})})
    return final


def run_label(name: str, config: Config) -> str:
    """The default run name's stem: the config name (a YAML file's stem), with the core if it has none."""
    label = Path(name).stem if name.endswith((".yaml", ".yml")) else name
    return label if "-" in label else f"{label}-{config.policy.core}"


def overrides_of(args: Any) -> list[str]:
    """The ``--set`` overrides of a train/imitate command line, with ``--seed`` as train.seed."""
    return list(args.set) + ([f"train.seed={args.seed}"] if args.seed is not None else [])


def resumed_config(args: Any, overrides: list[str]) -> Config:
    """The config of ``--resume RUN_DIR``: the run's config.yaml, or ``--config`` if given, with the overrides."""
    if args.config:
        return load_config(args.config, overrides)
    return read_run_config(Path(args.resume) / CONFIG_FILE, overrides)


def main(args: Any) -> None:
    """``liquid-drones train`` (arguments: see agents/cli.py)."""
    overrides = overrides_of(args)
    try:
        if args.resume:
            run_dir = Path(args.resume)
            config = resumed_config(args, overrides)
        else:
            if args.init_from:
                overrides.append(f"train.init_from={args.init_from}")
            if args.init_from and not args.config:
                name = f"{Path(args.init_from).name}-finetune"
                config = read_run_config(Path(args.init_from) / CONFIG_FILE, overrides)
            else:
                name = args.config or DEFAULT_CONFIG
                config = load_config(name, overrides)
        if args.print_config:
            print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
            return
        preflight(config)
        if not args.resume:
            run_dir = prepare_run_dir(Path(args.root), args.name or timestamped_name(run_label(name, config)))
        train(config, run_dir, resume=bool(args.resume))
    except (ConfigError, CheckpointError, LockError) as error:
        sys.exit(f"error: {error}")
    except TrainingInterrupted:
        sys.exit(130)  # the shell's code for Ctrl-C; the message is already logged
    except OSError as error:
        sys.exit(f"error: cannot write the run: {error}")
