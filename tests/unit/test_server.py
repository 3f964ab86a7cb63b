"""The Server engine, driven entirely by the in-memory fakes (no sockets)."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import cast

import pytest

from composable_server import (
    AcceptBackoff,
    AcceptErrorPolicy,
    Dispatcher,
    DrainReport,
    FixedTimeout,
    Job,
    ReRaise,
    RetryImmediately,
    Server,
    ServerClosedError,
    ServerStateError,
    ThreadPoolDispatcher,
)
from composable_server._request import RequestJob
from composable_server.interfaces import Transport
from composable_server.testing import (
    InlineDispatcher,
    MemoryAcceptor,
    MemoryRequestOps,
    MemoryTransport,
    MemoryVerifier,
    RaisingAcceptor,
    RecordingErrorPolicy,
    RecordingHandler,
    RecordingTimeoutPolicy,
)

WAIT = 10.0  # upper bound for things that should happen at once


def eventually(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll *predicate* until it holds or *timeout* passes (for state no event reports)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        threading.Event().wait(0.002)
    return True

MemServer = Server[str, str]


class Rig:
    """A server on fakes, with the fakes at hand."""

    def __init__(
        self,
        *,
        action: Callable[[str, str, object], object] | None = None,
        verifier: MemoryVerifier | None = None,
        dispatcher: InlineDispatcher | None = None,
        acceptor: MemoryAcceptor | RaisingAcceptor[str, str] | None = None,
        error_policy: RecordingErrorPolicy | ReRaise | None = None,
        timeout_policy: RecordingTimeoutPolicy | FixedTimeout | None = None,
        accept_error_policy: AcceptErrorPolicy | None = None,
        bind_and_activate: bool = True,
    ) -> None:
        self.transport: MemoryTransport[str, str] = MemoryTransport("memory", bound_address="memory:bound")
        self.handler: RecordingHandler[str, str] = RecordingHandler(action)
        self.verifier = MemoryVerifier() if verifier is None else verifier
        self.dispatcher = InlineDispatcher() if dispatcher is None else dispatcher
        self.errors = RecordingErrorPolicy()
        self.server: MemServer = Server(
            transport=self.transport,
            acceptor=MemoryAcceptor() if acceptor is None else acceptor,
            handler=self.handler,
            verifier=self.verifier,
            dispatcher=self.dispatcher,
            error_policy=self.errors if error_policy is None else error_policy,
            timeout_policy=timeout_policy,
            accept_error_policy=accept_error_policy,
            bind_and_activate=bind_and_activate,
        )


@pytest.fixture
def rig() -> Iterator[Rig]:
    rig = Rig()
    try:
        yield rig
    finally:
        rig.server.server_close()


@contextmanager
def serving(server: MemServer, poll_interval: float = 0.5) -> Iterator[threading.Thread]:
    """Run serve_forever in a thread; shut it down and join it on exit."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            server.serve_forever(poll_interval)
        except BaseException as exc:  # reported below, not lost in the thread
            failures.append(exc)

    thread = threading.Thread(target=run, name="serve_forever")
    thread.start()
    try:
        yield thread
    finally:
        server.shutdown()
        thread.join(WAIT)
        assert not thread.is_alive(), "serve_forever did not return after shutdown()"
        assert not failures, f"serve_forever raised {failures!r}"


