"""Drop-in replacements for the stdlib :mod:`socketserver` classes.

``from composable_server import compat as socketserver`` and a program
written for stdlib runs unchanged: the same names (``__all__`` is the
stdlib's for the running Python), constructors, class attributes and hooks.

Every server class here is a subclass of the engine
:class:`~composable_server.server.Server`.  :class:`BaseServer` builds the
components from the stdlib class attributes (``address_family``,
``socket_type``, ``allow_reuse_address``, ...); the hooks keep their stdlib
names and by default delegate to those components, so a subclass may
override any of them, as with stdlib.  Attributes that stdlib reads while
running are read at the same moment here and pushed into the component
(``allow_reuse_address`` at ``server_bind()``, ``request_queue_size`` at
``server_activate()``, ``max_packet_size`` per ``get_request()``,
``daemon_threads`` per request, ``block_on_close`` at ``server_close()``),
so changing them on an instance has the stdlib effect.

The twelve classic classes (``TCPServer`` ... ``ForkingUnixDatagramServer``)
are built from one table by
:func:`composable_server.factories.build_classic_servers`; mypy sees them
through ``compat.pyi``, which stubtest keeps equal to this module.

Override points (as documented for stdlib ``BaseServer``):

- ``server_bind``, ``server_activate``, ``server_close``, ``fileno``
- ``get_request``, ``verify_request``, ``process_request``, ``finish_request``
- ``shutdown_request``, ``close_request``
- ``handle_error`` (called inside the ``except`` block), ``handle_timeout``
- ``service_actions``
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Sequence
from socket import socket as Socket
from typing import Any, Protocol, TypeVar, overload

from . import handlers as _handlers
from ._request import RequestJob, RequestPath
from ._socketutil import Waker
from .acceptors import DatagramAcceptor, StreamAcceptor
from .dispatchers import ForkingDispatcher, SyncDispatcher, ThreadingDispatcher
from .exceptions import ServerClosedError
from ._classes import build_classic_servers
from .interfaces import Dispatcher, ErrorPolicy, HandlerFactory, Observer, Verifier
from .policies import NoTimeout
from .server import Server
from .transports import TCPTransport, UDPTransport, UnixDatagramTransport, UnixStreamTransport

__all__: tuple[str, ...] = (
    "BaseServer",
    "TCPServer",
    "UDPServer",
    "ThreadingUDPServer",
    "ThreadingTCPServer",
    "BaseRequestHandler",
    "StreamRequestHandler",
    "DatagramRequestHandler",
    "ThreadingMixIn",
)
_ClientT = TypeVar("_ClientT")
# The same conditions, in the same order, as stdlib socketserver.
if hasattr(os, "fork"):
    __all__ += ("ForkingUDPServer", "ForkingTCPServer", "ForkingMixIn")
if hasattr(socket, "AF_UNIX"):
    __all__ += ("UnixStreamServer", "UnixDatagramServer", "ThreadingUnixStreamServer", "ThreadingUnixDatagramServer")
    if hasattr(os, "fork") and sys.version_info >= (3, 12):
        __all__ += ("ForkingUnixStreamServer", "ForkingUnixDatagramServer")

_SocketTransport = TCPTransport | UDPTransport | UnixStreamTransport | UnixDatagramTransport


class _NullTransport:
    """The transport of a server built on :class:`BaseServer` directly: stdlib
    ``BaseServer`` has no socket, its subclasses bring their own (and override
    ``fileno``/``get_request``)."""

    __slots__ = ("_sock", "address")

    def __init__(self, address: object) -> None:
        self.address = address
        self._sock: Socket | None = None

    def __repr__(self) -> str:
        return f"_NullTransport(address={self.address!r}, _sock={self._sock!r})"

    @property
    def server_address(self) -> object:
        return self.address

    @property
    def socket(self) -> Socket:
        if self._sock is None:
            raise TypeError("this BaseServer has no socket; set server.socket or override fileno()/get_request()")
        return self._sock

    @socket.setter
    def socket(self, sock: Socket) -> None:
        self._sock = sock

    def bind(self) -> None:
        pass

    def activate(self) -> None:
        pass

    def close(self) -> None:
        pass

    def fileno(self) -> int:
        return self.socket.fileno()

    @property
    def has_socket(self) -> bool:
        return self._sock is not None

    @property
    def nonblocking(self) -> bool:
        return False

    @property
    def request_ops(self) -> _OpaqueRequests:
        return _OPAQUE_REQUESTS

    def shutdown_request(self, request: object) -> None:
        pass

    def close_request(self, request: object) -> None:
        pass

    @property
    def late_admission(self) -> bool:
        return False

    def start_request(self, request: object, client_address: _ClientT) -> tuple[object, _ClientT]:
        return request, client_address


class _OpaqueRequests:
    """The request operations of a bare :class:`BaseServer`, whose requests
    are whatever its subclass's ``get_request`` returns: none apply."""

    __slots__ = ()

    connections = False

    def reject(self, request: object, message: bytes, client_address: object) -> None:
        pass

    def abort(self, request: object) -> None:
        pass

    def silent_fd(self, request: object) -> int:
        return -1

    def limit_idle(self, request: object, seconds: float, *, kernel: bool) -> None:
        pass


