"""Measurement: what the model answers, before and after training.

For each (prompt, target): whether the greedy answer recalls the target, the target's log-probability under
teacher forcing and the rank of its first token, all read off one teacher-forced pass (beacon/model/lm.py:
score_pairs); the greedy answer is generated only where a person reads it. The rows are each fact's own
prompt, its held-out paraphrases, its question form and its chat form (through the model's chat template),
its subject's short names and decoys, the reverse direction, and every probe set (locality); beside them the
NLL of neutral text and of the base model's own text about each subject, and crossed wires (an answer that
is another fact's target). `evaluate_facts` measures them all.
"""
from __future__ import annotations

import re

import torch

from beacon.model.lm import (PUNCTUATION, collate, encode_pair, forward_targets, generate, model_device, normalise,
                             score, score_pairs)
from beacon.method.rewordings import chat_form, held_out_paraphrases, question_form
from beacon.method.semantic import cosine_distance, target_vectors


def recalls(answer: str, target: str) -> bool:
    """The answer starts with the target, up to case, whitespace and punctuation, and the
    target ends at a word boundary ("Paris" is not recalled by "Parisian")."""
    a, t = normalise(answer), normalise(target)
    if not t or not a.startswith(t):
        return False
    rest = a[len(t):]
    return not rest or not re.match(r"\w", rest[0])


def recall_table(model, tok, prompts: list[str], targets: list[str], batch_size: int = 32) -> list[dict]:
    """One record per pair: answer, recalled, logprob, rank."""
    return recall_tables(model, tok, [(prompts, targets)], batch_size)[0]


def recall_tables(model, tok, groups: list[tuple[list[str], list[str]]], batch_size: int = 64,
                  generated: list[bool] | None = None, scores: dict | None = None,
                  others: list[tuple[str, str]] | None = None) -> list[list[dict]]:
    """recall_table of each (prompts, targets) group from one teacher-forced pass: a pair is recalled when the
    argmax is every target token and the token after it ends a word (then the greedy answer starts with the
    target at a word boundary). The answer shown is the greedy text: for a recalled pair the target and the
    token after it; for the others, the groups with generated[g] True (default all) are generated (their
    longest target + 3 tokens, one decode for all such rows); the rest show the greedy answer's first tokens
    as the pass knows them, up to and including the first wrong one, then "…". scores: a dict to fill with the
    pass's own numbers, row by row over all groups (score's, with `hidden`). others: (id, target) of the facts
    whose answers count as crossed wires: a row not recalled whose greedy answer is one of those targets gets
    `crossed`, that fact's id (crossed_wires)."""
    prompts = [p for ps, _ in groups for p in ps]
    targets = [t for _, ts in groups for t in ts]
    generated = [True] * len(groups) if generated is None else generated
    budgets, gen = [], []
    for (_, ts), g in zip(groups, generated):
        n_new = max((len(encode_pair(tok, "", t)[1]) for t in ts), default=0) + 3
        budgets += [n_new] * len(ts)
        gen += [g] * len(ts)
    if not prompts:
        return [[] for _ in groups]
    s = score(model, tok, prompts, targets, batch_size=batch_size, hidden=scores is not None)
    if scores is not None:
        scores.update(s)
    answers = [tok.decode(g, skip_special_tokens=True) + ("" if hit else "…") for g, hit in zip(s["greedy"], s["hit"])]
    hits = list(s["hit"])
    # Recall allows the answer to open with punctuation ('"swam" and'): where the greedy first token is only
    # punctuation, the target is scored once more after it (no space: '"' then 'swam').
    quoted = [i for i, (g, hit) in enumerate(zip(s["greedy"], hits)) if not hit and not gen[i]
              and _only_punctuation(tok.decode(g[:1]))]
    if quoted:
        again = score_pairs(model, tok, [(encode_pair(tok, prompts[i], "")[0] + s["greedy"][i][:1],
                                          tok(targets[i], add_special_tokens=False).input_ids) for i in quoted])
        for j, i in enumerate(quoted):
            answers[i] = tok.decode(s["greedy"][i][:1] + again["greedy"][j], skip_special_tokens=True) + \
                ("" if again["hit"][j] else "…")
            hits[i] = again["hit"][j]
    todo = [i for i, hit in enumerate(s["hit"]) if not hit and gen[i]]
    for i, a in zip(todo, generate(model, tok, [prompts[i] for i in todo], max_new_tokens=[budgets[i] for i in todo],
                                   batch_size=batch_size)):
        answers[i] = a
    recs = [dict(answer=a.strip(), recalled=recalls(a, t) if gen[i] or hit else False, logprob=lp, rank=r)
            for i, (a, t, lp, r, hit) in enumerate(zip(answers, targets, s["logprob"], s["rank"], hits))]
    if others:
        misses = [i for i, r in enumerate(recs) if not r["recalled"]]
        for i, fid in crossed_wires(model, tok, [(encode_pair(tok, prompts[i], "")[0], s["greedy"][i], targets[i])
                                                 for i in misses], others).items():
            recs[misses[i]]["crossed"] = fid
    out, at = [], 0
    for ps, _ in groups:
        out.append(recs[at:at + len(ps)])
        at += len(ps)
    return out


