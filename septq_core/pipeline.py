"""Whole-model sequential quantization (ALGORITHM.md "Whole model").

Capture the inputs of decoder block 0 (with every keyword argument it gets),
then per block: collect H for its linear modules, quantize them, and run the
block again on its quantized weights to make the next block's inputs. Only the
block in work sits on the work device; H lives only while its block is in work.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import torch

from .config import QuantConfig
from .data import CalibrationSet, calibration_windows
from .evaluate import Cancelled
from .hessian import Hessian
from .models import LoadedModel, block_linears, find_blocks
from .solver import MatrixResult, importance_scores, quantize_matrix, select_mask

QUANTILES = (0.5, 0.9, 0.99, 0.999)
HIST_BINS = 40
REPLAY_BUDGET_BYTES = 2 << 30  # recorded module outputs kept per block (see _Replay)


class _StopForward(Exception):
    """Raised from a hook to end a block's forward pass once the inputs we need were seen."""


@dataclass
class ModuleReport:
    name: str  # "block.module", e.g. "3.self_attn.q_proj"
    block: int
    module: str
    shape: tuple[int, int]
    loss: float | None
    reserved: int
    reserved_fraction: float
    bits_per_weight: float
    seconds: float
    percdamp: float | None
    damp_note: str
    dead_columns: int
    score_quantiles: dict[str, float] = field(default_factory=dict)
    score_hist: dict[str, list[float]] = field(default_factory=dict)  # log10 scores: edges, counts

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class QuantRun:
    model: torch.nn.Module  # the quantized copy; the loaded model is untouched
    config: QuantConfig
    source: str
    reports: list[ModuleReport]
    masks: dict[str, torch.Tensor]  # name -> bool mask on CPU
    grids: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (scale, zero) on CPU
    seconds: dict[str, float]  # calibration_forward, solver, other, total
    calibration: dict

    @property
    def bits_per_weight(self) -> float:
        n = sum(r.shape[0] * r.shape[1] for r in self.reports)
        return sum(r.bits_per_weight * r.shape[0] * r.shape[1] for r in self.reports) / n

    @property
    def reserved_fraction(self) -> float:
        n = sum(r.shape[0] * r.shape[1] for r in self.reports)
        return sum(r.reserved for r in self.reports) / n

    def summary(self) -> dict:
        return {"label": self.config.label, "bits_per_weight": self.bits_per_weight,
                "reserved_fraction": self.reserved_fraction, "seconds": self.seconds,
                "calibration": self.calibration, "config": self.config.to_dict()}


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _hidden(out):
    return out[0] if isinstance(out, (tuple, list)) else out


class _Inputs:
    """Calibration inputs of the current block: hidden states and keyword arguments per mini-batch."""

    def __init__(self, hidden: list[torch.Tensor], kwargs: list[dict]):
        self.hidden, self.kwargs = hidden, kwargs
        self.n_seq = 0  # sequences in the mini-batch being run

    def run(self, block, cancel=None, replay: _Replay | None = None, record: bool = True):
        """Run `block` on every mini-batch; a hook may end a pass early with _StopForward."""
        outs = []
        if replay is not None:
            replay.arm(block, record)
        try:
            with torch.inference_mode():
                for i, (x, kw) in enumerate(zip(self.hidden, self.kwargs)):
                    if cancel is not None and cancel.is_set():
                        raise Cancelled("Quantization was cancelled.")
                    self.n_seq = x.shape[0]
                    if replay is not None:
                        replay.batch = i
                    try:
                        outs.append(_hidden(block(x, **kw)))
                    except _StopForward:
                        pass
        finally:
            if replay is not None:
                replay.disarm(block)
        return outs


