"""The machinery behind :mod:`composable_server.pytest_plugin`.

Kept apart from the plugin module, which pytest imports in every run of
everyone who installs the package: this module (attrs, the engine, sockets)
is imported only when a test asks for a fixture that needs it.

Theory of operation
-------------------

``serve(...)`` wraps a server in a :class:`Served` handle and runs
``serve_forever`` in a daemon thread.  Errors are captured at one seam:
the *instance* attribute ``handle_error`` shadows the server's method, so
everything that reaches ``handle_error`` is seen, whichever ErrorPolicy a
native server has and whatever a compat subclass's override does; the
original is called afterwards, so the error is still reported as usual.

A handler run in a forked child (``ForkingDispatcher``, compat
``ForkingMixIn``) records into a file in a private directory instead (the
child's memory dies with it), written before the child closes the
connection.  Every record also writes one byte to a pipe, so a client waiting
for a datagram reply wakes when the handler failed instead of running into
its timeout.

An error is *reported* once it has been raised in the test (by
:meth:`Served.request`, by the plugin's ``pytest_runtest_call`` wrapper when
the test function returns, or at teardown) or taken with
:meth:`Served.take_errors`; each is reported once.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import pickle
import select
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from socket import socket as Socket
from typing import Final, Generic, Literal, Protocol, TypeAlias, TypeVar, cast, final, overload

import attrs

from .acceptors import DatagramAcceptor, StreamAcceptor
from .interfaces import (
    AcceptErrorPolicy,
    Acceptor,
    DatagramRequest,
    Dispatcher,
    ErrorPolicy,
    HandlerFactory,
    InetAddress,
    Observer,
    TimeoutPolicy,
    Transport,
    UnixAddress,
    Verifier,
)
from .server import DrainReport, Server
from .transports import TCPTransport, UDPTransport, UnixDatagramTransport, UnixStreamTransport

__all__ = (
    "CLIENT_TIMEOUT",
    "DRAIN_TIMEOUT",
    "FreePorts",
    "ServeFactory",
    "Served",
    "TransportKind",
    "check_contracts",
    "live_factories",
)

RequestT = TypeVar("RequestT")
AddressT = TypeVar("AddressT")

TransportKind: TypeAlias = Literal["tcp", "udp", "unix_stream", "unix_datagram"]
"""What ``serve(handler, kind)`` builds: the transport (and its acceptor)."""

CLIENT_TIMEOUT: Final = 10.0
"""Default bound of one client operation of :meth:`Served.request`: a bound
for a broken server, never a synchronisation (shared CI machines are slow)."""

DRAIN_TIMEOUT: Final = 5.0
"""Default seconds :meth:`Served.stop` lets requests in flight finish before
cutting them (then at most :data:`_GRACE` more)."""

_GRACE: Final = 1.0


# sun_path holds 108 bytes on Linux (unix(7)); leave room for the file name.
_MAX_SOCKET_DIR: Final = 90

# Every ServeFactory not yet closed, so the plugin's pytest_runtest_call
# wrapper can raise the errors of servers of any fixture scope in the test
# during which they happened.
_LIVE: list[ServeFactory] = []


def _sockaddr(address: object) -> tuple[object, ...] | str | bytes:
    """*address* as ``socket.connect`` takes it."""
    if isinstance(address, (tuple, str, bytes)):
        return address
    raise TypeError(f"expected a socket address (a tuple, str or bytes), got {address!r}")


def live_factories() -> tuple[ServeFactory, ...]:
    """The :class:`ServeFactory` instances not yet closed, oldest first."""
    return tuple(_LIVE)


def _raise_errors(errors: list[BaseException], origin: str) -> None:
    """Raise *errors*: one as itself, several as an exception group."""
    if not errors:
        return
    if len(errors) == 1:
        raise errors[0]
    exceptions = [exc if isinstance(exc, Exception) else RuntimeError(repr(exc)) for exc in errors]
    raise ExceptionGroup(f"{len(errors)} errors raised by the handlers of {origin}", exceptions)


def _portable(exc: BaseException) -> tuple[bytes, str]:
    """*exc* pickled for the parent process, and its traceback as text (a
    traceback does not pickle); a stand-in if *exc* itself does not pickle."""
    text = f"(raised in the forked child {os.getpid()}:)\n" + "".join(traceback.format_exception(exc))
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
    except Exception:
        data = pickle.dumps(RuntimeError(f"{type(exc).__qualname__} (not picklable): {exc}"))
    return data, text


def _hashable(address: object) -> bool:
    try:
        hash(address)
    except TypeError:
        return False
    return True


@final
@attrs.define(eq=False, repr=False)
class Served(Generic[RequestT, AddressT]):
    """A server running in a background thread, as ``serve(...)`` returns it.

    Generic over the server's request and address types, so
    ``serve(make_tcp_server(...))`` is a ``Served[socket, InetAddress]``.

    Attributes:
        server: the server being served.
        drain_timeout: seconds :meth:`stop` lets requests in flight finish.
        raise_errors: re-raise handler errors in the test (default); if
            False they are only recorded in :attr:`errors`.
    """

    server: Server[RequestT, AddressT]
    drain_timeout: float = DRAIN_TIMEOUT
    raise_errors: bool = True
    _client_dir: Callable[[], Path] | None = None
    _errors: list[BaseException] = attrs.field(init=False, factory=list)
    _reported: int = attrs.field(init=False, default=0)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _stop_lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _thread: threading.Thread | None = attrs.field(init=False, default=None)
    _pid: int = attrs.field(init=False, factory=os.getpid)
    _pipe: tuple[int, int] = attrs.field(init=False, default=(-1, -1))
    _child_dir: str = attrs.field(init=False, default="")
    _clients: list[Socket] = attrs.field(init=False, factory=list)
    _client_paths: list[Path] = attrs.field(init=False, factory=list)
    _names: Iterator[int] = attrs.field(init=False, factory=itertools.count)
    _report: DrainReport | None = attrs.field(init=False, default=None)
    _finished_counts: dict[object, int] = attrs.field(init=False, factory=dict)
    _shadowed: dict[str, object] = attrs.field(init=False, factory=dict)
    _datagram: bool = attrs.field(init=False, default=False)

    # -- lifecycle ---------------------------------------------------------

    def _start(self) -> None:
        self._pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._child_dir = tempfile.mkdtemp(prefix="composable-server-errors-")
        server = self.server
        try:
            self._datagram = server.transport.socket.type == socket.SOCK_DGRAM
        except TypeError:  # an in-memory transport: no socket, no clients of ours
            pass
        original_finish = server.finish_request
        original_error = server.handle_error
        # The client address of the request whose finish_request just raised
        # in this thread: it counts as finished once its error is recorded.
        local = threading.local()

        def finish_request(request: RequestT, client_address: AddressT) -> None:
            local.failed = None
            try:
                original_finish(request, client_address)
            except BaseException:
                local.failed = (client_address,)
                raise
            self._finished(client_address)

        def handle_error(request: RequestT, client_address: AddressT) -> None:
            # Not called for a request the server cut (drain deadline,
            # lifetime budget): its BrokenPipe is a consequence, not an error.
            exc = sys.exc_info()[1]
            try:
                original_error(request, client_address)
            finally:
                if exc is not None:
                    self._record(exc)
                failed: tuple[object] | None = getattr(local, "failed", None)
                local.failed = None
                if failed is not None:
                    self._finished(failed[0])

        # Instance attributes shadow the methods (mypy forbids assigning a
        # method; setattr states the intent); stop() puts back what was there.
        own = vars(server)
        self._shadowed = {name: own[name] for name in ("finish_request", "handle_error") if name in own}
        setattr(server, "finish_request", finish_request)
        setattr(server, "handle_error", handle_error)
        self._thread = threading.Thread(target=self._serve, name=f"serve {self.address!r}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self.server.serve_forever(poll_interval=0.5)
        except BaseException as exc:  # reported in the test's thread
            self._record(exc)

    def _record(self, exc: BaseException) -> None:
        if os.getpid() == self._pid:
            with self._lock:
                self._errors.append(exc)
        else:
            self._write_child_record(("error", *_portable(exc)))
        self._wake()

    def _finished(self, client_address: object) -> None:
        """Count a datagram request from *client_address* as finished (see
        :meth:`_datagram_exchange`); stream clients see the end as EOF."""
        if not self._datagram or not _hashable(client_address):
            return
        if os.getpid() == self._pid:
            with self._lock:
                self._finished_counts[client_address] = self._finished_counts.get(client_address, 0) + 1
        else:
            self._write_child_record(("finished", client_address))
        self._wake()

    def _write_child_record(self, record: tuple[object, ...]) -> None:
        # A forked child: its memory dies with it.  Write the record whole,
        # then rename it into place, so the parent never reads half of one.
        path = os.path.join(self._child_dir, f"{time.monotonic_ns():020d}-{os.getpid()}-{next(self._names)}")
        with contextlib.suppress(OSError):  # the test is over and the directory gone
            with open(path + ".tmp", "wb") as file:
                pickle.dump(record, file)
            os.replace(path + ".tmp", path + ".pickle")

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (then readable anyway) or closed
            os.write(self._pipe[1], b"!")

    def stop(self) -> DrainReport:
        """Stop serving within a bound, close the server and every client socket.

        Lets requests in flight finish for :attr:`drain_timeout` seconds,
        then cuts them (:meth:`Server.drain`).  Idempotent: a second call
        returns the first call's report.  Does not raise handler errors (the
        test or the fixture teardown does).

        Returns:
            The :class:`~composable_server.server.DrainReport` of the drain.
        """
        with self._stop_lock:
            if self._report is not None:
                return self._report
            # Our clients say they are done (EOF for a handler reading until
            # it), and still receive what the handlers send before finishing.
            for client in self._clients:
                if client.type == socket.SOCK_STREAM:
                    with contextlib.suppress(OSError):
                        client.shutdown(socket.SHUT_WR)
            try:
                report = self.server.drain(self.drain_timeout, grace=_GRACE)
            finally:
                self.server.server_close()
            thread = self._thread
            if thread is not None:
                thread.join(self.drain_timeout + _GRACE)
                if thread.is_alive():
                    self._record(RuntimeError(f"serve_forever of {self.server!r} did not return after drain()"))
            self._collect()
            for name in ("finish_request", "handle_error"):
                vars(self.server).pop(name, None)
            vars(self.server).update(self._shadowed)
            for client in self._clients:
                client.close()
            self._clients.clear()
            for path in self._client_paths:
                path.unlink(missing_ok=True)
            self._client_paths.clear()
            for fd in self._pipe:
                if fd >= 0:
                    os.close(fd)
            self._pipe = (-1, -1)
            shutil.rmtree(self._child_dir, ignore_errors=True)
            self._report = report
            return report

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` has run."""
        return self._report is not None

    # -- errors ------------------------------------------------------------

    def _collect(self) -> None:
        """Empty the wake-up pipe, then take in the records of forked children
        (in this order: a record is written before its wake-up byte)."""
        if self._pipe[0] >= 0:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._pipe[0], 512):
                    pass
        if not self._child_dir or self._report is not None:
            return
        with contextlib.suppress(FileNotFoundError):
            for name in sorted(os.listdir(self._child_dir)):
                if not name.endswith(".pickle"):
                    continue
                path = os.path.join(self._child_dir, name)
                with open(path, "rb") as file:
                    record = pickle.load(file)
                os.unlink(path)
                self._take_child_record(record)

    def _take_child_record(self, record: tuple[object, ...]) -> None:
        with self._lock:
            if record[0] == "finished":
                address = record[1]
                self._finished_counts[address] = self._finished_counts.get(address, 0) + 1
                return
            _, data, text = record
            exc = pickle.loads(cast(bytes, data))
            if not isinstance(exc, BaseException):
                exc = RuntimeError(repr(exc))
            exc.add_note(str(text))
            self._errors.append(exc)

    def _finished_count(self, client_address: object) -> int:
        self._collect()
        with self._lock:
            return self._finished_counts.get(client_address, 0)

    @property
    def errors(self) -> tuple[BaseException, ...]:
        """Every exception a handler raised so far (reported or not), oldest first."""
        self._collect()
        with self._lock:
            return tuple(self._errors)

    def take_errors(self) -> list[BaseException]:
        """The exceptions not reported yet, which are then reported: a test
        that expects a handler to fail takes its error, so it is not raised."""
        self._collect()
        with self._lock:
            new = self._errors[self._reported :]
            self._reported = len(self._errors)
        return new

    def raise_errors_now(self) -> None:
        """Raise the errors not reported yet (nothing if there are none, or
        if :attr:`raise_errors` is False)."""
        if self.raise_errors:
            _raise_errors(self.take_errors(), repr(self.server))

    # -- clients -----------------------------------------------------------

    @property
    def address(self) -> AddressT:
        """The bound address: ``(host, port)`` with the port chosen, or the socket path."""
        return self.server.server_address

    @property
    def is_stream(self) -> bool:
        """Whether the server's socket is a stream socket (TCP, Unix stream)."""
        return self.server.transport.socket.type == socket.SOCK_STREAM

    def connect(self, timeout: float = CLIENT_TIMEOUT) -> Socket:
        """A client socket connected to the server, closed at :meth:`stop` at the latest.

        A datagram client is bound too (a Unix one to a fresh path), so that
        replies reach it.

        Args:
            timeout: the socket's timeout, for every operation.
        """
        listening = self.server.transport.socket
        sock = socket.socket(listening.family, listening.type)
        try:
            sock.settimeout(timeout)
            if listening.type == socket.SOCK_DGRAM and listening.family == socket.AF_UNIX:
                path = self._unix_client_path()
                sock.bind(str(path))
                self._client_paths.append(path)
            sock.connect(_sockaddr(self.address))
        except BaseException:
            sock.close()
            raise
        self._clients.append(sock)
        return sock

    def _unix_client_path(self) -> Path:
        if self._client_dir is None:
            raise RuntimeError(f"{self!r} has no directory for a Unix datagram client socket")
        return self._client_dir() / f"client-{os.getpid()}-{next(self._names)}.sock"

    def request(self, data: bytes, timeout: float = CLIENT_TIMEOUT) -> bytes:
        """Send one request from a fresh client and return the whole reply.

        Stream servers: connect, send *data*, shut down the write side, read
        until the server closes.  Datagram servers: send *data* as one
        datagram, return the first datagram back.

        If a handler raised meanwhile (this request's or another's), that
        exception is raised here instead (unless :attr:`raise_errors` is False).

        Raises:
            TimeoutError: no (complete) reply within *timeout* seconds.
        """
        sock = self.connect(timeout)
        try:
            if sock.type == socket.SOCK_STREAM:
                reply = self._stream_exchange(sock, data)
            else:
                reply = self._datagram_exchange(sock, data, timeout)
        except OSError:
            # A handler that failed may have reset the connection, or never
            # answered: its exception is what the test needs to see.
            self.raise_errors_now()
            raise
        finally:
            sock.close()
            self._clients.remove(sock)
        self.raise_errors_now()
        return reply

    @staticmethod
    def _stream_exchange(sock: Socket, data: bytes) -> bytes:
        # A server may close (or reset) before it has read everything, e.g.
        # a handler that failed at once: the reply is then what arrived.
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:  # shutdown() after the peer's reset
                raise
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    def _datagram_exchange(self, sock: Socket, data: bytes, timeout: float) -> bytes:
        client_address = sock.getsockname()
        finished_before = self._finished_count(client_address)
        sock.send(data)
        deadline = time.monotonic() + timeout
        reply = self._wait_reply(sock, deadline)
        # A datagram handler replies before it returns (DatagramRequestHandler
        # sends in finish(), even when handle() raised): wait until the server
        # is done with this request, so its error, if any, is raised here.
        pipe = select.poll()
        pipe.register(self._pipe[0], select.POLLIN)
        while self._finished_count(client_address) == finished_before:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not pipe.poll(remaining * 1000.0):
                break
        return reply

    def _wait_reply(self, sock: Socket, deadline: float) -> bytes:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        poller.register(self._pipe[0], select.POLLIN)
        while (remaining := deadline - time.monotonic()) > 0:
            if any(fd == sock.fileno() for fd, _ in poller.poll(remaining * 1000.0)):
                return sock.recv(65536)
            # The pipe woke us: a handler failed, or a request finished.
            self._collect()
            self.raise_errors_now()
        raise TimeoutError(errno.ETIMEDOUT, f"no reply from {self.address!r} in time")

    def __repr__(self) -> str:
        state = "stopped" if self.stopped else "serving"
        return f"<Served {self.address!r} {state} [{len(self._errors)} errors]>"


