"""Plotly figures built by pure functions from data (no Streamlit here).

Every figure has a title, axis names with units, and stays small: matrices are
max-pooled to at most MAX_CELLS x MAX_CELLS before they are drawn.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from .importance import max_pool

MAX_CELLS = 256
RESERVED_COLOR = "#d62728"


def log_range(scores: torch.Tensor, low: float = 0.01) -> tuple[float, float]:
    """A colour range for log10 scores: from their `low` quantile (of the non-zero ones) to their maximum.

    Weights that sit exactly on the grid score 0 (log10 = -inf); a range down to
    them would spend the whole colour scale on a few cells."""
    flat = scores.flatten().float()
    flat = flat[flat > 0]
    if flat.numel() == 0:
        return (-1.0, 0.0)
    if flat.numel() > 1_000_000:  # quantile() has a size limit; every k-th value estimates it well
        flat = flat[:: flat.numel() // 1_000_000 + 1]
    logs = flat.log10()
    lo, hi = float(torch.quantile(logs, low)), float(logs.max())
    return (lo, hi) if hi > lo else (lo - 1, hi)


def score_heatmap(scores: torch.Tensor, mask: torch.Tensor | None, title: str,
                  zrange: tuple[float, float] | None = None, cells: int = MAX_CELLS,
                  origin: tuple[int, int] = (0, 0), colorbar: str = "log10 score") -> go.Figure:
    """log10 importance scores of a matrix (max-pooled), reserved weights overlaid as dots.

    `zrange` fixes the colour scale so that panels compared side by side share it;
    `origin` is the (row, column) of scores[0, 0] in the full matrix (a zoom window)."""
    rows, cols = scores.shape
    pooled = max_pool(scores.clamp_min(1e-30).log10(), cells, cells)
    r_step, c_step = -(-rows // cells), -(-cols // cells)
    fig = go.Figure(go.Heatmap(
        z=pooled.cpu().numpy(), x0=origin[1], dx=c_step, y0=origin[0], dy=r_step, colorscale="Viridis",
        zmin=zrange[0] if zrange else None, zmax=zrange[1] if zrange else None,
        colorbar={"title": colorbar},
        hovertemplate=f"rows %{{y}}+, cols %{{x}}+<br>max {colorbar} %{{z:.2f}}<extra></extra>",
    ))
    if mask is not None and mask.any():
        fig.add_trace(_reserved_layer(mask, cells, origin, r_step, c_step))
    pooled_note = f" (max-pooled {r_step}x{c_step})" if r_step > 1 or c_step > 1 else ""
    fig.update_layout(title=f"{title}{pooled_note}", xaxis_title="input channel (column)",
                      yaxis_title="output channel (row)", yaxis_autorange="reversed",
                      legend={"orientation": "h", "y": -0.15}, margin={"t": 50, "l": 60, "r": 20, "b": 60})
    return fig


def _reserved_layer(mask: torch.Tensor, cells: int, origin: tuple[int, int], r_step: int, c_step: int) -> go.Heatmap:
    """The mask, max-pooled like the scores, as a heatmap that is transparent where nothing is reserved
    (one byte per cell: far lighter to send and draw than a marker per reserved weight)."""
    reserved = (max_pool(mask, cells, cells) > 0).to(torch.uint8).cpu().numpy()
    return go.Heatmap(z=reserved, x0=origin[1], dx=c_step, y0=origin[0], dy=r_step, zmin=0, zmax=1,
                      colorscale=[[0, "rgba(0,0,0,0)"], [1, RESERVED_COLOR]], showscale=False, name="reserved",
                      showlegend=True, hoverinfo="skip")


def score_histogram(scores: torch.Tensor, mask: torch.Tensor | None, title: str, bins: int = 60) -> go.Figure:
    """Histogram of log10 scores, reserved and kept weights in two colours."""
    logs = scores.clamp_min(1e-30).log10().flatten()
    lo, hi = float(logs.min()), float(logs.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    fig = go.Figure()
    groups = [("quantized", ~mask.flatten(), "#1f77b4"), ("reserved", mask.flatten(), RESERVED_COLOR)] \
        if mask is not None else [("all", torch.ones_like(logs, dtype=torch.bool), "#1f77b4")]
    for name, sel, color in groups:
        counts, _ = np.histogram(logs[sel].cpu().numpy(), bins=edges)
        fig.add_trace(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, name=name, marker_color=color,
                             width=edges[1] - edges[0]))
    fig.update_layout(title=title, barmode="stack", xaxis_title="log10 importance score",
                      yaxis_title="weights (count)", yaxis_type="log", margin={"t": 50, "l": 60, "r": 20, "b": 50})
    return fig


def reserved_per_axis(mask: torch.Tensor, axis: str, title: str) -> go.Figure:
    """Reserved weights per output row (axis="row") or per input channel (axis="column")."""
    counts = mask.sum(dim=1 if axis == "row" else 0).cpu().numpy()
    # one filled step line, not a bar per channel: thousands of bars are slow to draw in a browser
    fig = go.Figure(go.Scatter(x=np.arange(len(counts)), y=counts, mode="lines", line_shape="hvh",
                               fill="tozeroy", line={"color": RESERVED_COLOR, "width": 1},
                               hovertemplate="channel %{x}: %{y} reserved<extra></extra>"))
    label = "output channel (row)" if axis == "row" else "input channel (column)"
    fig.update_layout(title=title, xaxis_title=label, yaxis_title="reserved weights (count)",
                      margin={"t": 50, "l": 60, "r": 20, "b": 50})
    return fig


def perplexity_vs_bits(rows: list[dict], corpus: str) -> go.Figure:
    """Perplexity against bits per weight, one point per run (rows: label, method, bits_per_weight, ppl).

    The size-fair comparison: a method that reserves weights in full precision
    pays for them in bits, so compare points at the same x, not the same `bits`."""
    fig = go.Figure()
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = sorted((r for r in rows if r["method"] == method), key=lambda r: r["bits_per_weight"])
        fig.add_trace(go.Scatter(x=[r["bits_per_weight"] for r in pts], y=[r["ppl"] for r in pts],
                                 mode="lines+markers", name=method.upper() if method != "fp" else "FP",
                                 text=[r["label"] for r in pts],
                                 hovertemplate="%{text}<br>%{x:.3f} bits/weight<br>perplexity %{y:.3f}<extra></extra>"))
    fig.update_layout(title=f"Perplexity on {corpus} against bits per weight", xaxis_title="bits per weight",
                      yaxis_title="perplexity (log scale)", yaxis_type="log", margin={"t": 50, "l": 60, "r": 20, "b": 50})
    return fig


def sweep_heatmap(values: torch.Tensor, mask: torch.Tensor | None, column: int, title: str, zmax: float,
                  colorbar: str) -> go.Figure:
    """One state of the column sweep on a small matrix (Learn page), drawn cell by cell.

    Diverging colours on the fixed range [-zmax, zmax] (the same for every step
    and both methods); reserved weights outlined; the column just quantized framed."""
    fig = go.Figure(go.Heatmap(
        z=values.cpu().numpy(), colorscale="RdBu_r", zmin=-zmax, zmax=zmax, colorbar={"title": colorbar},
        hovertemplate="row %{y}, column %{x}<br>%{z:.4f}<extra></extra>",
    ))
    if mask is not None and mask.any():
        r, c = np.nonzero(mask.cpu().numpy())
        fig.add_trace(go.Scatter(x=c, y=r, mode="markers", name="reserved (kept in full precision)",
                                 marker={"symbol": "square-open", "size": 11, "color": RESERVED_COLOR,
                                         "line": {"width": 2}},
                                 hovertemplate="reserved: row %{y}, column %{x}<extra></extra>"))
    if column >= 0:
        fig.add_vrect(x0=column - 0.5, x1=column + 0.5, line={"color": "black", "width": 2})
    fig.update_layout(title=title, xaxis_title="input channel (column)", yaxis_title="output channel (row)",
                      yaxis_autorange="reversed", legend={"orientation": "h", "y": -0.2},
                      margin={"t": 50, "l": 60, "r": 20, "b": 60})
    return fig


def loss_curves(curves: dict[str, list[float]], column: int) -> go.Figure:
    """Running loss of each method against the columns quantized so far (Learn page)."""
    fig = go.Figure()
    for name, losses in curves.items():
        fig.add_trace(go.Scatter(x=list(range(len(losses))), y=losses, mode="lines", name=name,
                                 hovertemplate=f"{name}: %{{x}} columns done<br>loss %{{y:.4g}}<extra></extra>"))
    fig.add_vline(x=column + 1, line={"dash": "dot", "color": "gray"})
    fig.update_layout(title="Running loss: sum of (w - q)^2 / U_jj^2 over quantized columns",
                      xaxis_title="columns quantized (count)", yaxis_title="loss (output error, squared)",
                      margin={"t": 50, "l": 60, "r": 20, "b": 50})
    return fig


def module_grid(values: list[list[float]], modules: list[str], title: str, colorbar: str,
                zrange: tuple[float, float], fmt: str = ".2%") -> go.Figure:
    """A blocks x modules table as a heatmap (Mask page); `zrange` is shared by compared panels."""
    short = [m.split(".")[-1] for m in modules]  # every module labelled, not every other one
    fig = go.Figure(go.Heatmap(
        z=values, x=short, y=list(range(len(values))), customdata=[modules] * len(values),
        colorscale="Viridis", zmin=zrange[0], zmax=zrange[1], colorbar={"title": colorbar, "tickformat": fmt},
        hovertemplate=f"block %{{y}} · %{{customdata}}<br>{colorbar} %{{z:{fmt}}}<extra></extra>",
    ))
    fig.update_layout(title=title, xaxis_title="module", yaxis_title="decoder block (index)",
                      xaxis={"tickmode": "array", "tickvals": short, "tickangle": -60},
                      yaxis_autorange="reversed", margin={"t": 50, "l": 60, "r": 20, "b": 60})
    return fig


def block_bars(values: list[float], selected: int, title: str, yaxis: str) -> go.Figure:
    """One bar per decoder block, the selected one highlighted (click a bar to select it)."""
    colors = [RESERVED_COLOR if b == selected else "#1f77b4" for b in range(len(values))]
    fig = go.Figure(go.Bar(x=list(range(len(values))), y=values, marker_color=colors,
                           hovertemplate=f"block %{{x}}<br>{yaxis} %{{y:.4g}}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="decoder block (index, click to select)", yaxis_title=yaxis,
                      yaxis_type="log", height=260, margin={"t": 40, "l": 60, "r": 20, "b": 50}, clickmode="event+select")
    return fig


def criteria_heatmaps(scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], titles: dict[str, str],
                      zrange: tuple[float, float] = (-6.0, 0.0), cells: int = 128) -> go.Figure:
    """Several criteria on one matrix, side by side (two per row) on one shared colour scale.

    Each is drawn relative to its own largest value, log10(score / max), max-pooled
    to `cells`; its top set (`masks`) overlaid in red."""
    names = list(scores)
    rows = -(-len(names) // 2)
    fig = make_subplots(rows=rows, cols=2, subplot_titles=[titles[n] for n in names], shared_xaxes=True,
                        shared_yaxes=True, horizontal_spacing=0.05, vertical_spacing=0.08)
    for i, name in enumerate(names):
        S = scores[name].float()
        rel = max_pool((S / S.max().clamp_min(1e-30)).clamp_min(1e-30).log10(), cells, cells)
        r_step, c_step = -(-S.shape[0] // cells), -(-S.shape[1] // cells)
        fig.add_trace(go.Heatmap(z=rel.cpu().numpy(), dx=c_step, dy=r_step, coloraxis="coloraxis",
                                 hovertemplate=f"{name}<br>rows %{{y}}+, cols %{{x}}+<br>log10 (score / max) "
                                               "%{z:.2f}<extra></extra>"), row=i // 2 + 1, col=i % 2 + 1)
        layer = _reserved_layer(masks[name], cells, (0, 0), r_step, c_step)
        layer.showlegend = i == 0
        fig.add_trace(layer, row=i // 2 + 1, col=i % 2 + 1)
    fig.update_layout(title="Criteria on the same module: top sets in red", height=380 * rows,
                      coloraxis={"colorscale": "Viridis", "cmin": zrange[0], "cmax": zrange[1],
                                 "colorbar": {"title": "log10 (score / max)"}},
                      legend={"orientation": "h", "y": -0.08}, margin={"t": 70, "l": 60, "r": 20, "b": 60})
    fig.update_yaxes(autorange="reversed")
    for r in range(1, rows + 1):
        fig.update_yaxes(title_text="output channel (row)", row=r, col=1)
    fig.update_xaxes(title_text="input channel (column)", row=rows)
    return fig
