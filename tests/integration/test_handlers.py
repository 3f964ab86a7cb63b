"""The request handlers on real sockets: StreamRequestHandler (rfile/wfile,
buffer sizes, timeout, TCP_NODELAY), DatagramRequestHandler and the lean
datagram mode (DatagramResponder)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from composable_server import compat
from composable_server import (
    BaseRequestHandler,
    Budget,
    ConnectionTimeouts,
    DatagramRequestHandler,
    NoTimeout,
    StreamRequestHandler,
    ThreadPoolDispatcher,
)
from composable_server.acceptors import DatagramAcceptor
from composable_server.factories import make_udp_server, make_unix_datagram_server
from composable_server.handlers import DatagramResponder
from composable_server.interfaces import DatagramRequest, InetAddress
from composable_server.server import Server
from composable_server.testing import MemoryVerifier
from composable_server.transports import UDPTransport

from ..unit.test_handlers import UpperDatagrams
from ._support import (
    CLIENT_TIMEOUT,
    Dispatch,
    Family,
    RecordingErrorPolicy,
    ServerKind,
    read_to_eof,
    running,
)

MakeKind = Callable[[Family, Dispatch], ServerKind]

# Tests whose client stays silent (or whose server speaks first) pass
# NoTimeout(), so that only the handler's own settings are in play, not the
# per-connection budget of the native default policy.

STREAM_FAMILIES = [Family.TCP4, Family.UNIX_STREAM]
DATAGRAM_FAMILIES = [Family.UDP4, Family.UNIX_DGRAM]


def _ids(families: list[Family]) -> list[str]:
    return [f.value for f in families]


class EchoAllHandler(StreamRequestHandler[Any]):
    """Reads until EOF, then writes it all back; records what write() returned."""

    written: ClassVar[list[int]] = []

    def handle(self) -> None:
        data = self.rfile.read()
        self.written.append(self.wfile.write(data))


class TestStreamRequestHandler:
    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("family", STREAM_FAMILIES, ids=_ids(STREAM_FAMILIES))
    def test_large_payload_is_echoed_completely(self, family: Family, make_kind: MakeKind) -> None:
        """A 4 MiB payload is read whole through rfile and sent whole through
        the unbuffered wfile (write() sends every byte and says so)."""
        payload = os.urandom(4 * 1024 * 1024)
        EchoAllHandler.written.clear()
        kind = make_kind(family, Dispatch.THREADING)
        with running(kind.build(EchoAllHandler)) as server, kind.connect(server) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            echoed = read_to_eof(sock)
        assert len(echoed) == len(payload)
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
        assert EchoAllHandler.written == [len(payload)]

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize(
        ("rbufsize", "wbufsize"),
        [(-1, 0), (0, 0), (1, 0), (-1, 1), (8192, 8192), (0, 1 << 20)],
    )
    def test_buffer_sizes(self, rbufsize: int, wbufsize: int, make_kind: MakeKind) -> None:
        """Line echo works with every rbufsize/wbufsize, including a write
        buffer larger than the reply, which finish() must flush."""

        class LineEcho(StreamRequestHandler[Any]):
            def handle(self) -> None:
                for line in self.rfile:
                    self.wfile.write(line[::-1].lstrip(b"\n") + b"\n")

        LineEcho.rbufsize = rbufsize
        LineEcho.wbufsize = wbufsize
        lines = [b"line %03d %s\n" % (i, b"x" * (i % 37)) for i in range(200)]
        kind = make_kind(Family.TCP4, Dispatch.SYNC)
        with running(kind.build(LineEcho)) as server, kind.connect(server) as sock:
            sock.sendall(b"".join(lines))
            sock.shutdown(socket.SHUT_WR)
            echoed = read_to_eof(sock)
        assert echoed == b"".join(line[::-1].lstrip(b"\n") + b"\n" for line in lines)

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("family", STREAM_FAMILIES, ids=_ids(STREAM_FAMILIES))
    def test_timeout_ends_a_silent_connection(self, family: Family, make_kind: MakeKind) -> None:
        """With the timeout class attribute, a silent client makes the handler
        raise socket.timeout, which goes to the error policy; the client sees EOF."""

        class Impatient(StreamRequestHandler[Any]):
            timeout: ClassVar[float | None] = 0.2

            def handle(self) -> None:
                self.rfile.readline()

        policy = RecordingErrorPolicy()
        kind = make_kind(family, Dispatch.THREADING)
        with running(kind.build(Impatient, error_policy=policy, timeout_policy=NoTimeout())) as server:
            with kind.connect(server) as sock:
                started = time.monotonic()
                assert read_to_eof(sock) == b""
                elapsed = time.monotonic() - started
            assert policy.wait_for(1)
        assert 0.15 <= elapsed < CLIENT_TIMEOUT
        [(_, exc)] = policy.errors
        assert isinstance(exc, socket.timeout)

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("nodelay", [False, True])
    def test_disable_nagle_algorithm(self, nodelay: bool, make_kind: MakeKind) -> None:
        """disable_nagle_algorithm sets TCP_NODELAY on the connection (and only then)."""

        class ReportNoDelay(StreamRequestHandler[Any]):
            disable_nagle_algorithm = nodelay

            def handle(self) -> None:
                value = self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                self.wfile.write(b"%d" % (value != 0))

        kind = make_kind(Family.TCP4, Dispatch.SYNC)
        with running(kind.build(ReportNoDelay, timeout_policy=NoTimeout())) as server, kind.connect(server) as sock:
            assert read_to_eof(sock) == (b"1" if nodelay else b"0")

    @pytest.mark.timeout(10)
    def test_handler_sees_request_address_and_server(self, make_kind: MakeKind) -> None:
        """The handler gets the connected socket, the client's address and the server."""
        seen: list[tuple[object, object, object]] = []

        class Inspect(StreamRequestHandler[Any]):
            def handle(self) -> None:
                seen.append((self.request, self.client_address, self.server))
                self.wfile.write(b"ok")

        kind = make_kind(Family.TCP4, Dispatch.SYNC)
        with running(kind.build(Inspect, timeout_policy=NoTimeout())) as server, kind.connect(server) as sock:
            assert read_to_eof(sock) == b"ok"
            [(request, address, seen_server)] = seen
            assert isinstance(request, socket.socket)
            assert address == sock.getsockname()
            assert seen_server is server


