"""TorchScript export: the `ActorStep` traced into one ``.pt`` file runnable without this package.

    actor = torch.jit.load("actor.pt")
    action, state = actor(obs, state, episode_start)          # [B, O], [B, H], [B]

The file carries ``actor.json`` (sizes, input and output names; see `describe`) as an extra file:
``torch.jit.load("actor.pt", _extra_files={"actor.json": ""})``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from policies.export.actor import ActorParts, ActorStep, NormStats, example_inputs


def input_names(parts: ActorParts) -> list[str]:
    """Names of `ActorStep`'s inputs, in order."""
    return (["image"] if parts.camera else []) + ["obs", "state", "episode_start"]


def describe(parts: ActorParts) -> dict:
    """Sizes and the step's signature, stored beside every artefact."""
    return {
        "inputs": input_names(parts),
        "outputs": ["action", "next_state"],
        "obs_size": parts.state_obs_size,
        "state_size": parts.state_size,
        "action_size": parts.action_size,
        "elapsed_in_obs": parts.elapsed_in_obs,
    }


def traced(parts: ActorParts, norm: NormStats | None) -> torch.jit.ScriptModule:
    """`ActorStep` traced with a batch of one (the batch size stays free)."""
    step = ActorStep(parts, norm).eval()
    # The cores' shape checks become constants of the trace: true for every batch size, so their
    # TracerWarnings say nothing here.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(step, example_inputs(parts), check_trace=False)


def export_torchscript(parts: ActorParts, norm: NormStats | None, out_dir: Path) -> list[Path]:
    """Write ``actor.pt``; returns its path."""
    path = out_dir / "actor.pt"
    torch.jit.save(traced(parts, norm), str(path), _extra_files={"actor.json": json.dumps(describe(parts))})
    return [path]
