"""Beacon's web app: facts in -> review -> train -> results, over the pipeline in core/.

UI wiring only. Each visitor has their own gr.State; each run writes to runs/<session>/<time>/.
Launch: `python app.py [--share] [--port N] [--host H]`. Tests launch the same app with a small
budget through BEACON_STEPS / BEACON_CONFIG (InjectConfig overrides) and BEACON_RUNS.
"""
from __future__ import annotations

import argparse
import contextlib
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
from core.config import InjectConfig
from core.facts import FactsError, facts_from_rows, load_facts, save_facts
from core.models import DEFAULT_MODEL, QUANTIZATIONS, ModelError, pick_device, resolve_quantization

log = logging.getLogger("beacon.app")
ROOT = Path(__file__).resolve().parent
ASSETS = ROOT / "assets"
RUNS = Path(os.environ.get("BEACON_RUNS", ROOT / "runs")).resolve()

try:  # Hugging Face ZeroGPU: a GPU is attached only for the duration of decorated calls
    import spaces

    GPU = spaces.GPU
except ImportError:
    def GPU(fn=None, **_):
        return fn if fn is not None else (lambda f: f)

ZERO_GPU = "spaces" in globals() and os.environ.get("SPACES_ZERO_GPU") is not None


def default_config() -> InjectConfig:
    """InjectConfig's defaults; BEACON_CONFIG (JSON) and BEACON_STEPS override them, so tests run
    this same app on a small budget."""
    over = json.loads(os.environ.get("BEACON_CONFIG") or "{}")
    if os.environ.get("BEACON_STEPS"):
        over["steps"] = int(os.environ["BEACON_STEPS"])
    return InjectConfig.from_dict({**InjectConfig().to_dict(), **over})


DEFAULTS = default_config()
SAMPLES = {  # button label -> file, one line on what it shows
    "Invented facts": ("invented.csv", "35 made-up facts the model cannot know, 2 paraphrases each"),
    "Counterfactual edits": ("counterfactual.csv", "14 edits of facts the model already knows (Milan as Italy's capital)"),
    "Conflicts & duplicates": ("conflicts.csv", "10 facts with planted contradictions and a duplicate"),
}
FACT_COLUMNS = ["id", "prompt", "target", "subject", "relation", "paraphrases"]
REVIEW_COLUMNS = ["keep", "id", "prompt", "target", "status", "category", "distance", "weight", "answer before"]
RESULT_COLUMNS = ["id", "prompt", "target", "trained", "before", "after", "answer after", "paraphrases after"]
STAGES = [("check", "check"), ("load", "load model"), ("before", "recall before"), ("categorize", "known/update/new"),
          ("distance", "semantic distance"), ("interference", "interference"), ("train", "train"),
          ("after", "recall after"), ("plots", "plots")]
PLOT_CAPTIONS = {"interference": "Interference between facts (how a step on one moves another)",
                 "distance_vs_learned": "Semantic distance vs learned",
                 "drift": "Drift: semantic distance during training",
                 "recall": "Recall before and after",
                 "learning_curves": "Learning curves",
                 "layers": "Layer selection"}

# One training job at a time, across visitors. Gradio's queue (concurrency_limit=1) orders the
# events; this lock also covers a run whose tab was closed, which may still be finishing.
_TRAIN_LOCK = threading.Lock()
# Stop flags by Gradio session, for demo.unload: it cannot see gr.State.
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
    """The facts in the table; metadata of loaded files is kept by id (the table has no column for it)."""
    rows = [] if df is None else df.fillna("").to_dict("records")
    try:
        facts = facts_from_rows(rows, source="facts table")
    except FactsError as e:
        raise gr.Error(str(e)) from None
    for f in facts:
        f.meta = f.meta or dict(sess["meta"].get(f.id, {}))
    return facts


