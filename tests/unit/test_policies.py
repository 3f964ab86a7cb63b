"""Error policies (PrintTracebackErrorPolicy, LoggingErrorPolicy, ReRaiseErrorPolicy), timeout policies (NoTimeout, FixedTimeout,
ConnectionTimeouts with Budget) and accept-error policies (RetryImmediately, AcceptBackoff)."""

from __future__ import annotations

import errno
import logging
import math
import os
import socketserver

import pytest

from composable_server import (
    AcceptBackoff,
    Budget,
    ConnectionTimeouts,
    FixedTimeout,
    LoggingErrorPolicy,
    NoTimeout,
    PrintTraceback,
    PrintTracebackErrorPolicy,
    ReRaise,
    ReRaiseErrorPolicy,
    RetryImmediately,
)
from composable_server.policies import DEFAULT_BUDGET

ADDRESS = ("127.0.0.1", 5555)


def _fail() -> None:
    raise ValueError("handler broke")


class TestPrintTracebackErrorPolicy:
    @pytest.mark.timeout(5)
    @pytest.mark.parametrize("address", [ADDRESS, ("::1", 5555, 0, 0), "/tmp/server.sock", ""])
    def test_output_matches_stdlib(self, capsys: pytest.CaptureFixture[str], address: object) -> None:
        """The stderr output is byte for byte what stdlib BaseServer.handle_error prints for the same exception."""
        stdlib_server = socketserver.BaseServer(ADDRESS, socketserver.BaseRequestHandler)
        try:
            _fail()
        except ValueError as exc:
            stdlib_server.handle_error(None, address)  # type: ignore[arg-type]  # typeshed wants a socket; unused
            expected = capsys.readouterr()
            PrintTracebackErrorPolicy().handle_error(None, address, exc)
            actual = capsys.readouterr()
            assert actual.err == expected.err
            assert actual.out == expected.out == ""
            assert "Exception occurred during processing of request from" in actual.err
            assert "ValueError: handler broke" in actual.err

    @pytest.mark.timeout(5)
    def test_uses_stderr_at_call_time(self, capsys: pytest.CaptureFixture[str]) -> None:
        """sys.stderr is looked up when the error happens, so redirecting it works."""
        policy = PrintTracebackErrorPolicy()
        try:
            _fail()
        except ValueError as exc:
            policy.handle_error(None, ADDRESS, exc)
        assert "handler broke" in capsys.readouterr().err


class TestLoggingErrorPolicy:
    @pytest.mark.timeout(5)
    def test_logs_one_record_with_traceback(self, caplog: pytest.LogCaptureFixture) -> None:
        """One ERROR record on the composable_server.policies logger names the client and carries the exception."""
        caplog.set_level(logging.DEBUG, logger="composable_server")
        try:
            _fail()
        except ValueError as exc:
            LoggingErrorPolicy().handle_error(None, ADDRESS, exc)
            [record] = caplog.records
            assert record.name == "composable_server.policies"
            assert record.levelno == logging.ERROR
            assert record.getMessage() == f"error while serving {ADDRESS}"
            assert record.exc_info is not None and record.exc_info[1] is exc
            assert "ValueError: handler broke" in caplog.text

    @pytest.mark.timeout(5)
    def test_custom_logger_and_level(self, caplog: pytest.LogCaptureFixture) -> None:
        """The logger and level are configurable."""
        logger = logging.getLogger("tests.policies.custom")
        caplog.set_level(logging.DEBUG, logger=logger.name)
        try:
            _fail()
        except ValueError as exc:
            LoggingErrorPolicy(logger=logger, level=logging.WARNING).handle_error(None, "/tmp/s", exc)
        [record] = caplog.records
        assert (record.name, record.levelno) == (logger.name, logging.WARNING)


class TestReRaiseErrorPolicy:
    @pytest.mark.timeout(5)
    def test_reraises_the_same_exception(self) -> None:
        """ReRaiseErrorPolicy raises the very exception it was given, traceback intact."""
        with pytest.raises(ValueError) as info:
            try:
                _fail()
            except ValueError as exc:
                ReRaiseErrorPolicy().handle_error(None, ADDRESS, exc)
        assert info.value.__traceback__ is not None
        assert any(entry.name == "_fail" for entry in info.traceback)


class TestOlderNames:
    @pytest.mark.timeout(5)
    def test_older_names_are_the_same_classes(self) -> None:
        """PrintTraceback and ReRaise, the older names, are the ...ErrorPolicy classes themselves."""
        assert PrintTraceback is PrintTracebackErrorPolicy
        assert ReRaise is ReRaiseErrorPolicy
        assert repr(PrintTraceback()) == "PrintTracebackErrorPolicy()"


class TestNoTimeout:
    @pytest.mark.timeout(5)
    def test_waits_forever(self) -> None:
        """NoTimeout has no timeout, and handle_timeout does nothing."""
        policy = NoTimeout()
        assert policy.timeout is None
        policy.handle_timeout()


