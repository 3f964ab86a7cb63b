"""Integration tests for :mod:`composable_server.prefork` on loopback and Unix sockets."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from composable_server import (
    InetAddress,
    Server,
    StreamAcceptor,
    StreamRequestHandler,
    SyncDispatcher,
    TCPTransport,
    ThreadPoolDispatcher,
    Transport,
    UnixStreamTransport,
)
from composable_server.prefork import Prefork, RestartLimitError

pytestmark = pytest.mark.timeout(30)

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
def supervising(prefork: Prefork[socket.socket, object]) -> Iterator[threading.Thread]:
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
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


class TestStopRace:
    @pytest.mark.timeout(60)
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


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found.update(int(c) for c in f.read().split())
    return found
