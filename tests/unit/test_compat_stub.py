"""compat.pyi against typeshed's socketserver.pyi, member by member: wherever
typeshed types a member concretely, compat's type is at least as precise.

How the types are read: mypy itself (its build API, in process, with the
typeshed it ships) checks a generated module that reads every public member of
every typeshed ``socketserver`` class twice, on a ``socketserver`` object and
on the ``compat`` one, and exports the type it infers for each expression.
Those are the types a user's mypy sees (``Self`` bound, properties read,
inherited members resolved), not a re-implementation of mypy's lookup rules.

"At least as precise" is checked position by position: a callable's
parameters and return type are compared one by one (recursively, for
callables inside them), and at every other position compat's type must be a
subtype of typeshed's after each ``Any`` in compat's is replaced by a class
unrelated to everything (so ``Any`` on compat's side counts as imprecise
wherever typeshed is concrete, and anything is fine where typeshed says
``Any``).  socketserver classes in typeshed's types stand for their compat
namesakes.  A narrower compat type passes: it is more precise (a bytes host,
which compat rejects at run time, is a type error too); whether stdlib-style
code still type-checks is what ``tests/typing/compat_usage.py`` checks.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
from mypy import build
from mypy.modulefinder import BuildSource
from mypy.nodes import ExpressionStmt, FuncDef, MypyFile, TypeInfo, Var
from mypy.options import Options
from mypy.subtypes import is_subtype
from mypy.type_visitor import TypeTranslator
from mypy.types import AnyType, CallableType, Instance, Type, TypeAliasType, get_proper_type

ROOT: Final = Path(__file__).resolve().parents[2]

# Deliberate differences: where compat is less precise than typeshed on
# purpose, keyed by the typeshed class that defines the member, with the
# reason.  A key that no longer differs fails the test, so the list cannot rot.
_ANY_HANDLER: Final = (
    "any (request, client_address, server) callable is a handler: stdlib's own handler classes "
    "(typed with socketserver.BaseServer, which a compat server is not) and the core handlers "
    "run on compat servers, so the server argument is Any and the result is not used"
)
_PATHLIKE: Final = "compat also takes an os.PathLike path (stdlib does not), kept as given until bound, as stdlib does"
DELIBERATE: Final[dict[str, str]] = {
    "BaseServer.RequestHandlerClass": _ANY_HANDLER,
    "BaseServer.__init__(RequestHandlerClass)": _ANY_HANDLER,
    "TCPServer.__init__(RequestHandlerClass)": _ANY_HANDLER,
    "UnixStreamServer.__init__(RequestHandlerClass)": _ANY_HANDLER,
    "UnixDatagramServer.__init__(RequestHandlerClass)": _ANY_HANDLER,
    "UnixStreamServer.__init__(server_address)": _PATHLIKE,
    "UnixDatagramServer.__init__(server_address)": _PATHLIKE,
    "UnixStreamServer.server_address": _PATHLIKE,
    "UnixDatagramServer.server_address": _PATHLIKE,
}

# The Python versions typeshed's socketserver.pyi branches on (3.12 adds the
# ForkingUnix* classes), from the oldest the package supports.
VERSIONS: Final = [(3, 11), (3, 12), (3, 13)]

_PROBE: Final = "_compat_stub_probe"


@dataclass(frozen=True)
class Member:
    """One member read on both sides: ``cls.name`` (``__init__`` is the constructor)."""

    cls: str
    name: str
    defined_in: str  # the typeshed class that defines it
    attribute: bool  # a variable (else a method or the constructor)


def _typeshed_classes(tree: MypyFile) -> list[TypeInfo]:
    return [
        node
        for name, symbol in tree.names.items()
        if isinstance(node := symbol.node, TypeInfo) and node.module_name == "socketserver" and not name.startswith("_")
    ]


def _members(info: TypeInfo) -> list[Member]:
    """Public members and dunders of *info* and its typeshed bases, with the class defining each."""
    found: dict[str, Member] = {}
    for base in info.mro[:-1]:  # not object
        for name, symbol in base.names.items():
            public = not name.startswith("_") or (name.startswith("__") and name.endswith("__"))
            if public and name not in found:
                found[name] = Member(info.name, name, base.name, isinstance(symbol.node, Var))
    return [found[name] for name in sorted(found)]


def _probe_source(members: list[Member]) -> str:
    """A module that reads each member on a socketserver object, then on a compat one."""
    lines = [
        "import socketserver",
        "from composable_server import compat",
        "",
        "class Imprecise:",
        "    '''Stands for an Any on compat's side.'''",
        "",
        "def probe() -> None:",
    ]
    for member in members:
        for module in ("socketserver", "compat"):
            if member.name == "__init__":
                lines.append(f"    {module}.{member.cls}")
            else:
                lines.append(f"    _{module}_{member.cls}.{member.name}")
    lines.append("")
    for cls in sorted({member.cls for member in members}):
        lines.append(f"_socketserver_{cls}: socketserver.{cls}")
        lines.append(f"_compat_{cls}: compat.{cls}")
    return "\n".join(lines) + "\n"


class _Translator(TypeTranslator):
    def visit_type_alias_type(self, t: TypeAliasType) -> Type:
        # The stdlib aliases compared here are not recursive.
        return get_proper_type(t).accept(self)


class _AsCompat(_Translator):
    """socketserver classes in a typeshed type read as their compat namesakes."""

    def __init__(self, compat: MypyFile) -> None:
        super().__init__()
        self.compat = compat

    def visit_instance(self, t: Instance) -> Type:
        if t.type.module_name == "socketserver":
            twin = self.compat.names[t.type.name].node
            assert isinstance(twin, TypeInfo), t.type.name
            return Instance(twin, [arg.accept(self) for arg in t.args])
        return super().visit_instance(t)


class _AnyAs(_Translator):
    """Every Any in a compat type replaced by *sentinel*."""

    def __init__(self, sentinel: Instance) -> None:
        super().__init__()
        self.sentinel = sentinel

    def visit_any(self, t: AnyType) -> Type:
        return self.sentinel


def imprecisions(compat: Type, typeshed: Type, sentinel: Instance) -> Iterator[tuple[tuple[str, ...], str]]:
    """Where *compat* is less precise than *typeshed* (already read as compat
    types): the path to each such position (parameter names, ``arg N`` for an
    unnamed one, ``return``) and what differs there."""
    c, t = get_proper_type(compat), get_proper_type(typeshed)
    if isinstance(t, AnyType):
        return
    if isinstance(c, CallableType) and isinstance(t, CallableType):
        for index, (t_type, t_name) in enumerate(zip(t.arg_types, t.arg_names)):
            c_arg = c.argument_by_name(t_name) if t_name else c.argument_by_position(index)
            label = t_name or f"arg {index}"
            if c_arg is None:
                yield (label,), f"missing (typeshed: {t_type})"
            else:
                for path, detail in imprecisions(c_arg.typ, t_type, sentinel):
                    yield (label, *path), detail
        for path, detail in imprecisions(c.ret_type, t.ret_type, sentinel):
            yield ("return", *path), detail
        return
    if not is_subtype(c.accept(_AnyAs(sentinel)), t):
        yield (), f"compat {c} is less precise than typeshed {t}"


@dataclass(frozen=True)
class Comparison:
    """The outcome for one Python version."""

    compared: int  # members typeshed types concretely somewhere
    differences: dict[str, list[str]]  # key (see DELIBERATE) -> details
    errors: list[str]  # mypy's messages on the probe module (e.g. a member missing in compat)


def _options(python_version: tuple[int, int], cache_dir: Path | None) -> Options:
    options = Options()
    options.python_version = python_version
    options.export_types = True
    options.preserve_asts = True  # keep the probe's function body, whose expressions are read
    # A cache shared by the two builds of one comparison: the second only checks the probe.
    options.incremental = cache_dir is not None
    options.cache_dir = os.devnull if cache_dir is None else str(cache_dir)
    return options


def compare(python_version: tuple[int, int], cache_dir: Path) -> Comparison:
    """Build socketserver, compat and the probe with mypy, and compare every member."""
    options = _options(python_version, cache_dir)
    options.mypy_path = [str(ROOT)]  # this checkout's compat.pyi, whatever is installed
    first = build.build([BuildSource(None, "socketserver"), BuildSource(None, "composable_server.compat")], options)
    assert not first.errors, first.errors
    socketserver = first.graph["socketserver"].tree
    assert socketserver is not None
    members = [member for info in _typeshed_classes(socketserver) for member in _members(info)]
    assert first.graph["composable_server.compat"].xpath == str(ROOT / "composable_server" / "compat.pyi")

    result = build.build([BuildSource(None, _PROBE, text=_probe_source(members))], options)
    probe = result.graph[_PROBE].tree
    compat = result.graph["composable_server.compat"].tree
    assert probe is not None and compat is not None
    sentinel_info = probe.names["Imprecise"].node
    assert isinstance(sentinel_info, TypeInfo)
    sentinel = Instance(sentinel_info, [])
    func = probe.names["probe"].node
    assert isinstance(func, FuncDef)
    statements = func.body.body
    assert len(statements) == 2 * len(members)

    as_compat = _AsCompat(compat)
    differences: dict[str, list[str]] = {}
    compared = 0
    for index, member in enumerate(members):
        t_stmt, c_stmt = statements[2 * index], statements[2 * index + 1]
        assert isinstance(t_stmt, ExpressionStmt) and isinstance(c_stmt, ExpressionStmt)
        typeshed_type, compat_type = result.types[t_stmt.expr], result.types[c_stmt.expr]
        if isinstance(get_proper_type(typeshed_type), AnyType):
            continue
        compared += 1
        where = f"{member.defined_in}.{member.name}"
        for path, detail in imprecisions(compat_type, typeshed_type.accept(as_compat), sentinel):
            # Keyed by the member, and for a method by its parameter.
            key = where if member.attribute or not path or path[0] == "return" else f"{where}({path[0]})"
            differences.setdefault(key, []).append(f"{member.cls}.{member.name} at {'/'.join(path)}: {detail}")
    return Comparison(compared, differences, list(result.errors))


@pytest.fixture(scope="module", params=VERSIONS, ids=lambda v: f"py{v[0]}.{v[1]}")
def comparison(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Comparison:
    version: tuple[int, int] = request.param
    return compare(version, tmp_path_factory.mktemp("mypy_cache"))


class TestAgainstTypeshed:
    @pytest.mark.timeout(180)
    def test_every_typeshed_member_is_read_on_compat(self, comparison: Comparison) -> None:
        """mypy reads every typeshed member on the compat class too, without an error."""
        assert comparison.errors == []
        assert comparison.compared > 100  # 12 server classes, 2 mixins, 3 handlers

    @pytest.mark.timeout(180)
    def test_compat_is_at_least_as_precise(self, comparison: Comparison) -> None:
        """Wherever typeshed types a member concretely, compat's type is at least as precise."""
        unexpected = {key: found for key, found in comparison.differences.items() if key not in DELIBERATE}
        assert unexpected == {}

    @pytest.mark.timeout(180)
    def test_every_deliberate_difference_still_exists(self, comparison: Comparison) -> None:
        """Each listed deliberate difference is still one (the list cannot outlive its reason)."""
        assert sorted(set(DELIBERATE) - set(comparison.differences)) == []


