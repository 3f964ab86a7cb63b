"""systemd integration with real processes: socket activation through the real
``systemd-socket-activate``, and sd_notify messages read from a real
``NOTIFY_SOCKET``.

``systemd-socket-activate`` binds the sockets, waits for the first client,
then execs the server with ``LISTEN_FDS`` (and ``LISTEN_FDNAMES`` with
``--fdname``); it passes only the variables given with ``-E``.  So every test
here sends its first request *before* the server exists: that request waits
in the kernel's queue and must be answered, which is the point of activation.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from socket import socket as Socket
from typing import Final, cast

import pytest

from composable_server import StreamAcceptor
from composable_server.acceptors import DatagramAcceptor
from composable_server.exceptions import InheritedSocketError
from composable_server.interfaces import Address, DatagramRequest, Transport
from composable_server.systemd import (
    HeartbeatDispatcher,
    InheritedDatagramTransport,
    InheritedStreamTransport,
    Notifier,
    WatchdogHeartbeat,
)
from composable_server.testing import check_acceptor, check_transport

from .._process import run_process
from ._support import OutputProcess, read_to_eof

WAIT: Final = 10.0
ACTIVATE: Final = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"
LISTENING: Final = re.compile(r"listening on (\S+) (\S+)")

needs_activate = pytest.mark.skipif(not os.path.exists(ACTIVATE), reason="systemd-socket-activate is not installed")


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port that is free on 127.0.0.1 right now (for a tool that needs a number)."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def server_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "composable_server", "serve", "--log-level", "debug", *args]


@contextmanager
def activated(listen: list[str], *serve_args: str, activate_args: tuple[str, ...] = ()) -> Iterator[OutputProcess]:
    """Run ``systemd-socket-activate -l ... serve --systemd ...`` in its own
    process group; kill the group on the way out."""
    argv = [ACTIVATE, *activate_args]
    for address in listen:
        argv += ["-l", address]
    proc = OutputProcess([*argv, *server_argv("--systemd", *serve_args)], read="stderr", wait=WAIT)
    try:
        for address in listen:
            proc.wait_for(f"Listening on {re.escape(address)}")
        yield proc
    finally:
        proc.close()


def stop(proc: OutputProcess) -> int:
    """SIGTERM the server (systemd-socket-activate exec'd into it) and return its status."""
    proc.proc.send_signal(signal.SIGTERM)
    return proc.proc.wait(WAIT)


def connect_and_send(port: int, payload: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.sendall(payload)
    return sock


@needs_activate
class TestSocketActivation:
    @pytest.mark.timeout(30)
    def test_tcp_without_names(self) -> None:
        """A bare `-l` (no LISTEN_FDNAMES): the first request, queued before the
        server started, is answered on the passed socket, and SIGTERM exits 0."""
        port = free_port()
        with activated([f"127.0.0.1:{port}"]) as proc:
            with connect_and_send(port, b"queued\n") as first:
                assert read_to_eof(first) == b"QUEUED\n"
            match = proc.wait_for(LISTENING)
            assert (match.group(1), match.group(2)) == ("tcp", f"127.0.0.1:{port}")
            with connect_and_send(port, b"second\n") as second:
                assert read_to_eof(second) == b"SECOND\n"
            assert stop(proc) == 0

    @pytest.mark.timeout(30)
    def test_tcp_by_name(self) -> None:
        """With `--fdname a:b`, `--systemd-name b` serves on the second socket only."""
        port_a, port_b = free_port(), free_port()
        with activated(
            [f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"],
            "--systemd-name",
            "b",
            "--service",
            "echo",
            activate_args=("--fdname=a:b",),
        ) as proc:
            with connect_and_send(port_b, b"to b\n") as sock:
                assert read_to_eof(sock) == b"to b\n"
            assert proc.wait_for(LISTENING).group(2) == f"127.0.0.1:{port_b}"
            assert stop(proc) == 0

    @pytest.mark.timeout(30)
    def test_position_when_unnamed(self) -> None:
        """Without names, `--systemd-name 1` is the second passed socket (fd 4)."""
        port_a, port_b = free_port(), free_port()
        with activated([f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"], "--systemd-name", "1") as proc:
            with connect_and_send(port_b, b"fd four\n") as sock:
                assert read_to_eof(sock) == b"FD FOUR\n"
            assert stop(proc) == 0

    @pytest.mark.timeout(30)
    def test_unknown_name_exits_2(self) -> None:
        """A `--systemd-name` no socket has: exit 2 and one line listing what was passed."""
        port = free_port()
        with activated([f"127.0.0.1:{port}"], "--systemd-name", "web", activate_args=("--fdname=api",)) as proc:
            socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()
            assert proc.proc.wait(WAIT) == 2
            errors = [line for line in proc.lines if "error:" in line]
            assert len(errors) == 1
            assert "no socket named 'web'" in errors[0] and "fd 3 ('api')" in errors[0]

    @pytest.mark.timeout(30)
    def test_datagram(self) -> None:
        """`--datagram --fdname dns`: a UDP datagram sent before the server started is answered."""
        port = free_port(socket.SOCK_DGRAM)
        with activated([f"127.0.0.1:{port}"], activate_args=("--datagram", "--fdname=dns")) as proc:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.settimeout(WAIT)
                client.sendto(b"early", ("127.0.0.1", port))
                assert client.recv(100) == b"EARLY"
                match = proc.wait_for(LISTENING)
                assert match.group(1) == "udp"
                client.sendto(b"later", ("127.0.0.1", port))
                assert client.recv(100) == b"LATER"
            assert stop(proc) == 0

    @pytest.mark.timeout(30)
    def test_unix_stream_file_is_left(self, short_tmp_path: Path) -> None:
        """A passed Unix socket is served as `unix`, and its file is not removed on
        exit: it belongs to whoever created it (the socket unit)."""
        path = short_tmp_path / "act.sock"
        with activated([str(path)], "--transport", "unix") as proc:
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(WAIT)
                client.connect(str(path))
                client.sendall(b"unix\n")
                assert read_to_eof(client) == b"UNIX\n"
            assert proc.wait_for(LISTENING).group(1) == "unix"
            assert stop(proc) == 0
        assert path.is_socket()

    @pytest.mark.timeout(30)
    def test_prefork_workers_share_the_passed_socket(self) -> None:
        """`--dispatch prefork`: the workers serve the passed socket; every request is answered."""
        port = free_port()
        with activated([f"127.0.0.1:{port}"], "--dispatch", "prefork", "--workers", "2") as proc:
            with connect_and_send(port, b"first\n") as sock:
                assert read_to_eof(sock) == b"FIRST\n"
            for i in range(10):
                with connect_and_send(port, b"n%d\n" % i) as sock:
                    assert read_to_eof(sock) == b"N%d\n" % i
            assert stop(proc) == 0

    @pytest.mark.timeout(30)
    @pytest.mark.parametrize(
        ("datagram", "transport", "expected", "found"),
        [
            (False, "unix", "expected AF_UNIX SOCK_STREAM", "found AF_INET SOCK_STREAM"),
            (True, "tcp", "expected AF_INET/AF_INET6 SOCK_STREAM", "found AF_INET SOCK_DGRAM"),
        ],
    )
    def test_wrong_family_or_type_exits_2(self, datagram: bool, transport: str, expected: str, found: str) -> None:
        """A passed socket of another family or type than `--transport`: exit 2,
        one line naming fd 3, what was expected and what was found."""
        port = free_port(socket.SOCK_DGRAM if datagram else socket.SOCK_STREAM)
        extra = ("--datagram",) if datagram else ()
        with activated([f"127.0.0.1:{port}"], "--transport", transport, activate_args=extra) as proc:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM if datagram else socket.SOCK_STREAM) as client:
                client.connect(("127.0.0.1", port))
                client.send(b"x")
            assert proc.proc.wait(WAIT) == 2
            errors = [line for line in proc.lines if "error:" in line]
            assert len(errors) == 1, proc.lines
            assert "fd 3" in errors[0] and expected in errors[0] and found in errors[0]

    @pytest.mark.timeout(30)
    def test_listen_pid_of_another_process_exits_2(self) -> None:
        """A wrapper that runs the server as its child (no exec) leaves LISTEN_PID
        naming the wrapper: the server refuses the sockets and exits 2 saying why."""
        port = free_port()
        command = " ".join(server_argv("--systemd")) + "; exit $?"  # sh forks: LISTEN_PID is sh's
        argv = [ACTIVATE, "-l", f"127.0.0.1:{port}", "sh", "-c", command]
        proc = OutputProcess(argv, read="stderr", wait=WAIT)
        try:
            proc.wait_for("Listening on")
            socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()
            assert proc.proc.wait(WAIT) == 2
            errors = [line for line in proc.lines if "error:" in line]
            assert len(errors) == 1
            assert re.search(r"LISTEN_PID is \d+, not this process \(\d+\)", errors[0])
        finally:
            proc.close()


class TestWithoutActivation:
    @pytest.mark.timeout(30)
    def test_systemd_without_activation_exits_2(self) -> None:
        """`serve --systemd` started by hand: exit 2 with one line saying so."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
        result = run_process(server_argv("--systemd"), timeout=WAIT, env=env)
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1
        assert "--systemd: no socket activation: LISTEN_FDS is not set" in result.stderr


@contextmanager
def _stream_client(transport: Transport[Socket, Address]) -> Iterator[object]:
    with socket.create_connection(cast("tuple[str, int]", transport.server_address), timeout=WAIT) as client:
        yield client


@contextmanager
def _datagram_client(transport: Transport[DatagramRequest, Address]) -> Iterator[object]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"ping", cast("tuple[str, int]", transport.server_address))
        yield client


class TestInheritedTransports:
    @pytest.mark.timeout(10)
    def test_stream_contract(self) -> None:
        """InheritedStreamTransport.from_fd over a listening TCP socket keeps the Transport contract."""

        def make() -> InheritedStreamTransport:
            sock = socket.create_server(("127.0.0.1", 0))
            return InheritedStreamTransport.from_fd(sock.detach())

        check_transport(make)
        check_acceptor(make, StreamAcceptor, _stream_client)

    @pytest.mark.timeout(10)
    def test_datagram_contract(self) -> None:
        """InheritedDatagramTransport over a bound UDP socket keeps the Transport contract."""

        def make() -> InheritedDatagramTransport:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            return InheritedDatagramTransport(sock)

        check_transport(make)
        check_acceptor(make, DatagramAcceptor, _datagram_client)

    @pytest.mark.timeout(10)
    def test_bind_does_not_rebind(self) -> None:
        """bind() and activate() keep the socket and its address; close() closes it."""
        sock = socket.create_server(("127.0.0.1", 0))
        address = sock.getsockname()
        transport = InheritedStreamTransport(sock)
        transport.bind()
        transport.activate()
        assert transport.server_address == address
        assert transport.socket is sock
        transport.close()
        assert sock.fileno() == -1

    @pytest.mark.timeout(10)
    def test_not_listening_stream_is_refused(self) -> None:
        """A stream socket that is bound but not listening is an InheritedSocketError naming its fd."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            with pytest.raises(InheritedSocketError, match=rf"fd {sock.fileno()}: .*not listening"):
                InheritedStreamTransport(sock)

    @pytest.mark.timeout(10)
    def test_from_fd_of_a_file_is_refused(self, tmp_path: Path) -> None:
        """from_fd() of a regular file: an InheritedSocketError (a ValueError) naming the fd; the fd stays open."""
        with open(tmp_path / "f", "wb") as file:
            with pytest.raises(ValueError, match=rf"fd {file.fileno()}: expected a socket"):
                InheritedStreamTransport.from_fd(file.fileno())
            os.fstat(file.fileno())  # still open

    @pytest.mark.timeout(10)
    def test_from_fd_of_wrong_type_leaves_fd_open(self) -> None:
        """from_fd() of a datagram socket as a stream transport fails and does not close the caller's fd."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            with pytest.raises(InheritedSocketError) as info:
                InheritedStreamTransport.from_fd(sock.fileno())
            assert info.value.found == "AF_INET SOCK_DGRAM"
            assert sock.getsockname()  # still usable


# -- sd_notify -----------------------------------------------------------------------


class NotifyListener:
    """The systemd end of NOTIFY_SOCKET: an AF_UNIX datagram socket."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def next(self, timeout: float = WAIT) -> dict[str, str]:
        """The next message as a dict (bounded wait)."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096)
        fields = dict(line.split("=", 1) for line in data.decode().split("\n"))
        self.messages.append((time.monotonic(), fields))
        return fields

    def next_without_watchdog(self) -> dict[str, str]:
        while True:
            fields = self.next()
            if fields != {"WATCHDOG": "1"}:
                return fields

    def close(self) -> None:
        self.sock.close()


@contextmanager
def notify_listener(address: str | bytes) -> Iterator[NotifyListener]:
    listener = NotifyListener(address)
    try:
        yield listener
    finally:
        listener.close()


def notified(notify_socket: str, *args: str, watchdog_usec: int | None = None) -> OutputProcess:
    env = dict(os.environ, NOTIFY_SOCKET=notify_socket)
    env.pop("WATCHDOG_PID", None)
    env.pop("WATCHDOG_USEC", None)
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    return OutputProcess(server_argv("--port", "0", *args), read="stderr", wait=WAIT, env=env)


class TestNotify:
    @pytest.mark.timeout(30)
    @pytest.mark.parametrize("dispatch", ["sync", "pool", "prefork"])
    def test_ready_status_stopping_in_order(self, dispatch: str, short_tmp_path: Path) -> None:
        """READY=1 with a STATUS= line once serving, then STOPPING=1 on SIGTERM, then exit 0."""
        path = str(short_tmp_path / "notify.sock")
        with notify_listener(path) as listener:
            proc = notified(path, "--dispatch", dispatch, *(["--workers", "2"] if dispatch == "prefork" else []))
            try:
                ready = listener.next()
                assert ready["READY"] == "1"
                port = int(proc.wait_for(LISTENING).group(2).rpartition(":")[2])
                assert str(port) in ready["STATUS"]
                with connect_and_send(port, b"up\n") as sock:
                    assert read_to_eof(sock) == b"UP\n"
                proc.proc.send_signal(signal.SIGTERM)
                stopping = listener.next()
                assert stopping["STOPPING"] == "1"
                assert "STATUS" in stopping
                assert proc.proc.wait(WAIT) == 0
            finally:
                proc.close()
        assert [next(iter(fields)) for _, fields in listener.messages] == ["READY", "STOPPING"]

    @pytest.mark.timeout(30)
    def test_abstract_socket(self) -> None:
        """NOTIFY_SOCKET=@name (an abstract socket) gets the same READY=1 and STOPPING=1."""
        name = f"composable-server-test-{os.getpid()}-{time.monotonic_ns()}"
        with notify_listener(b"\0" + name.encode()) as listener:
            proc = notified("@" + name)
            try:
                assert listener.next()["READY"] == "1"
                proc.wait_for(LISTENING)
                proc.proc.send_signal(signal.SIGTERM)
                assert listener.next()["STOPPING"] == "1"
                assert proc.proc.wait(WAIT) == 0
            finally:
                proc.close()

    @pytest.mark.timeout(30)
    @pytest.mark.parametrize("dispatch", ["pool", "prefork"])
    def test_watchdog_cadence(self, dispatch: str, short_tmp_path: Path) -> None:
        """With WATCHDOG_USEC=1 s, WATCHDOG=1 comes every half second or so: never
        faster than the interval, never as late as the watchdog timeout."""
        path = str(short_tmp_path / "notify.sock")
        usec = 1_000_000
        with notify_listener(path) as listener:
            proc = notified(path, "--dispatch", dispatch, watchdog_usec=usec)
            try:
                assert listener.next()["READY"] == "1"
                pings: list[float] = []
                while len(pings) < 6:
                    fields = listener.next()
                    assert fields == {"WATCHDOG": "1"}
                    pings.append(listener.messages[-1][0])
                gaps = [b - a for a, b in zip(pings, pings[1:])]
                assert all(0.4 <= gap < usec / 1e6 for gap in gaps), gaps
                proc.proc.send_signal(signal.SIGTERM)
                assert listener.next_without_watchdog()["STOPPING"] == "1"
                assert proc.proc.wait(WAIT) == 0
            finally:
                proc.close()

    @pytest.mark.timeout(30)
    def test_watchdog_stops_while_the_loop_is_blocked(self, short_tmp_path: Path) -> None:
        """With sync dispatch a handler blocks the serving loop: no WATCHDOG=1 while
        it does (systemd would restart the service), pings again once it returns."""
        path = str(short_tmp_path / "notify.sock")
        with notify_listener(path) as listener:
            proc = notified(path, "--dispatch", "sync", watchdog_usec=200_000)  # a ping every 0.1 s
            try:
                assert listener.next()["READY"] == "1"
                assert listener.next() == {"WATCHDOG": "1"}
                port = int(proc.wait_for(LISTENING).group(2).rpartition(":")[2])
                with connect_and_send(port, b"half a li") as sock:
                    proc.wait_for("upper request from")  # the loop is in the handler now
                    listener.sock.settimeout(0)
                    try:  # drop the pings sent before the handler started
                        while listener.sock.recv(4096):
                            pass
                    except BlockingIOError:
                        pass
                    with pytest.raises(TimeoutError):
                        listener.next(timeout=1.0)  # ten intervals without a ping
                    sock.sendall(b"ne\n")
                    assert read_to_eof(sock) == b"HALF A LINE\n"
                assert listener.next() == {"WATCHDOG": "1"}
                proc.proc.send_signal(signal.SIGTERM)
                assert listener.next_without_watchdog()["STOPPING"] == "1"
                assert proc.proc.wait(WAIT) == 0
            finally:
                proc.close()

    @pytest.mark.timeout(10)
    def test_notifier_survives_a_missing_socket(self, short_tmp_path: Path) -> None:
        """A NOTIFY_SOCKET nobody listens on: sending returns False and never raises."""
        notifier = Notifier(str(short_tmp_path / "nobody.sock"))
        try:
            assert notifier.ready("x") is False
            assert notifier.watchdog() is False
        finally:
            notifier.close()

    @pytest.mark.timeout(10)
    def test_heartbeat_dispatcher_pings_through_the_notifier(self, short_tmp_path: Path) -> None:
        """HeartbeatDispatcher.service() sends WATCHDOG=1 through a real notifier socket."""
        from composable_server import SyncDispatcher

        path = str(short_tmp_path / "notify.sock")
        with notify_listener(path) as listener:
            notifier = Notifier(path, watchdog_interval=60.0)
            try:
                heartbeat = notifier.heartbeat()
                assert isinstance(heartbeat, WatchdogHeartbeat)
                dispatcher = HeartbeatDispatcher(SyncDispatcher(), heartbeat)
                dispatcher.service()
                dispatcher.service()  # not due again for a minute
                assert listener.next() == {"WATCHDOG": "1"}
                notifier.stopping()
                assert listener.next() == {"STOPPING": "1"}
            finally:
                notifier.close()


class TestNotifyReload:
    @pytest.mark.timeout(30)
    def test_sighup_reloading_then_ready(self, short_tmp_path: Path) -> None:
        """A prefork SIGHUP sends RELOADING=1 with MONOTONIC_USEC= (CLOCK_MONOTONIC, now), then READY=1;
        the order over the whole run is READY, RELOADING, READY, STOPPING."""
        path = str(short_tmp_path / "notify.sock")
        with notify_listener(path) as listener:
            proc = notified(path, "--dispatch", "prefork", "--workers", "2")
            try:
                assert listener.next()["READY"] == "1"
                proc.wait_for(LISTENING)
                before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
                proc.proc.send_signal(signal.SIGHUP)
                reloading = listener.next()
                after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
                assert reloading["RELOADING"] == "1"
                assert before <= int(reloading["MONOTONIC_USEC"]) <= after
                assert listener.next()["READY"] == "1"
                proc.proc.send_signal(signal.SIGTERM)
                assert listener.next()["STOPPING"] == "1"
                assert proc.proc.wait(WAIT) == 0
            finally:
                proc.close()
        assert [next(iter(fields)) for _, fields in listener.messages] == ["READY", "RELOADING", "READY", "STOPPING"]
