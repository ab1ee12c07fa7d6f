"""Fold a gated adapter into plain weights, so that a default run can be merged and exported.

A gated adapter adds m_t · ΔW x_t at each LoRA module, m_t 1 from a subject's name on and 0 before it
(beacon/method/gate.py); merged weights have no m_t. The plain update closest to the gated one, in the
least-squares sense over the inputs the gated model sees, is

    ΔW' = argmin  Σ_gated |ΔW' x − ΔW x|²  +  λ Σ_ungated |ΔW' x|²
        = ΔW G (G + λ N + ε I)⁻¹,     G = Σ_gated x xᵀ,  N = Σ_ungated x xᵀ

(MEMIT's covariance-constrained update, with the gated adapter as the teacher). The inputs come from one
pass of the gated model over the run's own texts: its training wordings with their answers, its guard's
texts, and the hand-written anchors (assets/anchors.txt) as text that names no subject. No probe set and
no measured text: those measure the result. λ trades the edit against what the model knew elsewhere;
docs/export.md has the frontier measured and what the folded model keeps.
"""
from __future__ import annotations

import torch

from beacon.method.anchors import anchor_text, read_anchors
from beacon.model.lm import encode_pair

LAMBDA = 1.0      # the ungated tokens' weight (docs/export.md: chosen on development runs)
EPS = 1e-3        # ridge, as a share of G + λN's mean diagonal

# LoRA modules that read the same input tensor share its statistics (q, k, v; gate, up).
_SHARED = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "gate_proj": "mlp_in", "up_proj": "mlp_in"}


def _group(name: str) -> str:
    head, _, leaf = name.rpartition(".")
    return f"{head}.{_SHARED.get(leaf, leaf)}"


def run_texts(tok, report: dict, extra=()) -> list[list[int]]:
    """Token ids of the texts a run's fold is read from: each kept fact's training wordings with its answer,
    the guard's anchors as text, the hand-written anchors and `extra` texts."""
    facts = {f["id"]: f for f in report["facts"] if f.get("kept")}
    texts = [sum(encode_pair(tok, p, facts[i]["target"]), []) for i, ps in report.get("training_prompts", {}).items()
             if i in facts for p in ps]
    plain = [anchor_text(a) for a in report.get("guard", {}).get("all", [])]
    plain += [anchor_text(a) for a in read_anchors()] + list(extra)
    return texts + [tok(t).input_ids for t in plain]


@torch.no_grad()
def input_statistics(model, gate, texts: list[list[int]], pad_id: int, batch: int = 16):
    """({name: module}, {group: [G, N]}): the sums of x xᵀ over each LoRA module's inputs at the gate's open
    and closed real tokens, from one pass of `model` (a PeftModel with `gate` attached)."""
    mods = {n: m for n, m in model.named_modules() if isinstance(getattr(m, "lora_A", None), torch.nn.ModuleDict)}
    stats, state = {}, {}

    def hook(group):
        def f(_, args):
            if state.get(group) is args[0]:          # q, k, v (gate, up) read one tensor: count it once
                return
            state[group] = args[0]
            x = args[0].float()
            real = state["attention"]
            for k, w in enumerate((gate.current * real, (1 - gate.current) * real)):
                xw = (x * w.unsqueeze(-1)).reshape(-1, x.shape[-1])
                acc = stats.setdefault(group, [0, 0])
                acc[k] = acc[k] + xw.T @ xw
        return f

    device = next(model.parameters()).device
    handles = [m.register_forward_pre_hook(hook(_group(n))) for n, m in mods.items()]
    texts = sorted(texts, key=len)                   # batches of similar length: little padding
    try:
        for i in range(0, len(texts), batch):
            rows = texts[i:i + batch]
            width = max(map(len, rows))
            ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], device=device)
            state.clear()
            state["attention"] = torch.tensor([[1.0] * len(r) + [0.0] * (width - len(r)) for r in rows], device=device)
            model(input_ids=ids, attention_mask=state["attention"].long())
    finally:
        for h in handles:
            h.remove()
    return mods, stats


def solve(delta: torch.Tensor, g: torch.Tensor, n: torch.Tensor, lam: float = LAMBDA, eps: float = EPS) -> torch.Tensor:
    """ΔW G (G + λN + εI)⁻¹ in float64: the plain update closest to ΔW on the gated inputs, small on the rest."""
    g, n, delta = g.double(), n.double(), delta.double()
    m = g + lam * n
    m = m + eps * m.diagonal().mean() * torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
    return torch.linalg.solve(m, (delta @ g).T).T


def statistics(peft_model, gate, texts: list[list[int]], pad_id: int):
    """(base, {name: ΔW}, {group: [G, N]}): one pass of the gated model over `texts`, then the base model with
    the adapter taken out. `peft_model` holds the run's adapter; `gate` is its subject gate, not yet attached."""
    gate.attach(peft_model)
    try:
        mods, stats = input_statistics(peft_model, gate, texts, pad_id)
    finally:
        gate.detach()
    deltas = {n: m.get_delta_weight(peft_model.active_adapter) for n, m in mods.items()}
    return peft_model.unload(), deltas, stats


def weight(base, name: str):
    """The base model's weight that the LoRA module `name` (a PeftModel's module name) adapts."""
    return base.get_submodule(name.removeprefix("base_model.model.")).weight


def updates(deltas: dict, stats: dict, lam: float = LAMBDA, eps: float = EPS) -> dict:
    """{name: ΔW'}: each module's gated update ΔW folded at λ, from statistics()' deltas and sums."""
    return {n: solve(d, *stats[_group(n)], lam, eps) for n, d in deltas.items()}


def fold(peft_model, gate, texts: list[list[int]], pad_id: int, lam: float = LAMBDA):
    """The base model (peft's adapter taken out) with each LoRA module's gated update folded into its weight."""
    base, deltas, stats = statistics(peft_model, gate, texts, pad_id)
    for n, u in updates(deltas, stats, lam).items():
        w = weight(base, n)
        w.data += u.to(w.dtype)
    return base
