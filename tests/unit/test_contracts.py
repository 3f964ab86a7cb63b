"""Every contract suite of composable_server.testing, run against the fakes and
against every real component that needs no socket; and proof that the suites
have teeth (a component breaking a promise fails them).

Real transports and acceptors need sockets: their suites run in
tests/integration/test_contracts.py.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
from collections.abc import Callable

import pytest

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
    Verifier,
    all_of,
    any_of,
)
from composable_server.dispatchers import ThreadPoolDispatcher
from composable_server.interfaces import AcceptErrorPolicy
from composable_server.policies import AcceptBackoff, Budget, ConnectionTimeouts, RetryImmediately
from composable_server.testing import (
    InlineDispatcher,
    MemoryAcceptor,
    MemoryRequest,
    MemoryTransport,
    MemoryVerifier,
    RaisingAcceptor,
    RecordingAcceptErrorPolicy,
    RecordingErrorPolicy,
    RecordingTimeoutPolicy,
    check_accept_error_policy,
    check_acceptor,
    check_dispatcher,
    check_error_policy,
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
