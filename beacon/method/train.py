"""LoRA training on facts: target-only loss, per-fact weights, an optional locality guard.

One step = one mini-batch of facts (all of them when they fit in one batch). The loss is the
mean target-token NLL of each fact, times that fact's weight, averaged over the batch. The
locality guard adds W * KL(base || tuned) on unrelated anchor text: the base model's
next-token distributions are computed once, with the adapter disabled, and the tuned model
is pulled towards them, so it learns the facts without rewriting what it knew. With `null_space`,
LoRA's A matrices are also kept out of the input directions the anchors use (beacon/experimental/nullspace.py),
projected once before training and again after every optimiser step.

Early stop is read off the training passes: each step's forward pass already holds the logits of
every target token of its wordings; once the argmax matched every target token of every wording on its
last visit, greedy decoding would produce each target, and one pass over the facts' own prompts checks
them on the final weights before training stops. `settle_steps` (off by default) trains on a few
steps after that, meant to let the guard lead once the facts' loss is small. Measured on the
counterfactual sample it costs locality (93% against 96%, 3 seeds): Adam moves every parameter by
about the learning rate whatever the size of the loss, so most likely the facts keep pushing as hard as before.
"""
from __future__ import annotations

import functools
import math
import random
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from beacon.config import TrainConfig
from beacon.model.lm import (collate, encode_pair, first_targets, forward_targets, length_groups, prefix_groups,
                             target_stats)
from beacon.model import precision
from beacon.model.frozen import FrozenPrefixes
from beacon.method.gate import SubjectGate
from beacon.method.anchors import anchor_text
from beacon.method.guard import anchor_targets, guard_loss, guard_picks


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


def lora_config(model, cfg: TrainConfig, layers: list[int] | None = None, rank: int | None = None):
    """peft's LoraConfig for `cfg` on these decoder layers (None = all); rank overrides cfg.rank and
    keeps alpha / rank, the update's scale."""
    from peft import LoraConfig

    targets = cfg.target_modules
    if targets == "all-linear" and layers is not None:
        targets = linear_names(model)  # peft accepts layers_to_transform only with explicit names
    r = rank or cfg.rank
    return LoraConfig(r=r, lora_alpha=cfg.alpha * r // cfg.rank, lora_dropout=0.0, bias="none",
                      target_modules=targets, layers_to_transform=layers, task_type="CAUSAL_LM")


def attach_lora(model, cfg: TrainConfig, quantized: bool, layers: list[int] | None = None, upcast: bool = True):
    """Wrap the frozen model in a fresh LoRA adapter (peft), on these decoder layers (None = all).
    upcast: on a 4-bit model, peft's QLoRA preparation, which casts every weight not in 4 bits (norms,
    and the embeddings the LM head shares) to fp32; False leaves them in the compute dtype (measured
    apart in benchmarks/bench_cuda.py)."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quantized and upcast:
        # No checkpointing: these models are small and it would double the step time.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lcfg = lora_config(model, cfg, layers)
    torch.manual_seed(cfg.seed)  # LoRA's A matrices are drawn here: the seed must cover them
    return get_peft_model(model, lcfg)


def add_lora(model, name: str, cfg: TrainConfig, layers: list[int] | None = None, rank: int | None = None):
    """One more adapter `name` beside the model's others (a PeftModel), drawn from cfg.seed."""
    from beacon.method.gate import reattach

    torch.manual_seed(cfg.seed)
    model.add_adapter(name, lora_config(model, cfg, layers, rank))
    reattach(model)


def _batches(n: int, batch_size: int, rng: random.Random, order: list[int] | None, lengths=None):
    """Endless stream of index batches: a fresh shuffle each epoch, or a fixed order. With `lengths`,
    each shuffled epoch is cut into batches of similar length, visited in random order: rows are
    padded to the longest in their batch, and a 40-token chat wording beside 10-token ones would
    triple the work."""
    while True:
        idx = list(order) if order is not None else rng.sample(range(n), n)
        if order is None and lengths is not None:
            idx.sort(key=lambda i: lengths[i])
            chunks = [idx[i:i + batch_size] for i in range(0, n, batch_size)]
            yield from rng.sample(chunks, len(chunks))
            continue
        for i in range(0, n, batch_size):
            yield idx[i:i + batch_size]


