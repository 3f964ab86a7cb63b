"""Differential tests: the same client script against a stdlib socketserver
class and its composable_server.compat twin must see the same thing.

The script (one line or datagram per request): ``hello`` is answered in
upper case; ``boom`` makes the handler raise (``handle_error`` is called, the
server goes on; a stream is closed, a datagram handler still sends its empty
``wfile``); a request refused by ``verify_request`` gets no answer; after
``shutdown()``/``server_close()`` the server's descriptor is gone.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import pytest

from composable_server import compat, handlers
from composable_server.interfaces import InetAddress

pytestmark = pytest.mark.timeout(20)

WAIT: Final = 5.0
HAS_UNIX: Final = hasattr(socket, "AF_UNIX")
HAS_FORK: Final = hasattr(os, "fork")

KINDS: Final = [
    f"{prefix}{base}Server"
    for prefix in ("", "Threading", "Forking")
    for base in ("TCP", "UDP", "UnixStream", "UnixDatagram")
]


def stdlib_class(name: str) -> type:
    """stdlib's class *name* (ForkingUnix*Server built as 3.12 defines it on 3.11)."""
    cls = getattr(socketserver, name, None)
    if isinstance(cls, type):
        return cls
    return type(name, (socketserver.ForkingMixIn, getattr(socketserver, name.removeprefix("Forking"))), {})


def server_module_class(module: ModuleType, name: str) -> type:
    return stdlib_class(name) if module is socketserver else getattr(compat, name)


def is_stream(name: str) -> bool:
    return "TCP" in name or "Stream" in name


def is_unix(name: str) -> bool:
    return "Unix" in name


# -- handlers (the same code on either module's handler base classes) ---------


def _answer(data: bytes) -> bytes:
    if data == b"boom":
        raise RuntimeError("boom")
    if data == b"addr?":
        return repr(handler_client_address.get()).encode()
    return data.upper()


class _AddressBox:
    """Where the handler leaves the client address it saw (read back by _answer)."""

    def __init__(self) -> None:
        self.value: object = None

    def get(self) -> object:
        return self.value


handler_client_address = _AddressBox()


def _stream_handle(self: Any) -> None:
    handler_client_address.value = self.client_address
    line = self.rfile.readline().strip()
    self.wfile.write(_answer(line) + b"\n")


def _datagram_handle(self: Any) -> None:
    handler_client_address.value = self.client_address
    assert isinstance(self.request, tuple) and isinstance(self.request[1], socket.socket)
    self.wfile.write(_answer(self.rfile.read().strip()))


def handler_class(module: ModuleType, stream: bool) -> type:
    if stream:
        return type("Handler", (module.StreamRequestHandler,), {"handle": _stream_handle})
    return type("Handler", (module.DatagramRequestHandler,), {"handle": _datagram_handle})


class Recording:
    """User hooks mixed in first: refuse on demand, report errors through a pipe
    (which works from a forked child too)."""

    refuse = False
    error_fd = -1

    def verify_request(self, request: object, client_address: object) -> bool:
        if self.refuse:
            self.refuse = False
            return False
        return True

    def handle_error(self, request: object, client_address: object) -> None:
        # Called inside the except block: sys.exc_info() is the handler's error.
        exc = sys.exc_info()[1]
        os.write(self.error_fd, type(exc).__name__.encode() + b"\n")


# -- clients -----------------------------------------------------------------


