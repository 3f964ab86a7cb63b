"""What each entry point imports: the modules loaded, not the time taken.

Every test runs a fresh interpreter (the one running the tests, so the same
installation) and compares the sets of modules in ``sys.modules`` before and
after one import; the result does not depend on how busy the machine is.
Heavy modules (TLS, address parsing, the verifiers, PROXY protocol, prefork,
systemd, the HTTP service) must load only when a program uses them.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import composable_server

PACKAGE = "composable_server"

# Modules `import composable_server.compat` must not load: compat serves the
# socketserver API, which needs none of them.
NOT_FOR_COMPAT = frozenset(
    {
        "ssl",
        "ipaddress",
        "http.server",
        "argparse",
        f"{PACKAGE}.factories",
        f"{PACKAGE}._tls",
        f"{PACKAGE}.prefork",
        f"{PACKAGE}.proxy",
        f"{PACKAGE}.systemd",
        f"{PACKAGE}.verifiers",
        f"{PACKAGE}.testing",
        f"{PACKAGE}._services",
        f"{PACKAGE}._cli",
        f"{PACKAGE}._cliparse",
        f"{PACKAGE}._modes",
        f"{PACKAGE}._demo",
        f"{PACKAGE}._pytest_support",
        f"{PACKAGE}.metrics",
        "prometheus_client",
    }
)

# What the command line may load before its arguments are known to be good
# (--help, --version, a usage error): argparse and the parser module, none of
# the engine, not attrs and not typing (which alone costs as much as argparse).
CLI_PARSER_ONLY = frozenset({PACKAGE, f"{PACKAGE}.__main__", f"{PACKAGE}._cliparse"})
# Nor shutil (zlib, bz2, lzma: argparse reads the terminal width with it) or
# grp (an extension module, for --group): a tenth of `serve --help` on 3.13.
NOT_FOR_THE_PARSER = frozenset(
    {"attr", "attrs", "typing", "ssl", "socket", "ipaddress", "importlib.metadata", "shutil", "grp"}
)


def _loaded_by(statement: str, *, first: str = "") -> set[str]:
    """The modules *statement* adds to ``sys.modules`` in a fresh interpreter,
    after *first* (an import whose own modules are not counted) has run."""
    script = (
        "import json, sys\n"
        f"{first}\n"
        "before = set(sys.modules)\n"
        f"{statement}\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return set(loaded)


def _loaded_by_command(*args: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """The modules ``python -X importtime ARGS`` imports, as the whole process
    (``-m`` and its runpy included) from its ``-X importtime`` lines; and the run."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *args], capture_output=True, text=True, timeout=30, check=False
    )
    loaded = {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    loaded.discard("imported package")  # the header line
    return loaded, done


def _package_modules(modules: set[str]) -> set[str]:
    return {name for name in modules if name == PACKAGE or name.startswith(f"{PACKAGE}.")}


class TestImportCost:
    @pytest.mark.timeout(60)
    def test_the_package_imports_none_of_its_modules(self) -> None:
        """``import composable_server`` loads no submodule, not attrs and not typing: every name is loaded on first use."""
        loaded = _loaded_by(f"import {PACKAGE}")
        assert _package_modules(loaded) == {PACKAGE}
        assert not {"attr", "attrs", "typing"} & loaded

    @pytest.mark.timeout(60)
    def test_compat_loads_only_what_it_uses(self) -> None:
        """``import composable_server.compat`` loads the engine but no TLS, verifiers, proxy, prefork or HTTP."""
        loaded = _loaded_by(f"import {PACKAGE}.compat")
        assert {f"{PACKAGE}.server", f"{PACKAGE}.transports"} <= loaded  # the walk sees the engine
        assert sorted(NOT_FOR_COMPAT & loaded) == []

    @pytest.mark.timeout(60)
    def test_a_compat_server_loads_only_what_it_uses(self) -> None:
        """Building and closing a compat ``TCPServer`` (no verifier) loads none of those modules either."""
        loaded = _loaded_by(
            f"from {PACKAGE} import compat\n"
            "compat.TCPServer(('127.0.0.1', 0), compat.BaseRequestHandler).server_close()"
        )
        assert {f"{PACKAGE}.compat", f"{PACKAGE}.server"} <= loaded  # the walk sees the engine
        assert sorted(NOT_FOR_COMPAT & loaded) == []

    @pytest.mark.timeout(60)
    def test_a_server_with_a_verifier_loads_the_verifiers(self) -> None:
        """A server given a verifier loads the verifiers module (asked for its releaser) as it is built."""
        loaded = _loaded_by(
            "class Mine:\n"
            "    def verify(self, request, client_address):\n"
            "        return True\n"
            "server = Server(transport=TCPTransport(('127.0.0.1', 0)), acceptor=StreamAcceptor(),\n"
            "                handler=print, verifier=Mine(), bind_and_activate=False)\n"
            "server.server_close()",
            first=f"from {PACKAGE} import Server, StreamAcceptor, TCPTransport",
        )
        assert f"{PACKAGE}.verifiers" in loaded

    @pytest.mark.timeout(60)
    def test_the_pytest_plugin_loads_no_component(self) -> None:
        """The pytest plugin (loaded in every pytest run) imports the package namespace only, and not attrs."""
        loaded = _loaded_by(f"import {PACKAGE}.pytest_plugin", first="import pytest")
        assert _package_modules(loaded) == {PACKAGE, f"{PACKAGE}.pytest_plugin"}
        assert not {"attr", "attrs"} & loaded

    @pytest.mark.timeout(60)
    @pytest.mark.parametrize(
        ("argv", "status"),
        [
            (["serve", "--help"], 0),
            (["--help"], 0),
            (["serve", "--port", "x"], 2),  # refused by argparse
            (["serve", "--workers", "3"], 2),  # refused by the usage checks
            (["serve", "--transport", "unix"], 2),  # needs --path
        ],
    )
    def test_the_command_line_loads_no_engine_before_its_arguments_are_good(
        self, argv: list[str], status: int
    ) -> None:
        """``python -m composable_server`` with --help or a bad option loads the parser only: no component, attrs or typing."""
        loaded, done = _loaded_by_command("-m", PACKAGE, *argv)
        assert done.returncode == status, done.stderr
        assert "argparse" in loaded  # the walk saw the parser
        assert sorted(_package_modules(loaded) - CLI_PARSER_ONLY) == []
        assert sorted(NOT_FOR_THE_PARSER & loaded) == []

    @pytest.mark.timeout(60)
    def test_serve_loads_the_engine_after_parsing(self) -> None:
        """Good ``serve`` arguments load the engine (the walk sees it), via the command line module."""
        loaded = _loaded_by(
            f"from {PACKAGE}.__main__ import main\nimport {PACKAGE}._cli as cli\n"
            "cli._serve = lambda parser, args: 0\nassert main(['serve', '--port', '0']) == 0",
        )
        assert {f"{PACKAGE}._cliparse", f"{PACKAGE}._cli", f"{PACKAGE}.server", "attrs"} <= loaded

    @pytest.mark.timeout(60)
    def test_help_does_not_read_the_installed_version(self) -> None:
        """``serve --help`` does not import importlib.metadata: ``--version`` reads it only when asked for."""
        loaded, done = _loaded_by_command("-m", PACKAGE, "--version")
        assert done.returncode == 0, done.stderr
        assert "importlib.metadata" in loaded  # the walk sees what --version reads
        loaded, done = _loaded_by_command("-m", PACKAGE, "serve", "--help")
        assert done.returncode == 0, done.stderr
        assert "importlib.metadata" not in loaded

    @pytest.mark.timeout(60)
    def test_a_name_loads_its_module_on_first_use(self) -> None:
        """Reading ``composable_server.Server`` loads the engine; ``composable_server.Server`` is server.Server."""
        loaded = _loaded_by(
            f"import {PACKAGE}, {PACKAGE}.server\nassert {PACKAGE}.Server is {PACKAGE}.server.Server"
        )
        assert f"{PACKAGE}.server" in loaded

    @pytest.mark.timeout(10)
    def test_every_public_name_resolves_and_is_listed(self) -> None:
        """Every name in ``__all__`` resolves (loading its module) and ``dir()`` lists all of them."""
        for name in composable_server.__all__:
            assert getattr(composable_server, name) is not None, name
        assert set(composable_server.__all__) <= set(dir(composable_server))

    @pytest.mark.timeout(10)
    def test_an_unknown_name_is_an_attribute_error(self) -> None:
        """A name the package does not have raises AttributeError naming it."""
        with pytest.raises(AttributeError, match="no_such_name"):
            getattr(composable_server, "no_such_name")
