"""End to end on the embedded default model: the CLI, report.json and the adapter."""
import pytest
import json
import subprocess
import sys

from beacon.config import InjectConfig
from beacon.pipeline import ASSETS, run

ROOT = ASSETS.parent


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "beacon", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.slow
def test_inject_cli_learns_facts_and_writes_report_and_adapter(tmp_path):
    facts = tmp_path / "facts.csv"
    lines = (ASSETS / "invented.csv").read_text().splitlines()
    facts.write_text("\n".join(lines[:3]) + "\n")  # header + 2 facts
    out = tmp_path / "out"
    # The default method on 2 facts (behind the gate the guard builds no sampled texts: --sampled-anchors is refused)
    r = _cli("inject", "--facts", str(facts), "--out", str(out), "--steps", "40", "--no-plots")
    assert r.returncode == 0, r.stderr[-2000:]
    idle = _cli("inject", "--facts", str(facts), "--out", str(tmp_path / "idle"), "--sampled-anchors", "8")
    assert idle.returncode == 2 and "sampled_anchors 8 would do nothing: with gate 'from-subject'" in idle.stderr
    assert not (tmp_path / "idle").exists()
    rep = json.loads((out / "report.json").read_text())
    s = rep["summary"]
    for k in ("facts_in", "facts_kept", "recall_before", "recall_after", "paraphrase_before", "paraphrase_after",
              "locality_before", "locality_after", "steps", "train_seconds", "device", "quantization", "model",
              "question_after", "chat_after", "locality_general_after", "neutral_nll_ratio", "training_wordings"):
        assert k in s, k
    assert s["facts_in"] == 2 and s["recall_before"] == 0.0 and s["recall_after"] == 1.0
    assert s["locality_after"] >= 0.8 * s["locality_before"]
    assert s["locality_general_before"] == 1.0 and s["probe_sets"] == {"probes": 31, "general": 53}
    assert 2 * 6 <= s["training_wordings"] <= 2 * 9 and 0.8 < s["neutral_nll_ratio"] < 1.5
    parts = s["step_seconds"]   # the default guards: every step has a task pass and a guard pass
    assert parts["task"] > 0 and parts["guard"] > 0 and sum(parts.values()) <= s["train_seconds"]
    cuda = __import__("torch").cuda.is_available()
    assert s["device"].startswith("cuda") == cuda and ("nf4" in s["quantization"]) == cuda
    for f in rep["facts"]:
        for k in ("id", "prompt", "target", "kept", "reason", "recall_before", "recall_after", "answer_before",
                  "answer_after", "semantic_distance", "weight", "category"):
            assert k in f, k
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert "recall" in r.stdout and "report.json" in r.stdout
    _default_run_exports(out, rep, tmp_path)


def _default_run_exports(run_dir, rep, tmp_path):
    """The default (gated) run exports: the gate folded into the weights, the merged folder and the q8_0 GGUF
    each reloaded with transformers and still answering the facts, and measured beside the adapter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from beacon.measure.evaluate import recall_table
    from beacon.report.export import export

    res = export(run_dir, merged=tmp_path / "merged", gguf=tmp_path / "model-q8_0.gguf")
    assert res["folded"] == 1.0 and set(res["numbers"]) == {"adapter", "merged", "gguf"}
    facts = [f for f in rep["facts"] if f["kept"]]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    rows = recall_table(model, AutoTokenizer.from_pretrained(tmp_path / "merged"), [f["prompt"] for f in facts],
                        [f["target"] for f in facts])
    assert all(r["recalled"] for r in rows), rows
    for kind in ("merged", "gguf"):   # the GGUF's numbers are read back from its file
        n = res["numbers"][kind]
        assert n["recall"] == 1.0, (kind, n)
        assert n["locality_probes"] >= 0.9 and n["locality_general"] >= 0.9, (kind, n)
        assert n["neutral_nll_ratio"] < 1.05, (kind, n)


def test_cli_bad_input_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,target\nThe CEO of Zentrix is,Marta\nThe capital of Sevrandia is,\n")
    r = _cli("inject", "--facts", str(bad), "--out", str(tmp_path / "o"), timeout=120)
    assert r.returncode == 2
    assert "bad.csv, line 3" in r.stderr and "target" in r.stderr and "Traceback" not in r.stderr
    r = _cli("inject", "--facts", str(tmp_path / "missing.json"), timeout=120)
    assert r.returncode == 2 and "missing.json" in r.stderr and "Traceback" not in r.stderr


def test_conflicts_are_dropped_with_reasons_and_keep_overrides(tiny_dir):
    from beacon.data.facts import load_facts
    from beacon.model.models import load_model

    facts = load_facts(ASSETS / "conflicts.csv")
    cfg = InjectConfig().updated(model=tiny_dir, steps=2, interference=False, plots=False, categorize_samples=0,
                                 keep=["c02"])
    rep = run(facts, load_facts(ASSETS / "probes.csv")[:3], cfg, model=load_model(tiny_dir))
    by = {f["id"]: f for f in rep.facts}
    assert len(rep.facts) == len(facts)
    assert by["c01"]["reason"].startswith("conflict: with c02") and not by["c01"]["kept"]
    assert by["c02"]["kept"] and by["c02"]["reason"] is None        # kept by hand
    assert "conflict" in by["c03"]["reason"] and "conflict" in by["c04"]["reason"]
    assert by["c08"]["reason"] == "merged: duplicate of c07" and by["c07"]["kept"]
    assert rep.summary["conflicts"] == 3 and rep.summary["duplicates_merged"] == 1
