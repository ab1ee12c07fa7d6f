"""Beacon's web app: facts in -> review -> train -> results, over the pipeline in core/.

UI wiring only. Each visitor has their own gr.State; each run writes to runs/<session>/<time>/.
Launch: `python app.py [--share] [--port N] [--host H]`. Tests launch the same app on a small
budget: BEACON_STEPS or BEACON_CONFIG (JSON of InjectConfig fields), BEACON_PROBES (a smaller
locality probe file) and BEACON_RUNS (where run folders go).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import html
import io
import json
import logging
import os
import queue
import shutil
import threading
import time
import uuid
from pathlib import Path

import gradio as gr
import pandas as pd

from core import pipeline
from core.ask import ask
from core.config import InjectConfig, gpu_seconds
from core.facts import FactsError, facts_from_rows, load_facts, save_facts
from core.layers import parse_layers
from core.models import DEFAULT_MODEL, QUANTIZATIONS, ModelError, pick_device, resolve_model, resolve_quantization

log = logging.getLogger("beacon.app")
ROOT = Path(__file__).resolve().parent
ASSETS = ROOT / "assets"
RUNS = Path(os.environ.get("BEACON_RUNS", ROOT / "runs")).resolve()

try:  # Hugging Face ZeroGPU: a GPU is attached only while a decorated call runs
    import spaces

    GPU = spaces.GPU
except ImportError:
    def GPU(fn=None, **_):
        return fn if fn is not None else (lambda f: f)

ZERO_GPU = os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")


def default_config() -> InjectConfig:
    """InjectConfig's defaults; BEACON_CONFIG (JSON) and BEACON_STEPS override them, so tests run
    this same app on a small budget."""
    over = json.loads(os.environ.get("BEACON_CONFIG") or "{}")
    if os.environ.get("BEACON_STEPS"):
        over["steps"] = int(os.environ["BEACON_STEPS"])
    return InjectConfig.from_dict({**InjectConfig().to_dict(), **over})


DEFAULTS = default_config()


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
FACT_COLUMNS = ["id", "prompt", "target", "subject", "relation", "paraphrases"]
REVIEW_COLUMNS = ["keep", "id", "prompt", "target", "status", "category", "distance", "weight", "answer before"]
RESULT_COLUMNS = ["id", "prompt", "target", "trained", "before", "after", "answer after", "paraphrases after"]
STAGES = [("check", "check"), ("load", "load model"), ("before", "recall before"), ("categorize", "known / update / new"),
          ("distance", "semantic distance"), ("interference", "interference"), ("train", "train"),
          ("after", "recall after"), ("plots", "plots")]
CHECK_STAGES = STAGES[:5]


def train_stages(cfg: InjectConfig) -> list[tuple[str, str]]:
    """The run's checklist: a layer-selection stage with layers=auto, K orders and a merge in the label."""
    out = []
    for key, label in STAGES:
        if key == "interference" and cfg.layers == "auto":
            out.append(("layers", "choose layers"))
        if key == "train" and cfg.orders > 1 and not cfg.continue_from:
            label = f"train {cfg.orders} orders + merge"
        out.append((key, label))
    return out
PLOT_CAPTIONS = {"interference": "Interference: how a step on one fact moves the others",
                 "distance_vs_learned": "Semantic distance before training vs what training gained",
                 "drift": "Drift: semantic distance of each fact during training",
                 "recall": "Target log-probability before and after, fact by fact",
                 "learning_curves": "Learning curves: loss, recall and per-fact loss",
                 "layers": "Layer selection: where along the layers the answers form, and the layers trained",
                 "merge": "Data orders: recall of the facts seen first vs last in each order, per run and merged"}
# "Where to train" choices (label, value); "custom" takes the list typed next to it.
LAYER_CHOICES = [("all layers", "all"), ("auto: semantic layer selection", "auto"), ("custom list", "custom")]
NO_EARLIER = ("none: start from the base model", "")

# One model job (check or train) at a time, across visitors. Gradio's queue orders the events
# (concurrency_limit=1); this lock also covers a run whose tab was closed and is still finishing.
_MODEL_LOCK = threading.Lock()
# Stop flags by Gradio session, for demo.unload, which cannot see gr.State.
_ACTIVE: dict[str, threading.Event] = {}


def new_session() -> dict:
    return {"id": uuid.uuid4().hex[:12], "meta": {}, "upload": None, "keep": [], "drop": [],
            "run_dir": None, "report": None, "stop": None}


# ---------------------------------------------------------------- small helpers

def facts_frame(facts) -> pd.DataFrame:
    return pd.DataFrame([{"id": f.id, "prompt": f.prompt, "target": f.target, "subject": f.subject or "",
                          "relation": f.relation or "", "paraphrases": " | ".join(f.paraphrases)} for f in facts],
                        columns=FACT_COLUMNS)


def table_facts(df, sess):
    """The facts in the table; the metadata of a loaded file is kept by id (the table has no column for it)."""
    rows = [] if df is None else df.fillna("").to_dict("records")
    try:
        facts = facts_from_rows(rows, source="facts table")
    except FactsError as e:
        raise gr.Error(str(e)) from None
    for f in facts:
        f.meta = f.meta or dict(sess["meta"].get(f.id, {}))
    return facts


