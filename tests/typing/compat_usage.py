"""Type tests for composable_server.compat and the factories (checked by
``mypy --strict``, never run).

Passing cases use ``assert_type``; rejected cases carry a
``# type: ignore[code]`` that ``warn_unused_ignores`` turns into an assertion
that mypy does reject them.  The user code is written the way it would be for
stdlib socketserver against typeshed's stubs.
"""

from __future__ import annotations

import http.server
import io
import os
import socket
import socketserver
from typing import TYPE_CHECKING, Any, ClassVar, assert_type

from composable_server import InetAddress, Server, compat, handlers
from composable_server import compat as stdlib_style  # the one-line switch
from composable_server.factories import make_tcp_server, make_udp_server, server_class

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from 3.12 on

# -- handlers, without type arguments ----------------------------------------


class Upper(compat.StreamRequestHandler):
    """A stream handler as written for stdlib."""

    # Annotated: a bare `timeout = 5.0` narrows the base's `float | None`,
    # which the project's mutable-override check reports (typeshed alike).
    timeout: ClassVar[float | None] = 5.0

    def handle(self) -> None:
        assert_type(self.rfile, io.BufferedIOBase)
        assert_type(self.wfile, io.BufferedIOBase)
        assert_type(self.connection, socket.socket)
        for line in self.rfile:
            self.wfile.write(line.upper())


class Echo(compat.DatagramRequestHandler):
    """A datagram handler: the request is ``(data, socket)``."""

    def handle(self) -> None:
        data, sock = self.request
        assert_type(data, bytes)
        assert_type(sock, socket.socket)
        assert_type(self.packet, bytes)
        sock.sendto(data.upper(), self.client_address)
        self.wfile.write(self.rfile.read())


class MisusedDatagram(compat.DatagramRequestHandler):
    """Treating a datagram request as a connected socket is rejected."""

    def handle(self) -> None:
        self.request.recv(1024)  # type: ignore[attr-defined]
        self.request.sendall(b"x")  # type: ignore[attr-defined]


class Generic(compat.BaseRequestHandler):
    """BaseRequestHandler's request and address are Any, as in typeshed."""

    def handle(self) -> None:
        assert_type(self.request, Any)
        assert_type(self.client_address, Any)
        # A compat handler is handed a compat server, as typeshed's is a BaseServer.
        assert_type(self.server, compat.BaseServer)
        assert_type(self.server.socket, socket.socket)


# -- servers: user subclasses of factory-made classes --------------------------


class Plain(compat.TCPServer):
    """A user subclass of TCPServer type-checks (the factory-made class is a class to mypy)."""

    allow_reuse_address = True

    def server_activate(self) -> None:
        super().server_activate()
        assert_type(self.server_address[:2], tuple[str, int])


def plain_subclass() -> None:
    server = Plain(("127.0.0.1", 0), Upper)
    assert_type(server, Plain)
    assert_type(server.server_address[:2], tuple[str, int])
    host, port = server.server_address[:2]
    assert_type(host, str)
    assert_type(port, int)
    with compat.UnixStreamServer("/tmp/s", Upper, bind_and_activate=False) as unix:
        assert_type(unix.server_address, str | bytes | os.PathLike[str])
    assert_type(compat.BaseServer(("x", 1), Generic).server_address, tuple[Any, ...] | str | Buffer)


