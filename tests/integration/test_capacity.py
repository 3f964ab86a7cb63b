"""Capacity and lifecycle under fault, on loopback (issue 5).

Each test is bounded in time and synchronises on events; the few timed waits
are observation windows (CPU while starved) or a client's pace (the dribbler),
never a substitute for an event.  Figures are printed (``pytest -s``).
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeAlias

import pytest

from composable_server import compat
from composable_server import (
    AcceptBackoff,
    Budget,
    ConnectionTimeouts,
    Dispatcher,
    DrainReport,
    ForkingDispatcher,
    NoTimeout,
    Server,
    StreamAcceptor,
    TCPTransport,
    ThreadingDispatcher,
    ThreadPoolDispatcher,
    TimeoutPolicy,
    Transport,
)

TCPServer: TypeAlias = Server[socket.socket, Any]
Handler: TypeAlias = Callable[[socket.socket, Any, Any], None]

WAIT = 10.0  # bound for anything that should happen promptly


class Errors:
    """A thread-safe error policy that records exceptions."""

    def __init__(self) -> None:
        self.exceptions: list[BaseException] = []
        self._cond = threading.Condition()

    def handle_error(self, request: object, client_address: object, exc: BaseException) -> None:
        with self._cond:
            self.exceptions.append(exc)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.exceptions) >= count, timeout)


class SignallingBackoff:
    """AcceptBackoff that also sets an event and counts every failure."""

    def __init__(self, backoff: AcceptBackoff) -> None:
        self.backoff = backoff
        self.failed = threading.Event()
        self.failures = 0

    def accept_failed(self, exc: OSError) -> float:
        self.failures += 1
        self.failed.set()
        return self.backoff.accept_failed(exc)

    def accepted(self) -> None:
        self.backoff.accepted()


def read_line(sock: socket.socket) -> bytes:
    """Read up to and including b"\\n", or to EOF."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def upper_line(request: socket.socket, client_address: Any, server: Any) -> None:
    """Answer one line, upper-cased."""
    request.sendall(read_line(request).upper())


def make_server(
    handler: Handler,
    dispatcher: Dispatcher,
    *,
    timeout_policy: TimeoutPolicy | None = None,
    accept_error_policy: SignallingBackoff | None = None,
    error_policy: Errors | None = None,
) -> TCPServer:
    server: TCPServer = Server(
        transport=TCPTransport(("127.0.0.1", 0)),
        acceptor=StreamAcceptor(),
        handler=handler,
        dispatcher=dispatcher,
        timeout_policy=timeout_policy,
        accept_error_policy=accept_error_policy,
        error_policy=Errors() if error_policy is None else error_policy,
    )
    return server


@contextmanager
def running(server: TCPServer) -> Iterator[TCPServer]:
    """serve_forever in a thread; on exit shut down, join and close the server."""
    failures: list[BaseException] = []

    def serve() -> None:
        try:
            server.serve_forever(poll_interval=0.1)
        except BaseException as exc:  # reported below
            failures.append(exc)

    thread = threading.Thread(target=serve, name="serve_forever")
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(WAIT)
        server.server_close()
        assert not thread.is_alive()
        assert not failures, failures


def connect(server: TCPServer, timeout: float = WAIT) -> socket.socket:
    return socket.create_connection(server.server_address[:2], timeout=timeout)


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


class TestIdleCrowd:
    @pytest.mark.timeout(30)
    def test_200_idle_connections_do_not_starve_an_8_worker_pool(self) -> None:
        """200 silent connections occupy no worker: another client is served within 1 s, and each silent one is closed at its first-byte budget."""
        budget = 0.5
        policy = ConnectionTimeouts(Budget(first_byte=budget))
        pool = ThreadPoolDispatcher(8)
        idle: list[socket.socket] = []
        with running(make_server(upper_line, pool, timeout_policy=policy)) as server:
            try:
                connected = time.monotonic()
                for _ in range(200):
                    idle.append(connect(server))
                started = time.monotonic()
                with connect(server) as client:
                    client.sendall(b"ping\n")
                    reply = read_to_eof(client)
                latency = time.monotonic() - started
                busy_during_crowd = pool.statistics().busy
                closed_after = []
                for sock in idle:
                    assert sock.recv(1) == b"", "a silent connection was not closed"
                    closed_after.append(time.monotonic() - connected)
            finally:
                close_all(idle)
        print(
            f"\nidle crowd: served in {latency * 1000:.1f} ms beside 200 silent connections; "
            f"silent ones closed after {min(closed_after):.2f}..{max(closed_after):.2f} s (budget {budget} s)"
        )
        assert reply == b"PING\n"
        assert latency < 1.0
        assert busy_during_crowd <= 1
        assert min(closed_after) >= budget - 0.05
        assert max(closed_after) < budget + 3.0
        assert policy.statistics() == {"first_byte": 200}


