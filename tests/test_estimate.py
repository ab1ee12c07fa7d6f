"""The run-time estimate (beacon/estimate.py): its shape, its calibration, and the seconds left during a run.
The machine's speed is given, never timed, so every number here is deterministic."""
import json

import pytest

from beacon.config import InjectConfig
from beacon.estimate import gpu_seconds
from beacon.estimate import (ORDER, REFERENCE_GFLOPS, REFERENCE_PARAMETERS, Estimate, duration, estimate,
                             model_parameters, remaining)

REF = dict(device="cpu", gflops=REFERENCE_GFLOPS, threads=2, model_cached=True)
# Stage seconds of default runs on the reference machine (2-core AMD EPYC, fp32, 2 threads, model in memory),
# two benchmarks of 10 and 30 invented facts (benchmarks/bench.py): 22 and 45 steps, then 22 and 39.
MEASURED = [{10: {"check": 3.5, "before": 21.6, "guard": 13.3, "rewordings": 7.5, "interference": 1.3,
                  "train": 118.3, "after": 13.7, "whole": 179.0, "steps": 22},
             30: {"check": 3.4, "before": 32.1, "guard": 28.6, "rewordings": 25.0, "interference": 5.1,
                  "train": 295.6, "after": 24.9, "whole": 420.0, "steps": 45}},
            {10: {"check": 3.0, "before": 16.8, "guard": 12.0, "rewordings": 9.4, "interference": 1.5,
                  "train": 110.0, "after": 11.5, "whole": 164.3, "steps": 22},
             30: {"check": 2.8, "before": 34.3, "guard": 30.7, "rewordings": 30.0, "interference": 5.1,
                  "train": 224.8, "after": 26.3, "whole": 354.0, "steps": 39}}]


def est(n, **settings):
    return estimate(n, InjectConfig().updated(**settings), **REF)


@pytest.mark.parametrize("n", [10, 30])
@pytest.mark.parametrize("measured", MEASURED)
def test_within_35_percent_of_the_measured_runs_stage_by_stage(n, measured):
    e = est(n, plots=False)   # the benchmark's whole run leaves the plots out
    for stage, seconds in measured[n].items():
        got = {"whole": e.seconds, "steps": e.steps}.get(stage, e.stages.get(stage))
        assert abs(got - seconds) <= 0.35 * seconds, (stage, got, seconds)


@pytest.mark.parametrize("layers, train, steps", [("15-29", 197.9, 50), ("10-29", 245.5, 49)])
def test_training_the_upper_layers_only_within_35_percent_of_the_measured_runs(layers, train, steps):
    # benchmarks/bench.py --sizes 30 --skip-cold --layers L, the reference machine, the same day as a default
    # run of 262.5 s in 42 steps: the layers below L are computed once, a step runs only L and up
    e, every = est(30, layers=layers, plots=False), est(30, plots=False)
    assert abs(e.stages["train"] - train) <= 0.35 * train and abs(e.steps - steps) <= 0.35 * steps
    assert e.stages["train"] < every.stages["train"] and e.steps > every.steps
    assert e.stages["before"] == every.stages["before"]
    assert est(30, layers="0-29").stages["train"] == every.stages["train"]   # from layer 0: every layer runs
    unknown = estimate(30, InjectConfig(model="nobody/no-such-model-anywhere", layers="15-29"), **REF)
    assert unknown.stages["train"] == est(30).stages["train"]   # its layer count unknown: no share to take


def test_grows_with_the_facts():
    runs = [est(n) for n in (0, 1, 2, 5, 10, 20, 30, 60, 100, 300)]
    assert all(a.seconds < b.seconds for a, b in zip(runs, runs[1:]))
    for stage in ("before", "guard", "train", "after"):
        assert all(a.stages[stage] <= b.stages[stage] for a, b in zip(runs, runs[1:])), stage


def test_the_whole_is_the_sum_of_its_stages():
    e = est(30)
    assert e.seconds == pytest.approx(sum(e.stages.values()), abs=0.1)
    assert set(e.stages) >= {"check", "load", "before", "guard", "rewordings", "interference", "train", "after"}


def test_rewordings_off_is_cheaper():
    on, off = est(30), est(30, rewordings=False)
    assert off.stages["rewordings"] == 0 < on.stages["rewordings"]
    assert off.stages["train"] < on.stages["train"] and off.seconds < on.seconds


def test_the_guard_off_is_cheaper():
    on, off = est(30), est(30, locality_guard=0.0)
    assert off.stages["guard"] == 0 < on.stages["guard"]
    assert off.stages["train"] < 0.7 * on.stages["train"]


def test_the_step_budget_caps_training():
    free, capped, twenty = est(30), est(30, steps=10), est(30, steps=20)
    assert capped.steps == 10 < twenty.steps == 20 < free.steps
    per_step = (free.stages["train"] - capped.stages["train"]) / (free.steps - 10)
    assert twenty.stages["train"] - capped.stages["train"] == pytest.approx(10 * per_step, rel=0.01)
    assert est(30, steps=1000).stages["train"] == free.stages["train"]   # early stop comes first
    assert est(30, early_stop=False, steps=200).steps == 200             # without it the budget is the run
    assert est(30, steps=0).stages["train"] == 0


