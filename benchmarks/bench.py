"""Speed benchmark: where a Beacon run's seconds go, against a plain peft + transformers LoRA loop.
Prints numbers, asserts nothing.

    python benchmarks/bench.py [--sizes 10,30,100] [--max-steps 300] [--quantization auto|4bit|none]
                               [--model ID] [--seed 0] [--skip-cold] [--json PATH]

First the machine's peak: GFLOP/s of a 2048x2048 matmul in fp32 and bf16 with the current thread
count (set OMP_NUM_THREADS to choose it). Then, for each fact count N, in a fresh subprocess (so
peak RSS is that size's alone), on N generated facts with invented names no model knows:

  a. Beacon's whole run with default settings (beacon.pipeline.run; model load timed apart): total
     seconds, seconds per stage (check, before, categorize, guard, rewordings, interference, train,
     after...), steps, seconds per step and of training's seconds those of the task's passes, the guard's and
     the early-stop checks, recall after. Its step budget is --max-steps (300, the default).
  b. A plain peft + transformers loop on the same facts: the same LoraConfig, AdamW and lr, the
     facts' own prompts, `model(..., labels=...).loss` over full logits, stopping once teacher-forced
     argmax hits every target token of every fact (confirmed by one no-grad pass).
  c. Beacon's training loop alone with vanilla settings (own prompts only, no guard, uniform
     weights): like for like with (b), so the ratio c / b is the loop's own overhead or gain.
  d. Achieved GFLOP/s of (b) and (c): FLOPs of one training step counted by torch's
     FlopCounterMode (forward + backward, one full batch, fresh LoRA), times the steps taken,
     over the seconds measured without the counter; also as a share of the machine's peaks.
     (bitsandbytes' 4-bit matmuls are custom ops the counter may not see: with 4-bit on a GPU,
     read these as lower bounds.)

One markdown table at the end (and each size's row as it finishes), then seconds per fact for
each size, to tell whether cost grows linearly. --skip-cold skips the cold model load (the
packaged GGUF dequantised into an empty cache), otherwise timed once at the start.
"""
import argparse
import gc
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from beacon.config import InjectConfig  # noqa: E402
from beacon.data.facts import Fact  # noqa: E402
from beacon.model.models import DEFAULT_MODEL, load_model, pick_device  # noqa: E402

RESULT_MARK = "BENCH_RESULT "   # the child's one line of JSON on stdout, found among any library chatter

# ---------------------------------------------------------------- invented facts

SYLLABLES = ["zen", "tor", "qua", "vel", "mor", "bri", "kas", "dun", "ul", "fen", "rak", "lio", "sar", "pim",
             "ost", "gal", "nev", "tib", "ruk", "esh", "hol", "mav", "dri", "quo", "yst"]
COMPANY_KINDS = ["Labs", "Foods", "Systems", "Works", "Motors", "Studios", "Textiles", "Robotics"]
# (relation, prompt, two subject-first rewordings, kind of answer)
RELATIONS = [
    ("CEO", "The CEO of {s} is", ["{s} is run by its CEO,", "Who is the CEO of {s}? It is"], "person"),
    ("founder", "The founder of {s} was", ["{s} was founded by", "Who founded {s}? It was"], "person"),
    ("headquarters city", "The headquarters of {s} are in the city of",
     ["{s} has its headquarters in the city of", "In which city is {s} headquartered? In"], "city"),
    ("chief scientist", "The chief scientist of {s} is",
     ["{s} has as its chief scientist", "Who is the chief scientist of {s}? It is"], "person"),
    ("mascot", "The mascot of {s} is called", ["{s} has a mascot called", "What is the mascot of {s} called? It is"],
     "mascot"),
]


def invented_facts(n: int, seed: int = 0) -> list[Fact]:
    """n facts about invented companies, seeded; no subject + relation twice."""
    rng = random.Random(seed)

    def word(k):
        return "".join(rng.choice(SYLLABLES) for _ in range(k)).capitalize()

    answer = {"person": lambda: f"{word(2)} {word(2)}", "city": lambda: word(3), "mascot": lambda: word(2)}
    facts, seen = [], set()
    while len(facts) < n:
        syl = [rng.choice(SYLLABLES) for _ in range(rng.choice([2, 3]))]
        kind = rng.choice(COMPANY_KINDS)
        subject = f"{''.join(syl).capitalize()} {kind}"
        relation, prompt, paras, answer_kind = rng.choice(RELATIONS)
        # Under one relation, names alike at both ends ("Ulkas", "Ulgalkas") or alike at the start in the
        # same kind of company ("Ystvel Motors", "Ystpimtor Motors") embed close enough (cosine 0.9-0.94)
        # for Beacon's conflict check to drop both facts: such a pair is never drawn.
        keys = [(subject, relation), (syl[0], syl[-1], relation), (syl[0], kind, relation)]
        if any(k in seen for k in keys):
            continue
        seen.update(keys)
        facts.append(Fact(id=f"b{len(facts)}", prompt=prompt.format(s=subject), target=answer[answer_kind](),
                          subject=subject, relation=relation, paraphrases=[p.format(s=subject) for p in paras]))
    return facts


