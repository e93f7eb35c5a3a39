"""RTN, GPTQ and SEPTQ on one matrix: ALGORITHM.md "Per matrix", steps 1-8.

Read it beside ALGORITHM.md: `prepare_hessian` is steps 1-3, `importance_scores`
step 5, `select_mask` step 6 (and the shared budgets of the "layer" and
"model" scopes), `quantize_matrix` runs them all and the column sweep of step 7.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .config import QuantConfig
from .grid import codes as grid_codes
from .grid import dequantize, expand_groups, fit_grid, fit_group_grids

MAX_DAMP_RETRIES = 6  # percdamp x10 each time: 0.01 -> 1e4 before the diagonal fallback


class NonFiniteError(ValueError):
    """A weight or Hessian holds NaN or inf."""


@dataclass
class PreparedHessian:
    """Steps 1-3: dead inputs removed, damping applied, U = chol(H^-1) upper."""

    W: torch.Tensor  # float32 copy of W with dead columns zeroed (sweep order)
    H: torch.Tensor  # the damped H the sweep minimises against (sweep order)
    U: torch.Tensor  # upper Cholesky factor of H^-1 (sweep order)
    dead: torch.Tensor  # bool per column (original order)
    perm: torch.Tensor | None  # act-order permutation (sweep column -> original column)
    percdamp: float  # damping actually used (relative to mean diag H)
    damp_retries: int  # how many times damping was raised
    note: str = ""  # what happened when the Hessian was not positive definite


@dataclass
class MatrixResult:
    weight: torch.Tensor  # dequantized, dtype and shape of W; reserved entries full precision
    mask: torch.Tensor  # bool, True = reserved
    scores: torch.Tensor | None  # importance S (None for RTN)
    codes: torch.Tensor  # uint8 grid index of every entry (unused where mask is True)
    scale: torch.Tensor  # rows x n_groups
    zero: torch.Tensor  # rows x n_groups
    loss: float | None  # sum over columns of (w - q)^2 / U_jj^2 (None for RTN without H)
    bits_per_weight: float
    percdamp: float | None = None
    damp_retries: int = 0
    damp_note: str = ""
    dead_columns: int = 0
    seconds: float = 0.0
    row_loss: torch.Tensor | None = None  # each output row's share of `loss`

    @property
    def reserved(self) -> int:
        return int(self.mask.sum())


def _check_finite(t: torch.Tensor, what: str, name: str | None) -> None:
    if not torch.isfinite(t).all():
        where = f" of {name}" if name else ""
        raise NonFiniteError(
            f"The {what}{where} contains NaN or inf; check the model's weights and the calibration data "
            "(a model run in float16 can overflow: try dtype float32 or bfloat16)."
        )


def prepare_hessian(
    W: torch.Tensor, H: torch.Tensor, percdamp: float = 0.01, act_order: bool = False, name: str | None = None
) -> PreparedHessian:
    """Steps 1-3 of ALGORITHM.md on copies of W and H (neither is modified)."""
    rows, cols = W.shape
    if H.shape != (cols, cols):
        raise ValueError(f"H has shape {tuple(H.shape)} but W has {cols} columns: H must be {cols} x {cols}.")
    _check_finite(W, "weight", name)
    _check_finite(H, "Hessian", name)
    W = W.detach().to(torch.float32, copy=True)
    H = H.detach().to(device=W.device, dtype=torch.float32, copy=True)

    # 1. Dead inputs: a column that never saw a non-zero input.
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    perm = None
    if act_order:  # largest diag(H) first
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]

    # 2-3. Damping, then U = upper Cholesky factor of H^-1; raise damping until it works.
    mean_diag = torch.diag(H).mean().abs().clamp_min(1e-12)
    eye = torch.eye(cols, device=H.device)
    damp, note = float(percdamp), ""
    for retry in range(MAX_DAMP_RETRIES + 1):
        Hd = H + damp * mean_diag * eye
        U = _upper_chol_of_inverse(Hd)
        if U is not None:
            if retry:
                note = f"H was not positive definite: damping raised to {damp:g} x mean(diag H) after {retry} retries"
            return PreparedHessian(W, Hd, U, dead, perm, damp, retry, note)
        damp *= 10
    # Last resort: keep only the diagonal (always positive definite after step 1).
    Hd = torch.diag(torch.diag(H).abs().clamp_min(1e-12) * (1 + percdamp))
    U = _upper_chol_of_inverse(Hd)
    note = "H was not positive definite even with heavy damping: used its diagonal only"
    return PreparedHessian(W, Hd, U, dead, perm, float("inf"), MAX_DAMP_RETRIES + 1, note)


def _upper_chol_of_inverse(H: torch.Tensor) -> torch.Tensor | None:
    L, info = torch.linalg.cholesky_ex(H)
    if info.item() != 0:
        return None
    Hinv = torch.cholesky_inverse(L)
    U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
    if info.item() != 0 or not torch.isfinite(U).all():
        return None
    return U


def _scores_from_prepared(prep: PreparedHessian, cfg: QuantConfig, scale, zero) -> torch.Tensor:
    """Step 5 in sweep order: S = (W - RTN(W))^2 / U_jj^2."""
    maxq = 2**cfg.bits - 1
    cols = prep.W.shape[1]
    s = expand_groups(scale, cols, cfg.group_size)
    z = expand_groups(zero, cols, cfg.group_size)
    if prep.perm is not None:
        s, z = s[:, prep.perm], z[:, prep.perm]
    rtn_error = prep.W - dequantize(prep.W, s, z, maxq)
    return rtn_error.pow(2) / torch.diag(prep.U).pow(2)[None, :]


def _unpermute(t: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    if perm is None:
        return t
    out = torch.empty_like(t)
    out[:, perm] = t
    return out


def _original_grids(prep: PreparedHessian, cfg: QuantConfig):
    """Grids fitted on the (dead-zeroed) original W, in original column order."""
    W = _unpermute(prep.W, prep.perm)
    return fit_group_grids(W, cfg.bits, cfg.group_size, cfg.sym, cfg.mse)


def importance_scores(W: torch.Tensor, H: torch.Tensor, cfg: QuantConfig, name: str | None = None) -> torch.Tensor:
    """SEPTQ importance of every element of W (same shape, float32, W's device)."""
    prep = prepare_hessian(W, H, cfg.percdamp, cfg.act_order, name)
    scale, zero = _original_grids(prep, cfg)
    return _unpermute(_scores_from_prepared(prep, cfg, scale, zero), prep.perm)


def reserve_count(numel: int, reserve_ratio: float) -> int:
    return int(math.floor(reserve_ratio * numel))


def select_mask(scores_by_name: dict[str, torch.Tensor], reserve_ratio: float, scope: str = "matrix"):
    """Step 6: reserve the elements with the largest scores.

    scope "matrix": floor(r * numel) per matrix. "layer" / "model": one budget,
    floor(r * total numel), shared by all the given matrices (the caller passes
    the modules of one block, or of the whole model). Returns {name: bool mask}.
    """
    if scope not in ("matrix", "layer", "model"):
        raise ValueError(f"Unknown mask scope {scope!r}: choose matrix, layer or model.")
    if scope == "matrix":
        return {name: _top_mask(S.flatten(), reserve_count(S.numel(), reserve_ratio)).view(S.shape)
                for name, S in scores_by_name.items()}
    names = list(scores_by_name)
    device = scores_by_name[names[0]].device
    flat = torch.cat([scores_by_name[n].flatten().to(device, torch.float32) for n in names])
    mask = _top_mask(flat, reserve_count(flat.numel(), reserve_ratio))
    out, start = {}, 0
    for n in names:
        S = scores_by_name[n]
        out[n] = mask[start : start + S.numel()].view(S.shape).to(S.device)
        start += S.numel()
    return out


def _top_mask(flat: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        mask[torch.topk(flat, k, sorted=False).indices] = True
    return mask


def bits_per_weight(bits: int, group_size: int | None, cols: int, reserved_fraction: float) -> float:
    """ALGORITHM.md "Storage cost": bits + grid overhead + 32 bits per reserved weight."""
    n_groups = 1 if group_size is None else math.ceil(cols / group_size)
    return bits + 2 * 16 * n_groups / cols + 32 * reserved_fraction


def quantize_matrix(
    W: torch.Tensor,
    H: torch.Tensor | None,
    cfg: QuantConfig,
    mask: torch.Tensor | None = None,
    name: str | None = None,
    observe=None,
) -> MatrixResult:
    """Quantize one matrix W (rows x cols) given its raw accumulated H (cols x cols).

    `mask` overrides step 6 (used by the shared "layer" and "model" budgets).
    `observe(end, Q, W, row_loss)` is called after each block of the sweep (see
    `_sweep`; the Learn page uses blocksize 1 to see every column). Neither W nor
    H is modified.
    """
    t0 = time.perf_counter()
    if W.ndim != 2:
        raise ValueError(f"W must be a matrix (rows x cols); got shape {tuple(W.shape)}.")
    rows, cols = W.shape
    maxq = 2**cfg.bits - 1

    if cfg.method == "rtn" and H is None:
        _check_finite(W, "weight", name)
        Wf = W.detach().float()
        scale, zero = fit_group_grids(Wf, cfg.bits, cfg.group_size, cfg.sym, cfg.mse)
        s, z = expand_groups(scale, cols, cfg.group_size), expand_groups(zero, cols, cfg.group_size)
        return MatrixResult(
            weight=dequantize(Wf, s, z, maxq).to(W.dtype), mask=torch.zeros_like(Wf, dtype=torch.bool),
            scores=None, codes=grid_codes(Wf, s, z, maxq).to(torch.uint8), scale=scale, zero=zero, loss=None,
            bits_per_weight=bits_per_weight(cfg.bits, cfg.group_size, cols, 0.0),
            seconds=time.perf_counter() - t0,
        )
    if H is None:
        raise ValueError(f"{cfg.method.upper()} needs the Hessian H of the layer's inputs; only RTN works without it.")

    prep = prepare_hessian(W, H, cfg.percdamp, cfg.act_order, name)
    scale, zero = _original_grids(prep, cfg)  # step 4 on the original W
    perm = prep.perm

    if cfg.method == "rtn":
        s, z = expand_groups(scale, cols, cfg.group_size), expand_groups(zero, cols, cfg.group_size)
        Wo = _unpermute(prep.W, perm)
        Q = dequantize(Wo, s, z, maxq)
        M = torch.zeros_like(Q, dtype=torch.bool)
        S = None
        D = (Wo - Q) if perm is None else (Wo - Q)[:, perm]
        row_loss = torch.einsum("ij,jk,ik->i", D, prep.H, D)
    else:
        S = _scores_from_prepared(prep, cfg, scale, zero)  # sweep order
        if cfg.method == "gptq":
            M = torch.zeros_like(S, dtype=torch.bool)
        elif mask is not None:
            if mask.shape != W.shape:
                raise ValueError(f"mask has shape {tuple(mask.shape)}, W has {tuple(W.shape)}.")
            M = mask.to(S.device, torch.bool)
            M = M if perm is None else M[:, perm]
        else:
            M = _top_mask(S.flatten(), reserve_count(S.numel(), cfg.reserve_ratio)).view(S.shape)
        Q, row_loss = _sweep(prep, M, scale, zero, cfg, observe)
        Q, M, S = (_unpermute(t, perm) for t in (Q, M, S))

    Q[:, prep.dead] = 0
    # Integer codes, recovered from Q (Q = scale * (code - zero) exactly off the mask).
    s, z = expand_groups(scale, cols, cfg.group_size), expand_groups(zero, cols, cfg.group_size)
    C = torch.clamp(torch.round(Q / s) + z, 0, maxq)
    return MatrixResult(
        weight=Q.to(W.dtype), mask=M, scores=S, codes=C.to(torch.uint8), scale=scale, zero=zero,
        loss=float(row_loss.sum()),
        bits_per_weight=bits_per_weight(cfg.bits, cfg.group_size, cols, float(M.sum()) / (rows * cols)),
        percdamp=prep.percdamp, damp_retries=prep.damp_retries, damp_note=prep.note,
        dead_columns=int(prep.dead.sum()), seconds=time.perf_counter() - t0, row_loss=row_loss,
    )


def _sweep(prep: PreparedHessian, M: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, cfg: QuantConfig,
           observe=None):
    """Step 7: the GPTQ column sweep, reserved entries kept and sending no error.

    All tensors are in sweep order. Returns (Q, loss of each row). After each
    block, `observe(end, Q, W, row_loss)` may look (not write): columns < end of
    Q are final, columns >= end of W hold the weights updated so far."""
    W, U = prep.W.clone(), prep.U
    rows, cols = W.shape
    maxq = 2**cfg.bits - 1
    gs, bs = cfg.group_size, cfg.blocksize
    # Static grids per column (groups fixed before the sweep) with act-order;
    # otherwise a group's grid is refitted on the updated weights at its first column.
    static = gs is None or prep.perm is not None
    if static:
        col_scale = expand_groups(scale, cols, gs)
        col_zero = expand_groups(zero, cols, gs)
        if prep.perm is not None:
            col_scale, col_zero = col_scale[:, prep.perm], col_zero[:, prep.perm]
        col_scale, col_zero = col_scale.t().contiguous(), col_zero.t().contiguous()  # one row per column
    reserved_cols = M.any(0).tolist()

    Q = torch.empty_like(W)
    row_loss = torch.zeros(rows, device=W.device)
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        W1, U1, M1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2], M[:, i1:i2]
        Err1 = torch.empty_like(W1)
        for i in range(i2 - i1):
            j = i1 + i
            w = W1[:, i]
            if static:
                s, z = col_scale[j], col_zero[j]
            elif j % gs == 0:  # refit on the current (error-updated) weights of the group
                later = W[:, i2 : j + gs] - Err1[:, :i] @ U[i1:j, i2 : j + gs]  # pending lazy updates
                s, z = fit_grid(torch.cat([W1[:, i : i + gs], later], 1), cfg.bits, cfg.sym, cfg.mse)
                scale[:, j // gs], zero[:, j // gs] = s[:, 0], z[:, 0]
                s, z = s[:, 0], z[:, 0]
            q = torch.div(w, s).round_().add_(z).clamp_(0, maxq).sub_(z).mul_(s)
            if reserved_cols[j]:
                q = torch.where(M1[:, i], w, q)
            err = Err1[:, i]
            torch.sub(w, q, out=err).div_(U1[i, i])
            W1[:, i:].addr_(err, U1[i, i:], alpha=-1)
            w.copy_(q)  # column i of W1 now holds its final value
        Q[:, i1:i2] = W1
        row_loss += Err1.pow(2).sum(1)
        W[:, i2:].addmm_(Err1, U[i1:i2, i2:], alpha=-1)  # lazy batch update of all later columns
        if observe is not None:
            observe(i2, Q, W, row_loss)
    return Q, row_loss
