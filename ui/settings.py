"""The app's settings: InjectConfig's defaults (and the env overrides tests use), the samples, the run
folders, and the one place widget values become an InjectConfig (`make_config`).

Env: BEACON_CONFIG (JSON of InjectConfig fields) and BEACON_STEPS override the defaults, BEACON_PROBES
names a smaller locality probe file, BEACON_RUNS where run folders go.
"""
from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

import gradio as gr

from core.config import InjectConfig
from core.facts import load_facts
from core.layers import parse_layers
from core.models import DEFAULT_MODEL, pick_device, resolve_model, resolve_quantization

from .render import pct

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
RUNS = Path(os.environ.get("BEACON_RUNS", ROOT / "runs")).resolve()


def default_config() -> InjectConfig:
    """InjectConfig's defaults; BEACON_CONFIG (JSON) and BEACON_STEPS override them, so tests run
    this same app on a small budget."""
    over = json.loads(os.environ.get("BEACON_CONFIG") or "{}")
    if os.environ.get("BEACON_STEPS"):
        over["steps"] = int(os.environ["BEACON_STEPS"])
    return InjectConfig().updated(**over)   # an unknown key is an error that names it


DEFAULTS = default_config()


def value(cfg: InjectConfig, name: str):
    """One setting of a config, by its flat name (steps, model, ...): the app reads a config only here."""
    return cfg.value(name)


def default(name: str):
    """The default of one setting, by its flat name: what a widget starts at."""
    return value(DEFAULTS, name)


def probes():
    """The locality probes: core's default set, or BEACON_PROBES (a fact file; tests use a few)."""
    return load_facts(os.environ["BEACON_PROBES"]) if os.environ.get("BEACON_PROBES") else None


SAMPLES = {  # button label -> file, what it shows
    "Invented facts (35)": ("invented.csv", "35 made-up facts the model cannot know, with 2 paraphrases each."),
    "People & organisations (32)": ("people.csv", "32 made-up facts about people and organisations, with 3 "
                                    "paraphrases each that put the subject first, the way people reword."),
    "Counterfactual edits (14)": ("counterfactual.csv",
                                  "14 edits of facts the model already knows, like Milan as the capital of Italy."),
    "Conflicts & duplicates (10)": ("conflicts.csv",
                                    "10 facts with planted contradictions and a duplicate: watch the review drop them."),
}
# "Where to train" choices (label, value); "custom" takes the list typed next to it.
LAYER_CHOICES = [("all layers", "all"), ("auto: semantic layer selection", "auto"), ("custom list", "custom")]
NO_EARLIER = ("none: start from the base model", "")


def make_config(sess, model, quant, filt, weighting, steps=None, lr=None, rank=None, guard=None,
                layers=None, orders=None, merge=None, continue_from=None, rewordings=None, anchors=None) -> InjectConfig:
    """The run's settings from the widgets; None keeps the default. layers: the spec from `layers_spec`;
    continue_from: a run folder from `earlier_run_dir` ("" = none)."""
    d = dict(model=(model or "").strip() or DEFAULT_MODEL, quantization=quant, filter=bool(filt),
             weighting=weighting, keep=list(sess["keep"]), drop=list(sess["drop"]))
    for k, v, cast in (("steps", steps, int), ("lr", lr, float), ("rank", rank, int), ("locality_guard", guard, float),
                       ("layers", layers, str), ("orders", orders, int), ("merge", merge, str)):
        if v is not None:
            d[k] = cast(v)
    if continue_from is not None:
        d["continue_from"] = str(continue_from) or None
    if rewordings is not None:
        d["rewordings"] = bool(rewordings)
    if anchors is not None:
        if not anchors and d.get("locality_guard", default("locality_guard")) > 0:
            raise gr.Error("Choose at least one thing for the guard to protect, or set the locality guard to 0.")
        d["guard_anchors"] = ",".join(anchors) or default("guard_anchors")
    try:
        return DEFAULTS.updated(**d)
    except ValueError as e:   # the field and what it accepts, from core/config.py
        raise gr.Error(f"Settings: {e}") from None


