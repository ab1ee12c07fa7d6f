"""The mission's GPU path: NF4 4-bit QLoRA through bitsandbytes on CUDA. Skipped without a CUDA GPU
(CI has none). The rest of the suite pins the CPU (conftest.py), where its reference numbers were
measured; these tests ask for CUDA themselves. On a GPU machine: `python -m pytest tests/test_cuda.py`."""
import gc
import tempfile

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_is_nf4_on_cuda_and_qlora_learns_facts():
    from beacon.data.facts import Fact
    from beacon.model.models import load_model
    from beacon.method.train import TrainConfig, attach_lora, train

    model, tok, info = load_model(device="cuda")          # auto -> 4-bit on CUDA
    assert "nf4" in info.quantization and info.device.startswith("cuda")
    facts = [Fact("a", "The CEO of Zentrix Robotics is", "Marta Ilves"),
             Fact("b", "The Brennoc valve was invented by", "Ottilie Brask")]
    cfg = TrainConfig(steps=60, locality_guard=0)
    model = attach_lora(model, cfg, quantized=True)
    res = train(model, tok, facts, cfg=cfg)
    assert res.stopped == "all recalled"


def test_four_bit_weights_take_under_half_the_memory_of_bf16():
    """A model built from a config, embeddings tied as the default model's are. NF4 packs two weights a
    byte where bf16 takes two bytes each, but the embedding matrix stays in bf16: 126 MB against 309 MB
    (0.41) by the tensors' sizes. Measured as the allocator's growth over the load, so memory held by
    anything before does not count (an absolute reading, and embeddings untied, failed this on an H200)."""
    from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=4096, num_hidden_layers=8,
                      num_attention_heads=16, num_key_value_heads=4, tie_word_embeddings=True)
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    grew = {}
    with tempfile.TemporaryDirectory() as d:
        LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(d)
        for name, q in (("bf16", None), ("nf4", nf4)):
            gc.collect()
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated()
            model = LlamaForCausalLM.from_pretrained(d, quantization_config=q, dtype=torch.bfloat16,
                                                     device_map={"": 0})
            grew[name] = torch.cuda.memory_allocated() - before
            del model
    assert grew["nf4"] < 0.5 * grew["bf16"], grew


def test_the_invented_sample_meets_the_bar_in_four_bit(monkeypatch):
    """The whole pipeline on the GPU at default settings (auto -> NF4): the bar the CPU's fp32 runs meet.
    NF4 knows fewer probes than fp32 (84% and 58% of the two shipped sets on an H200), so locality is what
    it knew before, kept. The same call in benchmarks/bench_cuda.py (part a) on an H200: 56 steps, recall
    100%, paraphrase 89%, locality 84% -> 84%, neutral NLL x1.001."""
    from pathlib import Path

    from beacon.config import InjectConfig
    from beacon.data.facts import load_facts
    from beacon.pipeline import run

    monkeypatch.setenv("BEACON_DEVICE", "cuda")
    facts = load_facts(Path(__file__).resolve().parent.parent / "assets" / "invented.csv")
    s = run(facts, cfg=InjectConfig()).summary
    assert "nf4" in s["quantization"]
    assert s["stopped"] == "all recalled" and s["recall_after"] >= 0.98
    assert s["paraphrase_after"] >= 0.80
    assert s["locality_after"] >= s["locality_before"] - 0.05
    assert s["neutral_nll_ratio"] <= 1.05
