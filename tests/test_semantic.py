import numpy as np
import pytest

from beacon.data.facts import Fact, load_facts
from beacon.model.models import load_model
from beacon.pipeline import ASSETS, embedder
from beacon.method.semantic import (categorize, detrimental_filter, find_conflicts, loss_weights, merge_duplicates,
                                    target_vectors)


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
    """Categories and distances come from the recall pass; they agree with the definitions they replace:
    categories drawn from 8 sampled answers, distances from a pass over the prompt alone."""
    from beacon.model.lm import collate, decoder_states, generate, normalise
    from beacon.measure.evaluate import evaluate_facts, recalls

    model, tok, _ = load_model()
    facts = probes[:6] + invented[:6]
    ev = evaluate_facts(model, tok, facts, forms=False)
    cats = [c["category"] for c in categorize(model, tok, facts, [r["answer"] for r in ev["facts"]], ev["fact_scores"],
                                              [r["recalled"] for r in ev["facts"]], samples=8)]
    assert cats[:6] == ["known"] * 6 and "known" not in cats[6:]
    d = [s["distance"] for s in ev["fact_scores"]]
    assert np.mean(d[:6]) < np.mean(d[6:])  # known facts point at their target; invented ones don't
    ids = [tok(f.prompt).input_ids for f in facts]
    x, m, _ = collate([(e, []) for e in ids], tok.pad_token_id, "cpu")
    with __import__("torch").no_grad():
        h = decoder_states(model, x, m)[range(len(ids)), [len(e) - 1 for e in ids]]
    u = target_vectors(model, tok, facts)
    assert np.allclose(d, (1 - __import__("torch").nn.functional.cosine_similarity(h, u)).numpy(), atol=1e-3)

    cf = load_facts(ASSETS / "counterfactual.csv") + load_facts(ASSETS.parent / "benchmarks" / "fresh" / "counterfactual.csv") \
        + invented
    ev = evaluate_facts(model, tok, cf, forms=False)
    greedy = [r["answer"] for r in ev["facts"]]
    cats = [c["category"] for c in categorize(model, tok, cf, greedy, ev["fact_scores"],
                                              [r["recalled"] for r in ev["facts"]], samples=8)]
    assert "update" in cats and "new" in cats
    # The definition it reads off: 8 answers sampled at T = 0.7; known if one recalls the target, update if half
    # agree with the greedy answer's first two words. Drawn samples are noisy: the read-off categories must agree
    # with each of two draws at least as well as the draws agree with each other (64 facts: 59 and 58 against 57).
    n_new = max(len(tok(" " + f.target).input_ids) for f in cf) + 3
    draws = []
    for seed in (0, 1):
        drawn = generate(model, tok, [f.prompt for f in cf], max_new_tokens=n_new, sample=True, generator_seed=seed,
                         repeats=8, batch_size=256)
        draw = []
        for i, f in enumerate(cf):
            ans = drawn[8 * i:8 * i + 8]
            head = " ".join(normalise(greedy[i]).split()[:2])
            draw.append("known" if recalls(greedy[i], f.target) or any(recalls(a, f.target) for a in ans) else
                        "update" if head and sum(" ".join(normalise(a).split()[:2]) == head for a in ans) >= 4 else "new")
        draws.append(draw)
    agree = lambda a, b: sum(x == y for x, y in zip(a, b))
    assert min(agree(cats, d) for d in draws) >= agree(*draws) >= 0.75 * len(cf), [agree(cats, d) for d in draws]


def test_guard_anchors_leave_out_restated_facts_and_rank_related_knowledge_first():
    from beacon.pipeline import default_anchors
    from beacon.method.anchor_sources import guard_anchors

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

    from beacon.method.guard import guard_picks as _guard_picks

    rng = random.Random(0)
    near = [3, 7, 11, 20]
    for _ in range(20):
        picks = _guard_picks(rng, 50, near, 8, 0.5)
        assert len(picks) == len(set(picks)) == 8 and sum(p in near for p in picks) >= 4
    # share 0: uniform over all 50, so about 8 * 4/50 = 0.64 near anchors a batch, not the 4 of share 0.5
    uniform = [sum(p in near for p in _guard_picks(rng, 50, near, 8, 0.0)) for _ in range(200)]
    assert 0.3 < sum(uniform) / len(uniform) < 1.1
    assert sorted(_guard_picks(rng, 5, near, 8, 0.5)) == [0, 1, 2, 3, 4]


class HashEmbedder:
    """A stand-in for the sentence embedder: a fixed random unit vector per text (up to case and
    spacing), so equal questions have cosine 1 and others about 0. Called as beacon.method.semantic.embed calls it."""

    def __init__(self, dim=64):
        self.dim = dim

    def encode(self, texts, normalize_embeddings=True, convert_to_numpy=True, batch_size=64):
        import hashlib

        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int(hashlib.sha1(" ".join(t.lower().split()).encode()).hexdigest()[:8], 16)
            v = np.random.default_rng(seed).standard_normal(self.dim)
            out[i] = v / np.linalg.norm(v)
        return out


def test_conflicts_scale_to_25000_facts_in_bounded_memory():
    import time
    import tracemalloc

    facts = [Fact(f"s{i}", "The CEO of Zentrix is", f"Person {i}", "Zentrix", "CEO") for i in range(20_000)]
    facts += [Fact(f"d{i}", f"The capital of Land{i} is", f"City{i}", f"Land{i}", "capital") for i in range(5_000)]
    facts += [Fact("p1", "Who painted the Orvik mural?", "Ada"),  # same question, no subject: found by meaning
              Fact("p2", "who painted the  orvik mural?", "Bo"),
              Fact("q1", "Vessa's river is", "Tarn", paraphrases=["Which river runs through Vessa?"]),
              Fact("q2", "which river runs through vessa?", "Ulm"),  # matches q1's paraphrase
              Fact("r1", "Who painted the Orvik mural?", "Ada", "Orvik mural", "painter"),  # agrees with p1, not p2
              Fact("u1", "The motto of Drusk is", "Onward", "Drusk", "motto"),  # same answer: no conflict
              Fact("u2", "the motto of drusk is", "onward.", "drusk", "Motto")]
    tracemalloc.start()
    t = time.perf_counter()
    groups = find_conflicts(facts, HashEmbedder(), 0.9)
    seconds, (_, peak) = time.perf_counter() - t, tracemalloc.get_traced_memory()
    tracemalloc.stop()
    by_ids = {frozenset(g["ids"]): g["why"] for g in groups}
    assert set(by_ids) == {frozenset(f"s{i}" for i in range(20_000)), frozenset({"p1", "p2", "r1"}),
                            frozenset({"q1", "q2"})}
    assert by_ids[frozenset(f"s{i}" for i in range(20_000))] == "same subject and relation ('zentrix', 'ceo')"
    assert by_ids[frozenset({"q1", "q2"})] == "prompts ask the same thing (cosine 1.00)"
    print(f"\nfind_conflicts on {len(facts):,} facts: {seconds:.1f} s, peak {peak / 2**20:.0f} MB traced")
    # Before: cubic in the shared group (2,000 facts: 72 s) and two n x n matrices (25,000: 7 GB).
    assert seconds < 20 and peak < 400 * 2**20, (seconds, peak)


def test_conflict_blocks_do_not_change_the_answer():
    facts, _ = merge_duplicates(load_facts(ASSETS / "conflicts.csv"))
    facts += load_facts(ASSETS / "invented.csv")[:10]
    assert find_conflicts(facts, embedder(), 0.9, block=7) == find_conflicts(facts, embedder(), 0.9)
