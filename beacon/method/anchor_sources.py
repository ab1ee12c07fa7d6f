"""Where the locality guard's anchors come from, and which ones it holds (`build_anchors`).

Where anchors come from. Behind the subject gate (the default) text that names no subject cannot move, so the
guard holds what the base model says of each edited subject: **relation anchors** (each subject asked by the
other facts' relations) and **held texts** (how the base model goes on after each fact and about each subject).
With short names no decoy ("Zentrix Hotel") is held: a short form inside a longer name leaves the gate shut, so
the base model answers there by construction. On every token (gate none), `guard_anchors` chooses among:
* **Neighbours** (with sampled, the default on every token), built from the base model itself, so they protect whatever the model
  knows near the facts rather than what a hand-written list resembles. For each fact, the prompt
  up to its subject ("The CEO of") is continued by the base model a few times to get other subjects
  ("Apple", "Google"); the fact's prompt with such a subject ("The CEO of Apple is") is answered by
  the base model's greedy completion. Teaching "the Brennoc valve was invented by Ottilie Brask"
  then also holds "the telephone was invented by ..." where the base model had it. (In the spirit
  of the neighbourhood prompts of ROME/MEMIT, which those papers use to measure specificity;
  here they are the training constraint.)
* **Sampled**: text the base model writes itself in reply to topic-free requests.
* **Hand-written** `assets/anchors.txt` (everyday text and general-knowledge facts), or the visitor's file.
* Near anchors: half of each guard batch comes from the anchors nearest the facts (sentence-embedding
  cosine, round robin over facts so one relation with many facts does not take every place).
An anchor that restates a fact's prompt or subject is left out: the guard would pull the model back
to the answer the person wants replaced.
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from beacon.method.anchors import (ANCHORS_FILE, ANSWER_MARK, HOLD_MARK, anchor_text, read_anchors, split_anchor,
                                   split_held)
from beacon.config import guard_sources
from beacon.model.lm import ARTICLES, generate, normalise, score

def _subject_span(fact) -> tuple[str, str] | None:
    """(text before the subject, text after it) in the fact's prompt, or None."""
    if not fact.subject:
        return None
    i = fact.prompt.lower().find(fact.subject.lower())
    if i < 0:
        return None
    return fact.prompt[:i], fact.prompt[i + len(fact.subject):]


_CUT = re.compile(r"[.,;:!?()\[\]\"\n’']|(?:^|\s)(?:is|was|are|were|has|had|will|who|that|and|in|on|by|to)\b")


def _clean_subject(text: str, words: int) -> str:
    """The first few words of a sampled continuation, cut at punctuation or a verb."""
    text = _CUT.split(text.strip(), maxsplit=1)[0]
    return " ".join(text.split()[:max(words, 1) + 1]).strip(" '")


def _answer(text: str) -> str:
    """The base model's answer: its greedy continuation up to the end of the first clause."""
    return re.split(r"[.,;:!?\n]|\s-\s", text.strip(), maxsplit=1)[0].strip()


