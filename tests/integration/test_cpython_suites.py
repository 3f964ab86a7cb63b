"""CPython's own test suites for socketserver and the modules built on it,
run against stdlib and against compat: whatever passes with stdlib passes
with compat.

Each suite runs twice, side by side, in subprocesses of the Python running
pytest (``cpython_suite_runner.py``, each in its own process group, killed at
a hard timeout): once as it is, once with ``sys.modules["socketserver"]``
replaced by :mod:`composable_server.compat` before the test module (and so
``http.server``, ``xmlrpc.server``, ``wsgiref``, ``logging.config``) is
imported.  The test modules come from the interpreter's ``test`` package
(pyenv and python.org builds ship it; Debian and Ubuntu split it into
``libpython3.X-testsuite``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import attrs
import pytest

import composable_server.compat

RUNNER: Final = Path(__file__).with_name("cpython_suite_runner.py")
ROOT: Final = Path(composable_server.__file__).resolve().parent.parent

# Seconds one run of a suite may take (the slowest, test_xmlrpc, takes ~30 s
# on an idle machine: nine of its tests wait out a 3 s socket timeout each).
SUITE_TIMEOUT: Final = 240.0


@attrs.frozen
class Suite:
    """One CPython test module, and what a run of it must show."""

    module: str
    # Modules that must be bound to compat in the swapped run (proves the swap).
    swapped: tuple[str, ...]
    # At least this many tests pass with stdlib (guards against a run that
    # silently collected nothing); well below what 3.11 and 3.13 pass.
    min_passed: int
    # Only these test classes (all when empty).
    only: tuple[str, ...] = ()


SUITES: Final = (
    Suite("test_socketserver", ("test.test_socketserver",), min_passed=20),
    Suite("test_httpservers", ("http.server", "test.test_httpservers"), min_passed=50),
    Suite("test_xmlrpc", ("http.server", "xmlrpc.server"), min_passed=80),
    Suite("test_wsgiref", ("wsgiref.simple_server", "test.test_wsgiref"), min_passed=30),
    # The test classes that run socket servers: the handlers' receivers
    # (ThreadingTCPServer, ThreadingUDPServer, their Unix twins, HTTPServer)
    # and logging.config.listen() (ConfigDictTest.test_listen_*).  The rest
    # of test_logging (~200 tests, ~15 s) never touches socketserver.
    Suite(
        "test_logging",
        ("logging.config", "test.test_logging"),
        min_passed=40,
        only=(
            "SocketHandlerTest",
            "UnixSocketHandlerTest",
            "DatagramHandlerTest",
            "UnixDatagramHandlerTest",
            "SysLogHandlerTest",
            "UnixSysLogHandlerTest",
            "IPv6SysLogHandlerTest",
            "HTTPHandlerTest",
            "ConfigDictTest",
        ),
    ),
)

# Tests that pass with stdlib and cannot pass with compat, on purpose.
EXCLUSIONS: Final[dict[str, str]] = {
    "test.test_socketserver.MiscTestCase.test_all": (
        "expects __all__ to list exactly the names whose __module__ is 'socketserver'; "
        "compat's classes name their own module, composable_server.compat (repr, pickle, "
        "tracebacks), and compat.__all__ is stdlib's list"
    ),
}


@attrs.frozen
class Run:
    """The report of one run of a suite."""

    outcomes: dict[str, str]
    details: dict[str, str]
    swapped: tuple[str, ...]
    compat_file: str | None
    log: str

    def passed(self) -> set[str]:
        return {test for test, outcome in self.outcomes.items() if outcome == "passed"}


@contextlib.contextmanager
def _started(suite: Suite, *, compat: bool, directory: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """Start the runner for *suite*; kill its process group on the way out."""
    output = directory / f"{suite.module}-{'compat' if compat else 'stdlib'}.json"
    log = output.with_suffix(".log")
    workdir = output.with_suffix("")
    workdir.mkdir()
    command = [sys.executable, "-X", "faulthandler", str(RUNNER)]
    if compat:
        command.append("--compat")
    for name in suite.only:
        command += ["--only", name]
    command += [suite.module, str(output)]
    # The runner imports the composable_server that this pytest imports.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process, output, log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _finish(process: subprocess.Popen[bytes], output: Path, log: Path, deadline: float) -> Run:
    try:
        returncode = process.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"{output.stem} ran over {SUITE_TIMEOUT} s; its log ends:\n{_tail(log)}")
    if returncode != 0 or not output.exists():
        pytest.fail(f"{output.stem} exited with {returncode}; its log ends:\n{_tail(log)}")
    report = json.loads(output.read_text(encoding="utf-8"))
    return Run(
        outcomes=report["outcomes"],
        details=report["details"],
        swapped=tuple(report["swapped"]),
        compat_file=report["compat_file"],
        log=str(log),
    )


def _tail(log: Path, size: int = 6000) -> str:
    return log.read_bytes()[-size:].decode(errors="replace")


def _run_both(suite: Suite, directory: Path) -> tuple[Run, Run]:
    """Run *suite* with stdlib and with compat at the same time."""
    deadline = time.monotonic() + SUITE_TIMEOUT
    with _started(suite, compat=False, directory=directory) as stdlib, _started(
        suite, compat=True, directory=directory
    ) as compat:
        return _finish(*stdlib, deadline), _finish(*compat, deadline)


def _require_test_package(module: str) -> None:
    if importlib.util.find_spec(f"test.{module}") is None:
        pytest.fail(
            f"this Python ({sys.executable}) has no test.{module}: its `test` package is stripped. "
            f"pyenv and python.org builds ship it; on Debian/Ubuntu install libpython3.{sys.version_info[1]}-testsuite"
        )


@pytest.mark.timeout(SUITE_TIMEOUT + 60)
@pytest.mark.parametrize("suite", SUITES, ids=[suite.module for suite in SUITES])
def test_compat_passes_what_stdlib_passes(suite: Suite, tmp_path: Path) -> None:
    """Every test of the CPython suite that passes with stdlib socketserver
    passes with compat in its place, except the documented exclusions."""
    _require_test_package(suite.module)
    stdlib, compat = _run_both(suite, tmp_path)

    assert stdlib.swapped == () and stdlib.compat_file is None
    assert compat.compat_file == composable_server.compat.__file__, "the runner imported another composable_server"
    assert set(suite.swapped) <= set(compat.swapped), f"not built on compat: {compat.swapped}"
    passed = stdlib.passed()
    assert len(passed) >= suite.min_passed, f"only {len(passed)} tests passed with stdlib; see {stdlib.log}"

    lost = {
        test: f"{compat.outcomes.get(test, 'not run')}: {compat.details.get(test, '')[-1500:]}"
        for test in sorted(passed - compat.passed())
        if test not in EXCLUSIONS
    }
    assert not lost, "passed with stdlib, not with compat:\n" + "\n\n".join(f"{t} {d}" for t, d in lost.items())
    # An exclusion that compat passes after all is out of date.
    stale = [test for test in EXCLUSIONS if test in compat.outcomes and compat.outcomes[test] == "passed"]
    assert not stale, f"these exclusions pass with compat now; drop them from EXCLUSIONS: {stale}"
