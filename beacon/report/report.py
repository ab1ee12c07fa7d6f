"""The report of a run: every fact before and after, the probes, and the summary numbers.

Recall, paraphrase, question and chat are fractions of the kept facts; locality is the fraction of
each probe set still answered; the first probe set is `locality_*`, every other set has keys of its
own (`locality_general_after`, ...).
"""
from __future__ import annotations

from beacon.model.models import peak_memory_mb
from beacon.report.records import Report
from beacon.method.rewordings import held_out_paraphrases


def share(xs):
    """The share of true values in xs (4 places), None for none."""
    xs = list(xs)
    return round(sum(xs) / len(xs), 4) if xs else None


def _para_records(before, after, prompts):
    return [{"prompt": p, "recalled_before": b["recalled"], "recalled_after": a["recalled"],
             "answer_before": b["answer"], "answer_after": a["answer"], "crossed_before": b.get("crossed"),
             "crossed_after": a.get("crossed")}
            for p, b, a in zip(prompts, before, after)]


def _form_records(before, after, i) -> dict:
    """The question and chat forms of fact i, before and after (None where not measured)."""
    out = {}
    for form in ("question", "chat"):
        b = before[form][i] if before[form] else None
        a = after[form][i] if after[form] else None
        out[f"{form}_before"] = b and b["recalled"]
        out[f"{form}_after"] = a and a["recalled"]
        out[f"{form}_answer_before"] = b and b["answer"]
        out[f"{form}_answer_after"] = a and a["answer"]
        out[f"{form}_crossed_before"] = b and b.get("crossed")
        out[f"{form}_crossed_after"] = a and a.get("crossed")
    return out


def fact_records(analysis, kept_facts, reasons, weights, after, dist_after, own_paraphrases) -> list[dict]:
    """One record per input fact, merged duplicates included (as a copy of the fact they merged into)."""
    before, dist, cats = analysis.before, analysis.distances, analysis.categories
    kept_ids = {f.id for f in kept_facts}
    wmap = {f.id: w for f, w in zip(kept_facts, weights)}
    by_id = {}
    for i, f in enumerate(analysis.unique):
        b, a = before["facts"][i], after["facts"][i]
        by_id[f.id] = {
            "id": f.id, "prompt": f.prompt, "target": f.target, "subject": f.subject, "relation": f.relation,
            "kept": f.id in kept_ids, "reason": reasons.get(f.id), **cats[i],
            "semantic_distance": dist[i], "distance_after": dist_after[i],
            "drift": round(dist_after[i] - dist[i], 4), "weight": wmap.get(f.id),
            "recall_before": b["recalled"], "recall_after": a["recalled"],
            "answer_before": b["answer"], "answer_after": a["answer"], "crossed_before": b.get("crossed"),
            "crossed_after": a.get("crossed"), "logprob_before": b["logprob"], "logprob_after": a["logprob"],
            "rank_before": b["rank"], "rank_after": a["rank"],
            "paraphrases": _para_records(before["paraphrases"][i], after["paraphrases"][i],
                                         held_out_paraphrases(f, own_paraphrases)),
            **_form_records(before, after, i),
            "meta": f.meta}
    merged = analysis.merged
    return [{**by_id[merged[f.id]], "id": f.id, "prompt": f.prompt, "target": f.target, "kept": False,
             "reason": f"merged: duplicate of {merged[f.id]}"} if f.id in merged else by_id[f.id]
            for f in analysis.facts]


