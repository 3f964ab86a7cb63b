"""``http.server`` doing less per request, and on parked connections: an
idle keep-alive client waits in the server's poll set between requests, not
in a worker.

:class:`HTTPRequestHandler` is a :class:`http.server.BaseHTTPRequestHandler`
with the same behaviour and less work per request (headers without the email
parser, the ``Date`` once per second, head and body in one send);
:class:`ParkingHTTPRequestHandler` is one that also serves one request per
dispatch.  Mix either in front of any handler class, or wrap one with
:func:`fast_http` / :func:`parking_http`; :func:`make_http_server` is the
server (``park=False``: a worker serves a connection in place, as stdlib)::

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

Doing less per request (:class:`HTTPRequestHandler`, under both).  Under
callgrind (``tests/bench/callgrind_http.py``) ~205k of stdlib's ~225k
instructions per keep-alive request were ``http.server`` itself, most of it
``http.client.parse_headers`` (``email.feedparser``) and
``email.utils.formatdate``.  The handler keeps stdlib's hooks and their
order (``handle_one_request``, ``send_response``, ``log_request``,
``log_message``, ``send_header``, ``end_headers``, ``do_*``), and replaces
only what it can do with less work for the same result:

* ``parse_request``: stdlib's code, the headers from :func:`parse_headers`
  (the same ``HTTPMessage``, built without the email parser for ordinary
  header blocks; anything unusual goes to the email parser);
* ``date_time_string``: formatted once per second (an explicit timestamp,
  such as ``Last-Modified``, once per value);
* ``send_header``: no ``hasattr`` per call;
* ``flush_headers``: the head is held by :class:`ResponseWriter` and sent
  with the body's first write: one send per response instead of two.

and, on a ``SimpleHTTPRequestHandler`` whose methods here are stdlib's:

* ``translate_path``: remembered per (directory, path), the last 1024;
* ``do_GET`` of a regular file (while ``send_head`` and ``copyfile`` are
  stdlib's): ``os.open``/``os.fstat``/``os.read`` instead of ``isdir``, a
  file object and ``copyfileobj`` (the same headers, body and
  If-Modified-Since answer, the file read at every request); anything
  else (directories, listings, errors) is stdlib's ``send_head``.

A later base's own version of one of these wins (``__init_subclass__``), as
if this class were not among the bases.

Only a server that dispatches through the native job parks (the
:class:`~composable_server.server.Server` engine's own ``process_request``:
native servers, prefork workers).  On any other server (stdlib
``socketserver``, compat's ``ThreadingMixIn`` and ``ForkingMixIn``, which
close the connection when the handler returns) :meth:`handle` loops in place
as stdlib does, so the class stays a drop-in ``BaseHTTPRequestHandler``.
"""

from __future__ import annotations

import datetime
import email.parser
import email.utils
import functools
import io
import http.client
import http.server
import os
import re
import shutil
import socket
import stat
import time
import types
from typing import TYPE_CHECKING, BinaryIO, ClassVar, Final, TypeVar, cast

from ._request import DEFAULT_MAX_PARKED, KeptFiles
from .acceptors import StreamAcceptor
from .dispatchers import ThreadPoolDispatcher
from .handlers import SocketFile, SocketWriter, _kernel_timeout, has_buffered_input, socket_files
from .interfaces import InetAddress, Verdict
from .policies import Budget, ConnectionTimeouts
from .server import Server
from .transports import DEFAULT_BACKLOG, TCPTransport, TLSTransport

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Iterable

    from typing_extensions import Buffer  # collections.abc.Buffer is 3.12+

    from .interfaces import ErrorPolicy, HandlerFactory, Observer, TimeoutPolicy, Transport, Verifier

