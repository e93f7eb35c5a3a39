"""History page: every stored run (this session, earlier sessions, the `septq` command): rename, delete, export."""

import json

import streamlit as st

from views.shared import run_store, stored_comparison

st.title("History")
store = run_store()
st.caption(f"Runs are kept in {store.path} (set SEPTQ_HOME to keep them elsewhere); `septq runs list` shows the same.")
rows = store.comparison()
if not rows:
    st.info("No stored run yet: quantize on the Quantize page or with `septq quantize`.")
    st.stop()

table = stored_comparison(rows, "hist")
c1, c2 = st.columns(2)
c1.download_button("Download CSV", table.to_csv(index=False), "septq-runs.csv", "text/csv", key="hist_csv")
c2.download_button("Download JSON", json.dumps(rows, indent=2, default=str), "septq-runs.json", "application/json",
                   key="hist_json")

st.subheader("Manage")
labels = {r["id"]: f"{r['label']} ({r['id']})" for r in rows}
run_id = st.selectbox("Run", list(labels), format_func=labels.get, key="hist_run")
c1, c2 = st.columns([3, 1])
new_label = c1.text_input("New name", key="hist_label")
if c2.button("Rename", key="hist_rename", disabled=not new_label.strip()):
    store.rename(run_id, new_label.strip())
    st.rerun()
with st.expander("Details"):
    st.json(store.get(run_id), expanded=False)
confirm = st.checkbox("I want to delete this run and its files", key="hist_confirm")
if st.button("Delete", key="hist_delete", disabled=not confirm, type="primary"):
    store.delete(run_id)
    st.session_state.pop("hist_confirm", None)
    st.rerun()