def make_config(sess, model, quant, filt, weighting, steps=None, lr=None, rank=None, guard=None) -> InjectConfig:
    d = DEFAULTS.to_dict()
    d.update(model=(model or "").strip() or DEFAULT_MODEL, quantization=quant, filter=bool(filt),
             weighting=weighting, keep=list(sess["keep"]), drop=list(sess["drop"]))
    for k, v, cast in (("steps", steps, int), ("lr", lr, float), ("rank", rank, int), ("locality_guard", guard, float)):
        if v is not None:
            d[k] = cast(v)
    return InjectConfig.from_dict(d)


def device_note(model, quant) -> str:
    dev = pick_device()
    q = resolve_quantization(quant, dev)
    if q == "4bit":
        how = "4-bit NF4 (bitsandbytes, QLoRA)"
    else:
        how = "full precision (float32)" if dev.type == "cpu" else "no quantisation (bfloat16)"
    note = f"Runs on **{dev.type}** with **{how}**."
    if quant == "auto":
        note += " *auto* = 4-bit NF4 on a CUDA GPU, full precision on a CPU (bitsandbytes' 4-bit CPU step is ~20x slower)."
    elif q == "4bit" and dev.type == "cpu":
        note += " ⚠️ 4-bit on a CPU trains about 20x slower than full precision."
    return note


def pct(x) -> str:
    return "–" if x is None else f"{x:.0%}"


def seconds(s) -> str:
    s = float(s or 0)
    return f"{s:.0f} s" if s < 90 else f"{s // 60:.0f} min {s % 60:.0f} s"


def stage_line(seen: list[str], current: str | None, detail: str = "") -> str:
    """✓ done · ▶ now · ○ to come; stages reused from 'Check facts' show as done."""
    keys = [k for k, _ in STAGES]
    now = keys.index(current) if current in keys else (len(keys) if current == "done" else -1)
    parts = []
    for i, (k, label) in enumerate(STAGES):
        if i == now:
            parts.append(f"**▶ {label}{(' ' + detail) if detail else ''}**")
        elif i < now or k in seen:
            parts.append(f"✓ {label}")
        else:
            parts.append(f"○ {label}")
    return " · ".join(parts)


def review_frame(analysis, cfg) -> tuple[pd.DataFrame, str]:
    rows = pipeline.review_rows(analysis, cfg)
    out = []
    for r in rows:
        status = "kept" if r["kept"] else r["reason"]
        if r["kept"] and r["id"] in cfg.keep:
            status = "kept by you"
        out.append({"keep": bool(r["kept"]), "id": r["id"], "prompt": r["prompt"], "target": r["target"],
                    "status": status, "category": r["category"],
                    "distance": round(r["semantic_distance"], 3),
                    "weight": "" if r["weight"] is None else round(r["weight"], 2),
                    "answer before": ("✓ " if r["recall_before"] else "") + r["answer_before"]})
    kept = sum(r["kept"] for r in rows)
    merged = analysis.get("merged") or {}
    note = [f"**{kept} of {len(rows)} facts will be trained**, {len(rows) - kept} dropped."]
    if merged:
        note.append("Merged duplicates (not shown): " + ", ".join(f"{a} = {b}" for a, b in merged.items()) + ".")
    note.append("Untick **keep** to drop a fact; tick it to train a dropped one anyway. "
                "*known*: the model already answers it; *update*: it confidently answers something else; "
                "*new*: it has no settled answer. *distance*: semantic distance between the prompt and the target "
                "in the model (larger = harder); *weight*: its share of the loss.")
    return pd.DataFrame(out, columns=REVIEW_COLUMNS), " ".join(note)


def choices_from_ticks(analysis, cfg, df) -> tuple[list[str], list[str]]:
    """keep/drop lists that turn the checks' own decisions into the ticked set."""
    ticked = {str(r["id"]) for r in df.to_dict("records") if r.get("keep") in (True, "true", "True", 1)}
    natural = {r["id"] for r in pipeline.review_rows(analysis, InjectConfig.from_dict(
        {**cfg.to_dict(), "keep": [], "drop": []})) if r["kept"]}
    ids = {r["id"] for r in pipeline.review_rows(analysis, cfg)}
    return sorted((ticked & ids) - natural), sorted(natural - ticked)


