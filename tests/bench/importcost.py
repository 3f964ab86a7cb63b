"""Import cost (issue 18): whole-process wall time and ``-X importtime``.

A script that switches ``import socketserver`` to compat pays compat's import
at every start, and so does every run of the command line.  Measured as the
wall time of whole processes (the interpreter's start included, as a user
sees it), median of many runs, with hyperfine when it is installed (``-N``:
no shell in between) and an internal repeated-run timer otherwise; and the
modules behind the time, from ``python -X importtime`` (median over a few
runs of each module's self and cumulative microseconds).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = (
    "COMMANDS", "COMPAT_START", "STDLIB_START", "ImportCost", "ImportLine", "instructions", "measure",
    "parse_importtime", "top_imports",
)

ROOT: Final = Path(__file__).resolve().parent.parent.parent

COMMANDS: Final = {
    "python -c pass": ["-c", "pass"],
    "import socketserver": ["-c", "import socketserver"],
    "import composable_server": ["-c", "import composable_server"],
    "import composable_server.compat": ["-c", "import composable_server.compat"],
    "composable_server serve --help": ["-m", "composable_server", "serve", "--help"],
    # The import alone could hide a cost moved into the constructor: the start
    # of a server, whole, against stdlib's.
    "socketserver: import + TCPServer + server_close()": [
        "-c", "import socketserver as s; s.TCPServer(('127.0.0.1', 0), s.BaseRequestHandler).server_close()",
    ],
    "compat: import + TCPServer + server_close()": [
        "-c",
        "from composable_server import compat as s; s.TCPServer(('127.0.0.1', 0), s.BaseRequestHandler).server_close()",
    ],
}
"""Label -> the interpreter's arguments."""

STDLIB_START: Final = "socketserver: import + TCPServer + server_close()"
COMPAT_START: Final = "compat: import + TCPServer + server_close()"


@dataclass(frozen=True)
class ImportLine:
    """One line of ``-X importtime``: a module and its import's microseconds."""

    module: str
    self_us: float
    cumulative_us: float


@dataclass(frozen=True)
class ImportCost:
    """The scenario's result: median wall milliseconds per command, and the tool used."""

    wall_ms: dict[str, float]
    tool: str
    runs: int
    top_cumulative: list[ImportLine]
    top_self: list[ImportLine]
    instructions: dict[str, int] | None = None


def parse_importtime(stderr: str) -> list[ImportLine]:
    """The ``import time:`` lines of *stderr* (``-X importtime``), in order."""
    lines = []
    for raw in stderr.splitlines():
        if not raw.startswith("import time:"):
            continue
        parts = raw[len("import time:") :].split("|")
        if len(parts) != 3:
            continue
        try:
            self_us, cumulative_us = float(parts[0]), float(parts[1])
        except ValueError:
            continue  # the header line ("self [us] | cumulative | imported package")
        lines.append(ImportLine(parts[2].strip(), self_us, cumulative_us))
    return lines


def top_imports(runs: Sequence[Sequence[ImportLine]], n: int) -> tuple[list[ImportLine], list[ImportLine]]:
    """The *n* modules with the largest median cumulative and self times over *runs*."""
    by_module: dict[str, list[ImportLine]] = {}
    for run in runs:
        for line in run:
            by_module.setdefault(line.module, []).append(line)
    medians = [
        ImportLine(
            module,
            statistics.median(x.self_us for x in lines),
            statistics.median(x.cumulative_us for x in lines),
        )
        for module, lines in by_module.items()
    ]
    return (
        sorted(medians, key=lambda x: -x.cumulative_us)[:n],
        sorted(medians, key=lambda x: -x.self_us)[:n],
    )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure with bytecode caches, as users run
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    return env


HYPERFINE_ROUNDS: Final = 5
"""hyperfine runs one command's runs back to back, then the next command's:
a change of load in between skews the ratios (seen on a busy machine:
``serve --help`` at 0.85x ``import socketserver``).  So the runs are split
into this many rounds of every command, and each median is over all rounds."""


