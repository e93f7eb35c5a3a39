"""The benchmark report: tables and PNG charts drawn from bench/results/*.json, nothing measured here.

    .venv/bin/python -m bench report [--results DIR] [--readme FILE] [--charts DIR]

Rewrites the part of bench/README.md between the report markers and the PNG charts in
bench/report/. A results file that is missing leaves its section saying which command
makes it. Every number comes from a results file, which records the date, the machine
and the command that measured it.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
from pathlib import Path

from .machine import RESULTS

HERE = Path(__file__).resolve().parent
START, END = "<!-- report:start (python -m bench report writes this part) -->", "<!-- report:end -->"
CORPUS_NAMES = {"wikitext2": "WikiText-2", "ptb": "PTB", "c4": "C4", "demo": "demo"}
METHOD_NAMES = {"rtn": "RTN", "gptq": "GPTQ", "septq": "SEPTQ", "fp": "FP"}
COLORS = {"rtn": "#7f7f7f", "gptq": "#1f77b4", "septq": "#d62728"}
Y_CAP = 3000.0  # perplexities above this are drawn at the top edge with their value written


# -- reading ------------------------------------------------------------------------------------


def load(results: Path, name: str) -> dict | None:
    path = results / name
    return json.loads(path.read_text()) if path.is_file() else None


def committed_date(path: Path) -> str | None:
    """The date of the last commit of a results file that does not record its own date."""
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%ad", "--date=format:%Y-%m-%d %H:%M", "--", path.name],
                             cwd=path.parent, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def provenance(result: dict, path: Path) -> str:
    """One line: when, where and with which command a results file was measured."""
    date = result.get("date")
    if date is None:
        committed = committed_date(path)
        date = f"{committed} (commit date; the file has no date)" if committed else "date not recorded"
    where = result.get("cpu") or result.get("machine") or "machine not recorded"
    cores = result.get("cores") or result.get("cpus")
    parts = [date, f"{where}" + (f", {cores} cores" if cores else "")]
    if result.get("gpu"):
        parts.append(result["gpu"])
    if result.get("torch"):
        parts.append(f"torch {result['torch']}")
    command = result.get("command")
    return " · ".join(parts) + (f" · `{command}`" if command else "")


# -- formatting ---------------------------------------------------------------------------------


def ppl_text(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if value >= 1e5:
        return f"{value:.2e}"
    return f"{value:.2f}"


def table(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def label(row: dict) -> str:
    name = METHOD_NAMES[row["method"]]
    if row["method"] == "septq":
        name += f" {row['reserve_ratio'] * 100:g} %"
    if row.get("group_size"):
        name += f" g{row['group_size']}"
    return name


# -- charts -------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def _save(fig, out: Path, rect=(0, 0, 1, 1)) -> Path:
    fig.tight_layout(rect=rect)
    fig.savefig(out)
    _pyplot().close(fig)
    return out


def _capped(ax, xs, ys, placed: dict, **style):
    """A line with points above Y_CAP drawn at the cap, each labelled with its value; labels at the
    same x are stacked (`placed` counts them per x)."""
    ax.plot(xs, [min(y, Y_CAP) for y in ys], **style)
    for x, y in zip(xs, ys):
        if y > Y_CAP:
            k = placed[round(x, 2)] = placed.get(round(x, 2), -1) + 1
            ax.annotate(f"{y:.3g}", (x, Y_CAP), textcoords="offset points", xytext=(5, -9 - 9 * k), ha="left",
                        fontsize=7, color=style.get("color", "black"))


def chart_quality(quality: dict, out: Path, series: list[tuple], title: str) -> Path:
    """Perplexity against bits per weight, one panel per corpus; series = (section, label, style), the
    section's rows of that label, or (section, name, style, pick), the rows for which pick(row) holds."""
    plt = _pyplot()
    corpora = quality["eval"]["corpora"]
    fig, axes = plt.subplots(1, len(corpora), figsize=(4.2 * len(corpora), 3.6), squeeze=False)
    for ax, corpus in zip(axes[0], corpora):
        placed: dict = {}
        for section, name, style, *pick in series:
            keep = pick[0] if pick else (lambda r, name=name: label(r) == name)
            rows = [r for r in quality["sections"].get(section, {}).get("rows", []) if keep(r)]
            rows.sort(key=lambda r: r["bits_per_weight"])
            if rows:
                _capped(ax, [r["bits_per_weight"] for r in rows], [r["ppl"][corpus] for r in rows], placed,
                        label=f"{name} ({section})", marker="o", markersize=4, **style)
        ax.axhline(quality["fp"][corpus], color="black", linewidth=1, linestyle=":", label="FP")
        ax.set_yscale("log")
        if ax.get_ylim()[1] > Y_CAP:
            ax.set_ylim(top=Y_CAP * 1.05)
        ax.set_xlabel("bits per weight")
        ax.set_title(f"{CORPUS_NAMES.get(corpus, corpus)}")
    axes[0][0].set_ylabel(f"perplexity (log; windows of {quality['eval']['seqlen']})")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    return _save(fig, out, rect=(0, 0.1 if len(labels) <= 5 else 0.16, 1, 1))