class TestServerPipeline:
    @pytest.mark.timeout(5)
    def test_construction_binds_and_activates(self, rig: Rig) -> None:
        """Building the server binds and activates the transport and records the bound address."""
        assert (rig.transport.bind_calls, rig.transport.activate_calls) == (1, 1)
        assert rig.server.server_address == "memory:bound"

    @pytest.mark.timeout(5)
    def test_bind_and_activate_false_leaves_transport_alone(self) -> None:
        """With bind_and_activate=False the transport is neither bound nor activated."""
        rig = Rig(bind_and_activate=False)
        try:
            assert (rig.transport.bind_calls, rig.transport.activate_calls) == (0, 0)
            assert rig.server.server_address == "memory"
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(5)
    def test_request_flows_through_every_component(self, rig: Rig) -> None:
        """One request is accepted, verified, dispatched, handled and then shut down."""
        rig.transport.connect("req-1", "client-1")
        rig.server.handle_request()
        assert rig.verifier.calls == [("req-1", "client-1")]
        assert len(rig.dispatcher.dispatched) == 1
        assert rig.handler.calls == [("req-1", "client-1")]
        assert rig.handler.servers == [rig.server]
        assert rig.transport.shutdown_requests == ["req-1"]
        assert rig.transport.closed_requests == []
        assert rig.errors.errors == []

    @pytest.mark.timeout(5)
    def test_refused_request_is_closed_unserved(self) -> None:
        """A request the verifier refuses is closed and never reaches the dispatcher or handler."""
        rig = Rig(verifier=MemoryVerifier(False))
        try:
            rig.transport.connect("req-1", "client-1")
            rig.server.handle_request()
            assert rig.handler.calls == []
            assert rig.dispatcher.dispatched == []
            assert rig.transport.finished_requests == ["req-1"]
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(5)
    def test_verifier_exception_goes_to_error_policy(self) -> None:
        """An exception from the verifier is reported to the error policy and the request closed."""
        boom = LookupError("verifier broke")

        def explode(request: object, client_address: object) -> bool:
            raise boom

        rig = Rig(verifier=MemoryVerifier(explode))
        try:
            rig.transport.connect("req-1", "client-1")
            rig.server.handle_request()
            assert rig.errors.exceptions == [boom]
            assert rig.handler.calls == []
            assert rig.transport.finished_requests == ["req-1"]
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(5)
    def test_handler_exception_goes_to_error_policy_inside_except(self) -> None:
        """A handler exception reaches the error policy inside the except block, and the request is shut down."""
        boom = ValueError("handler broke")

        def explode(request: str, client_address: str, server: object) -> None:
            raise boom

        rig = Rig(action=explode)
        try:
            rig.transport.connect("req-1", "client-1")
            rig.server.handle_request()
            [record] = rig.errors.errors
            assert (record.request, record.client_address, record.exc) == ("req-1", "client-1", boom)
            assert record.in_except
            assert rig.transport.shutdown_requests == ["req-1"]
            assert rig.dispatcher.results[0][1] is False
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(10)
    def test_server_goes_on_after_handler_exception(self) -> None:
        """serve_forever keeps serving after a handler raised."""

        def explode_first(request: str, client_address: str, server: object) -> None:
            if request == "bad":
                raise RuntimeError("first request fails")

        rig = Rig(action=explode_first)
        try:
            with serving(rig.server):
                rig.transport.connect("bad", "client-1")
                rig.transport.connect("good", "client-2")
                assert rig.handler.wait_for(2, WAIT)
            assert [r for r, _ in rig.handler.calls] == ["bad", "good"]
            assert len(rig.errors.errors) == 1
            assert rig.transport.shutdown_requests == ["bad", "good"]
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(5)
    def test_reraise_propagates_out_of_handle_request(self) -> None:
        """With ReRaise, a handler exception leaves handle_request, after the request was shut down."""

        def explode(request: str, client_address: str, server: object) -> None:
            raise KeyError("bug")

        rig = Rig(action=explode, error_policy=ReRaise())
        try:
            rig.transport.connect("req-1", "client-1")
            with pytest.raises(KeyError, match="bug"):
                rig.server.handle_request()
            assert rig.transport.shutdown_requests == ["req-1"]
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(5)
    def test_dispatch_failure_goes_to_error_policy(self) -> None:
        """A dispatcher that cannot start a job reports to the error policy, and the request is shut down."""
        failure = OSError(errno.EAGAIN, "cannot start a thread")

        def refuse(job: object) -> None:
            raise failure

        rig = Rig(dispatcher=InlineDispatcher(dispatch_hook=refuse))
        try:
            rig.transport.connect("req-1", "client-1")
            rig.server.handle_request()
            assert rig.errors.exceptions == [failure]
            assert rig.handler.calls == []
            assert rig.transport.finished_requests == ["req-1"]
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(5)
    def test_accept_errors_are_skipped(self) -> None:
        """EMFILE and ECONNABORTED from the acceptor are skipped and the pending request is served afterwards."""
        acceptor: RaisingAcceptor[str, str] = RaisingAcceptor(MemoryAcceptor(), [errno.EMFILE, errno.ECONNABORTED])
        rig = Rig(acceptor=acceptor)
        try:
            rig.transport.connect("req-1", "client-1")
            rig.server.handle_request()
            rig.server.handle_request()
            assert rig.handler.calls == []
            rig.server.handle_request()
            assert [exc.errno for exc in acceptor.raised] == [errno.EMFILE, errno.ECONNABORTED]
            assert rig.handler.calls == [("req-1", "client-1")]
            assert rig.errors.errors == []
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(5)
    def test_handler_runs_where_the_dispatcher_runs_the_job(self) -> None:
        """A held job runs its handler (and shuts its request down) only when the dispatcher releases it."""
        rig = Rig(dispatcher=InlineDispatcher(hold=True))
        try:
            rig.transport.connect("req-1", "client-1")
            rig.server.handle_request()
            assert rig.handler.calls == []
            assert rig.transport.finished_requests == []
            assert rig.dispatcher.release() == 1
            assert rig.handler.calls == [("req-1", "client-1")]
            assert rig.transport.shutdown_requests == ["req-1"]
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(5)
    def test_rejected_job_is_closed_not_shut_down(self) -> None:
        """A held job the dispatcher closes unserved goes to close_request, not to the handler."""
        rig = Rig(dispatcher=InlineDispatcher(hold=True))
        try:
            rig.transport.connect("req-1", "client-1")
            rig.server.handle_request()
            assert rig.dispatcher.discard() == 1
            assert rig.handler.calls == []
            assert rig.transport.closed_requests == ["req-1"]
            assert rig.transport.shutdown_requests == []
        finally:
            rig.server.server_close()