def _hyperfine(python: str, runs: int, warmup: int) -> dict[str, float]:
    times: dict[str, list[float]] = {label: [] for label in COMMANDS}
    # *runs* in all: the first runs % ROUNDS rounds take one more.
    per_round = [runs // HYPERFINE_ROUNDS + (i < runs % HYPERFINE_ROUNDS) for i in range(HYPERFINE_ROUNDS)]
    with tempfile.TemporaryDirectory(prefix="cs-bench-import-") as tmp:
        out = Path(tmp) / "hyperfine.json"
        for i, count in enumerate(n for n in per_round if n):
            cmd = ["hyperfine", "-N", "--style", "none", "--warmup", str(warmup if i == 0 else min(warmup, 1)),
                   "--runs", str(count), "--export-json", str(out)]
            for label, args in COMMANDS.items():
                cmd += ["-n", label, " ".join([python, *(_quote(a) for a in args)])]
            subprocess.run(cmd, cwd=ROOT, env=_env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           timeout=600)
            for result in json.loads(out.read_text())["results"]:
                times[result["command"]] += [float(t) for t in result["times"]]
    return {label: statistics.median(t) * 1000.0 for label, t in times.items()}


def _quote(arg: str) -> str:
    # hyperfine -N splits the command like a shell would (shell-words), so quote.
    return f'"{arg}"' if " " in arg else arg


def _timer(python: str, runs: int, warmup: int) -> dict[str, float]:
    """The fallback: run each command *runs* times, interleaved; median wall ms."""
    times: dict[str, list[float]] = {label: [] for label in COMMANDS}
    for i in range(warmup + runs):
        for label, args in COMMANDS.items():
            t0 = time.perf_counter()
            subprocess.run([python, *args], cwd=ROOT, env=_env(), check=True, stdout=subprocess.DEVNULL, timeout=60)
            if i >= warmup:
                times[label].append((time.perf_counter() - t0) * 1000.0)
    return {label: statistics.median(t) for label, t in times.items()}


def measure(
    runs: int = 40, *, importtime_runs: int = 5, top: int = 12, python: str = sys.executable,
    use_hyperfine: bool | None = None, warmup: int | None = None,
) -> ImportCost:
    """Median wall milliseconds of each of :data:`COMMANDS` (after *warmup*
    unmeasured runs, default a tenth of *runs*, at least 2), and compat's top imports."""
    if warmup is None:
        warmup = max(2, runs // 10)
    if use_hyperfine is None:
        use_hyperfine = shutil.which("hyperfine") is not None
    wall = _hyperfine(python, runs, warmup) if use_hyperfine else _timer(python, runs, warmup)
    traces = []
    for _ in range(importtime_runs):
        proc = subprocess.run(
            [python, "-X", "importtime", "-c", "import composable_server.compat"],
            cwd=ROOT, env=_env(), check=True, capture_output=True, text=True, timeout=60,
        )
        traces.append(parse_importtime(proc.stderr))
    top_cumulative, top_self = top_imports(traces, top)
    return ImportCost(wall, "hyperfine -N" if use_hyperfine else "internal timer", runs, top_cumulative, top_self)


def instructions(python: str = sys.executable) -> dict[str, int]:
    """Instructions each of :data:`COMMANDS` executes, whole process, under
    ``valgrind --tool=callgrind``: a figure other load on the machine does not move."""
    if shutil.which("valgrind") is None:
        raise RuntimeError("valgrind is not installed")
    counts = {}
    with tempfile.TemporaryDirectory(prefix="cs-bench-import-") as tmp:
        for label, args in COMMANDS.items():
            # One plain run first, so the bytecode caches exist (a first run compiles).
            subprocess.run([python, *args], cwd=ROOT, env=_env(), check=True, stdout=subprocess.DEVNULL, timeout=60)
            out = Path(tmp) / "callgrind.out"
            subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python, *args],
                cwd=ROOT, env=_env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900,
            )
            totals = [line for line in out.read_text().splitlines() if line.startswith(("summary:", "totals:"))]
            counts[label] = int(totals[0].split()[1])
    return counts


