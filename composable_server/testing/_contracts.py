"""The contract suites: ``check_<role>(make_...)`` functions that raise
:class:`AssertionError` when a component breaks a promise of
:mod:`composable_server.interfaces`.

Re-exported by :mod:`composable_server.testing`.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from socket import socket as Socket
from typing import Final, TypeVar, final

from ..exceptions import ServerClosedError
from ..interfaces import (
    AcceptErrorPolicy,
    AcceptFailed,
    Acceptor,
    ConnectionAccepted,
    ConnectionRefused,
    Dispatcher,
    DrainFinished,
    DrainStarted,
    ErrorPolicy,
    Observer,
    RequestFinished,
    RequestStarted,
    TimeoutPolicy,
    Transport,
    TransportStarted,
    Verifier,
    WorkerExited,
    WorkerStarted,
)
from ._fakes import RecordingObserver, _close_fds, _nonblocking_pipe

__all__ = (
    "CONTRACT_WAIT",
    "check_accept_error_policy",
    "check_acceptor",
    "check_dispatcher",
    "check_error_policy",
    "check_observer",
    "check_timeout_policy",
    "check_transport",
    "check_verifier",
)

RequestT = TypeVar("RequestT")
AddressT = TypeVar("AddressT")

# How long a contract suite waits for something that should happen at once
# (a request becoming readable, a job finishing) before declaring failure.
# Generous: the machines running the suites are shared and may be slow.
CONTRACT_WAIT: Final = 10.0


def _readable(fd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000.0))


def check_transport(make_transport: Callable[[], Transport[RequestT, AddressT]]) -> None:
    """Assert the :class:`~composable_server.interfaces.Transport` contract.

    Args:
        make_transport: returns a fresh, unbound transport each call (at
            least three are made); the suite closes each one.

    Raises:
        AssertionError: a promise of the contract is broken.
    """
    # Closing a transport that was never bound is fine, and idempotent.
    fresh = make_transport()
    try:
        before = fresh.server_address
        assert fresh.server_address == before, "server_address changed without bind()"
    finally:
        fresh.close()
    fresh.close()
    assert fresh.fileno() == -1, f"fileno() is {fresh.fileno()} after close(), expected -1"

    transport = make_transport()
    try:
        transport.bind()
        transport.activate()
        bound = transport.server_address
        assert transport.server_address == bound, "server_address is not stable after bind()"
        fd = transport.fileno()
        assert fd >= 0, f"fileno() is {fd!r} while open, expected a descriptor"
        try:
            sock = transport.socket
        except TypeError:
            pass  # allowed: a transport without a real socket (in-memory fakes)
        else:
            assert isinstance(sock, Socket), f"socket is {sock!r}, expected a socket.socket"
            assert sock.fileno() == fd, "socket.fileno() differs from fileno()"
        assert not _readable(fd, 0), "fileno() is readable with no request pending"
        nonblocking = transport.nonblocking
        assert isinstance(nonblocking, bool), f"nonblocking is {nonblocking!r}, expected a bool"
        connections = transport.request_ops.connections
        assert isinstance(connections, bool), f"request_ops.connections is {connections!r}, expected a bool"
        late = transport.late_admission
        assert isinstance(late, bool), f"late_admission is {late!r}, expected a bool"
    finally:
        transport.close()
    assert transport.fileno() == -1, f"fileno() is {transport.fileno()} after close(), expected -1"
    transport.close()  # idempotent: must not raise
    assert transport.fileno() == -1, "fileno() is not -1 after a second close()"
    try:
        transport.socket
    except ServerClosedError:
        pass
    else:
        raise AssertionError("transport.socket did not raise ServerClosedError after close()")


@contextlib.contextmanager
def _open(transport: Transport[RequestT, AddressT]) -> Iterator[Transport[RequestT, AddressT]]:
    try:
        transport.bind()
        transport.activate()
        yield transport
    finally:
        transport.close()


def check_acceptor(
    make_transport: Callable[[], Transport[RequestT, AddressT]],
    make_acceptor: Callable[[], Acceptor[RequestT, AddressT]],
    connect: Callable[[Transport[RequestT, AddressT]], AbstractContextManager[object]],
) -> None:
    """Assert the :class:`~composable_server.interfaces.Acceptor` contract,
    and the request half of the transport's (``shutdown_request``,
    ``close_request`` and every operation of ``request_ops``).

    Args:
        make_transport: returns a fresh, unbound transport (bound, activated
            and closed by the suite).
        make_acceptor: returns the acceptor under test.
        connect: ``connect(transport)`` is a context manager that makes one
            client request pending on the bound transport and keeps the
            client alive until it exits.

    Raises:
        AssertionError: a promise of the contract is broken.
    """
    acceptor = make_acceptor()
    with _open(make_transport()) as transport:
        fd = transport.fileno()
        # One pending request: readable, accepted once, then not readable.
        with connect(transport):
            assert _readable(fd, CONTRACT_WAIT), "fileno() did not become readable for a pending request"
            request, client_address = acceptor.accept(transport)
            assert not _readable(fd, 0), "fileno() still readable after the only request was accepted"
            _check_request_ops(transport, request, client_address)
            # The caller owns the request and hands it back to the transport.
            transport.shutdown_request(request)
            transport.close_request(request)  # idempotent after shutdown: must not raise

        # Two pending requests give two distinct accepts.
        with connect(transport), connect(transport):
            requests = []
            for _ in range(2):
                assert _readable(fd, CONTRACT_WAIT), "fileno() not readable with a request pending"
                requests.append(acceptor.accept(transport)[0])
            for request in requests:
                transport.close_request(request)
                transport.close_request(request)  # idempotent

        # The peer going away first is not an error for shutdown_request.
        with connect(transport):
            assert _readable(fd, CONTRACT_WAIT), "fileno() did not become readable for a pending request"
            request, client_address = acceptor.accept(transport)
        ops = transport.request_ops
        try:
            ops.reject(request, b"contract: busy\r\n", client_address)
            ops.abort(request)
            transport.shutdown_request(request)
        except OSError as exc:
            raise AssertionError(f"a request operation raised {exc!r} after the peer left") from exc


def _check_request_ops(transport: Transport[RequestT, AddressT], request: RequestT, client_address: AddressT) -> None:
    """The promises of ``transport.request_ops`` on a live request."""
    ops = transport.request_ops
    fd = ops.silent_fd(request)
    assert fd >= -1, f"silent_fd() returned {fd!r}, expected -1 or a descriptor"
    if not ops.connections:
        assert fd == -1, f"silent_fd() returned {fd} for a request that is not a connection"
    try:
        ops.limit_idle(request, CONTRACT_WAIT, kernel=True)
        ops.limit_idle(request, CONTRACT_WAIT, kernel=False)
        ops.reject(request, b"contract: busy\r\n", client_address)  # best effort, must not block
        ops.abort(request)
        ops.abort(request)  # repeatable
    except OSError as exc:
        raise AssertionError(f"a request operation raised {exc!r}; it must not") from exc


def check_verifier(
    make_verifier: Callable[[], Verifier[RequestT, AddressT]],
    samples: Iterable[tuple[RequestT, AddressT]],
) -> None:
    """Assert the :class:`~composable_server.interfaces.Verifier` contract:
    ``verify`` returns a bool for each sample, promptly, without raising.

    Args:
        make_verifier: returns the verifier under test.
        samples: ``(request, client_address)`` pairs to ask about.
    """
    verifier = make_verifier()
    for request, client_address in samples:
        started = time.monotonic()
        verdict = verifier.verify(request, client_address)
        elapsed = time.monotonic() - started
        assert isinstance(verdict, bool), f"verify{(request, client_address)!r} returned {verdict!r}, not a bool"
        # "Must not block for long (it runs in the accept loop)".
        assert elapsed < 1.0, f"verify() took {elapsed:.3f}s; it runs in the accept loop"


@final
class _ContractJob:
    """A job that reports ``run``/``close`` through a pipe, so that calls made
    in a forked child are seen by the parent; optionally gated."""

    __slots__ = ("_gate", "_record", "client_address", "ident")

    def __init__(self, ident: int, record_fd: int, gate_fd: int | None) -> None:
        self.ident = ident
        self.client_address: object = ("contract", ident)
        self._record = record_fd
        self._gate = gate_fd

    def _report(self, event: str) -> None:
        # One short write(2) to a pipe is atomic (< PIPE_BUF, pipe(7)).
        os.write(self._record, f"{event} {self.ident} {os.getpid()}\n".encode())

    def run(self) -> bool:
        if self._gate is not None:
            _readable(self._gate, CONTRACT_WAIT)
        self._report("run")
        return True

    def close(self, message: bytes = b"") -> None:
        self._report("close")

    def abort(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<contract job {self.ident}>"


@final
class _JobLog:
    """The parent's side of the contract jobs' report pipe."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = _nonblocking_pipe()
        self.gate_read, self.gate_write = _nonblocking_pipe()
        self._buffer = b""
        self._next = 0

    def job(self, *, gated: bool = False) -> _ContractJob:
        self._next += 1
        return _ContractJob(self._next, self.write_fd, self.gate_read if gated else None)

    def open_gate(self) -> None:
        os.write(self.gate_write, b"\0")  # readable for every waiter, never consumed

    def events(self) -> list[tuple[str, int, int]]:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.read_fd, 65536):
                self._buffer += chunk
        out = []
        for line in self._buffer.decode().splitlines():
            event, ident, pid = line.split()
            out.append((event, int(ident), int(pid)))
        return out

    def check(self, jobs: Sequence[_ContractJob], *, must_run: bool) -> None:
        events = self.events()
        for job in jobs:
            mine = [(event, pid) for event, ident, pid in events if ident == job.ident]
            runs = [pid for event, pid in mine if event == "run"]
            closes = [pid for event, pid in mine if event == "close"]
            if must_run or runs:
                assert len(runs) == 1, f"{job!r} was run {len(runs)} times, expected once"
                assert runs[0] not in closes, f"{job!r} was both run and closed in process {runs[0]}"
                # Forking: the parent closes its copy once; others never close.
                assert len(closes) <= 1, f"{job!r} was closed {len(closes)} times"
            else:
                assert len(closes) == 1, f"{job!r} was neither run nor closed exactly once: {mine!r}"

    def untouched(self, job: _ContractJob) -> bool:
        return not any(ident == job.ident for _, ident, _ in self.events())

    def close(self) -> None:
        _close_fds(self.read_fd, self.write_fd, self.gate_read, self.gate_write)