def chart_calibration(quality: dict, out: Path) -> Path:
    plt = _pyplot()
    corpora = quality["eval"]["corpora"]
    rows = quality["sections"]["calibration"]["rows"]
    # the large section's 3-bit rows share the calibration text: GPTQ's 64 x 512 point comes from there
    points = {(r["method"], r["nsamples"]): r for r in quality["sections"].get("large", {}).get("rows", [])
            if r["bits"] == 3 and r["calib"] == rows[0]["calib"] and r["seqlen"] == rows[0]["seqlen"]}
    points.update({(r["method"], r["nsamples"]): r for r in rows})
    fig, axes = plt.subplots(1, len(corpora), figsize=(4.2 * len(corpora), 3.3), squeeze=False)
    for ax, corpus in zip(axes[0], corpora):
        for method in ("gptq", "septq"):
            pts = sorted((n, r["ppl"][corpus]) for (m, n), r in points.items() if m == method)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=4, color=COLORS[method],
                        label=f"{METHOD_NAMES[method]} 3-bit")
        ax.axhline(quality["fp"][corpus], color="black", linewidth=1, linestyle=":", label="FP")
        ax.set_xscale("log", base=2)
        ax.set_xticks([8, 16, 32, 64], ["8", "16", "32", "64"])
        ax.set_xlabel(f"calibration windows of {rows[0]['seqlen']} tokens")
        ax.set_title(CORPUS_NAMES.get(corpus, corpus))
    axes[0][0].set_ylabel("perplexity")
    axes[0][0].legend(fontsize=8)
    return _save(fig, out)


def chart_solver(solver: dict, out: Path) -> Path:
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    names = list(solver["shapes"])
    width = 0.27
    for i, method in enumerate(("rtn", "gptq", "septq")):
        a.bar([k + (i - 1) * width for k in range(len(names))], [solver["shapes"][n][method] for n in names], width,
              color=COLORS[method], label=METHOD_NAMES[method])
    a.set_xticks(range(len(names)), [f"{n}\n{solver['shapes'][n]['rows']}x{solver['shapes'][n]['cols']}"
                                     for n in names], fontsize=7)
    a.set_ylabel("seconds per matrix (median)")
    a.set_title("per module shape of the default model")
    a.legend(fontsize=8)
    sizes = sorted(int(n) for n in solver["scaling"])
    for method in ("gptq", "septq"):
        b.plot(sizes, [solver["scaling"][str(n)][method] for n in sizes], marker="o", color=COLORS[method],
               label=METHOD_NAMES[method])
    first = solver["scaling"][str(sizes[0])]["septq"]
    for power, style in ((2, "--"), (3, ":")):
        b.plot(sizes, [first * (n / sizes[0]) ** power for n in sizes], style, color="black", linewidth=0.8,
               label=f"n^{power} from the first point")
    b.set_xscale("log", base=2)
    b.set_yscale("log")
    b.set_xticks(sizes, [str(n) for n in sizes])
    b.set_xlabel("columns of a square W (synthetic H)")
    b.set_ylabel("seconds")
    b.set_title("against matrix size")
    b.legend(fontsize=8)
    return _save(fig, out)


