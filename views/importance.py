"""Importance page: where the reserved weights of one module sit, and why."""

import pandas as pd
import streamlit as st

import septq_core as sq
from septq_core.figures import (
    block_bars,
    criteria_heatmaps,
    log_range,
    reserved_per_axis,
    score_heatmap,
    score_histogram,
)
from septq_core.importance import CRITERIA, criteria_masks, criteria_scores, jaccard, score_parts, top_reserved
from views.shared import cached_bases, calibration_atlas, calibration_picker, model_key, require_model

ZOOM = 128  # zoom window side, drawn cell by cell


@st.cache_resource(show_spinner=False, max_entries=16)
def module_scores(_W, _basis, key: tuple, cfg: sq.QuantConfig) -> tuple[dict, dict, dict]:
    """Score parts, every criterion and their top sets for one module (key: model, calibration, block, module)."""
    parts = score_parts(_W, None, cfg, _basis)
    scores = criteria_scores(parts)
    return parts, scores, criteria_masks(scores, cfg.reserve_ratio)


def pick_block() -> None:
    """Clicking a bar of the per-block chart selects that block."""
    points = st.session_state["imp_blocks_chart"].selection.points
    if points:
        st.session_state["imp_block"] = int(points[0]["x"])


st.title("Importance")
lm = require_model()
preview = sq.QuantConfig.preset("preview")
calib = calibration_picker("imp")

c1, c2, c3, c4 = st.columns(4)
module = c1.selectbox("Module", lm.module_names, key="imp_module")
block = c2.selectbox("Block", list(range(lm.card["blocks"])), key="imp_block")
bits = c3.selectbox("Bits", [2, 3, 4], index=1, key="imp_bits")
ratio = c4.number_input("Reserve ratio", 0.0, 0.5, 0.01, step=0.005, format="%.3f", key="imp_ratio")
cfg = preview.replace(bits=int(bits), reserve_ratio=float(ratio))

atlas = calibration_atlas(lm, calib, cfg.bits, cfg.reserve_ratio)
per_block = [atlas.score_sum[f"{b}.{module}"] for b in range(atlas.blocks)]
st.plotly_chart(block_bars(per_block, block, f"{module}: sum of SEPTQ scores per block (the output error RTN "
                           "would cause, to first order)", "sum of scores"),
                key="imp_blocks_chart", on_select=pick_block, selection_mode="points")

layer = dict(sq.find_blocks(lm.model)[block].named_modules())[module]
W = layer.weight.detach()
basis = cached_bases(lm, model_key(lm), calib, cfg.bits)[f"{block}.{module}"]
parts, scores, masks = module_scores(W, basis, (model_key(lm), calib, block, module), cfg)
S, mask = scores["septq"], masks["septq"]
m1, m2, m3, m4 = st.columns(4)
m1.metric("Reserved weights", f"{int(mask.sum()):,}")
m2.metric("Matrix", f"{W.shape[0]} x {W.shape[1]}")
m3.metric("Bits per weight", f"{sq.bits_per_weight(cfg.bits, cfg.group_size, W.shape[1], float(mask.float().mean())):.3f}")
m4.metric("Reserved with a model-wide budget", f"{atlas.reserved['model'][f'{block}.{module}']:,}",
          help="How many of this module's weights a model-scope mask (same ratio) would reserve.")

name = f"{block}.{module}"
zrange = log_range(S)  # the heatmap and its zoom share one colour scale
st.plotly_chart(score_heatmap(S, mask, f"SEPTQ importance of {name}", zrange), key="imp_heatmap")

if st.toggle("Zoom: a window at full resolution", key="imp_zoom"):
    side = min(ZOOM, W.shape[0], W.shape[1])
    z1, z2 = st.columns(2)
    r0 = int(z1.number_input("First row", 0, W.shape[0] - side, 0, step=side // 2, key="imp_zoom_row"))
    c0 = int(z2.number_input("First column", 0, W.shape[1] - side, 0, step=side // 2, key="imp_zoom_col"))
    st.plotly_chart(score_heatmap(S[r0 : r0 + side, c0 : c0 + side], mask[r0 : r0 + side, c0 : c0 + side],
                                  f"{name}, rows {r0}-{r0 + side - 1}, columns {c0}-{c0 + side - 1}", zrange,
                                  cells=side, origin=(r0, c0)), key="imp_zoom_chart")

left, right = st.columns(2)
left.plotly_chart(reserved_per_axis(mask, "row", "Reserved weights per output row"), key="imp_rows")
right.plotly_chart(reserved_per_axis(mask, "column", "Reserved weights per input channel"), key="imp_cols")
st.plotly_chart(score_histogram(S, mask, f"Score distribution of {name}"), key="imp_hist")

st.subheader("Top reserved weights")
st.caption("score = (w - RTN(w))^2 / U_jj^2: the increase of the layer's output error caused by rounding that one "
           "weight; U_jj is the diagonal of the upper Cholesky factor of H^-1.")
st.dataframe(pd.DataFrame(top_reserved(parts, cfg.reserve_ratio, n=20)), hide_index=True, key="imp_top")

st.subheader("Criteria side by side")
names = list(CRITERIA)
st.plotly_chart(criteria_heatmaps(scores, masks, CRITERIA), key="imp_criteria")
overlap = pd.DataFrame([[jaccard(masks[a], masks[b]) for b in names] for a in names], index=names, columns=names)
st.caption("Jaccard overlap of the top sets of each criterion: " +
           "; ".join(f"{k}: {v}" for k, v in CRITERIA.items()))
st.dataframe(overlap.style.format("{:.2f}"), key="imp_overlap")
