"""The pytest plugin, as a user meets it: test files run by pytester in a
fresh pytest process, which loads the plugin through its ``pytest11`` entry
point as any user's run does."""

from __future__ import annotations

import importlib.metadata
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Final, cast

import pytest

from composable_server import (
    AcceptBackoff,
    NoTimeout,
    ReRaise,
    StreamAcceptor,
    SyncDispatcher,
    ThreadingDispatcher,
    UDPTransport,
    allow_networks,
)
from composable_server.interfaces import RequestFinished
from composable_server.observers import AccessLog, BaseObserver
from composable_server.pytest_plugin import check_contracts

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.timeout(120)

# Bound of one inner pytest run (a bound, not a synchronisation).
RUN_TIMEOUT: Final = 90.0

# The inner runs use the project's strictness: warnings are errors (a leaked
# socket's ResourceWarning fails), every test bounded.
INI: Final = r"""
[pytest]
timeout = 60
filterwarnings =
    error
    ignore:This process .* is multi-threaded, use of fork\(\) may lead to deadlocks:DeprecationWarning
"""

USAGE: Final = Path(__file__).parent.parent / "typing" / "plugin_usage.py"
README: Final = Path(__file__).parent.parent.parent / "README.md"

HANDLERS: Final = """
import socket

import pytest

from composable_server import (
    DatagramRequestHandler, ForkingDispatcher, StreamRequestHandler, ThreadingDispatcher, compat,
)


class HandlerBroke(Exception):
    pass


class Upper(StreamRequestHandler[object]):
    def handle(self):
        data = self.rfile.read()
        if data == b"boom":
            raise HandlerBroke("from the session server")
        self.wfile.write(data.upper())


class UpperDatagram(DatagramRequestHandler[object]):
    def handle(self):
        self.wfile.write(self.rfile.read().upper())


class Broken(StreamRequestHandler[object]):
    def handle(self):
        raise HandlerBroke("from a stream handler")


class BrokenDatagram(DatagramRequestHandler[object]):
    def handle(self):
        raise HandlerBroke("from a datagram handler")
"""


def run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makeini(INI)
    pytester.makepyfile(test_user=source)
    return pytester.runpytest_subprocess("-rA", *args, timeout=RUN_TIMEOUT)