def _take(stream, n: int, skip=frozenset()) -> list[int]:
    out = []
    while len(out) < n:
        k = next(stream)
        if k not in skip and k not in out:   # a batch across an epoch's end could meet an item twice
            out.append(k)
    return out


def rival_penalty(first_logits, own, rivals):
    """Per row, -sum log(1 - p) over the first tokens of the other facts' answers (`rivals` [K], less the row's own
    first answer token `own` [R]) at the row's answer position (`first_logits` [R, V]): an unlikelihood term
    that is large only where another fact's answer is likely, so it binds each answer to its own subject."""
    p = torch.softmax(first_logits.float(), -1)[:, rivals]
    other = rivals[None, :] != own[:, None]
    return -(torch.log1p(-p.clamp(max=0.999)) * other).sum(1)


def _forward_rows(model, pairs, pad_id, device, frozen=None, items=None, rivals=None):
    """Per row of a training batch: mean target NLL (with grad), teacher-forced hit, and the hidden state
    at the last prompt token; with `rivals` (the first tokens of every fact's answer), the NLL plus each
    row's rival_penalty, weighted by the caller's contrast weight. Rows run in groups of similar length, one backward for all: a batch that
    mixes 60-token chat wordings with 12-token plain ones would otherwise spend most of its work on padding.
    Chat wordings share the template's system turn, run once per group (evaluate.prefix_groups).
    frozen: the items' cached prefixes behind the gate (beacon/model/frozen.py), `items` the rows' indices into it:
    each row runs from its cut on."""
    nll, hit, h_last, at = [], [], [], []
    if frozen is None:
        groups = [(shared, g, [0] * len(g)) for shared, g in prefix_groups(pairs)]
    else:
        cuts = [frozen.cut[k] for k in items]
        groups = [(0, g, [cuts[j] for j in g])
                  for g in length_groups([len(p) + len(t) - c for (p, t), c in zip(pairs, cuts)])]
    for shared, g, cut in groups:
        ids, mask, labels = collate([(pairs[i][0][max(shared, c):], pairs[i][1]) for i, c in zip(g, cut)], pad_id, device)
        if frozen is None:
            logits, lab, rows, cols, h = forward_targets(model, ids, mask, labels, prefix=pairs[g[0]][0][:shared])
        else:
            logits, lab, rows, cols, h = forward_targets(model, ids, mask, labels,
                                                         states=frozen.states(model, [items[i] for i in g], ids, mask))
        _, nl, ht, _ = target_stats(logits, lab, rows, len(g))
        first = first_targets(rows)
        if rivals is not None:
            weight, ids = rivals
            nl = nl + weight * rival_penalty(logits[first], lab[first], ids)
        nll.append(nl), hit.append(ht), h_last.append(h[rows[first], cols[first]]), at.extend(g)
    back = torch.tensor(at, device=device).argsort()   # batch order again
    return torch.cat(nll)[back], torch.cat(hit)[back], torch.cat(h_last)[back]


@torch.no_grad()
def all_hits(model, tok, pairs, device, batch_size, stop_on_miss: bool = False, frozen=None,
              items: list[int] | None = None) -> list[bool]:
    """Teacher-forced hit of each pair (of `items`, default all), batch by batch; with stop_on_miss, only up to
    the first batch with a miss."""
    items = list(range(len(pairs))) if items is None else items
    model.eval()
    hits = []
    try:
        for i in range(0, len(items), batch_size):
            part = items[i:i + batch_size]
            hits += _forward_rows(model, [pairs[k] for k in part], tok.pad_token_id, device, frozen, part)[1].tolist()
            if stop_on_miss and not all(hits):
                break
    finally:
        model.train()
    return hits


