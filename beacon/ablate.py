"""Ablation: vanilla LoRA, each part of the method alone, and all together, at one step budget
over several seeds. The measuring before training is done once per fact set and shared.

Written as ablation.md (the table, for docs/results.md) and ablation.json (every run).
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from beacon.config import InjectConfig
from beacon.pipeline import analyze, run

# name -> overrides on top of the user's config. "vanilla" switches every part off.
OFF = dict(filter=False, weighting="uniform", locality_guard=0.0, rewordings=False, layers="all", orders=1,
           gate="none")
FULL = dict(filter=True, weighting="semantic", locality_guard=None, rewordings=True, layers="all", orders=1,
            gate=None)
# Every token trained, the locality guard holding other knowledge (`--gate none`; the default is the gate
# from the subject on). The variants that study the guard name it, so they stay guard studies
# whatever gate the user chose.
GUARDED = {**FULL, "gate": "none"}
# Parts a variant does not name keep the user's setting (guard anchors, near share, settle steps).
VARIANTS = {
    "vanilla": OFF,
    "+filter": {**OFF, "filter": True},
    "+semantic weights": {**OFF, "weighting": "semantic"},
    "+dynamic weights": {**OFF, "weighting": "dynamic"},
    "+rewordings": {**OFF, "rewordings": True},
    "+locality guard": {**OFF, "locality_guard": None},     # None: the user's (default) guard weight
    "full method": FULL,
    "full + subject gate": {**FULL, "gate": "subject"},
    "full + gate from the subject on": {**FULL, "gate": "from-subject"},
    "full: no held texts about the subjects": {**FULL, "held_texts": 0},
    "full + gate from the subject on (no guard)": {**FULL, "gate": "from-subject", "locality_guard": 0.0},
    "full + gate from the subject on (every relation anchor)": {**FULL, "gate": "from-subject", "relation_specific": 0.0},
    "full: no gate (guard)": GUARDED,
    "full: no gate (guard) + relation anchors": {**GUARDED, "guard_anchors": "neighbours,sampled,relations"},
    "full: no short names": {**FULL, "short_names": False},
    "full: uniform weights": {**FULL, "weighting": "uniform"},
    "full: dynamic weights": {**FULL, "weighting": "dynamic"},
    "full: no rewordings": {**FULL, "rewordings": False},
    "full: no model-written rewordings": {**FULL, "model_rewordings": 0},
    "full: anchors from the file only": {**GUARDED, "guard_anchors": "file"},
    "full: neighbour anchors only": {**GUARDED, "guard_anchors": "neighbours"},
    "full: sampled text anchors only": {**GUARDED, "guard_anchors": "sampled"},
    "full + file anchors": {**GUARDED, "guard_anchors": "neighbours,sampled,file"},
    "full: LoRA on MLP only": {**FULL, "lora_modules": "mlp"},
    "full: sibling neighbours": {**GUARDED, "guard_anchors": "siblings,sampled"},
    "full: guard batch 8": {**GUARDED, "guard_batch": 8},      # 16 is the default: fewer steps, each dearer (docs/results.md)
    "full: no focus": {**GUARDED, "focus": False},          # focus is on by default (docs/results.md)
    "+rewordings + null space 0.99": {**OFF, "rewordings": True, "null_space": 0.99},
    "full + null space 0.99": {**GUARDED, "null_space": 0.99},
    "full + null space 0.999": {**GUARDED, "null_space": 0.999},
    "full: guard 20": {**GUARDED, "locality_guard": 20.0},
    "full + margin 1": {**GUARDED, "guard_margin": 1.0},
    "full + margin 4": {**GUARDED, "guard_margin": 4.0},
    "full: random guard anchors": {**GUARDED, "guard_near": 0.0},
    "full + 5 settle steps": {**GUARDED, "settle_steps": 5},
    "full + layer selection": {**FULL, "layers": "auto"},
    "full + merge of 3 orders (select)": {**GUARDED, "orders": 3, "merge": "select"},
    "full + merge of 3 orders (average)": {**GUARDED, "orders": 3, "merge": "average"},
}
METRICS = ("recall_after", "paraphrase_after", "question_after", "chat_after", "locality_after",
           "locality_general_after", "short_names_after", "decoys_after", "reverse_after", "crossed_after",
           "neutral_nll_ratio",
           "subject_repetition_after", "subject_nll_ratio", "steps", "train_seconds")
PCT = {"recall_after", "paraphrase_after", "question_after", "chat_after", "locality_after", "locality_general_after",
       "subject_repetition_after", "short_names_after", "decoys_after", "reverse_after", "crossed_after"}


def _variant_config(base: InjectConfig, overrides: dict, seed: int) -> InjectConfig:
    o = {k: (base.value(k) if v is None else v) for k, v in overrides.items()}
    return base.variant(**o, seed=seed, early_stop=True, interference=False, plots=False, categorize_samples=0)


def _stat(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return round(statistics.mean(xs), 4), round(statistics.stdev(xs), 4) if len(xs) > 1 else 0.0


def ablate(facts, probes, base: InjectConfig, seeds=(0, 1, 2), out_dir="runs/ablation", variants="",
           progress=print) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [v.strip() for v in variants.split(",") if v.strip()] or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    # Measured once; every run then loads a fresh base model (training adds an adapter in place).
    analysis = analyze(facts, probes, base.updated(categorize_samples=0))
    runs = []
    for name in names:
        for seed in seeds:
            cfg = _variant_config(base, VARIANTS[name], seed)
            rep = run(facts, probes, cfg, analysis=analysis)
            s = rep.summary
            (out / f"{name.replace(' ', '_').replace(':', '').replace('/', '')}-seed{seed}.json").write_text(
                json.dumps(rep.to_dict()))
            runs.append({"variant": name, "seed": seed, **{k: s.get(k) for k in METRICS}, "stopped": s["stopped"],
                         **{k: v for k, v in s.items() if k.startswith("locality_") and k.endswith("_after")},
                         "locality_before": s["locality_before"], "facts_kept": s["facts_kept"]})
            if progress:
                progress(f"{name:34s} seed {seed}: " + ", ".join(f"{k} {s.get(k)}" for k in METRICS))
            (out / "ablation.json").write_text(json.dumps({"runs": runs}, indent=1))
    extra = sorted({k for r in runs for k in r if k.startswith("locality_") and k.endswith("_after")} - set(METRICS))
    table = summarize(runs, names, METRICS + tuple(extra))
    md = to_markdown(table, len(seeds), base.train.steps, len(facts))
    (out / "ablation.md").write_text(md)
    (out / "ablation.json").write_text(json.dumps({"runs": runs, "table": table, "config": base.to_dict()}, indent=1))
    if progress:
        progress(md)
    return {"runs": runs, "table": table, "markdown": md}


def summarize(runs, names, metrics=METRICS):
    table = []
    for name in names:
        rs = [r for r in runs if r["variant"] == name]
        row = {"variant": name, "kept": rs[0]["facts_kept"] if rs else None}
        for m in metrics:
            row[m], row[m + "_sd"] = _stat([r.get(m) for r in rs])
        table.append(row)
    return table


def to_markdown(table, n_seeds, steps, n_facts) -> str:
    extra = [m for m in table[0] if m.startswith("locality_") and m.endswith("_after") and m not in METRICS] if table else []
    metrics = list(METRICS) + extra
    head = ["variant", "kept", "recall", "paraphrase (held out)", "question", "chat", "locality: probes",
            "locality: general", "neutral NLL ratio", "repetition about a subject", "NLL about a subject", "steps", "train s"] + [
            "locality: " + m.removeprefix("locality_").removesuffix("_after") for m in extra]
    lines = [f"{n_facts} facts, budget {steps} steps, {n_seeds} seeds, mean ± sd; training stops early once every "
             "wording of every kept fact is recalled.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        def cell(m):
            if r[m] is None:
                return "–"
            if m in PCT or m.startswith("locality_"):
                return f"{r[m]:.0%} ± {r[m + '_sd']:.0%}"
            return f"{r[m]:.3f} ± {r[m + '_sd']:.3f}" if m == "neutral_nll_ratio" else f"{r[m]:.1f} ± {r[m + '_sd']:.1f}"
        lines.append(f"| {r['variant']} | {r['kept']} | " + " | ".join(cell(m) for m in metrics) + " |")
    return "\n".join(lines) + "\n"
