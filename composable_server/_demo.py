"""``python -m composable_server demo``: every server kind, one after another.

For each transport (TCP, UDP, Unix stream, Unix datagram) and each dispatch
mode (sync, threading, forking) the demo composes a server on a free local
address (port 0, or a socket path in a temporary directory), runs it in a
thread, sends a few requests with a plain-socket client, checks each reply,
and shuts the server down.  Every client call has a timeout, so the demo
always ends.  The exit status is 0 only if every reply was correct.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Final, TextIO, TypeAlias

import attrs

from ._classes import DISPATCHERS as CLASSIC_DISPATCHERS
from ._classes import DispatcherName, classic_name
from ._modes import DISPATCHERS, STREAM_TRANSPORTS, TRANSPORTS, UNIX_TRANSPORTS
from ._services import UpperDatagramHandler, UpperStreamHandler, format_address
from .factories import make_tcp_server, make_udp_server, make_unix_datagram_server, make_unix_stream_server
from .interfaces import Address, DatagramRequest, InetAddress, UnixAddress
from .policies import LoggingErrorPolicy
from .server import Server

__all__ = ("DemoResult", "KINDS", "run_demo")

_logger = logging.getLogger("composable_server.demo")

KINDS: Final[tuple[tuple[str, DispatcherName], ...]] = tuple(
    (transport, dispatch)
    for transport in ("tcp", "udp", "unix", "unix-datagram")
    for dispatch in CLASSIC_DISPATCHERS
)
"""(transport, dispatch) for every server kind the demo runs: the CLI's
transports x the dispatch modes of the classic classes."""


@attrs.frozen
class DemoResult:
    """One row of the demo table."""

    kind: str
    stdlib: str
    address: str
    sent: int
    correct: int
    elapsed_ms: float
    error: str = ""

    @property
    def ok(self) -> bool:
        """True if every request got the right reply."""
        return not self.error and self.correct == self.sent


AnyServer: TypeAlias = (
    "Server[socket.socket, InetAddress] | Server[DatagramRequest, InetAddress]"
    " | Server[socket.socket, UnixAddress] | Server[DatagramRequest, UnixAddress]"
)


def _server(transport: str, dispatch: str, directory: str) -> AnyServer:
    """The server of one demo kind, on a free local address, from the factories."""
    kind = TRANSPORTS[transport]
    dispatcher, policy = DISPATCHERS[dispatch](), LoggingErrorPolicy()
    path = os.path.join(directory, f"{transport}-{dispatch}.sock")
    if kind == "tcp":
        return make_tcp_server(("127.0.0.1", 0), UpperStreamHandler, dispatcher=dispatcher, error_policy=policy)
    if kind == "udp":
        return make_udp_server(("127.0.0.1", 0), UpperDatagramHandler, dispatcher=dispatcher, error_policy=policy)
    if kind == "unix_stream":
        return make_unix_stream_server(path, UpperStreamHandler, dispatcher=dispatcher, error_policy=policy)
    return make_unix_datagram_server(path, UpperDatagramHandler, dispatcher=dispatcher, error_policy=policy)


def _ask_stream(family: socket.AddressFamily, address: Address, payload: bytes, timeout: float) -> bytes:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(payload)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


def _ask_datagram(
    family: socket.AddressFamily, address: Address, payload: bytes, timeout: float, client_path: str | None
) -> bytes:
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        if client_path is not None:
            # A Unix datagram client must have an address to be answered.
            sock.bind(client_path)
        try:
            sock.sendto(payload, address)
            return sock.recv(65535)
        finally:
            if client_path is not None:
                os.unlink(client_path)


def run_kind(transport: str, dispatch: DispatcherName, directory: str, requests: int, timeout: float) -> DemoResult:
    """Start one server kind, send *requests* requests, check the replies."""
    stdlib = classic_name(TRANSPORTS[transport], dispatch)
    kind = f"{transport} {dispatch}"
    started = time.perf_counter()
    correct = 0
    address = "-"
    try:
        server = _server(transport, dispatch, directory)
        stream = transport in STREAM_TRANSPORTS
        family = socket.AF_UNIX if transport in UNIX_TRANSPORTS else socket.AF_INET
        with server:
            address = format_address(server.server_address)
            loop = threading.Thread(target=server.serve_forever, name=f"demo {kind}", daemon=True)
            loop.start()
            try:
                for n in range(requests):
                    payload = f"hello {kind} #{n + 1}\n".encode()
                    if stream:
                        reply = _ask_stream(family, server.server_address, payload, timeout)
                    else:
                        client_path = os.path.join(directory, "client.sock") if family == socket.AF_UNIX else None
                        reply = _ask_datagram(family, server.server_address, payload, timeout, client_path)
                    correct += reply == payload.upper()
            finally:
                # Stop accepting and wait for the requests in flight
                # (threads, children) before the server is closed.
                server.drain(timeout)
                loop.join(timeout)
    except (OSError, ValueError) as exc:
        return DemoResult(kind, stdlib, address, requests, correct, _ms(started), f"{type(exc).__name__}: {exc}")
    return DemoResult(kind, stdlib, address, requests, correct, _ms(started))


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def format_table(results: list[DemoResult]) -> str:
    """The demo table: kind, stdlib equivalent, requests sent, replies correct, elapsed ms."""
    header = ("kind", "like stdlib", "sent", "correct", "elapsed ms")
    rows = [
        (r.kind, r.stdlib, str(r.sent), str(r.correct) + ("" if r.ok else "  FAILED"), f"{r.elapsed_ms:.1f}")
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    right = {2, 3, 4}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(header), "  ".join("-" * w for w in widths), *map(line, rows)]
    return "\n".join(s.rstrip() for s in out)


def run_demo(
    requests: int = 3, timeout: float = 5.0, out: TextIO | None = None, kinds: tuple[tuple[str, DispatcherName], ...] = KINDS
) -> int:
    """Run every server kind, print the table to *out* (default stdout); return the exit status."""
    stream = sys.stdout if out is None else out
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    results: list[DemoResult] = []
    show: Callable[[str], object] = lambda text: print(text, file=stream, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="composable-server-demo-") as directory:
        for transport, dispatch in kinds:
            result = run_kind(transport, dispatch, directory, requests, timeout)
            if result.error:
                _logger.error("%s: %s", result.kind, result.error)
            results.append(result)
    show(format_table(results))
    sent = sum(r.sent for r in results)
    correct = sum(r.correct for r in results)
    ok = all(r.ok for r in results)
    show(f"{len(results)} server kinds, {correct}/{sent} replies correct: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1
