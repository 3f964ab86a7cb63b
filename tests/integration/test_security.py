"""Attack tests on loopback and Unix sockets, one per defence.

TLS certificates are made at test time with ``trustme``; no key is committed.
Clients that must be told apart by address connect from 127.0.0.1, 127.0.0.2
and 127.0.0.3 (all loopback on Linux).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trustme

from composable_server import (
    AcceptBackoff,
    BindError,
    Budget,
    ConnectionTimeouts,
    DatagramAcceptor,
    DatagramRequestHandler,
    Dispatcher,
    ForkingDispatcher,
    LineTooLongError,
    NoTimeout,
    PeerCredentialsVerifier,
    Server,
    StreamAcceptor,
    StreamRequestHandler,
    TCPTransport,
    ThreadingDispatcher,
    ThreadPoolDispatcher,
    TLSHandshakeError,
    TLSTransport,
    UDPTransport,
    UnixDatagramTransport,
    UnixStreamTransport,
    Verifier,
    all_of,
    deny_networks,
    peer_credentials,
    per_ip_cap,
    rate_limit,
)

from composable_server.testing import check_acceptor, check_transport

from ._support import CLIENT_TIMEOUT, Background, RecordingErrorPolicy, read_to_eof, running

LOCAL = "127.0.0.1"


# -- helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A throwaway certificate authority for this module."""
    return trustme.CA()


@pytest.fixture(scope="module")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    """A server certificate for localhost and 127.0.0.1."""
    return ca.issue_cert("localhost", LOCAL)


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def connect(address: Any, source: str = LOCAL) -> socket.socket:
    """A TCP connection to *address* from the loopback address *source*."""
    return socket.create_connection(address, timeout=CLIENT_TIMEOUT, source_address=(source, 0))


def exchange(sock: socket.socket, data: bytes) -> bytes:
    """Send *data*, read to EOF; a connection the server closed at once reads as ``b""``."""
    try:
        sock.sendall(data)
        return read_to_eof(sock)
    except (ConnectionResetError, BrokenPipeError):
        return b""


def closed_by_server(sock: socket.socket) -> bool:
    """Read until the server closes (EOF or reset); True once it has."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def tls_request(address: Any, context: ssl.SSLContext, data: bytes, hostname: str = "localhost") -> bytes:
    """One TLS request: handshake, send *data*, read the reply to EOF."""
    with connect(address) as raw, context.wrap_socket(raw, server_hostname=hostname) as tls:
        tls.sendall(data)
        return read_to_eof(tls)


class Gate:
    """Handlers that must hold wait here; the test counts them in and lets them go."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.holding = 0
        self.opened = False

    def hold(self) -> None:
        with self._cond:
            self.holding += 1
            self._cond.notify_all()
            self._cond.wait_for(lambda: self.opened, CLIENT_TIMEOUT)

    def wait_holding(self, count: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.holding >= count, CLIENT_TIMEOUT)

    def open(self) -> None:
        with self._cond:
            self.opened = True
            self._cond.notify_all()


def line_handler(gate: Gate | None = None) -> type[StreamRequestHandler[Any]]:
    """Reads one bounded line and answers it upper-cased (``hold`` waits at *gate* first)."""

    class Upper(StreamRequestHandler[Any]):
        def handle(self) -> None:
            line = self.read_line()
            if line.startswith(b"hold") and gate is not None:
                gate.hold()
            self.wfile.write(line.upper())

    return Upper


def tcp_server(
    handler: Any,
    *,
    tls: ssl.SSLContext | None = None,
    handshake_timeout: float = 30.0,
    verifier: Verifier[Any, Any] | None = None,
    dispatcher: Dispatcher | None = None,
    errors: RecordingErrorPolicy | None = None,
) -> Server[socket.socket, Any]:
    transport: Any = TCPTransport((LOCAL, 0))
    if tls is not None:
        transport = TLSTransport(transport, tls, handshake_timeout=handshake_timeout)
    return Server(
        transport=transport,
        acceptor=StreamAcceptor(),
        handler=handler,
        verifier=verifier,
        dispatcher=ThreadingDispatcher(daemon=True) if dispatcher is None else dispatcher,
        error_policy=RecordingErrorPolicy() if errors is None else errors,
        timeout_policy=NoTimeout(),
    )


