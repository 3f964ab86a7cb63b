"""The HTTP (and HTTPS) servers of the benchmark, one per subprocess.

Reached through ``python -m tests.bench.bench_servers KIND FAMILY ADDRESS``
with FAMILY one of :data:`FAMILIES`:

``http-min``
    a minimal ``BaseHTTPRequestHandler``: HTTP/1.1, a 13-byte body with
    ``Content-Length``, so a client may keep the connection alive;
``http-file``
    ``http.server.SimpleHTTPRequestHandler`` (HTTP/1.1) serving one small
    file from a temporary directory (``/small.txt``, 128 bytes);
``https-min``
    ``http-min`` over TLS (the certificate and key in the files named by the
    ``BENCH_TLS_CERT`` and ``BENCH_TLS_KEY`` environment variables).

The compat kinds replace ``sys.modules["socketserver"]`` with
``composable_server.compat`` *before* ``http.server`` is imported, the way a
program switches: ``http.server.ThreadingHTTPServer`` itself then runs on
compat.  Request logging is off in every kind (it would write one stderr line
per request into the runner's pipe), and every handler sets
``disable_nagle_algorithm`` (TCP_NODELAY): http.server writes a response's
head and body in two sends, so without it each keep-alive response waits
for the client's delayed ACK (~40 ms) in every kind alike, and the scenario
would measure that timer instead of the servers; and every handler answers
a request's ``Connection: close`` with one (RFC 9112 s. 9.6; http.server
does not), so wrk opens a new connection instead of writing into the
closing one.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import http.server

__all__ = ("FAMILIES", "FILE_BODY", "FILE_PATH", "HTTP_KINDS", "MIN_BODY", "run")

FAMILIES: Final = ("http-min", "http-file", "https-min")
MIN_BODY: Final = b"Hello, world\n"
FILE_PATH: Final = "/small.txt"
FILE_BODY: Final = b"0123456789abcdef" * 7 + b"0123456789abcde\n"  # 128 bytes

# The kinds that serve HTTP.  native-parking: the same handler classes
# through composable_server.httpserver.make_http_server (parking_http wraps
# them), a pool of PARKING_THREADS workers, keep-alive connections parked
# between requests.
HTTP_KINDS: Final = ("stdlib-threading", "compat-threading", "native-pool", "prefork", "native-parking")
TLS_KINDS: Final = ("stdlib-threading", "compat-threading", "native-pool", "prefork", "asyncio", "uvloop")
# The pool of native-parking (issue 17: "an HTTP/1.1 server on a pool of 8").
PARKING_THREADS: Final = 8


def _server_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(os.environ["BENCH_TLS_CERT"], os.environ["BENCH_TLS_KEY"])
    return context


def _handler_classes(family: str) -> type[http.server.BaseHTTPRequestHandler]:
    """The handler class for *family*, built on whichever ``http.server`` is imported."""
    import http.server

    class Settings(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: object) -> None:
            pass

        def end_headers(self) -> None:
            # RFC 9112 s. 9.6: answer a request's "Connection: close" with
            # one, or wrk (HTTP/1.1, no close in the answer) sends its next
            # request on the closing connection and counts a read error.
            if self.close_connection:
                self.send_header("Connection", "close")
            super().end_headers()

    class Quiet(Settings):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(MIN_BODY)))
            self.end_headers()
            self.wfile.write(MIN_BODY)

    class QuietFiles(Settings, http.server.SimpleHTTPRequestHandler):
        pass

    if family != "http-file":
        return Quiet
    directory = tempfile.mkdtemp(prefix="cs-bench-http-")
    with open(os.path.join(directory, FILE_PATH.lstrip("/")), "wb") as f:
        f.write(FILE_BODY)

    class InDirectory(QuietFiles):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=directory, **kwargs)  # type: ignore[arg-type]  # request, address, server as stdlib passes them

    return InDirectory


def _socketserver_http(kind: str, family: str, address: str) -> None:
    """stdlib (or, for compat, the swapped) ``http.server.ThreadingHTTPServer``."""
    if kind.startswith("compat-"):
        from composable_server import compat

        if "http.server" in sys.modules:
            raise SystemExit("http.server was imported before the swap")
        sys.modules["socketserver"] = compat  # the drop-in swap
    import http.server

    from .bench_servers import _serve, parse_inet

    handler = _handler_classes(family)
    if family == "https-min":
        context = _server_context()

        class TLSServer(http.server.ThreadingHTTPServer):
            # The usual way: wrap each accepted socket in get_request.  With
            # do_handshake_on_connect (the default) wrap_socket handshakes a
            # connected socket at once, so the handshake runs here, in the
            # accept loop, and a client that never sends its ClientHello
            # blocks the loop for good (the socket has no timeout).
            def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
                sock, addr = self.socket.accept()
                return context.wrap_socket(sock, server_side=True), addr

        server: http.server.HTTPServer = TLSServer(parse_inet(address), handler)
    else:
        server = http.server.ThreadingHTTPServer(parse_inet(address), handler)
    _serve(server)


def _native_http(kind: str, family: str, address: str) -> None:
    """The native API: for HTTP, ``make_http_server(park=False)`` (a pool
    worker per connection, serving its requests in place), or prefork workers
    each with a pool serving ``fast_http(handler)`` (as a user of ``Prefork``
    builds it); for HTTPS (the TLS scenarios), the handler class as it is on
    a ``Server`` with a ``TLSTransport``.  ``native-pool-no-timeout``: that
    HTTPS pool with ``NoTimeout()`` (stdlib's behaviour: no idle budget,
    so no socket timeout on the TLS socket), for ``tests.bench.switches``."""
    from composable_server import Server, StreamAcceptor, TCPTransport, ThreadPoolDispatcher
    from composable_server.httpserver import fast_http, make_http_server
    from composable_server.interfaces import Transport
    from composable_server.policies import ConnectionTimeouts, NoTimeout
    from composable_server.prefork import Prefork
    from composable_server.transports import TLSTransport

    from .bench_servers import POOL_WORKERS, _serve, announce, parse_inet

    handler = _handler_classes(family)
    tls = family == "https-min"
    if kind == "native-pool-no-timeout" and not tls:
        raise SystemExit("native-pool-no-timeout serves https-min only")
    if kind == "native-pool" and not tls:
        server = make_http_server(parse_inet(address), handler, threads=POOL_WORKERS, park=False)
        _serve(server)  # type: ignore[arg-type]  # Server is invariant; the loop needs no more than object
        return
    transport: Transport[socket.socket, object] = TCPTransport(parse_inet(address))
    if tls:
        transport = TLSTransport(transport, _server_context())
    served = handler if tls else fast_http(handler)

    def make_server(
        transport: Transport[socket.socket, object], *, bind_and_activate: bool = False
    ) -> Server[socket.socket, object]:
        return Server(
            transport=transport,
            acceptor=StreamAcceptor(),
            handler=served,  # a socketserver handler class: called (request, address, server)
            dispatcher=ThreadPoolDispatcher(POOL_WORKERS, queue_size=256),
            timeout_policy=NoTimeout() if kind == "native-pool-no-timeout" else ConnectionTimeouts(),
            bind_and_activate=bind_and_activate,
        )

    if kind in ("native-pool", "native-pool-no-timeout"):
        _serve(make_server(transport, bind_and_activate=True))  # type: ignore[arg-type]  # Server is invariant; the loop needs no more than object
        return
    prefork: Prefork[socket.socket, object] = Prefork(transport, make_server, workers=len(os.sched_getaffinity(0)))
    with prefork:
        announce(prefork.server_address)
        prefork.serve_forever()


def _parking_http(kind: str, family: str, address: str) -> None:
    """``make_http_server``: a pool of :data:`PARKING_THREADS`, connections parked between requests."""
    from composable_server.httpserver import make_http_server

    from .bench_servers import _serve, parse_inet

    context = _server_context() if family == "https-min" else None
    handler = _handler_classes(family)
    server = make_http_server(parse_inet(address), handler, threads=PARKING_THREADS, ssl_context=context)
    _serve(server)  # type: ignore[arg-type]  # Server is invariant; the loop needs no more than object


def run(kind: str, family: str, address: str) -> None:
    """Serve *family* with *kind* on *address* until SIGTERM."""
    runners: dict[str, Callable[[str, str, str], None]] = {
        "stdlib-threading": _socketserver_http,
        "compat-threading": _socketserver_http,
        "native-pool": _native_http,
        "native-pool-no-timeout": _native_http,
        "prefork": _native_http,
        "native-parking": _parking_http,
    }
    if kind in ("asyncio", "uvloop") and family == "https-min":
        from .bench_asyncio import run_https

        run_https(address, _server_context(), uvloop=kind == "uvloop")
        return
    if kind not in runners:
        raise SystemExit(f"{kind} does not serve {family}; HTTP kinds: {', '.join(runners)}")
    runners[kind](kind, family, address)