def make_config(sess, model, quant, filt, weighting, steps=None, lr=None, rank=None, guard=None,
                layers=None, orders=None, merge=None, continue_from=None, rewordings=None, anchors=None) -> InjectConfig:
    """The run's settings from the widgets; None keeps the default. layers: the spec from `layers_spec`;
    continue_from: a run folder from `earlier_run_dir` ("" = none)."""
    d = DEFAULTS.to_dict()
    d.update(model=(model or "").strip() or DEFAULT_MODEL, quantization=quant, filter=bool(filt),
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
        if not anchors and d["locality_guard"] > 0:
            raise gr.Error("Choose at least one thing for the guard to protect, or set the locality guard to 0.")
        d["guard_anchors"] = ",".join(anchors) or d["guard_anchors"]
    return InjectConfig.from_dict(d)


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


def earlier_runs(sess) -> list[tuple[str, str]]:
    """This visitor's finished runs (report and adapter saved), newest first, as dropdown choices:
    (what it was, its folder name under RUNS/<session id>/). Never another session's runs."""
    out = []
    for rep in sorted((RUNS / sess["id"]).glob("*/report.json"), reverse=True):
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
    run_dir = RUNS / sess["id"] / name
    earlier_model = json.loads((run_dir / "report.json").read_text())["config"]["model"]
    if earlier_model != ((model or "").strip() or DEFAULT_MODEL):
        raise gr.Error(f"Continue from: that run trained {earlier_model}; pick the same model to continue it.")
    return str(run_dir)


def device_note(quant) -> str:
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


def pct(x) -> str:
    return "–" if x is None else f"{x:.0%}"


def seconds(s) -> str:
    s = float(s or 0)
    return f"{s:.0f} s" if s < 90 else f"{s // 60:.0f} min {s % 60:.0f} s"


def status_html(stages, seen, current, frac, message, elapsed=None, note="") -> str:
    """Stage checklist (✓ done, ▶ now, ○ to come), a progress bar and the latest message."""
    keys = [k for k, _ in stages]
    now = keys.index(current) if current in keys else (len(keys) if current == "done" else -1)
    parts = []
    for i, (k, label) in enumerate(stages):
        if i == now:
            parts.append(f"<b>▶ {label}</b>")
        else:  # stages before the current one, or reused from the check, are done
            parts.append(f"<span class='done'>✓ {label}</span>" if i < now or k in seen else f"<span>○ {label}</span>")
    when = f" · {seconds(elapsed)}" if elapsed is not None else ""
    return (f"<div class='beacon-status'><div class='stages'>{' · '.join(parts)}</div>"
            f"<div class='bar'><div style='width:{100 * min(max(frac, 0), 1):.0f}%'></div></div>"
            f"<div class='msg'>{html.escape(message)}{when}</div>{note}</div>")


def review_frame(analysis, cfg) -> tuple[pd.DataFrame, str]:
    rows = pipeline.review_rows(analysis, cfg)
    out = []
    for r in rows:
        status = ("✓ kept by you" if r["id"] in cfg.keep else "✓ kept") if r["kept"] else f"✗ {r['reason']}"
        out.append({"keep": bool(r["kept"]), "id": r["id"], "prompt": r["prompt"], "target": r["target"],
                    "status": status, "category": r["category"], "distance": round(r["semantic_distance"], 3),
                    "weight": "" if r["weight"] is None else f"{r['weight']:.2f}",
                    "answer before": ("✓ " if r["recall_before"] else "") + r["answer_before"]})
    kept = sum(r["kept"] for r in rows)
    merged = analysis.get("merged") or {}
    note = f"**{kept} of {len(rows)} facts will be trained**, {len(rows) - kept} dropped."
    if merged:
        note += " Merged duplicates, not listed: " + ", ".join(f"{a} (same as {b})" for a, b in merged.items()) + "."
    return pd.DataFrame(out, columns=REVIEW_COLUMNS), note


def choices_from_ticks(analysis, cfg, df) -> tuple[list[str], list[str]]:
    """keep/drop lists that turn the checks' own decisions into the ticked set."""
    ticked = {str(r["id"]) for r in df.to_dict("records") if r.get("keep") in (True, "true", "True", 1)}
    natural = {r["id"] for r in pipeline.review_rows(
        analysis, InjectConfig.from_dict({**cfg.to_dict(), "keep": [], "drop": []})) if r["kept"]}
    ids = {f.id for f in analysis["unique"]}
    return sorted((ticked & ids) - natural), sorted(natural - ticked)


def curves(history):
    """Loss and recall so far, as LinePlot updates; None (an empty plot) until two steps make a line. The
    x axis spans at least 10 steps: integer ticks, not 1, 1.5, 2 printed as 1, 2, 2."""
    if len(history) < 2:
        return None, None
    names = (("loss", "total, with the locality guard"), ("task", "facts only"))
    if all(abs(h["loss"] - h["task"]) < 1e-6 for h in history):  # no guard: one line, not two on top of each other
        names = (("task", "facts"),)
    loss = pd.DataFrame([{"step": h["step"], "value": float(h[k]), "series": name}
                         for h in history for k, name in names])
    recall = pd.DataFrame([{"step": h["step"], "recall": float(h["recall"])} for h in history])
    x_lim = [1, max(10, history[-1]["step"])]
    return gr.LinePlot(loss, x_lim=x_lim), gr.LinePlot(recall, x_lim=x_lim)


def span(layers) -> str:
    """[20, 21, ..., 29] -> "20–29"; gaps as a list."""
    layers = sorted(layers)
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}–{layers[-1]}"
    return ", ".join(map(str, layers))


