"""The echo servers the benchmark runs, one per subprocess.

    python -m tests.bench.bench_servers KIND FAMILY ADDRESS

KIND is a key of :data:`KINDS`; FAMILY is ``tcp``, ``udp`` or ``unix`` (or
an HTTP family of :mod:`tests.bench.bench_http`);
ADDRESS is ``host:port`` (port 0 picks one) or a Unix socket path.  The
process binds, prints ``{"address": ...}`` as one JSON line on stdout, and
serves a 32-byte line echo until SIGTERM.

Every server answers each line it reads with the same line, with the
idiomatic code of its framework: a ``StreamRequestHandler`` looping over
``rfile`` for socketserver and composable_server, a ``DatagramRequestHandler``
for datagrams (a ``DatagramHandler`` for the lean datagram kind), asyncio streams and a ``DatagramProtocol`` for asyncio.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import socketserver
import sys
import threading
from collections.abc import Callable
from typing import Final

from composable_server import (
    Server,
    StreamAcceptor,
    TCPTransport,
    ThreadingDispatcher,
    ThreadPoolDispatcher,
    UnixStreamTransport,
    compat,
)
from composable_server.dispatchers import ForkingDispatcher, SyncDispatcher
from composable_server.factories import make_tcp_server, make_udp_server, make_unix_stream_server
from composable_server.handlers import (
    DatagramRequestHandler,
    LineResponder,
    ParkingRequestHandler,
    StreamRequestHandler,
)
from composable_server.interfaces import Dispatcher, InetAddress, Transport, Verdict
from composable_server.prefork import Prefork
from composable_server.transports import DEFAULT_BACKLOG

__all__ = ("KINDS", "announce", "main", "parse_inet")

# Pool size: persistent connections each hold a worker for their lifetime,
# so a pool serving 128 of them needs at least 128 workers.
POOL_WORKERS: Final = 160
# stdlib ForkingMixIn.max_children is 40; the native forking server gets the
# same limit so that the comparison is like for like.
MAX_CHILDREN: Final = 40
# stdlib TCPServer.request_queue_size (its listen backlog) is 5, the native
# default socket.SOMAXCONN.  Fork per request on one core with 16 clients:
# at 5 the kernel drops the SYNs beyond the queue (those clients retry after
# a second), at SOMAXCONN every client is accepted and up to 16 children compete
# for the core, so the two would not serve the same load.  The native forking
# server listens with stdlib's 5, as compat (which must) does.
STDLIB_BACKLOG: Final = 5


class _StdlibStreamEcho(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class _StdlibDatagramEcho(socketserver.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


class _StreamEcho(StreamRequestHandler[object]):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class _ParkingEcho(ParkingRequestHandler[object]):
    """One line per dispatch; between lines the connection is parked."""

    def handle_message(self) -> Verdict:
        line = self.rfile.readline()
        if not line:
            return Verdict.CLOSE
        self.wfile.write(line)
        return Verdict.KEEP


class _LeanLineEcho:
    """The lean stream mode's echo (a LineHandler): the reply is the line."""

    def handle_line(self, line: bytes, client_address: object) -> bytes:
        return line


class _DatagramEcho(DatagramRequestHandler[object]):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


class _LeanDatagramEcho:
    """The lean datagram mode's echo (a DatagramHandler): the reply is the datagram."""

    def handle_datagram(self, data: bytes, client_address: object) -> bytes:
        return data


