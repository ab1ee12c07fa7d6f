"""Interference between facts, measured on the fresh LoRA adapter before training.

g_i = gradient of fact i's target log-probability with respect to the LoRA parameters.
(a) cosine[i][j] = cos(g_i, g_j): do the updates that teach i and j point the same way?
(b) step_effect[i][j] = lr * g_i . g_j: the first-order change in fact j's target
    log-probability from one plain SGD step of size lr on fact i alone (the cheap estimate;
    `exact_step_effect` measures it for real, and the tests check the two agree).
With LoRA's B initialised to zero only B's gradients are non-zero at the start, so these
are the gradients of the B matrices.
"""
from __future__ import annotations

import numpy as np
import torch

from beacon.model.lm import collate, encode_pair, forward_targets, target_stats


def _lora_params(model):
    return [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]


def _logprob(model, tok, pairs, device):
    ids, mask, labels = collate(pairs, tok.pad_token_id, device)
    logits, lab, rows, _, _ = forward_targets(model, ids, mask, labels)
    return target_stats(logits, lab, rows, len(pairs))[0]


def fact_gradients(model, tok, facts, batch_size: int = 32) -> torch.Tensor:
    """[n facts, n LoRA parameters]: each fact's gradient of its target log-prob, from one batched backward per
    `batch_size` facts. The rows of a batch do not interact, so the gradient of their summed log-probs holds
    each row's own output gradient at every LoRA layer; hooks keep those and the layer's input, and a row's
    gradient of a weight is the sum over its positions of output gradient times input (outer product). Hooks
    see each LoRA layer after the subject gate's mask, so a gated adapter's gradients are the gated ones."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    device = named[0][1].device
    mods = {id(p): m for m in model.modules() if isinstance(m, torch.nn.Linear)
            for p in m.parameters(recurse=False) if p.requires_grad}
    order = [mods[id(p)] for _, p in named if id(p) in mods]   # the LoRA linears, in parameter order
    was_training = model.training
    model.eval()
    rows = []
    for b in range(0, len(facts), batch_size):
        chunk = facts[b:b + batch_size]
        seen, handles = {}, []

        def keep(module, args, out):
            x = args[0]
            seen[module] = [x.detach(), None]
            if out.requires_grad:
                out.register_hook(lambda g, m=module: seen[m].__setitem__(1, g.detach()))

        for m in order:
            # before the gate's hook (prepend): the output a hook sees is the layer's own, and its gradient the
            # gated one (0 where the gate is shut)
            handles.append(m.register_forward_hook(keep, prepend=True))
        try:
            model.zero_grad(set_to_none=True)
            _logprob(model, tok, [encode_pair(tok, f.prompt, f.target) for f in chunk], device).sum().backward()
        finally:
            for h in handles:
                h.remove()
        parts = []
        for m in order:
            x, g = seen.get(m, (None, None))
            if g is None:
                parts.append(torch.zeros(len(chunk), m.weight.numel(), device=device))
            else:   # the linear's weight gradient per row: sum over positions of g_t x_t^T
                parts.append(torch.einsum("bto,bti->boi", g.float(), x.float()).reshape(len(chunk), -1))
        rows.append(torch.cat(parts, 1).cpu())
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return torch.cat(rows)


def interference(model, tok, facts, lr: float) -> dict:
    """{"cosine": n x n, "step_effect": n x n, "order": cluster order} as lists."""
    if len(facts) < 2:
        return {"cosine": [[1.0]] * len(facts), "step_effect": [[0.0]] * len(facts), "order": list(range(len(facts)))}
    G = fact_gradients(model, tok, facts)
    dots = G @ G.T
    norms = dots.diag().clamp(min=1e-20).sqrt()
    cos = dots / norms[:, None] / norms[None, :]
    return {"cosine": np.round(cos.numpy(), 4).tolist(),
            "step_effect": np.round((lr * dots).numpy(), 6).tolist(),
            "order": cluster_order(cos.numpy())}


def cluster_order(sim: np.ndarray) -> list[int]:
    """Leaf order of average-linkage clustering on 1 - similarity, so related facts sit together."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    d = np.clip(1 - sim, 0, 2)
    np.fill_diagonal(d, 0)
    d = (d + d.T) / 2
    return leaves_list(linkage(squareform(d, checks=False), "average")).tolist()


def exact_step_effect(model, tok, facts, i: int, lr: float) -> list[float]:
    """Take one SGD step of size lr on fact i alone, measure every fact's log-prob change, undo."""
    params = _lora_params(model)
    device = params[0].device
    pairs = [encode_pair(tok, f.prompt, f.target) for f in facts]
    with torch.no_grad():
        before = _logprob(model, tok, pairs, device)
    model.zero_grad(set_to_none=True)
    _logprob(model, tok, [pairs[i]], device)[0].backward()
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p.add_(lr * p.grad)  # ascent on log-prob = descent on the loss
        after = _logprob(model, tok, pairs, device)
        for p, s in zip(params, saved):
            p.copy_(s)
    model.zero_grad(set_to_none=True)
    return (after - before).tolist()
