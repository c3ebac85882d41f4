"""`liquid-drones imitate`: behaviour cloning, then DAgger, from the env's PID expert.

The route of the published liquid-network drone results: clone an expert, then fly closed loop.
It trains the *same* model as `train` (`agents.train.build_model`: RecurrentPPO with `CorePolicy`
for every recurrent core, PPO's MlpPolicy for ``mlp``) and writes the same run folder
(`agents.run`), so `evaluate`, `stress`, `compare` and `train --init-from` take it unchanged:

1. record ``imitation.heldout_episodes`` expert episodes (never trained on: the held-out action
   error) and ``imitation.demo_episodes`` more (round 0), with ``action_noise`` on the flown
   actions and, with ``randomize``, the config's disturbance ranges (`agents.demonstrations`);
2. fit the observation normalisation on the round-0 demonstrations (a VecNormalize fed them,
   fixed afterwards);
3. per round, ``imitation.epochs`` passes of behaviour cloning: the episodes back to back in
   ``batch_sequences`` streams, cut into windows of ``chunk_length`` steps (truncated
   back-propagation through time, state carried between windows, reset where an episode
   starts), loss = mean squared error between the policy's action mean and the expert's label;
   only the actor learns (the critic and the log std are left to RL);
4. DAgger rounds 1..``dagger_rounds``: fly ``episodes_per_round`` episodes with the learner,
   the expert taking each step with probability beta (``beta x beta_decay^(k-1)`` in round k),
   label every visited state with the expert, aggregate, and clone again.

Every ``eval_every`` epochs a closed-loop evaluation flies ``eval.n_episodes`` through the runner
of training evaluations (`agents.callbacks.evaluate_model`) into eval.csv, whose ``timesteps``
column is the number of expert labels trained on so far; ``train.stop_at_success`` ends the run
at the first evaluation at the level, ``train.max_minutes`` at the first epoch past the budget.
A checkpoint (`agents.checkpoint`, atomic) after every epoch holds the model, the optimiser, the
dataset, the normalisation and the round and epoch reached, and collection is a function of the
model and the round (episode seeds and random draws derive from ``train.seed`` and the round),
so ``--resume`` after a kill continues the same round with the same data, bit for bit.
Besides the files of `agents.run`, the run folder holds ``dagger.csv`` (per round: episodes,
labelled steps, steps the learner flew, dataset size).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from agents.callbacks import EvalSummary, best_so_far, eval_row, evaluate_model
from agents.checkpoint import (
    CheckpointError,
    save_checkpoint,
    set_rng_state,
)
from agents.config import DEFAULT_CONFIG, Config, ConfigError, load_config
from agents.demonstrations import Demonstrations, Streams, collect
from agents.flight import AgentSpec, ModelPilot, agent_of_config
from agents.io import atomic_write, replace_rows, timestamped_name
from agents.lock import FolderLock, LockError
from agents.normalization import ObsNormalizer
from agents.preflight import preflight
from agents.provenance import recorded
from agents.run import (
    BEST_MODEL_FILE,
    BEST_NORMALIZER_FILE,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    EVAL_COLUMNS,
    EVAL_FILE,
    TENSORBOARD_DIR,
    algorithm_class,
    append_eval_row,
    read_eval_rows,
    read_run_config,
    save_config,
    uses_time_input,
)
from agents.train import (
    actor_parameters,
    build_model,
    checkpoint_to_resume,
    env_factory,
    evaluation_seeds,
    final_evaluation,
    normalize,
    overrides_of,
    prepare_run_dir,
    resumed_config,
    run_label,
    write_model_files,
)

DAGGER_FILE = "dagger.csv"
#: Collection episode seeds start at train.seed + this (training evaluations use + 10,000).
COLLECT_SEED_OFFSET = 20_000
DATASET_FILE = "demonstrations.npz"
OPTIMIZER_FILE = "imitation_optimizer.pt"
PROGRESS_FILE = "progress.json"
PROGRESS_EVERY_S = 30.0  # plain progress lines (stdout not a terminal)


@dataclass
class Progress:
    """Where a run is: the round and the epochs done in it (and in all), eval.csv rows, wall time."""

    round: int = 0
    epoch_in_round: int = 0
    epochs: int = 0
    eval_rows: int = 0
    wall_s: float = 0.0
    target_reached_at: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ImitationResult:
    run_dir: Path
    labels: int
    epochs: int
    minutes: float
    final: EvalSummary | None


class Imitation:
    """The state of an imitation run: model, optimiser, dataset, normalisation and progress."""

    def __init__(self, config: Config, run_dir: Path, model: BaseAlgorithm, optimizer: th.optim.Optimizer,
                 data: Demonstrations, heldout: Demonstrations, progress: Progress) -> None:
        self.config, self.run_dir, self.model, self.optimizer = config, run_dir, model, optimizer
        self.data, self.heldout, self.progress = data, heldout, progress
        self.normalizer = ObsNormalizer.of(model.get_vec_normalize_env())

    @property
    def policy(self) -> Any:
        return self.model.policy

    def action_means(self, obs: th.Tensor, starts: th.Tensor, state: Any) -> tuple[th.Tensor, Any]:
        """The policy's action means ``[T, B, A]`` for normalised observations ``[T, B, F]`` with
        episode starts ``[T, B]``, from the packed actor state ``state`` (None: the initial state);
        returns the final state too (None for the stateless mlp)."""
        steps, batch = obs.shape[:2]
        if not hasattr(self.policy, "lstm_actor"):
            distribution = self.policy.get_distribution(obs.reshape(steps * batch, -1))
            return distribution.distribution.mean.reshape(steps, batch, -1), None
        if state is None:
            state = self.policy.lstm_actor.initial_state(batch)
        flat = obs.transpose(0, 1).reshape(batch * steps, -1)  # sequence-major, as RecurrentPPO lays it out
        distribution, state = self.policy.get_distribution(flat, state, starts.transpose(0, 1).reshape(-1))
        return distribution.distribution.mean.reshape(batch, steps, -1).transpose(0, 1), state

    def tensors(self, streams: Streams) -> tuple[th.Tensor, ...]:
        """Normalised observations ``[T, B, F]``, labels ``[T, B, A]``, starts and mask ``[T, B]``."""
        obs = self.normalizer.normalize_obs(streams.obs.reshape(-1, streams.obs.shape[-1]))
        return (th.as_tensor(obs.reshape(streams.obs.shape)), th.as_tensor(streams.labels),
                th.as_tensor(streams.starts), th.as_tensor(streams.mask))

    def train_epoch(self) -> float:
        """One pass of truncated back-propagation through time over the dataset; the mean loss."""
        cfg = self.config.imitation
        rng = np.random.default_rng([self.config.train.seed, 1, self.progress.epochs])
        obs, labels, starts, mask = self.tensors(self.data.streams(cfg.batch_sequences, rng))
        self.policy.set_training_mode(True)
        state, losses = None, []
        for t in range(0, len(obs), cfg.chunk_length):
            window = slice(t, t + cfg.chunk_length)
            means, state = self.action_means(obs[window], starts[window], state)
            weights = mask[window].unsqueeze(-1)
            loss = ((means - labels[window]) ** 2 * weights).sum() / (weights.sum() * labels.shape[-1]).clamp_min(1)
            self.optimizer.zero_grad()
            loss.backward()
            if cfg.max_grad_norm:
                th.nn.utils.clip_grad_norm_(actor_parameters(self.policy), cfg.max_grad_norm)
            self.optimizer.step()
            if state is not None:
                state = tuple(s.detach() for s in state)
            losses.append(loss.item())
        self.policy.set_training_mode(False)
        return float(np.mean(losses))

    def heldout_error(self) -> float:
        """Mean squared error between the policy's action means and the expert's actions on the
        held-out episodes, each flown from its start (action units squared)."""
        obs, labels, starts, mask = self.tensors(self.heldout.streams(len(self.heldout.episodes)))
        with th.no_grad():
            means, _ = self.action_means(obs, starts, None)
        weights = mask.unsqueeze(-1)
        return float(((means - labels) ** 2 * weights).sum() / (weights.sum() * labels.shape[-1]))

    def collect_round(self, spec: AgentSpec, disturbances: dict[str, Any], round_: int) -> None:
        """Fly round ``round_`` of DAgger (the learner mixed with the expert) into the dataset."""
        cfg = self.config.imitation
        beta = cfg.beta * cfg.beta_decay ** (round_ - 1)
        seeds = _seeds(self.config, len(self.heldout.episodes) + len(self.data.episodes), cfg.episodes_per_round)
        rng = np.random.default_rng([self.config.train.seed, 0, round_])
        with th.random.fork_rng():
            episodes = collect(spec, seeds, disturbances, round_, rng, beta, cfg.action_noise,
                               ModelPilot(self.model, self.normalizer), self.config.env.n_envs)
        self.data.extend(episodes)

    def save_checkpoint(self) -> None:
        self.model.num_timesteps = self.data.steps
        extras = {DATASET_FILE: self.data.save, f"heldout_{DATASET_FILE}": self.heldout.save,
                  OPTIMIZER_FILE: lambda p: th.save(self.optimizer.state_dict(), p),
                  PROGRESS_FILE: lambda p: p.write_text(json.dumps(self.progress.to_dict()))}
        save_checkpoint(self.model, self.run_dir / CHECKPOINT_DIR, self.config.checkpoint.keep,
                        step=self.progress.epochs, extras=extras)

    def write_dagger_counts(self) -> None:
        rows = self.data.round_counts()
        replace_rows(self.run_dir / DAGGER_FILE, list(rows[0]), rows)


def _seeds(config: Config, first: int, count: int) -> range:
    """Seeds of collection episodes ``first .. first + count - 1`` (counted over the whole run)."""
    start = config.train.seed + COLLECT_SEED_OFFSET + first
    return range(start, start + count)


def fitted_normalizer(config: Config, demos: Demonstrations, time_input: bool) -> VecNormalize:
    """A (StepDuration)VecNormalize on one env whose observation statistics are those of ``demos``."""
    venv = DummyVecEnv([env_factory(config.env.id, config.env.kwargs, config.train.seed, time_input)])
    vec_normalize = normalize(venv, config, time_input)
    if not isinstance(vec_normalize, VecNormalize) or not config.env.normalize_obs:
        raise ConfigError("imitate needs env.normalize_obs: true (the statistics are fitted on the demonstrations)")
    vec_normalize.obs_rms.update(demos.all_obs())
    return vec_normalize


def start(config: Config, run_dir: Path, spec: AgentSpec, disturbances: dict[str, Any],
          log: Callable[[str], None]) -> Imitation:
    """Record the held-out and round-0 expert episodes, fit the normalisation, build the model."""
    cfg = config.imitation
    rng = np.random.default_rng([config.train.seed, 0, 0])
    log(f"recording {cfg.heldout_episodes} held-out and {cfg.demo_episodes} expert episodes")
    heldout = Demonstrations(collect(spec, _seeds(config, 0, cfg.heldout_episodes), disturbances, 0, rng,
                                     action_noise=cfg.action_noise, batch=config.env.n_envs))
    data = Demonstrations(collect(spec, _seeds(config, cfg.heldout_episodes, cfg.demo_episodes), disturbances, 0,
                                  rng, action_noise=cfg.action_noise, batch=config.env.n_envs))
    model = build_model(config, fitted_normalizer(config, data, spec.time_input), run_dir, spec.time_input)
    optimizer = th.optim.Adam(actor_parameters(model.policy), lr=cfg.learning_rate)
    return Imitation(config, run_dir, model, optimizer, data, heldout, Progress())


def restore(config: Config, run_dir: Path, time_input: bool) -> Imitation:
    """The state of the newest checkpoint of ``run_dir`` (eval.csv cut back to its rows)."""
    ckpt = checkpoint_to_resume(config, run_dir)
    files = {name: ckpt.path / name for name in (DATASET_FILE, f"heldout_{DATASET_FILE}", OPTIMIZER_FILE,
                                                   PROGRESS_FILE)}
    missing = [name for name, path in files.items() if not path.is_file()]
    if missing or ckpt.vecnormalize is None:
        raise CheckpointError(f"checkpoint {ckpt.path} is not an imitation checkpoint (missing "
                              f"{', '.join(missing) or 'vecnormalize.pkl'})")
    venv = DummyVecEnv([env_factory(config.env.id, config.env.kwargs, config.train.seed, time_input)])
    model = algorithm_class(config).load(ckpt.model, env=VecNormalize.load(str(ckpt.vecnormalize), venv),
                                         device=config.train.device)
    model.tensorboard_log = str(run_dir / TENSORBOARD_DIR)
    optimizer = th.optim.Adam(actor_parameters(model.policy), lr=config.imitation.learning_rate)
    optimizer.load_state_dict(th.load(files[OPTIMIZER_FILE]))
    progress = Progress(**json.loads(files[PROGRESS_FILE].read_text()))
    set_rng_state(ckpt.load_rng())
    rows = read_eval_rows(run_dir / EVAL_FILE)[: progress.eval_rows]
    replace_rows(run_dir / EVAL_FILE, EVAL_COLUMNS,
                 ({k: int(v) if k == "timesteps" else v for k, v in r.items()} for r in rows))
    return Imitation(config, run_dir, model, optimizer, Demonstrations.load(files[DATASET_FILE]),
                     Demonstrations.load(files[f"heldout_{DATASET_FILE}"]), progress)


def check_imitation_config(config: Config) -> None:
    """Raise ConfigError before any work for what imitation cannot do."""
    if config.env.kwargs.get("camera"):
        raise ConfigError("imitate: camera (Dict) observations are not supported yet; allowed: env.kwargs.camera false")
    if config.train.stop_at_success is not None and not config.imitation.eval_every:
        raise ConfigError("train.stop_at_success needs periodic evaluations; set imitation.eval_every > 0")
    if not config.env.normalize_obs:
        raise ConfigError("env.normalize_obs: imitate fits the observation statistics on the demonstrations; "
                          "allowed value: true")


def imitate(config: Config, run_dir: Path, resume: bool = False, log: Callable[[str], None] = print) -> ImitationResult:
    """Clone the expert as configured into ``run_dir`` (a fresh folder, or an existing run when ``resume``).

    :raise ConfigError: on a config imitation cannot run, or a resume that changes a fixed key
    :raise CheckpointError: on resume, if there is no usable imitation checkpoint
    :raise agents.lock.LockError: if another process writes into ``run_dir``
    """
    preflight(config)
    check_imitation_config(config)
    with FolderLock(run_dir, "run folder", log), recorded(run_dir, "imitate", {"train": config.train.seed}):
        return _imitate_locked(config, run_dir, resume, log)


def _imitate_locked(config: Config, run_dir: Path, resume: bool, log: Callable[[str], None]) -> ImitationResult:
    started = time.time()
    if config.train.torch_threads:
        th.set_num_threads(config.train.torch_threads)
    time_input = uses_time_input(config)
    spec = agent_of_config(config, run_dir.name)
    disturbances = config.env.kwargs.get("disturbances") or {}
    collecting = disturbances if config.imitation.randomize else {}
    run_dir.mkdir(parents=True, exist_ok=True)
    from torch.utils.tensorboard import SummaryWriter

    # The event file opens before the demonstrations are recorded, so its time span (`compare`'s
    # training time) includes them; a resumed session drops the events after its checkpoint.
    if resume:
        state = restore(config, run_dir, time_input)
        log(f"resuming {run_dir} in round {state.progress.round} after epoch {state.progress.epoch_in_round}")
        writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR / "imitate"), purge_step=state.progress.epochs + 1)
        if read_run_config(run_dir / CONFIG_FILE) != config:
            save_config(config, run_dir / CONFIG_FILE)
    else:
        save_config(config, run_dir / CONFIG_FILE)
        writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR / "imitate"))
        state = start(config, run_dir, spec, collecting, log)
    progress, cfg = state.progress, config.imitation
    show = Display(config, progress)
    best = best_so_far(run_dir / EVAL_FILE)
    wall_before = progress.wall_s
    try:
        while progress.round <= cfg.dagger_rounds and progress.target_reached_at is None:
            if progress.round > 0 and state.data.rounds <= progress.round:
                state.collect_round(spec, collecting, progress.round)
                counts = state.data.round_counts()[-1]
                log(f"[imitate] DAgger round {progress.round}: {counts['steps']:,} labelled steps, of which the "
                    f"learner flew {counts['learner_steps']:,}; dataset {counts['dataset_steps']:,}")
                writer.add_scalar("dagger/dataset_steps", counts["dataset_steps"], progress.epochs)
                writer.add_scalar("dagger/learner_steps", counts["learner_steps"], progress.epochs)
            while progress.epoch_in_round < cfg.epochs:
                loss = state.train_epoch()
                progress.epoch_in_round += 1
                progress.epochs += 1
                error = state.heldout_error()
                writer.add_scalar("imitation/loss", loss, progress.epochs)
                writer.add_scalar("imitation/heldout_error", error, progress.epochs)
                writer.add_scalar("imitation/labels", state.data.steps, progress.epochs)
                progress.wall_s = wall_before + time.time() - started
                if cfg.eval_every and progress.epochs % cfg.eval_every == 0:
                    best = evaluate(state, spec, disturbances, writer, best, log)
                show.epoch(loss, error, state.data.steps)
                if config.checkpoint.freq:
                    state.write_dagger_counts()
                    state.save_checkpoint()
                if progress.target_reached_at is not None or out_of_time(config, started):
                    break
            if progress.target_reached_at is not None or out_of_time(config, started):
                break
            progress.round += 1
            progress.epoch_in_round = 0
        show.close()
        state.model.num_timesteps = state.data.steps
        state.write_dagger_counts()
        write_model_files(state.model, run_dir)
        final = final_evaluation(state.model, config, run_dir, wall_before + time.time() - started,
                                 progress.target_reached_at)
    finally:
        writer.close()
        state.model.get_vec_normalize_env().close()
    minutes = (time.time() - started) / 60
    log(f"imitated from {state.data.steps:,} expert labels, {progress.epochs} epochs in {minutes:.1f} min -> {run_dir}")
    if final is not None:
        log(f"final evaluation: {final}")
    return ImitationResult(run_dir, state.data.steps, progress.epochs, minutes, final)


def out_of_time(config: Config, started: float) -> bool:
    return config.train.max_minutes is not None and time.time() - started >= 60 * config.train.max_minutes


def evaluate(state: Imitation, spec: AgentSpec, disturbances: dict[str, Any], writer: Any,
             best: tuple[float, float] | None, log: Callable[[str], None]) -> tuple[float, float] | None:
    """A closed-loop evaluation (the runner of training evaluations) into eval.csv and TensorBoard;
    keeps the best model; marks the success target. Returns the best (success, reward) so far."""
    config, progress, run_dir = state.config, state.progress, state.run_dir
    labels, begun = state.data.steps, time.time()
    episodes = evaluate_model(state.model, state.normalizer, spec, evaluation_seeds(config, config.eval.n_episodes),
                              disturbances, config.eval.deterministic)
    summary = EvalSummary.of(episodes)
    for key in ("success_rate", "crash_rate", "mean_reward", "mean_length"):
        writer.add_scalar(f"eval/{key}", getattr(summary, key), progress.epochs)
    log(f"[eval] epoch {progress.epochs}, {labels:,} expert labels: {summary}")
    progress.wall_s += time.time() - begun  # eval.csv's wall time includes the evaluation, as train's does
    append_eval_row(run_dir / EVAL_FILE, eval_row(labels, summary, progress.wall_s))
    progress.eval_rows += 1
    if config.train.stop_at_success is not None and summary.success_rate >= config.train.stop_at_success:
        progress.target_reached_at = labels
        log(f"success target {config.train.stop_at_success:.0%} reached with {labels:,} expert labels: stopping")
    score = (summary.success_rate, summary.mean_reward)
    if best is None or score > best:
        state.model.num_timesteps = labels
        atomic_write(run_dir / BEST_MODEL_FILE, state.model.save)
        vec_normalize = state.model.get_vec_normalize_env()
        atomic_write(run_dir / BEST_NORMALIZER_FILE, lambda p: vec_normalize.save(str(p)))
        return score
    return best


class Display:
    """A progress bar over all epochs on a terminal; otherwise a plain line every `PROGRESS_EVERY_S`."""

    def __init__(self, config: Config, progress: Progress) -> None:
        self.total = (config.imitation.dagger_rounds + 1) * config.imitation.epochs
        self.progress = progress
        self.rounds = config.imitation.dagger_rounds
        self.start = self.last = time.time()
        self.first = progress.epochs
        self.bar = None
        if config.train.progress_bar and sys.stdout.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=progress.epochs, unit="epoch", desc="imitate")
        self.plain = config.train.progress_bar and self.bar is None

    def epoch(self, loss: float, error: float, labels: int) -> None:
        p = self.progress
        text = f"round {p.round}/{self.rounds}, loss {loss:.4f}, held-out {error:.4f}, {labels:,} labels"
        if self.bar is not None:
            self.bar.set_postfix_str(text)
            self.bar.update(1)
            return
        now = time.time()
        if self.plain and now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            per_epoch = (now - self.start) / max(p.epochs - self.first, 1)
            print(f"[imitate] epoch {p.epochs}/{self.total} ({text}), "
                  f"~{per_epoch * (self.total - p.epochs) / 60:.1f} min left", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(args: Any) -> None:
    """``liquid-drones imitate`` (arguments: see agents/cli.py)."""
    overrides = overrides_of(args)
    try:
        if args.resume:
            run_dir = Path(args.resume)
            config = resumed_config(args, overrides)
        else:
            name = args.config or DEFAULT_CONFIG
            config = load_config(name, overrides)
            preflight(config)
            check_imitation_config(config)
            run_dir = prepare_run_dir(Path(args.root),
                                      args.name or timestamped_name(f"{run_label(name, config)}-imitate"))
        imitate(config, run_dir, resume=bool(args.resume))
    except (ConfigError, CheckpointError, LockError) as error:
        sys.exit(f"error: {error}")
    except OSError as error:
        sys.exit(f"error: cannot write the run: {error}")
