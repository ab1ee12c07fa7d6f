"""The whole injection run, top to bottom: check -> measure -> train -> measure -> report.

The CLI and the app both call `run`. It never raises for a cancel: a cancelled run still
saves the adapter it has and reports what it learned so far. The model is passed in (or loaded
here) and never rides inside a record: training adds an adapter to it in place.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from beacon.method import anchor_sources, semantic
from beacon.measure import measure_cache
from beacon.model import precision
from beacon.config import GUARD_SOURCES, InjectConfig, guard_sources  # noqa: F401 (the app reads them here
from beacon.measure.evaluate import evaluate_facts
from beacon.data.facts import Fact, load_facts
from beacon.model.models import load_model, shared_embedder as embedder
from beacon.report.records import Analysis, Report
from beacon.report.report import build_report
from beacon.method.rewordings import held_out_paraphrases, training_prompts
from beacon.method.train import attach_lora, save_adapter, train

ASSETS = Path(__file__).resolve().parent.parent / "assets"
PROBE_FILES = {"probes": "probes.csv", "general": "probes_general.csv"}


def default_probe_sets() -> dict[str, list[Fact]]:
    """Locality is measured on two sets: facts like the guard's hand-written anchors (capitals,
    symbols...) and general knowledge of other kinds (painters, authors, plurals...)."""
    return {name: load_facts(ASSETS / f) for name, f in PROBE_FILES.items() if (ASSETS / f).exists()}


def default_probes() -> list[Fact]:
    return default_probe_sets()["probes"]


def probe_sets(probes) -> dict[str, list[Fact]]:
    """None: the shipped sets; a list: one set named "probes"; a dict: as it is."""
    if probes is None:
        return default_probe_sets()
    return dict(probes) if isinstance(probes, dict) else {"probes": list(probes)}


def default_anchors() -> list[str]:
    return anchor_sources.read_anchors()


def neutral_text() -> str | None:
    """Plain prose the fluency check scores (mean NLL per token, tuned / base)."""
    path = ASSETS / "neutral.txt"
    return path.read_text(encoding="utf-8") if path.exists() else None


def load(cfg: InjectConfig):
    """(model, tokenizer, ModelInfo) for the run's settings."""
    return load_model(cfg.model, cfg.quantization, trust_remote_code=cfg.trust_remote_code)


class _Stages:
    """Wall time per stage, for the report: where a run's seconds go."""
    def __init__(self):
        self.t, self.stage, self.seconds = time.perf_counter(), None, {}

    def enter(self, stage):
        now = time.perf_counter()
        if self.stage:
            self.seconds[self.stage] = round(self.seconds.get(self.stage, 0) + now - self.t, 2)
        self.t, self.stage = now, stage


def _emitter(progress, stages: _Stages | None = None):
    def emit(stage, message, **kw):
        if stages is not None and "step" not in kw:
            stages.enter(stage)
        if progress is not None:
            progress({"stage": stage, "message": message, **kw})
    return emit


def known_measures(info, probes: dict) -> dict:
    """What the base model `info` describes answered to these probe sets, and its NLL on the neutral text, where
    an earlier run measured them (beacon/measure/measure_cache.py): the same in every run of a model."""
    known = {"probes": {}}
    for name, ps in probes.items():
        recs = measure_cache.load(measure_cache.key(info, "probes", [[p.prompt, p.target] for p in ps]))
        if isinstance(recs, list) and len(recs) == len(ps):
            known["probes"][name] = recs
    text = neutral_text()
    if text and isinstance(nll := measure_cache.load(measure_cache.key(info, "neutral", text)), float):
        known["neutral_nll"] = nll
    return known


def keep_measures(info, probes: dict, before: dict, known: dict) -> None:
    """Store what known_measures did not find, for the next run of this model."""
    for name, ps in probes.items():
        if name not in known["probes"]:
            measure_cache.save(measure_cache.key(info, "probes", [[p.prompt, p.target] for p in ps]),
                               before["probes"][name])
    text = neutral_text()
    if text and "neutral_nll" not in known and before["summary"]["neutral_nll"] is not None:
        measure_cache.save(measure_cache.key(info, "neutral", text), before["summary"]["neutral_nll"])


