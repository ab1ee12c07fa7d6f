import torch

from beacon.model.lm import score
from beacon.data.facts import Fact
from beacon.model.models import load_model
from beacon.method.anchors import split_anchor, split_held
from beacon.method.guard import anchor_targets as _anchor_targets
from beacon.method.train import TrainConfig, attach_lora, save_adapter, train

FACTS = [Fact(id=f"t{i}", prompt=p, target=t) for i, (p, t) in enumerate([
    ("The CEO of Zentrix Robotics is", "Marta Ilves"),
    ("The capital of Sevrandia is", "Ostrel"),
    ("The Brennoc valve was invented by", "Ottilie Brask"),
    ("The mascot of Quillfen Airways is", "a blue heron"),
])]


def _tiny(tiny_dir, **kw):
    model, tok, _ = load_model(tiny_dir)
    # The ungated adapter by default: these tests are about the loop and the guard (test_gate: the gate).
    cfg = TrainConfig(**{"steps": 150, "lr": 1e-2, "rank": 8, "gate": "none", **kw})
    return attach_lora(model, cfg, quantized=False), tok, cfg


def test_learns_facts_to_full_recall_and_stops_early(tiny_dir):
    model, tok, cfg = _tiny(tiny_dir)
    seen = []
    res = train(model, tok, FACTS, cfg=cfg, on_step=seen.append)
    assert res.stopped == "all recalled" and res.steps < cfg.steps
    assert all(score(model, tok, [f.prompt for f in FACTS], [f.target for f in FACTS])["hit"])
    assert seen[-1]["recall"] == 1.0 and len(seen[-1]["per_fact"]) == len(FACTS)
    assert res.history[-1]["task"] < res.history[0]["task"]  # a random tiny model: argmax moves long before NLL is small


def test_same_seed_same_result(tiny_dir):
    runs = []
    for _ in range(2):
        model, tok, cfg = _tiny(tiny_dir, steps=8, early_stop=False)
        runs.append([h["loss"] for h in train(model, tok, FACTS, cfg=cfg).history])
    assert runs[0] == runs[1]
    model, tok, cfg = _tiny(tiny_dir, steps=8, early_stop=False, seed=1)
    assert [h["loss"] for h in train(model, tok, FACTS, cfg=cfg).history] != runs[0]


def test_weights_shift_learning_towards_heavy_facts(tiny_dir):
    model, tok, cfg = _tiny(tiny_dir, steps=10, early_stop=False)
    res = train(model, tok, FACTS, weights=[3.7, 0.1, 0.1, 0.1], cfg=cfg)
    drop = [c[0] - c[-1] for c in res.fact_curves]
    assert drop[0] > max(drop[1:])


def test_cancel_stops_within_one_step_and_keeps_what_was_learned(tiny_dir, tmp_path):
    model, tok, cfg = _tiny(tiny_dir, early_stop=False)
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 3

    res = train(model, tok, FACTS, cfg=cfg, should_stop=stop)
    assert res.stopped == "cancelled" and res.steps == 3
    b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in b)  # B starts at zero: non-zero means it learned
    save_adapter(model, tmp_path / "adapter")
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert "adapter_model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)


