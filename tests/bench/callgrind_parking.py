"""What parking costs per message: instruction counts under callgrind (issue 17).

    python -m tests.bench.callgrind_parking [--kinds inplace parked parked-sync parked-lean] [--small N]
        [--large N] [--top K] [--client-process]

Instruction counts do not depend on other load on the machine.  Each kind
is a native ``Server`` on loopback TCP whose ``serve_forever()`` runs in a
thread (``run_forever()`` for uvloop); the client in the main thread (with
``--client-process`` in a child process, which valgrind does not trace:
the counts are then the server's alone) keeps one connection and sends a
32-byte line, reads its echo, *N* times:

``inplace``
    ``ThreadPoolDispatcher(8)`` with a ``StreamRequestHandler`` looping over
    ``rfile``: one worker holds the connection (the classic shape);
``parked``
    ``ThreadPoolDispatcher(8)`` with a ``ParkingRequestHandler`` echo: after
    each line the connection goes back to the loop's poll set and the next
    line is dispatched to a worker again (the parked round trip);
``parked-sync``
    the same handler on ``SyncDispatcher``: the loop serves the message
    itself, so no thread hand-off is counted;
``parked-lean``
    the lean line mode on ``SyncDispatcher``: a ``LineHandler`` echo
    (``make_tcp_server(line_handler=...)``), whose kept connection the loop
    serves with one ``recv``, one ``handle_line`` and one ``sendall``, no
    job and no handler object;
``uvloop``
    the benchmark's asyncio ``StreamReader.readline()`` echo on uvloop (the
    ``tcp128`` target); only with ``--client-process`` (uvloop runs in C:
    a client thread in the traced process would count as much as it).

Each kind runs twice under ``valgrind --tool=callgrind`` with *small* and
*large* round trips; the difference divided by ``large - small`` is the
cost of one message, with the interpreter's start, the imports, the accept
and the first handshake cancelled out.  The same subtraction per C function
(self cost) gives the top functions per message, and a cProfile run of the
server's threads (call counts are deterministic) the Python calls per message.

    python -m tests.bench.callgrind_parking --serve KIND N    # the workload itself
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from .callgrind_udp import ROOT, parse_annotate, profiling_threads

__all__ = ("KINDS", "main", "serve")

KINDS: Final = ("inplace", "parked", "parked-sync", "parked-lean", "uvloop")
MESSAGE: Final = b"00000000 0000000000 xxxxxxxxxxxx\n"[:31] + b"\n"


class _UvloopEcho:
    """The benchmark's asyncio stream echo on uvloop, shaped as a server:
    ``serve_forever`` runs the loop, ``shutdown`` stops it from another thread."""

    def __init__(self) -> None:
        try:
            import uvloop  # optional: the `bench` extra
        except ImportError:
            raise SystemExit("uvloop is not installed (pip install composable-server[bench])") from None
        from .bench_asyncio import _async_stream_echo

        self._loop = loop = uvloop.new_event_loop()
        self._server = loop.run_until_complete(asyncio.start_server(_async_stream_echo, "127.0.0.1", 0))
        self.server_address: tuple[str, int] = self._server.sockets[0].getsockname()

    def serve_forever(self) -> None:
        self._loop.run_forever()

    def shutdown(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)

    def server_close(self) -> None:
        self._server.close()
        self._loop.run_until_complete(self._server.wait_closed())
        self._loop.close()


def _client(address: tuple[str, int], round_trips: int) -> None:
    """The echo client: *round_trips* sequential line round trips on one connection."""
    client = socket.create_connection(address)
    try:
        client.settimeout(60.0)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        for _ in range(round_trips):
            client.sendall(MESSAGE)
            got = b""
            while len(got) < len(MESSAGE):
                chunk = client.recv(64)
                if not chunk:
                    raise RuntimeError("the server closed the connection")
                got += chunk
            if got != MESSAGE:
                raise RuntimeError("the echo differs from the request")
    finally:
        client.close()


def _run_client(address: tuple[str, int], round_trips: int, client_process: bool) -> None:
    if client_process:
        subprocess.run(
            [sys.executable, "-m", "tests.bench.callgrind_parking", "--client", f"{address[0]}:{address[1]}",
             str(round_trips)],
            cwd=ROOT, check=True, timeout=1800,
        )
    else:
        _client(address, round_trips)


def serve(
    kind: str, round_trips: int, *, profiles: list[cProfile.Profile] | None = None, client_process: bool = False
) -> None:
    """Serve *round_trips* line echoes on one connection to a *kind* server
    (the client in this process's main thread, or with *client_process* in a child)."""
    from composable_server import Server, StreamAcceptor, TCPTransport, ThreadPoolDispatcher
    from composable_server.dispatchers import SyncDispatcher
    from composable_server.handlers import LineResponder
    from composable_server.interfaces import Dispatcher, HandlerFactory

    from .bench_servers import _LeanLineEcho, _ParkingEcho, _StreamEcho

    if kind not in KINDS:
        raise SystemExit(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "uvloop":
        if not client_process:
            raise SystemExit("uvloop is measured with --client-process only (see the module's docstring)")
        echo = _UvloopEcho()
        loop_thread = threading.Thread(target=echo.serve_forever)
        loop_thread.start()
        try:
            _run_client(echo.server_address, round_trips, client_process)
        finally:
            echo.shutdown()
            loop_thread.join()
            echo.server_close()
        return
    handler: HandlerFactory[socket.socket, object]
    if kind == "inplace":
        handler = _StreamEcho
    elif kind == "parked-lean":
        handler = LineResponder(_LeanLineEcho())
    else:
        handler = _ParkingEcho
    dispatcher: Dispatcher = SyncDispatcher() if kind in ("parked-sync", "parked-lean") else ThreadPoolDispatcher(8)
    with profiling_threads(profiles):
        server: Server[socket.socket, object] = Server(
            transport=TCPTransport(("127.0.0.1", 0)), acceptor=StreamAcceptor(), handler=handler, dispatcher=dispatcher
        )
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            _run_client(server.server_address, round_trips, client_process)  # type: ignore[arg-type]  # (host, port) for AF_INET
        finally:
            server.shutdown()
            thread.join()
            server.server_close()


def _callgrind(kind: str, round_trips: int, tmp: str, client_process: bool) -> tuple[int, dict[str, int]]:
    flag = ["--client-process"] if client_process else []
    # Once without valgrind first: a module compiled in one traced run and
    # loaded from its .pyc in the other would not cancel out.
    subprocess.run([sys.executable, "-m", "tests.bench.callgrind_parking", "--serve", kind, "1", *flag], cwd=ROOT,
                   check=True, timeout=120)
    out = f"{tmp}/callgrind.{kind}.{round_trips}"
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m",
         "tests.bench.callgrind_parking", "--serve", kind, str(round_trips), *flag],
        cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800,
    )
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", out], check=True, capture_output=True, text=True, timeout=300
    ).stdout
    return parse_annotate(text)