def _writes_bf16(model, cfg: InjectConfig) -> bool:
    """The base model writes (rewordings, anchors, sampled answers) with bf16 frozen layers where
    training would use them (beacon/model/precision.py); greedy recall is always measured without."""
    return precision.resolve(cfg.train.compute, model) == "bf16"


def analyze(facts: list[Fact], probes=None, cfg: InjectConfig | None = None, model=None, progress=None,
            stages=None) -> Analysis:
    """Everything that happens before training and does not depend on keep/drop choices:
    duplicates, conflicts, recall before, categories, semantic distances, features.
    The app shows it as the review table; `run` reuses it so the work is not done twice.
    model: (model, tokenizer, info), loaded here when None."""
    cfg = cfg or InjectConfig()
    probes = probe_sets(probes)
    emit = _emitter(progress, stages)
    emit("check", "checking facts: duplicates and conflicts")
    unique, merged = semantic.merge_duplicates(facts)
    conflicts = semantic.find_conflicts(unique, embedder(), cfg.conflict_threshold)
    emit("load", f"loading {cfg.model}")
    model, tok, info = model or load(cfg)
    emit("load", f"{info.model} on {info.device}, quantization {info.quantization}", info=info.to_dict())
    emit("before", "measuring recall before training: facts, paraphrases, forms, probes, known / update / new")
    known = known_measures(info, probes)
    before = evaluate_facts(model, tok, unique, probes, cfg.train_paraphrases, neutral_text=neutral_text(), known=known)
    keep_measures(info, probes, before, known)
    cats = semantic.categorize(model, tok, unique, [r["answer"] for r in before["facts"]], before["fact_scores"],
                               [r["recalled"] for r in before["facts"]], cfg.categorize_samples)
    dist = [s["distance"] for s in before["fact_scores"]]
    feats = semantic.embed(embedder(), [f"{f.prompt} {f.target}" for f in unique])
    return Analysis(facts=facts, probes=probes, unique=unique, merged=merged, conflicts=conflicts, before=before,
                    categories=cats, distances=dist, features=feats, model_key=(cfg.model, cfg.quantization))


def decide(analysis: Analysis, cfg: InjectConfig) -> tuple[list[int], dict[str, str], list[float]]:
    """Which facts train, why the others don't, and the loss weights. Cheap: the app calls it
    again whenever the person keeps or drops a fact by hand."""
    unique, dist = analysis.unique, analysis.distances
    reasons = {}
    for g in analysis.conflicts:
        for fid in g["ids"]:
            if fid not in cfg.keep:
                others = ", ".join(x for x in g["ids"] if x != fid)
                reasons[fid] = f"conflict: with {others} ({g['why']})"
    for fid in cfg.drop:
        reasons.setdefault(fid, "dropped by hand")
    # The filter and the weights see only the facts that survived the conflict check.
    cand = [i for i, f in enumerate(unique) if f.id not in reasons]
    if cfg.filter and cand:
        reasons.update(semantic.detrimental_filter(
            [unique[i].id for i in cand], [dist[i] for i in cand], analysis.features[cand],
            cfg.filter_strength, cfg.max_drop_fraction, protect=set(cfg.keep)))
    kept = [i for i in cand if unique[i].id not in reasons]
    return kept, reasons, semantic.loss_weights([dist[i] for i in kept], cfg.train.weighting)


def review_rows(analysis: Analysis, cfg: InjectConfig) -> list[dict]:
    """One row per unique fact for the review table."""
    kept, reasons, weights = decide(analysis, cfg)
    w = {analysis.unique[i].id: x for i, x in zip(kept, weights)}
    rows = []
    for i, f in enumerate(analysis.unique):
        b = analysis.before["facts"][i]
        rows.append({"id": f.id, "prompt": f.prompt, "target": f.target, "kept": f.id in w,
                     "reason": reasons.get(f.id) or "", "category": analysis.categories[i]["category"],
                     "semantic_distance": analysis.distances[i], "weight": w.get(f.id),
                     "answer_before": b["answer"], "recall_before": b["recalled"]})
    return rows


