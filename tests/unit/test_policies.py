"""Error policies (PrintTraceback, LoggingErrorPolicy, ReRaise) and timeout policies (NoTimeout, FixedTimeout)."""

from __future__ import annotations

import logging
import math
import socketserver

import pytest

from composable_server import FixedTimeout, LoggingErrorPolicy, NoTimeout, PrintTraceback, ReRaise

ADDRESS = ("127.0.0.1", 5555)


def _fail() -> None:
    raise ValueError("handler broke")


class TestPrintTraceback:
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
            PrintTraceback().handle_error(None, address, exc)
            actual = capsys.readouterr()
            assert actual.err == expected.err
            assert actual.out == expected.out == ""
            assert "Exception occurred during processing of request from" in actual.err
            assert "ValueError: handler broke" in actual.err

    @pytest.mark.timeout(5)
    def test_uses_stderr_at_call_time(self, capsys: pytest.CaptureFixture[str]) -> None:
        """sys.stderr is looked up when the error happens, so redirecting it works."""
        policy = PrintTraceback()
        try:
            _fail()
        except ValueError as exc:
            policy.handle_error(None, ADDRESS, exc)
        assert "handler broke" in capsys.readouterr().err


class TestLoggingErrorPolicy:
    @pytest.mark.timeout(5)
    def test_logs_one_record_with_traceback(self, caplog: pytest.LogCaptureFixture) -> None:
        """One ERROR record on the composable_server logger names the client and carries the exception."""
        caplog.set_level(logging.DEBUG, logger="composable_server")
        try:
            _fail()
        except ValueError as exc:
            LoggingErrorPolicy().handle_error(None, ADDRESS, exc)
            [record] = caplog.records
            assert record.name == "composable_server"
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


class TestReRaise:
    @pytest.mark.timeout(5)
    def test_reraises_the_same_exception(self) -> None:
        """ReRaise raises the very exception it was given, traceback intact."""
        with pytest.raises(ValueError) as info:
            try:
                _fail()
            except ValueError as exc:
                ReRaise().handle_error(None, ADDRESS, exc)
        assert info.value.__traceback__ is not None
        assert any(entry.name == "_fail" for entry in info.traceback)


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
