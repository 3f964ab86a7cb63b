"""Smoke test of the benchmark: the load generator builds, tiny scenarios run, the parsers read their tools."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests._process import run_process
from tests.bench import (
    callgrind_http,
    callgrind_parking,
    callgrind_tcp,
    callgrind_tls,
    callgrind_udp,
    forkcost,
    importcost,
    switches,
)
from tests.bench.clients import parse_s_time, parse_wrk
from tests.bench.run import SCENARIOS, _Cpus, _skips, _tls_files, build_loadgen, parse_arguments, run_one

# The thread method: the run waits on child processes and their pipes.
pytestmark = pytest.mark.timeout(30, method="thread")

needs_cc = pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="needs a C compiler")

# wrk 4.1.0 (Debian), as it printed against http.server with Connection: close.
WRK_OUTPUT = """\
Running 1s test @ http://127.0.0.1:18099/nonexistent
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    15.30ms   26.30ms 165.31ms   90.44%
    Req/Sec   638.00    462.05     1.24k    50.00%
  Latency Distribution
     50%    4.80ms
     75%   14.88ms
     90%   39.99ms
     99%  132.17ms
  641 requests in 1.06s, 325.87KB read
  Socket errors: connect 0, read 2, write 1, timeout 0
  Non-2xx or 3xx responses: 641
Requests/sec:    605.26
Transfer/sec:    307.70KB
"""

# openssl 3.0 s_time -new (its progress line of asterisks shortened).
S_TIME_OUTPUT = """\
Collecting connection statistics for 1 seconds
*************

547 connections in 0.62s; 882.26 connections/user sec, bytes read 0
547 connections in 2 real seconds, 0 bytes read per connection
"""

IMPORTTIME_STDERR = """\
import time: self [us] | cumulative | imported package
import time:       120 |        120 |   _io
import time:      3000 |       3500 |     attr._make
import time:       800 |       4300 |   attrs
import time:      1500 |       5800 | composable_server
"""

ANNOTATE_OUTPUT = """\
--------------------------------------------------------------------------------
Ir
--------------------------------------------------------------------------------
1,234,567 (100.0%)  PROGRAM TOTALS

--------------------------------------------------------------------------------
Ir                 file:function
--------------------------------------------------------------------------------
400,000 (32.40%)  /tmp/build/Python/ceval.c:_PyEval_EvalFrameDefault'2 [/usr/bin/python3.11]
100,000 ( 8.10%)  /tmp/build/Python/ceval.c:_PyEval_EvalFrameDefault [/usr/bin/python3.11]
 50,000 ( 4.05%)  ./malloc/malloc.c:malloc [/usr/lib/libc.so.6]
