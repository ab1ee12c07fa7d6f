"""The app's handlers: plain functions of widget values, callable without a server.

Each visitor's gr.State is a plain dict (`new_session`). Generators yield {output name: value}; the
layout maps the names (CHECK_OUTPUTS, TRAIN_OUTPUTS, EXPORT_OUTPUTS) to its components. The analysis of a
check and the report of a run come from beacon.pipeline here and nowhere else.
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path

import gradio as gr
import pandas as pd

from beacon.report import export as core_export
from beacon import pipeline
from beacon.ask import ask
from beacon.config import idle_settings
from beacon.estimate import estimate, gpu_seconds, remaining
from beacon.data.facts import FactsError, facts_from_rows, load_facts, save_facts
from beacon.method.anchors import read_anchors
from beacon.model.models import ModelError

from beacon.app import settings
from beacon.app import cleanup, jobs
from beacon.app.jobs import ACTIVE, QueueFull, Stopped, stream, wait_for_slot, waiting
from beacon.app.render import (CHECK_STAGES, REVIEW_COLUMNS, ask_default, ask_scores, ask_target, charts, curves,
                               done_message, facts_frame, results_view, review_frame, status_html, train_stages)
from beacon.app.settings import (ASSETS, SAMPLES, default, device_note, earlier_run_dir, earlier_runs,
                                 layer_count, layers_spec, make_config, new_run_dir, probes, session_dir, value)

try:  # Hugging Face ZeroGPU: a GPU is attached only while a decorated call runs
    import spaces

    GPU = spaces.GPU
except ImportError:
    def GPU(fn=None, **_):
        return fn if fn is not None else (lambda f: f)

ZERO_GPU = os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")
# What `check` and `train` update, by name, in the order of their events' outputs (the API's order).
# One untouched base model, loaded by a Check and taken by the Train that follows (training adds its
# adapter in place, so a model is never handed out twice). Only touched under the one-job lock.
_FRESH: dict[tuple, tuple] = {}


def take_model(cfg):
    return _FRESH.pop((cfg.model, cfg.quantization, cfg.trust_remote_code), None)


def hold_model(cfg, bundle):
    _FRESH.clear()   # one model at most: memory stays bounded whatever visitors check
    _FRESH[(cfg.model, cfg.quantization, cfg.trust_remote_code)] = bundle


CHECK_OUTPUTS = ("analysis_state", "review_table", "review_note", "state", "tabs", "check_status")
TRAIN_OUTPUTS = ("state", "analysis_state", "train_status", "loss_plot", "recall_plot", "headline_md", "summary_md",
                 "results_table", "plots", "files_out", "ask_prompt", "ask_target", "ask_btn", "stop_btn", "tabs", "earlier_in",
                 "export_btn", "export_status", "interference_chart", "distance_chart", "recall_chart")
EXPORT_OUTPUTS = ("files_out", "export_status")


def new_session() -> dict:
    return {"id": uuid.uuid4().hex[:12], "meta": {}, "upload": None, "keep": [], "drop": [],
            "run_dir": None, "report": None, "stop": None, "check_stop": None,
            "probes": None, "probes_file": None, "anchors_file": None}   # the visitor's own probes and anchors


def visitor_of(sess, request) -> str:
    """Who a job belongs to: the Gradio session (a tab), or the state's id without a server."""
    return getattr(request, "session_hash", None) or sess["id"]


def claim(visitor: str, what: str) -> None:
    """One running job per visitor: refuse a second one while the first (or its wait) is on."""
    busy = jobs.claim(visitor, what)
    if busy is not None:
        raise gr.Error(f"One job at a time per visitor: your {busy} is still running. Wait for it to finish "
                       "or stop it, then try again.")


def wait_in_line(stop, update):
    """`held = yield from wait_in_line(stop, update)`: wait for the model slot in the line of at most
    settings.QUEUE_SIZE jobs; a full line is a gr.Error that names the limit."""
    try:
        return (yield from waiting(wait_for_slot(stop, max_waiting=settings.QUEUE_SIZE), update))
    except QueueFull as e:
        raise gr.Error(f"The queue is full: {e}") from None


def ahead_note(ahead: int) -> str:
    return (f"waiting for another visitor's job to finish: {ahead} job{'s' if ahead > 1 else ''} ahead of yours")


