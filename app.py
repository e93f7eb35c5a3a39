"""SEPTQ Explorer: the frame (page config, model picker in the sidebar, navigation).

The pages live in views/, not pages/: Streamlit still auto-discovers a pages/
folder beside the entry point, and then a direct link to a page runs that page
without this frame (no model picker, legacy navigation).

Pages in views/ only draw: they read the loaded model from st.session_state["lm"]
and call septq_core. The full-precision model is loaded once per source and
shared by every browser session (st.cache_resource); no page modifies it.
"""

import os

import streamlit as st
import torch

import septq_core as sq

st.set_page_config(page_title="SEPTQ Explorer", page_icon="🔬", layout="wide")

SOURCES = {
    "Embedded default (SmolLM2-135M)": None,
    "Hugging Face id": "e.g. facebook/opt-125m",
    "Local directory": "/path/to/model",
    "GGUF file": "/path/to/model.gguf",
}


@st.cache_resource(show_spinner=False, max_entries=3)
def load(source: str | None, device: str, dtype: str) -> sq.LoadedModel:
    return sq.load_model(source, device=device, dtype=dtype)


def model_picker() -> None:
    """Sidebar: choose and load a model; keep the last good one if loading fails."""
    env_default = os.environ.get("SEPTQ_DEFAULT_MODEL") or None
    st.sidebar.header("Model")
    kind = st.sidebar.selectbox("Source", list(SOURCES), key="source_kind")
    source = env_default if SOURCES[kind] is None else st.sidebar.text_input(
        "Model", key="source_text", placeholder=SOURCES[kind]).strip() or None
    devices = ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    device = st.sidebar.selectbox("Device", devices, key="device")
    dtype = st.sidebar.selectbox("Dtype", ["auto", "float32", "bfloat16", "float16"], key="dtype")
    wanted = (source, device, dtype)
    ready = SOURCES[kind] is None or source is not None
    if not ready:
        st.sidebar.info("Enter a model and press Enter to load it.")
    retry = st.sidebar.button("Reload", key="load_model", width="stretch", disabled=not ready)
    if ready and (st.session_state.get("lm_key") != wanted or retry):
        st.session_state["lm_key"] = wanted  # tried once per choice; a failure keeps the last good model
        try:
            with st.spinner(f"Loading {source or 'the embedded default model'} (dequantizing takes ~20 s on CPU)..."):
                st.session_state["lm"] = load(*wanted)
            st.session_state.pop("load_error", None)
        except (sq.LoadError, OSError, ValueError) as exc:
            st.session_state["load_error"] = str(exc)
    if "load_error" in st.session_state:
        st.sidebar.error(st.session_state["load_error"])
    lm = st.session_state.get("lm")
    if lm is not None:
        st.sidebar.caption(f"Loaded: **{lm.name}**  \n{lm.card['device']} · {lm.card['dtype']} · "
                           f"weights {lm.card['weights']}")


pages = [
    st.Page("views/model.py", title="Model", icon=":material/memory:", default=True),
    st.Page("views/importance.py", title="Importance", icon=":material/grid_on:"),
    st.Page("views/mask.py", title="Mask", icon=":material/blur_on:"),
    st.Page("views/quantize.py", title="Quantize", icon=":material/compress:"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("views/history.py", title="History", icon=":material/history:"),
    st.Page("views/learn.py", title="Learn", icon=":material/school:"),
]
model_picker()
st.navigation(pages).run()
