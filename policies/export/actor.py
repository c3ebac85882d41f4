"""The deterministic actor of a trained SB3 policy as one step function with explicit state.

Every export format starts here. `actor_parts` reads, from a `CorePolicy` (RecurrentPPO) or a
plain ``ActorCriticPolicy`` (PPO, the ``mlp`` core), the pieces that turn one observation into
one action — features extractor, core, MLP head, action net, action bounds — and `ActorStep`
chains them with the observation normalisation into one module:

    (obs [B, O] raw, state [B, H], episode_start [B]) -> (action [B, A], next state [B, H])

The action is the mean of the Gaussian clipped to the action space, which is what SB3's
``predict(..., deterministic=True)`` returns. The state is the core's state (``H`` = the core's
``state_size``; 0 for ``mlp``; an LSTM's is ``h | c``); where ``episode_start`` is 1 it is reset
to the initial state (zeros) before the step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import Tensor, nn

from policies.core import RecurrentCore
from policies.sb3_policy import MIN_ELAPSED, CorePolicy


@dataclass(frozen=True)
class NormStats:
    """Observation normalisation as SB3's ``VecNormalize`` applies it to the state vector:
    ``clip((obs - mean) / sqrt(var + epsilon), -clip, clip)``.

    :param mean: running mean ``[O]`` (``vec_normalize.obs_rms.mean``; for a camera policy the
        ``"state"`` entry's)
    :param var: running variance ``[O]``
    :param epsilon: ``vec_normalize.epsilon``
    :param clip: ``vec_normalize.clip_obs``
    :param raw_last: the last element passes unnormalised (the step duration of
        ``StepDurationVecNormalize``); a `CorePolicy` with ``elapsed_in_obs`` implies it
    """

    mean: np.ndarray
    var: np.ndarray
    epsilon: float = 1e-8
    clip: float = 10.0
    raw_last: bool = False

    def __post_init__(self) -> None:
        mean, var = np.asarray(self.mean, dtype=np.float64), np.asarray(self.var, dtype=np.float64)
        if mean.ndim != 1 or mean.shape != var.shape:
            raise ValueError(f"mean and var must be vectors of one length, got {mean.shape} and {var.shape}")
        if not (np.all(np.isfinite(mean)) and np.all(var >= 0)):
            raise ValueError("mean must be finite and var >= 0")
        if self.epsilon < 0 or self.clip <= 0:
            raise ValueError(f"need epsilon >= 0 and clip > 0, got {self.epsilon} and {self.clip}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "var", var)

    @classmethod
    def from_vec_normalize(cls, vec_normalize, raw_last: bool = False) -> NormStats:
        """The statistics of a (loaded) ``VecNormalize``; for Dict observations its ``"state"`` entry."""
        rms = vec_normalize.obs_rms
        if isinstance(rms, dict):
            if "state" not in rms:
                raise ValueError(f"Dict observation statistics need a 'state' entry, got {sorted(rms)}")
            rms = rms["state"]
        return cls(rms.mean, rms.var, float(vec_normalize.epsilon), float(vec_normalize.clip_obs), raw_last)

    def scale(self) -> np.ndarray:
        """``1 / sqrt(var + epsilon)`` per element (float64)."""
        return 1.0 / np.sqrt(self.var + self.epsilon)


@dataclass
class ActorParts:
    """What the actor is made of (modules are copies, in eval mode, on the CPU, float32).

    ``core`` is None for PPO's ``mlp``; ``head`` holds the MLP head's layers then the action net;
    ``elapsed_in_obs``: the last feature is the step duration in seconds (split off the core's
    inputs; fed to time-aware cores as ``max(duration, MIN_ELAPSED)``).
    """

    extractor: nn.Module
    core: RecurrentCore | None
    head: list[nn.Module]
    elapsed_in_obs: bool
    observation_space: spaces.Space
    low: np.ndarray
    high: np.ndarray

    @property
    def state_size(self) -> int:
        return self.core.state_size if self.core is not None else 0

    @property
    def action_size(self) -> int:
        return int(self.low.shape[0])

    @property
    def camera(self) -> bool:
        return isinstance(self.observation_space, spaces.Dict)

    @property
    def state_obs_size(self) -> int:
        """Length of the state vector (the whole observation, or the ``"state"`` entry of a Dict)."""
        space = self.observation_space["state"] if self.camera else self.observation_space
        return int(space.shape[0])

    def parameter_count(self) -> int:
        """Parameters of extractor, core and head."""
        modules = [self.extractor, *([self.core] if self.core is not None else []), *self.head]
        return sum(p.numel() for m in modules for p in m.parameters())


def actor_parts(policy: ActorCriticPolicy) -> ActorParts:
    """The actor of ``policy`` (a `CorePolicy`, or PPO's ``ActorCriticPolicy`` for ``mlp``).

    :raises ValueError: other recurrent policies, non-Gaussian or squashed actions, gSDE, or
        observations other than a flat Box or a Dict with ``image`` and ``state``
    """
    if isinstance(policy, RecurrentActorCriticPolicy) and not isinstance(policy, CorePolicy):
        raise ValueError(f"recurrent policies export only as CorePolicy, got {type(policy).__name__}")
    if not isinstance(policy, ActorCriticPolicy):
        raise ValueError(f"need a CorePolicy or ActorCriticPolicy, got {type(policy).__name__}")
    if not isinstance(policy.action_dist, DiagGaussianDistribution) or policy.squash_output:
        raise ValueError(f"only unsquashed diagonal Gaussian actions export, got {type(policy.action_dist).__name__}")
    space = policy.observation_space
    flat = isinstance(space, spaces.Box) and len(space.shape) == 1
    if not flat and not (isinstance(space, spaces.Dict) and set(space.spaces) == {"image", "state"}):
        raise ValueError(f"observations must be a flat Box or a Dict of 'image' and 'state', got {space}")

    def frozen(module: nn.Module) -> nn.Module:
        return copy.deepcopy(module).to("cpu", torch.float32).eval().requires_grad_(False)

    core = None
    if isinstance(policy, CorePolicy):
        core = frozen(policy.lstm_actor.core)
        core.native = False  # its PyTorch path: traceable, and the same numbers
    head = [*frozen(policy.mlp_extractor.policy_net), frozen(policy.action_net)]
    return ActorParts(
        extractor=frozen(policy.pi_features_extractor),
        core=core,
        head=head,
        elapsed_in_obs=bool(getattr(policy, "elapsed_in_obs", False)),
        observation_space=space,
        low=np.asarray(policy.action_space.low, dtype=np.float32),
        high=np.asarray(policy.action_space.high, dtype=np.float32),
    )


class ActorStep(nn.Module):
    """One deterministic actor step: normalise -> features -> core -> head -> clipped mean.

    ``forward(obs [B, O], state [B, H], episode_start [B])`` for a flat observation (raw, as the
    env returns it); ``forward(image [B, C, h, w], obs [B, S], state, episode_start)`` for a camera
    policy, the image channels-first uint8 (as SB3's ``VecTransposeImage`` hands it to the policy).
    Returns ``(action [B, A], next state [B, H])``, float32.
    """

    def __init__(self, parts: ActorParts, norm: NormStats | None) -> None:
        super().__init__()
        self.extractor, self.core, self.head = parts.extractor, parts.core, nn.Sequential(*parts.head)
        self.elapsed_in_obs = parts.elapsed_in_obs
        self.camera = parts.camera
        self.register_buffer("low", torch.as_tensor(parts.low))
        self.register_buffer("high", torch.as_tensor(parts.high))
        self.normalise = norm is not None
        self.raw_last = self.normalise and (norm.raw_last or parts.elapsed_in_obs)
        size = parts.state_obs_size
        if norm is not None and norm.mean.shape != (size,):
            raise ValueError(f"normalisation statistics have {norm.mean.shape[0]} elements, the state vector {size}")
        mean = norm.mean if norm is not None else np.zeros(size)
        std = np.sqrt(norm.var + norm.epsilon) if norm is not None else np.ones(size)
        self.register_buffer("obs_mean", torch.as_tensor(mean, dtype=torch.float64))
        self.register_buffer("obs_std", torch.as_tensor(std, dtype=torch.float64))
        self.clip = float(norm.clip) if norm is not None else 0.0
        with torch.no_grad():  # fills the core's cache of derived weights: traced as constants
            self(*example_inputs(parts))

    def normalised(self, obs: Tensor) -> Tensor:
        """The state vector ``[B, S]`` as the policy saw it in training (in float64 as VecNormalize
        computes it, then float32)."""
        if not self.normalise:
            return obs
        out = ((obs.double() - self.obs_mean) / self.obs_std).clamp(-self.clip, self.clip).float()
        if self.raw_last:
            out = torch.cat((out[:, :-1], obs[:, -1:]), dim=1)
        return out

    def latent(self, features: Tensor, state: Tensor, episode_start: Tensor) -> tuple[Tensor, Tensor]:
        """Core outputs ``[B, O]`` and next state from features ``[B, F]``."""
        state = torch.where(episode_start.unsqueeze(1) != 0, torch.zeros_like(state), state)
        if self.core is None:
            return features, state
        inputs, elapsed = features, None
        if self.elapsed_in_obs:
            inputs = features[:, :-1]
            if self.core.time_aware:
                elapsed = features[:, -1:].clamp_min(MIN_ELAPSED).unsqueeze(0)
        outputs, state = self.core(inputs.unsqueeze(0), state, None, elapsed)
        return outputs[0], state

    def act(self, features: Tensor, state: Tensor, episode_start: Tensor) -> tuple[Tensor, Tensor]:
        latent, state = self.latent(features, state, episode_start)
        mean = self.head(latent)
        return torch.max(torch.min(mean, self.high), self.low), state

    def forward(self, *args: Tensor) -> tuple[Tensor, Tensor]:
        if self.camera:
            image, obs, state, episode_start = args
            features = self.extractor({"image": image.float() / 255.0, "state": self.normalised(obs)})
        else:
            obs, state, episode_start = args
            features = self.extractor(self.normalised(obs))
        return self.act(features, state, episode_start)


def example_inputs(parts: ActorParts, batch: int = 1) -> tuple[Tensor, ...]:
    """Zero inputs of `ActorStep` for ``batch`` envs (tracing needs them), episode_start = 1."""
    obs = torch.zeros(batch, parts.state_obs_size)
    state = torch.zeros(batch, parts.state_size)
    starts = torch.ones(batch)
    if not parts.camera:
        return obs, state, starts
    shape = parts.observation_space["image"].shape
    channels_first = shape if shape[0] in (1, 3, 4) else (shape[2], shape[0], shape[1])
    return torch.zeros(batch, *channels_first, dtype=torch.uint8), obs, state, starts
