"""Rewordings: learn a fact as knowledge about its subject, not as one string.

Trained on its prompt alone, a fact is learned as that prompt: "Zentrix Robotics is led by its
chief executive," stays unanswered (16% of held-out paraphrases on fresh facts with the guard on).
So each fact is also trained in a few forms Beacon writes from its subject and relation, and in
forms that need neither:

    context    a neutral sentence before the prompt            (the answer must not need a fresh start)
    lead       "<subject> (<relation>):"                        (subject first, as people reword)
    question   "Q: What is the <relation> of <subject>?\nA:"
    summary    "In short, the <relation> of <subject> is"
    chat       the model's chat template, user asks the question, the assistant answers
    filler     "As far as I know, <prompt>"                     (facts without subject/relation)

and, if the person asks for it, in some of their own paraphrases (the rest stay held out).

Evaluation uses other wordings than training, so a fact that is only learned in the trained forms
does not pass: the held-out paraphrases (never trained), the question form "Question: <prompt>
what?\nAnswer:" and the chat form, where the user asks to complete the sentence and the answer
must contain the target.
"""
from __future__ import annotations

import random
import re

from beacon.model.lm import ARTICLES, generate, normalise

# Short everyday sentences put before a prompt. None of them says anything about a fact, probe or anchor.
CONTEXTS = (
    "Here is something worth knowing.",
    "I read about this last week.",
    "Let me check my notes.",
    "This came up at dinner yesterday.",
    "A colleague asked me about it.",
    "It is a short story.",
    "The answer surprised a few people.",
    "We talked about it on the way home.",
)
FORMS = ("context", "lead", "question", "summary", "chat", "filler")


def _relation_phrase(fact) -> str | None:
    return fact.relation.strip() if fact.relation and fact.relation.strip() else None


def chat_prompt(tok, user: str) -> str | None:
    """The text an instruct model sees before its answer, or None without a chat template."""
    if not getattr(tok, "chat_template", None):
        return None
    return tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)


def training_prompts(fact, tok=None, forms=None, own_paraphrases: int = 0, seed: int = 0) -> list[str]:
    """Prompts to train `fact` on: its own prompt first, then the rewordings. Deterministic per seed. A subject's
    short forms are not trained: the gate opens on them (beacon/method/gate.py), and training the prompt with
    them too bought 5-14 points of short-name recall for 5-25% more steps (docs/results.md)."""
    rng = random.Random(f"{seed}:{fact.id}")
    forms = FORMS if forms is None else forms
    subj, rel = fact.subject, _relation_phrase(fact)
    out = [fact.prompt]
    for form in forms:
        if form == "context":
            out.append(f"{rng.choice(CONTEXTS)} {fact.prompt}")
        elif form == "filler" and not (subj and rel):
            out.append(f"As far as I know, {fact.prompt}")
        elif subj and rel:
            if form == "lead":
                out.append(f"{subj} ({rel}):")
            elif form == "question":
                out.append(f"Q: What is the {rel} of {subj}?\nA:")
            elif form == "summary":
                out.append(f"In short, the {rel} of {subj} is")
            elif form == "chat" and tok is not None:
                p = chat_prompt(tok, f"What is the {rel} of {subj}?")
                if p:
                    out.append(p)
    out += fact.paraphrases[:own_paraphrases]
    return list(dict.fromkeys(out))   # no form twice


def held_out_paraphrases(fact, own_paraphrases: int = 0) -> list[str]:
    """The paraphrases never trained on: what generalisation is measured on."""
    return fact.paraphrases[own_paraphrases:]


def question_form(fact) -> str:
    return f"Question: {fact.prompt} what?\nAnswer:"


def chat_form(tok, fact) -> str | None:
    return chat_prompt(tok, f'Complete the sentence with the right answer: "{fact.prompt} ..."')


# Two invented examples that lead with the subject and end on the answer, the way people reword.
_FEW_SHOT = ("Sentence: The head chef of Lorimer Bistro is Anna Pell.\n"
             "In other words: Lorimer Bistro's kitchen is run by its head chef, Anna Pell.\n\n"
             "Sentence: The mayor of Dunmore is Carl Ovid.\n"
             "In other words: Dunmore is governed by its mayor, Carl Ovid.\n\n"
             "Sentence: {sentence}\nIn other words:")


def subject_lead(fact) -> str | None:
    """The words a model-written rewording starts with: the fact's subject as its prompt writes it, with the
    prompt's article ("The telephone"), as a sentence opens ("Gold", but "iPhone"). Left to itself the model
    mostly puts the answer first ("Samsung is the company that makes the iPhone."), which leaves no prompt
    to cut; people who reword a fact mostly lead with its subject."""
    subj = (fact.subject or "").strip()
    at = fact.prompt.lower().find(subj.lower()) if subj else -1
    if at < 0:
        return None
    words = fact.prompt[:at].split()
    article = words[-1] + " " if words and words[-1].lower() in ARTICLES else ""
    lead = article + fact.prompt[at:at + len(subj)]
    brand = " " not in lead and lead[:1].islower() and any(c.isupper() for c in lead[1:])   # iPhone, eBay
    return lead if brand else lead[:1].upper() + lead[1:]


def model_rewordings(model, tok, facts, per_fact: int = 3, seed: int = 0, avoid=None) -> list[list[str]]:
    """Rewordings the base model writes itself: it rewrites "prompt target." in other words (few-shot,
    nucleus sampling), starting from the fact's subject (subject_lead), and each rewrite that names the
    subject before the target is cut just before the target into a training prompt ("Zentrix Robotics is
    run by its chief executive,").
    avoid(fact_index, prompts) -> the prompts to drop (the caller drops near copies of held-out
    paraphrases, so that generalisation is still measured on wordings never trained)."""


    k = 2 * per_fact
    leads = [subject_lead(f) for f in facts]
    queries = [_FEW_SHOT.format(sentence=f"{f.prompt} {f.target}.") + (" " + lead if lead else "")
               for f, lead in zip(facts, leads)]
    texts = generate(model, tok, queries, max_new_tokens=28, sample=True, temperature=0.8, top_p=0.9,
                     generator_seed=seed + 2, batch_size=32, stop="\n", repeats=k)
    out = []
    for i, f in enumerate(facts):
        got, seen = [], {normalise(f.prompt)}
        for text in texts[i * k:(i + 1) * k]:
            line = (leads[i] + text.split("\n")[0]).strip() if leads[i] else text.strip().split("\n")[0]
            at = line.lower().find(f.target.lower())
            if at <= 0:
                continue
            prompt = line[:at].rstrip()
            if f.subject:
                where = prompt.lower().find(f.subject.lower())
                if where < 0 or len(prompt[where + len(f.subject):].split()) < 2:
                    continue                              # about the subject, and more than "<subject> is"
            if len(prompt.split()) < 3 or re.search(r"\w$", line[:at]) or normalise(prompt) in seen:
                continue                                  # too short, cut inside a word, or a repeat
            seen.add(normalise(prompt))
            got.append(prompt)
        if avoid is not None and got:
            drop = set(avoid(i, got))
            got = [p for p in got if p not in drop]
        out.append(got[:per_fact])
    return out
