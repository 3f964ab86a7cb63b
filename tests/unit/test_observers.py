"""Observers on the in-memory fakes: the events of every outcome, in order, with their fields."""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable, Iterator

import pytest

from composable_server import (
    AcceptBackoff,
    BaseObserver,
    ConnectionTimeouts,
    Observer,
    Server,
    ThreadingDispatcher,
    ThreadPoolDispatcher,
    TLSHandshakeError,
)
from composable_server.interfaces import (
    AcceptFailed,
    ConnectionAccepted,
    ConnectionRefused,
    DrainFinished,
    DrainStarted,
    RequestFinished,
    RequestStarted,
    TransportStarted,
)
from composable_server.observers import ObserverGroup, verifier_refusal
from composable_server.policies import Budget
from composable_server.testing import (
    InlineDispatcher,
    MemoryAcceptor,
    MemoryTransport,
    MemoryVerifier,
    RaisingAcceptor,
    RecordingErrorPolicy,
    RecordingHandler,
    RecordingObserver,
)
from composable_server.verifiers import CIDRVerifier, ConnectionCapVerifier, RateLimitVerifier

WAIT = 10.0

Action = Callable[[str, str, object], object]


class Rig:
    """A server on fakes with one recording observer."""

    def __init__(
        self,
        *,
        action: Action | None = None,
        verifier: MemoryVerifier | None = None,
        dispatcher: InlineDispatcher | ThreadingDispatcher | ThreadPoolDispatcher | None = None,
        acceptor: MemoryAcceptor | RaisingAcceptor[str, str] | None = None,
        budget: Budget | None = None,
        start_hook: Callable[[str], object] | None = None,
        observers: tuple[Observer, ...] = (),
    ) -> None:
        self.transport: MemoryTransport[str, str] = MemoryTransport("memory", start_hook=start_hook)
        self.handler: RecordingHandler[str, str] = RecordingHandler(action)
        self.observer = RecordingObserver()
        self.errors = RecordingErrorPolicy()
        self.server: Server[str, str] = Server(
            transport=self.transport,
            acceptor=MemoryAcceptor() if acceptor is None else acceptor,
            handler=self.handler,
            verifier=verifier,
            dispatcher=InlineDispatcher() if dispatcher is None else dispatcher,
            error_policy=self.errors,
            timeout_policy=ConnectionTimeouts(budget) if budget is not None else None,
            observers=(self.observer, *observers),
        )

    def request(self, name: str = "r1", client: str = "c1") -> None:
        """Connect one request and handle it."""
        self.transport.connect(name, client)
        self.server.handle_request()


@pytest.fixture
def rig() -> Iterator[Rig]:
    rig = Rig()
    try:
        yield rig
    finally:
        rig.server.server_close()


def _raise(exc: BaseException) -> Action:
    def action(request: str, client_address: str, server: object) -> None:
        raise exc

    return action