def test_k_orders_train_k_times():
    one, three = est(10), est(10, orders=3)
    assert three.steps == pytest.approx(3 * one.steps)
    assert three.stages["train"] == pytest.approx(3 * one.stages["train"], rel=0.01)
    assert three.stages["before"] == one.stages["before"]
    assert est(1, orders=3).steps == est(1).steps   # one fact: no orders to merge


def test_a_slower_machine_or_a_bigger_model_takes_longer():
    base = est(10)
    half = estimate(10, InjectConfig(), **{**REF, "gflops": REFERENCE_GFLOPS / 2})
    assert half.stages["train"] == pytest.approx(2 * base.stages["train"], rel=0.01)
    big = estimate(10, InjectConfig(), **REF, parameters=10 * REFERENCE_PARAMETERS)
    assert big.stages["train"] == pytest.approx(10 * base.stages["train"], rel=0.01)
    assert big.stages["check"] == base.stages["check"]   # the check runs the sentence embedder only


def test_model_size_is_read_from_a_local_config_and_never_fetched(tmp_path):
    smollm2 = {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
               "num_key_value_heads": 3, "intermediate_size": 1536, "hidden_act": "silu", "vocab_size": 49152,
               "tie_word_embeddings": True}
    (tmp_path / "config.json").write_text(json.dumps(smollm2))
    assert model_parameters(str(tmp_path)) == pytest.approx(REFERENCE_PARAMETERS, rel=0.01)
    assert model_parameters("nobody/no-such-model-anywhere") is None
    unknown = estimate(10, InjectConfig(model="nobody/no-such-model-anywhere"), **REF)
    assert unknown.seconds == est(10).seconds   # the default model's size stands in


def test_measured_ahead_and_cached_models_skip_their_stages():
    fresh = estimate(10, InjectConfig(), **{**REF, "model_cached": False})
    assert fresh.stages["load"] > 0 and est(10).stages["load"] == 0
    checked = estimate(10, InjectConfig(), **REF, measured=True)
    assert checked.stages["check"] == checked.stages["before"] == checked.stages["load"] == 0


def test_remaining_falls_through_the_run_and_is_0_when_done():
    e = est(30, orders=2)
    seen, left = [], []
    for stage in ORDER:
        left.append(remaining(e, stage, done=seen))
        if stage == "train":   # steps counted across both orders, past the expected number too
            left += [remaining(e, "train", step=s, done=seen) for s in range(0, int(e.steps) + 20, 5)]
        else:   # long past the stage's estimate
            left.append(remaining(e, stage, elapsed=1e6, done=seen))
        seen.append(stage)
    assert left[0] == pytest.approx(e.seconds, abs=0.2)
    assert all(a >= b for a, b in zip(left, left[1:])), left
    assert left[-1] == 0 and left[-3] > 0   # past every estimate, never 0 before done


def test_remaining_counts_no_stage_twice():
    e = est(10)
    # The pipeline enters check again after before; the app's Check facts measures those stages ahead.
    again = remaining(e, "check", done=["check", "load", "before"])
    assert again == pytest.approx(remaining(e, "guard") + e.stages["check"], abs=0.15)
    with pytest.raises(ValueError, match="unknown stage"):
        remaining(e, "warp")


def test_the_words_of_an_estimate():
    assert Estimate(seconds=420, threads=2).text == "about 7 min on this machine (2 CPU threads)"
    assert Estimate(seconds=38, device="cuda").text == "about 40 s on this GPU"
    assert Estimate(seconds=60, threads=1).text == "about 60 s on this machine (1 CPU thread)"
    assert duration(3) == "10 s" and duration(5400) == "1.5 h"


def test_on_a_gpu_within_the_zerogpu_reservation():
    for n, orders in ((1, 1), (10, 1), (30, 3), (200, 1)):
        cfg = InjectConfig(orders=orders)
        e = estimate(n, cfg, device="cuda:0")
        assert e.device == "cuda" and e.text.endswith("on this GPU")
        assert e.seconds <= gpu_seconds(n, cfg.train.steps, orders)


def test_the_zerogpu_reservation_keeps_its_numbers():
    for n, steps, orders in ((0, 0, 1), (10, 100, 1), (100, 300, 1), (10, 300, 3), (10_000, 10_000, 1)):
        old = int(min(1200, 40 + 0.5 * n + orders * steps * (0.25 + 0.05 * max(1, n * 6 / 32))))
        assert gpu_seconds(n, steps, orders) == old


def test_the_cli_says_the_estimate_before_the_run(tmp_path, monkeypatch, capsys):
    import signal

    import beacon.pipeline
    from beacon.cli import main

    facts = tmp_path / "facts.csv"
    facts.write_text("id,prompt,target\na,The CEO of Zentrix is,Marta Ilves\nb,The mascot of Qualo is,Brin\n")

    def stop(*a, **k):
        raise ValueError("stopped before training")

    monkeypatch.setattr(beacon.pipeline, "run", stop)
    monkeypatch.setattr(signal, "signal", lambda *a: None)   # the test session keeps its own Ctrl-C
    assert main(["inject", "--facts", str(facts), "--out", str(tmp_path / "run")]) == 2
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("[estimate] about ") and "on this machine (" in first
    assert first.endswith(" for up to 2 facts")
