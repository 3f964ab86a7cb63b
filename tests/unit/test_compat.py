"""composable_server.compat, structurally: names, class metadata, class
relationships and attribute defaults against stdlib socketserver.

No sockets: a compat server built with ``bind_and_activate=False`` creates
its socket only when something uses it.
"""

from __future__ import annotations

import io
import os
import pickle
import socket
import socketserver
import sys
from pathlib import Path
from typing import Any, Final

import pytest

from composable_server import (
    DatagramAcceptor,
    ForkingDispatcher,
    Server,
    StreamAcceptor,
    SyncDispatcher,
    TCPTransport,
    ThreadingDispatcher,
    UDPTransport,
    UnixDatagramTransport,
    UnixStreamTransport,
    handlers,
)
from composable_server import compat

pytestmark = pytest.mark.timeout(10)

TWELVE: Final = (
    "TCPServer",
    "UDPServer",
    "UnixStreamServer",
    "UnixDatagramServer",
    "ThreadingTCPServer",
    "ThreadingUDPServer",
    "ThreadingUnixStreamServer",
    "ThreadingUnixDatagramServer",
    "ForkingTCPServer",
    "ForkingUDPServer",
    "ForkingUnixStreamServer",
    "ForkingUnixDatagramServer",
)
ALL_CLASSES: Final = (*TWELVE, "BaseServer", "ThreadingMixIn", "ForkingMixIn")
HANDLERS: Final = ("BaseRequestHandler", "StreamRequestHandler", "DatagramRequestHandler")

# Every class attribute stdlib documents (or that programs set) on the servers.
SERVER_ATTRIBUTES: Final = (
    "address_family",
    "socket_type",
    "request_queue_size",
    "allow_reuse_address",
    "allow_reuse_port",
    "max_packet_size",
    "timeout",
    "daemon_threads",
    "block_on_close",
    "max_children",
    "active_children",
)
HANDLER_ATTRIBUTES: Final = ("rbufsize", "wbufsize", "timeout", "disable_nagle_algorithm")

_MISSING: Final = object()


def stdlib_class(name: str) -> type:
    """The stdlib class *name*, or its stdlib definition where this Python
    lacks it (ForkingUnix*Server arrived in 3.12)."""
    cls = getattr(socketserver, name, None)
    if isinstance(cls, type):
        return cls
    base = getattr(socketserver, name.removeprefix("Forking"))
    return type(name, (socketserver.ForkingMixIn, base), {"__module__": "socketserver"})


def compat_class(name: str) -> type:
    cls = getattr(compat, name)
    assert isinstance(cls, type)
    return cls


class TestAll:
    def test_all_equals_stdlib(self) -> None:
        """``compat.__all__`` is stdlib's ``__all__`` of the running Python, in order."""
        assert list(compat.__all__) == list(socketserver.__all__)

    def test_every_name_resolves(self) -> None:
        """Every name in ``__all__`` is defined."""
        for name in compat.__all__:
            assert getattr(compat, name) is not None

    @pytest.mark.skipif(sys.version_info >= (3, 12), reason="stdlib exports them from 3.12")
    def test_forking_unix_defined_but_not_exported_before_312(self) -> None:
        """Before 3.12 the Forking Unix classes exist but, as in stdlib, are not exported."""
        assert "ForkingUnixStreamServer" not in compat.__all__
        assert compat.ForkingUnixStreamServer.__name__ == "ForkingUnixStreamServer"


class TestClassMetadata:
    @pytest.mark.parametrize("name", ALL_CLASSES + HANDLERS)
    def test_name_qualname_module(self, name: str) -> None:
        """Each class reports its compat name and module, so reprs and tracebacks show it."""
        cls = compat_class(name)
        assert (cls.__name__, cls.__qualname__, cls.__module__) == (name, name, "composable_server.compat")
        assert repr(cls) == f"<class 'composable_server.compat.{name}'>"

    @pytest.mark.parametrize("name", TWELVE)
    def test_pickles_by_reference(self, name: str) -> None:
        """A factory-made class pickles as a reference to its compat name."""
        cls = compat_class(name)
        assert pickle.loads(pickle.dumps(cls)) is cls

    @pytest.mark.parametrize("name", TWELVE)
    def test_has_a_docstring(self, name: str) -> None:
        """Factory-made classes inherit a documented constructor and hooks."""
        assert getattr(compat_class(name), "__init__").__doc__