def sweep_runs() -> list[Path]:
    """Delete run folders past BEACON_RUN_TTL_HOURS, then the oldest over BEACON_DISK_BUDGET_MB; never one
    a job is writing to."""
    return cleanup.sweep(settings.RUNS, settings.RUN_TTL_HOURS * 3600, settings.DISK_BUDGET_MB * 2**20,
                         active=jobs.running_dirs())


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


def downloads(run_dir: Path) -> list[str]:
    files = []
    for folder in ("adapter", "plots"):
        if (run_dir / folder).is_dir():
            files.append(shutil.make_archive(str(run_dir / folder), "zip", run_dir / folder))
    files += [str(run_dir / n) for n in ("report.json", "facts.json") if (run_dir / n).exists()]
    return files + [str(p) for p in sorted((run_dir / "export").glob("*.gguf"))]


# ---------------------------------------------------------------- 1 facts

def load_sample(label, sess):
    name, about = SAMPLES[label]
    facts = load_facts(ASSETS / name)
    sess.update(meta={f.id: f.meta for f in facts}, upload=None)
    return facts_frame(facts), sess, f"Loaded sample **{name}**: {about}"


def save_upload(path, sess, folder: str = "uploads") -> Path:
    """The uploaded file, size-checked, then copied into the session's `folder`."""
    src = Path(path)
    size, limit = src.stat().st_size, settings.MAX_UPLOAD_MB * 2**20
    if size > limit:   # before any copy: a large upload costs this server nothing more
        raise gr.Error(f"{src.name}: {size / 2**20:.1f} MB, over the upload limit of {settings.MAX_UPLOAD_MB:g} MB "
                       "(BEACON_MAX_UPLOAD_MB).")
    # Copied into the session's folder at once: an upload is never lost, whatever fails later.
    saved = session_dir(sess) / folder / src.name
    saved.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, saved)
    return saved


def upload(path, sess):
    if not path:
        return gr.skip(), sess, gr.skip()
    src = Path(path)
    saved = save_upload(path, sess)
    try:
        facts = load_facts(saved)
    except FactsError as e:
        raise gr.Error(str(e)) from None
    sess.update(meta={f.id: f.meta for f in facts}, upload=str(saved))
    return facts_frame(facts), sess, f"Loaded **{src.name}**: {len(facts)} facts."


def upload_probes(path, sess):
    """The visitor's probe set: facts the model should keep knowing, measured as one more probe set
    ("yours") before and after training. No file (cleared): the shipped probes only."""
    if not path:
        sess.update(probes=None, probes_file=None)
        return sess, _yours_note(sess)
    saved = save_upload(path, sess, "uploads/probes")
    try:
        facts = load_facts(saved)
    except FactsError as e:
        raise gr.Error(str(e)) from None
    sess.update(probes=facts, probes_file=saved.name)
    return sess, _yours_note(sess)


def upload_anchors(path, sess):
    """The visitor's guard anchors: the guard's file source reads them instead of assets/anchors.txt."""
    if not path:
        sess["anchors_file"] = None
        return sess, _yours_note(sess)
    saved = save_upload(path, sess, "uploads/anchors")
    try:
        read_anchors(saved)
    except ValueError as e:
        raise gr.Error(str(e)) from None
    sess["anchors_file"] = str(saved)
    return sess, _yours_note(sess)


def _yours_note(sess) -> str:
    parts = []
    if sess.get("probes"):
        parts.append(f"your probe set **{sess['probes_file']}** ({len(sess['probes'])} fact{'s' * (len(sess['probes']) != 1)}, "
                     "reported as locality on yours)")
    if sess.get("anchors_file"):
        n = len(read_anchors(sess["anchors_file"]))
        parts.append(f"your guard anchors **{Path(sess['anchors_file']).name}** ({n}, for the guard's file source)")
    return ("Using " + " and ".join(parts) + "." if parts else
            "No probe set or anchors of yours: the shipped ones are used.")


def run_probes(sess):
    """The probe sets a check or a run measures: the server's (settings.probes()), and the visitor's as "yours"."""
    if not sess.get("probes"):
        return probes()
    return {**pipeline.probe_sets(probes()), "yours": list(sess["probes"])}


def facts_changed():
    # A check's results belong to the facts it saw: any edit makes them stale.
    return None, pd.DataFrame(columns=REVIEW_COLUMNS), "The facts changed: press **Check facts** on tab 1 to review them."


def model_changed(quant):
    return (device_note(quant), None, pd.DataFrame(columns=REVIEW_COLUMNS),
            "The model changed: press **Check facts** on tab 1 again.")