class TestBaseRequestHandler:
    @pytest.mark.timeout(10)
    def test_finish_runs_when_handle_raises(self, make_kind: MakeKind) -> None:
        """setup, handle and finish run in order, finish even when handle raises."""
        calls: list[str] = []

        class Lifecycle(BaseRequestHandler[socket.socket, Any]):
            def setup(self) -> None:
                calls.append("setup")

            def handle(self) -> None:
                calls.append("handle")
                raise RuntimeError("handler failed")

            def finish(self) -> None:
                calls.append("finish")

        policy = RecordingErrorPolicy()
        kind = make_kind(Family.TCP4, Dispatch.SYNC)
        with running(kind.build(Lifecycle, error_policy=policy, timeout_policy=NoTimeout())) as server, kind.connect(server) as sock:
            assert read_to_eof(sock) == b""
        assert calls == ["setup", "handle", "finish"]
        assert [type(exc) for _, exc in policy.errors] == [RuntimeError]


class TestDatagramRequestHandler:
    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("family", DATAGRAM_FAMILIES, ids=_ids(DATAGRAM_FAMILIES))
    def test_reply_through_wfile(self, family: Family, make_kind: MakeKind) -> None:
        """rfile reads the datagram; what is written to wfile comes back as one datagram."""

        class Describe(DatagramRequestHandler[Any]):
            def handle(self) -> None:
                data = self.rfile.read()
                assert data == self.packet
                self.wfile.write(b"got %d bytes: " % len(data))
                self.wfile.write(data)

        kind = make_kind(family, Dispatch.SYNC)
        with running(kind.build(Describe)) as server:
            assert kind.request(server, b"hello") == b"got 5 bytes: hello"
            assert kind.request(server, b"") == b"got 0 bytes: "

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("family", DATAGRAM_FAMILIES, ids=_ids(DATAGRAM_FAMILIES))
    def test_empty_reply_is_sent(self, family: Family, make_kind: MakeKind) -> None:
        """A handler that writes nothing still answers with an empty datagram (stdlib behaviour)."""

        class Silent(DatagramRequestHandler[Any]):
            pass

        kind = make_kind(family, Dispatch.SYNC)
        with running(kind.build(Silent)) as server:
            assert kind.request(server, b"anything") == b""
            assert kind.request(server, b"") == b""

    @pytest.mark.timeout(10)
    def test_large_datagram_is_read_whole(self, make_kind: MakeKind) -> None:
        """The default maximum packet size reads a 60000-byte UDP datagram whole
        (stdlib UDPServer would truncate at 8192)."""

        class Length(DatagramRequestHandler[Any]):
            def handle(self) -> None:
                self.wfile.write(b"%d" % len(self.packet))

        kind = make_kind(Family.UDP4, Dispatch.SYNC)
        with running(kind.build(Length)) as server:
            assert kind.request(server, b"x" * 60000) == b"60000"

    @pytest.mark.timeout(10)
    def test_max_packet_size_drops_oversize(self, make_kind: MakeKind) -> None:
        """A datagram longer than max_packet_size never reaches the handler
        (it is dropped, not truncated); the next one is served."""

        class Echo(DatagramRequestHandler[Any]):
            def handle(self) -> None:
                self.wfile.write(self.packet)

        kind = make_kind(Family.UDP4, Dispatch.SYNC)
        with running(kind.build(Echo, max_packet_size=16)) as server:
            with kind.datagram_client() as client:
                client.sendto(bytes(range(100)), server.server_address)
            assert kind.request(server, b"small") == b"small"


    @pytest.mark.timeout(20)
    def test_reply_to_a_client_that_does_not_read_is_dropped(
        self, make_kind: MakeKind, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A reply the kernel cannot queue (a Unix datagram client that does not
        read: its receive queue is full) is dropped after a bounded wait and
        logged, instead of holding the server in sendto(); it serves on."""
        with open("/proc/sys/net/unix/max_dgram_qlen") as f:
            queue_fits = int(f.read()) + 1  # full when more than max_dgram_qlen are queued

        class Echo(DatagramRequestHandler[Any]):
            def handle(self) -> None:
                self.wfile.write(self.packet)

        kind = make_kind(Family.UNIX_DGRAM, Dispatch.SYNC)
        with caplog.at_level(logging.WARNING, logger="composable_server"), running(kind.build(Echo)) as server:
            with kind.datagram_client() as client:
                for i in range(queue_fits + 1):
                    client.sendto(b"%d" % i, server.server_address)
                deadline = time.monotonic() + CLIENT_TIMEOUT
                while not any("dropped a 2-byte reply" in r.getMessage() for r in caplog.records):
                    assert time.monotonic() < deadline, "the server is still waiting to send the reply"
                    time.sleep(0.01)
                replies = [client.recv(100) for _ in range(queue_fits)]
                assert replies == [b"%d" % i for i in range(queue_fits)]
            assert kind.request(server, b"next") == b"next"


class TestServerSpeaksFirst:
    @pytest.mark.timeout(10)
    def test_greeting_with_no_timeout_policy(self, make_kind: MakeKind) -> None:
        """A handler that writes a greeting before reading is served at once with NoTimeout."""

        class Greeter(StreamRequestHandler[Any]):
            def handle(self) -> None:
                self.wfile.write(b"220 hello\n")
                self.wfile.write(b"echo " + self.rfile.readline())

        kind = make_kind(Family.TCP4, Dispatch.THREADING)
        with running(kind.build(Greeter, timeout_policy=NoTimeout())) as server, kind.connect(server) as sock:
            with sock.makefile("rb") as rfile:
                assert rfile.readline() == b"220 hello\n"
                sock.sendall(b"hi\n")
                assert rfile.readline() == b"echo hi\n"

    @pytest.mark.timeout(10)
    def test_greeting_with_default_policy(self, make_kind: MakeKind) -> None:
        """A handler that writes a greeting before reading is served at once with
        the default policies (no first-byte limit by default: the server cannot
        know who speaks first)."""

        class Greeter(StreamRequestHandler[Any]):
            def handle(self) -> None:
                self.wfile.write(b"220 hello\n")

        kind = make_kind(Family.TCP4, Dispatch.THREADING)
        with running(kind.build(Greeter)) as server, kind.connect(server, timeout=1.0) as sock:
            assert read_to_eof(sock) == b"220 hello\n"


class TestIdleBudget:
    """The idle budget: kernel timeouts for this package's stream handlers
    (no extra poll() per read), settimeout() for any other handler."""

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("wbufsize", [0, 8192], ids=["unbuffered", "buffered"])
    @pytest.mark.parametrize("family", STREAM_FAMILIES, ids=_ids(STREAM_FAMILIES))
    def test_idle_read_raises_timeout_error(self, family: Family, wbufsize: int, make_kind: MakeKind) -> None:
        """A client silent mid-line past the idle budget makes rfile.readline() raise TimeoutError, not return a partial line."""
        seen: list[tuple[float | None, bytes]] = []

        class Echo(StreamRequestHandler[Any]):
            def handle(self) -> None:
                seen.append((self.request.gettimeout(), self.rfile.readline()))
                self.rfile.readline()  # the client never finishes this line

        Echo.wbufsize = wbufsize
        errors = RecordingErrorPolicy()
        kind = make_kind(family, Dispatch.THREADING)
        budget = ConnectionTimeouts(Budget(idle=0.2))
        server = kind.build(Echo, error_policy=errors, timeout_policy=budget)
        with running(server), kind.connect(server) as sock:
            sock.sendall(b"one\npart")
            started = time.monotonic()
            assert read_to_eof(sock) == b""
            assert 0.15 < time.monotonic() - started < 5
        assert errors.wait_for(1)
        assert isinstance(errors.errors[0][1], TimeoutError)
        # Kernel timeouts: the socket itself stays blocking (no poll per read).
        assert seen == [(None, b"one\n")]

    @pytest.mark.timeout(10)
    def test_compat_handler_gets_a_socket_timeout(self, make_kind: MakeKind) -> None:
        """compat's StreamRequestHandler (stdlib's makefile() files, which would
        read an expired kernel timeout as a partial line) gets settimeout(idle):
        a client silent mid-line still makes readline() raise TimeoutError."""
        seen: list[tuple[float | None, bytes]] = []

        class Echo(compat.StreamRequestHandler):
            def handle(self) -> None:
                seen.append((self.request.gettimeout(), self.rfile.readline()))
                self.rfile.readline()  # the client never finishes this line

        errors = RecordingErrorPolicy()
        kind = make_kind(Family.TCP4, Dispatch.THREADING)
        server = kind.build(Echo, error_policy=errors, timeout_policy=ConnectionTimeouts(Budget(idle=0.2)))
        with running(server), kind.connect(server) as sock:
            sock.sendall(b"one\npart")
            assert read_to_eof(sock) == b""
        assert errors.wait_for(1)
        assert isinstance(errors.errors[0][1], TimeoutError)
        assert seen == [(0.2, b"one\n")]

    @pytest.mark.timeout(10)
    def test_foreign_handler_gets_a_socket_timeout(self, make_kind: MakeKind) -> None:
        """A handler that is not one of this package's stream handlers gets settimeout(idle) instead."""
        timeouts: list[float | None] = []

        def handler(request: socket.socket, client_address: object, server: object) -> None:
            timeouts.append(request.gettimeout())

        kind = make_kind(Family.TCP4, Dispatch.SYNC)
        server = kind.build(handler, timeout_policy=ConnectionTimeouts(Budget(idle=7.0)))
        with running(server), kind.connect(server) as sock:
            sock.sendall(b"x")
            assert read_to_eof(sock) == b""
        assert timeouts == [7.0]


