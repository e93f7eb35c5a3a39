"""Looking inside the mask: what a score is made of, other criteria, overlaps, pooling.

Everything here works on one matrix W and its H, like `solver`, and is what the
dashboard's Importance and Mask pages draw from.
"""

from __future__ import annotations

import torch

from .config import QuantConfig
from .grid import dequantize, expand_groups
from .solver import _original_grids, _unpermute, prepare_hessian, reserve_count, select_mask

CRITERIA = {
    "septq": "SEPTQ score (w - RTN(w))^2 / U_jj^2",
    "magnitude": "magnitude |w|",
    "obs": "w^2 / U_jj^2 (OBS saliency of pruning w)",
    "activation": "activation-weighted |w| * ||x_j||",
}


def score_parts(W: torch.Tensor, H: torch.Tensor, cfg: QuantConfig) -> dict[str, torch.Tensor]:
    """The pieces of the SEPTQ score, each rows x cols (U_jj and ||x_j|| broadcast over rows).

    `rtn_error` = w - RTN(w); `u` = U_jj; `score` = rtn_error^2 / u^2. Column
    quantities are in the original column order also with act-order."""
    prep = prepare_hessian(W, H, cfg.percdamp, cfg.act_order)
    scale, zero = _original_grids(prep, cfg)
    Wo = _unpermute(prep.W, prep.perm)
    cols = Wo.shape[1]
    rtn = dequantize(Wo, expand_groups(scale, cols, cfg.group_size), expand_groups(zero, cols, cfg.group_size),
                     2**cfg.bits - 1)
    u = _unpermute(torch.diag(prep.U)[None, :], prep.perm).expand_as(Wo)
    # H_jj = (2 / n_seq) sum_t x_tj^2, so sqrt(H_jj) is ||x_j|| up to one constant for the whole matrix.
    x_norm = torch.diag(H).float().clamp_min(0).sqrt().to(Wo.device)[None, :].expand_as(Wo)
    return {"weight": Wo, "rtn_error": Wo - rtn, "u": u, "score": (Wo - rtn).pow(2) / u.pow(2), "x_norm": x_norm}


def criteria_scores(W: torch.Tensor, H: torch.Tensor, cfg: QuantConfig) -> dict[str, torch.Tensor]:
    """Every criterion of CRITERIA on the same matrix (larger = more important)."""
    p = score_parts(W, H, cfg)
    return {
        "septq": p["score"],
        "magnitude": p["weight"].abs(),
        "obs": p["weight"].pow(2) / p["u"].pow(2),
        "activation": p["weight"].abs() * p["x_norm"],
    }


def criteria_masks(scores: dict[str, torch.Tensor], reserve_ratio: float) -> dict[str, torch.Tensor]:
    """The top floor(r * N) elements of each criterion."""
    return {name: select_mask({name: S}, reserve_ratio, "matrix")[name] for name, S in scores.items()}


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a and b| / |a or b| of two boolean masks (1.0 for two empty masks)."""
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def top_reserved(W: torch.Tensor, H: torch.Tensor, cfg: QuantConfig, n: int = 20) -> list[dict]:
    """The n highest-scoring weights with what their score is made of, best first."""
    p = score_parts(W, H, cfg)
    k = min(n, reserve_count(W.numel(), cfg.reserve_ratio) or n, W.numel())
    values, index = p["score"].flatten().topk(k)
    cols = W.shape[1]
    return [
        {"row": i // cols, "col": i % cols, "weight": float(p["weight"].flatten()[i]),
         "rtn_error": float(p["rtn_error"].flatten()[i]), "u_jj": float(p["u"].flatten()[i]), "score": float(v)}
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
