"""Provenance of a run or result folder: which code, which command, which seeds, when.

Every verb that writes a folder (train, evaluate, stress, compare, study) records each session
that wrote it in ``provenance.json``::

    {"sessions": [{"verb": "train", "version": "0.1.0", "git_commit": "ab12...", "git_dirty": false,
                   "command": ["liquid-drones", "train", "--name", "main"], "python": "3.11.7",
                   "seeds": {"train": 0}, "started": "2026-12-02T12:00:00+00:00",
                   "ended": "2026-12-02T12:02:10+00:00", "outcome": "finished"}]}

A resumed run or sweep appends a session. ``git_commit``/``git_dirty`` are those of the checkout
the package runs from, and absent when it is not a git checkout (an installed wheel). Times are
ISO 8601 with the UTC offset; ``outcome`` is ``running`` while the session writes, then
``finished``, ``interrupted`` (Ctrl-C) or ``failed: <error>``.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agents.io import write_json

PROVENANCE_FILE = "provenance.json"
PACKAGE = "liquid-drones"
_SOURCE = Path(__file__).resolve().parent


def package_version() -> str:
    """The installed version of liquid-drones (``unknown`` when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "unknown"


def git_state() -> dict[str, Any]:
    """``{"git_commit": ..., "git_dirty": ...}`` of the checkout this code runs from; ``{}`` outside one."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(_SOURCE), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {}


def now() -> str:
    """The current time, ISO 8601 with the UTC offset, to the second."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def version_line() -> str:
    """``liquid-drones 0.1.0 (git ab12cd3, modified)`` for ``--version``."""
    state = git_state()
    git = f" (git {state['git_commit'][:7]}{', modified' if state['git_dirty'] else ''})" if state else ""
    return f"{PACKAGE} {package_version()}{git}"


@contextmanager
def recorded(folder: Path, verb: str, seeds: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Record this session in ``folder/provenance.json`` at the start and again at the end.

    :param seeds: the seeds that fix the session's randomness, by name (e.g. ``{"train": 0}``)
    :return: the session's record; the caller may add keys before the block ends
    """
    path = Path(folder) / PROVENANCE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    earlier = _sessions(path)
    session: dict[str, Any] = {"verb": verb, "version": package_version(), **git_state(), "command": list(sys.argv),
                               "python": platform.python_version(), "seeds": seeds, "started": now(),
                               "ended": None, "outcome": "running"}
    write_json(path, {"sessions": [*earlier, session]})
    try:
        yield session
    except KeyboardInterrupt:
        session["outcome"] = "interrupted"
        raise
    except BaseException as error:
        session["outcome"] = f"failed: {type(error).__name__}: {error}"
        raise
    else:
        session["outcome"] = "finished"
    finally:
        session["ended"] = now()
        write_json(path, {"sessions": [*earlier, session]})


def _sessions(path: Path) -> list[dict[str, Any]]:
    """The sessions already recorded in ``path`` (none if it is missing or unreadable)."""
    try:
        return list(json.loads(path.read_text())["sessions"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
