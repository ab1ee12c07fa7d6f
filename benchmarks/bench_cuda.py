"""GPU benchmark: Beacon 4-bit QLoRA, Beacon bf16 LoRA and a plain transformers.Trainer + peft QLoRA
loop, side by side on one CUDA GPU. Prints numbers, asserts nothing.

    python benchmarks/bench_cuda.py [--parts a,b] [--steps 20] [--layers 21] [--json PATH]

a. The default model on the invented sample (assets/invented.csv), each trained until every fact is
   recalled: Beacon's whole run (beacon.pipeline.run, default settings) in 4-bit and in bf16, and the
   Trainer loop. Time to full recall, steps, recall / paraphrase / locality / neutral-text NLL after
   (beacon.measure.evaluate, the same measures for all three), peak GPU memory from training on (the pipeline
   resets the peak where training starts; the Trainer's is reset after its load the same way).
b. A Llama-architecture model of about 1.5B parameters built from its config (random weights: speed
   and memory only; SmolLM2's tokenizer), trained for --steps steps after 2 warm-up steps on 30 invented
   facts (bench.invented_facts) in Beacon's wordings: training tokens per second (tokens that ran
   forward and backward, padding not counted, guard anchors counted), the peak GPU memory of the load
   (4-bit quantisation happens there) and of training apart.

The Trainer loop is the usual QLoRA recipe: NF4 with double quantisation and bf16 compute,
peft's prepare_model_for_kbit_training (gradient checkpointing on, its default), the paged 32-bit
AdamW, bf16 autocast, prompt tokens masked out of the labels. For a like-for-like race it takes
Beacon's LoRA config, learning rate (constant) and batch size, and stops the way Beacon does: once a
no-grad check at the end of an epoch finds every fact's target as the teacher-forced argmax.
"""
import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench import encode, hits, invented_facts, pad  # noqa: E402
from beacon.config import DEFAULT_MODEL, InjectConfig  # noqa: E402
from beacon.data.facts import load_facts  # noqa: E402
from beacon.model.models import load_model  # noqa: E402

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def fresh_gpu():
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def peak_gb() -> float:
    return round(torch.cuda.max_memory_allocated() / 2**30, 3)


class TokenCounter:
    """Tokens that run forward with grad (training passes, not checks): a hook on the decoder stack,
    padding not counted. A prefix served from a KV cache is not counted again."""

    def __init__(self, model):
        self.n = 0
        stack = model.get_base_model().model if hasattr(model, "get_base_model") else model.model
        self.handle = stack.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        if not torch.is_grad_enabled():
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs["inputs_embeds"][..., 0]
        mask = kwargs.get("attention_mask")
        self.n += int(mask[:, -ids.shape[1]:].sum()) if mask is not None else ids.numel()

    def close(self):
        self.handle.remove()


def attempt(part, name, fn) -> dict:
    """{"method": name, **fn()}, or the error in its place: one method failing must not lose the others' numbers."""
    print(f"{part}. {name}", file=sys.stderr, flush=True)
    try:
        row = {"method": name, **fn()}
    except Exception as e:
        import traceback
        traceback.print_exc()
        row = {"method": name, "error": repr(e)}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


# ---------------------------------------------------------------- the plain Trainer + peft QLoRA loop

