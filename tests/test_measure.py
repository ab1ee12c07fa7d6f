"""Measurement in one teacher-forced pass: it agrees with generated answers item by item, the gate's
"unchanged" rows are copied only where the gate makes them exact, and what is the same in every run of a
model is measured once."""
import json

import pytest
import torch

from beacon.measure import evaluate, measure_cache
from beacon.model import lm
from beacon import pipeline
from beacon.config import InjectConfig
from beacon.data.facts import load_facts
from beacon.model.models import load_model
from beacon.pipeline import ASSETS
from beacon.method.rewordings import chat_form, question_form

ROOT = ASSETS.parent
SAMPLES = [ASSETS / "counterfactual.csv", ROOT / "benchmarks" / "fresh" / "invented.csv",
           ROOT / "benchmarks" / "fresh" / "counterfactual.csv"]


def _generated(model, tok, prompts, targets):
    """The definition the pass reads off: the greedy answer starts with the target at a word boundary."""
    budget = max(len(lm.encode_pair(tok, "", t)[1]) for t in targets) + 3
    return [evaluate.recalls(a, t) for a, t in zip(lm.generate(model, tok, prompts, budget), targets)]


def _chat_generated(model, tok, facts):
    prompts = [chat_form(tok, f) for f in facts]
    budget = max(len(lm.encode_pair(tok, "", f.target)[1]) for f in facts) + 24
    return [evaluate.mentions(a, f.target) for a, f in zip(lm.generate(model, tok, prompts, budget), facts)]


def _disagreements(model, tok, facts):
    """Rows where one-pass recall and generated recall differ, in every form measured."""
    rows = [(f.prompt, f.target) for f in facts] + [(p, f.target) for f in facts for p in f.paraphrases] + \
        [(question_form(f), f.target) for f in facts]
    prompts, targets = [p for p, _ in rows], [t for _, t in rows]
    one = evaluate.recall_tables(model, tok, [(prompts, targets)], generated=[False])[0]
    gen = _generated(model, tok, prompts, targets)
    out = [(p, t, r["answer"]) for (p, t), r, g in zip(rows, one, gen) if r["recalled"] != g]
    chat = evaluate.chat_table(model, tok, [chat_form(tok, f) for f in facts], [f.target for f in facts],
                               [f.prompt for f in facts])
    out += [("chat: " + f.prompt, f.target, c["answer"]) for f, c, g in zip(facts, chat, _chat_generated(model, tok, facts))
            if c["recalled"] != g]
    return out, len(rows) + len(facts)


@pytest.mark.slow
def test_one_pass_recall_agrees_with_generated_recall_before_training():
    """On the base model, over a sample, the fresh sets and four probe sets (all forms of 59 facts, 168 probes):
    the same verdict for every item but those whose greedy answer differs from the target only in case
    ('"Guitarist" (' for 'guitarist': recall ignores case, the argmax does not). Measured on every shipped
    sample and probe set: 1 such item of 874."""
    model, tok, _ = load_model()
    facts = [f for path in SAMPLES for f in load_facts(path)]
    diff, n = _disagreements(model, tok, facts)
    probes = load_facts(ASSETS / "probes_general.csv") + load_facts(ROOT / "benchmarks" / "fresh" / "probes.csv") + \
        load_facts(ROOT / "benchmarks" / "fresh" / "same_subject.csv") + load_facts(ASSETS / "probes.csv")[:10]
    one = evaluate.recall_tables(model, tok, [([p.prompt for p in probes], [p.target for p in probes])],
                                 generated=[False])[0]
    gen = _generated(model, tok, [p.prompt for p in probes], [p.target for p in probes])
    diff += [(p.prompt, p.target, r["answer"]) for p, r, g in zip(probes, one, gen) if r["recalled"] != g]
    n += len(probes)
    assert n > 400 and len(diff) <= 0.005 * n, diff
    assert all(a.lower().lstrip('"“(').startswith(t.lower()[:1]) for _, t, a in diff), diff   # case only


@pytest.mark.slow
def test_one_pass_recall_agrees_with_generated_recall_after_a_default_run(tmp_path):
    """After training (the default run on fresh counterfactual edits, reloaded as a visitor would), the
    trained facts' every form and the same subjects' other facts: the same verdict, row by row."""
    from peft import PeftModel
    from beacon.method.gate import load_gate
    from beacon.pipeline import run

    facts = load_facts(ROOT / "benchmarks" / "fresh" / "counterfactual.csv")[:4]
    same = load_facts(ROOT / "benchmarks" / "fresh" / "same_subject.csv")
    cfg = InjectConfig().updated(interference=False, plots=False, model_rewordings=0, steps=80)
    run(facts, {"subject": same}, cfg, out_dir=tmp_path / "run", model=load_model())
    model, tok, _ = load_model()
    model = PeftModel.from_pretrained(model, str(tmp_path / "run" / "adapter"))
    load_gate(tok, tmp_path / "run" / "adapter").attach(model)
    diff, n = _disagreements(model, tok, facts)
    one = evaluate.recall_tables(model, tok, [([p.prompt for p in same], [p.target for p in same])],
                                 generated=[False])[0]
    gen = _generated(model, tok, [p.prompt for p in same], [p.target for p in same])
    diff += [(p.prompt, p.target, r["answer"]) for p, r, g in zip(same, one, gen) if r["recalled"] != g]
    assert sum(r["recalled"] for r in evaluate.recall_table(model, tok, [f.prompt for f in facts],
                                                              [f.target for f in facts])) == len(facts)
    assert not diff, diff


