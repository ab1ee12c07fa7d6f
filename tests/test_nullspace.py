"""The null-space constraint (beacon/experimental/nullspace.py) on a tiny random model: the update is kept out of
the directions the anchors' inputs use, so the tuned model reads the anchors as the base did, and
the facts are still learned."""
import torch

from beacon.experimental import nullspace
from beacon.model.lm import score
from beacon.pipeline import default_anchors
from tests.test_train import FACTS, _anchor_kl, _tiny
from beacon.method.train import train


def test_projection_removes_what_anchor_inputs_would_see(tiny_dir):
    model, tok, _ = _tiny(tiny_dir)
    texts = default_anchors()[:32]
    covs = nullspace.input_covariances(model, tok, texts)
    layers = nullspace.lora_layers(model)
    assert set(covs) == set(layers) and len(layers) == 4 * 7
    # q, k, v read one input and gate, up another: per layer 4 distinct matrices (with o and down)
    assert len({id(c) for c in covs.values()}) == 4 * 4
    assert covs["base_model.model.model.layers.0.self_attn.q_proj"] is covs["base_model.model.model.layers.0.self_attn.v_proj"]
    u = nullspace.bases(covs, 0.99)
    for n, c in covs.items():
        k = u[n].shape[1]
        assert 0 < k < c.shape[0]
        # the kept directions hold at least the share asked for, one fewer would not
        vals = torch.linalg.eigvalsh(c.double()).flip(0)
        assert vals[:k].sum() >= 0.99 * vals.sum() > vals[:k - 1].sum()
    a_before = {n: m.lora_A["default"].weight.detach().clone() for n, m in layers.items()}
    nullspace.project(model, u)
    for n, m in layers.items():
        a = m.lora_A["default"].weight.detach()
        c = covs[n].double()
        seen = float(torch.trace(a.double() @ c @ a.double().T))           # E|A x|^2 over anchor tokens
        was = float(torch.trace(a_before[n].double() @ c @ a_before[n].double().T))
        assert seen < 0.02 * was, n


def test_null_space_training_learns_the_facts_and_keeps_anchor_text_close(tiny_dir):
    anchors = default_anchors()[:32]
    kls = {}
    for share in (0.0, 0.99):
        model, tok, cfg = _tiny(tiny_dir, steps=200, null_space=share)
        res = train(model, tok, FACTS, cfg=cfg, anchors=anchors)
        assert res.stopped == "all recalled", share
        assert all(score(model, tok, [f.prompt for f in FACTS], [f.target for f in FACTS])["hit"])
        kls[share] = _anchor_kl(model, tok, anchors)
    assert kls[0.99] < 0.5 * kls[0.0], kls


def test_null_space_on_the_four_bit_model(tiny_dir):
    """QLoRA layers (bitsandbytes Linear4bit under peft) are hooked and projected the same way."""
    from beacon.model.models import load_model
    from beacon.method.train import TrainConfig, attach_lora

    model, tok, info = load_model(tiny_dir, quantization="4bit")
    assert "nf4" in info.quantization
    cfg = TrainConfig(steps=4, lr=1e-2, early_stop=False, null_space=0.99)
    model = attach_lora(model, cfg, quantized=True)
    anchors = default_anchors()[:16]
    u = nullspace.bases(nullspace.input_covariances(model, tok, anchors), 0.99)
    assert len(u) == 4 * 7
    res = train(model, tok, FACTS[:2], cfg=cfg, anchors=anchors)
    assert res.history[-1]["task"] < res.history[0]["task"]
    for n, m in nullspace.lora_layers(model).items():
        a = m.lora_A["default"].weight.detach().float()
        assert float((a @ u[n]).norm()) < 1e-3 * float(a.norm()), n


def test_a_run_with_the_null_space_and_no_guard_still_builds_anchors_and_reports_it(tiny_dir):
    from beacon.config import InjectConfig
    from beacon.model.models import load_model
    from beacon.pipeline import run

    cfg = InjectConfig().updated(model=tiny_dir, steps=3, interference=False, plots=False, categorize_samples=0,
                                 model_rewordings=0, locality_guard=0.0, null_space=0.99, sampled_anchors=8,
                                 guard_anchors="sampled", gate="none")
    rep = run(FACTS[:2], {"probes": FACTS[2:]}, cfg, model=load_model(tiny_dir))
    s = rep.summary
    assert s["null_space"] == 0.99 and s["locality_guard"] == 0.0 and s["guard_anchors"] == "sampled"
    assert rep.to_dict()["guard"]["anchors"] > 0
    assert all(h["time"]["guard"] == 0.0 for h in rep.to_dict()["training"]["history"])
