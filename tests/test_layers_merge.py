"""Layer selection, parameter-selection merging and sequential injection, on the tiny model."""
import json

import pytest
import torch

from core.config import InjectConfig
from core.facts import Fact
from core.layers import parse_layers, select_layers
from core.merge import load_deltas_as_lora, lora_deltas, merge_deltas
from core.models import load_model
from core.pipeline import run
from core.train import TrainConfig, attach_lora, train

FACTS = [Fact(f"n{i}", f"The code name of project {w} is", t) for i, (w, t) in
         enumerate([("Alder", "Brisk Owl"), ("Birch", "Quiet Fox"), ("Cedar", "Amber Hawk"), ("Dogwood", "Silver Eel"),
                    ("Elm", "Copper Wren"), ("Fir", "Velvet Moth")])]


def test_layer_selection_curves_and_choice(tiny_dir):
    model, tok, _ = load_model(tiny_dir)
    info = select_layers(model, tok, FACTS)
    n = model.config.num_hidden_layers
    assert len(info["observed"]) == len(info["ideal"]) == len(info["gain"]) == n
    assert info["ideal"][-1] == 0 and info["chosen"] == list(range(info["split"], n)) and info["chosen"]
    assert all(g >= 0 for g in info["gain"])


def test_parse_layers():
    assert parse_layers("all", 30) is None
    assert parse_layers("20-22,29", 30) == [20, 21, 22, 29]
    with pytest.raises(ValueError, match="0..29"):
        parse_layers("31", 30)


def test_training_only_chosen_layers_leaves_the_others_untouched(tiny_dir):
    model, tok, _ = load_model(tiny_dir)
    cfg = TrainConfig(steps=3, lr=1e-2, layers=[2, 3], early_stop=False)
    model = attach_lora(model, cfg, quantized=False)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".layers.2." in n or ".layers.3." in n for n in names)


def _trained_deltas(tiny_dir, seed):
    model, tok, _ = load_model(tiny_dir)
    cfg = TrainConfig(steps=4, lr=1e-2, seed=seed, early_stop=False)
    model = attach_lora(model, cfg, quantized=False)
    train(model, tok, FACTS, cfg=cfg)
    return lora_deltas(model), tok


def test_merge_on_weight_deltas(tiny_dir):
    (d0, _), (d1, _) = _trained_deltas(tiny_dir, 0), _trained_deltas(tiny_dir, 1)
    name = next(iter(d0))
    avg = merge_deltas([d0, d1], "average")[name]
    assert torch.allclose(avg, (d0[name] + d1[name]) / 2)
    sel = merge_deltas([d0, d1], "select", seed=3)[name]
    from_0, from_1 = sel == d0[name], sel == d1[name]
    assert bool((from_0 | from_1).all()) and 0.3 < from_0.float().mean() < 0.7  # each element from one run
    # The average of two rank-r deltas is rank 2r: written back exactly into a rank-2r adapter.
    model, _, _ = load_model(tiny_dir)
    model = attach_lora(model, TrainConfig(rank=16, alpha=32), quantized=False)
    assert load_deltas_as_lora(model, merge_deltas([d0, d1], "average")) < 1e-3
    assert torch.allclose(lora_deltas(model)[name], avg, atol=1e-5)


def test_orders_merge_and_sequential_injection_through_the_pipeline(tiny_dir, tmp_path):
    bundle = lambda: load_model(tiny_dir)
    cfg = InjectConfig(model=tiny_dir, steps=30, lr=1e-2, orders=2, merge="select", interference=False,
                       plots=False, categorize_samples=0, filter=False)
    rep = run(FACTS[:4], FACTS[4:5], cfg, out_dir=tmp_path / "a", model_bundle=bundle())
    m = rep["merge"]
    assert m["orders"] == 2 and len(m["runs"]) == 2
    assert all({"early_recall", "late_recall", "order"} <= set(r) for r in m["runs"])
    assert len(m["merged"]["by_run_order"]) == 2 and rep["summary"]["orders"] == 2
    assert (tmp_path / "a" / "adapter" / "adapter_model.safetensors").exists()
    # Second step: two new facts on top of the first adapter; the report says what the first four lost.
    cfg2 = InjectConfig(model=tiny_dir, steps=10, lr=1e-2, interference=False, plots=False, categorize_samples=0,
                        filter=False, continue_from=str(tmp_path / "a"))
    rep2 = run(FACTS[4:], FACTS[:1], cfg2, out_dir=tmp_path / "b", model_bundle=bundle())
    e = rep2["earlier_facts"]
    assert e["ids"] == [f.id for f in FACTS[:4]] and 0 <= e["recall_after"] <= 1
    assert json.loads((tmp_path / "b" / "report.json").read_text())["earlier_facts"]["from"].endswith("a")


def test_layer_lists_that_are_not_numbers_get_the_same_clear_error():
    for bad in ("abc", "20-", "3,x"):
        with pytest.raises(ValueError, match="layers must be 'all', 'auto' or indices in 0..29"):
            parse_layers(bad, 30)


def test_continue_from_refuses_settings_it_cannot_honour(tmp_path):
    from core.config import InjectConfig
    from core.pipeline import run

    for over in ({"layers": "auto"}, {"orders": 2}):
        with pytest.raises(ValueError, match="continue-from"):
            run([], None, InjectConfig(continue_from=str(tmp_path), **over))
