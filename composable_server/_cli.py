"""The command line: ``python -m composable_server serve|demo``.

The options and their checks are in :mod:`composable_server._cliparse`;
:func:`composable_server.__main__.main` imports this module only once the
arguments are good.  This one assembles and runs the server.

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
   rest (threads: their sockets are shut down; children: SIGTERM).  A stream
   listener is closed first, once the connections already in the kernel's
   backlog are taken: from then on a connect is refused (a load balancer
   retries it on another instance) instead of waiting, unserved, in a
   backlog that the exit resets.
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

Operations (``composable_server.systemd``): ``--systemd`` serves on a socket
passed by systemd; when ``NOTIFY_SOCKET`` is set, ``READY=1`` (with a
``STATUS=`` line) is sent once the loop runs, ``STOPPING=1`` when a stop
begins, and ``WATCHDOG=1`` from the serving loop itself while it turns.  The
order at start is: bind (or inherit), write ``--pid-file``, drop privileges
(``--user``/``--group``), serve, notify.  Prefork reloads (SIGHUP,
SIGUSR2, SIGTTIN/SIGTTOU, ``--max-requests``) are the supervisor's: see
:mod:`composable_server.prefork`; a re-executed generation finds the socket
its predecessor handed over through the same activation variables.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Final, TypeAlias, TypeVar

from ._services import (
    DATAGRAM_SERVICES,
    MAX_LINE,
    RequestLog,
    format_address,
    http_handler,
    line_service,
    lines_service,
)
from ._cliparse import DEFAULT_HOST, DEFAULT_PORT, PROG, STREAM_TRANSPORTS, UNIX_TRANSPORTS, _one_line, build_parser
from ._modes import DISPATCHERS, PREFORK_POOL
from .acceptors import DatagramAcceptor, StreamAcceptor
from .dispatchers import ThreadingDispatcher, ThreadPoolDispatcher
from .exceptions import AddressError, BindError
from .interfaces import (
    Acceptor,
    Address,
    DatagramRequest,
    Dispatcher,
    HandlerFactory,
    Observer,
    TimeoutPolicy,
    Transport,
    Verifier,
)
from .observers import AccessLog
from .policies import DEFAULT_BUDGET, Budget, ConnectionTimeouts, LoggingErrorPolicy
from .prefork import (
    DEFAULT_WORKERS,
    READY_FD_VARIABLE,
    Prefork,
    RecyclingDispatcher,
    RestartLimitError,
    _refuse_new_connections,
    _take_backlog,
)
from .proxy import (
    DEFAULT_TRUSTED,
    ProxyProtocolDatagramAcceptor,
    ProxyProtocolTransport,
)
from .server import Server
from .systemd import HeartbeatDispatcher, Notifier, WatchdogHeartbeat
from .transports import TCPTransport, TLSTransport, UDPTransport, UnixDatagramTransport, UnixStreamTransport
from .verifiers import AllowAll, all_of, allow_networks, deny_networks

__all__ = ("build_parser", "build_prefork", "build_server")

_logger = logging.getLogger("composable_server.cli")

# A prefork worker is gone within its drain timeout (--grace) + 1 s, whatever
# its handlers do (prefork._EXIT_MARGIN); the supervisor SIGKILLs only after that.
_STOP_MARGIN: Final = 2.0

RequestT = TypeVar("RequestT")

AnyServer: TypeAlias = "Server[socket.socket, Address] | Server[DatagramRequest, Address]"


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
    plain: Transport[socket.socket, Address]
    backlog = {} if args.backlog is None else {"backlog": args.backlog}
    if args.inherited is not None:
        plain = args.inherited
    elif args.transport == "tcp":
        plain = TCPTransport((args.host or DEFAULT_HOST, DEFAULT_PORT if args.port is None else args.port), **backlog)
    else:
        plain = UnixStreamTransport(args.path, **backlog)
    transport = plain if args.certfile is None else TLSTransport(plain, args.tls_context)
    if args.proxy_protocol is not None:
        # The header comes first on the wire: the PROXY layer reads it, then
        # hands the connection to the TLS handshake (if any) below it.
        transport = ProxyProtocolTransport(transport, mode=args.proxy_protocol, trusted=_proxy_trust(args))
    return transport


def _proxy_trust(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(args.proxy_trust) or DEFAULT_TRUSTED


def _datagram_acceptor(args: argparse.Namespace) -> Acceptor[DatagramRequest, Address]:
    if args.proxy_protocol is not None:
        return ProxyProtocolDatagramAcceptor(trusted=_proxy_trust(args))
    return DatagramAcceptor()


def _datagram_transport(args: argparse.Namespace) -> Transport[DatagramRequest, Address]:
    if args.inherited is not None:
        inherited: Transport[DatagramRequest, Address] = args.inherited
        return inherited
    if args.transport == "udp":
        return UDPTransport((args.host or DEFAULT_HOST, DEFAULT_PORT if args.port is None else args.port))
    return UnixDatagramTransport(args.path)


def _stream_log(args: argparse.Namespace) -> RequestLog[socket.socket]:
    if args.service == "http":
        return RequestLog(http_handler(os.path.abspath(args.directory or os.getcwd()), park=args.park), args.service)
    if args.service == "lines":
        return RequestLog(lines_service(args.max_line or MAX_LINE, park=args.park), args.service)
    return RequestLog(line_service(args.service, args.max_line or MAX_LINE), args.service)


def _dispatcher(args: argparse.Namespace, heartbeat: WatchdogHeartbeat | None = None) -> Dispatcher:
    """--dispatch (and --threads), beating *heartbeat* from the serving loop if given."""
    if args.threads is not None and args.dispatch == "pool":
        dispatcher: Dispatcher = ThreadPoolDispatcher(args.threads, daemon=True)
    else:
        dispatcher = DISPATCHERS[args.dispatch]()
    return dispatcher if heartbeat is None else HeartbeatDispatcher(dispatcher, heartbeat)


def _timeout_policy(args: argparse.Namespace) -> TimeoutPolicy | None:
    """The budgets of --first-byte-timeout, --idle-timeout and --lifetime (None: the default)."""
    if args.first_byte_timeout is None and args.idle_timeout is None and args.lifetime is None:
        return None
    idle = DEFAULT_BUDGET.idle if args.idle_timeout is None else args.idle_timeout
    return ConnectionTimeouts(Budget(first_byte=args.first_byte_timeout, idle=idle, lifetime=args.lifetime))


def _assemble(
    transport: Transport[RequestT, Address],
    acceptor: Acceptor[RequestT, Address],
    handler: HandlerFactory[RequestT, Address],
    verifier: Verifier[object, object],
    dispatcher: Dispatcher,
    *,
    bind_and_activate: bool = True,
    timeout_policy: TimeoutPolicy | None = None,
    observers: Sequence[Observer] = (),
) -> Server[RequestT, Address]:
    return Server(
        transport=transport,
        acceptor=acceptor,
        handler=handler,
        verifier=verifier,
        dispatcher=dispatcher,
        error_policy=LoggingErrorPolicy(),
        timeout_policy=timeout_policy,
        bind_and_activate=bind_and_activate,
        observers=observers,
    )


def build_server(
    args: argparse.Namespace, *, heartbeat: WatchdogHeartbeat | None = None
) -> tuple[AnyServer, RequestLog[socket.socket] | RequestLog[DatagramRequest]]:
    """Build, bind and activate the server the options describe (after
    :func:`~composable_server._cliparse.check_usage` has resolved them); *heartbeat* is beaten by its loop.

    Raises:
        AddressError: a bad address, path or CIDR.
        BindError: the address cannot be bound.
    """
    verifier = _verifier(args)
    dispatcher = _dispatcher(args, heartbeat)
    if args.transport in STREAM_TRANSPORTS:
        stream_log = _stream_log(args)
        stream = _stream_transport(args)
        server = _assemble(
            stream,
            StreamAcceptor(),
            stream_log,
            verifier,
            dispatcher,
            timeout_policy=_timeout_policy(args),
            bind_and_activate=False,
            observers=_bind_for_observers(args, stream),
        )
        _activate(server)
        return server, stream_log
    datagram_log = RequestLog(DATAGRAM_SERVICES[args.service], args.service)
    transport = _datagram_transport(args)
    datagram = _assemble(
        transport,
        _datagram_acceptor(args),
        datagram_log,
        verifier,
        dispatcher,
        bind_and_activate=False,
        observers=_bind_for_observers(args, transport),
    )
    _activate(datagram)
    return datagram, datagram_log


def _bind_for_observers(args: argparse.Namespace, transport: Transport[RequestT, Address]) -> list[Observer]:
    """Bind *transport* (the metrics are labelled with the bound address)
    and return the observers of --metrics and --access-log."""
    try:
        transport.bind()
    except BaseException:
        transport.close()
        raise
    return _observers(args, transport)


def _activate(server: Server[RequestT, Address]) -> None:
    """The rest of a bound transport's Server construction: record the address, listen."""
    try:
        server.server_address = server.transport.server_address
        server.server_activate()
    except BaseException:
        server.server_close()
        raise


