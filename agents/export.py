"""`liquid-drones export RUN_DIR --format torchscript|onnx|c`: a run's actor as a standalone artefact.

Inputs: a finished run folder (`agents.run.load_run`: config, model, normalisation statistics).
The work: `policies.export.export_actor` on the run's policy with its observation statistics.
Output (default ``RUN_DIR/export-<format>/``): ``actor.pt`` (TorchScript), ``actor.onnx``, or
``actor.c`` + ``actor.h`` (dependency-free C99, float32, no allocation) — each steps
``(obs, state, episode_start) -> (action, next_state)`` with the deterministic action; for ``c``
also ``footprint.json``: flash and RAM bytes and an estimated cycle count per step on a Cortex-M4F.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from agents.io import write_json
from agents.run import RunError, load_model, load_run


def export_run(run_dir: Path, fmt: str, out_dir: Path | None = None) -> list[Path]:
    """Export the actor of the run in ``run_dir`` (see the module docstring); return the files.

    :raise RunError: if the folder is not a finished run
    :raise ValueError: for an unknown format or a policy the format cannot express
    """
    from policies.export import FORMATS, NormStats, c_footprint, export_actor

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}")
    run = load_run(run_dir)
    policy = load_model(run.config, run.model, run.path / "model.zip").policy
    norm = None
    if run.normalizer is not None:
        key = "state" if "state" in run.normalizer.mean else None
        norm = NormStats(run.normalizer.mean[key], run.normalizer.var[key], run.normalizer.epsilon,
                         run.normalizer.clip, run.normalizer.keep_last)
    out_dir = Path(out_dir) if out_dir else run.path / f"export-{fmt}"
    written = export_actor(policy, norm, fmt, out_dir)
    if fmt == "c":
        footprint = c_footprint(policy, norm)
        write_json(out_dir / "footprint.json", footprint)
        written.append(out_dir / "footprint.json")
        print(f"C actor: {footprint['flash_bytes']:,.0f} B flash, {footprint['ram_bytes']:,.0f} B RAM, "
              f"~{footprint['cycles_m4']:,.0f} Cortex-M4F cycles per step "
              f"({footprint['microseconds_168mhz']:,.0f} us at 168 MHz; an estimate)")
    return written


def main(args: Any) -> None:
    """``liquid-drones export`` (arguments: see agents/cli.py)."""
    try:
        written = export_run(Path(args.run_dir), args.format, Path(args.out) if args.out else None)
    except (RunError, ValueError, ImportError) as error:
        sys.exit(f"error: {error}")
    except OSError as error:
        sys.exit(f"error: cannot write the export: {error}")
    print("wrote " + ", ".join(str(path) for path in written))
