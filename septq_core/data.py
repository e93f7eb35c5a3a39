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
from dataclasses import dataclass
from pathlib import Path

import torch

CORPORA = ("wikitext2", "ptb", "c4", "demo")
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


def _hf_dataset(*args, column: str, **kwargs) -> list[str]:
    from datasets import load_dataset

    return list(load_dataset(*args, **kwargs)[column])


def _missing(name: str, relative: str, exc: Exception) -> CorpusError:
    root = data_dir()
    where = f"{root / relative} does not exist" if root else "SEPTQ_DATA_DIR is not set"
    return CorpusError(
        f"Corpus {name!r} is not available: {where}, and the Hugging Face datasets library could not provide it "
        f"({type(exc).__name__}). Set SEPTQ_DATA_DIR to a folder holding {relative}, connect to the network, "
        "or use the bundled 'demo' corpus or a text file."
    )


def load_eval_corpus(name: str) -> Corpus:
    """The evaluation text of a corpus name (wikitext2, ptb, c4, demo) or of a .txt/.jsonl file."""
    if name == "demo":
        return Corpus("demo", _read_demo(), "assets/demo.txt (bundled)")
    if name == "wikitext2":
        path = _from_data_dir("wikitext2/test.txt")
        if path:
            return Corpus(name, wikitext2_text(path.read_text(encoding="utf-8")), f"{path} (WikiText-2 raw, test)")
        try:
            rows = _hf_dataset("wikitext", "wikitext-2-raw-v1", split="test", column="text")
        except Exception as exc:  # noqa: BLE001
            raise _missing(name, "wikitext2/test.txt", exc) from exc
        return Corpus(name, "\n\n".join(rows), "datasets: wikitext-2-raw-v1, test")
    if name == "ptb":
        path = _from_data_dir("ptb/test.txt")
        if path:
            return Corpus(name, ptb_text(path.read_text(encoding="utf-8")), f"{path} (PTB text only, test)")
        try:
            rows = _hf_dataset("ptb_text_only", "penn_treebank", split="test", column="sentence")
        except Exception as exc:  # noqa: BLE001
            raise _missing(name, "ptb/test.txt", exc) from exc
        return Corpus(name, " ".join(rows), "datasets: ptb_text_only, test")
    if name == "c4":
        path = _from_data_dir("c4/validation-sample.jsonl")
        if path:
            docs = jsonl_texts(path.read_text(encoding="utf-8"), str(path))
            note = "" if len(docs) >= C4_EVAL_DOCS else f"only the first {len(docs)} of {C4_EVAL_DOCS} documents are in this file"
            return Corpus(name, c4_text(docs), f"{path} (C4 validation, first {min(len(docs), C4_EVAL_DOCS)} documents)", note)
        try:
            docs = _hf_dataset("allenai/c4", data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"},
                               split="validation", column="text")
        except Exception as exc:  # noqa: BLE001
            raise _missing(name, "c4/validation-sample.jsonl", exc) from exc
        return Corpus(name, c4_text(docs), "datasets: allenai/c4 en validation shard 0")
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
        root = data_dir()
        files = sorted(root.glob("c4/c4-train*.jsonl")) if root else []
        if files:
            return jsonl_texts(files[0].read_text(encoding="utf-8"), str(files[0])), f"{files[0]} (C4 train)"
        try:
            docs = _hf_dataset("allenai/c4", data_files={"train": "en/c4-train.00000-of-01024.json.gz"},
                               split="train", column="text")
        except Exception as exc:  # noqa: BLE001
            raise _missing("c4 (train, for calibration)", "c4/c4-train.00000-of-01024.jsonl", exc) from exc
        return docs, "datasets: allenai/c4 en train shard 0"
    if name == "wikitext2":
        path = _from_data_dir("wikitext2/train.txt")
        if path:
            return [wikitext2_text(path.read_text(encoding="utf-8"))], f"{path} (WikiText-2 raw, train)"
        try:
            rows = _hf_dataset("wikitext", "wikitext-2-raw-v1", split="train", column="text")
        except Exception as exc:  # noqa: BLE001
            raise _missing("wikitext2 (train, for calibration)", "wikitext2/train.txt", exc) from exc
        return ["\n\n".join(rows)], "datasets: wikitext-2-raw-v1, train"
    if name == "ptb":
        path = _from_data_dir("ptb/train.txt")
        if path:
            return [ptb_text(path.read_text(encoding="utf-8"))], f"{path} (PTB text only, train)"
        try:
            rows = _hf_dataset("ptb_text_only", "penn_treebank", split="train", column="sentence")
        except Exception as exc:  # noqa: BLE001
            raise _missing("ptb (train, for calibration)", "ptb/train.txt", exc) from exc
        return [" ".join(rows)], "datasets: ptb_text_only, train"
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