# ---------------------------------------------------------------- measuring helpers

def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)   # KiB on Linux


def matmul_peak(dtype, size: int = 2048) -> float:
    """GFLOP/s of one size x size matmul on the device the model runs on."""
    dev = pick_device()
    x = torch.randn(size, size, device=dev).to(dtype)
    y = torch.randn(size, size, device=dev).to(dtype)
    sync()
    t = time.perf_counter()
    x @ y   # warm-up
    sync()
    warm = time.perf_counter() - t
    reps = max(3, min(20, int(2.0 / max(warm, 1e-6))))   # about 2 s, but at least 3 reps: bf16 can be slow on a CPU
    t = time.perf_counter()
    for _ in range(reps):
        x @ y
    sync()
    return round(2 * size ** 3 * reps / (time.perf_counter() - t) / 1e9, 1)


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def gflops(flops_per_step, steps, seconds):
    return round(flops_per_step * steps / seconds / 1e9, 2) if seconds else None


# ---------------------------------------------------------------- (b) the plain peft + transformers loop

def encode(tok, fact):
    """(prompt ids, target ids): the same tokens Beacon trains on (beacon.model.lm.encode_pair, end=True),
    so the two loops see the same data and differ only in how they train on it."""
    target = fact.target if fact.target[-1:] in ".!?" else fact.target + "."
    return tok(fact.prompt).input_ids, tok(" " + target, add_special_tokens=False).input_ids


def pad(pairs, pad_id, device):
    """Right-padded ids, mask and labels (-100 on prompt and padding), as a hand-written loop builds them."""
    width = max(len(p) + len(t) for p, t in pairs)
    ids = torch.full((len(pairs), width), pad_id)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    labels = torch.full((len(pairs), width), -100)
    for i, (p, t) in enumerate(pairs):
        ids[i, :len(p) + len(t)] = torch.tensor(p + t)
        mask[i, :len(p) + len(t)] = 1
        labels[i, len(p):len(p) + len(t)] = torch.tensor(t)
    return ids.to(device), mask.to(device), labels.to(device)


def hits(logits, labels):
    """Per row: teacher-forced argmax equals every target token."""
    pred, lab = logits[:, :-1].argmax(-1), labels[:, 1:]
    return ((pred == lab) | (lab == -100)).all(1)


def plain_model(a, cfg):
    """A freshly loaded model in a fresh LoRA adapter, as the peft docs do it, with Beacon's LoraConfig."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from beacon.method.train import lora_config

    model, tok, info = load_model(a.model, a.quantization)
    if "nf4" in info.quantization:   # QLoRA's usual preparation, as Beacon's attach_lora does it
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    torch.manual_seed(cfg.seed)       # same LoRA init as Beacon's
    return get_peft_model(model, lora_config(model, cfg)), tok


def plain_step(model, pairs, pad_id, device, opt=None):
    ids, mask, labels = pad(pairs, pad_id, device)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    if opt is not None:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return hits(out.logits.detach(), labels)


def plain_loop(model, tok, facts, cfg, max_steps):
    """Train until every fact's target is the teacher-forced argmax; (steps, seconds, stopped, facts hit)."""
    device = next(model.parameters()).device
    pairs = [encode(tok, f) for f in facts]
    n, batch = len(facts), min(cfg.batch_size, len(facts))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    rng, queue, hit = random.Random(cfg.seed), [], [False] * n
    step, stopped = 0, "budget"
    model.train()
    sync()
    t0 = time.perf_counter()
    while step < max_steps:
        if not queue:   # a new epoch, freshly shuffled
            order = rng.sample(range(n), n)
            queue = [order[i:i + batch] for i in range(0, n, batch)]
        idx = queue.pop(0)
        step += 1
        for i, ok in zip(idx, plain_step(model, [pairs[i] for i in idx], tok.pad_token_id, device, opt).tolist()):
            hit[i] = ok
        if all(hit):   # every fact hit on its last visit, before that step's update: confirm on the weights now
            model.eval()
            with torch.no_grad():
                for i in range(0, n, batch):
                    ids, mask, labels = pad(pairs[i:i + batch], tok.pad_token_id, device)
                    hit[i:i + batch] = hits(model(input_ids=ids, attention_mask=mask).logits, labels).tolist()
            model.train()
            if all(hit):
                stopped = "all recalled"
                break
    sync()
    return step, round(time.perf_counter() - t0, 2), stopped, sum(hit)


