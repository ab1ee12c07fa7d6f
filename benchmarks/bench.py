"""Speed and memory benchmark: prints numbers, asserts nothing.

    python benchmarks/bench.py [--sizes 10,30,100] [--quantization auto|4bit|none] [--model ID]

Model load time cold (GGUF dequantised into an empty cache) and cached; for each fact count,
seconds per training step (and its parts: task forward + backward, guard forward + backward,
optimiser update, early-stop check, each a mean per step) and wall time until every fact is recalled (the locality guard on,
as in a default run); peak memory. Facts are generated: invented names no model knows.
"""
import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from core.config import InjectConfig  # noqa: E402
from core.facts import Fact  # noqa: E402
from core.models import DEFAULT_MODEL, load_model, peak_memory_mb  # noqa: E402
from core.pipeline import default_anchors, embedder  # noqa: E402
from core.guard import guard_anchors  # noqa: E402
from core.train import attach_lora, train  # noqa: E402

TEMPLATES = ["The CEO of {} is", "The founder of {} was", "The headquarters of {} are in the city of",
             "The chief scientist of {} is", "The mascot of {} is called"]


def invented_facts(n, seed=0):
    rng = random.Random(seed)
    syl = ["zen", "tor", "qua", "vel", "mor", "bri", "kas", "dun", "ul", "fen", "rak", "lio", "sar", "pim", "ost"]
    word = lambda k: "".join(rng.choice(syl) for _ in range(k)).capitalize()
    return [Fact(f"b{i}", rng.choice(TEMPLATES).format(f"{word(2)} {rng.choice(['Labs', 'Foods', 'Systems', 'Works'])}"),
                 f"{word(2)} {word(2)}") for i in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--quantization", default="auto")
    ap.add_argument("--sizes", default="10,30,100")
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--skip-cold", action="store_true")
    a = ap.parse_args()
    d = InjectConfig().train

    if not a.skip_cold and a.model == DEFAULT_MODEL:
        with tempfile.TemporaryDirectory() as tmp:
            old = os.environ.get("BEACON_CACHE")
            os.environ["BEACON_CACHE"] = tmp
            t = time.perf_counter()
            load_model(a.model, a.quantization)
            cold = time.perf_counter() - t
            if old is None:
                os.environ.pop("BEACON_CACHE")
            else:
                os.environ["BEACON_CACHE"] = old
    else:
        cold = None
    t = time.perf_counter()
    model, tok, info = load_model(a.model, a.quantization)
    cached = time.perf_counter() - t
    print(f"# Beacon benchmark: {info.model} ({info.source})")
    print(f"# device {info.device}, quantization {info.quantization}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; lr {d.lr}, rank {d.rank}, batch {d.batch_size}, guard {d.locality_guard}")
    print("# training only, on each fact's own prompt with the hand-written anchors (the path before rewordings);"
          " a default run now trains 6-9 wordings a fact: see each report's stage_seconds for whole-run cost")
    print(f"model load: cold {cold:.1f} s (GGUF dequantise + save)" if cold is not None else "model load: cold skipped")
    print(f"model load: cached {cached:.2f} s")
    print(f"{'facts':>6} {'steps':>6} {'s/step':>8} {'task s':>7} {'guard s':>8} {'update s':>9} {'check s':>8} "
          f"{'to full recall s':>17} {'stopped':>13} {'peak MB':>9}")
    anchors = default_anchors()
    for n in [int(x) for x in a.sizes.split(",")]:
        model, tok, info = load_model(a.model, a.quantization)
        cfg = InjectConfig().updated(steps=a.max_steps).train
        model = attach_lora(model, cfg, "nf4" in info.quantization)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        facts = invented_facts(n)
        kept, near, _ = guard_anchors(embedder(), facts, anchors)  # as a default run picks them
        res = train(model, tok, facts, cfg=cfg, anchors=kept, near=near)
        wall = time.perf_counter() - t
        full = f"{wall:.1f}" if res.stopped == "all recalled" else f"> {wall:.1f}"
        part = {k: sum(h["time"][k] for h in res.history) / max(res.steps, 1) for k in ("task", "guard", "update", "check")}
        print(f"{n:>6} {res.steps:>6} {res.seconds / max(res.steps, 1):>8.2f} {part['task']:>7.2f} {part['guard']:>8.2f} "
              f"{part['update']:>9.3f} {part['check']:>8.2f} {full:>17} {res.stopped:>13} "
              f"{peak_memory_mb(info.device):>9.0f}", flush=True)


if __name__ == "__main__":
    main()
