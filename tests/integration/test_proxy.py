"""The PROXY protocol layer on loopback: header reading, deadlines, trust,
the bytes after the header, and the proxied client everywhere the server
judges (verifiers) or reports (handler, error policy, logs) one."""

from __future__ import annotations

import array
import contextlib
import fcntl
import logging
import os
import socket
import ssl
import struct
import termios
import threading
import time
from collections.abc import Iterator
from typing import Any, TypeAlias

import pytest
import trustme

from composable_server import (
    BaseRequestHandler,
    DatagramRequestHandler,
    NoTimeout,
    Server,
    Verifier,
    StreamAcceptor,
    StreamRequestHandler,
    TCPTransport,
    ThreadingDispatcher,
    TLSHandshakeError,
    TLSTransport,
    UDPTransport,
    allow_networks,
    deny_networks,
    per_ip_cap,
    rate_limit,
)
from composable_server.__main__ import main
from composable_server._cli import build_parser, build_server
from composable_server._request import DATAGRAM_REQUESTS, STREAM_REQUESTS
from composable_server.exceptions import ProxyProtocolError
from composable_server.proxy import (
    V2_SIGNATURE,
    Command,
    ProxiedDatagram,
    ProxiedSocket,
    ProxyHeader,
    ProxyMode,
    ProxyProtocolDatagramAcceptor,
    ProxyProtocolTransport,
    crc32c,
    proxy_header_of,
)
from composable_server.testing import check_acceptor, check_transport

from ._support import CLIENT_TIMEOUT, Background, RecordingErrorPolicy, read_to_eof, running

LOCAL = "127.0.0.1"
V1_LINE = b"PROXY TCP4 203.0.113.7 198.51.100.1 40001 443\r\n"


def v2_tcp4(src: str, sport: int, tlvs: bytes = b"", *, checksum: bool = False, command: int = 0x1) -> bytes:
    body = socket.inet_aton(src) + socket.inet_aton("198.51.100.1") + struct.pack("!HH", sport, 443) + tlvs
    if checksum:
        body += b"\x03\x00\x04\0\0\0\0"
    raw = V2_SIGNATURE + bytes([0x20 | command, 0x11]) + struct.pack("!H", len(body)) + body
    if checksum:
        raw = raw[:-4] + crc32c(raw).to_bytes(4, "big")
    return raw


# A plain server: start_request hands it the proxied client.
ProxiedServer: TypeAlias = Server[socket.socket, Any]


class Who(StreamRequestHandler[Any]):
    """Answers one line with ``client_address | unique id | LINE``."""

    def handle(self) -> None:
        line = self.read_line().rstrip(b"\n")
        header = proxy_header_of(self.request)
        unique = b"-" if header is None or header.unique_id is None else header.unique_id
        self.wfile.write(f"{self.client_address!r}|".encode() + unique + b"|" + line.upper() + b"\n")


def proxy_server(
    mode: ProxyMode,
    *,
    handler: Any = Who,
    errors: RecordingErrorPolicy | None = None,
    tls: ssl.SSLContext | None = None,
    verifier: Verifier[Any, Any] | None = None,
    **options: Any,
) -> ProxiedServer:
    inner: Any = TCPTransport((LOCAL, 0))
    if tls is not None:
        inner = TLSTransport(inner, tls, handshake_timeout=5.0)
    return ProxiedServer(
        transport=ProxyProtocolTransport(inner, mode=mode, **options),
        acceptor=StreamAcceptor(),
        handler=handler,
        dispatcher=ThreadingDispatcher(daemon=True),
        verifier=verifier,
        error_policy=RecordingErrorPolicy() if errors is None else errors,
        timeout_policy=NoTimeout(),
    )


