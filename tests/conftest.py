"""Shared pytest configuration, and the run's last-resort bound on every test.

pytest-timeout bounds each test (``timeout`` in pyproject.toml, or the
test's own mark).  Its default *signal* method fails just the test that ran
over, and the run goes on; but a SIGALRM handler runs only when the main
thread gets back to Python bytecode, so a test blocked in C (an
uninterruptible lock, such as the one a buffered stream holds while another
thread reads it) would never be stopped, and would hang the run.  The tests
that wait on other processes and their pipes therefore use the *thread*
method (``@pytest.mark.timeout(..., method="thread")``: at the deadline it
dumps every thread's stack and ends the whole run).  For every other test,
:func:`pytest_runtest_protocol` arms ``faulthandler``'s watchdog, a C thread
that needs neither the GIL nor the main thread, at the test's timeout plus
:data:`BACKSTOP_MARGIN`: it fires only if pytest-timeout could not end the
test, dumps every thread's stack to the terminal and ends the run (status 1).
"""

from __future__ import annotations

import faulthandler
import os
from collections.abc import Generator
from typing import Final

import pytest

# tests/typing holds files checked by mypy only (type tests), never run.
collect_ignore = ["typing"]

BACKSTOP_MARGIN: Final = 30.0
"""Seconds past a test's own timeout before the watchdog ends the run."""

_TERMINAL = pytest.StashKey[int]()


def pytest_configure(config: pytest.Config) -> None:
    # Capturing is suspended while pytest_configure runs: fd 2 is still the
    # terminal here, whereas during a test it is redirected to a capture file.
    config.stash[_TERMINAL] = os.dup(2)


def pytest_unconfigure(config: pytest.Config) -> None:
    fd = config.stash.get(_TERMINAL, -1)
    if fd >= 0:
        os.close(fd)


def _timeout(item: pytest.Item) -> float:
    """The item's pytest-timeout bound: its closest mark, else the ini value."""
    marker = item.get_closest_marker("timeout")
    if marker is not None:
        value = marker.kwargs.get("timeout", marker.args[0] if marker.args else None)
        if value is not None:
            return float(value)
    return float(str(item.config.getini("timeout")))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    timeout = _timeout(item)
    if timeout <= 0:  # pytest-timeout's "no timeout"
        return (yield)
    faulthandler.dump_traceback_later(
        timeout + BACKSTOP_MARGIN, exit=True, file=item.config.stash[_TERMINAL]
    )
    try:
        return (yield)
    finally:
        faulthandler.cancel_dump_traceback_later()