class _Replay:
    """Outputs of a block's finished submodules, replayed in its later passes.

    In true-sequential mode a block is run once per group of modules. A
    submodule that returns before the first not-yet-quantized linear module
    starts (an input norm, q/k/v, then the whole attention once o_proj is done)
    gives the same output in every later pass: the first pass in which it is
    finished records its output per mini-batch, later passes return the
    recording instead of recomputing it. Results are identical; only work is saved.
    """

    def __init__(self, events: list[tuple[str, str]], n_batches: int):
        """`events`: the order in which the block's submodules start and return (LoadedModel.block_events)."""
        calls = Counter(n for kind, n in events if kind == "in")
        self.start = {n: i for i, (kind, n) in reversed(list(enumerate(events))) if kind == "in"}
        self.end = {n: i for i, (kind, n) in enumerate(events) if kind == "out" and calls[n] == 1}
        self.n_batches = n_batches
        self.active: list[str] = []  # the largest finished submodules
        self.outputs: dict[str, list] = {}
        self.batch = 0
        self._hooks = []

    def advance(self, first_open: str) -> None:
        """`first_open`: the first linear module (in execution order) not quantized yet."""
        finished = [n for n, e in self.end.items() if e < self.start[first_open]]
        self.active = [n for n in finished if not any(n.startswith(p + ".") for p in finished)]
        self.outputs = {n: v for n, v in self.outputs.items() if n in self.active}

    def arm(self, block, record: bool = True) -> None:
        modules = dict(block.named_modules())
        for name in self.active:
            if len(self.outputs.get(name, ())) == self.n_batches:
                modules[name].forward = lambda *a, name=name, **k: self.outputs[name][self.batch]
            elif record:
                self.outputs[name] = []
                self._hooks.append(modules[name].register_forward_hook(
                    lambda m, a, out, name=name: self.outputs[name].append(out)))

    def disarm(self, block) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        for module in block.modules():
            module.__dict__.pop("forward", None)


def _replay_fits(linears: dict, groups: list[list[str]], inputs: _Inputs, budget: int) -> bool:
    tokens = sum(x.shape[0] * x.shape[1] for x in inputs.hidden)
    itemsize = inputs.hidden[0].element_size()
    width = sum(linears[n].out_features for g in groups[:-1] for n in g)
    return tokens * width * itemsize <= budget


def _owned(hook):
    """A hook that acts only in the thread that installs it.

    The full-precision model is shared by every browser session: while one
    collects inputs with hooks on it (`fp_hessians`), another may run it for a
    perplexity; that forward pass must neither feed nor trip these hooks."""
    owner = threading.get_ident()

    def wrapped(*args, **kwargs):
        if threading.get_ident() == owner:
            return hook(*args, **kwargs)
        return None

    return wrapped


