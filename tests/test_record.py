"""pcipass.record against the real dataclasses, shape by shape.

Each class body below is executed twice, once with ``dataclasses`` and once
with ``pcipass.record`` behind the same names, and every behaviour pcipass
relies on is compared: constructor (positional, keyword, defaults,
factories, errors), repr, equality, hash, order, frozen guards,
``__post_init__``, ``replace`` and ``fields``.
"""

from __future__ import annotations

import dataclasses
import pickle
import sys
import textwrap
import types
from collections.abc import Callable
from typing import Any

import pytest

from pcipass import _record_runtime, record

SHAPES: dict[str, str] = {
    "plain": """
        @dataclass
        class C:
            a: int
            b: str = "x"
    """,
    "frozen": """
        @dataclass(frozen=True)
        class C:
            a: int
            b: tuple[int, ...] = ()
            c: "str | None" = None
    """,
    "order": """
        @dataclass(frozen=True, order=True)
        class C:
            domain: int
            bus: int
            slot: int = 0
    """,
    "factories": """
        @dataclass
        class C:
            a: int
            items: list[int] = field(default_factory=list)
            table: dict[str, int] = field(default_factory=dict)
            flag: bool = field(default=False)
    """,
    "hidden fields": """
        @dataclass
        class C:
            a: int
            _cache: "dict[str, int] | None" = field(
                default=None, init=False, repr=False, compare=False
            )
            _seen: list[int] = field(default_factory=list, init=False, repr=False, compare=False)
            _pair: tuple[int, int] = field(default=(0, -1), init=False, repr=False, compare=False)
    """,
    "not compared": """
        @dataclass(frozen=True)
        class C:
            a: int
            note: str = field(default="", compare=False)
    """,
    "classvar": """
        @dataclass
        class C:
            LIMIT: ClassVar[int] = 5
            a: int = 1
    """,
    "post_init": """
        @dataclass(frozen=True)
        class C:
            a: int
            def __post_init__(self) -> None:
                if self.a < 0:
                    raise ValueError("negative")
    """,
    "inheritance": """
        @dataclass(frozen=True)
        class Base:
            a: int
            b: int = 2
        @dataclass(frozen=True)
        class C(Base):
            c: int = 3
            a: int = 9
    """,
    "own methods": """
        @dataclass(frozen=True)
        class C:
            a: int
            def __repr__(self) -> str:
                return "mine"
            def __eq__(self, other: object) -> bool:
                return True
            def __hash__(self) -> int:
                return 7
    """,
    "empty": """
        @dataclass(frozen=True)
        class C:
            pass
    """,
    "plain subclass": """
        @dataclass(frozen=True)
        class Base:
            a: int
        class C(Base):
            extra = 1
    """,
}

#: Argument lists tried on each shape's class (some must fail, alike).
CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((), {}),
    ((1,), {}),
    ((1, "y"), {}),
    ((1, 2, 3), {}),
    ((1, 2, 3, 4), {}),
    ((), {"a": 1}),
    ((), {"a": 1, "b": "z"}),
    ((1,), {"a": 2}),
    ((), {"nope": 1}),
    ((-1,), {}),
    ((1, [1, 2]), {}),
    ((), {"domain": 1, "bus": 2}),
    ((1,), {"items": [3]}),
    ((1,), {"note": "n"}),
]


def build(shape: str, flavour: str) -> type:
    module: Any = dataclasses if flavour == "dataclasses" else _record_runtime
    namespace = _module(f"record_shape_{flavour}_{len(sys.modules)}")
    namespace.update({"dataclass": module.dataclass, "field": module.field})
    source = "from __future__ import annotations\nfrom typing import ClassVar\n"
    exec(source + textwrap.dedent(SHAPES[shape]), namespace)
    kind: type = namespace["C"]
    return kind


def _module(name: str) -> dict[str, Any]:
    """A registered module's namespace: dataclasses looks the class's module up."""
    module = types.ModuleType(name)
    sys.modules[name] = module
    return module.__dict__