class TestRelationships:
    @pytest.mark.parametrize("name", ALL_CLASSES)
    def test_mro_matches_stdlib(self, name: str) -> None:
        """The compat classes in each MRO are stdlib's, in stdlib's order."""
        ours = [c.__name__ for c in compat_class(name).__mro__ if c.__module__ == "composable_server.compat"]
        theirs = [c.__name__ for c in stdlib_class(name).__mro__ if c.__module__ == "socketserver"]
        assert ours == theirs

    @pytest.mark.parametrize("name", (*TWELVE, "BaseServer"))
    def test_servers_are_engine_servers(self, name: str) -> None:
        """Every compat server class is a subclass of the engine Server."""
        assert issubclass(compat_class(name), Server)

    def test_stdlib_isinstance_relations(self) -> None:
        """UDPServer is a TCPServer, UnixDatagramServer a UDPServer, as in stdlib."""
        assert issubclass(compat.UDPServer, compat.TCPServer)
        assert issubclass(compat.UnixStreamServer, compat.TCPServer)
        assert issubclass(compat.UnixDatagramServer, compat.UDPServer)
        assert issubclass(compat.ThreadingUnixDatagramServer, compat.ThreadingMixIn)
        assert not issubclass(compat.ThreadingTCPServer, compat.ForkingMixIn)

    def test_mixins_are_plain(self) -> None:
        """The mixins are not servers themselves, as in stdlib."""
        assert not issubclass(compat.ThreadingMixIn, Server)
        assert not issubclass(compat.ForkingMixIn, Server)

    def test_handlers_relate_to_core_handlers(self) -> None:
        """The compat handlers are the core handlers and compat.BaseRequestHandler at once."""
        assert issubclass(compat.StreamRequestHandler, handlers.StreamRequestHandler)
        assert issubclass(compat.StreamRequestHandler, compat.BaseRequestHandler)
        assert issubclass(compat.DatagramRequestHandler, handlers.DatagramRequestHandler)
        assert issubclass(compat.DatagramRequestHandler, compat.BaseRequestHandler)
        assert issubclass(compat.BaseRequestHandler, handlers.BaseRequestHandler)


class TestClassAttributes:
    @pytest.mark.parametrize("name", ALL_CLASSES)
    @pytest.mark.parametrize("attribute", SERVER_ATTRIBUTES)
    def test_default_equals_stdlib(self, name: str, attribute: str) -> None:
        """Each class attribute has stdlib's default, and is absent where stdlib's is."""
        expected = getattr(stdlib_class(name), attribute, _MISSING)
        actual = getattr(compat_class(name), attribute, _MISSING)
        assert actual == expected
        assert type(actual) is type(expected)

    @pytest.mark.parametrize("name", HANDLERS)
    @pytest.mark.parametrize("attribute", HANDLER_ATTRIBUTES)
    def test_handler_default_equals_stdlib(self, name: str, attribute: str) -> None:
        """Handler class attributes have stdlib's defaults."""
        assert getattr(compat_class(name), attribute, _MISSING) == getattr(
            getattr(socketserver, name), attribute, _MISSING
        )

    def test_settable_on_the_class(self) -> None:
        """A class attribute set on a subclass is what the components are built from."""

        class Tuned(compat.ThreadingUDPServer):
            allow_reuse_address = True
            allow_reuse_port = True
            max_packet_size = 1500
            daemon_threads = True
            block_on_close = False

        server = Tuned(("127.0.0.1", 0), compat.DatagramRequestHandler, bind_and_activate=False)
        try:
            assert isinstance(server.transport, UDPTransport)
            assert (server.transport.reuse_address, server.transport.reuse_port) == (True, True)
            assert isinstance(server.acceptor, DatagramAcceptor)
            assert server.acceptor.max_packet_size == 1500
            assert isinstance(server.dispatcher, ThreadingDispatcher)
            assert (server.dispatcher.daemon, server.dispatcher.block_on_close) == (True, False)
        finally:
            server.server_close()

    def test_settable_on_the_instance_before_init(self) -> None:
        """Attributes a subclass sets on ``self`` before ``super().__init__`` take effect."""

        class Mine(compat.ForkingTCPServer):
            def __init__(self, address: tuple[str, int]) -> None:
                self.max_children = 3
                self.block_on_close = False
                self.timeout = 1.5
                self.allow_reuse_address = True
                self.extra = "kept"
                super().__init__(address, compat.StreamRequestHandler, bind_and_activate=False)

        server = Mine(("127.0.0.1", 0))
        try:
            assert isinstance(server.dispatcher, ForkingDispatcher)
            assert (server.dispatcher.max_children, server.dispatcher.block_on_close) == (3, False)
            assert server.timeout == 1.5
            assert isinstance(server.transport, TCPTransport)
            assert server.transport.reuse_address is True
            assert server.extra == "kept"
        finally:
            server.server_close()

    def test_active_children_none_on_class_and_fresh_instance(self) -> None:
        """``active_children`` is None on the class and before any child was forked."""
        assert compat.ForkingTCPServer.active_children is None
        server = compat.ForkingTCPServer(("127.0.0.1", 0), compat.StreamRequestHandler, bind_and_activate=False)
        try:
            assert server.active_children is None
        finally:
            server.server_close()


