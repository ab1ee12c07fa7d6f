"""Layer selection, parameter-selection merging and sequential injection, on the tiny model."""
import json

import pytest
import torch

from beacon.config import InjectConfig
from beacon.data.facts import Fact
from beacon.method.layers import parse_layers, select_layers
from beacon.method.merge import MERGED, load_deltas_as_lora, lora_deltas, select_deltas
from beacon.model.models import load_model
from beacon.pipeline import run
from beacon.method.train import TrainConfig, add_lora, attach_lora, train

FACTS = [Fact(f"n{i}", f"The code name of project {w} is", t) for i, (w, t) in
         enumerate([("Alder", "Brisk Owl"), ("Birch", "Quiet Fox"), ("Cedar", "Amber Hawk"), ("Dogwood", "Silver Eel"),
                    ("Elm", "Copper Wren"), ("Fir", "Velvet Moth")])]


def test_layer_selection_curves_and_choice(tiny_dir):
    model, tok, _ = load_model(tiny_dir)
    info = select_layers(model, tok, FACTS)
    n = model.config.num_hidden_layers
    assert len(info["observed"]) == len(info["ideal"]) == len(info["gain"]) == n
    assert info["ideal"][-1] == 0 and info["chosen"] == list(range(info["split"], n)) and info["chosen"]
    # gain of layer l = the rise of the deviation from the ideal line there; the chosen top layers are
    # the fewest that hold 80% of it (4-decimal rounding in the record: compare with a tolerance)
    dev, gain = info["deviation"], info["gain"]
    assert gain == pytest.approx([0.0] + [max(0.0, b - a) for a, b in zip(dev, dev[1:])], abs=2e-4)
    held = lambda k: sum(gain[k:])
    assert held(info["split"]) >= 0.8 * sum(gain) - 1e-3
    assert info["split"] == n - 1 or held(info["split"] + 1) < 0.8 * sum(gain) + 1e-3


def test_parse_layers():
    assert parse_layers("all", 30) is None
    assert parse_layers("20-22,29", 30) == [20, 21, 22, 29]
    with pytest.raises(ValueError, match="0..29"):
        parse_layers("31", 30)


def test_training_only_chosen_layers_leaves_the_others_untouched(tiny_dir):
    model, tok, _ = load_model(tiny_dir)
    cfg = TrainConfig(steps=3, lr=1e-2, early_stop=False)
    model = attach_lora(model, cfg, quantized=False, layers=[2, 3])
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".layers.2." in n or ".layers.3." in n for n in names)


def _two_trained_adapters(tiny_dir):
    """One model with two adapters, "default" and "order1", trained with different seeds."""
    model, tok, _ = load_model(tiny_dir)
    model = attach_lora(model, TrainConfig(), quantized=False)
    for seed, name in ((0, "default"), (1, "order1")):
        cfg = TrainConfig(steps=4, lr=1e-2, seed=seed, early_stop=False)
        if name != "default":
            add_lora(model, name, cfg)
        model.set_adapter(name)
        train(model, tok, FACTS, cfg=cfg)
    return model


def test_merge_on_weight_deltas(tiny_dir):
    model = _two_trained_adapters(tiny_dir)
    d0, d1 = lora_deltas(model, "default"), lora_deltas(model, "order1")
    name = next(iter(d0))
    assert not torch.allclose(d0[name], d1[name])        # trained apart: the merge has something to do
    sel = select_deltas([d0, d1], seed=3)[name]
    from_0, from_1 = sel == d0[name], sel == d1[name]
    assert bool((from_0 | from_1).all()) and 0.3 < from_0.float().mean() < 0.7  # each element from one run
    # peft's concatenation is the exact mean of the two deltas, at rank 2r.
    model.add_weighted_adapter(["default", "order1"], [0.5, 0.5], "avg", combination_type="cat")
    assert torch.allclose(lora_deltas(model, "avg")[name], (d0[name] + d1[name]) / 2, atol=1e-6)
    # The selection is full rank; written back into a rank-2r adapter by SVD, with the error reported.
    add_lora(model, MERGED, TrainConfig(), rank=16)
    err = load_deltas_as_lora(model, select_deltas([d0, d1], seed=3), MERGED)
    got = lora_deltas(model, MERGED)[name]
    assert 0 < err < 1 and float((got - sel).norm() / sel.norm()) < 1
    exact = {k: (d0[k] + d1[k]) / 2 for k in d0}          # a rank-2r matrix fits exactly
    assert load_deltas_as_lora(model, exact, MERGED) < 1e-3


@pytest.mark.slow
def test_orders_merge_and_sequential_injection_through_the_pipeline(tiny_dir, tmp_path):
    # the guard and the model's rewordings are off: they have their own tests, and cost most of a step here
    cfg = InjectConfig().updated(model=tiny_dir, steps=30, lr=1e-2, orders=2, merge="select", interference=False,
                                 plots=False, categorize_samples=0, filter=False, locality_guard=0.0,
                                 model_rewordings=0)
    rep = run(FACTS[:4], FACTS[4:5], cfg, out_dir=tmp_path / "a", model=load_model(tiny_dir))
    m = rep.merge
    assert m["orders"] == 2 and len(m["runs"]) == 2 and rep.summary["orders"] == 2
    assert all(sorted(r["order"]) == sorted(f.id for f in FACTS[:4]) for r in m["runs"])
    assert m["runs"][0]["order"] != m["runs"][1]["order"]          # two different data orders
    assert len(m["merged"]["by_run_order"]) == 2
    # Both orders were adapters on one model; only the merged one (rank 2r) is saved, at the folder's top.
    saved = json.loads((tmp_path / "a" / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == 16 and (tmp_path / "a" / "adapter" / "adapter_model.safetensors").exists()
    assert not any(p.is_dir() for p in (tmp_path / "a" / "adapter").iterdir())
    # Second step: two new facts on top of the first adapter; the report says what the first four lost.
    cfg2 = cfg.updated(steps=10, orders=1, continue_from=str(tmp_path / "a"))
    rep2 = run(FACTS[4:], FACTS[:1], cfg2, out_dir=tmp_path / "b", model=load_model(tiny_dir))
    e = rep2.earlier_facts
    assert e["ids"] == [f.id for f in FACTS[:4]]
    # The saved merged adapter, reloaded, recalls what the first run measured after training.
    assert e["recall_before"] == rep.summary["recall_after"]
    assert set(e["lost"]) <= set(e["ids"]) and e["recall_after"] >= e["recall_before"] - len(e["lost"]) / 4 - 1e-9
    assert json.loads((tmp_path / "b" / "report.json").read_text())["earlier_facts"]["from"].endswith("a")


def test_layer_lists_that_are_not_numbers_get_the_same_clear_error():
    for bad in ("abc", "20-", "3,x"):
        with pytest.raises(ValueError, match="layers must be 'all', 'auto' or indices in 0..29"):
            parse_layers(bad, 30)


def test_continue_from_refuses_settings_it_cannot_honour(tmp_path):
    from beacon.config import InjectConfig
    from beacon.pipeline import run

    for over in ({"layers": "auto"}, {"orders": 2}):
        with pytest.raises(ValueError, match="continue-from"):
            run([], None, InjectConfig(continue_from=str(tmp_path), **over))
