"""What one forked request costs: page faults, CPU and instructions (issue 18).

    python -m tests.bench.forkcost [--kinds stdlib compat native] [--requests N] [--callgrind] [--small N] [--large N]

Fork per request is dominated by what the fork and the copy-on-write faults
cost the kernel, and every page the parent writes between two forks is one
more fault (in the parent, and a copy in the child if it writes there too).
Those are counts, not timings, so they do not move with other load on the
machine.  Each kind runs the benchmark's own forking echo server
(``tests.bench.bench_servers``: stdlib ``ForkingTCPServer``, compat
``ForkingTCPServer``, the native ``ForkingDispatcher``) in a subprocess; one
client here makes *requests* connections one after another (connect, send
32 bytes, ``shutdown(SHUT_WR)``, read the echo and EOF, close), so one child
runs at a time.  Before and after, once every child has been reaped, the
server's ``/proc/<pid>/stat`` gives minor faults and CPU time of the parent
itself and of its reaped children (proc(5): ``minflt``, ``cminflt``,
``utime + stime``, ``cutime + cstime``); the difference divided by *requests*
is the cost of one request.

With ``--callgrind`` the server also runs under ``valgrind --tool=callgrind``
(which follows forks: one output file per process), twice, with *small* and
*large* requests; the difference of the summed instruction counts divided by
``large - small`` is the instructions per request in the parent and in the
children, the interpreter's start and the imports cancelled out.  Instructions
leave out the kernel's share (fork, faults, exit), which the faults show.

    python -m tests.bench.forkcost --dirty KIND    # pages the parent writes per request, by mapping
    python -m tests.bench.forkcost --where KIND    # which Python objects the faults land on (perf)

``--where`` runs the server under ``perf record -e page-faults -c 1 -d`` (every
fault, with its data address; children inherit the event) and has the server
write, just before its first fork, the address, size and name of every
object the garbage collector knows (functions, their code objects, modules,
types, instances).  Each fault of the children, and of the parent while it
serves the measured requests, is attributed to the object at its address
(a function called writes its refcount, and its code object's: two faults
unless a neighbour already took the page), or else to its mapping
(``text:`` an instruction fetch, ``data:`` static data, arenas, the heap).
Soft-dirty bits (``--dirty``) need ``CONFIG_MEM_SOFT_DIRTY``, which some
kernels lack (then it reports nothing); ``--where`` needs only perf.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ("KINDS", "Counters", "main", "measure", "parse_callgrind_total", "round_trips")

ROOT: Final = Path(__file__).resolve().parent.parent.parent
KINDS: Final = ("stdlib", "compat", "native")
MESSAGE: Final = b"0123456789abcdef0123456789abcde\n"
_TICK: Final = os.sysconf("SC_CLK_TCK")
# A child not reaped within this many seconds is a failure of the server.
_SETTLE_TIMEOUT: Final = 60.0
_LINGER_RST: Final = struct.pack("ii", 1, 0)


@dataclass(frozen=True)
class Counters:
    """Counts of a server process: itself and its reaped children (proc(5))."""

    parent_faults: int
    child_faults: int
    parent_cpu: float
    child_cpu: float

    def __sub__(self, other: Counters) -> Counters:
        return Counters(
            self.parent_faults - other.parent_faults,
            self.child_faults - other.child_faults,
            self.parent_cpu - other.parent_cpu,
            self.child_cpu - other.child_cpu,
        )


def _read_counters(pid: int) -> Counters:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # After the comm: state is field 3, so field k of proc(5) is fields[k - 3].
    return Counters(
        parent_faults=int(fields[7]),
        child_faults=int(fields[8]),
        parent_cpu=(int(fields[11]) + int(fields[12])) / _TICK,
        child_cpu=(int(fields[13]) + int(fields[14])) / _TICK,
    )


def _children(pid: int) -> list[int]:
    """The children of *pid*, zombies included (they stay until reaped)."""
    found: list[int] = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(path) as f:
                found.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return found


def _settle(pid: int) -> None:
    """Wait until *pid* has reaped every child (stdlib reaps once per
    ``poll_interval``, 0.5 s, when idle)."""
    deadline = time.monotonic() + _SETTLE_TIMEOUT
    while _children(pid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"server {pid} left children unreaped for {_SETTLE_TIMEOUT} s")
        time.sleep(0.01)


def round_trips(address: tuple[str, int], n: int, timeout: float = 60.0) -> None:
    """*n* connect-per-request echo round trips, one after another."""
    for _ in range(n):
        with socket.create_connection(address, timeout=timeout) as client:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.sendall(MESSAGE)
            client.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := client.recv(256):
                received += chunk
            if received != MESSAGE:
                raise RuntimeError(f"the echo differs from the request: {received!r}")
            # RST instead of FIN: no TIME_WAIT, so no port runs out (as loadgen.c).
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)


def _start(kind: str, wrapper: Sequence[str] = ()) -> tuple[subprocess.Popen[str], tuple[str, int]]:
    proc = subprocess.Popen(
        [*wrapper, sys.executable, "-m", "tests.bench.bench_servers", f"{kind}-forking", "tcp", "127.0.0.1:0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: one killpg reaches forked children
    )
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()  # the server prints its address once bound
        if not line:
            raise RuntimeError(f"{kind}-forking exited before announcing its address (status {proc.wait(30)})")
        host, port = json.loads(line)["address"]
    except BaseException:
        _stop(proc)
        raise
    return proc, (host, int(port))


def _stop(proc: subprocess.Popen[str]) -> None:
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        pass
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers, if any
        except ProcessLookupError:
            pass
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def measure(kind: str, requests: int, warmup: int = 20) -> Counters:
    """Faults and CPU of *requests* forked requests on a *kind* server (see the module)."""
    proc, address = _start(kind)
    try:
        round_trips(address, warmup)
        _settle(proc.pid)
        before = _read_counters(proc.pid)
        round_trips(address, requests)
        _settle(proc.pid)
        return _read_counters(proc.pid) - before
    finally:
        _stop(proc)


_TOTAL: Final = re.compile(r"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


def parse_callgrind_total(text: str) -> int:
    """The instruction total of one callgrind output file (its ``summary:`` or ``totals:`` line)."""
    match = _TOTAL.search(text)
    if match is None:
        raise ValueError("no summary: or totals: line in the callgrind output")
    return int(match[1])


def _callgrind(kind: str, requests: int, tmp: str) -> tuple[int, int]:
    """(parent, children) instructions of a server serving *requests* under callgrind."""
    out = os.path.join(tmp, f"{kind}.{requests}")
    os.mkdir(out)
    # A forked child inherits its parent's counts: zero them where CPython's
    # fork returns in the child, so each child's file holds its own work.
    wrapper = ["valgrind", "--tool=callgrind", "--zero-before=PyOS_AfterFork_Child", f"--callgrind-out-file={out}/cg.%p"]
    proc, address = _start(kind, wrapper)
    try:
        round_trips(address, requests, timeout=300.0)
        _settle(proc.pid)
    finally:
        _stop(proc)
    parent = children = 0
    for path in glob.glob(os.path.join(out, "cg.*")):
        total = parse_callgrind_total(Path(path).read_text(errors="replace"))
        if path.endswith(f".{proc.pid}"):
            parent += total
        else:
            children += total
    return parent, children


# -- which pages the parent writes ---------------------------------------------------------


def _mapping_name(line: str) -> str:
    parts = line.split(maxsplit=5)
    name = parts[5].strip() if len(parts) > 5 else "[anon]"
    return Path(name).name if name.startswith("/") else name


def dirty_pages(pid: int) -> dict[str, int]:
    """Pages of *pid* written since the last clear of its soft-dirty bits, by
    mapping (``/proc/<pid>/pagemap`` bit 55; Documentation/admin-guide/mm/soft-dirty.rst)."""
    page = os.sysconf("SC_PAGE_SIZE")
    counts: dict[str, int] = {}
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in maps:
            span, perms = line.split()[:2]
            if "w" not in perms:
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            pagemap.seek(start // page * 8)
            data = pagemap.read((end - start) // page * 8)
            dirty = sum(1 for (entry,) in struct.iter_unpack("Q", data) if entry >> 55 & 1 and entry >> 63 & 1)
            if dirty:
                name = _mapping_name(line)
                counts[name] = counts.get(name, 0) + dirty
    return counts


def _clear_soft_dirty(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("4")


def dirty_per_request(kind: str, requests: int) -> dict[str, float]:
    """Pages the parent of a *kind* server writes per request (one request
    between a clear and a read, *requests* times), by mapping."""
    proc, address = _start(kind)
    totals: dict[str, int] = {}
    try:
        round_trips(address, 20)
        _settle(proc.pid)
        for _ in range(requests):
            _clear_soft_dirty(proc.pid)
            round_trips(address, 1)
            _settle(proc.pid)
            for name, n in dirty_pages(proc.pid).items():
                totals[name] = totals.get(name, 0) + n
    finally:
        _stop(proc)
    return {name: n / requests for name, n in sorted(totals.items(), key=lambda kv: -kv[1])}


# -- where the faults land (perf) ----------------------------------------------------------


def _dump_objects(path: str) -> None:
    """Write ``address size name`` of every object gc knows (and each
    function's code object, each module's dict) to *path*."""
    import gc

    rows: dict[int, str] = {}

    def add(obj: object, name: str) -> None:
        rows.setdefault(id(obj), f"{id(obj)} {sys.getsizeof(obj)} {name}")

    for obj in gc.get_objects():
        if isinstance(obj, type):
            add(obj, f"type {obj.__module__}.{obj.__qualname__}")
        elif isinstance(obj, types.FunctionType):
            add(obj, f"function {obj.__module__}.{obj.__qualname__}")
            add(obj.__code__, f"code {obj.__module__}.{obj.__qualname__}")
        elif isinstance(obj, types.ModuleType):
            add(obj, f"module {obj.__name__}")
            add(obj.__dict__, f"module dict {obj.__name__}")
        else:
            add(obj, type(obj).__name__)
    Path(path).write_text("\n".join(rows.values()))


def serve_mapped(kind: str, map_path: str) -> None:
    """Run the *kind* forking server; just before its first fork, dump its objects to *map_path*."""
    from . import bench_servers

    dumped: list[bool] = []

    def before_fork() -> None:
        if not dumped:
            dumped.append(True)
            _dump_objects(map_path)

    os.register_at_fork(before=before_fork)
    bench_servers.main([f"{kind}-forking", "tcp", "127.0.0.1:0"])


_SAMPLE: Final = re.compile(r"\s*(\d+)\s+([\d.]+):\s+([0-9a-f]+)\s+\((.*?)\)\s+([0-9a-f]+)\s")


def faults_by_object(kind: str, requests: int, tmp: str) -> tuple[dict[str, float], dict[str, float]]:
    """Faults per request of a *kind* server, (parent, children), by object or mapping (see ``--where``)."""
    import bisect
    from collections import Counter

    data, map_path = os.path.join(tmp, f"{kind}.data"), os.path.join(tmp, f"{kind}.map")
    wrapper = ["perf", "record", "-q", "-e", "page-faults", "-c", "1", "-d", "-o", data, "--"]
    proc = subprocess.Popen(
        [*wrapper, sys.executable, "-m", "tests.bench.forkcost", "--serve-mapped", kind, map_path],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    assert proc.stdout is not None
    try:
        host, port = json.loads(proc.stdout.readline())["address"]
        round_trips((host, int(port)), 5)  # warm-up (and the first fork: the object map)
        round_trips((host, int(port)), requests)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # perf writes its file; the server shuts down
        proc.wait(60)
        proc.stdout.close()
    objects = sorted(
        (int(a), int(size), name) for a, size, name in (line.split(" ", 2) for line in Path(map_path).read_text().splitlines())
    )
    starts = [o[0] for o in objects]
    script = subprocess.run(
        ["perf", "script", "-i", data, "-F", "pid,time,addr,ip,dso"], capture_output=True, text=True, check=True
    ).stdout
    samples = [(int(m[1]), float(m[2]), int(m[3], 16), m[4], int(m[5], 16)) for m in map(_SAMPLE.match, script.splitlines()) if m]
    per_pid = Counter(pid for pid, *_ in samples)
    parent = per_pid.most_common(1)[0][0]
    started: dict[int, float] = {}
    for pid, when, *_ in samples:
        if pid != parent:
            started.setdefault(pid, when)
    children = sorted(started, key=started.__getitem__)[5:]  # the measured requests' children
    if len(children) < 2:
        raise RuntimeError(f"perf saw {len(children)} measured children")
    window = (started[children[0]], started[children[-1]])
    n = len(children) - 1  # parent faults between the first and the last measured fork
    measured = set(children)
    counts: tuple[Counter[str], Counter[str]] = (Counter(), Counter())
    for pid, when, addr, mapping, ip in samples:
        if pid == parent and not window[0] <= when < window[1]:
            continue
        if pid != parent and pid not in measured:
            continue
        name = Path(mapping).name or mapping
        k = bisect.bisect_right(starts, addr) - 1
        if addr == ip:
            where = f"text: {name}"
        elif k >= 0 and objects[k][0] <= addr < objects[k][0] + max(objects[k][1], 16):
            where = objects[k][2]
        else:
            where = f"data: {name}"
        counts[pid != parent][where] += 1
    return (
        {w: c / n for w, c in counts[0].most_common()},
        {w: c / len(children) for w, c in counts[1].most_common()},
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.forkcost", description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="*", default=list(KINDS), choices=KINDS)
    parser.add_argument("--requests", type=int, default=500, help="requests measured per kind (default 500)")
    parser.add_argument("--callgrind", action="store_true", help="also count instructions under callgrind")
    parser.add_argument("--small", type=int, default=20, help="requests of the first callgrind run (default 20)")
    parser.add_argument("--large", type=int, default=60, help="requests of the second callgrind run (default 60)")
    parser.add_argument("--dirty", metavar="KIND", choices=KINDS, help="pages the parent writes per request")
    parser.add_argument("--where", metavar="KIND", choices=KINDS, help="which objects the faults land on (perf)")
    parser.add_argument("--top", type=int, default=40, help="--where: lines per process (default 40)")
    parser.add_argument("--serve-mapped", nargs=2, metavar=("KIND", "MAP"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_mapped:
        serve_mapped(*args.serve_mapped)
        return 0
    if args.where:
        if shutil.which("perf") is None:
            raise SystemExit("perf is not installed")
        with tempfile.TemporaryDirectory(prefix="cs-forkwhere-") as tmp:
            parent, children = faults_by_object(args.where, args.requests, tmp)
        for title, table in (("parent", parent), ("children", children)):
            print(f"# {args.where}: faults per request in the {title} ({sum(table.values()):.1f}), by object or mapping")
            for where, n in list(table.items())[: args.top]:
                print(f"{n:8.2f}  {where}")
        return 0
    if args.dirty:
        print(f"# {args.dirty}: pages the parent writes per request (soft-dirty, {args.requests} requests)")
        for name, n in dirty_per_request(args.dirty, args.requests).items():
            print(f"{n:8.1f}  {name}")
        return 0
    out = [f"# Fork per request: cost of one request ({args.requests} sequential requests)", "",
           "| kind | faults/req parent | faults/req children | CPU us/req parent | CPU us/req children | CPU us/req |",
           "|---|--:|--:|--:|--:|--:|"]
    for kind in args.kinds:
        c = measure(kind, args.requests)
        n = args.requests
        out.append(
            f"| {kind} | {c.parent_faults / n:.1f} | {c.child_faults / n:.1f} | {c.parent_cpu * 1e6 / n:.0f} "
            f"| {c.child_cpu * 1e6 / n:.0f} | {(c.parent_cpu + c.child_cpu) * 1e6 / n:.0f} |"
        )
    if args.callgrind:
        if shutil.which("valgrind") is None:
            raise SystemExit("valgrind is not installed")
        if not 0 < args.small < args.large:
            parser.error("need 0 < --small < --large")
        n = args.large - args.small
        out += ["", f"Instructions per request (callgrind, {args.large} - {args.small} requests):", "",
                "| kind | parent | children | total |", "|---|--:|--:|--:|"]
        with tempfile.TemporaryDirectory(prefix="cs-forkcost-") as tmp:
            for kind in args.kinds:
                p_small, c_small = _callgrind(kind, args.small, tmp)
                p_large, c_large = _callgrind(kind, args.large, tmp)
                p, c = (p_large - p_small) / n, (c_large - c_small) / n
                out.append(f"| {kind} | {p:,.0f} | {c:,.0f} | {p + c:,.0f} |")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
