"""Evaluation texts and calibration windows.

Evaluation texts are built exactly as ALGORITHM.md "Paper settings" says.
Where a corpus comes from, in this order: the directory named by
SEPTQ_DATA_DIR (laid out like ../shared/data), then the Hugging Face `datasets`
library (network or cache), then a clear error naming both. The `demo` corpus
ships with the project (assets/demo.txt) and is always available.
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

CORPORA = ("wikitext2", "ptb", "c4", "demo")
CORPUS_LABELS = {"demo": "demo (bundled text)", "wikitext2": "WikiText-2 test", "ptb": "PTB test", "c4": "C4 validation"}
DEMO_PATH = Path(__file__).resolve().parent.parent / "assets" / "demo.txt"
C4_EVAL_DOCS = 1100
C4_EVAL_WINDOWS = 256


class CorpusError(RuntimeError):
    """A corpus is missing, unreadable or too short; the message says what to do."""


@dataclass(frozen=True)
class Corpus:
    name: str  # wikitext2 | ptb | c4 | demo | a file name
    text: str
    source: str  # where the text came from, shown next to every number made from it
    note: str = ""


# -- builders (pure functions of the raw files, tested on small inputs) -------

def wikitext2_rows(raw: str) -> list[str]:
    """Rows of HF `wikitext-2-raw-v1` from `wiki.*.raw`: each line plus "\\n", "" for lines of spaces only."""
    lines = raw.split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    return ["" if not line.strip(" ") else line + "\n" for line in lines]


def wikitext2_text(raw: str) -> str:
    return "\n\n".join(wikitext2_rows(raw))


def ptb_sentences(raw: str) -> list[str]:
    lines = raw.split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    return [line.strip() for line in lines]


def ptb_text(raw: str) -> str:
    return " ".join(ptb_sentences(raw))


def jsonl_texts(raw: str, where: str = "file") -> list[str]:
    texts = []
    for i, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"Line {i} of {where} is not valid JSON ({exc.msg}): each line must be an object with a \"text\" field.") from exc
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise CorpusError(f"Line {i} of {where} has no \"text\" string field: each line must look like {{\"text\": \"...\"}}.")
        texts.append(row["text"])
    return texts


def c4_text(docs: list[str]) -> str:
    return " ".join(docs[:C4_EVAL_DOCS])


# -- sources ------------------------------------------------------------------

def data_dir() -> Path | None:
    value = os.environ.get("SEPTQ_DATA_DIR")
    return Path(value).expanduser() if value else None


def _from_data_dir(relative: str) -> Path | None:
    root = data_dir()
    if root is None:
        return None
    path = root / relative
    return path if path.is_file() else None


@dataclass(frozen=True)
class _Split:
    relative: str  # the file under SEPTQ_DATA_DIR
    rows: Callable[[str], list[str]]  # raw file text -> the dataset's rows
    hf: tuple  # datasets.load_dataset(*hf, split=..., **hf_kwargs)[column]
    column: str
    label: str
    hf_kwargs: dict = field(default_factory=dict)


_C4 = "en/c4-{}.00000-of-{:05d}.json.gz"
SPLITS: dict[tuple[str, str], _Split] = {
    ("wikitext2", "test"): _Split("wikitext2/test.txt", wikitext2_rows, ("wikitext", "wikitext-2-raw-v1"), "text",
                                  "WikiText-2 raw, test"),
    ("wikitext2", "train"): _Split("wikitext2/train.txt", wikitext2_rows, ("wikitext", "wikitext-2-raw-v1"), "text",
                                   "WikiText-2 raw, train"),
    ("ptb", "test"): _Split("ptb/test.txt", ptb_sentences, ("ptb_text_only", "penn_treebank"), "sentence",
                            "PTB text only, test"),
    ("ptb", "train"): _Split("ptb/train.txt", ptb_sentences, ("ptb_text_only", "penn_treebank"), "sentence",
                             "PTB text only, train"),
    ("c4", "validation"): _Split("c4/validation-sample.jsonl", jsonl_texts, ("allenai/c4",), "text",
                                 "C4 en validation", {"data_files": {"validation": _C4.format("validation", 8)}}),
    ("c4", "train"): _Split("c4/c4-train.00000-of-01024.jsonl", jsonl_texts, ("allenai/c4",), "text",
                            "C4 en train", {"data_files": {"train": _C4.format("train", 1024)}}),
}


def load_rows(name: str, split: str) -> tuple[list[str], str]:
    """The rows of a corpus split and where they came from: SEPTQ_DATA_DIR, then `datasets`, then a clear error."""
    spec = SPLITS[(name, split)]
    path = _from_data_dir(spec.relative)
    if path:
        return spec.rows(path.read_text(encoding="utf-8")), f"{path} ({spec.label})"
    try:
        from datasets import load_dataset

        rows = list(load_dataset(*spec.hf, split=split, **spec.hf_kwargs)[spec.column])
    except Exception as exc:  # noqa: BLE001 - any failure means: not available here
        root = data_dir()
        where = f"{root / spec.relative} does not exist" if root else "SEPTQ_DATA_DIR is not set"
        raise CorpusError(
            f"Corpus {name!r} ({split}) is not available: {where}, and the Hugging Face datasets library could not "
            f"provide it ({type(exc).__name__}). Set SEPTQ_DATA_DIR to a folder holding {spec.relative}, connect to "
            "the network, or use the bundled 'demo' corpus or a text file."
        ) from exc
    return rows, f"datasets: {'/'.join(spec.hf)} ({spec.label})"


def load_eval_corpus(name: str) -> Corpus:
    """The evaluation text of a corpus name (wikitext2, ptb, c4, demo) or of a .txt/.jsonl file."""
    if name == "demo":
        return Corpus("demo", _read_demo(), "assets/demo.txt (bundled)")
    if name == "wikitext2":
        rows, source = load_rows(name, "test")
        return Corpus(name, "\n\n".join(rows), source)
    if name == "ptb":
        rows, source = load_rows(name, "test")
        return Corpus(name, " ".join(rows), source)
    if name == "c4":
        docs, source = load_rows(name, "validation")
        note = "" if len(docs) >= C4_EVAL_DOCS else f"only the first {len(docs)} of {C4_EVAL_DOCS} documents are available"
        return Corpus(name, c4_text(docs), f"{source}, first {min(len(docs), C4_EVAL_DOCS)} documents", note)
    return _file_corpus(name)


def _read_demo() -> str:
    if not DEMO_PATH.is_file():
        raise CorpusError(f"The bundled demo text {DEMO_PATH} is missing: reinstall SEPTQ Explorer from its repository.")
    return DEMO_PATH.read_text(encoding="utf-8")


def _file_corpus(name: str) -> Corpus:
    path = Path(name).expanduser()
    if not path.suffix:
        raise CorpusError(f"Unknown corpus {name!r}: choose one of {', '.join(CORPORA)}, or give a .txt or .jsonl file.")
    if not path.is_file():
        raise CorpusError(f"Text file {path} does not exist: check the path.")
    if path.suffix not in (".txt", ".jsonl"):
        raise CorpusError(f"{path.name} is neither .txt nor .jsonl: give plain text, or JSON lines with a \"text\" field.")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path} is not UTF-8 text: convert it to UTF-8 first.") from exc
    text = "\n\n".join(jsonl_texts(raw, str(path))) if path.suffix == ".jsonl" else raw
    if not text.strip():
        raise CorpusError(f"{path} holds no text: give a file with some text in it.")
    return Corpus(path.name, text, str(path))


def load_calibration_corpus(name: str) -> tuple[list[str], str]:
    """Documents to draw calibration windows from, and where they came from.

    c4: the train shard GPTQ uses (random documents longer than a window);
    wikitext2 / ptb: the train split as one text; demo or a file: that text."""
    if name == "c4":
        return load_rows(name, "train")
    if name in ("wikitext2", "ptb"):
        rows, source = load_rows(name, "train")
        return ["\n\n".join(rows) if name == "wikitext2" else " ".join(rows)], source
    corpus = load_eval_corpus(name)
    return [corpus.text], corpus.source


# -- tokens -------------------------------------------------------------------

_TOKENS: dict[tuple, torch.Tensor] = {}
_TOKENS_LOCK = threading.Lock()


def encode(tokenizer, text: str, cache: bool = True) -> torch.Tensor:
    """Token ids (1-D) of a whole text, tokenized once with the tokenizer's defaults; cached."""
    if not cache:
        return torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    key = (id(tokenizer), getattr(tokenizer, "name_or_path", ""), len(text), hash(text))
    with _TOKENS_LOCK:
        if key not in _TOKENS:
            _TOKENS[key] = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
        return _TOKENS[key]


