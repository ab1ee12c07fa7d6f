"""How long a run will take, before it starts: Beacon's own cost model of a run, stage by stage.

A run's seconds go to a handful of stages (beacon/pipeline.py), each a line in the number of kept
facts n (interference also counts pairs of facts), fitted to runs measured on the reference machine: a 2-core AMD EPYC CPU,
2 threads, fp32, the default model (SmolLM2-135M), default settings (docs/speed.md, "The estimate").
Training is most of a run, and there

    train = K orders x (setup + expected steps x seconds a step),
    expected steps = 22 (n / 10)^0.6, capped by the step budget (measured: 22 at 10 facts, 39-47 at 30),
    seconds a step = (fixed + task pass per wording + guard pass per anchor) x (1 + 0.0075 n).

On another machine each reference second costs REFERENCE_GFLOPS / (its own fp32 matmul GFLOP/s):
every stage is compute-bound on a CPU, so one short matmul, timed once per process, tells how much
faster or slower it runs. A bigger model costs in proportion to its parameters. On a CUDA GPU the
machine is not timed: the model is `gpu_seconds`'s own (rough and pessimistic, as the ZeroGPU
reservation must be), at the expected number of steps instead of the whole budget.

`estimate` gives the whole run before it starts; `remaining` the seconds left once it runs.
"""
from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from beacon.config import DEFAULT_MODEL, InjectConfig

# The reference machine's speed, and the default model's size. 174: bench.py's 2048x2048 fp32 matmul at 2
# threads; machine_gflops's 512x512 reads the same within a few percent there (92-97 against 91 at 1 thread).
REFERENCE_GFLOPS = 174.0
REFERENCE_PARAMETERS = 134_515_008  # SmolLM2-135M-Instruct
REFERENCE_LAYERS = 30
# The order progress events arrive in (beacon/pipeline.py); "report" is the instant between after and plots.
ORDER = ("check", "load", "before", "layers", "guard", "rewordings", "interference", "train", "after", "report",
         "plots", "done")
STAGES = tuple(k for k in ORDER if k not in ("report", "done"))   # those that take time

# Reference seconds of each stage: (fixed, per kept fact). Fitted to bench.py's default runs of 10 and 30 facts.
CHECK = (2.9, 0.0)           # duplicates and conflicts: the sentence embedder, not the language model
LOAD = 4.0                   # from the disk cache; 0 when the process already holds the model
BEFORE = (8.1, 0.88)         # the probe sets are the fixed part (the same for any n)
GUARD = (2.7, 0.94)          # behind the gate: one greedy decode of relation prompts and held texts
GUARD_UNGATED = (15.0, 1.0)  # neighbours (5 a fact) and 40 sampled texts: not measured, rough
REWORDINGS = 0.9             # a fact, for the 3 rewordings the base model writes by default
INTERFERENCE = (0.13, 0.0015)  # per fact and per pair of facts: gradients, then their dot products
AFTER = (4.1, 0.74)          # behind the gate the probes that name no edited subject are copied
AFTER_UNGATED = BEFORE       # on every token every probe is measured again
LAYERS = (1.0, 0.3)          # the logit-lens layer selection: not measured, rough
PLOTS = 3.0                  # matplotlib, 2.5-3.4 s for a 30-fact report: not matmuls, so not scaled

# Training. Steps grow more slowly than the facts (bigger batches of different facts help each other).
STEPS_AT_10, STEPS_EXPONENT = 22, 0.6
TRAIN_SETUP = (1.5, 0.47)    # before the first step: the guard's base log-probs, the frozen prefixes
STEP_FIXED = 0.3             # optimiser, LoRA bookkeeping, the early-stop check
STEP_PER_WORDING = 2.0 / 32  # the task's pass, forward and backward, per training wording in the batch
STEP_PER_ANCHOR = 2.1 / 16   # the guard's pass per anchor: about as much as the task's at the defaults
STEP_GROWTH = 0.0075         # a step costs more as n grows (more subjects behind the gate, longer texts)
UNGATED = 1.4                # on every token each text runs whole, not from its subject on: rough
# Training from layer L up (a share f of the layers): a step costs 0.1 + 0.9 f of one on every layer, and the
# early stop comes after 1.2x the steps (benchmark's 30 facts: 15-29 3.41 s and 50 steps, 10-29 4.38 s and
# 49, every layer 5.84 s and 42; docs/speed.md).
UPPER_STEP_FIXED, UPPER_STEPS = 0.1, 1.2
CPU_4BIT = 20.0              # bitsandbytes' 4-bit kernels on a CPU (docs/method.md: a step about 20x slower)

