"""The one-matrix solver against slow, obvious references written here.

The references use float64, an explicit inverse of H from which one column is
removed at a time (no Cholesky, no lazy batch), and a grid computed with
Python loops from the formulas of ALGORITHM.md step 4.
"""

from __future__ import annotations

import math

import pytest
import torch

import septq_core as sq

# -- inputs -------------------------------------------------------------------

def correlated_problem(rows=24, cols=48, n=400, seed=0, heavy=False):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) / math.sqrt(cols) + torch.eye(cols)
    X = torch.randn(n, cols, generator=g) @ mix
    X[:, 3] *= 6  # one outlier input channel
    H = 2 * X.t() @ X / n
    if heavy:  # Student-t weights: a few large entries that rounding hurts most
        W = torch.distributions.StudentT(2.0).sample((rows, cols)) * 0.1
    else:
        W = torch.randn(rows, cols, generator=g) * 0.1
    return W, H


# -- slow references ----------------------------------------------------------

def ref_grid(x: list[float], bits: int, sym: bool, mse: bool):
    """Grid of one row, by the formulas of ALGORITHM.md step 4, in plain Python."""
    maxq = 2**bits - 1
    xmin, xmax = min(min(x), 0.0), max(max(x), 0.0)
    if sym:
        xmax = max(abs(xmin), xmax)
        if xmin < 0:
            xmin = -xmax
    if xmin == 0 and xmax == 0:
        xmin, xmax = -1.0, 1.0

    def params(lo, hi):
        scale = (hi - lo) / maxq
        zero = (maxq + 1) / 2 if sym else round_half_even(-lo / scale)
        return scale, zero

    scale, zero = params(xmin, xmax)
    if mse:
        best = math.inf
        for i in range(80):
            p = 1 - i / 100
            s, z = params(p * xmin, p * xmax)
            err = sum(abs(ref_q(v, s, z, maxq) - v) ** 2.4 for v in x)
            if err < best:
                best, scale, zero = err, s, z
    return scale, zero


def round_half_even(v: float) -> float:
    return float(round(v))  # Python rounds half to even, as torch.round does


def ref_q(v, scale, zero, maxq):
    q = min(max(round_half_even(v / scale) + zero, 0), maxq)
    return scale * (q - zero)


def damped(H, percdamp=0.01):
    H = H.double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    return H + percdamp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)


def ref_sweep(W, H, bits, group_size=None, sym=False, mse=False, mask=None, percdamp=0.01):
    """Column by column with an explicit inverse; column j is removed after it is quantized."""
    W = W.double().clone()
    rows, cols = W.shape
    Hinv = torch.linalg.inv(damped(H, percdamp))
    mask = torch.zeros(rows, cols, dtype=torch.bool) if mask is None else mask
    maxq = 2**bits - 1
    Q = torch.zeros_like(W)
    loss = 0.0
    grids = None
    if group_size is None:
        grids = [ref_grid(W[r].tolist(), bits, sym, mse) for r in range(rows)]
    for j in range(cols):
        if group_size is not None and j % group_size == 0:
            grids = [ref_grid(W[r, j : j + group_size].tolist(), bits, sym, mse) for r in range(rows)]
        d = Hinv[j, j]
        for r in range(rows):
            w = W[r, j].item()
            Q[r, j] = w if mask[r, j] else ref_q(w, *grids[r], maxq)
        err = (W[:, j] - Q[:, j]) / d
        loss += float((err**2).sum() * d)  # (w - q)^2 / Hinv_jj
        W[:, j:] -= err[:, None] * Hinv[j, j:][None, :]
        Hinv = Hinv - Hinv[:, j : j + 1] @ Hinv[j : j + 1, :] / d  # remove column j
    return Q, loss


def ref_scores(W, H, bits, sym=False, mse=False, percdamp=0.01):
    """S = (w - RTN(w))^2 / U_jj^2, with U_jj^2 = [H_{j:,j:}^-1]_00 (the inverse of the trailing block)."""
    Hd = damped(H, percdamp)
    rows, cols = W.shape
    maxq = 2**bits - 1
    S = torch.zeros(rows, cols, dtype=torch.float64)
    for j in range(cols):
        u2 = torch.linalg.inv(Hd[j:, j:])[0, 0]
        for r in range(rows):
            scale, zero = ref_grid(W[r].tolist(), bits, sym, mse)
            w = W[r, j].item()
            S[r, j] = (w - ref_q(w, scale, zero, maxq)) ** 2 / u2
    return S


