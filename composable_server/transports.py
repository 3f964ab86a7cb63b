"""Transports: the listening socket of each family.

* :class:`TCPTransport` - IPv4 or IPv6 stream, the family chosen from the address;
* :class:`UDPTransport` - IPv4 or IPv6 datagram;
* :class:`UnixStreamTransport`, :class:`UnixDatagramTransport` - ``AF_UNIX``
  paths and Linux abstract names.

The socket is created on first use (``.socket``, :meth:`bind`), so a transport
that is built but never used holds no descriptor.  Addresses are checked when
the transport is built, so a wrong shape fails there with an
:class:`~composable_server.exceptions.AddressError` naming the value.
"""

from __future__ import annotations

import os
import socket
import stat
from socket import socket as Socket  # `socket` is also a property name below
from typing import ClassVar, Final, Generic, TypeVar, cast, final

import attrs

from ._socketutil import check_inet_address, check_unix_address, family_name, inet_family_for
from .exceptions import AddressError, BindError, ServerClosedError
from .interfaces import DatagramRequest, InetAddress, UnixAddress

__all__ = (
    "DEFAULT_BACKLOG",
    "TCPTransport",
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
        try:
            sock.bind(self.address)
        except OSError as exc:
            raise BindError(exc.errno, exc.strerror or str(exc), address=self.address) from exc
        self._bound = cast(AddressT, sock.getsockname())
        self._after_bind(sock)

    def activate(self) -> None:
        """Nothing to do for datagram sockets; stream transports listen."""

    def start_request(self, request: RequestT) -> RequestT:
        """Return *request* unchanged: plain sockets need no preparation."""
        return request

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

    def _after_bind(self, sock: Socket) -> None:
        pass

    def _after_close(self) -> None:
        pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else "bound" if self._bound is not None else "unbound"
        return f"<{type(self).__name__} {family_name(self.family)} {self.server_address!r} {state}>"


def _stream_shutdown(request: Socket) -> None:
    try:
        # SHUT_WR, as stdlib: the peer reads every byte we wrote, then EOF.
        request.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the peer may already have closed (ENOTCONN)
    request.close()


@attrs.define(eq=False, repr=False)
class _StreamTransport(_SocketTransport[AddressT]):
    _kind: ClassVar[socket.SocketKind] = socket.SOCK_STREAM
    backlog: int = attrs.field(kw_only=True, default=DEFAULT_BACKLOG, validator=attrs.validators.ge(0))

    def activate(self) -> None:
        """Listen with :attr:`backlog`."""
        self.socket.listen(self.backlog)

    def shutdown_request(self, request: Socket) -> None:
        """``shutdown(SHUT_WR)`` then close; never raises OSError."""
        _stream_shutdown(request)

    def close_request(self, request: Socket) -> None:
        """Close the connection without a shutdown (idempotent)."""
        request.close()


@attrs.define(eq=False, repr=False)
class _DatagramTransport(_SocketTransport[AddressT]):
    _kind: ClassVar[socket.SocketKind] = socket.SOCK_DGRAM

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


def _unix_path(address: UnixAddress | os.PathLike[str]) -> UnixAddress:
    return os.fspath(address) if isinstance(address, os.PathLike) else address


def _set_v6only(sock: socket.socket, dual_stack: bool | None) -> None:
    if sock.family == socket.AF_INET6 and dual_stack is not None:
        # IPV6_V6ONLY=0 also accepts IPv4 clients as ::ffff:a.b.c.d (ipv6(7)).
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)


_Created = tuple[str | bytes, int, int]


def _remember_path(sock: Socket) -> _Created | None:
    """Identify the socket file *sock* was bound to (None for abstract names)."""
    name = sock.getsockname()
    if isinstance(name, (str, bytes)) and name and not os.fsencode(name).startswith(b"\0"):
        st = os.lstat(name)
        return (name, st.st_dev, st.st_ino)
    return None


def _unlink_created(created: _Created | None) -> None:
    if created is None:
        return
    path, dev, ino = created
    try:
        st = os.lstat(path)
        # Remove only the file this transport created: a later server may
        # have replaced it with its own socket.
        if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == (dev, ino):
            os.unlink(path)
    except OSError:
        pass


@final
@attrs.define(eq=False, repr=False)
class TCPTransport(_StreamTransport[InetAddress]):
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

    def _before_bind(self, sock: Socket) -> None:
        _set_v6only(sock, self.dual_stack)


@final
@attrs.define(eq=False, repr=False)
class UDPTransport(_DatagramTransport[InetAddress]):
    """A UDP socket on IPv4 or IPv6; requests are ``(data, socket)``.

    Args: as :class:`TCPTransport`, without a backlog; *reuse_address*
        defaults to False, as stdlib ``UDPServer``.
    """

    address: InetAddress = attrs.field(validator=_validate_inet)
    family: socket.AddressFamily = attrs.field(
        kw_only=True, default=attrs.Factory(_default_inet_family, takes_self=True)
    )
    dual_stack: bool | None = attrs.field(kw_only=True, default=None)

    def _before_bind(self, sock: Socket) -> None:
        _set_v6only(sock, self.dual_stack)


@final
@attrs.define(eq=False, repr=False)
class UnixStreamTransport(_StreamTransport[UnixAddress]):
    """A Unix stream listener on a path (or a Linux abstract name, ``b"\\0name"``).

    Args:
        address: the socket path (str, bytes or os.PathLike).
        backlog: ``listen()`` backlog.
        unlink_on_close: remove the socket file this transport created when it
            closes (only that file, identified by device and inode).

    Raises:
        AddressError: not a path, or longer than ``sun_path`` allows.
    """

    address: UnixAddress = attrs.field(converter=_unix_path, validator=_validate_unix)
    family: socket.AddressFamily = attrs.field(kw_only=True, default=socket.AF_UNIX, init=False)
    unlink_on_close: bool = attrs.field(kw_only=True, default=True)
    _created: _Created | None = attrs.field(init=False, default=None)

    def _after_bind(self, sock: Socket) -> None:
        self._created = _remember_path(sock)

    def _after_close(self) -> None:
        if self.unlink_on_close:
            _unlink_created(self._created)
        self._created = None


@final
@attrs.define(eq=False, repr=False)
class UnixDatagramTransport(_DatagramTransport[UnixAddress]):
    """A Unix datagram socket on a path (or a Linux abstract name).

    Args: as :class:`UnixStreamTransport`, without a backlog.  Clients must
        bind a socket of their own to be answered.
    """

    address: UnixAddress = attrs.field(converter=_unix_path, validator=_validate_unix)
    family: socket.AddressFamily = attrs.field(kw_only=True, default=socket.AF_UNIX, init=False)
    unlink_on_close: bool = attrs.field(kw_only=True, default=True)
    _created: _Created | None = attrs.field(init=False, default=None)

    def _after_bind(self, sock: Socket) -> None:
        self._created = _remember_path(sock)

    def _after_close(self) -> None:
        if self.unlink_on_close:
            _unlink_created(self._created)
        self._created = None
