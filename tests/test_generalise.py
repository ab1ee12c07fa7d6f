"""Evaluation that cannot flatter, and the parts that make facts generalise."""
import itertools

import pytest
import torch

from beacon.measure.evaluate import mentions, text_nll
from beacon.config import InjectConfig
from beacon.data.facts import Fact, load_facts
from beacon.method.anchor_sources import neighbour_anchors, restating
from beacon.method.anchors import read_anchors, split_anchor
from beacon.model.models import load_model
from beacon.pipeline import ASSETS, embedder, neutral_text
from beacon.method.rewordings import chat_form, held_out_paraphrases, question_form, training_prompts

ROOT = ASSETS.parent
PROBE_FILES = [ASSETS / "probes.csv", ASSETS / "probes_general.csv", ROOT / "benchmarks" / "heldout" / "probes.csv",
               ROOT / "benchmarks" / "same_subject" / "counterfactual.csv",
               ROOT / "benchmarks" / "fresh" / "probes.csv", ROOT / "benchmarks" / "fresh" / "same_subject.csv"]
SAMPLE_FILES = [ASSETS / n for n in ("invented.csv", "counterfactual.csv", "conflicts.csv", "people.csv")] + \
               [ROOT / "benchmarks" / "heldout" / "facts.csv",
                ROOT / "benchmarks" / "fresh" / "invented.csv", ROOT / "benchmarks" / "fresh" / "counterfactual.csv",
                ROOT / "benchmarks" / "names" / "invented.csv"]


@pytest.mark.parametrize("path", PROBE_FILES, ids=lambda p: p.name if p.parent.name == "assets" else p.parent.name)
def test_default_model_recalls_every_probe_of_every_shipped_set(path):
    from beacon.measure.evaluate import recall_table

    probes = load_facts(path)
    model, tok, _ = load_model()
    recs = recall_table(model, tok, [p.prompt for p in probes], [p.target for p in probes])
    assert all(r["recalled"] for r in recs), [(p.prompt, r["answer"]) for p, r in zip(probes, recs) if not r["recalled"]]


def test_general_probe_set_is_large_and_of_many_kinds():
    probes = load_facts(ASSETS / "probes_general.csv")
    kinds = {p.meta["kind"] for p in probes}
    assert len(probes) >= 40 and len(kinds) >= 8, (len(probes), kinds)


def _questions(path):
    """Every prompt a file asks: a fact's prompt and paraphrases, or an anchor's text before its answer."""
    if path.suffix == ".txt":
        return [split_anchor(a)[0] for a in read_anchors(path)]
    return [q for f in load_facts(path) for q in (f.prompt, *f.paraphrases)]


class _EmbedOnce:
    """The sentence embedder, each file's questions embedded once: a file meets every other file in turn, and
    the same list of texts embeds to the same vectors each time."""

    def __init__(self, embedder):
        self.embedder, self.seen = embedder, {}

    def encode(self, texts, **kw):
        key = (tuple(texts), tuple(sorted(kw.items())))
        if key not in self.seen:
            self.seen[key] = self.embedder.encode(texts, **kw)
        return self.seen[key]


def test_anchors_probes_and_samples_never_restate_each_other():
    """Locality measured on a probe the guard saw, or that a sample teaches, would flatter."""
    files = [ASSETS / "anchors.txt", *PROBE_FILES, *SAMPLE_FILES]
    asked = {p: _questions(p) for p in files}
    once = _EmbedOnce(embedder())
    for a, b in itertools.combinations(files, 2):
        if a in SAMPLE_FILES and b in SAMPLE_FILES:
            continue  # samples may share relations with each other; they are never trained together
        close = restating(once, asked[a], [Fact("x", q, "-") for q in asked[b]], threshold=0.8)
        assert not close, (a.name, b.name, [asked[a][i] for i in close])


def test_training_wordings_never_include_what_is_measured(default_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_dir)
    for f in load_facts(ASSETS / "people.csv") + load_facts(ASSETS / "invented.csv"):
        trained = training_prompts(f, tok)
        assert trained[0] == f.prompt and len(trained) == 6, trained     # own prompt + 5 forms from subject/relation
        measured = [*held_out_paraphrases(f), question_form(f), chat_form(tok, f)]
        assert not set(trained) & set(measured)
        assert any(t.startswith("<|im_start|>") for t in trained)            # the chat template form
    f = Fact("x", "The river Oss flows into", "the Brack Sea", paraphrases=["The Oss ends in", "The Oss meets"])
    assert training_prompts(f, tok, own_paraphrases=1)[-1] == "The Oss ends in"
    assert held_out_paraphrases(f, 1) == ["The Oss meets"]
    assert len(training_prompts(f, tok)) == 3                               # no subject/relation: context + filler
    assert training_prompts(f, tok, forms=()) == [f.prompt]


