"""Where a UDP datagram's time goes: instruction counts under callgrind (issue 18).

    python -m tests.bench.callgrind_udp [--kinds stdlib compat native] [--small N] [--large N] [--top K]

Instruction counts do not depend on other load on the machine.  Each kind
(stdlib ``UDPServer``, compat ``UDPServer``, the native
``make_udp_server`` with the synchronous dispatcher; all with the benchmark's
``DatagramRequestHandler`` echo; the native lean datagram mode,
``make_udp_server(datagram_handler=...)`` on the synchronous dispatcher,
with the benchmark's ``DatagramHandler`` echo; and the benchmark's ``DatagramProtocol``
echo on asyncio and on uvloop, the target) serves a fixed number of echo
round trips in one process: ``serve_forever()`` (``run_forever()`` for the
event loops) in a thread (the benchmark's path: stdlib's
``handle_request()`` would build a selector per call), and a client in a
child process, which valgrind does not trace, sends 32 bytes and reads the
echo, one round trip at a time: the counts are the server's alone, one
wake-up of its loop per datagram, the same whatever else runs on the
machine (``--client-thread``: the client in a thread of the traced process,
as this harness first ran, whose counts move with how the threads
interleave).  Each kind runs twice under
``valgrind --tool=callgrind``, with *small* and *large* round trips; the
difference divided by ``large - small`` is the cost of one datagram, with
the interpreter's start and the imports cancelled out.  The same subtraction
per C function (``callgrind_annotate``, self cost) gives the top functions
per datagram (the client's share is the same for every kind), and a
cProfile run of the serving thread (call counts are deterministic) gives
the Python functions called per datagram.

    python -m tests.bench.callgrind_udp --serve KIND N    # the workload itself
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import importlib.util
import os
import pstats
import re
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final, Protocol, cast

__all__ = ("KINDS", "main", "parse_annotate", "profiling_threads", "serve")

ROOT: Final = Path(__file__).resolve().parent.parent.parent
SYNC_KINDS: Final = ("stdlib", "compat", "native", "native-lean", "asyncio", "uvloop")
# udp16's concurrent kinds (">= 5x ThreadingUDPServer"): asked for by name.
CONCURRENT_KINDS: Final = ("stdlib-threading", "compat-threading", "native-threading", "native-pool")
KINDS: Final = SYNC_KINDS + CONCURRENT_KINDS
MESSAGE: Final = b"00000000 0000000000 xxxxxxxxxxxx\n"[:31] + b"\n"


class _Serving(Protocol):
    @property
    def server_address(self) -> object: ...

    def serve_forever(self, poll_interval: float = ...) -> None: ...

    def shutdown(self) -> None: ...

    def server_close(self) -> None: ...


class _EventLoopEcho:
    """The benchmark's asyncio ``DatagramProtocol`` echo, shaped as a server:
    ``serve_forever`` runs the loop, ``shutdown`` stops it from another thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        from .bench_asyncio import _AsyncDatagramEcho

        self._loop = loop
        self._transport, _ = loop.run_until_complete(
            loop.create_datagram_endpoint(_AsyncDatagramEcho, local_addr=("127.0.0.1", 0))
        )
        self.server_address: object = self._transport.get_extra_info("sockname")

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._loop.run_forever()

    def shutdown(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)

    def server_close(self) -> None:
        self._transport.close()
        self._loop.run_until_complete(asyncio.sleep(0))  # the transport's close callbacks
        self._loop.close()


