"""The locality guard: keep the tuned model close to the base model on knowledge it should keep.

loss = weighted task NLL + W * guard, guard = mean over a batch of anchors of KL(base || tuned),
each anchor averaged over its positions. The base distributions are computed once with the
adapter disabled. An anchor is plain text, or a fact written `prompt | answer`, whose answer
positions make up half its KL (averaged over the whole sentence, the one position that holds the
knowledge would weigh a tenth, and that is where edits spill: "The capital of Canada is" -> "Toronto").

The anchors themselves come from beacon/method/anchor_sources.py (`build_anchors`); their text format from beacon/method/anchors.py.
"""
from __future__ import annotations

import random
from typing import NamedTuple

import torch

from beacon.method.anchors import joiner, split_anchor, split_held
from beacon.model.frozen import FrozenPrefixes
from beacon.model.lm import collate, decoder_states, encode_pair, length_groups, prefix_groups


@torch.no_grad()
def anchor_targets(model, tok, anchors: list[str], device, batch_size: int = 32, gate=None):
    """(token ids, start, base, held, frozen) of each anchor: the base model's log-probs (adapter disabled),
    stored in bf16 to halve memory, of a held text only from `start` on (its context's never count: at 49k
    log-probs a position, they were about half of the guard's memory); for a fact anchor the position where its
    answer starts, for a held text the position where the text starts; held: whether only the positions from
    `start` on count. Batched by length. gate: behind the subject gate, each anchor's tokens before its
    subject are cached once (`frozen`, beacon/model/frozen.py): there the tuned model is the base model."""
    enc, start, held = [], [], []
    for a in anchors:
        prompt, answer = split_anchor(a)
        context = split_held(a)
        held.append(context is not None)
        if context:
            p = tok(context[0], add_special_tokens=True).input_ids
            t = tok(joiner(context[0]) + context[1], add_special_tokens=False).input_ids
            enc.append(p + t), start.append(len(p) - 1)
        elif answer:
            p, t = encode_pair(tok, prompt, answer)
            enc.append(p + t), start.append(len(p) - 1)
        else:
            enc.append(tok(prompt, add_special_tokens=True).input_ids), start.append(0)
    base: list = [None] * len(enc)
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    with model.disable_adapter():
        for b in range(0, len(order), batch_size):
            rows = order[b:b + batch_size]
            lp = _real_logprobs(model, [enc[i] for i in rows], tok.pad_token_id, device).to(torch.bfloat16)
            for i, x in zip(rows, lp.split([len(enc[i]) for i in rows])):
                base[i] = (x[start[i]:] if held[i] else x).clone()   # a copy: a view would keep the whole batch
    # A held text runs from its context's cut on, and its log-probs count from `start`: the cut is never later.
    frozen = FrozenPrefixes(model, gate, enc, [start[i] if held[i] else len(enc[i]) - 1 for i in range(len(enc))],
                            tok.pad_token_id) if gate is not None else None
    return AnchorTargets(enc, start, base, held, frozen)


class AnchorTargets(NamedTuple):
    enc: list
    start: list
    base: list
    held: list
    frozen: FrozenPrefixes | None = None


def _real_logprobs(model, seqs: list[list[int]], pad_id, device, froms=None, shared: int = 0, frozen=None, items=None):
    """Log-probs at every real position of `seqs` (from position froms[i] on, with `froms`), row after row
    ([positions, V]): one right-padded pass, the LM head only where asked. shared: the rows' first `shared`
    tokens are the same and run once (decoder_states' prefix; gradients flow back through it). frozen: the
    rows' cached prefixes (their indices `items`), each row run from its cut on; froms[i] is never before it."""
    cuts = [frozen.cut[i] for i in items] if frozen is not None else [shared] * len(seqs)
    ids, mask, _ = collate([(s[c:], []) for s, c in zip(seqs, cuts)], pad_id, device)
    if frozen is not None:
        h = frozen.states(model, items, ids, mask)
    else:
        h = decoder_states(model, ids, mask, prefix=seqs[0][:shared] or None)
    keep = mask.bool()
    if froms is not None:
        at = torch.tensor(froms, device=device) - torch.tensor(cuts, device=device)
        keep &= torch.arange(keep.shape[1], device=device)[None] >= at[:, None]
    rows, cols = keep.nonzero(as_tuple=True)                       # row-major: row by row, in order
    return torch.log_softmax(model.get_output_embeddings()(h[rows, cols]).float(), -1)


def guard_loss(model, anchors, picks, pad_id, device, margin: float = 0.0):
    """Mean over the picked anchors of KL(base || tuned), each anchor averaged over its positions;
    a fact anchor's answer positions count as half its KL, and a held text's context not at all. With
    `margin`, each position adds that weight times `margin_drop`. Anchors run in groups of similar length
    and the LM head only on the positions that count: a 45-token sampled text beside 12-token neighbour
    facts would otherwise pad the batch to three times its work. Held texts that open alike (the chat
    template's system turn and the request: half of a chat text's tokens) run that prefix once. Behind the
    gate each anchor runs from its cached prefix on (anchors.frozen), where its KL is 0 by construction."""
    enc, start, base, held, frozen = anchors
    total = torch.zeros((), device=device)

    def add(rows, logp, froms):
        nonlocal total
        p_base = torch.cat([base[i][f - start[i] if held[i] else f:] for i, f in zip(rows, froms)]).float()
        kl = (p_base.exp() * (p_base - logp)).sum(-1)                  # per position that counts
        if margin:
            from beacon.experimental.margin import margin_drop
            kl = kl + margin * margin_drop(p_base, logp)
        at = 0
        for i, f in zip(rows, froms):
            k = kl[at:at + len(enc[i]) - f]
            at += len(enc[i]) - f
            if held[i]:
                total = total + k.mean()
            else:
                k = torch.nn.functional.pad(k, (f, 0))    # the positions before f are the base model's: KL 0
                total = total + (0.5 * k.mean() + 0.5 * k[start[i]:].mean() if start[i] else k.mean())

    if frozen is not None:
        for g in length_groups([len(enc[i]) - frozen.cut[i] for i in picks]):
            rows = [picks[j] for j in g]
            froms = [start[i] if held[i] else frozen.cut[i] for i in rows]
            add(rows, _real_logprobs(model, [enc[i] for i in rows], pad_id, device, froms, frozen=frozen, items=rows),
                froms)
        return total / len(picks)
    whole = [i for i in picks if not held[i]]
    for g in length_groups([len(enc[i]) for i in whole]):
        rows = [whole[j] for j in g]
        add(rows, _real_logprobs(model, [enc[i] for i in rows], pad_id, device), [0] * len(rows))
    texts = [i for i in picks if held[i]]
    for shared, g in prefix_groups([(enc[i], []) for i in texts]):
        rows = [texts[j] for j in g]
        froms = [start[i] for i in rows]
        add(rows, _real_logprobs(model, [enc[i] for i in rows], pad_id, device, froms, min(shared, *froms)), froms)
    return total / len(picks)


def guard_picks(rng: random.Random, n, near, size, share) -> list[int]:
    """Anchor indices for one guard batch: round(share * size) of them from `near`, the rest from all."""
    size, near = min(size, n), [i for i in (near or ()) if i < n]
    k = min(round(share * size), len(near))
    picks = rng.sample(list(near), k) if k else []
    rest = [i for i in range(n) if i not in set(picks)]
    return picks + rng.sample(rest, size - k)
