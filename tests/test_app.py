"""The dashboard through Streamlit's AppTest (no browser), on a tiny model."""

from __future__ import annotations

import pytest
from conftest import ROOT
from streamlit.testing.v1 import AppTest

import septq_core as sq
from septq_core.store import RunStore


@pytest.fixture
def app(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("SEPTQ_DEFAULT_MODEL", str(tiny_model_dir("llama")))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    return at.run()


def test_model_page_shows_card_and_the_library_perplexity(app, tiny_model_dir):
    assert not app.exception
    lm = sq.load_model(str(tiny_model_dir("llama")))
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Decoder blocks"] == "2"
    assert metrics["Hidden size"] == "64"
    expected = sq.perplexity(lm.model, lm.tokenizer, "demo", seqlen=512, max_windows=4).value
    assert metrics["Perplexity on demo (bundled text)"] == f"{expected:.3f}"
    widgets = [(app.selectbox, "ppl_corpus"), (app.select_slider, "ppl_seqlen"), (app.number_input, "ppl_windows"),
               (app.text_area, "gen_prompt"), (app.button, "gen_button"), (app.selectbox, "source_kind"),
               (app.selectbox, "device"), (app.selectbox, "dtype"), (app.button, "load_model")]
    for find, key in widgets:
        assert find(key=key).key == key  # raises KeyError when a widget is missing
    assert app.selectbox(key="ppl_corpus").value == "demo"


def test_generate_shows_the_library_text(app, tiny_model_dir):
    app.text_area(key="gen_prompt").input("the river").run()
    app.button(key="gen_button").click().run()
    assert not app.exception
    lm = sq.load_model(str(tiny_model_dir("llama")))
    text = sq.generate(lm.model, lm.tokenizer, ["the river"], max_new_tokens=40, seed=0)[0]
    assert any(text in md.value for md in app.markdown)


def test_unavailable_corpus_is_a_message_not_a_traceback(app, monkeypatch):
    monkeypatch.delenv("SEPTQ_DATA_DIR", raising=False)
    app.selectbox(key="ppl_corpus").select("ptb").run()
    assert not app.exception
    assert any("SEPTQ_DATA_DIR" in w.value for w in app.warning)


def test_bad_model_source_is_a_message(tiny_model_dir, tmp_path):
    # AppTest reruns only the page after the first run of an st.navigation app,
    # so the sidebar choice is set before the first run.
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["source_kind"] = "Local directory"
    at.session_state["source_text"] = str(tmp_path)
    at.run()
    assert not at.exception
    assert any("config.json" in e.value for e in at.sidebar.error)
    assert any("No model is loaded" in i.value for i in at.info)


def test_importance_page_shows_the_library_mask(app, tiny_model_dir):
    app.switch_page("views/importance.py").run()
    assert not app.exception
    lm = sq.load_model(str(tiny_model_dir("llama")))
    cfg = sq.QuantConfig.preset("preview")
    H = sq.fp_hessians(lm, sq.calibration_windows(lm.tokenizer, "demo", cfg.nsamples, cfg.seqlen, cfg.seed))
    W = sq.find_blocks(lm.model)[0].self_attn.q_proj.weight
    S = sq.importance_scores(W, H["0.self_attn.q_proj"], cfg)
    expected = int(sq.select_mask({"q": S}, 0.01)["q"].sum())
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Reserved weights"] == f"{expected:,}"
    app.selectbox(key="imp_module").select("mlp.down_proj").run()
    assert not app.exception
    assert {m.label: m.value for m in app.metric}["Matrix"] == "64 x 128"


def test_quantize_page_runs_a_job_and_keeps_the_run(app):
    import time

    app.switch_page("views/quantize.py").run()
    assert not app.exception
    app.selectbox(key="q_method").select("gptq")  # form widgets: their values arrive with the submit
    app.number_input(key="q_nsamples").set_value(4)
    app.number_input(key="q_seqlen").set_value(64)
    app.button(key="FormSubmitter:quant_form-Quantize").click().run()
    assert not app.exception
    job = app.session_state["job"]
    assert job.wait(120) == "done"
    for _ in range(3):  # the page collects the finished job on its next runs
        app.run()
        time.sleep(0.1)
    assert not app.exception
    runs = app.session_state["runs"]
    assert len(runs) == 1 and runs[0]["label"] == "GPTQ 3-bit"
    assert runs[0]["config"].nsamples == 4 and runs[0]["config"].seqlen == 64
    table = app.dataframe[0].value  # the runs table comes first
    assert table["label"].tolist() == ["GPTQ 3-bit"]
    assert table["bits per weight"].iloc[0] == round(runs[0]["run"].bits_per_weight, 4)
    stored = RunStore().get(runs[0]["id"])  # kept beyond the session
    assert stored["status"] == "done" and stored["label"] == "GPTQ 3-bit"
    assert stored["bits_per_weight"] == pytest.approx(runs[0]["run"].bits_per_weight)
    assert stored["artifacts"] == ["masks"]


def test_history_page_reads_renames_and_deletes_stored_runs(app):
    store = RunStore()
    run_id = store.create(label="SEPTQ 2-bit from a shell", model_source="tiny", model_card={}, config={"method": "septq",
                                                                                                  "bits": 2})
    store.finish(run_id, status="done", bits_per_weight=2.37)
    store.add_perplexity(run_id, corpus="demo", seqlen=512, windows=4, value=41.5)
    app.switch_page("views/history.py").run()
    assert not app.exception
    table = app.dataframe[0].value
    row = table[table["id"] == run_id].iloc[0]
    assert row["label"] == "SEPTQ 2-bit from a shell" and row["ppl demo@512"] == 41.5
    app.selectbox(key="hist_run").select(run_id).run()
    app.text_input(key="hist_label").input("renamed").run()
    app.button(key="hist_rename").click().run()
    assert store.get(run_id)["label"] == "renamed"
    app.checkbox(key="hist_confirm").check().run()
    app.button(key="hist_delete").click().run()
    assert not app.exception
    assert run_id not in {r["id"] for r in store.list()}


def test_compare_page_shows_library_perplexities_and_generations(app, tiny_model_dir):
    lm = sq.load_model(str(tiny_model_dir("llama")))
    cfg = sq.QuantConfig(method="septq", bits=2, calib="demo", nsamples=4, seqlen=64)
    run = sq.quantize_model(lm, cfg)
    app.session_state["runs"] = [{"label": cfg.label, "config": cfg, "run": run}]
    app.switch_page("views/compare.py").run()
    assert not app.exception
    table = app.dataframe[0].value
    expected = sq.perplexity(run.model, lm.tokenizer, "demo", seqlen=512, max_windows=4).value
    assert table["demo"].iloc[1] == pytest.approx(expected)
    assert table["bits per weight"].iloc[1] == pytest.approx(run.bits_per_weight)
    app.button(key="cmp_generate").click().run()
    assert not app.exception
    texts = sq.generate({"FP": lm.model, "run 0": run.model}, lm.tokenizer, ["The capital of France is"], 40, 0)
    shown = " ".join(m.value for m in app.markdown)
    for word in texts["FP"][0].split()[:3]:
        assert word in shown


def test_mask_page_shows_the_library_budgets_and_stability(app, tiny_model_dir):
    import math

    app.switch_page("views/mask.py").run()
    assert not app.exception
    lm = sq.load_model(str(tiny_model_dir("llama")))
    sizes = [m.weight.numel() for block in sq.find_blocks(lm.model) for n, m in block.named_modules()
             if n in lm.module_names]
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["matrix scope: reserved"] == f"{sum(math.floor(0.01 * s) for s in sizes):,}"
    assert metrics["model scope: reserved"] == f"{math.floor(0.01 * sum(sizes)):,}"
    assert metrics["layer scope: reserved"] == f"{2 * math.floor(0.01 * sum(sizes) / 2):,}"  # blocks of equal size

    app.button(key="mask_stability").click().run()  # default: the reference against seed 1
    assert not app.exception
    cfg = sq.QuantConfig.preset("preview")
    masks = []
    for seed in (cfg.seed, 1):
        H = sq.fp_hessians(lm, sq.calibration_windows(lm.tokenizer, "demo", cfg.nsamples, cfg.seqlen, seed))
        W = sq.find_blocks(lm.model)[1].mlp.up_proj.weight
        masks.append(sq.select_mask({"m": sq.importance_scores(W, H["1.mlp.up_proj"], cfg)}, 0.01)["m"])
    expected = int((masks[0] & masks[1]).sum()) / int((masks[0] | masks[1]).sum())
    table = app.dataframe[0].value  # the only table of the page
    assert table["calibration"].tolist() == ["demo, seed 1"]
    stability = app.session_state["mask_stability_results"]
    (only,) = stability.values()
    assert only["1.mlp.up_proj"] == pytest.approx(expected)
    assert table["mean Jaccard"].iloc[0] == pytest.approx(sum(only.values()) / len(only))


def test_learn_page_steps_through_the_library_sweep(app):
    from septq_core.learn import demo_problem, walkthrough

    app.switch_page("views/learn.py").run()
    assert not app.exception
    W, H = demo_problem(12, 24, 0)
    cfg = sq.QuantConfig(method="septq", bits=2, reserve_ratio=0.03)
    expected = {m: walkthrough(W, H, cfg.replace(method=m)) for m in ("gptq", "septq")}
    assert {m.label: m.value for m in app.metric}["GPTQ running loss"] == "0"
    app.button(key="learn_next").click().run()
    app.button(key="learn_next").click().run()
    assert not app.exception
    assert app.slider(key="learn_step").value == 2
    metrics = {m.label: m.value for m in app.metric}
    for m in ("gptq", "septq"):
        assert metrics[f"{m.upper()} running loss"] == f"{expected[m].steps[2].loss:.4g}"
    assert metrics["SEPTQ reserved"] == str(int(0.03 * 12 * 24)) and metrics["GPTQ reserved"] == "0"
    app.button(key="learn_reset").click().run()
    assert app.slider(key="learn_step").value == 0


def test_compare_without_session_runs_shows_the_stored_ones(app, tiny_model_dir):
    lm = sq.load_model(str(tiny_model_dir("llama")))
    store = RunStore()
    run_id = store.create(label="GPTQ 3-bit of an earlier session", model_source=lm.source, model_card={},
                          config={"method": "gptq", "bits": 3})
    store.finish(run_id, status="done", bits_per_weight=3.05)
    store.add_perplexity(run_id, corpus="demo", seqlen=512, windows=4, value=77.25)
    other = store.create(label="another model's run", model_source="elsewhere", model_card={}, config={})
    app.switch_page("views/compare.py").run()
    assert not app.exception
    table = app.dataframe[0].value
    assert run_id in table["id"].tolist() and other not in table["id"].tolist()
    assert table[table["id"] == run_id]["ppl demo@512"].iloc[0] == 77.25
