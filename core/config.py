"""One dataclass holds every knob of an injection run; the CLI and the app fill it in."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .models import DEFAULT_MODEL
from .train import TrainConfig


MLP_MODULES = ["gate_proj", "up_proj", "down_proj", "fc1", "fc2", "c_fc", "mlp.c_proj"]


@dataclass
class InjectConfig:
    model: str = DEFAULT_MODEL
    quantization: str = "auto"          # auto | 4bit | none
    trust_remote_code: bool = False
    # training
    steps: int = 300                    # step budget; early stop ends sooner (every wording of every fact recalled)
    lr: float = 2e-3
    rank: int = 8
    alpha: int = 16
    batch_size: int = 32
    seed: int = 0
    locality_guard: float = 10.0        # weight of KL(base || tuned) on anchor text; 0 = off
    guard_near: float = 0.5             # share of each guard batch taken from the anchors nearest the facts
    early_stop: bool = True
    settle_steps: int = 0               # more steps after every fact is recalled (0: stop; see README)
    rewordings: bool = True             # also train each fact in forms Beacon writes (core/rewordings.py)
    model_rewordings: int = 3           # rewordings per fact the base model writes itself (0 = none)
    train_paraphrases: int = 0          # train on this many of each fact's own paraphrases; the rest stay held out
    guard_anchors: str = "neighbours,sampled"  # any of neighbours, sampled (both written by the base model), file (assets/anchors.txt)
    neighbours_per_fact: int = 5        # neighbour anchors per fact
    sampled_anchors: int = 40           # texts the base model writes for the guard
    lora_modules: str = "all-linear"    # all-linear | mlp (gate/up/down projections only)
    # the semantic method
    filter: bool = True                 # detrimental-data filter on semantic distance
    filter_strength: float = 2.0        # z-score above which a fact is an outlier; lower drops more
    max_drop_fraction: float = 0.1      # the filter never drops more than this share of the facts
    weighting: str = "semantic"         # semantic (static) | dynamic (from each step's distances) | uniform
    conflict_threshold: float = 0.9     # prompt-embedding cosine above which two prompts ask the same
    keep: list[str] = field(default_factory=list)   # ids kept even if a check would drop them
    drop: list[str] = field(default_factory=list)   # ids dropped by hand
    categorize_samples: int = 8         # sampled answers per fact for known/update/new
    # where to train and how to merge
    layers: str = "all"                 # all | auto | comma-separated layer indices
    orders: int = 1                     # K data orders; >1 trains K adapters and merges them
    merge: str = "select"               # select | average
    continue_from: str | None = None    # an earlier run folder: add facts on top of its adapter
    # extras
    interference: bool = True
    interference_max_facts: int = 64
    plots: bool = True

    def train_config(self, layers=None) -> TrainConfig:
        return TrainConfig(steps=self.steps, lr=self.lr, rank=self.rank, alpha=self.alpha,
                           batch_size=self.batch_size, seed=self.seed, layers=layers,
                           locality_guard=self.locality_guard, guard_near=self.guard_near,
                           early_stop=self.early_stop, settle_steps=self.settle_steps,
                           weighting="dynamic" if self.weighting == "dynamic" else "static",
                           target_modules=MLP_MODULES if self.lora_modules == "mlp" else "all-linear")

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "InjectConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def gpu_seconds(n_facts: int, steps: int, orders: int = 1, wordings: int = 6) -> int:
    """Seconds to reserve on a ZeroGPU Space for a run: loading and measuring (about 40 s plus 0.5 s
    a fact for the before/after passes), then the step budget at a pessimistic 0.05 s per 32
    wordings a step plus 0.25 s of guard and optimiser. Capped at ZeroGPU's 20-minute ceiling."""
    per_step = 0.25 + 0.05 * max(1, n_facts * wordings / 32)
    return int(min(1200, 40 + 0.5 * n_facts + orders * steps * per_step))
