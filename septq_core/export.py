"""Save a quantized model (a QuantRun) to a directory and load it back; safetensors and JSON only, never pickle.

An export directory holds:
  quantized.safetensors    per quantized linear module "block.module": `.codes` (bit-packed), `.scale` (float32),
                           `.zero` (uint8, or float32 if a zero is not an integer in 0..255), and the reserved
                           weights as CSR: `.row_ptr` (int32, rows + 1), `.col` (int16, int32 if cols > 32767),
                           `.values` (the weight's dtype)
  unquantized.safetensors  every other tensor of the state dict (embeddings, norms, lm_head, biases); a tensor tied
                           to one already stored (lm_head to the embeddings) is listed in the manifest's `aliases`
  config.json, tokenizer   as transformers writes them
  manifest.json            format version, options, storage widths, module shapes, perplexities, SHA-256 of both files
Bit order of the packed codes: LSB first. Code i fills bits i*bits .. i*bits + bits - 1 of the stream, and bit k
of the stream is bit k % 8 (value 2^(k % 8)) of byte k // 8. Written last, manifest.json marks a finished export.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch

from .grid import expand_groups
from .models import block_linears, find_blocks

FORMAT = "septq-export"
FORMAT_VERSION = 1
MANIFEST, QUANTIZED, UNQUANTIZED = "manifest.json", "quantized.safetensors", "unquantized.safetensors"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
REDO = "export the model again with save_quantized"


class ExportError(ValueError):
    """An export cannot be written or read; the message says what to do."""


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ExportError(f"bits={bits!r} is invalid: codes are packed with 1 to 8 bits each.")


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes (each < 2**bits) -> uint8 stream of ceil(numel * bits / 8) bytes, LSB first (see module doc)."""
    _check_bits(bits)
    if codes.dtype != torch.uint8:
        raise ExportError(f"Codes must be uint8, got {codes.dtype}: convert them with .to(torch.uint8) first.")
    flat = codes.reshape(-1).cpu()
    if flat.numel() and int(flat.max()) >= 2**bits:
        raise ExportError(f"A code is {int(flat.max())}, too large for {bits} bits: clamp codes to 0..{2**bits - 1}.")
    stream = ((flat[:, None] >> torch.arange(bits, dtype=torch.uint8)) & 1).reshape(-1)
    stream = torch.cat([stream, stream.new_zeros(-stream.numel() % 8)])
    return (stream.view(-1, 8) << torch.arange(8, dtype=torch.uint8)).sum(1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of pack_codes: the first `numel` codes of the stream, uint8."""
    _check_bits(bits)
    if packed.dtype != torch.uint8 or packed.numel() != math.ceil(numel * bits / 8):
        raise ExportError(f"A packed stream of {numel} {bits}-bit codes is {math.ceil(numel * bits / 8)} uint8 bytes; "
                          f"got {packed.numel()} {packed.dtype} values: the data is damaged, {REDO}.")
    stream = ((packed.reshape(-1).cpu()[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1).reshape(-1)
    codes = stream[: numel * bits].view(numel, bits) << torch.arange(bits, dtype=torch.uint8)
    return codes.sum(1).to(torch.uint8)


def _dequantize(codes, scale, zero, row_ptr, col, values, group_size, dtype) -> torch.Tensor:
    """grid.dequantize's arithmetic, scale * (code - zero) in float32, cast to `dtype`, reserved values put back."""
    rows, cols = codes.shape
    s = expand_groups(scale.float(), cols, group_size)
    z = expand_groups(zero.float(), cols, group_size)
    W = (s * (codes.float() - z)).to(dtype)
    reserved_rows = torch.repeat_interleave(torch.arange(rows), (row_ptr[1:] - row_ptr[:-1]).long())
    W[reserved_rows, col.long()] = values
    return W


def _weight_keys(model) -> dict[str, str]:
    """Map "block.module" to the state-dict key of its weight ("0.self_attn.q_proj" -> "model.layers.0.self_attn.q_proj.weight")."""
    names = {id(m): n for n, m in model.named_modules()}
    return {f"{b}.{n}": names[id(lin)] + ".weight" for b, block in enumerate(find_blocks(model))
            for n, lin in block_linears(block).items()}


def _sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_quantized(run, loaded, path, perplexities: list[dict] | None = None) -> dict:
    """Write `run` (from quantize_model(loaded, cfg)) to directory `path`; return the manifest."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MANIFEST).unlink(missing_ok=True)  # an interrupted export must not look finished
    cfg, model = run.config, run.model
    bits, gs, maxq = cfg.bits, cfg.group_size, 2**cfg.bits - 1
    state, keys = model.state_dict(), _weight_keys(model)
    dtype = state[keys[run.reports[0].name]].dtype
    if dtype not in DTYPES.values():
        raise ExportError(f"Weights of dtype {dtype} cannot be exported: load the model as float32, float16 or bfloat16.")
    zeros = [run.grids[r.name][1] for r in run.reports]
    zero_u8 = all(torch.equal(z, z.round()) and float(z.min()) >= 0 and float(z.max()) <= 255 for z in zeros)
    index_dtype = torch.int16 if max(r.shape[1] for r in run.reports) <= 32767 else torch.int32

    quantized, modules = {}, []
    for r in run.reports:
        W = state[keys[r.name]].detach().cpu()
        rows, cols = W.shape
        scale, zero = (t.detach().cpu().float() for t in run.grids[r.name])
        zero = zero.to(torch.uint8) if zero_u8 else zero
        mask = run.masks[r.name].cpu().bool()
        s, z = expand_groups(scale, cols, gs), expand_groups(zero.float(), cols, gs)
        codes = torch.clamp(torch.round(W.float() / s) + z, 0, maxq).masked_fill(mask, 0).to(torch.uint8)
        row_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), mask.sum(1).cumsum(0)]).to(torch.int32)
        col, values = mask.nonzero()[:, 1].to(index_dtype), W[mask].contiguous()
        if not torch.equal(_dequantize(codes, scale, zero, row_ptr, col, values, gs, dtype), W):
            raise ExportError(f"Module {r.name}: its weights are not scale * (code - zero) on the run's grids, so they "
                              "cannot be stored exactly; export a QuantRun straight from quantize_model.")
        quantized.update({f"{r.name}.codes": pack_codes(codes, bits), f"{r.name}.scale": scale, f"{r.name}.zero": zero,
                          f"{r.name}.row_ptr": row_ptr, f"{r.name}.col": col, f"{r.name}.values": values})
        modules.append({"name": r.name, "key": keys[r.name], "shape": [rows, cols], "n_groups": scale.shape[1],
                        "reserved": int(mask.sum())})

    unquantized, aliases, seen = {}, {}, {}
    for key, t in state.items():
        if key in keys.values():
            continue
        ident = (t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))
        if t.numel() and ident in seen:
            aliases[key] = seen[ident]
        else:
            seen[ident] = key
            unquantized[key] = t.detach().cpu().contiguous().clone()

    save_file(quantized, str(path / QUANTIZED))
    save_file(unquantized, str(path / UNQUANTIZED))
    for name in (QUANTIZED, UNQUANTIZED):  # safetensors writes 0600; an export is meant to be shared like the config
        (path / name).chmod(0o644)
    model.config.save_pretrained(path)
    loaded.tokenizer.save_pretrained(path)
    n_weights = sum(m["shape"][0] * m["shape"][1] for m in modules)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "method": cfg.method, "bits": bits, "group_size": gs,
        "reserve_ratio": cfg.effective_reserve_ratio, "config": cfg.to_dict(), "source": run.source,
        "model_name": loaded.name, "architecture": model.config.model_type, "dtype": str(dtype).replace("torch.", ""),
        "bits_per_weight": run.bits_per_weight,
        "stored_bits_per_weight": 8 * sum(t.numel() * t.element_size() for t in quantized.values()) / n_weights,
        "widths": {"code_bits": bits, "scale_bits": 32, "zero_bits": 8 if zero_u8 else 32,
                   "value_bits": 8 * dtype.itemsize, "index_bits": 8 * index_dtype.itemsize, "row_ptr_bits": 32,
                   "bit_order": "lsb-first"},
        "modules": modules, "aliases": aliases,
        "perplexities": [dict(p) for p in perplexities or []],
        "sha256": {QUANTIZED: _sha256(path / QUANTIZED), UNQUANTIZED: _sha256(path / UNQUANTIZED)},
    }
    try:
        text = json.dumps(manifest, indent=1)
    except TypeError as exc:
        raise ExportError(f"The perplexities cannot be written as JSON ({exc}): pass plain dicts (Perplexity.to_dict()).") from exc
    (path / MANIFEST).write_text(text, encoding="utf-8")
    return manifest


def _read_manifest(path: Path) -> dict:
    if not path.is_dir():
        raise ExportError(f"No export directory at {path}: check the path, or write one with save_quantized.")
    if not (path / MANIFEST).is_file():
        raise ExportError(f"{path} has no {MANIFEST}, so it is not a finished quantized export: {REDO}.")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path / MANIFEST} is not valid JSON ({exc}): {REDO}.") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ExportError(f"{path / MANIFEST} is not a SEPTQ export manifest: {REDO}.")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{path} has export format version {manifest.get('format_version')!r}; this SEPTQ Explorer reads "
                          f"version {FORMAT_VERSION}: use the version that wrote it, or {REDO}.")
    missing = {"bits", "group_size", "dtype", "widths", "modules", "aliases", "sha256"} - set(manifest)
    if missing or manifest["dtype"] not in DTYPES:
        raise ExportError(f"{path / MANIFEST} is incomplete or edited (fields {sorted(missing)}, dtype "
                          f"{manifest.get('dtype')!r}): {REDO}.")
    return manifest


def _load_checked(path: Path, name: str, manifest: dict) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    file = path / name
    if not file.is_file():
        raise ExportError(f"{file} is missing: {REDO}.")
    if _sha256(file) != manifest["sha256"].get(name):
        raise ExportError(f"{file} does not match its SHA-256 in {MANIFEST} (truncated or modified): {REDO}.")
    return load_file(str(file))


def _module_weight(m: dict, tensors: dict, manifest: dict, dtype: torch.dtype) -> torch.Tensor:
    """Check the module's tensors against the manifest and dequantize them."""
    bits, gs, widths = manifest["bits"], manifest["group_size"], manifest["widths"]
    try:
        rows, cols = (int(v) for v in m["shape"])
        n_groups, k, name = int(m["n_groups"]), int(m["reserved"]), m["name"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"{MANIFEST} has a damaged module entry {m!r}: {REDO}.") from exc
    index = torch.int16 if widths.get("index_bits") == 16 else torch.int32
    expected = {"codes": ((math.ceil(rows * cols * bits / 8),), torch.uint8), "scale": ((rows, n_groups), torch.float32),
                "zero": ((rows, n_groups), torch.uint8 if widths.get("zero_bits") == 8 else torch.float32),
                "row_ptr": ((rows + 1,), torch.int32), "col": ((k,), index), "values": ((k,), dtype)}
    got = {}
    for part, (shape, dt) in expected.items():
        t = tensors.get(f"{name}.{part}")
        if t is None or tuple(t.shape) != shape or t.dtype != dt:
            found = "missing" if t is None else f"{tuple(t.shape)} {t.dtype}"
            raise ExportError(f"{QUANTIZED}: {name}.{part} is {found}, the manifest says {shape} {dt}; the export is "
                              f"damaged or edited: {REDO}.")
        got[part] = t
    row_ptr, col = got["row_ptr"].long(), got["col"].long()
    groups_ok = n_groups == (1 if gs is None else math.ceil(cols / gs))
    csr_ok = row_ptr[0] == 0 and row_ptr[-1] == k and bool((row_ptr[1:] >= row_ptr[:-1]).all())
    if not groups_ok or not csr_ok or (k and not (0 <= int(col.min()) and int(col.max()) < cols)):
        raise ExportError(f"{QUANTIZED}: the grids or reserved-weight indices of {name} do not fit its shape "
                          f"{rows} x {cols} in the manifest; the export is damaged or edited: {REDO}.")
    codes = unpack_codes(got["codes"], bits, rows * cols).view(rows, cols)
    return _dequantize(codes, got["scale"], got["zero"], got["row_ptr"], got["col"], got["values"], gs, dtype)


def load_quantized(path, device="cpu") -> tuple[torch.nn.Module, object, dict]:
    """Read an export written by save_quantized: (dequantized model in eval mode, tokenizer, manifest)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    manifest = _read_manifest(path)
    dtype = DTYPES[manifest["dtype"]]
    quantized = _load_checked(path, QUANTIZED, manifest)
    state = _load_checked(path, UNQUANTIZED, manifest)
    n_parts = 6 * len(manifest["modules"])
    if len(quantized) != n_parts:
        raise ExportError(f"{QUANTIZED} holds {len(quantized)} tensors, the manifest describes {n_parts}: {REDO}.")
    for m in manifest["modules"]:
        state[m["key"]] = _module_weight(m, quantized, manifest, dtype)
    for key, target in manifest["aliases"].items():
        if target not in state:
            raise ExportError(f"{MANIFEST} ties {key} to {target}, which is not stored: {REDO}.")
        state[key] = state[target]
    try:
        config = AutoConfig.from_pretrained(path)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.load_state_dict(state, strict=True)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, RuntimeError) as exc:
        text = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise ExportError(f"The export at {path} does not fit its model config or tokenizer ({text}): {REDO}.") from exc
    model.to(device).eval()
    model.requires_grad_(False)
    return model, tokenizer, manifest
