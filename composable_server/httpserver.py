"""``http.server`` on parked connections: an idle keep-alive client waits in
the server's poll set between requests, not in a worker.

:class:`ParkingHTTPRequestHandler` is a
:class:`http.server.BaseHTTPRequestHandler` that serves one request per
dispatch; mix it in front of any handler class, or wrap one with
:func:`parking_http`; :func:`make_http_server` is the server::

    import http.server
    from composable_server.httpserver import ParkingHTTPRequestHandler, make_http_server

    class Files(ParkingHTTPRequestHandler, http.server.SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as with stdlib

    with make_http_server(("127.0.0.1", 8000), Files, threads=8) as server:
        server.serve_forever()

Theory of operation
-------------------

stdlib's ``BaseHTTPRequestHandler.handle()`` loops over
``handle_one_request()`` until ``close_connection``: one thread per
connection for its whole life, idle or not.  Here ``handle()`` serves one
request, and another only while the next one is already buffered (the
``rfile`` buffer, ``SSLSocket.pending()``: pipelined requests, which no poll
would report), then states a :class:`~composable_server.interfaces.Verdict`:
``KEEP`` when ``close_connection`` is false (HTTP/1.1 without ``Connection:
close``, or ``Connection: keep-alive``), ``CLOSE`` otherwise.  On ``KEEP``
the native :class:`~composable_server.server.Server` parks the connection
(:mod:`composable_server._request`) and dispatches it again when it is
readable: a pool of 8 workers keeps thousands of idle keep-alive clients.

What is per dispatch.  The handler is instantiated anew for every wake-up,
so ``setup()``, ``handle()`` and ``finish()`` run each time:

* ``close_connection``, ``request_version``, ``command``, ``path``,
  ``headers``: per request in ``http.server`` already; nothing changes.
* ``rfile``: a new buffer per dispatch; nothing is lost, since the handler
  never gives the connection back while its buffer holds a byte.
* ``wfile``, ``wbufsize``: ``handle_one_request()`` flushes after each
  request and ``finish()`` flushes again, so a buffered ``wfile`` holds
  nothing across a park either.
* ``timeout``: stdlib applies it to every socket operation, the wait for the
  next request included; here it bounds reads and writes *within* a
  dispatch.  The wait between requests happens in the poll set, bounded by
  the server's idle budget (``Budget.idle``) and ``max_parked``.
* ``disable_nagle_algorithm``: ``TCP_NODELAY`` is set again on each dispatch
  (one ``setsockopt``; idempotent).
* Anything a subclass stores on ``self`` is gone at the next request (as
  with stdlib, between connections): keep per-connection state on the
  server, keyed by ``client_address``.
* ``kernel_timeouts_safe = True``: ``http.server`` reads and writes only
  through ``rfile``/``wfile``, which report an expired kernel timeout as the
  ``TimeoutError`` that ``handle_one_request()`` catches.  A subclass that
  calls ``self.connection.recv``/``sendfile`` itself sets it False.

Only a server that dispatches through the native job parks (the
:class:`~composable_server.server.Server` engine's own ``process_request``:
native servers, prefork workers).  On any other server (stdlib
``socketserver``, compat's ``ThreadingMixIn`` and ``ForkingMixIn``, which
close the connection when the handler returns) :meth:`handle` loops in place
as stdlib does, so the class stays a drop-in ``BaseHTTPRequestHandler``.
"""

from __future__ import annotations

import http.server
import socket
from typing import TYPE_CHECKING, ClassVar, Final, TypeVar, cast

from ._request import DEFAULT_MAX_PARKED
from .acceptors import StreamAcceptor
from .dispatchers import ThreadPoolDispatcher
from .handlers import has_buffered_input, socket_files
from .interfaces import InetAddress, Verdict
from .policies import Budget, ConnectionTimeouts
from .server import Server
from .transports import DEFAULT_BACKLOG, TCPTransport, TLSTransport

if TYPE_CHECKING:
    import ssl
    from collections.abc import Iterable

    from .interfaces import ErrorPolicy, HandlerFactory, Observer, TimeoutPolicy, Transport, Verifier

__all__ = (
    "DEFAULT_HTTP_BUDGET",
    "DEFAULT_HTTP_THREADS",
    "ParkingHTTPRequestHandler",
    "make_http_server",
    "parking_http",
)

DEFAULT_HTTP_THREADS: Final = 8
"""The worker threads of :func:`make_http_server` (waitress: 4; cheroot: 10)."""

DEFAULT_HTTP_BUDGET: Final = Budget(first_byte=60.0, idle=60.0, lifetime=None)
"""The per-connection budget of :func:`make_http_server`: a new connection
has 60 s to send its first byte, a kept one may stay silent 60 s between
requests, and no read or write within a request may block longer (nginx:
``client_header_timeout``, ``client_body_timeout`` and ``send_timeout`` 60 s,
``keepalive_timeout`` 75 s).  HTTP clients speak first, so the first-byte
budget applies (see :data:`~composable_server.policies.DEFAULT_BUDGET`)."""

# Invariant: parking_http returns the class it was given, or a subclass of it.
HandlerT = TypeVar("HandlerT", bound=http.server.BaseHTTPRequestHandler)


def _parks_on(server: object) -> bool:
    """True if *server* takes a kept connection back: the native engine's
    own ``process_request`` dispatches the job that parks it.  A compat
    mix-in's or a user's override, and stdlib servers, close the connection
    once the handler returns."""
    return isinstance(server, Server) and type(server).process_request is Server.process_request


