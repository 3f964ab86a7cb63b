"""A pytest plugin: running servers, free ports, fakes and contract suites as fixtures.

Installed with the package and registered through the ``pytest11`` entry
point ``composable_server``, so it is active in every pytest run of an
environment that has composable_server; ``pytest -p no:composable_server``
(or ``addopts = ["-p", "no:composable_server"]``) disables it.

Fixtures (annotate them with the types below; mypy --strict then sees no ``Any``):

``serve: ServeFactory``
    ``serve(server)`` runs a bound server (native or compat) in a background
    thread; ``serve(handler, "tcp" | "udp" | "unix_stream" | "unix_datagram",
    dispatcher=..., verifier=...)`` builds one first, on port 0 or a fresh
    Unix socket path.  Returns a :class:`Served` handle: ``.address``,
    ``.server``, ``.request(data) -> bytes``, ``.connect()``, ``.stop()``.
    At the end of the test every server is stopped (drained within a bound),
    and an exception a handler raised during the test is raised in that test,
    which fails with it.  ``handle.take_errors()`` takes expected ones.
``serve_session: ServeFactory``
    The same for servers shared by a whole session (use it from a
    session-scoped fixture); an error is still raised in the test during
    which it happened.
``free_tcp_port: Callable[[], int]``, ``free_udp_port: Callable[[], int]``
    A loopback port number free now and never handed out before in the
    session.  Any port picker races: another process may bind the port
    between the pick and the test's own bind; rare, and the price of knowing
    a number in advance (for a config file or a command line).  A server the
    test builds should bind port 0 instead, as ``serve`` does: no race.
``memory_transport: MemoryTransport[MemoryRequest, str]``, ``recording_handler:
RecordingHandler[MemoryRequest, str]``, ``recording_error_policy: RecordingErrorPolicy``
    The :mod:`composable_server.testing` fakes, closed at teardown.

And a function: :func:`check_contracts` runs every contract suite that fits
a user's own component (``check_contracts(MyVerifier)``).

Import cost: pytest imports this module in every run, so it imports only
pytest and typing; the engine, attrs and sockets load when a test first
uses a fixture that needs them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ._pytest_support import CLIENT_TIMEOUT as CLIENT_TIMEOUT
    from ._pytest_support import DRAIN_TIMEOUT as DRAIN_TIMEOUT
    from ._pytest_support import ServeFactory as ServeFactory
    from ._pytest_support import Served as Served
    from ._pytest_support import TransportKind as TransportKind
    from ._pytest_support import check_contracts as check_contracts
    from .testing import MemoryRequest, MemoryTransport, RecordingErrorPolicy, RecordingHandler

__all__ = (
    "CLIENT_TIMEOUT",
    "DRAIN_TIMEOUT",
    "ServeFactory",
    "Served",
    "TransportKind",
    "check_contracts",
    "free_tcp_port",
    "free_udp_port",
    "memory_transport",
    "pytest_runtest_call",
    "recording_error_policy",
    "recording_handler",
    "serve",
    "serve_session",
)

_SUPPORT = "composable_server._pytest_support"
_LAZY = frozenset({"CLIENT_TIMEOUT", "DRAIN_TIMEOUT", "ServeFactory", "Served", "TransportKind", "check_contracts"})


def __getattr__(name: str) -> object:
    # PEP 562: the public names of the support module, imported on first use.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_SUPPORT), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- hooks ---------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Raise, in the test, the handler errors its servers recorded while it ran.

    The test then fails with the handler's exception (chained to the test's
    own failure, if any), rather than passing or erroring at teardown.
    """
    try:
        result = yield
    except BaseException:
        _check_servers()
        raise
    _check_servers()
    return result


def _check_servers() -> None:
    support = sys.modules.get(_SUPPORT)  # never used: nothing to check, nothing imported
    if support is None:
        return
    for factory in support.live_factories():
        factory.check()


# -- serve -----------------------------------------------------------------------


@pytest.fixture
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeFactory]:
    """Run servers in background threads for this test; stop them after it and
    raise any exception a handler raised."""
    from ._pytest_support import ServeFactory

    factory = ServeFactory(lambda: tmp_path_factory.mktemp("sock", numbered=True))
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="session")
def serve_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeFactory]:
    """As ``serve``, for servers shared by the whole session (stopped at its end)."""
    from ._pytest_support import ServeFactory

    factory = ServeFactory(lambda: tmp_path_factory.mktemp("sock", numbered=True), scope="session")
    try:
        yield factory
    finally:
        factory.close()


# -- free ports ------------------------------------------------------------------


@pytest.fixture(scope="session")
def free_tcp_port() -> Callable[[], int]:
    """Call it for a TCP port on 127.0.0.1 free now, never the same twice in a session."""
    import socket

    from ._pytest_support import FreePorts

    return FreePorts(socket.SOCK_STREAM)


@pytest.fixture(scope="session")
def free_udp_port() -> Callable[[], int]:
    """Call it for a UDP port on 127.0.0.1 free now, never the same twice in a session."""
    import socket

    from ._pytest_support import FreePorts

    return FreePorts(socket.SOCK_DGRAM)


# -- fakes -----------------------------------------------------------------------


@pytest.fixture
def memory_transport() -> Iterator[MemoryTransport[MemoryRequest, str]]:
    """A :class:`~composable_server.testing.MemoryTransport` at ``"memory"``,
    closed at teardown; queue requests with ``connect(MemoryRequest(b"..."), "client")``."""
    from .testing import MemoryTransport

    transport: MemoryTransport[MemoryRequest, str] = MemoryTransport("memory")
    try:
        yield transport
    finally:
        transport.close()


@pytest.fixture
def recording_handler() -> RecordingHandler[MemoryRequest, str]:
    """A :class:`~composable_server.testing.RecordingHandler` for requests of ``memory_transport``."""
    from .testing import RecordingHandler

    return RecordingHandler()


@pytest.fixture
def recording_error_policy() -> RecordingErrorPolicy:
    """A :class:`~composable_server.testing.RecordingErrorPolicy`: records errors, reports nothing."""
    from .testing import RecordingErrorPolicy

    return RecordingErrorPolicy()
