"""The http.server handler that parks keep-alive connections, on an in-memory connection.

:class:`Connection` stands in for the connected socket: it serves its input
from bytes and collects the output, and reading past its input fails the test
loudly (on a real socket that read would block until the next request, which a
handler that parks must never do).
"""

from __future__ import annotations

import email.errors
import email.message
import functools
import http.client
import http.server
import io
import os
import re
import socket
import ssl
from typing import Any, ClassVar, cast

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from composable_server import Server
from composable_server._request import client_speaks_first, parks_connections, takes_kernel_timeouts
from composable_server.httpserver import (
    COALESCE_LIMIT,
    DEFAULT_HTTP_BUDGET,
    DEFAULT_HTTP_THREADS,
    HTTPRequestHandler,
    ParkingHTTPRequestHandler,
    ResponseWriter,
    fast_http,
    make_http_server,
    parking_http,
    parse_headers,
)
from composable_server.handlers import SocketFile
from composable_server.interfaces import Verdict
from composable_server.testing import MemoryAcceptor, MemoryTransport
from composable_server.transports import TCPTransport, TLSTransport

GET = b"GET /%s HTTP/1.1\r\nHost: test\r\n\r\n"


class Connection:
    """The part of a connected socket the handler uses, in memory."""

    def __init__(self, data: bytes, *, eof: bool = False, error: OSError | None = None) -> None:
        self._input = memoryview(data)
        self._eof = eof
        self._error = error
        self.output = bytearray()
        self.timeouts: list[float | None] = []
        self.options: list[tuple[int, int, int | bool]] = []

    def recv_into(self, buffer: bytearray | memoryview) -> int:
        if not self._input:
            if self._error is not None:
                raise self._error
            assert self._eof, "read past the available input: a socket would block here"
            return 0
        size = min(len(buffer), len(self._input))
        buffer[:size] = self._input[:size]
        self._input = self._input[size:]
        return size

    def send(self, data: bytes) -> int:
        self.output += data
        return len(data)

    def sendall(self, data: bytes) -> None:
        self.output += data

    def gettimeout(self) -> float | None:
        return self.timeouts[-1] if self.timeouts else None

    def settimeout(self, value: float | None) -> None:
        self.timeouts.append(value)

    def setsockopt(self, level: int, option: int, value: int | bool) -> None:
        self.options.append((level, option, value))

    def fileno(self) -> int:
        return -1

    def makefile(self, mode: str, buffering: int) -> io.BufferedIOBase:
        """What stdlib's StreamRequestHandler.setup opens (socket.makefile, over this connection)."""
        raw = SocketFile(cast(socket.socket, self), readable="r" in mode, writable="w" in mode)
        size = io.DEFAULT_BUFFER_SIZE if buffering < 0 else buffering
        if "r" in mode:
            return io.BufferedReader(raw, size)
        return io.BufferedWriter(raw, size)


class Paths(ParkingHTTPRequestHandler):
    """Answers every GET with its path; counts the requests it served."""

    protocol_version = "HTTP/1.1"
    served: ClassVar[list[str]] = []
    logged: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        if self.path == "/boom":
            raise RuntimeError("boom")
        Paths.served.append(self.path)
        body = self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        Paths.logged.append(format % args)


class InPlace(Paths):
    parks_connections = False


class HTTP10(Paths):
    protocol_version = "HTTP/1.0"


class Tuned(Paths):
    timeout: ClassVar[float | None] = 7.0
    disable_nagle_algorithm = True


@pytest.fixture(autouse=True)
def _reset() -> None:
    Paths.served.clear()
    Paths.logged.clear()


def native_server() -> Server[Any, Any]:
    """A native server on a memory transport: the kind that parks."""
    transport: MemoryTransport[Any, Any] = MemoryTransport("memory")
    return Server(transport=transport, acceptor=MemoryAcceptor(), handler=Paths, bind_and_activate=False)


class Overriding(Server[Any, Any]):
    """A server whose process_request is not the engine's (as compat's ThreadingMixIn)."""

    def process_request(self, request: Any, client_address: Any) -> None:
        self.finish_request(request, client_address)


def serve(handler: type[Paths], connection: Connection, server: object = None) -> Paths:
    """Run *handler* once on *connection*, as a server dispatch does."""
    host = native_server() if server is None else server
    with_host = cast(Any, host)  # stdlib handlers are typed for socketserver.BaseServer
    return handler(cast(socket.socket, connection), ("192.0.2.1", 4000), with_host)