def _confirm(result, item_hit, own, owner, model, tok, pairs, device, batch_size, frozen=None) -> bool:
    """Every item hit on its last visit, in the pass of its own step, before that step's update: check the facts'
    own prompts on the weights now (one no-grad pass over n short rows, not over every wording); True if all
    pass. A fact that fails is marked missed and training goes on."""
    mine = [k for k in range(len(pairs)) if own[k]]
    hits = all_hits(model, tok, pairs, device, batch_size, frozen=frozen, items=mine)
    for k, ok in zip(mine, hits):
        item_hit[k] = ok
        result.recalled[owner[k]] = ok
    return all(hits)


def _schedule(pairs, owner, batch_size: int, rng, order):
    """(steps an epoch, batch size, the batches, the same order item by item for focus). Equal-sized batches:
    35 items at batch size 32 make 18 + 17, not 32 + 3, whose alternating step sizes made the loss see-saw.
    order: a fixed order of facts, each fact's items kept together in it."""
    n_items = len(pairs)
    steps_per_epoch = math.ceil(n_items / batch_size)
    batch_size = math.ceil(n_items / steps_per_epoch)
    if order is not None:
        order = [k for i in order for k in range(n_items) if owner[k] == i]
    batches = _batches(n_items, batch_size, rng, order, lengths=[len(p) + len(t) for p, t in pairs])
    return steps_per_epoch, batch_size, batches, (k for b in batches for k in b)


def _next_batch(batches, stream, misses: list[int], batch_size: int, focus: bool) -> list[int]:
    """The next batch of items: the epoch's next, or with focus, once at most half a batch is still missed, every
    missed item and the epoch's next items after them (a few missed wordings would otherwise wait a whole epoch
    between visits)."""
    if 0 < len(misses) <= batch_size // 2:
        return misses + _take(stream, batch_size - len(misses), skip=set(misses))
    return next(batches) if not focus else _take(stream, batch_size)


def _note_hits(result, item_hit, idx, own, owner, out) -> None:
    """Each item's hit in this step's pass; a fact's own prompt also sets its recall and its loss curve."""
    for j, k in enumerate(idx):
        item_hit[k] = bool(out["hit"][j])
        if own[k]:
            result.recalled[owner[k]] = bool(out["hit"][j])
            result.fact_curves[owner[k]].append(round(float(out["nll"][j]), 4))


class _Stop:
    """When training ends. Every item's last check passed, in its own step's pass, before that step's update: the
    facts' own prompts are then confirmed on the updated weights before stopping, or, with settle steps (taken
    once, the first time all are recalled), before those start and again after them."""

    def __init__(self, settle: int):
        self.left, self.until = settle, None

    @property
    def settling(self) -> bool:
        return self.until is not None

    def done(self, step: int, all_hit: bool, ready: bool, confirm) -> bool:
        if self.until is not None:
            if step < self.until:
                return False
            self.until = None
            return confirm()
        if not (ready and all_hit and confirm()):
            return False
        if self.left:
            self.until, self.left = step + self.left, 0
            return False
        return True


class _Fixed(NamedTuple):
    """What every step reads and nothing in training changes."""
    fast: object                 # precision.FrozenBf16: the step's passes in bf16 where that is faster
    frozen: object | None        # behind the gate, each wording's tokens before its subject (beacon/model/frozen.py)
    guard_set: object | None     # the guard's anchors and the base model's distributions on them
    anchors: list
    null: object | None          # with null_space > 0: project the LoRA A matrices again
    u: torch.Tensor | None       # target vectors, with dynamic weights
    rivals: tuple | None         # with contrast > 0: (its weight, the first token of every fact's answer)


