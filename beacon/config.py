"""Every knob of an injection run, declared once: the CLI, the app and the report read it from here.

A setting is a dataclass field whose metadata holds its help text and, where it has one, its
range or choices (the peft style). `TrainConfig` holds what the training loop needs;
`InjectConfig` holds the whole run and nests a `TrainConfig` under `train`. `__post_init__`
checks every field against its declaration, so a bad value is an error that names the field,
whichever door it came in by (command line, app, a saved report, BEACON_CONFIG).
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields, replace

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"   # also in beacon.model.models, which imports torch
QUANTIZATIONS = ("auto", "4bit", "none")
MLP_MODULES = ["gate_proj", "up_proj", "down_proj", "fc1", "fc2", "c_fc", "mlp.c_proj"]


def setting(default, help: str, *, choices=None, min=None, max=None, cli: str | None = None):
    """A field with its help text and the values it accepts. cli: the option's name when it is
    not --field-name (None: derived from the field)."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "cli": cli}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


class IdleSetting(ValueError):
    """A setting given a value that the rest of the config leaves with nothing to do (`idle_settings`)."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


def _check(obj) -> None:
    for f in fields(obj):
        m, v = f.metadata, getattr(obj, f.name)
        if not m or v is None:
            continue
        if m.get("choices") and v not in m["choices"]:
            raise ValueError(f"{f.name}: expected one of {', '.join(map(str, m['choices']))}, got {v!r}")
        if m.get("min") is not None and v < m["min"] or m.get("max") is not None and v > m["max"]:
            raise ValueError(f"{f.name}: expected a value in [{m['min']}, {m['max']}], got {v!r}")


@dataclass
class TrainConfig:
    """The training loop's settings (beacon/method/train.py)."""
    steps: int = setting(300, "step budget; early stop ends sooner, once every wording of every fact is recalled",
                         min=0, max=10_000)
    lr: float = setting(2e-3, "learning rate (AdamW)", min=1e-7, max=1.0)
    rank: int = setting(8, "LoRA rank", min=1, max=256)
    alpha: int = setting(16, "LoRA alpha (the update is scaled by alpha / rank)", min=1, max=1024)
    batch_size: int = setting(32, "training wordings per step", min=1, max=1024)
    seed: int = setting(0, "seed of the LoRA init, the data order and every sample Beacon draws", min=0)
    lora_modules: str = setting("all-linear", "where LoRA sits: every linear layer, or the MLP projections only",
                                choices=("all-linear", "mlp"))
    weighting: str = setting("semantic", "loss weights: semantic (from the distances before training), dynamic "
                             "(from each step's distances) or uniform", choices=("semantic", "dynamic", "uniform"))
    locality_guard: float = setting(10.0, "weight of the KL term that keeps the model close to the base on "
                                    "unrelated text and known facts near yours (0 = off)", min=0.0, max=1000.0)
    # 16, not 8: over 3 seeds on the counterfactual and invented samples it held more of both probe sets
    # in fewer steps (docs/results.md); each step's guard pass costs twice as much.
    guard_batch: int = setting(16, "anchors in each guard batch", min=1, max=256)
    guard_near: float = setting(0.5, "share of each guard batch drawn from the anchors nearest the facts "
                                "(0 = uniform)", min=0.0, max=1.0)
    guard_margin: float = setting(0.0, "weight of a guard term that keeps the base model's first choice ahead of "
                                  "its runners-up by the base's margin at each anchor position (0 = KL only)",
                                  min=0.0, max=1000.0)
    # from-subject by default: both shipped probe sets whole by construction (every token trained
    # lost 7-14% of the general one), and with relation anchors on what the model knows of each edited subject
    # it keeps about as much of that as every-token training did (docs/results.md). A gated adapter cannot be
    # merged: train with none for a merged or GGUF export.
    # On by default: on the three held-out sets it cut crossed wires by a third to a half with paraphrases held
    # (docs/results.md); it reads logits the step computes anyway.
    contrast: float = setting(1.0, "weight of a term that lowers, at each training wording's answer position, the "
                              "probability of the first token of every other fact's answer (fewer crossed wires: "
                              "one fact's answer given for another's question; 0 = off)", min=0.0, max=100.0)
    gate: str = setting("from-subject", "where the adapter acts: on every token (none), from the first token that "
                        "names a kept fact's subject on (from-subject), or only on those tokens (subject); behind "
                        "a gate text that names none runs through the base model unchanged, and the locality guard "
                        "holds what the model knows of each subject by other relations and how it writes about each",
                        choices=("none", "subject", "from-subject"))
    short_names: bool = setting(True, "behind the gate, open it on each subject's short forms too (the fact file's "
                                "aliases, a name's distinctive word, a surname) where they stand alone as a name")
    null_space: float = setting(0.0, "keep each LoRA layer out of the input directions that hold this share of "
                                "the energy of the guard anchors' text (AlphaEdit-style projection; 0 = off)",
                                min=0.0, max=0.9999)
    # fp32 by default: on a 2-core CPU with bf16 instructions, bf16 made a step 1.38x faster but the 30-fact benchmark took 55 steps against 39,
    # the whole run 383 s against 390 s, and the chat form lost points on two of four samples (docs/speed.md).
    compute: str = setting("fp32", "matmul precision of the frozen layers while training and while the base model "
                           "writes rewordings and anchors: bf16 on a CPU (a step about 1.4x faster where the CPU has "
                           "bf16 instructions), fp32, or auto (bf16 where the CPU has bf16 instructions); recall is "
                           "always measured in the model's own precision", choices=("auto", "fp32", "bf16"))
    early_stop: bool = setting(True, "stop once every wording of every fact is recalled")
    # On by default: seed 0 on four samples, 264 -> 183 steps in all (people 101 -> 55, invented
    # 77 -> 50, held-out 47 -> 39, counterfactual 20 -> 19 and 19 -> 20 at seed 1), locality and paraphrases
    # within a probe or two of the runs without it (docs/speed.md).
    focus: bool = setting(True, "once at most half a batch of wordings is still missed, put every missed one in "
                          "each batch (the rest of the batch goes on through the epoch)")
    settle_steps: int = setting(0, "with the guard on, train N more steps once every fact is recalled (0 = stop "
                                "at once; measured on the samples it lowers locality, see docs/results.md)", min=0)

    def __post_init__(self):
        _check(self)

    @property
    def reads_anchors(self) -> bool:
        """The guard or the null-space constraint needs anchors."""
        return self.guarded or self.null_space > 0

    @property
    def guarded(self) -> bool:
        """The guard runs where it has anchors: behind the subject gate only the relation anchors, which
        name a subject (beacon/method/anchor_sources.py build_anchors)."""
        return self.locality_guard > 0

    @property
    def target_modules(self):
        return MLP_MODULES if self.lora_modules == "mlp" else "all-linear"


