"""LoRA training on facts: target-only loss, per-fact weights, an optional locality guard.

One step = one mini-batch of facts (all of them when they fit in one batch). The loss is the
mean target-token NLL of each fact, times that fact's weight, averaged over the batch. The
locality guard adds W * KL(base || tuned) on unrelated anchor text: the base model's
next-token distributions are computed once, with the adapter disabled, and the tuned model
is pulled towards them, so it learns the facts without rewriting what it knew.

Early stop is free: the training forward pass already holds the logits of every target
token; when the argmax matches every target token of every fact, greedy decoding would
produce each target, so training stops there. `settle_steps` (off by default) trains on a few
steps after that, meant to let the guard lead once the facts' loss is small. Measured on the
counterfactual sample it costs locality (93% against 96%, 3 seeds): Adam moves every parameter by
about the learning rate whatever the size of the loss, so most likely the facts keep pushing as hard as before.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field

import torch

from .evaluate import collate, encode_pair, forward_targets, target_stats


@dataclass
class TrainConfig:
    steps: int = 80                 # step budget (upper bound; early stop usually ends sooner)
    lr: float = 2e-3
    rank: int = 8
    alpha: int = 16
    batch_size: int = 32
    seed: int = 0
    target_modules: str | list[str] = "all-linear"
    layers: list[int] | None = None     # train only these decoder layers (None = all)
    locality_guard: float = 10.0        # weight of the KL term on anchor text
    guard_batch: int = 8
    guard_near: float = 0.5             # share of each guard batch drawn from the anchors nearest the facts
    early_stop: bool = True
    settle_steps: int = 0               # steps after every fact is recalled, for the guard to repair

    def to_dict(self):
        return asdict(self)


@dataclass
class TrainResult:
    steps: int = 0
    seconds: float = 0.0
    stopped: str = "budget"          # "budget", "all recalled" or "cancelled"
    history: list[dict] = field(default_factory=list)   # per step: step, loss, task, guard, recall, seconds
    fact_curves: list[list[float]] = field(default_factory=list)  # per fact: target NLL at each visit
    recalled: list[bool] = field(default_factory=list)   # last teacher-forced check per fact


def linear_names(model) -> list[str]:
    """Short names of the linear layers inside the decoder blocks (q_proj, up_proj, ...)."""
    head = model.get_output_embeddings()
    names = set()
    for name, mod in model.named_modules():
        if mod is not head and ".layers." in f".{name}." and hasattr(mod, "weight") \
                and getattr(mod.weight, "ndim", 0) == 2 and "Linear" in type(mod).__name__:
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def attach_lora(model, cfg: TrainConfig, quantized: bool):
    """Wrap the frozen model in a fresh LoRA adapter (peft)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        # Casts norms to fp32 and makes inputs require grad, as QLoRA needs; no checkpointing
        # because these models are small and it would double the step time.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    targets = cfg.target_modules
    if targets == "all-linear" and cfg.layers is not None:
        targets = linear_names(model)  # peft accepts layers_to_transform only with explicit names
    lcfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, bias="none",
                      target_modules=targets, layers_to_transform=cfg.layers,
                      task_type="CAUSAL_LM")
    torch.manual_seed(cfg.seed)  # LoRA's A matrices are drawn here: the seed must cover them
    return get_peft_model(model, lcfg)


def _batches(n: int, batch_size: int, rng: random.Random, order: list[int] | None):
    """Endless stream of index batches: a fresh shuffle each epoch, or a fixed order."""
    while True:
        idx = list(order) if order is not None else rng.sample(range(n), n)
        for i in range(0, n, batch_size):
            yield idx[i:i + batch_size]


ANSWER_MARK = " | "


def split_anchor(anchor: str) -> tuple[str, str | None]:
    """"The capital of Chile is | Santiago." -> (prompt, answer); plain text -> (text, None)."""
    prompt, mark, answer = anchor.partition(ANSWER_MARK)
    return (prompt.strip(), answer.strip()) if mark else (anchor, None)


def anchor_text(anchor: str) -> str:
    prompt, answer = split_anchor(anchor)
    return f"{prompt} {answer}" if answer else prompt


@torch.no_grad()
def _anchor_targets(model, tok, anchors: list[str], device):
    """Base model log-probs on each anchor (adapter disabled), stored in bf16 to halve memory,
    and for a fact anchor the position where its answer starts."""
    enc, start, base = [], [], []
    with model.disable_adapter():
        for a in anchors:
            prompt, answer = split_anchor(a)
            if answer:
                p, t = encode_pair(tok, prompt, answer)
                ids, s = p + t, len(p) - 1
            else:
                ids, s = tok(prompt, add_special_tokens=True).input_ids, 0
            lp = torch.log_softmax(model(input_ids=torch.tensor([ids], device=device)).logits.float(), -1)[0]
            enc.append(ids)
            start.append(s)
            base.append(lp.to(torch.bfloat16))
    return enc, start, base