class TestFixedTimeout:
    @pytest.mark.timeout(5)
    @pytest.mark.parametrize("seconds", [0, 0.05, 3600.0])
    def test_accepts_non_negative_seconds(self, seconds: float) -> None:
        """A timeout of zero or more seconds is accepted and reported."""
        assert FixedTimeout(seconds).timeout == seconds

    @pytest.mark.timeout(5)
    @pytest.mark.parametrize("seconds", [-1, -0.001, math.nan, -math.inf])
    def test_rejects_negative_and_nan(self, seconds: float) -> None:
        """A negative or NaN timeout is rejected with a message naming the value."""
        with pytest.raises(ValueError, match="timeout must be") as info:
            FixedTimeout(seconds)
        assert repr(seconds) in str(info.value)

    @pytest.mark.timeout(5)
    def test_calls_on_timeout(self) -> None:
        """handle_timeout calls on_timeout each time."""
        calls: list[None] = []
        policy = FixedTimeout(1.0, on_timeout=lambda: calls.append(None))
        policy.handle_timeout()
        policy.handle_timeout()
        assert len(calls) == 2

    @pytest.mark.timeout(5)
    def test_default_on_timeout_does_nothing(self) -> None:
        """Without on_timeout, handle_timeout is a no-op."""
        FixedTimeout(1.0).handle_timeout()

    @pytest.mark.timeout(5)
    def test_is_frozen(self) -> None:
        """A FixedTimeout cannot be changed after construction."""
        policy = FixedTimeout(1.0)
        with pytest.raises(AttributeError):
            policy.timeout = 2.0  # type: ignore[misc]  # frozen: the point of the test


class TestBudget:
    @pytest.mark.timeout(5)
    def test_limits_default_to_none(self) -> None:
        """A Budget without arguments has no limit at all."""
        assert Budget() == Budget(first_byte=None, idle=None, lifetime=None)

    @pytest.mark.timeout(5)
    def test_default_budget_bounds_only_blocked_io(self) -> None:
        """DEFAULT_BUDGET has no first-byte or lifetime limit (server-first protocols) and a 300 s idle limit."""
        assert DEFAULT_BUDGET == Budget(first_byte=None, idle=300.0, lifetime=None)

    @pytest.mark.timeout(5)
    @pytest.mark.parametrize("field", ["first_byte", "idle", "lifetime"])
    @pytest.mark.parametrize("value", [0, -1.0, math.nan, -math.inf])
    def test_rejects_non_positive_and_nan(self, field: str, value: float) -> None:
        """A limit of zero, a negative or NaN is rejected with a message naming the field and the value."""
        with pytest.raises(ValueError, match=f"{field} must be None or a number of seconds > 0") as info:
            Budget(**{field: value})
        assert repr(value) in str(info.value)

    @pytest.mark.timeout(5)
    def test_is_frozen(self) -> None:
        """A Budget cannot be changed after construction."""
        budget = Budget(idle=1.0)
        with pytest.raises(AttributeError):
            budget.idle = 2.0  # type: ignore[misc]  # frozen: the point of the test


class TestConnectionTimeouts:
    @pytest.mark.timeout(5)
    def test_defaults(self) -> None:
        """By default the budget is DEFAULT_BUDGET and handle_request() waits forever."""
        policy = ConnectionTimeouts()
        assert policy.budget is DEFAULT_BUDGET
        assert policy.timeout is None
        assert policy.statistics() == {}

    @pytest.mark.timeout(5)
    def test_counts_and_logs_each_cut_connection(self, caplog: pytest.LogCaptureFixture) -> None:
        """budget_exceeded counts the cut by limit and logs one INFO record naming the client, limit and seconds."""
        caplog.set_level(logging.DEBUG, logger="composable_server")
        policy = ConnectionTimeouts(Budget(first_byte=2.0, idle=5.0, lifetime=60.0))
        policy.budget_exceeded(ADDRESS, "first_byte")
        policy.budget_exceeded(ADDRESS, "first_byte")
        policy.budget_exceeded(("::1", 1, 0, 0), "lifetime")
        assert policy.statistics() == {"first_byte": 2, "lifetime": 1}
        messages = [(r.levelno, r.getMessage()) for r in caplog.records]
        assert messages[0] == (
            logging.INFO,
            f"closed connection from {ADDRESS}: first_byte limit of 2.0 s exceeded",
        )
        assert messages[2] == (
            logging.INFO,
            "closed connection from ('::1', 1, 0, 0): lifetime limit of 60.0 s exceeded",
        )

    @pytest.mark.timeout(5)
    def test_statistics_is_a_copy(self) -> None:
        """Changing the returned statistics does not change the policy's counters."""
        policy = ConnectionTimeouts(Budget(idle=1.0))
        policy.budget_exceeded(ADDRESS, "idle")
        snapshot = policy.statistics()
        snapshot["idle"] = 100
        assert policy.statistics() == {"idle": 1}

    @pytest.mark.timeout(5)
    def test_custom_logger_and_on_timeout(self, caplog: pytest.LogCaptureFixture) -> None:
        """The logger is configurable, and handle_timeout calls on_timeout."""
        logger = logging.getLogger("tests.policies.timeouts")
        caplog.set_level(logging.DEBUG, logger=logger.name)
        calls: list[None] = []
        policy = ConnectionTimeouts(Budget(idle=1.0), timeout=0.5, on_timeout=lambda: calls.append(None), logger=logger)
        policy.budget_exceeded(ADDRESS, "idle")
        policy.handle_timeout()
        assert [r.name for r in caplog.records] == [logger.name]
        assert (policy.timeout, len(calls)) == (0.5, 1)


