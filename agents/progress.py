"""Progress of a long loop: a bar on a terminal, plain periodic lines in a log file.

`Progress(total, desc, unit)` draws a tqdm bar when stderr is a terminal; otherwise (a cluster
job's log, CI, ``> file``) it prints a line such as
``[stress] 120/400 episodes (30 %), 41 s elapsed, ~96 s left`` every ``every_s`` seconds and at
the end, so a log shows the loop advancing without carriage-return noise.

`LogFile(path)` is a logger for lines that matter later (training's progress and evaluations):
each line goes to the console (flushed) and is appended, time-stamped, to ``path``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable


class Progress:
    """Count ``total`` units of work (see the module docstring)."""

    def __init__(self, total: float, desc: str, unit: str = "it", every_s: float = 30.0,
                 plain: bool | None = None) -> None:
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.done = 0.0
        self.start = self.last = time.time()
        self.plain = not sys.stderr.isatty() if plain is None else plain
        self.bar: Any = None
        if not self.plain:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)

    def line(self) -> str:
        elapsed = time.time() - self.start
        share = self.done / self.total if self.total else 1.0
        left = f", ~{elapsed * (1 - share) / share:.0f} s left" if 0 < share < 1 else ""
        return (f"[{self.desc}] {self.done:,.0f}/{self.total:,.0f} {self.unit}s ({100 * share:.0f} %), "
                f"{elapsed:.0f} s elapsed{left}")

    def update(self, n: float = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif time.time() - self.last >= self.every_s:
            self.last = time.time()
            print(self.line(), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            print(self.line(), flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def say(line: str) -> None:
    """Print ``line`` at once (a log file behind stdout sees it without waiting for a buffer)."""
    print(line, flush=True)


class LogFile:
    """Log lines to ``echo`` (the console; None: the file only) and append them to ``path`` as
    ``<local time ISO 8601> <line>``; the file is opened per line, so it survives a kill."""

    def __init__(self, path: Path, echo: Callable[[str], None] | None = say) -> None:
        self.path, self.echo = Path(path), echo

    def __call__(self, line: str) -> None:
        if self.echo is not None:
            self.echo(line)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")

    def quiet(self) -> LogFile:
        """The same file without the console (for lines a progress bar already shows)."""
        return LogFile(self.path, None)