@torch.no_grad()
def neighbour_anchors(model, tok, facts, per_fact: int = 5, seed: int = 0, siblings: bool = False) -> list[str]:
    """Fact anchors `prompt | answer` that share a fact's relation with other subjects, the subjects
    and the answers both written by the base model (adapter off, if any). Subjects come from the
    model's continuations of the prompt's lead ("The CEO of" -> "Apple"), for leads of two words or
    more; with `siblings`, from a list the model continues after the fact's subject instead (things of
    its kind: Microsoft -> Apple, Google), which subject-first prompts get too. A fact whose prompt
    does not contain its subject gives none."""
    spans = [(f, _subject_span(f)) for f in facts]
    spans = [(f, s) for f, s in spans if s]
    if not spans or per_fact <= 0:
        return []
    if siblings:
        from beacon.experimental.siblings import siblings as sibling_items
    k = 2 * per_fact
    greedy, sampled_lists, led = [], [], []
    if siblings:
        from beacon.experimental.siblings import LIST

        lists = [LIST.format(subject=f.subject) for f, _ in spans]
        greedy = generate(model, tok, lists, max_new_tokens=20)
        sampled_lists = generate(model, tok, lists, max_new_tokens=20, sample=True, temperature=0.9, top_p=0.9,
                                 generator_seed=seed + 3, repeats=2)
    else:   # a lead of one word ("The" for "The Mona Lisa was painted by") or none gives junk subjects: none
        led = [j for j, (_, s) in enumerate(spans) if len(s[0].split()) >= 2]
    # Nucleus sampling: the full distribution's tail gives junk subjects ("The -space-space- was painted by").
    sampled = generate(model, tok, [spans[j][1][0].rstrip() for j in led], max_new_tokens=8, sample=True,
                       temperature=0.9, top_p=0.9, generator_seed=seed, repeats=k) if led else []
    by_lead = {j: sampled[n * k:(n + 1) * k] for n, j in enumerate(led)}
    taken = {normalise(f.subject) for f in facts if f.subject}
    prompts = []
    for j, (f, (before, after)) in enumerate(spans):
        words = len(f.subject.split()) + 1
        candidates = sibling_items([greedy[j], *sampled_lists[2 * j:2 * j + 2]], f.subject) if siblings else \
            [_clean_subject(t, words) for t in by_lead.get(j, [])]
        got = 0
        for subj in candidates:
            if siblings and before.split() and len(subj.split()) > 1 and \
                    before.split()[-1].lower() == subj.split()[0].lower():
                subj = subj.split(None, 1)[1]       # "The " + "the radio": one article
            if not before.strip():   # the subject opens the prompt: so does its sibling
                subj = subj[:1].upper() + subj[1:]
            key = normalise(subj)
            if not key or key in taken or len(key) < 2:
                continue
            taken.add(key)
            prompts.append((before + subj + after).strip())
            got += 1
            if got == per_fact:
                break
    if not prompts:
        return []
    answers = generate(model, tok, prompts, max_new_tokens=8)
    out = []
    for p, a in zip(prompts, answers):
        a = _answer(a)
        if a and len(a) <= 60:
            out.append(f"{p}{ANSWER_MARK}{a}")
    return out


# Names no model knows, put in a relation anchor's subject's place: what the base model answers for
# them too is what it says of any name, not knowledge of this subject.
STAND_INS = ("Qorvath", "Blemsk Group", "Tavi Orlenko")
# A relation anchor's answer is knowledge when the base model gives its first word with p >= e^-2 (0.14):
# "Tokyo" (-0.35), "Steve Jobs" (-0.74 to -1.87), not "the bandwagon" or "a single" (-3.7 to -5.8).
# Read off the counterfactual sample's anchors at seed 1; seeds 0 and 2 were measured after.
KNOWN_LOGPROB = -2.0


@torch.no_grad()
def relation_anchors(model, tok, facts, per_fact: int = 8, seed: int = 0, specific: float = 2.5) -> list[str]:
    """Fact anchors `prompt | answer` that ask about a fact's own subject by the other facts' relations
    ("The currency of Italy is", from Japan's currency fact), answered by the base model. Behind the
    subject gate they are what is left to hold: text that names no subject cannot move, and without
    them the subject's tokens learn the new answer for every question ("The official language of Italy
    is" -> "Milan"). A relation the subject is taught by any fact is skipped (its answer is being replaced),
    and so is a prompt the base model answers as it answers the fact ("The capital of The Beatles is" ->
    "Liverpool", the city the fact "The Beatles were a band from" moves): it asks what the fact asks.
    specific > 0 holds only subjects the base model knows: those whose answers depend on who the subject
    is (subject_specificity at least `specific` nats), and of theirs only the prompts whose own answer does.
    Its guesses about a name it has never seen ("Zentrix Robotics was founded in the year | 2015"), or
    about a known one asked a question that means nothing ("The light bulb was painted by | a single"),
    are then not held against what the person is teaching it."""
    requests = relation_requests(facts, per_fact, seed)
    if not requests.prompts:
        return []
    answers = generate(model, tok, requests.prompts + [f.prompt for f in facts], max_new_tokens=8)
    return relation_anchors_from(model, tok, requests, answers[:len(requests.prompts)],
                                 answers[len(requests.prompts):], specific, facts)


class Requests(NamedTuple):
    """Prompts for the base model to answer, and what each belongs to (a builder's own bookkeeping)."""
    prompts: list
    owner: list
    extra: object = None


def _fill(b, a, name):
    return (b + (name if b.strip() else name[:1].upper() + name[1:]) + a).strip()


