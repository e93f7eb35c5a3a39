"""Quantize page: a form, a job with progress and cancel, and every run of this session."""

import pandas as pd
import streamlit as st

import septq_core as sq
from septq_core.jobs import Job
from septq_core.store import record_run
from views.shared import STORE_ERRORS, run_store

KEEP_MODELS = 3  # quantized model copies kept per session (each is as large as the model); reports are all kept

st.title("Quantize")
lm = st.session_state.get("lm")
if lm is None:
    st.info("No model is loaded yet: choose one in the sidebar.")
    st.stop()
runs: list = st.session_state.setdefault("runs", [])
job: Job | None = st.session_state.get("job")

with st.form("quant_form"):
    c1, c2, c3, c4 = st.columns(4)
    preset = c1.selectbox("Preset", ["preview", "paper"], key="q_preset",
                          help="preview: 16 x 512 tokens of the bundled demo text (about a minute for the default "
                               "model on a 2-core CPU); paper: 128 x 2048 C4 train windows (needs the C4 shard).")
    method = c2.selectbox("Method", list(sq.METHODS), key="q_method")
    bits = c3.selectbox("Bits", [2, 3, 4, 5, 6, 8], index=1, key="q_bits")
    group = c4.selectbox("Group size", ["per row", 32, 64, 128], key="q_group")
    c1, c2, c3, c4 = st.columns(4)
    ratio = c1.number_input("Reserve ratio (SEPTQ)", 0.0, 0.5, 0.01, step=0.005, format="%.3f", key="q_ratio")
    scope = c2.selectbox("Mask scope", list(sq.MASK_SCOPES), key="q_scope")
    sequential = c3.checkbox("True sequential", True, key="q_sequential")
    defaults = sq.QuantConfig.preset(preset)
    calib = c4.selectbox("Calibration corpus", ["(preset)", "demo", "c4", "wikitext2", "ptb"], key="q_calib")
    c1, c2, c3 = st.columns(3)
    nsamples = c1.number_input("Samples (0 = preset)", 0, 1024, 0, key="q_nsamples")
    seqlen = c2.number_input("Tokens per sample (0 = preset)", 0, 8192, 0, key="q_seqlen")
    seed = c3.number_input("Seed", 0, 2**31 - 1, 0, key="q_seed")
    submitted = st.form_submit_button("Quantize", type="primary", disabled=bool(job and job.running))

if submitted:
    try:
        cfg = sq.QuantConfig.preset(
            preset, method=method, bits=int(bits), group_size=None if group == "per row" else int(group),
            reserve_ratio=float(ratio), mask_scope=scope, true_sequential=sequential, seed=int(seed),
            calib=defaults.calib if calib == "(preset)" else calib,
            nsamples=int(nsamples) or defaults.nsamples, seqlen=int(seqlen) or defaults.seqlen)
    except sq.ConfigError as exc:
        st.error(str(exc))
    else:
        run_id = None
        try:
            run_id = run_store().create(label=cfg.label, model_source=lm.source, model_card=lm.card,
                                        config=cfg.to_dict())
        except STORE_ERRORS as exc:
            st.warning(f"This run will not be kept after the session ends: the run store failed ({exc}).")
        job = st.session_state["job"] = Job(cfg.label, config=cfg, run_id=run_id).start(sq.quantize_model, lm, cfg)


@st.fragment(run_every=1.0 if job is not None and job.running else None)
def job_panel():
    job = st.session_state.get("job")
    if job is None:
        return
    if job.running:
        share = job.done / job.total if job.total else 0.0
        eta = f", about {job.eta:.0f} s left" if job.eta is not None else ""
        st.progress(share, text=f"{job.label}: {job.done}/{job.total or '?'} modules · {job.elapsed:.0f} s{eta}"
                                 f" · {job.message}")
        if st.button("Cancel", key="cancel_job"):
            job.cancel.set()
            st.info("Cancelling: the run stops after the module in work.")
        return
    if not job.collected:  # once: keep the run (in the session and in the run store), then redraw the whole page
        job.collected = True
        try:
            if job.run_id is not None and job.status == "done":
                record_run(run_store(), lm, job.result, run_id=job.run_id)
            elif job.run_id is not None:
                run_store().finish(job.run_id, status=job.status, error=job.error)
        except STORE_ERRORS as exc:
            st.session_state["store_warning"] = f"{job.label} is kept in this session only: the run store failed ({exc})."
        if job.status == "done":
            runs.append({"label": job.label, "config": job.config, "run": job.result, "id": job.run_id})
            for old in runs[:-KEEP_MODELS]:
                old["run"].model = None  # free the copy; the reports stay
        st.rerun(scope="app")
    if "store_warning" in st.session_state:
        st.warning(st.session_state["store_warning"])
    if job.status == "failed":
        st.error(f"{job.label} failed: {job.error}")
    elif job.status == "cancelled":
        st.info(f"{job.label} was cancelled after {job.done} of {job.total} modules; nothing of it was kept, "
                "and the runs before it are unchanged.")
    else:
        st.success(f"{job.label} finished in {job.elapsed:.0f} s.")


job_panel()

if not runs:
    st.caption("No run yet in this session.")
    st.stop()


def calibration_label(calib: dict) -> str:
    return f"{calib['nsamples']} x {calib['seqlen']} tokens of {calib['corpus']}" if calib else "none (RTN)"


st.header("Runs of this session")
st.dataframe(pd.DataFrame([{
    "run": i, "label": r["label"], "bits per weight": round(r["run"].bits_per_weight, 4),
    "reserved %": round(100 * r["run"].reserved_fraction, 3), "seconds": round(r["run"].seconds["total"], 1),
    "calibration forward s": round(r["run"].seconds["calibration_forward"], 1),
    "solver s": round(r["run"].seconds["solver"], 1),
    "calibration": calibration_label(r["run"].calibration),
} for i, r in enumerate(runs)]), hide_index=True, key="q_runs")

last = runs[-1]["run"]
st.subheader(f"Modules of the last run: {runs[-1]['label']}")
st.dataframe(pd.DataFrame([{
    "module": m.name, "shape": f"{m.shape[0]} x {m.shape[1]}", "loss": m.loss, "reserved": m.reserved,
    "bits per weight": round(m.bits_per_weight, 4), "seconds": round(m.seconds, 3), "damping": m.percdamp,
    "note": m.damp_note,
} for m in last.reports]), hide_index=True, key="q_modules")
