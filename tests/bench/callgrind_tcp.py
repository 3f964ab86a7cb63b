"""Where a stream request's time goes: instruction counts under callgrind (issue 18).

    python -m tests.bench.callgrind_tcp [--mode persistent|cpr] [--family tcp|unix] [--kinds ...]
                                        [--small N] [--large N] [--top K] [--repeat R]

The stream twin of :mod:`tests.bench.callgrind_udp`.  Instruction counts do
not depend on other load on the machine.  Each kind (the benchmark's names,
:data:`tests.bench.bench_servers.KINDS`, with its echo handlers: stdlib's
and compat's ``StreamRequestHandler`` looping over ``rfile``, the native
``StreamRequestHandler``, the parking kinds' ``ParkingRequestHandler``)
serves a fixed number of 32-byte line echoes in one process:
``serve_forever()`` in a thread (its workers in theirs), and a client in a
child process, which valgrind does not trace, one round trip at a time:

``persistent`` (``tcp16``, ``tcp128``, ``unix16``)
    one connection, *N* lines sent and echoed on it;
``cpr`` (``cpr16``)
    a new connection per round trip, as the benchmark's load generator
    makes them: connect, send the line, shut down the write side, read the
    echo and the EOF, close (``SO_LINGER`` 0: no TIME_WAIT).

Each kind runs twice under ``valgrind --tool=callgrind``, with *small* and
*large* round trips; the difference divided by ``large - small`` is the
cost of one request, with the interpreter's start, the imports (and for
``persistent`` the accept) cancelled out.  With threads, the count can move
with how they interleave (which thread wakes first, whether a worker finds
the next line already there): ``--repeat`` runs the pair again and reports
the spread.  The same subtraction per C function (``callgrind_annotate``,
self cost) gives the top functions per request, and a profile per server
thread (``threading.setprofile``; call counts are deterministic) the Python
functions called per request.  The summary sets each kind against its
stdlib twin (:data:`tests.bench.run.TWINS`).

    python -m tests.bench.callgrind_tcp --serve KIND FAMILY MODE N    # the workload itself
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Protocol, cast

from .callgrind_udp import ROOT, parse_annotate, profiling_threads

__all__ = ("DEFAULT_KINDS", "FAMILIES", "KINDS", "MODES", "main", "serve")

KINDS: Final = ("stdlib-sync", "compat-sync", "native-sync", "stdlib-threading", "compat-threading",
                "native-threading", "native-pool", "native-park-pool", "native-park-sync")
FAMILIES: Final = ("tcp", "unix")
MODES: Final = ("persistent", "cpr")
# The kinds of the benchmark's scenarios that have a stdlib twin (run.py's
# tcp16 and tcp128, unix16, cpr16), by (mode, family).
DEFAULT_KINDS: Final = {
    ("persistent", "tcp"): ("stdlib-threading", "compat-threading", "native-threading", "native-pool",
                            "native-park-pool", "native-park-sync"),
    ("persistent", "unix"): ("stdlib-threading", "compat-threading", "native-threading", "native-pool"),
    ("cpr", "tcp"): ("stdlib-sync", "compat-sync", "native-sync", "stdlib-threading", "compat-threading",
                     "native-threading", "native-pool"),
    ("cpr", "unix"): ("stdlib-sync", "compat-sync", "native-sync", "stdlib-threading", "compat-threading",
                      "native-threading", "native-pool"),
}
MESSAGE: Final = b"00000000 0000000000 xxxxxxxxxxxx\n"[:31] + b"\n"


class _Serving(Protocol):
    @property
    def server_address(self) -> object: ...

    def serve_forever(self, poll_interval: float = ...) -> None: ...

    def shutdown(self) -> None: ...

    def server_close(self) -> None: ...


def _make(kind: str, family: str, address: str | tuple[str, int]) -> _Serving:
    """A *kind* line echo server for *family* on *address*, as bench_servers builds it."""
    from composable_server import (
        Server,
        StreamAcceptor,
        TCPTransport,
        ThreadingDispatcher,
        ThreadPoolDispatcher,
        UnixStreamTransport,
        compat,
    )
    from composable_server.dispatchers import SyncDispatcher
    from composable_server.factories import make_tcp_server, make_unix_stream_server
    from composable_server.interfaces import Dispatcher, Transport

    from . import bench_servers as b

    unix = family == "unix"
    if kind.startswith("stdlib-"):
        stdlib: dict[str, type[socketserver.BaseServer]] = {
            "stdlib-sync": socketserver.UnixStreamServer if unix else socketserver.TCPServer,
            "stdlib-threading": socketserver.ThreadingUnixStreamServer if unix else socketserver.ThreadingTCPServer,
        }
        return stdlib[kind](address, b._StdlibStreamEcho)
    if kind.startswith("compat-"):
        twins: dict[str, type[compat.BaseServer]] = {
            "compat-sync": compat.UnixStreamServer if unix else compat.TCPServer,
            "compat-threading": compat.ThreadingUnixStreamServer if unix else compat.ThreadingTCPServer,
        }
        return twins[kind](address, b._CompatStreamEcho)
    dispatchers: dict[str, type[Dispatcher] | tuple[int, int]] = {
        "native-sync": SyncDispatcher, "native-threading": ThreadingDispatcher,
        "native-pool": (b.POOL_WORKERS, 256), "native-park-pool": (b.PARK_WORKERS, 256),
        "native-park-sync": SyncDispatcher,
    }
    spec = dispatchers[kind]
    dispatcher = ThreadPoolDispatcher(spec[0], queue_size=spec[1]) if isinstance(spec, tuple) else spec()
    if kind.startswith("native-park-"):
        transport: Transport[socket.socket, object] = (
            UnixStreamTransport(cast("str", address)) if unix else TCPTransport(cast("tuple[str, int]", address))
        )
        return Server(transport=transport, acceptor=StreamAcceptor(), handler=b._ParkingEcho, dispatcher=dispatcher,
                      max_parked=b.MAX_PARKED)
    if unix:
        return make_unix_stream_server(cast("str", address), b._StreamEcho, dispatcher=dispatcher)
    return make_tcp_server(cast("tuple[str, int]", address), b._StreamEcho, dispatcher=dispatcher)


def _connect(family: str, address: str) -> socket.socket:
    if family == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(60.0)
        sock.connect(address)
        return sock
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=60.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
    return sock


def _read_echo(sock: socket.socket) -> None:
    got = b""
    while len(got) < len(MESSAGE):
        chunk = sock.recv(64)
        if not chunk:
            raise RuntimeError("the server closed the connection")
        got += chunk
    if got != MESSAGE:
        raise RuntimeError("the echo differs from the request")


def _client(family: str, address: str, mode: str, round_trips: int) -> None:
    """The echo client: *round_trips* sequential round trips to *address*."""
    if mode == "persistent":
        with _connect(family, address) as sock:
            for _ in range(round_trips):
                sock.sendall(MESSAGE)
                _read_echo(sock)
        return
    for _ in range(round_trips):
        with _connect(family, address) as sock:
            # As loadgen's tcp-cpr: no TIME_WAIT, the write side shut after the line.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.sendall(MESSAGE)
            sock.shutdown(socket.SHUT_WR)
            _read_echo(sock)
            if sock.recv(64):
                raise RuntimeError("more than the echo")


def serve(kind: str, family: str, mode: str, round_trips: int, *,
          profiles: list[cProfile.Profile] | None = None) -> None:
    """Serve *round_trips* echo round trips (*mode*) with a *kind* server's
    ``serve_forever`` in a thread; the client in a child process (not traced:
    the counts are the server's alone)."""
    if kind not in KINDS or family not in FAMILIES or mode not in MODES:
        raise SystemExit(f"need KIND in {KINDS}, FAMILY in {FAMILIES}, MODE in {MODES}")
    with profiling_threads(profiles), tempfile.TemporaryDirectory(prefix="cs-callgrind-tcp-") as tmp:
        server = _make(kind, family, os.path.join(tmp, "echo.sock") if family == "unix" else ("127.0.0.1", 0))
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            bound = server.server_address
            if isinstance(bound, bytes):
                bound = bound.decode()
            address = bound if isinstance(bound, str) else "{}:{}".format(*cast("tuple[str, int]", bound))
            subprocess.run(
                [sys.executable, "-m", "tests.bench.callgrind_tcp", "--client", family, address, mode,
                 str(round_trips)],
                cwd=ROOT, check=True, timeout=1800,
            )
        finally:
            server.shutdown()
            thread.join()
            server.server_close()


def _callgrind(kind: str, family: str, mode: str, round_trips: int, tmp: str) -> tuple[int, dict[str, int]]:
    workload = [sys.executable, "-m", "tests.bench.callgrind_tcp", "--serve", kind, family, mode]
    # Once without valgrind first: a module compiled in one traced run and
    # loaded from its .pyc in the other would not cancel out.
    subprocess.run([*workload, "1"], cwd=ROOT, check=True, timeout=120)
    out = os.path.join(tmp, f"callgrind.{kind}.{family}.{mode}.{round_trips}")
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *workload, str(round_trips)],
        cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800,
    )
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", out], check=True, capture_output=True, text=True, timeout=300
    ).stdout
    return parse_annotate(text)


