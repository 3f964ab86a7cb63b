"""Observer events on real sockets: served, failed, refused by each verifier, rejected by a full pool,
cut at a budget, TLS and PROXY failures."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme

from composable_server import (
    ConnectionTimeouts,
    Dispatcher,
    Observer,
    Server,
    StreamAcceptor,
    TCPTransport,
    ThreadPoolDispatcher,
    ThreadingDispatcher,
    TLSTransport,
    UDPTransport,
    UnixStreamTransport,
)
from composable_server.acceptors import DatagramAcceptor
from composable_server.interfaces import (
    ConnectionAccepted,
    ConnectionRefused,
    RequestFinished,
    RequestStarted,
    Transport,
    TransportStarted,
    Verifier,
)
from composable_server.policies import Budget, LoggingErrorPolicy
from composable_server.proxy import ProxyProtocolTransport
from composable_server.testing import RecordingObserver
from composable_server.verifiers import CIDRVerifier, ConnectionCapVerifier, PeerCredentialsVerifier, RateLimitVerifier

WAIT = 10.0

Handler = Callable[[socket.socket, Any, object], object]


def upper(request: socket.socket, client_address: object, server: object) -> None:
    """Read one line, send it back upper-cased."""
    with request.makefile("rb") as reader:
        request.sendall(reader.readline().upper())


@contextmanager
def serving(
    observer: RecordingObserver,
    *,
    handler: Handler = upper,
    transport: Transport[Any, Any] | None = None,
    verifier: Verifier[Any, Any] | None = None,
    dispatcher: Dispatcher | None = None,
    budget: Budget | None = None,
    acceptor: Any = None,
) -> Iterator[Server[Any, Any]]:
    """A server on 127.0.0.1 with *observer*, serving in a thread; shut down and closed on exit."""
    server: Server[Any, Any] = Server(
        transport=TCPTransport(("127.0.0.1", 0)) if transport is None else transport,
        acceptor=StreamAcceptor() if acceptor is None else acceptor,
        handler=handler,
        verifier=verifier,
        dispatcher=ThreadingDispatcher() if dispatcher is None else dispatcher,
        error_policy=LoggingErrorPolicy(),
        timeout_policy=None if budget is None else ConnectionTimeouts(budget),
        observers=[observer],
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WAIT)


def ask(server: Server[Any, Any], payload: bytes = b"hi\n") -> bytes:
    """One request; everything up to EOF (b"" if the server closed at once)."""
    with socket.create_connection(server.server_address, timeout=WAIT) as sock:
        try:
            sock.sendall(payload)
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
        except ConnectionError:
            return b""
        return b"".join(chunks)


def ended(observer: RecordingObserver, count: int = 1) -> None:
    """Wait until *count* connections ended (refused or finished)."""
    assert observer.wait_for(("connection_refused", "request_finished"), count, WAIT), observer.events


class TestServed:
    @pytest.mark.timeout(20)
    def test_served_request(self) -> None:
        """A served TCP request: accepted, started, transport started, finished ok, with the client's address."""
        observer = RecordingObserver()
        with serving(observer) as server:
            assert ask(server) == b"HI\n"
            ended(observer)
        assert observer.names() == ["connection_accepted", "request_started", "transport_started", "request_finished"]
        (accepted,) = observer.of(ConnectionAccepted)
        assert isinstance(accepted.client_address, tuple)
        assert accepted.client_address[0] == "127.0.0.1"
        assert observer.of(RequestStarted) == [RequestStarted(accepted.client_address)]
        (finished,) = observer.of(RequestFinished)
        assert (finished.client_address, finished.outcome) == (accepted.client_address, "ok")

    @pytest.mark.timeout(20)
    def test_handler_error(self) -> None:
        """A handler that raises on a real socket ends as handler_error with its type."""

        def fail(request: socket.socket, client_address: object, server: object) -> None:
            raise KeyError("boom")

        observer = RecordingObserver()
        with serving(observer, handler=fail) as server:
            ask(server)
            ended(observer)
        (finished,) = observer.of(RequestFinished)
        assert (finished.outcome, finished.error) == ("handler_error", "KeyError")


    @pytest.mark.timeout(20)
    def test_raising_observer_never_breaks_serving(self) -> None:
        """An observer that raises at every event: every request is still answered."""
        observer = RecordingObserver(raises=RuntimeError("observer bug"))
        with serving(observer) as server:
            for _ in range(3):
                assert ask(server) == b"HI\n"
            ended(observer, 3)
        assert [event.outcome for event in observer.of(RequestFinished)] == ["ok"] * 3


