"""Where to fine-tune: semantic layer selection (after Gu et al. 2024, "A Semantic-based Layer
Freezing Approach to Efficient Fine-Tuning of Language Models").

What is computed, since the paper's full text is not available to us:

* Observed transition. For every fact, the residual stream at the last prompt token after
  each decoder layer l is read through the model's own final norm and LM head (the logit
  lens), giving loss_l = -log p_l(first target token). Averaged over facts, this is how
  the representation moves towards the target through the layers.
* Ideal transition. A straight line from loss_0 (after the first layer) down to 0 at the
  last layer: every layer doing an equal share of the work of reaching the target.
* Deviation d_l = observed_l - ideal_l: how far behind the ideal the representation is.
* Estimated gain of fine-tuning layer l: g_l = max(0, d_l - d_{l-1}), the deviation that
  layer l adds (it moves away from, or too slowly towards, the target).
* Choice: the paper freezes every layer below a split point. We pick the highest split k such
  that layers k..L-1 hold at least `coverage` (default 80%) of the total estimated gain,
  so the layers that add most of the deviation are trained and the rest stay frozen; a
  frozen lower half also makes each step cheaper (no backward pass through it).
"""
from __future__ import annotations

import numpy as np
import torch

from beacon.model.lm import encode_pair


def _parts(model):
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = causal.base_model
    return inner.layers, inner.norm, causal.get_output_embeddings()


@torch.no_grad()
def logit_lens(model, tok, facts) -> np.ndarray:
    """[n_facts, n_layers] loss of the first target token read after each layer."""
    layers, norm, head = _parts(model)
    dev = next(model.parameters()).device
    captured = []
    hooks = [layer.register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))
             for layer in layers]
    rows = []
    try:
        for f in facts:
            p, t = encode_pair(tok, f.prompt, f.target)
            captured.clear()
            model(input_ids=torch.tensor([p], device=dev))
            h = torch.stack([c[0, -1] for c in captured])           # [L, d]
            logp = torch.log_softmax(head(norm(h)).float(), -1)     # [L, V]
            rows.append((-logp[:, t[0]]).cpu().numpy())
    finally:
        for hk in hooks:
            hk.remove()
    return np.stack(rows)


def select_layers(model, tok, facts, coverage: float = 0.8) -> dict:
    """The per-layer curves and the chosen layers (indices into the decoder's layers)."""
    observed = logit_lens(model, tok, facts).mean(0)
    n = len(observed)
    ideal = np.linspace(observed[0], 0.0, n)
    deviation = observed - ideal
    gain = np.maximum(0.0, np.diff(deviation, prepend=deviation[0]))
    total = gain.sum()
    split = 0
    if total > 0:
        from_top = np.cumsum(gain[::-1])[::-1]    # gain held by layers k..n-1
        split = int(max(k for k in range(n) if from_top[k] >= coverage * total))
    r = lambda a: [round(float(x), 4) for x in a]
    return {"observed": r(observed), "ideal": r(ideal), "deviation": r(deviation), "gain": r(gain),
            "split": split, "chosen": list(range(split, n)), "coverage": coverage}


def parse_layers(spec: str, n_layers: int) -> list[int] | None:
    """'all' -> None (every layer); '20,21,22' or '20-29' -> that list. 'auto' is handled by the caller."""
    spec = (spec or "all").strip().lower()
    if spec == "all":
        return None
    out = set()
    problem = ValueError(f"layers must be 'all', 'auto' or indices in 0..{n_layers - 1}, got {spec!r}")
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = part.split("-", 1)
                out.update(range(int(a), int(b) + 1))
            elif part:
                out.add(int(part))
        except ValueError:  # "abc" or "20-": say what is expected, not int()'s message
            raise problem from None
    if not out or any(not 0 <= x < n_layers for x in out):
        raise problem
    return sorted(out)