def setup_md(report: dict) -> list[str]:
    """Markdown lines for the advanced settings the run used: layers, merged data orders, earlier facts."""
    lines = []
    chosen, sel = report.get("chosen_layers"), report.get("layers")
    total = len(sel["observed"]) if sel and sel.get("observed") else layer_count(report["config"]["model"])
    of = f" ({len(chosen)} of {total})" if chosen and total else ""
    if sel and chosen:
        lines.append(f"- **Layers: auto** (semantic layer selection) → trained layers **{span(chosen)}**{of}, the top "
                     f"layers that hold {sel.get('coverage', 0.8):.0%} of the estimated gain (see *Layer selection* "
                     "below); the others stayed frozen")
    elif chosen:
        lines.append(f"- **Layers**: trained **{span(chosen)}**{of}, your list; the others stayed frozen")
    merge = report.get("merge")
    if merge:
        lines += ["", f"#### {merge['orders']} data orders, merged by *{merge['how']}*",
                  "Each run trained the same facts in its own order; facts early in an order are learned first and "
                  "can be overwritten later. Recall of the first and last third of each order:", "",
                  "| | steps | recall | first third | last third | merged: first third | merged: last third |",
                  "|---|---|---|---|---|---|---|"]
        m = merge["merged"]
        by_order = m.get("by_run_order") or []
        for r in merge["runs"]:
            el = by_order[r["run"]] if r["run"] < len(by_order) else {}
            lines.append(f"| run {r['run']} | {r['steps']} | {pct(r['recall'])} | {pct(r['early_recall'])} "
                         f"| {pct(r['late_recall'])} | {pct(el.get('early_recall'))} | {pct(el.get('late_recall'))} |")
        lines += [f"| **merged** | | **{pct(m['recall'])}** | | | | |", "",
                  f"The merged adapter has rank {merge['svd_rank']} (relative error of that truncation: "
                  f"{merge['svd_relative_error']:.1%}); the *after* column above is the merged model.", ""]
    earlier = report.get("earlier_facts")
    if earlier:
        lost = earlier.get("lost") or []
        lines += ["", f"#### Earlier facts (continued from run `{Path(earlier['from']).name}`)",
                  f"The {len(earlier['ids'])} facts that run trained: recall **{pct(earlier['recall_before'])} → "
                  f"{pct(earlier['recall_after'])}** after training these new facts on top of its adapter. "
                  + (f"Lost {len(lost)}: {', '.join(f'`{i}`' for i in lost)}." if lost else "None lost."), ""]
        if earlier["recall_after"] is not None and earlier["recall_before"] is not None and \
                earlier["recall_after"] < earlier["recall_before"]:
            lines.append("⚠️ Learning the new facts overwrote some of the earlier ones.\n")
    return lines


def done_message(report: dict) -> str:
    s = report["summary"]
    how = f"Stopped by you after {s['steps']} steps" if s["stopped"] == "cancelled" else f"Done, {s['steps']} steps"
    return (f"{how}: recall {pct(s['recall_before'])} → {pct(s['recall_after'])}, locality "
            f"{pct(s['locality_before'])} → {pct(s['locality_after'])}. Details on 4 · Results")


def results_view(report: dict, run_dir: Path):
    s = report["summary"]
    stopped = {"budget": "used the whole step budget", "all recalled": "stopped early: every fact recalled",
               "cancelled": "stopped by you"}.get(s["stopped"], s["stopped"])
    lines = [f"### Recall {pct(s['recall_before'])} → {pct(s['recall_after'])} on {s['facts_kept']} trained facts",
             "| | before | after |", "|---|---|---|",
             f"| **Recall** of the trained facts | {pct(s['recall_before'])} | {pct(s['recall_after'])} |",
             f"| **Paraphrases** never trained on (generalisation) | {pct(s['paraphrase_before'])} | {pct(s['paraphrase_after'])} |",
             f"| **Question** form (\"Question: … what?\") | {pct(s.get('question_before'))} | {pct(s.get('question_after'))} |",
             f"| **Chat** form (the model's chat template) | {pct(s.get('chat_before'))} | {pct(s.get('chat_after'))} |",
             f"| **Locality**: facts like capitals and symbols it knew | {pct(s['locality_before'])} | {pct(s['locality_after'])} |",
             *([f"| **Locality**: general knowledge of other kinds | {pct(s['locality_general_before'])} | "
                f"{pct(s['locality_general_after'])} |"] if s.get("locality_general_before") is not None else []),
             *([f"| **Fluency**: NLL per token on neutral text, tuned / base | 1.00 | {s['neutral_nll_ratio']:.3f} |"]
               if s.get("neutral_nll_ratio") else []), ""]
    if s["stopped"] == "cancelled":
        lines.append("**Stopped by you**: the adapter holds what was learned in the steps that ran.\n")
    lb, la = s.get("locality_before"), s.get("locality_after")
    if lb is not None and la is not None and la < lb - 0.05:
        lines.append(f"⚠️ The tuned model misses {lb - la:.0%} of the unrelated probe facts the base model knew: "
                     "learning these facts cost it other knowledge.\n")
    orders = f" over {report['merge']['orders']} data orders" if report.get("merge") else ""
    lines += [f"- {s['steps']} steps{orders} ({stopped}); training {seconds(s['train_seconds'])}, "
              f"whole run {seconds(s['total_seconds'])}",
              f"- {s['model']} on **{s['device']}**, quantisation **{s['quantization']}**, "
              f"peak memory {s['peak_memory_mb']:.0f} MB",
              f"- {s['facts_in']} facts in, {s['facts_kept']} trained, {s['dropped']} dropped",
              f"- run folder: `{run_dir.relative_to(RUNS.parent) if run_dir.is_relative_to(RUNS.parent) else run_dir}`"]
    lines += setup_md(report)

    rows = []
    for f in sorted(report["facts"], key=lambda f: not f["kept"]):  # trained facts first
        paras = f.get("paraphrases") or []
        rows.append({"id": f["id"], "prompt": f["prompt"], "target": f["target"],
                     "trained": "yes" if f["kept"] else f"no: {f.get('reason') or ''}",
                     "before": "✓" if f["recall_before"] else "✗", "after": "✓" if f["recall_after"] else "✗",
                     "answer after": f.get("answer_after") or "",
                     "paraphrases after": f"{sum(p['recalled_after'] for p in paras)}/{len(paras)}" if paras else ""})
    df = pd.DataFrame(rows, columns=RESULT_COLUMNS)

    def colour(row):  # green: recalled after training; red: not; grey: not trained
        if row["trained"] != "yes":
            return ["background-color: #f1f1f1; color: #777"] * len(row)
        return [f"background-color: {'#d3f0dc' if row['after'] == '✓' else '#f9d6da'}"] * len(row)

    # Trained over K data orders, the distances are not tracked during training: the drift plot would
    # show one dot per fact at step 0, so it is left out of the page (it stays in plots.zip).
    tracked = any(len(t) > 1 for t in ((report.get("training") or {}).get("distance_trajectories") or {}).values())
    gallery = [(str(run_dir / p), PLOT_CAPTIONS.get(Path(p).stem, Path(p).stem)) for p in report.get("plots", [])
               if tracked or Path(p).stem != "drift"]
    return "\n".join(lines), df.style.apply(colour, axis=1), gallery, downloads(run_dir)


