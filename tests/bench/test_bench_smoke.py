"""Smoke test of the benchmark: the load generator builds and one tiny scenario runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.bench.run import SCENARIOS, _Cpus, build_loadgen, run_one

# The thread method: the run waits on child processes and their pipes.
pytestmark = pytest.mark.timeout(30, method="thread")


@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="needs a C compiler")
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