def trainer_qlora(path, facts, cfg, steps, warm=0, stop_on_recall=True, prompts=None):
    """The usual QLoRA recipe with transformers.Trainer. Returns (peft model, tokenizer, stats).
    With stop_on_recall, a no-grad check at each epoch's end stops once every fact's own prompt is recalled
    (its seconds included). Timing starts after `warm` steps; tokens are counted over the same steps."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from beacon.method.train import lora_config

    model, tok, info = load_model(path, "4bit")
    model = prepare_model_for_kbit_training(model)           # gradient checkpointing on: the recipe's default
    torch.manual_seed(cfg.seed)
    model = get_peft_model(model, lora_config(model, cfg))
    load_peak = peak_gb()
    torch.cuda.reset_peak_memory_stats()   # from here on: training's own peak
    rows = [encode(tok, type(f)(f.id, p, f.target)) for f, ps in zip(facts, prompts or [[f.prompt] for f in facts])
            for p in ps]
    batch = min(cfg.batch_size, len(rows))
    per_epoch = math.ceil(len(rows) / batch)
    checks = [encode(tok, f) for f in facts]
    counter = TokenCounter(model)
    clock = {}

    def collate(items):   # bench.pad: prompt tokens and padding masked out of the labels
        return dict(zip(("input_ids", "attention_mask", "labels"), pad(items, tok.pad_token_id, "cpu")))

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == warm:
                torch.cuda.synchronize()
                clock["t0"], clock["tokens0"] = time.perf_counter(), counter.n
            if stop_on_recall and state.global_step % per_epoch == 0:
                model.eval()
                dev = next(model.parameters()).device
                with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
                    ok = all(bool(hits(model(input_ids=i, attention_mask=m).logits, lab).all())
                             for i, m, lab in (pad(checks[k:k + batch], tok.pad_token_id, dev)
                                               for k in range(0, len(checks), batch)))
                model.train()
                if ok:
                    clock["recalled"] = state.global_step
                    control.should_training_stop = True

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=batch, learning_rate=cfg.lr,
                                 lr_scheduler_type="constant", weight_decay=0.0, max_steps=steps, bf16=True,
                                 optim="paged_adamw_32bit", logging_strategy="no", save_strategy="no",
                                 report_to=[], remove_unused_columns=False, seed=cfg.seed, disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate,
                          callbacks=[Watch()])
        if not warm:
            torch.cuda.synchronize()
            clock["t0"], clock["tokens0"] = time.perf_counter(), 0
        trainer.train()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - clock["t0"]
    train_peak = peak_gb()
    counter.close()
    model.eval()
    n_steps = trainer.state.global_step
    return model, tok, {"steps": n_steps, "seconds": round(seconds, 2),
                        "stopped": "all recalled" if "recalled" in clock else "budget",
                        "tokens_per_second": round((counter.n - clock["tokens0"]) / seconds, 1),
                        "quantization": info.quantization, "load_peak_gb": load_peak, "peak_gb": train_peak}


# ---------------------------------------------------------------- a. the default model on the invented sample

def part_a(a) -> list[dict]:
    from beacon.measure.evaluate import evaluate_facts
    from beacon.pipeline import default_probe_sets, neutral_text, run

    facts, probes = load_facts(ASSETS / "invented.csv"), default_probe_sets()
    base_cfg = InjectConfig().updated(model=a.model, steps=a.max_steps)

    def beacon(quant):
        fresh_gpu()
        s = run(facts, None, base_cfg.updated(quantization=quant), model=load_model(a.model, quant)).summary
        return {"quantization": s["quantization"], "whole_seconds": s["total_seconds"],
                "train_seconds": s["train_seconds"], "steps": s["steps"], "stopped": s["stopped"],
                "recall": s["recall_after"], "paraphrase": s["paraphrase_after"],
                "locality": s["locality_after"], "locality_general": s.get("locality_general_after"),
                "locality_before": s["locality_before"], "locality_general_before": s.get("locality_general_before"),
                "neutral_nll_ratio": s["neutral_nll_ratio"], "stage_seconds": s["stage_seconds"], "peak_gb": peak_gb()}

    def trainer():
        fresh_gpu()
        base, tok, _ = load_model(a.model, "4bit")
        nt = neutral_text()
        before = evaluate_facts(base, tok, facts, probes, forms=False, neutral_text=nt)["summary"]
        del base
        fresh_gpu()
        model, tok, st = trainer_qlora(a.model, facts, base_cfg.train, a.max_steps)
        after = evaluate_facts(model, tok, facts, probes, forms=False, neutral_text=nt)["summary"]
        loc = after["locality"]
        return {**st, "train_seconds": st["seconds"], "recall": after["recall"], "paraphrase": after["paraphrase"],
                "locality": loc.get("probes"), "locality_general": loc.get("general"),
                "locality_before": before["locality"].get("probes"),
                "locality_general_before": before["locality"].get("general"),
                "neutral_nll_ratio": round(after["neutral_nll"] / before["neutral_nll"], 3)}

    return [attempt("a", "Beacon 4-bit QLoRA", lambda: beacon("4bit")),
            attempt("a", "Beacon bf16 LoRA", lambda: beacon("none")),
            attempt("a", "Trainer + peft QLoRA", trainer)]


# ---------------------------------------------------------------- b. a 1.5B model from its config

def build_big(a, tok_dir, out_dir) -> int:
    """A Llama of SmolLM2-1.7B's width with --layers decoder layers, random bf16 weights, saved with
    SmolLM2's tokenizer; returns its parameter count."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tok_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=2048, intermediate_size=8192, num_hidden_layers=a.layers,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    del model
    return n


def beacon_speed(path, facts, prompts, quant, steps, warm, upcast=True) -> dict:
    from beacon.method.anchors import read_anchors
    from beacon.method.train import attach_lora, train

    fresh_gpu()
    cfg = InjectConfig().updated(steps=warm + steps, early_stop=False).train
    model, tok, info = load_model(path, quant)
    model = attach_lora(model, cfg, "nf4" in info.quantization, upcast=upcast)
    load_peak = peak_gb()
    torch.cuda.reset_peak_memory_stats()
    counter = TokenCounter(model)
    clock = {}

    def on_step(rec):
        if rec["step"] in (warm, warm + steps):
            torch.cuda.synchronize()
            clock[rec["step"]] = (time.perf_counter(), counter.n)

    res = train(model, tok, facts, cfg=cfg, anchors=read_anchors(), on_step=on_step, prompts=prompts)
    counter.close()
    (t0, n0), (t1, n1) = clock[warm], clock[warm + steps]
    del model
    return {"tokens_per_second": round((n1 - n0) / (t1 - t0), 1), "seconds_per_step": round((t1 - t0) / steps, 4),
            "steps": res.steps, "quantization": info.quantization, "load_peak_gb": load_peak, "peak_gb": peak_gb()}


