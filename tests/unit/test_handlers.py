"""The lean datagram mode's handler factory, DatagramResponder, on the
in-memory fakes (the other handlers are tested on real sockets, in
tests/integration/test_handlers.py)."""

from __future__ import annotations

import socket
from typing import cast

import pytest

from composable_server.handlers import DatagramResponder
from composable_server.interfaces import DatagramHandler, DatagramRequest, InetAddress
from composable_server.proxy import Command, ProxiedDatagram, ProxyHeader
from composable_server.server import Server
from composable_server.testing import (
    InlineDispatcher,
    MemoryAcceptor,
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


class _Upper:
    """A DatagramHandler: capitals; b"boom" raises, b"quiet" gets no reply."""

    def __init__(self) -> None:
        self.seen: list[tuple[bytes, InetAddress]] = []

    def handle_datagram(self, data: bytes, client_address: InetAddress) -> bytes | None:
        self.seen.append((data, client_address))
        if data == b"boom":
            raise ValueError("boom")
        return None if data == b"quiet" else data.upper()


def _request(data: bytes, sock: _ReplySocket) -> DatagramRequest:
    return (data, cast(socket.socket, sock))  # the responder only calls sendto on it


class TestDatagramResponder:
    def test_is_a_datagram_handler_factory(self) -> None:
        """A class with handle_datagram is a DatagramHandler; the responder keeps it."""
        handler: DatagramHandler[InetAddress] = _Upper()
        assert DatagramResponder(handler).handler is handler
        assert "DatagramResponder" in repr(DatagramResponder(handler))

    def test_sends_the_reply_to_the_client(self) -> None:
        """The reply goes to the client address through the request's socket."""
        sock, handler = _ReplySocket(), _Upper()
        DatagramResponder(handler)(_request(b"hi", sock), CLIENT, None)
        assert handler.seen == [(b"hi", CLIENT)]
        assert sock.sent == [(b"HI", CLIENT)]

    def test_empty_reply_is_sent(self) -> None:
        """b"" is a reply: an empty datagram, as DatagramRequestHandler sends."""
        sock = _ReplySocket()
        DatagramResponder(_Upper())(_request(b"", sock), CLIENT, None)
        assert sock.sent == [(b"", CLIENT)]

    def test_none_sends_nothing(self) -> None:
        """None means no reply."""
        sock = _ReplySocket()
        DatagramResponder(_Upper())(_request(b"quiet", sock), CLIENT, None)
        assert sock.sent == []

    def test_exception_reaches_the_caller_without_reply(self) -> None:
        """A raising handler's exception propagates (the server's job reports it); nothing is sent."""
        sock = _ReplySocket()
        with pytest.raises(ValueError, match="boom"):
            DatagramResponder(_Upper())(_request(b"boom", sock), CLIENT, None)
        assert sock.sent == []

    def test_proxied_datagram_is_answered_through_the_proxy(self) -> None:
        """A datagram that came with a PROXY header is handled for the client it names, and answered to the proxy."""
        sock, handler = _ReplySocket(), _Upper()
        proxy: InetAddress = ("198.51.100.1", 5000)
        header = ProxyHeader(2, Command.PROXY, socket.AF_INET, socket.SOCK_DGRAM, CLIENT, ("203.0.113.9", 53))
        request = ProxiedDatagram(b"via", cast(socket.socket, sock), header, proxy)
        DatagramResponder(handler)(request, request.client_address, None)  # type: ignore[arg-type]  # Address: an IPv4 one here
        assert handler.seen == [(b"via", CLIENT)]
        assert sock.sent == [(b"VIA", proxy)]

    @pytest.mark.timeout(10)
    def test_server_reports_a_failing_datagram_and_serves_on(self) -> None:
        """On a Server (memory fakes), a raising datagram goes to the error
        policy without a reply, and the next datagram is answered."""
        transport: MemoryTransport[DatagramRequest, InetAddress] = MemoryTransport(
            ("0.0.0.0", 0), request_ops=MemoryRequestOps(connections=False)
        )
        errors, sock, handler = RecordingErrorPolicy(), _ReplySocket(), _Upper()
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