def _guard_loss(model, anchors, picks, pad_id, device):
    """Mean over the picked anchors of KL(base || tuned), each anchor averaged over its positions.
    A fact anchor counts its answer positions as half its KL: averaged over the whole sentence,
    the one position that holds the knowledge would weigh a tenth, and edits spill exactly there
    ("The capital of Canada is" -> "Toronto"); the other half keeps the sentence as a whole."""
    enc, start, base = anchors
    width = max(len(enc[i]) for i in picks)
    ids = torch.full((len(picks), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for r, i in enumerate(picks):
        ids[r, :len(enc[i])] = torch.tensor(enc[i], device=device)
        mask[r, :len(enc[i])] = 1
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
    total = 0.0
    for r, i in enumerate(picks):
        p_base = base[i].float()
        kl = (p_base.exp() * (p_base - logp[r, :len(enc[i])])).sum(-1)   # per position
        total = total + (0.5 * kl.mean() + 0.5 * kl[start[i]:].mean() if start[i] else kl.mean())
    return total / len(picks)


def _guard_picks(rng, n, near, size, share) -> list[int]:
    """Anchor indices for one guard batch: round(share * size) of them from `near`, the rest from all."""
    size, near = min(size, n), [i for i in (near or ()) if i < n]
    k = min(round(share * size), len(near))
    picks = rng.sample(list(near), k) if k else []
    rest = [i for i in range(n) if i not in set(picks)]
    return picks + rng.sample(rest, size - k)


@torch.no_grad()
def _all_hits(model, tok, pairs, device, batch_size) -> list[bool]:
    model.eval()
    hits = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        ids, mask, labels = collate(chunk, tok.pad_token_id, device)
        logits, lab, rows, _, _ = forward_targets(model, ids, mask, labels)
        hits += target_stats(logits, lab, rows, len(chunk))[2].tolist()
    model.train()
    return hits


def _confirm(result, model, tok, pairs, device, batch_size) -> bool:
    """Teacher-forced check of every fact on the current weights; True if all pass."""
    result.recalled = _all_hits(model, tok, pairs, device, batch_size)
    return all(result.recalled)


def train(model, tok, facts, weights=None, cfg: TrainConfig | None = None, anchors=(),
          on_step=None, should_stop=None, order=None, hidden_hook=None, near=None) -> TrainResult:
    """Train the LoRA adapter of `model` (a PeftModel) in place.

    on_step(record) is called after each step with step, loss, recall (fraction of facts whose
    last check recalled them) and per_fact (list of bools). should_stop() is polled before
    each step; when it returns True training ends and the adapter keeps what it learned.
    order: a fixed visiting order of fact indices (for data-order experiments); default shuffles.
    hidden_hook(step, fact_indices, last_prompt_hidden) lets the caller track representations.
    near: indices of the anchors most at risk (semantic.guard_anchors); a `guard_near` share of
    every guard batch comes from them, the rest from all anchors.
    """
    cfg = cfg or TrainConfig()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    device = next(p for p in model.parameters()).device
    n = len(facts)
    w = torch.tensor(weights if weights is not None else [1.0] * n, dtype=torch.float32, device=device)
    pairs = [encode_pair(tok, f.prompt, f.target, end=True) for f in facts]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    result = TrainResult(fact_curves=[[] for _ in range(n)], recalled=[False] * n)
    if n == 0:
        return result
    guard = cfg.locality_guard > 0 and len(anchors) > 0
    if guard:
        guard_set = _anchor_targets(model, tok, list(anchors), device)

    # Equal-sized batches: 35 facts at batch size 32 make 18 + 17, not 32 + 3, whose
    # alternating step sizes made the loss see-saw.
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    batch_size = math.ceil(n / steps_per_epoch)
    batches = _batches(n, batch_size, rng, order)
    t0 = time.perf_counter()
    settle_left = cfg.settle_steps if guard else 0   # settle steps are taken once, the first time all are recalled
    settle_until = None
    model.train()
    try:
        for step in range(1, cfg.steps + 1):
            if should_stop is not None and should_stop():
                result.stopped = "cancelled"
                break
            idx = next(batches)
            ids, mask, labels = collate([pairs[i] for i in idx], tok.pad_token_id, device)
            logits, lab, rows, cols, h = forward_targets(model, ids, mask, labels)
            _, nll, hit, _ = target_stats(logits, lab, rows, len(idx))
            nll_d = nll.detach()
            task = (nll * w[idx]).mean()
            loss = task
            g = torch.zeros(())
            if guard:
                picks = _guard_picks(rng, len(anchors), near, cfg.guard_batch, cfg.guard_near)
                g = _guard_loss(model, guard_set, picks, tok.pad_token_id, device)
                loss = task + cfg.locality_guard * g
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

            if hidden_hook is not None:  # the position predicting a fact's first target token = its last prompt token
                first = torch.ones_like(rows, dtype=torch.bool)
                first[1:] = rows[1:] != rows[:-1]
                hidden_hook(step, idx, h[rows[first], cols[first]].detach())
            for j, i in enumerate(idx):
                result.recalled[i] = bool(hit[j])
                result.fact_curves[i].append(round(float(nll_d[j]), 4))
            recall = sum(result.recalled) / n
            rec = dict(step=step, loss=round(float(loss.detach()), 4), task=round(float(task.detach()), 4),
                       guard=round(float(g.detach()), 5), recall=round(recall, 4),
                       seconds=round(time.perf_counter() - t0, 2), settling=settle_until is not None)
            result.history.append(rec)
            result.steps = step
            if on_step is not None:
                on_step({**rec, "per_fact": list(result.recalled)})
            # Every fact's last check passed, but those checks ran before this step's update:
            # confirm on the updated weights (one no-grad pass) before stopping, or before the
            # settle steps start.
            if settle_until is not None:
                if step >= settle_until:
                    settle_until = None
                    if _confirm(result, model, tok, pairs, device, batch_size):
                        result.stopped = "all recalled"
                        break
            elif cfg.early_stop and all(result.recalled) and step >= steps_per_epoch:
                if _confirm(result, model, tok, pairs, device, batch_size):
                    if not settle_left:
                        result.stopped = "all recalled"
                        break
                    settle_until, settle_left = step + settle_left, 0
    finally:
        model.eval()
        result.seconds = round(time.perf_counter() - t0, 2)
    return result


def save_adapter(model, out_dir) -> None:
    """peft folder with adapter_model.safetensors: PeftModel.from_pretrained loads it."""
    model.save_pretrained(str(out_dir), safe_serialization=True)
