"""xm files (RHEL 5's xend): Python that xend *executes*, read here as data.

pcipass never executes it: the file is parsed with :mod:`ast` (parsing runs
no code) and only top-level ``NAME = <literal>`` assignments are read,
through :func:`ast.literal_eval`.  Other Python (``import os``, ``if``
blocks, computed values, as in Xen's own ``xmexample.hvm``) is *tolerated*
when it cannot change a setting pcipass reads (``WATCHED_KEYS``): it is
reported as a note and left byte for byte.

Code that could set or change ``pci`` unseen (a computed ``pci``, any use
of the name ``pci`` in code, ``exec``/``eval``/``getattr``/``globals()``/
``vars()``/``setattr``, frames and ``_`` attributes, imports beyond a few
harmless modules) makes the file's devices *unknown* (reported with the
line): PP101 then fails closed.  Code that binds another watched name
(``if hvm: builder = 'hvm'``) is refused with the line.
"""

from __future__ import annotations

import ast
import codecs
import re
import warnings
from collections.abc import Callable, Iterable

from pcipass.address import XlPciSpec, parse_xl_spec
from pcipass.errors import AddressError, ConfigSyntaxError
from pcipass.guests.xen_text import (
    CODE,
    PY_NEWLINE,
    Item,
    Lines,
    Setting,
    plain_quote,
)

# Settings pcipass reads or edits: xm code that binds one is refused (pci: devices unknown).
WATCHED_KEYS = frozenset(
    {
        "pci",
        "name",
        "builder",
        "type",
        "kernel",
        "bootloader",
        "pvh",
        "passthrough",
        "pci_permissive",
        "pci_msitranslate",
        "pci_power_mgmt",
    }
)

# Names through which xm code could bind settings without an assignment
# pcipass can see.
# Nodes that bind a name through `.name`; the match-statement ones exist from Python 3.10 only.
_NAME_BINDERS: tuple[type[ast.AST], ...] = tuple(
    node_type
    for node_type in (
        ast.ExceptHandler,
        getattr(ast, "MatchAs", None),
        getattr(ast, "MatchStar", None),
    )
    if node_type is not None
)
_MATCH_MAPPING: type[ast.AST] | None = getattr(ast, "MatchMapping", None)

_DYNAMIC_NAMES = frozenset(
    {
        "exec",
        "eval",
        "execfile",
        "compile",
        "globals",
        "locals",
        "vars",
        "setattr",
        "delattr",
        "__import__",
        "__builtins__",
        "__dict__",
        "__setattr__",
        "modules",
        "getattr",
        "__builtin__",
        "builtins",
        "reload",
        "input",  # Python 2's input() evaluates what it reads
    }
)
# Attributes that reach frames, namespaces or the interpreter's module table
# (sys._getframe().f_locals, a traceback's tb_frame, gc.get_referrers...): any
# name starting with "_" and these.
_DYNAMIC_ATTRIBUTES = frozenset(
    {
        "f_locals",
        "f_globals",
        "f_back",
        "f_builtins",
        "tb_frame",
        "tb_next",
        "gi_frame",
        "cr_frame",
        "ag_frame",
        "currentframe",
        "stack",
        "trace",
        "getouterframes",
        "exc_info",
        "get_referrers",
        "get_referents",
        "get_objects",
        "sys",
        "modules",
        "builtins",
    }
)
# Modules an xm file may import (xmexample.hvm uses os and re) without making
# its devices unknown; any other import may bring a way to reach the
# namespace xend reads pci from (inspect, sys, gc, ctypes, importlib...).
_HARMLESS_MODULES = frozenset({"os", "os.path", "re", "string", "time", "socket", "platform"})

# xend's check_pci_opts (Xen 3.4 tools/python/xen/util/pci.py) accepts only
# these per-device options, 0/1/yes/no.
_XM_PCI_OPTIONS = frozenset({"msitranslate", "power_mgmt"})


