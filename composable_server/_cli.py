"""The command line: ``python -m composable_server serve|demo``.

Theory of operation (``serve``)
-------------------------------

The server loop runs in a worker thread; the main thread only waits for a
signal.  ``shutdown()`` and ``drain()`` must not be called from the serving
thread (they would wait for themselves), and Python runs signal handlers in
the main thread, so this split keeps both sides simple:

1. SIGTERM or SIGINT: a byte arrives on a pipe the main thread is reading,
   written by the C-level handler (``signal.set_wakeup_fd``: the kernel may
   interrupt any thread, and only the main thread runs Python handlers) and
   by the Python handler (a pipe rather than ``threading.Event.set()``, whose
   lock is not safe to take from a handler that interrupted ``wait()``).
2. The main thread starts ``server.drain(grace)`` in a helper thread: stop
   accepting, wait up to *grace* seconds for the requests in flight, cut the
   rest (threads: their sockets are shut down; children: SIGTERM).
3. With the synchronous dispatcher the request in flight runs in the serving
   thread itself, and ``drain()`` waits in ``shutdown()`` for it; so the
   main thread bounds the helper too, and at the deadline shuts down the
   connections :class:`~composable_server._services.RequestLog` knows of.
   A second signal during the wait cuts them at once (exit status 1).
4. Close the server and exit 0.

Errors a user can fix (a bad option, a taken port, a bad CIDR, a path that
is too long) end the process with one line on stderr and a non-zero status:
2 for usage errors (argparse's convention), 1 for an address that cannot be
bound.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Final, NoReturn, TypeAlias, TypeVar, get_args

from ._services import DATAGRAM_SERVICES, STREAM_SERVICES, RequestLog, format_address, http_handler
from .acceptors import DatagramAcceptor, StreamAcceptor
from .dispatchers import ForkingDispatcher, SyncDispatcher, ThreadingDispatcher, ThreadPoolDispatcher
from .exceptions import AddressError, BindError
from .interfaces import Acceptor, Address, DatagramRequest, Dispatcher, HandlerFactory, Transport, Verifier
from .policies import LoggingErrorPolicy
from .prefork import DEFAULT_WORKERS, Prefork, RestartLimitError
from .proxy import (
    DEFAULT_TRUSTED,
    ProxyMode,
    ProxyProtocolDatagramAcceptor,
    ProxyProtocolTransport,
    proxied_client_address,
)
from .server import Server
from .transports import TCPTransport, UDPTransport, UnixDatagramTransport, UnixStreamTransport
from .verifiers import AllowAll, all_of, allow_networks, deny_networks

__all__ = ("DISPATCHERS", "DISPATCH_MODES", "TRANSPORTS", "build_parser", "build_prefork", "build_server", "main")

_logger = logging.getLogger("composable_server.cli")

PROG: Final = "composable-server"
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 9999
DEFAULT_GRACE: Final = 10.0

# --dispatch: one line per mode.  Threads are daemonic and children are not
# waited for on close, because drain() has already bounded the wait: a
# straggler cut at the deadline must not hold the exit up a second time.
DISPATCHERS: Final[dict[str, Callable[[], Dispatcher]]] = {
    "sync": SyncDispatcher,
    "threading": functools.partial(ThreadingDispatcher, daemon=True),
    "forking": functools.partial(ForkingDispatcher, block_on_close=False),
    # 16 reused workers, 64 queued connections, then backpressure.
    "pool": functools.partial(ThreadPoolDispatcher, 16, daemon=True),
}

# --dispatch prefork: --workers processes (default: one per CPU), each with this pool.
PREFORK_POOL: Final = DISPATCHERS["pool"]
DISPATCH_MODES: Final = (*DISPATCHERS, "prefork")

TRANSPORTS: Final = ("tcp", "udp", "unix", "unix-dgram")
STREAM_TRANSPORTS: Final = frozenset({"tcp", "unix"})
SERVICES: Final = ("upper", "echo", "http")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")

RequestT = TypeVar("RequestT")

AnyServer: TypeAlias = "Server[socket.socket, Address] | Server[DatagramRequest, Address]"

_EPILOG: Final = """\
examples:
  composable-server serve
      upper-case echo on 127.0.0.1:9999; try: printf 'hello\\n' | nc 127.0.0.1 9999
  composable-server serve --port 0 --dispatch threading --log-level debug
      a free port (printed as "listening on tcp 127.0.0.1:PORT"), a thread per request
  composable-server serve --transport udp --port 9999
      one datagram in, its upper-case copy back
  composable-server serve --transport unix --path /tmp/upper.sock --dispatch forking
  composable-server serve --service http --port 8000 --directory ./public
  composable-server serve --allow 127.0.0.0/8 --allow ::1 --host ::
  composable-server serve --proxy-protocol v2 --proxy-trust 10.0.0.5
      behind HAProxy (send-proxy-v2) at 10.0.0.5: handlers and logs see the real client
  composable-server demo
      every server kind in turn, with a table of the results

