"""The run-time half of :mod:`pcipass.record` (type checkers see :mod:`dataclasses`).

Import :mod:`pcipass.record`, never this module: its names are typed as
:mod:`dataclasses`' there.  Why it exists and what it supports: see there.
"""

from __future__ import annotations

import operator
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: No default given (dataclasses.MISSING's role).
MISSING: Any = _Sentinel("MISSING")
#: The value an ``__init__`` parameter with a default factory defaults to.
_USE_FACTORY: Any = _Sentinel("<factory>")


class FrozenInstanceError(AttributeError):
    """Assigning to a field of a frozen record (dataclasses raises its own, alike)."""


class Field:
    """One field: its name, default or factory, and whether ``__init__``,
    ``__repr__`` and comparisons include it."""

    __slots__ = ("compare", "default", "default_factory", "init", "name", "repr")

    def __init__(
        self,
        default: Any,
        default_factory: Any,
        init: bool,
        repr: bool,
        compare: bool,
    ) -> None:
        self.name = ""
        self.default = default
        self.default_factory = default_factory
        self.init = init
        self.repr = repr
        self.compare = compare

    def __repr__(self) -> str:
        return (
            f"Field(name={self.name!r}, default={self.default!r}, "
            f"default_factory={self.default_factory!r}, init={self.init}, "
            f"repr={self.repr}, compare={self.compare})"
        )


def field(
    *,
    default: Any = MISSING,
    default_factory: Any = MISSING,
    init: bool = True,
    repr: bool = True,
    compare: bool = True,
) -> Any:
    if default is not MISSING and default_factory is not MISSING:
        raise ValueError("cannot specify both default and default_factory")
    return Field(default, default_factory, init, repr, compare)


def fields(class_or_instance: Any) -> tuple[Field, ...]:
    kind = class_or_instance if isinstance(class_or_instance, type) else type(class_or_instance)
    found: dict[str, Field] | None = getattr(kind, "__record_fields__", None)
    if found is None:
        raise TypeError("must be called with a dataclass type or instance")
    return tuple(found.values())


def replace(obj: Any, /, **changes: Any) -> Any:
    """A copy of ``obj`` with ``changes``, built through its ``__init__`` (so
    ``__post_init__`` checks run again), as :func:`dataclasses.replace`."""
    for item in fields(obj):
        if not item.init:
            if item.name in changes:
                # dataclasses raises ValueError here before Python 3.13, TypeError since.
                error = TypeError if sys.version_info >= (3, 13) else ValueError
                raise error(
                    f"field {item.name} is declared with init=False, "
                    "it cannot be specified with replace()"
                )
            continue
        if item.name not in changes:
            changes[item.name] = getattr(obj, item.name)
    return obj.__class__(**changes)


def dataclass(
    cls: Any = None,
    /,
    *,
    init: bool = True,
    repr: bool = True,
    eq: bool = True,
    order: bool = False,
    frozen: bool = False,
) -> Any:
    def wrap(kind: type) -> type:
        return _process(kind, init=init, repr_=repr, eq=eq, order=order, frozen=frozen)

    return wrap if cls is None else wrap(cls)


# ---------------------------------------------------------------------------


def _process(cls: type, *, init: bool, repr_: bool, eq: bool, order: bool, frozen: bool) -> type:
    own = vars(cls)
    all_fields: dict[str, Field] = {}
    # Fields of data-class bases first, in definition order (a redefined field
    # keeps its first place, as in dataclasses).
    for base in cls.__mro__[-1:0:-1]:
        base_fields: dict[str, Field] | None = vars(base).get("__record_fields__")
        if base_fields is None:
            continue
        base_frozen = vars(base)["__record_frozen__"]
        if base_frozen != frozen:
            which = "frozen" if frozen else "non-frozen"
            other = "non-frozen" if frozen else "frozen"
            raise TypeError(f"cannot inherit {which} dataclass from a {other} one")
        all_fields.update(base_fields)

    annotations: dict[str, Any] = own.get("__annotations__", {})
    for name, value in own.items():
        if isinstance(value, Field) and name not in annotations:
            raise TypeError(f"{name!r} is a field but has no type annotation")
    for name, annotation in annotations.items():
        kind = _annotation_kind(annotation)
        if kind == "classvar":
            continue
        if kind != "field":
            raise TypeError(f"{cls.__qualname__}.{name}: {kind} is not supported by pcipass.record")
        # getattr, not the class body only: a default a base class set is
        # inherited, as in dataclasses.
        value = getattr(cls, name, MISSING)
        item = value if isinstance(value, Field) else Field(value, MISSING, True, True, True)
        item.name = name
        if item.default is not MISSING and item.default.__class__.__hash__ is None:
            raise ValueError(
                f"mutable default {type(item.default)} for field {name} "
                "is not allowed: use default_factory"
            )
        if isinstance(value, Field):
            # The class attribute is the plain default, or absent (as dataclasses does).
            if item.default is MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, item.default)
        all_fields[name] = item

    _refuse_default_gaps(all_fields)
    type.__setattr__(cls, "__record_fields__", all_fields)
    type.__setattr__(cls, "__record_frozen__", frozen)

    if init:
        _set_new(cls, "__init__", _lazy_init(cls, all_fields, frozen))
    if repr_:
        _set_new(cls, "__repr__", _repr_function(all_fields))
    compared = tuple(f.name for f in all_fields.values() if f.compare)
    key = _key_function(compared)
    if eq:
        _set_new(cls, "__eq__", _eq_function(key))
    if order:
        for name, compare in _ORDER.items():
            if name in own:
                raise TypeError(f"cannot overwrite attribute {name} in class {cls.__name__}")
            setattr(cls, name, _order_function(key, compare, name))
    if frozen:
        for name, method in _frozen_functions(cls, all_fields).items():
            if name in own:
                raise TypeError(f"cannot overwrite attribute {name} in class {cls.__name__}")
            setattr(cls, name, method)
    _set_hash(cls, own, eq=eq, frozen=frozen, key=key)
    return cls


