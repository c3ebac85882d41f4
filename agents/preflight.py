"""Checks of a training config that need to build an env or a core, run before any work starts.

`agents.config` validates keys, types and ranges without touching the simulator; `preflight`
goes one step further for a run about to start: it makes (and closes) one env with the
configured id and constructor arguments and builds a tiny core with the configured keywords, so
that a wrong id, argument or keyword stops with a `ConfigError` naming the key before a run
folder exists. Reading a finished run does not repeat this.
"""

from __future__ import annotations

from agents.config import Config, ConfigError, EnvConfig, PolicyConfig


def check_env(env: EnvConfig) -> None:
    """Make (and close) one env so that a wrong id or constructor argument fails now."""
    import gymnasium as gym

    import envs

    if env.id not in envs.ENV_IDS:
        ids = ", ".join(sorted(envs.ENV_IDS))
        known = " (a registered Gymnasium env, but not one of this suite's)" if env.id in gym.registry else ""
        raise ConfigError(f"env.id: unknown env {env.id!r}{known}; allowed: {ids}")
    try:
        gym.make(env.id, **env.kwargs).close()
    except (TypeError, ValueError) as error:
        raise ConfigError(f"env.kwargs {env.kwargs} are not valid for {env.id}: {error}") from None


def check_core(policy: PolicyConfig) -> None:
    """Build a tiny core so that a wrong core keyword fails now rather than after env start-up."""
    if policy.core == "mlp":
        return
    from policies import build_core

    try:
        core = build_core(policy.core, 4, **policy.core_kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"policy.core_kwargs {policy.core_kwargs} are not valid for core {policy.core!r}: "
                          f"{error}") from None
    if policy.time_input is True and not core.time_aware:
        raise ConfigError(f"policy.time_input: core {policy.core!r} is not time-aware; allowed values: auto, false")


def check_device(device: str) -> None:
    """``train.device=cuda`` without a GPU is an error, not a silent CPU run."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("train.device: cuda was asked for, but torch sees no CUDA device here; "
                              "allowed here: cpu, auto")


def preflight(config: Config) -> None:
    """Every check of ``config`` that builds an env or a core (see the module docstring).

    :raise ConfigError: naming the key and what is allowed
    """
    check_env(config.env)
    check_core(config.policy)
    check_device(config.train.device)
