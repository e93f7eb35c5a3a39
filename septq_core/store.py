"""The run history: every quantization run, its perplexities and generations, kept across restarts.

One SQLite file, `<home>/runs.sqlite` (home: the `home` argument, else $SEPTQ_HOME, else ~/.septq), in WAL
mode with a busy timeout and one connection per operation, so that threads and processes can write at once.
Large arrays (masks) are safetensors files `<home>/runs/<id>/<name>.safetensors`, listed in `artifacts`.
Schema changes are numbered migrations, applied in one transaction when a store is opened.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import secrets
import shutil
import sqlite3
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SCHEMA_VERSION = 3
STATUSES = ("running", "done", "failed", "cancelled")
BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another one before giving up
COMPARISON_FIELDS = ("id", "label", "model_source", "method", "bits", "group_size", "reserve_ratio", "bits_per_weight", "seconds_total")
_JSON_COLUMNS = ("model_card", "config", "seconds", "reports", "calibration")
_ARRAY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


class StoreError(ValueError):
    """A request the run store cannot serve; the message says what to do instead."""


def _to_v1(db: sqlite3.Connection) -> None:
    """The first schema: runs with JSON columns, one perplexity per (run, corpus, seqlen, windows)."""
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("""CREATE TABLE runs (id TEXT PRIMARY KEY, label TEXT NOT NULL, status TEXT NOT NULL, created REAL NOT NULL,
        finished REAL, model_source TEXT NOT NULL, model_card TEXT NOT NULL, config TEXT NOT NULL, seconds TEXT NOT NULL DEFAULT '{}',
        bits_per_weight REAL, reports TEXT NOT NULL DEFAULT '[]', calibration TEXT NOT NULL DEFAULT '{}', error TEXT NOT NULL DEFAULT '')""")
    db.execute("""CREATE TABLE perplexities (run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, corpus TEXT NOT NULL,
        seqlen INTEGER NOT NULL, windows INTEGER NOT NULL, value REAL, tokens INTEGER, created REAL NOT NULL,
        PRIMARY KEY (run_id, corpus, seqlen, windows))""")
    db.execute("""CREATE TABLE generations (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        prompt TEXT NOT NULL, seed INTEGER NOT NULL, max_new_tokens INTEGER NOT NULL, text TEXT NOT NULL, created REAL NOT NULL)""")
    db.execute("""CREATE TABLE artifacts (run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, name TEXT NOT NULL,
        path TEXT NOT NULL, bytes INTEGER NOT NULL, created REAL NOT NULL, PRIMARY KEY (run_id, name))""")
    db.execute("CREATE INDEX runs_by_model ON runs (model_source, status, created)")


def _to_v2(db: sqlite3.Connection) -> None:
    """The fraction of weights a run keeps in full precision, and where a perplexity's text came from."""
    db.execute("ALTER TABLE runs ADD COLUMN reserved_fraction REAL")
    db.execute("ALTER TABLE perplexities ADD COLUMN source TEXT NOT NULL DEFAULT ''")


def _to_v3(db: sqlite3.Connection) -> None:
    """Where the quantized model was exported (`septq quantize --save`), for `septq eval --run`."""
    db.execute("ALTER TABLE runs ADD COLUMN saved_to TEXT")


MIGRATIONS = {1: _to_v1, 2: _to_v2, 3: _to_v3}  # version -> the step that brings a database from version - 1 to it


def _json(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)  # default=str: torch dtypes and devices in model cards


def _fields(row: sqlite3.Row) -> dict:
    out = dict(row)
    for key in _JSON_COLUMNS:
        if key in out:
            out[key] = json.loads(out[key])
    return out


def _summary(row: sqlite3.Row) -> dict:
    config, seconds = json.loads(row["config"]), json.loads(row["seconds"])
    return {"id": row["id"], "label": row["label"], "status": row["status"], "created": row["created"], "finished": row["finished"],
            "model_source": row["model_source"], "method": config.get("method"), "bits": config.get("bits"),
            "group_size": config.get("group_size"), "reserve_ratio": config.get("reserve_ratio"),
            "bits_per_weight": row["bits_per_weight"], "reserved_fraction": row["reserved_fraction"],
            "seconds_total": seconds.get("total"), "error": row["error"]}


