"""The limits of a public server, through the handlers (no server): each is refused with a message
that names it, before any work; the model allow-list; run folders expire; Check stops; one job per
visitor."""
import os
import threading
import time
from types import SimpleNamespace

import gradio as gr
import pandas as pd
import pytest

from beacon import pipeline
from beacon.app import cleanup, handlers, jobs, render, settings


@pytest.fixture()
def sess(tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "RUNS", tmp_path / "runs")
    return handlers.new_session()


def table(n=1):
    return pd.DataFrame([{**dict.fromkeys(render.FACT_COLUMNS, ""), "id": f"f{i}", "prompt": f"The CEO of A{i} is",
                          "target": "Ann"} for i in range(n)], columns=render.FACT_COLUMNS)


def test_a_step_budget_over_the_limit_is_refused_naming_it(sess, monkeypatch):
    monkeypatch.setattr(settings, "MAX_STEPS", 50)
    with pytest.raises(gr.Error, match=r"Step budget: at most 50 steps on this server \(BEACON_MAX_STEPS\), got 51"):
        settings.make_config(sess, "", "auto", True, "semantic", steps=51)
    assert settings.make_config(sess, "", "auto", True, "semantic", steps=50).value("steps") == 50
    assert settings.make_config(sess, "", "auto", True, "semantic").value("steps") == 50  # the default is clamped


def test_an_upload_over_the_size_limit_is_refused_before_any_copy(sess, monkeypatch, tmp_path):
    monkeypatch.setattr(settings, "MAX_UPLOAD_MB", 0.001)
    big = tmp_path / "big.csv"
    big.write_text("prompt,target\n" + "The CEO of A is,Ann\n" * 200)
    with pytest.raises(gr.Error, match=r"over the upload limit of 0.001 MB \(BEACON_MAX_UPLOAD_MB\)"):
        handlers.upload(str(big), sess)
    assert not settings.RUNS.exists(), "the upload was copied before its size was checked"


def test_too_many_facts_are_refused_naming_the_limit(sess, monkeypatch):
    import beacon.data.facts

    monkeypatch.setattr(beacon.data.facts, "MAX_FACTS", 3)
    with pytest.raises(gr.Error, match="over the limit of 3.*BEACON_MAX_FACTS"):
        handlers.table_facts(table(4), sess)


def test_the_model_allow_list_is_off_locally_and_on_a_space(sess, monkeypatch):
    monkeypatch.delenv("BEACON_MODEL_ALLOWLIST", raising=False)
    monkeypatch.setattr(settings, "ON_SPACE", False)
    assert settings.model_allowlist() is None
    assert settings.allowed_model("/some/local/path") == "/some/local/path"
    monkeypatch.setattr(settings, "ON_SPACE", True)
    allow = settings.model_allowlist()
    assert "Qwen/Qwen2.5-0.5B-Instruct" in allow and settings.default("model") in allow
    assert settings.allowed_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    # one message for every model off the list: it never tells whether a path exists here
    messages = set()
    for model in ("/etc", "/no/such/path", "someone/else", str(settings.ROOT)):
        with pytest.raises(gr.Error) as e:
            settings.make_config(sess, model, "auto", True, "semantic")
        messages.add(e.value.message)
        with pytest.raises(gr.Error) as e:
            settings.layers_spec("custom", "0-1", model)
        messages.add(e.value.message)
    assert len(messages) == 1 and "runs only these models" in messages.pop()
    monkeypatch.setattr(settings, "ON_SPACE", False)
    monkeypatch.setenv("BEACON_MODEL_ALLOWLIST", "a/b, c/d")
    assert settings.model_allowlist() == (settings.default("model"), "a/b", "c/d")


def test_the_limits_are_shown(monkeypatch):
    monkeypatch.setattr(settings, "MAX_STEPS", 77)
    note = settings.limits_note()
    assert "77" in note and "facts" in note and "MB" in note and "one running job" in note


def test_a_bad_limit_in_the_environment_names_the_variable(monkeypatch):
    monkeypatch.setenv("BEACON_MAX_STEPS", "lots")
    with pytest.raises(ValueError, match="BEACON_MAX_STEPS"):
        settings._env_number("BEACON_MAX_STEPS", 300)


# ---------------------------------------------------------------- expiry

def make_run(root, session, name, mb, age_h, now):
    d = root / session / name
    d.mkdir(parents=True)
    f = d / "data.bin"
    f.write_bytes(b"x" * int(mb * 2**20))
    for p in (f, d):
        os.utime(p, (now - age_h * 3600, now - age_h * 3600))
    return d


def test_cleanup_deletes_by_age_then_by_budget_and_never_the_active_run(tmp_path):
    now = time.time()
    old = make_run(tmp_path, "s1", "old", 0.1, 30, now)
    old_active = make_run(tmp_path, "s1", "old-but-running", 0.1, 30, now)
    a = make_run(tmp_path, "s2", "a", 1, 5, now)
    b = make_run(tmp_path, "s2", "b", 1, 3, now)
    c = make_run(tmp_path, "s3", "c", 1, 1, now)
    deleted = cleanup.sweep(tmp_path, ttl_s=24 * 3600, budget_bytes=2.2 * 2**20, active={old_active}, now=now)
    assert set(deleted) == {old, a}        # expired, then the oldest until 2.2 MB fit
    assert old_active.exists() and b.exists() and c.exists()
    # over budget with only the running run left: it stays
    deleted = cleanup.sweep(tmp_path, ttl_s=24 * 3600, budget_bytes=0, active={old_active}, now=now)
    assert set(deleted) == {b, c} and old_active.exists()
    assert not (tmp_path / "s2").exists() and not (tmp_path / "s3").exists()   # empty sessions go too


