"""Perplexity (GPTQ protocol) against a plain loop, and side-by-side generation."""

from __future__ import annotations

import math

import pytest
import torch

import septq_core
from septq_core import CorpusError, generate, perplexity
from septq_core.data import load_eval_corpus


@pytest.fixture(scope="module")
def llama(tiny_model_dir):
    return septq_core.load_model(str(tiny_model_dir("llama")))


@pytest.fixture(scope="module")
def mistral(tiny_model_dir):
    return septq_core.load_model(str(tiny_model_dir("mistral")))


def _reference_perplexity(model, tokenizer, text: str, seqlen: int, max_windows: int | None = None):
    """exp(mean NLL) written out by hand: log_softmax and a gather, window by window."""
    ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    n = len(ids) // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    total = 0.0
    count = 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for w in range(n):
            window = ids[w * seqlen : (w + 1) * seqlen]
            logits = model(input_ids=window[None].to(device)).logits[0].double().cpu()
            logp = torch.log_softmax(logits, dim=-1)
            for t in range(seqlen - 1):
                total -= logp[t, window[t + 1]].item()
                count += 1
    return math.exp(total / count), n, count


def test_perplexity_matches_plain_loop(llama):
    text = load_eval_corpus("demo").text
    seqlen = 128
    expected, n, count = _reference_perplexity(llama.model, llama.tokenizer, text, seqlen)
    result = perplexity(llama.model, llama.tokenizer, "demo", seqlen=seqlen)
    assert result.value == pytest.approx(expected, rel=1e-5)
    n_tokens = len(llama.tokenizer(text)["input_ids"])
    assert result.windows == n == n_tokens // seqlen
    assert result.tokens == count == n * (seqlen - 1)
    assert result.seqlen == seqlen
    assert result.corpus == "demo"
    assert "demo" in result.source
    assert math.isfinite(result.value) and result.value > 1.0


def test_perplexity_max_windows(llama):
    text = load_eval_corpus("demo").text
    expected, _, _ = _reference_perplexity(llama.model, llama.tokenizer, text, 64, max_windows=3)
    result = perplexity(llama.model, llama.tokenizer, "demo", seqlen=64, max_windows=3)
    assert result.windows == 3
    assert result.tokens == 3 * 63
    assert result.value == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("seqlen,max_windows", [(128, None), (64, 3), (64, 10_000)])
def test_window_count_is_the_number_of_windows_perplexity_scores(llama, seqlen, max_windows):
    n_tokens = len(llama.tokenizer(load_eval_corpus("demo").text)["input_ids"])
    expected = n_tokens // seqlen if max_windows is None else min(n_tokens // seqlen, max_windows)
    assert septq_core.window_count(llama.tokenizer, "demo", seqlen, max_windows) == expected
    assert perplexity(llama.model, llama.tokenizer, "demo", seqlen=seqlen, max_windows=max_windows).windows == expected


def test_perplexity_deterministic(llama):
    a = perplexity(llama.model, llama.tokenizer, "demo", seqlen=64, max_windows=4)
    b = perplexity(llama.model, llama.tokenizer, "demo", seqlen=64, max_windows=4)
    assert a.value == b.value


def test_perplexity_batch_size_does_not_change_value(llama):
    a = perplexity(llama.model, llama.tokenizer, "demo", seqlen=64, max_windows=4, batch_size=1)
    b = perplexity(llama.model, llama.tokenizer, "demo", seqlen=64, max_windows=4, batch_size=3)
    assert a.value == pytest.approx(b.value, rel=1e-5)


def test_perplexity_seqlen_longer_than_corpus(llama):
    n_tokens = len(llama.tokenizer(load_eval_corpus("demo").text)["input_ids"])
    with pytest.raises(CorpusError, match="shorter seqlen"):
        perplexity(llama.model, llama.tokenizer, "demo", seqlen=n_tokens + 1)


def test_perplexity_seqlen_too_short(llama):
    with pytest.raises(ValueError):
        perplexity(llama.model, llama.tokenizer, "demo", seqlen=1)


# -- generation ------------------------------------------------------------------

PROMPTS = ["The model", "In the first"]


def test_generate_single_model_returns_list(llama):
    out = generate(llama.model, llama.tokenizer, PROMPTS, max_new_tokens=5)
    assert isinstance(out, list)
    assert len(out) == len(PROMPTS)
    assert all(isinstance(t, str) for t in out)


def test_generate_string_prompt(llama):
    out = generate(llama.model, llama.tokenizer, "The model", max_new_tokens=5)
    assert isinstance(out, list) and len(out) == 1


def test_generate_dict_of_models(llama, mistral):
    out = generate({"llama": llama.model, "mistral": mistral.model}, llama.tokenizer, PROMPTS, max_new_tokens=5)
    assert isinstance(out, dict)
    assert set(out) == {"llama", "mistral"}
    for texts in out.values():
        assert isinstance(texts, list) and len(texts) == len(PROMPTS)
        assert all(isinstance(t, str) for t in texts)


def test_generate_greedy_deterministic(llama):
    a = generate(llama.model, llama.tokenizer, PROMPTS, max_new_tokens=6)
    b = generate(llama.model, llama.tokenizer, PROMPTS, max_new_tokens=6)
    assert a == b


def test_generate_same_model_two_names(llama):
    out = generate({"a": llama.model, "b": llama.model}, llama.tokenizer, PROMPTS, max_new_tokens=6)
    assert any(out["a"])  # something was generated, so the comparison means something
    assert out["a"] == out["b"]


def test_generate_sampling_same_seed(llama):
    a = generate(llama.model, llama.tokenizer, PROMPTS, max_new_tokens=6, do_sample=True, seed=7)
    b = generate(llama.model, llama.tokenizer, PROMPTS, max_new_tokens=6, do_sample=True, seed=7)
    assert a == b


@pytest.mark.parametrize("prompts", ["", "   ", [], ["ok", ""]])
def test_generate_empty_prompt(llama, prompts):
    with pytest.raises(ValueError, match="non-empty prompt"):
        generate(llama.model, llama.tokenizer, prompts, max_new_tokens=3)


def test_diff_words_marks_what_differs_from_the_reference():
    from septq_core.evaluate import diff_words

    marked = diff_words("the cat sat on the mat", "the dog sat on a mat today")
    assert marked == [("the", True), ("dog", False), ("sat", True), ("on", True), ("a", False), ("mat", True),
                      ("today", False)]
    assert diff_words("", "") == []
