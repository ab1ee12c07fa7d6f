"""The semantic method (after "Semantic are Beacons", Wang & Li, ACL Findings 2024).

What is computed here, since the paper's full text is not available to us:

* Semantic distance of a fact = 1 - cos(h, u). h is the model's final hidden state at the
  last prompt token, exactly the vector the LM head turns into next-token logits (read from
  the LM head's input, so after the final norm). u is the mean of the LM head's output
  embedding rows of the target's tokens. A fact the model already "points at" has a small
  distance; a fact far from anything the model would say has a large one.
* Detrimental-data filter: the paper picks training data that keeps the mean distance low
  while keeping the knowledge features spread out. We drop (a) far outliers, distance
  z-score above `strength`, and (b) facts that crowd another fact: knowledge features
  (sentence embeddings of "prompt target") with cosine above 0.95, dropping the one of the
  pair that is farther from its target. Never more than `max_drop_fraction` of the facts.
* Re-weighted loss: w_i = d_i / mean(d), clipped to [0.25, 4] and renormalised to mean 1,
  so facts far from their target, which are the slow ones to learn, weigh more.
* Conflicts: (a) same normalised subject and relation with different targets; (b) prompts
  (or paraphrases) that ask the same thing, sentence-embedding cosine >= threshold, with
  different targets. Exact duplicates (same prompt and target) are merged first.
* Guard anchors: see beacon/method/anchor_sources.py.
* Categories (in the spirit of SliCK, Gekhman et al. 2024): known = greedy recalls the
  target or some sampled answer likely would; update = not known and the greedy answer is stable
  (a sampled answer starts with its first two words at least half the time); new = everything else.
  Read off teacher-forced probabilities at the sampling temperature, not from drawn samples.
"""
from __future__ import annotations

import numpy as np
import torch

from beacon.model.lm import encode_pair, normalise, score

CROWD_COSINE = 0.95


def _norm(s: str | None) -> str:
    return normalise(s or "")


# ---------------------------------------------------------------- duplicates and conflicts

def merge_duplicates(facts):
    """Exact duplicates (same prompt and target, up to case and spacing) become one fact,
    their paraphrases pooled. Returns (unique facts, {dropped id: kept id})."""
    seen, unique, merged = {}, [], {}
    for f in facts:
        key = (_norm(f.prompt), _norm(f.target))
        if key in seen:
            keep = seen[key]
            keep.paraphrases += [p for p in f.paraphrases if p not in keep.paraphrases]
            merged[f.id] = keep.id
        else:
            seen[key] = f
            unique.append(f)
    return unique, merged


def embed(embedder, texts: list[str]) -> np.ndarray:
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    return embedder.encode(texts, normalize_embeddings=True, convert_to_numpy=True, batch_size=64)


def find_conflicts(facts, embedder=None, threshold: float = 0.9, block: int = 1 << 22) -> list[dict]:
    """Groups of facts that cannot all be true. Each: {"ids": [...], "why": "..."}.

    Cost: the subject/relation rule is one pass over a dict of groups. The prompt rule compares
    every text with every other, but a block of facts at a time against the facts after them
    (`block` similarities, 16 MB, at once): only the pairs above the threshold are kept and the
    groups they touch merged, so memory stays bounded and no n x n matrix is ever built."""
    n = len(facts)
    parent = list(range(n))
    reasons: dict[int, set[str]] = {}  # by a member of the group; gathered by the group's root at the end

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    targets = [_norm(f.target) for f in facts]
    keys = [(_norm(f.subject), _norm(f.relation)) if f.subject and f.relation else None for f in facts]
    by_key: dict[tuple[str, str], list[int]] = {}
    for i, key in enumerate(keys):
        if key:
            by_key.setdefault(key, []).append(i)
    for (subj, rel), idx in by_key.items():
        # With two targets or more, each fact differs from some other one, so the pairs join them all.
        if len({targets[i] for i in idx}) > 1:
            for i in idx[1:]:
                parent[root(i)] = root(idx[0])
            reasons.setdefault(idx[0], set()).add(f"same subject and relation ({subj!r}, {rel!r})")
    label = np.array([root(i) for i in range(n)], dtype=np.int64)

    if embedder is not None and n > 1:
        label = _join_similar(facts, embedder, threshold, block, targets, keys, label, reasons)

    groups: dict[int, list[int]] = {}
    for i, g in enumerate(label.tolist()):
        groups.setdefault(g, []).append(i)
    why: dict[int, set[str]] = {}
    for i, rs in reasons.items():
        why.setdefault(int(label[i]), set()).update(rs)
    return [{"ids": [facts[i].id for i in members], "why": "; ".join(sorted(why[g]))}
            for g, members in groups.items() if len(members) > 1]