def _load_earlier(run_dir) -> list[Fact]:
    """The facts an earlier run kept, from its report.json, to watch what they lose."""
    path = Path(run_dir) / "report.json"
    if not path.exists() or not (Path(run_dir) / "adapter").exists():
        raise FileNotFoundError(f"{run_dir}: not a Beacon run folder (needs report.json and adapter/)")
    rep = json.loads(path.read_text())
    return [Fact(id=r["id"], prompt=r["prompt"], target=r["target"]) for r in rep["facts"] if r["kept"]]


def _model_rewordings(model, tok, kept_facts, cfg, emit) -> dict:
    """Rewordings the base model writes for each kept fact, less any that is a near copy (cosine >= 0.9)
    of one of the fact's held-out paraphrases: those measure generalisation and are never trained."""
    none = {"prompts": [[] for _ in kept_facts], "left_out": 0}
    if not (cfg.rewordings and cfg.model_rewordings > 0 and kept_facts):
        return none
    from beacon.method.rewordings import model_rewordings

    emit("rewordings", "the base model rewrites each fact in its own words")
    left_out = []

    def avoid(i, prompts):
        held = held_out_paraphrases(kept_facts[i], cfg.train_paraphrases)
        if not held:
            return []
        sim = semantic.embed(embedder(), prompts) @ semantic.embed(embedder(), held).T
        bad = [p for p, row in zip(prompts, sim) if row.max() >= 0.9]
        left_out.extend(bad)
        return bad

    prompts = model_rewordings(model, tok, kept_facts, cfg.model_rewordings, cfg.train.seed, avoid)
    return {"prompts": prompts, "left_out": len(left_out)}


def _where_to_train(model, tok, kept_facts, cfg, emit):
    """(layers to train or None for all, the layer selection's record or None)."""
    from beacon.method.layers import parse_layers, select_layers

    if cfg.layers == "auto" and kept_facts:
        emit("layers", "choosing layers from the logit-lens transition")
        sel = select_layers(model, tok, kept_facts)
        return sel["chosen"], sel
    return parse_layers(cfg.layers, model.config.num_hidden_layers), None


def _adapter(model, tok, info, cfg: InjectConfig, layers):
    """(the model with the adapter to train, the earlier run's facts and their recall before, or None): a new
    LoRA adapter, or with continue_from, an earlier run's adapter (and its gate) trained further."""
    if not cfg.continue_from:
        return attach_lora(model, cfg.train, "nf4" in info.quantization, layers), None
    # sequential injection: train on top of an earlier run's adapter, watching its facts
    from peft import PeftModel

    from beacon.method.gate import load_gate

    earlier = {"facts": _load_earlier(cfg.continue_from)}
    model = PeftModel.from_pretrained(model, str(Path(cfg.continue_from) / "adapter"), is_trainable=True)
    if (earlier_gate := load_gate(tok, Path(cfg.continue_from) / "adapter")) is not None:
        if cfg.train.gate != earlier_gate.kind:
            raise ValueError(f"{cfg.continue_from} trained behind the subject gate: continue it with gate "
                             f"'{earlier_gate.kind}'")
        earlier_gate.attach(model)   # its facts are measured as they were trained
    earlier["before"] = evaluate_facts(model, tok, earlier["facts"], forms=False)["facts"]
    return model, earlier


def _interference(model, tok, kept_facts, cfg: InjectConfig, emit) -> dict | None:
    if not cfg.interference or len(kept_facts) < 2:
        return None
    emit("interference", "measuring interference between facts")
    from beacon.measure.interference import interference

    sub = kept_facts[:cfg.interference_max_facts]
    return {"ids": [f.id for f in sub], **interference(model, tok, sub, cfg.train.lr)}


