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
    """Prompts to train `fact` on: its own prompt first, then the rewordings. Deterministic per seed."""
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
