"""Evaluation texts (ALGORITHM.md "Paper settings") and calibration windows."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tokenizer

from septq_core.data import (
    C4_EVAL_DOCS,
    CorpusError,
    c4_text,
    calibration_windows,
    encode,
    jsonl_texts,
    load_eval_corpus,
    ptb_sentences,
    ptb_text,
    wikitext2_rows,
    wikitext2_text,
)

# -- builders on hand-written inputs -----------------------------------------

def test_wikitext2_rows_and_text():
    raw = " \n = T = \n \n a b \n"
    assert wikitext2_rows(raw) == ["", " = T = \n", "", " a b \n"]
    assert wikitext2_text(raw) == "\n\n = T = \n\n\n\n\n a b \n"


def test_wikitext2_rows_blank_lines_of_several_spaces():
    raw = " = A = \n   \n x y \n\n"
    assert wikitext2_rows(raw) == [" = A = \n", "", " x y \n", ""]
    assert wikitext2_text(raw) == " = A = \n\n\n\n\n x y \n\n\n"


def test_ptb_text():
    raw = " no it was n't black monday \n but while the new york \n N points \n"
    assert ptb_sentences(raw) == ["no it was n't black monday", "but while the new york", "N points"]
    assert ptb_text(raw) == "no it was n't black monday but while the new york N points"


def test_c4_text_takes_first_1100_documents():
    assert C4_EVAL_DOCS == 1100
    docs = [f"doc{i}" for i in range(1105)]
    text = c4_text(docs)
    words = text.split(" ")
    assert len(words) == 1100
    assert words[0] == "doc0"
    assert words[-1] == "doc1099"
    assert "doc1100" not in words
    assert text.startswith("doc0 doc1 doc2 ")
    assert text.endswith(" doc1098 doc1099")


def test_c4_text_small():
    assert c4_text(["a b", "c", "d e"]) == "a b c d e"


def test_jsonl_texts_ok_and_skips_blank_lines():
    raw = '{"text": "one"}\n\n{"text": "two", "url": "x"}\n'
    assert jsonl_texts(raw) == ["one", "two"]


def test_jsonl_texts_bad_json_names_line():
    raw = '{"text": "one"}\n{"text": "two"\n'
    with pytest.raises(CorpusError, match=r"Line 2 of f\.jsonl is not valid JSON"):
        jsonl_texts(raw, "f.jsonl")


def test_jsonl_texts_missing_text_field_names_line():
    raw = '{"text": "one"}\n{"text": "two"}\n{"body": "three"}\n'
    with pytest.raises(CorpusError, match=r"Line 3 of f\.jsonl has no \"text\" string field"):
        jsonl_texts(raw, "f.jsonl")


def test_jsonl_texts_non_string_text_names_line():
    with pytest.raises(CorpusError, match="Line 1 "):
        jsonl_texts('{"text": 5}\n', "f.jsonl")
    with pytest.raises(CorpusError, match="Line 1 "):
        jsonl_texts('["text"]\n', "f.jsonl")


# -- load_eval_corpus from SEPTQ_DATA_DIR --------------------------------------

@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "wikitext2").mkdir(parents=True)
    (root / "ptb").mkdir()
    (root / "c4").mkdir()
    (root / "wikitext2" / "test.txt").write_text(" \n = T = \n \n a b \n", encoding="utf-8")
    (root / "ptb" / "test.txt").write_text(" x y \n z \n", encoding="utf-8")
    (root / "c4" / "validation-sample.jsonl").write_text(
        '{"text": "first doc"}\n{"text": "second doc", "timestamp": "t"}\n', encoding="utf-8")
    monkeypatch.setenv("SEPTQ_DATA_DIR", str(root))
    return root


def test_load_eval_corpus_wikitext2_from_data_dir(data_dir):
    corpus = load_eval_corpus("wikitext2")
    assert corpus.name == "wikitext2"
    assert corpus.text == "\n\n = T = \n\n\n\n\n a b \n"
    assert str(data_dir / "wikitext2" / "test.txt") in corpus.source


def test_load_eval_corpus_ptb_from_data_dir(data_dir):
    corpus = load_eval_corpus("ptb")
    assert corpus.name == "ptb"
    assert corpus.text == "x y z"
    assert str(data_dir / "ptb" / "test.txt") in corpus.source


def test_load_eval_corpus_c4_from_data_dir(data_dir):
    corpus = load_eval_corpus("c4")
    assert corpus.name == "c4"
    assert corpus.text == "first doc second doc"
    assert str(data_dir / "c4" / "validation-sample.jsonl") in corpus.source
    assert "2" in corpus.note and "1100" in corpus.note  # fewer than 1100 documents is said


@pytest.mark.parametrize("name", ["wikitext2", "ptb", "c4"])
def test_load_eval_corpus_missing_without_data_dir(name, monkeypatch):
    monkeypatch.delenv("SEPTQ_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(CorpusError, match="SEPTQ_DATA_DIR"):
        load_eval_corpus(name)


@pytest.mark.parametrize("name,relative", [("wikitext2", "wikitext2/test.txt"), ("ptb", "ptb/test.txt"),
                                           ("c4", "c4/validation-sample.jsonl")])
def test_load_eval_corpus_missing_with_empty_data_dir(name, relative, tmp_path, monkeypatch):
    monkeypatch.setenv("SEPTQ_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(CorpusError) as info:
        load_eval_corpus(name)
    message = str(info.value)
    assert "SEPTQ_DATA_DIR" in message
    assert relative in message


def test_load_eval_corpus_demo():
    corpus = load_eval_corpus("demo")
    assert corpus.name == "demo"
    assert len(corpus.text) > 1000
    assert "demo" in corpus.source


# -- user files ----------------------------------------------------------------

def test_user_txt_file(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("Hello there.\nSecond line.\n", encoding="utf-8")
    corpus = load_eval_corpus(str(path))
    assert corpus.name == "mine.txt"
    assert corpus.text == "Hello there.\nSecond line.\n"
    assert corpus.source == str(path)


def test_user_jsonl_file_joined(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"text": "alpha"}) + "\n" + json.dumps({"text": "beta"}) + "\n", encoding="utf-8")
    corpus = load_eval_corpus(str(path))
    assert corpus.name == "mine.jsonl"
    assert corpus.text == "alpha\n\nbeta"


def test_user_file_missing(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        load_eval_corpus(str(tmp_path / "absent.txt"))


def test_user_file_wrong_suffix(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"neither \.txt nor \.jsonl"):
        load_eval_corpus(str(path))


def test_user_file_empty(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("  \n\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="holds no text"):
        load_eval_corpus(str(path))


def test_user_file_not_utf8(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(b"caf\xe9 \xff\xfe")
    with pytest.raises(CorpusError, match="not UTF-8"):
        load_eval_corpus(str(path))


def test_user_jsonl_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\nnot json\n', encoding="utf-8")
    with pytest.raises(CorpusError, match="Line 2"):
        load_eval_corpus(str(path))


def test_unknown_corpus_name():
    with pytest.raises(CorpusError) as info:
        load_eval_corpus("wikitext3")
    message = str(info.value)
    assert "Unknown corpus 'wikitext3'" in message
    for name in ("wikitext2", "ptb", "c4", "demo"):
        assert name in message
    assert ".txt or .jsonl" in message


# -- calibration windows ---------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def _is_contiguous_slice(ids: torch.Tensor, window: torch.Tensor) -> bool:
    seqlen = window.numel()
    for start in (ids == window[0]).nonzero().flatten().tolist():
        if start + seqlen <= ids.numel() and torch.equal(ids[start : start + seqlen], window):
            return True
    return False


def test_calibration_windows_demo(tokenizer):
    calib = calibration_windows(tokenizer, "demo", nsamples=6, seqlen=32, seed=0)
    assert calib.input_ids.shape == (6, 32)
    assert calib.input_ids.dtype == torch.long
    assert calib.nsamples == 6 and calib.seqlen == 32
    assert calib.corpus == "demo" and calib.seed == 0
    ids = encode(tokenizer, load_eval_corpus("demo").text, cache=False)
    for window in calib.input_ids:
        assert _is_contiguous_slice(ids, window)


def test_calibration_windows_seeded(tokenizer):
    a = calibration_windows(tokenizer, "demo", nsamples=4, seqlen=16, seed=3)
    b = calibration_windows(tokenizer, "demo", nsamples=4, seqlen=16, seed=3)
    c = calibration_windows(tokenizer, "demo", nsamples=4, seqlen=16, seed=4)
    assert torch.equal(a.input_ids, b.input_ids)
    assert not torch.equal(a.input_ids, c.input_ids)


def test_calibration_windows_seqlen_too_long(tokenizer):
    n_tokens = encode(tokenizer, load_eval_corpus("demo").text, cache=False).numel()
    with pytest.raises(CorpusError, match="shorter seqlen"):
        calibration_windows(tokenizer, "demo", nsamples=1, seqlen=n_tokens + 10)
    with pytest.raises(CorpusError):
        calibration_windows(tokenizer, "demo", nsamples=1, seqlen=n_tokens)


# -- shared data ---------------------------------------------------------------

def test_shared_wikitext2(shared_data, monkeypatch):
    monkeypatch.setenv("SEPTQ_DATA_DIR", str(shared_data))
    raw = (shared_data / "wikitext2" / "test.txt").read_text(encoding="utf-8")
    assert len(wikitext2_rows(raw)) == 4358
    corpus = load_eval_corpus("wikitext2")
    assert corpus.text.startswith("" + "\n\n" + " = Robert Boulter = \n")
    assert corpus.text == wikitext2_text(raw)


def test_shared_ptb(shared_data, monkeypatch):
    monkeypatch.setenv("SEPTQ_DATA_DIR", str(shared_data))
    corpus = load_eval_corpus("ptb")
    assert corpus.text.startswith("no it was n't black monday but while")


def test_calibration_from_train_splits_in_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SEPTQ_DATA_DIR", str(tmp_path))
    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "train.txt").write_text(" the river is long \n the town is old and the river is wide \n")
    (tmp_path / "c4").mkdir()
    docs = ["short one", "the river runs past the old town and the mill and the bridge and the hill"]
    (tmp_path / "c4" / "c4-train.00000-of-01024.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs))
    tok = make_tokenizer()

    ptb = calibration_windows(tok, "ptb", nsamples=3, seqlen=4, seed=1)
    stream = encode(tok, "the river is long the town is old and the river is wide").tolist()
    assert "ptb/train.txt" in ptb.source
    for window in ptb.input_ids.tolist():
        assert any(stream[i : i + 4] == window for i in range(len(stream) - 3))

    c4 = calibration_windows(tok, "c4", nsamples=3, seqlen=6, seed=1)
    long_doc = encode(tok, docs[1]).tolist()
    assert "c4-train" in c4.source
    for window in c4.input_ids.tolist():  # only the document longer than a window is used
        assert any(long_doc[i : i + 6] == window for i in range(len(long_doc) - 5))

    with pytest.raises(CorpusError, match="wikitext2/train.txt"):
        calibration_windows(tok, "wikitext2", nsamples=1, seqlen=4)
