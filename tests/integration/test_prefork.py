"""Integration tests for :mod:`composable_server.prefork` on loopback and Unix sockets."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from composable_server import (
    DatagramAcceptor,
    DatagramRequest,
    DatagramRequestHandler,
    InetAddress,
    Server,
    StreamAcceptor,
    StreamRequestHandler,
    SyncDispatcher,
    TCPTransport,
    ThreadPoolDispatcher,
    Transport,
    UDPTransport,
    UnixDatagramTransport,
    UnixStreamTransport,
)
from composable_server.interfaces import Address
from composable_server.prefork import Prefork, RestartLimitError, _refuse_new_connections

from .._process import kill_group
from ._support import OutputProcess

# The thread method: these tests wait on children and pipes, where a hang may
# sit in C code that the signal method cannot interrupt.
pytestmark = pytest.mark.timeout(30, method="thread")

RequestT = TypeVar("RequestT")
AddressT = TypeVar("AddressT")

TIMEOUT = 10.0


class PidEcho(StreamRequestHandler[object]):
    """Answers every line with ``<pid> <line>``, until EOF."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(f"{os.getpid()} ".encode() + line)


def _sync_server(transport: Transport[socket.socket, object]) -> Server[socket.socket, object]:
    return Server(
        transport=transport,
        acceptor=StreamAcceptor(),
        handler=PidEcho,
        dispatcher=SyncDispatcher(),
        bind_and_activate=False,
    )


def _pool_server(transport: Transport[socket.socket, object]) -> Server[socket.socket, object]:
    return Server(
        transport=transport,
        acceptor=StreamAcceptor(),
        handler=PidEcho,
        dispatcher=ThreadPoolDispatcher(4),
        bind_and_activate=False,
    )


def _tcp(
    make_server: Callable[[Transport[socket.socket, object]], Server[socket.socket, object]] = _sync_server,
    workers: int = 2,
    **kwargs: float,
) -> Prefork[socket.socket, object]:
    transport: Transport[socket.socket, object] = TCPTransport(("127.0.0.1", 0))
    return Prefork(transport, make_server, workers=workers, **kwargs)  # type: ignore[arg-type]  # kwargs: the float options


