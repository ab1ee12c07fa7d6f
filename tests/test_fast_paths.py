"""The fast paths compute what the plain ones did (tiny random model): bf16 frozen layers, a shared
prompt prefix run once in generation, and a guard batch run in length groups with the LM head on
real tokens only."""
import pytest
import torch

from beacon.measure import evaluate
from beacon.method import guard
from beacon.model import lm, precision
from beacon.experimental.margin import margin_drop
from beacon.model.lm import score
from beacon.method.train import train
from beacon.config import TrainConfig
from beacon.data.facts import Fact
from tests.test_train import FACTS, FACT_ANCHORS, _tiny


def _logits(model, tok, text):
    with torch.no_grad():
        return model(input_ids=tok(text, return_tensors="pt").input_ids).logits[0]


def test_frozen_bf16_stays_close_and_gives_the_fp32_weights_back(tiny_dir):
    model, tok, _ = _tiny(tiny_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ref = _logits(model, tok, "The capital of Chile is Santiago.")
    with precision.frozen_bf16(model):
        linear = next(m for m in model.modules() if type(m) is torch.nn.Linear and not m.weight.requires_grad)
        assert linear.weight.dtype == torch.bfloat16
        fast = _logits(model, tok, "The capital of Chile is Santiago.")
    assert fast.dtype == torch.float32
    assert 0 < (fast - ref).abs().max() < 0.05 * ref.abs().max()      # bf16 rounding, not another model
    with pytest.raises(RuntimeError):
        with precision.frozen_bf16(model):
            raise RuntimeError("a cancel or an error inside")
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, before[n]), n
    assert torch.equal(_logits(model, tok, "The capital of Chile is Santiago."), ref)


def test_bf16_training_learns_the_facts_and_its_stop_holds_in_fp32(tiny_dir):
    model, tok, cfg = _tiny(tiny_dir, compute="bf16")
    assert precision.resolve("bf16", model) == "bf16" and precision.resolve("fp32", model) == "fp32"
    res = train(model, tok, FACTS, cfg=cfg)
    assert res.stopped == "all recalled" and res.steps < cfg.steps
    # the stop was confirmed without bf16: recall measured in fp32 agrees
    assert all(score(model, tok, [f.prompt for f in FACTS], [f.target for f in FACTS])["hit"])
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_auto_precision_is_bf16_only_on_a_cpu_with_bf16_instructions(tiny_dir, monkeypatch):
    model, tok, cfg = _tiny(tiny_dir)
    flags = open("/proc/cpuinfo").read().split() if __import__("os").path.exists("/proc/cpuinfo") else []
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert precision.cpu_has_bf16() == native
    assert precision.resolve("auto", model) == ("bf16" if native else "fp32")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)   # bf16 would be emulated: nothing to gain
    assert precision.resolve("auto", model) == "fp32" and precision.resolve("bf16", model) == "bf16"
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.resolve("auto", model) == "bf16"


def test_a_shared_prefix_runs_once_and_generates_what_the_plain_path_does(tiny_dir, monkeypatch):
    model, tok, _ = _tiny(tiny_dir)
    lead = "Sentence: The head chef of Lorimer Bistro is Anna Pell.\nIn other words: Lorimer Bistro's kitchen is run by"
    prompts = [f"{lead} {x}" for x in ("its chef.\nSentence: The mayor of Dunmore is", "a cook", "Anna",
                                       "the head chef, whose name is")]
    assert lm._shared_prefix([tok(p).input_ids for p in prompts]) >= lm.PREFIX_MIN
    calls = []
    hook = lm.decoder_of(model).register_forward_hook(lambda m, a, k, out: calls.append(k["input_ids"].shape),
                                                          with_kwargs=True)
    fast = lm.generate(model, tok, prompts, max_new_tokens=6)
    hook.remove()
    assert calls[0][0] == 1                                    # the prefix, once
    assert all(shape[1] < 20 for shape in calls[1:])           # rows never run the prefix again
    monkeypatch.setattr(lm, "PREFIX_MIN", 10**9)
    assert lm.generate(model, tok, prompts, max_new_tokens=6) == fast


