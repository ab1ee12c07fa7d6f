"""The two records a run passes around: what was measured before training, and the report.

Both are plain data: no model rides inside them (the caller passes the model where it is used),
so they can be kept in a visitor's state, compared and written out.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np

from beacon.data.facts import Fact


@dataclass
class Analysis:
    """Everything measured before training that does not depend on keep/drop choices (pipeline.analyze)."""
    facts: list[Fact]                       # as given, duplicates included
    probes: dict[str, list[Fact]]           # locality probe sets by name
    unique: list[Fact]                      # duplicates merged
    merged: dict[str, str]                  # duplicate id -> the id it was merged into
    conflicts: list[dict]                   # groups of contradicting facts: ids, why
    before: dict                            # evaluate.evaluate_facts on `unique` and `probes`
    categories: list[dict]                  # known / update / new per unique fact
    distances: list[float]                  # semantic distance per unique fact
    features: np.ndarray                    # sentence embedding per unique fact
    model_key: tuple[str, str]              # (model, quantization) it was measured on


@dataclass
class Report:
    """What a run found; `to_dict()` is report.json."""
    summary: dict                           # the headline numbers (recall, paraphrase, locality, steps...)
    config: dict                            # InjectConfig.to_dict()
    model_info: dict
    facts: list[dict]                       # one record per input fact, before and after
    probes: list[dict]                      # one record per locality probe
    conflicts: list[dict]
    duplicates: dict[str, str]
    training: dict                          # history, fact_curves, distance_trajectories
    interference: dict | None
    guard: dict | None                      # the anchors the guard used and those it left out
    training_prompts: dict[str, list[str]]  # fact id -> the wordings it was trained on
    layers: dict | None                     # layer selection, when layers = auto
    chosen_layers: list[int] | None
    merge: dict | None                      # data orders and their merge, when orders > 1
    earlier_facts: dict | None = None       # continue-from: what the earlier run's facts lost
    subject_texts: list[dict] = field(default_factory=list)   # "Tell me about <subject>.", before and after
    names: list[dict] = field(default_factory=list)  # each fact asked by a short name, by a decoy, and in reverse, before/after
    plots: list[str] = field(default_factory=list)   # paths under the run folder

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Report":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