SIGTERM or SIGINT stops accepting, lets requests in flight finish (at most
--grace seconds), and exits 0.
"""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block)."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message`` and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be an integer in 0..65535, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {port}")
    return port


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``composable-server``."""
    parser = _Parser(
        prog=PROG,
        description="Python's socketserver, assembled from typed components.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="{serve,demo}")
    serve = commands.add_parser(
        "serve",
        help="run a server until SIGINT/SIGTERM",
        description="Run a server until SIGINT or SIGTERM, then stop gracefully.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--transport", choices=TRANSPORTS, default="tcp", help="socket kind (default: tcp)")
    serve.add_argument("--host", help=f"IP address or name to bind (default: {DEFAULT_HOST}; '::1' or '::' for IPv6)")
    serve.add_argument("--port", type=_port, help=f"port to bind; 0 picks a free one (default: {DEFAULT_PORT})")
    serve.add_argument("--path", help="socket path, for --transport unix and unix-dgram")
    serve.add_argument(
        "--dispatch",
        choices=DISPATCH_MODES,
        default="sync",
        help="where requests run (default: sync; pool: 16 reused threads; prefork: --workers processes, "
        "each with such a pool)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help=f"worker processes for --dispatch prefork (default: one per CPU, here {DEFAULT_WORKERS})",
    )
    serve.add_argument(
        "--service",
        choices=SERVICES,
        default="upper",
        help="upper: one line or datagram in, upper-cased back (default); echo: unchanged; "
        "http: files of --directory (stream transports only)",
    )
    serve.add_argument("--directory", help="directory served by --service http (default: the current one)")
    serve.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="CIDR",
        help="admit only clients in this network (repeatable), e.g. 127.0.0.0/8 or ::1",
    )
    serve.add_argument(
        "--deny", action="append", default=[], metavar="CIDR", help="refuse clients in this network (repeatable)"
    )
    serve.add_argument(
        "--proxy-protocol",
        choices=get_args(ProxyMode),
        help="require a PROXY protocol header (HAProxy send-proxy[-v2], nginx proxy_protocol) on every "
        "connection or datagram, and serve the client it names; datagrams: v2 only",
    )
    serve.add_argument(
        "--proxy-trust",
        action="append",
        default=[],
        metavar="CIDR",
        help="proxies allowed to send the header (repeatable; default: " + ", ".join(DEFAULT_TRUSTED) + ")",
    )
    serve.add_argument("--log-level", choices=LOG_LEVELS, default="info", type=str.lower, help="default: info")
    serve.add_argument(
        "--grace",
        type=_seconds,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help=f"on SIGTERM/SIGINT, wait this long for requests in flight (default: {DEFAULT_GRACE:g})",
    )
    demo = commands.add_parser(
        "demo",
        help="start every server kind in turn, send requests, print a table",
        description="Start every server kind (TCP/UDP/Unix stream/Unix datagram x sync/threading/forking) "
        "on free local addresses, send a few requests to each, print a table; exit 0 if every reply is correct.",
    )
    demo.add_argument("--requests", type=int, default=3, help="requests per server kind (default: 3)")
    demo.add_argument("--timeout", type=_seconds, default=5.0, help="client timeout in seconds (default: 5)")
    return parser