def capture_block0_inputs(model, input_ids: torch.Tensor, work: torch.device, batch_size: int, cancel=None) -> _Inputs:
    """The inputs (and every keyword argument) that decoder block 0 receives."""
    block0 = find_blocks(model)[0]
    seen: dict = {}

    def hook(module, args, kwargs):
        seen["x"] = args[0] if args else kwargs["hidden_states"]
        seen["kw"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _StopForward

    handle = block0.register_forward_pre_hook(_owned(hook), with_kwargs=True)
    device = next(model.parameters()).device
    hidden, kwargs = [], []
    try:
        with torch.inference_mode():
            for start in range(0, input_ids.shape[0], batch_size):
                if cancel is not None and cancel.is_set():
                    raise Cancelled("Quantization was cancelled.")
                try:
                    model(input_ids=input_ids[start : start + batch_size].to(device), use_cache=False)
                except _StopForward:
                    pass
                hidden.append(seen["x"].to(work))
                kwargs.append(_to(seen["kw"], work))
    finally:
        handle.remove()
    return _Inputs(hidden, kwargs)


def collect_hessians(block, groups: list[list[str]], inputs: _Inputs, work, cancel=None,
                     replay: _Replay | None = None, full_pass: bool = False):
    """H of every module in `groups`, from one pass of the block. Modules of a group share one H.

    The pass stops right after the last group has seen its input; with
    `full_pass` it runs the whole block and returns (H, the block's outputs),
    so that a full-precision pass needs one forward per block, not two."""
    linears = block_linears(block)
    acc: dict[str, Hessian] = {}
    handles = []
    for gi, group in enumerate(groups):
        first = linears[group[0]]
        h = acc[group[0]] = Hessian(first.in_features, work)

        def hook(module, args, h=h, stop=(gi == len(groups) - 1 and not full_pass)):
            h.add_batch(args[0], inputs.n_seq)
            if stop:
                raise _StopForward

        handles.append(first.register_forward_pre_hook(_owned(hook)))
    try:
        outs = inputs.run(block, cancel, replay)
    finally:
        for handle in handles:
            handle.remove()
    H = {name: acc[group[0]].H for group in groups for name in group}
    return (H, outs) if full_pass else H


def _score_summary(S: torch.Tensor | None) -> tuple[dict, dict]:
    """Quantiles (the tail exact, from topk; the median and q0.9 from a strided
    sample of at most 2^16 scores) and a histogram of log10 scores."""
    if S is None:
        return {}, {}
    flat = S.flatten().float()
    n = flat.numel()
    quantiles = {}
    sample = flat[:: max(1, n // 65536)].sort().values
    for q in (0.5, 0.9):
        quantiles[f"q{q:g}"] = float(sample[int(q * (sample.numel() - 1))])
    top = flat.topk(max(1, n - int(0.99 * (n - 1)))).values  # descending
    for q in (0.99, 0.999):
        quantiles[f"q{q:g}"] = float(top[n - 1 - int(q * (n - 1))])
    quantiles["max"] = float(top[0])
    pos = flat[flat > 0].log10()
    if pos.numel() == 0:
        return quantiles, {}
    lo, hi = float(pos.min()), float(pos.max())
    hi = hi if hi > lo else lo + 1
    counts = torch.histc(pos, bins=HIST_BINS, min=lo, max=hi)
    edges = torch.linspace(lo, hi, HIST_BINS + 1)
    return quantiles, {"log10_edges": edges.tolist(), "counts": counts.cpu().tolist()}


def _report(block: int, module: str, res: MatrixResult) -> ModuleReport:
    rows, cols = res.weight.shape
    quantiles, hist = _score_summary(res.scores)
    return ModuleReport(
        name=f"{block}.{module}", block=block, module=module, shape=(rows, cols), loss=res.loss,
        reserved=res.reserved, reserved_fraction=res.reserved / (rows * cols), bits_per_weight=res.bits_per_weight,
        seconds=res.seconds, percdamp=res.percdamp, damp_note=res.damp_note, dead_columns=res.dead_columns,
        score_quantiles=quantiles, score_hist=hist,
    )


def _batch_size(seqlen: int, work: torch.device) -> int:
    return max(1, (8192 if work.type == "cuda" else 4096) // seqlen)


def quantize_model(loaded: LoadedModel, cfg: QuantConfig, calib: CalibrationSet | None = None,
                   progress=None, cancel=None, device=None) -> QuantRun:
    """Quantize every linear module of every decoder block of a copy of `loaded.model`.

    `progress(done, total, message)` is called once per module at least;
    setting `cancel` (a threading.Event) raises Cancelled within one module.
    `device` is where each block is worked on (default: the model's device)."""
    t_start = time.perf_counter()
    timers = {"calibration_forward": 0.0, "solver": 0.0}
    work = torch.device(device) if device is not None else loaded.device
    with loaded.lock:  # not while another session has hooks on the shared model (fp_hessians)
        qmodel = copy.deepcopy(loaded.model)
    home = next(qmodel.parameters()).device
    blocks = find_blocks(qmodel)
    groups = loaded.groups
    n_modules = len(blocks) * sum(len(g) for g in groups)
    scoped = cfg.method == "septq" and cfg.mask_scope != "matrix"
    total = n_modules + (len(blocks) if cfg.mask_scope == "model" and scoped else 0)
    done = 0

    def tick(message: str):
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, message)

    def check_cancel():
        if cancel is not None and cancel.is_set():
            raise Cancelled("Quantization was cancelled; the loaded model is unchanged.")

    reports, masks, grids = [], {}, {}
    calibration_info: dict = {}
    inputs = None
    if cfg.method != "rtn":
        if calib is None:
            calib = calibration_windows(loaded.tokenizer, cfg.calib, cfg.nsamples, cfg.seqlen, cfg.seed)
        calibration_info = {"corpus": calib.corpus, "source": calib.source, "nsamples": calib.nsamples,
                            "seqlen": calib.seqlen, "seed": calib.seed}
        t = time.perf_counter()
        inputs = capture_block0_inputs(qmodel, calib.input_ids, work, _batch_size(calib.seqlen, work), cancel)
        timers["calibration_forward"] += time.perf_counter() - t

    model_masks = None
    if scoped and cfg.mask_scope == "model":
        model_masks = _model_scope_masks(blocks, groups, inputs, cfg, work, home, timers, tick, cancel)

    for b, block in enumerate(blocks):
        check_cancel()
        block.to(work)
        linears = block_linears(block)
        block_masks = None
        if model_masks is not None:
            block_masks = {n: model_masks[f"{b}.{n}"] for g in groups for n in g}
        elif scoped:  # "layer": one budget shared by the block's modules, scored from one pass
            t = time.perf_counter()
            H_all = collect_hessians(block, groups, inputs, work, cancel)
            timers["calibration_forward"] += time.perf_counter() - t
            t = time.perf_counter()
            scores = {n: importance_scores(linears[n].weight, H_all[n], cfg, f"{b}.{n}") for n in H_all}
            block_masks = select_mask(scores, cfg.reserve_ratio, "layer")
            timers["solver"] += time.perf_counter() - t
            del H_all, scores

        passes = groups if cfg.true_sequential else [[n for g in groups for n in g]]
        replay = None
        if inputs is not None and cfg.true_sequential and _replay_fits(linears, groups, inputs, REPLAY_BUDGET_BYTES):
            replay = _Replay(loaded.block_events, len(inputs.hidden))
        for group in passes:
            H = {}
            if inputs is not None:
                sub = [group] if cfg.true_sequential else groups
                if replay is not None:
                    replay.advance(group[0])
                t = time.perf_counter()
                H = collect_hessians(block, sub, inputs, work, cancel, replay)
                timers["calibration_forward"] += time.perf_counter() - t
            for name in group:
                check_cancel()
                layer = linears[name]
                t = time.perf_counter()
                mask = block_masks[name] if block_masks is not None else None
                res = quantize_matrix(layer.weight.data, H.get(name), cfg, mask=mask, name=f"{b}.{name}")
                layer.weight.data.copy_(res.weight)
                timers["solver"] += time.perf_counter() - t
                masks[f"{b}.{name}"] = res.mask.cpu()
                grids[f"{b}.{name}"] = (res.scale.cpu(), res.zero.cpu())
                reports.append(_report(b, name, res))
                tick(f"block {b}/{len(blocks)}: {name} quantized ({res.seconds:.2f} s)")
            del H

        if inputs is not None and b + 1 < len(blocks):
            t = time.perf_counter()
            inputs.hidden = inputs.run(block, cancel, replay, record=False)
            timers["calibration_forward"] += time.perf_counter() - t
        del replay
        block.to(home)

    seconds = dict(timers)
    seconds["total"] = time.perf_counter() - t_start
    seconds["other"] = seconds["total"] - timers["calibration_forward"] - timers["solver"]
    return QuantRun(qmodel, cfg, loaded.source, reports, masks, grids, seconds, calibration_info)


def _fp_block_hessians(blocks, groups, inputs: _Inputs, work, home, cancel=None):
    """Yield (b, block, {name: H}) from one full-precision pass over all blocks."""
    fp_inputs = _Inputs(list(inputs.hidden), inputs.kwargs)
    for b, block in enumerate(blocks):
        block.to(work)
        H_all, fp_inputs.hidden = collect_hessians(block, groups, fp_inputs, work, cancel, full_pass=True)
        yield b, block, H_all
        block.to(home)


def _model_scope_masks(blocks, groups, inputs: _Inputs, cfg, work, home, timers, tick, cancel) -> dict[str, torch.Tensor]:
    """Scores of every module from one full-precision calibration pass, ranked together."""
    scores: dict[str, torch.Tensor] = {}
    t = time.perf_counter()
    for b, block, H_all in _fp_block_hessians(blocks, groups, inputs, work, home, cancel):
        timers["calibration_forward"] += time.perf_counter() - t
        t = time.perf_counter()
        linears = block_linears(block)
        for n, H in H_all.items():
            scores[f"{b}.{n}"] = importance_scores(linears[n].weight, H, cfg, f"{b}.{n}").cpu()
        timers["solver"] += time.perf_counter() - t
        tick(f"block {b}/{len(blocks)}: full-precision scores for the model-wide budget")
        t = time.perf_counter()
    return select_mask(scores, cfg.reserve_ratio, "model")


def fp_hessians(loaded: LoadedModel, calib: CalibrationSet, progress=None, cancel=None) -> dict[str, torch.Tensor]:
    """H of every linear module ("block.module" -> cols x cols, on CPU) from one
    full-precision pass of the loaded model over `calib`; the model is not modified.
    Modules of a group (q/k/v, gate/up) share one tensor."""
    with loaded.lock:  # one hooked pass at a time on the shared model; other forward passes go on
        model = loaded.model
        blocks = find_blocks(model)
        inputs = capture_block0_inputs(model, calib.input_ids, loaded.device, _batch_size(calib.seqlen, loaded.device),
                                       cancel)
        out: dict[str, torch.Tensor] = {}
        for b, _block, H_all in _fp_block_hessians(blocks, loaded.groups, inputs, loaded.device, loaded.device, cancel):
            cpu = {id(H): H.cpu() for H in H_all.values()}
            out.update({f"{b}.{n}": cpu[id(H)] for n, H in H_all.items()})
            if progress is not None:
                progress(b + 1, len(blocks), f"block {b}: inputs collected")
    return out
