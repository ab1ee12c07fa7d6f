"""The whole injection run, top to bottom: check -> measure -> train -> measure -> report.

The CLI and the app both call `run`. It never raises for a cancel: a cancelled run still
saves the adapter it has and reports what it learned so far.
"""
from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import torch

from . import guard, semantic
from .config import InjectConfig
from .evaluate import evaluate_facts
from .facts import Fact
from .models import load_embedder, load_model, peak_memory_mb
from .rewordings import held_out_paraphrases, training_prompts
from .train import attach_lora, save_adapter, train

ASSETS = Path(__file__).resolve().parent.parent / "assets"


PROBE_FILES = {"probes": "probes.csv", "general": "probes_general.csv"}


def default_probe_sets() -> dict[str, list[Fact]]:
    """Locality is measured on two sets: facts like the guard's hand-written anchors (capitals,
    symbols...) and general knowledge of other kinds (painters, authors, plurals...)."""
    from .facts import load_facts

    return {name: load_facts(ASSETS / f) for name, f in PROBE_FILES.items() if (ASSETS / f).exists()}


def default_probes() -> list[Fact]:
    return default_probe_sets()["probes"]


def probe_sets(probes) -> dict[str, list[Fact]]:
    """None: the shipped sets; a list: one set named "probes"; a dict: as it is."""
    if probes is None:
        return default_probe_sets()
    return dict(probes) if isinstance(probes, dict) else {"probes": list(probes)}


def default_anchors() -> list[str]:
    return guard.read_anchors()


def neutral_text() -> str | None:
    """Plain prose the fluency check scores (mean NLL per token, tuned / base)."""
    path = ASSETS / "neutral.txt"
    return path.read_text(encoding="utf-8") if path.exists() else None


@functools.lru_cache(maxsize=1)
def embedder():
    return load_embedder()


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


def analyze(facts: list[Fact], probes: list[Fact] | None = None, cfg: InjectConfig | None = None,
            progress=None, model_bundle=None, stages=None) -> dict:
    """Everything that happens before training and does not depend on keep/drop choices:
    duplicates, conflicts, recall before, categories, semantic distances, features.
    The app shows it as the review table; `run` reuses it so the work is not done twice."""
    cfg = cfg or InjectConfig()
    probes = probe_sets(probes)
    emit = _emitter(progress, stages)
    emit("check", "checking facts: duplicates and conflicts")
    unique, merged = semantic.merge_duplicates(facts)
    conflicts = semantic.find_conflicts(unique, embedder(), cfg.conflict_threshold)
    emit("load", f"loading {cfg.model}")
    model, tok, info = model_bundle or load_model(cfg.model, cfg.quantization,
                                                  trust_remote_code=cfg.trust_remote_code)
    emit("load", f"{info.model} on {info.device}, quantization {info.quantization}", info=info.to_dict())
    emit("before", "measuring recall before training")
    before = evaluate_facts(model, tok, unique, probes, cfg.train_paraphrases, neutral_text=neutral_text())
    emit("categorize", "sampling answers: known, update or new")
    cats = semantic.categorize(model, tok, unique, [r["answer"] for r in before["facts"]],
                               samples=cfg.categorize_samples, seed=cfg.seed)
    emit("distance", "semantic distances")
    dist = semantic.semantic_distances(model, tok, unique)
    feats = semantic.embed(embedder(), [f"{f.prompt} {f.target}" for f in unique])
    return {"facts": facts, "probes": probes, "unique": unique, "merged": merged, "conflicts": conflicts,
            "before": before, "categories": cats, "distances": dist, "features": feats,
            "model_key": (cfg.model, cfg.quantization), "_bundle": (model, tok, info)}


def decide(analysis: dict, cfg: InjectConfig) -> tuple[list[int], dict[str, str], list[float]]:
    """Which facts train, why the others don't, and the loss weights. Cheap: the app calls it
    again whenever the person keeps or drops a fact by hand."""
    unique, dist = analysis["unique"], analysis["distances"]
    reasons = {}
    for g in analysis["conflicts"]:
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
            [unique[i].id for i in cand], [dist[i] for i in cand], analysis["features"][cand],
            cfg.filter_strength, cfg.max_drop_fraction, protect=set(cfg.keep)))
    kept = [i for i in cand if unique[i].id not in reasons]
    return kept, reasons, semantic.loss_weights([dist[i] for i in kept], cfg.weighting)