class TestRefused:
    @pytest.mark.timeout(20)
    def test_cidr_refusal(self) -> None:
        """A CIDR verifier refusing loopback reports cidr, and no request events."""
        observer = RecordingObserver()
        with serving(observer, verifier=CIDRVerifier(("10.0.0.0/8",))) as server:
            assert ask(server) == b""
            ended(observer)
        assert observer.names() == ["connection_accepted", "connection_refused"]
        (refused,) = observer.of(ConnectionRefused)
        assert (refused.reason, refused.detail) == ("cidr", "CIDRVerifier")

    @pytest.mark.timeout(20)
    def test_peer_credentials_refusal(self, tmp_path: Path) -> None:
        """A peer-credentials verifier refusing our own uid over a Unix socket reports peer_credentials."""
        observer = RecordingObserver()
        path = str(tmp_path / "s.sock")
        verifier = PeerCredentialsVerifier(uids={os.getuid() + 1})
        with serving(observer, transport=UnixStreamTransport(path), verifier=verifier):
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(WAIT)
                sock.connect(path)
                assert sock.recv(10) == b""  # closed unserved
            ended(observer)
        assert observer.names() == ["connection_accepted", "connection_refused"]
        (refused,) = observer.of(ConnectionRefused)
        assert (refused.reason, refused.detail) == ("peer_credentials", "PeerCredentialsVerifier")

    @pytest.mark.timeout(20)
    def test_rate_limit_refusal(self) -> None:
        """Past its burst, a rate limit refuses and reports rate_limit."""
        observer = RecordingObserver()
        with serving(observer, verifier=RateLimitVerifier(0.001, 1)) as server:
            assert ask(server) == b"HI\n"
            assert ask(server) == b""
            ended(observer, 2)
        assert [event.reason for event in observer.of(ConnectionRefused)] == ["rate_limit"]

    @pytest.mark.timeout(20)
    def test_connection_cap_refusal(self) -> None:
        """A second connection from the same client, while the first is open, is refused as connection_cap."""
        observer = RecordingObserver()
        with serving(observer, verifier=ConnectionCapVerifier(1)) as server:
            with socket.create_connection(server.server_address, timeout=WAIT) as held:
                assert observer.wait_for("request_started", 1, WAIT)
                assert ask(server) == b""
                ended(observer, 1)
                held.sendall(b"x\n")
                assert held.recv(10) == b"X\n"
            ended(observer, 2)
        assert [event.reason for event in observer.of(ConnectionRefused)] == ["connection_cap"]

    @pytest.mark.timeout(20)
    def test_pool_full_reject(self) -> None:
        """A full pool with when_full='reject' reports pool_full for the job it closed."""
        release = threading.Event()

        def block(request: socket.socket, client_address: object, server: object) -> None:
            assert release.wait(WAIT)
            upper(request, client_address, server)

        observer = RecordingObserver()
        pool = ThreadPoolDispatcher(1, queue_size=0, when_full="reject")
        with serving(observer, handler=block, dispatcher=pool) as server:
            with socket.create_connection(server.server_address, timeout=WAIT) as held:
                held.sendall(b"x\n")
                assert observer.wait_for("request_started", 1, WAIT)
                assert ask(server) == b""
                ended(observer, 1)
                release.set()
                assert held.recv(10) == b"X\n"
            ended(observer, 2)
        (refused,) = observer.of(ConnectionRefused)
        assert refused.reason == "pool_full"
        assert [event.outcome for event in observer.of(RequestFinished)] == ["ok"]


class TestCut:
    @pytest.mark.timeout(20)
    def test_first_byte_budget(self) -> None:
        """A client silent past the first-byte budget ends as budget/first_byte without a request_started."""
        observer = RecordingObserver()
        with serving(observer, budget=Budget(first_byte=0.05)) as server:
            with socket.create_connection(server.server_address, timeout=WAIT) as silent:
                assert silent.recv(10) == b""
            ended(observer)
        assert observer.names() == ["connection_accepted", "request_finished"]
        (finished,) = observer.of(RequestFinished)
        assert (finished.outcome, finished.budget) == ("budget", "first_byte")
        assert finished.duration >= 0.05

    @pytest.mark.timeout(20)
    def test_lifetime_budget(self) -> None:
        """A handler still reading at its lifetime deadline is cut and ends as budget/lifetime."""

        def read_forever(request: socket.socket, client_address: object, server: object) -> None:
            while request.recv(10):
                pass

        observer = RecordingObserver()
        with serving(observer, handler=read_forever, budget=Budget(lifetime=0.1)) as server:
            with socket.create_connection(server.server_address, timeout=WAIT) as client:
                client.sendall(b"a")
                assert client.recv(10) == b""
            ended(observer)
        (finished,) = observer.of(RequestFinished)
        assert (finished.outcome, finished.budget) == ("budget", "lifetime")

    @pytest.mark.timeout(20)
    def test_drain_cut(self) -> None:
        """A request still running at a drain's deadline ends as drain."""

        def read_forever(request: socket.socket, client_address: object, server: object) -> None:
            while request.recv(10):
                pass

        observer = RecordingObserver()
        with serving(observer, handler=read_forever) as server:
            with socket.create_connection(server.server_address, timeout=WAIT) as client:
                client.sendall(b"a")
                assert observer.wait_for("request_started", 1, WAIT)
                report = server.drain(0.05)
                assert len(report.cut) == 1
            ended(observer)
        (finished,) = observer.of(RequestFinished)
        assert finished.outcome == "drain"
        assert observer.names()[-1] == "drain_finished"


