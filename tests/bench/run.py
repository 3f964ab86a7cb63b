"""The composable_server benchmark (issue 7): one command, interleaved rounds.

    .venv/bin/python -m tests.bench [--quick] [--rounds N] [--duration S] [--only SCENARIO ...]

For each scenario, each round runs every server kind once, in the same order
(A B C A B C ...), so slow drift of the machine hits every kind alike; the
report quotes the median of the rounds.  Each server runs in its own
subprocess pinned to one core (``BENCH_SERVER_CPU``); the compiled
closed-loop load generator (``loadgen.c``, built with gcc into a cache
directory) is pinned to the other.  Peak RSS is sampled from ``/proc``: the
server process plus all its descendants, summed, maximum over the run.

Writes ``tests/bench/results/latest.json`` and ``latest.md`` (not committed)
and prints the Markdown.  Every target of issue 7 is one line of the report,
``met`` or ``NOT met``, with its figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import select
import shutil
import signal
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from . import importcost
from .bench_http import HTTP_KINDS, TLS_KINDS
from .importcost import ImportCost
from .clients import STIME_MISSING, WRK_MISSING, run_s_time, run_wrk

__all__ = ("SCENARIOS", "Scenario", "build_loadgen", "main", "run_one")

HERE: Final = Path(__file__).resolve().parent
ROOT: Final = HERE.parent.parent
RESULTS: Final = HERE / "results"
SOURCE: Final = HERE / "loadgen.c"


@dataclass(frozen=True)
class Scenario:
    """One row of the table (issues 7 and 18)."""

    name: str
    title: str
    family: str  # tcp, udp, unix, or an HTTP family (bench_servers FAMILY)
    mode: str  # loadgen MODE, or wrk, wrk-close, wrk-tls, s_time (clients.py)
    clients: int
    kinds: tuple[str, ...]
    rounds_factor: int = 1  # this scenario runs --rounds x rounds_factor rounds
    silent: int = 0  # TCP connections that connect and say nothing, held open through the run
    idle: int = 0  # connections held open and silent besides the active clients (loadgen IDLE)


_PERSISTENT: Final = ("stdlib-threading", "compat-threading", "native-threading", "native-pool", "prefork")
_EVENT_LOOPS: Final = ("asyncio", "uvloop")
_FORKING: Final = ("stdlib-forking", "compat-forking", "native-forking")
# Silent TLS clients: fewer than the pool's workers (bench_servers.POOL_WORKERS,
# 160), each of which waits in its handshake for its ClientHello.
TLS_SILENT: Final = 64
TLS_SILENT_KINDS: Final = ("native-pool", "prefork", "asyncio", "uvloop")
OBSERVER_KINDS: Final = ("pool-observers-none", "pool-observers-noop", "pool-observers-metrics",
                         "pool-observers-access-log")
# Keep-alive parking (issue 17): 8 pool workers, and the serving loop alone.
_PARKING: Final = ("native-park-pool", "native-park-sync", "native-park-lean-sync")

SCENARIOS: Final = (
    Scenario("tcp16", "TCP persistent, 16 connections", "tcp", "tcp", 16,
             _PERSISTENT + ("native-park-lean-sync",) + _EVENT_LOOPS),
    # Rounds at 128 connections varied by 86-136% (issue 18): twice the rounds.
    Scenario(
        "tcp128", "TCP persistent, 128 connections", "tcp", "tcp", 128,
        _PERSISTENT + _FORKING + _PARKING + _EVENT_LOOPS, rounds_factor=2,
    ),
    # Issue 17: 10,000 connections, 16 active in a closed loop, the rest idle
    # after one request (keep-alive clients between messages).
    Scenario(
        "idle10k", "TCP persistent, 16 active + 10,000 idle connections", "tcp", "tcp", 16,
        ("native-park-pool", "native-park-lean-sync", "stdlib-threading") + _EVENT_LOOPS, idle=10_000,
    ),
    Scenario(
        "cpr16",
        "TCP new connection per request, 16 clients",
        "tcp",
        "tcp-cpr",
        16,
        ("stdlib-sync", "compat-sync", "native-sync", "stdlib-threading", "compat-threading", "native-threading",
         "native-pool", "prefork") + _EVENT_LOOPS,
    ),
    Scenario("cprfork", "TCP new connection per request, forking, 16 clients", "tcp", "tcp-cpr", 16,
             _FORKING + ("prefork",)),
    Scenario(
        "udp16",
        "UDP request/response, 16 clients",
        "udp",
        "udp",
        16,
        ("stdlib-sync", "compat-sync", "native-sync", "native-lean-sync", "stdlib-threading", "compat-threading",
         "native-threading", "native-pool") + _EVENT_LOOPS,
    ),
    Scenario(
        "unix16",
        "Unix stream persistent, 16 connections",
        "unix",
        "unix",
        16,
        ("stdlib-threading", "compat-threading", "native-threading", "native-pool", "prefork") + _EVENT_LOOPS,
    ),
    # Issue 18: HTTP through wrk (one thread, on the load core), with and without keep-alive.
    Scenario("http-min", "HTTP minimal BaseHTTPRequestHandler, keep-alive, 16 connections (wrk)", "http-min", "wrk",
             16, HTTP_KINDS),
    Scenario("http-min-close", "HTTP minimal BaseHTTPRequestHandler, Connection: close, 16 connections (wrk)",
             "http-min", "wrk-close", 16, HTTP_KINDS),
    Scenario("http-file", "HTTP SimpleHTTPRequestHandler, 128-byte file, keep-alive, 16 connections (wrk)",
             "http-file", "wrk", 16, HTTP_KINDS),
    Scenario("http-file-close", "HTTP SimpleHTTPRequestHandler, 128-byte file, Connection: close, 16 connections (wrk)",
             "http-file", "wrk-close", 16, HTTP_KINDS),
    # Issue 18: TLS.  Handshakes: 4 openssl s_time -new loops (full handshakes, no payload).
    Scenario("tls-handshake", "TLS handshakes, 4 sequential s_time clients (handshakes/s)", "https-min", "s_time", 4,
             TLS_KINDS),
    Scenario("tls-persistent", "TLS persistent, minimal HTTP/1.1 over TLS, keep-alive, 16 connections (wrk)",
             "https-min", "wrk-tls", 16, TLS_KINDS),
    # Issue 18: a silent TLS client costs the others nothing.  The same two
    # loads with TLS_SILENT connections that never send their ClientHello,
    # held open through the run.  Not for stdlib and compat: wrapping in
    # get_request runs the handshake in the accept loop, which the first
    # silent client blocks for good (no timeout: nothing is served again).
    Scenario("tls-handshake-silent", f"TLS handshakes as tls-handshake, with {TLS_SILENT} silent TLS clients",
             "https-min", "s_time", 4, TLS_SILENT_KINDS, silent=TLS_SILENT),
    Scenario("tls-persistent-silent", f"TLS persistent as tls-persistent, with {TLS_SILENT} silent TLS clients",
             "https-min", "wrk-tls", 16, TLS_SILENT_KINDS, silent=TLS_SILENT),
    # Issue 15: what observing costs per request.  A new connection per
    # request, since observers are told once per connection (a persistent
    # connection is one request to them).
    Scenario("observers", "Observers: TCP new connection per request, native pool, 16 clients", "tcp", "tcp-cpr",
             16, ("native-pool",) + OBSERVER_KINDS),
)

EXTRA_SCENARIOS: Final = ("import", "shutdown")
"""Scenarios outside the server table: ``import`` (importcost.py), ``shutdown`` latency."""

# The stdlib class each composable_server kind replaces (its "twin").
TWINS: Final = {
    "compat-sync": "stdlib-sync",
    "native-sync": "stdlib-sync",
    "compat-threading": "stdlib-threading",
    "native-threading": "stdlib-threading",
    "native-pool": "stdlib-threading",
    "native-parking": "stdlib-threading",  # HTTP only: make_http_server, parked keep-alive
    "compat-forking": "stdlib-forking",
    "native-forking": "stdlib-forking",
    "prefork": "stdlib-forking",
    "native-park-pool": "stdlib-threading",
    "native-park-sync": "stdlib-threading",
    "native-park-lean-sync": "stdlib-threading",  # stream only: make_tcp_server(line_handler=...)
    "native-lean-sync": "stdlib-sync",  # UDP only: make_udp_server(datagram_handler=...)
}


def _is_ours(kind: str) -> bool:
    return kind.startswith(("compat-", "native-")) or kind == "prefork"


# -- the load generator --------------------------------------------------------------


def build_loadgen() -> Path:
    """Compile loadgen.c (once per source version) into a cache directory."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "composable_server_bench"
    binary = cache / f"loadgen-{digest}"
    if not binary.exists():
        cache.mkdir(parents=True, exist_ok=True)
        gcc = shutil.which("gcc") or shutil.which("cc")
        if gcc is None:
            raise SystemExit("the benchmark needs gcc (or cc) to build its load generator")
        tmp = binary.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run([gcc, "-O2", "-Wall", "-o", str(tmp), str(SOURCE)], check=True)
        tmp.replace(binary)
    return binary