def exchange(address: Any, data: bytes) -> bytes:
    with socket.create_connection(address, timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(data)
        return read_to_eof(sock)


def proxy_errors(errors: RecordingErrorPolicy) -> list[ProxyProtocolError]:
    return [exc for _, exc in errors.errors if isinstance(exc, ProxyProtocolError)]


def queued(sock: socket.socket | int) -> int:
    """Bytes waiting in a socket's receive queue (``FIONREAD``)."""
    buf = array.array("i", [0])
    fcntl.ioctl(sock if isinstance(sock, int) else sock.fileno(), termios.FIONREAD, buf)
    return buf[0]


def wait_until(condition: Any, timeout: float = CLIENT_TIMEOUT) -> bool:
    """Poll *condition* until it holds (bounded): for kernel state no event reports."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


@contextlib.contextmanager
def connected_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A loopback TCP connection: (client, accepted) sockets."""
    with socket.create_server((LOCAL, 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=CLIENT_TIMEOUT)
        accepted, _ = listener.accept()
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with client, accepted:
        yield client, accepted


class TestHeaderReading:
    @pytest.mark.timeout(15)
    @pytest.mark.parametrize(
        ("mode", "header"),
        [("v1", V1_LINE), ("v2", v2_tcp4("203.0.113.7", 40001, b"\x05\x00\x03abc", checksum=True)), ("any", V1_LINE)],
    )
    def test_header_in_pieces_leaves_the_rest_in_the_socket(self, mode: ProxyMode, header: bytes) -> None:
        """A header sent in pieces (each consumed before the next is sent) is read whole; the bytes after it stay queued."""
        transport = ProxyProtocolTransport(TCPTransport((LOCAL, 0)), mode=mode)
        with connected_pair() as (client, accepted):
            fd = accepted.fileno()  # the layer moves it into a ProxiedSocket
            accepted_from = accepted.getpeername()
            started = Background(lambda: transport.start_request(accepted, accepted_from))
            cuts = [0, 1, 5, 13, 16, 20, len(header) - 1, len(header)]
            for a, b in zip(cuts, cuts[1:]):
                client.sendall(header[a:b])
                # The layer consumed that piece before the next one is sent.
                if not wait_until(lambda: queued(fd) == 0):
                    started.result()  # raises what went wrong
            payload = b"\x16\x03\x01 first request bytes"
            client.sendall(payload)
            proxied, client_address = started.result()
            assert isinstance(proxied, ProxiedSocket)
            assert client_address == proxied.client_address == ("203.0.113.7", 40001)
            assert proxied.proxy_address == client.getsockname()
            assert wait_until(lambda: queued(proxied) == len(payload))
            assert proxied.recv(100) == payload
            proxied.close()
        assert transport.statistics().proxied == 1

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("mode", ["v1", "v2", "any"])
    def test_leftover_bytes_reach_the_handler(self, mode: ProxyMode) -> None:
        """Header and request in one segment: the handler reads the request and sees the proxied client."""
        header = v2_tcp4("203.0.113.9", 5555, b"\x05\x00\x02id") if mode == "v2" else V1_LINE
        with running(proxy_server(mode)) as server:
            reply = exchange(server.server_address, header + b"hello\n")
        client = "('203.0.113.9', 5555)" if mode == "v2" else "('203.0.113.7', 40001)"
        unique = b"id" if mode == "v2" else b"-"
        assert reply == client.encode() + b"|" + unique + b"|HELLO\n"

    @pytest.mark.timeout(10)
    def test_local_health_check_is_served_with_the_real_endpoints(self) -> None:
        """A LOCAL header with a CRC32C TLV (HAProxy 2.6's check) is skipped whole; the client is the real peer."""
        check = bytes.fromhex("0d0a0d0a000d0a515549540a20000007030004a9b87e8f")
        with running(proxy_server("v2")) as server:
            with socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT) as sock:
                sock.sendall(check + b"ping\n")
                reply = read_to_eof(sock)
                me = sock.getsockname()
        assert reply == f"{me!r}|-|PING\n".encode()
        transport = server.transport
        assert isinstance(transport, ProxyProtocolTransport) and transport.statistics().local == 1

    @pytest.mark.timeout(15)
    def test_tls_above_the_proxy_header(self, tmp_path: Any) -> None:
        """With TLS inside the PROXY layer, the header is read first and the handshake runs on what follows."""
        ca = trustme.CA()
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("localhost").configure_cert(server_ctx)
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        with running(proxy_server("v2", tls=server_ctx)) as server:
            with socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT) as raw:
                raw.sendall(v2_tcp4("192.0.2.44", 7000, b"\x05\x00\x03tls"))
                with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"secret\n")
                    reply = read_to_eof(tls)
        assert reply == b"('192.0.2.44', 7000)|tls|SECRET\n"