class Client:
    """One client per server kind: ``ask`` sends a request and returns the reply
    (``b""`` for a closed connection, None for a datagram without a reply yet)."""

    def __init__(self, name: str, address: Any, tmp: Path) -> None:
        self.stream = is_stream(name)
        self.family = socket.AF_UNIX if is_unix(name) else socket.AF_INET
        self.address = address
        self.dgram: socket.socket | None = None
        if not self.stream:
            self.dgram = socket.socket(self.family, socket.SOCK_DGRAM)
            self.dgram.bind(str(tmp / "client.sock") if is_unix(name) else ("127.0.0.1", 0))
            self.dgram.settimeout(WAIT)

    def ask(self, data: bytes) -> bytes:
        if self.dgram is None:
            with socket.socket(self.family, socket.SOCK_STREAM) as sock:
                sock.settimeout(WAIT)
                sock.connect(self.address)
                chunks = []
                try:
                    # A refused connection may be closed before we send.
                    sock.sendall(data + b"\n")
                    while chunk := sock.recv(4096):
                        chunks.append(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                return b"".join(chunks).strip()
        self.dgram.sendto(data, self.address)
        return self.dgram.recv(65536)

    def send_only(self, data: bytes) -> bytes:
        """Send a request that gets no datagram answer; for streams, return what
        the connection yields."""
        if self.dgram is None:
            return self.ask(data)
        self.dgram.sendto(data, self.address)
        return b""

    def close(self) -> None:
        if self.dgram is not None:
            self.dgram.close()


def read_errors(fd: int) -> bytes:
    """Wait for one error report line from the pipe."""
    ready, _, _ = select.select([fd], [], [], WAIT)
    assert ready, "handle_error was not called"
    return os.read(fd, 100)


@contextlib.contextmanager
def serving(server: Any) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        thread.join(WAIT)
        server.server_close()


def address_for(name: str, tmp: Path) -> Any:
    return str(tmp / "server.sock") if is_unix(name) else ("127.0.0.1", 0)


def run_script(module: ModuleType, name: str, tmp: Path) -> list[object]:
    """The client script; returns the transcript to compare."""
    cls = type(name, (Recording, server_module_class(module, name)), {})
    server = cls(address_for(name, tmp), handler_class(module, is_stream(name)))
    r, w = os.pipe()
    server.error_fd = w
    client = Client(name, server.server_address, tmp)
    transcript: list[object] = []
    try:
        with serving(server):
            transcript.append(client.ask(b"hello"))
            # A datagram handler that raised still sends its (empty) wfile, as stdlib.
            transcript.append(client.ask(b"boom"))
            transcript.append(read_errors(r))
            transcript.append(client.ask(b"again"))
            server.refuse = True
            transcript.append(client.send_only(b"denied"))
            transcript.append(client.ask(b"after"))
            transcript.append(type(server.server_address).__name__)
        transcript.append(server.fileno())
        if is_stream(name):
            with pytest.raises(ConnectionRefusedError):
                client.ask(b"closed?")
    finally:
        client.close()
        os.close(r)
        os.close(w)
    return transcript


@pytest.mark.parametrize("name", KINDS)
def test_same_transcript(name: str, tmp_path: Path) -> None:
    """stdlib and compat give the same replies, error handling, refusals and close outcome."""
    if is_unix(name) and not HAS_UNIX:
        pytest.skip("no AF_UNIX")
    if name.startswith("Forking") and not HAS_FORK:
        pytest.skip("no fork")
    (tmp_path / "std").mkdir()
    (tmp_path / "ours").mkdir()
    theirs = run_script(socketserver, name, tmp_path / "std")
    ours = run_script(compat, name, tmp_path / "ours")
    assert ours == theirs
    assert ours[0] == b"HELLO" and ours[2] == b"RuntimeError\n" and ours[-1] == -1


@pytest.mark.parametrize("module", [socketserver, compat], ids=["stdlib", "compat"])
class TestStdlibBehaviour:
    def test_bind_and_activate_false_then_explicit(self, module: ModuleType) -> None:
        """``bind_and_activate=False`` then ``server_bind()``/``server_activate()`` serves."""
        server = module.TCPServer(("127.0.0.1", 0), handler_class(module, True), bind_and_activate=False)
        try:
            assert server.server_address == ("127.0.0.1", 0)
            server.allow_reuse_address = True
            server.server_bind()
            assert server.server_address[1] != 0
            assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
            server.server_activate()
            client = Client("TCPServer", server.server_address, Path())
            result: list[bytes] = []
            t = threading.Thread(target=lambda: result.append(client.ask(b"x")))
            t.start()
            server.handle_request()
            t.join(WAIT)
            assert result == [b"X"]
        finally:
            server.server_close()

    def test_failed_bind_closes_the_socket(self, module: ModuleType) -> None:
        """A constructor whose bind fails closes the socket and raises OSError."""
        closed: list[int] = []

        class Tracking(module.TCPServer):  # type: ignore[name-defined,misc]  # a module chosen at run time
            def server_close(self) -> None:
                super().server_close()
                closed.append(self.socket.fileno())

        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            with pytest.raises(OSError):
                Tracking(taken.getsockname(), handler_class(module, True))
        assert closed == [-1]

    def test_unix_client_address_is_a_path(self, module: ModuleType, tmp_path: Path) -> None:
        """A Unix datagram handler sees the client's bound path as ``client_address``."""
        server = module.UnixDatagramServer(str(tmp_path / "s"), handler_class(module, False))
        client = Client("UnixDatagramServer", server.server_address, tmp_path)
        try:
            with serving(server):
                assert client.ask(b"addr?") == repr(str(tmp_path / "client.sock")).encode()
        finally:
            client.close()

    def test_unix_stream_client_address(self, module: ModuleType, tmp_path: Path) -> None:
        """An unbound Unix stream client is reported as the empty path, and the
        socket file stays after close (as stdlib)."""
        path = str(tmp_path / "s")
        server = module.UnixStreamServer(path, handler_class(module, True))
        try:
            with serving(server):
                assert Client("UnixStreamServer", path, tmp_path).ask(b"addr?") == b"''"
        finally:
            server.server_close()
        assert os.path.exists(path)

    def test_handle_error_inside_except(self, module: ModuleType) -> None:
        """``handle_error`` runs inside the except block: a bare ``raise`` re-raises."""
        seen: list[str] = []

        class S(module.TCPServer):  # type: ignore[name-defined,misc]  # a module chosen at run time
            def handle_error(self, request: object, client_address: object) -> None:
                try:
                    raise
                except RuntimeError as exc:
                    seen.append(str(exc))

        server = S(("127.0.0.1", 0), handler_class(module, True))
        client = Client("TCPServer", server.server_address, Path())
        try:
            result: list[bytes] = []
            t = threading.Thread(target=lambda: result.append(client.ask(b"boom")))
            t.start()
            server.handle_request()
            t.join(WAIT)
            assert (seen, result) == (["boom"], [b""])
        finally:
            server.server_close()

    def test_user_subclass_sets_attributes_before_init(self, module: ModuleType) -> None:
        """Attributes set on ``self`` before ``super().__init__`` take effect and survive."""

        class Mine(module.ThreadingTCPServer):  # type: ignore[name-defined,misc]  # a module chosen at run time
            def __init__(self, address: InetAddress) -> None:
                self.allow_reuse_address = True
                self.daemon_threads = True
                self.greeting = "kept"
                super().__init__(address, handler_class(module, True))

        with Mine(("127.0.0.1", 0)) as server:
            assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
            assert server.greeting == "kept"
            with serving(server):
                assert Client("TCPServer", server.server_address, Path()).ask(b"ok") == b"OK"

    def test_mixin_pattern(self, module: ModuleType) -> None:
        """``class S(ThreadingMixIn, TCPServer)`` serves each request in a new, live-configured thread."""
        threads: list[tuple[bool, bool]] = []

        def handle(self: Any) -> None:
            me = threading.current_thread()
            threads.append((me is threading.main_thread(), me.daemon))
            self.wfile.write(b"done\n")

        cls = type("S", (module.ThreadingMixIn, module.TCPServer), {})
        server = cls(("127.0.0.1", 0), type("H", (module.StreamRequestHandler,), {"handle": handle}))
        client = Client("TCPServer", server.server_address, Path())
        with serving(server):
            assert client.ask(b"") == b"done"
            server.daemon_threads = True  # changed after __init__: the next thread is daemonic
            assert client.ask(b"") == b"done"
            assert client.ask(b"") == b"done"
            server.daemon_threads = False  # and back
            assert client.ask(b"") == b"done"
        assert threads == [(False, False), (False, True), (False, True), (False, False)]

    def test_max_packet_size_is_live(self, module: ModuleType, tmp_path: Path) -> None:
        """Lowering ``max_packet_size`` after ``__init__`` applies to the next
        datagram: stdlib hands over its first bytes, compat drops it (a
        deliberate difference: never a cut datagram as if whole)."""
        server = module.UDPServer(("127.0.0.1", 0), handler_class(module, False))
        client = Client("UDPServer", server.server_address, tmp_path)
        try:
            with serving(server):
                assert client.ask(b"abcdefgh") == b"ABCDEFGH"
                server.max_packet_size = 4
                client.send_only(b"abcdefgh")
                # Datagrams on loopback keep their order: the first reply
                # after the oversized one is for it, unless it was dropped.
                first = client.ask(b"xyz")
                assert first == (b"ABCD" if module is socketserver else b"XYZ")
                if module is compat:
                    assert server.acceptor.dropped == 1  # counted (and logged)
        finally:
            client.close()

    def test_socket_assigned_after_server_close_serves(self, module: ModuleType) -> None:
        """``server_close()``, then a socket from an inherited descriptor assigned
        to ``socket``, then ``serve_forever()`` serves on it (werkzeug's
        development server does this under its reloader)."""
        with socket.create_server(("127.0.0.1", 0)) as inherited:
            server = module.TCPServer(("127.0.0.1", 0), handler_class(module, True), bind_and_activate=False)
            server.server_close()
            server.socket = socket.fromfd(inherited.fileno(), socket.AF_INET, socket.SOCK_STREAM)
            server.server_address = server.socket.getsockname()
            client = Client("TCPServer", server.server_address, Path())
            with serving(server):
                assert client.ask(b"again") == b"AGAIN"
            assert server.socket.fileno() == -1  # closed by server_close() again

    def test_timeout_is_live(self, module: ModuleType) -> None:
        """Setting ``timeout`` after ``__init__`` makes ``handle_request`` call ``handle_timeout``."""
        timed_out = threading.Event()

        class S(module.TCPServer):  # type: ignore[name-defined,misc]  # a module chosen at run time
            def handle_timeout(self) -> None:
                timed_out.set()

        with S(("127.0.0.1", 0), handler_class(module, True)) as server:
            server.timeout = 0.01
            server.handle_request()
        assert timed_out.is_set()


def test_core_handler_on_compat_server() -> None:
    """A core (generic) handler class serves on a compat server."""

    class Core(handlers.StreamRequestHandler[InetAddress]):
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline().upper())

    with compat.TCPServer(("127.0.0.1", 0), Core) as server:
        with serving(server):
            assert Client("TCPServer", server.server_address, Path()).ask(b"core") == b"CORE"


