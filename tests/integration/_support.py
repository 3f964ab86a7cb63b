"""Helpers for the integration tests: the server-kind table, clients, and a
running-server context manager.

Every server kind (TCP over IPv4 and IPv6, UDP over IPv4 and IPv6, Unix stream,
Unix datagram, each with synchronous, threading and forking dispatch) is
built here from the native components, with no subclassing, and each has a
matching client.

The wire protocol is deliberately tiny, so that one handler behaviour fits
every kind:

* stream kinds: the client sends one line, the server answers one line and
  closes (the client reads until EOF);
* datagram kinds: one datagram in, one datagram out.

What the server answers is decided by a :class:`Responder`, which works in a
forked child as well as in a thread: it synchronises with the test through
pipes, never through in-process objects.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import itertools
import os
import queue
import re
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Final, Generic, Literal, TypeAlias, TypeVar

import attrs

from composable_server import (
    DatagramAcceptor,
    DatagramRequestHandler,
    Dispatcher,
    ErrorPolicy,
    ForkingDispatcher,
    Job,
    Server,
    StreamAcceptor,
    StreamRequestHandler,
    SyncDispatcher,
    TCPTransport,
    ThreadingDispatcher,
    TimeoutPolicy,
    UDPTransport,
    UnixDatagramTransport,
    UnixStreamTransport,
    Verifier,
)

from .._process import kill_group

__all__ = (
    "OutputProcess",
    "AnyServer",
    "Background",
    "CLIENT_TIMEOUT",
    "IDLE_CLIENTS",
    "cli_address",
    "serve_cli",
    "CloseHookDispatcher",
    "Dispatch",
    "Family",
    "KINDS",
    "MagicError",
    "PipeSignal",
    "RecordingErrorPolicy",
    "RefuseFirst",
    "Respond",
    "Responder",
    "ServerKind",
    "assert_no_children",
    "datagram_handler",
    "ipv6_available",
    "describe_fds",
    "new_threads",
    "open_fds",
    "read_to_eof",
    "running",
    "stream_handler",
)

T = TypeVar("T")

# The servers of the kind table differ in request and address type; the
# tests treat them uniformly, so the table speaks of Server[Any, Any].
AnyServer: TypeAlias = Server[Any, Any]

# Upper bound for any single client wait: a bound, never a synchronisation.
CLIENT_TIMEOUT: Final = 5.0
# Idle connections of the 2,000-parked-connections tests (the descriptors fixture sizes RLIMIT_NOFILE for them).
IDLE_CLIENTS: Final = 2000


class MagicError(Exception):
    """Raised by the responder on the magic input ``b"boom"``."""


class Family(enum.Enum):
    """The transport families of the kind table (value: the id prefix)."""

    TCP4 = "tcp4"
    TCP6 = "tcp6"
    UDP4 = "udp4"
    UDP6 = "udp6"
    UNIX_STREAM = "unixstream"
    UNIX_DGRAM = "unixdgram"

    @property
    def is_stream(self) -> bool:
        return self in (Family.TCP4, Family.TCP6, Family.UNIX_STREAM)

    @property
    def is_unix(self) -> bool:
        return self in (Family.UNIX_STREAM, Family.UNIX_DGRAM)

    @property
    def is_ipv6(self) -> bool:
        return self in (Family.TCP6, Family.UDP6)


class Dispatch(enum.Enum):
    """The dispatch modes of the kind table (value: the id suffix)."""

    SYNC = "sync"
    THREADING = "threading"
    FORKING = "forking"

    def make(self) -> Dispatcher:
        """A fresh dispatcher of this mode."""
        if self is Dispatch.SYNC:
            return SyncDispatcher()
        if self is Dispatch.THREADING:
            return ThreadingDispatcher()
        return ForkingDispatcher()

    @property
    def concurrent(self) -> bool:
        return self is not Dispatch.SYNC


def ipv6_available() -> bool:
    """Whether the IPv6 loopback ``::1`` can be bound."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