def cfg(**kw):
    return sq.QuantConfig(**{"mse": False, **kw})


# -- grid / RTN ---------------------------------------------------------------

@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("mse", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_rtn_equals_hand_grid(bits, sym, mse):
    W, _ = correlated_problem(rows=6, cols=20, seed=bits)
    W[2] = W[2].abs()  # a row with no negative entry: the range must still contain 0
    W[4] = 0  # an all-zero row
    res = sq.quantize_matrix(W, None, cfg(method="rtn", bits=bits, sym=sym, mse=mse))
    maxq = 2**bits - 1
    for r in range(W.shape[0]):
        scale, zero = ref_grid(W[r].tolist(), bits, sym, mse)
        expected = [ref_q(v, scale, zero, maxq) for v in W[r].tolist()]
        assert res.weight[r].tolist() == pytest.approx(expected, abs=1e-6)
        assert res.scale[r, 0].item() == pytest.approx(scale, rel=1e-5)
        if r != 4:  # the all-zero row's zero sits on a .5 tie; any grid is exact there
            assert res.zero[r, 0].item() == zero
    assert res.scores is None and not res.mask.any()
    # at most 2^bits distinct values per row, and codes that reproduce the weights
    for r in range(W.shape[0]):
        assert len(set(res.weight[r].tolist())) <= 2**bits
    rebuilt = res.scale * (res.codes.float() - res.zero)
    torch.testing.assert_close(rebuilt, res.weight, rtol=0, atol=1e-6)


def test_rtn_groups_equal_per_group_hand_grid():
    W, _ = correlated_problem(rows=4, cols=21, seed=5)
    res = sq.quantize_matrix(W, None, cfg(method="rtn", bits=3, group_size=8))
    assert res.scale.shape == (4, 3)  # groups of 8, 8 and a last shorter group of 5
    for r in range(4):
        for start in range(0, 21, 8):
            chunk = W[r, start : start + 8].tolist()
            scale, zero = ref_grid(chunk, 3, False, False)
            assert res.weight[r, start : start + 8].tolist() == pytest.approx([ref_q(v, scale, zero, 7) for v in chunk], abs=1e-6)


# -- GPTQ sweep ---------------------------------------------------------------

@pytest.mark.parametrize("blocksize", [1, 7, 16, 128])
@pytest.mark.parametrize("group_size", [None, 16])
@pytest.mark.parametrize("mse", [False, True])
def test_gptq_sweep_equals_explicit_inverse_loop(blocksize, group_size, mse):
    W, H = correlated_problem(rows=8, cols=40, seed=1)
    res = sq.quantize_matrix(W, H, cfg(method="gptq", bits=3, blocksize=blocksize, group_size=group_size, mse=mse))
    Q, loss = ref_sweep(W, H, 3, group_size=group_size, mse=mse)
    torch.testing.assert_close(res.weight.double(), Q, rtol=0, atol=2e-5)
    assert res.loss == pytest.approx(loss, rel=1e-4)
    assert not res.mask.any()


@pytest.mark.parametrize("method", ["gptq", "septq", "rtn"])
@pytest.mark.parametrize("group_size", [None, 16])
def test_loss_is_output_error_under_damped_H(method, group_size):
    W, H = correlated_problem(seed=2)
    res = sq.quantize_matrix(W, H, cfg(method=method, bits=2, group_size=group_size, reserve_ratio=0.03, blocksize=16))
    D = (W - res.weight).double()
    expected = torch.einsum("ij,jk,ik->", D, damped(H), D).item()
    assert res.loss == pytest.approx(expected, rel=1e-4)


# -- SEPTQ --------------------------------------------------------------------

def test_septq_with_zero_reserve_is_gptq():
    W, H = correlated_problem(seed=3)
    g = sq.quantize_matrix(W, H, sq.QuantConfig(method="gptq", bits=3))
    s = sq.quantize_matrix(W, H, sq.QuantConfig(method="septq", bits=3, reserve_ratio=0.0))
    assert torch.equal(g.weight, s.weight) and g.loss == s.loss
    assert not s.mask.any()


def test_scores_equal_reference():
    W, H = correlated_problem(rows=5, cols=12, seed=4)
    S = sq.importance_scores(W, H, cfg(bits=3))
    torch.testing.assert_close(S.double(), ref_scores(W, H, 3), rtol=1e-4, atol=1e-12)
    res = sq.quantize_matrix(W, H, cfg(method="septq", bits=3, reserve_ratio=0.1))
    torch.testing.assert_close(res.scores, S)


@pytest.mark.parametrize("ratio", [0.01, 0.05, 0.2])
@pytest.mark.parametrize("mse", [False, True])
def test_septq_mask_is_top_scores_and_sweep_matches_reference(ratio, mse):
    W, H = correlated_problem(rows=10, cols=30, seed=6, heavy=True)
    res = sq.quantize_matrix(W, H, cfg(method="septq", bits=2, reserve_ratio=ratio, mse=mse, blocksize=8))
    k = math.floor(ratio * W.numel())
    assert int(res.mask.sum()) == k
    S = ref_scores(W, H, 2, mse=mse).flatten()
    top = set(torch.argsort(S, descending=True)[:k].tolist())
    assert set(res.mask.flatten().nonzero().flatten().tolist()) == top
    Q, loss = ref_sweep(W, H, 2, mse=mse, mask=res.mask)
    # reserved entries hold the reference's error-updated values, not the original ones
    torch.testing.assert_close(res.weight.double(), Q, rtol=0, atol=2e-5)
    assert not torch.allclose(res.weight[res.mask], W[res.mask])
    assert res.loss == pytest.approx(loss, rel=1e-4)


def test_septq_loss_below_gptq_on_heavy_tailed_weights():
    for seed in range(3):
        W, H = correlated_problem(seed=seed, heavy=True)
        for bits in (2, 3, 4):
            g = sq.quantize_matrix(W, H, sq.QuantConfig(method="gptq", bits=bits))
            s = sq.quantize_matrix(W, H, sq.QuantConfig(method="septq", bits=bits, reserve_ratio=0.01))
            assert s.loss < g.loss


def test_bits_per_weight():
    W, H = correlated_problem(rows=16, cols=64)
    res = sq.quantize_matrix(W, H, sq.QuantConfig(method="septq", bits=2, reserve_ratio=0.05))
    k = math.floor(0.05 * 16 * 64)
    assert res.bits_per_weight == pytest.approx(2 + 32 / 64 + 32 * k / (16 * 64))
    res = sq.quantize_matrix(W, H, sq.QuantConfig(method="gptq", bits=4, group_size=32))
    assert res.bits_per_weight == pytest.approx(4 + 2 * 32 / 64)


def test_act_order_static_groups():
    W, H = correlated_problem(rows=8, cols=32, seed=7)
    plain = sq.quantize_matrix(W, H, cfg(method="gptq", bits=3, group_size=8))
    ordered = sq.quantize_matrix(W, H, cfg(method="gptq", bits=3, group_size=8, act_order=True))
    # static groups: every contiguous group of 8 original columns uses one grid per row
    for g in range(4):
        block = ordered.weight[:, g * 8 : (g + 1) * 8]
        scale, zero = ordered.scale[:, g : g + 1], ordered.zero[:, g : g + 1]
        codes = torch.round(block / scale + zero)
        torch.testing.assert_close(scale * (codes - zero), block, rtol=0, atol=1e-5)
    D = (W - ordered.weight).double()
    assert ordered.loss == pytest.approx(torch.einsum("ij,jk,ik->", D, damped(H), D).item(), rel=1e-4)
    assert not torch.equal(plain.weight, ordered.weight)


# -- masks over several matrices ----------------------------------------------

def test_select_mask_scopes():
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(10, 10, generator=g), "b": torch.rand(5, 20, generator=g) * 3}
    per = sq.select_mask(scores, 0.1, "matrix")
    assert int(per["a"].sum()) == 10 and int(per["b"].sum()) == 10
    joint = sq.select_mask(scores, 0.1, "layer")
    assert int(joint["a"].sum()) + int(joint["b"].sum()) == 20
    everything = torch.cat([scores["a"].flatten(), scores["b"].flatten()])
    threshold = torch.sort(everything, descending=True).values[19]
    for name in scores:
        assert torch.equal(joint[name], scores[name] >= threshold)
    assert int(joint["b"].sum()) > int(joint["a"].sum())  # the budget follows the larger scores