class TestServeForever:
    @pytest.mark.timeout(10)
    def test_serves_until_shutdown(self, rig: Rig) -> None:
        """serve_forever handles every queued request until shutdown() is called."""
        with serving(rig.server) as thread:
            for i in range(5):
                rig.transport.connect(f"req-{i}", f"client-{i}")
            assert rig.handler.wait_for(5, WAIT)
            assert set(rig.handler.threads) == {thread.ident}
        assert [r for r, _ in rig.handler.calls] == [f"req-{i}" for i in range(5)]

    @pytest.mark.timeout(10)
    def test_the_handler_traits_are_learnt_before_the_first_request(self, rig: Rig) -> None:
        """serve_forever asks for its handler's traits in the serving process, so a forked child finds them known instead of asking in every child."""
        assert rig.server._requests.traits[0] is None
        with serving(rig.server):
            # No request yet: the loop itself asked.
            assert eventually(lambda: rig.server._requests.traits[0] is rig.handler)
        assert rig.handler.calls == []

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("connections", [False, True], ids=["datagrams", "connections"])
    def test_a_loop_at_low_load_probes_for_a_second_request_only_now_and_then(self, connections: bool) -> None:
        """After a probe for a second request (datagram or connection) found none, the next 8 wake-ups take one each without probing; all are served."""
        accepts: list[int] = []
        inner = MemoryAcceptor()

        class CountingAcceptor:
            def accept(self, transport: Transport[str, str]) -> tuple[str, str]:
                accepts.append(1)
                return inner.accept(transport)

        transport: MemoryTransport[str, str] = MemoryTransport(
            "memory", nonblocking=True, request_ops=MemoryRequestOps(connections)
        )
        handler: RecordingHandler[str, str] = RecordingHandler()
        server: MemServer = Server(transport=transport, acceptor=CountingAcceptor(), handler=handler)
        try:
            # Wake-up 1 probes (2 accepts), 2-9 do not (1 each), 10 probes again (2).
            expected = [2, 3, 4, 5, 6, 7, 8, 9, 10, 12]
            with serving(server):
                for i, total in enumerate(expected):  # the next only once the loop is done: one per wake-up
                    transport.connect(f"dgram-{i}", "client")
                    assert handler.wait_for(i + 1, WAIT)
                    assert eventually(lambda: len(accepts) >= total), (i, len(accepts))
                    assert len(accepts) == total, (i, len(accepts))
        finally:
            server.server_close()

    @pytest.mark.timeout(10)
    def test_shutdown_from_another_thread_is_prompt(self, rig: Rig) -> None:
        """shutdown() from another thread returns well within poll_interval (measured < 0.5 s with poll_interval=30)."""
        thread = threading.Thread(target=rig.server.serve_forever, args=(30.0,))
        thread.start()
        try:
            rig.transport.connect("req-1", "client-1")
            assert rig.handler.wait_for(1, WAIT)  # the loop is running
            started = time.monotonic()
            rig.server.shutdown()
            elapsed = time.monotonic() - started
        finally:
            rig.server.shutdown()
            thread.join(WAIT)
        assert not thread.is_alive()
        print(f"shutdown latency: {elapsed * 1000:.2f} ms")
        assert elapsed < 0.5

    @pytest.mark.timeout(10)
    def test_shutdown_before_serve_forever(self, rig: Rig) -> None:
        """shutdown() before serve_forever returns at once, and the next serve_forever returns immediately."""
        started = time.monotonic()
        rig.server.shutdown()
        assert time.monotonic() - started < 0.5
        started = time.monotonic()
        rig.server.serve_forever(poll_interval=30.0)
        assert time.monotonic() - started < 0.5

    @pytest.mark.timeout(10)
    def test_serve_forever_restarts_after_shutdown(self, rig: Rig) -> None:
        """A shutdown request is consumed: serve_forever can be started again and serves."""
        with serving(rig.server):
            rig.transport.connect("req-1", "client-1")
            assert rig.handler.wait_for(1, WAIT)
        with serving(rig.server):
            rig.transport.connect("req-2", "client-2")
            assert rig.handler.wait_for(2, WAIT)

    @pytest.mark.timeout(10)
    def test_shutdown_from_serving_thread_raises(self) -> None:
        """shutdown() called from the serving thread (a handler under the sync dispatcher) raises ServerStateError."""
        seen: list[BaseException] = []

        def stop_myself(request: str, client_address: str, server: object) -> None:
            assert isinstance(server, Server)
            try:
                server.shutdown()
            except ServerStateError as exc:
                seen.append(exc)

        rig = Rig(action=stop_myself)
        try:
            with serving(rig.server):
                rig.transport.connect("req-1", "client-1")
                assert rig.handler.wait_for(1, WAIT)
            assert len(seen) == 1
            assert "deadlock" in str(seen[0])
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(10)
    def test_serve_forever_twice_raises(self, rig: Rig) -> None:
        """A second serve_forever while one is running raises ServerStateError."""
        with serving(rig.server):
            rig.transport.connect("req-1", "client-1")
            assert rig.handler.wait_for(1, WAIT)
            with pytest.raises(ServerStateError, match="already running"):
                rig.server.serve_forever()

    @pytest.mark.timeout(10)
    def test_service_actions_run_the_dispatcher_housekeeping(self) -> None:
        """The loop calls dispatcher.service() from the serving thread while idle."""
        called = threading.Event()
        threads: list[int] = []

        def hook() -> None:
            threads.append(threading.get_ident())
            called.set()

        rig = Rig(dispatcher=InlineDispatcher(service_hook=hook))
        try:
            with serving(rig.server, poll_interval=0.01) as thread:
                assert called.wait(WAIT)
            assert set(threads) == {thread.ident}
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(5)
    def test_closed_server_refuses_to_serve(self, rig: Rig) -> None:
        """serve_forever and handle_request on a closed server raise ServerClosedError."""
        rig.server.server_close()
        with pytest.raises(ServerClosedError):
            rig.server.serve_forever()
        with pytest.raises(ServerClosedError):
            rig.server.handle_request()


