"""Run one of CPython's own test modules, with or without the compat swap.

    python tests/integration/cpython_suite_runner.py [--compat] [--only CLASS]... MODULE OUTPUT.json

MODULE is a module of the interpreter's ``test`` package (``test_socketserver``,
``test_httpservers``, ...).  With ``--compat``, ``sys.modules["socketserver"]``
is :mod:`composable_server.compat` before anything imports ``socketserver``,
so the test module and every stdlib module it uses (``http.server``,
``xmlrpc.server``, ``wsgiref.simple_server``, ``logging.handlers``,
``logging.config``) are built on compat.  ``--only`` restricts the run to the
named test classes.

The outcome of every test goes to OUTPUT as JSON: ``{"outcomes": {test id:
outcome}, "swapped": [modules bound to compat], ...}``; an outcome is one of
``passed``, ``failed``, ``error``, ``skipped``, ``expected-failure``,
``unexpected-success``.  A test with a failing subtest is ``failed``.

Used by ``test_cpython_suites.py``, which runs it in a subprocess per suite.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import types
import unittest
from typing import Final

Outcome = str

PASSED: Final = "passed"
FAILED: Final = "failed"
ERROR: Final = "error"
SKIPPED: Final = "skipped"
EXPECTED_FAILURE: Final = "expected-failure"
UNEXPECTED_SUCCESS: Final = "unexpected-success"


class RecordingResult(unittest.TextTestResult):
    """A text result that also records one outcome per test id."""

    outcomes: dict[str, Outcome]
    test_seconds: dict[str, float]
    details: dict[str, str]

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]  # forwarded as TextTestRunner passes them
        self.outcomes = {}
        self.test_seconds = {}
        self.details = {}
        self._started: dict[str, float] = {}

    def _set(self, test: unittest.TestCase, outcome: Outcome, detail: str = "") -> None:
        key = test.id()
        # A failing subtest makes the test fail, whatever the test does after it.
        if self.outcomes.get(key) in (FAILED, ERROR):
            return
        self.outcomes[key] = outcome
        if detail:
            self.details[key] = detail[-4000:]

    def startTest(self, test: unittest.TestCase) -> None:
        self._started[test.id()] = time.monotonic()
        super().startTest(test)

    def stopTest(self, test: unittest.TestCase) -> None:
        super().stopTest(test)
        started = self._started.pop(test.id(), None)
        if started is not None:
            self.test_seconds[test.id()] = round(time.monotonic() - started, 3)

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)
        self._set(test, PASSED)

    def addFailure(self, test: unittest.TestCase, err: object) -> None:
        super().addFailure(test, err)  # type: ignore[arg-type]  # the exc_info triple unittest passes
        self._set(test, FAILED, self.failures[-1][1])

    def addError(self, test: unittest.TestCase, err: object) -> None:
        super().addError(test, err)  # type: ignore[arg-type]  # the exc_info triple unittest passes
        # setUpClass/setUpModule errors come as a _ErrorHolder, not a TestCase.
        self._set(test, ERROR, self.errors[-1][1])

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self._set(test, SKIPPED, reason)

    def addExpectedFailure(self, test: unittest.TestCase, err: object) -> None:
        super().addExpectedFailure(test, err)  # type: ignore[arg-type]  # the exc_info triple unittest passes
        self._set(test, EXPECTED_FAILURE)

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        super().addUnexpectedSuccess(test)
        self._set(test, UNEXPECTED_SUCCESS)

    def addSubTest(self, test: unittest.TestCase, subtest: unittest.TestCase, err: object) -> None:
        super().addSubTest(test, subtest, err)  # type: ignore[arg-type]  # the exc_info triple unittest passes
        if err is not None:
            self._set(test, FAILED, f"subtest {subtest.id()}: {self.failures[-1][1] if self.failures else err}")


def _swap() -> types.ModuleType:
    """Put compat in place of socketserver; fail if socketserver was imported already."""
    if "socketserver" in sys.modules:
        raise SystemExit("socketserver was imported before the swap: the run would test stdlib")
    from composable_server import compat

    sys.modules["socketserver"] = compat
    return compat


def _bound_to(target: types.ModuleType) -> list[str]:
    """Names of the loaded modules built on *target*: their ``socketserver``
    global is it, or one of their classes derives from one of its classes
    (``from socketserver import ...``, ``class WSGIServer(HTTPServer)``)."""

    def built_on(value: object) -> bool:
        if value is target:
            return True
        return isinstance(value, type) and any(base.__module__ == target.__name__ for base in value.__mro__)

    def uses(module: object) -> bool:
        return any(built_on(value) for value in list(getattr(module, "__dict__", {}).values()))

    return sorted(
        name
        for name, module in list(sys.modules.items())
        if module is not target and name.partition(".")[0] != "composable_server" and uses(module)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--compat", action="store_true", help="replace socketserver by composable_server.compat")
    parser.add_argument(
        "--only", action="append", default=[], metavar="CLASS", help="run only this test class (repeatable)"
    )
    parser.add_argument("module", help="a module of the `test` package, e.g. test_socketserver")
    parser.add_argument("output", help="where to write the outcomes (JSON)")
    args = parser.parse_args(argv)

    compat = _swap() if args.compat else None
    module = importlib.import_module(f"test.{args.module}")
    loader = unittest.TestLoader()
    if args.only:
        suite = unittest.TestSuite(loader.loadTestsFromName(name, module) for name in args.only)
    else:
        suite = loader.loadTestsFromModule(module)
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2, resultclass=RecordingResult)
    started = time.monotonic()
    result = runner.run(suite)
    assert isinstance(result, RecordingResult)
    stdlib_socketserver = sys.modules["socketserver"]
    report = {
        "module": args.module,
        "compat": bool(args.compat),
        "python": sys.version,
        "elapsed": round(time.monotonic() - started, 3),
        "socketserver": getattr(stdlib_socketserver, "__name__", None),
        "swapped": _bound_to(compat) if compat is not None else [],
        "compat_file": None if compat is None else compat.__file__,
        "outcomes": result.outcomes,
        "durations": result.test_seconds,
        "details": result.details,
    }
    with open(args.output, "w", encoding="utf-8") as file:
        json.dump(report, file, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
