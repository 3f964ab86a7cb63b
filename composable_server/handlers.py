"""Request handlers, typed by the server's request and address types.

The same life cycle as stdlib: the constructor runs ``setup()``, ``handle()``
and ``finish()`` (the last even when ``handle()`` raised).

* :class:`BaseRequestHandler` - generic over request and address;
* :class:`StreamRequestHandler` - ``rfile``/``wfile`` over a connected socket;
  ``wfile.write`` sends every byte (``sendall``) when unbuffered;
  :meth:`~StreamRequestHandler.read_line` reads a line with a bound;
* :class:`ParkingRequestHandler` - a stream handler that serves one message
  at a time (:meth:`~ParkingRequestHandler.handle_message` returns a
  :class:`~composable_server.interfaces.Verdict`): between messages the
  server parks the connection in its poll set instead of holding a worker;
* :class:`DatagramRequestHandler` - ``rfile`` over the datagram, ``wfile``
  collected and sent back as one datagram by ``finish()``;
* :class:`DatagramResponder` - the lean datagram mode: serves a
  :class:`~composable_server.interfaces.DatagramHandler`, one method call
  per datagram that returns the reply, no handler object and no files;
* :class:`LineResponder` - the lean mode of kept stream connections: serves
  a :class:`~composable_server.interfaces.LineHandler`, one method call per
  line that returns the reply, parked between messages.

Stdlib handler classes (``http.server.SimpleHTTPRequestHandler``, ...) run on
a :class:`~composable_server.server.Server` as they are: they only need the
``(request, client_address, server)`` call.
"""

from __future__ import annotations

import errno
import io
import logging
import socket
import sys
from collections import deque
from collections.abc import Callable
from socket import socket as Socket
from typing import TYPE_CHECKING, ClassVar, Final, Generic, TypeVar, cast, final

import attrs

from ._socketutil import DATAGRAM_SEND_TIMEOUT, send_datagram
from .exceptions import LineTooLongError
from .interfaces import Address, DatagramHandler, DatagramRequest, LineHandler, Verdict

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer is 3.12+

    from ._request import KeptFiles

    from .server import Server

__all__ = (
    "DEFAULT_MAX_LINE_LENGTH",
    "BaseRequestHandler",
    "DatagramRequestHandler",
    "DatagramResponder",
    "LineResponder",
    "ParkingRequestHandler",
    "SocketFile",
    "SocketWriter",
    "StreamRequestHandler",
    "Verdict",
    "buffered_input",
    "has_buffered_input",
    "socket_files",
)

DEFAULT_MAX_LINE_LENGTH: Final = 65536
"""The default bound of :meth:`StreamRequestHandler.read_line`
(``http.server`` limits its request line to 65536 bytes too)."""

RequestT = TypeVar("RequestT")
AddressT = TypeVar("AddressT")

_logger = logging.getLogger("composable_server")


class BaseRequestHandler(Generic[RequestT, AddressT]):
    """Handles one request; subclass and override :meth:`handle`.

    Attributes:
        request: the request (a socket, or ``(data, socket)`` for datagrams).
        client_address: the client's address.
        server: the server that accepted the request.
    """

    def __init__(self, request: RequestT, client_address: AddressT, server: Server[RequestT, AddressT]) -> None:
        self.request = request
        self.client_address = client_address
        self.server = server
        self.setup()
        try:
            self.handle()
        finally:
            self.finish()

    def setup(self) -> None:
        """Called before :meth:`handle`; prepare what it needs."""

    def handle(self) -> None:
        """Serve the request."""

    def finish(self) -> None:
        """Called after :meth:`handle`, even when it raised; release what
        :meth:`setup` prepared."""


def _kernel_timeout(sock: Socket, exc: BlockingIOError) -> OSError:
    """The error a handler should see for *exc* raised by *sock*.

    ``EAGAIN`` on a *blocking* socket can only mean that ``SO_RCVTIMEO`` or
    ``SO_SNDTIMEO`` ran out (socket(7)): the server's idle budget.  Report it
    as the ``TimeoutError`` a Python-level socket timeout raises.  On a
    non-blocking socket ``EAGAIN`` keeps its usual meaning.
    """
    if sock.gettimeout() is None:
        return TimeoutError(errno.ETIMEDOUT, "timed out (idle limit)")
    return exc