def test_grouped_guard_loss_equals_each_anchor_alone(tiny_dir):
    model, tok, cfg = _tiny(tiny_dir, locality_guard=0.0)
    train(model, tok, FACTS, cfg=cfg)                           # the adapter now moves the anchors
    # two held texts that open with the same 20+ tokens: their prefix runs once, their context is not held
    lead = "A friendly assistant answers each request in a few plain sentences. Request: write about "
    anchors = FACT_ANCHORS + ["A long plain sentence about rivers, bridges and the towns that grew up beside "
                              "them over many hundreds of years, told slowly.",
                              f"{lead}Zentrix Robotics.\n |> It builds small robots for farms.",
                              f"{lead}the Brennoc valve.\n |> It was first used in ships."]
    targets = guard.anchor_targets(model, tok, anchors, "cpu")
    enc, start, _, held, _ = targets
    assert held == [False] * (len(anchors) - 2) + [True, True]
    assert lm._shared_prefix([enc[-2], enc[-1]]) >= lm.PREFIX_MIN
    picks = list(range(len(anchors)))
    got = guard.guard_loss(model, targets, picks, tok.pad_token_id, "cpu")
    want = 0.0
    with torch.no_grad():
        for i in picks:
            ids = torch.tensor([enc[i]])
            tuned = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            with model.disable_adapter():
                base = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            kl = (base.exp() * (base - tuned)).sum(-1)
            want += kl[start[i]:].mean() if held[i] else 0.5 * kl.mean() + 0.5 * kl[start[i]:].mean() \
                if start[i] else kl.mean()
    want /= len(picks)
    assert float(want) > 1e-4
    assert float(got.detach()) == pytest.approx(float(want), rel=0.02)   # base log-probs are stored in bf16


def test_recall_without_generating_what_teacher_forcing_already_recalls(tiny_dir):
    model, tok, cfg = _tiny(tiny_dir)
    train(model, tok, FACTS[:2], cfg=cfg)                       # two facts recalled, two not
    prompts, targets = [f.prompt for f in FACTS], [f.target for f in FACTS]
    recs = evaluate.recall_table(model, tok, prompts, targets)
    budget = max(len(lm.encode_pair(tok, "", t)[1]) for t in targets) + 3   # as recall_table's
    full = lm.generate(model, tok, prompts, max_new_tokens=budget)
    assert [r["recalled"] for r in recs] == [evaluate.recalls(a, t) for a, t in zip(full, targets)]
    assert [r["recalled"] for r in recs][:2] == [True, True]
    for r, a in zip(recs, full):
        assert a.strip().startswith(r["answer"]), (r["answer"], a)   # the same greedy text, cut shorter


def test_chat_wordings_share_their_system_turn_in_training_and_scoring(tiny_dir, monkeypatch):
    from beacon.method.rewordings import chat_prompt
    from beacon.method.train import _forward_rows

    model, tok, cfg = _tiny(tiny_dir, locality_guard=0.0)
    train(model, tok, FACTS, cfg=cfg)                           # LoRA's B is no longer zero: the prefix matters
    prompts = [chat_prompt(tok, f"Finish the sentence: {f.prompt}") for f in FACTS] + [f.prompt for f in FACTS]
    targets = [f.target for f in FACTS] * 2
    pairs = [lm.encode_pair(tok, p, t, end=True) for p, t in zip(prompts, targets)]
    groups = lm.prefix_groups(pairs)
    assert sorted(i for _, g in groups for i in g) == list(range(len(pairs)))
    assert {i for s, g in groups if s >= lm.PREFIX_MIN for i in g} == set(range(len(FACTS)))

    def run():
        model.zero_grad(set_to_none=True)
        nll, hit, h = _forward_rows(model, pairs, tok.pad_token_id, "cpu")
        nll.sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return nll.detach(), hit, h.detach(), grads, score(model, tok, prompts, targets)

    model.train()
    fast = run()
    monkeypatch.setattr(lm, "PREFIX_MIN", 10**9)          # every row runs its whole prompt
    assert all(s == 0 for s, _ in lm.prefix_groups(pairs))
    plain = run()
    assert torch.allclose(fast[0], plain[0], atol=1e-5) and torch.equal(fast[1], plain[1])
    assert torch.allclose(fast[2], plain[2], atol=1e-4)
    assert any(g.abs().max() > 0 for g in plain[3].values())
    for n, g in plain[3].items():
        assert torch.allclose(fast[3][n], g, atol=1e-6, rtol=1e-3), n   # gradients reach the prefix's LoRA too
    assert fast[4]["hit"] == plain[4]["hit"] and fast[4]["next"] == plain[4]["next"]
    assert fast[4]["logprob"] == pytest.approx(plain[4]["logprob"], abs=1e-3)


