"""The services of the command line: upper, echo, lines and http.

``upper`` is the upper-case echo of the stdlib ``socketserver`` documentation
(``MyTCPHandler`` / ``MyUDPHandler``): one request is one line on a stream
connection, or one datagram, and the reply is that line upper-cased.  ``echo``
replies with the line unchanged.  ``lines`` is the persistent form of
``upper``: every line of a connection is upper-cased back, until EOF; with
``--park`` (:func:`lines_service`) the connection waits in the server's poll
set between lines instead of holding a worker.  ``http`` is the stdlib
:class:`http.server.SimpleHTTPRequestHandler`, running on a composable server
as it is; with ``--park`` (:func:`http_handler`) it speaks HTTP/1.1 and
parks keep-alive connections between requests.

:class:`RequestLog` wraps any handler: one DEBUG line per request, and a
register of the stream connections in flight, so the command line can cut
them when the grace period of a shutdown runs out.
"""

from __future__ import annotations

import functools
import http.server
import logging
import threading
from socket import SHUT_RDWR
from socket import socket as Socket
from typing import ClassVar, Final, Generic, TypeAlias, TypeVar, cast, final

from ._request import client_speaks_first, parks_connections
from ._socketutil import DATAGRAM_SEND_TIMEOUT, send_datagram
from .handlers import BaseRequestHandler, ParkingRequestHandler, StreamRequestHandler
from .interfaces import Address, DatagramRequest, HandlerFactory, Verdict
from .proxy import reply_address

__all__ = (
    "DATAGRAM_SERVICES",
    "MAX_LINE",
    "STREAM_SERVICES",
    "RequestLog",
    "format_address",
    "http_handler",
    "line_service",
    "lines_service",
)

_logger = logging.getLogger("composable_server.services")

# The longest line read as one request.  A client that never sends a newline
# gets a reply after this many bytes instead of growing our buffer forever.
MAX_LINE: Final = 64 * 1024

StreamHandler: TypeAlias = HandlerFactory[Socket, Address]
DatagramHandler: TypeAlias = HandlerFactory[DatagramRequest, Address]

RequestT = TypeVar("RequestT")