def downloads(run_dir: Path) -> list[str]:
    files = []
    for folder in ("adapter", "plots"):
        if (run_dir / folder).is_dir():
            files.append(shutil.make_archive(str(run_dir / folder), "zip", run_dir / folder))
    return files + [str(run_dir / n) for n in ("report.json", "facts.json") if (run_dir / n).exists()]


def new_run_dir(sess) -> Path:
    base = RUNS / sess["id"] / time.strftime("%Y%m%d-%H%M%S")
    run_dir, n = base, 2
    while run_dir.exists():
        run_dir, n = base.with_name(f"{base.name}-{n}"), n + 1
    run_dir.mkdir(parents=True)
    return run_dir


def ask_default(report) -> str:
    """A paraphrase of a trained fact: the honest question is whether it generalises."""
    kept = [f for f in report["facts"] if f["kept"]]
    if not kept:
        return ""
    paras = kept[0].get("paraphrases") or []
    return paras[0]["prompt"] if paras else kept[0]["prompt"]


def stream(target, name):
    """Run target(progress_callback) in a thread that releases _MODEL_LOCK when done; yield the events
    it has sent every ~0.5 s: ("progress", event) ... and last ("done", result) or ("error", exception)."""
    events: queue.Queue = queue.Queue()

    def work():
        try:
            events.put(("done", target(lambda ev: events.put(("progress", ev)))))
        except Exception as e:  # shown to the person in one line; the traceback goes to the server log
            if not isinstance(e, (ModelError, FactsError)):
                log.exception("%s failed", name)
            events.put(("error", e))
        finally:
            _MODEL_LOCK.release()

    threading.Thread(target=work, daemon=True, name=name).start()
    while True:
        try:
            batch = [events.get(timeout=0.5)]
        except queue.Empty:
            batch = []
        while not events.empty():
            batch.append(events.get_nowait())
        yield batch
        if any(kind != "progress" for kind, _ in batch):
            return


def wait_for_slot(stop: threading.Event | None = None):
    """Yields while another visitor's model job (or a closed tab's) is still running."""
    while not _MODEL_LOCK.acquire(timeout=0.5):
        if stop is not None and stop.is_set():
            return
        yield


# ---------------------------------------------------------------- handlers: 1 facts

def load_sample(label, sess):
    name, about = SAMPLES[label]
    facts = load_facts(ASSETS / name)
    sess.update(meta={f.id: f.meta for f in facts}, upload=None)
    return facts_frame(facts), sess, f"Loaded sample **{name}**: {about}"


def upload(path, sess):
    if not path:
        return gr.skip(), sess, gr.skip()
    src = Path(path)
    # Copied into the session's folder at once: an upload is never lost, whatever fails later.
    saved = RUNS / sess["id"] / "uploads" / src.name
    saved.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, saved)
    try:
        facts = load_facts(saved)
    except FactsError as e:
        raise gr.Error(str(e)) from None
    sess.update(meta={f.id: f.meta for f in facts}, upload=str(saved))
    return facts_frame(facts), sess, f"Loaded **{src.name}**: {len(facts)} facts."


def facts_changed():
    # A check's results belong to the facts it saw: any edit makes them stale.
    return None, pd.DataFrame(columns=REVIEW_COLUMNS), "The facts changed: press **Check facts** on tab 1 to review them."


def model_changed(quant):
    return (device_note(quant), None, pd.DataFrame(columns=REVIEW_COLUMNS),
            "The model changed: press **Check facts** on tab 1 again.")


# ---------------------------------------------------------------- handlers: 2 review

def _check_seconds(sess, facts_df, *_):
    return gpu_seconds(len(facts_df) if facts_df is not None else 0, 0)


def _train_seconds(sess, analysis, facts_df, model, quant, filt, weighting, steps, lr, rank, guard,
                   layers_choice, layers_custom, orders, *_, **__):
    return gpu_seconds(len(facts_df) if facts_df is not None else 0, int(steps or DEFAULTS.steps), int(orders or 1))


@GPU(duration=_check_seconds)  # ZeroGPU reserves a GPU for as long as the facts and steps need
def check(sess, facts_df, model, quant, filt, weighting):
    facts = table_facts(facts_df, sess)
    sess["keep"], sess["drop"] = [], []  # a fresh check starts from the checks' own decisions
    cfg = make_config(sess, model, quant, filt, weighting)
    t0, seen, current, message = time.perf_counter(), [], "check", "checking facts"
    for _ in wait_for_slot():
        yield {check_status: status_html(CHECK_STAGES, [], None, 0, "waiting for another visitor's job to finish")}
    for batch in stream(lambda progress: pipeline.analyze(facts, probes(), cfg, progress=progress), "beacon-check"):
        for kind, payload in batch:
            if kind == "progress":
                seen.append(current)
                current, message = payload["stage"], payload["message"]
            elif kind == "error":
                e = payload
                raise gr.Error(str(e) if isinstance(e, (ModelError, FactsError, ValueError))
                               else f"Checking the facts failed ({type(e).__name__}: {e}).")
            else:
                analysis = payload
                if ZERO_GPU:  # a model on ZeroGPU's GPU cannot outlive this call; training reloads it
                    analysis.pop("_bundle", None)
                df, note = review_frame(analysis, cfg)
                yield {analysis_state: analysis, review_table: df, review_note: note, state: sess,
                       tabs: gr.Tabs(selected="review"),
                       check_status: status_html(CHECK_STAGES, seen, "done", 1, f"Checked {len(facts)} facts: "
                                                 "see 2 · Review", time.perf_counter() - t0)}
                return
        frac = len(set(seen)) / len(CHECK_STAGES)
        yield {check_status: status_html(CHECK_STAGES, seen, current, frac, message, time.perf_counter() - t0)}