def chart_engine(engine: dict, out: Path) -> Path:
    """Whole-model quantization seconds in units of one FP forward pass, split into its stages."""
    plt = _pyplot()
    speed = engine["speed"]
    fig, axes = plt.subplots(1, len(speed), figsize=(4.6 * len(speed), 3.4), squeeze=False)
    stages = (("calibration_forward", "calibration forwards", "#9ecae1"), ("solver", "solver", "#d62728"),
              ("other", "other", "#bdbdbd"))
    for ax, s in zip(axes[0], speed):
        names = ["gptq", "septq", "septq_shared_pass"]
        bottom = [0.0] * len(names)
        for key, text, color in stages:
            heights = [s["runs"][n][key] / s["fp_forward_s"] for n in names]
            ax.bar(range(len(names)), heights, bottom=bottom, color=color, label=text)
            bottom = [b + h for b, h in zip(bottom, heights)]
        ax.axhline(1, color="black", linewidth=1, linestyle=":", label="one FP forward pass")
        ax.set_xticks(range(len(names)), ["GPTQ", "SEPTQ", "SEPTQ\nshared pass"])
        n, seqlen = s["calibration"]
        ax.set_title(f"{n} x {seqlen} calibration tokens (FP pass {s['fp_forward_s']:.1f} s)")
        ax.set_ylabel("seconds / FP forward pass")
    handles, labels = axes[0][0].get_legend_handles_labels()
    wide = len(speed) > 1
    fig.legend(handles, labels, loc="lower center", ncol=4 if wide else 2, fontsize=8, frameon=False)
    return _save(fig, out, rect=(0, 0.08 if wide else 0.14, 1, 1))


# -- sections -----------------------------------------------------------------------------------


def image(path: Path, readme: Path, alt: str) -> str:
    return f"![{alt}]({path.relative_to(readme.parent).as_posix()})"