class TestComparison:
    @pytest.mark.timeout(60)
    def test_less_precise_positions_are_reported(self) -> None:
        """An Any or a wider type on compat's side is reported where typeshed is concrete; a narrower one is not."""
        options = _options(sys.version_info[:2], None)
        source = (
            "from collections.abc import Callable\n"
            "from typing import Any\n"
            "class Imprecise: ...\n"
            "def compat(a: Any, b: object, c: int, d: Callable[[Any], int]) -> Any: ...\n"
            "def typeshed(a: str, b: int, c: object, d: Callable[[str], int], e: int = 0) -> int:\n"
            "    return 0\n"
            "compat\n"
            "typeshed\n"
        )
        result = build.build([BuildSource(None, _PROBE, text=source)], options)
        tree = result.graph[_PROBE].tree
        assert tree is not None and not result.errors
        info = tree.names["Imprecise"].node
        assert isinstance(info, TypeInfo)
        c_stmt, t_stmt = tree.defs[-2], tree.defs[-1]
        assert isinstance(c_stmt, ExpressionStmt) and isinstance(t_stmt, ExpressionStmt)
        found = imprecisions(result.types[c_stmt.expr], result.types[t_stmt.expr], Instance(info, []))
        assert [path for path, _ in found] == [("a",), ("b",), ("d", "arg 0"), ("e",), ("return",)]
