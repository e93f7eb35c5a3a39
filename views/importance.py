"""Importance page: where the reserved weights of one module sit, and why."""

import pandas as pd
import streamlit as st

import septq_core as sq
from septq_core.data import CORPUS_LABELS
from septq_core.figures import reserved_per_axis, score_heatmap, score_histogram
from septq_core.importance import CRITERIA, criteria_masks, criteria_scores, jaccard, top_reserved


@st.cache_resource(show_spinner=False, max_entries=4)
def hessians(_lm, key: tuple, corpus: str, nsamples: int, seqlen: int, seed: int) -> dict:
    calib = sq.calibration_windows(_lm.tokenizer, corpus, nsamples, seqlen, seed)
    return sq.fp_hessians(_lm, calib)


st.title("Importance")
lm = st.session_state.get("lm")
if lm is None:
    st.info("No model is loaded yet: choose one in the sidebar.")
    st.stop()
key = (lm.card["source"], lm.card["device"], lm.card["dtype"])
preview = sq.QuantConfig.preset("preview")

with st.expander("Calibration inputs (full precision)", expanded=False):
    c1, c2, c3, c4 = st.columns(4)
    corpus = c1.selectbox("Corpus", list(CORPUS_LABELS), format_func=CORPUS_LABELS.get, key="imp_corpus")
    nsamples = c2.number_input("Samples", 1, 256, preview.nsamples, key="imp_nsamples")
    seqlen = c3.select_slider("Tokens per sample", [128, 256, 512, 1024, 2048], preview.seqlen, key="imp_seqlen")
    seed = c4.number_input("Seed", 0, 2**31 - 1, preview.seed, key="imp_seed")
    st.caption("Scores here use H from one full-precision pass (the inputs of the original model), as the "
               "model-wide budget does; a quantization run computes them from the already quantized blocks.")
try:
    with st.spinner(f"Collecting inputs of every module ({nsamples} x {seqlen} tokens of {corpus})..."):
        H_all = hessians(lm, key, corpus, int(nsamples), int(seqlen), int(seed))
except sq.CorpusError as exc:
    st.warning(str(exc))
    st.stop()

c1, c2, c3, c4 = st.columns(4)
block = c1.selectbox("Block", list(range(lm.card["blocks"])), key="imp_block")
module = c2.selectbox("Module", lm.module_names, key="imp_module")
bits = c3.selectbox("Bits", [2, 3, 4], index=1, key="imp_bits")
ratio = c4.number_input("Reserve ratio", 0.0, 0.5, 0.01, step=0.005, format="%.3f", key="imp_ratio")
cfg = preview.replace(bits=int(bits), reserve_ratio=float(ratio))
layer = dict(sq.find_blocks(lm.model)[block].named_modules())[module]
W, H = layer.weight.detach(), H_all[f"{block}.{module}"]

scores = criteria_scores(W, H, cfg)
masks = criteria_masks(scores, cfg.reserve_ratio)
S, mask = scores["septq"], masks["septq"]
m1, m2, m3 = st.columns(3)
m1.metric("Reserved weights", f"{int(mask.sum()):,}")
m2.metric("Matrix", f"{W.shape[0]} x {W.shape[1]}")
m3.metric("Bits per weight", f"{sq.bits_per_weight(cfg.bits, cfg.group_size, W.shape[1], float(mask.float().mean())):.3f}")

name = f"{block}.{module}"
st.plotly_chart(score_heatmap(S, mask, f"SEPTQ importance of {name}"), key="imp_heatmap")
left, right = st.columns(2)
left.plotly_chart(reserved_per_axis(mask, "row", "Reserved weights per output row"), key="imp_rows")
right.plotly_chart(reserved_per_axis(mask, "column", "Reserved weights per input channel"), key="imp_cols")
st.plotly_chart(score_histogram(S, mask, f"Score distribution of {name}"), key="imp_hist")

st.subheader("Top reserved weights")
st.caption("score = (w - RTN(w))^2 / U_jj^2: the increase of the layer's output error caused by rounding that one "
           "weight; U_jj is the diagonal of the upper Cholesky factor of H^-1.")
st.dataframe(pd.DataFrame(top_reserved(W, H, cfg, n=20)), hide_index=True, key="imp_top")

st.subheader("Criteria side by side")
names = list(CRITERIA)
overlap = pd.DataFrame([[jaccard(masks[a], masks[b]) for b in names] for a in names], index=names, columns=names)
st.caption("Jaccard overlap of the top sets (same reserve ratio) of each criterion: " +
           "; ".join(f"{k}: {v}" for k, v in CRITERIA.items()))
st.dataframe(overlap.style.format("{:.2f}"), key="imp_overlap")
