"""Context switches, futex calls and kernel time per request of one benchmark scenario (issue 18).

    python -m tests.bench.switches [--scenario udp16|tls-persistent|tcp16|http-min|...]
                                   [--kinds native-pool stdlib-threading ...] [--clients N] [--duration 2]
                                   [--repeats N]

Each kind's benchmark server (``tests.bench.bench_servers KIND FAMILY``,
pinned to one core as ``run.py`` pins it) serves the scenario's client
(``loadgen``, or ``wrk`` for the HTTP and TLS scenarios, pinned to the other
core) while ``perf stat -p`` counts the server's context switches,
``futex(2)`` calls, wake-ups and system calls (software events and
tracepoints: no hardware counters needed) over the measured seconds.
Divided by the requests served, these hardly move with other load on the
machine, unlike req/s: a thread handing a request to another pays in
switches and futex calls (the GIL, the hand-off's wait), whatever the
machine's speed.  Server CPU per request is printed beside them, split into
user and system time (``/proc/PID/stat``), as wall-clock figures (they move
with load).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Final, cast

from . import clients, run

__all__ = ("EVENTS", "main", "measure")

EVENTS: Final = (
    "context-switches",
    "syscalls:sys_enter_futex",
    "sched:sched_wakeup",
    "raw_syscalls:sys_enter",
)
_WRK_MODES: Final = ("wrk", "wrk-close", "wrk-tls")


def _perf(
    pid: int, command: list[str], timeout: float, preexec: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    """``perf stat`` of :data:`EVENTS` in *pid* and its child processes (a
    forking or prefork server's; their threads as they are when it starts)
    while *command* runs (its stdout is the command's, its stderr perf's report)."""
    pids = ",".join(str(p) for p in run._descendants(pid))
    perf = subprocess.run(
        ["perf", "stat", "-x,", "-e", ",".join(EVENTS), "-p", pids, "--", *command],
        capture_output=True, text=True, timeout=timeout, preexec_fn=preexec,
    )
    if perf.returncode != 0:
        raise RuntimeError(f"perf stat -- {command[0]} failed ({perf.returncode}): {perf.stderr.strip()[-500:]}")
    return perf


def measure(kind: str, scenario_name: str, clients_: int, duration: float, warmup: float = 0.5) -> dict[str, float]:
    """Per request: each of :data:`EVENTS`, ``cpu_us``, ``user_us`` and ``sys_us``; plus ``requests``."""
    scenario = next(s for s in run.SCENARIOS if s.name == scenario_name)
    if scenario.mode not in _WRK_MODES + ("udp", "tcp", "tcp-cpr", "unix"):
        raise SystemExit(f"scenario {scenario_name!r}: its client ({scenario.mode}) is not supported here")
    cpus = run._cpus()
    client_cpu = cpus.client

    def pin() -> None:
        if client_cpu is not None:
            os.sched_setaffinity(0, {client_cpu})

    with tempfile.TemporaryDirectory(prefix="switches-") as tmpdir:
        tls = run._tls_files(tmpdir) if scenario.family == "https-min" else None
        address = os.path.join(tmpdir, "bench.sock") if scenario.family == "unix" else "127.0.0.1:0"
        proc, target = run._start_server(kind, scenario, address, cpus, tls)
        try:
            if scenario.mode in _WRK_MODES:
                # A warm-up run, then wrk's measured run under perf: perf counts while wrk runs.
                url = run.wrk_url(scenario, target)
                close = scenario.mode == "wrk-close"
                clients.run_wrk(url, clients_, max(warmup, 1.0), close=close, preexec=pin)
                before = run.cpu_times(proc.pid)[:2]
                perf = _perf(proc.pid, clients.wrk_command(url, clients_, duration, close=close), duration + 60, pin)
                after = run.cpu_times(proc.pid)[:2]
                requests = cast(int, clients.parse_wrk(perf.stdout, clients_)["requests"])  # parse_wrk's int
            else:
                # loadgen measures after its warm-up: perf counts over the same seconds.
                gen = subprocess.Popen(
                    [str(run.build_loadgen()), scenario.mode, target, str(clients_), str(duration), str(warmup)],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=pin,
                    start_new_session=True,
                )
                try:
                    time.sleep(warmup)
                    before = run.cpu_times(proc.pid)[:2]
                    perf = _perf(proc.pid, ["sleep", str(duration)], duration + 60)
                    after = run.cpu_times(proc.pid)[:2]
                    stdout, _ = gen.communicate(timeout=duration + 30)
                finally:
                    if gen.poll() is None:
                        gen.kill()
                        gen.wait()
                requests = int(json.loads(stdout)["requests"])
        finally:
            run._stop_server(proc)
    per = max(requests, 1)
    user, system = ((a - b) * 1e6 / per for a, b in zip(after, before))
    counts: dict[str, float] = {"requests": float(requests), "cpu_us": user + system, "user_us": user, "sys_us": system}
    for line in perf.stderr.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2] in EVENTS and fields[0].replace(".", "", 1).isdigit():
            counts[fields[2]] = float(fields[0]) / per
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.switches", description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="udp16", help="a benchmark scenario (default udp16)")
    parser.add_argument("--kinds", nargs="*", default=["stdlib-threading", "native-pool"],
                        help="bench_servers kinds (default: stdlib-threading native-pool)")
    parser.add_argument("--clients", type=int, default=None, help="default: the scenario's")
    parser.add_argument("--duration", type=float, default=2.0, help="measured seconds per kind (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per kind, interleaved (default 1)")
    args = parser.parse_args(argv)
    if shutil.which("perf") is None:
        raise SystemExit("perf is not installed")
    names = [s.name for s in run.SCENARIOS]
    if args.scenario not in names:
        raise SystemExit(f"unknown scenario {args.scenario!r}; one of: {', '.join(names)}")
    scenario = next(s for s in run.SCENARIOS if s.name == args.scenario)
    n = args.clients or scenario.clients
    short = [e.rpartition(":")[2] for e in EVENTS]
    print(f"# {scenario.title}, {n} clients: per request (perf stat -p, {args.duration:g} s; "
          f"Python {sys.version.split()[0]})")
    print()
    print("| kind | requests | " + " | ".join(short) + " | CPU µs | user µs | sys µs |")
    print("|---|--:|" + "--:|" * len(EVENTS) + "--:|--:|--:|")
    for _ in range(args.repeats):
        for kind in args.kinds:
            c = measure(kind, args.scenario, n, args.duration)
            cells = " | ".join(f"{c[e]:.2f}" if e in c else "n/a" for e in EVENTS)
            print(f"| {kind} | {c['requests']:.0f} | {cells} | {c['cpu_us']:.1f} | {c['user_us']:.1f} "
                  f"| {c['sys_us']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