def outcome(function: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[str, Any]:
    """("ok", result) or ("error", the exception's class name): what is compared."""
    try:
        return "ok", function(*args, **kwargs)
    except Exception as error:
        return "error", type(error).__name__


def describe(obj: Any) -> dict[str, Any]:
    """What an instance looks like from outside."""
    seen = {}
    for name in ("a", "b", "c", "domain", "bus", "slot", "items", "table", "flag", "note"):
        if hasattr(obj, name):
            seen[name] = getattr(obj, name)
    for name in ("_cache", "_seen", "_pair"):
        seen[name] = getattr(obj, name, "<unset>")
    return {"repr": repr(obj), "attrs": seen}


@pytest.fixture(params=["generic", "compiled"])
def init_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ``__init__`` paths: the generic one, and the compiled one (from the
    first instance when COMPILE_AFTER is 0)."""
    after = _record_runtime.COMPILE_AFTER if request.param == "generic" else 0
    monkeypatch.setattr(_record_runtime, "COMPILE_AFTER", after)
    return str(request.param)


@pytest.mark.usefixtures("init_path")
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_behaviour_matches_dataclasses(shape: str) -> None:
    real, ours = build(shape, "dataclasses"), build(shape, "record")
    for args, kwargs in CALLS:
        made_real = outcome(real, *args, **kwargs)
        made_ours = outcome(ours, *args, **kwargs)
        assert made_real[0] == made_ours[0], (shape, args, kwargs, made_real, made_ours)
        if made_real[0] == "error":
            assert made_real[1] == made_ours[1], (shape, args, kwargs)
            continue
        one_real, one_ours = made_real[1], made_ours[1]
        assert describe(one_real) == describe(one_ours), (shape, args, kwargs)
        twin_real, twin_ours = real(*args, **kwargs), ours(*args, **kwargs)
        assert (one_real == twin_real) == (one_ours == twin_ours)
        assert (one_real != twin_real) == (one_ours != twin_ours)
        assert (one_real == object()) == (one_ours == object())
        assert outcome(hash, one_real) == outcome(hash, one_ours)
        for op in ("__lt__", "__le__", "__gt__", "__ge__"):
            assert outcome(getattr(one_real, op), twin_real) == outcome(
                getattr(one_ours, op), twin_ours
            ), (shape, op)
        for name in ("a", "zz"):
            assert outcome(setattr, one_real, name, 5) == outcome(setattr, one_ours, name, 5)
            assert outcome(delattr, twin_real, name) == outcome(delattr, twin_ours, name)


@pytest.mark.usefixtures("init_path")
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_replace_and_fields_match_dataclasses(shape: str) -> None:
    real, ours = build(shape, "dataclasses"), build(shape, "record")
    real_names = [f.name for f in dataclasses.fields(real)]
    assert [f.name for f in _record_runtime.fields(ours)] == real_names
    made = [(real(*a, **k), ours(*a, **k)) for a, k in CALLS if outcome(real, *a, **k)[0] == "ok"]
    for one_real, one_ours in made:
        for changes in ({}, {"a": 4}, {"b": "q"}, {"_cache": {}}, {"missing": 1}):
            got_real = outcome(dataclasses.replace, one_real, **changes)
            got_ours = outcome(_record_runtime.replace, one_ours, **changes)
            assert got_real[0] == got_ours[0], (shape, changes)
            if got_real[0] == "ok":
                assert describe(got_real[1]) == describe(got_ours[1])
            else:
                assert got_real[1] == got_ours[1]


def test_the_hash_is_the_dataclass_hash() -> None:
    """Same hash values, so sets of records iterate in the same order as
    before and no output changes order."""
    real, ours = build("order", "dataclasses"), build("order", "record")
    values = [(d, b, s) for d in (0, 1) for b in (0, 3, 250) for s in (0, 31)]
    assert [hash(real(*v)) for v in values] == [hash(ours(*v)) for v in values]
    one_real, one_ours = build("not compared", "dataclasses"), build("not compared", "record")
    assert hash(one_real(3, "x")) == hash(one_ours(3, "y"))
    real_order = [x.a for x in {one_real(i * 37 % 101, "r") for i in range(50)}]
    assert [x.a for x in {one_ours(i * 37 % 101, "o") for i in range(50)}] == real_order


def test_order_sorts_like_a_dataclass() -> None:
    real, ours = build("order", "dataclasses"), build("order", "record")
    values = [(1, 2, 0), (0, 9, 1), (1, 1, 5), (0, 9, 0)]
    assert [repr(x) for x in sorted(real(*v) for v in values)] == [
        repr(x) for x in sorted(ours(*v) for v in values)
    ]
    with pytest.raises(TypeError):
        _ = ours(1, 2) < real(1, 2)  # another class: not comparable, as in dataclasses


@pytest.mark.parametrize(
    "body",
    [
        "a: int = 1\n    b: int",  # a field without default after one with
        "items: list[int] = []",  # a mutable default
        "x = field(default=1)",  # a field() without annotation
        "a: int = field(default=1, default_factory=int)",
    ],
)
def test_definition_errors_match_dataclasses(body: str) -> None:
    source = f"@dataclass\nclass C:\n    {body}\n"
    errors = []
    for module in (dataclasses, _record_runtime):
        namespace = _module(f"record_errors_{len(sys.modules)}")
        namespace.update({"dataclass": module.dataclass, "field": module.field})
        errors.append(outcome(exec, source, namespace))
    assert errors[0][0] == "error"
    assert errors[0] == errors[1]


def test_frozen_and_mutable_bases_do_not_mix() -> None:
    namespace: dict[str, Any] = {"dataclass": _record_runtime.dataclass}
    with pytest.raises(TypeError, match="cannot inherit frozen dataclass from a non-frozen"):
        exec(
            "@dataclass\nclass A:\n    a: int\n@dataclass(frozen=True)\nclass B(A):\n    b: int\n",
            namespace,
        )


def test_unsupported_forms_are_refused_not_misread() -> None:
    namespace: dict[str, Any] = {"dataclass": _record_runtime.dataclass}
    with pytest.raises(TypeError, match="InitVar is not supported"):
        exec(
            "from __future__ import annotations\n@dataclass\nclass A:\n    a: InitVar[int]\n",
            namespace,
        )


def test_init_is_compiled_only_for_classes_built_many_times() -> None:
    """A class built a few times never pays the compiler; past COMPILE_AFTER
    instances the class holds the compiled straight-line __init__, and what it
    builds is the same (a copy or pickle survives too)."""
    ours = build("factories", "record")
    generic = ours.__init__
    made = [ours(index) for index in range(_record_runtime.COMPILE_AFTER)]
    assert ours.__init__ is generic
    assert generic.__code__.co_varnames[:3] == ("self", "args", "kwargs")
    made.append(ours(-1, items=[1]))
    assert ours.__init__ is not generic
    assert ours.__init__.__code__.co_varnames[:5] == ("self", "a", "items", "table", "flag")
    assert [m.a for m in made[:3]] == [0, 1, 2] and made[-1].items == [1]
    assert made[0].items == [] and made[0].items is not made[1].items
    assert pickle.loads(pickle.dumps(made[0])) == made[0]


def test_record_is_dataclasses_for_type_checkers_only() -> None:
    """At run time the names are this project's, and nothing of the product
    imports dataclasses (that import is what record saves)."""
    assert record.dataclass is _record_runtime.dataclass
    assert record.replace is _record_runtime.replace
    assert issubclass(record.FrozenInstanceError, AttributeError)
    assert record.is_record(build("plain", "record"))
    assert record.is_record(build("plain", "dataclasses"))
    assert not record.is_record(object())