def parse_xm(
    data: bytes, display: str
) -> tuple[list[Setting], Lines, list[str], list[tuple[int, str]]]:
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    body = data[bom:]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        line = body[: error.start].count(b"\n") + 1
        raise ConfigSyntaxError(display, "not UTF-8 text", line) from error
    try:
        with warnings.catch_warnings():  # "invalid escape sequence" and the like
            warnings.simplefilter("ignore")
            module = ast.parse(text, filename=display)
    except SyntaxError as error:
        raise ConfigSyntaxError(
            display, f"not valid Python: {error.msg}", error.lineno or None
        ) from error
    except (ValueError, MemoryError, RecursionError) as error:
        raise ConfigSyntaxError(display, f"not valid Python: {error}") from error
    lines = Lines(data, PY_NEWLINE)
    body_lines = Lines(body, PY_NEWLINE)

    def offset(line: int, column: int) -> int:
        return body_lines.starts[line - 1] + column + bom

    notes: list[str] = []
    settings: list[Setting] = []
    unknown: list[tuple[int, str]] = []
    for statement in module.body:
        setting = _xm_setting(statement, data, display, offset)
        if setting is not None and setting.key == "pci" and setting.value is CODE:
            unknown.append((statement.lineno, "pci is computed by Python code"))
            continue
        if setting is not None:
            settings.append(setting)
            if setting.value is not CODE:
                continue
        if isinstance(statement, ast.Pass) or (
            isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
        ):
            continue
        unknown += _check_xm_code(statement, display)
        span = f"{statement.lineno}" + (
            f"-{statement.end_lineno}"
            if statement.end_lineno and statement.end_lineno != statement.lineno
            else ""
        )
        notes.append(f"line {span}: Python code pcipass did not run (xend would)")
    return settings, lines, notes, unknown


def _xm_setting(
    statement: ast.stmt,
    data: bytes,
    display: str,
    offset: Callable[[int, int], int],
) -> Setting | None:
    """A top-level ``NAME = value`` as a setting (value CODE when it is not a
    literal: never evaluated), or None for any other statement."""
    if not (
        isinstance(statement, ast.Assign)
        and len(statement.targets) == 1
        and isinstance(statement.targets[0], ast.Name)
    ):
        return None
    target = statement.targets[0]
    assert isinstance(target, ast.Name)
    node = statement.value
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        if target.id in WATCHED_KEYS and target.id != "pci":  # pci: devices unknown
            raise ConfigSyntaxError(
                display,
                f"{target.id} is computed by Python code; pcipass reads configuration "
                "files as data and needs a literal here",
                statement.lineno,
            ) from None
        value = CODE
    value_start = offset(node.lineno, node.col_offset)
    value_end = offset(node.end_lineno or node.lineno, node.end_col_offset or 0)
    items: tuple[Item, ...] | None = None
    if isinstance(node, ast.List) and value is not CODE:
        items = tuple(
            Item(
                start=(start := offset(elt.lineno, elt.col_offset)),
                end=(end := offset(elt.end_lineno or elt.lineno, elt.end_col_offset or 0)),
                line=elt.lineno,
                value=ast.literal_eval(elt),
                quote=plain_quote(data[start:end]),
            )
            for elt in node.elts
        )
        if target.id == "pci":
            _check_list_gaps(data, (value_start, value_end), items, display, statement.lineno)
    elif target.id == "pci" and value is not None and value is not CODE:
        raise ConfigSyntaxError(display, "pci must be a [list] of quoted strings", statement.lineno)
    scalar_quote = None
    if isinstance(node, ast.Constant) and isinstance(value, str):
        scalar_quote = plain_quote(data[value_start:value_end])
    return Setting(
        key=target.id,
        operator="=",
        line=statement.lineno,
        start=offset(target.lineno, target.col_offset),
        value_start=value_start,
        value_end=value_end,
        value=value,
        items=items,
        quote=scalar_quote,
    )


def _check_xm_code(statement: ast.stmt, display: str) -> list[tuple[int, str]]:
    """Why ``statement`` could set or change ``pci`` unseen, as (line,
    reason) pairs: pcipass then reports the file's devices unknown.  Code
    that binds another watched name is refused (ConfigSyntaxError)."""
    unknown: list[tuple[int, str]] = []
    for node in ast.walk(statement):
        line = getattr(node, "lineno", statement.lineno)
        reason = _unseen_change(node)
        if reason is not None:
            unknown.append((line, reason))
        for name in _bound_names(node, statement):
            if name == "pci":
                unknown.append((line, "Python code sets pci"))
            elif name in WATCHED_KEYS:
                raise ConfigSyntaxError(
                    display,
                    f"Python code sets {name}; pcipass reads configuration files as data and "
                    f"needs a plain {name} = <literal> line",
                    line,
                )
    return unknown