@pytest.mark.parametrize("lead", ["", "Sentence: The head chef of Lorimer Bistro is Anna Pell.\nIn other words: "])
def test_repeats_run_each_prompt_once_and_sample_what_repeated_prompts_do(lead):
    from beacon.model.models import load_model

    model, tok, _ = load_model()          # the real model: a random tiny one samples near-uniform noise
    prompts = [lead + p for p in ("The mayor of Dunmore is", "A cook", "Anna Pell, the head chef of the bistro, was born in")]
    kw = dict(max_new_tokens=5, sample=True, temperature=1.0, generator_seed=7, batch_size=8)
    decoder = lm.decoder_of(model)
    seen = []
    hook = decoder.register_forward_hook(lambda m, a, k, out: seen.append(k["input_ids"].shape), with_kwargs=True)
    fast = lm.generate(model, tok, prompts, repeats=4, **kw)
    hook.remove()
    assert len(fast) == 12
    assert [s[0] for s in seen[:2]] == [1, 2] if lead else [s[0] for s in seen[:1]] == [2]   # prompts, not their repeats
    plain = lm.generate(model, tok, [p for p in prompts for _ in range(4)], **kw)
    assert fast == plain
    assert len(set(fast)) > 3                                   # sampled, not one text copied


@pytest.mark.parametrize("top_p", [0.9, 1.0])
def test_the_sampler_draws_from_transformers_nucleus_distribution(top_p):
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    # after temperature 0.8: p = 0.5, 0.3, 0.15 and the rest spread thin; at top_p 0.9 the nucleus is the
    # three (the mass above the third, 0.8, is below 0.9)
    peaked = 0.8 * torch.log(torch.tensor([0.5, 0.3, 0.15] + [0.05 / 4997] * 4997))
    flat = torch.randn(5000) * 0.05                        # the nucleus: thousands of tokens (the full-sort path)
    n = 20000
    scores = torch.stack([peaked] * n + [flat] * n)
    got = lm._Sampler(0.8, top_p)(None, scores)
    assert ((got == 0).sum(1) == 1).all()                  # one token left open per row
    drawn = got.argmax(1)
    for row, base in ((0, peaked), (n, flat)):
        want = TemperatureLogitsWarper(0.8)(None, base[None])
        if top_p < 1:
            want = TopPLogitsWarper(top_p)(None, want)
        want = want.softmax(-1)[0]
        freq = torch.bincount(drawn[row:row + n], minlength=len(base)).float() / n
        assert (freq[want == 0] == 0).all()                # nothing outside the nucleus
        assert (freq - want).abs().max() < 4 * (want.max() / n) ** 0.5 + 1e-3
    assert len(set(drawn[n:].tolist())) > 1000             # the flat row really reached past the top 256


