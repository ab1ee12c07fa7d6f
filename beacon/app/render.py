"""What the page shows, from plain values: the facts and review tables, the stage checklist, the live
curves and the results. The report is the JSON dict (the shape of report.json on disk); nothing here
reads or writes files or loads a model."""
from __future__ import annotations

import html
from pathlib import Path

import gradio as gr
import pandas as pd

from beacon import pipeline
from beacon.estimate import duration
from beacon.method.anchors import HOLD_MARK
from beacon.report.plots import fact_labels

FACT_COLUMNS = ["id", "prompt", "target", "subject", "relation", "paraphrases"]
REVIEW_COLUMNS = ["keep", "id", "prompt", "target", "status", "category", "distance", "weight", "answer before"]
RESULT_COLUMNS = ["id", "fact", "prompt", "target", "answer before", "answer after", "paraphrases never trained on",
                  "question form", "chat form", "trained"]
CROSSED = "⚠ another fact's answer"   # the mark of a crossed wire in the answers table
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


def status_html(stages, seen, current, frac, message, elapsed=None, note="", left=None) -> str:
    """Stage checklist (✓ done, ▶ now, ○ to come), a progress bar and the latest message, with the time
    spent and (left: Beacon's estimate) the time still to go."""
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
    if left is not None and elapsed is not None:
        when += f" elapsed · about {duration(left)} left" if left > 0 else " elapsed"
    return (f"<div class='beacon-status'><div class='stages'>{' · '.join(parts)}</div>"
            f"<div class='bar'><div style='width:{100 * min(max(frac, 0), 1):.0f}%'></div></div>"
            f"<div class='msg'>{html.escape(message)}{when}</div>{note}</div>")