# -- one measurement --------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return found


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


_TICK: Final = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float, int]:
    """(user CPU seconds, system CPU seconds, minor page faults) of the
    process tree under *pid*: the live processes' own plus what their reaped
    children used (proc(5): utime, cutime; stime, cstime; minflt, cminflt)."""
    user = system = faults = 0
    for p in _descendants(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        user += int(fields[11]) + int(fields[13])
        system += int(fields[12]) + int(fields[14])
        faults += int(fields[7]) + int(fields[8])
    return user / _TICK, system / _TICK, faults


def _counters(pid: int) -> tuple[float, int]:
    """(CPU seconds, minor page faults) of the process tree under *pid* (:func:`cpu_times`)."""
    user, system, faults = cpu_times(pid)
    return user + system, faults


class _RSSSampler:
    """Samples the summed RSS of a process tree every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.sample()

    def sample(self) -> None:
        total = sum(_status_kib(p, "VmRSS:") for p in _descendants(self.pid))
        self.peak_kib = max(self.peak_kib, total, _status_kib(self.pid, "VmHWM:"))

    def stop(self) -> int:
        self.sample()
        self._stop.set()
        self._thread.join()
        return self.peak_kib


@dataclass
class _Cpus:
    server: int | None
    client: int | None


def _cpus() -> _Cpus:
    try:
        available = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return _Cpus(None, None)
    if len(available) < 2:
        return _Cpus(None, None)
    return _Cpus(available[0], available[1])


def _start_server(
    kind: str, scenario: Scenario, address: str, cpus: _Cpus, tls_files: tuple[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ)
    if tls_files is not None:
        env["BENCH_TLS_CERT"], env["BENCH_TLS_KEY"] = tls_files
    if cpus.server is not None:
        env["BENCH_SERVER_CPU"] = str(cpus.server)
    # stderr goes to a file, never a pipe: nobody reads it during the run, and
    # a server logging tracebacks (a client's reset, on 3.13) would block on a
    # full pipe in every worker.  The file is read only if the server fails to start.
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.bench_servers", kind, scenario.family, address],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            start_new_session=True,  # its own process group: one killpg reaches forked children
        )
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15.0)
        line = proc.stdout.readline() if ready else ""
        if not line:
            _stop_server(proc)  # the whole group, so no forked child keeps writing
            errors.seek(0)
            err = errors.read().decode(errors="replace")
            raise RuntimeError(f"{kind} did not start: {err.strip()[-2000:]}")
    bound = json.loads(line)["address"]
    return proc, bound if isinstance(bound, str) else f"{bound[0]}:{bound[1]}"


def _stop_server(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10.0)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers of a forking server, if any
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _tls_files(tmpdir: str) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, made by trustme at run time (never committed)."""
    import trustme

    cert_path, key_path = os.path.join(tmpdir, "server.pem"), os.path.join(tmpdir, "server.key")
    if not os.path.exists(cert_path):
        leaf = trustme.CA().issue_cert("127.0.0.1", "localhost")
        leaf.cert_chain_pems[0].write_to_path(cert_path)
        for pem in leaf.cert_chain_pems[1:]:
            pem.write_to_path(cert_path, append=True)
        leaf.private_key_pem.write_to_path(key_path)
    return cert_path, key_path


def wrk_url(scenario: Scenario, target: str) -> str:
    """The URL wrk loads for an HTTP or TLS *scenario* served at *target* (``host:port``)."""
    url = f"{'https' if scenario.mode == 'wrk-tls' else 'http'}://{target}/"
    if scenario.family == "http-file":
        from .bench_http import FILE_PATH

        url = url.rstrip("/") + FILE_PATH
    return url


def _external_client(
    scenario: Scenario, target: str, duration: float, warmup: float, pin: Callable[[], None],
    on_start: Callable[[], None],
) -> dict[str, object]:
    """wrk or s_time: a warm-up run (not measured), then the measured one."""
    if scenario.mode == "s_time":
        if warmup:
            run_s_time(target, scenario.clients, warmup, preexec=pin)
        on_start()
        return run_s_time(target, scenario.clients, duration, preexec=pin)
    url = wrk_url(scenario, target)
    close = scenario.mode == "wrk-close"
    if warmup:
        run_wrk(url, scenario.clients, warmup, close=close, preexec=pin)
    on_start()
    return run_wrk(url, scenario.clients, duration, close=close, preexec=pin)


def run_one(
    loadgen: Path, kind: str, scenario: Scenario, *, duration: float, warmup: float, cpus: _Cpus, tmpdir: str
) -> dict[str, object]:
    """Start *kind*, load it for *duration* seconds, stop it; the measurement."""
    # A fresh path each run: stdlib UnixStreamServer leaves its socket file behind.
    address = (
        tempfile.mktemp(prefix=f"{kind}-", suffix=".sock", dir=tmpdir) if scenario.family == "unix" else "127.0.0.1:0"
    )
    tls = _tls_files(tmpdir) if scenario.family == "https-min" else None
    proc, target = _start_server(kind, scenario, address, cpus, tls)
    sampler = _RSSSampler(proc.pid)
    silent = _silent_clients(target, scenario.silent)
    try:
        client_cpu = cpus.client

        def pin() -> None:
            if client_cpu is not None:
                os.sched_setaffinity(0, {client_cpu})

        start: list[tuple[float, int]] = []
        if scenario.mode in ("wrk", "wrk-close", "wrk-tls", "s_time"):
            result = _external_client(
                scenario, target, duration, warmup, pin, lambda: start.append(_counters(proc.pid))
            )
        else:
            cmd = [str(loadgen), scenario.mode, target, str(scenario.clients), str(duration), str(warmup)]
            if scenario.idle:
                cmd += ["1.0", str(scenario.idle)]
            gen = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=pin, start_new_session=True
            )
            setup = 0.0
            if scenario.idle:
                # The idle connections first (up to 120 s); loadgen says "measuring" when the measured part begins.
                assert gen.stderr is not None
                ready, _, _ = select.select([gen.stderr], [], [], 150.0 + warmup)
                if not ready or gen.stderr.readline().strip() != "measuring":
                    gen.kill()
                    gen.communicate()
                    raise RuntimeError("loadgen did not open its idle connections in time")
                setup = 150.0
            else:
                time.sleep(warmup)
            start.append(_counters(proc.pid))
            try:
                stdout, stderr = gen.communicate(timeout=duration + 30 + setup)
            except subprocess.TimeoutExpired:
                gen.kill()
                gen.communicate()
                raise
            if gen.returncode != 0:
                raise RuntimeError(f"loadgen failed: {stderr.strip()}")
            result = json.loads(stdout)
        (cpu0, faults0), (cpu1, faults1) = start[0], _counters(proc.pid)
        requests = int(result["requests"])  # type: ignore[call-overload]  # a JSON number
        # Server CPU time per request: unlike req/s, hardly moved by other load on the machine.
        result["cpu_us_per_req"] = (cpu1 - cpu0) * 1e6 / requests if requests else 0.0
        # Minor page faults per request (fork per request: copy-on-write in the parent and children).
        result["faults_per_req"] = (faults1 - faults0) / requests if requests else 0.0
        if silent:
            result["silent_open"] = _still_open(silent)
    finally:
        for sock in silent:
            sock.close()
        result_rss = sampler.stop()
        _stop_server(proc)
    result["rss_kib"] = result_rss
    result["kind"] = kind
    return result