class TestContracts:
    @pytest.mark.timeout(10)
    def test_transport_and_acceptor_contracts(self) -> None:
        """ProxyProtocolTransport keeps the Transport contract, and StreamAcceptor's over it."""

        def make() -> ProxyProtocolTransport[Any]:
            return ProxyProtocolTransport(TCPTransport((LOCAL, 0)), mode="any")

        @contextlib.contextmanager
        def pending(transport: Any) -> Iterator[socket.socket]:
            with socket.create_connection(transport.server_address, timeout=CLIENT_TIMEOUT) as client:
                yield client

        check_transport(make)
        check_acceptor(make, StreamAcceptor, pending)


class TestTLSInside:
    @pytest.mark.timeout(15)
    def test_failed_handshake_after_the_header_releases_the_connection(self) -> None:
        """A valid header followed by something that is not TLS fails the handshake and closes the descriptor."""
        ca = trustme.CA()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("localhost").configure_cert(context)
        transport = ProxyProtocolTransport(TLSTransport(TCPTransport((LOCAL, 0)), context, handshake_timeout=5), mode="v1")
        with connected_pair() as (client, accepted):
            fd = accepted.fileno()
            client.sendall(V1_LINE + b"GET / HTTP/1.0\r\n\r\n")
            with pytest.raises(TLSHandshakeError):
                transport.start_request(accepted, accepted.getpeername())
            with pytest.raises(OSError):
                os.fstat(fd)  # closed, not leaked
        assert transport.statistics().proxied == 1