class _CompatStreamEcho(compat.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class _CompatDatagramEcho(compat.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


def parse_inet(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def announce(address: object) -> None:
    """Print the bound address as the one JSON line the runner waits for."""
    if isinstance(address, bytes):
        address = address.decode()
    print(json.dumps({"address": address if isinstance(address, str) else list(address)}), flush=True)  # type: ignore[call-overload]  # a str or a (host, port) tuple


def _serve(server: Server[object, object] | socketserver.BaseServer) -> None:
    """Serve until SIGTERM; the handler stops the loop from another thread."""

    def on_term(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, on_term)
    announce(server.server_address)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()


# -- stdlib ------------------------------------------------------------------------


def _stdlib(cls: type[socketserver.BaseServer], family: str, address: str) -> None:
    if family == "unix":
        server: socketserver.BaseServer = cls(address, _StdlibStreamEcho)
    else:
        handler = _StdlibDatagramEcho if family == "udp" else _StdlibStreamEcho
        server = cls(parse_inet(address), handler)
    _serve(server)


# -- composable_server: the compat twins ----------------------------------------------


def _compat(cls: type[compat.BaseServer], family: str, address: str) -> None:
    handler = _CompatDatagramEcho if family == "udp" else _CompatStreamEcho
    server = cls(address if family == "unix" else parse_inet(address), handler)
    _serve(server)


# -- composable_server: the native API ----------------------------------------------------


def _native(make_dispatcher: Callable[[], Dispatcher], family: str, address: str, *, backlog: int = DEFAULT_BACKLOG) -> None:
    server: Server[object, object]
    if family == "udp":
        server = make_udp_server(parse_inet(address), _DatagramEcho, dispatcher=make_dispatcher())  # type: ignore[assignment]  # Server is invariant; the loop needs no more than object
    elif family == "unix":
        server = make_unix_stream_server(address, _StreamEcho, dispatcher=make_dispatcher(), backlog=backlog)  # type: ignore[assignment]  # as above
    else:
        server = make_tcp_server(parse_inet(address), _StreamEcho, dispatcher=make_dispatcher(), backlog=backlog)  # type: ignore[assignment]  # as above
    _serve(server)


def _native_lean(make_dispatcher: Callable[[], Dispatcher], family: str, address: str) -> None:
    """The lean datagram mode: ``make_udp_server(datagram_handler=...)``."""
    if family != "udp":
        raise SystemExit(f"the lean datagram kinds serve udp only, got {family!r}")
    server = make_udp_server(parse_inet(address), datagram_handler=_LeanDatagramEcho(), dispatcher=make_dispatcher())
    _serve(server)  # type: ignore[arg-type]  # Server is invariant; the loop needs no more than object


def _observed(kind: str, family: str, address: str) -> None:
    """The native pool over TCP with the observers of *kind* (issue 15's
    ``observers`` scenario): ``none``, ``noop`` (one BaseObserver),
    ``metrics`` (a MetricsObserver, its own registry), ``access-log`` (an
    AccessLog at INFO writing to /dev/null)."""
    if family != "tcp":
        raise SystemExit(f"the observer kinds serve tcp only, got {family!r}")
    from composable_server import BaseObserver, Observer
    from composable_server.observers import AccessLog

    observers: list[Observer] = []
    if kind == "noop":
        observers.append(BaseObserver())
    elif kind == "metrics":
        from prometheus_client import CollectorRegistry

        from composable_server.metrics import MetricsObserver

        observers.append(MetricsObserver(transport="tcp", address=address, registry=CollectorRegistry()))
    elif kind == "access-log":
        import logging

        logger = logging.getLogger("bench.access")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(logging.FileHandler(os.devnull))
        observers.append(AccessLog(logger))
    server: Server[socket.socket, InetAddress] = Server(
        transport=TCPTransport(parse_inet(address)),
        acceptor=StreamAcceptor(),
        handler=_StreamEcho,
        dispatcher=ThreadPoolDispatcher(POOL_WORKERS, queue_size=256),
        observers=observers,
    )
    _serve(server)  # type: ignore[arg-type]  # Server is invariant; the loop needs no more than object


# Keep-alive parking (issue 17): 8 workers, connections parked between lines.
PARK_WORKERS: Final = 8
MAX_PARKED: Final = 20_000  # above the idle10k scenario's 10,000


def _native_park(make_dispatcher: Callable[[], Dispatcher], family: str, address: str) -> None:
    transport: Transport[socket.socket, object]
    if family == "unix":
        transport = UnixStreamTransport(address)
    elif family == "tcp":
        transport = TCPTransport(parse_inet(address))
    else:
        raise SystemExit("parking serves stream families only")
    server: Server[socket.socket, object] = Server(
        transport=transport, acceptor=StreamAcceptor(), handler=_ParkingEcho, dispatcher=make_dispatcher(),
        max_parked=MAX_PARKED,
    )
    _serve(server)  # type: ignore[arg-type]  # Server is invariant; the loop needs no more than object


def _native_park_lean(family: str, address: str) -> None:
    """The lean stream mode (a LineHandler, LineResponder) on SyncDispatcher: the loop serves each line itself."""
    transport: Transport[socket.socket, object]
    if family == "unix":
        transport = UnixStreamTransport(address)
    elif family == "tcp":
        transport = TCPTransport(parse_inet(address))
    else:
        raise SystemExit("the lean line mode serves stream families only")
    server: Server[socket.socket, object] = Server(
        transport=transport, acceptor=StreamAcceptor(), handler=LineResponder(_LeanLineEcho()),
        dispatcher=SyncDispatcher(), max_parked=MAX_PARKED,
    )
    _serve(server)  # type: ignore[arg-type]  # Server is invariant; the loop needs no more than object


def _prefork(family: str, address: str) -> None:
    transport: Transport[socket.socket, object]
    if family == "unix":
        transport = UnixStreamTransport(address)
    elif family == "tcp":
        transport = TCPTransport(parse_inet(address))
    else:
        raise SystemExit("prefork serves stream families only")

    def make_server(transport: Transport[socket.socket, object]) -> Server[socket.socket, object]:
        return Server(
            transport=transport,
            acceptor=StreamAcceptor(),
            handler=_StreamEcho,
            dispatcher=ThreadPoolDispatcher(POOL_WORKERS, queue_size=256),
            bind_and_activate=False,
        )

    # One worker per CPU this process may use (the benchmark pins it to one).
    prefork: Prefork[socket.socket, object] = Prefork(
        transport, make_server, workers=len(os.sched_getaffinity(0))
    )
    with prefork:
        announce(prefork.server_address)
        prefork.serve_forever()  # SIGTERM stops it (main thread)


# -- asyncio -------------------------------------------------------------------------------


def _asyncio(family: str, address: str, *, uvloop: bool = False) -> None:
    # Imported here, so that the other kinds' RSS does not include asyncio.
    from .bench_asyncio import run

    run(family, address, uvloop=uvloop)


_Runner = Callable[[str, str], None]

KINDS: Final[dict[str, _Runner]] = {
    # stdlib socketserver
    "stdlib-sync": lambda f, a: _stdlib(
        {"tcp": socketserver.TCPServer, "udp": socketserver.UDPServer, "unix": socketserver.UnixStreamServer}[f], f, a
    ),
    "stdlib-threading": lambda f, a: _stdlib(
        {
            "tcp": socketserver.ThreadingTCPServer,
            "udp": socketserver.ThreadingUDPServer,
            "unix": socketserver.ThreadingUnixStreamServer,
        }[f],
        f,
        a,
    ),
    "stdlib-forking": lambda f, a: _stdlib(socketserver.ForkingTCPServer, f, a),
    # composable_server.compat (the drop-in twins)
    "compat-sync": lambda f, a: _compat(
        {"tcp": compat.TCPServer, "udp": compat.UDPServer, "unix": compat.UnixStreamServer}[f], f, a
    ),
    "compat-threading": lambda f, a: _compat(
        {
            "tcp": compat.ThreadingTCPServer,
            "udp": compat.ThreadingUDPServer,
            "unix": compat.ThreadingUnixStreamServer,
        }[f],
        f,
        a,
    ),
    "compat-forking": lambda f, a: _compat(compat.ForkingTCPServer, f, a),
    # composable_server native API
    "native-sync": lambda f, a: _native(SyncDispatcher, f, a),
    "native-threading": lambda f, a: _native(ThreadingDispatcher, f, a),
    "native-pool": lambda f, a: _native(lambda: ThreadPoolDispatcher(POOL_WORKERS, queue_size=256), f, a),
    "native-forking": lambda f, a: _native(lambda: ForkingDispatcher(MAX_CHILDREN), f, a, backlog=STDLIB_BACKLOG),
    # the lean datagram mode (a DatagramHandler, DatagramResponder), served by the loop itself
    "native-lean-sync": lambda f, a: _native_lean(SyncDispatcher, f, a),
    "prefork": _prefork,
    # issue 15: the native pool with observers (the `observers` scenario)
    "pool-observers-none": lambda f, a: _observed("none", f, a),
    "pool-observers-noop": lambda f, a: _observed("noop", f, a),
    "pool-observers-metrics": lambda f, a: _observed("metrics", f, a),
    "pool-observers-access-log": lambda f, a: _observed("access-log", f, a),
    # keep-alive parking: a pool of 8 (the shape) and the loop alone (SyncDispatcher)
    "native-park-pool": lambda f, a: _native_park(lambda: ThreadPoolDispatcher(PARK_WORKERS, queue_size=256), f, a),
    "native-park-sync": lambda f, a: _native_park(SyncDispatcher, f, a),
    # the lean line mode (a LineHandler, LineResponder): the loop serves each line itself
    "native-park-lean-sync": _native_park_lean,
    # event loops
    "asyncio": _asyncio,
    "uvloop": lambda f, a: _asyncio(f, a, uvloop=True),
}
"""Server kind -> runner(family, address)."""


def main(argv: list[str]) -> None:
    kind, family, address = argv
    from .bench_http import FAMILIES as HTTP_FAMILIES

    if family not in ("tcp", "udp", "unix") + HTTP_FAMILIES:
        raise SystemExit(f"family must be tcp, udp, unix or one of {', '.join(HTTP_FAMILIES)}, got {family!r}")
    # Many connections (idle10k): as many descriptors as the hard limit allows.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cpu = os.environ.get("BENCH_SERVER_CPU")
    if cpu is not None:
        os.sched_setaffinity(0, {int(cpu)})
    if family in HTTP_FAMILIES:
        from .bench_http import run

        run(kind, family, address)
        return
    KINDS[kind](family, address)


if __name__ == "__main__":
    main(sys.argv[1:])
