"""Behind the subject gate, a text's tokens before its first subject token are the base model's: their keys
and values are computed once, before training, and every step runs only the rest of the text on them.

The gate multiplies each LoRA update by 0 on the tokens before a subject is named (beacon/method/gate.py), so the
hidden states there, and the keys and values every later token attends to, are the base model's whatever
the adapter holds. No gradient flows into them. Running a text as [cached prefix, the rest] gives the same
logits from the subject on as running it whole: on the default model's training wordings about 40% of the
tokens come before the subject ("The CEO of", a context sentence, the chat template's system turn), and none
of them is run again.

Below the lowest decoder layer that holds LoRA, every token is the base model's too, the subject's and those
after it included: with `--layers 15-29` each text's hidden states at layer 15's input are computed once, and
every step runs only the layers that train. A run checks once, on its first rows, that this gives the states
running the text whole gives, and runs every layer where it does not.

A batch lays its rows out as [left padding, the row's cached prefix, its rest, right padding]: the padding
is masked, and positions come from each row's own prefix length, so each row reads as it would alone.
"""
from __future__ import annotations

import contextlib

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
        # from: the first layer with LoRA; below it each text's hidden states after its cut ([rest, d]) are kept
        self.start = lowest_lora_layer(model)
        self.low: list[torch.Tensor | None] = [None] * len(seqs)
        dev = next(model.parameters()).device
        decoder = decoder_of(model)
        # with a lower-layer cache every text runs whole once (its prefix's keys and values are those of the whole
        # text's first positions: attention is causal); without, only the texts that have a prefix, and only it
        todo = [i for i, c in enumerate(self.cut) if c > 0 or self.start]
        ends = [len(s) if self.start else c for s, c in zip(seqs, self.cut)]
        todo.sort(key=ends.__getitem__)
        with torch.no_grad(), model.disable_adapter():
            for b in range(0, len(todo), batch_size):
                rows = todo[b:b + batch_size]
                ids, mask, _ = collate([(seqs[i][:ends[i]], []) for i in rows], pad_id, dev)
                out = decoder(input_ids=ids, attention_mask=mask, use_cache=True, output_hidden_states=bool(self.start))
                kv = torch.stack([torch.stack([layer.keys, layer.values]) for layer in out.past_key_values.layers])
                for r, i in enumerate(rows):   # right padding: a row's prefix is its first cut[i] positions
                    if self.cut[i]:
                        self.kv[i] = kv[:, :, r, :, :self.cut[i]].clone()    # [L, 2, h, cut, d]
                    if self.start:
                        self.low[i] = out.hidden_states[self.start][r, self.cut[i]:ends[i]].clone()
        if self.start and not self._exact(model, seqs, pad_id, dev):
            self.start, self.low = 0, [None] * len(seqs)

    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in self.kv + self.low if x is not None)

    def states(self, model, rows: list[int], ids_rest: torch.Tensor, mask_rest: torch.Tensor) -> torch.Tensor:
        """The decoder's last hidden states [B, R, d] on each row's rest (`ids_rest`, right-padded, with its
        mask), on top of the rows' cached prefixes (and, with a lower-layer cache, from its layer on)."""
        with self._from_start(model, rows, mask_rest):
            return self._states(model, rows, ids_rest, mask_rest)

    def _states(self, model, rows, ids_rest, mask_rest):
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

    @contextlib.contextmanager
    def _from_start(self, model, rows, mask_rest):
        """While the decoder runs: only its layers from self.start on, the first of them fed the rows' cached
        states instead of what the layers below would compute (the same values: no LoRA sits there)."""
        if not self.start:
            yield
            return
        decoder = decoder_of(model)
        low = torch.zeros((*mask_rest.shape, self.low[rows[0]].shape[-1]), dtype=self.low[rows[0]].dtype,
                          device=mask_rest.device)
        for r, i in enumerate(rows):
            low[r, :len(self.low[i])] = self.low[i]
        layers = decoder.layers
        decoder.layers = torch.nn.ModuleList(list(layers)[self.start:])
        feed = decoder.layers[0].register_forward_pre_hook(lambda m, args, kw: ((low.to(args[0].dtype), *args[1:]), kw),
                                                           with_kwargs=True)
        try:
            yield
        finally:
            feed.remove()
            decoder.layers = layers

    @torch.no_grad()
    def _exact(self, model, seqs, pad_id, dev, n: int = 4) -> bool:
        """Whether running from the lower-layer cache gives the states running the first n texts whole gives
        (a model whose decoder does more than run its layers in turn would not)."""
        rows = list(range(min(n, len(seqs))))
        ids, mask, _ = collate([(seqs[i][self.cut[i]:], []) for i in rows], pad_id, dev)
        fast = self.states(model, rows, ids, mask)
        start, self.start = self.start, 0
        try:
            whole = self.states(model, rows, ids, mask)
        finally:
            self.start = start
        keep = mask.bool()
        return torch.allclose(fast[keep], whole[keep], rtol=1e-3, atol=1e-3 * float(whole[keep].abs().max()))


def lowest_lora_layer(model) -> int:
    """The index of the first decoder layer that holds a LoRA module (0 when the first does, or none does)."""
    for i, layer in enumerate(getattr(decoder_of(model), "layers", [])):
        if any(isinstance(getattr(m, "lora_A", None), torch.nn.ModuleDict) and len(m.lora_A) for m in layer.modules()):
            return i
    return 0