def _unseen_change(node: ast.AST) -> str | None:
    """How ``node`` could reach ``pci`` or the namespace xend reads it from."""
    if isinstance(node, ast.Name):
        if node.id in _DYNAMIC_NAMES:
            return f"Python code uses {node.id}, which can set names pcipass cannot see"
        if node.id == "pci" and isinstance(node.ctx, ast.Load):
            return "Python code uses pci (a call, an attribute or an index can change it)"
    elif isinstance(node, ast.Attribute):
        if node.attr in _DYNAMIC_NAMES or node.attr in _DYNAMIC_ATTRIBUTES:
            return f"Python code uses .{node.attr}, which can reach names pcipass cannot see"
        if node.attr.startswith("_"):
            return f"Python code uses .{node.attr}, which can reach the interpreter's internals"
    elif isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name not in _HARMLESS_MODULES:
                return f"Python code imports {alias.name}"
    elif isinstance(node, ast.ImportFrom):
        if any(alias.name == "*" for alias in node.names):
            return "'import *' can set any name"
        if (node.module or "") not in _HARMLESS_MODULES or node.level:
            return f"Python code imports from {'.' * node.level}{node.module or ''}"
    return None


def _bound_names(node: ast.AST, statement: ast.stmt) -> Iterable[str]:
    """The names ``node`` binds (assignment targets, definitions, imports...)."""
    if isinstance(node, ast.Name):
        return (node.id,) if isinstance(node.ctx, (ast.Store, ast.Del)) else ()
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return (node.name,)
    if isinstance(node, ast.alias) and node.name != "*":
        return ((node.asname or node.name).split(".")[0],)
    if isinstance(node, (ast.Global, ast.Nonlocal)):
        return tuple(node.names)
    if isinstance(node, _NAME_BINDERS) and getattr(node, "name", None):
        return (str(getattr(node, "name")),)  # noqa: B009 (a type the checker cannot narrow)
    if _MATCH_MAPPING is not None and isinstance(node, _MATCH_MAPPING):
        rest = getattr(node, "rest", None)  # "**rest" in a mapping pattern
        return (str(rest),) if rest else ()
    return ()


def _check_list_gaps(
    data: bytes, span: tuple[int, int], items: tuple[Item, ...], display: str, line: int
) -> None:
    """Between the elements of ``pci`` only commas, blanks and comments may
    stand (no parentheses, no implicit string concatenation), so that
    removing an element's bytes removes exactly that element."""
    start, end = span
    if data[start : start + 1] != b"[" or data[end - 1 : end] != b"]":
        raise ConfigSyntaxError(display, "pci must be a [list] of quoted strings", line)
    bounds = [start + 1, *(p for item in items for p in (item.start, item.end)), end - 1]
    for index in range(0, len(bounds), 2):
        gap = data[bounds[index] : bounds[index + 1]]
        if re.search(rb"#[^\r\n]*", gap):
            gap = re.sub(rb"#[^\r\n]*", b"", gap)
        gap = re.sub(rb"\\(?:\r\n|\r|\n)", b"", gap)
        commas = gap.count(b",")
        first, last = index == 0, index == len(bounds) - 2
        allowed = (
            (first and commas == 0)
            or (last and not first and commas <= 1)
            or (not first and not last and commas == 1)
        )
        if gap.strip(b" \t\r\n\f,") or not allowed:
            raise ConfigSyntaxError(
                display,
                "pcipass edits pci only as a plain [list] of quoted strings",
                line,
            )
    for item in items:
        if data[item.start : item.start + 1] not in (b"'", b'"'):
            raise ConfigSyntaxError(
                display, "pcipass edits pci only as a plain [list] of quoted strings", item.line
            )


def parse_xm_entry(text: str) -> XlPciSpec:
    """An xm ``pci`` entry: ``[DDDD:]BB:DD.F[@VSLOT][,msitranslate=1][,power_mgmt=0]``.

    The address part goes through :func:`parse_xl_spec` (the one address
    parser); xend's options are the two it knows, with 0/1/yes/no values.
    xend's multi-function lists (``09:00.0,2-4``) are not read.
    """
    head, _, rest = text.strip().partition(",")
    spec = parse_xl_spec(head)
    if spec.address is None or spec.options:
        raise AddressError(text, "an xm entry starts with the device address")
    options: list[tuple[str, str]] = []
    for piece in rest.split(",") if rest else []:
        key, equals, value = piece.strip().partition("=")
        key, value = key.strip(), value.strip()
        if not equals:
            raise AddressError(
                text, f"{piece!r} is not key=value (xend function lists unsupported)"
            )
        if key not in _XM_PCI_OPTIONS or value.lower() not in ("0", "1", "yes", "no"):
            raise AddressError(text, f"xm knows msitranslate and power_mgmt = 0|1, not {piece!r}")
        options.append((key, value))
    return XlPciSpec(spec.address, spec.vslot, tuple(options))