def crossed_wires(model, tok, rows: list[tuple[list[int], list[int], str]], others: list[tuple[str, str]],
                  batch_size: int = 64) -> dict[int, str]:
    """{row: id} for the rows (prompt ids, the greedy answer's first tokens as a pass knows them, the row's own
    target) whose greedy answer is another fact's target at a word boundary: a crossed wire, the edit bound to
    the relation or to another subject rather than to its own. A candidate is a target (with or without a
    leading space) that the greedy tokens open alike; each is scored teacher-forced, so only the few rows
    whose first token could start another answer cost a pass."""
    forms = [(fid, t, tok(x, add_special_tokens=False).input_ids) for fid, t in others for x in (" " + t, t)]
    cands = []
    for r, (head, greedy, own) in enumerate(rows):
        for fid, t, ids in forms:
            k = min(len(ids), len(greedy))
            if k and ids[:k] == greedy[:k] and normalise(t) != normalise(own):
                cands.append((r, fid, t, head, ids))
    if not cands:
        return {}
    s = score_pairs(model, tok, [(head, ids) for *_, head, ids in cands], batch_size)
    out: dict[int, str] = {}
    for (r, fid, t, _, _), hit, g in zip(cands, s["hit"], s["greedy"]):
        if hit and r not in out and recalls(tok.decode(g, skip_special_tokens=True), t):
            out[r] = fid
    return out


def _only_punctuation(text: str) -> bool:
    return bool(text.strip()) and all(c in PUNCTUATION or c.isspace() for c in text)


def mentions(answer: str, target: str) -> bool:
    """The target appears in the answer as whole words, up to case and punctuation: a chat answer
    may restate the question first ("The CEO of Zentrix Robotics is Marta Ilves.")."""
    a, t = normalise(answer), normalise(target)
    return bool(t) and re.search(rf"(?<!\w){re.escape(t)}(?!\w)", a) is not None


def chat_table(model, tok, prompts: list[str | None], targets: list[str], sentences: list[str],
               batch_size: int = 32, others: list[tuple[str, str]] | None = None) -> list[dict | None]:
    """Recall in the chat form, from teacher-forced passes: the greedy reply opens with the target, or with the
    sentence completed (`sentences[i]`, the fact's prompt, then the target), with or without a leading space,
    and the target ends a word there. None where there is no template. One pass scores " target" for every
    row; a row that misses is scored once more in the form its greedy first token begins, if any. The answer
    shown is the greedy reply's opening as the passes know it (up to the first wrong token, then "…")."""
    todo = [i for i, p in enumerate(prompts) if p]
    out: list[dict | None] = [None] * len(prompts)
    if not todo:
        return out
    heads = {i: tok(prompts[i], add_special_tokens=True).input_ids for i in todo}
    forms = {i: [" " + targets[i], targets[i], f" {sentences[i]} {targets[i]}", f"{sentences[i]} {targets[i]}"]
             for i in todo}
    ids = {i: [tok(x, add_special_tokens=False).input_ids for x in forms[i]] for i in todo}
    s = score_pairs(model, tok, [(heads[i], ids[i][0]) for i in todo], batch_size)
    result = {i: (s["hit"][k], s["greedy"][k], forms[i][0], 0) for k, i in enumerate(todo)}
    again = []
    for k, i in enumerate(todo):
        if not s["hit"][k]:
            form = next((f for f in range(1, 4) if ids[i][f][:1] == s["greedy"][k][:1]), None)
            if form is not None:
                again.append((i, form))
    if again:
        s2 = score_pairs(model, tok, [(heads[i], ids[i][f]) for i, f in again], batch_size)
        for k, (i, f) in enumerate(again):
            result[i] = (s2["hit"][k], s2["greedy"][k], forms[i][f], f)
    for i in todo:
        hit, greedy, reply, _ = result[i]
        text = tok.decode(greedy, skip_special_tokens=True)
        out[i] = dict(answer=text.strip() + ("" if hit else "…"), recalled=bool(hit and recalls(text, reply)))
    if others:   # a reply that gives another fact's answer, first or after the sentence it completes
        misses = [i for i in todo if not out[i]["recalled"]]
        rows = []
        for i in misses:
            _, greedy, _, f = result[i]
            m = len(tok((" " if f == 2 else "") + sentences[i], add_special_tokens=False).input_ids) if f >= 2 else 0
            rows.append((heads[i] + greedy[:m], greedy[m:], targets[i]))
        for r, fid in crossed_wires(model, tok, rows, others).items():
            out[misses[r]]["crossed"] = fid
    return out


