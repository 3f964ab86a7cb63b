"""The deadline watchdog: scheduling with explicit times, and its thread."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator

import pytest

from composable_server._watchdog import Watchdog

WAIT = 10.0


def _frozen_clock() -> float:
    # The watchdog thread sees time stand still at 0, so it never fires an
    # entry itself; the tests drive pop_expired() with explicit times.
    return 0.0


@pytest.fixture
def watchdog() -> Iterator[Watchdog]:
    wd = Watchdog(clock=_frozen_clock)
    yield wd
    wd.close()


def _tag(log: list[str], name: str) -> Callable[[], object]:
    return lambda: log.append(name)


def _run(callbacks: list[Callable[[], object]]) -> None:
    for callback in callbacks:
        callback()


class TestWatchdog:
    @pytest.mark.timeout(5)
    def test_pop_expired_returns_due_entries_in_deadline_order(self, watchdog: Watchdog) -> None:
        """pop_expired(now) returns exactly the entries due by *now*, earliest first, ties in insertion order."""
        log: list[str] = []
        watchdog.add(3.0, _tag(log, "c"))
        watchdog.add(1.0, _tag(log, "a1"))
        watchdog.add(2.0, _tag(log, "b"))
        watchdog.add(1.0, _tag(log, "a2"))
        assert watchdog.next_deadline() == 1.0
        assert watchdog.pop_expired(0.999) == []
        _run(watchdog.pop_expired(2.0))
        assert log == ["a1", "a2", "b"]
        assert watchdog.next_deadline() == 3.0
        _run(watchdog.pop_expired(2.5))
        assert log == ["a1", "a2", "b"]
        _run(watchdog.pop_expired(3.0))
        assert log == ["a1", "a2", "b", "c"]
        assert watchdog.next_deadline() is None
        assert watchdog.pop_expired(math.inf) == []

    @pytest.mark.timeout(5)
    def test_cancelled_entry_never_fires(self, watchdog: Watchdog) -> None:
        """A cancelled entry is not returned; cancelling twice, or after it fired, is a no-op."""
        log: list[str] = []
        keep = watchdog.add(1.0, _tag(log, "keep"))
        drop = watchdog.add(0.5, _tag(log, "drop"))
        watchdog.cancel(drop)
        watchdog.cancel(drop)
        _run(watchdog.pop_expired(1.0))
        assert log == ["keep"]
        watchdog.cancel(keep)  # already fired
        assert watchdog._dead == 0  # white box: no phantom dead entries counted
        assert watchdog.next_deadline() is None

    @pytest.mark.timeout(5)
    def test_cancelled_entries_are_compacted(self, watchdog: Watchdog) -> None:
        """Many cancelled entries are dropped from the heap without losing or reordering live ones."""
        log: list[str] = []
        entries = [watchdog.add(float(i), _tag(log, f"e{i}")) for i in range(200)]
        for i, entry in enumerate(entries):
            if i % 4:  # cancel three in four
                watchdog.cancel(entry)
        assert len(watchdog._heap) < 200  # white box: compaction ran
        assert watchdog._dead <= 64
        _run(watchdog.pop_expired(math.inf))
        assert log == [f"e{i}" for i in range(0, 200, 4)]
        assert watchdog._heap == [] and watchdog._dead == 0

    @pytest.mark.timeout(5)
    def test_thread_fires_callback(self) -> None:
        """With the real clock, the watchdog thread runs a callback once its deadline passes, and not a cancelled one."""
        wd = Watchdog()
        fired, cancelled = threading.Event(), threading.Event()
        threads: list[threading.Thread] = []
        try:
            entry = wd.add(0.02, cancelled.set)
            wd.cancel(entry)

            def fire() -> None:
                threads.append(threading.current_thread())
                fired.set()

            wd.add(0.01, fire)
            assert fired.wait(WAIT)
            assert threads[0] is not threading.current_thread()
            assert threads[0].daemon
            assert not cancelled.wait(0.05)
        finally:
            wd.close()
        assert not threads[0].is_alive()

    @pytest.mark.timeout(5)
    def test_close_is_idempotent_and_starts_no_thread_after(self) -> None:
        """close() twice is a no-op, and adding afterwards starts no thread."""
        wd = Watchdog()
        wd.close()
        wd.close()
        before = threading.active_count()
        wd.add(0.001, lambda: None)
        assert threading.active_count() == before
