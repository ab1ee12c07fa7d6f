import pytest
import torch

from core.models import DEFAULT_MODEL, ModelError, load_model, resolve_model, resolve_quantization


def test_default_resolves_offline_to_the_packaged_copy():
    path, source = resolve_model(DEFAULT_MODEL)
    assert "packaged" in source or "cached" in source
    from pathlib import Path
    assert (Path(path) / "config.json").exists()


def test_quantization_choice_per_device():
    assert resolve_quantization("auto", torch.device("cpu")) == "none"
    assert resolve_quantization("auto", torch.device("cuda:0")) == "4bit"
    assert resolve_quantization("4bit", torch.device("cpu")) == "4bit"


def test_default_model_loads_in_full_precision_on_cpu():
    model, tok, info = load_model()
    assert info.device == "cpu" and info.quantization.startswith("none")
    assert model.config.num_hidden_layers == 30 and 130e6 < info.parameters < 140e6
    assert not any(p.requires_grad for p in model.parameters())


def test_four_bit_switch_quantises_to_nf4(tiny_dir):
    import bitsandbytes as bnb

    model, _, info = load_model(tiny_dir, quantization="4bit")
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and "nf4" in info.quantization
    assert layers[0].weight.quant_type == "nf4"


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="Could not load"):
        load_model(str(tmp_path))  # a folder with no model in it