def _check_status(status) -> None:
    if status not in STATUSES:
        raise StoreError(f"Run status {status!r} is unknown: use one of {', '.join(STATUSES)}.")


class RunStore:
    """Quantization runs kept in `<home>/runs.sqlite`; safe to use from several threads and processes."""

    def __init__(self, home: str | Path | None = None):
        home = home if home is not None else (os.environ.get("SEPTQ_HOME") or "~/.septq")
        self.home = Path(home).expanduser()
        self.home.mkdir(parents=True, exist_ok=True)
        self.path = self.home / "runs.sqlite"
        try:
            self._enable_wal()
            with self._db(write=True) as db:
                self._migrate(db)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} could not be opened as a run database ({exc}): move it away or set SEPTQ_HOME "
                             "to another folder.") from exc

    # -- connections and schema ---------------------------------------------
    @contextlib.contextmanager
    def _db(self, write: bool = False):
        """One connection, one transaction; `write` takes the write lock at once (BEGIN IMMEDIATE), waiting for other writers."""
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA synchronous = NORMAL")  # with WAL: no corruption, only the last commits lost on power failure
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        finally:
            db.close()

    def _enable_wal(self) -> None:
        """WAL mode is kept in the file; switching to it needs a moment alone with the database, so retry while busy."""
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            deadline = time.monotonic() + BUSY_TIMEOUT_S
            while True:
                try:
                    db.execute("PRAGMA journal_mode = WAL").fetchone()
                    return
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            db.close()

    def _migrate(self, db: sqlite3.Connection) -> None:
        has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() if has_meta else ("0",)
        if row is None:
            raise StoreError(f"{self.path} has no schema version: move it away or set SEPTQ_HOME to another folder.")
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} was written by a newer septq-explorer (schema version {version}, this one knows up to "
                             f"{SCHEMA_VERSION}): upgrade septq-explorer, or set SEPTQ_HOME to another folder.")
        for step in range(version + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[step](db)
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(step),))

    def _require(self, db: sqlite3.Connection, run_id: str) -> sqlite3.Row:
        row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"There is no run {run_id!r} in {self.path}: use an id from RunStore.list().")
        return row

    # -- writing ------------------------------------------------------------
    def create(self, *, label: str, model_source: str, model_card: dict, config: dict) -> str:
        """A new run with status "running"; returns its id, e.g. "20261204-235959-ab12cd" (time-ordered)."""
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        with self._db(write=True) as db:
            db.execute("INSERT INTO runs (id, label, status, created, model_source, model_card, config) VALUES (?, ?, 'running', ?, ?, ?, ?)",
                       (run_id, str(label), time.time(), str(model_source), _json(model_card), _json(config)))
        return run_id

    def finish(self, run_id: str, *, status: str, seconds: dict | None = None, bits_per_weight: float | None = None,
               reserved_fraction: float | None = None, reports: list[dict] | None = None, calibration: dict | None = None,
               error: str = "") -> None:
        """Set the run's status and results; a result given as None keeps what the run already has."""
        _check_status(status)
        maybe = lambda v: None if v is None else _json(v)
        number = lambda v: None if v is None else float(v)
        with self._db(write=True) as db:
            self._require(db, run_id)
            db.execute("""UPDATE runs SET status = ?, finished = ?, seconds = COALESCE(?, seconds), bits_per_weight = COALESCE(?, bits_per_weight),
                reserved_fraction = COALESCE(?, reserved_fraction), reports = COALESCE(?, reports), calibration = COALESCE(?, calibration),
                error = ? WHERE id = ?""",
                       (status, None if status == "running" else time.time(), maybe(seconds), number(bits_per_weight), number(reserved_fraction),
                        maybe(reports), maybe(calibration), str(error), run_id))

    def add_perplexity(self, run_id: str, *, corpus: str, seqlen: int, windows: int, value: float, tokens: int | None = None,
                       source: str = "") -> None:
        """One value per (run, corpus, seqlen, windows): adding it again replaces it."""
        with self._db(write=True) as db:
            self._require(db, run_id)
            db.execute("INSERT OR REPLACE INTO perplexities (run_id, corpus, seqlen, windows, value, tokens, source, created) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (run_id, corpus, int(seqlen), int(windows), float(value),
                                                           None if tokens is None else int(tokens), str(source), time.time()))

    def add_generation(self, run_id: str, *, prompt: str, seed: int, max_new_tokens: int, text: str) -> None:
        with self._db(write=True) as db:
            self._require(db, run_id)
            db.execute("INSERT INTO generations (run_id, prompt, seed, max_new_tokens, text, created) VALUES (?, ?, ?, ?, ?, ?)",
                       (run_id, str(prompt), int(seed), int(max_new_tokens), str(text), time.time()))

    def save_arrays(self, run_id: str, name: str, tensors: dict[str, torch.Tensor]) -> Path:
        """Write `tensors` to <home>/runs/<id>/<name>.safetensors (bool as uint8, restored by load_arrays)."""
        if not isinstance(name, str) or not _ARRAY_NAME.fullmatch(name):
            raise StoreError(f"Array name {name!r} is not allowed: use letters, digits, '_', '-' and '.', such as 'masks'.")
        with self._db() as db:
            self._require(db, run_id)
        folder = self.home / "runs" / run_id
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.safetensors"
        bools = sorted(k for k, t in tensors.items() if t.dtype == torch.bool)
        plain = {k: (t.to(torch.uint8) if t.dtype == torch.bool else t).detach().cpu().contiguous() for k, t in tensors.items()}
        tmp = path.with_name(path.name + ".tmp")
        save_file(plain, str(tmp), metadata={"bool": json.dumps(bools)})
        os.replace(tmp, path)  # written outside the database lock: a mask file of a large model takes a while
        with self._db(write=True) as db:
            try:
                self._require(db, run_id)
            except StoreError:
                path.unlink(missing_ok=True)  # the run was deleted meanwhile
                raise
            db.execute("INSERT OR REPLACE INTO artifacts (run_id, name, path, bytes, created) VALUES (?, ?, ?, ?, ?)",
                       (run_id, name, path.relative_to(self.home).as_posix(), path.stat().st_size, time.time()))
        return path

    def set_saved(self, run_id: str, path: str | Path) -> None:
        """Record the directory the run's quantized model was exported to."""
        with self._db(write=True) as db:
            self._require(db, run_id)
            db.execute("UPDATE runs SET saved_to = ? WHERE id = ?", (str(Path(path).resolve()), run_id))

    def rename(self, run_id: str, label: str) -> None:
        if not isinstance(label, str) or not label.strip():
            raise StoreError("A run label cannot be empty: give a few words, such as 'SEPTQ 3-bit r=0.01'.")
        with self._db(write=True) as db:
            self._require(db, run_id)
            db.execute("UPDATE runs SET label = ? WHERE id = ?", (label.strip(), run_id))

    def delete(self, run_id: str) -> None:
        """The run's rows and its folder of arrays."""
        with self._db(write=True) as db:
            self._require(db, run_id)
            for table in ("perplexities", "generations", "artifacts"):
                db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        folder = self.home / "runs" / run_id
        if folder.exists():
            shutil.rmtree(folder)

    # -- reading ------------------------------------------------------------
    def load_arrays(self, run_id: str, name: str) -> dict[str, torch.Tensor]:
        with self._db() as db:
            self._require(db, run_id)
            names = {r["name"]: r["path"] for r in db.execute("SELECT name, path FROM artifacts WHERE run_id = ?", (run_id,))}
        if name not in names:
            raise StoreError(f"Run {run_id!r} has no arrays named {name!r} (it has: {', '.join(sorted(names)) or 'none'}): "
                             "save them with save_arrays first.")
        path = self.home / names[name]
        if not path.is_file():
            raise StoreError(f"The arrays file {path} of run {run_id!r} is missing: delete the run or save the arrays again.")
        with safe_open(str(path), framework="pt") as f:
            bools = set(json.loads((f.metadata() or {}).get("bool", "[]")))
            return {k: f.get_tensor(k).bool() if k in bools else f.get_tensor(k) for k in f.keys()}

    def get(self, run_id: str) -> dict:
        """Every field of the run (JSON columns parsed), with its perplexities, generations and artifact names."""
        with self._db() as db:
            out = _fields(self._require(db, run_id))
            out["perplexities"] = [dict(r) for r in db.execute(
                "SELECT corpus, seqlen, windows, value, tokens, source, created FROM perplexities WHERE run_id = ? "
                "ORDER BY corpus, seqlen, windows", (run_id,))]
            out["generations"] = [dict(r) for r in db.execute(
                "SELECT prompt, seed, max_new_tokens, text, created FROM generations WHERE run_id = ? ORDER BY id", (run_id,))]
            out["artifacts"] = [r["name"] for r in db.execute("SELECT name FROM artifacts WHERE run_id = ? ORDER BY name", (run_id,))]
        return out

    def list(self, status: str | None = None) -> list[dict]:
        """Summary rows (id, label, status, method, bits, bits_per_weight, seconds_total, ...), newest first."""
        if status is not None:
            _check_status(status)
        where, args = ("WHERE status = ?", (status,)) if status is not None else ("", ())
        with self._db() as db:
            rows = db.execute(f"SELECT * FROM runs {where} ORDER BY created DESC, id DESC", args).fetchall()
        return [_summary(r) for r in rows]

    def find_done(self, *, model_source: str, config: dict) -> str | None:
        """The newest finished ("done") run of `model_source` whose config is JSON-equal to `config`, for resuming a sweep."""
        wanted = json.loads(_json(config))
        with self._db() as db:
            rows = db.execute("SELECT id, config FROM runs WHERE status = 'done' AND model_source = ? ORDER BY created DESC, id DESC",
                              (str(model_source),)).fetchall()
        return next((r["id"] for r in rows if json.loads(r["config"]) == wanted), None)

    def comparison(self, run_ids: list[str] | None = None) -> list[dict]:
        """One row per run (all runs newest first, or `run_ids` in order): COMPARISON_FIELDS and one "ppl <corpus>@<seqlen>"
        key per perplexity any of them has (None where a run lacks it; of several window counts, the largest)."""
        with self._db() as db:
            if run_ids is None:
                rows = db.execute("SELECT * FROM runs ORDER BY created DESC, id DESC").fetchall()
            else:
                rows = [self._require(db, r) for r in run_ids]
            ppl = db.execute("SELECT run_id, corpus, seqlen, value FROM perplexities ORDER BY windows").fetchall()
        ids = {r["id"] for r in rows}
        values = {(p["run_id"], f"ppl {p['corpus']}@{p['seqlen']}"): p["value"] for p in ppl if p["run_id"] in ids}
        keys = sorted({k for _, k in values})
        table = []
        for row in rows:
            summary = _summary(row)
            table.append({**{k: summary[k] for k in COMPARISON_FIELDS}, **{k: values.get((row["id"], k)) for k in keys}})
        return table

    def export(self, path: str | Path, run_ids: list[str] | None = None) -> Path:
        """The comparison table as CSV (path ends with .csv) or JSON (.json)."""
        path = Path(path)
        kind = path.suffix.lower()
        if kind not in (".csv", ".json"):
            raise StoreError(f"Cannot export to {path.name!r}: give a file name ending with .csv or .json.")
        rows = self.comparison(run_ids)
        if kind == ".json":
            path.write_text(json.dumps(rows, indent=2, default=str) + "\n", encoding="utf-8")
            return path
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else list(COMPARISON_FIELDS))
            writer.writeheader()
            writer.writerows(rows)
        return path


def record_run(store: RunStore, loaded, run, label: str | None = None, run_id: str | None = None) -> str:
    """Keep a finished QuantRun of `loaded` (a LoadedModel) with its masks as a "done" run; returns its id.

    `run_id`: a run created (status "running") when the work started; otherwise a new one."""
    if run_id is None:
        run_id = store.create(label=label or run.config.label, model_source=loaded.source, model_card=loaded.card,
                              config=run.config.to_dict())
    try:
        store.save_arrays(run_id, "masks", run.masks)
        store.finish(run_id, status="done", seconds=run.seconds, bits_per_weight=run.bits_per_weight, reserved_fraction=run.reserved_fraction,
                     reports=[r.to_dict() for r in run.reports], calibration=run.calibration)
    except Exception as exc:
        store.finish(run_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    return run_id
