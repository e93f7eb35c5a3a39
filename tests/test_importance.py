"""Score breakdown, other criteria, overlaps and pooling, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from test_solver import correlated_problem, damped, ref_scores

import septq_core as sq
from septq_core.importance import criteria_masks, criteria_scores, jaccard, max_pool, score_parts, top_reserved

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


def test_criteria_by_hand():
    W, H = correlated_problem(rows=6, cols=10, seed=2)
    scores = criteria_scores(W, H, CFG)
    parts = score_parts(W, H, CFG)
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
    rows = top_reserved(W, H, CFG, n=5)
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