class TestDribbler:
    @pytest.mark.timeout(20)
    def test_dribbling_client_is_cut_at_its_lifetime_and_frees_its_worker(self) -> None:
        """A client sending one byte per 0.1 s defeats the idle limit but is cut at its lifetime; the only worker then serves the next client."""
        lifetime = 1.0
        policy = ConnectionTimeouts(Budget(idle=0.5, lifetime=lifetime))
        errors = Errors()
        stop = threading.Event()
        cut_after: list[float] = []

        def dribble(sock: socket.socket, started: float) -> None:
            try:
                while not stop.is_set():
                    sock.send(b"x")
                    stop.wait(0.1)  # the client's pace
            except OSError:
                cut_after.append(time.monotonic() - started)

        with running(make_server(upper_line, ThreadPoolDispatcher(1), timeout_policy=policy, error_policy=errors)) as server:
            dribbler = connect(server)
            started = time.monotonic()
            thread = threading.Thread(target=dribble, args=(dribbler, started))
            thread.start()
            try:
                with connect(server) as client:
                    client.sendall(b"next\n")  # queued behind the dribbler
                    reply = read_to_eof(client)
                    served_after = time.monotonic() - started
                thread.join(WAIT)
            finally:
                stop.set()
                thread.join(WAIT)
                dribbler.close()
        print(f"\ndribbler: next client served after {served_after:.2f} s (lifetime {lifetime} s); dribbler saw the cut after {cut_after}")
        assert reply == b"NEXT\n"
        assert lifetime - 0.05 <= served_after < lifetime + 1.5
        assert cut_after and cut_after[0] < lifetime + 1.5
        assert policy.statistics() == {"lifetime": 1}
        assert errors.exceptions == [], "the cut must not be reported as a handler error"


def _open_fds() -> set[int]:
    listed = [int(name) for name in os.listdir("/proc/self/fd")]
    alive = set()
    for fd in listed:
        try:
            os.fstat(fd)
        except OSError:
            continue  # the listing's own descriptor, closed already
        alive.add(fd)
    return alive


def _limit_leaving(free: int) -> int:
    """The RLIMIT_NOFILE soft limit that leaves exactly *free* descriptor numbers."""
    fds = _open_fds()
    candidate, found = 0, 0
    while True:
        if candidate not in fds:
            found += 1
            if found == free:
                return candidate + 1
        candidate += 1