__all__ = (
    "COALESCE_LIMIT",
    "DEFAULT_HTTP_BUDGET",
    "DEFAULT_HTTP_THREADS",
    "HTTPRequestHandler",
    "ParkingHTTPRequestHandler",
    "ResponseWriter",
    "fast_http",
    "make_http_server",
    "parking_http",
    "parse_headers",
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

COALESCE_LIMIT: Final = 64 * 1024
"""The largest first body write that :class:`ResponseWriter` copies behind
the held response head to send both at once; a larger one follows the head
in a second send instead of being copied."""

# Invariant: parking_http returns the class it was given, or a subclass of it.
HandlerT = TypeVar("HandlerT", bound=http.server.BaseHTTPRequestHandler)

# A header block parse_headers builds without the email parser: every line
# "name:value" with a name of the characters email.feedparser's headerRE
# accepts (printable ASCII but the colon), printable ASCII or tab after it,
# ended by CRLF or LF, then the empty line.  Anything else (continuation
# lines, a line without a name, "From " lines, control characters, non-ASCII
# bytes, EOF before the empty line) goes to the email parser, as in stdlib.
_SIMPLE_BLOCK: Final = re.compile(r"(?:[!-9;-~]+:[\t -~]*\r?\n)*\r?\n")
# One line of such a block: the name, and the value without its leading
# blanks (email's compat32 header_source_parse: lstrip(" \t"), rstrip("\r\n")).
_SIMPLE_LINE: Final = re.compile(r"([!-9;-~]+):[\t ]*([\t -~]*)\r?\n")
# The values of Content-Type after which email.feedparser parses the body
# (message/*, multipart/*): the email parser builds those messages.
_PARSED_BODY: Final = re.compile(r"multipart|message", re.IGNORECASE)
# Request versions parse_request meets all the time, parsed (stdlib's
# parse_request checks any other one digit by digit, as below).
_VERSIONS: Final = {"HTTP/1.1": (1, 1), "HTTP/1.0": (1, 0)}
# The attributes email.message.Message.__init__ sets (the compat32 policy;
# the same in 3.11 to 3.13); parse_headers copies them into a new message
# instead of calling it (the mutable ones, _headers and defects, anew).
_MESSAGE_STATE: Final = vars(http.client.HTTPMessage())
_new_message: Final = object.__new__


def _parse_headers(fp: io.BufferedIOBase, cls: Callable[[], http.client.HTTPMessage]) -> tuple[http.client.HTTPMessage, str]:
    """:func:`parse_headers`, and the header block in lower case if the
    message was built here (then every field name is in it), else ``""``."""
    # The lines as stdlib's http.client._read_headers reads them; the limits
    # are read at every call, so a program that raises them raises them here too.
    max_line: int = getattr(http.client, "_MAXLINE", 65536)
    max_headers: int = getattr(http.client, "_MAXHEADERS", 100)
    lines = []
    while True:
        line = fp.readline(max_line + 1)
        if len(line) > max_line:
            raise http.client.LineTooLong("header line")
        lines.append(line)
        if len(lines) > max_headers:
            raise http.client.HTTPException(f"got more than {max_headers} headers")
        if line in (b"\r\n", b"\n", b""):
            break
    text = b"".join(lines).decode("iso-8859-1")
    if cls is http.client.HTTPMessage and _SIMPLE_BLOCK.fullmatch(text):
        lowered = text.lower()
        if not (_PARSED_BODY.search(lowered) and _has_parsed_body(_SIMPLE_LINE.findall(text))):
            message = _new_message(http.client.HTTPMessage)
            # What Message.__init__ sets, then what email.feedparser stores:
            # compat32's set_raw() for each header and set_payload("") for
            # the empty body, set at once.
            vars(message).update(_MESSAGE_STATE, _headers=_SIMPLE_LINE.findall(text), _payload="", defects=[])
            return message, lowered
    return email.parser.Parser(_class=cls).parsestr(text), ""


def _has_parsed_body(fields: list[tuple[str, str]]) -> bool:
    return any(name.lower() == "content-type" and _PARSED_BODY.search(value) for name, value in fields)


def parse_headers(
    fp: io.BufferedIOBase, _class: Callable[[], http.client.HTTPMessage] = http.client.HTTPMessage
) -> http.client.HTTPMessage:
    """The headers read from *fp*: ``http.client.parse_headers``, faster.

    The same lines are read, with the same limits and errors
    (``http.client.LineTooLong`` for a line longer than
    ``http.client._MAXLINE``, ``http.client.HTTPException`` beyond
    ``_MAXHEADERS`` lines), and the same message results.  A plain block
    (``name: value`` lines of printable ASCII, see ``_SIMPLE_BLOCK``) into an
    ``http.client.HTTPMessage`` is built directly, as ``email.feedparser``
    with the compat32 policy stores it; anything else (continuation lines,
    malformed lines, non-ASCII, a ``multipart`` or ``message`` Content-Type,
    another message class) goes through the email parser, exactly as stdlib
    does.

    Args:
        fp: the request's ``rfile``, just after the request line.
        _class: the message class (``BaseHTTPRequestHandler.MessageClass``).

    Raises:
        http.client.LineTooLong: a header line is too long.
        http.client.HTTPException: too many header lines.
    """
    return _parse_headers(fp, _class)[0]


class ResponseWriter(SocketWriter):
    """The unbuffered ``wfile`` of :class:`HTTPRequestHandler`: sends every
    byte it is given, as stdlib's, but holds the response head that
    ``end_headers()`` hands it (:meth:`hold`) until the first body write,
    which goes out in the same send, or :meth:`flush`.

    stdlib sends a response's head and body in two sends (two segments and,
    without ``TCP_NODELAY``, a delayed-ACK wait per keep-alive response).
    What is held is sent before the handler reads from the connection again
    (the ``rfile`` under :class:`HTTPRequestHandler` flushes this writer
    before it receives: ``Expect: 100-continue``), at the end of every
    request (``handle_one_request()`` flushes ``wfile``) and when the file
    is closed.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self._head = b""

    def hold(self, head: bytes) -> None:
        """Keep *head* to send it in front of the next write."""
        self._head += head

    def write(self, b: Buffer, /) -> int:
        """Send all of *b* (behind the held head, if any); return its length in bytes."""
        head = self._head
        if not head:
            return super().write(b)
        self._head = b""
        if type(b) is bytes and len(b) <= COALESCE_LIMIT:  # the usual body: one send, no view
            try:
                self._sock.sendall(head + b)
            except BlockingIOError as exc:
                raise _kernel_timeout(self._sock, exc) from None
            return len(b)
        with memoryview(b) as view:
            size = view.nbytes
            if size <= COALESCE_LIMIT:
                super().write(head + view)
            else:
                super().write(head)
                super().write(view)
        return size

    def flush(self) -> None:
        """Send the held head, if any."""
        head = self._head
        if head:
            self._head = b""
            super().write(head)


class _RequestReader(SocketFile):
    """The raw file under ``rfile``: sends what *writer* holds before it receives."""

    def __init__(self, sock: socket.socket, writer: ResponseWriter) -> None:
        super().__init__(sock, readable=True, writable=False)
        self._writer = writer

    def readinto(self, buffer: Buffer, /) -> int | None:
        if self._writer._head:
            self._writer.flush()
        try:  # SocketFile.readinto, inline: one Python frame per read
            return self._sock.recv_into(buffer)
        except BlockingIOError as exc:
            error = _kernel_timeout(self._sock, exc)
            if error is exc:
                return None
            raise error from None


# The date of the Date header, once per second for every handler: the second
# and its formatdate() (a tuple, replaced whole, so threads need no lock).
_date: tuple[int, str] = (0, "")


@functools.lru_cache(maxsize=256)
def _http_date(timestamp: float) -> str:
    """``formatdate(timestamp, usegmt=True)``, remembered: a file's
    ``Last-Modified`` (SimpleHTTPRequestHandler) is the same at every request."""
    return email.utils.formatdate(timestamp, usegmt=True)


_SimpleHandler = http.server.SimpleHTTPRequestHandler
_stdlib_translate_path: Final = _SimpleHandler.translate_path


@functools.lru_cache(maxsize=1024)
def _translated(directory: str, path: str) -> str:
    """stdlib's ``translate_path`` of *path* under *directory*: a function of the two strings only."""
    return _stdlib_translate_path(cast("_SimpleHandler", types.SimpleNamespace(directory=directory)), path)


def _translate_path(self: _SimpleHandler, path: str) -> str:
    """``SimpleHTTPRequestHandler.translate_path``, remembered for the last 1024
    (directory, path) pairs (the whole path, query and fragment included)."""
    return _translated(self.directory, path)


# The flags of the open in _send_file_head: O_NONBLOCK, so that opening a FIFO
# does not wait for a writer before fstat() shows it is no regular file (it
# then goes to stdlib's send_head, which opens it as stdlib does); reads of a
# regular file ignore it.
_OPEN_FLAGS: Final = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
# The chunk of shutil.copyfileobj, which copyfile() uses (not in typeshed).
_COPY_BUFSIZE: Final[int] = getattr(shutil, "COPY_BUFSIZE", 64 * 1024)


def _send_file_head(self: _SimpleHandler) -> int | BinaryIO | None:
    """stdlib's ``send_head`` for a GET of a regular file, on a file
    descriptor (no file object, no ``stat`` for ``isdir``), which it returns
    open; anything else (a directory, a path ending in ``/``, a path that
    does not open, no regular file) goes to ``self.send_head()``, stdlib's,
    and what it returns is returned."""
    path = self.translate_path(self.path)
    if path.endswith("/"):
        return self.send_head()
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except (OSError, ValueError, TypeError):  # whatever open() would meet goes to stdlib, which meets it
        return self.send_head()
    try:
        fs = os.fstat(fd)
        if not stat.S_ISREG(fs.st_mode):
            os.close(fd)
            return self.send_head()
        ctype = self.guess_type(path)
        # From here on stdlib's send_head, transcribed (identical in 3.11 to 3.13).
        headers = self.headers
        if "If-Modified-Since" in headers and "If-None-Match" not in headers:
            try:
                ims = email.utils.parsedate_to_datetime(headers["If-Modified-Since"])
            except (TypeError, IndexError, OverflowError, ValueError):
                pass  # ignore ill-formed values
            else:
                if ims.tzinfo is None:
                    ims = ims.replace(tzinfo=datetime.timezone.utc)
                if ims.tzinfo is datetime.timezone.utc:
                    last_modif = datetime.datetime.fromtimestamp(fs.st_mtime, datetime.timezone.utc)
                    last_modif = last_modif.replace(microsecond=0)
                    if last_modif <= ims:
                        self.send_response(http.HTTPStatus.NOT_MODIFIED)
                        self.end_headers()
                        os.close(fd)
                        return None
        self.send_response(http.HTTPStatus.OK)
        self.send_header("Content-type", ctype)
        self.send_header("Content-Length", str(fs[6]))
        self.send_header("Last-Modified", self.date_time_string(fs.st_mtime))
        self.end_headers()
    except BaseException:
        os.close(fd)
        raise
    return fd


def _do_GET_file(self: _SimpleHandler) -> None:  # noqa: N802  # stdlib's name
    """``SimpleHTTPRequestHandler.do_GET`` with :func:`_send_file_head`:
    a regular file read with ``os.read`` until EOF, each chunk written to
    ``wfile`` (the first one in the same send as the head), as
    ``copyfile`` (``shutil.copyfileobj``) writes a file object's."""
    opened = _send_file_head(self)
    if opened is None:
        return
    if not isinstance(opened, int):  # stdlib's send_head answered: its file, stdlib's way
        try:
            self.copyfile(opened, self.wfile)
        finally:
            opened.close()
        return
    try:
        write = self.wfile.write
        while data := os.read(opened, _COPY_BUFSIZE):
            write(data)
    finally:
        os.close(opened)


def _install_file_paths(cls: type[_SimpleHandler]) -> None:
    """Give *cls*, a ``SimpleHTTPRequestHandler``, the cached ``translate_path``
    and the file-descriptor ``do_GET`` while the methods they stand in for
    (and ``send_head``, ``copyfile``) are stdlib's; take the ``do_GET`` back
    when a subclass overrides one of them."""
    simple = vars(_SimpleHandler)
    if cls.translate_path is simple["translate_path"]:
        cls.translate_path = _translate_path  # type: ignore[method-assign]  # the same method, cached
    stock = (
        cls.translate_path is _translate_path
        and cls.send_head is simple["send_head"]
        and cls.copyfile is simple["copyfile"]
    )
    if cls.do_GET is simple["do_GET"] and stock:
        cls.do_GET = _do_GET_file  # type: ignore[method-assign]  # the same method, on a file descriptor
    elif cls.do_GET is _do_GET_file and not stock:
        cls.do_GET = simple["do_GET"]  # type: ignore[method-assign]  # an override needs stdlib's


class HTTPRequestHandler(http.server.BaseHTTPRequestHandler):
    """A ``BaseHTTPRequestHandler`` that does less per request, with the
    same behaviour: a mix-in for the front of a handler's bases
    (``class H(HTTPRequestHandler, SimpleHTTPRequestHandler)``).

    What it does faster (Python 3.11 to 3.13 share the stdlib code it
    stands in for):

    * :meth:`parse_request`: the request line as stdlib parses it, the
      headers with :func:`parse_headers` (the same ``HTTPMessage``, without
      the email parser for ordinary headers), the same 400/431/505 answers;
    * :meth:`date_time_string`: ``email.utils.formatdate`` once per second;
    * on a ``SimpleHTTPRequestHandler``: ``translate_path``
      remembered, a regular file's ``GET`` on a file
      descriptor (see the module docstring);
    * the response head goes out with the first write of the body, in one
      send (:class:`ResponseWriter`, the ``wfile`` when ``wbufsize`` is 0,
      stdlib's default); a handler that writes to ``self.connection``
      itself calls ``self.wfile.flush()`` first.

    ``handle()`` loops over the connection's requests in place, as stdlib
    does (:class:`ParkingHTTPRequestHandler` parks between them instead).
    A method of these that a class *behind* this one in the bases overrides
    (``class H(HTTPRequestHandler, Mine)`` with ``Mine.parse_request``) is
    the one used, as if this class were not there.
    """

    _headers_buffer: list[bytes]
    raw_requestline: bytes

    # The methods above; __init_subclass__ gives a later base's own version precedence.
    _FAST: ClassVar[tuple[str, ...]] = (
        "parse_request", "date_time_string", "send_response", "send_header", "flush_headers", "setup"
    )
    # send_response() writes the Server and Date lines itself while
    # send_header() is this class's and version_string() stdlib's.
    _plain_server_date: ClassVar[bool] = True
    # ... and the status line too while send_response_only() is stdlib's.
    _plain_status: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        after = mro[mro.index(HTTPRequestHandler) + 1 :]
        for name in HTTPRequestHandler._FAST:
            if getattr(cls, name) is not getattr(HTTPRequestHandler, name):
                continue  # a class in front of this one overrides it: it wins anyway
            owner = next(base for base in after if name in vars(base))
            if owner not in http.server.BaseHTTPRequestHandler.__mro__:  # stdlib's, or compat's under it
                setattr(cls, name, vars(owner)[name])
        cls._plain_server_date = (
            cls.send_header is HTTPRequestHandler.send_header
            and cls.version_string is http.server.BaseHTTPRequestHandler.version_string
        )
        cls._plain_status = cls.send_response_only is http.server.BaseHTTPRequestHandler.send_response_only
        if issubclass(cls, _SimpleHandler):
            _install_file_paths(cls)

    def setup(self) -> None:
        """As stdlib's ``StreamRequestHandler.setup`` (``timeout``,
        ``disable_nagle_algorithm``, ``rbufsize``, ``wbufsize``), with
        ``wfile`` a :class:`ResponseWriter` when unbuffered and files whose
        buffer :meth:`has_buffered_input` can see; a request that is not a
        socket (no ``recv_into``: a test's mock) gets stdlib's files."""
        connection = self.request
        if not hasattr(type(connection), "recv_into"):
            # Not a socket (a test's mock with a makefile()): stdlib's files.
            super().setup()
            return
        self.connection = connection
        if self.timeout is not None:
            connection.settimeout(self.timeout)
        if self.disable_nagle_algorithm:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self._headers_buffer = []  # stdlib creates it at the first header; send_header need not look
        if self.wbufsize != 0:
            self.rfile, self.wfile = socket_files(connection, self.rbufsize, self.wbufsize)
            return
        self.wfile = writer = ResponseWriter(connection)
        reader = _RequestReader(connection, writer)
        if self.rbufsize == 0:
            self.rfile = cast("io.BufferedIOBase", reader)  # unbuffered, as makefile("rb", 0)
        else:
            self.rfile = io.BufferedReader(reader, io.DEFAULT_BUFFER_SIZE if self.rbufsize < 0 else self.rbufsize)

    def has_buffered_input(self) -> bool:
        """True if part of a next request was read already (no system call):
        the ``rfile`` buffer, or decrypted TLS bytes (``SSLSocket.pending()``)."""
        return has_buffered_input(self.rfile, self.connection)

    def parse_request(self) -> bool:
        """Parse ``raw_requestline`` and the headers, as stdlib does
        (``command``, ``path``, ``request_version``, ``headers``,
        ``close_connection``; ``send_error`` 400, 431 or 505 and False for a
        bad request; ``handle_expect_100()`` for ``Expect: 100-continue``),
        the headers with :func:`parse_headers`."""
        # A transcription of stdlib's parse_request (identical in 3.11 to 3.13).
        self.command = None  # type: ignore[assignment]  # as stdlib: None until the request line parsed
        self.request_version = version = self.default_request_version
        self.close_connection = True
        requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        self.requestline = requestline
        words = requestline.split()
        if not words:
            return False
        if len(words) >= 3:  # enough to determine the protocol version
            version = words[-1]
            version_number = _VERSIONS.get(version)
            if version_number is None:
                try:
                    if not version.startswith("HTTP/"):
                        raise ValueError
                    base_version_number = version.split("/", 1)[1]
                    numbers = base_version_number.split(".")
                    if len(numbers) != 2:
                        raise ValueError
                    if any(not component.isdigit() for component in numbers):
                        raise ValueError("non digit in http version")
                    if any(len(component) > 10 for component in numbers):
                        raise ValueError("unreasonable length http version")
                    version_number = int(numbers[0]), int(numbers[1])
                except (ValueError, IndexError):
                    self.send_error(http.HTTPStatus.BAD_REQUEST, f"Bad request version ({version!r})")
                    return False
            if version_number >= (1, 1) and self.protocol_version >= "HTTP/1.1":
                self.close_connection = False
            if version_number >= (2, 0):
                self.send_error(
                    http.HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"Invalid HTTP version ({version[5:]})"
                )
                return False
            self.request_version = version
        if not 2 <= len(words) <= 3:
            self.send_error(http.HTTPStatus.BAD_REQUEST, f"Bad request syntax ({requestline!r})")
            return False
        command, path = words[:2]
        if len(words) == 2:
            self.close_connection = True
            if command != "GET":
                self.send_error(http.HTTPStatus.BAD_REQUEST, f"Bad HTTP/0.9 request type ({command!r})")
                return False
        self.command, self.path = command, path
        if path.startswith("//"):
            self.path = "/" + path.lstrip("/")  # reduce to a single /
        try:
            self.headers, lowered = _parse_headers(self.rfile, self.MessageClass)
        except http.client.LineTooLong as err:
            self.send_error(http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Line too long", str(err))
            return False
        except http.client.HTTPException as err:
            self.send_error(http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many headers", str(err))
            return False
        # A header whose name is not in the block is not there: no need to look.
        if not lowered or "connection" in lowered:
            conntype = self.headers.get("Connection", "").lower()
            if conntype == "close":
                self.close_connection = True
            elif conntype == "keep-alive" and self.protocol_version >= "HTTP/1.1":
                self.close_connection = False
        if (
            (not lowered or "expect" in lowered)
            and self.headers.get("Expect", "").lower() == "100-continue"
            and self.protocol_version >= "HTTP/1.1"
            and self.request_version >= "HTTP/1.1"
        ):
            if not self.handle_expect_100():
                return False
        return True

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The date for a header, as stdlib's; the current one is formatted
        once per second, the last 256 others once."""
        global _date
        if timestamp is not None:
            return _http_date(timestamp)
        now = int(time.time())
        second, text = _date
        if second != now:
            text = email.utils.formatdate(now, usegmt=True)
            _date = (now, text)
        return text

    def send_response(self, code: int, message: str | None = None) -> None:
        """As stdlib's: ``log_request(code)``, the status line
        (``send_response_only``), then the ``Server`` and ``Date`` headers, in
        one step when ``send_response_only``, ``send_header`` and
        ``version_string`` are the stock ones."""
        self.log_request(code)
        if not self._plain_server_date:
            self.send_response_only(code, message)
            self.send_header("Server", self.version_string())
            self.send_header("Date", self.date_time_string())
            return
        if not self._plain_status:
            self.send_response_only(code, message)
        date = self.date_time_string()
        if self.request_version == "HTTP/0.9":
            return
        if self._plain_status:  # send_response_only, inline: the status line leads the same string
            if message is None:
                responses = self.responses
                message = responses[code][0] if code in responses else ""
            lines = "%s %d %s\r\nServer: %s %s\r\nDate: %s\r\n" % (  # noqa: UP031  # stdlib's %s and %d
                self.protocol_version, code, message, self.server_version, self.sys_version, date
            )
        else:
            lines = "Server: %s %s\r\nDate: %s\r\n" % (self.server_version, self.sys_version, date)  # noqa: UP031  # stdlib's %s
        try:
            buffer = self._headers_buffer
        except AttributeError:  # a setup() of a later base ran instead of this class's
            buffer = self._headers_buffer = []
        buffer.append(lines.encode("latin-1", "strict"))

    def send_header(self, keyword: str, value: str) -> None:
        """Add a header line to the head, as stdlib's (``Connection: close``
        or ``keep-alive`` sets ``close_connection``)."""
        if self.request_version != "HTTP/0.9":
            try:
                buffer = self._headers_buffer
            except AttributeError:  # a setup() of a later base ran instead of this class's
                buffer = self._headers_buffer = []
            buffer.append(("%s: %s\r\n" % (keyword, value)).encode("latin-1", "strict"))  # noqa: UP031  # stdlib's %s, not format()
        if len(keyword) == 10 and keyword.lower() == "connection":  # no other name lowers to it
            value = value.lower()
            if value == "close":
                self.close_connection = True
            elif value == "keep-alive":
                self.close_connection = False

    def flush_headers(self) -> None:
        """Hand the buffered head to ``wfile``: held by a
        :class:`ResponseWriter` for the first write of the body, written
        at once to any other file."""
        if hasattr(self, "_headers_buffer"):
            head = b"".join(self._headers_buffer)
            self._headers_buffer = []
            wfile = self.wfile
            if type(wfile) is ResponseWriter:
                wfile._head += head  # hold(head), inline
            else:
                wfile.write(head)


def _parks_on(server: object) -> bool:
    """True if *server* takes a kept connection back: the native engine's
    own ``process_request`` dispatches the job that parks it.  A compat
    mix-in's or a user's override, and stdlib servers, close the connection
    once the handler returns."""
    return isinstance(server, Server) and type(server).process_request is Server.process_request


class ParkingHTTPRequestHandler(HTTPRequestHandler):
    """An :class:`HTTPRequestHandler` that serves one request per dispatch
    and gives a keep-alive connection back to the server between requests.

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
        client_speaks_first: True: an HTTP client speaks first, so a new
            connection waits among the parked ones until its first request
            arrives (see ``handlers.ParkingRequestHandler``).

    Attributes:
        verdict: what became of the connection after the last request
            (``CLOSE`` until :meth:`handle` ran).
    """

    parks_connections: ClassVar[bool] = True
    kernel_timeouts_safe: ClassVar[bool] = True
    client_speaks_first: ClassVar[bool] = True
    verdict: Verdict = Verdict.CLOSE
    # The server's KeptFiles (None: a server without them, or not yet set up).
    _kept_files: KeptFiles | None = None
    # finish() leaves the files of a kept connection on the server while
    # the finish() behind this class is socketserver's (or compat's) own,
    # which would only close them; a later base's finish() runs at every request.
    _keeps_files: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        after = mro[mro.index(ParkingHTTPRequestHandler) + 1 :]
        owner = next(base for base in after if "finish" in vars(base))
        cls._keeps_files = cls.finish is ParkingHTTPRequestHandler.finish and owner in http.server.BaseHTTPRequestHandler.__mro__

    def setup(self) -> None:
        """:meth:`HTTPRequestHandler.setup`, even when a later base has its
        own ``setup``: parking is safe only with files whose buffer
        :meth:`has_buffered_input` sees (a pipelined request held in any
        other ``rfile`` would wait for a wake-up that never comes).  A kept
        connection's files are the ones its previous request left on the
        server (``server.kept_files``, as ``handlers.ParkingRequestHandler``
        keeps them): empty, flushed, never another connection's."""
        kept = getattr(self.server, "kept_files", None)
        if type(kept) is KeptFiles and self._keeps_files:
            self._kept_files = kept
            entry = kept.pop(self.request, None)
            if entry is not None:
                rfile, wfile, rbufsize, wbufsize = entry
                if rbufsize == self.rbufsize and wbufsize == self.wbufsize == 0 and type(wfile) is ResponseWriter:
                    self.connection = connection = self.request
                    if self.timeout is not None:
                        connection.settimeout(self.timeout)
                    if self.disable_nagle_algorithm:
                        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
                    self._headers_buffer = []
                    self.rfile, self.wfile = rfile, wfile
                    return
                wfile.close()  # another handler class's files
                rfile.close()
        super().setup()

    def finish(self) -> None:
        """On ``KEEP``, with this class's own files: leave them on the server
        for the connection's next request (``server.kept_files``); otherwise,
        or if sending what is held fails, as stdlib's: flush and close them."""
        kept = self._kept_files
        wfile = self.wfile
        if kept is not None and self.verdict is Verdict.KEEP and type(wfile) is ResponseWriter and not self.rfile.closed:
            try:
                if wfile._head:  # sent at the end of every request already
                    wfile.flush()
            except (OSError, ValueError):
                pass  # the peer is gone: close the files below
            else:
                # KeptFiles.put, inline (once per request).
                kept[self.connection] = (self.rfile, wfile, self.rbufsize, self.wbufsize)
                if len(kept) > kept.size:
                    kept.evict()
                return
        super().finish()

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


def _subclass(mixin: type[HTTPRequestHandler], handler: type[HandlerT]) -> type[HandlerT]:
    if issubclass(handler, mixin):
        return handler
    namespace = {"__module__": handler.__module__, "__qualname__": handler.__qualname__, "__doc__": handler.__doc__}
    # type() builds a class the checker cannot follow: it is a subclass of handler by construction.
    return cast("type[HandlerT]", type(handler.__name__, (mixin, handler), namespace))


def fast_http(handler: type[HandlerT]) -> type[HandlerT]:
    """*handler* with the fast paths of :class:`HTTPRequestHandler`: a
    subclass of it with that class first among its bases (same name, module
    and qualified name), or *handler* itself if it is one already.  It
    serves a connection's requests in place, as stdlib does."""
    return _subclass(HTTPRequestHandler, handler)


def parking_http(handler: type[HandlerT]) -> type[HandlerT]:
    """*handler* serving one request per dispatch: a subclass of it with
    :class:`ParkingHTTPRequestHandler` first among its bases (same name,
    module and qualified name), or *handler* itself if it is one already.

    ``parking_http(http.server.SimpleHTTPRequestHandler)`` serves files as
    stdlib does, and parks between requests (with ``protocol_version =
    "HTTP/1.1"`` set on it or on the result, for keep-alive).
    """
    return _subclass(ParkingHTTPRequestHandler, handler)


def make_http_server(
    address: InetAddress,
    handler: HandlerFactory[socket.socket, InetAddress],
    *,
    threads: int = DEFAULT_HTTP_THREADS,
    park: bool = True,
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
    workers, parking keep-alive connections between requests (with *park*).

    Args:
        address: ``(host, port)``; port 0 picks a free one.
        handler: a ``BaseHTTPRequestHandler`` subclass (wrapped with
            :func:`parking_http`, or :func:`fast_http` without *park*), or
            any handler factory, used as it is (e.g. ``functools.partial(
            parking_http(SimpleHTTPRequestHandler), directory=...)``).
        threads: the pool's workers.
        park: True: park keep-alive connections between requests, so a few
            workers keep thousands of idle clients.  False: a worker serves
            a connection's requests in place until it closes (stdlib's
            ``ThreadingHTTPServer`` style, a little less work per request:
            no wake-up, no new handler per request); *threads* then bounds
            the connections served at once.
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
        handler = parking_http(handler) if park else fast_http(handler)
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