def _observers(
    args: argparse.Namespace, transport: Transport[RequestT, Address], *, worker: bool = False
) -> list[Observer]:
    """The observers of --metrics and --access-log for a server on *transport*
    (*worker*: in a prefork worker, whose metrics reach the scrape through
    the multiprocess files, not a registry)."""
    observers: list[Observer] = []
    if args.metrics is not None:
        from .metrics import MetricsObserver  # the optional extra: imported only when asked for

        labels = {"transport": args.transport, "address": format_address(transport.server_address)}
        tls = args.certfile is not None
        if worker:
            observers.append(MetricsObserver(**labels, tls=tls, registry=None))
        else:
            observers.append(MetricsObserver(**labels, tls=tls))
    if args.access_log:
        observers.append(AccessLog(format_address=format_address))
    return observers


AnyPrefork: TypeAlias = "Prefork[socket.socket, Address] | Prefork[DatagramRequest, Address]"


def _worker_factory(
    acceptor: Acceptor[RequestT, Address],
    handler: HandlerFactory[RequestT, Address],
    verifier: Verifier[object, object],
    args: argparse.Namespace | None = None,
) -> Callable[[Transport[RequestT, Address]], Server[RequestT, Address]]:
    """What each prefork worker calls to build its server on the inherited socket."""
    threads = None if args is None else args.threads
    timeout_policy = None if args is None else _timeout_policy(args)
    max_requests = None if args is None else args.max_requests
    jitter = 0 if args is None else args.max_requests_jitter

    def make(transport: Transport[RequestT, Address]) -> Server[RequestT, Address]:
        pool = PREFORK_POOL() if threads is None else ThreadPoolDispatcher(threads, daemon=True)
        if max_requests is not None:
            pool = RecyclingDispatcher(pool, max_requests, jitter)  # the jitter is drawn in each worker
        return _assemble(
            transport,
            acceptor,
            handler,
            verifier,
            pool,
            bind_and_activate=False,
            timeout_policy=timeout_policy,
            observers=() if args is None else _observers(args, transport, worker=True),
        )

    return make