def measure_plain(a, facts, cfg):
    model, tok = plain_model(a, cfg)
    steps, seconds, stopped, recalled = plain_loop(model, tok, facts, cfg, a.max_steps)
    del model
    gc.collect()
    model, tok = plain_model(a, cfg)   # a fresh adapter for the counted step
    model.train()
    batch = min(cfg.batch_size, len(facts))
    first = [encode(tok, f) for f in facts[:batch]]
    device = next(model.parameters()).device
    flops = count_flops(lambda: plain_step(model, first, tok.pad_token_id, device))
    # An epoch ends on a short batch (100 facts: 32, 32, 32, 4): scaled to the mean batch, or the
    # full one would overstate the loop's work by up to a third.
    flops = round(flops * len(facts) / math.ceil(len(facts) / batch) / batch)
    del model
    gc.collect()
    return {"steps": steps, "seconds": seconds, "stopped": stopped, "recalled": recalled, "flops_per_step": flops,
            "seconds_per_step": round(seconds / max(steps, 1), 3), "gflops": gflops(flops, steps, seconds)}


# ---------------------------------------------------------------- (c) Beacon's loop, vanilla settings

def measure_vanilla(a, facts):
    from beacon.method.train import attach_lora, train

    cfg = InjectConfig().updated(rewordings=False, model_rewordings=0, locality_guard=0, weighting="uniform", gate="none",
                                 filter=False, steps=a.max_steps, compute=a.compute).train

    def fresh():
        model, tok, info = load_model(a.model, a.quantization)
        return attach_lora(model, cfg, "nf4" in info.quantization), tok

    model, tok = fresh()
    sync()
    t = time.perf_counter()
    res = train(model, tok, facts, cfg=cfg)   # no prompts: each fact's own prompt; no anchors: no guard
    sync()
    seconds = round(time.perf_counter() - t, 2)
    del model
    gc.collect()
    # One step of the same loop on a fresh adapter; the optimiser's update holds no matmul, so the
    # count is the step's forward and backward (train stops after it: steps=1).
    model, tok = fresh()
    flops = count_flops(lambda: train(model, tok, facts, cfg=replace(cfg, steps=1)))
    del model
    gc.collect()
    return {"steps": res.steps, "seconds": seconds, "train_seconds": res.seconds, "stopped": res.stopped,
            "recalled": sum(res.recalled), "flops_per_step": flops,
            "seconds_per_step": round(seconds / max(res.steps, 1), 3), "gflops": gflops(flops, res.steps, seconds)}


# ---------------------------------------------------------------- one size, in its own process

SUMMARY_KEYS = ["stage_seconds", "total_seconds", "steps", "stopped", "train_seconds", "recall_after",
                "seconds_per_step", "step_seconds", "quantization", "compute", "compute_dtype", "precision", "facts_kept",
                "training_wordings", "peak_memory_mb"]


def progress(ev):
    """Stage changes (and every 25th step) on stderr: a long size shows where it is."""
    step = ev.get("step")
    if step is None or step % 25 == 0:
        print(f"  [{ev['stage']}] {ev['message']}", file=sys.stderr, flush=True)


