"""`python -m bench` runs end to end on a tiny model (a smoke test: benchmarks never run in make test)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from conftest import ROOT


def test_entry_point_runs_the_engine_benchmark_on_a_tiny_model(tiny_model_dir, tmp_path):
    out = tmp_path / "engine.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "engine", "--model", str(tiny_model_dir("llama")), "--corpus", "demo",
         "--seqlen", "64", "--windows", "2", "--bits", "2", "--nsamples", "4", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [r["method"] for r in result["quality"]] == ["rtn", "gptq", "septq"]
    assert all(math.isfinite(r["ppl"]) and r["bits"] == 2 for r in result["quality"])
    assert set(result["speed"][0]["ratios"]) == {"septq_over_gptq_solver", "true_sequential_over_fp_forward",
                                                 "shared_pass_over_fp_forward"}
    assert "SEPTQ / GPTQ solver seconds" in proc.stdout


def test_unknown_benchmark_is_exit_code_2():
    proc = subprocess.run([sys.executable, "-m", "bench", "nope"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "choose from" in proc.stderr