# ---------------------------------------------------------------- 2 review

def _check_seconds(sess, facts_df, *_):
    return gpu_seconds(len(facts_df) if facts_df is not None else 0, 0)


def _train_seconds(sess, analysis, facts_df, model, quant, filt, weighting, steps, lr, rank, guard,
                   layers_choice, layers_custom, orders, *_, **__):
    return gpu_seconds(len(facts_df) if facts_df is not None else 0, int(steps or default("steps")), int(orders or 1))


@GPU(duration=_check_seconds)  # ZeroGPU reserves a GPU for as long as the facts and steps need
def check(sess, facts_df, model, quant, filt, weighting, request: gr.Request = None):
    facts = table_facts(facts_df, sess)
    sess["keep"], sess["drop"] = [], []  # a fresh check starts from the checks' own decisions
    cfg = make_config(sess, model, quant, filt, weighting)
    measured = run_probes(sess)
    visitor = visitor_of(sess, request)
    claim(visitor, "check")
    stop, streaming = threading.Event(), False
    sess["check_stop"] = stop
    ACTIVE[visitor] = stop
    t0, seen, current, message = time.perf_counter(), [], "check", "checking facts"
    try:
        held = yield from wait_in_line(stop, lambda ahead: {"state": sess, "check_status": status_html(
            CHECK_STAGES, [], None, 0, ahead_note(ahead))})
        if not held:
            yield {"state": sess, "check_status": status_html(CHECK_STAGES, [], None, 0, "stopped before it started")}
            return

        def job(progress):
            progress = jobs.stopping(progress, stop)   # analyze has no should_stop: it stops at its next stage
            bundle = take_model(cfg) or pipeline.load(cfg)
            analysis = pipeline.analyze(facts, measured, cfg, model=bundle, progress=progress)
            if not ZERO_GPU:  # a model on ZeroGPU's GPU cannot outlive this call; training loads its own
                hold_model(cfg, bundle)
            return analysis

        streaming = True   # from here the worker releases the lock and the visitor's claim
        for batch in stream(job, f"beacon-check-{visitor}", visitor):
            for kind, payload in batch:
                if kind == "progress":
                    seen.append(current)
                    current, message = payload["stage"], payload["message"]
                elif kind == "error":
                    e = payload
                    if isinstance(e, Stopped):
                        yield {"state": sess, "check_status": status_html(
                            CHECK_STAGES, seen, None, 0, "stopped: press Check facts to check again",
                            time.perf_counter() - t0)}
                        return
                    raise gr.Error(str(e) if isinstance(e, (ModelError, FactsError, ValueError))
                                   else f"Checking the facts failed ({type(e).__name__}: {e}).")
                else:
                    analysis = payload
                    df, note = review_frame(analysis, cfg)
                    yield {"analysis_state": analysis, "review_table": df, "review_note": note, "state": sess,
                           "tabs": gr.Tabs(selected="review"),
                           "check_status": status_html(CHECK_STAGES, seen, "done", 1, f"Checked {len(facts)} facts: "
                                                       "see 2 · Review", time.perf_counter() - t0)}
                    return
            frac = len(set(seen)) / len(CHECK_STAGES)
            yield {"check_status": status_html(CHECK_STAGES, seen, current, frac, message, time.perf_counter() - t0)}
    except GeneratorExit:  # the page went away: stop at the next stage
        stop.set()
        raise
    finally:
        if ACTIVE.get(visitor) is stop:
            ACTIVE.pop(visitor, None)
        if not streaming:
            jobs.release(visitor)


def stop_check(sess):
    if sess.get("check_stop") is not None:
        sess["check_stop"].set()
    return gr.Button(interactive=False)


def choices_from_ticks(analysis, natural_cfg, df) -> tuple[list[str], list[str]]:
    """keep/drop lists that turn the checks' own decisions (under natural_cfg: no keep, no drop) into the
    ticked set."""
    ticked = {str(r["id"]) for r in df.to_dict("records") if r.get("keep") in (True, "true", "True", 1)}
    natural = {r["id"] for r in pipeline.review_rows(analysis, natural_cfg) if r["kept"]}
    ids = {f.id for f in analysis.unique}
    return sorted((ticked & ids) - natural), sorted(natural - ticked)