def check_dispatcher(make_dispatcher: Callable[[], Dispatcher], *, concurrent: bool) -> None:
    """Assert the :class:`~composable_server.interfaces.Dispatcher` contract.

    Jobs report through a pipe, so a dispatcher that runs them in another
    process (fork) is checked like one that runs them in a thread.

    Args:
        make_dispatcher: returns a fresh dispatcher (the suite closes it).
        concurrent: True if ``dispatch`` returns before the job has finished
            (threads, processes); then in-flight jobs and ``join`` are checked.
            False for dispatchers that run the job inside ``dispatch``.

    Raises:
        AssertionError: a promise of the contract is broken.
    """
    log = _JobLog()
    try:
        # Every job is run exactly once, and nothing is left in flight.
        dispatcher = make_dispatcher()
        try:
            jobs = [log.job() for _ in range(5)]
            for job in jobs:
                dispatcher.dispatch(job)
                dispatcher.service()
            left = dispatcher.join(CONTRACT_WAIT)
            assert left == (), f"join() returned {left!r} after every job finished"
            log.check(jobs, must_run=True)
        finally:
            dispatcher.close()

        # Close: idempotent, and a closed dispatcher refuses jobs, which stay the caller's.
        dispatcher.close()
        refused = log.job()
        try:
            dispatcher.dispatch(refused)
        except ServerClosedError:
            pass
        else:
            raise AssertionError("dispatch() after close() did not raise ServerClosedError")
        dispatcher.join(CONTRACT_WAIT)
        assert log.untouched(refused), "a refused job was run or closed by the dispatcher"

        if concurrent:
            _check_in_flight(make_dispatcher, log)
    finally:
        log.close()


