"""The app in a real browser, as a new user would: Playwright drives Debian's chromium (headless).

Bring a probe set of your own, load the counterfactual sample, upload a file without a target column
(the error stays on the page, the table keeps the sample), then the sample with one more fact; check it,
try a layer list outside the model (refused, nothing runs), train a few steps, find every answer before
and after (a crossed answer marked with the fact whose answer it is), the plots and the downloads; hover
an interference cell and read its facts by name; ask the tuned model; export the GGUF, download it and
reload it with transformers to get the edited answers back; reload the page: the run is listed and
shown. The conflict review is tested through the API (test_app). Skipped only when
chromium is absent.
"""
import io
import json
import shutil
import time
from pathlib import Path

import pytest

from test_app import start_app, stop_app

pytestmark = pytest.mark.slow  # starts the app server and a browser, and trains

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture()
def page(tmp_path):
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("chromium is not installed")
    from playwright.sync_api import sync_playwright

    runs = tmp_path / "runs"
    runs.mkdir()
    proc, url = start_app(runs)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(30_000)
        pg.beacon_runs = runs   # the run folders, for tests that read what a run wrote
        pg.goto(url)
        try:
            yield pg
        finally:
            pg.screenshot(path=str(tmp_path / "last.png"), full_page=True)  # for a failing run's post-mortem
            browser.close()
            stop_app(proc)


# Another kind of knowledge than the shipped probes (capitals, symbols) and than every sample.
OWN_PROBES = ("id,prompt,target\n"
              "y1,The opposite of hot is,cold\n"
              "y2,A week has seven,days\n"
              "y3,The colour of a clear daytime sky is,blue\n")


