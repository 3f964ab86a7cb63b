"""Transports on real sockets: dual-stack IPv6, SO_REUSEPORT, SO_REUSEADDR,
the listen backlog, address errors, socket-file cleanup and Linux abstract names."""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from composable_server import (
    AddressError,
    BindError,
    DatagramAcceptor,
    Server,
    ServerClosedError,
    StreamAcceptor,
    TCPTransport,
    UDPTransport,
    UnixDatagramTransport,
    UnixStreamTransport,
)
from ._support import (
    CLIENT_TIMEOUT,
    Family,
    datagram_handler,
    ipv6_available,
    read_to_eof,
    running,
    stream_handler,
)

needs_ipv6 = pytest.mark.skipif(not ipv6_available(), reason="IPv6 loopback (::1) is not available")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux abstract socket namespace")


class _PeerHandlerRecorder:
    """Collects the client addresses a handler saw (sync/threading dispatch only)."""

    def __init__(self) -> None:
        self.addresses: list[Any] = []

    def stream(self, request: socket.socket, client_address: object, server: object) -> None:
        self.addresses.append(client_address)
        with request.makefile("rb") as rfile:
            request.sendall(rfile.readline().upper())

    def datagram(self, request: tuple[bytes, socket.socket], client_address: Any, server: object) -> None:
        self.addresses.append(client_address)
        data, sock = request
        sock.sendto(data.upper(), client_address)


def _tcp_server(transport: TCPTransport, handler: Any = None) -> Server[socket.socket, Any]:
    server: Server[socket.socket, Any] = Server(
        transport=transport,
        acceptor=StreamAcceptor(),
        handler=stream_handler(bytes.upper) if handler is None else handler,
    )
    return server


def _tcp4_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(data + b"\n")
        return read_to_eof(sock)


class TestDualStack:
    @needs_ipv6
    @pytest.mark.timeout(10)
    def test_dual_stack_accepts_ipv4_clients(self) -> None:
        """dual_stack=True on "::" serves an IPv4 client, seen as ::ffff:127.0.0.1."""
        recorder = _PeerHandlerRecorder()
        try:
            server = _tcp_server(TCPTransport(("::", 0), dual_stack=True), recorder.stream)
        except BindError as exc:  # pragma: no cover - depends on the host
            pytest.skip(f"cannot bind a dual-stack socket: {exc}")
        with running(server):
            assert server.transport.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
            port = server.server_address[1]
            assert _tcp4_request(port, b"via ipv4") == b"VIA IPV4\n"
            with socket.create_connection(("::1", port), timeout=CLIENT_TIMEOUT) as sock:
                sock.sendall(b"via ipv6\n")
                assert read_to_eof(sock) == b"VIA IPV6\n"
        assert [a[0] for a in recorder.addresses] == ["::ffff:127.0.0.1", "::1"]

    @needs_ipv6
    @pytest.mark.timeout(10)
    def test_dual_stack_udp(self) -> None:
        """A dual-stack UDP transport answers an IPv4 client."""
        recorder = _PeerHandlerRecorder()
        server: Server[tuple[bytes, socket.socket], Any] = Server(
            transport=UDPTransport(("::", 0), dual_stack=True),
            acceptor=DatagramAcceptor(),
            handler=recorder.datagram,
        )
        with running(server), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(CLIENT_TIMEOUT)
            sock.sendto(b"dgram", ("127.0.0.1", server.server_address[1]))
            assert sock.recv(100) == b"DGRAM"
        assert [a[0] for a in recorder.addresses] == ["::ffff:127.0.0.1"]

    @needs_ipv6
    @pytest.mark.timeout(10)
    def test_ipv6_only_refuses_ipv4_clients(self) -> None:
        """dual_stack=False on "::" sets IPV6_V6ONLY: an IPv4 client is refused."""
        with running(_tcp_server(TCPTransport(("::", 0), dual_stack=False))) as server:
            assert server.transport.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                assert sock.connect_ex(("127.0.0.1", server.server_address[1])) == errno.ECONNREFUSED