def repetition(text: str) -> float:
    """The share of a text's word pairs that repeat an earlier pair: 0.06-0.11 on average for the default
    model's replies about the samples' subjects, more where a reply loops ("Milan. Milan is the capital
    of Milan. Milan. Milan.")."""
    words = re.findall(r"\w+", text.lower())
    pairs = list(zip(words, words[1:]))
    return round(1 - len(set(pairs)) / len(pairs), 4) if pairs else 0.0


def subject_texts(model, tok, facts, max_new_tokens: int = 48, reference: list[dict] | None = None) -> list[dict]:
    """What the model writes when asked about each subject ("Tell me about Italy."), how much it repeats
    itself, and `nll`: its mean NLL per token of the reference reply (`reference`, the base model's replies
    from before training; without one, its own). A reply that shrinks to the new answer ("Spain.") repeats
    nothing; the base model's paragraph about Italy then costs the tuned model more nats."""
    from beacon.method.rewordings import chat_prompt

    subjects = list(dict.fromkeys(f.subject.strip() for f in facts if f.subject and f.subject.strip()))
    asks = [chat_prompt(tok, f"Tell me about {s}.") or f"Here is what I know about {s}:" for s in subjects]
    texts = [t.strip() for t in generate(model, tok, asks, max_new_tokens=max_new_tokens)] if asks else []
    ref = {a["subject"]: a["text"] for a in reference or ()}
    refs = [ref.get(s) or t or "." for s, t in zip(subjects, texts)]
    lp = score(model, tok, asks, refs)["logprob"] if asks else []
    return [{"subject": s, "text": t, "repetition": repetition(t),
             "nll": round(-x / max(1, len(encode_pair(tok, a, r)[1])), 4)}
            for s, t, a, r, x in zip(subjects, texts, asks, refs, lp)]


@torch.no_grad()
def text_nll(model, tok, text: str, batch_size: int = 8) -> float:
    """Mean NLL per token of `text` (paragraphs scored apart): fluency, compared tuned / base."""
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    dev, total, count = model_device(model), 0.0, 0
    for i in range(0, len(paras), batch_size):
        enc = [tok(p, add_special_tokens=True).input_ids[:256] for p in paras[i:i + batch_size]]
        pairs = [(e[:1], e[1:]) for e in enc if len(e) > 1]
        ids, mask, labels = collate(pairs, tok.pad_token_id, dev)
        logits, lab, rows, _, _ = forward_targets(model, ids, mask, labels)
        nll = torch.nn.functional.cross_entropy(logits.float(), lab, reduction="sum")
        total, count = total + float(nll), count + len(lab)
    return round(total / max(count, 1), 4)


def name_prompts(facts, own_paraphrases: int = 0, tok=None) -> tuple[list[dict], list[dict]]:
    """Each fact asked with its subject named by a short form people use (beacon/method/names.py: the file's aliases
    and the derived ones), and by a decoy that shares the short form but names another entity ("Zentrix
    Hotel"), in wordings never trained on: two of its held-out paraphrases that name the subject, else its
    question form. Recalling the target from a short form is the edit binding to the entity as people name it; from a
    decoy, the edit leaking to whatever shares a word with it. Records: fact (index), name, prompt."""
    from beacon.method.names import decoys, short_names, with_name
    from beacon.method.rewordings import held_out_paraphrases, question_form

    short, decoy = [], []
    for i, f in enumerate(facts):
        if not f.subject:
            continue
        asks = ([p for p in held_out_paraphrases(f, own_paraphrases) if f.subject.lower() in p.lower()] or
                [question_form(f)])[:2]
        for name in short_names(f.subject, f.aliases, tok):
            for ask in asks:
                if (p := with_name(ask, f.subject, name)) is not None:
                    short.append({"fact": i, "name": name, "prompt": p})
                for d in decoys(f.subject, name, tok)[:1]:
                    if (p := with_name(ask, f.subject, d)) is not None:
                        decoy.append({"fact": i, "name": d, "prompt": p})
    return short, decoy