def review_edit(analysis, df, sess, model, quant, filt, weighting):
    if analysis is None:
        return gr.skip(), "Press **Check facts** on tab 1 first.", sess
    natural = make_config({**sess, "keep": [], "drop": []}, model, quant, filt, weighting)
    sess["keep"], sess["drop"] = choices_from_ticks(analysis, natural, df)
    return (*review_frame(analysis, make_config(sess, model, quant, filt, weighting)), sess)


def review_settings(analysis, sess, model, quant, filt, weighting):
    if analysis is None:
        return gr.skip(), gr.skip()
    return review_frame(analysis, make_config(sess, model, quant, filt, weighting))


# ---------------------------------------------------------------- 3 train

def _count_facts(facts_df, analysis, cfg) -> int:
    """The facts a run would train: those the check keeps, else every non-blank row of the table."""
    if getattr(analysis, "unique", None) is not None:   # a check's analysis: its review decides
        return sum(bool(r["kept"]) for r in pipeline.review_rows(analysis, cfg))
    if facts_df is None:
        return 0
    return sum(any(str(v).strip() for v in row) for row in facts_df.fillna("").itertuples(index=False))


def _run_estimate(cfg, n: int, measured: bool):
    return estimate(n, cfg, measured=measured, model_cached=(cfg.model, cfg.quantization, cfg.trust_remote_code)
                    in _FRESH)


def estimate_note(sess, analysis, facts_df, model, quant, filt, weighting, steps, rewordings, orders, gate, guard):
    """Beside Train: how long a run of these facts with these settings will take, from Beacon's cost model
    (beacon/estimate.py). Settings that would be refused say nothing here: Train says why."""
    try:
        cfg = make_config(sess, model, quant, filt, weighting, steps=steps, guard=guard, orders=orders,
                          rewordings=rewordings, gate=gate)
    except gr.Error:
        return ""
    n = _count_facts(facts_df, analysis, cfg)
    if not n:
        return ""
    est = _run_estimate(cfg, n, measured=analysis is not None)
    what = f"{n} fact{'s' * (n != 1)}" + (" (checked)" if analysis is not None else "")
    return f"**Estimate**: training {what} takes {est.text} (up to {est.step_budget} steps)."


def _keep_inputs(sess, facts, cfg, run_dir: Path):
    """Written before anything can fail: the run folder holds what the person brought (the facts, their upload,
    their anchors, the settings). Returns the config, reading the run's own copy of the anchors."""
    save_facts(facts, run_dir / "facts.json")
    if sess.get("upload") and Path(sess["upload"]).exists():
        shutil.copyfile(sess["upload"], run_dir / f"uploaded-{Path(sess['upload']).name}")
    if sess.get("anchors_file") and Path(sess["anchors_file"]).exists():
        shutil.copyfile(sess["anchors_file"], run_dir / "anchors.txt")
        cfg = cfg.updated(anchors_file=str(run_dir / "anchors.txt"))
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    return cfg


class _Progress:
    """What a running Train shows: the stages seen, the current one and its message, the loss and recall curves,
    and the status line with its share done, seconds elapsed and Beacon's estimate of the seconds left."""

    def __init__(self, cfg, stages, facts_df, analysis, t0: float):
        """analysis: Check facts' measurement, whose stages are then done before the run starts."""
        est = _run_estimate(cfg, _count_facts(facts_df, analysis, cfg), measured=analysis is not None)
        reused = [k for k, _ in CHECK_STAGES] if analysis is not None else []
        n_orders = value(cfg, "orders")
        self.K = n_orders if n_orders > 1 and not value(cfg, "continue_from") else 1
        self.budget, self.stages, self.est, self.t0 = value(cfg, "steps"), stages, est, t0
        self.history, self.seen, self.current, self.message = [], reused, "check", "starting"
        self.entered = [self.current, time.perf_counter()]   # the stage shown and when it began
        self.order, self.last_step, self.offset = 0, 0, 0    # with K data orders, each counts its steps from 1

    def take(self, payload: dict) -> bool:
        """Note one progress record; whether it brought a training step."""
        if payload["stage"] != self.current:
            self.seen.append(self.current)
        self.current, self.message = payload["stage"], payload["message"]
        if "step" not in payload:
            return False
        if payload["step"] <= self.last_step:
            self.order, self.offset = self.order + 1, self.offset + self.last_step
        self.last_step = payload["step"]
        self.history.append({**{k: payload[k] for k in ("loss", "task", "recall")},
                             "step": self.offset + payload["step"]})
        if self.K > 1:
            self.message = f"order {self.order + 1}/{self.K}: {self.message}"
        return True

    def status(self, stopping: bool) -> str:
        frac = {"train": 0.3 + 0.55 * min(1, (self.order + self.last_step / self.budget) / self.K), "after": 0.88,
                "plots": 0.95}.get(self.current, 0.04 * len(set(self.seen)))
        note = ("<div class='note'>Stopping after this step, then measuring what was learned…</div>"
                if stopping and self.current == "train" else "")
        if self.current != self.entered[0]:
            self.entered[:] = [self.current, time.perf_counter()]
        try:
            left = remaining(self.est, self.current,
                             step=self.offset + self.last_step if self.current == "train" else None,
                             elapsed=time.perf_counter() - self.entered[1], done=self.seen)
        except ValueError:   # a stage the estimate does not know: no guess
            left = None
        return status_html(self.stages, self.seen, self.current, frac, self.message, time.perf_counter() - self.t0,
                           note, left)


