import pytest
import torch

from beacon.model.models import DEFAULT_MODEL, ModelError, load_model, pick_device, resolve_model, resolve_quantization


def test_default_resolves_offline_to_the_packaged_copy():
    path, source = resolve_model(DEFAULT_MODEL)
    assert "packaged" in source or "cached" in source
    from pathlib import Path
    assert (Path(path) / "config.json").exists()


def test_quantization_choice_per_device():
    assert resolve_quantization("auto", torch.device("cpu")) == "none"
    assert resolve_quantization("auto", torch.device("cuda:0")) == "4bit"
    assert resolve_quantization("4bit", torch.device("cpu")) == "4bit"


def test_default_model_loads_as_auto_says_for_this_device():
    """auto: full precision on a CPU, NF4 4-bit on a CUDA GPU (then the base weights are frozen uint8).
    The device is the one Beacon picks: the suite pins the CPU (conftest), BEACON_DEVICE=cuda the GPU."""
    model, tok, info = load_model()
    if pick_device().type == "cuda":
        assert info.device.startswith("cuda") and "nf4" in info.quantization
    else:
        assert info.device == "cpu" and info.quantization.startswith("none")
    assert model.config.num_hidden_layers == 30 and 130e6 < info.parameters < 140e6
    assert not any(p.requires_grad for p in model.parameters())


def test_beacon_device_chooses_the_device_and_a_wrong_one_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("BEACON_DEVICE", "cpu")
    assert pick_device() == torch.device("cpu")
    monkeypatch.setenv("BEACON_DEVICE", "gpu0")
    with pytest.raises(ModelError, match="not a device"):
        pick_device()
    monkeypatch.setenv("BEACON_DEVICE", "meta")
    with pytest.raises(ModelError, match="cpu or cuda"):
        pick_device()
    monkeypatch.setenv("BEACON_DEVICE", "cuda")
    if torch.cuda.is_available():
        assert pick_device().type == "cuda"
    else:
        with pytest.raises(ModelError, match="no CUDA GPU"):
            pick_device()
    monkeypatch.delenv("BEACON_DEVICE")
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_four_bit_switch_quantises_to_nf4(tiny_dir):
    import bitsandbytes as bnb

    model, _, info = load_model(tiny_dir, quantization="4bit")
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and "nf4" in info.quantization
    assert layers[0].weight.quant_type == "nf4"


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="Could not load"):
        load_model(str(tmp_path))  # a folder with no model in it


@pytest.mark.slow
def test_qlora_trains_on_the_four_bit_model(tiny_dir):
    """The QLoRA path end to end on CPU: NF4 base, LoRA on top, the loss goes down."""
    from beacon.data.facts import Fact
    from beacon.method.train import TrainConfig, attach_lora, train

    model, tok, info = load_model(tiny_dir, quantization="4bit")
    cfg = TrainConfig(steps=6, lr=1e-2, early_stop=False)
    model = attach_lora(model, cfg, quantized=True)
    res = train(model, tok, [Fact("q", "The CEO of Zentrix Robotics is", "Marta Ilves")], cfg=cfg)
    assert res.steps == 6 and res.history[-1]["task"] < res.history[0]["task"]
    assert "nf4" in info.quantization


def test_zerogpu_reservation_grows_with_facts_steps_and_orders_and_is_capped():
    from beacon.estimate import gpu_seconds

    small, more_facts, more_steps = gpu_seconds(10, 100), gpu_seconds(100, 100), gpu_seconds(10, 300)
    assert 40 < small < more_facts and small < more_steps
    assert gpu_seconds(10, 100, orders=3) > small
    assert gpu_seconds(10_000, 10_000) == 1200           # ZeroGPU's ceiling