def _check_in_flight(make_dispatcher: Callable[[], Dispatcher], log: _JobLog) -> None:
    dispatcher = make_dispatcher()
    try:
        gated = log.job(gated=True)
        dispatcher.dispatch(gated)
        started = time.monotonic()
        dispatcher.service()
        assert time.monotonic() - started < 1.0, "service() blocked while a job was in flight"
        left = dispatcher.join(0.01)
        # The dispatcher may report its own handle on the job (a forking
        # dispatcher reports the child); it carries the job's client address.
        assert [job.client_address for job in left] == [gated.client_address], (
            f"join(0.01) returned {left!r} while {gated!r} was running"
        )
        log.open_gate()
        left = dispatcher.join(CONTRACT_WAIT)
        assert left == (), f"join() returned {left!r} after the job finished"
        log.check([gated], must_run=True)
    finally:
        log.open_gate()
        dispatcher.close()
    dispatcher.close()


def check_error_policy(make_policy: Callable[[], ErrorPolicy], *, reraises: bool = False) -> None:
    """Assert the :class:`~composable_server.interfaces.ErrorPolicy` contract.

    Called inside an ``except`` block, a policy returns normally (the server
    goes on), or, if *reraises*, raises that very exception again.

    Args:
        make_policy: returns the policy under test.
        reraises: the policy is documented to re-raise (e.g. ``ReRaise``).
    """
    policy = make_policy()
    samples: list[tuple[object, object, BaseException]] = [
        (object(), ("127.0.0.1", 5555), ValueError("contract check")),
        (None, "/tmp/contract.sock", OSError(errno.ECONNRESET, "reset")),
        ((b"data", None), ("::1", 5555, 0, 0), KeyError("contract")),
    ]
    for request, client_address, exc in samples:
        try:
            raise exc
        except BaseException as caught:
            try:
                policy.handle_error(request, client_address, caught)
            except BaseException as raised:
                if not reraises:
                    raise AssertionError(f"{policy!r} raised {raised!r}; it must not") from raised
                assert raised is exc, f"{policy!r} raised {raised!r}, expected the original {exc!r}"
            else:
                assert not reraises, f"{policy!r} did not re-raise {exc!r}"