def _join_similar(facts, embedder, threshold, block, targets, keys, label, reasons) -> np.ndarray:
    """Join facts whose prompts or paraphrases ask the same thing (cosine >= threshold) and whose
    targets differ; pairs with the same subject and relation are the other rule's. Returns the new
    group label of each fact; adds to `reasons` the best cosine of each pair, to 2 decimals."""
    from scipy.sparse import coo_matrix  # a dependency of sentence-transformers, so there with any embedder
    from scipy.sparse.csgraph import connected_components

    n = len(facts)
    texts, owner = [], []
    for i, f in enumerate(facts):
        for p in [f.prompt, *f.paraphrases]:
            texts.append(p)
            owner.append(i)
    unique = {t: k for k, t in enumerate(dict.fromkeys(texts))}  # each distinct text embedded once
    e = np.asarray(embed(embedder, list(unique)), dtype=np.float32)[[unique[t] for t in texts]]
    owner = np.array(owner)
    ends = np.cumsum(np.bincount(owner, minlength=n))  # a fact's texts are texts[ends[i-1]:ends[i]]
    several = np.diff(ends, prepend=0) > 1
    codes: dict = {}
    target_of = np.array([codes.setdefault(t, len(codes)) for t in targets])[owner]
    codes = {}
    key_of = np.array([codes.setdefault(k, len(codes)) if k else -1 for k in keys])[owner]
    thr = np.float64(threshold)  # compared in float64, as the cosines always were
    # seen[a, c + 102]: a pair of fact a has best cosine c/100 (c from -102 to 102: unit vectors, rounding)
    seen = np.zeros((n, 205), dtype=bool)

    lo = 0
    while lo < n:
        # The texts of facts lo..hi-1 against those of facts lo..n-1: at most `block` cosines at a time.
        r0 = ends[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, r0 + max(1, block // (len(texts) - r0)), side="right")))
        r1 = ends[hi - 1]
        sim = e[r0:r1] @ e[r0:].T
        hit = sim >= thr
        hit &= owner[None, r0:] > owner[r0:r1, None]
        hit &= target_of[None, r0:] != target_of[r0:r1, None]
        hit &= (key_of[None, r0:] != key_of[r0:r1, None]) | (key_of[r0:r1, None] < 0)
        if not hit.any():
            lo = hi
            continue
        i, j = np.nonzero(hit)
        a, b, cos = owner[r0 + i], owner[r0 + j], sim[i, j].astype(np.float64)
        code = np.clip(np.rint(cos * 100), -102, 102).astype(np.int64) + 102
        # A pair's reason is its best cosine: where a fact has several texts, keep each pair's best.
        multi = several[a] | several[b]
        if multi.any():
            pair = a[multi] * n + b[multi]
            order = np.lexsort((-code[multi], pair))
            first = np.r_[True, pair[order][1:] != pair[order][:-1]]
            seen[a[multi][order][first], code[multi][order][first]] = True
        seen[a[~multi], code[~multi]] = True
        join = label[a] != label[b]
        if join.any():  # merge the groups these pairs touch; the labels stay below n
            graph = coo_matrix((np.ones(int(join.sum()), dtype=np.int8), (label[a][join], label[b][join])), shape=(n, n))
            label = connected_components(graph, directed=False)[1][label].astype(np.int64)
        lo = hi

    for i, c in zip(*np.nonzero(seen)):
        reasons.setdefault(int(i), set()).add(f"prompts ask the same thing (cosine {(c - 102) / 100:.2f})")
    return label


# ---------------------------------------------------------------- what the model believes

def categorize(model, tok, facts, greedy_answers: list[str], fact_scores: list[dict], greedy_recalled: list[bool],
               samples: int = 8) -> list[dict]:
    """known / update / new for each fact, from teacher-forced probabilities at the sampling temperature
    (SAMPLE_TEMPERATURE), not from drawn samples. q: the probability that a sampled answer starts with the
    target (score's sample_logprob, from the pass that measured recall); g: that it starts with the greedy
    answer's first two words (one more pass over each prompt and those words). Known: the greedy answer
    recalls the target, or at least one of `samples` sampled answers would, more likely than not
    (1 - (1 - q)^samples >= 0.5). Update: not known, and a sampled answer agrees with the greedy one on its
    first two words more often than not (g >= 0.5): the model has a stable answer that the fact replaces.
    New: otherwise. samples = 0 skips the sampled part: known only from the greedy answer, update never."""

    heads = [" ".join(a.split()[:2]) for a in greedy_answers]
    rows = [i for i, h in enumerate(heads) if h and samples]
    g = dict(zip(rows, score(model, tok, [facts[i].prompt for i in rows], [heads[i] for i in rows])["sample_logprob"])) \
        if rows else {}
    out = []
    for i, (sc, greedy_hit) in enumerate(zip(fact_scores, greedy_recalled)):
        q = float(np.exp(sc["sample_logprob"]))
        agree = float(np.exp(g[i])) if i in g else 0.0
        if greedy_hit or (samples and 1 - (1 - q) ** samples >= 0.5):
            cat = "known"
        elif samples and agree >= 0.5:
            cat = "update"
        else:
            cat = "new"
        out.append({"category": cat, "sample_recall": round(q, 3) if samples else None,
                    "greedy_agreement": round(agree, 3) if samples else None})
    return out


# ---------------------------------------------------------------- semantic distance

def target_vectors(model, tok, facts) -> torch.Tensor:
    """u: mean LM-head row of each target's tokens."""
    W = model.get_output_embeddings().weight
    rows = []
    for f in facts:
        ids = encode_pair(tok, "", f.target)[1]
        rows.append(W[torch.tensor(ids, device=W.device)].float().mean(0))
    return torch.stack(rows) if rows else torch.zeros((0, W.shape[1]))


def cosine_distance(h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return 1 - torch.nn.functional.cosine_similarity(h.float(), u.float(), dim=-1)


# ---------------------------------------------------------------- filter and weights

def detrimental_filter(ids, distances, features: np.ndarray, strength: float = 2.0,
                       max_drop_fraction: float = 0.1, protect=()) -> dict[str, str]:
    """{id: reason} for facts to drop. Outliers first (largest z-score), then crowding pairs."""
    n = len(ids)
    budget = int(max_drop_fraction * n)
    if n < 4 or budget == 0:
        return {}
    d = np.asarray(distances, dtype=float)
    alive = np.ones(n, bool)
    reasons: dict[str, str] = {}

    def spread(mask):  # variance of the knowledge features: mean squared distance to centroid
        f = features[mask]
        return float(((f - f.mean(0)) ** 2).sum(1).mean())

    mu, sd = d.mean(), d.std() + 1e-8
    for i in np.argsort(-d):
        z = (d[i] - mu) / sd
        if len(reasons) >= budget or z <= strength:
            break
        if ids[i] in protect:
            continue
        alive[i] = False
        reasons[ids[i]] = (f"filter: semantic distance {d[i]:.3f} is an outlier (z = {z:.2f} > {strength:g}; "
                           f"mean {mu:.3f}, sd {sd:.3f}); kept mean distance {d[alive].mean():.3f}")
    sim = features @ features.T
    np.fill_diagonal(sim, -1)
    while len(reasons) < budget:
        masked = np.where(np.outer(alive, alive), sim, -1)
        a, b = np.unravel_index(np.argmax(masked), masked.shape)
        if masked[a, b] < CROWD_COSINE:
            break
        i, j = (a, b) if d[a] >= d[b] else (b, a)
        if ids[i] in protect:
            i, j = j, i
            if ids[i] in protect:
                sim[a, b] = sim[b, a] = -1
                continue
        before = spread(alive)
        alive[i] = False
        reasons[ids[i]] = (f"filter: crowds {ids[j]} (feature cosine {masked[a, b]:.3f} > {CROWD_COSINE}); "
                           f"distance {d[i]:.3f} vs {d[j]:.3f}; feature variance {before:.3f} -> {spread(alive):.3f}")
    return reasons


WEIGHTINGS = ("semantic", "dynamic", "uniform")


def loss_weights(distances, mode: str = "semantic") -> list[float]:
    """Static weights from the distances before training. "dynamic" starts from uniform: its weights
    come from the distances at each step (beacon.experimental.dynamic)."""
    d = np.asarray(distances, dtype=float)
    if mode not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, not {mode!r}")
    if mode in ("uniform", "dynamic") or len(d) == 0:
        return [1.0] * len(d)
    w = np.clip(d / max(d.mean(), 1e-8), 0.25, 4.0)
    w = w / w.mean()
    return [round(float(x), 4) for x in w]
