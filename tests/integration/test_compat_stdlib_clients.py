"""stdlib modules built on socketserver, running on composable_server.compat
classes: http.server (files fetched with urllib), xmlrpc.server (called with
xmlrpc.client) and wsgiref.simple_server.

Each server runs under the plugin's ``serve`` fixture, which also fails a
test whose handler raised (stdlib handlers would only print it)."""

from __future__ import annotations

import functools
import http.server
import socket
import urllib.error
import urllib.request
import wsgiref.simple_server
import xmlrpc.client
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final
from xmlrpc.server import SimpleXMLRPCDispatcher, SimpleXMLRPCRequestHandler

import pytest

from composable_server import compat
from composable_server.pytest_plugin import ServeFactory

pytestmark = pytest.mark.timeout(20)

WAIT: Final = 5.0
# No proxies from the environment: the servers are on loopback.
OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def base_url(serve: ServeFactory, server: compat.TCPServer) -> str:
    """Serve *server* for this test; its base URL."""
    host, port = serve(server).address[:2]
    return f"http://{host}:{port}"


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler without the access log on stderr."""

    def log_message(self, format: str, *args: object) -> None:
        pass


class ThreadingHTTPServer(compat.ThreadingMixIn, compat.TCPServer):
    """stdlib ``http.server.ThreadingHTTPServer``, rebuilt on compat classes."""

    allow_reuse_address = True
    daemon_threads = True

    def server_bind(self) -> None:
        """As ``http.server.HTTPServer.server_bind``: bind, then record name and port."""
        super().server_bind()
        host, port = self.server_address[:2]
        self.server_name = socket.getfqdn(host)
        self.server_port = port


class StdlibBindHTTPServer(compat.ThreadingTCPServer):
    """A compat server using stdlib's own ``HTTPServer.server_bind`` unchanged
    (it calls stdlib ``TCPServer.server_bind``, which works on ``self.socket``)."""

    allow_reuse_address = True
    daemon_threads = True
    server_bind = getattr(http.server.HTTPServer, "server_bind")


@pytest.fixture
def docroot(tmp_path: Path) -> Path:
    (tmp_path / "hello.txt").write_bytes(b"hello from compat\n")
    return tmp_path


@pytest.mark.parametrize("server_class", [ThreadingHTTPServer, StdlibBindHTTPServer])
def test_http_server_serves_files(
    server_class: type[compat.TCPServer], docroot: Path, serve: ServeFactory
) -> None:
    """SimpleHTTPRequestHandler serves a file, and a 404, over a compat threading server."""
    handler = functools.partial(QuietFiles, directory=str(docroot))
    server = server_class(("127.0.0.1", 0), handler)
    url = base_url(serve, server)
    with OPENER.open(f"{url}/hello.txt", timeout=WAIT) as response:
        assert response.status == 200
        assert response.read() == b"hello from compat\n"
    with pytest.raises(urllib.error.HTTPError) as info:
        OPENER.open(f"{url}/missing.txt", timeout=WAIT)
    assert info.value.code == 404
    info.value.close()
    assert getattr(server, "server_port") == server.server_address[1]


class XMLRPCServer(compat.TCPServer, SimpleXMLRPCDispatcher):
    """stdlib ``SimpleXMLRPCServer``, rebuilt on ``compat.TCPServer``."""

    allow_reuse_address = True

    def __init__(self, address: tuple[str, int]) -> None:
        self.logRequests = False
        SimpleXMLRPCDispatcher.__init__(self, allow_none=False, encoding=None)
        compat.TCPServer.__init__(self, address, SimpleXMLRPCRequestHandler)


def test_xmlrpc_round_trip(serve: ServeFactory) -> None:
    """xmlrpc.client calls functions registered on a compat XML-RPC server, faults included."""
    server = XMLRPCServer(("127.0.0.1", 0))
    server.register_function(lambda a, b: a**b, "pow")
    server.register_function(lambda a, b: a + b, "add")
    with xmlrpc.client.ServerProxy(f"{base_url(serve, server)}/RPC2") as proxy:
        assert proxy.pow(2, 10) == 1024
        assert proxy.add("com", "pat") == "compat"
        with pytest.raises(xmlrpc.client.Fault):
            proxy.nonexistent()


class QuietWSGI(wsgiref.simple_server.WSGIRequestHandler):
    """WSGIRequestHandler without the access log on stderr."""

    def log_message(self, format: str, *args: object) -> None:
        pass


class WSGIServer(compat.TCPServer):
    """stdlib ``wsgiref.simple_server.WSGIServer``'s methods on ``compat.TCPServer``."""

    application: Callable[..., Iterable[bytes]] | None = None
    server_bind = getattr(wsgiref.simple_server.WSGIServer, "server_bind")
    setup_environ = getattr(wsgiref.simple_server.WSGIServer, "setup_environ")
    get_app = getattr(wsgiref.simple_server.WSGIServer, "get_app")
    set_app = getattr(wsgiref.simple_server.WSGIServer, "set_app")


def _app(environ: dict[str, object], start_response: Callable[..., object]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"path={environ['PATH_INFO']}".encode()]


def test_wsgiref_serves_an_app(serve: ServeFactory) -> None:
    """wsgiref's request handler runs a WSGI app on a compat server."""
    server = WSGIServer(("127.0.0.1", 0), QuietWSGI)
    server.set_app(_app)
    with OPENER.open(f"{base_url(serve, server)}/some/where", timeout=WAIT) as response:
        assert response.read() == b"path=/some/where"
