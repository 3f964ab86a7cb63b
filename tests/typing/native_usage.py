"""Type tests for the native (composition) API; checked by mypy, never run.

Passing cases use ``assert_type``; each misuse carries a
``# type: ignore[code]`` that ``warn_unused_ignores`` turns into an
assertion: if mypy stopped rejecting the line, the ignore would be unused
and the check would fail.
"""

from __future__ import annotations

import socket
from typing import assert_type

from composable_server import (
    AcceptErrorPolicy,
    Acceptor,
    AllowAll,
    DatagramAcceptor,
    DatagramRequest,
    DatagramRequestHandler,
    Dispatcher,
    ErrorPolicy,
    ForkingDispatcher,
    InetAddress,
    Prefork,
    PrintTracebackErrorPolicy,
    ReRaiseErrorPolicy,
    Server,
    StreamAcceptor,
    StreamRequestHandler,
    SyncDispatcher,
    TCPTransport,
    ThreadingDispatcher,
    ThreadPoolDispatcher,
    TimeoutPolicy,
    Transport,
    UDPTransport,
    UnixAddress,
    UnixStreamTransport,
    Verifier,
    all_of,
    allow_networks,
    make_tcp_server,
    per_ip_cap,
)
from composable_server.policies import AcceptBackoff, ConnectionTimeouts, LoggingErrorPolicy, NoTimeout, PrintTraceback


class Upper(StreamRequestHandler[InetAddress]):
    def handle(self) -> None:
        assert_type(self.request, socket.socket)
        assert_type(self.client_address, InetAddress)
        self.wfile.write(self.rfile.readline().upper())


class UnixUpper(StreamRequestHandler[UnixAddress]):
    def handle(self) -> None:
        assert_type(self.client_address, UnixAddress)


class Reply(DatagramRequestHandler[InetAddress]):
    def handle(self) -> None:
        data, sock = self.request
        assert_type(data, bytes)
        assert_type(sock, socket.socket)


def composition_infers_precise_types() -> None:
    tcp = Server(transport=TCPTransport(("127.0.0.1", 0)), acceptor=StreamAcceptor(), handler=Upper)
    assert_type(tcp, Server[socket.socket, InetAddress])
    udp = Server(transport=UDPTransport(("127.0.0.1", 0)), acceptor=DatagramAcceptor(), handler=Reply)
    assert_type(udp, Server[DatagramRequest, InetAddress])
    unix = Server(transport=UnixStreamTransport("/tmp/s"), acceptor=StreamAcceptor(), handler=UnixUpper)
    assert_type(unix, Server[socket.socket, UnixAddress])
    assert_type(tcp.server_address, InetAddress)


def every_component_fits_its_protocol() -> None:
    transports: list[Transport[socket.socket, InetAddress]] = [TCPTransport(("::1", 0))]
    acceptors: list[Acceptor[DatagramRequest, InetAddress]] = [DatagramAcceptor(65535)]
    dispatchers: list[Dispatcher] = [
        SyncDispatcher(),
        ThreadingDispatcher(max_threads=8),
        ThreadPoolDispatcher(4),
        ForkingDispatcher(),
    ]
    verifiers: list[Verifier[socket.socket, InetAddress]] = [
        AllowAll(),
        all_of(allow_networks("127.0.0.0/8"), per_ip_cap(4)),
    ]
    errors: list[ErrorPolicy] = [PrintTraceback(), LoggingErrorPolicy(), PrintTracebackErrorPolicy(), ReRaiseErrorPolicy()]
    timeouts: list[TimeoutPolicy] = [NoTimeout(), ConnectionTimeouts()]
    accept_errors: list[AcceptErrorPolicy] = [AcceptBackoff()]
    del transports, acceptors, dispatchers, verifiers, errors, timeouts, accept_errors


def the_package_exports_the_conveniences() -> None:
    # make_*_server and Prefork, loaded on first use at run time, are typed as the factories' own.
    server = make_tcp_server(("127.0.0.1", 0), Upper, bind_and_activate=False)
    assert_type(server, Server[socket.socket, InetAddress])
    prefork = Prefork(TCPTransport(("127.0.0.1", 0)), lambda transport: server, 2, bind_and_activate=False)
    assert_type(prefork.server_address, InetAddress)


