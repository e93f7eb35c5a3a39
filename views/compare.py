"""Compare page: perplexity of FP and every run, against bits per weight; generations side by side."""

import html

import pandas as pd
import streamlit as st
import torch

import septq_core as sq
from septq_core.data import CORPUS_LABELS
from septq_core.evaluate import diff_words
from septq_core.figures import perplexity_vs_bits
from views.shared import STORE_ERRORS, generation_request, run_store, stored_comparison

st.title("Compare")
lm = st.session_state.get("lm")
if lm is None:
    st.info("No model is loaded yet: choose one in the sidebar.")
    st.stop()
runs = [r for r in st.session_state.get("runs", []) if r["run"].model is not None]
if not runs:
    st.info("No quantized run with its model in this session yet: make one on the Quantize page.")
    try:
        stored = [r for r in run_store().comparison() if r["model_source"] == lm.source]
    except STORE_ERRORS as exc:
        st.warning(f"The run history cannot be read: {exc}")
        stored = []
    if stored:
        st.subheader("Stored runs of this model (earlier sessions and the `septq` command)")
        stored_comparison(stored, "cmp_stored")
        st.caption("Rename, delete or export them on the History page.")
    st.stop()
fp_bits = float(torch.finfo(lm.dtype).bits)  # as held in memory (the default model's file stores Q4_1)
models = {"FP": (lm.model, {"label": f"FP ({lm.card['weights']})", "method": "fp", "bits_per_weight": fp_bits,
                           "id": None})}
for i, r in enumerate(runs):
    models[f"run {i}"] = (r["run"].model, {"label": f"run {i}: {r['label']}", "method": r["config"].method,
                                           "bits_per_weight": r["run"].bits_per_weight, "id": r.get("id")})


def keep(write, info: dict) -> None:
    """Store a result of a stored run (perplexity, generation); a failing store only warns."""
    if info.get("id") is None:
        return
    try:
        write(run_store())
    except STORE_ERRORS as exc:
        st.warning(f"Not stored in the run history: {exc}")



st.header("Perplexity")
c1, c2, c3 = st.columns(3)
corpora = c1.multiselect("Corpora", list(CORPUS_LABELS), ["demo"], format_func=CORPUS_LABELS.get, key="cmp_corpora")
seqlen = c2.select_slider("Window (tokens)", [128, 256, 512, 1024, 2048], 512, key="cmp_seqlen")
windows = c3.number_input("Windows (0 = all)", 0, 10_000, 4, key="cmp_windows")
cache: dict = st.session_state.setdefault("perplexities", {})  # (model key, corpus, seqlen, windows) -> value
rows = []
with st.spinner("Computing perplexities..."):
    for model, info in models.values():
        row = dict(info)
        for corpus in corpora:
            ck = (info["label"], corpus, int(seqlen), int(windows))
            if ck not in cache:
                try:
                    p = sq.perplexity(model, lm.tokenizer, corpus, seqlen=int(seqlen), max_windows=int(windows) or None)
                    cache[ck] = p.value
                except sq.CorpusError as exc:
                    st.warning(str(exc))
                    cache[ck] = None
                else:
                    keep(lambda s, i=info, p=p: s.add_perplexity(i["id"], corpus=p.corpus, seqlen=p.seqlen,
                                                                 windows=p.windows, value=p.value, tokens=p.tokens,
                                                                 source=p.source), info)
            row[corpus] = cache[ck]
        rows.append(row)
table = pd.DataFrame(rows).rename(columns={"label": "model", "bits_per_weight": "bits per weight"})
st.dataframe(table.drop(columns=["method", "id"]), hide_index=True)
st.caption(f"Windows of {seqlen} tokens, first {windows or 'all'} per corpus. Bits per weight include the grid "
           "(scale and zero per row or group) and 32 bits per reserved weight.")
for corpus in corpora:
    points = [{**r, "ppl": r[corpus]} for r in rows if r.get(corpus) is not None and r["method"] != "fp"]
    if points:
        fig = perplexity_vs_bits(points, CORPUS_LABELS[corpus])
        fp_value = next(r[corpus] for r in rows if r["method"] == "fp")
        if fp_value is not None:
            fig.add_hline(y=fp_value, line_dash="dot", annotation_text="FP")
        st.plotly_chart(fig, key=f"cmp_chart_{corpus}")

st.header("Generations")
run_keys = [k for k in models if k != "FP"]
request, chosen = generation_request("cmp", "Generate (greedy, same seed)", "cmp_generate",
                                     extra=lambda col: col.multiselect("Runs", run_keys, run_keys[-2:], key="cmp_runs"))
if request is not None:
    prompt, max_new, seed = request
    with st.spinner("Generating..."):
        picked = {k: models[k][0] for k in ["FP", *chosen]}
        texts = sq.generate(picked, lm.tokenizer, [prompt], max_new, seed)
        st.session_state["cmp_texts"] = (prompt, texts)
        for key in chosen:
            keep(lambda s, k=key: s.add_generation(models[k][1]["id"], prompt=prompt, seed=seed,
                                                   max_new_tokens=max_new, text=texts[k][0]), models[key][1])
if "cmp_texts" in st.session_state:
    p, texts = st.session_state["cmp_texts"]
    reference = texts["FP"][0]
    cols = st.columns(len(texts))
    for col, (key, out) in zip(cols, texts.items()):
        col.markdown(f"**{models[key][1]['label'] if key in models else key}**")
        words = [(w, True) for w in reference.split()] if key == "FP" else diff_words(reference, out[0])
        marked = " ".join(html.escape(w) if same else f"<span style='background:#ffd7d5'>{html.escape(w)}</span>"
                          for w, same in words)
        col.markdown(f"<i>{html.escape(p)}</i> {marked}", unsafe_allow_html=True)
    st.caption("Words that differ from the FP continuation are highlighted.")