class TestRetryImmediately:
    @pytest.mark.timeout(5)
    @pytest.mark.parametrize("code", [errno.EMFILE, errno.ECONNABORTED])
    def test_never_pauses(self, code: int) -> None:
        """RetryImmediately asks for no pause, whatever the error (stdlib behaviour)."""
        policy = RetryImmediately()
        assert policy.accept_failed(OSError(code, os.strerror(code))) == 0.0
        policy.accepted()


class FakeClock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class TestAcceptBackoff:
    @pytest.mark.timeout(5)
    @pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
    def test_schedule_doubles_up_to_the_cap(self, code: int) -> None:
        """Each consecutive resource error pauses longer: initial, doubling, capped at maximum."""
        policy = AcceptBackoff(0.01, 0.08, clock=FakeClock())
        delays = [policy.accept_failed(_oserror(code)) for _ in range(6)]
        assert delays == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.08, 0.08])
        assert policy.failures == 6
        assert policy.delay == pytest.approx(0.08)

    @pytest.mark.timeout(5)
    def test_accepted_resets_the_schedule(self) -> None:
        """After a successful accept the next failure pauses for *initial* again."""
        policy = AcceptBackoff(0.01, 1.0, clock=FakeClock())
        for _ in range(4):
            policy.accept_failed(_oserror(errno.EMFILE))
        policy.accepted()
        assert (policy.failures, policy.delay) == (0, 0.0)
        assert policy.accept_failed(_oserror(errno.EMFILE)) == pytest.approx(0.01)

    @pytest.mark.timeout(5)
    @pytest.mark.parametrize("code", [errno.ECONNABORTED, errno.EPROTO, errno.EINTR, errno.EAGAIN])
    def test_transient_errors_retry_at_once_silently(self, code: int, caplog: pytest.LogCaptureFixture) -> None:
        """A transient error asks for no pause, does not count, does not grow the schedule and logs nothing."""
        caplog.set_level(logging.DEBUG, logger="composable_server")
        policy = AcceptBackoff(0.01, 1.0, clock=FakeClock())
        assert policy.accept_failed(_oserror(code)) == 0.0
        assert (policy.failures, policy.delay) == (0, 0.0)
        assert policy.accept_failed(_oserror(errno.EMFILE)) == pytest.approx(0.01)
        assert policy.accept_failed(_oserror(code)) == 0.0
        assert policy.delay == pytest.approx(0.01)
        assert len(caplog.records) == 1  # the EMFILE only

    @pytest.mark.timeout(5)
    def test_log_is_rate_limited_with_suppressed_count(self, caplog: pytest.LogCaptureFixture) -> None:
        """At most one WARNING per log_interval; the next one reports how many failures were not logged."""
        caplog.set_level(logging.DEBUG, logger="composable_server")
        clock = FakeClock()
        policy = AcceptBackoff(0.01, 0.04, log_interval=10.0, clock=clock)
        policy.accept_failed(_oserror(errno.EMFILE))
        for _ in range(5):
            clock.now += 1.0
            policy.accept_failed(_oserror(errno.EMFILE))
        assert len(caplog.records) == 1
        clock.now += 5.0  # 10 s after the first record
        policy.accept_failed(_oserror(errno.ENFILE))
        first, second = (r.getMessage() for r in caplog.records)
        assert all(r.levelno == logging.WARNING for r in caplog.records)
        assert first.startswith("accept failed: EMFILE (Too many open files); pausing accepts for 0.010 s")
        assert "not logged" not in first
        assert second == (
            "accept failed: ENFILE (Too many open files in system); pausing accepts for 0.040 s"
            " (5 similar failures not logged)"
        )
        policy.accepted()
        assert caplog.records[-1].getMessage() == "accepting again after 7 failed attempts"

    @pytest.mark.timeout(5)
    def test_accepted_without_failure_logs_nothing(self, caplog: pytest.LogCaptureFixture) -> None:
        """accepted() after no failure is silent."""
        caplog.set_level(logging.DEBUG, logger="composable_server")
        AcceptBackoff().accepted()
        assert caplog.records == []

    @pytest.mark.timeout(5)
    @pytest.mark.parametrize("kwargs", [{"initial": 0}, {"maximum": -1.0}, {"log_interval": -1.0}])
    def test_arguments_validated(self, kwargs: dict[str, float]) -> None:
        """A non-positive pause or a negative log interval is rejected."""
        with pytest.raises(ValueError):
            AcceptBackoff(**kwargs)  # type: ignore[arg-type]  # deliberately wrong values