@dataclass
class InjectConfig:
    """A whole injection run: model, checks, rewordings, guard anchors, where to train, extras."""
    model: str = setting(DEFAULT_MODEL, "Hub id or local path of a causal LM")
    quantization: str = setting("auto", "auto: NF4 4-bit on a CUDA GPU, full precision on a CPU",
                                choices=QUANTIZATIONS)
    trust_remote_code: bool = setting(False, "run code shipped with the model (off by default)")
    train: TrainConfig = field(default_factory=TrainConfig)
    # rewordings (beacon/method/rewordings.py)
    rewordings: bool = setting(True, "also train each fact in forms Beacon writes from its subject and relation")
    model_rewordings: int = setting(3, "rewordings per fact the base model writes itself (0 = none)", min=0, max=20)
    train_paraphrases: int = setting(0, "train on the first N of each fact's own paraphrases (the rest stay "
                                     "held out)", min=0)
    # the guard's anchors (beacon/method/anchor_sources.py)
    guard_anchors: str = setting("neighbours,sampled", "comma-separated: neighbours (facts near yours, written by "
                                 "the base model), siblings (the same, with subjects of your subjects' kind), sampled "
                                 "(the base model's own text), file (assets/anchors.txt), relations (each fact's "
                                 "subject asked by the other facts' relations, answered by the base model); behind "
                                 "the subject gate the guard holds the relations anchors only, whatever this says")
    anchors_file: str | None = setting(None, "a text file of guard anchors, one per line: plain text, or a fact "
                                       "written `prompt | answer`; the guard's file source reads it instead of "
                                       "assets/anchors.txt, and file is added to the sources if missing",
                                       cli="--anchors")
    neighbours_per_fact: int = setting(5, "neighbour anchors per fact", min=0, max=50)
    sampled_anchors: int = setting(40, "texts the base model writes for the guard", min=0, max=1000)
    relation_specific: float = setting(2.5, "relations anchors: hold only the subjects the base model knows, those "
                                       "whose answers it gives (median) this many nats more readily than for names it "
                                       "has never seen, and of theirs the anchors whose own answer does and is said with "
                                       "p >= 0.14 (its guesses are not knowledge; 0 = all)",
                                       min=0.0, max=50.0)
    held_texts: int = setting(16, "behind the gate from the subject on: tokens of the base model's own text after "
                              "each fact and about each subject that the guard holds (0 = none)", min=0, max=256)
    # the semantic method's checks (beacon/method/semantic.py)
    filter: bool = setting(True, "detrimental-data filter on semantic distance")
    filter_strength: float = setting(2.0, "z-score above which a fact's distance is an outlier (lower drops more)",
                                     min=0.0)
    max_drop_fraction: float = setting(0.1, "the filter never drops more than this share of the facts",
                                       min=0.0, max=1.0)
    conflict_threshold: float = setting(0.9, "prompt-embedding cosine above which two prompts ask the same",
                                        min=0.0, max=1.0)
    keep: list[str] = setting([], "comma-separated ids to keep even if a check drops them")
    drop: list[str] = setting([], "comma-separated ids to drop")
    categorize_samples: int = setting(8, "known / update / new as if from N sampled answers per fact (known: at least "
                                      "one of N would recall the target, more likely than not; read off teacher-forced "
                                      "probabilities, nothing is sampled; 0 = greedy answer only)", min=0)
    # where to train and how to merge (beacon/method/layers.py, beacon/method/merge.py)
    layers: str = setting("all", "where to train: all, auto (semantic layer selection) or indices like 20-29")
    orders: int = setting(1, "train K adapters on K data orders and merge them", min=1, max=16)
    merge: str = setting("select", "merge rule for orders > 1: per-parameter random selection, or averaging",
                         choices=("select", "average"))
    continue_from: str | None = setting(None, "an earlier run folder: add these facts on top of its adapter and "
                                        "report what its facts lose")
    # extras
    interference: bool = setting(True, "measure the interference matrix between facts")
    interference_max_facts: int = setting(64, "interference on at most this many facts", min=2)
    plots: bool = setting(True, "draw the plots")

    def __post_init__(self):
        if isinstance(self.train, dict):   # from a saved report: the nested settings come as a dict
            self.train = _build(TrainConfig, self.train)
        _check(self)
        guard_sources(self.guard_anchors)    # names an unknown source
        for name, why in idle_settings(self).items():
            v, d = self.value(name), describe(name)["default"]
            if v != d and v not in (0, False, None, "", []):   # turning an idle thing off is harmless
                raise IdleSetting(name, f"{name} {v!r} would do nothing: {why}. Leave {name} at its default "
                                        f"({d!r}) or change that setting")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "InjectConfig":
        """The inverse of to_dict (a report's "config"); an unknown key is an error that names it."""
        return _build(cls, d)

    def updated(self, **values) -> "InjectConfig":
        """A copy with `values` set, by plain field name whether the field is a run or a training
        setting (steps=20, model=...): the app and BEACON_CONFIG need not know the nesting."""
        run, train = {}, {}
        for k, v in values.items():
            if k in _names(TrainConfig):
                train[k] = v
            elif k in _names(InjectConfig) and k != "train":
                run[k] = v
            else:
                raise ValueError(f"unknown setting {k!r}")
        return replace(self, **run, train=replace(self.train, **train))

    def variant(self, **values) -> "InjectConfig":
        """`updated`, with the settings that `values` leave with nothing to do put back to their defaults: an
        ablation's variant switches parts off whatever the user's config set for them."""
        cfg = self
        for _ in range(len(_names(InjectConfig) | _names(TrainConfig))):
            try:
                return cfg.updated(**values)
            except IdleSetting as e:
                if e.name in values:   # the variant's own choice: say so
                    raise
                cfg = cfg.updated(**{e.name: describe(e.name)["default"]})   # a default is never idle
        return cfg.updated(**values)

    def value(self, name: str):
        """A setting by plain field name (see `updated`)."""
        return getattr(self.train if name in _names(TrainConfig) else self, name)


