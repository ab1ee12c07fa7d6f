"""Names people use for a subject: its short forms, and decoys that share a short form but name someone else.

A fact file may list a subject's short forms itself (`aliases`: "Zentrix" for Zentrix Robotics, "the X
project" for Project X). Beacon also derives the forms people most often use:
* a name of several words with a generic part ("Zentrix Robotics", "Lake Ormisk", "the Brennoc valve",
  "Republic of Halvessa"): its distinctive word ("Zentrix", "Ormisk", "Brennoc", "Halvessa");
* a name of capitalised words only (a person, "Marta Ilves"): the last one ("Ilves").
A one-word subject has no shorter form.

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
DECOY_TAILS = ("Hotel", "Holdings", "Museum")
DECOY_FIRST_NAMES = ("Anna", "Pieter", "Lena")


def _words(subject: str) -> list[str]:
    words = subject.split()
    return words[1:] if words and words[0].lower() in ARTICLES else words


def _distinctive(word: str) -> bool:
    w = re.sub(r"\W", "", word)
    return len(w) >= 3 and w[:1].isupper() and w.lower() not in GENERIC


def short_names(subject: str, aliases=()) -> list[str]:
    """The fact file's own aliases, then the derived short forms of `subject`, each once, none the subject itself."""
    subject = (subject or "").strip()
    out = [a.strip() for a in aliases if a and a.strip()]
    words = _words(subject)
    if len(words) >= 2:
        distinct = [w for w in words if _distinctive(w)]
        if distinct and len(distinct) == len(words):      # capitalised words only: a person's surname
            out.append(words[-1])
        else:
            out += distinct
    key = subject.lower()
    return [x for x in dict.fromkeys(out) if x.lower() != key and x.lower() not in ARTICLES]


def decoys(subject: str, short: str) -> list[str]:
    """Other entities that share the short form `short` of `subject`: another generic part, or another first name."""
    words = _words(subject)
    if not words or short not in words:
        return []
    if all(_distinctive(w) for w in words):                 # a person: another first name, the same surname
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
