"""Looking inside the mask: what a score is made of, other criteria, overlaps, pooling.

Everything here works on one matrix W and its H, like `solver`, and is what the
dashboard's Importance and Mask pages draw from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import MASK_SCOPES, QuantConfig
from .evaluate import Cancelled
from .grid import dequantize, expand_groups
from .models import find_blocks
from .solver import _original_grids, _unpermute, prepare_hessian, reserve_count, select_mask

CRITERIA = {
    "septq": "SEPTQ score (w - RTN(w))^2 / U_jj^2",
    "magnitude": "magnitude |w|",
    "obs": "w^2 / U_jj^2 (OBS saliency of pruning w)",
    "activation": "activation-weighted |w| * ||x_j||",
}


@dataclass
class ScoreBasis:
    """What a module's scores need from its H besides W: a few vectors per module, so that
    a whole model's fit in memory and a module's scores are recomputed in milliseconds."""

    u: torch.Tensor  # U_jj per column (original order); U = upper Cholesky factor of the damped H^-1
    x_norm: torch.Tensor  # sqrt(H_jj) per column: ||x_j|| up to one constant for the whole matrix
    dead: torch.Tensor  # bool per column: inputs that were always zero (their weights count as 0)
    scale: torch.Tensor  # the RTN grid (rows x groups), fitted as step 4 does
    zero: torch.Tensor


def score_basis(W: torch.Tensor, H: torch.Tensor, cfg: QuantConfig) -> ScoreBasis:
    prep = prepare_hessian(W, H, cfg.percdamp, cfg.act_order)
    scale, zero = _original_grids(prep, cfg)
    u = _unpermute(torch.diag(prep.U)[None, :], prep.perm)[0]
    # H_jj = (2 / n_seq) sum_t x_tj^2
    x_norm = torch.diag(H).float().clamp_min(0).sqrt().to(u.device)
    return ScoreBasis(u, x_norm, prep.dead, scale, zero)


def score_parts(W: torch.Tensor, H: torch.Tensor | None, cfg: QuantConfig,
                basis: ScoreBasis | None = None) -> dict[str, torch.Tensor]:
    """The pieces of the SEPTQ score, each rows x cols (U_jj and ||x_j|| broadcast over rows).

    `rtn_error` = w - RTN(w); `u` = U_jj; `score` = rtn_error^2 / u^2. Column
    quantities are in the original column order also with act-order. Pass the
    module's `basis` (from `score_basis`) to skip the factorization and the grid fit."""
    basis = basis if basis is not None else score_basis(W, H, cfg)
    Wo = W.detach().to(basis.u.device, torch.float32, copy=True)
    Wo[:, basis.dead] = 0
    cols = Wo.shape[1]
    rtn = dequantize(Wo, expand_groups(basis.scale, cols, cfg.group_size),
                     expand_groups(basis.zero, cols, cfg.group_size), 2**cfg.bits - 1)
    u = basis.u[None, :].expand_as(Wo)
    err = Wo - rtn
    return {"weight": Wo, "rtn_error": err, "u": u, "score": err.pow(2) / u.pow(2),
            "x_norm": basis.x_norm[None, :].expand_as(Wo)}


