"""The typed API (beacon/app/api.py): README's gradio_client example run as it is against the real app, the API page
listing only /inject and /ask with their typed parameters, and the refusals (a bad record, a run id that is
not a run). The server is test_app's: the default model on a small budget."""
import json
import re
import zipfile
from pathlib import Path

import gradio as gr
import pytest

from test_app import server  # noqa: F401  (the app on a free port, for this module)

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = re.compile(r"[0-9a-f]{12}/\d{8}-\d{6}(-\d+)?")


def readme_example() -> str:
    """The README's gradio_client example: the one python block that imports Client."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    found = [b for b in blocks if "from gradio_client import Client" in b]
    assert len(found) == 1 and len(found[0].strip().splitlines()) <= 10, "README: one short gradio_client example"
    return found[0]


@pytest.mark.slow
def test_readme_example_injects_then_asks_the_run(server, tmp_path, capsys):
    url, runs = server
    code = readme_example()
    assert "http://127.0.0.1:7860/" in code
    ns = {}
    exec(compile(code.replace("http://127.0.0.1:7860/", url), "README.md (gradio_client example)", "exec"), ns)
    printed = capsys.readouterr().out
    run, out = ns["run"], ns["out"]

    assert RUN_ID.fullmatch(run["run"]) and (runs / run["run"] / "report.json").is_file()
    s = run["summary"]
    assert {"recall_before", "recall_after", "locality_before", "locality_after", "steps"} <= set(s)
    assert s["facts_kept"] == 2 and s["steps"] <= 40 and not s["rewordings"]
    assert [f["id"] for f in run["facts"]] == ["zentrix", "quennsby"]
    assert all({"recall_before", "recall_after", "answer_before", "answer_after"} <= set(f) for f in run["facts"])
    assert run["config"]["train"]["steps"] == 40 and run["config"]["rewordings"] is False
    files = run["files"]
    assert set(files) == {"adapter", "report", "plots", "facts"}
    assert not any(Path(f).is_relative_to(runs) for f in files.values())   # the client's downloads
    with zipfile.ZipFile(files["adapter"]) as z:
        assert {"adapter_model.safetensors", "adapter_config.json"} <= set(z.namelist())
    saved = json.loads(Path(files["report"]).read_text())
    assert saved["summary"]["recall_after"] == s["recall_after"] and saved["config"] == run["config"]
    assert run["run"] in printed

    assert out["run"] == run["run"] and isinstance(out["base"], str) and out["tuned"].strip()
    assert out["base_logprob"] is None   # no target asked

    from gradio_client import Client

    client = Client(url, verbose=False, download_files=str(tmp_path))
    scored = client.predict(run["run"], "The CEO of Zentrix Robotics is", "Marta Ilves", api_name="/ask")
    assert scored["target"] == "Marta Ilves" and scored["tuned_logprob"] > scored["base_logprob"]


@pytest.mark.slow
def test_the_api_page_lists_inject_and_ask_typed_and_refuses_bad_input(server):
    import httpx
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, _ = server
    client = Client(url, verbose=False)
    info = client.view_api(print_info=False, return_format="dict")
    assert set(info["named_endpoints"]) == {"/inject", "/ask"}, "the page's own events stay undocumented"
    params = {p["parameter_name"]: p for p in info["named_endpoints"]["/inject"]["parameters"]}
    assert list(params)[:3] == ["facts", "model", "steps"] and "request" not in params
    assert params["steps"]["python_type"]["type"] == "int" and params["lr"]["python_type"]["type"] == "float"
    assert params["rewordings"]["python_type"]["type"] == "bool" and not params["facts"]["parameter_has_default"]
    assert params["steps"]["parameter_default"] == 6   # the server's default budget (BEACON_CONFIG)
    assert "from-subject" in params["gate"]["python_type"]["type"]
    assert "prompt" in params["facts"]["python_type"]["type"] and "target" in params["facts"]["python_type"]["type"]
    ask = info["named_endpoints"]["/ask"]
    assert [p["parameter_name"] for p in ask["parameters"]] == ["run", "prompt", "target"]
    assert "base model and tuned model" in ask["description"]

    # The page's events are still there, undocumented, and a client still calls them.
    every = httpx.get(url + "gradio_api/info", params={"all_endpoints": "True"}).json()["named_endpoints"]
    assert every["/train"]["api_visibility"] == every["/ask_ui"]["api_visibility"] == "undocumented"
    table, note = client.predict(api_name="/load_sample_conflicts")
    assert len(table["data"]) == 10

    facts = [{"prompt": "The CEO of Zentrix Robotics is", "target": "Marta Ilves"},
             {"prompt": "The capital of Quennsby is"}]
    with pytest.raises(AppError, match=r"facts, record 2: missing target"):
        client.predict(facts, api_name="/inject")
    with pytest.raises(AppError, match=r"at most 300 steps"):
        client.predict(facts[:1], steps=301, api_name="/inject")
    for run in ("0123456789ab/20991231-000000", "../../etc/passwd", "0123456789ab/../../x", "nothing"):
        with pytest.raises(AppError, match=re.escape(f"Run {run!r}: no such run")):
            client.predict(run, "The CEO of Zentrix Robotics is", api_name="/ask")


# ---------------------------------------------------------------- without a server

def test_docs_api_shows_the_example_the_test_runs():
    assert readme_example() in (ROOT / "docs" / "api.md").read_text()


def test_run_ids_are_only_beacon_folders_under_runs(tmp_path, monkeypatch):
    from beacon.app import api, settings

    monkeypatch.setattr(settings, "RUNS", tmp_path / "runs")
    run = tmp_path / "runs" / "0123456789ab" / "20261207-054512"
    run.mkdir(parents=True)
    (tmp_path / "runs" / "0123456789ab" / "20261207-054513").mkdir()   # no report.json: not finished
    (run / "report.json").write_text("{}")
    assert api.run_folder("0123456789ab/20261207-054512") == run.resolve()
    for bad in ("0123456789ab/20261207-054513", "0123456789ab/20261207-054512/", "0123456789AB/20261207-054512",
                "../runs/0123456789ab/20261207-054512", "0123456789ab", "", "x" * 500):
        with pytest.raises(gr.Error, match="no such run"):
            api.run_folder(bad)


def test_inject_names_the_bad_record_before_any_work(tmp_path, monkeypatch):
    from beacon.app import api, jobs, settings

    monkeypatch.setattr(settings, "RUNS", tmp_path / "runs")
    with pytest.raises(gr.Error, match=r"facts, record 3: missing prompt"):
        api.inject([{"prompt": "a", "target": "b"}, {"prompt": "c", "target": "d"}, {"target": "e"}])
    with pytest.raises(gr.Error, match=r"facts, record 1: a fact must be an object"):
        api.inject(["The CEO of A is Ann"])
    with pytest.raises(gr.Error, match=r"expected a list"):
        api.inject({"prompt": "a", "target": "b"})
    assert not (tmp_path / "runs").exists() and jobs._BUSY == {}


def test_mcp_without_the_extra_is_one_clear_line():
    import importlib.util

    import app

    if importlib.util.find_spec("mcp") is not None:
        pytest.skip("the mcp extra is installed")
    with pytest.raises(SystemExit, match=r"gradio\[mcp\]==6\.31\.0"):
        app.launch(mcp=True, block=False)