"""


@needs_cc
@pytest.mark.parametrize("scenario", ["tcp16", "udp16"])
def test_one_short_run(scenario: str, tmp_path: Path) -> None:
    """A native pool server answers the compiled closed-loop load generator for 0.3 s."""
    loadgen = build_loadgen()
    chosen = next(s for s in SCENARIOS if s.name == scenario)
    result = run_one(
        loadgen, "native-pool", chosen, duration=0.3, warmup=0.1, cpus=_Cpus(None, None), tmpdir=str(tmp_path)
    )
    assert float(result["requests"]) > 0  # type: ignore[arg-type]  # a JSON number
    assert result["errors"] == 0
    assert float(result["p99_us"]) >= float(result["p50_us"]) > 0  # type: ignore[arg-type]  # JSON numbers
    assert int(result["rss_kib"]) > 0  # type: ignore[call-overload]  # a JSON number
    assert float(result["faults_per_req"]) >= 0  # type: ignore[arg-type]  # a JSON number


@needs_cc
def test_lean_datagram_kind_short_run(tmp_path: Path) -> None:
    """The lean datagram kind (native-lean-sync, in udp16) answers the load generator for 0.3 s."""
    loadgen = build_loadgen()
    udp16 = next(s for s in SCENARIOS if s.name == "udp16")
    assert "native-lean-sync" in udp16.kinds
    result = run_one(
        loadgen, "native-lean-sync", udp16, duration=0.3, warmup=0.1, cpus=_Cpus(None, None), tmpdir=str(tmp_path)
    )
    assert float(result["requests"]) > 0  # type: ignore[arg-type]  # a JSON number
    assert result["errors"] == 0


@pytest.mark.parametrize(
    ("scenario", "tool"),
    [("http-min", "wrk"), ("http-file-close", "wrk"), ("tls-handshake", "openssl"), ("tls-handshake-silent", "openssl")],
)
def test_external_client_run(scenario: str, tool: str, tmp_path: Path) -> None:
    """A native pool HTTP (or TLS) server answers wrk (or openssl s_time) for the shortest run, 1 s."""
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    chosen = next(s for s in SCENARIOS if s.name == scenario)
    if chosen.family == "https-min":
        pytest.importorskip("trustme")
    result = run_one(
        Path("/nonexistent"), "native-pool", chosen, duration=1, warmup=0, cpus=_Cpus(None, None),
        tmpdir=str(tmp_path),
    )
    assert int(result["requests"]) > 0  # type: ignore[call-overload]  # a JSON number
    assert result["errors"] == 0
    assert float(result["cpu_us_per_req"]) > 0  # type: ignore[arg-type]  # a JSON number
    if chosen.silent:
        assert result["silent_open"] == chosen.silent  # held through the run, none cut


def test_parse_wrk() -> None:
    """wrk's report gives req/s, the latency percentiles in microseconds and the errors."""
    result = parse_wrk(WRK_OUTPUT, 4)
    assert result["rps"] == 605.26
    assert result["requests"] == 641
    assert result["p50_us"] == pytest.approx(4800.0)
    assert result["p99_us"] == pytest.approx(132170.0)
    assert result["errors"] == 3 + 641