class TestHandleRequestTimeout:
    @pytest.mark.timeout(5)
    def test_fixed_timeout_calls_on_timeout(self) -> None:
        """With FixedTimeout(0.05) and nothing queued, handle_request waits about 0.05 s and calls on_timeout once."""
        calls: list[float] = []
        rig = Rig(timeout_policy=FixedTimeout(0.05, on_timeout=lambda: calls.append(time.monotonic())))
        try:
            assert rig.server.timeout == 0.05
            started = time.monotonic()
            rig.server.handle_request()
            elapsed = time.monotonic() - started
            assert len(calls) == 1
            assert 0.05 <= elapsed < 1.0
            assert rig.handler.calls == []
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(5)
    def test_zero_timeout_calls_handle_timeout(self) -> None:
        """A zero timeout polls once and calls handle_timeout when nothing is queued."""
        policy = RecordingTimeoutPolicy(timeout=0)
        rig = Rig(timeout_policy=policy)
        try:
            rig.server.handle_request()
            assert policy.timeouts == 1
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(5)
    def test_queued_request_is_handled_not_timed_out(self) -> None:
        """A request queued before the timeout is handled and handle_timeout is not called."""
        policy = RecordingTimeoutPolicy(timeout=0.05)
        rig = Rig(timeout_policy=policy)
        try:
            rig.transport.connect("req-1", "client-1")
            rig.server.handle_request()
            assert policy.timeouts == 0
            assert rig.handler.calls == [("req-1", "client-1")]
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(5)
    def test_timeout_is_read_from_the_policy_each_call(self) -> None:
        """Server.timeout follows the timeout policy, also when the policy changes it."""
        policy = RecordingTimeoutPolicy(timeout=None)
        rig = Rig(timeout_policy=policy)
        try:
            assert rig.server.timeout is None
            policy.timeout = 0.01
            rig.server.handle_request()
            assert policy.timeouts == 1
        finally:
            rig.server.server_close()