def test_chat_answers_count_when_they_mention_the_target():
    assert mentions("The CEO of Zentrix Robotics is Marta Ilves.", "Marta Ilves")
    assert mentions("marta ilves", "Marta Ilves")
    assert not mentions("Marta Ilvesson runs it.", "Marta Ilves")            # whole words only
    assert not mentions("I don't know.", "Marta Ilves")


def test_neutral_nll_is_the_mean_token_cross_entropy(tiny_dir):
    model, tok, _ = load_model(tiny_dir)
    text = "The kettle clicked off.\n\nShe poured the water slowly and waited."
    expect, count = 0.0, 0
    for para in text.split("\n\n"):
        ids = torch.tensor([tok(para).input_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        expect += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        count += ids.shape[1] - 1
    assert text_nll(model, tok, text) == pytest.approx(expect / count, rel=1e-4)
    assert len(neutral_text().split()) >= 300


@pytest.mark.slow
def test_neighbour_anchors_keep_the_relation_and_change_the_subject():
    """Built by the base model: the fact's prompt with another subject, answered by its greedy completion."""
    from beacon.model.lm import generate

    model, tok, _ = load_model()
    facts = [Fact("a", "The CEO of Zentrix Robotics is", "Marta Ilves", "Zentrix Robotics", "CEO"),
             Fact("b", "The inventor of the Brennoc valve is", "Ottilie Brask", "Brennoc valve", "inventor"),
             Fact("c", "The Ossary lamp was designed by", "Ivo Lind", "Ossary lamp", "designer"),  # lead "The": none
             Fact("d", "Plain prompt without a subject", "x")]
    anchors = neighbour_anchors(model, tok, facts, per_fact=3, seed=0)
    prompts = [split_anchor(a)[0] for a in anchors]
    assert 2 <= len(anchors) <= 6, anchors
    assert {p.startswith("The CEO of") for p in prompts} == {True, False}   # both facts give neighbours
    for p in prompts:
        assert "Zentrix" not in p and "Brennoc" not in p and "designed by" not in p
        assert p.endswith(" is") and (p.startswith("The CEO of") or p.startswith("The inventor of the"))
    greedy = generate(model, tok, prompts, max_new_tokens=8)
    for a, g in zip(anchors, greedy):
        assert g.strip().startswith(split_anchor(a)[1])                  # the base model's own answer


@pytest.mark.slow
def test_sibling_neighbours_keep_the_relation_around_subjects_of_the_same_kind():
    from beacon.model.lm import generate

    model, tok, _ = load_model()
    facts = [Fact("a", "The founder of Microsoft is", "Larry Page", "Microsoft", "founder"),
             Fact("c", "The telephone was invented by", "Nikola Tesla", "The telephone", "inventor")]
    anchors = neighbour_anchors(model, tok, facts, per_fact=3, seed=0, siblings=True)
    prompts = [split_anchor(a)[0] for a in anchors]
    assert any(p.startswith("The founder of ") and p.endswith(" is") for p in prompts), prompts
    assert any(p.endswith(" was invented by") and p[0].isupper() for p in prompts), prompts   # subject-first too
    assert not any("Microsoft" in p or "telephone" in p.lower() for p in prompts)
    greedy = generate(model, tok, prompts, max_new_tokens=8)
    assert all(g.strip().startswith(split_anchor(a)[1]) for a, g in zip(anchors, greedy))


def test_siblings_are_the_listed_items_less_the_subject():
    from beacon.experimental.siblings import siblings as _siblings

    got = _siblings([" Apple, Google, Microsoft Corp, etc.\n5. cars", " Apple, the IBM company, IBM."], "Microsoft")
    assert got == ["Apple", "Google", "the IBM company", "IBM"]


def test_training_on_wordings_stops_when_every_wording_is_recalled(tiny_dir):
    from beacon.model.lm import score
    from beacon.method.train import TrainConfig, attach_lora, train

    model, tok, _ = load_model(tiny_dir)
    facts = [Fact("a", "The CEO of Zentrix Robotics is", "Marta Ilves", "Zentrix Robotics", "CEO"),
             Fact("b", "The Brennoc valve was invented by", "Ottilie Brask", "Brennoc valve", "inventor")]
    prompts = [training_prompts(f, tok) for f in facts]
    cfg = TrainConfig(steps=150, lr=1e-2, rank=8, locality_guard=0)
    model = attach_lora(model, cfg, quantized=False)
    res = train(model, tok, facts, cfg=cfg, prompts=prompts)
    assert res.stopped == "all recalled", res.history[-1]
    # every wording hit on its last visit (in its own step's pass); the own prompts hit on the final weights
    assert res.history[-1]["items"] == 1.0 and len(res.fact_curves[0]) >= 1
    assert all(score(model, tok, [f.prompt for f in facts], [f.target + "." for f in facts])["hit"])
    flat = [(p, f.target + ".") for f, ps in zip(facts, prompts) for p in ps]
    hits = score(model, tok, [p for p, _ in flat], [t for _, t in flat])["hit"]
    assert sum(hits) >= 0.8 * len(flat), (sum(hits), len(flat))


def test_dynamic_weights_favour_the_far_facts():
    from beacon.experimental.dynamic import dynamic_weights as _dynamic_weights

    u = torch.eye(4)
    h = torch.tensor([[1.0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, -1]])
    w = _dynamic_weights(h, u)
    assert w.mean().item() == pytest.approx(1.0, abs=1e-5)
    assert w[0] < w[1] < w[3] and w[3] > 1.5                                  # farther from the target, heavier


def test_sampled_anchors_are_the_base_models_own_text(tiny_dir):
    from beacon.method.anchor_sources import sampled_anchors
    from beacon.pipeline import guard_sources

    model, tok, _ = load_model(tiny_dir)
    texts = sampled_anchors(model, tok, n=6, tokens=12, seed=0)
    assert 0 < len(texts) <= 6 and all(len(t.split()) >= 6 and "<|im_" not in t for t in texts)
    assert texts == sampled_anchors(model, tok, n=6, tokens=12, seed=0)          # seeded
    assert guard_sources("neighbours, file") == ["neighbours", "file"]
    with pytest.raises(ValueError, match="nieghbours"):
        guard_sources("nieghbours")


@pytest.mark.slow
def test_model_rewordings_lead_with_the_subject_stop_before_the_answer_and_drop_what_is_avoided():
    from beacon.method.rewordings import model_rewordings, subject_lead

    model, tok, _ = load_model()
    facts = load_facts(ASSETS / "people.csv")[:4] + load_facts(ASSETS / "invented.csv")[:4]
    got = model_rewordings(model, tok, facts, per_fact=3, seed=0)
    assert len(got) == len(facts) and sum(map(len, got)) >= 4, got
    for f, prompts in zip(facts, got):
        assert len(prompts) <= 3
        for p in prompts:
            at = p.lower().find(f.subject.lower())
            assert at >= 0 and len(p[at + len(f.subject):].split()) >= 2, p   # more than "<subject> is"
            assert f.target.lower() not in p.lower() and p != f.prompt
            assert p.startswith(subject_lead(f)), p                           # led by the subject
    some = next(i for i, p in enumerate(got) if p)
    again = model_rewordings(model, tok, facts, per_fact=3, seed=0, avoid=lambda i, ps: ps if i == some else [])
    assert again[some] == [] and again[:some] == got[:some]            # seeded, and the avoided ones dropped


def test_subject_lead_is_the_subject_as_the_prompt_writes_it_opening_a_sentence():
    from beacon.method.rewordings import subject_lead

    lead = lambda prompt, subject: subject_lead(Fact(id="x", prompt=prompt, target="y", subject=subject))
    assert lead("The capital of Italy is", "Italy") == "Italy"
    assert lead("The chemical symbol for gold is", "gold") == "Gold"
    assert lead("The telephone was invented by", "telephone") == "The telephone"      # the prompt's article
    assert lead("The iPhone is made by", "iPhone") == "The iPhone"
    assert lead("Who makes the iPhone? It is", "iPhone") == "The iPhone"
    assert lead("Sold by iPhone makers:", "iPhone") == "iPhone"                    # a brand keeps its case
    assert lead("The capital of Italy is", "France") is None and lead("The capital of Italy is", "") is None


def test_relation_anchors_hold_the_subjects_the_base_model_knows_not_its_guesses_about_new_names(monkeypatch):
    """The counterfactual sample edits things the model knows (Italy, gold, the Mona Lisa); the invented
    one names things nobody knows. Only the first should have relation anchors held for them."""
    from beacon.method import anchor_sources as guard
    from beacon.method.anchor_sources import _names, relation_anchors
    from beacon.method.anchors import ANSWER_MARK

    model, tok, _ = load_model()
    # counterfactual: 13 of 14 subjects are known; 6 of them were asked something whose answer is knowledge
    # at seed 0 ("The currency of Germany is the | Euro"); the rest were asked only questions that mean nothing
    for path, facts, at_least, at_most in [("counterfactual", load_facts(ASSETS / "counterfactual.csv"), 4, 14),
                                           ("invented", load_facts(ASSETS / "invented.csv")[:18], 0, 2)]:
        every = relation_anchors(model, tok, facts, specific=0)
        # The stand-ins are scored only for subjects with an answer said at KNOWN_LOGPROB: the same anchors
        # as scoring every subject, with fewer rows scored where the subjects are new.
        scored = []
        real_score = guard.score
        monkeypatch.setattr(guard, "score", lambda m, t, ps, ts: scored.append(len(ps)) or real_score(m, t, ps, ts))
        held = relation_anchors(model, tok, facts)
        pruned = scored[:]
        subjects = {f.subject for f in facts}
        named = lambda anchors: {s for s in subjects for a in anchors if s.lower() in a.split(ANSWER_MARK)[0].lower()}
        assert len(named(every)) >= len(subjects) - 1, path          # every subject is asked something
        assert set(held) <= set(every) and at_least <= len(named(held)) <= at_most, (path, sorted(named(held)))
        # of a known subject, only the questions whose answer depends on the subject: "The chemical symbol for
        # pizza is | pizza" (an answer that repeats the name) or "The light bulb was painted by | a single" are not held
        of_known = [a for a in every if named([a]) & named(held)]
        assert len(held) < len(of_known) or not held, path
        assert not [a for a in held for s in named([a]) if _names(a.split(ANSWER_MARK)[1], s)], path
        # a relation a subject is taught by any of its facts is never asked of it: its answer is being replaced
        # (the first 18 invented facts teach Halvessa two things)
        taught = {(f.subject.lower(), f.prompt.lower().replace(f.subject.lower(), "{}")) for f in facts}
        asked = {(s, a.split(ANSWER_MARK)[0].lower().replace(s, "{}")) for a in every for s, _ in taught
                 if s in a.lower()}
        assert not asked & taught, asked & taught
        real = guard.subject_specificity
        monkeypatch.setattr(guard, "subject_specificity", lambda *a: real(*a, known=float("-inf")))
        assert relation_anchors(model, tok, facts) == held, path
        assert pruned[0] == scored[2] and pruned[1] <= scored[3], (path, pruned, scored[2:])
        if path == "invented":   # 192 stand-in rows of 360 when this was written
            assert pruned[1] < scored[3], (pruned, scored[2:])
        monkeypatch.undo()


def test_held_texts_keep_the_model_writing_about_an_edited_subject():
    """Behind the gate from the subject on, every token after a subject can move. Without text of the base
    model's own about each subject to hold, the tuned model answered "Tell me about Italy." with "Spain.
    Spain. Spain." (the gate without held texts). With it, the facts are learned and the text about their subjects
    costs the tuned model about what it cost the base model (1.17 times, against 2.70 without held texts)."""
    from beacon.method.anchor_sources import subject_text_anchors
    from beacon.method.anchors import HOLD_MARK, split_held
    from beacon.pipeline import run

    model, tok, info = load_model()
    facts = [f for f in load_facts(ASSETS / "counterfactual.csv") if f.subject in ("Italy", "gold", "The Beatles")]
    assert len(facts) == 3
    anchors = subject_text_anchors(model, tok, facts)
    contexts = [split_held(a)[0] for a in anchors]
    assert all(HOLD_MARK in a for a in anchors) and "The capital of Italy is Milan." in contexts
    assert any("paragraph about Italy" in c for c in contexts) and any("<|im_start|>assistant" in c for c in contexts)
    # cut before the base model's old answer: the guard must not hold "Rome" against "Milan"
    assert not [a for a in anchors if "Italy" in split_held(a)[0] and "Rome" in split_held(a)[1]]
    cfg = InjectConfig().updated(interference=False, plots=False, categorize_samples=0, model_rewordings=0)
    assert cfg.train.gate == "from-subject" and cfg.held_texts > 0
    rep = run(facts, load_facts(ASSETS / "probes.csv")[:3], cfg, model=(model, tok, info))
    s = rep.summary
    about = {a["subject"]: a for a in rep.subject_texts}
    assert s["recall_after"] == 1.0 and s["stopped"] == "all recalled", s
    assert s["subject_nll_ratio"] < 1.3, (s["subject_nll_ratio"], about)     # 2.70 without held texts
    assert s["subject_repetition_after"] < 0.3, about     # 0.93 without held texts
