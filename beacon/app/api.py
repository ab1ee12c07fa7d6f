"""The typed API a script or an agent drives: `inject` (facts in; a trained run, its numbers and files out) and
`ask` (one run's base and tuned answers to a prompt). Plain functions whose type hints and docstrings Gradio
turns into the page's API docs ("Use via API") and, with the MCP server on, into MCP tools; `register()` adds
them to the page's Blocks with `gr.api`.

They keep the page's rules: the server's limits (beacon/app/settings.py: the step budget, the model allowlist, the
facts a run takes), one model job at a time across visitors and one per visitor, in the same line as the
page's jobs (beacon/app/jobs.py, through the handlers' helpers), and run folders RUNS/<session>/<run>/ that expire
like the page's. A run's id is "<session>/<run>"; `ask` takes only ids of that shape for folders under RUNS.

No `from __future__ import annotations` here: Gradio reads the return annotation as an object.
"""
import json
from pathlib import Path
from typing import Literal, TypedDict

import gradio as gr

from beacon import pipeline
from beacon.config import describe
from beacon.estimate import gpu_seconds
from beacon.data.facts import FactsError, facts_from_rows, save_facts
from beacon.model.models import ModelError

from beacon.app import handlers, jobs, settings
from beacon.app.handlers import GPU
from beacon.app.settings import MAX_STEPS, default, make_config, new_run_dir

# The settings' own choices (beacon/config.py), so the API docs list what each one accepts.
Gate = Literal[describe("gate")["choices"]]
Weighting = Literal[describe("weighting")["choices"]]
Quantization = Literal[describe("quantization")["choices"]]
# Like the page's model jobs: all enter Gradio's queue at once and wait in Beacon's own line (beacon/app/jobs.py).
MODEL_JOBS = dict(concurrency_id="model", concurrency_limit=settings.QUEUE_SIZE + 1)


class FactRecord(TypedDict, total=False):
    """One fact: prompt and target are required; subject, relation, paraphrases (a list, or text with "|"
    between them), aliases and id are optional; other keys are kept as the fact's metadata."""
    prompt: str
    target: str
    subject: str
    relation: str
    paraphrases: list[str] | str
    aliases: list[str] | str
    id: str


def _finish(gen):
    """Run a handler's generator to its end and return its value; what it yields (notes on the jobs ahead,
    for a page) has no reader here."""
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value


def _file(path: Path) -> dict:
    """A file in Gradio's convention: the server copies it into its cache and serves it, and gradio_client
    downloads it (the caller gets a local path)."""
    return gr.FileData(path=str(path), orig_name=path.name).model_dump()


def _inject_seconds(facts, model=None, steps=None, *_, **__) -> int:
    """What a ZeroGPU Space reserves for a call, as for the page's Train."""
    try:
        steps = int(steps)
    except (TypeError, ValueError):
        steps = default("steps")
    return gpu_seconds(len(facts) if isinstance(facts, list) else 0, steps)


@GPU(duration=_inject_seconds)
def inject(facts: list[FactRecord], model: str = default("model"), steps: int = min(default("steps"), MAX_STEPS),
           lr: float = default("lr"), rank: int = default("rank"), locality_guard: float = default("locality_guard"),
           rewordings: bool = default("rewordings"), gate: Gate = default("gate"), filter: bool = default("filter"),
           weighting: Weighting = default("weighting"), quantization: Quantization = default("quantization"),
           seed: int = default("seed"), request: gr.Request = None) -> dict:
    """Teach the model new facts with a LoRA adapter. Beacon checks the facts (duplicates, contradictions,
    outliers), measures what the model answers, trains, measures again, and writes the adapter and the report.
    It waits for the server's one model slot; a few facts take well under a minute on a CPU.

    Parameters:
        facts: records {"prompt": ..., "target": ...}, optionally with subject, relation, paraphrases, id
        model: Hub id or local path of a causal LM (a server may run only some models)
        steps: step budget; training stops sooner once every fact is recalled (the server sets a maximum)
        lr: learning rate (AdamW)
        rank: LoRA rank
        locality_guard: weight of the KL term that keeps the model close to the base model (0 = off)
        rewordings: also train each fact in forms Beacon writes (subject first, a question, chat)
        gate: where the adapter acts: every token (none), from a subject's name on, or only on the name
        filter: drop outlier facts by semantic distance (at most 10% of them)
        weighting: loss weights from the semantic distance before training, from each step's, or uniform
        quantization: auto is NF4 4-bit on a CUDA GPU and full precision on a CPU
        seed: seed of the LoRA init, the data order and every sample drawn

    Returns:
        {"run": the run's id for ask, "summary": the report's headline numbers (recall_before,
        recall_after, locality...), "facts": one record per fact, before and after, "config": the
        settings used, "files": {"adapter": zip, "report": report.json, "plots": zip, "facts": json}}; the
        records' other keys are kept in report.json
    """
    fact_list = _records(facts)
    sess = handlers.new_session()
    try:   # make_config names a setting out of range; a value that is no number is refused here too
        cfg = make_config(sess, model, quantization, filter, weighting, steps, lr, rank, locality_guard,
                          rewordings=rewordings, gate=gate).updated(seed=int(seed))
    except (TypeError, ValueError) as e:
        raise gr.Error(f"Settings: {e}") from None
    measured = handlers.run_probes(sess)
    visitor = handlers.visitor_of(sess, request)
    handlers.claim(visitor, "training")
    streaming, run_dir = False, None
    try:
        handlers.sweep_runs()   # room for this run within the disk budget
        run_dir = new_run_dir(sess)
        run_id = f"{sess['id']}/{run_dir.name}"
        jobs.mark_running(run_dir)
        # Written before anything can fail: the run folder always holds what the caller sent.
        save_facts(fact_list, run_dir / "facts.json")
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        _finish(handlers.wait_in_line(None, lambda ahead: None))   # no stop: it returns holding the slot

        def job(progress):
            return pipeline.run(fact_list, measured, cfg, out_dir=run_dir, progress=progress,
                                model=handlers.take_model(cfg)).to_dict()   # None: run loads its own

        report = None
        streaming = True   # from here the worker releases the slot, the visitor and the run folder
        for batch in jobs.stream(job, f"beacon-api-{sess['id']}", visitor, run_dir):
            for kind, payload in batch:
                if kind == "error":
                    e = payload
                    raise gr.Error((str(e) if isinstance(e, (ModelError, FactsError, ValueError)) else
                                    f"The run failed ({type(e).__name__}: {e})") + f" (run {run_id}).")
                if kind == "done":
                    report = payload
    finally:
        if not streaming:
            if run_dir is not None:
                jobs.mark_running(run_dir, False)
            jobs.release(visitor)
    return _result(run_id, report, run_dir)


