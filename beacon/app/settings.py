"""The app's settings: InjectConfig's defaults (and the env overrides tests use), the samples, the run
folders, and the one place widget values become an InjectConfig (`make_config`).

Env: BEACON_CONFIG (JSON of InjectConfig fields) and BEACON_STEPS override the defaults, BEACON_PROBES
names a smaller locality probe file, BEACON_RUNS where run folders go. The limits of a public server
(docs/public.md): BEACON_MAX_FACTS (beacon/data/facts.py), BEACON_MAX_UPLOAD_MB, BEACON_MAX_STEPS,
BEACON_QUEUE_SIZE, BEACON_MODEL_ALLOWLIST (on by itself on a Space: SPACE_ID), BEACON_RUN_TTL_HOURS,
BEACON_DISK_BUDGET_MB.
"""
from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

import gradio as gr

from beacon.config import InjectConfig, guard_sources, idle_settings
from beacon.data.facts import MAX_BYTES, MAX_FACTS, load_facts
from beacon.method.layers import parse_layers
from beacon.model.models import DEFAULT_MODEL, pick_device, resolve_model, resolve_quantization

from beacon.app.render import pct

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "assets"
RUNS = Path(os.environ.get("BEACON_RUNS", ROOT / "runs")).resolve()


def _env_number(name: str, default, cast=int):
    """A limit from the environment: a positive number, or the default when unset; anything else is an
    error that names the variable (a typo must not lift a limit)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        v = cast(raw)
    except ValueError:
        v = 0
    if not v > 0:
        raise ValueError(f"{name}={raw!r}: must be a number above 0")
    return v


# The limits an operator sets and a visitor sees on tab 1, before any work starts.
MAX_UPLOAD_MB = _env_number("BEACON_MAX_UPLOAD_MB", MAX_BYTES / 2**20, float)  # the loader reads 5 MB at most
MAX_STEPS = _env_number("BEACON_MAX_STEPS", 300)
QUEUE_SIZE = _env_number("BEACON_QUEUE_SIZE", 16)         # model jobs waiting, and Gradio's queue for the rest
RUN_TTL_HOURS = _env_number("BEACON_RUN_TTL_HOURS", 24.0, float)
DISK_BUDGET_MB = _env_number("BEACON_DISK_BUDGET_MB", 5000.0, float)
ON_SPACE = bool(os.environ.get("SPACE_ID"))
SMALL_MODELS = (DEFAULT_MODEL, "HuggingFaceTB/SmolLM2-360M-Instruct", "Qwen/Qwen2.5-0.5B-Instruct")


def default_config() -> InjectConfig:
    """InjectConfig's defaults; BEACON_CONFIG (JSON) and BEACON_STEPS override them, so tests run
    this same app on a small budget."""
    over = json.loads(os.environ.get("BEACON_CONFIG") or "{}")
    if os.environ.get("BEACON_STEPS"):
        over["steps"] = int(os.environ["BEACON_STEPS"])
    return InjectConfig().updated(**over)   # an unknown key is an error that names it


DEFAULTS = default_config()


def model_allowlist() -> tuple[str, ...] | None:
    """The models a visitor may use: None (any id or path) locally; on a Space (SPACE_ID) or whenever
    BEACON_MODEL_ALLOWLIST (comma-separated ids) is set, that list, or SMALL_MODELS, plus the configured
    default model."""
    raw = os.environ.get("BEACON_MODEL_ALLOWLIST", "").strip()
    if not raw and not ON_SPACE:
        return None
    ids = [m.strip() for m in raw.split(",") if m.strip()] or list(SMALL_MODELS)
    return tuple(dict.fromkeys([DEFAULTS.value("model"), *ids]))


def allowed_model(model) -> str:
    """The model id a visitor asked for, or a gr.Error that is the same for every id not on the list:
    it never says whether a path exists on this server."""
    model = (model or "").strip() or DEFAULTS.value("model")
    allow = model_allowlist()
    if allow is not None and model not in allow:
        raise gr.Error("Model: this server runs only these models: " + ", ".join(allow) + ".")
    return model


def limits_note() -> str:
    """The limits, as tab 1 shows them."""
    allow = model_allowlist()
    return (f"Limits on this server: at most **{MAX_FACTS:,} facts** a run, uploads up to **{MAX_UPLOAD_MB:g} MB**, "
            f"a step budget of at most **{MAX_STEPS}**, **one running job** (check, training or export) per "
            f"visitor, at most **{QUEUE_SIZE}** jobs waiting; runs are deleted after **{RUN_TTL_HOURS:g} h**."
            + (f" Models: {', '.join(allow)}." if allow is not None else ""))


def value(cfg: InjectConfig, name: str):
    """One setting of a config, by its flat name (steps, model, ...): the app reads a config only here."""
    return cfg.value(name)


def default(name: str):
    """The default of one setting, by its flat name: what a widget starts at."""
    return value(DEFAULTS, name)


def probes():
    """The locality probes: the pipeline's default set, or BEACON_PROBES (a fact file; tests use a few)."""
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
                layers=None, orders=None, merge=None, continue_from=None, rewordings=None, anchors=None,
                gate=None) -> InjectConfig:
    """The run's settings from the widgets; None keeps the default. layers: the spec from `layers_spec`;
    continue_from: a run folder from `earlier_run_dir` ("" = none)."""
    d = dict(model=allowed_model(model), quantization=quant, filter=bool(filt),
             weighting=weighting, keep=list(sess["keep"]), drop=list(sess["drop"]))
    if steps is not None and int(steps) > MAX_STEPS:
        raise gr.Error(f"Step budget: at most {MAX_STEPS} steps on this server (BEACON_MAX_STEPS), got {int(steps)}.")
    if orders is not None and "merge" in greyed(orders=int(orders)):
        merge = None   # greyed with one order: it merges nothing
    for k, v, cast in (("steps", steps, int), ("lr", lr, float), ("rank", rank, int), ("locality_guard", guard, float),
                       ("layers", layers, str), ("orders", orders, int), ("merge", merge, str)):
        if v is not None:
            d[k] = cast(v)
    if steps is None and default("steps") > MAX_STEPS:
        d["steps"] = MAX_STEPS   # the operator's limit holds for the default budget too
    if continue_from is not None:
        d["continue_from"] = str(continue_from) or None
    if rewordings is not None:
        d["rewordings"] = bool(rewordings)
    if gate is not None:
        d["gate"] = str(gate)
    # greyed behind a gate or with the guard off: the guard's sources are not read
    if anchors is not None and anchors_used(d.get("gate"), d.get("locality_guard")):
        if not anchors:
            raise gr.Error("Choose at least one thing for the guard to protect, or set the locality guard to 0.")
        d["guard_anchors"] = ",".join(anchors)
    try:
        return DEFAULTS.updated(**d)
    except ValueError as e:   # the field and what it accepts, from beacon/config.py
        raise gr.Error(f"Settings: {e}") from None


