"""Loading models: the tiny test models, clear errors for bad input, and the embedded default."""

from __future__ import annotations

import os

import pytest
from conftest import ARCHS, make_tokenizer

import septq_core
from septq_core import LoadError, load_model

DECODER_GROUPS = [
    ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
    ["self_attn.o_proj"],
    ["mlp.gate_proj", "mlp.up_proj"],
    ["mlp.down_proj"],
]
OPT_GROUPS = [
    ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
    ["self_attn.out_proj"],
    ["fc1"],
    ["fc2"],
]


@pytest.mark.parametrize("arch", ARCHS)
def test_load_tiny_model(arch, tiny_model_dir):
    loaded = load_model(str(tiny_model_dir(arch)))
    card = loaded.card
    assert card["architecture"] == arch
    assert card["parameters"] == sum(p.numel() for p in loaded.model.parameters())
    assert card["blocks"] == 2
    assert len(loaded.blocks) == 2
    assert card["hidden_size"] == 64
    assert card["vocab_size"] == 512
    assert card["weights"] == "as stored"
    expected = OPT_GROUPS if arch == "opt" else DECODER_GROUPS
    assert loaded.groups == expected
    assert loaded.module_names == [n for g in expected for n in g]
    assert [m["name"] for m in card["modules"]] == loaded.module_names
    assert [m["group"] for m in card["modules"]] == [gi for gi, g in enumerate(expected) for _ in g]
    # Every linear module of every block is quantizable.
    linears = sum(m.weight.numel() for blk in loaded.blocks for name, m in blk.named_modules()
                  if name in loaded.module_names)
    assert card["quantizable_parameters"] == linears


def test_tiny_llama_module_shapes(tiny_model_dir):
    card = load_model(str(tiny_model_dir("llama"))).card
    shapes = {m["name"]: m["shape"] for m in card["modules"]}
    # hidden 64, 4 heads of 16, 2 key/value heads, intermediate 128
    assert shapes == {
        "self_attn.q_proj": [64, 64], "self_attn.k_proj": [32, 64], "self_attn.v_proj": [32, 64],
        "self_attn.o_proj": [64, 64], "mlp.gate_proj": [128, 64], "mlp.up_proj": [128, 64],
        "mlp.down_proj": [64, 128],
    }


def test_load_same_source_twice_is_same_object(tiny_model_dir):
    path = str(tiny_model_dir("llama"))
    assert load_model(path) is load_model(path)


# -- bad input -------------------------------------------------------------------

def test_hf_id_not_cached_offline():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(LoadError) as info:
        load_model("nonexistent-org/nonexistent-model-xyz")
    message = str(info.value)
    assert "nonexistent-org/nonexistent-model-xyz" in message
    assert "not in the local Hugging Face cache" in message
    assert "huggingface-cli download" in message


def test_directory_without_config(tmp_path):
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(LoadError) as info:
        load_model(str(tmp_path))
    message = str(info.value)
    assert "no config.json" in message
    assert "not a Hugging Face model directory" in message


def test_directory_with_gguf_but_no_config(tmp_path):
    (tmp_path / "model-Q4.gguf").write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(LoadError) as info:
        load_model(str(tmp_path))
    message = str(info.value)
    assert "no config.json" in message
    assert "model-Q4.gguf" in message
    assert "pass that file's path" in message


def test_gguf_suffix_not_gguf(tmp_path):
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"\x00" + os.urandom(255))  # random bytes that cannot start with the magic "GGUF"
    with pytest.raises(LoadError, match="is not a GGUF file"):
        load_model(str(path))


def test_truncated_gguf(tmp_path):
    head = _head(septq_core.default_model_path(), 1000)
    assert head[:4] == b"GGUF"
    path = tmp_path / "truncated.gguf"
    path.write_bytes(head)
    with pytest.raises(LoadError) as info:
        load_model(str(path))
    message = str(info.value)
    assert "damaged or truncated GGUF" in message
    assert "download it again" in message


def _head(path, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def test_missing_gguf_file(tmp_path):
    with pytest.raises(LoadError, match="does not exist"):
        load_model(str(tmp_path / "absent.gguf"))


def test_nonexistent_path():
    with pytest.raises(LoadError) as info:
        load_model("./no/such/dir")
    message = str(info.value)
    assert "No file or directory at ./no/such/dir" in message
    assert "check the path" in message


def test_unsupported_architecture(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=512))
    model.save_pretrained(tmp_path)
    make_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(LoadError) as info:
        load_model(str(tmp_path))
    message = str(info.value)
    assert "'gpt2'" in message
    assert "not supported" in message
    assert "llama" in message and "opt" in message


# -- the embedded default ----------------------------------------------------------

@pytest.mark.slow
def test_embedded_default():
    loaded = load_model(None)
    assert load_model(None) is loaded
    card = loaded.card
    assert card["weights"] == "dequantized Q4_1"
    assert card["architecture"] == "llama"
    assert card["blocks"] == 30
    assert card["hidden_size"] == 576
    assert loaded.groups == DECODER_GROUPS
    assert len(card["modules"]) == 7
    shapes = {m["name"]: m["shape"] for m in card["modules"]}
    assert shapes["self_attn.q_proj"] == [576, 576]
    assert shapes["self_attn.k_proj"] == [192, 576]
    assert shapes["mlp.gate_proj"] == [1536, 576]
    assert shapes["mlp.down_proj"] == [576, 1536]
    text = septq_core.generate(loaded.model, loaded.tokenizer, ["The capital of France is"], max_new_tokens=8)
    assert len(text) == 1
    assert text[0].strip()
    assert "Paris" in text[0]