@contextlib.contextmanager
def supervising(prefork: Prefork[RequestT, AddressT]) -> Iterator[threading.Thread]:
    """Run ``serve_forever`` in a thread; stop, join and close on the way out."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            prefork.serve_forever()
        except BaseException as exc:  # reported by the test
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        _wait_for(lambda: prefork.statistics().workers == prefork.workers)
        yield thread
    finally:
        prefork.stop()
        thread.join(TIMEOUT)
        prefork.close()
    assert not thread.is_alive(), "serve_forever did not return after stop()"


def _wait_for(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def _connect(address: object) -> socket.socket:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.connect(address)  # type: ignore[arg-type]  # a (host, port) or a path
    return sock


def _ask(sock: socket.socket, line: bytes = b"hello\n") -> int:
    """Send *line*; return the pid of the worker that answered."""
    sock.sendall(line)
    answer = b""
    while not answer.endswith(b"\n"):
        chunk = sock.recv(4096)
        assert chunk, "connection closed before the answer"
        answer += chunk
    pid, _, echoed = answer.partition(b" ")
    assert echoed == line
    return int(pid)


def _assert_gone(pids: set[int]) -> None:
    """Every pid has exited and been reaped (no zombie, no orphan)."""
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


class TestPrefork:
    def test_serves_across_workers(self) -> None:
        """Every worker serves: a sync worker holding a connection leaves the next one to another worker."""
        prefork = _tcp(workers=3)
        with supervising(prefork):
            workers = set(prefork.pids)
            conns = [_connect(prefork.server_address) for _ in range(3)]
            try:
                answered = {_ask(conn) for conn in conns}
            finally:
                for conn in conns:
                    conn.close()
            assert answered == workers
        _assert_gone(workers)

    def test_unix_stream_workers_share_the_path(self, tmp_path: Path) -> None:
        """Workers serve one Unix socket; a stopping worker does not unlink it, the parent's close does."""
        path = str(tmp_path / "prefork.sock")
        transport: Transport[socket.socket, object] = UnixStreamTransport(path)
        prefork: Prefork[socket.socket, object] = Prefork(transport, _pool_server, workers=2)
        with supervising(prefork):
            with _connect(path) as conn:
                assert _ask(conn) in prefork.pids
            victim = prefork.pids[0]
            os.kill(victim, signal.SIGTERM)  # graceful exit of one worker
            _wait_for(lambda: prefork.statistics().restarts == 1 and prefork.statistics().workers == 2)
            assert os.path.exists(path)
            with _connect(path) as conn:
                assert _ask(conn) in prefork.pids
        assert not os.path.exists(path)

    def test_killed_worker_is_replaced(self) -> None:
        """A SIGKILLed worker is reaped and replaced by a new one, which serves."""
        prefork = _tcp()
        with supervising(prefork):
            first = set(prefork.pids)
            victim = min(first)
            os.kill(victim, signal.SIGKILL)
            _wait_for(lambda: prefork.statistics().restarts == 1 and prefork.statistics().workers == 2)
            now = set(prefork.pids)
            assert victim not in now
            assert len(now - first) == 1
            with _connect(prefork.server_address) as conn:
                assert _ask(conn) in now
            seen = first | now
        _assert_gone(seen)

    def test_graceful_stop_finishes_requests_in_flight(self) -> None:
        """stop() lets a connection in flight finish within drain_timeout, then every worker exits."""
        prefork = _tcp(_pool_server, drain_timeout=TIMEOUT)
        stopped = threading.Event()
        with supervising(prefork) as thread:
            pids = set(prefork.pids)
            conn = _connect(prefork.server_address)
            _ask(conn)
            prefork.stop()
            # The connection is still served while its worker drains.
            assert _ask(conn, b"again\n") in pids
            assert thread.is_alive()
            conn.close()
            thread.join(TIMEOUT)
            stopped.set()
        assert stopped.is_set()
        _assert_gone(pids)

    def test_stop_cuts_requests_at_the_drain_deadline(self) -> None:
        """A connection still open at drain_timeout is cut, and serve_forever returns."""
        prefork = _tcp(_pool_server, drain_timeout=0.2)
        with supervising(prefork) as thread:
            pids = set(prefork.pids)
            conn = _connect(prefork.server_address)
            _ask(conn)
            started = time.monotonic()
            prefork.stop()
            thread.join(TIMEOUT)
            assert not thread.is_alive()
            assert time.monotonic() - started < 5.0
            assert conn.recv(100) == b""  # the worker shut it down
            conn.close()
        _assert_gone(pids)

    def test_crash_loop_hits_the_restart_limit(self) -> None:
        """Workers that die at once are replaced at most max_restarts times, then serve_forever raises."""

        def broken(transport: Transport[socket.socket, object]) -> Server[socket.socket, object]:
            raise RuntimeError("this worker cannot start")

        prefork = _tcp(broken, max_restarts=3)
        started = time.monotonic()
        with prefork, pytest.raises(RestartLimitError, match="max_restarts=3"):
            prefork.serve_forever()
        assert time.monotonic() - started < TIMEOUT
        stats = prefork.statistics()
        assert stats.restarts == 3
        assert stats.workers == 0

    def test_stop_before_serve_forever_returns_at_once(self) -> None:
        """A stop() that precedes serve_forever() makes it return without forking."""
        with _tcp() as prefork:
            prefork.stop()
            prefork.serve_forever()
            assert prefork.statistics().started == 0

    def test_repr_and_statistics(self) -> None:
        """The repr shows the address, the workers alive and the state."""
        with _tcp() as prefork:
            assert "idle" in repr(prefork)
            assert "workers: 0/2 alive" in repr(prefork)
            with supervising(prefork):
                assert "workers: 2/2 alive" in repr(prefork)
                assert "running" in repr(prefork)
        assert "closed" in repr(prefork)

    def test_rejects_zero_workers(self) -> None:
        """workers must be at least 1."""
        transport: Transport[socket.socket, InetAddress] = TCPTransport(("127.0.0.1", 0))
        with pytest.raises(ValueError, match="workers must be >= 1"):
            Prefork(transport, _sync_server, workers=0, bind_and_activate=False)  # type: ignore[arg-type]  # the factory serves any address

    def test_sigterm_to_the_parent_stops_every_worker(self, tmp_path: Path) -> None:
        """SIGTERM to a supervisor in the main thread stops it; it exits 0 with no child left."""
        script = textwrap.dedent(
            """
            import os, socket, sys
            from composable_server import Server, StreamAcceptor, StreamRequestHandler, TCPTransport
            from composable_server.prefork import Prefork

            def make(transport):
                return Server(transport=transport, acceptor=StreamAcceptor(),
                              handler=StreamRequestHandler, bind_and_activate=False)

            with Prefork(TCPTransport(("127.0.0.1", 0)), make, workers=2) as prefork:
                print("ready", flush=True)
                prefork.serve_forever()
            print("stopped", flush=True)
            """
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
            _wait_for(lambda: len(_children(proc.pid)) == 2)
            workers = _children(proc.pid)
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0
            assert out == "stopped\n"
            for pid in workers:
                with pytest.raises(ProcessLookupError):
                    os.kill(pid, 0)
        finally:
            kill_group(proc)
            proc.wait(TIMEOUT)
            if proc.stdout is not None:
                proc.stdout.close()


class TestStopRace:
    @pytest.mark.timeout(60, method="thread")
    def test_stop_while_workers_start_reaches_every_worker(self) -> None:
        """A stop that lands while workers are being forked still reaches each of
        them at once (a worker must never inherit the parent's handler and lose
        the SIGTERM), so the supervisor never falls back to SIGKILL."""
        if threading.current_thread() is not threading.main_thread():
            pytest.skip("needs the main thread: the supervisor installs its signal handlers there")
        stop_timeout = 3.0
        worst = 0.0
        for attempt in range(10):
            prefork = _tcp(workers=2, stop_timeout=stop_timeout)
            # From 0 to ~4.5 ms after the start: while the workers are forked.
            timer = threading.Timer(attempt * 0.0005, prefork.stop)
            with prefork:
                timer.start()
                started = time.monotonic()
                prefork.serve_forever()
                worst = max(worst, time.monotonic() - started)
            timer.join()
        assert worst < stop_timeout / 2, f"a worker needed SIGKILL: stop took {worst:.2f} s"


class TestRefuseNewConnections:
    @pytest.mark.timeout(30)
    def test_a_stopping_listener_completes_no_connection_and_keeps_its_backlog(self) -> None:
        """Once refused, a TCP listener completes no new connect (its SYN is dropped: the connect
        times out, then meets the closed port), while a connection already in its backlog is
        accepted and works both ways."""
        transport = TCPTransport(("127.0.0.1", 0))
        transport.bind()
        transport.activate()
        try:
            queued = socket.create_connection(_inet(transport.server_address), timeout=TIMEOUT)
            queued.sendall(b"before the stop")
            assert _refuse_new_connections(transport)
            with socket.socket() as late:
                late.settimeout(0.3)
                with pytest.raises(TimeoutError):
                    late.connect(_inet(transport.server_address))
            listener = transport.socket
            listener.settimeout(TIMEOUT)
            accepted, _ = listener.accept()
            with accepted, queued:
                accepted.settimeout(TIMEOUT)
                assert accepted.recv(64) == b"before the stop"
                accepted.sendall(b"served")
                assert queued.recv(64) == b"served"
            listener.setblocking(False)
            with pytest.raises(BlockingIOError):
                listener.accept()
            address = _inet(transport.server_address)
        finally:
            transport.close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=TIMEOUT).close()

    def test_only_a_listener_bound_here(self, tmp_path: Path) -> None:
        """A Unix listener and a TCP listener inherited (systemd, a predecessor: the socket outlives
        this process) are left as they are; a TCP listener under a wrapper is found through it."""
        from composable_server.proxy import ProxyProtocolTransport
        from composable_server.systemd import InheritedStreamTransport

        unix = UnixStreamTransport(str(tmp_path / "s.sock"))
        unix.bind()
        unix.activate()
        with socket.create_server(("127.0.0.1", 0)) as sock:
            inherited = InheritedStreamTransport(sock)
            assert not _refuse_new_connections(inherited)
            assert not _refuse_new_connections(unix)
        unix.close()
        wrapped = ProxyProtocolTransport(TCPTransport(("127.0.0.1", 0)), mode="any")
        wrapped.bind()
        try:
            assert _refuse_new_connections(wrapped)
        finally:
            wrapped.close()


