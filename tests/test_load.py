"""A crowd on the real app: 8 gradio_client visitors at once upload, check, ask and train (one model job
at a time, the others in line), with Stop and disconnects at random moments, on a tiny random Llama so
it stays cheap. Asserts no deadlock (every visitor gets an answer in time), no visitor sees another's
facts or files, and bounded server memory and disk; prints the figures."""
import json
import random
import re
import threading
import time
from pathlib import Path

import pytest

from test_app import start_app, stop_app

pytestmark = pytest.mark.slow

VISITORS = 8
TIMEOUT = 150          # seconds any one visitor may wait for any one answer
PEAK_RSS_MB = 3000     # the server with the tiny model and the sentence embedder
RUNS_MB = 200


def rss_mb(proc) -> float:
    import psutil

    try:
        p = psutil.Process(proc.pid)
        return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**20
    except psutil.Error:
        return 0.0


def du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def test_eight_visitors_at_once(tmp_path, tiny_dir, monkeypatch):
    import httpx
    from gradio_client import Client, handle_file

    runs = tmp_path / "runs"
    runs.mkdir()
    config = {"model": tiny_dir, "steps": 2, "categorize_samples": 2, "locality_guard": 0.0, "model_rewordings": 0}
    # the allow-list on (as on a Space): the configured tiny model is on it, nothing else local is
    monkeypatch.setenv("BEACON_MODEL_ALLOWLIST", "HuggingFaceTB/SmolLM2-135M-Instruct")
    monkeypatch.setenv("BEACON_QUEUE_SIZE", "8")
    proc, url = start_app(runs, config)
    peak, done = [rss_mb(proc)], threading.Event()

    def watch():
        while not done.wait(0.5):
            peak[0] = max(peak[0], rss_mb(proc))
    threading.Thread(target=watch, daemon=True).start()

    stats = {"requests": 0, "failures": [], "refused": [], "ahead": 0}
    lock = threading.Lock()
    rng = random.Random(0)

    def count(n=1):
        with lock:
            stats["requests"] += n

    def expect_error(fn, pattern, who):
        try:
            said = str(fn())   # the app's refusal, shown where the job reports (an error box)
        except Exception as e:   # Gradio's own checks: gradio_client raises AppError with the message
            said = str(e)
        if not any(p in said for p in pattern.split("|")):
            raise AssertionError(f"{who}: expected {pattern!r}, got {said[-300:]}")
        with lock:
            stats["refused"].append((who, said[:80]))

    def settings(model, steps=2):
        return [model, "auto", True, "semantic", steps, 0.002, 8, 0.0, "all", "", 1, "select", "", True,
                ["neighbours"], "from-subject"]   # every input: an undocumented endpoint has no defaults

    def visitor(i):
        who = f"visitor {i}"
        client = Client(url, verbose=False, download_files=str(tmp_path / f"dl{i}"))
        facts = tmp_path / f"facts{i}.csv"
        facts.write_text("id,prompt,target\n" + "".join(f"v{i}f{k},The motto of Guild{i}x{k} is,Word{i}z{k}\n"
                                                        for k in range(3)))
        table, note = client.predict(handle_file(str(facts)), api_name="/upload")
        count()
        assert [r[0] for r in table["data"]] == [f"v{i}f{k}" for k in range(3)], who
        if i == 6:   # a model off the list: one fixed message, whatever the path
            expect_error(lambda: client.predict(table, "/etc", "auto", True, "semantic", api_name="/check"),
                         # the server's check, or Gradio's own for a dropdown without custom values
                         "runs only these models|is not in the list of choices", who)
            count()
        job = client.submit(table, tiny_dir, "auto", True, "semantic", api_name="/check")
        count()
        if i == 4:   # a second job from the same visitor while the first is on
            time.sleep(0.5)
            expect_error(lambda: client.predict(table, tiny_dir, "auto", True, "semantic", api_name="/check"),
                         "One job at a time per visitor", who)
            count()
        if i == 5:   # disconnects at a random moment
            time.sleep(rng.uniform(0.5, 8))
            job.cancel()
            client.close()
            return "disconnected"
        if i == 7:   # stops its check at a random moment
            time.sleep(rng.uniform(0.5, 8))
            client.predict(api_name="/stop_check")
            count()
        t0 = time.time()
        while not job.done():
            assert time.time() - t0 < TIMEOUT, f"{who}: no answer to /check in {TIMEOUT} s"
            for out in job.outputs()[-1:]:
                m = re.search(r"(\d+) jobs? ahead of yours", out[-1] or "")
                if m:
                    with lock:
                        stats["ahead"] = max(stats["ahead"], int(m.group(1)))
            time.sleep(0.3)
        review, review_note, status = job.outputs()[-1]
        if i == 7:
            return "stopped" if "stopped" in status else "checked"
        assert "Checked 3 facts" in status, f"{who}: {status[-300:]}"
        assert {r[1] for r in review["data"]} == {f"v{i}f{k}" for k in range(3)}, f"{who} saw other facts"
        if i >= 3:
            return "checked"
        job = client.submit(table, *settings(tiny_dir), api_name="/train")
        count()
        if i == 2:   # stops its training at a random moment
            time.sleep(rng.uniform(1, 5))
            client.predict(api_name="/stop")
            count()
        job.result(timeout=TIMEOUT)
        out = job.outputs()[-1]
        files = {Path(f).name: f for f in out[7] or []}   # status, loss, recall, headline, summary, table, plots, files
        if "report.json" not in files:
            return "stopped before training" if i == 2 else AssertionError(f"{who}: no report: {out[0][-300:]}")
        report = json.loads(Path(files["report.json"]).read_text())
        assert {f["id"] for f in report["facts"]} == {f"v{i}f{k}" for k in range(3)}, f"{who} got another's report"
        assert all(str(runs) not in f for f in files.values()), "a download came from RUNS, not Gradio's cache"
        base, tuned, *_ = client.predict("The motto of Guild is", "", api_name="/ask_ui")
        count()
        assert isinstance(tuned, str) and tuned
        return "trained"

    results = {}

    def run(i):
        try:
            results[i] = visitor(i)
        except Exception as e:
            results[i] = e
            with lock:
                stats["failures"].append((i, repr(e)[:300]))

    t0 = time.time()
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(VISITORS)]
    for t in threads:
        t.start()
        time.sleep(0.2)
    for t in threads:
        t.join(timeout=TIMEOUT * 3)
    wall = time.time() - t0
    try:
        hung = [i for i, t in enumerate(threads) if t.is_alive()]
        # RUNS is not served: another visitor's run file cannot be fetched by its path
        leaked = []
        for f in runs.glob("*/*/facts.json"):
            r = httpx.get(f"{url}gradio_api/file={f}", timeout=10)
            leaked += [str(f)] if r.status_code == 200 else []
        # each session folder holds one visitor's facts only
        owners = {}
        for f in runs.glob("*/*/facts.json"):
            ids = {x["id"].split("f")[0] for x in json.loads(f.read_text())}
            owners.setdefault(f.parent.parent.name, set()).update(ids)
        disk = du_mb(runs)
        alive = proc.poll() is None
    finally:
        done.set()
        stop_app(proc)
    print(f"\nload test: {VISITORS} visitors, {stats['requests']} requests, {len(stats['failures'])} failures, "
          f"{len(stats['refused'])} refused as expected, most jobs ahead seen {stats['ahead']}, "
          f"peak server RSS {peak[0]:.0f} MB, RUNS {disk:.1f} MB, {wall:.0f} s; outcomes "
          + ", ".join(f"{i}: {results.get(i)!s:.60}" for i in range(VISITORS)))
    for i, e in stats["failures"]:
        print(f"  visitor {i} failed: {e}")
    assert not hung, f"visitors {hung} got no answer (deadlock?)"
    assert not stats["failures"], stats["failures"]
    assert alive, "the server died"
    assert not leaked, f"run files served by path: {leaked}"
    assert all(len(v) == 1 for v in owners.values()), f"a session folder holds several visitors' facts: {owners}"
    assert peak[0] < PEAK_RSS_MB and disk < RUNS_MB
    assert [results[i] for i in (0, 1)] == ["trained", "trained"]
