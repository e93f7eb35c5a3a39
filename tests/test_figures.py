"""Figures: titles, axes, fixed colour ranges, reserved weights visible, size bounded."""

from __future__ import annotations

import torch

from septq_core.figures import reserved_per_axis, score_heatmap, score_histogram


def scores_and_mask(rows=1536, cols=576):
    g = torch.Generator().manual_seed(0)
    S = torch.rand(rows, cols, generator=g).pow(8)
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    mask[rows // 2 + 9, cols // 2 + 13] = True  # a lone reserved weight must survive pooling
    mask[5, :10] = True
    return S, mask


def test_heatmap_is_pooled_small_and_keeps_reserved():
    S, mask = scores_and_mask()
    fig = score_heatmap(S, mask, "0.mlp.gate_proj", zrange=(-12.0, 0.0))
    z = fig.data[0].z
    assert z.shape[0] <= 256 and z.shape[1] <= 256
    assert fig.data[0].zmin == -12.0 and fig.data[0].zmax == 0.0
    xs, ys = list(fig.data[1].x), list(fig.data[1].y)
    r_step, c_step = fig.data[0].dy, fig.data[0].dx
    assert (777 // r_step * r_step, 301 // c_step * c_step) in set(zip(ys, xs))  # 1536 // 2 + 9, 576 // 2 + 13
    assert "max-pooled" in fig.layout.title.text
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    assert len(fig.to_json()) < 2_000_000


def test_histogram_counts_every_weight_once():
    S, mask = scores_and_mask(60, 40)
    fig = score_histogram(S, mask, "scores")
    total = sum(sum(trace.y) for trace in fig.data)
    assert total == S.numel()
    assert sum(fig.data[1].y) == int(mask.sum())
    assert fig.layout.xaxis.title.text == "log10 importance score"


def test_reserved_per_axis_counts():
    mask = torch.zeros(20, 12, dtype=torch.bool)
    mask[3, 4] = mask[3, 5] = mask[9, 4] = True
    rows = reserved_per_axis(mask, "row", "per row")
    cols = reserved_per_axis(mask, "column", "per column")
    assert list(rows.data[0].y)[3] == 2 and sum(rows.data[0].y) == 3
    assert list(cols.data[0].y)[4] == 2 and cols.layout.xaxis.title.text == "input channel (column)"


def test_perplexity_vs_bits_one_line_per_method_sorted_by_size():
    from septq_core.figures import perplexity_vs_bits

    rows = [{"label": "GPTQ 3", "method": "gptq", "bits_per_weight": 3.05, "ppl": 40.0},
            {"label": "GPTQ 2", "method": "gptq", "bits_per_weight": 2.05, "ppl": 900.0},
            {"label": "SEPTQ 2", "method": "septq", "bits_per_weight": 2.37, "ppl": 80.0}]
    fig = perplexity_vs_bits(rows, "demo")
    assert [t.name for t in fig.data] == ["GPTQ", "SEPTQ"]
    assert list(fig.data[0].x) == [2.05, 3.05] and list(fig.data[0].y) == [900.0, 40.0]
    assert fig.layout.xaxis.title.text == "bits per weight" and fig.layout.yaxis.type == "log"
