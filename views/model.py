"""Model page: the model card, a quick full-precision perplexity, and generated text."""

import pandas as pd
import streamlit as st

import septq_core as sq
from septq_core.data import CORPUS_LABELS
from views.shared import generation_request


@st.cache_data(show_spinner=False, max_entries=64)
def fp_perplexity(_lm, key: tuple, corpus: str, seqlen: int, windows: int) -> dict:
    return sq.perplexity(_lm.model, _lm.tokenizer, corpus, seqlen=seqlen, max_windows=windows).to_dict()


@st.cache_data(show_spinner=False, max_entries=64)
def fp_generate(_lm, key: tuple, prompt: str, max_new_tokens: int, seed: int) -> str:
    return sq.generate(_lm.model, _lm.tokenizer, [prompt], max_new_tokens=max_new_tokens, seed=seed)[0]


st.title("Model")
lm = st.session_state.get("lm")
if lm is None:
    st.info("No model is loaded yet: choose one in the sidebar and press Load.")
    st.stop()

card = lm.card
key = (card["source"], card["device"], card["dtype"])
st.subheader(card["name"])
cols = st.columns(4)
cols[0].metric("Parameters", f"{card['parameters'] / 1e6:.1f} M")
cols[1].metric("Decoder blocks", card["blocks"])
cols[2].metric("Hidden size", card["hidden_size"])
cols[3].metric("Memory", f"{card['memory_bytes'] / 2**20:.0f} MiB")
st.markdown(f"Running on **{card['device']}** in **{card['dtype']}** · weights: **{card['weights']}**")
if card["weights"].startswith("dequantized"):
    st.caption(f"This model's linear weights were stored as {card['weights'].split()[-1]} and are dequantized to "
               f"{card['dtype']} on load. Its baseline is therefore '{card['weights']}', not the original FP16 model; "
               "4-bit with groups of 32 reproduces a Q4_1 file almost exactly.")
st.caption(f"Source: {card['source']} · architecture {card['architecture']} · vocabulary {card['vocab_size']} · "
           f"loaded in {card['load_seconds']} s")

st.markdown("**Linear modules of one decoder block**, in execution order (modules of a group share one input and one H)")
st.dataframe(pd.DataFrame([{"module": m["name"], "group": m["group"], "rows (out)": m["shape"][0],
                            "cols (in)": m["shape"][1], "weights": m["shape"][0] * m["shape"][1]}
                           for m in card["modules"]]), hide_index=True, width="stretch")

st.header("Full-precision perplexity")
c1, c2, c3 = st.columns(3)
corpus = c1.selectbox("Corpus", list(CORPUS_LABELS), format_func=CORPUS_LABELS.get, key="ppl_corpus")
seqlen = c2.select_slider("Window (tokens)", [128, 256, 512, 1024, 2048], value=512, key="ppl_seqlen")
windows = c3.number_input("Windows (0 = all)", 0, 10_000, 4, key="ppl_windows")
st.caption("On a 2-core CPU one 2048-token window of the default model takes about 5 s: the default here is a "
           "small preview (4 windows of 512 tokens). Use 0 windows for the whole corpus.")
try:
    with st.spinner("Computing perplexity..."):
        ppl = fp_perplexity(lm, key, corpus, int(seqlen), int(windows) or None)
    st.metric(f"Perplexity on {CORPUS_LABELS[corpus]}", f"{ppl['value']:.3f}")
    st.caption(f"{ppl['windows']} windows x {ppl['seqlen']} tokens ({ppl['tokens']} predicted tokens) from "
               f"{ppl['source']}, {ppl['seconds']:.1f} s.")
except sq.CorpusError as exc:
    st.warning(str(exc))

st.header("Generate")
request, _ = generation_request("gen", "Generate (greedy)", "gen_button")
if request is not None:
    prompt, max_new, seed = request
    with st.spinner("Generating..."):
        st.session_state["gen_text"] = (prompt, fp_generate(lm, key, prompt, max_new, seed))
if "gen_text" in st.session_state:
    p, text = st.session_state["gen_text"]
    st.markdown(f"**{p}**{text}")