def relation_requests(facts, per_fact: int = 8, seed: int = 0) -> Requests:
    """relation_anchors' prompts: each fact's subject asked by up to `per_fact` of the other facts' relations."""
    spans = [(f, s) for f in facts if (s := _subject_span(f))]
    templates, seen = [], set()
    for f, (before, after) in spans:
        key = normalise(before + "{}" + after)
        if key not in seen:
            seen.add(key)
            templates.append((f.relation or key, before, after))
    rng = random.Random(seed)
    prompts, owner = [], []
    asked: dict[str, set] = {}      # every relation a subject is taught: none of them is held for it
    for f, (before, after) in spans:
        asked.setdefault(normalise(f.subject), set()).update({f.relation or normalise(before + "{}" + after),
                                                              normalise(before + "{}" + after)})
    for k, (f, (before, after)) in enumerate(spans):
        own = asked[normalise(f.subject)]
        cands = [t for t in templates if t[0] not in own and normalise(t[1] + "{}" + t[2]) not in own]
        for _, b, a in rng.sample(cands, min(per_fact, len(cands))):
            if (p := _fill(b, a, f.subject)) not in prompts:       # a subject with two facts: ask once
                prompts.append(p)
                owner.append((f.subject, b, a))
    return Requests(prompts, owner)


def relation_anchors_from(model, tok, requests: Requests, answers: list[str], old_answers: list[str],
                          specific: float = 2.5, facts=None) -> list[str]:
    """relation_anchors from the base model's greedy answers (8 tokens) to its requests' prompts, and its old
    answers to the facts' own prompts (`facts`, in order; only their first word counts)."""
    replaced: dict[str, set] = {}   # the base's answers that the subject's facts replace
    for f, a in zip(facts, old_answers):
        replaced.setdefault(normalise(f.subject or ""), set()).add(_head(_answer(a)))
    kept = []
    for p, a, (subject, b, after) in zip(requests.prompts, answers, requests.owner):
        a = _answer(a)
        if a and len(a) <= 60 and _head(a) not in replaced.get(normalise(subject), set()) - {""}:
            kept.append((p, a, subject, b, after))
    if specific > 0 and kept:
        # A known subject's anchor is held only where its own answer is knowledge too: specific to the subject
        # and said with some confidence ("The capital of Japan is | Tokyo"), not "The light bulb was painted by |
        # a single", whose pull pinned "The first practical light bulb was made by" (docs/results.md).
        per_subject, per_anchor = subject_specificity(model, tok, kept, _fill)
        kept = [x for x in kept if per_subject.get(x[2], 0) >= specific and x[0] in per_anchor
                and per_anchor[x[0]][0] >= specific and per_anchor[x[0]][1] >= KNOWN_LOGPROB]
    return [f"{p}{ANSWER_MARK}{a}" for p, a, *_ in kept]


def subject_specificity(model, tok, asked, fill, known: float = KNOWN_LOGPROB
                        ) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Per subject, the median over its relation prompts of how much likelier (nats) the base model's
    answer starts as it does for this subject than for STAND_INS in its place; and per prompt, that
    number and the log-probability of the answer's start. Subjects with no answer at log-prob `known`
    or more are left out (-inf per prompt). An answer that repeats the
    subject's name measures nothing and is left out. Measured on the samples (seed 0, every subject): the known
    subjects of counterfactual.csv 1.6 (Kenya) to 4.9 nats, 13 of 14 at least 2.6; invented.csv's 27
    subjects 0.0-2.7, 4 of them at 2.0 or more; people.csv's 32 at most 1.7."""
    rows = [x for x in asked if not _names(x[1], x[2])]
    if not rows:
        return {}, {}
    lead = [_lead(a) for _, a, *_ in rows]
    lp = score(model, tok, [p for p, *_ in rows], lead)["logprob"]
    # A subject none of whose answers is said with log-prob `known` has nothing to hold (relation_anchors
    # drops such rows): its stand-ins, three rows scored for each of its own, are not scored. On 18 invented
    # facts that left 192 of 360 stand-in rows to score.
    sure = {x[2] for x, v in zip(rows, lp) if v >= known}
    scored = [i for i, x in enumerate(rows) if x[2] in sure]
    n = len(STAND_INS)
    stand = score(model, tok, [fill(rows[i][3], rows[i][4], name) for i in scored for name in STAND_INS],
                  [lead[i] for i in scored for _ in range(n)])["logprob"] if scored else []
    per: dict[str, list] = {}
    one = {p: (float("-inf"), lp[i]) for i, (p, *_) in enumerate(rows)}
    for j, i in enumerate(scored):
        p, _, subject, *_ = rows[i]
        one[p] = (lp[i] - sum(stand[j * n:(j + 1) * n]) / n, lp[i])
        per.setdefault(subject, []).append(one[p][0])
    med = {s: float(np.median(v)) for s, v in per.items()}
    return med, one


