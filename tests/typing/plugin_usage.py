"""A user's test module on the pytest plugin: type-checked by mypy --strict
(the fixtures' types reach the user's code without ``Any``) and run, as a
user's file, by tests/integration/test_pytest_plugin.py through pytester.

Misuses sit in :func:`_misuses`, which is never called: each carries a
``# type: ignore[code]`` that ``warn_unused_ignores`` turns into an assertion.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import assert_type

import pytest

from composable_server import (
    DatagramRequest,
    DatagramRequestHandler,
    DrainReport,
    ForkingDispatcher,
    InetAddress,
    Server,
    StreamAcceptor,
    StreamRequestHandler,
    TCPTransport,
    ThreadingDispatcher,
    UnixAddress,
    compat,
)
from composable_server.interfaces import Address
from composable_server.pytest_plugin import ServeFactory, Served, check_contracts
from composable_server.testing import (
    MemoryAcceptor,
    MemoryRequest,
    MemoryTransport,
    RecordingErrorPolicy,
    RecordingHandler,
)


class Upper(StreamRequestHandler[Address]):
    """Answers everything the client sent, upper-cased."""

    def handle(self) -> None:
        self.wfile.write(self.rfile.read().upper())


class UpperDatagram(DatagramRequestHandler[Address]):
    """Answers a datagram upper-cased."""

    def handle(self) -> None:
        self.wfile.write(self.rfile.read().upper())


def test_serve_a_handler_on_tcp(serve: ServeFactory) -> None:
    """serve(handler) builds a TCP server on port 0 and answers one request."""
    served = serve(Upper, dispatcher=ThreadingDispatcher())
    assert_type(served, Served[socket.socket, InetAddress])
    assert_type(served.address, InetAddress)
    assert served.address[1] > 0
    assert served.request(b"hello") == b"HELLO"


def test_serve_every_transport_kind(serve: ServeFactory) -> None:
    """Each transport kind is built, bound and served."""
    udp = serve(UpperDatagram, "udp")
    unix_stream = serve(Upper, "unix_stream")
    unix_datagram = serve(UpperDatagram, "unix_datagram", dispatcher=ForkingDispatcher())
    assert_type(udp, Served[DatagramRequest, InetAddress])
    assert_type(unix_stream, Served[socket.socket, UnixAddress])
    assert_type(unix_datagram, Served[DatagramRequest, UnixAddress])
    assert [udp.request(b"u"), unix_stream.request(b"s"), unix_datagram.request(b"d")] == [b"U", b"S", b"D"]


def test_serve_a_built_server(serve: ServeFactory) -> None:
    """serve(server) runs a server the test built; stop() is idempotent."""
    server: Server[socket.socket, InetAddress] = Server(
        transport=TCPTransport(("127.0.0.1", 0)), acceptor=StreamAcceptor(), handler=Upper
    )
    served = serve(server)
    assert_type(served.server, Server[socket.socket, InetAddress])
    with served.connect() as client:
        client.sendall(b"abc")
        client.shutdown(socket.SHUT_WR)
        assert client.recv(16) == b"ABC"
    report = served.stop()
    assert_type(report, DrainReport)
    assert report.finished
    assert served.stop() is report


class CompatUpper(compat.StreamRequestHandler):
    """A stdlib-style handler: one line in, upper-cased back."""

    def handle(self) -> None:
        self.wfile.write(self.rfile.readline().upper())


def test_serve_a_compat_server(serve: ServeFactory) -> None:
    """A compat (stdlib-style) server is served like a native one."""
    served = serve(compat.ThreadingTCPServer(("127.0.0.1", 0), CompatUpper))
    assert served.request(b"line\n") == b"LINE\n"


class Broken(StreamRequestHandler[InetAddress]):
    """Always raises."""

    def handle(self) -> None:
        raise LookupError("expected by the test")


def test_an_expected_handler_error_is_taken(serve: ServeFactory) -> None:
    """A test that expects a handler to fail takes the error; it is not raised then."""
    served = serve(Broken, raise_errors=False)
    assert served.request(b"x") == b""
    errors = served.take_errors()
    assert_type(errors, list[BaseException])
    assert [type(exc) for exc in errors] == [LookupError]


def test_a_handler_error_can_be_caught_from_request(serve: ServeFactory) -> None:
    """request() raises the handler's exception, so pytest.raises catches it."""
    served = serve(Broken)
    with pytest.raises(LookupError, match="expected by the test"):
        served.request(b"x")


@pytest.fixture(scope="session")
def shared_server(serve_session: ServeFactory) -> Served[socket.socket, InetAddress]:
    """One server for the whole session."""
    return serve_session(Upper)


@pytest.mark.parametrize("word", [b"one", b"two"])
def test_a_session_server(shared_server: Served[socket.socket, InetAddress], word: bytes) -> None:
    """A session-scoped server serves every test that asks for it."""
    assert shared_server.request(word) == word.upper()


def test_free_ports(free_tcp_port: Callable[[], int], free_udp_port: Callable[[], int]) -> None:
    """Free ports are never handed out twice, and can be bound."""
    tcp = [free_tcp_port() for _ in range(20)]
    assert len(set(tcp)) == 20
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", free_udp_port()))


def test_fakes(
    memory_transport: MemoryTransport[MemoryRequest, str],
    recording_handler: RecordingHandler[MemoryRequest, str],
    recording_error_policy: RecordingErrorPolicy,
) -> None:
    """The fakes as fixtures drive a server without a socket."""
    with Server(
        transport=memory_transport,
        acceptor=MemoryAcceptor(),
        handler=recording_handler,
        error_policy=recording_error_policy,
    ) as server:
        request = MemoryRequest(b"ping")
        memory_transport.connect(request, "client-1")
        server.handle_request()
    assert recording_handler.calls == [(request, "client-1")]
    assert recording_error_policy.errors == []


class EveryOther:
    """A user's own verifier: admits every other request."""

    def __init__(self) -> None:
        self.count = 0

    def verify(self, request: object, client_address: object) -> bool:
        self.count += 1
        return self.count % 2 == 1


def test_contracts_of_a_users_component() -> None:
    """check_contracts runs the suites that fit a component: here the Verifier one."""
    assert check_contracts(EveryOther) == ("check_verifier",)
    assert check_contracts(ThreadingDispatcher, concurrent=True) == ("check_dispatcher",)
    assert check_contracts(lambda: TCPTransport(("127.0.0.1", 0))) == ("check_transport", "check_acceptor")


def _misuses(serve: ServeFactory) -> Iterator[object]:
    # A stream handler on a datagram transport is a type error.
    yield serve(Upper, "udp")  # type: ignore[call-overload]
    # An unknown transport kind too.
    yield serve(Upper, "sctp")  # type: ignore[call-overload]
    served = serve(Upper)
    # The address of a TCP server is not a path.
    path: str = served.address  # type: ignore[assignment]
    yield path
