"""Acceptors: from "the listening socket is readable" to one request.

* :class:`StreamAcceptor` - ``accept()``: the request is the connected socket;
* :class:`DatagramAcceptor` - ``recvfrom()``: the request is ``(data, socket)``;
  an oversized datagram is detected and dropped, never handed over truncated.

Both are generic over the address type through their ``accept`` method, so
one instance fits any transport of its socket type, and a stream acceptor
wired to a datagram transport is a type error.
"""

from __future__ import annotations

import _socket
import logging
import threading
import time
from collections.abc import Callable
from socket import getdefaulttimeout as _getdefaulttimeout
from socket import socket as Socket
from typing import Final, TypeVar, cast, final

import attrs

from ._util import LogLimiter
from .exceptions import DatagramTooLargeError
from .interfaces import DatagramRequest, Transport

__all__ = ("DEFAULT_MAX_PACKET_SIZE", "OVERSIZE_LOG_INTERVAL", "DatagramAcceptor", "StreamAcceptor")

_logger = logging.getLogger("composable_server.acceptors")

AddressT = TypeVar("AddressT")

# Large enough for any UDP datagram: 65535 minus the 8-byte UDP header, minus
# the 20-byte IPv4 header gives 65507; IPv6 allows 65527 (RFC 8200 s. 5).
# stdlib UDPServer uses 8192 and silently truncates anything larger.
DEFAULT_MAX_PACKET_SIZE: Final = 65535


# socket.socket.accept() without its two enum conversions: it builds the new
# socket from ``self.family`` and ``self.type``, properties that turn the C
# level ints into AddressFamily/SocketKind members through enum.py, Python
# code that writes ~27 pages per accept (refcounts), which a forking server
# pays again after every fork as copy-on-write faults (issue 18).  The C
# level fields give the same ints; the new socket converts them when read.
_family: Final = cast("Callable[[Socket], int]", vars(_socket.socket)["family"].__get__)
_type: Final = cast("Callable[[Socket], int]", vars(_socket.socket)["type"].__get__)
_proto: Final = cast("Callable[[Socket], int]", vars(_socket.socket)["proto"].__get__)


@final
@attrs.frozen
class StreamAcceptor:
    """Accepts one connection: the request is the connected socket."""

    def accept(self, transport: Transport[Socket, AddressT]) -> tuple[Socket, AddressT]:
        """``transport.socket.accept()``.

        A plain ``socket.socket`` listener is accepted as ``socket.accept()``
        does, minus its enum conversions; any other (an ``ssl.SSLSocket``)
        through its own ``accept()``.

        Raises:
            OSError: as ``accept(2)``: ``EAGAIN`` (nothing pending on a
                non-blocking socket), ``ECONNABORTED``, ``EMFILE``, ...
        """
        sock = transport.socket
        if type(sock) is not Socket:
            conn, address = sock.accept()
            return conn, cast(AddressT, address)
        # The C accept that socket.accept() wraps (not in typeshed); no
        # typing.cast() for the address either: cast is a Python call.
        fd, address = sock._accept()  # type: ignore[attr-defined]  # see above
        conn = Socket(_family(sock), _type(sock), _proto(sock), fd)
        # As socket.accept(): a listener with a timeout may hand out a
        # non-blocking descriptor (BSD), which a blocking socket must not have.
        if _getdefaulttimeout() is None and sock.gettimeout():
            conn.setblocking(True)
        return conn, address


# At most one log record about dropped datagrams per this many seconds.
OVERSIZE_LOG_INTERVAL: Final = 10.0


@final
@attrs.define(eq=False)
class DatagramAcceptor:
    """Receives one datagram: the request is ``(data, listening_socket)``.

    A datagram larger than *max_packet_size* is never handed to the handler
    as if it were whole: it is read into a buffer one byte larger than the
    limit, so a datagram that fills it is known to be too large (what
    ``recvmsg(2)`` would report as ``MSG_TRUNC``, without its cost); it is
    dropped, counted (:attr:`dropped`), logged at WARNING at most once per
    :data:`OVERSIZE_LOG_INTERVAL` seconds, and :meth:`accept` raises
    :class:`~composable_server.exceptions.DatagramTooLargeError` (``EMSGSIZE``,
    which the server skips without pausing accepts).

    Args:
        max_packet_size: the largest datagram accepted (default 65535: any
            UDP datagram; the compat classes pass their ``max_packet_size``,
            stdlib's 8192, where stdlib ``UDPServer`` truncates silently).
        logger: where drops are logged.
    """

    max_packet_size: int = attrs.field(default=DEFAULT_MAX_PACKET_SIZE, validator=attrs.validators.ge(1))
    logger: logging.Logger = attrs.field(default=_logger, kw_only=True, repr=False)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock, repr=False)
    _dropped: int = attrs.field(init=False, default=0)
    _log: LogLimiter = attrs.field(init=False, factory=lambda: LogLimiter(OVERSIZE_LOG_INTERVAL), repr=False)

    @property
    def dropped(self) -> int:
        """How many oversized datagrams were dropped."""
        return self._dropped

    def accept(self, transport: Transport[DatagramRequest, AddressT]) -> tuple[DatagramRequest, AddressT]:
        """Receive one datagram: ``recvfrom(max_packet_size + 1)``.

        Raises:
            DatagramTooLargeError: the datagram was larger than
                *max_packet_size* and was dropped.
            OSError: from ``recvfrom(2)``.
        """
        sock = transport.socket
        # One byte more than the limit: a datagram that fills it is too large.
        # Same verdict as recvmsg()'s MSG_TRUNC flag, at recvfrom()'s cost
        # (recvmsg measured ~0.27 us slower per datagram on loopback).
        limit = self.max_packet_size
        data, address = sock.recvfrom(limit + 1)
        if len(data) > limit:
            raise self.oversized(address)
        # recvfrom's address (Any in typeshed) is the transport's AddressT: no cast() call per datagram.
        return (data, sock), address

    def oversized(self, address: object) -> DatagramTooLargeError:
        """Count and log a datagram from *address* larger than
        *max_packet_size* that the caller received itself (the server's
        lean datagram loop reads ``recvfrom(max_packet_size + 1)`` as
        :meth:`accept` does); return the error :meth:`accept` raises for it."""
        self._drop(address)
        return DatagramTooLargeError(client_address=address, limit=self.max_packet_size)

    def _drop(self, address: object) -> None:
        now = time.monotonic()
        with self._lock:
            self._dropped += 1
            unlogged = self._log.due(now)
        if unlogged is None:
            return
        more = f" ({unlogged} more since the last report)" if unlogged else ""
        self.logger.warning(
            "dropped a datagram from %s: larger than max_packet_size=%d bytes%s",
            address,
            self.max_packet_size,
            more,
        )