def _lead(answer: str) -> str:
    """An answer up to its first word that is not an article ("the Norwegian" of "the Norwegian Kroner")."""
    words = answer.split()
    k = next((i for i, w in enumerate(words) if w.lower() not in ARTICLES), len(words) - 1)
    return " ".join(words[:k + 1])


def _names(answer: str, subject: str) -> bool:
    """The answer repeats a word of the subject's name ("The currency of the Halvessa is | Halvessa")."""
    a = re.findall(r"\w+", answer.lower())
    return any(w in a for w in re.findall(r"\w+", subject.lower()) if len(w) > 3)


def _head(answer: str) -> str:
    """An answer's first word after any article: "the Pacific Ocean" and "Pacific" share "pacific"."""
    words = [w for w in normalise(answer).split() if w not in ARTICLES]
    return words[0] if words else ""


ABOUT = "Here is a short paragraph about {subject}.\n\n"
ASK_ABOUT = "Write a few sentences about {subject}."   # not the report's "Tell me about ...": that one measures


@torch.no_grad()
def subject_text_anchors(model, tok, facts, tokens: int = 16) -> list[str]:
    """Text anchors `context |> text` that go on after a subject is named, written by the base model
    (greedy): after each fact as it is taught ("The capital of Italy is Milan. |> The city is ..."), after
    a line that announces the subject ("Here is a short paragraph about Italy. |> Italy is ...") and, with a
    chat template, in reply to a request about it (ASK_ABOUT). Behind the
    gate from the subject on, every position after a subject is open, and the relation anchors cover only
    the questions of known subjects: without these, the tuned model answered anything about a subject with
    its new answer ("Tell me about Italy." -> "Spain. Spain. Spain."). Only the text after the context is
    held, and it is cut before the base model's old answer to any of the subject's facts ("Rome"), which
    the guard must not hold."""
    requests = held_requests(tok, facts)
    if not requests.prompts or tokens <= 0:
        return []
    named = [f for f in facts if f.subject and f.subject.strip()]
    old = generate(model, tok, [f.prompt for f in named], max_new_tokens=8)
    return held_anchors_from(requests, generate(model, tok, requests.prompts, max_new_tokens=tokens), named, old)


def held_requests(tok, facts) -> Requests:
    """subject_text_anchors' contexts: each fact as taught, each subject announced and, with a chat template,
    asked about; owner: the subject each belongs to."""
    from beacon.method.rewordings import chat_prompt, subject_lead

    facts = [f for f in facts if f.subject and f.subject.strip()]
    if not facts:
        return Requests([], [])
    subjects = list(dict.fromkeys(f.subject.strip() for f in facts))
    contexts = [f"{f.prompt} {f.target}" + ("" if f.target[-1:] in ".!?" else ".") for f in facts]
    leads = {f.subject.strip(): subject_lead(f) or f.subject.strip() for f in facts}
    contexts += [ABOUT.format(subject=leads[s]) for s in subjects]
    owners = [f.subject.strip() for f in facts] + subjects
    if chat_prompt(tok, "Hi.") is not None:     # asked through the chat template too
        contexts += [chat_prompt(tok, ASK_ABOUT.format(subject=s)) for s in subjects]
        owners += subjects
    return Requests(contexts, owners)


def held_anchors_from(requests: Requests, texts: list[str], facts, old_answers: list[str]) -> list[str]:
    """subject_text_anchors from the base model's greedy texts after each context, cut before the first word of
    its old answer (`old_answers`, to the prompts of `facts` in order) to any of the subject's facts."""
    replaced: dict[str, set] = {}   # the heads of the base model's old answers, per subject
    for f, a in zip(facts, old_answers):
        if f.subject and f.subject.strip() and (h := _head(_answer(a))):
            replaced.setdefault(f.subject.strip(), set()).add(h)
    out = []
    for context, owner, text in zip(requests.prompts, requests.owner, texts):
        words = text.split()
        cut = next((i for i, w in enumerate(words) if normalise(w) in replaced.get(owner, ())), len(words))
        text = " ".join(words[:cut])
        if len(text.split()) >= 4:
            out.append(f"{context}{HOLD_MARK}{text}")
    return out