class _Handle(Protocol):
    """What a factory needs of the handles it made (any type arguments)."""

    raise_errors: bool

    @property
    def stopped(self) -> bool: ...

    def stop(self) -> DrainReport: ...

    def take_errors(self) -> list[BaseException]: ...



@final
@attrs.define(eq=False, repr=False)
class ServeFactory:
    """The ``serve`` fixture: runs servers in background threads for one test
    (``serve_session``: for the whole session) and stops them afterwards.

    Annotate the fixture argument with this class: ``def test_x(serve: ServeFactory) -> None``.
    """

    _directory: Callable[[], Path]
    scope: str = "function"
    _handles: list[_Handle] = attrs.field(init=False, factory=list)
    _dir: Path | None = attrs.field(init=False, default=None)
    _names: Iterator[int] = attrs.field(init=False, factory=itertools.count)
    _closed: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        _LIVE.append(self)

    def socket_dir(self) -> Path:
        """A directory for Unix socket files, short enough for ``sun_path``
        (``tmp_path_factory.mktemp``; a test's own ``tmp_path`` may be too long)."""
        if self._dir is None:
            directory = self._directory()
            if len(str(directory)) > _MAX_SOCKET_DIR:
                directory = Path(tempfile.mkdtemp(prefix="cs-"))
            self._dir = directory
        return self._dir

    def unix_path(self) -> str:
        """A fresh Unix socket path (nothing exists there yet)."""
        return str(self.socket_dir() / f"s{next(self._names)}.sock")

    @overload
    def __call__(
        self, server: Server[RequestT, AddressT], /, *, drain_timeout: float = ..., raise_errors: bool = ...
    ) -> Served[RequestT, AddressT]: ...

    @overload
    def __call__(
        self,
        handler: HandlerFactory[Socket, InetAddress],
        kind: Literal["tcp"] = ...,
        /,
        *,
        host: str = ...,
        dispatcher: Dispatcher | None = ...,
        verifier: Verifier[Socket, InetAddress] | None = ...,
        error_policy: ErrorPolicy | None = ...,
        timeout_policy: TimeoutPolicy | None = ...,
        drain_timeout: float = ...,
        raise_errors: bool = ...,
    ) -> Served[Socket, InetAddress]: ...

    @overload
    def __call__(
        self,
        handler: HandlerFactory[DatagramRequest, InetAddress],
        kind: Literal["udp"],
        /,
        *,
        host: str = ...,
        dispatcher: Dispatcher | None = ...,
        verifier: Verifier[DatagramRequest, InetAddress] | None = ...,
        error_policy: ErrorPolicy | None = ...,
        timeout_policy: TimeoutPolicy | None = ...,
        drain_timeout: float = ...,
        raise_errors: bool = ...,
    ) -> Served[DatagramRequest, InetAddress]: ...

    @overload
    def __call__(
        self,
        handler: HandlerFactory[Socket, UnixAddress],
        kind: Literal["unix_stream"],
        /,
        *,
        dispatcher: Dispatcher | None = ...,
        verifier: Verifier[Socket, UnixAddress] | None = ...,
        error_policy: ErrorPolicy | None = ...,
        timeout_policy: TimeoutPolicy | None = ...,
        drain_timeout: float = ...,
        raise_errors: bool = ...,
    ) -> Served[Socket, UnixAddress]: ...

    @overload
    def __call__(
        self,
        handler: HandlerFactory[DatagramRequest, UnixAddress],
        kind: Literal["unix_datagram"],
        /,
        *,
        dispatcher: Dispatcher | None = ...,
        verifier: Verifier[DatagramRequest, UnixAddress] | None = ...,
        error_policy: ErrorPolicy | None = ...,
        timeout_policy: TimeoutPolicy | None = ...,
        drain_timeout: float = ...,
        raise_errors: bool = ...,
    ) -> Served[DatagramRequest, UnixAddress]: ...

    def __call__(
        self,
        target: Server[RequestT, AddressT] | HandlerFactory[RequestT, AddressT],
        kind: TransportKind = "tcp",
        /,
        *,
        host: str = "127.0.0.1",
        dispatcher: Dispatcher | None = None,
        verifier: Verifier[RequestT, AddressT] | None = None,
        error_policy: ErrorPolicy | None = None,
        timeout_policy: TimeoutPolicy | None = None,
        drain_timeout: float = DRAIN_TIMEOUT,
        raise_errors: bool = True,
    ) -> Served[RequestT, AddressT]:
        """Serve *target* in a background thread until the end of the test.

        Args:
            target: a bound server (native or compat, e.g. on port 0), or a
                handler factory to build one for.
            kind: with a handler, the transport to build: ``"tcp"``
                (default), ``"udp"`` (on *host*, port 0), ``"unix_stream"``,
                ``"unix_datagram"`` (on a fresh path under :meth:`socket_dir`).
            host: the address to bind for ``"tcp"`` and ``"udp"``
                (``"::1"`` for IPv6).
            dispatcher, verifier, error_policy, timeout_policy: components
                of the built server, as :class:`~composable_server.Server`.
            drain_timeout: seconds requests in flight may finish at the end.
            raise_errors: re-raise handler exceptions in the test.

        Returns:
            The running :class:`Served` handle.

        Raises:
            RuntimeError: the factory is closed (its scope ended).
        """
        if self._closed:
            raise RuntimeError(f"serve() called after the end of its {self.scope} scope")
        if isinstance(target, Server):
            server: Server[RequestT, AddressT] = target
        else:
            server = self._build(target, kind, host, dispatcher, verifier, error_policy, timeout_policy)
        served = Served(server, drain_timeout, raise_errors, self.socket_dir)
        try:
            served._start()
        except BaseException:
            served.stop()
            raise
        self._handles.append(served)
        return served

    def _build(
        self,
        handler: HandlerFactory[RequestT, AddressT],
        kind: TransportKind,
        host: str,
        dispatcher: Dispatcher | None,
        verifier: Verifier[RequestT, AddressT] | None,
        error_policy: ErrorPolicy | None,
        timeout_policy: TimeoutPolicy | None,
    ) -> Server[RequestT, AddressT]:
        transport: object
        acceptor: object
        if kind == "tcp":
            transport, acceptor = TCPTransport((host, 0)), StreamAcceptor()
        elif kind == "udp":
            transport, acceptor = UDPTransport((host, 0)), DatagramAcceptor()
        elif kind == "unix_stream":
            transport, acceptor = UnixStreamTransport(self.unix_path()), StreamAcceptor()
        elif kind == "unix_datagram":
            transport, acceptor = UnixDatagramTransport(self.unix_path()), DatagramAcceptor()
        else:
            raise ValueError(f"expected a transport kind 'tcp', 'udp', 'unix_stream' or 'unix_datagram', got {kind!r}")
        # The overloads tie the handler's types to the kind; the pairs above match them.
        return Server(
            transport=cast("Transport[RequestT, AddressT]", transport),
            acceptor=cast("Acceptor[RequestT, AddressT]", acceptor),
            handler=handler,
            verifier=verifier,
            dispatcher=dispatcher,
            error_policy=error_policy,
            timeout_policy=timeout_policy,
        )

    def check(self) -> None:
        """Raise the handler errors of every server not reported yet."""
        errors = [exc for handle in self._handles if handle.raise_errors for exc in handle.take_errors()]
        _raise_errors(errors, f"the servers of `serve` ({self.scope} scope)")

    def close(self) -> None:
        """Stop every server (newest first), then raise the errors not reported yet."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ValueError):
            _LIVE.remove(self)
        for handle in reversed(self._handles):
            handle.stop()
        self.check()


# -- free ports ------------------------------------------------------------------


@final
@attrs.define(eq=False)
class FreePorts:
    """Port numbers free on the loopback interface, each handed out once a session.

    The kernel picks a free port for a socket bound to port 0; the socket is
    closed and the number returned.  Closed, that port can be the kernel's
    next pick again, hence :attr:`given` (shared by the TCP and the UDP
    factory).  What remains is a race no port picker can close: between the
    close and the test's own bind, another process may take the port.  It is
    rare (Linux spreads bind-to-0 picks over the ephemeral range) and is the
    price of knowing a number in advance, for a config file or a command
    line; a server the test builds itself should bind port 0 and read
    ``server_address`` (what ``serve`` does), which has no race.
    """

    sock_type: socket.SocketKind
    host: str = "127.0.0.1"
    given: set[int] = attrs.field(factory=set)

    def __call__(self) -> int:
        """A port number free now and not handed out before in this session."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for _ in range(100):
            with socket.socket(family, self.sock_type) as probe:
                probe.bind((self.host, 0))
                port: int = probe.getsockname()[1]
            if port not in self.given:
                self.given.add(port)
                return port
        raise RuntimeError(f"no new free port on {self.host} after 100 tries ({len(self.given)} given out)")