def _python_calls(kind: str, family: str, mode: str, round_trips: int) -> list[tuple[str, float]]:
    """Python (and builtin) functions by calls per request (cProfile over the server's threads)."""
    profiles: list[cProfile.Profile] = []
    serve(kind, family, mode, round_trips, profiles=profiles)
    stats = pstats.Stats(*profiles)
    rows: list[tuple[str, float]] = []
    for (filename, line, name), (_, ncalls, *_rest) in stats.stats.items():  # type: ignore[attr-defined]  # pstats' documented-by-use table
        where = f"{Path(filename).name}:{line}" if line else filename
        rows.append((f"{name} ({where})", ncalls / round_trips))
    return sorted(rows, key=lambda r: -r[1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.callgrind_tcp", description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=MODES, default="persistent")
    parser.add_argument("--family", choices=FAMILIES, default="tcp")
    parser.add_argument("--kinds", nargs="*", choices=KINDS,
                        help="default: the kinds of the benchmark's scenario with a stdlib twin, and the twin")
    parser.add_argument("--small", type=int, default=200, help="round trips of the first run (default 200)")
    parser.add_argument("--large", type=int, default=1200, help="round trips of the second run (default 1200)")
    parser.add_argument("--top", type=int, default=15, help="functions listed per kind (default 15)")
    parser.add_argument("--repeat", type=int, default=2, help="callgrind pairs per kind, for the spread (default 2)")
    parser.add_argument("--no-python", action="store_true", help="skip the cProfile call counts")
    parser.add_argument("--serve", nargs=4, metavar=("KIND", "FAMILY", "MODE", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=4, metavar=("FAMILY", "ADDRESS", "MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        _client(args.client[0], args.client[1], args.client[2], int(args.client[3]))
        return 0
    if args.serve:
        serve(args.serve[0], args.serve[1], args.serve[2], int(args.serve[3]))
        return 0
    if not 0 < args.small < args.large or args.repeat < 1:
        parser.error("need 0 < --small < --large and --repeat >= 1")
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        raise SystemExit("valgrind (with callgrind_annotate) is not installed")
    from .run import TWINS

    kinds: list[str] = args.kinds or list(DEFAULT_KINDS[args.mode, args.family])
    n = args.large - args.small
    out = [f"# {args.family} {args.mode} line echo: instructions per request (callgrind, {args.large} - "
           f"{args.small} round trips, x{args.repeat}; the server process only, client in a child)", ""]
    per_kind: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="cs-callgrind-") as tmp:
        for kind in kinds:
            runs: list[tuple[float, dict[str, float]]] = []
            for _ in range(args.repeat):
                total_small, small = _callgrind(kind, args.family, args.mode, args.small, tmp)
                total_large, large = _callgrind(kind, args.family, args.mode, args.large, tmp)
                deltas = {name: (count - small.get(name, 0)) / n for name, count in large.items()}
                runs.append(((total_large - total_small) / n, deltas))
            per_kind[kind] = [total for total, _ in runs]
            mean = sum(per_kind[kind]) / len(runs)
            top = sorted(runs[0][1].items(), key=lambda x: -x[1])
            each = ", ".join(f"{t:,.0f}" for t in per_kind[kind])
            out += [f"## {kind}: {mean:,.0f} instructions per request ({each}; spread {_spread(per_kind[kind]):.1%})",
                    "", "| C function (self, first run) | instructions/request | share |", "|---|--:|--:|"]
            out += [f"| `{name}` | {d:,.0f} | {d / runs[0][0]:.1%} |" for name, d in top[: args.top]]
            if not args.no_python:
                calls = _python_calls(kind, args.family, args.mode, args.small)
                out += ["", f"Python and builtin function calls per request: {sum(c for _, c in calls):.1f}", "",
                        "| Python function | calls/request |", "|---|--:|"]
                out += [f"| `{name}` | {c:.2f} |" for name, c in calls[: args.top]]
            out.append("")
    out += ["| kind | instructions/request | spread | twin | twin's | ours / twin |", "|---|--:|--:|---|--:|--:|"]
    for kind, figures in per_kind.items():
        mean = sum(figures) / len(figures)
        twin = TWINS.get(kind)
        if twin in per_kind:
            twin_mean = sum(per_kind[twin]) / len(per_kind[twin])
            out.append(f"| {kind} | {mean:,.0f} | {_spread(figures):.1%} | {twin} | {twin_mean:,.0f} | "
                       f"{mean / twin_mean:.2f} |")
        else:
            out.append(f"| {kind} | {mean:,.0f} | {_spread(figures):.1%} | | | |")
    print("\n".join(out))
    return 0


def _spread(figures: Sequence[float]) -> float:
    """(max - min) / min of the runs' figures."""
    return (max(figures) - min(figures)) / min(figures)


if __name__ == "__main__":
    sys.exit(main())
