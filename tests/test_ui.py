"""The app's parts without a server: handlers called directly, rendering from hand-made values, the
one-job-at-a-time lock. No model is loaded: where a handler would run beacon.pipeline, a stand-in does."""
import json
from types import SimpleNamespace
import subprocess
import sys
import threading
import time
from pathlib import Path

import gradio as gr
import pandas as pd
import pytest

from beacon import pipeline
from beacon.data.facts import Fact
from beacon.model.models import DEFAULT_MODEL
from beacon.app import handlers, jobs, render, settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def sess(tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "RUNS", tmp_path / "runs")
    return handlers.new_session()


def table(rows):
    return pd.DataFrame([{**dict.fromkeys(render.FACT_COLUMNS, ""), **r} for r in rows], columns=render.FACT_COLUMNS)


# ---------------------------------------------------------------- the entry point

def test_import_app_builds_nothing_and_imports_nothing_heavy():
    code = ("import sys, app; print(sorted(m for m in ('gradio', 'torch', 'transformers', 'ui', 'core') "
            "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


# ---------------------------------------------------------------- 1 facts

def test_load_sample_returns_the_facts_table_and_keeps_their_metadata(sess):
    df, out, note = handlers.load_sample("Conflicts & duplicates (10)", sess)
    assert list(df.columns) == render.FACT_COLUMNS and len(df) == 10
    assert df.iloc[0]["id"] == "c01" and df.iloc[0]["prompt"] and df.iloc[0]["target"]
    assert note.startswith("Loaded sample **conflicts.csv**") and out is sess and set(sess["meta"]) == set(df["id"])


def test_upload_of_a_bad_file_names_the_line_and_keeps_the_file(sess, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,target\nThe CEO of Zentrix is,Marta\nThe capital of Sevrandia is,\n")
    with pytest.raises(gr.Error) as err:
        handlers.upload(str(bad), sess)
    assert "bad.csv, line 3: missing target" in err.value.message
    assert (settings.session_dir(sess) / "uploads" / "bad.csv").read_text() == bad.read_text()


def test_upload_of_a_good_file_fills_the_table(sess, tmp_path):
    good = tmp_path / "two.csv"
    good.write_text("id,prompt,target,paraphrases\na,The CEO of Zentrix is,Marta,Zentrix's CEO is|Zentrix is led by\n"
                    "b,The capital of Sevrandia is,Ostrel,\n")
    df, _, note = handlers.upload(str(good), sess)
    assert df["id"].tolist() == ["a", "b"] and df.iloc[0]["paraphrases"] == "Zentrix's CEO is | Zentrix is led by"
    assert note == "Loaded **two.csv**: 2 facts." and sess["upload"].endswith("uploads/two.csv")


def test_an_empty_table_is_refused_before_anything_runs(sess):
    with pytest.raises(gr.Error) as err:
        next(handlers.check(sess, table([]), "", "auto", True, "semantic"))
    assert "no facts found" in err.value.message
    assert jobs._MODEL_LOCK.acquire(blocking=False), "a refused check took the model slot"
    jobs._MODEL_LOCK.release()


# ---------------------------------------------------------------- settings

def test_layers_spec_passes_good_specs_and_names_bad_ones():
    assert settings.layers_spec("all", "5", DEFAULT_MODEL) == "all"
    assert settings.layers_spec("auto", "", DEFAULT_MODEL) == "auto"
    assert settings.layers_spec("custom", " 20-29 ", DEFAULT_MODEL) == "20-29"
    with pytest.raises(gr.Error) as err:
        settings.layers_spec("custom", "  ", DEFAULT_MODEL)
    assert err.value.message.startswith("Where to train: type the layers")
    with pytest.raises(gr.Error) as err:  # the default model has 30 layers
        settings.layers_spec("custom", "25-40", DEFAULT_MODEL)
    assert "Where to train" in err.value.message and "0..29" in err.value.message and "'25-40'" in err.value.message
    with pytest.raises(gr.Error) as err:
        settings.layers_spec("custom", "five", "")
    assert "got 'five'" in err.value.message


def test_make_config_routes_every_widget_to_its_setting():
    sess = {**handlers.new_session(), "keep": ["c01"], "drop": ["c05"]}
    cfg = settings.make_config(sess, "  some/model ", "none", 0, "uniform", steps=12.0, lr="0.01", rank="4",
                               guard=2, layers="auto", orders=2.0, merge="average", continue_from="",
                               rewordings=0, anchors=["file"], gate="none")
    got = {k: settings.value(cfg, k) for k in ("model", "quantization", "filter", "weighting", "steps", "lr", "rank",
                                                "locality_guard", "layers", "orders", "merge", "continue_from",
                                                "rewordings", "guard_anchors", "keep", "drop")}
    assert got == {"model": "some/model", "quantization": "none", "filter": False, "weighting": "uniform",
                   "steps": 12, "lr": 0.01, "rank": 4, "locality_guard": 2.0, "layers": "auto", "orders": 2,
                   "merge": "average", "continue_from": None, "rewordings": False, "guard_anchors": "file",
                   "keep": ["c01"], "drop": ["c05"]}
    assert type(got["steps"]) is int and type(got["orders"]) is int
    sess["keep"].append("c02")
    assert settings.value(cfg, "keep") == ["c01"], "the config shares the session's list"

    plain = settings.make_config(handlers.new_session(), "", "auto", True, "semantic")
    for name in ("steps", "lr", "rank", "locality_guard", "layers", "orders", "guard_anchors", "rewordings"):
        assert settings.value(plain, name) == settings.default(name), name
    assert settings.value(plain, "model") == DEFAULT_MODEL


def test_settings_that_would_do_nothing_are_greyed_and_not_read():
    sess = handlers.new_session()
    # behind the default gate, or with the guard off, the guard's sources are greyed and not read; one order
    # greys the merge rule
    for kw in (dict(guard=5), dict(guard=0, gate="none")):
        cfg = settings.make_config(sess, "", "auto", True, "semantic", anchors=["file"], orders=1, merge="average",
                                   **kw)
        assert settings.value(cfg, "guard_anchors") == settings.default("guard_anchors")
        assert settings.value(cfg, "merge") == settings.default("merge")
    sources, upload = settings.guard_widgets("from-subject", 10)
    assert sources.interactive is False and upload.interactive is False
    assert sources.value == settings.default("guard_anchors").split(",")
    assert settings.guard_widgets("none", 0)[0].interactive is False
    sources, upload = settings.guard_widgets("none", 10)
    assert sources.interactive is True and upload.interactive is True


def test_train_refuses_a_visitors_anchors_that_would_do_nothing(tmp_path):
    sess = handlers.new_session()
    (tmp_path / "a.txt").write_text("Cats like to sleep.\n", encoding="utf-8")
    handlers.upload_anchors(str(tmp_path / "a.txt"), sess)
    facts = table([{"id": "a", "prompt": "The CEO of A is", "target": "Ann"}])
    with pytest.raises(gr.Error) as err:
        next(handlers.train(sess, None, facts, "", "auto", True, "semantic", 9, 0.002, 8, 1.0, "all", "", 1,
                            "select", "", True, ["sampled"], "from-subject"))
    assert "a.txt" in err.value.message and "on every token" in err.value.message
    assert not list(settings.session_dir(sess).glob("*/config.json")), "refused before a run folder was made"


def test_make_config_wants_something_for_the_guard_to_protect():
    sess = handlers.new_session()
    with pytest.raises(gr.Error) as err:
        settings.make_config(sess, "", "auto", True, "semantic", guard=5, anchors=[], gate="none")
    assert "at least one thing for the guard to protect" in err.value.message
    # behind the gate the guard holds the relation anchors, whatever the sources say
    settings.make_config(sess, "", "auto", True, "semantic", guard=5, anchors=[], gate="from-subject")
    off = settings.make_config(sess, "", "auto", True, "semantic", guard=0, anchors=[])
    assert settings.value(off, "guard_anchors") == settings.default("guard_anchors")


def test_default_config_takes_the_env_overrides(monkeypatch):
    monkeypatch.setenv("BEACON_CONFIG", json.dumps({"steps": 7, "locality_guard": 0.0}))
    cfg = settings.default_config()
    assert (settings.value(cfg, "steps"), settings.value(cfg, "locality_guard")) == (7, 0.0)
    monkeypatch.setenv("BEACON_STEPS", "3")
    assert settings.value(settings.default_config(), "steps") == 3


# ---------------------------------------------------------------- rendering

def fake_rows(analysis, cfg):
    """What beacon.pipeline.review_rows returns, for three facts: one kept, one dropped by a check, one
    kept only because the person ticked it."""
    row = dict(category="new", semantic_distance=0.41234, weight=None, answer_before="Paris", recall_before=False)
    return [{**row, "id": "c01", "prompt": "The CEO of A is", "target": "Ann", "kept": True, "reason": "",
             "weight": 1.25},
            {**row, "id": "c02", "prompt": "The CEO of A is", "target": "Bob", "kept": False,
             "reason": "conflict: with c01"},
            {**row, "id": "c03", "prompt": "2 + 2 is", "target": "4", "kept": "c03" in cfg.keep, "reason": "",
             "category": "known", "answer_before": "4", "recall_before": True, "weight": 0.5}]


def test_review_frame_shows_each_decision_and_counts_them(monkeypatch):
    monkeypatch.setattr(pipeline, "review_rows", fake_rows)
    cfg = settings.make_config({**handlers.new_session(), "keep": ["c03"]}, "", "auto", True, "semantic")
    df, note = render.review_frame(SimpleNamespace(merged={"c04": "c01"}), cfg)
    rows = {r["id"]: r for r in df.to_dict("records")}
    assert list(df.columns) == render.REVIEW_COLUMNS
    assert rows["c01"]["status"] == "✓ kept" and rows["c01"]["weight"] == "1.25" and rows["c01"]["distance"] == 0.412
    assert rows["c02"]["status"] == "✗ conflict: with c01" and rows["c02"]["keep"] is False and rows["c02"]["weight"] == ""
    assert rows["c03"]["status"] == "✓ kept by you" and rows["c03"]["answer before"] == "✓ 4"
    assert note == ("**2 of 3 facts will be trained**, 1 dropped. Merged duplicates, not listed: c04 (same as c01).")


def test_status_html_marks_done_current_and_coming_stages():
    stages = render.CHECK_STAGES
    out = render.status_html(stages, ["check"], "before", 0.5, "<b>measuring</b>", elapsed=95)
    assert "✓ check" in out and "✓ load model" in out and "<b>▶ recall before, known / update / new, distance</b>" in out
    assert [k for k, _ in stages] == ["check", "load", "before"]      # categories and distances: the same pass
    assert "width:50%" in out and "&lt;b&gt;measuring&lt;/b&gt; · 1 min 35 s" in out
    done = render.status_html(stages, [], "done", 1, "ok")
    assert "▶" not in done and done.count("✓") == len(stages)
    # A run after Check facts: the check's stages are done; the rewordings show under the guard's label.
    run = render.status_html(render.STAGES, [k for k, _ in stages] + ["guard"], "rewordings", 0.3, "rewriting")
    assert "✓ recall before" in run and "<b>▶ guard + rewordings</b>" in run and "○ interference" in run
    # with Beacon's estimate: the time spent and the time left
    timed = render.status_html(render.STAGES, [], "train", 0.5, "step 3", 80, "", 200)
    assert "step 3 · 80 s elapsed · about 3 min left" in timed
    assert "left" not in render.status_html(render.STAGES, [], "done", 1, "Done", 80, "", 0)


def report(**summary):
    """A small report.json: two trained facts (one recalled after), one dropped; layers 20-29 of 30."""
    s = dict(facts_in=4, facts_kept=2, dropped=1, recall_before=0.0, recall_after=0.5, paraphrase_before=0.0,
             paraphrase_after=0.25, question_before=None, question_after=0.5, chat_before=0.0, chat_after=0.5,
             locality_before=0.9, locality_after=0.7, locality_general_before=None, neutral_nll_ratio=1.042,
             steps=12, stopped="budget", train_seconds=12.3, total_seconds=150, model=DEFAULT_MODEL, device="cpu",
             quantization="none", peak_memory_mb=812.4)
    facts = [{"id": "d", "prompt": "The CEO of D is", "target": "Dee", "kept": False, "reason": "duplicate",
              "recall_before": False, "recall_after": False},
             {"id": "a", "prompt": "The CEO of A is", "target": "Ann", "kept": True, "recall_before": False,
              "recall_after": True, "answer_after": "Ann",
              "paraphrases": [{"prompt": "A's CEO is", "recalled_after": True},
                              {"prompt": "A is run by", "recalled_after": False}]},
             {"id": "b", "prompt": "The capital of B is", "target": "Bo", "kept": True, "recall_before": False,
              "recall_after": False, "answer_after": "Paris"}]
    return {"summary": {**s, **summary}, "facts": facts, "config": {"model": DEFAULT_MODEL},
            "chosen_layers": list(range(20, 30)), "layers": None,
            "plots": ["plots/recall.png", "plots/drift.png", "plots/extra.png"],
            "training": {"distance_trajectories": {"a": [0.5]}}}


def test_results_view_leads_with_every_answer_then_summarises(tmp_path):
    run_dir = tmp_path / "runs" / "s1" / "20250101-120000"
    rep = report()
    rep["facts"][2].update(crossed_after="a", chat_after=False, chat_answer_after="Ann", chat_crossed_after="a",
                           answer_before="Lyon", subject="B", relation="capital")
    rep["facts"][1].update(subject="A", question_after=True, question_answer_after="Ann.",
                           recall_before=False, answer_before="Bob", crossed_before="b")
    headline, styled, summary, gallery = render.results_view(rep, run_dir, tmp_path, n_layers=30)
    assert headline.startswith("### Recall 0% → 50% on 2 trained facts")
    assert "1 of 2 trained facts not recalled" in headline and "2 answers after training gave another fact's" in headline
    assert "| **Paraphrases** never trained on (generalisation) | 0% | 25% |" in summary
    assert "| **Question** form (\"Question: … what?\") | – | 50% |" in summary
    assert "| **Fluency**: NLL per token on neutral text, tuned / base | 1.00 | 1.042 |" in summary
    assert "general knowledge" not in summary  # not measured in this report
    assert "⚠️ The tuned model misses 20% of the unrelated probe facts" in summary
    assert "- 12 steps (used the whole step budget); training 12 s, whole run 2 min 30 s" in summary
    assert "peak memory 812 MB" in summary and "- 4 facts in, 2 trained, 1 dropped" in summary
    assert "- run folder: `runs/s1/20250101-120000`" in summary
    assert "- **Layers**: trained **20–29** (10 of 30), your list" in summary
    assert "Stopped by you" not in summary

    df = styled.data
    assert df["fact"].tolist() == ["A", "B", "The CEO of D is"]  # trained facts first, named by subject
    a, b, d = (df.iloc[i] for i in range(3))
    assert a["answer after"] == "✓ Ann" and a["question form"] == "✓ Ann." and a["chat form"] == "–"
    # a crossed wire names the fact whose answer was given, before and after
    assert a["answer before"] == f"✗ Bob  {render.CROSSED}: B"
    assert b["answer after"] == f"✗ Paris  {render.CROSSED}: A" and b["chat form"] == f"✗ Ann  {render.CROSSED}: A"
    assert a["paraphrases never trained on"] == "1/2 · ✗ A is run by → (nothing)"
    assert d["trained"] == "no: duplicate" and b["paraphrases never trained on"] == "– (none in the file)"
    colours = {i: dict(styled._compute().ctx[(i, 0)])["background-color"] for i in range(3)}
    assert colours == {0: "#d3f0dc", 1: "#f9d6da", 2: "#f1f1f1"}  # recalled, missed, not trained
    rep["facts"][1]["question_crossed_after"] = "b"   # recalled, but another fact's answer in one form: amber
    assert dict(render.results_view(rep, run_dir)[1]._compute().ctx[(0, 0)])["background-color"] == "#fde8c8"

    # one distance per fact: not tracked, so no drift plot; unknown plots keep their file name as caption
    assert gallery == [(str(run_dir / "plots/recall.png"), render.PLOT_CAPTIONS["recall"]),
                       (str(run_dir / "plots/extra.png"), "extra")]
    assert render.ask_default(report()) == "A's CEO is"
    # no paraphrases measured: the summary says why
    none = render.results_view(report(paraphrase_before=None, paraphrase_after=None), run_dir)[2]
    assert "none measured: your facts came without paraphrases" in none


def test_a_stopped_run_says_so():
    rep = report(stopped="cancelled", locality_after=0.88)
    _, _, summary, _ = render.results_view(rep, Path("/elsewhere/run"), Path("/tmp"))
    assert "**Stopped by you**: the adapter holds what was learned" in summary and "⚠️" not in summary
    assert "- run folder: `/elsewhere/run`" in summary and "(10 of" not in summary  # no layer count given
    assert render.done_message(rep) == ("Stopped by you after 12 steps: recall 0% → 50%, locality 90% → 88%. "
                                        "Details on 4 · Results")


def test_setup_md_lists_merged_orders_and_earlier_facts():
    rep = {**report(), "chosen_layers": None,
           "merge": {"orders": 2, "how": "select", "svd_rank": 16, "svd_relative_error": 0.0123,
                     "runs": [{"run": 0, "steps": 5, "recall": 1.0, "early_recall": 1.0, "late_recall": 0.5},
                              {"run": 1, "steps": 6, "recall": 0.5, "early_recall": 0.0, "late_recall": 1.0}],
                     "merged": {"recall": 0.75, "by_run_order": [{"early_recall": 1.0, "late_recall": 0.5}]}},
           "earlier_facts": {"from": "/runs/s/20250101-100000", "ids": ["x", "y"], "recall_before": 1.0,
                             "recall_after": 0.5, "lost": ["y"]}}
    text = "\n".join(render.setup_md(rep))
    assert "#### 2 data orders, merged by *select*" in text
    assert "| run 0 | 5 | 100% | 100% | 50% | 100% | 50% |" in text
    assert "| run 1 | 6 | 50% | 0% | 100% | – | – |" in text  # no merged split for that order
    assert "| **merged** | | **75%** |" in text and "rank 16 (relative error of that truncation: 1.2%)" in text
    assert "#### Earlier facts (continued from run `20250101-100000`)" in text
    assert "recall **100% → 50%**" in text and "Lost 1: `y`." in text and "overwrote some" in text


def test_setup_md_says_what_the_guard_held_behind_the_gate():
    line = lambda guard, active, anchors: render.setup_md(
        {**report(), "summary": {"gate": "from-subject", "locality_guard": guard, "guard_active": active},
         "guard": {"anchors": len(anchors), "all": anchors}})[0]
    anchors = ["The currency of Italy is the | euro", "The capital of Japan is | Tokyo",
               "The capital of Italy is Milan. |> Milan is a city in the north.",
               "Here is a short paragraph about Italy.\n\n |> Italy is a country in Europe."]
    held = line(10.0, True, anchors)
    assert "and every token after them" in held and "the subjects it knows" in held and "(2 prompts)" in held
    assert "about each subject (2 texts)" in held
    assert "knew none of these subjects" in line(10.0, False, [])       # held texts off, invented names only
    assert line(0.0, False, []).endswith("; no locality guard ran")


def plotted(plot) -> pd.DataFrame:
    return pd.DataFrame(plot.value["data"], columns=plot.value["columns"])


def test_curves_start_at_two_steps_and_show_the_guard_only_when_on():
    step = lambda i, guard: {"step": i, "loss": 1.0 / i + guard, "task": 1.0 / i, "recall": i / 10}
    assert render.curves([step(1, 0)]) == (None, None)
    loss, recall = render.curves([step(i, 0) for i in (1, 2, 3)])
    assert loss.x_lim == [1, 10] and set(plotted(loss)["series"]) == {"facts"}
    assert plotted(recall)["recall"].tolist() == [0.1, 0.2, 0.3] and plotted(recall)["step"].tolist() == [1, 2, 3]
    loss, _ = render.curves([step(i, 0.5) for i in range(1, 13)])
    assert loss.x_lim == [1, 12]
    assert set(plotted(loss)["series"]) == {"total, with the locality guard", "facts only"}


def test_span_and_train_stages():
    assert render.span([22, 20, 21, 23]) == "20–23" and render.span([3, 7]) == "3, 7" and render.span([1, 2]) == "1, 2"
    sess = handlers.new_session()
    auto = settings.make_config(sess, "", "auto", True, "semantic", layers="auto", orders=3)
    labels = [label for _, label in render.train_stages(auto)]
    assert labels[labels.index("choose layers") + 1] == "guard + rewordings" and "train 3 orders + merge" in labels
    plain = [label for _, label in render.train_stages(settings.make_config(sess, "", "auto", True, "semantic"))]
    assert plain == [label for _, label in render.STAGES]


# ---------------------------------------------------------------- check and train, with core stood in for

def test_check_waits_for_the_slot_then_streams_and_reviews(sess, monkeypatch):
    seen = {}

    def analyze(facts, probes, cfg, model, progress):
        seen["ids"], seen["model"] = [f.id for f in facts], model
        progress({"stage": "load", "message": "loading the model"})
        return SimpleNamespace(merged={})

    monkeypatch.setattr(pipeline, "load", lambda cfg: ("model", "tok", "info"))
    monkeypatch.setattr(pipeline, "analyze", analyze)
    monkeypatch.setattr(pipeline, "review_rows", fake_rows)
    facts = table([{"id": "c01", "prompt": "The CEO of A is", "target": "Ann"},
                   {"id": "c02", "prompt": "The CEO of B is", "target": "Bob"}])
    assert jobs._MODEL_LOCK.acquire(timeout=5)  # another visitor's job
    gen = handlers.check(sess, facts, "", "auto", True, "semantic")
    try:
        first = next(gen)
    finally:
        jobs._MODEL_LOCK.release()
    assert set(first) == {"check_status", "state"} and "waiting for another visitor" in first["check_status"]
    assert "1 job ahead of yours" in first["check_status"]
    updates = list(gen)
    assert all(set(u) <= set(handlers.CHECK_OUTPUTS) for u in updates)
    last = updates[-1]
    assert seen["ids"] == ["c01", "c02"] and last["analysis_state"] == SimpleNamespace(merged={})
    # the checked model is held for the Train that follows, which takes it (once)
    cfg = settings.make_config(sess, "", "auto", True, "semantic")
    assert seen["model"] == ("model", "tok", "info") and handlers.take_model(cfg) == seen["model"]
    assert handlers.take_model(cfg) is None
    assert "**1 of 3 facts will be trained**" in last["review_note"] and len(last["review_table"]) == 3  # keep reset
    assert "Checked 2 facts: see 2 · Review" in last["check_status"] and last["state"] is sess
    assert jobs._MODEL_LOCK.acquire(timeout=5), "the check kept the model slot"
    jobs._MODEL_LOCK.release()


def test_train_writes_the_run_folder_first_streams_steps_and_shows_the_results(sess, monkeypatch):
    def run(facts, probes, cfg, out_dir, progress, analysis, model, should_stop):
        assert (out_dir / "facts.json").exists() and (out_dir / "config.json").exists()  # saved before the run
        progress({"stage": "load", "message": "loading"})
        for i in (1, 2, 3):
            progress({"stage": "train", "message": f"step {i}", "step": i, "loss": 1.0 / i, "task": 1.0 / i,
                      "recall": i / 3})
        time.sleep(0.7)  # the handler shows what has come every 0.5 s: this batch ends in training
        progress({"stage": "after", "message": "measuring"})
        rep = {**report(), "config": {"model": settings.value(cfg, "model"), "steps": settings.value(cfg, "steps")}}
        (out_dir / "adapter").mkdir()
        (out_dir / "adapter" / "adapter_config.json").write_text("{}")
        (out_dir / "report.json").write_text(json.dumps(rep))
        return SimpleNamespace(to_dict=lambda: rep)

    monkeypatch.setattr(pipeline, "run", run)
    facts = table([{"id": "a", "prompt": "The CEO of A is", "target": "Ann"}])
    updates = list(handlers.train(sess, None, facts, "", "auto", True, "semantic", 9, 0.002, 8, 0.0, "all", "",
                                  1, "select", "", True, ["neighbours"]))
    assert all(set(u) <= set(handlers.TRAIN_OUTPUTS) for u in updates)
    statuses = " ".join(u.get("train_status", "") for u in updates)
    assert "<b>▶ train</b>" in statuses and "step 3" in statuses
    last = updates[-1]
    assert "Recall 0% → 50% on 2 trained facts" in last["headline_md"] and "Done, 12 steps" in last["train_status"]
    assert last["ask_prompt"] == "A's CEO is" and plotted(last["loss_plot"])["step"].tolist() == [1, 2, 3]
    assert {Path(f).name for f in last["files_out"]} == {"adapter.zip", "report.json", "facts.json"}
    assert json.loads(Path(sess["run_dir"], "config.json").read_text())["train"]["steps"] == 9
    assert [v for _, v in last["earlier_in"].choices] == ["", Path(sess["run_dir"]).name]
    assert jobs.ACTIVE == {} and jobs._MODEL_LOCK.acquire(timeout=5)
    jobs._MODEL_LOCK.release()


def test_stop_sets_the_flag_and_writes_the_stop_file(sess, tmp_path):
    assert handlers.stop_run(sess) == gr.skip()  # nothing running
    sess.update(stop=threading.Event(), run_dir=str(tmp_path))
    handlers.stop_run(sess)
    assert sess["stop"].is_set() and (tmp_path / "STOP").exists()


# ---------------------------------------------------------------- one model job at a time

def drain(gen):
    return [event for batch in gen for event in batch]


def test_stream_delivers_progress_in_order_then_the_result_and_frees_the_slot():
    assert jobs._MODEL_LOCK.acquire(timeout=5)  # as wait_for_slot leaves it

    def target(progress):
        for i in range(5):
            progress({"i": i})
        return "result"

    events = drain(jobs.stream(target, "test-ok"))
    assert events == [("progress", {"i": i}) for i in range(5)] + [("done", "result")]
    assert jobs._MODEL_LOCK.acquire(timeout=5), "stream kept the lock after a job that succeeded"
    jobs._MODEL_LOCK.release()


def test_stream_reports_an_exception_and_frees_the_slot():
    assert jobs._MODEL_LOCK.acquire(timeout=5)
    boom = RuntimeError("boom")

    def target(progress):
        progress({"i": 0})
        raise boom

    events = drain(jobs.stream(target, "test-error"))
    assert events == [("progress", {"i": 0}), ("error", boom)]
    assert jobs._MODEL_LOCK.acquire(timeout=5), "stream kept the lock after a job that failed"
    jobs._MODEL_LOCK.release()


def test_wait_for_slot_yields_while_held_and_gives_up_when_stopped():
    free = jobs.wait_for_slot()
    with pytest.raises(StopIteration) as done:
        next(free)
    assert done.value.value is True and jobs._MODEL_LOCK.locked()  # a free slot: taken at once, no waiting
    stop = threading.Event()
    gen = jobs.wait_for_slot(stop)
    t0 = time.perf_counter()
    assert next(gen) == 1 and time.perf_counter() - t0 >= 0.4  # held: it waits, then yields the jobs ahead
    stop.set()
    with pytest.raises(StopIteration) as done:
        next(gen)
    assert done.value.value is False
    assert jobs._MODEL_LOCK.locked(), "a stopped wait must not release someone else's lock"
    jobs._MODEL_LOCK.release()


def test_a_stop_as_the_slot_comes_free_never_leaves_the_lock_held():
    """A lock leak once found: Stop in the last moments of another visitor's job. Whatever the
    interleaving, the wait's answer and the lock agree, and a stopped wait holds nothing."""
    for trial in range(30):
        assert jobs._MODEL_LOCK.acquire(timeout=5)        # another visitor's job
        stop = threading.Event()

        def finish(delay=0.45 + trial * 0.004):
            time.sleep(delay)
            jobs._MODEL_LOCK.release()                     # that job ends...
            stop.set()                                     # ...as this visitor presses Stop
        threading.Thread(target=finish).start()
        held = yield_all(jobs.wait_for_slot(stop))
        time.sleep(0.05)
        if held:
            assert jobs._MODEL_LOCK.locked()
            jobs._MODEL_LOCK.release()
        assert not jobs._MODEL_LOCK.locked(), f"trial {trial}: the lock was left held"
    # already stopped when the slot is free: not taken
    stop = threading.Event()
    stop.set()
    assert yield_all(jobs.wait_for_slot(stop)) is False and not jobs._MODEL_LOCK.locked()


def yield_all(gen):
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value


def test_train_stopped_while_waiting_returns_without_the_lock(sess, monkeypatch):
    monkeypatch.setattr(pipeline, "run", lambda *a, **k: pytest.fail("a stopped train must not run"))
    facts = table([{"id": "a", "prompt": "The CEO of A is", "target": "Ann"}])
    assert jobs._MODEL_LOCK.acquire(timeout=5)
    gen = handlers.train(sess, None, facts, "", "auto", True, "semantic", 9, 0.002, 8, 0.0, "all", "",
                         1, "select", "", True, ["neighbours"])
    next(gen)                               # the run folder is made; then it waits
    assert "waiting" in next(gen)["train_status"]
    handlers.stop_run(sess)
    jobs._MODEL_LOCK.release()              # the other job ends just then
    rest = list(gen)
    assert "stopped before it started" in rest[-1]["train_status"]
    assert not jobs._MODEL_LOCK.locked() and jobs.ACTIVE == {}


def test_two_jobs_never_overlap():
    running, peak, ran, guard = [0], [0], [], threading.Lock()

    def target(name):
        def work(progress):
            with guard:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.3)
            with guard:
                running[0] -= 1
            ran.append(name)
            return name
        return work

    def visitor(name):
        for _ in jobs.wait_for_slot():
            pass
        drain(jobs.stream(target(name), name))

    threads = [threading.Thread(target=visitor, args=(f"job{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(ran) == ["job0", "job1", "job2"] and peak[0] == 1
    assert jobs._MODEL_LOCK.acquire(timeout=5)
    jobs._MODEL_LOCK.release()


# ---------------------------------------------------------------- 4 results: export

def test_export_gguf_waits_for_the_slot_writes_into_the_run_and_offers_the_file(sess, monkeypatch, tmp_path):
    from beacon.report import export

    run_dir = tmp_path / "run"
    (run_dir / "adapter").mkdir(parents=True)
    (run_dir / "adapter" / "adapter_config.json").write_text("{}")
    (run_dir / "report.json").write_text("{}")
    seen = {}

    def fake_export(run, merged=None, gguf=None, gguf_type="q8_0", progress=None):
        seen.update(run=run, merged=merged, gguf=gguf, gguf_type=gguf_type)
        progress({"stage": "merge", "message": "merging the adapter"})
        Path(gguf).parent.mkdir(parents=True, exist_ok=True)
        Path(gguf).write_bytes(b"GGUF")
        return {"seconds": 7.4, "gguf": {"path": str(gguf), "type": gguf_type, "mb": 144.6, "seconds": 2.0},
                "folded": 1.0, "numbers": {"adapter": {"recall": 1.0, "locality_general": 1.0},
                                           "gguf": {"recall": 0.96, "locality_general": 0.92}}}

    monkeypatch.setattr(export, "export", fake_export)
    with pytest.raises(gr.Error, match="Train first"):
        next(handlers.export_gguf(sess))
    sess.update(report={"config": {}}, run_dir=str(run_dir))
    assert jobs._MODEL_LOCK.acquire(timeout=5)  # another visitor's job
    gen = handlers.export_gguf(sess)
    try:
        first = next(gen)
    finally:
        jobs._MODEL_LOCK.release()
    assert first == {"export_status": "Waiting for another visitor's job to finish: 1 job ahead of yours…"}
    updates = list(gen)
    assert all(set(u) <= set(handlers.EXPORT_OUTPUTS) for u in updates)
    assert seen == {"run": run_dir, "merged": None, "gguf": run_dir / "export" / "model-q8_0.gguf", "gguf_type": "q8_0"}
    assert any("merging the adapter" in u.get("export_status", "") for u in updates)
    last = updates[-1]
    assert "**model-q8_0.gguf** (145 MB, q8_0, the subject gate folded into the weights (λ = 1)) in 7 s" in last["export_status"]
    # what the file keeps, beside the adapter, a row per measure
    assert "| | the run's adapter | GGUF file |" in last["export_status"]
    assert "| recall | 100% | 96% |" in last["export_status"] and "| locality general | 100% | 92% |" in last["export_status"]
    assert {Path(f).name for f in last["files_out"]} == {"adapter.zip", "report.json", "model-q8_0.gguf"}
    assert jobs._MODEL_LOCK.acquire(timeout=5), "the export kept the model slot"
    jobs._MODEL_LOCK.release()


def test_export_gguf_says_why_it_failed_and_frees_the_slot(sess, monkeypatch, tmp_path):
    from beacon.report import export

    def fake_export(*a, **kw):
        raise ValueError("GGUF export supports the Llama architecture; this model is 'gpt2'")

    monkeypatch.setattr(export, "export", fake_export)
    sess.update(report={"config": {}}, run_dir=str(tmp_path))
    with pytest.raises(gr.Error, match="Export failed: GGUF export supports the Llama architecture; this model is 'gpt2'"):
        list(handlers.export_gguf(sess))
    assert jobs._MODEL_LOCK.acquire(timeout=5), "a failed export kept the model slot"
    jobs._MODEL_LOCK.release()


def test_ask_answers_plain_and_chat_with_the_targets_logprob(tiny_dir, tmp_path):
    """beacon/ask.py on the tiny model: a LoRA with non-zero weights, saved as a run's adapter."""
    import torch
    from transformers import AutoModelForCausalLM

    from beacon import ask as core_ask
    from beacon.config import TrainConfig
    from beacon.method.train import attach_lora, save_adapter

    model = attach_lora(AutoModelForCausalLM.from_pretrained(tiny_dir), TrainConfig(rank=2), quantized=False)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)   # a fresh LoRA is the identity: this one changes the model
    save_adapter(model, tmp_path / "adapter")
    out = core_ask.ask("The CEO of Zentrix Robotics is", tmp_path / "adapter", tiny_dir, "none", max_new_tokens=4,
                       target="Marta Ilves")
    assert all(isinstance(out[k], str) for k in ("base", "tuned", "base_chat", "tuned_chat"))
    lps = [out[k] for k in ("base_logprob", "tuned_logprob", "base_chat_logprob", "tuned_chat_logprob")]
    assert all(isinstance(x, float) and x < 0 for x in lps) and out["base_logprob"] != out["tuned_logprob"]
    plain = core_ask.ask("The CEO of Zentrix Robotics is", tmp_path / "adapter", tiny_dir, "none", max_new_tokens=4)
    assert plain["base"] == out["base"] and plain["tuned_logprob"] is None and plain["base_chat_logprob"] is None
    with pytest.raises(ValueError, match="empty"):
        core_ask.ask("  ", tmp_path / "adapter", tiny_dir, "none")
    core_ask._tuned.cache_clear()


# ---------------------------------------------------------------- the visitor's probes and anchors, Ask's forms

def test_probe_and_anchor_uploads_are_checked_kept_and_cleared(sess, tmp_path, monkeypatch):
    good = tmp_path / "mine.csv"
    good.write_text("id,prompt,target\np1,The capital of Peru is,Lima\n", encoding="utf-8")
    sess, note = handlers.upload_probes(str(good), sess)
    assert [p.id for p in sess["probes"]] == ["p1"] and "mine.csv" in note and "1 fact," in note
    bad = tmp_path / "bad.csv"
    bad.write_text("id,prompt,target\np1,The capital of Peru is,\n", encoding="utf-8")
    with pytest.raises(gr.Error, match="bad.csv.*line 2"):
        handlers.upload_probes(str(bad), sess)
    anchors = tmp_path / "anchors.txt"
    anchors.write_text("Cats like to sleep.\nThe capital of Chile is | Santiago.\n", encoding="utf-8")
    sess, note = handlers.upload_anchors(str(anchors), sess)
    assert Path(sess["anchors_file"]).read_text() == anchors.read_text() and "(2, for the guard" in note
    broken = tmp_path / "broken.txt"
    broken.write_bytes(b"fine\n\xff\n")
    with pytest.raises(gr.Error, match="broken.txt, line 2"):
        handlers.upload_anchors(str(broken), sess)
    monkeypatch.setattr(settings, "MAX_UPLOAD_MB", 1e-6)   # refused before any copy
    with pytest.raises(gr.Error, match="over the upload limit"):
        handlers.upload_anchors(str(anchors), sess)
    sess, note = handlers.upload_probes(None, sess)
    assert sess["probes"] is None and "mine.csv" not in note and "anchors.txt" in note


def test_train_measures_the_visitors_probes_and_passes_their_anchors(sess, tmp_path, monkeypatch):
    seen = {}

    def run(facts, probes, cfg, out_dir, progress, analysis, model, should_stop):
        seen.update(probes=probes, cfg=cfg, analysis=analysis)
        progress({"stage": "check", "message": "1 of 1 facts kept"})
        # The handler reads events in batches every ~0.5 s: a run done at once can land in the progress event's
        # batch, and that status is then never shown (the last assertion failed so once in CI, under load).
        time.sleep(1.0)
        rep = {**report(), "config": {"model": settings.value(cfg, "model")}}
        rep["summary"] = {**rep["summary"], "locality_yours_before": 1.0, "locality_yours_after": 0.5}
        (out_dir / "report.json").write_text(json.dumps(rep))
        return SimpleNamespace(to_dict=lambda: rep)

    monkeypatch.setattr(pipeline, "run", run)
    monkeypatch.setattr(pipeline, "default_probe_sets", lambda: {"probes": [Fact("q", "The capital of Chile is",
                                                                                 "Santiago")]})
    (tmp_path / "mine.csv").write_text("id,prompt,target\np1,The capital of Peru is,Lima\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("Cats like to sleep.\n", encoding="utf-8")
    handlers.upload_probes(str(tmp_path / "mine.csv"), sess)
    handlers.upload_anchors(str(tmp_path / "a.txt"), sess)
    checked = SimpleNamespace(probes={"probes": []})   # a Check made before the probes came: measured again
    facts = table([{"id": "a", "prompt": "The CEO of A is", "target": "Ann"}])
    last = list(handlers.train(sess, checked, facts, "", "auto", True, "semantic", 9, 0.002, 8, 1.0, "all", "",
                               1, "select", "", True, ["sampled"], "none"))[-1]
    assert list(seen["probes"]) == ["probes", "yours"] and [p.id for p in seen["probes"]["yours"]] == ["p1"]
    assert seen["analysis"] is None
    assert seen["cfg"].anchors_file == str(Path(sess["run_dir"]) / "anchors.txt")
    assert Path(seen["cfg"].anchors_file).read_text() == "Cats like to sleep.\n"
    assert json.loads(Path(sess["run_dir"], "config.json").read_text())["anchors_file"] == seen["cfg"].anchors_file
    assert "| **Locality**: your probe set | 100% | 50% |" in last["summary_md"] and last["ask_target"]
    # a Check that measured these same probes is reused
    again = SimpleNamespace(probes={"probes": [], "yours": list(sess["probes"])})
    updates = list(handlers.train(sess, again, facts, "", "auto", True, "semantic", 9, 0.002, 8, 1.0, "all", "",
                                  1, "select", "", True, ["sampled"], "none"))
    assert seen["analysis"] is again
    # while the run builds its guard, the stages Check facts measured show as done
    kept = [u["train_status"] for u in updates if "1 of 1 facts kept" in u.get("train_status", "")]
    assert kept and "✓ load model" in kept[0] and "✓ recall before" in kept[0] and "○ interference" in kept[0]


def test_ask_shows_plain_and_chat_answers_and_the_targets_logprobs(sess, monkeypatch):
    got = {}

    def ask(prompt, adapter, model, quant, max_new, target):
        got.update(prompt=prompt, target=target)
        return {"base": "b", "tuned": "t", "base_chat": "bc", "tuned_chat": None, "base_logprob": -5.0,
                "tuned_logprob": -0.25, "base_chat_logprob": -6.0, "tuned_chat_logprob": None}

    monkeypatch.setattr(handlers, "ask", ask)
    sess.update(report={"config": {"model": "m", "quantization": "auto"}}, run_dir="/x")
    base, tuned, base_chat, tuned_chat, base_score, tuned_score = list(
        handlers.ask_model("The CEO of A is", sess, "Ann"))[-1]
    assert (base, tuned, base_chat) == ("b", "t", "bc") and "no chat template" in tuned_chat
    assert base_score == "log p(target): plain **-5.00** · chat **-6.00**" and "plain **-0.25**" in tuned_score
    assert got == {"prompt": "The CEO of A is", "target": "Ann"}
    assert "Type a target" in list(handlers.ask_model("The CEO of A is", sess, ""))[-1][4]
    assert render.ask_target(report()) == "Ann" and render.ask_default(report()) == "A's CEO is"


def chart_report():
    r = report()
    for f, (d, lb, la) in zip(r["facts"], [(None, None, None), (0.4, -9.0, -1.0), (0.7, -8.0, -6.5)]):
        f.update(semantic_distance=d, logprob_before=lb, logprob_after=la)
    r["interference"] = {"ids": ["a", "b"], "cosine": [[1.0, -0.25], [0.5, 1.0]],
                         "step_effect": [[0.1, 0.02], [0.03, 0.2]], "order": [0, 1]}
    return r


def test_chart_frames_name_each_fact_and_hold_one_row_per_cell():
    r = chart_report()
    r["facts"][1]["subject"] = "Acme Corporation of Greater Metropolitan Area"
    inter, colours = render.interference_frame(r)
    assert len(inter) == 2 and set(render.INTERFERENCE_TOOLTIP) <= set(inter.columns)   # off-diagonal cells only
    cell = inter[inter.fact_j == "The capital of B is"].iloc[0]
    assert (cell.fact_i, cell["prompt trained"], cell["prompt moved"], cell.value) == (
        "Acme Corporation of Gre…", "The CEO of A is", "The capital of B is", -0.25)
    # cosine: a scale from -1 to 1 in five labelled bins, symmetric about 0
    assert list(colours) == ["≤ −0.50", "−0.50 to −0.10", "−0.10 to 0.10", "0.10 to 0.50", "≥ 0.50"]
    assert inter.range.tolist() == ["−0.50 to −0.10", "0.10 to 0.50"]   # -0.25 and 0.5 (an edge belongs below)
    step, step_colours = render.interference_frame(r, "step_effect")   # scaled to the largest cross term
    assert step.set_index("fact_i").loc["The capital of B is", "value"] == 0.03
    assert list(step_colours)[-1] == "≥ 0.015" and step.range.tolist() == ["≥ 0.015", "≥ 0.015"]
    dist = render.distance_frame(r)   # trained facts only
    assert dist.fact.tolist() == ["Acme Corporation of Gre…", "The capital of B is"]
    assert dist.gain.tolist() == [8.0, 1.5]
    assert dist.outcome.tolist() == ["learned", "not learned"] and dist.prompt[0] == "The CEO of A is"
    rec = render.recall_frame(r)     # the dropped fact has no log-probs: left out
    assert len(rec) == 2 and rec.before.tolist() == [-9.0, -8.0] and rec.recall_after[0] == "yes"
    inter_c, dist_c, rec_c = render.charts(r)
    assert inter_c.visible and dist_c.visible and rec_c.visible
    assert render.charts({"facts": []})[0].visible is False   # no interference measured: hidden


def test_fact_labels_are_short_subjects_told_apart():
    from beacon.report.plots import fact_labels

    facts = [{"id": "1", "subject": "Zentrix Robotics", "relation": "CEO", "prompt": "p"},
             {"id": "2", "subject": "Zentrix Robotics", "relation": "founded", "prompt": "p"},
             {"id": "3", "subject": None, "prompt": "The national bird of Lumeria is"},
             {"id": "4", "subject": "Ilves", "prompt": "p"}, {"id": "5", "subject": "Ilves", "prompt": "p"}]
    assert fact_labels(facts) == {"1": "Zentrix Robotics · CEO", "2": "Zentrix Robotics · founded",
                                  "3": "The national bird of Lu…", "4": "Ilves · 4", "5": "Ilves · 5"}


def finished_run(sess, name="20260101-120000"):
    run_dir = settings.session_dir(sess) / name
    (run_dir / "adapter").mkdir(parents=True)
    (run_dir / "report.json").write_text(json.dumps(chart_report()))
    return run_dir


def test_a_recent_run_is_remembered_restored_after_a_reload_and_reopened(sess):
    run_dir = finished_run(sess)
    sess.update(run_dir=str(run_dir), report=chart_report())
    recent, dd, note = handlers.remember_run(sess, [])
    assert recent == [{"session": sess["id"], "run": run_dir.name, "label": recent[0]["label"]}]
    assert "recall" in recent[0]["label"] and dd.value == run_dir.name and "1 recent run" in note
    fresh = handlers.new_session()   # a reload: a new session, the browser's list, the newest run shown
    out = handlers.restore_runs(recent, fresh)
    assert set(out) == set(handlers.RESTORE_OUTPUTS) | set(handlers.OPEN_OUTPUTS)
    assert fresh["id"] == sess["id"] and out["recent"] == recent and "1 recent run" in out["recent_note"]
    assert out["recent_runs"].value == run_dir.name and "Recall" in out["headline_md"]
    assert run_dir.name in [v for _, v in out["earlier_in"].choices]   # Continue from finds it again
    out = handlers.open_run(run_dir.name, fresh, recent)
    assert set(out) == set(handlers.OPEN_OUTPUTS) - {"recent_runs"}
    assert "Recall" in out["headline_md"] and fresh["run_dir"] == str(run_dir) and fresh["report"]["facts"]
    assert len(out["interference_chart"].value["data"]) == 2 and out["ask_btn"].interactive
    assert any(f.endswith("report.json") for f in out["files_out"])


def test_an_expired_run_is_dropped_with_a_note(sess):
    run_dir = finished_run(sess)
    recent = [{"session": sess["id"], "run": run_dir.name, "label": "old run"}]
    import shutil
    shutil.rmtree(run_dir)
    out = handlers.open_run(run_dir.name, sess, recent)
    assert out["recent"] == [] and "expired" in out["recent_note"] and "summary_md" not in out
    assert handlers.restore_runs(recent, sess)["recent"] == []


def test_reopen_refuses_names_that_are_not_the_visitors_runs(sess, tmp_path):
    run_dir = finished_run(sess)
    other = handlers.new_session()
    finished_run(other, "20260101-130000")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "report.json").write_text("{}")
    bad = [{"session": sess["id"], "run": "../" + other["id"] + "/20260101-130000", "label": "x"},
           {"session": "../../elsewhere", "run": "20260101-120000", "label": "y"},
           {"session": sess["id"], "run": str(outside), "label": "z"}]
    for entry in bad:
        assert handlers.recent_run_dir(entry) is None
        out = handlers.open_run(entry["run"], sess, [entry])
        assert "summary_md" not in out and sess["report"] is None
    # a name that is not in the browser's list at all
    assert "summary_md" not in handlers.open_run(run_dir.name, sess, [])
    assert handlers.recent_run_dir({"session": sess["id"], "run": run_dir.name}) == run_dir.resolve()


def test_the_estimate_beside_train_counts_the_facts_and_follows_the_settings(sess):
    from beacon.estimate import estimate

    df = table([{"prompt": "The CEO of A is", "target": "Ann"}, {"prompt": "The CEO of B is", "target": "Bo"}, {}])
    args = (sess, None, df, DEFAULT_MODEL, "none", True, "semantic")
    note = handlers.estimate_note(*args, 300, True, 1, "from-subject", 10.0)
    cfg = settings.make_config(sess, DEFAULT_MODEL, "none", True, "semantic", steps=300)
    assert f"takes {estimate(2, cfg).text}" in note and "2 facts" in note   # the blank row is not a fact
    fewer = handlers.estimate_note(*args, 300, False, 1, "from-subject", 10.0)   # rewordings off: less work
    four = handlers.estimate_note(*args, 300, True, 4, "from-subject", 10.0)     # 4 data orders: more
    secs = lambda n: estimate(2, settings.make_config(sess, DEFAULT_MODEL, "none", True, "semantic", steps=300,
                                                      orders=n[0], rewordings=n[1])).seconds
    assert secs((1, False)) < secs((1, True)) < secs((4, True)) and note != four and fewer.startswith("**Estimate**: training 2 facts")
    assert handlers.estimate_note(*args, 10**6, True, 1, "from-subject", 10.0) == ""   # refused settings: Train says why
    assert handlers.estimate_note(sess, None, table([]), DEFAULT_MODEL, "none", True, "semantic", 300, True, 1,
                                  "from-subject", 10.0) == ""