class TestRefusals:
    @pytest.mark.timeout(15)
    def test_slow_drip_is_cut_at_the_deadline(self) -> None:
        """A header dripped one byte at a time is cut at the deadline, and the error says so."""
        errors = RecordingErrorPolicy()
        with running(proxy_server("v1", errors=errors, timeout=0.5)) as server:
            with socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT) as sock:
                started = time.monotonic()
                closed = threading.Event()

                def drip() -> None:
                    for byte in V1_LINE:
                        if closed.is_set():
                            return
                        try:
                            sock.send(bytes([byte]))
                        except OSError:
                            return
                        closed.wait(0.05)

                dripper = Background(drip)
                assert errors.wait_for(1)
                elapsed = time.monotonic() - started
                closed.set()
                dripper.result()
        (exc,) = proxy_errors(errors)
        assert exc.timed_out and "within 0.5 s" in exc.reason
        assert 0.45 <= elapsed < 4.0

    @pytest.mark.timeout(10)
    def test_silent_peer_is_cut_at_the_deadline(self) -> None:
        """A trusted peer that sends nothing is closed at the deadline; another client is served meanwhile."""
        errors = RecordingErrorPolicy()
        with running(proxy_server("any", errors=errors, timeout=1.0)) as server:
            with socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT) as silent:
                me = silent.getsockname()
                assert exchange(server.server_address, V1_LINE + b"hi\n").endswith(b"|HI\n")
                assert read_to_eof(silent) == b""
        (exc,) = proxy_errors(errors)
        assert exc.timed_out and exc.peer == me

    @pytest.mark.timeout(10)
    def test_oversize_v2_is_refused_from_the_fixed_part(self) -> None:
        """A declared length over the cap is refused after 16 bytes, without waiting for the body."""
        errors = RecordingErrorPolicy()
        with running(proxy_server("v2", errors=errors, max_v2_length=64)) as server:
            fixed = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", 65535)
            assert exchange(server.server_address, fixed) == b""
        (exc,) = proxy_errors(errors)
        assert "exceeds the limit of 64" in exc.reason and not exc.timed_out

    @pytest.mark.timeout(10)
    def test_long_v1_line_is_refused_at_107_bytes(self) -> None:
        """A v1 line without CRLF is refused once 107 bytes came, though more is sent."""
        errors = RecordingErrorPolicy()
        with running(proxy_server("v1", errors=errors)) as server:
            with socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT) as sock:
                sock.sendall(b"PROXY UNKNOWN " + b"x" * 200)
                assert read_to_eof(sock) == b""
        (exc,) = proxy_errors(errors)
        assert "no CRLF within the first 107 bytes" in exc.reason

    @pytest.mark.timeout(10)
    def test_untrusted_source_is_refused_before_reading(self) -> None:
        """A peer outside the trust list is refused; its header is never read, its handler never runs."""
        errors = RecordingErrorPolicy()
        with running(proxy_server("v1", errors=errors, trusted=["10.0.0.0/8"])) as server:
            assert exchange(server.server_address, V1_LINE + b"hi\n") == b""
        (exc,) = proxy_errors(errors)
        assert exc.reason.startswith("untrusted source") and isinstance(exc.peer, tuple) and exc.peer[0] == LOCAL
        transport = server.transport
        assert isinstance(transport, ProxyProtocolTransport)
        stats = transport.statistics()
        assert (stats.untrusted, stats.refused, stats.proxied) == (1, 1, 0)

    @pytest.mark.timeout(10)
    def test_untrusted_peer_bytes_stay_unread(self) -> None:
        """start_request refuses an untrusted peer without consuming a byte of what it sent."""
        transport = ProxyProtocolTransport(TCPTransport((LOCAL, 0)), mode="v1", trusted=["192.0.2.0/24"])
        with connected_pair() as (client, accepted):
            client.sendall(V1_LINE)
            assert wait_until(lambda: queued(accepted) == len(V1_LINE))
            with pytest.raises(ProxyProtocolError, match="untrusted"):
                transport.start_request(accepted, accepted.getpeername())
            assert queued(accepted) == len(V1_LINE)

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize(
        "data",
        [b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\x05hello", b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\nx\n", b"\n"],
    )
    def test_no_header_no_service(self, data: bytes) -> None:
        """A connection without a valid header is closed unserved ('any' still requires one)."""
        errors = RecordingErrorPolicy()
        with running(proxy_server("any", errors=errors)) as server:
            assert exchange(server.server_address, data) == b""
            assert exchange(server.server_address, V1_LINE + b"ok\n").endswith(b"|OK\n")
        assert len(proxy_errors(errors)) == 1

    @pytest.mark.timeout(10)
    def test_bad_checksum_is_refused(self) -> None:
        """A v2 header whose CRC32C does not match is refused."""
        errors = RecordingErrorPolicy()
        raw = bytearray(v2_tcp4("192.0.2.1", 1, checksum=True))
        raw[-1] ^= 0xFF
        with running(proxy_server("v2", errors=errors)) as server:
            assert exchange(server.server_address, bytes(raw) + b"x\n") == b""
        (exc,) = proxy_errors(errors)
        assert "CRC32C mismatch" in exc.reason



def v1_from(src: str, sport: int = 40001) -> bytes:
    """A v1 header naming client *src*:*sport*."""
    return f"PROXY TCP4 {src} 198.51.100.200 {sport} 443\r\n".encode()


