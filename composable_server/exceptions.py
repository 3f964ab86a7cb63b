"""The errors composable_server raises.

One base, :class:`ServerError`; each subclass also inherits the builtin that
callers already catch, so ``except ValueError`` keeps working for a bad
address and ``except OSError`` for a failed bind.  "We closed it"
(:class:`ServerClosedError`) is kept apart from "it broke under us" (an
:class:`OSError` from the kernel).
"""

from __future__ import annotations

import errno as _errno

__all__ = (
    "ActivationError",
    "AddressError",
    "BindError",
    "DatagramTooLargeError",
    "InheritedSocketError",
    "LineTooLongError",
    "PortRangeError",
    "ProxyProtocolError",
    "RestartLimitError",
    "ServerClosedError",
    "ServerError",
    "ServerStateError",
    "TLSHandshakeError",
)


class ServerError(Exception):
    """Base class of every error raised by composable_server itself."""


class AddressError(ServerError, ValueError):
    """An address does not fit its family: wrong shape, bad port, path too long.

    Attributes:
        address: the offending value, as given.
        family: the address family it was checked against (a ``socket.AddressFamily``
            or None when the family itself could not be determined).
    """

    def __init__(self, message: str, *, address: object, family: object = None) -> None:
        super().__init__(message)
        self.address = address
        self.family = family


class PortRangeError(AddressError, OverflowError):
    """A port number outside 0..65535.

    Also an :class:`OverflowError`, which is what ``socket.bind`` raises for
    such a port (``bind(): port must be 0-65535.``), so code written against
    stdlib ``socketserver`` that catches it keeps working; and an
    :class:`AddressError` (a ``ValueError``) like every other bad address.

    Attributes:
        port: the offending port.
    """

    def __init__(self, message: str, *, address: object, family: object = None, port: int) -> None:
        super().__init__(message, address=address, family=family)
        self.port = port


class BindError(ServerError, OSError):
    """The listening socket could not be bound (address in use, permission denied, ...).

    An :class:`OSError` with the kernel's ``errno`` and ``strerror``; the message
    also names the address.

    Attributes:
        address: the address that could not be bound.
    """

    def __init__(self, errno: int | None, strerror: str, *, address: object) -> None:
        super().__init__(errno, strerror)
        self.address = address

    def __str__(self) -> str:
        return f"cannot bind to {self.address!r}: {self.strerror} (errno {self.errno})"


class ServerClosedError(ServerError, RuntimeError):
    """The server (or component) was closed and then asked to do something."""


class ServerStateError(ServerError, RuntimeError):
    """A lifecycle method was called in a state where it cannot work, e.g.
    ``shutdown()`` from the thread running ``serve_forever()``, which would
    deadlock, or ``serve_forever()`` while it is already running."""


class RestartLimitError(ServerError, RuntimeError):
    """Prefork workers exited faster than the restart budget allows (a crash loop).

    Raised by :meth:`Prefork.serve_forever
    <composable_server.prefork.Prefork.serve_forever>` after it has stopped
    every worker: a crash loop must not become a fork bomb.
    """


class TLSHandshakeError(ServerError, OSError):
    """A TLS handshake failed or ran out of time; the connection is closed.

    Raised by :meth:`TLSTransport.start_request
    <composable_server.transports.TLSTransport.start_request>` in the worker,
    ``from`` the original :class:`ssl.SSLError`, :class:`TimeoutError` or
    :class:`OSError`, so the error policy logs who and why.  An
    :class:`OSError` (with the original ``errno`` when there was one), as the
    ``Transport.start_request`` contract requires.

    Attributes:
        client_address: the peer (None if it had already gone).
        reason: what went wrong, e.g. ``"timed out after 30.0 s"`` or
            ``"[SSL: WRONG_VERSION_NUMBER] wrong version number"``.
        timed_out: True if the deadline ran out.
    """

    def __init__(
        self, reason: str, *, client_address: object, timed_out: bool = False, errno: int | None = None
    ) -> None:
        super().__init__(errno, reason)
        self.client_address = client_address
        self.reason = reason
        self.timed_out = timed_out

    def __str__(self) -> str:
        return f"TLS handshake with {self.client_address!r} failed: {self.reason}"


