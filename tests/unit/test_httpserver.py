"""The http.server handler that parks keep-alive connections, on an in-memory connection.

:class:`Connection` stands in for the connected socket: it serves its input
from bytes and collects the output, and reading past its input fails the test
loudly (on a real socket that read would block until the next request, which a
handler that parks must never do).
"""

from __future__ import annotations

import functools
import http.server
import socket
import ssl
from typing import Any, ClassVar, cast

import pytest

from composable_server import Server
from composable_server._request import parks_connections, takes_kernel_timeouts
from composable_server.httpserver import (
    DEFAULT_HTTP_BUDGET,
    DEFAULT_HTTP_THREADS,
    ParkingHTTPRequestHandler,
    make_http_server,
    parking_http,
)
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
        """The class parks and takes kernel timeouts; through functools.partial too."""
        assert parks_connections(Paths)
        assert takes_kernel_timeouts(Paths)
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
