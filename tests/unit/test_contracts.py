"""Every contract suite of composable_server.testing, run against the fakes and
against every real component that needs no socket; proof that the suites have
teeth (a component breaking a promise fails them); and the fakes' own
behaviour beyond the shared contracts (scripts, hooks, records).

Real transports and acceptors need sockets: their suites run in
tests/integration/test_contracts.py.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import select
import threading
from collections.abc import Callable
from typing import cast

import pytest
from prometheus_client import CollectorRegistry

from composable_server import (
    AllowAll,
    Dispatcher,
    ErrorPolicy,
    FixedTimeout,
    ForkingDispatcher,
    Job,
    LoggingErrorPolicy,
    NoTimeout,
    PrintTraceback,
    ReRaise,
    ServerClosedError,
    SyncDispatcher,
    ThreadingDispatcher,
    TimeoutPolicy,
    UDPTransport,
    Verifier,
    all_of,
    any_of,
)
from composable_server.dispatchers import ThreadPoolDispatcher
from composable_server.interfaces import AcceptErrorPolicy, DrainFinished, Observer, RequestFinished
from composable_server.metrics import MetricsObserver
from composable_server.observers import AccessLog, BaseObserver, ObserverGroup
from composable_server.policies import AcceptBackoff, Budget, ConnectionTimeouts, RetryImmediately
from composable_server.testing import (
    InlineDispatcher,
    MemoryAcceptor,
    MemoryRequest,
    MemoryRequestOps,
    MemoryTransport,
    MemoryVerifier,
    RaisingAcceptor,
    RecordingAcceptErrorPolicy,
    RecordingErrorPolicy,
    RecordingHandler,
    RecordingObserver,
    RecordingTimeoutPolicy,
    check_accept_error_policy,
    check_acceptor,
    check_dispatcher,
    check_error_policy,
    check_observer,
    check_timeout_policy,
    check_transport,
    check_verifier,
)
from composable_server.verifiers import allow_networks, deny_networks

SAMPLES: list[tuple[object, object]] = [
    (MemoryRequest(), ("127.0.0.1", 5555)),
    (MemoryRequest(), ("::1", 5555, 0, 0)),
    ((b"datagram", None), ("192.0.2.7", 53)),
    (MemoryRequest(), "/tmp/server.sock"),
    (MemoryRequest(), ""),
]


def _memory_transport() -> MemoryTransport[MemoryRequest, str]:
    return MemoryTransport("memory", bound_address="memory:bound")


def _memory_connect(transport: object) -> contextlib.AbstractContextManager[object]:
    assert isinstance(transport, MemoryTransport)
    transport.connect(MemoryRequest(b"ping"), "client")
    return contextlib.nullcontext()


class TestMemoryTransport:
    @pytest.mark.timeout(10)
    def test_transport_contract(self) -> None:
        """MemoryTransport keeps the Transport contract."""
        check_transport(_memory_transport)


class TestMemoryAcceptor:
    @pytest.mark.timeout(10)
    def test_acceptor_contract(self) -> None:
        """MemoryAcceptor on a MemoryTransport keeps the Acceptor contract."""
        check_acceptor(_memory_transport, MemoryAcceptor, _memory_connect)


class TestRaisingAcceptor:
    @pytest.mark.timeout(10)
    def test_acceptor_contract_once_script_is_used(self) -> None:
        """A RaisingAcceptor with an empty script is a transparent wrapper."""
        check_acceptor(_memory_transport, lambda: RaisingAcceptor(MemoryAcceptor()), _memory_connect)


VERIFIERS: dict[str, Callable[[], Verifier[object, object]]] = {
    "MemoryVerifier(True)": lambda: MemoryVerifier(True),
    "MemoryVerifier(False)": lambda: MemoryVerifier(False),
    "MemoryVerifier(predicate)": lambda: MemoryVerifier(lambda request, address: isinstance(address, tuple)),
    "AllowAll": AllowAll,
    "all_of()": all_of,
    "any_of()": any_of,
    "all_of(AllowAll, any_of(...))": lambda: all_of(AllowAll(), any_of(MemoryVerifier(False), AllowAll())),
    "allow_networks": lambda: allow_networks("127.0.0.0/8", "::1/128"),
    "deny_networks": lambda: deny_networks("192.0.2.0/24"),
}


class TestVerifiers:
    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("make", VERIFIERS.values(), ids=VERIFIERS.keys())
    def test_verifier_contract(self, make: Callable[[], Verifier[object, object]]) -> None:
        """Every verifier returns a bool, promptly, for every kind of address."""
        check_verifier(make, SAMPLES)


# (factory, concurrent): concurrent dispatchers return before the job ends.
DISPATCHERS: dict[str, tuple[Callable[[], Dispatcher], bool]] = {
    "InlineDispatcher": (InlineDispatcher, False),
    "SyncDispatcher": (SyncDispatcher, False),
    "ThreadingDispatcher": (ThreadingDispatcher, True),
    "ThreadingDispatcher(daemon)": (lambda: ThreadingDispatcher(daemon=True), True),
    "ThreadingDispatcher(no block_on_close)": (lambda: ThreadingDispatcher(block_on_close=False), True),
    "ThreadingDispatcher(max_threads=1)": (lambda: ThreadingDispatcher(max_threads=1), True),
    "ThreadPoolDispatcher": (ThreadPoolDispatcher, True),
    "ThreadPoolDispatcher(max_workers=1)": (lambda: ThreadPoolDispatcher(1), True),
    "ForkingDispatcher": (ForkingDispatcher, True),
    "ForkingDispatcher(max_children=1)": (lambda: ForkingDispatcher(max_children=1), True),
    "ForkingDispatcher(no block_on_close)": (lambda: ForkingDispatcher(block_on_close=False), True),
}


class TestDispatchers:
    @pytest.mark.timeout(30)
    @pytest.mark.parametrize(("make", "concurrent"), DISPATCHERS.values(), ids=DISPATCHERS.keys())
    def test_dispatcher_contract(self, make: Callable[[], Dispatcher], concurrent: bool) -> None:
        """Every dispatcher runs each job exactly once, refuses jobs after close, and reports jobs in flight."""
        check_dispatcher(make, concurrent=concurrent)


ERROR_POLICIES: dict[str, tuple[Callable[[], ErrorPolicy], bool]] = {
    "RecordingErrorPolicy": (RecordingErrorPolicy, False),
    "PrintTraceback": (PrintTraceback, False),
    "LoggingErrorPolicy": (LoggingErrorPolicy, False),
    "ReRaise": (ReRaise, True),
}


class TestErrorPolicies:
    @pytest.mark.timeout(10)
    @pytest.mark.parametrize(("make", "reraises"), ERROR_POLICIES.values(), ids=ERROR_POLICIES.keys())
    def test_error_policy_contract(
        self, make: Callable[[], ErrorPolicy], reraises: bool, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Every error policy returns normally inside except, except ReRaise, which re-raises the same exception."""
        caplog.set_level(logging.CRITICAL + 1)  # keep LoggingErrorPolicy quiet
        check_error_policy(make, reraises=reraises)


