"""The `septq` command end to end on a tiny model, in real subprocesses (output and exit codes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT

import septq_core as sq

FAST = ["--nsamples", "4", "--seqlen", "64", "--eval-seqlen", "64", "--windows", "4"]


def septq(*args, home, check_rc: int | None = 0, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "SEPTQ_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "septq_core.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr
    return proc


def test_help_has_examples(tmp_path):
    out = septq("--help", home=tmp_path).stdout
    assert "examples:" in out and "septq sweep" in out
    assert "--reserve-ratio" in septq("quantize", "--help", home=tmp_path).stdout


def test_quantize_prints_stores_and_matches_the_library(tmp_path, tiny_model_dir):
    model = tiny_model_dir("llama")
    proc = septq("quantize", "--model", model, "--method", "gptq", "--bits", "3", *FAST, "--eval", "demo",
                 "--json", tmp_path / "rows.json", "--quiet", home=tmp_path)
    assert proc.stderr == ""  # --quiet: nothing but the table on stdout
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["run", "demo", "bits/weight", "seconds"]
    assert lines[2].startswith("FP") and lines[3].startswith("GPTQ 3-bit")
    rows = json.loads((tmp_path / "rows.json").read_text())
    lm = sq.load_model(str(model))
    cfg = sq.QuantConfig.preset("preview", method="gptq", bits=3, nsamples=4, seqlen=64)
    run = sq.quantize_model(lm, cfg)
    expected = sq.perplexity(run.model, lm.tokenizer, "demo", seqlen=64, max_windows=4).value
    assert rows[1]["ppl"]["demo"] == pytest.approx(expected, rel=1e-6)
    assert rows[1]["bits_per_weight"] == pytest.approx(run.bits_per_weight)
    fp = sq.perplexity(lm.model, lm.tokenizer, "demo", seqlen=64, max_windows=4).value
    assert rows[0]["ppl"]["demo"] == pytest.approx(fp, rel=1e-6)

    listed = septq("runs", "list", home=tmp_path).stdout
    assert "GPTQ 3-bit" in listed and "done" in listed
    run_id = rows[1]["id"]
    shown = json.loads(septq("runs", "show", run_id, home=tmp_path).stdout)
    assert shown["perplexities"][0]["value"] == pytest.approx(expected, rel=1e-6)
    septq("runs", "export", run_id, "--out", tmp_path / "one.csv", home=tmp_path)
    assert "GPTQ 3-bit" in (tmp_path / "one.csv").read_text()
    septq("runs", "delete", run_id, home=tmp_path)
    assert "GPTQ 3-bit" not in septq("runs", "list", home=tmp_path).stdout
    gone = septq("runs", "show", run_id, home=tmp_path, check_rc=2)
    assert gone.stderr.startswith("septq: error:") and "Traceback" not in gone.stderr


@pytest.mark.parametrize("args, words", [
    (["quantize", "--bits", "9"], "bits"),
    (["quantize", "--model", "/no/such/model"], "/no/such/model"),
    (["quantize", "--eval", "/no/such/file.txt"], "file.txt"),
    (["eval"], "--model"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, tiny_model_dir, args, words):
    if "--model" not in args and args[0] != "eval":
        args = [*args, "--model", tiny_model_dir("llama")]
    proc = septq(*args, *FAST[:4] if args[0] == "quantize" else [], home=tmp_path, check_rc=2)
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("septq: error:") and words in err[-1], proc.stderr  # progress lines may come before
    assert "Traceback" not in proc.stderr and len([e for e in err if e.startswith("septq:")]) == 1


def test_save_then_eval_gives_the_same_perplexity(tmp_path, tiny_model_dir):
    out = tmp_path / "export"
    proc = septq("quantize", "--model", tiny_model_dir("llama"), "--method", "septq", "--bits", "2", *FAST,
                 "--save", out, "--json", tmp_path / "rows.json", "--quiet", home=tmp_path)
    saved = json.loads((tmp_path / "rows.json").read_text())[1]["ppl"]["demo"]
    again = septq("eval", "--model", out, "--eval", "demo", "--eval-seqlen", "64", "--windows", "4", "--quiet",
                  home=tmp_path)
    assert f"{saved:.3f}" in again.stdout, (proc.stdout, again.stdout)
    run_id = json.loads((tmp_path / "rows.json").read_text())[1]["id"]
    by_run = septq("eval", "--run", run_id, "--eval", "demo", "--eval-seqlen", "64", "--windows", "4", "--quiet",
                   home=tmp_path)
    assert f"{saved:.3f}" in by_run.stdout


def test_sweep_resumes_after_a_killed_process(tmp_path, tiny_model_dir):
    from septq_core.store import RunStore

    args = ["sweep", "--model", tiny_model_dir("llama"), "--methods", "rtn", "gptq", "--bits", "2", "3", *FAST,
            "--eval", "demo"]
    env = {**os.environ, "SEPTQ_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen([sys.executable, "-m", "septq_core.cli", *map(str, args)], env=env, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = RunStore(tmp_path)
    deadline = time.time() + 240
    while time.time() < deadline:  # kill it once two cells are stored
        done = [r for r in store.list(status="done") if r["label"] != "FP" and not r["label"].startswith("FP ")]
        if len(done) >= 2 and all(store.get(r["id"])["perplexities"] for r in done):
            break
        time.sleep(0.2)
    first.kill()
    first.wait()
    finished_before = {r["id"] for r in store.list(status="done")}
    assert len(finished_before) >= 3  # FP and two cells
    proc = septq(*args, home=tmp_path)
    assert proc.stderr.count("done before") >= 2
    table = proc.stdout.splitlines()
    assert [line.split()[0] for line in table[2:]] == ["FP", "RTN", "RTN", "GPTQ", "GPTQ"]
    labels = [r["label"] for r in store.list(status="done")]
    for label in ("RTN 2-bit", "RTN 3-bit", "GPTQ 2-bit", "GPTQ 3-bit"):
        assert labels.count(label) == 1, labels  # nothing done twice


def test_sweep_recomputes_cells_evaluated_on_other_windows(tmp_path, tiny_model_dir):
    """A stored cell counts as done only for the same window length and number of windows."""
    from septq_core.store import RunStore

    base = ["sweep", "--model", tiny_model_dir("llama"), "--methods", "rtn", "--bits", "2", "--nsamples", "4",
            "--seqlen", "64", "--eval-seqlen", "64", "--eval", "demo"]
    septq(*base, "--windows", "2", home=tmp_path)
    again = septq(*base, "--windows", "2", home=tmp_path)
    assert again.stderr.count("done before") == 1
    more = septq(*base, "--windows", "3", home=tmp_path)
    assert "done before" not in more.stderr
    cells = [r for r in RunStore(tmp_path).list(status="done") if r["label"] == "RTN 2-bit"]
    assert len(cells) == 2
    windows = sorted(p["windows"] for r in cells for p in RunStore(tmp_path).get(r["id"])["perplexities"])
    assert windows == [2, 3]