class TestSocketOptions:
    @pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT")
    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("transport_class", [TCPTransport, UDPTransport])
    def test_reuse_port_shares_a_port(self, transport_class: type[TCPTransport] | type[UDPTransport]) -> None:
        """Two transports with reuse_port=True bind (and listen on) the same port."""
        first = transport_class(("127.0.0.1", 0), reuse_port=True)
        try:
            first.bind()
            first.activate()
            second = transport_class(first.server_address, reuse_port=True)
            try:
                second.bind()
                second.activate()
                assert second.server_address == first.server_address
                assert second.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            finally:
                second.close()
        finally:
            first.close()

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("transport_class", [TCPTransport, UDPTransport])
    def test_without_reuse_port_the_port_is_taken(
        self, transport_class: type[TCPTransport] | type[UDPTransport]
    ) -> None:
        """Without reuse_port a second transport on the same port fails with EADDRINUSE."""
        first = transport_class(("127.0.0.1", 0))
        try:
            first.bind()
            first.activate()
            second = transport_class(first.server_address)
            with pytest.raises(BindError) as info:
                second.bind()
            second.close()
            assert info.value.errno == errno.EADDRINUSE
        finally:
            first.close()

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("reuse_address", [True, False])
    def test_reuse_address_and_time_wait(self, reuse_address: bool) -> None:
        """A restarted TCP server rebinds its port despite a TIME_WAIT
        connection with reuse_address (the default), and cannot without it."""
        with running(_tcp_server(TCPTransport(("127.0.0.1", 0)))) as server:
            port = server.server_address[1]
            # The server shuts the connection down first, so its side ends in TIME_WAIT.
            assert _tcp4_request(port, b"bye") == b"BYE\n"
        again = TCPTransport(("127.0.0.1", port), reuse_address=reuse_address)
        try:
            if reuse_address:
                again.bind()
                assert again.server_address == ("127.0.0.1", port)
            else:
                with pytest.raises(BindError) as info:
                    again.bind()
                assert info.value.errno == errno.EADDRINUSE
        finally:
            again.close()

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("backlog", [None, 1, 7])
    @pytest.mark.parametrize("family", [Family.TCP4, Family.UNIX_STREAM], ids=["tcp4", "unixstream"])
    def test_backlog_is_passed_to_listen(self, family: Family, backlog: int | None, short_tmp_path: Path) -> None:
        """activate() calls listen() with the configured backlog (default SOMAXCONN)."""
        calls: list[int] = []

        class RecordingSocket(socket.socket):
            def listen(self, backlog: int = 0, /) -> None:
                calls.append(backlog)
                super().listen(backlog)

        transport: TCPTransport | UnixStreamTransport
        if family is Family.TCP4:
            address = ("127.0.0.1", 0)
            transport = TCPTransport(address) if backlog is None else TCPTransport(address, backlog=backlog)
            sock = RecordingSocket(socket.AF_INET, socket.SOCK_STREAM)
        else:
            path = short_tmp_path / "backlog.sock"
            transport = UnixStreamTransport(path) if backlog is None else UnixStreamTransport(path, backlog=backlog)
            sock = RecordingSocket(socket.AF_UNIX, socket.SOCK_STREAM)
        transport.socket = sock
        try:
            transport.bind()
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0
            transport.activate()
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        finally:
            transport.close()
        assert calls == [socket.SOMAXCONN if backlog is None else backlog]

    @pytest.mark.timeout(10)
    def test_negative_backlog_is_rejected(self) -> None:
        """A negative backlog is refused when the transport is built."""
        with pytest.raises(ValueError, match="backlog"):
            TCPTransport(("127.0.0.1", 0), backlog=-1)


_LONG_PATH = "/tmp/" + "x" * 200
_LONG_ABSTRACT = b"\0" + b"y" * 108

# (transport class, address, a substring the message must contain)
ADDRESS_ERRORS: list[tuple[Callable[[Any], object], object, str]] = [
    (UnixStreamTransport, _LONG_PATH, repr(_LONG_PATH)),
    (UnixDatagramTransport, _LONG_PATH, repr(_LONG_PATH)),
    (UnixStreamTransport, _LONG_ABSTRACT, repr(_LONG_ABSTRACT)),
    (UnixStreamTransport, "/tmp/a\0b", repr("/tmp/a\0b")),
    (UnixStreamTransport, ("127.0.0.1", 0), "('127.0.0.1', 0)"),
    (UnixDatagramTransport, 1234, "1234"),
    (TCPTransport, "/tmp/server.sock", "'/tmp/server.sock'"),
    (TCPTransport, ("127.0.0.1", 70000), "70000"),
    (TCPTransport, ("127.0.0.1", "80"), "'80'"),
    (TCPTransport, ("127.0.0.1", 0, 0), "('127.0.0.1', 0, 0)"),
    (UDPTransport, (b"127.0.0.1", 0), "b'127.0.0.1'"),
    (UDPTransport, ("::1", 0, -1, 0), "-1"),
]


