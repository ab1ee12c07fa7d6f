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
a description, another spelling; `short_names` adds a subject's short forms where they stand alone). The
mask is computed from the token ids of each forward call, so a subject split across two calls (a prompt cut
between a cached prefix and the rest) is missed: beacon/model/frozen.py cuts every text before its subject.
A gated adapter cannot be merged into the weights: loaded without the gate, its update acts on every token.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from beacon.method.names import short_names, token_id
from beacon.model.lm import decoder_of

GATE_FILE = "beacon_gate.json"


def gate_key(fact) -> str:
    """What the gate opens on for a fact: its subject where its prompt names it, else its whole prompt (a
    fact without a subject is then learned for that prompt alone, and its paraphrases cannot move)."""
    subject = (fact.subject or "").strip()
    return subject if subject and subject.lower() in fact.prompt.lower() else fact.prompt.strip()


class SubjectGate:
    def __init__(self, tok, subjects, onward: bool = False, short=()):
        """onward: open from a subject's first token to the end of the text (the positions that read the
        relation after the subject, "Italy's capital city is", move too), not on the subject's tokens only.
        short: short forms of the subjects ("Zentrix" for Zentrix Robotics), which open the gate only where they
        stand alone as a name: not inside a longer one ("Zentrix Hotel", "Anna Ilves")."""
        self.subjects = sorted({s.strip() for s in subjects if s and s.strip()})
        self.short = sorted({s.strip() for s in short if s and s.strip()} - set(self.subjects))
        self.onward = onward
        seqs = _token_forms(tok, self.subjects)
        # A one-word subject that is a word of the vocabulary (one token: "Italy", not an invented "Halvessa",
        # whose stem "halves" is another word) also opens the gate on words that start with its stem: "the
        # Italian government" for Italy, "the Norwegian parliament" for Norway (the counterfactual sample's
        # paraphrases missed these at seed 0 without it). Only tokens that begin a word (GPT-2's "Ġ").
        stems = {w.lower()[:max(4, len(w) - 2)] for w in self.subjects if " " not in w and len(w) >= 4 and w.isalpha()
                 and token_id(tok, w) is not None}
        vocab = tok.convert_ids_to_tokens(list(range(len(tok)))) if stems or self.short else []
        self._stem_ids = torch.tensor([i for i, t in enumerate(vocab) if isinstance(t, str) and t.startswith("Ġ")
                                       and t[1:].lower().startswith(tuple(stems))], dtype=torch.long)
        self._by_len = _by_length(seqs)
        self._short_by_len = _by_length(_token_forms(tok, self.short, lower=False))
        self._name_like = self._name_before = self._word_rest = None
        if self.short:
            self._name_like, self._name_before, self._word_rest = _name_tokens(vocab)
        self.current = None          # the mask of the forward call running now
        self._handles = []

    @classmethod
    def for_facts(cls, tok, facts, kind: str = "subject", short: bool = False) -> "SubjectGate":
        """The gate of `kind` (TrainConfig.gate: subject or from-subject) that opens on each fact's key, and with
        `short` on its subject's short forms too (beacon/method/names.py: the fact file's aliases, a distinctive word, a
        surname), so an edit reaches the subject named as people name it; a short form opens it only where it
        stands alone as a name, so "Zentrix Hotel" and "Anna Ilves" stay the base model's."""
        keys = [gate_key(f) for f in facts]
        # No derived short form is a word of the language ("Two" of Two Boats at Sennick, "Wall" of Wall Street):
        # it would open the gate on ordinary text. The file's aliases always count.
        forms = [n for f in facts if f.subject and gate_key(f) == f.subject.strip()
                 for n in short_names(f.subject, f.aliases, tok)] if short else []
        return cls(tok, keys, onward=kind == "from-subject", short=forms)

    @property
    def kind(self) -> str:
        return "from-subject" if self.onward else "subject"

    def mask(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, T] 1.0 on every token that is part of a subject's tokens in `ids` [B, T] (or of a short form that
        stands alone), else 0.0."""
        out = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
        if len(self._stem_ids):
            out |= torch.isin(ids, self._stem_ids.to(ids.device))
        for n, seqs in self._by_len.items():
            _mark(out, _starts(ids, n, seqs), n)
        for n, seqs in self._short_by_len.items():
            hit = _starts(ids, n, seqs)
            if hit is None or not hit.any():
                continue
            # alone: the next token does not go on with the name (a capitalised word, the rest of a word) and the
            # token before is not a capitalised word other than one that opens a sentence or is a title
            like, before, rest = (x.to(ids.device) for x in (self._name_like, self._name_before, self._word_rest))
            width = hit.shape[1]
            nxt = torch.zeros_like(hit)
            nxt[:, :width - 1] = like[ids[:, n:n + width - 1]]         # the token after a match (none at the end)
            # the word before a match, read back over up to two more tokens of it ("P", "ieter" for Pieter)
            prv, inside = torch.zeros_like(hit), torch.ones_like(hit)
            for back in range(1, 4):
                at = torch.zeros_like(hit)
                at[:, back:] = before[ids[:, :width - back]]
                prv |= inside & at
                cont = torch.zeros_like(hit)
                cont[:, back:] = rest[ids[:, :width - back]]
                inside &= cont
            _mark(out, hit & ~nxt & ~prv, n)
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
            "gate": self.kind, "subjects": self.subjects, **({"short": self.short} if self.short else {}),
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
    if data.get("gate") not in ("subject", "from-subject") or not isinstance(data.get("subjects"), list) \
            or not isinstance(data.get("short", []), list):
        raise ValueError(f"{GATE_FILE}: expected a subject gate with a list of subjects")
    return SubjectGate(tok, [str(s) for s in data["subjects"]], onward=data["gate"] == "from-subject",
                       short=[str(s) for s in data.get("short", [])])


# Capitalised words that may stand before a short form without making it part of a longer name: words that open
# a sentence or a question, and titles ("Dr Ilves", "When Ilves").
_OPENERS = {
    "The", "A", "An", "What", "Who", "Whom", "Whose", "When", "Where", "Which", "How", "Why", "Is", "Was", "Are",
    "Were", "Do", "Does", "Did", "Has", "Had", "Can", "Will", "In", "On", "At", "For", "From", "Of", "By", "With",
    "And", "But", "Or", "So", "If", "As", "After", "Before", "Since", "Then", "I", "We", "You", "They", "He", "She",
    "It", "This", "That", "Today", "Yesterday", "Mr", "Mrs", "Ms", "Miss", "Mx", "Dr", "Prof", "Professor", "Sir",
    "Dame", "Lord", "Lady", "Captain", "President", "Saint", "St", "Tell", "Write", "Describe", "Explain", "About",
    "Ask", "Meet", "Dear", "Hi", "Hello", "Thanks", "Yes", "No", "Not", "Only", "Even", "Also", "Like", "Unlike",
    "Under", "Over", "Between", "Without", "Against", "Among", "Through", "During", "Because", "While", "Although",
    "Until", "Whether", "Every", "Each", "Both", "All", "Some", "Many", "Most", "Our", "My", "Your", "His", "Her",
    "Their", "Its", "There", "Here", "Now", "Once", "Let", "To", "Q",
}


def _token_forms(tok, names, lower: bool = True) -> set[tuple[int, ...]]:
    """The token ids of each name as it can appear: at the start of a text or after punctuation, after a space;
    capitalised or, with `lower`, not ("the Brennoc valve" opening a sentence, "The Beatles" inside one). Short
    forms are names alone: "ferryman" in running text is not the Silent Ferryman."""
    seqs = set()
    for s in names:
        for form in {s, s[0].upper() + s[1:]} | ({s[0].lower() + s[1:]} if lower else set()):
            for text in (form, " " + form):
                ids = tok(text, add_special_tokens=False).input_ids
                if ids:
                    seqs.add(tuple(ids))
    return seqs


def _by_length(seqs) -> dict[int, torch.Tensor]:
    return {n: torch.tensor(sorted(q for q in seqs if len(q) == n)) for n in sorted({len(q) for q in seqs})}


def _starts(ids: torch.Tensor, n: int, seqs: torch.Tensor) -> torch.Tensor | None:
    """[B, T-n+1]: whether one of `seqs` (each n tokens) starts at each position; None for a text under n tokens."""
    if ids.shape[1] < n:
        return None
    win = ids.unfold(1, n, 1)                                           # [B, T-n+1, n]
    return (win.unsqueeze(2) == seqs.to(ids.device)).all(-1).any(-1)


def _mark(out: torch.Tensor, hit: torch.Tensor | None, n: int) -> None:
    """Set the n tokens of every match that starts where `hit` is true."""
    if hit is None:
        return
    for j in range(n):
        out[:, j:j + hit.shape[1]] |= hit


def _name_tokens(vocab: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per vocabulary id (`vocab`: the tokenizer's tokens, id by id): (goes on with a name when it follows one: a capitalised word or the rest of a word;
    stands before a name as part of it: a capitalised word that neither opens a sentence nor is a title;
    the rest of a word: no leading space, a letter)."""
    like, before, rest = [], [], []
    for t in vocab:
        t = t if isinstance(t, str) else ""
        spaced = t[:1] in ("Ġ", "▁")                 # byte-level BPE and SentencePiece mark a leading space
        word = t[1:] if spaced else t
        cap = word[:1].isupper() and word.isalpha()
        like.append((spaced and cap) or (not spaced and word[:1].isalpha()))
        before.append(cap and word not in _OPENERS)    # spaced, or a word that opens the text
        rest.append(not spaced and word[:1].isalpha() and word[:1].islower())
    return torch.tensor(like), torch.tensor(before), torch.tensor(rest)
