"""The run history: SQLite rows, safetensors arrays, migrations, two writers at once, exports."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import septq_core as sq
from septq_core.store import SCHEMA_VERSION, RunStore, StoreError, record_run

ROOT = Path(__file__).resolve().parent.parent
CONFIG = {"method": "septq", "bits": 3, "group_size": None, "reserve_ratio": 0.01, "seqlen": 64}


def new_run(store: RunStore, label: str = "r", source: str = "tiny", config: dict | None = None) -> str:
    return store.create(label=label, model_source=source, model_card={"name": "tiny", "dtype": torch.float32}, config=config or CONFIG)


def test_round_trip_of_every_operation(tmp_path):
    store = RunStore(tmp_path)
    a = new_run(store, "first")
    b = new_run(store, "second", config={**CONFIG, "bits": 4})
    store.finish(a, status="done", seconds={"total": 2.5, "solver": 1.0}, bits_per_weight=3.25, reserved_fraction=0.01,
                 reports=[{"name": "0.q_proj", "shape": [64, 64]}], calibration={"corpus": "demo", "nsamples": 4})
    store.add_perplexity(a, corpus="wikitext2", seqlen=64, windows=8, value=30.0, tokens=504, source="shared")
    store.add_perplexity(a, corpus="wikitext2", seqlen=64, windows=8, value=29.5, tokens=504, source="shared")  # replaces
    store.add_perplexity(a, corpus="c4", seqlen=64, windows=8, value=40.0)
    store.add_generation(a, prompt="Once", seed=0, max_new_tokens=5, text="upon a time")

    got = store.get(a)
    assert got["label"] == "first" and got["status"] == "done" and got["finished"] >= got["created"]
    assert got["config"] == CONFIG and got["model_card"] == {"name": "tiny", "dtype": "torch.float32"}
    assert got["seconds"] == {"total": 2.5, "solver": 1.0} and got["bits_per_weight"] == 3.25 and got["reserved_fraction"] == 0.01
    assert got["reports"] == [{"name": "0.q_proj", "shape": [64, 64]}] and got["calibration"]["nsamples"] == 4
    assert [(p["corpus"], p["value"], p["tokens"], p["source"]) for p in got["perplexities"]] == [
        ("c4", 40.0, None, ""), ("wikitext2", 29.5, 504, "shared")]
    assert [(g["prompt"], g["text"]) for g in got["generations"]] == [("Once", "upon a time")]

    assert [r["id"] for r in store.list()] == [b, a]  # newest first
    assert [r["id"] for r in store.list("running")] == [b]
    assert store.list()[1]["seconds_total"] == 2.5 and store.list()[0]["bits"] == 4

    store.rename(a, "  renamed ")
    assert store.get(a)["label"] == "renamed"
    store.save_arrays(a, "masks", {"m": torch.ones(2, 2, dtype=torch.bool)})
    assert (tmp_path / "runs" / a).is_dir() and store.get(a)["artifacts"] == ["masks"]
    store.delete(a)
    assert not (tmp_path / "runs" / a).exists() and [r["id"] for r in store.list()] == [b]
    assert RunStore(tmp_path).get(b)["label"] == "second"  # kept across a reopen


def test_unknown_ids_bad_status_and_bad_names(tmp_path):
    store = RunStore(tmp_path)
    run = new_run(store)
    for call in (lambda: store.get("nope"), lambda: store.finish("nope", status="done"), lambda: store.delete("nope"),
                 lambda: store.add_perplexity("nope", corpus="c4", seqlen=8, windows=1, value=1.0),
                 lambda: store.add_generation("nope", prompt="p", seed=0, max_new_tokens=1, text="t"),
                 lambda: store.rename("nope", "x"), lambda: store.comparison(["nope"]), lambda: store.load_arrays(run, "masks")):
        with pytest.raises(StoreError):
            call()
    with pytest.raises(StoreError, match="use one of running, done, failed, cancelled"):
        store.finish(run, status="finished")
    with pytest.raises(StoreError):
        store.list("ok")
    with pytest.raises(StoreError):
        store.save_arrays(run, "../escape", {"x": torch.zeros(1)})
    with pytest.raises(StoreError):
        store.rename(run, " ")
    assert store.get(run)["status"] == "running"


def test_home_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SEPTQ_HOME", str(tmp_path / "home"))
    assert RunStore().path == tmp_path / "home" / "runs.sqlite"
    assert (tmp_path / "home" / "runs.sqlite").is_file()
    mode = sqlite3.connect(tmp_path / "home" / "runs.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_arrays_round_trip_without_pickle(tmp_path):
    store = RunStore(tmp_path)
    run = new_run(store)
    g = torch.Generator().manual_seed(0)
    tensors = {"0.q_proj": torch.rand(8, 16, generator=g) < 0.1, "scale": torch.randn(8, 1, generator=g), "idx": torch.arange(5)}
    path = store.save_arrays(run, "masks", tensors)
    back = store.load_arrays(run, "masks")
    assert set(back) == set(tensors)
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and torch.equal(back[k], t), k
    assert path == tmp_path / "runs" / run / "masks.safetensors"
    assert load_file(str(path))["0.q_proj"].dtype == torch.uint8  # a plain safetensors file
    files = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert not [f for f in files if not f.startswith("runs.sqlite") and not f.endswith(".safetensors")], files
    assert all(not p.read_bytes().startswith(b"\x80") for p in tmp_path.rglob("*.safetensors"))  # no pickle protocol header


V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (id TEXT PRIMARY KEY, label TEXT NOT NULL, status TEXT NOT NULL, created REAL NOT NULL, finished REAL,
    model_source TEXT NOT NULL, model_card TEXT NOT NULL, config TEXT NOT NULL, seconds TEXT NOT NULL DEFAULT '{}', bits_per_weight REAL,
    reports TEXT NOT NULL DEFAULT '[]', calibration TEXT NOT NULL DEFAULT '{}', error TEXT NOT NULL DEFAULT '');
CREATE TABLE perplexities (run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, corpus TEXT NOT NULL, seqlen INTEGER NOT NULL,
    windows INTEGER NOT NULL, value REAL, tokens INTEGER, created REAL NOT NULL, PRIMARY KEY (run_id, corpus, seqlen, windows));
CREATE TABLE generations (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    prompt TEXT NOT NULL, seed INTEGER NOT NULL, max_new_tokens INTEGER NOT NULL, text TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE artifacts (run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, name TEXT NOT NULL, path TEXT NOT NULL,
    bytes INTEGER NOT NULL, created REAL NOT NULL, PRIMARY KEY (run_id, name));
CREATE INDEX runs_by_model ON runs (model_source, status, created);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO runs (id, label, status, created, finished, model_source, model_card, config, bits_per_weight)
    VALUES ('20240101-000000-abcdef', 'old run', 'done', 1704067200.0, 1704067260.0, 'tiny', '{}', '{"bits": 3, "method": "gptq"}', 3.0);
INSERT INTO perplexities VALUES ('20240101-000000-abcdef', 'wikitext2', 2048, 40, 12.5, 81880, 1704067300.0);
"""