# Requests with no topic: an instruct model answers them with whatever it tends to say and know. From
# a bare one-word opener ("The") this model, with no BOS token, writes junk ("The-focused-Echo...").
REQUESTS = ("Write a few sentences about anything you like.", "Tell me something interesting.",
            "Share a fact you know well.", "Explain something to a curious child.", "Describe a place.",
            "Tell me about a famous person.", "Write a short paragraph about history.",
            "What is something everyone should know?")
OPENERS = ("Once", "In the", "Many people", "One of the", "There are", "Most")


@torch.no_grad()
def sampled_anchors(model, tok, n: int = 40, tokens: int = 40, seed: int = 0) -> list[str]:
    """Plain-text anchors the base model writes itself (nucleus sampling, T = 0.8, top-p 0.9), its
    replies to topic-free requests through its chat template (short openers without one): the guard
    then holds the model's distribution on its own kind of text, whatever knowledge it draws on."""
    from beacon.method.rewordings import chat_prompt

    if n <= 0:
        return []
    chat = chat_prompt(tok, REQUESTS[0]) is not None
    leads = [chat_prompt(tok, REQUESTS[i % len(REQUESTS)]) if chat else OPENERS[i % len(OPENERS)] for i in range(n)]
    # One decode batch of up to 64 rows: 40 texts in one batch instead of 32 + 8 took 41 s against 48 s.
    texts = generate(model, tok, leads, max_new_tokens=tokens, sample=True, temperature=0.8, top_p=0.9,
                     generator_seed=seed + 1, batch_size=64)
    out = []
    for lead, t in zip(leads, texts):
        t = " ".join((t if chat else f"{lead} {t}").split())
        t = t[:t.rfind(".") + 1] if "." in t[20:] else t     # end at a sentence's end where there is one
        if len(t.split()) >= 6:
            out.append(t)
    return out


# ---------------------------------------------------------------- which anchors, and the near ones

def guard_anchors(embedder, facts, anchors: list[str], near: int = 16, restate: float = 0.9, about_subject=()):
    """(anchors usable by the guard, indices of the nearest to the facts: at least `near`, two per
    fact up to 32; excluded anchors). An anchor in `about_subject` (relation_anchors) names a fact's
    subject on purpose: it is left out only if it asks what a fact asks."""
    from beacon.method.semantic import embed

    if not facts or not anchors:
        return list(anchors), [], []
    keys = [normalise(f.subject or "") for f in facts if f.subject] + [normalise(f.prompt) for f in facts]
    texts = [anchor_text(a) for a in anchors]
    a = embed(embedder, texts)
    sim = a @ embed(embedder, [f.prompt for f in facts]).T          # [anchors, facts]
    keep, excluded = [], []
    for i, text in enumerate(texts):
        t = normalise(text)
        # a held text restates its fact on purpose: only what follows the fact is held
        if sim[i].max() >= restate and not split_held(anchors[i]) or anchors[i] not in about_subject and \
                any(k and (t.startswith(k) or f" {k} " in f" {t} ") for k in keys):
            excluded.append(anchors[i])
        else:
            keep.append(i)
    # Round robin over the facts, each fact's nearest anchors first: ranked by the best match
    # alone, four capital edits would take every place and the chemical symbol none.
    count = min(len(keep), max(near, min(2 * len(facts), 32)))
    nearest = []
    for row in np.argsort(-sim[keep], axis=0):                     # rank r: each fact's r-th nearest
        for j in map(int, row):
            if j not in nearest:
                nearest.append(j)
        if len(nearest) >= count:
            break
    return [anchors[i] for i in keep], nearest[:count], excluded