# A CUDA GPU: gpu_seconds's model, rough and pessimistic. (fixed, per fact) of the stages other than training
# add up to its "40 s plus 0.5 s a fact"; a step is 0.25 s plus 0.05 s per 32 wordings of the run.
GPU = {"check": (3.0, 0.0), "load": (10.0, 0.0), "before": (12.0, 0.2), "guard": (6.0, 0.1),
       "rewordings": (3.0, 0.05), "interference": (1.0, 0.05), "after": (2.0, 0.1), "plots": (PLOTS, 0.0)}


def gpu_step_seconds(n_facts: int, wordings: float) -> float:
    return 0.25 + 0.05 * max(1.0, n_facts * wordings / 32)


def gpu_seconds(n_facts: int, steps: int, orders: int = 1, wordings: float = 6) -> int:
    """Seconds to reserve on a ZeroGPU Space for a run: every stage on a GPU (about 40 s plus 0.5 s a fact
    outside training) and the whole step budget at a pessimistic 0.25 s plus 0.05 s per 32 wordings a step,
    capped at ZeroGPU's 20-minute ceiling."""
    fixed = sum(a + b * n_facts for a, b in GPU.values())
    return int(min(1200, fixed + orders * steps * gpu_step_seconds(n_facts, wordings)))


@dataclass(frozen=True)
class Estimate:
    """Seconds a run will take, whole and per stage (keys of STAGES; a stage the run skips is 0)."""
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)
    steps: float = 0.0          # expected training steps, all orders together
    step_budget: int = 0        # the most steps there can be, all orders together
    device: str = "cpu"         # "cpu" or "cuda"
    threads: int = 1            # the CPU threads torch computes with

    @property
    def text(self) -> str:
        """"about 7 min on this machine (2 CPU threads)", "about 40 s on this GPU"."""
        if self.device == "cuda":
            return f"about {duration(self.seconds)} on this GPU"
        return (f"about {duration(self.seconds)} on this machine "
                f"({self.threads} CPU thread{'s' if self.threads != 1 else ''})")


def duration(seconds: float) -> str:
    """Seconds in the words of an estimate: 40 s, 7 min, 1.5 h (no false precision)."""
    if seconds < 90:
        return f"{max(10, round(seconds / 10) * 10):.0f} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60):.0f} min"
    return f"{seconds / 3600:.1f} h"


@functools.lru_cache(maxsize=None)
def machine_gflops(threads: int) -> float:
    """fp32 GFLOP/s of a 512x512 matmul on the CPU, best of five after a warm-up (about 60 ms in all on the
    reference machine; the best, because other work on the machine only ever slows it). Cached per thread
    count: it is the machine, not the run, that it measures."""
    import torch

    size, x = 512, torch.randn(512, 512)
    x @ x   # the first call starts the thread pool
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(4):
            x @ x
        best = min(best, (time.perf_counter() - t) / 4)
    return 2 * size ** 3 / best / 1e9


def _model_config(model: str) -> dict | None:
    """A model's config.json where that is on this machine (a local folder, or the Hugging Face cache: nothing
    is downloaded), its language model's part of a multimodal one; None where it is not."""
    path = Path(model) / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache
            hit = try_to_load_from_cache(model, "config.json")
        except Exception:   # not a repo id, no huggingface_hub
            return None
        if not isinstance(hit, str):
            return None
        path = Path(hit)
    try:
        c = json.loads(path.read_text())
        return c.get("text_config", c) if isinstance(c, dict) else None
    except (OSError, ValueError):
        return None


def model_layers(model: str) -> int | None:
    """Decoder layers of a model, from its config where that is on this machine; None where it is not."""
    if model == DEFAULT_MODEL:
        return REFERENCE_LAYERS
    c = _model_config(model) or {}
    n = c.get("num_hidden_layers") or c.get("n_layer")
    return int(n) if isinstance(n, int) and n > 0 else None


