"""The pure parts of composable_server.systemd: the socket-activation
environment, NOTIFY_SOCKET and WATCHDOG_* parsing, message formatting, and the
watchdog heartbeat's schedule (a fake clock, no socket)."""

from __future__ import annotations

import pytest

from composable_server.exceptions import ActivationError, InheritedSocketError, ServerError
from composable_server.systemd import (
    LISTEN_VARIABLES,
    HeartbeatDispatcher,
    ListenFD,
    Notifier,
    WatchdogHeartbeat,
    format_notification,
    listen_fds,
    notify_address,
    parse_listen_fds,
    watchdog_interval,
)
from composable_server.testing import InlineDispatcher

PID = 4242


class TestParseListenFds:
    @pytest.mark.timeout(5)
    def test_positions_without_names(self) -> None:
        """Without LISTEN_FDNAMES the descriptors are fd 3, 4, ... known by position, without names."""
        assert parse_listen_fds({"LISTEN_PID": str(PID), "LISTEN_FDS": "2"}, PID) == (
            ListenFD(3, 0, None),
            ListenFD(4, 1, None),
        )

    @pytest.mark.timeout(5)
    def test_names(self) -> None:
        """LISTEN_FDNAMES names each descriptor in order."""
        env = {"LISTEN_PID": str(PID), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "web:admin"}
        assert [(fd.fd, fd.name) for fd in parse_listen_fds(env, PID)] == [(3, "web"), (4, "admin")]

    @pytest.mark.timeout(5)
    def test_zero_descriptors(self) -> None:
        """LISTEN_FDS=0 (with an empty LISTEN_FDNAMES) is no descriptor, not an error."""
        assert parse_listen_fds({"LISTEN_PID": str(PID), "LISTEN_FDS": "0", "LISTEN_FDNAMES": ""}, PID) == ()

    @pytest.mark.timeout(5)
    @pytest.mark.parametrize(
        ("env", "message"),
        [
            ({}, "LISTEN_FDS is not set"),
            ({"LISTEN_FDS": "1"}, "LISTEN_PID is not"),
            ({"LISTEN_FDS": "1", "LISTEN_PID": "41"}, f"LISTEN_PID is 41, not this process ({PID})"),
            ({"LISTEN_FDS": "one", "LISTEN_PID": str(PID)}, "LISTEN_FDS is 'one', not a number"),
            ({"LISTEN_FDS": "1", "LISTEN_PID": "me"}, "LISTEN_PID is 'me', not a number"),
            ({"LISTEN_FDS": "-1", "LISTEN_PID": str(PID)}, "LISTEN_FDS is -1"),
            (
                {"LISTEN_FDS": "2", "LISTEN_PID": str(PID), "LISTEN_FDNAMES": "web"},
                "LISTEN_FDNAMES names 1 descriptor(s) ('web'), LISTEN_FDS passes 2",
            ),
        ],
    )
    def test_refused(self, env: dict[str, str], message: str) -> None:
        """Unset, malformed or foreign variables are an ActivationError saying which and why."""
        with pytest.raises(ActivationError) as info:
            parse_listen_fds(env, PID)
        assert message in str(info.value)
        assert {RuntimeError, ServerError} <= set(type(info.value).__mro__)


class TestListenFds:
    @pytest.mark.timeout(5)
    def test_foreign_pid_is_no_socket_and_unsets(self) -> None:
        """Variables meant for another process give no socket (not required) and are removed anyway."""
        env = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x", "OTHER": "kept"}
        assert listen_fds(environ=env) == ()
        assert env == {"OTHER": "kept"}

    @pytest.mark.timeout(5)
    def test_required(self) -> None:
        """required=True turns "not activated" into an ActivationError, and still unsets the variables."""
        env = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
        with pytest.raises(ActivationError, match="LISTEN_PID is 1, not this process"):
            listen_fds(required=True, environ=env)
        assert not set(LISTEN_VARIABLES) & set(env)

    @pytest.mark.timeout(5)
    def test_keep_environment(self) -> None:
        """unset_environment=False leaves the variables in place."""
        env = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
        listen_fds(environ=env, unset_environment=False)
        assert env == {"LISTEN_PID": "1", "LISTEN_FDS": "1"}

    @pytest.mark.timeout(5)
    def test_not_activated(self) -> None:
        """No variables at all: no socket."""
        assert listen_fds(environ={}) == ()


class TestInheritedSocketError:
    @pytest.mark.timeout(5)
    def test_message_and_fields(self) -> None:
        """The error names the descriptor (and its name), what was expected and what was found."""
        exc = InheritedSocketError(3, expected="AF_UNIX SOCK_STREAM", found="AF_INET SOCK_STREAM", name="web")
        assert str(exc) == "fd 3 ('web'): expected AF_UNIX SOCK_STREAM, found AF_INET SOCK_STREAM"
        assert (exc.fd, exc.name, exc.expected, exc.found) == (3, "web", "AF_UNIX SOCK_STREAM", "AF_INET SOCK_STREAM")
        assert {ValueError, ServerError} <= set(type(exc).__mro__)


