"""Export a run: the base model with the run's LoRA adapter merged in, as a transformers folder or a GGUF file.

Merging folds each LoRA update into the weight it adapts, `W' = W + (alpha / r) * B @ A` (peft's
`merge_and_unload`), so the result is a plain model of the base's shape that needs no peft to run.
The merge is done in full precision on the CPU: a run that trained in 4-bit (QLoRA) is merged into the
unquantised base, because folding an update into NF4 blocks would round it away (the adapter was
trained against the dequantised weights, which the full-precision weights approximate best).

GGUF is llama.cpp's file format (gguf-py's `GGUFWriter`): metadata under llama.cpp's key names and
the tensors under its names (`blk.N.attn_q.weight` ...). Two things differ from a transformers
checkpoint, both as llama.cpp's own converter (convert_hf_to_gguf.py) does them:

- rotary layout: transformers rotates the two halves of each head, llama.cpp adjacent pairs, so
  the rows of q_proj and k_proj are permuted per head, `(n_head, 2, d/2) -> (n_head, d/2, 2)`;
  transformers' GGUF loader undoes it (`LlamaTensorProcessor._reverse_permute_weights`);
- tied embeddings: no `output.weight` is written; llama.cpp and transformers reuse `token_embd`.

Types: f32 keeps every tensor in float32; f16 stores the matrices in float16; q8_0 stores them in
blocks of 32 int8 values with one float16 scale (8.5 bits a weight). Norms stay float32, as llama.cpp
writes them. Only the Llama architecture is written (SmolLM2, Llama 2 and 3 without rope scaling,
TinyLlama ...), with a byte-level BPE tokenizer (tokenizer.json with a ByteLevel pre-tokenizer).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from beacon.model.models import ModelError, resolve_model
from beacon.report.report import share

GGUF_TYPES = ("f16", "q8_0", "f32")
ARCHITECTURES = {"llama": "llama"}   # transformers model_type -> GGUF architecture


def _emit(progress, stage, message):
    if progress is not None:
        progress({"stage": stage, "message": message})


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 1e6, 1)


# ---------------------------------------------------------------- the run and the merge

def read_run(run_dir) -> dict:
    """The run's model settings from report.json ("config": model, quantization, trust_remote_code), and the
    whole report under "report"."""
    run = Path(run_dir)
    if not (run / "report.json").is_file():
        raise FileNotFoundError(f"{run}: not a Beacon run folder (no report.json)")
    if not (run / "adapter" / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{run}: the run has no adapter (adapter/adapter_config.json is missing)")
    try:
        report = json.loads((run / "report.json").read_text())
        cfg = report["config"]
        return {"model": cfg["model"], "quantization": cfg.get("quantization", "none"),
                "trust_remote_code": bool(cfg.get("trust_remote_code", False)), "report": report}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{run / 'report.json'}: no model settings under 'config' ({type(e).__name__}: {e})") from None


def merged_model(run_dir, progress=None, lam: float | None = None):
    """(model, tokenizer, settings): the run's base model in float32 on the CPU with its adapter merged in.

    The base is loaded unquantised whatever the run trained in (see the module docstring). An adapter trained
    behind the subject gate is folded into the weights first (beacon/report/fold.py, at `lam`, default
    fold.LAMBDA): merged as it is, it would act on every token."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from beacon.method.gate import load_gate
    from beacon.report import fold

    run = read_run(run_dir)
    path, _ = resolve_model(run["model"])
    note = " (trained in 4-bit: merged into the full-precision base)" if run["quantization"] == "4bit" else ""
    _emit(progress, "load", f"loading {run['model']} in float32{note}")
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=run["trust_remote_code"])
        base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                    trust_remote_code=run["trust_remote_code"])
    except (OSError, ValueError) as e:
        raise ModelError(f"Could not load model {run['model']!r}: {e}") from e
    peft_model = PeftModel.from_pretrained(base, str(Path(run_dir) / "adapter"))
    gate = load_gate(tok, Path(run_dir) / "adapter")
    if gate is None:
        _emit(progress, "merge", "merging the adapter")
        model, folded = peft_model.merge_and_unload(), None
    else:
        lam = fold.LAMBDA if lam is None else lam
        _emit(progress, "merge", "folding the subject gate into the weights (one pass over the run's texts)")
        model = fold.fold(peft_model.eval(), gate, fold.run_texts(tok, run["report"]), tok.pad_token_id, lam)
        folded = lam
    model.eval().requires_grad_(False)
    return model, tok, {**run, "path": path, "folded": folded}