TIMEOUT_POLICIES: dict[str, Callable[[], TimeoutPolicy]] = {
    "RecordingTimeoutPolicy": RecordingTimeoutPolicy,
    "RecordingTimeoutPolicy(0.5, budget)": lambda: RecordingTimeoutPolicy(0.5, budget=Budget(idle=1.0)),
    "NoTimeout": NoTimeout,
    "FixedTimeout(0)": lambda: FixedTimeout(0),
    "FixedTimeout(2.5)": lambda: FixedTimeout(2.5),
    "ConnectionTimeouts": ConnectionTimeouts,
    "ConnectionTimeouts(timeout=1)": lambda: ConnectionTimeouts(Budget(first_byte=1.0, lifetime=60.0), timeout=1.0),
}


class TestTimeoutPolicies:
    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("make", TIMEOUT_POLICIES.values(), ids=TIMEOUT_POLICIES.keys())
    def test_timeout_policy_contract(self, make: Callable[[], TimeoutPolicy], caplog: pytest.LogCaptureFixture) -> None:
        """Every timeout policy exposes a valid timeout and budget and survives handle_timeout."""
        caplog.set_level(logging.CRITICAL + 1)
        check_timeout_policy(make)


ACCEPT_ERROR_POLICIES: dict[str, Callable[[], AcceptErrorPolicy]] = {
    "RecordingAcceptErrorPolicy": RecordingAcceptErrorPolicy,
    "RecordingAcceptErrorPolicy(0.1)": lambda: RecordingAcceptErrorPolicy(0.1),
    "RetryImmediately": RetryImmediately,
    "AcceptBackoff": AcceptBackoff,
}