GUARD_SOURCES = ("neighbours", "siblings", "sampled", "file", "relations")


def idle_settings(cfg: InjectConfig) -> dict[str, str]:
    """The settings that the rest of `cfg` leaves with nothing to do, each with the setting that makes it so.
    A config refuses a value other than the default (or off) for any of them, and the app greys their widgets:
    a visitor's choice must never be silently ignored."""
    t, out = cfg.train, {}
    if t.gate != "none":
        why = (f"with gate {t.gate!r} the guard holds the relation anchors only (what the base model says of each "
               "subject); the guard's sources and anchors are chosen with gate 'none'")
        out.update(dict.fromkeys(("guard_anchors", "anchors_file", "neighbours_per_fact", "sampled_anchors"), why))
    else:
        sources = guard_sources(cfg.guard_anchors)
        if not {"neighbours", "siblings"} & set(sources):
            out["neighbours_per_fact"] = f"guard_anchors {cfg.guard_anchors!r} has neither neighbours nor siblings"
        if "sampled" not in sources:
            out["sampled_anchors"] = f"guard_anchors {cfg.guard_anchors!r} does not include sampled"
        if "relations" not in sources:
            out["relation_specific"] = f"guard_anchors {cfg.guard_anchors!r} does not include relations"
        out["short_names"] = "short names open the subject gate, and gate 'none' has none"
    if t.gate != "from-subject":
        out["held_texts"] = f"held texts are held behind gate 'from-subject' only, and gate is {t.gate!r}"
    if not t.reads_anchors:
        why = "locality_guard and null_space are both 0, so no anchors are read"
        for name in ("guard_anchors", "anchors_file", "neighbours_per_fact", "sampled_anchors", "relation_specific",
                     "held_texts"):
            out.setdefault(name, why)
    if t.locality_guard == 0:
        out.update(dict.fromkeys(("guard_batch", "guard_near", "guard_margin", "settle_steps"),
                                 "the locality guard is off (locality_guard 0)"))
    if cfg.orders == 1:
        out["merge"] = "merge joins the adapters of several data orders, and orders is 1"
    if not cfg.rewordings:
        out["model_rewordings"] = "rewordings is off"
    if not cfg.filter:
        out.update(dict.fromkeys(("filter_strength", "max_drop_fraction"), "the filter is off (filter false)"))
    if not cfg.interference:
        out["interference_max_facts"] = "interference is off"
    return out