class SocketFile(io.RawIOBase):
    """The raw binary file under ``rfile`` (and a buffered ``wfile``).

    What ``socket.makefile()`` builds (stdlib ``socket.SocketIO``), at the
    same cost, except that an expired kernel timeout (the server's idle
    budget, set with ``SO_RCVTIMEO``/``SO_SNDTIMEO`` so that no read pays an
    extra ``poll()``) raises ``TimeoutError`` instead of reading as "no data
    yet", which a buffered ``readline()`` would return as a partial line.
    Closing the file leaves the socket open: the server closes it.
    """

    def __init__(self, sock: Socket, *, readable: bool, writable: bool) -> None:
        super().__init__()
        self._sock = sock
        self._readable = readable
        self._writable = writable

    def readable(self) -> bool:
        return self._readable

    def writable(self) -> bool:
        return self._writable

    def readinto(self, buffer: Buffer, /) -> int | None:
        """Receive into *buffer*; None only on a non-blocking socket with no
        data (:func:`buffered_input` replaces it for one call)."""
        try:
            return self._sock.recv_into(buffer)
        except BlockingIOError as exc:
            error = _kernel_timeout(self._sock, exc)
            if error is exc:
                return None
            raise error from None

    def write(self, b: Buffer, /) -> int | None:
        """Send what the kernel takes of *b*; None only on a non-blocking socket that is full."""
        try:
            return self._sock.send(b)
        except BlockingIOError as exc:
            error = _kernel_timeout(self._sock, exc)
            if error is exc:
                return None
            raise error from None

    def fileno(self) -> int:
        return self._sock.fileno()


class SocketWriter(io.BufferedIOBase):
    """A write-only file over a socket that sends every byte it is given.

    The unbuffered ``wfile`` of :class:`StreamRequestHandler`: ``write``
    calls ``sendall``, so a short send never loses data (stdlib
    ``socketserver._SocketWriter``).  An expired kernel send timeout (the
    idle budget) raises ``TimeoutError``.
    """

    def __init__(self, sock: Socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, b: Buffer, /) -> int:
        """Send all of *b*; return its length in bytes."""
        try:
            self._sock.sendall(b)
        except BlockingIOError as exc:
            raise _kernel_timeout(self._sock, exc) from None
        with memoryview(b) as view:
            return view.nbytes

    def fileno(self) -> int:
        return self._sock.fileno()


def buffered_input(rfile: io.BufferedIOBase) -> int:
    """How many bytes *rfile* holds in its buffer, read from the socket but
    not consumed yet; no system call is made.

    ``BufferedReader.peek`` returns the buffer when it is not empty, but
    reads from the raw file when it is, which would block on a socket: for
    the call, the :class:`SocketFile` under it reads nothing and reports "no
    data yet", so ``peek`` returns ``b""``.  An unbuffered ``rfile``
    (``rbufsize = 0``), or any other file, holds nothing.
    """
    if not isinstance(rfile, io.BufferedReader):
        return 0
    raw = rfile.raw
    if not isinstance(raw, SocketFile):
        return 0
    return len(_peek_held(rfile, raw))


# A readinto that reads nothing and returns None ("no data yet"), in C: a
# deque of length 0 drops what it is given and its append returns None.
# _peek_held() puts it on a SocketFile instance for one peek() (an instance
# attribute hides the class's method: BufferedReader looks readinto up per
# call), so peek() on an empty buffer costs no Python frame and no system call.
_NO_DATA: Final[Callable[[object], None]] = deque[object](maxlen=0).append


def _peek_held(rfile: io.BufferedReader, raw: SocketFile) -> bytes:
    """``rfile.peek(1)`` with *raw* (its raw file) reading nothing."""
    attributes = raw.__dict__
    attributes["readinto"] = _NO_DATA
    try:
        return rfile.peek(1)
    finally:
        del attributes["readinto"]


def _buffer_size(size: int) -> int:
    # makefile(): a negative size means the default buffer.
    return io.DEFAULT_BUFFER_SIZE if size < 0 else size