class TestAdmission:
    """The verifiers judge the client the header names, not the proxy (every
    connection here comes from 127.0.0.1, which none of the lists names)."""

    @pytest.mark.timeout(15)
    @pytest.mark.parametrize(
        "verifier", [allow_networks("203.0.113.0/24"), deny_networks("198.51.100.0/24", "127.0.0.0/8")]
    )
    def test_cidr_lists_judge_the_proxied_client(self, verifier: Verifier[Any, Any]) -> None:
        """A CIDR list admits the client 203.0.113.7 and refuses 198.51.100.1 (closed unserved, no error report)."""
        errors = RecordingErrorPolicy()
        server = proxy_server("v1", verifier=verifier, errors=errors)
        with running(server):
            assert exchange(server.server_address, v1_from("203.0.113.7") + b"hi\n") == b"('203.0.113.7', 40001)|-|HI\n"
            assert exchange(server.server_address, v1_from("198.51.100.1") + b"hi\n") == b""
        assert errors.errors == []

    @pytest.mark.timeout(15)
    def test_per_ip_cap_counts_and_releases_the_proxied_client(self) -> None:
        """per_ip_cap(1) refuses a second connection naming the same client while the first is served, admits another client, and frees the slot when the first ends."""
        entered = threading.Semaphore(0)

        class Held(Who):
            def handle(self) -> None:
                entered.release()
                super().handle()

        server = proxy_server("v1", handler=Held, verifier=per_ip_cap(1))
        address = server.server_address
        with running(server), socket.create_connection(address, timeout=CLIENT_TIMEOUT) as first:
            first.sendall(v1_from("203.0.113.7", 1))
            assert entered.acquire(timeout=CLIENT_TIMEOUT), "the first connection was not served"
            assert exchange(address, v1_from("203.0.113.7", 2) + b"hi\n") == b""
            assert exchange(address, v1_from("198.51.100.1", 3) + b"hi\n") == b"('198.51.100.1', 3)|-|HI\n"
            first.sendall(b"one\n")
            assert read_to_eof(first) == b"('203.0.113.7', 1)|-|ONE\n"
            # The server releases the slot before its shutdown, so before this EOF.
            assert exchange(address, v1_from("203.0.113.7", 4) + b"hi\n") == b"('203.0.113.7', 4)|-|HI\n"

    @pytest.mark.timeout(15)
    def test_rate_limit_buckets_the_proxied_client(self) -> None:
        """rate_limit(burst=1) refuses the second connection naming 203.0.113.7 but admits 198.51.100.1."""
        server = proxy_server("v1", verifier=rate_limit(0.001, 1))
        address = server.server_address
        with running(server):
            assert exchange(address, v1_from("203.0.113.7", 1) + b"a\n") == b"('203.0.113.7', 1)|-|A\n"
            assert exchange(address, v1_from("203.0.113.7", 2) + b"b\n") == b""
            assert exchange(address, v1_from("198.51.100.1", 3) + b"c\n") == b"('198.51.100.1', 3)|-|C\n"

    @pytest.mark.timeout(15)
    def test_the_error_policy_sees_the_proxied_client(self) -> None:
        """A handler error is reported with the client the header names."""

        class Broken(StreamRequestHandler[Any]):
            def handle(self) -> None:
                raise ValueError("broken handler")

        errors = RecordingErrorPolicy()
        server = proxy_server("v1", handler=Broken, errors=errors)
        with running(server):
            assert exchange(server.server_address, v1_from("203.0.113.7")) == b""
            assert errors.wait_for()
        [(client_address, exc)] = errors.errors
        assert client_address == ("203.0.113.7", 40001) and isinstance(exc, ValueError)