def error_box(message: str) -> str:
    """An error shown where it happened, kept on the page until the next try replaces it."""
    return f"<div class='beacon-error' role='alert'><b>⚠</b> {html.escape(message)}</div>"


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
    """The results tab: (headline markdown, the answers table coloured by outcome, the summary markdown,
    gallery of (image, caption)). The run folder is shown relative to root when it lies inside it."""
    s = report["summary"]
    stopped = {"budget": "used the whole step budget", "all recalled": "stopped early: every fact recalled",
               "cancelled": "stopped by you"}.get(s["stopped"], s["stopped"])
    lines = ["#### The numbers", "| | before | after |", "|---|---|---|",
             f"| **Recall** of the trained facts | {pct(s['recall_before'])} | {pct(s['recall_after'])} |",
             f"| **Paraphrases** never trained on (generalisation) | {pct(s['paraphrase_before'])} | {pct(s['paraphrase_after'])} |"
             if s.get("paraphrase_after") is not None else
             "| **Paraphrases** never trained on | – | – (none measured: your facts came without paraphrases; add "
             "some in the `paraphrases` column, separated by `|`) |",
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
             *([f"| **Reverse**: the answer asked for its subject (\"Marta Ilves is the CEO of\") | "
                f"{pct(s['reverse_before'])} | {pct(s['reverse_after'])}"
                + (" (unchanged by construction: the text names no subject, so the gate stays shut)"
                   if s.get("reverse_unchanged") else "") + " |"] if s.get("reverse_after") is not None else []),
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

    table = answers_frame(report)
    headline = headline_md(report)

    # Trained over K data orders, the distances are not tracked during training: the drift plot would
    # show one dot per fact at step 0, so it is left out of the page (it stays in plots.zip).
    tracked = any(len(t) > 1 for t in ((report.get("training") or {}).get("distance_trajectories") or {}).values())
    gallery = [(str(run_dir / p), PLOT_CAPTIONS.get(Path(p).stem, Path(p).stem)) for p in report.get("plots", [])
               if tracked or Path(p).stem != "drift"]
    return headline, table, "\n".join(lines), gallery


def _answer(recalled, answer, crossed, labels: dict) -> str:
    """One measured answer as a cell: ✓ or ✗, the answer's opening, and a crossed wire named by the fact
    whose answer it gave."""
    if recalled is None:
        return "–"
    text = "✓ " if recalled else "✗ "
    text += (answer or "").strip() or "(nothing)"
    if crossed:
        text += f"  {CROSSED}: {labels.get(str(crossed), crossed)}"
    return text


def _paraphrases_cell(paras: list[dict], labels: dict) -> str:
    """k/n recalled after training, then each one missed with the answer it got."""
    if not paras:
        return "– (none in the file)"
    got = sum(bool(p["recalled_after"]) for p in paras)
    misses = [f"✗ {p['prompt']} → {(p.get('answer_after') or '').strip() or '(nothing)'}"
              + (f"  {CROSSED}: {labels.get(str(p['crossed_after']), p['crossed_after'])}"
                 if p.get("crossed_after") else "") for p in paras if not p["recalled_after"]]
    return " · ".join([f"{got}/{len(paras)}", *misses])


def crossed_after(f: dict) -> int:
    """How many of a fact's measured answers after training gave another fact's answer."""
    marks = [f.get("crossed_after"), f.get("question_crossed_after"), f.get("chat_crossed_after"),
             *(p.get("crossed_after") for p in f.get("paraphrases") or [])]
    return sum(bool(m) for m in marks)


def answers_frame(report: dict):
    """Per fact, trained first: the answer before and after in every form measured (the prompt itself, the
    paraphrases never trained on, the question and chat forms), each marked ✓ or ✗ and, when it gave
    another fact's answer, with that fact's name. Rows coloured: green recalled after training, red not,
    amber recalled but another fact's answer given somewhere, grey not trained."""
    labels = fact_labels(report.get("facts") or [])
    rows = []
    for f in sorted(report["facts"], key=lambda f: not f["kept"]):  # trained facts first
        rows.append({
            "id": f["id"], "fact": labels.get(str(f["id"]), f["id"]), "prompt": f["prompt"], "target": f["target"],
            "answer before": _answer(f["recall_before"], f.get("answer_before"), f.get("crossed_before"), labels),
            "answer after": _answer(f["recall_after"], f.get("answer_after"), f.get("crossed_after"), labels),
            "paraphrases never trained on": _paraphrases_cell(f.get("paraphrases") or [], labels),
            "question form": _answer(f.get("question_after"), f.get("question_answer_after"),
                                     f.get("question_crossed_after"), labels),
            "chat form": _answer(f.get("chat_after"), f.get("chat_answer_after"), f.get("chat_crossed_after"),
                                 labels),
            "trained": "yes" if f["kept"] else f"no: {f.get('reason') or ''}"})
    df = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    crossed = {labels.get(str(f["id"]), f["id"]) for f in report["facts"] if f["kept"] and crossed_after(f)}

    def colour(row):
        if row["trained"] != "yes":
            return ["background-color: #f1f1f1; color: #777"] * len(row)
        if not row["answer after"].startswith("✓"):
            return ["background-color: #f9d6da"] * len(row)
        return [f"background-color: {'#fde8c8' if row['fact'] in crossed else '#d3f0dc'}"] * len(row)

    return df.style.apply(colour, axis=1)


def headline_md(report: dict) -> str:
    """What a visitor came for, in two lines: recall before → after, and the wrong answers after training."""
    s = report["summary"]
    kept = [f for f in report["facts"] if f["kept"]]
    missed = sum(not f["recall_after"] for f in kept)
    crossed = sum(crossed_after(f) for f in kept)
    parts = [f"{missed} of {len(kept)} trained facts not recalled" if missed else "every trained fact recalled"]
    if s.get("paraphrase_after") is not None:
        parts.append(f"paraphrases never trained on {pct(s['paraphrase_after'])}")
    parts.append(f"{crossed} answer{'s' * (crossed != 1)} after training gave another fact's answer "
                 f"({CROSSED})" if crossed else "no answer gave another fact's answer")
    return (f"### Recall {pct(s['recall_before'])} → {pct(s['recall_after'])} on {s['facts_kept']} trained facts\n"
            + " · ".join(parts) + ". The table gives every answer; the numbers and plots follow.")


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
    """Under each model's answers: log p(target | prompt), plain and chat, from beacon/ask.py's numbers."""
    if not (target or "").strip():
        return "<span class='small-note'>Type a target to see its log-probability.</span>"
    lp = [(form, out.get(f"{model}{key}_logprob")) for form, key in (("plain", ""), ("chat", "_chat"))]
    shown = [f"{form} **{v:.2f}**" for form, v in lp if v is not None]
    return "log p(target): " + " · ".join(shown) if shown else ""


# ---------------------------------------------------------------- interactive charts (native plots)
# The PNGs (beacon/report/plots.py) stay in the downloads; these are the same numbers as gr.ScatterPlot data, with a
# tooltip naming each fact. Brushing a range on a chart zooms into it (double-click: back).
INTERFERENCE_KINDS = {"cosine": "cosine of the two facts' gradients",
                      "step_effect": "step effect: the change in the moved fact's log-prob from one step on the "
                                     "trained one"}
INTERFERENCE_TOOLTIP = ["fact_i", "prompt trained", "fact_j", "prompt moved", "value"]
FACT_TOOLTIP = ["fact", "prompt", "target", "outcome"]
# The interference chart's colour: the value in five bins on a scale symmetric about 0, each labelled with
# its range, so the legend is read as numbers (the native plot's colour legend is categorical).
BIN_COLOURS = ["#2166ac", "#6fa8dc", "#a6a6a6", "#f08a5d", "#b2182b"]
BIN_NAMES = ["dark blue", "blue", "grey", "orange", "red"]   # the key in the chart's label names them


def _bins(lim: float) -> list[tuple[float, str]]:
    """(upper edge, label) of the five bins of a scale from -lim to +lim."""
    a, b = lim / 2, lim / 10
    f = (lambda x: f"{x:.2g}") if lim < 0.1 else (lambda x: f"{x:.2f}")
    return [(-a, f"≤ −{f(a)}"), (-b, f"−{f(a)} to −{f(b)}"), (b, f"−{f(b)} to {f(b)}"),
            (a, f"{f(b)} to {f(a)}"), (float("inf"), f"≥ {f(a)}")]


def interference_frame(report: dict, kind: str = "cosine") -> tuple[pd.DataFrame, dict]:
    """One row per off-diagonal cell of the interference matrix (a fact on itself is not interference, and
    its value would set the scale): i (the fact stepped on) and j (the fact affected) named by subject,
    their prompts, the value rounded, and its bin on a scale symmetric about 0; and the bins' colour map."""
    cols = ["fact_i", "fact_j", "prompt trained", "prompt moved", "value", "range"]
    inter = report.get("interference") or {}
    ids, m = list(inter.get("ids") or []), inter.get(kind) or []
    facts = report.get("facts") or []
    labels, prompts = fact_labels(facts), {f["id"]: f["prompt"] for f in facts}
    cells = [(i, j, float(m[i][j])) for i in range(min(len(ids), len(m)))
             for j in range(min(len(ids), len(m[i]))) if i != j]
    if not cells:
        return pd.DataFrame(columns=cols), {}
    lim = max(abs(v) for *_, v in cells) or 1.0
    if kind == "cosine":
        lim = 1.0   # a cosine's own range
    bins = _bins(lim)
    rows = [{"fact_i": labels.get(str(ids[i]), str(ids[i])), "fact_j": labels.get(str(ids[j]), str(ids[j])),
             "prompt trained": prompts.get(ids[i], ""), "prompt moved": prompts.get(ids[j], ""),
             "value": round(v, 3), "range": next(label for edge, label in bins if v <= edge)}
            for i, j, v in cells]
    return pd.DataFrame(rows, columns=cols), {label: c for (_, label), c in zip(bins, BIN_COLOURS)}


def _outcome(f: dict) -> str:
    if not f.get("kept"):
        return "not trained"
    if f.get("recall_before"):
        return "known before"
    return "learned" if f.get("recall_after") else "not learned"


def distance_frame(report: dict) -> pd.DataFrame:
    """Trained facts: semantic distance before training vs the log-prob training gained, with id and prompt."""
    cols = ["fact", "prompt", "target", "distance", "gain", "outcome"]
    labels = fact_labels(report.get("facts") or [])
    rows = [{"fact": labels.get(str(f["id"]), f["id"]), "prompt": f["prompt"], "target": f.get("target", ""),
             "distance": float(f["semantic_distance"]),
             "gain": float(f["logprob_after"]) - float(f["logprob_before"]), "outcome": _outcome(f)}
            for f in report.get("facts") or [] if f.get("kept") and f.get("semantic_distance") is not None
            and f.get("logprob_before") is not None and f.get("logprob_after") is not None]
    return pd.DataFrame(rows, columns=cols)


def recall_frame(report: dict) -> pd.DataFrame:
    """Every fact measured: the target's log-prob before vs after, recall before and after, id and prompt."""
    cols = ["fact", "prompt", "target", "before", "after", "recall_before", "recall_after", "outcome"]
    labels = fact_labels(report.get("facts") or [])
    rows = [{"fact": labels.get(str(f["id"]), f["id"]), "prompt": f["prompt"], "target": f.get("target", ""),
             "before": float(f["logprob_before"]), "after": float(f["logprob_after"]),
             "recall_before": "yes" if f.get("recall_before") else "no",
             "recall_after": "yes" if f.get("recall_after") else "no", "outcome": _outcome(f)}
            for f in report.get("facts") or []
            if f.get("logprob_before") is not None and f.get("logprob_after") is not None]
    return pd.DataFrame(rows, columns=cols)


def charts(report: dict, kind: str = "cosine"):
    """(interference, distance, recall) ScatterPlot updates for the results tab; a chart with no data is hidden."""
    (inter, colours), dist, rec = interference_frame(report, kind), distance_frame(report), recall_frame(report)
    n = len(set(inter["fact_i"])) if len(inter) else 0
    key = " · ".join(f"{name} {label}" for name, label in zip(BIN_NAMES, colours))
    label = ("Interference between facts (row: the fact a step trains; column: the fact it moves; a fact on itself "
             f"left out). Colour, {INTERFERENCE_KINDS[kind]}: {key}")
    return (gr.ScatterPlot(inter, visible=len(inter) > 0, color_map=colours or None, label=label,
                           color_title=kind.replace("_", " "), height=max(420, 28 * n + 240)),
            gr.ScatterPlot(dist, visible=len(dist) > 0),
            gr.ScatterPlot(rec, visible=len(rec) > 0))
