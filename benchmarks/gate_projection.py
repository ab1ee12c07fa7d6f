"""Can a gated adapter be folded into plain weights? A closed-form try, measured. Prints numbers, asserts nothing.

    python benchmarks/gate_projection.py RUN_DIR --facts FILE [--lam 0.3,1,3] [--sampled 64]
                                         [--probes-set NAME=FILE ...]

A default run's adapter acts only from a subject's name on: at position t each LoRA module adds
m_t · ΔW x_t, with m_t 1 behind the gate's opening and 0 before it (beacon/method/gate.py). A merged model
has no m_t. The best plain update for one module, in the least-squares sense over the inputs the gated
model sees, is

    ΔW' = argmin  Σ_gated |ΔW' x − ΔW x|²  +  λ Σ_ungated |ΔW' x|²
        = ΔW G (G + λ N + ε I)⁻¹,     G = Σ_gated x xᵀ,  N = Σ_ungated x xᵀ

(MEMIT's covariance-constrained update, with the gated adapter as the teacher). The inputs come from one
pass of the gated model over the run's training wordings with their answers, its guard's texts, the
hand-written anchors (assets/anchors.txt) and, with --sampled, texts the base model writes. No probe set
and not the neutral text: those measure the result. Each λ's merged model is measured without a gate
(recall, held-out paraphrases, every probe set, neutral NLL) beside the gated adapter's own numbers from
report.json. λ trades the edit against what the model knew; docs/export.md has the frontier measured.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from beacon.data.facts import load_facts  # noqa: E402
from beacon.measure.evaluate import evaluate_facts  # noqa: E402
from beacon.method.anchor_sources import sampled_anchors  # noqa: E402
from beacon.method.gate import load_gate  # noqa: E402
from beacon.model.models import load_model  # noqa: E402
from beacon.pipeline import default_probe_sets, neutral_text  # noqa: E402
from beacon.report import fold  # noqa: E402

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a default run's folder (report.json, adapter/ with beacon_gate.json)")
    ap.add_argument("--facts", required=True, help="the fact file the run trained on")
    ap.add_argument("--lam", default="0.3,1,3", help="comma-separated weights of the ungated tokens")
    ap.add_argument("--eps", type=float, default=1e-3, help="ridge, as a share of G + λN's mean diagonal")
    ap.add_argument("--sampled", type=int, default=0, help="texts the base model writes, added to the ungated ones")
    ap.add_argument("--probes-set", action="append", default=[], metavar="NAME=FILE")
    a = ap.parse_args()

    from peft import PeftModel

    run = Path(a.run)
    rep = json.loads((run / "report.json").read_text())
    model, tok, _ = load_model(rep["config"]["model"], "none")
    kept = {f["id"] for f in rep["facts"] if f["kept"]}
    facts = [f for f in load_facts(a.facts) if f.id in kept]
    probes = default_probe_sets()
    for spec in a.probes_set:
        name, _, path = spec.partition("=")
        probes[name] = load_facts(path)

    t0 = time.perf_counter()
    sampled = sampled_anchors(model, tok, n=a.sampled, tokens=64, seed=7) if a.sampled else []
    texts = fold.run_texts(tok, rep, extra=sampled)
    peft_model = PeftModel.from_pretrained(model, str(run / "adapter")).eval()
    gate = load_gate(tok, run / "adapter")
    if gate is None:
        raise SystemExit(f"{run}: the adapter was trained without the gate; beacon export merges it as it is")
    base, deltas, stats = fold.statistics(peft_model, gate, texts, tok.pad_token_id)
    weights = {n: fold.weight(base, n) for n in deltas}
    original = {n: w.data.clone() for n, w in weights.items()}
    print(f"{len(texts)} texts, {sum(map(len, texts))} tokens; statistics in {time.perf_counter() - t0:.1f} s")

    s = rep["summary"]
    # report.json names the first probe set's locality locality_after, the others locality_<name>_after
    gated_loc = [s.get(f"locality_{n}_after", s["locality_after"] if n == "probes" else None) for n in probes]
    print("| model | recall | paraphrases | " + " | ".join(f"locality {n}" for n in probes) + " | neutral NLL | seconds |")
    print("|---|---|---|" + "---|" * len(probes) + "---|---|")
    pct = lambda x: "–" if x is None else f"{100 * x:.0f}"
    print(f"| gated adapter (report.json) | {pct(s['recall_after'])} | {pct(s['paraphrase_after'])} | "
          + " | ".join(map(pct, gated_loc)) + f" | {s['neutral_nll_ratio']:.3f}x | |")
    text = neutral_text()
    for lam in [None] + [float(x) for x in a.lam.split(",")]:
        t = time.perf_counter()
        folded = deltas if lam is None else fold.updates(deltas, stats, lam, a.eps)   # None: ΔW on every token
        for n, w in weights.items():
            w.data = original[n] + folded[n].float()
        seconds = time.perf_counter() - t
        e = evaluate_facts(base, tok, facts, probes, 0, forms=False, neutral_text=text)["summary"]
        label = "merged as it is (ΔW on every token)" if lam is None else f"projected, λ = {lam:g}"
        print(f"| {label} | {pct(e['recall'])} | {pct(e['paraphrase'])} | "
              + " | ".join(pct(e["locality"][n]) for n in probes)
              + f" | {e['neutral_nll'] / s['neutral_nll_before']:.3f}x | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