def test_a_training_run_is_never_swept(sess, monkeypatch):
    monkeypatch.setattr(settings, "DISK_BUDGET_MB", 0)
    run = settings.new_run_dir(sess)
    (run / "facts.json").write_text("[]")
    jobs.mark_running(run)
    try:
        assert handlers.sweep_runs() == [] and run.exists()
    finally:
        jobs.mark_running(run, False)
    assert handlers.sweep_runs() == [run]


# ---------------------------------------------------------------- stop, one job per visitor

def test_check_stops_at_its_next_stage_and_frees_the_slot(sess, monkeypatch):
    started, reached = threading.Event(), []

    def analyze(facts, probes, cfg, model, progress):
        progress({"stage": "load", "message": "loading"})
        started.set()
        time.sleep(0.6)
        progress({"stage": "categorize", "message": "measuring"})   # the stop lands here
        reached.append("after the stop")
        return SimpleNamespace(merged={})

    monkeypatch.setattr(pipeline, "load", lambda cfg: ("model", "tok", "info"))
    monkeypatch.setattr(pipeline, "analyze", analyze)
    gen = handlers.check(sess, table(2), "", "auto", True, "semantic")
    updates = []
    for u in gen:
        updates.append(u)
        if started.is_set() and not sess["check_stop"].is_set():
            handlers.stop_check(sess)
    assert "stopped" in updates[-1]["check_status"] and reached == []
    assert jobs._MODEL_LOCK.acquire(timeout=5), "a stopped check kept the model slot"
    jobs._MODEL_LOCK.release()
    assert jobs._BUSY == {} and jobs.ACTIVE == {}


def test_closing_the_page_stops_a_check(sess, monkeypatch):
    gate = threading.Event()

    def analyze(facts, probes, cfg, model, progress):
        progress({"stage": "load", "message": "loading"})
        gate.wait(5)
        progress({"stage": "categorize", "message": "measuring"})
        pytest.fail("the check ran on after its page closed")

    monkeypatch.setattr(pipeline, "load", lambda cfg: ("model", "tok", "info"))
    monkeypatch.setattr(pipeline, "analyze", analyze)
    gen = handlers.check(sess, table(1), "", "auto", True, "semantic")
    next(gen)
    gen.close()            # what Gradio does when the tab goes away
    gate.set()
    assert jobs._MODEL_LOCK.acquire(timeout=5)
    jobs._MODEL_LOCK.release()
    deadline = time.time() + 5
    while jobs._BUSY and time.time() < deadline:
        time.sleep(0.05)
    assert jobs._BUSY == {}


def test_a_second_job_of_the_same_visitor_is_refused(sess, monkeypatch):
    gate = threading.Event()

    def analyze(facts, probes, cfg, model, progress):
        gate.wait(5)
        return SimpleNamespace(merged={})

    monkeypatch.setattr(pipeline, "load", lambda cfg: ("model", "tok", "info"))
    monkeypatch.setattr(pipeline, "analyze", analyze)
    monkeypatch.setattr(pipeline, "review_rows", lambda a, c: [])
    monkeypatch.setattr(handlers, "review_frame", lambda a, c: (pd.DataFrame(), "ok"))
    first = handlers.check(sess, table(1), "", "auto", True, "semantic")
    next(first)
    with pytest.raises(gr.Error, match="One job at a time per visitor: your check is still running"):
        list(handlers.train(sess, None, table(1), "", "auto", True, "semantic", 5, 0.002, 8, 0.0, "all", "", 1,
                            "select", "", True, ["neighbours"]))
    with pytest.raises(gr.Error, match="your check is still running"):
        next(handlers.check(sess, table(1), "", "auto", True, "semantic"))
    assert not list(settings.RUNS.glob("*/*")), "a refused train made a run folder"
    other = handlers.new_session()   # another visitor waits in line instead
    gate.set()
    list(first)
    assert jobs._BUSY == {}
    assert list(handlers.check(other, table(1), "", "auto", True, "semantic"))[-1]["review_note"] == "ok"


def test_a_full_line_is_refused_naming_the_limit(sess, monkeypatch):
    monkeypatch.setattr(settings, "QUEUE_SIZE", 1)
    assert jobs._MODEL_LOCK.acquire(timeout=5)
    try:
        waiting = handlers.check(handlers.new_session(), table(1), "", "auto", True, "semantic")
        next(waiting)                   # one job waits: the line is full
        with pytest.raises(gr.Error, match=r"The queue is full: 1 jobs are waiting.*BEACON_QUEUE_SIZE"):
            next(handlers.check(sess, table(1), "", "auto", True, "semantic"))
        waiting.close()
    finally:
        jobs._MODEL_LOCK.release()
    assert jobs._BUSY == {} and not jobs._LINE


def test_ask_waits_for_the_model_slot(sess, monkeypatch):
    seen = []
    monkeypatch.setattr(handlers, "ask", lambda *a: seen.append(jobs._MODEL_LOCK.locked()) or
                        {"base": "b", "tuned": "t"})
    sess.update(report={"config": {"model": "m", "quantization": "auto"}}, run_dir="/x")
    assert jobs._MODEL_LOCK.acquire(timeout=5)
    gen = handlers.ask_model("The CEO of A is", sess)
    assert "1 job ahead" in next(gen)[1]
    jobs._MODEL_LOCK.release()
    assert list(gen)[-1][:2] == ("b", "t") and seen == [True]
    assert not jobs._MODEL_LOCK.locked() and jobs._BUSY == {}
