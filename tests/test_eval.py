"""The benchmark harnesses run end to end at tiny sizes (their timings are checked by nobody here)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

EVAL = Path(__file__).parents[1] / "eval"


def load(script: str):
    spec = importlib.util.spec_from_file_location(script, EVAL / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kernel_benchmark_smoke_run(tmp_path):
    pytest.importorskip("triton")
    assert load("bench_kernels").main(["--smoke", "--out", str(tmp_path)]) == 0
    (table,) = tmp_path.glob("kernels_*.csv")
    rows = list(csv.DictReader(table.open()))
    ops = {r["op"] for r in rows}
    assert ops == {"aligned_cosine", "weighted_merge", "few_query_attention", "bipartite_match"}
    assert {r["implementation"] for r in rows} == {"kernel", "reference", "naive"}
    assert all(float(r["median_ms"]) > 0 for r in rows)
    assert list(tmp_path.glob("kernels_*.png"))


def test_latency_benchmark_smoke_run(tmp_path):
    """The small model, two frames: every column is filled, beside the ideal."""
    argv = ["--frames", "2", "--methods", "none", "uniform", "dycoke", "--ratios", "0.3", "--new-tokens", "3",
            "--repeats", "1", "--out", str(tmp_path)]
    assert load("bench_latency").main(argv) == 0
    (table,) = tmp_path.glob("latency_*.csv")
    rows = list(csv.DictReader(table.open()))
    assert [r["method"] for r in rows] == ["none", "uniform", "dycoke"]
    assert all(float(r["prefill_ms"]) > 0 and float(r["ideal_prefill_ms"]) > 0 for r in rows)
    assert abs(float(rows[1]["achieved_ratio"]) - 0.3) < 0.02
    assert list(tmp_path.glob("latency_*_vs_ratio.png"))