class TestParkingHTTPRequestHandler:
    def test_a_keep_alive_request_is_answered_and_the_connection_kept(self) -> None:
        """One HTTP/1.1 request: the response is written and the verdict is KEEP."""
        connection = Connection(GET % b"a")
        handler = serve(Paths, connection)
        assert handler.verdict is Verdict.KEEP
        assert connection.output.startswith(b"HTTP/1.1 200 ")
        assert connection.output.endswith(b"\r\n\r\n/a")
        assert Paths.served == ["/a"]

    def test_pipelined_requests_in_the_buffer_are_all_served_before_parking(self) -> None:
        """Three requests in one read are answered in one dispatch, then KEEP."""
        connection = Connection(GET % b"1" + GET % b"2" + GET % b"3")
        assert serve(Paths, connection).verdict is Verdict.KEEP
        assert Paths.served == ["/1", "/2", "/3"]
        assert connection.output.count(b"HTTP/1.1 200 ") == 3

    def test_connection_close_closes(self) -> None:
        """``Connection: close`` is answered, then the verdict is CLOSE."""
        connection = Connection(b"GET /c HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert serve(Paths, connection).verdict is Verdict.CLOSE
        assert Paths.served == ["/c"]

    def test_a_pipelined_close_after_a_keep_alive_request_closes_after_both(self) -> None:
        """The last request's ``Connection: close`` decides, after both were served."""
        connection = Connection(GET % b"k" + b"GET /c HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert serve(Paths, connection).verdict is Verdict.CLOSE
        assert Paths.served == ["/k", "/c"]

    def test_an_http_1_0_request_closes(self) -> None:
        """An HTTP/1.0 client without keep-alive gets one response and CLOSE."""
        connection = Connection(b"GET /old HTTP/1.0\r\n\r\n")
        assert serve(Paths, connection).verdict is Verdict.CLOSE
        assert Paths.served == ["/old"]

    def test_an_http_1_0_client_asking_for_keep_alive_is_kept(self) -> None:
        """``Connection: keep-alive`` from an HTTP/1.0 client keeps the connection (stdlib's rule)."""
        connection = Connection(b"GET /ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert serve(Paths, connection).verdict is Verdict.KEEP

    def test_a_handler_speaking_http_1_0_never_keeps(self) -> None:
        """With ``protocol_version = "HTTP/1.0"`` every connection closes after its response, as in stdlib."""
        connection = Connection(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n\r\n")
        assert serve(HTTP10, connection).verdict is Verdict.CLOSE

    def test_eof_closes_without_a_response(self) -> None:
        """A wake-up that reads EOF (the client closed while parked) says CLOSE and writes nothing."""
        connection = Connection(b"", eof=True)
        assert serve(Paths, connection).verdict is Verdict.CLOSE
        assert connection.output == b""

    def test_a_malformed_request_is_answered_400_and_closed(self) -> None:
        """parse_request's error response ends the connection (even if more input is buffered)."""
        connection = Connection(b"GET / HTTP/x\r\n\r\n" + GET % b"next")
        assert serve(Paths, connection).verdict is Verdict.CLOSE
        assert b"Error code: 400" in connection.output
        assert Paths.served == []

    def test_a_read_timeout_closes_the_connection_and_is_logged(self) -> None:
        """An expired budget inside a request is stdlib's "Request timed out": CLOSE."""
        connection = Connection(b"GET /slow HTTP/1.1\r\n", error=TimeoutError("timed out (idle limit)"))
        assert serve(Paths, connection).verdict is Verdict.CLOSE
        assert any("timed out" in line for line in Paths.logged)

    def test_a_handler_exception_propagates_to_the_server(self) -> None:
        """An exception in ``do_GET`` leaves the handler (the server's error policy reports it)."""
        with pytest.raises(RuntimeError, match="boom"):
            serve(Paths, Connection(GET % b"boom"))

    def test_without_parking_every_request_is_served_in_place_until_eof(self) -> None:
        """``parks_connections = False``: handle() loops as stdlib's does."""
        connection = Connection(GET % b"1" + GET % b"2", eof=True)
        assert serve(InPlace, connection).verdict is Verdict.CLOSE
        assert Paths.served == ["/1", "/2"]

    def test_on_a_server_that_does_not_park_it_loops_in_place(self) -> None:
        """On a stdlib-style server (not the native engine) the connection is served to EOF, as stdlib does."""
        connection = Connection(GET % b"1" + GET % b"2", eof=True)
        assert serve(Paths, connection, server=object()).verdict is Verdict.CLOSE
        assert Paths.served == ["/1", "/2"]

    def test_on_a_server_with_its_own_process_request_it_loops_in_place(self) -> None:
        """A Server subclass that dispatches without the native job (compat's mix-ins) cannot park."""
        transport: MemoryTransport[Any, Any] = MemoryTransport("memory")
        server = Overriding(transport=transport, acceptor=MemoryAcceptor(), handler=Paths, bind_and_activate=False)
        connection = Connection(GET % b"1", eof=True)
        assert serve(Paths, connection, server=server).verdict is Verdict.CLOSE
        assert Paths.served == ["/1"]

    def test_setup_applies_timeout_and_tcp_nodelay(self) -> None:
        """``timeout`` and ``disable_nagle_algorithm`` are applied as by stdlib's setup."""
        connection = Connection(GET % b"t")
        serve(Tuned, connection)
        assert connection.timeouts == [7.0]
        assert connection.options == [(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)]

    def test_it_states_the_capabilities_the_server_reads(self) -> None:
        """The class parks, takes kernel timeouts and its client speaks first; through functools.partial too."""
        assert parks_connections(Paths)
        assert takes_kernel_timeouts(Paths)
        assert client_speaks_first(Paths)
        assert parks_connections(functools.partial(Paths))
        assert not parks_connections(InPlace)


class TestParkingHTTP:
    def test_wraps_a_stdlib_handler_class_in_a_subclass_of_the_same_name(self) -> None:
        """parking_http(SimpleHTTPRequestHandler) is a parking subclass named and placed as the original."""
        wrapped = parking_http(http.server.SimpleHTTPRequestHandler)
        assert issubclass(wrapped, http.server.SimpleHTTPRequestHandler)
        assert issubclass(wrapped, ParkingHTTPRequestHandler)
        assert wrapped.__mro__[1] is ParkingHTTPRequestHandler
        assert (wrapped.__name__, wrapped.__qualname__, wrapped.__module__) == (
            "SimpleHTTPRequestHandler",
            "SimpleHTTPRequestHandler",
            "http.server",
        )
        assert wrapped.handle is ParkingHTTPRequestHandler.handle
        assert parks_connections(wrapped)

    def test_a_parking_class_is_returned_as_it_is(self) -> None:
        """Wrapping twice adds nothing."""
        assert parking_http(Paths) is Paths

    def test_a_wrapped_simple_handler_serves_a_directory_listing_and_keeps(self, tmp_path: Any) -> None:
        """SimpleHTTPRequestHandler's own do_GET runs unchanged under the wrapper."""
        (tmp_path / "f.txt").write_bytes(b"x")
        wrapped = parking_http(http.server.SimpleHTTPRequestHandler)
        wrapped.protocol_version = "HTTP/1.1"
        wrapped.log_message = lambda self, format, *args: None  # type: ignore[method-assign]  # quiet for the test
        connection = Connection(GET % b"f.txt")
        handler = wrapped(
            cast(socket.socket, connection), ("192.0.2.1", 1), cast(Any, native_server()), directory=str(tmp_path)
        )
        assert isinstance(handler, ParkingHTTPRequestHandler)
        assert handler.verdict is Verdict.KEEP
        assert connection.output.startswith(b"HTTP/1.1 200 ")
        assert connection.output.endswith(b"\r\n\r\nx")


class TestMakeHTTPServer:
    def test_a_handler_class_is_wrapped_and_served_by_a_pool(self) -> None:
        """The handler becomes a parking one; a pool of *threads*; the HTTP budget by default."""
        server = make_http_server(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler, bind_and_activate=False)
        handler = cast(type, server.handler)
        assert issubclass(handler, ParkingHTTPRequestHandler)
        assert issubclass(handler, http.server.SimpleHTTPRequestHandler)
        assert repr(server.dispatcher).startswith("<ThreadPoolDispatcher")
        assert getattr(server.dispatcher, "max_workers") == DEFAULT_HTTP_THREADS
        assert getattr(server.timeout_policy, "budget") == DEFAULT_HTTP_BUDGET
        assert isinstance(server.transport, TCPTransport)

    def test_a_factory_is_used_as_it_is_and_tls_wraps_the_transport(self) -> None:
        """A partial is not rewrapped; an SSL context puts TLSTransport over TCP."""
        factory = functools.partial(Paths)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server = make_http_server(
            ("127.0.0.1", 0), factory, threads=3, ssl_context=context, max_parked=5000, bind_and_activate=False
        )
        assert server.handler is factory
        assert getattr(server.dispatcher, "max_workers") == 3
        assert isinstance(server.transport, TLSTransport)
        assert server.max_parked == 5000

    def test_the_budget_gives_silent_and_idle_clients_a_deadline(self) -> None:
        """HTTP clients speak first: the default budget has a first-byte and an idle limit."""
        assert DEFAULT_HTTP_BUDGET.first_byte is not None
        assert DEFAULT_HTTP_BUDGET.idle is not None


def message_state(message: email.message.Message) -> tuple[object, ...]:
    """Everything a parsed message holds, comparable (defects by type, parts as text)."""
    fields = {k: v for k, v in vars(message).items() if k not in ("defects", "_payload")}
    payload = message.get_payload()
    if not isinstance(payload, str):
        try:
            payload = message.as_string()
        except email.errors.MessageError as exc:  # 3.13: HeaderWriteError for a newline (\x0b) in a value
            payload = (type(exc), str(exc))
    return (type(message), fields, payload, [type(defect) for defect in message.defects])


def parsed(parse: Any, data: bytes) -> tuple[object, ...]:
    """What *parse* makes of *data*: the message state and what it left unread, or the error."""
    fp = io.BytesIO(data)
    try:
        message = parse(fp)
    except http.client.HTTPException as exc:
        return (type(exc), str(exc), fp.read())
    return (*message_state(message), fp.read())


HEADER_NAMES = st.sampled_from(
    ["Host", "host", "Connection", "Content-Type", "content-type", "Expect", "X-A", "From", "a.b", "Accept"]
)
HEADER_VALUES = st.sampled_from(
    ["", "x", " spaced ", "\t tab", "close", "keep-alive", "text/plain", "multipart/form-data; boundary=b",
     "message/rfc822", "message/delivery-status", "Multipart/Mixed", "100-continue", "a:b", "caf\xe9", "x\x00y",
     "x\x0by", "x\x85y", "x\ry", "\u2028"]
)
NEWLINES = st.sampled_from(["\r\n", "\n"])
HEADER_LINES = st.one_of(
    st.builds(lambda n, v, nl: f"{n}: {v}{nl}", HEADER_NAMES, HEADER_VALUES, NEWLINES),
    st.builds(lambda n, v, nl: f"{n}:{v}{nl}", HEADER_NAMES, HEADER_VALUES, NEWLINES),
    st.builds(lambda v, nl: f" continued {v}{nl}", HEADER_VALUES, NEWLINES),  # a continuation line
    st.sampled_from(["From someone\r\n", ": no name\r\n", "no colon\r\n", "Bad Name: x\r\n", "X-\xff: y\r\n",
                     "\tlead\r\n", "X: a\rb\r\n", "X:\r\n", "X: trailing \t\r\n", "--b\r\n"]),
    st.text(alphabet=st.characters(max_codepoint=255), max_size=20).map(lambda t: t.replace("\n", "") + "\r\n"),
)
ENDINGS = st.sampled_from(["\r\n", "\n", "", "\r\nbody after"])


class TestParseHeaders:
    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(HEADER_LINES, max_size=8), ENDINGS)
    @example(["Host: a\r\n", "Content-Type: multipart/mixed; boundary=x\r\n"], "\r\n")
    @example(["Host: a\r\n", " folded\r\n"], "\r\n")
    @example(["X: a\r\n", "x" * 70000 + "\r\n"], "\r\n")
    @example(["Host: x\x0by\r\n", "Content-Type: message/rfc822\r\n"], "\r\n")  # 3.13 refuses to write it back
    def test_it_builds_what_http_client_parse_headers_builds(self, lines: list[str], ending: str) -> None:
        """On valid and malformed header blocks: the same message, errors and unread input as stdlib."""
        data = "".join(lines + [ending]).encode()  # UTF-8: non-ASCII bytes, \x85 among them
        assert parsed(parse_headers, data) == parsed(http.client.parse_headers, data)

    def test_a_plain_block_is_built_without_the_email_parser(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Ordinary headers never reach email.parser (that is where the time went)."""

        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError("the email parser was used")

        monkeypatch.setattr("email.parser.Parser.parsestr", refuse)
        message = parse_headers(io.BytesIO(b"Host: a\r\nAccept:  */* \r\nX-Empty:\r\n\r\n"))
        assert message.items() == [("Host", "a"), ("Accept", "*/* "), ("X-Empty", "")]
        assert message.get_payload() == ""

    def test_a_line_longer_than_maxline_is_line_too_long(self) -> None:
        """A header line over ``http.client._MAXLINE`` raises LineTooLong, as stdlib."""
        data = b"X: " + b"a" * 65536 + b"\r\n\r\n"
        with pytest.raises(http.client.LineTooLong, match="header line"):
            parse_headers(io.BytesIO(data))

    def test_more_than_maxheaders_lines_is_an_http_exception(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Beyond ``http.client._MAXHEADERS`` lines (read at each call, so a program may change it)."""
        data = b"X: y\r\n" * 101 + b"\r\n"
        with pytest.raises(http.client.HTTPException, match="got more than 100 headers"):
            parse_headers(io.BytesIO(data))
        monkeypatch.setattr(http.client, "_MAXHEADERS", 3)
        with pytest.raises(http.client.HTTPException, match="got more than 3 headers"):
            parse_headers(io.BytesIO(b"X: y\r\n" * 4 + b"\r\n"))
        assert parse_headers(io.BytesIO(b"X: y\r\n" * 2 + b"\r\n")).get_all("X") == ["y", "y"]

    def test_another_message_class_is_built_by_the_email_parser(self) -> None:
        """A MessageClass other than HTTPMessage is stdlib's business, unchanged."""

        class Mine(http.client.HTTPMessage):
            pass

        message = parse_headers(io.BytesIO(b"Host: a\r\n\r\n"), _class=Mine)
        assert type(message) is Mine
        assert message["Host"] == "a"


class Recorded(http.server.BaseHTTPRequestHandler):
    """A stdlib handler: GET and HEAD answer the path, POST echoes its body; the log is kept."""

    protocol_version = "HTTP/1.1"
    logged: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        body = f"{self.command} {self.path} {self.headers.items()}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(201)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        Recorded.logged.append(format % args)


class FastRecorded(HTTPRequestHandler, Recorded):
    pass


def exchange(handler: type[http.server.BaseHTTPRequestHandler], data: bytes) -> tuple[object, ...]:
    """What *handler* answers and logs for *data* (then EOF), the Date header left out."""
    Recorded.logged.clear()
    connection = Connection(data, eof=True)
    done = handler(cast(socket.socket, connection), ("192.0.2.1", 4000), cast(Any, object()))
    output = re.sub(rb"\r\nDate: [^\r]*", b"", bytes(connection.output))
    fields = ("command", "path", "request_version", "close_connection", "requestline")
    return output, list(Recorded.logged), [getattr(done, name, None) for name in fields]


REQUEST_LINES = st.builds(
    lambda method, path, version: " ".join(w for w in (method, path, version) if w is not None),
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "get", "", "GET GET"]),
    st.sampled_from(["/", "//double", "/a?b", "/\xe9", "*", ""]),
    st.sampled_from([None, "HTTP/1.1", "HTTP/1.0", "HTTP/0.9", "HTTP/2.0", "HTTP/1", "HTTP/1.1.1", "HTTP/a.b",
                     "HTTP/01.1", "HTTP/1.12345678901", "HTTPS/1.1", "http/1.1", "HTTP/1.1 extra", "HTTP/ 1.1"]),
)
REQUEST_HEADERS = st.lists(
    st.sampled_from(["Host: h\r\n", "Connection: close\r\n", "Connection: keep-alive\r\n",
                     "Connection: Keep-Alive\r\n", "Expect: 100-continue\r\n", "Content-Length: 3\r\n",
                     " folded\r\n", "bad line\r\n", "Content-Type: multipart/x\r\n"]),
    max_size=4,
)


class TestHTTPRequestHandler:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(REQUEST_LINES, st.sampled_from(["\r\n", "\n"]), REQUEST_HEADERS, st.sampled_from([b"", b"abc", GET % b"next"]))
    @example("GET / HTTP/1.1", "\r\n", ["Host: h\r\n"] * 101, b"")
    @example("GET / HTTP/1.1", "\r\n", ["X: " + "a" * 65536 + "\r\n"], b"")
    @example("GET /" + "a" * 65536 + " HTTP/1.1", "\r\n", [], b"")
    def test_it_answers_and_logs_as_stdlib(self, line: str, newline: str, headers: list[str], rest: bytes) -> None:
        """Any request (valid, malformed, pipelined, 0.9, too long): the same bytes out, log and state."""
        data = (line + newline + "".join(headers) + "\r\n").encode() + rest
        assert exchange(FastRecorded, data) == exchange(Recorded, data)

    def test_head_and_body_go_out_in_one_send(self) -> None:
        """stdlib sends the head, then the body; the fast handler sends both at once."""
        sends: list[bytes] = []

        class Counting(Connection):
            def sendall(self, data: bytes) -> None:
                sends.append(bytes(data))
                super().sendall(data)

        connection = Counting(b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n", eof=True)
        FastRecorded(cast(socket.socket, connection), ("192.0.2.1", 1), cast(Any, object()))
        assert len(sends) == 1 and sends[0].startswith(b"HTTP/1.1 200 OK\r\n") and sends[0].endswith(b"GET /one [('Host', 'h')]")

    def test_the_head_of_a_bodiless_response_is_sent_at_the_end_of_the_request(self) -> None:
        """HEAD: nothing is written after end_headers(), and the head still goes out."""
        connection = Connection(b"HEAD /h HTTP/1.1\r\n\r\n", eof=True)
        FastRecorded(cast(socket.socket, connection), ("192.0.2.1", 1), cast(Any, object()))
        assert connection.output.startswith(b"HTTP/1.1 200 OK\r\n") and connection.output.endswith(b"\r\n\r\n")

    def test_100_continue_is_sent_before_the_body_is_read(self) -> None:
        """The held interim response goes out before the handler waits for the request body."""
        order: list[str] = []

        class Watching(Connection):
            def recv_into(self, buffer: bytearray | memoryview) -> int:
                order.append("recv")
                return super().recv_into(buffer)

            def sendall(self, data: bytes) -> None:
                order.append(bytes(data).split(b"\r\n", 1)[0].decode())
                super().sendall(data)

        class Unbuffered(FastRecorded):
            rbufsize = 0  # every read is a receive, so the order shows

        request = b"POST /p HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc"
        Unbuffered(cast(socket.socket, Watching(request, eof=True)), ("192.0.2.1", 1), cast(Any, object()))
        first_body_read = order.index("HTTP/1.1 100 Continue") + 1
        assert order[first_body_read] == "recv"
        assert order.index("HTTP/1.1 201 Created") > first_body_read

    def test_a_large_body_is_streamed_behind_the_head_without_a_copy(self) -> None:
        """A first write over COALESCE_LIMIT follows the head in its own send; every byte arrives."""
        sends: list[int] = []

        class Counting(Connection):
            def sendall(self, data: bytes) -> None:
                sends.append(len(data))
                super().sendall(data)

        body = b"z" * (COALESCE_LIMIT + 1)

        class Large(FastRecorded):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(2 * len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.write(body)

        connection = Counting(GET % b"big", eof=True)
        Large(cast(socket.socket, connection), ("192.0.2.1", 1), cast(Any, object()))
        assert sends[1:] == [len(body), len(body)]
        assert connection.output.endswith(b"\r\n\r\n" + body + body)

    def test_a_buffered_wfile_is_stdlibs(self) -> None:
        """With ``wbufsize`` set, wfile is a BufferedWriter (flushed per request), not the head holder."""

        class Buffered(FastRecorded):
            wbufsize = 4096

        connection = Connection(GET % b"b", eof=True)
        handler = Buffered(cast(socket.socket, connection), ("192.0.2.1", 1), cast(Any, object()))
        assert isinstance(handler.wfile, io.BufferedWriter)
        assert connection.output.startswith(b"HTTP/1.1 200 OK\r\n") and connection.output.endswith(b"GET /b [('Host', 'test')]")

    def test_the_date_header_is_stdlibs_format_and_an_explicit_timestamp_is_formatted(self) -> None:
        """date_time_string() caches the current second; with a timestamp it is formatdate's."""
        handler = FastRecorded.__new__(FastRecorded)
        stdlib = Recorded.__new__(Recorded)
        assert handler.date_time_string(1e9) == stdlib.date_time_string(1e9) == "Sun, 09 Sep 2001 01:46:40 GMT"
        now = handler.date_time_string()
        assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", now)
        assert now in {stdlib.date_time_string(), handler.date_time_string()}

    def test_an_override_in_a_later_base_wins(self) -> None:
        """``class H(HTTPRequestHandler, Mine)``: Mine's own parse_request and date_time_string are used."""

        class Mine(http.server.BaseHTTPRequestHandler):
            def date_time_string(self, timestamp: float | None = None) -> str:
                return "mine"

            def parse_request(self) -> bool:
                return super().parse_request()

        class H(HTTPRequestHandler, Mine):
            pass

        class Front(HTTPRequestHandler, Mine):
            def date_time_string(self, timestamp: float | None = None) -> str:
                return "front"

        handler = H.__new__(H)
        assert handler.date_time_string() == "mine"
        assert vars(H)["parse_request"] is vars(Mine)["parse_request"]
        assert "flush_headers" not in vars(H)  # Mine does not override it: the fast one stays
        assert Front.__new__(Front).date_time_string() == "front"
        assert "parse_request" not in vars(fast_http(http.server.SimpleHTTPRequestHandler))


class TestSendResponse:
    def test_overridden_send_header_and_version_string_are_called_for_server_and_date(self) -> None:
        """With a send_header or version_string of its own, send_response goes through them, as stdlib's."""

        class Mine(FastRecorded):
            seen: ClassVar[list[str]] = []

            def version_string(self) -> str:
                return "Mine/1"

            def send_header(self, keyword: str, value: str) -> None:
                Mine.seen.append(keyword)
                super().send_header(keyword, value)

        connection = Connection(b"GET /v HTTP/1.1\r\n\r\n", eof=True)
        Mine(cast(socket.socket, connection), ("192.0.2.1", 1), cast(Any, object()))
        assert Mine.seen == ["Server", "Date", "Content-Length"]
        assert b"\r\nServer: Mine/1\r\nDate: " in connection.output
        assert not Mine._plain_server_date and FastRecorded._plain_server_date


    def test_an_overridden_send_response_only_writes_the_status_line(self) -> None:
        """With a send_response_only of its own, send_response calls it for the status line, as stdlib's."""

        class Mine(FastRecorded):
            def send_response_only(self, code: int, message: str | None = None) -> None:
                super().send_response_only(code, "Mine")

        connection = Connection(b"GET /v HTTP/1.1\r\n\r\n", eof=True)
        Mine(cast(socket.socket, connection), ("192.0.2.1", 1), cast(Any, object()))
        assert connection.output.startswith(b"HTTP/1.1 200 Mine\r\nServer: BaseHTTP/")
        assert not Mine._plain_status and FastRecorded._plain_status


class TestResponseWriter:
    def test_the_held_head_goes_with_the_first_write_or_flush_or_close(self) -> None:
        """hold() sends nothing; write sends head and data together; flush and close send a lone head."""
        connection = Connection(b"")
        writer = ResponseWriter(cast(socket.socket, connection))
        writer.hold(b"H1")
        writer.hold(b"H2")
        assert connection.output == b""
        assert writer.write(memoryview(b"body")) == 4
        assert connection.output == b"H1H2body"
        writer.hold(b"X")
        writer.flush()
        writer.flush()
        assert connection.output == b"H1H2bodyX"
        writer.hold(b"Y")
        writer.close()
        assert connection.output == b"H1H2bodyXY"


class TestParkingSetup:
    def test_a_later_bases_setup_does_not_replace_the_files_parking_needs(self) -> None:
        """``class H(ParkingHTTPRequestHandler, Mine)``: the rfile whose buffer parking checks is kept."""

        class Mine(http.server.BaseHTTPRequestHandler):
            def setup(self) -> None:
                raise AssertionError("a setup without visible buffers")

        class H(ParkingHTTPRequestHandler, Mine):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        connection = Connection(GET % b"1" + GET % b"2")
        handler = H(cast(socket.socket, connection), ("192.0.2.1", 1), cast(Any, native_server()))
        assert handler.verdict is Verdict.KEEP
        assert connection.output.count(b"HTTP/1.1 204 ") == 2


class Files(http.server.SimpleHTTPRequestHandler):
    """stdlib's file handler (HTTP/1.1) over the directory of :func:`file_tree`; the log is kept."""

    protocol_version = "HTTP/1.1"
    logged: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: Any) -> None:
        Files.logged.append(format % args)


class FastFiles(HTTPRequestHandler, Files):
    pass


@pytest.fixture(scope="module")
def file_tree(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A directory with files, directories with and without an index, a symlink and an unreadable file."""
    root = tmp_path_factory.mktemp("files")
    (root / "a.txt").write_bytes(b"alpha\n")
    (root / "b.tar.gz").write_bytes(b"\x1f\x8b zipped")
    (root / "noext").write_bytes(b"")
    (root / "big.bin").write_bytes(bytes(range(256)) * 600)  # beyond one copy chunk (64 KiB)
    (root / "dir").mkdir()
    (root / "dir" / "index.html").write_bytes(b"<p>index</p>")
    (root / "list").mkdir()
    (root / "list" / "x.py").write_bytes(b"print()\n")
    (root / "link.txt").symlink_to(root / "a.txt")
    (root / "secret.txt").write_bytes(b"no")
    (root / "secret.txt").chmod(0)
    os.utime(root / "a.txt", (1e9, 1e9))
    return str(root)


def file_exchange(handler: type[Files], directory: str, data: bytes) -> tuple[object, ...]:
    """What *handler* serving *directory* answers, logs and raises for *data* (then EOF), the Date header left out."""
    Files.logged.clear()
    connection = Connection(data, eof=True)
    raised = None
    try:
        handler(cast(socket.socket, connection), ("192.0.2.1", 4000), cast(Any, object()), directory=directory)
    except Exception as exc:  # noqa: BLE001  # stdlib's own errors (an embedded NUL) must be the same
        raised = repr(exc)
    output = re.sub(rb"\r\nDate: [^\r]*", b"", bytes(connection.output))
    return output, list(Files.logged), raised


FILE_PATHS = st.sampled_from([
    "/a.txt", "/a.txt?q=1", "/a.txt#frag", "/a.txt/", "/%61.txt", "/../a.txt", "//a.txt", "/./a.txt",
    "/b.tar.gz", "/noext", "/big.bin", "/dir", "/dir/", "/dir?x=1", "/list/", "/list", "/list/x.py",
    "/link.txt", "/secret.txt", "/missing", "/a.txt%00", "/%ff", "/dir/index.html", "/",
])
IF_MODIFIED = st.sampled_from([
    [], ["If-Modified-Since: Sun, 09 Sep 2001 01:46:40 GMT"], ["If-Modified-Since: Sun, 09 Sep 2001 01:46:39 GMT"],
    ["If-Modified-Since: Sun, 09 Sep 2001 01:46:40"], ["If-Modified-Since: garbage"],
    ["If-Modified-Since: Sun, 09 Sep 2001 01:46:40 GMT", "If-None-Match: x"],
    ["If-Modified-Since: Sun, 09 Sep 2001 03:46:40 +0200"],
])


class TestSimpleHTTPRequestHandler:
    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(st.sampled_from(["GET", "HEAD"]), FILE_PATHS, IF_MODIFIED, st.sampled_from([b"", GET % b"a.txt"]))
    def test_it_serves_files_as_stdlib(self, file_tree: str, method: str, path: str, headers: list[str], rest: bytes) -> None:
        """Files, directories, listings, redirects, 404s, If-Modified-Since: the same bytes out and log."""
        data = f"{method} {path} HTTP/1.1\r\nHost: h\r\n{''.join(h + chr(13) + chr(10) for h in headers)}\r\n".encode()
        assert file_exchange(FastFiles, file_tree, data + rest) == file_exchange(Files, file_tree, data + rest)

    def test_a_small_file_goes_out_with_its_head_in_one_send(self, file_tree: str) -> None:
        """GET of a regular file: head and body in one send, read through a file descriptor."""
        sends: list[bytes] = []

        class Counting(Connection):
            def sendall(self, data: bytes) -> None:
                sends.append(bytes(data))
                super().sendall(data)

        connection = Counting(b"GET /a.txt HTTP/1.1\r\n\r\n", eof=True)
        FastFiles(cast(socket.socket, connection), ("192.0.2.1", 1), cast(Any, object()), directory=file_tree)
        assert len(sends) == 1 and sends[0].startswith(b"HTTP/1.1 200 OK\r\n") and sends[0].endswith(b"\r\n\r\nalpha\n")

    def test_a_changed_file_is_served_as_it_is_now(self, tmp_path: Any) -> None:
        """Content, length and Last-Modified follow the file at every request (nothing of it is cached)."""
        (tmp_path / "f").write_bytes(b"one")
        first = file_exchange(FastFiles, str(tmp_path), GET % b"f")[0]
        (tmp_path / "f").write_bytes(b"second")
        os.utime(tmp_path / "f", (2e9, 2e9))
        second = file_exchange(FastFiles, str(tmp_path), GET % b"f")[0]
        assert isinstance(first, bytes) and first.endswith(b"Content-Length: 3\r\nLast-Modified: " + first.split(b"Last-Modified: ")[1].split(b"\r\n")[0] + b"\r\n\r\none")
        assert second == file_exchange(Files, str(tmp_path), GET % b"f")[0]
        assert isinstance(second, bytes) and second.endswith(b"Content-Length: 6\r\nLast-Modified: Wed, 18 May 2033 03:33:20 GMT\r\n\r\nsecond")

    def test_the_file_paths_are_stdlibs_methods_until_a_subclass_overrides_one(self) -> None:
        """translate_path is cached and do_GET reads a descriptor only while send_head, copyfile and translate_path are stdlib's."""
        simple = vars(http.server.SimpleHTTPRequestHandler)
        assert FastFiles.do_GET is not simple["do_GET"] and FastFiles.translate_path is not simple["translate_path"]

        class Copying(FastFiles):
            def copyfile(self, source: Any, outputfile: Any) -> None:
                super().copyfile(source, outputfile)

        class Translating(FastFiles):
            def translate_path(self, path: str) -> str:
                return super().translate_path(path)

        class Mine(Files):
            def send_head(self) -> Any:
                return super().send_head()

        class Behind(HTTPRequestHandler, Mine):
            pass

        for cls in (Copying, Translating, Behind):
            assert cls.do_GET is simple["do_GET"]
        assert Behind.translate_path is not simple["translate_path"]  # the cached one: send_head calls it
        assert "do_GET" not in vars(fast_http(http.server.BaseHTTPRequestHandler))


class TestKeptFiles:
    def test_a_kept_connection_gets_its_files_back_at_the_next_request(self) -> None:
        """KEEP leaves rfile and wfile on the server; the next dispatch serves with the same objects."""
        server = native_server()
        connection = Connection(GET % b"1")
        first = serve(Paths, connection, server)
        assert first.verdict is Verdict.KEEP and server.kept_files[connection][:2] == (first.rfile, first.wfile)
        connection._input = memoryview(GET % b"2")
        second = serve(Paths, connection, server)
        assert (second.rfile, second.wfile) == (first.rfile, first.wfile) and not first.rfile.closed
        assert Paths.served == ["/1", "/2"] and connection.output.count(b"HTTP/1.1 200 OK") == 2

    def test_a_closed_connection_closes_its_files(self) -> None:
        """CLOSE (here Connection: close) closes the files and leaves nothing on the server."""
        server = native_server()
        connection = Connection(b"GET /c HTTP/1.1\r\nConnection: close\r\n\r\n")
        handler = serve(Paths, connection, server)
        assert handler.verdict is Verdict.CLOSE and handler.rfile.closed and connection not in server.kept_files

    def test_a_later_bases_finish_runs_at_every_request_and_nothing_is_kept(self) -> None:
        """``class H(ParkingHTTPRequestHandler, Mine)`` with Mine.finish: Mine's finish closes the files each time."""
        finished: list[str] = []

        class Mine(http.server.BaseHTTPRequestHandler):
            def finish(self) -> None:
                finished.append(self.path)
                super().finish()

        class H(Paths, Mine):
            pass

        server = native_server()
        connection = Connection(GET % b"m")
        handler = serve(H, connection, server)
        assert handler.verdict is Verdict.KEEP and finished == ["/m"] and not server.kept_files
        assert not H._keeps_files and Paths._keeps_files