class TestActivation:
    def test_entry_point(self) -> None:
        """The package registers the plugin as the pytest11 entry point ``composable_server``."""
        points = {point.name: point.value for point in importlib.metadata.entry_points(group="pytest11")}
        assert points.get("composable_server") == "composable_server.pytest_plugin"

    def test_active_when_installed_without_loading_its_machinery(self, pytester: pytest.Pytester) -> None:
        """An installed package's plugin provides ``serve``; a run that uses no
        fixture never imports the plugin's support module or the testing kit."""
        source = """
            import sys

            def test_untouched():
                assert "composable_server._pytest_support" not in sys.modules
                assert "composable_server.testing" not in sys.modules

            def test_uses(serve):
                assert type(serve).__name__ == "ServeFactory"
        """
        result = run(pytester, textwrap.dedent(source))
        result.assert_outcomes(passed=2)

    def test_disabled_with_p_no(self, pytester: pytest.Pytester) -> None:
        """``-p no:composable_server`` disables the plugin: its fixtures are unknown."""
        result = run(pytester, "def test_uses(serve):\n    pass\n", "-p", "no:composable_server")
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(["*fixture 'serve' not found*"])

    def test_plugin_module_imports_light(self) -> None:
        """Importing the plugin module loads neither its support module nor the testing kit."""
        code = (
            "import sys, composable_server.pytest_plugin as p; "
            "print(sorted(m for m in ('composable_server._pytest_support', 'composable_server.testing') "
            "if m in sys.modules))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
        assert out.stdout.strip() == "[]"


class TestUserFiles:
    def test_every_fixture_in_users_files(self, pytester: pytest.Pytester) -> None:
        """tests/typing/plugin_usage.py (the mypy-checked user file) and the
        README's "Testing your server" example, as printed, pass as a user's test modules."""
        section = README.read_text().split("## Testing your server", 1)[1]
        example = section.split("```python\n", 1)[1].split("```", 1)[0]
        assert example.startswith("# test_upper.py")
        pytester.makepyfile(test_upper=example)
        result = run(pytester, USAGE.read_text())
        result.assert_outcomes(passed=11 + 5)
        result.stdout.fnmatch_lines_random(["PASSED test_upper.py::test_shared", "PASSED test_user.py::test_fakes"])


class TestHandlerErrors:
    def test_a_raising_handler_fails_exactly_its_test(
        self, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A handler's exception fails the test during which it was raised, with
        that exception, whatever the transport, dispatcher or scope; the other tests pass."""
        source = HANDLERS + textwrap.dedent(
            """
            @pytest.fixture(scope="session")
            def shared(serve_session):
                return serve_session(Upper, dispatcher=ThreadingDispatcher())

            def test_before(serve, shared):
                assert serve(Upper).request(b"a") == b"A"
                assert shared.request(b"b") == b"B"

            def test_stream(serve):
                serve(Broken).request(b"x")

            def test_datagram(serve):
                serve(BrokenDatagram, "udp").request(b"x")

            def test_unix_datagram_forking(serve):
                serve(BrokenDatagram, "unix_datagram", dispatcher=ForkingDispatcher()).request(b"x")

            def test_forking(serve):
                serve(Broken, dispatcher=ForkingDispatcher()).request(b"x")

            def test_without_waiting_for_the_reply(serve):
                served = serve(Broken, dispatcher=ThreadingDispatcher())
                with served.connect() as client:
                    client.sendall(b"x")
                    client.shutdown(socket.SHUT_WR)
                    client.recv(1)  # the server closed: the test body "passes"

            def test_compat_with_its_own_handle_error(serve):
                class Quiet(compat.ThreadingTCPServer):
                    def handle_error(self, request, client_address):
                        pass
                class BrokenCompat(compat.StreamRequestHandler):
                    def handle(self):
                        raise HandlerBroke("from a compat handler")
                serve(Quiet(("127.0.0.1", 0), BrokenCompat)).request(b"x")

            def test_session_server(shared):
                shared.request(b"boom")

            def test_after(serve, shared):
                assert serve(UpperDatagram, "udp").request(b"c") == b"C"
                assert shared.request(b"d") == b"D"
            """
        )
        monkeypatch.setenv("COLUMNS", "300")  # summary lines in full
        result = run(pytester, source)
        result.assert_outcomes(passed=2, failed=7)
        result.stdout.fnmatch_lines_random(
            [
                "PASSED test_user.py::test_before",
                "PASSED test_user.py::test_after",
                "FAILED test_user.py::test_stream - test_user.HandlerBroke: from a stream handler",
                "FAILED test_user.py::test_datagram - test_user.HandlerBroke: from a datagram handler",
                "FAILED test_user.py::test_unix_datagram_forking - test_user.HandlerBroke: from a datagram handler*",
                "FAILED test_user.py::test_forking - test_user.HandlerBroke: from a stream handler*",
                "FAILED test_user.py::test_without_waiting_for_the_reply - test_user.HandlerBroke: from a stream*",
                "FAILED test_user.py::test_compat_with_its_own_handle_error - test_user.HandlerBroke: from a compat*",
                "FAILED test_user.py::test_session_server - test_user.HandlerBroke: from the session server",
            ]
        )
        # The forked child's traceback reaches the test.
        result.stdout.fnmatch_lines(["*(raised in the forked child *:)*"])


class TestTeardown:
    def test_nothing_left_behind(self, pytester: pytest.Pytester) -> None:
        """After tests that serve every kind with every dispatcher (and leave
        clients open), no thread, descriptor, child process or socket file remains;
        free ports never repeat within the session."""
        source = HANDLERS + textwrap.dedent(
            """
            import os
            import threading

            BASE = {}
            PORTS = {"tcp": [], "udp": []}

            def fds():
                return set(os.listdir("/proc/self/fd"))

            def test_0_baseline():
                BASE["threads"] = set(threading.enumerate())
                BASE["fds"] = fds()

            @pytest.mark.parametrize("dispatcher", [None, ThreadingDispatcher, ForkingDispatcher])
            @pytest.mark.parametrize("kind", ["tcp", "udp", "unix_stream", "unix_datagram"])
            def test_1_serve(serve, kind, dispatcher, free_tcp_port, free_udp_port):
                handler = Upper if kind in ("tcp", "unix_stream") else UpperDatagram
                served = serve(handler, kind, dispatcher=None if dispatcher is None else dispatcher())
                assert served.request(b"x") == b"X"
                served.connect()  # left open: closed at teardown
                PORTS["tcp"] += [free_tcp_port() for _ in range(10)]
                PORTS["udp"] += [free_udp_port() for _ in range(10)]

            def test_1_stopped_by_the_test(serve):
                served = serve(Upper, dispatcher=ThreadingDispatcher())
                served.connect()
                assert served.stop().finished

            def test_2_nothing_left(tmp_path_factory):
                extra = [t for t in threading.enumerate() if t not in BASE["threads"]]
                assert extra == []
                assert fds() == BASE["fds"]
                with pytest.raises(ChildProcessError):
                    os.waitpid(-1, os.WNOHANG)
                assert list(tmp_path_factory.getbasetemp().rglob("*.sock")) == []
                for ports in PORTS.values():
                    assert len(set(ports)) == len(ports) == 120
            """
        )
        result = run(pytester, source)
        result.assert_outcomes(passed=15)


class TestCheckContracts:
    def test_runs_the_suites_of_each_role(self) -> None:
        """Each built-in component is recognised by its methods and passes its role's suites."""
        assert check_contracts(lambda: UDPTransport(("127.0.0.1", 0))) == ("check_transport", "check_acceptor")
        assert check_contracts(StreamAcceptor) == ("check_acceptor",)
        assert check_contracts(SyncDispatcher, concurrent=False) == ("check_dispatcher",)
        assert check_contracts(ReRaise, reraises=True) == ("check_error_policy",)
        assert check_contracts(NoTimeout) == ("check_timeout_policy",)
        assert check_contracts(AcceptBackoff) == ("check_accept_error_policy",)
        assert check_contracts(lambda: allow_networks("127.0.0.0/8")) == ("check_verifier",)
        assert check_contracts(BaseObserver) == ("check_observer",)
        assert check_contracts(lambda: AccessLog(logging.getLogger("test_pytest_plugin.access"))) == ("check_observer",)

    def test_a_broken_observer_fails(self) -> None:
        """An observer whose event method returns a value fails its contract."""

        class Answering(BaseObserver):
            def request_finished(self, event: RequestFinished) -> None:
                return cast(None, "done")

        with pytest.raises(AssertionError):
            check_contracts(Answering)

    def test_a_broken_component_fails(self) -> None:
        """A verifier that answers something other than a bool fails its contract."""

        class Maybe:
            def verify(self, request: object, client_address: object) -> object:
                return "maybe"

        with pytest.raises(AssertionError, match="not a bool"):
            check_contracts(Maybe)

    def test_a_dispatcher_needs_concurrent(self) -> None:
        """A Dispatcher without ``concurrent=`` is refused with an error saying what to pass."""
        with pytest.raises(TypeError, match="concurrent=True"):
            check_contracts(ThreadingDispatcher)

    def test_no_role(self) -> None:
        """An object with no component's methods is refused with the roles' methods listed."""
        with pytest.raises(TypeError, match="verifier: verify"):
            check_contracts(object)