def _make(kind: str) -> _Serving:
    """A UDP echo server of *kind* on an ephemeral loopback port."""
    address = ("127.0.0.1", 0)
    if kind == "stdlib":
        from .bench_servers import _StdlibDatagramEcho

        return socketserver.UDPServer(address, _StdlibDatagramEcho)
    if kind == "compat":
        from composable_server import compat

        from .bench_servers import _CompatDatagramEcho

        return compat.UDPServer(address, _CompatDatagramEcho)
    if kind == "native":
        from composable_server.dispatchers import SyncDispatcher
        from composable_server.factories import make_udp_server

        from .bench_servers import _DatagramEcho

        return make_udp_server(address, _DatagramEcho, dispatcher=SyncDispatcher())
    if kind == "native-lean":
        from composable_server.dispatchers import SyncDispatcher
        from composable_server.factories import make_udp_server

        from .bench_servers import _LeanDatagramEcho

        return make_udp_server(address, datagram_handler=_LeanDatagramEcho(), dispatcher=SyncDispatcher())
    if kind == "stdlib-threading":
        from .bench_servers import _StdlibDatagramEcho

        return socketserver.ThreadingUDPServer(address, _StdlibDatagramEcho)
    if kind == "compat-threading":
        from composable_server import compat

        from .bench_servers import _CompatDatagramEcho

        return compat.ThreadingUDPServer(address, _CompatDatagramEcho)
    if kind in ("native-threading", "native-pool"):
        from composable_server.dispatchers import ThreadingDispatcher, ThreadPoolDispatcher
        from composable_server.factories import make_udp_server

        from .bench_servers import POOL_WORKERS, _DatagramEcho

        dispatcher = ThreadingDispatcher() if kind == "native-threading" else ThreadPoolDispatcher(
            POOL_WORKERS, queue_size=256
        )
        return make_udp_server(address, _DatagramEcho, dispatcher=dispatcher)
    if kind == "asyncio":
        return _EventLoopEcho(asyncio.new_event_loop())
    if kind == "uvloop":
        try:
            import uvloop  # optional: the `bench` extra
        except ImportError:
            raise SystemExit("uvloop is not installed (pip install composable-server[bench])") from None
        return _EventLoopEcho(uvloop.new_event_loop())
    raise SystemExit(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def _client(address: tuple[str, int], round_trips: int) -> None:
    """The echo client: *round_trips* sequential round trips to *address*."""
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        client.connect(address)
        client.settimeout(30.0)
        for _ in range(round_trips):
            client.send(MESSAGE)
            if client.recv(64) != MESSAGE:
                raise RuntimeError("the echo differs from the request")
    finally:
        client.close()


def serve(
    kind: str, round_trips: int, *, profile: cProfile.Profile | None = None, client_process: bool = False
) -> None:
    """Serve *round_trips* echo round trips with a *kind* server's
    ``serve_forever`` (the benchmark's path) in a thread; the client in the
    main thread, or with *client_process* in a child process (not traced:
    the counts are the server's alone, and every datagram is one wake-up
    of the loop, as at low load, whatever the machine's load)."""
    server = _make(kind)
    thread = threading.Thread(
        target=server.serve_forever if profile is None else lambda: profile.runcall(server.serve_forever, 0.5)
    )
    thread.start()
    try:
        address = cast("tuple[str, int]", server.server_address)  # (host, port) for AF_INET
        if client_process:
            subprocess.run(
                [sys.executable, "-m", "tests.bench.callgrind_udp", "--client", f"{address[0]}:{address[1]}",
                 str(round_trips)],
                cwd=ROOT, check=True, timeout=1800,
            )
        else:
            _client(address, round_trips)
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


_ANNOTATE_LINE: Final = re.compile(r"^\s*([\d,]+)\s+(?:\([\s\d.]+%\)\s+)?(\S.*?)\s*$")



@contextlib.contextmanager
def profiling_threads(profiles: list[cProfile.Profile] | None) -> Iterator[None]:
    """While inside, profile the threads started (None: profile nothing),
    one ``cProfile.Profile`` per thread appended to *profiles* (one shared
    by threads would mix their call stacks); on 3.12+, where cProfile is a
    sys.monitoring tool global to the process and a second profile cannot
    be enabled, one profile of every thread."""
    if profiles is None:
        yield
        return
    if sys.version_info >= (3, 12):
        shared = cProfile.Profile()
        profiles.append(shared)
        shared.enable()
        try:
            yield
        finally:
            shared.disable()
    else:
        def start(*args: object) -> None:
            profiles.append(cProfile.Profile())
            profiles[-1].enable()

        threading.setprofile(start)
        try:
            yield
        finally:
            threading.setprofile(None)  # type: ignore[arg-type,unused-ignore]  # None removes the hook (typeshed varies)


def parse_annotate(text: str) -> tuple[int, dict[str, int]]:
    """(total instructions, self instructions per function) of ``callgrind_annotate`` output."""
    total = 0
    per_function: dict[str, int] = {}
    in_functions = False
    for line in text.splitlines():
        match = _ANNOTATE_LINE.match(line)
        if match is None:
            continue
        count, rest = int(match[1].replace(",", "")), match[2]
        if rest.startswith("PROGRAM TOTALS") or rest.startswith("(PROGRAM TOTALS"):
            total = count
            continue
        if "file:function" in rest:
            in_functions = True
            continue
        if ":" in rest:
            in_functions = True
            name = re.sub(r"\s*\[[^\]]*\]$", "", rest)  # drop the object file
            name = re.sub(r"'\d+$", "", name)  # fold recursion levels (_PyEval_EvalFrameDefault'2)
            path, _, function = name.rpartition(":")
            name = f"{Path(path).name}:{function}"  # the build directory says nothing
            per_function[name] = per_function.get(name, 0) + count
    if not total and in_functions:
        total = sum(per_function.values())
    return total, per_function


def _callgrind(kind: str, round_trips: int, tmp: str) -> tuple[int, dict[str, int]]:
    # Once without valgrind first: a module compiled in one traced run and
    # loaded from its .pyc in the other would not cancel out.
    subprocess.run([sys.executable, "-m", "tests.bench.callgrind_udp", "--serve", kind, "1", *_process_flag()],
                   cwd=ROOT, check=True, timeout=120)
    out = os.path.join(tmp, f"callgrind.{kind}.{round_trips}")
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m",
         "tests.bench.callgrind_udp", "--serve", kind, str(round_trips), *_process_flag()],
        cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800,
    )
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", out], check=True, capture_output=True, text=True, timeout=300
    ).stdout
    return parse_annotate(text)


