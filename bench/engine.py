"""Quantization engine speed and memory on the embedded default model.

Prints, from one run:
- solver seconds of SEPTQ / GPTQ over all modules (target <= 1.15);
- whole-model quantization seconds / one full-precision forward pass over the
  calibration set, true-sequential (target <= 4) and shared pass (target <= 3);
- peak memory of each phase (RSS; CUDA max allocated on a GPU);
- perplexity evaluation throughput (predicted tokens per second).

    .venv/bin/python -m bench engine [--nsamples 16 64] [--preset paper --calib FILE]

Quality (perplexities) is `python -m bench quality`. Run with nothing else
running: timings on 2 shared cores are noisy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import septq_core as sq
from septq_core.pipeline import _batch_size

from .machine import RESULTS, header
from .memory import PeakMemory


def fp_forward_seconds(lm, calib) -> float:
    """One full-precision forward pass of the whole model over the calibration set."""
    bs = _batch_size(calib.seqlen, lm.device)
    t = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, calib.nsamples, bs):
            lm.model(input_ids=calib.input_ids[start : start + bs].to(lm.device), use_cache=False)
    return time.perf_counter() - t


def speed(lm, base, calib) -> dict:
    """Solver and whole-model seconds against one FP forward pass, all measured here, now, with the
    peak memory of each phase."""
    with PeakMemory() as m:
        fp_fwd = fp_forward_seconds(lm, calib)
    memory = {"fp_forward": m.as_dict()}
    configs = {"gptq": base.replace(method="gptq", bits=3), "septq": base.replace(method="septq", bits=3),
               "septq_shared_pass": base.replace(method="septq", bits=3, true_sequential=False)}
    runs = {}
    for name, cfg in configs.items():
        with PeakMemory() as m:
            runs[name] = sq.quantize_model(lm, cfg, calib=calib).seconds
        memory[name] = m.as_dict()
    ratios = {
        "septq_over_gptq_solver": runs["septq"]["solver"] / runs["gptq"]["solver"],
        "true_sequential_over_fp_forward": runs["septq"]["total"] / fp_fwd,
        "shared_pass_over_fp_forward": runs["septq_shared_pass"]["total"] / fp_fwd,
    }
    print(f"\nspeed, 3-bit, calibration {calib.nsamples} x {calib.seqlen} tokens; one FP forward pass over it: "
          f"{fp_fwd:.1f} s")
    print(f"SEPTQ / GPTQ solver seconds over all modules: {runs['septq']['solver']:.1f} / "
          f"{runs['gptq']['solver']:.1f} = {ratios['septq_over_gptq_solver']:.3f} (target <= 1.15)")
    print(f"whole-model SEPTQ / FP forward, true sequential: {runs['septq']['total']:.1f} / {fp_fwd:.1f} = "
          f"{ratios['true_sequential_over_fp_forward']:.2f} (target <= 4)")
    print(f"whole-model SEPTQ / FP forward, shared pass:     {runs['septq_shared_pass']['total']:.1f} / {fp_fwd:.1f} = "
          f"{ratios['shared_pass_over_fp_forward']:.2f} (target <= 3)")
    for name, sec in runs.items():
        print(f"  {name:18s} {json.dumps({k: round(v, 1) for k, v in sec.items()})}")
    for name, mem in memory.items():
        print(f"  peak RSS {name:18s} {mem['rss_peak_mib']:7.0f} MiB (+{mem['rss_added_mib']:.0f} over its start)"
              + (f", CUDA max allocated {mem['cuda_max_allocated_mib']:.0f} MiB" if "cuda_max_allocated_mib" in mem else ""))
    return {"fp_forward_s": fp_fwd, "calibration": [calib.nsamples, calib.seqlen], "runs": runs, "ratios": ratios,
            "memory": memory}


def eval_throughput(lm, corpus: str, seqlens: list[int], windows: int) -> list[dict]:
    """Perplexity evaluation speed of the full-precision model: predicted tokens per second."""
    rows = []
    for seqlen in seqlens:
        with PeakMemory() as m:
            p = sq.perplexity(lm.model, lm.tokenizer, corpus, seqlen=seqlen, max_windows=windows)
        rows.append({"seqlen": seqlen, "windows": p.windows, "tokens": p.tokens, "seconds": p.seconds,
                     "tokens_per_s": p.tokens / p.seconds, "memory": m.as_dict()})
        print(f"evaluation, {p.windows} windows of {seqlen}: {p.tokens} tokens in {p.seconds:.1f} s = "
              f"{p.tokens / p.seconds:.0f} tokens/s, peak RSS {m.as_dict()['rss_peak_mib']:.0f} MiB", flush=True)
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model source (default: the embedded default)")
    ap.add_argument("--preset", default="preview", choices=list(sq.PRESETS), help="quantization settings")
    ap.add_argument("--calib", default=None, help="calibration corpus (default: the preset's)")
    ap.add_argument("--nsamples", type=int, nargs="+", default=None,
                    help="calibration sizes (windows of the preset's length; default: the preset's)")
    ap.add_argument("--corpus", default="demo", help="evaluation corpus of the throughput measurement")
    ap.add_argument("--eval-seqlens", type=int, nargs="+", default=[512, 2048],
                    help="window lengths of the evaluation-throughput measurement")
    ap.add_argument("--eval-windows", type=int, default=8, help="windows per evaluation-throughput measurement")
    ap.add_argument("--out", default=str(RESULTS / "engine.json"))
    args = ap.parse_args(argv)

    with PeakMemory() as load_memory:
        t = time.perf_counter()
        lm = sq.load_model(args.model)
        load_s = time.perf_counter() - t
    base = sq.QuantConfig.preset(args.preset, **({"calib": args.calib} if args.calib else {}))
    print(f"model {lm.name} ({lm.card['weights']}) on {lm.device}, loaded in {load_s:.1f} s (peak RSS "
          f"{load_memory.as_dict()['rss_peak_mib']:.0f} MiB); {args.preset} preset, calibration from {base.calib}",
          flush=True)
    result = {**header("engine", argv), "model": lm.name, "device": str(lm.device), "load_s": load_s,
              "load_memory": load_memory.as_dict()}
    result["speed"] = []
    for n in args.nsamples or [base.nsamples]:
        calib = sq.calibration_windows(lm.tokenizer, base.calib, n, base.seqlen, base.seed)
        result["speed"].append(speed(lm, base.replace(nsamples=n), calib))
    result["evaluation"] = eval_throughput(lm, args.corpus, args.eval_seqlens, args.eval_windows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nwritten to {args.out}")
    return result


if __name__ == "__main__":
    main()