def review_edit(analysis, df, sess, model, quant, filt, weighting):
    if analysis is None:
        return gr.skip(), "Press **Check facts** on tab 1 first.", sess
    sess["keep"], sess["drop"] = choices_from_ticks(analysis, make_config(sess, model, quant, filt, weighting), df)
    return (*review_frame(analysis, make_config(sess, model, quant, filt, weighting)), sess)


def review_settings(analysis, sess, model, quant, filt, weighting):
    if analysis is None:
        return gr.skip(), gr.skip()
    return review_frame(analysis, make_config(sess, model, quant, filt, weighting))


# ---------------------------------------------------------------- handlers: 3 train

@GPU(duration=_train_seconds)
def train(sess, analysis, facts_df, model, quant, filt, weighting, steps, lr, rank, guard,
          layers_choice, layers_custom, orders, merge, earlier, rewordings=None, anchors=None,
          request: gr.Request = None):
    facts = table_facts(facts_df, sess)
    layers = layers_spec(layers_choice, layers_custom, model)
    continue_from = earlier_run_dir(sess, earlier, model)
    if continue_from and (layers != "all" or int(orders or 1) > 1):
        raise gr.Error("Continue from trains the earlier run's adapter further, on its own layers and rank: set "
                       "Where to train to all layers and Data orders to 1, or Continue from to none.")
    cfg = make_config(sess, model, quant, filt, weighting, steps, lr, rank, guard, layers, orders, merge,
                      continue_from, rewordings, anchors)
    stages = train_stages(cfg)
    K = cfg.orders if cfg.orders > 1 and not cfg.continue_from else 1
    run_dir = new_run_dir(sess)
    # Written before anything can fail: the run folder always holds what the person brought.
    save_facts(facts, run_dir / "facts.json")
    if sess.get("upload") and Path(sess["upload"]).exists():
        shutil.copyfile(sess["upload"], run_dir / f"uploaded-{Path(sess['upload']).name}")
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    stop = threading.Event()
    sess.update(stop=stop, run_dir=str(run_dir), report=None)
    key = getattr(request, "session_hash", None) or sess["id"]
    _ACTIVE[key] = stop
    t0 = time.perf_counter()
    # The analysis holds a model that training consumes: the state lets go of it now.
    yield {state: sess, analysis_state: None, loss_plot: None, recall_plot: None,
           stop_btn: gr.Button(interactive=True),
           train_status: status_html(stages, [], None, 0, "starting")}

    try:
        for _ in wait_for_slot(stop):
            yield {train_status: status_html(stages, [], None, 0, "waiting for another visitor's job to finish")}
        if stop.is_set():
            yield {train_status: status_html(stages, [], None, 0, "stopped before it started")}
            return

        def job(progress):
            report = pipeline.run(facts, probes(), cfg, out_dir=run_dir, progress=progress, analysis=analysis,
                                  # the STOP file also reaches a run in another process (ZeroGPU)
                                  should_stop=lambda: stop.is_set() or (run_dir / "STOP").exists())
            report.pop("_model", None)  # "Ask the model" loads the saved adapter through core.ask
            return report

        history, seen, current, message = [], [], "check", "starting"
        order, last_step, offset = 0, 0, 0  # with K data orders, each order's steps count from 1 again
        for batch in stream(job, f"beacon-train-{sess['id']}"):
            new_steps = False
            for kind, payload in batch:
                if kind == "progress":
                    if payload["stage"] != current:
                        seen.append(current)
                    current, message = payload["stage"], payload["message"]
                    if "step" in payload:
                        if payload["step"] <= last_step:
                            order, offset = order + 1, offset + last_step
                        last_step = payload["step"]
                        history.append({**{k: payload[k] for k in ("loss", "task", "recall")},
                                        "step": offset + payload["step"]})
                        new_steps = True
                        if K > 1:
                            message = f"order {order + 1}/{K}: {message}"
                elif kind == "error":
                    saved = "the adapter saved so far and " if (run_dir / "adapter").exists() else ""
                    raise gr.Error(f"{payload} (your facts, {saved}the settings are kept in {run_dir.name}).")
                else:
                    report = payload
                    sess["report"] = report
                    summary, table, gallery, files = results_view(report, run_dir)
                    loss, recall = curves(history)
                    yield {state: sess, summary_md: summary, results_table: table, plots: gallery, files_out: files,
                           ask_prompt: ask_default(report), ask_btn: gr.Button(interactive=True),
                           stop_btn: gr.Button(interactive=False), tabs: gr.Tabs(selected="results"),
                           loss_plot: loss, recall_plot: recall, earlier_in: gr.Dropdown(choices=earlier_runs(sess)),
                           train_status: status_html(stages, seen, "done", 1, done_message(report),
                                                     time.perf_counter() - t0)}
                    return
            frac = {"train": 0.3 + 0.55 * min(1, (order + last_step / cfg.steps) / K), "after": 0.88,
                    "plots": 0.95}.get(current, 0.04 * len(set(seen)))
            note = ("<div class='note'>Stopping after this step, then measuring what was learned…</div>"
                    if stop.is_set() and current == "train" else "")
            update = {train_status: status_html(stages, seen, current, frac, message, time.perf_counter() - t0, note)}
            if new_steps:
                update[loss_plot], update[recall_plot] = curves(history)
            yield update
    except GeneratorExit:  # the page went away (tab closed, cancelled): don't train on for nobody
        stop.set()
        raise
    finally:
        _ACTIVE.pop(key, None)