def _silent_clients(target: str, count: int) -> list[socket.socket]:
    """*count* connections to *target* that never send a byte (a TLS client
    that never says ClientHello), from this process (the load core)."""
    host, _, port = target.rpartition(":")
    clients: list[socket.socket] = []
    try:
        for _ in range(count):
            clients.append(socket.create_connection((host, int(port)), timeout=5.0))
    except BaseException:
        for sock in clients:
            sock.close()
        raise
    return clients


def _still_open(clients: list[socket.socket]) -> int:
    """How many of *clients* the server has not closed (nothing to read, no EOF)."""
    return len(clients) - len(select.select(clients, [], [], 0)[0])


# -- shutdown latency -------------------------------------------------------------------------


def _shutdown_latency(make: Callable[[], socketserver.BaseServer | object], reps: int) -> float:
    """Median milliseconds ``shutdown()`` takes on an idle ``serve_forever(0.5)``."""
    times = []
    for _ in range(reps):
        server = make()
        thread = threading.Thread(target=server.serve_forever, args=(0.5,))  # type: ignore[attr-defined]  # both server families have it
        thread.start()
        time.sleep(0.05)  # let the loop reach its wait
        t0 = time.perf_counter()
        server.shutdown()  # type: ignore[attr-defined]  # as above
        times.append((time.perf_counter() - t0) * 1000.0)
        thread.join()
        server.server_close()  # type: ignore[attr-defined]  # as above
    return statistics.median(times)


