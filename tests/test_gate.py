"""The subject gate (tiny random model): the adapter moves the tokens that name a subject and nothing
else, training behind it learns the facts, and the gate travels with the saved adapter."""
import torch

from core.evaluate import generate, score
from core.facts import Fact
from core.gate import GATE_FILE, SubjectGate, load_gate
from core.train import save_adapter, train
from tests.test_train import _tiny

FACTS = [Fact(id=f"g{i}", prompt=p, target=t, subject=s) for i, (p, t, s) in enumerate([
    ("The CEO of Zentrix Robotics is", "Marta Ilves", "Zentrix Robotics"),
    ("The capital of Sevrandia is", "Ostrel", "Sevrandia"),
    ("Quillfen Airways has as its mascot", "a blue heron", "Quillfen Airways"),
])]
OTHER = ["The capital of France is", "A long sentence about rivers and the towns beside them.",
         "Zentrix and Robotics, apart, are not the subject."]


def _logits(model, tok, text):
    with torch.no_grad():
        return model(input_ids=tok(text, return_tensors="pt").input_ids).logits[0]


def test_mask_marks_each_subjects_tokens_wherever_it_stands(tiny_dir):
    _, tok, _ = _tiny(tiny_dir)
    gate = SubjectGate(tok, [f.subject for f in FACTS])
    for text, subject in [("The CEO of Zentrix Robotics is", "Zentrix Robotics"),
                          ("Zentrix Robotics is led by", "Zentrix Robotics"),
                          ('He said "Sevrandia" twice', "Sevrandia")]:
        ids = tok(text).input_ids
        m = gate.mask(torch.tensor([ids]))[0]
        marked = tok.decode([i for i, x in zip(ids, m) if x])
        assert marked.strip() == subject, (text, marked)
    assert not gate.covers(tok, "Zentrix and Robotics, apart") and gate.covers(tok, "Sevrandia's capital")
    # a one-word subject's stem opens it on words made from it; "The Beatles" inside a sentence
    other = SubjectGate(tok, ["Norway", "gold", "The Beatles"])
    for text, marked in [("The Norwegian parliament meets in", " Norwegian"), ("A golden ring", " golden"),
                         ("The hometown of the Beatles is", " the Beatles")]:
        ids = tok(text).input_ids
        assert tok.decode([i for i, x in zip(ids, other.mask(torch.tensor([ids]))[0]) if x]) == marked, text
    assert not other.covers(tok, "Marigold grows in Denmark")
    # an invented name has no stem words: "halves" is not Halvessa
    assert not SubjectGate(tok, ["Halvessa"]).covers(tok, "Cut it in two halves")


def test_gated_training_learns_the_facts_and_leaves_other_text_exactly_alone(tiny_dir, tmp_path):
    model, tok, cfg = _tiny(tiny_dir)
    base = {t: _logits(model, tok, t) for t in OTHER + [f.prompt for f in FACTS]}
    SubjectGate(tok, [f.subject for f in FACTS]).attach(model)
    res = train(model, tok, FACTS, cfg=cfg)
    assert res.stopped == "all recalled"
    assert all(score(model, tok, [f.prompt for f in FACTS], [f.target for f in FACTS])["hit"])
    for t in OTHER:
        assert torch.equal(_logits(model, tok, t), base[t]), t            # no subject: the base model, exactly
    for f in FACTS:
        assert not torch.allclose(_logits(model, tok, f.prompt), base[f.prompt])
    # generation (a KV cache, a shared prefix) goes through the same gate
    with model.disable_adapter():
        plain = generate(model, tok, OTHER, max_new_tokens=6)
    assert generate(model, tok, OTHER, max_new_tokens=6) == plain
    # the gate is saved with the adapter and comes back with it; without it the update is everywhere
    save_adapter(model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / GATE_FILE).is_file()
    from peft import PeftModel
    from tests.test_train import load_model
    again = PeftModel.from_pretrained(load_model(tiny_dir)[0], str(tmp_path / "adapter")).eval()
    assert not torch.allclose(_logits(again, tok, OTHER[0]), base[OTHER[0]])
    load_gate(tok, tmp_path / "adapter").attach(again)
    assert torch.equal(_logits(again, tok, OTHER[0]), base[OTHER[0]])
    assert torch.allclose(_logits(again, tok, FACTS[0].prompt), _logits(model, tok, FACTS[0].prompt), atol=1e-5)


def test_train_puts_up_the_gate_its_settings_ask_for(tiny_dir):
    model, tok, cfg = _tiny(tiny_dir, gate="subject")
    other = _logits(model, tok, OTHER[0])
    res = train(model, tok, FACTS, cfg=cfg)
    assert res.stopped == "all recalled" and model._beacon_gate.subjects == sorted(f.subject for f in FACTS)
    assert torch.equal(_logits(model, tok, OTHER[0]), other)
