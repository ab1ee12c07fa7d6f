"""The language model's plumbing, shared by every stage: text normalisation, tokenising a (prompt, target)
pair, batched generation with shared prefixes, right-padded batches, teacher-forced forward passes that
compute logits only where a target is scored, and the per-row numbers read off them (`score_pairs`).
Measurement (beacon/measure/evaluate.py), training, the guard and the checks are built on these.
"""
from __future__ import annotations

import copy
import string

import torch

PUNCTUATION = string.punctuation + "“”‘’«»…"
ARTICLES = ("the", "a", "an")


def normalise(text: str) -> str:
    text = " ".join(text.lower().split())
    return text.strip(PUNCTUATION + " ")


def encode_pair(tok, prompt: str, target: str, end: bool = False) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the target with its leading space. Tokenised apart so
    that the prompt's ids are exactly what generation sees. end=True appends a full stop
    (training): the model learns where the answer ends, so it does not run on into the next
    word ("Probst" + "oina"), which recall at a word boundary would rightly reject."""
    p = tok(prompt, add_special_tokens=True).input_ids
    if end and target[-1:] not in ".!?":
        target = target + "."
    t = tok(" " + target, add_special_tokens=False).input_ids
    return p, t


def model_device(model):
    return next(model.parameters()).device


PREFIX_MIN = 16   # shared prompt tokens worth computing once (a few-shot prompt, a chat template's system turn)


def _shared_prefix(enc: list[list[int]]) -> int:
    """Length of the token prefix every prompt shares, leaving each at least one token of its own."""
    n = min(map(len, enc)) - 1
    for k in range(n):
        t = enc[0][k]
        if any(e[k] != t for e in enc):
            return k
    return max(n, 0)


@torch.no_grad()
def generate(model, tok, prompts: list[str], max_new_tokens: int | list[int] = 12, batch_size: int = 32,
             sample: bool = False, temperature: float = 0.7, generator_seed: int | None = None,
             top_p: float = 1.0, stop: str | None = None, repeats: int = 1) -> list[str]:
    """Batched greedy (or sampled) completions. max_new_tokens may be one per prompt.
    repeats: sampled completions per prompt, returned prompt by prompt (len(prompts) * repeats texts);
    each prompt is run once and its keys and values copied to its repeats.

    Prompts run in batches of rows alike: those that open with the same 16 tokens or more (a few-shot prompt,
    a chat template's system turn) together, that shared prefix run once and its KV cache copied to every row
    (on a CPU the prompt pass is most of the cost of short answers); within that, greedy rows of the same budget
    and of similar length (at most 1.5 times the shortest) together, sampled rows in their order, at most
    `batch_size` prompts a batch: a batch
    runs to its longest budget, pads to its longest prompt, and a decoding step costs about the same for 30
    rows as for 100 on a CPU. Each row is cut to its own budget: decoding is causal, so a greedy row's text is
    what it would be alone. Rows are laid out [prefix, padding, own tokens], the padding masked; positions
    come from the mask, so each row reads as it would alone.
    stop: a batch ends early once every row has produced a token containing this text (the text after it
    is the caller's to cut)."""
    dev, pad = model_device(model), tok.pad_token_id
    budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    enc = [tok(p, add_special_tokens=True).input_ids for p in prompts]
    if not enc:
        return []
    kw = dict(do_sample=False)     # sampling too: _Sampler draws the token, greedy decoding takes it
    if sample:
        from transformers import LogitsProcessorList
        kw["logits_processor"] = LogitsProcessorList([_Sampler(temperature, top_p)])
    if stop is not None:
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None) or tok.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        texts = tok.batch_decode([[i] for i in range(len(tok))])
        kw["eos_token_id"] = eos + [i for i, t in enumerate(texts) if stop in t and i not in eos]
    out: list[str] = [""] * (len(prompts) * repeats)
    per_batch = max(1, batch_size // repeats)
    for shared, group in prefix_groups([(e, []) for e in enc], ratio=float("inf")):
        shared = shared if shared >= PREFIX_MIN else 0
        cache = decoder_of(model)(input_ids=torch.tensor([enc[group[0]][:shared]], device=dev),
                                use_cache=True).past_key_values if shared else None
        # Sampled rows keep their order (a seed draws the same texts however the prompts are repeated)
        batches = [sorted(group)[k:k + per_batch] for k in range(0, len(group), per_batch)] if sample else \
            _decode_batches(group, budgets, [len(enc[i]) - shared for i in group], per_batch)
        for rows in batches:
            own = [enc[i][shared:] for i in rows]
            width = max(map(len, own))
            head = enc[rows[0]][:shared]
            input_ids = torch.tensor([head + [pad] * (width - len(x)) + x for x in own], device=dev)
            mask = torch.tensor([[1] * shared + [0] * (width - len(x)) + [1] * len(x) for x in own], device=dev)
            past = None
            if cache is not None:
                past = copy.deepcopy(cache)
                past.batch_repeat_interleave(len(rows))
            if repeats > 1:
                if width > 1:   # each prompt's own tokens but the last, once: generate runs the last one
                    pos = (mask.cumsum(-1) - 1).clamp(min=0)
                    past = decoder_of(model)(input_ids=input_ids[:, shared:-1], attention_mask=mask[:, :-1],
                                           position_ids=pos[:, shared:-1], past_key_values=past,
                                           use_cache=True).past_key_values
                    past.batch_repeat_interleave(repeats)
                input_ids, mask = input_ids.repeat_interleave(repeats, 0), mask.repeat_interleave(repeats, 0)
            extra = {"past_key_values": past} if past is not None else {}
            gen = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max(budgets[i] for i in rows),
                                 pad_token_id=pad, **kw, **extra)[:, shared + width:]
            for r, i in enumerate(rows):
                for j in range(repeats):
                    out[i * repeats + j] = tok.decode(gen[r * repeats + j, :budgets[i]], skip_special_tokens=True)
    return out


def _decode_batches(rows: list[int], budgets: list[int], lengths: list[int], size: int) -> list[list[int]]:
    """generate's batches of `rows` (lengths: each row's own, in the same order): the same budget, lengths
    within 1.5 times the shortest, at most `size` rows."""
    by_budget: dict[int, list[int]] = {}
    for r, n in zip(rows, lengths):
        by_budget.setdefault(budgets[r], []).append((r, n))
    out = []
    for _, items in sorted(by_budget.items()):
        for g in length_groups([n for _, n in items]):
            g = [items[j][0] for j in g]
            out += [g[k:k + size] for k in range(0, len(g), size)]
    return out


class _Sampler:
    """Temperature and nucleus (top-p) sampling as a logits processor: it draws each row's token itself
    (Gumbel-max: an exact draw from the filtered distribution) and leaves only that token open, so greedy
    decoding takes it. transformers' own top-p sorts the whole 49k vocabulary at every step and its
    multinomial draws over all of it: 13 s of a 40 s generation of the guard's texts on this CPU. The
    nucleus is looked for among the top 256 tokens; a row whose top 256 hold less than top_p of the mass
    is sorted in full, so the distribution is transformers' (keep a token while the mass above it is
    below top_p)."""
    TOP = 256

    def __init__(self, temperature: float, top_p: float):
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids, scores):
        logp = torch.log_softmax(scores.float() / self.temperature, -1)
        if self.top_p >= 1.0:
            pick = _gumbel_max(logp)
        else:
            top, idx = logp.topk(min(self.TOP, logp.shape[-1]), -1)
            wide = top.exp().sum(-1) < self.top_p
            pick = self._draw(top, idx)
            if wide.any():   # the nucleus reaches past the top 256: these rows in full
                pick[wide] = self._draw(*logp[wide].sort(-1, descending=True))
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, pick[:, None], 0.0)

    def _draw(self, top, idx):
        p = top.exp()
        keep = (p.cumsum(-1) - p) < self.top_p          # the mass above each token, in descending order
        return idx.gather(1, _gumbel_max(torch.where(keep, top, float("-inf")))[:, None])[:, 0]