def test_stdlib_handler_on_compat_server() -> None:
    """A stdlib handler class serves on a compat server."""

    class Std(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline().upper())

    with compat.ThreadingTCPServer(("127.0.0.1", 0), Std) as server:
        with serving(server):
            assert Client("TCPServer", server.server_address, Path()).ask(b"std") == b"STD"


@pytest.mark.skipif(not HAS_FORK, reason="no fork")
def test_forking_active_children_reflects_the_dispatcher(tmp_path: Path) -> None:
    """``active_children`` shows a running child's pid, and is reaped by ``collect_children``."""
    r, w = os.pipe()

    def handle(self: Any) -> None:
        os.write(w, str(os.getpid()).encode())
        self.rfile.readline()

    server = compat.ForkingTCPServer(("127.0.0.1", 0), type("H", (compat.StreamRequestHandler,), {"handle": handle}))
    try:
        with socket.create_connection(server.server_address[:2], timeout=WAIT) as conn:
            server.handle_request()
            ready, _, _ = select.select([r], [], [], WAIT)
            assert ready
            pid = int(os.read(r, 100))
            assert server.active_children == {pid}
            conn.sendall(b"bye\n")
            assert conn.recv(10) == b""
        server.collect_children(blocking=True)
        assert server.active_children is None
    finally:
        server.server_close()
        os.close(r)
        os.close(w)