def guard_sources(spec: str) -> list[str]:
    """"neighbours,sampled" -> ["neighbours", "sampled"]; an unknown source is an error that names it."""
    names = [x.strip() for x in spec.split(",") if x.strip()]
    bad = [x for x in names if x not in GUARD_SOURCES]
    if bad or not names:
        raise ValueError(f"guard_anchors {spec!r}: expected a comma-separated list of {', '.join(GUARD_SOURCES)}")
    return names


def _names(cls) -> set[str]:
    return {f.name for f in fields(cls)}


def _build(cls, d: dict):
    unknown = sorted(set(d) - _names(cls))
    if unknown:
        raise ValueError(f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(sorted(_names(cls)))})")
    return cls(**d)


def describe(name: str) -> dict:
    """help, choices, min, max and default of a setting, by plain field name: the app's labels and ranges."""
    for cls in (TrainConfig, InjectConfig):
        for f in fields(cls):
            if f.name == name and f.name != "train":
                default = f.default_factory() if f.default_factory is not MISSING else f.default
                return {**f.metadata, "name": name, "default": default}
    raise ValueError(f"unknown setting {name!r}")


# ---------------------------------------------------------------- the command line, from the fields

def _option(f) -> str:
    return f.metadata.get("cli") or "--" + f.name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per setting (--steps, --filter/--no-filter, --keep a,b ...), help and choices from the field."""
    for cls in (InjectConfig, TrainConfig):
        group = parser.add_argument_group("training" if cls is TrainConfig else "run")
        for f in fields(cls):
            if f.name == "train":
                continue
            m = f.metadata
            kw = {"dest": f.name, "default": argparse.SUPPRESS, "help": m["help"]}
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            if isinstance(default, bool):
                kw["action"] = argparse.BooleanOptionalAction
            elif isinstance(default, list):
                kw.update(type=lambda s: [x.strip() for x in s.split(",") if x.strip()], metavar="ID,..")
            else:
                kw["type"] = type(default) if default is not None else str
                if m.get("choices"):
                    kw["choices"] = m["choices"]
                elif kw["type"] in (int, float):
                    kw["metavar"] = "N" if kw["type"] is int else "X"
            if not isinstance(default, bool) and default not in (None, []):
                kw["help"] += f" (default {default})"
            group.add_argument(_option(f), **kw)


def from_arguments(args: argparse.Namespace, base: InjectConfig | None = None) -> InjectConfig:
    """The config the options asked for: the defaults with every option given on the command line."""
    names = (_names(InjectConfig) | _names(TrainConfig)) - {"train"}
    return (base or InjectConfig()).updated(**{k: v for k, v in vars(args).items() if k in names})