def model_parameters(model: str) -> int | None:
    """Parameters of a model, from its config.json where that is on this machine (a local folder, or the
    Hugging Face cache: nothing is downloaded); None where it is not. Counted for a decoder: attention,
    MLP (gated where the activation is SiLU) and embeddings."""
    if model == DEFAULT_MODEL:
        return REFERENCE_PARAMETERS
    c = _model_config(model)
    if c is None:   # the default model's size stands in
        return None
    try:
        h = c.get("hidden_size") or c.get("n_embd") or c["d_model"]
        layers = c.get("num_hidden_layers") or c["n_layer"]
        heads = c.get("num_attention_heads") or c.get("n_head") or 1
        kv = (c.get("num_key_value_heads") or heads) * (c.get("head_dim") or h // heads)
        inner = c.get("intermediate_size") or c.get("n_inner") or 4 * h
        gated = str(c.get("hidden_act", "")).lower() in ("silu", "swish", "swiglu")
        embeddings = c["vocab_size"] * h * (1 if c.get("tie_word_embeddings", True) else 2)
        return int(layers * (2 * h * h + 2 * h * kv + (3 if gated else 2) * h * inner) + embeddings)
    except (ValueError, KeyError, TypeError, ZeroDivisionError):
        return None


def trained_share(cfg: InjectConfig) -> float:
    """The share of the decoder's layers a step runs: from the lowest layer trained up, the layers below it
    are computed once before training (beacon/model/frozen.py). 1 for all layers, auto (chosen during the
    run), or where the model's layer count is not on this machine."""
    if cfg.layers in ("all", "auto"):   # the default: no config to read, no layers to parse
        return 1.0
    n = model_layers(cfg.model)
    if n is None:
        return 1.0
    from beacon.method.layers import parse_layers

    try:
        return (n - min(parse_layers(cfg.layers, n))) / n
    except ValueError:
        return 1.0


def wordings_per_fact(cfg: InjectConfig) -> float:
    """Training wordings a kept fact gets: its prompt, about 3 of Beacon's forms that name the subject
    and survive the gate, the base model's rewordings, and any of its own paraphrases asked for."""
    if not cfg.rewordings:
        return 1 + cfg.train_paraphrases
    return 4 + cfg.model_rewordings + cfg.train_paraphrases


def orders(n_facts: int, cfg: InjectConfig) -> int:
    """Adapters trained: K data orders where there are facts to order and no earlier adapter to go on from."""
    return cfg.orders if cfg.orders > 1 and n_facts > 1 and not cfg.continue_from else 1


def expected_steps(n_facts: int, cfg: InjectConfig) -> tuple[float, int]:
    """(expected steps, step budget), all orders together."""
    t, k = cfg.train, orders(n_facts, cfg)
    if n_facts == 0 or t.steps == 0:
        return 0.0, 0
    steps = STEPS_AT_10 * (n_facts / 10) ** STEPS_EXPONENT if t.early_stop else t.steps
    if t.guarded and t.early_stop:
        steps += t.settle_steps
    return k * min(steps, t.steps), k * t.steps


def _line(coef, n):
    return coef[0] + coef[1] * n


def estimate(n_facts: int, cfg: InjectConfig | None = None, device: str | None = None, *, measured: bool = False,
             model_cached: bool = False, parameters: int | None = None, gflops: float | None = None,
             threads: int | None = None) -> Estimate:
    """Seconds a run of `cfg` on `n_facts` kept facts will take (given all facts, before the check knows which
    it keeps: an upper bound). device: "cpu", "cuda" or "cuda:N"; None: where the run will go (BEACON_DEVICE,
    else a GPU where torch sees one). measured: the facts were checked and measured already (the app's
    Check facts), so the run skips check, load and before. model_cached: the process holds the model.
    parameters: the model's size where the caller knows it (else read from its config, else the
    default's). gflops, threads: the machine's speed (machine_gflops) and torch's CPU threads, given
    rather than measured (tests)."""
    cfg = cfg or InjectConfig()
    t, n = cfg.train, max(0, int(n_facts))
    if device is None:
        from beacon.model.models import pick_device
        device = pick_device().type
    device = "cuda" if str(device).startswith("cuda") else "cpu"
    size = (parameters or model_parameters(cfg.model) or REFERENCE_PARAMETERS) / REFERENCE_PARAMETERS
    steps, budget = expected_steps(n, cfg)
    share = trained_share(cfg)
    if share < 1:
        steps = min(steps * UPPER_STEPS, budget)
    w = wordings_per_fact(cfg)
    gated = t.gate != "none"
    pairs = min(n, cfg.interference_max_facts) if cfg.interference and n >= 2 else 0

    if device == "cuda":   # gpu_seconds's model, not timed
        threads = threads or 1
        s = {k: _line(GPU[k], n) * (1.0 if k in ("check", "plots") else size) for k in GPU}
        s["train"] = steps * gpu_step_seconds(n, w) * size
        s["layers"] = 0.0
    else:
        if threads is None:
            import torch
            threads = torch.get_num_threads()
        speed = REFERENCE_GFLOPS / (gflops or machine_gflops(threads))   # > 1: slower than the reference
        lm = speed * size * (CPU_4BIT if cfg.quantization == "4bit" else 1.0)   # a second of the language model
        step = ((STEP_FIXED + STEP_PER_WORDING * min(t.batch_size, n * w)
                 + (STEP_PER_ANCHOR * t.guard_batch if t.guarded else 0.0))
                * (1 + STEP_GROWTH * n) * (1.0 if gated else UNGATED)
                * (UPPER_STEP_FIXED + (1 - UPPER_STEP_FIXED) * share if share < 1 and gated else 1.0))
        s = {"check": _line(CHECK, n) * speed,
             "load": LOAD * size,
             "before": _line(BEFORE, n) * lm,
             "layers": _line(LAYERS, n) * lm,
             "guard": _line(GUARD if gated else GUARD_UNGATED, n) * lm,
             "rewordings": REWORDINGS * n * cfg.model_rewordings / 3 * lm,
             "interference": (INTERFERENCE[0] * pairs + INTERFERENCE[1] * pairs ** 2) * lm,
             "train": (orders(n, cfg) * _line(TRAIN_SETUP, n) + steps * step) * lm if steps else 0.0,
             "after": _line(AFTER if gated else AFTER_UNGATED, n) * lm,
             "plots": PLOTS}
    # What this run skips (beacon/pipeline.py: the same conditions).
    skipped = {"load": model_cached or measured, "check": measured, "before": measured,
               "layers": cfg.layers != "auto" or n == 0,
               "guard": not t.reads_anchors or n == 0,
               "rewordings": not (cfg.rewordings and cfg.model_rewordings > 0 and n),
               "interference": pairs == 0, "plots": not cfg.plots}
    stages = {k: 0.0 if skipped.get(k) else round(s.get(k, 0.0), 2) for k in STAGES}
    return Estimate(seconds=round(sum(stages.values()), 1), stages=stages, steps=round(steps, 1),
                    step_budget=budget, device=device, threads=threads)


def remaining(est: Estimate, stage: str, step: int | None = None, steps_expected: float | None = None,
              elapsed: float | None = None, done=()) -> float:
    """Seconds left of a run estimated as `est`, now in `stage` (a progress event's "stage").
    step: training steps taken so far, all orders together; steps_expected: instead of est.steps.
    elapsed: seconds spent in this stage so far (without step, within training too). done: stages
    already finished (the pipeline enters "check" again after "before"; the app's Check facts measures
    check, load and before ahead of the run), never counted again. Past its estimate, a stage is
    taken to have a tenth of it still to go: the number falls, but not to 0, until the run is done."""
    if stage not in ORDER:
        raise ValueError(f"unknown stage {stage!r} (known: {', '.join(ORDER)})")
    if stage == "done":
        return 0.0
    here = est.stages.get(stage, 0.0)
    if stage == "train" and step is not None:
        expected = steps_expected if steps_expected is not None else est.steps
        per_step = here / est.steps if est.steps else 0.0
        left_steps = max(expected - step, 0.1 * expected)
        if est.step_budget:
            left_steps = min(left_steps, max(est.step_budget - step, 0))
        left = per_step * left_steps
    elif elapsed is not None:
        left = max(here - elapsed, 0.1 * here)
    else:
        left = here
    done = set(done)
    later = ORDER[ORDER.index(stage) + 1:]
    return round(left + sum(est.stages.get(k, 0.0) for k in later if k not in done), 1)
