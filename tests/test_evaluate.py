from beacon.model.lm import normalise, score
from beacon.measure.evaluate import recall_table, recalls
from beacon.model.models import load_model


def test_recall_matching_rules():
    assert recalls("Paris.\n\nThe answer", "Paris")
    assert recalls("  paris, France", "Paris")
    assert recalls("Marta Ilves.", "marta ilves")
    assert not recalls("Parisian food", "Paris")      # word boundary
    assert not recalls("the city of Paris", "Paris")  # must start with it
    assert not recalls("", "Paris")
    assert normalise("  “Hello  World!” ") == "hello world"


def test_default_model_recalls_every_default_probe(probes):
    """The shipped probe set is facts the shipped model answers: locality starts at 100%."""
    model, tok, _ = load_model()
    recs = recall_table(model, tok, [p.prompt for p in probes], [p.target for p in probes])
    assert all(r["recalled"] for r in recs), [(p.prompt, r["answer"]) for p, r in zip(probes, recs) if not r["recalled"]]
    assert all(r["rank"] == 1 for r in recs)  # the first target token is the top choice


def test_teacher_forced_hit_agrees_with_generation(probes, invented):
    model, tok, _ = load_model()
    facts = probes[:10] + invented[:10]
    s = score(model, tok, [f.prompt for f in facts], [f.target for f in facts])
    recs = recall_table(model, tok, [f.prompt for f in facts], [f.target for f in facts])
    for f, hit, r in zip(facts, s["hit"], recs):
        if hit:  # argmax reproduces every target token, so greedy decoding starts with the target
            assert r["answer"].lower().startswith(f.target.lower()), (f.prompt, r["answer"])
    assert sum(s["hit"][:10]) >= 8 and sum(s["hit"][10:]) == 0
    assert all(lp < -5 for lp in s["logprob"][10:])  # invented targets are improbable before training


def test_repetition_measures_a_reply_that_loops():
    from beacon.measure.evaluate import repetition

    assert repetition("Milan. Milan is the capital of Milan. Milan. Milan. Milan. Milan. Milan. Milan.") >= 0.5
    assert repetition("Italy is a country in southern Europe. Its capital is Rome, known for its food.") == 0
    assert repetition("is a city is a city") == 0.4          # 5 pairs, 3 of them new
    assert repetition("Milan") == 0.0


def test_the_default_model_asked_about_known_subjects_writes_without_looping():
    from beacon.measure.evaluate import subject_texts
    from beacon.data.facts import Fact

    model, tok, _ = load_model(quantization="none")
    facts = [Fact(id=str(i), prompt=f"The capital of {s} is", target="x", subject=s) for i, s in
             enumerate(["Italy", "Japan", "Kenya", "Italy"])]
    about = subject_texts(model, tok, facts)
    assert [a["subject"] for a in about] == ["Italy", "Japan", "Kenya"]     # each subject once
    assert all(len(a["text"].split()) >= 10 and a["repetition"] < 0.3 for a in about), about