class TestAddressErrors:
    @pytest.mark.timeout(10)
    @pytest.mark.parametrize(
        ("transport_class", "address", "named"),
        ADDRESS_ERRORS,
        ids=[f"{getattr(cls, '__name__', cls)}-{i}" for i, (cls, _, _) in enumerate(ADDRESS_ERRORS)],
    )
    def test_bad_address(self, transport_class: Callable[[Any], object], address: object, named: str) -> None:
        """A bad address fails when the transport is built, with an
        AddressError (a ValueError) that names the value."""
        with pytest.raises(AddressError) as info:
            transport_class(address)
        assert isinstance(info.value, ValueError)
        assert named in str(info.value)
        assert info.value.address == address

    @pytest.mark.timeout(10)
    def test_unix_path_limit_is_sun_path(self, short_tmp_path: Path) -> None:
        """The longest path the kernel accepts (107 bytes) binds; one byte more is an AddressError."""
        base = str(short_tmp_path) + "/"
        longest = base + "p" * (107 - len(base))
        transport = UnixStreamTransport(longest)
        try:
            transport.bind()
            assert os.path.exists(longest)
        finally:
            transport.close()
        with pytest.raises(AddressError, match="limit is 107"):
            UnixStreamTransport(longest + "p")

    @pytest.mark.timeout(10)
    def test_wrong_family(self) -> None:
        """An IP transport forced to AF_UNIX is an AddressError naming the family."""
        with pytest.raises(AddressError, match="AF_UNIX"):
            TCPTransport(("127.0.0.1", 0), family=socket.AF_UNIX)


UnixTransportClass = type[UnixStreamTransport] | type[UnixDatagramTransport]
UNIX_CLASSES = [UnixStreamTransport, UnixDatagramTransport]


class TestUnixSocketFile:
    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("transport_class", UNIX_CLASSES, ids=["stream", "dgram"])
    def test_close_removes_the_file(self, transport_class: UnixTransportClass, short_tmp_path: Path) -> None:
        """close() removes the socket file the transport created; closing twice is a no-op."""
        path = short_tmp_path / "own.sock"
        transport = transport_class(path)
        transport.bind()
        transport.activate()
        assert path.is_socket()
        transport.close()
        assert not path.exists()
        transport.close()
        assert transport.fileno() == -1
        with pytest.raises(ServerClosedError):
            transport.socket  # noqa: B018 - the property raises

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("transport_class", UNIX_CLASSES, ids=["stream", "dgram"])
    def test_replaced_file_is_left_alone(self, transport_class: UnixTransportClass, short_tmp_path: Path) -> None:
        """If another socket replaced the file, close() leaves the newcomer's file in place."""
        path = short_tmp_path / "shared.sock"
        old = transport_class(path)
        old.bind()
        try:
            path.unlink()  # e.g. a new server instance starting up
            newcomer = transport_class(path)
            newcomer.bind()
            try:
                old.close()
                assert path.is_socket(), "close() removed another transport's socket file"
            finally:
                newcomer.close()
            assert not path.exists()
        finally:
            old.close()

    @pytest.mark.timeout(10)
    def test_replaced_by_a_regular_file_is_left_alone(self, short_tmp_path: Path) -> None:
        """A regular file that replaced the socket file is never removed."""
        path = short_tmp_path / "regular.sock"
        transport = UnixStreamTransport(path)
        transport.bind()
        path.unlink()
        path.write_text("not a socket")
        transport.close()
        assert path.read_text() == "not a socket"

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("transport_class", UNIX_CLASSES, ids=["stream", "dgram"])
    def test_unlink_on_close_false_keeps_the_file(
        self, transport_class: UnixTransportClass, short_tmp_path: Path
    ) -> None:
        """With unlink_on_close=False the socket file stays after close()."""
        path = short_tmp_path / "kept.sock"
        transport = transport_class(path, unlink_on_close=False)
        transport.bind()
        transport.close()
        assert path.is_socket()

    @pytest.mark.timeout(10)
    def test_pathlike_address(self, short_tmp_path: Path) -> None:
        """A pathlib.Path is accepted and reported back as a str."""
        path = short_tmp_path / "pathlike.sock"
        transport = UnixStreamTransport(path)
        try:
            transport.bind()
            assert transport.server_address == str(path)
        finally:
            transport.close()


