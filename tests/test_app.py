"""The web app end to end through its API (gradio_client), against `python app.py` in a subprocess.

The app runs on the embedded default model with a small budget: a few steps, two sampled answers
per fact, no locality guard (its anchor pass alone takes a minute on a busy CPU; the pipeline's tests cover
it) and 10 of the 31 locality probes. One server serves every test of this module.
"""
import json
import os
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here starts the app server; most train

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"steps": 6, "categorize_samples": 2, "locality_guard": 0.0, "model_rewordings": 0}  # those have their own test
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(runs: Path, config: dict = SMALL, *args):
    """`python app.py` on a free port; returns (process, url) once it answers."""
    port = free_port()
    probes = runs.parent / "probes.csv"
    probes.write_text("\n".join((ROOT / "assets" / "probes.csv").read_text().splitlines()[:11]) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BEACON_RUNS": str(runs), "BEACON_CONFIG": json.dumps(config),
           "BEACON_PROBES": str(probes), "PYTHONUNBUFFERED": "1"}
    log = open(runs.parent / f"app-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--host", "127.0.0.1", *args], cwd=ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    import httpx

    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited with {proc.returncode}: {Path(log.name).read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.kill()
    raise RuntimeError(f"app did not start: {Path(log.name).read_text()[-3000:]}")


def stop_app(proc):
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    runs = tmp_path_factory.mktemp("app") / "runs"
    runs.mkdir()
    proc, url = start_app(runs)
    yield url, runs
    stop_app(proc)


def settings(**over):
    """/train's inputs after the facts table, in order (the Advanced ones last)."""
    s = dict(model=MODEL, quant="auto", filt=True, weighting="semantic", steps=SMALL["steps"], lr=0.002, rank=8,
             guard=SMALL["locality_guard"], layers="all", layers_custom="", orders=1, merge="select", earlier="",
             rewordings=True, anchors=["neighbours", "sampled"], gate="subject")
    s.update(over)
    return s


TRAIN_OUTPUTS = ("status", "loss", "recall", "headline", "summary", "results", "gallery", "files", "ask_prompt",
                 "ask_target", "earlier")


def train_result(job) -> dict:
    """The last update of a /train job (waited for), by name, with its report.json read."""
    job.result()
    out = dict(zip(TRAIN_OUTPUTS, job.outputs()[-1]))
    out["report"] = json.loads(Path({Path(f).name: f for f in out["files"]}["report.json"]).read_text())
    return out


def upload_facts(client, path: Path, rows: str):
    from gradio_client import handle_file

    path.write_text("id,prompt,target\n" + rows)
    return client.predict(handle_file(str(path)), api_name="/upload")[0]


def test_whole_flow_sample_check_keep_train_results_ask_download(server, tmp_path):
    from gradio_client import Client

    url, runs = server
    client = Client(url, verbose=False, download_files=str(tmp_path))
    t0 = time.time()

    table, note = client.predict(api_name="/load_sample_conflicts")
    assert table["headers"][:3] == ["id", "prompt", "target"] and len(table["data"]) == 10
    assert "conflicts.csv" in note

    s = settings()
    review, review_note, status = client.predict(table, s["model"], s["quant"], s["filt"], s["weighting"],
                                                 api_name="/check")
    rows = {r[1]: dict(zip(review["headers"], r)) for r in review["data"]}
    assert rows["c01"]["keep"] is False and "conflict" in rows["c01"]["status"]
    assert rows["c07"]["keep"] is True and rows["c07"]["category"] in ("known", "update", "new")
    assert "facts will be trained" in review_note and "c08 (same as c07)" in review_note

    # Re-include c01 despite its conflict: tick its keep box.
    review["data"] = [[r[0] or r[1] == "c01", *r[1:]] for r in review["data"]]
    review, review_note = client.predict(review, s["model"], s["quant"], s["filt"], s["weighting"],
                                         api_name="/review_edit")
    rows = {r[1]: dict(zip(review["headers"], r)) for r in review["data"]}
    assert rows["c01"]["keep"] is True and rows["c01"]["status"] == "✓ kept by you"
    assert rows["c02"]["keep"] is False  # the other side of the conflict stays out
    kept = sorted(i for i, r in rows.items() if r["keep"])

    job = client.submit(table, *settings().values(), api_name="/train")
    updates = []
    for out in job:
        updates.append(out)
    status, loss, recall, headline, summary, results, gallery, files, ask_prompt, ask_target, *_ = job.outputs()[-1]
    assert len(job.outputs()) > 3  # progress streamed while training
    assert any("▶ train" in (u[0] or "") for u in job.outputs()), "no live training status"
    assert "Done" in status and "Recall" in headline and "cpu" in summary and "none (float32)" in summary

    res = {r[0]: dict(zip(results["headers"], r)) for r in results["data"]}
    assert sorted(i for i, r in res.items() if r["trained"] == "yes") == kept
    assert set(res) == {f"c{i:02d}" for i in range(1, 11)}  # every input fact, merged duplicate included
    # green / red per trained fact, as the Styler metadata says
    styles = results["metadata"]["styling"]
    for row, style in zip(results["data"], styles):
        row = dict(zip(results["headers"], row))
        if row["trained"] == "yes":
            assert ("#f9d6da" in style[0]) == (not row["answer after"].startswith("✓"))

    captions = [g["caption"] for g in gallery]
    assert len(gallery) >= 4 and any("Interference" in c for c in captions)
    assert all(Path(g["image"]).exists() for g in gallery)

    names = {Path(f).name: f for f in files}
    assert {"adapter.zip", "report.json", "plots.zip", "facts.json"} <= set(names)
    with zipfile.ZipFile(names["adapter.zip"]) as z:
        assert {"adapter_model.safetensors", "adapter_config.json"} <= set(z.namelist())
    report = json.loads(Path(names["report.json"]).read_text())
    assert report["summary"]["steps"] <= SMALL["steps"] and report["config"]["keep"] == ["c01"]

    base, tuned, base_chat, tuned_chat, base_score, tuned_score = client.predict(ask_prompt, ask_target,
                                                                                 api_name="/ask_ui")
    assert isinstance(base, str) and isinstance(tuned, str) and tuned and tuned_chat
    assert ask_target and "log p(target): plain" in tuned_score and "chat" in tuned_score

    # The run folder: runs/<session>/<time>/ with the facts, the adapter and the report.
    run_dirs = [p.parent for p in runs.glob("*/*/report.json")]
    assert len(run_dirs) == 1
    assert {"facts.json", "config.json", "adapter", "plots"} <= {p.name for p in run_dirs[0].iterdir()}
    print(f"whole flow: {time.time() - t0:.0f} s")


def test_bad_upload_is_one_clear_error_and_is_kept(server, tmp_path):
    from gradio_client import Client, handle_file

    url, runs = server
    client = Client(url, verbose=False)
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,target\nThe CEO of Zentrix is,Marta\nThe capital of Sevrandia is,\n")
    note = client.predict(handle_file(str(bad)), api_name="/upload")[-1]   # shown where the facts' note is
    assert "beacon-error" in note and "bad.csv, line 3: missing target" in note and "Traceback" not in note
    assert list(runs.glob("*/uploads/bad.csv")), "the upload was not kept"

    status = client.predict({"headers": ["id", "prompt", "target", "subject", "relation", "paraphrases"], "data": []},
                            MODEL, "auto", True, "semantic", api_name="/check")[-1]   # an empty table: said, not crashed
    assert "⚠" in status and "no facts found" in status


def test_stop_keeps_what_was_learned(server, tmp_path, tiny_dir):
    """Stop during training: the run ends within seconds, reports 'cancelled' and saves the adapter.
    On the tiny random model: this is the app's plumbing, not what the model learns."""
    from gradio_client import Client, handle_file

    url, runs = server
    client = Client(url, verbose=False, download_files=str(tmp_path))
    facts = tmp_path / "three.csv"
    facts.write_text("id,prompt,target\n"
                     "s1,The CEO of Zentrix Robotics is,Marta Ilves\n"
                     "s2,The capital of Sevrandia is,Ostrel\n"
                     "s3,The language spoken in Halvessa is,Murrin\n")
    table, _ = client.predict(handle_file(str(facts)), api_name="/upload")
    job = client.submit(table, *settings(model=tiny_dir, steps=200).values(), api_name="/train")  # no check first
    stopped_at = None
    while not job.done():
        outs = job.outputs()
        if stopped_at is None and outs and "▶ train" in (outs[-1][0] or "") and "training LoRA" not in outs[-1][0]:
            client.predict(api_name="/stop")
            stopped_at = time.time()
        time.sleep(0.5)
    assert stopped_at is not None, "never saw a training step"
    status, loss, recall, headline, summary, results, gallery, files, *_ = job.outputs()[-1]
    assert "Stopped by you" in summary
    report = json.loads(Path({Path(f).name: f for f in files}["report.json"]).read_text())
    assert report["summary"]["stopped"] == "cancelled" and report["summary"]["steps"] < 200
    run_dir = next(runs.glob("*/*/uploaded-three.csv")).parent
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
    assert (run_dir / "uploaded-three.csv").exists()


FOUR = ("a1,The CEO of Zentrix Robotics is,Marta Ilves\n"
        "a2,The capital of Sevrandia is,Ostrel\n"
        "a3,The language spoken in Halvessa is,Murrin\n"
        "a4,The mascot of the Brenwick Otters is,Captain Fizz\n")


def test_advanced_auto_layers_and_two_merged_orders(server, tmp_path, tiny_dir):
    """Where to train = auto and 2 data orders merged by select: the report and the summary say so.
    On the tiny random model (4 layers): the choice and the merge are plumbing here; the pipeline's tests and
    the ablations measure what they do to a real model."""
    from gradio_client import Client

    url, runs = server
    client = Client(url, verbose=False, download_files=str(tmp_path))
    table = upload_facts(client, tmp_path / "four.csv", FOUR)
    # a custom list outside the model: named where Train reports, before anything runs
    status = client.predict(table, *settings(model=tiny_dir, layers="custom", layers_custom="3-6").values(),
                            api_name="/train")[0]
    assert "<b>⚠</b> Where to train" in status and "0..3" in status and "&#x27;3-6&#x27;" in status
    assert not list(runs.glob("*/*/uploaded-four.csv")), "a refused run left a run folder"

    job = client.submit(table, *settings(model=tiny_dir, steps=4, layers="auto", orders=2, merge="select").values(),
                        api_name="/train")
    out, statuses = train_result(job), " ".join(o[0] or "" for o in job.outputs())
    report, summary = out["report"], out["summary"]
    assert "choose layers" in statuses and "train 2 orders + merge" in statuses and "order 2/2" in statuses

    chosen = report["chosen_layers"]
    assert report["config"]["layers"] == "auto" and chosen == report["layers"]["chosen"]
    assert chosen and chosen == list(range(chosen[0], 4)), "auto trains a top block of the 4 layers"
    assert "Layers: auto" in summary and (f"{chosen[0]}–3" if len(chosen) > 2 else str(chosen[0])) in summary
    assert any(g["caption"].startswith("Layer selection") for g in out["gallery"])
    assert any(g["caption"].startswith("Data orders") for g in out["gallery"])
    assert not any(g["caption"].startswith("Drift") for g in out["gallery"])  # not tracked over K orders
    # the live loss curve counts steps on across the orders (each order's own count starts at 1 again)
    steps = [row[0] for row in out["loss"]["value"]["data"] if row[2].startswith("facts")]
    assert steps == list(range(1, report["summary"]["steps"] + 1))

    merge = report["merge"]
    assert merge["orders"] == 2 and merge["how"] == "select" and [r["run"] for r in merge["runs"]] == [0, 1]
    assert sorted(merge["runs"][0]["order"]) == ["a1", "a2", "a3", "a4"]
    assert merge["runs"][0]["order"] != merge["runs"][1]["order"]
    assert report["summary"]["steps"] == sum(r["steps"] for r in merge["runs"])
    assert "2 data orders, merged by *select*" in summary
    assert f"| **merged** | | **{merge['merged']['recall']:.0%}** |" in summary
    for r in merge["runs"]:
        assert f"| run {r['run']} | {r['steps']} | {r['recall']:.0%} | {r['early_recall']:.0%} |" in summary


def test_continue_from_an_earlier_run_reports_its_facts(server, tmp_path, tiny_dir):
    """A second run on top of the first one's adapter lists what the first run's facts recall before and after;
    another visitor cannot continue from it. On the tiny random model, which learns two facts at a high rate."""
    from gradio_client import Client

    url, runs = server
    client = Client(url, verbose=False, download_files=str(tmp_path / "one"))
    table = upload_facts(client, tmp_path / "first.csv", FOUR[:FOUR.index("a3")])
    # Every token trained: through the gate's few tokens the tiny random model learns too slowly for 40 steps
    # (the pipeline's test_layers_merge continues a gated run).
    tiny = dict(model=tiny_dir, lr=1e-2, gate="none")
    first = train_result(client.submit(table, *settings(steps=40, **tiny).values(), api_name="/train"))
    earlier = next(runs.glob("*/*/uploaded-first.csv")).parent
    assert first["report"]["summary"]["recall_after"] > 0, "the first run learned nothing to lose"
    # the finished run is now a choice of "Continue from", labelled with what it did
    choices = {value: label for label, value in first["earlier"]["choices"]}
    assert set(choices) == {"", earlier.name} and "2 facts" in choices[earlier.name]
    # its adapter has its own layers: another choice is refused, where Train reports
    status = client.predict(table, *settings(earlier=earlier.name, layers="auto", **tiny).values(),
                            api_name="/train")[0]
    assert "<b>⚠</b> Continue from" in status and "all layers" in status

    n_runs = len(list(runs.glob("*/*/config.json")))
    other = Client(url, verbose=False)  # another session: the folder name is not one of its runs
    # refused before anything runs, by Gradio's check of the session's choices (an exception) or by the app's
    # own (said where Train reports)
    try:
        said = other.predict(table, *settings(earlier=earlier.name, **tiny).values(), api_name="/train")[0]
    except Exception as e:
        said = str(e)
    assert earlier.name in said and ("not in the list of choices" in said or "not one of your finished runs" in said)
    assert len(list(runs.glob("*/*/config.json"))) == n_runs, "a refused run started"

    table = upload_facts(client, tmp_path / "second.csv", FOUR[FOUR.index("a3"):])
    job = client.submit(table, *settings(steps=3, earlier=earlier.name, **tiny).values(), api_name="/train")
    second = train_result(job)
    rep, summary = second["report"], second["summary"]
    assert rep["config"]["continue_from"] == str(earlier)
    e = rep["earlier_facts"]
    assert e["ids"] == ["a1", "a2"] and e["from"] == str(earlier)
    # measured on the earlier adapter before training: what the first run ended with
    assert e["recall_before"] == first["report"]["summary"]["recall_after"]
    assert set(e["lost"]) <= {"a1", "a2"}
    assert f"Earlier facts (continued from run `{earlier.name}`)" in summary
    assert f"recall **{e['recall_before']:.0%} → {e['recall_after']:.0%}**" in summary
    assert (f"Lost {len(e['lost'])}" if e["lost"] else "None lost") in summary
    assert sorted(f["id"] for f in rep["facts"] if f["kept"]) == ["a3", "a4"]


def test_share_link_failure_is_one_line_and_keeps_serving(tmp_path):
    """No internet here: --share cannot get a link; the app says so in one line and serves locally."""
    import httpx

    runs = tmp_path / "runs"
    runs.mkdir()
    proc, url = start_app(runs, SMALL, "--share")
    try:
        assert httpx.get(url, timeout=5).status_code == 200
        deadline = time.time() + 60
        log = next(tmp_path.glob("app-*.log"))
        while time.time() < deadline and "share link" not in log.read_text().lower() and "public link" not in log.read_text().lower():
            time.sleep(1)
        text = log.read_text()
        assert "Beacon is running on" in text
        if "Public link:" not in text:  # the usual case here: no internet
            lines = [l for l in text.splitlines() if "share link" in l.lower()]
            assert len(lines) == 1 and "serving locally" in lines[0]
            assert "Traceback" not in text
    finally:
        stop_app(proc)