def quality_section(quality: dict | None, path: Path, charts: Path, readme: Path) -> list[str]:
    if quality is None:
        return ["## Quality", "", "Not measured yet: `SEPTQ_DATA_DIR=../shared/data python -m bench quality`."]
    ev = quality["eval"]
    corpora = ev["corpora"]
    tokens = ", ".join(f"{CORPUS_NAMES.get(c, c)} {n:,}" for c, n in ev.get("tokens", {}).items())
    out = ["## Quality", "", "Last run: " + provenance(quality, path), "",
           f"Model: {quality['model']}, weights **{quality['weights']}**. Perplexity over the first "
           f"{ev['windows'] or 'all'} windows of {ev['seqlen']} tokens of each test split (predicted tokens: "
           f"{tokens}). Per-row asymmetric MSE grid, blocksize 128, 1 % damping, no act-order, true sequential. "
           "Bits per weight by ALGORITHM.md's formula (each reserved weight: 16-bit value + 16-bit index).", ""]
    sections = quality["sections"]
    fp = ["FP", "-", *(ppl_text(quality["fp"][c]) for c in corpora), "-", "-"]
    head = ["run", "bits/weight", *(CORPUS_NAMES.get(c, c) for c in corpora), "quantize s", "calibration"]
    described = {
        "preview": "Preview preset: 16 x 512 tokens of the bundled demo text.",
        "reserve": "SEPTQ 3-bit with 0.5, 1 and 2 % of the weights reserved, preview preset.",
        "grouped": "3-bit with groups of 128 columns (one grid per group, the grids fitted as the sweep reaches "
                   "them), preview preset. The 576-column modules end in a group of 64.",
        "large": "4x the preview's calibration: 64 x 512 tokens of WikiText-2 validation (disjoint from the "
                 "test split; the paper's C4 train shard is not among the offline files). RTN needs no "
                 "calibration: its rows are the preview's. One 64 x 512 run quantizes in about 7 min on the 2-core "
                 "CPU measured here; no whole 2/3/4-bit table finishes within 30 minutes there, not even at the "
                 "preview preset (see the section wall times).",
        "calibration": "Calibration size: SEPTQ 3-bit on 8, 16, 32, 64 windows of 512 tokens of WikiText-2 "
                       "validation (GPTQ's 64 x 512 row is in the large section).",
        "paper": "Paper preset (128 x 2048 calibration tokens).",
    }
    for name, section in sections.items():
        rows = section["rows"]
        body = [fp] + [[label(r) + f" {r['bits']}-bit", f"{r['bits_per_weight']:.3f}",
                        *(ppl_text(r["ppl"].get(c)) for c in corpora),
                        f"{r['seconds']:.0f}" if r.get("seconds") else "-",
                        f"{r['nsamples']} x {r['seqlen']} {Path(r['calib']).name}"] for r in rows]
        computed = [r for r in rows if not r.get("kept_from_store")]
        minutes = section.get("wall_seconds", 0) / 60
        measured = (f" Measured {section.get('date', '')} by `{section['command']}`." if section.get("command")
                    else "")
        out += [f"### {name}", "", described.get(name, "") + measured, "", table(head, body), "",
                f"Section wall time {minutes:.1f} min, quantization plus evaluation on all corpora ({len(computed)} "
                f"of {len(rows)} cells computed in that run"
                + (", the others kept from the run store)." if len(computed) < len(rows) else ")."), ""]
    missing = [n for n in described if n != "paper" and n not in sections]
    full = sorted({r["bits"] for r in sections.get("preview", {}).get("rows", [])})
    have = {r["bits"] for r in sections.get("large", {}).get("rows", [])}
    if have and set(full) - have:
        out += [f"large: measured at {', '.join(map(str, sorted(have)))} bits only; the other bit-widths: "
                "`python -m bench quality --sections large` (finished cells are kept).", ""]
    if missing and "paper" not in sections:
        out += [f"Not measured yet: {', '.join(missing)} (`python -m bench quality --sections {' '.join(missing)}`).",
                ""]
    for base in ("preview", "paper", "large"):
        out += septq_vs_gptq(sections.get(base, {}).get("rows", []), corpora, base)
    series = [(base, name, {"color": COLORS[method]}) for base in ("preview", "paper")
              for method, name in (("rtn", "RTN"), ("gptq", "GPTQ"), ("septq", "SEPTQ 1 %"))]
    series += [("grouped", "GPTQ g128", {"color": COLORS["gptq"], "linestyle": "--"}),
              ("grouped", "SEPTQ 1 % g128", {"color": COLORS["septq"], "linestyle": "--"}),
              ("large", "GPTQ", {"color": COLORS["gptq"], "linestyle": ":"}),
              ("large", "SEPTQ 1 %", {"color": COLORS["septq"], "linestyle": ":"})]
    if any(s in sections for s in ("preview", "paper", "grouped", "large")):
        png = chart_quality(quality, charts / "quality_vs_bits.png", series,
                            "Perplexity against bits per weight (2, 3, 4 bits)")
        out += ["### Perplexity against bits per weight", "", image(png, readme, "perplexity against bits per weight"),
                "", f"Values above {Y_CAP:g} are drawn at the top edge with their value.", ""]
    if "reserve" in sections:
        reserve = [("preview", "GPTQ", {"color": COLORS["gptq"]}),
                   ("preview", "SEPTQ 1 %", {"color": COLORS["septq"], "alpha": 0.4}),
                   ("reserve", "SEPTQ 3-bit, 0.5 / 1 / 2 % reserved", {"color": "#67000d", "linestyle": "--"},
                    lambda r: True)]
        png = chart_quality(quality, charts / "reserve_ratio.png", reserve,
                            "SEPTQ 3-bit reserve ratio against GPTQ and SEPTQ 1 % at 2, 3, 4 bits (preview preset)")
        out += [image(png, readme, "SEPTQ reserve ratios against bits per weight"), ""]
    if "calibration" in sections:
        png = chart_calibration(quality, charts / "calibration_size.png")
        out += ["### Calibration size", "", image(png, readme, "perplexity against calibration size"), ""]
    return out


