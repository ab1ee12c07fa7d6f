"""Export: a run's adapter merged into its base, as a transformers folder and as GGUF, reloaded by transformers.

On the tiny random Llama (GQA: 4 query heads, 2 key/value heads, tied embeddings) the adapter's B matrices
are random, so the merge changes the logits; each export must reload to the PeftModel's logits. On the
default model, tests/test_pipeline.py exports a default (gated) run and reloads both files; tests/test_browser.py
exports a run trained on every token from the app and reloads its GGUF.
"""
import json
from pathlib import Path

import pytest
import torch

from beacon.report import export
from beacon.cli import main
from beacon.config import TrainConfig
from beacon.data.facts import Fact
from beacon.model.models import load_model
from beacon.method.train import attach_lora, save_adapter

TEXTS = ["The CEO of Zentrix Robotics is Marta Ilves.", "Paris is the capital of France, 1789 and 2024!"]


def make_run(run_dir: Path, model_path: str, peft_model) -> Path:
    save_adapter(peft_model, run_dir / "adapter")
    (run_dir / "report.json").write_text(json.dumps({"config": {"model": model_path, "quantization": "none",
                                                                "trust_remote_code": False}}))
    return run_dir


def logits(model, tok, texts=TEXTS):
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**enc).logits
    return out[enc.attention_mask.bool()]   # padding positions left out


@pytest.fixture(scope="module")
def tiny_run(tiny_dir, tmp_path_factory):
    model, tok, _ = load_model(tiny_dir, quantization="none", device="cpu")
    base = logits(model, tok)
    peft_model = attach_lora(model, TrainConfig(rank=4, alpha=8), quantized=False)
    torch.manual_seed(1)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)   # fresh LoRA has B = 0: the merge would change nothing
    tuned = logits(peft_model, tok)
    run = make_run(tmp_path_factory.mktemp("run"), tiny_dir, peft_model)
    out = tmp_path_factory.mktemp("export")
    return {"run": run, "out": out, "tok": tok, "base": base, "tuned": tuned}


@pytest.fixture(scope="module")
def ggufs(tiny_run):
    """One export of each GGUF type: {type: (path, what export returned)}."""
    out = {}
    for kind in export.GGUF_TYPES:
        path = tiny_run["out"] / f"model-{kind}.gguf"
        out[kind] = path, export.export(tiny_run["run"], gguf=path, gguf_type=kind)
    return out


def close(a, b) -> float:
    """Largest difference, as a share of the largest logit."""
    return float((a - b).abs().max() / a.abs().max())


def test_the_adapter_changes_the_logits(tiny_run):
    assert close(tiny_run["tuned"], tiny_run["base"]) > 0.1   # else every comparison below proves nothing