def build_prefork(args: argparse.Namespace, *, notifier: Notifier | None = None) -> AnyPrefork:
    """Build and bind a prefork supervisor: ``--workers`` processes, each a
    server with its own pool (:data:`PREFORK_POOL`) on the shared socket.

    Raises:
        AddressError: a bad address, path or CIDR.
        BindError: the address cannot be bound.
    """
    verifier = _verifier(args)  # checked (and CIDRs parsed) in the parent
    workers = args.workers or DEFAULT_WORKERS
    supervisor_observers: list[Observer] = []
    directory = os.environ.get(_MULTIPROC_DIR)
    if args.metrics is not None and directory:
        from .metrics import WorkerReaper

        supervisor_observers.append(WorkerReaper(directory))
    # SIGUSR2 runs this same command line again, on the handed-over socket.
    reexec_argv = (sys.executable, *sys.orig_argv[1:])
    if args.transport in STREAM_TRANSPORTS:
        make_stream = _worker_factory(StreamAcceptor(), _stream_log(args), verifier, args)
        return Prefork(
            _stream_transport(args),
            make_stream,
            workers,
            drain_timeout=args.grace,
            stop_timeout=args.grace + _STOP_MARGIN,
            notifier=notifier,
            reexec_argv=reexec_argv,
            observers=supervisor_observers,
        )
    datagram_log = RequestLog(DATAGRAM_SERVICES[args.service], args.service)
    make_datagram = _worker_factory(_datagram_acceptor(args), datagram_log, verifier, args)
    return Prefork(
        _datagram_transport(args),
        make_datagram,
        workers,
        drain_timeout=args.grace,
        stop_timeout=args.grace + _STOP_MARGIN,
        notifier=notifier,
        reexec_argv=reexec_argv,
        observers=supervisor_observers,
    )