def _inet(address: InetAddress) -> tuple[str, int]:
    return address[0], address[1]


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found.update(int(c) for c in f.read().split())
    return found


class UpperDatagram(DatagramRequestHandler[Address]):
    """Answers a datagram with its upper-case copy."""

    def handle(self) -> None:
        self.wfile.write(self.packet.upper())


class LosesTheFirstRace:
    """A datagram acceptor whose first call finds the datagram gone, as a
    worker that woke for it with a sibling which took it first (the sibling
    is simulated: this acceptor takes the datagram itself, and writes a byte
    to *fd* to say so); then it receives as :class:`DatagramAcceptor`."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.raced = False
        self.inner = DatagramAcceptor()

    def accept(self, transport: Transport[DatagramRequest, Address]) -> tuple[DatagramRequest, Address]:
        if not self.raced:
            self.raced = True
            transport.socket.recv(65536, socket.MSG_DONTWAIT)
            os.write(self.fd, b"x")
        return self.inner.accept(transport)


def _readable(fd: int, timeout: float = TIMEOUT) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000.0))


class TestDatagramWorkers:
    @pytest.mark.parametrize("kind", ["udp", "unix-dgram"])
    def test_worker_that_lost_the_race_for_a_datagram_sees_a_stop(self, kind: str, tmp_path: Path) -> None:
        """A worker that woke for a datagram a sibling took returns to its loop
        (a non-blocking socket), so a stop reaches it at once instead of the
        supervisor's SIGKILL at stop_timeout."""
        path = str(tmp_path / "s.sock")
        transport: Transport[DatagramRequest, Address] = (
            UDPTransport(("127.0.0.1", 0)) if kind == "udp" else UnixDatagramTransport(path)
        )
        raced_read, raced_write = os.pipe()

        def make(transport: Transport[DatagramRequest, Address]) -> Server[DatagramRequest, Address]:
            return Server(
                transport=transport,
                acceptor=LosesTheFirstRace(raced_write),
                handler=UpperDatagram,
                dispatcher=ThreadPoolDispatcher(2),
                bind_and_activate=False,
            )

        stop_timeout = 5.0
        prefork = Prefork(transport, make, workers=1, stop_timeout=stop_timeout)
        family = socket.AF_INET if kind == "udp" else socket.AF_UNIX
        with contextlib.ExitStack() as stack:
            stack.callback(os.close, raced_read)
            stack.callback(os.close, raced_write)
            thread = stack.enter_context(supervising(prefork))
            client = stack.enter_context(socket.socket(family, socket.SOCK_DGRAM))
            if family == socket.AF_UNIX:
                client.bind(str(tmp_path / "c.sock"))
            client.sendto(b"taken by a sibling", prefork.server_address)
            assert _readable(raced_read), "the worker never received the datagram"
            started = time.monotonic()
            prefork.stop()
            thread.join(TIMEOUT)
            elapsed = time.monotonic() - started
        assert elapsed < stop_timeout / 2, f"the worker missed the stop: it took {elapsed:.2f} s (SIGKILL)"

    @pytest.mark.parametrize("kind", ["udp", "unix-dgram"])
    def test_workers_answer_datagrams(self, kind: str, tmp_path: Path) -> None:
        """Prefork workers over a datagram transport answer every datagram, then stop at once."""
        path = str(tmp_path / "s.sock")
        transport: Transport[DatagramRequest, Address] = (
            UDPTransport(("127.0.0.1", 0)) if kind == "udp" else UnixDatagramTransport(path)
        )

        def make(transport: Transport[DatagramRequest, Address]) -> Server[DatagramRequest, Address]:
            return Server(
                transport=transport,
                acceptor=DatagramAcceptor(),
                handler=UpperDatagram,
                dispatcher=ThreadPoolDispatcher(2),
                bind_and_activate=False,
            )

        prefork = Prefork(transport, make, workers=2, stop_timeout=5.0)
        family = socket.AF_INET if kind == "udp" else socket.AF_UNIX
        with contextlib.ExitStack() as stack:
            thread = stack.enter_context(supervising(prefork))
            client = stack.enter_context(socket.socket(family, socket.SOCK_DGRAM))
            client.settimeout(TIMEOUT)
            if family == socket.AF_UNIX:
                client.bind(str(tmp_path / "c.sock"))
            for i in range(20):
                client.sendto(b"d%d" % i, prefork.server_address)
                assert client.recv(100) == b"D%d" % i
            started = time.monotonic()
            prefork.stop()
            thread.join(TIMEOUT)
            assert time.monotonic() - started < 2.5