def socket_files(connection: Socket, rbufsize: int, wbufsize: int) -> tuple[io.BufferedIOBase, io.BufferedIOBase]:
    """``rfile`` and ``wfile`` over *connection*, as stdlib's
    ``StreamRequestHandler.setup`` opens them (``makefile("rb", rbufsize)``;
    ``_SocketWriter`` when *wbufsize* is 0, else ``makefile("wb", wbufsize)``),
    but over :class:`SocketFile` and :class:`SocketWriter`: an expired kernel
    timeout raises ``TimeoutError``, and :func:`buffered_input` can see
    what ``rfile`` holds.  Closing the files leaves the socket open."""
    reader = SocketFile(connection, readable=True, writable=False)
    if rbufsize == 0:
        # Unbuffered, as makefile("rb", 0); typed as the buffered file stdlib declares.
        rfile = cast(io.BufferedIOBase, reader)
    else:
        rfile = io.BufferedReader(reader, _buffer_size(rbufsize))
    if wbufsize == 0:
        return rfile, SocketWriter(connection)
    writer = SocketFile(connection, readable=False, writable=True)
    return rfile, io.BufferedWriter(writer, _buffer_size(wbufsize))


def has_buffered_input(rfile: io.BufferedIOBase, connection: object) -> bool:
    """True if input was read from *connection* but not consumed yet (no
    system call): what *rfile* holds (:func:`buffered_input`), or decrypted
    TLS bytes (``SSLSocket.pending()``).  A handler must serve that before it
    gives its connection back, since no poll would ever report it."""
    if buffered_input(rfile):
        return True
    return _tls_pending(connection)


def _tls_pending(connection: object) -> bool:
    """True if *connection* is a TLS socket holding decrypted bytes."""
    if "ssl" not in sys.modules:
        return False  # no TLS socket exists without it; importing it would cost every plain server
    import ssl  # loaded already: a look-up

    return isinstance(connection, ssl.SSLSocket) and connection.pending() > 0


class StreamRequestHandler(BaseRequestHandler[Socket, AddressT]):
    """A handler for stream requests with file-like ``rfile`` and ``wfile``.

    Class attributes (as in stdlib):
        rbufsize: ``rfile`` buffer size (-1: default buffering).
        wbufsize: ``wfile`` buffer size (0: unbuffered, every write is sent).
        timeout: socket timeout in seconds for this connection (None: none).
        disable_nagle_algorithm: set ``TCP_NODELAY``.
        max_line_length: the bound of :meth:`read_line`, in bytes, newline
            included (default 65536, as ``http.server``'s request line).
        kernel_timeouts_safe: a capability the server reads: True (the
            default) states that the handler reads and writes the connection
            only through ``rfile``/``wfile`` (:class:`SocketFile`), which turn
            an expired kernel timeout into ``TimeoutError``, so the idle
            budget may be set once as ``SO_RCVTIMEO``/``SO_SNDTIMEO`` instead
            of ``settimeout()`` (which polls before every read and write).
            Set it False in a subclass that calls ``recv``/``send`` on
            ``self.request`` itself.
    """

    rbufsize: ClassVar[int] = -1
    wbufsize: ClassVar[int] = 0
    timeout: ClassVar[float | None] = None
    disable_nagle_algorithm: ClassVar[bool] = False
    max_line_length: ClassVar[int] = DEFAULT_MAX_LINE_LENGTH
    kernel_timeouts_safe: ClassVar[bool] = True

    connection: Socket
    rfile: io.BufferedIOBase
    wfile: io.BufferedIOBase

    def setup(self) -> None:
        """Apply the timeout and TCP_NODELAY, then open ``rfile``/``wfile``."""
        self.connection = self.request
        if self.timeout is not None:
            self.connection.settimeout(self.timeout)
        if self.disable_nagle_algorithm:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self.rfile, self.wfile = socket_files(self.connection, self.rbufsize, self.wbufsize)

    def read_line(self) -> bytes:
        """Read one line from ``rfile``, at most :attr:`max_line_length` bytes.

        ``rfile.readline()`` (and iterating over ``rfile``) keeps reading
        until a newline arrives, so a client that never sends one grows the
        server's memory without limit; this reads at most one byte past the
        bound.

        Returns:
            The line, newline included; shorter and without a newline at EOF;
            ``b""`` at EOF.

        Raises:
            LineTooLongError: more than :attr:`max_line_length` bytes came
                without a newline.  The rest of the line is unread: close the
                connection (returning from ``handle`` does).
        """
        limit = self.max_line_length
        line = self.rfile.readline(limit + 1)
        if len(line) > limit:
            raise LineTooLongError(limit)
        return line

    def finish(self) -> None:
        """Flush ``wfile`` (a vanished peer is not an error here), close both files."""
        if not self.wfile.closed:
            try:
                self.wfile.flush()
            except OSError:
                # A final buffered flush may fail if the peer is gone.
                pass
        self.wfile.close()
        self.rfile.close()