def _finished(sess, report: dict, run_dir: Path, shown: _Progress) -> dict:
    """The page once a run is done: the results tab with every answer, the plots, the downloads, Ask."""
    headline, table, summary, gallery = results_view(report, run_dir, settings.RUNS.parent,
                                                     layer_count(report["config"]["model"]))
    loss, recall = curves(shown.history)
    inter_chart, dist_chart, recall_chart = charts(report)
    return {"state": sess, "headline_md": headline, "summary_md": summary, "results_table": table, "plots": gallery,
            "files_out": downloads(run_dir), "ask_prompt": ask_default(report), "ask_target": ask_target(report),
            "ask_btn": gr.Button(interactive=True), "stop_btn": gr.Button(interactive=False),
            **_export_state(run_dir), "tabs": gr.Tabs(selected="results"), "loss_plot": loss, "recall_plot": recall,
            "earlier_in": gr.Dropdown(choices=earlier_runs(sess)), "interference_chart": inter_chart,
            "distance_chart": dist_chart, "recall_chart": recall_chart,
            "train_status": status_html(shown.stages, shown.seen, "done", 1, done_message(report),
                                        time.perf_counter() - shown.t0)}


@GPU(duration=_train_seconds)
def train(sess, analysis, facts_df, model, quant, filt, weighting, steps, lr, rank, guard,
          layers_choice, layers_custom, orders, merge, earlier, rewordings=None, anchors=None, gate=None,
          request: gr.Request = None):
    facts = table_facts(facts_df, sess)
    layers = layers_spec(layers_choice, layers_custom, model)
    continue_from = earlier_run_dir(sess, earlier, model)
    if continue_from and (layers != "all" or int(orders or 1) > 1):
        raise gr.Error("Continue from trains the earlier run's adapter further, on its own layers and rank: set "
                       "Where to train to all layers and Data orders to 1, or Continue from to none.")
    cfg = make_config(sess, model, quant, filt, weighting, steps, lr, rank, guard, layers, orders, merge,
                      continue_from, rewordings, anchors, gate)
    if sess.get("anchors_file") and "anchors_file" in idle_settings(cfg):
        raise gr.Error(f"Your guard anchors ({Path(sess['anchors_file']).name}) are read only with Where the adapter "
                       "acts: on every token, and a Locality guard above 0: choose those, or clear the file.")
    measured = run_probes(sess)
    if analysis is not None and getattr(analysis, "probes", {}).get("yours") != (sess.get("probes") or None):
        analysis = None   # Check measured other probes than these: the run measures again
    stages = train_stages(cfg)
    key = visitor_of(sess, request)
    claim(key, "training")
    try:
        sweep_runs()   # room for this run within the disk budget
        run_dir = new_run_dir(sess)
        jobs.mark_running(run_dir)
    except BaseException:
        jobs.release(key)
        raise
    streaming, stop = False, threading.Event()
    try:
        cfg = _keep_inputs(sess, facts, cfg, run_dir)
        sess.update(stop=stop, run_dir=str(run_dir), report=None)
        ACTIVE[key] = stop
        t0 = time.perf_counter()
        # The analysis stays: it is plain data (no model), so a second Train on the same facts skips the measuring.
        yield {"state": sess, "loss_plot": None, "recall_plot": None,
               "stop_btn": gr.Button(interactive=True),
               "train_status": status_html(stages, [], None, 0, "starting")}

        held = yield from wait_in_line(stop, lambda ahead: {"train_status": status_html(
            stages, [], None, 0, ahead_note(ahead))})
        if not held:   # stopped while waiting; from here on the lock is stream's to release
            yield {"train_status": status_html(stages, [], None, 0, "stopped before it started")}
            return

        def job(progress):
            report = pipeline.run(facts, measured, cfg, out_dir=run_dir, progress=progress, analysis=analysis,
                                  model=take_model(cfg),   # None: run loads its own
                                  # the STOP file also reaches a run in another process (ZeroGPU)
                                  should_stop=lambda: stop.is_set() or (run_dir / "STOP").exists())
            return report.to_dict()   # rendered and kept as report.json has it; "Ask" loads the saved adapter

        shown = _Progress(cfg, stages, facts_df, analysis, t0)
        streaming = True   # from here the worker releases the lock, the visitor and the run folder
        for batch in stream(job, f"beacon-train-{sess['id']}", key, run_dir):
            new_steps = False
            for kind, payload in batch:
                if kind == "progress":
                    new_steps |= shown.take(payload)
                elif kind == "error":
                    saved = "the adapter saved so far and " if (run_dir / "adapter").exists() else ""
                    raise gr.Error(f"{payload} (your facts, {saved}the settings are kept in {run_dir.name}).")
                else:
                    sess["report"] = payload
                    yield _finished(sess, payload, run_dir, shown)
                    return
            update = {"train_status": shown.status(stop.is_set())}
            if new_steps:
                update["loss_plot"], update["recall_plot"] = curves(shown.history)
            yield update
    except GeneratorExit:  # the page went away (tab closed, cancelled): don't train on for nobody
        stop.set()
        raise
    finally:
        if ACTIVE.get(key) is stop:
            ACTIVE.pop(key, None)
        if not streaming:
            jobs.mark_running(run_dir, False)
            jobs.release(key)