# A supervisor in its own process, so that the test can SIGKILL it; its one
# worker answers a connection with its pid, then gets stuck: on a lock, in
# the serving thread itself (sync), or asleep in a pool thread, or asleep
# holding the log handler's lock, which the worker's exit path needs (it
# logs the requests it cut).
STUCK_SUPERVISOR = textwrap.dedent(
    """
    import logging, os, sys, threading, time
    from composable_server import (Server, StreamAcceptor, StreamRequestHandler, SyncDispatcher,
                                   TCPTransport, ThreadPoolDispatcher)
    from composable_server.prefork import Prefork

    mode, drain_timeout = sys.argv[1], float(sys.argv[2])
    never_released = threading.Lock()
    never_released.acquire()
    logging.basicConfig()

    class Stuck(StreamRequestHandler):
        def handle(self):
            self.wfile.write(b"%d\\n" % os.getpid())
            self.wfile.flush()
            if mode == "lock":
                never_released.acquire()
            elif mode == "log-lock":
                logging.getLogger().handlers[0].acquire()
                time.sleep(3600)
            else:
                time.sleep(3600)

    def make(transport):
        dispatcher = SyncDispatcher() if mode == "lock" else ThreadPoolDispatcher(2)
        return Server(transport=transport, acceptor=StreamAcceptor(), handler=Stuck,
                      dispatcher=dispatcher, bind_and_activate=False)

    with Prefork(TCPTransport(("127.0.0.1", 0)), make, workers=1, drain_timeout=drain_timeout) as prefork:
        print("port", prefork.server_address[1], flush=True)
        prefork.serve_forever()
    """
)