class ParkingHTTPRequestHandler(http.server.BaseHTTPRequestHandler):
    """A ``BaseHTTPRequestHandler`` that serves one request per dispatch and
    gives a keep-alive connection back to the server between requests.

    Put it first among the bases of a handler class
    (``class H(ParkingHTTPRequestHandler, SimpleHTTPRequestHandler)``), or
    use :func:`parking_http`.  Keep-alive needs ``protocol_version =
    "HTTP/1.1"``, as with stdlib (and then a ``Content-Length`` on every
    response); with ``"HTTP/1.0"`` every connection closes after its response.

    Class attributes:
        parks_connections: the capability the server reads (see
            ``handlers.ParkingRequestHandler``).  True (the default): park
            between requests.  False: :meth:`handle` serves every request of
            the connection in place, as stdlib does.
        kernel_timeouts_safe: True: reads and writes go through ``rfile`` and
            ``wfile`` only (see the module docstring).

    Attributes:
        verdict: what became of the connection after the last request
            (``CLOSE`` until :meth:`handle` ran).
    """

    parks_connections: ClassVar[bool] = True
    kernel_timeouts_safe: ClassVar[bool] = True
    verdict: Verdict = Verdict.CLOSE

    def setup(self) -> None:
        """As stdlib's ``StreamRequestHandler.setup`` (``timeout``,
        ``disable_nagle_algorithm``, ``rbufsize``, ``wbufsize``), with files
        whose buffer :meth:`has_buffered_input` can see."""
        self.connection = connection = self.request
        if self.timeout is not None:
            connection.settimeout(self.timeout)
        if self.disable_nagle_algorithm:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self.rfile, self.wfile = socket_files(connection, self.rbufsize, self.wbufsize)

    def handle(self) -> None:
        """Serve one request, and the next ones while they are buffered
        already (all of them if the connection is not parked); record the
        verdict."""
        parks = self.parks_connections and _parks_on(self.server)
        while True:
            self.close_connection = True  # as stdlib's handle(): parse_request() clears it
            self.handle_one_request()
            if self.close_connection:
                self.verdict = Verdict.CLOSE
                return
            if parks and not self.has_buffered_input():
                self.verdict = Verdict.KEEP
                return

    def has_buffered_input(self) -> bool:
        """True if part of a next request was read already (no system call):
        the ``rfile`` buffer, or decrypted TLS bytes (``SSLSocket.pending()``)."""
        return has_buffered_input(self.rfile, self.connection)


def parking_http(handler: type[HandlerT]) -> type[HandlerT]:
    """*handler* serving one request per dispatch: a subclass of it with
    :class:`ParkingHTTPRequestHandler` first among its bases (same name,
    module and qualified name), or *handler* itself if it is one already.

    ``parking_http(http.server.SimpleHTTPRequestHandler)`` serves files as
    stdlib does, and parks between requests (with ``protocol_version =
    "HTTP/1.1"`` set on it or on the result, for keep-alive).
    """
    if issubclass(handler, ParkingHTTPRequestHandler):
        return handler
    namespace = {"__module__": handler.__module__, "__qualname__": handler.__qualname__, "__doc__": handler.__doc__}
    # type() builds a class the checker cannot follow: it is a subclass of handler by construction.
    return cast("type[HandlerT]", type(handler.__name__, (ParkingHTTPRequestHandler, handler), namespace))


def make_http_server(
    address: InetAddress,
    handler: HandlerFactory[socket.socket, InetAddress],
    *,
    threads: int = DEFAULT_HTTP_THREADS,
    ssl_context: ssl.SSLContext | None = None,
    max_parked: int = DEFAULT_MAX_PARKED,
    timeout_policy: TimeoutPolicy | None = None,
    verifier: Verifier[socket.socket, InetAddress] | None = None,
    error_policy: ErrorPolicy | None = None,
    observers: Iterable[Observer] = (),
    reuse_address: bool = True,
    backlog: int = DEFAULT_BACKLOG,
    bind_and_activate: bool = True,
) -> Server[socket.socket, InetAddress]:
    """An HTTP server (HTTPS with *ssl_context*) on a pool of *threads*
    workers, parking keep-alive connections between requests.

    Args:
        address: ``(host, port)``; port 0 picks a free one.
        handler: a ``BaseHTTPRequestHandler`` subclass (wrapped with
            :func:`parking_http` unless it parks already), or any handler
            factory, used as it is (e.g. ``functools.partial(parking_http(
            SimpleHTTPRequestHandler), directory=...)``).
        threads: the pool's workers.
        ssl_context: a server-side context: TLS over TCP, the handshake in
            a worker (:class:`~composable_server.transports.TLSTransport`).
        max_parked: the most idle keep-alive connections kept at once;
            beyond it the least recently used is closed.
        timeout_policy: default ``ConnectionTimeouts(DEFAULT_HTTP_BUDGET)``.
        verifier, error_policy, observers: as :class:`~composable_server.server.Server`.
        reuse_address, backlog: as :class:`~composable_server.transports.TCPTransport`.
        bind_and_activate: bind and listen now.

    Raises:
        AddressError: the address does not fit.
        BindError: the address could not be bound.
        ValueError: *threads* or *max_parked* is below 1.
    """
    if isinstance(handler, type) and issubclass(handler, http.server.BaseHTTPRequestHandler):
        handler = parking_http(handler)
    transport: Transport[socket.socket, InetAddress] = TCPTransport(
        address, reuse_address=reuse_address, backlog=backlog
    )
    if ssl_context is not None:
        transport = TLSTransport(transport, ssl_context)
    return Server(
        transport=transport,
        acceptor=StreamAcceptor(),
        handler=handler,
        verifier=verifier,
        dispatcher=ThreadPoolDispatcher(threads),
        error_policy=error_policy,
        timeout_policy=ConnectionTimeouts(DEFAULT_HTTP_BUDGET) if timeout_policy is None else timeout_policy,
        bind_and_activate=bind_and_activate,
        max_parked=max_parked,
        observers=observers,
    )