def _python_calls(kind: str, round_trips: int, client_process: bool) -> list[tuple[str, float]]:
    """Python (and builtin) functions by calls per message (cProfile over the server's threads)."""
    profiles: list[cProfile.Profile] = []
    serve(kind, round_trips, profiles=profiles, client_process=client_process)
    stats = pstats.Stats(*profiles)
    rows: list[tuple[str, float]] = []
    for (filename, line, name), (_, ncalls, *_rest) in stats.stats.items():  # type: ignore[attr-defined]  # pstats' documented-by-use table
        where = f"{Path(filename).name}:{line}" if line else filename
        rows.append((f"{name} ({where})", ncalls / round_trips))
    return sorted(rows, key=lambda r: -r[1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.callgrind_parking",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="*", default=list(KINDS), choices=KINDS)
    parser.add_argument("--small", type=int, default=200, help="round trips of the first run (default 200)")
    parser.add_argument("--large", type=int, default=1200, help="round trips of the second run (default 1200)")
    parser.add_argument("--top", type=int, default=15, help="functions listed per kind (default 15)")
    parser.add_argument("--no-python", action="store_true", help="skip the cProfile call counts")
    parser.add_argument("--client-process", action="store_true",
                        help="the client in a child process, untraced: the server's counts alone (needed for uvloop)")
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=2, metavar=("HOST:PORT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        host, _, port = args.client[0].rpartition(":")
        _client((host, int(port)), int(args.client[1]))
        return 0
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), client_process=args.client_process)
        return 0
    if "uvloop" in args.kinds and not args.client_process:
        if args.kinds != list(KINDS):
            parser.error("uvloop is measured with --client-process only")
        args.kinds.remove("uvloop")
    if not 0 < args.small < args.large:
        parser.error("need 0 < --small < --large")
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        raise SystemExit("valgrind (with callgrind_annotate) is not installed")
    n = args.large - args.small
    client = "client in a child process, untraced" if args.client_process else "client thread traced too"
    out = [f"# Line echo on one connection: instructions per message (callgrind, {args.large} - {args.small} "
           f"round trips; {client})", ""]
    per_kind: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="cs-callgrind-") as tmp:
        for kind in args.kinds:
            total_small, small = _callgrind(kind, args.small, tmp, args.client_process)
            total_large, large = _callgrind(kind, args.large, tmp, args.client_process)
            per_kind[kind] = (total_large - total_small) / n
            deltas = sorted(
                ((name, (count - small.get(name, 0)) / n) for name, count in large.items()), key=lambda x: -x[1]
            )
            out += [f"## {kind}: {per_kind[kind]:,.0f} instructions per message", "",
                    "| C function (self) | instructions/message | share |", "|---|--:|--:|"]
            out += [f"| `{name}` | {d:,.0f} | {d / per_kind[kind]:.1%} |" for name, d in deltas[: args.top]]
            if not args.no_python and kind != "uvloop":
                calls = _python_calls(kind, args.small, args.client_process)
                out += ["", f"Python and builtin function calls per message: {sum(c for _, c in calls):.1f}", "",
                        "| Python function | calls/message |", "|---|--:|"]
                out += [f"| `{name}` | {c:.2f} |" for name, c in calls[: args.top]]
            out.append("")
    if "inplace" in per_kind:
        base = per_kind["inplace"]
        out += [f"- {k}: {v - base:+,.0f} instructions per message vs inplace" for k, v in per_kind.items()
                if k != "inplace"]
    if "uvloop" in per_kind:
        out += [f"- {k}: {per_kind['uvloop'] / v:.2f}x uvloop (uvloop's instructions per message over {k}'s)"
                for k, v in per_kind.items() if k != "uvloop"]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