_CLIENT_PROCESS = True  # main() --client-thread sets it False


def _process_flag() -> list[str]:
    return [] if _CLIENT_PROCESS else ["--client-thread"]


def _python_calls(kind: str, round_trips: int) -> list[tuple[str, float]]:
    """Python (and builtin) functions by calls per datagram (cProfile; counts are exact)."""
    profile = cProfile.Profile()
    serve(kind, round_trips, profile=profile, client_process=_CLIENT_PROCESS)
    stats = pstats.Stats(profile)
    rows: list[tuple[str, float]] = []
    for (filename, line, name), (_, ncalls, *_rest) in stats.stats.items():  # type: ignore[attr-defined]  # pstats' documented-by-use table
        where = f"{Path(filename).name}:{line}" if line else filename
        rows.append((f"{name} ({where})", ncalls / round_trips))
    return sorted(rows, key=lambda r: -r[1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.callgrind_udp", description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="*", default=list(SYNC_KINDS), choices=KINDS,
                        help=f"default: {' '.join(SYNC_KINDS)} (uvloop only when installed)")
    parser.add_argument("--small", type=int, default=200, help="round trips of the first run (default 200)")
    parser.add_argument("--large", type=int, default=1200, help="round trips of the second run (default 1200)")
    parser.add_argument("--top", type=int, default=15, help="functions listed per kind (default 15)")
    parser.add_argument("--client-thread", action="store_true",
                        help="the client in a thread of the traced process (the first version of this harness: "
                             "the counts then include the client and depend on how the two threads interleave)")
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=2, metavar=("HOST:PORT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global _CLIENT_PROCESS
    _CLIENT_PROCESS = not args.client_thread
    if args.client:
        host, _, port = args.client[0].rpartition(":")
        _client((host, int(port)), int(args.client[1]))
        return 0
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), client_process=_CLIENT_PROCESS)
        return 0
    if not 0 < args.small < args.large:
        parser.error("need 0 < --small < --large")
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        raise SystemExit("valgrind (with callgrind_annotate) is not installed")
    if args.kinds == list(SYNC_KINDS) and importlib.util.find_spec("uvloop") is None:
        args.kinds.remove("uvloop")
    n = args.large - args.small
    where = "a client thread in the traced process" if args.client_thread else "the server process only (client in a child)"
    out = [f"# UDP echo: instructions per datagram (callgrind, {args.large} - {args.small} round trips; {where})", ""]
    per_kind: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="cs-callgrind-") as tmp:
        for kind in args.kinds:
            total_small, small = _callgrind(kind, args.small, tmp)
            total_large, large = _callgrind(kind, args.large, tmp)
            per_kind[kind] = (total_large - total_small) / n
            deltas = sorted(
                ((name, (count - small.get(name, 0)) / n) for name, count in large.items()), key=lambda x: -x[1]
            )
            out += [f"## {kind}: {per_kind[kind]:,.0f} instructions per datagram", "",
                    "| C function (self) | instructions/datagram | share |", "|---|--:|--:|"]
            out += [f"| `{name}` | {d:,.0f} | {d / per_kind[kind]:.1%} |" for name, d in deltas[: args.top]]
            calls = _python_calls(kind, args.small)
            out += ["", f"Python and builtin function calls per datagram: {sum(c for _, c in calls):.1f}", "",
                    "| Python function | calls/datagram |", "|---|--:|"]
            out += [f"| `{name}` | {c:.2f} |" for name, c in calls[: args.top]]
            out.append("")
    if "stdlib" in per_kind:
        out += [f"- {k}: {v / per_kind['stdlib']:.2f}x stdlib's instructions per datagram" for k, v in per_kind.items()]
    if "uvloop" in per_kind:
        # The benchmark's udp16 target, in instructions: uvloop's cost over ours.
        out += [f"- {k}: {per_kind['uvloop'] / v:.2f}x uvloop (uvloop's instructions per datagram over {k}'s)"
                for k, v in per_kind.items() if k != "uvloop"]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
