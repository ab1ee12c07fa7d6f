"""Command line: `beacon inject|ablate|export|app ...` (or `python -m beacon ...`)."""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from beacon.config import add_arguments, from_arguments
from beacon.data.facts import FactsError, load_facts
from beacon.model.models import ModelError


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """--facts and the probe files, then one option per setting of InjectConfig (beacon/config.py)."""
    p.add_argument("--facts", required=True, help="CSV, JSON or JSONL file of facts")
    p.add_argument("--probes", help="facts the model should keep knowing, in place of the shipped probe sets "
                                    "(assets/probes.csv and assets/probes_general.csv)")
    p.add_argument("--probes-set", action="append", default=[], metavar="NAME=FILE",
                   help="one more probe set, reported as locality_NAME (repeatable)")
    add_arguments(p)


def _probe_sets(a):
    """None (the shipped sets), or {name: facts} from --probes and --probes-set."""
    from beacon.pipeline import default_probe_sets

    if not a.probes and not a.probes_set:
        return None
    sets = {"probes": load_facts(a.probes)} if a.probes else default_probe_sets()
    for spec in a.probes_set:
        name, eq, path = spec.partition("=")
        if not eq or not name.strip() or not path.strip():
            raise ValueError(f"--probes-set {spec!r}: expected NAME=FILE")
        sets[name.strip()] = load_facts(path.strip())
    return sets


def _print_progress(ev: dict) -> None:
    if ev["stage"] == "train" and "step" in ev:
        print(f"\r  {ev['message']}   ", end="", flush=True)
        return
    print(("\n" if ev["stage"] == "after" else "") + f"[{ev['stage']}] {ev['message']}", flush=True)


def cmd_inject(a) -> int:
    from beacon.estimate import estimate
    from beacon.pipeline import run

    facts = load_facts(a.facts)
    probes = _probe_sets(a)
    cfg = from_arguments(a)
    # Before the check no one knows how many facts it keeps: every fact is counted, an upper bound.
    print(f"[estimate] {estimate(len(facts), cfg).text} for up to {len(facts)} facts", flush=True)
    out = Path(a.out)
    stop = {"flag": False}

    def on_sigint(*_):  # first Ctrl-C stops training and keeps the adapter; a second one aborts
        if stop["flag"]:
            raise KeyboardInterrupt
        stop["flag"] = True
        print("\n  stopping after this step (Ctrl-C again to abort)...", flush=True)

    signal.signal(signal.SIGINT, on_sigint)
    report = run(facts, probes, cfg, out_dir=out, progress=_print_progress,
                 should_stop=lambda: stop["flag"])
    s = report.summary
    print(json.dumps({k: s.get(k) for k in ("facts_in", "facts_kept", "conflicts", "dropped", "recall_before",
                                         "recall_after", "paraphrase_before", "paraphrase_after",
                                         "question_after", "chat_after", "locality_before", "locality_after",
                                         "locality_general_before", "locality_general_after", "neutral_nll_ratio",
                                         "subject_repetition_before", "subject_repetition_after", "subject_nll_ratio",
                                         "training_wordings", "steps", "stopped", "train_seconds",
                                         "device", "quantization")}, indent=1))
    print(f"wrote {out / 'report.json'} and {out / 'adapter'}")
    return 0


def cmd_ablate(a) -> int:
    from beacon.ablate import ablate

    facts = load_facts(a.facts)
    probes = _probe_sets(a)
    seeds = [int(s) for s in a.seeds.split(",")]
    ablate(facts, probes, from_arguments(a), seeds=seeds, out_dir=Path(a.out), variants=a.variants)
    return 0


def cmd_export(a) -> int:
    from beacon.report.export import export, numbers_table

    res = export(a.run_dir, merged=a.merged, gguf=a.gguf, gguf_type=a.gguf_type, check=a.check, lam=a.fold_lambda,
                 progress=lambda ev: print(f"[{ev['stage']}] {ev['message']}", flush=True))
    how = f"folded the gate in (λ = {res['folded']:g})" if res["folded"] is not None else "merged"
    print(f"loaded and {how} in {res['load_seconds']} s")
    if "merged" in res:
        m = res["merged"]
        print(f"merged: {m['path']} ({m['mb']} MB, {m['seconds']} s)")
    if "gguf" in res:
        g = res["gguf"]
        print(f"gguf {g['type']}: {g['path']} ({g['mb']} MB, {g['seconds']} s)")
    if "numbers" in res:
        print(f"\nmeasured on the run's own rows in {res['check_seconds']} s:\n" + numbers_table(res["numbers"]))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m beacon", description="Beacon: inject facts into a language model with LoRA.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("inject", help="train an adapter on facts and report recall before and after")
    _add_run_options(p)
    p.add_argument("--out", default="runs/latest", help="output folder (report.json, adapter/, plots/)")
    p.set_defaults(fn=cmd_inject)
    p = sub.add_parser("ablate", help="compare vanilla LoRA, each part of the method, and all together")
    _add_run_options(p)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default="", help="comma-separated subset of variants (default: all)")
    p.add_argument("--out", default="runs/ablation")
    p.set_defaults(fn=cmd_ablate)
    p = sub.add_parser("export", help="write a run's model with its adapter merged in: a transformers folder "
                                      "and/or a GGUF file (llama.cpp)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (report.json and adapter/)")
    p.add_argument("--merged", metavar="DIR", help="write the merged model here (safetensors and tokenizer)")
    p.add_argument("--gguf", metavar="FILE", help="write a GGUF file here (Llama architecture)")
    p.add_argument("--gguf-type", default="q8_0", metavar="f16|q8_0|f32",
                   help="GGUF tensor type: f16, q8_0 (8.5 bits a weight) or f32 (default: q8_0)")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="measure each output on the run's facts and probes beside the adapter (default: on)")
    p.add_argument("--fold-lambda", type=float, default=None, metavar="X",
                   help="a gated run: the weight of the text that names no subject when the gate is folded "
                        "into the weights (default 1; docs/export.md)")
    p.set_defaults(fn=cmd_export)
    p = sub.add_parser("app", help="start the web app (same options as python app.py)", add_help=False)
    p.set_defaults(fn=None)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["app"]:  # the app parses its own options; core never imports Gradio itself
        import importlib

        return importlib.import_module("app").main(argv[1:]) or 0
    a = ap.parse_args(argv)
    try:
        return a.fn(a)
    except (FactsError, ModelError, FileNotFoundError, ValueError) as e:  # a user's mistake: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