def results_view(report: dict, run_dir: Path):
    s = report["summary"]
    stopped = {"budget": "used the step budget", "all recalled": "every fact recalled",
               "cancelled": "stopped by you"}.get(s["stopped"], s["stopped"])
    lines = [f"### Recall {pct(s['recall_before'])} → {pct(s['recall_after'])} on {s['facts_kept']} trained facts",
             "| | before | after |", "|---|---|---|",
             f"| Recall of the trained facts | {pct(s['recall_before'])} | {pct(s['recall_after'])} |",
             f"| Paraphrases of them | {pct(s['paraphrase_before'])} | {pct(s['paraphrase_after'])} |",
             f"| Locality: probe facts it knew | {pct(s['locality_before'])} | {pct(s['locality_after'])} |", ""]
    if s["stopped"] == "cancelled":
        lines.append("**Stopped by you**: the adapter holds what was learned in the steps it ran.")
    lb, la = s.get("locality_before"), s.get("locality_after")
    if lb is not None and la is not None and la < lb - 0.05:
        lines.append(f"⚠️ The model now misses {lb - la:.0%} of the probe facts it knew: learning these facts cost it "
                     "some unrelated knowledge.")
    lines.append(f"{s['steps']} steps ({stopped}) · training {seconds(s['train_seconds'])} · total "
                 f"{seconds(s['total_seconds'])} · **{s['device']}** · **{s['quantization']}** · {s['model']} · "
                 f"peak memory {s['peak_memory_mb']:.0f} MB · {s['facts_in']} facts in, {s['dropped']} dropped")
    lines.append(f"\nRun folder: `{run_dir}`")
    summary = "\n".join(lines)

    rows = []
    for f in report["facts"]:
        paras = f.get("paraphrases") or []
        rows.append({"id": f["id"], "prompt": f["prompt"], "target": f["target"],
                     "trained": "yes" if f["kept"] else f"no: {f.get('reason') or ''}",
                     "before": "✓" if f["recall_before"] else "✗", "after": "✓" if f["recall_after"] else "✗",
                     "answer after": f.get("answer_after") or "",
                     "paraphrases after": f"{sum(p['recalled_after'] for p in paras)}/{len(paras)}" if paras else ""})
    df = pd.DataFrame(rows, columns=RESULT_COLUMNS)

    def colour(row):  # green: recalled after training; red: not; grey text: not trained
        bg = "#d8f3e1" if row["after"] == "✓" else "#fbdde0"
        fg = "color: #333" if row["trained"] == "yes" else "color: #888"
        return [f"background-color: {bg}; {fg}"] * len(row)

    table = df.style.apply(colour, axis=1)
    gallery = [(str(run_dir / p), PLOT_CAPTIONS.get(Path(p).stem, Path(p).stem)) for p in report.get("plots", [])]
    return summary, table, gallery, downloads(run_dir)


def downloads(run_dir: Path) -> list[str]:
    files = []
    for folder in ("adapter", "plots"):
        if (run_dir / folder).is_dir():
            files.append(shutil.make_archive(str(run_dir / folder), "zip", run_dir / folder))
    files += [str(run_dir / n) for n in ("report.json", "facts.json") if (run_dir / n).exists()]
    return files


def new_run_dir(sess) -> Path:
    base = RUNS / sess["id"] / time.strftime("%Y%m%d-%H%M%S")
    run_dir, n = base, 2
    while run_dir.exists():
        run_dir, n = base.with_name(f"{base.name}-{n}"), n + 1
    run_dir.mkdir(parents=True)
    return run_dir


