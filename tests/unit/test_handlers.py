"""The lean modes' handler factories, DatagramResponder and LineResponder,
on the in-memory fakes (the other handlers are tested on real sockets, in
tests/integration/test_handlers.py)."""

from __future__ import annotations

import logging
import socket
from typing import cast

import pytest

from composable_server._request import client_speaks_first, parks_connections, takes_kernel_timeouts
from composable_server.handlers import DEFAULT_MAX_LINE_LENGTH, DatagramResponder, LineResponder
from composable_server.interfaces import DatagramHandler, DatagramRequest, InetAddress, LineHandler, Verdict
from composable_server.proxy import Command, ProxiedDatagram, ProxyHeader
from composable_server.server import Server
from composable_server.testing import (
    InlineDispatcher,
    MemoryAcceptor,
    MemoryRequest,
    MemoryRequestOps,
    MemoryTransport,
    RecordingErrorPolicy,
)

CLIENT: InetAddress = ("192.0.2.7", 4000)


class _ReplySocket:
    """Stands for the listening socket of a datagram request: records ``sendto``."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, object]] = []

    def sendto(self, data: bytes, address: object) -> int:
        self.sent.append((bytes(data), address))
        return len(data)


class UpperDatagrams:
    """A DatagramHandler: capitals; b"boom" raises, b"quiet" gets no reply
    (also tests/integration/test_handlers.py's)."""

    def __init__(self) -> None:
        self.seen: list[tuple[bytes, object]] = []

    def handle_datagram(self, data: bytes, client_address: object) -> bytes | None:
        self.seen.append((data, client_address))
        if data == b"boom":
            raise ValueError("boom")
        return None if data == b"quiet" else data.upper()


def _request(data: bytes, sock: _ReplySocket) -> DatagramRequest:
    return (data, cast(socket.socket, sock))  # the responder only calls sendto on it


class TestDatagramResponder:
    def test_is_a_datagram_handler_factory(self) -> None:
        """A class with handle_datagram is a DatagramHandler; the responder keeps it."""
        handler: DatagramHandler[InetAddress] = UpperDatagrams()
        assert DatagramResponder(handler).handler is handler
        assert "DatagramResponder" in repr(DatagramResponder(handler))

    def test_sends_the_reply_to_the_client(self) -> None:
        """The reply goes to the client address through the request's socket."""
        sock, handler = _ReplySocket(), UpperDatagrams()
        DatagramResponder(handler)(_request(b"hi", sock), CLIENT, None)
        assert handler.seen == [(b"hi", CLIENT)]
        assert sock.sent == [(b"HI", CLIENT)]

    def test_empty_reply_is_sent(self) -> None:
        """b"" is a reply: an empty datagram, as DatagramRequestHandler sends."""
        sock = _ReplySocket()
        DatagramResponder(UpperDatagrams())(_request(b"", sock), CLIENT, None)
        assert sock.sent == [(b"", CLIENT)]

    def test_none_sends_nothing(self) -> None:
        """None means no reply."""
        sock = _ReplySocket()
        DatagramResponder(UpperDatagrams())(_request(b"quiet", sock), CLIENT, None)
        assert sock.sent == []

    def test_exception_reaches_the_caller_without_reply(self) -> None:
        """A raising handler's exception propagates (the server's job reports it); nothing is sent."""
        sock = _ReplySocket()
        with pytest.raises(ValueError, match="boom"):
            DatagramResponder(UpperDatagrams())(_request(b"boom", sock), CLIENT, None)
        assert sock.sent == []

    def test_proxied_datagram_is_answered_through_the_proxy(self) -> None:
        """A datagram that came with a PROXY header is handled for the client it names, and answered to the proxy."""
        sock, handler = _ReplySocket(), UpperDatagrams()
        proxy: InetAddress = ("198.51.100.1", 5000)
        header = ProxyHeader(2, Command.PROXY, socket.AF_INET, socket.SOCK_DGRAM, CLIENT, ("203.0.113.9", 53))
        request = ProxiedDatagram(b"via", cast(socket.socket, sock), header, proxy)
        DatagramResponder(handler)(request, request.client_address, None)
        assert handler.seen == [(b"via", CLIENT)]
        assert sock.sent == [(b"VIA", proxy)]

    @pytest.mark.timeout(10)
    def test_server_reports_a_failing_datagram_and_serves_on(self) -> None:
        """On a Server (memory fakes), a raising datagram goes to the error
        policy without a reply, and the next datagram is answered."""
        transport: MemoryTransport[DatagramRequest, InetAddress] = MemoryTransport(
            ("0.0.0.0", 0), request_ops=MemoryRequestOps(connections=False)
        )
        errors, sock, handler = RecordingErrorPolicy(), _ReplySocket(), UpperDatagrams()
        server = Server(
            transport=transport,
            acceptor=MemoryAcceptor(),
            handler=DatagramResponder(handler),
            dispatcher=InlineDispatcher(),
            error_policy=errors,
        )
        with server:
            transport.connect(_request(b"boom", sock), CLIENT)
            transport.connect(_request(b"next", sock), CLIENT)
            server.handle_request()
            server.handle_request()
        assert [type(exc) for exc in errors.exceptions] == [ValueError]
        assert errors.errors[0].client_address == CLIENT
        assert sock.sent == [(b"NEXT", CLIENT)]
        assert [data for data, _ in handler.seen] == [b"boom", b"next"]


# -- the lean line mode: LineResponder ------------------------------------------------


class _ChunkSocket:
    """Stands for a connected socket: ``recv`` returns the scripted chunks in
    order (then EOF, or raises an item that is an exception); records ``sendall``."""

    def __init__(self, *chunks: bytes | Exception) -> None:
        self.chunks = list(chunks)
        self.sent: list[bytes] = []

    def recv(self, size: int) -> bytes:
        if not self.chunks:
            return b""
        chunk = self.chunks.pop(0)
        if isinstance(chunk, Exception):
            raise chunk
        return chunk

    def sendall(self, data: bytes) -> None:
        self.sent.append(bytes(data))


class UpperLines:
    """Upper-cases lines; ``quit`` closes, ``quiet`` gets no reply, ``boom`` raises
    (the LineHandler of these tests and tests/integration/test_parking_lines.py)."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def handle_line(self, line: bytes, client_address: object) -> bytes | None:
        self.seen.append(line)
        if line == b"quit\n":
            return None
        if line == b"quiet\n":
            return b""
        if line == b"boom\n":
            raise ValueError("boom")
        return line.upper()


def _serve(responder: LineResponder[InetAddress], sock: _ChunkSocket, server: object = None) -> Verdict:
    served = responder(cast(socket.socket, sock), CLIENT, server)  # the responder only calls recv/sendall
    verdict: Verdict = served.verdict
    return verdict


class TestLineResponder:
    def test_is_a_parking_handler_factory_of_a_line_handler(self) -> None:
        """It keeps its LineHandler and declares the capabilities the server reads."""
        handler: LineHandler[InetAddress] = UpperLines()
        responder = LineResponder(handler)
        assert responder.handler is handler and responder.max_line_length == DEFAULT_MAX_LINE_LENGTH
        assert parks_connections(responder) and takes_kernel_timeouts(responder)
        with pytest.raises(ValueError, match="max_line_length must be >= 1"):
            LineResponder(handler, 0)

    def test_one_line_is_answered_and_the_connection_kept(self) -> None:
        sock, handler = _ChunkSocket(b"hi\n"), UpperLines()
        assert _serve(LineResponder(handler), sock) is Verdict.KEEP
        assert handler.seen == [b"hi\n"]
        assert sock.sent == [b"HI\n"]

    def test_a_memory_request_is_served(self) -> None:
        """On the testing fakes' MemoryRequest (all input in one recv): every line answered, one send."""
        request = MemoryRequest(b"a\nb\n")
        served = LineResponder(UpperLines())(cast(socket.socket, request), CLIENT, None)  # recv/sendall only
        assert served.verdict is Verdict.KEEP
        assert bytes(request.sent) == b"A\nB\n"

    def test_pipelined_lines_are_answered_in_one_send(self) -> None:
        """The replies of one read go out joined; b"" adds nothing."""
        sock = _ChunkSocket(b"a\nquiet\nb\n")
        assert _serve(LineResponder(UpperLines()), sock) is Verdict.KEEP
        assert sock.sent == [b"A\nB\n"]

    def test_a_partial_line_is_completed_in_place(self) -> None:
        """On the job path the responder reads on until the line ends (the idle budget bounds each read)."""
        sock, handler = _ChunkSocket(b"a\nhal", b"f\n"), UpperLines()
        assert _serve(LineResponder(handler), sock) is Verdict.KEEP
        assert handler.seen == [b"a\n", b"half\n"]
        assert sock.sent == [b"A\n", b"HALF\n"]

    def test_serve_lines_returns_the_partial_line_left(self) -> None:
        """serve_lines (the loop's lean call) hands the partial line back and takes it with the next read."""
        handler = UpperLines()
        responder = LineResponder(handler)
        sock = cast(socket.socket, _ChunkSocket(b"x\npar", b"tial\n"))
        rest = responder.serve_lines(sock, b"", CLIENT)
        assert rest == b"par"
        assert responder.serve_lines(sock, b"par", CLIENT) == b""
        assert handler.seen == [b"x\n", b"partial\n"]

    def test_none_closes_after_the_earlier_replies(self) -> None:
        sock, handler = _ChunkSocket(b"a\nquit\nb\n"), UpperLines()
        assert _serve(LineResponder(handler), sock) is Verdict.CLOSE
        assert handler.seen == [b"a\n", b"quit\n"]
        assert sock.sent == [b"A\n"]

    def test_eof_closes_and_drops_an_unterminated_line(self) -> None:
        sock, handler = _ChunkSocket(b"a\nrest"), UpperLines()
        assert _serve(LineResponder(handler), sock) is Verdict.CLOSE
        assert handler.seen == [b"a\n"]
        assert _serve(LineResponder(handler), _ChunkSocket()) is Verdict.CLOSE

    def test_a_line_over_the_bound_closes_with_a_warning(self, caplog: pytest.LogCaptureFixture) -> None:
        """A line longer than max_line_length (newline included), whole or still partial, closes the connection."""
        with caplog.at_level(logging.WARNING, logger="composable_server"):
            whole = _ChunkSocket(b"ok\n12345\n")
            assert _serve(LineResponder(UpperLines(), 5), whole) is Verdict.CLOSE
            assert whole.sent == [b"OK\n"]
            assert _serve(LineResponder(UpperLines(), 5), _ChunkSocket(b"12345")) is Verdict.CLOSE
            handler = UpperLines()
            assert _serve(LineResponder(handler, 5), _ChunkSocket(b"1234\n")) is Verdict.KEEP  # exactly the bound
        assert handler.seen == [b"1234\n"]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2 and all("a line longer than 5 bytes" in w for w in warnings)

    def test_an_exception_reaches_the_caller(self) -> None:
        """A raising handler's exception propagates (the server's job reports it and closes the connection)."""
        with pytest.raises(ValueError, match="boom"):
            _serve(LineResponder(UpperLines()), _ChunkSocket(b"boom\n"))
        with pytest.raises(ConnectionResetError):
            _serve(LineResponder(UpperLines()), _ChunkSocket(ConnectionResetError()))

    def test_its_client_speaks_first(self) -> None:
        """A line protocol's client speaks first: a silent new connection may wait among the kept ones."""
        assert client_speaks_first(LineResponder(UpperLines()))

    @pytest.mark.timeout(10)
    def test_on_a_memory_server_the_job_path_applies(self) -> None:
        """Memory fakes are no plain stream transport: the loop leaves the lines to the job."""
        transport: MemoryTransport[socket.socket, InetAddress] = MemoryTransport(("0.0.0.0", 0))
        server = Server(
            transport=transport, acceptor=MemoryAcceptor(), handler=LineResponder(UpperLines()),
            dispatcher=InlineDispatcher(),
        )
        with server:
            assert server._inline_lines() is None