def septq_vs_gptq(rows: list[dict], corpora: list[str], section: str) -> list[str]:
    """Per bit-width: GPTQ and SEPTQ (1 %) perplexity and their ratio, for each corpus."""
    pick = {(r["method"], r["bits"]): r for r in rows if r["method"] in ("gptq", "septq") and not r.get("group_size")
            and (r["method"] == "gptq" or r["reserve_ratio"] == 0.01)}
    body = []
    for bits in sorted({b for _, b in pick}):
        g, q = pick.get(("gptq", bits)), pick.get(("septq", bits))
        if g and q:
            body.append([f"{bits}-bit", f"{g['bits_per_weight']:.2f} / {q['bits_per_weight']:.2f}",
                         *(f"{ppl_text(g['ppl'][c])} / {ppl_text(q['ppl'][c])} = **{q['ppl'][c] / g['ppl'][c]:.3f}**"
                           for c in corpora)])
    if not body:
        return []
    return [f"SEPTQ (1 %) against GPTQ, {section}: GPTQ / SEPTQ perplexity = SEPTQ / GPTQ ratio (below 1: SEPTQ "
            "better).", "", table(["bits", "bits/weight", *(CORPUS_NAMES.get(c, c) for c in corpora)], body), ""]


def engine_section(engine: dict | None, path: Path, charts: Path, readme: Path,
                   png_name: str = "quantize_time.png") -> list[str]:
    if engine is None:
        return ["## Speed and memory", "", "Not measured yet: `python -m bench engine --nsamples 16 64`."]
    out = ["## Speed and memory: the whole model", "", provenance(engine, path), "",
           f"3-bit, per-row grid, on {engine.get('device', 'cpu')}. One FP forward pass = the whole model (LM head "
           "included) over the calibration set in the same mini-batches. Targets: SEPTQ / GPTQ solver <= 1.15, "
           "true sequential <= 4 FP passes, shared pass <= 3.", ""]
    rows = []
    for s in engine["speed"]:
        r, runs = s["ratios"], s["runs"]
        rows.append([f"{s['calibration'][0]} x {s['calibration'][1]}", f"{s['fp_forward_s']:.1f}",
                     f"{runs['septq']['solver']:.1f} / {runs['gptq']['solver']:.1f} = **{r['septq_over_gptq_solver']:.2f}**",
                     f"{runs['gptq']['total']:.1f} / {s['fp_forward_s']:.1f} = {runs['gptq']['total'] / s['fp_forward_s']:.2f}",
                     f"{runs['septq']['total']:.1f} / {s['fp_forward_s']:.1f} = **{r['true_sequential_over_fp_forward']:.2f}**",
                     f"{runs['septq_shared_pass']['total']:.1f} / {s['fp_forward_s']:.1f} = "
                     f"**{r['shared_pass_over_fp_forward']:.2f}**"])
    out += [table(["calibration", "FP forward s", "SEPTQ / GPTQ solver s", "GPTQ / FP forward",
                   "SEPTQ true sequential / FP forward", "SEPTQ shared pass / FP forward"], rows), ""]
    png = chart_engine(engine, charts / png_name)
    out += [image(png, readme, "quantization time in FP forward passes"), ""]
    mem_rows = [["load (GGUF dequantization included)", f"{engine['load_s']:.1f} s",
                 f"{engine['load_memory']['rss_peak_mib']:.0f}", f"{engine['load_memory']['rss_added_mib']:.0f}",
                 _cuda(engine["load_memory"])]]
    for s in engine["speed"]:
        calib = f"{s['calibration'][0]} x {s['calibration'][1]}"
        for name, m in s["memory"].items():
            secs = s["fp_forward_s"] if name == "fp_forward" else s["runs"][name]["total"]
            mem_rows.append([f"{name.replace('_', ' ')}, {calib}", f"{secs:.1f} s", f"{m['rss_peak_mib']:.0f}",
                             f"{m['rss_added_mib']:.0f}", _cuda(m)])
    for e in engine.get("evaluation", []):
        mem_rows.append([f"perplexity, {e['windows']} windows of {e['seqlen']}: **{e['tokens_per_s']:.0f} tokens/s**",
                         f"{e['seconds']:.1f} s", f"{e['memory']['rss_peak_mib']:.0f}",
                         f"{e['memory']['rss_added_mib']:.0f}", _cuda(e["memory"])])
    out += ["Peak memory of each phase (RSS: the Linux high-water mark, reset before the phase; a quantization run "
            "holds its own copy of the model). \"Above its start\" is the peak minus the RSS when the phase began; "
            "memory that an earlier phase freed but the allocator kept is reused without showing there.", "",
            table(["phase", "seconds", "peak RSS MiB", "above its start MiB", "CUDA max allocated MiB"], mem_rows), ""]
    return out