def _annotation_kind(annotation: Any) -> str:
    """ "classvar", "field", or the name of an unsupported special form.

    With ``from __future__ import annotations`` annotations are strings;
    without, typing objects: both are recognised by the text, as dataclasses
    does for strings."""
    text = annotation if isinstance(annotation, str) else repr(annotation)
    head = text.strip().split("[", 1)[0].strip()
    bare = head.rsplit(".", 1)[-1]
    if bare == "ClassVar":
        return "classvar"
    if bare in ("InitVar", "KW_ONLY"):
        return bare
    return "field"


def _refuse_default_gaps(all_fields: dict[str, Field]) -> None:
    seen_default = False
    for item in all_fields.values():
        if not item.init:
            continue
        if item.default is MISSING and item.default_factory is MISSING:
            if seen_default:
                raise TypeError(f"non-default argument {item.name!r} follows default argument")
        else:
            seen_default = True


def _set_new(cls: type, name: str, value: object) -> None:
    """Add a method unless the class body defines it (dataclasses keeps those too)."""
    if name not in vars(cls):
        setattr(cls, name, value)


#: Instances a class builds through the generic ``__init__`` before its own is
#: compiled.  Compiling costs ~25 us a class, and the first ``compile()`` of a
#: process ~0.8 ms; the generic one costs ~2 us more an instance.  Classes built
#: a few times (most, in most commands) never pay the compiler; the hot ones of
#: a large host (thousands of devices) get the straight-line code.
COMPILE_AFTER = 256


def _lazy_init(cls: type, all_fields: dict[str, Field], frozen: bool) -> Callable[..., None]:
    """A generic ``__init__`` (no compiling) that compiles the class's own,
    the same code dataclasses writes, once the class has been built
    :data:`COMPILE_AFTER` times, and hands over to it."""
    has_post_init = hasattr(cls, "__post_init__")
    plan = tuple(
        (item.name, item.init, item.default, item.default_factory) for item in all_fields.values()
    )
    positional = tuple(item.name for item in all_fields.values() if item.init)
    accepted = frozenset(positional)
    set_field: Callable[[Any, str, Any], None] = object.__setattr__ if frozen else setattr
    label = f"{cls.__qualname__}.__init__()"
    built = [0]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        built[0] += 1
        if built[0] > COMPILE_AFTER:
            real = _compile_init(cls, all_fields, frozen=frozen, has_post_init=has_post_init)
            type.__setattr__(cls, "__init__", real)
            real(self, *args, **kwargs)
            return
        if len(args) > len(positional):
            raise TypeError(
                f"{label} takes {len(positional) + 1} positional arguments "
                f"but {len(args) + 1} were given"
            )
        given = dict(zip(positional, args))
        for key, value in kwargs.items():
            if key in given:
                raise TypeError(f"{label} got multiple values for argument {key!r}")
            if key not in accepted:
                raise TypeError(f"{label} got an unexpected keyword argument {key!r}")
            given[key] = value
        for name, init, default, factory in plan:
            if init and name in given:
                value = given[name]
            elif default is not MISSING:
                value = default
            elif factory is not MISSING:
                value = factory()
            elif init:
                raise TypeError(f"{label} missing required argument: {name!r}")
            else:
                continue  # init=False without a default: left unset, as in dataclasses
            set_field(self, name, value)
        if has_post_init:
            self.__post_init__()

    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    return __init__


