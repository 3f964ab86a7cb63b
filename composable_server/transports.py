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

import errno
import functools
import select
import socket
import threading
import time
from socket import socket as Socket  # `socket` is also a property name below
from typing import TYPE_CHECKING, ClassVar, Final, Generic, TypeVar, cast, final

import attrs

from ._request import DATAGRAM_REQUESTS, STREAM_REQUESTS, DatagramRequests, StreamRequests
from ._socketutil import check_inet_address, check_unix_address, family_name, inet_family_for
from ._unixpath import SocketFile, check_mode, unix_path
from ._util import attrs_repr
from .exceptions import AddressError, BindError, ServerClosedError, TLSHandshakeError
from .interfaces import DatagramRequest, InetAddress, RequestOps, Transport, UnixAddress

if TYPE_CHECKING:
    import ssl  # imported where used: a TLSTransport's context has loaded it

    from _typeshed import WriteableBuffer

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
        _stream_shutdown(request)

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


# -- TLS ----------------------------------------------------------------------------

StreamAddressT = TypeVar("StreamAddressT")

DEFAULT_HANDSHAKE_TIMEOUT: Final = 30.0
"""Seconds a client has to complete the TLS handshake (nginx's
``ssl_handshake_timeout`` default is 60 s; 30 s is plenty on any real link)."""


def _check_tls_inner(instance: object, attribute: attrs.Attribute[object], value: object) -> None:
    # TLS starts with the connection's first byte, so no layer that reads
    # bytes before it can sit inside: its start_request would never run.
    if isinstance(value, _Wrapper):
        raise TypeError(
            f"TLSTransport cannot wrap {type(value).__name__}: the layer that reads the first bytes goes "
            "outside (the PROXY header comes before the TLS handshake on the wire: "
            "ProxyProtocolTransport(TLSTransport(TCPTransport(...), context), mode=...))"
        )