def _prepare(model, tok, facts, cfg: TrainConfig, anchors: list, pairs, device) -> _Fixed:
    """Everything computed once before the first step. The early-stop check runs without bf16, so "all
    recalled" holds in the precision recall is measured in; the prefixes and the guard's targets are computed
    in the step's precision, so the KL is 0 before the first update."""
    guarded = anchors if cfg.guarded else []
    fast = precision.FrozenBf16(model, precision.resolve(cfg.compute, model) == "bf16")
    gate = getattr(model, "_beacon_gate", None)
    frozen = guard_set = null = u = None
    with fast.active():
        if gate is not None:
            frozen = FrozenPrefixes(model, gate, [p + t for p, t in pairs], [len(p) - 1 for p, _ in pairs],
                                    tok.pad_token_id)
        if guarded:
            guard_set = anchor_targets(model, tok, guarded, device, gate=gate)
    if cfg.null_space > 0 and len(anchors) > 0:
        from beacon.experimental import nullspace
        null = functools.partial(nullspace.project, model, nullspace.bases(
            nullspace.input_covariances(model, tok, [anchor_text(a) for a in anchors]), cfg.null_space))
        null()
    if cfg.weighting == "dynamic":
        from beacon.method.semantic import target_vectors
        u = target_vectors(model, tok, facts).to(device)
    rivals = (cfg.contrast, torch.tensor(sorted({t[0] for _, t in pairs}), device=device)) if cfg.contrast > 0 else None
    return _Fixed(fast, frozen, guard_set, guarded, null, u, rivals)


def _step(model, tok, opt, ctx: _Fixed, cfg: TrainConfig, batch, idx, wb, fidx, rng, near, device) -> dict:
    """One optimiser step on `batch` (the items `idx` of facts `fidx`, weighted `wb`): the task's NLL, then the
    guard's KL. Two backward passes add up to the same gradient as one on their sum, and each part's seconds can
    be told apart: the profile the report keeps per step."""
    clock = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    with ctx.fast.active():
        nll, hit, h_last = _forward_rows(model, batch, tok.pad_token_id, device, ctx.frozen, idx, ctx.rivals)
        if ctx.u is not None:
            from beacon.experimental.dynamic import dynamic_weights
            wb = wb * dynamic_weights(h_last.detach(), ctx.u[fidx])
        task = (nll * wb).mean()
        task.backward()
        t_task, clock = time.perf_counter() - clock, time.perf_counter()
        g = torch.zeros(())
        if ctx.guard_set is not None:
            picks = guard_picks(rng, len(ctx.anchors), near, cfg.guard_batch, cfg.guard_near)
            g = guard_loss(model, ctx.guard_set, picks, tok.pad_token_id, device, cfg.guard_margin)
            (cfg.locality_guard * g).backward()
        t_guard, clock = (time.perf_counter() - clock if ctx.guard_set is not None else 0.0), time.perf_counter()
    opt.step()
    if ctx.null is not None:
        ctx.null()
    t_update = time.perf_counter() - clock
    return {"nll": nll.detach(), "hit": hit, "h_last": h_last, "task": task.detach(), "guard": g.detach(),
            "loss": task.detach() + cfg.locality_guard * g.detach(),
            "time": dict(task=round(t_task, 3), guard=round(t_guard, 3), update=round(t_update, 3))}


