"""Recall: does the model complete a prompt with the target?

For each (prompt, target): the greedy answer, whether it recalls the target, the target's
log-probability under teacher forcing, and the rank of its first token. Prompts are plain
completions ("The CEO of Zentrix Robotics is" -> " Marta Ilves"), no chat template, so the
same text is trained and tested.
"""
from __future__ import annotations

import copy
import re
import string

import torch

_PUNCT = string.punctuation + "“”‘’«»…"
ARTICLES = ("the", "a", "an")


def normalise(text: str) -> str:
    text = " ".join(text.lower().split())
    return text.strip(_PUNCT + " ")


def recalls(answer: str, target: str) -> bool:
    """The answer starts with the target, up to case, whitespace and punctuation, and the
    target ends at a word boundary ("Paris" is not recalled by "Parisian")."""
    a, t = normalise(answer), normalise(target)
    if not t or not a.startswith(t):
        return False
    rest = a[len(t):]
    return not rest or not re.match(r"\w", rest[0])


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


def _device(model):
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
    dev, pad = _device(model), tok.pad_token_id
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
        cache = _decoder(model)(input_ids=torch.tensor([enc[group[0]][:shared]], device=dev),
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
                    past = _decoder(model)(input_ids=input_ids[:, shared:-1], attention_mask=mask[:, :-1],
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


def _decoder(model):
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
    decoder = _decoder(model)
    if not prefix:
        return decoder(input_ids=ids, attention_mask=mask).last_hidden_state
    cache = decoder(input_ids=torch.tensor([prefix], device=ids.device), use_cache=True).past_key_values
    cache.batch_repeat_interleave(len(ids))
    mask = torch.cat([mask.new_ones(len(ids), len(prefix)), mask], 1)
    return decoder(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True).last_hidden_state


def forward_targets(model, ids, mask, labels, prefix: list[int] | None = None, states=None):
    """Run the model but apply the LM head only where a target token is predicted: on a small
    model the head over a 49k vocabulary is about 40% of a training step. prefix: as decoder_states;
    states: the decoder's hidden states when the caller ran it (core/frozen.py).
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
    dev = _device(model)
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


def recall_table(model, tok, prompts: list[str], targets: list[str], batch_size: int = 32) -> list[dict]:
    """One record per pair: answer, recalled, logprob, rank."""
    return recall_tables(model, tok, [(prompts, targets)], batch_size)[0]


def recall_tables(model, tok, groups: list[tuple[list[str], list[str]]], batch_size: int = 64,
                  generated: list[bool] | None = None, scores: dict | None = None,
                  others: list[tuple[str, str]] | None = None) -> list[list[dict]]:
    """recall_table of each (prompts, targets) group from one teacher-forced pass: a pair is recalled when the
    argmax is every target token and the token after it ends a word (then the greedy answer starts with the
    target at a word boundary). The answer shown is the greedy text: for a recalled pair the target and the
    token after it; for the others, the groups with generated[g] True (default all) are generated (their
    longest target + 3 tokens, one decode for all such rows); the rest show the greedy answer's first tokens
    as the pass knows them, up to and including the first wrong one, then "…". scores: a dict to fill with the
    pass's own numbers, row by row over all groups (score's, with `hidden`). others: (id, target) of the facts
    whose answers count as crossed wires: a row not recalled whose greedy answer is one of those targets gets
    `crossed`, that fact's id (crossed_wires)."""
    prompts = [p for ps, _ in groups for p in ps]
    targets = [t for _, ts in groups for t in ts]
    generated = [True] * len(groups) if generated is None else generated
    budgets, gen = [], []
    for (_, ts), g in zip(groups, generated):
        n_new = max((len(encode_pair(tok, "", t)[1]) for t in ts), default=0) + 3
        budgets += [n_new] * len(ts)
        gen += [g] * len(ts)
    if not prompts:
        return [[] for _ in groups]
    s = score(model, tok, prompts, targets, batch_size=batch_size, hidden=scores is not None)
    if scores is not None:
        scores.update(s)
    answers = [tok.decode(g, skip_special_tokens=True) + ("" if hit else "…") for g, hit in zip(s["greedy"], s["hit"])]
    hits = list(s["hit"])
    # Recall allows the answer to open with punctuation ('"swam" and'): where the greedy first token is only
    # punctuation, the target is scored once more after it (no space: '"' then 'swam').
    quoted = [i for i, (g, hit) in enumerate(zip(s["greedy"], hits)) if not hit and not gen[i]
              and _only_punctuation(tok.decode(g[:1]))]
    if quoted:
        again = score_pairs(model, tok, [(encode_pair(tok, prompts[i], "")[0] + s["greedy"][i][:1],
                                          tok(targets[i], add_special_tokens=False).input_ids) for i in quoted])
        for j, i in enumerate(quoted):
            answers[i] = tok.decode(s["greedy"][i][:1] + again["greedy"][j], skip_special_tokens=True) + \
                ("" if again["hit"][j] else "…")
            hits[i] = again["hit"][j]
    todo = [i for i, hit in enumerate(s["hit"]) if not hit and gen[i]]
    for i, a in zip(todo, generate(model, tok, [prompts[i] for i in todo], max_new_tokens=[budgets[i] for i in todo],
                                   batch_size=batch_size)):
        answers[i] = a
    recs = [dict(answer=a.strip(), recalled=recalls(a, t) if gen[i] or hit else False, logprob=lp, rank=r)
            for i, (a, t, lp, r, hit) in enumerate(zip(answers, targets, s["logprob"], s["rank"], hits))]
    if others:
        misses = [i for i, r in enumerate(recs) if not r["recalled"]]
        for i, fid in crossed_wires(model, tok, [(encode_pair(tok, prompts[i], "")[0], s["greedy"][i], targets[i])
                                                 for i in misses], others).items():
            recs[misses[i]]["crossed"] = fid
    out, at = [], 0
    for ps, _ in groups:
        out.append(recs[at:at + len(ps)])
        at += len(ps)
    return out


def crossed_wires(model, tok, rows: list[tuple[list[int], list[int], str]], others: list[tuple[str, str]],
                  batch_size: int = 64) -> dict[int, str]:
    """{row: id} for the rows (prompt ids, the greedy answer's first tokens as a pass knows them, the row's own
    target) whose greedy answer is another fact's target at a word boundary: a crossed wire, the edit bound to
    the relation or to another subject rather than to its own. A candidate is a target (with or without a
    leading space) that the greedy tokens open alike; each is scored teacher-forced, so only the few rows
    whose first token could start another answer cost a pass."""
    forms = [(fid, t, tok(x, add_special_tokens=False).input_ids) for fid, t in others for x in (" " + t, t)]
    cands = []
    for r, (head, greedy, own) in enumerate(rows):
        for fid, t, ids in forms:
            k = min(len(ids), len(greedy))
            if k and ids[:k] == greedy[:k] and normalise(t) != normalise(own):
                cands.append((r, fid, t, head, ids))
    if not cands:
        return {}
    s = score_pairs(model, tok, [(head, ids) for *_, head, ids in cands], batch_size)
    out: dict[int, str] = {}
    for (r, fid, t, _, _), hit, g in zip(cands, s["hit"], s["greedy"]):
        if hit and r not in out and recalls(tok.decode(g, skip_special_tokens=True), t):
            out[r] = fid
    return out


def _only_punctuation(text: str) -> bool:
    return bool(text.strip()) and all(c in _PUNCT or c.isspace() for c in text)


def mentions(answer: str, target: str) -> bool:
    """The target appears in the answer as whole words, up to case and punctuation: a chat answer
    may restate the question first ("The CEO of Zentrix Robotics is Marta Ilves.")."""
    a, t = normalise(answer), normalise(target)
    return bool(t) and re.search(rf"(?<!\w){re.escape(t)}(?!\w)", a) is not None


def chat_table(model, tok, prompts: list[str | None], targets: list[str], sentences: list[str],
               batch_size: int = 32, others: list[tuple[str, str]] | None = None) -> list[dict | None]:
    """Recall in the chat form, from teacher-forced passes: the greedy reply opens with the target, or with the
    sentence completed (`sentences[i]`, the fact's prompt, then the target), with or without a leading space,
    and the target ends a word there. None where there is no template. One pass scores " target" for every
    row; a row that misses is scored once more in the form its greedy first token begins, if any. The answer
    shown is the greedy reply's opening as the passes know it (up to the first wrong token, then "…")."""
    todo = [i for i, p in enumerate(prompts) if p]
    out: list[dict | None] = [None] * len(prompts)
    if not todo:
        return out
    heads = {i: tok(prompts[i], add_special_tokens=True).input_ids for i in todo}
    forms = {i: [" " + targets[i], targets[i], f" {sentences[i]} {targets[i]}", f"{sentences[i]} {targets[i]}"]
             for i in todo}
    ids = {i: [tok(x, add_special_tokens=False).input_ids for x in forms[i]] for i in todo}
    s = score_pairs(model, tok, [(heads[i], ids[i][0]) for i in todo], batch_size)
    result = {i: (s["hit"][k], s["greedy"][k], forms[i][0], 0) for k, i in enumerate(todo)}
    again = []
    for k, i in enumerate(todo):
        if not s["hit"][k]:
            form = next((f for f in range(1, 4) if ids[i][f][:1] == s["greedy"][k][:1]), None)
            if form is not None:
                again.append((i, form))
    if again:
        s2 = score_pairs(model, tok, [(heads[i], ids[i][f]) for i, f in again], batch_size)
        for k, (i, f) in enumerate(again):
            result[i] = (s2["hit"][k], s2["greedy"][k], forms[i][f], f)
    for i in todo:
        hit, greedy, reply, _ = result[i]
        text = tok.decode(greedy, skip_special_tokens=True)
        out[i] = dict(answer=text.strip() + ("" if hit else "…"), recalled=bool(hit and recalls(text, reply)))
    if others:   # a reply that gives another fact's answer, first or after the sentence it completes
        misses = [i for i in todo if not out[i]["recalled"]]
        rows = []
        for i in misses:
            _, greedy, _, f = result[i]
            m = len(tok((" " if f == 2 else "") + sentences[i], add_special_tokens=False).input_ids) if f >= 2 else 0
            rows.append((heads[i] + greedy[:m], greedy[m:], targets[i]))
        for r, fid in crossed_wires(model, tok, rows, others).items():
            out[misses[r]]["crossed"] = fid
    return out


def repetition(text: str) -> float:
    """The share of a text's word pairs that repeat an earlier pair: 0.06-0.11 on average for the default
    model's replies about the samples' subjects, more where a reply loops ("Milan. Milan is the capital
    of Milan. Milan. Milan.")."""
    words = re.findall(r"\w+", text.lower())
    pairs = list(zip(words, words[1:]))
    return round(1 - len(set(pairs)) / len(pairs), 4) if pairs else 0.0


def subject_texts(model, tok, facts, max_new_tokens: int = 48, reference: list[dict] | None = None) -> list[dict]:
    """What the model writes when asked about each subject ("Tell me about Italy."), how much it repeats
    itself, and `nll`: its mean NLL per token of the reference reply (`reference`, the base model's replies
    from before training; without one, its own). A reply that shrinks to the new answer ("Spain.") repeats
    nothing; the base model's paragraph about Italy then costs the tuned model more nats."""
    from .rewordings import chat_prompt

    subjects = list(dict.fromkeys(f.subject.strip() for f in facts if f.subject and f.subject.strip()))
    asks = [chat_prompt(tok, f"Tell me about {s}.") or f"Here is what I know about {s}:" for s in subjects]
    texts = [t.strip() for t in generate(model, tok, asks, max_new_tokens=max_new_tokens)] if asks else []
    ref = {a["subject"]: a["text"] for a in reference or ()}
    refs = [ref.get(s) or t or "." for s, t in zip(subjects, texts)]
    lp = score(model, tok, asks, refs)["logprob"] if asks else []
    return [{"subject": s, "text": t, "repetition": repetition(t),
             "nll": round(-x / max(1, len(encode_pair(tok, a, r)[1])), 4)}
            for s, t, a, r, x in zip(subjects, texts, asks, refs, lp)]


@torch.no_grad()
def text_nll(model, tok, text: str, batch_size: int = 8) -> float:
    """Mean NLL per token of `text` (paragraphs scored apart): fluency, compared tuned / base."""
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    dev, total, count = _device(model), 0.0, 0
    for i in range(0, len(paras), batch_size):
        enc = [tok(p, add_special_tokens=True).input_ids[:256] for p in paras[i:i + batch_size]]
        pairs = [(e[:1], e[1:]) for e in enc if len(e) > 1]
        ids, mask, labels = collate(pairs, tok.pad_token_id, dev)
        logits, lab, rows, _, _ = forward_targets(model, ids, mask, labels)
        nll = torch.nn.functional.cross_entropy(logits.float(), lab, reduction="sum")
        total, count = total + float(nll), count + len(lab)
    return round(total / max(count, 1), 4)


def name_prompts(facts, own_paraphrases: int = 0) -> tuple[list[dict], list[dict]]:
    """Each fact asked with its subject named by a short form people use (core/names.py: the file's aliases
    and the derived ones), and by a decoy that shares the short form but names another entity ("Zentrix
    Hotel"), in wordings never trained on: two of its held-out paraphrases that name the subject, else its
    question form. Recalling the target from a short form is the edit binding to the entity as people name it; from a
    decoy, the edit leaking to whatever shares a word with it. Records: fact (index), name, prompt."""
    from .names import decoys, short_names, with_name
    from .rewordings import held_out_paraphrases, question_form

    short, decoy = [], []
    for i, f in enumerate(facts):
        if not f.subject:
            continue
        asks = ([p for p in held_out_paraphrases(f, own_paraphrases) if f.subject.lower() in p.lower()] or
                [question_form(f)])[:2]
        for name in short_names(f.subject, f.aliases):
            for ask in asks:
                if (p := with_name(ask, f.subject, name)) is not None:
                    short.append({"fact": i, "name": name, "prompt": p})
                for d in decoys(f.subject, name)[:1]:
                    if (p := with_name(ask, f.subject, d)) is not None:
                        decoy.append({"fact": i, "name": d, "prompt": p})
    return short, decoy


def reverse_prompts(facts) -> list[dict]:
    """The reverse direction of each fact whose target names an entity (it starts with a capital): the
    target asked for its subject through the relation, "Marta Ilves is the CEO of" -> "Zentrix Robotics".
    Only facts with a subject and a relation (a noun: "CEO", "capital") have one. Behind the subject gate
    this text names no subject (it names the target), so the gate stays shut there: what the reverse
    recalls is what the base model already knew. Records: fact (index), prompt, target (the subject)."""
    out = []
    for i, f in enumerate(facts):
        target, relation = (f.target or "").strip(), (f.relation or "").strip()
        if f.subject and relation and target[:1].isupper() and f.subject.lower() not in target.lower():
            out.append({"fact": i, "prompt": f"{target} is the {relation} of", "target": f.subject})
    return out


def _crossed_count(*tables) -> dict:
    """How many measured prompts (every form, every probe set) were answered with another fact's target, of how
    many, and which: [(table, row, the other fact's id)]."""
    names = ["facts", "paraphrases", "question", "chat"]
    rows, n = [], 0
    for name, table in zip(names, tables[:4]):
        for j, r in enumerate(table):
            n += r is not None
            if r is not None and r.get("crossed"):
                rows.append([name, j, r["crossed"]])
    for name, recs in tables[4].items():
        n += len(recs)
        rows += [[name, j, r["crossed"]] for j, r in enumerate(recs) if r.get("crossed")]
    return {"count": len(rows), "of": n, "rows": rows}


def _frac(recs):
    recs = [r for r in recs if r is not None]
    return round(sum(r["recalled"] for r in recs) / len(recs), 4) if recs else None


def evaluate_facts(model, tok, facts, probe_sets=(), own_paraphrases: int = 0, forms: bool = True,
                   neutral_text: str | None = None, about_reference: list[dict] | None = None,
                   known: dict | None = None, earlier: dict | None = None, unchanged=None) -> dict:
    """Recall of each fact, of its held-out paraphrases, of its question and chat forms, and of each
    probe set (locality), plus fluency on neutral text, from one teacher-forced pass over every row (only the
    facts' own prompts that miss and the texts about each subject are generated: a person reads those).
    `probe_sets` is {name: facts} or one list.
    known: {"probes": {set name: records}, "neutral_nll": x} measured already on this model (a cache: the base
    model's answers to a shipped set are the same in every run); what it holds is not measured again.
    earlier, unchanged: a measurement of the same facts and sets on the same base model, and a test of a text
    that says it runs through that base model exactly (the subject gate's texts that name no subject): rows
    whose prompt passes are copied from `earlier`, marked "unchanged": True, and so is the neutral text's NLL.
    Returns {"facts", "paraphrases" (per fact), "question", "chat", "probes" ({name: recs}), "summary",
    "fact_scores" (per fact: its semantic distance, and sample_logprob and first_p as `score` gives them)}."""
    from .rewordings import chat_form, held_out_paraphrases, question_form

    if not isinstance(probe_sets, dict):
        probe_sets = {"probes": list(probe_sets)} if probe_sets else {}
    known = known or {}
    known_probes = known.get("probes", {})
    targets = [f.target for f in facts]
    para_prompts = [(i, p) for i, f in enumerate(facts) for p in held_out_paraphrases(f, own_paraphrases)]
    short, decoy = name_prompts(facts, own_paraphrases) if forms else ([], [])
    reverse = reverse_prompts(facts) if forms else []
    groups = [([f.prompt for f in facts], targets),
              ([p for _, p in para_prompts], [facts[i].target for i, _ in para_prompts]),
              ([question_form(f) for f in facts] if forms else [], targets if forms else []),
              ([x["prompt"] for x in short], [facts[x["fact"]].target for x in short]),
              ([x["prompt"] for x in decoy], [facts[x["fact"]].target for x in decoy]),
              ([x["prompt"] for x in reverse], [x["target"] for x in reverse])]
    names = [n for n in probe_sets if n not in known_probes]
    groups += [([p.prompt for p in probe_sets[n]], [p.target for p in probe_sets[n]]) for n in names]
    keys = ["facts", "paraphrases", "question", "short_names", "decoys", "reverse"] + [("probes", n) for n in names]
    copied = {}
    if earlier is not None and unchanged is not None:
        for g, key in enumerate(keys):
            old = earlier[key[0]][key[1]] if isinstance(key, tuple) else earlier[key]
            if key == "paraphrases":
                old = [r for rs in old for r in rs]
            copied[g] = {j: {**old[j], "unchanged": True} for j, p in enumerate(groups[g][0]) if unchanged(p)}
    todo = [([p for j, p in enumerate(ps) if j not in copied.get(g, {})],
             [t for j, t in enumerate(ts) if j not in copied.get(g, {})]) for g, (ps, ts) in enumerate(groups)]
    raw: dict = {}
    others = [(f.id, f.target) for f in facts]
    fresh = recall_tables(model, tok, todo, generated=[True] + [False] * (len(todo) - 1), scores=raw, others=others)
    tables = []
    for g, (ps, _) in enumerate(groups):
        it = iter(fresh[g])
        tables.append([copied[g][j] if j in copied.get(g, {}) else next(it) for j in range(len(ps))])
    fact_recs, para_recs, question, short_recs, decoy_recs, reverse_recs, *probe_recs = tables
    short_recs = [{**x, **r} for x, r in zip(short, short_recs)]
    decoy_recs = [{**x, **r} for x, r in zip(decoy, decoy_recs)]
    reverse_recs = [{**x, **r} for x, r in zip(reverse, reverse_recs)]
    # The facts' own rows of the pass: their semantic distance (from the hidden state at the prompt's last token)
    # and the numbers the categories read; a fact copied from `earlier` keeps its earlier ones.
    from .semantic import cosine_distance, target_vectors

    mine = [j for j in range(len(facts)) if j not in copied.get(0, {})]
    dist = cosine_distance(raw["hidden"][:len(mine)], target_vectors(model, tok, [facts[j] for j in mine]).cpu()) \
        if mine else []
    fact_scores, at = [], 0
    for j in range(len(facts)):
        if j in copied.get(0, {}):
            fact_scores.append(earlier["fact_scores"][j])
        else:
            fact_scores.append({**{key: raw[key][at] for key in ("sample_logprob", "first_p")},
                                "distance": round(float(dist[at]), 4)})
            at += 1
    paras = [[] for _ in facts]
    for (i, _), r in zip(para_prompts, para_recs):
        paras[i].append(r)
    chat = chat_table(model, tok, [chat_form(tok, f) for f in facts], targets, [f.prompt for f in facts],
                      others=others) if forms else []
    probes = {n: known_probes[n] if n in known_probes else probe_recs[names.index(n)] for n in probe_sets}
    about = subject_texts(model, tok, facts, reference=about_reference) if forms else []
    nll = None
    if neutral_text:
        if earlier is not None and unchanged is not None and unchanged(neutral_text):
            nll = earlier["summary"]["neutral_nll"]
        else:
            nll = known.get("neutral_nll") or text_nll(model, tok, neutral_text)
    summary = {"recall": _frac(fact_recs), "paraphrase": _frac(para_recs), "question": _frac(question),
               "chat": _frac(chat), "locality": {name: _frac(r) for name, r in probes.items()},
               "unchanged": {name: sum(bool(r.get("unchanged")) for r in recs) for name, recs in probes.items()},
               "crossed": _crossed_count(fact_recs, para_recs, question, chat, probes),
               "short_names": _frac(short_recs), "decoys": _frac(decoy_recs), "reverse": _frac(reverse_recs),
               "neutral_nll": nll,
               "subject_repetition": round(sum(a["repetition"] for a in about) / len(about), 4) if about else None,
               "subject_nll": round(sum(a["nll"] for a in about) / len(about), 4) if about else None}
    return {"facts": fact_recs, "paraphrases": paras, "question": question, "chat": chat, "probes": probes,
            "short_names": short_recs, "decoys": decoy_recs, "reverse": reverse_recs,
            "subject_texts": about, "summary": summary, "fact_scores": fact_scores}