class TestOrphanedWorker:
    @pytest.mark.parametrize("mode", ["lock", "sleep", "log-lock"])
    def test_worker_dies_with_its_supervisor_whatever_its_handler_does(self, mode: str) -> None:
        """A worker whose handler is stuck (on a lock in the serving thread,
        asleep in a pool thread, or asleep holding a lock the worker's exit
        needs) is gone within drain_timeout + 1 s of its supervisor's SIGKILL."""
        drain_timeout = 0.5
        supervisor = OutputProcess(
            [sys.executable, "-c", STUCK_SUPERVISOR, mode, str(drain_timeout)], read="stdout", wait=TIMEOUT
        )
        with contextlib.ExitStack() as stack:
            stack.callback(supervisor.close)
            port = int(supervisor.wait_for(r"^port (\d+)").group(1))
            conn = stack.enter_context(_connect(("127.0.0.1", port)))
            conn.sendall(b"hello\n")
            worker = int(conn.makefile("rb").readline())
            pidfd = os.pidfd_open(worker)
            stack.callback(os.close, pidfd)
            supervisor.proc.kill()
            started = time.monotonic()
            gone = _readable(pidfd, TIMEOUT)
            elapsed = time.monotonic() - started
        assert gone, f"the worker outlived its supervisor by more than {TIMEOUT} s"
        # The bound the worker keeps, plus this test's own wake-up latency.
        assert elapsed < drain_timeout + 1.0 + 0.3, f"the worker outlived its supervisor by {elapsed:.2f} s"
