"""Parameter-selection merging (after Ju et al., EMNLP 2024, "Mitigating Training Imbalance in
LLM Fine-Tuning via Selective Parameter Merging").

K adapters are trained on the same facts in K different orders. Facts seen early in an
order are learned first and then partly overwritten; merging runs with different orders
evens that out. The merge works on each module's effective weight delta dW_k = s * B_k A_k
(not on A and B separately, whose factors are not aligned between runs):
  select:  for every weight element, the value of one run chosen uniformly at random;
  average: the mean over runs (the ablation).
The K runs are K named adapters on one loaded model. The average is peft's own
`add_weighted_adapter(..., combination_type="cat")`, exact at rank K*r; selection is written back
as a LoRA adapter of rank K*r by truncated SVD, an approximation whose relative error is reported.
"""
from __future__ import annotations

import torch


def lora_deltas(model, adapter: str = "default") -> dict[str, torch.Tensor]:
    """{module name: s * B @ A} for every LoRA module of a PeftModel, for one named adapter."""
    out = {}
    for name, mod in model.named_modules():
        if hasattr(mod, "lora_A") and adapter in getattr(mod, "lora_A", {}):
            A = mod.lora_A[adapter].weight.detach().float()
            B = mod.lora_B[adapter].weight.detach().float()
            out[name] = (B @ A) * mod.scaling[adapter]
    return out


def select_deltas(deltas: list[dict[str, torch.Tensor]], seed: int = 0) -> dict:
    """Per weight element, the value of one run chosen uniformly at random."""
    g = torch.Generator().manual_seed(seed)
    merged = {}
    for name in deltas[0]:
        stack = torch.stack([d[name].cpu() for d in deltas])     # [K, out, in]
        pick = torch.randint(len(deltas), stack.shape[1:], generator=g)
        merged[name] = stack.gather(0, pick.unsqueeze(0)).squeeze(0)
    return merged


@torch.no_grad()
def load_deltas_as_lora(model, merged: dict[str, torch.Tensor], adapter: str = "default") -> float:
    """Write merged deltas into `model`'s LoRA modules of `adapter` (its rank bounds the SVD).
    Returns the mean relative Frobenius error of the rank truncation."""
    errs = []
    for name, mod in model.named_modules():
        if name not in merged:
            continue
        A, B = mod.lora_A[adapter].weight, mod.lora_B[adapter].weight
        r, s = A.shape[0], mod.scaling[adapter]
        U, S, Vh = torch.linalg.svd(merged[name].to(A.device), full_matrices=False)
        root = S[:r].sqrt()
        B.copy_((U[:, :r] * root / s ** 0.5).to(B.dtype))
        A.copy_((root[:, None] * Vh[:r] / s ** 0.5).to(A.dtype))
        approx = (B.float() @ A.float()) * s
        errs.append(float((approx - merged[name].to(approx.device)).norm() / merged[name].norm().clamp(min=1e-12)))
    return round(sum(errs) / max(len(errs), 1), 4)


def _early_late(ids_in_order: list[str], hit: dict[str, bool]) -> dict:
    """Recall of the first and last third of an order: are early facts recalled worse?"""
    third = max(1, len(ids_in_order) // 3)
    frac = lambda ids: round(sum(hit[i] for i in ids) / len(ids), 4)
    return {"early_recall": frac(ids_in_order[:third]), "late_recall": frac(ids_in_order[-third:])}


MERGED = "merged"


def train_orders_and_merge(model, tok, facts, weights, cfg, layers, anchors, on_step, should_stop, prompts=None):
    """Train cfg.orders adapters on one loaded model (the first is `model`'s own adapter "default",
    the others are added beside it as order1, order2, ...), each on its own fixed order of the facts,
    and merge them into one adapter, MERGED, the only one left and the active one.
    anchors: (texts, indices of the nearest) for the locality guard. Returns (TrainResult, info)."""
    import dataclasses
    import math
    import random

    from beacon.model.lm import encode_pair
    from beacon.method.gate import reattach
    from beacon.method.train import TrainResult, all_hits, add_lora, train

    tcfg = cfg.train
    n = len(facts)
    bs = min(tcfg.batch_size, max(1, math.ceil(n / 4)))  # at least 4 batches an epoch, so order matters
    rng = random.Random(tcfg.seed)
    device = next(model.parameters()).device
    pairs = [encode_pair(tok, f.prompt, f.target, end=True) for f in facts]
    ids = [f.id for f in facts]
    runs, names, total = [], [], TrainResult(stopped="all recalled")
    for k in range(cfg.orders):
        kcfg = dataclasses.replace(tcfg, batch_size=bs, seed=tcfg.seed + k)
        name = "default" if k == 0 else f"order{k}"
        if k:
            add_lora(model, name, kcfg, layers)
        model.set_adapter(name)   # only the active adapter trains
        order = rng.sample(range(n), n)
        res = train(model, tok, facts, weights, kcfg, anchors=anchors[0], near=anchors[1], on_step=on_step,
                    should_stop=should_stop, order=order, prompts=prompts)
        hit = dict(zip(ids, all_hits(model, tok, pairs, device, bs)))
        runs.append({"run": k, "order": [ids[i] for i in order], "steps": res.steps, "seconds": res.seconds,
                     "recall": round(sum(hit.values()) / n, 4), **_early_late([ids[i] for i in order], hit)})
        names.append(name)
        total.steps += res.steps
        total.seconds = round(total.seconds + res.seconds, 2)
        total.history += [{**h, "run": k} for h in res.history]
        total.fact_curves = res.fact_curves
        if res.stopped == "cancelled":
            total.stopped = "cancelled"
            break
        if res.stopped == "budget":
            total.stopped = "budget"
    K = len(names)
    if cfg.merge == "average":   # peft's concatenation is the exact mean: rank K*r, no truncation
        model.add_weighted_adapter(names, [1.0 / K] * K, MERGED, combination_type="cat")
        reattach(model)
        err = 0.0
    else:                        # per-element selection is not one of peft's rules: SVD back to rank K*r
        add_lora(model, MERGED, tcfg, layers, rank=tcfg.rank * K)
        err = load_deltas_as_lora(model, select_deltas([lora_deltas(model, a) for a in names], tcfg.seed), MERGED)
    model.set_adapter(MERGED)
    for a in names:
        model.delete_adapter(a)
    hit = dict(zip(ids, all_hits(model, tok, pairs, device, bs)))
    total.recalled = [hit[i] for i in ids]
    info = {"orders": K, "how": cfg.merge, "batch_size": bs, "svd_rank": tcfg.rank * K,
            "svd_relative_error": err, "runs": runs,
            "merged": {"recall": round(sum(hit.values()) / n, 4),
                       "by_run_order": [_early_late(r["order"], hit) for r in runs]}}
    return total, info