def _records(facts) -> list:
    """The caller's fact records as Facts; a gr.Error that names the record and the problem otherwise."""
    if not isinstance(facts, list):
        raise gr.Error('facts: expected a list of records like {"prompt": "...", "target": "..."}.')
    try:
        return facts_from_rows(facts, source="facts", item="record")
    except FactsError as e:
        raise gr.Error(str(e)) from None


def _result(run_id: str, report: dict, run_dir: Path) -> dict:
    """What inject returns. Each fact without its metadata (the records' other keys, kept in report.json):
    Gradio serves any dict in a result that is shaped like a file, and those keys are the caller's to shape."""
    files = {Path(p).name: Path(p) for p in handlers.downloads(run_dir)}
    facts_out = [{k: v for k, v in f.items() if k != "meta"} for f in report["facts"]]
    return {"run": run_id, "summary": report["summary"], "facts": facts_out, "config": report["config"],
            "files": {key: _file(files[name]) for key, name in (("adapter", "adapter.zip"), ("report", "report.json"),
                                                                ("plots", "plots.zip"), ("facts", "facts.json"))
                      if name in files}}


def run_folder(run: str) -> Path:
    """RUNS/<session>/<run> for a run id that inject returned, while its folder lasts; a gr.Error that names
    the id otherwise. Only names of the shape Beacon writes, and only under RUNS (beacon.app.handlers.recent_run_dir)."""
    session, slash, name = str(run).partition("/")
    run_dir = handlers.recent_run_dir({"session": session, "run": name}) if slash else None
    if run_dir is None:
        shown = str(run) if len(str(run)) <= 80 else str(run)[:80] + "…"
        raise gr.Error(f"Run {shown!r}: no such run on this server. A run id is what inject returned, like "
                       f"'0123456789ab/20261207-054512'; runs are deleted after {settings.RUN_TTL_HOURS:g} hours.")
    return run_dir


@GPU(duration=60)
def ask(run: str, prompt: str, target: str = "", request: gr.Request = None) -> dict:
    """Ask one run's base model and tuned model the same prompt: their answers as a plain completion and
    through the chat template, and with a target its log-probability under each. It waits for the server's
    one model slot.

    Parameters:
        run: the run's id, as inject returned it ("<session>/<run>")
        prompt: the prompt to complete, like "The CEO of Zentrix Robotics is"
        target: optional; its log-probability after the prompt is measured under each model

    Returns:
        {"run", "prompt", "target", "base", "tuned", "base_chat", "tuned_chat" (null without a chat
        template), "base_logprob", "tuned_logprob", "base_chat_logprob", "tuned_chat_logprob" (null
        without a target)}
    """
    run_dir = run_folder(run)
    try:
        report = json.loads((run_dir / "report.json").read_text())
    except (OSError, ValueError):
        raise gr.Error(f"Run {run!r}: its report could not be read.") from None
    visitor = handlers.visitor_of({"id": run}, request)
    prompt, target = str(prompt or ""), str(target or "")
    out = _finish(handlers.ask_run(prompt, run_dir, report, target, visitor, lambda ahead: None))
    return {"run": run, "prompt": prompt.strip(), "target": target.strip() or None, **out}


def register() -> None:
    """The API's endpoints on the Blocks being built: /inject and /ask (call inside `with gr.Blocks()`)."""
    gr.api(inject, api_name="inject", **MODEL_JOBS)
    gr.api(ask, api_name="ask", **MODEL_JOBS)


def undocument_loads(demo: gr.Blocks) -> None:
    """Once the Blocks is built: the load events Gradio adds itself for components whose value is a function
    (gr.State(new_session) becomes an endpoint /new_session) stay callable but leave the API page and the MCP
    tools, like the page's own events."""
    for block in demo.blocks.values():
        if getattr(block, "load_event", None):
            demo.fns[block.load_event["id"]].api_visibility = "undocumented"