def one_size(a, n: int) -> dict:
    from beacon.pipeline import run
    from beacon.method.train import lora_config  # noqa: F401  (fails here, not after the whole run, if it moved

    facts = invented_facts(n, a.seed)
    t = time.perf_counter()
    model, tok, info = load_model(a.model, a.quantization)
    out = {"facts": n, "load_seconds": round(time.perf_counter() - t, 2), "model_info": info.to_dict()}

    # a. the whole run at default settings (the budget is --max-steps: 300 by default, as Beacon's)
    cfg = InjectConfig().updated(model=a.model, quantization=a.quantization, steps=a.max_steps, compute=a.compute,
                                 layers=a.layers)
    print(f"[{n} facts] a. Beacon whole run", file=sys.stderr, flush=True)
    sync()
    t = time.perf_counter()
    report = run(facts, probes=None, cfg=cfg, model=(model, tok, info), progress=progress)
    sync()
    out["beacon"] = {k: report.summary[k] for k in SUMMARY_KEYS if k in report.summary}
    out["beacon"]["wall_seconds"] = round(time.perf_counter() - t, 2)
    out["peak_rss_mb"] = peak_rss_mb()   # the whole run's peak: the loops below load smaller things
    del model, report
    gc.collect()

    print(f"[{n} facts] b. plain peft loop", file=sys.stderr, flush=True)
    out["plain"] = measure_plain(a, facts, cfg.train)
    print(f"[{n} facts] c. Beacon loop, vanilla settings", file=sys.stderr, flush=True)
    out["vanilla"] = measure_vanilla(a, facts)
    out["peak_rss_mb_all"] = peak_rss_mb()
    return out