def measure_shutdown(reps: int) -> dict[str, float]:
    """Shutdown latency of stdlib, compat and native TCP servers."""
    from composable_server import compat
    from composable_server.factories import make_tcp_server
    from composable_server.handlers import BaseRequestHandler

    address = ("127.0.0.1", 0)
    return {
        "stdlib TCPServer": _shutdown_latency(
            lambda: socketserver.TCPServer(address, socketserver.BaseRequestHandler), reps
        ),
        "compat TCPServer": _shutdown_latency(lambda: compat.TCPServer(address, compat.BaseRequestHandler), reps),
        "native make_tcp_server": _shutdown_latency(lambda: make_tcp_server(address, BaseRequestHandler), reps),
    }


# -- report -------------------------------------------------------------------------------------


@dataclass
class _Summary:
    rps: float
    p50_us: float
    p99_us: float
    rss_kib: float
    errors: float
    served: float
    cpu_us: float
    faults: float = 0.0
    rounds: list[float] = field(default_factory=list)
    silent_open: float = 0.0  # silent connections the server had not closed at the end
    idle_alive: float = 0.0  # idle connections still open at the end (idle scenarios)
    nofile: float = 0.0  # the load generator's descriptor limit


def _summarise(runs: list[dict[str, object]]) -> _Summary:
    def med(key: str) -> float:
        return statistics.median(float(r[key]) for r in runs)  # type: ignore[arg-type]  # JSON numbers

    return _Summary(
        rps=med("rps"),
        p50_us=med("p50_us"),
        p99_us=med("p99_us"),
        rss_kib=med("rss_kib"),
        errors=med("errors"),
        served=med("clients_served"),
        cpu_us=med("cpu_us_per_req"),
        faults=statistics.median(float(r.get("faults_per_req", 0.0)) for r in runs),  # type: ignore[arg-type]  # JSON numbers
        rounds=[float(r["rps"]) for r in runs],  # type: ignore[arg-type]  # JSON numbers
        silent_open=statistics.median(float(r.get("silent_open", 0)) for r in runs),  # type: ignore[arg-type]  # JSON numbers
        idle_alive=statistics.median(float(r.get("idle_alive", 0)) for r in runs),  # type: ignore[arg-type]  # JSON numbers
        nofile=max(float(r.get("nofile", 0)) for r in runs),  # type: ignore[arg-type]  # JSON numbers
    )


def _fmt_rps(rps: float) -> str:
    return f"{rps / 1000:.1f}k" if rps >= 1000 else f"{rps:.0f}"


def _fmt_us(us: float) -> str:
    if us == 0:
        return "–"  # not measured (s_time gives no latencies)
    return f"{us / 1000:.2f} ms" if us < 1_000_000 else f"{us / 1_000_000:.2f} s"