class TestRequestOutcomes:
    @pytest.mark.timeout(5)
    def test_ok_request_events_in_order(self, rig: Rig) -> None:
        """A served request reports accepted, started, transport started, finished ok."""
        rig.request()
        assert rig.observer.names() == [
            "connection_accepted",
            "request_started",
            "transport_started",
            "request_finished",
        ]
        assert rig.observer.of(ConnectionAccepted) == [ConnectionAccepted("c1")]
        assert rig.observer.of(RequestStarted) == [RequestStarted("c1")]
        (started,) = rig.observer.of(TransportStarted)
        assert (started.client_address, started.transport, started.error, started.tls) == (
            "c1",
            "MemoryTransport",
            None,
            False,
        )
        (finished,) = rig.observer.of(RequestFinished)
        assert (finished.client_address, finished.outcome, finished.error, finished.budget) == ("c1", "ok", None, None)
        assert finished.duration >= started.duration >= 0

    @pytest.mark.timeout(5)
    def test_handler_error_reports_the_type(self) -> None:
        """A handler that raises ends as handler_error, naming the exception's class."""
        rig = Rig(action=_raise(ValueError("boom")))
        with rig.server:
            rig.request()
        (finished,) = rig.observer.of(RequestFinished)
        assert (finished.outcome, finished.error) == ("handler_error", "ValueError")
        assert len(rig.errors.errors) == 1

    @pytest.mark.timeout(5)
    def test_connection_error_is_client_gone(self) -> None:
        """A handler failing with ConnectionResetError ends as client_gone."""
        rig = Rig(action=_raise(ConnectionResetError(errno.ECONNRESET, "reset")))
        with rig.server:
            rig.request()
        (finished,) = rig.observer.of(RequestFinished)
        assert (finished.outcome, finished.error) == ("client_gone", "ConnectionResetError")

    @pytest.mark.timeout(5)
    def test_timeout_error_is_the_idle_budget(self) -> None:
        """A handler failing with TimeoutError (its idle timeout) ends as budget/idle."""
        rig = Rig(action=_raise(TimeoutError("idle")))
        with rig.server:
            rig.request()
        (finished,) = rig.observer.of(RequestFinished)
        assert (finished.outcome, finished.budget, finished.error) == ("budget", "idle", "TimeoutError")

    @pytest.mark.timeout(5)
    def test_start_request_failure(self) -> None:
        """A failing start_request (TLS handshake) reports its error, then start_failed; the handler never runs."""

        def fail(request: str) -> None:
            raise TLSHandshakeError("no TLS here", client_address=request)

        rig = Rig(start_hook=fail)
        with rig.server:
            rig.request()
        assert rig.observer.names()[-2:] == ["transport_started", "request_finished"]
        (started,) = rig.observer.of(TransportStarted)
        assert started.error == "TLSHandshakeError"
        (finished,) = rig.observer.of(RequestFinished)
        assert (finished.outcome, finished.error) == ("start_failed", "TLSHandshakeError")
        assert rig.handler.calls == []

    @pytest.mark.timeout(10)
    def test_lifetime_budget_cut(self) -> None:
        """A request cut by its lifetime budget ends as budget/lifetime, not as a handler error."""
        released = threading.Event()

        def wait_for_abort(request: str, client_address: str, server: object) -> None:
            assert released.wait(WAIT)
            raise BrokenPipeError(errno.EPIPE, "cut")

        rig = Rig(action=wait_for_abort, dispatcher=ThreadingDispatcher(), budget=Budget(lifetime=0.05))
        rig.transport.request_ops.abort_hook = lambda request: released.set()
        with rig.server:
            rig.request()
            assert rig.observer.wait_for("request_finished", 1, WAIT)
        (finished,) = rig.observer.of(RequestFinished)
        assert (finished.outcome, finished.budget) == ("budget", "lifetime")
        assert rig.errors.errors == []

    @pytest.mark.timeout(10)
    def test_drain_cut_and_drain_events(self) -> None:
        """A request cut by drain() ends as drain, between drain_started and drain_finished."""
        started = threading.Event()
        released = threading.Event()

        def block(request: str, client_address: str, server: object) -> None:
            started.set()
            assert released.wait(WAIT)
            raise BrokenPipeError(errno.EPIPE, "cut")

        rig = Rig(action=block, dispatcher=ThreadingDispatcher())
        rig.transport.request_ops.abort_hook = lambda request: released.set()
        with rig.server:
            rig.request()
            assert started.wait(WAIT)
            report = rig.server.drain(0.01, grace=WAIT)
        assert report.cut == ("c1",)
        names = rig.observer.names()
        assert names.index("drain_started") < names.index("request_finished") < names.index("drain_finished")
        (finished,) = rig.observer.of(RequestFinished)
        assert (finished.outcome, finished.budget) == ("drain", None)
        assert rig.observer.of(DrainStarted) == [DrainStarted(0.01)]
        (drained,) = rig.observer.of(DrainFinished)
        assert (drained.finished, drained.cut, drained.remaining) == (False, ("c1",), ())