def check_timeout_policy(make_policy: Callable[[], TimeoutPolicy]) -> None:
    """Assert the :class:`~composable_server.interfaces.TimeoutPolicy` contract:
    ``timeout`` is None or a number of seconds >= 0, stable between reads, and
    ``handle_timeout()`` can be called repeatedly.

    Args:
        make_policy: returns the policy under test.
    """
    policy = make_policy()
    timeout = policy.timeout
    if timeout is not None:
        assert not isinstance(timeout, bool), f"timeout is {timeout!r}, expected None or seconds"
        assert not math.isnan(timeout) and timeout >= 0, f"timeout is {timeout!r}, expected >= 0"
    assert policy.timeout == timeout, "timeout changed between two reads"
    policy.handle_timeout()
    policy.handle_timeout()
    budget = policy.budget
    if budget is not None:
        for name in ("first_byte", "idle", "lifetime"):
            limit: float | None = getattr(budget, name)
            assert limit is None or limit > 0, f"budget.{name} is {limit!r}, expected None or seconds > 0"
    for limit_name in ("first_byte", "idle", "lifetime"):
        policy.budget_exceeded(("127.0.0.1", 5555), limit_name)


def check_accept_error_policy(make_policy: Callable[[], AcceptErrorPolicy]) -> None:
    """Assert the :class:`~composable_server.interfaces.AcceptErrorPolicy`
    contract: ``accept_failed`` returns a pause in seconds >= 0 for transient
    and capacity errors alike and never raises; ``accepted`` can always be called.

    Args:
        make_policy: returns a fresh policy.
    """
    policy = make_policy()
    policy.accepted()  # before any failure: nothing to reset, must not raise
    for code in (errno.ECONNABORTED, errno.EMFILE, errno.EMFILE, errno.ENFILE, errno.ENOBUFS):
        try:
            delay = policy.accept_failed(OSError(code, os.strerror(code)))
        except Exception as exc:
            raise AssertionError(f"accept_failed({errno.errorcode[code]}) raised {exc!r}") from exc
        assert not isinstance(delay, bool), f"accept_failed returned {delay!r}, expected seconds"
        assert not math.isnan(delay) and delay >= 0, f"accept_failed returned {delay!r}, expected seconds >= 0"
    policy.accepted()


# What check_observer feeds: for each connection, the events a server sends
# in the order it sends them (see composable_server.observers), one list per
# way a connection ends, plus the loop's, the drain's and the supervisor's.
def _connection_events(client: object) -> list[tuple[str, object]]:
    accepted = ("connection_accepted", ConnectionAccepted(client))
    started = ("request_started", RequestStarted(client))
    plain = ("transport_started", TransportStarted(client, "TCPTransport", 0.0, None, False))
    tls = ("transport_started", TransportStarted(client, "TLSTransport", 0.002, None, True))
    tls_failed = ("transport_started", TransportStarted(client, "TLSTransport", 0.01, "TLSHandshakeError", True))
    proxy_failed = ("transport_started", TransportStarted(client, "ProxyProtocolTransport", 0.0, "ProxyProtocolError"))

    finished, refused = "request_finished", "connection_refused"
    cases = [
        [accepted, started, plain, (finished, RequestFinished(client, 0.001, "ok", bytes_in=78, bytes_out=1520))],
        [accepted, started, tls, (finished, RequestFinished(client, 0.003, "handler_error", "ValueError"))],
        [accepted, started, plain, (finished, RequestFinished(client, 0.2, "client_gone", "ConnectionResetError"))],
        [accepted, started, plain, (finished, RequestFinished(client, 300.0, "budget", "TimeoutError", "idle"))],
        [accepted, started, plain, (finished, RequestFinished(client, 60.0, "budget", None, "lifetime"))],
        [accepted, (finished, RequestFinished(client, 10.0, "budget", None, "first_byte"))],  # cut while parked
        [accepted, started, plain, (finished, RequestFinished(client, 5.0, "drain"))],
        [accepted, started, tls_failed, (finished, RequestFinished(client, 0.01, "start_failed", "TLSHandshakeError"))],
        [accepted, started, proxy_failed, (finished, RequestFinished(client, 0.0, "start_failed", "ProxyProtocolError"))],
        [accepted, started, plain, (finished, RequestFinished(client, 0.0, "refused"))],  # late admission
        [accepted, (refused, ConnectionRefused(client, "cidr", "CIDRVerifier"))],
        [accepted, (refused, ConnectionRefused(client, "connection_cap", "ConnectionCapVerifier"))],
        [accepted, (refused, ConnectionRefused(client, "rate_limit", "RateLimitVerifier"))],
        [accepted, (refused, ConnectionRefused(client, "peer_credentials", "PeerCredentialsVerifier"))],
        [accepted, (refused, ConnectionRefused(client, "verifier", "MyVerifier"))],
        [accepted, (refused, ConnectionRefused(client, "pool_full", "<ThreadPoolDispatcher [queued: 0]>"))],
    ]
    return [event for case in cases for event in case]