def format_address(address: object) -> str:
    """``host:port``, ``[v6host]:port``, a Unix path, or ``(unnamed)``."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if isinstance(address, bytes):
        return repr(address)  # a Linux abstract name starts with NUL
    if not address:
        return "(unnamed)"
    return str(address)


class _LineHandler(StreamRequestHandler[Address]):
    """Read one line, reply with it (upper-cased if :attr:`upper`), close (``MyTCPHandler``)."""

    upper: ClassVar[bool] = True
    # The most bytes read as one line (--max-line); see MAX_LINE.
    max_line: ClassVar[int] = MAX_LINE

    def handle(self) -> None:
        line = self.rfile.readline(self.max_line)
        self.wfile.write(line.upper() if self.upper else line)


class UpperStreamHandler(_LineHandler):
    """Reply to one line with the line in upper case."""


class EchoStreamHandler(_LineHandler):
    """Reply to one line with the same line."""

    upper = False


class _DatagramHandler(BaseRequestHandler[DatagramRequest, Address]):
    """Reply to one datagram (upper-cased if :attr:`upper`) (``MyUDPHandler``)."""

    upper: ClassVar[bool] = True

    def handle(self) -> None:
        data, sock = self.request
        address = self.client_address
        # Typed as Address, but an unbound Unix datagram client reports None.
        if not cast(object, address):
            # An unbound Unix datagram client has no address to answer to.
            _logger.debug("datagram from an unnamed Unix client: no reply possible")
            return
        to = reply_address(self.request, address)
        if not send_datagram(sock, data.upper() if self.upper else data, to):
            _logger.warning("dropped the reply to %s: its queue stayed full for %g s", to, DATAGRAM_SEND_TIMEOUT)


class UpperDatagramHandler(_DatagramHandler):
    """Reply to a datagram with its upper-case copy."""


class EchoDatagramHandler(_DatagramHandler):
    """Reply to a datagram with the same bytes."""

    upper = False


class _LoggingHTTPRequestHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler whose access log goes to :mod:`logging`."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002  # stdlib's name
        # The stdlib writes to stderr and uses client_address[0], which is ''
        # for a Unix client; log the formatted address instead.
        _logger.info("%s %s", format_address(self.client_address), format % args)


def http_handler(directory: str, *, park: bool = False) -> StreamHandler:
    """A handler factory serving the files under *directory* over HTTP:
    HTTP/1.0, one request per connection (stdlib's default); with *park*,
    HTTP/1.1 keep-alive, the connection parked between requests
    (:class:`~composable_server.httpserver.ParkingHTTPRequestHandler`)."""
    if not park:
        return functools.partial(_LoggingHTTPRequestHandler, directory=directory)
    from .httpserver import parking_http  # here: only --park pays for the module

    handler = parking_http(_LoggingHTTPRequestHandler)
    # SimpleHTTPRequestHandler sends Content-Length on every response, as HTTP/1.1 keep-alive needs.
    handler.protocol_version = "HTTP/1.1"
    return functools.partial(handler, directory=directory)


_LINE_HANDLERS: Final[dict[str, type[_LineHandler]]] = {
    "upper": UpperStreamHandler,
    "echo": EchoStreamHandler,
}
STREAM_SERVICES: Final[dict[str, StreamHandler]] = dict(_LINE_HANDLERS)


def line_service(name: str, max_line: int = MAX_LINE) -> StreamHandler:
    """The line service *name* (``upper``, ``echo``) reading lines of at most *max_line* bytes.

    Raises:
        KeyError: no such line service.
    """
    base = _LINE_HANDLERS[name]
    if max_line == base.max_line:
        return base
    # A subclass per bound: the handler class itself stays the factory, so
    # the server still sees a StreamRequestHandler (kernel idle timeouts).
    return type(base.__name__, (base,), {"max_line": max_line, "__module__": __name__})


class LinesHandler(ParkingRequestHandler[Address]):
    """Upper-case every line of a connection back, until EOF (``lines``)."""

    max_line: ClassVar[int] = MAX_LINE
    parks_connections = False  # lines_service(park=True) parks
    client_speaks_first = True  # a silent new connection then waits parked, holding no worker

    def handle_message(self) -> Verdict:
        line = self.rfile.readline(self.max_line)
        if not line:
            return Verdict.CLOSE
        self.wfile.write(line.upper())
        return Verdict.KEEP


def lines_service(max_line: int = MAX_LINE, *, park: bool = False) -> StreamHandler:
    """The ``lines`` service: lines of at most *max_line* bytes, parked
    between lines if *park*, else served in place until EOF."""
    if max_line == LinesHandler.max_line and not park:
        return LinesHandler
    attributes = {"max_line": max_line, "parks_connections": park, "__module__": __name__}
    return type(LinesHandler.__name__, (LinesHandler,), attributes)


DATAGRAM_SERVICES: Final[dict[str, DatagramHandler]] = {
    "upper": UpperDatagramHandler,
    "echo": EchoDatagramHandler,
}


@final
class RequestLog(Generic[RequestT]):
    """Wraps a handler: a DEBUG line as each request starts, and the stream connections
    in flight, which :meth:`cut` can shut down.

    In a forked child the register is the child's own copy; the parent's
    stays empty, and children are stopped by the dispatcher's drain instead.
    """

    __slots__ = ("_active", "_lock", "handler", "name")

    def __init__(self, handler: HandlerFactory[RequestT, Address], name: str) -> None:
        self.handler = handler
        self.name = name
        self._lock = threading.Lock()
        self._active: set[Socket] = set()

    @property
    def parks_connections(self) -> bool:
        """The wrapped handler's capability (see ``_request.parks_connections``)."""
        return parks_connections(self.handler)

    @property
    def client_speaks_first(self) -> bool:
        """The wrapped handler's capability (see ``_request.client_speaks_first``)."""
        return client_speaks_first(self.handler)

    def __call__(self, request: RequestT, client_address: Address, server: object) -> object:
        """Log the request, then run the wrapped handler for it; return what it returned."""
        # One line per request, when it starts: a request that hangs or
        # fails is then visible too (a failure also gets the error policy's
        # record, with the traceback).
        _logger.debug("%s request from %s", self.name, format_address(client_address))
        req: object = request
        conn = req if isinstance(req, Socket) else None
        if conn is None:
            return self.handler(request, client_address, server)
        with self._lock:
            self._active.add(conn)
        try:
            return self.handler(request, client_address, server)
        finally:
            with self._lock:
                self._active.discard(conn)

    def in_flight(self) -> int:
        """The number of stream connections being served in this process."""
        with self._lock:
            return len(self._active)

    def cut(self) -> int:
        """Shut down every stream connection in flight, so its handler wakes
        up with EOF; return how many there were."""
        with self._lock:
            active = list(self._active)
        for conn in active:
            try:
                conn.shutdown(SHUT_RDWR)
            except OSError:
                pass  # already closed by its handler
        return len(active)