_OPAQUE_REQUESTS = _OpaqueRequests()


class _NullAcceptor:
    __slots__ = ()

    def accept(self, transport: object) -> tuple[Any, Any]:
        raise NotImplementedError("a BaseServer subclass must define get_request()")


def _build_transport(server: object, address: Any) -> tuple[_SocketTransport | _NullTransport, bool]:
    """The transport for *server*'s ``address_family``/``socket_type``, and
    whether it is a stream transport."""
    family = getattr(server, "address_family", None)
    kind = getattr(server, "socket_type", None)
    if family is None or kind is None:
        return _NullTransport(address), False
    if kind not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        raise ValueError(f"compat servers support SOCK_STREAM and SOCK_DGRAM, got socket_type={kind!r}")
    stream = kind == socket.SOCK_STREAM
    if hasattr(socket, "AF_UNIX") and family == socket.AF_UNIX:
        # stdlib never removes the socket file; programs written for it
        # unlink it themselves (and would fail if it were already gone).
        if stream:
            return UnixStreamTransport(address, unlink_on_close=False, nonblocking=False), True
        return UnixDatagramTransport(address, unlink_on_close=False, nonblocking=False), False
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError(f"compat servers support AF_INET, AF_INET6 and AF_UNIX, got address_family={family!r}")
    inet_family = socket.AddressFamily(family)
    reuse_address = bool(getattr(server, "allow_reuse_address", False))
    reuse_port = bool(getattr(server, "allow_reuse_port", False))
    if stream:
        return (
            TCPTransport(
                address, family=inet_family, reuse_address=reuse_address, reuse_port=reuse_port, nonblocking=False
            ),
            True,
        )
    return (
        UDPTransport(
            address, family=inet_family, reuse_address=reuse_address, reuse_port=reuse_port, nonblocking=False
        ),
        False,
    )


