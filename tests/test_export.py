"""Export of quantized models: bit packing, exact round trip, stored size, and damaged files."""

from __future__ import annotations

import json
import math
import shutil
import struct

import pytest
import torch

import septq_core as sq
from septq_core.export import ExportError, load_quantized, pack_codes, save_quantized, unpack_codes

CALIB = dict(calib="demo", nsamples=4, seqlen=64)
QUANTIZED = "quantized.safetensors"


@pytest.fixture(scope="module")
def export_of(tiny_model_dir, tmp_path_factory):
    """A function (arch, method, group_size) -> (loaded, run, export dir, manifest), each made once."""
    made = {}

    def build(arch="llama", method="septq", group_size=None):
        key = (arch, method, group_size)
        if key not in made:
            lm = sq.load_model(str(tiny_model_dir(arch)))
            cfg = sq.QuantConfig(method=method, bits=3, reserve_ratio=0.02, group_size=group_size, **CALIB)
            run = sq.quantize_model(lm, cfg)
            path = tmp_path_factory.mktemp(f"export-{arch}-{method}-{group_size}")
            made[key] = (lm, run, path, save_quantized(run, lm, path, perplexities=[{"corpus": "demo", "value": 1.5}]))
        return made[key]

    return build


@pytest.fixture
def damaged(export_of, tmp_path):
    """A fresh copy of the tiny llama SEPTQ export, free to break."""
    path = tmp_path / "copy"
    shutil.copytree(export_of()[2], path)
    return path


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("numel", [1, 8, 1001])
def test_pack_unpack_round_trip(bits, numel):
    g = torch.Generator().manual_seed(bits * 1000 + numel)
    codes = torch.randint(0, 2**bits, (numel,), generator=g, dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(numel * bits / 8)
    assert torch.equal(unpack_codes(packed, bits, numel), codes)


def test_pack_bit_order_is_lsb_first():
    """Code i fills bits i*bits.. of the stream; stream bit k is bit k % 8 of byte k // 8."""
    two = torch.tensor([1, 2, 3, 0], dtype=torch.uint8)
    assert pack_codes(two, 2).tolist() == [0b00_11_10_01]  # 57: codes read from the low bits up
    three = torch.tensor([5, 3, 7], dtype=torch.uint8)  # 5 | 3 << 3 | 7 << 6 = 477: the 7 straddles bytes 0 and 1
    assert pack_codes(three, 3).tolist() == [0b11_011_101, 0b1]
    eight = torch.tensor([1, 2, 3, 4, 5, 6, 7, 0], dtype=torch.uint8)
    assert pack_codes(eight, 3).tolist() == [209, 88, 31]  # sum(c << 3 i) = 0x1F58D1, little-endian
    assert unpack_codes(torch.tensor([209, 88, 31], dtype=torch.uint8), 3, 8).tolist() == eight.tolist()


def test_pack_rejects_codes_out_of_range_and_wrong_lengths():
    with pytest.raises(ExportError, match="too large for 2 bits"):
        pack_codes(torch.tensor([4], dtype=torch.uint8), 2)
    with pytest.raises(ExportError, match="2 uint8 bytes"):
        unpack_codes(torch.zeros(3, dtype=torch.uint8), 3, 5)


@pytest.mark.parametrize("arch,method,group_size", [("llama", "septq", None), ("llama", "septq", 16), ("llama", "gptq", None),
                                                    ("llama", "rtn", 16), ("opt", "septq", None)])
def test_round_trip_reproduces_the_run_exactly(export_of, arch, method, group_size):
    lm, run, path, manifest = export_of(arch, method, group_size)
    model, tok, read = load_quantized(path)
    assert read == manifest and not model.training
    expected = run.model.state_dict()
    got = model.state_dict()
    assert got.keys() == expected.keys()
    assert all(got[k].dtype == expected[k].dtype and torch.equal(got[k], expected[k]) for k in expected)
    reserved = sum(m["reserved"] for m in manifest["modules"])
    assert reserved == (sum(r.reserved for r in run.reports) if method == "septq" else 0)
    assert (reserved > 0) == (method == "septq")
    ppl = sq.perplexity(model, tok, "demo", seqlen=64, max_windows=4).value
    assert ppl == sq.perplexity(run.model, lm.tokenizer, "demo", seqlen=64, max_windows=4).value


def test_tied_embeddings_stay_tied(export_of):
    _, run, path, manifest = export_of("opt", "septq", None)
    model, _, _ = load_quantized(path)
    assert manifest["aliases"] == {"lm_head.weight": "model.decoder.embed_tokens.weight"}
    assert model.lm_head.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()


def safetensors_data_bytes(file) -> int:
    """Sum of the tensor byte ranges listed in a safetensors header (u64 length, then JSON)."""
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return sum(e["data_offsets"][1] - e["data_offsets"][0] for k, e in header.items() if k != "__metadata__")


@pytest.mark.parametrize("group_size", [None, 16])
def test_stored_size_matches_file_and_formula(export_of, group_size):
    _, run, path, manifest = export_of("llama", "septq", group_size)
    n = sum(r.shape[0] * r.shape[1] for r in run.reports)
    assert manifest["stored_bits_per_weight"] == pytest.approx(8 * safetensors_data_bytes(path / QUANTIZED) / n, rel=1e-12)
    assert manifest["bits_per_weight"] == run.bits_per_weight
    w = manifest["widths"]
    assert (w["code_bits"], w["scale_bits"], w["zero_bits"], w["value_bits"], w["index_bits"]) == (3, 32, 8, 32, 16)
    formula = 0.0
    for m in manifest["modules"]:
        rows, cols = m["shape"]
        per_weight = (3 + (w["scale_bits"] + w["zero_bits"]) * m["n_groups"] / cols
                      + (w["value_bits"] + w["index_bits"]) * m["reserved"] / (rows * cols) + 32 * (rows + 1) / (rows * cols))
        formula += per_weight * rows * cols / n
    assert manifest["stored_bits_per_weight"] == pytest.approx(formula, rel=0.02)


def test_no_pickle_files_and_manifest_contents(export_of):
    _, run, path, manifest = export_of()
    names = {p.name for p in path.iterdir()}
    assert {"manifest.json", QUANTIZED, "unquantized.safetensors", "config.json", "tokenizer.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pkl", ".pt", ".pth", ".pickle"))]
    assert manifest["config"] == run.config.to_dict() and manifest["perplexities"] == [{"corpus": "demo", "value": 1.5}]
    assert len(manifest["modules"]) == len(run.reports) and set(manifest["sha256"]) == {QUANTIZED, "unquantized.safetensors"}