def _gate(model, tok, facts, cfg: InjectConfig):
    """The subject gate on `facts`' subjects, attached to the model; None with gate "none"."""
    if cfg.train.gate == "none":
        return None
    from beacon.method.gate import SubjectGate

    return SubjectGate.for_facts(tok, facts, cfg.train.gate, cfg.train.short_names).attach(model)


def _wordings(tok, kept_facts, written: dict, gate, cfg: InjectConfig) -> list[list[str]]:
    """Each kept fact's training wordings: its prompt, Beacon's rewordings and the base model's own; behind the
    gate, less those that do not name the subject (they cannot move)."""
    prompts = [training_prompts(f, tok, forms=None if cfg.rewordings else (), own_paraphrases=cfg.train_paraphrases,
                                seed=cfg.train.seed) + extra
               for f, extra in zip(kept_facts, written["prompts"])]
    if gate is not None:
        prompts = [[p for j, p in enumerate(ps) if j == 0 or gate.covers(tok, p)] for ps in prompts]
    return prompts


def _measure_after(model, tok, analysis: Analysis, gate, cfg: InjectConfig, earlier: dict | None) -> dict:
    """evaluate_facts after training, and the earlier run's facts' recall (earlier["after"]) when continuing one.
    Behind the gate a text that names no kept subject runs through the base model exactly: its "after" is its
    "before", copied and marked unchanged (a test checks the claim on the ungated path, where it fails)."""
    unchanged = (lambda text: not gate.covers(tok, text)) if gate is not None else None
    after = evaluate_facts(model, tok, analysis.unique, analysis.probes, cfg.train_paraphrases,
                           neutral_text=neutral_text(), about_reference=analysis.before.get("subject_texts"),
                           earlier=analysis.before, unchanged=unchanged)
    if earlier:
        earlier["after"] = evaluate_facts(model, tok, earlier["facts"], forms=False)["facts"]
    return after


def _measured(facts, probes, cfg: InjectConfig, model, analysis: Analysis | None, progress, stages):
    """(model, analysis): the model loaded unless given, and the measurement before training unless `analysis`
    holds one made on the same model."""
    if cfg.continue_from and (cfg.layers != "all" or cfg.orders > 1):
        # The earlier adapter fixes the layers and rank trained; merging orders would start from scratch.
        raise ValueError("continue-from trains the earlier run's adapter as it is: use it with layers 'all' "
                         "and a single data order")
    if analysis is not None and analysis.model_key != (cfg.model, cfg.quantization):
        analysis = None  # measured on another model: measure again
    model = model or load(cfg)
    if analysis is None:
        analysis = analyze(facts, probes, cfg, model, progress, stages)
    return model, analysis


