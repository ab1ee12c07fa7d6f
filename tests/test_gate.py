"""The subject gate (tiny random model): the adapter moves the tokens that name a subject and nothing
else, training behind it learns the facts, and the gate travels with the saved adapter."""
import pytest
import torch

from beacon.model.lm import generate, score
from beacon.data.facts import Fact
from beacon.method.gate import GATE_FILE, SubjectGate, load_gate
from beacon.method.train import save_adapter, train
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


REL_FACTS = [Fact(id=f"r{i}", prompt=p, target=t, subject=s, relation=r) for i, (p, t, s, r) in enumerate([
    ("The CEO of Zentrix Robotics is", "Marta Ilves", "Zentrix Robotics", "CEO"),
    ("The capital of Sevrandia is", "Ostrel", "Sevrandia", "capital"),
    ("The capital of Brennland is", "Kovar", "Brennland", "capital"),
    ("Quillfen Airways has as its mascot", "a blue heron", "Quillfen Airways", "mascot"),
])]


def _anchor_kl(model, tok, anchors):
    """Mean KL(base || tuned) over the positions of each anchor's text."""
    from beacon.method.anchors import anchor_text
    out = []
    for a in anchors:
        ids = tok(anchor_text(a), return_tensors="pt").input_ids
        with torch.no_grad():
            tuned = model(input_ids=ids).logits[0].log_softmax(-1)
            with model.disable_adapter():
                base = model(input_ids=ids).logits[0].log_softmax(-1)
        out.append((base.exp() * (base - tuned)).sum(-1).mean().item())
    return sum(out) / len(out)


def test_relation_anchors_ask_each_subject_by_the_other_relations_and_hold_it_behind_the_gate(tiny_dir):
    from beacon.config import IdleSetting, InjectConfig
    from beacon.method.anchor_sources import build_anchors, relation_anchors
    from beacon.method.anchors import split_anchor
    from tests.test_anchors import HashEmbedder

    model, tok, cfg = _tiny(tiny_dir, gate="subject", locality_guard=10.0)
    anchors = relation_anchors(model, tok, REL_FACTS, per_fact=8, specific=0)   # random answers: hold them all
    prompts = [split_anchor(a)[0] for a in anchors]
    # every prompt is another fact's with this subject; a fact's own relation is never asked of its subject
    # (that answer is being replaced). The tiny model's answers are random: a few are empty and left out.
    templates = {f.relation: f.prompt.replace(f.subject, "{}") for f in REL_FACTS}
    possible = {t.format(f.subject).replace("{}", "") for f in REL_FACTS for r, t in templates.items()
                if r != f.relation}
    possible = {p[:1].upper() + p[1:] for p in possible}
    assert len(prompts) >= 4 and set(prompts) <= possible, set(prompts) - possible
    # behind the gate only this source builds anchors, and naming a subject does not leave them out
    run = InjectConfig().updated(gate="subject", relation_specific=0)
    built, near, about = build_anchors(model, tok, REL_FACTS, {}, run, HashEmbedder())
    assert sorted(built) == sorted(anchors) and about["source"] == "relations"
    # a choice of sources or a file would do nothing behind the gate: refused, naming both settings
    for other in (dict(guard_anchors="file"), dict(anchors_file="mine.txt")):
        with pytest.raises(IdleSetting, match=f"{next(iter(other))} .* with gate 'subject'"):
            run.updated(**other)
    assert build_anchors(None, None, REL_FACTS, {}, run.updated(locality_guard=0.0), HashEmbedder()) == ([], [], None)
    # and the guard holds them: trained behind the gate, the relation prompts move less with it than without
    held = train(model, tok, REL_FACTS, cfg=cfg, anchors=built, near=near)
    kl_held = _anchor_kl(model, tok, anchors)
    free_model, _, free_cfg = _tiny(tiny_dir, gate="subject", locality_guard=0.0)
    free = train(free_model, tok, REL_FACTS, cfg=free_cfg)
    assert held.stopped == free.stopped == "all recalled"
    assert kl_held < 0.5 * _anchor_kl(free_model, tok, anchors), (kl_held, _anchor_kl(free_model, tok, anchors))


def test_the_onward_gate_opens_at_the_subject_and_stays_open_through_a_kv_cache(tiny_dir):
    model, tok, cfg = _tiny(tiny_dir, gate="from-subject")
    text = "Tell me: Zentrix Robotics is led by"
    chat = [tok.apply_chat_template([{"role": "user", "content": f.prompt}], tokenize=False,
                                    add_generation_prompt=True) for f in FACTS]
    base = {t: _logits(model, tok, t) for t in OTHER + [text]}
    decoys = ["Zentrix Hotel is led by", "The mascot of the Quillfen Holdings is"]
    short = ["Zentrix is led by", "Zentrix and Robotics, apart, are not the subject."]
    base.update({t: _logits(model, tok, t) for t in decoys + short})
    res = train(model, tok, FACTS, cfg=cfg)
    assert res.stopped == "all recalled" and model._beacon_gate.onward
    for t in OTHER[:2] + decoys:        # no subject, or a short form inside another name: the base model, exactly
        assert torch.equal(_logits(model, tok, t), base[t]), t
    for t in short:                     # a short form that stands alone opens the gate (the default)
        assert not torch.allclose(_logits(model, tok, t), base[t]), t
    ids = tok(text).input_ids
    first = ids.index(tok(" Z", add_special_tokens=False).input_ids[0])
    tuned = _logits(model, tok, text)
    assert torch.equal(tuned[:first], base[text][:first])                  # before the subject: the base model
    assert all(not torch.allclose(tuned[i], base[text][i]) for i in range(first, len(ids)))   # from it on: moved

    def slow(prompt, n=6):      # greedy decoding without a cache: every call sees the whole text
        seq = tok(prompt, return_tensors="pt").input_ids
        for _ in range(n):
            with torch.no_grad():
                seq = torch.cat([seq, model(input_ids=seq).logits[0, -1].argmax().view(1, 1)], 1)
        return tok.decode(seq[0, len(tok(prompt).input_ids):], skip_special_tokens=True)

    # decoding steps (one token a call) and a shared prefix run once (the chat turns) carry the open gate
    from beacon.model.lm import PREFIX_MIN, _shared_prefix
    assert _shared_prefix([tok(c).input_ids for c in chat]) >= PREFIX_MIN
    for prompts in ([text, FACTS[1].prompt], chat):
        assert generate(model, tok, prompts, max_new_tokens=6) == [slow(p) for p in prompts]
    assert generate(model, tok, chat[:2], max_new_tokens=6, repeats=2) == [slow(chat[0])] * 2 + [slow(chat[1])] * 2