# -- cross-process synchronisation ---------------------------------------------


class PipeSignal:
    """A counting signal over a pipe, usable from threads *and* forked children.

    ``post()`` adds tokens; ``wait()`` takes one, waiting at most *timeout*.
    The read end is non-blocking, so several waiters (threads or processes)
    racing for one token never block past their deadline.
    """

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)

    def post(self, n: int = 1) -> None:
        """Add *n* tokens."""
        os.write(self._w, b"x" * n)

    def wait(self, timeout: float = CLIENT_TIMEOUT) -> bool:
        """Take one token; return False if none came within *timeout*."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            ready, _, _ = select.select([self._r], [], [], remaining)
            if not ready:
                return False
            try:
                if os.read(self._r, 1):
                    return True
            except BlockingIOError:
                continue  # another waiter took the token first

    def close(self) -> None:
        """Close both ends (idempotent)."""
        for fd in (self._r, self._w):
            if fd >= 0:
                os.close(fd)
        self._r = self._w = -1


class Responder:
    """What the test servers answer, for every kind and every dispatch mode.

    * ``b"boom"`` raises :class:`MagicError`;
    * ``b"hold"`` posts :attr:`entered`, waits for :attr:`release` and answers
      ``b"released"`` (``b"not released"`` if the release never came);
    * anything else is answered upper-cased.
    """

    def __init__(self) -> None:
        self.entered = PipeSignal()
        self.release = PipeSignal()

    def __call__(self, data: bytes) -> bytes:
        if data == b"boom":
            raise MagicError("boom requested by the client")
        if data == b"hold":
            self.entered.post()
            return b"released" if self.release.wait(CLIENT_TIMEOUT) else b"not released"
        return data.upper()

    def close(self) -> None:
        self.entered.close()
        self.release.close()


Respond = Callable[[bytes], bytes]


def stream_handler(respond: Respond) -> type[StreamRequestHandler[Any]]:
    """A stream handler class: read one line, answer ``respond(line)`` and a newline."""

    class LineHandler(StreamRequestHandler[Any]):
        def handle(self) -> None:
            line = self.rfile.readline()
            self.wfile.write(respond(line.rstrip(b"\n")) + b"\n")

    return LineHandler


def datagram_handler(respond: Respond) -> type[DatagramRequestHandler[Any]]:
    """A datagram handler class: answer ``respond(packet)`` through ``wfile``."""

    class PacketHandler(DatagramRequestHandler[Any]):
        def handle(self) -> None:
            self.wfile.write(respond(self.rfile.read()))

    return PacketHandler


# -- recording components ------------------------------------------------------


class RecordingErrorPolicy:
    """An error policy that records ``(client_address, exc)`` and lets a test wait.

    Only sees errors raised in this process (sync and threading dispatch).
    """

    def __init__(self) -> None:
        self.errors: list[tuple[object, BaseException]] = []
        self._cond = threading.Condition()

    def handle_error(self, request: object, client_address: object, exc: BaseException) -> None:
        with self._cond:
            self.errors.append((client_address, exc))
            self._cond.notify_all()

    def wait_for(self, count: int = 1, timeout: float = CLIENT_TIMEOUT) -> bool:
        """Wait until at least *count* errors were recorded."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.errors) >= count, timeout)


class CloseHookDispatcher:
    """A dispatcher wrapper that calls *on_close* as its ``close()`` begins,
    then delegates: lets a test act at the precise moment the server closes."""

    def __init__(self, inner: Dispatcher, on_close: Callable[[], object]) -> None:
        self.inner = inner
        self.on_close = on_close

    def dispatch(self, job: Job) -> None:
        self.inner.dispatch(job)

    def service(self) -> None:
        self.inner.service()

    def join(self, timeout: float | None) -> tuple[Job, ...]:
        return self.inner.join(timeout)

    def close(self) -> None:
        self.on_close()
        self.inner.close()