def stop_run(sess):
    if sess.get("stop") is None or sess.get("report") is not None:
        return gr.skip()
    sess["stop"].set()
    if sess.get("run_dir"):
        (Path(sess["run_dir"]) / "STOP").touch()
    return gr.Button(interactive=False)


def on_unload(request: gr.Request):
    stop = _ACTIVE.get(getattr(request, "session_hash", None) or "")
    if stop is not None:
        stop.set()


# ---------------------------------------------------------------- handlers: 4 results

@GPU(duration=60)
def ask_model(prompt, sess):
    report, run_dir = sess.get("report"), sess.get("run_dir")
    if not report or not run_dir:
        raise gr.Error("Train first: there is no tuned model yet.")
    try:
        out = ask(prompt, Path(run_dir) / "adapter", report["config"]["model"], report["config"]["quantization"])
    except (ValueError, ModelError) as e:
        raise gr.Error(str(e)) from None
    return out["base"], out["tuned"]


# ---------------------------------------------------------------- layout

CSS = """
.beacon-header h1 { display: flex; align-items: center; gap: .4em; margin-bottom: .2em; }
.beacon-header p { max-width: 62em; }
.beacon-status { font-size: .95em; padding: .3em 0; }
.beacon-status .stages { color: var(--body-text-color); }
.beacon-status .stages .done { color: #2e9e5b; }
.beacon-status .stages span { color: var(--body-text-color-subdued); }
.beacon-status .bar { height: 10px; border-radius: 5px; background: var(--neutral-200); margin: .5em 0; overflow: hidden; }
.beacon-status .bar > div { height: 100%; background: var(--color-accent); transition: width .4s; }
.beacon-status .msg { font-family: var(--font-mono); font-size: .9em; color: var(--body-text-color-subdued); }
.beacon-status .note { margin-top: .3em; font-weight: 600; }
.small-note { font-size: .85em; color: var(--body-text-color-subdued); }
/* plots are wide (7:4.5): show them whole instead of as square thumbnails */
#plots .grid-wrap { max-height: none !important; height: auto !important; overflow: visible; padding-top: 2.4em; }
#plots .grid-container { grid-template-rows: none; grid-auto-rows: auto; }
#plots .thumbnail-item { aspect-ratio: auto; height: auto; }
#plots .thumbnail-lg > img { height: auto; }
#downloads .label-clear-button { display: none; }  /* results are not the person's to remove */
#plots .caption-label { position: static; max-width: 100%; border: none; white-space: normal; }
/* plots differ in height (one row per fact in some): two stacked columns instead of a grid with gaps */
#plots .grid-container { display: block; column-count: 2; column-gap: var(--spacing-lg); }
#plots .gallery-item { break-inside: avoid; margin-bottom: var(--spacing-lg); }
@media (max-width: 900px) { #plots .grid-container { column-count: 1; } }
"""
LOGO = ("<svg width='34' height='34' viewBox='0 0 32 32' aria-hidden='true'><path d='M13 12h6l2 17h-10z' "
        "fill='#6366f1'/><rect x='12' y='9' width='8' height='3' rx='1' fill='#4338ca'/><path d='M16 3l5 6h-10z' "
        "fill='#f59e0b'/><path d='M21 5l9-3v8zM11 5L2 2v8z' fill='#fcd34d' opacity='.7'/></svg>")

