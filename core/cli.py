"""Command line: `beacon inject|ablate|app ...` (or `python -m core ...`)."""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from .config import InjectConfig
from .facts import FactsError, load_facts
from .models import DEFAULT_MODEL, QUANTIZATIONS, ModelError


def _add_run_options(p: argparse.ArgumentParser) -> None:
    d = InjectConfig()
    p.add_argument("--facts", required=True, help="CSV, JSON or JSONL file of facts")
    p.add_argument("--probes", help="facts the model should keep knowing, in place of the shipped probe sets "
                                    "(assets/probes.csv and assets/probes_general.csv)")
    p.add_argument("--probes-set", action="append", default=[], metavar="NAME=FILE",
                   help="one more probe set, reported as locality_NAME (repeatable)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="Hub id or local path of a causal LM")
    p.add_argument("--quantization", choices=QUANTIZATIONS, default=d.quantization,
                   help="auto: NF4 4-bit on a CUDA GPU, full precision on a CPU")
    p.add_argument("--steps", type=int, default=d.steps, help="step budget (early stop ends sooner)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--rank", type=int, default=d.rank)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--filter", action=argparse.BooleanOptionalAction, default=d.filter,
                   help="detrimental-data filter on semantic distance")
    p.add_argument("--filter-strength", type=float, default=d.filter_strength,
                   help="z-score above which a fact's distance is an outlier (lower drops more)")
    p.add_argument("--weighting", choices=("semantic", "dynamic", "uniform"), default=d.weighting,
                   help="semantic: weights from the distances before training; dynamic: from each step's distances")
    p.add_argument("--rewordings", action=argparse.BooleanOptionalAction, default=d.rewordings,
                   help="also train each fact in forms Beacon writes from its subject and relation")
    p.add_argument("--model-rewordings", type=int, default=d.model_rewordings, metavar="N",
                   help="rewordings per fact the base model writes itself (0 = none)")
    p.add_argument("--train-paraphrases", type=int, default=d.train_paraphrases, metavar="N",
                   help="train on the first N of each fact's own paraphrases (the rest stay held out)")
    p.add_argument("--guard-anchors", default=d.guard_anchors, metavar="SOURCES",
                   help="comma-separated: neighbours (facts near yours, written by the base model), sampled (the "
                        "base model's own text), file (assets/anchors.txt)")
    p.add_argument("--lora-modules", choices=("all-linear", "mlp"), default=d.lora_modules)
    p.add_argument("--neighbours-per-fact", type=int, default=d.neighbours_per_fact, metavar="N")
    p.add_argument("--locality-guard", type=float, default=d.locality_guard, metavar="W",
                   help="weight of the KL term that keeps the model close to the base on unrelated text")
    p.add_argument("--guard-near", type=float, default=d.guard_near, metavar="SHARE",
                   help="share of each guard batch drawn from the anchors nearest the facts (0 = uniform)")
    p.add_argument("--settle-steps", type=int, default=d.settle_steps, metavar="N",
                   help="with the guard on, train N more steps once every fact is recalled (0 = stop at once; "
                        "measured on the samples it lowers locality, see README)")
    p.add_argument("--layers", default=d.layers,
                   help="where to train: all, auto (semantic layer selection) or indices like 20-29")
    p.add_argument("--orders", type=int, default=d.orders, help="train K adapters on K data orders and merge them")
    p.add_argument("--merge", choices=("select", "average"), default=d.merge,
                   help="merge rule for --orders > 1: per-parameter random selection, or averaging")
    p.add_argument("--continue-from", metavar="RUN_DIR",
                   help="an earlier run folder: add these facts on top of its adapter and report what its facts lose")
    p.add_argument("--keep", default="", help="comma-separated ids to keep even if a check drops them")
    p.add_argument("--drop", default="", help="comma-separated ids to drop")
    p.add_argument("--no-interference", action="store_true", help="skip the interference matrix")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--trust-remote-code", action="store_true", help="run code shipped with the model (off by default)")


def _config(a) -> InjectConfig:
    ids = lambda s: [x.strip() for x in s.split(",") if x.strip()]
    return InjectConfig(model=a.model, quantization=a.quantization, steps=a.steps, lr=a.lr, rank=a.rank,
                        batch_size=a.batch_size, seed=a.seed, filter=a.filter, filter_strength=a.filter_strength,
                        weighting=a.weighting, locality_guard=a.locality_guard, guard_near=a.guard_near,
                        settle_steps=a.settle_steps, keep=ids(a.keep), rewordings=a.rewordings,
                        train_paraphrases=a.train_paraphrases, model_rewordings=a.model_rewordings, guard_anchors=a.guard_anchors,
                        neighbours_per_fact=a.neighbours_per_fact, lora_modules=a.lora_modules,
                        drop=ids(a.drop), interference=not a.no_interference, plots=not a.no_plots,
                        layers=a.layers, orders=a.orders, merge=a.merge, continue_from=a.continue_from,
                        trust_remote_code=a.trust_remote_code)


def _probe_sets(a):
    """None (the shipped sets), or {name: facts} from --probes and --probes-set."""
    from .pipeline import default_probe_sets

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
    from .pipeline import run

    facts = load_facts(a.facts)
    probes = _probe_sets(a)
    out = Path(a.out)
    stop = {"flag": False}

    def on_sigint(*_):  # first Ctrl-C stops training and keeps the adapter; a second one aborts
        if stop["flag"]:
            raise KeyboardInterrupt
        stop["flag"] = True
        print("\n  stopping after this step (Ctrl-C again to abort)...", flush=True)

    signal.signal(signal.SIGINT, on_sigint)
    report = run(facts, probes, _config(a), out_dir=out, progress=_print_progress, should_stop=lambda: stop["flag"])
    s = report["summary"]
    print(json.dumps({k: s.get(k) for k in ("facts_in", "facts_kept", "conflicts", "dropped", "recall_before",
                                         "recall_after", "paraphrase_before", "paraphrase_after",
                                         "question_after", "chat_after", "locality_before", "locality_after",
                                         "locality_general_before", "locality_general_after", "neutral_nll_ratio",
                                         "training_wordings", "steps", "stopped", "train_seconds",
                                         "device", "quantization")}, indent=1))
    print(f"wrote {out / 'report.json'} and {out / 'adapter'}")
    return 0


def cmd_ablate(a) -> int:
    from .ablate import ablate

    facts = load_facts(a.facts)
    probes = _probe_sets(a)
    seeds = [int(s) for s in a.seeds.split(",")]
    ablate(facts, probes, _config(a), seeds=seeds, out_dir=Path(a.out), variants=a.variants)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core", description="Beacon: inject facts into a language model with LoRA.")
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
