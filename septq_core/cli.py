"""The `septq` command: the dashboard, quantization, evaluation and sweeps from a shell.

Every result goes to the run store ($SEPTQ_HOME, default ~/.septq), so a sweep
that is interrupted resumes without redoing finished cells, and the dashboard
sees what the shell did.

Exit codes: 0 done, 1 the work failed (a message says why), 2 bad usage or
input, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = """examples:
  septq app
  septq quantize --method septq --bits 3 --eval demo wikitext2 --save out/septq3
  septq eval --model out/septq3 --eval demo
  septq sweep --methods rtn gptq septq --bits 2 3 4 --eval demo
  septq runs list
  septq runs export 20261204-101500-ab12cd --out run.json
"""


class UsageError(Exception):
    """Bad input from the user (exit code 2)."""


def _progress(args, total_hint: str):
    """A progress callback for quantize_model: a tqdm bar on stderr, or nothing with --quiet."""
    if args.quiet:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=None, desc=total_hint, unit="module", file=sys.stderr, leave=False)

    def update(done, total, message):
        bar.total = total
        bar.n = done
        bar.set_postfix_str(message[-60:], refresh=False)
        bar.refresh()

    return update, bar.close


def _say(args, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr, flush=True)


def _load(source: str | None, args):
    """A LoadedModel for `source`: the embedded default (None), an HF id, a directory, a .gguf, or an export."""
    import septq_core as sq

    if source and (Path(source) / "manifest.json").is_file():
        from .export import load_quantized

        model, tokenizer, manifest = load_quantized(source)
        return None, model, tokenizer, manifest
    _say(args, f"loading {source or 'the embedded default model'}...")
    lm = sq.load_model(source, device=args.device, dtype=args.dtype)
    return lm, lm.model, lm.tokenizer, None


def _evaluate(store, run_id, model, tokenizer, args) -> dict[str, float]:
    """Perplexity on every --eval corpus, stored with the run; returns {corpus: value}."""
    import septq_core as sq

    out = {}
    for corpus in args.eval:
        _say(args, f"perplexity on {corpus} (windows of {args.eval_seqlen})...")
        p = sq.perplexity(model, tokenizer, corpus, seqlen=args.eval_seqlen, max_windows=args.windows or None)
        if store is not None:
            store.add_perplexity(run_id, corpus=corpus, seqlen=p.seqlen, windows=p.windows, value=p.value,
                                 tokens=p.tokens, source=p.source)
        out[corpus] = p.value
    return out


def _config(args, method: str, bits: int, ratio: float):
    import septq_core as sq

    overrides = {k: v for k, v in {"calib": args.calib, "nsamples": args.nsamples, "seqlen": args.seqlen,
                                   "seed": args.seed, "mask_scope": args.mask_scope}.items() if v is not None}
    if args.group_size is not None:
        overrides["group_size"] = None if args.group_size == 0 else args.group_size
    return sq.QuantConfig.preset(args.preset, method=method, bits=bits, reserve_ratio=ratio, **overrides)


def _table(rows: list[dict], corpora: list[str]) -> str:
    """Rows (label, bits_per_weight, seconds, ppl per corpus) as an aligned text table."""
    head = ["run", *corpora, "bits/weight", "seconds"]
    body = [[r["label"], *(f"{r['ppl'][c]:.3f}" if c in r["ppl"] else "-" for c in corpora),
             f"{r['bits_per_weight']:.3f}" if r.get("bits_per_weight") else "-",
             f"{r['seconds']:.1f}" if r.get("seconds") else "-"] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def _quantize_one(store, lm, cfg, args, save: str | None = None) -> dict:
    """Quantize, evaluate and store one configuration; returns its table row.

    The run is stored as "running" first, so that a failure or Ctrl-C leaves a
    "failed" / "cancelled" record instead of nothing."""
    import septq_core as sq

    from .store import record_run

    run_id = None
    if store is not None:
        run_id = store.create(label=cfg.label, model_source=lm.source, model_card=lm.card, config=cfg.to_dict())
    progress, close = _progress(args, cfg.label)
    try:
        run = sq.quantize_model(lm, cfg, progress=progress)
    except BaseException as exc:
        if store is not None:
            status = "cancelled" if isinstance(exc, KeyboardInterrupt | sq.Cancelled) else "failed"
            store.finish(run_id, status=status, error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        close()
    if store is not None:
        record_run(store, lm, run, run_id=run_id)
    ppl = _evaluate(store, run_id, run.model, lm.tokenizer, args)
    if save:
        from .export import save_quantized

        perplexities = [{"corpus": c, "seqlen": args.eval_seqlen, "value": v} for c, v in ppl.items()]
        save_quantized(run, lm, save, perplexities=perplexities)
        if store is not None:
            store.set_saved(run_id, save)
        _say(args, f"saved to {save}")
    return {"id": run_id, "label": cfg.label, "ppl": ppl, "bits_per_weight": run.bits_per_weight,
            "seconds": run.seconds["total"], "stage_seconds": run.seconds, "config": cfg.to_dict(),
            "calibration": run.calibration}


def _fp_row(store, lm, args) -> dict:
    """Full-precision perplexities, stored once per model and evaluation settings (a run of method "fp")."""
    config = {"method": "fp", "eval_seqlen": args.eval_seqlen, "windows": args.windows}
    run_id = store.find_done(model_source=lm.source, config=config) if store is not None else None
    have = {}
    if run_id is not None:
        have = {p["corpus"]: p["value"] for p in store.get(run_id)["perplexities"] if p["seqlen"] == args.eval_seqlen}
    missing = [c for c in args.eval if c not in have]
    if missing:
        if run_id is None and store is not None:
            run_id = store.create(label=f"FP ({lm.card.get('weights', 'full precision')})", model_source=lm.source,
                                  model_card=lm.card, config=config)
        sub = argparse.Namespace(**{**vars(args), "eval": missing})
        have.update(_evaluate(store, run_id, lm.model, lm.tokenizer, sub))
        if store is not None:
            store.finish(run_id, status="done")
    return {"id": run_id, "label": "FP", "ppl": have, "bits_per_weight": None, "seconds": None}


def cmd_app(args) -> int:
    app = Path(__file__).resolve().parent.parent / "app.py"
    if not app.is_file():
        raise UsageError(f"The dashboard's app.py is not next to septq_core ({app}); run from a clone of the project.")
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", args.address,
           "--server.port", str(args.port), "--server.fileWatcherType", "none", "--server.headless", "true"]
    return subprocess.call(cmd, cwd=app.parent)


def _check_corpora(args) -> None:
    """Every --eval corpus must be readable before hours of work start (a CorpusError says what is missing)."""
    from .data import load_eval_corpus

    for corpus in args.eval:
        load_eval_corpus(corpus)


def cmd_quantize(args) -> int:
    cfg = _config(args, args.method, args.bits, args.reserve_ratio)
    _check_corpora(args)
    store = None if args.no_store else _store(args)
    lm, *_ = _load(args.model, args)
    if lm is None:
        raise UsageError(f"{args.model} is an exported quantized model: quantize its source model instead.")
    row = _quantize_one(store, lm, cfg, args, save=args.save)
    rows = [_fp_row(store, lm, args), row] if args.eval else [row]
    print(_table(rows, args.eval))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str) + "\n")
    return 0


def cmd_eval(args) -> int:
    _check_corpora(args)
    store = _store(args)
    if (args.model is None) == (args.run is None):
        raise UsageError("Give exactly one of --model SRC (a model or an exported directory) and --run ID.")
    if args.run is not None:
        saved = store.get(args.run).get("saved_to")
        if not saved:
            raise UsageError(f"Run {args.run} was not saved with --save, so its weights are not on disk; "
                             "evaluate its export directory with --model DIR.")
        args.model = saved
    lm, model, tokenizer, manifest = _load(args.model, args)
    run_id = args.run
    if lm is not None and run_id is None:
        row = _fp_row(store, lm, args)
    else:
        ppl = _evaluate(store if run_id else None, run_id, model, tokenizer, args)  # an export without a run: not stored
        row = {"label": (manifest or {}).get("label", args.model), "ppl": ppl,
               "bits_per_weight": (manifest or {}).get("bits_per_weight"), "seconds": None}
    print(_table([row], args.eval))
    return 0


def sweep_configs(args) -> list:
    """The QuantConfigs of a sweep: methods x bits, and x reserve ratios for SEPTQ."""
    return [_config(args, m, b, r) for m in args.methods for b in args.bits
            for r in (args.reserve_ratios if m == "septq" else [0.01])]


def cmd_sweep(args) -> int:
    configs = sweep_configs(args)
    _check_corpora(args)
    store = _store(args)
    lm, *_ = _load(args.model, args)
    if lm is None:
        raise UsageError("sweep needs a source model, not an exported quantized one.")
    rows = [_fp_row(store, lm, args), *sweep_rows(store, lm, configs, args)]
    print(_table(rows, args.eval))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str) + "\n")
    return 0


def sweep_rows(store, lm, configs, args, on_row=None) -> list[dict]:
    """Quantize and evaluate each configuration, keeping the cells the store already holds.
    `on_row(row)` is called after each cell (to save partial results).

    A stored run counts as done when it has, for every corpus of args.eval, a
    perplexity with the same window length and the same number of windows."""
    from .evaluate import window_count

    want = {c: window_count(lm.tokenizer, c, args.eval_seqlen, args.windows or None) for c in args.eval}
    rows = []
    for i, cfg in enumerate(configs, 1):
        done = store.find_done(model_source=lm.source, config=cfg.to_dict())
        if done is not None:
            got = store.get(done)
            ppl = {p["corpus"]: p["value"] for p in got["perplexities"]
                   if p["seqlen"] == args.eval_seqlen and p["windows"] == want.get(p["corpus"])}
            if all(c in ppl for c in args.eval):
                _say(args, f"[{i}/{len(configs)}] {cfg.label}: done before ({done}), kept")
                rows.append({"id": done, "label": cfg.label, "ppl": {c: ppl[c] for c in args.eval},
                             "bits_per_weight": got["bits_per_weight"],
                             "seconds": (got.get("seconds") or {}).get("total"), "stage_seconds": got.get("seconds"),
                             "config": cfg.to_dict(),
                             "calibration": got.get("calibration") or {}, "kept": True})
                if on_row is not None:
                    on_row(rows[-1])
                continue
        _say(args, f"[{i}/{len(configs)}] {cfg.label}")
        rows.append({**_quantize_one(store, lm, cfg, args), "kept": False})
        if on_row is not None:
            on_row(rows[-1])
    return rows


def cmd_runs(args) -> int:
    store = _store(args)
    if args.action == "list":
        rows = store.list()
        if not rows:
            print("no runs yet: start one with `septq quantize` or in the dashboard")
        for r in rows:
            bpw = f"{r['bits_per_weight']:.3f}" if r.get("bits_per_weight") else "-"
            print(f"{r['id']}  {r['status']:9s}  {bpw:>6s}  {r['label']}  ({r['model_source']})")
        return 0
    if args.id is None:
        raise UsageError(f"`septq runs {args.action}` needs a run id (see `septq runs list`).")
    if args.action == "show":
        print(json.dumps(store.get(args.id), indent=2, default=str))
    elif args.action == "export":
        out = Path(args.out or f"{args.id}.csv")
        store.export(out, [args.id])
        print(out)
    elif args.action == "delete":
        store.delete(args.id)
        print(f"deleted {args.id}")
    return 0


def _store(args):
    from .store import RunStore

    return RunStore(args.home)


def build_parser() -> argparse.ArgumentParser:
    # common options, accepted before or after the command (SUPPRESS: a later default does not undo an earlier flag)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", default=argparse.SUPPRESS, help="run store folder (default $SEPTQ_HOME or ~/.septq)")
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress, only the result table")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    parser = argparse.ArgumentParser(prog="septq", description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_parser = sub.add_parser
    sub.add_parser = lambda *a, **k: _add_parser(*a, parents=[common], **k)

    p = sub.add_parser("app", help="start the dashboard")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--address", default="127.0.0.1")
    p.set_defaults(func=cmd_app)

    def model_args(p, eval_default):
        p.add_argument("--model", default=None, help="HF id, directory, .gguf or export (default: embedded SmolLM2-135M)")
        p.add_argument("--device", default="auto")
        p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
        p.add_argument("--eval", nargs="*", default=eval_default, metavar="CORPUS",
                       help="wikitext2, ptb, c4, demo or a .txt/.jsonl file")
        p.add_argument("--eval-seqlen", type=int, default=512, help="evaluation window (tokens)")
        p.add_argument("--windows", type=int, default=40, help="evaluation windows per corpus (0 = all)")

    def quant_args(p):
        p.add_argument("--preset", default="preview", choices=["preview", "paper"])
        p.add_argument("--group-size", type=int, help="columns per grid (0 = one grid per row)")
        p.add_argument("--mask-scope", choices=["matrix", "layer", "model"])
        p.add_argument("--calib", help="calibration corpus (default: the preset's)")
        p.add_argument("--nsamples", type=int)
        p.add_argument("--seqlen", type=int)
        p.add_argument("--seed", type=int)
        p.add_argument("--json", help="also write the result rows to this JSON file")

    p = sub.add_parser("quantize", help="quantize, evaluate, store (and save) one configuration",
                       epilog="example: septq quantize --method septq --bits 3 --eval demo --save out/septq3",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(p, ["demo"])
    quant_args(p)
    p.add_argument("--method", default="septq", choices=["septq", "gptq", "rtn"])
    p.add_argument("--bits", type=int, default=3)
    p.add_argument("--reserve-ratio", type=float, default=0.01)
    p.add_argument("--save", help="export the quantized model to this directory")
    p.add_argument("--no-store", action="store_true", help="do not record the run")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("eval", help="perplexity of a model, an export directory, or a saved run",
                       epilog="example: septq eval --model out/septq3 --eval demo wikitext2",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(p, ["demo"])
    p.add_argument("--run", help="a stored run id that was saved with --save")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sweep", help="methods x bits (x reserve ratios), resuming finished cells",
                       epilog="example: septq sweep --methods rtn gptq septq --bits 2 3 4 --eval demo wikitext2",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(p, ["demo"])
    quant_args(p)
    p.add_argument("--methods", nargs="+", default=["rtn", "gptq", "septq"], choices=["rtn", "gptq", "septq"])
    p.add_argument("--bits", nargs="+", type=int, default=[2, 3, 4])
    p.add_argument("--reserve-ratios", nargs="+", type=float, default=[0.01], help="SEPTQ only")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("runs", help="list, show, export or delete stored runs")
    p.add_argument("action", choices=["list", "show", "export", "delete"])
    p.add_argument("id", nargs="?")
    p.add_argument("--out", help="export: a .csv or .json file (default ID.csv)")
    p.set_defaults(func=cmd_runs)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line parsed, with the common options (given before or after the command) filled in."""
    args = build_parser().parse_args(argv)
    for name, default in (("home", None), ("quiet", False), ("debug", False)):
        setattr(args, name, getattr(args, name, default))
    return args


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    if args.quiet:  # transformers' own bars and notices too
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        os.environ["TRANSFORMERS_VERBOSITY"] = "error"
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    import septq_core as sq

    from .export import ExportError
    from .store import StoreError

    usage = (UsageError, sq.ConfigError, sq.CorpusError, sq.LoadError, StoreError, ExportError)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("septq: interrupted; finished runs are stored, run the same command again to go on", file=sys.stderr)
        return 130
    except usage as exc:
        if args.debug:
            raise
        print(f"septq: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - one line unless --debug
        if args.debug:
            raise
        print(f"septq: failed: {type(exc).__name__}: {exc} (run again with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
