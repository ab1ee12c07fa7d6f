"""The subject gate: the adapter acts only from the tokens that name a trained fact's subject.

A LoRA update on every token moves every prompt a little, and a probe whose answer leads its runner-up
by a fraction of a nat flips (docs/results.md: the lost probes are the thin-margin ones). With the gate,
each LoRA layer's update is multiplied by a mask computed from the token ids: with `from-subject` (the
default) it is 1 from the first token of a subject ("Zentrix Robotics") to the end of the text, so the
positions that read the relation after the subject ("Italy's capital city is") move too; with `subject`,
1 on the subject's own tokens only. Either way:
* text that names no trained subject runs through the base model exactly;
* a fact is learned as something about its subject: every wording that names the subject opens the gate
  (the subject's tokens are where ROME and MEMIT edit too).
What it cannot do: change an answer to a prompt that does not name the subject as written (a pronoun,
a description, another spelling; `short_names` adds a subject's short forms). The mask is computed from the
token ids of each forward call, so a subject split across two calls (a prompt cut between a cached prefix
and the rest) is missed: beacon/model/frozen.py cuts every text before its subject. A gated adapter cannot be
merged into the weights: loaded without the gate, its update acts on every token.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from beacon.model.lm import decoder_of

GATE_FILE = "beacon_gate.json"


def gate_key(fact) -> str:
    """What the gate opens on for a fact: its subject where its prompt names it, else its whole prompt (a
    fact without a subject is then learned for that prompt alone, and its paraphrases cannot move)."""
    subject = (fact.subject or "").strip()
    return subject if subject and subject.lower() in fact.prompt.lower() else fact.prompt.strip()


class SubjectGate:
    def __init__(self, tok, subjects, onward: bool = False):
        """onward: open from a subject's first token to the end of the text (the positions that read the
        relation after the subject, "Italy's capital city is", move too), not on the subject's tokens only."""
        self.subjects = sorted({s.strip() for s in subjects if s and s.strip()})
        self.onward = onward
        seqs = set()
        for s in self.subjects:
            # at the start of a text or after punctuation, after a space; "the Brennoc valve" opening a sentence,
            # "The Beatles" inside one
            for form in {s, s[0].upper() + s[1:], s[0].lower() + s[1:]}:
                for text in (form, " " + form):
                    ids = tok(text, add_special_tokens=False).input_ids
                    if ids:
                        seqs.add(tuple(ids))
        # A one-word subject that is a word of the vocabulary (one token: "Italy", not an invented "Halvessa",
        # whose stem "halves" is another word) also opens the gate on words that start with its stem: "the
        # Italian government" for Italy, "the Norwegian parliament" for Norway (the counterfactual sample's
        # paraphrases missed these at seed 0 without it). Only tokens that begin a word (GPT-2's "Ġ").
        stems = {w.lower()[:max(4, len(w) - 2)] for w in self.subjects if " " not in w and len(w) >= 4 and w.isalpha()
                 and len(tok(" " + w, add_special_tokens=False).input_ids) == 1}
        vocab = tok.convert_ids_to_tokens(list(range(len(tok)))) if stems else []
        self._stem_ids = torch.tensor([i for i, t in enumerate(vocab) if isinstance(t, str) and t.startswith("Ġ")
                                       and t[1:].lower().startswith(tuple(stems))], dtype=torch.long)
        self._by_len: dict[int, torch.Tensor] = {}
        for n in sorted({len(q) for q in seqs}):
            self._by_len[n] = torch.tensor(sorted(q for q in seqs if len(q) == n))
        self.current = None          # the mask of the forward call running now
        self._handles = []

    @classmethod
    def for_facts(cls, tok, facts, kind: str = "subject", short: bool = False) -> "SubjectGate":
        """The gate of `kind` (TrainConfig.gate: subject or from-subject) that opens on each fact's key, and with
        `short` on its subject's short forms too (beacon/method/names.py: the fact file's aliases, a distinctive word, a
        surname), so an edit reaches the subject named as people name it (and whatever shares that name)."""
        from beacon.method.names import short_names

        keys = [gate_key(f) for f in facts]
        if short:
            keys += [n for f in facts if f.subject and gate_key(f) == f.subject.strip()
                     for n in short_names(f.subject, f.aliases)]
        return cls(tok, keys, onward=kind == "from-subject")

    @property
    def kind(self) -> str:
        return "from-subject" if self.onward else "subject"

    def mask(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, T] 1.0 on every token that is part of a subject's tokens in `ids` [B, T], else 0.0."""
        out = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
        if len(self._stem_ids):
            out |= torch.isin(ids, self._stem_ids.to(ids.device))
        for n, seqs in self._by_len.items():
            if ids.shape[1] < n:
                continue
            win = ids.unfold(1, n, 1)                                     # [B, T-n+1, n]
            hit = (win.unsqueeze(2) == seqs.to(ids.device)).all(-1).any(-1)   # [B, T-n+1]: a subject starts here
            for j in range(n):
                out[:, j:j + hit.shape[1]] |= hit
        return out.float()

    def _open_mask(self, ids: torch.Tensor, cache=None) -> torch.Tensor:
        """The mask of one forward call: the subjects' tokens, or with `onward` every token from a subject on,
        continuing the rows of `cache` that were open at its end (one cached row for all: a shared prefix;
        k rows each for k repeats)."""
        m = self.mask(ids)
        if not self.onward:
            return m
        open_ = getattr(cache, "_beacon_open", None) if cache is not None and cache.get_seq_length() > 0 else None
        if open_ is not None and len(open_) != len(ids):
            open_ = open_.repeat_interleave(len(ids) // len(open_)) if len(ids) % len(open_) == 0 else None
        if open_ is not None:
            m[:, 0] = torch.maximum(m[:, 0], open_.to(m.dtype))
        return m.cummax(dim=1).values

    def covers(self, tok, text: str) -> bool:
        """Whether `text` names a subject the gate knows (so training on it can move the answer)."""
        return bool(self.mask(torch.tensor([tok(text, add_special_tokens=True).input_ids])).any())

    def attach(self, model) -> "SubjectGate":
        """Mask every LoRA update of `model` (a PeftModel). The decoder's input ids set the mask before
        each forward call; a call without ids (embeddings only) gets no update."""
        self.detach()
        if getattr(model, "_beacon_gate", None) is not None:   # one gate at a time: a new one replaces it
            model._beacon_gate.detach()

        def set_mask(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.current = self._open_mask(ids, kwargs.get("past_key_values")) if ids is not None else None

        def keep_state(module, args, kwargs, out):
            # onward: whether each row's gate is open at its last token travels with the KV cache, so the
            # next call on that cache (a decoding step, the rest of a prompt after a shared prefix) goes on
            cache = getattr(out, "past_key_values", None)
            if self.onward and cache is not None and self.current is not None:
                cache._beacon_open = self.current[:, -1].bool()

        def apply(module, args, out):
            m = self.current
            if m is None or m.shape != out.shape[:2]:
                return out * 0
            return out * m.unsqueeze(-1).to(out.dtype)

        self._handles.append(decoder_of(model).register_forward_pre_hook(set_mask, with_kwargs=True))
        self._handles.append(decoder_of(model).register_forward_hook(keep_state, with_kwargs=True))
        for module in model.modules():
            lora_a = getattr(module, "lora_A", None)
            if isinstance(lora_a, torch.nn.ModuleDict):
                for layer in lora_a.values():
                    self._handles.append(layer.register_forward_hook(apply))
        model._beacon_gate = self
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self.current = [], None

    def save(self, adapter_dir) -> None:
        Path(adapter_dir, GATE_FILE).write_text(json.dumps({
            "gate": self.kind, "subjects": self.subjects,
            "note": "Beacon trained this adapter with its update on these subjects' tokens"
                    + (" and every token after them" if self.onward else " only") +
                    " (beacon/method/gate.py). Loaded without the gate, the update acts on every token."}, indent=1))


def reattach(model) -> None:
    """Cover adapters added since the gate was attached (data orders, their merge)."""
    gate = getattr(model, "_beacon_gate", None)
    if gate is not None:
        gate.attach(model)


def gated(adapter_dir) -> bool:
    """Whether the adapter in this folder was trained behind the subject gate."""
    return Path(adapter_dir, GATE_FILE).is_file()


def load_gate(tok, adapter_dir) -> SubjectGate | None:
    """The gate saved beside an adapter, or None for an adapter trained without one."""
    if not gated(adapter_dir):
        return None
    data = json.loads(Path(adapter_dir, GATE_FILE).read_text())
    if data.get("gate") not in ("subject", "from-subject") or not isinstance(data.get("subjects"), list):
        raise ValueError(f"{GATE_FILE}: expected a subject gate with a list of subjects")
    return SubjectGate(tok, [str(s) for s in data["subjects"]], onward=data["gate"] == "from-subject")