def _targets(
    table: dict[str, dict[str, _Summary]], shutdown: dict[str, float]
) -> list[tuple[str, bool | None, str]]:
    """(target, met (None: not measured), figure) for every target of issue 7."""
    lines: list[tuple[str, bool | None, str]] = []

    def get(scenario: str, kind: str) -> _Summary | None:
        return table.get(scenario, {}).get(kind)

    # 1. every kind >= 1.0x its stdlib twin in every scenario.
    for scenario in SCENARIOS:
        for kind in scenario.kinds:
            twin_kind = TWINS.get(kind)
            ours, twin = get(scenario.name, kind), get(scenario.name, twin_kind or "")
            if twin_kind is None or ours is None or twin is None or twin_kind not in scenario.kinds:
                continue
            ratio = ours.rps / twin.rps if twin.rps else float("inf")
            lines.append(
                (
                    f"{scenario.name}: {kind} >= 1.0x {twin_kind}",
                    ratio >= 1.0,
                    f"{ratio:.2f}x ({_fmt_rps(ours.rps)} vs {_fmt_rps(twin.rps)} req/s)",
                )
            )

    # Issue 18, items 1 and 7: fork per request against ForkingTCPServer on
    # server CPU per request too.  Its req/s with 16 clients on a listen
    # backlog of 5 depends on which clients wait out a SYN retry (one second);
    # the CPU time of the process tree per request does not.
    ref = get("cprfork", "stdlib-forking")
    for kind in ("compat-forking", "native-forking"):
        target = f"cprfork: {kind} >= 1.0x stdlib-forking (server CPU per request)"
        ours = get("cprfork", kind)
        if ours is None or ref is None or ours.cpu_us <= 0:
            lines.append((target, None, "not run" if "cprfork" not in table else "not measured"))
            continue
        r = ref.cpu_us / ours.cpu_us
        lines.append((target, r >= 1.0, f"{r:.2f}x ({ours.cpu_us:.0f} vs {ref.cpu_us:.0f} µs; faults/req "
                                         f"{ours.faults:.0f} vs {ref.faults:.0f})"))

    def best(scenario: str, kinds: Sequence[str]) -> tuple[str, _Summary] | None:
        found = [(k, s) for k in kinds if (s := get(scenario, k)) is not None]
        return max(found, key=lambda ks: ks[1].rps) if found else None

    ours_all = [k for k in TWINS]
    # 2. TCP connect-per-request: best mode >= 2.5x stdlib threading.
    b, ref = best("cpr16", ours_all), get("cpr16", "stdlib-threading")
    if b and ref:
        r = b[1].rps / ref.rps
        lines.append(("cpr16: best mode >= 2.5x stdlib threading", r >= 2.5, f"{r:.2f}x ({b[0]} {_fmt_rps(b[1].rps)})"))
    else:
        lines.append(("cpr16: best mode >= 2.5x stdlib threading", None, "not measured"))
    # 3. UDP with a concurrent dispatcher >= 5x stdlib ThreadingUDPServer.
    b, ref = best("udp16", ["compat-threading", "native-threading", "native-pool"]), get("udp16", "stdlib-threading")
    if b and ref:
        r = b[1].rps / ref.rps
        lines.append(
            ("udp16: concurrent dispatcher >= 5x stdlib ThreadingUDPServer", r >= 5, f"{r:.2f}x ({b[0]} {_fmt_rps(b[1].rps)})")
        )
    else:
        lines.append(("udp16: concurrent dispatcher >= 5x stdlib ThreadingUDPServer", None, "not measured"))
    # 4. prefork connect-per-request >= 20x stdlib ForkingTCPServer, p99 < 10 ms.
    p, ref = get("cprfork", "prefork"), get("cprfork", "stdlib-forking")
    if p and ref:
        r = p.rps / ref.rps
        lines.append(("cprfork: prefork >= 20x stdlib ForkingTCPServer", r >= 20, f"{r:.1f}x ({_fmt_rps(p.rps)} vs {_fmt_rps(ref.rps)})"))
        lines.append(("cprfork: prefork p99 < 10 ms", p.p99_us < 10_000, _fmt_us(p.p99_us)))
    else:
        lines.append(("cprfork: prefork >= 20x stdlib ForkingTCPServer", None, "not measured"))
    # 5. TCP persistent 16: best mode >= 1.0x uvloop.
    b, ref = best("tcp16", ours_all), get("tcp16", "uvloop")
    if b and ref:
        r = b[1].rps / ref.rps
        lines.append(("tcp16: best mode >= 1.0x uvloop", r >= 1.0, f"{r:.2f}x ({b[0]} {_fmt_rps(b[1].rps)} vs {_fmt_rps(ref.rps)})"))
    else:
        lines.append(("tcp16: best mode >= 1.0x uvloop", None, "not measured (uvloop not installed?)"))
    # Issue 18: 128 persistent connections and UDP against uvloop, on server
    # CPU per request (the figure other load on the machine hardly moves):
    # uvloop's CPU/req over the best mode's, among modes that served every client.
    for name, want in (("tcp128", 0.9), ("udp16", 0.7)):
        target = f"{name}: best mode >= {want}x uvloop (server CPU per {'datagram' if name == 'udp16' else 'request'})"
        rows, ref = table.get(name, {}), get(name, "uvloop")
        full = [(k, s) for k, s in rows.items() if k in TWINS and s.cpu_us > 0 and s.served >= _clients(name)]
        if not rows or ref is None:
            lines.append((target, None, "not run" if not rows else "not measured (uvloop not installed?)"))
            continue
        if not full:
            lines.append((target, None, f"not measured: no project mode served all {_clients(name)} clients"))
            continue
        k, s = min(full, key=lambda ks: ks[1].cpu_us)
        r = ref.cpu_us / s.cpu_us
        lines.append(
            (target, r >= want,
             f"{r:.2f}x ({k} {s.cpu_us:.1f} vs {ref.cpu_us:.1f} µs; {_fmt_rps(s.rps)} vs {_fmt_rps(ref.rps)} req/s, "
             f"p99 {_fmt_us(s.p99_us)} vs {_fmt_us(ref.p99_us)})")
        )
    # Issue 17: 10,000 connections on a pool of 8 with parking: p99 of the active clients < 5 ms.
    p = get("idle10k", "native-park-pool")
    target = "idle10k: parking (pool of 8) p99 < 5 ms with 10,000 idle connections"
    if p is None:
        lines.append((target, None, "not run" if "idle10k" not in table else "not measured"))
    else:
        others = ", ".join(
            f"{k} {_fmt_us(s.p99_us)} / {s.rss_kib / 1024:.0f} MiB / {s.cpu_us:.1f} µs/req / {s.idle_alive:.0f} idle held"
            for k, s in table["idle10k"].items() if k != "native-park-pool"
        )
        lines.append(
            (target, p.p99_us < 5000 and p.idle_alive >= 10_000,
             f"p99 {_fmt_us(p.p99_us)}, {_fmt_rps(p.rps)} req/s, peak RSS {p.rss_kib / 1024:.0f} MiB, "
             f"{p.cpu_us:.1f} µs/req, {p.idle_alive:.0f} idle held; {others}")
        )
    # Issue 17: parking at 128 connections, well above thread per connection.
    b, ref = best("tcp128", _PARKING), get("tcp128", "stdlib-threading")
    target = "tcp128: best parking kind above stdlib thread per connection (server CPU per request)"
    if b and ref and b[1].cpu_us > 0:
        r = ref.cpu_us / b[1].cpu_us
        lines.append((target, r > 1.0, f"{r:.2f}x ({b[0]} {b[1].cpu_us:.1f} vs {ref.cpu_us:.1f} µs; "
                                       f"{_fmt_rps(b[1].rps)} vs {_fmt_rps(ref.rps)} req/s, p99 "
                                       f"{_fmt_us(b[1].p99_us)} vs {_fmt_us(ref.p99_us)})"))
    else:
        lines.append((target, None, "not run" if "tcp128" not in table else "not measured"))
    # Issue 18: HTTP, the best native mode >= 2x stdlib with keep-alive.
    native_http = [k for k in HTTP_KINDS if k.startswith("native-") or k == "prefork"]
    for name in ("http-min", "http-file"):
        target = f"{name}: best native mode >= 2x stdlib ThreadingHTTPServer (keep-alive)"
        b, ref = best(name, native_http), get(name, "stdlib-threading")
        if b and ref:
            r = b[1].rps / ref.rps
            lines.append((target, r >= 2.0, f"{r:.2f}x ({b[0]} {_fmt_rps(b[1].rps)} vs {_fmt_rps(ref.rps)} req/s)"))
        else:
            lines.append((target, None, "not run" if name not in table else "not measured"))
    # Issue 18: TLS handshake rate >= stdlib's (wrapping in get_request).
    b, ref = best("tls-handshake", ours_all), get("tls-handshake", "stdlib-threading")
    target = "tls-handshake: best mode's handshake rate >= stdlib (ssl wrapped in get_request)"
    if b and ref:
        r = b[1].rps / ref.rps
        lines.append((target, r >= 1.0, f"{r:.2f}x ({b[0]} {b[1].rps:.0f} vs {ref.rps:.0f} handshakes/s; "
                                        f"{b[1].cpu_us:.0f} vs {ref.cpu_us:.0f} µs server CPU per handshake)"))
    else:
        lines.append((target, None, "not run" if "tls-handshake" not in table else "not measured"))
    # The same on server CPU per handshake (the figure other load on the machine hardly moves).
    target = "tls-handshake: best mode's server CPU per handshake <= stdlib's"
    mine = [(k, m) for k in ours_all if (m := get("tls-handshake", k)) is not None and m.cpu_us > 0]
    if mine and ref is not None and ref.cpu_us > 0:
        k, m = min(mine, key=lambda km: km[1].cpu_us)
        lines.append((target, m.cpu_us <= ref.cpu_us, f"{m.cpu_us / ref.cpu_us:.2f}x ({k} {m.cpu_us:.0f} vs "
                                                       f"{ref.cpu_us:.0f} µs)"))
    else:
        lines.append((target, None, "not run" if "tls-handshake" not in table else "not measured"))
    # Issue 18: silent TLS clients cost the others nothing: the best mode's
    # server CPU per request with them is within 10% of its own without them
    # (CPU, not the rate: the two scenarios run minutes apart, and other load
    # moves rates more than that; the rates are shown beside it), and the
    # server kept every silent client (a starved server fails the run instead).
    for base in ("tls-handshake", "tls-persistent"):
        name = f"{base}-silent"
        target = (f"{name}: {TLS_SILENT} silent TLS clients cost the others nothing (best mode's server CPU per "
                  "request <= 1.1x its own without them)")
        pairs = [(k, q, w) for k in ours_all if (q := get(name, k)) is not None and (w := get(base, k)) is not None]
        if not pairs:
            lines.append((target, None, "not run" if name not in table or base not in table else "not measured"))
            continue
        k, q, w = min(pairs, key=lambda kqw: kqw[1].cpu_us / kqw[2].cpu_us if kqw[2].cpu_us else float("inf"))
        r = q.cpu_us / w.cpu_us if w.cpu_us else float("inf")
        lines.append((target, r <= 1.1 and q.silent_open >= TLS_SILENT,
                      f"{r:.2f}x ({k} {q.cpu_us:.0f} vs {w.cpu_us:.0f} µs; {_fmt_rps(q.rps)} vs {_fmt_rps(w.rps)}/s; "
                      f"silent clients still connected at the end: {q.silent_open:.0f}/{TLS_SILENT})"))
    # 6. peak RSS at 128 connections, process-isolated mode <= 1/4 stdlib forking.
    p, ref = get("tcp128", "prefork"), get("tcp128", "stdlib-forking")
    if p and ref:
        r = p.rss_kib / ref.rss_kib
        lines.append(
            ("tcp128: prefork peak RSS <= 1/4 stdlib forking", r <= 0.25,
             f"{r:.2f} ({p.rss_kib / 1024:.0f} MiB vs {ref.rss_kib / 1024:.0f} MiB)")
        )
    else:
        lines.append(("tcp128: prefork peak RSS <= 1/4 stdlib forking", None, "not measured"))
    # Issue 15: a server without observers pays nothing; what each observer costs.
    rows = table.get("observers", {})
    plain, none = get("observers", "native-pool"), get("observers", "pool-observers-none")
    target = "observers: no observer within noise (5%) of the plain native pool (server CPU per request)"
    if plain and none and plain.cpu_us > 0:
        costs = ", ".join(
            f"{k.removeprefix('pool-observers-')} {row.cpu_us:.1f} µs" for k in OBSERVER_KINDS if (row := rows.get(k))
        )
        lines.append((target, none.cpu_us <= 1.05 * plain.cpu_us,
                      f"{none.cpu_us / plain.cpu_us:.3f}x ({costs}; plain {plain.cpu_us:.1f} µs)"))
    else:
        lines.append((target, None, "not run" if not rows else "not measured"))
    lines += OBSERVER_INSTRUCTIONS
    # 7. shutdown() latency in milliseconds.
    if shutdown:
        worst = max(v for k, v in shutdown.items() if not k.startswith("stdlib"))
        lines.append(
            ("shutdown() latency in milliseconds (< 10 ms)", worst < 10,
             ", ".join(f"{k} {v:.2f} ms" for k, v in shutdown.items()))
        )
    return lines


