"""What observing costs per request: instruction counts under callgrind (issue 15).

    python -m tests.bench.callgrind_observers [--kinds none noop metrics access_log] [--small N] [--large N]

Instruction counts do not depend on other load on the machine.  Each kind
serves requests in one process on the in-memory fakes (``MemoryTransport``,
``InlineDispatcher``, a handler that does nothing), through
``handle_request()``: the whole request path, no socket.  Kinds: ``none``
(no observer), ``noop`` (one ``BaseObserver``), ``metrics`` (a
``MetricsObserver``), ``access_log`` (an ``AccessLog`` at INFO into a
handler writing to ``os.devnull``).  Each runs twice under
``valgrind --tool=callgrind`` with *small* and *large* requests; the
difference divided by ``large - small`` is the cost of one request, the
interpreter's start and the imports cancelled out (each kind runs once
outside valgrind first, so no run compiles ``.pyc`` files).

    python -m tests.bench.callgrind_observers --serve KIND N    # the workload itself
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from composable_server import Observer

__all__ = ("KINDS", "main", "measure", "serve")

ROOT: Final = Path(__file__).resolve().parent.parent.parent
KINDS: Final = ("none", "noop", "metrics", "access_log")


def _nothing(request: str, client_address: str, server: object) -> None:
    """The handler: nothing, so the request path is all that is counted."""


def serve(kind: str, requests: int) -> None:
    """Serve *requests* requests on the fakes with the observers of *kind*."""
    from composable_server import Server
    from composable_server.testing import InlineDispatcher, MemoryAcceptor, MemoryTransport

    # Observer names are imported only for the kinds that use them, so `none`
    # also runs on a tree from before observers existed (the baseline).
    observers: list[Observer] = []
    if kind == "noop":
        from composable_server import BaseObserver

        observers.append(BaseObserver())
    elif kind == "metrics":
        from prometheus_client import CollectorRegistry

        from composable_server.metrics import MetricsObserver

        observers.append(MetricsObserver(transport="memory", address="memory", registry=CollectorRegistry()))
    elif kind == "access_log":
        from composable_server.observers import AccessLog

        logger = logging.getLogger("bench.access")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(logging.FileHandler(os.devnull))
        observers.append(AccessLog(logger))
    transport: MemoryTransport[str, str] = MemoryTransport("memory")
    server: Server[str, str] = (
        # No observers: no keyword either, so `none` also runs on a tree without them (the baseline).
        Server(transport=transport, acceptor=MemoryAcceptor(), handler=_nothing, dispatcher=InlineDispatcher())
        if not observers
        else Server(
            transport=transport,
            acceptor=MemoryAcceptor(),
            handler=_nothing,
            dispatcher=InlineDispatcher(),
            observers=observers,
        )
    )
    with server:
        for _ in range(requests):
            transport.connect("request", "client")
            server.handle_request()


# A fixed hash seed: with a random one, dict and set layouts differ from run
# to run and so does the count (seen: +-200 instructions per request).
_ENV: Final = {**os.environ, "PYTHONHASHSEED": "0"}


def measure(
    kinds: Sequence[str] = KINDS, small: int = 200, large: int = 1200, *, root: Path = ROOT
) -> dict[str, float]:
    """Instructions per request of each kind in *kinds* (valgrind must be
    installed), on the tree at *root* (another checkout: a baseline)."""
    per: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            # Once outside valgrind first: the first import of a module writes
            # its .pyc, which would be counted in the small run only.
            subprocess.run(
                [sys.executable, "-m", "tests.bench.callgrind_observers", "--serve", kind, "1"],
                cwd=root,
                check=True,
                timeout=120,
                env=_ENV,
            )
            counts = [_instructions(kind, n, tmp, root) for n in (small, large)]
            per[kind] = (counts[1] - counts[0]) / (large - small)
    return per


def _instructions(kind: str, requests: int, tmp: str, root: Path) -> int:
    out = os.path.join(tmp, f"callgrind.{kind}.{requests}")
    result = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "tests.bench.callgrind_observers",
            "--serve",
            kind,
            str(requests),
        ],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
        env=_ENV,
    )
    match = re.search(r"Collected : (\d+)", result.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count in callgrind's output: {result.stderr[-500:]}")
    return int(match.group(1))


def main(argv: Sequence[str] | None = None) -> int:
    """Measure each kind; print instructions per request."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=1200)
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "N"))
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed", file=sys.stderr)
        return 2
    print(f"{'kind':<12} {'instructions/request':>22} {'vs none':>10}")
    per = measure(args.kinds, args.small, args.large)
    base = per.get("none")
    for kind, count in per.items():
        extra = "" if base is None else f"{count - base:+10.0f}"
        print(f"{kind:<12} {count:>22.0f} {extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