def test_merged_folder_reloads_to_the_adapters_logits(tiny_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    res = export.export(tiny_run["run"], merged=tiny_run["out"] / "merged")
    d = Path(res["merged"]["path"])
    assert (d / "model.safetensors").exists() and not list(d.glob("*.bin")) and (d / "tokenizer.json").exists()
    assert not (d / "adapter_config.json").exists() and res["merged"]["mb"] > 0
    model = AutoModelForCausalLM.from_pretrained(d)
    assert close(tiny_run["tuned"], logits(model, AutoTokenizer.from_pretrained(d))) < 1e-5
    with pytest.raises(ValueError, match="not empty"):   # never writes over a folder
        export.export(tiny_run["run"], merged=d)


def test_a_gated_adapter_is_folded_into_plain_weights(tiny_dir, tmp_path):
    """Merged as it is, a gated adapter would act on every token. The fold keeps its update on the run's texts about
    the subject, and takes most of it away from text that names none (and that the fold never read)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from beacon.method.gate import SubjectGate

    facts = [Fact(id="a", prompt="The CEO of Zentrix Robotics is", target="Marta Ilves", subject="Zentrix Robotics")]
    about = ["Zentrix Robotics is led by Marta Ilves"]
    other = ["Paris is the capital of France, 1789 and 2024!", "The river flows past the old mill and the bridge."]
    model, tok, _ = load_model(tiny_dir, quantization="none", device="cpu")
    base_about, base_other = logits(model, tok, about), logits(model, tok, other)
    peft_model = attach_lora(model, TrainConfig(rank=4, alpha=8), quantized=False)
    torch.manual_seed(2)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    SubjectGate.for_facts(tok, facts, "from-subject").attach(peft_model)
    gated_about = logits(peft_model, tok, about)
    assert close(gated_about, base_about) > 0.1 and close(logits(peft_model, tok, other), base_other) == 0
    run = make_run(tmp_path / "run", tiny_dir, peft_model)
    # as in a run, the training wordings hold more tokens behind the gate than the anchors hold outside it
    wordings = [facts[0].prompt, "Q: Who is the CEO of Zentrix Robotics?\nA:", "Zentrix Robotics is led by"]
    wordings += [f"Zentrix Robotics, {w}, {v} by" for w in ("the robot maker", "a firm in Tallinn", "the company",
                                                            "founded in 2011", "known for its arms", "a maker of drones")
                 for v in ("is run", "is led", "was built up", "is managed", "is headed", "has been guided")]
    report = json.loads((run / "report.json").read_text())
    report.update(facts=[{"id": "a", "prompt": facts[0].prompt, "target": "Marta Ilves", "kept": True}],
                  training_prompts={"a": wordings}, guard={"all": []})
    (run / "report.json").write_text(json.dumps(report))

    folded, tok, settings = export.merged_model(run)
    assert settings["folded"] == 1.0
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), str(run / "adapter"))
    plain = plain.merge_and_unload()
    # on text that names no subject: far nearer the base model than the update merged as it is
    assert close(logits(folded, tok, other), base_other) < 0.5 * close(logits(plain, tok, other), base_other)
    # on a training wording with its answer: far nearer the gated adapter than the base model is
    assert close(logits(folded, tok, about), gated_about) < 0.5 * close(base_about, gated_about)


@pytest.mark.parametrize("kind,tol", [("f32", 1e-5), ("f16", 3e-3), ("q8_0", 3e-2)])
def test_gguf_reloads_with_transformers_to_the_adapters_logits(tiny_run, ggufs, kind, tol):
    from transformers import AutoModelForCausalLM

    path, res = ggufs[kind]
    assert res["gguf"]["type"] == kind and res["gguf"]["mb"] > 0 and path.exists()
    assert not path.with_name(path.name + ".partial").exists()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    got = logits(model, tiny_run["tok"])
    assert close(tiny_run["tuned"], got) < tol
    assert close(tiny_run["base"], got) > 10 * tol   # the adapter is in the file, not just the base


def test_gguf_metadata_is_what_llama_cpp_reads(tiny_run, ggufs):
    from gguf import GGUFReader

    r = GGUFReader(str(ggufs["q8_0"][0]))
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("tokenizer.ggml.") or k.endswith("_id")
         or k in ("tokenizer.ggml.model", "tokenizer.ggml.pre")}
    tok = tiny_run["tok"]
    assert f["general.architecture"] == "llama" and f["general.file_type"] == 7   # MOSTLY_Q8_0
    assert (f["llama.embedding_length"], f["llama.block_count"], f["llama.feed_forward_length"]) == (64, 4, 128)
    assert (f["llama.attention.head_count"], f["llama.attention.head_count_kv"]) == (4, 2)
    assert f["llama.context_length"] == 128 and f["llama.vocab_size"] == len(tok)
    assert f["llama.rope.dimension_count"] == 16 and f["llama.rope.freq_base"] == pytest.approx(10000.0)
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
    assert f["tokenizer.ggml.pre"] == "smollm"   # what llama.cpp's converter names SmolLM2's tokenizer
    assert f["tokenizer.ggml.padding_token_id"] == tok.pad_token_id
    assert f["tokenizer.chat_template"] == tok.chat_template
    assert len(r.fields["tokenizer.ggml.tokens"].data) == len(tok)
    assert len(r.fields["tokenizer.ggml.merges"].data) > 1000
    names = {t.name: t.tensor_type.name for t in r.tensors}
    assert "output.weight" not in names and names["token_embd.weight"] == "Q8_0"   # tied: one matrix
    assert names["blk.3.attn_k.weight"] == "Q8_0" and names["output_norm.weight"] == "F32"
    assert len(names) == 2 + 4 * 9
    sizes = {kind: res["gguf"]["mb"] for kind, (_, res) in ggufs.items()}
    assert sizes["q8_0"] < sizes["f16"] < sizes["f32"]


def test_gguf_tokenizer_reloads_to_the_same_ids(tiny_run, ggufs):
    from transformers import AutoTokenizer

    path = ggufs["f16"][0]
    tok, back = tiny_run["tok"], AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    chat = tok.apply_chat_template([{"role": "user", "content": "Who leads Zentrix?"}], tokenize=False)
    for text in TEXTS + [chat]:
        assert back(text).input_ids == tok(text).input_ids, text
    assert back.eos_token == tok.eos_token and back.chat_template == tok.chat_template


def test_unsupported_architecture_is_named():
    from transformers import GPT2Config

    with pytest.raises(ValueError, match="'gpt2'"):
        export._hf_config_fields(GPT2Config())


def test_cli_errors_are_one_line(tmp_path, capsys, tiny_run):
    assert main(["export", str(tmp_path), "--gguf", str(tmp_path / "x.gguf")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}: not a Beacon run folder (no report.json)"
    (tmp_path / "report.json").write_text("{}")
    assert main(["export", str(tmp_path), "--gguf", str(tmp_path / "x.gguf")]) == 2
    assert "the run has no adapter" in capsys.readouterr().err
    assert main(["export", str(tiny_run["run"]), "--gguf", str(tmp_path / "x.gguf"), "--gguf-type", "q4_k"]) == 2
    assert capsys.readouterr().err.strip() == "error: --gguf-type: expected one of f16, q8_0, f32, got 'q4_k'"
    assert main(["export", str(tiny_run["run"])]) == 2
    assert "nothing to export" in capsys.readouterr().err


def test_cli_prints_sizes_and_seconds(tiny_run, capsys):
    path = tiny_run["out"] / "cli.gguf"
    assert main(["export", str(tiny_run["run"]), "--gguf", str(path), "--gguf-type", "f16"]) == 0
    printed = capsys.readouterr().out
    assert f"gguf f16: {path} (" in printed and " MB, " in printed and " s)" in printed
