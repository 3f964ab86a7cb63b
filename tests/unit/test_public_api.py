"""The public API: every public module has a tuple __all__ listing every public
name it defines, and the package does not import its testing kit."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import sys
from types import ModuleType
from typing import TypeVar

import pytest

import composable_server

from .._process import run_process

PUBLIC_MODULES = sorted(
    f"composable_server.{info.name}"
    for info in pkgutil.iter_modules(composable_server.__path__)
    if not info.name.startswith("_")
)


# Deliberate exceptions, with the reason.
NOT_IN_ALL: dict[str, set[str]] = {
    # compat.__all__ mirrors stdlib socketserver.__all__ of the running
    # Python, which lists the ForkingUnix* classes only from 3.12 on.
    "composable_server.compat": (
        {"ForkingUnixDatagramServer", "ForkingUnixStreamServer"} if sys.version_info < (3, 12) else set()
    ),
}


def _defined_names(module: ModuleType) -> set[str]:
    """Public names a module defines itself: top-level classes, functions and
    assignments in its source, plus objects created there at run time (e.g.
    classes built from a table).  TypeVars are typing plumbing, not API."""
    tree = ast.parse(inspect.getsource(module))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    for name, value in vars(module).items():
        if not isinstance(value, ModuleType) and getattr(value, "__module__", None) == module.__name__:
            names.add(name)
    return {
        name
        for name in names
        if not name.startswith("_") and not isinstance(getattr(module, name, None), TypeVar)
    }


def test_there_are_public_modules() -> None:
    """The walk finds the component modules (guards against an empty parametrization)."""
    assert {"composable_server.interfaces", "composable_server.server", "composable_server.testing"} <= set(
        PUBLIC_MODULES
    )


class TestAll:
    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("name", ["composable_server", *PUBLIC_MODULES])
    def test_all_is_a_tuple_of_existing_names(self, name: str) -> None:
        """__all__ is a tuple without duplicates, and every name in it exists."""
        module = importlib.import_module(name)
        exported = module.__dict__.get("__all__")
        assert isinstance(exported, tuple), f"{name}.__all__ is {type(exported).__name__}, expected tuple"
        assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"
        missing = [item for item in exported if not hasattr(module, item)]
        assert not missing, f"{name}.__all__ names what the module lacks: {missing}"

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("name", PUBLIC_MODULES)
    def test_every_public_name_is_exported(self, name: str) -> None:
        """Every public name a module defines is listed in its __all__."""
        module = importlib.import_module(name)
        exported = set(module.__dict__.get("__all__", ()))
        missing = sorted(_defined_names(module) - exported - NOT_IN_ALL.get(name, set()))
        assert not missing, f"public names of {name} missing from __all__: {missing}"

    @pytest.mark.timeout(10)
    def test_package_exports_every_public_attribute(self) -> None:
        """Every public non-module attribute of the package is in its __all__."""
        public = {
            name
            for name, value in vars(composable_server).items()
            if not name.startswith("_") and not isinstance(value, ModuleType)
        }
        missing = sorted(public - set(composable_server.__all__))
        assert not missing, f"composable_server attributes missing from __all__: {missing}"


class TestLazyNames:
    @pytest.mark.timeout(30)
    def test_package_import_does_not_load_prefork(self) -> None:
        """`import composable_server` leaves prefork unloaded until its name is used, and then gives the class."""
        code = (
            "import sys, composable_server as c; before = 'composable_server.prefork' in sys.modules; "
            "from composable_server.prefork import Prefork; print(before, c.Prefork is Prefork, 'Prefork' in dir(c))"
        )
        result = run_process([sys.executable, "-c", code], timeout=25)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["False", "True", "True"]

    @pytest.mark.timeout(10)
    def test_unknown_name_is_an_attribute_error(self) -> None:
        """A name the package does not have raises AttributeError naming it."""
        with pytest.raises(AttributeError, match="no_such_name"):
            getattr(composable_server, "no_such_name")


class TestTestingKit:
    @pytest.mark.timeout(30)
    def test_package_does_not_import_testing(self) -> None:
        """Importing composable_server (in a fresh interpreter) does not import composable_server.testing."""
        code = "import sys, composable_server; print('composable_server.testing' in sys.modules)"
        result = run_process([sys.executable, "-c", code], timeout=25)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "False"

    @pytest.mark.timeout(10)
    def test_package_does_not_expose_testing_names(self) -> None:
        """No name of the testing kit is re-exported by the package."""
        import composable_server.testing as testing

        assert not set(testing.__all__) & set(composable_server.__all__)