# Issue 15, under --observer-instructions: callgrind's instructions per
# request (load-independent), main() fills it before the targets are made.
OBSERVER_INSTRUCTIONS: list[tuple[str, bool | None, str]] = []
PRE_OBSERVER_COMMIT: Final = "95cc064"
"""The last commit before observers existed (the parent of d873e9e)."""


def _observer_instructions() -> list[tuple[str, bool | None, str]]:
    """callgrind_observers' counts on this tree, and ``none`` on the tree of
    :data:`PRE_OBSERVER_COMMIT` (``git archive`` into a temporary directory)."""
    from . import callgrind_observers

    target = f"observers: no observer within 0.5% of the tree before observers ({PRE_OBSERVER_COMMIT}; callgrind instructions/request)"
    if shutil.which("valgrind") is None:
        return [(target, None, "not measured: valgrind is not installed")]
    per = callgrind_observers.measure()
    figure = ", ".join(f"{kind} {count:,.0f}" for kind, count in per.items())
    with tempfile.TemporaryDirectory(prefix="cs-pre-observers-") as tree:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", PRE_OBSERVER_COMMIT], capture_output=True)
        if archive.returncode != 0:
            return [(target, None, f"not measured: no git tree of {PRE_OBSERVER_COMMIT} ({figure})")]
        subprocess.run(["tar", "-x", "-C", tree], input=archive.stdout, check=True)
        # The workload of this tree (it imports observer names only for the kinds that use them).
        shutil.copy(HERE / "callgrind_observers.py", Path(tree, "tests", "bench", "callgrind_observers.py"))
        before = callgrind_observers.measure(("none",), root=Path(tree))["none"]
    none = per["none"]
    return [(target, none <= 1.005 * before, f"{none / before:.4f}x ({none:,.0f} vs {before:,.0f}; {figure})")]