def handshake_errors(errors: RecordingErrorPolicy) -> list[TLSHandshakeError]:
    return [exc for _, exc in errors.errors if isinstance(exc, TLSHandshakeError)]


# -- TLS ----------------------------------------------------------------------------


class TestTLSTransport:
    @pytest.mark.timeout(10)
    def test_handler_sees_the_tls_socket_sni_and_alpn(self, ca: trustme.CA, server_cert: trustme.LeafCert) -> None:
        """SNI reaches the context's callback and the handler sees the SSLSocket with the selected ALPN protocol."""
        names: list[str | None] = []
        context = server_context(server_cert)
        context.set_alpn_protocols(["h2", "http/1.1"])
        context.sni_callback = lambda sock, name, ctx: names.append(name)

        class Info(StreamRequestHandler[Any]):
            def handle(self) -> None:
                request = self.request
                assert isinstance(request, ssl.SSLSocket)
                self.read_line()
                self.wfile.write(f"{type(request).__name__} {request.selected_alpn_protocol()}\n".encode())

        client = client_context(ca)
        client.set_alpn_protocols(["http/1.1"])
        with running(tcp_server(Info, tls=context)) as server:
            assert tls_request(server.server_address, client, b"hi\n") == b"SSLSocket http/1.1\n"
            assert isinstance(server.transport, TLSTransport)
            assert server.transport.statistics().completed == 1
        assert names == ["localhost"]

    @pytest.mark.timeout(15)
    @pytest.mark.parametrize(
        "make_dispatcher",
        [lambda: ThreadingDispatcher(daemon=True), lambda: ThreadPoolDispatcher(4)],
        ids=["threading", "pool"],
    )
    def test_silent_and_garbage_clients_do_not_delay_others(
        self, ca: trustme.CA, server_cert: trustme.LeafCert, make_dispatcher: Callable[[], Dispatcher]
    ) -> None:
        """A client that says nothing and one that sends garbage instead of a
        ClientHello do not delay a real client; the garbage is reported as a
        failed handshake naming the client."""
        errors = RecordingErrorPolicy()
        server = tcp_server(
            line_handler(), tls=server_context(server_cert), dispatcher=make_dispatcher(), errors=errors
        )
        with running(server), connect(server.server_address) as silent, connect(server.server_address) as garbage:
            garbage.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            started = time.monotonic()
            assert tls_request(server.server_address, client_context(ca), b"hello\n") == b"HELLO\n"
            elapsed = time.monotonic() - started
            assert errors.wait_for(1)
            assert closed_by_server(garbage)
            silent.setblocking(False)
            with pytest.raises(BlockingIOError):
                silent.recv(1)  # still waiting in its handshake: nothing sent, not closed
        assert elapsed < 2.0, f"a real client waited {elapsed:.2f} s behind hostile ones"
        failure = handshake_errors(errors)[0]
        assert failure.client_address == garbage_address(failure)
        assert not failure.timed_out
        assert "TLS handshake with ('127.0.0.1'," in str(failure)
        assert isinstance(failure.__cause__, ssl.SSLError)

    @pytest.mark.timeout(15)
    def test_crowd_of_silent_clients_cannot_starve_a_small_pool(
        self, ca: trustme.CA, server_cert: trustme.LeafCert
    ) -> None:
        """With a first-byte budget, silent TLS clients wait in the serving loop,
        not in workers: twenty of them leave a two-worker pool free to serve."""
        server = Server(
            transport=TLSTransport(TCPTransport((LOCAL, 0)), server_context(server_cert)),
            acceptor=StreamAcceptor(),
            handler=line_handler(),
            dispatcher=ThreadPoolDispatcher(2),
            error_policy=RecordingErrorPolicy(),
            timeout_policy=ConnectionTimeouts(Budget(first_byte=10.0)),
        )
        with running(server), contextlib.ExitStack() as crowd:
            for _ in range(20):
                crowd.enter_context(connect(server.server_address))
            started = time.monotonic()
            assert tls_request(server.server_address, client_context(ca), b"through\n") == b"THROUGH\n"
            assert time.monotonic() - started < 2.0

    @pytest.mark.timeout(10)
    def test_silent_client_is_cut_at_the_deadline(self, server_cert: trustme.LeafCert) -> None:
        """A client silent past handshake_timeout is disconnected and reported as timed out."""
        errors = RecordingErrorPolicy()
        server = tcp_server(line_handler(), tls=server_context(server_cert), handshake_timeout=0.3, errors=errors)
        with running(server), connect(server.server_address) as silent:
            assert errors.wait_for(1)
            assert read_to_eof(silent) == b""
            failure = handshake_errors(errors)[0]
            assert failure.timed_out and "timed out after 0.3 s" in str(failure)
            assert isinstance(failure.__cause__, TimeoutError)
            assert isinstance(server.transport, TLSTransport)
            assert server.transport.statistics().timed_out == 1

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("case", ["wrong-host", "expired"])
    def test_bad_server_certificate_fails_the_handshake(self, ca: trustme.CA, case: str) -> None:
        """A client verifying the server refuses a certificate for another host, or an expired one; the server reports it."""
        if case == "expired":
            past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
            cert = ca.issue_cert("localhost", not_before=past, not_after=past + datetime.timedelta(days=1))
            hostname, expected = "localhost", "expired"
        else:
            cert = ca.issue_cert("other.example")
            hostname, expected = "localhost", "match"
        errors = RecordingErrorPolicy()
        with running(tcp_server(line_handler(), tls=server_context(cert), errors=errors)) as server:
            with pytest.raises(ssl.SSLCertVerificationError, match=expected):
                tls_request(server.server_address, client_context(ca), b"hi\n", hostname=hostname)
            assert errors.wait_for(1)
        assert handshake_errors(errors)

    @pytest.mark.timeout(10)
    def test_client_certificate_required(self, ca: trustme.CA, server_cert: trustme.LeafCert) -> None:
        """With CERT_REQUIRED, a client without a certificate, or with one from
        another CA, is refused; one with a certificate of the trusted CA is
        served and its handler sees the peer certificate."""
        context = server_context(server_cert)
        context.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(context)

        class Who(StreamRequestHandler[Any]):
            def handle(self) -> None:
                request = self.request
                assert isinstance(request, ssl.SSLSocket)
                cert = request.getpeercert()
                assert cert is not None
                self.wfile.write(repr(cert["subjectAltName"]).encode())

        good = client_context(ca)
        ca.issue_cert("client.example").configure_cert(good)
        stranger = client_context(ca)
        trustme.CA().issue_cert("client.example").configure_cert(stranger)
        errors = RecordingErrorPolicy()
        with running(tcp_server(Who, tls=context, errors=errors)) as server:
            assert tls_request(server.server_address, good, b"") == b"(('DNS', 'client.example'),)"
            for client in (client_context(ca), stranger):
                try:
                    reply = tls_request(server.server_address, client, b"hi\n")
                except (ssl.SSLError, ConnectionError):
                    reply = b""  # TLS 1.3: the client learns at its first read
                assert reply == b""
            assert errors.wait_for(2)
        assert len(handshake_errors(errors)) == 2

    @pytest.mark.timeout(10)
    def test_transport_and_acceptor_contracts(self, server_cert: trustme.LeafCert) -> None:
        """TLSTransport keeps the Transport contract, and StreamAcceptor's over it."""
        context = server_context(server_cert)

        def make() -> TLSTransport[Any]:
            return TLSTransport(TCPTransport((LOCAL, 0)), context)

        @contextlib.contextmanager
        def pending(transport: Any) -> Iterator[socket.socket]:
            with connect(transport.server_address) as client:
                yield client

        check_transport(make)
        check_acceptor(make, StreamAcceptor, pending)

    @pytest.mark.timeout(10)
    def test_tls_over_unix_stream(self, ca: trustme.CA, server_cert: trustme.LeafCert, short_tmp_path: Path) -> None:
        """TLSTransport wraps a Unix stream transport as well as a TCP one."""
        path = short_tmp_path / "tls.sock"
        server = Server(
            transport=TLSTransport(UnixStreamTransport(path), server_context(server_cert)),
            acceptor=StreamAcceptor(),
            handler=line_handler(),
            dispatcher=ThreadingDispatcher(daemon=True),
        )
        with running(server), socket.socket(socket.AF_UNIX) as raw:
            raw.settimeout(CLIENT_TIMEOUT)
            raw.connect(str(path))
            with client_context(ca).wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"unix\n")
                assert read_to_eof(tls) == b"UNIX\n"

    @pytest.mark.timeout(10)
    def test_failed_handshakes_release_their_cap_slot(self, ca: trustme.CA, server_cert: trustme.LeafCert) -> None:
        """A per-IP cap of 1 is freed by a failed handshake and by a completed TLS request alike."""
        cap = per_ip_cap(1)
        errors = RecordingErrorPolicy()
        server = tcp_server(line_handler(), tls=server_context(server_cert), verifier=cap, errors=errors)
        with running(server):
            for attempt in range(3):
                with connect(server.server_address) as garbage:
                    assert exchange(garbage, b"not tls at all\r\n\r\n") == b""
                assert errors.wait_for(attempt + 1)
                assert tls_request(server.server_address, client_context(ca), b"ok\n") == b"OK\n"
            assert cap.statistics().refused == 0
        assert cap.statistics().connections == 0


