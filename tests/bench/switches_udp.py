"""Context switches and futex calls per UDP datagram under udp16's load (issue 18).

    python -m tests.bench.switches_udp [--kinds native-pool stdlib-threading ...] [--clients 16] [--duration 2]

Each kind's benchmark server (``tests.bench.bench_servers KIND udp``, pinned
to one core as ``run.py`` pins it) serves the load generator's clients
(pinned to the other core) while ``perf stat -p`` counts, over the measured
seconds, the server's context switches, ``futex(2)`` calls, wake-ups and
system calls (software events and tracepoints: no hardware counters
needed).  Divided by the datagrams served, these hardly move with other
load on the machine, unlike req/s: a thread handing a datagram to another
pays in switches and futex calls (the GIL, the hand-off's wait), whatever
the machine's speed.  Server CPU per datagram is printed beside them, as a
wall-clock figure (it moves with load).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Final

from . import run

__all__ = ("EVENTS", "main", "measure")

EVENTS: Final = (
    "context-switches",
    "syscalls:sys_enter_futex",
    "sched:sched_wakeup",
    "raw_syscalls:sys_enter",
)
_SCENARIO: Final = next(s for s in run.SCENARIOS if s.name == "udp16")


def measure(kind: str, clients: int, duration: float, warmup: float = 0.5) -> dict[str, float]:
    """Per datagram: each of :data:`EVENTS`, and ``cpu_us``; plus ``datagrams``."""
    cpus = run._cpus()
    loadgen = run.build_loadgen()
    proc, target = run._start_server(kind, _SCENARIO, "127.0.0.1:0", cpus)
    try:
        client_cpu = cpus.client

        def pin() -> None:
            if client_cpu is not None:
                os.sched_setaffinity(0, {client_cpu})

        gen = subprocess.Popen(
            [str(loadgen), "udp", target, str(clients), str(duration), str(warmup)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=pin,
        )
        time.sleep(warmup)
        cpu0, _ = run._counters(proc.pid)
        perf = subprocess.run(
            ["perf", "stat", "-x,", "-e", ",".join(EVENTS), "-p", str(proc.pid), "--", "sleep", str(duration)],
            capture_output=True, text=True, timeout=duration + 60,
        )
        cpu1, _ = run._counters(proc.pid)
        stdout, _ = gen.communicate(timeout=duration + 30)
    finally:
        run._stop_server(proc)
    datagrams = int(json.loads(stdout)["requests"])
    counts: dict[str, float] = {"datagrams": float(datagrams), "cpu_us": (cpu1 - cpu0) * 1e6 / max(datagrams, 1)}
    for line in perf.stderr.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2] in EVENTS and fields[0].replace(".", "", 1).isdigit():
            counts[fields[2]] = float(fields[0]) / max(datagrams, 1)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.switches_udp", description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="*", default=["stdlib-threading", "native-pool"],
                        help="bench_servers kinds (default: stdlib-threading native-pool)")
    parser.add_argument("--clients", type=int, default=_SCENARIO.clients, help="default: udp16's 16")
    parser.add_argument("--duration", type=float, default=2.0, help="measured seconds per kind (default 2)")
    args = parser.parse_args(argv)
    if shutil.which("perf") is None:
        raise SystemExit("perf is not installed")
    short = [e.rpartition(":")[2] for e in EVENTS]
    print(f"# UDP, {args.clients} clients: per datagram (perf stat -p, {args.duration:g} s; Python {sys.version.split()[0]})")
    print()
    print("| kind | datagrams | " + " | ".join(short) + " | CPU µs |")
    print("|---|--:|" + "--:|" * len(EVENTS) + "--:|")
    for kind in args.kinds:
        c = measure(kind, args.clients, args.duration)
        cells = " | ".join(f"{c[e]:.2f}" if e in c else "n/a" for e in EVENTS)
        print(f"| {kind} | {c['datagrams']:.0f} | {cells} | {c['cpu_us']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