def exchange(request: socket.socket, client_address: object, server: object) -> None:
    """Read 100 bytes, send 300, then wait for the client's one-byte receipt:
    when it arrives the client has acknowledged all 300 (every segment
    carries the cumulative ACK), so both counts are exact."""
    with request.makefile("rb") as reader:
        reader.read(100)
        request.sendall(b"y" * 300)
        reader.read(1)


def client_exchange(sock: socket.socket) -> None:
    """The client side of :func:`exchange` on a connected (maybe TLS) socket."""
    sock.sendall(b"x" * 100)
    received = 0
    while received < 300:
        chunk = sock.recv(4096)
        assert chunk, "EOF before the reply was complete"
        received += len(chunk)
    sock.sendall(b"!")
    assert sock.recv(10) == b""


class TestBytes:
    @pytest.mark.timeout(20)
    def test_tcp_bytes_in_and_out(self) -> None:
        """Over TCP, bytes in and out are the kernel's counts of what crossed the connection."""
        observer = RecordingObserver(wants_bytes=True)
        with serving(observer, handler=exchange) as server:
            with socket.create_connection(server.server_address, timeout=WAIT) as sock:
                client_exchange(sock)
            ended(observer)
        (finished,) = observer.of(RequestFinished)
        assert (finished.outcome, finished.bytes_in, finished.bytes_out) == ("ok", 101, 300)

    @pytest.mark.timeout(20)
    def test_unwanted_bytes_are_not_read(self) -> None:
        """Without an observer that wants them, the counts stay unknown."""
        observer = RecordingObserver()
        with serving(observer, handler=exchange) as server:
            with socket.create_connection(server.server_address, timeout=WAIT) as sock:
                client_exchange(sock)
            ended(observer)
        (finished,) = observer.of(RequestFinished)
        assert (finished.outcome, finished.bytes_in, finished.bytes_out) == ("ok", None, None)

    @pytest.mark.timeout(20)
    def test_tls_counts_wire_bytes(self) -> None:
        """Under TLS the counts are wire bytes: the handshake and record overhead on top of the payload."""
        ca = trustme.CA()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        client_context = ssl.create_default_context()
        ca.configure_trust(client_context)
        observer = RecordingObserver(wants_bytes=True)
        transport = TLSTransport(TCPTransport(("127.0.0.1", 0)), context)
        with serving(observer, handler=exchange, transport=transport) as server:
            with socket.create_connection(server.server_address, timeout=WAIT) as raw:
                with client_context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    client_exchange(tls)
            ended(observer)
        (finished,) = observer.of(RequestFinished)
        assert finished.outcome == "ok"
        assert finished.bytes_in is not None and finished.bytes_in > 101
        assert finished.bytes_out is not None and finished.bytes_out > 300 + 500  # a certificate went out

    @pytest.mark.timeout(20)
    def test_proxy_header_is_counted_in(self) -> None:
        """Behind a PROXY layer the header is part of the bytes in."""
        header = b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 80\r\n"
        observer = RecordingObserver(wants_bytes=True)
        transport = ProxyProtocolTransport(TCPTransport(("127.0.0.1", 0)), mode="v1")
        with serving(observer, handler=exchange, transport=transport) as server:
            with socket.create_connection(server.server_address, timeout=WAIT) as sock:
                sock.sendall(header)
                client_exchange(sock)
            ended(observer)
        (finished,) = observer.of(RequestFinished)
        assert (finished.outcome, finished.client_address) == ("ok", ("192.0.2.1", 1234))
        assert (finished.bytes_in, finished.bytes_out) == (len(header) + 101, 300)

    @pytest.mark.timeout(20)
    def test_unix_stream_bytes_are_unknown(self, tmp_path: Path) -> None:
        """A Unix stream socket has no TCP_INFO: both counts are unknown."""
        observer = RecordingObserver(wants_bytes=True)
        path = str(tmp_path / "s.sock")
        with serving(observer, handler=exchange, transport=UnixStreamTransport(path)):
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(WAIT)
                sock.connect(path)
                client_exchange(sock)
            ended(observer)
        (finished,) = observer.of(RequestFinished)
        assert (finished.outcome, finished.bytes_in, finished.bytes_out) == ("ok", None, None)

    @pytest.mark.timeout(20)
    def test_datagram_bytes_in_is_its_length(self) -> None:
        """A datagram's bytes in are its length; bytes out are unknown."""

        def echo(request: Any, client_address: Any, server: object) -> None:
            data, sock = request  # a datagram request: (data, the listening socket)
            sock.sendto(data.upper(), client_address)

        observer = RecordingObserver(wants_bytes=True)
        transport = UDPTransport(("127.0.0.1", 0))
        with serving(observer, handler=echo, transport=transport, acceptor=DatagramAcceptor()) as server:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(WAIT)
                sock.sendto(b"hello datagram", server.server_address)
                assert sock.recv(100) == b"HELLO DATAGRAM"
            ended(observer)
        (finished,) = observer.of(RequestFinished)
        assert (finished.outcome, finished.bytes_in, finished.bytes_out) == ("ok", 14, None)