def garbage_address(failure: TLSHandshakeError) -> object:
    """The address a handshake error names (a 2-tuple from 127.0.0.1)."""
    address = failure.client_address
    assert isinstance(address, tuple) and address[0] == LOCAL
    return address


# -- admission ------------------------------------------------------------------------


class TestAdmission:
    @pytest.mark.timeout(10)
    def test_denied_and_over_cap_clients_are_refused(self) -> None:
        """Under all_of(deny, per_ip_cap(2)): a denied client and a third
        concurrent one from a capped address are closed unserved, while other
        addresses are served; slots free up when requests end."""
        gate = Gate()
        cap = per_ip_cap(2)
        policy = all_of(deny_networks("127.0.0.3/32"), cap)
        with running(tcp_server(line_handler(gate), verifier=policy)) as server:
            address = server.server_address
            with contextlib.ExitStack() as held:
                holders = [held.enter_context(connect(address)) for _ in range(2)]
                for sock in holders:
                    sock.sendall(b"hold\n")
                assert gate.wait_holding(2)
                with connect(address) as third:
                    assert exchange(third, b"third\n") == b""
                with connect(address, source="127.0.0.3") as denied:
                    assert exchange(denied, b"denied\n") == b""
                with connect(address, source="127.0.0.2") as other:
                    assert exchange(other, b"other\n") == b"OTHER\n"
                gate.open()
                assert [read_to_eof(sock) for sock in holders] == [b"HOLD\n", b"HOLD\n"]
            with connect(address) as again:
                assert exchange(again, b"again\n") == b"AGAIN\n"
            stats = cap.statistics()
        assert stats.refused == 1 and stats.admitted == 4

    @pytest.mark.timeout(10)
    def test_flood_from_one_address_is_throttled(self) -> None:
        """A flood of connections from 127.0.0.2 is cut to the burst while 127.0.0.1 is still served."""
        limiter = rate_limit(0.001, 3)  # no noticeable refill during the test
        with running(tcp_server(line_handler(), verifier=limiter)) as server:
            replies = []
            for _ in range(12):
                with connect(server.server_address, source="127.0.0.2") as flood:
                    replies.append(exchange(flood, b"x\n"))
            with connect(server.server_address) as other:
                assert exchange(other, b"still here\n") == b"STILL HERE\n"
        assert replies.count(b"X\n") == 3 and replies.count(b"") == 9
        assert limiter.statistics().refused == 9

    @pytest.mark.timeout(15)
    def test_cap_under_forking_never_locks_a_client_out(self) -> None:
        """Under the forking dispatcher the parent releases a slot when it hands the
        connection to a child (the documented limitation), so sequential
        requests are all served."""
        cap = per_ip_cap(1)
        server = tcp_server(line_handler(), verifier=cap, dispatcher=ForkingDispatcher())
        with running(server):
            for _ in range(3):
                with connect(server.server_address) as sock:
                    assert exchange(sock, b"fork\n") == b"FORK\n"
        assert cap.statistics().refused == 0 and cap.statistics().connections == 0


