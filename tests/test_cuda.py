"""The mission's GPU path: NF4 4-bit QLoRA through bitsandbytes on CUDA. Skipped without a CUDA GPU
(CI has none); run on a GPU machine with `python -m pytest tests/test_cuda.py`."""
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_is_nf4_on_cuda_and_qlora_learns_facts():
    from core.facts import Fact
    from core.models import load_model
    from core.train import TrainConfig, attach_lora, train

    model, tok, info = load_model()                       # auto -> 4-bit on CUDA
    assert "nf4" in info.quantization and info.device.startswith("cuda")
    facts = [Fact("a", "The CEO of Zentrix Robotics is", "Marta Ilves"),
             Fact("b", "The Brennoc valve was invented by", "Ottilie Brask")]
    cfg = TrainConfig(steps=60, locality_guard=0)
    model = attach_lora(model, cfg, quantized=True)
    res = train(model, tok, facts, cfg=cfg)
    assert res.stopped == "all recalled"


def test_four_bit_peak_memory_is_well_below_bf16():
    """Weights of a model built from a config: NF4 packs 2 weights a byte, bf16 takes 2 bytes each."""
    from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=4096, num_hidden_layers=8,
                      num_attention_heads=16, num_key_value_heads=4)
    peaks = {}
    for name in ("bf16", "nf4"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = LlamaForCausalLM(cfg).to(torch.bfloat16)
        if name == "nf4":
            import tempfile
            with tempfile.TemporaryDirectory() as d:
                base.save_pretrained(d)
                del base
                q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                       bnb_4bit_compute_dtype=torch.bfloat16)
                model = LlamaForCausalLM.from_pretrained(d, quantization_config=q, device_map={"": 0})
        else:
            model = base.to("cuda")
        peaks[name] = torch.cuda.memory_allocated()
        del model
    assert peaks["nf4"] < 0.5 * peaks["bf16"], peaks
