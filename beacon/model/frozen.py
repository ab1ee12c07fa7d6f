"""Behind the subject gate, a text's tokens before its first subject token are the base model's: their keys
and values are computed once, before training, and every step runs only the rest of the text on them.

The gate multiplies each LoRA update by 0 on the tokens before a subject is named (beacon/method/gate.py), so the
hidden states there, and the keys and values every later token attends to, are the base model's whatever
the adapter holds. No gradient flows into them. Running a text as [cached prefix, the rest] gives the same
logits from the subject on as running it whole: on the default model's training wordings about 40% of the
tokens come before the subject ("The CEO of", a context sentence, the chat template's system turn), and none
of them is run again.

A batch lays its rows out as [left padding, the row's cached prefix, its rest, right padding]: the padding
is masked, and positions come from each row's own prefix length, so each row reads as it would alone.
"""
from __future__ import annotations

import torch

from beacon.model.lm import collate, decoder_of


def first_open(gate, seqs: list[list[int]]) -> list[int]:
    """Per token sequence, the position of its first token the gate opens on (its length if none)."""
    out = []
    for s in seqs:
        m = gate._open_mask(torch.tensor([s]))[0]
        out.append(int(m.nonzero()[0, 0]) if m.any() else len(s))
    return out


class FrozenPrefixes:
    """Per text, the base model's keys and values of its first `cut` tokens ([layers, 2, kv heads, cut, dim]).

    cut[i] = min(the gate's first open position, limit[i]): a caller's limit keeps the positions it scores
    (a prompt's last token, whose logits predict the answer) in the part that runs every step."""

    def __init__(self, model, gate, seqs: list[list[int]], limits: list[int], pad_id: int, batch_size: int = 32):
        self.cut = [max(0, min(o, lim)) for o, lim in zip(first_open(gate, seqs), limits)]
        self.kv: list[torch.Tensor | None] = [None] * len(seqs)
        dev = next(model.parameters()).device
        todo = sorted((i for i, c in enumerate(self.cut) if c > 0), key=self.cut.__getitem__)
        decoder = decoder_of(model)
        with torch.no_grad(), model.disable_adapter():
            for b in range(0, len(todo), batch_size):
                rows = todo[b:b + batch_size]
                ids, mask, _ = collate([(seqs[i][:self.cut[i]], []) for i in rows], pad_id, dev)
                cache = decoder(input_ids=ids, attention_mask=mask, use_cache=True).past_key_values
                kv = torch.stack([torch.stack([layer.keys, layer.values]) for layer in cache.layers])  # [L,2,B,h,T,d]
                for r, i in enumerate(rows):   # right padding: a row's prefix is its first cut[i] positions
                    self.kv[i] = kv[:, :, r, :, :self.cut[i]].clone()

    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in self.kv if x is not None)

    def states(self, model, rows: list[int], ids_rest: torch.Tensor, mask_rest: torch.Tensor) -> torch.Tensor:
        """The decoder's last hidden states [B, R, d] on each row's rest (`ids_rest`, right-padded, with its
        mask), on top of the rows' cached prefixes."""
        from transformers import DynamicCache

        cuts = [self.cut[i] for i in rows]
        width = max(cuts)
        decoder = decoder_of(model)
        if width == 0:
            return decoder(input_ids=ids_rest, attention_mask=mask_rest).last_hidden_state
        dev = ids_rest.device
        some = next(self.kv[i] for i in rows if self.kv[i] is not None)
        L, _, h, _, d = some.shape
        kv = some.new_zeros((L, 2, len(rows), h, width, d))
        for r, i in enumerate(rows):
            if cuts[r]:
                kv[:, :, r, :, width - cuts[r]:] = self.kv[i]
        cache = DynamicCache(ddp_cache_data=[(kv[layer, 0], kv[layer, 1]) for layer in range(L)])
        left = torch.tensor([[0] * (width - c) + [1] * c for c in cuts], device=dev, dtype=mask_rest.dtype)
        pos = torch.tensor(cuts, device=dev)[:, None] + torch.arange(ids_rest.shape[1], device=dev)[None]
        return decoder(input_ids=ids_rest, attention_mask=torch.cat([left, mask_rest], 1), position_ids=pos,
                       past_key_values=cache, use_cache=True).last_hidden_state