class TestAcceptErrorPolicies:
    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("make", ACCEPT_ERROR_POLICIES.values(), ids=ACCEPT_ERROR_POLICIES.keys())
    def test_accept_error_policy_contract(
        self, make: Callable[[], AcceptErrorPolicy], caplog: pytest.LogCaptureFixture
    ) -> None:
        """Every accept-error policy returns a pause >= 0 and never raises."""
        caplog.set_level(logging.CRITICAL + 1)
        check_accept_error_policy(make)


# -- the suites have teeth --------------------------------------------------------


class _StickyFilenoTransport:
    """A transport that breaks one promise: fileno() is not -1 after close()."""

    def __init__(self) -> None:
        self.inner: MemoryTransport[MemoryRequest, str] = _memory_transport()
        self.fd = self.inner.fileno()

    @property
    def server_address(self) -> str:
        return self.inner.server_address

    @property
    def socket(self) -> object:
        return self.inner.socket

    def bind(self) -> None:
        self.inner.bind()

    def activate(self) -> None:
        self.inner.activate()

    def close(self) -> None:
        self.inner.close()

    def fileno(self) -> int:
        return self.fd  # the bug

    def shutdown_request(self, request: MemoryRequest) -> None:
        self.inner.shutdown_request(request)

    def close_request(self, request: MemoryRequest) -> None:
        self.inner.close_request(request)


class _TwiceDispatcher:
    """A dispatcher that breaks "exactly one of run() or close()"."""

    closed = False

    def dispatch(self, job: Job) -> None:
        if self.closed:
            raise ServerClosedError("closed")
        job.run()
        job.run()

    def service(self) -> None:
        pass

    def join(self, timeout: float | None) -> tuple[Job, ...]:
        return ()

    def close(self) -> None:
        self.closed = True


class _NeverClosedDispatcher:
    """A dispatcher that keeps accepting jobs after close()."""

    def dispatch(self, job: Job) -> None:
        job.run()

    def service(self) -> None:
        pass

    def join(self, timeout: float | None) -> tuple[Job, ...]:
        return ()

    def close(self) -> None:
        pass


class _LyingJoinDispatcher:
    """A threaded-looking dispatcher whose join() never reports jobs in flight."""

    def __init__(self) -> None:
        self.inner = ThreadingDispatcher()

    def dispatch(self, job: Job) -> None:
        self.inner.dispatch(job)

    def service(self) -> None:
        self.inner.service()

    def join(self, timeout: float | None) -> tuple[Job, ...]:
        self.inner.join(timeout)
        return ()  # the bug: running jobs are not reported

    def close(self) -> None:
        self.inner.close()


class _NaNTimeout:
    timeout = math.nan
    budget = None

    def handle_timeout(self) -> None:
        pass

    def budget_exceeded(self, client_address: object, limit: str) -> None:
        pass


class _RaisingOnEMFILE:
    def accept_failed(self, exc: OSError) -> float:
        if exc.errno == errno.EMFILE:
            raise exc
        return 0.0

    def accepted(self) -> None:
        pass