@pytest.mark.skipif(not HAS_FORK, reason="no fork")
@pytest.mark.parametrize("module", [socketserver, compat], ids=["stdlib", "compat"])
def test_forked_child_exit_status_and_error_report(module: ModuleType) -> None:
    """A ForkingTCPServer's child exits 0 after a handler that returned and 1 after one that raised, whose traceback the default handle_error prints in the child, as stdlib's."""
    r, w = os.pipe()

    def handle(self: Any) -> None:
        # The child's stderr (pytest captures the real one), line-buffered:
        # stdlib's child does not flush before os._exit.
        sys.stderr = open(w, "w", buffering=1, closefd=False)
        if self.rfile.readline() == b"boom\n":
            raise RuntimeError("boom")
        self.wfile.write(b"ok\n")

    server = module.ForkingTCPServer(("127.0.0.1", 0), type("H", (module.StreamRequestHandler,), {"handle": handle}))
    statuses = []
    seen: set[int] = set()
    try:
        for line in (b"hello\n", b"boom\n"):
            with socket.create_connection(server.server_address[:2], timeout=WAIT) as conn:
                conn.sendall(line)
                server.handle_request()
                [pid] = set(server.active_children or ()) - seen
                seen.add(pid)
                _, status = os.waitpid(pid, 0)
                statuses.append(os.waitstatus_to_exitcode(status))
                assert conn.recv(10) == (b"ok\n" if line == b"hello\n" else b"")
        os.set_blocking(r, False)
        printed = os.read(r, 65536)
    finally:
        server.server_close()
        os.close(r)
        os.close(w)
    assert statuses == [0, 1]
    assert b"Exception occurred during processing of request from" in printed
    assert b"RuntimeError: boom" in printed


