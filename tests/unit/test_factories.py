"""composable_server.factories: the class table, server_class and the
native convenience wrappers (built unbound, so no sockets)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import assert_type

import pytest

from composable_server import (
    AllowAll,
    DatagramAcceptor,
    DatagramRequest,
    InetAddress,
    LoggingErrorPolicy,
    Server,
    StreamAcceptor,
    SyncDispatcher,
    TCPTransport,
    ThreadingDispatcher,
    UDPTransport,
    UnixAddress,
    UnixDatagramTransport,
    UnixStreamTransport,
    compat,
    factories,
)
from composable_server.factories import (
    DISPATCHERS,
    TRANSPORTS,
    build_classic_servers,
    classic_name,
    make_tcp_server,
    make_udp_server,
    make_unix_datagram_server,
    make_unix_stream_server,
    server_class,
)
from composable_server.handlers import BaseRequestHandler, DatagramResponder

from .._process import run_process

pytestmark = pytest.mark.timeout(10)


def _noop(request: object, client_address: object, server: object) -> None:
    """A handler that does nothing."""


class TestTable:
    def test_product_is_the_twelve_names(self) -> None:
        """The two tables multiply out to stdlib's twelve class names."""
        names = {classic_name(t, d) for t in TRANSPORTS for d in DISPATCHERS}
        assert names == {
            f"{prefix}{base}Server"
            for prefix in ("", "Threading", "Forking")
            for base in ("TCP", "UDP", "UnixStream", "UnixDatagram")
        }

    def test_parents_come_first(self) -> None:
        """Every row's parent precedes it, so one pass builds the classes."""
        seen: set[str] = set()
        for key, row in TRANSPORTS.items():
            assert row.parent is None or row.parent in seen
            seen.add(key)

    def test_build_with_other_bases(self) -> None:
        """The table builds a class family on any base, with the requested module."""

        class Root:
            pass

        class Mix:
            pass

        classes = build_classic_servers(
            base=Root, mixins={"sync": None, "threading": Mix}, root_namespace={"marker": 1}, module="elsewhere"
        )
        assert set(classes) == {
            "TCPServer",
            "UDPServer",
            "UnixStreamServer",
            "UnixDatagramServer",
            "ThreadingTCPServer",
            "ThreadingUDPServer",
            "ThreadingUnixStreamServer",
            "ThreadingUnixDatagramServer",
        }
        assert classes["ThreadingUDPServer"].__mro__[1:4] == (Mix, classes["UDPServer"], classes["TCPServer"])
        assert all(c.__module__ == "elsewhere" for c in classes.values())
        assert "marker" in vars(classes["TCPServer"]) and "marker" not in vars(classes["UDPServer"])


class TestServerClass:
    @pytest.mark.parametrize("transport", list(TRANSPORTS))
    @pytest.mark.parametrize("dispatcher", list(DISPATCHERS))
    def test_plain_choice_is_the_classic_class(
        self, transport: factories.TransportName, dispatcher: factories.DispatcherName
    ) -> None:
        """With only the two choices, the result is the compat class itself."""
        assert server_class(transport, dispatcher) is getattr(compat, classic_name(transport, dispatcher))

    def test_named_subclass(self) -> None:
        """A name (and attributes) give a new subclass with that name and module."""
        cls = server_class("udp", "threading", name="Mine", module="my.app", attributes={"max_packet_size": 512})
        assert issubclass(cls, compat.ThreadingUDPServer)
        assert (cls.__name__, cls.__qualname__, cls.__module__) == ("Mine", "Mine", "my.app")
        assert getattr(cls, "max_packet_size") == 512

    def test_components_are_installed(self) -> None:
        """A dispatcher factory, verifier and error policy end up in each instance."""
        policy = LoggingErrorPolicy()
        verifier = AllowAll()
        cls = server_class("tcp", lambda: ThreadingDispatcher(daemon=True), verifier=verifier, error_policy=policy)
        assert cls.__name__ == "CustomTCPServer"
        assert cls.__module__ == "composable_server.factories"
        server = cls(("127.0.0.1", 0), BaseRequestHandler, False)
        try:
            assert isinstance(server.dispatcher, ThreadingDispatcher) and server.dispatcher.daemon
            assert server.verifier is verifier
            assert server.error_policy is policy
        finally:
            server.server_close()

    def test_each_instance_gets_a_fresh_dispatcher(self) -> None:
        """The dispatcher factory is called once per server."""
        cls = server_class("tcp", SyncDispatcher)
        a = cls(("127.0.0.1", 0), BaseRequestHandler, False)
        b = cls(("127.0.0.1", 0), BaseRequestHandler, False)
        try:
            assert a.dispatcher is not b.dispatcher
        finally:
            a.server_close()
            b.server_close()

    def test_unknown_transport(self) -> None:
        """An unknown transport name is a ValueError naming the choices."""
        with pytest.raises(ValueError, match="tcp, udp"):
            server_class("sctp", "sync")  # type: ignore[call-overload]  # the point of the test

    def test_unknown_dispatcher(self) -> None:
        """An unknown dispatcher name is a ValueError naming the choices."""
        with pytest.raises(ValueError, match="sync, threading, forking"):
            server_class("tcp", "async")  # type: ignore[call-overload]  # the point of the test