class TestServerClose:
    @pytest.mark.timeout(5)
    def test_server_close_is_idempotent(self, rig: Rig) -> None:
        """server_close closes the transport and the dispatcher; a second call does nothing more."""
        rig.server.server_close()
        rig.server.server_close()
        assert rig.transport.closed
        assert rig.dispatcher.closed
        assert rig.server.fileno() == -1

    @pytest.mark.timeout(5)
    def test_context_manager_closes(self) -> None:
        """Leaving the with block closes the server."""
        rig = Rig()
        with rig.server as server:
            assert server is rig.server
        assert rig.transport.closed
        with pytest.raises(ServerClosedError):
            rig.server.handle_request()

    @pytest.mark.timeout(10)
    def test_server_close_stops_a_running_loop(self, rig: Rig) -> None:
        """server_close from another thread stops serve_forever before closing."""
        thread = threading.Thread(target=rig.server.serve_forever)
        thread.start()
        try:
            rig.transport.connect("req-1", "client-1")
            assert rig.handler.wait_for(1, WAIT)
            rig.server.server_close()
            thread.join(WAIT)
            assert not thread.is_alive()
        finally:
            rig.server.shutdown()
            thread.join(WAIT)
        assert rig.transport.closed

    @pytest.mark.timeout(10)
    @pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd to count descriptors")
    @pytest.mark.parametrize("while_serving", [False, True], ids=["idle", "while-serving"])
    def test_close_releases_every_descriptor(self, while_serving: bool) -> None:
        """server_close releases every descriptor the server opened, also when a loop was running in another thread."""
        before = len(os.listdir("/proc/self/fd"))
        rig = Rig()
        thread = threading.Thread(target=rig.server.serve_forever)
        if while_serving:
            thread.start()
            rig.transport.connect("req-1", "client-1")
            assert rig.handler.wait_for(1, WAIT)
        rig.server.server_close()
        if while_serving:
            thread.join(WAIT)
        assert len(os.listdir("/proc/self/fd")) == before

    @pytest.mark.timeout(5)
    def test_repr_shows_address_state_and_components(self, rig: Rig) -> None:
        """The repr names the bound address, the state, the transport type and the dispatcher."""
        text = repr(rig.server)
        assert "'memory:bound'" in text
        assert "idle" in text
        assert "MemoryTransport" in text
        assert "InlineDispatcher" in text
        rig.server.server_close()
        assert "closed" in repr(rig.server)


class SignallingBackoff:
    """AcceptBackoff that also sets an event on every failure it is told of."""

    def __init__(self, backoff: AcceptBackoff) -> None:
        self.backoff = backoff
        self.failed = threading.Event()
        self.delays: list[float] = []

    def accept_failed(self, exc: OSError) -> float:
        delay = self.backoff.accept_failed(exc)
        self.delays.append(delay)
        self.failed.set()
        return delay

    def accepted(self) -> None:
        self.backoff.accepted()


def _emfile_forever() -> list[int]:
    return [errno.EMFILE] * 100_000