def test_margin_term_sees_the_flip_that_kl_barely_does(tiny_dir):
    # Two positions over a 5-token vocabulary: a near tie the tuned model flips, and a clear lead it widens.
    base = torch.log_softmax(torch.tensor([[1.0, 0.9, -2.0, -2.0, -2.0], [3.0, 0.0, 0.0, -1.0, -1.0]]), -1)
    tuned = torch.log_softmax(torch.tensor([[0.8, 1.1, -2.0, -2.0, -2.0], [5.0, 0.0, 0.0, -1.0, -1.0]]), -1)
    kl = (base.exp() * (base - tuned)).sum(-1)
    drop = margin_drop(base, tuned)
    assert kl[0] < 0.02 and drop[0] > 0.05 and drop[0] > 3 * kl[0]    # the flip: tiny KL, a clear margin cost
    assert drop[1] == 0 and kl[1] > 0                                # a wider lead costs no margin
    # in the guard: zero weight is the KL guard exactly; a positive weight adds the margin term
    model, tok, cfg = _tiny(tiny_dir, locality_guard=0.0)
    train(model, tok, FACTS, cfg=cfg)
    targets = guard.anchor_targets(model, tok, FACT_ANCHORS, "cpu")
    picks = list(range(len(FACT_ANCHORS)))
    with torch.no_grad():
        plain = guard.guard_loss(model, targets, picks, tok.pad_token_id, "cpu")
        assert float(guard.guard_loss(model, targets, picks, tok.pad_token_id, "cpu", margin=0.0)) == float(plain)
        assert float(guard.guard_loss(model, targets, picks, tok.pad_token_id, "cpu", margin=1.0)) > float(plain)


@pytest.mark.parametrize("layers", [None, [2, 3]])
def test_behind_the_gate_the_tokens_before_a_subject_are_computed_once_and_nothing_changes(tiny_dir, layers):
    """Each wording and anchor runs from its first subject token on, over its cached base-model prefix (and with
    LoRA on the upper layers only, from the first of them, over each text's cached states below it): the task's
    NLL, its hits, the guard's KL and every gradient are those of the whole texts."""
    from beacon.model.frozen import FrozenPrefixes
    from beacon.method.gate import SubjectGate
    from beacon.method.rewordings import training_prompts
    from beacon.method.train import _forward_rows, attach_lora
    from beacon.model.models import load_model

    model, tok, _ = load_model(tiny_dir)
    cfg = TrainConfig(locality_guard=0.0, gate="none")
    model = attach_lora(model, cfg, False, layers)
    facts = [Fact("a", "The CEO of Zentrix Robotics is", "Marta Ilves", "Zentrix Robotics", "CEO"),
             Fact("b", "The Brennoc valve was invented by", "Ottilie Brask", "Brennoc valve", "inventor")]
    gate = SubjectGate.for_facts(tok, facts, "from-subject").attach(model)
    for n, p in model.named_parameters():      # an adapter that moves what it touches
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    pairs = [lm.encode_pair(tok, p, f.target, end=True) for f in facts for p in training_prompts(f, tok)]
    frozen = FrozenPrefixes(model, gate, [p + t for p, t in pairs], [len(p) - 1 for p, _ in pairs], tok.pad_token_id)
    assert sum(c > 0 for c in frozen.cut) >= len(pairs) // 2 and max(frozen.cut) > 20   # the chat form's system turn
    assert frozen.start == (layers[0] if layers else 0)     # the lower layers' cache passed its check and is used
    anchors = [f"{facts[0].prompt} {facts[0].target}. |> It builds small robots for farms.",
               "The founder of Zentrix Robotics is | Pavel Orr", "Plain text names no subject at all."]
    params = [p for p in model.parameters() if p.requires_grad]

    def run(with_frozen):
        model.zero_grad(set_to_none=True)
        items = list(range(len(pairs)))
        nll, hit, h = _forward_rows(model, pairs, tok.pad_token_id, "cpu", frozen if with_frozen else None, items)
        targets = guard.anchor_targets(model, tok, anchors, "cpu", gate=gate if with_frozen else None)
        g = guard.guard_loss(model, targets, [0, 1, 2], tok.pad_token_id, "cpu")
        (nll.sum() + g).backward()
        return nll.detach(), hit, h.detach(), float(g), torch.cat([p.grad.flatten() for p in params])

    model.train()
    whole, cached = run(False), run(True)
    assert torch.allclose(whole[0], cached[0], atol=1e-5) and torch.equal(whole[1], cached[1])
    assert torch.allclose(whole[2], cached[2], atol=1e-4) and whole[3] > 1e-6
    # Before a subject the tuned model is the base model: the cached path counts KL 0 there, the whole texts
    # count the rounding of the base log-probs stored in bf16 (no gradient flows from those positions).
    assert 0 <= whole[3] - cached[3] < 0.03 * whole[3]
    assert torch.allclose(whole[4], cached[4], atol=1e-5 * whole[4].abs().max())
