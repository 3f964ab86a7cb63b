"""Scale-out behind HAProxy: two server instances, one stopped under load, no request lost.

Run it:    python examples/behind_haproxy.py [--requests 2000] [--clients 12] [--json]

What it does, all on loopback, everything in its own process group (killed
on the way out, whatever happens):

1. starts two instances of ``python -m composable_server serve --proxy-protocol v2
   --log-level debug`` on 127.0.0.2 and 127.0.0.3 (two "hosts");
2. writes a private HAProxy config (``send-proxy-v2 check check-send-proxy``,
   an application-level health check every 100 ms, ``retries`` and
   ``option redispatch``) and starts HAProxy, waiting until both servers are UP;
3. runs a bounded load: ``--clients`` threads, one connection per request,
   from 127.0.0.10 (not HAProxy's address), each reply checked;
4. halfway through, sends SIGTERM to the first instance, which stops
   accepting (new connections are refused, HAProxy retries them on the
   other one) and finishes what it has;
5. prints the requests sent and failed, the requests each backend served,
   the client addresses the handlers saw (from their ``--log-level debug``
   request line), and the stopped instance's exit status.

Exits 1 if any request failed, a handler saw another client address than the
real one, or the stopped instance did not exit 0.  Needs ``haproxy`` (2.x).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, cast

FRONTEND_HOST: Final = "127.0.0.1"
BACKENDS: Final = {"a": "127.0.0.2", "b": "127.0.0.3"}  # loopback too on Linux
CLIENT_HOST: Final = "127.0.0.10"  # the real client: neither HAProxy nor a backend
START_TIMEOUT: Final = 20.0
CLIENT_TIMEOUT: Final = 15.0
REQUEST_LINE: Final = re.compile(rb"request from ([\d.]+):(\d+)")


def free_port(host: str) -> int:
    """A port on *host* that was free a moment ago (for a config file)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def process_group(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run *argv* in a new process group, output to *log*; on exit, kill the whole group and reap it."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, process_group=0)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def haproxy_config(frontend: int, backends: dict[str, tuple[str, int]], stats: Path) -> str:
    """Round robin over *backends*; PROXY v2 on traffic and on health checks; retries elsewhere."""
    servers = "\n".join(f"    server {name} {host}:{port}" for name, (host, port) in backends.items())
    return f"""
global
    stats socket {stats} mode 600 level admin

defaults
    mode tcp
    timeout connect 1s
    timeout client 15s
    timeout server 15s
    timeout check 1s
    # A refused connection is retried, on another server (redispatch).
    retries 3
    option redispatch 1

frontend front
    bind {FRONTEND_HOST}:{frontend}
    default_backend pool

backend pool
    balance roundrobin
    # An application-level check: a listener the kernel accepts for but
    # nobody serves fails it (a plain connect check would pass).
    option tcp-check
    tcp-check send "ping\\n"
    tcp-check expect string PING
    default-server send-proxy-v2 check check-send-proxy inter 100ms fall 1 rise 2
{servers}
"""


def haproxy_stats(stats: Path) -> dict[str, dict[str, str]]:
    """HAProxy's ``show stat`` rows of backend ``pool`` (its servers, and ``BACKEND``), by column name."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(CLIENT_TIMEOUT)
        sock.connect(str(stats))
        sock.sendall(b"show stat\n")
        text = b"".join(iter(lambda: sock.recv(65536), b"")).decode()
    lines = text.splitlines()
    names = lines[0].lstrip("# ").split(",")
    rows = (dict(zip(names, line.split(","))) for line in lines[1:])
    return {row["svname"]: row for row in rows if row.get("pxname") == "pool"}


def haproxy_status(stats: Path) -> dict[str, str]:
    """The status (UP, DOWN, ...) of each server of backend ``pool``."""
    return {name: row["status"] for name, row in haproxy_stats(stats).items() if name in BACKENDS}


def wait_until(ready: Callable[[], bool], what: str, procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """Wait (bounded) until *ready()*; fail early if one of *procs* exits."""
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited with status {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


class Load:
    """Bounded client load through HAProxy: connect, send a line, check the reply."""

    def __init__(self, port: int, requests: int) -> None:
        self.port = port
        self.requests = requests
        self._lock = threading.Lock()
        self.sent = 0
        self.failures: list[str] = []
        self.clients: collections.Counter[tuple[str, int]] = collections.Counter()
        self.halfway = threading.Event()

    def _next(self) -> int | None:
        with self._lock:
            if self.sent >= self.requests:
                return None
            self.sent += 1
            if self.sent * 2 >= self.requests:
                self.halfway.set()
            return self.sent

    def client(self) -> None:
        """One client: requests until the bound is reached."""
        while (n := self._next()) is not None:
            line = b"request %d\n" % n
            host, port = CLIENT_HOST, 0
            try:
                with socket.socket() as sock:
                    sock.settimeout(CLIENT_TIMEOUT)
                    sock.bind((CLIENT_HOST, 0))
                    sock.connect((FRONTEND_HOST, self.port))
                    host, port = sock.getsockname()[:2]
                    sock.sendall(line)
                    reply = b"".join(iter(lambda: sock.recv(4096), b""))
                ok = reply == line.upper()
                problem = f"request {n}: reply {reply!r}"
            except OSError as exc:
                ok, problem = False, f"request {n}: {exc!r}"
            with self._lock:
                if ok:
                    self.clients[(host, port)] += 1
                else:
                    self.failures.append(problem)


def served(log: Path) -> collections.Counter[tuple[str, int]]:
    """The client addresses an instance's handlers saw (its ``--log-level debug`` request lines)."""
    return collections.Counter((m[1].decode(), int(m[2])) for m in REQUEST_LINE.finditer(log.read_bytes()))


def run(args: argparse.Namespace, haproxy: str, tmp: Path) -> dict[str, object]:
    ports = {name: free_port(host) for name, host in BACKENDS.items()}
    logs = {name: tmp / f"server-{name}.log" for name in BACKENDS}
    frontend, stats = free_port(FRONTEND_HOST), tmp / "haproxy.sock"
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(haproxy_config(frontend, {n: (BACKENDS[n], ports[n]) for n in BACKENDS}, stats))
    with contextlib.ExitStack() as stack:
        procs: dict[str, subprocess.Popen[bytes]] = {}
        for name, host in BACKENDS.items():
            argv = [sys.executable, "-m", "composable_server", "serve", "--host", host, "--port", str(ports[name])]
            argv += ["--proxy-protocol", "v2", "--dispatch", args.dispatch, "--log-level", "debug"]
            argv += ["--grace", str(args.grace)]
            procs[name] = stack.enter_context(process_group(argv, logs[name]))
        for name in BACKENDS:
            wait_until(lambda: b"listening on" in logs[name].read_bytes(), f"server {name}", procs)
        procs["haproxy"] = stack.enter_context(process_group([haproxy, "-f", str(cfg), "-db"], tmp / "haproxy.log"))
        wait_until(lambda: stats.exists() and set(haproxy_status(stats).values()) == {"UP"}, "both UP", procs)

        load = Load(frontend, args.requests)
        threads = [threading.Thread(target=load.client, daemon=True) for _ in range(args.clients)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        load.halfway.wait()
        sent_at_stop = load.sent  # a snapshot: the clients go on
        before_stop = {name: sum(1 for a in served(logs[name]).elements() if a[0] == CLIENT_HOST) for name in BACKENDS}
        stopping = procs["a"]
        stopped_at = time.monotonic()
        stopping.send_signal(signal.SIGTERM)
        try:
            status: int | None = stopping.wait(args.grace + 5)
        except subprocess.TimeoutExpired:
            status = None
        exit_after = time.monotonic() - stopped_at
        for thread in threads:
            thread.join(CLIENT_TIMEOUT * 4)
        elapsed = time.monotonic() - started
        # A request is logged as it starts: every answered one is in a log by now.
        seen = {name: served(logs[name]) for name in BACKENDS}
        # The health check notices (bounded wait; it ran every 100 ms meanwhile).
        wait_until(lambda: haproxy_status(stats)["a"] == "DOWN", "a DOWN", {"haproxy": procs["haproxy"]})
        states = haproxy_status(stats)
        pool = haproxy_stats(stats)["BACKEND"]
    everyone = sum(seen.values(), collections.Counter[tuple[str, int]]())
    from_clients = {addr: n for addr, n in everyone.items() if addr[0] == CLIENT_HOST}
    checks = collections.Counter(addr[0] for addr in everyone.elements() if addr[0] != CLIENT_HOST)
    return {
        "sent": load.sent,
        "failed": len(load.failures),
        "failures": load.failures[:10],
        "sent_before_stop": sent_at_stop,
        "per_backend_before_stop": before_stop,
        "per_backend": {name: sum(n for a, n in seen[name].items() if a[0] == CLIENT_HOST) for name in BACKENDS},
        # Every answered request, seen by a handler with the client's own address and port.
        "real_clients_seen": from_clients == dict(load.clients),
        "client_hosts_seen": sorted({addr[0] for addr in from_clients}),
        "health_checks_from": dict(checks),
        "stopped_status": status,
        "stopped_exit_seconds": round(exit_after, 3),
        "haproxy_after": states,
        # Connects refused by the stopped instance, retried (on the other one) by HAProxy.
        "haproxy_retries": int(pool["wretr"] or 0),
        "haproxy_redispatches": int(pool["wredis"] or 0),
        "seconds": round(elapsed, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000, help="total requests (default: 2000)")
    parser.add_argument("--clients", type=int, default=12, help="concurrent clients (default: 12)")
    parser.add_argument("--grace", type=float, default=5.0, help="the instances' --grace (default: 5)")
    parser.add_argument("--dispatch", default="threading", help="the instances' --dispatch (default: threading)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C: the finally blocks kill what was started.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    haproxy = shutil.which("haproxy", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if haproxy is None:
        print("haproxy is not installed", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="behind-haproxy-") as tmp:
        result = run(args, haproxy, Path(tmp))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"requests sent: {result['sent']} ({result['sent_before_stop']} before the SIGTERM), failed: {result['failed']}")
        print(f"served per backend: {result['per_backend']}")
        print(f"client addresses the handlers saw: {result['client_hosts_seen']} (real: {result['real_clients_seen']})")
        print(f"health checks from: {result['health_checks_from']}")
        print(f"HAProxy retried {result['haproxy_retries']} connect(s), redispatched {result['haproxy_redispatches']}")
        print(f"stopped instance: status {result['stopped_status']} after {result['stopped_exit_seconds']} s")
        for failure in cast(list[str], result["failures"]):
            print(f"  {failure}")
    ok = result["failed"] == 0 and result["real_clients_seen"] and result["stopped_status"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
