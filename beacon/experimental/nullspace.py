"""A constraint on the update: keep LoRA out of the directions the model's own text uses.

After AlphaEdit (Fang et al., ICLR 2025: null-space constrained knowledge editing). A LoRA layer
changes the output of a linear layer on an input x by s·B·(A x). Let K0 be the inputs that text
the model should keep reading the same way brings to that layer (here: the guard's anchors, text
and facts the base model wrote itself), and U the top eigenvectors of K0ᵀK0 that hold a `share`
of its energy. If every row of A is orthogonal to U, then A x ≈ 0 for such inputs, whatever B
learns, and the tuned model reads them as the base model did:

    A ← A (I − U Uᵀ)        at the start and after every optimiser step (projected descent)

It costs nothing per step but one small matrix product per layer, against a forward and backward
pass on anchors for the KL guard. A fact's own inputs keep what sets them apart from general text
(the part outside U), and that is what the update may use.
"""
from __future__ import annotations

import torch


def lora_layers(model) -> dict[str, torch.nn.Module]:
    """peft's LoRA layers of the model by name (those with a lora_A for the active adapter)."""
    name = getattr(model, "active_adapter", "default")
    return {n: m for n, m in model.named_modules() if name in getattr(m, "lora_A", {})}


@torch.no_grad()
def input_covariances(model, tok, texts: list[str], batch_size: int = 16) -> dict[str, torch.Tensor]:
    """K0ᵀK0 / n of each LoRA layer's inputs over every token of `texts` (adapter off). Layers that
    read the same input tensor (q, k, v; gate, up) share one matrix: the same tensor object."""
    from beacon.model.lm import collate

    layers = lora_layers(model)
    dev = next(model.parameters()).device
    sums: dict[str, torch.Tensor] = {}
    alias: dict[str, str] = {}                 # layer -> the first layer that read the same input
    batch: list[tuple[torch.Tensor, str]] = []  # (input, first layer that read it) in this forward
    state = {"mask": None, "n": 0}

    def hook(name):
        def pre(mod, args):
            x = args[0]
            first = next((n for y, n in batch if y is x), None)
            if first is not None:
                alias[name] = first
                return
            batch.append((x, name))
            rows = x[state["mask"]].float()
            # Each token counts the same: a few tokens with activations 100x the rest (the first
            # one) would otherwise hold nearly all the energy, and the share would cover nothing else.
            rows = rows / rows.norm(dim=-1, keepdim=True).clamp(min=1e-6)
            sums[name] = sums[name] + rows.T @ rows if name in sums else rows.T @ rows
        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    try:
        with model.disable_adapter():
            for b in range(0, len(texts), batch_size):
                enc = [tok(t, add_special_tokens=True).input_ids[:128] for t in texts[b:b + batch_size]]
                ids, mask, _ = collate([(e, []) for e in enc], tok.pad_token_id, dev)
                state["mask"], batch[:] = mask.bool(), []
                model(input_ids=ids, attention_mask=mask)
                state["n"] += int(mask.sum())
    finally:
        for h in handles:
            h.remove()
        batch.clear()
    covs = {n: c / max(state["n"], 1) for n, c in sums.items()}
    return {n: covs[alias.get(n, n)] for n in layers if alias.get(n, n) in covs}


def bases(covs: dict[str, torch.Tensor], share: float = 0.99) -> dict[str, torch.Tensor]:
    """Per layer, U: the top eigenvectors of its input covariance that hold `share` of the energy
    (one decomposition per distinct matrix: layers that share an input share it)."""
    out, done = {}, {}
    for n, c in covs.items():
        if id(c) not in done:
            vals, vecs = torch.linalg.eigh(c.double())
            vals, vecs = vals.flip(0).clamp(min=0), vecs.flip(1)
            k = int((vals.cumsum(0) / vals.sum() < share).sum()) + 1
            done[id(c)] = vecs[:, :k].float().contiguous()
        out[n] = done[id(c)]
    return out


@torch.no_grad()
def project(model, u: dict[str, torch.Tensor]) -> None:
    """A ← A (I − U Uᵀ) in every LoRA layer of the active adapter."""
    name = getattr(model, "active_adapter", "default")
    for n, m in lora_layers(model).items():
        if n in u:
            a = m.lora_A[name].weight
            uu = u[n].to(a.device, a.dtype)
            a -= (a @ uu) @ uu.T
