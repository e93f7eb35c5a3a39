"""Shared fixtures: tiny random models (2 blocks, hidden 64) with a small word-level tokenizer."""

from __future__ import annotations

import os
import re
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the run store of every test (and of the app in AppTest) is a fresh folder, never the user's ~/.septq
os.environ["SEPTQ_HOME"] = tempfile.mkdtemp(prefix="septq-test-home-")

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
VOCAB_SIZE = 512
ARCHS = ("llama", "mistral", "qwen2", "opt")


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    text = (ROOT / "assets" / "demo.txt").read_text(encoding="utf-8")
    words = Counter(re.findall(r"\w+|[^\w\s]", text))
    vocab = {"[UNK]": 0, "[EOS]": 1, "[PAD]": 2}
    for word, _ in words.most_common(VOCAB_SIZE - len(vocab)):
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]", pad_token="[PAD]")


def make_config(arch: str):
    from transformers import LlamaConfig, MistralConfig, OPTConfig, Qwen2Config

    common = dict(vocab_size=VOCAB_SIZE, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=512, eos_token_id=1, pad_token_id=2, bos_token_id=1)
    if arch == "opt":
        return OPTConfig(ffn_dim=128, word_embed_proj_dim=64, **common)
    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[arch]
    return cls(intermediate_size=128, num_key_value_heads=2, **common)


def make_tiny_model(arch: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_config(arch))
    # Larger than default init so that quantization errors show in the outputs.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A function arch -> directory holding a saved tiny model and tokenizer."""
    made: dict[str, Path] = {}

    def build(arch: str = "llama") -> Path:
        if arch not in made:
            path = tmp_path_factory.mktemp(f"tiny-{arch}")
            make_tiny_model(arch).save_pretrained(path)
            make_tokenizer().save_pretrained(path)
            made[arch] = path
        return made[arch]

    return build


@pytest.fixture(scope="session")
def shared_data():
    """../shared/data when present (tests that need it skip otherwise)."""
    path = Path(os.environ.get("SEPTQ_DATA_DIR", SHARED_DATA))
    if not (path / "wikitext2" / "test.txt").is_file():
        pytest.skip("no shared data directory (set SEPTQ_DATA_DIR)")
    return path