class TestComponents:
    @pytest.mark.parametrize(
        ("name", "transport", "acceptor", "dispatcher"),
        [
            ("TCPServer", TCPTransport, StreamAcceptor, SyncDispatcher),
            ("UDPServer", UDPTransport, DatagramAcceptor, SyncDispatcher),
            ("ThreadingTCPServer", TCPTransport, StreamAcceptor, ThreadingDispatcher),
            ("ForkingUDPServer", UDPTransport, DatagramAcceptor, ForkingDispatcher),
        ],
    )
    def test_inet_components(self, name: str, transport: type, acceptor: type, dispatcher: type) -> None:
        """Each IP class is assembled from the matching transport, acceptor and dispatcher."""
        server = compat_class(name)(("127.0.0.1", 0), compat.BaseRequestHandler, False)
        try:
            assert isinstance(server, Server)
            assert type(server.transport) is transport
            assert type(server.acceptor) is acceptor
            assert type(server.dispatcher) is dispatcher
        finally:
            server.server_close()

    @pytest.mark.parametrize(
        ("name", "transport"),
        [("UnixStreamServer", UnixStreamTransport), ("ThreadingUnixDatagramServer", UnixDatagramTransport)],
    )
    def test_unix_components_keep_the_socket_file(self, name: str, transport: type, tmp_path: Path) -> None:
        """Unix classes never remove the socket file, as stdlib (programs unlink it themselves)."""
        server = compat_class(name)(str(tmp_path / "s"), compat.BaseRequestHandler, False)
        try:
            assert type(server.transport) is transport
            assert isinstance(server.transport, (UnixStreamTransport, UnixDatagramTransport))
            assert server.transport.unlink_on_close is False
        finally:
            server.server_close()

    def test_ipv6_family_from_the_class(self) -> None:
        """``address_family = AF_INET6`` on a subclass gives an IPv6 transport."""

        class V6(compat.TCPServer):
            address_family = socket.AF_INET6

        server = V6(("::1", 0), compat.StreamRequestHandler, bind_and_activate=False)
        try:
            assert isinstance(server.transport, TCPTransport)
            assert server.transport.family == socket.AF_INET6
        finally:
            server.server_close()

    def test_unsupported_socket_type(self) -> None:
        """A socket type other than stream or datagram is refused with a ValueError naming it."""

        class Seq(compat.UnixStreamServer):
            socket_type = socket.SOCK_SEQPACKET

        with pytest.raises(ValueError, match="socket_type"):
            Seq("/tmp/unused", compat.BaseRequestHandler, bind_and_activate=False)