def train(model, tok, facts, weights=None, cfg: TrainConfig | None = None, anchors=(),
          on_step=None, should_stop=None, order=None, hidden_hook=None, near=None,
          prompts=None) -> TrainResult:
    """Train the LoRA adapter of `model` (a PeftModel) in place.

    prompts: per fact, the wordings to train it on (its own prompt first; beacon.method.rewordings makes
    them); default its prompt alone. One training item = one (fact, wording); batches are drawn
    over items, and training stops once every item is recalled.
    on_step(record) is called after each step with step, loss, recall (fraction of facts whose
    last check of their own prompt recalled them) and per_fact (list of bools). should_stop() is
    polled before each step; when it returns True training ends and the adapter keeps what it learned.
    order: a fixed visiting order of fact indices (for data-order experiments); default shuffles.
    hidden_hook(step, fact_indices, last_prompt_hidden) lets the caller track representations.
    near: indices of the anchors most at risk (guard.guard_anchors); a `guard_near` share of
    every guard batch comes from them, the rest from all anchors.
    """
    cfg = cfg or TrainConfig()
    if cfg.gate != "none" and getattr(model, "_beacon_gate", None) is None:   # a caller that brought none
        SubjectGate.for_facts(tok, facts, cfg.gate, cfg.short_names).attach(model)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    device = next(p for p in model.parameters()).device
    n = len(facts)
    w = torch.tensor(weights if weights is not None else [1.0] * n, dtype=torch.float32, device=device)
    prompts = prompts or [[f.prompt] for f in facts]
    owner = [i for i, ps in enumerate(prompts) for _ in ps]            # item -> fact
    own = [j == 0 for ps in prompts for j in range(len(ps))]           # item is the fact's own prompt
    pairs = [encode_pair(tok, p, facts[i].target, end=True) for i, ps in enumerate(prompts) for p in ps]
    n_items = len(pairs)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    result = TrainResult(fact_curves=[[] for _ in range(n)], recalled=[False] * n)
    if n == 0:
        return result
    item_hit = [False] * n_items
    ctx = _prepare(model, tok, facts, cfg, list(anchors), pairs, device)

    steps_per_epoch, batch_size, batches, stream = _schedule(pairs, owner, cfg.batch_size, rng, order)
    t0 = time.perf_counter()
    stop = _Stop(cfg.settle_steps if ctx.guard_set is not None else 0)
    model.train()
    try:
        for step in range(1, cfg.steps + 1):
            if should_stop is not None and should_stop():
                result.stopped = "cancelled"
                break
            misses = [k for k in range(n_items) if not item_hit[k]] if cfg.focus and step > steps_per_epoch else []
            idx = _next_batch(batches, stream, misses, batch_size, cfg.focus)
            fidx = [owner[k] for k in idx]
            out = _step(model, tok, opt, ctx, cfg, [pairs[k] for k in idx], idx, w[fidx], fidx, rng, near, device)
            mine = [j for j, k in enumerate(idx) if own[k]]
            if hidden_hook is not None and mine:
                hidden_hook(step, [fidx[j] for j in mine], out["h_last"][mine].detach())
            _note_hits(result, item_hit, idx, own, owner, out)
            rec = dict(step=step, loss=round(float(out["loss"]), 4), task=round(float(out["task"]), 4),
                       guard=round(float(out["guard"]), 5), recall=round(sum(result.recalled) / n, 4),
                       items=round(sum(item_hit) / n_items, 4),
                       seconds=round(time.perf_counter() - t0, 2), settling=stop.settling,
                       time=out["time"])
            result.history.append(rec)
            result.steps = step
            if on_step is not None:
                on_step({**rec, "per_fact": list(result.recalled)})
            # Every item's last check passed, in its own step's pass, before that step's update: the facts' own
            # prompts are confirmed on the updated weights before stopping, or before the settle steps start.
            clock = time.perf_counter()
            done = stop.done(step, all(item_hit), cfg.early_stop and step >= steps_per_epoch, lambda: _confirm(
                result, item_hit, own, owner, model, tok, pairs, device, batch_size, ctx.frozen))
            rec["time"]["check"] = round(time.perf_counter() - clock, 3)
            if done:
                result.stopped = "all recalled"
                break
    finally:
        model.eval()
        result.seconds = round(time.perf_counter() - t0, 2)
    return result


def save_adapter(model, out_dir) -> None:
    """peft folder with adapter_model.safetensors for the active adapter: PeftModel.from_pretrained
    loads it. peft writes an adapter not named "default" into a subfolder of that name (merged data
    orders are "merged"): its files are moved up, so every run's adapter/ looks the same."""
    import shutil
    from pathlib import Path

    name, out = model.active_adapter, Path(out_dir)
    model.save_pretrained(str(out), safe_serialization=True, selected_adapters=[name])
    if getattr(model, "_beacon_gate", None) is not None:
        model._beacon_gate.save(out)
    if name != "default":
        for f in (out / name).iterdir():
            f.replace(out / f.name)
        shutil.rmtree(out / name)
