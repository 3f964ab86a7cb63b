"""The dispatchers, with fake jobs: threads and fork are used, sockets are not."""

from __future__ import annotations

import errno
import gc
import os
import queue
import signal
import select
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from composable_server import (
    Dispatcher,
    ForkingDispatcher,
    Job,
    PoolStatistics,
    ServerClosedError,
    SyncDispatcher,
    ThreadingDispatcher,
    ThreadPoolDispatcher,
)

WAIT = 10.0


class FakeJob:
    """A job that records its calls in-process; optionally waits for a gate."""

    def __init__(self, name: str = "job", *, result: bool = True, gate: threading.Event | None = None) -> None:
        self.client_address: object = name
        self.result = result
        self.gate = gate
        self.started = threading.Event()
        self.done = threading.Event()
        self.runs: list[int] = []
        self.daemon: bool | None = None
        self.thread: threading.Thread | None = None
        self.closes = 0
        self.messages: list[bytes] = []

    def run(self) -> bool:
        self.started.set()
        self.runs.append(threading.get_ident())
        self.thread = threading.current_thread()
        self.daemon = threading.current_thread().daemon
        if self.gate is not None:
            self.gate.wait(WAIT)
        self.done.set()
        return self.result

    def close(self, message: bytes = b"") -> None:
        self.closes += 1
        self.messages.append(message)

    def abort(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<FakeJob {self.client_address!r}>"


def eventually(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll *predicate* until it holds or *timeout* passes (for state with no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        threading.Event().wait(0.005)
    return True


class Dispatching:
    """dispatch() in a helper thread, so a test can watch it block."""

    def __init__(self, dispatcher: Dispatcher, job: Job) -> None:
        self.returned = threading.Event()
        self.error: BaseException | None = None
        self._dispatcher = dispatcher
        self._job = job
        self.thread = threading.Thread(target=self._run, name="dispatching")
        self.thread.start()

    def _run(self) -> None:
        try:
            self._dispatcher.dispatch(self._job)
        except BaseException as exc:  # recorded for the test to assert on
            self.error = exc
        finally:
            self.returned.set()

    def join(self) -> None:
        self.thread.join(WAIT)
        assert not self.thread.is_alive()


class Pipe:
    """A pipe pair closed at teardown."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()

    def readable(self, timeout: float) -> bool:
        poller = select.poll()
        poller.register(self.r, select.POLLIN)
        return bool(poller.poll(timeout * 1000))

    def close(self) -> None:
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass


class ChildJob:
    """A job for forked children: waits for a byte on *gate* (if any), then
    writes its name to *report* and returns *result*."""

    def __init__(self, name: str, report: Pipe, *, gate: Pipe | None = None, result: bool = True) -> None:
        self.client_address: object = name
        self.report = report
        self.gate = gate
        self.result = result
        self.parent_runs = 0
        self.closes = 0
        self.messages: list[bytes] = []
        self.parent = os.getpid()

    def run(self) -> bool:
        if os.getpid() == self.parent:
            self.parent_runs += 1
        if self.gate is not None:
            self.gate.readable(WAIT)
        os.write(self.report.w, f"{self.client_address}\n".encode())
        return self.result

    def close(self, message: bytes = b"") -> None:
        self.closes += 1
        self.messages.append(message)

    def abort(self) -> None:
        pass


@pytest.fixture
def report() -> Iterator[Pipe]:
    pipe = Pipe()
    yield pipe
    pipe.close()


@pytest.fixture
def gate() -> Iterator[Pipe]:
    pipe = Pipe()
    yield pipe
    pipe.close()


class TestSyncDispatcher:
    @pytest.mark.timeout(5)
    def test_runs_job_inline(self) -> None:
        """dispatch runs the job to completion in the calling thread."""
        dispatcher = SyncDispatcher()
        job = FakeJob()
        dispatcher.dispatch(job)
        assert job.runs == [threading.get_ident()]
        assert job.closes == 0
        assert dispatcher.join(0) == ()

    @pytest.mark.timeout(5)
    def test_refuses_jobs_after_close(self) -> None:
        """After close (idempotent) dispatch raises ServerClosedError and leaves the job alone."""
        dispatcher = SyncDispatcher()
        dispatcher.close()
        dispatcher.close()
        job = FakeJob()
        with pytest.raises(ServerClosedError):
            dispatcher.dispatch(job)
        assert (job.runs, job.closes) == ([], 0)

    @pytest.mark.timeout(5)
    def test_repr(self) -> None:
        """The repr says whether the dispatcher is closed."""
        dispatcher = SyncDispatcher()
        assert repr(dispatcher) == "<SyncDispatcher>"
        dispatcher.close()
        assert repr(dispatcher) == "<SyncDispatcher closed>"


class TestThreadingDispatcher:
    @pytest.mark.timeout(10)
    def test_runs_job_in_a_new_thread(self) -> None:
        """Each job runs once, in a thread other than the caller's."""
        dispatcher = ThreadingDispatcher()
        job = FakeJob()
        dispatcher.dispatch(job)
        assert dispatcher.join(WAIT) == ()
        dispatcher.close()
        assert len(job.runs) == 1
        assert job.runs[0] != threading.get_ident()
        assert job.closes == 0

    @pytest.mark.timeout(20)
    def test_bookkeeping_does_not_grow(self) -> None:
        """After many finished jobs no threads are kept: nothing running, nothing left to join."""
        dispatcher = ThreadingDispatcher()
        baseline = threading.active_count()
        jobs = [FakeJob(f"job-{i}") for i in range(200)]
        for job in jobs:
            dispatcher.dispatch(job)
            dispatcher.service()
        for job in jobs:
            assert job.done.wait(WAIT)
        assert dispatcher.join(WAIT) == ()
        assert dispatcher.running == 0
        assert dispatcher._finished == []  # white box: the bpo-37193 leak
        assert threading.active_count() == baseline
        dispatcher.close()

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("daemon", [False, True])
    def test_daemon_flag(self, daemon: bool) -> None:
        """The job thread is daemonic exactly when daemon=True."""
        dispatcher = ThreadingDispatcher(daemon=daemon)
        job = FakeJob()
        dispatcher.dispatch(job)
        assert dispatcher.join(WAIT) == ()
        dispatcher.close()
        assert job.daemon is daemon

    @pytest.mark.timeout(10)
    def test_join_timeout_returns_running_jobs(self) -> None:
        """join(timeout) returns the jobs still running, and () once they finished."""
        dispatcher = ThreadingDispatcher()
        gate = threading.Event()
        slow, quick = FakeJob("slow", gate=gate), FakeJob("quick")
        try:
            dispatcher.dispatch(slow)
            dispatcher.dispatch(quick)
            assert slow.started.wait(WAIT) and quick.done.wait(WAIT)
            assert dispatcher.join(0.01) == (slow,)
            assert dispatcher.running >= 1
        finally:
            gate.set()
        assert dispatcher.join(WAIT) == ()
        dispatcher.close()

    @pytest.mark.timeout(10)
    def test_block_on_close_waits_for_jobs(self) -> None:
        """close() with block_on_close waits until the running job has finished."""
        dispatcher = ThreadingDispatcher(block_on_close=True)
        gate = threading.Event()
        job = FakeJob(gate=gate)
        dispatcher.dispatch(job)
        assert job.started.wait(WAIT)
        closer = threading.Thread(target=dispatcher.close)
        closer.start()
        try:
            closer.join(0.1)
            assert closer.is_alive(), "close() returned while a job was still running"
            assert not job.done.is_set()
        finally:
            gate.set()
            closer.join(WAIT)
        assert not closer.is_alive()
        assert job.done.is_set()

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize(("daemon", "block_on_close"), [(False, False), (True, True)])
    def test_close_does_not_wait_when_not_blocking(self, daemon: bool, block_on_close: bool) -> None:
        """close() returns at once without block_on_close, or for daemon threads."""
        dispatcher = ThreadingDispatcher(daemon=daemon, block_on_close=block_on_close)
        gate = threading.Event()
        job = FakeJob(gate=gate)
        dispatcher.dispatch(job)
        assert job.started.wait(WAIT)
        try:
            dispatcher.close()
            assert not job.done.is_set()
        finally:
            gate.set()
        assert dispatcher.join(WAIT) == ()

    @pytest.mark.timeout(5)
    def test_refuses_jobs_after_close(self) -> None:
        """After close (idempotent) dispatch raises ServerClosedError and starts nothing."""
        dispatcher = ThreadingDispatcher()
        dispatcher.close()
        dispatcher.close()
        job = FakeJob()
        with pytest.raises(ServerClosedError):
            dispatcher.dispatch(job)
        assert (job.runs, job.closes) == ([], 0)

    @pytest.mark.timeout(10)
    def test_repr(self) -> None:
        """The repr shows running jobs, the daemon flag and the closed state."""
        dispatcher = ThreadingDispatcher(daemon=True)
        gate = threading.Event()
        job = FakeJob(gate=gate)
        dispatcher.dispatch(job)
        assert job.started.wait(WAIT)
        try:
            assert repr(dispatcher) == "<ThreadingDispatcher [1 running, daemon]>"
        finally:
            gate.set()
        assert dispatcher.join(WAIT) == ()
        dispatcher.close()
        assert repr(dispatcher) == "<ThreadingDispatcher [0 running, daemon] closed>"

    @pytest.mark.timeout(10)
    def test_max_threads_backpressure_blocks_until_a_thread_ends(self) -> None:
        """At max_threads, dispatch blocks (backpressure on) until a running job ends (off), then starts the job."""
        dispatcher = ThreadingDispatcher(max_threads=1)
        gate = threading.Event()
        first, second = FakeJob("first", gate=gate), FakeJob("second")
        dispatcher.dispatch(first)
        assert first.started.wait(WAIT)
        helper = Dispatching(dispatcher, second)
        try:
            assert not helper.returned.wait(0.1), "dispatch did not wait at the cap"
            assert dispatcher.running == 1
            assert not second.started.is_set()
        finally:
            gate.set()
        assert helper.returned.wait(WAIT) and helper.error is None
        helper.join()
        assert second.done.wait(WAIT)
        assert dispatcher.join(WAIT) == ()
        dispatcher.close()
        assert (second.closes, dispatcher.rejected) == (0, 0)

    @pytest.mark.timeout(10)
    def test_max_threads_reject_closes_with_message(self) -> None:
        """At max_threads with when_full="reject", the job is closed at once with reject_message and counted."""
        dispatcher = ThreadingDispatcher(max_threads=1, when_full="reject", reject_message=b"busy\r\n")
        gate = threading.Event()
        first, second = FakeJob("first", gate=gate), FakeJob("second")
        dispatcher.dispatch(first)
        assert first.started.wait(WAIT)
        try:
            dispatcher.dispatch(second)
            assert (second.runs, second.closes, second.messages) == ([], 1, [b"busy\r\n"])
            assert dispatcher.rejected == 1
            assert repr(dispatcher) == "<ThreadingDispatcher [1/1 running, 1 rejected, non-daemon]>"
        finally:
            gate.set()
        assert dispatcher.join(WAIT) == ()
        third = FakeJob("third")
        dispatcher.dispatch(third)  # below the cap again: served
        assert third.done.wait(WAIT)
        dispatcher.close()
        assert (third.closes, dispatcher.rejected) == (0, 1)

    @pytest.mark.timeout(10)
    def test_close_releases_a_dispatch_waiting_at_the_cap(self) -> None:
        """close() wakes a dispatch blocked at max_threads with ServerClosedError; the caller keeps the job."""
        dispatcher = ThreadingDispatcher(max_threads=1, block_on_close=False)
        gate = threading.Event()
        first, second = FakeJob("first", gate=gate), FakeJob("second")
        dispatcher.dispatch(first)
        assert first.started.wait(WAIT)
        helper = Dispatching(dispatcher, second)
        try:
            assert not helper.returned.wait(0.05)
            dispatcher.close()
            assert helper.returned.wait(WAIT)
            assert isinstance(helper.error, ServerClosedError)
            assert (second.runs, second.closes) == ([], 0)
        finally:
            gate.set()
            helper.join()
        assert dispatcher.join(WAIT) == ()

    @pytest.mark.timeout(5)
    @pytest.mark.parametrize("kwargs", [{"max_threads": 0}, {"when_full": "drop"}])
    def test_capacity_arguments_validated(self, kwargs: dict[str, object]) -> None:
        """max_threads below 1 and an unknown when_full are rejected."""
        with pytest.raises(ValueError):
            ThreadingDispatcher(**kwargs)  # type: ignore[arg-type]  # deliberately wrong values


def _lines(pipe: Pipe) -> list[str]:
    os.set_blocking(pipe.r, False)
    data = b""
    try:
        while chunk := os.read(pipe.r, 4096):
            data += chunk
    except BlockingIOError:
        pass
    return data.decode().split()


class CountingJob(ChildJob):
    """A child job that reports the collector's count of young objects it started with."""

    def run(self) -> bool:
        os.write(self.report.w, f"{gc.get_count()[0]}\n".encode())
        return True


def _young_count_in_child(report: Pipe, *, collector_enabled: bool) -> int:
    """Fork one CountingJob while the parent's young generation holds ~9,000
    objects of a 10,000 threshold; the count the child started with."""
    saved, enabled = gc.get_threshold(), gc.isenabled()
    job = CountingJob("job", report)  # made before the count is taken, so as not to add to it
    try:
        gc.set_threshold(10_000, *saved[1:])
        gc.collect(0)
        if not collector_enabled:
            gc.disable()
        young: list[list[int]] = [[] for _ in range(9_000)]  # kept alive across the fork: the young generation holds them
        dispatcher = ForkingDispatcher()
        dispatcher.dispatch(job)
        dispatcher.close()
        del young
    finally:
        gc.set_threshold(*saved)
        if enabled:
            gc.enable()
    (count,) = _lines(report)
    return int(count)


class TestForkingDispatcher:
    @pytest.mark.timeout(10)
    def test_child_runs_job_parent_closes_its_copy(self, report: Pipe) -> None:
        """The job runs in a child process; the parent only closes its copy of the request."""
        dispatcher = ForkingDispatcher()
        job = ChildJob("job-1", report)
        dispatcher.dispatch(job)
        assert dispatcher.join(WAIT) == ()
        dispatcher.close()
        assert _lines(report) == ["job-1"]
        assert (job.parent_runs, job.closes) == (0, 1)

    @pytest.mark.timeout(10)
    def test_join_returns_the_same_job_for_a_child_every_time(self, report: Pipe, gate: Pipe) -> None:
        """join() hands out one job object per running child, the same at every call (drain compares them by identity)."""
        dispatcher = ForkingDispatcher()
        dispatcher.dispatch(ChildJob("slow", report, gate=gate))
        first, second = dispatcher.join(0), dispatcher.join(0)
        assert len(first) == 1 and first[0] is second[0]
        assert first[0].client_address == "slow"
        os.write(gate.w, b"\0")
        dispatcher.close()
        assert _lines(report) == ["slow"]

    @pytest.mark.timeout(10)
    def test_a_child_does_not_inherit_a_young_generation_near_the_collection_threshold(self, report: Pipe) -> None:
        """With the parent's count of young objects at 90% of the threshold, the child starts below half of it (the parent collected first)."""
        assert _young_count_in_child(report, collector_enabled=True) < 5_000

    @pytest.mark.timeout(10)
    def test_a_disabled_collector_is_not_run_before_a_fork(self, report: Pipe) -> None:
        """With the collector disabled by the program, the parent does not collect before forking: the child sees the parent's count."""
        assert _young_count_in_child(report, collector_enabled=False) >= 5_000  # not collected (it would be near 0)

    @pytest.mark.timeout(10)
    def test_child_restores_the_default_sigterm_and_sigint_handlers(self, report: Pipe) -> None:
        """A child does not inherit the parent's Python-level SIGTERM and SIGINT handlers: SIGTERM ends it, Ctrl-C raises."""

        class SignalsJob(ChildJob):
            def run(self) -> bool:
                term, intr = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
                os.write(self.report.w, f"{term is signal.SIG_DFL} {intr is signal.default_int_handler}\n".encode())
                return True

        saved = signal.signal(signal.SIGTERM, lambda signum, frame: None), signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            dispatcher = ForkingDispatcher()
            dispatcher.dispatch(SignalsJob("job", report))
            dispatcher.close()
        finally:
            signal.signal(signal.SIGTERM, saved[0])
            signal.signal(signal.SIGINT, saved[1])
        assert _lines(report) == ["True", "True"]  # (_lines splits on whitespace)

    @pytest.mark.timeout(10)
    def test_children_are_reaped(self, report: Pipe) -> None:
        """After close no child is left, not even a zombie."""
        dispatcher = ForkingDispatcher()
        for i in range(5):
            dispatcher.dispatch(ChildJob(f"job-{i}", report))
        dispatcher.close()
        assert sorted(_lines(report)) == [f"job-{i}" for i in range(5)]
        assert dispatcher.active_children is None
        with pytest.raises(ChildProcessError):
            os.waitpid(-1, os.WNOHANG)

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize(("result", "status"), [(True, 0), (False, 1)])
    def test_exit_status_follows_job_result(self, report: Pipe, gate: Pipe, result: bool, status: int) -> None:
        """The child exits 0 when the job succeeded and 1 when the handler raised."""
        dispatcher = ForkingDispatcher()
        dispatcher.dispatch(ChildJob("job", report, gate=gate, result=result))
        children = dispatcher.active_children
        assert children is not None and len(children) == 1
        [pid] = children
        os.write(gate.w, b"\0")
        # Reap it ourselves to see the status; the dispatcher then forgets it.
        _, wait_status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(wait_status) == status
        assert dispatcher.join(WAIT) == ()
        dispatcher.close()

    @pytest.mark.timeout(10)
    def test_a_job_that_raises_is_printed_in_the_child_and_exits_1(self, report: Pipe) -> None:
        """An exception escaping the job (KeyboardInterrupt too) is printed to the child's stderr, which is flushed, and the child exits 1 without returning into the parent's code."""

        class RaisingJob(ChildJob):
            def run(self) -> bool:
                # Block-buffered: only the child's exit flush delivers it.
                sys.stderr = open(self.report.w, "w", closefd=False)  # the child's; pytest captures the real one
                raise KeyboardInterrupt("child broke")

        dispatcher = ForkingDispatcher()
        dispatcher.dispatch(RaisingJob("job", report))
        children = dispatcher.active_children
        assert children is not None and len(children) == 1
        [pid] = children
        _, wait_status = os.waitpid(pid, 0)
        dispatcher.close()
        os.set_blocking(report.r, False)
        printed = os.read(report.r, 65536)
        assert os.waitstatus_to_exitcode(wait_status) == 1
        assert b"KeyboardInterrupt: child broke" in printed
        assert printed.count(b"Traceback") == 1  # printed once: the child never ran the parent's code

    @pytest.mark.timeout(10)
    def test_std_streams_flushed_before_fork_and_at_the_childs_exit(
        self, report: Pipe, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """What the parent buffered before the fork is written once (not repeated by the child), and what the child buffered is not lost at its os._exit."""
        out = open(report.w, "w", closefd=False)  # closed below; block-buffered
        monkeypatch.setattr(sys, "stdout", out)

        class PrintingJob(ChildJob):
            def run(self) -> bool:
                print("child")
                return True

        try:
            print("parent")
            dispatcher = ForkingDispatcher()
            dispatcher.dispatch(PrintingJob("job", report))
            dispatcher.close()
        finally:
            out.close()
        assert _lines(report) == ["parent", "child"]

    @pytest.mark.timeout(20)
    def test_max_children_blocks_dispatch(self, report: Pipe, gate: Pipe) -> None:
        """With max_children=1, dispatch blocks until the running child exits."""
        dispatcher = ForkingDispatcher(max_children=1)
        dispatcher.dispatch(ChildJob("first", report, gate=gate))
        second_dispatched = threading.Event()

        def dispatch_second() -> None:
            dispatcher.dispatch(ChildJob("second", report))
            second_dispatched.set()

        helper = threading.Thread(target=dispatch_second)
        helper.start()
        try:
            assert not second_dispatched.wait(0.2), "dispatch did not wait for a free slot"
            assert _lines(report) == []
        finally:
            os.write(gate.w, b"\0")
            helper.join(WAIT)
        assert second_dispatched.is_set()
        dispatcher.close()
        assert sorted(_lines(report)) == ["first", "second"]

    @pytest.mark.timeout(10)
    def test_join_timeout_returns_running_children(self, report: Pipe, gate: Pipe) -> None:
        """join(timeout) reports the running child's job, and () once it exited."""
        dispatcher = ForkingDispatcher()
        dispatcher.dispatch(ChildJob("slow", report, gate=gate))
        try:
            left = dispatcher.join(0.01)
            assert [job.client_address for job in left] == ["slow"]
        finally:
            os.write(gate.w, b"\0")
        assert dispatcher.join(WAIT) == ()
        dispatcher.close()

    @pytest.mark.timeout(10)
    def test_close_without_block_on_close_returns_at_once(self, report: Pipe, gate: Pipe) -> None:
        """close() without block_on_close leaves a running child alone; a later join reaps it."""
        dispatcher = ForkingDispatcher(block_on_close=False)
        dispatcher.dispatch(ChildJob("slow", report, gate=gate))
        try:
            dispatcher.close()
            assert dispatcher.active_children is not None
        finally:
            os.write(gate.w, b"\0")
        assert dispatcher.join(WAIT) == ()
        with pytest.raises(ChildProcessError):
            os.waitpid(-1, os.WNOHANG)

    @pytest.mark.timeout(5)
    def test_refuses_jobs_after_close(self, report: Pipe) -> None:
        """After close (idempotent) dispatch raises ServerClosedError and forks nothing."""
        dispatcher = ForkingDispatcher()
        dispatcher.close()
        dispatcher.close()
        job = ChildJob("job", report)
        with pytest.raises(ServerClosedError):
            dispatcher.dispatch(job)
        assert job.closes == 0
        assert dispatcher.active_children is None

    @pytest.mark.timeout(5)
    def test_max_children_validated(self) -> None:
        """max_children below 1 is rejected."""
        with pytest.raises(ValueError, match="max_children"):
            ForkingDispatcher(max_children=0)

    @pytest.mark.timeout(10)
    def test_repr(self, report: Pipe, gate: Pipe) -> None:
        """The repr shows children against the limit and the closed state."""
        dispatcher = ForkingDispatcher(max_children=3)
        assert repr(dispatcher) == "<ForkingDispatcher [0/3 children]>"
        dispatcher.dispatch(ChildJob("slow", report, gate=gate))
        try:
            assert repr(dispatcher) == "<ForkingDispatcher [1/3 children]>"
        finally:
            os.write(gate.w, b"\0")
        dispatcher.close()
        assert repr(dispatcher) == "<ForkingDispatcher [0/3 children] closed>"

    @pytest.mark.timeout(10)
    def test_max_children_reject_closes_without_forking(
        self, report: Pipe, gate: Pipe, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """At max_children with when_full="reject", the job is closed with reject_message before any fork."""
        forks: list[int] = []
        real_fork = os.fork

        def counting_fork() -> int:
            pid = real_fork()
            if pid:
                forks.append(pid)
            return pid

        monkeypatch.setattr(os, "fork", counting_fork)
        dispatcher = ForkingDispatcher(max_children=1, when_full="reject", reject_message=b"busy\r\n")
        first, second = ChildJob("first", report, gate=gate), ChildJob("second", report)
        dispatcher.dispatch(first)
        try:
            dispatcher.dispatch(second)
            assert len(forks) == 1, "a child was forked for the rejected job"
            assert (second.closes, second.messages, second.parent_runs) == (1, [b"busy\r\n"], 0)
            assert dispatcher.rejected == 1
            assert repr(dispatcher) == "<ForkingDispatcher [1/1 children, 1 rejected]>"
        finally:
            os.write(gate.w, b"\0")
        dispatcher.close()
        assert _lines(report) == ["first"]

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("code", [errno.EAGAIN, errno.ENOMEM])
    def test_fork_failure_raises_and_caller_keeps_job(
        self, report: Pipe, monkeypatch: pytest.MonkeyPatch, code: int
    ) -> None:
        """fork() failing with EAGAIN/ENOMEM makes dispatch raise that OSError, leaves the job untouched, and the next dispatch works."""
        real_fork = os.fork

        def failing_fork() -> int:
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(os, "fork", failing_fork)
        dispatcher = ForkingDispatcher()
        job = ChildJob("failed", report)
        with pytest.raises(OSError) as info:
            dispatcher.dispatch(job)
        assert info.value.errno == code
        assert (job.closes, job.parent_runs) == (0, 0)
        assert dispatcher.active_children is None
        monkeypatch.setattr(os, "fork", real_fork)
        dispatcher.dispatch(ChildJob("next", report))
        dispatcher.close()
        assert _lines(report) == ["next"]

    @pytest.mark.timeout(5)
    def test_when_full_validated(self) -> None:
        """An unknown when_full is rejected."""
        with pytest.raises(ValueError, match="when_full"):
            ForkingDispatcher(when_full="drop")  # type: ignore[arg-type]  # deliberately wrong value


def _stats(dispatcher: ThreadPoolDispatcher) -> tuple[int, int, int, int, int]:
    """(workers, busy, idle, queued, rejected) of a statistics() snapshot."""
    st = dispatcher.statistics()
    return (st.workers, st.busy, st.idle, st.queued, st.rejected)


class TestThreadPoolDispatcher:
    @pytest.mark.timeout(5)
    def test_min_workers_started_up_front(self) -> None:
        """min_workers threads are started at construction and wait idle."""
        dispatcher = ThreadPoolDispatcher(4, min_workers=2)
        try:
            assert eventually(lambda: _stats(dispatcher) == (2, 0, 2, 0, 0))
            assert repr(dispatcher) == (
                "<ThreadPoolDispatcher [workers: 0 busy, 2 idle of 4 | queued: 0/64 | rejected: 0]>"
            )
        finally:
            dispatcher.close()
        assert dispatcher.statistics().workers == 0

    @pytest.mark.timeout(10)
    def test_statistics_and_repr_follow_the_pool(self) -> None:
        """statistics() snapshots and the repr count busy workers, queued jobs and completions."""
        dispatcher = ThreadPoolDispatcher(2, queue_size=3)
        gates = [threading.Event() for _ in range(3)]
        jobs = [FakeJob(f"job-{i}", gate=gate) for i, gate in enumerate(gates)]
        try:
            for job in jobs:
                dispatcher.dispatch(job)
            assert jobs[0].started.wait(WAIT) and jobs[1].started.wait(WAIT)
            snapshot = dispatcher.statistics()
            assert snapshot == PoolStatistics(workers=2, busy=2, idle=0, queued=1, rejected=0, completed=0)
            assert repr(dispatcher) == (
                "<ThreadPoolDispatcher [workers: 2 busy, 0 idle of 2 | queued: 1/3 | rejected: 0]>"
            )
            gates[0].set()
            assert jobs[2].started.wait(WAIT)
            assert snapshot.completed == 0, "a snapshot must not change afterwards"
            with pytest.raises(AttributeError):
                snapshot.busy = 0  # type: ignore[misc]  # frozen: the point of the check
        finally:
            for gate in gates:
                gate.set()
        assert dispatcher.join(WAIT) == ()
        assert dispatcher.statistics() == PoolStatistics(workers=2, busy=0, idle=2, queued=0, rejected=0, completed=3)
        dispatcher.close()
        assert repr(dispatcher).endswith("closed>")

    @pytest.mark.timeout(20)
    def test_a_burst_on_idle_workers_runs_concurrently(self) -> None:
        """Jobs queued together, one worker woken at a time: each woken
        worker wakes the next before it runs its job, so a burst of jobs
        that block until all have started still gets a worker each."""
        dispatcher = ThreadPoolDispatcher(8, min_workers=8)
        try:
            assert eventually(lambda: dispatcher.statistics().idle == 8)
            barrier = threading.Barrier(8, timeout=WAIT)
            passed: list[int] = []

            class BarrierJob(FakeJob):
                def run(self) -> bool:
                    barrier.wait()  # raises BrokenBarrierError unless all 8 run at once
                    passed.append(1)
                    return True

            for i in range(8):
                dispatcher.dispatch(BarrierJob(f"job-{i}"))
            assert dispatcher.join(WAIT) == ()
            assert len(passed) == 8
        finally:
            dispatcher.close()

    @pytest.mark.timeout(20)
    def test_a_burst_wakes_one_worker_at_a_time(self) -> None:
        """At most one wake-up is in flight: a job dispatched while a woken
        worker has not taken its job yet is queued without a second token,
        and the woken worker wakes the next one (under the GIL every extra
        woken thread only contends for it: on 3.13 that cost ~6 futex calls
        per datagram through the pool)."""
        in_flight: list[int] = []

        class Wakeups(queue.SimpleQueue[None]):
            def put(self, item: None, block: bool = True, timeout: float | None = None) -> None:
                in_flight.append(dispatcher._signalled)  # the tokens counted, this one included
                super().put(item, block, timeout)

        dispatcher = ThreadPoolDispatcher(4)
        dispatcher._wakeups = Wakeups()  # before any worker binds its get()
        gates = [threading.Event() for _ in range(4)]
        first = [FakeJob(f"first-{i}", gate=gate) for i, gate in enumerate(gates)]
        for job in first:  # four workers, started (not woken) for four jobs at once
            dispatcher.dispatch(job)
        for gate in gates:
            gate.set()
        assert dispatcher.join(WAIT) == ()
        assert eventually(lambda: dispatcher.statistics().idle == 4)
        gate = threading.Event()
        burst = [FakeJob(f"burst-{i}", gate=gate) for i in range(4)]
        try:
            for job in burst:
                dispatcher.dispatch(job)
            assert all(job.started.wait(WAIT) for job in burst), "the chain of wake-ups reaches every job"
            assert len({job.thread for job in burst}) == 4
            assert in_flight and max(in_flight) == 1
        finally:
            gate.set()
        assert dispatcher.join(WAIT) == ()
        dispatcher.close()

    @pytest.mark.timeout(20)
    def test_workers_are_reused(self) -> None:
        """1,000 jobs run on at most max_workers threads, never one thread per job."""
        dispatcher = ThreadPoolDispatcher(4, queue_size=8)
        baseline = threading.active_count()
        peak = baseline
        jobs = [FakeJob(f"job-{i}") for i in range(1000)]
        for job in jobs:
            dispatcher.dispatch(job)
            peak = max(peak, threading.active_count())
        assert dispatcher.join(WAIT) == ()
        threads = {ident for job in jobs for ident in job.runs}
        assert all(len(job.runs) == 1 for job in jobs)
        assert 1 <= len(threads) <= 4
        assert peak - baseline <= 4
        assert dispatcher.statistics().completed == 1000
        dispatcher.close()
        assert threading.active_count() == baseline

    @pytest.mark.timeout(10)
    def test_idle_workers_above_min_exit(self) -> None:
        """Workers above min_workers exit after idle_timeout; min_workers stay; service() joins the exited ones."""
        dispatcher = ThreadPoolDispatcher(4, min_workers=1, idle_timeout=0.05)
        gate = threading.Event()
        jobs = [FakeJob(f"job-{i}", gate=gate) for i in range(4)]
        try:
            for job in jobs:
                dispatcher.dispatch(job)
            for job in jobs:
                assert job.started.wait(WAIT)
            assert dispatcher.statistics().workers == 4
        finally:
            gate.set()
        assert dispatcher.join(WAIT) == ()
        assert eventually(lambda: dispatcher.statistics().workers == 1)
        dispatcher.service()
        assert sum(job.thread is not None and job.thread.is_alive() for job in jobs) <= 1
        assert _stats(dispatcher) == (1, 0, 1, 0, 0)
        again = FakeJob("again")
        dispatcher.dispatch(again)  # the pool grows again on demand
        assert again.done.wait(WAIT)
        dispatcher.close()

    @pytest.mark.timeout(10)
    def test_backpressure_blocks_dispatch_until_a_worker_frees(self) -> None:
        """With every worker busy and the queue full, dispatch blocks; it returns as soon as one worker frees."""
        dispatcher = ThreadPoolDispatcher(1, queue_size=1)
        running_gate, queued_gate = threading.Event(), threading.Event()
        running = FakeJob("running", gate=running_gate)
        queued = FakeJob("queued", gate=queued_gate)
        waiting = FakeJob("waiting")
        dispatcher.dispatch(running)
        assert running.started.wait(WAIT)
        dispatcher.dispatch(queued)  # room in the queue: returns at once
        helper = Dispatching(dispatcher, waiting)
        try:
            assert not helper.returned.wait(0.1), "dispatch did not apply backpressure"
            assert _stats(dispatcher) == (1, 1, 0, 1, 0)
            running_gate.set()  # one worker frees: the queued job starts, the waiting one is queued
            assert helper.returned.wait(WAIT) and helper.error is None
            assert queued.started.wait(WAIT)
            assert _stats(dispatcher) == (1, 1, 0, 1, 0)
        finally:
            running_gate.set()
            queued_gate.set()
            helper.join()
        assert waiting.done.wait(WAIT)
        assert dispatcher.join(WAIT) == ()
        dispatcher.close()
        assert [job.closes for job in (running, queued, waiting)] == [0, 0, 0]

    @pytest.mark.timeout(10)
    def test_zero_queue_backpressure(self) -> None:
        """With queue_size=0 a job waits for a worker to be idle, never in a queue."""
        dispatcher = ThreadPoolDispatcher(1, queue_size=0)
        gate = threading.Event()
        first, second = FakeJob("first", gate=gate), FakeJob("second")
        dispatcher.dispatch(first)
        assert first.started.wait(WAIT)
        helper = Dispatching(dispatcher, second)
        try:
            assert not helper.returned.wait(0.1)
            assert dispatcher.statistics().queued == 0
        finally:
            gate.set()
        assert helper.returned.wait(WAIT) and helper.error is None
        helper.join()
        assert second.done.wait(WAIT)
        dispatcher.close()

    @pytest.mark.timeout(10)
    def test_reject_closes_with_message_and_counts(self) -> None:
        """When full with when_full="reject", dispatch closes the job with reject_message at once; room again serves."""
        dispatcher = ThreadPoolDispatcher(1, queue_size=1, when_full="reject", reject_message=b"busy\r\n")
        gate = threading.Event()
        running, queued = FakeJob("running", gate=gate), FakeJob("queued")
        rejected = [FakeJob(f"rejected-{i}") for i in range(3)]
        dispatcher.dispatch(running)
        assert running.started.wait(WAIT)
        try:
            dispatcher.dispatch(queued)
            for job in rejected:
                dispatcher.dispatch(job)  # returns at once, no backpressure
            assert [(job.runs, job.closes, job.messages) for job in rejected] == [([], 1, [b"busy\r\n"])] * 3
            assert _stats(dispatcher) == (1, 1, 0, 1, 3)
            assert "rejected: 3" in repr(dispatcher)
        finally:
            gate.set()
        assert dispatcher.join(WAIT) == ()
        later = FakeJob("later")
        dispatcher.dispatch(later)
        assert later.done.wait(WAIT)
        dispatcher.close()
        assert (queued.closes, later.closes, dispatcher.statistics().rejected) == (0, 0, 3)

    @pytest.mark.timeout(10)
    def test_join_timeout_returns_running_then_queued_jobs(self) -> None:
        """join(timeout) returns the running jobs, then the queued ones, and () once all finished."""
        dispatcher = ThreadPoolDispatcher(1, queue_size=4)
        gate = threading.Event()
        running = FakeJob("running", gate=gate)
        queued = [FakeJob(f"queued-{i}") for i in range(2)]
        dispatcher.dispatch(running)
        assert running.started.wait(WAIT)
        for job in queued:
            dispatcher.dispatch(job)
        try:
            started = time.monotonic()
            assert dispatcher.join(0.05) == (running, *queued)
            assert time.monotonic() - started < WAIT / 2
        finally:
            gate.set()
        assert dispatcher.join(WAIT) == ()
        dispatcher.close()

    @pytest.mark.timeout(10)
    def test_close_finishes_the_queue_then_stops_workers(self) -> None:
        """close() refuses new jobs at once, lets the workers run every queued job, then waits for them to exit."""
        dispatcher = ThreadPoolDispatcher(1, queue_size=4)
        gate = threading.Event()
        running = FakeJob("running", gate=gate)
        queued = [FakeJob(f"queued-{i}") for i in range(3)]
        dispatcher.dispatch(running)
        assert running.started.wait(WAIT)
        for job in queued:
            dispatcher.dispatch(job)
        closer = threading.Thread(target=dispatcher.close)
        closer.start()
        try:
            closer.join(0.1)
            assert closer.is_alive(), "close() returned with jobs still queued"
            late = FakeJob("late")
            with pytest.raises(ServerClosedError):
                dispatcher.dispatch(late)
            assert (late.runs, late.closes) == ([], 0)
        finally:
            gate.set()
            closer.join(WAIT)
        assert not closer.is_alive()
        assert all(job.done.is_set() and job.closes == 0 for job in queued)
        assert _stats(dispatcher) == (0, 0, 0, 0, 0)
        assert all(job.thread is not None and not job.thread.is_alive() for job in [running, *queued])
        dispatcher.close()  # idempotent

    @pytest.mark.timeout(10)
    def test_close_releases_a_dispatch_under_backpressure(self) -> None:
        """close() wakes a dispatch blocked by backpressure with ServerClosedError; the caller keeps the job."""
        dispatcher = ThreadPoolDispatcher(1, queue_size=0, block_on_close=False)
        gate = threading.Event()
        running, waiting = FakeJob("running", gate=gate), FakeJob("waiting")
        dispatcher.dispatch(running)
        assert running.started.wait(WAIT)
        helper = Dispatching(dispatcher, waiting)
        try:
            assert not helper.returned.wait(0.05)
            dispatcher.close()
            assert helper.returned.wait(WAIT)
            assert isinstance(helper.error, ServerClosedError)
            assert (waiting.runs, waiting.closes) == ([], 0)
        finally:
            gate.set()
            helper.join()
        assert dispatcher.join(WAIT) == ()

    @pytest.mark.timeout(5)
    @pytest.mark.parametrize(
        "kwargs",
        [
            {"max_workers": 0},
            {"max_workers": 2, "min_workers": 3},
            {"min_workers": -1},
            {"queue_size": -1},
            {"when_full": "drop"},
            {"idle_timeout": 0},
        ],
    )
    def test_arguments_validated(self, kwargs: dict[str, object]) -> None:
        """Out-of-range sizes, an unknown when_full and a zero idle_timeout are rejected."""
        with pytest.raises(ValueError):
            ThreadPoolDispatcher(**kwargs)  # type: ignore[arg-type]  # deliberately wrong values