def test_truncated_file_is_rejected_naming_it(damaged):
    file = damaged / QUANTIZED
    file.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(ExportError, match="export the model again") as info:
        load_quantized(damaged)
    assert str(file) in str(info.value) and "SHA-256" in str(info.value)


def test_flipped_byte_is_rejected(damaged):
    file = damaged / "unquantized.safetensors"
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="unquantized.safetensors does not match its SHA-256"):
        load_quantized(damaged)


def test_edited_manifest_shape_is_rejected(damaged):
    manifest = json.loads((damaged / "manifest.json").read_text())
    rows, cols = manifest["modules"][0]["shape"]
    manifest["modules"][0]["shape"] = [rows, cols // 2]
    (damaged / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="the manifest says"):
        load_quantized(damaged)


def test_unknown_version_missing_manifest_and_missing_path_are_rejected(damaged, tiny_model_dir, tmp_path):
    manifest = json.loads((damaged / "manifest.json").read_text())
    (damaged / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ExportError, match="format version 99"):
        load_quantized(damaged)
    with pytest.raises(ExportError, match="has no manifest.json"):
        load_quantized(tiny_model_dir("llama"))  # a plain Hugging Face model directory
    with pytest.raises(ExportError, match="No export directory"):
        load_quantized(tmp_path / "nowhere")