# -- ugly cases ---------------------------------------------------------------

def test_dead_columns():
    W, H = correlated_problem(rows=6, cols=16)
    H[:, 5] = 0
    H[5, :] = 0
    res = sq.quantize_matrix(W, H, sq.QuantConfig(method="septq", bits=3, reserve_ratio=0.05))
    assert res.dead_columns == 1
    assert torch.all(res.weight[:, 5] == 0) and not res.mask[:, 5].any()
    assert torch.isfinite(res.weight).all()
    assert W[0, 5] != 0 and H[5, 5] == 0  # inputs untouched


def test_singular_hessian_raises_damping_and_stays_finite():
    W, _ = correlated_problem(rows=6, cols=16)
    v = torch.randn(16, 1)
    H = -(v @ v.t())  # negative semi-definite: the usual damping cannot fix it
    res = sq.quantize_matrix(W, H, sq.QuantConfig(method="septq", bits=3))
    assert res.damp_retries > 0 and res.damp_note
    assert torch.isfinite(res.weight).all() and math.isfinite(res.loss)

    H2 = v @ v.t()  # rank one, positive semi-definite: default damping suffices
    res2 = sq.quantize_matrix(W, H2, sq.QuantConfig(method="gptq", bits=3))
    assert res2.damp_retries == 0 and torch.isfinite(res2.weight).all()