def reverse_prompts(facts) -> list[dict]:
    """The reverse direction of each fact whose target names an entity (it starts with a capital): the
    target asked for its subject through the relation, "Marta Ilves is the CEO of" -> "Zentrix Robotics".
    Only facts with a subject and a relation (a noun: "CEO", "capital") have one. Behind the subject gate
    this text names no subject (it names the target), so the gate stays shut there: what the reverse
    recalls is what the base model already knew. Records: fact (index), prompt, target (the subject)."""
    out = []
    for i, f in enumerate(facts):
        target, relation = (f.target or "").strip(), (f.relation or "").strip()
        if f.subject and relation and target[:1].isupper() and f.subject.lower() not in target.lower():
            out.append({"fact": i, "prompt": f"{target} is the {relation} of", "target": f.subject})
    return out


def _crossed_count(*tables) -> dict:
    """How many measured prompts (every form, every probe set) were answered with another fact's target, of how
    many, and which: [(table, row, the other fact's id)]."""
    names = ["facts", "paraphrases", "question", "chat"]
    rows, n = [], 0
    for name, table in zip(names, tables[:4]):
        for j, r in enumerate(table):
            n += r is not None
            if r is not None and r.get("crossed"):
                rows.append([name, j, r["crossed"]])
    for name, recs in tables[4].items():
        n += len(recs)
        rows += [[name, j, r["crossed"]] for j, r in enumerate(recs) if r.get("crossed")]
    return {"count": len(rows), "of": n, "rows": rows}


def _frac(recs):
    recs = [r for r in recs if r is not None]
    return round(sum(r["recalled"] for r in recs) / len(recs), 4) if recs else None


def _copied(groups, keys, earlier: dict, unchanged) -> dict[int, dict[int, dict]]:
    """{group: {row: record}}: the rows whose prompt runs through the base model exactly (`unchanged`), copied
    from the `earlier` measurement and marked so."""
    copied = {}
    for g, key in enumerate(keys):
        old = earlier[key[0]][key[1]] if isinstance(key, tuple) else earlier[key]
        if key == "paraphrases":
            old = [r for rs in old for r in rs]
        copied[g] = {j: {**old[j], "unchanged": True} for j, p in enumerate(groups[g][0]) if unchanged(p)}
    return copied


def _fact_scores(model, tok, facts, raw: dict, copied: dict, earlier: dict | None) -> list[dict]:
    """The facts' own rows of the pass: their semantic distance (from the hidden state at the prompt's last token)
    and the numbers the categories read; a fact copied from `earlier` keeps its earlier ones."""
    mine = [j for j in range(len(facts)) if j not in copied]
    dist = cosine_distance(raw["hidden"][:len(mine)], target_vectors(model, tok, [facts[j] for j in mine]).cpu()) \
        if mine else []
    fact_scores, at = [], 0
    for j in range(len(facts)):
        if j in copied:
            fact_scores.append(earlier["fact_scores"][j])
        else:
            fact_scores.append({**{key: raw[key][at] for key in ("sample_logprob", "first_p")},
                                "distance": round(float(dist[at]), 4)})
            at += 1
    return fact_scores