class TestConvenience:
    def test_make_tcp_server(self) -> None:
        """make_tcp_server wires a TCP transport, a stream acceptor and the options."""
        server = make_tcp_server(
            ("127.0.0.1", 0), _noop, reuse_address=False, reuse_port=True, backlog=7, bind_and_activate=False
        )
        try:
            assert_type(server, Server[socket.socket, InetAddress])
            assert isinstance(server.transport, TCPTransport)
            assert (server.transport.reuse_address, server.transport.reuse_port) == (False, True)
            assert server.transport.backlog == 7
            assert isinstance(server.acceptor, StreamAcceptor)
            assert isinstance(server.dispatcher, SyncDispatcher)
        finally:
            server.server_close()

    def test_make_udp_server(self) -> None:
        """make_udp_server wires a UDP transport and a datagram acceptor of the given size."""
        dispatcher = ThreadingDispatcher()
        server = make_udp_server(
            ("127.0.0.1", 0), _noop, max_packet_size=1200, dispatcher=dispatcher, bind_and_activate=False
        )
        try:
            assert_type(server, Server[DatagramRequest, InetAddress])
            assert isinstance(server.transport, UDPTransport)
            assert isinstance(server.acceptor, DatagramAcceptor) and server.acceptor.max_packet_size == 1200
            assert server.dispatcher is dispatcher
        finally:
            server.server_close()

    def test_make_udp_server_datagram_handler(self) -> None:
        """datagram_handler= serves a DatagramHandler through a DatagramResponder."""

        class Echo:
            def handle_datagram(self, data: bytes, client_address: InetAddress) -> bytes:
                return data

        echo = Echo()
        server = make_udp_server(("127.0.0.1", 0), datagram_handler=echo, bind_and_activate=False)
        try:
            assert_type(server, Server[DatagramRequest, InetAddress])
            assert isinstance(server.handler, DatagramResponder) and server.handler.handler is echo
        finally:
            server.server_close()

    @pytest.mark.parametrize("maker", ["udp", "unix"])
    def test_datagram_factories_need_exactly_one_handler(self, maker: str, tmp_path: Path) -> None:
        """Neither or both of handler and datagram_handler is a TypeError naming the factory."""

        class Echo:
            def handle_datagram(self, data: bytes, client_address: object) -> bytes:
                return data

        def make(**handlers: object) -> object:
            if maker == "udp":
                return make_udp_server(("127.0.0.1", 0), bind_and_activate=False, **handlers)  # type: ignore[arg-type]  # the point of the test
            return make_unix_datagram_server(str(tmp_path / "d"), bind_and_activate=False, **handlers)  # type: ignore[arg-type]  # as above

        with pytest.raises(TypeError, match=r"make_(udp|unix_datagram)_server\(\) needs a handler or a datagram_handler, got neither"):
            make()
        with pytest.raises(TypeError, match="got both"):
            make(handler=_noop, datagram_handler=Echo())

    def test_make_tcp_server_line_handler(self) -> None:
        """line_handler= serves a LineHandler through a LineResponder."""
        from composable_server.handlers import LineResponder

        class Echo:
            def handle_line(self, line: bytes, client_address: InetAddress) -> bytes:
                return line

        echo = Echo()
        server = make_tcp_server(("127.0.0.1", 0), line_handler=echo, bind_and_activate=False)
        try:
            assert_type(server, Server[socket.socket, InetAddress])
            assert isinstance(server.handler, LineResponder) and server.handler.handler is echo
        finally:
            server.server_close()

    @pytest.mark.parametrize("maker", ["tcp", "unix"])
    def test_stream_factories_need_exactly_one_handler(self, maker: str, tmp_path: Path) -> None:
        """Neither or both of handler and line_handler is a TypeError naming the factory."""

        class Echo:
            def handle_line(self, line: bytes, client_address: object) -> bytes:
                return line

        def make(**handlers: object) -> object:
            if maker == "tcp":
                return make_tcp_server(("127.0.0.1", 0), bind_and_activate=False, **handlers)  # type: ignore[arg-type]  # the point of the test
            return make_unix_stream_server(str(tmp_path / "s"), bind_and_activate=False, **handlers)  # type: ignore[arg-type]  # as above

        with pytest.raises(TypeError, match=r"make_(tcp|unix_stream)_server\(\) needs a handler or a line_handler, got neither"):
            make()
        with pytest.raises(TypeError, match="takes a handler or a line_handler, got both"):
            make(handler=_noop, line_handler=Echo())

    def test_make_unix_stream_server(self, tmp_path: Path) -> None:
        """make_unix_stream_server wires a Unix stream transport that removes its file."""
        server = make_unix_stream_server(str(tmp_path / "s"), _noop, bind_and_activate=False)
        try:
            assert_type(server, Server[socket.socket, UnixAddress])
            assert isinstance(server.transport, UnixStreamTransport) and server.transport.unlink_on_close
            assert isinstance(server.acceptor, StreamAcceptor)
        finally:
            server.server_close()

    def test_make_unix_datagram_server(self, tmp_path: Path) -> None:
        """make_unix_datagram_server wires a Unix datagram transport and acceptor."""
        server = make_unix_datagram_server(
            str(tmp_path / "d"), _noop, unlink_on_close=False, bind_and_activate=False
        )
        try:
            assert_type(server, Server[DatagramRequest, UnixAddress])
            assert isinstance(server.transport, UnixDatagramTransport) and not server.transport.unlink_on_close
            assert isinstance(server.acceptor, DatagramAcceptor)
        finally:
            server.server_close()


class TestLayers:
    def test_table_names_are_the_private_modules_objects(self) -> None:
        """factories re-exports the class table of composable_server._classes under the same names."""
        from composable_server import _classes

        for name in _classes.__all__:
            if name != "new_class":
                assert getattr(factories, name) is getattr(_classes, name), name

    def test_package_exports_the_wrappers(self) -> None:
        """The make_*_server functions are importable from the package, as the factories' own."""
        import composable_server

        assert composable_server.make_tcp_server is make_tcp_server
        assert composable_server.make_unix_datagram_server is make_unix_datagram_server

    @pytest.mark.timeout(30)
    @pytest.mark.parametrize(
        ("module", "absent"),
        [
            ("composable_server", "composable_server.factories"),
            ("composable_server.factories", "composable_server.compat"),
            ("composable_server.compat", "composable_server.factories"),
        ],
    )
    def test_import_does_not_load_the_other_layer(self, module: str, absent: str) -> None:
        """Importing one layer (in a fresh interpreter) does not load the other: compat and factories stand apart."""
        code = f"import sys, {module}; print({absent!r} in sys.modules)"
        result = run_process([sys.executable, "-c", code], timeout=25)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "False"
