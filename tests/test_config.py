"""One config: declared once in beacon/config.py, read by the CLI, the app and the report."""
import argparse
import json

import pytest

from beacon.config import IdleSetting, InjectConfig, TrainConfig, add_arguments, describe, from_arguments


def test_round_trip_through_the_report_keeps_every_setting():
    cfg = InjectConfig().updated(steps=17, lr=1e-3, weighting="dynamic", keep=["a", "b"], layers="3-5", orders=2)
    back = InjectConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.train.steps == 17 and back.train.weighting == "dynamic" and back.keep == ["a", "b"]
    assert cfg.to_dict()["train"]["lr"] == 1e-3 and "steps" not in cfg.to_dict()   # nested, not copied


def test_unknown_keys_are_errors_that_name_the_key():
    with pytest.raises(ValueError, match="'stpes'"):
        InjectConfig.from_dict({"stpes": 3})
    with pytest.raises(ValueError, match="'warmup'"):
        InjectConfig.from_dict({"train": {"steps": 3, "warmup": 1}})
    with pytest.raises(ValueError, match="'rnak'"):
        InjectConfig().updated(rnak=4)


def test_bad_values_name_the_field_and_what_it_accepts():
    with pytest.raises(ValueError, match=r"steps: expected a value in \[0, 10000\], got -1"):
        InjectConfig().updated(steps=-1)
    with pytest.raises(ValueError, match="weighting: expected one of semantic, dynamic, uniform"):
        TrainConfig(weighting="sharp")
    with pytest.raises(ValueError, match="merge: expected one of select, average"):
        InjectConfig(merge="vote")
    with pytest.raises(ValueError, match="guard_anchors 'nieghbours'"):
        InjectConfig(guard_anchors="nieghbours")


def test_updated_routes_plain_names_and_leaves_the_original_alone():
    base = InjectConfig()
    cfg = base.updated(steps=5, model="x", filter=False)
    assert (cfg.train.steps, cfg.model, cfg.filter) == (5, "x", False)
    assert base.train.steps == 300 and base.model != "x"
    assert cfg.value("steps") == 5 and cfg.value("model") == "x"


def test_the_command_line_is_made_from_the_fields():
    p = argparse.ArgumentParser()
    add_arguments(p)
    a = p.parse_args(["--steps", "12", "--no-filter", "--keep", "f1, f2", "--weighting", "uniform",
                      "--locality-guard", "0", "--no-interference"])
    cfg = from_arguments(a)
    assert cfg.train.steps == 12 and cfg.train.weighting == "uniform" and cfg.train.locality_guard == 0.0
    assert cfg.filter is False and cfg.keep == ["f1", "f2"] and cfg.interference is False
    # Options not given keep the declared defaults.
    assert cfg.train.lr == TrainConfig().lr and cfg.orders == 1
    with pytest.raises(SystemExit):   # argparse refuses a choice the field does not declare
        p.parse_args(["--merge", "vote"])
    assert "step budget" in p.format_help() and "--lora-modules" in p.format_help()


def test_describe_gives_the_app_its_labels_and_ranges():
    d = describe("locality_guard")
    assert d["default"] == 10.0 and d["min"] == 0.0 and "KL" in d["help"]
    assert describe("merge")["choices"] == ("select", "average")
    with pytest.raises(ValueError, match="'nope'"):
        describe("nope")


def test_settings_that_would_do_nothing_are_refused_naming_both():
    from beacon.config import idle_settings

    cases = {("guard_anchors", "file"): "gate 'from-subject'", ("anchors_file", "mine.txt"): "gate 'from-subject'",
             ("merge", "average"): "orders is 1", ("held_texts", 8): "gate is 'none'",
             ("guard_batch", 8): "locality_guard 0",
             ("model_rewordings", 5): "rewordings is off", ("filter_strength", 3.0): "filter false",
             ("sampled_anchors", 10): "guard_anchors 'file'"}
    context = {"held_texts": dict(gate="none"), "guard_batch": dict(locality_guard=0),
               "model_rewordings": dict(rewordings=False), "filter_strength": dict(filter=False),
               "sampled_anchors": dict(gate="none", guard_anchors="file")}
    for (name, v), why in cases.items():
        with pytest.raises(IdleSetting, match=f"^{name} .*{why}") as err:
            InjectConfig().updated(**context.get(name, {}), **{name: v})
        assert err.value.name == name
        assert name in idle_settings(InjectConfig().updated(**context.get(name, {})))
    # the same values where they are read are taken; turning an idle thing off is harmless
    InjectConfig().updated(gate="none", guard_anchors="file,sampled", anchors_file="mine.txt", sampled_anchors=10)
    InjectConfig().updated(orders=2, merge="average")
    InjectConfig().updated(rewordings=False, model_rewordings=0, gate="none", held_texts=0)
    assert "guard_anchors" not in idle_settings(InjectConfig().updated(gate="none"))
    # every door: a saved report's config and the command line
    with pytest.raises(IdleSetting):
        InjectConfig.from_dict({**InjectConfig().to_dict(), "merge": "average"})


def test_a_variant_puts_what_it_leaves_idle_back_to_default():
    user = InjectConfig().updated(gate="none", guard_anchors="file", interference_max_facts=10)
    v = user.variant(gate="from-subject", interference=False)
    assert v.guard_anchors == InjectConfig().guard_anchors and v.interference_max_facts == 64
    assert v.train.gate == "from-subject"
    with pytest.raises(IdleSetting):   # a variant's own idle choice is still an error
        InjectConfig().variant(gate="none", held_texts=8)