def evaluate_facts(model, tok, facts, probe_sets=(), own_paraphrases: int = 0, forms: bool = True,
                   neutral_text: str | None = None, about_reference: list[dict] | None = None,
                   known: dict | None = None, earlier: dict | None = None, unchanged=None) -> dict:
    """Recall of each fact, of its held-out paraphrases, of its question and chat forms, and of each
    probe set (locality), plus fluency on neutral text, from one teacher-forced pass over every row (only the
    facts' own prompts that miss and the texts about each subject are generated: a person reads those).
    `probe_sets` is {name: facts} or one list.
    known: {"probes": {set name: records}, "neutral_nll": x} measured already on this model (a cache: the base
    model's answers to a shipped set are the same in every run); what it holds is not measured again.
    earlier, unchanged: a measurement of the same facts and sets on the same base model, and a test of a text
    that says it runs through that base model exactly (the subject gate's texts that name no subject): rows
    whose prompt passes are copied from `earlier`, marked "unchanged": True, and so is the neutral text's NLL.
    Returns {"facts", "paraphrases" (per fact), "question", "chat", "probes" ({name: recs}), "summary",
    "fact_scores" (per fact: its semantic distance, and sample_logprob and first_p as `score` gives them)}."""
    if not isinstance(probe_sets, dict):
        probe_sets = {"probes": list(probe_sets)} if probe_sets else {}
    known = known or {}
    known_probes = known.get("probes", {})
    targets = [f.target for f in facts]
    para_prompts = [(i, p) for i, f in enumerate(facts) for p in held_out_paraphrases(f, own_paraphrases)]
    short, decoy = name_prompts(facts, own_paraphrases, tok) if forms else ([], [])
    reverse = reverse_prompts(facts) if forms else []
    groups = [([f.prompt for f in facts], targets),
              ([p for _, p in para_prompts], [facts[i].target for i, _ in para_prompts]),
              ([question_form(f) for f in facts] if forms else [], targets if forms else []),
              ([x["prompt"] for x in short], [facts[x["fact"]].target for x in short]),
              ([x["prompt"] for x in decoy], [facts[x["fact"]].target for x in decoy]),
              ([x["prompt"] for x in reverse], [x["target"] for x in reverse])]
    names = [n for n in probe_sets if n not in known_probes]
    groups += [([p.prompt for p in probe_sets[n]], [p.target for p in probe_sets[n]]) for n in names]
    keys = ["facts", "paraphrases", "question", "short_names", "decoys", "reverse"] + [("probes", n) for n in names]
    copied = _copied(groups, keys, earlier, unchanged) if earlier is not None and unchanged is not None else {}
    todo = [([p for j, p in enumerate(ps) if j not in copied.get(g, {})],
             [t for j, t in enumerate(ts) if j not in copied.get(g, {})]) for g, (ps, ts) in enumerate(groups)]
    raw: dict = {}
    others = [(f.id, f.target) for f in facts]
    fresh = recall_tables(model, tok, todo, generated=[True] + [False] * (len(todo) - 1), scores=raw, others=others)
    tables = []
    for g, (ps, _) in enumerate(groups):
        it = iter(fresh[g])
        tables.append([copied[g][j] if j in copied.get(g, {}) else next(it) for j in range(len(ps))])
    fact_recs, para_recs, question, short_recs, decoy_recs, reverse_recs, *probe_recs = tables
    short_recs = [{**x, **r} for x, r in zip(short, short_recs)]
    decoy_recs = [{**x, **r} for x, r in zip(decoy, decoy_recs)]
    reverse_recs = [{**x, **r} for x, r in zip(reverse, reverse_recs)]
    fact_scores = _fact_scores(model, tok, facts, raw, copied.get(0, {}), earlier)
    paras = [[] for _ in facts]
    for (i, _), r in zip(para_prompts, para_recs):
        paras[i].append(r)
    chat = chat_table(model, tok, [chat_form(tok, f) for f in facts], targets, [f.prompt for f in facts],
                      others=others) if forms else []
    probes = {n: known_probes[n] if n in known_probes else probe_recs[names.index(n)] for n in probe_sets}
    about = subject_texts(model, tok, facts, reference=about_reference) if forms else []
    nll = None
    if neutral_text:
        if earlier is not None and unchanged is not None and unchanged(neutral_text):
            nll = earlier["summary"]["neutral_nll"]
        else:
            nll = known.get("neutral_nll") or text_nll(model, tok, neutral_text)
    summary = {"recall": _frac(fact_recs), "paraphrase": _frac(para_recs), "question": _frac(question),
               "chat": _frac(chat), "locality": {name: _frac(r) for name, r in probes.items()},
               "unchanged": {name: sum(bool(r.get("unchanged")) for r in recs) for name, recs in probes.items()},
               "crossed": _crossed_count(fact_recs, para_recs, question, chat, probes),
               "short_names": _frac(short_recs), "decoys": _frac(decoy_recs), "reverse": _frac(reverse_recs),
               "neutral_nll": nll,
               "subject_repetition": round(sum(a["repetition"] for a in about) / len(about), 4) if about else None,
               "subject_nll": round(sum(a["nll"] for a in about) / len(about), 4) if about else None}
    return {"facts": fact_recs, "paraphrases": paras, "question": question, "chat": chat, "probes": probes,
            "short_names": short_recs, "decoys": decoy_recs, "reverse": reverse_recs,
            "subject_texts": about, "summary": summary, "fact_scores": fact_scores}