def ask_default(report) -> str:
    kept = [f for f in report["facts"] if f["kept"]]
    if not kept:
        return ""
    paras = kept[0].get("paraphrases") or []
    return paras[0]["prompt"] if paras else kept[0]["prompt"]


# ---------------------------------------------------------------- handlers: 1 facts

def load_sample(label, sess):
    facts = load_facts(ASSETS / SAMPLES[label][0])
    sess["meta"] = {f.id: f.meta for f in facts}
    sess["upload"] = None
    return facts_frame(facts), sess, f"Loaded **{SAMPLES[label][0]}**: {SAMPLES[label][1]}."


def upload(path, sess):
    if not path:
        return gr.skip(), sess, gr.skip()
    src = Path(path)
    # Kept in the session's folder at once: an upload is never lost, whatever fails later.
    keep_dir = RUNS / sess["id"] / "uploads"
    keep_dir.mkdir(parents=True, exist_ok=True)
    saved = keep_dir / src.name
    shutil.copyfile(src, saved)
    try:
        facts = load_facts(saved)
    except FactsError as e:
        raise gr.Error(str(e)) from None
    sess["meta"] = {f.id: f.meta for f in facts}
    sess["upload"] = str(saved)
    return facts_frame(facts), sess, f"Loaded **{src.name}**: {len(facts)} facts."


def facts_changed():
    # The check's results belong to the facts it saw: edits make them stale.
    return None, pd.DataFrame(columns=REVIEW_COLUMNS), "Facts changed: press **Check facts** to review them."


def settings_changed(model, quant):
    try:
        note = device_note(model, quant)
    except ModelError as e:
        note = str(e)
    return note, None, pd.DataFrame(columns=REVIEW_COLUMNS), "Model changed: press **Check facts** again."


# ---------------------------------------------------------------- handlers: 2 review

@GPU(duration=120)
def check(sess, facts_df, model, quant, filt, weighting, progress=gr.Progress()):
    facts = table_facts(facts_df, sess)
    sess["keep"], sess["drop"] = [], []  # a fresh check starts from the checks' own decisions
    cfg = make_config(sess, model, quant, filt, weighting)
    seen = []

    def on_event(ev):
        seen.append(ev["stage"])
        progress(None, desc=ev["message"])

    progress(None, desc="checking facts")
    try:
        analysis = pipeline.analyze(facts, None, cfg, progress=on_event)
    except (ModelError, FactsError, ValueError) as e:
        raise gr.Error(str(e)) from None
    except Exception as e:
        log.exception("check failed")
        raise gr.Error(f"Checking the facts failed ({type(e).__name__}: {e}).") from None
    if ZERO_GPU:  # a model on ZeroGPU's GPU cannot outlive this call; training reloads it
        analysis.pop("_bundle", None)
    df, note = review_frame(analysis, cfg)
    return analysis, df, note, sess, gr.Tabs(selected="review"), f"Checked {len(facts)} facts: see **2 · Review**."


def review_edit(analysis, df, sess, model, quant, filt, weighting):
    if analysis is None:
        return gr.skip(), "Press **Check facts** first.", sess
    cfg = make_config(sess, model, quant, filt, weighting)
    sess["keep"], sess["drop"] = choices_from_ticks(analysis, cfg, df)
    return (*review_frame(analysis, make_config(sess, model, quant, filt, weighting)), sess)


def review_settings(analysis, sess, model, quant, filt, weighting):
    if analysis is None:
        return gr.skip(), gr.skip()
    return review_frame(analysis, make_config(sess, model, quant, filt, weighting))


# ---------------------------------------------------------------- handlers: 3 train

