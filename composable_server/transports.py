"""Transports: the listening socket of each family.

* :class:`TCPTransport` - IPv4 or IPv6 stream, the family chosen from the address;
* :class:`UDPTransport` - IPv4 or IPv6 datagram;
* :class:`UnixStreamTransport`, :class:`UnixDatagramTransport` - ``AF_UNIX``
  paths and Linux abstract names;
* :class:`TLSTransport` - TLS over any of the stream ones (from the private
  ``_tls`` module, loaded on first use of the name).

The socket is created on first use (``.socket``, :meth:`bind`), so a transport
that is built but never used holds no descriptor.  Addresses are checked when
the transport is built, so a wrong shape fails there with an
:class:`~composable_server.exceptions.AddressError` naming the value.
"""

from __future__ import annotations

import socket
from socket import socket as Socket  # `socket` is also a property name below
from typing import TYPE_CHECKING, ClassVar, Final, Generic, TypeVar, cast, final

import attrs

from ._request import DATAGRAM_REQUESTS, STREAM_REQUESTS, DatagramRequests, StreamRequests
from ._socketutil import check_inet_address, check_unix_address, family_name, inet_family_for
from ._unixpath import SocketFile, check_mode, unix_path
from .exceptions import AddressError, BindError, ServerClosedError
from .interfaces import DatagramRequest, InetAddress, UnixAddress

__all__ = (
    "DATAGRAM_REQUESTS",
    "DEFAULT_BACKLOG",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "STREAM_REQUESTS",
    "TCPTransport",
    "TLSStatistics",
    "TLSTransport",
    "UDPTransport",
    "UnixDatagramTransport",
    "UnixStreamTransport",
)

# stdlib TCPServer listens with a backlog of 5, which drops connections under
# any burst; the kernel caps the value at net.core.somaxconn anyway (4096 on
# Linux >= 5.4; nginx uses 511).
DEFAULT_BACKLOG: Final = socket.SOMAXCONN

AddressT = TypeVar("AddressT", InetAddress, UnixAddress)
RequestT = TypeVar("RequestT")
# start_request passes its client address through, whatever its type.
ClientT = TypeVar("ClientT")


