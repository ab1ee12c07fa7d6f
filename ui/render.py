"""What the page shows, from plain values: the facts and review tables, the stage checklist, the live
curves and the results. The report is the JSON dict (the shape of report.json on disk); nothing here
reads or writes files or loads a model."""
from __future__ import annotations

import html
from pathlib import Path

import gradio as gr
import pandas as pd

from core import pipeline
from core.guard import HOLD_MARK

FACT_COLUMNS = ["id", "prompt", "target", "subject", "relation", "paraphrases"]
REVIEW_COLUMNS = ["keep", "id", "prompt", "target", "status", "category", "distance", "weight", "answer before"]
RESULT_COLUMNS = ["id", "prompt", "target", "trained", "before", "after", "answer after", "paraphrases after"]
STAGES = [("check", "check"), ("load", "load model"), ("before", "recall before, known / update / new, distance"),
          ("guard", "guard + rewordings"), ("interference", "interference"),
          ("train", "train"), ("after", "recall after"), ("plots", "plots")]
CHECK_STAGES = STAGES[:3]
ALIASES = {"rewordings": "guard"}   # pipeline stages shown under another's label
PLOT_CAPTIONS = {"interference": "Interference: how a step on one fact moves the others",
                 "distance_vs_learned": "Semantic distance before training vs what training gained",
                 "drift": "Drift: semantic distance of each fact during training",
                 "recall": "Target log-probability before and after, fact by fact",
                 "learning_curves": "Learning curves: loss, recall and per-fact loss",
                 "layers": "Layer selection: where along the layers the answers form, and the layers trained",
                 "merge": "Data orders: recall of the facts seen first vs last in each order, per run and merged"}


def train_stages(cfg) -> list[tuple[str, str]]:
    """The run's checklist: a layer-selection stage with layers=auto, K orders and a merge in the label."""
    out = []
    for key, label in STAGES:
        if key == "guard" and cfg.layers == "auto":   # chosen before the guard is built
            out.append(("layers", "choose layers"))
        if key == "train" and cfg.orders > 1 and not cfg.continue_from:
            label = f"train {cfg.orders} orders + merge"
        out.append((key, label))
    return out


def pct(x) -> str:
    return "–" if x is None else f"{x:.0%}"


def seconds(s) -> str:
    s = float(s or 0)
    return f"{s:.0f} s" if s < 90 else f"{s // 60:.0f} min {s % 60:.0f} s"


def span(layers) -> str:
    """[20, 21, ..., 29] -> "20–29"; gaps as a list."""
    layers = sorted(layers)
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}–{layers[-1]}"
    return ", ".join(map(str, layers))


def facts_frame(facts) -> pd.DataFrame:
    return pd.DataFrame([{"id": f.id, "prompt": f.prompt, "target": f.target, "subject": f.subject or "",
                          "relation": f.relation or "", "paraphrases": " | ".join(f.paraphrases)} for f in facts],
                        columns=FACT_COLUMNS)


def status_html(stages, seen, current, frac, message, elapsed=None, note="") -> str:
    """Stage checklist (✓ done, ▶ now, ○ to come), a progress bar and the latest message."""
    keys = [k for k, _ in stages]
    current = ALIASES.get(current, current)
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
    """The review table and its note: what the checks decided for each fact under cfg's filter and keep/drop."""
    rows = pipeline.review_rows(analysis, cfg)
    out = []
    for r in rows:
        status = ("✓ kept by you" if r["id"] in cfg.keep else "✓ kept") if r["kept"] else f"✗ {r['reason']}"
        out.append({"keep": bool(r["kept"]), "id": r["id"], "prompt": r["prompt"], "target": r["target"],
                    "status": status, "category": r["category"], "distance": round(r["semantic_distance"], 3),
                    "weight": "" if r["weight"] is None else f"{r['weight']:.2f}",
                    "answer before": ("✓ " if r["recall_before"] else "") + r["answer_before"]})
    kept = sum(r["kept"] for r in rows)
    merged = analysis.merged
    note = f"**{kept} of {len(rows)} facts will be trained**, {len(rows) - kept} dropped."
    if merged:
        note += " Merged duplicates, not listed: " + ", ".join(f"{a} (same as {b})" for a, b in merged.items()) + "."
    return pd.DataFrame(out, columns=REVIEW_COLUMNS), note


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