def summarize(cfg, info, analysis, kept_recs, dropped, after, result, prompts, written, layers) -> dict:
    before = analysis.before
    paras_b = [p["recalled_before"] for r in kept_recs for p in r["paraphrases"]]
    paras_a = [p["recalled_after"] for r in kept_recs for p in r["paraphrases"]]
    forms = {f"{form}_{when}": share(r[f"{form}_{when}"] for r in kept_recs if r[f"{form}_{when}"] is not None)
             for form in ("question", "chat") for when in ("before", "after")}
    loc_b, loc_a = before["summary"]["locality"], after["summary"]["locality"]
    nll_b, nll_a = before["summary"]["neutral_nll"], after["summary"]["neutral_nll"]
    t = cfg.train
    return {
        "facts_in": len(analysis.facts), "facts_kept": len(kept_recs), "duplicates_merged": len(analysis.merged),
        "conflicts": len(analysis.conflicts), "dropped": dropped,
        "recall_before": share(r["recall_before"] for r in kept_recs),
        "recall_after": share(r["recall_after"] for r in kept_recs),
        "paraphrase_before": share(paras_b), "paraphrase_after": share(paras_a), **forms,
        "locality_before": next(iter(loc_b.values()), None), "locality_after": next(iter(loc_a.values()), None),
        **{f"locality_{k}_{w}": v[k] for w, v in (("before", loc_b), ("after", loc_a)) for k in list(loc_b)[1:]},
        "probe_sets": {k: len(v) for k, v in analysis.probes.items()},
        # probes the subject gate leaves exactly as the base model had them (they name no edited subject): their
        # "after" is their "before" by construction, copied and not measured again (beacon/measure/evaluate.py)
        "probes_unchanged": after["summary"].get("unchanged", {}),
        # the subject named as people name it (aliases, its distinctive word, a surname), and decoys that share
        # that word but name another entity: recall from the first is the edit binding to the entity, from the
        # second a leak (beacon/method/names.py)
        "short_names_before": before["summary"].get("short_names"), "short_names_after": after["summary"].get("short_names"),
        "decoys_before": before["summary"].get("decoys"), "decoys_after": after["summary"].get("decoys"),
        # the target asked for its subject ("Marta Ilves is the CEO of"): the gate cannot open there
        "reverse_before": before["summary"].get("reverse"), "reverse_after": after["summary"].get("reverse"),
        "reverse_unchanged": sum(bool(r.get("unchanged")) for r in after.get("reverse", [])),
        **_crossed_summary(before["summary"].get("crossed"), after["summary"].get("crossed")),
        "neutral_nll_before": nll_b, "neutral_nll_after": nll_a,
        "neutral_nll_ratio": _ratio(nll_a, nll_b),
        "subject_repetition_before": before["summary"].get("subject_repetition"),
        "subject_repetition_after": after["summary"].get("subject_repetition"),
        "subject_nll_ratio": _ratio(after["summary"].get("subject_nll"), before["summary"].get("subject_nll")),
        "training_wordings": sum(map(len, prompts)), "rewordings": cfg.rewordings,
        "model_rewordings": sum(map(len, written["prompts"])),
        "model_rewordings_left_out": written["left_out"],
        "guard_anchors": cfg.guard_anchors if t.reads_anchors else None,
        "steps": result.steps, "stopped": result.stopped, "train_seconds": result.seconds,
        "seconds_per_step": round(result.seconds / max(result.steps, 1), 3),
        # where training's seconds went: the task's pass, the guard's, the optimiser, the early-stop checks
        "step_seconds": {k: round(sum(h.get("time", {}).get(k, 0) for h in result.history), 2)
                         for k in ("task", "guard", "update", "check")},
        "device": info.device, "quantization": info.quantization, "model": info.model,
        "model_source": info.source, "peak_memory_mb": peak_memory_mb(info.device),
        "weighting": t.weighting, "filter": cfg.filter, "locality_guard": t.locality_guard,
        "null_space": t.null_space, "gate": t.gate,
        "layers": layers or "all", "orders": cfg.orders, "merge": cfg.merge if cfg.orders > 1 else None,
    }


def _crossed_summary(before, after) -> dict:
    """Crossed wires: the share of measured prompts (every form and probe set) answered with another fact's
    target, before and after, and the rows that are new after training (the edit bound to the wrong subject)."""
    if not after:
        return {}
    was = {tuple(r) for r in (before or {}).get("rows", [])}
    new = [r for r in after["rows"] if tuple(r) not in was]
    share = lambda c: round(c["count"] / c["of"], 4) if c and c["of"] else None
    return {"crossed_before": share(before), "crossed_after": share(after), "crossed_new": len(new),
            "crossed_new_rows": new, "crossed_measured": after["of"]}