class BaseServer(Server[Any, Any]):
    """Base class for server classes, with the stdlib constructor and hooks.

    Methods for the caller:

    - ``__init__(server_address, RequestHandlerClass)``
    - ``serve_forever(poll_interval=0.5)``, ``shutdown()``, ``handle_request()``
    - ``server_close()``, ``fileno()``

    Methods that may be overridden (each delegates to a component by default):

    - ``server_bind()``, ``server_activate()``, ``get_request()`` -> request, client_address
    - ``handle_timeout()``, ``verify_request(request, client_address)``
    - ``process_request(request, client_address)``, ``finish_request(request, client_address)``
    - ``shutdown_request(request)``, ``close_request(request)``
    - ``service_actions()``, ``handle_error(request, client_address)``

    Class variables that may be overridden by derived classes or instances:
    ``timeout`` (and, on the socket classes, ``address_family``,
    ``socket_type``, ``allow_reuse_address``, ``allow_reuse_port``,
    ``request_queue_size``, ``max_packet_size``).
    """

    # A plain attribute, as stdlib (the engine's is a property over the
    # timeout policy); handle_request() reads it through self.timeout.
    timeout: float | None = None

    # Not in stdlib: observers told of each connection's life
    # (composable_server.interfaces.Observer), read at construction; a
    # subclass sets them as a class attribute, so the constructor stays stdlib's.
    observers: Sequence[Observer] = ()

    def __init__(self, server_address: Any, RequestHandlerClass: HandlerFactory[Any, Any]) -> None:
        """Constructor.  May be extended, do not override."""
        transport, self._compat_stream = _build_transport(self, server_address)
        self._compat_transport = transport
        self._compat_socket: Socket | None = None  # what `socket` returns once closed
        acceptor = (
            _NullAcceptor()
            if isinstance(transport, _NullTransport)
            else StreamAcceptor()
            if self._compat_stream
            # stdlib's size (8192), read per request; a larger datagram is
            # dropped and reported, never handed over cut (stdlib truncates).
            else DatagramAcceptor(getattr(self, "max_packet_size", 8192))
        )
        self._compat_datagram = acceptor if isinstance(acceptor, DatagramAcceptor) else None
        Server.__init__(
            self,
            transport=transport,
            acceptor=acceptor,
            handler=RequestHandlerClass,
            verifier=self._compat_verifier(),
            dispatcher=self._compat_dispatcher(),
            error_policy=self._compat_error_policy(),
            # stdlib has no per-connection time limits: the native default
            # budgets (first byte, idle) stay off for the compat classes.
            timeout_policy=NoTimeout(),
            bind_and_activate=False,
            observers=self.observers,
        )
        # stdlib keeps the address as given until server_bind() rewrites it.
        self.server_address = server_address

    # -- component choices (overridden by the mixins and by factories.server_class)

    def _compat_dispatcher(self) -> Dispatcher:
        return SyncDispatcher()

    def _compat_verifier(self) -> Verifier[Any, Any] | None:
        return None

    def _compat_error_policy(self) -> ErrorPolicy | None:
        return None

    # -- stdlib attributes over the components -----------------------------

    @property
    def RequestHandlerClass(self) -> HandlerFactory[Any, Any]:
        """The handler called for each request (the engine's ``handler``)."""
        return self.handler

    @RequestHandlerClass.setter
    def RequestHandlerClass(self, value: HandlerFactory[Any, Any]) -> None:
        self.handler = value

    @property
    def socket(self) -> Socket:
        """The listening socket (the transport's); assignable, e.g. to wrap it in TLS.

        After ``server_close()`` this is the closed socket (``fileno()`` -1),
        as in stdlib, rather than an error.
        """
        try:
            sock = self._compat_transport.socket
        except ServerClosedError:
            if self._compat_socket is None:
                raise
            return self._compat_socket
        self._compat_socket = sock
        return sock

    @socket.setter
    def socket(self, value: Socket) -> None:
        if self._closed:
            self._reopen()
        self._compat_transport.socket = value
        self._compat_socket = value

    def _reopen(self) -> None:
        """Make a closed server usable again, for a socket about to be assigned.

        stdlib's ``server_close()`` only closes the listening socket, and code
        built on it relies on that: werkzeug's development server (under its
        reloader) calls ``server_close()`` on a new server, assigns a socket
        made from an inherited descriptor to ``socket``, and serves.  So a
        socket assigned after ``server_close()`` gets a fresh transport,
        dispatcher, waker and request path (watchdog) around it.
        """
        with self._state_lock:
            if not self._closed or self._serving_thread is not None:
                return
            transport, _ = _build_transport(self, self.server_address)
            self.transport = self._compat_transport = transport
            self.dispatcher = self._compat_dispatcher()
            self._waker = Waker()
            self._requests = RequestPath(self, self._waker.wake, self._observers)
            self._closed = False

    # -- hooks ---------------------------------------------------------------

    def server_bind(self) -> None:
        """Called by the constructor to bind the socket.  May be overridden.

        Reads ``allow_reuse_address``, ``allow_reuse_port`` and
        ``server_address`` now, as stdlib does, then binds and rewrites
        ``server_address`` from ``getsockname()``.
        """
        transport = self._compat_transport
        if not isinstance(transport, _NullTransport):
            transport.reuse_address = bool(getattr(self, "allow_reuse_address", False))
            transport.reuse_port = bool(getattr(self, "allow_reuse_port", False))
            if transport.address != self.server_address:
                transport.address = self.server_address
            self._compat_socket = transport.socket
        super().server_bind()

    def server_activate(self) -> None:
        """Called by the constructor to activate the server (``listen`` with
        ``request_queue_size`` for streams).  May be overridden."""
        transport = self._compat_transport
        if isinstance(transport, (TCPTransport, UnixStreamTransport)):
            transport.backlog = getattr(self, "request_queue_size", 5)
        super().server_activate()

    def _wait_timeout(self) -> float | None:
        # As stdlib handle_request(): the listening socket's own timeout also
        # counts (None: blocking; 0.0: non-blocking, not a wait limit).
        timeout = self.timeout
        transport = self._compat_transport
        if isinstance(transport, _NullTransport) and not transport.has_socket:
            return timeout
        socket_timeout = self.socket.gettimeout()
        if not socket_timeout:
            return timeout
        return socket_timeout if timeout is None else min(timeout, socket_timeout)

    def get_request(self) -> tuple[Any, Any]:
        """Get the request and client address from the socket.  May be overridden."""
        acceptor = self._compat_datagram
        if acceptor is not None:
            size: int = getattr(self, "max_packet_size", 8192)
            if acceptor.max_packet_size != size:
                acceptor.max_packet_size = size
        return self.acceptor.accept(self.transport)

    def shutdown_request(self, request: Any) -> None:
        """Called to shutdown and close an individual request: ``shutdown(SHUT_WR)``
        for streams, then :meth:`close_request`, as stdlib."""
        if self._compat_stream:
            try:
                # SHUT_WR, as stdlib: the client reads everything written, then EOF.
                request.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the client may have closed already
        self.close_request(request)