def _gumbel_max(logp):
    """One draw per row from softmax(logp): argmax of logp plus Gumbel noise."""
    return (logp - torch.log(-torch.log(torch.rand_like(logp).clamp_min(1e-20)))).argmax(-1)


def decoder_of(model):
    """The decoder stack without the LM head (a PeftModel's too)."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    return causal.base_model


def collate(pairs: list[tuple[list[int], list[int]]], pad_id: int, device):
    """Right-padded batch: input ids, attention mask, and labels that are -100 except on targets."""
    width = max(len(p) + len(t) for p, t in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)
    for i, (p, t) in enumerate(pairs):
        n = len(p) + len(t)
        ids[i, :n] = torch.tensor(p + t)
        mask[i, :n] = 1
        labels[i, len(p):n] = torch.tensor(t)
    return ids.to(device), mask.to(device), labels.to(device)


def length_groups(lengths: list[int], ratio: float = 1.5) -> list[list[int]]:
    """Row indices grouped by length, no group's longest row more than `ratio` times its shortest."""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if groups and lengths[i] <= ratio * lengths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def prefix_groups(pairs: list[tuple[list[int], list[int]]], ratio: float = 1.5) -> list[tuple[int, list[int]]]:
    """Rows of a batch of (prompt ids, target ids) in the groups they run in, each with the length of
    the prompt prefix its rows share. Rows whose prompts open with the same PREFIX_MIN tokens or more
    (a chat template's system turn: about 60% of a chat wording's tokens on SmolLM2) run apart with
    that prefix computed once; within each part, rows of similar length run together."""
    heads: dict = {}
    for i, (p, _) in enumerate(pairs):
        heads.setdefault(tuple(p[:PREFIX_MIN]) if len(p) > PREFIX_MIN else None, []).append(i)
    parts = [(_shared_prefix([pairs[i][0] for i in rows]), rows)
             for key, rows in heads.items() if key is not None and len(rows) > 1]
    rest = [i for key, rows in heads.items() if key is None or len(rows) == 1 for i in rows]
    parts += [(0, sorted(rest))] if rest else []
    return [(shared, [rows[j] for j in g]) for shared, rows in parts
            for g in length_groups([len(pairs[i][0]) + len(pairs[i][1]) - shared for i in rows], ratio)]