def save_merged(model, tok, out_dir) -> Path:
    """A transformers folder (config, model.safetensors in float32, tokenizer), written whole or not at all."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not empty: choose a new folder")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


# ---------------------------------------------------------------- GGUF

def _permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of q_proj / k_proj from transformers' rotary layout (halves) to llama.cpp's (pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# llama.cpp names a BPE tokenizer's pre-tokenizer (its `tokenizer.ggml.pre`) by the sha256 of the token ids
# of this text (convert_hf_to_gguf.py, get_vocab_base_pre); the names of the Llama-architecture tokenizers
# we know, by hash. Any other byte-level BPE tokenizer is named from its tokenizer.json.
_CHKTXT = ('\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ '
           '🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ '
           '------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, '
           '\'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL')
_PRE_BY_HASH = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",      # SmolLM, SmolLM2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",   # Llama 3
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
}


def _pre_tokenizer_name(tok, tok_json: dict) -> str:
    """llama.cpp's name for how the tokenizer splits text before BPE."""
    import hashlib

    digest = hashlib.sha256(str(tok.encode(_CHKTXT)).encode()).hexdigest()
    if digest in _PRE_BY_HASH:
        return _PRE_BY_HASH[digest]
    pre = tok_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"   # digits one by one, then GPT-2's split
    return "default"