def greyed(**values) -> set[str]:
    """The settings idle under these widget values (None: the default) and the defaults of the rest: the
    widgets the app greys, by the config's own rules (beacon.config.idle_settings)."""
    return set(idle_settings(DEFAULTS.variant(**{k: v for k, v in values.items() if v is not None})))


def anchors_used(gate, guard) -> bool:
    """Whether the guard's sources and a visitor's anchors file are read: on every token with the guard on."""
    return "guard_anchors" not in greyed(gate=gate or None, locality_guard=None if guard is None else float(guard))


def guard_widgets(gate, guard):
    """The guard's sources and anchors-file widgets for these settings: greyed where they are not read, the
    sources then back at their defaults (a greyed widget must not hold a choice that a run would refuse)."""
    on = anchors_used(gate, guard)
    sources = gr.CheckboxGroup(interactive=True) if on else \
        gr.CheckboxGroup(value=guard_sources(default("guard_anchors")), interactive=False)
    return sources, gr.File(interactive=on)


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
    n = layer_count(allowed_model(model))   # a model off the list is refused before its config is read
    try:
        parse_layers(spec, n if n is not None else 10**6)
    except ValueError as e:  # the pipeline's message names the valid range; int()'s own message does not
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
    if earlier_model != ((model or "").strip() or DEFAULTS.value("model")):
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
