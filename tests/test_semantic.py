import numpy as np
import pytest

from core.facts import Fact, load_facts
from core.models import load_model
from core.pipeline import ASSETS, embedder
from core.semantic import (categorize, detrimental_filter, find_conflicts, loss_weights, merge_duplicates,
                           semantic_distances)


def test_planted_conflicts_flagged_and_duplicates_merged():
    facts = load_facts(ASSETS / "conflicts.csv")
    unique, merged = merge_duplicates(facts)
    assert merged == {"c08": "c07"}
    assert next(f for f in unique if f.id == "c07").paraphrases == ["The inventor of the Brennoc valve is"]
    groups = {frozenset(g["ids"]): g["why"] for g in find_conflicts(unique, embedder(), 0.9)}
    assert set(groups) == {frozenset({"c01", "c02"}), frozenset({"c03", "c04"}), frozenset({"c05", "c06"})}
    assert "same subject and relation" in groups[frozenset({"c01", "c02"})]
    assert "ask the same thing" in groups[frozenset({"c03", "c04"})]  # no subject/relation: found by meaning


@pytest.mark.parametrize("name", ["invented.csv", "counterfactual.csv", "probes.csv"])
def test_sample_sets_have_no_false_conflicts(name):
    facts = load_facts(ASSETS / name)
    assert find_conflicts(facts, embedder(), 0.9) == []


def test_same_target_is_not_a_conflict():
    facts = [Fact("a", "The CEO of Zentrix is", "Marta Ilves", "Zentrix", "CEO"),
             Fact("b", "Zentrix's chief executive is", "marta ilves.", "zentrix", "ceo")]
    assert find_conflicts(facts, embedder(), 0.9) == []


def test_filter_drops_a_far_outlier_with_its_numbers():
    rng = np.random.default_rng(0)
    d = list(rng.normal(0.5, 0.02, 20)) + [0.95]
    feats = rng.normal(size=(21, 16))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    ids = [f"f{i}" for i in range(21)]
    drops = detrimental_filter(ids, d, feats, strength=2.0, max_drop_fraction=0.1)
    assert list(drops) == ["f20"] and "z = " in drops["f20"] and "0.950" in drops["f20"]
    assert detrimental_filter(ids, d, feats, strength=2.0, max_drop_fraction=0.1, protect={"f20"}) == {}


def test_filter_drops_the_farther_of_two_crowding_facts():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(10, 32))
    feats[3] = feats[7] + 0.01 * rng.normal(size=32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    d = [0.5] * 10
    d[3] = 0.55
    drops = detrimental_filter([f"f{i}" for i in range(10)], d, feats, strength=5.0, max_drop_fraction=0.2)
    assert list(drops) == ["f3"] and "crowds f7" in drops["f3"]


def test_semantic_weights_have_mean_one_and_follow_distance():
    w = loss_weights([0.2, 0.4, 0.6, 0.8])
    assert abs(np.mean(w) - 1) < 1e-3 and w == sorted(w)
    assert loss_weights([0.2, 0.9], "uniform") == [1.0, 1.0]


def test_categories_and_distances_on_the_default_model(probes, invented):
    model, tok, _ = load_model()
    facts = probes[:6] + invented[:6]
    from core.evaluate import generate
    greedy = generate(model, tok, [f.prompt for f in facts], max_new_tokens=8)
    cats = [c["category"] for c in categorize(model, tok, facts, greedy, samples=4)]
    assert cats[:6] == ["known"] * 6 and "known" not in cats[6:]
    d = semantic_distances(model, tok, facts)
    assert np.mean(d[:6]) < np.mean(d[6:])  # known facts point at their target; invented ones don't
    cf = load_facts(ASSETS / "counterfactual.csv")[:6]
    greedy = generate(model, tok, [f.prompt for f in cf], max_new_tokens=8)
    assert "update" in [c["category"] for c in categorize(model, tok, cf, greedy, samples=4)]


def test_guard_anchors_leave_out_restated_facts_and_rank_related_knowledge_first():
    from core.pipeline import default_anchors
    from core.guard import guard_anchors

    facts = [Fact("a", "The CEO of Tesla is", "Marta Ilves", "Tesla", "CEO"),
             Fact("b", "The capital of Italy is", "Milan")]
    anchors = default_anchors()
    kept, near, excluded = guard_anchors(embedder(), facts, anchors, near=8)
    # the guard must not pull the model back to the answer the person is replacing
    assert excluded == ["The CEO of Tesla is | Elon Musk."] and len(kept) == len(anchors) - 1
    nearest = [kept[i] for i in near]
    assert len(nearest) == 8 and sum(a.startswith(("The capital of", "The CEO of")) for a in nearest) >= 5
    assert not any(a.startswith("Please remember") for a in nearest)
    # round robin: each fact gets its own nearest anchors, not one relation all of them
    assert any(a.startswith("The capital of") for a in nearest[:2]) and any(a.startswith("The CEO of") for a in nearest[:2])


def test_guard_batches_take_their_share_from_the_near_anchors():
    import random

    from core.guard import guard_picks as _guard_picks

    rng = random.Random(0)
    near = [3, 7, 11, 20]
    for _ in range(20):
        picks = _guard_picks(rng, 50, near, 8, 0.5)
        assert len(picks) == len(set(picks)) == 8 and sum(p in near for p in picks) >= 4
    # share 0: uniform over all 50, so about 8 * 4/50 = 0.64 near anchors a batch, not the 4 of share 0.5
    uniform = [sum(p in near for p in _guard_picks(rng, 50, near, 8, 0.0)) for _ in range(200)]
    assert 0.3 < sum(uniform) / len(uniform) < 1.1
    assert sorted(_guard_picks(rng, 5, near, 8, 0.5)) == [0, 1, 2, 3, 4]