@attrs.define(eq=False, repr=False)
class _SocketTransport(Generic[AddressT]):
    """Shared machinery: lazy socket, bind with options, idempotent close."""

    _kind: ClassVar[socket.SocketKind]

    address: AddressT
    family: socket.AddressFamily = attrs.field(kw_only=True)
    reuse_address: bool = attrs.field(kw_only=True, default=False)
    reuse_port: bool = attrs.field(kw_only=True, default=False)
    _sock: socket.socket | None = attrs.field(init=False, default=None)
    _bound: AddressT | None = attrs.field(init=False, default=None)
    _closed: bool = attrs.field(init=False, default=False)

    # -- Transport protocol -------------------------------------------------

    @property
    def server_address(self) -> AddressT:
        """The bound address after :meth:`bind` (port 0 resolved), else the requested one."""
        return self.address if self._bound is None else self._bound

    @property
    def socket(self) -> Socket:
        """The listening socket, created on first access.

        Raises:
            ServerClosedError: after :meth:`close`.
        """
        sock = self._sock
        if sock is None:
            if self._closed:
                raise ServerClosedError(f"{self!r} is closed")
            sock = self._sock = socket.socket(self.family, self._kind)
        return sock

    @socket.setter
    def socket(self, sock: Socket) -> None:
        # Replacing the socket is how stdlib users add TLS
        # (``server.socket = ctx.wrap_socket(server.socket, server_side=True)``).
        self._sock = sock

    def bind(self) -> None:
        """Set the socket options, bind, and record the bound address.

        Raises:
            BindError: the kernel refused the address (an OSError with its errno).
            ServerClosedError: after :meth:`close`.
        """
        sock = self.socket
        if self.reuse_address and hasattr(socket, "SO_REUSEADDR"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self._before_bind(sock)
        self._bind_socket(sock)
        self._bound = cast(AddressT, sock.getsockname())
        self._after_bind(sock)

    def activate(self) -> None:
        """Nothing to do for datagram sockets; stream transports listen."""

    # The accepted address is the client: the verifier runs in the accept loop.
    late_admission: ClassVar[bool] = False

    def start_request(self, request: RequestT, client_address: ClientT) -> tuple[RequestT, ClientT]:
        """Return *request* and *client_address* unchanged: plain sockets need no preparation."""
        return request, client_address

    def close(self) -> None:
        """Close the socket.  Idempotent; never raises OSError."""
        self._closed = True
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
            self._after_close()

    def fileno(self) -> int:
        """The listening descriptor, or -1 once closed."""
        if self._closed:
            return -1
        return self.socket.fileno()

    # -- hooks for families --------------------------------------------------

    def _before_bind(self, sock: Socket) -> None:
        pass

    def _bind_socket(self, sock: Socket) -> None:
        try:
            sock.bind(self.address)
        except OSError as exc:
            raise BindError(exc.errno, exc.strerror or str(exc), address=self.address) from exc

    def _after_bind(self, sock: Socket) -> None:
        pass

    def _after_close(self) -> None:
        pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else "bound" if self._bound is not None else "unbound"
        return f"<{type(self).__name__} {family_name(self.family)} {self.server_address!r} {state}>"


@attrs.define(eq=False, repr=False)
class _StreamTransport(_SocketTransport[AddressT]):
    _kind: ClassVar[socket.SocketKind] = socket.SOCK_STREAM
    backlog: int = attrs.field(kw_only=True, default=DEFAULT_BACKLOG, validator=attrs.validators.ge(0))
    # A non-blocking listener lets the serving loop accept every pending
    # connection per wake-up, and a prefork worker that lost the race for a
    # connection gets EAGAIN instead of blocking in accept() until the next
    # one.  Accepted sockets are blocking all the same (accept4(2) without
    # SOCK_NONBLOCK).  compat keeps stdlib's blocking socket.
    nonblocking: bool = attrs.field(kw_only=True, default=True)
    # Reject, abort, park, idle limit: shared by every stream transport.
    request_ops: ClassVar[StreamRequests] = STREAM_REQUESTS

    def activate(self) -> None:
        """Listen with :attr:`backlog`; make the socket non-blocking if :attr:`nonblocking`."""
        sock = self.socket
        sock.listen(self.backlog)
        if self.nonblocking:
            sock.setblocking(False)

    def shutdown_request(self, request: Socket) -> None:
        """``shutdown(SHUT_WR)`` then close; never raises OSError."""
        # Inline (a frame less per request: in a forked child, a
        # copy-on-write fault or two, tests.bench.forkcost).
        try:
            # SHUT_WR, as stdlib: the peer reads every byte we wrote, then EOF.
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the peer may already have closed (ENOTCONN)
        request.close()

    def close_request(self, request: Socket) -> None:
        """Close the connection without a shutdown (idempotent)."""
        request.close()


@attrs.define(eq=False, repr=False)
class _DatagramTransport(_SocketTransport[AddressT]):
    _kind: ClassVar[socket.SocketKind] = socket.SOCK_DGRAM
    # As for the stream listeners: every process polling a shared socket
    # wakes for one datagram, and a prefork worker that lost the race for it
    # must get EAGAIN and return to its poll loop (where it sees a stop), not
    # block in recvfrom() until the next datagram.  Replies go out through
    # the same socket, so a sendto() may now fail with EAGAIN when the
    # kernel cannot queue it (see _socketutil.send_datagram).  compat keeps
    # stdlib's blocking socket.
    nonblocking: bool = attrs.field(kw_only=True, default=True)
    request_ops: ClassVar[DatagramRequests] = DATAGRAM_REQUESTS

    def activate(self) -> None:
        """Make the socket non-blocking if :attr:`nonblocking` (a datagram socket does not listen)."""
        if self.nonblocking:
            self.socket.setblocking(False)

    def shutdown_request(self, request: DatagramRequest) -> None:
        """Nothing: the request shares the listening socket."""

    def close_request(self, request: DatagramRequest) -> None:
        """Nothing: the request shares the listening socket."""


def _default_inet_family(self: _SocketTransport[InetAddress]) -> socket.AddressFamily:
    return inet_family_for(self.address)



def _validate_inet(
    instance: _SocketTransport[InetAddress], attribute: attrs.Attribute[InetAddress], address: InetAddress
) -> None:
    if instance.family not in (socket.AF_INET, socket.AF_INET6):
        raise AddressError(
            f"an IP transport needs AF_INET or AF_INET6, got {family_name(instance.family)}",
            address=address,
            family=instance.family,
        )
    check_inet_address(address, instance.family)


def _validate_unix(instance: object, attribute: attrs.Attribute[UnixAddress], address: UnixAddress) -> None:
    check_unix_address(address)


class _DualStack:
    """The IPv6 half of the IP transports (a mixin: it adds no slots)."""

    __slots__ = ()

    dual_stack: bool | None

    def _before_bind(self, sock: Socket) -> None:
        if sock.family == socket.AF_INET6 and self.dual_stack is not None:
            # IPV6_V6ONLY=0 also accepts IPv4 clients as ::ffff:a.b.c.d (ipv6(7)).
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if self.dual_stack else 1)


def _validate_mode(
    instance: _SocketTransport[UnixAddress], attribute: attrs.Attribute[int | None], mode: int | None
) -> None:
    check_mode(instance.address, mode)


class _UnixFile:
    """The socket-file half of the Unix transports (a mixin: it adds no slots).

    Binding and removal follow the rules of
    :class:`~composable_server._unixpath.SocketFile`.
    """

    __slots__ = ()

    address: UnixAddress
    mode: int | None
    unlink_on_close: bool
    _file: SocketFile

    def _bind_socket(self, sock: Socket) -> None:
        self._file.bind(sock, self.address, self.mode)

    def _after_close(self) -> None:
        if self.unlink_on_close:
            self._file.remove()