def review_rows(analysis: dict, cfg: InjectConfig) -> list[dict]:
    """One row per unique fact for the review table."""
    kept, reasons, weights = decide(analysis, cfg)
    w = {analysis["unique"][i].id: x for i, x in zip(kept, weights)}
    rows = []
    for i, f in enumerate(analysis["unique"]):
        b = analysis["before"]["facts"][i]
        rows.append({"id": f.id, "prompt": f.prompt, "target": f.target, "kept": f.id in w,
                     "reason": reasons.get(f.id) or "", "category": analysis["categories"][i]["category"],
                     "semantic_distance": analysis["distances"][i], "weight": w.get(f.id),
                     "answer_before": b["answer"], "recall_before": b["recalled"]})
    return rows


def _load_earlier(run_dir) -> dict:
    """The facts an earlier run kept, from its report.json, to watch what they lose."""
    path = Path(run_dir) / "report.json"
    if not path.exists() or not (Path(run_dir) / "adapter").exists():
        raise FileNotFoundError(f"{run_dir}: not a Beacon run folder (needs report.json and adapter/)")
    rep = json.loads(path.read_text())
    return {"facts": [Fact(id=r["id"], prompt=r["prompt"], target=r["target"]) for r in rep["facts"] if r["kept"]]}


def _para_records(before, after, prompts):
    return [{"prompt": p, "recalled_before": b["recalled"], "recalled_after": a["recalled"],
             "answer_before": b["answer"], "answer_after": a["answer"]}
            for p, b, a in zip(prompts, before, after)]


def _form_records(before, after, i) -> dict:
    """The question and chat forms of fact i, before and after (None where not measured)."""
    out = {}
    for form in ("question", "chat"):
        b = before[form][i] if before[form] else None
        a = after[form][i] if after[form] else None
        out[f"{form}_before"] = b and b["recalled"]
        out[f"{form}_after"] = a and a["recalled"]
        out[f"{form}_answer_after"] = a and a["answer"]
    return out


def _model_rewordings(model, tok, kept_facts, cfg, emit) -> dict:
    """Rewordings the base model writes for each kept fact, less any that is a near copy (cosine >= 0.9)
    of one of the fact's held-out paraphrases: those measure generalisation and are never trained."""
    none = {"prompts": [[] for _ in kept_facts], "left_out": 0}
    if not (cfg.rewordings and cfg.model_rewordings > 0 and kept_facts):
        return none
    from .rewordings import model_rewordings
    from .semantic import embed

    emit("rewordings", "the base model rewrites each fact in its own words")
    left_out = []

    def avoid(i, prompts):
        held = held_out_paraphrases(kept_facts[i], cfg.train_paraphrases)
        if not held:
            return []
        sim = embed(embedder(), prompts) @ embed(embedder(), held).T
        bad = [p for p, row in zip(prompts, sim) if row.max() >= 0.9]
        left_out.extend(bad)
        return bad

    prompts = model_rewordings(model, tok, kept_facts, cfg.model_rewordings, cfg.seed, avoid)
    return {"prompts": prompts, "left_out": len(left_out)}


GUARD_SOURCES = ("neighbours", "sampled", "file")


def guard_sources(spec: str) -> list[str]:
    """"neighbours,sampled" -> ["neighbours", "sampled"]; an unknown source is an error that names it."""
    names = [x.strip() for x in spec.split(",") if x.strip()]
    bad = [x for x in names if x not in GUARD_SOURCES]
    if bad or not names:
        raise ValueError(f"guard anchors {spec!r}: expected a comma-separated list of {', '.join(GUARD_SOURCES)}")
    return names


