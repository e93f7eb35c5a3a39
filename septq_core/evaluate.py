"""Perplexity (the GPTQ protocol) and side-by-side generation."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .data import C4_EVAL_WINDOWS, Corpus, CorpusError, encode, load_eval_corpus


@dataclass(frozen=True)
class Perplexity:
    value: float
    corpus: str
    source: str
    seqlen: int
    windows: int
    tokens: int  # predicted tokens: windows x (seqlen - 1)
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


class Cancelled(RuntimeError):
    """A long job was cancelled by the user; nothing half-done was returned."""


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _window_count(corpus: Corpus, n_tokens: int, seqlen: int, max_windows: int | None) -> int:
    n = n_tokens // seqlen
    if corpus.name == "c4":
        n = min(n, C4_EVAL_WINDOWS)
    if max_windows is not None:
        n = min(n, int(max_windows))
    if n < 1:
        raise CorpusError(f"Corpus {corpus.name!r} has {n_tokens} tokens, fewer than one window of {seqlen}: "
                          "use a shorter seqlen.")
    return n


def window_count(tokenizer, corpus: str | Corpus, seqlen: int, max_windows: int | None = None) -> int:
    """How many windows `perplexity` scores for these settings (tokenizes the corpus, runs no model)."""
    corpus = load_eval_corpus(corpus) if isinstance(corpus, str) else corpus
    return _window_count(corpus, encode(tokenizer, corpus.text).numel(), seqlen, max_windows)


def perplexity(model, tokenizer, corpus: str | Corpus = "wikitext2", seqlen: int = 2048, max_windows: int | None = None,
               progress=None, batch_size: int | None = None, cancel=None) -> Perplexity:
    """exp(mean NLL over every predicted token of every window).

    The corpus text is tokenized once with the tokenizer's defaults, cut into
    non-overlapping windows of `seqlen` tokens (tail dropped; C4 cut to 256
    windows as in GPTQ), and every window is scored on its own."""
    t0 = time.perf_counter()
    corpus = load_eval_corpus(corpus) if isinstance(corpus, str) else corpus
    if seqlen < 2:
        raise ValueError(f"seqlen={seqlen} is too short: a window needs at least 2 tokens.")
    ids = encode(tokenizer, corpus.text)
    n = _window_count(corpus, ids.numel(), seqlen, max_windows)
    windows = ids[: n * seqlen].view(n, seqlen)
    device = _device_of(model)
    if batch_size is None:
        batch_size = max(1, 8192 // seqlen) if device.type == "cuda" else 1
    total = torch.zeros((), dtype=torch.float64)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            if cancel is not None and cancel.is_set():
                raise Cancelled("Perplexity evaluation was cancelled.")
            batch = windows[start : start + batch_size].to(device)
            logits = model(input_ids=batch, use_cache=False).logits
            nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum")
            total += nll.double().cpu()
            if progress is not None:
                progress(min(start + batch_size, n), n, f"{corpus.name}: window {min(start + batch_size, n)}/{n}")
    tokens = n * (seqlen - 1)
    return Perplexity(math.exp(total.item() / tokens), corpus.name, corpus.source, seqlen, n, tokens,
                      time.perf_counter() - t0)


def generate(models, tokenizer, prompts: list[str], max_new_tokens: int = 40, seed: int = 0,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 50):
    """Continuations of `prompts` by one model (returns a list of texts) or by
    several ({name: model} -> {name: list of texts}), with the same seed for each."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts or any(not p.strip() for p in prompts):
        raise ValueError("Give at least one non-empty prompt.")
    single = not isinstance(models, dict)
    named = {"model": models} if single else models
    options = dict(max_new_tokens=int(max_new_tokens), do_sample=do_sample, pad_token_id=tokenizer.pad_token_id)
    if do_sample:
        options.update(temperature=float(temperature), top_p=float(top_p), top_k=int(top_k))
    out: dict[str, list[str]] = {}
    for name, model in named.items():
        texts = []
        for prompt in prompts:
            torch.manual_seed(seed)
            enc = tokenizer(prompt, return_tensors="pt").to(_device_of(model))
            with torch.inference_mode():
                ids = model.generate(**enc, **options)
            texts.append(tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
        out[name] = texts
    return out["model"] if single else out


def diff_words(reference: str, text: str) -> list[tuple[str, bool]]:
    """The words of `text`, each with True where it matches `reference` (difflib alignment)."""
    import difflib

    ref, words = reference.split(), text.split()
    same = [False] * len(words)
    for block in difflib.SequenceMatcher(a=ref, b=words, autojunk=False).get_matching_blocks():
        for i in range(block.b, block.b + block.size):
            same[i] = True
    return list(zip(words, same))