class LineTooLongError(ServerError, ValueError):
    """A line read with a bound was longer than the bound.

    Raised by :meth:`StreamRequestHandler.read_line
    <composable_server.handlers.StreamRequestHandler.read_line>` once
    ``limit + 1`` bytes arrived without a newline; the rest of the line is
    still unread, so the connection is best closed.

    Attributes:
        limit: the bound, in bytes (newline included).
    """

    def __init__(self, limit: int) -> None:
        super().__init__(f"line longer than {limit} bytes (newline included)")
        self.limit = limit


class DatagramTooLargeError(ServerError, OSError):
    """A datagram was larger than the acceptor's maximum size and was dropped.

    Raised by :meth:`DatagramAcceptor.accept
    <composable_server.acceptors.DatagramAcceptor.accept>` when a datagram
    did not fit (it would have been truncated).  Its ``errno`` is ``EMSGSIZE``, which the accept
    path treats as transient (that one datagram is lost, the socket is fine),
    so it never triggers an accept back-off.

    Attributes:
        client_address: the sender.
        limit: the maximum size, in bytes.
    """

    def __init__(self, *, client_address: object, limit: int) -> None:
        super().__init__(_errno.EMSGSIZE, f"datagram from {client_address!r} larger than {limit} bytes, dropped")
        self.client_address = client_address
        self.limit = limit


class ActivationError(ServerError, RuntimeError):
    """No usable socket-activation environment where one was required.

    Raised by :func:`composable_server.systemd.listen_fds` (with
    ``required=True``) and :func:`~composable_server.systemd.select_socket`:
    ``LISTEN_FDS`` unset, ``LISTEN_PID`` naming another process (the variables
    were meant for a parent or were inherited by mistake), malformed values,
    or no socket of the requested name.

    Attributes:
        reason: what was found, e.g. ``"LISTEN_PID is 41, not this process (42)"``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"no socket activation: {reason}")
        self.reason = reason


class InheritedSocketError(ServerError, ValueError):
    """An inherited descriptor is not the socket it was expected to be.

    Raised when a socket passed by systemd (or given as a plain descriptor)
    has another address family or socket type than the caller asked for, is
    not a socket at all, or is a stream socket that is not listening.

    Attributes:
        fd: the descriptor.
        name: its ``LISTEN_FDNAMES`` name, or None.
        expected: what was asked for, e.g. ``"AF_INET/AF_INET6 SOCK_STREAM"``.
        found: what the descriptor is, e.g. ``"AF_UNIX SOCK_DGRAM"``.
    """

    def __init__(self, fd: int, *, expected: str, found: str, name: str | None = None) -> None:
        label = f"fd {fd}" if name is None else f"fd {fd} ({name!r})"
        super().__init__(f"{label}: expected {expected}, found {found}")
        self.fd = fd
        self.name = name
        self.expected = expected
        self.found = found
class ProxyProtocolError(ServerError, OSError, ValueError):
    """A PROXY protocol header was missing, malformed, too slow, too long, or
    came from a source that may not send one; the connection is refused.

    Raised by the parser in :mod:`composable_server.proxy` for bad bytes, and
    by :meth:`ProxyProtocolTransport.start_request
    <composable_server.proxy.ProxyProtocolTransport.start_request>` in the
    worker (then ``from`` the socket error, if there was one).  A
    :class:`ValueError` (bad input, as :class:`AddressError`) and an
    :class:`OSError` with ``errno`` ``EPROTO`` (``ETIMEDOUT`` for the
    deadline), as the ``Transport.start_request`` contract requires and so
    that a refused datagram is skipped by the accept path like any
    transient receive error.

    Attributes:
        reason: what was wrong, e.g. ``"v2: CRC32C mismatch: header says 0x12345678, computed 0x4caeac6a"``.
        peer: the connection's real peer address (the proxy), or None when
            not known (the parser alone, or the peer already gone).
        timed_out: True if the header did not arrive before the deadline.
    """

    def __init__(self, reason: str, *, peer: object = None, timed_out: bool = False) -> None:
        super().__init__(_errno.ETIMEDOUT if timed_out else _errno.EPROTO, reason)
        self.reason = reason
        self.peer = peer
        self.timed_out = timed_out

    def __str__(self) -> str:
        if self.peer is None:
            return f"PROXY protocol: {self.reason}"
        return f"PROXY protocol from {self.peer!r}: {self.reason}"
