"""What several pages draw the same way: the "no model" notice and the full-precision calibration inputs.

Cached resources live here once, so that every page (and every browser session)
shares them under the same explicit key.
"""

import contextlib
import sqlite3
import threading
from collections import OrderedDict

import pandas as pd
import streamlit as st

import septq_core as sq
from septq_core.data import CORPUS_LABELS
from septq_core.figures import perplexity_vs_bits
from septq_core.importance import MaskAtlas, mask_atlas, model_bases, model_scores
from septq_core.store import RunStore, StoreError

STORE_ERRORS = (StoreError, OSError, sqlite3.Error)  # a failing store never costs the user a finished run


@st.cache_resource(show_spinner=False)
def run_store() -> RunStore:
    """The run history ($SEPTQ_HOME, default ~/.septq), shared by every session (one connection per operation)."""
    return RunStore()


def generation_request(prefix: str, button: str, button_key: str, extra=None) -> tuple[tuple | None, object]:
    """Prompt, new tokens, seed and a button, with `extra(column)` drawn first in the row when given.

    Returns ((prompt, tokens, seed) if the button was pressed with a prompt else None, what `extra`
    returned); an empty prompt gets a message."""
    prompt = st.text_area("Prompt", "The capital of France is", key=f"{prefix}_prompt")
    cols = st.columns(3 if extra else 2)
    extra_value = extra(cols[0]) if extra else None
    max_new = cols[-2].slider("New tokens", 1, 200, 40, key=f"{prefix}_tokens")
    seed = cols[-1].number_input("Seed", 0, 2**31 - 1, 0, key=f"{prefix}_seed")
    if not st.button(button, key=button_key):
        return None, extra_value
    if not prompt.strip():
        st.warning("Write a prompt first.")
        return None, extra_value
    return (prompt, int(max_new), int(seed)), extra_value


def require_model() -> sq.LoadedModel:
    lm = st.session_state.get("lm")
    if lm is None:
        st.info("No model is loaded yet: choose one in the sidebar.")
        st.stop()
    return lm


def model_key(lm: sq.LoadedModel) -> tuple:
    return lm.card["source"], lm.card["device"], lm.card["dtype"]


@contextlib.contextmanager
def progress_bar(what: str):
    """A progress callback (done, total, message) drawing a bar that disappears when the work is done.

    Cached work calls it only when it really runs. Changing any widget or
    leaving the page during the work stops it (Streamlit interrupts the run at the
    bar's next update) and nothing half-done is cached."""
    slot = st.empty()
    slot.caption(f"{what}... (change a setting or leave the page to stop)")

    def update(done: int, total: int, message: str) -> None:
        slot.progress(done / total if total else 0.0, text=f"{what}: {message} ({done}/{total})")

    try:
        yield update
    finally:
        slot.empty()


class SharedCache:
    """Results shared by every session, like st.cache_resource, for work that draws its own progress
    (Streamlit cannot replay elements drawn from inside a cached function)."""

    def __init__(self, max_entries: int):
        self.items: OrderedDict = OrderedDict()
        self.max_entries = max_entries
        self.lock = threading.Lock()

    def get(self, key: tuple, compute):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        value = compute()  # not under the lock: other sessions go on; a stopped run caches nothing
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.max_entries:
                self.items.popitem(last=False)
        return value


@st.cache_resource(show_spinner=False)
def shared_caches() -> dict[str, SharedCache]:
    return {"hessians": SharedCache(4), "bases": SharedCache(8)}


def hessians(lm, key: tuple, corpus: str, nsamples: int, seqlen: int, seed: int, progress=None) -> dict:
    """H of every module from one full-precision pass (sq.fp_hessians), per model and calibration."""
    def compute():
        calib = sq.calibration_windows(lm.tokenizer, corpus, nsamples, seqlen, seed)
        return sq.fp_hessians(lm, calib, progress=progress)

    return shared_caches()["hessians"].get((key, corpus, nsamples, seqlen, seed), compute)


