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

    Greedy prompts are batched by token length (little padding) and each row is cut to its own
    budget: greedy decoding is causal, so a row's text is what it would be alone. Sampled prompts
    keep their order, so a seed draws the same texts as before.
    A token prefix that all prompts share (16 tokens or more: a few-shot prompt, a chat template's
    system turn) is run once and its KV cache copied to every row: on a CPU the prompt pass is most of
    the cost of short answers. Rows are laid out [prefix, padding, own tokens], the padding masked;
    positions come from the mask, so each row reads as it would alone.
    stop: a batch ends early once every row has produced a token containing this text (the text after it
    is the caller's to cut)."""
    dev, pad = _device(model), tok.pad_token_id
    budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    enc = [tok(p, add_special_tokens=True).input_ids for p in prompts]
    if not enc:
        return []
    shared = _shared_prefix(enc)
    shared = shared if shared >= PREFIX_MIN else 0
    cache = _decoder(model)(input_ids=torch.tensor([enc[0][:shared]], device=dev), use_cache=True).past_key_values \
        if shared else None
    kw = dict(do_sample=False)     # sampling too: _Sampler draws the token, greedy decoding takes it
    if sample:
        from transformers import LogitsProcessorList
        kw["logits_processor"] = LogitsProcessorList([_Sampler(temperature, top_p)])
    if stop is not None:
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None) or tok.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        texts = tok.batch_decode([[i] for i in range(len(tok))])
        kw["eos_token_id"] = eos + [i for i, t in enumerate(texts) if stop in t and i not in eos]
    order = list(range(len(prompts))) if sample else sorted(range(len(prompts)), key=lambda i: len(enc[i]))
    out: list[str] = [""] * (len(prompts) * repeats)
    per_batch = max(1, batch_size // repeats)
    for b in range(0, len(order), per_batch):
        rows = order[b:b + per_batch]
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
                                       position_ids=pos[:, shared:-1], past_key_values=past, use_cache=True).past_key_values
                past.batch_repeat_interleave(repeats)
            input_ids, mask = input_ids.repeat_interleave(repeats, 0), mask.repeat_interleave(repeats, 0)
        extra = {"past_key_values": past} if past is not None else {}
        gen = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max(budgets[i] for i in rows),
                             pad_token_id=pad, **kw, **extra)[:, shared + width:]
        for r, i in enumerate(rows):
            for j in range(repeats):
                out[i * repeats + j] = tok.decode(gen[r * repeats + j, :budgets[i]], skip_special_tokens=True)
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


def forward_targets(model, ids, mask, labels, prefix: list[int] | None = None):
    """Run the model but apply the LM head only where a target token is predicted: on a small
    model the head over a 49k vocabulary is about 40% of a training step. prefix: as decoder_states.
    Returns (logits [n_tok, V], labels [n_tok], row of each token, col of each token, hidden [B, T, d])."""
    h = decoder_states(model, ids, mask, prefix)
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


@torch.no_grad()
def score(model, tok, prompts: list[str], targets: list[str], batch_size: int = 32):
    """Teacher-forced log-prob, greedy-hit flag and first-token rank for each pair (batched by length),
    and `next`: the greedy token after the whole target (what decides whether it ends at a word boundary)."""
    dev = _device(model)
    pairs = [encode_pair(tok, p, t) for p, t in zip(prompts, targets)]
    res = {"logprob": [0.0] * len(pairs), "hit": [False] * len(pairs), "rank": [0] * len(pairs),
           "next": [0] * len(pairs)}
    batches = [(shared, g[b:b + batch_size]) for shared, g in prefix_groups(pairs) for b in range(0, len(g), batch_size)]
    for shared, rows in batches:
        ids, mask, labels = collate([(pairs[i][0][shared:], pairs[i][1]) for i in rows], tok.pad_token_id, dev)
        logits, lab, r, _, h = forward_targets(model, ids, mask, labels, prefix=pairs[rows[0]][0][:shared])
        lp, _, hit, rank = target_stats(logits, lab, r, len(rows))
        ends = mask.sum(1) - 1                                     # each row's last token
        nxt = model.get_output_embeddings()(h[torch.arange(len(rows), device=dev), ends]).argmax(-1)
        for i, x, ht, k, n in zip(rows, lp.tolist(), hit.tolist(), rank.tolist(), nxt.tolist()):
            res["logprob"][i], res["hit"][i], res["rank"][i], res["next"][i] = round(x, 4), ht, k, n
    return res


def recall_table(model, tok, prompts: list[str], targets: list[str], batch_size: int = 32) -> list[dict]:
    """One record per pair: answer, recalled, logprob, rank."""
    return recall_tables(model, tok, [(prompts, targets)], batch_size)[0]


