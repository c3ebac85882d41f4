"""Export a trained actor — normalisation + encoder + core + action head — as a self-contained
artefact with explicit state in and out.

    from policies.export import NormStats, export_actor
    norm = NormStats.from_vec_normalize(VecNormalize.load("runs/x/vecnormalize.pkl", venv))
    export_actor(model.policy, norm, "c", Path("runs/x/export"))

Formats (`FORMATS`): ``torchscript`` (``actor.pt``), ``onnx`` (``actor.onnx``, needs the optional
extra ``onnx``) and ``c`` (``actor.c`` + ``actor.h``: C99, float32, no allocation, for a
microcontroller). All compute `policies.export.actor.ActorStep`: the deterministic action that
SB3's ``predict(..., deterministic=True)`` returns, from the raw observation. `c_footprint` reports
the flash, RAM and arithmetic of the C step.
"""

from __future__ import annotations

from pathlib import Path

from stable_baselines3.common.policies import ActorCriticPolicy

from policies.export.actor import ActorStep, NormStats, actor_parts
from policies.export.footprint import c_footprint

FORMATS = ("torchscript", "onnx", "c")

__all__ = ["FORMATS", "ActorStep", "NormStats", "c_footprint", "export_actor"]


def export_actor(policy: ActorCriticPolicy, norm: NormStats | None, fmt: str, out_dir: Path) -> list[Path]:
    """Write the actor of ``policy`` in format ``fmt`` into ``out_dir`` (created if missing).

    :param policy: a `policies.sb3_policy.CorePolicy` (RecurrentPPO) or PPO's ``ActorCriticPolicy``
        (the ``mlp`` core); its actor is copied, the policy is not changed
    :param norm: the observation normalisation of the run (``VecNormalize``'s statistics), or None
        if observations were not normalised. With ``elapsed_in_obs`` the last observation element
        (the step duration, s) passes unnormalised.
    :param fmt: one of `FORMATS`
    :param out_dir: output folder
    :return: the files written (``actor.pt`` | ``actor.onnx`` | ``actor.c`` and ``actor.h``)
    :raises ValueError: unknown format, a policy that cannot be exported (named in the message), a
        camera policy for ``c``, normalisation statistics of the wrong length
    :raises ImportError: ``onnx`` without the onnx package
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}")
    parts = actor_parts(policy)
    out_dir = Path(out_dir)
    if fmt == "c":
        from policies.export.c import export_c, program

        program(parts, norm)  # refuses what C cannot express before anything is written
        out_dir.mkdir(parents=True, exist_ok=True)
        return export_c(parts, norm, out_dir)
    ActorStep(parts, norm)  # checks the statistics against the observation
    out_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        from policies.export.onnx import export_onnx

        return export_onnx(parts, norm, out_dir)
    from policies.export.torchscript import export_torchscript

    return export_torchscript(parts, norm, out_dir)
