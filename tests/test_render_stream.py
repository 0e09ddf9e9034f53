"""Streamed JSON (issue #13): ``print_json`` writes a JsonStream array element by element,
and the bytes are exactly those of ``json.dumps`` of the same data with the arrays built,
compact for programs and indented for a terminal."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest

from pcipass.cli.render import JsonStream, print_json


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


DEVICE = {
    "address": "0000:09:00.0",
    "names": ["NetXtreme II", 'quote " and \\ and \u00e9 and \u2028'],
    "sriov": {"total_vfs": 7, "vfs": [], "nested": {"empty": {}, "none": None}},
    "ratio": 1.5,
    "flags": [True, False, None],
}

CASES = {
    "devices": [DEVICE, {"address": "0000:0a:04.1", "sriov": None}, {}, [], [[1, [2]]]],
    "one": [DEVICE],
    "none": [],
    "scalars": [1, "two", None, 3.25],
}


@pytest.mark.parametrize("terminal", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("streams", ["first", "middle", "last", "two"])
def test_streamed_bytes_are_json_dumps(terminal: bool, case: str, streams: str) -> None:
    items = CASES[case]
    layout = {
        "first": ["devices", "problems", "extra"],
        "middle": ["problems", "devices", "extra"],
        "last": ["problems", "extra", "devices"],
        "two": ["devices", "problems", "again"],
    }[streams]
    built: dict[str, object] = {}
    streamed: dict[str, object] = {}
    for key in layout:
        value: object = items if key in ("devices", "again") else ["a problem", {"k": [1, 2]}]
        built[key] = value
        streamed[key] = JsonStream(iter(items)) if key in ("devices", "again") else value
    want, got = (Terminal(), Terminal()) if terminal else (io.StringIO(), io.StringIO())
    print_json(built, want)
    print_json(streamed, got)
    assert got.getvalue() == want.getvalue()
    assert json.loads(got.getvalue()) == built


def test_elements_are_written_as_they_come() -> None:
    """The array is consumed one element at a time, interleaved with writing."""
    out = io.StringIO()
    seen: list[int] = []

    def devices() -> Iterator[dict[str, int]]:
        for index in range(3):
            seen.append(len(out.getvalue()))
            yield {"n": index}

    print_json({"devices": JsonStream(devices()), "problems": []}, out)
    assert seen[0] < seen[1] < seen[2]  # each element written before the next is made
    assert (
        out.getvalue()
        == json.dumps({"devices": [{"n": 0}, {"n": 1}, {"n": 2}], "problems": []}) + "\n"
    )
