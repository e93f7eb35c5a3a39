"""Score breakdown, other criteria, overlaps and pooling, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from test_solver import correlated_problem, damped, ref_scores

import septq_core as sq
from septq_core.importance import (
    concentration,
    criteria_masks,
    criteria_scores,
    jaccard,
    mask_atlas,
    mask_stability,
    max_pool,
    model_bases,
    model_scores,
    scope_masks,
    score_basis,
    score_parts,
    top_reserved,
)

CFG = sq.QuantConfig(method="septq", bits=3, mse=False, reserve_ratio=0.05)


def test_score_parts_add_up_to_the_reference_score():
    W, H = correlated_problem(rows=5, cols=12, seed=4)
    parts = score_parts(W, H, CFG)
    torch.testing.assert_close(parts["score"].double(), ref_scores(W, H, 3), rtol=1e-4, atol=1e-12)
    torch.testing.assert_close(parts["score"], sq.importance_scores(W, H, CFG))
    Hd = damped(H)
    u2 = torch.tensor([torch.linalg.inv(Hd[j:, j:])[0, 0].item() for j in range(12)])
    torch.testing.assert_close(parts["u"][0].double() ** 2, u2.double(), rtol=1e-4, atol=0)
    torch.testing.assert_close(parts["weight"], W)
    torch.testing.assert_close(parts["rtn_error"].pow(2) / parts["u"].pow(2), parts["score"])


@pytest.mark.parametrize("act_order", [False, True])
def test_parts_from_a_stored_basis_equal_parts_from_H(act_order):
    W, H = correlated_problem(rows=6, cols=16, seed=5)
    H[3, :] = H[:, 3] = 0  # a dead input
    cfg = CFG.replace(act_order=act_order, group_size=8)
    direct = score_parts(W, H, cfg)
    stored = score_parts(W, None, cfg, score_basis(W, H, cfg))
    for name in direct:
        assert torch.equal(direct[name], stored[name]), name
    torch.testing.assert_close(direct["score"], sq.importance_scores(W, H, cfg))
    assert direct["weight"][:, 3].abs().max() == 0


def test_criteria_by_hand():
    W, H = correlated_problem(rows=6, cols=10, seed=2)
    parts = score_parts(W, H, CFG)
    scores = criteria_scores(parts)
    for r in range(6):
        for c in range(10):
            w = W[r, c].item()
            assert scores["magnitude"][r, c].item() == pytest.approx(abs(w))
            assert scores["activation"][r, c].item() == pytest.approx(abs(w) * math.sqrt(H[c, c].item()), rel=1e-5)
            assert scores["obs"][r, c].item() == pytest.approx(w * w / parts["u"][r, c].item() ** 2, rel=1e-5)
    masks = criteria_masks(scores, 0.1)
    assert all(int(m.sum()) == 6 for m in masks.values())
    assert torch.equal(masks["septq"], sq.select_mask({"x": scores["septq"]}, 0.1)["x"])


def test_jaccard_by_hand():
    a = torch.tensor([[True, True, False], [False, True, False]])
    b = torch.tensor([[True, False, False], [False, True, True]])
    assert jaccard(a, b) == pytest.approx(2 / 4)
    assert jaccard(a, a) == 1.0
    empty = torch.zeros(2, 3, dtype=torch.bool)
    assert jaccard(empty, empty) == 1.0 and jaccard(a, empty) == 0.0


def test_top_reserved_is_sorted_and_points_at_the_scores():
    W, H = correlated_problem(rows=8, cols=16, seed=3, heavy=True)
    rows = top_reserved(score_parts(W, H, CFG), CFG.reserve_ratio, n=5)
    S = sq.importance_scores(W, H, CFG)
    assert len(rows) == 5
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert rows[0]["score"] == pytest.approx(S.max().item())
    for r in rows:
        assert r["score"] == pytest.approx(S[r["row"], r["col"]].item())
        assert r["weight"] == pytest.approx(W[r["row"], r["col"]].item())
        assert r["score"] == pytest.approx(r["rtn_error"] ** 2 / r["u_jj"] ** 2, rel=1e-5)


@pytest.mark.parametrize("shape, cells", [((10, 7), (3, 3)), ((12, 12), (4, 6)), ((5, 5), (8, 8))])
def test_max_pool_equals_loops(shape, cells):
    g = torch.Generator().manual_seed(0)
    m = torch.randn(*shape, generator=g)
    pooled = max_pool(m, *cells)
    r, c = math.ceil(shape[0] / cells[0]), math.ceil(shape[1] / cells[1])
    assert pooled.shape == (math.ceil(shape[0] / r), math.ceil(shape[1] / c))
    for i in range(pooled.shape[0]):
        for j in range(pooled.shape[1]):
            assert pooled[i, j].item() == m[i * r : (i + 1) * r, j * c : (j + 1) * c].max().item()


def test_max_pool_keeps_a_lone_reserved_weight():
    mask = torch.zeros(1536, 576, dtype=torch.bool)
    mask[777, 301] = True
    pooled = max_pool(mask, 200, 200)
    assert pooled.sum().item() == 1 and pooled.shape[0] <= 200 and pooled.shape[1] <= 200


# -- whole-model mask atlas (Mask page) ------------------------------------------

def test_concentration_by_hand():
    mask = torch.zeros(100, 200, dtype=torch.bool)
    mask[:10, 7] = True  # ten weights, all in one input channel, one per row
    c = concentration(mask, top=0.01)  # top 2 of 200 columns, top 1 of 100 rows
    assert c == {"columns": 1.0, "rows": 0.1}
    assert concentration(torch.zeros(4, 4, dtype=torch.bool)) == {"columns": 0.0, "rows": 0.0}
    spread = torch.eye(100, dtype=torch.bool)
    assert concentration(spread, top=0.05) == {"columns": pytest.approx(0.05), "rows": pytest.approx(0.05)}


@pytest.fixture(scope="module")
def tiny_scores(tiny_model_dir):
    lm = sq.load_model(str(tiny_model_dir("llama")))
    calib = sq.calibration_windows(lm.tokenizer, "demo", 4, 64, 0)
    cfg = sq.QuantConfig(method="septq", bits=3, reserve_ratio=0.02, calib="demo", nsamples=4, seqlen=64)
    bases = model_bases(lm.model, sq.fp_hessians(lm, calib), lm.module_names, cfg)
    return lm, cfg, model_scores(lm.model, bases, cfg)


def test_model_scope_masks_are_the_ones_a_run_uses(tiny_scores):
    lm, cfg, scores = tiny_scores
    for scope in ("model", "layer"):
        run = sq.quantize_model(lm, cfg.replace(mask_scope=scope))
        masks = scope_masks(scores, cfg.reserve_ratio, scope)
        # model scope ranks full-precision scores in both; a layer-scope run scores block b from the inputs of
        # the already quantized blocks, which are the full-precision ones only for block 0
        names = list(masks) if scope == "model" else [n for n in masks if n.startswith("0.")]
        for name in names:
            assert torch.equal(masks[name], run.masks[name]), (scope, name)


def test_atlas_budgets_add_up(tiny_scores):
    lm, cfg, scores = tiny_scores
    r = cfg.reserve_ratio
    atlas = mask_atlas(scores, lm.module_names, r)
    assert atlas.blocks == 2 and atlas.modules == lm.module_names
    for name, S in scores.items():
        assert atlas.reserved["matrix"][name] == math.floor(r * S.numel())
        assert atlas.score_sum[name] == pytest.approx(float(S.double().sum()))
    for b in range(2):
        names = [n for n in scores if n.startswith(f"{b}.")]
        assert sum(atlas.reserved["layer"][n] for n in names) == math.floor(r * sum(scores[n].numel() for n in names))
    assert sum(atlas.reserved["model"].values()) == math.floor(r * sum(S.numel() for S in scores.values()))
    grid = atlas.grid(atlas.fraction("model"))
    assert len(grid) == 2 and len(grid[0]) == len(lm.module_names)
    assert grid[1][0] == atlas.reserved["model"][f"1.{lm.module_names[0]}"] / scores[f"1.{lm.module_names[0]}"].numel()
    masks = scope_masks(scores, r, "matrix")
    assert atlas.concentration["matrix"]["0.mlp.down_proj"] == concentration(masks["0.mlp.down_proj"])


def test_mask_stability_is_jaccard_per_module(tiny_scores):
    lm, cfg, scores = tiny_scores
    a = scope_masks(scores, 0.05, "matrix")
    b = scope_masks({k: S.flip(0) for k, S in scores.items()}, 0.05, "matrix")
    stab = mask_stability(a, b)
    assert set(stab) == set(scores)
    assert mask_stability(a, a) == {k: 1.0 for k in scores}
    assert stab["1.self_attn.o_proj"] == jaccard(a["1.self_attn.o_proj"], b["1.self_attn.o_proj"]) < 1.0