def _socket_server_init(
    self: BaseServer, server_address: Any, RequestHandlerClass: HandlerFactory[Any, Any], bind_and_activate: bool = True
) -> None:
    """Constructor.  May be extended, do not override."""
    BaseServer.__init__(self, server_address, RequestHandlerClass)
    if bind_and_activate:
        try:
            self.server_bind()
            self.server_activate()
        except BaseException:
            self.server_close()
            raise


_socket_server_init.__name__ = _socket_server_init.__qualname__ = "__init__"


class _Host(Protocol):
    """What the mixins need from the server they are mixed into."""

    dispatcher: Dispatcher
    _requests: RequestPath[Any, Any]

    def finish_request(self, request: Any, client_address: Any) -> None: ...
    def handle_error(self, request: Any, client_address: Any) -> None: ...
    def shutdown_request(self, request: Any) -> None: ...
    def close_request(self, request: Any) -> None: ...
    def server_close(self) -> None: ...


class _ThreadingHost(_Host, Protocol):
    daemon_threads: bool
    block_on_close: bool

    def process_request_thread(self, request: Any, client_address: Any) -> None: ...


class _ForkingHost(_Host, Protocol):
    max_children: int
    block_on_close: bool

    def collect_children(self, *, blocking: bool = False) -> None: ...
    def _serve_in_child(self, request: Any, client_address: Any) -> bool: ...