def decoder_states(model, ids, mask, prefix: list[int] | None = None):
    """The decoder's last hidden states [B, T, d] (after the final norm), without the LM head: callers
    apply the head only where they need logits (over a 49k vocabulary it is about 40% of the work).
    prefix: token ids every row starts with, left out of `ids`: run once, its keys and values are
    shared by all rows (gradients flow back through them), and positions go on after it."""
    decoder = decoder_of(model)
    if not prefix:
        return decoder(input_ids=ids, attention_mask=mask).last_hidden_state
    cache = decoder(input_ids=torch.tensor([prefix], device=ids.device), use_cache=True).past_key_values
    cache.batch_repeat_interleave(len(ids))
    mask = torch.cat([mask.new_ones(len(ids), len(prefix)), mask], 1)
    return decoder(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True).last_hidden_state


def forward_targets(model, ids, mask, labels, prefix: list[int] | None = None, states=None):
    """Run the model but apply the LM head only where a target token is predicted: on a small
    model the head over a 49k vocabulary is about 40% of a training step. prefix: as decoder_states;
    states: the decoder's hidden states when the caller ran it (beacon/model/frozen.py).
    Returns (logits [n_tok, V], labels [n_tok], row of each token, col of each token, hidden [B, T, d])."""
    h = decoder_states(model, ids, mask, prefix) if states is None else states
    lab = labels[:, 1:]
    rows, cols = (lab != -100).nonzero(as_tuple=True)  # row-major: each row's first target comes first
    logits = model.get_output_embeddings()(h[rows, cols])
    return logits, lab[rows, cols], rows, cols, h


def first_targets(rows):
    """Mask of each row's first target token in forward_targets' row-major order (the position of
    the last prompt token)."""
    first = torch.ones_like(rows, dtype=torch.bool)
    first[1:] = rows[1:] != rows[:-1]
    return first