def _cuda(memory: dict) -> str:
    return f"{memory['cuda_max_allocated_mib']:.0f}" if "cuda_max_allocated_mib" in memory else "-"


def solver_section(solver: dict | None, path: Path, charts: Path, readme: Path) -> list[str]:
    if solver is None:
        return ["## Solver", "", "Not measured yet: `python -m bench solver`."]
    out = ["## Solver on one matrix", "", provenance(solver, path), "",
           f"Synthetic W and H, preview settings (3-bit, per-row MSE grid, blocksize 128, 1 % reserved), median of "
           f"{solver.get('repeats', 5)} runs. RTN is given H too (it then reports the layer loss).", ""]
    rows = [[f"{n} {s['rows']} x {s['cols']}", f"{s['rtn']:.3f}", f"{s['gptq']:.3f}", f"{s['septq']:.3f}",
             f"**{s['ratio']:.2f}**"] for n, s in solver["shapes"].items()]
    out += [table(["module shape", "RTN s", "GPTQ s", "SEPTQ s", "SEPTQ / GPTQ"], rows), ""]
    rows = [[n, f"{s['gptq']:.3f}", f"{s['septq']:.3f}", f"{s['ratio']:.2f}",
             "" if s["growth_exponent"] is None else f"{s['growth_exponent']:.2f}"] for n, s in solver["scaling"].items()]
    out += [table(["square W, columns", "GPTQ s", "SEPTQ s", "SEPTQ / GPTQ", "growth exponent of SEPTQ"], rows), ""]
    png = chart_solver(solver, charts / "solver.png")
    return out + [image(png, readme, "solver seconds per shape and against size"), ""]


def fp_section(fp_eval: dict | None, path: Path) -> list[str]:
    if fp_eval is None:
        return []
    rows = [[CORPUS_NAMES.get(r["corpus"], r["corpus"]), r["seqlen"], r["windows"], f"{r['tokens']:,}",
             f"{r['value']:.4f}", f"{r['seconds_per_window']:.2f}"] for r in fp_eval["results"]]
    return ["## Full-precision perplexity over whole test splits", "", provenance(fp_eval, path), "",
            table(["corpus", "window", "windows", "predicted tokens", "perplexity", "s per window"], rows), "",
            f"Load (GGUF dequantization included): {fp_eval['load_s']:.1f} s.", ""]


