"""Handler classes from the standard library run unchanged on a native Server.

Servers run under the plugin's ``serve`` fixture (which also fails a test
whose handler raised)."""

from __future__ import annotations

import functools
import http.server
import json
import socket
import socketserver
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal

import pytest

from composable_server import (
    DatagramAcceptor,
    InetAddress,
    Server,
    StreamAcceptor,
    TCPTransport,
    ThreadingDispatcher,
    UDPTransport,
)

from composable_server.pytest_plugin import ServeFactory

from ._support import CLIENT_TIMEOUT, Background, Dispatch, ipv6_available

# urllib honours http_proxy & co. from the environment; loopback tests must not.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _fetch(url: str, data: bytes | None = None, method: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with _opener.open(request, timeout=CLIENT_TIMEOUT) as response:
            status: int = response.status
            return status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


class QuietSimpleHTTPRequestHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler without the per-request log line on stderr."""

    def log_message(self, format: str, *args: object) -> None:
        pass


class TestHTTPServer:
    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("dispatch", list(Dispatch), ids=[d.value for d in Dispatch])
    def test_simple_http_request_handler(self, dispatch: Dispatch, tmp_path: Path, serve: ServeFactory) -> None:
        """SimpleHTTPRequestHandler serves files, listings and 404s from a native Server."""
        (tmp_path / "hello.txt").write_bytes(b"hello from composable_server\n")
        server: Server[socket.socket, InetAddress] = Server(
            transport=TCPTransport(("127.0.0.1", 0)),
            acceptor=StreamAcceptor(),
            handler=functools.partial(QuietSimpleHTTPRequestHandler, directory=str(tmp_path)),
            dispatcher=dispatch.make(),
        )
        base = f"http://127.0.0.1:{serve(server).address[1]}"
        assert _fetch(f"{base}/hello.txt") == (200, b"hello from composable_server\n")
        status, listing = _fetch(f"{base}/")
        assert status == 200
        assert b"hello.txt" in listing
        status, _ = _fetch(f"{base}/missing.txt")
        assert status == 404
        assert _fetch(f"{base}/hello.txt", method="HEAD") == (200, b"")

    @pytest.mark.timeout(10)
    def test_concurrent_fetches_on_threading_dispatcher(self, tmp_path: Path, serve: ServeFactory) -> None:
        """Several clients fetching at once from a ThreadingDispatcher server all get the file."""
        payload = bytes(range(256)) * 1024
        (tmp_path / "blob.bin").write_bytes(payload)
        served = serve(
            functools.partial(QuietSimpleHTTPRequestHandler, directory=str(tmp_path)),
            dispatcher=ThreadingDispatcher(),
        )
        url = f"http://127.0.0.1:{served.address[1]}/blob.bin"
        clients = [Background(functools.partial(_fetch, url)) for _ in range(6)]
        assert [c.result() for c in clients] == [(200, payload)] * 6

    @pytest.mark.timeout(10)
    def test_base_http_request_handler_post(self, serve: ServeFactory) -> None:
        """A BaseHTTPRequestHandler subclass with do_POST reads the body and answers JSON."""

        class JSONEcho(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                reply = json.dumps({"path": self.path, "body": body.decode(), "client": self.client_address[0]})
                encoded = reply.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(encoded)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(encoded)

            def log_message(self, format: str, *args: object) -> None:
                pass

        served = serve(JSONEcho, dispatcher=ThreadingDispatcher())
        status, body = _fetch(f"http://127.0.0.1:{served.address[1]}/echo", data=b"payload")
        assert status == 200
        assert json.loads(body) == {"path": "/echo", "body": "payload", "client": "127.0.0.1"}


class UpperLines(socketserver.StreamRequestHandler):
    """A stdlib stream handler: upper-cases every line until EOF."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line.upper())


class UpperDatagram(socketserver.DatagramRequestHandler):
    """A stdlib datagram handler: answers the datagram upper-cased."""

    def handle(self) -> None:
        self.wfile.write(self.rfile.read().upper())


class TestSocketserverHandlers:
    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("host", ["127.0.0.1", "::1", None], ids=["tcp4", "tcp6", "unixstream"])
    @pytest.mark.parametrize("dispatch", list(Dispatch), ids=[d.value for d in Dispatch])
    def test_stream_request_handler(self, host: str | None, dispatch: Dispatch, serve: ServeFactory) -> None:
        """A socketserver.StreamRequestHandler subclass serves several lines per connection."""
        if host == "::1" and not ipv6_available():
            pytest.skip("IPv6 loopback (::1) is not available")
        served = (
            serve(UpperLines, "unix_stream", dispatcher=dispatch.make())
            if host is None
            else serve(UpperLines, "tcp", host=host, dispatcher=dispatch.make())
        )
        assert served.request(b"one\ntwo\nthree\n") == b"ONE\nTWO\nTHREE\n"

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("kind", ["udp", "unix_datagram"], ids=["udp4", "unixdgram"])
    def test_datagram_request_handler(self, kind: Literal["udp", "unix_datagram"], serve: ServeFactory) -> None:
        """A socketserver.DatagramRequestHandler subclass answers through the native server."""
        assert serve(UpperDatagram, kind, dispatcher=ThreadingDispatcher()).request(b"datagram") == b"DATAGRAM"

    @pytest.mark.timeout(10)
    def test_typed_composition(self) -> None:
        """The stdlib handler classes type-check as the handler of a native Server."""
        stream: Server[socket.socket, InetAddress] = Server(
            transport=TCPTransport(("127.0.0.1", 0)), acceptor=StreamAcceptor(), handler=UpperLines
        )
        datagram: Server[tuple[bytes, socket.socket], InetAddress] = Server(
            transport=UDPTransport(("127.0.0.1", 0)), acceptor=DatagramAcceptor(), handler=UpperDatagram
        )
        with stream, datagram:
            assert stream.server_address[1] > 0
            assert datagram.server_address[1] > 0