def run(facts: list[Fact], probes=None, cfg: InjectConfig | None = None, out_dir=None, progress=None,
        should_stop=None, model=None, analysis: Analysis | None = None) -> Report:
    """Inject `facts`; returns the Report and, with out_dir, writes report.json, adapter/ and plots/.
    model: (model, tokenizer, info) to train on (it gets the adapter in place), loaded when None;
    analysis: from `analyze` on the same facts, probes and model, skips the measuring before."""
    stages, t_start = _Stages(), time.perf_counter()
    emit = _emitter(progress, stages)
    cfg = cfg or InjectConfig()
    out = Path(out_dir) if out_dir else None
    model, analysis = _measured(facts, probes, cfg, model, analysis, progress, stages)
    model, tok, info = model
    unique, probes = analysis.unique, analysis.probes

    # 1. check: which facts train, with which weights
    kept, reasons, weights = decide(analysis, cfg)
    kept_facts = [unique[i] for i in kept]
    emit("check", f"{len(kept)} of {len(analysis.facts)} facts kept for training",
         kept=[f.id for f in kept_facts], reasons=dict(reasons))

    # 2. what training needs: layers, guard anchors, rewordings, the adapter
    layers, layer_info = _where_to_train(model, tok, kept_facts, cfg, emit)
    with precision.frozen_bf16(model, _writes_bf16(model, cfg)):
        anchors, near, guard_info = anchor_sources.build_anchors(
            model, tok, kept_facts, probes, cfg, embedder(), emit, [analysis.before["facts"][i]["answer"] for i in kept])
        written = _model_rewordings(model, tok, kept_facts, cfg, emit)
    model, earlier = _adapter(model, tok, info, cfg, layers)
    gate = _gate(model, tok, kept_facts + (earlier["facts"] if earlier else []), cfg)
    inter = _interference(model, tok, kept_facts, cfg, emit)

    # 3. train, tracking each fact's semantic distance
    u = semantic.target_vectors(model, tok, kept_facts)
    trajectories = {f.id: [[0, analysis.distances[i]]] for f, i in zip(kept_facts, kept)}

    def track(step, idx, h):
        for i, x in zip(idx, semantic.cosine_distance(h, u[idx]).tolist()):
            trajectories[kept_facts[i].id].append([step, round(x, 4)])

    def on_step(rec):
        settle = "  (every fact recalled: settle step)" if rec["settling"] else ""
        emit("train", f"step {rec['step']}/{cfg.train.steps}  loss {rec['loss']:.3f}  recall {rec['recall']:.0%}"
                      f"{settle}", **rec, ids=[f.id for f in kept_facts])

    prompts = _wordings(tok, kept_facts, written, gate, cfg)
    compute = precision.resolve(cfg.train.compute, model)
    emit("train", f"training LoRA (rank {cfg.train.rank}) on {len(kept_facts)} facts, {sum(map(len, prompts))} "
                  "wordings" + (f", layers {layers[0]}-{layers[-1]}" if layers else ""))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    merge_info = None
    if cfg.orders > 1 and not earlier and len(kept_facts) > 1:
        from beacon.method.merge import train_orders_and_merge
        result, merge_info = train_orders_and_merge(model, tok, kept_facts, weights, cfg, layers, (anchors, near),
                                                    on_step, should_stop, prompts=prompts)
    else:
        result = train(model, tok, kept_facts, weights, cfg.train, anchors=anchors, near=near,
                       on_step=on_step, should_stop=should_stop, hidden_hook=track, prompts=prompts)
    if out is not None:  # saved before anything else can fail: the trained adapter is never lost
        save_adapter(model, out / "adapter")

    # 4. measure again
    emit("after", "measuring recall after training")
    after = _measure_after(model, tok, analysis, gate, cfg, earlier)
    dist_after = [s["distance"] for s in after["fact_scores"]]

    # 5. the report
    report = build_report(cfg, info, analysis, kept_facts, reasons, weights, after, dist_after, result, compute=compute,
                          prompts=prompts, written=written, trajectories=trajectories, interference=inter,
                          guard=guard_info, layers=layers, layer_info=layer_info, merge=merge_info, earlier=earlier)
    stages.enter("report")
    report.summary["stage_seconds"] = stages.seconds
    report.summary["total_seconds"] = round(time.perf_counter() - t_start, 2)
    if out is not None:
        write_outputs(report, out, cfg, progress)
    s = report.summary
    emit("done", f"recall {s['recall_before']} -> {s['recall_after']}, "
                 f"locality {s['locality_before']} -> {s['locality_after']}")
    return report


def write_outputs(report: Report, out: Path, cfg: InjectConfig, progress=None) -> None:
    """plots/*.png and report.json (written whole or not at all)."""
    out.mkdir(parents=True, exist_ok=True)
    if cfg.plots:
        _emitter(progress)("plots", "drawing plots")
        from beacon.report.plots import draw_all
        report.plots = [str(p.relative_to(out)) for p in draw_all(report.to_dict(), out / "plots")]
    tmp = out / "report.json.partial"
    tmp.write_text(json.dumps(report.to_dict(), indent=1, ensure_ascii=False))
    tmp.replace(out / "report.json")