def _worker(facts, cfg, run_dir: Path, analysis, events: queue.Queue, stop: threading.Event):
    try:
        report = pipeline.run(facts, None, cfg, out_dir=run_dir, progress=lambda ev: events.put(("progress", ev)),
                              # the STOP file also reaches a run in another process (ZeroGPU)
                              should_stop=lambda: stop.is_set() or (run_dir / "STOP").exists(),
                              analysis=analysis)
        report.pop("_model", None)  # the app asks through core.ask, from the saved adapter
        events.put(("done", report))
    except Exception as e:  # shown to the person as one line; the traceback goes to the server log
        if not isinstance(e, (ModelError, FactsError)):
            log.exception("training run failed in %s", run_dir)
        events.put(("error", e))
    finally:
        _TRAIN_LOCK.release()


def _curves(history):
    loss = pd.DataFrame([{"step": h["step"], "value": h[k], "series": k} for h in history for k in ("loss", "task")],
                        columns=["step", "value", "series"])
    recall = pd.DataFrame([{"step": h["step"], "recall": h["recall"]} for h in history], columns=["step", "recall"])
    return loss, recall


@GPU(duration=300)
def train(sess, analysis, facts_df, model, quant, filt, weighting, steps, lr, rank, guard,
          request: gr.Request, progress=gr.Progress()):
    facts = table_facts(facts_df, sess)
    cfg = make_config(sess, model, quant, filt, weighting, steps, lr, rank, guard)
    run_dir = new_run_dir(sess)
    # Saved before anything can fail: the run folder always holds what the person brought.
    save_facts(facts, run_dir / "facts.json")
    if sess.get("upload") and Path(sess["upload"]).exists():
        shutil.copyfile(sess["upload"], run_dir / f"uploaded-{Path(sess['upload']).name}")
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    stop = threading.Event()
    sess.update(stop=stop, run_dir=str(run_dir), report=None)
    key = getattr(request, "session_hash", None) or sess["id"]
    _ACTIVE[key] = stop
    t0 = time.perf_counter()
    empty_loss, empty_recall = _curves([])
    yield {state: sess, analysis_state: None, train_status: "Starting…",
           loss_plot: empty_loss, recall_plot: empty_recall}

    progress(0, desc="waiting for the previous run to finish")
    while not _TRAIN_LOCK.acquire(timeout=0.5):
        if stop.is_set():
            _ACTIVE.pop(key, None)
            yield {train_status: "Stopped before it started."}
            return
        yield {train_status: "Another run is finishing; yours starts right after it."}

    events: queue.Queue = queue.Queue()
    threading.Thread(target=_worker, args=(facts, cfg, run_dir, analysis, events, stop), daemon=True,
                     name=f"beacon-train-{sess['id']}").start()
    history, seen, current, detail, message = [], [], "check", "", "starting"
    try:
        while True:
            try:
                items = [events.get(timeout=0.5)]
            except queue.Empty:
                items = []
            while not events.empty():
                items.append(events.get_nowait())
            outcome = None
            for kind, payload in items:
                if kind == "progress":
                    ev = payload
                    if ev["stage"] != current:
                        seen.append(current)
                    current, message = ev["stage"], ev["message"]
                    detail = ""
                    if "step" in ev:
                        history.append({k: ev[k] for k in ("step", "loss", "task", "guard", "recall")})
                        detail = f"{ev['step']}/{cfg.steps}"
                else:
                    outcome = (kind, payload)
            frac = {"train": 0.3 + 0.55 * (history[-1]["step"] / cfg.steps if history else 0),
                    "after": 0.88, "plots": 0.95, "done": 1.0}.get(current, 0.05 + 0.04 * len(set(seen)))
            progress(frac, desc=message)
            elapsed = time.perf_counter() - t0
            status = (f"{stage_line(seen, current, detail)}\n\n{message} · {seconds(elapsed)}"
                      + ("\n\n*Stopping after this step…*" if stop.is_set() and not outcome else ""))
            update = {train_status: status}
            if items and history and any(k == "progress" and "step" in p for k, p in items):
                update[loss_plot], update[recall_plot] = _curves(history)
            if outcome is None:
                yield update
                continue
            kind, payload = outcome
            if kind == "error":
                saved = "the adapter saved so far and " if (run_dir / "adapter").exists() else ""
                raise gr.Error(f"{payload} — {saved}your facts are kept in {run_dir}.")
            report = payload
            sess["report"] = report
            summary, table, gallery, files = results_view(report, run_dir)
            update.update({state: sess, summary_md: summary, results_table: table, plots: gallery,
                           files_out: files, ask_prompt: ask_default(report), ask_btn: gr.Button(interactive=True),
                           tabs: gr.Tabs(selected="results")})
            update[train_status] = (f"{stage_line(seen, 'done')}\n\n**Done** in {seconds(elapsed)}: "
                                    f"{message}. See **4 · Results**.")
            update[loss_plot], update[recall_plot] = _curves(history)
            yield update
            return
    except GeneratorExit:  # the page went away (tab closed, cancelled): don't train on for nobody
        stop.set()
        raise
    finally:
        _ACTIVE.pop(key, None)