def criteria_scores(parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every criterion of CRITERIA on the same matrix (larger = more important), from `score_parts`."""
    return {
        "septq": parts["score"],
        "magnitude": parts["weight"].abs(),
        "obs": parts["weight"].pow(2) / parts["u"].pow(2),
        "activation": parts["weight"].abs() * parts["x_norm"],
    }


def criteria_masks(scores: dict[str, torch.Tensor], reserve_ratio: float) -> dict[str, torch.Tensor]:
    """The top floor(r * N) elements of each criterion."""
    return {name: select_mask({name: S}, reserve_ratio, "matrix")[name] for name, S in scores.items()}


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a and b| / |a or b| of two boolean masks (1.0 for two empty masks)."""
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def top_reserved(parts: dict[str, torch.Tensor], reserve_ratio: float, n: int = 20) -> list[dict]:
    """The n highest-scoring weights with what their score is made of (from `score_parts`), best first."""
    S = parts["score"]
    k = min(n, reserve_count(S.numel(), reserve_ratio) or n, S.numel())
    values, index = S.flatten().topk(k)
    cols = S.shape[1]
    flat = {name: parts[name].flatten() for name in ("weight", "rtn_error", "u")}
    return [
        {"row": i // cols, "col": i % cols, "weight": float(flat["weight"][i]),
         "rtn_error": float(flat["rtn_error"][i]), "u_jj": float(flat["u"][i]), "score": float(v)}
        for v, i in zip(values.tolist(), index.tolist())
    ]


def max_pool(matrix: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Shrink a matrix to at most rows x cols cells, each the maximum of the entries it covers.

    Pooling by maximum keeps every reserved weight (mask = 1) and every large
    score visible in a heatmap far smaller than the matrix."""
    m = matrix.float()
    r = -(-m.shape[0] // rows)  # ceil: entries per cell along each axis
    c = -(-m.shape[1] // cols)
    pad_r, pad_c = (-m.shape[0]) % r, (-m.shape[1]) % c
    if pad_r or pad_c:
        m = torch.nn.functional.pad(m, (0, pad_c, 0, pad_r), value=float("-inf"))
    return torch.nn.functional.max_pool2d(m[None, None], (r, c))[0, 0]


def concentration(mask: torch.Tensor, top: float = 0.01) -> dict[str, float]:
    """Share of the reserved weights that sit in the top `top` fraction of input channels
    (columns) and of output rows, ranked by their reserved count; `top` itself when spread evenly."""
    total = int(mask.sum())
    out = {}
    for axis, dim in (("columns", 0), ("rows", 1)):
        counts = mask.sum(dim=dim)
        k = max(1, math.ceil(top * counts.numel()))
        out[axis] = float(counts.topk(k).values.sum()) / total if total else 0.0
    return out


@dataclass
class MaskAtlas:
    """Where each mask scope puts the reserved weights of a whole model (Mask page).

    Every dict is keyed by "block.module"; `reserved` and `concentration` by scope first."""

    blocks: int
    modules: list[str]
    numel: dict[str, int]
    score_sum: dict[str, float]  # sum of SEPTQ scores: the first-order output error of RTN on that module
    reserved: dict[str, dict[str, int]]
    concentration: dict[str, dict[str, dict[str, float]]]

    def grid(self, values: dict[str, float]) -> list[list[float]]:
        """values as a blocks x modules table (rows = blocks)."""
        return [[values[f"{b}.{m}"] for m in self.modules] for b in range(self.blocks)]

    def fraction(self, scope: str) -> dict[str, float]:
        return {k: v / self.numel[k] for k, v in self.reserved[scope].items()}


def model_bases(model, H_all: dict[str, torch.Tensor], modules: list[str], cfg: QuantConfig,
                progress=None, cancel=None) -> dict[str, ScoreBasis]:
    """`score_basis` of every module of every block ("block.module" -> basis on CPU)."""
    bases = {}
    blocks = find_blocks(model)
    for b, block in enumerate(blocks):
        if cancel is not None and cancel.is_set():
            raise Cancelled("Scoring was cancelled.")
        layers = dict(block.named_modules())
        for m in modules:
            basis = score_basis(layers[m].weight, H_all[f"{b}.{m}"], cfg)
            bases[f"{b}.{m}"] = ScoreBasis(*(t.cpu() for t in vars(basis).values()))
        if progress is not None:
            progress(b + 1, len(blocks), f"block {b}: scored")
    return bases


def model_scores(model, bases: dict[str, ScoreBasis], cfg: QuantConfig) -> dict[str, torch.Tensor]:
    """SEPTQ scores of every module ("block.module" -> scores on CPU), from `model_bases`."""
    blocks = find_blocks(model)
    scores = {}
    for name, basis in bases.items():
        b, m = name.split(".", 1)
        W = dict(blocks[int(b)].named_modules())[m].weight
        scores[name] = score_parts(W, None, cfg, basis)["score"]
    return scores


def scope_masks(scores: dict[str, torch.Tensor], reserve_ratio: float, scope: str) -> dict[str, torch.Tensor]:
    """Step 6 for a whole model: per matrix, per block ("layer", as `quantize_model` does), or model-wide."""
    if scope != "layer":
        return select_mask(scores, reserve_ratio, scope)
    out: dict[str, torch.Tensor] = {}
    for b in dict.fromkeys(k.split(".", 1)[0] for k in scores):
        out.update(select_mask({k: v for k, v in scores.items() if k.split(".", 1)[0] == b}, reserve_ratio, "layer"))
    return out


def mask_atlas(scores: dict[str, torch.Tensor], modules: list[str], reserve_ratio: float, top: float = 0.01) -> MaskAtlas:
    """Reserved counts and concentration of every module under each scope, from `model_scores`."""
    reserved, conc = {}, {}
    for scope in MASK_SCOPES:
        masks = scope_masks(scores, reserve_ratio, scope)
        reserved[scope] = {k: int(m.sum()) for k, m in masks.items()}
        conc[scope] = {k: concentration(m, top) for k, m in masks.items()}
        del masks
    blocks = len({k.split(".", 1)[0] for k in scores})
    return MaskAtlas(blocks, list(modules), {k: S.numel() for k, S in scores.items()},
                     {k: float(S.double().sum()) for k, S in scores.items()}, reserved, conc)


def mask_stability(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> dict[str, float]:
    """Jaccard overlap, module by module, of two masks of the same model (e.g. two calibrations)."""
    return {k: jaccard(reference[k], other[k]) for k in reference}