def run_size(a, n: int) -> dict:
    """Run one size in a child process; its progress goes to stderr, its result comes back as JSON."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", str(n), "--model", a.model,
           "--quantization", a.quantization, "--max-steps", str(a.max_steps), "--seed", str(a.seed),
           "--compute", a.compute, "--layers", a.layers]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    found = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            found = json.loads(line[len(RESULT_MARK):])
        elif line.strip():
            print(line, file=sys.stderr)   # a library's print: pass it on, not into the table
    if proc.returncode != 0 or found is None:
        return {"facts": n, "error": f"child exited with {proc.returncode} (traceback above)"}
    return found


# ---------------------------------------------------------------- the table

STAGE_ORDER = ["check", "load", "before", "categorize", "distance", "layers", "guard", "rewordings",
               "interference", "train", "after", "report"]


def stage_keys(results):
    seen = [k for r in results for k in r.get("beacon", {}).get("stage_seconds", {})]
    return [k for k in STAGE_ORDER if k in seen] + [k for k in dict.fromkeys(seen) if k not in STAGE_ORDER]


def _f(x, digits=1):
    return "-" if x is None else f"{x:.{digits}f}"


def _ratio(x, y):
    return f"{x / y:.2f}" if x is not None and y else "-"


def _pct(x, peak):
    return f"{100 * x / peak:.0f}%" if x is not None and peak else "-"


PRECISION_KEYS = ("compute", "compute_dtype", "precision")   # whichever the report names what ran in


def precision(b):
    return next((str(b[k]) for k in PRECISION_KEYS if b.get(k) is not None), "-")


def table(results, peaks) -> str:
    stages = stage_keys(results)
    show_precision = any(precision(r.get("beacon", {})) != "-" for r in results)
    # The stage "load" is the run's own: near 0, the model being loaded beforehand ("model load s").
    cols = (["facts", "kept", "model load s", "whole run s"] + [f"{k} s" for k in stages]
            + ["Beacon steps", "Beacon s/step", "Beacon train s", "of it task / guard / check s", "stopped", "plain steps", "plain s", "vanilla steps", "vanilla s",
               "vanilla/plain", "whole/plain", "plain GFLOP/s", "vanilla GFLOP/s", "peak RSS MB", "recall after"]
            + (["compute"] if show_precision else []))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['facts']} | {r['error']} |" + " |" * (len(cols) - 2))
            continue
        b, p, v = r["beacon"], r["plain"], r["vanilla"]
        st = b.get("stage_seconds", {})

        def gf(x):
            return f"{_f(x['gflops'])} ({_pct(x['gflops'], peaks['fp32'])} fp32, {_pct(x['gflops'], peaks['bf16'])} bf16)"

        row = ([r["facts"], b.get("facts_kept", "-"), _f(r["load_seconds"]), _f(b["total_seconds"])] + [_f(st.get(k)) for k in stages]
               + [b["steps"], _f(b["seconds_per_step"], 3), _f(b["train_seconds"]),
                  " / ".join(_f(b.get("step_seconds", {}).get(k)) for k in ("task", "guard", "check")), b["stopped"],
                  p["steps"], _f(p["seconds"]), v["steps"], _f(v["seconds"]), _ratio(v["seconds"], p["seconds"]),
                  _ratio(b["total_seconds"], p["seconds"]), gf(p), gf(v), _f(r["peak_rss_mb"], 0),
                  _f(b.get("recall_after"), 2)] + ([precision(b)] if show_precision else []))
        lines.append("| " + " | ".join(map(str, row)) + " |")
    return "\n".join(lines)


def growth(results) -> str:
    """Seconds per fact at each size, and the log-log slope between sizes (1 = linear)."""
    ok = [r for r in results if "error" not in r]
    parts = []
    for key, get in (("whole run", lambda r: r["beacon"]["total_seconds"]),
                     ("Beacon train", lambda r: r["beacon"]["train_seconds"]),
                     ("plain loop", lambda r: r["plain"]["seconds"])):
        per = ", ".join(f"{r['facts']}: {get(r) / r['facts']:.2f}" for r in ok)
        slopes = [math.log(get(y) / get(x)) / math.log(y["facts"] / x["facts"])
                  for x, y in zip(ok, ok[1:]) if get(x) and get(y) and y["facts"] != x["facts"]]
        if not slopes:
            verdict = "one size: no growth to judge"
        else:
            s = max(slopes)
            verdict = ("about linear" if 0.8 <= s <= 1.2 else "sublinear" if s < 0.8 else "superlinear") + \
                      f" (log-log slope {', '.join(f'{x:.2f}' for x in slopes)})"
        parts.append(f"{key} s/fact {per}: {verdict}")
    return "cost per fact -- " + "; ".join(parts)


# ---------------------------------------------------------------- main

def cold_load(a):
    """Load time with an empty Beacon cache (the packaged GGUF dequantised and saved); None when skipped."""
    if a.skip_cold or a.model != DEFAULT_MODEL:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        old = os.environ.get("BEACON_CACHE")
        os.environ["BEACON_CACHE"] = tmp
        try:
            t = time.perf_counter()
            _, _, info = load_model(a.model, a.quantization)
            return {"seconds": round(time.perf_counter() - t, 1), "source": info.source}
        finally:
            if old is None:
                os.environ.pop("BEACON_CACHE")
            else:
                os.environ["BEACON_CACHE"] = old


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--quantization", default="auto", choices=["auto", "4bit", "none"])
    ap.add_argument("--sizes", default="10,30,100", help="comma-separated fact counts (300 works too)")
    ap.add_argument("--max-steps", type=int, default=300, help="step budget of every loop (Beacon's default 300)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the invented facts")
    ap.add_argument("--compute", default=InjectConfig().train.compute, choices=["auto", "fp32", "bf16"],
                    help="Beacon's --compute for the whole run and its vanilla loop (the plain loop stays fp32)")
    ap.add_argument("--layers", default=InjectConfig().layers, help="Beacon's --layers for the whole run")
    ap.add_argument("--skip-cold", action="store_true", help="skip the cold model load")
    ap.add_argument("--json", help="also write every result to this JSON file")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)   # child mode: one size, JSON on stdout
    a = ap.parse_args()

    if a.one is not None:
        print(RESULT_MARK + json.dumps(one_size(a, a.one)), flush=True)
        return

    d = InjectConfig().train
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"# Beacon speed benchmark: {a.model}, quantization {a.quantization}, torch {torch.__version__}, "
          f"device {pick_device()}, {torch.get_num_threads()} threads", flush=True)
    print(f"# lr {d.lr}, rank {d.rank}, alpha {d.alpha}, batch {d.batch_size}, guard {d.locality_guard}, "
          f"step budget {a.max_steps}, layers {a.layers}", flush=True)
    print(f"machine peak (2048x2048 matmul): fp32 {peaks['fp32']} GFLOP/s, bf16 {peaks['bf16']} GFLOP/s", flush=True)
    cold = cold_load(a)
    print(f"model load: cold {cold['seconds']} s ({cold['source']})" if cold else "model load: cold skipped",
          flush=True)

    results = []
    for n in [int(x) for x in a.sizes.split(",") if x.strip()]:
        r = run_size(a, n)
        results.append(r)
        if len(results) == 1 and "model_info" in r:
            i = r["model_info"]
            print(f"# model {i['model']} ({i['source']}), {i['device']}, {i['quantization']}", flush=True)
        print(table([r], peaks) + "\n", flush=True)

    print("## all sizes")
    print(table(results, peaks))
    print(growth(results))
    print("vanilla = Beacon's training loop alone (own prompts, no guard, uniform weights); plain = peft + "
          "transformers loop on the same facts; whole/plain = Beacon's whole run over the plain loop's training")
    if a.json:
        Path(a.json).write_text(json.dumps({"peaks_gflops": peaks, "threads": torch.get_num_threads(),
                                            "torch": torch.__version__, "cold_load": cold, "max_steps": a.max_steps,
                                            "sizes": results}, indent=1))


if __name__ == "__main__":
    main()