def calibration_picker(prefix: str) -> tuple:
    """The calibration inputs of a page (in an expander); returns (corpus, nsamples, seqlen, seed)."""
    preview = sq.QuantConfig.preset("preview")
    with st.expander("Calibration inputs (full precision)", expanded=False):
        c1, c2, c3, c4 = st.columns(4)
        corpus = c1.selectbox("Corpus", list(CORPUS_LABELS), format_func=CORPUS_LABELS.get, key=f"{prefix}_corpus")
        nsamples = c2.number_input("Samples", 1, 256, preview.nsamples, key=f"{prefix}_nsamples")
        seqlen = c3.select_slider("Tokens per sample", [128, 256, 512, 1024, 2048], preview.seqlen,
                                  key=f"{prefix}_seqlen")
        seed = c4.number_input("Seed", 0, 2**31 - 1, preview.seed, key=f"{prefix}_seed")
        st.caption("Scores here use H from one full-precision pass (the inputs of the original model), as the "
                   "model-wide budget does; a quantization run computes them from the already quantized blocks.")
    return corpus, int(nsamples), int(seqlen), int(seed)


def calibration_hessians(lm: sq.LoadedModel, calib: tuple) -> dict:
    """Cached H of every module for `calib`; an unavailable corpus stops the page with a message."""
    corpus, nsamples, seqlen, seed = calib
    try:
        with progress_bar(f"Collecting the inputs of every module ({nsamples} x {seqlen} tokens of {corpus})") as bar:
            return hessians(lm, model_key(lm), corpus, nsamples, seqlen, seed, progress=bar)
    except sq.CorpusError as exc:
        st.warning(str(exc))
        st.stop()


def cached_bases(lm, key: tuple, calib: tuple, bits: int, progress=None) -> dict:
    """`score_basis` of every module (preview grid settings, `bits`): a few vectors per module."""
    cfg = sq.QuantConfig.preset("preview", bits=bits)
    return shared_caches()["bases"].get(
        (key, calib, bits), lambda: model_bases(lm.model, hessians(lm, key, *calib), lm.module_names, cfg, progress=progress))


@st.cache_resource(show_spinner=False, max_entries=2)
def cached_scores(_lm, key: tuple, calib: tuple, bits: int) -> dict:
    """SEPTQ scores of every module (as large as the model: two kept)."""
    cfg = sq.QuantConfig.preset("preview", bits=bits)
    return model_scores(_lm.model, cached_bases(_lm, key, calib, bits), cfg)


@st.cache_resource(show_spinner=False, max_entries=8)
def atlas(_lm, key: tuple, calib: tuple, bits: int, ratio: float, top: float) -> MaskAtlas:
    return mask_atlas(cached_scores(_lm, key, calib, bits), _lm.module_names, ratio, top)


def calibration_atlas(lm: sq.LoadedModel, calib: tuple, bits: int, ratio: float, top: float = 0.01) -> MaskAtlas:
    """Cached `atlas` with progress; an unavailable corpus stops the page with a message."""
    calibration_hessians(lm, calib)
    n = lm.card["blocks"] * len(lm.module_names)
    with progress_bar(f"Scoring all {n} modules (once per calibration and bits)") as bar:
        cached_bases(lm, model_key(lm), calib, bits, progress=bar)
    with st.spinner("Ranking the scores for the three mask scopes..."):
        return atlas(lm, model_key(lm), calib, bits, ratio, top)


def stored_comparison(rows: list[dict], prefix: str) -> pd.DataFrame:
    """Stored runs (RunStore.comparison rows) as a table and one perplexity-against-bits chart per corpus."""
    table = pd.DataFrame(rows)
    st.dataframe(table, hide_index=True, key=f"{prefix}_table")
    for column in [c for c in table.columns if c.startswith("ppl ")]:
        points = [{"label": r["label"], "method": r["method"], "bits_per_weight": r["bits_per_weight"], "ppl": r[column]}
                  for r in rows if r.get(column) is not None and r.get("bits_per_weight")]
        if points:
            st.plotly_chart(perplexity_vs_bits(points, column.removeprefix("ppl ")), key=f"{prefix}_chart_{column}")
    return table