def _clients(name: str) -> int:
    return next(s.clients for s in SCENARIOS if s.name == name)


def _markdown(
    meta: dict[str, object], table: dict[str, dict[str, _Summary]], shutdown: dict[str, float], rounds: int,
    imports: ImportCost | None = None,
) -> str:
    out = [
        "# composable_server benchmark",
        "",
        f"- date: {meta['date']}",
        f"- machine: {meta['machine']}",
        f"- pinning: {meta['pinning']}",
        f"- {rounds} interleaved rounds of {meta['duration']} s (+{meta['warmup']} s warm-up) per kind; "
        "medians; closed loop (loadgen: 32-byte line echo; wrk: HTTP)",
        "- server CPU/req: CPU time of the server's process tree per request (robust to other load on the",
        "  machine, unlike req/s); clients served: connections that completed at least one request",
        f"- load average at start: {meta['loadavg']}",
    ]
    out += [f"- skipped: {why}" for why in meta.get("skipped", [])]  # type: ignore[attr-defined]  # a list of str
    out.append("")
    for scenario in SCENARIOS:
        rows = table.get(scenario.name)
        if not rows:
            continue
        out += [
            f"## {scenario.title} (`{scenario.name}`)",
            "",
            "| kind | req/s | p50 | p99 | peak RSS | server CPU/req | faults/req | vs stdlib twin | clients served "
            "| rounds (req/s) |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
        ]
        for kind, s in rows.items():
            twin_kind = TWINS.get(kind)
            twin = rows.get(twin_kind) if twin_kind else None
            ratio = f"{s.rps / twin.rps:.2f}x {twin_kind}" if twin and twin.rps else ""
            out.append(
                f"| {kind} | {_fmt_rps(s.rps)} | {_fmt_us(s.p50_us)} | {_fmt_us(s.p99_us)} | "
                f"{s.rss_kib / 1024:.1f} MiB | {s.cpu_us:.1f} µs | {s.faults:.1f} | {ratio} | {s.served:.0f}/{scenario.clients} | "
                f"{', '.join(_fmt_rps(r) for r in s.rounds)} |"
            )
        if scenario.idle:
            nofile = max(s.nofile for s in rows.values())
            out += ["", f"Idle connections still open at the end (of {scenario.idle:,}): "
                    + ", ".join(f"{k} {s.idle_alive:.0f}" for k, s in rows.items())
                    + f". Descriptor limit raised to the hard limit: {nofile:.0f} (load generator and server)."]
        out.append("")
    if shutdown:
        out += ["## shutdown() latency (idle serve_forever(poll_interval=0.5), median)", ""]
        out += [f"- {k}: {v:.2f} ms" for k, v in shutdown.items()]
        out.append("")
    if imports is not None:
        out += importcost.markdown(imports)
    out += ["## Targets (issues 7 and 18)", ""]
    for target, met, figure in _targets(table, shutdown) + (importcost.targets(imports) if imports else []):
        state = "not measured" if met is None else "met" if met else "NOT met"
        out.append(f"- [{state}] {target}: {figure}")
    out.append("")
    return "\n".join(out)


# -- main ---------------------------------------------------------------------------------------


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}"