class TestLayers:
    @pytest.mark.timeout(20)
    def test_tls_failure(self) -> None:
        """A client that does not speak TLS: transport_started reports the handshake error, then start_failed."""
        ca = trustme.CA()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        observer = RecordingObserver()
        transport = TLSTransport(TCPTransport(("127.0.0.1", 0)), context)
        with serving(observer, transport=transport) as server:
            ask(server, b"GET / HTTP/1.0\r\n\r\n")
            ended(observer)
        (started,) = observer.of(TransportStarted)
        assert (started.transport, started.error, started.tls) == ("TLSTransport", "TLSHandshakeError", True)
        (finished,) = observer.of(RequestFinished)
        assert (finished.outcome, finished.error) == ("start_failed", "TLSHandshakeError")

    @pytest.mark.timeout(20)
    def test_tls_success(self) -> None:
        """A good TLS handshake is timed in transport_started with no error."""
        ca = trustme.CA()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        client_context = ssl.create_default_context()
        ca.configure_trust(client_context)
        observer = RecordingObserver()
        transport = TLSTransport(TCPTransport(("127.0.0.1", 0)), context)
        with serving(observer, transport=transport) as server:
            with socket.create_connection(server.server_address, timeout=WAIT) as raw:
                with client_context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    tls.sendall(b"hi\n")
                    assert tls.recv(10) == b"HI\n"
            ended(observer)
        (started,) = observer.of(TransportStarted)
        assert (started.error, started.tls) == (None, True)
        assert started.duration > 0
        assert [event.outcome for event in observer.of(RequestFinished)] == ["ok"]

    @pytest.mark.timeout(20)
    def test_proxy_header_refusal(self) -> None:
        """A connection without a valid PROXY header ends as start_failed with ProxyProtocolError."""
        observer = RecordingObserver()
        transport = ProxyProtocolTransport(TCPTransport(("127.0.0.1", 0)), mode="v1")
        with serving(observer, transport=transport) as server:
            ask(server, b"NOT A PROXY HEADER\r\n")
            ended(observer)
        (started,) = observer.of(TransportStarted)
        assert (started.transport, started.error) == ("ProxyProtocolTransport", "ProxyProtocolError")
        (finished,) = observer.of(RequestFinished)
        assert (finished.outcome, finished.error) == ("start_failed", "ProxyProtocolError")


class TestCompat:
    @pytest.mark.timeout(20)
    def test_compat_server_takes_observers_as_a_class_attribute(self) -> None:
        """A compat ThreadingTCPServer subclass with `observers` set reports its requests; the constructor stays stdlib's."""
        from composable_server import compat

        observer = RecordingObserver()

        class Handler(compat.StreamRequestHandler):
            def handle(self) -> None:
                self.wfile.write(self.rfile.readline().upper())

        class Observed(compat.ThreadingTCPServer):
            observers: Sequence[Observer] = (observer,)

        with Observed(("127.0.0.1", 0), Handler) as server:
            thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
            thread.start()
            try:
                host, port = server.server_address[:2]
                with socket.create_connection((host, port), timeout=WAIT) as sock:
                    sock.sendall(b"hi\n")
                    assert sock.recv(10) == b"HI\n"
                ended(observer)
            finally:
                server.shutdown()
                thread.join(WAIT)
        assert observer.names() == ["connection_accepted", "request_started", "request_finished"]
        assert [event.outcome for event in observer.of(RequestFinished)] == ["ok"]