def _trained(tiny_dir, facts, gate):
    from beacon.method.train import attach_lora, train

    model, tok, _ = load_model(tiny_dir)
    cfg = InjectConfig().updated(steps=15, lr=1e-2, early_stop=False, locality_guard=0.0, gate=gate).train
    model = attach_lora(model, cfg, quantized=False)
    train(model, tok, facts, cfg=cfg)
    return model, tok


def test_unchanged_rows_are_copied_only_where_the_gate_makes_them_exact(tiny_dir):
    """Behind the gate a probe that names no trained subject is answered exactly as before, so the after
    table copies it; trained on every token, the same probes move (the claim is not true by accident)."""
    facts = load_facts(ASSETS / "invented.csv")[:4]
    probes = {"probes": load_facts(ASSETS / "probes.csv")[:12]}
    base, tok, _ = load_model(tiny_dir)
    before = evaluate.evaluate_facts(base, tok, facts, probes, forms=False)
    logprobs = {}
    for gate in ("from-subject", "none"):
        model, tok = _trained(tiny_dir, facts, gate)
        measured = evaluate.evaluate_facts(model, tok, facts, probes, forms=False)   # every row, no copies
        logprobs[gate] = [r["logprob"] for r in measured["probes"]["probes"]]
        if gate != "none":
            g = model._beacon_gate
            after = evaluate.evaluate_facts(model, tok, facts, probes, forms=False, earlier=before,
                                            unchanged=lambda text: not g.covers(tok, text))
            rows = after["probes"]["probes"]
            assert all(r.get("unchanged") for r in rows) and after["summary"]["unchanged"] == {"probes": 12}
            assert [r["logprob"] for r in rows] == logprobs[gate]                # the copy is what measuring gives
            assert not any(r.get("unchanged") for r in after["facts"])            # the facts name their subjects
    assert logprobs["from-subject"] == [r["logprob"] for r in before["probes"]["probes"]]
    assert logprobs["none"] != logprobs["from-subject"]


def test_what_is_the_same_in_every_run_of_a_model_is_measured_once(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("BEACON_CACHE", str(tmp_path))
    model, tok, info = load_model(tiny_dir)
    probes = {"probes": load_facts(ASSETS / "probes.csv")[:6]}
    facts = load_facts(ASSETS / "invented.csv")[:2]
    cfg = InjectConfig().updated(model=tiny_dir)
    first = pipeline.analyze(facts, probes, cfg, model=(model, tok, info))
    assert len(list((tmp_path / "measures").glob("probes-*.json"))) == 1
    scored = []
    real = evaluate.recall_tables
    monkeypatch.setattr(evaluate, "recall_tables", lambda m, t, groups, *a, **k: scored.append(
        sum(len(p) for p, _ in groups)) or real(m, t, groups, *a, **k))
    second = pipeline.analyze(facts, probes, cfg, model=(model, tok, info))
    short, decoys = evaluate.name_prompts(facts)
    # facts, paraphrases, questions, short names, decoys and the reverse direction: no probes
    assert scored == [len(facts) * (2 + len(facts[0].paraphrases)) + len(short) + len(decoys)
                      + len(evaluate.reverse_prompts(facts))]
    assert second.before["probes"] == json.loads(json.dumps(first.before["probes"]))
    assert second.before["summary"]["neutral_nll"] == first.before["summary"]["neutral_nll"]
    changed = {"probes": probes["probes"][:5]}
    assert measure_cache.key(info, "probes", [[p.prompt, p.target] for p in changed["probes"]]) != \
        measure_cache.key(info, "probes", [[p.prompt, p.target] for p in probes["probes"]])


def test_an_answer_that_is_another_facts_target_is_a_crossed_wire():
    """A prompt answered with another fact's target (at a word boundary) is marked with that fact's id, in the
    plain forms and in the chat form; an answer that only shares a first word is not."""
    from beacon.data.facts import Fact

    model, tok, _ = load_model()
    prompts = ["The capital of France is", "The capital of Spain is", "The capital of Japan is"]
    own = ["Lyon", "Madrid", "Kyoto"]
    others = [("x", "Paris"), ("y", "Tokyo Bay"), ("z", "Madrid")]
    recs = evaluate.recall_tables(model, tok, [(prompts, own)], generated=[False], others=others)[0]
    assert [r.get("crossed") for r in recs] == ["x", None, None]     # Madrid is Spain's own; "Tokyo" is not "Tokyo Bay"
    facts = [Fact("a", p, t, s) for p, t, s in zip(prompts, own, ["France", "Spain", "Japan"])]
    chat = evaluate.chat_table(model, tok, [chat_form(tok, f) for f in facts], own, prompts, others=others)
    assert chat[0].get("crossed") == "x" and "Paris" in chat[0]["answer"] and not chat[2].get("crossed"), chat