def _calls_in_forked_child(module: ModuleType) -> list[str]:
    """The Python functions (of socketserver, socket, composable_server and
    this file) that a forked child of *module*'s ``ForkingTCPServer`` runs for
    one echo request, from the fork's return to the child's exit."""

    def handle(self: Any) -> None:
        self.wfile.write(self.rfile.readline())

    watched = (socketserver.__file__, socket.__file__, __file__, str(Path(compat.__file__).parent))
    parent = os.getpid()
    r, w = os.pipe()
    forked = False

    def profile(frame: Any, event: str, arg: object) -> None:
        nonlocal forked
        if os.getpid() == parent:
            return
        if event == "c_return" and getattr(arg, "__name__", None) == "fork":
            forked = True  # the at-fork hooks ran before: not counted
        elif forked and event == "call" and frame.f_code.co_filename.startswith(watched):
            os.write(w, f"{frame.f_code.co_qualname}\n".encode())  # a few hundred bytes: the pipe holds them

    server = module.ForkingTCPServer(("127.0.0.1", 0), type("H", (module.StreamRequestHandler,), {"handle": handle}))
    try:
        with socket.create_connection(server.server_address[:2], timeout=WAIT) as conn:
            conn.sendall(b"ping\n")
            sys.setprofile(profile)
            try:
                server.handle_request()
            finally:
                sys.setprofile(None)
            assert conn.makefile("rb").read() == b"ping\n"
    finally:
        server.server_close()  # waits for the child (block_on_close)
        os.close(w)
    with open(r, "rb") as calls:
        return calls.read().decode().split()


@pytest.mark.skipif(not HAS_FORK, reason="no fork")
def test_a_forked_child_runs_at_most_five_functions_more_than_stdlibs() -> None:
    """Every function a forked child runs writes its refcounts on pages shared
    with the parent (copy-on-write faults, tests.bench.forkcost): compat's child
    runs stdlib's sequence plus at most five functions (the job's run and
    _serve, the mixin's body, the transport's close_request, the count of
    finished jobs)."""
    stdlib, ours = _calls_in_forked_child(socketserver), _calls_in_forked_child(compat)
    assert len(stdlib) >= 10, stdlib  # the profile saw the child
    assert len(ours) <= len(stdlib) + 5, (stdlib, ours)


class _TimingOut(compat.UDPServer):
    """A UDPServer that counts its handle_timeout calls."""

    timeouts = 0

    def handle_timeout(self) -> None:
        self.timeouts += 1


class TestHandleRequestTimeout:
    @pytest.mark.parametrize(
        ("timeout", "socket_timeout", "low", "high"),
        [(None, 0.05, 0.05, 1.0), (0.05, 30.0, 0.05, 1.0), (None, 0.0, None, None)],
        ids=["socket-only", "min-of-both", "nonblocking-socket-is-no-limit"],
    )
    @pytest.mark.timeout(10)
    def test_the_listening_sockets_timeout_counts(
        self, timeout: float | None, socket_timeout: float, low: float | None, high: float | None
    ) -> None:
        """As stdlib, handle_request() waits min(timeout, the listening socket's timeout); a non-blocking socket sets no limit."""
        server = _TimingOut(("127.0.0.1", 0), compat.DatagramRequestHandler, bind_and_activate=False)
        try:
            server.timeout = timeout
            server.socket.settimeout(socket_timeout)
            if low is None:
                assert server._wait_timeout() is None
                return
            started = time.monotonic()
            server.handle_request()  # the unbound socket never becomes readable
            elapsed = time.monotonic() - started
            assert server.timeouts == 1
            assert high is not None and low <= elapsed < high
        finally:
            server.server_close()
