"""``liquid-drones list``: what there is to train, fly and sweep, read from where it is defined.

Five tables: the training configs (agents/configs, each also as ``<task>-<core>``), the env IDs
with the disturbance axes each responds to, the cores, the disturbance axes with their units
(`envs.disturbances.AXIS_LABELS`) and default stress levels (`DEFAULT_LEVELS`), and the study
specs (agents/configs/studies). Nothing here is a copy that could drift from its source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.config import CONFIG_DIR, read_yaml
from agents.study_spec import STUDY_DIR


def _summary(path: Path, sentences: int = 1) -> str:
    """The first ``sentences`` sentences of a YAML file's leading comment (its description)."""
    import re

    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    parts = re.split(r"(?<=[.?!])\s+", " ".join(lines))
    return " ".join(parts[:sentences])


def config_rows() -> list[dict[str, Any]]:
    rows = []
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        data = read_yaml(path)
        rows.append({"config": path.stem, "env": data["env"]["id"],
                     "core": (data.get("policy") or {}).get("core", "(default)"), "about": _summary(path)})
    return rows


def env_rows() -> list[dict[str, Any]]:
    import envs

    return [{"env id": env_id, "disturbance axes": ", ".join(envs.disturbance_axes(env_id)),
             "with camera=True also": ", ".join(a for a in envs.disturbance_axes(env_id, {"camera": True})
                                                if a not in envs.disturbance_axes(env_id))}
            for env_id in envs.ENV_IDS]


def core_rows() -> list[dict[str, Any]]:
    from policies import CORE_NAMES
    from policies.registry import core_arguments

    return [{"core": name, "algorithm": "PPO" if name == "mlp" else "RecurrentPPO",
             "arguments (policy.core_kwargs)": ", ".join(f"{k}={v!r}" for k, v in core_arguments(name).items())}
            for name in CORE_NAMES]


def axis_rows() -> list[dict[str, Any]]:
    from envs.disturbances import AXES, AXIS_LABELS, DEFAULT_LEVELS

    return [{"axis": axis, "meaning (unit)": AXIS_LABELS[axis],
             "default stress levels": ", ".join(f"{level:g}" for level in DEFAULT_LEVELS[axis])} for axis in AXES]


def study_rows() -> list[dict[str, Any]]:
    return [{"study": path.stem, "about": _summary(path, sentences=2)} for path in sorted(STUDY_DIR.glob("*.yaml"))]


def main(args: Any = None) -> None:
    """Print the five tables (`agents.report.print_rows`)."""
    from agents.report import print_rows
    from policies import CORE_NAMES

    print_rows(config_rows(), f"configs (`train --config NAME`; each also as NAME-CORE, CORE in {', '.join(CORE_NAMES)})")
    print_rows(env_rows(), "env IDs")
    print_rows(core_rows(), "cores (policy.core)")
    print_rows(axis_rows(), "disturbance axes (evaluate --disturb AXIS=V, stress --axes)")
    print_rows(study_rows(), "study specs (`study NAME`)")