class TestSuitesHaveTeeth:
    @pytest.mark.timeout(10)
    def test_check_transport_catches_fileno_after_close(self) -> None:
        """check_transport fails a transport whose fileno() is not -1 after close()."""
        with pytest.raises(AssertionError, match="after close"):
            check_transport(_StickyFilenoTransport)  # type: ignore[arg-type]  # socket typed object on purpose

    @pytest.mark.timeout(10)
    def test_check_acceptor_catches_an_acceptor_that_does_not_consume(self) -> None:
        """check_acceptor fails an acceptor that returns a request but leaves it pending."""

        class Peeking:
            def accept(self, transport: object) -> tuple[MemoryRequest, str]:
                assert isinstance(transport, MemoryTransport)
                request, address = transport.pending[0]
                assert isinstance(request, MemoryRequest) and isinstance(address, str)
                return request, address

        with pytest.raises(AssertionError, match="still readable"):
            check_acceptor(_memory_transport, Peeking, _memory_connect)

    @pytest.mark.timeout(10)
    def test_check_acceptor_catches_a_raising_request_operation(self) -> None:
        """check_acceptor fails a transport whose request_ops.abort() raises OSError."""

        class BrokenOps:
            connections = True

            def reject(self, request: object, message: bytes, client_address: object) -> None:
                pass

            def abort(self, request: object) -> None:
                raise OSError(errno.ENOTCONN, "not connected")

            def silent_fd(self, request: object) -> int:
                return -1

            def limit_idle(self, request: object, seconds: float, *, kernel: bool) -> None:
                pass

        def broken() -> MemoryTransport[MemoryRequest, str]:
            transport = _memory_transport()
            transport.request_ops = BrokenOps()  # type: ignore[assignment]  # the bug under test
            return transport

        with pytest.raises(AssertionError, match="must not"):
            check_acceptor(broken, MemoryAcceptor, _memory_connect)

    @pytest.mark.timeout(10)
    def test_check_transport_catches_a_non_bool_nonblocking(self) -> None:
        """check_transport fails a transport whose nonblocking is not a bool."""

        def broken() -> MemoryTransport[MemoryRequest, str]:
            transport = _memory_transport()
            transport.nonblocking = 0  # type: ignore[assignment]  # the bug under test
            return transport

        with pytest.raises(AssertionError, match="nonblocking"):
            check_transport(broken)

    @pytest.mark.timeout(10)
    def test_check_verifier_catches_non_bool(self) -> None:
        """check_verifier fails a verifier that returns something other than a bool."""
        with pytest.raises(AssertionError, match="not a bool"):
            check_verifier(lambda: MemoryVerifier(lambda r, a: 1), SAMPLES)  # type: ignore[arg-type,return-value]  # the bug under test

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize(
        ("make", "concurrent", "message"),
        [
            (_TwiceDispatcher, False, "run 2 times"),
            (_NeverClosedDispatcher, False, "did not raise ServerClosedError"),
            (_LyingJoinDispatcher, True, "join"),
        ],
        ids=["runs twice", "accepts after close", "join hides jobs"],
    )
    def test_check_dispatcher_catches_broken_dispatchers(
        self, make: Callable[[], Dispatcher], concurrent: bool, message: str
    ) -> None:
        """check_dispatcher fails a dispatcher that breaks any of its promises."""
        with pytest.raises(AssertionError, match=message):
            check_dispatcher(make, concurrent=concurrent)

    @pytest.mark.timeout(10)
    def test_check_error_policy_catches_wrong_reraise_expectation(self) -> None:
        """check_error_policy fails ReRaise if it must not raise, and PrintTraceback if it must."""
        with pytest.raises(AssertionError, match="must not"):
            check_error_policy(ReRaise)
        with pytest.raises(AssertionError, match="did not re-raise"):
            check_error_policy(RecordingErrorPolicy, reraises=True)

    @pytest.mark.timeout(10)
    def test_check_error_policy_catches_a_different_exception(self) -> None:
        """check_error_policy fails a re-raising policy that raises some other exception."""

        class Wrapping:
            def handle_error(self, request: object, client_address: object, exc: BaseException) -> None:
                raise RuntimeError("wrapped") from exc

        with pytest.raises(AssertionError, match="expected the original"):
            check_error_policy(Wrapping, reraises=True)

    @pytest.mark.timeout(10)
    def test_check_timeout_policy_catches_nan(self) -> None:
        """check_timeout_policy fails a NaN timeout."""
        with pytest.raises(AssertionError, match="nan"):
            check_timeout_policy(_NaNTimeout)

    @pytest.mark.timeout(10)
    def test_check_accept_error_policy_catches_raising(self) -> None:
        """check_accept_error_policy fails a policy that raises on EMFILE."""
        with pytest.raises(AssertionError, match="EMFILE"):
            check_accept_error_policy(_RaisingOnEMFILE)


# -- the fakes' own behaviour, beyond the shared contracts ---------------------------


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class _FakeJob:
    def __init__(self, result: bool = True) -> None:
        self.client_address: object = "fake"
        self.result = result
        self.runs = 0
        self.closes = 0

    def run(self) -> bool:
        self.runs += 1
        return self.result

    def close(self, message: bytes = b"") -> None:
        self.closes += 1

    def abort(self) -> None:
        pass