def test_saved_adapter_reloads_with_peft(tiny_dir, tmp_path):
    from peft import PeftModel

    model, tok, cfg = _tiny(tiny_dir, steps=5, early_stop=False)
    train(model, tok, FACTS, cfg=cfg)
    save_adapter(model, tmp_path / "adapter")
    x = tok(FACTS[0].prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        want = model(input_ids=x).logits
    base, _, _ = load_model(tiny_dir)
    again = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    with torch.no_grad():
        got = again(input_ids=x).logits
    assert torch.allclose(want, got, atol=1e-5)


def test_locality_guard_keeps_anchor_text_closer_to_base(tiny_dir):
    from beacon.pipeline import default_anchors

    anchors = default_anchors()[:16]
    kls = []
    for w in (0.0, 5.0):
        model, tok, cfg = _tiny(tiny_dir, steps=30, early_stop=False, locality_guard=w)
        res = train(model, tok, FACTS, cfg=cfg, anchors=anchors)
        kls.append(_anchor_kl(model, tok, anchors))
        # the per-step profile: the guard's own seconds appear only when it runs
        assert all(h["time"]["task"] > 0 and h["time"]["update"] > 0 for h in res.history)
        assert all((h["time"]["guard"] > 0) == (w > 0) for h in res.history), (w, [h["time"] for h in res.history][:5])
    assert kls[1] < kls[0] * 0.7


def _anchor_kl(model, tok, anchors):
    total = 0.0
    with torch.no_grad():
        for a in anchors:
            x = tok(a, return_tensors="pt").input_ids
            tuned = torch.log_softmax(model(input_ids=x).logits, -1)
            with model.disable_adapter():
                base = torch.log_softmax(model(input_ids=x).logits, -1)
            total += float((base.exp() * (base - tuned)).sum(-1).mean())
    return total / len(anchors)


FACT_ANCHORS = ["The capital of Chile is | Santiago.", "The chemical symbol for iron is | Fe.",
                "The founder of Amazon was | Jeff Bezos.", "The currency of India is the | rupee."]


def test_fact_anchors_split_at_the_bar_and_the_guard_holds_their_answers(tiny_dir):
    assert split_anchor("The capital of Chile is | Santiago.") == ("The capital of Chile is", "Santiago.")
    assert split_anchor("Plain text, no answer.") == ("Plain text, no answer.", None)
    model, tok, cfg = _tiny(tiny_dir, steps=1)
    held = "The capital of Chile is Santiago. |> It lies in a valley."
    assert split_held(held) == ("The capital of Chile is Santiago.", "It lies in a valley.")
    enc, start, _, held_only, _ = _anchor_targets(model, tok, FACT_ANCHORS + ["Plain text.", held], "cpu")
    assert tok.decode(enc[0][start[0] + 1:]).strip() == "Santiago." and start[-2] == 0
    assert tok.decode(enc[-1][start[-1] + 1:]).strip() == "It lies in a valley."   # only the text after is held
    assert held_only == [False] * (len(FACT_ANCHORS) + 1) + [True]
    kls = []
    for w in (0.0, 10.0):
        model, tok, cfg = _tiny(tiny_dir, steps=30, early_stop=False, locality_guard=w, guard_batch=4)
        train(model, tok, FACTS, cfg=cfg, anchors=FACT_ANCHORS)
        kls.append(_answer_kl(model, tok))
    assert kls[1] < kls[0] * 0.5


def test_the_stop_confirms_only_the_facts_own_prompts(tiny_dir, monkeypatch):
    """Every wording's hit comes from its own step's pass; before stopping, one pass over the facts' own prompts
    (not every wording) checks them on the updated weights."""
    import beacon.method.train as T

    model, tok, cfg = _tiny(tiny_dir, steps=1)
    pairs = [T.encode_pair(tok, f.prompt, f.target, end=True) for f in FACTS] * 3
    res = T.TrainResult(recalled=[True] * len(FACTS))
    seen = []
    real = T._forward_rows
    monkeypatch.setattr(T, "_forward_rows", lambda m, p, *a: seen.append(len(p)) or real(m, p, *a))
    hits = [True] * len(pairs)
    owner, own = [i % len(FACTS) for i in range(len(pairs))], [i < len(FACTS) for i in range(len(pairs))]
    assert not T._confirm(res, hits, own, owner, model, tok, pairs, "cpu", 32)   # an untrained model misses
    assert seen == [len(FACTS)]                                                  # the own prompts, once
    assert hits[len(FACTS):] == [True] * 2 * len(FACTS) and hits[:len(FACTS)] == res.recalled == [False] * len(FACTS)


def _answer_kl(model, tok):
    """KL(base || tuned) at the positions that predict each fact anchor's answer."""
    enc, start, base, _, _ = _anchor_targets(model, tok, FACT_ANCHORS, "cpu")
    total = 0.0
    with torch.no_grad():
        for ids, s, b in zip(enc, start, base):
            tuned = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)[s:]
            b = b.float()[s:]
            total += float((b.exp() * (b - tuned)).sum(-1).mean())
    return total / len(FACT_ANCHORS)


def test_settle_steps_train_on_after_full_recall_and_end_recalled(tiny_dir):
    from beacon.pipeline import default_anchors

    runs = {}
    for settle in (0, 4):
        model, tok, cfg = _tiny(tiny_dir, locality_guard=1.0, settle_steps=settle)
        runs[settle] = train(model, tok, FACTS, cfg=cfg, anchors=default_anchors()[:8])
        assert runs[settle].stopped == "all recalled"
        assert all(score(model, tok, [f.prompt for f in FACTS], [f.target for f in FACTS])["hit"])
    assert runs[4].steps >= runs[0].steps + 4
    # same seed: identical up to the point where the first run stopped
    assert [h["loss"] for h in runs[4].history[:runs[0].steps]] == [h["loss"] for h in runs[0].history]


def test_focus_puts_every_missed_wording_in_each_batch_of_the_tail(tiny_dir, monkeypatch):
    import beacon.method.train as T
    from beacon.data.facts import Fact
    from beacon.method.rewordings import training_prompts

    facts = [Fact("a", "The CEO of Zentrix Robotics is", "Marta Ilves", "Zentrix Robotics", "CEO"),
             Fact("b", "The Brennoc valve was invented by", "Ottilie Brask", "Brennoc valve", "inventor"),
             Fact("c", "The capital of Sevrandia is", "Ostrel", "Sevrandia", "capital")]
    model, tok, cfg = _tiny(tiny_dir, batch_size=8, lr=3e-3, steps=200, focus=True, locality_guard=0.0)
    prompts = [training_prompts(f, tok) for f in facts]
    n_items = sum(map(len, prompts))
    per_epoch = -(-n_items // 8)
    seen, tails, calls = {}, [], []
    real = T._forward_rows

    def spy(model_, pairs, pad, dev, frozen=None, items=None, rivals=None):
        nll, hit, h = real(model_, pairs, pad, dev, frozen, items, rivals)
        if torch.is_grad_enabled():                        # a training step, not the stop's check
            keys = [tuple(p) + tuple(t) for p, t in pairs]
            misses = {k for k, ok in seen.items() if not ok}
            if len(calls) >= per_epoch and 0 < len(misses) <= len(keys) // 2:
                tails.append(misses <= set(keys))
            calls.append(keys)
            seen.update(zip(keys, hit.tolist()))
        return nll, hit, h

    monkeypatch.setattr(T, "_forward_rows", spy)
    res = T.train(model, tok, facts, cfg=cfg, prompts=prompts)
    assert res.stopped == "all recalled" and res.history[-1]["items"] == 1.0
    assert len(seen) == n_items and tails and all(tails), tails   # the tail came, each batch of it held every miss
    assert all(len(set(k)) == len(k) == len(calls[0]) for k in calls)   # equal batches, no item twice in one