class Guarded(compat.ThreadingTCPServer):
    """Hook overrides with typeshed's signatures."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    address_family = socket.AF_INET6

    def verify_request(self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any) -> bool:
        return bool(client_address[0] == "::1") and super().verify_request(request, client_address)

    def handle_error(self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any) -> None:
        super().handle_error(request, client_address)

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        super().server_bind()


class Datagrams(compat.UDPServer):
    max_packet_size = 1500

    def __init__(self, address: tuple[str, int]) -> None:
        self.allow_reuse_port = True  # set before super().__init__
        super().__init__(address, Echo)

    def handle_timeout(self) -> None:
        print("idle")


class Mixed(compat.ForkingMixIn, compat.UnixStreamServer):
    max_children = 8
    block_on_close = False


class BadAttributes(compat.ThreadingUDPServer):
    daemon_threads = "yes"  # type: ignore[assignment]
    max_packet_size = 1.5  # type: ignore[assignment]


def use_servers() -> None:
    server = Guarded(("::1", 0), Upper)
    assert_type(server, Guarded)
    assert_type(server.socket, socket.socket)
    assert_type(server.fileno(), int)
    assert_type(server.timeout, float | None)
    # typeshed's types, narrowed to what compat accepts: str hosts only.
    assert_type(server.server_address, tuple[str, int] | tuple[str, int, int, int])
    assert_type(server.server_address[:2], tuple[str, int])
    assert_type(server.get_request(), tuple[socket.socket, Any])
    server.socket = socket.socket()  # the TLS pattern assigns the wrapped socket
    server.timeout = 2.5
    server.serve_forever(poll_interval=0.1)
    server.shutdown()
    server.server_close()

    with Datagrams(("127.0.0.1", 0)) as udp:
        assert_type(udp, Datagrams)
        assert_type(udp.get_request(), tuple[tuple[bytes, socket.socket], Any])
        udp.handle_request()

    with Mixed("/tmp/s", Upper, bind_and_activate=False) as forking:
        assert_type(forking.active_children, set[int] | None)
        forking.collect_children(blocking=True)

    # An engine Server is expected: a compat server is one.
    native: Server[socket.socket, InetAddress] = compat.TCPServer(("127.0.0.1", 0), Upper)
    native.server_close()


def rejected_servers() -> None:
    compat.TCPServer(("127.0.0.1", 0), 42)  # type: ignore[arg-type]
    compat.TCPServer((b"127.0.0.1", 0), Upper)  # type: ignore[arg-type]  # compat raises AddressError
    compat.TCPServer("/tmp/s", Upper)  # type: ignore[arg-type]
    compat.UnixStreamServer(("127.0.0.1", 0), Upper)  # type: ignore[arg-type]
    compat.TCPServer(("127.0.0.1", "80"), Upper)  # type: ignore[arg-type]
    server = compat.TCPServer(("127.0.0.1", 0), Upper)
    server.timeout = "soon"  # type: ignore[assignment]
    server.verify_request(b"data", ("127.0.0.1", 1))  # type: ignore[arg-type]


class NarrowOverride(compat.TCPServer):
    # Narrower than typeshed's request type: rejected, as it is with typeshed.
    def verify_request(self, request: bytes, client_address: Any) -> bool:  # type: ignore[override]
        return True


# -- handlers are interchangeable ---------------------------------------------


def interchangeable_handlers() -> None:
    # stdlib handler classes (typed with socketserver.BaseServer) are accepted.
    compat.ThreadingTCPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    compat.TCPServer(("127.0.0.1", 0), socketserver.StreamRequestHandler)

    # The core's generic handlers, too.
    class Core(handlers.StreamRequestHandler[InetAddress]):
        pass

    compat.TCPServer(("127.0.0.1", 0), Core)


# -- the stdlib-shaped program after the one-line switch ----------------------


class LineHandler(stdlib_style.StreamRequestHandler):
    def handle(self) -> None:
        self.data = self.rfile.readline().strip()
        self.wfile.write(self.data.upper())


def stdlib_program() -> None:
    with stdlib_style.TCPServer(("localhost", 9999), LineHandler) as server:
        server.serve_forever()


# -- factories ----------------------------------------------------------------


def factories() -> None:
    assert_type(server_class("tcp", "threading"), type[compat.TCPServer])
    assert_type(server_class("udp"), type[compat.UDPServer])
    assert_type(server_class("unix_stream", "forking"), type[compat.UnixStreamServer])
    assert_type(server_class("unix_datagram"), type[compat.UnixDatagramServer])
    made = server_class("udp", "threading", name="Made")
    instance = made(("127.0.0.1", 0), Echo)
    assert_type(instance, compat.UDPServer)
    server_class("sctp")  # type: ignore[call-overload]

    class Core(handlers.StreamRequestHandler[InetAddress]):
        pass

    class CoreDatagram(handlers.DatagramRequestHandler[InetAddress]):
        pass

    tcp = make_tcp_server(("127.0.0.1", 0), Core)
    assert_type(tcp, Server[socket.socket, InetAddress])
    udp = make_udp_server(("127.0.0.1", 0), CoreDatagram)
    assert_type(udp, Server[tuple[bytes, socket.socket], InetAddress])
    make_tcp_server(("127.0.0.1", 0), CoreDatagram)  # type: ignore[arg-type]
    make_udp_server(("127.0.0.1", 0), Core)  # type: ignore[arg-type]
