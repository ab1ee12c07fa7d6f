"""Ablation: vanilla LoRA, each part of the method alone, and all together, at one step budget
over several seeds. The measuring before training is done once per fact set and shared.

Written as ablation.md (the table for the README) and ablation.json (every run).
"""
from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

from .config import InjectConfig
from .pipeline import analyze, run

# name -> overrides on top of the user's config. "vanilla" switches every part off.
OFF = dict(filter=False, weighting="uniform", locality_guard=0.0, layers="all", orders=1)
FULL = dict(filter=True, weighting="semantic", locality_guard=None, layers="all", orders=1)
# Parts a variant does not name keep the user's setting (the guard's near share and settle steps).
VARIANTS = {
    "vanilla": OFF,
    "+filter": {**OFF, "filter": True},
    "+semantic weights": {**OFF, "weighting": "semantic"},
    "+locality guard": {**OFF, "locality_guard": None},     # None: the user's (default) guard weight
    "full method": FULL,
    "full: random guard anchors": {**FULL, "guard_near": 0.0},
    "full + 5 settle steps": {**FULL, "settle_steps": 5},
    "full + layer selection": {**FULL, "layers": "auto"},
    "full + merge of 3 orders (select)": {**FULL, "orders": 3, "merge": "select"},
    "full + merge of 3 orders (average)": {**FULL, "orders": 3, "merge": "average"},
}
METRICS = ("recall_after", "paraphrase_after", "locality_after", "steps", "train_seconds")


def _variant_config(base: InjectConfig, overrides: dict, seed: int) -> InjectConfig:
    o = {k: (getattr(base, k) if v is None else v) for k, v in overrides.items()}
    return dataclasses.replace(base, **o, seed=seed, early_stop=True, interference=False, plots=False,
                               categorize_samples=0)


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
    analysis = analyze(facts, probes, dataclasses.replace(base, categorize_samples=0))
    analysis.pop("_bundle")  # every run starts from a freshly loaded base model
    runs = []
    for name in names:
        for seed in seeds:
            cfg = _variant_config(base, VARIANTS[name], seed)
            rep = run(facts, probes, cfg, analysis=analysis)
            s = rep["summary"]
            runs.append({"variant": name, "seed": seed, **{k: s[k] for k in METRICS},
                         "locality_before": s["locality_before"], "facts_kept": s["facts_kept"]})
            if progress:
                progress(f"{name:34s} seed {seed}: recall {s['recall_after']}, paraphrase {s['paraphrase_after']}, "
                         f"locality {s['locality_after']}, {s['steps']} steps, {s['train_seconds']} s")
            (out / "ablation.json").write_text(json.dumps({"runs": runs}, indent=1))
    table = summarize(runs, names)
    md = to_markdown(table, len(seeds), base.steps, len(facts))
    (out / "ablation.md").write_text(md)
    (out / "ablation.json").write_text(json.dumps({"runs": runs, "table": table, "config": base.to_dict()}, indent=1))
    if progress:
        progress(md)
    return {"runs": runs, "table": table, "markdown": md}


def summarize(runs, names):
    table = []
    for name in names:
        rs = [r for r in runs if r["variant"] == name]
        row = {"variant": name, "kept": rs[0]["facts_kept"] if rs else None}
        for m in METRICS:
            row[m], row[m + "_sd"] = _stat([r[m] for r in rs])
        table.append(row)
    return table


def to_markdown(table, n_seeds, steps, n_facts) -> str:
    lines = [f"{n_facts} facts, budget {steps} steps, {n_seeds} seeds, mean ± sd; training stops early once every kept fact is recalled.",
             "", "| variant | kept | recall | paraphrase | locality | steps | train s |", "|---|---|---|---|---|---|---|"]
    for r in table:
        cell = lambda m, pct=True: ("–" if r[m] is None else
                                    (f"{r[m]:.0%} ± {r[m + '_sd']:.0%}" if pct else f"{r[m]:.1f} ± {r[m + '_sd']:.1f}"))
        lines.append(f"| {r['variant']} | {r['kept']} | {cell('recall_after')} | {cell('paraphrase_after')} | "
                     f"{cell('locality_after')} | {cell('steps', False)} | {cell('train_seconds', False)} |")
    return "\n".join(lines) + "\n"