class TestAcceptErrorBackoff:
    @pytest.mark.timeout(10)
    def test_emfile_pauses_the_loop_then_serves_after_recovery(self) -> None:
        """While accept fails with EMFILE the loop polls a handful of times (not thousands), and serves once it recovers."""
        acceptor: RaisingAcceptor[str, str] = RaisingAcceptor(MemoryAcceptor(), _emfile_forever())
        policy = SignallingBackoff(AcceptBackoff(0.05, 0.2))
        rig = Rig(acceptor=acceptor, accept_error_policy=policy)
        try:
            with serving(rig.server):
                rig.transport.connect("req-1", "client-1")
                assert policy.failed.wait(WAIT)
                threading.Event().wait(0.5)  # the observation window
                attempts = len(acceptor.raised)
                acceptor.errors.clear()  # descriptors are free again
                recovered = time.monotonic()
                assert rig.handler.wait_for(1, WAIT)
                latency = time.monotonic() - recovered
            print(f"EMFILE: {attempts} accept attempts in 0.5 s; served {latency * 1000:.0f} ms after recovery")
            assert attempts <= 10
            assert policy.delays[:4] == pytest.approx([0.05, 0.1, 0.2, 0.2])
            assert latency < 0.2 + 1.0
            assert rig.handler.calls == [("req-1", "client-1")]
            assert policy.backoff.failures == 0, "accepted() was not called after the recovery"
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(10)
    def test_retry_immediately_spins(self) -> None:
        """For contrast, the stdlib policy polls again at once: the pause above is the backoff's doing."""
        acceptor: RaisingAcceptor[str, str] = RaisingAcceptor(MemoryAcceptor(), _emfile_forever())
        rig = Rig(acceptor=acceptor, accept_error_policy=RetryImmediately())
        try:
            with serving(rig.server):
                rig.transport.connect("req-1", "client-1")
                threading.Event().wait(0.1)
                attempts = len(acceptor.raised)
                acceptor.errors.clear()
                assert rig.handler.wait_for(1, WAIT)
            print(f"RetryImmediately: {attempts} accept attempts in 0.1 s")
            assert attempts > 50
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(10)
    def test_finished_request_wakes_a_paused_loop(self) -> None:
        """A request finishing frees a descriptor, so a loop paused for 30 s accepts again at once."""
        dispatched = threading.Semaphore(0)
        acceptor: RaisingAcceptor[str, str] = RaisingAcceptor(MemoryAcceptor())
        policy = SignallingBackoff(AcceptBackoff(30.0, 30.0))
        rig = Rig(
            acceptor=acceptor,
            accept_error_policy=policy,
            dispatcher=InlineDispatcher(hold=True, dispatch_hook=lambda job: dispatched.release()),
        )
        try:
            with serving(rig.server):
                rig.transport.connect("req-1", "client-1")
                assert dispatched.acquire(timeout=WAIT)
                acceptor.errors.append(errno.EMFILE)
                rig.transport.connect("req-2", "client-2")
                assert policy.failed.wait(WAIT)
                assert policy.delays == [30.0]
                started = time.monotonic()
                assert rig.dispatcher.release(1) == 1  # req-1 finishes in this thread
                assert dispatched.acquire(timeout=WAIT)
                latency = time.monotonic() - started
                rig.dispatcher.release()
            print(f"paused loop woken by a finished request after {latency * 1000:.1f} ms")
            assert latency < 1.0
            assert [r for r, _ in rig.handler.calls] == ["req-1", "req-2"]
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(10)
    def test_transient_errors_do_not_pause(self) -> None:
        """ECONNABORTED/EPROTO/EINTR are skipped at once: the pending request is served without a pause."""
        acceptor: RaisingAcceptor[str, str] = RaisingAcceptor(
            MemoryAcceptor(), [errno.ECONNABORTED, errno.EPROTO, errno.EINTR]
        )
        policy = SignallingBackoff(AcceptBackoff(30.0, 30.0))
        rig = Rig(acceptor=acceptor, accept_error_policy=policy)
        try:
            with serving(rig.server):
                rig.transport.connect("req-1", "client-1")
                assert rig.handler.wait_for(1, WAIT / 2)
            assert policy.delays == [0.0, 0.0, 0.0]
            assert len(acceptor.raised) == 3
        finally:
            rig.server.server_close()


class JoinSignal:
    """A dispatcher wrapper that sets an event when join() is entered."""

    def __init__(self, inner: InlineDispatcher) -> None:
        self.inner = inner
        self.joining = threading.Event()

    def dispatch(self, job: Job) -> None:
        self.inner.dispatch(job)

    def service(self) -> None:
        self.inner.service()

    def join(self, timeout: float | None) -> tuple[Job, ...]:
        self.joining.set()
        return self.inner.join(timeout)

    def close(self) -> None:
        self.inner.close()


