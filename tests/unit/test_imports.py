"""The package's run-time import graph: no module imports itself, however indirectly.

The graph is read from the source (the AST of every module), not from a run:
every ``import`` and ``from ... import`` at module level and inside functions
counts, since a function-level import still needs the other module loaded
when it runs; imports under ``if TYPE_CHECKING:`` do not (mypy reads them,
Python never runs them).  Relative imports are resolved against the
importing module's package.
"""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import composable_server

PACKAGE = "composable_server"
ROOT = Path(composable_server.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _run_time_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node below *node*, except the bodies of ``if TYPE_CHECKING:`` (their ``else`` runs)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield other
                yield from _run_time_nodes(other)
            continue
        yield child
        yield from _run_time_nodes(child)


def _imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that *module* imports at run time."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in _run_time_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # from . import x / from .a import b: relative to the package
                # of the module (a package's own __init__ is that package).
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join([*base, *([node.module] if node.module else [])])
            else:
                prefix = node.module or ""
            # `from pkg import sub` needs the module pkg.sub; `from pkg import
            # name` needs pkg's own namespace (its __init__), run to the end.
            names = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in known else prefix for alias in node.names]
        else:
            continue
        # The parent packages Python loads first (`import a.b` runs a/__init__
        # before a/b) are not edges: a submodule may be imported while its
        # package is still initialising, which is how every package works.
        targets.update(names)
    return (targets & known) - {module}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports at run time."""
    modules = _modules()
    known = set(modules)
    return {name: _imported(name, path, known) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of *graph* as ``[a, b, ..., a]``, or None."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        cycle: list[str] = list(reversed(exc.args[1]))
        return cycle
    return None


class TestImportGraph:
    @pytest.mark.timeout(10)
    def test_the_walk_sees_the_package(self) -> None:
        """The graph has the component modules and known edges (a guard against a walk that finds nothing)."""
        graph = import_graph()
        assert {f"{PACKAGE}.server", f"{PACKAGE}.compat", f"{PACKAGE}.factories"} <= set(graph)
        assert f"{PACKAGE}.interfaces" in graph[f"{PACKAGE}.server"]
        assert f"{PACKAGE}.server" in graph[f"{PACKAGE}.compat"]

    @pytest.mark.timeout(10)
    def test_no_import_cycle(self) -> None:
        """No module of the package imports itself through other modules at run time."""
        cycle = _cycle(import_graph())
        assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


class TestTheWalk:
    @pytest.mark.timeout(10)
    def test_finds_a_function_level_cycle(self) -> None:
        """A cycle closed by an import inside a function is found, and named in order."""
        graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}
        cycle = _cycle(graph)
        assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {"p.a", "p.b", "p.c"}

    @pytest.mark.timeout(10)
    def test_reads_function_level_and_relative_imports(self, tmp_path: Path) -> None:
        """Function-level, relative and package-namespace imports count; ``if TYPE_CHECKING:`` imports do not."""
        source = (
            "from typing import TYPE_CHECKING\n"
            "from . import server\n"
            "from .handlers import X\n"
            "from composable_server import Server\n"
            "if TYPE_CHECKING:\n"
            "    from .compat import TCPServer\n"
            "else:\n"
            "    import composable_server.policies\n"
            "def f():\n"
            "    from .testing import MemoryTransport\n"
        )
        path = tmp_path / "mod.py"
        path.write_text(source)
        known = {f"{PACKAGE}.{name}" for name in ("server", "handlers", "compat", "policies", "testing")} | {PACKAGE}
        assert _imported(f"{PACKAGE}.mod", path, known) == {
            f"{PACKAGE}.server",
            f"{PACKAGE}.handlers",
            f"{PACKAGE}.policies",
            f"{PACKAGE}.testing",
            PACKAGE,  # a name from the package's own namespace needs its __init__
        }
