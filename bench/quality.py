"""Perplexity of FP, RTN, GPTQ and SEPTQ on the embedded default model, on three corpora.

Sections (each a sweep of `septq sweep`, kept in a run store so that an
interrupted benchmark resumes where it stopped):

- preview:     RTN / GPTQ / SEPTQ at 2, 3, 4 bits, preview preset (16 x 512 demo tokens)
- reserve:     SEPTQ 3-bit with 0.5 %, 1 % and 2 % reserved
- grouped:     GPTQ / SEPTQ 3-bit with groups of 128 columns
- large:       GPTQ / SEPTQ at 2, 3, 4 bits calibrated on 64 x 512 tokens of WikiText-2
               validation: 4x the preview's calibration, one run in about 7 min on a 2-core CPU
               (the 6-cell section, with evaluation, about 50 min; RTN needs no calibration: its
               numbers are the preview's)
- calibration: SEPTQ 3-bit calibrated on 8, 16, 32, 64 x 512 tokens of the same text (GPTQ's
               64 x 512 point is in `large`)
- paper:       RTN / GPTQ / SEPTQ at 2, 3, 4 bits, paper preset (128 x 2048 tokens; for a GPU,
               see bench/gpu.sh; not in the default list)

The paper calibrates on C4's train shard, which is not among the offline files;
WikiText-2 validation is disjoint from the WikiText-2 test split evaluated here.

    SEPTQ_DATA_DIR=../shared/data .venv/bin/python -m bench quality [--sections preview reserve ...]

Writes bench/results/quality.json; `python -m bench report` draws it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import septq_core as sq
from septq_core import cli

from .machine import RESULTS, header


def sections(large_calib: str, paper_calib: str = "c4", bits: tuple[int, ...] = (2, 3, 4)) -> dict[str, list[list[str]]]:
    """Each section: the extra `septq sweep` arguments of its sweeps."""
    b = ["--bits", *map(str, bits)]
    large = ["--calib", large_calib, "--nsamples", "64"]
    return {
        "paper": [["--preset", "paper", "--calib", paper_calib, "--methods", "rtn", "gptq", "septq", *b]],
        "preview": [["--methods", "rtn", "gptq", "septq", *b]],
        "reserve": [["--methods", "septq", "--bits", "3", "--reserve-ratios", "0.005", "0.01", "0.02"]],
        "grouped": [["--methods", "gptq", "septq", "--bits", "3", "--group-size", "128"]],
        "large": [["--methods", "gptq", "septq", *b, *large]],
        "calibration": [["--methods", "septq", "--bits", "3", "--calib", large_calib, "--nsamples", str(n)]
                        for n in (8, 16, 32, 64)],
    }


SECTIONS = list(sections("demo"))
CPU_SECTIONS = [name for name in SECTIONS if name != "paper"]


def cell(row: dict) -> dict:
    """A sweep row, flattened to what the report needs."""
    cfg = row["config"]
    return {"label": row["label"], "method": cfg["method"], "bits": cfg["bits"], "group_size": cfg["group_size"],
            "reserve_ratio": cfg["reserve_ratio"] if cfg["method"] == "septq" else 0.0,
            "calib": cfg["calib"], "nsamples": cfg["nsamples"], "seqlen": cfg["seqlen"], "ppl": row["ppl"],
            "bits_per_weight": row["bits_per_weight"], "seconds": row["seconds"],
            "stage_seconds": row.get("stage_seconds"), "run_id": row["id"],
            "kept_from_store": row.get("kept", False)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model source (default: the embedded default)")
    ap.add_argument("--sections", nargs="+", default=CPU_SECTIONS, choices=SECTIONS)
    ap.add_argument("--large-calib", default=None,
                    help="calibration text of the large and calibration sections "
                         "(default $SEPTQ_DATA_DIR/wikitext2/valid.txt)")
    ap.add_argument("--paper-calib", default="c4", help="calibration corpus of the paper section (default c4)")
    ap.add_argument("--eval", nargs="+", default=["wikitext2", "ptb", "c4"], help="evaluation corpora")
    ap.add_argument("--windows", type=int, default=20, help="evaluation windows per corpus (0 = all)")
    ap.add_argument("--eval-seqlen", type=int, default=512, help="evaluation window length")
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4],
                    help="bit-widths of the preview, large and paper sections (the others are 3-bit)")
    ap.add_argument("--home", default=str(Path(__file__).resolve().parent / ".runs"),
                    help="run store that makes the benchmark resumable (default bench/.runs)")
    ap.add_argument("--out", default=str(RESULTS / "quality.json"))
    args = ap.parse_args(argv)
    data_dir = os.environ.get("SEPTQ_DATA_DIR")
    if args.large_calib is None and data_dir is None and {"large", "calibration"} & set(args.sections):
        ap.error("the large and calibration sections calibrate on WikiText-2 validation: set SEPTQ_DATA_DIR "
                 "(e.g. ../shared/data) or give --large-calib")
    plan = sections(args.large_calib or str(Path(data_dir or ".") / "wikitext2" / "valid.txt"), args.paper_calib,
                    tuple(args.bits))

    common = ["--home", args.home, "sweep", "--eval", *args.eval, "--windows", str(args.windows),
              "--eval-seqlen", str(args.eval_seqlen)]
    if args.model:
        common += ["--model", args.model]
    first = cli.parse_args(common)
    cli._check_corpora(first)
    store = cli._store(first)
    t = time.perf_counter()
    lm = sq.load_model(args.model)
    print(f"model {lm.name} ({lm.card['weights']}) loaded in {time.perf_counter() - t:.1f} s", flush=True)

    result = {**header("quality", argv), "model": lm.name, "weights": lm.card["weights"],
              "eval": {"corpora": args.eval, "seqlen": first.eval_seqlen, "windows": args.windows,
                       "tokens": {c: sq.window_count(lm.tokenizer, c, first.eval_seqlen, args.windows or None)
                                  * (first.eval_seqlen - 1) for c in args.eval}},
              "fp": cli._fp_row(store, lm, first)["ppl"], "sections": {}}
    out = Path(args.out)
    if out.is_file():  # sections not asked for this time stay, when measured the same way
        before = json.loads(out.read_text())
        if before.get("eval") == result["eval"] and before.get("model") == result["model"]:
            result["sections"] = before.get("sections", {})
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for name in args.sections:
        t = time.perf_counter()
        rows: list[dict] = []
        section = result["sections"][name] = {"rows": rows, "wall_seconds": 0.0, "command": result["command"],
                                               "date": result["date"]}

        def save(row, rows=rows, section=section, t=t):  # after every cell: a killed run keeps what it finished
            rows.append(cell(row))
            section["wall_seconds"] = time.perf_counter() - t
            out.write_text(json.dumps(result, indent=2) + "\n")

        for extra in plan[name]:
            sub = cli.parse_args([*common, *extra])
            cli.sweep_rows(store, lm, cli.sweep_configs(sub), sub, on_row=save)
        print(f"\n== {name} ({time.perf_counter() - t:.0f} s) ==")
        print(cli._table([{"label": "FP", "ppl": result["fp"]}, *rows], args.eval), flush=True)
    print(f"\n{time.perf_counter() - started:.0f} s; written to {out}")
    return result


if __name__ == "__main__":
    main()