class ParkingRequestHandler(StreamRequestHandler[AddressT]):
    """A stream handler that serves one message at a time and gives the
    connection back to the server between messages.

    Override :meth:`handle_message`: read one message from ``rfile``,
    answer it on ``wfile``, and return ``Verdict.KEEP`` to keep the
    connection open or ``Verdict.CLOSE`` (at EOF, on a protocol error).
    :meth:`handle` calls it while input is already buffered in user space
    (the ``rfile`` buffer, ``SSLSocket.pending()``: pipelined messages, which
    no poll would report), then records the last verdict as
    :attr:`verdict`.  On KEEP the server parks the connection in its poll
    set, costing no worker, and instantiates the handler again when the
    next message arrives; so a parked connection holds no buffered input,
    and state kept between messages belongs on the server (or keyed by
    ``client_address``), not on the handler.  Only the files outlive a
    message: on KEEP, :meth:`finish` leaves ``rfile``/``wfile`` (empty, and
    flushed) on the server (``server.kept_files``, a bounded
    :class:`~composable_server._request.KeptFiles`), and the next message's
    :meth:`setup` takes them back instead of opening new ones, so the same
    file objects serve every message of a connection (a connection beyond
    the bound gets new ones).  A handler that wraps or replaces them per
    message should override :meth:`setup` and :meth:`finish` as a pair.

    Class attributes:
        parks_connections: the capability the server reads (as
            ``kernel_timeouts_safe``).  True (the default): park between
            messages.  False: :meth:`handle` serves every message in place,
            in one worker, until CLOSE (the classic thread-per-connection
            shape, for servers without a loop to park in).
        client_speaks_first: another capability: True states that the
            protocol's client sends the first message, so a new connection
            that has sent nothing yet waits among the parked ones (idle
            budget, ``max_parked``) until it speaks, holding no worker (on
            a ``SyncDispatcher``: not holding the loop, which would
            otherwise wait in the first read while every other connection
            waits too).  False (the default): the handler runs at once, as
            a protocol whose server speaks first (an SMTP greeting) needs.

    Attributes:
        verdict: what became of the connection after the last message
            (``CLOSE`` until :meth:`handle` ran).
    """

    parks_connections: ClassVar[bool] = True
    client_speaks_first: ClassVar[bool] = False
    verdict: Verdict = Verdict.CLOSE
    # The server's KeptFiles (None: a server without one, stdlib's).
    _kept_files: KeptFiles | None = None

    def setup(self) -> None:
        """As :meth:`StreamRequestHandler.setup`, but ``rfile``/``wfile`` are
        the ones the connection's previous message left on the server
        (``server.kept_files``), if it kept them: the same buffer sizes,
        empty (a connection is kept only once its buffer is), and never
        another connection's."""
        self.connection = connection = self.request
        if self.timeout is not None:
            connection.settimeout(self.timeout)
        if self.disable_nagle_algorithm:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        # A composable Server has kept_files; a stdlib socketserver has not.
        kept: KeptFiles | None = getattr(self.server, "kept_files", None)
        if kept is not None:
            self._kept_files = kept
            entry = kept.pop(connection, None)
            if entry is not None:
                if entry[2] == self.rbufsize and entry[3] == self.wbufsize:
                    self.rfile, self.wfile = entry[0], entry[1]
                    return
                entry[1].close()  # made by a handler class with other buffer sizes
                entry[0].close()
        self.rfile, self.wfile = socket_files(connection, self.rbufsize, self.wbufsize)

    def finish(self) -> None:
        """On ``KEEP``: flush ``wfile`` and leave both files on the server for
        the connection's next message (``server.kept_files``).  Otherwise (or
        if the flush fails) as :meth:`StreamRequestHandler.finish`: close them."""
        kept = self._kept_files
        if kept is not None and self.verdict is Verdict.KEEP and not self.rfile.closed:
            try:
                if self.wbufsize:  # else SocketWriter: every write was sent already
                    self.wfile.flush()
            except (OSError, ValueError):
                pass  # the peer is gone, or wfile was closed: close the files below
            else:
                # KeptFiles.put, inlined (once per message).
                kept[self.connection] = (self.rfile, self.wfile, self.rbufsize, self.wbufsize)
                if len(kept) > kept.size:
                    kept.evict()
                return
        super().finish()

    def handle(self) -> None:
        """Serve messages while input is buffered (all of them if not
        :attr:`parks_connections`); record the last verdict."""
        parks = self.parks_connections
        while True:
            verdict = self.handle_message()
            if verdict is not Verdict.KEEP or (parks and not self.has_buffered_input()):
                break
        self.verdict = verdict

    def handle_message(self) -> Verdict:
        """Serve one message; return whether to keep the connection.

        Returns:
            ``Verdict.KEEP`` or ``Verdict.CLOSE``.  An exception closes the
            connection too (after the error policy saw it).
        """
        return Verdict.CLOSE

    def has_buffered_input(self) -> bool:
        """True if input was read from the connection but not consumed yet
        (no system call): the ``rfile`` buffer, or decrypted TLS bytes
        (``SSLSocket.pending()``)."""
        rfile = self.rfile
        # has_buffered_input(), inlined for the files socket_files() opens: once per message.
        if type(rfile) is io.BufferedReader and type(raw := rfile.raw) is SocketFile:
            # _peek_held(), inlined as well.
            attributes = raw.__dict__
            attributes["readinto"] = _NO_DATA
            try:
                if rfile.peek(1):
                    return True
            finally:
                del attributes["readinto"]
        elif buffered_input(rfile):
            return True
        connection = self.connection
        return type(connection) is not Socket and _tls_pending(connection)