class _PidFile:
    """--pid-file: written (atomically) once bound, removed on exit if it still holds our pid."""

    def __init__(self, path: str | None) -> None:
        self.path = None if path is None else os.path.abspath(path)
        self.pid = os.getpid()

    def write(self) -> None:
        if self.path is None:
            return
        temporary = f"{self.path}.{self.pid}.tmp"
        with open(temporary, "w", encoding="ascii") as file:
            file.write(f"{self.pid}\n")
        os.replace(temporary, self.path)

    def remove(self) -> None:
        if self.path is None or os.getpid() != self.pid:
            return
        try:
            with open(self.path, encoding="ascii") as file:
                if file.read().strip() != str(self.pid):
                    return  # another server's now
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            # E.g. the directory is root's and we dropped privileges.
            _logger.warning("cannot remove the pid file %s: %s", self.path, exc.strerror)


def _drop_privileges(args: argparse.Namespace, address: object) -> None:
    """--user/--group, after binding: the groups, the gid, then the uid (this
    order: once the uid is dropped, the gid can no longer be changed).

    Raises:
        OSError: not permitted (only root may switch to another user).
    """
    uid, gid = args.uid, args.gid
    if uid is None and gid is None:
        return
    if args.inherited is None and args.transport in UNIX_TRANSPORTS and isinstance(address, str):
        # The socket file we created belongs to root: hand it to the new
        # owner, so that its clients may connect and it may remove the file.
        os.chown(address, -1 if uid is None else uid, -1 if gid is None else gid)
    if gid is not None:
        if os.geteuid() == 0:
            if uid is not None:
                os.initgroups(args.user, gid)  # the user's supplementary groups
            else:
                os.setgroups([])
        os.setgid(gid)
    if uid is not None:
        os.setuid(uid)
    _logger.info("running as uid %d, gid %d", os.getuid(), os.getgid())


def _after_bind(args: argparse.Namespace, address: object) -> _PidFile:
    """Write the pid file, then drop privileges; return the pid file to remove on exit.

    Raises:
        OSError: the pid file cannot be written, or privileges cannot be dropped.
    """
    pid_file = _PidFile(args.pid_file)
    pid_file.write()
    try:
        _drop_privileges(args, address)
    except OSError:
        pid_file.remove()
        raise
    return pid_file


def _status(args: argparse.Namespace, address: object, workers: str = "") -> str:
    source = "passed by systemd " if args.inherited is not None else ""
    tls = "+tls" if args.certfile is not None else ""
    return (
        f"listening on {args.transport}{tls} {source}{format_address(address)} "
        f"(service {args.service}, dispatch {args.dispatch}{workers})"
    )


def _os_failure(exc: OSError) -> int:
    # BindError names the address and the reason (in use, permission
    # denied, unknown host); anything else from the OS is shown as it is.
    reason = str(exc) if isinstance(exc, BindError) else f"{type(exc).__name__}: {exc}"
    print(f"{PROG}: error: {' '.join(reason.split())}", file=sys.stderr)
    return 1


_MULTIPROC_DIR: Final = "PROMETHEUS_MULTIPROC_DIR"