@final
@attrs.define(eq=False, repr=False)
class TCPTransport(_DualStack, _StreamTransport[InetAddress]):
    """A TCP listener on IPv4 or IPv6.

    Args:
        address: ``(host, port)`` or ``(host, port, flowinfo, scope_id)``; port
            0 picks a free port.  An IPv6 host (``"::1"``, ``"::"``) selects
            ``AF_INET6`` unless *family* says otherwise.
        family: force ``AF_INET`` or ``AF_INET6``.
        reuse_address: set ``SO_REUSEADDR`` (default True: a restarted server
            can bind while old connections sit in TIME_WAIT).
        reuse_port: set ``SO_REUSEPORT`` (several listeners share the port).
        backlog: ``listen()`` backlog.
        nonblocking: make the listening socket non-blocking (default True),
            so the serving loop accepts every pending connection per wake-up.
        dual_stack: for IPv6, accept IPv4 too (True), only IPv6 (False), or
            leave the system default (None).

    Raises:
        AddressError: the address does not fit the family.
    """

    address: InetAddress = attrs.field(validator=_validate_inet)
    family: socket.AddressFamily = attrs.field(
        kw_only=True, default=attrs.Factory(_default_inet_family, takes_self=True)
    )
    reuse_address: bool = attrs.field(kw_only=True, default=True)
    dual_stack: bool | None = attrs.field(kw_only=True, default=None)


@final
@attrs.define(eq=False, repr=False)
class UDPTransport(_DualStack, _DatagramTransport[InetAddress]):
    """A UDP socket on IPv4 or IPv6; requests are ``(data, socket)``.

    Args: as :class:`TCPTransport`, without a backlog; *reuse_address*
        defaults to False, as stdlib ``UDPServer``.  *nonblocking* (default
        True) makes the socket non-blocking at :meth:`activate`, so a process
        that lost the race for a datagram gets ``EAGAIN`` instead of blocking.
        Replies share the socket: a handler calling ``sendto`` itself may get
        ``BlockingIOError`` when the kernel cannot queue a reply right now;
        :class:`~composable_server.handlers.DatagramRequestHandler` retries
        for up to a second, then drops it and logs.
    """

    address: InetAddress = attrs.field(validator=_validate_inet)
    family: socket.AddressFamily = attrs.field(
        kw_only=True, default=attrs.Factory(_default_inet_family, takes_self=True)
    )
    dual_stack: bool | None = attrs.field(kw_only=True, default=None)


@final
@attrs.define(eq=False, repr=False)
class UnixStreamTransport(_UnixFile, _StreamTransport[UnixAddress]):
    """A Unix stream listener on a path (or a Linux abstract name, ``b"\\0name"``).

    Args:
        address: the socket path (str, bytes or os.PathLike).
        backlog: ``listen()`` backlog.
        nonblocking: make the listening socket non-blocking (default True),
            so the serving loop accepts every pending connection per wake-up.
        unlink_on_close: remove the socket file this transport created when it
            closes (only that file, identified by device and inode).
        mode: permissions of the socket file (e.g. ``0o660``: owner and
            group may connect); None leaves them to the umask.  A stale
            socket file is replaced, a live or foreign one refused (the
            rules of ``composable_server._unixpath``).

    Raises:
        AddressError: not a path, longer than ``sun_path`` allows, or a
            *mode* for an abstract name (which has no file).
    """

    address: UnixAddress = attrs.field(converter=unix_path, validator=_validate_unix)
    family: socket.AddressFamily = attrs.field(kw_only=True, default=socket.AF_UNIX, init=False)
    unlink_on_close: bool = attrs.field(kw_only=True, default=True)
    mode: int | None = attrs.field(kw_only=True, default=None, validator=_validate_mode)
    _file: SocketFile = attrs.field(init=False, factory=SocketFile)


@final
@attrs.define(eq=False, repr=False)
class UnixDatagramTransport(_UnixFile, _DatagramTransport[UnixAddress]):
    """A Unix datagram socket on a path (or a Linux abstract name).

    Args: as :class:`UnixStreamTransport` (including *mode*, *nonblocking*
        and the handling of stale socket files), without a backlog.  Clients
        must bind a socket of their own to be answered.
    """

    address: UnixAddress = attrs.field(converter=unix_path, validator=_validate_unix)
    family: socket.AddressFamily = attrs.field(kw_only=True, default=socket.AF_UNIX, init=False)
    unlink_on_close: bool = attrs.field(kw_only=True, default=True)
    mode: int | None = attrs.field(kw_only=True, default=None, validator=_validate_mode)
    _file: SocketFile = attrs.field(init=False, factory=SocketFile)


# -- TLS (in _tls, built on first use) ---------------------------------------------

_LAZY: Final = {"DEFAULT_HANDSHAKE_TIMEOUT", "TLSStatistics", "TLSTransport"}

if TYPE_CHECKING:
    from ._tls import DEFAULT_HANDSHAKE_TIMEOUT as DEFAULT_HANDSHAKE_TIMEOUT
    from ._tls import TLSStatistics as TLSStatistics
    from ._tls import TLSTransport as TLSTransport
else:

    def __getattr__(name: str) -> object:
        """TLS (PEP 562): its classes are built on first use, not by every import of a transport."""
        if name in _LAZY:
            from . import _tls

            value = getattr(_tls, name)
            globals()[name] = value
            return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