def _missing(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return True
    return False


def _skips(scenario: Scenario, have_uvloop: bool) -> tuple[list[str], str | None]:
    """(kinds that cannot run, why the whole scenario cannot run) on this machine."""
    if scenario.mode.startswith("wrk") and shutil.which("wrk") is None:
        return [], f"{scenario.name}: {WRK_MISSING}"
    if scenario.mode == "s_time" and shutil.which("openssl") is None:
        return [], f"{scenario.name}: {STIME_MISSING}"
    if scenario.family == "https-min" and _missing("trustme"):
        return [], f"{scenario.name}: trustme is not installed (the dev extra): TLS scenarios skipped"
    return ([] if have_uvloop else ["uvloop"]), None


# The run lengths: normal and --quick; an option given explicitly wins over both.
_RUN_DEFAULTS: Final = {"rounds": 3, "duration": 2.0, "warmup": 0.5, "import_runs": 60}
_QUICK_DEFAULTS: Final = {"rounds": 1, "duration": 0.5, "warmup": 0.2, "import_runs": 10}


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The benchmark's options from *argv*; exit 2 on a bad one.  ``--quick``
    shortens every run length not given explicitly (``--quick --rounds 3``: 3 rounds)."""
    names = [s.name for s in SCENARIOS] + list(EXTRA_SCENARIOS)
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds per scenario (default 3; --quick: 1)")
    parser.add_argument("--duration", type=float, default=None,
                        help="measured seconds per run (default 2; --quick: 0.5)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="unmeasured seconds per run (default 0.5; --quick: 0.2)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 round of 0.5 s, unless --rounds, --duration, ... say otherwise")
    parser.add_argument("--only", nargs="*", default=None, choices=names, metavar="SCENARIO",
                        help=f"scenario names ({' '.join(names)})")
    parser.add_argument("--kinds", nargs="*", default=None, help="only these server kinds")
    parser.add_argument("--no-shutdown", action="store_true", help="skip the shutdown latency measurement")
    parser.add_argument("--import-runs", type=int, default=None,
                        help="runs per command of the import scenario (default 60; --quick: 10)")
    parser.add_argument("--import-instructions", action="store_true",
                        help="also count the import commands' instructions under callgrind (slow, load-independent)")
    parser.add_argument("--observer-instructions", action="store_true",
                        help="also count the observers' instructions per request under callgrind (slow, load-independent)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    for option, default in (_QUICK_DEFAULTS if args.quick else _RUN_DEFAULTS).items():
        if getattr(args, option) is None:
            setattr(args, option, default)
    if not 1 <= args.rounds <= 20 or not 0 < args.duration <= 60 or not 0 <= args.warmup <= 10:
        parser.error("rounds must be 1..20, duration 0..60 s, warmup 0..10 s")
    if not 3 <= args.import_runs <= 1000:
        parser.error("--import-runs must be 3..1000")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    if _missing("composable_server"):
        raise SystemExit(
            f"composable_server (or its dependency attrs) is not importable with {sys.executable}: run the benchmark "
            f"from a virtual environment of this Python with the project installed, e.g. `{sys.executable} -m venv "
            f"/tmp/venv && /tmp/venv/bin/pip install -e '.[dev,bench]' && /tmp/venv/bin/python -m tests.bench`"
        )

    loadgen = build_loadgen()
    cpus = _cpus()
    if cpus.client is not None:
        os.sched_setaffinity(0, {cpus.client})  # keep this process off the server's core
    have_uvloop = not _missing("uvloop")
    scenarios = [s for s in SCENARIOS if args.only is None or s.name in args.only]
    skipped: list[str] = []
    if not have_uvloop and any("uvloop" in s.kinds for s in scenarios):
        skipped.append("uvloop: not installed for this Python (the `bench` extra): its kinds skipped")
    meta: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": _machine(),
        "pinning": "none (fewer than 2 CPUs)" if cpus.server is None
        else f"server on CPU {cpus.server}, load generator on CPU {cpus.client}",
        "duration": args.duration,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "loadavg": open("/proc/loadavg").read().split()[:3],
        "uvloop": have_uvloop,
        "skipped": skipped,
    }
    raw: dict[str, dict[str, list[dict[str, object]]]] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cs-bench-") as tmpdir:
        for scenario in scenarios:
            cannot, why = _skips(scenario, have_uvloop)
            if why is not None:
                skipped.append(why)
                print(f"  {why}", file=sys.stderr)
                continue
            kinds = [k for k in scenario.kinds if k not in cannot]
            if args.kinds is not None:
                kinds = [k for k in kinds if k in args.kinds]
            per_kind = raw.setdefault(scenario.name, {k: [] for k in kinds})
            for rnd in range(args.rounds * scenario.rounds_factor):
                for kind in kinds:
                    try:
                        result = run_one(
                            loadgen, kind, scenario, duration=args.duration, warmup=args.warmup, cpus=cpus,
                            tmpdir=tmpdir,
                        )
                    except Exception as exc:  # one failed run must not lose the others
                        print(f"  {scenario.name} {kind}: FAILED: {exc}", file=sys.stderr)
                        continue
                    per_kind[kind].append(result)
                    print(
                        f"  [{time.monotonic() - started:5.0f} s] {scenario.name} round {rnd + 1} {kind:17} "
                        f"{_fmt_rps(float(result['rps'])):>7} req/s  p99 {_fmt_us(float(result['p99_us']))}"  # type: ignore[arg-type]  # JSON numbers
                        f"  cpu {float(result['cpu_us_per_req']):.1f} µs/req"  # type: ignore[arg-type]  # JSON numbers
                        f"  rss {int(result['rss_kib']) / 1024:.0f} MiB  errors {result['errors']}",  # type: ignore[call-overload]  # JSON numbers
                        file=sys.stderr,
                        flush=True,
                    )
    imports = None
    if args.only is None or "import" in args.only:
        imports = importcost.measure(args.import_runs)
        if args.import_instructions:
            imports = dataclasses.replace(imports, instructions=importcost.instructions())
    wanted = args.only is None or "shutdown" in args.only
    shutdown = {} if args.no_shutdown or not wanted else measure_shutdown(3 if args.quick else 7)
    if args.observer_instructions:
        OBSERVER_INSTRUCTIONS[:] = _observer_instructions()
    table = {name: {k: _summarise(runs) for k, runs in kinds.items() if runs} for name, kinds in raw.items()}
    targets = _targets(table, shutdown) + (importcost.targets(imports) if imports else [])
    md = _markdown(meta, table, shutdown, args.rounds, imports)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "latest.md").write_text(md)
    (args.output / "latest.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "runs": raw,
                "shutdown_ms": shutdown,
                "imports": None if imports is None else {
                    "wall_ms": imports.wall_ms, "tool": imports.tool, "runs": imports.runs,
                    "top_cumulative": [vars(x) for x in imports.top_cumulative],
                    "instructions": imports.instructions,
                },
                "targets": [{"target": t, "met": m, "figure": f} for t, m, f in targets],
            },
            indent=1,
        )
    )
    print(md)
    print(f"(written to {args.output / 'latest.md'} in {time.monotonic() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
