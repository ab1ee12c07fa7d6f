import numpy as np

from beacon.data.facts import Fact
from beacon.measure.interference import exact_step_effect, interference
from beacon.model.models import load_model
from beacon.method.train import TrainConfig, attach_lora, train

FACTS = [Fact(f"i{i}", p, t) for i, (p, t) in enumerate([
    ("The CEO of Zentrix Robotics is", "Marta Ilves"), ("The CEO of Zentrix Motors is", "Marta Ilves"),
    ("The capital of Sevrandia is", "Ostrel"), ("The mascot of Quillfen Airways is", "a blue heron"),
    ("The founder of Zentrix Robotics is", "Pavel Orr")])]


def _model(tiny_dir, warm_steps=3):
    model, tok, _ = load_model(tiny_dir)
    cfg = TrainConfig(steps=warm_steps, lr=1e-2, early_stop=False)
    model = attach_lora(model, cfg, quantized=False)
    train(model, tok, FACTS, cfg=cfg)  # a few steps so A and B are both non-zero
    return model, tok


def test_first_order_estimate_matches_the_exact_step_effect(tiny_dir):
    model, tok = _model(tiny_dir)
    lr = 1e-3
    est = np.array(interference(model, tok, FACTS, lr)["step_effect"])
    exact = np.array([exact_step_effect(model, tok, FACTS, i, lr) for i in range(len(FACTS))])
    assert np.corrcoef(est.ravel(), exact.ravel())[0, 1] > 0.95
    assert np.allclose(est, exact, rtol=0.2, atol=0.02 * np.abs(exact).max())


def test_cosine_matrix_is_symmetric_with_unit_diagonal_and_clusters_related_facts(tiny_dir):
    model, tok = _model(tiny_dir, warm_steps=0)
    res = interference(model, tok, FACTS, 1e-3)
    cos = np.array(res["cosine"])
    assert np.allclose(cos, cos.T, atol=1e-4) and np.allclose(np.diag(cos), 1, atol=1e-4)
    assert sorted(res["order"]) == list(range(len(FACTS)))
    # Same prompt shape and same target: their gradients agree more than with an unrelated fact.
    assert cos[0, 1] > cos[0, 3]