class TestDatagrams:
    @pytest.mark.timeout(10)
    def test_every_datagram_carries_its_header(self, caplog: pytest.LogCaptureFixture) -> None:
        """Each datagram's v2 header is stripped; the handler sees the proxied client and replies to the proxy."""
        seen: list[tuple[object, bytes, object]] = []
        done = threading.Event()

        class Echo(BaseRequestHandler[Any, Any]):
            def handle(self) -> None:
                request = self.request
                assert isinstance(request, ProxiedDatagram)
                payload, sock = request
                seen.append((self.client_address, payload, request.proxy_header.command))
                sock.sendto(payload.upper(), request.proxy_address)
                if len(seen) == 3:
                    done.set()

        errors = RecordingErrorPolicy()
        acceptor = ProxyProtocolDatagramAcceptor()
        server: Server[Any, Any] = Server(
            transport=UDPTransport((LOCAL, 0)),
            acceptor=acceptor,
            handler=Echo,
            error_policy=errors,
            timeout_policy=NoTimeout(),
        )
        udp4 = V2_SIGNATURE + b"\x21\x12\x00\x0c" + socket.inet_aton("203.0.113.5") + socket.inet_aton(LOCAL)
        with running(server), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as proxy:
            proxy.settimeout(CLIENT_TIMEOUT)
            proxy.bind((LOCAL, 0))
            me = proxy.getsockname()
            address = server.server_address
            proxy.sendto(udp4 + struct.pack("!HH", 5000, 53) + b"one", address)
            assert proxy.recv(100) == b"ONE"
            proxy.sendto(b"no header at all", address)  # dropped, the server goes on
            proxy.sendto(udp4 + struct.pack("!HH", 5001, 53) + b"two", address)
            assert proxy.recv(100) == b"TWO"
            proxy.sendto(V2_SIGNATURE + b"\x20\x00\x00\x00" + b"three", address)  # LOCAL
            assert proxy.recv(100) == b"THREE"
            assert done.wait(CLIENT_TIMEOUT)
        assert seen == [
            (("203.0.113.5", 5000), b"one", Command.PROXY),
            (("203.0.113.5", 5001), b"two", Command.PROXY),
            (me, b"three", Command.LOCAL),
        ]
        stats = acceptor.statistics()
        assert (stats.proxied, stats.local, stats.refused) == (2, 1, 1)
        assert f"dropped a datagram: PROXY protocol from {me!r}: expected a v2 header" in caplog.text

    @pytest.mark.timeout(10)
    def test_stdlib_style_handler_replies_to_the_proxy(self) -> None:
        """A DatagramRequestHandler's reply goes to the proxy that relayed the datagram, not to the client it names."""

        class Upper(DatagramRequestHandler[Any]):
            def handle(self) -> None:
                self.wfile.write(self.rfile.read().upper())

        server: Server[Any, Any] = Server(
            transport=UDPTransport((LOCAL, 0)),
            acceptor=ProxyProtocolDatagramAcceptor(),
            handler=Upper,
            error_policy=RecordingErrorPolicy(),
            timeout_policy=NoTimeout(),
        )
        header = V2_SIGNATURE + b"\x21\x12\x00\x0c" + socket.inet_aton("127.0.0.9") + socket.inet_aton(LOCAL)
        with running(server), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as proxy:
            proxy.settimeout(CLIENT_TIMEOUT)
            proxy.bind((LOCAL, 0))
            proxy.sendto(header + struct.pack("!HH", 6000, 53) + b"relayed", server.server_address)
            assert proxy.recv(100) == b"RELAYED"