def _guard_anchors(model, tok, kept_facts, probes, cfg, emit):
    """The guard's anchors: neighbours written by the base model and/or the shipped file. Anchors that
    restate a probe are left out so that locality is measured on knowledge the guard did not see;
    those that restate a kept fact are left out so the guard does not hold the old answer."""
    if cfg.locality_guard <= 0 or not kept_facts:  # no guard, no anchors to make or embed
        return [], [], None
    pool, sources = [], guard_sources(cfg.guard_anchors)
    if "neighbours" in sources:
        emit("guard", "asking the base model for neighbour facts to protect")
        pool += guard.neighbour_anchors(model, tok, kept_facts, cfg.neighbours_per_fact, cfg.seed)
    if "sampled" in sources:
        emit("guard", "sampling the base model's own text to protect")
        pool += guard.sampled_anchors(model, tok, cfg.sampled_anchors, seed=cfg.seed)
    if "file" in sources:
        pool += default_anchors()
    bad = set(guard.restating(embedder(), pool, [p for ps in probes.values() for p in ps]))
    pool = [a for i, a in enumerate(pool) if i not in bad]
    anchors, near, excluded = guard.guard_anchors(embedder(), kept_facts, pool)
    return anchors, near, {"source": cfg.guard_anchors, "anchors": len(anchors), "all": anchors,
                           "near": [anchors[i] for i in near], "excluded": excluded,
                           "restating_probes_left_out": len(bad), "near_share": cfg.guard_near}


def _frac(xs):
    xs = list(xs)
    return round(sum(xs) / len(xs), 4) if xs else None