class TestInstanceAttributes:
    def test_server_address_kept_until_bind(self, tmp_path: Path) -> None:
        """Before ``server_bind`` the address is the one given, as stdlib."""
        path = tmp_path / "s"
        server = compat.UnixStreamServer(os.fspath(path), compat.StreamRequestHandler, bind_and_activate=False)
        try:
            assert server.server_address == os.fspath(path)
        finally:
            server.server_close()

    def test_request_handler_class_maps_to_the_handler(self) -> None:
        """``RequestHandlerClass`` reads and writes the engine's handler."""
        server = compat.TCPServer(("127.0.0.1", 0), compat.StreamRequestHandler, bind_and_activate=False)
        try:
            assert server.RequestHandlerClass is compat.StreamRequestHandler
            server.RequestHandlerClass = compat.BaseRequestHandler
            assert server.handler is compat.BaseRequestHandler
        finally:
            server.server_close()

    def test_fileno_after_close(self) -> None:
        """``fileno()`` is -1 after ``server_close()``."""
        server = compat.TCPServer(("127.0.0.1", 0), compat.StreamRequestHandler, bind_and_activate=False)
        server.server_close()
        assert server.fileno() == -1

    def test_server_close_is_idempotent(self) -> None:
        """Closing twice is harmless."""
        server = compat.ThreadingUDPServer(("127.0.0.1", 0), compat.DatagramRequestHandler, bind_and_activate=False)
        server.server_close()
        server.server_close()
        assert server.fileno() == -1

    def test_context_manager_closes(self) -> None:
        """``with`` closes the server, as stdlib."""
        with compat.TCPServer(("127.0.0.1", 0), compat.StreamRequestHandler, bind_and_activate=False) as server:
            pass
        assert server.fileno() == -1

    def test_base_server_without_socket(self) -> None:
        """A server built on BaseServer directly has no socket until a subclass provides one."""
        server = compat.BaseServer(("x", 1), compat.BaseRequestHandler)
        try:
            assert server.server_address == ("x", 1)
            with pytest.raises(TypeError, match="no socket"):
                server.fileno()
        finally:
            server.server_close()


class _Sink(io.BytesIO):
    """A write file that keeps what it held when closed."""

    value = b""

    def close(self) -> None:
        if not self.closed:
            self.value = self.getvalue()
        super().close()


class _SocketLike:
    """A request that is not a socket.socket: what stdlib's StreamRequestHandler
    uses of it (``makefile``, ``sendall``), recorded."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.makefile_calls: list[tuple[str, int]] = []
        self.sent: list[bytes] = []
        self.written = _Sink()

    def makefile(self, mode: str, buffering: int) -> io.BytesIO:
        self.makefile_calls.append((mode, buffering))
        return io.BytesIO(self.data) if mode == "rb" else self.written

    def sendall(self, data: bytes) -> None:
        self.sent.append(bytes(data))


@pytest.mark.parametrize("module", [socketserver, compat], ids=["stdlib", "compat"])
class TestStreamRequestHandlerSetup:
    @pytest.mark.parametrize("wbufsize", [0, 4096])
    def test_files_come_from_the_request(self, module: Any, wbufsize: int) -> None:
        """rfile is the request's ``makefile('rb', rbufsize)``; wfile sends through
        its ``sendall`` (unbuffered) or is its ``makefile('wb', wbufsize)``, as
        in stdlib, so a socket-like request serves."""

        class Upper(module.StreamRequestHandler):  # type: ignore[misc]  # a module chosen at run time (Any)
            def handle(self) -> None:
                self.wfile.write(self.rfile.readline().upper())

        Upper.wbufsize = wbufsize
        request = _SocketLike(b"ping\n")
        Upper(request, ("peer", 1), None)
        if wbufsize == 0:
            assert request.makefile_calls == [("rb", -1)]
            assert request.sent == [b"PING\n"]
        else:
            assert request.makefile_calls == [("rb", -1), ("wb", 4096)]
            assert request.written.value == b"PING\n"  # finish() flushed and closed it