class ScriptedJob:
    """A fake in-flight job that records abort()."""

    def __init__(self, name: str) -> None:
        self.client_address: object = name
        self.aborts = 0

    def run(self) -> bool:
        return True

    def close(self, message: bytes = b"") -> None:
        pass

    def abort(self) -> None:
        self.aborts += 1


class ScriptedDispatcher:
    """A dispatcher whose join() returns scripted jobs and records its timeouts."""

    def __init__(self, *joins: tuple[Job, ...]) -> None:
        self.joins = list(joins)
        self.timeouts: list[float | None] = []

    def dispatch(self, job: Job) -> None:
        job.run()

    def service(self) -> None:
        pass

    def join(self, timeout: float | None) -> tuple[Job, ...]:
        self.timeouts.append(timeout)
        return self.joins.pop(0) if self.joins else ()

    def close(self) -> None:
        pass


def _memory_server(dispatcher: Dispatcher, handler: RecordingHandler[str, str]) -> MemServer:
    transport: MemoryTransport[str, str] = MemoryTransport("memory")
    return Server(
        transport=transport,
        acceptor=MemoryAcceptor(),
        handler=handler,
        dispatcher=dispatcher,
        error_policy=RecordingErrorPolicy(),
    )


class TestDrain:
    @pytest.mark.timeout(5)
    def test_nothing_in_flight(self, rig: Rig) -> None:
        """drain() with nothing in flight reports a finished drain at once."""
        with serving(rig.server):
            rig.transport.connect("req-1", "client-1")
            assert rig.handler.wait_for(1, WAIT)
            report = rig.server.drain(WAIT)
        assert report == DrainReport(finished=True, elapsed=report.elapsed)
        assert (report.cut, report.remaining) == ((), ())
        assert report.elapsed < 1.0

    @pytest.mark.timeout(10)
    def test_waits_for_requests_in_flight(self) -> None:
        """drain() stops accepting and waits for the requests in flight; all finish, none is cut."""
        signal = JoinSignal(InlineDispatcher(hold=True))
        handler: RecordingHandler[str, str] = RecordingHandler()
        server = _memory_server(signal, handler)
        transport = cast("MemoryTransport[str, str]", server.transport)
        try:
            thread = threading.Thread(target=server.serve_forever)
            thread.start()
            for i in range(3):
                transport.connect(f"req-{i}", f"client-{i}")
            assert eventually(lambda: len(signal.inner.pending) == 3)

            def release_when_draining() -> None:
                assert signal.joining.wait(WAIT)
                signal.inner.release()

            releaser = threading.Thread(target=release_when_draining)
            releaser.start()
            report = server.drain(WAIT)
            releaser.join(WAIT)
            thread.join(WAIT)
            assert not thread.is_alive(), "drain() did not stop serve_forever"
            transport.connect("late", "client-late")
            assert report.finished and report.cut == () and report.remaining == ()
            assert [r for r, _ in handler.calls] == ["req-0", "req-1", "req-2"]
            assert transport.pending == (("late", "client-late"),), "drain() must stop accepting"
        finally:
            server.server_close()

    @pytest.mark.timeout(10)
    def test_cuts_requests_still_running_at_the_deadline(self, rig: Rig) -> None:
        """At the deadline drain() aborts every job still in flight and reports them as cut and remaining."""
        boom = ConnectionResetError("the cut woke the handler")

        def fail_when_cut(request: str, client_address: str, server: object) -> None:
            raise boom

        rig = Rig(action=fail_when_cut, dispatcher=InlineDispatcher(hold=True))
        try:
            with serving(rig.server):
                rig.transport.connect("req-1", "client-1")
                rig.transport.connect("req-2", "client-2")
                assert eventually(lambda: len(rig.dispatcher.pending) == 2)
                report = rig.server.drain(0.1, grace=0.05)
            print(f"drain of 2 stuck jobs: {report.elapsed * 1000:.0f} ms (timeout 100 ms + grace 50 ms)")
            assert not report.finished
            assert report.cut == ("client-1", "client-2")
            assert report.remaining == ("client-1", "client-2")
            assert 0.15 <= report.elapsed < 0.15 + 1.0
            jobs = rig.dispatcher.pending
            assert all(isinstance(job, RequestJob) and job.cut for job in jobs)
            rig.dispatcher.release()  # the handlers now fail because they were cut
            assert rig.errors.errors == [], "errors caused by the cut must not be reported"
            assert rig.transport.shutdown_requests == ["req-1", "req-2"]
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(5)
    def test_report_separates_cut_from_remaining(self) -> None:
        """drain(timeout, grace) joins with *timeout*, aborts what is left (and any job the stopping loop handed over late), joins with *grace*, and reports both sets."""
        a, b, c = ScriptedJob("a"), ScriptedJob("b"), ScriptedJob("c")
        dispatcher = ScriptedDispatcher((a, b), (b, c), (b,))
        server = _memory_server(dispatcher, RecordingHandler())
        try:
            report = server.drain(2.0, grace=0.5)
        finally:
            server.server_close()
        assert dispatcher.timeouts[:3] == [pytest.approx(2.0, abs=0.5), 0, pytest.approx(0.5, abs=0.1)]
        assert (a.aborts, b.aborts, c.aborts) == (1, 1, 1)
        assert (report.finished, report.cut, report.remaining) == (False, ("a", "b", "c"), ("b",))

    @pytest.mark.timeout(5)
    def test_report_is_frozen(self) -> None:
        """A DrainReport cannot be changed."""
        report = DrainReport(finished=True, elapsed=0.0)
        with pytest.raises(AttributeError):
            report.finished = False  # type: ignore[misc]  # frozen: the point of the test