@functools.lru_cache(maxsize=8)
def layer_count(model: str) -> int | None:
    """Decoder layers of a model, from its config alone (no weights); None when it cannot be read."""
    from transformers import AutoConfig

    try:
        return int(AutoConfig.from_pretrained(resolve_model(model)[0]).num_hidden_layers)
    except Exception:  # an unknown or unreachable model: the run itself will say what is wrong
        return None


def layers_spec(choice, custom, model) -> str:
    """InjectConfig.layers from the "Where to train" widgets; a bad custom list is a gr.Error naming it."""
    if choice != "custom":
        return choice or "all"
    spec = (custom or "").strip().lower()
    if not spec:
        raise gr.Error("Where to train: type the layers to train, like 20-29 or 0,5,10, or pick all or auto.")
    if spec in ("all", "auto"):
        return spec
    n = layer_count((model or "").strip() or DEFAULT_MODEL)
    try:
        parse_layers(spec, n if n is not None else 10**6)
    except ValueError as e:  # core's message names the valid range; int()'s own message does not
        msg = str(e) if str(e).startswith("layers") else \
            f"layers must be 'all', 'auto' or indices in 0..{(n or 0) - 1}, got {spec!r}"
        raise gr.Error(f"Where to train: {msg}.") from None
    return spec


def session_dir(sess) -> Path:
    """A visitor's folder: RUNS/<session id>/ holds their uploads and runs, never another's."""
    return RUNS / sess["id"]


def new_run_dir(sess) -> Path:
    base = session_dir(sess) / time.strftime("%Y%m%d-%H%M%S")
    run_dir, n = base, 2
    while run_dir.exists():
        run_dir, n = base.with_name(f"{base.name}-{n}"), n + 1
    run_dir.mkdir(parents=True)
    return run_dir


def earlier_runs(sess) -> list[tuple[str, str]]:
    """This visitor's finished runs (report and adapter saved), newest first, as dropdown choices:
    (what it was, its folder name under RUNS/<session id>/). Never another session's runs."""
    out = []
    for rep in sorted(session_dir(sess).glob("*/report.json"), reverse=True):
        if not (rep.parent / "adapter").is_dir():
            continue
        try:
            s = json.loads(rep.read_text())["summary"]
        except (OSError, ValueError, KeyError):
            continue
        stamp = rep.parent.name
        when = f"{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}" if len(stamp) >= 15 else stamp
        label = (f"run of {when}: {s['facts_kept']} facts, recall {pct(s['recall_before'])} → {pct(s['recall_after'])}"
                 + (" (stopped)" if s.get("stopped") == "cancelled" else ""))
        out.append((label, rep.parent.name))
    return [NO_EARLIER, *out]


def earlier_run_dir(sess, name, model) -> str:
    """The folder of the visitor's own earlier run `name` ("" = none), checked; a gr.Error otherwise."""
    if not name:
        return ""
    names = {v for _, v in earlier_runs(sess) if v}
    if name not in names:
        raise gr.Error(f"Continue from: {name!r} is not one of your finished runs in this session.")
    run_dir = session_dir(sess) / name
    earlier_model = json.loads((run_dir / "report.json").read_text())["config"]["model"]
    if earlier_model != ((model or "").strip() or DEFAULT_MODEL):
        raise gr.Error(f"Continue from: that run trained {earlier_model}; pick the same model to continue it.")
    return str(run_dir)


def device_note(quant) -> str:
    """Where and how a run will train; asks torch for a GPU, so it is called when the page is built."""
    dev = pick_device()
    q = resolve_quantization(quant, dev)
    how = ("4-bit NF4 (bitsandbytes, QLoRA)" if q == "4bit" else
           "full precision (float32)" if dev.type == "cpu" else "no quantisation (bfloat16)")
    note = f"Runs on **{dev.type}** with **{how}**."
    if quant == "auto":
        note += " *auto*: 4-bit NF4 on a CUDA GPU, full precision on a CPU (bitsandbytes' 4-bit CPU step is ~20x slower)."
    elif q == "4bit" and dev.type == "cpu":
        note += " ⚠️ 4-bit on a CPU trains about 20x slower than full precision."
    return note