def _compile_init(
    cls: type, all_fields: dict[str, Field], *, frozen: bool, has_post_init: bool
) -> Callable[..., None]:
    """The same straight-line ``__init__`` dataclasses writes: one parameter
    per init field, defaults bound by name, factories called when no value."""
    namespace: dict[str, Any] = {
        "__record_set": object.__setattr__,
        "__record_factory": _USE_FACTORY,
    }
    parameters = ["self"]
    body = []
    for index, item in enumerate(all_fields.values()):
        default_name = f"__record_default_{index}"
        factory_name = f"__record_factory_{index}"
        if item.init:
            if item.default_factory is not MISSING:
                namespace[factory_name] = item.default_factory
                parameters.append(f"{item.name}=__record_factory")
                value = f"{factory_name}() if {item.name} is __record_factory else {item.name}"
            elif item.default is not MISSING:
                namespace[default_name] = item.default
                parameters.append(f"{item.name}={default_name}")
                value = item.name
            else:
                parameters.append(item.name)
                value = item.name
        elif item.default_factory is not MISSING:
            namespace[factory_name] = item.default_factory
            value = f"{factory_name}()"
        elif item.default is not MISSING:
            namespace[default_name] = item.default
            value = default_name
        else:
            continue  # init=False without a default: left unset, as in dataclasses
        if frozen:
            body.append(f"    __record_set(self, {item.name!r}, {value})")
        else:
            body.append(f"    self.{item.name} = {value}")
    if has_post_init:
        body.append("    self.__post_init__()")
    if not body:
        body.append("    pass")
    source = f"def __init__({', '.join(parameters)}):\n" + "\n".join(body) + "\n"
    exec(compile(source, f"<record {cls.__qualname__}>", "exec"), namespace)  # noqa: S102 - our own text
    function: Callable[..., None] = namespace["__init__"]
    function.__qualname__ = f"{cls.__qualname__}.__init__"
    function.__module__ = cls.__module__
    return function


def _repr_function(all_fields: dict[str, Field]) -> Callable[[Any], str]:
    shown = tuple(f.name for f in all_fields.values() if f.repr)

    def __repr__(self: Any) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in shown)
        return f"{self.__class__.__qualname__}({inner})"

    return __repr__


def _key_function(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """The tuple of compared fields, as dataclasses builds it (so hashes are
    the same as a dataclass's: set order, hence output, does not change)."""
    if not names:
        return lambda obj: ()
    if len(names) == 1:
        only = operator.attrgetter(names[0])
        return lambda obj: (only(obj),)
    getter: Callable[[Any], tuple[Any, ...]] = operator.attrgetter(*names)
    return getter


def _eq_function(key: Callable[[Any], tuple[Any, ...]]) -> Callable[[Any, Any], Any]:
    def __eq__(self: Any, other: Any) -> Any:
        if other.__class__ is self.__class__:
            return key(self) == key(other)
        return NotImplemented

    return __eq__


_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "__lt__": operator.lt,
    "__le__": operator.le,
    "__gt__": operator.gt,
    "__ge__": operator.ge,
}


def _order_function(
    key: Callable[[Any], tuple[Any, ...]], compare: Callable[[Any, Any], bool], name: str
) -> Callable[[Any, Any], Any]:
    def method(self: Any, other: Any) -> Any:
        if other.__class__ is self.__class__:
            return compare(key(self), key(other))
        return NotImplemented

    method.__name__ = name
    return method


def _frozen_functions(cls: type, all_fields: dict[str, Field]) -> dict[str, Callable[..., None]]:
    names = frozenset(all_fields)
    owner: Any = cls  # super() of the decorated class, for subclasses' own attributes

    def __setattr__(self: Any, name: str, value: Any) -> None:
        if type(self) is cls or name in names:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        super(owner, self).__setattr__(name, value)

    def __delattr__(self: Any, name: str) -> None:
        if type(self) is cls or name in names:
            raise FrozenInstanceError(f"cannot delete field {name!r}")
        super(owner, self).__delattr__(name)

    return {"__setattr__": __setattr__, "__delattr__": __delattr__}


def _set_hash(
    cls: type,
    own: Any,
    *,
    eq: bool,
    frozen: bool,
    key: Callable[[Any], tuple[Any, ...]],
) -> None:
    """dataclasses' table for ``unsafe_hash=False``: a hash the class body
    defines stays; otherwise frozen+eq hashes the compared fields, eq alone
    makes instances unhashable (mutable), no eq leaves the inherited one."""
    class_hash = own.get("__hash__", MISSING)
    explicit = not (class_hash is MISSING or (class_hash is None and "__eq__" in own))
    if not eq or explicit:
        return
    if frozen:

        def __hash__(self: Any) -> int:
            return hash(key(self))

        type.__setattr__(cls, "__hash__", __hash__)
    else:
        type.__setattr__(cls, "__hash__", None)