def _ratio(after, before):
    return round(after / before, 4) if after and before else None


def _probe_records(probes, before, after) -> list[dict]:
    return [{"id": p.id, "set": name, "prompt": p.prompt, "target": p.target,
             "recalled_before": b["recalled"], "recalled_after": a["recalled"],
             "answer_before": b["answer"], "answer_after": a["answer"]}
            for name, ps in probes.items()
            for p, b, a in zip(ps, before["probes"][name], after["probes"][name])]


def _earlier_record(cfg, earlier) -> dict:
    before, after = earlier["before"], earlier["after"]
    return {"from": str(cfg.continue_from), "ids": [f.id for f in earlier["facts"]],
            "recall_before": share(r["recalled"] for r in before), "recall_after": share(r["recalled"] for r in after),
            "lost": [f.id for f, b, a in zip(earlier["facts"], before, after) if b["recalled"] and not a["recalled"]]}


# What the report says ran (beacon/model/precision.py).
COMPUTE_NOTE = {"bf16": "bf16 matmuls in the frozen layers while training and while the base model wrote "
                        "rewordings and anchors; recall measured in the model's own precision",
                "fp32": "the model's own precision throughout"}


def build_report(cfg, info, analysis, kept_facts, reasons, weights, after, dist_after, result, *, compute="fp32",
                 prompts, written,
                 trajectories, interference, guard, layers, layer_info, merge, earlier) -> Report:
    records = fact_records(analysis, kept_facts, reasons, weights, after, dist_after, cfg.train_paraphrases)
    by_id = {r["id"]: r for r in records}
    summary = summarize(cfg, info, analysis, [by_id[f.id] for f in kept_facts], len(reasons), after, result, prompts,
                        written, layers)
    summary["compute"] = COMPUTE_NOTE[compute]
    # behind the gate the guard has anchors only from the relations source (guard.build_anchors)
    summary["guard_active"] = cfg.train.guarded and bool(guard and guard.get("anchors"))
    earlier_rec = _earlier_record(cfg, earlier) if earlier else None
    if earlier_rec:
        summary["earlier_recall_before"] = earlier_rec["recall_before"]
        summary["earlier_recall_after"] = earlier_rec["recall_after"]
    return Report(
        summary=summary, config=cfg.to_dict(), model_info=info.to_dict(), facts=records,
        probes=_probe_records(analysis.probes, analysis.before, after),
        conflicts=analysis.conflicts, duplicates=analysis.merged,
        training={"history": result.history,
                  "fact_curves": {f.id: c for f, c in zip(kept_facts, result.fact_curves)},
                  "distance_trajectories": trajectories},
        interference=interference, guard=guard,
        training_prompts={f.id: p for f, p in zip(kept_facts, prompts)},
        layers=layer_info, chosen_layers=layers, merge=merge, earlier_facts=earlier_rec,
        subject_texts=_subject_text_records(analysis.before, after),
        names=_name_records(analysis.unique, analysis.before, after))


def _name_records(facts, before, after) -> list[dict]:
    out = []
    kinds = {"short_names": "short name", "decoys": "decoy", "reverse": "reverse"}
    for kind, label in kinds.items():
        for b, a in zip(before.get(kind, []), after.get(kind, [])):
            out.append({"kind": label, "id": facts[a["fact"]].id, "name": a.get("name"), "prompt": a["prompt"],
                        "target": a.get("target") or facts[a["fact"]].target,
                        "recalled_before": b["recalled"], "recalled_after": a["recalled"], "answer_after": a["answer"]})
    return out


def _subject_text_records(before, after) -> list[dict]:
    was = {a["subject"]: a for a in before.get("subject_texts", [])}
    return [{"subject": a["subject"], "before": was.get(a["subject"], {}).get("text"), "after": a["text"],
             "repetition_before": was.get(a["subject"], {}).get("repetition"), "repetition_after": a["repetition"],
             "nll_before": was.get(a["subject"], {}).get("nll"), "nll_after": a.get("nll")}
            for a in after.get("subject_texts", [])]