with gr.Blocks(title="Beacon") as demo:
    state = gr.State(new_session)
    # The checked analysis holds a model: kept only between Check and Train, and not forever.
    analysis_state = gr.State(None, time_to_live=1800)

    gr.HTML(f"<div class='beacon-header'><h1>{LOGO} Beacon</h1><p>Teach a small language model new facts with "
            "LoRA, and see honestly what that does: which facts it learns, which it only parrots, what else it "
            "forgets.<br><b>1</b> bring facts → <b>2</b> review the checks → <b>3</b> train → <b>4</b> compare "
            "before and after, ask the model, download the adapter.</p></div>", js_on_load=None)

    with gr.Tabs(selected="facts") as tabs:
        with gr.Tab("1 · Facts", id="facts"):
            with gr.Row(equal_height=True):
                with gr.Column(scale=3):
                    gr.Markdown("**Load a sample**, upload a file, or type and paste rows into the table below "
                                "(`prompt` and `target` are required; `|` separates paraphrases).")
                    with gr.Row():
                        sample_btns = [gr.Button(label, size="sm") for label in SAMPLES]
                    facts_note = gr.Markdown("No facts yet.", elem_id="facts-note")
                with gr.Column(scale=2):
                    file_in = gr.File(label="Upload facts: CSV, JSON or JSONL", file_types=[".csv", ".json", ".jsonl"],
                                      height=150, elem_id="upload")
            facts_table = gr.Dataframe(pd.DataFrame(columns=FACT_COLUMNS), headers=FACT_COLUMNS, datatype="str",
                                       interactive=True, column_count=len(FACT_COLUMNS), wrap=True, max_height=480,
                                       label="Facts (editable)", elem_id="facts-table",
                                       column_widths=["8%", "30%", "14%", "13%", "10%", "25%"])
            with gr.Row():
                model_in = gr.Dropdown([DEFAULT_MODEL], value=DEFAULTS.model, allow_custom_value=True, scale=3,
                                       label="Model", info="The default works offline. Or type any Hub id or local "
                                                           "path of a causal language model.")
                quant_in = gr.Radio(list(QUANTIZATIONS), value=DEFAULTS.quantization, label="Quantisation", scale=2)
            device_md = gr.Markdown(device_note(DEFAULTS.quantization), elem_id="device")
            check_btn = gr.Button("Check facts →", variant="primary")
            check_status = gr.HTML("", elem_id="check-status")

        with gr.Tab("2 · Review", id="review"):
            with gr.Row():
                filter_in = gr.Checkbox(DEFAULTS.filter, label="Filter: drop outliers by semantic distance",
                                        info="at most 10% of the facts; the reason is shown")
                weighting_in = gr.Radio(["semantic", "dynamic", "uniform"], value=DEFAULTS.weighting, label="Loss weighting",
                                        info="semantic: facts far from what the model knows weigh more")
            review_note = gr.Markdown("Press **Check facts** on tab 1: Beacon looks for duplicates and "
                                      "contradictions, measures what the model answers now, and how far each fact "
                                      "is from what it knows.", elem_id="review-note")
            review_table = gr.Dataframe(pd.DataFrame(columns=REVIEW_COLUMNS), headers=REVIEW_COLUMNS,
                                        datatype=["bool", "str", "str", "str", "str", "str", "number", "str", "str"],
                                        interactive=True, static_columns=list(range(1, len(REVIEW_COLUMNS))),
                                        wrap=True, max_height=560, label="Tick keep to train a fact, untick to drop it",
                                        elem_id="review-table",
                                        column_widths=["80px", "64px", "20%", "10%", "19%", "110px", "110px", "96px",
                                                       "13%"])
            gr.Markdown("*known*: the model already answers it · *update*: it confidently answers something else · "
                        "*new*: no settled answer · *distance*: semantic distance between the prompt and the target "
                        "inside the model (larger is harder) · *weight*: its share of the loss · "
                        "*answer before*: the model's answer now (✓ = already right)", elem_classes="small-note")
            to_train_btn = gr.Button("Next: train →", variant="primary")

        with gr.Tab("3 · Train", id="train"):
            with gr.Row():
                steps_in = gr.Slider(1, 300, value=DEFAULTS.steps, step=1, label="Step budget",
                                     info="training stops sooner once every fact is recalled", elem_id="steps-in")
                lr_in = gr.Number(DEFAULTS.lr, label="Learning rate", minimum=1e-6, maximum=1.0, step=1e-4)
                rank_in = gr.Dropdown([2, 4, 8, 16, 32, 64], value=DEFAULTS.rank, label="LoRA rank")
                guard_in = gr.Slider(0, 30, value=DEFAULTS.locality_guard, step=0.5, label="Locality guard",
                                     info="pulls the model towards the base on unrelated text and on known facts near yours; 0 = off")
            custom_default = DEFAULTS.layers not in ("all", "auto")
            with gr.Accordion("Advanced: where to train, data orders, continue an earlier run", open=False,
                              elem_id="advanced"):
                with gr.Row():
                    layers_in = gr.Radio(LAYER_CHOICES, value="custom" if custom_default else DEFAULTS.layers,
                                         label="Where to train", elem_id="layers-in",
                                         info="auto: the layers where the answers form, from a logit-lens pass "
                                              "over the facts; custom: your list. The other layers stay frozen.")
                    n_default = layer_count(DEFAULTS.model)
                    layers_custom = gr.Textbox(DEFAULTS.layers if custom_default else "", label="Layers to train",
                                               placeholder="e.g. 20-29 or 0,5,10", visible=custom_default,
                                               info=f"indices 0..{n_default - 1} for the default model"
                                               if n_default else "layer indices, from 0", elem_id="layers-custom")
                with gr.Row():
                    orders_in = gr.Slider(1, 4, value=DEFAULTS.orders, step=1, label="Data orders K",
                                          info="1 = off. K > 1 trains K adapters, each on its own order of the "
                                               "facts, and merges them: about K times the training time",
                                          elem_id="orders-in")
                    merge_in = gr.Radio(["select", "average"], value=DEFAULTS.merge, label="Merge rule (when K > 1)",
                                        interactive=DEFAULTS.orders > 1, elem_id="merge-in",
                                        info="select: each weight from one randomly chosen run; average: the mean")
                with gr.Row():
                    rewordings_in = gr.Checkbox(DEFAULTS.rewordings, label="Train rewordings too", elem_id="rewordings-in",
                                                info="each fact also in forms Beacon writes (subject first, a question, "
                                                     "the chat template...), so it is learned as knowledge, not one "
                                                     "string; about 6x the wordings per step")
                    anchors_in = gr.CheckboxGroup(list(pipeline.GUARD_SOURCES), value=pipeline.guard_sources(
                        DEFAULTS.guard_anchors), label="What the guard protects", elem_id="anchors-in",
                        info="neighbours: facts near yours that the base model knows, written by it; sampled: the "
                             "base model's own text; file: Beacon's hand-written anchors.txt")
                earlier_in = gr.Dropdown([NO_EARLIER], value="", label="Continue from an earlier run",
                                         elem_id="earlier-in",
                                         info="Trains these facts on top of one of your finished runs in this "
                                              "session (its adapter, layers and rank) and shows what its facts lose.")
            with gr.Row():
                train_btn = gr.Button("Train", variant="primary", scale=3, elem_id="train-btn")
                stop_btn = gr.Button("Stop", variant="stop", scale=1, interactive=False, elem_id="stop-btn")
            train_status = gr.HTML("<div class='small-note'>Trains on the facts table with your review choices "
                                   "(not checked yet? Train checks them first). Stop keeps what was learned.</div>",
                                   elem_id="train-status")
            with gr.Row():
                loss_plot = gr.LinePlot(None, x="step", y="value", color="series", label="Loss", show_label=True,
                                        x_title="step", y_title="loss", color_title=" ", x_axis_format="d",
                                        elem_id="loss-plot")
                recall_plot = gr.LinePlot(None, x="step", y="recall", label="Recall during training (teacher-forced)",
                                          show_label=True, x_title="step", y_title="facts recalled", y_lim=[0, 1],
                                          x_axis_format="d", y_axis_format=".0%", elem_id="recall-plot")

        with gr.Tab("4 · Results", id="results"):
            summary_md = gr.Markdown("No run yet: train on tab 3.", elem_id="summary")
            results_table = gr.Dataframe(pd.DataFrame(columns=RESULT_COLUMNS), interactive=False, wrap=True,
                                         max_height=560, label="Fact by fact (green: recalled after training; red: "
                                                               "not; grey: not trained)", elem_id="results-table",
                                         column_widths=["70px", "25%", "12%", "15%", "70px", "70px", "20%", "120px"])
            plots = gr.Gallery(label="Plots (click to enlarge)", columns=2, height="auto", elem_id="plots",
                               object_fit="contain", preview=False)
            gr.Markdown("### Ask the model\nOne prompt, answered by the base model and by the tuned model.")
            with gr.Row():
                ask_prompt = gr.Textbox(label="Prompt", scale=4, placeholder="The CEO of Zentrix Robotics is",
                                        elem_id="ask-prompt")
                ask_btn = gr.Button("Ask", interactive=False, scale=1, variant="primary", elem_id="ask-btn")
            with gr.Row():
                base_out = gr.Textbox(label="Base model", interactive=False, elem_id="ask-base")
                tuned_out = gr.Textbox(label="Tuned model (with the adapter)", interactive=False, elem_id="ask-tuned")
            files_out = gr.File(label="Downloads: adapter (peft folder, zip), plots (zip), report.json, the facts",
                                file_count="multiple", interactive=False, elem_id="downloads")

    # ---------------------------------------------------------------- wiring
    for btn, label in zip(sample_btns, SAMPLES):
        btn.click(lambda s, label=label: load_sample(label, s), [state], [facts_table, state, facts_note],
                  api_name=f"load_sample_{SAMPLES[label][0].removesuffix('.csv')}", concurrency_limit=None)
    file_in.upload(upload, [file_in, state], [facts_table, state, facts_note], api_name="upload",
                   concurrency_limit=None)
    facts_table.change(facts_changed, None, [analysis_state, review_table, review_note], api_visibility="private",
                       concurrency_limit=None)
    gr.on([model_in.change, quant_in.change], model_changed, [quant_in],
          [device_md, analysis_state, review_table, review_note], api_visibility="private", concurrency_limit=None)

    # Check and Train share one slot: both hold a model and the CPU/GPU. The queue shows the position.
    check_btn.click(check, [state, facts_table, model_in, quant_in, filter_in, weighting_in],
                    [analysis_state, review_table, review_note, state, tabs, check_status], api_name="check",
                    concurrency_id="model", concurrency_limit=1, trigger_mode="once", show_progress_on=[check_status])
    review_table.input(review_edit, [analysis_state, review_table, state, model_in, quant_in, filter_in, weighting_in],
                       [review_table, review_note, state], api_name="review_edit", concurrency_limit=None)
    gr.on([filter_in.change, weighting_in.change], review_settings,
          [analysis_state, state, model_in, quant_in, filter_in, weighting_in], [review_table, review_note],
          api_visibility="private", concurrency_limit=None)
    to_train_btn.click(lambda: gr.Tabs(selected="train"), None, tabs, api_visibility="private", queue=False)

    layers_in.change(lambda c: gr.Textbox(visible=c == "custom"), layers_in, layers_custom,
                     api_visibility="private", queue=False)
    orders_in.change(lambda k: gr.Radio(interactive=int(k) > 1), orders_in, merge_in, api_visibility="private",
                     queue=False)
    train_btn.click(train, [state, analysis_state, facts_table, model_in, quant_in, filter_in, weighting_in,
                            steps_in, lr_in, rank_in, guard_in, layers_in, layers_custom, orders_in, merge_in,
                            earlier_in, rewordings_in, anchors_in],
                    [state, analysis_state, train_status, loss_plot, recall_plot, summary_md, results_table, plots,
                     files_out, ask_prompt, ask_btn, stop_btn, tabs, earlier_in],
                    api_name="train", concurrency_id="model", concurrency_limit=1, trigger_mode="once",
                    show_progress_on=[train_status]
                    ).then(lambda: gr.Button(interactive=False), None, stop_btn, api_visibility="private", queue=False)
    stop_btn.click(stop_run, [state], [stop_btn], api_name="stop", queue=False)
    gr.on([ask_btn.click, ask_prompt.submit], ask_model, [ask_prompt, state], [base_out, tuned_out], api_name="ask")
    demo.unload(on_unload)


