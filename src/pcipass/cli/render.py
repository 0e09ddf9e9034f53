"""Output helpers: tables, JSON, progress on stderr.  Only the CLI prints."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import TextIO


class JsonStream:
    """A JSON array that :func:`print_json` writes element by element, so the
    whole array (and its text) never sits in memory at once: ``list --json``
    on 8192 functions held every device's dict and a 6 MB string before."""

    def __init__(self, items: Iterable[object]) -> None:
        self.items = items


def print_json(data: object, out: TextIO | None = None) -> None:
    """Indented for a terminal; compact (json's C encoder, ~10x faster and
    far less memory on big hosts) when read by a program.  A top-level
    object's :class:`JsonStream` values are streamed; the bytes are those
    of ``json.dumps`` of the same data with the arrays built."""
    import json  # only when JSON is printed (issue #13: start-up cost)

    stream = out or sys.stdout
    indent = 2 if stream.isatty() else None
    if isinstance(data, dict) and any(isinstance(v, JsonStream) for v in data.values()):
        _write_streamed(stream, data, indent)
        return
    stream.write(json.dumps(data, indent=indent) + "\n")


def _write_streamed(stream: TextIO, data: dict[str, object], indent: int | None) -> None:
    """json.dumps's own layout, written piece by piece: compact separators
    ``", "`` and ``": "``; indented, ``","`` then a newline and the depth's
    indent.  A nested value's own newlines get the enclosing depth's indent
    (JSON text has no raw newline inside a string, so this is exact)."""
    import json

    if indent is None:
        stream.write("{")
        for index, (key, value) in enumerate(data.items()):
            stream.write((", " if index else "") + json.dumps(key) + ": ")
            if isinstance(value, JsonStream):
                stream.write("[")
                for position, item in enumerate(value.items):
                    stream.write((", " if position else "") + json.dumps(item))
                stream.write("]")
            else:
                stream.write(json.dumps(value))
        stream.write("}\n")
        return
    one, two = "\n" + " " * indent, "\n" + " " * (2 * indent)
    stream.write("{")
    for index, (key, value) in enumerate(data.items()):
        stream.write(("," if index else "") + one + json.dumps(key) + ": ")
        if isinstance(value, JsonStream):
            empty = True
            for item in value.items:
                text = json.dumps(item, indent=indent).replace("\n", two)
                stream.write(("[" if empty else ",") + two + text)
                empty = False
            stream.write("[]" if empty else one + "]")
        else:
            stream.write(json.dumps(value, indent=indent).replace("\n", one))
    stream.write("\n}\n")


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