def setup_md(report: dict, n_layers: int | None = None) -> list[str]:
    """Markdown lines for the advanced settings the run used: layers, merged data orders, earlier facts.
    n_layers: the model's layer count, used when the report has no layer selection to count them from."""
    lines = []
    s = report.get("summary") or {}
    if s.get("gate") in ("subject", "from-subject"):
        where = "the tokens that name a trained fact's subject" + \
            (" and every token after them" if s["gate"] == "from-subject" else "")
        every = (report.get("guard") or {}).get("all") or []
        held = sum(HOLD_MARK in a for a in every)
        if s.get("guard_active"):
            guard = (f"; locality guard {s.get('locality_guard')} on what the base model said of the subjects it "
                     f"knows, asked by the other facts' relations ({len(every) - held} prompts), and on how it went on "
                     f"after each fact and about each subject ({held} texts)")
        elif s.get("locality_guard"):
            guard = "; no locality guard ran: the base model knew none of these subjects, so there was nothing of theirs to keep"
        else:
            guard = "; no locality guard ran"
        lines.append(f"- **Subject gate**: the adapter changes only {where}; text that names no subject runs "
                     "through the base model unchanged" + guard)
    elif s.get("gate") == "none":
        lines.append("- **No gate**: the adapter acts on every token" +
                     (f"; locality guard {s.get('locality_guard')}" if s.get("guard_active") else ""))
    chosen, sel = report.get("chosen_layers"), report.get("layers")
    total = len(sel["observed"]) if sel and sel.get("observed") else n_layers
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


def results_view(report: dict, run_dir: Path, root: Path | None = None, n_layers: int | None = None):
    """The results tab: (summary markdown, the fact table coloured by outcome, gallery of (image, caption)).
    The run folder is shown relative to root when it lies inside it."""
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
             *([f"| **Locality**: your probe set | {pct(s['locality_yours_before'])} | "
                f"{pct(s['locality_yours_after'])} |"] if s.get("locality_yours_before") is not None else []),
             *([f"| **Short names**: the subject as people shorten it, in wordings never trained on | "
                f"{pct(s['short_names_before'])} | {pct(s['short_names_after'])} |"]
               if s.get("short_names_after") is not None else []),
             *([f"| **Decoys** that share a short name, answered with the new fact (lower is better) | "
                f"{pct(s['decoys_before'])} | {pct(s['decoys_after'])} |"] if s.get("decoys_after") is not None else []),
             *([f"| **Crossed wires**: prompts answered with another fact's answer (lower is better) | "
                f"{pct(s['crossed_before'])} | {pct(s['crossed_after'])} |"] if s.get("crossed_after") is not None else []),
             *([f"| **Fluency**: NLL per token on neutral text, tuned / base | 1.00 | {s['neutral_nll_ratio']:.3f} |"]
               if s.get("neutral_nll_ratio") else []),
             *([f"| **Repetition**: asked about a subject, word pairs the reply repeats | "
                f"{pct(s['subject_repetition_before'])} | {pct(s['subject_repetition_after'])} |"]
               if s.get("subject_repetition_after") is not None else []),
             *([f"| **Text about a subject**: NLL per token of the base model's own reply, tuned / base | 1.00 | "
                f"{s['subject_nll_ratio']:.3f} |"] if s.get("subject_nll_ratio") else []), ""]
    same = sum((s.get("probes_unchanged") or {}).values())
    if same:
        total = sum((s.get("probe_sets") or {}).values())
        lines.append(f"*{same} of {total} locality probes name no edited subject: behind the gate the tuned model "
                     "answers them exactly as the base model did, so their locality holds by construction "
                     "(unchanged, not measured again).*\n")
    if s["stopped"] == "cancelled":
        lines.append("**Stopped by you**: the adapter holds what was learned in the steps that ran.\n")
    lb, la = s.get("locality_before"), s.get("locality_after")
    if lb is not None and la is not None and la < lb - 0.05:
        lines.append(f"⚠️ The tuned model misses {lb - la:.0%} of the unrelated probe facts the base model knew: "
                     "learning these facts cost it other knowledge.\n")
    orders = f" over {report['merge']['orders']} data orders" if report.get("merge") else ""
    shown = run_dir.relative_to(root) if root is not None and run_dir.is_relative_to(root) else run_dir
    lines += [f"- {s['steps']} steps{orders} ({stopped}); training {seconds(s['train_seconds'])}, "
              f"whole run {seconds(s['total_seconds'])}",
              f"- {s['model']} on **{s['device']}**, quantisation **{s['quantization']}**, "
              f"peak memory {s['peak_memory_mb']:.0f} MB" + (f"; {s['compute']}" if s.get("compute") else ""),
              f"- {s['facts_in']} facts in, {s['facts_kept']} trained, {s['dropped']} dropped",
              f"- run folder: `{shown}`"]
    lines += setup_md(report, n_layers)

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
    return "\n".join(lines), df.style.apply(colour, axis=1), gallery


def ask_default(report: dict) -> str:
    """A paraphrase of a trained fact: the honest question is whether it generalises."""
    kept = [f for f in report["facts"] if f["kept"]]
    if not kept:
        return ""
    paras = kept[0].get("paraphrases") or []
    return paras[0]["prompt"] if paras else kept[0]["prompt"]