def schema_version(path: Path) -> str:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    finally:
        db.close()


def test_version_1_database_is_migrated(tmp_path):
    db = sqlite3.connect(tmp_path / "runs.sqlite")
    db.executescript(V1_SCHEMA)
    db.close()
    store = RunStore(tmp_path)
    assert schema_version(store.path) == str(SCHEMA_VERSION) == "3"
    old = store.get("20240101-000000-abcdef")
    assert old["label"] == "old run" and old["bits_per_weight"] == 3.0 and old["config"] == {"bits": 3, "method": "gptq"}
    assert old["reserved_fraction"] is None  # added by version 2
    assert old["saved_to"] is None  # added by version 3
    store.set_saved(old["id"], tmp_path / "export")
    assert store.get(old["id"])["saved_to"] == str((tmp_path / "export").resolve())
    assert [(p["value"], p["source"]) for p in old["perplexities"]] == [(12.5, "")]
    store.add_perplexity(old["id"], corpus="c4", seqlen=2048, windows=256, value=15.0, source="allenai/c4")
    assert store.get(old["id"])["perplexities"][0]["source"] == "allenai/c4"
    assert store.find_done(model_source="tiny", config={"method": "gptq", "bits": 3}) == old["id"]
    RunStore(tmp_path)  # opening a current database again changes nothing
    assert schema_version(store.path) == "3"


def test_database_from_a_newer_version_is_refused(tmp_path):
    RunStore(tmp_path)
    db = sqlite3.connect(tmp_path / "runs.sqlite")
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="upgrade septq-explorer"):
        RunStore(tmp_path)


