"""`python -m bench` runs end to end on a tiny model (smoke tests: benchmarks never run in make test)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from conftest import ROOT

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=ENV)


def test_engine_benchmark_on_a_tiny_model(tiny_model_dir, tmp_path):
    out = tmp_path / "engine.json"
    proc = bench("engine", "--model", str(tiny_model_dir("llama")), "--nsamples", "4", "--corpus", "demo",
                 "--eval-seqlens", "64", "--eval-windows", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["command"].startswith("python -m bench engine --model") and result["cores"] >= 1
    speed = result["speed"][0]
    assert speed["calibration"] == [4, 512]
    assert set(speed["ratios"]) == {"septq_over_gptq_solver", "true_sequential_over_fp_forward",
                                    "shared_pass_over_fp_forward"}
    for name in ("fp_forward", "gptq", "septq", "septq_shared_pass"):  # a model of a few MB in a process of hundreds
        assert 100 < speed["memory"][name]["rss_peak_mib"] < 20_000
    ev = result["evaluation"][0]
    assert ev["tokens"] == 2 * 63 and math.isclose(ev["tokens_per_s"], ev["tokens"] / ev["seconds"])
    assert "SEPTQ / GPTQ solver seconds" in proc.stdout


def test_quality_resumes_from_its_store_and_the_report_draws_it(tiny_model_dir, tmp_path):
    model, results, home = str(tiny_model_dir("llama")), tmp_path / "results", tmp_path / "runs"
    args = ["quality", "--model", model, "--sections", "preview", "reserve", "--eval", "demo", "--windows", "2",
            "--home", str(home), "--out", str(results / "quality.json")]
    first = bench(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    result = json.loads((results / "quality.json").read_text())
    preview, reserve = result["sections"]["preview"]["rows"], result["sections"]["reserve"]["rows"]
    assert [(r["method"], r["bits"]) for r in preview] == [(m, b) for m in ("rtn", "gptq", "septq") for b in (2, 3, 4)]
    assert sorted({r["reserve_ratio"] for r in reserve}) == [0.005, 0.01, 0.02]
    assert all(math.isfinite(r["ppl"]["demo"]) for r in preview + reserve)
    assert {r["bits"] for r in reserve} == {3}
    # the 1 % SEPTQ cell of "reserve" is the preview's, kept from the store; the others were computed
    assert [r["kept_from_store"] for r in reserve] == [r["reserve_ratio"] == 0.01 for r in reserve]
    assert not any(r["kept_from_store"] for r in preview)
    # more reserved weights cost more bits: 0.5 % < 1 % < 2 %
    bpw = [r["bits_per_weight"] for r in sorted(reserve, key=lambda r: r["reserve_ratio"])]
    assert bpw == sorted(bpw) and len(set(bpw)) == 3

    again = bench(*args)  # resumes: every cell is kept, with the same numbers
    assert again.returncode == 0, again.stderr[-2000:]
    rerun = json.loads((results / "quality.json").read_text())
    assert all(r["kept_from_store"] for s in rerun["sections"].values() for r in s["rows"])
    assert [r["ppl"] for r in rerun["sections"]["preview"]["rows"]] == [r["ppl"] for r in preview]

    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nhand-written part\n")
    proc = bench("report", "--results", str(results), "--readme", str(readme), "--charts", str(tmp_path / "charts"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = readme.read_text()
    assert text.startswith("# Benchmarks\n\nhand-written part\n")
    septq3 = next(r for r in preview if r["method"] == "septq" and r["bits"] == 3)
    assert f"| SEPTQ 1 % 3-bit | {septq3['bits_per_weight']:.3f} | {septq3['ppl']['demo']:.2f} |" in text
    assert "Not measured yet: `python -m bench engine" in text  # no engine.json in these results
    for png in ("quality_vs_bits.png", "reserve_ratio.png"):
        assert (tmp_path / "charts" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert bench("report", "--results", str(results), "--readme", str(readme), "--charts",
                 str(tmp_path / "charts")).returncode == 0
    assert readme.read_text() == text  # the block is replaced, not appended again


def test_unknown_benchmark_is_exit_code_2():
    proc = bench("nope")
    assert proc.returncode == 2 and "choose from" in proc.stderr


def _row(method, bits, nsamples, ppl, bpw, calib="demo"):
    return {"label": method, "method": method, "bits": bits, "group_size": None,
            "reserve_ratio": 0.01 if method == "septq" else 0.0, "calib": calib, "nsamples": nsamples, "seqlen": 512,
            "ppl": {"demo": ppl}, "bits_per_weight": bpw, "seconds": 10.0, "stage_seconds": None, "run_id": "x",
            "kept_from_store": False}


def test_report_of_calibration_and_a_partial_large_section(tmp_path):
    """Hand-written results: the report's tables carry their numbers, name the large section's missing
    bit-widths, and draw calibration size with GPTQ's point taken from the large section."""
    from bench import report

    valid = "/data/wikitext2/valid.txt"
    quality = {"model": "tiny", "weights": "random", "date": "2026-12-05 10:00", "command": "python -m bench quality",
               "eval": {"corpora": ["demo"], "seqlen": 512, "windows": 2, "tokens": {"demo": 1022}},
               "fp": {"demo": 20.0},
               "sections": {
                   "preview": {"rows": [_row(m, b, 16, 30.0 + b, b + 0.05) for m in ("gptq", "septq") for b in (2, 3, 4)]},
                   "large": {"rows": [_row("gptq", 3, 64, 41.25, 3.05, valid), _row("septq", 3, 64, 27.5, 3.37, valid)]},
                   "calibration": {"rows": [_row("septq", 3, n, p, 3.37, valid) for n, p in ((8, 33.0), (16, 29.0))]}}}
    results = tmp_path / "results"
    results.mkdir()
    (results / "quality.json").write_text(json.dumps(quality))
    text = report.report(results, tmp_path / "charts", tmp_path / "README.md")
    assert "| GPTQ 3-bit | 3.050 | 41.25 | 10 | 64 x 512 valid.txt |" in text
    assert "| SEPTQ 1 % 3-bit | 3.370 | 33.00 | 10 | 8 x 512 valid.txt |" in text
    assert "large: measured at 3 bits only" in text
    assert "41.25 / 27.50 = **0.667**" in text  # SEPTQ / GPTQ of the large section
    assert "Not measured yet: reserve, grouped" in text
    assert (tmp_path / "charts" / "calibration_size.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