@linux_only
class TestAbstractNamespace:
    @pytest.mark.timeout(10)
    def test_abstract_stream_server(self) -> None:
        """A Unix stream server on an abstract name answers and leaves no file."""
        name = b"\0composable-server-test-%d-%s" % (os.getpid(), os.urandom(4).hex().encode())
        server: Server[socket.socket, Any] = Server(
            transport=UnixStreamTransport(name), acceptor=StreamAcceptor(), handler=stream_handler(bytes.upper)
        )
        with running(server):
            assert server.server_address == name
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(CLIENT_TIMEOUT)
                sock.connect(name)
                sock.sendall(b"abstract\n")
                assert read_to_eof(sock) == b"ABSTRACT\n"
        # The name is released on close: it can be bound again.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(name)

    @pytest.mark.timeout(10)
    def test_abstract_datagram_server(self) -> None:
        """A Unix datagram server on an abstract name answers a client with an abstract name."""
        tag = b"%d-%s" % (os.getpid(), os.urandom(4).hex().encode())
        name = b"\0composable-server-dgram-" + tag
        server: Server[tuple[bytes, socket.socket], Any] = Server(
            transport=UnixDatagramTransport(name),
            acceptor=DatagramAcceptor(),
            handler=datagram_handler(bytes.upper),
        )
        with running(server), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(CLIENT_TIMEOUT)
            sock.bind(b"\0composable-client-" + tag)
            sock.sendto(b"abstract", name)
            assert sock.recv(100) == b"ABSTRACT"


class TestNonBlockingListeners:
    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("kind", ["tcp", "udp", "unix", "unix-dgram"])
    def test_native_listeners_are_non_blocking(self, kind: str, tmp_path: Path) -> None:
        """Every native transport's socket is non-blocking once activated (a
        process that lost the race for a request gets EAGAIN); nonblocking=False
        keeps it blocking."""
        path = str(tmp_path / "s.sock")
        for nonblocking in (True, False):
            transport: TCPTransport | UDPTransport | UnixStreamTransport | UnixDatagramTransport
            if kind == "tcp":
                transport = TCPTransport(("127.0.0.1", 0), nonblocking=nonblocking)
            elif kind == "udp":
                transport = UDPTransport(("127.0.0.1", 0), nonblocking=nonblocking)
            elif kind == "unix":
                transport = UnixStreamTransport(path, nonblocking=nonblocking)
            else:
                transport = UnixDatagramTransport(path, nonblocking=nonblocking)
            try:
                transport.bind()
                transport.activate()
                assert transport.socket.gettimeout() == (0.0 if nonblocking else None)
            finally:
                transport.close()

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("family", ["udp", "unix-dgram"])
    def test_datagram_accept_with_nothing_pending_raises_eagain(self, family: str, tmp_path: Path) -> None:
        """DatagramAcceptor on a native datagram transport with nothing queued
        raises BlockingIOError at once instead of blocking."""
        transport: UDPTransport | UnixDatagramTransport = (
            UDPTransport(("127.0.0.1", 0)) if family == "udp" else UnixDatagramTransport(str(tmp_path / "s.sock"))
        )
        try:
            transport.bind()
            transport.activate()
            with pytest.raises(BlockingIOError):
                DatagramAcceptor().accept(transport)
        finally:
            transport.close()

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("name", ["UDPServer", "UnixDatagramServer", "TCPServer", "UnixStreamServer"])
    def test_compat_servers_keep_blocking_sockets(self, name: str, tmp_path: Path) -> None:
        """The compat classes keep stdlib's blocking listening socket."""
        from composable_server import compat

        cls = getattr(compat, name)
        address: object = str(tmp_path / "s.sock") if name.startswith("Unix") else ("127.0.0.1", 0)
        with cls(address, compat.BaseRequestHandler) as server:
            assert server.socket.gettimeout() is None