class DatagramRequestHandler(BaseRequestHandler[DatagramRequest, AddressT]):
    """A handler for datagram requests.

    ``rfile`` reads the received datagram (also in :attr:`packet`);
    everything written to ``wfile`` is sent back to the client as one
    datagram by :meth:`finish` (an empty reply is sent too, as in stdlib).
    """

    packet: bytes
    socket: Socket
    rfile: io.BytesIO
    wfile: io.BytesIO

    def setup(self) -> None:
        """Unpack the request and open ``rfile``/``wfile`` in memory."""
        self.packet, self.socket = self.request
        self.rfile = io.BytesIO(self.packet)
        self.wfile = io.BytesIO()

    def finish(self) -> None:
        """Send what was written to ``wfile`` to the client (to the proxy,
        for a datagram that came with a PROXY header).

        On a non-blocking socket (the native datagram transports) a reply the
        kernel cannot queue is retried for up to
        :data:`~composable_server._socketutil.DATAGRAM_SEND_TIMEOUT` seconds,
        then dropped and logged (see :func:`~composable_server._socketutil.send_datagram`).
        """
        reply = self.wfile.getvalue()
        request = self.request
        # The client address of a datagram request is the sender's socket address.
        to: Address = self.client_address  # type: ignore[assignment]  # AddressT is one of Address's kinds
        if type(request) is not tuple:  # a plain datagram is a tuple: nothing to import or ask per datagram
            from .proxy import reply_address  # here: proxy (and ipaddress) load only when used

            to = reply_address(request, to)
        try:
            self.socket.sendto(reply, to)
            return
        except BlockingIOError:
            pass  # a non-blocking socket whose queue is full: retry, then drop
        _send_or_drop(self.socket, reply, to)


def _send_reply(sock: Socket, reply: bytes, request: object, client_address: Address) -> None:
    """Send *reply* to *client_address* through *sock*, as one datagram: to
    the proxy instead if *request* came with a PROXY header (not a plain
    ``(data, socket)`` tuple).

    On a non-blocking socket a reply the kernel cannot queue is retried for
    up to :data:`~composable_server._socketutil.DATAGRAM_SEND_TIMEOUT`
    seconds, then dropped and logged.

    Raises:
        OSError: from ``sendto(2)``, but ``EAGAIN``.
    """
    to = client_address
    if type(request) is not tuple:  # a plain datagram is a tuple: nothing to import or ask per datagram
        from .proxy import reply_address  # here: proxy (and ipaddress) load only when used

        to = reply_address(request, to)
    try:
        sock.sendto(reply, to)
        return
    except BlockingIOError:
        pass  # a non-blocking socket whose queue is full: retry, then drop
    _send_or_drop(sock, reply, to)