def hover_a_mark(page, chart: str):
    """Move the mouse over the chart's coloured pixels until Vega shows a tooltip; returns its text.
    The marks are drawn on a canvas, so they are found in a screenshot of the chart."""
    from PIL import Image

    box = page.locator(f"#{chart}").bounding_box()
    shot = Image.open(io.BytesIO(page.locator(f"#{chart}").screenshot())).convert("RGB")
    sx, sy = shot.width / box["width"], shot.height / box["height"]
    coloured = [(x, y) for y in range(0, shot.height, 3) for x in range(0, shot.width, 3)
                if max(shot.getpixel((x, y))) - min(shot.getpixel((x, y))) > 60]   # saturated: a mark, not an axis
    assert coloured, f"no marks drawn in #{chart}"
    tip = page.locator("#vg-tooltip-element")
    # A second, slower pass: under load (the whole suite beside it) Vega's tooltip can take longer than
    # 60 ms to appear, and one CI run found none over 483 coloured pixels.
    for wait in (60, 300):
        for x, y in coloured[::max(1, len(coloured) // 60)]:
            page.mouse.move(box["x"] + x / sx, box["y"] + y / sy)
            page.wait_for_timeout(wait)
            if tip.count() and tip.is_visible() and tip.inner_text().strip():
                return tip.inner_text()
    raise AssertionError(f"no tooltip over {len(coloured)} coloured pixels of #{chart}")


def test_own_probes_train_hover_gguf_and_reopen_after_reload(page, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from beacon.model.lm import generate
    from beacon.measure.evaluate import recalls

    t0, timings = time.time(), {}
    # Your own probe set, on tab 3, before anything runs: the check measures it too.
    probes = tmp_path / "my-probes.csv"
    probes.write_text(OWN_PROBES)
    page.get_by_role("tab", name="3 · Train").click()
    page.get_by_text("Advanced:").click()   # stays open for the layer list below
    page.locator("#probes-upload input[type=file]").set_input_files(str(probes))
    page.wait_for_selector("#yours-note >> text=3 facts", timeout=30_000)

    page.get_by_role("tab", name="1 · Facts").click()
    page.get_by_role("button", name="Counterfactual edits").click()
    page.wait_for_selector("text=Loaded sample")
    # A file without a target column: the error names the file, line and columns, and stays on the page;
    # the table keeps the sample.
    bad = tmp_path / "missing_target.csv"
    bad.write_text("prompt,subject,relation\nThe CEO of Orvanta Shipping is,Orvanta Shipping,CEO\n")
    page.locator("#upload input[type=file]").set_input_files(str(bad))
    page.wait_for_selector("#facts-note .beacon-error", timeout=30_000)
    page.wait_for_timeout(10_000)
    note = page.locator("#facts-note").inner_text()
    assert "missing_target.csv, line 1: no target column" in note, note
    assert "Italy" in page.locator("#facts-table").inner_text()
    page.screenshot(path=str(tmp_path / "bad-file.png"))
    # The sample and one more fact, whose answer the base model gives for Italy's capital: before
    # training, that prompt is answered with another fact's target.
    sample = (Path(__file__).parents[1] / "assets" / "counterfactual.csv").read_text().rstrip("\n")
    mine = tmp_path / "my-facts.csv"
    mine.write_text(sample + "\ncf15,Italy,largest city,The largest city of Italy is,Rome,\n")
    page.locator("#upload").get_by_label("Clear").click()   # the bad file stays shown until the visitor clears it
    page.locator("#upload input[type=file]").set_input_files(str(mine))
    page.wait_for_selector("#facts-note >> text=Loaded my-facts.csv", timeout=30_000)
    assert not page.locator("#facts-note .beacon-error").count()
    page.get_by_role("button", name="Check facts").click()
    page.wait_for_selector("text=facts will be trained", timeout=240_000)
    page.get_by_role("button", name="Next: train").click()
    # A custom layer list outside the model is refused with a message naming it, and nothing runs
    page.get_by_label("custom list").check()
    page.locator("#layers-custom textarea, #layers-custom input").first.fill("20-35")
    page.locator("#train-btn").click()
    # the status line itself, not the toast that shows the same words and can come first
    page.wait_for_selector("#train-status >> text=indices in 0..29, got '20-35'", timeout=30_000)
    status = page.locator("#train-status").inner_text()
    assert "⚠ Where to train" in status and "▶" not in status   # the error stays where Train reports; nothing ran
    page.get_by_label("all layers").check()
    page.locator("#layers-custom").wait_for(state="hidden")
    # From the subject on is the default; this run trains on every token, so its GGUF is the adapter merged as it is
    assert page.get_by_label("from a subject's name on").is_checked()
    page.get_by_label("on every token").check()
    estimate = page.locator("#estimate").inner_text()   # Beacon's estimate beside Train, before it runs
    assert "15 facts (checked)" in estimate and "on this machine" in estimate, estimate
    page.locator("#train-btn").click()
    page.wait_for_selector("#train-status >> text=▶", timeout=60_000)  # the live stage checklist
    page.wait_for_selector("#train-status >> text=left", timeout=60_000)  # time spent and left
    page.wait_for_selector("#results-table [role=row] >> nth=1", timeout=400_000)  # moves to 4 · Results
    timings["train"] = time.time() - t0

    assert "Recall" in page.locator("#headline").inner_text()
    summary = page.locator("#summary").inner_text()
    assert "Locality" in summary and "cpu" in summary
    assert "your probe set" in summary, summary   # locality on the visitor's probes, before and after
    table = page.locator("#results-table").inner_text()
    assert all(s in table for s in ("Italy · capital", "Italy · largest city", "Mona Lisa", "Japan")) and "✓" in table
    assert "⚠ another fact's answer: Italy · largest city" in table, table   # Rome, before training
    page.screenshot(path=str(tmp_path / "results.png"), full_page=True)
    styles = page.locator("#results-table [role=gridcell]").evaluate_all(
        "cells => cells.map(c => getComputedStyle(c).backgroundColor)")
    assert {"rgb(211, 240, 220)", "rgb(249, 214, 218)"} & set(styles)   # green / red rows
    assert page.locator("#plots img").count() >= 4
    page.locator("#downloads a[download='adapter.zip']").wait_for()
    runs = Path(page.beacon_runs)
    run_dir = next(runs.glob("*/*/report.json")).parent
    report = json.loads((run_dir / "report.json").read_text())
    assert report["summary"]["probe_sets"]["yours"] == 3
    recalled = [f for f in report["facts"] if f["kept"] and f["recall_after"]]
    assert recalled, "6 steps recalled none of the sample: nothing to find in the GGUF"

    # Hover an interference cell: the tooltip names two different facts by subject, their prompts, and a
    # rounded value (a fact on itself is not drawn).
    page.locator("#interference-chart").scroll_into_view_if_needed()
    tip = hover_a_mark(page, "interference-chart")
    page.screenshot(path=str(tmp_path / "hover.png"))
    import re

    named = {f["subject"] for f in report["facts"] if f["subject"] in tip}
    assert len(named) >= 2 and any(f["prompt"][:20] in tip for f in report["facts"]), tip   # two facts, not one
    value = re.search(r"value\s+(−?-?\d+(?:\.(\d+))?)", tip)
    assert value and len(value.group(2) or "") <= 3, tip

    # Ask: base and tuned answers, plain and through the chat template
    page.locator("#ask-btn").click()
    page.wait_for_function("() => document.querySelector('#ask-tuned textarea').value.length > 0", timeout=120_000)

    # Export the GGUF, download it as the browser would, reload it with transformers.
    t1 = time.time()
    page.locator("#export-gguf").click()
    page.wait_for_selector("#export-status >> text=Wrote", timeout=300_000)
    status = page.locator("#export-status").inner_text()
    page.screenshot(path=str(tmp_path / "export.png"), full_page=True)
    # what the file keeps, read back from it, beside the adapter, before the download
    assert "the adapter merged in" in status and "GGUF file" in status and "the run's adapter" in status, status
    link = page.locator("#downloads a[download='model-q8_0.gguf']")
    link.wait_for()
    with page.expect_download() as dl:
        link.click()
    gguf = tmp_path / "model-q8_0.gguf"
    dl.value.save_as(gguf)
    timings["export"] = time.time() - t1
    mb = gguf.stat().st_size / 2**20
    assert 100 < mb < 200, mb
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf.name)
    tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file=gguf.name)
    answers = generate(model, tok, [f["prompt"] for f in recalled], max_new_tokens=8)
    back = [f["id"] for f, a in zip(recalled, answers) if recalls(a, f["target"])]
    # q8_0 rounds every weight: a fact the adapter only just recalled may slip; most must not
    assert len(back) >= 0.8 * len(recalled), (back, [(f["id"], f["target"], a) for f, a in zip(recalled, answers)])

    # Right after the run, the recent-runs list has it; after a reload the run is listed and shown.
    assert "1 recent run" in page.locator("#recent-note").inner_text()
    page.reload()
    page.get_by_role("tab", name="4 · Results").click()
    page.wait_for_selector("#recent-note >> text=1 recent run", timeout=30_000)
    page.wait_for_selector("#results-table [role=row] >> nth=1", timeout=60_000)
    assert "recall" in page.locator("#recent-runs input").input_value()
    assert "your probe set" in page.locator("#summary").inner_text()
    assert "Italy · capital" in page.locator("#results-table").inner_text()
    page.screenshot(path=str(tmp_path / "reopened.png"), full_page=True)
    print(f"\nbrowser flow: train {timings['train']:.0f} s, export + download {timings['export']:.0f} s "
          f"({mb:.1f} MB; {status.strip()[:80]}), {len(back)}/{len(recalled)} recalled facts answered from "
          f"the GGUF, total {time.time() - t0:.0f} s")