def stop_run(sess):
    if sess.get("stop") is None or sess.get("report") is not None:
        return gr.skip()
    sess["stop"].set()
    if sess.get("run_dir"):
        (Path(sess["run_dir"]) / "STOP").touch()
    return gr.Button(interactive=False)


def on_unload(request: gr.Request):
    stop = ACTIVE.get(getattr(request, "session_hash", None) or "")
    if stop is not None:
        stop.set()


# ---------------------------------------------------------------- 4 results

def ask_run(prompt, run_dir, report, target, visitor: str, update):
    """`out = yield from ask_run(...)`: beacon.ask.ask on the run's adapter, as one job of the visitor. The model
    it loads is the one cached tuned model (beacon/ask.py), so it waits for the model slot like any model job,
    yielding update(jobs ahead) meanwhile; slot and visitor are freed however it ends. An empty prompt or a
    run whose adapter is gone is a gr.Error. The page's Ask and the API's ask (beacon/app/api.py) both come here."""
    claim(visitor, "question")
    held = False
    try:
        held = yield from wait_in_line(None, update)
        try:
            return ask(prompt, Path(run_dir) / "adapter", report["config"]["model"], report["config"]["quantization"],
                       24, target)
        except (ValueError, ModelError, OSError) as e:
            raise gr.Error(str(e) if not isinstance(e, OSError) else
                           "That run's adapter is gone (runs expire): train again to ask.") from None
    finally:
        if held:
            jobs._MODEL_LOCK.release()
        jobs.release(visitor)


@GPU(duration=60)
def ask_model(prompt, sess, target=None, request: gr.Request = None):
    """The base and the tuned model's answers, plain and through the chat template, and the target's
    log-probability under each (base, tuned, base chat, tuned chat, base scores, tuned scores)."""
    report, run_dir = sess.get("report"), sess.get("run_dir")
    if not report or not run_dir:
        raise gr.Error("Train first: there is no tuned model yet.")
    out = yield from ask_run(prompt, run_dir, report, target, visitor_of(sess, request),
                             lambda ahead: (gr.skip(), ahead_note(ahead), *[gr.skip()] * 4))
    no_chat = "(this model has no chat template)"
    said = lambda text: text if (text or "").strip() else "(no answer: the model ended its reply at once)"
    yield (said(out["base"]), said(out["tuned"]), said(out["base_chat"]) if out.get("base_chat") is not None else no_chat,
           said(out["tuned_chat"]) if out.get("tuned_chat") is not None else no_chat,
           ask_scores(out, "base", target), ask_scores(out, "tuned", target))