class TestMemoryTransportBehaviour:
    @pytest.mark.timeout(5)
    def test_readiness_follows_the_queue(self) -> None:
        """fileno() is readable exactly while requests are queued, one byte per request."""
        transport = _memory_transport()
        try:
            assert not _readable(transport.fileno())
            transport.connect(MemoryRequest(), "a")
            transport.connect(MemoryRequest(), "b")
            assert [address for _, address in transport.pending] == ["a", "b"]
            assert _readable(transport.fileno())
            assert transport.next_request()[1] == "a"
            assert _readable(transport.fileno())
            assert transport.next_request()[1] == "b"
            assert not _readable(transport.fileno())
        finally:
            transport.close()

    @pytest.mark.timeout(10)
    def test_connect_is_thread_safe(self) -> None:
        """Requests queued from several threads at once are all delivered, each once."""
        transport: MemoryTransport[int, int] = MemoryTransport(0)
        try:

            def connect_many(base: int) -> None:
                for i in range(200):
                    transport.connect(base + i, base)

            threads = [threading.Thread(target=connect_many, args=(base,)) for base in (0, 1000, 2000, 3000)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(10)
            got = sorted(transport.next_request()[0] for _ in range(800))
            assert got == sorted(base + i for base in (0, 1000, 2000, 3000) for i in range(200))
            assert not _readable(transport.fileno())
        finally:
            transport.close()

    @pytest.mark.timeout(5)
    def test_socket_raises_type_error_naming_the_type(self) -> None:
        """.socket raises TypeError while open (no real socket) and ServerClosedError after close."""
        transport = _memory_transport()
        with pytest.raises(TypeError, match="MemoryTransport has no socket"):
            transport.socket
        transport.close()
        with pytest.raises(ServerClosedError):
            transport.socket

    @pytest.mark.timeout(5)
    def test_records_lifecycle_calls_and_bound_address(self) -> None:
        """bind/activate/close are counted, and server_address switches to bound_address at bind."""
        transport = _memory_transport()
        assert transport.server_address == "memory"
        transport.bind()
        transport.activate()
        assert transport.server_address == "memory:bound"
        transport.close()
        transport.close()
        assert (transport.bind_calls, transport.activate_calls, transport.close_calls) == (1, 1, 2)
        assert transport.closed and transport.fileno() == -1

    @pytest.mark.timeout(5)
    def test_closed_transport_refuses_requests(self) -> None:
        """connect() and next_request() raise ServerClosedError after close; queued requests stay visible."""
        transport = _memory_transport()
        transport.connect(MemoryRequest(), "a")
        transport.close()
        with pytest.raises(ServerClosedError):
            transport.connect(MemoryRequest(), "b")
        with pytest.raises(ServerClosedError):
            transport.next_request()
        assert len(transport.pending) == 1

    @pytest.mark.timeout(5)
    def test_finished_requests_are_recorded_and_closed(self) -> None:
        """shutdown_request and close_request record the request and close a MemoryRequest."""
        transport = _memory_transport()
        try:
            done, dropped = MemoryRequest(), MemoryRequest()
            transport.shutdown_request(done)
            transport.close_request(dropped)
            assert transport.shutdown_requests == [done]
            assert transport.closed_requests == [dropped]
            assert transport.finished_requests == [done, dropped]
            assert done.closed and dropped.closed
        finally:
            transport.close()

    @pytest.mark.timeout(5)
    def test_repr(self) -> None:
        """The repr shows the address, the state and the queue length."""
        transport = _memory_transport()
        transport.connect(MemoryRequest(), "a")
        assert repr(transport) == "<MemoryTransport 'memory' unbound [1 queued]>"
        transport.close()
        assert repr(transport) == "<MemoryTransport 'memory' closed [1 queued]>"


class TestMemoryAcceptorBehaviour:
    @pytest.mark.timeout(5)
    def test_nothing_queued_is_eagain(self) -> None:
        """With nothing queued, accept raises BlockingIOError (EAGAIN), as a non-blocking accept()."""
        transport = _memory_transport()
        try:
            with pytest.raises(BlockingIOError) as info:
                MemoryAcceptor().accept(transport)
            assert info.value.errno == errno.EAGAIN
        finally:
            transport.close()

    @pytest.mark.timeout(5)
    def test_other_transport_is_a_type_error(self) -> None:
        """Given a transport that is not a MemoryTransport, accept raises TypeError naming its type."""
        other = UDPTransport(("127.0.0.1", 0))  # never touched: its socket is created lazily
        with pytest.raises(TypeError, match="got UDPTransport"):
            MemoryAcceptor().accept(other)

    @pytest.mark.timeout(5)
    def test_accept_hook_runs_before_the_queue_is_read(self) -> None:
        """accept_hook runs first, so it can queue the very request being accepted."""
        transport = _memory_transport()
        request = MemoryRequest()
        try:
            acceptor = MemoryAcceptor(accept_hook=lambda: transport.connect(request, "from-hook"))
            assert acceptor.accept(transport) == (request, "from-hook")
            assert acceptor.accepted == [(request, "from-hook")]
        finally:
            transport.close()


class TestRaisingAcceptorBehaviour:
    @pytest.mark.timeout(5)
    def test_follows_the_script_then_delegates(self) -> None:
        """Errnos become OSErrors, instances are raised as is, None delegates once; then it delegates."""
        transport = _memory_transport()
        custom = ConnectionAbortedError(errno.ECONNABORTED, "gone")
        acceptor: RaisingAcceptor[MemoryRequest, str] = RaisingAcceptor(
            MemoryAcceptor(), [errno.EMFILE, None, custom]
        )
        try:
            transport.connect(MemoryRequest(), "a")
            transport.connect(MemoryRequest(), "b")
            with pytest.raises(OSError) as info:
                acceptor.accept(transport)
            assert info.value.errno == errno.EMFILE
            assert info.value.strerror == os.strerror(errno.EMFILE)
            assert len(transport.pending) == 2  # an error consumes nothing
            assert acceptor.accept(transport)[1] == "a"
            with pytest.raises(ConnectionAbortedError) as aborted:
                acceptor.accept(transport)
            assert aborted.value is custom
            assert acceptor.accept(transport)[1] == "b"
            assert acceptor.raised == [info.value, custom]
        finally:
            transport.close()


class TestMemoryVerifierBehaviour:
    @pytest.mark.timeout(5)
    def test_script_then_verdict_and_calls_recorded(self) -> None:
        """Scripted verdicts come first, then the fixed verdict; every question is recorded."""
        verifier = MemoryVerifier(True, script=[False, False])
        assert [verifier.verify(i, "addr") for i in range(3)] == [False, False, True]
        assert verifier.calls == [(0, "addr"), (1, "addr"), (2, "addr")]

    @pytest.mark.timeout(5)
    def test_predicate_sees_request_and_address(self) -> None:
        """A predicate verdict is called with the request and the address."""
        verifier = MemoryVerifier(lambda request, address: address == "good")
        assert verifier.verify(None, "good") is True
        assert verifier.verify(None, "bad") is False


class TestInlineDispatcherBehaviour:
    @pytest.mark.timeout(5)
    def test_runs_inline_and_records(self) -> None:
        """Without hold, a job runs inside dispatch and its result is recorded."""
        dispatcher = InlineDispatcher()
        job = _FakeJob(result=False)
        dispatcher.dispatch(job)
        assert job.runs == 1
        assert dispatcher.dispatched == [job]
        assert dispatcher.results == [(job, False)]

    @pytest.mark.timeout(5)
    def test_hold_keeps_jobs_until_released(self) -> None:
        """With hold, jobs wait; join(timeout) returns them; release(count) runs the oldest first."""
        dispatcher = InlineDispatcher(hold=True)
        first, second = _FakeJob(), _FakeJob()
        dispatcher.dispatch(first)
        dispatcher.dispatch(second)
        assert (first.runs, second.runs) == (0, 0)
        assert dispatcher.join(0) == (first, second)
        assert dispatcher.release(1) == 1
        assert (first.runs, second.runs) == (1, 0)
        assert dispatcher.pending == (second,)
        assert dispatcher.release() == 1
        assert dispatcher.join(0) == ()

    @pytest.mark.timeout(10)
    def test_join_waits_for_release_from_another_thread(self) -> None:
        """join(None) returns once another thread has released every held job."""
        dispatcher = InlineDispatcher(hold=True)
        job = _FakeJob()
        dispatcher.dispatch(job)
        releaser = threading.Thread(target=dispatcher.release)
        releaser.start()
        try:
            assert dispatcher.join(None) == ()
        finally:
            releaser.join(10)
        assert job.runs == 1

    @pytest.mark.timeout(5)
    def test_discard_closes_held_jobs(self) -> None:
        """discard() closes every held job without running it."""
        dispatcher = InlineDispatcher(hold=True)
        job = _FakeJob()
        dispatcher.dispatch(job)
        assert dispatcher.discard() == 1
        assert (job.runs, job.closes) == (0, 1)
        assert dispatcher.join(0) == ()

    @pytest.mark.timeout(5)
    def test_close_keeps_held_jobs_and_refuses_new_ones(self) -> None:
        """close() is idempotent, refuses new jobs, and leaves held jobs for the test to release."""
        dispatcher = InlineDispatcher(hold=True)
        held, refused = _FakeJob(), _FakeJob()
        dispatcher.dispatch(held)
        dispatcher.close()
        dispatcher.close()
        with pytest.raises(ServerClosedError):
            dispatcher.dispatch(refused)
        assert dispatcher.pending == (held,)
        assert dispatcher.release() == 1
        assert (refused.runs, refused.closes) == (0, 0)

    @pytest.mark.timeout(5)
    def test_dispatch_hook_can_refuse_a_job(self) -> None:
        """An exception from dispatch_hook leaves dispatch with the job neither recorded nor run."""

        def refuse(job: Job) -> None:
            raise OSError(errno.EAGAIN, "no threads left")

        dispatcher = InlineDispatcher(dispatch_hook=refuse)
        job = _FakeJob()
        with pytest.raises(OSError):
            dispatcher.dispatch(job)
        assert dispatcher.dispatched == []
        assert (job.runs, job.closes) == (0, 0)

    @pytest.mark.timeout(5)
    def test_service_counts_and_runs_hook(self) -> None:
        """service() is counted and runs service_hook."""
        calls: list[None] = []
        dispatcher = InlineDispatcher(service_hook=lambda: calls.append(None))
        dispatcher.service()
        dispatcher.service()
        assert dispatcher.service_calls == 2 and len(calls) == 2


class TestRecordingErrorPolicyBehaviour:
    @pytest.mark.timeout(5)
    def test_records_whether_called_inside_except(self) -> None:
        """Each record says whether sys.exc_info() was the reported exception during the call."""
        policy = RecordingErrorPolicy()
        boom = ValueError("boom")
        try:
            raise boom
        except ValueError as exc:
            policy.handle_error("req", "addr", exc)
        policy.handle_error("req", "addr", boom)  # outside: a contract violation it can detect
        assert [record.in_except for record in policy.errors] == [True, False]
        assert policy.exceptions == [boom, boom]
        assert policy.errors[0].thread == threading.get_ident()

    @pytest.mark.timeout(5)
    def test_error_hook_and_wait_for(self) -> None:
        """error_hook sees each exception; wait_for reports whether enough errors arrived in time."""
        seen: list[BaseException] = []
        policy = RecordingErrorPolicy(error_hook=seen.append)
        assert policy.wait_for(1, 0) is False
        try:
            raise KeyError("k")
        except KeyError as exc:
            policy.handle_error(None, None, exc)
        assert policy.wait_for(1, 0) is True
        assert len(seen) == 1


class TestRecordingTimeoutPolicyBehaviour:
    @pytest.mark.timeout(5)
    def test_counts_timeouts_and_cut_connections(self) -> None:
        """handle_timeout is counted and runs its hook; budget_exceeded calls are recorded."""
        hooks: list[None] = []
        policy = RecordingTimeoutPolicy(0.5, timeout_hook=lambda: hooks.append(None))
        policy.handle_timeout()
        policy.budget_exceeded("addr", "idle")
        assert (policy.timeouts, len(hooks)) == (1, 1)
        assert policy.exceeded == [("addr", "idle")]


class TestMemoryRequestBehaviour:
    @pytest.mark.timeout(5)
    def test_recv_sendall_close(self) -> None:
        """recv returns the scripted bytes then EOF, sendall collects output, and a closed request refuses I/O."""
        request = MemoryRequest(b"hello world")
        assert request.recv(5) == b"hello"
        assert request.recv(100) == b" world"
        assert request.recv(100) == b""
        request.sendall(b"HELLO")
        assert request.send(b"!") == 1
        assert bytes(request.sent) == b"HELLO!"
        request.close()
        request.close()
        with pytest.raises(OSError):
            request.recv(1)
        with pytest.raises(OSError):
            request.sendall(b"x")


class TestMemoryRequestOpsBehaviour:
    @pytest.mark.timeout(5)
    def test_records_what_the_server_did(self) -> None:
        """reject, abort and limit_idle are recorded; reject also sends the message on a MemoryRequest."""
        ops = MemoryRequestOps()
        request = MemoryRequest()
        ops.reject(request, b"busy", "client")
        ops.abort(request)
        ops.limit_idle(request, 2.5, kernel=True)
        assert ops.rejected == [(request, b"busy", "client")]
        assert bytes(request.sent) == b"busy"
        assert ops.aborted == [request]
        assert ops.idle_limits == [(request, 2.5, True)]
        assert ops.connections is True
        assert MemoryRequestOps(connections=False).connections is False

    @pytest.mark.timeout(5)
    def test_silent_fd_follows_the_test_descriptor(self) -> None:
        """silent_fd() returns the request's descriptor while it is not readable, -1 once it is or for other requests."""
        ops = MemoryRequestOps()
        quiet = MemoryRequest()
        r, w = os.pipe()
        try:
            ops.silent[quiet] = r
            assert ops.silent_fd(quiet) == r
            assert ops.silent_fd(MemoryRequest()) == -1
            os.write(w, b"x")
            assert ops.silent_fd(quiet) == -1
        finally:
            os.close(r)
            os.close(w)


class TestRecordingHandlerBehaviour:
    @pytest.mark.timeout(5)
    def test_records_then_runs_action(self) -> None:
        """Each call is recorded with its server and thread before the action runs (even if it raises)."""
        handler: RecordingHandler[str, str] = RecordingHandler(lambda r, a, s: 1 / 0)
        server = object()
        with pytest.raises(ZeroDivisionError):
            handler("req", "addr", server)
        assert handler.calls == [("req", "addr")]
        assert handler.servers == [server]
        assert handler.threads == [threading.get_ident()]
        assert handler.wait_for(1, 0) and not handler.wait_for(2, 0)


class TestObservers:
    @pytest.mark.parametrize(
        "make",
        [
            pytest.param(BaseObserver, id="BaseObserver"),
            pytest.param(lambda: AccessLog(_quiet_logger()), id="AccessLog"),
            pytest.param(lambda: AccessLog(_quiet_logger(logging.WARNING)), id="AccessLog-disabled"),
            pytest.param(
                lambda: MetricsObserver(transport="tcp", address="127.0.0.1:0", registry=CollectorRegistry()),
                id="MetricsObserver",
            ),
            pytest.param(RecordingObserver, id="RecordingObserver"),
            pytest.param(lambda: ObserverGroup([RecordingObserver(), BaseObserver()]), id="ObserverGroup"),
        ],
    )
    def test_observer_contract(self, make: Callable[[], Observer], caplog: pytest.LogCaptureFixture) -> None:
        """Every observer takes every event from several threads at once and is contained in a group."""
        check_observer(make)
        # The raising observer's failure was logged by the group, not raised.
        assert any(record.name == "composable_server.observers" for record in caplog.records)


def _quiet_logger(level: int = logging.INFO) -> logging.Logger:
    """A logger at *level* that writes nowhere (the access log's lines are not under test)."""
    logger = logging.getLogger(f"tests.contracts.access.{level}")
    logger.propagate = False
    logger.setLevel(level)
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger


class _FailingObserver(BaseObserver):
    """Raises when a request fails in its handler."""

    __slots__ = ()

    def request_finished(self, event: RequestFinished) -> None:
        if event.outcome == "handler_error":
            raise KeyError(event.error)


class _ReturningObserver(BaseObserver):
    """Returns something from drain_finished (the contract says None)."""

    __slots__ = ()

    def drain_finished(self, event: DrainFinished) -> None:
        return cast(None, event)


class TestCheckObserverHasTeeth:
    def test_catches_an_observer_that_raises(self) -> None:
        """An observer raising on one kind of event fails the suite, naming the event."""
        with pytest.raises(AssertionError, match="request_finished.*raised KeyError"):
            check_observer(_FailingObserver)

    def test_catches_an_observer_that_returns_a_value(self) -> None:
        """An observer returning something fails the suite."""
        with pytest.raises(AssertionError, match="drain_finished.*expected None"):
            check_observer(_ReturningObserver)