# -- contract suites ---------------------------------------------------------------

_ROLE_METHODS: Final = {
    "transport": ("bind", "activate", "close", "fileno", "shutdown_request", "close_request", "start_request"),
    "acceptor": ("accept",),
    "verifier": ("verify",),
    "dispatcher": ("dispatch", "service", "join", "close"),
    "error_policy": ("handle_error",),
    "timeout_policy": ("handle_timeout", "budget_exceeded"),
    "accept_error_policy": ("accept_failed", "accepted"),
    "observer": ("connection_accepted", "connection_refused", "request_started", "request_finished"),
}

_DEFAULT_SAMPLES: Final[tuple[tuple[object, object], ...]] = (
    (None, ("127.0.0.1", 5555)),
    (None, ("::1", 5555, 0, 0)),
    ((b"datagram", None), ("192.0.2.7", 53)),
    (None, "/tmp/server.sock"),
    (None, ""),
)


def _roles(component: object) -> list[str]:
    return [
        role
        for role, methods in _ROLE_METHODS.items()
        if all(callable(getattr(component, name, None)) for name in methods)
    ]


@contextlib.contextmanager
def _socket_client(transport: Transport[object, object]) -> Iterator[Socket]:
    listening = transport.socket
    with socket.socket(listening.family, listening.type) as client:
        if listening.type == socket.SOCK_STREAM:
            client.connect(_sockaddr(transport.server_address))
            client.sendall(b"ping")
        else:
            client.sendto(b"ping", _sockaddr(transport.server_address))
        yield client


