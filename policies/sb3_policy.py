"""Stable-Baselines3 policies whose memory is one of our recurrent cores.

`CorePolicy` plugs any recurrent core of `policies.build_core` (lstm, gru, cfc, ltc, ncp-cfc,
ncp-ltc) into `sb3_contrib.RecurrentPPO` without patching sb3-contrib:

- RecurrentPPO stores, slices and pads recurrent states as LSTM pairs ``(hidden, cell)`` of shape
  ``[n_layers, B, hidden_size]``. A core keeps its whole state in one tensor ``[B, H]``;
  `CoreSequence` packs it into such a pair by splitting it in two halves (``hidden_size =
  ceil(H / 2)``, the odd last element padded with a zero), so the rollout buffer holds exactly
  H (+1) numbers per env step, and unpacks it again losslessly.
- sb3-contrib runs its LSTM one time step at a time in Python whenever an episode starts inside a
  training sequence. `CorePolicy._process_sequence` instead hands the whole ``[T, B, F]`` sequence
  and its episode starts to the core, which resets the state where an episode starts.
- Time-aware cores (CfC, LTC) can receive the true duration of every step: with
  ``elapsed_in_obs=True`` the last observation element is taken as that duration in seconds
  (the env is wrapped with ``envs.wrappers.AppendStepDuration``), split off the core's inputs
  and passed as ``elapsed``. It must reach the policy unnormalised.
- RecurrentPPO calls the policy once per vectorised env step while collecting rollouts, without
  gradients. Such one-step calls of `CorePolicy.forward`, `predict_values` and ``_predict`` take a
  direct path: `CoreSequence.step` runs the core's hooks without the sequence bookkeeping, and the
  diagonal Gaussian is evaluated without SB3's ``Distribution`` objects but with the same
  random draws and roundings, so actions (for a given torch seed), log-probabilities, values and
  states are identical to the bit to those of sb3-contrib's path, at about half the cost per call.

The feed-forward `mlp` core has no state; train it with plain `stable_baselines3.PPO` and its
``MlpPolicy`` instead.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy, BaseModel
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from policies import CORE_NAMES, RecurrentCore, build_core
from policies.core import MIN_ELAPSED

#: How the critic gets its memory: its own core, the actor's (no gradient from the value loss),
#: or none (a linear layer on the features).
CRITIC_MODES = ("separate", "shared", "mlp")

#: Recurrent cores `CorePolicy` accepts (`mlp` has no state: use PPO's MlpPolicy).
RECURRENT_CORE_NAMES = tuple(name for name in CORE_NAMES if name != "mlp")

#: log(sqrt(2 pi)), the constant of the Gaussian log-density (as torch.distributions.Normal has it).
LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))

PackedState = tuple[th.Tensor, th.Tensor]


class CoreSequence(nn.Module):
    """A recurrent core seen through the interface sb3-contrib expects of its ``nn.LSTM``.

    RecurrentPPO reads ``num_layers`` and ``hidden_size`` to size its state buffers; states travel
    as ``(hidden, cell)`` pairs of ``[1, B, hidden_size]`` holding the two halves of the core state.

    :param core: the recurrent core; its ``input_size`` excludes the step-duration column.
    :param elapsed_in_obs: the last feature column is the step duration in seconds.
    """

    num_layers = 1

    def __init__(self, core: RecurrentCore, elapsed_in_obs: bool = False) -> None:
        super().__init__()
        if core.state_size <= 0:
            raise ValueError(f"core {type(core).__name__} has no state; use PPO's MlpPolicy for 'mlp'")
        self.core = core
        self.elapsed_in_obs = elapsed_in_obs
        self.state_size = core.state_size
        self.hidden_size = math.ceil(core.state_size / 2)
        self.input_size = core.input_size + int(elapsed_in_obs)
        self.output_size = core.output_size
        self._last_packed: tuple[th.Tensor, th.Tensor, th.Tensor] | None = None  # see `pack`

    def __getstate__(self) -> dict:
        state = super().__getstate__().copy()
        state["_last_packed"] = None
        return state

    def pack(self, state: th.Tensor) -> PackedState:
        """``[B, H]`` core state -> ``(hidden, cell)``, each ``[1, B, ceil(H / 2)]``.

        Both halves are views of one ``[B, 2 ceil(H / 2)]`` tensor. Without gradients, `unpack`
        recognises the pair `pack` last returned and gives back that tensor instead of a copy.
        """
        padding = 2 * self.hidden_size - self.state_size
        if padding:
            state = nn.functional.pad(state, (0, padding))
        hidden, cell = state.unsqueeze(0).chunk(2, dim=-1)
        if not th.is_grad_enabled():
            # object.__setattr__: nn.Module's would cost more than the rest of `pack`.
            object.__setattr__(self, "_last_packed", (hidden, cell, state[:, : self.state_size] if padding else state))
        return hidden, cell

    def unpack(self, packed: PackedState) -> th.Tensor:
        """Inverse of `pack`: ``(hidden, cell)`` -> ``[B, H]``."""
        hidden, cell = packed
        last = self._last_packed
        if last is not None and hidden is last[0] and cell is last[1]:
            return last[2]  # the pair are views of it, so it holds any in-place change made to them
        return th.cat((hidden[0], cell[0]), dim=-1)[:, : self.state_size]

    def initial_state(self, batch_size: int) -> PackedState:
        """The core's initial state for ``batch_size`` sequences, packed."""
        return self.pack(self.core.initial_state(batch_size))

    def split_features(self, features: th.Tensor) -> tuple[th.Tensor, th.Tensor | None]:
        """``features [T, B, F]`` -> core inputs and the step durations ``[T, B, 1]`` in seconds
        (None unless they are in the features and the core is time-aware)."""
        if not self.elapsed_in_obs:
            return features, None
        inputs = features[..., :-1]
        return inputs, (features[..., -1:].clamp_min(MIN_ELAPSED) if self.core.time_aware else None)

    def forward(
        self, features: th.Tensor, packed: PackedState, episode_starts: th.Tensor
    ) -> tuple[th.Tensor, PackedState]:
        """Run the core over ``features [T, B, F]`` from ``packed`` with resets at ``episode_starts [T, B]``.

        :return: outputs ``[T, B, O]`` and the packed final state.
        """
        inputs, elapsed = self.split_features(features)
        outputs, state = self.core(inputs, self.unpack(packed), episode_starts, elapsed)
        return outputs, self.pack(state)

    def step(
        self, inputs: th.Tensor, elapsed: th.Tensor | None, packed: PackedState, resets: th.Tensor | None
    ) -> tuple[th.Tensor, PackedState]:
        """One step of ``B`` sequences as a rollout takes it (no gradients): the core's fused
        `inference_step` where it has one, else its `precompute` and `run` hooks, without the shape
        checks and sequence bookkeeping of `RecurrentCore.forward`.

        :param inputs: core inputs ``[1, B, F]`` (as `split_features` returns them)
        :param elapsed: step durations ``[1, B, 1]`` or None (as `split_features` returns them)
        :param packed: packed states ``[1, B, hidden_size]``
        :param resets: ``[B, 1]`` bool, True where the state is reset first; None if nowhere
        :return: outputs ``[B, O]`` and the packed next states
        """
        state = self.unpack(packed)
        if elapsed is None and self.core.time_aware:
            elapsed = inputs.new_ones(1, inputs.shape[1], 1)
        stepped = self.core.inference_step(inputs, state, None if resets is None else resets.view(1, -1), elapsed)
        if stepped is not None:
            return stepped[0][0], self.pack(stepped[1])
        if resets is not None:
            state = state.masked_fill(resets, 0.0)
        per_step, shared = self.core.precompute(inputs, elapsed)
        outputs, state = self.core.run(per_step, shared, state)
        return outputs[0], self.pack(state)


