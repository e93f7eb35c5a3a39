"""Mask page: where each mask scope puts the reserved weights, how concentrated they are, how stable."""

import pandas as pd
import streamlit as st

import septq_core as sq
from septq_core.data import CORPUS_LABELS
from septq_core.figures import module_grid
from septq_core.importance import mask_stability, scope_masks
from views.shared import (
    cached_bases,
    cached_scores,
    calibration_atlas,
    calibration_picker,
    hessians,
    model_key,
    progress_bar,
    require_model,
)

SCOPE_TEXT = {
    "matrix": "every module reserves floor(r x its size)",
    "layer": "one budget per decoder block, shared by its modules",
    "model": "one budget for the whole model",
}

st.title("Mask")
lm = require_model()
calib = calibration_picker("mask")
c1, c2, c3 = st.columns(3)
bits = int(c1.selectbox("Bits", [2, 3, 4], index=1, key="mask_bits"))
ratio = float(c2.number_input("Reserve ratio", 0.001, 0.5, 0.01, step=0.005, format="%.3f", key="mask_ratio"))
top = float(c3.select_slider("Top share of channels", [0.01, 0.02, 0.05, 0.1], 0.01, key="mask_top",
                             format_func=lambda v: f"{v:.0%}"))
atlas = calibration_atlas(lm, calib, bits, ratio, top)

st.subheader("Where the budget goes")
st.caption("Reserved fraction of each module for the three mask scopes, scored from full-precision inputs. A "
           "model-scope run uses exactly these masks; a layer-scope run scores each block from the inputs of the "
           "already quantized blocks, so its blocks after the first can differ a little.")
fractions = {scope: atlas.fraction(scope) for scope in sq.MASK_SCOPES}
zmax = max(max(f.values()) for f in fractions.values())
panels = st.columns(len(sq.MASK_SCOPES))
for panel, scope in zip(panels, sq.MASK_SCOPES):
    total = sum(atlas.reserved[scope].values())
    panel.metric(f"{scope} scope: reserved", f"{total:,}", help=SCOPE_TEXT[scope])
    panel.caption(SCOPE_TEXT[scope])
    panel.plotly_chart(module_grid(atlas.grid(fractions[scope]), atlas.modules, f"Reserved fraction, {scope} scope",
                                   "reserved fraction", (0.0, zmax)), key=f"mask_grid_{scope}")

st.subheader("How concentrated")
scope = st.radio("Scope", sq.MASK_SCOPES, horizontal=True, key="mask_conc_scope")
st.caption(f"Share of a module's reserved weights that sit in its top {top:.0%} input channels (columns) or output "
           f"rows, ranked by reserved count. Spread evenly, the share would be about {top:.0%}; near 100 % means a "
           "few outlier channels hold the whole budget.")
conc = atlas.concentration[scope]
left, right = st.columns(2)
for panel, axis in ((left, "columns"), (right, "rows")):
    values = {k: v[axis] for k, v in conc.items()}
    label = "input channels" if axis == "columns" else "output rows"
    panel.plotly_chart(module_grid(atlas.grid(values), atlas.modules, f"Share in the top {top:.0%} {label}",
                                   "share", (0.0, 1.0), ".0%"), key=f"mask_conc_{axis}")

st.subheader("How stable")
st.caption("Jaccard overlap, module by module, of the matrix-scope mask from the calibration above with masks from "
           "other calibrations (another seed, another corpus). 1 = the same weights are reserved.")
c1, c2 = st.columns(2)
seeds = c1.multiselect("Other seeds", [1, 2, 3], [1], key="mask_seeds")
corpora = c2.multiselect("Other corpora", [c for c in CORPUS_LABELS if c != calib[0]], key="mask_corpora",
                         format_func=CORPUS_LABELS.get)
alternatives = [(calib[0], calib[1], calib[2], s) for s in seeds] + [(c, calib[1], calib[2], calib[3]) for c in corpora]
if st.button("Compare masks", key="mask_stability", disabled=not alternatives):
    reference = scope_masks(cached_scores(lm, model_key(lm), calib, bits), ratio, "matrix")
    results = st.session_state.setdefault("mask_stability_results", {})
    for alt in alternatives:
        name = f"{alt[1]} x {alt[2]} tokens of {alt[0]}, seed {alt[3]}"
        try:
            with progress_bar(f"Collecting the inputs of every module ({name})") as bar:
                hessians(lm, model_key(lm), *alt, progress=bar)
            with progress_bar(f"Scoring every module ({name})") as bar:
                cached_bases(lm, model_key(lm), alt, bits, progress=bar)
            other = scope_masks(cached_scores(lm, model_key(lm), alt, bits), ratio, "matrix")
        except sq.CorpusError as exc:
            st.warning(f"{alt[0]} skipped: {exc}")
            continue
        results[(model_key(lm), calib, alt, bits, ratio)] = mask_stability(reference, other)

shown = {k: v for k, v in st.session_state.get("mask_stability_results", {}).items()
         if k[0] == model_key(lm) and k[1] == calib and k[3:] == (bits, ratio)}
if shown:
    rows = []
    panels = st.columns(min(3, len(shown)))
    for i, ((_, _, alt, _, _), stab) in enumerate(shown.items()):
        name = f"{alt[0]}, seed {alt[3]}"
        mean = sum(stab.values()) / len(stab)
        rows.append({"calibration": name, "mean Jaccard": mean, "lowest": min(stab.values()),
                     "lowest module": min(stab, key=stab.get)})
        panels[i % len(panels)].plotly_chart(module_grid(atlas.grid(stab), atlas.modules, f"Overlap with {name}",
                                                         "Jaccard", (0.0, 1.0), ".2f"), key=f"mask_stab_{i}")
    st.dataframe(pd.DataFrame(rows).style.format({"mean Jaccard": "{:.3f}", "lowest": "{:.3f}"}), hide_index=True,
                 key="mask_stab_table")