def check_contracts(
    make: Callable[[], object],
    *,
    concurrent: bool | None = None,
    samples: Iterable[tuple[object, object]] | None = None,
    reraises: bool = False,
    transport: Callable[[], Transport[object, object]] | None = None,
) -> tuple[str, ...]:
    """Run every contract suite of :mod:`composable_server.testing` that fits
    the component *make* returns: the same suites the built-in components pass.

    The role is recognised by the component's methods (``verify``: a
    Verifier; ``dispatch``/``service``/``join``/``close``: a Dispatcher; a
    transport's ``bind``/``activate``/...; ``accept``: an Acceptor;
    ``connection_accepted``/``request_started``/...: an Observer; ...).
    A transport with a real socket is also checked with the matching
    built-in acceptor and a loopback client; an acceptor is checked on
    *transport* (default: a TCP transport on 127.0.0.1).

    Args:
        make: returns a fresh component each call (the suites make several).
        concurrent: Dispatchers only, required there: True if ``dispatch``
            returns before the job finished (threads, processes).
        samples: Verifiers: ``(request, client_address)`` pairs to ask
            (default: IPv4, IPv6, Unix and datagram-shaped ones).
        reraises: ErrorPolicies: it is documented to re-raise.
        transport: Acceptors: the transport to accept from.

    Returns:
        The names of the suites that ran, e.g. ``("check_verifier",)``.

    Raises:
        AssertionError: the component breaks a promise of its contract.
        TypeError: *make* returns nothing with a component role, or a
            Dispatcher was given without *concurrent*.
    """
    from . import testing

    probe = make()
    roles = _roles(probe)
    if "transport" in roles or "dispatcher" in roles:
        close = getattr(probe, "close")
        close()
    if not roles:
        wanted = "; ".join(f"{role}: {', '.join(methods)}" for role, methods in _ROLE_METHODS.items())
        raise TypeError(f"{probe!r} has the methods of no component role ({wanted})")
    ran: list[str] = []
    if "transport" in roles:
        make_transport = cast("Callable[[], Transport[object, object]]", make)
        testing.check_transport(make_transport)
        ran.append("check_transport")
        sock_type = _socket_type(make_transport)
        if sock_type is not None:
            acceptor = cast(
                "Callable[[], Acceptor[object, object]]",
                StreamAcceptor if sock_type == socket.SOCK_STREAM else DatagramAcceptor,
            )
            testing.check_acceptor(make_transport, acceptor, _socket_client)
            ran.append("check_acceptor")
    if "acceptor" in roles:
        make_acceptor = cast("Callable[[], Acceptor[object, object]]", make)
        transports = transport or cast(
            "Callable[[], Transport[object, object]]", lambda: TCPTransport(("127.0.0.1", 0))
        )
        testing.check_acceptor(transports, make_acceptor, _socket_client)
        ran.append("check_acceptor")
    if "verifier" in roles:
        testing.check_verifier(
            cast("Callable[[], Verifier[object, object]]", make), _DEFAULT_SAMPLES if samples is None else samples
        )
        ran.append("check_verifier")
    if "dispatcher" in roles:
        if concurrent is None:
            raise TypeError(
                f"{probe!r} is a Dispatcher: pass concurrent=True if dispatch() returns before the job "
                "has finished (threads, processes), concurrent=False if it runs the job inside dispatch()"
            )
        testing.check_dispatcher(cast("Callable[[], Dispatcher]", make), concurrent=concurrent)
        ran.append("check_dispatcher")
    if "error_policy" in roles:
        testing.check_error_policy(cast("Callable[[], ErrorPolicy]", make), reraises=reraises)
        ran.append("check_error_policy")
    if "timeout_policy" in roles:
        testing.check_timeout_policy(cast("Callable[[], TimeoutPolicy]", make))
        ran.append("check_timeout_policy")
    if "accept_error_policy" in roles:
        testing.check_accept_error_policy(cast("Callable[[], AcceptErrorPolicy]", make))
        ran.append("check_accept_error_policy")
    if "observer" in roles:
        testing.check_observer(cast("Callable[[], Observer]", make))
        ran.append("check_observer")
    return tuple(ran)


def _socket_type(make_transport: Callable[[], Transport[object, object]]) -> socket.SocketKind | None:
    """The socket type of a bound transport, None if it has no real socket."""
    probe = make_transport()
    try:
        probe.bind()
        try:
            return probe.socket.type
        except TypeError:  # an in-memory transport: no socket to connect to
            return None
    finally:
        probe.close()