def _send_or_drop(sock: Socket, reply: bytes, to: Address) -> None:
    """A reply whose ``sendto`` found the queue full: retry it for up to
    :data:`~composable_server._socketutil.DATAGRAM_SEND_TIMEOUT` seconds,
    then drop it with a warning."""
    if not send_datagram(sock, reply, to):
        _logger.warning(
            "dropped a %d-byte reply to %s: its queue stayed full for %g s",
            len(reply),
            to,
            DATAGRAM_SEND_TIMEOUT,
        )


@final
@attrs.frozen
class DatagramResponder(Generic[AddressT]):
    """The handler factory of the lean datagram mode: serves *handler*, a
    :class:`~composable_server.interfaces.DatagramHandler`.

    Per datagram it calls ``handler.handle_datagram(data, client_address)``
    and sends the reply it returns (None: none) back to the client, as
    :meth:`DatagramRequestHandler.finish` sends ``wfile``, full queue and
    PROXY header included; no handler object is made and no file opened.
    It is an ordinary handler factory (``handler(request, client_address,
    server)``), so every dispatcher, verifier and error policy composes with
    it, and a datagram whose handler raises is reported by the error policy
    without a reply while the server serves on.  On a ``SyncDispatcher``
    without observers the server recognises it and serves each datagram in
    its loop without the per-request job (``Server.serve_forever``).

    Build one with the factories' ``datagram_handler=`` option
    (``make_udp_server(address, datagram_handler=Echo())``) or pass
    ``handler=DatagramResponder(Echo())`` to a :class:`~composable_server.server.Server`::

        class Echo:
            def handle_datagram(self, data: bytes, client_address: InetAddress) -> bytes | None:
                return data

    Args:
        handler: answers each datagram.
    """

    handler: DatagramHandler[AddressT]

    def __call__(self, request: DatagramRequest, client_address: AddressT, server: object) -> None:
        """Answer one datagram request ``(data, socket)``."""
        data, sock = request
        reply = self.handler.handle_datagram(data, client_address)
        if reply is not None:
            _send_reply(sock, reply, request, client_address)  # type: ignore[arg-type]  # AddressT is one of Address's kinds


# -- the lean mode of kept stream connections ---------------------------------------

_RECV_SIZE: Final = 65536
"""What one read of a line-framed connection asks for (``LineResponder``)."""


@final
class _Served:
    """What :class:`LineResponder` returns: the verdict the server reads."""

    __slots__ = ("verdict",)

    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict


_SERVED_KEEP: Final = _Served(Verdict.KEEP)
_SERVED_CLOSE: Final = _Served(Verdict.CLOSE)


