"""The base of the stream-transport wrappers (TLS in ``_tls``, PROXY in ``proxy``)."""

from __future__ import annotations

from socket import socket as Socket
from typing import Generic, TypeVar

from .interfaces import RequestOps, Transport

__all__ = ("_Wrapper",)

StreamAddressT = TypeVar("StreamAddressT")


class _Wrapper(Generic[StreamAddressT]):
    """What a stream-transport wrapper (TLS, PROXY) delegates to its *inner*
    transport unchanged; the wrapper adds ``start_request`` (and its own
    ``shutdown_request`` where the layer needs one)."""

    __slots__ = ()

    inner: Transport[Socket, StreamAddressT]

    @property
    def server_address(self) -> StreamAddressT:
        """The inner transport's address."""
        return self.inner.server_address

    @property
    def socket(self) -> Socket:
        """The inner transport's (plain) listening socket."""
        return self.inner.socket

    def bind(self) -> None:
        """Bind the inner transport."""
        self.inner.bind()

    def activate(self) -> None:
        """Listen on the inner transport."""
        self.inner.activate()

    def close(self) -> None:
        """Close the inner transport.  Idempotent; never raises OSError."""
        self.inner.close()

    def fileno(self) -> int:
        """The inner transport's descriptor (-1 once closed)."""
        return self.inner.fileno()

    @property
    def nonblocking(self) -> bool:
        """Whether the inner transport's listener is non-blocking."""
        return self.inner.nonblocking

    @property
    def request_ops(self) -> RequestOps[Socket]:
        """The inner transport's (stream) request operations."""
        return self.inner.request_ops

    def close_request(self, request: Socket) -> None:
        """Let the inner transport close the connection (idempotent)."""
        self.inner.close_request(request)

    def shutdown_request(self, request: Socket) -> None:
        """Let the inner transport shut the connection down.  Never raises OSError."""
        self.inner.shutdown_request(request)
