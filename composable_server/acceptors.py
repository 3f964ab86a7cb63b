"""Acceptors: from "the listening socket is readable" to one request.

* :class:`StreamAcceptor` - ``accept()``: the request is the connected socket;
* :class:`DatagramAcceptor` - ``recvfrom()``: the request is ``(data, socket)``.

Both are generic over the address type through their ``accept`` method, so
one instance fits any transport of its socket type, and a stream acceptor
wired to a datagram transport is a type error.
"""

from __future__ import annotations

from socket import socket as Socket
from typing import Final, TypeVar, cast, final

import attrs

from .interfaces import DatagramRequest, Transport

__all__ = ("DEFAULT_MAX_PACKET_SIZE", "DatagramAcceptor", "StreamAcceptor")

AddressT = TypeVar("AddressT")

# Large enough for any UDP datagram: 65535 minus the 8-byte UDP header, minus
# the 20-byte IPv4 header gives 65507; IPv6 allows 65527 (RFC 8200 s. 5).
# stdlib UDPServer uses 8192 and silently truncates anything larger.
DEFAULT_MAX_PACKET_SIZE: Final = 65535


@final
@attrs.frozen
class StreamAcceptor:
    """Accepts one connection: the request is the connected socket."""

    def accept(self, transport: Transport[Socket, AddressT]) -> tuple[Socket, AddressT]:
        """``transport.socket.accept()``.

        Raises:
            OSError: as ``accept(2)``: ``EAGAIN`` (nothing pending on a
                non-blocking socket), ``ECONNABORTED``, ``EMFILE``, ...
        """
        conn, address = transport.socket.accept()
        return conn, cast(AddressT, address)


@final
@attrs.define(eq=False)
class DatagramAcceptor:
    """Receives one datagram: the request is ``(data, listening_socket)``.

    Args:
        max_packet_size: the largest datagram read whole; a longer one is
            truncated by the kernel (``recvfrom(2)``).
    """

    max_packet_size: int = attrs.field(default=DEFAULT_MAX_PACKET_SIZE, validator=attrs.validators.ge(1))

    def accept(self, transport: Transport[DatagramRequest, AddressT]) -> tuple[DatagramRequest, AddressT]:
        """``transport.socket.recvfrom(max_packet_size)``.

        Raises:
            OSError: from ``recvfrom(2)``.
        """
        sock = transport.socket
        data, address = sock.recvfrom(self.max_packet_size)
        return (data, sock), cast(AddressT, address)