def _lean_server(
    family: Family, tmp_path: Path, handler: UpperDatagrams, **options: Any
) -> Server[DatagramRequest, Any]:
    if family is Family.UDP4:
        return make_udp_server(("127.0.0.1", 0), datagram_handler=handler, **options)
    return make_unix_datagram_server(str(tmp_path / "lean.sock"), datagram_handler=handler, **options)


@contextlib.contextmanager
def _client(family: Family, tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram client, bound (a Unix one to a path, so that replies reach it)."""
    sock = socket.socket(socket.AF_INET if family is Family.UDP4 else socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(tmp_path / "client.sock") if family is Family.UNIX_DGRAM else ("127.0.0.1", 0))
        sock.settimeout(CLIENT_TIMEOUT)
        yield sock
    finally:
        sock.close()


class TestDatagramResponder:
    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("family", DATAGRAM_FAMILIES, ids=_ids(DATAGRAM_FAMILIES))
    def test_serves_in_the_loop_and_survives_a_failing_datagram(self, family: Family, tmp_path: Path) -> None:
        """On a SyncDispatcher the loop serves the handler itself: a raising
        datagram goes to the error policy without a reply, a None reply sends
        nothing, and the next datagrams are answered in order."""
        handler, errors = UpperDatagrams(), RecordingErrorPolicy()
        server = _lean_server(family, tmp_path, handler, error_policy=errors)
        assert server._inline_datagrams() is not None
        with running(server), _client(family, tmp_path) as client:
            for data in (b"boom", b"quiet", b"one", b"", b"two"):
                client.sendto(data, server.server_address)
            assert [client.recv(100) for _ in range(3)] == [b"ONE", b"", b"TWO"]
            assert errors.wait_for(1)
            client_address = client.getsockname()
        assert [type(exc) for _, exc in errors.errors] == [ValueError]
        assert [data for data, _ in handler.seen] == [b"boom", b"quiet", b"one", b"", b"two"]
        assert handler.seen[0][1] == client_address

    @pytest.mark.timeout(10)
    def test_pool_dispatcher_takes_the_job_path(self) -> None:
        """On a pool the responder is an ordinary handler factory: answered, errors reported."""
        handler, errors = UpperDatagrams(), RecordingErrorPolicy()
        server = make_udp_server(
            ("127.0.0.1", 0), datagram_handler=handler, dispatcher=ThreadPoolDispatcher(2), error_policy=errors
        )
        assert server._inline_datagrams() is None
        with running(server), _client(Family.UDP4, Path()) as client:
            client.sendto(b"boom", server.server_address)
            assert errors.wait_for(1)
            client.sendto(b"pool", server.server_address)
            assert client.recv(100) == b"POOL"

    @pytest.mark.timeout(10)
    def test_verifier_refuses_without_reply(self) -> None:
        """A refused datagram never reaches the handler; the releasing verifier hears of every datagram."""
        handler = UpperDatagrams()
        verdicts = MemoryVerifier(script=[False, True])
        released: list[object] = []

        class Releasing:
            def verify(self, request: DatagramRequest, client_address: object) -> bool:
                return verdicts.verify(request, client_address)

            def release(self, request: DatagramRequest) -> None:
                released.append(request[0])

        server = make_udp_server(("127.0.0.1", 0), datagram_handler=handler, verifier=Releasing())
        assert server._inline_datagrams() is not None
        with running(server), _client(Family.UDP4, Path()) as client:
            client.sendto(b"refused", server.server_address)
            client.sendto(b"served", server.server_address)
            assert client.recv(100) == b"SERVED"
        assert [data for data, _ in handler.seen] == [b"served"]
        assert released == [b"refused", b"served"]

    @pytest.mark.timeout(10)
    def test_oversized_datagram_is_dropped(self) -> None:
        """A datagram longer than max_packet_size is counted and dropped; the next one is answered."""
        handler = UpperDatagrams()
        server = make_udp_server(("127.0.0.1", 0), datagram_handler=handler, max_packet_size=16)
        with running(server), _client(Family.UDP4, Path()) as client:
            client.sendto(b"x" * 17, server.server_address)
            client.sendto(b"y" * 16, server.server_address)
            assert client.recv(100) == b"Y" * 16
        assert isinstance(server.acceptor, DatagramAcceptor)
        assert server.acceptor.dropped == 1
        assert [data for data, _ in handler.seen] == [b"y" * 16]

    @pytest.mark.timeout(10)
    def test_overridden_hook_takes_the_job_path(self) -> None:
        """A subclass that overrides a request hook (verify_request) is served through it."""
        seen: list[bytes] = []

        class Hooked(Server[DatagramRequest, InetAddress]):
            def verify_request(self, request: DatagramRequest, client_address: InetAddress) -> bool:
                seen.append(request[0])
                return request[0] != b"no"

        server = Hooked(
            transport=UDPTransport(("127.0.0.1", 0)),
            acceptor=DatagramAcceptor(),
            handler=DatagramResponder(UpperDatagrams()),
        )
        assert server._inline_datagrams() is None
        with running(server), _client(Family.UDP4, Path()) as client:
            client.sendto(b"no", server.server_address)
            client.sendto(b"yes", server.server_address)
            assert client.recv(100) == b"YES"
        assert seen == [b"no", b"yes"]

    @pytest.mark.timeout(10)
    def test_request_handler_class_is_served_inline(self) -> None:
        """A DatagramRequestHandler class on a SyncDispatcher is served by the
        loop itself too: replies in order; a raising handler is reported, and its
        finish() still sends what wfile holds (here nothing), as in stdlib."""

        class Echo(DatagramRequestHandler[Any]):
            def handle(self) -> None:
                if self.packet == b"boom":
                    raise ValueError("boom")
                self.wfile.write(self.packet)

        errors = RecordingErrorPolicy()
        server = make_udp_server(("127.0.0.1", 0), Echo, error_policy=errors)
        assert server._inline_datagrams() is not None
        with running(server), _client(Family.UDP4, Path()) as client:
            for data in (b"boom", b"one", b"two"):
                client.sendto(data, server.server_address)
            assert [client.recv(100) for _ in range(3)] == [b"", b"one", b"two"]
            assert errors.wait_for(1)
        assert [type(exc) for _, exc in errors.errors] == [ValueError]