# ---------------------------------------------------------------- launch

def launch(host: str = "127.0.0.1", port: int = 7860, share: bool = False, block: bool = True):
    RUNS.mkdir(parents=True, exist_ok=True)
    demo.queue(default_concurrency_limit=4)
    # When a share link cannot be made Gradio prints a long note; we say it in one line instead.
    with contextlib.redirect_stdout(io.StringIO()) if share else contextlib.nullcontext():
        demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=True,
                    theme=gr.themes.Soft(), css=CSS, allowed_paths=[str(RUNS)])
    print(f"Beacon is running on {demo.local_url}", flush=True)
    if share:
        print(f"Public link: {demo.share_url}" if demo.share_url else
              "Could not create a share link (Gradio's share server is unreachable); serving locally only.",
              flush=True)
    if block:
        demo.block_thread()
    return demo


def main(argv=None):
    ap = argparse.ArgumentParser(description="Beacon: teach a language model new facts with LoRA (web app).")
    ap.add_argument("--share", action="store_true", default=os.environ.get("BEACON_SHARE", "") in ("1", "true"),
                    help="ask Gradio for a public share link (env BEACON_SHARE=1)")
    ap.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                    help="default 7860 (env GRADIO_SERVER_PORT)")
    ap.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                    help="0.0.0.0 to serve on the network (env GRADIO_SERVER_NAME)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    launch(a.host, a.port, a.share)


if __name__ == "__main__":
    main()