GATED_EXPORT = ("The adapter acts only where your subjects are named (the subject gate), which merged weights cannot "
                "do: Export folds the gate into the weights (the plain update closest to the gated one) and measures "
                "the file on this run's facts and probes before you download it. The adapter and its "
                "`beacon_gate.json` are in the downloads as they are.")


def _export_state(run_dir: Path) -> dict:
    """The export button and its note for a run (a gated adapter is folded into the weights on export)."""
    from beacon.method.gate import gated

    adapter = (run_dir / "adapter").is_dir()
    return {"export_btn": gr.Button(interactive=adapter), "export_status": GATED_EXPORT if gated(run_dir / "adapter") else ""}


def export_gguf(sess, request: gr.Request = None):
    """Write RUN_DIR/export/model-q8_0.gguf (the base model with the run's adapter merged in, for llama.cpp,
    Ollama, LM Studio...) and add it to the downloads. It loads the model, so it waits for the model slot."""
    report, run_dir = sess.get("report"), sess.get("run_dir")
    if not report or not run_dir:
        raise gr.Error("Train first: there is no tuned model to export yet.")
    run_dir = Path(run_dir)
    target = run_dir / "export" / "model-q8_0.gguf"
    visitor = visitor_of(sess, request)
    claim(visitor, "export")
    streaming = False
    try:
        yield from wait_in_line(None, lambda ahead: {"export_status": ahead_note(ahead).capitalize() + "…"})

        def job(progress):
            return core_export.export(run_dir, gguf=target, gguf_type="q8_0", progress=progress)

        t0 = time.perf_counter()
        streaming = True   # from here the worker releases the lock, the visitor and the run folder
        for batch in stream(job, f"beacon-export-{sess['id']}", visitor, run_dir):
            for kind, payload in batch:
                if kind == "progress":
                    yield {"export_status": f"{payload['message']}… ({time.perf_counter() - t0:.0f} s)"}
                elif kind == "error":
                    raise gr.Error(f"Export failed: {payload}" if isinstance(payload, (ValueError, ModelError, OSError))
                                   else f"Export failed ({type(payload).__name__}: {payload}).")
                else:
                    g = payload["gguf"]
                    how = (f"the subject gate folded into the weights (λ = {payload['folded']:g})"
                           if payload.get("folded") is not None else "the adapter merged in")
                    yield {"files_out": downloads(run_dir),
                           "export_status": f"Wrote **{target.name}** ({g['mb']:.0f} MB, q8_0, {how}) in "
                                            f"{payload['seconds']:.0f} s: in the downloads. Load it with llama.cpp "
                                            "(`llama-cli -m model-q8_0.gguf`) or transformers (`gguf_file=`)."
                                            + ("" if not payload.get("numbers") else " What the file keeps, read back "
                                               "from it and measured on this run's rows:\n\n"
                                               + core_export.numbers_table(payload["numbers"], by_measure=True))}
                    return
    finally:
        if not streaming:
            jobs.release(visitor)


# ---------------------------------------------------------------- recent runs (kept in the browser)
# The visitor's browser keeps (gr.BrowserState, encrypted by the server) a list of their runs: {"session",
# "run", "label"}. A page load shows it again and restores the session id; choosing one reopens its results
# from its report.json while its folder lasts. Only names of the shape Beacon writes are accepted, and only
# as RUNS/<stored session id>/<run>/: nothing the client sends is used as a path.
RECENT_MAX = 10
_SESSION_RE = re.compile(r"[0-9a-f]{12}")
_RUN_RE = re.compile(r"\d{8}-\d{6}(-\d+)?")


def recent_run_dir(entry) -> Path | None:
    """RUNS/<session>/<run> for a stored entry when both names are Beacon's and its report.json exists."""
    if not isinstance(entry, dict):
        return None
    sid, run = str(entry.get("session") or ""), str(entry.get("run") or "")
    if not (_SESSION_RE.fullmatch(sid) and _RUN_RE.fullmatch(run)):
        return None
    root = settings.RUNS.resolve()
    run_dir = (root / sid / run).resolve()
    if not run_dir.is_relative_to(root) or not (run_dir / "report.json").is_file():
        return None
    return run_dir


def recent_dropdown(recent, value=None):
    choices = [(e["label"], e["run"]) for e in recent]
    return gr.Dropdown(choices=choices, value=value, interactive=bool(choices))