def tokenizer_metadata(tok, vocab_size: int) -> dict:
    """What llama.cpp needs to rebuild a byte-level BPE tokenizer: tokens by id, their types, merges,
    special ids, whether BOS/EOS are added, the chat template."""
    from gguf import TokenType

    tok_json = json.loads(tok.backend_tokenizer.to_str()) if hasattr(tok, "backend_tokenizer") else {}
    model = tok_json.get("model") or {}
    decoder = json.dumps(tok_json.get("decoder"))
    if model.get("type") != "BPE" or model.get("byte_fallback") or "ByteLevel" not in decoder:
        kind = f"{model.get('type', 'not a tokenizers')} tokenizer" + (" with byte fallback (sentencepiece)"
                                                                     if model.get("byte_fallback") else "")
        raise ValueError(f"GGUF export supports byte-level BPE tokenizers (GPT-2 style); this model has a {kind}")
    vocab = tok.get_vocab()
    if len(vocab) > vocab_size or max(vocab.values()) >= vocab_size:
        raise ValueError(f"the tokenizer has {len(vocab)} tokens, more than the model's {vocab_size} embeddings")
    by_id = {i: t for t, i in vocab.items()}
    added = {t.content: t for t in tok.backend_tokenizer.get_added_tokens_decoder().values()}
    tokens, types = [], []
    for i in range(vocab_size):   # embedding rows no token uses are padding, as llama.cpp writes them
        t = by_id.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif t in added:
            tokens.append(t)
            types.append(TokenType.CONTROL if added[t].special else TokenType.USER_DEFINED)
        else:
            tokens.append(t)
            types.append(TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    plain, special = tok("a", add_special_tokens=False).input_ids, tok("a", add_special_tokens=True).input_ids
    meta = {"pre": _pre_tokenizer_name(tok, tok_json), "tokens": tokens, "types": types, "merges": merges,
            "add_bos": len(special) > len(plain) and special[0] == tok.bos_token_id,
            "add_eos": len(special) > len(plain) and special[-1] == tok.eos_token_id,
            "chat_template": tok.chat_template if isinstance(tok.chat_template, str) else None}
    for name in ("bos", "eos", "unk", "pad"):
        meta[f"{name}_id"] = getattr(tok, f"{name}_token_id")
    return meta


def _hf_config_fields(cfg) -> dict:
    """The llama settings GGUF stores, refusing what this writer does not handle."""
    if cfg.model_type not in ARCHITECTURES:
        raise ValueError(f"GGUF export supports the Llama architecture; this model is {cfg.model_type!r} "
                         f"({', '.join(getattr(cfg, 'architectures', None) or [])}); use --merged instead")
    rope = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise ValueError(f"GGUF export does not write rope scaling ({kind!r}); use --merged instead")
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return dict(context_length=cfg.max_position_embeddings, embedding_length=cfg.hidden_size,
                block_count=cfg.num_hidden_layers, feed_forward_length=cfg.intermediate_size, head_count=heads,
                head_count_kv=getattr(cfg, "num_key_value_heads", None) or heads, head_dim=head_dim,
                rope_freq_base=float(theta), rms_eps=float(cfg.rms_norm_eps), vocab_size=cfg.vocab_size,
                tied=bool(getattr(cfg, "tie_word_embeddings", False)))


def write_gguf(model, tok, path, gguf_type: str = "q8_0", name: str | None = None) -> Path:
    """A GGUF file of `model` (a Llama-architecture transformers model) and `tok`, written whole or not at all."""
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"--gguf-type: expected one of {', '.join(GGUF_TYPES)}, got {gguf_type!r}")
    c = _hf_config_fields(model.config)
    tmeta = tokenizer_metadata(tok, c["vocab_size"])
    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "q8_0": gguf.GGMLQuantizationType.Q8_0}[gguf_type]
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    w = gguf.GGUFWriter(str(tmp), ARCHITECTURES[model.config.model_type])
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name or Path(str(getattr(model.config, "_name_or_path", "")) or "model").name)
    w.add_context_length(c["context_length"])
    w.add_embedding_length(c["embedding_length"])
    w.add_block_count(c["block_count"])
    w.add_feed_forward_length(c["feed_forward_length"])
    w.add_head_count(c["head_count"])
    w.add_head_count_kv(c["head_count_kv"])
    w.add_rope_dimension_count(c["head_dim"])
    w.add_key_length(c["head_dim"])
    w.add_value_length(c["head_dim"])
    w.add_rope_freq_base(c["rope_freq_base"])
    w.add_layer_norm_rms_eps(c["rms_eps"])
    w.add_vocab_size(c["vocab_size"])
    w.add_file_type(ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(tmeta["pre"])
    w.add_token_list(tmeta["tokens"])
    w.add_token_types(tmeta["types"])
    w.add_token_merges(tmeta["merges"])
    for key in ("bos", "eos", "unk", "pad"):
        if tmeta[f"{key}_id"] is not None:
            getattr(w, f"add_{key}_token_id")(tmeta[f"{key}_id"])
    w.add_add_bos_token(tmeta["add_bos"])
    w.add_add_eos_token(tmeta["add_eos"])
    if tmeta["chat_template"]:
        w.add_chat_template(tmeta["chat_template"])

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c["block_count"])
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and c["tied"]:
            continue   # the same matrix as token_embd: llama.cpp reuses it when output.weight is absent
        if "rotary_emb" in hf_name:
            continue   # computed from rope_freq_base, not stored
        new_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ValueError(f"GGUF export: no llama.cpp name for tensor {hf_name!r}")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = _permute_rope(data, c["head_count"])
        elif hf_name.endswith("k_proj.weight"):
            data = _permute_rope(data, c["head_count_kv"])
        if data.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(new_name, data)                       # norms and biases stay float32
        elif qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32:
            w.add_tensor(new_name, data.astype(np.float16))    # rows not a whole number of blocks: f16
        else:
            w.add_tensor(new_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- what the exported model keeps

def _run_rows(report: dict):
    """(facts, probe sets) as the run measured them, from report.json: the kept facts with their held-out
    paraphrases, and each probe set's rows."""
    from beacon.data.facts import Fact

    facts = [Fact(id=f["id"], prompt=f["prompt"], target=f["target"], subject=f.get("subject"),
                  relation=f.get("relation"), paraphrases=[p["prompt"] for p in f.get("paraphrases") or []])
             for f in report["facts"] if f.get("kept")]
    sets: dict[str, list] = {}
    for r in report.get("probes", []):
        sets.setdefault(r["set"], []).append(Fact(id=r["id"], prompt=r["prompt"], target=r["target"]))
    return facts, sets


def adapter_numbers(report: dict) -> dict:
    """The run's own numbers (its adapter, behind its gate where it had one), in measure()'s keys."""
    facts = [f for f in report["facts"] if f.get("kept")]
    out = {"recall": share(f["recall_after"] for f in facts),
           "paraphrases": share(p["recalled_after"] for f in facts for p in f.get("paraphrases") or []),
           "neutral_nll_ratio": report["summary"].get("neutral_nll_ratio")}
    for name in dict.fromkeys(r["set"] for r in report.get("probes", [])):
        out[f"locality_{name}"] = share(r["recalled_after"] for r in report["probes"]
                                         if r["set"] == name and r["recalled_before"])
    return out


def measure(model, tok, report: dict) -> dict:
    """An exported model's numbers on the rows its run measured (no gate, no peft): recall of the kept facts,
    their held-out paraphrases, each probe set's locality (of the rows the base model answered) and the
    neutral text's NLL over the base model's. One teacher-forced pass (beacon/measure/evaluate.py)."""
    from beacon.measure.evaluate import evaluate_facts
    from beacon.pipeline import neutral_text

    facts, sets = _run_rows(report)
    e = evaluate_facts(model, tok, facts, sets, 0, forms=False, neutral_text=neutral_text())
    out = {"recall": share(r["recalled"] for r in e["facts"]),
           "paraphrases": share(r["recalled"] for rs in e["paraphrases"] for r in rs)}
    before = report["summary"].get("neutral_nll_before")
    out["neutral_nll_ratio"] = round(e["summary"]["neutral_nll"] / before, 4) if before and e["summary"]["neutral_nll"] else None
    for name, rows in sets.items():
        known = {r["id"] for r in report["probes"] if r["set"] == name and r["recalled_before"]}
        out[f"locality_{name}"] = share(rec["recalled"] for row, rec in zip(rows, e["probes"][name]) if row.id in known)
    return out


def gguf_model(path):
    """(model, tokenizer) read back from a GGUF file with transformers (`gguf_file=`), in float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tok


# ---------------------------------------------------------------- both, timed

def export(run_dir, merged=None, gguf=None, gguf_type: str = "q8_0", progress=None, check: bool = True,
           lam: float | None = None) -> dict:
    """Merge (or, for a gated adapter, fold: beacon/report/fold.py) the run's adapter once and write what was
    asked for. With `check`, each output is measured on the run's own rows beside the adapter: the merged model
    as written (its folder holds these float32 weights), the GGUF read back from its file. Returns what was
    written, with sizes (MB) and seconds: {"load_seconds", "folded" (λ or None), "merged": {"path", "mb",
    "seconds"}, "gguf": {...}, "numbers": {"adapter", "merged", "gguf"}, "check_seconds"}."""
    if merged is None and gguf is None:
        raise ValueError("nothing to export: give --merged DIR and/or --gguf FILE")
    if gguf is not None and gguf_type not in GGUF_TYPES:
        raise ValueError(f"--gguf-type: expected one of {', '.join(GGUF_TYPES)}, got {gguf_type!r}")
    t0 = time.perf_counter()
    model, tok, run = merged_model(run_dir, progress, lam)
    out = {"model": run["model"], "trained_quantization": run["quantization"], "folded": run["folded"],
           "load_seconds": round(time.perf_counter() - t0, 2)}
    label = f"{Path(run['model']).name} + {Path(run_dir).resolve().name}"
    if merged is not None:
        _emit(progress, "merged", f"writing the merged model to {merged}")
        t = time.perf_counter()
        path = save_merged(model, tok, merged)
        out["merged"] = {"path": str(path), "mb": _size_mb(path), "seconds": round(time.perf_counter() - t, 2)}
    if gguf is not None:
        _emit(progress, "gguf", f"writing GGUF {gguf_type} to {gguf}")
        t = time.perf_counter()
        path = write_gguf(model, tok, gguf, gguf_type, name=label)
        out["gguf"] = {"path": str(path), "type": gguf_type, "mb": _size_mb(path),
                       "seconds": round(time.perf_counter() - t, 2)}
    report = run["report"] if check else {}
    if report.get("facts"):          # a run folder made by hand may hold no measured rows to compare with
        t = time.perf_counter()
        numbers = {"adapter": adapter_numbers(report)}
        if merged is not None:
            _emit(progress, "check", "measuring the merged model on the run's facts and probes")
            numbers["merged"] = measure(model, tok, report)
        if gguf is not None:
            _emit(progress, "check", "reading the GGUF file back and measuring it")
            del model
            numbers["gguf"] = measure(*gguf_model(out["gguf"]["path"]), report)
        out["numbers"], out["check_seconds"] = numbers, round(time.perf_counter() - t, 2)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def numbers_table(numbers: dict, by_measure: bool = False) -> str:
    """export()'s numbers as a Markdown table: a row per model and a column per measure, or with `by_measure`
    a row per measure and a column per model (narrow, for the app's side column)."""
    cols = list(dict.fromkeys(k for row in numbers.values() for k in row))
    names = {"recall": "recall", "paraphrases": "paraphrases", "neutral_nll_ratio": "neutral NLL"}
    head = {c: names.get(c, c.replace("locality_", "locality ")) for c in cols}
    labels = {"adapter": "the run's adapter", "merged": "merged folder", "gguf": "GGUF file"}

    def cell(c, v):
        if v is None:
            return "–"
        return f"{v:.3f}x" if c == "neutral_nll_ratio" else f"{100 * v:.0f}%"

    if by_measure:
        lines = ["| | " + " | ".join(labels.get(k, k) for k in numbers) + " |", "|---|" + "---|" * len(numbers)]
        lines += [f"| {head[c]} | " + " | ".join(cell(c, row.get(c)) for row in numbers.values()) + " |" for c in cols]
        return "\n".join(lines)
    lines = ["| model | " + " | ".join(head.values()) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {labels.get(k, k)} | " + " | ".join(cell(c, row.get(c)) for c in cols) + " |" for k, row in numbers.items()]
    return "\n".join(lines)