class TestDescriptorStarvation:
    @pytest.mark.timeout(30)
    @pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
    def test_emfile_keeps_cpu_low_and_service_resumes(self) -> None:
        """With RLIMIT_NOFILE lowered so accept fails with EMFILE, the process stays near idle, and every waiting client is served once descriptors free."""
        holders_count, waiting_count = 4, 10
        held = threading.Event()
        entered = threading.Semaphore(0)

        def handler(request: socket.socket, client_address: Any, server: Any) -> None:
            line = read_line(request)
            if line == b"hold\n":
                entered.release()
                held.wait(WAIT)
            request.sendall(line.upper())

        policy = SignallingBackoff(AcceptBackoff())
        # Client sockets are created before the limit drops: connect() needs no descriptor.
        holders = [socket.socket() for _ in range(holders_count)]
        waiting = [socket.socket() for _ in range(waiting_count)]
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        with running(make_server(handler, ThreadPoolDispatcher(8), accept_error_policy=policy)) as server:
            address = server.server_address[:2]
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (_limit_leaving(holders_count), hard))
                try:
                    for sock in holders:
                        sock.settimeout(WAIT)
                        sock.connect(address)
                        sock.sendall(b"hold\n")
                    for _ in holders:
                        assert entered.acquire(timeout=WAIT)
                    for sock in waiting:
                        sock.settimeout(WAIT)
                        sock.connect(address)  # completes in the kernel backlog
                        sock.sendall(b"wait\n")
                    assert policy.failed.wait(WAIT), "accept never hit EMFILE"
                    window = 1.0
                    cpu0, wall0, failures0 = time.process_time(), time.monotonic(), policy.failures
                    threading.Event().wait(window)  # the observation window
                    cpu = time.process_time() - cpu0
                    wall = time.monotonic() - wall0
                    attempts = policy.failures - failures0
                    served_during = 0
                    for sock in waiting:
                        sock.setblocking(False)
                        try:
                            served_during += bool(sock.recv(1, socket.MSG_PEEK))
                        except BlockingIOError:
                            pass
                        sock.settimeout(WAIT)
                    released = time.monotonic()
                    held.set()
                    holder_replies = [read_to_eof(sock) for sock in holders]
                    replies = [read_to_eof(sock) for sock in waiting]
                    resumed = time.monotonic() - released
                finally:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            finally:
                held.set()
                close_all(holders + waiting)
        served_after = sum(reply == b"WAIT\n" for reply in replies)
        print(
            f"\nEMFILE starvation: {cpu / wall:.3f} s CPU per s over {wall:.2f} s "
            f"({attempts} accept attempts); served during starvation: {served_during}, "
            f"after: {served_after}/{waiting_count} within {resumed * 1000:.0f} ms of descriptors freeing"
        )
        assert cpu / wall < 0.2
        assert attempts <= 20
        assert served_during == 0
        assert holder_replies == [b"HOLD\n"] * holders_count
        assert served_after == waiting_count
        assert policy.backoff.failures == 0, "accepted() was not called after recovery"

    @pytest.mark.timeout(40)
    @pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
    @pytest.mark.parametrize("kind", ["threading", "forking"])
    def test_compat_server_resumes_when_a_request_finishes(self, kind: str) -> None:
        """A compat ThreadingTCPServer / ForkingTCPServer paused 30 s by AcceptBackoff after EMFILE accepts again as soon as a finished request frees a descriptor, not when the pause ends."""
        pause = 30.0
        entered = threading.Event()
        released = threading.Event()

        class Hold(compat.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline()
                if line == b"hold\n":
                    # Forking: the handler runs in a child, so tell the test
                    # through the connection, and wait on it for the release.
                    self.wfile.write(b"entered\n")
                    entered.set()
                    if kind == "threading":
                        released.wait(WAIT)
                    else:
                        self.rfile.readline()
                self.wfile.write(line.upper())

        server_class = compat.ThreadingTCPServer if kind == "threading" else compat.ForkingTCPServer
        server = server_class(("127.0.0.1", 0), Hold)
        policy = SignallingBackoff(AcceptBackoff(pause, pause))
        server.accept_error_policy = policy
        # Client sockets are created before the limit drops: connect() needs no descriptor.
        holder, waiting = socket.socket(), socket.socket()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        with running(server):
            address = server.server_address[:2]
            try:
                holder.settimeout(WAIT)
                waiting.settimeout(WAIT)
                if kind == "threading":
                    # One descriptor left: the held request takes it.
                    resource.setrlimit(resource.RLIMIT_NOFILE, (_limit_leaving(1), hard))
                holder.connect(address)
                holder.sendall(b"hold\n")
                assert read_line(holder) == b"entered\n"
                if kind == "forking":
                    # The parent closed its copy at fork: leave it none at all.
                    # (What a finished child frees is system-wide: ENFILE.)
                    resource.setrlimit(resource.RLIMIT_NOFILE, (_limit_leaving(1) - 1, hard))
                waiting.connect(address)  # completes in the kernel backlog
                waiting.sendall(b"wait\n")
                assert policy.failed.wait(WAIT), "accept never hit EMFILE"
                if kind == "forking":
                    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                finished = time.monotonic()
                if kind == "threading":
                    released.set()  # the handler returns, its socket is closed
                else:
                    holder.sendall(b"go\n")  # the child finishes and exits
                assert read_to_eof(holder) == b"HOLD\n"
                reply = read_to_eof(waiting)
                resumed = time.monotonic() - finished
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                released.set()
                close_all([holder, waiting])
        print(f"\ncompat {kind}: paused {pause:.0f} s after EMFILE, served {resumed * 1000:.1f} ms after a request finished")
        assert reply == b"WAIT\n"
        assert resumed < pause / 3, "the finished request did not wake the paused loop"
        assert policy.failures == 1


def _dispatcher(name: str) -> Dispatcher:
    if name == "threading":
        return ThreadingDispatcher()
    if name == "pool":
        return ThreadPoolDispatcher(64)
    if name == "pool-backpressure":
        return ThreadPoolDispatcher(1, queue_size=0)
    assert name == "forking"
    return ForkingDispatcher()


class TestDrain:
    @pytest.mark.timeout(30)
    @pytest.mark.parametrize("dispatch", ["threading", "pool"])
    def test_sigterm_drain_with_50_requests_in_flight_loses_none(self, dispatch: str) -> None:
        """A SIGTERM handler starts drain() with 50 requests in flight; all 50 complete and every client gets its reply."""
        release = threading.Event()
        entered = threading.Semaphore(0)

        def handler(request: socket.socket, client_address: Any, server: Any) -> None:
            line = read_line(request)
            entered.release()
            release.wait(WAIT)
            request.sendall(line.upper())

        clients: list[socket.socket] = []
        drainers: list[threading.Thread] = []
        reports: list[DrainReport] = []
        server = make_server(handler, _dispatcher(dispatch))

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            drainer = threading.Thread(target=lambda: reports.append(server.drain(WAIT)), name="drain")
            drainer.start()
            drainers.append(drainer)

        previous = signal.signal(signal.SIGTERM, on_sigterm)
        try:
            with running(server):
                try:
                    for i in range(50):
                        sock = connect(server)
                        clients.append(sock)
                        sock.sendall(b"req-%d\n" % i)
                    for _ in range(50):
                        assert entered.acquire(timeout=WAIT)
                    started = time.monotonic()
                    os.kill(os.getpid(), signal.SIGTERM)  # the handler runs in this thread as kill returns
                    assert drainers, "the SIGTERM handler did not run"
                    release.set()  # just after the drain started
                    drainers[0].join(WAIT)
                    drain_time = time.monotonic() - started
                    replies = [read_to_eof(sock) for sock in clients]
                finally:
                    release.set()
                    close_all(clients)
        finally:
            signal.signal(signal.SIGTERM, previous)
        [report] = reports
        print(f"\nSIGTERM drain ({dispatch}): 50 in flight, drained in {drain_time * 1000:.0f} ms, report {report!r}")
        assert report.finished and report.cut == () and report.remaining == ()
        assert replies == [b"REQ-%d\n" % i for i in range(50)]

    @pytest.mark.timeout(30)
    @pytest.mark.parametrize("dispatch", ["threading", "pool", "pool-backpressure", "forking"])
    def test_handler_stuck_in_recv_does_not_hold_drain_past_its_deadline(self, dispatch: str) -> None:
        """drain(timeout) cuts handlers stuck in recv at the deadline and returns within timeout + grace; the report lists them as cut."""
        timeout, grace = 0.3, 2.0
        clients_count = 2 if dispatch == "pool-backpressure" else 3
        entered_r, entered_w = os.pipe()

        def stuck(request: socket.socket, client_address: Any, server: Any) -> None:
            os.write(entered_w, b"x")
            while request.recv(4096):  # the client never sends EOF
                pass

        clients: list[socket.socket] = []
        try:
            server = make_server(stuck, _dispatcher(dispatch), timeout_policy=NoTimeout())
            with running(server):
                try:
                    for _ in range(clients_count):
                        sock = connect(server)
                        sock.sendall(b"x")
                        clients.append(sock)
                    handlers = 1 if dispatch == "pool-backpressure" else clients_count
                    for _ in range(handlers):
                        assert os.read(entered_r, 1) == b"x"
                    report = server.drain(timeout, grace=grace)
                    closing = time.monotonic()
                    server.server_close()
                    close_time = time.monotonic() - closing
                finally:
                    close_all(clients)
        finally:
            os.close(entered_r)
            os.close(entered_w)
        print(f"\nstuck recv ({dispatch}): drain took {report.elapsed * 1000:.0f} ms "
              f"(timeout {timeout * 1000:.0f} ms), {len(report.cut)} cut, server_close {close_time * 1000:.0f} ms")
        assert not report.finished
        assert report.elapsed < timeout + grace + 0.5
        assert len(report.cut) == clients_count
        assert report.remaining == ()
        assert close_time < 1.0
        with pytest.raises(ChildProcessError):
            os.waitpid(-1, os.WNOHANG)


class TestForkingDrain:
    @pytest.mark.timeout(30)
    def test_drain_waits_for_every_child_in_flight(self) -> None:
        """drain() with forked children in flight returns only once each has served its client and been reaped: every reply arrives, nothing is cut, no child is left."""

        def held(request: socket.socket, client_address: Any, server: Any) -> None:
            request.sendall(b"entered\n")
            request.sendall(read_line(request).upper())

        clients: list[socket.socket] = []
        reports: list[DrainReport] = []
        server = make_server(held, ForkingDispatcher(), timeout_policy=NoTimeout())
        with running(server):
            try:
                for _ in range(3):
                    sock = connect(server)
                    clients.append(sock)
                    assert read_line(sock) == b"entered\n"  # its child is serving it
                drainer = threading.Thread(target=lambda: reports.append(server.drain(WAIT)), name="drain")
                drainer.start()
                for i, sock in enumerate(clients):
                    sock.sendall(b"go %d\n" % i)
                replies = [read_to_eof(sock) for sock in clients]
                drainer.join(WAIT)
                # Every child reaped by drain itself, before server_close.
                with pytest.raises(ChildProcessError):
                    os.waitpid(-1, os.WNOHANG)
            finally:
                close_all(clients)
        assert replies == [b"GO %d\n" % i for i in range(3)]
        [report] = reports
        assert report.finished and report.cut == () and report.remaining == ()


class _CountingAcceptor:
    """A StreamAcceptor that counts the accepts that found nothing pending."""

    def __init__(self) -> None:
        self.inner = StreamAcceptor()
        self.empty = 0

    def accept(self, transport: Transport[socket.socket, Any]) -> tuple[socket.socket, Any]:
        try:
            return self.inner.accept(transport)
        except BlockingIOError:
            self.empty += 1
            raise


class TestForkingAccept:
    @pytest.mark.timeout(30)
    def test_sequential_clients_cost_few_failed_accepts(self) -> None:
        """A forking loop whose probe for a second connection found none accepts one per wake-up for a while: ten clients one after another cost at most two failed accepts, and each is served."""
        acceptor = _CountingAcceptor()
        server: TCPServer = Server(
            transport=TCPTransport(("127.0.0.1", 0)),
            acceptor=acceptor,
            handler=upper_line,
            dispatcher=ForkingDispatcher(),
            error_policy=Errors(),
        )
        replies = []
        with running(server):
            for i in range(10):
                with connect(server) as sock:
                    sock.sendall(b"line %d\n" % i)
                    replies.append(read_to_eof(sock))
        assert replies == [b"LINE %d\n" % i for i in range(10)]
        # One probe fails after the first client, the next after eight wake-ups without one.
        assert 1 <= acceptor.empty <= 2


class TestForkFailure:
    @pytest.mark.timeout(20)
    def test_fork_eagain_closes_the_request_reports_it_and_goes_on(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """fork() failing once with EAGAIN closes that request, reports the error, and the next request is served."""
        real_fork = os.fork
        failures = [OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))]

        def fork_failing_once() -> int:
            if failures:
                raise failures.pop()
            return real_fork()

        monkeypatch.setattr(os, "fork", fork_failing_once)
        errors = Errors()
        with running(make_server(upper_line, ForkingDispatcher(), error_policy=errors)) as server:
            with connect(server) as first:
                first.sendall(b"first\n")
                first_reply = read_to_eof(first)
            assert errors.wait_for(1)
            with connect(server) as second:
                second.sendall(b"second\n")
                second_reply = read_to_eof(second)
        assert first_reply == b""
        [exc] = errors.exceptions
        assert isinstance(exc, OSError) and exc.errno == errno.EAGAIN
        assert second_reply == b"SECOND\n"
        with pytest.raises(ChildProcessError):
            os.waitpid(-1, os.WNOHANG)