WRITER = """
import sys, time
from pathlib import Path
from septq_core.store import RunStore
home, tag, shared = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
store = RunStore(home)
(home / f"{tag}.ready").touch()
while not (home / "go").exists():
    time.sleep(0.005)
for i in range(200):
    store.add_perplexity(shared, corpus=tag, seqlen=i + 2, windows=1, value=float(i))
    store.create(label=f"{tag} {i}", model_source=tag, model_card={}, config={"i": i})
"""


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    store = RunStore(tmp_path)
    shared = new_run(store)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), tag, shared], cwd=ROOT, stderr=subprocess.PIPE, text=True)
             for tag in ("a", "b")]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"{tag}.ready").exists() for tag in ("a", "b")):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [p.communicate()[1] for p in procs if p.poll() is not None]
        time.sleep(0.01)
    (tmp_path / "go").touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    ppl = store.get(shared)["perplexities"]
    for tag in ("a", "b"):
        assert sorted(p["seqlen"] for p in ppl if p["corpus"] == tag) == list(range(2, 202))
        assert sorted(r["label"] for r in store.list() if r["model_source"] == tag) == sorted(f"{tag} {i}" for i in range(200))


def test_comparison_and_export(tmp_path):
    store = RunStore(tmp_path)
    a = new_run(store, "A")
    b = new_run(store, "B", config={**CONFIG, "method": "gptq", "group_size": 128})
    store.finish(a, status="done", seconds={"total": 1.25}, bits_per_weight=3.1875)
    store.add_perplexity(a, corpus="wikitext2", seqlen=64, windows=4, value=31.0)
    store.add_perplexity(a, corpus="wikitext2", seqlen=64, windows=16, value=30.123456789)  # more windows win
    store.add_perplexity(b, corpus="c4", seqlen=128, windows=4, value=55.5)

    rows = store.comparison([a, b])
    assert [r["id"] for r in rows] == [a, b] and [r["id"] for r in store.comparison()] == [b, a]
    assert rows[0]["ppl wikitext2@64"] == 30.123456789 and rows[0]["ppl c4@128"] is None
    assert rows[1]["ppl c4@128"] == 55.5 and rows[1]["method"] == "gptq" and rows[1]["group_size"] == 128
    assert rows[0]["bits_per_weight"] == 3.1875 and rows[0]["seconds_total"] == 1.25 and rows[0]["reserve_ratio"] == 0.01
    assert list(store.comparison([b])[0]) == ["id", "label", "model_source", "method", "bits", "group_size", "reserve_ratio",
                                              "bits_per_weight", "seconds_total", "ppl c4@128"]

    with store.export(tmp_path / "table.csv", [a, b]).open(newline="") as f:
        read = list(csv.DictReader(f))
    assert [r["label"] for r in read] == ["A", "B"] and float(read[0]["ppl wikitext2@64"]) == 30.123456789
    assert float(read[1]["ppl c4@128"]) == 55.5 and read[0]["ppl c4@128"] == "" and read[1]["group_size"] == "128"
    assert json.loads(store.export(tmp_path / "table.JSON", [a, b]).read_text()) == rows
    with pytest.raises(StoreError, match=r"\.csv or \.json"):
        store.export(tmp_path / "table.xlsx")
    assert not (tmp_path / "table.xlsx").exists()


def test_find_done(tmp_path):
    store = RunStore(tmp_path)
    assert store.find_done(model_source="tiny", config=CONFIG) is None
    running, failed = new_run(store), new_run(store)
    store.finish(failed, status="failed", error="boom")
    assert store.find_done(model_source="tiny", config=CONFIG) is None
    done = new_run(store)
    store.finish(done, status="done")
    assert store.find_done(model_source="tiny", config=dict(reversed(CONFIG.items()))) == done  # key order does not matter
    assert store.find_done(model_source="tiny", config={**CONFIG, "bits": 4}) is None
    assert store.find_done(model_source="other", config=CONFIG) is None
    store.finish(running, status="done")
    assert store.find_done(model_source="tiny", config=CONFIG) == done  # the newest created


def test_record_run_of_a_real_quantization(tmp_path, tiny_model_dir):
    lm = sq.load_model(str(tiny_model_dir("llama")))
    run = sq.quantize_model(lm, sq.QuantConfig(method="septq", bits=3, calib="demo", nsamples=4, seqlen=64))
    store = RunStore(tmp_path)
    rid = record_run(store, lm, run)
    got = store.get(rid)
    assert got["status"] == "done" and got["label"] == run.config.label and got["model_source"] == lm.source
    assert got["bits_per_weight"] == run.bits_per_weight and got["reserved_fraction"] == run.reserved_fraction
    assert [r["name"] for r in got["reports"]] == [r.name for r in run.reports]
    assert sq.QuantConfig.from_dict(got["config"]) == run.config and got["seconds"] == run.seconds
    masks = store.load_arrays(rid, "masks")
    assert set(masks) == set(run.masks) and all(torch.equal(masks[k], run.masks[k]) for k in run.masks)
    assert any(m.any() for m in masks.values())
    assert store.find_done(model_source=lm.source, config=run.config.to_dict()) == rid