class TestRefusals:
    @pytest.mark.timeout(5)
    def test_verifier_refusal(self) -> None:
        """A refusing verifier reports connection_refused with its class name; no request events follow."""
        rig = Rig(verifier=MemoryVerifier(False))
        with rig.server:
            rig.request()
        assert rig.observer.names() == ["connection_accepted", "connection_refused"]
        assert rig.observer.of(ConnectionRefused) == [ConnectionRefused("c1", "verifier", "MemoryVerifier")]

    @pytest.mark.timeout(5)
    @pytest.mark.parametrize(
        ("verifier", "reason"),
        [
            (ConnectionCapVerifier(1), "connection_cap"),
            (RateLimitVerifier(1.0, 1), "rate_limit"),
            (CIDRVerifier(("10.0.0.0/8",)), "cidr"),
        ],
        ids=lambda value: type(value).__name__ if not isinstance(value, str) else value,
    )
    def test_each_verifier_kind_has_its_reason(self, verifier: object, reason: str) -> None:
        """Each refusing verifier of the package maps to its own reason."""
        event = verifier_refusal(("127.0.0.1", 1), verifier)
        assert (event.reason, event.detail) == (reason, type(verifier).__name__)

    @pytest.mark.timeout(10)
    def test_pool_full_reject(self) -> None:
        """A job rejected by a full pool (when_full='reject') reports pool_full, and no request events."""
        started = threading.Event()
        release = threading.Event()

        def block(request: str, client_address: str, server: object) -> None:
            started.set()
            assert release.wait(WAIT)

        dispatcher = ThreadingDispatcher(max_threads=1, when_full="reject")
        rig = Rig(action=block, dispatcher=dispatcher)
        with rig.server:
            rig.request("r1", "c1")
            assert started.wait(WAIT)
            rig.request("r2", "c2")
            release.set()
            assert rig.observer.wait_for("request_finished", 1, WAIT)
        (refused,) = rig.observer.of(ConnectionRefused)
        assert (refused.client_address, refused.reason) == ("c2", "pool_full")
        assert [event.client_address for event in rig.observer.of(RequestStarted)] == ["c1"]


    @pytest.mark.timeout(5)
    def test_late_admission_refusal(self) -> None:
        """With late admission (verified after start_request) a refusal ends the request as refused."""
        transport: MemoryTransport[str, str] = MemoryTransport("memory", late_admission=True)
        observer = RecordingObserver()
        handler: RecordingHandler[str, str] = RecordingHandler()
        with Server(
            transport=transport,
            acceptor=MemoryAcceptor(),
            handler=handler,
            verifier=MemoryVerifier(False),
            dispatcher=InlineDispatcher(),
            observers=[observer],
        ) as server:
            transport.connect("r1", "c1")
            server.handle_request()
        assert observer.names() == ["connection_accepted", "request_started", "transport_started", "request_finished"]
        (finished,) = observer.of(RequestFinished)
        assert (finished.outcome, finished.error) == ("refused", None)
        assert handler.calls == []


class TestLoopEvents:
    @pytest.mark.timeout(5)
    def test_accept_error_reports_the_backoff(self) -> None:
        """A failing accept reports its errno and the back-off the policy chose."""
        transport_rig = Rig(acceptor=RaisingAcceptor(MemoryAcceptor(), [errno.EMFILE]))
        with transport_rig.server as server:
            server.accept_error_policy = AcceptBackoff(initial=0.25)
            transport_rig.request()
        (failed,) = transport_rig.observer.of(AcceptFailed)
        assert failed == AcceptFailed("OSError(EMFILE)", 0.25)


class TestObserverFailures:
    @pytest.mark.timeout(5)
    def test_raising_observer_never_breaks_serving(self, caplog: pytest.LogCaptureFixture) -> None:
        """An observer that raises is logged once (rate-limited); the request is served and the others still told."""
        failing = RecordingObserver(raises=RuntimeError("observer bug"))
        after = RecordingObserver()
        rig = Rig(observers=(failing, after))
        with rig.server, caplog.at_level(logging.ERROR, logger="composable_server.observers"):
            rig.request("r1", "c1")
            rig.request("r2", "c2")
        assert rig.handler.calls == [("r1", "c1"), ("r2", "c2")]
        assert after.names() == rig.observer.names() == failing.names()
        assert len(after.of(RequestFinished)) == 2
        records = [r for r in caplog.records if "observer" in r.getMessage()]
        assert len(records) == 1  # eight failures, one record per LOG_INTERVAL
        assert "RuntimeError: observer bug" in caplog.text

    @pytest.mark.timeout(5)
    def test_no_observers_is_none(self) -> None:
        """A server without observers holds None on its request path (the one check it pays)."""
        transport: MemoryTransport[str, str] = MemoryTransport("memory")
        handler: RecordingHandler[str, str] = RecordingHandler()
        with Server(transport=transport, acceptor=MemoryAcceptor(), handler=handler) as server:
            assert server._requests.observers is None
        assert ObserverGroup.of(()) is None
        assert ObserverGroup.of([BaseObserver()]) is not None

    @pytest.mark.timeout(5)
    def test_base_observer_ignores_everything(self, rig: Rig) -> None:
        """BaseObserver is an Observer whose every method does nothing, so a subclass overrides only some."""

        class Finishes(BaseObserver):
            __slots__ = ("outcomes",)

            def __init__(self) -> None:
                self.outcomes: list[str] = []

            def request_finished(self, event: RequestFinished) -> None:
                self.outcomes.append(event.outcome)

        finishes = Finishes()
        rig2 = Rig(observers=(finishes,))
        with rig2.server:
            rig2.request()
        assert finishes.outcomes == ["ok"]