def part_b(a, tok_dir) -> dict:
    from beacon.method.rewordings import training_prompts

    with tempfile.TemporaryDirectory() as big:
        n_params = build_big(a, tok_dir, big)
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(big)
        facts = invented_facts(30)
        prompts = [training_prompts(f, tok) for f in facts]
        cfg = InjectConfig().train
        rows = {"parameters": n_params, "facts": len(facts), "wordings": sum(map(len, prompts)),
                "steps": a.steps, "warm": 2, "runs": []}
        runs = [("Beacon 4-bit QLoRA", lambda: beacon_speed(big, facts, prompts, "4bit", a.steps, 2)),
                ("Beacon 4-bit QLoRA, no fp32 upcast", lambda: beacon_speed(big, facts, prompts, "4bit", a.steps, 2,
                                                                            upcast=False)),
                ("Beacon bf16 LoRA", lambda: beacon_speed(big, facts, prompts, "none", a.steps, 2)),
                ("Trainer + peft QLoRA", lambda: trainer_speed(big, facts, prompts, cfg, a.steps))]
        rows["runs"] = [attempt("b", name, fn) for name, fn in runs]
    return rows


def trainer_speed(path, facts, prompts, cfg, steps) -> dict:
    fresh_gpu()
    model, _, st = trainer_qlora(path, facts, cfg, steps + 2, warm=2, stop_on_recall=False, prompts=prompts)
    del model
    return {"tokens_per_second": st["tokens_per_second"], "seconds_per_step": round(st["seconds"] / steps, 4),
            "steps": st["steps"], "quantization": st["quantization"] + ", gradient checkpointing",
            "load_peak_gb": st["load_peak_gb"], "peak_gb": st["peak_gb"]}


# ---------------------------------------------------------------- tables

def _v(x, digits=2):
    return "-" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def table_a(rows) -> str:
    cols = ["method", "whole run s", "train s", "steps", "stopped", "recall", "paraphrase", "locality before",
            "locality", "locality (general) before", "locality (general)", "neutral NLL ratio", "peak GPU GB"]
    keys = ["method", "whole_seconds", "train_seconds", "steps", "stopped", "recall", "paraphrase", "locality_before",
            "locality", "locality_general_before", "locality_general", "neutral_nll_ratio", "peak_gb"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(r["error"] if k == "whole_seconds" and "error" in r else _v(r.get(k))
                                       for k in keys) + " |")
    return "\n".join(lines)


def table_b(b) -> str:
    runs = b["runs"]
    ref = next((r for r in runs if r["method"].startswith("Trainer") and "error" not in r), None)
    bf16 = next((r for r in runs if r["method"] == "Beacon bf16 LoRA" and "error" not in r), None)
    lines = ["| method | tokens/s | s/step | x Trainer tokens/s | load peak GB | training peak GB | "
             "x bf16 LoRA memory |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['error']} | | | | | |")
            continue
        x = f"{r['tokens_per_second'] / ref['tokens_per_second']:.2f}" if ref else "-"
        m = f"{r['peak_gb'] / bf16['peak_gb']:.2f}" if bf16 else "-"
        lines.append(f"| {r['method']} | {r['tokens_per_second']:.0f} | {r['seconds_per_step']:.3f} | {x} | "
                     f"{r['load_peak_gb']:.2f} | {r['peak_gb']:.2f} | {m} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="a,b")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--max-steps", type=int, default=300, help="step budget in part a (Beacon's default)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps in part b")
    ap.add_argument("--layers", type=int, default=21, help="decoder layers of part b's model (21: about 1.5B)")
    ap.add_argument("--tokenizer", help="folder with the tokenizer for part b (default: the default model's)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_cuda.py needs a CUDA GPU (benchmarks/bench.py measures the CPU)")
    import transformers
    print(f"# Beacon GPU benchmark: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}", flush=True)
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    parts = a.parts.split(",")
    if "b" in parts:
        tok_dir = a.tokenizer
        if tok_dir is None:
            from beacon.model.models import resolve_model
            tok_dir = resolve_model(DEFAULT_MODEL)[0]
        results["b"] = part_b(a, tok_dir)
        print(f"\n## b. {results['b']['parameters'] / 1e9:.2f}B-parameter Llama from a config, "
              f"{results['b']['facts']} facts in {results['b']['wordings']} wordings, {a.steps} timed steps")
        print(table_b(results["b"]), flush=True)
    if "a" in parts:
        results["a"] = part_a(a)
        print(f"\n## a. {a.model} on assets/invented.csv, each until every fact is recalled")
        print(table_a(results["a"]), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