class RefuseFirst:
    """A verifier that refuses the first *n* requests, then admits all.

    It runs in the serving loop (the parent process), so :attr:`refused` is
    reliable under every dispatch mode.
    """

    def __init__(self, n: int = 1) -> None:
        self._left = n
        self.refused = threading.Event()
        self.admitted = 0

    def verify(self, request: object, client_address: object) -> bool:
        if self._left > 0:
            self._left -= 1
            if self._left == 0:
                self.refused.set()
            return False
        self.admitted += 1
        return True


# -- the kind table ------------------------------------------------------------

_client_names = itertools.count()


@attrs.frozen
class ServerKind:
    """One row of the kind table: a family and a dispatch mode, bound to a
    directory for Unix socket files."""

    family: Family
    dispatch: Dispatch
    directory: Path

    @property
    def id(self) -> str:
        return f"{self.family.value}-{self.dispatch.value}"

    # -- building ------------------------------------------------------------

    def transport(self) -> Any:
        """A fresh, unbound transport of this family on a loopback address."""
        family = self.family
        if family is Family.TCP4:
            return TCPTransport(("127.0.0.1", 0))
        if family is Family.TCP6:
            return TCPTransport(("::1", 0))
        if family is Family.UDP4:
            return UDPTransport(("127.0.0.1", 0))
        if family is Family.UDP6:
            return UDPTransport(("::1", 0))
        if family is Family.UNIX_STREAM:
            return UnixStreamTransport(self.directory / "s.sock")
        return UnixDatagramTransport(self.directory / "d.sock")

    def server(
        self,
        respond: Respond,
        *,
        verifier: Verifier[Any, Any] | None = None,
        error_policy: ErrorPolicy | None = None,
        timeout_policy: TimeoutPolicy | None = None,
        dispatcher: Dispatcher | None = None,
        bind_and_activate: bool = True,
    ) -> AnyServer:
        """A bound, listening native server of this kind answering with *respond*
        (*dispatcher* defaults to a fresh one of this kind's mode)."""
        handler: Any = stream_handler(respond) if self.family.is_stream else datagram_handler(respond)
        return self.build(
            handler,
            verifier=verifier,
            error_policy=error_policy,
            timeout_policy=timeout_policy,
            dispatcher=dispatcher,
            bind_and_activate=bind_and_activate,
        )

    def build(
        self,
        handler: Any,
        *,
        verifier: Verifier[Any, Any] | None = None,
        error_policy: ErrorPolicy | None = None,
        timeout_policy: TimeoutPolicy | None = None,
        dispatcher: Dispatcher | None = None,
        bind_and_activate: bool = True,
        max_packet_size: int | None = None,
    ) -> AnyServer:
        """A native server of this kind running *handler* (any handler factory
        that fits the family's request type)."""
        acceptor: Any
        if self.family.is_stream:
            acceptor = StreamAcceptor()
        elif max_packet_size is None:
            acceptor = DatagramAcceptor()
        else:
            acceptor = DatagramAcceptor(max_packet_size)
        server: AnyServer = Server(
            transport=self.transport(),
            acceptor=acceptor,
            handler=handler,
            verifier=verifier,
            dispatcher=self.dispatch.make() if dispatcher is None else dispatcher,
            error_policy=error_policy,
            timeout_policy=timeout_policy,
            bind_and_activate=bind_and_activate,
        )
        return server

    # -- clients -------------------------------------------------------------

    def _socket_family(self) -> socket.AddressFamily:
        if self.family.is_unix:
            return socket.AF_UNIX
        return socket.AF_INET6 if self.family.is_ipv6 else socket.AF_INET

    def connect(self, server: AnyServer, timeout: float = CLIENT_TIMEOUT) -> socket.socket:
        """A client socket connected to *server* (stream kinds only)."""
        assert self.family.is_stream, f"{self.id} is not a stream kind"
        sock = socket.socket(self._socket_family(), socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(server.server_address)
        except BaseException:
            sock.close()
            raise
        return sock

    def request(self, server: AnyServer, data: bytes, timeout: float = CLIENT_TIMEOUT) -> bytes:
        """Send one request from a fresh client socket and return the reply.

        Stream kinds: the reply line without its newline, ``b""`` on EOF
        without a line.  Datagram kinds: the reply datagram.
        """
        if self.family.is_stream:
            with self.connect(server, timeout) as sock:
                sock.sendall(data + b"\n")
                return read_to_eof(sock).rstrip(b"\n")
        with self.datagram_client(timeout) as sock:
            sock.sendto(data, server.server_address)
            return sock.recv(65536)

    def datagram_client(self, timeout: float = CLIENT_TIMEOUT) -> socket.socket:
        """A client datagram socket, bound so that it can be answered."""
        assert not self.family.is_stream, f"{self.id} is not a datagram kind"
        sock = socket.socket(self._socket_family(), socket.SOCK_DGRAM)
        try:
            sock.settimeout(timeout)
            if self.family is Family.UNIX_DGRAM:
                # An unbound Unix datagram client has no address to reply to.
                sock.bind(str(self.directory / f"c{next(_client_names)}.sock"))
            elif self.family.is_ipv6:
                sock.bind(("::1", 0))
            else:
                sock.bind(("127.0.0.1", 0))
        except BaseException:
            sock.close()
            raise
        return sock

    def assert_listener_closed(self, address: Any) -> None:
        """Assert that nothing listens on *address* any more."""
        family = self.family
        if family.is_unix:
            assert isinstance(address, str)
            assert not os.path.exists(address), f"socket file {address} left behind"
            return
        sock_type = socket.SOCK_STREAM if family.is_stream else socket.SOCK_DGRAM
        with socket.socket(self._socket_family(), sock_type) as sock:
            if family.is_stream:
                err = sock.connect_ex(address)
                assert err == errno.ECONNREFUSED, f"connect to {address!r}: {os.strerror(err)}"
            else:
                # The port is free again: a fresh socket binds it without SO_REUSEADDR.
                sock.bind(address)


def read_to_eof(sock: socket.socket) -> bytes:
    """Read from *sock* until the peer shuts down its side."""
    chunks: list[bytes] = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


KINDS: Final = tuple((family, dispatch) for family in Family for dispatch in Dispatch)


# -- running a server ----------------------------------------------------------


@contextlib.contextmanager
def running(server: AnyServer, poll_interval: float = 0.5) -> Iterator[AnyServer]:
    """Run ``server.serve_forever`` in a thread; on exit shut it down, join
    the thread and close the server.

    An exception that ended ``serve_forever`` early is re-raised here.
    """
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            server.serve_forever(poll_interval)
        except BaseException as exc:  # reported in the test's thread
            failure.append(exc)

    thread = threading.Thread(target=serve, name=f"serve {server.server_address!r}")
    with server:
        thread.start()
        try:
            yield server
        finally:
            server.shutdown()
            thread.join(CLIENT_TIMEOUT)
            assert not thread.is_alive(), "serve_forever did not return after shutdown()"
    if failure:
        raise failure[0]


class Background(Generic[T]):
    """Run *fn* in a thread now; :meth:`result` joins it and returns its value
    or re-raises its exception, so a failing client never goes unreported."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._value: list[T] = []
        self._error: list[BaseException] = []
        self._fn = fn
        self._thread = threading.Thread(target=self._run, name="client")
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value.append(self._fn())
        except BaseException as exc:  # re-raised by result()
            self._error.append(exc)

    def result(self, timeout: float = CLIENT_TIMEOUT * 2) -> T:
        """Join the thread (at most *timeout*) and return what *fn* returned."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the client thread did not finish"
        if self._error:
            raise self._error[0]
        return self._value[0]


# -- leftovers -----------------------------------------------------------------


def new_threads(baseline: set[threading.Thread]) -> list[threading.Thread]:
    """Live threads not in *baseline*, ignoring pytest-timeout's watchdog."""
    return [
        t
        for t in threading.enumerate()
        if t not in baseline and t.is_alive() and "timeout" not in t.name.lower()
    ]


def open_fds() -> set[int]:
    """The descriptors open in this process (Linux ``/proc/self/fd``; empty elsewhere)."""
    try:
        return {int(name) for name in os.listdir("/proc/self/fd")}
    except FileNotFoundError:  # pragma: no cover - not Linux
        return set()


def describe_fds(fds: set[int]) -> list[str]:
    """What each descriptor in *fds* points to, for assertion messages."""
    out = []
    for fd in sorted(fds):
        try:
            out.append(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            out.append(f"{fd} (closed meanwhile)")
    return out


def assert_no_children() -> None:
    """Assert that this process has no child, running or zombie."""
    try:
        pid, status = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return
    raise AssertionError(f"a child process is left behind (waitpid: pid {pid}, status {status})")


class OutputProcess:
    """A subprocess whose stdout or stderr is read line by line in a thread.

    The process leads its own session; every wait on it is bounded by
    *wait* seconds, so a child that hangs fails the test with what it
    printed instead of hanging the run.  The stream not read goes to
    ``/dev/null`` (a full pipe nobody reads would block the child).
    """

    def __init__(
        self,
        argv: list[str],
        *,
        read: Literal["stdout", "stderr"],
        cwd: Path | None = None,
        wait: float = 10.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.wait = wait
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if read == "stdout" else subprocess.DEVNULL,
            stderr=subprocess.PIPE if read == "stderr" else subprocess.DEVNULL,
            text=True,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        stream = self.proc.stdout if read == "stdout" else self.proc.stderr
        assert stream is not None
        self._stream = stream
        self._reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str | re.Pattern[str]) -> re.Match[str]:
        """Wait for an output line matching *pattern*, at most :attr:`wait`
        seconds in all (a process that keeps logging other lines, one per
        request say, must not keep the wait going)."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + self.wait
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no line matching {regex.pattern!r} within {self.wait:g} s; the last lines: {self.lines[-40:]}"
                ) from None
            if line is None:
                raise AssertionError(f"exited ({self.proc.wait(self.wait)}) before {regex.pattern!r}: {self.lines}")
            match = regex.search(line)
            if match:
                return match

    def close(self) -> None:
        """Kill the process and its whole group, reap it, close the pipe.

        In that order: once every process that could hold the pipe is dead,
        the reader thread meets EOF and ends; only then is the pipe closed
        (closing a buffered stream that another thread is reading waits for
        that read, uninterruptibly).

        Raises:
            AssertionError: the reader is still blocked after the group died
                (a process outside the group holds the pipe); the pipe is
                then left open rather than closed under the reader.
        """
        kill_group(self.proc)
        self.proc.wait(self.wait)
        self._reader.join(self.wait)
        if self._reader.is_alive():
            raise AssertionError(f"the output pipe of {self.proc.args!r} is still open {self.wait} s after its group died")
        self._stream.close()


def serve_cli(*args: str) -> OutputProcess:
    """``python -m composable_server serve --port 0 *args`` (log level debug), its stderr read for the address."""
    argv = [sys.executable, "-m", "composable_server", "serve", "--log-level", "debug", "--port", "0", *args]
    return OutputProcess(argv, read="stderr", wait=CLIENT_TIMEOUT)


def cli_address(proc: OutputProcess) -> tuple[str, int]:
    """The address a :func:`serve_cli` server logged as ``listening on KIND HOST:PORT``."""
    host, _, port = proc.wait_for(r"listening on \S+ (\S+)").group(1).rpartition(":")
    return host.strip("[]"), int(port)


def tls_contexts(host: str = "127.0.0.1") -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """``(server, client)`` contexts: the server's certificate for *host*,
    issued by a fresh trustme CA that the client trusts."""
    import trustme

    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(host).configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client