# -- Unix sockets ---------------------------------------------------------------------

UnixKind = type[UnixStreamTransport] | type[UnixDatagramTransport]
UNIX_KINDS: list[tuple[UnixKind, socket.SocketKind]] = [
    (UnixStreamTransport, socket.SOCK_STREAM),
    (UnixDatagramTransport, socket.SOCK_DGRAM),
]
UNIX_IDS = ["stream", "datagram"]


@contextlib.contextmanager
def bound(transport: UnixStreamTransport | UnixDatagramTransport) -> Iterator[None]:
    try:
        transport.bind()
        transport.activate()
        yield
    finally:
        transport.close()


def make_unix(kind: UnixKind, path: Path, **options: Any) -> UnixStreamTransport | UnixDatagramTransport:
    return kind(path, **options)


class TestUnixHygiene:
    @pytest.mark.timeout(10)
    @pytest.mark.parametrize(("kind", "sock_type"), UNIX_KINDS, ids=UNIX_IDS)
    def test_stale_socket_file_is_replaced(self, kind: UnixKind, sock_type: socket.SocketKind, short_tmp_path: Path) -> None:
        """A socket file left by a dead server (no one listening) is replaced at bind."""
        path = short_tmp_path / "stale.sock"
        with socket.socket(socket.AF_UNIX, sock_type) as dead:
            dead.bind(str(path))
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        transport = make_unix(kind, path)
        with bound(transport), socket.socket(socket.AF_UNIX, sock_type) as client:
            client.connect(str(path))  # the new server is the one listening now
        assert not path.exists()

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize(("kind", "sock_type"), UNIX_KINDS, ids=UNIX_IDS)
    def test_live_server_path_is_refused(self, kind: UnixKind, sock_type: socket.SocketKind, short_tmp_path: Path) -> None:
        """A path a live server is bound to is refused with EADDRINUSE and the reason; the live server keeps it."""
        path = short_tmp_path / "live.sock"
        live = make_unix(kind, path)
        with bound(live):
            second = make_unix(kind, path)
            with pytest.raises(BindError) as info:
                second.bind()
            second.close()
            assert info.value.errno == 98  # EADDRINUSE
            assert str(path) in str(info.value) and "live" in str(info.value)
            with socket.socket(socket.AF_UNIX, sock_type) as client:
                client.connect(str(path))  # still the live server's
        assert not path.exists()

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("what", ["file", "directory"])
    def test_non_socket_path_is_refused_untouched(self, what: str, short_tmp_path: Path) -> None:
        """A path holding a regular file or a directory is refused, and left as it was."""
        path = short_tmp_path / "precious"
        if what == "file":
            path.write_bytes(b"data")
        else:
            path.mkdir()
        transport = UnixStreamTransport(path)
        with pytest.raises(BindError, match="not a socket") as info:
            transport.bind()
        transport.close()
        assert str(path) in str(info.value)
        assert path.read_bytes() == b"data" if what == "file" else path.is_dir()

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize(("kind", "sock_type"), UNIX_KINDS, ids=UNIX_IDS)
    @pytest.mark.parametrize("mode", [0o600, 0o660, 0o666])
    def test_mode_is_applied(self, kind: UnixKind, sock_type: socket.SocketKind, mode: int, short_tmp_path: Path) -> None:
        """The socket file gets exactly *mode*, whatever the umask."""
        path = short_tmp_path / "mode.sock"
        old_umask = os.umask(0o077)
        try:
            transport = make_unix(kind, path, mode=mode)
            with bound(transport):
                assert stat.S_IMODE(os.lstat(path).st_mode) == mode
        finally:
            os.umask(old_umask)

    @pytest.mark.timeout(10)
    def test_server_close_removes_only_its_own_file(self, short_tmp_path: Path) -> None:
        """Closing removes the socket file it created, not one that replaced it since."""
        path = short_tmp_path / "mine.sock"
        first = UnixStreamTransport(path)
        with bound(first):
            assert path.exists()
        assert not path.exists()
        replaced = UnixStreamTransport(path)
        with socket.socket(socket.AF_UNIX) as newcomer:
            with bound(replaced):
                path.unlink()
                newcomer.bind(str(path))  # another server took the path over
            assert stat.S_ISSOCK(os.lstat(path).st_mode)  # left alone
        path.unlink()

    @pytest.mark.timeout(10)
    def test_abstract_name(self) -> None:
        """A Linux abstract name binds, serves and leaves no file."""
        name = f"\0composable-security-{os.getpid()}".encode()
        transport = UnixStreamTransport(name)
        with bound(transport), socket.socket(socket.AF_UNIX) as client:
            client.connect(name)
            assert transport.server_address == name

    @pytest.mark.timeout(10)
    def test_peer_credentials_admit_only_chosen_users(self, short_tmp_path: Path) -> None:
        """A peer running as an admitted uid is served and its handler can read its
        credentials; the same peer is refused when neither its uid nor gid is admitted."""


        class Creds(StreamRequestHandler[Any]):
            def handle(self) -> None:
                creds = peer_credentials(self.request)
                self.wfile.write(f"{creds.pid} {creds.uid}".encode())

        for verifier, expected in (
            (PeerCredentialsVerifier(uids={os.getuid()}), f"{os.getpid()} {os.getuid()}".encode()),
            (PeerCredentialsVerifier(uids={os.getuid() + 1}, gids={os.getgid() + 1}), b""),
        ):
            server = Server(
                transport=UnixStreamTransport(short_tmp_path / "creds.sock"),
                acceptor=StreamAcceptor(),
                handler=Creds,
                verifier=verifier,
                error_policy=(errors := RecordingErrorPolicy()),
            )
            with running(server), socket.socket(socket.AF_UNIX) as client:
                client.settimeout(CLIENT_TIMEOUT)
                client.connect(str(short_tmp_path / "creds.sock"))
                assert read_to_eof(client) == expected, errors.errors


