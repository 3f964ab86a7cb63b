"""The Server engine, driven entirely by the in-memory fakes (no sockets)."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from composable_server import FixedTimeout, ReRaise, Server, ServerClosedError, ServerStateError
from composable_server.testing import (
    InlineDispatcher,
    MemoryAcceptor,
    MemoryTransport,
    MemoryVerifier,
    RaisingAcceptor,
    RecordingErrorPolicy,
    RecordingHandler,
    RecordingTimeoutPolicy,
)

WAIT = 10.0  # upper bound for things that should happen at once

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