class TestCommandLine:
    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("transport", ["tcp", "udp"])
    def test_serve_with_proxy_protocol(self, transport: str, caplog: pytest.LogCaptureFixture) -> None:
        """``serve --proxy-protocol`` serves the proxied client and logs it on the debug request line."""
        mode = "any" if transport == "tcp" else "v2"
        args = build_parser().parse_args(
            ["serve", "--transport", transport, "--port", "0", "--proxy-protocol", mode, "--proxy-trust", "127.0.0.0/8"]
        )
        server, _ = build_server(args)
        caplog.set_level(logging.DEBUG, logger="composable_server.services")
        with running(server):
            if transport == "tcp":
                assert exchange(server.server_address, V1_LINE + b"hello\n") == b"HELLO\n"
            else:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as proxy:
                    proxy.settimeout(CLIENT_TIMEOUT)
                    proxy.sendto(v2_udp4("203.0.113.7", 40001) + b"hello", server.server_address)
                    assert proxy.recv(100) == b"HELLO"
        assert "request from 203.0.113.7:40001" in caplog.text

    @pytest.mark.timeout(10)
    def test_serve_allow_judges_the_proxied_client(self, caplog: pytest.LogCaptureFixture) -> None:
        """``serve --proxy-protocol v1 --allow`` admits the client the header names, though the proxy is outside the list."""
        args = build_parser().parse_args(
            ["serve", "--transport", "tcp", "--port", "0", "--proxy-protocol", "v1", "--allow", "203.0.113.0/24"]
        )
        server, _ = build_server(args)
        caplog.set_level(logging.DEBUG, logger="composable_server.services")
        with running(server):
            assert exchange(server.server_address, v1_from("203.0.113.7") + b"hello\n") == b"HELLO\n"
            assert exchange(server.server_address, v1_from("198.51.100.1") + b"hello\n") == b""
        assert "request from 203.0.113.7:40001" in caplog.text
        assert "request from 198.51.100.1" not in caplog.text

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            (["--proxy-trust", "10.0.0.0/8"], "--proxy-trust applies only with --proxy-protocol"),
            (["--transport", "udp", "--proxy-protocol", "v1"], "--proxy-protocol v1 is for stream transports"),
            (["--proxy-protocol", "v3"], "invalid choice: 'v3'"),
        ],
    )
    def test_bad_proxy_options_are_refused(
        self, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Inconsistent PROXY options exit 2 with one line naming the problem."""
        with pytest.raises(SystemExit) as info:
            main(["serve", "--port", "0", *argv])
        assert info.value.code == 2
        assert message in capsys.readouterr().err


def v2_udp4(src: str, sport: int) -> bytes:
    return (
        V2_SIGNATURE
        + b"\x21\x12\x00\x0c"
        + socket.inet_aton(src)
        + socket.inet_aton(LOCAL)
        + struct.pack("!HH", sport, 9999)
    )


def header_from(source: tuple[str, int]) -> ProxyHeader:
    return ProxyHeader(1, Command.PROXY, socket.AF_INET, socket.SOCK_STREAM, source, ("198.51.100.1", 443), ())


class TestRequestOps:
    """The stream and datagram request operations on proxied requests."""

    @pytest.mark.timeout(5)
    def test_a_proxied_socket_takes_kernel_timeouts(self) -> None:
        """A ProxiedSocket (a plain socket underneath) gets SO_RCVTIMEO, not a Python timeout, when the handler allows."""
        left, right = socket.socketpair()
        with right, ProxiedSocket.adopt(left, header_from(("203.0.113.7", 1)), "") as proxied:
            STREAM_REQUESTS.limit_idle(proxied, 2.5, kernel=True)
            assert proxied.gettimeout() is None
            assert proxied.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16) != bytes(16)

    @pytest.mark.timeout(5)
    def test_a_tls_socket_keeps_python_timeouts(self) -> None:
        """An SSLSocket gets settimeout() even when the handler allows kernel timeouts."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        left, right = socket.socketpair()
        with right, context.wrap_socket(left, server_side=True, do_handshake_on_connect=False) as tls:
            STREAM_REQUESTS.limit_idle(tls, 2.5, kernel=True)
            assert tls.gettimeout() == 2.5
            assert tls.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16) == bytes(16)

    @pytest.mark.timeout(5)
    def test_a_proxied_datagram_is_rejected_through_the_proxy(self) -> None:
        """A rejection message for a PROXY datagram goes to the proxy that relayed it, not to the client it names."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener, socket.socket(
            socket.AF_INET, socket.SOCK_DGRAM
        ) as proxy:
            listener.bind(("127.0.0.1", 0))
            proxy.bind(("127.0.0.1", 0))
            proxy.settimeout(CLIENT_TIMEOUT)
            # A loopback client: were the message misdirected, it would not leave the host.
            request = ProxiedDatagram(b"query", listener, header_from(("127.0.0.9", 9)), proxy.getsockname())
            DATAGRAM_REQUESTS.reject(request, b"busy", request.client_address)
            assert proxy.recvfrom(100) == (b"busy", listener.getsockname())
