"""The layers point down and the import graph has no cycle (issue #12).

Walks every module of ``src/pcipass`` with ``ast`` (no import is executed)
and checks the rules of docs/architecture.md:

* every import points down the layers of :data:`RANK` (or stays in its layer);
  product code never imports the test kit ``pcipass.testing``;
* ``pcipass.policy`` imports nothing from ``ops``, ``state`` or ``persist``;
* ``pcipass.persist`` imports nothing from ``policy`` (the rules about
  persistent hiding are policy's);
* ``pcipass.cli`` imports nothing from ``policy``, ``guests``, ``persist`` or
  ``state``: it asks ``ops``;
* ``pcipass.host`` imports only base modules, other host modules and the
  simulated kernel below it (``pcipass.simkernel``), which imports only base
  modules;
* there is no import cycle, counting imports inside functions (a deferred
  import hides a cycle, it does not remove it).  Imports under
  ``if TYPE_CHECKING:`` are exempt: they never run;
* no module is over 800 lines, except the allowlisted ones below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "pcipass"

#: The modules everything may use; they import nothing above themselves.
BASE = frozenset(
    {
        "pcipass",
        "pcipass.address",
        "pcipass.backend",
        "pcipass.compat",
        "pcipass.errors",
        "pcipass.interrupt",
        "pcipass.patterns",
        "pcipass.record",
        "pcipass._record_runtime",
        "pcipass.runner",
    }
)

#: The layers from the bottom up (docs/architecture.md).  An import may go to
#: the same rank or lower, never higher.  The four middle packages are peers
#: (their own rule, for policy, is tested below).  The test kit sits on top:
#: it may drive the CLI, and nothing of the product may import it.
RANK = {
    "base": 0,
    "simkernel": 1,
    "host": 2,
    "policy": 3,
    "guests": 3,
    "persist": 3,
    "state": 3,
    "ops": 4,
    "cli": 5,
    "__main__": 6,
    "testing": 7,
}

MAX_LINES = 800
#: Modules allowed over MAX_LINES, each with its reason.
LONG_MODULES = {
    # Temporary: belong to other work packages of #12, which split them.
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:``."""
    found: list[ast.AST] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        found.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return found


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> set[str]:
    """The pcipass modules ``module`` imports at run time (inside functions too)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path, node)
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.add(submodule if submodule in MODULES else target)
    return {name for name in found if name in MODULES and name != module}


GRAPH = {module: imports_of(module) for module in MODULES}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or module not in BASE else "base"


def test_policy_imports_nothing_from_ops_state_or_persist() -> None:
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if _layer(module) == "policy"
        for target in targets
        if _layer(target) in ("ops", "state", "persist", "cli")
    )
    assert wrong == []


def test_persist_reads_and_edits_and_leaves_the_rules_to_policy() -> None:
    # PP009/PP010 are findings of policy/persist_rules.py over the parsed
    # types of host/persisted.py: persist/ produces no finding itself.
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if _layer(module) == "persist"
        for target in targets
        if _layer(target) == "policy"
    )
    assert wrong == []


def test_the_cli_asks_ops_and_decides_nothing() -> None:
    # Rules (policy), guest configurations, boot files and the ledger are
    # reached through ops/; the CLI builds the Host and renders results.
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if _layer(module) == "cli"
        for target in targets
        if _layer(target) in ("policy", "guests", "persist", "state")
    )
    assert wrong == []


def test_every_module_has_a_layer() -> None:
    # A new package must be placed in RANK before it can be checked.
    assert sorted({_layer(m) for m in MODULES} - set(RANK)) == []


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if RANK[_layer(target)] > RANK[_layer(module)]
    )


def test_no_import_points_up() -> None:
    assert _upward(GRAPH) == []


def test_the_upward_finder_finds_an_upward_import() -> None:
    # The check above must be able to fail: host reaching for the test kit,
    # the edge the simulated kernel used to be.
    graph = {
        "pcipass.host.context": {"pcipass.testing.fakehost"},
        "pcipass.testing.fakehost": set(),
    }
    assert _upward(graph) == ["pcipass.host.context -> pcipass.testing.fakehost"]


def test_host_imports_only_base_modules_host_and_the_simulated_kernel() -> None:
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if _layer(module) == "host"
        for target in targets
        if target not in BASE and _layer(target) not in ("host", "simkernel")
    )
    assert wrong == []


def test_the_simulated_kernel_imports_only_base_modules() -> None:
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if _layer(module) == "simkernel"
        for target in targets
        if target not in BASE and _layer(target) != "simkernel"
    )
    assert wrong == []


def test_no_product_module_imports_the_test_kit() -> None:
    # The CLI, ops, host and the rest never reach for fakes: an example
    # tree runs on pcipass.simkernel, which the Host announces.
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if _layer(module) != "testing"
        for target in targets
        if _layer(target) == "testing"
    )
    assert wrong == []


def test_base_modules_import_only_base_modules() -> None:
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if module in BASE and module != "pcipass"
        for target in targets
        if target not in BASE
    )
    assert wrong == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle() -> None:
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    # The check above must be able to fail: a two-module loop is reported.
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_over_800_lines(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    if module in LONG_MODULES:
        return
    assert lines <= MAX_LINES, f"{module}: {lines} lines; split it along its seams"


def test_the_long_module_allowlist_has_no_stale_entry() -> None:
    stale = [
        m
        for m in LONG_MODULES
        if m not in MODULES or len(MODULES[m].read_text().splitlines()) <= MAX_LINES
    ]
    assert stale == []


def _ledger_closes(tree: ast.AST) -> list[int]:
    """Lines that call ``<something ledger>.close()`` by hand."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "close"
        and isinstance(node.func.value, ast.Name)
        and "ledger" in node.func.value.id
    ]


def test_the_ledger_is_closed_by_with_blocks() -> None:
    # A ``with Ledger.open(...)`` block closes the ledger on every path, the
    # interrupt of a signal included; a hand-written try/finally drifts.
    wrong = sorted(
        f"{module}:{line}"
        for module, path in MODULES.items()
        if _layer(module) not in ("state", "testing")
        for line in _ledger_closes(ast.parse(path.read_text(), str(path)))
    )
    assert wrong == []


def test_the_ledger_close_finder_finds_a_close() -> None:
    tree = ast.parse("ledger = open()\ntry:\n    pass\nfinally:\n    ledger.close()\n")
    assert _ledger_closes(tree) == [5]