class ThreadingMixIn:
    """Mix-in class to handle each request in a new thread
    (a :class:`~composable_server.dispatchers.ThreadingDispatcher`)."""

    # Decides how threads will act upon termination of the main process.
    daemon_threads: bool = False
    # If true, server_close() waits until all non-daemonic threads terminate.
    block_on_close: bool = True

    def _compat_dispatcher(self) -> Dispatcher:
        return ThreadingDispatcher(daemon=bool(self.daemon_threads), block_on_close=bool(self.block_on_close))

    @property
    def _threads(self) -> list[threading.Thread]:
        """stdlib's record of the request threads not yet joined (CPython's
        ``test_threads_reaped`` checks that it does not grow with every
        request): here, a snapshot of the dispatcher's."""
        dispatcher = getattr(self, "dispatcher", None)
        return list(dispatcher.threads) if isinstance(dispatcher, ThreadingDispatcher) else []

    def process_request_thread(self: _ThreadingHost, request: Any, client_address: Any) -> None:
        """Same as in BaseServer but as a thread.  In addition, exception handling is done here."""
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def process_request(self: _ThreadingHost, request: Any, client_address: Any) -> None:
        """Start a new thread to process the request."""
        dispatcher = self.dispatcher
        if isinstance(dispatcher, ThreadingDispatcher):
            # Read per request, as stdlib reads them; assigned only on a change
            # (each assignment runs attrs' validating __setattr__).
            daemon, block_on_close = bool(self.daemon_threads), bool(self.block_on_close)
            if dispatcher.daemon is not daemon:
                dispatcher.daemon = daemon
            if dispatcher.block_on_close is not block_on_close:
                dispatcher.block_on_close = block_on_close
        # The one job type, with stdlib's hook as its body, so an override of
        # process_request_thread runs in the thread as with stdlib.
        dispatcher.dispatch(self._requests.job(request, client_address, self.process_request_thread))

    def server_close(self: _ThreadingHost) -> None:
        """Close the server, then wait for the request threads if ``block_on_close``."""
        dispatcher = self.dispatcher
        if isinstance(dispatcher, ThreadingDispatcher):
            dispatcher.block_on_close = bool(self.block_on_close)
        super(ThreadingMixIn, self).server_close()  # type: ignore[safe-super]  # cooperative mixin: the next class in the MRO is a server


class _ActiveChildren:
    """``ForkingMixIn.active_children``: None on the class (stdlib), the pids of
    the running children on an instance (from its ForkingDispatcher)."""

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> None: ...
    @overload
    def __get__(self, instance: object, owner: type | None = None) -> set[int] | None: ...
    def __get__(self, instance: object, owner: type | None = None) -> set[int] | None:
        dispatcher = getattr(instance, "dispatcher", None)
        if isinstance(dispatcher, ForkingDispatcher):
            return dispatcher.active_children
        return None


class ForkingMixIn:
    """Mix-in class to handle each request in a new process
    (a :class:`~composable_server.dispatchers.ForkingDispatcher`)."""

    timeout: float | None = 300
    active_children = _ActiveChildren()
    max_children: int = 40
    # If true, server_close() waits until all child processes complete.
    block_on_close: bool = True

    def _compat_dispatcher(self) -> Dispatcher:
        return ForkingDispatcher(max_children=self.max_children, block_on_close=bool(self.block_on_close))

    def collect_children(self: _ForkingHost, *, blocking: bool = False) -> None:
        """Reap children that have exited; with *blocking*, wait for all of them."""
        dispatcher = self.dispatcher
        if isinstance(dispatcher, ForkingDispatcher):
            # Compared first: assigning runs attrs' validator, code that the
            # parent would touch (and fault on) between every two forks.
            if dispatcher.max_children != self.max_children:
                dispatcher.max_children = self.max_children
            if blocking:
                dispatcher.join(None)
                return
        dispatcher.service()

    def handle_timeout(self: _ForkingHost) -> None:
        """Wait for zombies after self.timeout seconds of inactivity."""
        self.collect_children()

    def service_actions(self: _ForkingHost) -> None:
        """Collect the zombie child processes regularly."""
        self.collect_children()

    def process_request(self: _ForkingHost, request: Any, client_address: Any) -> None:
        """Fork a new subprocess to process the request."""
        dispatcher = self.dispatcher
        if isinstance(dispatcher, ForkingDispatcher) and dispatcher.max_children != self.max_children:
            dispatcher.max_children = self.max_children
        # The child runs finish_request, handle_error and shutdown_request,
        # as stdlib's process_request does there: the job's body is that
        # sequence, and nothing else runs in the child (every object it
        # touches costs a copy-on-write fault).
        dispatcher.dispatch(RequestJob(self._requests, request, client_address, self._serve_in_child))

    def _serve_in_child(self: _ForkingHost, request: Any, client_address: Any) -> bool:
        """What stdlib's ``process_request`` runs in the child; False if
        ``finish_request`` raised (the child's exit status is then 1)."""
        try:
            self.finish_request(request, client_address)
            return True
        except Exception:
            self.handle_error(request, client_address)
            return False
        finally:
            self.shutdown_request(request)

    def server_close(self: _ForkingHost) -> None:
        """Close the server, then wait for the children if ``block_on_close``."""
        dispatcher = self.dispatcher
        if isinstance(dispatcher, ForkingDispatcher):
            dispatcher.block_on_close = bool(self.block_on_close)
        super(ForkingMixIn, self).server_close()  # type: ignore[safe-super]  # cooperative mixin: the next class in the MRO is a server