def stop_run(sess):
    if sess.get("stop") is not None and sess.get("report") is None:
        sess["stop"].set()
        if sess.get("run_dir"):
            (Path(sess["run_dir"]) / "STOP").touch()
        return "*Stopping after this step… the adapter keeps what was learned so far.*"
    return gr.skip()


def on_unload(request: gr.Request):
    ev = _ACTIVE.get(getattr(request, "session_hash", None) or "")
    if ev is not None:
        ev.set()


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
.beacon-header p { max-width: 60em; }
.stage-line { min-height: 4em; }
"""

with gr.Blocks(title="Beacon") as demo:
    state = gr.State(new_session)
    # The checked analysis holds a model: kept only between Check and Train, and not forever.
    analysis_state = gr.State(None, time_to_live=1800)

    gr.Markdown("# 🔦 Beacon\nTeach a small language model new facts with LoRA, and see honestly what that does: "
                "which facts it learns, which it only parrots, what else it forgets. "
                "**1** bring facts → **2** review the checks → **3** train → **4** compare before and after, "
                "ask the model, download the adapter.", elem_classes="beacon-header")

    with gr.Tabs(selected="facts") as tabs:
        with gr.Tab("1 · Facts", id="facts"):
            with gr.Row():
                with gr.Column(scale=3):
                    gr.Markdown("**Load a sample**, upload a file, or type and paste rows into the table. "
                                "Separate paraphrases with `|`.")
                    with gr.Row():
                        sample_btns = [gr.Button(label, size="sm") for label in SAMPLES]
                with gr.Column(scale=2):
                    file_in = gr.File(label="Upload CSV / JSON / JSONL (columns: prompt, target; optional id, "
                                            "subject, relation, paraphrases)",
                                      file_types=[".csv", ".json", ".jsonl"], height=110)
            facts_note = gr.Markdown("No facts yet.")
            facts_table = gr.Dataframe(pd.DataFrame(columns=FACT_COLUMNS), headers=FACT_COLUMNS, datatype="str",
                                       interactive=True, column_count=len(FACT_COLUMNS),
                                       wrap=True, max_height=420, label="Facts", elem_id="facts-table",
                                       column_widths=["8%", "30%", "14%", "13%", "10%", "25%"])
            with gr.Row():
                model_in = gr.Dropdown([DEFAULT_MODEL], value=DEFAULTS.model, allow_custom_value=True, scale=3,
                                       label="Model", info="The default works offline; or type any Hub id or local path "
                                                          "of a causal language model.")
                quant_in = gr.Radio(list(QUANTIZATIONS), value=DEFAULTS.quantization, label="Quantisation", scale=2)
            device_md = gr.Markdown(device_note(DEFAULTS.model, DEFAULTS.quantization))
            check_btn = gr.Button("Check facts →", variant="primary")
            check_status = gr.Markdown("", elem_classes="stage-line", elem_id="check-status")

        with gr.Tab("2 · Review", id="review"):
            with gr.Row():
                filter_in = gr.Checkbox(DEFAULTS.filter, label="Filter: drop outliers by semantic distance")
                weighting_in = gr.Radio(["semantic", "uniform"], value=DEFAULTS.weighting,
                                        label="Loss weighting", info="semantic: harder facts weigh more")
            review_note = gr.Markdown("Press **Check facts** on tab 1: Beacon looks for duplicates and contradictions, "
                                      "measures what the model answers now and how far each fact is from what it knows.")
            review_table = gr.Dataframe(pd.DataFrame(columns=REVIEW_COLUMNS), headers=REVIEW_COLUMNS,
                                        datatype=["bool", "str", "str", "str", "str", "str", "number", "str", "str"],
                                        interactive=True, static_columns=list(range(1, len(REVIEW_COLUMNS))),
                                        wrap=True, max_height=520, label="Review: tick keep to train a fact",
                                        elem_id="review-table",
                                        column_widths=["6%", "7%", "25%", "11%", "17%", "8%", "8%", "6%", "12%"])
            to_train_btn = gr.Button("Next: train →", variant="primary")

        with gr.Tab("3 · Train", id="train"):
            with gr.Row():
                steps_in = gr.Slider(1, 300, value=DEFAULTS.steps, step=1, label="Step budget",
                                     info="training stops sooner once every fact is recalled")
                lr_in = gr.Number(DEFAULTS.lr, label="Learning rate", minimum=1e-6, maximum=1.0, step=1e-4)
                rank_in = gr.Dropdown([2, 4, 8, 16, 32, 64], value=DEFAULTS.rank, label="LoRA rank")
                guard_in = gr.Slider(0, 10, value=DEFAULTS.locality_guard, step=0.5, label="Locality guard",
                                     info="keeps the model close to the base on unrelated text; 0 = off")
            with gr.Row():
                train_btn = gr.Button("Train", variant="primary", scale=3)
                stop_btn = gr.Button("Stop", variant="stop", scale=1)
            train_status = gr.Markdown("Trains on the facts table with your review choices (not checked yet? "
                                       "Train checks them first).", elem_classes="stage-line", elem_id="train-status")
            with gr.Row():
                loss_plot = gr.LinePlot(_curves([])[0], x="step", y="value", color="series", title="Loss",
                                        x_title="step", y_title="loss", height=260, elem_id="loss-plot")
                recall_plot = gr.LinePlot(_curves([])[1], x="step", y="recall", title="Recall during training",
                                          x_title="step", y_title="share of facts recalled", y_lim=[0, 1],
                                          height=260, elem_id="recall-plot")

        with gr.Tab("4 · Results", id="results"):
            summary_md = gr.Markdown("No run yet.", elem_id="summary")
            results_table = gr.Dataframe(pd.DataFrame(columns=RESULT_COLUMNS), interactive=False, wrap=True,
                                         max_height=520, label="Recall before and after, fact by fact "
                                                               "(green: recalled after training; red: not)",
                                         elem_id="results-table",
                                         column_widths=["7%", "27%", "12%", "14%", "6%", "6%", "20%", "8%"])
            plots = gr.Gallery(label="Plots", columns=3, height="auto", elem_id="plots", object_fit="contain")
            gr.Markdown("### Ask the model\nOne prompt, answered by the base model and by the tuned model.")
            with gr.Row():
                ask_prompt = gr.Textbox(label="Prompt", scale=4, placeholder="The CEO of Zentrix Robotics is")
                ask_btn = gr.Button("Ask", interactive=False, scale=1)
            with gr.Row():
                base_out = gr.Textbox(label="Base model", interactive=False)
                tuned_out = gr.Textbox(label="Tuned model (with the adapter)", interactive=False)
            files_out = gr.File(label="Downloads: adapter (peft, zip), report.json, plots (zip), facts",
                                file_count="multiple", interactive=False, elem_id="downloads")

    # ---------------------------------------------------------------- wiring
    for btn, label in zip(sample_btns, SAMPLES):
        btn.click(lambda s, label=label: load_sample(label, s), [state], [facts_table, state, facts_note],
                  api_name=f"load_sample_{SAMPLES[label][0].removesuffix('.csv')}", concurrency_limit=None)
    file_in.upload(upload, [file_in, state], [facts_table, state, facts_note], api_name="upload",
                   concurrency_limit=None)
    facts_table.change(facts_changed, None, [analysis_state, review_table, review_note], api_visibility="private",
                       concurrency_limit=None)
    gr.on([model_in.change, quant_in.change], settings_changed, [model_in, quant_in],
          [device_md, analysis_state, review_table, review_note], api_visibility="private", concurrency_limit=None)

    # Check and Train share one slot: both hold a model and the CPU/GPU; the queue shows the position.
    check_btn.click(check, [state, facts_table, model_in, quant_in, filter_in, weighting_in],
                    [analysis_state, review_table, review_note, state, tabs, check_status], api_name="check",
                    concurrency_id="model", concurrency_limit=1, trigger_mode="once",
                    show_progress_on=[check_status])
    review_table.input(review_edit, [analysis_state, review_table, state, model_in, quant_in, filter_in, weighting_in],
                       [review_table, review_note, state], api_name="review_edit", concurrency_limit=None)
    gr.on([filter_in.change, weighting_in.change], review_settings,
          [analysis_state, state, model_in, quant_in, filter_in, weighting_in], [review_table, review_note],
          api_visibility="private", concurrency_limit=None)
    to_train_btn.click(lambda: gr.Tabs(selected="train"), None, tabs, api_visibility="private", queue=False)

    train_btn.click(train, [state, analysis_state, facts_table, model_in, quant_in, filter_in, weighting_in,
                            steps_in, lr_in, rank_in, guard_in],
                    [state, analysis_state, train_status, loss_plot, recall_plot, summary_md, results_table, plots,
                     files_out, ask_prompt, ask_btn, tabs],
                    api_name="train", concurrency_id="model", concurrency_limit=1, trigger_mode="once",
                    show_progress_on=[train_status])
    stop_btn.click(stop_run, [state], [train_status], api_name="stop", concurrency_limit=None, queue=False)
    ask_btn.click(ask_model, [ask_prompt, state], [base_out, tuned_out], api_name="ask")
    ask_prompt.submit(ask_model, [ask_prompt, state], [base_out, tuned_out], api_visibility="private")
    demo.unload(on_unload)


# ---------------------------------------------------------------- launch

def launch(host: str = "127.0.0.1", port: int = 7860, share: bool = False, block: bool = True):
    RUNS.mkdir(parents=True, exist_ok=True)
    demo.queue(default_concurrency_limit=4)
    # Gradio prints a long multi-line note when a share link fails; we say it in one line.
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf) if share else contextlib.nullcontext():
        demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=True,
                    theme=gr.themes.Soft(), css=CSS, allowed_paths=[str(RUNS)], show_error=False)
    print(f"Beacon is running on {demo.local_url}", flush=True)
    if share:
        print(f"Public link: {demo.share_url}" if demo.share_url else
              "Could not create a share link (no connection to Gradio's share server); serving locally only.",
              flush=True)
    if block:
        demo.block_thread()
    return demo


def main(argv=None):
    ap = argparse.ArgumentParser(description="Beacon: teach a language model new facts with LoRA (web app).")
    ap.add_argument("--share", action="store_true", default=os.environ.get("BEACON_SHARE", "") in ("1", "true"),
                    help="ask Gradio for a public share link (env BEACON_SHARE=1)")
    ap.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    ap.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                    help="0.0.0.0 to serve on the network")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    launch(a.host, a.port, a.share)


if __name__ == "__main__":
    main()