def _start_metrics(args: argparse.Namespace, listener: Callable[[], socket.socket | None], address: object) -> AnyServer | None:
    """--metrics: serve ``/metrics`` on a server of our own, in a daemon
    thread; None without --metrics.  With ``PROMETHEUS_MULTIPROC_DIR`` set
    (prefork), the scrape collects every process's files.

    Raises:
        BindError: the metrics address cannot be bound.
    """
    if args.metrics is None:
        return None
    from prometheus_client import REGISTRY

    from .metrics import QueueDepthCollector, metrics_handler, multiprocess_registry

    directory = os.environ.get(_MULTIPROC_DIR)
    registry = multiprocess_registry(directory) if directory else REGISTRY
    registry.register(QueueDepthCollector(listener, transport=args.transport, address=format_address(address)))
    server: Server[socket.socket, Address] = Server(
        transport=TCPTransport(args.metrics),
        acceptor=StreamAcceptor(),
        handler=metrics_handler(registry),
        dispatcher=ThreadingDispatcher(daemon=True),
        error_policy=LoggingErrorPolicy(),
    )
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    _logger.info("metrics on http://%s/metrics", format_address(server.server_address))
    return server


def _stop_metrics(server: AnyServer | None) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()


def _listening_socket(owner: AnyServer | AnyPrefork) -> Callable[[], socket.socket | None]:
    """The listening socket of *owner*'s transport, or None once closed (for the queue-depth scrape)."""

    def get() -> socket.socket | None:
        transport = owner.transport
        return None if transport.fileno() < 0 else transport.socket

    return get


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``serve``, once :func:`composable_server.__main__.main` has checked the arguments."""
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    notifier = Notifier.from_environment()
    ready_fd = os.environ.pop(READY_FD_VARIABLE, None)
    if ready_fd is not None and ready_fd.isdigit():
        notifier.ready_fd = int(ready_fd)  # our predecessor waits for "ready" on it
        os.set_inheritable(notifier.ready_fd, False)
    if args.dispatch == "prefork":
        return _serve_prefork(parser, args, notifier)
    heartbeat = notifier.heartbeat()
    try:
        server, request_log = build_server(args, heartbeat=heartbeat)
    except AddressError as exc:
        parser.error(_one_line(exc))
    except OSError as exc:
        # BindError names the address and the reason (in use, permission
        # denied, unknown host); anything else from the OS is shown as it is.
        return _os_failure(exc)
    try:
        metrics = _start_metrics(args, _listening_socket(server), server.server_address)
        pid_file = _after_bind(args, server.server_address)
    except OSError as exc:
        server.server_close()
        return _os_failure(exc)
    try:
        return _run(server, request_log, args, notifier, heartbeat)
    finally:
        _stop_metrics(metrics)
        pid_file.remove()
        notifier.close()


def _serve_prefork(parser: argparse.ArgumentParser, args: argparse.Namespace, notifier: Notifier) -> int:
    own_directory = None
    if args.metrics is not None and not os.environ.get(_MULTIPROC_DIR):
        # Before prometheus_client is imported: it picks its value class then.
        own_directory = os.environ[_MULTIPROC_DIR] = tempfile.mkdtemp(prefix="composable-server-metrics-")
    try:
        return _serve_prefork_metrics(parser, args, notifier)
    finally:
        if own_directory is not None:
            shutil.rmtree(own_directory, ignore_errors=True)


def _serve_prefork_metrics(parser: argparse.ArgumentParser, args: argparse.Namespace, notifier: Notifier) -> int:
    try:
        prefork = build_prefork(args, notifier=notifier)
    except AddressError as exc:
        parser.error(_one_line(exc))
    except OSError as exc:
        return _os_failure(exc)
    try:
        metrics = _start_metrics(args, _listening_socket(prefork), prefork.server_address)
    except OSError as exc:
        prefork.close()
        return _os_failure(exc)
    try:
        return _serve_prefork_signals(args, notifier, prefork)
    finally:
        _stop_metrics(metrics)


def _serve_prefork_signals(args: argparse.Namespace, notifier: Notifier, prefork: AnyPrefork) -> int:
    # Until serve_forever() installs its own handlers: a signal after the
    # startup line (scripts wait for it, then may signal at once) is acted
    # on, instead of killing the process (SIGTERM/SIGINT: serve_forever()
    # returns at once; SIGHUP, SIGTTIN, SIGTTOU: done once it runs).
    actions: dict[signal.Signals, Callable[[], None]] = {
        signal.SIGTERM: prefork.stop,
        signal.SIGINT: prefork.stop,
        signal.SIGHUP: prefork.reload,
        signal.SIGTTIN: prefork.add_worker,
        signal.SIGTTOU: prefork.remove_worker,
        signal.SIGUSR2: prefork.reexec,
    }
    early = {sig: signal.signal(sig, lambda signum, frame: actions[signal.Signals(signum)]()) for sig in actions}
    try:
        with prefork:
            pid_file = _after_bind(args, prefork.server_address)
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
            finally:
                pid_file.remove()
    except RestartLimitError as exc:
        _logger.error("%s", exc)
        return 1
    except OSError as exc:  # from _after_bind: the pid file, or dropping privileges
        return _os_failure(exc)
    finally:
        for sig, handler in early.items():
            signal.signal(sig, handler)
        notifier.close()
    _logger.info("handed over to the new generation; stopped" if prefork.handed_over else "stopped")
    return 0


def _run(
    server: AnyServer,
    request_log: RequestLog[socket.socket] | RequestLog[DatagramRequest],
    args: argparse.Namespace,
    notifier: Notifier | None = None,
    heartbeat: WatchdogHeartbeat | None = None,
) -> int:
    # The loop beats the watchdog from service_actions(), at least every
    # poll_interval: keep that well inside the ping interval.
    poll_interval = 0.5 if heartbeat is None else min(0.5, heartbeat.interval / 4)
    wake_r, wake_w = os.pipe()
    received: list[int] = []
    crashed: list[BaseException] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        os.write(wake_w, b"s")

    def serve() -> None:
        try:
            server.serve_forever(poll_interval)
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
        if notifier is not None:
            notifier.ready(_status(args, server.server_address))
        # Until the handler has run (b"s") or the loop has ended (b"x"); the
        # wakeup fd's signal-number byte may come first.
        while not any(byte in b"sx" for byte in os.read(wake_r, 64)):
            pass
        if crashed or not received:
            return 1
        name = signal.Signals(received[0]).name
        _logger.info("%s: stopping; waiting up to %g s for requests in flight", name, args.grace)
        if notifier is not None:
            notifier.stopping(f"{name}: stopping; waiting up to {args.grace:g} s for requests in flight")
        stream = args.transport in STREAM_TRANSPORTS
        return _drain(server, request_log, threads, args.grace, wake_r, wake_w, close_listener=stream)
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


def _close_listener(server: AnyServer) -> None:
    """Serve the connections waiting in the listener's backlog, then close it.

    Called once the loop has stopped (see :func:`~composable_server.prefork._take_backlog`).
    A TCP listener bound here takes no further connection first
    (:func:`~composable_server.prefork._refuse_new_connections`), so none
    completes between the last accept and the close, to be reset by it.
    """
    _refuse_new_connections(server.transport)
    taken = _take_backlog(server.fileno(), server._handle_request_noblock)  # noqa: SLF001  # see _take_backlog
    server.transport.close()
    _logger.debug("listener closed; %d connection(s) taken from its backlog first", taken)


def _drain(
    server: AnyServer,
    request_log: RequestLog[socket.socket] | RequestLog[DatagramRequest],
    threads: list[threading.Thread],
    grace: float,
    wake_r: int,
    wake_w: int,
    *,
    close_listener: bool = False,
) -> int:
    reports: list[str] = []

    def drain() -> None:
        try:
            if close_listener:
                _logger.debug("stopping the loop; then the listener closes, once its backlog is taken")
                server.shutdown()  # bounded by the wait below: at the deadline, the cut frees the loop
                _close_listener(server)
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