def run(facts: list[Fact], probes: list[Fact] | None = None, cfg: InjectConfig | None = None,
        out_dir=None, progress=None, should_stop=None, model_bundle=None, analysis=None) -> dict:
    """Inject `facts`; returns the report dict and, with out_dir, writes report.json, adapter/
    and plots/. model_bundle=(model, tok, info) skips loading (tests, benchmarks);
    analysis (from `analyze` on the same facts, probes and model) skips the measuring before."""
    stages = _Stages()
    emit = _emitter(progress, stages)
    cfg = cfg or InjectConfig()
    if cfg.continue_from and (cfg.layers != "all" or cfg.orders > 1):
        # The earlier adapter fixes the layers and rank trained; merging orders would start from scratch.
        raise ValueError("continue-from trains the earlier run's adapter as it is: use it with layers 'all' "
                         "and a single data order")
    t_start = time.perf_counter()
    out = Path(out_dir) if out_dir else None

    if analysis is None or analysis["model_key"] != (cfg.model, cfg.quantization):
        analysis = analyze(facts, probes, cfg, progress, model_bundle, stages)
    facts, probes, unique = analysis["facts"], analysis["probes"], analysis["unique"]
    merged, conflicts, before = analysis["merged"], analysis["conflicts"], analysis["before"]
    cats, dist = analysis["categories"], analysis["distances"]
    # The model is used once: training adds an adapter to it in place.
    model, tok, info = analysis.pop("_bundle", None) or load_model(
        cfg.model, cfg.quantization, trust_remote_code=cfg.trust_remote_code)
    quantized = "nf4" in info.quantization

    kept, reasons, weights = decide(analysis, cfg)
    kept_facts = [unique[i] for i in kept]
    emit("check", f"{len(kept)} of {len(facts)} facts kept for training",
         kept=[f.id for f in kept_facts], reasons=dict(reasons))

    # Where to train: every layer, the semantic choice, or the user's list.
    layer_info = None
    if cfg.layers == "auto" and kept_facts:
        from .layers import select_layers
        emit("layers", "choosing layers from the logit-lens transition")
        layer_info = select_layers(model, tok, kept_facts)
        layers = layer_info["chosen"]
    else:
        from .layers import parse_layers
        layers = parse_layers(cfg.layers, model.config.num_hidden_layers)
    tcfg = cfg.train_config(layers)

    anchors, near, guard_info = _guard_anchors(model, tok, kept_facts, probes, cfg, emit)
    written = _model_rewordings(model, tok, kept_facts, cfg, emit)

    # Sequential injection: continue from an earlier run's adapter, watching its facts.
    earlier = _load_earlier(cfg.continue_from) if cfg.continue_from else None
    if earlier:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, str(Path(cfg.continue_from) / "adapter"), is_trainable=True)
        earlier["before"] = evaluate_facts(model, tok, earlier["facts"], forms=False)["facts"]
    else:
        model = attach_lora(model, tcfg, quantized)

    inter = None
    if cfg.interference and len(kept_facts) >= 2:
        emit("interference", "measuring interference between facts")
        from .interference import interference
        sub = kept_facts[:cfg.interference_max_facts]
        inter = {"ids": [f.id for f in sub], **interference(model, tok, sub, cfg.lr)}

    u = semantic.target_vectors(model, tok, kept_facts)
    trajectories = {f.id: [[0, dist[i]]] for f, i in zip(kept_facts, kept)}

    def track(step, idx, h):
        d = semantic.cosine_distance(h, u[idx]).tolist()
        for i, x in zip(idx, d):
            trajectories[kept_facts[i].id].append([step, round(x, 4)])

    def on_step(rec):
        settle = "  (every fact recalled: settle step)" if rec["settling"] else ""
        emit("train", f"step {rec['step']}/{cfg.steps}  loss {rec['loss']:.3f}  recall {rec['recall']:.0%}{settle}",
             **rec, ids=[f.id for f in kept_facts])

    prompts = [training_prompts(f, tok, forms=None if cfg.rewordings else (), own_paraphrases=cfg.train_paraphrases,
                                seed=cfg.seed) + extra for f, extra in zip(kept_facts, written["prompts"])]
    emit("train", f"training LoRA (rank {cfg.rank}) on {len(kept_facts)} facts, {sum(map(len, prompts))} wordings"
                  + (f", layers {layers[0]}-{layers[-1]}" if layers else ""))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    merge_info = None
    if cfg.orders > 1 and not earlier and len(kept_facts) > 1:
        from .merge import train_orders_and_merge
        model, result, merge_info = train_orders_and_merge(
            model, tok, kept_facts, weights, tcfg, cfg, quantized, (anchors, near), on_step, should_stop,
            lambda: load_model(cfg.model, cfg.quantization, trust_remote_code=cfg.trust_remote_code)[0], prompts=prompts)
    else:
        result = train(model, tok, kept_facts, weights, tcfg, anchors=anchors, near=near,
                       on_step=on_step, should_stop=should_stop, hidden_hook=track, prompts=prompts)
    if out is not None:  # saved before anything else can fail: the trained adapter is never lost
        save_adapter(model, out / "adapter")

    emit("after", "measuring recall after training")
    after = evaluate_facts(model, tok, unique, probes, cfg.train_paraphrases, neutral_text=neutral_text())
    dist_after = semantic.semantic_distances(model, tok, unique)

    # ---------------------------------------------------------------- the report
    kept_ids = {f.id for f in kept_facts}
    wmap = {f.id: w for f, w in zip(kept_facts, weights)}
    records, by_id = [], {}
    for i, f in enumerate(unique):
        b, a = before["facts"][i], after["facts"][i]
        rec = {"id": f.id, "prompt": f.prompt, "target": f.target, "subject": f.subject, "relation": f.relation,
               "kept": f.id in kept_ids, "reason": reasons.get(f.id), **cats[i],
               "semantic_distance": dist[i], "distance_after": dist_after[i],
               "drift": round(dist_after[i] - dist[i], 4), "weight": wmap.get(f.id),
               "recall_before": b["recalled"], "recall_after": a["recalled"],
               "answer_before": b["answer"], "answer_after": a["answer"],
               "logprob_before": b["logprob"], "logprob_after": a["logprob"],
               "rank_before": b["rank"], "rank_after": a["rank"],
               "paraphrases": _para_records(before["paraphrases"][i], after["paraphrases"][i],
                                            held_out_paraphrases(f, cfg.train_paraphrases)),
               **_form_records(before, after, i),
               "meta": f.meta}
        by_id[f.id] = rec
    for f in facts:  # one record per input fact, merged duplicates included
        if f.id in merged:
            records.append({**by_id[merged[f.id]], "id": f.id, "prompt": f.prompt, "target": f.target,
                            "kept": False, "reason": f"merged: duplicate of {merged[f.id]}"})
        else:
            records.append(by_id[f.id])

    kept_recs = [by_id[f.id] for f in kept_facts]
    paras_b = [p["recalled_before"] for r in kept_recs for p in r["paraphrases"]]
    paras_a = [p["recalled_after"] for r in kept_recs for p in r["paraphrases"]]
    forms = {f"{form}_{when}": _frac(r[f"{form}_{when}"] for r in kept_recs if r[f"{form}_{when}"] is not None)
             for form in ("question", "chat") for when in ("before", "after")}
    loc_b, loc_a = before["summary"]["locality"], after["summary"]["locality"]
    nll_b, nll_a = before["summary"]["neutral_nll"], after["summary"]["neutral_nll"]
    summary = {
        "facts_in": len(facts), "facts_kept": len(kept_facts), "duplicates_merged": len(merged),
        "conflicts": len(conflicts), "dropped": len(reasons),
        "recall_before": _frac(r["recall_before"] for r in kept_recs),
        "recall_after": _frac(r["recall_after"] for r in kept_recs),
        "paraphrase_before": _frac(paras_b), "paraphrase_after": _frac(paras_a), **forms,
        # the first probe set is "locality"; every other set has its own keys (locality_general_after, ...)
        "locality_before": next(iter(loc_b.values()), None), "locality_after": next(iter(loc_a.values()), None),
        **{f"locality_{k}_{w}": v[k] for w, v in (("before", loc_b), ("after", loc_a)) for k in list(loc_b)[1:]},
        "probe_sets": {k: len(v) for k, v in probes.items()},
        "neutral_nll_before": nll_b, "neutral_nll_after": nll_a,
        "neutral_nll_ratio": round(nll_a / nll_b, 4) if nll_a and nll_b else None,
        "training_wordings": sum(map(len, prompts)), "rewordings": cfg.rewordings,
        "model_rewordings": sum(map(len, written["prompts"])),
        "model_rewordings_left_out": written["left_out"],
        "guard_anchors": cfg.guard_anchors if cfg.locality_guard > 0 else None,
        "steps": result.steps, "stopped": result.stopped, "train_seconds": result.seconds,
        "seconds_per_step": round(result.seconds / max(result.steps, 1), 3),
        "device": info.device, "quantization": info.quantization, "model": info.model,
        "model_source": info.source, "peak_memory_mb": peak_memory_mb(info.device),
        "weighting": cfg.weighting, "filter": cfg.filter, "locality_guard": cfg.locality_guard,
        "layers": layers or "all", "orders": cfg.orders, "merge": cfg.merge if cfg.orders > 1 else None,
    }
    report = {
        "summary": summary, "config": cfg.to_dict(), "model_info": info.to_dict(), "facts": records,
        "probes": [{"id": p.id, "set": name, "prompt": p.prompt, "target": p.target,
                    "recalled_before": b["recalled"], "recalled_after": a["recalled"],
                    "answer_before": b["answer"], "answer_after": a["answer"]}
                   for name, ps in probes.items()
                   for p, b, a in zip(ps, before["probes"][name], after["probes"][name])],
        "conflicts": conflicts, "duplicates": merged,
        "training": {"history": result.history,
                     "fact_curves": {f.id: c for f, c in zip(kept_facts, result.fact_curves)},
                     "distance_trajectories": trajectories},
        "interference": inter, "guard": guard_info,
        "training_prompts": {f.id: p for f, p in zip(kept_facts, prompts)},
        "layers": layer_info, "chosen_layers": layers, "merge": merge_info,
    }
    if earlier:
        now = evaluate_facts(model, tok, earlier["facts"], forms=False)["facts"]
        report["earlier_facts"] = {
            "from": str(cfg.continue_from), "ids": [f.id for f in earlier["facts"]],
            "recall_before": _frac(r["recalled"] for r in earlier["before"]),
            "recall_after": _frac(r["recalled"] for r in now),
            "lost": [f.id for f, b, a in zip(earlier["facts"], earlier["before"], now) if b["recalled"] and not a["recalled"]]}
        summary["earlier_recall_before"] = report["earlier_facts"]["recall_before"]
        summary["earlier_recall_after"] = report["earlier_facts"]["recall_after"]
    stages.enter("report")
    summary["stage_seconds"] = stages.seconds
    summary["total_seconds"] = round(time.perf_counter() - t_start, 2)
    if out is not None:
        write_outputs(report, out, cfg, progress)
    emit("done", f"recall {summary['recall_before']} -> {summary['recall_after']}, "
                            f"locality {summary['locality_before']} -> {summary['locality_after']}")
    report["_model"] = (model, tok)  # for "ask the model"; stripped before writing
    return report


def write_outputs(report: dict, out: Path, cfg: InjectConfig, progress=None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if cfg.plots:
        _emitter(progress)("plots", "drawing plots")
        from .plots import draw_all
        report["plots"] = [str(p.relative_to(out)) for p in draw_all(report, out / "plots")]
    clean = {k: v for k, v in report.items() if not k.startswith("_")}
    tmp = out / "report.json.partial"
    tmp.write_text(json.dumps(clean, indent=1, ensure_ascii=False))
    tmp.replace(out / "report.json")