def miswiring_is_rejected() -> None:
    # A stream handler on a datagram server.
    Server(transport=UDPTransport(("127.0.0.1", 0)), acceptor=DatagramAcceptor(), handler=Upper)  # type: ignore[misc]
    # A stream acceptor on a datagram transport: no request type fits both.
    Server(transport=UDPTransport(("127.0.0.1", 0)), acceptor=StreamAcceptor(), handler=Reply)  # type: ignore[misc]
    # An IP handler on a Unix transport: no address type fits both.
    Server(transport=UnixStreamTransport("/tmp/s"), acceptor=StreamAcceptor(), handler=Upper)  # type: ignore[misc]
    # A datagram handler on a stream server.
    Server(transport=TCPTransport(("127.0.0.1", 0)), acceptor=StreamAcceptor(), handler=Reply)  # type: ignore[misc]


def datagram_request_is_a_tuple() -> None:
    class Wrong(DatagramRequestHandler[InetAddress]):
        def handle(self) -> None:
            self.request.recv(1)  # type: ignore[attr-defined]


def http_server_handlers_park() -> None:
    import functools
    import http.server

    from composable_server.httpserver import ParkingHTTPRequestHandler, make_http_server, parking_http
    from composable_server.interfaces import Verdict

    # A user's subclass of the mix-in and a stdlib handler type-checks, with
    # both the stdlib attributes and the verdict.
    class Files(ParkingHTTPRequestHandler, http.server.SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            assert_type(self.close_connection, bool)
            assert_type(self.verdict, Verdict)
            super().do_GET()

    assert_type(parking_http(http.server.SimpleHTTPRequestHandler), type[http.server.SimpleHTTPRequestHandler])
    assert_type(parking_http(Files), type[Files])
    server = make_http_server(("127.0.0.1", 0), Files, threads=8, bind_and_activate=False)
    assert_type(server, Server[socket.socket, InetAddress])
    make_http_server(("127.0.0.1", 0), functools.partial(Files, directory="/srv"), bind_and_activate=False)
    parking_http(StreamRequestHandler)  # type: ignore[type-var]
    make_http_server("/tmp/s", Files)  # type: ignore[arg-type]


def lean_datagram_handlers_type_check() -> None:
    from composable_server.factories import make_udp_server, make_unix_datagram_server
    from composable_server.handlers import DatagramResponder
    from composable_server.interfaces import DatagramHandler, UnixAddress

    class Echo:
        def handle_datagram(self, data: bytes, client_address: InetAddress) -> bytes | None:
            return data

    class AnyAddress:
        # Contravariant: a handler of any address serves IPv4 and Unix datagrams alike.
        def handle_datagram(self, data: bytes, client_address: object) -> bytes:
            return data

    class Wrong:
        def handle_datagram(self, data: str, client_address: InetAddress) -> str:
            return data

    handler: DatagramHandler[InetAddress] = Echo()
    assert_type(DatagramResponder(handler), DatagramResponder[InetAddress])
    udp = make_udp_server(("127.0.0.1", 0), datagram_handler=Echo(), bind_and_activate=False)
    assert_type(udp, Server[tuple[bytes, socket.socket], InetAddress])
    make_unix_datagram_server("/tmp/d", datagram_handler=AnyAddress(), bind_and_activate=False)
    make_udp_server(("127.0.0.1", 0), datagram_handler=Wrong())  # type: ignore[arg-type]
    unix_only: DatagramHandler[UnixAddress] = AnyAddress()
    make_udp_server(("127.0.0.1", 0), datagram_handler=unix_only)  # type: ignore[arg-type]


def lean_line_handlers_type_check() -> None:
    from composable_server.factories import make_tcp_server, make_unix_stream_server
    from composable_server.handlers import LineResponder
    from composable_server.interfaces import LineHandler, UnixAddress

    class Echo:
        def handle_line(self, line: bytes, client_address: InetAddress) -> bytes | None:
            return line

    class AnyAddress:
        # Contravariant: a handler of any address serves TCP and Unix connections alike.
        def handle_line(self, line: bytes, client_address: object) -> bytes:
            return line

    class Wrong:
        def handle_line(self, line: str, client_address: InetAddress) -> str:
            return line

    handler: LineHandler[InetAddress] = Echo()
    assert_type(LineResponder(handler), LineResponder[InetAddress])
    assert_type(LineResponder(handler, max_line_length=1024), LineResponder[InetAddress])
    tcp = make_tcp_server(("127.0.0.1", 0), line_handler=Echo(), bind_and_activate=False)
    assert_type(tcp, Server[socket.socket, InetAddress])
    unix = make_unix_stream_server("/tmp/s", line_handler=AnyAddress(), bind_and_activate=False)
    assert_type(unix, Server[socket.socket, UnixAddress])
    make_tcp_server(("127.0.0.1", 0), line_handler=Wrong())  # type: ignore[arg-type]
    unix_only: LineHandler[UnixAddress] = AnyAddress()
    make_tcp_server(("127.0.0.1", 0), line_handler=unix_only)  # type: ignore[arg-type]