def target_stats(logits, labels, rows, n_rows: int):
    """Per row: summed target log-prob, mean target NLL, whether teacher-forced argmax equals
    every target token (then greedy decoding produces the target exactly), and the rank of
    the first target token (1 = the model's top choice)."""
    logits = logits.float()
    tok_lp = torch.log_softmax(logits, -1).gather(1, labels[:, None])[:, 0]
    zeros = torch.zeros(n_rows, device=logits.device)
    sum_lp = zeros.index_add(0, rows, tok_lp)
    count = zeros.index_add(0, rows, torch.ones_like(tok_lp))
    misses = zeros.index_add(0, rows, (logits.argmax(-1) != labels).float())
    first = first_targets(rows)
    fl = logits[first]
    rank = (fl > fl.gather(1, labels[first][:, None])).sum(1) + 1
    return sum_lp, -sum_lp / count.clamp(min=1), misses == 0, rank


SAMPLE_TEMPERATURE = 0.7   # the temperature a sampled answer is drawn at (categories, their share of samples)


def score(model, tok, prompts: list[str], targets: list[str], batch_size: int = 32, hidden: bool = False):
    """score_pairs of each (prompt, target) as encode_pair tokenises them."""
    return score_pairs(model, tok, [encode_pair(tok, p, t) for p, t in zip(prompts, targets)], batch_size, hidden)


@torch.no_grad()
def score_pairs(model, tok, pairs: list[tuple[list[int], list[int]]], batch_size: int = 32, hidden: bool = False):
    """One teacher-forced pass over each (prompt ids, target ids), batched by length. Per pair:
    logprob: the target's summed log-prob; hit: the argmax is every target token (greedy decoding then writes
    the target); rank: of the first target token; next: the greedy token after the whole target (what decides
    whether it ends at a word boundary); greedy: the greedy answer's first tokens as far as this pass knows
    them (the target's tokens up to the first miss, then the argmax there; for a hit, the target and `next`);
    sample_logprob: the target's log-prob at SAMPLE_TEMPERATURE (how often a sampled answer starts with it);
    first_p: at that temperature, the probability of the greedy first token (how stable the greedy answer is);
    with hidden, `hidden`: the final hidden state at the prompt's last token [n, d] (the semantic distance's h)."""
    dev = model_device(model)
    n = len(pairs)
    res = {"logprob": [0.0] * n, "hit": [False] * n, "rank": [0] * n, "next": [0] * n, "greedy": [[] for _ in pairs],
           "sample_logprob": [0.0] * n, "first_p": [0.0] * n}
    states = [None] * n
    batches = [(shared, g[b:b + batch_size]) for shared, g in prefix_groups(pairs) for b in range(0, len(g), batch_size)]
    for shared, rows in batches:
        ids, mask, labels = collate([(pairs[i][0][shared:], pairs[i][1]) for i in rows], tok.pad_token_id, dev)
        logits, lab, r, c, h = forward_targets(model, ids, mask, labels, prefix=pairs[rows[0]][0][:shared])
        lp, _, hit, rank = target_stats(logits, lab, r, len(rows))
        ends = mask.sum(1) - 1                                     # each row's last token
        nxt = model.get_output_embeddings()(h[torch.arange(len(rows), device=dev), ends]).argmax(-1)
        warm = torch.log_softmax(logits.float() / SAMPLE_TEMPERATURE, -1)
        slp = torch.zeros(len(rows), device=dev).index_add(0, r, warm.gather(1, lab[:, None])[:, 0])
        first = first_targets(r)
        first_p = warm[first].max(-1).values.exp()
        pred = logits.argmax(-1).tolist()
        at = 0
        for j, i in enumerate(rows):
            m = len(pairs[i][1])
            got = []
            for k in range(m):
                got.append(pred[at + k])
                if pred[at + k] != pairs[i][1][k]:
                    break
            else:
                got.append(int(nxt[j]))
            at += m
            res["greedy"][i] = got
        if hidden:
            last = h[r[first], c[first]].float().cpu()
        for j, i in enumerate(rows):
            res["logprob"][i], res["hit"][i], res["rank"][i] = round(float(lp[j]), 4), bool(hit[j]), int(rank[j])
            res["next"][i], res["sample_logprob"][i] = int(nxt[j]), round(float(slp[j]), 4)
            res["first_p"][i] = round(float(first_p[j]), 4)
            if hidden:
                states[i] = last[j]
    if hidden:
        res["hidden"] = torch.stack(states) if states else torch.zeros((0, 1))
    return res
