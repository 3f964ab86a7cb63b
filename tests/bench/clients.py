"""The compiled external clients of the HTTP and TLS scenarios: wrk and openssl s_time.

Both are run pinned to the load core, like ``loadgen``, and both give results
in the shape of ``loadgen``'s JSON (``requests``, ``rps``, ``p50_us``,
``p99_us``, ``errors``, ``clients_served``), so the runner treats every
scenario alike.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Final

__all__ = ("WRK_MISSING", "STIME_MISSING", "parse_s_time", "parse_wrk", "run_s_time", "run_wrk", "wrk_command")

WRK_MISSING: Final = "wrk is not installed (Debian: apt-get install wrk): HTTP scenarios skipped"
STIME_MISSING: Final = "openssl is not installed: the TLS handshake scenario skipped"

_UNITS_US: Final = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0, "m": 60_000_000.0}


def _to_us(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"expected a wrk duration such as 1.23ms, got {text!r}")
    return float(match[1]) * _UNITS_US[match[2]]


def _count(text: str) -> float:
    """A wrk count: ``123``, ``12.3k``, ``1.2M``."""
    match = re.fullmatch(r"([\d.]+)([kMG]?)", text)
    if match is None:
        raise ValueError(f"expected a wrk count, got {text!r}")
    return float(match[1]) * {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}[match[2]]


def parse_wrk(output: str, connections: int) -> dict[str, object]:
    """The figures of one ``wrk --latency`` run.

    Raises:
        ValueError: *output* is not wrk's report (no ``Requests/sec`` line or
            no latency distribution).
    """
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    total = re.search(r"^\s*(\d+) requests in ([\d.]+\w+),", output, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if rps is None or total is None or p50 is None or p99 is None:
        raise ValueError(f"not a wrk --latency report: {output.strip()[-500:]!r}")
    errors = 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket_errors:
        errors += sum(int(x) for x in socket_errors.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        errors += int(non2xx[1])
    return {
        "requests": int(total[1]),
        "seconds": _to_us(total[2]) / 1e6,
        "rps": float(rps[1]),
        "p50_us": _to_us(p50[1]),
        "p99_us": _to_us(p99[1]),
        "errors": errors,
        "clients_served": connections,  # wrk does not report it per connection
    }


def run_wrk(
    url: str, connections: int, duration: float, *, close: bool, preexec: Callable[[], None] | None
) -> dict[str, object]:
    """Run ``wrk`` (one thread) against *url* for *duration* seconds (rounded
    up to whole seconds: wrk's ``-d`` takes integers); its figures."""
    cmd = wrk_command(url, connections, duration, close=close)
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=preexec, timeout=duration + 31)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return parse_wrk(proc.stdout, connections)


def wrk_command(url: str, connections: int, duration: float, *, close: bool) -> list[str]:
    """The ``wrk`` command line of :func:`run_wrk` (one thread; *duration*
    rounded to whole seconds, as wrk's ``-d`` takes integers)."""
    if shutil.which("wrk") is None:
        raise RuntimeError(WRK_MISSING)
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", "--timeout", "5s"]
    if close:
        cmd += ["-H", "Connection: close"]
    return cmd + [url]


def parse_s_time(output: str) -> int:
    """The connections of one ``openssl s_time`` run.

    Its ``real seconds`` are whole seconds of ``time(NULL)``, and a run lasts
    between N and N+1 seconds depending on where the second boundary falls,
    so the caller times the run itself.

    Raises:
        ValueError: no ``N connections in T real seconds`` line.
    """
    match = re.search(r"(\d+) connections in (\d+) real seconds", output)
    if match is None:
        raise ValueError(f"not an openssl s_time report: {output.strip()[-500:]!r}")
    return int(match[1])


def run_s_time(
    target: str, clients: int, duration: float, *, preexec: Callable[[], None] | None
) -> dict[str, object]:
    """Run *clients* ``openssl s_time -new`` processes (each a sequential
    loop of full handshakes, no payload) against *target* for *duration*
    seconds (whole seconds); all their handshakes over the wall time from
    their start to the last one's end (timed here: see :func:`parse_s_time`).  s_time gives no
    latency distribution: p50/p99 are 0 (not measured)."""
    if shutil.which("openssl") is None:
        raise RuntimeError(STIME_MISSING)
    seconds = max(1, round(duration))
    cmd = ["openssl", "s_time", "-connect", target, "-new", "-time", str(seconds)]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec)
        for _ in range(clients)
    ]
    total, failed = 0, []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        try:
            total += parse_s_time(out)
        except ValueError as exc:
            failed.append(f"{exc}; stderr {err.strip()[-300:]!r}")
    wall = time.perf_counter() - t0
    if failed:
        raise RuntimeError(f"{len(failed)} of {clients} s_time runs failed: {failed[0]}")
    return {
        "requests": total, "seconds": wall, "rps": total / wall, "p50_us": 0.0, "p99_us": 0.0,
        "errors": 0, "clients_served": clients,
    }
