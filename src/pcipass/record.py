"""Data classes at a fraction of the start-up cost of :mod:`dataclasses`.

Every command pays for its data classes before it does any work (issue #13):
``import dataclasses`` loads :mod:`inspect` (with ast, dis, tokenize and
linecache, ~4 ms), and each ``@dataclass`` compiles four to six methods with
``exec`` (~0.3 ms a class); ``check`` defines ~120 of them and instantiates a
handful.  This module gives the same classes for the subset pcipass uses and
pays only for what a command touches:

* ``__init__`` is generic (no compiling) until a class has been built many
  times, then compiled to the same straight-line code a dataclass has: a
  class built a few times never pays the compiler (the first ``compile()``
  of a process alone costs ~0.8 ms);
* ``__eq__``, ``__hash__``, ordering, ``__repr__`` and the frozen guards are
  shared functions over a per-class ``operator.attrgetter``: no compiling.

For type checkers the names *are* :mod:`dataclasses`' (imported under
``TYPE_CHECKING``), so mypy checks constructors, fields and ``replace`` as it
does for any data class.  At run time the semantics match for what pcipass
uses, and ``tests/test_record.py`` compares each behaviour with the real
module on the same class shapes: ``frozen``, ``order``, ``eq``; ``field()``
with ``default``, ``default_factory``, ``init``, ``repr`` and ``compare``;
inheritance of fields; ``ClassVar`` annotations skipped; ``__post_init__``;
mutable defaults refused; ``replace`` and ``fields``.  Not supported (no use
in pcipass, refused loudly where detectable): ``InitVar``, ``KW_ONLY``,
``slots``, ``unsafe_hash``, ``match_args``/``kw_only`` parameters.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from dataclasses import FrozenInstanceError, dataclass, field, fields, replace
else:
    from pcipass._record_runtime import (
        FrozenInstanceError,
        dataclass,
        field,
        fields,
        replace,
    )

__all__ = ["FrozenInstanceError", "dataclass", "field", "fields", "is_record", "replace"]


def is_record(thing: object) -> bool:
    """Whether ``thing`` is a class made by :func:`dataclass` here, or one's instance."""
    kind = thing if isinstance(thing, type) else type(thing)
    return hasattr(kind, "__record_fields__") or hasattr(kind, "__dataclass_fields__")
