"""Writing files that are never half-written: atomic replaces, append-only row logs, strict JSON.

Every writer of the project goes through this module:

- `atomic_write(path, write)`: ``write`` fills a temporary file beside ``path``, which is then
  renamed onto it in one step, so a reader (or a run killed mid-write) sees the old file or the
  new one, never a mix. The result gets the usual permissions of a new file (0666 less the
  umask: 0644 under umask 022), not the 0600 of a temporary file.
- `write_text`, `write_json` (strict JSON: NaN and infinities become ``null``), `write_rows`
  (a table as CSV + JSON side by side).
- `RowLog`: an append-only CSV whose every `write` reaches the disk before it returns, for
  results that arrive one job at a time; a last line cut short by a crash is dropped on reading.
- `timestamped_name`: the one namer of default output folders (``<label>-YYYYmmdd-HHMMSS``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any


def umask() -> int:
    """The process's file-creation mask (read without changing it for good)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp_path)``, then rename the result onto ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def strict(value: Any) -> Any:
    """``value`` as plain JSON values: NumPy scalars and arrays as Python ones, every non-finite
    float as None (JSON has no NaN or Infinity), mapping keys as strings."""
    if isinstance(value, dict):
        return {str(key): strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray":
        return [strict(item) for item in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        value = value.item()  # NumPy scalars
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def write_json(path: Path, data: Any) -> None:
    """``data`` as strict, indented JSON (NaN/inf -> null; other objects by ``str``)."""
    text = json.dumps(strict(data), indent=1, default=str, allow_nan=False)
    write_text(path, text + "\n")


def write_rows(rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike, name: str) -> Path:
    """Write ``rows`` to ``out_dir/name.csv`` and ``out_dir/name.json``; return the CSV path.

    Columns are the union of the rows' keys in first-seen order.
    """
    folder = Path(out_dir)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    csv_path = folder / f"{name}.csv"

    def write_csv(path: Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(csv_path, write_csv)
    write_json(folder / f"{name}.json", list(rows))
    return csv_path


def timestamped_name(label: str) -> str:
    """``<label>-YYYYmmdd-HHMMSS``: the default name of a run or output folder."""
    return f"{label}-{datetime.now():%Y%m%d-%H%M%S}"


class RowLog:
    """An append-only CSV of result rows; every `write` reaches the disk before it returns.

    :param columns: the header; rows may omit columns (written empty) but not add any
    :param append: keep the rows already in ``path`` (resuming), else start a new file
    """

    def __init__(self, path: Path, columns: Sequence[str], append: bool = False) -> None:
        self.path = path
        self.columns = list(columns)
        path.parent.mkdir(parents=True, exist_ok=True)
        if append and path.exists() and path.stat().st_size:
            with path.open(newline="") as handle:
                header = next(csv.reader(handle), [])
            if header != self.columns:
                raise ValueError(f"{path} has columns {header}, expected {self.columns}")
            self._repair()
        else:
            with path.open("w", newline="") as handle:
                csv.writer(handle).writerow(self.columns)

    def _repair(self) -> None:
        """Drop a last line cut short by an interruption, so that appends start on a fresh line."""
        rows = RowLog.read(self.path)
        with self.path.open("rb") as handle:
            data = handle.read()
        if data.endswith(b"\n") and len(rows) == data.count(b"\n") - 1:
            return
        replace_rows(self.path, self.columns, rows)

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns)
            writer.writerows(rows)
            handle.flush()
            os.fsync(handle.fileno())

    @staticmethod
    def read(path: Path) -> list[dict[str, str]]:
        """Every complete row of a CSV written by a `RowLog` (values as strings); a row with
        missing fields (a line cut short by a crash) is dropped."""
        if not path.exists():
            return []
        with path.open(newline="") as handle:
            return [row for row in csv.DictReader(handle) if None not in row.values() and None not in row]


def replace_rows(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    """Rewrite the CSV at ``path`` with ``rows`` under ``columns``, atomically."""

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)