def restating(embedder, anchors: list[str], facts, threshold: float = 0.9) -> list[int]:
    """Indices of anchors whose prompt asks what one of `facts` asks (same normalised prompt, or
    sentence-embedding cosine >= threshold). Used to keep measured locality honest: an anchor
    that restates a probe would protect that very probe."""
    from beacon.method.semantic import embed

    if not anchors or not facts:
        return []
    prompts = [split_anchor(a)[0] for a in anchors]
    own = {normalise(f.prompt) for f in facts}
    sim = embed(embedder, prompts) @ embed(embedder, [f.prompt for f in facts]).T
    return [i for i, p in enumerate(prompts) if normalise(p) in own or sim[i].max() >= threshold]


def build_anchors(model, tok, facts, probes: dict, cfg, embedder, emit=lambda *a, **k: None, old_answers=None):
    """(anchors, indices of the near ones, what the report says of them) for a run with `cfg`:
    neighbours and sampled text written by the base model, and/or the shipped file; behind the subject
    gate, the relation anchors (the subject asked by the other facts' relations). Anchors that
    restate a probe are left out so that locality is measured on knowledge the guard did not see;
    those that restate a kept fact are left out so the guard does not hold the old answer. old_answers: the base
    model's greedy answers to the facts' prompts where the caller has them (the recall measured before)."""
    if not cfg.train.reads_anchors or not facts:   # no anchors to make or embed
        return [], [], None
    pool, sources = [], guard_sources(cfg.guard_anchors)
    if cfg.anchors_file and "file" not in sources:   # the visitor's own anchors: the file source reads them
        sources.append("file")
    if cfg.train.gate != "none":
        # Behind the gate an anchor that names no subject cannot move, and one that names a subject in
        # another source's text would hold the old answer: the relation anchors are the guard's, whatever
        # the sources (which choose the anchors of an adapter on every token).
        sources = ["relations"]
    if "neighbours" in sources:
        emit("guard", "asking the base model for neighbour facts to protect")
        pool += neighbour_anchors(model, tok, facts, cfg.neighbours_per_fact, cfg.train.seed)
    if "siblings" in sources:
        emit("guard", "asking the base model for things of each subject's kind to protect")
        pool += neighbour_anchors(model, tok, facts, cfg.neighbours_per_fact, cfg.train.seed, siblings=True)
    if "sampled" in sources:
        emit("guard", "sampling the base model's own text to protect")
        pool += sampled_anchors(model, tok, cfg.sampled_anchors, seed=cfg.train.seed)
    if "file" in sources:
        pool += read_anchors(cfg.anchors_file or ANCHORS_FILE)
    about_subject = set()
    if "relations" in sources:
        emit("guard", "asking the base model what it says of each subject by the other facts' relations, and how "
                      "it goes on after each fact and about each subject")
        # One greedy decode for the relation prompts, the held texts' contexts and (unless the caller measured
        # them) the facts' own prompts: the base model's old answers both need.
        rel = relation_requests(facts, seed=cfg.train.seed)
        held = held_requests(tok, facts) if cfg.train.gate == "from-subject" and cfg.held_texts else Requests([], [])
        own = [] if old_answers is not None else [f.prompt for f in facts]
        texts = generate(model, tok, rel.prompts + held.prompts + own, batch_size=256,
                         max_new_tokens=[8] * len(rel.prompts) + [cfg.held_texts] * len(held.prompts) + [8] * len(own))
        at = len(rel.prompts) + len(held.prompts)
        old = old_answers if old_answers is not None else texts[at:at + len(own)]
        about_subject |= set(relation_anchors_from(model, tok, rel, texts[:len(rel.prompts)], old,
                                                   cfg.relation_specific, facts))
        named = [(f, a) for f, a in zip(facts, old) if f.subject and f.subject.strip()]
        about_subject |= set(held_anchors_from(held, texts[len(rel.prompts):len(rel.prompts) + len(held.prompts)],
                                               [f for f, _ in named], [a for _, a in named]))
        pool += sorted(about_subject)
    bad = set(restating(embedder, pool, [p for ps in probes.values() for p in ps]))
    pool = [a for i, a in enumerate(pool) if i not in bad]
    anchors, near, excluded = guard_anchors(embedder, facts, pool, about_subject=about_subject)
    about = {"file": Path(cfg.anchors_file).name} if cfg.anchors_file else {}
    return anchors, near, {"source": ",".join(sources), **about, "anchors": len(anchors), "all": anchors,
                           "near": [anchors[i] for i in near], "excluded": excluded,
                           "restating_probes_left_out": len(bad), "near_share": cfg.train.guard_near}


# ---------------------------------------------------------------- the loss