def _check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject option combinations that cannot work, with one line each."""
    unix = args.transport in ("unix", "unix-dgram")
    if unix:
        if args.path is None:
            parser.error(f"--transport {args.transport} needs --path")
        for option in ("host", "port"):
            if getattr(args, option) is not None:
                parser.error(f"--{option} does not apply to --transport {args.transport}; use --path")
    elif args.path is not None:
        parser.error(f"--path applies to the unix transports, not --transport {args.transport}")
    if args.service == "http" and args.transport not in STREAM_TRANSPORTS:
        parser.error(f"--service http needs a stream transport (tcp or unix), not {args.transport}")
    if args.proxy_trust and args.proxy_protocol is None:
        parser.error("--proxy-trust applies only with --proxy-protocol")
    if args.proxy_protocol == "v1" and args.transport not in STREAM_TRANSPORTS:
        parser.error(f"--proxy-protocol v1 is for stream transports; datagrams carry v2, not {args.transport}")
    if args.workers is not None:
        if args.dispatch != "prefork":
            parser.error("--workers applies only to --dispatch prefork")
        if args.workers < 1:
            parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.directory is not None:
        if args.service != "http":
            parser.error("--directory applies only to --service http")
        if not os.path.isdir(args.directory):
            parser.error(f"--directory {args.directory!r} is not a directory")


def _verifier(args: argparse.Namespace) -> Verifier[object, object]:
    """The admission policy of --deny and --allow (AddressError on a bad CIDR)."""
    parts: list[Verifier[object, object]] = []
    if args.deny:
        parts.append(deny_networks(*args.deny))
    if args.allow:
        parts.append(allow_networks(*args.allow))
    if not parts:
        return AllowAll()
    return parts[0] if len(parts) == 1 else all_of(*parts)


def _stream_transport(args: argparse.Namespace) -> Transport[socket.socket, Address]:
    transport: Transport[socket.socket, Address]
    if args.transport == "tcp":
        transport = TCPTransport((args.host or DEFAULT_HOST, DEFAULT_PORT if args.port is None else args.port))
    else:
        transport = UnixStreamTransport(args.path)
    if args.proxy_protocol is not None:
        transport = ProxyProtocolTransport(transport, mode=args.proxy_protocol, trusted=_proxy_trust(args))
    return transport


def _proxy_trust(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(args.proxy_trust) or DEFAULT_TRUSTED


def _datagram_acceptor(args: argparse.Namespace) -> Acceptor[DatagramRequest, Address]:
    if args.proxy_protocol is not None:
        return ProxyProtocolDatagramAcceptor(trusted=_proxy_trust(args))
    return DatagramAcceptor()


def _client_from_header(handler: HandlerFactory[socket.socket, Address]) -> HandlerFactory[socket.socket, Address]:
    """*handler*, called with the client a PROXY header names (the request
    log's debug line and the service see it), until the server's request
    path does this itself."""

    def call(request: socket.socket, client_address: Address, server: object) -> object:
        return handler(request, proxied_client_address(request, client_address), server)

    return call


def _datagram_transport(args: argparse.Namespace) -> Transport[DatagramRequest, Address]:
    if args.transport == "udp":
        return UDPTransport((args.host or DEFAULT_HOST, DEFAULT_PORT if args.port is None else args.port))
    return UnixDatagramTransport(args.path)


def _stream_log(args: argparse.Namespace) -> RequestLog[socket.socket]:
    if args.service == "http":
        return RequestLog(http_handler(os.path.abspath(args.directory or os.getcwd())), args.service)
    return RequestLog(STREAM_SERVICES[args.service], args.service)


def _assemble(
    transport: Transport[RequestT, Address],
    acceptor: Acceptor[RequestT, Address],
    handler: HandlerFactory[RequestT, Address],
    verifier: Verifier[object, object],
    dispatcher: Dispatcher,
    *,
    bind_and_activate: bool = True,
) -> Server[RequestT, Address]:
    return Server(
        transport=transport,
        acceptor=acceptor,
        handler=handler,
        verifier=verifier,
        dispatcher=dispatcher,
        error_policy=LoggingErrorPolicy(),
        bind_and_activate=bind_and_activate,
    )


def build_server(
    args: argparse.Namespace,
) -> tuple[AnyServer, RequestLog[socket.socket] | RequestLog[DatagramRequest]]:
    """Build, bind and activate the server the options describe.

    Raises:
        AddressError: a bad address, path or CIDR.
        BindError: the address cannot be bound.
    """
    verifier = _verifier(args)
    dispatcher = DISPATCHERS[args.dispatch]()
    if args.transport in STREAM_TRANSPORTS:
        stream_log = _stream_log(args)
        handler = _client_from_header(stream_log)
        return _assemble(_stream_transport(args), StreamAcceptor(), handler, verifier, dispatcher), stream_log
    datagram_log = RequestLog(DATAGRAM_SERVICES[args.service], args.service)
    datagram = _assemble(_datagram_transport(args), _datagram_acceptor(args), datagram_log, verifier, dispatcher)
    return datagram, datagram_log


AnyPrefork: TypeAlias = "Prefork[socket.socket, Address] | Prefork[DatagramRequest, Address]"


def _worker_factory(
    acceptor: Acceptor[RequestT, Address], handler: HandlerFactory[RequestT, Address], verifier: Verifier[object, object]
) -> Callable[[Transport[RequestT, Address]], Server[RequestT, Address]]:
    """What each prefork worker calls to build its server on the inherited socket."""

    def make(transport: Transport[RequestT, Address]) -> Server[RequestT, Address]:
        return _assemble(transport, acceptor, handler, verifier, PREFORK_POOL(), bind_and_activate=False)

    return make


def build_prefork(args: argparse.Namespace) -> AnyPrefork:
    """Build and bind a prefork supervisor: ``--workers`` processes, each a
    server with its own pool (:data:`PREFORK_POOL`) on the shared socket.

    Raises:
        AddressError: a bad address, path or CIDR.
        BindError: the address cannot be bound.
    """
    verifier = _verifier(args)  # checked (and CIDRs parsed) in the parent
    workers = args.workers or DEFAULT_WORKERS
    if args.transport in STREAM_TRANSPORTS:
        make_stream = _worker_factory(StreamAcceptor(), _client_from_header(_stream_log(args)), verifier)
        return Prefork(_stream_transport(args), make_stream, workers, drain_timeout=args.grace)
    datagram_log = RequestLog(DATAGRAM_SERVICES[args.service], args.service)
    make_datagram = _worker_factory(_datagram_acceptor(args), datagram_log, verifier)
    return Prefork(_datagram_transport(args), make_datagram, workers, drain_timeout=args.grace)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    _check_usage(parser, args)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.dispatch == "prefork":
        return _serve_prefork(parser, args)
    try:
        server, request_log = build_server(args)
    except AddressError as exc:
        parser.error(_one_line(exc))
    except OSError as exc:
        # BindError names the address and the reason (in use, permission
        # denied, unknown host); anything else from the OS is shown as it is.
        reason = str(exc) if isinstance(exc, BindError) else f"{type(exc).__name__}: {exc}"
        print(f"{PROG}: error: {' '.join(reason.split())}", file=sys.stderr)
        return 1
    return _run(server, request_log, args)


def _serve_prefork(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        prefork = build_prefork(args)
    except AddressError as exc:
        parser.error(_one_line(exc))
    except OSError as exc:
        reason = str(exc) if isinstance(exc, BindError) else f"{type(exc).__name__}: {exc}"
        print(f"{PROG}: error: {' '.join(reason.split())}", file=sys.stderr)
        return 1
    with prefork:
        _logger.info(
            "listening on %s %s (service %s, dispatch prefork, %d workers, pid %d)",
            args.transport,
            format_address(prefork.server_address),
            args.service,
            prefork.workers,
            os.getpid(),
        )
        try:
            # In the main thread: SIGTERM/SIGINT stop every worker, each
            # draining its requests for up to --grace seconds.
            prefork.serve_forever()
        except RestartLimitError as exc:
            _logger.error("%s", exc)
            return 1
    _logger.info("stopped")
    return 0


def _run(
    server: AnyServer, request_log: RequestLog[socket.socket] | RequestLog[DatagramRequest], args: argparse.Namespace
) -> int:
    wake_r, wake_w = os.pipe()
    received: list[int] = []
    crashed: list[BaseException] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        os.write(wake_w, b"s")

    def serve() -> None:
        try:
            server.serve_forever()
        except BaseException as exc:
            crashed.append(exc)
            _logger.exception("the server loop failed")
        finally:
            os.write(wake_w, b"x")

    # The kernel may deliver a signal to any thread; the Python handler runs
    # only in the main thread, and only once it runs bytecode.  The wakeup fd
    # makes the C-level handler write a byte whichever thread it interrupts,
    # so the main thread, blocked reading the pipe, always wakes up.
    os.set_blocking(wake_w, False)
    previous_wakeup_fd = signal.set_wakeup_fd(wake_w)
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    loop = threading.Thread(target=serve, name="serve_forever", daemon=True)
    threads = [loop]
    try:
        loop.start()
        _logger.info(
            "listening on %s %s (service %s, dispatch %s, pid %d)",
            args.transport,
            format_address(server.server_address),
            args.service,
            args.dispatch,
            os.getpid(),
        )
        # Until the handler has run (b"s") or the loop has ended (b"x"); the
        # wakeup fd's signal-number byte may come first.
        while not any(byte in b"sx" for byte in os.read(wake_r, 64)):
            pass
        if crashed or not received:
            return 1
        name = signal.Signals(received[0]).name
        _logger.info("%s: stopping; waiting up to %g s for requests in flight", name, args.grace)
        return _drain(server, request_log, threads, args.grace, wake_r, wake_w)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(previous_wakeup_fd)
        if not loop.is_alive():
            # Not while the loop runs: server_close() would wait for it.
            server.server_close()
        if not any(thread.is_alive() for thread in threads):
            # A thread still running writes to the pipe when it ends.
            os.close(wake_r)
            os.close(wake_w)


def _drain(
    server: AnyServer,
    request_log: RequestLog[socket.socket] | RequestLog[DatagramRequest],
    threads: list[threading.Thread],
    grace: float,
    wake_r: int,
    wake_w: int,
) -> int:
    reports: list[str] = []

    def drain() -> None:
        try:
            report = server.drain(grace)
            if not report.finished:
                cut = ", ".join(map(format_address, report.cut))
                reports.append(f"cut {len(report.cut)} request(s) at the deadline: {cut}")
        finally:
            os.write(wake_w, b"d")

    loop = threads[0]
    helper = threading.Thread(target=drain, name="drain", daemon=True)
    threads.append(helper)
    helper.start()
    # drain() bounds its own wait, except for a request running in the
    # serving thread (sync dispatch): shutdown() waits for it.  Bound that
    # too, and let a second signal cut the requests in flight at once.
    deadline = time.monotonic() + grace + 0.5
    forced = drained = False
    while not (forced or drained):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if select.select([wake_r], [], [], remaining)[0]:
            # b"d": drained, b"x": the loop ended; anything else is a signal
            # (b"s" from the handler, or the signal number from the wakeup fd).
            data = os.read(wake_r, 64)
            forced, drained = any(byte not in b"dx" for byte in data), b"d" in data
    if drained:
        helper.join(5.0)  # it has written its last byte and is returning
    if helper.is_alive():
        if forced:
            _logger.warning("second signal: cutting the requests in flight now")
        cut = request_log.cut()
        if cut:
            reports.append(f"cut {cut} connection(s) still open")
        helper.join(0.5 if forced else 5.0)
    for line in reports:
        _logger.warning("grace period over: %s", line)
    # shutdown() returns when serve_forever() has; the thread ends just after.
    loop.join(1.0)
    if loop.is_alive():
        _logger.error("the server loop did not stop; exiting anyway")
        return 1
    if forced:
        _logger.info("stopped without waiting for every request")
        return 1
    _logger.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(parser, args)
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo(requests=args.requests, timeout=args.timeout)
    parser.print_help(sys.stderr)
    return 2