def targets(cost: ImportCost) -> list[tuple[str, bool | None, str]]:
    """The two targets of issue 18's import item, as (target, met, figure):
    on wall time, and again on instructions when they were counted."""
    w = cost.wall_ms
    base, stdlib = w["python -c pass"], w["import socketserver"]
    compat, cli = w["import composable_server.compat"], w["composable_server serve --help"]
    counted: list[tuple[str, bool | None, str]] = []
    if cost.instructions:
        n = {label: count / 1e6 for label, count in cost.instructions.items()}
        n_base, n_stdlib = n["python -c pass"], n["import socketserver"]
        n_compat, n_cli = n["import composable_server.compat"], n["composable_server serve --help"]
        counted = [
            (
                "import (instructions): `import composable_server.compat` <= 3x `import socketserver` (whole process)",
                n_compat <= 3 * n_stdlib,
                f"{n_compat / n_stdlib:.2f}x ({n_compat:.1f} M vs {n_stdlib:.1f} M; import alone {n_compat - n_base:.1f} M "
                f"vs {n_stdlib - n_base:.1f} M over `python -c pass` {n_base:.1f} M)",
            ),
            (
                "import (instructions): `composable_server serve --help` <= 2x `import socketserver` (whole process)",
                n_cli <= 2 * n_stdlib,
                f"{n_cli / n_stdlib:.2f}x ({n_cli:.1f} M vs {n_stdlib:.1f} M)",
            ),
            (
                "import (instructions): compat's import + TCPServer + server_close() <= 3x socketserver's (whole process)",
                n[COMPAT_START] <= 3 * n[STDLIB_START],
                f"{n[COMPAT_START] / n[STDLIB_START]:.2f}x ({n[COMPAT_START]:.1f} M vs {n[STDLIB_START]:.1f} M)",
            ),
        ]
    return counted + [
        (
            "import: `python -c 'import composable_server.compat'` <= 3x `import socketserver` (whole process)",
            compat <= 3 * stdlib,
            f"{compat / stdlib:.2f}x ({compat:.1f} vs {stdlib:.1f} ms; import alone {compat - base:.1f} vs "
            f"{stdlib - base:.1f} ms over `python -c pass` {base:.1f} ms)",
        ),
        (
            "import: `python -m composable_server serve --help` <= 2x (`python -c pass` + `import socketserver`)",
            cli <= 2 * stdlib,
            f"{cli / stdlib:.2f}x ({cli:.1f} vs {stdlib:.1f} ms)",
        ),
        (
            "import: compat's import + TCPServer + server_close() <= 3x socketserver's (whole process)",
            w[COMPAT_START] <= 3 * w[STDLIB_START],
            f"{w[COMPAT_START] / w[STDLIB_START]:.2f}x ({w[COMPAT_START]:.1f} vs {w[STDLIB_START]:.1f} ms)",
        ),
    ]


def markdown(cost: ImportCost) -> list[str]:
    """The report's section."""
    out = [
        f"## Import cost (whole-process wall time, median of {cost.runs} runs, {cost.tool})",
        "",
        "| command | wall | vs `import socketserver` | instructions (callgrind) | vs `import socketserver` |",
        "|---|--:|--:|--:|--:|",
    ]
    stdlib = cost.wall_ms["import socketserver"]
    ins = cost.instructions or {}
    for label, ms in cost.wall_ms.items():
        n = ins.get(label)
        counted = f"{n / 1e6:.1f} M | {n / ins['import socketserver']:.2f}x" if n else "– | –"
        out.append(f"| `{label}` | {ms:.1f} ms | {ms / stdlib:.2f}x | {counted} |")
    out += ["", "`-X importtime` of `import composable_server.compat`, top modules by cumulative time (median):", ""]
    out += ["| module | cumulative | self |", "|---|--:|--:|"]
    out += [f"| {x.module} | {x.cumulative_us / 1000:.1f} ms | {x.self_us / 1000:.1f} ms |" for x in cost.top_cumulative]
    out += ["", "Top modules by self time:", ""]
    out += ["| module | self | cumulative |", "|---|--:|--:|"]
    out += [f"| {x.module} | {x.self_us / 1000:.1f} ms | {x.cumulative_us / 1000:.1f} ms |" for x in cost.top_self]
    out.append("")
    return out
