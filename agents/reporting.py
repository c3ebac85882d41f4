"""Writing result tables: CSV + JSON side by side, and a console table."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_rows(rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike, name: str) -> Path:
    """Write ``rows`` to ``out_dir/name.csv`` and ``out_dir/name.json``; return the CSV path.

    Columns are the union of the rows' keys in first-seen order.
    """
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    csv_path = folder / f"{name}.csv"
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, csv_path)
    _atomic_write_text(folder / f"{name}.json", json.dumps(list(rows), indent=2) + "\n")
    return csv_path


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def print_rows(rows: Sequence[dict[str, Any]], title: str) -> None:
    """Print ``rows`` as a table on the console."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_format(row.get(column, "")) for column in columns))
    console = Console()
    console.width = max(console.width, 160)  # logs and CI are not terminals: do not truncate
    console.print(table)