_SERVER_EVENTS: Final[tuple[tuple[str, object], ...]] = (
    ("accept_failed", AcceptFailed("OSError(EMFILE)", 0.5)),
    ("accept_failed", AcceptFailed("OSError(ECONNABORTED)", 0.0)),
    ("worker_started", WorkerStarted(4242)),
    ("worker_exited", WorkerExited(4242, -9)),
    ("worker_started", WorkerStarted(4243, replacing=4242)),
    ("worker_exited", WorkerExited(4243, 0)),
    ("drain_started", DrainStarted(10.0)),
    ("drain_finished", DrainFinished(False, 10.0, (("127.0.0.1", 1),), ())),
    ("drain_started", DrainStarted(None)),
    ("drain_finished", DrainFinished(True, 0.1)),
)

_CLIENTS: Final[tuple[object, ...]] = (("127.0.0.1", 40000), ("::1", 40001, 0, 0), "/tmp/contract.sock", None)


def _feed(observer: Observer, events: Iterable[tuple[str, object]]) -> None:
    for name, event in events:
        try:
            returned = getattr(observer, name)(event)
        except Exception as exc:
            raise AssertionError(f"{observer!r}.{name}({event!r}) raised {exc!r}; it must not") from exc
        assert returned is None, f"{observer!r}.{name}() returned {returned!r}, expected None"


@final
class _RaisingObserver:
    """An observer whose every method raises."""

    def __getattr__(self, name: str) -> Callable[[object], None]:
        def fail(event: object) -> None:
            raise RuntimeError(f"contract check: {name} fails")

        return fail


def check_observer(make_observer: Callable[[], Observer], *, threads: int = 4, rounds: int = 5) -> None:
    """Assert the :class:`~composable_server.interfaces.Observer` contract.

    Feeds every event type with realistic records (every outcome, every
    refusal reason, TLS and PROXY failures, accept errors, drains, prefork
    workers), in a server's order for each connection, from *threads*
    threads at once, as a threaded server calls it; every call must return
    None and not raise.  Then, inside an
    :class:`~composable_server.observers.ObserverGroup` behind an observer
    that raises on every event, the group must contain the failures (it
    logs them to ``composable_server.observers``) and still tell every
    observer after it.

    Args:
        make_observer: returns a fresh observer (each call must give one
            with its own state, e.g. its own metrics registry).
        threads: threads feeding the observer at once.
        rounds: how often each thread feeds every connection's events.
    """
    from ..observers import ObserverGroup  # the observers module, only for this suite

    observer = make_observer()
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def work(index: int) -> None:
        try:
            barrier.wait(CONTRACT_WAIT)
            for _ in range(rounds):
                for client in _CLIENTS:
                    _feed(observer, _connection_events(client if client is None else (index, client)))
            _feed(observer, _SERVER_EVENTS)
        except BaseException as exc:  # reported by the caller's thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,), name=f"check_observer-{n}") for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(CONTRACT_WAIT * 6)
    assert not any(worker.is_alive() for worker in workers), f"{observer!r}: a feeding thread did not finish"
    if errors:
        raise errors[0]

    recorder = RecordingObserver()
    group = ObserverGroup([_RaisingObserver(), make_observer(), recorder])
    events = _connection_events(("127.0.0.1", 40002)) + list(_SERVER_EVENTS)
    _feed(group, events)
    assert recorder.events == events, "an ObserverGroup did not tell every observer after a raising one"
