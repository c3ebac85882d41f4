"""Workflows that join `envs` and `policies`: training, evaluation, benchmarks and the CLI.

``from agents import load_policy`` loads a trained run for use from Python (`agents.api`); it is
imported on first use, so that ``import agents`` (every CLI verb) stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrainedPolicy", "load_policy"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from agents import api

        return getattr(api, name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
