"""Names people use for a subject: its short forms, and decoys that share a short form but name someone else.

A fact file may list a subject's short forms itself (`aliases`: "Zentrix" for Zentrix Robotics, "the X
project" for Project X). Beacon also derives the forms people most often use:
* a name of several words with a generic part ("Zentrix Robotics", "Lake Ormisk", "the Brennoc valve",
  "Republic of Halvessa"): its distinctive word ("Zentrix", "Ormisk", "Brennoc", "Halvessa");
* a name of capitalised words only (a person, "Marta Ilves"): the last one ("Ilves").
A one-word subject has no shorter form. A word of the language is never a derived short form: "Players" is
the generic part of "Gullhaven Players", not its surname, and "Two" of Two Boats at Sennick names nothing
(`common_word`, read from the tokenizer's vocabulary; the file's aliases always count).

A decoy is another entity that shares the short form: the distinctive word with another generic part
("Zentrix Hotel"), a person with the same surname and another first name ("Anna Ilves"). A short form that
opens the subject gate opens it on decoys too: the decoy prompts measure what that costs.
"""
from __future__ import annotations

import re

ARTICLES = ("the", "a", "an")
# Capitalised words that say what kind of thing a name is, not which one: a short form leaves them out.
GENERIC = {
    "robotics", "motors", "foods", "airways", "airlines", "systems", "labs", "works", "studios", "textiles",
    "biotech", "group", "holdings", "inc", "ltd", "company", "corporation", "corp", "bank", "hotel", "museum",
    "university", "institute", "college", "school", "academy", "festival", "choir", "orchestra", "band",
    "gardens", "garden", "park", "pass", "lake", "mount", "mountain", "river", "bay", "island", "islands",
    "republic", "kingdom", "empire", "city", "town", "village", "valley", "harbour", "harbor", "port", "bridge",
    "tower", "castle", "palace", "cathedral", "church", "lighthouse", "station", "airport", "club", "team",
    "united", "rovers", "athletic", "fc", "league", "cup", "games", "prize", "award", "project", "foundation",
    "society", "association", "council", "ministry", "agency", "press", "records", "publishing", "media",
    "energy", "mining", "shipping", "logistics", "pharma", "therapeutics", "software", "technologies",
    "industries", "partners", "capital", "ventures", "brewery", "bakery", "restaurant", "cafe", "bistro",
    "theatre", "theater", "cinema", "gallery", "library", "hospital", "clinic", "market", "street", "road",
    "square", "dam", "canal", "forest", "desert", "sea", "ocean", "sans", "serif", "of", "and", "de", "van", "von",
}
# Lower-case words inside a person's name that belong to the surname: Vincent van Gogh is "van Gogh".
PARTICLES = {"van", "von", "de", "der", "den", "da", "di", "du", "del", "la", "le", "bin", "ibn", "al"}
DECOY_TAILS = ("Hotel", "Holdings", "Museum")
DECOY_FIRST_NAMES = ("Anna", "Pieter", "Lena")


def _words(subject: str) -> list[str]:
    words = subject.split()
    return words[1:] if words and words[0].lower() in ARTICLES else words


def _distinctive(word: str) -> bool:
    w = re.sub(r"\W", "", word)
    return len(w) >= 3 and w[:1].isupper() and w.lower() not in GENERIC


def token_id(tok, word: str) -> int | None:
    """The vocabulary id of `word` after a space where that is one token (a word the tokenizer knows, not a
    made-up name), else None."""
    ids = tok(" " + word, add_special_tokens=False).input_ids
    return ids[0] if len(ids) == 1 else None


def common_word(tok, word: str) -> bool:
    """Whether `word` is a word of the language rather than a name: one token in lower case after a space, and a
    more frequent one than its capitalised form (a BPE vocabulary numbers its merges in the order of their
    frequency: " glacier" comes before " Glacier", " Shakespeare" before " shakespeare", " Baker" before
    " baker"). A plural counts by its singular ("Ferries", "Caves"). Made-up names split into several tokens."""
    w = re.sub(r"\W", "", word)
    forms = [w] + ([w[:-3] + "y"] if w.endswith("ies") else []) + ([w[:-2], w[:-1]] if w.endswith("es") else
                                                                  [w[:-1]] if w.endswith("s") else [])
    for form in forms:
        low = token_id(tok, form.lower())
        if low is not None and len(form) >= 2:
            up = token_id(tok, form[:1].upper() + form[1:].lower())
            if up is None or low < up:
                return True
    return False


def _common(tok):
    return (lambda w: common_word(tok, w)) if tok is not None else (lambda w: False)


def _person(words: list[str], common) -> bool:
    """A name of capitalised words only (and particles), the last not a word of the language: "Marta Ilves",
    "Vincent van Gogh", not "Veltmann Sour"."""
    names = [w for w in words if w not in PARTICLES]
    return len(names) >= 2 and words[-1] not in PARTICLES and all(_distinctive(w) for w in names) \
        and not common(words[-1])


def _surname(words: list[str]) -> str:
    """The last name with the particles before it: "Gogh" of Vincent van Gogh is "van Gogh"."""
    at = len(words) - 1
    while at > 1 and words[at - 1] in PARTICLES:
        at -= 1
    return " ".join(words[at:])


def short_names(subject: str, aliases=(), tok=None) -> list[str]:
    """The fact file's own aliases, then the derived short forms of `subject`, each once, none the subject itself.
    With `tok`, no derived form is a word of the language (`common_word`), and a name of capitalised words whose
    last is one ("Gullhaven Players", "Veltmann Sour") is a name and its kind, not a person: its other words."""
    subject = (subject or "").strip()
    out = [a.strip() for a in aliases if a and a.strip()]
    words = _words(subject)
    common = _common(tok)
    if len(words) >= 2:
        if _person(words, common):
            out.append(_surname(words))
        else:
            out += [w for w in words if _distinctive(w) and not common(w)]
    key = subject.lower()
    return [x for x in dict.fromkeys(out) if x.lower() != key and x.lower() not in ARTICLES]


def decoys(subject: str, short: str, tok=None) -> list[str]:
    """Other entities that share the short form `short` of `subject`: another generic part, or another first name
    (`tok` as for short_names)."""
    words = _words(subject)
    if not words or short not in (words + [_surname(words)]):
        return []
    if _person(words, _common(tok)):                        # a person: another first name, the same surname
        return [f"{first} {short}" for first in DECOY_FIRST_NAMES if first not in words][:2]
    return [f"{short} {tail}" for tail in DECOY_TAILS if tail not in words][:2]


def with_name(prompt: str, subject: str, name: str) -> str | None:
    """`prompt` with its subject replaced by `name` (a leading article kept only before the full name's generic
    part: "The Brennoc valve was" -> "Brennoc was"), or None where the prompt does not contain the subject."""
    at = prompt.lower().find(subject.lower())
    if at < 0:
        return None
    before, after = prompt[:at], prompt[at + len(subject):]
    if before.split() and before.split()[-1].lower() in ARTICLES and name.split()[0].lower() not in ARTICLES:
        before = before[:before.lower().rfind(before.split()[-1].lower())]
    text = before + name + after
    return text[:1].upper() + text[1:] if not before.strip() else text
