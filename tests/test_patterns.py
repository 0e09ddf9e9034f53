"""pcipass.patterns: a pattern is compiled on first use, then behaves as compiled."""

from __future__ import annotations

import re

import pytest

from pcipass import patterns


def test_nothing_is_compiled_until_the_pattern_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[object] = []
    real = re.compile

    def counting(source: object, flags: int = 0) -> re.Pattern[str]:
        compiled.append(source)
        return real(source, flags)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(patterns.re, "compile", counting)
    deferred = patterns.lazy(r"(?P<bus>[0-9a-f]{2}):(?P<slot>[0-9a-f]{2})", re.IGNORECASE)
    assert compiled == []
    found = deferred.fullmatch("0A:1f")
    assert found is not None and found.group("bus") == "0A"
    assert deferred.search("x 09:00 y") is not None
    assert deferred.sub("<>", "a 01:02 b") == "a <> b"
    assert deferred.groupindex == {"bus": 1, "slot": 2}
    assert deferred.flags & re.IGNORECASE
    assert len(compiled) == 1  # once, however many uses


@pytest.mark.parametrize(
    ("source", "text"),
    [(r"^\s*(\w+)\s*=", "  name = 'g'"), (r"a|b", "xxb"), (r"\d+", "no digits")],
)
def test_every_method_answers_as_the_compiled_pattern(source: str, text: str) -> None:
    deferred, compiled = patterns.lazy(source, re.MULTILINE), re.compile(source, re.MULTILINE)
    for method in ("match", "search", "fullmatch", "findall", "split"):
        mine, theirs = getattr(deferred, method)(text), getattr(compiled, method)(text)
        if isinstance(theirs, re.Match):
            assert isinstance(mine, re.Match) and mine.span() == theirs.span()
        else:
            assert mine == theirs
    assert [m.span() for m in deferred.finditer(text)] == [
        m.span() for m in compiled.finditer(text)
    ]
    assert deferred.subn("-", text) == compiled.subn("-", text)
    assert deferred.pattern == source and deferred.groups == compiled.groups


def test_bytes_patterns() -> None:
    deferred = patterns.lazy_bytes(rb"\r?\n")
    assert deferred.split(b"a\r\nb\nc") == [b"a", b"b", b"c"]


def test_a_bad_pattern_fails_when_used_not_when_imported() -> None:
    deferred = patterns.lazy(r"(unclosed")
    with pytest.raises(re.error):
        deferred.match("x")


def test_every_deferred_pattern_of_pcipass_compiles() -> None:
    """Deferring moves a typo's error from import to first use: compile them all here."""
    import importlib
    import pkgutil

    import pcipass

    found = 0
    for module_info in pkgutil.walk_packages(pcipass.__path__, "pcipass."):
        if module_info.name.startswith("pcipass.testing") or module_info.name.endswith("__main__"):
            continue
        module = importlib.import_module(module_info.name)
        for value in list(vars(module).values()):
            if isinstance(value, patterns._Deferred):
                assert isinstance(value.groups, int)  # compiles it, or raises re.error
                found += 1
    assert found >= 40