@dataclass(frozen=True)
class CalibrationSet:
    input_ids: torch.Tensor  # nsamples x seqlen
    corpus: str
    source: str
    seed: int

    @property
    def nsamples(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seqlen(self) -> int:
        return self.input_ids.shape[1]


def calibration_windows(tokenizer, corpus: str = "c4", nsamples: int = 128, seqlen: int = 2048, seed: int = 0) -> CalibrationSet:
    """`nsamples` random windows of `seqlen` tokens, the same for the same seed (GPTQ's sampling)."""
    docs, source = load_calibration_corpus(corpus)
    rng = random.Random(seed)
    windows = []
    if len(docs) > 1:  # a document corpus (C4): random documents longer than one window
        for _ in range(nsamples):
            for _attempt in range(10_000):
                ids = encode(tokenizer, docs[rng.randint(0, len(docs) - 1)], cache=False)
                if len(ids) > seqlen:
                    break
            else:
                raise CorpusError(f"No document of {corpus!r} is longer than {seqlen} tokens: use a shorter seqlen.")
            start = rng.randint(0, len(ids) - seqlen - 1)
            windows.append(ids[start : start + seqlen])
    else:
        ids = encode(tokenizer, docs[0])
        if len(ids) <= seqlen:
            raise CorpusError(f"Corpus {corpus!r} has {len(ids)} tokens, not more than one window of {seqlen}: "
                              "use a shorter seqlen or a larger corpus.")
        for _ in range(nsamples):
            start = rng.randint(0, len(ids) - seqlen - 1)
            windows.append(ids[start : start + seqlen])
    return CalibrationSet(torch.stack(windows), corpus, source, seed)