def _recent_note(recent) -> str:
    n = len(recent)
    return (f"{n} recent run{'s' * (n != 1)} of yours in this browser: choose one to reopen its results." if n
            else "No recent runs of yours in this browser.")


def remember_run(sess, recent):
    """After a train: the finished run (report.json written) goes first in the browser's list, shown as the
    one on the page."""
    recent = [e for e in (recent or []) if isinstance(e, dict)]
    run_dir = Path(sess["run_dir"]) if sess.get("run_dir") else None
    if run_dir is None or not (run_dir / "report.json").is_file() or not sess.get("report"):
        return recent, gr.skip(), gr.skip()
    labels = dict(earlier_runs(sess)[1:])
    label = {v: k for k, v in labels.items()}.get(run_dir.name, f"run {run_dir.name}")
    entry = {"session": sess["id"], "run": run_dir.name, "label": label}
    recent = [entry, *[e for e in recent if e.get("run") != run_dir.name or e.get("session") != sess["id"]]]
    recent = recent[:RECENT_MAX]
    return recent, recent_dropdown(recent, run_dir.name), _recent_note(recent)


RESTORE_OUTPUTS = ("state", "recent", "recent_runs", "earlier_in", "recent_note")


def restore_runs(recent, sess):
    """Page load: the runs still on disk, listed again, and the newest one shown; the session id of the
    newest one is taken back, so Continue from and the earlier-runs list find them. Expired ones are
    dropped."""
    recent = [e for e in (recent or []) if recent_run_dir(e) is not None]
    if recent:
        sess["id"] = recent[0]["session"]
    out = {"state": sess, "recent": recent, "recent_runs": recent_dropdown(recent), "recent_note": _recent_note(recent),
           "earlier_in": gr.Dropdown(choices=earlier_runs(sess))}
    if recent:
        shown = open_run(recent[0]["run"], sess, recent)
        out.update(shown)
        if "headline_md" in shown:   # shown: the list says which run the page holds
            out.update(recent_runs=recent_dropdown(recent, recent[0]["run"]), recent_note=_recent_note(recent))
    return out


OPEN_OUTPUTS = ("state", "recent", "recent_runs", "recent_note", "headline_md", "summary_md", "results_table", "plots",
                "files_out",
                "ask_prompt", "ask_target", "ask_btn", "export_btn", "export_status", "earlier_in",
                "interference_chart", "distance_chart", "recall_chart")


def open_run(name, sess, recent):
    """Reopen one of the visitor's recent runs (by its folder name, as stored in their browser)."""
    recent = [e for e in (recent or []) if isinstance(e, dict)]
    if not name:
        return {"recent_note": "Choose a run to reopen."}
    entry = next((e for e in recent if e.get("run") == name), None)
    if entry is None:
        return {"recent_note": "That is not one of your recent runs."}
    run_dir = recent_run_dir(entry)
    if run_dir is None:
        recent = [e for e in recent if e is not entry]
        return {"recent": recent, "recent_runs": recent_dropdown(recent),
                "recent_note": f"The run {html.escape(str(entry.get('label') or name))} has expired "
                               f"(runs are kept {settings.RUN_TTL_HOURS:g} hours): removed from the list."}
    try:
        report = json.loads((run_dir / "report.json").read_text())
        headline, table, summary, gallery = results_view(report, run_dir, settings.RUNS.parent,
                                                         layer_count(report["config"]["model"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        return {"recent_note": f"That run's report could not be read ({type(e).__name__})."}
    sess.update(id=entry["session"], run_dir=str(run_dir), report=report, stop=None)
    inter_chart, dist_chart, recall_chart = charts(report)
    adapter = (run_dir / "adapter").is_dir()
    return {"state": sess, "recent": recent, "recent_note": f"Reopened {entry.get('label') or name}.",
            "headline_md": headline, "summary_md": summary, "results_table": table, "plots": gallery,
            "files_out": downloads(run_dir),
            "ask_prompt": ask_default(report), "ask_target": ask_target(report),
            "ask_btn": gr.Button(interactive=adapter), **_export_state(run_dir),
            "earlier_in": gr.Dropdown(choices=earlier_runs(sess)),
            "interference_chart": inter_chart, "distance_chart": dist_chart, "recall_chart": recall_chart}


def interference_kind(kind, sess):
    """The heatmap's colour: cosine or step effect, of the run shown."""
    report = sess.get("report")
    if not report:
        return gr.skip()
    return charts(report, kind)[0]