class TestBackpressure:
    @pytest.mark.timeout(10)
    def test_shutdown_during_backpressure_loses_nothing(self) -> None:
        """shutdown() while the loop is blocked by a full pool returns once a worker frees; the blocked request is served, no new one is accepted."""
        gates = {f"req-{i}": threading.Event() for i in range(3)}
        handler: RecordingHandler[str, str] = RecordingHandler(lambda request, address, server: gates[request].wait(WAIT))
        server = _memory_server(ThreadPoolDispatcher(1, queue_size=0), handler)
        transport = cast("MemoryTransport[str, str]", server.transport)
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        stopper = threading.Thread(target=server.shutdown)
        try:
            transport.connect("req-0", "client-0")
            assert handler.wait_for(1, WAIT)
            transport.connect("req-1", "client-1")
            assert eventually(lambda: transport.pending == ())  # accepted: dispatch is blocked
            stopper.start()
            stopper.join(0.05)
            transport.connect("req-2", "client-2")
            gates["req-0"].set()
            assert handler.wait_for(2, WAIT), "the request blocked by backpressure was lost"
            gates["req-1"].set()
            stopper.join(WAIT)
            thread.join(WAIT)
            assert not stopper.is_alive() and not thread.is_alive()
            assert [r for r, _ in handler.calls] == ["req-0", "req-1"]
            assert transport.pending == (("req-2", "client-2"),)
        finally:
            for gate in gates.values():
                gate.set()
            server.server_close()
            thread.join(WAIT)

    @pytest.mark.timeout(10)
    def test_drain_during_backpressure_keeps_its_deadline(self) -> None:
        """drain(timeout) returns by timeout + grace even while the loop is blocked by a full pool behind a stuck handler."""
        release = threading.Event()
        handler: RecordingHandler[str, str] = RecordingHandler(lambda request, address, server: release.wait(WAIT))
        server = _memory_server(ThreadPoolDispatcher(1, queue_size=0), handler)
        transport = cast("MemoryTransport[str, str]", server.transport)
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        reports: list[DrainReport] = []
        drainer = threading.Thread(target=lambda: reports.append(server.drain(0.1, grace=0.1)))
        try:
            transport.connect("req-0", "client-0")
            assert handler.wait_for(1, WAIT)
            transport.connect("req-1", "client-1")
            assert eventually(lambda: transport.pending == ())
            started = time.monotonic()
            drainer.start()
            drainer.join(3.0)
            elapsed = time.monotonic() - started
            assert not drainer.is_alive(), "drain() waited past its deadline for a loop blocked by backpressure"
            [report] = reports
            print(f"drain under backpressure: {elapsed * 1000:.0f} ms (timeout 100 ms + grace 100 ms)")
            assert not report.finished
            assert "client-0" in report.cut and "client-0" in report.remaining
            assert elapsed < 0.2 + 1.0
        finally:
            release.set()
            drainer.join(WAIT)
            thread.join(WAIT)
            server.server_close()
        assert not thread.is_alive()
        assert [r for r, _ in handler.calls] == ["req-0", "req-1"], "the request blocked in dispatch was lost"