def ask_target(report: dict) -> str:
    """The answer `ask_default`'s prompt asks for: the first trained fact's target."""
    kept = [f for f in report["facts"] if f["kept"]]
    return kept[0]["target"] if kept else ""


def ask_scores(out: dict, model: str, target) -> str:
    """Under each model's answers: log p(target | prompt), plain and chat, from core/ask.py's numbers."""
    if not (target or "").strip():
        return "<span class='small-note'>Type a target to see its log-probability.</span>"
    lp = [(form, out.get(f"{model}{key}_logprob")) for form, key in (("plain", ""), ("chat", "_chat"))]
    shown = [f"{form} **{v:.2f}**" for form, v in lp if v is not None]
    return "log p(target): " + " · ".join(shown) if shown else ""


# ---------------------------------------------------------------- interactive charts (native plots)
# The PNGs (core/plots.py) stay in the downloads; these are the same numbers as gr.ScatterPlot data, with a
# tooltip naming each fact. Brushing a range on a chart zooms into it (double-click: back).
INTERFERENCE_KINDS = {"cosine": "cosine of the two facts' gradients",
                      "step_effect": "step effect: change in j's log-prob from one step on i"}
INTERFERENCE_TOOLTIP = ["fact_i", "prompt_i", "fact_j", "prompt_j", "value"]
FACT_TOOLTIP = ["id", "prompt", "target", "outcome"]


def interference_frame(report: dict, kind: str = "cosine") -> pd.DataFrame:
    """One row per cell of the interference matrix: i (row: the fact stepped on), j (the fact affected),
    both facts' ids and prompts, and the value (kind: "cosine" or "step_effect")."""
    cols = ["i", "j", "fact_i", "fact_j", "prompt_i", "prompt_j", "value"]
    inter = report.get("interference") or {}
    ids, m = list(inter.get("ids") or []), inter.get(kind) or []
    prompts = {f["id"]: f["prompt"] for f in report.get("facts") or []}
    rows = [{"i": i, "j": j, "fact_i": a, "fact_j": b, "prompt_i": prompts.get(a, ""), "prompt_j": prompts.get(b, ""),
             "value": float(m[i][j])}
            for i, a in enumerate(ids) if i < len(m) for j, b in enumerate(ids) if j < len(m[i])]
    return pd.DataFrame(rows, columns=cols)


def _outcome(f: dict) -> str:
    if not f.get("kept"):
        return "not trained"
    if f.get("recall_before"):
        return "known before"
    return "learned" if f.get("recall_after") else "not learned"


def distance_frame(report: dict) -> pd.DataFrame:
    """Trained facts: semantic distance before training vs the log-prob training gained, with id and prompt."""
    cols = ["id", "prompt", "target", "distance", "gain", "outcome"]
    rows = [{"id": f["id"], "prompt": f["prompt"], "target": f.get("target", ""),
             "distance": float(f["semantic_distance"]),
             "gain": float(f["logprob_after"]) - float(f["logprob_before"]), "outcome": _outcome(f)}
            for f in report.get("facts") or [] if f.get("kept") and f.get("semantic_distance") is not None
            and f.get("logprob_before") is not None and f.get("logprob_after") is not None]
    return pd.DataFrame(rows, columns=cols)


def recall_frame(report: dict) -> pd.DataFrame:
    """Every fact measured: the target's log-prob before vs after, recall before and after, id and prompt."""
    cols = ["id", "prompt", "target", "before", "after", "recall_before", "recall_after", "outcome"]
    rows = [{"id": f["id"], "prompt": f["prompt"], "target": f.get("target", ""),
             "before": float(f["logprob_before"]), "after": float(f["logprob_after"]),
             "recall_before": "yes" if f.get("recall_before") else "no",
             "recall_after": "yes" if f.get("recall_after") else "no", "outcome": _outcome(f)}
            for f in report.get("facts") or []
            if f.get("logprob_before") is not None and f.get("logprob_after") is not None]
    return pd.DataFrame(rows, columns=cols)


def charts(report: dict, kind: str = "cosine"):
    """(interference, distance, recall) ScatterPlot updates for the results tab; a chart with no data is hidden."""
    inter, dist, rec = interference_frame(report, kind), distance_frame(report), recall_frame(report)
    n = int(inter["i"].max()) + 1 if len(inter) else 0
    return (gr.ScatterPlot(inter, visible=len(inter) > 0, x_lim=[-0.5, n - 0.5] if n else None,
                           y_lim=[-0.5, n - 0.5] if n else None, color_title=kind.replace("_", " ")),
            gr.ScatterPlot(dist, visible=len(dist) > 0),
            gr.ScatterPlot(rec, visible=len(rec) > 0))
