"""Learn page: the column sweep step by step on a small matrix, GPTQ and SEPTQ side by side."""

import streamlit as st
import torch

import septq_core as sq
from septq_core.figures import loss_curves, sweep_heatmap
from septq_core.learn import demo_problem, walkthrough
from views.shared import calibration_hessians, calibration_picker, model_key

METHODS = ("gptq", "septq")


@st.cache_resource(show_spinner=False, max_entries=16)
def walkthroughs(_W: torch.Tensor, _H: torch.Tensor, key: tuple, bits: int, ratio: float) -> dict:
    cfg = sq.QuantConfig(method="septq", bits=bits, reserve_ratio=ratio)
    return {m: walkthrough(_W, _H, cfg.replace(method=m)) for m in METHODS}


def set_step(value: int) -> None:
    st.session_state["learn_step"] = value


def toggle_play() -> None:
    st.session_state["learn_playing"] = not st.session_state.get("learn_playing", False)


st.title("Learn: the column sweep")
st.caption("Both methods quantize the columns left to right. Each column is rounded to its grid; the rounding error "
           "of column j, divided by U_jj, is pushed onto the later columns through row j of U (the upper Cholesky "
           "factor of H^-1), so that they compensate it. SEPTQ first reserves the weights with the largest scores "
           "(w - RTN(w))^2 / U_jj^2: they are not rounded and send no error.")

c1, c2, c3, c4, c5 = st.columns(5)
source = c1.radio("Matrix", ["Random", "Slice of a loaded module"], key="learn_source",
                  help="Random: 1 % outlier weights, 1/8 of the input channels with 6x larger activations.")
rows = int(c2.number_input("Rows", 2, 64, 12, key="learn_rows"))
cols = int(c3.number_input("Columns", 2, 64, 24, key="learn_cols"))
bits = int(c4.selectbox("Bits", [2, 3, 4], index=0, key="learn_bits"))
ratio = float(c5.number_input("Reserve ratio (SEPTQ)", 0.0, 0.5, 0.03, step=0.01, format="%.2f", key="learn_ratio"))

if source == "Random":
    seed = int(st.number_input("Seed", 0, 2**31 - 1, 0, key="learn_seed"))
    W, H = demo_problem(rows, cols, seed)
    key = ("random", rows, cols, seed)
else:
    lm = st.session_state.get("lm")
    if lm is None:
        st.info("No model is loaded yet: choose one in the sidebar, or use a random matrix.")
        st.stop()
    calib = calibration_picker("learn")
    H_all = calibration_hessians(lm, calib)
    c1, c2, c3, c4 = st.columns(4)
    block = c1.selectbox("Block", list(range(lm.card["blocks"])), key="learn_block")
    module = c2.selectbox("Module", lm.module_names, key="learn_module")
    full = dict(sq.find_blocks(lm.model)[block].named_modules())[module].weight.detach()
    rows, cols = min(rows, full.shape[0]), min(cols, full.shape[1])
    r0 = int(c3.number_input("First row", 0, full.shape[0] - rows, 0, key="learn_r0"))
    c0 = int(c4.number_input("First column", 0, full.shape[1] - cols, 0, key="learn_c0"))
    W = full[r0 : r0 + rows, c0 : c0 + cols].float()
    H = H_all[f"{block}.{module}"][c0 : c0 + cols, c0 : c0 + cols]  # inputs of these columns only
    key = ("slice", model_key(lm), calib, block, module, r0, c0, rows, cols)
    st.caption(f"W[{r0}:{r0 + rows}, {c0}:{c0 + cols}] of {block}.{module} with the matching {cols} x {cols} block "
               "of its H: the sweep of this slice alone, as if the layer had only these inputs.")

wts = walkthroughs(W, H, key, bits, ratio)
n_steps = cols + 1
if st.session_state.get("learn_step", 0) >= n_steps:
    st.session_state["learn_step"] = 0
playing = st.session_state.get("learn_playing", False)

b1, b2, b3, b4 = st.columns(4)
b1.button("Reset", key="learn_reset", on_click=set_step, args=(0,), width="stretch")
b2.button("Step back", key="learn_back", width="stretch", disabled=playing,
          on_click=lambda: set_step(max(0, st.session_state.get("learn_step", 0) - 1)))
b3.button("Step", key="learn_next", type="primary", width="stretch", disabled=playing,
          on_click=lambda: set_step(min(n_steps - 1, st.session_state.get("learn_step", 0) + 1)))
b4.button("Pause" if playing else "Play", key="learn_play", on_click=toggle_play, width="stretch")

zmax = max(float(s.current.abs().max()) for wt in wts.values() for s in wt.steps)
pmax = max(float(s.pushed.abs().max()) for wt in wts.values() for s in wt.steps) or 1e-12


@st.fragment(run_every=0.8 if playing else None)
def sweep_view():
    if st.session_state.get("learn_playing", False):
        if st.session_state.get("learn_step", 0) >= n_steps - 1:
            st.session_state["learn_playing"] = False
            st.rerun(scope="app")  # stop the timer and relabel the button
        st.session_state["learn_step"] = st.session_state.get("learn_step", 0) + 1
    st.slider("Columns quantized", 0, n_steps - 1, key="learn_step")
    step_index = st.session_state["learn_step"]
    column = step_index - 1
    if column < 0:
        st.markdown("**Start**: nothing quantized yet. Press *Step* or *Play*.")
    else:
        st.markdown(f"**Column {column}** just rounded; the black frame marks it. Columns left of it are final; "
                    "the lower panels show the error it pushed onto the columns to its right.")
    panels = st.columns(len(METHODS))
    for panel, (method, wt) in zip(panels, wts.items()):
        step = wt.steps[step_index]
        name = method.upper()
        m1, m2 = panel.columns(2)
        m1.metric(f"{name} running loss", f"{step.loss:.4g}")
        m2.metric(f"{name} reserved", f"{int(wt.mask.sum())}")
        panel.plotly_chart(sweep_heatmap(step.current, wt.mask, column, f"{name}: weights after {step_index} columns",
                                         zmax, "weight"), key=f"learn_w_{method}")
        panel.plotly_chart(sweep_heatmap(step.pushed, None, column, f"{name}: error pushed by column {column}"
                                         if column >= 0 else f"{name}: error pushed (none yet)", pmax, "change"),
                           key=f"learn_p_{method}")
    st.plotly_chart(loss_curves({m.upper(): [s.loss for s in wt.steps] for m, wt in wts.items()}, column),
                    key="learn_loss")
    final = {m.upper(): wt.steps[-1].loss for m, wt in wts.items()}
    st.caption("Final loss: " + ", ".join(f"{k} {v:.4g}" for k, v in final.items()) +
               ". The loss is the output error the rounding causes: the sum over rows of (w - q) H (w - q)^T "
               "with the damped H (ALGORITHM.md step 7).")


sweep_view()