# -- datagrams ------------------------------------------------------------------------


class TestOversizedDatagrams:
    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("family", ["udp", "unix"])
    def test_oversized_datagram_is_reported_not_delivered(
        self, family: str, short_tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A datagram over max_packet_size is dropped, counted and logged, without
        an accept back-off; the handler only ever sees whole datagrams."""
        seen: list[int] = []

        class Length(DatagramRequestHandler[Any]):
            def handle(self) -> None:
                seen.append(len(self.packet))
                self.wfile.write(b"%d" % len(self.packet))

        acceptor = DatagramAcceptor(1024)
        backoff = AcceptBackoff()
        transport: Any = (
            UDPTransport((LOCAL, 0)) if family == "udp" else UnixDatagramTransport(short_tmp_path / "d.sock")
        )
        server = Server(transport=transport, acceptor=acceptor, handler=Length, accept_error_policy=backoff)
        sock_family = socket.AF_INET if family == "udp" else socket.AF_UNIX
        with caplog.at_level(logging.WARNING, logger="composable_server"), running(server):
            with socket.socket(sock_family, socket.SOCK_DGRAM) as client:
                client.settimeout(CLIENT_TIMEOUT)
                client.bind((LOCAL, 0) if family == "udp" else str(short_tmp_path / "c.sock"))
                client.sendto(b"x" * 5000, server.server_address)
                client.sendto(b"y" * 1024, server.server_address)
                assert client.recv(64) == b"1024"
        assert seen == [1024]
        assert acceptor.dropped == 1
        assert backoff.failures == 0 and backoff.delay == 0
        assert any("larger than max_packet_size=1024" in r.getMessage() for r in caplog.records)

    @pytest.mark.timeout(10)
    def test_largest_udp_datagram_is_read_whole(self) -> None:
        """The native default reads a 65507-byte UDP datagram (the IPv4 maximum) whole."""

        class Length(DatagramRequestHandler[Any]):
            def handle(self) -> None:
                self.wfile.write(b"%d" % len(self.packet))

        server = Server(transport=UDPTransport((LOCAL, 0)), acceptor=DatagramAcceptor(), handler=Length)
        with running(server), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(CLIENT_TIMEOUT)
            client.sendto(b"z" * 65507, server.server_address)
            assert client.recv(64) == b"65507"


# -- bounded reads --------------------------------------------------------------------


class TestBoundedLines:
    @pytest.mark.timeout(15)
    def test_ten_mib_line_without_newline_is_refused_at_the_bound(self) -> None:
        """A client sending 10 MiB without a newline meets LineTooLongError at
        64 KiB and is disconnected before it could send it all."""
        refused: list[LineTooLongError] = []
        done = threading.Event()

        class Lines(StreamRequestHandler[Any]):
            max_line_length: ClassVar[int] = 65536

            def handle(self) -> None:
                try:
                    self.read_line()
                except LineTooLongError as exc:
                    refused.append(exc)
                    self.wfile.write(b"line too long\n")
                finally:
                    done.set()

        with running(tcp_server(Lines)) as server, connect(server.server_address) as client:

            def flood() -> bool:
                try:
                    client.sendall(b"a" * (10 * 1024 * 1024))
                except (BrokenPipeError, ConnectionResetError):
                    return False
                return True

            sender = Background(flood)
            assert done.wait(CLIENT_TIMEOUT)
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)  # stop our own sender if it is still blocked
            sender.result()
        assert [exc.limit for exc in refused] == [65536]