@final
@attrs.frozen
class LineResponder(Generic[AddressT]):
    """The handler factory of the lean stream mode: serves *handler*, a
    :class:`~composable_server.interfaces.LineHandler`, on kept connections.

    Per message it reads what the connection sent (one ``recv``), calls
    ``handler.handle_line(line, client_address)`` for each complete line
    (the ``b"\\n"`` included), sends the replies of that read as one
    ``sendall``, and keeps the connection (``Verdict.KEEP``): between
    messages it is parked in the server's poll set, as with a
    :class:`ParkingRequestHandler`, and no handler object is made and no
    file opened.  A reply of None closes the connection; EOF closes it (an
    unterminated last line is dropped); a line longer than
    *max_line_length* (newline included) closes it with a warning on the
    ``composable_server`` logger; an exception from the handler goes to
    the error policy and closes that connection while the server serves on.

    It is an ordinary handler factory (``handler(request, client_address,
    server)``, ``parks_connections``), so every dispatcher, transport (TLS
    too), verifier, observer and error policy composes with it; in a
    worker a partial line waits there for its end (each read bounded by the
    idle budget).  On a ``SyncDispatcher`` with a plain TCP or Unix stream
    transport and no observers the serving loop serves each ready kept
    connection itself (``serve_lines``, no job in between); a partial line
    then stays buffered on the connection, and the loop serves others
    meanwhile.

    Build one with the stream factories' ``line_handler=`` option
    (``make_tcp_server(address, line_handler=Echo())``) or pass
    ``handler=LineResponder(Echo())`` to a :class:`~composable_server.server.Server`::

        class Echo:
            def handle_line(self, line: bytes, client_address: InetAddress) -> bytes | None:
                return line

    Args:
        handler: answers each line.
        max_line_length: the longest line accepted, newline included
            (default :data:`DEFAULT_MAX_LINE_LENGTH`).

    Raises:
        ValueError: *max_line_length* is below 1.
    """

    handler: LineHandler[AddressT]
    max_line_length: int = DEFAULT_MAX_LINE_LENGTH

    # Capabilities the server reads (see ParkingRequestHandler, StreamRequestHandler).
    parks_connections: ClassVar[bool] = True
    client_speaks_first: ClassVar[bool] = True
    # Reads and writes report an expired SO_RCVTIMEO/SO_SNDTIMEO as TimeoutError (serve_lines).
    kernel_timeouts_safe: ClassVar[bool] = True

    def __attrs_post_init__(self) -> None:
        if self.max_line_length < 1:
            raise ValueError(f"max_line_length must be >= 1, got {self.max_line_length}")

    def __call__(self, request: Socket, client_address: AddressT, server: object) -> _Served:
        """Serve the lines the connection *request* has sent; wait in place
        for the end of a partial line, and for input buffered in user space
        (TLS) to be served too.  (A new connection that has sent nothing
        yet waits among the kept ones first: ``client_speaks_first``.)"""
        rest = b""
        while True:
            left = self.serve_lines(request, rest, client_address)
            if left is None:
                return _SERVED_CLOSE
            rest = left
            if not left and (type(request) is Socket or not _tls_pending(request)):
                return _SERVED_KEEP

    def serve_lines(self, sock: Socket, buffered: bytes, client_address: AddressT) -> bytes | None:
        """One read of *sock* (*buffered*: the partial line before it): call
        the handler per complete line, send the replies.

        Returns:
            The partial line left (``b""``: none), to pass as *buffered*
            next time; None: close the connection (EOF, a reply of None, a
            line too long).

        Raises:
            OSError: from ``recv``/``sendall`` (``TimeoutError``: the idle budget).
            Exception: from the handler.
        """
        try:
            data = sock.recv(_RECV_SIZE)
        except BlockingIOError as exc:  # SO_RCVTIMEO ran out (the idle budget)
            raise _kernel_timeout(sock, exc) from None
        if not data:
            return None
        if buffered:
            data = buffered + data
        limit = self.max_line_length
        handle = self.handler.handle_line
        end = data.find(b"\n") + 1
        if end == len(data) and end <= limit:  # one whole line: the common case
            reply = handle(data, client_address)
            if reply:
                try:  # _send_all, inlined (once per message)
                    sock.sendall(reply)
                except BlockingIOError as exc:
                    raise _kernel_timeout(sock, exc) from None
            return None if reply is None else b""
        start = 0
        replies: list[bytes] = []
        keep = True
        while end:
            if end - start > limit:
                _line_too_long(client_address, limit)
                keep = False
                break
            reply = handle(data[start:end], client_address)
            if reply is None:
                keep = False
                break
            if reply:
                replies.append(reply)
            start = end
            end = data.find(b"\n", start) + 1
        if replies:
            _send_all(sock, b"".join(replies))
        if not keep:
            return None
        rest = data[start:]
        if len(rest) >= limit:  # its newline would make it longer than the bound
            _line_too_long(client_address, limit)
            return None
        return rest


def _send_all(sock: Socket, data: bytes) -> None:
    """``sendall``, an expired ``SO_SNDTIMEO`` raised as ``TimeoutError``."""
    try:
        sock.sendall(data)
    except BlockingIOError as exc:
        raise _kernel_timeout(sock, exc) from None


def _line_too_long(client_address: object, limit: int) -> None:
    _logger.warning("closing the connection of %s: a line longer than %d bytes", client_address, limit)