def test_parse_wrk_rejects_other_output() -> None:
    """Output that is not a wrk --latency report raises ValueError naming what it got."""
    with pytest.raises(ValueError, match="not a wrk --latency report"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n", 4)


def test_parse_s_time() -> None:
    """s_time's report gives its connection count."""
    assert parse_s_time(S_TIME_OUTPUT) == 547
    with pytest.raises(ValueError, match="not an openssl s_time report"):
        parse_s_time("ERROR\n")


def test_parse_importtime() -> None:
    """-X importtime lines parse (the header skipped) and the top modules come by median."""
    lines = importcost.parse_importtime(IMPORTTIME_STDERR)
    assert [x.module for x in lines] == ["_io", "attr._make", "attrs", "composable_server"]
    top_cumulative, top_self = importcost.top_imports([lines, lines], 2)
    assert [x.module for x in top_cumulative] == ["composable_server", "attrs"]
    assert [x.module for x in top_self] == ["attr._make", "composable_server"]


@pytest.mark.timeout(120)
def test_import_cost_few_runs() -> None:
    """The import scenario times every command with the internal timer and reports three targets."""
    cost = importcost.measure(3, importtime_runs=1, top=3, use_hyperfine=False, warmup=0)
    assert set(cost.wall_ms) == set(importcost.COMMANDS)
    assert all(ms > 0 for ms in cost.wall_ms.values())
    assert any(x.module == "composable_server.compat" for x in cost.top_cumulative)
    assert len(importcost.targets(cost)) == 3
    assert "| `import socketserver` |" in "\n".join(importcost.markdown(cost))


def test_parse_annotate() -> None:
    """callgrind_annotate's totals and self costs parse, recursion levels folded, build paths dropped."""
    total, per_function = callgrind_udp.parse_annotate(ANNOTATE_OUTPUT)
    assert total == 1_234_567
    assert per_function == {"ceval.c:_PyEval_EvalFrameDefault": 500_000, "malloc.c:malloc": 50_000}


@pytest.mark.parametrize("kind", callgrind_udp.KINDS)
def test_callgrind_workload(kind: str) -> None:
    """The callgrind workload serves its round trips in one thread (without valgrind here)."""
    if kind == "uvloop":
        pytest.importorskip("uvloop")
    callgrind_udp.serve(kind, 20)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scenario", ["udp16", "tls-persistent"])
def test_switches_counts_per_request(scenario: str) -> None:
    """switches serves the pool under load (loadgen, or wrk over TLS) and
    divides perf's counts and the server's CPU by the requests served."""
    if shutil.which("perf") is None or (shutil.which("gcc") or shutil.which("cc")) is None:
        pytest.skip("needs perf and a C compiler (the load generator)")
    if scenario == "tls-persistent" and shutil.which("wrk") is None:
        pytest.skip("needs wrk")
    counts = switches.measure("native-pool", scenario, 4, 1.0, warmup=0.1)
    assert counts["requests"] > 0 and counts["cpu_us"] > 0
    assert counts["cpu_us"] == pytest.approx(counts["user_us"] + counts["sys_us"])
    if "context-switches" not in counts:
        pytest.skip("perf stat counts no software events here")
    assert counts["context-switches"] >= 0


@pytest.mark.parametrize(
    ("kind", "family", "mode"),
    [(kind, family, mode) for (mode, family), kinds in callgrind_tcp.DEFAULT_KINDS.items() for kind in kinds],
)
def test_callgrind_tcp_workload(kind: str, family: str, mode: str) -> None:
    """The stream callgrind workload serves its round trips to a client process (without valgrind here)."""
    callgrind_tcp.serve(kind, family, mode, 12)


@pytest.mark.timeout(60)
def test_callgrind_tcp_python_calls() -> None:
    """The per-thread profiles count the handler's calls of every connection thread."""
    calls = callgrind_tcp._python_calls("stdlib-threading", "tcp", "cpr", 10)
    assert [c for name, c in calls if name.startswith("handle (bench_servers.py:")] == [1.0]


@pytest.mark.parametrize("mode", callgrind_http.MODES)
@pytest.mark.parametrize("kind", callgrind_http.KINDS)
def test_callgrind_http_workload(kind: str, mode: str) -> None:
    """The HTTP callgrind workload serves its requests (a subprocess each: compat swaps socketserver)."""
    argv = [sys.executable, "-m", "tests.bench.callgrind_http", "--serve", kind, "http-file", mode, "12"]
    done = run_process(argv, timeout=25, cwd=Path(callgrind_http.ROOT))
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("kind", callgrind_tls.KINDS)
def test_callgrind_tls_workload(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The TLS callgrind workload serves its s_time-like handshakes (without valgrind here)."""
    pytest.importorskip("trustme")
    monkeypatch.setenv("BENCH_TLS_CERT", _tls_files(str(tmp_path))[0])
    monkeypatch.setenv("BENCH_TLS_KEY", _tls_files(str(tmp_path))[1])
    # Its own process group, killed on the way out (the workload starts the client).
    done = run_process([sys.executable, "-m", "tests.bench.callgrind_tls", "--serve", kind, "5"], timeout=60,
                       cwd=callgrind_tls.ROOT, env=dict(os.environ))
    assert done.returncode == 0, done.stderr


def test_uvloop_missing_skips_its_kind() -> None:
    """Without uvloop its kind is skipped, and the scenario still runs."""
    tcp16 = next(s for s in SCENARIOS if s.name == "tcp16")
    assert _skips(tcp16, have_uvloop=False) == (["uvloop"], None)


@pytest.mark.parametrize("kind", forkcost.KINDS)
def test_forkcost_counts_a_forking_server(kind: str) -> None:
    """forkcost serves sequential forked requests and counts faults and CPU of the parent and its reaped children."""
    counters = forkcost.measure(kind, 10, warmup=2)
    assert counters.parent_faults > 0
    assert counters.child_faults > 0  # ten children ran, and were reaped


@pytest.mark.skipif(shutil.which("perf") is None, reason="needs perf")
def test_forkcost_attributes_faults_to_objects(tmp_path: Path) -> None:
    """forkcost --where attributes the faults of a forking server's parent and children to objects or mappings."""
    parent, children = forkcost.faults_by_object("compat", 5, str(tmp_path))
    assert sum(parent.values()) > 0 and sum(children.values()) > 0
    assert any(where.startswith("text: ") for where in children)  # the child's first instruction fetches
    assert any(where.startswith("code composable_server.") for where in children)  # the child ran our code


def test_forkcost_reads_callgrind_totals() -> None:
    """The instruction total of a callgrind output file is its summary (or totals) line."""
    assert forkcost.parse_callgrind_total("events: Ir\nfn=main\n1 5\nsummary: 123456\n") == 123456
    assert forkcost.parse_callgrind_total("events: Ir\ntotals: 42\n") == 42
    with pytest.raises(ValueError):
        forkcost.parse_callgrind_total("events: Ir\n")


@pytest.mark.parametrize("kind", callgrind_parking.KINDS)
def test_callgrind_parking_workload(kind: str) -> None:
    """The parking callgrind workload serves its round trips on one connection (without valgrind here)."""
    if kind == "uvloop":
        pytest.importorskip("uvloop")
    callgrind_parking.serve(kind, 20, client_process=kind == "uvloop")


@pytest.mark.parametrize("kind", ["parked-lean", "uvloop"])
def test_callgrind_parking_workload_with_the_client_in_a_child(kind: str) -> None:
    """--client-process: the client runs in a child process (untraced under valgrind); uvloop needs it."""
    if kind == "uvloop":
        pytest.importorskip("uvloop")
    callgrind_parking.serve(kind, 20, client_process=True)


def test_callgrind_parking_refuses_uvloop_with_a_client_thread() -> None:
    with pytest.raises(SystemExit, match="--client-process"):
        callgrind_parking.serve("uvloop", 1)


@needs_cc
def test_lean_line_kind_short_run(tmp_path: Path) -> None:
    """The lean line kind (native-park-lean-sync, in tcp128) answers the load generator for 0.3 s."""
    tcp128 = next(s for s in SCENARIOS if s.name == "tcp128")
    assert "native-park-lean-sync" in tcp128.kinds
    result = run_one(
        build_loadgen(), "native-park-lean-sync", dataclasses.replace(tcp128, clients=16), duration=0.3, warmup=0.1,
        cpus=_Cpus(None, None), tmpdir=str(tmp_path),
    )
    assert float(result["requests"]) > 0  # type: ignore[arg-type]  # a JSON number
    assert result["errors"] == 0


@needs_cc
@pytest.mark.parametrize("kind", ["native-park-pool", "native-park-sync", "native-park-lean-sync"])
def test_a_short_idle_run_holds_its_idle_connections(kind: str, tmp_path: Path) -> None:
    """The idle10k shape, 50 idle connections: a parking server answers the active clients and holds every idle one."""
    idle10k = next(s for s in SCENARIOS if s.name == "idle10k")
    result = run_one(
        build_loadgen(), kind, dataclasses.replace(idle10k, idle=50), duration=0.3, warmup=0.1,
        cpus=_Cpus(None, None), tmpdir=str(tmp_path),
    )
    assert float(result["requests"]) > 0  # type: ignore[arg-type]  # a JSON number
    assert result["errors"] == 0
    assert result["idle_opened"] == result["idle_alive"] == 50


def test_quick_shortens_the_runs() -> None:
    """--quick alone gives 1 round of 0.5 s and 10 import runs; no option gives the full lengths."""
    quick, full = parse_arguments(["--quick"]), parse_arguments([])
    assert (quick.rounds, quick.duration, quick.warmup, quick.import_runs) == (1, 0.5, 0.2, 10)
    assert (full.rounds, full.duration, full.warmup, full.import_runs) == (3, 2.0, 0.5, 60)


def test_an_explicit_run_length_wins_over_quick() -> None:
    """--quick --rounds 4 runs 4 rounds (the other lengths stay quick's), whichever option comes first."""
    for argv in (["--quick", "--rounds", "4"], ["--rounds", "4", "--quick"]):
        args = parse_arguments(argv)
        assert (args.rounds, args.duration, args.import_runs) == (4, 0.5, 10)
    args = parse_arguments(["--quick", "--duration", "1.5", "--import-runs", "5"])
    assert (args.rounds, args.duration, args.import_runs) == (1, 1.5, 5)


def test_a_run_length_out_of_range_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """--quick --rounds 0 exits 2 naming the range, as --rounds 0 alone does."""
    with pytest.raises(SystemExit) as info:
        parse_arguments(["--quick", "--rounds", "0"])
    assert info.value.code == 2
    assert "rounds must be 1..20" in capsys.readouterr().err