class TestNotifyAddress:
    @pytest.mark.timeout(5)
    @pytest.mark.parametrize(
        ("value", "address"),
        [("/run/systemd/notify", "/run/systemd/notify"), ("@sd-notify", b"\0sd-notify"), ("", None), (None, None)],
    )
    def test_forms(self, value: str | None, address: str | bytes | None) -> None:
        """A path stays a path, @name is an abstract name, empty or unset is none."""
        assert notify_address(value) == address

    @pytest.mark.timeout(5)
    def test_unsupported(self) -> None:
        """Another form (vsock:...) is a ValueError naming the value."""
        with pytest.raises(ValueError, match="vsock:2:1"):
            notify_address("vsock:2:1")

    @pytest.mark.timeout(5)
    def test_from_environment_disables_unsupported(self) -> None:
        """A notifier from an unsupported NOTIFY_SOCKET is disabled, not an error."""
        assert not Notifier.from_environment({"NOTIFY_SOCKET": "relative/path"}).enabled


class TestWatchdogInterval:
    @pytest.mark.timeout(5)
    @pytest.mark.parametrize(
        ("env", "interval"),
        [
            ({"WATCHDOG_USEC": "2000000"}, 1.0),
            ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(PID)}, 1.0),
            ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, None),
            ({}, None),
            ({"WATCHDOG_USEC": ""}, None),
        ],
    )
    def test_interval(self, env: dict[str, str], interval: float | None) -> None:
        """Half of WATCHDOG_USEC, when WATCHDOG_PID is unset or ours; else none."""
        assert watchdog_interval(env, PID) == interval

    @pytest.mark.timeout(5)
    @pytest.mark.parametrize(
        "env", [{"WATCHDOG_USEC": "soon"}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "1", "WATCHDOG_PID": "x"}]
    )
    def test_malformed(self, env: dict[str, str]) -> None:
        """A malformed value is a ValueError (the notifier logs it and disables the watchdog)."""
        with pytest.raises(ValueError):
            watchdog_interval(env, PID)

    @pytest.mark.timeout(5)
    def test_notifier_without_socket_has_no_heartbeat(self) -> None:
        """WATCHDOG_USEC without NOTIFY_SOCKET: nothing to ping, no heartbeat."""
        notifier = Notifier.from_environment({"WATCHDOG_USEC": "1000000"})
        assert notifier.watchdog_interval is None
        assert notifier.heartbeat() is None


class TestFormatNotification:
    @pytest.mark.timeout(5)
    def test_lines(self) -> None:
        """Assignments are joined by newlines, as sd_notify expects."""
        assert format_notification("READY=1", "STATUS=serving") == b"READY=1\nSTATUS=serving"

    @pytest.mark.timeout(5)
    @pytest.mark.parametrize("bad", ["READY", "=1", "STATUS=a\nREADY=1"])
    def test_refused(self, bad: str) -> None:
        """An assignment without a key or `=`, or with a newline, is refused."""
        with pytest.raises(ValueError):
            format_notification(bad)

    @pytest.mark.timeout(5)
    def test_status_is_one_line(self) -> None:
        """A disabled notifier sends nothing, and a multi-line status is flattened, not refused."""
        notifier = Notifier(None)
        assert notifier.ready("two\nlines") is False
        assert notifier._status("two\nlines") == ("STATUS=two lines",)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TestWatchdogHeartbeat:
    @pytest.mark.timeout(5)
    def test_pings_when_due_only(self) -> None:
        """The first beat pings; later beats ping only once the interval has passed since the last ping."""
        clock, pings = FakeClock(), []
        heartbeat = WatchdogHeartbeat(lambda: pings.append(clock.now), 0.5, clock=clock)
        assert heartbeat.beat()
        for _ in range(5):  # 100.25 .. 101.25
            clock.now += 0.25
            heartbeat.beat()
        assert pings == [100.0, 100.5, 101.0]

    @pytest.mark.timeout(5)
    def test_no_beat_no_ping(self) -> None:
        """Time passing without a beat sends nothing: the ping is the loop's, not a timer's."""
        clock, pings = FakeClock(), []
        heartbeat = WatchdogHeartbeat(lambda: pings.append(clock.now), 0.5, clock=clock)
        heartbeat.beat()
        clock.now += 60
        assert pings == [100.0]

    @pytest.mark.timeout(5)
    def test_dispatcher_beats_on_service(self) -> None:
        """HeartbeatDispatcher beats on service() and delegates the rest."""
        clock, pings = FakeClock(), []
        inner = InlineDispatcher()
        dispatcher = HeartbeatDispatcher(inner, WatchdogHeartbeat(lambda: pings.append(clock.now), 1.0, clock=clock))
        dispatcher.service()
        clock.now += 1.0
        dispatcher.service()
        assert len(pings) == 2
        assert inner.service_calls == 2
        assert dispatcher.join(0) == ()
        dispatcher.close()
        assert "HeartbeatDispatcher" in repr(dispatcher)