def app_section(app: dict | None, path: Path) -> list[str]:
    if app is None:
        return []
    redraw = app.get("importance_redraw_s", {})
    first = {m: v[0]["heatmap_shown_s"] for m, v in redraw.items()}
    rows = [["cold start: fresh Streamlit process to the model card shown", f"{app['cold_start_card_s']:.1f}"],
            ["cold start to the Model page ready (card + quick FP perplexity)", f"{app['cold_start_ready_s']:.1f}"],
            ["Importance first visit (FP calibration pass + scoring all modules)", f"{app['importance_first_visit_s']:.1f}"]]
    rows += [[f"redraw after choosing {m}, first visit (click to heatmap shown)", f"{s:.2f}"] for m, s in first.items()]
    sizes = app.get("largest_figure_bytes", {})
    worst = max(sizes.values()) if sizes else 0
    return ["## Dashboard", "", provenance(app, path), "",
            "Embedded default model, Streamlit headless, Debian Chromium driven by Playwright (browser and server "
            "share the machine's cores).", "", table(["what", "seconds"], rows), "",
            f"Largest figure sent: {worst:,} bytes; largest websocket message {app.get('largest_ws_frame_bytes', 0):,} bytes.",
            ""]


def gpu_section(results: Path, charts: Path, readme: Path) -> list[str]:
    gpu = results / "gpu"
    engine = load(gpu, "engine_paper.json")
    quality = load(gpu, "quality_paper.json")
    if engine is None and quality is None:
        return ["## GPU", "", "Not measured: no CUDA machine was available. On one, `bash bench/gpu.sh` "
                "(under 8 minutes) writes results/gpu/*.json, which this report then includes.", ""]
    out = ["## GPU (`bash bench/gpu.sh`)", ""]
    preview = load(gpu, "engine_preview.json")
    for result, name, title in ((preview, "engine_preview", "preview preset"), (engine, "engine_paper", "paper preset")):
        if result is not None:
            out += [f"### Speed and memory, {title}", ""]
            out += engine_section(result, gpu / f"{name}.json", charts / "gpu", readme, f"{name}.png")[2:]
    if quality is not None:
        out += ["### Quality, paper preset", ""]
        out += quality_section(quality, gpu / "quality_paper.json", charts / "gpu", readme)[2:]
    return out


def report(results: Path, charts: Path, readme: Path) -> str:
    charts.mkdir(parents=True, exist_ok=True)
    if (results / "gpu").is_dir():
        (charts / "gpu").mkdir(exist_ok=True)
    parts = [START, "", "# Latest results", "",
             "Written by `python -m bench report` from `bench/results/*.json`; each section says when, where and "
             "with which command its numbers were measured.", ""]
    parts += quality_section(load(results, "quality.json"), results / "quality.json", charts, readme)
    parts += engine_section(load(results, "engine.json"), results / "engine.json", charts, readme)
    parts += solver_section(load(results, "solver.json"), results / "solver.json", charts, readme)
    parts += fp_section(load(results, "fp_eval.json"), results / "fp_eval.json")
    parts += app_section(load(results, "app.json"), results / "app.json")
    parts += gpu_section(results, charts, readme)
    return "\n".join([*parts, END])


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--readme", default=str(HERE / "README.md"))
    ap.add_argument("--charts", default=str(HERE / "report"))
    args = ap.parse_args(argv)
    readme = Path(args.readme)
    text = report(Path(args.results), Path(args.charts), readme)
    old = readme.read_text() if readme.is_file() else ""
    if START in old and END in old:
        new = old[: old.index(START)] + text + old[old.index(END) + len(END):]
    else:
        new = old.rstrip() + ("\n\n" if old else "") + text + "\n"
    readme.write_text(new)
    print(f"written {readme} and the charts in {args.charts}")
    return text


if __name__ == "__main__":
    main()
