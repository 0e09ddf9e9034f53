"""Output helpers: tables, JSON, progress on stderr.  Only the CLI prints."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO


def print_json(data: object, out: TextIO | None = None) -> None:
    """Indented for a terminal; compact (json's C encoder, ~10x faster and
    far less memory on big hosts) when read by a program."""
    import json  # only when JSON is printed (issue #13: start-up cost)

    stream = out or sys.stdout
    indent = 2 if stream.isatty() else None
    stream.write(json.dumps(data, indent=indent) + "\n")


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """Left-aligned columns; the last column is never padded."""
    widths = [len(h) for h in headers]
    for row in rows:
        for index, cell in enumerate(row[:-1]):
            widths[index] = max(widths[index], len(cell))
    lines = []
    for row in [list(headers), *[list(r) for r in rows]]:
        cells = [c.ljust(widths[i]) for i, c in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def warn(message: str) -> None:
    print(f"pcipass: {message}", file=sys.stderr)


def progress(message: str) -> None:
    """Progress for slow steps, on stderr so --json stays clean."""
    if sys.stderr.isatty():
        print(f"... {message}", file=sys.stderr, flush=True)