def _resets(episode_starts: th.Tensor) -> th.Tensor | None:
    """``[B]`` episode starts -> ``[B, 1]`` reset mask for `CoreSequence.step`; None if no env starts."""
    return (episode_starts != 0).unsqueeze(-1) if episode_starts.any() else None


def _sequential(net: nn.Module, x: th.Tensor) -> th.Tensor:
    """``net(x)`` for an ``nn.Sequential`` or a single layer, calling each layer's ``forward`` directly
    (skipping ``nn.Module.__call__``: the rollout path registers no hooks)."""
    for layer in net if isinstance(net, nn.Sequential) else (net,):
        x = layer.forward(x)
    return x


class CorePolicy(RecurrentActorCriticPolicy):
    """Recurrent actor-critic policy for `sb3_contrib.RecurrentPPO` with one of our cores.

    The layout is features -> core -> MLP head (``net_arch``) -> action distribution / value, as in
    sb3-contrib's ``MlpLstmPolicy``, with the LSTM replaced by ``build_core(core, ...)``.

    :param observation_space: observation space (a flat Box; the last element is the step
        duration in seconds when ``elapsed_in_obs``)
    :param action_space: action space
    :param lr_schedule: learning-rate schedule
    :param core: core name, one of `RECURRENT_CORE_NAMES`
    :param core_kwargs: keyword arguments of ``build_core`` (e.g. ``hidden_size``, ``units``, ``seed``)
    :param critic: ``"separate"`` (own core, default), ``"shared"`` (the actor's core, detached for
        the value loss) or ``"mlp"`` (no memory: a linear layer on the features)
    :param elapsed_in_obs: the last observation element is the step duration (seconds); it is split
        off the core's inputs and fed to time-aware cores as ``elapsed``
    :param net_arch: MLP head after the core, SB3 format (list, or dict with ``pi`` and ``vf``)
    :param activation_fn: activation of the MLP head
    :param ortho_init: orthogonal initialisation of the head (the core keeps its own initialisation)
    :param use_sde: state-dependent exploration
    :param log_std_init: initial log standard deviation of the Gaussian actions
    :param full_std: gSDE: one std per (feature, action) pair
    :param use_expln: gSDE: ``expln`` instead of ``exp`` for the std
    :param squash_output: squash actions with tanh (gSDE only)
    :param features_extractor_class: features extractor (default: flatten)
    :param features_extractor_kwargs: its keyword arguments
    :param share_features_extractor: one features extractor for actor and critic
    :param normalize_images: divide image observations by 255
    :param optimizer_class: optimiser class (default Adam)
    :param optimizer_kwargs: optimiser keyword arguments, without the learning rate. For Adam
        without an explicit ``fused``/``foreach`` choice, torch's fused CPU kernel is used (the
        same update rule in one call instead of a dozen ops per parameter tensor)
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        core: str = "cfc",
        core_kwargs: dict[str, Any] | None = None,
        critic: str = "separate",
        elapsed_in_obs: bool = False,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        use_sde: bool = False,
        log_std_init: float = 0.0,
        full_std: bool = True,
        use_expln: bool = False,
        squash_output: bool = False,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        share_features_extractor: bool = True,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if core not in RECURRENT_CORE_NAMES:
            raise ValueError(f"core must be one of {', '.join(RECURRENT_CORE_NAMES)}; got {core!r}")
        if critic not in CRITIC_MODES:
            raise ValueError(f"critic must be one of {', '.join(CRITIC_MODES)}; got {critic!r}")
        if critic == "shared" and not share_features_extractor:
            raise ValueError("critic='shared' needs share_features_extractor=True")
        self.core_name = core
        self.core_kwargs = dict(core_kwargs or {})
        self.critic_mode = critic
        self.elapsed_in_obs = elapsed_in_obs

        extractor = features_extractor_class(observation_space, **(features_extractor_kwargs or {}))
        core_input_size = extractor.features_dim - int(elapsed_in_obs)
        if core_input_size <= 0:
            raise ValueError(f"{extractor.features_dim} features leave no core input")
        actor_core = build_core(core, core_input_size, **self.core_kwargs)
        # The MLP head is built by ActorCriticPolicy.__init__ on `lstm_output_dim` inputs.
        self.lstm_output_dim = actor_core.output_size

        # Skip RecurrentActorCriticPolicy.__init__ (it builds nn.LSTMs); build the cores here instead.
        ActorCriticPolicy.__init__(
            self,
            observation_space,
            action_space,
            lr_schedule,
            net_arch,
            activation_fn,
            ortho_init,
            use_sde,
            log_std_init,
            full_std,
            use_expln,
            squash_output,
            features_extractor_class,
            features_extractor_kwargs,
            share_features_extractor,
            normalize_images,
            optimizer_class,
            optimizer_kwargs,
        )
        self.shared_lstm = critic == "shared"
        self.enable_critic_lstm = critic == "separate"
        self.lstm_kwargs: dict[str, Any] = {}
        self.lstm_actor = CoreSequence(actor_core, elapsed_in_obs)
        self.lstm_critic = None
        self.critic = None
        if critic == "separate":
            critic_core = build_core(core, core_input_size, **self.core_kwargs)
            self.lstm_critic = CoreSequence(critic_core, elapsed_in_obs)
        elif critic == "mlp":
            self.critic = nn.Linear(self.features_dim, self.lstm_output_dim)
        # predict() sizes a missing state with this: (n_layers, 1 env, hidden_size)
        self.lstm_hidden_state_shape = (1, 1, self.lstm_actor.hidden_size)
        # The parent built the optimiser before the cores existed.
        if self.optimizer_class is th.optim.Adam and not {"fused", "foreach"} & set(self.optimizer_kwargs):
            self.optimizer_kwargs = {**self.optimizer_kwargs, "fused": True}
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)
        # Fused optimisers write the parameters without bumping their version counters, which the
        # caches of derived weights (cores, `_gaussian_terms`) key on: drop those after every step.
        self.optimizer.register_step_post_hook(lambda *_: self.forget_derived())
        # The rollout path (see `forward`) evaluates the Gaussian itself and reads flat observations as they are.
        self._direct_gaussian = isinstance(self.action_dist, DiagGaussianDistribution)
        self._flat_observations = (
            isinstance(observation_space, spaces.Box) and len(observation_space.shape) == 1
            and isinstance(self.features_extractor, FlattenExtractor)
        )
        self._std_cache: tuple | None = None  # (log_std, its version key, terms): see `_gaussian_terms`

    def __getstate__(self) -> dict:
        state = super().__getstate__().copy()
        state["_std_cache"] = None
        return state

    def forget_derived(self) -> None:
        """Drop every cache of tensors derived from the parameters (call after changing them
        in a way that does not bump their version counters)."""
        self._std_cache = None
        for module in self.modules():
            if isinstance(module, RecurrentCore):
                module.forget_derived()

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            core=self.core_name,
            core_kwargs=self.core_kwargs,
            critic=self.critic_mode,
            elapsed_in_obs=self.elapsed_in_obs,
        )
        return data

    @staticmethod
    def _process_sequence(
        features: th.Tensor,
        lstm_states: PackedState,
        episode_starts: th.Tensor,
        lstm: CoreSequence,
    ) -> tuple[th.Tensor, PackedState]:
        """One core call over a whole padded batch of sequences.

        :param features: ``[n_seq * T, F]``, sequence-major as RecurrentPPO's buffer lays it out
            (``T = 1`` while collecting rollouts)
        :param lstm_states: packed states at the start of each sequence, ``[1, n_seq, hidden_size]``
        :param episode_starts: ``[n_seq * T]``, 1 where the state is reset before the step
        :param lstm: the `CoreSequence` to run
        :return: outputs ``[n_seq * T, O]`` and the packed final states
        """
        n_seq = lstm_states[0].shape[1]
        sequences = features.reshape(n_seq, -1, features.shape[-1]).transpose(0, 1)
        starts = episode_starts.reshape(n_seq, -1).transpose(0, 1)
        outputs, final = lstm(sequences, lstm_states, starts)
        return outputs.transpose(0, 1).reshape(-1, outputs.shape[-1]), final

    # ------------------------------------------------------------------ rollout path
    def _one_step(self, episode_starts: th.Tensor, states: PackedState) -> bool:
        """Whether a call is a rollout step the direct path serves: no gradients, a diagonal Gaussian,
        one step per sequence (``[B]`` episode starts for ``B`` states)."""
        return not th.is_grad_enabled() and self._direct_gaussian and episode_starts.shape[0] == states[0].shape[1]

    def _step_features(self, obs: th.Tensor, extractor: BaseFeaturesExtractor) -> th.Tensor:
        """``extract_features`` for one step: a flat Box observation (flattened: itself) as float."""
        if self._flat_observations:
            return obs.float()
        return BaseModel.extract_features(self, obs, extractor)

    def _gaussian_terms(self, mean: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """``(std, -2 var, -log std)`` shaped like ``mean``, computed as SB3's
        ``DiagGaussianDistribution`` and torch's ``Normal`` compute them (so that the numbers are the
        same to the bit); reused while ``log_std`` and the batch shape do not change."""
        log_std = self.log_std
        key = (log_std.data_ptr(), log_std._version, mean.shape, mean.dtype)
        cache = self._std_cache
        if cache is None or cache[0] is not log_std or cache[1] != key:
            std = th.ones_like(mean) * log_std.exp()
            cache = self._std_cache = (log_std, key, (std, -(2 * std**2), -std.log()))
        return cache[2]

    def _sample(self, mean: th.Tensor, deterministic: bool) -> th.Tensor:
        """Actions from the Gaussian: its mean, or ``mean + eps * std`` with ``eps`` drawn as
        ``Normal.rsample`` draws it (the same random numbers for the same torch seed)."""
        if deterministic:
            return mean
        return th.empty_like(mean).normal_().mul_(self._gaussian_terms(mean)[0]).add_(mean)

    def _log_prob(self, actions: th.Tensor, mean: th.Tensor) -> th.Tensor:
        """Log-density of ``actions [B, A]`` summed over the action dimensions: ``Normal.log_prob``'s
        ``-(a - mean)^2 / (2 var) - log std - log sqrt(2 pi)`` with the same roundings, in fewer ops."""
        _, minus_two_var, minus_log_std = self._gaussian_terms(mean)
        squared = (actions - mean).pow_(2)
        return th.addcdiv(minus_log_std, squared, minus_two_var).sub_(LOG_SQRT_2PI).sum(dim=1)

    def forward(
        self,
        obs: th.Tensor,
        lstm_states: RNNStates,
        episode_starts: th.Tensor,
        deterministic: bool = False,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor, RNNStates]:
        """Actions, values, log-probabilities and the next states of actor and critic.

        A rollout step (see `_one_step`) takes the direct path, any other call sb3-contrib's.
        """
        if not self._one_step(episode_starts, lstm_states.pi):
            return super().forward(obs, lstm_states, episode_starts, deterministic)
        pi_features = self._step_features(obs, self.pi_features_extractor)
        vf_features = pi_features
        if not self.share_features_extractor:
            vf_features = self._step_features(obs, self.vf_features_extractor)
        resets = _resets(episode_starts)
        pi_inputs = self.lstm_actor.split_features(pi_features.unsqueeze(0))
        latent_pi, states_pi = self.lstm_actor.step(*pi_inputs, lstm_states.pi, resets)
        if self.lstm_critic is not None:
            vf_inputs = pi_inputs
            if vf_features is not pi_features:
                vf_inputs = self.lstm_critic.split_features(vf_features.unsqueeze(0))
            latent_vf, states_vf = self.lstm_critic.step(*vf_inputs, lstm_states.vf, resets)
        elif self.shared_lstm:
            latent_vf, states_vf = latent_pi, states_pi
        else:
            latent_vf, states_vf = _sequential(self.critic, vf_features), states_pi
        values = _sequential(self.value_net, _sequential(self.mlp_extractor.value_net, latent_vf))
        mean = _sequential(self.action_net, _sequential(self.mlp_extractor.policy_net, latent_pi))
        actions = self._sample(mean, deterministic)
        log_prob = self._log_prob(actions, mean)
        return actions.reshape(-1, *self.action_space.shape), values, log_prob, RNNStates(states_pi, states_vf)

    def predict_values(self, obs: th.Tensor, lstm_states: PackedState, episode_starts: th.Tensor) -> th.Tensor:
        """Values ``[B, 1]`` of ``obs`` from the critic's packed states (direct path for a rollout step)."""
        if not self._one_step(episode_starts, lstm_states):
            return super().predict_values(obs, lstm_states, episode_starts)
        features = self._step_features(obs, self.vf_features_extractor)
        if self.critic is not None:
            latent_vf = _sequential(self.critic, features)
        else:
            core = self.lstm_critic if self.lstm_critic is not None else self.lstm_actor
            latent_vf, _ = core.step(*core.split_features(features.unsqueeze(0)), lstm_states, _resets(episode_starts))
        return _sequential(self.value_net, _sequential(self.mlp_extractor.value_net, latent_vf))

    def _predict(
        self,
        observation: th.Tensor,
        lstm_states: PackedState,
        episode_starts: th.Tensor,
        deterministic: bool = False,
    ) -> tuple[th.Tensor, PackedState]:
        """Actions and the actor's next packed states, for `predict` (direct path for one step)."""
        if not self._one_step(episode_starts, lstm_states):
            return super()._predict(observation, lstm_states, episode_starts, deterministic)
        features = self._step_features(observation, self.pi_features_extractor)
        inputs = self.lstm_actor.split_features(features.unsqueeze(0))
        latent_pi, states = self.lstm_actor.step(*inputs, lstm_states, _resets(episode_starts))
        mean = _sequential(self.action_net, _sequential(self.mlp_extractor.policy_net, latent_pi))
        return self._sample(mean, deterministic), states

    def set_training_mode(self, mode: bool) -> None:
        """`nn.Module.train(mode)`, skipped when every module is already in ``mode``: SB3's
        `predict` calls this on every step, and walking ``train()`` through the encoder, core and
        heads cost more than the core's own step (a closed-loop evaluation's hot path)."""
        modules = self.__dict__.get("_every_module")
        if modules is None:  # the module tree is fixed once the policy is built
            modules = self.__dict__["_every_module"] = tuple(self.modules())
        if any(module.training != mode for module in modules):
            super().set_training_mode(mode)

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Action(s) and the next packed state; without ``state`` every env starts a new episode.

        The state is the ``(hidden, cell)`` pair of numpy arrays ``[1, n_envs, hidden_size]``
        returned by the previous call, as with sb3-contrib's LSTM policies.
        """
        if state is None:
            if isinstance(observation, dict):  # judge by one key against its own sub-space
                key = next(iter(observation))
                obs, space = np.asarray(observation[key]), self.observation_space[key]
            else:
                obs, space = np.asarray(observation), self.observation_space
            vectorised = obs.ndim > len(space.shape or ())
            episode_start = np.ones(obs.shape[0] if vectorised else 1, dtype=bool)
        return super().predict(observation, state, episode_start, deterministic)