def _check_handshake_timeout(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:  # also rejects NaN
        raise ValueError(f"handshake_timeout must be a number of seconds > 0, got {value!r}")


@functools.cache
def _tls_socket_class() -> type[ssl.SSLSocket]:
    """The class of the TLS sockets handlers get (made on first use: ``ssl`` is loaded by then)."""
    import ssl

    # Named as its base: handlers (and their logs) see an SSLSocket, of this module.
    class SSLSocket(ssl.SSLSocket):
        """An :class:`ssl.SSLSocket` whose reads take a TCP reset for EOF,
        as ``suppress_ragged_eofs`` (set: start_request wraps with the
        default) does a close without ``close_notify``, on every Python
        version.

        Why: a TLS 1.3 server sends its session tickets right after the
        handshake (RFC 8446 s. 4.6.1), so a client that closes without
        reading them (``openssl s_time -new``, health checks, preconnects)
        leaves them unread in its kernel buffer, and its close becomes a
        reset.  Python up to 3.12 read that as EOF; 3.13 raises
        ``ConnectionResetError`` (CPython gh-115627), which made every such
        client a handler error with a traceback.  A reset and a ragged
        close are the same unauthenticated end of the stream; the handler
        sees EOF for both, as before.  Writes are unchanged: writing to a
        reset connection raises as ever.
        """

        __slots__ = ()  # the layout of ssl.SSLSocket: start_request retypes its sockets

        def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
            try:
                return super().recv(buflen, flags)
            except ConnectionResetError:
                return b""

        def recv_into(self, buffer: WriteableBuffer, nbytes: int | None = None, flags: int = 0) -> int:
            try:
                return super().recv_into(buffer, nbytes, flags)
            except ConnectionResetError:
                return 0

    SSLSocket.__module__ = __name__
    SSLSocket.__qualname__ = "SSLSocket"
    return SSLSocket


def _peer(sock: Socket) -> object:
    try:
        return sock.getpeername()
    except OSError:
        return None  # the client has gone already


@final
@attrs.frozen
class TLSStatistics:
    """A snapshot of a :class:`TLSTransport`'s handshakes (this process only:
    under the forking dispatcher, handshakes happen in the children).

    Attributes:
        completed: handshakes that succeeded.
        failed: handshakes that failed, the timed-out ones included.
        timed_out: handshakes cut at the deadline.
    """

    __repr__ = attrs_repr

    completed: int
    failed: int
    timed_out: int


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


@final
@attrs.define(eq=False, repr=False)
class TLSTransport(_Wrapper[StreamAddressT]):
    """TLS over any stream transport (TCP, Unix stream, ...).

    Everything but the handshake is delegated to *inner*: it owns the
    listening socket, the accept loop sees plain sockets.  The handshake runs
    in :meth:`start_request`, which the server calls in the worker (thread or
    child) just before the handler, never in the accept loop: a client that
    connects and says nothing, or sends garbage, occupies one worker for at
    most *handshake_timeout* seconds and delays no one else.

    SNI (``context.sni_callback``), ALPN (``context.set_alpn_protocols``)
    and client certificates (``context.verify_mode = ssl.CERT_REQUIRED``)
    work through the context as usual.  Handlers get the
    :class:`ssl.SSLSocket` as their request: ``getpeercert()``,
    ``selected_alpn_protocol()``, ``version()``.

    Plain transports are untouched: their requests never pass through here.

    Each handshake in progress holds a worker.  With a bounded pool, a crowd
    of silent clients could hold them all for *handshake_timeout*; set a
    first-byte budget (``ConnectionTimeouts(Budget(first_byte=...))``) and
    silent connections wait in the serving loop instead, costing no worker
    (a TLS client speaks first).  With ``SyncDispatcher`` the worker is the
    serving thread itself: one handshake at a time.

    Args:
        inner: the stream transport to wrap.
        context: a server-side context (``ssl.create_default_context(
            ssl.Purpose.CLIENT_AUTH)`` with ``load_cert_chain(...)``).
        handshake_timeout: seconds the whole handshake may take: a deadline,
            not a per-read timeout, so a client dribbling one byte at a time
            cannot stretch it.
    """

    inner: Transport[Socket, StreamAddressT] = attrs.field(validator=_check_tls_inner)
    context: ssl.SSLContext
    handshake_timeout: float = attrs.field(
        default=DEFAULT_HANDSHAKE_TIMEOUT, kw_only=True, validator=_check_handshake_timeout
    )
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _completed: int = attrs.field(init=False, default=0)
    _failed: int = attrs.field(init=False, default=0)
    _timed_out: int = attrs.field(init=False, default=0)

    # -- TLS ------------------------------------------------------------------------

    def shutdown_request(self, request: Socket) -> None:
        """Send a TLS ``close_notify`` (best effort, never blocking), then let
        the inner transport shut the connection down.  Never raises OSError."""
        import ssl

        if isinstance(request, ssl.SSLSocket):
            try:
                # Non-blocking: SSL_shutdown sends close_notify, then would wait
                # for the peer's; we do not (RFC 8446 s. 6.1 allows closing).
                request.setblocking(False)
                request.unwrap()
            except (OSError, ValueError):
                pass  # SSLWantReadError (expected), or the peer is gone
        self.inner.shutdown_request(request)

    # The accepted address is the client: the verifier runs in the accept loop.
    late_admission: ClassVar[bool] = False

    def start_request(self, request: Socket, client_address: ClientT) -> tuple[ssl.SSLSocket, ClientT]:
        """Perform the server side of the TLS handshake on *request*, with the deadline.

        Returns:
            The :class:`ssl.SSLSocket`, with the socket timeout *request* had,
            and *client_address* unchanged.  Its reads return EOF when the
            client resets the connection, as when it closes it without
            ``close_notify``, on every Python version (3.13 would raise
            ``ConnectionResetError``; see ``_tls_socket_class``).

        Raises:
            TLSHandshakeError: the handshake failed (bad or missing
                certificate, not TLS at all, the client left) or did not
                finish within *handshake_timeout*; raised ``from`` the
                original error.  The TLS socket is closed; *request* is left
                detached, for the server to release.
        """
        import ssl

        peer = _peer(request)
        previous = request.gettimeout()
        try:
            tls = self.context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:
            raise self._failure(f"cannot start TLS: {exc}", peer, exc) from exc
        if type(tls) is ssl.SSLSocket:
            # Resets read as EOF (see _tls_socket_class).  A context with its
            # own sslsocket_class keeps it, and its semantics.
            tls.__class__ = _tls_socket_class()
        try:
            self._handshake(tls, peer)
            tls.settimeout(previous)
        except BaseException:
            tls.close()
            raise
        with self._lock:
            self._completed += 1
        return tls, client_address

    def _handshake(self, tls: ssl.SSLSocket, peer: object) -> None:
        import ssl

        deadline = time.monotonic() + self.handshake_timeout
        tls.setblocking(False)
        poller = select.poll()
        registered = False
        while True:
            try:
                tls.do_handshake()
                return
            except ssl.SSLWantReadError:
                events = select.POLLIN
            except ssl.SSLWantWriteError:
                events = select.POLLOUT
            except OSError as exc:  # SSLError (bad certificate, not TLS), EOF, reset
                raise self._failure(_reason(exc), peer, exc) from exc
            remaining = deadline - time.monotonic()
            if registered:
                poller.modify(tls, events)
            else:
                poller.register(tls, events)
                registered = True
            if remaining <= 0 or not poller.poll(remaining * 1000.0):
                timeout = TimeoutError(errno.ETIMEDOUT, f"TLS handshake timed out after {self.handshake_timeout} s")
                raise self._failure(
                    f"timed out after {self.handshake_timeout} s", peer, timeout, timed_out=True
                ) from timeout

    def _failure(
        self, reason: str, peer: object, exc: BaseException, *, timed_out: bool = False
    ) -> TLSHandshakeError:
        with self._lock:
            self._failed += 1
            self._timed_out += timed_out
        code = exc.errno if isinstance(exc, OSError) and isinstance(exc.errno, int) else None
        return TLSHandshakeError(reason, client_address=peer, timed_out=timed_out, errno=code)

    def statistics(self) -> TLSStatistics:
        """A snapshot of the handshake counts (this process)."""
        with self._lock:
            return TLSStatistics(completed=self._completed, failed=self._failed, timed_out=self._timed_out)

    def __repr__(self) -> str:
        stats = self.statistics()
        return (
            f"<TLSTransport over {self.inner!r} handshake_timeout={self.handshake_timeout} "
            f"[completed: {stats.completed}, failed: {stats.failed}, timed out: {stats.timed_out}]>"
        )


def _reason(exc: OSError) -> str:
    import ssl

    if isinstance(exc, ssl.SSLError):
        return f"{exc.reason or type(exc).__name__}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc.strerror or exc}"