def test_non_finite_inputs_name_the_module():
    W, H = correlated_problem(rows=4, cols=8)
    W_bad = W.clone()
    W_bad[1, 1] = float("nan")
    with pytest.raises(sq.NonFiniteError, match="3.mlp.up_proj"):
        sq.quantize_matrix(W_bad, H, sq.QuantConfig(method="gptq"), name="3.mlp.up_proj")
    H_bad = H.clone()
    H_bad[0, 0] = float("inf")
    with pytest.raises(sq.NonFiniteError, match="Hessian"):
        sq.quantize_matrix(W, H_bad, sq.QuantConfig(method="septq"))


def test_inputs_are_not_modified():
    W, H = correlated_problem()
    W0, H0 = W.clone(), H.clone()
    sq.quantize_matrix(W, H, sq.QuantConfig(method="septq", bits=2, act_order=True, group_size=16))
    assert torch.equal(W, W0) and torch.equal(H, H0)


def test_dtype_and_shape_kept():
    W, H = correlated_problem()
    res = sq.quantize_matrix(W.half(), H, sq.QuantConfig(method="septq", bits=4))
    assert res.weight.dtype == torch.float16 and res.weight.shape == W.shape
    with pytest.raises(ValueError, match="must be"):
        sq.quantize_matrix(W, H[:4, :4], sq.QuantConfig())


@pytest.mark.parametrize(
    "field, value",
    [("bits", 1), ("bits", 9), ("method", "awq"), ("reserve_ratio", 0.6), ("reserve_ratio", -0.1),
     ("group_size", 0), ("mask_scope", "row"), ("percdamp", 0), ("blocksize", 0), ("nsamples", 0)],
)
def test_config_out_of_range(field, value):
    with pytest.raises(sq.ConfigError, match=f"QuantConfig.{field}"):
        sq.QuantConfig(**{field: value})


def test_config_presets_and_json_round_trip():
    paper = sq.QuantConfig.preset("paper")
    assert (paper.nsamples, paper.seqlen, paper.calib, paper.reserve_ratio) == (128, 2048, "c4", 0.01)
    assert paper.mse and not paper.sym and not paper.act_order and paper.group_size is None
    assert paper.blocksize == 128 and paper.percdamp == 0.01 and paper.true_sequential
    preview = sq.QuantConfig.preset("preview", bits=2)
    assert preview.bits == 2 and preview.nsamples * preview.seqlen <= 16 * 512
    assert sq.QuantConfig.from_json(preview.to_json()) == preview
    with pytest.raises(sq.ConfigError, match="Unknown preset"):
        sq.QuantConfig.preset("fast")
    with pytest.raises(sq.ConfigError, match="Unknown QuantConfig field"):
        sq.QuantConfig.from_dict({"bitz": 3})