def recall_tables(model, tok, groups: list[tuple[list[str], list[str]]], batch_size: int = 64) -> list[list[dict]]:
    """recall_table of each (prompts, targets) group, in one generation pass: each group keeps its own
    answer length (its longest target + 3 tokens), and small decode batches cost about what big ones do
    on a CPU, so one pass over all groups is the cheap way. A row whose target teacher forcing already
    recalls is not generated: its answer is the target and the one greedy token after it."""
    prompts = [p for ps, _ in groups for p in ps]
    targets = [t for _, ts in groups for t in ts]
    budgets = []
    for _, ts in groups:
        n_new = max((len(encode_pair(tok, "", t)[1]) for t in ts), default=0) + 3
        budgets += [n_new] * len(ts)
    if not prompts:
        return [[] for _ in groups]
    # Where teacher forcing already picks every target token, greedy decoding writes the target, and
    # the token after it decides the word boundary: only the other rows need generating (after
    # training that is most of them saved).
    s = score(model, tok, prompts, targets, batch_size=batch_size)
    todo = [i for i, hit in enumerate(s["hit"]) if not hit]
    answers = [" " + t + tok.decode([n], skip_special_tokens=True) for t, n in zip(targets, s["next"])]
    for i, a in zip(todo, generate(model, tok, [prompts[i] for i in todo], max_new_tokens=[budgets[i] for i in todo],
                                   batch_size=batch_size)):
        answers[i] = a
    recs = [dict(answer=a.strip(), recalled=recalls(a, t), logprob=lp, rank=r)
            for a, t, lp, r in zip(answers, targets, s["logprob"], s["rank"])]
    out, at = [], 0
    for ps, _ in groups:
        out.append(recs[at:at + len(ps)])
        at += len(ps)
    return out


def mentions(answer: str, target: str) -> bool:
    """The target appears in the answer as whole words, up to case and punctuation: a chat answer
    may restate the question first ("The CEO of Zentrix Robotics is Marta Ilves.")."""
    a, t = normalise(answer), normalise(target)
    return bool(t) and re.search(rf"(?<!\w){re.escape(t)}(?!\w)", a) is not None


def chat_table(model, tok, prompts: list[str | None], targets: list[str], batch_size: int = 32) -> list[dict | None]:
    """Recall in the chat form: the greedy reply mentions the target. None where there is no template."""
    todo = [i for i, p in enumerate(prompts) if p]
    out: list[dict | None] = [None] * len(prompts)
    if not todo:
        return out
    n_new = max(len(encode_pair(tok, "", targets[i])[1]) for i in todo) + 24
    replies = generate(model, tok, [prompts[i] for i in todo], max_new_tokens=n_new, batch_size=batch_size)
    for i, r in zip(todo, replies):
        out[i] = dict(answer=r.strip(), recalled=mentions(r, targets[i]))
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


def _frac(recs):
    recs = [r for r in recs if r is not None]
    return round(sum(r["recalled"] for r in recs) / len(recs), 4) if recs else None


def evaluate_facts(model, tok, facts, probe_sets=(), own_paraphrases: int = 0, forms: bool = True,
                   neutral_text: str | None = None, about_reference: list[dict] | None = None) -> dict:
    """Recall of each fact, of its held-out paraphrases, of its question and chat forms, and of each
    probe set (locality), plus fluency on neutral text. `probe_sets` is {name: facts} or one list.
    Returns {"facts", "paraphrases" (per fact), "question", "chat", "probes" ({name: recs}), "summary"}."""
    from .rewordings import chat_form, held_out_paraphrases, question_form

    if not isinstance(probe_sets, dict):
        probe_sets = {"probes": list(probe_sets)} if probe_sets else {}
    targets = [f.target for f in facts]
    para_prompts = [(i, p) for i, f in enumerate(facts) for p in held_out_paraphrases(f, own_paraphrases)]
    groups = [([f.prompt for f in facts], targets),
              ([p for _, p in para_prompts], [facts[i].target for i, _ in para_prompts]),
              ([question_form(f) for f in facts] if forms else [], targets if forms else [])]
    groups += [([p.prompt for p in ps], [p.target for p in ps]) for ps in probe_sets.values()]
    fact_recs, para_recs, question, *probe_recs = recall_tables(model, tok, groups)
    paras = [[] for _ in facts]
    for (i, _), r in zip(para_prompts, para_recs):
        paras[i].append(r)
    chat = chat_table(model, tok, [chat_form(tok, f) for f in facts], targets) if forms else []
    probes = dict(zip(probe_sets, probe_recs))
    about = subject_texts(model, tok, facts, reference=about_reference) if forms else []
    summary = {"recall": _frac(fact_recs), "paraphrase": _frac(para_recs), "question": _frac(question),
               "chat": _frac(chat), "locality": {name: _frac(r) for name, r in probes.items()},
               "neutral_nll": text_nll(model, tok, neutral_text) if neutral_text else None,
               "subject_repetition": round(sum(a["repetition"] for a in about) / len(about), 4) if about else None,
               "subject_nll": round(sum(a["nll"] for a in about) / len(about), 4) if about else None}
    return {"facts": fact_recs, "paraphrases": paras, "question": question, "chat": chat, "probes": probes,
            "subject_texts": about, "summary": summary}
