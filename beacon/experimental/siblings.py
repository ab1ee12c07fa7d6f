"""Sibling neighbours: other subjects of an edited subject's kind, for the guard's neighbour anchors
(`guard_anchors siblings`). Measured: they hold the edits' relations and block their reach (counterfactual
seed 0, paraphrase 68% against 89%; docs/results.md).
"""
from __future__ import annotations

import re

from beacon.model.lm import normalise

# A list prompt whose examples share nothing with the samples or probes: the model goes on listing
# things of the subject's own kind ("Microsoft," -> " Apple, Google, Facebook").
LIST = ("Lists of things of one kind:\n1. Toyota, Honda, Ford, BMW, Nissan\n2. the Nile, the Danube, the "
         "Mississippi, the Rhine\n3. the violin, the cello, the flute, the piano\n4. {subject},")


def siblings(texts: list[str], subject: str) -> list[str]:
    """Items of the model's list continuations, less the subject itself and names that contain it."""
    own, out = normalise(subject), []
    for text in texts:
        for item in text.split("\n")[0].split(","):
            item = item.strip().strip(".").strip()
            key = normalise(item)
            if 2 <= len(key) <= 40 and own not in key and key not in own and len(item.split()) <= 5 \
                    and item not in out and not re.search(r"\b(etc|and so on)\b", key):
                out.append(item)
    return out