# -- the twelve classic classes, from the factories' table --------------------

_classes = build_classic_servers(
    base=BaseServer,
    mixins={"sync": None, "threading": ThreadingMixIn, "forking": ForkingMixIn},
    root_namespace={"__init__": _socket_server_init},
    module=__name__,
)
TCPServer = _classes["TCPServer"]
UDPServer = _classes["UDPServer"]
UnixStreamServer = _classes["UnixStreamServer"]
UnixDatagramServer = _classes["UnixDatagramServer"]
ThreadingTCPServer = _classes["ThreadingTCPServer"]
ThreadingUDPServer = _classes["ThreadingUDPServer"]
ThreadingUnixStreamServer = _classes["ThreadingUnixStreamServer"]
ThreadingUnixDatagramServer = _classes["ThreadingUnixDatagramServer"]
ForkingTCPServer = _classes["ForkingTCPServer"]
ForkingUDPServer = _classes["ForkingUDPServer"]
ForkingUnixStreamServer = _classes["ForkingUnixStreamServer"]
ForkingUnixDatagramServer = _classes["ForkingUnixDatagramServer"]
del _classes


# -- request handlers: the core handlers, without type arguments ---------------


class BaseRequestHandler(_handlers.BaseRequestHandler[Any, Any]):
    """Base class for request handler classes (stdlib ``BaseRequestHandler``).

    The constructor sets ``request``, ``client_address`` and ``server``, then
    calls ``setup()``, ``handle()`` and ``finish()``; override ``handle()``.
    """


class StreamRequestHandler(_handlers.StreamRequestHandler[Any], BaseRequestHandler):
    """Define ``self.rfile`` and ``self.wfile`` for stream sockets."""

    # setup() below makes stdlib's files, which read an expired kernel
    # timeout as "no data yet": the engine must use settimeout() for it.
    kernel_timeouts_safe = False

    def setup(self) -> None:
        """stdlib's setup: the files come from the request's own ``makefile()``.

        So a request that is socket-like but not a ``socket.socket`` (a test
        double, a wrapper) works as with stdlib; the native handler reads
        through :class:`~composable_server.handlers.SocketFile` instead.
        """
        self.connection = self.request
        if self.timeout is not None:
            self.connection.settimeout(self.timeout)
        if self.disable_nagle_algorithm:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        # Typed as the buffered files stdlib declares (makefile("rb", 0) is
        # raw): through Any, not typing.cast(), a Python call (in a forked
        # child a copy-on-write fault or two: tests.bench.forkcost).
        connection: Any = self.connection
        self.rfile = connection.makefile("rb", self.rbufsize)
        if self.wbufsize == 0:
            self.wfile = _handlers.SocketWriter(connection)
        else:
            self.wfile = connection.makefile("wb", self.wbufsize)


class DatagramRequestHandler(_handlers.DatagramRequestHandler[Any], BaseRequestHandler):
    """Define ``self.rfile`` and ``self.wfile`` for datagram sockets;
    ``self.request`` is ``(data, socket)``."""
